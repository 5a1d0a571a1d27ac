//! Subscription lifecycles against the Stripe stand-in with test clocks: downgrade at the
//! period end, direct subscribe, billing-model switches, overage on the renewal invoice,
//! payment failure with grace and fallback, and reconciliation of a lost webhook.

use crate::helpers::{TestApp, spawn_app_with_stripe_webhooks};
use reqwest::Method;
use serde_json::{Value, json};

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

const DAY: i64 = 86_400;

async fn stored_period(
    app: &TestApp,
    customer: &str,
) -> (time::OffsetDateTime, time::OffsetDateTime) {
    sqlx::query_as(
        "SELECT current_period_start, current_period_end FROM subscriptions
         WHERE customer_id = $1 AND stripe_subscription_id IS NOT NULL
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(customer)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn stripe_customer(app: &TestApp, customer: &str) -> String {
    sqlx::query_scalar("SELECT stripe_customer_id FROM customers WHERE customer_id = $1")
        .bind(customer)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn save_card(app: &TestApp, customer: &str) {
    let id = stripe_customer(app, customer).await;
    app.stripe_post(
        &format!("/v1/customers/{id}"),
        &[("invoice_settings[default_payment_method]", "pm_card_visa")],
    )
    .await;
}

/// The subscription's invoices, newest first.
async fn invoices(app: &TestApp, subscription: &str) -> Vec<Value> {
    app.stripe_get(&format!(
        "/v1/invoices?subscription={subscription}&limit=100"
    ))
    .await["data"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_downgrade_waits_for_the_period_end_and_the_renewal_bills_the_lower_price() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let clock = app.customer_on_clock("down", now()).await;
    let sub = app.subscribe_via_checkout("down", "enterprise").await;
    let (_, end) = stored_period(&app, "down").await;

    let r = app
        .call_as(
            "down",
            Method::PATCH,
            "/api/v1/billing/subscriptions",
            Some(json!({"plan": "premium"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["change"], "downgrade_at_period_end");
    assert_eq!(body["plan"], "enterprise", "access stays on the paid plan");
    assert_eq!(body["pending_plan"], "premium");
    assert_eq!(app.snapshot("down").await["included_units"], 400);
    assert!(
        invoices(&app, &sub)
            .await
            .iter()
            .all(|i| i["billing_reason"] != "subscription_update"),
        "a downgrade charges and refunds nothing now"
    );

    // Changing one's mind restores the plan without any charge.
    let undo: Value = app
        .call_as(
            "down",
            Method::PATCH,
            "/api/v1/billing/subscriptions",
            Some(json!({"plan": "enterprise"})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(undo["change"], "downgrade_undone");
    assert_eq!(undo["pending_plan"], Value::Null);
    let again = app
        .call_as(
            "down",
            Method::PATCH,
            "/api/v1/billing/subscriptions",
            Some(json!({"plan": "premium"})),
        )
        .await;
    assert_eq!(again.status(), 200);

    // The period ends: the renewal invoice charges Premium, and access follows.
    app.advance(&clock, end.unix_timestamp() + 2 * 3600).await;
    app.eventually(
        "the downgrade to apply",
        "SELECT plan_type = 'premium' AND pending_plan_type IS NULL FROM subscriptions
         WHERE customer_id = 'down' AND stripe_subscription_id IS NOT NULL",
    )
    .await;
    let renewal = invoices(&app, &sub)
        .await
        .into_iter()
        .find(|i| i["billing_reason"] == "subscription_cycle")
        .expect("a renewal invoice");
    assert_eq!(renewal["amount_due"], 19_900);
    assert_eq!(renewal["status"], "paid");
    assert_eq!(app.snapshot("down").await["included_units"], 100);
}

#[tokio::test]
async fn direct_subscribe_needs_a_saved_card_and_charges_it() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let post = |customer: &'static str, body: Value| {
        app.call_as(
            customer,
            Method::POST,
            "/api/v1/billing/subscriptions",
            Some(body),
        )
    };
    let no_card = post("ds", json!({"plan": "premium"})).await;
    assert_eq!(no_card.status(), 409);
    assert_eq!(
        no_card.json::<Value>().await.unwrap()["code"],
        "payment_method_required"
    );
    let free = post("ds", json!({"plan": "free"})).await;
    assert_eq!(free.status(), 200, "Free needs no Stripe subscription");

    save_card(&app, "ds").await;
    let created = post("ds", json!({"plan": "premium"})).await;
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["plan"], "premium");
    assert_eq!(body["status"], "active");
    assert_eq!(app.snapshot("ds").await["included_units"], 100);
    let ds = stripe_customer(&app, "ds").await;
    let paid = app
        .stripe_get(&format!("/v1/invoices?customer={ds}&status=paid"))
        .await;
    assert_eq!(paid["data"][0]["amount_paid"], 19_900);
    let view = app.get_as("ds", "/api/v1/billing/subscriptions").await;
    assert_eq!(
        view["next_invoice"]["subscription_amount"], "199.00",
        "{view}"
    );
    assert_eq!(view["next_invoice"]["overage_so_far"], "0.00");

    // The business gauges are refreshed by a job, then scraped.
    tollgate_control_plane::jobs::business_metrics::refresh(&app.state)
        .await
        .unwrap();
    let metrics = app
        .http
        .get(format!("{}/metrics", app.metrics_address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tollgate_cp_mrr_cents{plan=\"premium\"} 19900",
        "tollgate_cp_active_subscriptions{billing_model=\"fixed_fee\",plan=\"premium\",status=\"active\"} 1",
        "tollgate_cp_free_to_paid_conversions_total 1",
        "tollgate_cp_stripe_api_seconds_count{operation=\"create_subscription\"} 1",
        "tollgate_cp_dependency_up{dependency=\"postgres\"} 1",
        "tollgate_cp_dependency_up{dependency=\"redis\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    let twice = post("ds", json!({"plan": "enterprise"})).await;
    assert_eq!(twice.status(), 409);
    assert_eq!(
        twice.json::<Value>().await.unwrap()["code"],
        "already_subscribed"
    );
    let to_free = post("ds", json!({"plan": "free"})).await;
    assert_eq!(to_free.json::<Value>().await.unwrap()["code"], "use_cancel");

    // A declined card: a clear 402, and nothing stored as active.
    let declined = post("dd", json!({"plan": "premium"})).await;
    assert_eq!(declined.status(), 409);
    save_card(&app, "dd").await;
    let id = stripe_customer(&app, "dd").await;
    app.stripe_post(
        &format!("/v1/test_helpers/customers/{id}/fail_payments"),
        &[("fail", "true")],
    )
    .await;
    let refused = post("dd", json!({"plan": "premium"})).await;
    assert_eq!(refused.status(), 402);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["code"],
        "payment_failed"
    );
    assert_eq!(app.snapshot("dd").await["plan"], "free");
}

#[tokio::test]
async fn switching_billing_model_expires_unused_credits_with_the_reason_kept() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let start = app
        .call_as(
            "sw",
            Method::POST,
            "/api/v1/billing/subscriptions",
            Some(json!({"plan": "premium", "billing_model": "credit_burndown"})),
        )
        .await;
    assert_eq!(start.status(), 201);
    assert_eq!(app.snapshot("sw").await["billing_model"], "credit_burndown");
    let session: Value = app
        .post_json(
            "/api/v1/billing/credits/purchase",
            "sw",
            &json!({"units": 100, "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"}),
        )
        .await
        .json()
        .await
        .unwrap();
    app.pay(session["id"].as_str().unwrap()).await;
    app.eventually(
        "the grant",
        "SELECT count(*) = 1 FROM billing_credits WHERE customer_id = 'sw' AND closed_at IS NULL",
    )
    .await;
    assert_eq!(app.snapshot("sw").await["credit_units_purchased"], 100);

    save_card(&app, "sw").await;
    let switch = app
        .call_as(
            "sw",
            Method::PATCH,
            "/api/v1/billing/subscriptions",
            Some(json!({"billing_model": "fixed_fee"})),
        )
        .await;
    assert_eq!(switch.status(), 200);
    let body: Value = switch.json().await.unwrap();
    assert_eq!(body["credits_expired"], 1);
    assert_eq!(body["billing_model"], "fixed_fee");
    let credits = app.get_as("sw", "/api/v1/billing/credits").await;
    assert_eq!(
        credits["grants"][0]["closed_reason"],
        "billing_model_switch"
    );
    assert_eq!(credits["units_remaining"], 0);
    let snapshot = app.snapshot("sw").await;
    assert_eq!(snapshot["billing_model"], "fixed_fee");
    assert_eq!(snapshot["included_units"], 100);

    // Credits cannot be bought on fixed fee without switching first.
    let buy = app
        .post_json(
            "/api/v1/billing/credits/purchase",
            "sw",
            &json!({"units": 100, "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"}),
        )
        .await;
    assert_eq!(buy.status(), 409);
    assert_eq!(
        buy.json::<Value>().await.unwrap()["code"],
        "billing_model_switch_required"
    );

    let back = app
        .call_as(
            "sw",
            Method::PATCH,
            "/api/v1/billing/subscriptions",
            Some(json!({"billing_model": "credit_burndown"})),
        )
        .await;
    assert_eq!(back.status(), 200);
    assert_eq!(app.snapshot("sw").await["billing_model"], "credit_burndown");
    let stripe_status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM subscriptions WHERE customer_id = 'sw' AND stripe_subscription_id IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        stripe_status.as_deref(),
        Some("canceled"),
        "no monthly charge on credits"
    );
}

#[tokio::test]
async fn overage_of_137_units_on_premium_is_invoiced_once_as_73_63() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let clock = app.customer_on_clock("over", now()).await;
    let sub = app.subscribe_via_checkout("over", "premium").await;
    let (start, end) = stored_period(&app, "over").await;
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    app.ingest_usage("over", 137, &json!(rfc(start)), &json!(rfc(end)))
        .await;

    app.advance(&clock, end.unix_timestamp() + 60).await;
    app.eventually(
        "the overage charge",
        "SELECT count(*) = 1 FROM overage_charges WHERE customer_id = 'over' AND state = 'billed'",
    )
    .await;
    let draft = invoices(&app, &sub)
        .await
        .into_iter()
        .find(|i| i["billing_reason"] == "subscription_cycle")
        .expect("the renewal draft");
    assert_eq!(draft["status"], "draft");
    let item: String = sqlx::query_scalar(
        "SELECT stripe_invoice_item_id FROM overage_charges WHERE customer_id = 'over'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();

    // Running again bills nothing; a crash after Stripe but before the row (simulated by
    // deleting the row) replays the same invoice item.
    let gateway = app.state.stripe.as_ref().unwrap();
    let rerun = tollgate_control_plane::overage::bill_renewal_draft(
        &app.pool,
        gateway,
        &app.state.catalog,
        &draft,
    )
    .await
    .unwrap();
    assert_eq!(rerun, None);
    sqlx::query("DELETE FROM overage_charges WHERE customer_id = 'over'")
        .execute(&app.pool)
        .await
        .unwrap();
    let replay = tollgate_control_plane::overage::bill_renewal_draft(
        &app.pool,
        gateway,
        &app.state.catalog,
        &draft,
    )
    .await
    .unwrap()
    .expect("billed again after the lost row");
    assert_eq!(replay.invoice_item, item, "Stripe replayed the same item");
    assert_eq!(replay.units, 37);

    app.advance(&clock, end.unix_timestamp() + 2 * 3600).await;
    let invoice = app
        .stripe_get(&format!("/v1/invoices/{}", draft["id"].as_str().unwrap()))
        .await;
    assert_eq!(invoice["status"], "paid");
    let lines = invoice["lines"]["data"].as_array().unwrap();
    let overage: Vec<&Value> = lines.iter().filter(|l| l["amount"] == 7_363).collect();
    assert_eq!(overage.len(), 1, "37 × $1.99 exactly once: {lines:?}");
    assert_eq!(invoice["amount_due"], 19_900 + 7_363);

    // A worker that reaches a renewal draft only after Stripe finalized it (a backlog, an
    // outage) bills the overage on the next invoice instead: 105 units → 5 × $1.99.
    let next_end = end + (end - start);
    app.ingest_usage("over", 105, &json!(rfc(end)), &json!(rfc(next_end)))
        .await;
    let mut late = draft.clone();
    late["period_start"] = json!(end.unix_timestamp());
    late["period_end"] = json!(next_end.unix_timestamp());
    // The next renewal's subscription line starts where that period ends.
    for line in late["lines"]["data"].as_array_mut().unwrap() {
        line["period"]["start"] = json!(next_end.unix_timestamp());
    }
    let charge = tollgate_control_plane::overage::bill_renewal_draft(
        &app.pool,
        gateway,
        &app.state.catalog,
        &late,
    )
    .await
    .unwrap()
    .expect("billed on the next invoice");
    assert_eq!(charge.billed_on, format!("next:{sub}"));
    let item = app
        .stripe_get(&format!("/v1/invoiceitems/{}", charge.invoice_item))
        .await;
    assert_eq!(item["amount"], 995);
    assert_eq!(item["invoice"], Value::Null, "pending for the next invoice");
    assert_eq!(
        item["parent"]["subscription_details"]["subscription"],
        sub.as_str()
    );
}

#[tokio::test]
async fn a_failed_renewal_keeps_the_plan_for_the_grace_period_then_falls_back_to_free() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    // Renewal failed two days ago: still within the 7-day grace.
    let recent = app.customer_on_clock("recent", now() - 33 * DAY).await;
    // Renewal failed about two weeks ago: grace is over.
    let old = app.customer_on_clock("old", now() - 45 * DAY).await;
    for (customer, clock) in [("recent", &recent), ("old", &old)] {
        app.subscribe_via_checkout(customer, "premium").await;
        let id = stripe_customer(&app, customer).await;
        app.stripe_post(
            &format!("/v1/test_helpers/customers/{id}/fail_payments"),
            &[("fail", "true")],
        )
        .await;
        let (_, end) = stored_period(&app, customer).await;
        app.advance(clock, end.unix_timestamp() + 2 * 3600).await;
        app.eventually(
            "the failed payment",
            &format!(
                "SELECT status = 'past_due' AND grace_until IS NOT NULL AND payment_failed_attempts >= 1
                 FROM subscriptions WHERE customer_id = '{customer}' AND stripe_subscription_id IS NOT NULL"
            ),
        )
        .await;
    }
    let recent_snapshot = app.snapshot("recent").await;
    assert_eq!(recent_snapshot["status"], "past_due_in_grace");
    assert_eq!(recent_snapshot["included_units"], 100);
    let old_snapshot = app.snapshot("old").await;
    assert_eq!(old_snapshot["status"], "lapsed");
    assert_eq!(
        old_snapshot["included_units"], 10,
        "Free limits after grace"
    );
    // The moment a grace period runs out, the job tells the proxies (and the app).
    sqlx::query("UPDATE subscriptions SET grace_until = now() - interval '1 minute' WHERE customer_id = 'old'")
        .execute(&app.pool)
        .await
        .unwrap();
    let published = tollgate_control_plane::jobs::grace_expiry::run_once(&app.state)
        .await
        .unwrap();
    assert_eq!(published, 1);
    assert_eq!(
        tollgate_control_plane::jobs::grace_expiry::run_once(&app.state)
            .await
            .unwrap(),
        0,
        "each expiry once"
    );

    // The recent customer fixes their card; Stripe's retry succeeds: plan restored.
    let id = stripe_customer(&app, "recent").await;
    app.stripe_post(
        &format!("/v1/test_helpers/customers/{id}/fail_payments"),
        &[("fail", "false")],
    )
    .await;
    let (_, end) = stored_period(&app, "recent").await;
    let _ = end;
    let failed_at: i64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM next_payment_attempt)::BIGINT FROM subscriptions WHERE customer_id = 'recent'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    app.advance(&recent, failed_at + 60).await;
    app.eventually(
        "the recovery",
        "SELECT status = 'active' AND grace_until IS NULL FROM subscriptions WHERE customer_id = 'recent'",
    )
    .await;
    assert_eq!(app.snapshot("recent").await["status"], "active");

    // The old customer never pays: after Stripe's last retry the subscription is canceled.
    let (_, end) = stored_period(&app, "old").await;
    app.advance(&old, end.unix_timestamp() + 20 * DAY).await;
    app.eventually(
        "the cancellation",
        "SELECT status = 'canceled' FROM subscriptions WHERE customer_id = 'old'",
    )
    .await;
    assert_eq!(app.snapshot("old").await["plan"], "free");

    // The ticket app hears of each: failures, the recovery and the fall back to Free.
    let notes: Vec<(String, String)> =
        sqlx::query_as("SELECT customer_id, kind FROM notification_outbox ORDER BY created_at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let has = |c: &str, k: &str| notes.iter().any(|n| n.0 == c && n.1 == k);
    assert!(
        has("recent", "payment.failed") && has("old", "payment.failed"),
        "{notes:?}"
    );
    assert!(has("recent", "payment.recovered"), "{notes:?}");
    assert!(has("old", "plan.fell_back_to_free"), "{notes:?}");
    assert!(!has("recent", "plan.fell_back_to_free"), "{notes:?}");
}

#[tokio::test]
async fn reconciliation_heals_webhooks_that_were_never_delivered() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let session = app
        .checkout(
            "lost",
            &json!({"plan": "premium", "billing_model": "fixed_fee",
                    "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"}),
        )
        .await;
    // Every event of the payment is lost on the way.
    app.stripe_post("/v1/test_helpers/webhooks/config", &[("drop_next", "1000")])
        .await;
    app.pay(&session).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM subscriptions WHERE customer_id = 'lost'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, 0, "nothing arrived");

    let repaired = tollgate_control_plane::jobs::stripe_reconciliation::run_once(&app.state)
        .await
        .unwrap();
    assert!(
        repaired >= 2,
        "the checkout and subscription events: {repaired}"
    );
    app.eventually(
        "the healed subscription",
        "SELECT bool_or(status = 'active') FROM subscriptions WHERE customer_id = 'lost'",
    )
    .await;
    assert_eq!(app.snapshot("lost").await["plan"], "premium");
    let again = tollgate_control_plane::jobs::stripe_reconciliation::run_once(&app.state)
        .await
        .unwrap();
    assert_eq!(again, 0, "nothing is repaired twice");
    let metrics = app
        .http
        .get(format!("{}/metrics", app.metrics_address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "tollgate_cp_stripe_reconcile_repairs_total {repaired}"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_customer_who_paid_through_checkout_resubscribes_with_that_card() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let first = app.subscribe_via_checkout("again", "premium").await;
    let card =
        app.stripe_get(&format!("/v1/subscriptions/{first}")).await["default_payment_method"]
            .as_str()
            .expect("Checkout keeps its card on the subscription")
            .to_owned();
    let id = stripe_customer(&app, "again").await;
    assert_eq!(
        app.stripe_get(&format!("/v1/customers/{id}")).await["invoice_settings"]["default_payment_method"],
        Value::Null,
        "as in Stripe: not the customer's default"
    );
    let cancelled = app
        .call_as(
            "again",
            Method::DELETE,
            "/api/v1/billing/subscriptions?immediately=true",
            None,
        )
        .await;
    assert_eq!(cancelled.status(), 200);

    // Subscribing again needs no new Checkout: the card the customer paid with is used.
    let again = app
        .call_as(
            "again",
            Method::POST,
            "/api/v1/billing/subscriptions",
            Some(json!({"plan": "enterprise"})),
        )
        .await;
    assert_eq!(again.status(), 201, "{}", again.text().await.unwrap());
    let live: String = sqlx::query_scalar(
        "SELECT stripe_subscription_id FROM subscriptions
         WHERE customer_id = 'again' AND status = 'active'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_ne!(live, first);
    let sub = app.stripe_get(&format!("/v1/subscriptions/{live}")).await;
    assert_eq!(sub["default_payment_method"], card.as_str());
    assert_eq!(sub["billing_mode"]["type"], "flexible", "named explicitly");
    let first_invoice = app
        .stripe_get(&format!(
            "/v1/invoices/{}",
            sub["latest_invoice"].as_str().unwrap()
        ))
        .await;
    assert_eq!(first_invoice["status"], "paid");
    assert_eq!(first_invoice["amount_paid"], 59_900);
}

#[tokio::test]
async fn a_card_removed_in_the_portal_is_not_used_to_resubscribe() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let first = app.subscribe_via_checkout("removed", "premium").await;
    let card =
        app.stripe_get(&format!("/v1/subscriptions/{first}")).await["default_payment_method"]
            .as_str()
            .unwrap()
            .to_owned();
    let cancelled = app
        .call_as(
            "removed",
            Method::DELETE,
            "/api/v1/billing/subscriptions?immediately=true",
            None,
        )
        .await;
    assert_eq!(cancelled.status(), 200);
    // The customer removes the card in the Customer Portal: detached for good.
    let detached = app
        .stripe_post(&format!("/v1/payment_methods/{card}/detach"), &[])
        .await;
    assert_eq!(detached["customer"], Value::Null, "{detached}");
    let again = app
        .call_as(
            "removed",
            Method::POST,
            "/api/v1/billing/subscriptions",
            Some(json!({"plan": "premium"})),
        )
        .await;
    assert_eq!(
        again.status(),
        409,
        "not a 502 from Stripe refusing the card"
    );
    assert_eq!(
        again.json::<Value>().await.unwrap()["code"],
        "payment_method_required"
    );
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM subscriptions WHERE customer_id = 'removed' AND status = 'active'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(live, 0);
}

#[tokio::test]
async fn a_customer_who_only_bought_credits_subscribes_through_checkout() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let session = app
        .checkout(
            "packs",
            &json!({"plan": "premium", "billing_model": "credit_burndown",
                "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"}),
        )
        .await;
    app.pay(&session).await;
    app.eventually(
        "the grant",
        "SELECT count(*) = 1 FROM billing_credits WHERE customer_id = 'packs'",
    )
    .await;
    // Payment-mode Checkout saved no card: switching to fixed fee needs Checkout.
    let switch = app
        .call_as(
            "packs",
            Method::PATCH,
            "/api/v1/billing/subscriptions",
            Some(json!({"billing_model": "fixed_fee"})),
        )
        .await;
    assert_eq!(switch.status(), 409);
    assert_eq!(
        switch.json::<Value>().await.unwrap()["code"],
        "payment_method_required"
    );
    assert_eq!(
        app.snapshot("packs").await["billing_model"],
        "credit_burndown"
    );
}
