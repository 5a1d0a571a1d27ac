//! Subscribing and changing the subscription: direct subscribe (when Stripe already has
//! a default payment method), upgrade (immediate, prorated, invoiced now), downgrade (at
//! the period end), billing-model switch (unused credits expire), cancel and reactivate.

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, AuthenticatedCustomer, ClientKey};
use crate::stripe::{ProrationPreview, StripeGateway, SubscriptionItem, lookup_key};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use billing_model::{BillingModel, BillingPeriod, CustomerId, Money, Plan, PlanId, prorate_change};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(subscribe, change, cancel))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    pub plan: String,
    /// `fixed_fee` (default) or `credit_burndown`.
    #[schema(value_type = Option<String>)]
    pub billing_model: Option<BillingModel>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// A plan with a higher fee upgrades now (prorated, invoiced at once); a lower fee
    /// downgrades at the period end; `free` cancels at the period end.
    pub plan: Option<String>,
    /// Switches the billing model; unused credits expire (kept with the reason).
    #[schema(value_type = Option<String>)]
    pub billing_model: Option<BillingModel>,
    /// `false` reactivates a subscription set to cancel at the period end.
    pub cancel_at_period_end: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CancelQuery {
    /// End now instead of at the period end.
    #[serde(default)]
    pub immediately: bool,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Validation {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn gateway(state: &AppState) -> Result<Arc<StripeGateway>, ApiError> {
    state.stripe.clone().ok_or(ApiError::BillingUnavailable)
}

fn plan<'a>(state: &'a AppState, field: &str, id: &str) -> Result<&'a Plan, ApiError> {
    PlanId::parse(id)
        .ok()
        .and_then(|id| state.catalog.get(&id))
        .ok_or_else(|| invalid(field, format!("unknown plan {id:?}")))
}

fn is_free(state: &AppState, plan: &Plan) -> bool {
    plan.id() == state.catalog.free_plan().id()
}

/// The customer's live Stripe subscription, as stored.
type Current = crate::subscription_store::LiveFixed;

async fn current_fixed(state: &AppState, customer: &str) -> Result<Option<Current>, ApiError> {
    Ok(crate::subscription_store::live_fixed(&state.pool, customer).await?)
}

fn no_subscription() -> ApiError {
    ApiError::Conflict {
        code: "no_subscription",
        message: "there is no paid subscription to change: subscribe or use checkout".into(),
    }
}

/// Subscribe directly: for a customer whose Stripe account already holds a default
/// payment method (otherwise 409 `payment_method_required`: send them to checkout).
#[utoipa::path(post, path = "/api/v1/billing/subscriptions", tag = "subscriptions",
    request_body = Subscribe, security(("customer_jwt" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "names the purchase: a retry with it replays; without it, an identical request within 10 minutes does (until it succeeded or was declined)")),
    responses((status = 201, description = "subscribed"), (status = 200, description = "already on that plan (free)"),
              (status = 402, description = "payment_failed: the card was declined"),
              (status = 409, description = "payment_method_required | already_subscribed | billing_model_switch_required"),
              (status = 422, description = "validation_failed | idempotency_key_reused")))]
async fn subscribe(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    ClientKey(client_key): ClientKey,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<Subscribe>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let target = plan(&state, "plan", &request.plan)?;
    let model = request.billing_model.unwrap_or(BillingModel::FixedFee);
    let current = current_fixed(&state, customer.as_str()).await?;
    if is_free(&state, target) {
        if current.is_some() {
            return Err(ApiError::Conflict {
                code: "use_cancel",
                message: "leave the paid plan with DELETE /subscriptions".into(),
            });
        }
        // Free needs no Stripe subscription: every customer is on it by default.
        return Ok((StatusCode::OK, Json(view(&state, &customer).await?)));
    }
    if !target.supports(model) {
        return Err(invalid(
            "billing_model",
            format!(
                "the {} plan is not offered as {}",
                target.id(),
                model.as_str()
            ),
        ));
    }
    if current.is_some() {
        return Err(match model {
            BillingModel::FixedFee => ApiError::Conflict {
                code: "already_subscribed",
                message: "change the existing subscription with PATCH /subscriptions".into(),
            },
            BillingModel::CreditBurndown => ApiError::Conflict {
                code: "billing_model_switch_required",
                message:
                    "switch with PATCH /subscriptions {\"billing_model\": \"credit_burndown\"}"
                        .into(),
            },
        });
    }
    match model {
        BillingModel::CreditBurndown => {
            enter_credit_model(&state, &customer, target).await?;
        }
        BillingModel::FixedFee => {
            subscribe_fixed(&state, &customer, target, client_key.as_deref()).await?;
        }
    }
    state.publisher.publish(&customer).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &customer).await?)))
}

/// Creates the Stripe subscription for a customer with a default payment method, and
/// stores it at once (the webhook that follows changes nothing).
async fn subscribe_fixed(
    state: &AppState,
    customer: &CustomerId,
    target: &Plan,
    client_key: Option<&str>,
) -> Result<(), ApiError> {
    let gateway = gateway(state)?;
    let stripe_customer = super::checkout::stripe_customer(state, &gateway, customer).await?;
    let Some(card) = saved_card(state, &gateway, customer, &stripe_customer).await? else {
        return Err(ApiError::Conflict {
            code: "payment_method_required",
            message: "no saved payment method: subscribe through POST /checkout".into(),
        });
    };
    let price = gateway
        .price(&lookup_key(target.id().as_str(), "monthly"))
        .await?;
    // One purchase intent: a retry replays; a re-subscription later, or a retry after
    // a declined card was fixed, is a new purchase with a new key.
    let fingerprint = crate::intents::fingerprint(&["subscribe", target.id().as_str()]);
    let intent = crate::intents::open(
        &state.pool,
        customer,
        crate::intents::Operation::Subscribe,
        &fingerprint,
        client_key,
    )
    .await?;
    if let Some(outcome) = &intent.outcome {
        // A caller-named intent that ended: its key names that purchase, not a new one.
        return Err(ApiError::Conflict {
            code: "purchase_already_completed",
            message: format!(
                "the purchase this Idempotency-Key names has {outcome}; send a new key for a new purchase"
            ),
        });
    }
    // A double click whose twin finished first (subscription stored, then its intent
    // finished) gets a new intent: the customer is subscribed by now.
    if !intent.replay && current_fixed(state, customer.as_str()).await?.is_some() {
        crate::intents::finish(&state.pool, &intent, crate::intents::Outcome::Failed).await?;
        return Err(ApiError::Conflict {
            code: "already_subscribed",
            message: "change the existing subscription with PATCH /subscriptions".into(),
        });
    }
    let metadata = HashMap::from([
        ("tollgate_customer_id".to_owned(), customer.to_string()),
        ("tollgate_plan".to_owned(), target.id().to_string()),
    ]);
    let sub = match gateway
        .create_subscription(
            &stripe_customer,
            &price,
            Some(&card),
            metadata,
            &intent.stripe_key,
        )
        .await
    {
        Ok(sub) => sub,
        Err(e) => {
            if e.is_declined() {
                crate::intents::finish(&state.pool, &intent, crate::intents::Outcome::Failed)
                    .await?;
            }
            return Err(e.into());
        }
    };
    crate::intents::attach(&state.pool, &intent, &sub).await?;
    // Stored before the intent finishes, so an identical request that misses this
    // intent (it finished) sees the subscription instead.
    crate::webhooks::sync_subscription_now(state, &sub).await?;
    crate::intents::finish(&state.pool, &intent, crate::intents::Outcome::Completed).await?;
    Ok(())
}

/// The card a new subscription is charged to: the customer's default payment method, else
/// the card their latest earlier subscription was paid with (Checkout attaches its card to
/// the customer but makes it the *subscription's* default, not the customer's). A credit
/// pack saves no card (payment-mode Checkout does not), so a customer who only ever bought
/// credits goes through Checkout to subscribe.
async fn saved_card(
    state: &AppState,
    gateway: &StripeGateway,
    customer: &CustomerId,
    stripe_customer: &str,
) -> Result<Option<String>, ApiError> {
    // Each candidate only while it is still the customer's: a card removed in the
    // Customer Portal stays named on the subscription it paid, and would be refused.
    if let Some(card) = gateway.default_payment_method(stripe_customer).await?
        && gateway
            .customer_has_payment_method(stripe_customer, &card)
            .await?
    {
        return Ok(Some(card));
    }
    let earlier =
        crate::subscription_store::newest_stripe_ids(&state.pool, customer.as_str(), 3).await?;
    for subscription in earlier {
        if let Some(card) = gateway.subscription_payment_method(&subscription).await?
            && gateway
                .customer_has_payment_method(stripe_customer, &card)
                .await?
        {
            return Ok(Some(card));
        }
    }
    Ok(None)
}

/// The customer is on prepaid credits of `target` from now on.
async fn enter_credit_model(
    state: &AppState,
    customer: &CustomerId,
    target: &Plan,
) -> Result<(), ApiError> {
    let mut conn = state.pool.acquire().await?;
    crate::switches::enter_credit_model(&mut conn, customer.as_str(), target.id().as_str()).await?;
    Ok(())
}

/// Closes every open grant with the reason `billing_model_switch`.
async fn expire_credits(state: &AppState, customer: &CustomerId) -> Result<u64, ApiError> {
    let mut conn = state.pool.acquire().await?;
    Ok(crate::credit_model::expire_grants(&mut conn, customer.as_str(), None).await?)
}

/// Change the plan (upgrade now, downgrade at the period end), switch the billing model,
/// or undo a cancellation. An upgrade returns the proration preview it charged.
#[utoipa::path(patch, path = "/api/v1/billing/subscriptions", tag = "subscriptions",
    request_body = Change, security(("customer_jwt" = [])),
    responses((status = 200, description = "changed; `proration` for an upgrade"),
              (status = 409, description = "no_subscription | payment_method_required"),
              (status = 422, description = "validation_failed")))]
async fn change(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<Change>,
) -> Result<Json<Value>, ApiError> {
    let mut response = match (
        &request.plan,
        request.billing_model,
        request.cancel_at_period_end,
    ) {
        (None, None, None) => {
            return Err(invalid(
                "body",
                "nothing to change: give plan, billing_model or cancel_at_period_end",
            ));
        }
        (_, Some(model), None) => {
            switch_model(&state, &customer, model, request.plan.as_deref()).await?
        }
        (Some(plan), None, None) => change_plan(&state, &customer, plan).await?,
        (None, None, Some(cancel)) => {
            let current = current_fixed(&state, customer.as_str())
                .await?
                .ok_or_else(no_subscription)?;
            let gateway = gateway(&state)?;
            gateway
                .set_cancel_at_period_end(
                    &current.stripe_subscription_id,
                    cancel,
                    current.stripe_state_at,
                )
                .await?;
            resync(&state, &current.stripe_subscription_id).await?;
            json!({})
        }
        _ => {
            return Err(invalid(
                "body",
                "change one thing at a time: plan, billing_model or cancel_at_period_end",
            ));
        }
    };
    state.publisher.publish(&customer).await?;
    if let (Value::Object(out), Value::Object(view)) =
        (&mut response, view(&state, &customer).await?)
    {
        out.extend(view);
    }
    Ok(Json(response))
}

async fn resync(state: &AppState, subscription: &str) -> Result<(), ApiError> {
    crate::webhooks::sync_subscription_now(state, subscription).await?;
    Ok(())
}

async fn switch_model(
    state: &AppState,
    customer: &CustomerId,
    model: BillingModel,
    plan_name: Option<&str>,
) -> Result<Value, ApiError> {
    let current = current_fixed(state, customer.as_str()).await?;
    let snapshot = state.publisher.entitlements().snapshot(customer).await?;
    if snapshot.billing_model == model
        && !is_free(state, plan(state, "plan", snapshot.plan.as_str())?)
    {
        return Err(invalid(
            "billing_model",
            format!("already on {}", model.as_str()),
        ));
    }
    let target = plan(state, "plan", plan_name.unwrap_or(snapshot.plan.as_str()))?;
    if is_free(state, target) || !target.supports(model) {
        return Err(invalid(
            "plan",
            format!(
                "the {} plan is not offered as {}",
                target.id(),
                model.as_str()
            ),
        ));
    }
    let (expired, unused_fee) = match model {
        BillingModel::CreditBurndown => match &current {
            Some(current) => {
                let done = end_for_credits(state, customer, current, target).await?;
                (done.credits_expired, done.unused_fee_credited)
            }
            None => {
                let expired = expire_credits(state, customer).await?;
                enter_credit_model(state, customer, target).await?;
                (expired, None)
            }
        },
        BillingModel::FixedFee => {
            // The subscription's sync expires the credits in the same transaction.
            let before = open_grants(state, customer).await?;
            subscribe_fixed(state, customer, target, None).await?;
            (
                before.saturating_sub(open_grants(state, customer).await?),
                None,
            )
        }
    };
    Ok(json!({ "credits_expired": expired, "unused_fee_credited": unused_fee }))
}

/// Ends the fixed-fee subscription for a switch to credits of `target`, turning its
/// unused, paid-for time into tollgate credits. Stripe's own proration credit would go to
/// the customer's Stripe balance, which only invoices consume, and credit packs are paid
/// without an invoice: the money would be stranded. So the subscription is cancelled
/// without proration (pending prorations are invoiced now; overage goes on the final
/// invoice the sync opens) and the unused time becomes a grant worth exactly that amount
/// on `target`'s per-ticket price. The amount is what Stripe itself would credit for the
/// unused time (a cancel-now preview: flexible billing mode credits what was debited, so
/// a negotiated price or a discount counts as paid, not the list fee). A period whose
/// latest invoice is not paid (past due, or a renewal draft not collected yet) is worth
/// nothing. Crash-safe: see [`crate::switches`].
async fn end_for_credits(
    state: &AppState,
    customer: &CustomerId,
    current: &Current,
    target: &Plan,
) -> Result<crate::switches::Completed, ApiError> {
    let gateway = gateway(state)?;
    let sub = current.stripe_subscription_id.as_str();
    // Paid for means the latest invoice is paid: not past due, and not the hour after a
    // renewal whose draft is not collected yet (cancelling stops its collection).
    let paid_for = gateway.latest_invoice_paid(sub).await?;
    let unused = if paid_for {
        // What Stripe would credit for the rest of the period: what was debited for it
        // (during a pending downgrade the higher fee, a negotiated price as it is).
        let cents = gateway.unused_time_credit(sub).await?;
        Some(Money::from_cents(cents))
    } else {
        None
    };
    crate::switches::record(&state.pool, customer, sub, target, unused).await?;
    gateway.cancel_now_invoicing_pending(sub).await?;
    // Storing the cancellation completes the switch (or the webhook did already).
    resync(state, sub).await?;
    crate::switches::outcome(&state.pool, sub)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the switch of {sub} was not completed when its cancellation was stored"
            )
            .into()
        })
}

async fn open_grants(state: &AppState, customer: &CustomerId) -> Result<u64, ApiError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT COUNT(*) AS "n!" FROM billing_credits WHERE customer_id = $1 AND closed_at IS NULL"#,
        customer.as_str()
    )
    .fetch_one(&state.pool)
    .await?
    .try_into()
    .unwrap_or(0))
}

async fn change_plan(
    state: &AppState,
    customer: &CustomerId,
    plan_name: &str,
) -> Result<Value, ApiError> {
    let target = plan(state, "plan", plan_name)?;
    let current = current_fixed(state, customer.as_str())
        .await?
        .ok_or_else(no_subscription)?;
    let gateway = gateway(state)?;
    let sub = current.stripe_subscription_id.as_str();
    if is_free(state, target) {
        gateway
            .set_cancel_at_period_end(sub, true, current.stripe_state_at)
            .await?;
        resync(state, sub).await?;
        return Ok(json!({ "change": "cancel_at_period_end" }));
    }
    // `plan_type` is the plan the customer has now (during a pending downgrade, the one
    // they paid for this period).
    let paid = plan(state, "plan", &current.plan_type)?;
    let mut item = gateway.subscription_item(sub).await?;
    if current.pending_plan_type.is_some() {
        // Undo the pending downgrade first: Stripe's price goes back to the paid plan.
        let paid_price = gateway
            .price(&lookup_key(paid.id().as_str(), "monthly"))
            .await?;
        gateway
            .set_price_from_next_period(
                sub,
                &item.id,
                &paid_price.id,
                None,
                current.stripe_state_at,
            )
            .await?;
        if target.id() == paid.id() {
            resync(state, sub).await?;
            return Ok(json!({ "change": "downgrade_undone" }));
        }
        // The item's price is the paid plan's again.
        item = gateway.subscription_item(sub).await?;
    } else if target.id() == paid.id() {
        return Err(invalid("plan", format!("already on {}", paid.id())));
    }
    let price = gateway
        .price(&lookup_key(target.id().as_str(), "monthly"))
        .await?;
    if target.monthly_fee().as_decimal() < paid.monthly_fee().as_decimal() {
        let effective = item.period_end;
        gateway
            .set_price_from_next_period(
                sub,
                &item.id,
                &price.id,
                Some((paid.id().as_str(), effective)),
                current.stripe_state_at,
            )
            .await?;
        resync(state, sub).await?;
        return Ok(json!({
            "change": "downgrade_at_period_end",
            "effective_at": OffsetDateTime::from_unix_timestamp(effective).ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
        }));
    }
    let proration = upgrade_now(&gateway, sub, &item, &price).await?;
    resync(state, sub).await?;
    Ok(json!({ "change": "upgrade", "proration": proration }))
}

async fn upgrade_now(
    gateway: &StripeGateway,
    sub: &str,
    item: &SubscriptionItem,
    price: &crate::stripe::PriceRef,
) -> Result<Value, ApiError> {
    let (start, end) = (item.period_start, item.period_end);
    let old_cents = item.unit_amount_cents;
    // One instant for the preview, the change and our own arithmetic, so all three
    // agree to the cent.
    let at = item.change_instant();
    let preview: ProrationPreview = gateway
        .preview_price_change(sub, &item.id, &price.id, at)
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
        && p.total().to_cents() != preview.prorations_cents
    {
        tracing::error!(
            ours = %p.total(), stripe_cents = preview.prorations_cents,
            "proration differs from Stripe's preview; Stripe's figure is charged"
        );
    }
    let invoice = gateway
        .change_price_now(sub, &item.id, &price.id, at)
        .await?;
    Ok(json!({
        "unused_old": Money::from_cents(preview.unused_old_cents),
        "remaining_new": Money::from_cents(preview.remaining_new_cents),
        "prorations": Money::from_cents(preview.prorations_cents),
        "total": Money::from_cents(preview.total_cents),
        "proration_date": at,
        "invoice": invoice,
    }))
}

/// Cancels at the period end (the default: access stays until the paid period ends) or,
/// with `?immediately=true`, now.
#[utoipa::path(delete, path = "/api/v1/billing/subscriptions", tag = "subscriptions",
    params(CancelQuery), security(("customer_jwt" = [])),
    responses((status = 200, description = "canceled (or set to cancel)"),
              (status = 409, description = "no_subscription")))]
async fn cancel(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    State(state): State<AppState>,
    query: Result<Query<CancelQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| invalid("immediately", e.body_text()))?;
    let gateway = gateway(&state)?;
    let current = current_fixed(&state, customer.as_str())
        .await?
        .ok_or_else(no_subscription)?;
    let sub = current.stripe_subscription_id.as_str();
    if q.immediately {
        gateway.cancel_now(sub).await?;
    } else {
        gateway
            .set_cancel_at_period_end(sub, true, current.stripe_state_at)
            .await?;
    }
    resync(&state, sub).await?;
    state.publisher.publish(&customer).await?;
    let stored = crate::subscription_store::cancellation(&state.pool, sub)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the cancelled subscription {sub} is not stored"))?;
    Ok(Json(json!({
        "status": stored.status,
        "cancel_at_period_end": stored.cancel_at_period_end,
        "access_until": stored.current_period_end
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
    })))
}

/// The subscription as the frontend shows it (the same body as `GET /subscriptions`).
pub async fn view(state: &AppState, customer: &CustomerId) -> Result<Value, ApiError> {
    super::account::subscription_view(state, customer).await
}
