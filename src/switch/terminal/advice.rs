//! Advices from terminals (0120, 0220, 0420 and their repeats): journaled,
//! queued in store-and-forward for the card's acquirer, and acknowledged
//! at once (0130/0230/0430); the host gets them later.

use std::time::Instant;

use tracing::warn;

use super::core::TerminalCore;
use super::records::{JournalAppend, response};
use crate::codes;
use crate::iso8583::Message;
use crate::switch::acquirer::MatchKey;
use crate::switch::fraud::Score;
use crate::switch::journal::Record;
use crate::switch::saf::{SafEntry, SafKind};

impl<J: JournalAppend> TerminalCore<J> {
    pub(super) fn advise(&mut self, msg: Message, started: Instant) {
        let Some((key, content)) = self.accept_other(&msg, started) else {
            return;
        };
        self.store_advice(&msg, key, content, started);
    }

    fn store_advice(&mut self, msg: &Message, key: MatchKey, content: u64, started: Instant) {
        let shared = self.shared.clone();
        let pan = msg.pan();
        let digits = pan.as_ref().map_or(&[][..], |p| p.digits());
        let Some(target) = shared.routes.lookup(digits) else {
            return self.respond(msg, codes::NO_ROUTE, started);
        };
        let acquirer = target.primary;
        let Some(a) = shared.acquirers.get(acquirer as usize) else {
            return self.respond(msg, codes::NO_ROUTE, started);
        };
        let Some((body, saf_key)) = crate::switch::saf::advice_from_terminal(msg, a.spec) else {
            return self.respond(msg, codes::FORMAT_ERROR, started);
        };
        let Some(txn) = self.journal_request(msg, acquirer, &Score::default()) else {
            return self.respond(msg, codes::SYSTEM_MALFUNCTION, started);
        };
        let at_ms = self.now.unix_ms;
        if !self.journal(Record::AdviceQueued {
            txn,
            at_ms,
            acquirer,
            mti: saf_key.class(),
        }) {
            return self.respond(msg, codes::SYSTEM_MALFUNCTION, started);
        }
        // A terminal's 0420 goes as an advice: the journal can rebuild it
        // after a restart only as the message it was, not as a reversal
        // the switch builds.
        let entry = SafEntry::new(txn, SafKind::Advice, body, saf_key, at_ms);
        if a.saf.push(entry).is_err() {
            warn!(acquirer = %a.name, "advice refused: store-and-forward queue full");
            self.journal(Record::AdviceExpired { txn, at_ms });
            return self.respond_final(msg, txn, codes::SYSTEM_MALFUNCTION, started);
        }
        self.journal(response(txn, at_ms, codes::APPROVED));
        if let Some(body) = self.respond_at(msg, codes::APPROVED, started) {
            self.remember(key, content, &self.wbuf[body], started);
        }
    }
}
