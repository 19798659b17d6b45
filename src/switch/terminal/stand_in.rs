//! Stand-in: when no acquirer is up, or the host did not answer, an
//! authorization its acquirer allows for this amount and fraud score is
//! approved here (DE38 `Snnnnn`), and an advice (0120/0220) is queued to
//! tell the host later.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::warn;

use super::ECHO_FIELDS;
use super::core::TerminalCore;
use super::records::JournalAppend;
use crate::codes;
use crate::iso8583::{Message, MessageBuilder};
use crate::switch::acquirer::MatchKey;
use crate::switch::journal::Record;
use crate::switch::saf::{SafEntry, SafKind};

impl<J: JournalAppend> TerminalCore<J> {
    /// Approves `msg` in stand-in if its acquirer allows it, queueing the
    /// advice; the approval is kept for repeats under `key` and `content`.
    /// Returns whether it approved (and so answered).
    pub(super) fn stand_in(
        &mut self,
        msg: &Message,
        (key, content): (MatchKey, u64),
        acquirer: u16,
        points: u16,
        txn: u64,
        started: Instant,
    ) -> bool {
        let shared = self.shared.clone();
        let Some(a) = shared.acquirers.get(acquirer as usize) else {
            return false;
        };
        let si = &a.stand_in;
        let amount = msg.amount_minor().unwrap_or(u64::MAX);
        if !si.enabled || amount > si.max_amount || points > si.max_fraud_points {
            return false;
        }
        let n = shared.stand_in_seq.fetch_add(1, Ordering::Relaxed) % 100_000;
        let mut approval = crate::switch::journal::ApprovalCode::new();
        // "S" and five digits: the six characters DE38 holds.
        let _ = write!(approval, "S{n:05}");
        let Some((body, advice_key)) =
            crate::switch::saf::advice_of(msg, a.spec, approval.as_bytes())
        else {
            return false;
        };
        let Some(mut b) = MessageBuilder::response_to(msg, ECHO_FIELDS) else {
            return false;
        };
        let at_ms = self.now.unix_ms;
        // Journaled before it is queued: an advice in SAF always has its
        // record, so recovery knows of it.
        if !self.journal(Record::AdviceQueued {
            txn,
            at_ms,
            acquirer,
            mti: advice_key.class(),
        }) {
            warn!(acquirer = %a.name, "stand-in refused: the journal refused its advice");
            return false;
        }
        let entry = SafEntry::new(txn, SafKind::Advice, body, advice_key, at_ms);
        if a.saf.push(entry).is_err() {
            warn!(acquirer = %a.name, "stand-in refused: store-and-forward queue full");
            self.journal(Record::AdviceExpired { txn, at_ms });
            return false;
        }
        // The advice is on its way: the host will book the approval, so it
        // is given even if this record is refused (logged: the journal
        // then lacks the transaction's final outcome).
        if !self.journal(Record::Response {
            txn,
            at_ms,
            response_code: codes::APPROVED,
            approval_code: approval,
            stand_in: true,
            settlement_date: 0,
        }) {
            tracing::error!(
                txn,
                "journal refused a stand-in approval's record; approved, advice queued"
            );
        }
        b.set(38, approval.as_bytes()).set(39, &codes::APPROVED);
        shared.events.stand_in_approved.increment(1);
        // Answered (counted) even if it could not be packed: the approval
        // is journaled and advised.
        if let Some(answer) = self.write_packed(&b, msg.mti(), codes::APPROVED, started) {
            self.remember(key, content, &self.wbuf[answer], started);
        }
        true
    }
}
