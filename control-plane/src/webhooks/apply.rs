//! What each Stripe event does, in the transaction that marks it applied.
//!
//! Order independence: Stripe does not order deliveries, so an event is a *hint* that an
//! object changed; subscriptions and invoices are re-fetched from Stripe and Stripe's
//! current state is stored. Applying any set of events in any order converges to what
//! Stripe holds.

use super::event::StripeEvent;
use super::{credits, dunning, subscription_sync};
use crate::state::AppState;
use crate::stripe::GatewayError;
use billing_model::CustomerId;
use serde_json::Value;
use sqlx::{Postgres, Transaction};

#[derive(Debug, thiserror::Error)]
pub(super) enum ApplyError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Stripe could not be asked; the event stays pending and is retried.
    #[error(transparent)]
    Stripe(#[from] GatewayError),
}

impl From<stripe::StripeError> for ApplyError {
    fn from(e: stripe::StripeError) -> Self {
        ApplyError::Stripe(GatewayError::Stripe(e))
    }
}

/// Applies one event; returns the customer whose access may have changed.
pub(super) async fn apply(
    state: &AppState,
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    object: &Value,
    created: i64,
) -> Result<Option<CustomerId>, ApplyError> {
    match StripeEvent::parse(kind, object) {
        // A delayed payment method (a bank debit) completes the session unpaid, then
        // reports the payment: the grant is made when it is paid, whichever event says so.
        StripeEvent::CheckoutCompleted { session } => {
            // The purchase is done: its session is never handed out again.
            if let Some(id) = session["id"].as_str() {
                crate::intents::finish_object(&mut **tx, id, crate::intents::Outcome::Completed)
                    .await?;
            }
            match session["mode"].as_str() {
                Some("subscription") => match session["subscription"].as_str() {
                    Some(id) => subscription_sync::sync_subscription(state, tx, id).await,
                    None => Ok(None),
                },
                Some("payment") => credits::grant_credits(state, tx, session).await,
                _ => Ok(None),
            }
        }
        StripeEvent::CheckoutPaymentFailed { session } => {
            if let Some(id) = session["id"].as_str() {
                crate::intents::finish_object(&mut **tx, id, crate::intents::Outcome::Failed)
                    .await?;
            }
            Ok(None)
        }
        StripeEvent::SubscriptionChanged { subscription } => {
            subscription_sync::sync_subscription(state, tx, subscription).await
        }
        StripeEvent::InvoicePayment {
            outcome,
            invoice,
            subscription,
        } => {
            let customer = subscription_sync::sync_subscription(state, tx, subscription).await?;
            dunning::record_payment(state, tx, outcome, subscription, invoice, created).await?;
            Ok(customer)
        }
        StripeEvent::InvoiceCreated { invoice } => bill_renewal_draft(state, invoice).await,
        StripeEvent::ChargeRefunded { charge } => {
            credits::revoke_refunded_credits(tx, charge).await
        }
        StripeEvent::DisputeLost { dispute } => credits::revoke_disputed_credits(tx, dispute).await,
        StripeEvent::Ignored => Ok(None),
    }
}

/// Stripe, which every event needs (events are only received with Stripe configured).
pub(super) fn gateway(state: &AppState) -> Result<&crate::stripe::StripeGateway, ApplyError> {
    state
        .stripe
        .as_deref()
        .ok_or(ApplyError::Stripe(GatewayError::Incomplete(
            "stripe settings",
        )))
}

/// A renewal draft gets the ended period's overage while it is open.
/// (The overage part commits on its own before Stripe is called: see `overage::part`.)
async fn bill_renewal_draft(
    state: &AppState,
    invoice: &Value,
) -> Result<Option<CustomerId>, ApplyError> {
    let gateway = gateway(state)?;
    match crate::overage::bill_renewal_draft(&state.pool, gateway, &state.catalog, invoice).await {
        Ok(Some(charge)) => {
            state.metrics.overage_billed(charge.units, charge.amount);
            tracing::info!(customer = %charge.customer_id, units = charge.units,
                amount = %charge.amount, "overage added to the renewal invoice");
            Ok(None)
        }
        Ok(None) => Ok(None),
        Err(crate::overage::OverageError::Database(e)) => Err(e.into()),
        Err(crate::overage::OverageError::Stripe(e)) => Err(e.into()),
        Err(e @ crate::overage::OverageError::Overflow) => {
            tracing::error!(error = %e, "overage not billed");
            Ok(None)
        }
    }
}
