//! Storing a subscription as Stripe holds it now: re-fetched on every hint (webhook,
//! reconciliation, a change made through the billing API), one live subscription per
//! customer (a duplicate is ended and refunded), the final overage of one that ended, the
//! credits a switch to fixed fee expires, and the transition's metrics and notifications.

use super::apply::ApplyError;
use crate::state::AppState;
use crate::subscription_store::{self as store, Before};
use billing_model::{CustomerId, PlanId};
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;

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

/// Bills the final overage of an ended subscription once the transaction that decided it
/// has committed; a few quick retries, then the true-up job resumes what is still
/// pending.
async fn finish_ended(state: AppState, ended: crate::overage::EndedPeriod) {
    let Some(gateway) = state.stripe.as_deref() else {
        return;
    };
    let mut delay = std::time::Duration::from_millis(500);
    for attempt in 1..=3 {
        match crate::overage::finish_ended(&state.pool, gateway, &ended).await {
            Ok(Some(charge)) => {
                state.metrics.overage_billed(charge.units, charge.amount);
                return;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, customer = %ended.customer, attempt,
                    "final overage not billed yet; retrying (then the true-up job resumes it)");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
        }
    }
}

/// Stores Stripe's current state of a subscription (fetched now, not taken from the
/// event, so an old event can never overwrite a newer state).
pub(super) async fn sync_subscription(
    state: &AppState,
    tx: &mut Transaction<'_, Postgres>,
    subscription_id: &str,
) -> Result<Option<CustomerId>, ApplyError> {
    let gateway = super::apply::gateway(state)?;
    // When this view of Stripe was taken (ms): two concurrent syncs (a webhook and an API
    // call) may finish in either order; the store keeps the one that fetched last.
    let fetched_at = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let sub = gateway.retrieve_subscription(subscription_id).await?;
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
    let customer = match crate::customers::by_stripe_customer(&mut **tx, &stripe_customer).await? {
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
    store::lock_customer(tx, &customer).await?;
    let mut duplicate = false;
    if store::SubscriptionStatus::names_live(sub.status.as_str()) {
        // The stored rows say which came first; Stripe says whether it still lives (a
        // row left `active` by a lost event must not cost a new subscription its life).
        for other in store::other_live(tx, &customer, subscription_id).await? {
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
        let refunded;
        (ended, refunded) = gateway
            .end_duplicate_subscription(subscription_id, latest.as_deref())
            .await?;
        // Payments that went back, not duplicates found (an unpaid one is voided).
        state
            .metrics
            .purchases_refunded
            .with_label_values(&[crate::stripe::RefundReason::DuplicateSubscription.as_str()])
            .inc_by(refunded);
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
    let before = store::before_sync(tx, subscription_id).await?;
    crate::customers::link_stripe(&mut **tx, &customer, Some(&stripe_customer)).await?;
    let stored = store::store_stripe_state(
        tx,
        &store::StripeState {
            customer: &customer,
            subscription: subscription_id,
            stripe_customer: &stripe_customer,
            plan: plan.as_str(),
            pending_plan: pending.as_ref().map(PlanId::as_str),
            status: &status,
            period_start,
            period_end,
            cancel_at_period_end: sub.cancel_at_period_end,
            fetched_at,
        },
    )
    .await?;
    // Whether this sync created the row (a concurrent sync that lost the race updates).
    let created = stored == store::Stored::Created;
    // The subscription ended (cancelled now or at its period end, a switch to credits
    // or Free, Stripe ending it after failed payments): no renewal draft will carry the
    // last period's overage, so it is invoiced now (once per period, see `overage`).
    // (A duplicate was never the customer's subscription: nothing of it was used.)
    let ended_now = !duplicate
        && status == "canceled"
        && stored != store::Stored::Older
        && before.as_ref().is_none_or(|b| b.status != "canceled");
    if ended_now
        && let (Some(start), Some(end)) = (period_start, period_end)
        && let Some(paid_plan) = state.catalog.get(&plan)
    {
        // Decided in this transaction (it commits or rolls back with the ending),
        // billed once it has committed: Stripe is never called while this transaction
        // holds its connection and the customer's lock (see `overage::decide_ended`).
        match crate::overage::decide_ended(
            tx,
            paid_plan,
            &customer,
            &stripe_customer,
            subscription_id,
            start,
            end,
        )
        .await
        {
            Ok(Some(ended)) => {
                tokio::spawn(finish_ended(state.clone(), ended));
            }
            Ok(None) => {}
            Err(crate::overage::OverageError::Database(e)) => return Err(e.into()),
            Err(crate::overage::OverageError::Stripe(e)) => return Err(e.into()),
            Err(e @ crate::overage::OverageError::Overflow) => {
                tracing::error!(error = %e, "final overage not billed");
            }
        }
    }
    if store::SubscriptionStatus::names_live(&status) {
        expire_credits_on_switch(tx, &customer, subscription_id).await?;
    }
    // A cancellation made by a switch to credits completes that switch, whoever stores
    // it first (the request's re-fetch, this webhook, reconciliation).
    let switched = status == "canceled"
        && sub
            .cancellation_details
            .as_ref()
            .and_then(|d| d.comment.as_deref())
            == Some(crate::switches::CANCEL_COMMENT);
    if switched && crate::switches::complete(tx, subscription_id).await? {
        tracing::info!(customer = %customer, subscription = subscription_id,
            "switch to credits completed");
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

/// Prepaid credits end when the customer moves to fixed fee: grants bought before the
/// subscription began are closed with the reason kept (grants bought later, after a
/// switch back to credits, are not this subscription's business).
async fn expire_credits_on_switch(
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
    subscription_id: &str,
) -> Result<(), sqlx::Error> {
    crate::credit_model::expire_grants(tx, customer, Some(subscription_id)).await?;
    // The credit-model row stops being the customer's plan.
    store::end_credit_row_before(tx, customer, subscription_id).await?;
    Ok(())
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
            let paid_before = store::stripe_subscriptions_of(tx, customer).await?;
            // The row just stored is the only paid one: the customer's first.
            if paid_before <= 1 {
                m.free_to_paid_conversions.inc();
            }
        }
        None => {}
    }
    Ok(())
}
