//! `/v1/prices`.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::customers::previous_attributes;
use super::{answer, created_filter, page};
use crate::clock::Interval;
use crate::errors::{ApiError, ApiResult};
use crate::form::merge_metadata;
use crate::state::{Price, Recurring, Store, new_id};
use crate::{App, StripeRequest, billing, clock, objects};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/prices", get(list).post(create))
        .route("/v1/prices/{id}", get(retrieve).post(update))
}

/// `unit_amount_decimal` ("1234.5") to whole minor units, rounded half-up.
pub(crate) fn decimal_to_minor(s: &str) -> Option<i64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let whole: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    if !frac.bytes().all(|b| b.is_ascii_digit()) || whole < 0 {
        return None;
    }
    let round_up = frac.as_bytes().first().is_some_and(|d| *d >= b'5');
    Some(whole + i64::from(round_up))
}

/// Takes a lookup key for `price`, moving it off another price when `transfer` is set.
fn claim_lookup_key(store: &mut Store, key: &str, price: &str, transfer: bool) -> ApiResult<()> {
    let holder = store
        .prices
        .values()
        .find(|p| p.lookup_key.as_deref() == Some(key) && p.id != price)
        .map(|p| p.id.clone());
    if let Some(holder) = holder {
        if !transfer {
            return Err(ApiError::invalid(
                "lookup_key",
                format!("A price ({holder}) already uses that lookup key."),
            ));
        }
        if let Some(p) = store.prices.get_mut(&holder) {
            p.lookup_key = None;
        }
    }
    Ok(())
}

async fn create(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "product",
        "product_data",
        "currency",
        "unit_amount",
        "unit_amount_decimal",
        "recurring",
        "lookup_key",
        "transfer_lookup_key",
        "metadata",
        "nickname",
        "active",
        "tax_behavior",
        "billing_scheme",
    ])?;
    let currency = p.required_str("currency")?.to_lowercase();
    let (unit_amount, unit_amount_decimal) =
        match (p.i64("unit_amount")?, p.str("unit_amount_decimal")) {
            (Some(a), _) if a < 0 => {
                return Err(ApiError::invalid(
                    "unit_amount",
                    "unit_amount must be non-negative",
                ));
            }
            (Some(a), _) => (a, a.to_string()),
            (None, Some(d)) => (
                decimal_to_minor(d).ok_or_else(|| {
                    ApiError::invalid("unit_amount_decimal", format!("Invalid decimal: {d}"))
                })?,
                d.to_string(),
            ),
            (None, None) => return Err(ApiError::missing("unit_amount")),
        };
    let recurring = if p.has("recurring") {
        let r = p.child("recurring");
        r.only_nested(
            "recurring",
            &[
                "interval",
                "interval_count",
                "usage_type",
                "trial_period_days",
                "meter",
            ],
        )?;
        let interval = r
            .required_str("interval")
            .map_err(|_| ApiError::missing("recurring[interval]"))?;
        let interval = Interval::parse(interval).ok_or_else(|| {
            ApiError::invalid(
                "recurring[interval]",
                format!("Invalid recurring[interval]: {interval}"),
            )
        })?;
        if r.str("usage_type").is_some_and(|u| u != "licensed") {
            return Err(ApiError::invalid(
                "recurring[usage_type]",
                "The stand-in supports licensed prices only.",
            ));
        }
        Some(Recurring {
            interval,
            interval_count: r.u64("interval_count")?.unwrap_or(1).max(1),
        })
    } else {
        None
    };
    let metadata = p.metadata("metadata")?.unwrap_or_default();
    let transfer = p.bool("transfer_lookup_key")?.unwrap_or(false);
    let active = p.bool("active")?.unwrap_or(true);
    app.run(&req.info, |store| {
        let now = clock::wall_now();
        let product = match (p.str("product"), p.child("product_data").str("name")) {
            (Some(prod), _) => {
                if !store.products.contains_key(prod) {
                    return Err(ApiError::missing_resource("product", prod, "product"));
                }
                prod.to_string()
            }
            (None, Some(name)) => {
                let id = new_id("prod");
                let seq = store.next_seq();
                store.products.insert(
                    id.clone(),
                    crate::state::Product {
                        seq,
                        id: id.clone(),
                        created: now,
                        updated: now,
                        name: name.to_string(),
                        description: None,
                        active: true,
                        metadata: Default::default(),
                        default_price: None,
                    },
                );
                id
            }
            (None, None) => return Err(ApiError::missing("product")),
        };
        let id = new_id("price");
        if let Some(key) = p.str("lookup_key") {
            claim_lookup_key(store, key, &id, transfer)?;
        }
        let seq = store.next_seq();
        store.prices.insert(
            id.clone(),
            Price {
                seq,
                id: id.clone(),
                created: now,
                product,
                currency,
                unit_amount,
                unit_amount_decimal,
                recurring,
                lookup_key: p.str("lookup_key").map(str::to_string),
                nickname: p.str("nickname").map(str::to_string),
                active,
                metadata,
            },
        );
        let obj = objects::price(&store.prices[&id]);
        billing::emit(store, "price.created", obj.clone(), None, now);
        Ok(Json(answer(store, obj, p)))
    })
}

async fn retrieve(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let price = store
            .prices
            .get(&id)
            .ok_or_else(|| ApiError::missing_resource("price", &id, "price"))?;
        Ok(Json(answer(store, objects::price(price), &req.params)))
    })
}

async fn update(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "active",
        "lookup_key",
        "transfer_lookup_key",
        "metadata",
        "nickname",
        "tax_behavior",
        "currency_options",
    ])?;
    let active = p.bool("active")?;
    let metadata = p.metadata("metadata")?;
    let transfer = p.bool("transfer_lookup_key")?.unwrap_or(false);
    app.run(&req.info, |store| {
        let before = objects::price(
            store
                .prices
                .get(&id)
                .ok_or_else(|| ApiError::missing_resource("price", &id, "price"))?,
        );
        let lookup_key = p.nullable_str("lookup_key");
        if let Some(Some(key)) = lookup_key {
            claim_lookup_key(store, key, &id, transfer)?;
        }
        let price = store.prices.get_mut(&id).expect("checked above");
        if let Some(a) = active {
            price.active = a;
        }
        if let Some(k) = lookup_key {
            price.lookup_key = k.map(str::to_string);
        }
        if let Some(n) = p.nullable_str("nickname") {
            price.nickname = n.map(str::to_string);
        }
        if let Some(m) = metadata {
            merge_metadata(&mut price.metadata, m);
        }
        let after = objects::price(price);
        billing::emit(
            store,
            "price.updated",
            after.clone(),
            Some(previous_attributes(&before, &after)),
            clock::wall_now(),
        );
        Ok(Json(answer(store, after, p)))
    })
}

async fn list(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "active",
        "product",
        "lookup_keys",
        "currency",
        "type",
        "recurring",
        "limit",
        "starting_after",
        "ending_before",
        "created",
    ])?;
    let active = p.bool("active")?;
    let lookup_keys = p.strings("lookup_keys");
    let created = created_filter(p, "created")?;
    let interval = p.child("recurring").str("interval").map(str::to_string);
    app.run(&req.info, |store| {
        let rows = store
            .prices
            .values()
            .filter(|x| active.is_none_or(|a| x.active == a))
            .filter(|x| p.str("product").is_none_or(|prod| x.product == prod))
            .filter(|x| p.str("currency").is_none_or(|c| x.currency == c))
            .filter(|x| {
                lookup_keys.is_empty()
                    || x.lookup_key
                        .as_ref()
                        .is_some_and(|k| lookup_keys.contains(k))
            })
            .filter(|x| match p.str("type") {
                Some("recurring") => x.recurring.is_some(),
                Some("one_time") => x.recurring.is_none(),
                _ => true,
            })
            .filter(|x| {
                interval.as_deref().is_none_or(|i| {
                    x.recurring
                        .as_ref()
                        .is_some_and(|r| r.interval.as_str() == i)
                })
            })
            .filter(|x| created(x.created))
            .map(|x| (x.seq, x.id.clone(), objects::price(x)))
            .collect();
        Ok(Json(page(store, rows, p, "/v1/prices")?))
    })
}

#[cfg(test)]
mod tests {
    use super::decimal_to_minor;

    #[test]
    fn decimal_amounts_round_half_up_to_minor_units() {
        assert_eq!(decimal_to_minor("1000"), Some(1000));
        assert_eq!(decimal_to_minor("0.5"), Some(1));
        assert_eq!(decimal_to_minor("12.49"), Some(12));
        assert_eq!(decimal_to_minor("abc"), None);
    }
}
