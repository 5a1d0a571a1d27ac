//! Changing the subscription: upgrade (immediate, prorated, invoiced now), cancel at the
//! period end or at once, and reactivate.

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, AuthenticatedCustomer};
use crate::stripe::{ProrationPreview, lookup_key};
use axum::extract::{Query, State};
use axum::routing::patch;
use axum::{Json, Router};
use billing_model::{BillingPeriod, Money, PlanId, prorate_change};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/api/v1/billing/subscriptions",
        patch(change).delete(cancel),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// A plan with a higher fee: an immediate, prorated upgrade.
    pub plan: Option<String>,
    /// `false` reactivates a subscription set to cancel at the period end.
    pub cancel_at_period_end: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct CancelQuery {
    #[serde(default)]
    pub immediately: bool,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Validation {
        field: field.to_owned(),
        message: message.into(),
    }
}

struct Current {
    stripe_subscription_id: String,
    plan_type: String,
}

async fn current(state: &AppState, customer: &str) -> Result<Current, ApiError> {
    sqlx::query_as!(
        Current,
        r#"SELECT stripe_subscription_id AS "stripe_subscription_id!", plan_type
           FROM subscriptions
           WHERE customer_id = $1 AND stripe_subscription_id IS NOT NULL
             AND status IN ('active', 'trialing', 'past_due')
           ORDER BY created_at DESC LIMIT 1"#,
        customer
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::Conflict {
        code: "no_subscription",
        message: "there is no paid subscription to change: use checkout".into(),
    })
}

async fn change(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<Change>,
) -> Result<Json<Value>, ApiError> {
    let gateway = state.stripe.clone().ok_or(ApiError::BillingUnavailable)?;
    let current = current(&state, customer.as_str()).await?;
    let sub = current.stripe_subscription_id.as_str();
    let mut response = json!({});
    match (&request.plan, request.cancel_at_period_end) {
        (None, None) => {
            return Err(invalid(
                "body",
                "nothing to change: give plan or cancel_at_period_end",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "body",
                "change the plan or the cancellation, not both at once",
            ));
        }
        (None, Some(cancel)) => {
            gateway.set_cancel_at_period_end(sub, cancel).await?;
        }
        (Some(plan), None) => {
            let new = PlanId::parse(plan)
                .ok()
                .and_then(|id| state.catalog.get(&id))
                .ok_or_else(|| invalid("plan", format!("unknown plan {plan:?}")))?;
            let old = PlanId::parse(&current.plan_type)
                .ok()
                .and_then(|id| state.catalog.get(&id))
                .ok_or_else(|| {
                    anyhow::anyhow!("stored plan {} is not in the catalog", current.plan_type)
                })?;
            if new.monthly_fee().as_decimal() <= old.monthly_fee().as_decimal() {
                // A downgrade takes effect at the period end; not offered yet.
                return Err(invalid(
                    "plan",
                    format!(
                        "{} is not an upgrade from {}; downgrades are not available yet",
                        new.id(),
                        old.id()
                    ),
                ));
            }
            let price = gateway
                .price(&lookup_key(new.id().as_str(), "monthly"))
                .await?;
            let (item, start, end, old_cents) = gateway.subscription_item(sub).await?;
            // One instant for the preview, the change and our own arithmetic, so all
            // three agree to the cent.
            let at = OffsetDateTime::now_utc().unix_timestamp().clamp(start, end);
            let preview: ProrationPreview = gateway
                .preview_price_change(sub, &item, &price.id, at)
                .await?;
            let ours = BillingPeriod::from_bounds(
                OffsetDateTime::from_unix_timestamp(start).map_err(|e| anyhow::anyhow!(e))?,
                OffsetDateTime::from_unix_timestamp(end).map_err(|e| anyhow::anyhow!(e))?,
            )
            .ok()
            .and_then(|period| {
                prorate_change(
                    Money::from_cents(old_cents),
                    Money::from_cents(price.unit_amount),
                    period,
                    OffsetDateTime::from_unix_timestamp(at).ok()?,
                )
                .ok()
            });
            if let Some(p) = &ours
                && p.total().to_cents() != preview.total_cents
            {
                tracing::error!(
                    ours = %p.total(), stripe_cents = preview.total_cents,
                    "proration differs from Stripe's preview; Stripe's figure is charged"
                );
            }
            let invoice = gateway.change_price_now(sub, &item, &price.id, at).await?;
            response["proration"] = json!({
                "unused_old": Money::from_cents(preview.unused_old_cents),
                "remaining_new": Money::from_cents(preview.remaining_new_cents),
                "total": Money::from_cents(preview.total_cents),
                "proration_date": at,
                "invoice": invoice,
            });
        }
    }
    if let Some(customer) = crate::webhooks::sync_subscription_now(&state, sub).await? {
        state.publisher.publish(&customer).await?;
    }
    let stored = sqlx::query!(
        "SELECT plan_type, status, cancel_at_period_end FROM subscriptions WHERE stripe_subscription_id = $1",
        sub
    )
    .fetch_one(&state.pool)
    .await?;
    response["plan"] = json!(stored.plan_type);
    response["status"] = json!(stored.status);
    response["cancel_at_period_end"] = json!(stored.cancel_at_period_end);
    Ok(Json(response))
}

/// Cancels at the period end (the default: access stays until the paid period ends) or,
/// with `?immediately=true`, now.
async fn cancel(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    State(state): State<AppState>,
    query: Result<Query<CancelQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| invalid("immediately", e.body_text()))?;
    let gateway = state.stripe.clone().ok_or(ApiError::BillingUnavailable)?;
    let current = current(&state, customer.as_str()).await?;
    let sub = current.stripe_subscription_id.as_str();
    if q.immediately {
        gateway.cancel_now(sub).await?;
    } else {
        gateway.set_cancel_at_period_end(sub, true).await?;
    }
    if let Some(customer) = crate::webhooks::sync_subscription_now(&state, sub).await? {
        state.publisher.publish(&customer).await?;
    }
    let stored = sqlx::query!(
        r#"SELECT status, cancel_at_period_end, current_period_end FROM subscriptions
           WHERE stripe_subscription_id = $1"#,
        sub
    )
    .fetch_one(&state.pool)
    .await?;
    Ok(Json(json!({
        "status": stored.status,
        "cancel_at_period_end": stored.cancel_at_period_end,
        "access_until": stored.current_period_end
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
    })))
}
