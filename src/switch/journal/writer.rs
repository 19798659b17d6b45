//! The writer thread: drain, encode, one write, one sync, publish.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::Shared;
use super::record::Record;
use super::recovery::Fold;
use super::segment::{MAGIC, encode_frame, list_segments, segment_name};

/// How long the writer sleeps while closing and an append is between
/// reserving its slot and pushing (a few instructions), or while paused.
const SHORT_NAP: Duration = Duration::from_millis(1);
/// How often a lazy writer (durability `none`) looks for records.
const LAZY_INTERVAL: Duration = Duration::from_millis(2);

/// What the writer is told by the config.
pub(super) struct Settings {
    pub dir: PathBuf,
    pub fsync: bool,
    pub segment_bytes: u64,
    pub retention: Duration,
    pub max_bytes: Option<u64>,
}

pub(super) struct Writer {
    dir: PathBuf,
    fsync: bool,
    segment_bytes: u64,
    retention: Duration,
    max_bytes: Option<u64>,
    /// With a size bound: the open work folded from recovery on, record by
    /// record, so retention knows the oldest record still needed.
    open_work: Option<Fold>,
    shared: Arc<Shared>,
    durable: watch::Sender<u64>,
    /// The segment being appended to, created when its first record comes.
    active: Option<(File, PathBuf)>,
    active_len: u64,
    /// Next sequence number to write. Appends take numbers and push in
    /// separate steps, so records can arrive slightly out of order; the
    /// writer writes only the contiguous run starting here.
    next_write: u64,
    /// Records popped but not yet written, in any order.
    pending: Vec<(u64, Record)>,
    /// Encoded frames of one group commit; reused.
    buf: Vec<u8>,
    /// `fdatasync` durations, looked up once (a no-op without a recorder).
    fsync_seconds: metrics::Histogram,
}

impl Writer {
    pub(super) fn new(
        settings: Settings,
        open_work: Option<Fold>,
        next_seq: u64,
        shared: Arc<Shared>,
        durable: watch::Sender<u64>,
    ) -> Writer {
        let capacity = shared.queue.capacity();
        Writer {
            dir: settings.dir,
            fsync: settings.fsync,
            segment_bytes: settings.segment_bytes,
            retention: settings.retention,
            max_bytes: settings.max_bytes,
            open_work,
            shared,
            durable,
            active: None,
            active_len: 0,
            next_write: next_seq,
            pending: Vec::with_capacity(capacity),
            buf: Vec::with_capacity(64 * 1024),
            fsync_seconds: metrics::histogram!(crate::telemetry::JOURNAL_FSYNC_SECONDS),
        }
    }

    pub(super) fn run(mut self) {
        if let Err(e) = self.run_loop() {
            // After a failed write or fsync the file's state is unknown
            // (a failed fsync may even have dropped dirty pages), so the
            // only safe course is to stop: appends fail (96), the watermark
            // stops, and waiters learn the journal stopped.
            self.shared.failed.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, dir = %self.dir.display(),
                "journal: write failed; journal STOPPED, new transactions are declined");
        }
        // Dropping `self.durable` closes the watermark channel.
    }

    fn run_loop(&mut self) -> io::Result<()> {
        loop {
            let closing = self.shared.closing.load(Ordering::SeqCst);
            if !closing && self.shared.paused.load(Ordering::SeqCst) {
                std::thread::park_timeout(SHORT_NAP);
                continue;
            }
            let before = self.pending.len();
            while let Some(item) = self.shared.queue.pop() {
                self.pending.push(item);
            }
            if self.pending.len() == before {
                if closing && self.shared.reserved.load(Ordering::SeqCst) == 0 {
                    return self.finish();
                }
                if closing {
                    std::thread::park_timeout(SHORT_NAP);
                } else if self.shared.lazy {
                    std::thread::park_timeout(LAZY_INTERVAL);
                } else {
                    // `append` unparks after every push; a push between the
                    // drain above and this park leaves a token, so park
                    // returns at once and nothing is missed.
                    std::thread::park();
                }
                continue;
            }
            self.commit()?;
        }
    }

    /// Writes the contiguous run of pending records as one group commit.
    fn commit(&mut self) -> io::Result<()> {
        self.pending.sort_unstable_by_key(|(seq, _)| *seq);
        let mut run = 0;
        for (i, (seq, _)) in self.pending.iter().enumerate() {
            if *seq != self.next_write + i as u64 {
                break;
            }
            run += 1;
        }
        if run == 0 {
            return Ok(());
        }
        let records = std::mem::take(&mut self.pending);
        let mut in_buf = 0usize;
        for (seq, record) in &records[..run] {
            // Written in sequence order, each number once: what recovery
            // reads back is the order the switch decided things in.
            assert!(
                *seq >= self.next_write,
                "journal: record {seq} written after {}",
                self.next_write
            );
            if self.active.is_none() || self.active_len >= self.segment_bytes {
                // Everything before this record goes to the old segment.
                if in_buf > 0 {
                    self.flush(*seq - 1, in_buf)?;
                    in_buf = 0;
                }
                self.roll(*seq)?;
            }
            self.active_len += encode_frame(*seq, record, &mut self.buf) as u64;
            if let Some(fold) = &mut self.open_work {
                fold.apply(*seq, record);
            }
            in_buf += 1;
        }
        let last = records[run - 1].0;
        self.flush(last, in_buf)?;
        self.next_write = last + 1;
        self.pending = records;
        self.pending.drain(..run);
        Ok(())
    }

    /// One write and (with fsync durability) one `fdatasync` for
    /// everything in the buffer, then publishes `last_seq` as durable.
    fn flush(&mut self, last_seq: u64, count: usize) -> io::Result<()> {
        let Some((file, _)) = &mut self.active else {
            return Err(io::Error::other("no active segment"));
        };
        file.write_all(&self.buf)?;
        if self.fsync {
            // sync_data: the size change is metadata fdatasync does cover;
            // mtime is not needed for recovery.
            let started = std::time::Instant::now();
            file.sync_data()?;
            self.fsync_seconds.record(started.elapsed());
            self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        let s = &self.shared;
        s.bytes.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        s.disk_bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        s.written.fetch_add(count as u64, Ordering::Relaxed);
        let reserved = s.reserved.fetch_sub(count, Ordering::AcqRel);
        assert!(
            reserved >= count,
            "journal: more records written than appended"
        );
        self.buf.clear();
        // The durable watermark only grows: callers forward and answer on it.
        let before = self.durable.send_replace(last_seq);
        assert!(
            last_seq >= before,
            "journal: durable watermark went back from {before} to {last_seq}"
        );
        Ok(())
    }

    /// Starts segment `journal-<first_seq>.log` and applies retention.
    fn roll(&mut self, first_seq: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(first_seq));
        // create_new: a name collision means two writers or a recovery bug;
        // refusing beats overwriting records.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(&MAGIC)?;
        if self.fsync {
            // The new file's directory entry must be durable before any
            // record in it is reported durable.
            super::sync_dir(&self.dir)?;
        }
        self.active = Some((file, path));
        self.active_len = MAGIC.len() as u64;
        self.shared
            .disk_bytes
            .fetch_add(MAGIC.len() as u64, Ordering::Relaxed);
        self.shared.segments.fetch_add(1, Ordering::Relaxed);
        self.apply_retention();
        Ok(())
    }

    /// Deletes closed segments past `retention` (by modification time)
    /// and, with `max_bytes`, the oldest closed segments while all of them
    /// together exceed it. Failures are logged, never fatal: keeping an old
    /// segment is harmless, stopping the journal over it is not.
    ///
    /// With `max_bytes` the writer knows the oldest record open work still
    /// needs (`open_work`), and neither rule removes a segment holding it
    /// or anything after it. Without `max_bytes`, retention is by age only
    /// and does not know about open work, so `retention` must stay well
    /// above how long a reversal or advice can wait in store-and-forward
    /// (days vs. minutes by default), or recovery would lose the request
    /// data behind it.
    fn apply_retention(&self) {
        let Some((_, active)) = &self.active else {
            return;
        };
        let segments = match list_segments(&self.dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "journal: listing segments for retention");
                return;
            }
        };
        let needed = self.open_work.as_ref().and_then(Fold::oldest_needed);
        let mut total: u64 = segments
            .iter()
            .filter_map(|s| fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        let now = crate::clock::wall_now();
        // Oldest first; the active (newest) segment is never a candidate.
        for (i, seg) in segments.iter().enumerate() {
            if &seg.path == active {
                break;
            }
            // A segment holds sequence numbers up to the next one's name.
            let holds_needed = self.open_work.is_some()
                && needed
                    .is_some_and(|n| segments.get(i + 1).is_none_or(|next| next.first_seq > n));
            if holds_needed {
                if self.max_bytes.is_some_and(|max| total > max) {
                    tracing::warn!(
                        segment = %seg.path.display(),
                        oldest_needed_seq = needed,
                        bytes = total,
                        max_bytes = self.max_bytes,
                        "journal: over max_bytes, but this segment and the newer ones hold \
                         records open work still needs (a reversal or advice not yet \
                         acknowledged, or a request in flight); kept"
                    );
                }
                break;
            }
            let over = self.max_bytes.is_some_and(|max| total > max);
            match remove_if(&seg.path, now, self.retention, over) {
                Ok(Some(len)) => {
                    total = total.saturating_sub(len);
                    self.shared.disk_bytes.fetch_sub(
                        len.min(self.shared.disk_bytes.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, segment = %seg.path.display(), "journal: retention")
                }
            }
        }
    }

    /// Closing: everything accepted is written; the active segment's data
    /// is synced once more, also without fsync durability.
    fn finish(&mut self) -> io::Result<()> {
        if let Some((file, _)) = &self.active {
            file.sync_data()?;
        }
        Ok(())
    }
}

/// Removes the segment at `path` if it is older than `retention`, or if
/// `over_size` (the journal exceeds `max_bytes`); returns its size if it
/// was removed.
fn remove_if(
    path: &Path,
    now: SystemTime,
    retention: Duration,
    over_size: bool,
) -> io::Result<Option<u64>> {
    let meta = fs::metadata(path)?;
    // A modification time in the future (clock stepped back) counts as new.
    let age = now.duration_since(meta.modified()?).unwrap_or_default();
    let why = if age > retention {
        "past retention"
    } else if over_size {
        "over max_bytes"
    } else {
        return Ok(None);
    };
    fs::remove_file(path)?;
    tracing::info!(segment = %path.display(), age_s = age.as_secs(), bytes = meta.len(), "journal: deleted segment {why}");
    Ok(Some(meta.len()))
}
