//! `/v1/invoices`: retrieve, list, create (one-off), pay, finalize, void, delete drafts, lines,
//! and `create_preview` — the invoice an update would produce, computed by the same code as
//! the update itself so the numbers agree to the cent.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use super::subscriptions::{item_changes, proration_behavior, proration_time};
use super::{answer, created_filter, page};
use crate::billing;
use crate::errors::{ApiError, ApiResult};
use crate::state::{Invoice, InvoiceLine, LineSource, Metadata, Store, new_id};
use crate::{App, StripeRequest, objects};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/invoices", get(list).post(create))
        .route("/v1/invoices/create_preview", post(create_preview))
        .route("/v1/invoices/{id}", get(retrieve).delete(delete_draft))
        .route("/v1/invoices/{id}/lines", get(lines))
        .route("/v1/invoices/{id}/pay", post(pay))
        .route("/v1/invoices/{id}/finalize", post(finalize))
        .route("/v1/invoices/{id}/void", post(void))
}

fn invoice_or_404<'a>(store: &'a Store, id: &str) -> ApiResult<&'a Invoice> {
    store
        .invoices
        .get(id)
        .ok_or_else(|| ApiError::missing_resource("invoice", id, "invoice"))
}

async fn retrieve(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let inv = invoice_or_404(store, &id)?;
        Ok(Json(answer(
            store,
            objects::invoice(store, inv),
            &req.params,
        )))
    })
}

async fn lines(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let inv = invoice_or_404(store, &id)?;
        let rows = inv
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    u64::MAX - i as u64,
                    l.id.clone(),
                    objects::invoice_line(store, &inv.id, l),
                )
            })
            .collect();
        Ok(Json(page(
            store,
            rows,
            &req.params,
            &format!("/v1/invoices/{id}/lines"),
        )?))
    })
}

async fn list(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "customer",
        "subscription",
        "status",
        "collection_method",
        "created",
        "due_date",
        "limit",
        "starting_after",
        "ending_before",
    ])?;
    let created = created_filter(p, "created")?;
    app.run(&req.info, |store| {
        let rows = store
            .invoices
            .values()
            .filter(|i| p.str("customer").is_none_or(|c| i.customer == c))
            .filter(|i| {
                p.str("subscription")
                    .is_none_or(|s| i.subscription.as_deref() == Some(s))
            })
            .filter(|i| p.str("status").is_none_or(|s| i.status == s))
            .filter(|i| created(i.created))
            .map(|i| (i.seq, i.id.clone(), objects::invoice(store, i)))
            .collect();
        Ok(Json(page(store, rows, p, "/v1/invoices")?))
    })
}

/// A one-off draft invoice; by default it takes the customer's pending invoice items.
async fn create(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "customer",
        "auto_advance",
        "collection_method",
        "description",
        "metadata",
        "subscription",
        "pending_invoice_items_behavior",
        "currency",
        "days_until_due",
        "default_payment_method",
    ])?;
    let customer = p.required_str("customer")?.to_string();
    let metadata = p.metadata("metadata")?.unwrap_or_default();
    let auto_advance = p.bool("auto_advance")?.unwrap_or(false);
    let include_pending = match p.str("pending_invoice_items_behavior") {
        None | Some("exclude") => false,
        Some("include") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "pending_invoice_items_behavior",
                format!("Invalid value: {other}"),
            ));
        }
    };
    app.run(&req.info, |store| {
        if store.customer(&customer).is_none() {
            return Err(ApiError::missing_resource(
                "customer", &customer, "customer",
            ));
        }
        let now = store.now_for_customer(&customer);
        let payment_method = super::payments::default_payment_method_param(store, &customer, p)?;
        let currency = p.str("currency").unwrap_or("usd").to_string();
        let subscription = p.str("subscription");
        let id = billing::create_draft(
            store,
            &customer,
            subscription,
            "manual",
            &currency,
            Vec::new(),
            (now, now),
            now,
            None,
            include_pending,
        );
        if let Some(inv) = store.invoices.get_mut(&id) {
            inv.metadata = metadata;
            inv.auto_advance = auto_advance;
            inv.default_payment_method = payment_method;
        }
        Ok(Json(answer(
            store,
            objects::invoice(store, &store.invoices[&id]),
            p,
        )))
    })
}

async fn finalize(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&["auto_advance"])?;
    let auto_advance = p.bool("auto_advance")?;
    app.run(&req.info, |store| {
        let inv = invoice_or_404(store, &id)?;
        let now = store.now_for_customer(&inv.customer);
        if let (Some(a), Some(inv)) = (auto_advance, store.invoices.get_mut(&id)) {
            inv.auto_advance = a;
        }
        billing::finalize(store, &id, now)?;
        Ok(Json(answer(
            store,
            objects::invoice(store, &store.invoices[&id]),
            p,
        )))
    })
}

async fn pay(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "paid_out_of_band",
        "off_session",
        "payment_method",
        "forgive",
        "source",
        "mandate",
    ])?;
    let out_of_band = p.bool("paid_out_of_band")?.unwrap_or(false);
    app.run(&req.info, |store| {
        let inv = invoice_or_404(store, &id)?;
        let now = store.now_for_customer(&inv.customer);
        if inv.status == "draft" {
            billing::finalize(store, &id, now)?;
        }
        if store.invoices[&id].status == "paid" {
            return Ok(Json(answer(
                store,
                objects::invoice(store, &store.invoices[&id]),
                p,
            )));
        }
        if out_of_band {
            billing::mark_paid_out_of_band(store, &id, now);
        } else if !billing::attempt_collection(store, &id, now)? {
            return Err(ApiError::card_declined());
        }
        Ok(Json(answer(
            store,
            objects::invoice(store, &store.invoices[&id]),
            p,
        )))
    })
}

async fn void(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let inv = invoice_or_404(store, &id)?;
        if inv.status != "open" && inv.status != "uncollectible" {
            return Err(ApiError::bad_request(format!(
                "You can only void open invoices; this one is {}.",
                inv.status
            )));
        }
        let now = store.now_for_customer(&inv.customer);
        let inv = store.invoices.get_mut(&id).expect("checked above");
        inv.status = "void".into();
        inv.voided_at = Some(now);
        inv.next_payment_attempt = None;
        let obj = objects::invoice(store, &store.invoices[&id]);
        billing::emit(store, "invoice.voided", obj.clone(), None, now);
        Ok(Json(obj))
    })
}

async fn delete_draft(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let inv = invoice_or_404(store, &id)?;
        if inv.status != "draft" {
            return Err(ApiError::bad_request("You can only delete draft invoices."));
        }
        let obj = objects::invoice(store, inv);
        let now = store.now_for_customer(&inv.customer);
        // its invoice items go back to pending
        for ii in store.invoice_items.values_mut() {
            if ii.invoice.as_deref() == Some(id.as_str()) {
                ii.invoice = None;
            }
        }
        store.invoices.remove(&id);
        billing::emit(store, "invoice.deleted", obj, None, now);
        Ok(Json(objects::deleted(&id, "invoice")))
    })
}

fn pending_lines(store: &Store, customer: &str, subscription: Option<&str>) -> Vec<InvoiceLine> {
    let mut items: Vec<_> = store
        .invoice_items
        .values()
        .filter(|ii| {
            !ii.deleted
                && ii.invoice.is_none()
                && ii.customer == customer
                && (ii.subscription.is_none() || ii.subscription.as_deref() == subscription)
        })
        .collect();
    items.sort_by_key(|ii| ii.seq);
    items.into_iter().map(billing::line_from_item).collect()
}

/// `POST /v1/invoices/create_preview`.
async fn create_preview(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "customer",
        "subscription",
        "subscription_details",
        "preview_mode",
        "currency",
        "automatic_tax",
        "customer_details",
        "discounts",
        "issuer",
        "on_behalf_of",
    ])?;
    let details = p.child("subscription_details");
    details.only_nested(
        "subscription_details",
        &[
            "items",
            "proration_date",
            "proration_behavior",
            "cancel_at_period_end",
            "metadata",
            "default_tax_rates",
            "cancel_now",
        ],
    )?;
    let changes = item_changes(&details.list("items"), "subscription_details[items]")?;
    let behavior = proration_behavior(
        details.str("proration_behavior"),
        "subscription_details[proration_behavior]",
    )?;
    let proration_date = details.i64("proration_date")?;
    // Stripe: "If set, `subscription`, and one of `subscription_details.items`, or
    // `subscription_details.trial_end` are required" (trials are not modelled).
    if proration_date.is_some() && changes.is_empty() {
        return Err(ApiError::invalid(
            "subscription_details[proration_date]",
            "proration_date can only be used with subscription and subscription_details[items] or subscription_details[trial_end].",
        ));
    }
    let cancel_at_period_end = details.bool("cancel_at_period_end")?.unwrap_or(false);
    let cancel_now = details.bool("cancel_now")?.unwrap_or(false);
    if cancel_now && (!changes.is_empty() || cancel_at_period_end) {
        return Err(ApiError::invalid(
            "subscription_details[cancel_now]",
            "cancel_now cannot be combined with items or cancel_at_period_end.",
        ));
    }
    app.run(&req.info, |store| {
        let sub = match p.str("subscription") {
            Some(id) => Some(
                store
                    .subscriptions
                    .get(id)
                    .ok_or_else(|| ApiError::missing_resource("subscription", id, "subscription"))?
                    .clone(),
            ),
            None => None,
        };
        let customer = match (p.str("customer"), &sub) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => s.customer.clone(),
            (None, None) => return Err(ApiError::missing("customer")),
        };
        if store.customer(&customer).is_none() {
            return Err(ApiError::missing_resource(
                "customer", &customer, "customer",
            ));
        }
        let now = store.now_for_customer(&customer);
        let mut preview = Invoice {
            seq: 0,
            id: format!("upcoming_{}", new_id("in")),
            created: now,
            customer: customer.clone(),
            subscription: sub.as_ref().map(|s| s.id.clone()),
            currency: sub
                .as_ref()
                .map(|s| s.currency.clone())
                .unwrap_or_else(|| p.str("currency").unwrap_or("usd").to_string()),
            status: "draft".into(),
            billing_reason: "manual".into(),
            lines: Vec::new(),
            number: None,
            period_start: now,
            period_end: now,
            attempt_count: 0,
            attempted: false,
            next_payment_attempt: None,
            amount_paid: 0,
            finalized_at: None,
            paid_at: None,
            voided_at: None,
            automatically_finalizes_at: None,
            payment_intent: None,
            metadata: Metadata::new(),
            test_clock: store
                .customers
                .get(&customer)
                .and_then(|c| c.test_clock.clone()),
            auto_advance: false,
            subscription_metadata: sub.as_ref().map(|s| s.metadata.clone()).unwrap_or_default(),
            default_payment_method: None,
        };
        let mut lines = pending_lines(store, &customer, preview.subscription.as_deref());
        if let Some(sub) = &sub {
            let t = proration_time(
                store,
                &sub.id,
                proration_date,
                "subscription_details[proration_date]",
            )?;
            // Cancelling now credits every item's unused time (from what was debited, in
            // flexible billing mode) and renews nothing: each item is removed at `t`.
            let removals: Vec<billing::ItemChange>;
            let changes = if cancel_now {
                removals = sub
                    .items
                    .iter()
                    .map(|item| billing::ItemChange {
                        id: Some(item.id.clone()),
                        price: None,
                        quantity: None,
                        deleted: true,
                        metadata: None,
                    })
                    .collect();
                &removals
            } else {
                &changes
            };
            let (new_items, prorations) = billing::plan_item_changes(store, sub, changes, t)?;
            let proration_lines: Vec<InvoiceLine> = prorations
                .iter()
                .map(|pr| InvoiceLine {
                    id: new_id("il_tmp"),
                    amount: pr.amount,
                    currency: sub.currency.clone(),
                    description: Some(pr.description.clone()),
                    period_start: pr.period.0,
                    period_end: pr.period.1,
                    quantity: pr.quantity,
                    price: Some(pr.price.clone()),
                    proration: true,
                    source: LineSource::InvoiceItem {
                        invoice_item: new_id("ii_tmp"),
                        subscription: Some(sub.id.clone()),
                        subscription_item: Some(pr.subscription_item.clone()),
                    },
                    metadata: Metadata::new(),
                })
                .collect();
            let mut next = sub.clone();
            next.items = new_items;
            let (start, end) = sub.period();
            if behavior == "always_invoice" && !proration_lines.is_empty() {
                // the invoice the update itself would create and charge now
                let mut all = proration_lines;
                all.extend(lines);
                lines = all;
                preview.billing_reason = "subscription_update".into();
                preview.period_start = t;
                preview.period_end = t;
            } else {
                if behavior == "create_prorations" {
                    lines.extend(proration_lines);
                }
                if !(cancel_now || cancel_at_period_end || sub.cancel_at_period_end) {
                    let (renewal, _) = billing::renewal_lines(store, &next);
                    lines.extend(renewal);
                }
                preview.billing_reason = "upcoming".into();
                preview.period_start = start;
                preview.period_end = end;
                preview.created = end;
            }
        }
        for line in &mut lines {
            if !line.id.starts_with("il_tmp") {
                line.id = new_id("il_tmp");
            }
        }
        preview.lines = lines;
        Ok(Json(answer(store, objects::invoice(store, &preview), p)))
    })
}
