//! HTTP routes, one module per Stripe resource, plus the stand-in's test helpers.

mod checkout;
mod customers;
mod events;
mod helpers;
mod invoice_items;
mod invoices;
mod payments;
mod prices;
mod products;
mod subscriptions;
mod test_clocks;

use axum::Router;
use axum::routing::get;
use serde_json::Value;

use crate::App;
use crate::errors::{ApiError, ApiResult};
use crate::form::Params;
use crate::objects;
use crate::state::Store;

/// Every route.
pub fn router() -> Router<App> {
    Router::new()
        .route("/health", get(helpers::health))
        .merge(customers::router())
        .merge(products::router())
        .merge(prices::router())
        .merge(checkout::router())
        .merge(subscriptions::router())
        .merge(invoices::router())
        .merge(invoice_items::router())
        .merge(test_clocks::router())
        .merge(payments::router())
        .merge(events::router())
        .merge(helpers::router())
}

/// An object as answered: with `expand[]` applied.
pub(crate) fn answer(store: &Store, mut value: Value, params: &Params) -> Value {
    objects::expand(store, &mut value, &params.expand());
    value
}

/// One row of a list: ordering number, id, rendered object.
pub(crate) type Row = (u64, String, Value);

/// A Stripe list page: newest first, `limit` (1–100, default 10), `starting_after`,
/// `ending_before`, and `expand[]=data.x` applied to each entry.
pub(crate) fn page(store: &Store, rows: Vec<Row>, params: &Params, url: &str) -> ApiResult<Value> {
    let (slice, has_more) = select(rows, params)?;
    let mut list = objects::list(slice, url, has_more);
    objects::expand(store, &mut list, &params.expand());
    Ok(list)
}

/// The entries of one page of `rows` (ordering number, id, entry) and whether more
/// follow. Generic over the entry so a large collection can page over cheap handles and
/// render only the page it answers ([`page`] renders everything first).
pub(crate) fn select<T>(
    mut rows: Vec<(u64, String, T)>,
    params: &Params,
) -> ApiResult<(Vec<T>, bool)> {
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    let limit = params.u64("limit")?.unwrap_or(10).clamp(1, 100) as usize;
    let (slice, has_more) = if let Some(after) = params.str("starting_after") {
        let pos = rows
            .iter()
            .position(|r| r.1 == after)
            .ok_or_else(|| ApiError::missing_resource("object", after, "starting_after"))?;
        let rest: Vec<_> = rows.into_iter().skip(pos + 1).collect();
        let more = rest.len() > limit;
        (rest.into_iter().take(limit).collect::<Vec<_>>(), more)
    } else if let Some(before) = params.str("ending_before") {
        let pos = rows
            .iter()
            .position(|r| r.1 == before)
            .ok_or_else(|| ApiError::missing_resource("object", before, "ending_before"))?;
        let head: Vec<_> = rows.into_iter().take(pos).collect();
        let more = head.len() > limit;
        let skip = head.len().saturating_sub(limit);
        (head.into_iter().skip(skip).collect(), more)
    } else {
        let more = rows.len() > limit;
        (rows.into_iter().take(limit).collect(), more)
    };
    Ok((slice.into_iter().map(|r| r.2).collect(), has_more))
}

/// A `created` filter: `created=T` or `created[gt|gte|lt|lte]=T`.
pub(crate) fn created_filter(
    params: &Params,
    key: &str,
) -> ApiResult<impl Fn(i64) -> bool + use<>> {
    let exact = params.i64(key).ok().flatten();
    let range = params.child(key);
    let (gt, gte, lt, lte) = (
        range.i64("gt")?,
        range.i64("gte")?,
        range.i64("lt")?,
        range.i64("lte")?,
    );
    Ok(move |t: i64| {
        exact.is_none_or(|e| t == e)
            && gt.is_none_or(|v| t > v)
            && gte.is_none_or(|v| t >= v)
            && lt.is_none_or(|v| t < v)
            && lte.is_none_or(|v| t <= v)
    })
}
