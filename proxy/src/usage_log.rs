//! The usage write-ahead log. Every committed unit's event is appended here *before*
//! the response leaves the proxy, so a 2xx a client saw is never lost: not when the
//! control plane is down (events wait here), not when this process is killed (the
//! write has reached the kernel), not across restarts (segments are replayed in order).
//!
//! Layout: `<dir>/usage-<20-digit sequence>.jsonl`, one JSON event per line. Writers
//! append to the newest segment; the shipper seals it (starts a new one), fsyncs it,
//! ships it in batches and deletes it only when the ledger has acknowledged all of it.
//!
//! A segment is shipped only once the counter commits of all its events are done
//! ([`CommitTicket`]): the ledger then never holds a unit the Redis counter has not
//! counted yet, so raising a counter to the ledger never counts a unit twice.
//!
//! A failed append leaves nothing behind: the torn bytes are cut off (or, if that
//! fails too, the segment is closed and a fresh one started), so the next event is
//! never glued to a broken line; the caller learns of the failure and must not deliver
//! the success it was recording.

use billing_model::UsageEvent;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const PREFIX: &str = "usage-";
const SUFFIX: &str = ".jsonl";

/// What the log needs of a segment file (a trait so tests can make writes fail).
pub trait SegmentFile: Write + Send {
    /// Cuts the file back to `len` bytes.
    fn truncate_to(&mut self, len: u64) -> std::io::Result<()>;
    fn sync(&mut self) -> std::io::Result<()>;
}

impl SegmentFile for File {
    fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
}

/// Opens the segment file for a sequence number.
pub type Opener = dyn Fn(&Path) -> std::io::Result<Box<dyn SegmentFile>> + Send + Sync;

struct Active {
    seq: u64,
    file: Option<Box<dyn SegmentFile>>,
    /// Bytes of whole lines written.
    len: u64,
    events: u64,
}

/// Holds a segment back from shipping until the counter commit of one of its events
/// is done (dropped).
#[derive(Debug)]
pub struct CommitTicket(Arc<AtomicU64>);

impl Drop for CommitTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct UsageLog {
    dir: PathBuf,
    active: Mutex<Active>,
    /// Commits still running, per segment of this run (earlier runs have none).
    pending: Mutex<BTreeMap<u64, Arc<AtomicU64>>>,
    open: Box<Opener>,
    /// Events appended since start (for metrics and the shipper's wake-up).
    appended: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageLogError {
    #[error("usage log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("usage event could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> UsageLogError + '_ {
    move |source| UsageLogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A sealed segment waiting to be shipped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    pub seq: u64,
    pub path: PathBuf,
}

impl UsageLog {
    /// Opens the log in `dir` (created if missing); segments left by an earlier run stay
    /// and are shipped first.
    pub fn open(dir: &Path) -> Result<Self, UsageLogError> {
        Self::open_with(
            dir,
            Box::new(|path| {
                let file = OpenOptions::new().create(true).append(true).open(path)?;
                Ok(Box::new(file) as Box<dyn SegmentFile>)
            }),
        )
    }

    /// Like [`UsageLog::open`], with segment files opened by `open` (tests).
    pub fn open_with(dir: &Path, open: Box<Opener>) -> Result<Self, UsageLogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let next = Self::list(dir)?.last().map_or(1, |s| s.seq + 1);
        let log = Self {
            dir: dir.to_path_buf(),
            active: Mutex::new(Active {
                seq: next,
                file: None,
                len: 0,
                events: 0,
            }),
            pending: Mutex::new(BTreeMap::new()),
            open,
            appended: AtomicU64::new(0),
        };
        {
            let mut active = log.lock_active();
            log.start_segment(&mut active, next)?;
        }
        Ok(log)
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn segment_path(dir: &Path, seq: u64) -> PathBuf {
        dir.join(format!("{PREFIX}{seq:020}{SUFFIX}"))
    }

    /// Makes segment `seq` the active one.
    fn start_segment(&self, active: &mut Active, seq: u64) -> Result<(), UsageLogError> {
        let path = Self::segment_path(&self.dir, seq);
        let file = (self.open)(&path).map_err(io_err(&path))?;
        *active = Active {
            seq,
            file: Some(file),
            len: 0,
            events: 0,
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, Arc::new(AtomicU64::new(0)));
        Ok(())
    }

    /// Every segment on disk, oldest first.
    pub fn list(dir: &Path) -> Result<Vec<Segment>, UsageLogError> {
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            // Only files this log wrote: a link or a device is never read as usage.
            if !entry.file_type().map_err(io_err(dir))?.is_file() {
                continue;
            }
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            segments.push(Segment {
                seq,
                path: entry.path(),
            });
        }
        segments.sort();
        Ok(segments)
    }

    /// Appends one event and returns the ticket that holds its segment back from
    /// shipping until the event's counter commit is done. A crash mid-write leaves at
    /// most a torn last line, which replay skips; a failed write is cut off.
    pub fn append(&self, event: &UsageEvent) -> Result<CommitTicket, UsageLogError> {
        let mut line = serde_json::to_vec(event)?;
        line.push(b'\n');
        let mut active = self.lock_active();
        if active.file.is_none() {
            // The previous segment was closed after a failure: start a fresh one.
            let next = active.seq + 1;
            self.start_segment(&mut active, next)?;
        }
        let seq = active.seq;
        let path = || Self::segment_path(&self.dir, seq);
        let len = active.len;
        let file = active.file.as_mut().expect("an active segment file");
        if let Err(e) = file.write_all(&line) {
            // Part of the line may be on disk: cut it off so the next line starts
            // clean; if even that fails, close the segment (its torn last line is
            // skipped on replay) and start the next append in a new one.
            if file.truncate_to(len).is_err() {
                active.file = None;
            }
            return Err(io_err(&path())(e));
        }
        active.len += line.len() as u64;
        active.events += 1;
        self.appended.fetch_add(1, Ordering::Relaxed);
        let counter = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&seq)
            .cloned()
            .unwrap_or_default();
        counter.fetch_add(1, Ordering::AcqRel);
        Ok(CommitTicket(counter))
    }

    /// Events in the active segment.
    pub fn pending_in_active(&self) -> u64 {
        self.active.lock().map(|a| a.events).unwrap_or(0)
    }

    /// Whether every counter commit of segment `seq`'s events is done (always, for a
    /// segment an earlier run left).
    pub fn commits_done(&self, seq: u64) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&seq)
            .is_none_or(|n| n.load(Ordering::Acquire) == 0)
    }

    /// Forgets the commit tracking of a shipped segment.
    pub fn shipped(&self, seq: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq);
    }

    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Seals the active segment if it holds anything: new appends go to a fresh one,
    /// and the sealed one is fsynced so it survives a power loss too.
    pub fn seal(&self) -> Result<(), UsageLogError> {
        let mut active = self.lock_active();
        if active.events == 0 && active.file.is_some() {
            return Ok(());
        }
        let sealed_seq = active.seq;
        let sealed_file = active.file.take();
        self.start_segment(&mut active, sealed_seq + 1)?;
        drop(active);
        if let Some(mut file) = sealed_file {
            file.sync()
                .map_err(io_err(&Self::segment_path(&self.dir, sealed_seq)))?;
        }
        Ok(())
    }

    /// Sealed segments (everything but the active one), oldest first.
    pub fn sealed(&self) -> Result<Vec<Segment>, UsageLogError> {
        let active = self.active.lock().map(|a| a.seq).unwrap_or(u64::MAX);
        Ok(Self::list(&self.dir)?
            .into_iter()
            .filter(|s| s.seq < active)
            .collect())
    }

    /// Bytes and segments waiting on disk (sealed and active).
    pub fn depth(&self) -> (u64, u64) {
        let segments = Self::list(&self.dir).unwrap_or_default();
        let bytes = segments
            .iter()
            .filter_map(|s| std::fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        (segments.len() as u64, bytes)
    }
}

/// Reads a sealed segment's events, skipping a torn last line (a crash mid-write) and
/// counting lines that do not parse.
pub fn read_segment(segment: &Segment) -> Result<(Vec<UsageEvent>, u64), UsageLogError> {
    let file = File::open(&segment.path).map_err(io_err(&segment.path))?;
    let mut events = Vec::new();
    let mut unreadable = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(io_err(&segment.path))?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<UsageEvent>(&line) {
            Ok(e) => events.push(e),
            Err(_) => unreadable += 1,
        }
    }
    Ok((events, unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_model::{BillingPeriod, CustomerId, UsageType};
    use std::num::NonZeroU32;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("tg-usage-log-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn event() -> UsageEvent {
        UsageEvent::new_now(
            CustomerId::parse("alice").unwrap(),
            UsageType::TicketCreation,
            NonZeroU32::MIN,
            BillingPeriod::containing(
                time::OffsetDateTime::UNIX_EPOCH,
                time::OffsetDateTime::now_utc(),
            )
            .unwrap(),
            None,
        )
    }

    #[test]
    fn sealed_segments_hold_every_appended_event_in_order() {
        let d = dir();
        let log = UsageLog::open(&d).unwrap();
        let written: Vec<_> = (0..5).map(|_| event()).collect();
        for e in &written {
            drop(log.append(e).unwrap());
        }
        log.seal().unwrap();
        let sealed = log.sealed().unwrap();
        assert_eq!(sealed.len(), 1);
        let (read, bad) = read_segment(&sealed[0]).unwrap();
        assert_eq!(read, written);
        assert_eq!(bad, 0);
    }

    #[test]
    fn a_reopened_log_keeps_earlier_segments_and_appends_after_them() {
        let d = dir();
        {
            let log = UsageLog::open(&d).unwrap();
            drop(log.append(&event()).unwrap());
        }
        let log = UsageLog::open(&d).unwrap();
        // The earlier run's active segment is now sealed (older than the new active).
        assert_eq!(log.sealed().unwrap().len(), 1);
        drop(log.append(&event()).unwrap());
        log.seal().unwrap();
        assert_eq!(log.sealed().unwrap().len(), 2);
    }

    #[test]
    fn a_torn_last_line_is_skipped_not_fatal() {
        let d = dir();
        let log = UsageLog::open(&d).unwrap();
        drop(log.append(&event()).unwrap());
        log.seal().unwrap();
        let segment = log.sealed().unwrap().remove(0);
        let mut f = OpenOptions::new().append(true).open(&segment.path).unwrap();
        f.write_all(b"{\"event_id\":\"0190").unwrap();
        let (read, bad) = read_segment(&segment).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(bad, 1);
    }

    #[test]
    fn sealing_an_empty_segment_does_nothing() {
        let d = dir();
        let log = UsageLog::open(&d).unwrap();
        log.seal().unwrap();
        assert!(log.sealed().unwrap().is_empty());
    }

    /// A segment file that accepts `budget` bytes, then fails (a disk filling up), and
    /// can be told whether cutting off a torn write works.
    struct Flaky {
        inner: File,
        budget: Arc<AtomicU64>,
        truncate_works: bool,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let left = self.budget.load(Ordering::SeqCst) as usize;
            if left == 0 {
                return Err(std::io::Error::other("no space left on device"));
            }
            let n = buf.len().min(left);
            self.budget.fetch_sub(n as u64, Ordering::SeqCst);
            self.inner.write(&buf[..n])
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }

    impl SegmentFile for Flaky {
        fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
            if self.truncate_works {
                self.inner.set_len(len)
            } else {
                Err(std::io::Error::other("read-only"))
            }
        }
        fn sync(&mut self) -> std::io::Result<()> {
            self.inner.sync_data()
        }
    }

    fn flaky_log(d: &Path, budget: Arc<AtomicU64>, truncate_works: bool) -> UsageLog {
        UsageLog::open_with(
            d,
            Box::new(move |path| {
                let inner = OpenOptions::new().create(true).append(true).open(path)?;
                Ok(Box::new(Flaky {
                    inner,
                    budget: budget.clone(),
                    truncate_works,
                }) as Box<dyn SegmentFile>)
            }),
        )
        .unwrap()
    }

    fn all_events(log: &UsageLog) -> (Vec<UsageEvent>, u64) {
        log.seal().unwrap();
        let mut events = Vec::new();
        let mut unreadable = 0;
        for segment in log.sealed().unwrap() {
            let (e, u) = read_segment(&segment).unwrap();
            events.extend(e);
            unreadable += u;
        }
        (events, unreadable)
    }

    #[test]
    fn a_write_that_fails_halfway_is_cut_off_and_the_next_record_survives() {
        for truncate_works in [true, false] {
            let d = dir();
            let budget = Arc::new(AtomicU64::new(u64::MAX));
            let log = flaky_log(&d, budget.clone(), truncate_works);
            let first = event();
            drop(log.append(&first).unwrap());
            // The disk fills halfway through the next line.
            budget.store(40, Ordering::SeqCst);
            assert!(
                log.append(&event()).is_err(),
                "the caller learns of the failure"
            );
            budget.store(u64::MAX, Ordering::SeqCst);
            let third = event();
            drop(log.append(&third).unwrap());
            let (events, _) = all_events(&log);
            assert_eq!(
                events,
                vec![first, third],
                "truncate works: {truncate_works}"
            );
        }
    }

    #[test]
    fn a_segment_ships_only_when_its_commits_are_done() {
        let d = dir();
        let log = UsageLog::open(&d).unwrap();
        let ticket = log.append(&event()).unwrap();
        log.seal().unwrap();
        let segment = log.sealed().unwrap().remove(0);
        assert!(!log.commits_done(segment.seq));
        drop(ticket);
        assert!(log.commits_done(segment.seq));
    }
}
