//! A tiny stand-in for the ticket API that tollgate sits in front of (the demo's and the
//! tests' upstream). It never knows tollgate exists.
//!
//! Test controls, by request header: `x-standin-status: 503` answers with that status,
//! `x-standin-delay-ms: 200` answers late. `GET /_standin/stats` counts what arrived, so a
//! test can prove a refused request never reached the upstream.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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

async fn create_ticket(State(stats): State<Shared>, headers: HeaderMap, body: String) -> Response {
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
    (
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "title": request.get("title").cloned().unwrap_or(json!("Untitled")),
            "status": "open",
        })),
    )
        .into_response()
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
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    eprintln!("ticket-api-standin listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
