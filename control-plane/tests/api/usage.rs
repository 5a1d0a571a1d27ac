//! The ledger's usage: the customer's view, the ticket backend's recording endpoint and
//! credit burndown.

use crate::helpers::{TestApp, spawn_app};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use std::str::FromStr;
use time::OffsetDateTime;

async fn customer(app: &TestApp, id: &str) {
    sqlx::query("INSERT INTO customers (customer_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
}

async fn credit_subscription(app: &TestApp, id: &str) {
    customer(app, id).await;
    let now = OffsetDateTime::now_utc();
    sqlx::query(
        "INSERT INTO subscriptions (customer_id, stripe_subscription_id, stripe_customer_id,
             plan_type, billing_model, status, current_period_start, current_period_end)
         VALUES ($1, $2, 'cus_x', 'premium', 'credit_burndown', 'active', $3, $4)",
    )
    .bind(id)
    .bind(format!("sub_{}", uuid::Uuid::new_v4().simple()))
    .bind(now - time::Duration::days(1))
    .bind(now + time::Duration::days(29))
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn grant(app: &TestApp, id: &str, amount: &str, expires_in_days: Option<i64>) -> uuid::Uuid {
    let expires = expires_in_days.map(|d| OffsetDateTime::now_utc() + time::Duration::days(d));
    sqlx::query_scalar(
        "INSERT INTO billing_credits (customer_id, credit_amount, unit_price, expires_at)
         VALUES ($1, $2, 1.99, $3) RETURNING id",
    )
    .bind(id)
    .bind(Decimal::from_str(amount).unwrap())
    .bind(expires)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn used(app: &TestApp, grant: uuid::Uuid) -> Decimal {
    sqlx::query_scalar("SELECT used_amount FROM billing_credits WHERE id = $1")
        .bind(grant)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn record_body(customer: &str) -> Value {
    json!({ "customer_id": customer, "usage_type": "agent_interaction" })
}

async fn record(app: &TestApp, body: &Value) -> reqwest::Response {
    app.http
        .post(app.url("/api/v1/billing/usage/record"))
        .bearer_auth(&app.service_token)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn credits_burn_down_first_from_the_grant_that_expires_first() {
    let app = spawn_app().await;
    credit_subscription(&app, "carol").await;
    let never = grant(&app, "carol", "19.90", None).await;
    let late = grant(&app, "carol", "3.98", Some(60)).await;
    let soon = grant(&app, "carol", "3.98", Some(10)).await;
    for _ in 0..3 {
        assert_eq!(record(&app, &record_body("carol")).await.status(), 201);
    }
    assert_eq!(used(&app, soon).await, Decimal::from_str("3.98").unwrap());
    assert_eq!(used(&app, late).await, Decimal::from_str("1.99").unwrap());
    assert_eq!(used(&app, never).await, Decimal::ZERO);
    let usage = app.get_as("carol", "/api/v1/billing/usage").await;
    assert_eq!(usage["credit_units_remaining"], 11);
    assert_eq!(usage["credit_balance"], "21.89");
}

#[tokio::test]
async fn two_hundred_concurrent_recordings_on_one_remaining_credit_consume_exactly_one() {
    let app = spawn_app().await;
    credit_subscription(&app, "dave").await;
    let g = grant(&app, "dave", "1.99", None).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let http = app.http.clone();
        let url = app.url("/api/v1/billing/usage/record");
        let token = app.service_token.clone();
        tasks.spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .json(&record_body("dave"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    let mut statuses = Vec::new();
    while let Some(s) = tasks.join_next().await {
        statuses.push(s.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == 402).count(), 199);
    assert_eq!(used(&app, g).await, Decimal::from_str("1.99").unwrap());
    let remaining: Decimal =
        sqlx::query_scalar("SELECT remaining_amount FROM billing_credits WHERE id = $1")
            .bind(g)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(remaining, Decimal::ZERO);
}

#[tokio::test]
async fn a_free_customer_is_refused_by_the_recording_endpoint_with_the_proxys_code() {
    let app = spawn_app().await;
    for _ in 0..10 {
        assert_eq!(record(&app, &record_body("erin")).await.status(), 201);
    }
    let refused = record(&app, &record_body("erin")).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "usage_limit_exceeded");
    assert_eq!(body["limit"], 10);
    assert_eq!(body["used"], 10);
    assert_eq!(body["plan"], "free");
}

#[tokio::test]
async fn recording_the_same_event_id_twice_records_it_once() {
    let app = spawn_app().await;
    let mut body = record_body("frank");
    body["event_id"] = json!(uuid::Uuid::now_v7());
    let first = record(&app, &body).await;
    assert_eq!(first.status(), 201);
    let again = record(&app, &body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_records WHERE customer_id = 'frank'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn recording_needs_the_service_token_not_a_customer_token() {
    let app = spawn_app().await;
    let r = app
        .http
        .post(app.url("/api/v1/billing/usage/record"))
        .bearer_auth(app.customer_token("frank"))
        .json(&record_body("frank"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn usage_shows_the_period_and_only_the_callers_own_usage() {
    let app = spawn_app().await;
    for _ in 0..3 {
        record(&app, &record_body("gina")).await;
    }
    let view = |who: &str| {
        app.http
            .get(app.url("/api/v1/billing/usage"))
            .bearer_auth(app.customer_token(who))
            .send()
    };
    let gina: Value = view("gina").await.unwrap().json().await.unwrap();
    assert_eq!(gina["used"], 3);
    assert_eq!(gina["included"], 10);
    assert_eq!(gina["remaining"], 7);
    assert_eq!(gina["overage_amount"], "0.00");
    let other: Value = view("hank").await.unwrap().json().await.unwrap();
    assert_eq!(
        other["used"], 0,
        "another customer's token sees only its own usage"
    );
    let anonymous = app
        .http
        .get(app.url("/api/v1/billing/usage"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn history_groups_usage_by_day_and_rejects_a_bad_range() {
    let app = spawn_app().await;
    for _ in 0..2 {
        record(&app, &record_body("ivy")).await;
    }
    let now = OffsetDateTime::now_utc();
    let fmt = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let r = app
        .http
        .get(app.url("/api/v1/billing/usage/history"))
        .query(&[
            ("from", fmt(now - time::Duration::days(2))),
            ("to", fmt(now + time::Duration::days(1))),
            ("granularity", "day".to_owned()),
        ])
        .bearer_auth(app.customer_token("ivy"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let buckets: Value = r.json().await.unwrap();
    assert_eq!(buckets.as_array().unwrap().len(), 1);
    assert_eq!(buckets[0]["quantity"], 2);
    assert_eq!(buckets[0]["usage_type"], "agent_interaction");

    let backwards = app
        .http
        .get(app.url("/api/v1/billing/usage/history"))
        .query(&[
            ("from", fmt(now)),
            ("to", fmt(now - time::Duration::days(1))),
        ])
        .bearer_auth(app.customer_token("ivy"))
        .send()
        .await
        .unwrap();
    assert_eq!(backwards.status(), 422);
    assert_eq!(backwards.json::<Value>().await.unwrap()["field"], "to");
}

#[tokio::test]
async fn after_redis_loses_the_counters_reconciliation_rebuilds_them_with_zero_drift() {
    let app = spawn_app().await;
    for _ in 0..10 {
        assert_eq!(record(&app, &record_body("jill")).await.status(), 201);
    }
    // Redis loses everything of this deployment (a flush or a restart without persistence).
    let mut redis = app.state.redis.clone();
    let prefix = app
        .state
        .publisher
        .entitlements()
        .keys()
        .entitlement_channel();
    let prefix = prefix.trim_end_matches("entitlements");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap();

    let keys = app.state.publisher.entitlements().keys().clone();
    let run = || {
        tollgate_control_plane::jobs::counters::run_once(
            &app.pool,
            &app.state.redis,
            &keys,
            &app.state.metrics,
        )
    };
    let first = run().await.unwrap().expect("the lock was free");
    assert_eq!(first.behind_units, 10);
    assert!(first.repaired >= 1);
    let second = run().await.unwrap().expect("the lock was free");
    assert_eq!(second.behind_units, 0, "no drift after the rebuild");
    assert_eq!(second.ahead_units, 0);
    // No free quota came out of the flush.
    assert_eq!(record(&app, &record_body("jill")).await.status(), 403);
}

#[tokio::test]
async fn retention_folds_old_raw_usage_into_period_totals_and_history_stays_the_same() {
    let app = spawn_app().await;
    customer(&app, "kim").await;
    let start = OffsetDateTime::now_utc() - time::Duration::days(300);
    let end = start + time::Duration::days(30);
    for _ in 0..3 {
        sqlx::query(
            "INSERT INTO usage_records (event_id, customer_id, usage_type, quantity,
                 billing_period_start, billing_period_end, occurred_at, recorded_at)
             VALUES ($1, 'kim', 'ticket_creation', 2, $2, $3, $2, $2)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(start)
        .bind(end)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    record(&app, &record_body("kim")).await;
    let history = || async {
        let fmt = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        app.http
            .get(app.url("/api/v1/billing/usage/history"))
            .query(&[
                ("from", fmt(start - time::Duration::days(1))),
                (
                    "to",
                    fmt(OffsetDateTime::now_utc() + time::Duration::days(1)),
                ),
                ("granularity", "period".to_owned()),
            ])
            .bearer_auth(app.customer_token("kim"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let before = history().await;
    assert_eq!(before.as_array().map(Vec::len), Some(2), "{before}");
    let folded = tollgate_control_plane::jobs::retention::fold_old_usage(&app.pool, 200)
        .await
        .unwrap();
    assert_eq!(folded, 3, "only the old period's raw records are folded");
    assert_eq!(history().await, before);
    assert_eq!(before[0]["quantity"], 6);
    let raw: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_records WHERE customer_id = 'kim'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(raw, 1, "the current period's record stays raw");
}

#[tokio::test]
async fn export_holds_all_of_the_callers_billing_data_and_nothing_of_anyone_else() {
    let app = spawn_app().await;
    credit_subscription(&app, "lea").await;
    grant(&app, "lea", "3.98", None).await;
    record(&app, &record_body("lea")).await;
    record(&app, &record_body("mo")).await;
    let export = app.get_as("lea", "/api/v1/billing/export").await;
    let data = &export["data"];
    assert_eq!(data["customer"]["customer_id"], "lea");
    assert_eq!(data["subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(data["credit_grants"].as_array().unwrap().len(), 1);
    assert_eq!(data["usage_records"].as_array().unwrap().len(), 1);
    assert!(!export.to_string().contains("\"mo\""));
}

#[tokio::test]
async fn entitlements_tell_the_frontend_when_chat_is_off_and_what_to_upgrade_to() {
    let app = spawn_app().await;
    let view = || async {
        app.http
            .get(app.url("/api/v1/billing/entitlements"))
            .bearer_auth(app.customer_token("uma"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let fresh = view().await;
    assert_eq!(fresh["plan"], "free");
    assert_eq!(fresh["chat_enabled"], true);
    assert_eq!(fresh["remaining"], 10);
    assert_eq!(fresh["upgrade_suggestion"], Value::Null);
    for _ in 0..10 {
        record(&app, &record_body("uma")).await;
    }
    let blocked = view().await;
    assert_eq!(blocked["chat_enabled"], false);
    assert_eq!(blocked["exhausted"], true);
    assert_eq!(blocked["upgrade_suggestion"], "premium");
}

#[tokio::test]
async fn credits_list_grants_with_what_is_left_of_each() {
    let app = spawn_app().await;
    credit_subscription(&app, "vic").await;
    grant(&app, "vic", "3.98", Some(30)).await;
    record(&app, &record_body("vic")).await;
    let credits = app.get_as("vic", "/api/v1/billing/credits").await;
    assert_eq!(credits["balance"], "1.99");
    assert_eq!(credits["units_remaining"], 1);
    assert_eq!(credits["grants"][0]["remaining_amount"], "1.99");
    assert_eq!(credits["grants"][0]["used_amount"], "1.99");
}
