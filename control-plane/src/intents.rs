//! One purchase, one intent (ARCHITECTURE.md invariant 11).
//!
//! Every billing API call that makes Stripe create something a customer pays for (a
//! Checkout Session, a direct subscription) runs under a *purchase intent*, and the
//! Stripe idempotency key is the intent's, never one derived from the request's fields:
//!
//! - With an `Idempotency-Key` header (Stripe's own convention, sent by the frontend),
//!   the intent is that key: a retry with it replays the same purchase; the same key with
//!   other fields is refused (422 `idempotency_key_reused`), as Stripe refuses it.
//! - Without one, a request identical to an open intent of the last
//!   [`RETRY_WINDOW`] replays it (a double click, a network retry); anything later, or
//!   after the intent ended, is a new purchase with a new key.
//!
//! An intent ends when its purchase completed (the webhook says so, or Stripe answers a
//! replay with a completed or expired session), or failed (a declined card): a new
//! request is then a new purchase, so a completed Checkout Session is never handed out
//! again and a re-subscription or a retry after fixing the card is never replayed.

use billing_model::CustomerId;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// How long a request without an `Idempotency-Key` counts as a retry of an identical one.
pub const RETRY_WINDOW_SECONDS: i64 = 600;

/// The longest `Idempotency-Key` accepted (Stripe's limit).
pub const MAX_CLIENT_KEY_LEN: usize = 255;

/// The billing API operations that purchase through Stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Checkout,
    Subscribe,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Checkout => "checkout",
            Operation::Subscribe => "subscribe",
        }
    }
}

/// How an intent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Expired,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Expired => "expired",
        }
    }
}

/// A purchase intent in progress.
#[derive(Debug, Clone)]
pub struct Intent {
    pub id: uuid::Uuid,
    /// The key every Stripe call of this intent carries.
    pub stripe_key: String,
    /// What Stripe created for it so far.
    pub object_id: Option<String>,
    /// An earlier request of this intent exists: Stripe will replay it.
    pub replay: bool,
    /// The intent is named by the caller's `Idempotency-Key`.
    pub client_named: bool,
    /// The intent ended already (only for caller-named intents).
    pub outcome: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    #[error("this Idempotency-Key was used for a different request")]
    KeyReused,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The fingerprint of the fields that define a purchase.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

fn derived_key(customer: &CustomerId, operation: Operation, client_key: &str) -> String {
    format!(
        "tollgate-intent-{}",
        fingerprint(&[customer.as_str(), operation.as_str(), client_key])
    )
}

type Row = (uuid::Uuid, String, Option<String>, String, Option<String>);

/// The intent a request belongs to: an existing one it retries, or a new one.
pub async fn open(
    pool: &PgPool,
    customer: &CustomerId,
    operation: Operation,
    request_fingerprint: &str,
    client_key: Option<&str>,
) -> Result<Intent, IntentError> {
    match client_key {
        Some(key) => {
            let stripe_key = derived_key(customer, operation, key);
            let inserted: Option<uuid::Uuid> = sqlx::query_scalar(
                "INSERT INTO purchase_intents (customer_id, operation, client_key, fingerprint,
                     stripe_idempotency_key)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (customer_id, operation, client_key) DO NOTHING
                 RETURNING id",
            )
            .bind(customer.as_str())
            .bind(operation.as_str())
            .bind(key)
            .bind(request_fingerprint)
            .bind(&stripe_key)
            .fetch_optional(pool)
            .await?;
            if let Some(id) = inserted {
                return Ok(Intent {
                    id,
                    stripe_key,
                    object_id: None,
                    replay: false,
                    client_named: true,
                    outcome: None,
                });
            }
            let (id, stripe_key, object_id, fingerprint, outcome): Row = sqlx::query_as(
                "SELECT id, stripe_idempotency_key, stripe_object_id, fingerprint, outcome
                 FROM purchase_intents
                 WHERE customer_id = $1 AND operation = $2 AND client_key = $3",
            )
            .bind(customer.as_str())
            .bind(operation.as_str())
            .bind(key)
            .fetch_one(pool)
            .await?;
            if fingerprint != request_fingerprint {
                return Err(IntentError::KeyReused);
            }
            Ok(Intent {
                id,
                stripe_key,
                object_id,
                replay: true,
                client_named: true,
                outcome,
            })
        }
        None => {
            // Two identical requests at once (a double click) must share one intent:
            // the lookup and the insert run under a lock on the request's fingerprint.
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!(
                    "tollgate:intent:{customer}:{}:{request_fingerprint}",
                    operation.as_str()
                ))
                .execute(&mut *tx)
                .await?;
            let open: Option<(uuid::Uuid, String, Option<String>)> = sqlx::query_as(
                "SELECT id, stripe_idempotency_key, stripe_object_id FROM purchase_intents
                 WHERE customer_id = $1 AND operation = $2 AND fingerprint = $3
                   AND client_key IS NULL AND finished_at IS NULL
                   AND created_at > now() - make_interval(secs => $4)
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(customer.as_str())
            .bind(operation.as_str())
            .bind(request_fingerprint)
            .bind(RETRY_WINDOW_SECONDS as f64)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((id, stripe_key, object_id)) = open {
                tx.commit().await?;
                return Ok(Intent {
                    id,
                    stripe_key,
                    object_id,
                    replay: true,
                    client_named: false,
                    outcome: None,
                });
            }
            let intent = insert_new(&mut *tx, customer, operation, request_fingerprint).await?;
            tx.commit().await?;
            Ok(intent)
        }
    }
}

/// A new intent (a new purchase), whatever came before.
pub async fn new(
    pool: &PgPool,
    customer: &CustomerId,
    operation: Operation,
    request_fingerprint: &str,
) -> Result<Intent, IntentError> {
    insert_new(pool, customer, operation, request_fingerprint).await
}

async fn insert_new<'e, E>(
    executor: E,
    customer: &CustomerId,
    operation: Operation,
    request_fingerprint: &str,
) -> Result<Intent, IntentError>
where
    E: sqlx::PgExecutor<'e>,
{
    let stripe_key = format!("tollgate-intent-{}", uuid::Uuid::new_v4().simple());
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO purchase_intents (customer_id, operation, fingerprint, stripe_idempotency_key)
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(customer.as_str())
    .bind(operation.as_str())
    .bind(request_fingerprint)
    .bind(&stripe_key)
    .fetch_one(executor)
    .await?;
    Ok(Intent {
        id,
        stripe_key,
        object_id: None,
        replay: false,
        client_named: false,
        outcome: None,
    })
}

/// Records what Stripe created for the intent.
pub async fn attach(pool: &PgPool, intent: &Intent, object_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE purchase_intents SET stripe_object_id = $2 WHERE id = $1")
        .bind(intent.id)
        .bind(object_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Ends the intent; a later identical request is a new purchase.
pub async fn finish(pool: &PgPool, intent: &Intent, outcome: Outcome) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE purchase_intents SET outcome = $2, finished_at = now()
         WHERE id = $1 AND finished_at IS NULL",
    )
    .bind(intent.id)
    .bind(outcome.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends the intent that created `object_id` (from a webhook: the session completed).
pub async fn finish_object<'e, E>(
    executor: E,
    object_id: &str,
    outcome: Outcome,
) -> Result<(), sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query(
        "UPDATE purchase_intents SET outcome = $2, finished_at = now()
         WHERE stripe_object_id = $1 AND finished_at IS NULL",
    )
    .bind(object_id)
    .bind(outcome.as_str())
    .execute(executor)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert_eq!(fingerprint(&["a", "b"]), fingerprint(&["a", "b"]));
        assert_eq!(fingerprint(&["a"]).len(), 64);
    }

    #[test]
    fn a_client_key_names_one_intent_per_customer_and_operation() {
        let alice = CustomerId::parse("alice").unwrap();
        let bob = CustomerId::parse("bob").unwrap();
        let k = derived_key(&alice, Operation::Checkout, "k1");
        assert_eq!(k, derived_key(&alice, Operation::Checkout, "k1"));
        assert_ne!(k, derived_key(&bob, Operation::Checkout, "k1"));
        assert_ne!(k, derived_key(&alice, Operation::Subscribe, "k1"));
        assert!(k.len() <= 255);
    }
}
