//! Outbound notifications: signed, retried until the receiver takes them, each threshold
//! once per period.

use crate::helpers::spawn_app_and;
use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Inbox {
    received: Vec<(HeaderMap, Value)>,
    /// Answer 500 to the first this many requests.
    fail_first: usize,
}

async fn receiver(inbox: Arc<Mutex<Inbox>>) -> String {
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let inbox = inbox.clone();
            async move {
                let mut inbox = inbox.lock().unwrap();
                if inbox.fail_first > 0 {
                    inbox.fail_first -= 1;
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                inbox
                    .received
                    .push((headers, serde_json::from_slice(&body).unwrap()));
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hooks")
}

#[tokio::test]
async fn thresholds_fire_once_per_period_signed_and_survive_a_failing_receiver() {
    let inbox = Arc::new(Mutex::new(Inbox {
        fail_first: 1,
        ..Inbox::default()
    }));
    let url = receiver(inbox.clone()).await;
    let app = spawn_app_and(|c| {
        c.control_plane.notifications =
            Some(serde_json::from_value(json!({ "url": url, "secret": "notify-secret" })).unwrap());
    })
    .await;
    let snapshot = app.snapshot("nf").await;
    let send = |n: usize| {
        let events: Vec<Value> = (0..n)
            .map(|_| {
                json!({
                    "event_id": uuid::Uuid::now_v7(), "customer_id": "nf",
                    "usage_type": "ticket_creation", "quantity": 1,
                    "occurred_at": snapshot["period_start"], "period_start": snapshot["period_start"],
                    "period_end": snapshot["period_end"],
                })
            })
            .collect();
        app.http
            .post(app.url("/internal/v1/usage/batch"))
            .bearer_auth(&app.service_token)
            .json(&json!({ "events": events }))
            .send()
    };
    assert_eq!(send(8).await.unwrap().status(), 200);
    app.eventually(
        "80 % delivered",
        "SELECT count(*) = 1 FROM notification_outbox WHERE delivered_at IS NOT NULL",
    )
    .await;
    assert_eq!(send(2).await.unwrap().status(), 200);
    assert_eq!(send(3).await.unwrap().status(), 200);
    app.eventually(
        "100 % and blocked delivered",
        "SELECT count(*) = 3 AND bool_and(delivered_at IS NOT NULL) FROM notification_outbox",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;

    let received = inbox.lock().unwrap().received.clone();
    let kinds: Vec<&str> = received
        .iter()
        .map(|(_, b)| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 3, "each threshold once: {kinds:?}");
    assert_eq!(kinds[0], "usage.approaching_limit");
    assert!(kinds.contains(&"usage.limit_reached"));
    assert!(
        kinds.contains(&"free_tier.blocked"),
        "so the app can disable chat"
    );
    for (headers, body) in &received {
        let signature = headers["tollgate-signature"].to_str().unwrap();
        let t: i64 = signature
            .split(',')
            .next()
            .unwrap()
            .trim_start_matches("t=")
            .parse()
            .unwrap();
        let expected = tollgate_control_plane::webhooks::signature::sign(
            &serde_json::to_vec(body).unwrap(),
            "notify-secret",
            t,
        );
        assert_eq!(signature, expected);
        assert_eq!(
            headers["tollgate-event-id"].to_str().unwrap(),
            body["id"].as_str().unwrap()
        );
        assert_eq!(body["customer_id"], "nf");
    }
    let retried: i32 = sqlx::query_scalar(
        "SELECT max(attempts) FROM notification_outbox WHERE kind = 'usage.approaching_limit'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(retried, 2, "the first attempt failed and was retried");
}
