//! Purchases that no longer fit when they are paid, and money that must not be stranded:
//! two subscription Checkouts paid side by side, a credit pack paid after subscribing, and
//! the unused fixed fee of a switch to credits.

use crate::helpers::{TestApp, spawn_app_with_stripe_webhooks};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use std::str::FromStr;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn checkout_body(plan: &str, model: &str) -> Value {
    json!({"plan": plan, "billing_model": model,
        "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"})
}

/// A `count(*)`-like query's answer.
async fn count(app: &TestApp, query: &'static str) -> i64 {
    sqlx::query_scalar(query)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// The charge that paid a payment intent, as Stripe holds it now.
async fn charge_of(app: &TestApp, payment_intent: &str) -> Value {
    let pi = app
        .stripe_get(&format!("/v1/payment_intents/{payment_intent}"))
        .await;
    app.stripe_get(&format!(
        "/v1/charges/{}",
        pi["latest_charge"].as_str().expect("a charge")
    ))
    .await
}

/// The payment intent that paid an invoice (`payments`, Stripe's 2025 invoice field).
async fn invoice_payment_intent(app: &TestApp, invoice: &str) -> String {
    let invoice = app
        .stripe_get(&format!("/v1/invoices/{invoice}?expand[]=payments"))
        .await;
    invoice["payments"]["data"][0]["payment"]["payment_intent"]
        .as_str()
        .unwrap_or_else(|| panic!("a paid invoice: {invoice}"))
        .to_owned()
}

#[tokio::test]
async fn two_checkouts_paid_side_by_side_leave_one_subscription_and_refund_the_other() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    // Two tabs: both sessions open before either is paid.
    let first = app
        .checkout("tabs", &checkout_body("premium", "fixed_fee"))
        .await;
    let second = app
        .checkout("tabs", &checkout_body("enterprise", "fixed_fee"))
        .await;
    assert_ne!(first, second);
    app.pay(&first).await;
    app.eventually(
        "the first subscription",
        "SELECT bool_or(status = 'active') FROM subscriptions WHERE customer_id = 'tabs'",
    )
    .await;
    app.pay(&second).await;
    let kept = app
        .stripe_get(&format!("/v1/checkout/sessions/{first}"))
        .await["subscription"]
        .as_str()
        .unwrap()
        .to_owned();
    let extra = app
        .stripe_get(&format!("/v1/checkout/sessions/{second}"))
        .await["subscription"]
        .as_str()
        .expect("Stripe made a second subscription")
        .to_owned();
    app.eventually(
        "the second subscription to end",
        &format!(
            "SELECT count(*) = 1 FROM subscriptions
             WHERE stripe_subscription_id = '{extra}' AND status = 'canceled'"
        ),
    )
    .await;
    let live: Vec<String> = sqlx::query_scalar(
        "SELECT stripe_subscription_id FROM subscriptions
         WHERE customer_id = 'tabs' AND status = 'active'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(live, vec![kept.clone()], "the one stored first stays");
    assert_eq!(
        app.stripe_get(&format!("/v1/subscriptions/{extra}")).await["status"],
        "canceled"
    );
    // Its payment went back in full.
    let invoice = app.stripe_get(&format!("/v1/subscriptions/{extra}")).await["latest_invoice"]
        .as_str()
        .unwrap()
        .to_owned();
    let charge = charge_of(&app, &invoice_payment_intent(&app, &invoice).await).await;
    assert_eq!(charge["amount"], 59_900);
    assert_eq!(charge["amount_refunded"], 59_900, "{charge}");
    assert_eq!(app.snapshot("tabs").await["plan"], "premium");
    assert_eq!(
        app.stripe_get(&format!("/v1/subscriptions/{kept}")).await["status"],
        "active"
    );
    // Nothing of the duplicate is billed as usage.
    let billed = count(
        &app,
        "SELECT COALESCE(SUM(units), 0)::BIGINT FROM overage_charges WHERE customer_id = 'tabs'",
    )
    .await;
    assert_eq!(billed, 0);
    assert_eq!(
        app.state
            .metrics
            .purchases_refunded
            .with_label_values(&["duplicate_subscription"])
            .get(),
        1,
        "one payment went back"
    );
}

#[tokio::test]
async fn a_credit_pack_paid_after_subscribing_is_refunded_and_the_plan_kept() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    // Opened while on Free, paid after subscribing to the fixed fee.
    let pack = app
        .checkout("late-pack", &checkout_body("premium", "credit_burndown"))
        .await;
    app.subscribe_via_checkout("late-pack", "premium").await;
    app.pay(&pack).await;
    app.eventually(
        "the pack recorded as refunded",
        "SELECT count(*) = 1 FROM billing_credits
         WHERE customer_id = 'late-pack' AND closed_reason = 'refund'",
    )
    .await;
    let snapshot = app.snapshot("late-pack").await;
    assert_eq!(snapshot["billing_model"], "fixed_fee", "{snapshot}");
    assert_eq!(snapshot["plan"], "premium");
    assert_eq!(snapshot["included_units"], 100);
    let session = app
        .stripe_get(&format!("/v1/checkout/sessions/{pack}"))
        .await;
    let charge = charge_of(&app, session["payment_intent"].as_str().unwrap()).await;
    assert!(charge["amount"].as_i64().unwrap() > 0);
    assert_eq!(charge["amount_refunded"], charge["amount"], "{charge}");
    let live = count(
        &app,
        "SELECT count(*) FROM subscriptions WHERE customer_id = 'late-pack' AND status = 'active'",
    )
    .await;
    assert_eq!(live, 1, "still exactly the fixed-fee subscription");
}

#[tokio::test]
async fn a_pack_refunded_in_the_dashboard_before_tollgate_refunds_it_is_recorded_not_retried_for_ever()
 {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    // Until released, recording the pack as refunded fails: the event waits for a retry.
    for statement in [
        "CREATE SEQUENCE held_count",
        "CREATE TABLE held_released ()",
        "CREATE FUNCTION hold_refund() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.closed_reason = 'refund' AND NOT EXISTS (SELECT 1 FROM held_released) THEN
                 PERFORM nextval('held_count');
                 RAISE EXCEPTION 'held';
             END IF;
             RETURN NEW;
         END $$",
        "CREATE TRIGGER hold_refund BEFORE INSERT ON billing_credits
         FOR EACH ROW EXECUTE FUNCTION hold_refund()",
    ] {
        sqlx::query(statement).execute(&app.pool).await.unwrap();
    }
    let pack = app
        .checkout("dash-refund", &checkout_body("premium", "credit_burndown"))
        .await;
    app.subscribe_via_checkout("dash-refund", "premium").await;
    app.pay(&pack).await;
    app.eventually("the pack's event held", "SELECT is_called FROM held_count")
        .await;
    // Meanwhile someone refunds it in the Dashboard (or tollgate's own refund key has
    // expired after 24 h): Stripe answers the retry `charge_already_refunded`.
    let session = app
        .stripe_get(&format!("/v1/checkout/sessions/{pack}"))
        .await;
    let intent = session["payment_intent"].as_str().unwrap().to_owned();
    app.stripe_post("/v1/refunds", &[("payment_intent", intent.as_str())])
        .await;
    sqlx::query("INSERT INTO held_released DEFAULT VALUES")
        .execute(&app.pool)
        .await
        .unwrap();
    app.eventually(
        "the pack recorded as refunded",
        "SELECT count(*) = 1 FROM billing_credits
         WHERE customer_id = 'dash-refund' AND closed_reason = 'refund'",
    )
    .await;
    app.eventually(
        "the event applied",
        "SELECT count(*) = 0 FROM stripe_events WHERE applied_at IS NULL
         AND event_type = 'checkout.session.completed'",
    )
    .await;
    let charge = charge_of(&app, &intent).await;
    assert_eq!(charge["amount_refunded"], charge["amount"], "{charge}");
    assert_eq!(
        app.state
            .metrics
            .purchases_refunded
            .with_label_values(&["credits_on_fixed_fee"])
            .get(),
        0,
        "tollgate refunded nothing itself"
    );
    assert_eq!(
        app.snapshot("dash-refund").await["billing_model"],
        "fixed_fee"
    );
}

#[tokio::test]
async fn switching_to_credits_turns_the_unused_fee_into_credits_not_a_stranded_balance() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let sub = app.subscribe_via_checkout("convert", "premium").await;
    let item =
        app.stripe_get(&format!("/v1/subscriptions/{sub}")).await["items"]["data"][0].clone();
    let (start, end) = (
        item["current_period_start"].as_i64().unwrap(),
        item["current_period_end"].as_i64().unwrap(),
    );
    let before = now();
    let r = app
        .call_as(
            "convert",
            Method::PATCH,
            "/api/v1/billing/subscriptions",
            Some(json!({"billing_model": "credit_burndown"})),
        )
        .await;
    let after = now();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let credited = Decimal::from_str(body["unused_fee_credited"].as_str().unwrap()).unwrap();
    // Written from the pricing rule: $199 × remaining / period, half-up to the cent, for
    // the instant of the switch.
    let expected = |t: i64| {
        let n = 19_900_i128 * i128::from(end - t.clamp(start, end));
        let d = i128::from(end - start);
        Decimal::new(((2 * n + d) / (2 * d)) as i64, 2)
    };
    assert!(
        expected(after) <= credited && credited <= expected(before),
        "{credited} not within {}..{}",
        expected(after),
        expected(before)
    );
    assert_eq!(body["billing_model"], "credit_burndown");
    // The credit is tollgate credits at Premium's per-ticket price ($1.99), not a Stripe
    // balance only a future invoice would use.
    let credits = app.get_as("convert", "/api/v1/billing/credits").await;
    let grant = &credits["grants"][0];
    assert_eq!(grant["credit_amount"], credited.to_string());
    assert_eq!(grant["closed_at"], Value::Null);
    let units = (credited / Decimal::from_str("1.99").unwrap()).floor();
    assert_eq!(
        credits["units_remaining"],
        json!(units.to_string().parse::<u64>().unwrap())
    );
    for invoice in app
        .stripe_get(&format!("/v1/invoices?subscription={sub}&limit=100"))
        .await["data"]
        .as_array()
        .unwrap()
    {
        assert!(
            invoice["total"].as_i64().unwrap() >= 0,
            "no credit left in Stripe: {invoice}"
        );
    }
    // Asking again credits nothing twice.
    let again = app
        .call_as(
            "convert",
            Method::PATCH,
            "/api/v1/billing/subscriptions",
            Some(json!({"billing_model": "credit_burndown"})),
        )
        .await;
    assert_eq!(again.status(), 422);
    let grants = count(
        &app,
        "SELECT count(*) FROM billing_credits WHERE customer_id = 'convert'",
    )
    .await;
    assert_eq!(grants, 1);
}

/// Issue 14 (3): the unused fee is what the customer paid for the rest of the period,
/// not the list fee's share. A subscription on a price the company negotiated ($99.00 a
/// month for Premium, made in the Dashboard) switched to credits half way through is worth
/// half of $99.00: what Stripe debited, and what Stripe itself would credit.
#[tokio::test]
async fn switching_to_credits_from_a_negotiated_price_credits_what_was_paid_not_the_list_fee() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let clock = app.customer_on_clock("negotiated", now()).await;
    let stripe_customer: String = sqlx::query_scalar(
        "SELECT stripe_customer_id FROM customers WHERE customer_id = 'negotiated'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let price = app
        .stripe_post(
            "/v1/prices",
            &[
                ("currency", "usd"),
                ("unit_amount", "9900"),
                ("recurring[interval]", "month"),
                ("product_data[name]", "Premium (negotiated)"),
                ("metadata[tollgate_plan]", "premium"),
            ],
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sub = app
        .stripe_post(
            "/v1/subscriptions",
            &[
                ("customer", stripe_customer.as_str()),
                ("items[0][price]", price.as_str()),
                ("default_payment_method", "pm_card_visa"),
            ],
        )
        .await;
    assert_eq!(sub["status"], "active", "{sub}");
    let item = &sub["items"]["data"][0];
    let (start, end) = (
        item["current_period_start"].as_i64().unwrap(),
        item["current_period_end"].as_i64().unwrap(),
    );
    app.eventually(
        "the negotiated subscription stored as Premium",
        "SELECT bool_or(status = 'active' AND plan_type = 'premium') FROM subscriptions
         WHERE customer_id = 'negotiated'",
    )
    .await;
    let half = start + (end - start) / 2;
    app.advance(&clock, half).await;
    let r = app
        .call_as(
            "negotiated",
            Method::PATCH,
            "/api/v1/billing/subscriptions",
            Some(json!({"billing_model": "credit_burndown"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    // $99.00 × remaining / period at the clock's instant, half-up to the cent: written
    // from the pricing rule, not read from Stripe. The list fee would give $99.50.
    let n = 9_900_i128 * i128::from(end - half);
    let d = i128::from(end - start);
    let expected = Decimal::new(((2 * n + d) / (2 * d)) as i64, 2);
    assert_eq!(
        Decimal::from_str(body["unused_fee_credited"].as_str().unwrap()).unwrap(),
        expected,
        "{body}"
    );
    let credits = app.get_as("negotiated", "/api/v1/billing/credits").await;
    assert_eq!(credits["grants"][0]["credit_amount"], expected.to_string());
}

#[tokio::test]
async fn switching_to_credits_before_the_renewal_is_collected_credits_nothing() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let clock = app.customer_on_clock("early", now()).await;
    app.subscribe_via_checkout("early", "premium").await;
    let end: time::OffsetDateTime = sqlx::query_scalar(
        "SELECT current_period_end FROM subscriptions WHERE customer_id = 'early'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // The period renews: its invoice is a draft for an hour, not yet paid.
    app.advance(&clock, end.unix_timestamp() + 60).await;
    app.eventually(
        "the new period",
        &format!(
            "SELECT current_period_start = to_timestamp({}) FROM subscriptions
             WHERE customer_id = 'early'",
            end.unix_timestamp()
        ),
    )
    .await;
    let r = app
        .call_as(
            "early",
            Method::PATCH,
            "/api/v1/billing/subscriptions",
            Some(json!({"billing_model": "credit_burndown"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["unused_fee_credited"],
        Value::Null,
        "a period not paid for is worth nothing: {body}"
    );
    let grants = count(
        &app,
        "SELECT count(*) FROM billing_credits WHERE customer_id = 'early'",
    )
    .await;
    assert_eq!(grants, 0);
}

fn premium(app: &TestApp) -> billing_model::Plan {
    app.state
        .catalog
        .get(&billing_model::PlanId::parse("premium").unwrap())
        .unwrap()
        .clone()
}

/// Cancels `sub` on the stand-in as a request would (DELETE, with `form`).
async fn stripe_cancel(app: &TestApp, sub: &str, form: &[(&str, &str)]) {
    let base = &app.stripe.as_ref().unwrap().url;
    let r = app
        .http
        .delete(format!("{base}/v1/subscriptions/{sub}"))
        .bearer_auth(crate::helpers::STRIPE_KEY)
        .form(form)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn a_switch_to_credits_cut_off_after_stripe_cancelled_still_grants_the_unused_fee() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let sub = app.subscribe_via_checkout("cutoff", "premium").await;
    let premium = premium(&app);
    let customer = billing_model::CustomerId::parse("cutoff").unwrap();
    // The request recorded its intent and Stripe cancelled, then the process died before
    // anything else was written: only the cancellation's webhook is left to finish it.
    tollgate_control_plane::switches::record(
        &app.pool,
        &customer,
        &sub,
        &premium,
        Some(billing_model::Money::from_cents(12_345)),
    )
    .await
    .unwrap();
    stripe_cancel(
        &app,
        &sub,
        &[
            ("invoice_now", "true"),
            ("prorate", "false"),
            (
                "cancellation_details[comment]",
                tollgate_control_plane::switches::CANCEL_COMMENT,
            ),
        ],
    )
    .await;
    app.eventually(
        "the switch completed by the webhook",
        &format!(
            "SELECT count(*) = 1 FROM billing_credits WHERE converted_from_subscription = '{sub}'
               AND credit_amount = 123.45 AND closed_at IS NULL"
        ),
    )
    .await;
    let usage = app.get_as("cutoff", "/api/v1/billing/usage").await;
    assert_eq!(usage["billing_model"], "credit_burndown", "{usage}");
    assert_eq!(usage["credit_balance"], "123.45");
    // 123.45 / 1.99: 62 whole tickets.
    assert_eq!(usage["credit_units_remaining"], 62);
    // Stored again (a redelivery, reconciliation): granted once.
    tollgate_control_plane::webhooks::sync_subscription_now(&app.state, &sub)
        .await
        .unwrap();
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM billing_credits WHERE customer_id = 'cutoff'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_switch_to_credits_that_never_reached_stripe_grants_nothing_when_the_customer_cancels_instead()
 {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let sub = app.subscribe_via_checkout("changed-mind", "premium").await;
    let premium = premium(&app);
    // The intent was recorded, then the request died before Stripe was asked.
    tollgate_control_plane::switches::record(
        &app.pool,
        &billing_model::CustomerId::parse("changed-mind").unwrap(),
        &sub,
        &premium,
        Some(billing_model::Money::from_cents(10_000)),
    )
    .await
    .unwrap();
    // The customer cancels instead: that cancellation is not a switch.
    let r = app
        .call_as(
            "changed-mind",
            Method::DELETE,
            "/api/v1/billing/subscriptions?immediately=true",
            None,
        )
        .await;
    assert!(r.status().is_success());
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM billing_credits WHERE customer_id = 'changed-mind'"
        )
        .await,
        0
    );
    assert_eq!(
        app.get_as("changed-mind", "/api/v1/billing/usage").await["plan"],
        "free"
    );
}
