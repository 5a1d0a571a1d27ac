//! The HTTP surface: each feature module exposes `router()`, merged here.

mod account;
mod checkout;
pub mod error;
mod export;
mod extract;
mod health;
mod internal;
mod plans;
mod record;
mod stripe_webhooks;
mod subscriptions;
pub mod usage;

pub use crate::state::{AppState, RateLimit, rate_limit};

use crate::config::HttpSettings;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, header};
use utoipa_axum::router::OpenApiRouter;

/// The OpenAPI document's frame; the paths come from the routers themselves, so a route
/// cannot exist without being documented.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "tollgate control plane", description = "Billing API, internal endpoints and Stripe webhooks."),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "customer_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "the token the proxy verifies; the customer is its subject",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "service_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "internal.service_token: proxies and the ticket backend",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route with its documentation.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .merge(health::router())
        .merge(plans::router())
        .merge(internal::router())
        .merge(usage::router())
        .merge(record::router())
        .merge(export::router())
        .merge(checkout::router())
        .merge(account::router())
        .merge(subscriptions::router())
        .merge(stripe_webhooks::router())
        .routes(utoipa_axum::routes!(openapi_json))
        .split_for_parts()
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI 3.1 document")))]
async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(api().1)
}

pub fn router(state: AppState, settings: &HttpSettings) -> Router {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = settings
        .cors_allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600));
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::trace::{DefaultOnResponse, TraceLayer};
    // One span per request: its id (the caller's `x-request-id` or a new one, echoed in
    // the response) and, once authenticated, the customer. Paths only: query strings
    // may carry URLs the customer chose.
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &axum::http::Request<_>| {
            let request_id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!(
                "request",
                request_id = %request_id,
                method = %req.method(),
                path = %req.uri().path(),
                customer = tracing::field::Empty,
            )
        })
        .on_request(())
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO));
    let (routes, _) = api();
    let metrics = state.metrics.clone();
    routes
        .fallback(|| async { error::ApiError::NotFound })
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let metrics = metrics.clone();
                async move {
                    // The route template, never the raw path (bounded label values).
                    let route = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .cloned();
                    let response = next.run(req).await;
                    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
                    metrics
                        .http_requests
                        .with_label_values(&[route, response.status().as_str()])
                        .inc();
                    response
                }
            },
        ))
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            std::time::Duration::from_secs(settings.request_timeout_seconds.max(1)),
        ))
        .layer(cors)
        .layer(trace)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}
