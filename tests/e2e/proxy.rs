//! The proxy's contract (ARCHITECTURE.md hot path, invariants 1-3 and 7), proven with the
//! real binaries, real Redis and PostgreSQL.

use serde_json::Value;
use std::time::Duration;
use time::OffsetDateTime;
use tollgate_e2e::Stack;

fn month_period() -> (OffsetDateTime, OffsetDateTime) {
    let start = OffsetDateTime::now_utc() - time::Duration::days(3);
    (start, start + time::Duration::days(30))
}

async fn problem(r: reqwest::Response) -> Value {
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "a refusal is a problem document"
    );
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_free_customer_gets_exactly_ten_tickets_then_a_403_that_never_reaches_the_upstream() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("free-1").unwrap();
    for i in 0..10 {
        let r = stack.create_ticket(&token).await.unwrap();
        assert_eq!(r.status(), 201, "ticket {i}");
        assert_eq!(
            r.headers()["ratelimit-policy"]
                .to_str()
                .unwrap()
                .split(';')
                .nth(1),
            Some("q=10")
        );
        let remaining = format!("r={}", 9 - i);
        assert!(
            r.headers()["ratelimit"]
                .to_str()
                .unwrap()
                .contains(&remaining),
            "{:?}",
            r.headers()["ratelimit"]
        );
        let body: Value = r.json().await.unwrap();
        assert!(body["id"].is_string());
    }
    let refused = stack.create_ticket(&token).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().contains_key("retry-after"));
    let body = problem(refused).await;
    assert_eq!(body["code"], "usage_limit_exceeded");
    assert_eq!(body["plan"], "free");
    assert_eq!(body["limit"], 10);
    assert_eq!(body["used"], 10);
    assert!(body["period_end"].is_string());
    assert!(body["upgrade_url"].is_string());
    assert_eq!(stack.upstream_stats().await.unwrap()["ticket_posts"], 10);
    stack.wait_for_ledger("free-1", 10).await.unwrap();
}

#[tokio::test]
async fn chat_is_disabled_once_a_free_customer_reaches_the_limit() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("free-chat").unwrap();
    let chat = || {
        stack
            .http
            .post(stack.proxy_url("/api/v1/chat"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "message": "hi" }))
            .send()
    };
    assert_eq!(chat().await.unwrap().status(), 200);
    for _ in 0..10 {
        assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 201);
    }
    // The last ticket's count lands just after its response (commits run off the request
    // path, and counting a commit in flight could count it twice and close a limit too
    // early): chat closes within moments, and stays closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut chats_admitted_meanwhile = 0;
    let refused = loop {
        let r = chat().await.unwrap();
        if r.status() == 403 {
            break r;
        }
        assert_eq!(r.status(), 200);
        chats_admitted_meanwhile += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "chat still open at the limit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(problem(refused).await["code"], "chat_disabled");
    assert_eq!(chat().await.unwrap().status(), 403, "and stays closed");
    assert_eq!(
        stack.upstream_stats().await.unwrap()["chat_posts"],
        1 + chats_admitted_meanwhile
    );
}

#[tokio::test]
async fn failed_upstream_responses_consume_nothing() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("free-fail").unwrap();
    for status in ["500", "503", "422"] {
        let r = stack
            .http
            .post(stack.proxy_url("/api/v1/tickets"))
            .bearer_auth(&token)
            .header("x-standin-status", status)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_str(), status);
    }
    for _ in 0..10 {
        assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 201);
    }
    assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 403);
    stack.wait_for_ledger("free-fail", 10).await.unwrap();
}

#[tokio::test]
async fn a_client_that_goes_away_before_the_upstream_answers_gives_its_unit_back() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("free-abort").unwrap();
    // The upstream answers after 3 s; the client gives up after 300 ms.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = impatient
            .post(stack.proxy_url("/api/v1/tickets"))
            .bearer_auth(&token)
            .header("x-standin-delay-ms", "3000")
            .header("x-standin-status", "500")
            .json(&serde_json::json!({}))
            .send()
            .await;
        assert!(r.is_err(), "the client timed out");
    }
    // Once the upstream's failures arrive, the reservations are back.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for i in 0..10 {
        assert_eq!(
            stack.create_ticket(&token).await.unwrap().status(),
            201,
            "ticket {i}"
        );
    }
    stack.wait_for_ledger("free-abort", 10).await.unwrap();
}

#[tokio::test]
async fn a_paid_overage_customer_is_never_refused_and_every_ticket_is_recorded() {
    let stack = Stack::start().await.unwrap();
    let (start, end) = month_period();
    stack
        .set_subscription("prem-1", "premium", "fixed_fee", "active", start, end)
        .await
        .unwrap();
    let token = stack.token("prem-1").unwrap();
    for i in 0..103 {
        let r = stack.create_ticket(&token).await.unwrap();
        assert_eq!(r.status(), 201, "ticket {i}");
        assert!(
            r.headers()["ratelimit-policy"]
                .to_str()
                .unwrap()
                .contains("q=100")
        );
    }
    stack.wait_for_ledger("prem-1", 103).await.unwrap();
}

#[tokio::test]
async fn credit_burndown_stops_at_the_balance_with_402_credits_exhausted() {
    let stack = Stack::start().await.unwrap();
    let (start, end) = month_period();
    stack
        .set_subscription("cred-1", "premium", "credit_burndown", "active", start, end)
        .await
        .unwrap();
    stack.grant_credits("cred-1", 3, "1.99").await.unwrap();
    let token = stack.token("cred-1").unwrap();
    for _ in 0..3 {
        let r = stack.create_ticket(&token).await.unwrap();
        assert_eq!(r.status(), 201);
        assert!(
            r.headers()["ratelimit-policy"]
                .to_str()
                .unwrap()
                .starts_with("\"credits\"")
        );
    }
    let refused = stack.create_ticket(&token).await.unwrap();
    assert_eq!(refused.status(), 402);
    assert_eq!(problem(refused).await["code"], "credits_exhausted");
    stack.wait_for_ledger("cred-1", 3).await.unwrap();
}

#[tokio::test]
async fn a_lapsed_payment_holds_the_customer_to_free_limits_with_402_payment_required() {
    let stack = Stack::start().await.unwrap();
    let (start, end) = month_period();
    stack
        .set_subscription("lapsed-1", "premium", "fixed_fee", "unpaid", start, end)
        .await
        .unwrap();
    let token = stack.token("lapsed-1").unwrap();
    for _ in 0..10 {
        assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 201);
    }
    let refused = stack.create_ticket(&token).await.unwrap();
    assert_eq!(refused.status(), 402);
    assert_eq!(problem(refused).await["code"], "payment_required");
}

#[tokio::test]
async fn two_proxies_sharing_redis_admit_exactly_the_limit_under_hundreds_of_concurrent_requests() {
    let stack = Stack::start().await.unwrap();
    let (start, end) = month_period();
    stack
        .set_subscription("race-1", "premium", "credit_burndown", "active", start, end)
        .await
        .unwrap();
    stack.grant_credits("race-1", 37, "1.99").await.unwrap();
    let (_second, second_port) = stack.extra_proxy("replica-b").await.unwrap();
    let token = stack.token("race-1").unwrap();
    let urls = [
        stack.proxy_url("/api/v1/tickets"),
        format!("http://127.0.0.1:{second_port}/api/v1/tickets"),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        // A client per request: many connections, not one pipelined one.
        let client = reqwest::Client::new();
        let url = urls[i % 2].clone();
        let token = token.clone();
        tasks.spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    let mut created = 0;
    let mut refused = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap().unwrap() {
            201 => created += 1,
            402 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(created, 37);
    assert_eq!(refused, 263);
    assert_eq!(stack.upstream_stats().await.unwrap()["ticket_posts"], 37);
    stack.wait_for_ledger("race-1", 37).await.unwrap();
    let mut redis = stack.redis().await.unwrap();
    let key = format!("{}{{race-1}}:credits_used", stack.key_prefix);
    // Commits run just off the request path; give the last ones a moment.
    let mut counted: u64 = 0;
    for _ in 0..50 {
        counted = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        if counted == 37 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted, 37, "Redis agrees with the ledger");
}

#[tokio::test]
async fn an_exhausted_customer_is_refused_from_memory_without_a_redis_call() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("free-mem").unwrap();
    for _ in 0..10 {
        stack.create_ticket(&token).await.unwrap();
    }
    // The first refusal learns the limit is used up (one Redis call)...
    assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 403);
    let reserves = r#"op="reserve""#;
    let before = stack
        .proxy_metric("tollgate_proxy_redis_seconds_count", &[reserves])
        .await
        .unwrap();
    // ...and the next ones are refused without asking Redis.
    for _ in 0..5 {
        assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 403);
    }
    let after = stack
        .proxy_metric("tollgate_proxy_redis_seconds_count", &[reserves])
        .await
        .unwrap();
    assert_eq!(before, after);
    let from_memory = stack
        .proxy_metric(
            "tollgate_proxy_decisions_total",
            &[r#"outcome="refused_from_memory""#],
        )
        .await
        .unwrap();
    assert_eq!(from_memory, 5.0);
}

#[tokio::test]
async fn a_published_plan_change_changes_the_decision_without_a_restart() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("upgrader").unwrap();
    for _ in 0..10 {
        stack.create_ticket(&token).await.unwrap();
    }
    assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 403);
    let (start, end) = month_period();
    stack
        .set_subscription("upgrader", "premium", "fixed_fee", "active", start, end)
        .await
        .unwrap();
    let published = stack.publish("upgrader").await.unwrap();
    assert_eq!(published["plan"], "premium");
    let status = stack.ticket_status_eventually(&token, 201).await.unwrap();
    assert_eq!(status, 201, "the proxy applied the published entitlement");
}

#[tokio::test]
async fn a_new_period_starts_from_zero_without_any_job() {
    let stack = Stack::start().await.unwrap();
    // A lapsed customer is held to a period limit; this period ends in 3 seconds.
    let anchor = OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let period = billing_model::BillingPeriod::nth(anchor, -1).unwrap();
    let (start, end) = (period.start(), period.end());
    stack
        .set_subscription("roller", "premium", "fixed_fee", "unpaid", start, end)
        .await
        .unwrap();
    let token = stack.token("roller").unwrap();
    for _ in 0..10 {
        assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 201);
    }
    assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 402);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    for i in 0..10 {
        assert_eq!(
            stack.create_ticket(&token).await.unwrap().status(),
            201,
            "ticket {i} of the new period"
        );
    }
    assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 402);
}

#[tokio::test]
async fn a_lost_redis_counter_is_reseeded_from_the_snapshot_not_from_zero() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("reseed").unwrap();
    for _ in 0..4 {
        assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 201);
    }
    stack.wait_for_ledger("reseed", 4).await.unwrap();
    // The control plane's snapshot now says 4 used; the proxies get it.
    let snapshot = stack.publish("reseed").await.unwrap();
    assert_eq!(snapshot["units_used"], 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Redis loses the customer's keys (a restart without persistence).
    let mut redis = stack.redis().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}{{reseed}}:*", stack.key_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut created = 0;
    for _ in 0..10 {
        if stack.create_ticket(&token).await.unwrap().status() == 201 {
            created += 1;
        }
    }
    assert_eq!(
        created, 6,
        "4 used before the loss + 6 after = the limit of 10"
    );
}

#[tokio::test]
async fn usage_survives_a_control_plane_outage_and_a_proxy_restart_with_nothing_lost_or_doubled() {
    let mut stack = Stack::start().await.unwrap();
    let (start, end) = month_period();
    stack
        .set_subscription("outage", "premium", "fixed_fee", "active", start, end)
        .await
        .unwrap();
    let token = stack.token("outage").unwrap();
    // Warm the entitlement cache while the control plane is up.
    assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 201);
    stack.wait_for_ledger("outage", 1).await.unwrap();

    stack.kill_control_plane();
    for _ in 0..20 {
        assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 201);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        stack
            .proxy_metric("tollgate_proxy_usage_spool_segments", &[])
            .await
            .unwrap()
            >= 1.0,
        "events wait on disk"
    );
    // The proxy is stopped while the control plane is still down: what it could not
    // deliver stays in its spool...
    stack
        .proxy
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(15))
        .unwrap();
    stack.proxy = None;
    // ...and is replayed after both are back.
    stack.start_control_plane().await.unwrap();
    stack.start_proxy().await.unwrap();
    stack.wait_for_ledger("outage", 21).await.unwrap();
}

#[tokio::test]
async fn a_control_plane_that_comes_back_receives_the_spooled_usage_without_a_proxy_restart() {
    let mut stack = Stack::start().await.unwrap();
    let (start, end) = month_period();
    stack
        .set_subscription("blip", "premium", "fixed_fee", "active", start, end)
        .await
        .unwrap();
    let token = stack.token("blip").unwrap();
    assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 201);
    stack.kill_control_plane();
    for _ in 0..15 {
        assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 201);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.start_control_plane().await.unwrap();
    stack.wait_for_ledger("blip", 16).await.unwrap();
}

#[tokio::test]
async fn redis_unreachable_follows_the_failure_policy() {
    // A proxy pointed at a Redis that is not there: hard limits are refused (deny).
    let stack = Stack::start().await.unwrap();
    let (mut dead, dead_port) = stack
        .extra_proxy_with_redis("dead-redis", "redis://127.0.0.1:1")
        .await
        .unwrap();
    let token = stack.token("free-dead").unwrap();
    let r = stack
        .http
        .post(format!("http://127.0.0.1:{dead_port}/api/v1/tickets"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(problem(r).await["code"], "usage_check_unavailable");
    let _ = dead.terminate(Duration::from_secs(10));
}

#[tokio::test]
async fn missing_malformed_expired_and_foreign_tokens_are_refused_with_401() {
    let stack = Stack::start().await.unwrap();
    let url = stack.proxy_url("/api/v1/tickets");
    let none = stack.http.post(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert!(none.headers().contains_key("www-authenticate"));
    assert_eq!(problem(none).await["code"], "unauthorized");

    let garbage = stack
        .http
        .post(&url)
        .bearer_auth("not-a-jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 401);
    assert_eq!(problem(garbage).await["code"], "invalid_token");

    let foreign = tollgate_e2e::foreign_token("mallory").unwrap();
    let r = stack
        .http
        .post(&url)
        .bearer_auth(foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let expired = tollgate_e2e::expired_token("mallory").unwrap();
    let r = stack
        .http
        .post(&url)
        .bearer_auth(expired)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(stack.upstream_stats().await.unwrap()["ticket_posts"], 0);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_ships_their_usage_before_exit() {
    let mut stack = Stack::start().await.unwrap();
    let token = stack.token("drainer").unwrap();
    let slow = {
        let http = stack.http.clone();
        let url = stack.proxy_url("/api/v1/tickets");
        let token = token.clone();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .header("x-standin-delay-ms", "1500")
                .json(&serde_json::json!({}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = stack
        .proxy
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(15))
        .unwrap();
    assert!(status.success(), "the proxy exits cleanly: {status:?}");
    assert_eq!(
        slow.await.unwrap().unwrap(),
        201,
        "the in-flight request completed"
    );
    // Shipped during the drain: no proxy is running any more.
    stack.wait_for_ledger("drainer", 1).await.unwrap();
}

#[tokio::test]
async fn a_burst_of_first_requests_fills_the_entitlement_once() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("burst").unwrap();
    let before = stack
        .proxy_metric("tollgate_proxy_entitlement_fills_total", &[])
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let client = reqwest::Client::new();
        let url = stack.proxy_url("/api/v1/chat");
        let token = token.clone();
        tasks.spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status())
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap().unwrap(), 200);
    }
    let after = stack
        .proxy_metric("tollgate_proxy_entitlement_fills_total", &[])
        .await
        .unwrap();
    assert!(
        after - before <= 2.0,
        "50 concurrent misses asked the control plane {} times",
        after - before
    );
}

#[tokio::test]
async fn the_allow_policy_admits_and_records_when_redis_is_unreachable() {
    let stack = Stack::start().await.unwrap();
    let (mut dead, dead_port) = stack
        .extra_proxy_edited("dead-redis-allow", |text| {
            text.replace(&tollgate_e2e::redis_url(), "redis://127.0.0.1:1")
                .replace(
                    "entitlement_fill_timeout_ms = 2000\n",
                    "entitlement_fill_timeout_ms = 2000\nhard_limit_failure_policy = \"allow\"\n",
                )
        })
        .await
        .unwrap();
    let token = stack.token("free-allow").unwrap();
    let r = stack
        .http
        .post(format!("http://127.0.0.1:{dead_port}/api/v1/tickets"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "admitted under the allow policy");
    // Recorded all the same: the usage reaches the ledger.
    stack.wait_for_ledger("free-allow", 1).await.unwrap();
    let _ = dead.terminate(Duration::from_secs(10));
}

#[tokio::test]
async fn routes_reload_on_sighup_without_a_restart() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("reload").unwrap();
    for _ in 0..10 {
        stack.create_ticket(&token).await.unwrap();
    }
    assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 403);
    // Ticket creation stops being metered once the rule is removed and SIGHUP is sent.
    let text = std::fs::read_to_string(&stack.config).unwrap();
    let without = text.replace(
        "[[proxy.routes]]\nmethod = \"POST\"\npath = \"/api/v1/tickets\"\nkind = \"metered\"\nusage_type = \"ticket_creation\"\n",
        "",
    );
    assert_ne!(text, without, "the test config has the ticket rule");
    std::fs::write(&stack.config, without).unwrap();
    let pid = stack.proxy.as_ref().unwrap().pid();
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    let status = stack.ticket_status_eventually(&token, 201).await.unwrap();
    assert_eq!(status, 201, "the reloaded table no longer meters tickets");
}

#[tokio::test]
async fn a_trusted_gateway_header_identifies_the_customer_only_where_enabled() {
    let stack = Stack::start().await.unwrap();
    let (mut gated, port) = stack
        .extra_proxy_edited("gateway", |text| {
            text.replace(
                "leeway_seconds = 0\n",
                "leeway_seconds = 0\ntrusted_header = \"x-customer-id\"\n",
            )
        })
        .await
        .unwrap();
    let post = |url: String, header: Option<&'static str>| {
        let mut r = stack.http.post(url).json(&serde_json::json!({}));
        if let Some(h) = header {
            r = r.header("x-customer-id", h);
        }
        r.send()
    };
    let via_gateway = post(
        format!("http://127.0.0.1:{port}/api/v1/tickets"),
        Some("gated-1"),
    )
    .await
    .unwrap();
    assert_eq!(via_gateway.status(), 201);
    let no_identity = post(format!("http://127.0.0.1:{port}/api/v1/tickets"), None)
        .await
        .unwrap();
    assert_eq!(no_identity.status(), 401);
    // The main proxy does not trust the header: it is not configured to.
    let spoofed = post(stack.proxy_url("/api/v1/tickets"), Some("gated-1"))
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 401);
    let _ = gated.terminate(Duration::from_secs(10));
}

#[tokio::test]
async fn a_gap_in_the_update_sequence_drops_the_cache() {
    let stack = Stack::start().await.unwrap();
    stack.publish("gap-a").await.unwrap();
    // Another publisher's update was lost: the sequence jumps.
    let mut redis = stack.redis().await.unwrap();
    let _: i64 = redis::cmd("INCRBY")
        .arg(format!("{}entitlements:seq", stack.key_prefix))
        .arg(5)
        .query_async(&mut redis)
        .await
        .unwrap();
    stack.publish("gap-b").await.unwrap();
    let mut gaps = 0.0;
    for _ in 0..100 {
        gaps = stack
            .proxy_metric(
                "tollgate_proxy_entitlement_updates_total",
                &[r#"outcome="gap""#],
            )
            .await
            .unwrap();
        if gaps >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        gaps, 1.0,
        "the proxy noticed the gap and dropped what it cannot trust"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id_that_the_upstream_sees_too() {
    let stack = Stack::start().await.unwrap();
    let mine = stack
        .http
        .get(stack.proxy_url("/api/v1/tickets"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(mine.headers()["x-request-id"], "req-123");
    let minted = stack
        .http
        .get(stack.proxy_url("/api/v1/tickets"))
        .send()
        .await
        .unwrap();
    assert_eq!(minted.headers()["x-request-id"].len(), 32);
}

#[tokio::test]
async fn es256_tokens_verify_against_keys_fetched_from_a_jwks_url() {
    let stack = Stack::start().await.unwrap();
    let jwks = tollgate_e2e::es256_jwks().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { jwks }
            }),
        );
        axum::serve(listener, app).await
    });
    let (mut idp, port) = stack
        .extra_proxy_edited("jwks", |text| {
            text.replace(
                "hs256_secret = \"test-only-hs256-secret-0123456789abcdef\"\n",
                &format!("jwks_url = \"http://127.0.0.1:{jwks_port}/.well-known/jwks.json\"\n"),
            )
        })
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/api/v1/tickets");
    let es256 = tollgate_e2e::es256_token("jwks-user").unwrap();
    let r = stack
        .http
        .post(&url)
        .bearer_auth(es256)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // An HS256 token is not accepted by a proxy that only knows the JWKS.
    let hs256 = stack.token("jwks-user").unwrap();
    let r = stack
        .http
        .post(&url)
        .bearer_auth(hs256)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let _ = idp.terminate(Duration::from_secs(10));
}
