//! The `customers` table: one row per ticket-API user, created on first sight, and the
//! Stripe customer linked to it once (a later link never replaces the first). Every
//! statement on the table is here.

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

/// The Stripe customer linked to `customer`, if any.
pub async fn stripe_customer_of<'e>(
    db: impl PgExecutor<'e>,
    customer: &str,
) -> Result<Option<String>, sqlx::Error> {
    Ok(sqlx::query_scalar::<_, Option<String>>(
        "SELECT stripe_customer_id FROM customers WHERE customer_id = $1",
    )
    .bind(customer)
    .fetch_optional(db)
    .await?
    .flatten())
}

/// The customer whose Stripe customer is `stripe_customer`, if linked.
pub async fn by_stripe_customer<'e>(
    db: impl PgExecutor<'e>,
    stripe_customer: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT customer_id FROM customers WHERE stripe_customer_id = $1")
        .bind(stripe_customer)
        .fetch_optional(db)
        .await
}

/// Links `stripe_customer` unless the row already names one; returns the one it names
/// now (the first writer's, when two first checkouts raced). The row must exist.
pub async fn claim_stripe_customer<'e>(
    db: impl PgExecutor<'e>,
    customer: &str,
    stripe_customer: &str,
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE customers SET stripe_customer_id = COALESCE(stripe_customer_id, $2), updated_at = now()
         WHERE customer_id = $1 RETURNING stripe_customer_id",
    )
    .bind(customer)
    .bind(stripe_customer)
    .fetch_one(db)
    .await
}

/// Where the customer's Free periods are anchored (its first sight).
pub async fn free_period_anchor<'e>(
    db: impl PgExecutor<'e>,
    customer: &str,
) -> Result<time::OffsetDateTime, sqlx::Error> {
    sqlx::query_scalar("SELECT free_period_anchor FROM customers WHERE customer_id = $1")
        .bind(customer)
        .fetch_one(db)
        .await
}
