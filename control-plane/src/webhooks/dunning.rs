//! Dunning from invoice payments: a failed attempt opens (or keeps) the grace period, a
//! payment closes it; the ticket app hears of both. (Grace *expiry* is the job
//! `jobs::grace_expiry`.)

use super::apply::ApplyError;
use super::event::PaymentOutcome;
use crate::state::AppState;
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;

/// Dunning, from the invoice as Stripe holds it now (re-fetched, like subscriptions, so
/// any delivery order converges): an unpaid invoice with failed attempts opens (or keeps)
/// the grace period; a paid one closes it.
///
/// Grace counts from the failure as Stripe timed it (a test clock's time included) and
/// never ends before the period already paid for (a renewal invoice's period ends where
/// the unpaid period begins); with several failures the earliest one counts.
pub(super) async fn record_payment(
    state: &AppState,
    tx: &mut Transaction<'_, Postgres>,
    outcome: PaymentOutcome,
    subscription_id: &str,
    event_invoice: &Value,
    failed_at: i64,
) -> Result<(), ApplyError> {
    let Some(invoice_id) = event_invoice["id"].as_str() else {
        return Ok(());
    };
    let gateway = super::apply::gateway(state)?;
    let invoice = gateway.retrieve_invoice(invoice_id).await?;
    let paid = invoice
        .status
        .as_ref()
        .is_some_and(|s| s.as_str() == "paid");
    let grace = state
        .webhooks
        .as_ref()
        .map(|w| w.grace)
        .unwrap_or(time::Duration::days(7));
    if paid {
        if outcome == PaymentOutcome::Paid
            && let Some(paid_at) = invoice.status_transitions.paid_at
        {
            state
                .metrics
                .invoice_payment_seconds
                .observe((paid_at - invoice.created).max(0) as f64);
        }
        let recovered = crate::subscription_store::clear_dunning(tx, subscription_id).await?;
        if invoice.attempt_count > 1 {
            if recovered {
                state
                    .metrics
                    .payments
                    .with_label_values(&["recovered"])
                    .inc();
            }
            if let Some(customer) =
                crate::subscription_store::customer_of(tx, subscription_id).await?
            {
                crate::notifications::enqueue(
                    &mut **tx,
                    &customer,
                    crate::notifications::Kind::PaymentRecovered,
                    &format!("payment_recovered/{invoice_id}"),
                    serde_json::json!({ "invoice": invoice_id, "subscription": subscription_id }),
                )
                .await?;
            }
        }
        return Ok(());
    }
    if outcome == PaymentOutcome::Paid || invoice.attempt_count == 0 {
        // Not paid after all (refunded, voided) or never attempted: nothing to record.
        return Ok(());
    }
    let attempts = i32::try_from(invoice.attempt_count).unwrap_or(i32::MAX);
    let next = invoice
        .next_payment_attempt
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
    if outcome == PaymentOutcome::Failed {
        state.metrics.payments.with_label_values(&["failed"]).inc();
    }
    if let Some(customer) = crate::subscription_store::customer_of(tx, subscription_id).await? {
        crate::notifications::enqueue(
            &mut **tx,
            &customer,
            crate::notifications::Kind::PaymentFailed,
            &format!("payment_failed/{invoice_id}"),
            serde_json::json!({
                "invoice": invoice_id, "subscription": subscription_id,
                "attempt_count": invoice.attempt_count,
                "next_payment_attempt": invoice.next_payment_attempt,
            }),
        )
        .await?;
    }
    let failed_at = OffsetDateTime::from_unix_timestamp(failed_at)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    let paid_until = OffsetDateTime::from_unix_timestamp(invoice.period_end).unwrap_or(failed_at);
    let grace_end = (failed_at + grace).max(paid_until);
    crate::subscription_store::record_failed_payment(
        tx,
        subscription_id,
        attempts,
        next,
        grace_end,
    )
    .await?;
    Ok(())
}
