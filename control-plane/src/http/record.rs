//! `POST /api/v1/billing/usage/record` (service token): usage that does not pass through
//! the proxy, e.g. `agent_interaction` reported by the ticket backend. Same idempotency
//! (event id), the same limits checked and consumed atomically in the same Redis
//! counters, the same refusal codes.

use super::AppState;
use super::error::{ApiError, Refusal};
use super::extract::{ApiJson, ServiceCaller};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use billing_model::counters::CounterRef;
use billing_model::{Counter, CustomerId, Enforcement, RefusalCode, UsageEvent, UsageType};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::Duration;
use time::OffsetDateTime;
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

#[utoipa::path(post, path = "/api/v1/billing/usage/record", tag = "usage", security(("service_token" = [])), responses((status = 200, description = "recorded (or a duplicate)"), (status = 402, description = "credits_exhausted"), (status = 429, description = "usage_limit_reached")))]
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
    let (scope, limit) = match snapshot.enforcement() {
        Enforcement::PaidOverage => (billing_model::CounterScope::Period, None),
        Enforcement::HardLimit {
            limit,
            counter,
            code,
        } => (counter, Some((limit, code))),
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
    let mut remaining = None;
    if let Some((limit, code)) = limit {
        let r = state
            .counters
            .reserve(&counter, limit, &reservation_id, units.get(), BUDGET)
            .await
            .map_err(|_| ApiError::LimitsUnavailable)?;
        if !r.admitted {
            let (status, detail) = match code {
                RefusalCode::CreditsExhausted => (402, "Your prepaid ticket credits are used up."),
                RefusalCode::PaymentRequired => (402, "Payment is required to continue."),
                _ => (403, "The plan's included usage for this period is used up."),
            };
            return Err(ApiError::Refused(Box::new(Refusal {
                status,
                code: code.as_str(),
                detail: detail.to_owned(),
                plan: snapshot.plan.to_string(),
                limit,
                used: r.committed,
                period_end: snapshot.period_end,
                upgrade_url: snapshot.upgrade_url.clone(),
            })));
        }
        remaining = Some(limit.saturating_sub(r.committed + r.in_flight));
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
    };
    let reserved = limit.is_some().then_some(reservation_id.as_str());
    let outcome = match crate::ledger::ingest(&state.pool, std::slice::from_ref(&event)).await {
        Ok(o) => o,
        Err(e) => {
            if reserved.is_some() {
                let _ = state
                    .counters
                    .release(&counter, &reservation_id, units.get())
                    .await;
            }
            return Err(e.into());
        }
    };
    if outcome.inserted == 0 {
        // A concurrent retry with the same id won the race: consume nothing twice.
        if reserved.is_some() {
            let _ = state
                .counters
                .release(&counter, &reservation_id, units.get())
                .await;
        }
        return Ok(duplicate());
    }
    if let Err(e) = state.counters.commit(&counter, reserved, units.get()).await {
        // The unit is in the ledger; counters are raised to the ledger on the next
        // snapshot, and the reservation expires meanwhile.
        tracing::warn!(error = %e, "counter commit failed after recording usage");
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
            remaining,
        }),
    ))
}
