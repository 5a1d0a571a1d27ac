//! `Idempotency-Key`: the first response to a key (status and body) is replayed for every
//! later request with the same key; the same key with different parameters is a 400
//! `idempotency_error`, and a key whose first request is still running is a 409.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::errors::ApiError;

#[derive(Debug, Clone)]
enum Entry {
    InFlight {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

/// Responses by idempotency key (kept for the life of the process; Stripe keeps ≥ 24 h).
#[derive(Debug, Clone, Default)]
pub struct Cache(Arc<Mutex<HashMap<String, Entry>>>);

impl Cache {
    /// Forgets every key, as Stripe does once a key is 24 h old (a test helper: the
    /// stand-in otherwise keeps keys for its whole life). Returns how many were kept.
    pub fn forget_all(&self) -> usize {
        let mut keys = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = keys.len();
        keys.clear();
        n
    }
}

/// What makes two requests "the same": method, path and the parameters in any order.
fn fingerprint(method: &str, path: &str, query: &str, body: &[u8]) -> String {
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let body_pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .unwrap_or_else(|_| vec![(String::new(), String::from_utf8_lossy(body).into_owned())]);
    pairs.extend(body_pairs);
    pairs.sort();
    format!("{method} {path} {pairs:?}")
}

/// Serves a POST carrying an idempotency key.
pub async fn handle(cache: &Cache, key: String, req: Request, next: Next) -> Response {
    if key.len() > 255 {
        return ApiError::bad_request("Idempotency keys can be at most 255 characters long.")
            .into_response();
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 2 << 20).await else {
        return ApiError::bad_request("The request body could not be read.").into_response();
    };
    let fp = fingerprint(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or_default(),
        &bytes,
    );
    {
        let mut map = cache.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(Entry::InFlight { fingerprint }) | Some(Entry::Done { fingerprint, .. })
                if *fingerprint != fp =>
            {
                return ApiError::idempotency_mismatch(&key).into_response();
            }
            Some(Entry::InFlight { .. }) => {
                return ApiError::idempotency_in_flight().into_response();
            }
            Some(Entry::Done {
                status,
                headers,
                body,
                ..
            }) => {
                let mut response = Response::new(Body::from(body.clone()));
                *response.status_mut() = *status;
                *response.headers_mut() = headers.clone();
                response.headers_mut().insert(
                    "idempotent-replayed",
                    "true".parse().expect("static header"),
                );
                return response;
            }
            None => {
                map.insert(
                    key.clone(),
                    Entry::InFlight {
                        fingerprint: fp.clone(),
                    },
                );
            }
        }
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let mut map = cache.0.lock().unwrap_or_else(|p| p.into_inner());
    if parts.status == StatusCode::CONFLICT || parts.status == StatusCode::UNAUTHORIZED {
        // nothing ran: the key stays free
        map.remove(&key);
    } else {
        map.insert(
            key,
            Entry::Done {
                fingerprint: fp,
                status: parts.status,
                headers: parts.headers.clone(),
                body: body.clone(),
            },
        );
    }
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_order_does_not_change_the_fingerprint() {
        let a = fingerprint("POST", "/v1/customers", "", b"email=a%40b.c&name=A");
        let b = fingerprint("POST", "/v1/customers", "", b"name=A&email=a%40b.c");
        assert_eq!(a, b);
        let c = fingerprint("POST", "/v1/customers", "", b"name=B&email=a%40b.c");
        assert_ne!(a, c);
        let d = fingerprint("POST", "/v1/products", "", b"name=A&email=a%40b.c");
        assert_ne!(a, d);
    }
}
