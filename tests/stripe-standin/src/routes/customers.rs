//! `/v1/customers`.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::{answer, created_filter, page};
use crate::errors::{ApiError, ApiResult};
use crate::form::merge_metadata;
use crate::state::{Customer, PaymentMode, new_id};
use crate::{App, StripeRequest, billing, clock, objects};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/customers", get(list).post(create))
        .route(
            "/v1/customers/{id}",
            get(retrieve).post(update).delete(delete),
        )
}

const KNOWN: &[&str] = &[
    "email",
    "name",
    "description",
    "metadata",
    "test_clock",
    "invoice_settings",
    "payment_method",
    "phone",
    "address",
    "shipping",
    "preferred_locales",
    "tax_exempt",
    "balance",
    "invoice_prefix",
    "source",
    "tax",
    "tax_id_data",
    "next_invoice_sequence",
    "cash_balance",
];

async fn create(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(KNOWN)?;
    let metadata = p.metadata("metadata")?.unwrap_or_default();
    app.run(&req.info, |store| {
        let test_clock = match p.str("test_clock") {
            Some(id) => {
                if !store.test_clocks.contains_key(id) {
                    return Err(ApiError::missing_resource(
                        "test_helpers.test_clock",
                        id,
                        "test_clock",
                    ));
                }
                Some(id.to_string())
            }
            None => None,
        };
        let now = test_clock
            .as_ref()
            .and_then(|c| store.test_clocks.get(c))
            .map(|c| c.frozen_time)
            .unwrap_or_else(clock::wall_now);
        let id = new_id("cus");
        let seq = store.next_seq();
        let prefix: String = new_id("x")[2..10].to_uppercase();
        store.customers.insert(
            id.clone(),
            Customer {
                seq,
                id: id.clone(),
                created: now,
                email: p.str("email").map(str::to_string),
                name: p.str("name").map(str::to_string),
                description: p.str("description").map(str::to_string),
                metadata,
                test_clock,
                default_payment_method: None,
                invoice_prefix: prefix,
                next_invoice_sequence: 1,
                payment_mode: PaymentMode::Succeed,
                deleted: false,
            },
        );
        if let Some(pm) = p.str("payment_method") {
            super::payments::attach_payment_method(store, &id, pm, "payment_method")?;
        }
        if let Some(pm) = p.child("invoice_settings").str("default_payment_method") {
            let pm = super::payments::attach_payment_method(
                store,
                &id,
                pm,
                "invoice_settings[default_payment_method]",
            )?;
            if let Some(c) = store.customers.get_mut(&id) {
                c.default_payment_method = Some(pm);
            }
        }
        let obj = objects::customer(&store.customers[&id]);
        billing::emit(store, "customer.created", obj.clone(), None, now);
        Ok(Json(answer(store, obj, p)))
    })
}

async fn retrieve(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let c = store
            .customers
            .get(&id)
            .ok_or_else(|| ApiError::missing_resource("customer", &id, "id"))?;
        if c.deleted {
            return Ok(Json(objects::deleted(&id, "customer")));
        }
        Ok(Json(answer(store, objects::customer(c), &req.params)))
    })
}

async fn update(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(KNOWN)?;
    let metadata = p.metadata("metadata")?;
    app.run(&req.info, |store| {
        let before = objects::customer(
            store
                .customer(&id)
                .ok_or_else(|| ApiError::missing_resource("customer", &id, "id"))?,
        );
        let now = store.now_for_customer(&id);
        if let Some(pm) = p.str("payment_method") {
            super::payments::attach_payment_method(store, &id, pm, "payment_method")?;
        }
        let default_pm = match p
            .child("invoice_settings")
            .nullable_str("default_payment_method")
        {
            Some(Some(pm)) => Some(Some(super::payments::attach_payment_method(
                store,
                &id,
                pm,
                "invoice_settings[default_payment_method]",
            )?)),
            Some(None) => Some(None),
            None => None,
        };
        let c = store.customers.get_mut(&id).expect("checked above");
        if let Some(email) = p.nullable_str("email") {
            c.email = email.map(str::to_string);
        }
        if let Some(name) = p.nullable_str("name") {
            c.name = name.map(str::to_string);
        }
        if let Some(d) = p.nullable_str("description") {
            c.description = d.map(str::to_string);
        }
        if let Some(m) = metadata {
            merge_metadata(&mut c.metadata, m);
        }
        if let Some(pm) = default_pm {
            c.default_payment_method = pm;
        }
        let after = objects::customer(c);
        let previous = previous_attributes(&before, &after);
        if previous.as_object().is_some_and(|m| !m.is_empty()) {
            billing::emit(
                store,
                "customer.updated",
                after.clone(),
                Some(previous),
                now,
            );
        }
        Ok(Json(answer(store, after, p)))
    })
}

/// The top-level fields that changed, with their old values (`data.previous_attributes`).
pub(crate) fn previous_attributes(before: &Value, after: &Value) -> Value {
    let mut prev = serde_json::Map::new();
    if let (Some(b), Some(a)) = (before.as_object(), after.as_object()) {
        for (k, old) in b {
            if a.get(k) != Some(old) {
                prev.insert(k.clone(), old.clone());
            }
        }
    }
    Value::Object(prev)
}

async fn delete(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let c = store
            .customer(&id)
            .ok_or_else(|| ApiError::missing_resource("customer", &id, "id"))?;
        let obj = objects::customer(c);
        let now = store.now_for_customer(&id);
        let subs: Vec<String> = store
            .subscriptions
            .values()
            .filter(|s| s.customer == id && s.status != "canceled")
            .map(|s| s.id.clone())
            .collect();
        for sub in subs {
            billing::cancel_now(store, &sub, now, "cancellation_requested");
        }
        if let Some(c) = store.customers.get_mut(&id) {
            c.deleted = true;
        }
        billing::emit(store, "customer.deleted", obj, None, now);
        Ok(Json(objects::deleted(&id, "customer")))
    })
}

async fn list(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "email",
        "test_clock",
        "limit",
        "starting_after",
        "ending_before",
        "created",
    ])?;
    let created = created_filter(p, "created")?;
    app.run(&req.info, |store| {
        let rows = store
            .customers
            .values()
            .filter(|c| !c.deleted)
            .filter(|c| p.str("email").is_none_or(|e| c.email.as_deref() == Some(e)))
            .filter(|c| {
                p.str("test_clock")
                    .is_none_or(|t| c.test_clock.as_deref() == Some(t))
            })
            .filter(|c| created(c.created))
            .map(|c| (c.seq, c.id.clone(), objects::customer(c)))
            .collect();
        Ok(Json(page(store, rows, p, "/v1/customers")?))
    })
}
