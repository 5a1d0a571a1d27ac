//! `/v1/invoiceitems`: one-off charges and credits. Without `invoice` they wait, pending, for
//! the customer's next invoice (a renewal sweeps them in); with `invoice` they join that draft.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::{answer, created_filter, page};
use crate::billing;
use crate::errors::{ApiError, ApiResult};
use crate::form::merge_metadata;
use crate::state::{InvoiceItem, LineSource, new_id};
use crate::{App, StripeRequest, objects};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/invoiceitems", get(list).post(create))
        .route(
            "/v1/invoiceitems/{id}",
            get(retrieve).post(update).delete(delete),
        )
}

async fn create(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "customer",
        "amount",
        "price",
        "pricing",
        "quantity",
        "currency",
        "description",
        "subscription",
        "invoice",
        "metadata",
        "period",
        "discountable",
        "unit_amount_decimal",
        "tax_behavior",
        "tax_code",
        "tax_rates",
        "price_data",
        "discounts",
    ])?;
    let customer = p.required_str("customer")?.to_string();
    let quantity = p.u64("quantity")?.unwrap_or(1);
    let amount = p.i64("amount")?;
    let metadata = p.metadata("metadata")?.unwrap_or_default();
    let period = p.child("period");
    let (period_start, period_end) = (period.i64("start")?, period.i64("end")?);
    let pricing = p.child("pricing");
    let price_param = p
        .str("price")
        .or_else(|| pricing.str("price"))
        .map(str::to_string);
    let unit_decimal = p.str("unit_amount_decimal").map(str::to_string);
    app.run(&req.info, |store| {
        let c = store
            .customer(&customer)
            .ok_or_else(|| ApiError::missing_resource("customer", &customer, "customer"))?;
        let test_clock = c.test_clock.clone();
        let now = store.now_for_customer(&customer);
        let (amount, currency, price) = match (amount, &price_param, &unit_decimal) {
            (Some(a), _, _) => (
                a,
                p.str("currency")
                    .map(str::to_lowercase)
                    .ok_or_else(|| ApiError::missing("currency"))?,
                None,
            ),
            (None, Some(price), _) => {
                let pr = store
                    .prices
                    .get(price)
                    .ok_or_else(|| ApiError::missing_resource("price", price, "price"))?;
                (
                    pr.unit_amount * quantity as i64,
                    pr.currency.clone(),
                    Some(price.clone()),
                )
            }
            (None, None, Some(d)) => {
                let unit = super::prices::decimal_to_minor(d).ok_or_else(|| {
                    ApiError::invalid("unit_amount_decimal", format!("Invalid decimal: {d}"))
                })?;
                (
                    unit * quantity as i64,
                    p.str("currency")
                        .map(str::to_lowercase)
                        .ok_or_else(|| ApiError::missing("currency"))?,
                    None,
                )
            }
            (None, None, None) => return Err(ApiError::missing("amount")),
        };
        let subscription = p.str("subscription").map(str::to_string);
        if let Some(s) = &subscription
            && store
                .subscriptions
                .get(s)
                .is_none_or(|s| s.customer != customer)
        {
            return Err(ApiError::missing_resource(
                "subscription",
                s,
                "subscription",
            ));
        }
        let invoice = p.str("invoice").map(str::to_string);
        if let Some(inv_id) = &invoice {
            let inv = store
                .invoices
                .get(inv_id)
                .ok_or_else(|| ApiError::missing_resource("invoice", inv_id, "invoice"))?;
            if inv.status != "draft" {
                return Err(ApiError::invalid(
                    "invoice",
                    format!(
                        "You can only add invoice items to draft invoices; {inv_id} is {}.",
                        inv.status
                    ),
                ));
            }
            if inv.customer != customer {
                return Err(ApiError::invalid(
                    "invoice",
                    "The invoice belongs to another customer.",
                ));
            }
        }
        let id = new_id("ii");
        let seq = store.next_seq();
        let ii = InvoiceItem {
            seq,
            id: id.clone(),
            created: now,
            customer: customer.clone(),
            amount,
            currency,
            description: p.str("description").map(str::to_string),
            period_start: period_start.unwrap_or(now),
            period_end: period_end.unwrap_or(now),
            proration: false,
            quantity,
            price,
            subscription,
            subscription_item: None,
            invoice: invoice.clone(),
            metadata,
            test_clock,
            deleted: false,
        };
        let line = billing::line_from_item(&ii);
        store.invoice_items.insert(id.clone(), ii);
        if let Some(inv_id) = &invoice
            && let Some(inv) = store.invoices.get_mut(inv_id)
        {
            inv.lines.push(line);
        }
        let obj = objects::invoice_item(store, &store.invoice_items[&id]);
        billing::emit(store, "invoiceitem.created", obj.clone(), None, now);
        Ok(Json(answer(store, obj, p)))
    })
}

async fn retrieve(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let ii = store
            .invoice_items
            .get(&id)
            .filter(|i| !i.deleted)
            .ok_or_else(|| ApiError::missing_resource("invoiceitem", &id, "id"))?;
        Ok(Json(answer(
            store,
            objects::invoice_item(store, ii),
            &req.params,
        )))
    })
}

/// Changes description, metadata or amount of an item still pending or on a draft.
async fn update(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "description",
        "metadata",
        "amount",
        "quantity",
        "period",
        "discountable",
    ])?;
    let metadata = p.metadata("metadata")?;
    let amount = p.i64("amount")?;
    app.run(&req.info, |store| {
        let ii = store.invoice_items.get(&id).filter(|i| !i.deleted).ok_or_else(|| ApiError::missing_resource("invoiceitem", &id, "id"))?;
        if let Some(inv) = ii.invoice.as_ref().and_then(|i| store.invoices.get(i))
            && inv.status != "draft"
        {
            return Err(ApiError::bad_request("This invoice item is on a finalized invoice and cannot be changed."));
        }
        let invoice = ii.invoice.clone();
        let ii = store.invoice_items.get_mut(&id).expect("checked above");
        if let Some(d) = p.nullable_str("description") {
            ii.description = d.map(str::to_string);
        }
        if let Some(m) = metadata {
            merge_metadata(&mut ii.metadata, m);
        }
        if let Some(a) = amount {
            ii.amount = a;
        }
        let line = billing::line_from_item(ii);
        if let Some(inv) = invoice.and_then(|i| store.invoices.get_mut(&i)) {
            for l in &mut inv.lines {
                if matches!(&l.source, LineSource::InvoiceItem { invoice_item, .. } if *invoice_item == id) {
                    let keep = l.id.clone();
                    *l = line.clone();
                    l.id = keep;
                }
            }
        }
        Ok(Json(answer(store, objects::invoice_item(store, &store.invoice_items[&id]), p)))
    })
}

async fn delete(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let ii = store.invoice_items.get(&id).filter(|i| !i.deleted).ok_or_else(|| ApiError::missing_resource("invoiceitem", &id, "id"))?;
        if let Some(inv) = ii.invoice.as_ref().and_then(|i| store.invoices.get(i))
            && inv.status != "draft"
        {
            return Err(ApiError::bad_request("This invoice item is on a finalized invoice and cannot be deleted."));
        }
        let obj = objects::invoice_item(store, ii);
        let now = store.now_for_customer(&ii.customer);
        let invoice = ii.invoice.clone();
        if let Some(inv) = invoice.and_then(|i| store.invoices.get_mut(&i)) {
            inv.lines.retain(|l| !matches!(&l.source, LineSource::InvoiceItem { invoice_item, .. } if *invoice_item == id));
        }
        if let Some(ii) = store.invoice_items.get_mut(&id) {
            ii.deleted = true;
        }
        billing::emit(store, "invoiceitem.deleted", obj, None, now);
        Ok(Json(objects::deleted(&id, "invoiceitem")))
    })
}

async fn list(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "customer",
        "invoice",
        "pending",
        "created",
        "limit",
        "starting_after",
        "ending_before",
    ])?;
    let pending = p.bool("pending")?;
    let created = created_filter(p, "created")?;
    app.run(&req.info, |store| {
        let rows = store
            .invoice_items
            .values()
            .filter(|i| !i.deleted)
            .filter(|i| p.str("customer").is_none_or(|c| i.customer == c))
            .filter(|i| {
                p.str("invoice")
                    .is_none_or(|inv| i.invoice.as_deref() == Some(inv))
            })
            .filter(|i| pending.is_none_or(|want| i.invoice.is_none() == want))
            .filter(|i| created(i.created))
            .map(|i| (i.seq, i.id.clone(), objects::invoice_item(store, i)))
            .collect();
        Ok(Json(page(store, rows, p, "/v1/invoiceitems")?))
    })
}
