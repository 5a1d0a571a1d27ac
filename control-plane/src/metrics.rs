//! The control plane's Prometheus registry and its `/metrics` listener.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::Arc;

/// Every metric the control plane exports, registered once.
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub usage_events_ingested: IntCounterVec,
    /// Usage counter accuracy: units Redis is behind / ahead of the ledger.
    pub counter_drift_units: IntGaugeVec,
    pub counter_repairs: IntCounter,
    /// Stripe webhook events by type, outcome (received, duplicate, rejected, applied,
    /// ignored, failed) and rejection reason.
    pub webhook_events: IntCounterVec,
    pub webhook_apply_seconds: Histogram,
    /// Overage added to renewal invoices, in cents.
    pub overage_billed_cents: IntCounter,
    /// Stripe reconciliation: subscriptions or events repaired (missed webhooks).
    pub stripe_reconcile_repairs: IntCounter,
    /// Payment failures and recoveries seen in webhooks.
    pub payments: IntCounterVec,
    /// Outbound notification attempts by outcome (delivered, failed).
    pub notifications: IntCounterVec,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("tollgate_cp".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "Billing API requests by route and status",
            ),
            &["route", "status"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        let usage_events_ingested = IntCounterVec::new(
            Opts::new(
                "usage_events_ingested_total",
                "Usage events received from proxies, by outcome (inserted, duplicate)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(usage_events_ingested.clone()))?;
        let counter_drift_units = IntGaugeVec::new(
            Opts::new(
                "usage_counter_drift_units",
                "Units the Redis usage counters differ from the ledger at the last reconciliation, by direction",
            ),
            &["direction"],
        )?;
        registry.register(Box::new(counter_drift_units.clone()))?;
        let counter_repairs = IntCounter::with_opts(Opts::new(
            "usage_counter_repairs_total",
            "Redis usage counters raised to the ledger by reconciliation",
        ))?;
        registry.register(Box::new(counter_repairs.clone()))?;
        let webhook_events = IntCounterVec::new(
            Opts::new(
                "stripe_webhook_events_total",
                "Stripe webhook events by type, outcome and reason",
            ),
            &["type", "outcome", "reason"],
        )?;
        registry.register(Box::new(webhook_events.clone()))?;
        let webhook_apply_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "stripe_webhook_apply_seconds",
                "Time to apply one stored Stripe event (re-fetch included)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        registry.register(Box::new(webhook_apply_seconds.clone()))?;
        let overage_billed_cents = IntCounter::with_opts(Opts::new(
            "overage_billed_cents_total",
            "Overage added to renewal invoices, in cents",
        ))?;
        registry.register(Box::new(overage_billed_cents.clone()))?;
        let stripe_reconcile_repairs = IntCounter::with_opts(Opts::new(
            "stripe_reconcile_repairs_total",
            "Stripe events found by reconciliation that webhooks had not delivered",
        ))?;
        registry.register(Box::new(stripe_reconcile_repairs.clone()))?;
        let payments = IntCounterVec::new(
            Opts::new(
                "payments_total",
                "Invoice payment outcomes seen in webhooks (failed, recovered)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(payments.clone()))?;
        let notifications = IntCounterVec::new(
            Opts::new(
                "notifications_total",
                "Outbound notification delivery attempts by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(notifications.clone()))?;
        Ok(Self {
            notifications,
            overage_billed_cents,
            stripe_reconcile_repairs,
            payments,
            registry,
            http_requests,
            usage_events_ingested,
            counter_drift_units,
            counter_repairs,
            webhook_events,
            webhook_apply_seconds,
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .with_state(metrics)
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}
