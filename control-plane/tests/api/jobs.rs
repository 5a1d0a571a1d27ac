//! The jobs' advisory locks: one replica at a time runs a job, a job's lock costs none of
//! the pool its work uses, and a replica that dies mid-job leaves the lock behind it.

use crate::helpers::migrated_database;
use std::time::Duration;
use tollgate_control_plane::jobs::{RETENTION_LOCK, with_lock};

/// A pool of `size` connections that waits at most a second for one.
async fn pool_of(url: &str, size: u32) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(1))
        .connect(url)
        .await
        .expect("connect")
}

#[tokio::test]
async fn a_job_holding_its_lock_can_use_every_connection_of_the_pool() {
    let (database, _) = migrated_database().await;
    // One connection: a lock held on a pooled connection leaves the work none.
    let pool = pool_of(&database.url, 1).await;
    let ran = with_lock(&pool, RETENTION_LOCK, || async {
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
        Ok(one)
    })
    .await
    .expect("the work gets the pool's connection");
    assert_eq!(ran, Some(1));
}

#[tokio::test]
async fn only_one_replica_runs_a_job_at_a_time_and_the_next_run_takes_the_lock_again() {
    let (database, _) = migrated_database().await;
    let (first, second) = (
        pool_of(&database.url, 2).await,
        pool_of(&database.url, 2).await,
    );
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (finish, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(async move {
        with_lock(&first, RETENTION_LOCK, || async move {
            let _ = started_tx.send(());
            let _ = finish_rx.await;
            Ok("first")
        })
        .await
        .unwrap()
    });
    started.await.unwrap();
    let meanwhile = with_lock(&second, RETENTION_LOCK, || async { Ok("second") })
        .await
        .unwrap();
    assert_eq!(
        meanwhile, None,
        "the other replica skips while the lock is held"
    );
    finish.send(()).unwrap();
    assert_eq!(holder.await.unwrap(), Some("first"));
    let after = with_lock(&second, RETENTION_LOCK, || async { Ok("second") })
        .await
        .unwrap();
    assert_eq!(after, Some("second"), "a finished job leaves the lock free");
}

#[tokio::test]
async fn a_replica_that_dies_mid_job_releases_the_lock() {
    let (database, _) = migrated_database().await;
    let (first, second) = (
        pool_of(&database.url, 2).await,
        pool_of(&database.url, 2).await,
    );
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(async move {
        with_lock(&first, RETENTION_LOCK, || async move {
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
            Ok(())
        })
        .await
    });
    started.await.unwrap();
    holder.abort();
    let _ = holder.await;
    // The server notices the closed session and drops its locks.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let run = with_lock(&second, RETENTION_LOCK, || async { Ok(()) })
            .await
            .unwrap();
        if run.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dead replica's lock was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
