//! The proxy's metrics, registered once in the default registry (served by `admin`).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

pub struct ProxyMetrics {
    /// Every decision the proxy makes, by route class and outcome.
    pub decisions: IntCounterVec,
    /// Time spent in tollgate itself (not upstream), by route class.
    pub added_latency: HistogramVec,
    /// Redis round trips, by operation.
    pub redis_seconds: HistogramVec,
    pub redis_errors: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub fills: IntCounterVec,
    pub cache_invalidations: IntCounter,
    pub cache_entries: IntGauge,
    pub updates: IntCounterVec,
    pub usage_logged: IntCounter,
    pub usage_log_failures: IntCounter,
    pub usage_shipped: IntCounterVec,
    pub shipping_failures: IntCounter,
    pub spool_segments: IntGauge,
    pub spool_bytes: IntGauge,
    pub commit_retries: IntCounter,
    /// Holds found gone while their request ran, or at commit, by where.
    pub holds_lost: IntCounterVec,
    /// Holds registered right now (requests in flight holding a unit).
    pub holds_live: IntGauge,
    /// Units leased from Redis and not handed to a request yet.
    pub leased_free: IntGauge,
    /// Lease round trips that granted units, and the units they granted.
    pub leases: IntCounter,
    pub leased_units: IntCounter,
    /// Leased units given back unused.
    pub lease_returned_units: IntCounter,
}

impl ProxyMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::create(registry)?;
        metrics.preset();
        Ok(metrics)
    }

    /// Creates every labelled series known in advance, at zero, so each family is
    /// exported from the first scrape and `increase()` sees the first event.
    fn preset(&self) {
        for class in ["metered", "chat", "unmetered"] {
            self.added_latency.with_label_values(&[class]);
            for outcome in billing_model::admission::Outcome::ALL {
                self.decisions.with_label_values(&[class, outcome.label()]);
            }
        }
        for place in ["renewal", "commit", "delivered_in_doubt"] {
            self.holds_lost.with_label_values(&[place]);
        }
        for op in ["lease", "chat_check"] {
            self.redis_seconds.with_label_values(&[op]);
            for kind in ["timeout", "error"] {
                self.redis_errors.with_label_values(&[op, kind]);
            }
        }
        for result in ["hit", "miss"] {
            self.cache_lookups.with_label_values(&[result]);
        }
        for outcome in ["ok", "error"] {
            self.fills.with_label_values(&[outcome]);
        }
        for outcome in ["applied", "gap", "malformed"] {
            self.updates.with_label_values(&[outcome]);
        }
        for outcome in ["inserted", "duplicate"] {
            self.usage_shipped.with_label_values(&[outcome]);
        }
    }

    fn create(registry: &Registry) -> prometheus::Result<Self> {
        let ns = "tollgate_proxy";
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help).namespace(ns), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::with_opts(Opts::new(name, help).namespace(ns))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::with_opts(Opts::new(name, help).namespace(ns))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<HistogramVec> {
                let buckets = vec![
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 1.0,
                ];
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help)
                        .namespace(ns)
                        .buckets(buckets),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        Ok(Self {
            decisions: counter_vec(
                "decisions_total",
                "Requests by route class and decision (admitted, refused_*, unauthorized, fail_open, fail_closed, ...)",
                &["route_class", "outcome"],
            )?,
            added_latency: histogram(
                "added_latency_seconds",
                "Time a request spends in tollgate itself, excluding the upstream",
                &["route_class"],
            )?,
            redis_seconds: histogram(
                "redis_seconds",
                "Redis round trips on the request path",
                &["op"],
            )?,
            redis_errors: counter_vec(
                "redis_errors_total",
                "Redis calls that failed or exceeded the budget",
                &["op", "kind"],
            )?,
            cache_lookups: counter_vec(
                "entitlement_cache_lookups_total",
                "Entitlement cache lookups by result (hit, miss)",
                &["result"],
            )?,
            fills: counter_vec(
                "entitlement_fills_total",
                "Entitlement fills from the control plane (single-flight) by outcome",
                &["outcome"],
            )?,
            cache_invalidations: counter(
                "entitlement_cache_invalidations_total",
                "Whole-cache drops after a reconnect or an update gap",
            )?,
            cache_entries: gauge(
                "entitlement_cache_entries",
                "Customers whose entitlement is in memory",
            )?,
            updates: counter_vec(
                "entitlement_updates_total",
                "Pub/sub entitlement updates by outcome (applied, gap, malformed)",
                &["outcome"],
            )?,
            usage_logged: counter(
                "usage_events_logged_total",
                "Usage events written to the usage log",
            )?,
            usage_log_failures: counter(
                "usage_log_failures_total",
                "Usage events that could not be written to the usage log",
            )?,
            usage_shipped: counter_vec(
                "usage_events_shipped_total",
                "Usage events acknowledged by the ledger, by outcome (inserted, duplicate)",
                &["outcome"],
            )?,
            shipping_failures: counter(
                "usage_shipping_failures_total",
                "Usage batches the control plane did not accept (retried)",
            )?,
            spool_segments: gauge("usage_spool_segments", "Usage log segments waiting on disk")?,
            spool_bytes: gauge("usage_spool_bytes", "Bytes of usage log waiting on disk")?,
            commit_retries: counter(
                "commit_retries_total",
                "Counter commits retried after a Redis error",
            )?,
            holds_lost: counter_vec(
                "reservation_holds_lost_total",
                "Holds found gone: at renewal (Redis lost them), at commit (counted anyway, the unit was delivered), or in doubt when their request succeeded",
                &["place"],
            )?,
            holds_live: gauge(
                "reservation_holds",
                "Units held in Redis by requests in flight on this proxy",
            )?,
            leased_free: gauge(
                "leased_units_free",
                "Units this proxy leased from Redis and has not handed to a request yet",
            )?,
            leases: counter(
                "leases_total",
                "Lease round trips to Redis that granted units (hard limits)",
            )?,
            leased_units: counter("leased_units_total", "Units granted by leases")?,
            lease_returned_units: counter(
                "lease_returned_units_total",
                "Leased units given back to Redis unused (idle, aged, shutdown, or to lease anew)",
            )?,
        })
    }
}
