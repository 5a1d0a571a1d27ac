//! Overage true-up: usage that reached the ledger after its period was billed (requests
//! in flight across the period end, a proxy's usage log shipped late after an outage) is
//! billed too, never dropped (ARCHITECTURE.md invariant 10).
//!
//! Every billed period has its parts in `overage_charges` (a zero part when it ended
//! within its allowance). This job compares, for periods that ended in the last
//! [`LOOKBACK_DAYS`], the overage the ledger holds now with what the parts billed, and
//! bills the difference as the next part: on the subscription's next invoice while it
//! lives, else on an invoice of its own, charged at once. Each part has its own
//! idempotency key and row, so reruns and crashes bill it once.

use crate::state::AppState;
use crate::stripe::ItemTarget;
use billing_model::{PlanId, overage_units};
use std::collections::HashMap;
use time::OffsetDateTime;

/// How far back ended periods are trued up (beyond it, late usage is a reconciliation
/// matter for people, not a charge a customer would expect).
pub const LOOKBACK_DAYS: i64 = 60;

/// What one run billed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrueUpReport {
    pub periods_checked: u64,
    pub parts_billed: u64,
    pub units_billed: u64,
    pub cents_billed: i64,
    /// Periods whose true-up failed this run (retried next run).
    pub failures: u64,
}

struct BilledPeriod {
    customer_id: String,
    billing_period_start: OffsetDateTime,
    billing_period_end: OffsetDateTime,
    plan_type: String,
    last_part: i32,
}

/// One pass over recently ended periods (call under the job's advisory lock).
pub async fn run_once(state: &AppState) -> anyhow::Result<TrueUpReport> {
    let mut report = TrueUpReport::default();
    let Some(gateway) = state.stripe.as_ref() else {
        return Ok(report);
    };
    let periods: Vec<(String, OffsetDateTime, OffsetDateTime, String, i32)> = sqlx::query_as(
        "SELECT customer_id, billing_period_start, billing_period_end,
                (array_agg(plan_type ORDER BY part))[1], MAX(part)
         FROM overage_charges
         WHERE billing_period_end > now() - make_interval(days => $1)
         GROUP BY customer_id, billing_period_start, billing_period_end",
    )
    .bind(i32::try_from(LOOKBACK_DAYS).unwrap_or(60))
    .fetch_all(&state.pool)
    .await?;
    for (customer_id, billing_period_start, billing_period_end, plan_type, last_part) in periods {
        report.periods_checked += 1;
        let period = BilledPeriod {
            customer_id,
            billing_period_start,
            billing_period_end,
            plan_type,
            last_part,
        };
        // One period's failure (Stripe refusing, a customer gone) must not stop the
        // others; it is retried on the next run.
        match true_up(state, gateway, &period).await {
            Ok(Some((units, cents))) => {
                report.parts_billed += 1;
                report.units_billed += units;
                report.cents_billed += cents;
            }
            Ok(None) => {}
            Err(e) => {
                report.failures += 1;
                tracing::warn!(error = %e, customer = %period.customer_id,
                    period_start = %period.billing_period_start, "overage true-up failed; will retry");
            }
        }
    }
    if report.parts_billed > 0 {
        tracing::info!(
            parts = report.parts_billed,
            units = report.units_billed,
            cents = report.cents_billed,
            "late usage trued up"
        );
    }
    Ok(report)
}

/// Bills what the period's ledger usage adds to its parts; `(units, cents)` billed.
async fn true_up(
    state: &AppState,
    gateway: &crate::stripe::StripeGateway,
    period: &BilledPeriod,
) -> anyhow::Result<Option<(u64, i64)>> {
    let Some(plan) = PlanId::parse(&period.plan_type)
        .ok()
        .and_then(|p| state.catalog.get(&p))
    else {
        return Ok(None);
    };
    let Some(rate) = plan.overage_rate() else {
        return Ok(None);
    };
    let mut tx = state.pool.begin().await?;
    // The same lock as the renewal and final paths: one biller per period at a time.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2::text, 0))")
        .bind(&period.customer_id)
        .bind(period.billing_period_start.unix_timestamp().to_string())
        .execute(&mut *tx)
        .await?;
    let (billed, last_part): (i64, i32) = sqlx::query_as(
        "SELECT COALESCE(SUM(units), 0)::BIGINT, COALESCE(MAX(part), 0) FROM overage_charges
         WHERE customer_id = $1 AND billing_period_start = $2",
    )
    .bind(&period.customer_id)
    .bind(period.billing_period_start)
    .fetch_one(&mut *tx)
    .await?;
    let used: i64 = sqlx::query_scalar(
        "SELECT (COALESCE((SELECT SUM(quantity) FROM usage_records
                           WHERE customer_id = $1 AND billing_period_start = $2), 0)
               + COALESCE((SELECT SUM(quantity) FROM usage_period_totals
                           WHERE customer_id = $1 AND billing_period_start = $2), 0))::BIGINT",
    )
    .bind(&period.customer_id)
    .bind(period.billing_period_start)
    .fetch_one(&mut *tx)
    .await?;
    let due = overage_units(plan.included_units(), u64::try_from(used).unwrap_or(0));
    let billed = u64::try_from(billed).unwrap_or(0);
    if due <= billed {
        return Ok(None);
    }
    let units = due - billed;
    let amount = rate
        .checked_mul_units(units)
        .ok_or_else(|| anyhow::anyhow!("true-up amount overflows"))?;
    let part = last_part.max(period.last_part) + 1;
    let stripe_customer: Option<String> =
        sqlx::query_scalar("SELECT stripe_customer_id FROM customers WHERE customer_id = $1")
            .bind(&period.customer_id)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
    let Some(stripe_customer) = stripe_customer else {
        return Ok(None);
    };
    let latest: Option<(String, String, bool)> = sqlx::query_as(
        "SELECT stripe_subscription_id, status, cancel_at_period_end FROM subscriptions
         WHERE customer_id = $1 AND stripe_subscription_id IS NOT NULL
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(&period.customer_id)
    .fetch_optional(&mut *tx)
    .await?;
    // A next invoice only comes for a subscription that lives on past its period.
    let live = latest
        .as_ref()
        .filter(|(_, status, ending)| crate::stripe::is_live(status) && !ending)
        .map(|(id, ..)| id.clone());
    let start = period.billing_period_start.unix_timestamp().to_string();
    let part_text = part.to_string();
    let key = [
        "overage_trueup",
        period.customer_id.as_str(),
        start.as_str(),
        part_text.as_str(),
    ];
    let description = format!(
        "Late usage: {units} tickets × ${rate} of the period that began {}",
        period.billing_period_start.date()
    );
    let metadata = HashMap::from([
        (
            "tollgate_customer_id".to_owned(),
            period.customer_id.clone(),
        ),
        ("tollgate_period_start".to_owned(), start.clone()),
        ("tollgate_overage_units".to_owned(), units.to_string()),
        ("tollgate_overage_part".to_owned(), part_text.clone()),
    ]);
    let (billed_on, item) = match &live {
        Some(subscription) => {
            let item = gateway
                .add_invoice_item(
                    &stripe_customer,
                    ItemTarget::NextInvoice(subscription),
                    amount.to_cents(),
                    &description,
                    metadata,
                    &key,
                )
                .await?;
            (format!("next:{subscription}"), item)
        }
        None => {
            // The card of a Checkout subscription is on the subscription, not the customer.
            let payment_method = match &latest {
                Some((subscription, ..)) => {
                    gateway.subscription_payment_method(subscription).await?
                }
                None => None,
            };
            let invoice = gateway
                .open_standalone_invoice(
                    &stripe_customer,
                    payment_method.as_deref(),
                    None,
                    &description,
                    metadata.clone(),
                    &key,
                )
                .await?;
            let item = gateway
                .add_invoice_item(
                    &stripe_customer,
                    ItemTarget::Draft(&invoice),
                    amount.to_cents(),
                    &description,
                    metadata,
                    &key,
                )
                .await?;
            gateway.finalize_and_pay(&invoice, &key).await?;
            (invoice, item)
        }
    };
    sqlx::query(
        "INSERT INTO overage_charges (customer_id, billing_period_start, billing_period_end,
             plan_type, units, unit_rate, amount, stripe_invoice_id, stripe_invoice_item_id, part)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&period.customer_id)
    .bind(period.billing_period_start)
    .bind(period.billing_period_end)
    .bind(plan.id().as_str())
    .bind(i64::try_from(units)?)
    .bind(rate.as_decimal())
    .bind(amount.as_decimal())
    .bind(&billed_on)
    .bind(&item)
    .bind(part)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    state.metrics.overage_units_billed.inc_by(units);
    state
        .metrics
        .overage_billed_cents
        .inc_by(u64::try_from(amount.to_cents()).unwrap_or(0));
    Ok(Some((units, amount.to_cents())))
}
