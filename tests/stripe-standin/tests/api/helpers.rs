//! Test harness: a stand-in on port 0, an async-stripe client pointed at it, a raw HTTP client
//! for the stand-in-only helpers, and a webhook receiver that verifies every delivery with
//! `stripe_webhook::Webhook::construct_event`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use stripe_standin::{Config, Running};
use stripe_webhook::{EventObject, Webhook};

pub const WEBHOOK_SECRET: &str = "whsec_test_standin_secret";
pub const API_KEY: &str = "sk_test_standin";

/// One event as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub kind: String,
    /// `EventObject::Unknown`: the type was not parsed into its object.
    pub unknown: bool,
}

#[derive(Default)]
pub struct Inbox {
    pub events: Vec<Received>,
    pub rejected: Vec<String>,
}

async fn receive(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let payload = String::from_utf8_lossy(&body).into_owned();
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match Webhook::construct_event(&payload, signature, WEBHOOK_SECRET) {
        Ok(event) => {
            let unknown = matches!(event.data.object, EventObject::Unknown(_));
            inbox.lock().unwrap().events.push(Received {
                id: event.id.as_str().to_string(),
                kind: event.type_.as_str().to_string(),
                unknown,
            });
            StatusCode::OK
        }
        Err(e) => {
            let kind = serde_json::from_str::<Value>(&payload)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_string));
            inbox
                .lock()
                .unwrap()
                .rejected
                .push(format!("{kind:?}: {e}"));
            StatusCode::BAD_REQUEST
        }
    }
}

pub struct TestApp {
    pub standin: Running,
    pub client: stripe::Client,
    pub http: reqwest::Client,
    pub inbox: Arc<Mutex<Inbox>>,
}

/// A stand-in with webhooks delivered to an in-test receiver.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let inbox = Arc::new(Mutex::new(Inbox::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    let receiver = Router::new()
        .route("/webhooks", post(receive))
        .with_state(inbox.clone());
    tokio::spawn(async move {
        axum::serve(listener, receiver).await.unwrap();
    });
    let mut config = Config {
        webhook_url: Some(format!("http://{hook_addr}/webhooks")),
        webhook_secret: WEBHOOK_SECRET.into(),
        api_key: Some(API_KEY.into()),
        webhook_retry_base: Duration::from_millis(100),
        ..Config::default()
    };
    adjust(&mut config);
    let standin = stripe_standin::spawn(config).await.unwrap();
    let client = stripe::ClientBuilder::new(API_KEY)
        .url(standin.url.clone())
        .build()
        .unwrap();
    TestApp {
        standin,
        client,
        http: reqwest::Client::new(),
        inbox,
    }
}

impl TestApp {
    /// POSTs a form to a stand-in path (for the stand-in-only helpers).
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.standin.url))
            .bearer_auth(API_KEY)
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.standin.url))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the stand-in has no delivery in flight.
    pub async fn webhooks_settled(&self) {
        for _ in 0..600 {
            let (_, d) = self.get("/v1/test_helpers/webhooks/deliveries").await;
            if d["pending"] == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("webhook deliveries did not settle");
    }

    pub fn received(&self) -> Vec<Received> {
        self.inbox.lock().unwrap().events.clone()
    }

    pub fn rejected(&self) -> Vec<String> {
        self.inbox.lock().unwrap().rejected.clone()
    }
}

/// The id of an expandable invoice (invoice ids are optional: previews have none).
pub fn invoice_id(invoice: &stripe_types::Expandable<stripe_shared::Invoice>) -> String {
    invoice
        .id()
        .as_ref()
        .expect("a stored invoice has an id")
        .as_str()
        .to_string()
}
