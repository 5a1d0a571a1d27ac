//! Ships the usage log to the control plane's ledger in batches, oldest first, and
//! deletes a segment only once the ledger has acknowledged all of it. Delivery is
//! at-least-once; the ledger dedupes on event id.

use crate::entitlements::Entitlements;
use crate::metrics::ProxyMetrics;
use crate::usage_log::{Segment, UsageLog, read_segment};
use async_trait::async_trait;
use billing_model::{UsageBatch, UsageEvent};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Shipper {
    pub log: Arc<UsageLog>,
    pub http: reqwest::Client,
    pub url: String,
    pub token: SecretString,
    pub batch_size: usize,
    pub max_delay: Duration,
    pub metrics: Arc<ProxyMetrics>,
    pub entitlements: Arc<Entitlements>,
    /// Counter commits still running on the background runtime.
    pub pending_commits: Arc<AtomicU64>,
    /// Admitted metered requests whose upstream has not answered yet.
    pub unsettled: Arc<AtomicU64>,
    /// How long pingora lets in-flight requests run after SIGTERM.
    pub drain: Duration,
}

#[derive(Debug, serde::Deserialize)]
struct Acknowledgement {
    inserted: u64,
    duplicates: u64,
}

impl Shipper {
    /// Seals the active segment and ships every sealed one whose counter commits are
    /// done, in order. Stops at the first failure (or segment still waiting on a
    /// commit) so order is kept; returns whether nothing failed.
    pub async fn ship_once(&self) -> bool {
        if let Err(e) = self.log.seal() {
            tracing::error!(error = %e, "usage log: cannot seal segment");
            return false;
        }
        let segments = match self.log.sealed() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "usage log: cannot list segments");
                return false;
            }
        };
        let mut all_shipped = true;
        for segment in segments {
            if !self.log.commits_done(segment.seq) {
                // Its units are not counted in Redis yet; shipping them now would let a
                // counter be raised to the ledger under a commit still on its way.
                break;
            }
            if !self.ship_segment(&segment).await {
                all_shipped = false;
                break;
            }
            self.log.shipped(segment.seq);
        }
        let (segments, bytes) = self.log.depth();
        self.metrics.spool_segments.set(segments as i64);
        self.metrics.spool_bytes.set(bytes as i64);
        self.metrics
            .cache_entries
            .set(self.entitlements.entry_count() as i64);
        all_shipped
    }

    async fn ship_segment(&self, segment: &Segment) -> bool {
        let (events, unreadable) = match read_segment(segment) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "usage log: cannot read segment");
                return false;
            }
        };
        if unreadable > 0 {
            // Only a torn final write (a crash mid-append) produces these; its response
            // never left the proxy.
            tracing::warn!(segment = %segment.path.display(), unreadable, "usage log: skipped torn lines");
        }
        for chunk in events.chunks(self.batch_size.max(1)) {
            if let Err(e) = self.post(chunk).await {
                self.metrics.shipping_failures.inc();
                tracing::warn!(error = %e, events = chunk.len(), "usage shipping failed; kept on disk, will retry");
                return false;
            }
        }
        if let Err(e) = std::fs::remove_file(&segment.path) {
            tracing::error!(error = %e, "usage log: cannot delete shipped segment");
            return false;
        }
        true
    }

    async fn post(&self, events: &[UsageEvent]) -> anyhow::Result<()> {
        let batch = UsageBatch {
            events: events.to_vec(),
        };
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(self.token.expose_secret())
            .json(&batch)
            .send()
            .await?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("ledger answered {status}: {body}");
        }
        let ack: Acknowledgement = response.json().await?;
        self.metrics
            .usage_shipped
            .with_label_values(&["inserted"])
            .inc_by(ack.inserted);
        self.metrics
            .usage_shipped
            .with_label_values(&["duplicate"])
            .inc_by(ack.duplicates);
        Ok(())
    }

    /// At shutdown: keep shipping while in-flight requests finish (they may still
    /// consume units), then ship what is left. Whatever cannot be shipped now stays on
    /// disk for the next start.
    async fn drain(&self) {
        // Leave a second of the grace period for the final shipment.
        let deadline = Instant::now() + self.drain.saturating_sub(Duration::from_secs(1));
        // Until the deadline, not only until nothing is in flight: pingora serves the
        // connections it accepted for the whole grace period, and a request accepted
        // just before the signal may be admitted (and consume) only after it. What
        // settles meanwhile is shipped as it settles.
        while Instant::now() < deadline {
            if self.unsettled.load(Ordering::Relaxed) == 0
                && self.pending_commits.load(Ordering::Relaxed) == 0
            {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.ship_once()).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shipped = tokio::time::timeout(Duration::from_secs(5), self.ship_once()).await;
        match shipped {
            Ok(true) => tracing::info!("usage log drained to the ledger"),
            _ => tracing::warn!(
                "usage log not fully shipped at shutdown; it stays on disk for the next start"
            ),
        }
    }
}

#[async_trait]
impl BackgroundService for Shipper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut delay = self.max_delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => {
                    self.drain().await;
                    return;
                }
            }
            delay = if self.ship_once().await {
                self.max_delay
            } else {
                // Back off while the control plane is away; events keep accumulating
                // safely on disk.
                (delay * 2).min(Duration::from_secs(5))
            };
        }
    }
}
