//! Behaviour of 2026 Stripe that an older stand-in got wrong and tollgate depends on:
//! where Checkout keeps the card, what a declined subscription Checkout leaves behind,
//! and how flexible billing mode credits unused time.

use crate::catalog::{JAN_31, create_plans, customer_on_clock, subscribe_through_checkout};
use crate::helpers::spawn_app;
use serde_json::Value;
use stripe_billing::test_helpers_test_clock::AdvanceTestHelpersTestClock;

const DAY: i64 = 86_400;

#[tokio::test]
async fn checkout_keeps_the_card_on_the_subscription_and_defaults_to_flexible() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (_, customer) = customer_on_clock(&app, JAN_31, "card@example.com").await;
    let sub = subscribe_through_checkout(&app, &customer, plans.basic.id.as_str()).await;

    let (_, sub) = app.get(&format!("/v1/subscriptions/{sub}")).await;
    let pm = sub["default_payment_method"]
        .as_str()
        .expect("the subscription holds the card");
    assert_eq!(sub["billing_mode"]["type"], "flexible");
    let (_, cus) = app.get(&format!("/v1/customers/{customer}")).await;
    assert_eq!(
        cus["invoice_settings"]["default_payment_method"],
        Value::Null,
        "Checkout does not make the card the customer's default"
    );
    let (_, card) = app.get(&format!("/v1/payment_methods/{pm}")).await;
    assert_eq!(card["customer"], customer.as_str(), "but attaches it");

    // A credit pack (payment mode) does not save the card unless asked to.
    let (_, one_off) = app
        .post(
            "/v1/prices",
            &[
                ("product", "prod_basic"),
                ("unit_amount", "500"),
                ("currency", "usd"),
            ],
        )
        .await;
    let (status, session) = app
        .post(
            "/v1/checkout/sessions",
            &[
                ("mode", "payment"),
                ("customer", customer.as_str()),
                ("line_items[0][price]", one_off["id"].as_str().unwrap()),
                ("success_url", "https://app.example/ok"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{session}");
    let (_, done) = app
        .post(
            &format!(
                "/v1/test_helpers/checkout/sessions/{}/complete",
                session["id"].as_str().unwrap()
            ),
            &[],
        )
        .await;
    let (_, pi) = app
        .get(&format!(
            "/v1/payment_intents/{}",
            done["payment_intent"].as_str().unwrap()
        ))
        .await;
    let (_, card) = app
        .get(&format!(
            "/v1/payment_methods/{}",
            pi["payment_method"].as_str().unwrap()
        ))
        .await;
    assert_eq!(card["customer"], Value::Null);
}

#[tokio::test]
async fn a_declined_card_on_subscription_checkout_leaves_nothing_behind() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (_, customer) = customer_on_clock(&app, JAN_31, "declined@example.com").await;
    let (_, session) = app
        .post(
            "/v1/checkout/sessions",
            &[
                ("mode", "subscription"),
                ("customer", customer.as_str()),
                ("line_items[0][price]", plans.basic.id.as_str()),
                ("success_url", "https://app.example/ok"),
            ],
        )
        .await;
    let id = session["id"].as_str().unwrap();
    let (status, failed) = app
        .post(
            &format!("/v1/test_helpers/checkout/sessions/{id}/complete"),
            &[("payment", "fail")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        failed["status"], "open",
        "the customer may try another card"
    );
    assert_eq!(failed["subscription"], Value::Null);
    let (_, subs) = app
        .get(&format!("/v1/subscriptions?customer={customer}&status=all"))
        .await;
    assert_eq!(subs["data"].as_array().unwrap().len(), 0, "{subs}");
    let (_, invoices) = app.get(&format!("/v1/invoices?customer={customer}")).await;
    assert_eq!(invoices["data"].as_array().unwrap().len(), 0, "{invoices}");

    // Another card succeeds on the same session.
    let (_, paid) = app
        .post(
            &format!("/v1/test_helpers/checkout/sessions/{id}/complete"),
            &[],
        )
        .await;
    assert_eq!(paid["status"], "complete");
}

/// A Pro subscription of `customer` paid with a card, in `mode` (Stripe's default when
/// `None`).
async fn pro_subscription(
    app: &crate::helpers::TestApp,
    plans: &crate::catalog::Plans,
    customer: &str,
    mode: Option<&str>,
) -> Value {
    let mut form = vec![
        ("customer", customer),
        ("items[0][price]", plans.pro.id.as_str()),
        ("default_payment_method", "pm_card_visa"),
    ];
    if let Some(mode) = mode {
        form.push(("billing_mode[type]", mode));
    }
    let (status, sub) = app.post("/v1/subscriptions", &form).await;
    assert_eq!(status, 200, "{sub}");
    sub
}

/// Moves `sub`'s item to Basic ($10) without proration: what was debited stays Pro's.
async fn move_to_basic_without_proration(
    app: &crate::helpers::TestApp,
    plans: &crate::catalog::Plans,
    sub: &Value,
) {
    let id = sub["id"].as_str().unwrap();
    let item = sub["items"]["data"][0]["id"].as_str().unwrap();
    let (status, _) = app
        .post(
            &format!("/v1/subscriptions/{id}"),
            &[
                ("items[0][id]", item),
                ("items[0][price]", plans.basic.id.as_str()),
                ("proration_behavior", "none"),
            ],
        )
        .await;
    assert_eq!(status, 200);
}

/// Pro ($20) is paid for the period, the price moves to Basic ($10) without proration,
/// and halfway through the period back to Pro with an invoice now: the proration lines.
async fn moved_down_then_up(mode: &str) -> Vec<i64> {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (clock, customer) = customer_on_clock(&app, JAN_31, &format!("{mode}@example.com")).await;
    let sub = pro_subscription(&app, &plans, &customer, Some(mode)).await;
    assert_eq!(sub["billing_mode"]["type"], mode);
    let id = sub["id"].as_str().unwrap();
    let item = sub["items"]["data"][0]["id"].as_str().unwrap();
    move_to_basic_without_proration(&app, &plans, &sub).await;
    // Jan 31 → Feb 28 is 28 days: day 14 is half-way.
    AdvanceTestHelpersTestClock::new(clock.as_str(), JAN_31 + 14 * DAY)
        .send(&app.client)
        .await
        .unwrap();
    let (status, up) = app
        .post(
            &format!("/v1/subscriptions/{id}"),
            &[
                ("items[0][id]", item),
                ("items[0][price]", plans.pro.id.as_str()),
                ("proration_behavior", "always_invoice"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{up}");
    let (_, invoice) = app
        .get(&format!(
            "/v1/invoices/{}",
            up["latest_invoice"].as_str().unwrap()
        ))
        .await;
    let mut amounts: Vec<i64> = invoice["lines"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["amount"].as_i64().unwrap())
        .collect();
    amounts.sort();
    amounts
}

#[tokio::test]
async fn flexible_mode_credits_what_was_debited_classic_the_current_price() {
    // Flexible: the unused half of the $20 that was paid comes back, so going back to
    // the plan already paid for costs nothing.
    assert_eq!(moved_down_then_up("flexible").await, vec![-1000, 1000]);
    // Classic: credits the unused half of the current ($10) price.
    assert_eq!(moved_down_then_up("classic").await, vec![-500, 1000]);
}

/// A cancel-now preview: one "Unused time" credit per item at `proration_date`, from what
/// was debited in flexible mode (the $20 paid, though the price moved to $10 without
/// proration), and no renewal line; nothing changes.
#[tokio::test]
async fn a_cancel_now_preview_credits_the_unused_time_of_what_was_debited() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (clock, customer) = customer_on_clock(&app, JAN_31, "cancel-preview@example.com").await;
    let sub = pro_subscription(&app, &plans, &customer, None).await;
    let id = sub["id"].as_str().unwrap();
    move_to_basic_without_proration(&app, &plans, &sub).await;
    // Jan 31 → Feb 28 is 28 days: day 14 is half-way. The preview prorates at the
    // clock's now (Stripe takes `proration_date` only with item or trial changes).
    AdvanceTestHelpersTestClock::new(clock.as_str(), JAN_31 + 14 * DAY)
        .send(&app.client)
        .await
        .unwrap();
    let half = (JAN_31 + 14 * DAY).to_string();
    let (status, refused) = app
        .post(
            "/v1/invoices/create_preview",
            &[
                ("subscription", id),
                ("subscription_details[cancel_now]", "true"),
                ("subscription_details[proration_date]", half.as_str()),
            ],
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    let (status, preview) = app
        .post(
            "/v1/invoices/create_preview",
            &[
                ("subscription", id),
                ("subscription_details[cancel_now]", "true"),
                (
                    "subscription_details[proration_behavior]",
                    "create_prorations",
                ),
            ],
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    let lines = preview["lines"]["data"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{preview}");
    assert_eq!(lines[0]["amount"], -1000);
    assert_eq!(
        lines[0]["parent"]["subscription_item_details"]["proration"],
        true
    );
    let (_, after) = app.get(&format!("/v1/subscriptions/{id}")).await;
    assert_eq!(after["status"], "active", "a preview changes nothing");
    let (status, err) = app
        .post(
            "/v1/invoices/create_preview",
            &[
                ("subscription", id),
                ("subscription_details[cancel_now]", "true"),
                ("subscription_details[cancel_at_period_end]", "true"),
            ],
        )
        .await;
    assert_eq!(status, 400, "{err}");
}

/// Cancelling with `invoice_now` invoices the subscription's pending prorations; another
/// pending item (a usage charge waiting for the next invoice) stays pending, as Stripe
/// documents, for whoever invoices the customer next.
#[tokio::test]
async fn invoice_now_on_cancel_takes_the_prorations_and_leaves_other_pending_items() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (_clock, customer) = customer_on_clock(&app, JAN_31, "invoice-now@example.com").await;
    let sub = pro_subscription(&app, &plans, &customer, None).await;
    let id = sub["id"].as_str().unwrap();
    let (status, item) = app
        .post(
            "/v1/invoiceitems",
            &[
                ("customer", customer.as_str()),
                ("subscription", id),
                ("amount", "995"),
                ("currency", "usd"),
                ("description", "late usage"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{item}");
    let cancelled = stripe_billing::subscription::CancelSubscription::new(id)
        .invoice_now(true)
        .prorate(true)
        .send(&app.client)
        .await
        .unwrap();
    let (_, item) = app
        .get(&format!(
            "/v1/invoiceitems/{}",
            item["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        item["invoice"],
        serde_json::Value::Null,
        "still pending: {item}"
    );
    let latest = cancelled.latest_invoice.as_ref().expect("a final invoice");
    let (_, last) = app
        .get(&format!(
            "/v1/invoices/{}",
            crate::helpers::invoice_id(latest)
        ))
        .await;
    let lines = last["lines"]["data"].as_array().unwrap();
    assert!(
        !lines.is_empty()
            && lines
                .iter()
                .all(|l| l["parent"]["invoice_item_details"]["proration"] == true
                    || l["parent"]["subscription_item_details"]["proration"] == true),
        "only prorations on the final invoice: {last}"
    );
}
