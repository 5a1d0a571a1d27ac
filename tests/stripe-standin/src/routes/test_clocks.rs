//! `/v1/test_helpers/test_clocks`: simulated time for customers created on a clock.
//!
//! `advance` runs synchronously and answers with the clock `ready`. Renewal drafts are
//! finalized `--draft-finalize-delay` seconds (default 3600, like Stripe's ~1 h) after their
//! `invoice.created`, when an advance passes that time; in between, invoice items can be
//! added to the draft. `POST .../{id}/finalize_drafts` (stand-in only) finalizes and collects
//! every draft on the clock at once without moving time.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{answer, page};
use crate::errors::{ApiError, ApiResult};
use crate::state::{TestClock, new_id};
use crate::{App, StripeRequest, billing, clock, objects};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/test_helpers/test_clocks", get(list).post(create))
        .route(
            "/v1/test_helpers/test_clocks/{id}",
            get(retrieve).delete(delete),
        )
        .route("/v1/test_helpers/test_clocks/{id}/advance", post(advance))
        .route(
            "/v1/test_helpers/test_clocks/{id}/finalize_drafts",
            post(finalize_drafts),
        )
}

async fn create(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&["frozen_time", "name"])?;
    let frozen_time = p
        .i64("frozen_time")?
        .ok_or_else(|| ApiError::missing("frozen_time"))?;
    app.run(&req.info, |store| {
        let id = new_id("clock");
        let seq = store.next_seq();
        let clock = TestClock {
            seq,
            id: id.clone(),
            created: clock::wall_now(),
            frozen_time,
            name: p.str("name").map(str::to_string),
            status: "ready".into(),
        };
        let obj = objects::test_clock(&clock);
        store.test_clocks.insert(id, clock);
        billing::emit(
            store,
            "test_helpers.test_clock.created",
            obj.clone(),
            None,
            frozen_time,
        );
        Ok(Json(obj))
    })
}

async fn retrieve(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let c = store.test_clocks.get(&id).ok_or_else(|| {
            ApiError::missing_resource("test_helpers.test_clock", &id, "test_clock")
        })?;
        Ok(Json(answer(store, objects::test_clock(c), &req.params)))
    })
}

async fn list(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&["limit", "starting_after", "ending_before"])?;
    app.run(&req.info, |store| {
        let rows = store
            .test_clocks
            .values()
            .map(|c| (c.seq, c.id.clone(), objects::test_clock(c)))
            .collect();
        Ok(Json(page(store, rows, p, "/v1/test_helpers/test_clocks")?))
    })
}

/// Deleting a clock deletes its customers (and so ends their subscriptions), as Stripe does.
async fn delete(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        let c = store.test_clocks.remove(&id).ok_or_else(|| {
            ApiError::missing_resource("test_helpers.test_clock", &id, "test_clock")
        })?;
        for customer in store
            .customers
            .values_mut()
            .filter(|x| x.test_clock.as_deref() == Some(id.as_str()))
        {
            customer.deleted = true;
        }
        for sub in store
            .subscriptions
            .values_mut()
            .filter(|s| s.test_clock.as_deref() == Some(id.as_str()))
        {
            if sub.status != "canceled" {
                sub.status = "canceled".into();
                sub.ended_at = Some(c.frozen_time);
            }
        }
        billing::emit(
            store,
            "test_helpers.test_clock.deleted",
            objects::test_clock(&c),
            None,
            c.frozen_time,
        );
        Ok(Json(objects::deleted(&id, "test_helpers.test_clock")))
    })
}

async fn advance(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&["frozen_time"])?;
    let target = p
        .i64("frozen_time")?
        .ok_or_else(|| ApiError::missing("frozen_time"))?;
    app.run(&req.info, |store| {
        let c = store.test_clocks.get_mut(&id).ok_or_else(|| {
            ApiError::missing_resource("test_helpers.test_clock", &id, "test_clock")
        })?;
        if target <= c.frozen_time {
            return Err(ApiError::invalid(
                "frozen_time",
                format!(
                    "The test clock can only move forward: frozen_time must be after {}.",
                    c.frozen_time
                ),
            ));
        }
        c.status = "advancing".into();
        let start = c.frozen_time;
        let obj = objects::test_clock(c);
        billing::emit(store, "test_helpers.test_clock.advancing", obj, None, start);
        billing::advance_clock(store, &id, target);
        let obj = objects::test_clock(&store.test_clocks[&id]);
        billing::emit(
            store,
            "test_helpers.test_clock.ready",
            obj.clone(),
            None,
            target,
        );
        Ok(Json(obj))
    })
}

/// Stand-in only: finalize (and collect) every draft on the clock now.
async fn finalize_drafts(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    app.run(&req.info, |store| {
        if !store.test_clocks.contains_key(&id) {
            return Err(ApiError::missing_resource("test_helpers.test_clock", &id, "test_clock"));
        }
        let invoices = billing::finalize_drafts_on_clock(store, &id);
        Ok(Json(json!({ "object": "list", "data": invoices, "has_more": false, "url": format!("/v1/test_helpers/test_clocks/{id}/finalize_drafts") })))
    })
}
