//! Entering the credit-burndown model (the customer's one credit-model row in
//! `subscriptions`, stored by [`crate::subscription_store`]) and the expiry of grants on a
//! billing-model switch, decided here only, so entering and leaving the model mean one
//! thing whichever path does it.

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
    crate::subscription_store::upsert_credit_row(
        conn,
        customer,
        plan,
        entry == Entry::Restart,
        (now, now + time::Duration::days(30)),
    )
    .await
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
    let before = match bought_before {
        // A subscription not stored yet began after nothing.
        Some(subscription) => {
            match crate::subscription_store::created_at(conn, subscription).await? {
                Some(t) => Some(t),
                None => return Ok(0),
            }
        }
        None => None,
    };
    Ok(sqlx::query(
        "UPDATE billing_credits SET closed_at = now(), closed_reason = 'billing_model_switch',
             updated_at = now()
         WHERE customer_id = $1 AND closed_at IS NULL
           AND ($2::timestamptz IS NULL OR created_at < $2)",
    )
    .bind(customer)
    .bind(before)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}
