//! The inbox of Stripe events: each stored once by id (from the webhook endpoint or from
//! reconciliation), applied later by the workers. Pending events that only say "this
//! object changed" are coalesced: applying one re-fetches the object, which covers
//! every such event of it received before.

use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

/// Stores an event unless one with its id is there already; `true` when it is new.
pub async fn store(
    pool: &PgPool,
    event_id: &str,
    kind: &str,
    created: i64,
    payload: &Value,
) -> Result<bool, sqlx::Error> {
    let object_id = payload["data"]["object"]["id"].as_str();
    let stored = sqlx::query(
        "INSERT INTO stripe_events (event_id, event_type, stripe_created, payload, object_id)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(kind)
    .bind(created)
    .bind(payload)
    .bind(object_id)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(stored > 0)
}

/// Marks applied, as `coalesced`, the other pending events of `object_id` whose whole
/// effect is a re-fetch of it ([`super::event::REFETCH_ONLY`]), in the transaction that
/// applies `event_id` (the re-fetch happens after this, so it sees at least what each of
/// them announced; a rollback leaves them pending again). Events another worker holds
/// are left to it. Returns the types of the events coalesced.
pub(super) async fn coalesce(
    tx: &mut Transaction<'_, Postgres>,
    event_id: &str,
    object_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE stripe_events SET applied_at = now(), outcome = 'coalesced'
         WHERE event_id IN (
             SELECT event_id FROM stripe_events
             WHERE applied_at IS NULL AND object_id = $1 AND event_id <> $2
               AND event_type = ANY($3)
             FOR UPDATE SKIP LOCKED)
         RETURNING event_type",
    )
    .bind(object_id)
    .bind(event_id)
    .bind(super::event::REFETCH_ONLY)
    .fetch_all(&mut **tx)
    .await
}
