//! Store-and-forward: reversals (0420) and advices (0120/0220) that must
//! reach an acquirer eventually. Per acquirer, a FIFO queue whose head goes
//! through any link that is up, one at a time, and is resent until the
//! host acknowledges it. After the first send an entry goes as a repeat
//! (0421, 0121, 0221). Bounded: `max_entries` per acquirer (beyond it
//! [`SafHandle::push`] refuses), `max_attempts` sends, `expiry` age; what is
//! given up is counted, logged and journaled as expired.
//!
//! While no link is up the queue waits; it drains after sign-on.
//!
//! The decisions live in [`SafCore`] (`core.rs`: no I/O, no clock, tested
//! in virtual time); `driver.rs` is the tokio task that feeds it (entries,
//! link changes, answers, its timer) and carries out what it decides.
//! `journal.rs` turns its events into journal records and, after a restart,
//! queues again what the journal says is still owed.

mod config;
mod core;
mod driver;
mod journal;
pub mod messages;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::iso8583::Spec;
use crate::switch::acquirer::{LinkHandle, MatchKey};

pub use self::core::{Answer, SafCore};
pub use config::SafConfig;
pub(crate) use config::SafFile;
pub use journal::{journal_sink, record_of, resume_from_journal};
pub use messages::{advice_from_terminal, advice_of, from_journal, reversal_of};

/// One message to deliver.
#[derive(Clone, Debug)]
pub struct SafEntry {
    /// The transaction it belongs to (journal id).
    pub txn: u64,
    pub kind: SafKind,
    /// The message in the host's spec, as first sent (0420, 0120, 0220).
    pub body: Bytes,
    pub key: MatchKey,
    /// Sends so far (also across restarts, from the journal).
    pub attempts: u32,
    /// Unix ms when it was first queued (from the journal after a
    /// restart): `expiry_s` counts from here.
    pub queued_at_ms: u64,
    /// Where the host's acknowledging answer goes, for entries whose
    /// answer carries more than its DE39 (the 0530's DE66): `txn` and the
    /// answer, or an empty one when the entry is given up. Bounded by its
    /// sender; `None` for reversals and advices.
    pub answer_to: Option<mpsc::Sender<(u64, Bytes)>>,
}

impl SafEntry {
    /// A new entry, not sent yet.
    pub fn new(txn: u64, kind: SafKind, body: Bytes, key: MatchKey, queued_at_ms: u64) -> SafEntry {
        SafEntry {
            txn,
            kind,
            body,
            key,
            attempts: 0,
            queued_at_ms,
            answer_to: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafKind {
    Reversal,
    Advice,
    /// An acquirer reconciliation (0520), `txn` its own number, not a
    /// transaction's: its state is kept in the store's `reconciliations`
    /// table, not in the journal.
    Reconciliation,
}

impl SafKind {
    pub fn name(self) -> &'static str {
        match self {
            SafKind::Reversal => "reversal",
            SafKind::Advice => "advice",
            SafKind::Reconciliation => "reconciliation",
        }
    }
}

/// Why an entry was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// Older than `expiry`.
    Age,
    /// Sent `max_attempts` times without an acknowledgement.
    Attempts,
    /// Not reachable: the handle refuses an entry the core has no room
    /// for. Reported rather than lost should that ever break.
    QueueFull,
}

impl GiveUp {
    pub fn name(self) -> &'static str {
        match self {
            GiveUp::Age => "expired",
            GiveUp::Attempts => "out of attempts",
            GiveUp::QueueFull => "queue full",
        }
    }
}

/// What happened to an entry; each is journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SafEvent {
    Sent {
        txn: u64,
        kind: SafKind,
        attempt: u32,
    },
    Acked {
        txn: u64,
        kind: SafKind,
        response_code: [u8; 2],
    },
    Expired {
        txn: u64,
        kind: SafKind,
        /// Sends it had.
        attempts: u32,
        reason: GiveUp,
    },
}

/// Where SAF events go (the journal, in the switch; a channel in tests).
pub type EventSink = Arc<dyn Fn(SafEvent) + Send + Sync>;

/// Queue of one acquirer, as the rest of the switch sees it.
#[derive(Clone)]
pub struct SafHandle {
    tx: mpsc::Sender<SafEntry>,
    /// Entries pushed and not yet acknowledged or given up, wherever they
    /// are (the channel or the core): reserved by `push`, released by the
    /// driver when an entry leaves the core. Never above `max_entries`, so
    /// an entry the handle accepted always finds room in the core.
    depth: Arc<AtomicUsize>,
    max_entries: usize,
}

impl SafHandle {
    /// A queue its caller reads instead of a SAF task (unit tests of the
    /// terminal core; the deterministic simulation). The caller plays the
    /// SAF and calls [`SafHandle::entry_left`] as each entry is
    /// acknowledged or given up.
    pub fn channel(max_entries: usize) -> (SafHandle, mpsc::Receiver<SafEntry>) {
        let max_entries = max_entries.max(1);
        let (tx, rx) = mpsc::channel(max_entries);
        let depth = Arc::new(AtomicUsize::new(0));
        (
            SafHandle {
                tx,
                depth,
                max_entries,
            },
            rx,
        )
    }

    /// An entry taken from a [`SafHandle::channel`] queue has left it
    /// (acknowledged or given up): its place is free again.
    pub fn entry_left(&self) {
        release(&self.depth);
    }

    /// Queues an entry without waiting; hands it back when the acquirer's
    /// queue holds `max_entries` already (or the SAF has stopped).
    pub fn push(&self, e: SafEntry) -> Result<(), SafEntry> {
        let reserved = self
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_entries).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(e);
        }
        self.tx.try_send(e).map_err(|err| {
            release(&self.depth);
            match err {
                mpsc::error::TrySendError::Full(e) => {
                    // The channel holds as many as may be reserved.
                    debug_assert!(
                        false,
                        "store-and-forward channel full under its reservation"
                    );
                    e
                }
                mpsc::error::TrySendError::Closed(e) => e,
            }
        })
    }

    /// Entries waiting (queued and not yet acknowledged or expired).
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }
}

/// Gives back the reservation of an entry that left.
fn release(depth: &AtomicUsize) {
    let before = depth.fetch_sub(1, Ordering::AcqRel);
    assert!(before > 0, "store-and-forward depth released below zero");
}

pub struct SafSettings {
    pub acquirer: String,
    pub spec: &'static Spec,
    pub config: SafConfig,
}

/// Starts the SAF task of one acquirer sending through `links`.
pub fn spawn(
    settings: SafSettings,
    links: Vec<LinkHandle>,
    events: EventSink,
    stop: CancellationToken,
) -> (SafHandle, tokio::task::JoinHandle<()>) {
    // Nobody changes these links: the sender goes at once.
    let (_, rx) = tokio::sync::watch::channel(links);
    spawn_watching(settings, rx, events, stop)
}

/// Starts the SAF task of one acquirer sending through the links `links`
/// holds, which a reload changes.
pub fn spawn_watching(
    settings: SafSettings,
    links: tokio::sync::watch::Receiver<Vec<LinkHandle>>,
    events: EventSink,
    stop: CancellationToken,
) -> (SafHandle, tokio::task::JoinHandle<()>) {
    let current = links.borrow().clone();
    let max_entries = settings.config.max_entries;
    let (tx, rx) = mpsc::channel(max_entries.max(1));
    let depth = Arc::new(AtomicUsize::new(0));
    let core = SafCore::new(settings.config, settings.spec);
    let task = tokio::spawn(driver::run(driver::Driver {
        acquirer: settings.acquirer,
        core,
        links: current,
        links_changes: Some(links),
        events,
        rx,
        depth: depth.clone(),
        given_up_to: std::collections::HashMap::new(),
        stop,
    }));
    (
        SafHandle {
            tx,
            depth,
            max_entries,
        },
        task,
    )
}
