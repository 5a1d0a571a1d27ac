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

    let rows = crate::subscription_store::count_by_plan(&state.pool).await?;
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
    for (plan_type, billing_model, status, n) in &rows {
        m.active_subscriptions
            .with_label_values(&[plan_type, billing_model, status])
            .set(*n);
        // MRR counts fixed fees that are being paid: active, trialing or within grace.
        let paying = crate::subscription_store::SubscriptionStatus::names_live(status);
        if paying && billing_model == "fixed_fee" {
            let fee = PlanId::parse(plan_type)
                .ok()
                .and_then(|p| state.catalog.get(&p))
                .map(|p| p.monthly_fee())
                .unwrap_or(Money::ZERO);
            m.mrr_cents
                .with_label_values(&[plan_type])
                .add(fee.to_cents() * n);
        }
    }

    let usage = crate::subscription_store::usage_this_period_by_plan(
        &state.pool,
        state.catalog.free_plan().id().as_str(),
    )
    .await?;
    m.period_usage_units.reset();
    for plan in state.catalog.iter() {
        m.period_usage_units
            .with_label_values(&[plan.id().as_str()])
            .set(0);
    }
    for (plan, units) in &usage {
        m.period_usage_units.with_label_values(&[plan]).set(*units);
    }

    let backlog = sqlx::query_scalar!(
        r#"SELECT COUNT(*) AS "n!" FROM notification_outbox WHERE delivered_at IS NULL"#
    )
    .fetch_one(&state.pool)
    .await?;
    m.notification_backlog.set(backlog);
    Ok(())
}
