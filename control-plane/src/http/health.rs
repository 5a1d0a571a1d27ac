//! Liveness (the process answers) and readiness (it can reach PostgreSQL and Redis).

use super::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(live))
        .routes(routes!(ready))
}

#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, description = "the process runs")))]
async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/health/ready", tag = "health", responses((status = 200, description = "PostgreSQL and Redis answer"), (status = 503, description = "a dependency is down")))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = sqlx::query("SELECT 1").execute(&state.pool).await.is_ok();
    let mut redis = state.redis.clone();
    let redis_ok = redis::cmd("PING")
        .query_async::<String>(&mut redis)
        .await
        .is_ok();
    let status = if database && redis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    (
        status,
        Json(json!({
            "status": word(database && redis_ok),
            "postgres": word(database),
            "redis": word(redis_ok),
        })),
    )
}
