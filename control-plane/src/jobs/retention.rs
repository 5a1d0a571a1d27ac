//! Retention: raw usage records of ended periods older than the configured age are
//! folded into per-period totals in the same statement that deletes them, so nothing is
//! counted twice or lost, and period history stays exact.

use sqlx::PgPool;

/// Folds usage recorded before `now - max_age_days` (periods that have ended only) into
/// totals; returns how many raw records were folded.
pub async fn fold_old_usage(pool: &PgPool, max_age_days: i32) -> Result<u64, sqlx::Error> {
    let folded = sqlx::query_scalar!(
        r#"WITH moved AS (
               DELETE FROM usage_records
               WHERE recorded_at < now() - make_interval(days => $1)
                 AND billing_period_end <= now()
               RETURNING customer_id, usage_type, billing_period_start, billing_period_end, quantity
           ),
           summed AS (
               SELECT customer_id, usage_type, billing_period_start, billing_period_end,
                      SUM(quantity)::BIGINT AS quantity, COUNT(*) AS records
               FROM moved GROUP BY 1, 2, 3, 4
           ),
           upserted AS (
               INSERT INTO usage_period_totals
                   (customer_id, usage_type, billing_period_start, billing_period_end, quantity)
               SELECT customer_id, usage_type, billing_period_start, billing_period_end, quantity
               FROM summed
               ON CONFLICT (customer_id, billing_period_start, usage_type)
               DO UPDATE SET quantity = usage_period_totals.quantity + EXCLUDED.quantity
           )
           SELECT COALESCE(SUM(records), 0)::BIGINT AS "folded!" FROM summed"#,
        max_age_days
    )
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(folded).unwrap_or(0))
}
