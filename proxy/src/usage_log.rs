//! The usage write-ahead log. Every committed unit's event is appended here *before*
//! the response leaves the proxy, so a 2xx a client saw is never lost: not when the
//! control plane is down (events wait here), not when this process is killed (the
//! write has reached the kernel), not across restarts (segments are replayed in order).
//!
//! Layout: `<dir>/usage-<20-digit sequence>.jsonl`, one JSON event per line. Writers
//! append to the newest segment; the shipper seals it (starts a new one), fsyncs it,
//! ships it in batches and deletes it only when the ledger has acknowledged all of it.

use billing_model::UsageEvent;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const PREFIX: &str = "usage-";
const SUFFIX: &str = ".jsonl";

struct Active {
    seq: u64,
    file: File,
    events: u64,
}

pub struct UsageLog {
    dir: PathBuf,
    active: Mutex<Active>,
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
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let next = Self::list(dir)?.last().map_or(1, |s| s.seq + 1);
        let active = Self::create(dir, next)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            active: Mutex::new(active),
            appended: AtomicU64::new(0),
        })
    }

    fn segment_path(dir: &Path, seq: u64) -> PathBuf {
        dir.join(format!("{PREFIX}{seq:020}{SUFFIX}"))
    }

    fn create(dir: &Path, seq: u64) -> Result<Active, UsageLogError> {
        let path = Self::segment_path(dir, seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Active {
            seq,
            file,
            events: 0,
        })
    }

    /// Every segment on disk, oldest first.
    pub fn list(dir: &Path) -> Result<Vec<Segment>, UsageLogError> {
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
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

    /// Appends one event. One `write` of a whole line: a crash leaves at most a torn
    /// last line, which replay skips.
    pub fn append(&self, event: &UsageEvent) -> Result<(), UsageLogError> {
        let mut line = serde_json::to_vec(event)?;
        line.push(b'\n');
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let seq = active.seq;
        active
            .file
            .write_all(&line)
            .map_err(io_err(&Self::segment_path(&self.dir, seq)))?;
        active.events += 1;
        self.appended.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Events in the active segment.
    pub fn pending_in_active(&self) -> u64 {
        self.active.lock().map(|a| a.events).unwrap_or(0)
    }

    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Seals the active segment if it holds anything: new appends go to a fresh one,
    /// and the sealed one is fsynced so it survives a power loss too.
    pub fn seal(&self) -> Result<(), UsageLogError> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.events == 0 {
            return Ok(());
        }
        let next = Self::create(&self.dir, active.seq + 1)?;
        let sealed = std::mem::replace(&mut *active, next);
        drop(active);
        sealed
            .file
            .sync_data()
            .map_err(io_err(&Self::segment_path(&self.dir, sealed.seq)))?;
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
            log.append(e).unwrap();
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
            log.append(&event()).unwrap();
        }
        let log = UsageLog::open(&d).unwrap();
        // The earlier run's active segment is now sealed (older than the new active).
        assert_eq!(log.sealed().unwrap().len(), 1);
        log.append(&event()).unwrap();
        log.seal().unwrap();
        assert_eq!(log.sealed().unwrap().len(), 2);
    }

    #[test]
    fn a_torn_last_line_is_skipped_not_fatal() {
        let d = dir();
        let log = UsageLog::open(&d).unwrap();
        log.append(&event()).unwrap();
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
}
