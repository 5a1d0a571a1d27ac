//! The proxy's own small HTTP app on `metrics_listen`: health and Prometheus metrics.
//! Kept off the traffic port so no ticket API path is ever shadowed.

use async_trait::async_trait;
use http::{Response, StatusCode, header};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};

pub struct AdminApp;

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => {
                let mut buf = Vec::new();
                let _ = TextEncoder::new().encode(&prometheus::gather(), &mut buf);
                respond(StatusCode::OK, "text/plain; version=0.0.4", buf)
            }
            "/health/live" | "/health/ready" => respond(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            _ => respond(
                StatusCode::NOT_FOUND,
                "application/problem+json",
                br#"{"type":"https://tollgate.dev/problems/not_found","title":"Not Found","status":404,"code":"not_found"}"#.to_vec(),
            ),
        }
    }
}
