//! What every handler, webhook and job shares: the pools, the catalog, the gateways and
//! settings. Outside `http/` so that webhooks and jobs do not depend on the HTTP surface.

use crate::config::HttpSettings;
use crate::entitlements::Publisher;
use crate::metrics::Metrics;
use billing_model::Catalog;
use sqlx::PgPool;
use std::num::NonZeroU32;
use std::sync::Arc;
use tollgate_runtime::identity::IdentityVerifier;

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
    pub counters: tollgate_runtime::counters::Counters,
    /// Stripe, when configured.
    pub stripe: Option<Arc<crate::stripe::StripeGateway>>,
    /// Stripe webhook verification and the inbox worker's wake-up, when configured.
    pub webhooks: Option<Arc<WebhookSettings>>,
    /// Per-customer request budget of the billing API.
    pub rate_limit: Arc<RateLimit>,
    /// Outbound notifications to the ticket app, when configured.
    pub notifications: Option<Arc<crate::config::NotificationSettings>>,
}

/// Per-customer rate limiting (GCRA, in memory per replica).
pub type RateLimit = governor::DefaultKeyedRateLimiter<String>;

/// A limiter allowing `per_minute` sustained and `burst` at once.
pub fn rate_limit(settings: &HttpSettings) -> Arc<RateLimit> {
    let per_minute =
        NonZeroU32::new(settings.rate_limit_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(settings.rate_limit_burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Arc::new(governor::RateLimiter::keyed(
        governor::Quota::per_minute(per_minute).allow_burst(burst),
    ))
}

/// What the webhook endpoint and worker need.
pub struct WebhookSettings {
    pub secrets: Vec<secrecy::SecretString>,
    pub tolerance_seconds: u64,
    pub grace: time::Duration,
    pub wake: tokio::sync::Notify,
}
