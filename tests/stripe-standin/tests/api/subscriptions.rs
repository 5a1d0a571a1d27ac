//! Subscriptions through Checkout, proration, cancellation, renewals on a test clock.

use stripe_billing::invoice::{
    CreatePreviewInvoice, CreatePreviewInvoiceSubscriptionDetails,
    CreatePreviewInvoiceSubscriptionDetailsItems,
    CreatePreviewInvoiceSubscriptionDetailsProrationBehavior, ListInvoice, RetrieveInvoice,
};
use stripe_billing::invoice_item::CreateInvoiceItem;
use stripe_billing::subscription::{
    ListSubscription, RetrieveSubscription, UpdateSubscription, UpdateSubscriptionItems,
    UpdateSubscriptionProrationBehavior,
};
use stripe_billing::test_helpers_test_clock::{
    AdvanceTestHelpersTestClock, RetrieveTestHelpersTestClock,
};
use stripe_shared::Invoice;

use crate::catalog::{JAN_31, create_plans, customer_on_clock, subscribe_through_checkout};
use crate::helpers::{TestApp, invoice_id, spawn_app};

const DAY: i64 = 86_400;
const FEB_28: i64 = JAN_31 + 28 * DAY;
const MAR_31: i64 = FEB_28 + 31 * DAY;

/// Half-up rounding of `amount × remaining / total`, written out for the test.
fn expected_proration(amount: i64, remaining: i64, total: i64) -> i64 {
    let exact = amount as f64 * remaining as f64 / total as f64;
    (exact + 0.5).floor() as i64
}

async fn advance(app: &TestApp, clock: &str, to: i64) {
    let c = AdvanceTestHelpersTestClock::new(clock, to)
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(c.frozen_time, to);
    assert_eq!(c.status.as_str(), "ready");
    let again = RetrieveTestHelpersTestClock::new(clock)
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(again.frozen_time, to);
}

async fn invoices_of(app: &TestApp, sub: &str) -> Vec<Invoice> {
    ListInvoice::new()
        .subscription(sub)
        .limit(100)
        .send(&app.client)
        .await
        .unwrap()
        .data
}

#[tokio::test]
async fn upgrade_with_always_invoice_bills_what_the_preview_showed_to_the_cent() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (clock, customer) = customer_on_clock(&app, JAN_31, "upgrade@example.com").await;
    let sub_id = subscribe_through_checkout(&app, &customer, plans.basic.id.as_str()).await;

    let sub = RetrieveSubscription::new(sub_id.as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(sub.status.as_str(), "active");
    assert_eq!(sub.metadata.get("tenant").map(String::as_str), Some("42"));
    let item = &sub.items.data[0];
    assert_eq!(item.current_period_start, JAN_31);
    assert_eq!(
        item.current_period_end, FEB_28,
        "Jan 31 anchor clamps to Feb 28"
    );
    let first = RetrieveInvoice::new(invoice_id(sub.latest_invoice.as_ref().unwrap()).as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(first.status.as_ref().map(|s| s.as_str()), Some("paid"));
    assert_eq!(
        first.billing_reason.as_ref().map(|s| s.as_str()),
        Some("subscription_create")
    );
    assert_eq!(first.amount_paid, 1000);

    advance(&app, &clock, JAN_31 + 10 * DAY).await;
    let proration_date = JAN_31 + 10 * DAY + 12_345;
    let preview = CreatePreviewInvoice::new()
        .customer(customer.as_str())
        .subscription(sub_id.as_str())
        .subscription_details(CreatePreviewInvoiceSubscriptionDetails {
            items: Some(vec![CreatePreviewInvoiceSubscriptionDetailsItems {
                id: Some(item.id.as_str().to_string()),
                price: Some(plans.pro.id.as_str().to_string()),
                ..CreatePreviewInvoiceSubscriptionDetailsItems::new()
            }]),
            proration_date: Some(proration_date),
            proration_behavior: Some(
                CreatePreviewInvoiceSubscriptionDetailsProrationBehavior::AlwaysInvoice,
            ),
            ..CreatePreviewInvoiceSubscriptionDetails::new()
        })
        .send(&app.client)
        .await
        .unwrap();
    let preview_lines: Vec<(i64, Option<String>)> = preview
        .lines
        .data
        .iter()
        .map(|l| (l.amount, l.description.clone()))
        .collect();

    let updated = UpdateSubscription::new(sub_id.as_str())
        .items(vec![UpdateSubscriptionItems {
            id: Some(item.id.as_str().to_string()),
            price: Some(plans.pro.id.as_str().to_string()),
            ..UpdateSubscriptionItems::new()
        }])
        .proration_behavior(UpdateSubscriptionProrationBehavior::AlwaysInvoice)
        .proration_date(proration_date)
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(updated.items.data[0].price.id, plans.pro.id);
    assert_eq!(
        updated.items.data[0].current_period_end, FEB_28,
        "a price change keeps the period"
    );
    let upgrade_invoice = invoice_id(updated.latest_invoice.as_ref().unwrap());
    let invoice = RetrieveInvoice::new(upgrade_invoice.as_str())
        .send(&app.client)
        .await
        .unwrap();
    let lines: Vec<(i64, Option<String>)> = invoice
        .lines
        .data
        .iter()
        .map(|l| (l.amount, l.description.clone()))
        .collect();

    let (total, remaining) = (FEB_28 - JAN_31, FEB_28 - proration_date);
    let unused = -expected_proration(1000, remaining, total);
    let remaining_pro = expected_proration(2000, remaining, total);
    assert_eq!(
        lines.iter().map(|l| l.0).collect::<Vec<_>>(),
        vec![unused, remaining_pro]
    );
    assert_eq!(
        lines, preview_lines,
        "the preview and the real invoice agree line by line"
    );
    assert!(
        lines[0]
            .1
            .as_deref()
            .unwrap()
            .starts_with("Unused time on Basic")
    );
    assert!(
        lines[1]
            .1
            .as_deref()
            .unwrap()
            .starts_with("Remaining time on Pro")
    );
    assert_eq!(invoice.status.as_ref().map(|s| s.as_str()), Some("paid"));
    assert_eq!(
        invoice.billing_reason.as_ref().map(|s| s.as_str()),
        Some("subscription_update")
    );
    assert_eq!(invoice.amount_paid, unused + remaining_pro);
    assert_eq!(preview.amount_due, invoice.amount_due);
}

#[tokio::test]
async fn create_prorations_leaves_pending_items_that_the_renewal_sweeps_in() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (clock, customer) = customer_on_clock(&app, JAN_31, "prorate@example.com").await;
    let sub_id = subscribe_through_checkout(&app, &customer, plans.basic.id.as_str()).await;
    let sub = RetrieveSubscription::new(sub_id.as_str())
        .send(&app.client)
        .await
        .unwrap();
    let item_id = sub.items.data[0].id.as_str().to_string();
    let t = JAN_31 + 14 * DAY;
    advance(&app, &clock, t).await;
    // the upcoming invoice with the change: prorations, then next month at the new price
    let preview = CreatePreviewInvoice::new()
        .subscription(sub_id.as_str())
        .subscription_details(CreatePreviewInvoiceSubscriptionDetails {
            items: Some(vec![CreatePreviewInvoiceSubscriptionDetailsItems {
                id: Some(item_id.clone()),
                price: Some(plans.pro.id.as_str().to_string()),
                ..CreatePreviewInvoiceSubscriptionDetailsItems::new()
            }]),
            proration_date: Some(t),
            ..CreatePreviewInvoiceSubscriptionDetails::new()
        })
        .send(&app.client)
        .await
        .unwrap();
    let preview_amounts: Vec<i64> = preview.lines.data.iter().map(|l| l.amount).collect();
    UpdateSubscription::new(sub_id.as_str())
        .items(vec![UpdateSubscriptionItems {
            id: Some(item_id.clone()),
            price: Some(plans.pro.id.as_str().to_string()),
            ..UpdateSubscriptionItems::new()
        }])
        .proration_behavior(UpdateSubscriptionProrationBehavior::CreateProrations)
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(
        invoices_of(&app, &sub_id).await.len(),
        1,
        "no invoice until the renewal"
    );
    // past the renewal and its one-hour draft window
    advance(&app, &clock, FEB_28 + 3601).await;
    let invoices = invoices_of(&app, &sub_id).await;
    let renewal = invoices
        .iter()
        .find(|i| i.billing_reason.as_ref().map(|b| b.as_str()) == Some("subscription_cycle"))
        .unwrap();
    let amounts: Vec<i64> = renewal.lines.data.iter().map(|l| l.amount).collect();
    let (total, remaining) = (FEB_28 - JAN_31, FEB_28 - t);
    assert_eq!(
        amounts,
        vec![
            -expected_proration(1000, remaining, total),
            expected_proration(2000, remaining, total),
            2000,
        ]
    );
    assert_eq!(
        amounts, preview_amounts,
        "the renewal bills what the preview showed"
    );
    assert_eq!(renewal.status.as_ref().map(|s| s.as_str()), Some("paid"));
    let sub = RetrieveSubscription::new(sub_id.as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(sub.items.data[0].current_period_start, FEB_28);
    assert_eq!(
        sub.items.data[0].current_period_end, MAR_31,
        "Feb 28 → Mar 31: the anchor day comes back"
    );
}

#[tokio::test]
async fn cancel_at_period_end_ends_the_subscription_when_the_clock_passes_it() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (clock, customer) = customer_on_clock(&app, JAN_31, "cancel@example.com").await;
    let sub_id = subscribe_through_checkout(&app, &customer, plans.basic.id.as_str()).await;
    let sub = UpdateSubscription::new(sub_id.as_str())
        .cancel_at_period_end(true)
        .send(&app.client)
        .await
        .unwrap();
    assert!(sub.cancel_at_period_end);
    assert_eq!(sub.cancel_at, Some(FEB_28));
    assert_eq!(sub.status.as_str(), "active");

    advance(&app, &clock, FEB_28 + DAY).await;
    let sub = RetrieveSubscription::new(sub_id.as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(sub.status.as_str(), "canceled");
    assert_eq!(sub.ended_at, Some(FEB_28));
    assert_eq!(
        invoices_of(&app, &sub_id).await.len(),
        1,
        "no renewal invoice for an ended subscription"
    );
    let live = ListSubscription::new()
        .customer(customer.as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert!(
        live.data.is_empty(),
        "canceled subscriptions are not listed by default"
    );
    app.webhooks_settled().await;
    assert!(
        app.received()
            .iter()
            .any(|e| e.kind == "customer.subscription.deleted")
    );
}

#[tokio::test]
async fn a_failed_renewal_goes_past_due_and_a_retry_recovers_it() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (clock, customer) = customer_on_clock(&app, JAN_31, "dunning@example.com").await;
    let sub_id = subscribe_through_checkout(&app, &customer, plans.pro.id.as_str()).await;
    let (status, _) = app
        .post(
            &format!("/v1/test_helpers/customers/{customer}/fail_payments"),
            &[("fail", "true")],
        )
        .await;
    assert_eq!(status, 200);

    advance(&app, &clock, FEB_28 + 2 * 3600).await;
    let sub = RetrieveSubscription::new(sub_id.as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(sub.status.as_str(), "past_due");
    let renewal = RetrieveInvoice::new(invoice_id(sub.latest_invoice.as_ref().unwrap()).as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(renewal.status.as_ref().map(|s| s.as_str()), Some("open"));
    assert_eq!(renewal.attempt_count, 1);
    let retry_at = renewal.next_payment_attempt.expect("a retry is scheduled");
    assert_eq!(retry_at, FEB_28 + 3600 + 3 * DAY);

    app.post(
        &format!("/v1/test_helpers/customers/{customer}/fail_payments"),
        &[("fail", "false")],
    )
    .await;
    advance(&app, &clock, retry_at + 60).await;
    let renewal = RetrieveInvoice::new(renewal.id.as_ref().unwrap().as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(renewal.status.as_ref().map(|s| s.as_str()), Some("paid"));
    assert_eq!(renewal.attempt_count, 2);
    let sub = RetrieveSubscription::new(sub_id.as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(sub.status.as_str(), "active");
    app.webhooks_settled().await;
    let kinds: Vec<String> = app.received().into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&"invoice.payment_failed".to_string()));
}

#[tokio::test]
async fn usage_added_to_a_renewal_draft_is_billed_with_it() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let (clock, customer) = customer_on_clock(&app, JAN_31, "usage@example.com").await;
    let sub_id = subscribe_through_checkout(&app, &customer, plans.basic.id.as_str()).await;

    // exactly at the period end: the renewal exists as a draft (invoice.created)
    advance(&app, &clock, FEB_28).await;
    let sub = RetrieveSubscription::new(sub_id.as_str())
        .send(&app.client)
        .await
        .unwrap();
    let draft_id = invoice_id(sub.latest_invoice.as_ref().unwrap());
    let draft = RetrieveInvoice::new(draft_id.as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(draft.status.as_ref().map(|s| s.as_str()), Some("draft"));
    assert_eq!(draft.automatically_finalizes_at, Some(FEB_28 + 3600));

    let overage = CreateInvoiceItem::new()
        .customer(customer.as_str())
        .invoice(draft_id.as_str())
        .amount(250)
        .currency(stripe_types::Currency::USD)
        .description("Overage: 50 tickets")
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(
        overage.invoice.as_ref().map(invoice_id),
        Some(draft_id.clone())
    );

    advance(&app, &clock, FEB_28 + 3601).await;
    let paid = RetrieveInvoice::new(draft_id.as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(paid.status.as_ref().map(|s| s.as_str()), Some("paid"));
    assert_eq!(paid.amount_paid, 1250);
    assert_eq!(paid.lines.data.len(), 2);
}
