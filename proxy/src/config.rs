//! The proxy's view of the shared configuration file.

use billing_model::settings::{
    ConfigError, IdentitySettings, InternalSettings, LogSettings, RedisSettings, load_config,
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
