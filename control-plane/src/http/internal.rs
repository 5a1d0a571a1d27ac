//! Internal endpoints (service token): what proxies and the ticket backend call.

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ServiceCaller};
use crate::entitlements::EntitlementError;
use crate::ledger::{self, IngestOutcome};
use axum::Json;
use axum::extract::{Path, State};
use billing_model::{CustomerId, EntitlementSnapshot, UsageBatch};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(snapshot))
        .routes(routes!(publish))
        .routes(routes!(ingest))
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
#[utoipa::path(get, path = "/internal/v1/entitlements/{customer}", tag = "internal", params(("customer" = String, Path, description = "the ticket API's user id")), security(("service_token" = [])), responses((status = 200, description = "entitlement snapshot")))]
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
#[utoipa::path(post, path = "/internal/v1/entitlements/{customer}/publish", tag = "internal", params(("customer" = String, Path, description = "the ticket API's user id")), security(("service_token" = [])), responses((status = 200, description = "published update")))]
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
#[utoipa::path(post, path = "/internal/v1/usage/batch", tag = "internal", security(("service_token" = [])), responses((status = 200, description = "stored and duplicate counts"), (status = 422, description = "validation_failed: nothing stored")))]
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
    state
        .metrics
        .credit_burned_cents
        .inc_by(u64::try_from(outcome.credit_burned_cents).unwrap_or(0));
    // Balance changes reach the proxies (their counters already enforce them; the
    // snapshot keeps the figures they show and seed from current).
    for customer in &outcome.credit_customers {
        if let Err(e) = state.publisher.publish(customer).await {
            tracing::warn!(error = %e, customer = %customer, "publishing the new credit balance failed");
        }
    }
    // Thresholds are checked off the response path.
    if state.notifications.is_some() {
        let mut customers: Vec<CustomerId> =
            batch.events.iter().map(|e| e.customer_id.clone()).collect();
        customers.sort();
        customers.dedup();
        let state = state.clone();
        tokio::spawn(async move {
            crate::notifications::check_usage(&state, &customers).await;
        });
    }
    Ok(Json(outcome))
}
