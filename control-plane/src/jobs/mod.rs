//! Periodic jobs. Each runs on every replica's schedule but does its work only while it
//! holds its PostgreSQL advisory lock, so one replica at a time does it.

pub mod business_metrics;
pub mod counters;
pub mod grace_expiry;
pub mod overage_trueup;
pub mod retention;
pub mod stripe_reconciliation;

use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;

/// Advisory lock keys, one per job (arbitrary, stable numbers).
pub const COUNTER_RECONCILIATION_LOCK: i64 = 0x7467_0001;
pub const RETENTION_LOCK: i64 = 0x7467_0002;
pub const STRIPE_SYNC_LOCK: i64 = 0x7467_0003;
pub const DUNNING_LOCK: i64 = 0x7467_0004;
pub const OVERAGE_TRUEUP_LOCK: i64 = 0x7467_0005;

/// Runs `work` while holding the advisory lock `key`; returns `None` when another
/// replica holds it.
///
/// The lock is a session lock on a connection of its own, outside the pool: the work
/// takes its connections from the pool, and a lock held on a pooled connection would make
/// every job need two at once (five jobs ticking together on a pool of five would each
/// hold one and wait for another until the acquire timeout). The lock ends with the
/// connection, so a replica that dies mid-job releases it.
pub async fn with_lock<T, F, Fut>(pool: &PgPool, key: i64, work: F) -> anyhow::Result<Option<T>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut conn)
        .await?;
    if !locked {
        let _ = conn.close().await;
        return Ok(None);
    }
    let result = work().await;
    // Closing the session releases the lock (an explicit unlock would only repeat it).
    let _ = conn.close().await;
    result.map(Some)
}

/// Calls `tick` every `interval` (the first time one interval after start) until
/// `stop` fires.
pub async fn every<F, Fut>(
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut tick: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An interval's first tick is immediate; a job starts one interval after the service.
    timer.tick().await;
    loop {
        tokio::select! {
            _ = timer.tick() => tick().await,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}
