//! Grace periods end on their own clock: when a past-due customer's grace runs out, the
//! proxies must learn that the customer is back on Free limits, without any webhook.

use crate::state::AppState;
use billing_model::CustomerId;

const CURSOR: &str = "grace_expiry";

/// Publishes a fresh snapshot for every customer whose grace ended since the last run;
/// returns how many.
pub async fn run_once(state: &AppState) -> anyhow::Result<u64> {
    let now = time::OffsetDateTime::now_utc();
    let since = sqlx::query_scalar!("SELECT position FROM job_cursors WHERE job = $1", CURSOR)
        .fetch_optional(&state.pool)
        .await?
        .and_then(|p| time::OffsetDateTime::from_unix_timestamp(p).ok())
        .unwrap_or(now - time::Duration::days(1));
    let lapsed = crate::subscription_store::graces_ended(&state.pool, since, now).await?;
    for (customer_id, subscription) in &lapsed {
        crate::notifications::enqueue(
            &state.pool,
            customer_id,
            crate::notifications::Kind::FellBackToFree,
            &format!("fallback/{}", subscription.as_deref().unwrap_or("")),
            serde_json::json!({ "reason": "grace_period_ended" }),
        )
        .await?;
        if let Ok(customer) = CustomerId::parse(customer_id) {
            state.publisher.publish(&customer).await?;
            tracing::info!(customer = %customer, "grace period over: back to Free limits");
        }
    }
    sqlx::query!(
        "INSERT INTO job_cursors (job, position) VALUES ($1, $2)
         ON CONFLICT (job) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
        CURSOR,
        now.unix_timestamp()
    )
    .execute(&state.pool)
    .await?;
    Ok(lapsed.len() as u64)
}
