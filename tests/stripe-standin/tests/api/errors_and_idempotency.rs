//! Stripe's error envelope, authentication and `Idempotency-Key` replay.

use stripe::{IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::subscription::{
    CreateSubscription, CreateSubscriptionItems, RetrieveSubscription,
};
use stripe_core::customer::{CreateCustomer, ListCustomer, RetrieveCustomer};

use crate::catalog::create_plans;
use crate::helpers::spawn_app;

fn stripe_error(e: StripeError) -> (String, Option<String>, Option<String>, u16) {
    match e {
        StripeError::Stripe(err, status) => (
            err.type_.as_str().to_string(),
            err.code.as_ref().map(|c| c.as_str().to_string()),
            err.param.clone(),
            status,
        ),
        other => panic!("expected a Stripe error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_response_and_refuses_other_parameters() {
    let app = spawn_app().await;
    let key = || RequestStrategy::Idempotent(IdempotencyKey::new("create-customer-7").unwrap());
    let first = CreateCustomer::new()
        .email("same@example.com")
        .customize()
        .request_strategy(key())
        .send(&app.client)
        .await
        .unwrap();
    let second = CreateCustomer::new()
        .email("same@example.com")
        .customize()
        .request_strategy(key())
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(first.id, second.id);
    let all = ListCustomer::new().send(&app.client).await.unwrap();
    assert_eq!(all.data.len(), 1, "the replay created nothing");

    let err = CreateCustomer::new()
        .email("other@example.com")
        .customize()
        .request_strategy(key())
        .send(&app.client)
        .await
        .unwrap_err();
    let (kind, _, _, status) = stripe_error(err);
    assert_eq!((kind.as_str(), status), ("idempotency_error", 400));
}

#[tokio::test]
async fn missing_objects_are_404_resource_missing() {
    let app = spawn_app().await;
    let err = RetrieveCustomer::new("cus_nope")
        .send(&app.client)
        .await
        .unwrap_err();
    let (kind, code, _, status) = stripe_error(err);
    assert_eq!(
        (kind.as_str(), code.as_deref(), status),
        ("invalid_request_error", Some("resource_missing"), 404)
    );
    let err = RetrieveSubscription::new("sub_nope")
        .send(&app.client)
        .await
        .unwrap_err();
    assert_eq!(stripe_error(err).3, 404);
}

#[tokio::test]
async fn unknown_and_missing_parameters_name_the_parameter() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/v1/customers",
            &[("email", "a@b.c"), ("favourite_colour", "blue")],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "parameter_unknown");
    assert_eq!(body["error"]["param"], "favourite_colour");
    let (status, body) = app.post("/v1/products", &[]).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "parameter_missing");
    assert_eq!(body["error"]["param"], "name");
}

#[tokio::test]
async fn a_wrong_api_key_is_refused_with_401() {
    let app = spawn_app().await;
    let client = stripe::ClientBuilder::new("sk_test_wrong")
        .url(app.standin.url.clone())
        .build()
        .unwrap();
    let err = ListCustomer::new().send(&client).await.unwrap_err();
    assert_eq!(stripe_error(err).3, 401);
    let (status, _) = app.get("/health").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_subscription_for_a_customer_whose_card_fails_is_incomplete_or_a_card_error() {
    let app = spawn_app().await;
    let plans = create_plans(&app).await;
    let customer = CreateCustomer::new()
        .email("declined@example.com")
        .payment_method("pm_card_chargeDeclined")
        .send(&app.client)
        .await
        .unwrap();
    // without a default payment method the first invoice cannot be paid: incomplete
    let sub = CreateSubscription::new()
        .customer(customer.id.as_str())
        .items(vec![CreateSubscriptionItems {
            price: Some(plans.basic.id.as_str().to_string()),
            ..CreateSubscriptionItems::new()
        }])
        .send(&app.client)
        .await
        .unwrap();
    assert_eq!(sub.status.as_str(), "incomplete");

    let err = CreateSubscription::new()
        .customer(customer.id.as_str())
        .items(vec![CreateSubscriptionItems {
            price: Some(plans.basic.id.as_str().to_string()),
            ..CreateSubscriptionItems::new()
        }])
        .payment_behavior(
            stripe_billing::subscription::CreateSubscriptionPaymentBehavior::ErrorIfIncomplete,
        )
        .default_payment_method("pm_card_visa")
        .send(&app.client)
        .await
        .unwrap_err();
    let (kind, code, _, status) = stripe_error(err);
    assert_eq!(
        (kind.as_str(), code.as_deref(), status),
        ("card_error", Some("card_declined"), 402)
    );
}
