//! The schema's own guarantees, proven against a real PostgreSQL.

use crate::helpers::migrated_database;
use rust_decimal::Decimal;
use std::str::FromStr;

async fn customer(pool: &sqlx::PgPool, id: &str) {
    sqlx::query("INSERT INTO customers (customer_id) VALUES ($1)")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

async fn grant(pool: &sqlx::PgPool, customer_id: &str, amount: &str) -> uuid::Uuid {
    sqlx::query_scalar(
        "INSERT INTO billing_credits (customer_id, credit_amount, unit_price)
         VALUES ($1, $2, 1.99) RETURNING id",
    )
    .bind(customer_id)
    .bind(Decimal::from_str(amount).unwrap())
    .fetch_one(pool)
    .await
    .unwrap()
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

#[tokio::test]
async fn remaining_amount_is_generated_from_credit_minus_used() {
    let (_db, pool) = migrated_database().await;
    customer(&pool, "alice").await;
    let id = grant(&pool, "alice", "199.00").await;
    sqlx::query("UPDATE billing_credits SET used_amount = used_amount + 1.99 WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let remaining: Decimal =
        sqlx::query_scalar("SELECT remaining_amount FROM billing_credits WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(remaining, dec("197.01"));
}

#[tokio::test]
async fn remaining_amount_cannot_be_written_directly() {
    let (_db, pool) = migrated_database().await;
    customer(&pool, "alice").await;
    let id = grant(&pool, "alice", "10.00").await;
    let err = sqlx::query("UPDATE billing_credits SET remaining_amount = 1000 WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("can only be updated to DEFAULT"),
        "{err}"
    );
}

#[tokio::test]
async fn using_more_credit_than_granted_is_rejected_and_changes_nothing() {
    let (_db, pool) = migrated_database().await;
    customer(&pool, "alice").await;
    let id = grant(&pool, "alice", "3.98").await;
    let err = sqlx::query("UPDATE billing_credits SET used_amount = 3.99 WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap_err();
    let db_err = err.as_database_error().expect("a database error");
    assert_eq!(
        db_err.constraint(),
        Some("billing_credits_remaining_never_negative")
    );
    let used: Decimal = sqlx::query_scalar("SELECT used_amount FROM billing_credits WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(used, Decimal::ZERO);
}

#[tokio::test]
async fn a_usage_event_id_is_stored_once() {
    let (_db, pool) = migrated_database().await;
    let event = uuid::Uuid::now_v7();
    let insert = "INSERT INTO usage_records
        (event_id, customer_id, usage_type, quantity, billing_period_start, billing_period_end, occurred_at)
        VALUES ($1, 'alice', 'ticket_creation', 1, now(), now() + interval '1 month', now())
        ON CONFLICT (event_id) DO NOTHING";
    for _ in 0..3 {
        sqlx::query(insert)
            .bind(event)
            .execute(&pool)
            .await
            .unwrap();
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_customer_id_that_could_break_a_redis_hash_tag_is_rejected() {
    let (_db, pool) = migrated_database().await;
    let err = sqlx::query("INSERT INTO customers (customer_id) VALUES ('a}b')")
        .execute(&pool)
        .await;
    assert!(err.is_err());
}

#[tokio::test]
async fn a_closed_grant_must_say_why() {
    let (_db, pool) = migrated_database().await;
    customer(&pool, "alice").await;
    let id = grant(&pool, "alice", "10.00").await;
    let without_reason = sqlx::query("UPDATE billing_credits SET closed_at = now() WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await;
    assert!(without_reason.is_err());
    sqlx::query(
        "UPDATE billing_credits SET closed_at = now(), closed_reason = 'billing_model_switch' WHERE id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let (_db, pool) = migrated_database().await;
    tollgate_control_plane::db::migrate(&pool).await.unwrap();
}
