//! Exact shared counters in Redis. A hard limit is enforced by reserving a unit before
//! the request goes upstream (one Lua script that counts committed and in-flight units
//! together), then committing it on success or releasing it otherwise. The proxy
//! reserves in blocks ([`leases`]: one round trip per block, admitted from locally); the
//! control plane one reservation per recording. Both are members of the same in-flight
//! set, so every caller counts every other's.
//!
//! A reservation is a *hold*: it lives as long as its request, because the proxy that
//! made it renews it while the request runs; a crashed proxy stops renewing and its
//! holds expire after the reservation TTL, giving the units back.
//!
//! Both the proxy (ticket traffic) and the control plane (usage reported by the ticket
//! backend) speak this protocol, so it lives here.
//!
//! Two rules keep the counter exact:
//! - **A counter is never behind the ledger.** Every call carries the ledger's figure
//!   (`seed`, from the entitlement snapshot) and the scripts raise a missing or lower
//!   counter to it. That never over-counts because a unit reaches the ledger only after
//!   its commit here has landed (the proxy ships a usage event only once its commit is
//!   done; the control plane commits before it writes the ledger), so the ledger only
//!   holds units this counter already counted — unless Redis lost them.
//! - **A commit counts once.** A commit with a marker (the event id) leaves it for
//!   twice the reservation TTL, so a retry after a lost answer is a no-op; a commit
//!   whose hold expired still counts (the unit was delivered) and says so. The proxy's
//!   paid-overage commits carry no marker: at thousands per second per customer the
//!   markers would cost more memory than the figure is worth (it only feeds the
//!   remaining-allowance header; the ledger, not Redis, bills overage), so a commit
//!   retried after a lost answer may count that one unit twice there.
//!
//! Every caller must use the same reservation TTL (`proxy.reservation_ttl_seconds`, read
//! by both binaries from the same file): it sets how long markers are kept. Key expiries
//! are only ever extended, never shortened.

pub mod leases;

use billing_model::{Counter, CustomerId, RedisKeys};
use redis::aio::ConnectionManager;
use std::time::Duration;
use time::OffsetDateTime;

/// How long a hold lasts without renewal (a crashed proxy's units come back after
/// this), unless configured otherwise (`proxy.reservation_ttl_seconds`).
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(120);

/// KEYS: used counter, in-flight set, lease holders. ARGV: limit, seed, reservation id,
/// reservation ttl (ms), counter ttl (s, 0 = none), units needed, most units, holder
/// ('' for a one-off reservation of exactly the units needed), then members to give
/// back first (the caller's unused units of older leases on this counter).
///
/// A reservation of n units is n members `<id>#<i>`, so in-flight units are the set's
/// cardinality. A lease (a holder is named) grants what the limit leaves after committed
/// and in-flight units, divided by four times the number of holders (proxies that
/// leased here within the TTL), capped at `most` and never below what is needed: the
/// block shrinks as the limit nears and as more proxies share the counter.
/// Returns {units granted (0: refused), committed, in-flight including these, seeded}.
const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
-- In chunks: Lua's unpack takes a few thousand values at most.
for i = 9, #ARGV, 500 do
  redis.call('ZREM', KEYS[2], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
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
local needed = tonumber(ARGV[6])
local left = tonumber(ARGV[1]) - used - inflight
if left < needed then
  return {0, used, inflight, seeded}
end
local size = needed
if ARGV[8] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[8])
  if redis.call('PTTL', KEYS[3]) < ttl * 2 then
    redis.call('PEXPIRE', KEYS[3], ttl * 2)
  end
  size = math.floor(left / (4 * redis.call('ZCARD', KEYS[3])))
  if size > tonumber(ARGV[7]) then size = tonumber(ARGV[7]) end
  if size < needed then size = needed end
end
for i = 1, size do
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[3] .. '#' .. i)
end
-- Only ever extend: another caller's holds may need the set longer.
if redis.call('PTTL', KEYS[2]) < ttl * 2 then
  redis.call('PEXPIRE', KEYS[2], ttl * 2)
end
return {size, used, inflight + size, seeded}
"#;

/// KEYS: in-flight set. ARGV: reservation ttl (ms), then members. Pushes the expiry of
/// every member that still exists to now + ttl. Returns the 1-based positions (in ARGV
/// after the ttl) of members that are gone: holds that expired or that Redis lost.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
  else
    lost[#lost + 1] = i - 1
  end
end
if redis.call('PTTL', KEYS[1]) < ttl * 2 then
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
end
return lost
"#;

/// KEYS: used counter, in-flight set, committed markers. ARGV: marker id ('' for
/// none), units, seed, counter ttl (s), marker lifetime (ms), then the held members the
/// commit settles. Returns {committed count, a held member was gone (0/1), duplicate
/// (0/1)}.
const COMMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
if id ~= '' and redis.call('ZSCORE', KEYS[3], id) then
  return {tonumber(redis.call('GET', KEYS[1]) or '0'), 0, 1}
end
local lost = 0
-- In chunks: Lua's unpack takes a few thousand values at most.
for i = 6, #ARGV, 500 do
  local last = math.min(i + 499, #ARGV)
  if redis.call('ZREM', KEYS[2], unpack(ARGV, i, last)) < last - i + 1 then lost = 1 end
end
local current = tonumber(redis.call('GET', KEYS[1]))
if current == nil or current < tonumber(ARGV[3]) then
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
  else
    redis.call('SET', KEYS[1], ARGV[3])
  end
end
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
-- The marker last: a script that fails midway (its earlier writes stay) leaves none,
-- so its retry counts.
if id ~= '' then
  local window = tonumber(ARGV[5])
  redis.call('ZADD', KEYS[3], now, id)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  if redis.call('PTTL', KEYS[3]) < window then
    redis.call('PEXPIRE', KEYS[3], window)
  end
end
return {count, lost, 0}
"#;

/// KEYS: used counter, committed markers. ARGV: marker id, units. Takes back a commit
/// whose unit never became a ledger record (the control plane's ledger write failed).
const UNCOMMIT: &str = r#"
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local units = math.min(current, tonumber(ARGV[2]))
redis.call('DECRBY', KEYS[1], units)
return 1
"#;

/// Extra lifetime of a period counter past its period end, so late reconciliation and
/// history still find it.
pub const PERIOD_COUNTER_GRACE: i64 = 35 * 24 * 3600;

/// Which counter, for whom, and what the ledger last said it held.
#[derive(Debug, Clone)]
pub struct CounterRef {
    pub used_key: String,
    pub inflight_key: String,
    pub committed_key: String,
    pub holders_key: String,
    /// The ledger's figure: a missing or lower counter is raised to it.
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
            committed_key: keys.committed(customer, counter),
            holders_key: keys.holders(customer, counter),
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

/// The outcome of a lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Units granted, members `<lease id>#1..=units`; 0 when the limit leaves fewer than
    /// were needed.
    pub units: u32,
    /// Units committed so far in this counter.
    pub committed: u64,
    /// Units in flight, including the granted ones.
    pub in_flight: u64,
    /// The counter was missing and was seeded from the snapshot.
    pub seeded: bool,
}

/// What to ask of [`Counters::lease`].
#[derive(Debug, Clone, Copy)]
pub struct LeaseRequest<'a> {
    pub limit: u64,
    pub lease_id: &'a str,
    /// Units the request at hand needs: fewer left means a refusal.
    pub needed: u32,
    /// The most units to take.
    pub most: u32,
    /// The caller's holder id (its share shrinks as more holders lease here); `""` for
    /// a one-off reservation of exactly `needed`.
    pub holder: &'a str,
    /// The caller's unused members of older leases on this counter, given back in the
    /// same step.
    pub give_back: &'a [String],
}

/// The outcome of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Units committed in this counter after the commit.
    pub count: u64,
    /// The reservation had expired (or Redis lost it) before the commit: the unit was
    /// counted all the same, since it was delivered.
    pub hold_lost: bool,
    /// This reservation was committed before (a retry): nothing was counted again.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within the budget")]
    Timeout,
    #[error("a request of {0} units is more than a lease tracks (64)")]
    TooManyUnits(u32),
}

impl CounterError {
    /// The command certainly did not run: Redis refused the connection. (A timeout or
    /// a connection lost mid-call may have run it.)
    pub fn never_reached_redis(&self) -> bool {
        matches!(self, CounterError::Redis(e) if e.is_connection_refusal())
    }
}

#[derive(Clone)]
pub struct Counters {
    redis: ConnectionManager,
    scripts: std::sync::Arc<Scripts>,
    reservation_ttl: Duration,
}

struct Scripts {
    lease: redis::Script,
    renew: redis::Script,
    commit: redis::Script,
    uncommit: redis::Script,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The in-flight members of a reservation (or lease) of `units` units.
pub fn members(reservation_id: &str, units: u32) -> Vec<String> {
    (1..=units).map(|i| member(reservation_id, i)).collect()
}

/// The in-flight member of unit `slot` (1-based) of a reservation or lease.
pub fn member(reservation_id: &str, slot: u32) -> String {
    format!("{reservation_id}#{slot}")
}

impl Counters {
    pub fn new(redis: ConnectionManager, reservation_ttl: Duration) -> Self {
        Self {
            redis,
            scripts: std::sync::Arc::new(Scripts {
                lease: redis::Script::new(LEASE),
                renew: redis::Script::new(RENEW),
                commit: redis::Script::new(COMMIT),
                uncommit: redis::Script::new(UNCOMMIT),
            }),
            reservation_ttl,
        }
    }

    /// How long a hold lasts without renewal.
    pub fn reservation_ttl(&self) -> Duration {
        self.reservation_ttl
    }

    /// Reserves exactly `units` under `limit` for `reservation_id` (a one-off
    /// reservation; see [`Counters::lease`] for blocks).
    pub async fn reserve(
        &self,
        counter: &CounterRef,
        limit: u64,
        reservation_id: &str,
        units: u32,
        budget: Duration,
    ) -> Result<Reservation, CounterError> {
        let request = LeaseRequest {
            limit,
            lease_id: reservation_id,
            needed: units,
            most: units,
            holder: "",
            give_back: &[],
        };
        let grant = self.lease(counter, &request, budget).await?;
        Ok(Reservation {
            admitted: grant.units > 0,
            committed: grant.committed,
            in_flight: grant.in_flight,
            seeded: grant.seeded,
        })
    }

    /// Takes a block of units in one atomic step (see the `LEASE` script), first giving
    /// back `request.give_back`.
    ///
    /// When Redis does not answer within `budget` (or answers with an error after the
    /// command may have run, such as a response timeout), the script may still run:
    /// whatever it may have granted is released right behind it (same connection, so
    /// in order), so a failed call never leaves a phantom hold behind.
    pub async fn lease(
        &self,
        counter: &CounterRef,
        request: &LeaseRequest<'_>,
        budget: Duration,
    ) -> Result<Grant, CounterError> {
        let mut conn = self.redis.clone();
        let mut invocation = self.scripts.lease.key(&counter.used_key);
        invocation
            .key(&counter.inflight_key)
            .key(&counter.holders_key)
            .arg(request.limit)
            .arg(counter.seed)
            .arg(request.lease_id)
            .arg(ms(self.reservation_ttl))
            .arg(counter.ttl_seconds)
            .arg(request.needed)
            .arg(request.most.max(request.needed))
            .arg(request.holder);
        for member in request.give_back {
            invocation.arg(member);
        }
        let answer = tokio::time::timeout(
            budget,
            invocation.invoke_async::<(u32, u64, u64, u8)>(&mut conn),
        )
        .await;
        let (units, committed, in_flight, seeded) = match answer {
            Ok(Ok(result)) => result,
            failed => {
                let this = self.clone();
                let counter = counter.clone();
                // What it may have granted, and what it may not have given back (no
                // longer renewed by the caller, so safe to remove either way).
                let mut granted = members(request.lease_id, request.most.max(request.needed));
                granted.extend_from_slice(request.give_back);
                tokio::spawn(async move {
                    if let Err(e) = this.release_members(&counter, &granted).await {
                        tracing::warn!(error = %e, "releasing a timed-out reservation failed; it will expire");
                    }
                });
                return Err(match failed {
                    Ok(Err(e)) => CounterError::Redis(e),
                    _ => CounterError::Timeout,
                });
            }
        };
        Ok(Grant {
            units,
            committed,
            in_flight,
            seeded: seeded == 1,
        })
    }

    /// Pushes the expiry of `held` members, all on `counter`, to now + the reservation
    /// TTL. Returns the indexes (into `held`) of members that were gone (expired or
    /// lost).
    pub async fn renew(
        &self,
        counter: &CounterRef,
        held: &[String],
    ) -> Result<Vec<usize>, CounterError> {
        let mut invocation = self.scripts.renew.key(&counter.inflight_key);
        invocation.arg(ms(self.reservation_ttl));
        for member in held {
            invocation.arg(member);
        }
        let mut conn = self.redis.clone();
        let gone: Vec<usize> = invocation.invoke_async(&mut conn).await?;
        Ok(gone
            .into_iter()
            .filter_map(|position| position.checked_sub(1))
            .filter(|&i| i < held.len())
            .collect())
    }

    /// Counts `units` delivered units. `reservation_id` (with `reserved` units held
    /// under it) makes the commit idempotent: a retry of the same id counts nothing.
    /// Without an id (`""`) the commit simply adds.
    pub async fn commit(
        &self,
        counter: &CounterRef,
        reservation_id: &str,
        reserved: u32,
        units: u32,
    ) -> Result<Committed, CounterError> {
        self.commit_members(
            counter,
            reservation_id,
            &members(reservation_id, reserved),
            units,
        )
        .await
    }

    /// Counts `units` delivered units, settling the `held` members (a lease's slots, or
    /// a reservation's). `marker` (`""` for none) makes the commit idempotent: a retry
    /// with the same marker counts nothing.
    pub async fn commit_members(
        &self,
        counter: &CounterRef,
        marker: &str,
        held: &[String],
        units: u32,
    ) -> Result<Committed, CounterError> {
        let mut conn = self.redis.clone();
        let mut invocation = self.scripts.commit.key(&counter.used_key);
        invocation
            .key(&counter.inflight_key)
            .key(&counter.committed_key)
            .arg(marker)
            .arg(units)
            .arg(counter.seed)
            .arg(counter.ttl_seconds)
            .arg(ms(self.reservation_ttl * 2));
        for member in held {
            invocation.arg(member);
        }
        let (count, lost, duplicate): (u64, u8, u8) = invocation.invoke_async(&mut conn).await?;
        Ok(Committed {
            count,
            hold_lost: lost == 1,
            duplicate: duplicate == 1,
        })
    }

    /// Takes back the commit of `reservation_id` (`units` units), if it is still
    /// remembered; for a unit that was counted but could not be recorded.
    pub async fn uncommit(
        &self,
        counter: &CounterRef,
        reservation_id: &str,
        units: u32,
    ) -> Result<bool, CounterError> {
        let mut conn = self.redis.clone();
        let mut invocation = self.scripts.uncommit.key(&counter.used_key);
        invocation
            .key(&counter.committed_key)
            .arg(reservation_id)
            .arg(units);
        let taken: u8 = invocation.invoke_async(&mut conn).await?;
        Ok(taken == 1)
    }

    /// Gives a reservation of `units` back.
    pub async fn release(
        &self,
        counter: &CounterRef,
        reservation_id: &str,
        units: u32,
    ) -> Result<(), CounterError> {
        self.release_members(counter, &members(reservation_id, units))
            .await
    }

    /// Gives `held` members back.
    pub async fn release_members(
        &self,
        counter: &CounterRef,
        held: &[String],
    ) -> Result<(), CounterError> {
        if held.is_empty() {
            return Ok(());
        }
        let mut conn = self.redis.clone();
        redis::cmd("ZREM")
            .arg(&counter.inflight_key)
            .arg(held)
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
