//! Extractors that turn a client's mistake into a clear problem, never a bare 400/500.

use super::error::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use secrecy::ExposeSecret;

/// JSON body whose rejection is a `validation_failed` problem naming what is wrong.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::TooLarge)
            }
            Err(rejection) => Err(ApiError::Validation {
                field: "body".to_owned(),
                message: rejection.body_text(),
            }),
        }
    }
}

/// Proof that the caller holds the internal service token (a proxy or the ticket
/// backend), never a customer.
pub struct ServiceCaller;

impl FromRequestParts<super::AppState> for ServiceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &super::AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized("service token required"))?;
        if constant_time_eq(
            presented.as_bytes(),
            state.service_token.expose_secret().as_bytes(),
        ) {
            Ok(ServiceCaller)
        } else {
            Err(ApiError::Unauthorized("service token required"))
        }
    }
}

/// The caller's `Idempotency-Key` header (Stripe's convention), when it sent one: it
/// names one purchase intent ([`crate::intents`]).
pub struct ClientKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ClientKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(ClientKey(None));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= crate::intents::MAX_CLIENT_KEY_LEN
                    && v.bytes().all(|b| (0x21..0x7f).contains(&b))
            })
            .ok_or_else(|| ApiError::Validation {
                field: "Idempotency-Key".to_owned(),
                message: format!(
                    "must be 1 to {} visible ASCII characters",
                    crate::intents::MAX_CLIENT_KEY_LEN
                ),
            })?;
        Ok(ClientKey(Some(key.to_owned())))
    }
}

/// Compares without an early exit, so timing does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The customer a request acts for, from the same bearer token the proxy verifies.
/// Handlers only ever see this customer's data: there is no customer id in any path or
/// body of the customer-facing API, so one customer cannot name another's.
pub struct AuthenticatedCustomer(pub billing_model::CustomerId);

impl FromRequestParts<super::AppState> for AuthenticatedCustomer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &super::AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized("bearer token required"))?;
        let customer = state
            .identity
            .verify(token.trim())
            .await
            .map_err(|_| ApiError::Unauthorized("invalid or expired token"))?;
        tracing::Span::current().record("customer", customer.as_str());
        // Only verified customers spend budget, so a stranger cannot exhaust another's.
        if let Err(not_until) = state.rate_limit.check_key(&customer.to_string()) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return Err(ApiError::RateLimited(wait.as_secs() + 1));
        }
        Ok(AuthenticatedCustomer(customer))
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn equal_tokens_match_and_others_do_not() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
