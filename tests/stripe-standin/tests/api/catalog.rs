//! Shared setup: products and prices by lookup key, customers on test clocks, Checkout.

use std::collections::HashMap;

use stripe_billing::test_helpers_test_clock::CreateTestHelpersTestClock;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
    RetrieveCheckoutSession,
};
use stripe_core::customer::CreateCustomer;
use stripe_product::price::{
    CreatePrice, CreatePriceRecurring, CreatePriceRecurringInterval, ListPrice,
};
use stripe_product::product::CreateProduct;
use stripe_shared::{CheckoutSessionMode, Price};

use crate::helpers::TestApp;

/// 2025-01-31 10:00:00 UTC: a month-end anchor.
pub const JAN_31: i64 = 1_738_317_600;

pub struct Plans {
    pub basic: Price,
    pub pro: Price,
}

/// Basic $10/month and Pro $20/month, found again by lookup key as an app would.
pub async fn create_plans(app: &TestApp) -> Plans {
    for (id, name, key, amount) in [
        ("prod_basic", "Basic", "basic_monthly", 1000),
        ("prod_pro", "Pro", "pro_monthly", 2000),
    ] {
        let product = CreateProduct::new(name)
            .id(id)
            .send(&app.client)
            .await
            .unwrap();
        assert_eq!(product.id.as_str(), id);
        CreatePrice::new(stripe_types::Currency::USD)
            .product(id)
            .unit_amount(amount)
            .recurring(CreatePriceRecurring::new(
                CreatePriceRecurringInterval::Month,
            ))
            .lookup_key(key)
            .metadata(HashMap::from([("plan".to_string(), name.to_lowercase())]))
            .send(&app.client)
            .await
            .unwrap();
    }
    let prices = ListPrice::new()
        .lookup_keys(vec!["basic_monthly".to_string(), "pro_monthly".to_string()])
        .active(true)
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(prices.data.len(), 2);
    let find = |key: &str| {
        prices
            .data
            .iter()
            .find(|p| p.lookup_key.as_deref() == Some(key))
            .unwrap()
            .clone()
    };
    Plans {
        basic: find("basic_monthly"),
        pro: find("pro_monthly"),
    }
}

/// A test clock at `time` and a customer on it.
pub async fn customer_on_clock(app: &TestApp, time: i64, email: &str) -> (String, String) {
    let clock = CreateTestHelpersTestClock::new(time)
        .name(email)
        .send(&app.client)
        .await
        .unwrap();
    let customer = CreateCustomer::new()
        .email(email)
        .test_clock(clock.id.as_str())
        .metadata(HashMap::from([("tenant".to_string(), email.to_string())]))
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(customer.created, time);
    (
        clock.id.as_str().to_string(),
        customer.id.as_str().to_string(),
    )
}

/// Checkout for one price, completed by the stand-in's "customer pays" helper; returns the
/// subscription id.
pub async fn subscribe_through_checkout(app: &TestApp, customer: &str, price: &str) -> String {
    let session = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Subscription)
        .customer(customer)
        .line_items(vec![CreateCheckoutSessionLineItems {
            price: Some(price.to_string()),
            quantity: Some(1),
            ..CreateCheckoutSessionLineItems::new()
        }])
        .success_url("https://app.example/success")
        .cancel_url("https://app.example/cancel")
        .client_reference_id("tenant-42")
        .metadata(HashMap::from([("tenant".to_string(), "42".to_string())]))
        .subscription_data(CreateCheckoutSessionSubscriptionData {
            metadata: Some(HashMap::from([("tenant".to_string(), "42".to_string())])),
            ..CreateCheckoutSessionSubscriptionData::new()
        })
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(session.status.as_ref().map(|s| s.as_str()), Some("open"));
    assert!(
        session
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with(&app.standin.url))
    );
    let id = session.id.as_str().to_string();
    let (status, body) = app
        .post(
            &format!("/v1/test_helpers/checkout/sessions/{id}/complete"),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done = RetrieveCheckoutSession::new(id.as_str())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(done.status.as_ref().map(|s| s.as_str()), Some("complete"));
    assert_eq!(done.payment_status.as_str(), "paid");
    assert_eq!(done.client_reference_id.as_deref(), Some("tenant-42"));
    assert_eq!(done.amount_total, Some(done.amount_subtotal.unwrap()));
    done.subscription
        .expect("subscription mode sets a subscription")
        .id()
        .as_str()
        .to_string()
}
