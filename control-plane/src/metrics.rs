//! The control plane's Prometheus registry and its `/metrics` listener.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
    /// Payments tollgate gave back because the purchase no longer fitted (a duplicate
    /// subscription, a credit pack paid for on fixed fee), by reason.
    pub purchases_refunded: IntCounterVec,
    /// Outbound notification attempts by outcome (delivered, failed).
    pub notifications: IntCounterVec,
    // Business metrics. Gauges derived from PostgreSQL are refreshed by a job
    // (`jobs::business_metrics`), never computed per scrape.
    pub mrr_cents: IntGaugeVec,
    pub active_subscriptions: IntGaugeVec,
    pub period_usage_units: IntGaugeVec,
    pub notification_backlog: IntGauge,
    pub dependency_up: IntGaugeVec,
    pub subscription_cancellations: IntCounterVec,
    pub plan_changes: IntCounterVec,
    pub free_to_paid_conversions: IntCounter,
    pub overage_units_billed: IntCounter,
    pub credit_purchased_cents: IntCounter,
    pub credit_burned_cents: IntCounter,
    /// Invoice created → paid, in Stripe's time.
    pub invoice_payment_seconds: Histogram,
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
                "usage_redis_drift_units",
                "Units the Redis usage counters differ from the ledger at the last reconciliation, by direction",
            ),
            &["direction"],
        )?;
        registry.register(Box::new(counter_drift_units.clone()))?;
        let counter_repairs = IntCounter::with_opts(Opts::new(
            "usage_redis_repairs_total",
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
        let purchases_refunded = IntCounterVec::new(
            Opts::new(
                "purchases_refunded_total",
                "Payments refunded because the purchase no longer fitted, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(purchases_refunded.clone()))?;
        let notifications = IntCounterVec::new(
            Opts::new(
                "notifications_total",
                "Outbound notification delivery attempts by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(notifications.clone()))?;
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let counter = |name: &str, help: &str| -> anyhow::Result<IntCounter> {
            let c = IntCounter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let mrr_cents = gauge_vec(
            "mrr_cents",
            "Monthly recurring revenue from active fixed-fee subscriptions, in cents, by plan",
            &["plan"],
        )?;
        let active_subscriptions = gauge_vec(
            "active_subscriptions",
            "Subscriptions by plan, billing model and Stripe status (canceled excluded)",
            &["plan", "billing_model", "status"],
        )?;
        let period_usage_units = gauge_vec(
            "period_usage_units",
            "Tickets used in customers' current billing periods, by plan",
            &["plan"],
        )?;
        let notification_backlog = IntGauge::with_opts(Opts::new(
            "notification_backlog",
            "Outbound notifications not yet delivered",
        ))?;
        registry.register(Box::new(notification_backlog.clone()))?;
        let dependency_up = gauge_vec(
            "dependency_up",
            "Whether PostgreSQL and Redis answered at the last check (1) or not (0)",
            &["dependency"],
        )?;
        let subscription_cancellations = counter_vec(
            "subscription_cancellations_total",
            "Subscriptions that ended (churn), by plan",
            &["plan"],
        )?;
        let plan_changes = counter_vec(
            "plan_changes_total",
            "Plan changes by direction (upgrade, downgrade)",
            &["direction"],
        )?;
        let free_to_paid_conversions = counter(
            "free_to_paid_conversions_total",
            "Customers whose first paid subscription started",
        )?;
        let overage_units_billed = counter(
            "overage_units_billed_total",
            "Overage units added to renewal invoices",
        )?;
        let credit_purchased_cents = counter(
            "credit_purchased_cents_total",
            "Prepaid credits bought, in cents",
        )?;
        let credit_burned_cents = counter(
            "credit_burned_cents_total",
            "Prepaid credits consumed by usage, in cents",
        )?;
        let invoice_payment_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "invoice_payment_seconds",
                "Time from an invoice's creation to its payment (Stripe's clock)",
            )
            .buckets(vec![
                1.0,
                10.0,
                60.0,
                600.0,
                3600.0,
                6.0 * 3600.0,
                86_400.0,
                3.0 * 86_400.0,
                7.0 * 86_400.0,
            ]),
        )?;
        registry.register(Box::new(invoice_payment_seconds.clone()))?;
        Ok(Self {
            mrr_cents,
            active_subscriptions,
            period_usage_units,
            notification_backlog,
            dependency_up,
            subscription_cancellations,
            plan_changes,
            free_to_paid_conversions,
            overage_units_billed,
            credit_purchased_cents,
            credit_burned_cents,
            invoice_payment_seconds,
            notifications,
            overage_billed_cents,
            stripe_reconcile_repairs,
            payments,
            purchases_refunded,
            registry,
            http_requests,
            usage_events_ingested,
            counter_drift_units,
            counter_repairs,
            webhook_events,
            webhook_apply_seconds,
        })
    }

    /// Creates every labelled series that is known in advance, at zero, so each metric
    /// family is exported from the first scrape (dashboards, alerts and `increase()` see
    /// the first event) — not only after its first observation.
    pub fn preset(
        &self,
        plans: &[&str],
        stripe_operations: &[&str],
        webhook_types: &[&str],
        refund_reasons: &[&str],
        gateway: Option<&prometheus::HistogramVec>,
    ) {
        for outcome in ["inserted", "duplicate"] {
            self.usage_events_ingested.with_label_values(&[outcome]);
        }
        for direction in ["redis_behind", "redis_ahead"] {
            self.counter_drift_units.with_label_values(&[direction]);
        }
        for kind in webhook_types {
            for outcome in ["received", "duplicate", "applied", "ignored"] {
                self.webhook_events.with_label_values(&[kind, outcome, ""]);
            }
            self.webhook_events
                .with_label_values(&[kind, "failed", "stripe"]);
        }
        for code in [
            "missing_signature",
            "malformed_signature",
            "invalid_signature",
            "timestamp_outside_tolerance",
            "malformed_payload",
        ] {
            self.webhook_events
                .with_label_values(&["unknown", "rejected", code]);
        }
        for outcome in ["failed", "recovered"] {
            self.payments.with_label_values(&[outcome]);
        }
        for reason in refund_reasons {
            self.purchases_refunded.with_label_values(&[reason]);
        }
        for outcome in ["delivered", "failed"] {
            self.notifications.with_label_values(&[outcome]);
        }
        for direction in ["upgrade", "downgrade"] {
            self.plan_changes.with_label_values(&[direction]);
        }
        for dependency in ["postgres", "redis"] {
            self.dependency_up.with_label_values(&[dependency]);
        }
        for plan in plans {
            self.subscription_cancellations.with_label_values(&[plan]);
            self.mrr_cents.with_label_values(&[plan]);
            self.period_usage_units.with_label_values(&[plan]);
            for model in ["fixed_fee", "credit_burndown"] {
                self.active_subscriptions
                    .with_label_values(&[plan, model, "active"]);
            }
        }
        if let Some(histogram) = gateway {
            for operation in stripe_operations {
                histogram.with_label_values(&[operation]);
            }
        }
    }

    /// Overage sent to Stripe: one place counts it, whichever path billed it.
    pub fn overage_billed(&self, units: u64, amount: billing_model::Money) {
        self.overage_units_billed.inc_by(units);
        self.overage_billed_cents
            .inc_by(u64::try_from(amount.to_cents()).unwrap_or(0));
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
