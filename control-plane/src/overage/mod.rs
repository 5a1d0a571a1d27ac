//! Overage of the fixed-fee model, billed through Stripe exactly once per period.
//!
//! How: when Stripe opens a renewal invoice (`invoice.created`, `billing_reason =
//! subscription_cycle`, still a draft for about an hour), tollgate adds one invoice item
//! for the period that just ended: units beyond the plan's included units × the plan's
//! rate, from the ledger. The part is recorded as pending before Stripe is called and
//! billed with keys derived from it ([`part`]), so running twice or crashing between
//! Stripe and PostgreSQL still leaves exactly one item; the invoice total then equals the
//! ledger's figure to the cent.
//!
//! A period can also end without a renewal: the subscription is cancelled (now, or at
//! the period end), the customer switches to credits or back to Free, or Stripe ends it
//! after failed payments. Then there is no renewal draft, so [`decide_ended`] and
//! [`finish_ended`] bill the last period's overage on an invoice of its own, finalized and charged at
//! once (ARCHITECTURE.md invariant 10). Both paths share the `overage_charges` row of
//! the period, so a period is billed once whichever path gets there first.
//!
//! Which plan prices a period: the one in effect at its end (an upgrade applies the new
//! plan's included units and rate to the whole period's usage, as the proxy enforced
//! it; a downgrade waiting for the period end still bills the plan paid for).

pub mod part;

use crate::stripe::{GatewayError, StripeGateway};
use billing_model::{Catalog, Money, PlanId, overage_amount, overage_units};
use part::{BillTo, Kind, Part, PeriodState};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::HashMap;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum OverageError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Stripe(#[from] GatewayError),
    #[error("overage does not fit in an amount")]
    Overflow,
}

impl From<stripe::StripeError> for OverageError {
    fn from(e: stripe::StripeError) -> Self {
        OverageError::Stripe(GatewayError::Stripe(e))
    }
}

/// What was billed for one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverageCharge {
    /// The draft invoice the item joined, the invoice of its own, or
    /// `next:<subscription>` when the item waits for the next invoice.
    pub billed_on: String,
    pub customer_id: String,
    pub plan: String,
    pub units: u64,
    pub amount: Money,
    pub invoice_item: String,
}

impl OverageCharge {
    fn of(part: Part, billed: part::Billed) -> Self {
        OverageCharge {
            billed_on: billed.billed_on,
            customer_id: part.customer,
            plan: part.plan,
            units: part.units,
            amount: part.amount,
            invoice_item: billed.invoice_item,
        }
    }
}

/// Bills the overage of the period a renewal draft closes; `None` when there is nothing
/// to bill (not a renewal draft, within the allowance, a plan without overage, or billed
/// already). A part an earlier attempt left pending is billed as it was decided.
pub async fn bill_renewal_draft(
    pool: &PgPool,
    gateway: &StripeGateway,
    catalog: &Catalog,
    invoice: &Value,
) -> Result<Option<OverageCharge>, OverageError> {
    if invoice["status"].as_str() != Some("draft")
        || invoice["billing_reason"].as_str() != Some("subscription_cycle")
    {
        return Ok(None);
    }
    let (Some(invoice_id), Some(stripe_customer), Some(end)) = (
        invoice["id"].as_str(),
        invoice["customer"].as_str(),
        invoice["period_end"].as_i64(),
    ) else {
        return Ok(None);
    };
    let Some(subscription) = invoice["parent"]["subscription_details"]["subscription"]
        .as_str()
        .or_else(|| invoice["subscription"].as_str())
    else {
        return Ok(None);
    };
    let mut tx = pool.begin().await?;
    let Some(customer) = crate::subscription_store::customer_of(&mut tx, subscription).await?
    else {
        return Ok(None);
    };
    // The period that ended is the one before the renewal's subscription line: it ends
    // where that line's service period starts. (An invoice's own period_start/end is the
    // window for attaching pending items; on a renewal it happens to look back one
    // period, but the lines are what Stripe defines as service periods.)
    let end = renewal_line_start(invoice).unwrap_or(end);
    let Ok(period_end) = OffsetDateTime::from_unix_timestamp(end) else {
        return Ok(None);
    };
    // The period's start as the ledger knows it; with no usage recorded yet (a usage
    // log shipped late), one anniversary month before its end — not the invoice
    // window, which after a mid-period upgrade starts at the upgrade.
    let ledger_start = ledger_period_ending(&mut tx, &customer, period_end).await?;
    let Some(period_start) = ledger_start.or_else(|| {
        billing_model::BillingPeriod::nth(period_end, -1)
            .ok()
            .map(|p| p.start())
    }) else {
        return Ok(None);
    };
    let part = match part::lock_period(&mut tx, &customer, period_start).await? {
        PeriodState::Pending(part) => *part,
        PeriodState::Billed { .. } => return Ok(None),
        PeriodState::Unbilled => {
            let Some(plan) = period_plan(gateway, catalog, subscription, end).await? else {
                return Ok(None);
            };
            let Some(due) = overage_due(&mut tx, plan, &customer, period_start).await? else {
                record_within_allowance(
                    &mut tx,
                    &customer,
                    period_start,
                    period_end,
                    plan,
                    invoice_id,
                )
                .await?;
                tx.commit().await?;
                return Ok(None);
            };
            // The draft is open for about an hour; a worker that gets here later (a
            // backlog, an outage) bills the same amount on the next invoice instead.
            let still_draft = gateway.invoice_status(invoice_id).await?.as_deref() == Some("draft");
            let bill_to = if still_draft {
                BillTo::Draft {
                    invoice: invoice_id.to_owned(),
                    subscription: subscription.to_owned(),
                }
            } else {
                BillTo::NextInvoice(subscription.to_owned())
            };
            let part = due.into_part(&customer, period_start, period_end, Kind::Renewal, bill_to);
            part::record_pending(&mut tx, &part).await?;
            part
        }
    };
    tx.commit().await?;
    let billed = part::bill(pool, gateway, stripe_customer, &part).await?;
    Ok(billed.map(|b| OverageCharge::of(part, b)))
}

/// The service-period start of the renewal's (non-proration) subscription line.
fn renewal_line_start(invoice: &Value) -> Option<i64> {
    invoice["lines"]["data"]
        .as_array()?
        .iter()
        .find_map(|line| {
            let parent = &line["parent"];
            let subscription_line = parent["type"] == "subscription_item_details"
                && parent["subscription_item_details"]["proration"] != Value::Bool(true)
                && parent["subscription_item_details"]["invoice_item"].is_null();
            subscription_line
                .then(|| line["period"]["start"].as_i64())
                .flatten()
        })
}

/// The start of the customer's ledger period that ends at `end`, if usage was recorded
/// in it (raw or folded).
async fn ledger_period_ending(
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
    end: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT billing_period_start FROM usage_records
         WHERE customer_id = $1 AND billing_period_end = $2
         UNION ALL
         SELECT billing_period_start FROM usage_period_totals
         WHERE customer_id = $1 AND billing_period_end = $2
         LIMIT 1",
    )
    .bind(customer)
    .bind(end)
    .fetch_optional(&mut **tx)
    .await
}

/// A period that ended within its allowance still gets its (zero) part, so usage that
/// reaches the ledger later is trued up ([`crate::jobs::overage_trueup`]).
async fn record_within_allowance(
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
    period_start: OffsetDateTime,
    period_end: OffsetDateTime,
    plan: &billing_model::Plan,
    billed_on: &str,
) -> Result<(), OverageError> {
    let Some(rate) = plan.overage_rate() else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO overage_charges (customer_id, billing_period_start, billing_period_end,
             plan_type, units, unit_rate, amount, stripe_invoice_id, stripe_invoice_item_id)
         VALUES ($1, $2, $3, $4, 0, $5, 0, $6, NULL)
         ON CONFLICT DO NOTHING",
    )
    .bind(customer)
    .bind(period_start)
    .bind(period_end)
    .bind(plan.id().as_str())
    .bind(rate.as_decimal())
    .bind(billed_on)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What a period's overage comes to.
struct Due {
    plan: String,
    units: u64,
    amount: Money,
    rate: Money,
    description: String,
}

impl Due {
    fn into_part(
        self,
        customer: &str,
        period_start: OffsetDateTime,
        period_end: OffsetDateTime,
        kind: Kind,
        bill_to: BillTo,
    ) -> Part {
        Part {
            customer: customer.to_owned(),
            period_start,
            period_end,
            part: 0,
            kind,
            plan: self.plan,
            units: self.units,
            rate: self.rate,
            amount: self.amount,
            bill_to,
            description: self.description,
            decided_at: OffsetDateTime::now_utc(),
        }
    }
}

/// The overage `plan` charges for the customer's usage of the period; `None` when
/// there is none (within the allowance, or a plan without overage).
async fn overage_due(
    tx: &mut Transaction<'_, Postgres>,
    plan: &billing_model::Plan,
    customer: &str,
    period_start: OffsetDateTime,
) -> Result<Option<Due>, OverageError> {
    let Some(rate) = plan.overage_rate() else {
        return Ok(None);
    };
    let used = period_usage(tx, customer, period_start).await?;
    let units = overage_units(plan.included_units(), used);
    let amount = overage_amount(plan, used).map_err(|_| OverageError::Overflow)?;
    if units == 0 || amount.is_zero() {
        return Ok(None);
    }
    let description = format!(
        "Overage: {units} tickets × ${rate} beyond {} included ({} plan)",
        plan.included_units(),
        plan.name()
    );
    Ok(Some(Due {
        plan: plan.id().to_string(),
        units,
        amount,
        rate,
        description,
    }))
}

/// What [`decide_ended`] left for [`finish_ended`] to do once its transaction commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedPeriod {
    pub customer: String,
    pub stripe_customer: String,
    pub subscription: String,
    pub period_start: OffsetDateTime,
    /// Nothing was due: only overage of earlier periods still waiting for a next invoice
    /// is collected.
    pub within_allowance: bool,
}

/// A subscription that ended (cancelled now or at its period end, a switch to credits
/// or Free, Stripe ending it after failed payments) has no renewal draft to carry its
/// last period's overage: it is billed on an invoice of its own and charged at once.
/// Once per period, shared with the renewal path (`overage_charges`).
///
/// This decides it in the caller's transaction (the one that stores the ending): the
/// part is recorded as pending, so it commits or rolls back with the ending itself.
/// Stripe is called by [`finish_ended`] after the commit — never while the caller holds
/// a connection and its locks: a second connection taken under a lock starves the pool
/// once other holders wait for the same lock.
pub async fn decide_ended(
    tx: &mut Transaction<'_, Postgres>,
    plan: &billing_model::Plan,
    customer: &str,
    stripe_customer: &str,
    subscription: &str,
    period_start: OffsetDateTime,
    period_end: OffsetDateTime,
) -> Result<Option<EndedPeriod>, OverageError> {
    let ended = |within_allowance| EndedPeriod {
        customer: customer.to_owned(),
        stripe_customer: stripe_customer.to_owned(),
        subscription: subscription.to_owned(),
        period_start,
        within_allowance,
    };
    match part::lock_period(tx, customer, period_start).await? {
        PeriodState::Pending(_) => Ok(Some(ended(false))),
        PeriodState::Billed { .. } => Ok(None),
        PeriodState::Unbilled => {
            let Some(due) = overage_due(tx, plan, customer, period_start).await? else {
                // Marked `sweep:<subscription>` until the sweep of earlier periods'
                // waiting items is done, so the true-up job resumes a sweep that a
                // crash or a Stripe outage left undone.
                let sweep = format!("{SWEEP_PREFIX}{subscription}");
                record_within_allowance(tx, customer, period_start, period_end, plan, &sweep)
                    .await?;
                return Ok(Some(ended(true)));
            };
            let bill_to = BillTo::OwnInvoice(Some(subscription.to_owned()));
            let part = due.into_part(customer, period_start, period_end, Kind::Final, bill_to);
            part::record_pending(tx, &part).await?;
            Ok(Some(ended(false)))
        }
    }
}

/// Bills what [`decide_ended`] recorded, once its transaction has committed (it waits
/// for it: the period's lock is held until then). A transaction that rolled back left
/// nothing, and nothing is billed; a part (or a sweep) this cannot finish (Stripe down,
/// a crash) stays recorded and the true-up job resumes it.
pub async fn finish_ended(
    pool: &PgPool,
    gateway: &StripeGateway,
    ended: &EndedPeriod,
) -> Result<Option<OverageCharge>, OverageError> {
    let mut tx = pool.begin().await?;
    let state = part::lock_period(&mut tx, &ended.customer, ended.period_start).await?;
    tx.commit().await?;
    match state {
        // Rolled back (the ending will be stored again, and decided again).
        PeriodState::Unbilled => Ok(None),
        PeriodState::Billed { .. } => {
            if ended.within_allowance {
                sweep_ended(
                    pool,
                    gateway,
                    &ended.customer,
                    &ended.stripe_customer,
                    &ended.subscription,
                    ended.period_start,
                )
                .await?;
            }
            Ok(None)
        }
        PeriodState::Pending(part) => {
            let billed = part::bill(pool, gateway, &ended.stripe_customer, &part).await?;
            Ok(billed.map(|b| OverageCharge::of(*part, b)))
        }
    }
}

/// What a within-allowance period's row holds as its invoice while the sweep of an
/// ended subscription ([`sweep_ended`]) is still to be done: `sweep:<subscription>`.
pub const SWEEP_PREFIX: &str = "sweep:";

/// Overage of earlier periods may still wait for a next invoice that will not come (a
/// true-up part, a renewal draft reached late): a final invoice of its own collects it,
/// then the period's row is marked done. Safe to repeat: the same keys, and a sweep with
/// nothing left to collect only marks the row.
pub async fn sweep_ended(
    pool: &PgPool,
    gateway: &StripeGateway,
    customer: &str,
    stripe_customer: &str,
    subscription: &str,
    period_start: OffsetDateTime,
) -> Result<(), OverageError> {
    if gateway
        .has_pending_items(stripe_customer, subscription)
        .await?
    {
        let start = period_start.unix_timestamp().to_string();
        let key = ["final_sweep", customer, start.as_str()];
        let metadata = HashMap::from([("tollgate_customer_id".to_owned(), customer.to_owned())]);
        let payment_method = gateway.subscription_payment_method(subscription).await?;
        let invoice = gateway
            .open_standalone_invoice(
                stripe_customer,
                payment_method.as_deref(),
                Some(subscription),
                "Final usage of the subscription",
                metadata,
                &key,
            )
            .await?;
        let status = gateway.finalize_and_pay(&invoice, &key).await?;
        tracing::info!(customer, invoice = %invoice, status = ?status,
            "pending overage of an ended subscription invoiced");
    }
    sqlx::query(
        "UPDATE overage_charges SET stripe_invoice_id = 'none'
         WHERE customer_id = $1 AND billing_period_start = $2 AND stripe_invoice_id = $3",
    )
    .bind(customer)
    .bind(period_start)
    .bind(format!("{SWEEP_PREFIX}{subscription}"))
    .execute(pool)
    .await?;
    Ok(())
}

/// The plan in effect at the end of the period ending at `end`.
async fn period_plan<'c>(
    gateway: &StripeGateway,
    catalog: &'c Catalog,
    subscription: &str,
    end: i64,
) -> Result<Option<&'c billing_model::Plan>, OverageError> {
    let sub = gateway.retrieve_subscription(subscription).await?;
    let downgraded_from = crate::stripe::downgraded_from(&sub.metadata, end);
    let current = sub.items.data.first().and_then(|item| {
        item.price
            .lookup_key
            .as_deref()
            .and_then(crate::stripe::monthly_plan_of)
    });
    Ok(downgraded_from
        .or(current)
        .and_then(|p| PlanId::parse(p).ok())
        .and_then(|p| catalog.get(&p)))
}

/// Units the ledger holds for the period (raw records plus totals folded by retention).
/// The one count every billing decision (renewal, final, true-up) reads.
pub(crate) async fn period_usage(
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
    period_start: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    let used = sqlx::query_scalar!(
        r#"SELECT (COALESCE((SELECT SUM(quantity) FROM usage_records
                             WHERE customer_id = $1 AND billing_period_start = $2), 0)
                 + COALESCE((SELECT SUM(quantity) FROM usage_period_totals
                             WHERE customer_id = $1 AND billing_period_start = $2), 0))::BIGINT
              AS "used!""#,
        customer,
        period_start
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(u64::try_from(used).unwrap_or(0))
}
