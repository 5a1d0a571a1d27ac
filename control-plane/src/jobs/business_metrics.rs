//! Business gauges from PostgreSQL (MRR, subscriptions, usage per plan, notification
//! backlog) and dependency health, refreshed periodically so a scrape never queries.

use crate::state::AppState;
use billing_model::{Money, PlanId};

/// One refresh. Each replica refreshes its own gauges (they read shared state, so every
/// replica reports the same figures; dashboards take `max`).
pub async fn refresh(state: &AppState) -> anyhow::Result<()> {
    let m = &state.metrics;
    let postgres_up = sqlx::query_scalar!("SELECT 1 AS one")
        .fetch_one(&state.pool)
        .await
        .is_ok();
    let mut redis = state.redis.clone();
    let redis_up = redis::cmd("PING")
        .query_async::<String>(&mut redis)
        .await
        .is_ok();
    m.dependency_up
        .with_label_values(&["postgres"])
        .set(i64::from(postgres_up));
    m.dependency_up
        .with_label_values(&["redis"])
        .set(i64::from(redis_up));
    if !postgres_up {
        return Ok(());
    }

    let rows = sqlx::query!(
        r#"SELECT plan_type, billing_model, status, COUNT(*) AS "n!"
           FROM subscriptions WHERE status <> 'canceled'
           GROUP BY plan_type, billing_model, status"#
    )
    .fetch_all(&state.pool)
    .await?;
    m.active_subscriptions.reset();
    m.mrr_cents.reset();
    for plan in state.catalog.iter() {
        m.mrr_cents.with_label_values(&[plan.id().as_str()]).set(0);
        for model in ["fixed_fee", "credit_burndown"] {
            m.active_subscriptions
                .with_label_values(&[plan.id().as_str(), model, "active"])
                .set(0);
        }
    }
    for r in &rows {
        m.active_subscriptions
            .with_label_values(&[&r.plan_type, &r.billing_model, &r.status])
            .set(r.n);
        // MRR counts fixed fees that are being paid: active, trialing or within grace.
        let paying = crate::stripe::is_live(&r.status);
        if paying && r.billing_model == "fixed_fee" {
            let fee = PlanId::parse(&r.plan_type)
                .ok()
                .and_then(|p| state.catalog.get(&p))
                .map(|p| p.monthly_fee())
                .unwrap_or(Money::ZERO);
            m.mrr_cents
                .with_label_values(&[&r.plan_type])
                .add(fee.to_cents() * r.n);
        }
    }

    let usage = sqlx::query!(
        r#"SELECT COALESCE(s.plan_type, $1) AS "plan!", SUM(u.quantity)::BIGINT AS "units!"
           FROM usage_records u
           LEFT JOIN LATERAL (
               SELECT plan_type FROM subscriptions s
               WHERE s.customer_id = u.customer_id AND s.status <> 'canceled'
               ORDER BY s.created_at DESC LIMIT 1
           ) s ON true
           WHERE u.billing_period_end > now()
           GROUP BY 1"#,
        state.catalog.free_plan().id().as_str()
    )
    .fetch_all(&state.pool)
    .await?;
    m.period_usage_units.reset();
    for plan in state.catalog.iter() {
        m.period_usage_units
            .with_label_values(&[plan.id().as_str()])
            .set(0);
    }
    for u in &usage {
        m.period_usage_units
            .with_label_values(&[&u.plan])
            .set(u.units);
    }

    let backlog = sqlx::query_scalar!(
        r#"SELECT COUNT(*) AS "n!" FROM notification_outbox WHERE delivered_at IS NULL"#
    )
    .fetch_one(&state.pool)
    .await?;
    m.notification_backlog.set(backlog);
    Ok(())
}
