//! Credit packs as money: a paid pack becomes a grant (a pack paid for on fixed fee is
//! refunded instead), a refund revokes its share, a lost dispute ends the grant.

use super::apply::ApplyError;
use crate::state::AppState;
use crate::stripe::GatewayError;
use billing_model::{CustomerId, PlanId};
use serde_json::Value;
use sqlx::{Postgres, Transaction};

/// A paid credit pack becomes a grant (once per Checkout Session), and the customer is on
/// the credit-burndown model of that plan.
pub(super) async fn grant_credits(
    state: &AppState,
    tx: &mut Transaction<'_, Postgres>,
    session: &Value,
) -> Result<Option<CustomerId>, ApplyError> {
    if session["payment_status"].as_str() != Some("paid") {
        return Ok(None);
    }
    let metadata = &session["metadata"];
    let (Some(customer), Some(plan)) = (
        metadata["tollgate_customer_id"].as_str(),
        metadata["tollgate_plan"].as_str(),
    ) else {
        return Ok(None);
    };
    let Some(plan) = PlanId::parse(plan).ok().and_then(|p| state.catalog.get(&p)) else {
        return Ok(None);
    };
    let Some(unit_price) = plan.credit_unit_price() else {
        return Ok(None);
    };
    let Ok(customer_id) = CustomerId::parse(customer) else {
        return Ok(None);
    };
    // What was bought: the pack's units at the plan's per-ticket price, never
    // `amount_total` (tax and discounts change what was paid, not what was bought);
    // `amount_subtotal` (before discounts and tax) for a session without the units.
    let units = metadata["tollgate_credit_units"]
        .as_str()
        .and_then(|u| u.parse::<u64>().ok());
    let amount = match units {
        Some(units) => match unit_price.checked_mul_units(units) {
            Some(a) => a,
            None => return Ok(None),
        },
        None => match session["amount_subtotal"].as_i64() {
            Some(cents) => billing_model::Money::from_cents(cents),
            None => return Ok(None),
        },
    };
    let total = amount.to_cents();
    // The same lock as a subscription's sync, taken first as the sync does (a pack and a
    // subscription stored at the same time see each other, and never deadlock).
    crate::subscription_store::lock_customer(tx, customer).await?;
    crate::customers::link_stripe(&mut **tx, customer, session["customer"].as_str()).await?;
    if !crate::subscription_store::other_live(tx, customer, "")
        .await?
        .is_empty()
    {
        return refund_pack_on_fixed_fee(state, tx, session, customer, amount, unit_price).await;
    }
    let granted = sqlx::query(
        "INSERT INTO billing_credits (customer_id, credit_amount, purchased_amount, unit_price,
             stripe_checkout_session_id, stripe_payment_intent_id)
         VALUES ($1, $2, $2, $3, $4, $5)
         ON CONFLICT (stripe_checkout_session_id) DO NOTHING",
    )
    .bind(customer)
    .bind(amount.as_decimal())
    .bind(unit_price.as_decimal())
    .bind(session["id"].as_str())
    .bind(session["payment_intent"].as_str())
    .execute(&mut **tx)
    .await?;
    if granted.rows_affected() > 0 {
        state
            .metrics
            .credit_purchased_cents
            .inc_by(u64::try_from(total).unwrap_or(0));
    }
    crate::credit_model::enter(
        tx,
        customer,
        plan.id().as_str(),
        crate::credit_model::Entry::Keep,
    )
    .await?;
    Ok(Some(customer_id))
}

/// A pack paid for after the customer moved to fixed fee (its Checkout was opened while
/// they were on Free or credits) would put them on credits while Stripe still bills the
/// monthly fee, or sit unusable beside it: the payment is refunded in full and the grant
/// recorded as refunded; the customer stays on fixed fee.
async fn refund_pack_on_fixed_fee(
    state: &AppState,
    tx: &mut Transaction<'_, Postgres>,
    session: &Value,
    customer: &str,
    amount: billing_model::Money,
    unit_price: billing_model::Money,
) -> Result<Option<CustomerId>, ApplyError> {
    let gateway = super::apply::gateway(state)?;
    let intent = match session["payment_intent"].as_str() {
        Some(intent) => intent.to_owned(),
        None => {
            let id = session["id"]
                .as_str()
                .ok_or(GatewayError::Incomplete("id"))?;
            // A paid session has its payment intent in Stripe; without one there is
            // nothing to refund yet, so the event is retried (with backoff) until it has.
            gateway
                .checkout_payment_intent(id)
                .await?
                .ok_or(GatewayError::Incomplete("payment_intent"))?
        }
    };
    let intent = intent.as_str();
    let recorded = sqlx::query(
        "INSERT INTO billing_credits (customer_id, credit_amount, purchased_amount, unit_price,
             stripe_checkout_session_id, stripe_payment_intent_id, closed_at, closed_reason)
         VALUES ($1, $2, $2, $3, $4, $5, now(), 'refund')
         ON CONFLICT (stripe_checkout_session_id) DO NOTHING",
    )
    .bind(customer)
    .bind(amount.as_decimal())
    .bind(unit_price.as_decimal())
    .bind(session["id"].as_str())
    .bind(intent)
    .execute(&mut **tx)
    .await?;
    if recorded.rows_affected() == 0 {
        // Granted or refunded already (a redelivery).
        return Ok(None);
    }
    let refunded = gateway
        .refund_payment(intent, crate::stripe::RefundReason::CreditsOnFixedFee)
        .await?;
    if refunded == crate::stripe::Refunded::Now {
        state
            .metrics
            .purchases_refunded
            .with_label_values(&[crate::stripe::RefundReason::CreditsOnFixedFee.as_str()])
            .inc();
    }
    tracing::warn!(
        customer,
        session = session["id"].as_str(),
        refunded = ?refunded,
        "credit pack paid for on fixed fee: refunded"
    );
    Ok(None)
}

/// A refunded charge revokes the credits it bought, in proportion: Stripe sends
/// `charge.refunded` for partial refunds too, with `amount_refunded` cumulative. A grant
/// keeps the whole units its unrefunded share buys (never more than it is worth now, so
/// events in any order converge; never less than what was used already). A full refund
/// ends the grant.
pub(super) async fn revoke_refunded_credits(
    tx: &mut Transaction<'_, Postgres>,
    charge: &Value,
) -> Result<Option<CustomerId>, ApplyError> {
    let (Some(intent), Some(amount), Some(refunded)) = (
        charge["payment_intent"].as_str(),
        charge["amount"].as_i64(),
        charge["amount_refunded"].as_i64(),
    ) else {
        return Ok(None);
    };
    if refunded <= 0 || amount <= 0 {
        return Ok(None);
    }
    let touched: Vec<String> = if refunded >= amount {
        sqlx::query_scalar(
            "UPDATE billing_credits SET closed_at = now(), closed_reason = 'refund', updated_at = now()
             WHERE stripe_payment_intent_id = $1 AND closed_at IS NULL
             RETURNING customer_id",
        )
        .bind(intent)
        .fetch_all(&mut **tx)
        .await?
    } else {
        sqlx::query_scalar(
            "UPDATE billing_credits SET
                 purchased_amount = COALESCE(purchased_amount, credit_amount),
                 credit_amount = GREATEST(used_amount, LEAST(credit_amount,
                     FLOOR(COALESCE(purchased_amount, credit_amount) * ($2::numeric - $3::numeric)
                           / $2::numeric / unit_price) * unit_price)),
                 updated_at = now()
             WHERE stripe_payment_intent_id = $1 AND closed_at IS NULL
             RETURNING customer_id",
        )
        .bind(intent)
        .bind(amount)
        .bind(refunded)
        .fetch_all(&mut **tx)
        .await?
    };
    Ok(touched
        .into_iter()
        .next()
        .and_then(|c| CustomerId::parse(&c).ok()))
}

/// A dispute the customer won (`charge.dispute.closed`, status `lost` for us) takes the
/// money back: what is left of the credits it bought ends.
pub(super) async fn revoke_disputed_credits(
    tx: &mut Transaction<'_, Postgres>,
    dispute: &Value,
) -> Result<Option<CustomerId>, ApplyError> {
    let Some(intent) = dispute["payment_intent"].as_str() else {
        return Ok(None);
    };
    let touched: Vec<String> = sqlx::query_scalar(
        "UPDATE billing_credits SET closed_at = now(), closed_reason = 'dispute_lost', updated_at = now()
         WHERE stripe_payment_intent_id = $1 AND closed_at IS NULL
         RETURNING customer_id",
    )
    .bind(intent)
    .fetch_all(&mut **tx)
    .await?;
    Ok(touched
        .into_iter()
        .next()
        .and_then(|c| CustomerId::parse(&c).ok()))
}
