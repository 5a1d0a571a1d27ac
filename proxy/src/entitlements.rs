//! Entitlements in memory. A miss asks the control plane once per customer however many
//! requests are waiting (single-flight); updates arrive on Redis pub/sub, versioned, and
//! a stale version never replaces a newer one.

use crate::metrics::ProxyMetrics;
use billing_model::{CustomerId, EntitlementSnapshot, EntitlementUpdate};
use moka::future::Cache;
use moka::ops::compute::Op;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;

/// A cached snapshot plus what this proxy learned about it since.
#[derive(Debug)]
pub struct Entitlement {
    pub snapshot: EntitlementSnapshot,
    /// The hard limit of this snapshot is used up (committed units alone reach it):
    /// refuse from memory until a new snapshot or a new period arrives.
    exhausted: AtomicBool,
    /// The highest committed count this proxy has seen for the period (paid overage's
    /// remaining allowance in headers, without a Redis read).
    observed_used: AtomicU64,
}

impl Entitlement {
    pub fn new(snapshot: EntitlementSnapshot) -> Self {
        Self {
            snapshot,
            exhausted: AtomicBool::new(false),
            observed_used: AtomicU64::new(0),
        }
    }

    pub fn observed_used(&self) -> u64 {
        self.observed_used.load(Ordering::Relaxed)
    }

    pub fn observe_used(&self, used: u64) {
        self.observed_used.fetch_max(used, Ordering::Relaxed);
    }

    pub fn is_known_exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }

    pub fn mark_exhausted(&self) {
        self.exhausted.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum FillError {
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    #[error("control plane answered {0}")]
    Status(u16),
    #[error("control plane sent an unreadable snapshot: {0}")]
    Malformed(String),
}

/// The proxy's entitlement cache.
pub struct Entitlements {
    cache: Cache<CustomerId, Arc<Entitlement>>,
    http: reqwest::Client,
    base_url: String,
    token: SecretString,
    metrics: Arc<ProxyMetrics>,
}

impl Entitlements {
    pub fn new(
        capacity: u64,
        base_url: &str,
        token: SecretString,
        fill_timeout: Duration,
        metrics: Arc<ProxyMetrics>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            cache: Cache::builder().max_capacity(capacity).build(),
            http: reqwest::Client::builder()
                .timeout(fill_timeout)
                .pool_max_idle_per_host(16)
                .build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
            metrics,
        })
    }

    /// The customer's entitlement for `now`. Served from memory when the cached
    /// snapshot covers `now`; otherwise filled from the control plane (one request per
    /// customer however many callers wait).
    pub async fn get(
        &self,
        customer: &CustomerId,
        now: OffsetDateTime,
    ) -> Result<Arc<Entitlement>, FillError> {
        if let Some(hit) = self.cache.get(customer).await
            && hit.snapshot.period_end > now
        {
            self.metrics.cache_lookups.with_label_values(&["hit"]).inc();
            return Ok(hit);
        }
        self.metrics
            .cache_lookups
            .with_label_values(&["miss"])
            .inc();
        // Calls for one key are serialized: the first fills, the ones queued behind it
        // find the fresh entry and return it without asking again.
        let result = self
            .cache
            .entry_by_ref(customer)
            .and_try_compute_with(|existing| async move {
                match existing {
                    Some(entry) if entry.value().snapshot.period_end > now => {
                        Ok::<_, FillError>(Op::Nop)
                    }
                    stale => match self.fill(customer).await {
                        Ok(snapshot) => Ok(Op::Put(Arc::new(Entitlement::new(snapshot)))),
                        // The control plane is away and the period rolled over: the new
                        // anniversary period has begun all the same, from zero.
                        Err(e) => match stale.and_then(|s| rolled_over(&s.value().snapshot, now)) {
                            Some(rolled) => Ok(Op::Put(Arc::new(Entitlement::new(rolled)))),
                            None => Err(e),
                        },
                    },
                }
            })
            .await?;
        use moka::ops::compute::CompResult;
        match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                Ok(e.into_value())
            }
            CompResult::StillNone(_) | CompResult::Removed(_) => {
                Err(FillError::Malformed("no entry after fill".into()))
            }
        }
    }

    async fn fill(&self, customer: &CustomerId) -> Result<EntitlementSnapshot, FillError> {
        let url = format!("{}/internal/v1/entitlements/{}", self.base_url, customer);
        let outcome = async {
            let response = self
                .http
                .get(&url)
                .bearer_auth(self.token.expose_secret())
                .send()
                .await
                .map_err(|e| FillError::Unreachable(e.to_string()))?;
            if !response.status().is_success() {
                return Err(FillError::Status(response.status().as_u16()));
            }
            let body = response
                .bytes()
                .await
                .map_err(|e| FillError::Unreachable(e.to_string()))?;
            serde_json::from_slice::<EntitlementSnapshot>(&body)
                .map_err(|e| FillError::Malformed(e.to_string()))
        }
        .await;
        let label = if outcome.is_ok() { "ok" } else { "error" };
        self.metrics.fills.with_label_values(&[label]).inc();
        outcome
    }

    /// Applies a published update unless the cache already holds a newer version.
    pub async fn apply(&self, update: EntitlementUpdate) {
        let mut snapshot = update.snapshot;
        snapshot.version = update.seq;
        let customer = snapshot.customer_id.clone();
        self.cache
            .entry(customer)
            .and_compute_with(|existing| async move {
                match existing {
                    Some(e) if e.value().snapshot.version >= snapshot.version => Op::Nop,
                    _ => Op::Put(Arc::new(Entitlement::new(snapshot))),
                }
            })
            .await;
    }

    /// Forgets everything: after a reconnect or a gap in the update sequence nothing
    /// cached can be trusted; entries refill lazily.
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
        self.metrics.cache_invalidations.inc();
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Puts a snapshot straight into the cache (tests and benchmarks).
    pub async fn insert(&self, snapshot: EntitlementSnapshot) {
        self.cache
            .insert(
                snapshot.customer_id.clone(),
                Arc::new(Entitlement::new(snapshot)),
            )
            .await;
    }
}

/// The snapshot moved into the anniversary period containing `now`, with nothing used
/// in it yet; `None` for an unusable period.
pub fn rolled_over(old: &EntitlementSnapshot, now: OffsetDateTime) -> Option<EntitlementSnapshot> {
    let period = old.period().ok()?.rolled_forward_to(now).ok()?;
    let mut next = old.clone();
    next.period_start = period.start();
    next.period_end = period.end();
    next.units_used = 0;
    Some(next)
}

/// Listens for entitlement updates until `shutdown` fires; reconnects with backoff and
/// drops the cache whenever it may have missed one.
pub async fn listen_for_updates(
    client: redis::Client,
    channel: String,
    entitlements: Arc<Entitlements>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use futures_util::StreamExt;
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        let pubsub = match subscribed {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "entitlement channel: cannot subscribe, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Whatever was published while we were not subscribed is lost to us.
        entitlements.invalidate_all();
        tracing::info!(%channel, "entitlement channel subscribed");
        let mut last_seq: Option<u64> = None;
        let mut messages = pubsub.into_on_message();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let update = match EntitlementUpdate::from_json(
                        &String::from_utf8_lossy(message.get_payload_bytes()),
                    ) {
                        Ok(u) => u,
                        Err(e) => {
                            tracing::warn!(error = %e, "entitlement channel: unreadable update");
                            entitlements.metrics.updates.with_label_values(&["malformed"]).inc();
                            continue;
                        }
                    };
                    if let Some(last) = last_seq
                        && update.seq > last + 1
                    {
                        tracing::warn!(last, got = update.seq, "entitlement channel: gap, dropping cache");
                        entitlements.metrics.updates.with_label_values(&["gap"]).inc();
                        entitlements.invalidate_all();
                    }
                    last_seq = Some(last_seq.map_or(update.seq, |l| l.max(update.seq)));
                    entitlements.metrics.updates.with_label_values(&["applied"]).inc();
                    entitlements.apply(update).await;
                }
            }
        }
        tracing::warn!("entitlement channel: connection lost, resubscribing");
        entitlements.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_model::{AccessStatus, BillingModel, PlanId};

    fn snapshot(customer: &str, plan: &str, version: u64) -> EntitlementSnapshot {
        let now = OffsetDateTime::now_utc();
        EntitlementSnapshot {
            customer_id: CustomerId::parse(customer).unwrap(),
            plan: PlanId::parse(plan).unwrap(),
            billing_model: BillingModel::FixedFee,
            status: AccessStatus::Active,
            period_start: now - time::Duration::days(1),
            period_end: now + time::Duration::days(29),
            included_units: 10,
            overage_allowed: false,
            units_used: 0,
            credit_units_purchased: 0,
            credit_units_used: 0,
            chat_enabled: true,
            upgrade_url: None,
            version,
        }
    }

    fn cache() -> Entitlements {
        let registry = prometheus::Registry::new();
        Entitlements::new(
            100,
            "http://127.0.0.1:1",
            "token".to_owned().into(),
            Duration::from_millis(100),
            Arc::new(ProxyMetrics::register(&registry).unwrap()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_stale_update_never_replaces_a_newer_one() {
        let c = cache();
        let customer = CustomerId::parse("alice").unwrap();
        c.apply(EntitlementUpdate {
            seq: 7,
            snapshot: snapshot("alice", "premium", 0),
        })
        .await;
        c.apply(EntitlementUpdate {
            seq: 5,
            snapshot: snapshot("alice", "free", 0),
        })
        .await;
        let now = OffsetDateTime::now_utc();
        let got = c.get(&customer, now).await.unwrap();
        assert_eq!(got.snapshot.plan.as_str(), "premium");
        assert_eq!(got.snapshot.version, 7);
        c.apply(EntitlementUpdate {
            seq: 9,
            snapshot: snapshot("alice", "enterprise", 0),
        })
        .await;
        assert_eq!(
            c.get(&customer, now).await.unwrap().snapshot.plan.as_str(),
            "enterprise"
        );
    }

    #[tokio::test]
    async fn an_unreachable_control_plane_is_an_error_not_a_free_pass() {
        let c = cache();
        let customer = CustomerId::parse("bob").unwrap();
        assert!(matches!(
            c.get(&customer, OffsetDateTime::now_utc()).await,
            Err(FillError::Unreachable(_))
        ));
    }

    #[test]
    fn a_period_rolled_over_offline_keeps_a_month_end_anchor() {
        use time::macros::datetime;
        // Anchor Jan 31; the cached period is the clamped February one.
        let mut old = snapshot("carol", "free", 3);
        old.period_start = datetime!(2023-02-28 08:00:00 UTC);
        old.period_end = datetime!(2023-03-31 08:00:00 UTC);
        old.units_used = 7;
        let rolled = rolled_over(&old, datetime!(2023-04-01 00:00:00 UTC)).unwrap();
        assert_eq!(rolled.period_start, datetime!(2023-03-31 08:00:00 UTC));
        assert_eq!(rolled.period_end, datetime!(2023-04-30 08:00:00 UTC));
        assert_eq!(rolled.units_used, 0);
    }
}
