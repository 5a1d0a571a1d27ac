//! `POST /api/v1/webhooks/stripe`: verify, persist, answer (the inbox and its worker are
//! `crate::webhooks`).

use super::AppState;
use super::error::ApiError;
use crate::signature;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive))
}

/// The parts of a Stripe event tollgate reads before storing it.
#[derive(Debug, Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    data: EnvelopeData,
}

#[derive(Debug, Deserialize)]
struct EnvelopeData {
    object: Value,
}

#[utoipa::path(post, path = "/api/v1/webhooks/stripe", tag = "webhooks",
    request_body(content = String, content_type = "application/json", description = "a Stripe event, verified against `Stripe-Signature`"),
    responses((status = 200, description = "stored (or a duplicate)"), (status = 400, description = "missing_signature | invalid_signature | timestamp_out_of_tolerance | malformed_event")))]
async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Some(webhooks) = state.webhooks.as_ref() else {
        return Err(ApiError::BillingUnavailable);
    };
    let reject = |code: &'static str, message: String| {
        state
            .metrics
            .webhook_events
            .with_label_values(&["unknown", "rejected", code])
            .inc();
        ApiError::BadWebhook { code, message }
    };
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Err(e) = signature::verify(
        header,
        &body,
        &webhooks.secrets,
        webhooks.tolerance_seconds,
        now,
    ) {
        return Err(reject(e.code(), e.to_string()));
    }
    let envelope: Envelope = serde_json::from_slice(&body)
        .map_err(|e| reject("malformed_payload", format!("not a Stripe event: {e}")))?;
    if !envelope.id.starts_with("evt_") || !envelope.data.object.is_object() {
        return Err(reject("malformed_payload", "not a Stripe event".into()));
    }
    let payload: Value =
        serde_json::from_slice(&body).map_err(|e| reject("malformed_payload", e.to_string()))?;
    let duplicate = !crate::webhooks::inbox::store(
        &state.pool,
        &envelope.id,
        &envelope.kind,
        envelope.created,
        &payload,
    )
    .await?;
    state
        .metrics
        .webhook_events
        .with_label_values(&[
            envelope.kind.as_str(),
            if duplicate { "duplicate" } else { "received" },
            "",
        ])
        .inc();
    if !duplicate {
        webhooks.wake.notify_one();
    }
    Ok(Json(json!({ "received": true, "duplicate": duplicate })))
}
