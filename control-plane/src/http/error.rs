//! One error type at the HTTP boundary. Every error is `application/problem+json` with a
//! stable `code`; server errors are logged with detail and answered without it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    #[error("authentication required: {0}")]
    Unauthorized(&'static str),
    #[error("invalid {field}: {message}")]
    Validation { field: String, message: String },
    /// The same refusal the proxy gives for the same decision
    /// ([`billing_model::admission`]); `Retry-After` seconds when time can clear it.
    #[error("{}", .0.detail)]
    Refused(Box<billing_model::Problem>, Option<i64>),
    /// The request conflicts with the customer's state; `code` tells the frontend what
    /// to do instead.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A webhook that is not verifiably from Stripe, or not an event.
    #[error("{message}")]
    BadWebhook { code: &'static str, message: String },
    /// No Stripe account is configured.
    #[error("billing is not configured on this deployment")]
    BillingUnavailable,
    /// Stripe refused or failed.
    #[error(transparent)]
    Stripe(#[from] crate::stripe::GatewayError),
    /// The request body is over the configured limit.
    #[error("the request body is too large")]
    TooLarge,
    /// An `Idempotency-Key` sent again with a different request.
    #[error(
        "this Idempotency-Key was used for a different request; use a new key for a new purchase"
    )]
    IdempotencyKeyReused,
    /// Too many billing requests from one customer; retry after this many seconds.
    #[error("too many requests: retry after {0} s")]
    RateLimited(u64),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// RFC 9457 problem details, plus tollgate's stable `code`.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Validation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            // Refusals answer their own body (see `into_response`).
            ApiError::Refused(r, _) => (
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN),
                "refused",
            ),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::BadWebhook { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::BillingUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "billing_unavailable")
            }
            ApiError::Stripe(crate::stripe::GatewayError::MissingPrice(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "catalog_not_synced")
            }
            // A declined card is the customer's problem to fix, not a gateway failure.
            ApiError::Stripe(crate::stripe::GatewayError::Stripe(stripe::StripeError::Stripe(
                _,
                402,
            ))) => (StatusCode::PAYMENT_REQUIRED, "payment_failed"),
            ApiError::Stripe(_) => (StatusCode::BAD_GATEWAY, "stripe_error"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            // An exhausted pool or an unreachable database is ours and passes: the client
            // should retry, not treat its request as wrong or broken.
            ApiError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            ApiError::Database(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
            }
        }
    }
}

impl From<crate::intents::IntentError> for ApiError {
    fn from(e: crate::intents::IntentError) -> Self {
        match e {
            crate::intents::IntentError::KeyReused => ApiError::IdempotencyKeyReused,
            crate::intents::IntentError::Database(e) => ApiError::Database(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Refused(problem, retry_after) = self {
            let mut response = (status, Json(*problem)).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(0)));
            }
            return response;
        }
        let (detail, field) = match &self {
            ApiError::Database(e) => {
                tracing::error!(error = %e, "database error");
                (None, None)
            }
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                (None, None)
            }
            ApiError::Stripe(crate::stripe::GatewayError::Stripe(stripe::StripeError::Stripe(
                e,
                402,
            ))) => (
                Some(
                    e.message
                        .clone()
                        .unwrap_or_else(|| "the payment was declined".into()),
                ),
                None,
            ),
            ApiError::Stripe(e) => {
                tracing::error!(error = %e, "stripe call failed");
                (Some(e.to_string()), None)
            }
            ApiError::Validation { field, message } => (Some(message.clone()), Some(field.clone())),
            other => (Some(other.to_string()), None),
        };
        let problem = Problem {
            kind: format!("https://tollgate.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            code,
            detail,
            field,
        };
        let mut response = (status, Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ApiError::RateLimited(seconds) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn problem(e: ApiError) -> (StatusCode, Option<HeaderValue>, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let retry = response.headers().get(header::RETRY_AFTER).cloned();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn an_exhausted_database_pool_is_a_retryable_503_not_a_500() {
        let (status, retry, body) = problem(ApiError::Database(sqlx::Error::PoolTimedOut)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["code"], "database_unavailable");
        assert_eq!(retry.unwrap(), "1");
        // A query that is wrong is ours and stays a 500 without detail.
        let (status, retry, body) = problem(ApiError::Database(sqlx::Error::RowNotFound)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["code"], "internal_error");
        assert!(body.get("detail").is_none() && retry.is_none());
    }
}
