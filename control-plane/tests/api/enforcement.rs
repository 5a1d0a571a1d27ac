//! The control plane's side of enforcement: the same admission decision as the proxy
//! for reported usage, counters never behind (or double) the ledger, entitlement
//! publishes that never go stale, periods that roll on their anchor, and the identity
//! loader with a JWKS URL.

use crate::helpers::{TestApp, spawn_app, spawn_app_and};
use billing_model::{BillingPeriod, CustomerId};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use time::OffsetDateTime;
use time::macros::datetime;

async fn record(app: &TestApp, customer: &str, event_id: Option<uuid::Uuid>) -> reqwest::Response {
    let mut body = json!({ "customer_id": customer, "usage_type": "agent_interaction" });
    if let Some(id) = event_id {
        body["event_id"] = json!(id);
    }
    app.http
        .post(app.url("/api/v1/billing/usage/record"))
        .bearer_auth(&app.service_token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn redis(_app: &TestApp) -> redis::aio::MultiplexedConnection {
    redis::Client::open(tollgate_e2e::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn period_counter(app: &TestApp, customer: &str) -> u64 {
    let snapshot = app.snapshot(customer).await;
    let start = OffsetDateTime::parse(
        snapshot["period_start"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let keys = app.state.publisher.entitlements().keys().clone();
    let key = keys.usage_counter(&CustomerId::parse(customer).unwrap(), start);
    let value: Option<u64> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut redis(app).await)
        .await
        .unwrap();
    value.unwrap_or(0)
}

#[tokio::test]
async fn reported_usage_past_the_free_limit_gets_the_proxys_refusal() {
    let app = spawn_app().await;
    for _ in 0..10 {
        assert_eq!(record(&app, "fiona", None).await.status(), 201);
    }
    let refused = record(&app, "fiona", None).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let retry_after: i64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0, "until the period ends");
    let body: Value = refused.json().await.unwrap();
    // Field for field what the proxy answers for the same decision.
    assert_eq!(body["code"], "usage_limit_exceeded");
    assert_eq!(
        body["type"],
        "https://tollgate.dev/problems/usage_limit_exceeded"
    );
    assert_eq!(body["title"], "Usage limit exceeded");
    assert_eq!(body["status"], 403);
    assert_eq!(body["plan"], "free");
    assert_eq!(
        (body["limit"].as_u64(), body["used"].as_u64()),
        (Some(10), Some(10))
    );
    assert!(body["period_end"].is_string());
    assert_eq!(
        body["upgrade_url"],
        "http://127.0.0.1:8081/api/v1/billing/plans"
    );
}

#[tokio::test]
async fn the_openapi_entry_of_usage_record_names_what_it_answers() {
    let app = spawn_app().await;
    let spec: Value = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let responses = &spec["paths"]["/api/v1/billing/usage/record"]["post"]["responses"];
    let text = responses.to_string();
    for (status, code) in [
        ("403", "usage_limit_exceeded"),
        ("402", "credits_exhausted"),
        ("503", "usage_check_unavailable"),
    ] {
        assert!(
            responses[status]["description"]
                .as_str()
                .is_some_and(|d| d.contains(code)),
            "{status} {code}: {text}"
        );
    }
    assert!(responses.get("429").is_none(), "{text}");
}

#[tokio::test]
async fn a_record_whose_ledger_write_fails_counts_nothing_and_a_retry_counts_once() {
    let app = spawn_app().await;
    assert_eq!(record(&app, "gus", None).await.status(), 201);
    assert_eq!(period_counter(&app, "gus").await, 1);
    // The ledger refuses every new record for a moment.
    sqlx::query("ALTER TABLE usage_records ADD CONSTRAINT test_refuse CHECK (false) NOT VALID")
        .execute(&app.pool)
        .await
        .unwrap();
    let event = uuid::Uuid::now_v7();
    let failed = record(&app, "gus", Some(event)).await;
    assert_eq!(failed.status(), 500);
    assert_eq!(
        period_counter(&app, "gus").await,
        1,
        "the counted unit was taken back when its record failed"
    );
    sqlx::query("ALTER TABLE usage_records DROP CONSTRAINT test_refuse")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(record(&app, "gus", Some(event)).await.status(), 201);
    assert_eq!(
        record(&app, "gus", Some(event)).await.status(),
        200,
        "a duplicate"
    );
    assert_eq!(period_counter(&app, "gus").await, 2);
    let ledger: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM usage_records WHERE customer_id = 'gus'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(ledger, 2);
}

/// The race the review found: a publish that read the ledger before a change, and is
/// sent after a publish that includes the change, must not carry the higher version.
#[tokio::test]
async fn a_publish_computed_before_a_change_never_wins_over_one_computed_after() {
    let app = spawn_app().await;
    let customer = CustomerId::parse("hana").unwrap();
    let keys = app.state.publisher.entitlements().keys().clone();
    let client = redis::Client::open(tollgate_e2e::redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(keys.entitlement_channel()).await.unwrap();
    let mut messages = pubsub.into_on_message();
    // hana exists and has used one unit.
    assert_eq!(record(&app, "hana", None).await.status(), 201);

    // A slow publisher: computes its snapshot now (one unit used), then stalls.
    let (resume, stalled) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let publisher = app.state.publisher.clone();
        let customer = customer.clone();
        tokio::spawn(async move {
            publisher
                .publish_after(&customer, async move {
                    let _ = stalled.await;
                })
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Meanwhile a second unit is recorded.
    assert_eq!(record(&app, "hana", None).await.status(), 201);
    let fresh = {
        let publisher = app.state.publisher.clone();
        let customer = customer.clone();
        tokio::spawn(async move { publisher.publish(&customer).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = resume.send(());
    slow.await.unwrap();
    fresh.await.unwrap();

    // What every proxy keeps: the message with the highest sequence.
    let mut newest: Option<(u64, u64)> = None;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), messages.next()).await
    {
        let update: Value = serde_json::from_slice(message.get_payload_bytes()).unwrap();
        if update["snapshot"]["customer_id"] != "hana" {
            continue;
        }
        let seq = update["seq"].as_u64().unwrap();
        let used = update["snapshot"]["units_used"].as_u64().unwrap();
        if newest.is_none_or(|(s, _)| seq > s) {
            newest = Some((seq, used));
        }
    }
    assert_eq!(
        newest.map(|(_, used)| used),
        Some(2),
        "the newest version includes the second unit"
    );
}

#[tokio::test]
async fn a_period_that_ended_before_its_renewal_arrived_rolls_on_its_month_end_anchor() {
    let app = spawn_app().await;
    // Anchor Jan 31 08:00; the stored period is the clamped February one, long over.
    let anchor = datetime!(2026-01-31 08:00:00 UTC);
    let stored = BillingPeriod::nth(anchor, 1).unwrap();
    sqlx::query("INSERT INTO customers (customer_id) VALUES ('ivan')")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO subscriptions (customer_id, stripe_subscription_id, stripe_customer_id,
             plan_type, billing_model, status, current_period_start, current_period_end)
         VALUES ('ivan', 'sub_ivan', 'cus_ivan', 'premium', 'fixed_fee', 'active', $1, $2)",
    )
    .bind(stored.start())
    .bind(stored.end())
    .execute(&app.pool)
    .await
    .unwrap();
    let snapshot = app.snapshot("ivan").await;
    let expected = BillingPeriod::containing(anchor, OffsetDateTime::now_utc()).unwrap();
    let rfc = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    assert_eq!(snapshot["period_start"], rfc(expected.start()));
    assert_eq!(snapshot["period_end"], rfc(expected.end()));
}

/// Identity: the control plane reads `identity.jwks_url` like the proxy (it used to
/// refuse to start with only a URL), so RS/ES tokens the proxy accepts work here too.
#[tokio::test]
async fn the_billing_api_accepts_tokens_verified_with_a_jwks_url() {
    let jwks = tollgate_e2e::es256_jwks().unwrap();
    let app_router = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { ([("content-type", "application/json")], jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app_router).await.unwrap() });

    let app = spawn_app_and(|config| {
        config.identity.hs256_secret = None;
        config.identity.issuer = "tollgate-test".into();
        config.identity.jwks_url = Some(url);
    })
    .await;
    let token = tollgate_e2e::es256_token("juno").unwrap();
    let ok = app
        .http
        .get(app.url("/api/v1/billing/usage"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let refused = app
        .http
        .get(app.url("/api/v1/billing/usage"))
        .bearer_auth(app.customer_token("juno"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        401,
        "HS256 is off when only a JWKS is configured"
    );
}
