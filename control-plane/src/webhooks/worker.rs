//! The inbox worker: applies stored Stripe events one at a time, each in the transaction
//! that marks it applied; an event whose effect cannot be applied yet (Stripe unreachable
//! or refusing) stays pending and is retried with backoff while the events behind it go on.

use crate::state::AppState;
use std::time::Duration;

/// Applies pending events until `stop` fires; wakes on new events and every second.
pub async fn run_worker(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(webhooks) = state.webhooks.clone() else {
        return;
    };
    loop {
        loop {
            match apply_next(&state).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook worker: will retry");
                    break;
                }
            }
        }
        tokio::select! {
            _ = webhooks.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// An inbox row to apply.
#[derive(sqlx::FromRow)]
struct Pending {
    event_id: String,
    event_type: String,
    payload: serde_json::Value,
    stripe_created: i64,
    attempts: i32,
    object_id: Option<String>,
}

/// Applies the oldest pending event that is due; `false` when none is.
pub async fn apply_next(state: &AppState) -> anyhow::Result<bool> {
    let mut tx = state.pool.begin().await?;
    let Some(event) = sqlx::query_as::<_, Pending>(
        "SELECT event_id, event_type, payload, stripe_created, attempts, object_id
         FROM stripe_events
         WHERE applied_at IS NULL AND next_attempt_at <= now()
         ORDER BY received_at
         LIMIT 1
         FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(false);
    };
    let started = std::time::Instant::now();
    // A re-fetch hint covers every pending hint of the same object received before it.
    let coalesced = match event.object_id.as_deref() {
        Some(object) if super::event::REFETCH_ONLY.contains(&event.event_type.as_str()) => {
            super::inbox::coalesce(&mut tx, &event.event_id, object).await?
        }
        _ => Vec::new(),
    };
    let object = event.payload["data"]["object"].clone();
    let outcome = super::apply::apply(
        state,
        &mut tx,
        &event.event_type,
        &object,
        event.stripe_created,
    )
    .await;
    let (label, touched) = match outcome {
        Ok(Some(customer)) => ("applied", Some(customer)),
        Ok(None) => ("ignored", None),
        Err(super::apply::ApplyError::Stripe(e)) => {
            // Leave it pending and retry it later with backoff (1 s doubling, at most
            // 5 min): Stripe is unreachable or refused. Events behind it go on meanwhile,
            // which is safe because applying is order-independent.
            tx.rollback().await?;
            state
                .metrics
                .webhook_events
                .with_label_values(&[event.event_type.as_str(), "failed", "stripe"])
                .inc();
            let backoff = 2f64.powi(event.attempts.clamp(0, 16)).min(300.0);
            tracing::warn!(error = %e, event = %event.event_id, attempts = event.attempts + 1,
                "webhook event not applied; will retry");
            sqlx::query(
                "UPDATE stripe_events SET attempts = attempts + 1, last_error = $2,
                     next_attempt_at = now() + make_interval(secs => $3)
                 WHERE event_id = $1",
            )
            .bind(&event.event_id)
            .bind(e.to_string())
            .bind(backoff)
            .execute(&state.pool)
            .await?;
            return Ok(true);
        }
        Err(super::apply::ApplyError::Database(e)) => return Err(e.into()),
    };
    sqlx::query("UPDATE stripe_events SET applied_at = now(), outcome = $2 WHERE event_id = $1")
        .bind(&event.event_id)
        .bind(label)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    for kind in &coalesced {
        state
            .metrics
            .webhook_events
            .with_label_values(&[kind.as_str(), "coalesced", ""])
            .inc();
    }
    state
        .metrics
        .webhook_events
        .with_label_values(&[event.event_type.as_str(), label, ""])
        .inc();
    state
        .metrics
        .webhook_apply_seconds
        .observe(started.elapsed().as_secs_f64());
    if let Some(customer) = touched
        && let Err(e) = state.publisher.publish(&customer).await
    {
        tracing::warn!(error = %e, customer = %customer, "entitlement publish after webhook failed");
    }
    Ok(true)
}
