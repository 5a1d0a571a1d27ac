//! Lists, filters and expansion as async-stripe sends them.

use std::collections::HashMap;

use stripe_billing::invoice_item::{CreateInvoiceItem, DeleteInvoiceItem, ListInvoiceItem};
use stripe_billing::subscription::{ListSubscription, RetrieveSubscription};
use stripe_core::customer::UpdateCustomer;
use stripe_types::RangeQueryTs;

use crate::catalog::{JAN_31, create_plans, customer_on_clock, subscribe_through_checkout};
use crate::helpers::spawn_app;

#[tokio::test]
async fn subscriptions_list_by_customer_and_created_with_items_expanded() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (_, customer) = customer_on_clock(&app, JAN_31, "list@example.com").await;
    let sub_id = subscribe_through_checkout(&app, &customer, plans.basic.id.as_str()).await;

    let page = ListSubscription::new()
        .customer(customer.as_str())
        .created(RangeQueryTs::gte(JAN_31))
        .expand(vec![
            "data.items".to_string(),
            "data.latest_invoice".to_string(),
        ])
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(page.data.len(), 1);
    assert_eq!(page.data[0].id.as_str(), sub_id);
    assert_eq!(page.data[0].items.data.len(), 1);
    assert!(
        matches!(
            page.data[0].latest_invoice,
            Some(stripe_types::Expandable::Object(_))
        ),
        "expand[]=data.latest_invoice gives the object"
    );
    let later = ListSubscription::new()
        .customer(customer.as_str())
        .created(RangeQueryTs::gt(JAN_31))
        .send(&app.client)
        .await
        .unwrap();
    assert!(later.data.is_empty());

    let expanded = RetrieveSubscription::new(sub_id.as_str())
        .expand(vec!["customer".to_string()])
        .send(&app.client)
        .await
        .unwrap();
    assert!(matches!(
        expanded.customer,
        stripe_types::Expandable::Object(_)
    ));
}

#[tokio::test]
async fn pending_invoice_items_list_and_delete() {
    let app = spawn_app().await;
    let (_, customer) = customer_on_clock(&app, JAN_31, "items@example.com").await;
    let item = CreateInvoiceItem::new()
        .customer(customer.as_str())
        .amount(700)
        .currency(stripe_types::Currency::USD)
        .description("Setup fee")
        .send(&app.client)
        .await
        .unwrap();
    assert!(item.invoice.is_none(), "pending until the next invoice");
    let pending = ListInvoiceItem::new()
        .customer(customer.as_str())
        .pending(true)
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(pending.data.len(), 1);
    let deleted = DeleteInvoiceItem::new(item.id.as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(deleted.id, item.id);
    let pending = ListInvoiceItem::new()
        .customer(customer.as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert!(pending.data.is_empty());
}

#[tokio::test]
async fn customer_metadata_can_make_payments_fail() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (_, customer) = customer_on_clock(&app, JAN_31, "flag@example.com").await;
    UpdateCustomer::new(customer.as_str())
        .metadata(HashMap::from([(
            "standin_fail_payments".to_string(),
            "true".to_string(),
        )]))
        .send(&app.client)
        .await
        .unwrap();
    let session = stripe_checkout::checkout_session::CreateCheckoutSession::new()
        .mode(stripe_shared::CheckoutSessionMode::Subscription)
        .customer(customer.as_str())
        .line_items(vec![
            stripe_checkout::checkout_session::CreateCheckoutSessionLineItems {
                price: Some(plans.basic.id.as_str().to_string()),
                ..Default::default()
            },
        ])
        .send(&app.client)
        .await
        .unwrap();
    let (status, body) = app
        .post(
            &format!(
                "/v1/test_helpers/checkout/sessions/{}/complete",
                session.id.as_str()
            ),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "open", "an unpaid Checkout stays open");
    // Since API 2025-03-31 a declined subscription Checkout leaves no subscription.
    let subs = ListSubscription::new()
        .customer(customer.as_str())
        .status(stripe_billing::subscription::ListSubscriptionStatus::All)
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(subs.data.len(), 0);
    // A direct subscription for the same customer is made and its payment fails.
    let sub = stripe_billing::subscription::CreateSubscription::new()
        .customer(customer.as_str())
        .items(vec![
            stripe_billing::subscription::CreateSubscriptionItems {
                price: Some(plans.basic.id.as_str().to_string()),
                ..Default::default()
            },
        ])
        .default_payment_method("pm_card_visa")
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(sub.status.as_str(), "incomplete");
    let (_, events) = app.get("/v1/events?type=invoice.payment_failed").await;
    let event = &events["data"][0];
    assert_eq!(event["data"]["object"]["status"], "open");
    assert!(event["request"]["id"].as_str().unwrap().starts_with("req_"));
    assert_eq!(event["api_version"], "2026-09-30.endive");
}
