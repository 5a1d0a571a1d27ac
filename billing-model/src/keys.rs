//! Redis key names for counters, reservations and the entitlement channel.
//!
//! Every key of a customer carries the customer id as a Redis Cluster hash tag
//! (`{cust-1}`), so all of a customer's keys live in one slot and a Lua script may
//! touch them together. The prefix therefore must not contain braces itself.

use time::OffsetDateTime;

use crate::customer::CustomerId;
use crate::entitlement::CounterScope;

/// One of a customer's counters: the period usage counter or the credit counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Units used in the billing period starting at `start`.
    Period {
        /// Start of the period; each period gets a fresh key.
        start: OffsetDateTime,
    },
    /// Prepaid credit units consumed; one key for the customer's whole life.
    Credits,
}

impl Counter {
    /// The counter an enforcement scope refers to, for the period starting at
    /// `period_start` (ignored for credits).
    pub fn for_scope(scope: CounterScope, period_start: OffsetDateTime) -> Counter {
        match scope {
            CounterScope::Period => Counter::Period {
                start: period_start,
            },
            CounterScope::Credits => Counter::Credits,
        }
    }
}

/// A key prefix that would break the hash tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis key prefix {0:?} must not contain '{{', '}}' or whitespace")]
pub struct InvalidKeyPrefix(pub String);

/// Builds Redis key names under a common prefix (e.g. `tg:prod:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    /// Keys under `prefix`, which is used verbatim (include a trailing separator).
    pub fn new(prefix: &str) -> Result<RedisKeys, InvalidKeyPrefix> {
        if prefix.contains(['{', '}']) || prefix.contains(char::is_whitespace) {
            return Err(InvalidKeyPrefix(prefix.to_owned()));
        }
        Ok(RedisKeys {
            prefix: prefix.to_owned(),
        })
    }

    /// The counter of units used by `customer` in the period starting at
    /// `period_start`: `{prefix}{customer}:used:{unix seconds}`.
    pub fn usage_counter(&self, customer: &CustomerId, period_start: OffsetDateTime) -> String {
        self.counter(
            customer,
            Counter::Period {
                start: period_start,
            },
        )
    }

    /// The counter of credit units consumed by `customer`:
    /// `{prefix}{customer}:credits_used`.
    pub fn credits_used(&self, customer: &CustomerId) -> String {
        self.counter(customer, Counter::Credits)
    }

    /// The key of `counter` for `customer`.
    pub fn counter(&self, customer: &CustomerId, counter: Counter) -> String {
        format!(
            "{}{}",
            self.customer_part(customer),
            counter_suffix(counter)
        )
    }

    /// The sorted set of in-flight reservations against `counter` (member: reservation
    /// id, score: expiry), so crashed proxies' reservations lapse:
    /// `{prefix}{customer}:inflight:<counter>`.
    pub fn inflight(&self, customer: &CustomerId, counter: Counter) -> String {
        format!(
            "{}inflight:{}",
            self.customer_part(customer),
            counter_suffix(counter)
        )
    }

    /// The sorted set of reservations recently committed against `counter` (member:
    /// reservation id, score: commit time), so a retried commit counts once:
    /// `{prefix}{customer}:committed:<counter>`.
    pub fn committed(&self, customer: &CustomerId, counter: Counter) -> String {
        format!(
            "{}committed:{}",
            self.customer_part(customer),
            counter_suffix(counter)
        )
    }

    /// The sorted set of proxies holding a lease on `counter` (member: proxy id, score:
    /// expiry), so a lease shrinks as more proxies share the customer:
    /// `{prefix}{customer}:holders:<counter>`.
    pub fn holders(&self, customer: &CustomerId, counter: Counter) -> String {
        format!(
            "{}holders:{}",
            self.customer_part(customer),
            counter_suffix(counter)
        )
    }

    /// The pub/sub channel entitlement updates are published on.
    pub fn entitlement_channel(&self) -> String {
        format!("{}entitlements", self.prefix)
    }

    /// The global sequence of entitlement updates. The publisher increments it and
    /// publishes in one Lua script, so sequence order is publish order across every
    /// control-plane replica, and a proxy that sees a gap knows it missed an update.
    pub fn entitlement_seq(&self) -> String {
        format!("{}entitlements:seq", self.prefix)
    }

    fn customer_part(&self, customer: &CustomerId) -> String {
        format!("{}{{{customer}}}:", self.prefix)
    }
}

fn counter_suffix(counter: Counter) -> String {
    match counter {
        Counter::Period { start } => format!("used:{}", start.unix_timestamp()),
        Counter::Credits => "credits_used".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn keys() -> RedisKeys {
        RedisKeys::new("tg:").unwrap()
    }

    fn customer(id: &str) -> CustomerId {
        CustomerId::parse(id).unwrap()
    }

    /// The part Redis Cluster hashes: between the first `{` and the next `}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + 1 + key[open + 1..].find('}').unwrap();
        &key[open + 1..close]
    }

    fn all_keys(customer: &CustomerId) -> Vec<String> {
        let keys = keys();
        let start = datetime!(2023-11-14 22:13:20 UTC);
        vec![
            keys.usage_counter(customer, start),
            keys.credits_used(customer),
            keys.inflight(customer, Counter::Period { start }),
            keys.inflight(customer, Counter::Credits),
            keys.committed(customer, Counter::Period { start }),
            keys.committed(customer, Counter::Credits),
            keys.holders(customer, Counter::Period { start }),
            keys.holders(customer, Counter::Credits),
        ]
    }

    #[test]
    fn keys_have_the_documented_shape() {
        let keys = keys();
        let cust = customer("cust-1");
        let start = datetime!(2023-11-14 22:13:20 UTC);
        assert_eq!(
            keys.usage_counter(&cust, start),
            "tg:{cust-1}:used:1700000000"
        );
        assert_eq!(keys.credits_used(&cust), "tg:{cust-1}:credits_used");
        assert_eq!(
            keys.inflight(&cust, Counter::Period { start }),
            "tg:{cust-1}:inflight:used:1700000000"
        );
        assert_eq!(
            keys.inflight(&cust, Counter::Credits),
            "tg:{cust-1}:inflight:credits_used"
        );
        assert_eq!(
            keys.holders(&cust, Counter::Credits),
            "tg:{cust-1}:holders:credits_used"
        );
        assert_eq!(keys.entitlement_channel(), "tg:entitlements");
    }

    #[test]
    fn every_key_of_a_customer_hashes_on_exactly_the_customer_id() {
        for id in ["cust-1", "alice@example.com", "t:7:u.9", "x"] {
            for key in all_keys(&customer(id)) {
                assert_eq!(hash_tag(&key), id, "{key}");
            }
        }
    }

    #[test]
    fn keys_of_different_periods_differ() {
        let keys = keys();
        let cust = customer("cust-1");
        let january = datetime!(2024-01-31 00:00:00 UTC);
        let february = datetime!(2024-02-29 00:00:00 UTC);
        assert_ne!(
            keys.usage_counter(&cust, january),
            keys.usage_counter(&cust, february)
        );
        assert_ne!(
            keys.inflight(&cust, Counter::Period { start: january }),
            keys.inflight(&cust, Counter::Period { start: february })
        );
    }

    #[test]
    fn keys_of_different_customers_differ() {
        let a = all_keys(&customer("a"));
        let b = all_keys(&customer("b"));
        assert!(a.iter().all(|key| !b.contains(key)));
    }

    #[test]
    fn counter_for_scope_follows_the_enforcement_scope() {
        let start = datetime!(2024-01-31 00:00:00 UTC);
        assert_eq!(
            Counter::for_scope(CounterScope::Period, start),
            Counter::Period { start }
        );
        assert_eq!(
            Counter::for_scope(CounterScope::Credits, start),
            Counter::Credits
        );
    }

    #[test]
    fn prefix_with_braces_or_whitespace_is_rejected() {
        for prefix in ["tg{x}:", "{", "}", "tg :"] {
            assert!(RedisKeys::new(prefix).is_err(), "{prefix:?}");
        }
        assert!(RedisKeys::new("").is_ok());
    }
}
