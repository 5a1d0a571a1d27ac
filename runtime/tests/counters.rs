//! The Redis counter protocol against a real Redis (127.0.0.1:6379, or TOLLGATE_TEST_REDIS).

use billing_model::{Counter, CustomerId, RedisKeys};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tollgate_runtime::counters::leases::{Acquired, LeaseSettings, Leases, Slot};
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

fn leases_with(counters: &Counters, holder: &str, max_units: u32) -> Arc<Leases> {
    Leases::new(
        counters.clone(),
        holder.into(),
        LeaseSettings {
            max_units,
            idle: Duration::from_millis(100),
            max_age: Duration::from_secs(30),
        },
    )
}

/// Acquires one unit; `Some((slot, whether Redis was asked))` when admitted.
async fn take(leases: &Arc<Leases>, counter: &CounterRef, limit: u64) -> Option<(Slot, bool)> {
    match leases.acquire(counter, limit, 1, BUDGET).await.unwrap() {
        (Acquired::Admitted { slot, .. }, asked) => Some((slot, asked)),
        (Acquired::Refused { .. }, _) => None,
    }
}

async fn commit(counters: &Counters, slot: Slot, marker: &str) -> u64 {
    slot.settling();
    let counter = slot.counter().clone();
    let c = counters
        .commit_members(&counter, marker, &slot.members(), 1)
        .await
        .unwrap();
    let back = slot.committed(c.hold_lost);
    counters.release_members(&counter, &back).await.unwrap();
    c.count
}

/// Redis loses the counter's in-flight set (a restart, a failover).
async fn lose_in_flight_units(counter: &CounterRef) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("DEL")
        .arg(&counter.inflight_key)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap();
}

/// Committed plus in-flight units in Redis: what the limit is checked against.
async fn taken_in_redis(counters: &Counters, counter: &CounterRef) -> u64 {
    counters.committed(counter, BUDGET).await.unwrap() + inflight(&redis_url(), counter).await
}

#[tokio::test]
async fn one_round_trip_leases_a_block_and_the_rest_is_admitted_locally() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let leases = leases_with(&counters, "p1", 32);
    let (first, asked) = take(&leases, &counter, 1_000).await.unwrap();
    assert!(asked);
    assert_eq!(
        inflight(&redis_url(), &counter).await,
        32,
        "a block of 32 (the cap; a quarter of 1,000 is more) is reserved in one step"
    );
    let mut slots = vec![first];
    for i in 0..31 {
        let (slot, asked) = take(&leases, &counter, 1_000).await.unwrap();
        assert!(!asked, "unit {} came from the lease", i + 2);
        slots.push(slot);
    }
    let (_, asked) = take(&leases, &counter, 1_000).await.unwrap();
    assert!(asked, "the 33rd unit needs a new lease");
    assert_eq!(leases.stats().leases, 2);
    // Committing one settles exactly its member.
    assert_eq!(commit(&counters, slots.pop().unwrap(), "e1").await, 1);
    assert_eq!(inflight(&redis_url(), &counter).await, 63);
}

#[tokio::test]
async fn a_lease_shrinks_as_the_limit_nears_and_as_more_proxies_share_it() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let a = leases_with(&counters, "a", 64);
    let b = leases_with(&counters, "b", 64);
    let _sa = take(&a, &counter, 100).await.unwrap();
    assert_eq!(
        inflight(&redis_url(), &counter).await,
        25,
        "a quarter of 100"
    );
    let _sb = take(&b, &counter, 100).await.unwrap();
    assert_eq!(
        inflight(&redis_url(), &counter).await,
        25 + 9,
        "a quarter of the 75 left, shared by two proxies: 9"
    );

    // Near the limit, single units: a Free limit of 10 on one proxy is reached exactly.
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let p = leases_with(&counters, "p", 64);
    for i in 0..10 {
        let (slot, _) = take(&p, &counter, 10).await.expect("within the limit");
        assert!(taken_in_redis(&counters, &counter).await <= 10);
        assert_eq!(commit(&counters, slot, &format!("e{i}")).await, i + 1);
    }
    assert!(
        take(&p, &counter, 10).await.is_none(),
        "the 11th is refused"
    );
    assert_eq!(counters.committed(&counter, BUDGET).await.unwrap(), 10);
}

#[tokio::test]
async fn a_request_that_fails_hands_its_unit_back_to_the_lease_without_a_round_trip() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let leases = leases_with(&counters, "p", 8);
    let (slot, _) = take(&leases, &counter, 100).await.unwrap();
    assert!(slot.give_back().is_empty(), "nothing to release in Redis");
    let before = inflight(&redis_url(), &counter).await;
    for _ in 0..8 {
        let (slot, asked) = take(&leases, &counter, 100).await.unwrap();
        assert!(!asked);
        drop(slot); // a request torn down: back to the lease as well
    }
    assert_eq!(inflight(&redis_url(), &counter).await, before);
    assert_eq!(leases.gauges().free, 8);
}

#[tokio::test]
async fn unused_leased_units_go_back_when_idle_and_at_shutdown() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let a = leases_with(&counters, "a", 64);
    let b = leases_with(&counters, "b", 64);
    let (slot, _) = take(&a, &counter, 100).await.unwrap();
    commit(&counters, slot, "a1").await;
    assert_eq!(a.gauges().free, 24);
    // B takes everything else; while A sits on 24 units, B is refused at 75...
    let mut b_units = 0u64;
    while let Some((slot, _)) = take(&b, &counter, 100).await {
        commit(&counters, slot, &format!("b{b_units}")).await;
        b_units += 1;
    }
    assert_eq!(b_units, 75);
    // ...until A's lease has been idle: its units go back, and B gets them.
    tokio::time::sleep(Duration::from_millis(150)).await;
    a.maintain(false).await;
    assert_eq!(a.gauges().free, 0);
    while let Some((slot, _)) = take(&b, &counter, 100).await {
        commit(&counters, slot, &format!("b{b_units}")).await;
        b_units += 1;
    }
    assert_eq!(b_units, 99, "exactly the limit in all: 1 on A, 99 on B");
    assert_eq!(counters.committed(&counter, BUDGET).await.unwrap(), 100);

    // Shutdown gives back every free unit at once, idle or not.
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let p = leases_with(&counters, "p", 64);
    let _held = take(&p, &counter, 1_000).await.unwrap();
    p.maintain(true).await;
    assert_eq!(
        inflight(&redis_url(), &counter).await,
        1,
        "only the running request's unit"
    );
}

#[tokio::test]
async fn a_lower_limit_is_never_admitted_from_a_lease_taken_under_a_higher_one() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let p = leases_with(&counters, "p", 64);
    let (slot, _) = take(&p, &counter, 100).await.unwrap();
    commit(&counters, slot, "x").await;
    assert!(p.gauges().free > 5);
    // A refund lowers the balance to 5: the lease's free units are not admitted from.
    let (answer, asked) = p.acquire(&counter, 5, 1, BUDGET).await.unwrap();
    assert!(asked);
    assert!(
        matches!(answer, Acquired::Admitted { .. }),
        "1 committed, the old lease given back in the same step: room for more"
    );
    let mut running = vec![answer];
    while let Some((slot, _)) = take(&p, &counter, 5).await {
        running.push(Acquired::Admitted {
            slot,
            committed: 0,
            in_flight: 0,
        });
    }
    assert_eq!(
        running.len(),
        4,
        "1 committed + 4 in flight = the new limit of 5"
    );
    assert!(taken_in_redis(&counters, &counter).await <= 5);
}

#[tokio::test]
async fn two_proxies_racing_on_one_counter_never_admit_past_the_limit() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let proxies = [
        leases_with(&counters, "a", 32),
        leases_with(&counters, "b", 32),
    ];
    let admitted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..400usize {
        let (p, counters, counter, admitted) = (
            proxies[i % 2].clone(),
            counters.clone(),
            counter.clone(),
            admitted.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Some((slot, _)) = take(&p, &counter, 100).await {
                tokio::time::sleep(Duration::from_millis((i % 7) as u64)).await;
                if i % 5 == 0 {
                    // The upstream failed: nothing consumed.
                    let back = slot.give_back();
                    counters.release_members(&counter, &back).await.unwrap();
                } else {
                    commit(&counters, slot, &format!("e{i}")).await;
                    admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let during = admitted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(during <= 100, "{during} admitted");
    // What is left is all there for whoever asks once the leases went back.
    for p in &proxies {
        p.maintain(true).await;
    }
    let mut after = 0;
    while let Some((slot, _)) = take(&proxies[0], &counter, 100).await {
        commit(&counters, slot, &format!("late{after}")).await;
        after += 1;
    }
    assert_eq!(during + after, 100);
    assert_eq!(counters.committed(&counter, BUDGET).await.unwrap(), 100);
}

#[tokio::test]
async fn a_renewed_lease_outlives_the_ttl_and_an_unrenewed_one_does_not() {
    let ttl = Duration::from_millis(600);
    let (counters, counter) = setup(ttl).await;
    let leases = leases_with(&counters, "p", 1);
    let (slot, _) = take(&leases, &counter, 2).await.unwrap();
    assert!(
        counters
            .reserve(&counter, 2, "crashed", 1, BUDGET)
            .await
            .unwrap()
            .admitted
    );
    let keeper = {
        let leases = leases.clone();
        tokio::spawn(async move {
            loop {
                leases.maintain(false).await;
                tokio::time::sleep(leases.tick()).await;
            }
        })
    };
    // Three TTLs later the renewed unit is still held; the crashed one is gone.
    tokio::time::sleep(ttl * 3).await;
    assert!(!slot.in_doubt());
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
    slot.settling();
    let c = counters
        .commit_members(&counter, "slow", &slot.members(), 1)
        .await
        .unwrap();
    assert!(!c.hold_lost && !c.duplicate);
    assert!(slot.committed(c.hold_lost).is_empty());
    keeper.abort();
}

#[tokio::test]
async fn a_unit_found_gone_is_in_doubt_its_commit_still_counts_and_its_lease_hands_out_nothing_more()
 {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let leases = leases_with(&counters, "p", 8);
    let (slot, _) = take(&leases, &counter, 10).await.unwrap();
    assert_eq!(leases.gauges().free, 1, "a lease of 2 (a quarter of 10)");
    leases.renew_all().await;
    assert!(!slot.in_doubt(), "renewed, present");
    // Redis lost the lease (say, a restart).
    lose_in_flight_units(&counter).await;
    leases.renew_all().await;
    assert!(slot.in_doubt());
    assert_eq!(leases.stats().lost_found, 1);
    assert_eq!(
        leases.gauges().free,
        0,
        "the lost lease's free unit is dropped"
    );
    let (_, asked) = take(&leases, &counter, 10).await.unwrap();
    assert!(
        asked,
        "the next unit comes from a new lease, not the lost one"
    );
    slot.settling();
    let c = counters
        .commit_members(&counter, "a", &slot.members(), 1)
        .await
        .unwrap();
    assert_eq!((c.count, c.hold_lost), (1, true), "delivered, so counted");
}

#[tokio::test]
async fn a_commit_that_finds_its_unit_gone_closes_the_lease() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let leases = leases_with(&counters, "p", 8);
    let (slot, _) = take(&leases, &counter, 100).await.unwrap();
    lose_in_flight_units(&counter).await;
    commit(&counters, slot, "a").await;
    assert_eq!(leases.gauges().free, 0);
    let (_, asked) = take(&leases, &counter, 100).await.unwrap();
    assert!(asked, "no unit of the lost lease is handed out");
}

#[tokio::test]
async fn a_unit_removed_by_its_own_commit_is_not_a_loss() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let leases = leases_with(&counters, "p", 1);
    let (slot, _) = take(&leases, &counter, 2).await.unwrap();
    slot.settling();
    counters
        .commit_members(&counter, "a", &slot.members(), 1)
        .await
        .unwrap();
    leases.renew_all().await;
    assert!(!slot.in_doubt());
    assert_eq!(leases.stats().lost_found, 0);
    assert!(slot.committed(false).is_empty());
}

#[tokio::test]
async fn units_of_many_requests_on_one_counter_renew_in_one_round() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let leases = leases_with(&counters, "p", 1);
    let mut slots = Vec::new();
    for _ in 0..50 {
        slots.push(take(&leases, &counter, 100).await.unwrap().0);
    }
    counters
        .release_members(&counter, &slots[7].members())
        .await
        .unwrap();
    leases.renew_all().await;
    let doubtful: Vec<usize> = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.in_doubt())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(doubtful, [7]);
}

#[tokio::test]
async fn a_burst_larger_than_the_limit_on_two_proxies_gets_exactly_the_limit() {
    // Every request arrives before any lease is back: without one lease step at a time
    // per counter, each would lease a block of its own and most blocks would sit unused
    // while the requests that asked for them were refused.
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let proxies = [
        leases_with(&counters, "a", 32),
        leases_with(&counters, "b", 32),
    ];
    let mut tasks = Vec::new();
    for i in 0..500usize {
        let (p, counters, counter) = (proxies[i % 2].clone(), counters.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            match take(&p, &counter, 37).await {
                Some((slot, _)) => {
                    commit(&counters, slot, &format!("e{i}")).await;
                    true
                }
                None => false,
            }
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += u64::from(t.await.unwrap());
    }
    assert_eq!(
        admitted, 37,
        "no unit left unused in a lease while requests were refused"
    );
    assert_eq!(counters.committed(&counter, BUDGET).await.unwrap(), 37);
}

#[tokio::test]
async fn a_burst_at_the_limit_is_refused_without_a_round_trip_per_request() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let p = leases_with(&counters, "p", 32);
    for i in 0..5 {
        let (slot, _) = take(&p, &counter, 5).await.unwrap();
        commit(&counters, slot, &format!("e{i}")).await;
    }
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let (p, counter) = (p.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            p.acquire(&counter, 5, 1, BUDGET).await.unwrap()
        }));
    }
    let mut asked = 0;
    for t in tasks {
        let (answer, round_trip) = t.await.unwrap();
        assert!(
            matches!(answer, Acquired::Refused { committed: 5, .. }),
            "{answer:?}"
        );
        asked += u32::from(round_trip);
    }
    assert!(
        asked < 30,
        "requests queued behind a refused lease step share its answer: {asked} round trips"
    );
}

#[tokio::test]
async fn a_unit_handed_back_to_a_lease_a_newer_one_closed_goes_to_redis() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let p = leases_with(&counters, "p", 4);
    // A lease of 4 under a limit of 100, every unit in flight.
    let mut running = Vec::new();
    for _ in 0..4 {
        running.push(take(&p, &counter, 100).await.unwrap().0);
    }
    // The limit rises; the next request needs a new lease, which closes the first.
    let (_newer, asked) = take(&p, &counter, 200).await.unwrap();
    assert!(asked);
    let back = running.pop().unwrap().give_back();
    assert_eq!(back.len(), 1, "not back into the closed lease");
    counters.release_members(&counter, &back).await.unwrap();
    assert_eq!(inflight(&redis_url(), &counter).await, 3 + 4);
}

#[tokio::test]
async fn a_commit_settling_more_members_than_lua_can_unpack_at_once_counts_them_all() {
    // Lua's unpack takes about 8,000 values; a batch of commits can settle more.
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    assert!(
        counters
            .reserve(&counter, 20_000, "big", 10_000, BUDGET)
            .await
            .unwrap()
            .admitted
    );
    let c = counters
        .commit(&counter, "big", 10_000, 10_000)
        .await
        .unwrap();
    assert_eq!((c.count, c.hold_lost, c.duplicate), (10_000, false, false));
    assert_eq!(inflight(&redis_url(), &counter).await, 0);
    let retry = counters
        .commit(&counter, "big", 10_000, 10_000)
        .await
        .unwrap();
    assert_eq!((retry.count, retry.duplicate), (10_000, true));
}

#[tokio::test]
async fn a_lease_older_than_its_max_age_hands_out_nothing_more_and_gives_its_units_back() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let p = Leases::new(
        counters.clone(),
        "p".into(),
        LeaseSettings {
            max_units: 8,
            // Busy (never idle), but old.
            idle: Duration::from_secs(60),
            max_age: Duration::from_millis(50),
        },
    );
    let (_running, _) = take(&p, &counter, 100).await.unwrap();
    assert_eq!(p.gauges().free, 7);
    tokio::time::sleep(Duration::from_millis(80)).await;
    p.maintain(false).await;
    assert_eq!(p.gauges().free, 0);
    assert_eq!(
        inflight(&redis_url(), &counter).await,
        1,
        "only the running request's"
    );
    let (_, asked) = take(&p, &counter, 100).await.unwrap();
    assert!(asked, "the aged lease hands out nothing more");
}

#[tokio::test]
async fn a_refusal_right_after_this_proxys_own_successes_counts_them_as_used() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let p = leases_with(&counters, "p", 32);
    let mut slots = Vec::new();
    for _ in 0..3 {
        slots.push(take(&p, &counter, 3).await.unwrap().0);
    }
    // The three succeeded and their commit is on its way (the committer batches): the
    // units are still in flight in Redis when the next request is refused.
    for slot in &slots {
        slot.settling();
    }
    let committing = tokio::spawn({
        let counters = counters.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            for (i, slot) in slots.into_iter().enumerate() {
                let counter = slot.counter().clone();
                let c = counters
                    .commit_members(&counter, &format!("s{i}"), &slot.members(), 1)
                    .await
                    .unwrap();
                assert!(slot.committed(c.hold_lost).is_empty());
            }
        }
    });
    let (answer, _) = p
        .acquire(&counter, 3, 1, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            Acquired::Refused {
                committed: 3,
                in_flight: 0
            }
        ),
        "used 3 of 3, nothing to wait for: {answer:?}"
    );
    committing.await.unwrap();
}

#[tokio::test]
async fn a_refusal_waits_for_this_proxys_commits_no_longer_than_its_budget() {
    let (counters, counter) = setup(Duration::from_secs(60)).await;
    let p = leases_with(&counters, "p", 32);
    let (slot, _) = take(&p, &counter, 1).await.unwrap();
    // A commit that never lands (Redis slow for it): the refusal still answers in time.
    slot.settling();
    let started = std::time::Instant::now();
    let (answer, _) = p
        .acquire(&counter, 1, 1, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            Acquired::Refused {
                committed: 0,
                in_flight: 1
            }
        ),
        "{answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(slot);
}
