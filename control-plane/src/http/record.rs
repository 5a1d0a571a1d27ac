//! `POST /api/v1/billing/usage/record` (service token): usage that does not pass through
//! the proxy, e.g. `agent_interaction` reported by the ticket backend. Same idempotency
//! (event id), the same limits checked and consumed atomically in the same Redis
//! counters, and the same decision as the proxy ([`billing_model::admission`]): the same
//! status, code and body for the same situation.

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ServiceCaller};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use billing_model::admission::{self, CounterAnswer, FailurePolicy, Step};
use billing_model::{Counter, CounterScope, CustomerId, Enforcement, UsageEvent, UsageType};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::Duration;
use time::OffsetDateTime;
use tollgate_runtime::counters::CounterRef;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(record))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordUsage {
    pub customer_id: CustomerId,
    pub usage_type: UsageType,
    #[serde(default = "one")]
    pub quantity: NonZeroU32,
    /// The caller's idempotency key; a retry with the same id records nothing new.
    pub event_id: Option<uuid::Uuid>,
    pub ticket_id: Option<String>,
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

#[derive(Debug, Serialize)]
pub struct Recorded {
    pub event_id: uuid::Uuid,
    /// `recorded`, or `duplicate` when this event id was recorded before.
    pub status: &'static str,
    /// Units left under a hard limit after this one (absent with paid overage).
    pub remaining: Option<u64>,
}

const BUDGET: Duration = Duration::from_secs(1);

/// How long a request whose event a concurrent retry is recording waits for that
/// record to appear before asking the caller to retry.
const CONCURRENT_RETRY_WAIT: Duration = Duration::from_secs(2);

#[utoipa::path(
    post,
    path = "/api/v1/billing/usage/record",
    tag = "usage",
    security(("service_token" = [])),
    responses(
        (status = 201, description = "recorded"),
        (status = 200, description = "this event id was recorded before (`status: duplicate`); nothing consumed"),
        (status = 402, description = "`credits_exhausted` (prepaid credits used up) or `payment_required` (payment lapsed, free allowance used up)"),
        (status = 403, description = "`usage_limit_exceeded`: the plan's included units for the period are used (Free); `Retry-After` until the period ends"),
        (status = 503, description = "`usage_check_unavailable`: limits cannot be checked right now; nothing recorded, retry with the same event id"),
    )
)]
async fn record(
    _caller: ServiceCaller,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RecordUsage>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    let event_id = request.event_id.unwrap_or_else(uuid::Uuid::now_v7);
    let duplicate = || {
        (
            StatusCode::OK,
            Json(Recorded {
                event_id,
                status: "duplicate",
                remaining: None,
            }),
        )
    };
    if crate::ledger::exists(&state.pool, event_id).await? {
        return Ok(duplicate());
    }
    let customer = request.customer_id;
    let snapshot = state.publisher.entitlements().snapshot(&customer).await?;
    let now = OffsetDateTime::now_utc();
    let units = request.quantity;
    let scope = match snapshot.enforcement() {
        Enforcement::PaidOverage => CounterScope::Period,
        Enforcement::HardLimit { counter, .. } => counter,
    };
    let counter = CounterRef::new(
        state.publisher.entitlements().keys(),
        &customer,
        Counter::for_scope(scope, snapshot.period_start),
        snapshot.used(scope),
        snapshot.period_end,
        now,
    );
    let reservation_id = event_id.simple().to_string();
    let answer = match admission::first_step(&snapshot, false) {
        Step::DecideWithoutCounter => CounterAnswer::NotAsked,
        Step::Reserve { limit, .. } => {
            match state
                .counters
                .reserve(&counter, limit, &reservation_id, units.get(), BUDGET)
                .await
            {
                Ok(r) => CounterAnswer::Reserved {
                    admitted: r.admitted,
                    committed: r.committed,
                    in_flight: r.in_flight,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "usage check unavailable");
                    CounterAnswer::Unavailable
                }
            }
        }
    };
    // The control plane has no fallback for an unreachable Redis: nothing is recorded
    // and the caller retries with the same event id.
    let decision = admission::decide(&snapshot, units.get(), answer, FailurePolicy::Deny, 0, now);
    if let Some(problem) = decision.refusal {
        return Err(ApiError::Refused(Box::new(problem), decision.retry_after));
    }
    let held = decision.outcome.holds_a_unit();
    let reserved = if held { units.get() } else { 0 };

    // Count first, record second: the ledger must never hold a unit the counter has
    // not counted, or raising the counter to the ledger would count it twice.
    match state
        .counters
        .commit(&counter, &reservation_id, reserved, units.get())
        .await
    {
        Ok(c) if c.duplicate => {
            // A concurrent retry of this event counted it and is recording it; the unit
            // this request just reserved is not needed.
            if held {
                let _ = state
                    .counters
                    .release(&counter, &reservation_id, units.get())
                    .await;
            }
            let deadline = tokio::time::Instant::now() + CONCURRENT_RETRY_WAIT;
            while tokio::time::Instant::now() < deadline {
                if crate::ledger::exists(&state.pool, event_id).await? {
                    return Ok(duplicate());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // No record came: the commit that left the marker never got its record
            // (its answer was lost, or its ledger write failed). Take it back so the
            // caller's retry counts afresh; if a slow writer records it after all, the
            // counter is behind the ledger, which reconciliation raises.
            let _ = state
                .counters
                .uncommit(&counter, &reservation_id, units.get())
                .await;
            return Err(ApiError::Refused(
                Box::new(billing_model::Problem::usage_check_unavailable()),
                Some(1),
            ));
        }
        Ok(_) => {}
        Err(e) if !held => {
            // Paid overage: the counter only reports; the ledger raises it later.
            tracing::warn!(error = %e, "counter commit failed; recording anyway (paid overage)");
        }
        Err(e) => {
            // The commit may have run with its answer lost: take it back (guarded by
            // its marker, so only if it did) and give the reservation back.
            tracing::warn!(error = %e, "counter commit failed; nothing recorded");
            let _ = state
                .counters
                .uncommit(&counter, &reservation_id, units.get())
                .await;
            let _ = state
                .counters
                .release(&counter, &reservation_id, units.get())
                .await;
            return Err(ApiError::Refused(
                Box::new(billing_model::Problem::usage_check_unavailable()),
                Some(1),
            ));
        }
    }
    let event = UsageEvent {
        event_id,
        customer_id: customer.clone(),
        usage_type: request.usage_type,
        quantity: units,
        occurred_at: now,
        period_start: snapshot.period_start,
        period_end: snapshot.period_end,
        ticket_id: request.ticket_id,
        billing_model: Some(snapshot.billing_model),
    };
    let uncommit = || async {
        if let Err(e) = state
            .counters
            .uncommit(&counter, &reservation_id, units.get())
            .await
        {
            tracing::warn!(error = %e, "could not take back a commit whose record failed");
        }
    };
    let outcome = match crate::ledger::ingest(&state.pool, std::slice::from_ref(&event)).await {
        Ok(o) => o,
        Err(e) => {
            uncommit().await;
            return Err(e.into());
        }
    };
    if outcome.inserted == 0 {
        // Recorded before, by a retry whose marker has expired: count nothing twice.
        uncommit().await;
        return Ok(duplicate());
    }
    for customer in &outcome.credit_customers {
        let _ = state.publisher.publish(customer).await;
    }
    if state.notifications.is_some() {
        let state = state.clone();
        tokio::spawn(async move {
            crate::notifications::check_usage(&state, std::slice::from_ref(&customer)).await;
        });
    }
    Ok((
        StatusCode::CREATED,
        Json(Recorded {
            event_id,
            status: "recorded",
            remaining: decision.quota.map(|q| q.remaining).filter(|_| held),
        }),
    ))
}
