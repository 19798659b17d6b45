//! Group commit pipelined (durability `fsync`).
//!
//! The writer thread only writes: it hands "everything up to sequence N is
//! written" to the sync threads, and goes back to the queue. An idle sync
//! thread takes the newest written sequence number, calls `fdatasync`, and
//! publishes that number as durable. While a sync is under way the next
//! group is already being gathered and encoded; while every sync thread
//! is busy the writer holds it unwritten and each sync's end wakes it
//! (`Syncer::busy`, `Syncer::set_writer`), so the group goes in one write.
//!
//! One sync thread by default (`syncs_in_flight`): on this machine's disk
//! several `fdatasync` calls in flight complete more commits a second
//! (about three times as many with four, in write + fdatasync loops), but
//! each takes longer and covers fewer records, and the switch's closed
//! loop, where every transaction waits for two commits, measured slower
//! with 2 or 4 than with 1 (docs/BENCHMARKS.md). A disk whose flushes
//! overlap better may do better with more.
//!
//! Why it is safe: an `fdatasync` that starts after `write` returned for
//! records up to N makes them all durable when it returns (it writes back
//! every dirty page of the file and waits for those already under
//! writeback), so publishing N, or the highest N of the syncs that
//! returned, never claims a record that is not on disk. Each sync thread
//! opens the segment itself: a write-back error is then reported to every
//! descriptor that syncs after it, not only to the first one to ask (the
//! kernel's error cursor is per open file), so no sync can return success
//! for pages another one saw fail. A failed sync stops the journal, and
//! nothing is published after it.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::watch;

use super::Shared;

/// The segment being written, as the sync threads know it (shared: a sync
/// takes it without copying its path).
struct Segment {
    path: PathBuf,
    /// Bumped at each roll, so a sync thread knows to reopen.
    generation: u64,
}

#[derive(Default)]
struct State {
    segment: Option<Arc<Segment>>,
    /// Highest sequence number whose record `write` has put in the
    /// current segment.
    written: u64,
    /// Highest sequence number a started sync covers.
    claimed: u64,
    in_flight: usize,
    /// A sync failed: nothing more is published and the writer stops.
    failed: bool,
    stop: bool,
}

struct Pool {
    state: Mutex<State>,
    /// Signalled when there is something to sync, or to stop.
    work: Condvar,
    /// Signalled when a sync finishes (the writer waits for quiet at close).
    done: Condvar,
    durable: Arc<watch::Sender<u64>>,
    journal: Arc<Shared>,
    fsync_seconds: metrics::Histogram,
    /// How many sync threads there are.
    threads: usize,
    /// The writer thread, unparked when a sync ends: while every sync
    /// thread is busy it gathers records without writing them, and
    /// sleeps until one is free (`Syncer::busy`).
    writer: std::sync::OnceLock<std::thread::Thread>,
}

pub(super) struct Syncer {
    pool: Arc<Pool>,
    threads: Vec<JoinHandle<()>>,
}

impl Syncer {
    /// Starts `threads` sync threads (at least one), publishing on
    /// `durable`.
    pub(super) fn spawn(
        threads: usize,
        durable: Arc<watch::Sender<u64>>,
        journal: Arc<Shared>,
        fsync_seconds: metrics::Histogram,
    ) -> io::Result<Syncer> {
        let pool = Arc::new(Pool {
            state: Mutex::default(),
            work: Condvar::new(),
            done: Condvar::new(),
            durable,
            journal,
            fsync_seconds,
            threads: threads.max(1),
            writer: std::sync::OnceLock::new(),
        });
        let mut handles = Vec::with_capacity(threads.max(1));
        for i in 0..threads.max(1) {
            let pool = pool.clone();
            let handle = std::thread::Builder::new()
                .name(format!("journal-sync-{i}"))
                .spawn(move || pool.run())?;
            handles.push(handle);
        }
        Ok(Syncer {
            pool,
            threads: handles,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.pool.state)
    }

    /// The writer thread calls this first: each sync's end unparks it.
    pub(super) fn set_writer(&self, writer: std::thread::Thread) {
        // Set once, by the one writer; a second call changes nothing.
        let _ = self.pool.writer.set(writer);
    }

    /// Every sync thread is syncing: what the writer writes now waits for
    /// one of them to end anyway, so it may gather instead. Each sync's
    /// end unparks the writer (after `set_writer`).
    pub(super) fn busy(&self) -> bool {
        let st = self.state();
        !st.failed && !st.stop && st.in_flight >= self.pool.threads
    }

    /// Records from now on go to the segment at `path`. The caller has
    /// made everything before them durable itself ([`Syncer::publish`]).
    pub(super) fn start_segment(&self, path: PathBuf) {
        let mut st = self.state();
        let generation = st.segment.as_ref().map_or(0, |s| s.generation + 1);
        st.segment = Some(Arc::new(Segment { path, generation }));
    }

    /// Records up to `last_seq` are written to the current segment: an idle
    /// sync thread makes them durable. Err once a sync has failed.
    pub(super) fn written(&self, last_seq: u64) -> io::Result<()> {
        let mut st = self.state();
        if st.failed {
            return Err(io::Error::other("an earlier fdatasync failed"));
        }
        assert!(last_seq >= st.written, "journal: written went back");
        st.written = last_seq;
        drop(st);
        self.pool.work.notify_one();
        Ok(())
    }

    /// Publishes `last_seq` as durable after the writer synced the segment
    /// itself (at a roll or at close), unless a sync has failed.
    pub(super) fn publish(&self, last_seq: u64) -> io::Result<()> {
        let st = self.state();
        if st.failed {
            return Err(io::Error::other("an earlier fdatasync failed"));
        }
        self.pool.publish(&st, last_seq);
        Ok(())
    }

    /// Waits until no sync is in flight, so that the writer's own sync at
    /// a roll is the last word on the old segment.
    pub(super) fn quiesce(&self) -> io::Result<()> {
        let mut st = self.state();
        while st.in_flight > 0 {
            st = match self.pool.done.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
        // Nothing is left for the pool on the old segment: what it had
        // not claimed, the caller's own sync covers.
        st.claimed = st.written;
        if st.failed {
            return Err(io::Error::other("an earlier fdatasync failed"));
        }
        Ok(())
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.state().stop = true;
        self.pool.work.notify_all();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("journal: a sync thread panicked");
            }
        }
    }
}

impl Pool {
    fn run(&self) {
        let mut file: Option<(u64, File)> = None;
        loop {
            let (target, segment) = {
                let mut st = crate::sync::lock(&self.state);
                loop {
                    if st.stop || st.failed {
                        return;
                    }
                    if st.written > st.claimed && st.segment.is_some() {
                        break;
                    }
                    st = match self.work.wait(st) {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                }
                let target = st.written;
                st.claimed = target;
                st.in_flight += 1;
                (target, st.segment.clone())
            };
            let result = match segment {
                Some(seg) => self.sync(&mut file, &seg),
                None => Ok(()),
            };
            let mut st = crate::sync::lock(&self.state);
            st.in_flight -= 1;
            match result {
                Ok(()) if !st.failed => self.publish(&st, target),
                Ok(()) => {}
                Err(e) => {
                    st.failed = true;
                    self.journal.failed.store(true, Ordering::SeqCst);
                    tracing::error!(error = %e,
                        "journal: fdatasync failed; journal STOPPED, new transactions are declined");
                    self.work.notify_all();
                }
            }
            drop(st);
            self.done.notify_all();
            if let Some(w) = self.writer.get() {
                w.unpark();
            }
        }
    }

    /// Syncs `seg`, opening it first if this thread has not yet.
    fn sync(&self, file: &mut Option<(u64, File)>, seg: &Segment) -> io::Result<()> {
        if file.as_ref().is_none_or(|(g, _)| *g != seg.generation) {
            // Opened for writing only so that the descriptor may be synced
            // on every platform; nothing is written through it.
            let f = OpenOptions::new().write(true).open(&seg.path)?;
            *file = Some((seg.generation, f));
        }
        let Some((_, f)) = file.as_ref() else {
            unreachable!("opened above");
        };
        let started = Instant::now();
        f.sync_data()?;
        self.fsync_seconds.record(started.elapsed());
        self.journal.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Raises the durable watermark to `seq` (it only grows). Called with
    /// the state locked, so that no publication passes a failure.
    fn publish(&self, st: &State, seq: u64) {
        debug_assert!(!st.failed);
        self.durable.send_if_modified(|durable| {
            if seq > *durable {
                *durable = seq;
                true
            } else {
                false
            }
        });
    }
}
