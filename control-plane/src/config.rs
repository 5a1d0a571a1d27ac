//! The control plane's view of the shared configuration file.

use secrecy::SecretString;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tollgate_runtime::settings::{
    ConfigError, IdentitySettings, InternalSettings, LogSettings, RedisSettings, load_config,
};

/// Everything the control plane reads. One file serves both binaries; the proxy's
/// section is accepted here unread (the proxy validates it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The plan catalog (relative paths are resolved from the working directory).
    pub plans_file: PathBuf,
    pub identity: IdentitySettings,
    pub redis: RedisSettings,
    pub internal: InternalSettings,
    pub control_plane: ControlPlaneSettings,
    #[serde(default)]
    pub stripe: Option<StripeSettings>,
    #[serde(default)]
    pub log: LogSettings,
    /// The few `[proxy]` keys the control plane must agree with; the proxy validates
    /// the rest of its section.
    #[serde(default)]
    pub proxy: SharedProxySettings,
}

/// `[proxy]` keys that are shared: the control plane reserves in the same Redis
/// counters as the proxies, so it must use their reservation TTL (it sets how long a
/// hold and a commit marker live).
#[derive(Debug, Clone, Deserialize)]
pub struct SharedProxySettings {
    #[serde(default = "default_reservation_ttl")]
    pub reservation_ttl_seconds: u64,
}

impl Default for SharedProxySettings {
    fn default() -> Self {
        Self {
            reservation_ttl_seconds: default_reservation_ttl(),
        }
    }
}

fn default_overage_trueup_interval() -> u64 {
    300
}

fn default_reservation_ttl() -> u64 {
    tollgate_runtime::counters::DEFAULT_RESERVATION_TTL.as_secs()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneSettings {
    /// Billing API, internal endpoints, webhooks, health.
    pub listen: SocketAddr,
    /// Prometheus `/metrics`.
    pub metrics_listen: SocketAddr,
    pub database_url: SecretString,
    #[serde(default = "default_max_connections")]
    pub database_max_connections: u32,
    /// Where a refused customer is sent to upgrade or pay (the frontend's billing page).
    #[serde(default)]
    pub upgrade_url: Option<String>,
    /// How often Redis usage counters are reconciled with the ledger, in seconds.
    #[serde(default = "default_reconcile_interval")]
    pub counter_reconcile_interval_seconds: u64,
    /// Raw usage records older than this (in ended periods) are folded into per-period
    /// totals. Keep it longer than any proxy could hold events in its usage log.
    #[serde(default = "default_retention_days")]
    pub usage_retention_days: u32,
    /// Days a customer keeps the paid plan after a failed payment (never less than the
    /// end of the period already paid for).
    #[serde(default = "default_grace_days")]
    pub payment_grace_days: u32,
    /// Inbox workers applying Stripe events concurrently (each event is re-fetched from
    /// Stripe, so this bounds the rate; order does not matter, see the webhook module).
    #[serde(default = "default_webhook_workers")]
    pub webhook_workers: u32,
    /// How often ended periods are checked for usage that arrived after they were
    /// billed (billed as a true-up), in seconds.
    #[serde(default = "default_overage_trueup_interval")]
    pub overage_trueup_interval_seconds: u64,
    /// How often Stripe's event list is compared with the webhook inbox, in seconds.
    #[serde(default = "default_stripe_reconcile_interval")]
    pub stripe_reconcile_interval_seconds: u64,
    /// Outbound notifications to the ticket app (none when absent).
    #[serde(default)]
    pub notifications: Option<NotificationSettings>,
    /// The billing API's limits, CORS and timeouts.
    #[serde(default)]
    pub http: HttpSettings,
}

/// How the billing API protects itself and which browsers may call it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Browser origins allowed to call the billing API (CORS), e.g. the frontend's
    /// `https://app.example.com`; none by default (no CORS headers).
    pub cors_allowed_origins: Vec<String>,
    /// Sustained billing-API requests per customer per minute (customer-token routes).
    pub rate_limit_per_minute: u32,
    /// Requests a customer may make at once above the sustained rate.
    pub rate_limit_burst: u32,
    /// Largest request body accepted, in bytes (usage batches included).
    pub body_limit_bytes: usize,
    /// A request still running after this many seconds is answered 408.
    pub request_timeout_seconds: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            cors_allowed_origins: Vec::new(),
            rate_limit_per_minute: 120,
            rate_limit_burst: 30,
            body_limit_bytes: 4 * 1024 * 1024,
            request_timeout_seconds: 30,
        }
    }
}

fn default_grace_days() -> u32 {
    7
}

fn default_webhook_workers() -> u32 {
    4
}

fn default_stripe_reconcile_interval() -> u64 {
    300
}

fn default_retention_days() -> u32 {
    400
}

fn default_reconcile_interval() -> u64 {
    30
}

fn default_max_connections() -> u32 {
    10
}

/// Stripe account access. The same client code talks to real Stripe and to the
/// project's stand-in; only `api_base` and the keys differ.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeSettings {
    /// `https://api.stripe.com` for real Stripe, the stand-in's origin otherwise.
    #[serde(default = "default_stripe_base")]
    pub api_base: String,
    pub secret_key: SecretString,
    /// Webhook signing secrets; two during a rotation window.
    #[serde(default)]
    pub webhook_secrets: Vec<SecretString>,
    /// How old a webhook's signature timestamp may be, in seconds.
    #[serde(default = "default_tolerance")]
    pub webhook_tolerance_seconds: u64,
    /// Tests and demos only: new Stripe customers join this test clock, so renewals can
    /// be played forward. Never set in production.
    #[serde(default)]
    pub test_clock: Option<String>,
}

fn default_tolerance() -> u64 {
    300
}

fn default_stripe_base() -> String {
    "https://api.stripe.com".to_owned()
}

impl Config {
    /// Reads `path`, then `TOLLGATE_*` environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_config(path)
    }
}

/// Where notifications go (`[control_plane.notifications]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSettings {
    /// The ticket app's endpoint.
    pub url: String,
    /// HMAC key of `Tollgate-Signature`.
    pub secret: SecretString,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest wait between two attempts, in seconds.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_seconds: u64,
}

fn default_timeout_ms() -> u64 {
    5000
}

fn default_max_backoff() -> u64 {
    3600
}
