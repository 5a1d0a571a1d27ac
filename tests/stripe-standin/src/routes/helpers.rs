//! Stand-in-only controls: payment failure on demand, webhook delivery controls and log, health.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::state::PaymentMode;
use crate::{App, StripeRequest, objects};

pub fn router() -> Router<App> {
    Router::new()
        .route(
            "/v1/test_helpers/customers/{id}/fail_payments",
            post(fail_payments),
        )
        .route(
            "/v1/test_helpers/webhooks/config",
            get(webhook_config).post(configure_webhooks),
        )
        .route("/v1/test_helpers/webhooks/deliveries", get(deliveries))
        .route(
            "/v1/test_helpers/idempotency_keys/expire",
            post(expire_idempotency_keys),
        )
}

/// `POST /v1/test_helpers/idempotency_keys/expire`: every stored idempotency key is
/// forgotten, as Stripe prunes keys after 24 h; a retry after it is a new request.
async fn expire_idempotency_keys(State(app): State<App>) -> Json<Value> {
    let forgotten = app.idempotency.forget_all();
    Json(json!({ "forgotten": forgotten }))
}

/// `GET /health`.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `fail=true` makes every payment of the customer fail (card declined), `fail=false` restores
/// success, `fail=action_required` makes payments need customer action.
async fn fail_payments(
    State(app): State<App>,
    Path(id): Path<String>,
    req: StripeRequest,
) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&["fail"])?;
    let mode = match p.required_str("fail")? {
        "true" => PaymentMode::Fail,
        "false" => PaymentMode::Succeed,
        "action_required" => PaymentMode::ActionRequired,
        other => {
            return Err(ApiError::invalid(
                "fail",
                format!("fail must be true, false or action_required, not {other}"),
            ));
        }
    };
    app.run(&req.info, |store| {
        let c = store
            .customers
            .get_mut(&id)
            .filter(|c| !c.deleted)
            .ok_or_else(|| ApiError::missing_resource("customer", &id, "customer"))?;
        c.payment_mode = mode;
        Ok(Json(objects::customer(c)))
    })
}

fn controls_json(app: &App) -> Value {
    let mut v = serde_json::to_value(app.webhooks.controls()).unwrap_or_default();
    v["object"] = json!("webhook_controls");
    v["enabled"] = json!(app.webhooks.enabled());
    v["held"] = json!(app.webhooks.held());
    v
}

async fn webhook_config(State(app): State<App>) -> Json<Value> {
    Json(controls_json(&app))
}

/// `duplicate`, `reorder`, `paused` (true/false), `drop_next` (N).
async fn configure_webhooks(State(app): State<App>, req: StripeRequest) -> ApiResult<Json<Value>> {
    let p = &req.params;
    p.only(&["duplicate", "reorder", "paused", "drop_next"])?;
    let (duplicate, reorder, paused, drop_next) = (
        p.bool("duplicate")?,
        p.bool("reorder")?,
        p.bool("paused")?,
        p.u64("drop_next")?,
    );
    app.webhooks.configure(|c| {
        if let Some(v) = duplicate {
            c.duplicate = v;
        }
        if let Some(v) = reorder {
            c.reorder = v;
        }
        if let Some(v) = paused {
            c.paused = v;
        }
        if let Some(v) = drop_next {
            c.drop_next = v;
        }
    });
    Ok(Json(controls_json(&app)))
}

/// Every delivery attempt so far, oldest first, plus how many events are still in flight.
async fn deliveries(State(app): State<App>) -> Json<Value> {
    let data = serde_json::to_value(app.webhooks.deliveries()).unwrap_or_default();
    Json(json!({
        "object": "list",
        "data": data,
        "pending": app.webhooks.pending(),
        "held": app.webhooks.held(),
        "has_more": false,
        "url": "/v1/test_helpers/webhooks/deliveries",
    }))
}
