//! Holds that live as long as their requests.
//!
//! A reservation expires after the reservation TTL unless renewed, which is what gives
//! a crashed proxy's units back. A request may legitimately run longer than that (a
//! client trickling its body, a slow upstream), so every hold a proxy has is
//! registered here while its request runs, and [`Holds::keep_alive`] renews them all
//! every third of the TTL in one script call per counter. The registration ends when
//! the [`HoldGuard`] is dropped (commit, release, or the request going away).
//!
//! A hold is *in doubt* when its renewal found it gone (Redis lost it), or when no
//! renewal has succeeded for so long that it may have expired (Redis unreachable for
//! two thirds of the TTL). Its unit may then have gone to another request; the commit
//! still counts it (the unit was delivered), and says so. Renewal only keeps holds
//! alive; it never lowers a count, so the bound on over-admission is the units whose
//! holds Redis itself lost.

use super::{CounterRef, Counters};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One registered hold.
#[derive(Debug)]
pub struct Hold {
    pub counter: CounterRef,
    pub reservation_id: String,
    pub units: u32,
    /// Milliseconds after the registry's epoch of the last confirmation that the hold
    /// exists (its creation or a successful renewal).
    confirmed_ms: AtomicU64,
    lost: AtomicBool,
    /// The request succeeded and its commit is on the way (which removes the hold):
    /// a renewal that finds it gone is not a loss.
    settling: AtomicBool,
}

/// The proxy's registry of live holds.
pub struct Holds {
    counters: Counters,
    epoch: Instant,
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Hold>>>,
    renewals: AtomicU64,
    lost_found: AtomicU64,
}

/// Keeps a hold registered (and renewed) until dropped.
#[derive(Debug)]
pub struct HoldGuard {
    holds: Arc<Holds>,
    key: u64,
    hold: Arc<Hold>,
}

impl std::fmt::Debug for Holds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holds").field("live", &self.len()).finish()
    }
}

impl Holds {
    pub fn new(counters: Counters) -> Arc<Self> {
        Arc::new(Self {
            counters,
            epoch: Instant::now(),
            next: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
            renewals: AtomicU64::new(0),
            lost_found: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a hold that was just reserved.
    pub fn register(
        self: &Arc<Self>,
        counter: CounterRef,
        reservation_id: String,
        units: u32,
    ) -> HoldGuard {
        let hold = Arc::new(Hold {
            counter,
            reservation_id,
            units,
            confirmed_ms: AtomicU64::new(self.now_ms()),
            lost: AtomicBool::new(false),
            settling: AtomicBool::new(false),
        });
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, hold.clone());
        HoldGuard {
            holds: self.clone(),
            key,
            hold,
        }
    }

    /// How long a hold lasts without renewal.
    pub fn reservation_ttl(&self) -> Duration {
        self.counters.reservation_ttl()
    }

    /// Holds registered right now.
    pub fn len(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renewal rounds that succeeded, and holds found gone, since start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.renewals.load(Ordering::Relaxed),
            self.lost_found.load(Ordering::Relaxed),
        )
    }

    /// Renews every registered hold once (one script call per counter).
    pub async fn renew_all(&self) {
        let snapshot: Vec<Arc<Hold>> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut by_counter: HashMap<&str, Vec<&Arc<Hold>>> = HashMap::new();
        for hold in &snapshot {
            by_counter
                .entry(hold.counter.inflight_key.as_str())
                .or_default()
                .push(hold);
        }
        let started = self.now_ms();
        let rounds = by_counter.into_values().map(|group| async move {
            let ids: Vec<(&str, u32)> = group
                .iter()
                .map(|h| (h.reservation_id.as_str(), h.units))
                .collect();
            match self.counters.renew(&group[0].counter, &ids).await {
                Ok(lost) => {
                    for (hold, lost) in group.iter().zip(lost) {
                        if lost && hold.settling.load(Ordering::Relaxed) {
                            // Committed meanwhile: gone as it should be.
                        } else if lost {
                            if !hold.lost.swap(true, Ordering::Relaxed) {
                                self.lost_found.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            hold.confirmed_ms.fetch_max(started, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "renewing reservations failed; retrying"),
            }
        });
        futures_util::future::join_all(rounds).await;
        self.renewals.fetch_add(1, Ordering::Relaxed);
    }

    /// Renews every third of the reservation TTL until `stop` resolves.
    pub async fn keep_alive(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let every = (self.counters.reservation_ttl() / 3).max(Duration::from_millis(50));
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => self.renew_all().await,
                _ = &mut stop => return,
            }
        }
    }
}

impl HoldGuard {
    pub fn hold(&self) -> &Hold {
        &self.hold
    }

    /// Whether the hold may no longer exist: a renewal found it gone, or no renewal
    /// has confirmed it for longer than two thirds of the TTL (the last renewal
    /// window before it could expire).
    pub fn in_doubt(&self) -> bool {
        if self.hold.lost.load(Ordering::Relaxed) {
            return true;
        }
        let confirmed = self.hold.confirmed_ms.load(Ordering::Relaxed);
        let age = Duration::from_millis(self.holds.now_ms().saturating_sub(confirmed));
        age > self.holds.counters.reservation_ttl() * 2 / 3
    }

    /// The request succeeded and its commit is starting: keep renewing until it lands,
    /// but a hold the commit removed is not a loss.
    pub fn settling(&self) {
        self.hold.settling.store(true, Ordering::Relaxed);
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.holds
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}
