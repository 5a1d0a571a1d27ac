//! A switch from the fixed fee to prepaid credits, safe against a crash between Stripe
//! and PostgreSQL.
//!
//! The switch cancels the Stripe subscription and, in PostgreSQL, puts the customer on
//! the credit model, expires what is left of older grants and grants the unused,
//! paid-for fee as credits. Done in that order by the request alone, a crash after the
//! cancellation would lose the grant (a retry finds no live subscription). So the intent
//! is recorded first ([`record`]), the cancellation carries [`CANCEL_COMMENT`] in its
//! `cancellation_details`, and whoever stores the cancelled subscription first — the
//! request's own re-fetch, the `customer.subscription.deleted` webhook or reconciliation
//! — completes the switch in that same transaction ([`complete`]), once. An intent whose
//! cancellation never happened is never completed: a subscription cancelled any other
//! way carries no such comment.

use billing_model::{CustomerId, Money, Plan};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// The `cancellation_details.comment` of the cancellation a switch to credits makes.
pub const CANCEL_COMMENT: &str = "tollgate: switch to credits";

/// Records (or, before its cancellation, re-records) the intent to switch `subscription`
/// to credits of `target`, granting `unused_fee` (at `target`'s credit price) when it
/// completes.
pub async fn record(
    pool: &PgPool,
    customer: &CustomerId,
    subscription: &str,
    target: &Plan,
    unused_fee: Option<Money>,
) -> Result<(), sqlx::Error> {
    let grant = unused_fee
        .filter(|a| !a.is_zero())
        .zip(target.credit_unit_price());
    sqlx::query(
        "INSERT INTO model_switches (stripe_subscription_id, customer_id, target_plan,
             unused_fee, unit_price)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (stripe_subscription_id) DO UPDATE SET
             target_plan = EXCLUDED.target_plan, unused_fee = EXCLUDED.unused_fee,
             unit_price = EXCLUDED.unit_price, requested_at = now()
         WHERE model_switches.completed_at IS NULL",
    )
    .bind(subscription)
    .bind(customer.as_str())
    .bind(target.id().as_str())
    .bind(grant.map(|(a, _)| a.as_decimal()))
    .bind(grant.map(|(_, p)| p.as_decimal()))
    .execute(pool)
    .await?;
    Ok(())
}

/// Completes the recorded switch of the cancelled `subscription`, if there is one not
/// completed yet; `true` when this call completed it. Runs in the transaction that
/// stores the cancellation.
pub async fn complete(
    tx: &mut Transaction<'_, Postgres>,
    subscription: &str,
) -> Result<bool, sqlx::Error> {
    let Some((customer, target, unused_fee, unit_price)) = sqlx::query_as::<
        _,
        (
            String,
            String,
            Option<rust_decimal::Decimal>,
            Option<rust_decimal::Decimal>,
        ),
    >(
        "SELECT customer_id, target_plan, unused_fee, unit_price FROM model_switches
             WHERE stripe_subscription_id = $1 AND completed_at IS NULL
             FOR UPDATE",
    )
    .bind(subscription)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(false);
    };
    // Older grants expire with the switch, before the converted fee is granted.
    let expired = crate::credit_model::expire_grants(tx, &customer, None).await?;
    enter_credit_model(tx, &customer, &target).await?;
    if let (Some(amount), Some(price)) = (unused_fee, unit_price) {
        sqlx::query(
            "INSERT INTO billing_credits (customer_id, credit_amount, purchased_amount,
                 unit_price, converted_from_subscription)
             VALUES ($1, $2, $2, $3, $4)
             ON CONFLICT (converted_from_subscription) DO NOTHING",
        )
        .bind(&customer)
        .bind(amount)
        .bind(price)
        .bind(subscription)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query(
        "UPDATE model_switches SET completed_at = now(), credits_expired = $2
         WHERE stripe_subscription_id = $1",
    )
    .bind(subscription)
    .bind(i64::try_from(expired).unwrap_or(i64::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// What a completed switch did: grants expired, and the unused fee credited.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub credits_expired: u64,
    pub unused_fee_credited: Option<Money>,
}

/// The outcome of `subscription`'s switch, once completed.
pub async fn outcome(pool: &PgPool, subscription: &str) -> Result<Option<Completed>, sqlx::Error> {
    let row = sqlx::query_as::<_, (Option<i64>, Option<rust_decimal::Decimal>)>(
        "SELECT credits_expired, unused_fee FROM model_switches
         WHERE stripe_subscription_id = $1 AND completed_at IS NOT NULL",
    )
    .bind(subscription)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(expired, fee)| Completed {
        credits_expired: expired.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        unused_fee_credited: fee.and_then(Money::from_decimal_exact),
    }))
}

/// The customer is on prepaid credits of `plan` from now on (the credit-model row; one
/// per customer, restarted by every switch).
pub async fn enter_credit_model(
    conn: &mut PgConnection,
    customer: &str,
    plan: &str,
) -> Result<(), sqlx::Error> {
    crate::credit_model::enter(conn, customer, plan, crate::credit_model::Entry::Restart).await
}
