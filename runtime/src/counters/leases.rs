//! Leases: a proxy reserves a block of units on one counter in one atomic Redis step
//! and admits from it locally, so a hard limit costs one round trip per block instead
//! of one per request.
//!
//! **Exactness.** Every unit a proxy admits from is a member `<lease id>#<slot>` of the
//! counter's in-flight set, counted against the limit by every caller exactly like a
//! one-off reservation, until its commit moves it into the count or its return removes
//! it. A lease only changes *which request* may use a reserved unit, never how many are
//! reserved, so over-admission stays impossible whatever the number of proxies.
//!
//! **Lifetime.** Members expire after the reservation TTL unless renewed. The registry
//! renews the outstanding members of every live lease every third of the TTL, so a
//! request that runs longer than the TTL keeps its unit, and a crashed proxy's units
//! come back after the TTL. A free slot is handed out only while its lease was confirmed
//! (created or renewed) within half the TTL: a unit that may have expired is never
//! handed to a request.
//!
//! **Giving back.** Free slots go back to Redis when the lease has been idle for
//! `idle`, when it is older than `max_age`, when the request at hand needs more than
//! this proxy's leases have (given back in the same step that leases anew), at shutdown,
//! and when a renewal or a commit finds the lease gone from Redis (then they are
//! closed and what Redis still holds of them is given back). A request that fails hands
//! its slot back to its lease, without a round trip (or to Redis, if the lease closed
//! meanwhile). Leasing anew closes the counter's older leases, so a lease never admits
//! under a limit lower than the one it was granted under.
//!
//! **Refusals count what this proxy is committing.** A success's commit is on its way
//! (batched, see the proxy's committer) while its unit is still in flight in Redis: a
//! refusal answered then would say fewer units are used than the client has had, and
//! tell it to retry soon. So a refused lease step first waits (at most its budget) for
//! this proxy's settling units of the counter to land, then asks once more.
//!
//! **Bursts.** One lease step per counter at a time: requests arriving meanwhile wait
//! for it and take from what it brings; a step refused while they waited answers them
//! too, so a burst at the limit is refused at once instead of queuing round trips.
//!
//! **Size.** The lease script grants what the limit leaves divided by four times the
//! number of proxies that leased on the counter within the TTL, capped at `max_units`,
//! never less than the request needs: blocks shrink as the limit nears and as more
//! proxies share the customer, down to single units, so the units other proxies hold
//! unused — the only cause of a refusal while units are left — are at most a quarter of
//! what was left when they leased, and come back within `idle` once unused.

use super::{CounterError, CounterRef, Counters, LeaseRequest, member};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Slots are bits of a `u64`.
pub const MAX_LEASE_UNITS: u32 = 64;

/// How a proxy leases.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// The most units one lease takes (1 disables leasing: one reservation per request).
    pub max_units: u32,
    /// Free slots of a lease unused for this long go back.
    pub idle: Duration,
    /// A lease older than this hands out nothing more; its free slots go back.
    pub max_age: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            max_units: 32,
            idle: Duration::from_millis(250),
            max_age: Duration::from_secs(2),
        }
    }
}

/// Counts since start, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Leases taken (round trips that granted units).
    pub leases: u64,
    /// Units leased in all.
    pub leased_units: u64,
    /// Free units given back unused.
    pub returned_units: u64,
    /// Renewal rounds that succeeded.
    pub renewals: u64,
    /// Slots of running requests that a renewal found gone (Redis lost them).
    pub lost_found: u64,
}

/// What the registry holds right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseGauges {
    pub leases: usize,
    /// Slots held by running requests (or their commits).
    pub in_use: u64,
    /// Slots leased and not handed out.
    pub free: u64,
}

/// What one lease step got.
enum Step {
    Granted(Acquired),
    /// Committed and in flight, as the refusing script saw them.
    Refused(u64, u64),
}

/// The answer to [`Leases::acquire`].
#[derive(Debug)]
pub enum Acquired {
    Admitted {
        slot: Slot,
        /// The counter as last seen (for the allowance headers): committed units...
        committed: u64,
        /// ...and units in flight, not counting this proxy's free slots.
        in_flight: u64,
    },
    Refused {
        committed: u64,
        in_flight: u64,
    },
}

/// The proxy's leases, by counter.
pub struct Leases {
    counters: Counters,
    /// This proxy's id in the counters' holder sets.
    holder: String,
    settings: LeaseSettings,
    epoch: Instant,
    live: Mutex<HashMap<String, Vec<Arc<Lease>>>>,
    /// Units of each counter whose commit is on its way (shared by its leases).
    settling: Mutex<HashMap<String, Arc<Settling>>>,
    /// One lease step at a time per counter (see [`Leases::acquire`]).
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Gate>>>>,
    leases: AtomicU64,
    leased_units: AtomicU64,
    returned_units: AtomicU64,
    renewals: AtomicU64,
    lost_found: AtomicU64,
    last_renewal_ms: AtomicU64,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("holder", &self.holder)
            .field("gauges", &self.gauges())
            .finish()
    }
}

/// The turn to lease on one counter, and what the last lease step answered.
#[derive(Debug, Default)]
struct Gate {
    /// The last lease step was refused: when (registry ms), committed, in flight.
    refused: Option<(u64, u64, u64)>,
}

impl Gate {
    /// The refusal of a lease step that ended after `arrived`, if the last one was.
    fn refused_since(&self, arrived: u64) -> Option<Acquired> {
        self.refused
            .filter(|(at, ..)| *at >= arrived)
            .map(|(_, committed, in_flight)| Acquired::Refused {
                committed,
                in_flight,
            })
    }
}

/// A counter's units that succeeded and wait for their commit, on this proxy.
#[derive(Debug, Default)]
struct Settling {
    units: AtomicU64,
    /// Woken when `units` reaches zero.
    landed: tokio::sync::Notify,
}

impl Settling {
    fn add(&self, units: u32) {
        if units > 0 {
            self.units.fetch_add(u64::from(units), Ordering::AcqRel);
        }
    }

    fn sub(&self, units: u32) {
        if units > 0 && self.units.fetch_sub(u64::from(units), Ordering::AcqRel) == u64::from(units)
        {
            self.landed.notify_waiters();
        }
    }

    /// Waits until nothing is settling, or `wait` has passed; whether it is settled.
    async fn landed_within(&self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let landed = self.landed.notified();
            tokio::pin!(landed);
            landed.as_mut().enable();
            if self.units.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, landed).await.is_err() {
                return self.units.load(Ordering::Acquire) == 0;
            }
        }
    }
}

/// One block of units on one counter.
#[derive(Debug)]
pub struct Lease {
    counter: CounterRef,
    settling: Arc<Settling>,
    id: String,
    /// The limit it was granted under: a lower limit since (a downgrade, a refund)
    /// must not be admitted from it.
    limit: u64,
    created_ms: u64,
    /// The counter when it was granted, for the allowance headers.
    committed: u64,
    in_flight: u64,
    /// The last confirmation that its members exist (grant or renewal).
    confirmed_ms: AtomicU64,
    slots: Mutex<Slots>,
}

/// Slot bitmasks (bit i is member `<id>#<i + 1>`).
#[derive(Debug, Default)]
struct Slots {
    /// Leased and not handed out.
    free: u64,
    /// Still reserved in Redis by this proxy (free, in use or settling): renewed.
    outstanding: u64,
    /// Their commit is on the way: found gone at renewal is no loss.
    settling: u64,
    /// In use and found gone from Redis: their requests are in doubt.
    lost: u64,
    last_used_ms: u64,
    /// Hands out nothing more (aged, or found gone).
    closed: bool,
}

/// The slots one admitted request holds; give them back or commit them.
#[derive(Debug)]
pub struct Slot {
    leases: Arc<Leases>,
    lease: Arc<Lease>,
    mask: u64,
    settled: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bits(mask: u64) -> impl Iterator<Item = u32> {
    (0..64u32).filter(move |i| mask & (1u64 << i) != 0)
}

/// The lowest `n` set bits of `mask`.
fn lowest(mask: u64, n: u32) -> u64 {
    let mut left = mask;
    let mut taken = 0;
    for _ in 0..n {
        let bit = left & left.wrapping_neg();
        taken |= bit;
        left &= !bit;
    }
    taken
}

fn all_slots(size: u32) -> u64 {
    if size >= 64 {
        u64::MAX
    } else {
        (1u64 << size) - 1
    }
}

impl Lease {
    fn members(&self, mask: u64) -> Vec<String> {
        bits(mask).map(|i| member(&self.id, i + 1)).collect()
    }

    /// Takes `units` free slots for a request, if this lease may still hand them out.
    /// Returns the slots taken and how many stay free.
    fn take(&self, units: u32, limit: u64, now_ms: u64, fresh_ms: u64) -> Option<(u64, u32)> {
        if self.limit > limit
            || now_ms.saturating_sub(self.confirmed_ms.load(Ordering::Relaxed)) > fresh_ms
        {
            return None;
        }
        let mut s = lock(&self.slots);
        if s.closed || s.free.count_ones() < units {
            return None;
        }
        let mask = lowest(s.free, units);
        s.free &= !mask;
        s.last_used_ms = now_ms;
        Some((mask, s.free.count_ones()))
    }

    /// Hands out nothing more; returns the members of its free slots, to be given back
    /// to Redis (harmless for members Redis already lost). Units its running requests
    /// hand back later go to Redis too, never to this lease.
    fn close(&self) -> Vec<String> {
        let mut s = lock(&self.slots);
        s.closed = true;
        let free = s.free;
        s.free = 0;
        s.outstanding &= !free;
        drop(s);
        self.members(free)
    }
}

impl Leases {
    /// `holder` names this proxy in the counters' holder sets (unique per process).
    pub fn new(counters: Counters, holder: String, settings: LeaseSettings) -> Arc<Self> {
        let settings = LeaseSettings {
            max_units: settings.max_units.clamp(1, MAX_LEASE_UNITS),
            ..settings
        };
        Arc::new(Self {
            counters,
            holder,
            settings,
            epoch: Instant::now(),
            live: Mutex::new(HashMap::new()),
            settling: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
            leases: AtomicU64::new(0),
            leased_units: AtomicU64::new(0),
            returned_units: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            lost_found: AtomicU64::new(0),
            last_renewal_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.counters.reservation_ttl().as_millis()).unwrap_or(u64::MAX)
    }

    /// Admits `units` under `limit` on `counter`: from a lease this proxy holds when one
    /// has the slots, else from a new lease (one round trip, giving back the free slots
    /// of the older ones in the same step). The flag says whether Redis was asked.
    pub async fn acquire(
        self: &Arc<Self>,
        counter: &CounterRef,
        limit: u64,
        units: u32,
        budget: Duration,
    ) -> Result<(Acquired, bool), CounterError> {
        if units > MAX_LEASE_UNITS {
            return Err(CounterError::TooManyUnits(units));
        }
        if let Some(admitted) = self.take_local(counter, limit, units) {
            return Ok((admitted, false));
        }
        // One lease step per counter at a time: requests that arrive while one is on its
        // way wait for it and take from what it brings, instead of each leasing a block
        // of its own (a burst would lease everything in blocks nobody uses, and refuse).
        let gate = lock(&self.gates)
            .entry(counter.used_key.clone())
            .or_default()
            .clone();
        let arrived = self.now_ms();
        let wait = (budget * 20).max(Duration::from_millis(200));
        let Ok(mut turn) = tokio::time::timeout(wait, gate.lock()).await else {
            return Err(CounterError::Timeout);
        };
        if let Some(admitted) = self.take_local(counter, limit, units) {
            return Ok((admitted, false));
        }
        if let Some(answer) = turn.refused_since(arrived) {
            // A lease step refused while this request waited: the limit is reached (or
            // held by requests in flight); asking again now would only queue the burst.
            return Ok((answer, false));
        }
        let settling = lock(&self.settling)
            .entry(counter.used_key.clone())
            .or_default()
            .clone();
        let mut waited = false;
        loop {
            match self
                .lease_step(counter, limit, units, budget, &settling)
                .await?
            {
                Step::Granted(admitted) => {
                    turn.refused = None;
                    return Ok((admitted, true));
                }
                Step::Refused(committed, in_flight) => {
                    // This proxy's own successes may still be on their way to the count:
                    // let them land (at most the budget), then ask once more.
                    if !waited && settling.units.load(Ordering::Acquire) > 0 {
                        waited = true;
                        if settling.landed_within(budget).await {
                            continue;
                        }
                    }
                    turn.refused = Some((self.now_ms(), committed, in_flight));
                    return Ok((
                        Acquired::Refused {
                            committed,
                            in_flight,
                        },
                        true,
                    ));
                }
            }
        }
    }

    /// One lease step (the caller holds the counter's gate): closes this proxy's leases
    /// on the counter, gives back their free slots and leases a new block.
    async fn lease_step(
        self: &Arc<Self>,
        counter: &CounterRef,
        limit: u64,
        units: u32,
        budget: Duration,
        settling: &Arc<Settling>,
    ) -> Result<Step, CounterError> {
        let now = self.now_ms();
        let mut give_back: Vec<String> = Vec::new();
        if let Some(list) = lock(&self.live).get(&counter.used_key) {
            // None has room (or may admit under this limit): they close, and their free
            // slots go back in the lease step, so this proxy never refuses a request
            // while it sits on units itself.
            for lease in list {
                give_back.extend(lease.close());
            }
        }
        self.returned_units
            .fetch_add(give_back.len() as u64, Ordering::Relaxed);
        let lease_id = uuid::Uuid::now_v7().simple().to_string();
        let most = self.settings.max_units.max(units);
        let request = LeaseRequest {
            limit,
            lease_id: &lease_id,
            needed: units,
            most,
            holder: if most > units { &self.holder } else { "" },
            give_back: &give_back,
        };
        let started = self.now_ms();
        let grant = self.counters.lease(counter, &request, budget).await?;
        if grant.units == 0 {
            return Ok(Step::Refused(grant.committed, grant.in_flight));
        }
        self.leases.fetch_add(1, Ordering::Relaxed);
        self.leased_units
            .fetch_add(u64::from(grant.units), Ordering::Relaxed);
        let all = all_slots(grant.units);
        let taken = lowest(all, units);
        let lease = Arc::new(Lease {
            counter: counter.clone(),
            settling: settling.clone(),
            id: lease_id,
            limit,
            created_ms: now,
            committed: grant.committed,
            in_flight: grant.in_flight,
            confirmed_ms: AtomicU64::new(started),
            slots: Mutex::new(Slots {
                free: all & !taken,
                outstanding: all,
                last_used_ms: now,
                ..Slots::default()
            }),
        });
        lock(&self.live)
            .entry(counter.used_key.clone())
            .or_default()
            .push(lease.clone());
        let free = (all & !taken).count_ones();
        Ok(Step::Granted(self.admitted_from(lease, taken, free)))
    }

    /// Takes `units` from a lease this proxy already holds, if one has them.
    fn take_local(
        self: &Arc<Self>,
        counter: &CounterRef,
        limit: u64,
        units: u32,
    ) -> Option<Acquired> {
        let now = self.now_ms();
        let fresh = self.ttl_ms() / 2;
        let live = lock(&self.live);
        let list = live.get(&counter.used_key)?;
        list.iter().find_map(|lease| {
            lease
                .take(units, limit, now, fresh)
                .map(|(mask, free)| self.admitted_from(lease.clone(), mask, free))
        })
    }

    /// `free`: the lease's slots still free after this take (for the allowance headers).
    fn admitted_from(self: &Arc<Self>, lease: Arc<Lease>, mask: u64, free: u32) -> Acquired {
        let in_flight = lease.in_flight.saturating_sub(u64::from(free));
        let committed = lease.committed;
        Acquired::Admitted {
            slot: Slot {
                leases: self.clone(),
                lease,
                mask,
                settled: false,
            },
            committed,
            in_flight,
        }
    }

    /// Slot bookkeeping of the registry right now.
    pub fn gauges(&self) -> LeaseGauges {
        let live = lock(&self.live);
        let mut g = LeaseGauges::default();
        for lease in live.values().flatten() {
            let s = lock(&lease.slots);
            g.leases += 1;
            g.free += u64::from(s.free.count_ones());
            g.in_use += u64::from((s.outstanding & !s.free).count_ones());
        }
        g
    }

    pub fn stats(&self) -> LeaseStats {
        LeaseStats {
            leases: self.leases.load(Ordering::Relaxed),
            leased_units: self.leased_units.load(Ordering::Relaxed),
            returned_units: self.returned_units.load(Ordering::Relaxed),
            renewals: self.renewals.load(Ordering::Relaxed),
            lost_found: self.lost_found.load(Ordering::Relaxed),
        }
    }

    /// Gives back the free slots of leases idle for `idle` or older than `max_age`
    /// (all of them when `everything`), and forgets leases with nothing outstanding.
    /// One `ZREM` per counter.
    pub async fn give_back_unused(&self, everything: bool) {
        let now = self.now_ms();
        let idle = u64::try_from(self.settings.idle.as_millis()).unwrap_or(u64::MAX);
        let max_age = u64::try_from(self.settings.max_age.as_millis()).unwrap_or(u64::MAX);
        let mut back: Vec<(CounterRef, Vec<String>)> = Vec::new();
        {
            let mut live = lock(&self.live);
            live.retain(|_, list| {
                let counter = list.first().map(|l| l.counter.clone());
                let mut members = Vec::new();
                list.retain(|lease| {
                    let mut s = lock(&lease.slots);
                    let aged = now.saturating_sub(lease.created_ms) > max_age;
                    let unused = now.saturating_sub(s.last_used_ms) > idle;
                    if aged || everything {
                        s.closed = true;
                    }
                    if s.free != 0 && (aged || unused || s.closed) {
                        let free = s.free;
                        s.free = 0;
                        s.outstanding &= !free;
                        members.extend(lease.members(free));
                    }
                    s.outstanding != 0
                });
                if let Some(counter) = counter
                    && !members.is_empty()
                {
                    back.push((counter, members));
                }
                !list.is_empty()
            });
        }
        // Gates and settling counts of counters nobody is leasing on any more.
        lock(&self.gates).retain(|_, gate| Arc::strong_count(gate) > 1);
        lock(&self.settling).retain(|_, settling| Arc::strong_count(settling) > 1);
        // Side by side: a slow Redis must not hold renewal back behind many counters.
        let releases = back.into_iter().map(|(counter, members)| async move {
            self.returned_units
                .fetch_add(members.len() as u64, Ordering::Relaxed);
            if let Err(e) = self.counters.release_members(&counter, &members).await {
                tracing::warn!(error = %e, "giving unused leased units back failed; they expire");
            }
        });
        futures_util::future::join_all(releases).await;
    }

    /// Renews the outstanding slots of every lease (one script call per counter).
    pub async fn renew_all(&self) {
        let snapshot: Vec<(String, Vec<Arc<Lease>>)> = lock(&self.live)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let started = self.now_ms();
        let rounds = snapshot.into_iter().map(|(_, group)| async move {
            // (lease index, slot bit) per member sent.
            let mut owners: Vec<(usize, u64)> = Vec::new();
            let mut members: Vec<String> = Vec::new();
            for (index, lease) in group.iter().enumerate() {
                let outstanding = lock(&lease.slots).outstanding;
                for i in bits(outstanding) {
                    owners.push((index, 1u64 << i));
                    members.push(member(&lease.id, i + 1));
                }
            }
            if members.is_empty() {
                return;
            }
            match self.counters.renew(&group[0].counter, &members).await {
                Ok(gone) => {
                    let mut gone_by_lease = vec![0u64; group.len()];
                    for i in gone {
                        let (index, bit) = owners[i];
                        gone_by_lease[index] |= bit;
                    }
                    let mut back = Vec::new();
                    for (lease, gone) in group.iter().zip(gone_by_lease) {
                        back.extend(self.settle_renewal(lease, gone, started));
                    }
                    if let Err(e) = self.counters.release_members(&group[0].counter, &back).await
                    {
                        tracing::warn!(error = %e, "giving back units of a lost lease failed; they expire");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "renewing leased units failed; retrying"),
            }
        });
        futures_util::future::join_all(rounds).await;
        self.renewals.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies a renewal's answer; returns free members of a lease it closed (to give
    /// back: those Redis still has are reserved for nobody).
    fn settle_renewal(&self, lease: &Lease, gone: u64, started: u64) -> Vec<String> {
        let mut s = lock(&lease.slots);
        // Gone because their commit landed (or they were given back) meanwhile: as it
        // should be.
        let gone = gone & s.outstanding & !s.settling;
        if gone == 0 {
            drop(s);
            lease.confirmed_ms.fetch_max(started, Ordering::Relaxed);
            return Vec::new();
        }
        // Redis lost them (a restart, a failover): nothing of this lease is handed out
        // any more; running requests on a lost slot are in doubt.
        let in_use_lost = gone & !s.free;
        s.outstanding &= !gone;
        s.lost |= in_use_lost;
        drop(s);
        self.lost_found
            .fetch_add(u64::from(in_use_lost.count_ones()), Ordering::Relaxed);
        lease.close()
    }

    /// How often [`Leases::maintain`] should run.
    pub fn tick(&self) -> Duration {
        (self.settings.idle / 2).clamp(Duration::from_millis(10), self.renew_every())
    }

    fn renew_every(&self) -> Duration {
        (self.counters.reservation_ttl() / 3).max(Duration::from_millis(50))
    }

    /// One round of upkeep, every [`Leases::tick`]: gives back what is unused (every
    /// free slot when `draining`), and renews every third of the TTL.
    pub async fn maintain(&self, draining: bool) {
        self.give_back_unused(draining).await;
        let now = self.now_ms();
        let due = u64::try_from(self.renew_every().as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(self.last_renewal_ms.load(Ordering::Relaxed)) >= due {
            self.last_renewal_ms.store(now, Ordering::Relaxed);
            self.renew_all().await;
        }
    }
}

impl Slot {
    /// The counter the slot is on.
    pub fn counter(&self) -> &CounterRef {
        &self.lease.counter
    }

    /// The in-flight members this request holds (what its commit settles).
    pub fn members(&self) -> Vec<String> {
        self.lease.members(self.mask)
    }

    /// Units held.
    pub fn units(&self) -> u32 {
        self.mask.count_ones()
    }

    /// Whether the unit may no longer be reserved: a renewal found it gone, or no
    /// renewal has confirmed its lease for longer than two thirds of the TTL (the last
    /// renewal window before it could expire).
    pub fn in_doubt(&self) -> bool {
        if lock(&self.lease.slots).lost & self.mask != 0 {
            return true;
        }
        let confirmed = self.lease.confirmed_ms.load(Ordering::Relaxed);
        let age = self.leases.now_ms().saturating_sub(confirmed);
        age > self.leases.ttl_ms() * 2 / 3
    }

    /// The request succeeded and its commit is starting: keep renewing until it lands,
    /// but a slot the commit removed is not a loss.
    pub fn settling(&self) {
        let mut s = lock(&self.lease.slots);
        let new = self.mask & !s.settling;
        s.settling |= self.mask;
        drop(s);
        self.lease.settling.add(new.count_ones());
    }

    /// The commit landed. `lease_gone`: it found a held member gone, so Redis lost a
    /// lease — this one hands out nothing more, and the members of its free slots are
    /// returned to be given back in Redis.
    #[must_use = "members returned must be released in Redis"]
    pub fn committed(mut self, lease_gone: bool) -> Vec<String> {
        self.settled = true;
        let mut s = lock(&self.lease.slots);
        let was_settling = s.settling & self.mask;
        s.outstanding &= !self.mask;
        s.settling &= !self.mask;
        s.lost &= !self.mask;
        drop(s);
        self.lease.settling.sub(was_settling.count_ones());
        if lease_gone {
            self.lease.close()
        } else {
            Vec::new()
        }
    }

    /// The commit was abandoned (Redis unreachable for long): the unit was delivered and
    /// its event ships, so the slot is never handed out again; it is no longer renewed
    /// and expires, and the lease hands out nothing more (Redis is in trouble). Returns
    /// the lease's free members, to give back if Redis answers again.
    #[must_use = "members returned must be released in Redis"]
    pub fn forget(self) -> Vec<String> {
        self.committed(true)
    }

    /// The request consumed nothing: its slots go back to the lease, or — if the lease
    /// hands out nothing more — the members to release in Redis.
    #[must_use = "members returned must be released in Redis"]
    pub fn give_back(mut self) -> Vec<String> {
        self.settled = true;
        self.hand_back()
    }

    fn hand_back(&mut self) -> Vec<String> {
        let mut s = lock(&self.lease.slots);
        let lost = s.lost & self.mask;
        let kept = self.mask & !lost;
        let was_settling = s.settling & self.mask;
        s.lost &= !self.mask;
        s.settling &= !self.mask;
        if lost != 0 {
            s.outstanding &= !lost;
        }
        let back = if s.closed {
            s.outstanding &= !kept;
            drop(s);
            self.lease.members(kept)
        } else {
            s.free |= kept;
            drop(s);
            Vec::new()
        };
        self.lease.settling.sub(was_settling.count_ones());
        back
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.settled {
            // Neither committed nor given back explicitly (a request torn down): the
            // slot returns to its lease; from a closed lease it is left to expire.
            let _ = self.hand_back();
        }
    }
}
