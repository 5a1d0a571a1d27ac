//! Counter commits, off the request path and batched: the successes of one counter that
//! are waiting when the committer wakes go to Redis in one script call (their units
//! summed, their leased members settled together, one marker for the batch so a retry
//! after a lost answer counts once). The committer wakes at most about once per
//! millisecond and takes what queued meanwhile.
//!
//! A batch's usage events are held back from shipping (their [`CommitTicket`]s) until
//! its commit has landed, or has been abandoned: then the ledger raises the counter. So
//! the ledger never holds a unit the counter has not counted.

use crate::entitlements::Entitlement;
use crate::metrics::ProxyMetrics;
use crate::usage_log::CommitTicket;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tollgate_runtime::counters::leases::Slot;
use tollgate_runtime::counters::{CounterRef, Counters};

/// How long a commit is retried while Redis refuses connections (the commit never ran,
/// so the event can ship and the ledger raise the counter): the usage log is not held
/// back for a whole reservation TTL by a Redis that is plainly down.
const REFUSED_COMMIT_GIVE_UP: Duration = Duration::from_secs(5);

/// How long the committer lets successes queue before a batch (see the loop).
const COALESCE: Duration = Duration::from_millis(1);

/// The most successes one wake-up takes from the queue.
const MAX_BATCH: usize = 256;

/// The most leased members one script call settles (its arguments grow with them).
const MAX_MEMBERS: usize = 2_048;

/// One success to count.
pub struct Commit {
    pub counter: CounterRef,
    pub units: u32,
    /// Under a hard limit: the batch carries a marker, so a retry counts once. (Paid
    /// overage alone goes without: the figure only feeds headers.)
    pub hard_limit: bool,
    /// The leased unit the request held (settled by the commit).
    pub slot: Option<Slot>,
    pub entitlement: Arc<Entitlement>,
    pub ticket: CommitTicket,
}

/// Queues commits for the batching task.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<Commit>,
    pending: Arc<AtomicU64>,
}

impl Committer {
    /// Starts the batching task on `runtime`. `pending` counts commits not yet landed
    /// (the shutdown drain waits for them).
    pub fn start(
        runtime: &tokio::runtime::Handle,
        counters: Counters,
        metrics: Arc<ProxyMetrics>,
        pending: Arc<AtomicU64>,
    ) -> Self {
        let (queue, mut incoming) = mpsc::unbounded_channel::<Commit>();
        let task_pending = pending.clone();
        runtime.spawn(async move {
            while let Some(first) = incoming.recv().await {
                // Let a millisecond's successes queue up before taking them: a send
                // to a receiver that is not waiting wakes nobody, so the background
                // thread wakes about once per millisecond under load instead of once
                // per success (the wake-ups cost more than the commits; see the bench
                // profile). An idle proxy's commit waits that millisecond. A refusal
                // meanwhile waits for these units to land before it answers (see
                // `tollgate_runtime::counters::leases`), so it never reports them unused.
                tokio::time::sleep(COALESCE).await;
                let mut by_counter: HashMap<String, Vec<Commit>> = HashMap::new();
                by_counter
                    .entry(first.counter.used_key.clone())
                    .or_default()
                    .push(first);
                let mut taken = 1;
                while taken < MAX_BATCH {
                    let Ok(next) = incoming.try_recv() else { break };
                    by_counter
                        .entry(next.counter.used_key.clone())
                        .or_default()
                        .push(next);
                    taken += 1;
                }
                for commits in by_counter.into_values() {
                    for batch in split_by_members(commits) {
                        tokio::spawn(commit_batch(
                            counters.clone(),
                            metrics.clone(),
                            task_pending.clone(),
                            batch,
                        ));
                    }
                }
            }
        });
        Self { queue, pending }
    }

    /// Queues one success; its slot stays outstanding (renewed) until the commit lands.
    pub fn submit(&self, commit: Commit) {
        if let Some(slot) = &commit.slot {
            slot.settling();
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(lost)) = self.queue.send(commit) {
            // The task is gone (the runtime is shutting down): the event ships without
            // its commit and the ledger raises the counter; the delivered unit is never
            // handed out again.
            self.pending.fetch_sub(1, Ordering::Relaxed);
            if let Some(slot) = lost.slot {
                // Nothing runs to give its lease's free units back: they expire.
                let _expire = slot.forget();
            }
        }
    }
}

/// Splits one counter's commits so no call settles more than [`MAX_MEMBERS`] members.
fn split_by_members(commits: Vec<Commit>) -> Vec<Vec<Commit>> {
    let mut batches = vec![Vec::new()];
    let mut members = 0;
    for c in commits {
        let n = c.slot.as_ref().map_or(0, |s| s.units() as usize);
        if members + n > MAX_MEMBERS && !batches.last().is_none_or(Vec::is_empty) {
            batches.push(Vec::new());
            members = 0;
        }
        members += n;
        batches.last_mut().expect("one batch at least").push(c);
    }
    batches
}

/// Commits the successes of one counter in one call, retried until it lands or is
/// abandoned.
async fn commit_batch(
    counters: Counters,
    metrics: Arc<ProxyMetrics>,
    pending: Arc<AtomicU64>,
    batch: Vec<Commit>,
) {
    let n = batch.len() as u64;
    // The highest ledger figure and key lifetime any of them carries.
    let mut counter = batch[0].counter.clone();
    let mut units = 0u32;
    let mut held = Vec::new();
    let mut hard = false;
    for c in &batch {
        counter.seed = counter.seed.max(c.counter.seed);
        counter.ttl_seconds = counter.ttl_seconds.max(c.counter.ttl_seconds);
        units = units.saturating_add(c.units);
        hard |= c.hard_limit;
        if let Some(slot) = &c.slot {
            held.extend(slot.members());
        }
    }
    let marker = if hard {
        uuid::Uuid::now_v7().simple().to_string()
    } else {
        String::new()
    };
    let give_up = counters.reservation_ttl();
    let started = Instant::now();
    let mut delay = Duration::from_millis(20);
    // Whether an attempt may have run without its answer reaching us; until then every
    // failure was a refused connection, and giving up early cannot leave a commit to
    // land after the ledger has raised the counter.
    let mut uncertain = false;
    let mut attempt = 0u32;
    let landed = loop {
        attempt += 1;
        match counters
            .commit_members(&counter, &marker, &held, units)
            .await
        {
            Ok(c) => {
                if c.duplicate && attempt == 1 {
                    // A fresh marker found already there: never expected.
                    tracing::error!(marker = %marker, "a first commit attempt was a duplicate");
                }
                if c.hold_lost {
                    metrics.holds_lost.with_label_values(&["commit"]).inc();
                    tracing::warn!(
                        count = c.count,
                        "units were committed after their hold was lost"
                    );
                }
                break Some(c);
            }
            Err(e) => {
                uncertain |= !e.never_reached_redis();
                let limit = if uncertain {
                    give_up
                } else {
                    REFUSED_COMMIT_GIVE_UP
                };
                if started.elapsed() >= limit {
                    // The events ship now; the ledger raises the counter.
                    tracing::error!(error = %e, commits = n, "counter commit abandoned");
                    break None;
                }
                metrics.commit_retries.inc();
                tracing::warn!(error = %e, "counter commit failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    };
    // Free units of leases a lost member closed: still reserved, so given back.
    let mut stranded = Vec::new();
    for c in batch {
        match (&landed, c.slot) {
            // A member gone means Redis lost a lease: it hands out nothing more.
            (Some(done), Some(slot)) => stranded.extend(slot.committed(done.hold_lost)),
            // Delivered but not counted here: never handed out again.
            (None, Some(slot)) => stranded.extend(slot.forget()),
            (_, None) => {}
        }
        if let Some(done) = &landed {
            c.entitlement.observe_used(done.count);
        }
        drop(c.ticket);
    }
    if !stranded.is_empty()
        && let Err(e) = counters.release_members(&counter, &stranded).await
    {
        tracing::warn!(error = %e, "giving back units of a closed lease failed; they expire");
    }
    pending.fetch_sub(n, Ordering::Relaxed);
}
