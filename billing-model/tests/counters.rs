//! The Redis counter protocol against a real Redis (127.0.0.1:6379, or TOLLGATE_TEST_REDIS).

#![cfg(feature = "counters")]

use billing_model::counters::{CounterRef, Counters};
use billing_model::{Counter, CustomerId, RedisKeys};
use std::time::Duration;
use time::OffsetDateTime;

async fn setup(reservation_ttl: Duration) -> (Counters, CounterRef) {
    let url =
        std::env::var("TOLLGATE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url).unwrap();
    let manager = redis::aio::ConnectionManager::new(client).await.unwrap();
    let keys = RedisKeys::new(&format!("tg:test:{}:", uuid::Uuid::new_v4().simple())).unwrap();
    let now = OffsetDateTime::now_utc();
    let counter = CounterRef::new(
        &keys,
        &CustomerId::parse("c1").unwrap(),
        Counter::Period { start: now },
        0,
        now + time::Duration::days(30),
        now,
    );
    (Counters::new(manager, reservation_ttl), counter)
}

const BUDGET: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_crashed_proxys_reservation_expires_and_its_unit_comes_back() {
    let (counters, counter) = setup(Duration::from_millis(300)).await;
    let held = counters
        .reserve(&counter, 1, "crashed", 1, BUDGET)
        .await
        .unwrap();
    assert!(held.admitted);
    // Neither committed nor released: the proxy died.
    let blocked = counters
        .reserve(&counter, 1, "next", 1, BUDGET)
        .await
        .unwrap();
    assert!(
        !blocked.admitted,
        "the unit is held while the reservation lives"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = counters
        .reserve(&counter, 1, "after", 1, BUDGET)
        .await
        .unwrap();
    assert!(after.admitted, "the expired reservation gave the unit back");
}

#[tokio::test]
async fn commit_turns_a_reservation_into_a_count_and_release_gives_it_back() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    assert!(
        counters
            .reserve(&counter, 2, "a", 1, BUDGET)
            .await
            .unwrap()
            .admitted
    );
    assert!(
        counters
            .reserve(&counter, 2, "b", 1, BUDGET)
            .await
            .unwrap()
            .admitted
    );
    assert!(
        !counters
            .reserve(&counter, 2, "c", 1, BUDGET)
            .await
            .unwrap()
            .admitted
    );
    assert_eq!(counters.commit(&counter, Some("a"), 1).await.unwrap(), 1);
    counters.release(&counter, "b", 1).await.unwrap();
    let r = counters.reserve(&counter, 2, "d", 1, BUDGET).await.unwrap();
    assert!(r.admitted);
    assert_eq!((r.committed, r.in_flight), (1, 1));
}

#[tokio::test]
async fn a_counter_behind_the_ledger_is_raised_to_it_never_lowered() {
    let (counters, mut counter) = setup(Duration::from_secs(60)).await;
    counter.seed = 7;
    let r = counters
        .reserve(&counter, 10, "x", 1, BUDGET)
        .await
        .unwrap();
    assert!(r.seeded);
    assert_eq!(r.committed, 7);
    counter.seed = 3;
    let r = counters
        .reserve(&counter, 10, "y", 1, BUDGET)
        .await
        .unwrap();
    assert!(!r.seeded);
    assert_eq!(
        r.committed, 7,
        "a lower ledger figure never lowers the counter"
    );
}
