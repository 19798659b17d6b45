//! The writer thread: drain, encode, one write, one sync, publish.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::Shared;
use super::prealloc::{self, Preparer};
use super::record::Record;
use super::recovery::Fold;
use super::segment::{MAGIC, encode_frame, list_segments, segment_name};
use super::sync::Syncer;

/// How long the writer sleeps while closing and an append is between
/// reserving its slot and pushing (a few instructions), or while paused.
const SHORT_NAP: Duration = Duration::from_millis(1);
/// How often a lazy writer (durability `none`) looks for records.
const LAZY_INTERVAL: Duration = Duration::from_millis(2);
/// A group commit is written once its frames reach this, even while the
/// queue still holds more: a steady stream must not postpone durability.
const MAX_GROUP_BYTES: usize = 1 << 20;

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
    /// Durability `none`: the writer publishes what it wrote itself.
    durable: Arc<watch::Sender<u64>>,
    /// Durability `fsync`: the sync threads make written records durable
    /// and publish them; the writer syncs only at a roll and at close.
    syncer: Option<Syncer>,
    /// The segment being appended to, created when its first record comes.
    active: Option<(File, PathBuf)>,
    active_len: u64,
    /// Whether the active segment was preallocated: past `active_len` it
    /// holds zeros, cut off when it is closed.
    active_preallocated: bool,
    /// The active segment file's length (more than `active_len` while
    /// preallocated): `disk_bytes` counts files as they are.
    active_file_len: u64,
    /// Makes zero-filled segments ahead of need (fsync durability only).
    preparer: Option<Preparer>,
    /// Whether the next segment was asked of the preparer.
    next_requested: bool,
    /// Next sequence number to encode. Appends take numbers and push in
    /// separate steps, so records can arrive slightly out of order; the
    /// writer encodes only the contiguous run starting here.
    next_encode: u64,
    /// Frames in `buf`, not yet written: the records before `next_encode`.
    in_buf: usize,
    /// Records popped ahead of their turn, in any order. Records that come
    /// in order (nearly all) are encoded as they are popped and never
    /// land here: a record is a couple of hundred bytes, and moving each
    /// through this vector and a sort measured as a fifth of the writer.
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
        durable: Arc<watch::Sender<u64>>,
        syncer: Option<Syncer>,
    ) -> Writer {
        assert_eq!(
            settings.fsync,
            syncer.is_some(),
            "journal: sync threads iff fsync"
        );
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
            syncer,
            active: None,
            active_len: 0,
            active_preallocated: false,
            active_file_len: 0,
            preparer: None,
            next_requested: false,
            next_encode: next_seq,
            in_buf: 0,
            pending: Vec::with_capacity(capacity),
            buf: Vec::with_capacity(64 * 1024),
            fsync_seconds: metrics::histogram!(crate::telemetry::JOURNAL_FSYNC_SECONDS),
        }
    }

    pub(super) fn run(mut self) {
        if let Some(syncer) = &self.syncer {
            syncer.set_writer(std::thread::current());
        }
        if self.fsync {
            let prepared = self.shared.prepared_segments.clone();
            match Preparer::spawn(&self.dir, self.segment_bytes, prepared) {
                Ok(p) => self.preparer = Some(p),
                Err(e) => tracing::warn!(error = %e, dir = %self.dir.display(),
                    "journal: no segment preallocation; segments grow as written"),
            }
        }
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
            let popped = self.drain()?;
            if popped > 0 {
                self.take_pending()?;
            }
            if self.in_buf > 0 && !closing && self.gather()? {
                continue;
            }
            if popped == 0 && self.in_buf == 0 {
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
            if self.in_buf > 0 {
                self.flush(self.next_encode - 1, self.in_buf)?;
            }
        }
    }

    /// Durability fsync, with records encoded and not written: while
    /// every sync thread is busy, writing them now gains nothing (no sync
    /// could take them before one ends), so the writer sleeps until a
    /// sync's end wakes it and then writes the whole group at once: one
    /// `write` for the group instead of one per wake, and appends meanwhile
    /// do not wake it. True when it slept (the caller drains again).
    fn gather(&mut self) -> io::Result<bool> {
        let Some(syncer) = &self.syncer else {
            return Ok(false);
        };
        if self.buf.len() >= MAX_GROUP_BYTES || !syncer.busy() {
            return Ok(false);
        }
        let s = &self.shared;
        s.gathering.store(true, Ordering::SeqCst);
        // A sync that ended after `busy` above left its unpark as a token:
        // park returns at once. A spurious return just gathers again.
        std::thread::park();
        s.gathering.store(false, Ordering::Relaxed);
        // Pairs with the fence in `Journal::wake`: a record whose append
        // saw `gathering` still set is seen by the next drain.
        std::sync::atomic::fence(Ordering::SeqCst);
        Ok(true)
    }

    /// Pops what the queue holds (at most one queue's worth, or until the
    /// buffer is large, so that a steady stream still commits), encoding
    /// each record that comes in its turn. Returns how many were popped.
    fn drain(&mut self) -> io::Result<usize> {
        let limit = self.shared.queue.capacity();
        let mut popped = 0;
        while popped < limit && self.buf.len() < MAX_GROUP_BYTES {
            let Some((seq, record)) = self.shared.queue.pop() else {
                break;
            };
            popped += 1;
            if seq == self.next_encode {
                self.take(seq, &record)?;
            } else {
                self.pending.push((seq, record));
            }
        }
        Ok(popped)
    }

    /// Encodes the records popped ahead of their turn whose turn has come.
    fn take_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pending.sort_unstable_by_key(|(seq, _)| *seq);
        let records = std::mem::take(&mut self.pending);
        let mut run = 0;
        for (seq, record) in &records {
            if *seq != self.next_encode {
                break;
            }
            self.take(*seq, record)?;
            run += 1;
        }
        self.pending = records;
        self.pending.drain(..run);
        Ok(())
    }

    /// Encodes record `seq` into the group commit, rolling the segment
    /// first when it is full (the frames before it go to the old one).
    fn take(&mut self, seq: u64, record: &Record) -> io::Result<()> {
        // Encoded in sequence order, each number once: what recovery
        // reads back is the order the switch decided things in.
        assert_eq!(seq, self.next_encode, "journal: record out of turn");
        if self.active.is_none() || self.active_len >= self.segment_bytes {
            if self.in_buf > 0 {
                self.flush(seq - 1, self.in_buf)?;
            }
            self.roll(seq)?;
        }
        self.active_len += encode_frame(seq, record, &mut self.buf) as u64;
        if !self.next_requested
            && self.active_len >= self.segment_bytes / 2
            && let Some(p) = &self.preparer
        {
            p.request();
            self.next_requested = true;
        }
        if let Some(fold) = &mut self.open_work {
            fold.apply(seq, record);
        }
        self.in_buf += 1;
        self.next_encode = seq + 1;
        Ok(())
    }

    /// One write for everything in the buffer; then `last_seq` is handed
    /// to the sync threads (durability fsync) or published as durable.
    fn flush(&mut self, last_seq: u64, count: usize) -> io::Result<()> {
        let Some((file, _)) = &mut self.active else {
            return Err(io::Error::other("no active segment"));
        };
        file.write_all(&self.buf)?;
        let s = &self.shared;
        s.bytes.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        // Everything buffered is written: the file now reaches `active_len`.
        let grown = self.active_len.saturating_sub(self.active_file_len);
        self.active_file_len = self.active_file_len.max(self.active_len);
        s.disk_bytes.fetch_add(grown, Ordering::Relaxed);
        s.written.fetch_add(count as u64, Ordering::Relaxed);
        let reserved = s.reserved.fetch_sub(count, Ordering::AcqRel);
        assert!(
            reserved >= count,
            "journal: more records written than appended"
        );
        self.buf.clear();
        self.in_buf = 0;
        if let Some(syncer) = &self.syncer {
            return syncer.written(last_seq);
        }
        // The durable watermark only grows: callers forward and answer on it.
        let before = self.durable.send_replace(last_seq);
        assert!(
            last_seq >= before,
            "journal: durable watermark went back from {before} to {last_seq}"
        );
        Ok(())
    }

    /// With fsync durability, before the active segment is left: waits for
    /// the syncs in flight, cuts the preallocated zeros, syncs the segment
    /// (what the sync threads had not yet taken, and its final length) and
    /// publishes its last record, so that no record of the next segment is
    /// published ahead of the old one's. Without fsync, just cuts.
    fn leave_active(&mut self, last_seq: u64) -> io::Result<()> {
        let Some(syncer) = &self.syncer else {
            return self.close_active();
        };
        syncer.quiesce()?;
        self.close_active()?;
        if let (Some((file, _)), Some(syncer)) = (&self.active, &self.syncer) {
            let started = std::time::Instant::now();
            file.sync_data()?;
            self.fsync_seconds.record(started.elapsed());
            self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
            syncer.publish(last_seq)?;
        }
        Ok(())
    }

    /// Starts segment `journal-<first_seq>.log` and applies retention.
    fn roll(&mut self, first_seq: u64) -> io::Result<()> {
        self.leave_active(first_seq - 1)?;
        let path = self.dir.join(segment_name(first_seq));
        // A name collision means two writers or a recovery bug: both ways
        // of making the file refuse it rather than overwrite records.
        let prepared = self.preparer.as_ref().and_then(Preparer::take);
        self.active_preallocated = prepared.is_some();
        self.next_requested = false;
        if self.active_preallocated {
            self.shared
                .preallocated_segments
                .fetch_add(1, Ordering::Relaxed);
        }
        let file = match prepared {
            Some(prepared) => {
                let mut file = prealloc::install(prepared, &path)?;
                file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
                file
            }
            None => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                file.write_all(&MAGIC)?;
                file
            }
        };
        if self.fsync {
            // The new file's directory entry must be durable before any
            // record in it is reported durable.
            super::sync_dir(&self.dir)?;
        }
        let file_len = if self.active_preallocated {
            file.metadata()?.len()
        } else {
            MAGIC.len() as u64
        };
        if let Some(syncer) = &self.syncer {
            syncer.start_segment(path.clone());
        }
        self.active = Some((file, path));
        self.active_len = MAGIC.len() as u64;
        self.active_file_len = file_len;
        self.shared
            .disk_bytes
            .fetch_add(file_len, Ordering::Relaxed);
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

    /// Cuts the zeros off a preallocated segment being closed. Not synced:
    /// a crash before the size is on disk leaves a zero tail, which
    /// recovery cuts again.
    fn close_active(&mut self) -> io::Result<()> {
        if let Some((file, _)) = &self.active
            && self.active_preallocated
        {
            file.set_len(self.active_len)?;
            let zeros = self.active_file_len.saturating_sub(self.active_len);
            self.shared.disk_bytes.fetch_sub(
                zeros.min(self.shared.disk_bytes.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            self.active_file_len = self.active_len;
            self.active_preallocated = false;
        }
        Ok(())
    }

    /// Closing: everything accepted is written; the active segment's data
    /// is synced once more, also without fsync durability.
    fn finish(&mut self) -> io::Result<()> {
        self.leave_active(self.next_encode - 1)?;
        if let Some((file, _)) = &self.active {
            file.sync_all()?;
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
