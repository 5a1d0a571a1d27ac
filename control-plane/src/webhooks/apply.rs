//! The inbox worker: applies stored Stripe events one at a time, each in the transaction
//! that marks it applied.
//!
//! Order independence: Stripe does not order deliveries, so an event is a *hint* that an
//! object changed; the worker re-fetches the subscription from Stripe and stores Stripe's
//! current state. Applying any set of events in any order converges to what Stripe holds.

use crate::http::AppState;
use crate::stripe::{GatewayError, Timed};
use billing_model::{CustomerId, PlanId};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use std::time::Duration;
use stripe_billing::subscription::RetrieveSubscription;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
enum ApplyError {
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

/// Applies pending events until `stop` fires; wakes on new events and every second.
pub async fn run_worker(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(webhooks) = state.webhooks.clone() else {
        return;
    };
    loop {
        loop {
            match apply_next(&state).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook worker: will retry");
                    break;
                }
            }
        }
        tokio::select! {
            _ = webhooks.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// Applies the oldest pending event that is due; `false` when none is.
pub async fn apply_next(state: &AppState) -> anyhow::Result<bool> {
    let mut tx = state.pool.begin().await?;
    let Some(event) = sqlx::query!(
        "SELECT event_id, event_type, payload, received_at, stripe_created, attempts
         FROM stripe_events
         WHERE applied_at IS NULL AND next_attempt_at <= now()
         ORDER BY received_at
         LIMIT 1
         FOR UPDATE SKIP LOCKED"
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(false);
    };
    let started = std::time::Instant::now();
    let object = event.payload["data"]["object"].clone();
    let outcome = apply(
        state,
        &mut tx,
        &event.event_type,
        &object,
        event.stripe_created,
    )
    .await;
    let (label, touched) = match outcome {
        Ok(Some(customer)) => ("applied", Some(customer)),
        Ok(None) => ("ignored", None),
        Err(ApplyError::Stripe(e)) => {
            // Leave it pending and retry it later with backoff (1 s doubling, at most
            // 5 min): Stripe is unreachable or refused. Events behind it go on meanwhile,
            // which is safe because applying is order-independent.
            tx.rollback().await?;
            state
                .metrics
                .webhook_events
                .with_label_values(&[event.event_type.as_str(), "failed", "stripe"])
                .inc();
            let backoff = 2f64.powi(event.attempts.clamp(0, 16)).min(300.0);
            tracing::warn!(error = %e, event = %event.event_id, attempts = event.attempts + 1,
                "webhook event not applied; will retry");
            sqlx::query!(
                "UPDATE stripe_events SET attempts = attempts + 1, last_error = $2,
                     next_attempt_at = now() + make_interval(secs => $3)
                 WHERE event_id = $1",
                event.event_id,
                e.to_string(),
                backoff
            )
            .execute(&state.pool)
            .await?;
            return Ok(true);
        }
        Err(ApplyError::Database(e)) => return Err(e.into()),
    };
    sqlx::query!(
        "UPDATE stripe_events SET applied_at = now(), outcome = $2 WHERE event_id = $1",
        event.event_id,
        label
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    state
        .metrics
        .webhook_events
        .with_label_values(&[event.event_type.as_str(), label, ""])
        .inc();
    state
        .metrics
        .webhook_apply_seconds
        .observe(started.elapsed().as_secs_f64());
    if let Some(customer) = touched
        && let Err(e) = state.publisher.publish(&customer).await
    {
        tracing::warn!(error = %e, customer = %customer, "entitlement publish after webhook failed");
    }
    Ok(true)
}

/// Applies one event; returns the customer whose access may have changed.
async fn apply(
    state: &AppState,
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    object: &Value,
    created: i64,
) -> Result<Option<CustomerId>, ApplyError> {
    match kind {
        // A delayed payment method (a bank debit) completes the session unpaid, then
        // reports the payment: the grant is made when it is paid, whichever event says so.
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            // The purchase is done: its session is never handed out again.
            if let Some(session) = object["id"].as_str() {
                crate::intents::finish_object(
                    &mut **tx,
                    session,
                    crate::intents::Outcome::Completed,
                )
                .await?;
            }
            match object["mode"].as_str() {
                Some("subscription") => match object["subscription"].as_str() {
                    Some(id) => sync_subscription(state, tx, id).await,
                    None => Ok(None),
                },
                Some("payment") => grant_credits(state, tx, object).await,
                _ => Ok(None),
            }
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => match object["id"].as_str() {
            Some(id) => sync_subscription(state, tx, id).await,
            None => Ok(None),
        },
        "invoice.paid" | "invoice.payment_failed" | "invoice.payment_action_required" => {
            let Some(subscription) = invoice_subscription(object) else {
                return Ok(None);
            };
            let customer = sync_subscription(state, tx, &subscription).await?;
            record_payment(state, tx, kind, &subscription, object, created).await?;
            Ok(customer)
        }
        "invoice.created" => {
            let gateway = state
                .stripe
                .as_ref()
                .ok_or(GatewayError::Incomplete("stripe settings"))?;
            match crate::overage::bill_renewal_draft(tx, gateway, &state.catalog, object).await {
                Ok(Some(charge)) => {
                    state
                        .metrics
                        .overage_billed_cents
                        .inc_by(u64::try_from(charge.amount.to_cents()).unwrap_or(0));
                    state.metrics.overage_units_billed.inc_by(charge.units);
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
        "checkout.session.async_payment_failed" => {
            if let Some(session) = object["id"].as_str() {
                crate::intents::finish_object(&mut **tx, session, crate::intents::Outcome::Failed)
                    .await?;
            }
            Ok(None)
        }
        "charge.refunded" => revoke_refunded_credits(tx, object).await,
        "charge.dispute.closed" if object["status"] == "lost" => {
            revoke_disputed_credits(tx, object).await
        }
        _ => Ok(None),
    }
}

/// The customer's stored live Stripe subscriptions other than `subscription_id`.
async fn other_live_subscriptions(
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
    subscription_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT stripe_subscription_id FROM subscriptions
         WHERE customer_id = $1 AND stripe_subscription_id IS NOT NULL
           AND stripe_subscription_id <> $2
           AND status IN ('active', 'trialing', 'past_due')",
    )
    .bind(customer)
    .bind(subscription_id)
    .fetch_all(&mut **tx)
    .await
}

fn invoice_subscription(invoice: &Value) -> Option<String> {
    invoice["parent"]["subscription_details"]["subscription"]
        .as_str()
        .or_else(|| invoice["subscription"].as_str())
        .map(str::to_owned)
}

/// Re-fetches a subscription from Stripe and stores its state now (after a change made
/// through the billing API, without waiting for the webhook); returns its customer.
pub async fn sync_subscription_now(
    state: &AppState,
    subscription_id: &str,
) -> anyhow::Result<Option<CustomerId>> {
    let mut tx = state.pool.begin().await?;
    let customer = sync_subscription(state, &mut tx, subscription_id)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    tx.commit().await?;
    Ok(customer)
}

/// Stores Stripe's current state of a subscription (fetched now, not taken from the
/// event, so an old event can never overwrite a newer state).
async fn sync_subscription(
    state: &AppState,
    tx: &mut Transaction<'_, Postgres>,
    subscription_id: &str,
) -> Result<Option<CustomerId>, ApplyError> {
    let gateway = state
        .stripe
        .as_ref()
        .ok_or(GatewayError::Incomplete("stripe settings"))?;
    // When this view of Stripe was taken (ms): two concurrent syncs (a webhook and an API
    // call) may finish in either order; the store keeps the one that fetched last.
    let fetched_at = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let sub = RetrieveSubscription::new(subscription_id)
        .send(gateway.client())
        .timed(&gateway.api_seconds, "retrieve_subscription")
        .await?;
    let stripe_customer = sub.customer.id().as_str().to_owned();
    let Some(item) = sub.items.data.first() else {
        return Ok(None);
    };
    let plan = item
        .price
        .lookup_key
        .as_deref()
        .and_then(crate::stripe::monthly_plan_of)
        .or_else(|| item.price.metadata.get("tollgate_plan").map(String::as_str))
        .and_then(|p| PlanId::parse(p).ok());
    let Some(plan) = plan else {
        tracing::warn!(
            subscription = subscription_id,
            "subscription price is not a tollgate plan; ignored"
        );
        return Ok(None);
    };
    let customer = match sqlx::query_scalar!(
        "SELECT customer_id FROM customers WHERE stripe_customer_id = $1",
        stripe_customer
    )
    .fetch_optional(&mut **tx)
    .await?
    {
        Some(c) => c,
        None => match sub.metadata.get("tollgate_customer_id") {
            Some(c) => c.clone(),
            None => return Ok(None),
        },
    };
    let Ok(customer_id) = CustomerId::parse(&customer) else {
        return Ok(None);
    };
    // One live subscription per customer. Two Checkout Sessions opened side by side and
    // both paid give Stripe two subscriptions: the one stored first stays, the other ends
    // now and its payment goes back. The customer's lock makes concurrent syncs of the two
    // see each other.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('subscription-sync/' || $1, 0))")
        .bind(&customer)
        .execute(&mut **tx)
        .await?;
    let mut duplicate = false;
    if crate::stripe::is_live(sub.status.as_str()) {
        // The stored rows say which came first; Stripe says whether it still lives (a
        // row left `active` by a lost event must not cost a new subscription its life).
        for other in other_live_subscriptions(tx, &customer, subscription_id).await? {
            if gateway.subscription_is_live(&other).await? {
                duplicate = true;
                break;
            }
        }
    }
    let ended;
    let sub = if duplicate {
        let latest = sub
            .latest_invoice
            .as_ref()
            .and_then(|i| i.id().as_ref().map(|id| id.as_str().to_owned()));
        tracing::warn!(customer = %customer, subscription = subscription_id,
            "a second live subscription: cancelled and its payment refunded");
        ended = gateway
            .end_duplicate_subscription(subscription_id, latest.as_deref())
            .await?;
        state
            .metrics
            .purchases_refunded
            .with_label_values(&[crate::stripe::RefundReason::DuplicateSubscription.as_str()])
            .inc();
        &ended
    } else {
        &sub
    };
    // A downgrade waits for the period end: Stripe bills the lower price from the next
    // renewal, access stays on the plan it came from until then.
    let downgrade = crate::stripe::downgraded_from(&sub.metadata, item.current_period_end)
        .and_then(|p| PlanId::parse(p).ok());
    let (plan, pending) = match downgrade {
        Some(from) => (from, Some(plan)),
        None => (plan, None),
    };
    let period_start = OffsetDateTime::from_unix_timestamp(item.current_period_start).ok();
    let period_end = OffsetDateTime::from_unix_timestamp(item.current_period_end).ok();
    let status = sub.status.as_str().to_owned();
    let before = sqlx::query_as!(
        Before,
        "SELECT plan_type, status FROM subscriptions WHERE stripe_subscription_id = $1",
        subscription_id
    )
    .fetch_optional(&mut **tx)
    .await?;
    sqlx::query!(
        "INSERT INTO customers (customer_id, stripe_customer_id) VALUES ($1, $2)
         ON CONFLICT (customer_id) DO UPDATE
         SET stripe_customer_id = COALESCE(customers.stripe_customer_id, EXCLUDED.stripe_customer_id)",
        customer,
        stripe_customer
    )
    .execute(&mut **tx)
    .await?;
    let stored = sqlx::query_scalar!(
        r#"INSERT INTO subscriptions (customer_id, stripe_subscription_id, stripe_customer_id,
             plan_type, billing_model, status, current_period_start, current_period_end,
             cancel_at_period_end, stripe_state_at, pending_plan_type)
         VALUES ($1, $2, $3, $4, 'fixed_fee', $5, $6, $7, $8, $9, $10)
         ON CONFLICT (stripe_subscription_id) DO UPDATE SET
             plan_type = EXCLUDED.plan_type,
             pending_plan_type = EXCLUDED.pending_plan_type,
             status = EXCLUDED.status,
             current_period_start = EXCLUDED.current_period_start,
             current_period_end = EXCLUDED.current_period_end,
             cancel_at_period_end = EXCLUDED.cancel_at_period_end,
             stripe_state_at = EXCLUDED.stripe_state_at,
             updated_at = now()
         WHERE subscriptions.stripe_state_at <= EXCLUDED.stripe_state_at
         RETURNING (xmax = 0) AS "inserted!""#,
        customer,
        subscription_id,
        stripe_customer,
        plan.as_str(),
        status,
        period_start,
        period_end,
        sub.cancel_at_period_end,
        fetched_at,
        pending.as_ref().map(PlanId::as_str)
    )
    .fetch_optional(&mut **tx)
    .await?;
    // Whether this sync created the row (a concurrent sync that lost the race updates).
    let created = stored == Some(true);
    // The subscription ended (cancelled now or at its period end, a switch to credits
    // or Free, Stripe ending it after failed payments): no renewal draft will carry the
    // last period's overage, so it is invoiced now (once per period, see `overage`).
    // (A duplicate was never the customer's subscription: nothing of it was used.)
    let ended_now = !duplicate
        && status == "canceled"
        && stored.is_some()
        && before.as_ref().is_none_or(|b| b.status != "canceled");
    if ended_now
        && let (Some(start), Some(end)) = (period_start, period_end)
        && let Some(paid_plan) = state.catalog.get(&plan)
    {
        let payment_method = sub
            .default_payment_method
            .as_ref()
            .map(|pm| pm.id().as_str().to_owned());
        match crate::overage::bill_ended_subscription(
            tx,
            gateway,
            paid_plan,
            &customer,
            &stripe_customer,
            subscription_id,
            start,
            end,
            payment_method.as_deref(),
        )
        .await
        {
            Ok(Some(charge)) => {
                state
                    .metrics
                    .overage_billed_cents
                    .inc_by(u64::try_from(charge.amount.to_cents()).unwrap_or(0));
                state.metrics.overage_units_billed.inc_by(charge.units);
            }
            Ok(None) => {}
            Err(crate::overage::OverageError::Database(e)) => return Err(e.into()),
            Err(crate::overage::OverageError::Stripe(e)) => return Err(e.into()),
            Err(e @ crate::overage::OverageError::Overflow) => {
                tracing::error!(error = %e, "final overage not billed");
            }
        }
    }
    if crate::stripe::is_live(&status) {
        expire_credits_on_switch(tx, &customer, subscription_id).await?;
    }
    record_transition(
        state,
        tx,
        &customer,
        before.as_ref(),
        created,
        plan.as_str(),
        &status,
    )
    .await?;
    if let Some(before) = before {
        use crate::notifications::{Kind, enqueue};
        if before.plan_type != plan.as_str() {
            enqueue(
                &mut **tx,
                &customer,
                Kind::PlanChanged,
                &format!("plan_changed/{subscription_id}/{fetched_at}"),
                serde_json::json!({ "from": before.plan_type, "to": plan.as_str() }),
            )
            .await?;
        }
        if before.status == "past_due" && matches!(status.as_str(), "unpaid" | "canceled") {
            enqueue(
                &mut **tx,
                &customer,
                Kind::FellBackToFree,
                &format!("fallback/{subscription_id}"),
                serde_json::json!({ "reason": status, "subscription": subscription_id }),
            )
            .await?;
        }
    }
    Ok(Some(customer_id))
}

/// Dunning, from the invoice as Stripe holds it now (re-fetched, like subscriptions, so
/// any delivery order converges): an unpaid invoice with failed attempts opens (or keeps)
/// the grace period; a paid one closes it.
///
/// Grace counts from the failure as Stripe timed it (a test clock's time included) and
/// never ends before the period already paid for (a renewal invoice's period ends where
/// the unpaid period begins); with several failures the earliest one counts.
async fn record_payment(
    state: &AppState,
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    subscription_id: &str,
    event_invoice: &Value,
    failed_at: i64,
) -> Result<(), ApplyError> {
    use stripe_billing::invoice::RetrieveInvoice;
    let Some(invoice_id) = event_invoice["id"].as_str() else {
        return Ok(());
    };
    let gateway = state
        .stripe
        .as_ref()
        .ok_or(GatewayError::Incomplete("stripe settings"))?;
    let invoice = RetrieveInvoice::new(invoice_id)
        .send(gateway.client())
        .timed(&gateway.api_seconds, "retrieve_invoice")
        .await?;
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
        if kind == "invoice.paid"
            && let Some(paid_at) = invoice.status_transitions.paid_at
        {
            state
                .metrics
                .invoice_payment_seconds
                .observe((paid_at - invoice.created).max(0) as f64);
        }
        let recovered = sqlx::query!(
            "UPDATE subscriptions SET payment_failed_attempts = 0, next_payment_attempt = NULL,
                 grace_until = NULL, updated_at = now()
             WHERE stripe_subscription_id = $1
               AND (grace_until IS NOT NULL OR payment_failed_attempts > 0)",
            subscription_id
        )
        .execute(&mut **tx)
        .await?;
        if invoice.attempt_count > 1 {
            if recovered.rows_affected() > 0 {
                state
                    .metrics
                    .payments
                    .with_label_values(&["recovered"])
                    .inc();
            }
            if let Some(customer) = subscription_customer(tx, subscription_id).await? {
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
    if kind == "invoice.paid" || invoice.attempt_count == 0 {
        // Not paid after all (refunded, voided) or never attempted: nothing to record.
        return Ok(());
    }
    let attempts = i32::try_from(invoice.attempt_count).unwrap_or(i32::MAX);
    let next = invoice
        .next_payment_attempt
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
    if kind == "invoice.payment_failed" {
        state.metrics.payments.with_label_values(&["failed"]).inc();
    }
    if let Some(customer) = subscription_customer(tx, subscription_id).await? {
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
    sqlx::query!(
        "UPDATE subscriptions SET
             payment_failed_attempts = GREATEST(payment_failed_attempts, $2),
             next_payment_attempt = $3,
             grace_until = LEAST(COALESCE(grace_until, $4), $4),
             updated_at = now()
         WHERE stripe_subscription_id = $1",
        subscription_id,
        attempts,
        next,
        grace_end
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A paid credit pack becomes a grant (once per Checkout Session), and the customer is on
/// the credit-burndown model of that plan.
async fn grant_credits(
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
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('subscription-sync/' || $1, 0))")
        .bind(customer)
        .execute(&mut **tx)
        .await?;
    sqlx::query!(
        "INSERT INTO customers (customer_id, stripe_customer_id) VALUES ($1, $2)
         ON CONFLICT (customer_id) DO NOTHING",
        customer,
        session["customer"].as_str()
    )
    .execute(&mut **tx)
    .await?;
    if !other_live_subscriptions(tx, customer, "").await?.is_empty() {
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
    let anchor = OffsetDateTime::now_utc();
    sqlx::query!(
        "INSERT INTO subscriptions (customer_id, plan_type, billing_model, status,
             current_period_start, current_period_end)
         VALUES ($1, $2, 'credit_burndown', 'active', $3, $4)
         ON CONFLICT (customer_id) WHERE stripe_subscription_id IS NULL DO UPDATE
         SET plan_type = EXCLUDED.plan_type, status = 'active', updated_at = now()",
        customer,
        plan.id().as_str(),
        anchor,
        anchor + time::Duration::days(30)
    )
    .execute(&mut **tx)
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
    let gateway = state
        .stripe
        .as_ref()
        .ok_or(GatewayError::Incomplete("stripe settings"))?;
    let Some(intent) = session["payment_intent"].as_str() else {
        return Err(GatewayError::Incomplete("payment_intent").into());
    };
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
    gateway
        .refund_payment(intent, crate::stripe::RefundReason::CreditsOnFixedFee)
        .await?;
    state
        .metrics
        .purchases_refunded
        .with_label_values(&[crate::stripe::RefundReason::CreditsOnFixedFee.as_str()])
        .inc();
    tracing::warn!(
        customer,
        session = session["id"].as_str(),
        "credit pack paid for on fixed fee: refunded"
    );
    Ok(None)
}

/// A refunded charge revokes the credits it bought, in proportion: Stripe sends
/// `charge.refunded` for partial refunds too, with `amount_refunded` cumulative. A grant
/// keeps the whole units its unrefunded share buys (never more than it is worth now, so
/// events in any order converge; never less than what was used already). A full refund
/// ends the grant.
async fn revoke_refunded_credits(
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
async fn revoke_disputed_credits(
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

/// Prepaid credits end when the customer moves to fixed fee: grants bought before the
/// subscription began are closed with the reason kept (grants bought later, after a
/// switch back to credits, are not this subscription's business).
async fn expire_credits_on_switch(
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
    subscription_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE billing_credits SET closed_at = now(), closed_reason = 'billing_model_switch',
             updated_at = now()
         WHERE customer_id = $1 AND closed_at IS NULL
           AND created_at < (SELECT created_at FROM subscriptions WHERE stripe_subscription_id = $2)",
        customer,
        subscription_id
    )
    .execute(&mut **tx)
    .await?;
    // The credit-model row stops being the customer's plan.
    sqlx::query!(
        "UPDATE subscriptions SET status = 'canceled', updated_at = now()
         WHERE customer_id = $1 AND stripe_subscription_id IS NULL AND status <> 'canceled'
           AND created_at < (SELECT created_at FROM subscriptions WHERE stripe_subscription_id = $2)",
        customer,
        subscription_id
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn subscription_customer(
    tx: &mut Transaction<'_, Postgres>,
    subscription_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT customer_id FROM subscriptions WHERE stripe_subscription_id = $1",
        subscription_id
    )
    .fetch_optional(&mut **tx)
    .await
}

/// Churn, upgrades/downgrades and conversions, counted on the transition a sync stores.
async fn record_transition(
    state: &AppState,
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
    before: Option<&Before>,
    created: bool,
    plan: &str,
    status: &str,
) -> Result<(), sqlx::Error> {
    let m = &state.metrics;
    match before {
        Some(b) => {
            if b.status != "canceled" && status == "canceled" {
                m.subscription_cancellations
                    .with_label_values(&[b.plan_type.as_str()])
                    .inc();
            }
            if b.plan_type != plan {
                let fee = |p: &str| {
                    PlanId::parse(p)
                        .ok()
                        .and_then(|id| state.catalog.get(&id))
                        .map(|p| p.monthly_fee().to_cents())
                        .unwrap_or(0)
                };
                let direction = if fee(plan) > fee(&b.plan_type) {
                    "upgrade"
                } else {
                    "downgrade"
                };
                m.plan_changes.with_label_values(&[direction]).inc();
            }
        }
        None if created && matches!(status, "active" | "trialing") => {
            let paid_before = sqlx::query_scalar!(
                r#"SELECT COUNT(*) AS "n!" FROM subscriptions
                   WHERE customer_id = $1 AND stripe_subscription_id IS NOT NULL"#,
                customer
            )
            .fetch_one(&mut **tx)
            .await?;
            // The row just stored is the only paid one: the customer's first.
            if paid_before <= 1 {
                m.free_to_paid_conversions.inc();
            }
        }
        None => {}
    }
    Ok(())
}

/// The stored plan and status before a sync.
struct Before {
    plan_type: String,
    status: String,
}
