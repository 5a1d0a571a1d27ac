//! Enforcement that cannot be bypassed or outlived (ARCHITECTURE.md invariants 8 and 9),
//! tried the way a client would try it: other spellings of the metered route against
//! an upstream that routes loosely, clients and upstreams slower than the reservation
//! TTL, and a usage log that cannot be written.

use serde_json::Value;
use std::time::Duration;
use tollgate_e2e::Stack;

/// A raw request with the customer's token (the path goes out exactly as written).
async fn raw(port: u16, method: &str, path: &str, token: &str, extra: &str) -> (u16, String) {
    raw_trickled(port, method, path, token, extra, b"{}", Duration::ZERO).await
}

/// Like [`raw`], sending the body one byte every `gap`; `extra` is one `name: value`
/// header line (with its CRLF) or empty.
async fn raw_trickled(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    extra: &str,
    body: &[u8],
    gap: Duration,
) -> (u16, String) {
    let authorization = format!("Bearer {token}");
    let mut headers = vec![("authorization", authorization.as_str())];
    let extra = extra.trim_end();
    if let Some((name, value)) = extra.split_once(": ") {
        headers.push((name, value));
    }
    tollgate_e2e::raw_request(port, method, path, &headers, body, gap).await
}

/// The spellings the outside test used to create tickets past a Free limit against an
/// upstream that routes like most web frameworks (the stand-in does).
const SPELLINGS: [&str; 17] = [
    "/api/v1//tickets",
    "/api/v1/%74ickets",
    "/api/v1/./tickets",
    "/API/v1/tickets",
    "/api/v1/TICKETS",
    "//api/v1/tickets",
    "/api/v1/x/../tickets",
    "/api/v1/tickets%2F",
    "/api/v1/tickets;x=1",
    "/api/v1/x/%2e%2e/tickets",
    "/api/v1/tickets/",
    "/api/v1/tickets%00",
    "/api/v1/x/..;/tickets",
    "/api/v1/tickets%3Bx",
    "/api/v1/tic%E2%84%AAets",
    "http://127.0.0.1/api/v1/tickets",
    "x:/api/v1/tickets",
];

#[tokio::test]
async fn no_spelling_of_the_ticket_route_creates_a_ticket_past_the_free_limit() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("spell-1").unwrap();
    for _ in 0..10 {
        assert_eq!(stack.create_ticket(&token).await.unwrap().status(), 201);
    }
    for spelling in SPELLINGS {
        for method in ["POST", "post"] {
            let (status, body) = raw(stack.ports.proxy, method, spelling, &token, "").await;
            assert!(
                status == 403 || status == 400,
                "{method} {spelling} answered {status}: {body}"
            );
        }
    }
    // A GET that a framework would turn into the metered POST is only ever a GET.
    let (status, _) = raw(
        stack.ports.proxy,
        "GET",
        "/api/v1/tickets",
        &token,
        "x-http-method-override: POST\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        stack.upstream_stats().await.unwrap()["ticket_posts"],
        10,
        "no other spelling reached the upstream's ticket creation"
    );
    stack.wait_for_ledger("spell-1", 10).await.unwrap();
}

#[tokio::test]
async fn another_spelling_is_metered_and_forwarded_as_the_canonical_path() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("spell-2").unwrap();
    let (status, body) = raw(
        stack.ports.proxy,
        "POST",
        "/api/v1/x/..//%74ickets?src=a",
        &token,
        "",
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let ticket: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ticket["received_path"], "/api/v1/tickets");
    let (status, body) = raw(stack.ports.proxy, "POST", "/api/v1/tickets%2Fx", &token, "").await;
    assert_eq!(status, 400);
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "invalid_path");
    stack.wait_for_ledger("spell-2", 1).await.unwrap();
}

/// A proxy whose reservations expire after 3 s without renewal, whose upstream may
/// take 10 s per read.
async fn short_ttl_proxy(stack: &Stack, name: &str) -> (tollgate_e2e::Process, u16) {
    stack
        .extra_proxy_edited(name, tollgate_e2e::short_reservation_ttl)
        .await
        .unwrap()
}

/// Ten slow requests hold the whole Free limit past the TTL; ten normal requests sent
/// meanwhile must all be refused, and only ten tickets in all may succeed.
async fn slow_requests_hold_their_units(slow: SlowKind) {
    let stack = Stack::start().await.unwrap();
    let (_proxy, port) = short_ttl_proxy(&stack, "short-ttl").await;
    let customer = format!("slow-{slow:?}").to_lowercase();
    let token = stack.token(&customer).unwrap();
    let mut slow_requests = Vec::new();
    for _ in 0..10 {
        let token = token.clone();
        slow_requests.push(tokio::spawn(async move {
            match slow {
                SlowKind::ClientBody => {
                    let body = br#"{"title":"slow"}"#;
                    // 16 bytes, one every 500 ms: 8 s, well past the 3 s TTL.
                    raw_trickled(
                        port,
                        "POST",
                        "/api/v1/tickets",
                        &token,
                        "",
                        body,
                        Duration::from_millis(500),
                    )
                    .await
                }
                SlowKind::UpstreamHeaders => {
                    raw(
                        port,
                        "POST",
                        "/api/v1/tickets",
                        &token,
                        "x-standin-delay-ms: 7000\r\n",
                    )
                    .await
                }
                SlowKind::UpstreamBody => {
                    raw(
                        port,
                        "POST",
                        "/api/v1/tickets",
                        &token,
                        "x-standin-body-delay-ms: 7000\r\n",
                    )
                    .await
                }
            }
        }));
    }
    // Past two TTLs: an unrenewed hold would have expired by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut normal = Vec::new();
    for _ in 0..10 {
        normal.push(raw(port, "POST", "/api/v1/tickets", &token, "").await);
    }
    let mut successes = 0;
    for (status, body) in &normal {
        assert_ne!(*status, 0, "{body}");
        if *status == 201 {
            successes += 1;
        }
    }
    for r in slow_requests {
        let (status, body) = r.await.unwrap();
        assert!(status == 201 || status == 403, "{status} {body}");
        if status == 201 {
            successes += 1;
        }
    }
    assert_eq!(successes, 10, "exactly the Free limit succeeds ({slow:?})");
    stack.wait_for_ledger(&customer, 10).await.unwrap();
}

#[derive(Debug, Clone, Copy)]
enum SlowKind {
    ClientBody,
    UpstreamHeaders,
    UpstreamBody,
}

#[tokio::test]
async fn clients_trickling_their_bodies_past_the_ttl_cannot_double_a_free_limit() {
    slow_requests_hold_their_units(SlowKind::ClientBody).await;
}

#[tokio::test]
async fn an_upstream_slower_than_the_ttl_to_answer_cannot_double_a_free_limit() {
    slow_requests_hold_their_units(SlowKind::UpstreamHeaders).await;
}

#[tokio::test]
async fn an_upstream_slower_than_the_ttl_to_send_its_body_cannot_double_a_free_limit() {
    slow_requests_hold_their_units(SlowKind::UpstreamBody).await;
}

/// A success whose usage cannot be written to the usage log is not delivered: a unit
/// delivered is a unit recorded (and the failure leaves the log usable).
#[tokio::test]
async fn a_success_that_cannot_be_logged_is_withheld_and_not_counted() {
    let stack = Stack::start().await.unwrap();
    // Shipping (and so segment rotation) every 1.5 s, so the test can lay a trap on the
    // segment the log rotates to next.
    let (_proxy, port) = stack
        .extra_proxy_edited("disk", |text| {
            text.replace("max_delay_ms = 100", "max_delay_ms = 1500")
        })
        .await
        .unwrap();
    let token = stack.token("disk-full").unwrap();
    let spool = stack.dir.join("spool-disk");
    let ticket = || raw(port, "POST", "/api/v1/tickets", &token, "");
    let mut delivered = 0;
    let trap = loop {
        let (status, _) = ticket().await;
        assert_eq!(status, 201);
        delivered += 1;
        let current = std::fs::read_dir(&spool)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("usage-")?
                    .strip_suffix(".jsonl")?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap();
        let next = spool.join(format!("usage-{:020}.jsonl", current + 1));
        // The next segment the log rotates to is a full disk (unless it rotated already).
        if std::os::unix::fs::symlink("/dev/full", &next).is_ok() {
            break next;
        }
    };
    // Wait until the shipper has rotated onto it (what was logged is shipped).
    stack.wait_for_ledger("disk-full", delivered).await.unwrap();

    let (status, body) = ticket().await;
    assert_eq!(status, 503, "{body}");
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "usage_not_recorded");
    assert!(
        problem.get("id").is_none(),
        "the upstream's ticket is not handed out"
    );

    // The log recovered onto a fresh segment.
    let (status, _) = ticket().await;
    assert_eq!(status, 201);
    stack
        .wait_for_ledger("disk-full", delivered + 1)
        .await
        .unwrap();
    let _ = std::fs::remove_file(&trap);
}
