//! Credit packs as money: what was bought is granted (not what was charged with tax),
//! delayed payment methods grant when paid, partial refunds revoke their share, a lost
//! dispute ends the grant.

use crate::helpers::{TestApp, WEBHOOK_SECRET, spawn_app_with_stripe_webhooks};
use reqwest::Method;
use serde_json::{Value, json};
use tollgate_control_plane::webhooks::signature::sign;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
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

/// Buys and pays a 100-credit Premium pack; returns the payment intent.
async fn bought_pack(app: &TestApp, customer: &str) -> String {
    on_credits(app, customer).await;
    let r: Value = app
        .post_json(
            "/api/v1/billing/credits/purchase",
            customer,
            &json!({"units": 100, "plan": "premium",
                    "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let session = r["id"].as_str().unwrap().to_owned();
    app.pay(&session).await;
    app.eventually(
        "the grant",
        &format!("SELECT count(*) = 1 FROM billing_credits WHERE customer_id = '{customer}'"),
    )
    .await;
    app.stripe_get(&format!("/v1/checkout/sessions/{session}"))
        .await["payment_intent"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn use_credits(app: &TestApp, customer: &str, units: usize) {
    for _ in 0..units {
        let r = app
            .http
            .post(app.url("/api/v1/billing/usage/record"))
            .bearer_auth(&app.service_token)
            .json(&json!({ "customer_id": customer, "usage_type": "agent_interaction" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
}

async fn credits_purchased(app: &TestApp, customer: &str) -> u64 {
    app.snapshot(customer).await["credit_units_purchased"]
        .as_u64()
        .unwrap()
}

async fn eventually_purchased(app: &TestApp, customer: &str, want: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = credits_purchased(app, customer).await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "credit units purchased stayed {got}, expected {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_partial_refund_revokes_its_share_and_a_full_one_ends_the_grant() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let intent = bought_pack(&app, "refundee").await;
    assert_eq!(credits_purchased(&app, "refundee").await, 100);
    use_credits(&app, "refundee", 10).await;
    // Half the pack's price back: half the pack's credits go.
    app.stripe_post(
        "/v1/refunds",
        &[("payment_intent", &intent), ("amount", "9950")],
    )
    .await;
    eventually_purchased(&app, "refundee", 50).await;
    let usage = app.get_as("refundee", "/api/v1/billing/usage").await;
    assert_eq!(usage["credit_units_remaining"], 40, "{usage}");
    // The rest refunded: the grant ends, what was used stays used.
    app.stripe_post("/v1/refunds", &[("payment_intent", &intent)])
        .await;
    eventually_purchased(&app, "refundee", 10).await;
}

async fn deliver(app: &TestApp, id: &str, kind: &str, object: Value) {
    let body = json!({
        "id": id, "object": "event", "type": kind, "created": now(),
        "api_version": "2026-09-30.endive", "livemode": false, "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "data": { "object": object },
    })
    .to_string();
    let r = app
        .deliver(&body, Some(sign(body.as_bytes(), WEBHOOK_SECRET, now())))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_lost_dispute_ends_the_grant() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let intent = bought_pack(&app, "disputer").await;
    use_credits(&app, "disputer", 3).await;
    deliver(
        &app,
        "evt_dispute_won_by_us",
        "charge.dispute.closed",
        json!({"id": "dp_1", "object": "dispute", "status": "won", "payment_intent": intent}),
    )
    .await;
    deliver(
        &app,
        "evt_dispute_lost",
        "charge.dispute.closed",
        json!({"id": "dp_2", "object": "dispute", "status": "lost", "payment_intent": intent}),
    )
    .await;
    eventually_purchased(&app, "disputer", 3).await;
    let reason: String = sqlx::query_scalar(
        "SELECT closed_reason FROM billing_credits WHERE customer_id = 'disputer'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(reason, "dispute_lost");
}

fn paid_session(id: &str, customer: &str, payment_status: &str) -> Value {
    json!({
        "id": id, "object": "checkout.session", "mode": "payment",
        "payment_status": payment_status, "status": "complete",
        "customer": null, "payment_intent": format!("pi_{id}"),
        // 100 credits at $1.99 with 10 % tax charged on top.
        "amount_subtotal": 19_900, "amount_total": 21_890,
        "metadata": {"tollgate_customer_id": customer, "tollgate_plan": "premium",
                     "tollgate_credit_units": "100", "tollgate_billing_model": "credit_burndown"},
    })
}

#[tokio::test]
async fn a_pack_grants_what_was_bought_not_the_tax_charged_on_it() {
    let app = spawn_app_with_stripe_webhooks().await;
    deliver(
        &app,
        "evt_taxed_pack",
        "checkout.session.completed",
        paid_session("cs_taxed", "taxed", "paid"),
    )
    .await;
    app.eventually(
        "the grant",
        "SELECT count(*) = 1 FROM billing_credits WHERE customer_id = 'taxed'",
    )
    .await;
    let amount: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT credit_amount FROM billing_credits WHERE customer_id = 'taxed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(amount.to_string(), "199.00");
    assert_eq!(credits_purchased(&app, "taxed").await, 100);
}

#[tokio::test]
async fn a_delayed_payment_grants_when_it_succeeds_and_not_before() {
    let app = spawn_app_with_stripe_webhooks().await;
    deliver(
        &app,
        "evt_debit_completed",
        "checkout.session.completed",
        paid_session("cs_debit", "debtor", "unpaid"),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let grants: i64 =
        sqlx::query_scalar("SELECT count(*) FROM billing_credits WHERE customer_id = 'debtor'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(grants, 0, "an unpaid session grants nothing");
    deliver(
        &app,
        "evt_debit_succeeded",
        "checkout.session.async_payment_succeeded",
        paid_session("cs_debit", "debtor", "paid"),
    )
    .await;
    app.eventually(
        "the grant",
        "SELECT count(*) = 1 FROM billing_credits WHERE customer_id = 'debtor'",
    )
    .await;
}

/// A pack bought on a credit-model row that was cancelled (credits → fixed fee → ended →
/// Free → a pack) begins a new stay on credits: the row starts now, so units of the
/// periods in between never count as paid by the new grants.
#[tokio::test]
async fn coming_back_to_credits_restarts_the_credit_row() {
    use tollgate_control_plane::credit_model::{Entry, enter};
    let app = spawn_app_with_stripe_webhooks().await;
    let mut conn = app.pool.acquire().await.unwrap();
    enter(&mut conn, "again", "premium", Entry::Restart)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE subscriptions SET status = 'canceled',
             created_at = now() - interval '40 days',
             current_period_start = now() - interval '40 days',
             current_period_end = now() - interval '10 days'
         WHERE customer_id = 'again'",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    enter(&mut conn, "again", "premium", Entry::Keep)
        .await
        .unwrap();
    let (status, started_recently): (String, bool) = sqlx::query_as(
        "SELECT status, current_period_start > now() - interval '1 minute'
         FROM subscriptions WHERE customer_id = 'again'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(status, "active");
    assert!(started_recently, "a new stay on credits starts now");
    // While the stay lasts, a pack keeps its period.
    sqlx::query(
        "UPDATE subscriptions SET current_period_start = now() - interval '5 days'
         WHERE customer_id = 'again'",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    enter(&mut conn, "again", "premium", Entry::Keep)
        .await
        .unwrap();
    let kept: bool = sqlx::query_scalar(
        "SELECT current_period_start < now() - interval '4 days'
         FROM subscriptions WHERE customer_id = 'again'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(kept);
}

/// The subscription view of a credit customer shows the period its usage counts in now
/// (the credit row's 30-day periods roll on unstored), not the row's first one.
#[tokio::test]
async fn a_credit_customers_view_shows_the_current_30_day_period() {
    let app = spawn_app_with_stripe_webhooks().await;
    let r = app
        .call_as(
            "rolled",
            Method::POST,
            "/api/v1/billing/subscriptions",
            Some(json!({"plan": "premium", "billing_model": "credit_burndown"})),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    sqlx::query(
        "UPDATE subscriptions SET current_period_start = now() - interval '40 days',
             current_period_end = now() - interval '10 days'
         WHERE customer_id = 'rolled'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let usage = app.get_as("rolled", "/api/v1/billing/usage").await;
    let view = app.get_as("rolled", "/api/v1/billing/subscriptions").await;
    assert_eq!(view["billing_model"], "credit_burndown", "{view}");
    assert_eq!(
        view["current_period_start"], usage["period_start"],
        "{view} {usage}"
    );
    assert_eq!(
        view["current_period_end"], usage["period_end"],
        "{view} {usage}"
    );
    let start = time::OffsetDateTime::parse(
        view["current_period_start"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(start > time::OffsetDateTime::now_utc() - time::Duration::days(30));
}
