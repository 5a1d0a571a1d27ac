//! Publishes entitlement changes to every proxy over Redis pub/sub.

use super::{EntitlementError, Entitlements};
use billing_model::{CustomerId, EntitlementSnapshot};

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
    script: std::sync::Arc<redis::Script>,
}

impl Publisher {
    pub fn new(entitlements: Entitlements) -> Self {
        Self {
            entitlements,
            script: std::sync::Arc::new(redis::Script::new(PUBLISH)),
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
        let mut snapshot = self.entitlements.snapshot(customer).await?;
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
        snapshot.version = seq;
        tracing::info!(customer = %customer, version = seq, plan = %snapshot.plan, "entitlement published");
        Ok(snapshot)
    }
}
