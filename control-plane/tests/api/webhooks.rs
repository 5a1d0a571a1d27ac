//! Stripe webhooks: verified, stored once, applied in any order, driving entitlements.

use crate::helpers::{WEBHOOK_SECRET, spawn_app_with_stripe, spawn_app_with_stripe_webhooks};
use serde_json::{Value, json};
use tollgate_control_plane::webhooks::signature::sign;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn event(id: &str, kind: &str, object: Value) -> String {
    json!({
        "id": id, "object": "event", "type": kind, "created": now(),
        "api_version": "2026-09-30.endive", "livemode": false, "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "data": { "object": object },
    })
    .to_string()
}

async fn stored_events(app: &crate::helpers::TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn checkout_completed_makes_the_subscription_active_and_publishes_the_entitlement() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let session = app
        .checkout(
            "wes",
            &json!({"plan": "premium", "billing_model": "fixed_fee",
               "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"}),
        )
        .await;
    app.pay(&session).await;
    app.eventually(
        "the subscription to be stored active",
        "SELECT bool_or(status = 'active' AND plan_type = 'premium') FROM subscriptions WHERE customer_id = 'wes'",
    )
    .await;
    let snapshot = app.snapshot("wes").await;
    assert_eq!(snapshot["plan"], "premium");
    assert_eq!(snapshot["overage_allowed"], true);
    assert_eq!(snapshot["included_units"], 100);
    app.eventually(
        "every delivered event to be applied",
        "SELECT count(*) > 0 AND bool_and(applied_at IS NOT NULL) FROM stripe_events",
    )
    .await;
}

#[tokio::test]
async fn a_paid_credit_pack_becomes_a_grant_once_and_a_refund_revokes_what_is_left() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let session = app
        .checkout(
            "xia",
            &json!({"plan": "premium", "billing_model": "credit_burndown", "credit_units": 100,
               "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"}),
        )
        .await;
    app.pay(&session).await;
    app.eventually(
        "the grant",
        "SELECT bool_or(credit_amount = 199.00) FROM billing_credits WHERE customer_id = 'xia'",
    )
    .await;
    let snapshot = app.snapshot("xia").await;
    assert_eq!(snapshot["billing_model"], "credit_burndown");
    assert_eq!(snapshot["credit_units_purchased"], 100);

    let completed = app
        .stripe_get(&format!("/v1/checkout/sessions/{session}"))
        .await;
    let intent = completed["payment_intent"].as_str().unwrap().to_owned();
    app.stripe_post("/v1/refunds", &[("payment_intent", intent.as_str())])
        .await;
    app.eventually(
        "the refund to revoke the grant",
        "SELECT bool_and(closed_reason = 'refund') FROM billing_credits WHERE customer_id = 'xia'",
    )
    .await;
    let grants: i64 =
        sqlx::query_scalar("SELECT count(*) FROM billing_credits WHERE customer_id = 'xia'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(grants, 1, "redelivered events never grant twice");
}

#[tokio::test]
async fn unverifiable_webhooks_are_refused_with_a_clear_code_and_change_nothing() {
    let app = spawn_app_with_stripe().await;
    let body = event(
        "evt_bad_1",
        "customer.subscription.updated",
        json!({"id": "sub_x", "object": "subscription"}),
    );
    let t = now();
    let cases = [
        (
            body.replace("sub_x", "sub_y"),
            Some(sign(body.as_bytes(), WEBHOOK_SECRET, t)),
            "invalid_signature",
        ),
        (
            body.clone(),
            Some(sign(body.as_bytes(), "whsec_someone_else", t)),
            "invalid_signature",
        ),
        (
            body.clone(),
            Some(sign(body.as_bytes(), WEBHOOK_SECRET, t - 301)),
            "timestamp_outside_tolerance",
        ),
        (body.clone(), None, "missing_signature"),
        (
            "{not json".to_owned(),
            Some(sign(b"{not json", WEBHOOK_SECRET, t)),
            "malformed_payload",
        ),
    ];
    for (payload, signature, code) in cases {
        let r = app.deliver(&payload, signature).await;
        assert_eq!(r.status(), 400, "{code}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], code);
    }
    assert_eq!(
        stored_events(&app).await,
        0,
        "nothing was stored or applied"
    );
}

#[tokio::test]
async fn a_duplicated_event_is_stored_and_applied_once() {
    let app = spawn_app_with_stripe().await;
    let body = event(
        "evt_dup_1",
        "some.unknown_type",
        json!({"id": "x_1", "object": "thing"}),
    );
    for expected in [false, true, true] {
        let r = app
            .deliver(&body, Some(sign(body.as_bytes(), WEBHOOK_SECRET, now())))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["duplicate"], expected);
    }
    assert_eq!(stored_events(&app).await, 1);
    app.eventually(
        "the unknown event to be counted and ignored",
        "SELECT bool_and(outcome = 'ignored') FROM stripe_events",
    )
    .await;
}

#[tokio::test]
async fn an_event_persisted_before_a_crash_is_applied_after_restart() {
    // A crash between the 200 and the apply leaves the event pending in the inbox;
    // whichever replica runs next applies it.
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let session = app
        .checkout(
            "yan",
            &json!({"plan": "enterprise", "billing_model": "fixed_fee",
               "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"}),
        )
        .await;
    // Pause deliveries: the app never hears of the payment...
    app.stripe_post("/v1/test_helpers/webhooks/config", &[("paused", "true")])
        .await;
    app.pay(&session).await;
    let events = app
        .stripe_get("/v1/events?type=checkout.session.completed")
        .await;
    let completed = events["data"][0].clone();
    // ...until the event is found stored but unapplied, as a crash would leave it.
    sqlx::query(
        "INSERT INTO stripe_events (event_id, event_type, stripe_created, payload)
         VALUES ($1, 'checkout.session.completed', $2, $3)",
    )
    .bind(completed["id"].as_str().unwrap())
    .bind(completed["created"].as_i64().unwrap())
    .bind(&completed)
    .execute(&app.pool)
    .await
    .unwrap();
    app.eventually(
        "the stored event to be applied",
        "SELECT bool_or(status = 'active' AND plan_type = 'enterprise') FROM subscriptions WHERE customer_id = 'yan'",
    )
    .await;
}

#[tokio::test]
async fn events_in_any_order_and_repeated_converge_to_stripes_state() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    // Deliver duplicated and shuffled from the start.
    app.stripe_post(
        "/v1/test_helpers/webhooks/config",
        &[("duplicate", "true"), ("reorder", "true")],
    )
    .await;
    let session = app
        .checkout(
            "zoe",
            &json!({"plan": "premium", "billing_model": "fixed_fee",
               "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"}),
        )
        .await;
    app.pay(&session).await;
    let sub = app
        .stripe_get(&format!("/v1/checkout/sessions/{session}"))
        .await["subscription"]
        .as_str()
        .unwrap()
        .to_owned();
    // Several changes in a row: each produces customer.subscription.updated.
    for flag in ["true", "false", "true"] {
        app.stripe_post(
            &format!("/v1/subscriptions/{sub}"),
            &[("cancel_at_period_end", flag)],
        )
        .await;
    }
    app.eventually(
        "the final state (cancel at period end) to be stored",
        &format!(
            "SELECT bool_and(cancel_at_period_end AND status = 'active') FROM subscriptions WHERE stripe_subscription_id = '{sub}'"
        ),
    )
    .await;
    // Replaying every event again, newest first, changes nothing.
    let events = app.stripe_get("/v1/events?limit=100").await;
    for e in events["data"].as_array().unwrap() {
        let body = e.to_string();
        let mut replayed = e.clone();
        replayed["id"] = json!(format!("{}_replay", e["id"].as_str().unwrap()));
        let replay = replayed.to_string();
        for b in [body, replay] {
            app.deliver(&b, Some(sign(b.as_bytes(), WEBHOOK_SECRET, now())))
                .await;
        }
    }
    app.eventually(
        "every replay to be applied",
        "SELECT bool_and(applied_at IS NOT NULL) FROM stripe_events",
    )
    .await;
    let cancel: bool = sqlx::query_scalar(
        "SELECT cancel_at_period_end FROM subscriptions WHERE stripe_subscription_id = $1",
    )
    .bind(&sub)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        cancel,
        "old events replayed late never overwrite Stripe's current state"
    );
}

type StoredState = (
    String,
    String,
    bool,
    Option<time::OffsetDateTime>,
    i32,
    Option<time::OffsetDateTime>,
);

async fn stored_state(app: &crate::helpers::TestApp, customer: &str) -> StoredState {
    sqlx::query_as(
        "SELECT plan_type, status, cancel_at_period_end, grace_until, payment_failed_attempts,
                current_period_end
         FROM subscriptions WHERE customer_id = $1 AND stripe_subscription_id IS NOT NULL",
    )
    .bind(customer)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Property: a subscription's whole life (created, updated ×3 or more, payment_failed,
/// paid, deleted), delivered in any order, leaves the same stored state as delivered in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_permutation_of_a_subscriptions_events_converges_to_the_same_state() {
    use proptest::prelude::*;
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let clock = app.customer_on_clock("perm", now()).await;
    let sub = app.subscribe_via_checkout("perm", "premium").await;
    for flag in ["true", "false"] {
        app.stripe_post(
            &format!("/v1/subscriptions/{sub}"),
            &[("cancel_at_period_end", flag)],
        )
        .await;
    }
    let stripe_customer: String =
        sqlx::query_scalar("SELECT stripe_customer_id FROM customers WHERE customer_id = 'perm'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let fail_path = format!("/v1/test_helpers/customers/{stripe_customer}/fail_payments");
    app.stripe_post(&fail_path, &[("fail", "true")]).await;
    let end: i64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM current_period_end)::BIGINT FROM subscriptions WHERE customer_id = 'perm'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    app.advance(&clock, end + 2 * 3600).await;
    app.eventually(
        "the failure",
        "SELECT status = 'past_due' FROM subscriptions WHERE customer_id = 'perm'",
    )
    .await;
    app.stripe_post(&fail_path, &[("fail", "false")]).await;
    app.advance(&clock, end + 4 * 86_400).await;
    app.eventually(
        "the recovery",
        "SELECT status = 'active' AND grace_until IS NULL FROM subscriptions WHERE customer_id = 'perm'",
    )
    .await;
    let r = app
        .http
        .delete(format!(
            "{}/v1/subscriptions/{sub}",
            app.stripe.as_ref().unwrap().url
        ))
        .bearer_auth(crate::helpers::STRIPE_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    app.eventually(
        "the deletion",
        "SELECT status = 'canceled' FROM subscriptions WHERE customer_id = 'perm'",
    )
    .await;
    app.eventually(
        "every event applied",
        "SELECT bool_and(applied_at IS NOT NULL) FROM stripe_events",
    )
    .await;
    let baseline = stored_state(&app, "perm").await;
    assert_eq!(baseline.1, "canceled");

    let wanted = [
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.payment_failed",
        "invoice.paid",
    ];
    let events: Vec<Value> = app.stripe_get("/v1/events?limit=100").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| wanted.contains(&e["type"].as_str().unwrap()))
        .cloned()
        .collect();
    let count = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    assert!(
        count("customer.subscription.updated") >= 3,
        "{}",
        count("customer.subscription.updated")
    );
    for t in [
        "customer.subscription.created",
        "invoice.payment_failed",
        "invoice.paid",
        "customer.subscription.deleted",
    ] {
        assert!(count(t) >= 1, "{t}");
    }

    let handle = tokio::runtime::Handle::current();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 8,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let round = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&Just(events.clone()).prop_shuffle(), |permutation| {
            let n = round.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let state = tokio::task::block_in_place(|| {
                handle.block_on(async {
                    sqlx::query("DELETE FROM subscriptions WHERE customer_id = 'perm'")
                        .execute(&app.pool)
                        .await
                        .unwrap();
                    sqlx::query("DELETE FROM stripe_events")
                        .execute(&app.pool)
                        .await
                        .unwrap();
                    for e in &permutation {
                        let mut e = e.clone();
                        e["id"] = json!(format!("{}_p{n}", e["id"].as_str().unwrap()));
                        let body = e.to_string();
                        let r = app
                            .deliver(&body, Some(sign(body.as_bytes(), WEBHOOK_SECRET, now())))
                            .await;
                        assert_eq!(r.status(), 200);
                    }
                    app.eventually(
                        "the permutation applied",
                        "SELECT bool_and(applied_at IS NOT NULL) FROM stripe_events",
                    )
                    .await;
                    stored_state(&app, "perm").await
                })
            });
            prop_assert_eq!(&state, &baseline);
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn an_event_stripe_refuses_is_retried_with_backoff_without_blocking_the_rest() {
    let app = spawn_app_with_stripe_webhooks().await;
    // Stripe answers 404 for this subscription: the event cannot be applied (yet).
    let stuck = event(
        "evt_stuck_1",
        "customer.subscription.updated",
        json!({"id": "sub_unknown_to_stripe", "object": "subscription"}),
    );
    let fine = event(
        "evt_after_1",
        "invoice.finalized",
        json!({"id": "in_x", "object": "invoice"}),
    );
    for body in [&stuck, &fine] {
        let r = app
            .deliver(body, Some(sign(body.as_bytes(), WEBHOOK_SECRET, now())))
            .await;
        assert_eq!(r.status(), 200);
    }
    app.eventually(
        "the later event applied while the first waits",
        "SELECT (SELECT applied_at IS NOT NULL FROM stripe_events WHERE event_id = 'evt_after_1')
            AND (SELECT applied_at IS NULL AND attempts >= 1 AND last_error IS NOT NULL
                     AND next_attempt_at > now()
                 FROM stripe_events WHERE event_id = 'evt_stuck_1')",
    )
    .await;
}

#[tokio::test]
async fn a_burst_of_updates_to_one_subscription_is_applied_with_one_re_fetch_not_one_each() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let sub = app.subscribe_via_checkout("burst", "premium").await;
    app.eventually(
        "the checkout's own events applied",
        "SELECT count(*) = 0 FROM stripe_events WHERE applied_at IS NULL",
    )
    .await;
    // Fifty `customer.subscription.updated` hints of one subscription land in the inbox
    // at once, beside two events of another type about the same id.
    sqlx::query(
        "INSERT INTO stripe_events (event_id, event_type, stripe_created, payload, object_id)
         SELECT 'evt_burst_' || n,
                CASE WHEN n <= 50 THEN 'customer.subscription.updated' ELSE 'some.unknown_type' END,
                $2,
                jsonb_build_object('id', 'evt_burst_' || n, 'object', 'event',
                    'data', jsonb_build_object('object',
                        jsonb_build_object('id', $1::text, 'object', 'subscription'))),
                $1
         FROM generate_series(1, 52) AS n",
    )
    .bind(&sub)
    .bind(now())
    .execute(&app.pool)
    .await
    .unwrap();
    app.eventually(
        "the burst applied",
        "SELECT count(*) = 0 FROM stripe_events WHERE applied_at IS NULL",
    )
    .await;
    let outcomes: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT event_type, outcome, count(*) FROM stripe_events
         WHERE event_id LIKE 'evt_burst_%' GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let count = |kind: &str, outcome: &str| {
        outcomes
            .iter()
            .find(|(k, o, _)| k == kind && o == outcome)
            .map_or(0, |(.., n)| *n)
    };
    let (applied, coalesced) = (
        count("customer.subscription.updated", "applied"),
        count("customer.subscription.updated", "coalesced"),
    );
    assert_eq!(applied + coalesced, 50, "{outcomes:?}");
    // At most one re-fetch per worker that picked one of them before the first locked
    // the rest (four workers).
    assert!((1..=4).contains(&applied), "{outcomes:?}");
    assert_eq!(
        count("some.unknown_type", "ignored"),
        2,
        "only re-fetch hints are coalesced: {outcomes:?}"
    );
    let metrics = app
        .http
        .get(format!("{}/metrics", app.metrics_address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted = metrics.lines().find(|l| {
        l.starts_with("tollgate_cp_stripe_webhook_events_total{")
            && l.contains(r#"outcome="coalesced""#)
            && l.contains(r#"type="customer.subscription.updated""#)
    });
    assert_eq!(
        counted.and_then(|l| l.rsplit(' ').next()),
        Some(coalesced.to_string().as_str()),
        "{metrics}"
    );
    assert_eq!(
        sqlx::query_scalar::<_, String>(
            "SELECT status FROM subscriptions WHERE stripe_subscription_id = $1"
        )
        .bind(&sub)
        .fetch_one(&app.pool)
        .await
        .unwrap(),
        "active"
    );
}
