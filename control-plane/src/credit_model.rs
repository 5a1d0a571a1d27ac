//! The credit-burndown row of a customer in `subscriptions` (one per customer: it has no
//! Stripe subscription) and the expiry of grants on a billing-model switch, written here
//! only, so entering and leaving the model mean one thing whichever path does it.

use sqlx::PgConnection;

/// How an existing credit-model row is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A billing-model switch: the row starts over (created now, a new 30-day period).
    Restart,
    /// A pack bought while on credits (or coming from Free): the plan is the pack's and
    /// the row is active, its period kept.
    Keep,
}

/// The customer is on prepaid credits of `plan` from now on; a new row starts a 30-day
/// period now.
pub async fn enter(
    conn: &mut PgConnection,
    customer: &str,
    plan: &str,
    entry: Entry,
) -> Result<(), sqlx::Error> {
    crate::customers::ensure(&mut *conn, customer).await?;
    let now = time::OffsetDateTime::now_utc();
    sqlx::query(
        "INSERT INTO subscriptions (customer_id, plan_type, billing_model, status,
             current_period_start, current_period_end)
         VALUES ($1, $2, 'credit_burndown', 'active', $3, $4)
         ON CONFLICT (customer_id) WHERE stripe_subscription_id IS NULL DO UPDATE
         SET plan_type = EXCLUDED.plan_type, status = 'active', updated_at = now(),
             created_at = CASE WHEN $5 THEN now() ELSE subscriptions.created_at END,
             current_period_start = CASE WHEN $5 THEN EXCLUDED.current_period_start
                                         ELSE subscriptions.current_period_start END,
             current_period_end = CASE WHEN $5 THEN EXCLUDED.current_period_end
                                       ELSE subscriptions.current_period_end END",
    )
    .bind(customer)
    .bind(plan)
    .bind(now)
    .bind(now + time::Duration::days(30))
    .bind(entry == Entry::Restart)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Unused credits expire when the customer switches billing model: closes the
/// customer's open grants with the reason `billing_model_switch` — all of them, or, for
/// a move to the fixed fee of `subscription`, those bought before it began (a grant
/// bought after, following a switch back to credits, is not its business). Returns how
/// many closed.
pub async fn expire_grants(
    conn: &mut PgConnection,
    customer: &str,
    bought_before: Option<&str>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE billing_credits SET closed_at = now(), closed_reason = 'billing_model_switch',
             updated_at = now()
         WHERE customer_id = $1 AND closed_at IS NULL
           AND ($2::text IS NULL OR created_at <
                (SELECT created_at FROM subscriptions WHERE stripe_subscription_id = $2))",
    )
    .bind(customer)
    .bind(bought_before)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}
