//! Catalog sync, Checkout and the Customer Portal against the Stripe stand-in, through the
//! same async-stripe client the control plane uses for real Stripe.

use crate::helpers::{spawn_app, spawn_app_with_stripe};
use serde_json::{Value, json};

fn premium_checkout() -> Value {
    json!({
        "plan": "premium",
        "billing_model": "fixed_fee",
        "success_url": "https://app.example/billing/done",
        "cancel_url": "https://app.example/billing",
    })
}

#[tokio::test]
async fn catalog_sync_creates_products_and_prices_once() {
    let app = spawn_app_with_stripe().await;
    let first = app.sync_catalog().await;
    assert_eq!(
        first.products_created,
        ["tollgate_premium", "tollgate_enterprise"]
    );
    assert_eq!(first.prices_created.len(), 4);
    let second = app.sync_catalog().await;
    assert!(second.products_created.is_empty());
    assert!(second.prices_created.is_empty());
    assert_eq!(second.prices_unchanged.len(), 4);
    let prices = app
        .stripe_get("/v1/prices?lookup_keys[]=tollgate_premium_monthly&lookup_keys[]=tollgate_enterprise_credit")
        .await;
    let amounts: Vec<(String, i64)> = prices["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["lookup_key"].as_str().unwrap().to_owned(),
                p["unit_amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(amounts.contains(&("tollgate_premium_monthly".into(), 19900)));
    assert!(amounts.contains(&("tollgate_enterprise_credit".into(), 125)));
}

#[tokio::test]
async fn checkout_before_the_catalog_is_synced_says_so() {
    let app = spawn_app_with_stripe().await;
    let r = app
        .post_json("/api/v1/billing/checkout", "nia", &premium_checkout())
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "catalog_not_synced"
    );
}

#[tokio::test]
async fn a_subscription_checkout_creates_the_stripe_customer_once_and_is_idempotent() {
    let app = spawn_app_with_stripe().await;
    app.sync_catalog().await;
    let first = app
        .post_json("/api/v1/billing/checkout", "olga", &premium_checkout())
        .await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert!(first["url"].as_str().unwrap().starts_with("http"));
    let again: Value = app
        .post_json("/api/v1/billing/checkout", "olga", &premium_checkout())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        first["id"], again["id"],
        "a retried request replays the same session"
    );

    let stored: Option<String> =
        sqlx::query_scalar("SELECT stripe_customer_id FROM customers WHERE customer_id = 'olga'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let stripe_customer = stored.expect("the Stripe customer id is stored");
    assert_eq!(
        app.stripe_get("/v1/customers").await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let session = app
        .stripe_get(&format!(
            "/v1/checkout/sessions/{}",
            first["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(session["mode"], "subscription");
    assert_eq!(session["customer"], stripe_customer.as_str());
    assert_eq!(session["client_reference_id"], "olga");
    assert_eq!(session["metadata"]["tollgate_plan"], "premium");
    assert_eq!(session["amount_total"], 19900);
}

#[tokio::test]
async fn a_credit_pack_checkout_is_a_payment_for_the_packs_units_at_the_overage_rate() {
    let app = spawn_app_with_stripe().await;
    app.sync_catalog().await;
    let body = json!({
        "plan": "enterprise",
        "billing_model": "credit_burndown",
        "credit_units": 2000,
        "success_url": "https://app.example/ok",
        "cancel_url": "https://app.example/no",
    });
    let r: Value = app
        .post_json("/api/v1/billing/checkout", "pia", &body)
        .await
        .json()
        .await
        .unwrap();
    let session = app
        .stripe_get(&format!(
            "/v1/checkout/sessions/{}",
            r["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(session["mode"], "payment");
    assert_eq!(
        session["amount_total"],
        2000 * 125,
        "2,000 credits × $1.25 = $2,500.00"
    );
    assert_eq!(session["metadata"]["tollgate_credit_units"], "2000");

    let purchase = json!({ "units": 500, "plan": "premium", "success_url": "https://a.example/", "cancel_url": "https://a.example/" });
    let r: Value = app
        .post_json("/api/v1/billing/credits/purchase", "pia", &purchase)
        .await
        .json()
        .await
        .unwrap();
    let session = app
        .stripe_get(&format!(
            "/v1/checkout/sessions/{}",
            r["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(session["amount_total"], 500 * 199);
}

#[tokio::test]
async fn bad_checkout_requests_are_validation_problems_naming_the_field() {
    let app = spawn_app_with_stripe().await;
    app.sync_catalog().await;
    let cases = [
        (
            json!({"plan": "free", "billing_model": "fixed_fee", "success_url": "https://a.b/", "cancel_url": "https://a.b/"}),
            "plan",
        ),
        (
            json!({"plan": "gold", "billing_model": "fixed_fee", "success_url": "https://a.b/", "cancel_url": "https://a.b/"}),
            "plan",
        ),
        (
            json!({"plan": "premium", "billing_model": "fixed_fee", "success_url": "javascript:x", "cancel_url": "https://a.b/"}),
            "success_url",
        ),
        (
            json!({"plan": "premium", "billing_model": "credit_burndown", "credit_units": 7, "success_url": "https://a.b/", "cancel_url": "https://a.b/"}),
            "units",
        ),
        (
            json!({"plan": "premium", "billing_model": "barter", "success_url": "https://a.b/", "cancel_url": "https://a.b/"}),
            "body",
        ),
    ];
    for (body, field) in cases {
        let r = app
            .post_json("/api/v1/billing/checkout", "quinn", &body)
            .await;
        assert_eq!(r.status(), 422, "{body}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["code"], "validation_failed");
        assert_eq!(problem["field"], field, "{body}");
    }
    let anonymous = app
        .http
        .post(app.url("/api/v1/billing/checkout"))
        .json(&premium_checkout())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn the_portal_needs_a_billing_account_then_returns_a_stripe_url() {
    let app = spawn_app_with_stripe().await;
    app.sync_catalog().await;
    let portal = |who: &'static str| {
        app.http
            .get(app.url("/api/v1/billing/portal"))
            .query(&[("return_url", "https://app.example/billing")])
            .bearer_auth(app.customer_token(who))
            .send()
    };
    let before = portal("rita").await.unwrap();
    assert_eq!(before.status(), 409);
    assert_eq!(
        before.json::<Value>().await.unwrap()["code"],
        "no_billing_account"
    );
    app.post_json("/api/v1/billing/checkout", "rita", &premium_checkout())
        .await;
    let after: Value = portal("rita").await.unwrap().json().await.unwrap();
    assert!(after["url"].as_str().unwrap().starts_with("http"));
}

#[tokio::test]
async fn without_a_stripe_account_billing_endpoints_say_billing_unavailable() {
    let app = spawn_app().await;
    let r = app
        .post_json("/api/v1/billing/checkout", "sam", &premium_checkout())
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "billing_unavailable"
    );
}

/// Found by the journeys (seed 1796416422141): subscribing again through Checkout right
/// after cancelling, with the same request as the first time, answered 409
/// `already_subscribed` ("the subscription is being set up") for the subscription just
/// cancelled. A completed session whose subscription is stored as ended is no purchase in
/// progress: the same request again is a new one.
#[tokio::test]
async fn the_same_checkout_again_after_cancelling_is_a_new_purchase() {
    let app = crate::helpers::spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let first = app.subscribe_via_checkout("again-sub", "premium").await;
    let r = app
        .call_as(
            "again-sub",
            reqwest::Method::DELETE,
            "/api/v1/billing/subscriptions?immediately=true",
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    let second = app.subscribe_via_checkout("again-sub", "premium").await;
    assert_ne!(first, second, "a new subscription");
}
