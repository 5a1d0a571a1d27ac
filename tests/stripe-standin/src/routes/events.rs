//! `/v1/events`: every state change, as it was when it happened.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::{created_filter, select};
use crate::errors::{ApiError, ApiResult};
use crate::{App, StripeRequest, objects};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/events", get(list))
        .route("/v1/events/{id}", get(retrieve))
}

async fn retrieve(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let e = store
            .events
            .iter()
            .find(|e| e.id == id)
            .ok_or_else(|| ApiError::missing_resource("event", &id, "id"))?;
        Ok(Json(e.json.clone()))
    })
}

/// `type` (with `*` wildcards at the end, `invoice.*`), `types[]`, `created`, pagination.
async fn list(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&[
        "type",
        "types",
        "created",
        "limit",
        "starting_after",
        "ending_before",
        "delivery_success",
    ])?;
    let created = created_filter(p, "created")?;
    let types = p.strings("types");
    let matches = |kind: &str, pattern: &str| match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => kind == pattern,
    };
    app.run(&req.info, |store| {
        // Events are the largest collection (reconciliation pages through all of a
        // window): page over indices and render only the page.
        let rows = store
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| p.str("type").is_none_or(|t| matches(&e.kind, t)))
            .filter(|(_, e)| types.is_empty() || types.iter().any(|t| matches(&e.kind, t)))
            .filter(|(_, e)| created(e.created))
            .map(|(i, e)| (e.seq, e.id.clone(), i))
            .collect();
        let (slice, has_more) = select(rows, p)?;
        let data = slice
            .into_iter()
            .map(|i| store.events[i].json.clone())
            .collect();
        let mut list = objects::list(data, "/v1/events", has_more);
        objects::expand(store, &mut list, &p.expand());
        Ok(Json(list))
    })
}
