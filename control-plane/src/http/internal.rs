//! Internal endpoints (service token): what proxies and the ticket backend call.

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ServiceCaller};
use crate::entitlements::EntitlementError;
use crate::ledger::{self, IngestOutcome};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use billing_model::{CustomerId, EntitlementSnapshot, UsageBatch};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/internal/v1/entitlements/{customer}", get(snapshot))
        .route(
            "/internal/v1/entitlements/{customer}/publish",
            post(publish),
        )
        .route("/internal/v1/usage/batch", post(ingest))
}

fn customer_id(raw: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(raw).map_err(|e| ApiError::Validation {
        field: "customer".to_owned(),
        message: e.to_string(),
    })
}

impl From<EntitlementError> for ApiError {
    fn from(e: EntitlementError) -> Self {
        match e {
            EntitlementError::Database(e) => ApiError::Database(e),
            other => ApiError::Internal(other.into()),
        }
    }
}

/// A proxy's cache miss: the customer's entitlement now.
async fn snapshot(
    _caller: ServiceCaller,
    State(state): State<AppState>,
    Path(customer): Path<String>,
) -> Result<Json<EntitlementSnapshot>, ApiError> {
    let customer = customer_id(&customer)?;
    Ok(Json(
        state.publisher.entitlements().snapshot(&customer).await?,
    ))
}

/// Recompute and push a customer's entitlement to every proxy (operations, repairs).
async fn publish(
    _caller: ServiceCaller,
    State(state): State<AppState>,
    Path(customer): Path<String>,
) -> Result<Json<EntitlementSnapshot>, ApiError> {
    let customer = customer_id(&customer)?;
    Ok(Json(state.publisher.publish(&customer).await?))
}

/// The proxies' usage shipping: idempotent on event id, one statement per batch. A
/// batch that does not parse is refused whole, so nothing partial is stored.
async fn ingest(
    _caller: ServiceCaller,
    State(state): State<AppState>,
    ApiJson(batch): ApiJson<UsageBatch>,
) -> Result<Json<IngestOutcome>, ApiError> {
    let outcome = ledger::ingest(&state.pool, &batch.events).await?;
    state
        .metrics
        .usage_events_ingested
        .with_label_values(&["inserted"])
        .inc_by(outcome.inserted);
    state
        .metrics
        .usage_events_ingested
        .with_label_values(&["duplicate"])
        .inc_by(outcome.duplicates);
    // Balance changes reach the proxies (their counters already enforce them; the
    // snapshot keeps the figures they show and seed from current).
    for customer in &outcome.credit_customers {
        if let Err(e) = state.publisher.publish(customer).await {
            tracing::warn!(error = %e, customer = %customer, "publishing the new credit balance failed");
        }
    }
    Ok(Json(outcome))
}
