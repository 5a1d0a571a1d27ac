//! Outbound notifications to the ticket app: approaching and reached limits, a blocked
//! Free tier (so the app can disable chat), credits low or gone, payment failed or
//! recovered, plan changes and the fall back to Free.
//!
//! Each notification is a row in `notification_outbox` before anything is sent, written in
//! the same transaction as its cause where there is one; a worker POSTs due rows to
//! `control_plane.notifications.url`, signed like Stripe's webhooks
//! (`Tollgate-Signature: t=<unix>,v1=<hex HMAC-SHA256("<t>.<body>")>`), and retries with
//! exponential backoff. Delivery is at least once: receivers dedupe on `id`. `dedupe_key`
//! makes each threshold fire once per period (or per credit balance) and each payment
//! event once per invoice.

pub use crate::config::NotificationSettings;
use crate::state::AppState;
use billing_model::{BillingModel, EntitlementSnapshot};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::time::Duration;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    UsageApproachingLimit,
    UsageLimitReached,
    FreeTierBlocked,
    CreditsLow,
    CreditsExhausted,
    PaymentFailed,
    PaymentRecovered,
    PlanChanged,
    FellBackToFree,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::UsageApproachingLimit => "usage.approaching_limit",
            Kind::UsageLimitReached => "usage.limit_reached",
            Kind::FreeTierBlocked => "free_tier.blocked",
            Kind::CreditsLow => "credits.low",
            Kind::CreditsExhausted => "credits.exhausted",
            Kind::PaymentFailed => "payment.failed",
            Kind::PaymentRecovered => "payment.recovered",
            Kind::PlanChanged => "plan.changed",
            Kind::FellBackToFree => "plan.fell_back_to_free",
        }
    }
}

/// Queues a notification unless one with `dedupe_key` exists; `true` when queued.
pub async fn enqueue<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    customer: &str,
    kind: Kind,
    dedupe_key: &str,
    data: Value,
) -> Result<bool, sqlx::Error> {
    let id = uuid::Uuid::now_v7();
    let payload = json!({
        "id": id,
        "type": kind.as_str(),
        "created": time::OffsetDateTime::now_utc().unix_timestamp(),
        "customer_id": customer,
        "data": data,
    });
    Ok(sqlx::query!(
        "INSERT INTO notification_outbox (event_id, customer_id, kind, dedupe_key, payload)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dedupe_key) DO NOTHING",
        id,
        customer,
        kind.as_str(),
        dedupe_key,
        payload
    )
    .execute(executor)
    .await?
    .rows_affected()
        > 0)
}

/// The usage and credit thresholds a snapshot has crossed, each with its dedupe key.
pub fn thresholds(s: &EntitlementSnapshot, free_plan: &str) -> Vec<(Kind, String, Value)> {
    let mut out = Vec::new();
    let customer = s.customer_id.as_str();
    match s.billing_model {
        BillingModel::FixedFee if s.included_units > 0 => {
            let period = s.period_start.unix_timestamp();
            let data = json!({
                "plan": s.plan.as_str(), "used": s.units_used, "included": s.included_units,
                "period_start": period, "period_end": s.period_end.unix_timestamp(),
            });
            if s.units_used * 5 >= s.included_units * 4 {
                out.push((
                    Kind::UsageApproachingLimit,
                    format!("usage80/{customer}/{period}"),
                    data.clone(),
                ));
            }
            if s.units_used >= s.included_units {
                out.push((
                    Kind::UsageLimitReached,
                    format!("usage100/{customer}/{period}"),
                    data.clone(),
                ));
                if s.plan.as_str() == free_plan {
                    let mut blocked = data;
                    blocked["chat_enabled"] = json!(false);
                    out.push((
                        Kind::FreeTierBlocked,
                        format!("free_blocked/{customer}/{period}"),
                        blocked,
                    ));
                }
            }
        }
        BillingModel::CreditBurndown if s.credit_units_purchased > 0 => {
            let bought = s.credit_units_purchased;
            let left = bought.saturating_sub(s.credit_units_used);
            let data = json!({ "plan": s.plan.as_str(), "credits_remaining": left, "credits_purchased": bought });
            if left * 5 <= bought {
                out.push((
                    Kind::CreditsLow,
                    format!("credits_low/{customer}/{bought}"),
                    data.clone(),
                ));
            }
            if left == 0 {
                out.push((
                    Kind::CreditsExhausted,
                    format!("credits_exhausted/{customer}/{bought}"),
                    data,
                ));
            }
        }
        _ => {}
    }
    out
}

/// Queues the thresholds the customers' current usage has crossed (after ingestion).
pub async fn check_usage(state: &AppState, customers: &[billing_model::CustomerId]) {
    if state.notifications.is_none() {
        return;
    }
    let free = state.catalog.free_plan().id().to_string();
    for customer in customers {
        let snapshot = match state.publisher.entitlements().snapshot(customer).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, customer = %customer, "threshold check skipped");
                continue;
            }
        };
        for (kind, key, data) in thresholds(&snapshot, &free) {
            if let Err(e) = enqueue(&state.pool, customer.as_str(), kind, &key, data).await {
                tracing::warn!(error = %e, "notification not queued");
            }
        }
    }
}

/// Delivers due notifications until `stop` fires.
pub async fn run_delivery(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(settings) = state.notifications.clone() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.timeout_ms))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "notification client");
            return;
        }
    };
    loop {
        match deliver_due(&state, &settings, &client).await {
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "notification delivery pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// One pass over due rows; returns how many were attempted.
pub async fn deliver_due(
    state: &AppState,
    settings: &NotificationSettings,
    client: &reqwest::Client,
) -> anyhow::Result<usize> {
    let mut tx = state.pool.begin().await?;
    let due = sqlx::query!(
        "SELECT event_id, payload, attempts FROM notification_outbox
         WHERE delivered_at IS NULL AND next_attempt_at <= now()
         ORDER BY next_attempt_at LIMIT 20
         FOR UPDATE SKIP LOCKED"
    )
    .fetch_all(&mut *tx)
    .await?;
    for row in &due {
        let body = serde_json::to_vec(&row.payload)?;
        let t = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = crate::signature::sign(&body, settings.secret.expose_secret(), t);
        let outcome = client
            .post(&settings.url)
            .header("content-type", "application/json")
            .header("tollgate-signature", signature)
            .header("tollgate-event-id", row.event_id.to_string())
            .body(body)
            .send()
            .await;
        let error = match outcome {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("HTTP {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        match error {
            None => {
                sqlx::query!(
                    "UPDATE notification_outbox SET delivered_at = now(), attempts = attempts + 1,
                         last_error = NULL WHERE event_id = $1",
                    row.event_id
                )
                .execute(&mut *tx)
                .await?;
                state
                    .metrics
                    .notifications
                    .with_label_values(&["delivered"])
                    .inc();
            }
            Some(error) => {
                let backoff = 2u64
                    .saturating_pow(u32::try_from(row.attempts).unwrap_or(30).min(30))
                    .min(settings.max_backoff_seconds.max(1));
                sqlx::query!(
                    "UPDATE notification_outbox SET attempts = attempts + 1, last_error = $2,
                         next_attempt_at = now() + make_interval(secs => $3)
                     WHERE event_id = $1",
                    row.event_id,
                    error,
                    backoff as f64
                )
                .execute(&mut *tx)
                .await?;
                state
                    .metrics
                    .notifications
                    .with_label_values(&["failed"])
                    .inc();
            }
        }
    }
    tx.commit().await?;
    Ok(due.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_model::{AccessStatus, CustomerId, PlanId};

    fn snapshot(plan: &str, model: BillingModel, included: u64, used: u64) -> EntitlementSnapshot {
        let start = time::macros::datetime!(2026-11-01 00:00 UTC);
        EntitlementSnapshot {
            customer_id: CustomerId::parse("c").unwrap(),
            plan: PlanId::parse(plan).unwrap(),
            billing_model: model,
            status: AccessStatus::Active,
            period_start: start,
            period_end: start + time::Duration::days(30),
            included_units: included,
            overage_allowed: plan != "free",
            units_used: used,
            credit_units_purchased: 0,
            credit_units_used: 0,
            chat_enabled: true,
            upgrade_url: None,
            version: 0,
        }
    }

    fn kinds(s: &EntitlementSnapshot) -> Vec<Kind> {
        thresholds(s, "free").into_iter().map(|t| t.0).collect()
    }

    #[test]
    fn thresholds_are_80_and_100_percent_and_free_blocks_at_100() {
        assert!(kinds(&snapshot("premium", BillingModel::FixedFee, 100, 79)).is_empty());
        assert_eq!(
            kinds(&snapshot("premium", BillingModel::FixedFee, 100, 80)),
            [Kind::UsageApproachingLimit]
        );
        assert_eq!(
            kinds(&snapshot("premium", BillingModel::FixedFee, 100, 137)),
            [Kind::UsageApproachingLimit, Kind::UsageLimitReached]
        );
        assert_eq!(
            kinds(&snapshot("free", BillingModel::FixedFee, 10, 10)),
            [
                Kind::UsageApproachingLimit,
                Kind::UsageLimitReached,
                Kind::FreeTierBlocked
            ]
        );
    }

    #[test]
    fn credits_are_low_at_a_fifth_left_and_exhausted_at_none() {
        let mut s = snapshot("premium", BillingModel::CreditBurndown, 0, 0);
        s.credit_units_purchased = 100;
        s.credit_units_used = 79;
        assert!(kinds(&s).is_empty());
        s.credit_units_used = 80;
        assert_eq!(kinds(&s), [Kind::CreditsLow]);
        s.credit_units_used = 100;
        assert_eq!(kinds(&s), [Kind::CreditsLow, Kind::CreditsExhausted]);
        // A new purchase is a new balance: its thresholds fire again.
        let keys: Vec<String> = thresholds(&s, "free").into_iter().map(|t| t.1).collect();
        s.credit_units_purchased = 200;
        s.credit_units_used = 200;
        let again: Vec<String> = thresholds(&s, "free").into_iter().map(|t| t.1).collect();
        assert!(keys.iter().all(|k| !again.contains(k)));
    }
}
