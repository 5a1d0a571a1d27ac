//! Hosted Stripe pages: Checkout (subscriptions and credit packs) and the Customer
//! Portal. No card data ever touches tollgate: only Stripe ids are stored.

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, AuthenticatedCustomer, ClientKey};
use crate::intents::{self, Operation};
use crate::stripe::{
    GatewayError, HostedSession, Purchase, SessionState, StripeGateway, lookup_key,
};
use axum::Json;
use axum::extract::{Query, State};
use billing_model::{BillingModel, CustomerId, Plan, PlanId};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(checkout))
        .routes(routes!(purchase_credits))
        .routes(routes!(portal))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    pub plan: String,
    /// `fixed_fee` or `credit_burndown`.
    #[schema(value_type = String)]
    pub billing_model: BillingModel,
    pub success_url: String,
    pub cancel_url: String,
    /// Credit pack size (credit burndown only); the plan's smallest pack by default.
    pub credit_units: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditPurchase {
    /// Credits (tickets) to buy: one of the plan's packs.
    pub units: u32,
    pub success_url: String,
    pub cancel_url: String,
    /// Whose per-ticket price applies; the customer's current paid plan by default.
    pub plan: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PortalQuery {
    pub return_url: String,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Validation {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn url(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = (value.starts_with("https://") || value.starts_with("http://"))
        && value.len() <= 2048
        && !value.contains(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(invalid(field, "must be an absolute http(s) URL"))
    }
}

fn gateway(state: &AppState) -> Result<&Arc<StripeGateway>, ApiError> {
    state.stripe.as_ref().ok_or(ApiError::BillingUnavailable)
}

fn paid_plan<'a>(state: &'a AppState, field: &str, id: &str) -> Result<&'a Plan, ApiError> {
    let plan = PlanId::parse(id)
        .ok()
        .and_then(|id| state.catalog.get(&id))
        .ok_or_else(|| invalid(field, format!("unknown plan {id:?}")))?;
    if plan.blocks_at_limit() && plan.monthly_fee().is_zero() {
        return Err(invalid(field, "the free plan needs no checkout"));
    }
    Ok(plan)
}

/// The customer's Stripe customer id, created on first use.
pub async fn stripe_customer(
    state: &AppState,
    gateway: &StripeGateway,
    customer: &CustomerId,
) -> Result<String, ApiError> {
    crate::customers::ensure(&state.pool, customer.as_str()).await?;
    let existing = crate::customers::stripe_customer_of(&state.pool, customer.as_str()).await?;
    if let Some(id) = existing {
        return Ok(id);
    }
    // Idempotent on the customer id: two concurrent first checkouts get the same
    // Stripe customer, and the first writer's id is kept.
    let created = gateway.create_customer(customer.as_str()).await?;
    Ok(crate::customers::claim_stripe_customer(&state.pool, customer.as_str(), &created).await?)
}

/// What a completed earlier session of the same request means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenCompleted {
    /// A new purchase (another credit pack).
    NewPurchase,
    /// Nothing more to buy (the subscription exists, or is about to be stored).
    AlreadyDone,
}

/// A Checkout Session under the request's purchase intent ([`crate::intents`]): a retry
/// gets the same open session; a session that completed or expired is never handed out
/// again (a new purchase gets a new one; a caller-named intent that ended answers 409).
async fn session_for_intent<F, Fut>(
    state: &AppState,
    gateway: &StripeGateway,
    customer: &CustomerId,
    client_key: Option<&str>,
    fingerprint: &str,
    when_completed: WhenCompleted,
    create: F,
) -> Result<HostedSession, ApiError>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<HostedSession, GatewayError>>,
{
    let ended = |outcome: &str| ApiError::Conflict {
        code: "purchase_already_completed",
        message: format!(
            "the purchase this Idempotency-Key names has {outcome}; send a new key for a new purchase"
        ),
    };
    let intent = intents::open(
        &state.pool,
        customer,
        Operation::Checkout,
        fingerprint,
        client_key,
    )
    .await?;
    if let Some(outcome) = &intent.outcome {
        return Err(ended(outcome));
    }
    if intent.replay {
        // Where the intent's session stands now: Stripe would replay its creation as it
        // was (and forgets the key after 24 hours), so ask for the session itself.
        let (session_state, session) = match &intent.object_id {
            Some(id) => gateway.checkout_session_state(id).await?,
            None => {
                let replayed = create(intent.stripe_key.clone()).await?;
                gateway.checkout_session_state(&replayed.id).await?
            }
        };
        match (session_state, session) {
            (SessionState::Open, Some(session)) => {
                intents::attach(&state.pool, &intent, &session.id).await?;
                return Ok(session);
            }
            (SessionState::Complete { subscription }, _) => {
                intents::finish(&state.pool, &intent, intents::Outcome::Completed).await?;
                if intent.client_named {
                    return Err(ended("completed"));
                }
                // The subscription it created is on its way, unless it is stored as
                // ended already (cancelled since, or a duplicate ended at once): then
                // the same request again is a new purchase.
                let ended_since = match &subscription {
                    Some(id) => crate::subscription_store::status_of(&state.pool, id)
                        .await?
                        .is_some_and(|s| !s.is_live()),
                    None => false,
                };
                if when_completed == WhenCompleted::AlreadyDone && !ended_since {
                    return Err(ApiError::Conflict {
                        code: "already_subscribed",
                        message: "this checkout was completed; the subscription is being set up"
                            .into(),
                    });
                }
            }
            _ => {
                intents::finish(&state.pool, &intent, intents::Outcome::Expired).await?;
                if intent.client_named {
                    return Err(ended("expired"));
                }
            }
        }
        let fresh = intents::new(&state.pool, customer, Operation::Checkout, fingerprint).await?;
        let session = create(fresh.stripe_key.clone()).await?;
        intents::attach(&state.pool, &fresh, &session.id).await?;
        return Ok(session);
    }
    let session = create(intent.stripe_key.clone()).await?;
    intents::attach(&state.pool, &intent, &session.id).await?;
    Ok(session)
}

#[utoipa::path(post, path = "/api/v1/billing/checkout", tag = "checkout", request_body = CheckoutRequest, security(("customer_jwt" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "names the purchase: a retry with it replays; without it, an identical request within 10 minutes does")),
    responses((status = 200, description = "hosted Checkout Session url"), (status = 409, description = "already_subscribed | billing_model_switch_required | purchase_already_completed"), (status = 422, description = "validation_failed | idempotency_key_reused")))]
async fn checkout(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    ClientKey(client_key): ClientKey,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CheckoutRequest>,
) -> Result<Json<HostedSession>, ApiError> {
    url("success_url", &request.success_url)?;
    url("cancel_url", &request.cancel_url)?;
    let plan = paid_plan(&state, "plan", &request.plan)?;
    if !plan.supports(request.billing_model) {
        return Err(invalid(
            "billing_model",
            format!(
                "the {} plan is not offered as {}",
                plan.id(),
                request.billing_model.as_str()
            ),
        ));
    }
    let gateway = gateway(&state)?;
    let metadata = HashMap::from([
        ("tollgate_customer_id".to_owned(), customer.to_string()),
        ("tollgate_plan".to_owned(), plan.id().to_string()),
        (
            "tollgate_billing_model".to_owned(),
            request.billing_model.as_str().to_owned(),
        ),
    ]);
    let session = match request.billing_model {
        BillingModel::FixedFee => {
            if on_fixed_fee(&state, &customer).await? {
                return Err(ApiError::Conflict {
                    code: "already_subscribed",
                    message: "change the existing subscription with PATCH /subscriptions".into(),
                });
            }
            let price = gateway
                .price(&lookup_key(plan.id().as_str(), "monthly"))
                .await?;
            let stripe_customer = stripe_customer(&state, gateway, &customer).await?;
            let fingerprint = intents::fingerprint(&[
                "subscription",
                plan.id().as_str(),
                &request.success_url,
                &request.cancel_url,
            ]);
            let (stripe_customer, price, metadata) = (&stripe_customer, &price, &metadata);
            let (success_url, cancel_url) = (&request.success_url, &request.cancel_url);
            let customer_id = customer.as_str();
            session_for_intent(
                &state,
                gateway,
                &customer,
                client_key.as_deref(),
                &fingerprint,
                WhenCompleted::AlreadyDone,
                |key| async move {
                    gateway
                        .checkout(
                            stripe_customer,
                            customer_id,
                            Purchase::Subscription { price },
                            metadata.clone(),
                            success_url,
                            cancel_url,
                            &key,
                        )
                        .await
                },
            )
            .await?
        }
        BillingModel::CreditBurndown => {
            let units = request
                .credit_units
                .or_else(|| plan.credit_pack_units().first().copied())
                .ok_or_else(|| invalid("credit_units", "the plan sells no credit packs"))?;
            credits_session(
                &state,
                gateway,
                &customer,
                client_key.as_deref(),
                plan,
                units,
                metadata,
                &request.success_url,
                &request.cancel_url,
            )
            .await?
        }
    };
    Ok(Json(session))
}

/// Whether the customer pays a fixed fee through a live Stripe subscription.
async fn on_fixed_fee(state: &AppState, customer: &CustomerId) -> Result<bool, ApiError> {
    Ok(
        crate::subscription_store::live_fixed(&state.pool, customer.as_str())
            .await?
            .is_some(),
    )
}

#[allow(clippy::too_many_arguments)]
async fn credits_session(
    state: &AppState,
    gateway: &StripeGateway,
    customer: &CustomerId,
    client_key: Option<&str>,
    plan: &Plan,
    units: u32,
    mut metadata: HashMap<String, String>,
    success_url: &str,
    cancel_url: &str,
) -> Result<HostedSession, ApiError> {
    if !plan.credit_pack_units().contains(&units) {
        return Err(invalid(
            "units",
            format!(
                "the {} plan sells packs of {:?} credits",
                plan.id(),
                plan.credit_pack_units()
            ),
        ));
    }
    if on_fixed_fee(state, customer).await? {
        return Err(ApiError::Conflict {
            code: "billing_model_switch_required",
            message: "credits are for the credit-burndown model: switch with PATCH /subscriptions {\"billing_model\": \"credit_burndown\"} first".into(),
        });
    }
    let price = gateway
        .price(&lookup_key(plan.id().as_str(), "credit"))
        .await?;
    let stripe_customer = stripe_customer(state, gateway, customer).await?;
    metadata.insert("tollgate_credit_units".to_owned(), units.to_string());
    metadata.insert(
        "tollgate_billing_model".to_owned(),
        "credit_burndown".to_owned(),
    );
    let fingerprint = intents::fingerprint(&[
        "credits",
        plan.id().as_str(),
        &units.to_string(),
        success_url,
        cancel_url,
    ]);
    let (stripe_customer, price, metadata) = (&stripe_customer, &price, &metadata);
    let customer_id = customer.as_str();
    session_for_intent(
        state,
        gateway,
        customer,
        client_key,
        &fingerprint,
        WhenCompleted::NewPurchase,
        |key| async move {
            gateway
                .checkout(
                    stripe_customer,
                    customer_id,
                    Purchase::Credits {
                        price,
                        quantity: u64::from(units),
                    },
                    metadata.clone(),
                    success_url,
                    cancel_url,
                    &key,
                )
                .await
        },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/billing/credits/purchase", tag = "credits", request_body = CreditPurchase, security(("customer_jwt" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "names the purchase: a retry with it replays; without it, an identical request within 10 minutes does")),
    responses((status = 200, description = "hosted Checkout Session url for a credit pack"), (status = 409, description = "billing_model_switch_required | purchase_already_completed"), (status = 422, description = "validation_failed | idempotency_key_reused")))]
async fn purchase_credits(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    ClientKey(client_key): ClientKey,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreditPurchase>,
) -> Result<Json<HostedSession>, ApiError> {
    url("success_url", &request.success_url)?;
    url("cancel_url", &request.cancel_url)?;
    let plan_id = match &request.plan {
        Some(p) => p.clone(),
        None => state
            .publisher
            .entitlements()
            .snapshot(&customer)
            .await?
            .plan
            .to_string(),
    };
    let plan = paid_plan(&state, "plan", &plan_id)?;
    if !plan.supports(BillingModel::CreditBurndown) {
        return Err(invalid(
            "plan",
            format!("the {} plan sells no credits", plan.id()),
        ));
    }
    let gateway = gateway(&state)?;
    let metadata = HashMap::from([
        ("tollgate_customer_id".to_owned(), customer.to_string()),
        ("tollgate_plan".to_owned(), plan.id().to_string()),
    ]);
    let session = credits_session(
        &state,
        gateway,
        &customer,
        client_key.as_deref(),
        plan,
        request.units,
        metadata,
        &request.success_url,
        &request.cancel_url,
    )
    .await?;
    Ok(Json(session))
}

#[utoipa::path(get, path = "/api/v1/billing/portal", tag = "checkout", params(PortalQuery), security(("customer_jwt" = [])), responses((status = 200, description = "Customer Portal url"), (status = 409, description = "no_billing_account")))]
async fn portal(
    AuthenticatedCustomer(customer): AuthenticatedCustomer,
    State(state): State<AppState>,
    query: Result<Query<PortalQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HostedSession>, ApiError> {
    let Query(q) = query.map_err(|e| invalid("return_url", e.body_text()))?;
    url("return_url", &q.return_url)?;
    let gateway = gateway(&state)?;
    let existing = crate::customers::stripe_customer_of(&state.pool, customer.as_str()).await?;
    let Some(stripe_customer) = existing else {
        return Err(ApiError::Conflict {
            code: "no_billing_account",
            message:
                "there is nothing to manage yet: subscribe or buy credits through checkout first"
                    .into(),
        });
    };
    Ok(Json(gateway.portal(&stripe_customer, &q.return_url).await?))
}
