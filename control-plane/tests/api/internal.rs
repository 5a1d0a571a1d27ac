//! Internal endpoints: entitlement snapshots for proxies and usage ingestion.

use crate::helpers::spawn_app;
use serde_json::{Value, json};

fn event(id: &str, customer: &str) -> Value {
    json!({
        "event_id": id,
        "customer_id": customer,
        "usage_type": "ticket_creation",
        "quantity": 1,
        "occurred_at": "2026-11-26T10:00:00Z",
        "period_start": "2026-11-01T00:00:00Z",
        "period_end": "2026-12-01T00:00:00Z",
    })
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn count(app: &crate::helpers::TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM usage_records")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn internal_endpoints_refuse_a_missing_or_customer_token() {
    let app = spawn_app().await;
    let customer_token = app.customer_token("alice");
    for token in [None, Some(customer_token.as_str()), Some("wrong")] {
        let mut request = app.http.get(app.url("/internal/v1/entitlements/alice"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401, "token {token:?}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
}

#[tokio::test]
async fn an_unknown_customer_is_on_the_free_plan_and_is_remembered_from_then_on() {
    let app = spawn_app().await;
    let snapshot: Value = app
        .http
        .get(app.url("/internal/v1/entitlements/newcomer"))
        .bearer_auth(&app.service_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(snapshot["plan"], "free");
    assert_eq!(snapshot["included_units"], 10);
    assert_eq!(snapshot["overage_allowed"], false);
    assert_eq!(snapshot["chat_enabled"], true);
    let anchor: time::OffsetDateTime = sqlx::query_scalar(
        "SELECT free_period_anchor FROM customers WHERE customer_id = 'newcomer'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let start = time::OffsetDateTime::parse(
        snapshot["period_start"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(
        start, anchor,
        "the Free period starts the day tollgate first saw them"
    );
}

#[tokio::test]
async fn a_bad_customer_id_is_a_validation_problem_not_a_500() {
    let app = spawn_app().await;
    let r = app
        .http
        .get(app.url("/internal/v1/entitlements/a%7Db"))
        .bearer_auth(&app.service_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "validation_failed");
    assert_eq!(body["field"], "customer");
}

#[tokio::test]
async fn publishing_bumps_the_version_every_time() {
    let app = spawn_app().await;
    let publish = || {
        app.http
            .post(app.url("/internal/v1/entitlements/pub/publish"))
            .bearer_auth(&app.service_token)
            .send()
    };
    let first: Value = publish().await.unwrap().json().await.unwrap();
    let second: Value = publish().await.unwrap().json().await.unwrap();
    assert!(second["version"].as_u64().unwrap() > first["version"].as_u64().unwrap());
}

#[tokio::test]
async fn duplicate_events_within_and_across_batches_are_stored_once() {
    let app = spawn_app().await;
    let (a, b, c) = (new_id(), new_id(), new_id());
    let batches = [
        json!({ "events": [event(&a, "alice"), event(&b, "alice"), event(&a, "alice")] }),
        json!({ "events": [event(&b, "alice"), event(&c, "alice")] }),
    ];
    let mut outcomes = Vec::new();
    for batch in &batches {
        let r = app
            .http
            .post(app.url("/internal/v1/usage/batch"))
            .bearer_auth(&app.service_token)
            .json(batch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        outcomes.push(r.json::<Value>().await.unwrap());
    }
    assert_eq!(outcomes[0], json!({ "inserted": 2, "duplicates": 1 }));
    assert_eq!(outcomes[1], json!({ "inserted": 1, "duplicates": 1 }));
    assert_eq!(count(&app).await, 3);
}

#[tokio::test]
async fn a_batch_with_one_bad_event_is_rejected_whole_with_a_clear_error() {
    let app = spawn_app().await;
    let mut bad = event(&new_id(), "alice");
    bad["quantity"] = json!(0);
    let batch = json!({ "events": [event(&new_id(), "alice"), bad] });
    let r = app
        .http
        .post(app.url("/internal/v1/usage/batch"))
        .bearer_auth(&app.service_token)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "validation_failed");
    assert!(
        body["detail"].as_str().unwrap().contains("quantity"),
        "{body}"
    );
    assert_eq!(count(&app).await, 0, "nothing partial is stored");
}
