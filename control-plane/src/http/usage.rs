//! The customer's usage: the current period and history from the ledger.

use super::AppState;
use super::error::ApiError;
use super::extract::AuthenticatedCustomer;
pub use crate::ledger::{Granularity, HistoryBucket};
use axum::Json;
use axum::extract::{Query, State};
use billing_model::{Enforcement, Money, PlanId, overage_amount, overage_units};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(current))
        .routes(routes!(history))
}

#[derive(Debug, Serialize)]
pub struct UsageView {
    pub plan: String,
    pub billing_model: billing_model::BillingModel,
    #[serde(with = "time::serde::rfc3339")]
    pub period_start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub period_end: OffsetDateTime,
    pub included: u64,
    pub used: u64,
    /// Left before a hard limit or before overage starts.
    pub remaining: u64,
    pub overage_units: u64,
    pub overage_amount: Money,
    pub credit_units_remaining: u64,
    pub credit_balance: Money,
}

#[utoipa::path(get, path = "/api/v1/billing/usage", tag = "usage", security(("customer_jwt" = [])), responses((status = 200, description = "this period: included, used, remaining, overage, credits")))]
async fn current(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    State(state): State<AppState>,
) -> Result<Json<UsageView>, ApiError> {
    let s = state.publisher.entitlements().snapshot(&customer).await?;
    let plan = PlanId::parse(s.plan.as_str())
        .ok()
        .and_then(|id| state.catalog.get(&id).cloned())
        .ok_or_else(|| anyhow::anyhow!("plan {} is not in the catalog", s.plan))?;
    let fixed_fee_overage = matches!(s.enforcement(), Enforcement::PaidOverage);
    let (overage_u, overage_amt) = if fixed_fee_overage {
        (
            overage_units(plan.included_units(), s.units_used),
            overage_amount(&plan, s.units_used).map_err(|e| anyhow::anyhow!(e))?,
        )
    } else {
        (0, Money::ZERO)
    };
    let balance = crate::ledger::credit_balance(&state.pool, &customer).await?;
    Ok(Json(UsageView {
        plan: s.plan.to_string(),
        billing_model: s.billing_model,
        period_start: s.period_start,
        period_end: s.period_end,
        included: s.included_units,
        used: s.units_used,
        remaining: s.included_units.saturating_sub(s.units_used),
        overage_units: overage_u,
        overage_amount: overage_amt,
        credit_units_remaining: s.credit_units_purchased.saturating_sub(s.credit_units_used),
        credit_balance: balance,
    }))
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    #[serde(default)]
    pub granularity: Granularity,
}

#[utoipa::path(get, path = "/api/v1/billing/usage/history", tag = "usage", params(("from" = String, Query, description = "RFC 3339"), ("to" = String, Query, description = "RFC 3339"), ("granularity" = Option<String>, Query, description = "day (default) or period")), security(("customer_jwt" = [])), responses((status = 200, description = "usage buckets from the ledger")))]
async fn history(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<HistoryBucket>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::Validation {
        field: "query".into(),
        message: e.body_text(),
    })?;
    if q.to <= q.from {
        return Err(ApiError::Validation {
            field: "to".into(),
            message: "must be after `from`".into(),
        });
    }
    if q.to - q.from > time::Duration::days(400) {
        return Err(ApiError::Validation {
            field: "to".into(),
            message: "a history spans at most 400 days".into(),
        });
    }
    let buckets =
        crate::ledger::history(&state.pool, &customer, q.from, q.to, q.granularity).await?;
    Ok(Json(buckets))
}
