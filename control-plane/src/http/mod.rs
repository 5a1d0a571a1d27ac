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
mod subscriptions;
pub mod usage;

use crate::entitlements::Publisher;
use crate::metrics::Metrics;
use axum::Router;
use billing_model::Catalog;
use billing_model::identity::IdentityVerifier;
use sqlx::PgPool;
use std::sync::Arc;

/// Cloned into every handler.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub redis: redis::aio::ConnectionManager,
    pub catalog: Arc<Catalog>,
    pub identity: Arc<IdentityVerifier>,
    pub metrics: Arc<Metrics>,
    pub publisher: Publisher,
    pub service_token: secrecy::SecretString,
    pub counters: billing_model::counters::Counters,
    /// Stripe, when configured.
    pub stripe: Option<Arc<crate::stripe::StripeGateway>>,
    /// Stripe webhook verification and the inbox worker's wake-up, when configured.
    pub webhooks: Option<Arc<crate::webhooks::WebhookSettings>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(plans::router())
        .merge(internal::router())
        .merge(usage::router())
        .merge(record::router())
        .merge(export::router())
        .merge(checkout::router())
        .merge(account::router())
        .merge(subscriptions::router())
        .merge(crate::webhooks::router())
        .fallback(|| async { error::ApiError::NotFound })
        .with_state(state)
}
