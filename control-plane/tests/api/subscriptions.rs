//! Changing a subscription through the billing API, checked against the stand-in's
//! invoices.

use crate::helpers::spawn_app_with_stripe_webhooks;
use serde_json::{Value, json};

async fn subscribed(app: &crate::helpers::TestApp, customer: &str, plan: &str) -> String {
    app.subscribe_via_checkout(customer, plan).await
}

async fn patch(app: &crate::helpers::TestApp, customer: &str, body: Value) -> reqwest::Response {
    app.http
        .patch(app.url("/api/v1/billing/subscriptions"))
        .bearer_auth(app.customer_token(customer))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_upgrade_is_immediate_and_the_preview_equals_the_invoice_to_the_cent() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let sub = subscribed(&app, "up", "premium").await;
    // 120 tickets this period: 20 over Premium's 100 before the upgrade.
    let before = app.snapshot("up").await;
    app.ingest_usage("up", 120, &before["period_start"], &before["period_end"])
        .await;
    let r = patch(&app, "up", json!({"plan": "enterprise"})).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["plan"], "enterprise",
        "the upgrade takes effect at once"
    );
    let invoice = app
        .stripe_get(&format!(
            "/v1/invoices/{}",
            body["proration"]["invoice"].as_str().unwrap()
        ))
        .await;
    let total = body["proration"]["total"]
        .as_str()
        .unwrap()
        .replace('.', "");
    assert_eq!(
        invoice["amount_due"].as_i64().unwrap(),
        total.parse::<i64>().unwrap()
    );
    assert_eq!(invoice["status"], "paid");
    // Right after the change almost the whole period remains: about $599 - $199.
    let t: f64 = 0.0 + total.parse::<i64>().unwrap() as f64;
    assert!(t > 39_000.0 && t <= 40_000.0, "{t}");
    let snapshot = app.snapshot("up").await;
    assert_eq!(snapshot["included_units"], 400);
    // The period and its usage carry over; Enterprise's allowance applies from now on.
    assert_eq!(snapshot["period_start"], before["period_start"]);
    assert_eq!(snapshot["units_used"], 120);
    let usage = app.get_as("up", "/api/v1/billing/usage").await;
    assert_eq!(usage["remaining"], 280);
    assert_eq!(usage["overage_amount"], "0.00");
    let stripe_sub = app.stripe_get(&format!("/v1/subscriptions/{sub}")).await;
    assert_eq!(
        stripe_sub["items"]["data"][0]["price"]["lookup_key"],
        "tollgate_enterprise_monthly"
    );
}

#[tokio::test]
async fn cancel_at_period_end_keeps_access_and_reactivation_undoes_it() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    subscribed(&app, "canc", "premium").await;
    let r: Value = app
        .http
        .delete(app.url("/api/v1/billing/subscriptions"))
        .bearer_auth(app.customer_token("canc"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["status"], "active",
        "access stays until the paid period ends"
    );
    assert_eq!(r["cancel_at_period_end"], true);
    assert!(r["access_until"].is_string());
    let back: Value = patch(&app, "canc", json!({"cancel_at_period_end": false}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(back["cancel_at_period_end"], false);
    let now: Value = app
        .http
        .delete(app.url("/api/v1/billing/subscriptions?immediately=true"))
        .bearer_auth(app.customer_token("canc"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(now["status"], "canceled");
    let snapshot = app.snapshot("canc").await;
    assert_eq!(
        snapshot["plan"], "free",
        "a canceled customer is back on Free"
    );
}

#[tokio::test]
async fn changes_without_a_subscription_or_that_change_nothing_are_refused_clearly() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let none = patch(&app, "nosub", json!({"plan": "enterprise"})).await;
    assert_eq!(none.status(), 409);
    assert_eq!(
        none.json::<Value>().await.unwrap()["code"],
        "no_subscription"
    );
    subscribed(&app, "same", "enterprise").await;
    let same = patch(&app, "same", json!({"plan": "enterprise"})).await;
    assert_eq!(same.status(), 422);
    assert_eq!(same.json::<Value>().await.unwrap()["field"], "plan");
    let empty = patch(&app, "same", json!({})).await;
    assert_eq!(empty.status(), 422);
    let two = patch(
        &app,
        "same",
        json!({"plan": "premium", "cancel_at_period_end": true}),
    )
    .await;
    assert_eq!(two.status(), 422);
    let unknown = patch(&app, "same", json!({"plan": "platinum"})).await;
    assert_eq!(unknown.status(), 422);
}
