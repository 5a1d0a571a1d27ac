//! A tiny stand-in for the ticket API that tollgate sits in front of (the demo's and the
//! tests' upstream). It never knows tollgate exists.
//!
//! Test controls, by request header: `x-standin-status: 503` answers with that status,
//! `x-standin-delay-ms: 200` answers late, `x-standin-body-delay-ms: 200` sends the
//! headers at once and the body late. `GET /_standin/stats` counts what arrived, so a
//! test can prove a refused request never reached the upstream.
//!
//! It routes as loosely as common web frameworks do, so tests can prove no spelling of
//! a metered route slips past the proxy: the path is percent-decoded (fully, `%2F`
//! included), slashes merged, `.`/`..` resolved, `;parameters` dropped and letter case
//! ignored; the method is upper-cased and `X-HTTP-Method-Override` honoured. A created
//! ticket echoes the path as it arrived (`received_path`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Parser)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
}

#[derive(Default)]
struct Stats {
    ticket_posts: AtomicU64,
    chat_posts: AtomicU64,
    reads: AtomicU64,
}

type Shared = Arc<Stats>;

async fn controlled(headers: &HeaderMap) -> Option<StatusCode> {
    if let Some(ms) = headers
        .get("x-standin-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    headers
        .get("x-standin-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
}

/// The path as the client sent it, before loose routing rewrote it.
#[derive(Clone)]
struct ReceivedPath(String);

async fn create_ticket(
    State(stats): State<Shared>,
    headers: HeaderMap,
    axum::Extension(received): axum::Extension<ReceivedPath>,
    body: String,
) -> Response {
    stats.ticket_posts.fetch_add(1, Ordering::Relaxed);
    if let Some(status) = controlled(&headers).await {
        return (
            status,
            Json(json!({ "error": "forced by x-standin-status" })),
        )
            .into_response();
    }
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let id = uuid::Uuid::new_v4();
    let ticket = json!({
        "id": id,
        "title": request.get("title").cloned().unwrap_or(json!("Untitled")),
        "status": "open",
        "received_path": received.0,
    });
    if let Some(ms) = headers
        .get("x-standin-body-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        // Headers now, the body later: a slow upstream body.
        let bytes = ticket.to_string();
        let stream = futures_util::stream::once(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, std::convert::Infallible>(bytes)
        });
        return Response::builder()
            .status(StatusCode::CREATED)
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    (StatusCode::CREATED, Json(ticket)).into_response()
}

/// Rewrites a request the way a loosely routing framework would before routing it.
fn loosely_routed(mut request: Request<Body>) -> Request<Body> {
    let raw = request.uri().path().to_owned();
    request.extensions_mut().insert(ReceivedPath(raw.clone()));
    let mut decoded = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            decoded.push((h * 16 + l) as u8);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8_lossy(&decoded).to_lowercase();
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let path = format!("/{}", segments.join("/"));
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if let Ok(uri) = format!("{path}{query}").parse::<Uri>() {
        *request.uri_mut() = uri;
    }
    let method = request
        .headers()
        .get("x-http-method-override")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| request.method().as_str().to_owned())
        .to_ascii_uppercase();
    if let Ok(method) = Method::from_bytes(method.as_bytes()) {
        *request.method_mut() = method;
    }
    request
}

async fn list_tickets(State(stats): State<Shared>, headers: HeaderMap) -> Response {
    stats.reads.fetch_add(1, Ordering::Relaxed);
    if let Some(status) = controlled(&headers).await {
        return (status, Json(json!({ "error": "forced" }))).into_response();
    }
    Json(json!({ "tickets": [] })).into_response()
}

async fn chat(State(stats): State<Shared>, headers: HeaderMap) -> Response {
    stats.chat_posts.fetch_add(1, Ordering::Relaxed);
    if let Some(status) = controlled(&headers).await {
        return (status, Json(json!({ "error": "forced" }))).into_response();
    }
    Json(json!({ "reply": "How can I help with your ticket?" })).into_response()
}

async fn stats(State(stats): State<Shared>) -> Json<Value> {
    Json(json!({
        "ticket_posts": stats.ticket_posts.load(Ordering::Relaxed),
        "chat_posts": stats.chat_posts.load(Ordering::Relaxed),
        "reads": stats.reads.load(Ordering::Relaxed),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let app = Router::new()
        .route("/api/v1/tickets", get(list_tickets).post(create_ticket))
        .route("/api/v1/chat", post(chat))
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/_standin/stats", get(stats))
        .with_state(Shared::default());
    let app = tower::ServiceBuilder::new()
        .map_request(loosely_routed)
        .service(app);
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    eprintln!("ticket-api-standin listening on {}", listener.local_addr()?);
    axum::serve(listener, tower::make::Shared::new(app)).await?;
    Ok(())
}
