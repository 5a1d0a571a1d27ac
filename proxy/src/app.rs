//! Wires the proxy together from its configuration: the pingora server, the proxy
//! service, the admin listener and the background services.

use crate::admin::AdminApp;
use crate::commits::Committer;
use crate::config::Config;
use crate::entitlements::{Entitlements, listen_for_updates};
use crate::identity::Identity;
use crate::metrics::ProxyMetrics;
use crate::routes::RouteTable;
use crate::service::TollgateProxy;
use crate::shipper::Shipper;
use crate::usage_log::UsageLog;
use anyhow::Context;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use billing_model::RedisKeys;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use secrecy::ExposeSecret;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tollgate_runtime::counters::Counters;
use tollgate_runtime::counters::leases::{LeaseSettings, Leases};
use tollgate_runtime::identity::IdentityVerifier;

/// Builds the server; `run_forever` on the result serves until SIGTERM/SIGINT.
pub fn build(config_path: PathBuf, config: Config) -> anyhow::Result<Server> {
    let p = &config.proxy;
    let metrics = Arc::new(ProxyMetrics::register(prometheus::default_registry())?);

    // Redis connections and off-path work (commits, releases) live on a small runtime
    // of their own: pingora's service runtimes come and go with their services.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tollgate-bg")
        .enable_all()
        .build()?;
    let handle = background.handle().clone();
    // The runtime must outlive `main`, which never returns (pingora exits the process).
    std::mem::forget(background);

    // Identity keys (a JWKS file or URL is read once now, then kept fresh).
    let verifier = if config.identity.hs256_secret.is_some()
        || config.identity.jwks_file.is_some()
        || config.identity.jwks_url.is_some()
    {
        let settings = config.identity.clone();
        let loaded = std::thread::scope(|s| {
            s.spawn(|| handle.block_on(IdentityVerifier::load(&settings)))
                .join()
                .map_err(|_| anyhow::anyhow!("loading identity keys panicked"))
        })?;
        Some(Arc::new(loaded.context("identity")?))
    } else {
        None
    };
    let _guard = handle.enter();

    let redis_client = redis::Client::open(config.redis.url.expose_secret())
        .context("redis.url is not a valid Redis URL")?;
    let manager_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let redis =
        redis::aio::ConnectionManager::new_lazy_with_config(redis_client.clone(), manager_config)?;
    let keys = RedisKeys::new(&config.redis.key_prefix).context("redis.key_prefix")?;

    let identity = Arc::new(Identity::new(
        verifier.clone(),
        config.identity.trusted_header.as_deref(),
    )?);
    let routes = Arc::new(ArcSwap::from_pointee(RouteTable::build(
        &p.routes,
        p.case_sensitive_routes,
    )?));

    let entitlements = Arc::new(Entitlements::new(
        p.entitlement_cache_capacity,
        &p.control_plane_url,
        config.internal.service_token.clone(),
        Duration::from_millis(p.entitlement_fill_timeout_ms),
        metrics.clone(),
    )?);
    let usage_log = Arc::new(
        UsageLog::open(&p.spool_dir)
            .with_context(|| format!("proxy.spool_dir {}", p.spool_dir.display()))?,
    );
    let pending_commits = Arc::new(AtomicU64::new(0));
    let unsettled = Arc::new(AtomicU64::new(0));
    // A running request's hold is renewed every third of the TTL, so the TTL only
    // bounds how long a crashed proxy's units stay taken; it must leave room for a
    // renewal round trip.
    if p.reservation_ttl_seconds < 3 {
        anyhow::bail!(
            "proxy.reservation_ttl_seconds ({}) must be at least 3: holds are renewed every third of it",
            p.reservation_ttl_seconds
        );
    }
    let reservation_ttl = Duration::from_secs(p.reservation_ttl_seconds);
    let counters = Counters::new(redis, reservation_ttl);
    if !(1..=64).contains(&p.lease_max_units) {
        anyhow::bail!(
            "proxy.lease_max_units ({}) must be between 1 and 64",
            p.lease_max_units
        );
    }
    let leases = Leases::new(
        counters.clone(),
        uuid::Uuid::now_v7().simple().to_string(),
        LeaseSettings {
            max_units: p.lease_max_units,
            idle: Duration::from_millis(p.lease_idle_ms),
            ..LeaseSettings::default()
        },
    );

    let conf = ServerConf {
        threads: p.threads,
        // On SIGTERM pingora stops accepting, lets in-flight requests run for the grace
        // period, then stops its runtimes: the grace period *is* the drain.
        grace_period_seconds: Some(p.drain_seconds),
        graceful_shutdown_timeout_seconds: Some(2),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let service = TollgateProxy {
        upstream: p.upstream,
        upstream_timeout: Duration::from_secs(p.upstream_timeout_seconds),
        routes: routes.clone(),
        identity,
        entitlements: entitlements.clone(),
        counters: counters.clone(),
        leases: leases.clone(),
        keys: keys.clone(),
        usage_log: usage_log.clone(),
        metrics: metrics.clone(),
        redis_budget: Duration::from_millis(p.redis_budget_ms),
        failure_policy: p.hard_limit_failure_policy,
        background: handle.clone(),
        committer: Committer::start(
            &handle,
            counters.clone(),
            metrics.clone(),
            pending_commits.clone(),
        ),
        unsettled: unsettled.clone(),
    };
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, service);
    proxy.add_tcp(&p.listen.to_string());

    let mut admin = pingora::services::listening::Service::new("admin".to_owned(), AdminApp);
    admin.add_tcp(&p.metrics_listen.to_string());

    let shipper = Shipper {
        log: usage_log,
        http: reqwest::Client::builder()
            .timeout(Duration::from_millis(p.shipping.timeout_ms))
            .build()?,
        url: format!(
            "{}/internal/v1/usage/batch",
            p.control_plane_url.trim_end_matches('/')
        ),
        token: config.internal.service_token.clone(),
        batch_size: p.shipping.batch_size,
        max_delay: Duration::from_millis(p.shipping.max_delay_ms),
        metrics: metrics.clone(),
        entitlements: entitlements.clone(),
        pending_commits,
        unsettled,
        drain: Duration::from_secs(p.drain_seconds),
    };
    let updates = UpdateListener {
        client: redis_client,
        channel: keys.entitlement_channel(),
        entitlements,
    };
    let reloader = RouteReloader {
        config_path,
        routes,
    };
    let keeper = LeaseKeeper {
        leases,
        metrics: metrics.clone(),
    };
    let keys_refresher = IdentityRefresher { verifier };

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service("usage shipper", shipper));
    server.add_service(background_service("entitlement updates", updates));
    server.add_service(background_service("route reloader", reloader));
    server.add_service(background_service("reservation leases", keeper));
    server.add_service(background_service("identity keys", keys_refresher));
    Ok(server)
}

struct UpdateListener {
    client: redis::Client,
    channel: String,
    entitlements: Arc<Entitlements>,
}

#[async_trait]
impl BackgroundService for UpdateListener {
    async fn start(&self, shutdown: ShutdownWatch) {
        listen_for_updates(
            self.client.clone(),
            self.channel.clone(),
            self.entitlements.clone(),
            shutdown,
        )
        .await;
    }
}

/// Keeps the leases: gives unused leased units back, and renews the units of requests
/// in flight every third of the reservation TTL, so a unit stays held however long its
/// request runs. Through the shutdown drain (requests still run then) it gives every
/// free unit back each round, and ends with the process.
struct LeaseKeeper {
    leases: Arc<Leases>,
    metrics: Arc<crate::metrics::ProxyMetrics>,
}

#[async_trait]
impl BackgroundService for LeaseKeeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let every = self.leases.tick();
        let mut seen = tollgate_runtime::counters::leases::LeaseStats::default();
        let mut draining = false;
        loop {
            if draining {
                tokio::time::sleep(every).await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => draining = true,
                }
            }
            self.leases.maintain(draining).await;
            let now = self.leases.stats();
            let m = &self.metrics;
            m.holds_lost
                .with_label_values(&["renewal"])
                .inc_by(now.lost_found - seen.lost_found);
            m.leases.inc_by(now.leases - seen.leases);
            m.leased_units.inc_by(now.leased_units - seen.leased_units);
            m.lease_returned_units
                .inc_by(now.returned_units - seen.returned_units);
            seen = now;
            let gauges = self.leases.gauges();
            m.holds_live.set(gauges.in_use as i64);
            m.leased_free.set(gauges.free as i64);
        }
    }
}

/// Re-reads the JWKS on its schedule (`identity.jwks_refresh_seconds`).
struct IdentityRefresher {
    verifier: Option<Arc<IdentityVerifier>>,
}

#[async_trait]
impl BackgroundService for IdentityRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Some(verifier) = &self.verifier {
            verifier
                .clone()
                .keep_fresh(async move {
                    let _ = shutdown.changed().await;
                })
                .await;
        }
    }
}

/// Re-reads the route table from the configuration file on SIGHUP. Only the routes are
/// hot; everything else takes a restart.
struct RouteReloader {
    config_path: PathBuf,
    routes: Arc<ArcSwap<RouteTable>>,
}

#[async_trait]
impl BackgroundService for RouteReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; routes will not reload");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hangup.recv() => {}
            }
            match Config::load(&self.config_path)
                .map_err(anyhow::Error::from)
                .and_then(|c| {
                    RouteTable::build(&c.proxy.routes, c.proxy.case_sensitive_routes)
                        .map_err(Into::into)
                }) {
                Ok(table) => {
                    self.routes.store(Arc::new(table));
                    tracing::info!(path = %self.config_path.display(), "routes reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "routes not reloaded; keeping the current ones")
                }
            }
        }
    }
}
