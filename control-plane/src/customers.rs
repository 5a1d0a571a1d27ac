//! The `customers` table: one row per ticket-API user, created on first sight, and the
//! Stripe customer linked to it once (a later link never replaces the first).

use sqlx::PgExecutor;

/// The customer's row exists (a no-op when it does).
pub async fn ensure<'e>(db: impl PgExecutor<'e>, customer: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO customers (customer_id) VALUES ($1) ON CONFLICT (customer_id) DO NOTHING",
    )
    .bind(customer)
    .execute(db)
    .await?;
    Ok(())
}

/// The customer's row exists and, if it names no Stripe customer yet, names
/// `stripe_customer`.
pub async fn link_stripe<'e>(
    db: impl PgExecutor<'e>,
    customer: &str,
    stripe_customer: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO customers (customer_id, stripe_customer_id) VALUES ($1, $2)
         ON CONFLICT (customer_id) DO UPDATE
         SET stripe_customer_id = COALESCE(customers.stripe_customer_id, EXCLUDED.stripe_customer_id)",
    )
    .bind(customer)
    .bind(stripe_customer)
    .execute(db)
    .await?;
    Ok(())
}
