//! Checkout sessions (`/v1/checkout/sessions`), the stand-in's "customer pays" action
//! (`POST /v1/test_helpers/checkout/sessions/{id}/complete`) and Customer Portal sessions.

use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use super::{answer, page};
use crate::billing::{self, NewItem, PaymentBehavior};
use crate::errors::{ApiError, ApiResult};
use crate::state::{
    BillingMode, CheckoutLine, CheckoutSession, Customer, PaymentMethod, PaymentMode,
    PortalSession, Store, new_id,
};
use crate::{App, StripeRequest, clock, objects};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/checkout/sessions", get(list).post(create))
        .route("/v1/checkout/sessions/{id}", get(retrieve))
        .route("/v1/checkout/sessions/{id}/expire", post(expire))
        .route(
            "/v1/test_helpers/checkout/sessions/{id}/complete",
            post(complete),
        )
        .route("/v1/billing_portal/sessions", post(create_portal_session))
        .route("/checkout/{id}", get(checkout_page))
        .route("/portal/{id}", get(portal_page))
}

const KNOWN: &[&str] = &[
    "mode",
    "customer",
    "customer_email",
    "line_items",
    "success_url",
    "cancel_url",
    "return_url",
    "client_reference_id",
    "metadata",
    "subscription_data",
    "payment_intent_data",
    "allow_promotion_codes",
    "billing_address_collection",
    "payment_method_types",
    "expires_at",
    "ui_mode",
    "locale",
    "customer_update",
    "automatic_tax",
    "tax_id_collection",
    "consent_collection",
    "custom_text",
    "invoice_creation",
    "saved_payment_method_options",
    "payment_method_collection",
    "currency",
    "customer_creation",
    "phone_number_collection",
    "submit_type",
];

async fn create(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(KNOWN)?;
    let mode = p.required_str("mode")?.to_string();
    if !matches!(mode.as_str(), "subscription" | "payment") {
        return Err(ApiError::invalid(
            "mode",
            format!("The stand-in supports mode subscription or payment, not {mode}."),
        ));
    }
    let mut lines = Vec::new();
    for (i, li) in p.list("line_items").iter().enumerate() {
        let price = li
            .str("price")
            .ok_or_else(|| ApiError::missing(&format!("line_items[{i}][price]")))?;
        lines.push(CheckoutLine {
            price: price.to_string(),
            quantity: li.u64("quantity")?.unwrap_or(1),
        });
    }
    if lines.is_empty() {
        return Err(ApiError::missing("line_items"));
    }
    let metadata = p.metadata("metadata")?.unwrap_or_default();
    let subscription_metadata = p
        .child("subscription_data")
        .metadata("metadata")?
        .unwrap_or_default();
    let payment_intent_metadata = p
        .child("payment_intent_data")
        .metadata("metadata")?
        .unwrap_or_default();
    let subscription_billing_mode = BillingMode::parse(
        p.child("subscription_data")
            .child("billing_mode")
            .str("type"),
        "subscription_data[billing_mode][type]",
    )?;
    let save_payment_method = p
        .child("payment_intent_data")
        .str("setup_future_usage")
        .is_some();
    app.run(&req.info, |store| {
        let customer = p.str("customer").map(str::to_string);
        if let Some(c) = &customer
            && store.customer(c).is_none()
        {
            return Err(ApiError::missing_resource("customer", c, "customer"));
        }
        let mut currency = None::<String>;
        let mut subtotal = 0;
        for (i, line) in lines.iter().enumerate() {
            let param = format!("line_items[{i}][price]");
            let price = store.prices.get(&line.price).ok_or_else(|| ApiError::missing_resource("price", &line.price, &param))?;
            if mode == "payment" && price.recurring.is_some() {
                return Err(ApiError::invalid(&param, "You specified `payment` mode but passed a recurring price. Either switch to `subscription` mode or use only one-time prices."));
            }
            if currency.as_ref().is_some_and(|c| *c != price.currency) {
                return Err(ApiError::invalid(&param, "All line items must use the same currency."));
            }
            currency = Some(price.currency.clone());
            subtotal += price.unit_amount * line.quantity as i64;
        }
        if mode == "subscription" {
            let items: Vec<NewItem> = lines
                .iter()
                .map(|l| NewItem { price: l.price.clone(), quantity: l.quantity, metadata: Default::default() })
                .collect();
            billing::validate_recurring_prices(store, &items, "line_items")?;
        }
        let now = customer.as_deref().map(|c| store.now_for_customer(c)).unwrap_or_else(clock::wall_now);
        let id = format!("cs_test_{}", &new_id("x")[2..]);
        let seq = store.next_seq();
        let customer_email = p
            .str("customer_email")
            .map(str::to_string)
            .or_else(|| customer.as_deref().and_then(|c| store.customers.get(c)).and_then(|c| c.email.clone()));
        let session = CheckoutSession {
            seq,
            id: id.clone(),
            created: now,
            mode: mode.clone(),
            customer,
            customer_email,
            line_items: lines.clone(),
            success_url: p.str("success_url").map(str::to_string),
            cancel_url: p.str("cancel_url").map(str::to_string),
            client_reference_id: p.str("client_reference_id").map(str::to_string),
            metadata,
            subscription_metadata,
            payment_intent_metadata,
            subscription_billing_mode,
            save_payment_method,
            status: "open".into(),
            payment_status: "unpaid".into(),
            subscription: None,
            payment_intent: None,
            invoice: None,
            currency: currency.unwrap_or_else(|| "usd".into()),
            amount_subtotal: subtotal,
            url: format!("{}/checkout/{id}", app.public_url),
        };
        store.checkout_sessions.insert(id.clone(), session);
        Ok(Json(answer(store, objects::checkout_session(&store.checkout_sessions[&id]), p)))
    })
}

async fn retrieve(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let s = store
            .checkout_sessions
            .get(&id)
            .ok_or_else(|| ApiError::missing_resource("checkout.session", &id, "session"))?;
        Ok(Json(answer(
            store,
            objects::checkout_session(s),
            &req.params,
        )))
    })
}

async fn list(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "customer",
        "payment_intent",
        "subscription",
        "status",
        "limit",
        "starting_after",
        "ending_before",
        "created",
    ])?;
    app.run(&req.info, |store| {
        let rows = store
            .checkout_sessions
            .values()
            .filter(|s| {
                p.str("customer")
                    .is_none_or(|c| s.customer.as_deref() == Some(c))
            })
            .filter(|s| {
                p.str("subscription")
                    .is_none_or(|c| s.subscription.as_deref() == Some(c))
            })
            .filter(|s| {
                p.str("payment_intent")
                    .is_none_or(|c| s.payment_intent.as_deref() == Some(c))
            })
            .filter(|s| p.str("status").is_none_or(|c| s.status == c))
            .map(|s| (s.seq, s.id.clone(), objects::checkout_session(s)))
            .collect();
        Ok(Json(page(store, rows, p, "/v1/checkout/sessions")?))
    })
}

async fn expire(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let s = store
            .checkout_sessions
            .get_mut(&id)
            .ok_or_else(|| ApiError::missing_resource("checkout.session", &id, "session"))?;
        if s.status != "open" {
            return Err(ApiError::bad_request(format!(
                "Only open sessions can be expired; this one is {}.",
                s.status
            )));
        }
        s.status = "expired".into();
        let obj = objects::checkout_session(s);
        let now = clock::wall_now();
        billing::emit(store, "checkout.session.expired", obj.clone(), None, now);
        Ok(Json(obj))
    })
}

/// Runs `op` with the customer's payments forced to fail, then restores its mode.
fn with_forced_failure<T>(
    store: &mut Store,
    customer: &str,
    force: bool,
    op: impl FnOnce(&mut Store) -> T,
) -> T {
    let saved = store.customers.get(customer).map(|c| c.payment_mode);
    if force && let Some(c) = store.customers.get_mut(customer) {
        c.payment_mode = PaymentMode::Fail;
    }
    let out = op(store);
    if let (Some(mode), Some(c)) = (saved, store.customers.get_mut(customer)) {
        c.payment_mode = mode;
    }
    out
}

/// Stand-in only: the customer fills in the Checkout page and pays.
/// Body: `payment=succeed` (default) or `payment=fail`.
async fn complete(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&["payment", "email"])?;
    let fail = match p.str("payment") {
        None | Some("succeed") => false,
        Some("fail") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "payment",
                format!("payment must be succeed or fail, not {other}"),
            ));
        }
    };
    app.run(&req.info, |store| {
        let session = store
            .checkout_sessions
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError::missing_resource("checkout.session", &id, "session"))?;
        if session.status != "open" {
            return Err(ApiError::bad_request(format!(
                "This Checkout Session is {}, not open.",
                session.status
            )));
        }
        // a session without a customer creates one, as Checkout does
        let customer_id = match &session.customer {
            Some(c) => c.clone(),
            None => {
                let cid = new_id("cus");
                let seq = store.next_seq();
                let email = p
                    .str("email")
                    .map(str::to_string)
                    .or(session.customer_email.clone());
                let now = clock::wall_now();
                store.customers.insert(
                    cid.clone(),
                    Customer {
                        seq,
                        id: cid.clone(),
                        created: now,
                        email,
                        name: None,
                        description: None,
                        metadata: Default::default(),
                        test_clock: None,
                        default_payment_method: None,
                        invoice_prefix: new_id("x")[2..10].to_uppercase(),
                        next_invoice_sequence: 1,
                        payment_mode: PaymentMode::Succeed,
                        deleted: false,
                    },
                );
                let obj = objects::customer(&store.customers[&cid]);
                billing::emit(store, "customer.created", obj, None, now);
                cid
            }
        };
        let now = store.now_for_customer(&customer_id);
        if let Some(s) = store.checkout_sessions.get_mut(&id) {
            s.customer = Some(customer_id.clone());
            if s.customer_email.is_none() {
                s.customer_email = store
                    .customers
                    .get(&customer_id)
                    .and_then(|c| c.email.clone());
            }
        }
        let paid = if session.mode == "subscription" {
            // Since API 2025-03-31 a declined card on a subscription Checkout page leaves
            // nothing behind: no subscription, no invoice; the session stays open for
            // another card.
            let declined = fail
                || store
                    .customers
                    .get(&customer_id)
                    .is_some_and(|c| c.effective_payment_mode() != PaymentMode::Succeed);
            if declined {
                return Ok(Json(answer(
                    store,
                    objects::checkout_session(&store.checkout_sessions[&id]),
                    p,
                )));
            }
            // Checkout attaches the card to the customer and makes it the
            // *subscription's* default payment method; the customer's
            // `invoice_settings.default_payment_method` is left as it was.
            let pm = new_payment_method(store, Some(&customer_id), now);
            let items = session
                .line_items
                .iter()
                .map(|l| NewItem {
                    price: l.price.clone(),
                    quantity: l.quantity,
                    metadata: Default::default(),
                })
                .collect();
            let sub_id = billing::create_subscription(
                store,
                &customer_id,
                items,
                session.subscription_metadata.clone(),
                Some(pm),
                PaymentBehavior::AllowIncomplete,
                session.subscription_billing_mode,
                now,
            )?;
            let sub = &store.subscriptions[&sub_id];
            let ok = sub.status == "active";
            let invoice = sub.latest_invoice.clone();
            if ok && let Some(s) = store.checkout_sessions.get_mut(&id) {
                s.subscription = Some(sub_id);
                s.invoice = invoice;
            }
            ok
        } else {
            // A payment-mode session saves the card to the customer only when asked to
            // (`payment_intent_data[setup_future_usage]`).
            let owner = session.save_payment_method.then_some(customer_id.as_str());
            let pm = new_payment_method(store, owner, now);
            let outcome = with_forced_failure(store, &customer_id, fail, |store| {
                billing::take_payment(
                    store,
                    &customer_id,
                    session.amount_subtotal,
                    &session.currency,
                    None,
                    Some(pm),
                    session.payment_intent_metadata.clone(),
                    now,
                )
            });
            if let Some(s) = store.checkout_sessions.get_mut(&id) {
                s.payment_intent = outcome.payment_intent.clone();
            }
            outcome.succeeded
        };
        if paid {
            if let Some(s) = store.checkout_sessions.get_mut(&id) {
                s.status = "complete".into();
                s.payment_status = "paid".into();
            }
            let obj = objects::checkout_session(&store.checkout_sessions[&id]);
            billing::emit(store, "checkout.session.completed", obj, None, now);
        }
        Ok(Json(answer(
            store,
            objects::checkout_session(&store.checkout_sessions[&id]),
            p,
        )))
    })
}

/// The card the customer entered on the Checkout page, attached to `owner` if any.
fn new_payment_method(store: &mut Store, owner: Option<&str>, now: i64) -> String {
    let pm = new_id("pm");
    store.payment_methods.insert(
        pm.clone(),
        PaymentMethod {
            id: pm.clone(),
            created: now,
            customer: owner.map(str::to_string),
            detached: false,
        },
    );
    pm
}

async fn create_portal_session(
    State(app): State<App>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "customer",
        "return_url",
        "configuration",
        "flow_data",
        "locale",
        "on_behalf_of",
    ])?;
    let customer = p.required_str("customer")?.to_string();
    app.run(&req.info, |store| {
        if store.customer(&customer).is_none() {
            return Err(ApiError::missing_resource(
                "customer", &customer, "customer",
            ));
        }
        let id = new_id("bps");
        let session = PortalSession {
            id: id.clone(),
            created: store.now_for_customer(&customer),
            customer,
            return_url: p.str("return_url").map(str::to_string),
            url: format!("{}/portal/{id}", app.public_url),
        };
        let obj = objects::portal_session(&session);
        store.portal_sessions.insert(id, session);
        Ok(Json(obj))
    })
}

async fn checkout_page(State(app): State<App>, Path(id): Path<String>) -> Html<String> {
    let store = app.store.lock().unwrap_or_else(|p| p.into_inner());
    let body = match store.checkout_sessions.get(&id) {
        Some(s) => format!(
            "<h1>Stripe stand-in Checkout</h1><p>Session {} ({}), status {}, total {} {}.</p><p>Pay with POST /v1/test_helpers/checkout/sessions/{}/complete</p>",
            s.id, s.mode, s.status, s.amount_subtotal, s.currency, s.id
        ),
        None => "<h1>No such Checkout Session</h1>".to_string(),
    };
    Html(body)
}

async fn portal_page(State(app): State<App>, Path(id): Path<String>) -> Html<String> {
    let store = app.store.lock().unwrap_or_else(|p| p.into_inner());
    let body = match store.portal_sessions.get(&id) {
        Some(s) => format!(
            "<h1>Stripe stand-in Customer Portal</h1><p>Customer {}.</p><p><a href=\"{}\">Return</a></p>",
            s.customer,
            s.return_url.clone().unwrap_or_default()
        ),
        None => "<h1>No such portal session</h1>".to_string(),
    };
    Html(body)
}
