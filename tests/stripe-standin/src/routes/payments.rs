//! Payment intents, charges, payment methods (read-only here) and refunds.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::answer;
use crate::errors::{ApiError, ApiResult};
use crate::state::{PaymentMethod, PaymentMode, Refund, Store, new_id};
use crate::{App, StripeRequest, billing, clock, objects};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/payment_intents/{id}", get(retrieve_payment_intent))
        .route("/v1/charges/{id}", get(retrieve_charge))
        .route("/v1/payment_methods/{id}", get(retrieve_payment_method))
        .route(
            "/v1/payment_methods/{id}/detach",
            post(detach_payment_method),
        )
        .route(
            "/v1/customers/{customer}/payment_methods/{id}",
            get(retrieve_customer_payment_method),
        )
        .route("/v1/refunds", post(create_refund))
        .route("/v1/refunds/{id}", get(retrieve_refund))
}

/// Attaches a payment method to a customer and returns its id. Stripe's test tokens work:
/// `pm_card_visa` (and any other `pm_card_*`) makes a new card; `pm_card_chargeDeclined`
/// (or `pm_card_chargeCustomerFail`) also makes the customer's payments fail.
/// The `default_payment_method` parameter, attached to `customer`, if given.
pub(crate) fn default_payment_method_param(
    store: &mut Store,
    customer: &str,
    p: &crate::form::Params,
) -> ApiResult<Option<String>> {
    p.str("default_payment_method")
        .map(|pm| attach_payment_method(store, customer, pm, "default_payment_method"))
        .transpose()
}

pub(crate) fn attach_payment_method(
    store: &mut Store,
    customer: &str,
    pm: &str,
    param: &str,
) -> ApiResult<String> {
    let now = store.now_for_customer(customer);
    if let Some(kind) = pm.strip_prefix("pm_card_") {
        let id = new_id("pm");
        store.payment_methods.insert(
            id.clone(),
            PaymentMethod {
                id: id.clone(),
                created: now,
                customer: Some(customer.to_string()),
                detached: false,
            },
        );
        if matches!(
            kind,
            "chargeDeclined" | "chargeCustomerFail" | "visa_chargeDeclined"
        ) && let Some(c) = store.customers.get_mut(customer)
        {
            c.payment_mode = PaymentMode::Fail;
        }
        return Ok(id);
    }
    let method = store
        .payment_methods
        .get_mut(pm)
        .ok_or_else(|| ApiError::missing_resource("PaymentMethod", pm, param))?;
    if method.detached {
        return Err(ApiError::invalid(
            param,
            format!(
                "The provided PaymentMethod {pm} was previously used without being attached \
                 to a Customer or was detached from a Customer, and may not be used again."
            ),
        ));
    }
    match &method.customer {
        Some(owner) if owner != customer => Err(ApiError::invalid(
            param,
            format!("The payment method {pm} belongs to another customer."),
        )),
        _ => {
            method.customer = Some(customer.to_string());
            Ok(pm.to_string())
        }
    }
}

async fn retrieve_payment_intent(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let pi = store
            .payment_intents
            .get(&id)
            .ok_or_else(|| ApiError::missing_resource("payment_intent", &id, "intent"))?;
        Ok(Json(answer(
            store,
            objects::payment_intent(pi),
            &req.params,
        )))
    })
}

async fn retrieve_charge(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let c = store
            .charges
            .get(&id)
            .ok_or_else(|| ApiError::missing_resource("charge", &id, "charge"))?;
        Ok(Json(answer(store, objects::charge(store, c), &req.params)))
    })
}

/// `GET /v1/customers/{customer}/payment_methods/{id}`: the method, only while it is
/// attached to that customer (404 otherwise, as for a detached one).
async fn retrieve_customer_payment_method(
    State(app): State<App>,
    Path((customer, id)): Path<(String, String)>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        store
            .customer(&customer)
            .ok_or_else(|| ApiError::missing_resource("customer", &customer, "customer"))?;
        let pm = store
            .payment_methods
            .get(&id)
            .filter(|pm| pm.customer.as_deref() == Some(customer.as_str()))
            .ok_or_else(|| ApiError::missing_resource("PaymentMethod", &id, "payment_method"))?;
        Ok(Json(answer(
            store,
            objects::payment_method(pm),
            &req.params,
        )))
    })
}

/// `POST /v1/payment_methods/{id}/detach` (the Customer Portal's "remove card"): the
/// method leaves its customer for good; a customer default naming it is cleared.
/// Emits `payment_method.detached`.
async fn detach_payment_method(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    req.params.only(&["expand"])?;
    app.run(&req.info, |store| {
        let pm = store
            .payment_methods
            .get_mut(&id)
            .ok_or_else(|| ApiError::missing_resource("PaymentMethod", &id, "payment_method"))?;
        let Some(owner) = pm.customer.take() else {
            return Err(ApiError::bad_request(
                "The payment method you provided is not attached to a customer so \
                 detachment is impossible.",
            ));
        };
        pm.detached = true;
        let object = objects::payment_method(pm);
        let now = store.now_for_customer(&owner);
        if let Some(c) = store.customers.get_mut(&owner)
            && c.default_payment_method.as_deref() == Some(id.as_str())
        {
            c.default_payment_method = None;
        }
        let previous = json!({ "customer": owner });
        billing::emit(
            store,
            "payment_method.detached",
            object.clone(),
            Some(previous),
            now,
        );
        Ok(Json(answer(store, object, &req.params)))
    })
}

async fn retrieve_payment_method(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let pm = store
            .payment_methods
            .get(&id)
            .ok_or_else(|| ApiError::missing_resource("PaymentMethod", &id, "payment_method"))?;
        Ok(Json(answer(
            store,
            objects::payment_method(pm),
            &req.params,
        )))
    })
}

async fn retrieve_refund(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let r = store
            .refunds
            .get(&id)
            .ok_or_else(|| ApiError::missing_resource("refund", &id, "refund"))?;
        Ok(Json(answer(store, objects::refund(r), &req.params)))
    })
}

/// `POST /v1/refunds`: refunds a succeeded charge (named directly or through its payment
/// intent), all of what is left or `amount`; emits `charge.refunded` and `refund.created`.
async fn create_refund(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "payment_intent",
        "charge",
        "amount",
        "reason",
        "metadata",
        "instructions_email",
        "refund_application_fee",
        "reverse_transfer",
    ])?;
    let amount = p.i64("amount")?;
    let metadata = p.metadata("metadata")?.unwrap_or_default();
    app.run(&req.info, |store| {
        let charge_id = match (p.str("charge"), p.str("payment_intent")) {
            (Some(ch), _) => ch.to_string(),
            (None, Some(pi)) => store
                .payment_intents
                .get(pi)
                .ok_or_else(|| ApiError::missing_resource("payment_intent", pi, "payment_intent"))?
                .latest_charge
                .clone()
                .ok_or_else(|| {
                    ApiError::invalid(
                        "payment_intent",
                        format!("PaymentIntent {pi} has no charge to refund."),
                    )
                })?,
            (None, None) => return Err(ApiError::missing("charge")),
        };
        let charge = store
            .charges
            .get(&charge_id)
            .ok_or_else(|| ApiError::missing_resource("charge", &charge_id, "charge"))?;
        if !charge.succeeded {
            return Err(ApiError::invalid(
                "charge",
                format!("Charge {charge_id} has not succeeded; it cannot be refunded."),
            ));
        }
        let left = charge.amount - charge.amount_refunded;
        if left <= 0 {
            return Err(ApiError::already_refunded(&charge_id));
        }
        let amount = amount.unwrap_or(left);
        if amount <= 0 || amount > left {
            return Err(ApiError::invalid(
                "amount",
                format!(
                    "Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"
                ),
            ));
        }
        let now = charge
            .customer
            .as_deref()
            .map(|c| store.now_for_customer(c))
            .unwrap_or_else(clock::wall_now);
        let (currency, payment_intent) = (charge.currency.clone(), charge.payment_intent.clone());
        let id = new_id("re");
        let seq = store.next_seq();
        let refund = Refund {
            seq,
            id: id.clone(),
            created: now,
            amount,
            currency,
            charge: charge_id.clone(),
            payment_intent,
            reason: p.str("reason").map(str::to_string),
            metadata,
        };
        store.refunds.insert(id.clone(), refund);
        let charge = store.charges.get_mut(&charge_id).expect("checked above");
        charge.amount_refunded += amount;
        charge.refunds.push(id.clone());
        let previous = json!({ "amount_refunded": charge.amount_refunded - amount });
        let charge_obj = objects::charge(store, &store.charges[&charge_id]);
        billing::emit(store, "charge.refunded", charge_obj, Some(previous), now);
        let obj = objects::refund(&store.refunds[&id]);
        billing::emit(store, "refund.created", obj.clone(), None, now);
        Ok(Json(answer(store, obj, p)))
    })
}
