//! One part of a period's overage, billed so that no crash or failure bills it twice or
//! loses it.
//!
//! A part is decided first, under the period's lock: its units, amount, description and
//! where its invoice item goes are written as a `pending` row and committed. Stripe is
//! called after that, outside any transaction, with idempotency keys derived from the
//! part; then the row is marked `billed` with the invoice item. Whatever happens between
//! the two writes (the process dies, Stripe times out, PostgreSQL goes away), the next
//! attempt — the retried webhook, or the true-up job once the part is [`STALE_AFTER`]
//! old — finds the pending part and sends Stripe the same request under the same key, so
//! Stripe replays what it did instead of refusing a different amount under that key, and
//! a new key (a second item) is never used. Usage that reached the ledger in between is
//! the next part's (the true-up).
//!
//! Stripe keeps idempotency keys for at least 24 hours; a part pending longer than that
//! (Stripe unreachable for a day) could be billed twice if its first request had reached
//! Stripe, so the true-up job runs every few minutes and resumes parts long before.

use super::OverageError;
use crate::stripe::{GatewayError, ItemTarget, StripeGateway};
use billing_model::Money;
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::HashMap;
use time::OffsetDateTime;

/// The columns of a part (a macro so queries can `concat!` it into a literal).
macro_rules! select_part {
    () => {
        "SELECT customer_id, billing_period_start, billing_period_end, plan_type, units,
             unit_rate, amount, part, kind, bill_to, description, created_at
         FROM overage_charges"
    };
}

/// Which path bills the part; it names the part's idempotency keys, which must stay what
/// they were when the part was first sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The period a renewal draft closes (on that draft, or the next invoice).
    Renewal,
    /// The last period of a subscription that ended, on an invoice of its own.
    Final,
    /// Late usage of a period already billed.
    TrueUp,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Renewal => "renewal",
            Kind::Final => "final",
            Kind::TrueUp => "trueup",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "renewal" => Some(Kind::Renewal),
            "final" => Some(Kind::Final),
            "trueup" => Some(Kind::TrueUp),
            _ => None,
        }
    }
}

/// Where the part's invoice item goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BillTo {
    /// A renewal draft; if Stripe finalized it before the item got there, the
    /// subscription's next invoice.
    Draft {
        invoice: String,
        subscription: String,
    },
    /// The subscription's next invoice (a pending invoice item).
    NextInvoice(String),
    /// An invoice of its own, finalized and charged at once; with the subscription that
    /// ended, its pending items join it and its card pays.
    OwnInvoice(Option<String>),
}

impl BillTo {
    fn encode(&self) -> String {
        match self {
            BillTo::Draft {
                invoice,
                subscription,
            } => format!("draft:{invoice}:{subscription}"),
            BillTo::NextInvoice(s) => format!("next:{s}"),
            BillTo::OwnInvoice(s) => format!("own:{}", s.as_deref().unwrap_or("")),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let (kind, rest) = s.split_once(':')?;
        match kind {
            "draft" => {
                let (invoice, subscription) = rest.split_once(':')?;
                Some(BillTo::Draft {
                    invoice: invoice.to_owned(),
                    subscription: subscription.to_owned(),
                })
            }
            "next" => Some(BillTo::NextInvoice(rest.to_owned())),
            "own" => Some(BillTo::OwnInvoice(
                (!rest.is_empty()).then(|| rest.to_owned()),
            )),
            _ => None,
        }
    }
}

/// A decided part: what it bills and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub customer: String,
    pub period_start: OffsetDateTime,
    pub period_end: OffsetDateTime,
    pub part: i32,
    pub kind: Kind,
    pub plan: String,
    pub units: u64,
    pub rate: Money,
    pub amount: Money,
    pub bill_to: BillTo,
    pub description: String,
    /// When the part was decided (its row written).
    pub decided_at: OffsetDateTime,
}

/// The part once Stripe has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Billed {
    /// The invoice the item is on, or `next:<subscription>` while it waits for the next.
    pub billed_on: String,
    pub invoice_item: String,
}

impl Part {
    /// The idempotency key parts: the ones each path used before parts were pending, so
    /// an item sent by an earlier version is replayed, not repeated.
    fn key(&self) -> Vec<String> {
        let start = self.period_start.unix_timestamp().to_string();
        let mut key = match self.kind {
            Kind::Renewal => vec!["overage".to_owned()],
            Kind::Final => vec!["final_overage".to_owned()],
            Kind::TrueUp => vec!["overage_trueup".to_owned()],
        };
        key.push(self.customer.clone());
        key.push(start);
        if self.kind == Kind::TrueUp {
            key.push(self.part.to_string());
        }
        key
    }

    fn metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            ("tollgate_customer_id".to_owned(), self.customer.clone()),
            (
                "tollgate_period_start".to_owned(),
                self.period_start.unix_timestamp().to_string(),
            ),
            ("tollgate_overage_units".to_owned(), self.units.to_string()),
            // Names the part, so it can be found in Stripe by what it is (see `send`).
            ("tollgate_overage_part".to_owned(), self.part.to_string()),
        ])
    }
}

/// What the period's rows say, read under its lock.
#[derive(Debug)]
pub enum PeriodState {
    /// No part yet.
    Unbilled,
    /// A part was decided and not yet confirmed by Stripe: bill it first.
    Pending(Box<Part>),
    /// Every part is billed: `units` in all, the last part's number.
    Billed { units: u64, last_part: i32 },
}

/// Takes the period's lock (every biller of one customer and period serialises on it)
/// and reads its parts.
pub async fn lock_period(
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
    period_start: OffsetDateTime,
) -> Result<PeriodState, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2::text, 0))")
        .bind(customer)
        .bind(period_start.unix_timestamp().to_string())
        .execute(&mut **tx)
        .await?;
    if let Some(row) = sqlx::query_as::<_, PartRow>(concat!(
        select_part!(),
        " WHERE customer_id = $1 AND billing_period_start = $2
             AND state = 'pending' ORDER BY part LIMIT 1"
    ))
    .bind(customer)
    .bind(period_start)
    .fetch_optional(&mut **tx)
    .await?
    {
        match row.into_part() {
            Some(part) => return Ok(PeriodState::Pending(Box::new(part))),
            // Counted as billed (below), so it is never billed again; a person decides.
            None => tracing::error!(customer, period_start = %period_start,
                "a pending overage part cannot be read; it is not billed"),
        }
    }
    let (rows, units, last_part): (i64, i64, i32) = sqlx::query_as(
        "SELECT count(*), COALESCE(SUM(units), 0)::BIGINT, COALESCE(MAX(part), 0)
         FROM overage_charges WHERE customer_id = $1 AND billing_period_start = $2",
    )
    .bind(customer)
    .bind(period_start)
    .fetch_one(&mut **tx)
    .await?;
    Ok(if rows == 0 {
        PeriodState::Unbilled
    } else {
        PeriodState::Billed {
            units: u64::try_from(units).unwrap_or(0),
            last_part,
        }
    })
}

/// Records a decided part as pending (in the caller's transaction, which holds the
/// period's lock; commit it before [`bill`]).
pub async fn record_pending(
    tx: &mut Transaction<'_, Postgres>,
    part: &Part,
) -> Result<(), OverageError> {
    sqlx::query(
        "INSERT INTO overage_charges (customer_id, billing_period_start, billing_period_end,
             plan_type, units, unit_rate, amount, part, kind, state, bill_to, description)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11)",
    )
    .bind(&part.customer)
    .bind(part.period_start)
    .bind(part.period_end)
    .bind(&part.plan)
    .bind(i64::try_from(part.units).map_err(|_| OverageError::Overflow)?)
    .bind(part.rate.as_decimal())
    .bind(part.amount.as_decimal())
    .bind(part.part)
    .bind(part.kind.as_str())
    .bind(part.bill_to.encode())
    .bind(&part.description)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sends the part to Stripe (same request, same keys, however often it is called) and
/// marks it billed; `None` when another attempt is sending it right now (it finishes
/// the part; if it dies, the true-up job does).
pub async fn bill(
    pool: &PgPool,
    gateway: &StripeGateway,
    stripe_customer: &str,
    part: &Part,
) -> Result<Option<Billed>, OverageError> {
    let billed = match send(gateway, stripe_customer, part).await {
        Ok(billed) => billed,
        Err(e) if e.is_key_in_use() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // Only a pending row changes: a concurrent attempt that settled it first wrote the
    // same item (the same keys gave it the same answer).
    sqlx::query(
        "UPDATE overage_charges SET state = 'billed', stripe_invoice_id = $4,
             stripe_invoice_item_id = $5
         WHERE customer_id = $1 AND billing_period_start = $2 AND part = $3
           AND state = 'pending'",
    )
    .bind(&part.customer)
    .bind(part.period_start)
    .bind(part.part)
    .bind(&billed.billed_on)
    .bind(&billed.invoice_item)
    .execute(pool)
    .await?;
    Ok(Some(billed))
}

/// Stripe prunes idempotency keys after 24 hours: a retry later than that under the same
/// key is a new request, so a part pending this long (Stripe unreachable for a day, a
/// crash between Stripe and PostgreSQL retried late) is first looked for in Stripe by its
/// metadata, and not sent twice.
const KEYS_SURELY_KEPT: time::Duration = time::Duration::hours(23);

async fn send(
    gateway: &StripeGateway,
    stripe_customer: &str,
    part: &Part,
) -> Result<Billed, GatewayError> {
    let key = part.key();
    let key: Vec<&str> = key.iter().map(String::as_str).collect();
    if OffsetDateTime::now_utc() - part.decided_at > KEYS_SURELY_KEPT
        && let Some(found) = already_sent(gateway, stripe_customer, part, &key).await?
    {
        return Ok(found);
    }
    let add = |target| add_item(gateway, stripe_customer, part, target, &key);
    match &part.bill_to {
        BillTo::Draft {
            invoice,
            subscription,
        } => match add(ItemTarget::Draft(invoice)).await {
            Ok(item) => Ok(Billed {
                billed_on: invoice.clone(),
                invoice_item: item,
            }),
            // Stripe finalized the draft before the item got there (had the item been
            // added, the same key would have replayed it): the next invoice carries it.
            Err(e)
                if e.is_invalid_request()
                    && gateway.invoice_status(invoice).await?.as_deref() != Some("draft") =>
            {
                tracing::warn!(invoice = %invoice, customer = %part.customer,
                    "renewal draft already finalized: overage goes on the next invoice");
                Ok(Billed {
                    billed_on: format!("next:{subscription}"),
                    invoice_item: add(ItemTarget::NextInvoice(subscription)).await?,
                })
            }
            Err(e) => Err(e),
        },
        BillTo::NextInvoice(subscription) => {
            if !gateway.subscription_is_live(subscription).await? {
                // It ended since the part was decided (Stripe unreachable until after
                // the ending's final sweep): no next invoice will come.
                return after_ending(gateway, stripe_customer, part, subscription, &key).await;
            }
            Ok(Billed {
                billed_on: format!("next:{subscription}"),
                invoice_item: add(ItemTarget::NextInvoice(subscription)).await?,
            })
        }
        BillTo::OwnInvoice(subscription) => {
            own_invoice(
                gateway,
                stripe_customer,
                part,
                subscription.as_deref(),
                &key,
            )
            .await
        }
    }
}

/// The part's item, if an earlier attempt created it (its invoice, an own one, finalized
/// and paid now if that attempt stopped before).
async fn already_sent(
    gateway: &StripeGateway,
    stripe_customer: &str,
    part: &Part,
    key: &[&str],
) -> Result<Option<Billed>, GatewayError> {
    // Created after the part was decided (an hour's margin for clocks).
    let since = (part.decided_at - time::Duration::hours(1)).unix_timestamp();
    let Some(found) = gateway
        .find_invoice_item(stripe_customer, since, &part.metadata())
        .await?
    else {
        return Ok(None);
    };
    let billed_on = match (&part.bill_to, found.invoice) {
        (BillTo::OwnInvoice(_), Some(invoice)) => {
            gateway.finalize_and_pay(&invoice, key).await?;
            invoice
        }
        (_, Some(invoice)) => invoice,
        (BillTo::Draft { subscription, .. } | BillTo::NextInvoice(subscription), None) => {
            format!("next:{subscription}")
        }
        // An own invoice's item is created on it: one without an invoice is not ours.
        (BillTo::OwnInvoice(_), None) => return Ok(None),
    };
    tracing::warn!(customer = %part.customer, item = %found.id, billed_on = %billed_on,
        "a part pending past Stripe's key retention was found already sent");
    Ok(Some(Billed {
        billed_on,
        invoice_item: found.id,
    }))
}

/// A part on an invoice of its own, charged at once; with `subscription`, the ended
/// subscription's waiting items join it.
async fn own_invoice(
    gateway: &StripeGateway,
    stripe_customer: &str,
    part: &Part,
    subscription: Option<&str>,
    key: &[&str],
) -> Result<Billed, GatewayError> {
    // The card of a Checkout subscription is on the subscription, not the customer.
    let payment_method = match subscription {
        Some(s) => gateway.subscription_payment_method(s).await?,
        None => None,
    };
    let title = match part.kind {
        Kind::Final => "Final usage of the subscription".to_owned(),
        _ => part.description.clone(),
    };
    let invoice = gateway
        .open_standalone_invoice(
            stripe_customer,
            payment_method.as_deref(),
            subscription,
            &title,
            part.metadata(),
            key,
        )
        .await?;
    let item = add_item(
        gateway,
        stripe_customer,
        part,
        ItemTarget::Draft(&invoice),
        key,
    )
    .await?;
    let status = gateway.finalize_and_pay(&invoice, key).await?;
    tracing::info!(customer = %part.customer, units = part.units, amount = %part.amount,
        invoice = %invoice, status = ?status, "overage invoiced on its own");
    Ok(Billed {
        billed_on: invoice,
        invoice_item: item,
    })
}

/// A part meant for the next invoice of a subscription that has ended. An earlier attempt
/// may have reached Stripe while it lived (its item waits on the subscription, or was
/// swept already): found by its metadata, it is collected — swept onto an invoice of its
/// own if still waiting — and never created twice. Otherwise the part goes on an invoice
/// of its own, which also sweeps whatever else of the subscription waits. Each step is
/// keyed by the part, so a retry resumes it.
async fn after_ending(
    gateway: &StripeGateway,
    stripe_customer: &str,
    part: &Part,
    subscription: &str,
    key: &[&str],
) -> Result<Billed, GatewayError> {
    let since = (part.decided_at - time::Duration::hours(1)).unix_timestamp();
    let Some(found) = gateway
        .find_invoice_item(stripe_customer, since, &part.metadata())
        .await?
    else {
        return own_invoice(gateway, stripe_customer, part, Some(subscription), key).await;
    };
    let invoice = match found.invoice {
        Some(invoice) => invoice,
        None => {
            let payment_method = gateway.subscription_payment_method(subscription).await?;
            gateway
                .open_standalone_invoice(
                    stripe_customer,
                    payment_method.as_deref(),
                    Some(subscription),
                    &part.description,
                    part.metadata(),
                    key,
                )
                .await?
        }
    };
    let status = gateway.finalize_and_pay(&invoice, key).await?;
    tracing::info!(customer = %part.customer, item = %found.id, invoice = %invoice,
        status = ?status, "a part sent after its subscription ended, collected on its own");
    Ok(Billed {
        billed_on: invoice,
        invoice_item: found.id,
    })
}

async fn add_item(
    gateway: &StripeGateway,
    stripe_customer: &str,
    part: &Part,
    target: ItemTarget<'_>,
    key: &[&str],
) -> Result<String, GatewayError> {
    gateway
        .add_invoice_item(
            stripe_customer,
            target,
            part.amount.to_cents(),
            &part.description,
            part.metadata(),
            key,
        )
        .await
}

/// How long a part may stay pending before the true-up job bills it (the attempt that
/// decided it is given time to finish; a second attempt at once would only replay it).
pub const STALE_AFTER: time::Duration = time::Duration::seconds(60);

#[derive(sqlx::FromRow)]
struct PartRow {
    customer_id: String,
    billing_period_start: OffsetDateTime,
    billing_period_end: OffsetDateTime,
    plan_type: String,
    units: i64,
    unit_rate: Decimal,
    amount: Decimal,
    part: i32,
    kind: String,
    bill_to: Option<String>,
    description: Option<String>,
    created_at: OffsetDateTime,
}

impl PartRow {
    fn into_part(self) -> Option<Part> {
        let part = Part {
            kind: Kind::parse(&self.kind)?,
            bill_to: BillTo::decode(self.bill_to.as_deref()?)?,
            description: self.description?,
            units: u64::try_from(self.units).ok()?,
            rate: Money::from_decimal_exact(self.unit_rate)?,
            amount: Money::from_decimal_exact(self.amount)?,
            customer: self.customer_id,
            period_start: self.billing_period_start,
            period_end: self.billing_period_end,
            plan: self.plan_type,
            part: self.part,
            decided_at: self.created_at,
        };
        Some(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_a_part_goes_survives_its_row() {
        for to in [
            BillTo::Draft {
                invoice: "in_1".into(),
                subscription: "sub_2".into(),
            },
            BillTo::NextInvoice("sub_3".into()),
            BillTo::OwnInvoice(Some("sub_4".into())),
            BillTo::OwnInvoice(None),
        ] {
            assert_eq!(BillTo::decode(&to.encode()), Some(to));
        }
        assert_eq!(BillTo::decode("draft:in_1"), None);
        assert_eq!(BillTo::decode("elsewhere:x"), None);
    }
}
