#![recursion_limit = "256"]
//! A stateful Stripe stand-in for tollgate's tests.
//!
//! It speaks Stripe's HTTP API shapes (API version [`objects::API_VERSION`], the one
//! async-stripe 1.0.0-rc.10 sends) for customers, products, prices, Checkout, the customer
//! portal, subscriptions, invoices, invoice items, refunds, test clocks and events, and
//! delivers signed webhooks. Stand-in-only helpers live under `/v1/test_helpers/...`.
//! Stripe itself is unreachable from where tollgate's tests run; this is what they talk to.

pub mod billing;
pub mod clock;
pub mod errors;
pub mod form;
pub mod idempotency;
pub mod objects;
pub mod routes;
pub mod state;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::errors::{ApiError, ApiResult};
use crate::form::Params;
use crate::state::{RequestInfo, Store};
use crate::webhooks::{Dispatcher, WebhookSettings};

/// How the stand-in runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (`127.0.0.1:0` picks a port).
    pub listen: SocketAddr,
    /// Where events are POSTed; none means no deliveries.
    pub webhook_url: Option<String>,
    /// The endpoint secret (`whsec_...`) webhooks are signed with.
    pub webhook_secret: String,
    /// When set, requests must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Seconds between a renewal draft's `invoice.created` and its automatic finalization.
    pub draft_finalize_delay: i64,
    /// Delivery attempts per event, the first included.
    pub webhook_max_attempts: u32,
    /// First retry delay; doubles per attempt.
    pub webhook_retry_base: Duration,
    /// Longest delay between two attempts.
    pub webhook_max_backoff: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            webhook_url: None,
            webhook_secret: "whsec_standin".into(),
            api_key: None,
            draft_finalize_delay: 3600,
            webhook_max_attempts: 8,
            webhook_retry_base: Duration::from_millis(500),
            webhook_max_backoff: Duration::from_secs(10),
        }
    }
}

/// Shared state of the server.
#[derive(Clone)]
pub struct App {
    pub store: Arc<Mutex<Store>>,
    pub webhooks: Dispatcher,
    pub idempotency: idempotency::Cache,
    pub api_key: Option<Arc<str>>,
    /// `http://host:port` the stand-in answers on (for stand-in URLs such as Checkout's).
    pub public_url: Arc<str>,
}

impl App {
    /// Runs one API operation atomically on the store, then queues the events it produced
    /// for delivery (in the order they happened; delivery itself is asynchronous).
    pub fn run<T>(
        &self,
        info: &RequestInfo,
        op: impl FnOnce(&mut Store) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        store.current_request = info.clone();
        let result = op(&mut store);
        let events = std::mem::take(&mut store.outbox);
        self.webhooks.enqueue(events);
        store.current_request = RequestInfo::default();
        result
    }
}

/// A Stripe API request as handlers see it: parameters from the query string and the form
/// body merged, and the request's identity for `event.request`.
pub struct StripeRequest {
    pub params: Params,
    pub info: RequestInfo,
}

impl FromRequest<App> for StripeRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &App) -> Result<Self, Self::Rejection> {
        let info = req
            .extensions()
            .get::<RequestInfo>()
            .cloned()
            .unwrap_or_default();
        let query = req.uri().query().unwrap_or_default().to_string();
        let bytes = axum::body::to_bytes(req.into_body(), 2 << 20)
            .await
            .map_err(|_| ApiError::bad_request("The request body could not be read."))?;
        let body = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::bad_request("The request body is not UTF-8."))?;
        let mut params = form::parse(&query).map_err(ApiError::bad_request)?;
        params.merge(form::parse(body).map_err(ApiError::bad_request)?);
        Ok(Self { params, info })
    }
}

/// Auth, request ids and idempotency, in front of every API route.
async fn stripe_layer(State(app): State<App>, mut req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    if let Some(expected) = &app.api_key {
        let provided = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        if provided.as_deref() != Some(expected.as_ref()) {
            return ApiError::unauthorized(provided.as_deref()).into_response();
        }
    }
    let request_id = state::new_id("req");
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    req.extensions_mut().insert(RequestInfo {
        id: Some(request_id.clone()),
        idempotency_key: idempotency_key.clone(),
    });
    let mut response = match (req.method() == Method::POST, idempotency_key) {
        (true, Some(key)) => idempotency::handle(&app.idempotency, key, req, next).await,
        _ => next.run(req).await,
    };
    let headers = response.headers_mut();
    if !headers.contains_key("request-id")
        && let Ok(v) = HeaderValue::from_str(&request_id)
    {
        headers.insert("request-id", v);
    }
    headers.insert(
        "stripe-version",
        HeaderValue::from_static(objects::API_VERSION),
    );
    response
}

async fn not_found(req: Request) -> ApiError {
    ApiError::unrecognized_url(req.method().as_str(), req.uri().path())
}

/// The whole HTTP API.
pub fn router(app: App) -> Router {
    routes::router()
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), stripe_layer))
        .with_state(app)
}

/// A running stand-in.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// `http://addr` — give it to `ClientBuilder::url`.
    pub url: String,
    pub app: App,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds and serves in the background.
pub async fn spawn(config: Config) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let webhooks = Dispatcher::start(WebhookSettings {
        url: config.webhook_url.clone(),
        secret: config.webhook_secret.clone(),
        max_attempts: config.webhook_max_attempts,
        retry_base: config.webhook_retry_base,
        max_backoff: config.webhook_max_backoff,
    });
    let store = Store {
        draft_finalize_delay: config.draft_finalize_delay,
        webhooks_enabled: webhooks.enabled(),
        ..Store::default()
    };
    let app = App {
        store: Arc::new(Mutex::new(store)),
        webhooks,
        idempotency: idempotency::Cache::default(),
        api_key: config.api_key.as_deref().map(Arc::from),
        public_url: Arc::from(url.as_str()),
    };
    let service = router(app.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, service).await {
            tracing::error!(error = %e, "stripe stand-in stopped");
        }
    });
    Ok(Running {
        addr,
        url,
        app,
        task,
    })
}
