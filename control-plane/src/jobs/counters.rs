//! Counter reconciliation ("dual storage with reconciliation"): Redis counters are a
//! view of the ledger. This job compares them per customer and period, raises any
//! counter that fell behind the ledger (a Redis restart or flush) and exports the drift.
//!
//! It only ever raises a counter: a counter ahead of the ledger holds units whose events
//! are still on their way from a proxy's usage log, and lowering it would hand out free
//! quota.

use crate::metrics::Metrics;
use billing_model::{CustomerId, Money, RedisKeys};
use sqlx::PgPool;
use time::OffsetDateTime;

/// What one run found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterReport {
    pub counters_checked: u64,
    /// Counters raised to the ledger (missing or behind).
    pub repaired: u64,
    /// Units Redis was behind the ledger, before repair.
    pub behind_units: u64,
    /// Units Redis is ahead of the ledger (events not yet shipped; not repaired).
    pub ahead_units: u64,
}

use tollgate_runtime::counters::PERIOD_COUNTER_GRACE;

pub async fn reconcile(
    pool: &PgPool,
    redis: &mut redis::aio::ConnectionManager,
    keys: &RedisKeys,
) -> anyhow::Result<CounterReport> {
    let mut report = CounterReport::default();
    let now = OffsetDateTime::now_utc();

    let periods = sqlx::query!(
        r#"SELECT customer_id, billing_period_start, billing_period_end,
                  SUM(quantity)::BIGINT AS "used!"
           FROM usage_records
           WHERE billing_period_end > now()
           GROUP BY 1, 2, 3"#
    )
    .fetch_all(pool)
    .await?;
    for p in periods {
        let Ok(customer) = CustomerId::parse(&p.customer_id) else {
            continue;
        };
        let key = keys.usage_counter(&customer, p.billing_period_start);
        let ttl = (p.billing_period_end - now).whole_seconds() + PERIOD_COUNTER_GRACE;
        check(
            redis,
            &key,
            u64::try_from(p.used).unwrap_or(0),
            Some(ttl),
            &mut report,
        )
        .await?;
    }

    let credits = sqlx::query!(
        r#"SELECT customer_id, unit_price, SUM(used_amount) AS "used!"
           FROM billing_credits GROUP BY 1, 2"#
    )
    .fetch_all(pool)
    .await?;
    let mut per_customer: std::collections::BTreeMap<String, u64> = Default::default();
    for c in credits {
        let units = Money::from_decimal_exact(c.used)
            .zip(Money::from_decimal_exact(c.unit_price))
            .map(|(a, p)| billing_model::whole_units(a, p))
            .unwrap_or(0);
        *per_customer.entry(c.customer_id).or_default() += units;
    }
    for (customer, used) in per_customer {
        let Ok(customer) = CustomerId::parse(&customer) else {
            continue;
        };
        check(
            redis,
            &keys.credits_used(&customer),
            used,
            None,
            &mut report,
        )
        .await?;
    }
    Ok(report)
}

async fn check(
    redis: &mut redis::aio::ConnectionManager,
    key: &str,
    ledger: u64,
    ttl_seconds: Option<i64>,
    report: &mut CounterReport,
) -> anyhow::Result<()> {
    report.counters_checked += 1;
    let current: Option<u64> = redis::cmd("GET").arg(key).query_async(redis).await?;
    let current = current.unwrap_or(0);
    if current >= ledger {
        report.ahead_units += current - ledger;
        return Ok(());
    }
    report.behind_units += ledger - current;
    report.repaired += 1;
    // Raise only: a concurrent INCR between the GET and here is kept by taking the max
    // inside Redis.
    let script = redis::Script::new(
        r"local c = tonumber(redis.call('GET', KEYS[1]) or '0')
          if c < tonumber(ARGV[1]) then
            if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
            else redis.call('SET', KEYS[1], ARGV[1]) end
          end
          return 1",
    );
    let _: i64 = script
        .key(key)
        .arg(ledger)
        .arg(ttl_seconds.unwrap_or(0).max(0))
        .invoke_async(redis)
        .await?;
    Ok(())
}

/// Runs one reconciliation under the advisory lock and records it in metrics.
pub async fn run_once(
    pool: &PgPool,
    redis: &redis::aio::ConnectionManager,
    keys: &RedisKeys,
    metrics: &Metrics,
) -> anyhow::Result<Option<CounterReport>> {
    let mut redis = redis.clone();
    let report = super::with_lock(pool, super::COUNTER_RECONCILIATION_LOCK, || async {
        reconcile(pool, &mut redis, keys).await
    })
    .await?;
    if let Some(r) = report {
        metrics
            .counter_drift_units
            .with_label_values(&["redis_behind"])
            .set(r.behind_units as i64);
        metrics
            .counter_drift_units
            .with_label_values(&["redis_ahead"])
            .set(r.ahead_units as i64);
        metrics.counter_repairs.inc_by(r.repaired);
        if r.repaired > 0 {
            tracing::warn!(
                repaired = r.repaired,
                behind = r.behind_units,
                "usage counters repaired from the ledger"
            );
        }
    }
    Ok(report)
}
