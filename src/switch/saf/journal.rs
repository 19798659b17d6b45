//! Store-and-forward and the journal: each event becomes a record, so a
//! restart knows what is still owed; on start, what is owed is queued
//! again.

use std::sync::Arc;

use tracing::info;

use super::{EventSink, SafEntry, SafEvent, SafKind};
use crate::switch::acquirer::AcquirerHandle;
use crate::switch::journal::{Journal, Record, Recovery};

/// The journal record of an event that happened at `at_ms`; `None` for a
/// reconciliation, which the store keeps (its `txn` is no transaction's).
pub fn record_of(event: &SafEvent, at_ms: u64) -> Option<Record> {
    Some(match *event {
        SafEvent::Sent {
            txn,
            kind: SafKind::Reversal,
            attempt,
        } => Record::ReversalSent {
            txn,
            at_ms,
            attempt,
        },
        SafEvent::Sent {
            txn,
            kind: SafKind::Advice,
            attempt,
        } => Record::AdviceSent {
            txn,
            at_ms,
            attempt,
        },
        SafEvent::Acked {
            txn,
            kind: SafKind::Reversal,
            response_code,
        } => Record::ReversalAcked {
            txn,
            at_ms,
            response_code,
        },
        SafEvent::Acked {
            txn,
            kind: SafKind::Advice,
            response_code,
        } => Record::AdviceAcked {
            txn,
            at_ms,
            response_code,
        },
        SafEvent::Expired {
            txn,
            kind: SafKind::Reversal,
            ..
        } => Record::ReversalExpired { txn, at_ms },
        SafEvent::Expired {
            txn,
            kind: SafKind::Advice,
            ..
        } => Record::AdviceExpired { txn, at_ms },
        SafEvent::Sent {
            kind: SafKind::Reconciliation,
            ..
        }
        | SafEvent::Acked {
            kind: SafKind::Reconciliation,
            ..
        }
        | SafEvent::Expired {
            kind: SafKind::Reconciliation,
            ..
        } => return None,
    })
}

/// The sink that journals every event, so a restart resumes where the
/// queue stopped.
pub fn journal_sink(journal: Journal) -> EventSink {
    Arc::new(move |e| {
        let Some(record) = record_of(&e, crate::clock::unix_now_ms()) else {
            return;
        };
        let txn = record.txn();
        if journal.append(record).is_err() {
            tracing::error!(txn, "journal refused a store-and-forward record");
        }
    })
}

/// Puts back into store-and-forward what the journal says is still owed:
/// reversals of requests forwarded before a crash without a final answer,
/// and reversals and advices queued but never acknowledged. `acquirers`
/// are indexed as the journal numbers them; the `ReversalQueued` records
/// of the new reversals go to `append`, stamped `at_ms` (the switch passes
/// its journal and the wall clock; the simulation its own).
pub fn resume_from_journal(
    acquirers: &[AcquirerHandle],
    recovery: &Recovery,
    at_ms: u64,
    mut append: impl FnMut(Record),
) {
    use crate::switch::journal::SafKind as JKind;
    let mut pushed = 0usize;
    let mut refused = 0usize;
    let mut push = |a: &AcquirerHandle, entry: SafEntry| {
        if a.saf.push(entry).is_ok() {
            pushed += 1;
        } else {
            refused += 1;
        }
    };
    for u in &recovery.unfinished {
        let Some(a) = acquirers.get(u.acquirer as usize) else {
            continue;
        };
        let reason = crate::codes::ISSUER_UNAVAILABLE;
        let Some((body, key)) = super::from_journal(&u.request, Some(reason), None, a.spec) else {
            continue;
        };
        append(Record::ReversalQueued {
            txn: u.txn,
            at_ms,
            acquirer: u.acquirer,
            reason,
        });
        let entry = SafEntry::new(u.txn, SafKind::Reversal, body, key, u.forwarded_at_ms);
        push(a, entry);
    }
    for e in &recovery.saf {
        let Some(a) = acquirers.get(e.acquirer as usize) else {
            continue;
        };
        let (kind, rebuilt) = match e.kind {
            JKind::Reversal { reason } => (
                SafKind::Reversal,
                super::from_journal(&e.request, Some(reason), None, a.spec),
            ),
            JKind::Advice { mti } => (
                SafKind::Advice,
                super::from_journal(&e.request, None, Some(mti), a.spec),
            ),
        };
        let Some((body, key)) = rebuilt else { continue };
        let entry = SafEntry {
            attempts: e.attempts,
            ..SafEntry::new(e.txn, kind, body, key, e.queued_at_ms)
        };
        push(a, entry);
    }
    if pushed > 0 || !recovery.unfinished.is_empty() {
        info!(
            reversals_for_unfinished = recovery.unfinished.len(),
            saf_entries = recovery.saf.len(),
            queued = pushed,
            refused_queue_full = refused,
            "journal recovery: store-and-forward resumes"
        );
    } else {
        info!(
            unfinished = recovery.unfinished.len(),
            saf_entries = recovery.saf.len(),
            "journal recovery: nothing owed to store-and-forward"
        );
    }
}
