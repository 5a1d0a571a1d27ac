//! Exact shared counters in Redis. A hard limit is enforced by reserving a unit before
//! the request goes upstream (one round trip, one Lua script that counts committed and
//! in-flight units together), then committing it on success or releasing it otherwise.
//! In-flight reservations expire, so a crashed proxy gives its units back.
//!
//! Both the proxy (ticket traffic) and the control plane (usage reported by the ticket
//! backend) speak this protocol, so it lives here, behind the `counters` feature (the
//! only part of this crate that does I/O).
//!
//! A counter is never allowed to fall behind the ledger: every call carries the ledger's
//! figure (`seed`, from the entitlement snapshot) and the scripts raise a missing or
//! lower counter to it. The ledger only holds units that were committed here first, so
//! raising to it never over-counts; it only repairs a counter Redis lost.

use crate::{Counter, CustomerId, RedisKeys};
use redis::aio::ConnectionManager;
use std::time::Duration;
use time::OffsetDateTime;

/// KEYS: used counter, in-flight set. ARGV: limit, seed, reservation id, reservation
/// ttl (ms), counter ttl (s, 0 = none), units. A reservation of n units is n members
/// `<id>#<i>`, so in-flight units are the set's cardinality.
/// Returns {admitted (0/1), committed, in-flight including this one, seeded (0/1)}.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local used = tonumber(redis.call('GET', KEYS[1]))
local seeded = 0
local seed = tonumber(ARGV[2])
if used == nil or used < seed then
  -- The key is gone (new period, or Redis lost it) or behind the ledger: start from
  -- what the ledger knows, never from less.
  used = seed
  seeded = 1
  if tonumber(ARGV[5]) > 0 then
    redis.call('SET', KEYS[1], used, 'EX', ARGV[5])
  else
    redis.call('SET', KEYS[1], used)
  end
end
local inflight = redis.call('ZCARD', KEYS[2])
local units = tonumber(ARGV[6])
if used + inflight + units > tonumber(ARGV[1]) then
  return {0, used, inflight, seeded}
end
for i = 1, units do
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3] .. '#' .. i)
end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) * 2)
return {1, used, inflight + units, seeded}
"#;

/// KEYS: used counter, in-flight set. ARGV: reservation id ('' for none), units, seed,
/// counter ttl (s, 0 = none). Returns the committed count.
const COMMIT: &str = r#"
if ARGV[1] ~= '' then
  for i = 1, tonumber(ARGV[2]) do
    redis.call('ZREM', KEYS[2], ARGV[1] .. '#' .. i)
  end
end
local current = tonumber(redis.call('GET', KEYS[1]))
if current == nil or current < tonumber(ARGV[3]) then
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
  else
    redis.call('SET', KEYS[1], ARGV[3])
  end
end
return redis.call('INCRBY', KEYS[1], ARGV[2])
"#;

/// Extra lifetime of a period counter past its period end, so late reconciliation and
/// history still find it.
const PERIOD_COUNTER_GRACE: i64 = 35 * 24 * 3600;

/// Which counter, for whom, and what the ledger last said it held.
#[derive(Debug, Clone)]
pub struct CounterRef {
    pub used_key: String,
    pub inflight_key: String,
    /// Seed for a missing key.
    pub seed: u64,
    /// Key lifetime in seconds (0: forever).
    pub ttl_seconds: u64,
}

impl CounterRef {
    pub fn new(
        keys: &RedisKeys,
        customer: &CustomerId,
        counter: Counter,
        seed: u64,
        period_end: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Self {
        let ttl_seconds = match counter {
            Counter::Period { .. } => {
                ((period_end - now).whole_seconds() + PERIOD_COUNTER_GRACE).max(1) as u64
            }
            Counter::Credits => 0,
        };
        Self {
            used_key: keys.counter(customer, counter),
            inflight_key: keys.inflight(customer, counter),
            seed,
            ttl_seconds,
        }
    }
}

/// The outcome of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub admitted: bool,
    /// Units committed so far in this counter.
    pub committed: u64,
    /// Units in flight, including this request's when admitted.
    pub in_flight: u64,
    /// The counter was missing and was seeded from the snapshot.
    pub seeded: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within the budget")]
    Timeout,
}

#[derive(Clone)]
pub struct Counters {
    redis: ConnectionManager,
    reserve: std::sync::Arc<redis::Script>,
    commit: std::sync::Arc<redis::Script>,
    reservation_ttl: Duration,
}

impl Counters {
    pub fn new(redis: ConnectionManager, reservation_ttl: Duration) -> Self {
        Self {
            redis,
            reserve: std::sync::Arc::new(redis::Script::new(RESERVE)),
            commit: std::sync::Arc::new(redis::Script::new(COMMIT)),
            reservation_ttl,
        }
    }

    /// Reserves `units` under `limit` for `reservation_id`.
    pub async fn reserve(
        &self,
        counter: &CounterRef,
        limit: u64,
        reservation_id: &str,
        units: u32,
        budget: Duration,
    ) -> Result<Reservation, CounterError> {
        let mut conn = self.redis.clone();
        let mut invocation = self.reserve.key(&counter.used_key);
        invocation
            .key(&counter.inflight_key)
            .arg(limit)
            .arg(counter.seed)
            .arg(reservation_id)
            .arg(self.reservation_ttl.as_millis() as u64)
            .arg(counter.ttl_seconds)
            .arg(units);
        let (admitted, committed, in_flight, seeded): (u8, u64, u64, u8) =
            tokio::time::timeout(budget, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| CounterError::Timeout)??;
        Ok(Reservation {
            admitted: admitted == 1,
            committed,
            in_flight,
            seeded: seeded == 1,
        })
    }

    /// Turns a reservation (or, with `None`, nothing) into `units` committed units.
    pub async fn commit(
        &self,
        counter: &CounterRef,
        reservation_id: Option<&str>,
        units: u32,
    ) -> Result<u64, CounterError> {
        let mut conn = self.redis.clone();
        let mut invocation = self.commit.key(&counter.used_key);
        invocation
            .key(&counter.inflight_key)
            .arg(reservation_id.unwrap_or(""))
            .arg(units)
            .arg(counter.seed)
            .arg(counter.ttl_seconds);
        Ok(invocation.invoke_async(&mut conn).await?)
    }

    /// Gives a reservation of `units` back.
    pub async fn release(
        &self,
        counter: &CounterRef,
        reservation_id: &str,
        units: u32,
    ) -> Result<(), CounterError> {
        let mut conn = self.redis.clone();
        let members: Vec<String> = (1..=units)
            .map(|i| format!("{reservation_id}#{i}"))
            .collect();
        redis::cmd("ZREM")
            .arg(&counter.inflight_key)
            .arg(members)
            .query_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    /// The committed count, never less than the seed (a read-only check).
    pub async fn committed(
        &self,
        counter: &CounterRef,
        budget: Duration,
    ) -> Result<u64, CounterError> {
        let mut conn = self.redis.clone();
        let value: Option<u64> = tokio::time::timeout(
            budget,
            redis::cmd("GET")
                .arg(&counter.used_key)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| CounterError::Timeout)??;
        Ok(value.unwrap_or(0).max(counter.seed))
    }
}
