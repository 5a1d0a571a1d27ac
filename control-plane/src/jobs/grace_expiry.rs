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
    let lapsed = sqlx::query!(
        "SELECT customer_id, stripe_subscription_id FROM subscriptions
         WHERE status = 'past_due' AND grace_until > $1 AND grace_until <= $2",
        since,
        now
    )
    .fetch_all(&state.pool)
    .await?;
    for row in &lapsed {
        crate::notifications::enqueue(
            &state.pool,
            &row.customer_id,
            crate::notifications::Kind::FellBackToFree,
            &format!(
                "fallback/{}",
                row.stripe_subscription_id.as_deref().unwrap_or("")
            ),
            serde_json::json!({ "reason": "grace_period_ended" }),
        )
        .await?;
        if let Ok(customer) = CustomerId::parse(&row.customer_id) {
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
