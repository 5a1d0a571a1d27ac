//! Stripe reconciliation: heals lost or never-delivered webhooks within one interval.
//!
//! Stripe keeps every event for 30 days and lists them by creation time. The job asks
//! for the events created since its last run (with an overlap, since Stripe's clock and
//! ours differ), puts any that never reached the inbox into it, and lets the inbox worker
//! apply them — the same code path as a delivered webhook, so a repaired event is applied
//! exactly as it would have been, once. Subscriptions changed since the last run are
//! therefore re-fetched and stored; every repair is counted in
//! `tollgate_cp_stripe_reconcile_repairs_total`.

use crate::state::AppState;
use serde_json::{Value, json};

const CURSOR: &str = "stripe_events";
/// How far back the first run looks, and how much each run overlaps the previous one.
const FIRST_LOOKBACK_SECONDS: i64 = 3 * 24 * 3600;
const OVERLAP_SECONDS: i64 = 300;

/// One pass; returns how many events were missing from the inbox.
pub async fn run_once(state: &AppState) -> anyhow::Result<u64> {
    let Some(gateway) = state.stripe.as_ref() else {
        return Ok(0);
    };
    let since = sqlx::query_scalar!("SELECT position FROM job_cursors WHERE job = $1", CURSOR)
        .fetch_optional(&state.pool)
        .await?
        .map(|p| p - OVERLAP_SECONDS)
        .unwrap_or_else(|| {
            time::OffsetDateTime::now_utc().unix_timestamp() - FIRST_LOOKBACK_SECONDS
        });
    let mut repaired = 0;
    let mut newest = since;
    let mut after: Option<String> = None;
    loop {
        let page = gateway
            .list_events(since, crate::webhooks::event::HANDLED, after.as_deref())
            .await?;
        for event in &page.data {
            newest = newest.max(event.created);
            let object: Value =
                serde_json::from_str(&miniserde::json::to_string(&event.data.object))?;
            let payload = json!({
                "id": event.id.as_str(),
                "object": "event",
                "type": event.type_.as_str(),
                "created": event.created,
                "api_version": event.api_version,
                "livemode": event.livemode,
                "data": { "object": object },
                "tollgate_source": "reconciliation",
            });
            let inserted = crate::webhooks::inbox::store(
                &state.pool,
                event.id.as_str(),
                event.type_.as_str(),
                event.created,
                &payload,
            )
            .await?;
            if inserted {
                repaired += 1;
                tracing::warn!(
                    event = event.id.as_str(),
                    kind = event.type_.as_str(),
                    "reconciliation found an event webhooks had not delivered"
                );
            }
        }
        match (page.has_more, page.data.last()) {
            (true, Some(last)) => after = Some(last.id.as_str().to_owned()),
            _ => break,
        }
    }
    sqlx::query!(
        "INSERT INTO job_cursors (job, position) VALUES ($1, $2)
         ON CONFLICT (job) DO UPDATE SET position = GREATEST(job_cursors.position, EXCLUDED.position),
             updated_at = now()",
        CURSOR,
        newest
    )
    .execute(&state.pool)
    .await?;
    if repaired > 0 {
        state.metrics.stripe_reconcile_repairs.inc_by(repaired);
        if let Some(webhooks) = &state.webhooks {
            webhooks.wake.notify_one();
        }
    }
    Ok(repaired)
}
