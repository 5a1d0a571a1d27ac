//! Configuration sections both binaries read from the same file, so they agree on how a
//! customer is identified and where the shared counters live, and the one way a file
//! plus the environment become a binary's typed configuration ([`load_config`]).

use secrecy::SecretString;
use serde::Deserialize;
use std::path::PathBuf;

/// How a customer is identified on ticket traffic and on the billing API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySettings {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Expected `aud` claim.
    pub audience: String,
    /// Shared secret for HS256 tokens.
    #[serde(default)]
    pub hs256_secret: Option<SecretString>,
    /// A JWKS document on disk with RS256/ES256 public keys.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document served over HTTP(S); fetched at start and refreshed.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often the JWKS (file or URL) is read again, in seconds, so an identity
    /// provider's key rotation is picked up without a restart.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u64,
    /// A token signed with a key id the JWKS does not hold triggers an immediate
    /// re-read, at most once per this many seconds (unknown ids cannot force a fetch
    /// per request).
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh_seconds: u64,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Trust a customer id set by an auth gateway in this header instead of a JWT.
    /// Off unless named: anyone who can reach the proxy could otherwise set it.
    #[serde(default)]
    pub trusted_header: Option<String>,
}

fn default_leeway() -> u64 {
    30
}

fn default_jwks_refresh() -> u64 {
    300
}

fn default_jwks_min_refresh() -> u64 {
    10
}

/// Where the shared counters, reservations and the entitlement channel live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: SecretString,
    /// Prepended to every key and channel, so several deployments (or tests) can share
    /// one Redis without seeing each other's data.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

fn default_key_prefix() -> String {
    "tg:".to_owned()
}

/// The token the proxy (and the ticket backend) use on the control plane's internal
/// endpoints. Never a customer's JWT.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternalSettings {
    pub service_token: SecretString,
}

/// Logging, the same for both binaries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// An `EnvFilter` directive, e.g. `info` or `info,tollgate_proxy=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `json` (production) or `text` (a terminal).
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// Why a configuration could not be loaded; names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration {path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// The environment prefix for overrides: `TOLLGATE_PROXY__LISTEN=...` overrides
/// `[proxy] listen` (double underscore separates the nesting levels).
pub const ENV_PREFIX: &str = "TOLLGATE_";

/// Loads a binary's configuration: the TOML file, then `TOLLGATE_*` environment
/// variables over it (environment wins). Unknown keys are rejected by the target type.
pub fn load_config<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> Result<T, ConfigError> {
    use figment::Figment;
    use figment::providers::{Env, Format, Toml};
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(ConfigError {
            path: shown,
            message: "file not found".into(),
        });
    }
    Figment::new()
        .merge(Toml::file_exact(path))
        .merge(Env::prefixed(ENV_PREFIX).split("__"))
        .extract()
        .map_err(|e| ConfigError {
            path: shown,
            // figment's message names the key path ("for key `proxy.listen`") and the
            // source (file or environment variable).
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        redis: RedisSettings,
        #[serde(default)]
        log: LogSettings,
    }

    fn write(text: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::new(text)
    }

    // A tiny temp-file helper: std only, removed on drop.
    mod tempfile_path {
        pub struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub fn new(text: &str) -> Self {
                let path =
                    std::env::temp_dir().join(format!("tg-settings-{}.toml", uuid::Uuid::new_v4()));
                std::fs::write(&path, text).expect("write temp config");
                Self(path)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn a_valid_file_loads_with_defaults() {
        let f = write("[redis]\nurl = \"redis://127.0.0.1:6379\"\n");
        let s: Sample = load_config(&f.0).unwrap();
        assert_eq!(s.redis.key_prefix, "tg:");
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn an_unknown_key_is_rejected_naming_the_key_and_the_file() {
        let f = write("[redis]\nurl = \"redis://x\"\nkey_prefx = \"a\"\n");
        let err = load_config::<Sample>(&f.0).unwrap_err().to_string();
        assert!(err.contains("key_prefx"), "{err}");
        assert!(err.contains(&f.0.display().to_string()), "{err}");
    }

    #[test]
    fn a_missing_file_is_reported_by_path() {
        let err = load_config::<Sample>(std::path::Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.toml"));
    }

    #[test]
    // figment's Jail fixes the closure's error type; its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    fn the_environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tollgate.toml",
                "[redis]\nurl = \"redis://file\"\nkey_prefix = \"from-file:\"\n",
            )?;
            jail.set_env("TOLLGATE_REDIS__KEY_PREFIX", "from-env:");
            let s: Sample =
                load_config(std::path::Path::new("tollgate.toml")).map_err(|e| e.to_string())?;
            assert_eq!(s.redis.key_prefix, "from-env:");
            Ok(())
        });
    }

    #[test]
    fn secrets_do_not_print_in_debug_output() {
        let f = write("[redis]\nurl = \"redis://:hunter2@127.0.0.1\"\n");
        let s: Sample = load_config(&f.0).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
