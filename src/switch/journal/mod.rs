//! The transaction journal: an append-only, segmented, checksummed log on
//! local disk, so that every request ends in exactly one known outcome even
//! across `kill -9`.
//!
//! The hot path calls [`Journal::append`], which takes a sequence number and
//! pushes the record onto a bounded lock-free queue; it never blocks and
//! never does I/O. One OS thread (the writer) drains the queue, encodes
//! everything it found into one buffer, writes it with one `write`, syncs it
//! with one `fdatasync` (group commit), and then publishes the durable
//! watermark — the highest sequence number on disk — on a `watch` channel
//! that async code awaits before it forwards or answers.
//!
//! [`Journal::open`] first reads what is on disk ([`Recovery`]): it cuts a
//! torn tail back to the last good record, and reports the transactions a
//! crash left open (to reverse) and the store-and-forward queue (to resend).
//! The writer then always starts a new segment, so it never appends after a
//! possibly torn tail.
//!
//! Layout: `record.rs` (records and their encoding), `segment.rs` (files,
//! framing, readers), `recovery.rs` (open work), `writer.rs` (the thread),
//! `cli.rs` (`switchyard journal tail|show|stats`).

pub mod cli;
mod config;
mod prealloc;
pub mod record;
pub mod recovery;
pub mod segment;
mod sync;
mod writer;

#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};

use crossbeam_queue::ArrayQueue;
use tokio::sync::watch;

pub(crate) use config::JournalFile;
pub use config::{Durability, JournalConfig};
pub use record::{
    ApprovalCode, BatchText, CutoverReason, MaskedPanStr, Names, Record, RecordKind, RequestData,
    Rrn, SettlementFields, SmallStr,
};
pub use recovery::{LastCutover, Recovery, RecoveryStats, SafEntry, SafKind, TornTail, Unfinished};
pub use segment::{Corruption, CorruptionKind, ReadError, Reader, read_all};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("journal damaged: {0}")]
    Corrupt(Corruption),
    #[error("starting the journal writer thread: {0}")]
    Spawn(#[source] io::Error),
    /// The writer stopped (closed, or failed on a write or sync) before the
    /// record was on disk. The record must not be treated as durable.
    #[error("the journal stopped before the record was on disk")]
    Stopped,
}

/// `append` could not take the record: the queue is full (the disk is not
/// keeping up) or the journal has stopped. The switch declines with 96.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("journal queue full (or journal stopped)")]
pub struct JournalFull;

/// Counters since `open`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records accepted by `append`.
    pub appended: u64,
    /// Records written to a segment.
    pub written: u64,
    /// `fdatasync` calls for records (one per group commit).
    pub fsyncs: u64,
    /// Bytes written to segments.
    pub bytes: u64,
    /// Records accepted but not yet written (queued, or in the writer's
    /// hands).
    pub queue_depth: usize,
    /// Segments created since `open`.
    pub segments: u64,
    /// Of those, begun on a preallocated file.
    pub preallocated_segments: u64,
    /// Zero-filled files made ready by the preparer since `open`.
    pub prepared_segments: u64,
    /// The durable watermark.
    pub durable: u64,
    /// Bytes of all segments on disk (those found at open, plus what was
    /// written, minus what retention removed).
    pub disk_bytes: u64,
}

/// What the hot path and the writer share.
struct Shared {
    queue: ArrayQueue<(u64, Record)>,
    /// Sequence number of the next append.
    next_seq: AtomicU64,
    first_seq: u64,
    /// Records accepted and not yet written. An append reserves a slot
    /// here before it takes a sequence number, so its push onto the queue
    /// cannot fail: a sequence number once taken always reaches the writer,
    /// and the writer never waits for a gap that will not fill.
    reserved: AtomicUsize,
    closing: AtomicBool,
    /// The writer hit an I/O error and stopped; nothing more is accepted.
    failed: AtomicBool,
    /// Test hook: the writer leaves the queue alone while set.
    paused: AtomicBool,
    /// Durability `none`: nobody waits for the disk, so the writer wakes
    /// on its own every `LAZY_INTERVAL` instead of on every append (a
    /// futex wake per transaction cost more than the rest of the switch).
    lazy: bool,
    /// Durability `fsync`: the writer holds the records it encodes until
    /// the sync in flight ends, and that sync's end wakes it; appends then
    /// leave it asleep (a futex wake and a context switch per record saved).
    gathering: AtomicBool,
    written: AtomicU64,
    fsyncs: AtomicU64,
    bytes: AtomicU64,
    segments: AtomicU64,
    preallocated_segments: AtomicU64,
    /// Shared with the preparer thread.
    prepared_segments: Arc<AtomicU64>,
    disk_bytes: AtomicU64,
}

struct Inner {
    shared: Arc<Shared>,
    writer: Thread,
    join: Mutex<Option<JoinHandle<()>>>,
    durable: watch::Receiver<u64>,
}

/// Handle to the journal; clones share one writer.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl Journal {
    /// Creates `dir` if needed, recovers what is there (see [`Recovery`]),
    /// and starts the writer thread, which appends to a new segment.
    pub fn open(config: &JournalConfig) -> Result<(Journal, Recovery), JournalError> {
        let dir = &config.dir;
        fs::create_dir_all(dir).map_err(|source| JournalError::Io {
            path: dir.clone(),
            source,
        })?;
        let (recovery, fold) = recovery::recover(dir)?;
        let disk_bytes = segment::list_segments(dir)
            .map_err(|source| JournalError::Io {
                path: dir.clone(),
                source,
            })?
            .iter()
            .filter_map(|s| fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        // `ArrayQueue::new` panics on zero; config validation refuses zero,
        // this keeps a hand-built config from panicking.
        let capacity = config.queue_capacity.max(1);
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(capacity),
            next_seq: AtomicU64::new(recovery.next_seq),
            first_seq: recovery.next_seq,
            reserved: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            written: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            segments: AtomicU64::new(0),
            preallocated_segments: AtomicU64::new(0),
            prepared_segments: Arc::default(),
            disk_bytes: AtomicU64::new(disk_bytes),
            lazy: config.durability == Durability::None,
            gathering: AtomicBool::new(false),
        });
        // Everything recovered is on disk (the tail was synced if cut).
        let (tx, rx) = watch::channel(recovery.next_seq - 1);
        let tx = Arc::new(tx);
        let fsync = config.durability == Durability::Fsync;
        let syncer = if fsync {
            let histogram = metrics::histogram!(crate::telemetry::JOURNAL_FSYNC_SECONDS);
            let s = sync::Syncer::spawn(
                config.syncs_in_flight,
                tx.clone(),
                shared.clone(),
                histogram,
            )
            .map_err(JournalError::Spawn)?;
            Some(s)
        } else {
            None
        };
        let writer = writer::Writer::new(
            writer::Settings {
                dir: dir.clone(),
                fsync,
                segment_bytes: config.segment_bytes,
                retention: config.retention,
                max_bytes: config.max_bytes,
            },
            // Only a size bound needs to know what open work still needs:
            // without one the fold's memory and time are not spent.
            config.max_bytes.map(|_| fold),
            recovery.next_seq,
            shared.clone(),
            tx,
            syncer,
        );
        let join = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run())
            .map_err(JournalError::Spawn)?;
        let inner = Inner {
            shared,
            writer: join.thread().clone(),
            join: Mutex::new(Some(join)),
            durable: rx,
        };
        Ok((
            Journal {
                inner: Arc::new(inner),
            },
            recovery,
        ))
    }

    /// Queues `record` and returns its sequence number. Never blocks and
    /// never does I/O; the record is durable once [`Journal::durable`]
    /// reaches the returned number.
    pub fn append(&self, record: Record) -> Result<u64, JournalFull> {
        let seq = self.append_quiet(record)?;
        self.wake();
        Ok(seq)
    }

    /// As [`Journal::append`] without waking the writer: a caller that
    /// appends several records in one turn wakes it once, with
    /// [`Journal::wake`], instead of paying a futex wake per record.
    pub fn append_quiet(&self, record: Record) -> Result<u64, JournalFull> {
        let s = &self.inner.shared;
        if s.reserved.fetch_add(1, Ordering::AcqRel) >= s.queue.capacity() {
            s.reserved.fetch_sub(1, Ordering::AcqRel);
            return Err(JournalFull);
        }
        // Checked after reserving: `close` waits for `reserved` to reach
        // zero, so either it sees this append and writes it, or this append
        // sees `closing` and backs out. SeqCst orders the two flags.
        if s.closing.load(Ordering::SeqCst) || s.failed.load(Ordering::SeqCst) {
            s.reserved.fetch_sub(1, Ordering::AcqRel);
            return Err(JournalFull);
        }
        let seq = s.next_seq.fetch_add(1, Ordering::AcqRel);
        if s.queue.push((seq, record)).is_err() {
            // Unreachable: the reservation above keeps the queue from
            // being full. Panicking here would take a sequence number down
            // with it; stopping the journal makes the failure visible.
            s.failed.store(true, Ordering::SeqCst);
            tracing::error!(
                seq,
                "journal: queue full despite a reserved slot; journal stopped"
            );
            return Err(JournalFull);
        }
        Ok(seq)
    }

    /// Wakes the writer for what was appended quietly. Cheap when it is
    /// awake: unpark is an atomic swap, and a futex wake only when parked.
    pub fn wake(&self) {
        let s = &self.inner.shared;
        if s.lazy && s.reserved.load(Ordering::Relaxed) < s.queue.capacity() / 4 {
            return;
        }
        // Pairs with the writer's fence after it stops gathering: either
        // it sees `gathering` false here and unparks, or the writer's next
        // drain sees the record pushed before this fence.
        std::sync::atomic::fence(Ordering::SeqCst);
        if s.gathering.load(Ordering::Relaxed) {
            return;
        }
        self.inner.writer.unpark();
    }

    /// The durable watermark: the highest sequence number on disk. The
    /// sender closes when the writer stops.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.inner.durable.clone()
    }

    /// Waits until record `seq` is on disk. Fails if the journal stopped
    /// first, in which case the record must not be acted on as durable.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), JournalError> {
        let mut rx = self.durable();
        let reached = rx.wait_for(|&d| d >= seq).await.is_ok();
        if reached || *rx.borrow() >= seq {
            Ok(())
        } else {
            Err(JournalError::Stopped)
        }
    }

    pub fn stats(&self) -> JournalStats {
        let s = &self.inner.shared;
        JournalStats {
            appended: s.next_seq.load(Ordering::Relaxed) - s.first_seq,
            written: s.written.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            queue_depth: s.reserved.load(Ordering::Relaxed),
            segments: s.segments.load(Ordering::Relaxed),
            preallocated_segments: s.preallocated_segments.load(Ordering::Relaxed),
            prepared_segments: s.prepared_segments.load(Ordering::Relaxed),
            durable: *self.inner.durable.borrow(),
            disk_bytes: s.disk_bytes.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting records, writes and syncs everything accepted, and
    /// joins the writer thread. Later appends fail with [`JournalFull`].
    /// Blocks on disk I/O: call it from a blocking context at shutdown.
    pub fn close(&self) {
        self.inner.close();
    }

    /// After [`Journal::close`]: everything accepted was written and
    /// synced (false when the writer failed on a write or sync).
    pub fn all_synced(&self) -> bool {
        let s = &self.inner.shared;
        !s.failed.load(Ordering::SeqCst) && s.reserved.load(Ordering::SeqCst) == 0
    }

    /// [`Journal::close`], consuming this handle.
    pub fn shutdown(self) {
        self.close();
    }

    /// Test hook: stop or resume the writer's draining, to fill the queue
    /// or build one large batch deterministically.
    #[cfg(test)]
    fn pause_writer(&self, paused: bool) {
        self.inner.shared.paused.store(paused, Ordering::SeqCst);
        self.inner.writer.unpark();
    }
}

impl Inner {
    fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.writer.unpark();
        let handle = crate::sync::lock(&self.join).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("journal: writer thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    /// The last handle going away still writes what was accepted.
    fn drop(&mut self) {
        self.close();
    }
}

/// Makes directory changes (a new segment, a removed one) durable: a
/// synced file whose directory entry is not synced can vanish on crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
