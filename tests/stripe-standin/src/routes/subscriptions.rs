//! `/v1/subscriptions`: create, retrieve, list, update (price/quantity changes with
//! proration, cancel at period end, metadata) and cancel.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::{answer, created_filter, page};
use crate::billing::{self, ItemChange, NewItem, PaymentBehavior};
use crate::errors::{ApiError, ApiResult};
use crate::form::{Params, merge_metadata};
use crate::state::{BillingMode, InvoiceItem, Metadata, PaymentMode, Store, new_id};
use crate::{App, StripeRequest, objects};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/subscriptions", get(list).post(create))
        .route(
            "/v1/subscriptions/{id}",
            get(retrieve).post(update).delete(cancel),
        )
}

fn payment_behavior(p: &Params) -> ApiResult<PaymentBehavior> {
    match p.str("payment_behavior") {
        None | Some("allow_incomplete") => Ok(PaymentBehavior::AllowIncomplete),
        Some("error_if_incomplete") => Ok(PaymentBehavior::ErrorIfIncomplete),
        Some("default_incomplete") => Ok(PaymentBehavior::DefaultIncomplete),
        Some("pending_if_incomplete") => Ok(PaymentBehavior::AllowIncomplete),
        Some(other) => Err(ApiError::invalid(
            "payment_behavior",
            format!("Invalid payment_behavior: {other}"),
        )),
    }
}

async fn create(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "customer",
        "items",
        "default_payment_method",
        "metadata",
        "proration_behavior",
        "payment_behavior",
        "collection_method",
        "off_session",
        "description",
        "currency",
        "payment_settings",
        "billing_mode",
    ])?;
    let customer = p.required_str("customer")?.to_string();
    let billing_mode =
        BillingMode::parse(p.child("billing_mode").str("type"), "billing_mode[type]")?;
    if p.str("collection_method")
        .is_some_and(|c| c != "charge_automatically")
    {
        return Err(ApiError::invalid(
            "collection_method",
            "The stand-in supports charge_automatically only.",
        ));
    }
    let mut items = Vec::new();
    for (i, it) in p.list("items").iter().enumerate() {
        let price = it
            .str("price")
            .ok_or_else(|| ApiError::missing(&format!("items[{i}][price]")))?;
        items.push(NewItem {
            price: price.to_string(),
            quantity: it.u64("quantity")?.unwrap_or(1),
            metadata: it.metadata("metadata")?.unwrap_or_default(),
        });
    }
    if items.is_empty() {
        return Err(ApiError::missing("items"));
    }
    let metadata = p.metadata("metadata")?.unwrap_or_default();
    let behavior = payment_behavior(p)?;
    app.run(&req.info, |store| {
        if store.customer(&customer).is_none() {
            return Err(ApiError::missing_resource(
                "customer", &customer, "customer",
            ));
        }
        let pm = super::payments::default_payment_method_param(store, &customer, p)?;
        let now = store.now_for_customer(&customer);
        let id = billing::create_subscription(
            store,
            &customer,
            items,
            metadata,
            pm,
            behavior,
            billing_mode,
            now,
        )?;
        Ok(Json(answer(
            store,
            objects::subscription(store, &store.subscriptions[&id]),
            p,
        )))
    })
}

async fn retrieve(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let s = store
            .subscriptions
            .get(&id)
            .ok_or_else(|| ApiError::missing_resource("subscription", &id, "id"))?;
        Ok(Json(answer(
            store,
            objects::subscription(store, s),
            &req.params,
        )))
    })
}

async fn list(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "customer",
        "status",
        "price",
        "created",
        "current_period_end",
        "current_period_start",
        "test_clock",
        "collection_method",
        "limit",
        "starting_after",
        "ending_before",
        "automatic_tax",
    ])?;
    let created = created_filter(p, "created")?;
    let status = p.str("status").map(str::to_string);
    app.run(&req.info, |store| {
        let rows = store
            .subscriptions
            .values()
            .filter(|s| p.str("customer").is_none_or(|c| s.customer == c))
            .filter(|s| {
                p.str("test_clock")
                    .is_none_or(|c| s.test_clock.as_deref() == Some(c))
            })
            .filter(|s| {
                p.str("price")
                    .is_none_or(|pr| s.items.iter().any(|i| i.price == pr))
            })
            .filter(|s| match status.as_deref() {
                None => !matches!(s.status.as_str(), "canceled" | "incomplete_expired"),
                Some("all") => true,
                Some("ended") => matches!(s.status.as_str(), "canceled" | "incomplete_expired"),
                Some(st) => s.status == st,
            })
            .filter(|s| created(s.created))
            .map(|s| (s.seq, s.id.clone(), objects::subscription(store, s)))
            .collect();
        Ok(Json(page(store, rows, p, "/v1/subscriptions")?))
    })
}

/// The `items[i]` of an update.
pub(crate) fn item_changes(items: &[Params], prefix: &str) -> ApiResult<Vec<ItemChange>> {
    let mut changes = Vec::new();
    for (i, it) in items.iter().enumerate() {
        it.only_nested(
            &format!("{prefix}[{i}]"),
            &[
                "id",
                "price",
                "quantity",
                "deleted",
                "metadata",
                "clear_usage",
                "discounts",
                "tax_rates",
            ],
        )?;
        changes.push(ItemChange {
            id: it.str("id").map(str::to_string),
            price: it.str("price").map(str::to_string),
            quantity: it.u64("quantity")?,
            deleted: it.bool("deleted")?.unwrap_or(false),
            metadata: it.metadata("metadata")?,
        });
    }
    Ok(changes)
}

/// `create_prorations` (default), `always_invoice` or `none`.
pub(crate) fn proration_behavior(value: Option<&str>, param: &str) -> ApiResult<&'static str> {
    match value {
        None | Some("create_prorations") => Ok("create_prorations"),
        Some("always_invoice") => Ok("always_invoice"),
        Some("none") => Ok("none"),
        Some(other) => Err(ApiError::invalid(
            param,
            format!("Invalid {param}: {other}"),
        )),
    }
}

/// The time prorations are computed at: `proration_date` (within the current period) or now.
pub(crate) fn proration_time(
    store: &Store,
    sub_id: &str,
    proration_date: Option<i64>,
    param: &str,
) -> ApiResult<i64> {
    let sub = &store.subscriptions[sub_id];
    let now = store.now_for_customer(&sub.customer);
    match proration_date {
        None => Ok(now),
        Some(t) => {
            let (start, end) = sub.period();
            if t < start || t > end {
                return Err(ApiError::invalid(
                    param,
                    format!("proration_date must be within the current period ({start}..{end})."),
                ));
            }
            Ok(t)
        }
    }
}

async fn update(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "items",
        "proration_behavior",
        "proration_date",
        "cancel_at_period_end",
        "cancel_at",
        "metadata",
        "default_payment_method",
        "payment_behavior",
        "description",
        "cancellation_details",
        "off_session",
        "collection_method",
    ])?;
    let changes = item_changes(&p.list("items"), "items")?;
    let behavior = proration_behavior(p.str("proration_behavior"), "proration_behavior")?;
    let proration_date = p.i64("proration_date")?;
    let cancel_at_period_end = p.bool("cancel_at_period_end")?;
    let cancel_at = p.nullable_str("cancel_at");
    let metadata = p.metadata("metadata")?;
    let pay_behavior = payment_behavior(p)?;
    app.run(&req.info, |store| {
        let sub = store.subscriptions.get(&id).ok_or_else(|| ApiError::missing_resource("subscription", &id, "id"))?.clone();
        if matches!(sub.status.as_str(), "canceled" | "incomplete_expired") {
            return Err(ApiError::bad_request(format!(
                "A canceled subscription can only update its cancellation_details and metadata. ({})",
                sub.id
            )));
        }
        let now = store.now_for_customer(&sub.customer);
        let t = proration_time(store, &id, proration_date, "proration_date")?;
        let (mut new_items, prorations) = billing::plan_item_changes(store, &sub, &changes, t)?;
        if behavior == "none" {
            billing::keep_debits(&sub.items, &mut new_items);
        }
        let net: i64 = prorations.iter().map(|p| p.amount).sum();
        if behavior == "always_invoice"
            && pay_behavior == PaymentBehavior::ErrorIfIncomplete
            && net > 0
            && store.customers.get(&sub.customer).is_some_and(|c| c.effective_payment_mode() != PaymentMode::Succeed)
        {
            return Err(ApiError::card_declined());
        }
        let before = objects::subscription(store, &sub);
        let pm = match p.nullable_str("default_payment_method") {
            Some(Some(pm)) => Some(Some(super::payments::attach_payment_method(store, &sub.customer, pm, "default_payment_method")?)),
            Some(None) => Some(None),
            None => None,
        };
        {
            let s = store.subscriptions.get_mut(&id).expect("checked above");
            s.items = new_items;
            if let Some(flag) = cancel_at_period_end {
                s.cancel_at_period_end = flag;
                s.cancel_at = flag.then(|| s.period().1);
                s.canceled_at = flag.then_some(now);
                s.cancellation_reason = flag.then(|| "cancellation_requested".to_string());
            }
            if let Some(at) = cancel_at {
                match at {
                    Some(v) => {
                        let v: i64 = v.parse().map_err(|_| ApiError::invalid("cancel_at", format!("Invalid integer: {v}")))?;
                        s.cancel_at = Some(v);
                        s.canceled_at = Some(now);
                    }
                    None => {
                        s.cancel_at = None;
                        s.cancel_at_period_end = false;
                        s.canceled_at = None;
                    }
                }
            }
            if let Some(m) = metadata {
                merge_metadata(&mut s.metadata, m);
            }
            if let Some(pm) = pm {
                s.default_payment_method = pm;
            }
        }
        let after = objects::subscription(store, &store.subscriptions[&id]);
        let previous = super::customers::previous_attributes(&before, &after);
        if previous.as_object().is_some_and(|m| !m.is_empty()) {
            billing::emit(store, "customer.subscription.updated", after, Some(previous), now);
        }
        match behavior {
            "always_invoice" if !prorations.is_empty() => {
                let snapshot = store.subscriptions[&id].clone();
                billing::proration_items(store, &snapshot, &prorations, None, now);
                let invoice = billing::create_draft(
                    store,
                    &sub.customer,
                    Some(&id),
                    "subscription_update",
                    &sub.currency,
                    Vec::new(),
                    (t, t),
                    now,
                    None,
                    true,
                );
                if let Some(s) = store.subscriptions.get_mut(&id) {
                    s.latest_invoice = Some(invoice.clone());
                }
                billing::finalize_and_collect(store, &invoice, now);
            }
            "create_prorations" if !prorations.is_empty() => {
                let snapshot = store.subscriptions[&id].clone();
                billing::proration_items(store, &snapshot, &prorations, None, now);
            }
            _ => {}
        }
        Ok(Json(answer(store, objects::subscription(store, &store.subscriptions[&id]), p)))
    })
}

async fn cancel(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&["invoice_now", "prorate", "cancellation_details"])?;
    let invoice_now = p.bool("invoice_now")?.unwrap_or(false);
    let prorate = p.bool("prorate")?.unwrap_or(false);
    let details = p.child("cancellation_details");
    details.only(&["comment", "feedback"])?;
    let comment = details.str("comment").map(str::to_owned);
    app.run(&req.info, |store| {
        let sub = store
            .subscriptions
            .get(&id)
            .ok_or_else(|| ApiError::missing_resource("subscription", &id, "id"))?
            .clone();
        if sub.status == "canceled" {
            return Err(ApiError::bad_request(format!(
                "This subscription is already canceled: {id}"
            )));
        }
        let now = store.now_for_customer(&sub.customer);
        if prorate {
            let (start, end) = sub.period();
            for item in &sub.items {
                let amount = billing::credit_base(store, &sub, item);
                let credit = -billing::prorate(amount, end - now, end - start);
                if credit == 0 {
                    continue;
                }
                let ii = new_id("ii");
                let seq = store.next_seq();
                let name = store
                    .prices
                    .get(&item.price)
                    .and_then(|p| store.products.get(&p.product))
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                store.invoice_items.insert(
                    ii.clone(),
                    InvoiceItem {
                        seq,
                        id: ii.clone(),
                        created: now,
                        customer: sub.customer.clone(),
                        amount: credit,
                        currency: sub.currency.clone(),
                        description: Some(format!(
                            "Unused time on {name} after {}",
                            crate::clock::short_date(now)
                        )),
                        period_start: now,
                        period_end: end,
                        proration: true,
                        quantity: item.quantity,
                        price: Some(item.price.clone()),
                        subscription: Some(id.clone()),
                        subscription_item: Some(item.id.clone()),
                        invoice: None,
                        metadata: Metadata::new(),
                        test_clock: sub.test_clock.clone(),
                        deleted: false,
                    },
                );
                let obj = objects::invoice_item(store, &store.invoice_items[&ii]);
                billing::emit(store, "invoiceitem.created", obj, None, now);
            }
        }
        if let Some(s) = store.subscriptions.get_mut(&id) {
            s.cancellation_comment = comment.clone();
        }
        billing::cancel_now(store, &id, now, "cancellation_requested");
        if invoice_now {
            // Stripe's final invoice takes the pending prorations (and metered usage, not
            // modelled); other pending items stay pending for the customer's next invoice.
            let proration_of_this = |ii: &crate::state::InvoiceItem| {
                ii.proration && ii.subscription.as_deref() == Some(id.as_str())
            };
            let has_pending = store
                .invoice_items
                .values()
                .any(|ii| !ii.deleted && ii.invoice.is_none() && proration_of_this(ii));
            if has_pending {
                let invoice = billing::create_draft(
                    store,
                    &sub.customer,
                    Some(&id),
                    "subscription_update",
                    &sub.currency,
                    Vec::new(),
                    (now, now),
                    now,
                    None,
                    false,
                );
                billing::sweep_pending_items_where(store, &invoice, proration_of_this);
                if let Some(s) = store.subscriptions.get_mut(&id) {
                    s.latest_invoice = Some(invoice.clone());
                }
                billing::finalize_and_collect(store, &invoice, now);
            }
        }
        Ok(Json(answer(
            store,
            objects::subscription(store, &store.subscriptions[&id]),
            p,
        )))
    })
}
