//! The usage ledger: every consumed unit is one row, however often it is delivered;
//! credit customers' units are deducted from their grants in the same transaction.

use billing_model::{BillingModel, CreditGrant, CustomerId, Money, UsageEvent, deduct_fifo};
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IngestOutcome {
    /// Events stored now.
    pub inserted: u64,
    /// Events already stored (a retry or a duplicate within the batch).
    pub duplicates: u64,
    /// Credit customers whose balance changed (their entitlement must be republished).
    #[serde(skip)]
    pub credit_customers: Vec<CustomerId>,
    /// Credits consumed by this batch, in cents.
    #[serde(skip)]
    pub credit_burned_cents: i64,
}

/// The longest an ingest statement, or a pause between its statements, may take: the
/// transaction fails beyond it (and the batch is retried) instead of holding records
/// stamped long before they become visible (see `jobs::overage_trueup::RECORDED_MARGIN`).
pub const INGEST_TIMEOUT: time::Duration = time::Duration::seconds(30);

/// Stores a batch in one statement; events already stored are skipped by event id.
pub async fn ingest(pool: &PgPool, events: &[UsageEvent]) -> Result<IngestOutcome, sqlx::Error> {
    if events.is_empty() {
        return Ok(IngestOutcome {
            inserted: 0,
            duplicates: 0,
            credit_customers: Vec::new(),
            credit_burned_cents: 0,
        });
    }
    let n = events.len();
    let mut ids = Vec::with_capacity(n);
    let mut customers = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut quantities = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let mut ends = Vec::with_capacity(n);
    let mut occurred = Vec::with_capacity(n);
    let mut tickets: Vec<Option<String>> = Vec::with_capacity(n);
    // How each event's units are paid for, as the proxy that admitted them said.
    let mut models: BTreeMap<uuid::Uuid, Option<BillingModel>> = BTreeMap::new();
    for e in events {
        models.insert(e.event_id, e.billing_model);
        ids.push(e.event_id);
        customers.push(e.customer_id.as_str().to_owned());
        types.push(
            serde_json::to_value(e.usage_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        );
        quantities.push(i32::try_from(e.quantity.get()).unwrap_or(i32::MAX));
        starts.push(e.period_start);
        ends.push(e.period_end);
        occurred.push(e.occurred_at);
        tickets.push(e.ticket_id.clone());
    }
    let mut tx = pool.begin().await?;
    // Bounded, so a record stamped when this transaction began is visible long before
    // the true-up stops looking for records of its period (`RECORDED_MARGIN`).
    sqlx::query(
        "SELECT set_config('statement_timeout', $1, true),
                set_config('idle_in_transaction_session_timeout', $1, true)",
    )
    .bind(format!("{}ms", INGEST_TIMEOUT.whole_milliseconds()))
    .execute(&mut *tx)
    .await?;
    let stored: Vec<(uuid::Uuid, String, i32, OffsetDateTime)> = sqlx::query_as(
        "INSERT INTO usage_records
             (event_id, customer_id, usage_type, quantity,
              billing_period_start, billing_period_end, occurred_at, ticket_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[],
                              $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::text[])
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id, customer_id, quantity, billing_period_start",
    )
    .bind(&ids)
    .bind(&customers)
    .bind(&types)
    .bind(&quantities)
    .bind(&starts)
    .bind(&ends)
    .bind(&occurred)
    .bind(&tickets)
    .fetch_all(&mut *tx)
    .await?;
    let inserted = stored.len() as u64;
    let mut units: BTreeMap<String, Vec<StoredUnits>> = BTreeMap::new();
    for (event, customer, quantity, period_start) in stored {
        units.entry(customer).or_default().push(StoredUnits {
            period_start,
            model: models.get(&event).copied().flatten(),
            units: u64::try_from(quantity).unwrap_or(0),
        });
    }
    let (credit_customers, credit_burned_cents) = burn_credits(&mut tx, &units).await?;
    tx.commit().await?;
    Ok(IngestOutcome {
        inserted,
        duplicates: n as u64 - inserted,
        credit_customers,
        credit_burned_cents,
    })
}

/// Units of one stored event.
struct StoredUnits {
    period_start: OffsetDateTime,
    model: Option<BillingModel>,
    units: u64,
}

impl StoredUnits {
    /// Whether these units are paid with the customer's current credits: admitted on
    /// credits (an event written before the field existed does not say), in a period of
    /// the current stay on credits. A unit admitted on the fixed fee (or Free) that
    /// reaches the ledger after the switch to credits (a usage log shipped late) belongs
    /// to its period — its overage is trued up on an invoice — and is not paid for twice;
    /// a unit of an earlier stay on credits was paid by that stay's grants, which expired
    /// with the switch away from them.
    fn burns_credits(&self, entered: Option<OffsetDateTime>) -> bool {
        self.model != Some(BillingModel::FixedFee) && entered.is_none_or(|e| self.period_start >= e)
    }
}

/// Deducts newly stored units of credit-burndown customers from their grants: each
/// unit takes its grant's per-ticket price from the grant that expires first; only
/// units admitted on credits ([`StoredUnits::burns_credits`]). The
/// proxy never admits more units than were bought, so the balance suffices; if it does
/// not (a grant expired meanwhile), what is left is used and the shortfall logged —
/// a grant never goes below zero (the schema's CHECK guarantees it too).
async fn burn_credits(
    tx: &mut Transaction<'_, Postgres>,
    units: &BTreeMap<String, Vec<StoredUnits>>,
) -> Result<(Vec<CustomerId>, i64), sqlx::Error> {
    if units.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let mut burned = 0i64;
    let customers: Vec<String> = units.keys().cloned().collect();
    let credit_customers =
        crate::subscription_store::on_credits_among(&mut *tx, &customers).await?;
    let now = OffsetDateTime::now_utc();
    let mut changed = Vec::new();
    for (customer, entered) in credit_customers {
        let wanted: u64 = units
            .get(&customer)
            .into_iter()
            .flatten()
            .filter(|u| u.burns_credits(entered))
            .map(|u| u.units)
            .sum();
        if wanted == 0 {
            continue;
        }
        let rows = sqlx::query!(
            r#"SELECT id, remaining_amount AS "remaining!", unit_price, expires_at, created_at
               FROM billing_credits
               WHERE customer_id = $1 AND closed_at IS NULL AND remaining_amount > 0
               ORDER BY expires_at NULLS LAST, created_at, id
               FOR UPDATE"#,
            customer
        )
        .fetch_all(&mut **tx)
        .await?;
        let price_of: BTreeMap<uuid::Uuid, Money> = rows
            .iter()
            .filter_map(|r| Money::from_decimal_exact(r.unit_price).map(|p| (r.id, p)))
            .collect();
        let mut grants: Vec<CreditGrant> = rows
            .iter()
            .filter_map(|r| {
                Some(CreditGrant {
                    id: r.id,
                    remaining: Money::from_decimal_exact(r.remaining)?,
                    expires_at: r.expires_at,
                    granted_at: r.created_at,
                })
            })
            .collect();
        let mut taken: BTreeMap<uuid::Uuid, Money> = BTreeMap::new();
        let mut short = 0u64;
        for _ in 0..wanted {
            // The unit's price is that of the grant it is taken from: the first usable
            // one in consumption order that still holds a whole ticket.
            let next = grants
                .iter()
                .filter(|g| g.is_usable(now))
                .find(|g| price_of.get(&g.id).is_some_and(|p| g.remaining >= *p));
            let Some(price) = next.and_then(|g| price_of.get(&g.id)).copied() else {
                short += 1;
                continue;
            };
            match deduct_fifo(&grants, price, now) {
                Ok(deductions) => {
                    for d in deductions {
                        if let Some(g) = grants.iter_mut().find(|g| g.id == d.grant_id) {
                            g.remaining = g.remaining - d.amount;
                        }
                        let entry = taken.entry(d.grant_id).or_insert(Money::ZERO);
                        *entry = *entry + d.amount;
                    }
                }
                Err(_) => short += 1,
            }
        }
        if short > 0 {
            tracing::error!(customer = %customer, short, "credit burndown: units consumed beyond the balance");
        }
        for (grant, amount) in &taken {
            burned += amount.to_cents();
            sqlx::query!(
                "UPDATE billing_credits SET used_amount = used_amount + $2, updated_at = now()
                 WHERE id = $1",
                grant,
                amount.as_decimal()
            )
            .execute(&mut **tx)
            .await?;
        }
        if let Ok(id) = CustomerId::parse(&customer) {
            changed.push(id);
        }
    }
    Ok((changed, burned))
}

/// What is left on a customer's usable credit grants.
pub async fn credit_balance(pool: &PgPool, customer: &CustomerId) -> Result<Money, sqlx::Error> {
    let sum: Decimal = sqlx::query_scalar!(
        r#"SELECT COALESCE(SUM(remaining_amount), 0) AS "sum!"
           FROM billing_credits
           WHERE customer_id = $1 AND closed_at IS NULL
             AND (expires_at IS NULL OR expires_at > now())"#,
        customer.as_str()
    )
    .fetch_one(pool)
    .await?;
    Ok(Money::from_decimal_exact(sum).unwrap_or(Money::ZERO))
}

/// Usage between `from` and `to` by day (UTC) or by billing period, and usage type.
pub async fn history(
    pool: &PgPool,
    customer: &CustomerId,
    from: OffsetDateTime,
    to: OffsetDateTime,
    granularity: Granularity,
) -> Result<Vec<HistoryBucket>, sqlx::Error> {
    let rows = match granularity {
        Granularity::Day => sqlx::query!(
            r#"SELECT date_trunc('day', occurred_at, 'UTC') AS "start!",
                      usage_type, SUM(quantity)::BIGINT AS "quantity!"
               FROM usage_records
               WHERE customer_id = $1 AND occurred_at >= $2 AND occurred_at < $3
               GROUP BY 1, 2 ORDER BY 1, 2"#,
            customer.as_str(),
            from,
            to
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| HistoryBucket {
            start: r.start,
            end: r.start + time::Duration::days(1),
            usage_type: r.usage_type,
            quantity: r.quantity,
        })
        .collect(),
        Granularity::Period => sqlx::query!(
            r#"SELECT billing_period_start AS "billing_period_start!",
                      billing_period_end AS "billing_period_end!",
                      usage_type AS "usage_type!", SUM(quantity)::BIGINT AS "quantity!"
               FROM (
                   SELECT billing_period_start, billing_period_end, usage_type, quantity::BIGINT
                   FROM usage_records WHERE customer_id = $1
                   UNION ALL
                   SELECT billing_period_start, billing_period_end, usage_type, quantity
                   FROM usage_period_totals WHERE customer_id = $1
               ) u
               WHERE billing_period_end > $2 AND billing_period_start < $3
               GROUP BY 1, 2, 3 ORDER BY 1, 3"#,
            customer.as_str(),
            from,
            to
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| HistoryBucket {
            start: r.billing_period_start,
            end: r.billing_period_end,
            usage_type: r.usage_type,
            quantity: r.quantity,
        })
        .collect(),
    };
    Ok(rows)
}

/// Whether an event id is already in the ledger.
pub async fn exists(pool: &PgPool, event_id: uuid::Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM usage_records WHERE event_id = $1) AS "exists!""#,
        event_id
    )
    .fetch_one(pool)
    .await
}

/// The overage a fixed-fee snapshot has run up this period (zero for other models).
pub fn overage_so_far(
    catalog: &billing_model::Catalog,
    snapshot: &billing_model::EntitlementSnapshot,
) -> Money {
    if !matches!(
        snapshot.enforcement(),
        billing_model::Enforcement::PaidOverage
    ) {
        return Money::ZERO;
    }
    catalog
        .get(&snapshot.plan)
        .and_then(|plan| billing_model::overage_amount(plan, snapshot.units_used).ok())
        .unwrap_or(Money::ZERO)
}

/// How usage history is bucketed: per day, or per billing period.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    #[default]
    Day,
    Period,
}

/// Usage of one type in one bucket.
#[derive(Debug, serde::Serialize)]
pub struct HistoryBucket {
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
    pub usage_type: String,
    pub quantity: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn units(model: Option<BillingModel>, period_start: OffsetDateTime) -> StoredUnits {
        StoredUnits {
            period_start,
            model,
            units: 1,
        }
    }

    #[test]
    fn only_units_admitted_on_credits_in_the_current_stay_burn_credits() {
        let entered = Some(datetime!(2026-06-10 12:00 UTC));
        let before = datetime!(2026-06-01 0:00 UTC);
        let after = datetime!(2026-06-10 12:00 UTC);
        let credits = Some(BillingModel::CreditBurndown);
        let fixed = Some(BillingModel::FixedFee);
        // Admitted on credits in this stay: burns.
        assert!(units(credits, after).burns_credits(entered));
        // A fixed-fee period's ticket shipped late: its period's overage, not credits.
        assert!(!units(fixed, before).burns_credits(entered));
        assert!(!units(fixed, after).burns_credits(entered));
        // Admitted on credits in an earlier stay: those grants paid for it and expired.
        assert!(!units(credits, before).burns_credits(entered));
        // Written before events named their model: by the period alone.
        assert!(units(None, after).burns_credits(entered));
        assert!(!units(None, before).burns_credits(entered));
        assert!(units(None, before).burns_credits(None));
    }
}
