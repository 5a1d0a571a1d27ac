//! Signed webhooks: every event type the stand-in emits is verified and parsed by
//! async-stripe-webhook; delivery controls duplicate, drop, hold and release events.

use std::collections::{BTreeSet, HashMap};

use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_billing::invoice_item::CreateInvoiceItem;
use stripe_billing::subscription::{
    CancelSubscription, UpdateSubscription, UpdateSubscriptionItems,
    UpdateSubscriptionProrationBehavior,
};
use stripe_billing::test_helpers_test_clock::AdvanceTestHelpersTestClock;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionPaymentIntentData,
};
use stripe_core::customer::{CreateCustomer, UpdateCustomer};
use stripe_core::refund::CreateRefund;
use stripe_product::price::CreatePrice;
use stripe_shared::CheckoutSessionMode;

use crate::catalog::{JAN_31, create_plans, customer_on_clock, subscribe_through_checkout};
use crate::helpers::{invoice_id, spawn_app};

const EXPECTED: &[&str] = &[
    "customer.created",
    "customer.updated",
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.created",
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "invoiceitem.created",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "charge.succeeded",
    "charge.failed",
    "charge.refunded",
    "refund.created",
    "product.created",
    "price.created",
    "test_helpers.test_clock.ready",
];

#[tokio::test]
async fn every_event_arrives_signed_and_parses_into_its_object() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (clock, customer) = customer_on_clock(&app, JAN_31, "events@example.com").await;
    let sub_id = subscribe_through_checkout(&app, &customer, plans.basic.id.as_str()).await;
    UpdateCustomer::new(customer.as_str())
        .metadata(HashMap::from([("tier".to_string(), "gold".to_string())]))
        .send(&app.client)
        .await
        .unwrap();
    let sub = stripe_billing::subscription::RetrieveSubscription::new(sub_id.as_str())
        .send(&app.client)
        .await
        .unwrap();
    UpdateSubscription::new(sub_id.as_str())
        .items(vec![UpdateSubscriptionItems {
            id: Some(sub.items.data[0].id.as_str().to_string()),
            price: Some(plans.pro.id.as_str().to_string()),
            ..UpdateSubscriptionItems::new()
        }])
        .proration_behavior(UpdateSubscriptionProrationBehavior::AlwaysInvoice)
        .send(&app.client)
        .await
        .unwrap();
    CreateInvoiceItem::new()
        .customer(customer.as_str())
        .amount(300)
        .currency(stripe_types::Currency::USD)
        .description("Overage")
        .send(&app.client)
        .await
        .unwrap();
    CreateBillingPortalSession::new()
        .customer(customer.as_str())
        .return_url("https://app.example/account")
        .send(&app.client)
        .await
        .unwrap();

    // a renewal that fails, then one that needs customer action
    app.post(
        &format!("/v1/test_helpers/customers/{customer}/fail_payments"),
        &[("fail", "true")],
    )
    .await;
    AdvanceTestHelpersTestClock::new(clock.as_str(), JAN_31 + 29 * 86_400)
        .send(&app.client)
        .await
        .unwrap();
    app.post(
        &format!("/v1/test_helpers/customers/{customer}/fail_payments"),
        &[("fail", "action_required")],
    )
    .await;
    let (status, body) = app
        .post(
            &format!(
                "/v1/invoices/{}/pay",
                sub_latest_invoice(&app, &sub_id).await
            ),
            &[],
        )
        .await;
    assert_eq!(status, 402, "{body}");
    CancelSubscription::new(sub_id.as_str())
        .send(&app.client)
        .await
        .unwrap();

    // a one-off payment through Checkout, refunded in part
    let one_off = CreatePrice::new(stripe_types::Currency::USD)
        .product("prod_pro")
        .unit_amount(5000)
        .send(&app.client)
        .await
        .unwrap();
    let payer = CreateCustomer::new()
        .email("payer@example.com")
        .send(&app.client)
        .await
        .unwrap();
    let session = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Payment)
        .customer(payer.id.as_str())
        .line_items(vec![CreateCheckoutSessionLineItems {
            price: Some(one_off.id.as_str().to_string()),
            quantity: Some(2),
            ..CreateCheckoutSessionLineItems::new()
        }])
        .payment_intent_data(CreateCheckoutSessionPaymentIntentData {
            metadata: Some(HashMap::from([("credits".to_string(), "1000".to_string())])),
            ..CreateCheckoutSessionPaymentIntentData::new()
        })
        .success_url("https://app.example/ok")
        .send(&app.client)
        .await
        .unwrap();
    let (status, done) = app
        .post(
            &format!(
                "/v1/test_helpers/checkout/sessions/{}/complete",
                session.id.as_str()
            ),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(done["payment_status"], "paid");
    assert_eq!(done["amount_total"], 10_000);
    let pi = done["payment_intent"].as_str().unwrap().to_string();
    let refund = CreateRefund::new()
        .payment_intent(pi.as_str())
        .amount(2500)
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(refund.amount, 2500);
    let (_, failed_checkout) = {
        let s = CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Payment)
            .customer(payer.id.as_str())
            .line_items(vec![CreateCheckoutSessionLineItems {
                price: Some(one_off.id.as_str().to_string()),
                ..CreateCheckoutSessionLineItems::new()
            }])
            .send(&app.client)
            .await
            .unwrap();
        app.post(
            &format!(
                "/v1/test_helpers/checkout/sessions/{}/complete",
                s.id.as_str()
            ),
            &[("payment", "fail")],
        )
        .await
    };
    assert_eq!(failed_checkout["status"], "open");

    app.webhooks_settled().await;
    assert!(
        app.rejected().is_empty(),
        "every delivery verified and parsed: {:?}",
        app.rejected()
    );
    let received = app.received();
    let unknown: Vec<&str> = received
        .iter()
        .filter(|e| e.unknown)
        .map(|e| e.kind.as_str())
        .collect();
    assert!(unknown.is_empty(), "parsed as Unknown: {unknown:?}");
    let kinds: BTreeSet<&str> = received.iter().map(|e| e.kind.as_str()).collect();
    let missing: Vec<&&str> = EXPECTED.iter().filter(|k| !kinds.contains(**k)).collect();
    assert!(
        missing.is_empty(),
        "never delivered: {missing:?}; got {kinds:?}"
    );

    // the event log lists the same events
    let (_, events) = app.get("/v1/events?limit=100&type=invoice.*").await;
    assert!(
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"].as_str().unwrap().starts_with("invoice."))
    );
}

async fn sub_latest_invoice(app: &crate::helpers::TestApp, sub: &str) -> String {
    let s = stripe_billing::subscription::RetrieveSubscription::new(sub)
        .send(&app.client)
        .await
        .unwrap();
    invoice_id(s.latest_invoice.as_ref().unwrap())
}

#[tokio::test]
async fn delivery_controls_duplicate_drop_and_hold_events() {
    let app = spawn_app().await;
    let ids_of = |app: &crate::helpers::TestApp| {
        app.received().into_iter().map(|e| e.id).collect::<Vec<_>>()
    };

    app.post("/v1/test_helpers/webhooks/config", &[("duplicate", "true")])
        .await;
    CreateCustomer::new()
        .email("twice@example.com")
        .send(&app.client)
        .await
        .unwrap();
    app.webhooks_settled().await;
    let ids = ids_of(&app);
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "the same event, delivered twice");

    app.post(
        "/v1/test_helpers/webhooks/config",
        &[("duplicate", "false"), ("drop_next", "1")],
    )
    .await;
    CreateCustomer::new()
        .email("lost@example.com")
        .send(&app.client)
        .await
        .unwrap();
    app.webhooks_settled().await;
    assert_eq!(ids_of(&app).len(), 2, "the dropped event never arrives");

    app.post("/v1/test_helpers/webhooks/config", &[("paused", "true")])
        .await;
    CreateCustomer::new()
        .email("held@example.com")
        .send(&app.client)
        .await
        .unwrap();
    app.webhooks_settled().await;
    assert_eq!(ids_of(&app).len(), 2, "held while paused");
    let (_, config) = app
        .post("/v1/test_helpers/webhooks/config", &[("paused", "false")])
        .await;
    assert_eq!(config["paused"], false);
    app.webhooks_settled().await;
    assert_eq!(ids_of(&app).len(), 3, "released on resume");

    // reordered: all arrive, each once, in whatever order the random delays give
    app.post("/v1/test_helpers/webhooks/config", &[("reorder", "true")])
        .await;
    for i in 0..6 {
        CreateCustomer::new()
            .email(format!("shuffled{i}@example.com"))
            .send(&app.client)
            .await
            .unwrap();
    }
    app.webhooks_settled().await;
    let ids = ids_of(&app);
    assert_eq!(ids.len(), 9);
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        8,
        "one duplicate from the first step only"
    );
    app.post("/v1/test_helpers/webhooks/config", &[("reorder", "false")])
        .await;

    let (_, log) = app.get("/v1/test_helpers/webhooks/deliveries").await;
    let outcomes: Vec<&str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.contains(&"dropped")
            && outcomes.contains(&"held")
            && outcomes.contains(&"delivered")
    );
}

#[tokio::test]
async fn failed_deliveries_are_retried_until_the_receiver_answers() {
    // nothing listens at first: attempts fail, then a receiver appears on that port
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let app = spawn_app_with_url(format!("http://{addr}/late")).await;
    CreateCustomer::new()
        .email("retry@example.com")
        .send(&app.client)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let inbox = std::sync::Arc::new(std::sync::Mutex::new(0usize));
    let counter = inbox.clone();
    let late = axum::Router::new().route(
        "/late",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                *counter.lock().unwrap() += 1;
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, late).await.unwrap() });
    app.webhooks_settled().await;
    assert_eq!(*inbox.lock().unwrap(), 1);
    let (_, log) = app.get("/v1/test_helpers/webhooks/deliveries").await;
    let attempts: Vec<u64> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["attempt"].as_u64().unwrap())
        .collect();
    assert!(
        attempts.len() >= 2 && *attempts.last().unwrap() >= 2,
        "{log}"
    );
}

async fn spawn_app_with_url(url: String) -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(|c| c.webhook_url = Some(url)).await
}
