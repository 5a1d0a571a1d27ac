//! Publishes entitlement changes to every proxy over Redis pub/sub.
//!
//! A customer's publishes are serialized across every control-plane replica by a
//! PostgreSQL advisory lock held from computing the snapshot until it is on the
//! channel: a publish that computed later always gets the higher sequence number, so a
//! snapshot read before a change can never be published after the snapshot that
//! includes it (proxies keep the highest version).
//!
//! Within a replica, a customer's publishes also queue on an in-process lock before
//! they take a database connection, so a burst for one customer holds one pooled
//! connection, not one per waiting publish.

use super::{EntitlementError, Entitlements};
use billing_model::{CustomerId, EntitlementSnapshot};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// One async lock per key, created on demand and dropped when nobody holds it.
#[derive(Default)]
struct KeyedLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = locks.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key.to_owned(), Arc::downgrade(&lock));
        if locks.len() > 4096 {
            locks.retain(|_, weak| weak.strong_count() > 0);
        }
        lock
    }
}

/// Increments the global sequence and publishes in one step, so the order of
/// sequence numbers is the order of messages on the channel, across all replicas.
const PUBLISH: &str = r#"
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], '{"seq":' .. seq .. ',"snapshot":' .. ARGV[2] .. '}')
return seq
"#;

#[derive(Clone)]
pub struct Publisher {
    entitlements: Entitlements,
    script: Arc<redis::Script>,
    local: Arc<KeyedLocks>,
}

impl Publisher {
    pub fn new(entitlements: Entitlements) -> Self {
        Self {
            entitlements,
            script: Arc::new(redis::Script::new(PUBLISH)),
            local: Arc::default(),
        }
    }

    pub fn entitlements(&self) -> &Entitlements {
        &self.entitlements
    }

    /// Recomputes the customer's snapshot and publishes it; returns it with the
    /// version (sequence) it was published under.
    pub async fn publish(
        &self,
        customer: &CustomerId,
    ) -> Result<EntitlementSnapshot, EntitlementError> {
        self.publish_after(customer, std::future::ready(())).await
    }

    /// [`Publisher::publish`], waiting for `between` after the snapshot is computed and
    /// before it is sent (tests use it to stand in for a slow publisher).
    #[doc(hidden)]
    pub async fn publish_after(
        &self,
        customer: &CustomerId,
        between: impl Future<Output = ()>,
    ) -> Result<EntitlementSnapshot, EntitlementError> {
        let local = self.local.lock_for(customer.as_str());
        let _queued = local.lock().await;
        // A new customer's row is written before the lock, outside the transaction, so
        // a concurrent fill never waits on (or misses) a row only this transaction sees.
        self.entitlements.ensure_customer(customer).await?;
        let mut tx = self.entitlements.pool.begin().await?;
        // Never wait forever on another replica's publish.
        sqlx::query("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("tollgate:entitlement:{customer}"))
            .execute(&mut *tx)
            .await?;
        let mut snapshot = self.entitlements.snapshot_on(&mut tx, customer).await?;
        between.await;
        let keys = self.entitlements.keys();
        let payload = serde_json::to_string(&snapshot)
            .map_err(|e| EntitlementError::Inconsistent(e.to_string()))?;
        let mut redis = self.entitlements.redis.clone();
        let seq: u64 = self
            .script
            .key(keys.entitlement_seq())
            .arg(keys.entitlement_channel())
            .arg(payload)
            .invoke_async(&mut redis)
            .await?;
        tx.commit().await?;
        snapshot.version = seq;
        tracing::info!(customer = %customer, version = seq, plan = %snapshot.plan, "entitlement published");
        Ok(snapshot)
    }
}
