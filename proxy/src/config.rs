//! The proxy's view of the shared configuration file.

pub use billing_model::admission::FailurePolicy;
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tollgate_runtime::settings::{
    ConfigError, IdentitySettings, InternalSettings, LogSettings, RedisSettings, load_config,
};

/// Everything the proxy reads. One file serves both binaries; the control plane's
/// sections are accepted here unread (the control plane validates them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub plans_file: PathBuf,
    pub identity: IdentitySettings,
    pub redis: RedisSettings,
    pub internal: InternalSettings,
    pub proxy: ProxySettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default, rename = "control_plane")]
    _control_plane: IgnoredAny,
    #[serde(default, rename = "stripe")]
    _stripe: IgnoredAny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// Where ticket traffic arrives.
    pub listen: SocketAddr,
    /// `/metrics`, `/health/live`, `/health/ready`.
    pub metrics_listen: SocketAddr,
    /// The ticket API, `host:port`.
    pub upstream: SocketAddr,
    /// Worker threads for the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Seconds a SIGTERM waits for in-flight requests before exiting.
    #[serde(default = "default_drain")]
    pub drain_seconds: u64,
    /// The control plane's base URL (entitlement fills, usage shipping).
    pub control_plane_url: String,
    /// Timeout of one entitlement fill from the control plane, in milliseconds.
    #[serde(default = "default_fill_timeout")]
    pub entitlement_fill_timeout_ms: u64,
    /// How many customers' entitlements to keep in memory.
    #[serde(default = "default_cache_capacity")]
    pub entitlement_cache_capacity: u64,
    /// Longest a Redis call on the request path may take before the failure policy
    /// applies, in milliseconds.
    #[serde(default = "default_redis_budget")]
    pub redis_budget_ms: u64,
    /// What hard-limited requests get while Redis is unreachable or too slow:
    /// `deny` (refuse with 503) or `allow` (admit and record). Paid-overage requests are
    /// always admitted and recorded.
    #[serde(default)]
    pub hard_limit_failure_policy: FailurePolicy,
    /// How long a reservation holds a unit without being renewed, in seconds: a
    /// crashed proxy's units come back after this. A running request's hold is renewed
    /// every third of it, so a request may take longer than this.
    #[serde(default = "default_reservation_ttl")]
    pub reservation_ttl_seconds: u64,
    /// The most units of a hard limit one proxy leases from Redis in one step and then
    /// admits from locally (1..=64; 1 reserves per request). The block also shrinks
    /// with what the limit leaves and the number of proxies sharing the customer.
    #[serde(default = "default_lease_max_units")]
    pub lease_max_units: u32,
    /// Leased units unused for this long, in milliseconds, go back to Redis for other
    /// proxies.
    #[serde(default = "default_lease_idle")]
    pub lease_idle_ms: u64,
    /// How long the upstream may take to answer, in seconds.
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout_seconds: u64,
    /// Match the literal segments of route paths with their letter case. Off by default:
    /// many upstreams route case-insensitively, and a metered route must not be reachable
    /// through another spelling (matching a spelling the upstream does not serve costs
    /// nothing: only a 2xx consumes).
    #[serde(default)]
    pub case_sensitive_routes: bool,
    /// Where usage events are written before the response leaves (a write-ahead log
    /// shipped to the control plane; survives restarts and control-plane outages).
    pub spool_dir: PathBuf,
    #[serde(default)]
    pub shipping: ShippingSettings,
    /// Which requests are metered, and which are the chat interface. Everything else
    /// passes through unmetered. Reloaded on SIGHUP.
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShippingSettings {
    /// Most events in one batch to the ledger.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest an event waits before its batch is shipped, in milliseconds.
    #[serde(default = "default_max_delay")]
    pub max_delay_ms: u64,
    /// Timeout of one shipment, in milliseconds.
    #[serde(default = "default_ship_timeout")]
    pub timeout_ms: u64,
}

impl Default for ShippingSettings {
    fn default() -> Self {
        Self {
            batch_size: default_batch_size(),
            max_delay_ms: default_max_delay(),
            timeout_ms: default_ship_timeout(),
        }
    }
}

/// One route rule as written in the file; see [`crate::routes`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Exact path, `{name}` for one segment, or a trailing `/*` for any rest.
    pub path: String,
    /// `metered` or `chat`.
    pub kind: RouteKind,
    /// Usage type recorded for metered routes (`ticket_creation`, `agent_interaction`).
    #[serde(default)]
    pub usage_type: Option<billing_model::UsageType>,
    /// Units one successful request consumes.
    #[serde(default = "default_units")]
    pub units: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    Metered,
    Chat,
}

fn default_units() -> u32 {
    1
}
fn default_fill_timeout() -> u64 {
    2_000
}
fn default_cache_capacity() -> u64 {
    200_000
}
fn default_redis_budget() -> u64 {
    10
}
fn default_reservation_ttl() -> u64 {
    tollgate_runtime::counters::DEFAULT_RESERVATION_TTL.as_secs()
}
fn default_lease_max_units() -> u32 {
    tollgate_runtime::counters::leases::LeaseSettings::default().max_units
}
fn default_lease_idle() -> u64 {
    tollgate_runtime::counters::leases::LeaseSettings::default()
        .idle
        .as_millis() as u64
}
fn default_upstream_timeout() -> u64 {
    60
}
fn default_batch_size() -> usize {
    500
}
fn default_max_delay() -> u64 {
    500
}
fn default_ship_timeout() -> u64 {
    5_000
}

fn default_threads() -> usize {
    2
}

fn default_drain() -> u64 {
    10
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_config(path)
    }
}
