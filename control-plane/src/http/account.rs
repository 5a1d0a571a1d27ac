//! What the frontend renders: entitlements, credits and the subscription as stored.

use super::AppState;
use super::error::ApiError;
use super::extract::AuthenticatedCustomer;
use axum::Json;
use axum::extract::State;
use billing_model::{CustomerId, Enforcement, Money};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(entitlements))
        .routes(routes!(credits))
        .routes(routes!(subscription))
}

#[utoipa::path(get, path = "/api/v1/billing/entitlements", tag = "account", security(("customer_jwt" = [])), responses((status = 200, description = "what the frontend renders: chat_enabled, remaining, upgrade suggestion")))]
async fn entitlements(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let s = state.publisher.entitlements().snapshot(&customer).await?;
    let hard_limit = !matches!(s.enforcement(), Enforcement::PaidOverage);
    let exhausted = s.is_exhausted();
    // Suggest the next plan up when a hard limit is reached or near (80 %).
    let near_limit = s
        .remaining()
        .zip(match s.enforcement() {
            Enforcement::HardLimit { limit, .. } => Some(limit),
            Enforcement::PaidOverage => None,
        })
        .is_some_and(|(remaining, limit)| remaining * 5 <= limit);
    let upgrade_suggestion = if near_limit {
        let current = state.catalog.iter().position(|p| *p.id() == s.plan);
        current
            .and_then(|i| state.catalog.plans().get(i + 1))
            .map(|p| p.id().to_string())
    } else {
        None
    };
    Ok(Json(json!({
        "plan": s.plan.to_string(),
        "billing_model": s.billing_model,
        "status": s.status,
        "chat_enabled": s.chat_allowed(),
        "hard_limit": hard_limit,
        "remaining": s.remaining(),
        "exhausted": exhausted,
        "period_end": s.period_end.format(&time::format_description::well_known::Rfc3339).ok(),
        "upgrade_suggestion": upgrade_suggestion,
        "upgrade_url": s.upgrade_url,
    })))
}

#[derive(Debug, Serialize)]
struct GrantView {
    id: uuid::Uuid,
    credit_amount: Money,
    used_amount: Money,
    remaining_amount: Money,
    unit_price: Money,
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    closed_at: Option<OffsetDateTime>,
    closed_reason: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/billing/credits", tag = "credits", security(("customer_jwt" = [])), responses((status = 200, description = "balance and grants with expiry")))]
async fn credits(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let rows = sqlx::query!(
        r#"SELECT id, credit_amount, used_amount, remaining_amount AS "remaining_amount!",
                  unit_price, expires_at, closed_at, closed_reason
           FROM billing_credits WHERE customer_id = $1 ORDER BY created_at"#,
        customer.as_str()
    )
    .fetch_all(&state.pool)
    .await?;
    let money = |d| Money::from_decimal_exact(d).unwrap_or(Money::ZERO);
    let grants: Vec<GrantView> = rows
        .into_iter()
        .map(|r| GrantView {
            id: r.id,
            credit_amount: money(r.credit_amount),
            used_amount: money(r.used_amount),
            remaining_amount: money(r.remaining_amount),
            unit_price: money(r.unit_price),
            expires_at: r.expires_at,
            closed_at: r.closed_at,
            closed_reason: r.closed_reason,
        })
        .collect();
    let snapshot = state.publisher.entitlements().snapshot(&customer).await?;
    let balance = crate::ledger::credit_balance(&state.pool, &customer).await?;
    Ok(Json(json!({
        "balance": balance,
        "units_remaining": snapshot.credit_units_purchased.saturating_sub(snapshot.credit_units_used),
        "grants": grants,
    })))
}

#[utoipa::path(get, path = "/api/v1/billing/subscriptions", tag = "subscriptions", security(("customer_jwt" = [])), responses((status = 200, description = "plan, model, status, period, cancel_at_period_end, next invoice estimate")))]
async fn subscription(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(subscription_view(&state, &customer).await?))
}

/// Plan, model, status, period, cancellation, pending downgrade, grace, and the next
/// invoice as Stripe estimates it plus the overage so far.
pub async fn subscription_view(state: &AppState, customer: &CustomerId) -> Result<Value, ApiError> {
    // The row the entitlements are computed from: what is shown is what is enforced.
    let row = {
        let mut conn = state.pool.acquire().await?;
        crate::subscription_store::plan_row(&mut conn, customer.as_str()).await?
    };
    let snapshot = state.publisher.entitlements().snapshot(customer).await?;
    let rfc = |t: Option<OffsetDateTime>| {
        t.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
    };
    let overage = crate::ledger::overage_so_far(&state.catalog, &snapshot);
    Ok(match row {
        None => json!({
            "plan": snapshot.plan.to_string(),
            "billing_model": snapshot.billing_model,
            "status": "active",
            "current_period_start": rfc(Some(snapshot.period_start)),
            "current_period_end": rfc(Some(snapshot.period_end)),
            "cancel_at_period_end": false,
            "pending_plan": null,
            "grace_until": null,
            "stripe_subscription": false,
            "next_invoice": null,
        }),
        Some(r) => {
            let next_invoice = match (&r.stripe_subscription_id, &state.stripe) {
                (Some(sub), Some(gateway))
                    if !r.cancel_at_period_end && r.status().is_some_and(|s| s.is_live()) =>
                {
                    match gateway.upcoming_invoice(sub).await {
                        Ok((cents, at)) => {
                            let base = Money::from_cents(cents);
                            json!({
                                "subscription_amount": base,
                                "overage_so_far": overage,
                                "estimated_total": base.checked_add(overage).unwrap_or(base),
                                "at": rfc(OffsetDateTime::from_unix_timestamp(at).ok()),
                            })
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "next invoice estimate unavailable");
                            Value::Null
                        }
                    }
                }
                _ => Value::Null,
            };
            // A credit-model row's 30-day periods roll on without being stored: the one
            // shown is the entitlement's, which its usage counts in. A Stripe
            // subscription's is Stripe's, as stored.
            let on_credits = r.stripe_subscription_id.is_none()
                && r.status() != Some(crate::subscription_store::SubscriptionStatus::Canceled);
            let (start, end) = if on_credits {
                (Some(snapshot.period_start), Some(snapshot.period_end))
            } else {
                (r.current_period_start, r.current_period_end)
            };
            json!({
                "plan": r.plan_type,
                "billing_model": r.billing_model,
                "status": r.status,
                "current_period_start": rfc(start),
                "current_period_end": rfc(end),
                "cancel_at_period_end": r.cancel_at_period_end,
                "pending_plan": r.pending_plan_type,
                "grace_until": rfc(r.grace_until),
                "stripe_subscription": r.stripe_subscription_id.is_some(),
                "next_invoice": next_invoice,
            })
        }
    })
}
