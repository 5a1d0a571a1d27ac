//! A purchase is one intent (ARCHITECTURE.md invariant 11): a retry replays it, a new
//! purchase is new, and a completed Checkout Session is never handed out again.

use crate::helpers::{TestApp, spawn_app_with_stripe_webhooks};
use reqwest::Method;
use serde_json::{Value, json};

async fn post_keyed(
    app: &TestApp,
    customer: &str,
    path: &str,
    body: &Value,
    key: Option<&str>,
) -> reqwest::Response {
    let mut r = app
        .http
        .post(app.url(path))
        .bearer_auth(app.customer_token(customer))
        .json(body);
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    r.send().await.unwrap()
}

async fn session_id(r: reqwest::Response) -> String {
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

fn pack(units: u32) -> Value {
    json!({"units": units, "plan": "premium",
           "success_url": "https://app.example/ok", "cancel_url": "https://app.example/no"})
}

async fn on_credits(app: &TestApp, customer: &str) {
    let r = app
        .call_as(
            customer,
            Method::POST,
            "/api/v1/billing/subscriptions",
            Some(json!({"plan": "premium", "billing_model": "credit_burndown"})),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn granted(app: &TestApp, customer: &str, grants: i64) {
    app.eventually(
        "the credit grant",
        &format!(
            "SELECT COUNT(*) = {grants} FROM billing_credits WHERE customer_id = '{customer}'"
        ),
    )
    .await;
}

const PURCHASE: &str = "/api/v1/billing/credits/purchase";

#[tokio::test]
async fn buying_the_same_credit_pack_again_after_paying_gets_a_new_session() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    on_credits(&app, "buyer").await;
    let first = session_id(post_keyed(&app, "buyer", PURCHASE, &pack(100), None).await).await;
    let retry = session_id(post_keyed(&app, "buyer", PURCHASE, &pack(100), None).await).await;
    assert_eq!(retry, first, "a retry of an open purchase replays it");
    app.pay(&first).await;
    granted(&app, "buyer", 1).await;

    let second = session_id(post_keyed(&app, "buyer", PURCHASE, &pack(100), None).await).await;
    assert_ne!(
        second, first,
        "the completed session is never handed out again"
    );
    let session = app
        .stripe_get(&format!("/v1/checkout/sessions/{second}"))
        .await;
    assert_eq!(session["status"], "open");
    app.pay(&second).await;
    granted(&app, "buyer", 2).await;
}

#[tokio::test]
async fn an_idempotency_key_names_one_purchase() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    on_credits(&app, "keyed").await;
    let k = Some("order-2026-12-01-0001");
    let first = session_id(post_keyed(&app, "keyed", PURCHASE, &pack(100), k).await).await;
    let replay = session_id(post_keyed(&app, "keyed", PURCHASE, &pack(100), k).await).await;
    assert_eq!(replay, first);

    let reused = post_keyed(&app, "keyed", PURCHASE, &pack(500), k).await;
    assert_eq!(reused.status(), 422);
    assert_eq!(
        reused.json::<Value>().await.unwrap()["code"],
        "idempotency_key_reused"
    );

    app.pay(&first).await;
    granted(&app, "keyed", 1).await;
    let after = post_keyed(&app, "keyed", PURCHASE, &pack(100), k).await;
    assert_eq!(after.status(), 409);
    assert_eq!(
        after.json::<Value>().await.unwrap()["code"],
        "purchase_already_completed"
    );
    let next = post_keyed(&app, "keyed", PURCHASE, &pack(100), Some("order-0002")).await;
    assert_ne!(session_id(next).await, first);

    let bad = post_keyed(&app, "keyed", PURCHASE, &pack(100), Some("with space")).await;
    assert_eq!(
        bad.status(),
        422,
        "an unusable key is a clear validation error"
    );
}

#[tokio::test]
async fn the_same_key_belongs_to_one_customer_only() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    on_credits(&app, "ann").await;
    on_credits(&app, "ben").await;
    let k = Some("shared-key");
    let ann = session_id(post_keyed(&app, "ann", PURCHASE, &pack(100), k).await).await;
    let ben = session_id(post_keyed(&app, "ben", PURCHASE, &pack(100), k).await).await;
    assert_ne!(ann, ben);
}

#[tokio::test]
async fn a_declined_direct_subscribe_is_tried_afresh_once_the_card_is_fixed() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    // A Stripe customer with a saved card that declines.
    on_credits(&app, "fixer").await;
    let opened = session_id(post_keyed(&app, "fixer", PURCHASE, &pack(100), None).await).await;
    let session = app
        .stripe_get(&format!("/v1/checkout/sessions/{opened}"))
        .await;
    let stripe_customer = session["customer"].as_str().unwrap().to_owned();
    app.stripe_post(
        &format!("/v1/customers/{stripe_customer}"),
        &[("invoice_settings[default_payment_method]", "pm_card_visa")],
    )
    .await;
    app.stripe_post(
        &format!("/v1/test_helpers/customers/{stripe_customer}/fail_payments"),
        &[("fail", "true")],
    )
    .await;
    let subscribe = || {
        app.call_as(
            "fixer",
            Method::POST,
            "/api/v1/billing/subscriptions",
            Some(json!({"plan": "enterprise", "billing_model": "fixed_fee"})),
        )
    };
    let declined = subscribe().await;
    assert_eq!(declined.status(), 402);
    // The customer fixes the card; the same request now subscribes (no replayed decline).
    app.stripe_post(
        &format!("/v1/test_helpers/customers/{stripe_customer}/fail_payments"),
        &[("fail", "false")],
    )
    .await;
    let created = subscribe().await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
}

#[tokio::test]
async fn a_double_click_on_subscribe_creates_one_subscription() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    on_credits(&app, "clicker").await;
    let opened = session_id(post_keyed(&app, "clicker", PURCHASE, &pack(100), None).await).await;
    let session = app
        .stripe_get(&format!("/v1/checkout/sessions/{opened}"))
        .await;
    let stripe_customer = session["customer"].as_str().unwrap().to_owned();
    app.stripe_post(
        &format!("/v1/customers/{stripe_customer}"),
        &[("invoice_settings[default_payment_method]", "pm_card_visa")],
    )
    .await;
    let body = json!({"plan": "enterprise", "billing_model": "fixed_fee"});
    let (a, b) = tokio::join!(
        app.call_as(
            "clicker",
            Method::POST,
            "/api/v1/billing/subscriptions",
            Some(body.clone())
        ),
        app.call_as(
            "clicker",
            Method::POST,
            "/api/v1/billing/subscriptions",
            Some(body.clone())
        ),
    );
    assert!(
        a.status() == 201 || b.status() == 201,
        "{} / {}",
        a.status(),
        b.status()
    );
    let subs = app
        .stripe_get(&format!(
            "/v1/subscriptions?customer={stripe_customer}&status=all"
        ))
        .await;
    assert_eq!(subs["data"].as_array().unwrap().len(), 1, "{subs}");
}
