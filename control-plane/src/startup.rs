//! Builds the application from its configuration and runs it until shutdown.

use crate::config::Config;
use crate::db;
use crate::entitlements::{Entitlements, Publisher};
use crate::http::{AppState, router};
use crate::metrics::{self, Metrics};
use anyhow::Context;
use billing_model::RedisKeys;
use secrecy::ExposeSecret;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tollgate_runtime::identity::IdentityVerifier;

/// A built control plane with its listeners bound (port 0 works: tests read the port).
pub struct Application {
    api: TcpListener,
    metrics_listener: TcpListener,
    state: AppState,
    counter_reconcile_interval: u64,
    retention_days: u32,
    http: crate::config::HttpSettings,
    stripe_reconcile_interval: u64,
    webhook_workers: u32,
    overage_trueup_interval: u64,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let catalog = tollgate_runtime::catalog::load(&config.plans_file)
            .with_context(|| format!("loading plans from {}", config.plans_file.display()))?;
        // The same loader as the proxy's: a JWKS file or URL, kept fresh by a job.
        let identity = IdentityVerifier::load(&config.identity)
            .await
            .context("identity")?;
        let pool = db::connect(
            &config.control_plane.database_url,
            config.control_plane.database_max_connections,
        )
        .await
        .context("connecting to PostgreSQL (control_plane.database_url)")?;
        db::migrate(&pool).await.context("applying migrations")?;
        let redis_client = redis::Client::open(config.redis.url.expose_secret())
            .context("redis.url is not a valid Redis URL")?;
        let redis = redis::aio::ConnectionManager::new(redis_client)
            .await
            .context("connecting to Redis (redis.url)")?;
        let metrics = Arc::new(Metrics::new()?);
        let api = TcpListener::bind(config.control_plane.listen)
            .await
            .with_context(|| format!("binding {}", config.control_plane.listen))?;
        let metrics_listener = TcpListener::bind(config.control_plane.metrics_listen)
            .await
            .with_context(|| format!("binding {}", config.control_plane.metrics_listen))?;
        let catalog = Arc::new(catalog);
        let keys = RedisKeys::new(&config.redis.key_prefix).context("redis.key_prefix")?;
        let redis_for_counters = redis.clone();
        let entitlements = Entitlements::new(
            pool.clone(),
            redis.clone(),
            catalog.clone(),
            keys,
            config.control_plane.upgrade_url.clone(),
        );
        let stripe = match &config.stripe {
            Some(settings) => Some(Arc::new(
                crate::stripe::StripeGateway::new(settings).context("stripe settings")?,
            )),
            None => None,
        };
        if let Some(gateway) = &stripe {
            metrics
                .registry
                .register(Box::new(gateway.api_seconds.clone()))
                .context("registering the Stripe latency histogram")?;
        }
        let plan_ids: Vec<&str> = catalog.iter().map(|p| p.id().as_str()).collect();
        metrics.preset(
            &plan_ids,
            crate::stripe::OPERATIONS,
            crate::webhooks::event::HANDLED,
            &crate::stripe::RefundReason::ALL.map(|r| r.as_str()),
            stripe.as_ref().map(|g| &g.api_seconds),
        );
        let webhooks = config.stripe.as_ref().map(|s| {
            Arc::new(crate::state::WebhookSettings {
                secrets: s.webhook_secrets.clone(),
                tolerance_seconds: s.webhook_tolerance_seconds,
                grace: time::Duration::days(i64::from(config.control_plane.payment_grace_days)),
                wake: tokio::sync::Notify::new(),
            })
        });
        let state = AppState {
            webhooks,
            stripe,
            pool,
            redis,
            catalog,
            identity: Arc::new(identity),
            metrics,
            publisher: Publisher::new(entitlements),
            service_token: config.internal.service_token.clone(),
            rate_limit: crate::http::rate_limit(&config.control_plane.http),
            notifications: config.control_plane.notifications.clone().map(Arc::new),
            // The proxies' TTL: both reserve in the same counters.
            counters: tollgate_runtime::counters::Counters::new(
                redis_for_counters,
                std::time::Duration::from_secs(config.proxy.reservation_ttl_seconds.max(3)),
            ),
        };
        Ok(Self {
            api,
            metrics_listener,
            state,
            counter_reconcile_interval: config.control_plane.counter_reconcile_interval_seconds,
            retention_days: config.control_plane.usage_retention_days,
            http: config.control_plane.http.clone(),
            stripe_reconcile_interval: config.control_plane.stripe_reconcile_interval_seconds,
            webhook_workers: config.control_plane.webhook_workers,
            overage_trueup_interval: config.control_plane.overage_trueup_interval_seconds,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Starts the periodic jobs; they stop with `stop`.
    fn spawn_jobs(&self, stop: tokio::sync::watch::Receiver<bool>) {
        let state = self.state.clone();
        let counters_stop = stop.clone();
        let interval = std::time::Duration::from_secs(self.counter_reconcile_interval.max(1));
        tokio::spawn(crate::jobs::every(interval, counters_stop, move || {
            let state = state.clone();
            async move {
                let keys = state.publisher.entitlements().keys().clone();
                if let Err(e) = crate::jobs::counters::run_once(
                    &state.pool,
                    &state.redis,
                    &keys,
                    &state.metrics,
                )
                .await
                {
                    tracing::warn!(error = %e, "counter reconciliation failed");
                }
            }
        }));
        for _ in 0..self.webhook_workers.max(1) {
            tokio::spawn(crate::webhooks::run_worker(
                self.state.clone(),
                stop.clone(),
            ));
        }
        tokio::spawn(crate::notifications::run_delivery(
            self.state.clone(),
            stop.clone(),
        ));
        let state = self.state.clone();
        tokio::spawn(crate::jobs::every(
            std::time::Duration::from_secs(self.stripe_reconcile_interval.max(1)),
            stop.clone(),
            move || {
                let state = state.clone();
                async move {
                    let pool = state.pool.clone();
                    let run = crate::jobs::with_lock(&pool, crate::jobs::STRIPE_SYNC_LOCK, || {
                        crate::jobs::stripe_reconciliation::run_once(&state)
                    })
                    .await;
                    if let Err(e) = run {
                        tracing::warn!(error = %e, "stripe reconciliation failed");
                    }
                }
            },
        ));
        let state = self.state.clone();
        tokio::spawn(crate::jobs::every(
            std::time::Duration::from_secs(15),
            stop.clone(),
            move || {
                let state = state.clone();
                async move {
                    if let Err(e) = crate::jobs::business_metrics::refresh(&state).await {
                        tracing::warn!(error = %e, "business metrics refresh failed");
                    }
                }
            },
        ));
        let state = self.state.clone();
        tokio::spawn(crate::jobs::every(
            std::time::Duration::from_secs(30),
            stop.clone(),
            move || {
                let state = state.clone();
                async move {
                    let pool = state.pool.clone();
                    let run = crate::jobs::with_lock(&pool, crate::jobs::DUNNING_LOCK, || {
                        crate::jobs::grace_expiry::run_once(&state)
                    })
                    .await;
                    if let Err(e) = run {
                        tracing::warn!(error = %e, "grace expiry publishing failed");
                    }
                }
            },
        ));
        let state = self.state.clone();
        tokio::spawn(crate::jobs::every(
            std::time::Duration::from_secs(self.overage_trueup_interval.max(1)),
            stop.clone(),
            move || {
                let state = state.clone();
                async move {
                    let pool = state.pool.clone();
                    let run =
                        crate::jobs::with_lock(&pool, crate::jobs::OVERAGE_TRUEUP_LOCK, || {
                            crate::jobs::overage_trueup::run_once(&state)
                        })
                        .await;
                    if let Err(e) = run {
                        tracing::warn!(error = %e, "overage true-up failed");
                    }
                }
            },
        ));
        let verifier = self.state.identity.clone();
        let mut identity_stop = stop.clone();
        tokio::spawn(verifier.keep_fresh(async move {
            let _ = identity_stop.wait_for(|stop| *stop).await;
        }));
        let pool = self.state.pool.clone();
        let days = i32::try_from(self.retention_days).unwrap_or(i32::MAX);
        tokio::spawn(crate::jobs::every(
            std::time::Duration::from_secs(3600),
            stop,
            move || {
                let pool = pool.clone();
                async move {
                    let run =
                        crate::jobs::with_lock(&pool, crate::jobs::RETENTION_LOCK, || async {
                            Ok(crate::jobs::retention::fold_old_usage(&pool, days).await?)
                        })
                        .await;
                    match run {
                        Ok(Some(n)) if n > 0 => {
                            tracing::info!(folded = n, "old usage folded into period totals")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "usage retention failed"),
                    }
                }
            },
        ));
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // Gauges hold real figures from the first scrape.
        if let Err(e) = crate::jobs::business_metrics::refresh(&self.state).await {
            tracing::warn!(error = %e, "business metrics refresh failed");
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        self.spawn_jobs(stop_rx.clone());
        let metrics_app = metrics::router(self.state.metrics.clone());
        let mut metrics_stop = stop_rx.clone();
        let metrics_task = tokio::spawn(async move {
            axum::serve(self.metrics_listener, metrics_app)
                .with_graceful_shutdown(async move {
                    let _ = metrics_stop.wait_for(|stop| *stop).await;
                })
                .await
        });
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let limiter = self.state.rate_limit.clone();
        tokio::spawn(crate::jobs::every(
            std::time::Duration::from_secs(60),
            stop_rx.clone(),
            move || {
                let limiter = limiter.clone();
                async move {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            },
        ));
        let mut api_stop = stop_rx;
        axum::serve(self.api, router(self.state, &self.http))
            .with_graceful_shutdown(async move {
                let _ = api_stop.wait_for(|stop| *stop).await;
            })
            .await?;
        metrics_task.await??;
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
