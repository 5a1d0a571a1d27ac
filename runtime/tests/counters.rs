//! The Redis counter protocol against a real Redis (127.0.0.1:6379, or TOLLGATE_TEST_REDIS).

use billing_model::{Counter, CustomerId, RedisKeys};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tollgate_runtime::counters::holds::Holds;
use tollgate_runtime::counters::{CounterError, CounterRef, Counters};

fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn setup(reservation_ttl: Duration) -> (Counters, CounterRef) {
    setup_on(&redis_url(), reservation_ttl).await
}

async fn setup_on(url: &str, reservation_ttl: Duration) -> (Counters, CounterRef) {
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
    assert_eq!(counters.commit(&counter, "a", 1, 1).await.unwrap().count, 1);
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

/// A Redis of this test's own, so it can be stalled without stalling other tests.
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--enable-debug-command", "yes"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (deploy/local/setup.sh)");
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, url }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn inflight(url: &str, counter: &CounterRef) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ZCARD")
        .arg(&counter.inflight_key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_reservation_that_times_out_leaves_no_phantom_hold() {
    let redis = PrivateRedis::start();
    let (counters, counter) = setup_on(&redis.url, Duration::from_secs(60)).await;
    // Warm the connection and the script cache, so the timed-out call is the script.
    counters
        .reserve(&counter, 5, "warm", 1, BUDGET)
        .await
        .unwrap();
    counters.release(&counter, "warm", 1).await.unwrap();

    // Stall Redis: the reservation is sent, times out on our side, and runs afterwards.
    let stall_url = redis.url.clone();
    let stall = tokio::spawn(async move {
        let client = redis::Client::open(stall_url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // Only the stall on the server matters: the client's own response timeout
        // (500 ms by default) may give up on this reply first, which is fine.
        let _: Result<(), _> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("0.5")
            .query_async(&mut conn)
            .await;
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let outcome = counters
        .reserve(&counter, 5, "timed-out", 1, Duration::from_millis(20))
        .await;
    assert!(matches!(outcome, Err(CounterError::Timeout)), "{outcome:?}");
    stall.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        inflight(&redis.url, &counter).await,
        0,
        "the late reservation was released behind it"
    );
}

#[tokio::test]
async fn a_renewed_hold_outlives_the_ttl_and_an_unrenewed_one_does_not() {
    let ttl = Duration::from_millis(600);
    let (counters, counter) = setup(ttl).await;
    let holds = Holds::new(counters.clone());
    assert!(
        counters
            .reserve(&counter, 2, "slow", 1, BUDGET)
            .await
            .unwrap()
            .admitted
    );
    assert!(
        counters
            .reserve(&counter, 2, "crashed", 1, BUDGET)
            .await
            .unwrap()
            .admitted
    );
    let guard = holds.register(counter.clone(), "slow".into(), 1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(holds.clone().keep_alive(async move {
        let _ = stop_rx.await;
    }));
    // Three TTLs later the renewed hold still holds its unit; the crashed one is gone.
    tokio::time::sleep(ttl * 3).await;
    assert!(!guard.in_doubt());
    let r = counters
        .reserve(&counter, 2, "next", 1, BUDGET)
        .await
        .unwrap();
    assert!(r.admitted, "the crashed proxy's unit came back");
    let r = counters
        .reserve(&counter, 2, "more", 1, BUDGET)
        .await
        .unwrap();
    assert!(!r.admitted, "the slow request's unit is still held: {r:?}");
    let c = counters.commit(&counter, "slow", 1, 1).await.unwrap();
    assert!(!c.hold_lost && !c.duplicate);
    drop(guard);
    assert!(holds.is_empty());
    let _ = stop_tx.send(());
}

#[tokio::test]
async fn a_hold_found_gone_is_in_doubt_and_its_commit_still_counts() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let holds = Holds::new(counters.clone());
    assert!(
        counters
            .reserve(&counter, 1, "a", 1, BUDGET)
            .await
            .unwrap()
            .admitted
    );
    let guard = holds.register(counter.clone(), "a".into(), 1);
    holds.renew_all().await;
    assert!(!guard.in_doubt(), "renewed, present");
    // Redis lost the hold (say, a restart).
    counters.release(&counter, "a", 1).await.unwrap();
    holds.renew_all().await;
    assert!(guard.in_doubt());
    assert_eq!(holds.stats().1, 1);
    let c = counters.commit(&counter, "a", 1, 1).await.unwrap();
    assert_eq!((c.count, c.hold_lost), (1, true), "delivered, so counted");
}

#[tokio::test]
async fn a_hold_removed_by_its_own_commit_is_not_a_loss() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let holds = Holds::new(counters.clone());
    assert!(
        counters
            .reserve(&counter, 2, "a", 1, BUDGET)
            .await
            .unwrap()
            .admitted
    );
    let guard = holds.register(counter.clone(), "a".into(), 1);
    guard.settling();
    counters.commit(&counter, "a", 1, 1).await.unwrap();
    holds.renew_all().await;
    assert!(!guard.in_doubt());
    assert_eq!(holds.stats().1, 0);
}

#[tokio::test]
async fn a_short_ttl_caller_never_shortens_the_expiry_a_long_ttl_caller_set() {
    let (long, counter) = setup(Duration::from_secs(600)).await;
    let client = redis::Client::open(redis_url()).unwrap();
    let short = Counters::new(
        redis::aio::ConnectionManager::new(client).await.unwrap(),
        Duration::from_secs(3),
    );
    assert!(
        long.reserve(&counter, 5, "long", 1, BUDGET)
            .await
            .unwrap()
            .admitted
    );
    assert!(
        short
            .reserve(&counter, 5, "short", 1, BUDGET)
            .await
            .unwrap()
            .admitted
    );
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&counter.inflight_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        pttl > 600_000,
        "the in-flight set keeps the longer expiry: {pttl} ms"
    );
}

#[tokio::test]
async fn a_retried_commit_counts_once_and_a_lost_hold_still_counts() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    assert!(
        counters
            .reserve(&counter, 5, "a", 2, BUDGET)
            .await
            .unwrap()
            .admitted
    );
    let first = counters.commit(&counter, "a", 2, 2).await.unwrap();
    assert_eq!(
        (first.count, first.hold_lost, first.duplicate),
        (2, false, false)
    );
    let retry = counters.commit(&counter, "a", 2, 2).await.unwrap();
    assert_eq!(
        (retry.count, retry.duplicate),
        (2, true),
        "the retry counted nothing"
    );

    // A commit whose hold expired: the unit was delivered, so it counts, and says so.
    let late = counters.commit(&counter, "expired", 1, 1).await.unwrap();
    assert_eq!((late.count, late.hold_lost), (3, true));
}

#[tokio::test]
async fn an_uncommit_takes_back_exactly_one_commit() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    counters.commit(&counter, "x", 0, 3).await.unwrap();
    counters.commit(&counter, "y", 0, 1).await.unwrap();
    assert!(counters.uncommit(&counter, "x", 3).await.unwrap());
    assert!(
        !counters.uncommit(&counter, "x", 3).await.unwrap(),
        "only once"
    );
    assert_eq!(counters.committed(&counter, BUDGET).await.unwrap(), 1);
}

#[tokio::test]
async fn holds_of_many_requests_on_one_counter_renew_in_one_round() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let holds = Holds::new(counters.clone());
    let mut guards = Vec::new();
    for i in 0..50 {
        let id = format!("r{i}");
        assert!(
            counters
                .reserve(&counter, 100, &id, 2, BUDGET)
                .await
                .unwrap()
                .admitted
        );
        guards.push(holds.register(counter.clone(), id, 2));
    }
    counters.release(&counter, "r7", 2).await.unwrap();
    holds.renew_all().await;
    let doubtful: Vec<usize> = guards
        .iter()
        .enumerate()
        .filter(|(_, g)| g.in_doubt())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(doubtful, [7]);
    let _ = Arc::strong_count(&holds);
}
