//! The API surface as a whole: the OpenAPI document covers every route, one customer can
//! never reach another's data through any endpoint, rate limits, CORS and body limits.

use crate::helpers::{spawn_app, spawn_app_and, spawn_app_with_stripe_webhooks};
use reqwest::Method;
use serde_json::{Value, json};

async fn openapi(app: &crate::helpers::TestApp) -> Value {
    let r = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Every (method, path) the document lists, with path parameters filled in.
fn operations(doc: &Value) -> Vec<(Method, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            out.push((m, path.replace("{customer}", "someone"), op.clone()));
        }
    }
    out
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_only_real_ones() {
    let app = spawn_app().await;
    let doc = openapi(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let ops = operations(&doc);
    // Each documented operation exists: never the router's fallback (404 not_found) nor
    // a wrong-method 405.
    for (method, path, _) in &ops {
        let r = app
            .http
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(
            status != 405 && !(status == 404 && body["code"] == "not_found"),
            "{method} {path} is documented but not served ({status})"
        );
    }
    // Each route the README's API table names is documented.
    let readme = std::fs::read_to_string(crate::helpers::repo_file("README.md")).unwrap();
    let mut listed = 0;
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        let Some(route) = line.split('`').nth(1) else {
            continue;
        };
        let mut parts = route.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !path.starts_with('/') || method.parse::<Method>().is_err() {
            continue;
        }
        let path = path.split(['?', '[']).next().unwrap();
        // The billing table names paths under its prefix.
        let path = if path.starts_with("/internal/") || path.starts_with("/api/") {
            path.to_owned()
        } else {
            format!("/api/v1/billing{path}")
        };
        let path = path.as_str();
        listed += 1;
        assert!(
            doc["paths"][path][method.to_lowercase()].is_object(),
            "README lists {method} {path}, the OpenAPI document does not"
        );
    }
    assert!(
        listed >= 15,
        "the README's API table was found ({listed} routes)"
    );
}

#[tokio::test]
async fn no_endpoint_lets_one_customer_see_or_change_anothers_billing() {
    let app = spawn_app_with_stripe_webhooks().await;
    app.sync_catalog().await;
    let sub = app.subscribe_via_checkout("alice", "premium").await;
    let alice_stripe: String =
        sqlx::query_scalar("SELECT stripe_customer_id FROM customers WHERE customer_id = 'alice'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let before: (String, String, bool) = sqlx::query_as(
        "SELECT plan_type, status, cancel_at_period_end FROM subscriptions WHERE customer_id = 'alice'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();

    let doc = openapi(&app).await;
    let mut tried = 0;
    for (method, path, op) in operations(&doc) {
        let secured_by = op["security"][0]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>());
        let body = match method {
            Method::POST | Method::PATCH => Some(json!({"plan": "enterprise"})),
            _ => None,
        };
        let r = app.call_as("bob", method.clone(), &path, body).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        if secured_by.as_deref() == Some(&["service_token".to_owned()][..]) {
            assert_eq!(status, 401, "{method} {path} takes a customer token");
            continue;
        }
        tried += 1;
        assert!(
            !text.contains(&alice_stripe) && !text.contains(&sub) && !text.contains("alice"),
            "{method} {path} answered bob with alice's data: {text}"
        );
        assert_ne!(status, 500, "{method} {path}: {text}");
    }
    assert!(tried >= 12, "customer endpoints tried: {tried}");
    let after: (String, String, bool) = sqlx::query_as(
        "SELECT plan_type, status, cancel_at_period_end FROM subscriptions WHERE customer_id = 'alice'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(before, after, "alice's subscription is untouched");
}

#[tokio::test]
async fn a_customer_over_the_rate_limit_gets_429_with_retry_after_and_others_do_not() {
    let app = spawn_app_and(|c| {
        c.control_plane.http.rate_limit_per_minute = 6;
        c.control_plane.http.rate_limit_burst = 3;
    })
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let r = app
            .call_as("busy", Method::GET, "/api/v1/billing/usage", None)
            .await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let wait: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=11).contains(&wait), "{wait}");
    let other = app
        .call_as("calm", Method::GET, "/api/v1/billing/usage", None)
        .await;
    assert_eq!(other.status(), 200, "budgets are per customer");
}

#[tokio::test]
async fn cors_allows_the_configured_frontend_only_and_big_bodies_are_refused() {
    let app = spawn_app_and(|c| {
        c.control_plane.http.cors_allowed_origins = vec!["https://app.example.com".into()];
        c.control_plane.http.body_limit_bytes = 64 * 1024;
    })
    .await;
    let preflight = |origin: &'static str| {
        app.http
            .request(Method::OPTIONS, app.url("/api/v1/billing/usage"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        ok.headers().get("access-control-allow-origin").unwrap(),
        "https://app.example.com"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let big = "x".repeat(200 * 1024);
    let r = app
        .http
        .post(app.url("/internal/v1/usage/batch"))
        .bearer_auth(&app.service_token)
        .header("content-type", "application/json")
        .body(format!("{{\"events\": [], \"pad\": \"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}
