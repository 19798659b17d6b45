//! What a forwarded request's reply becomes: the host's answer passed on
//! (transcoded when the host speaks another spec), or for a failure 91 and,
//! when the host may have acted on it, a reversal queued in
//! store-and-forward.

use tracing::warn;

use super::core::{Pending, TerminalCore};
use super::records::{self, JournalAppend, journal_text};
use crate::codes;
use crate::iso8583::{Message, MessageBuilder};
use crate::switch::acquirer::{Failure, Outcome};
use crate::switch::journal::Record;
use crate::switch::saf::{SafEntry, SafKind};

impl<J: JournalAppend> TerminalCore<J> {
    pub(super) fn on_reply(&mut self, p: Pending, outcome: Outcome) {
        let (body, code, approval, settlement_date) = match outcome {
            Outcome::Answered {
                body,
                response_code,
                approval_code,
                settlement_date,
            } => (body, response_code, approval_code, settlement_date),
            Outcome::Failed(why) => return self.fail(p, why),
        };
        let at_ms = self.now.unix_ms;
        self.journal(Record::Response {
            txn: p.txn,
            at_ms,
            response_code: code,
            approval_code: journal_text(approval),
            stand_in: false,
            settlement_date,
        });
        if code != codes::APPROVED
            && let Some(card) = p.card
        {
            self.shared.fraud_state.record_decline(card, at_ms / 1000);
        }
        if self.gone {
            if code == codes::APPROVED && matches!(p.mti.match_class(), 100 | 200) {
                self.reverse_undeliverable(&p.request, p.acquirer, p.txn);
            }
            self.outcomes += 1;
            return;
        }
        if !std::ptr::eq(p.host_spec, self.spec) {
            return self.transcode_answer(p, body, code);
        }
        if !self.write_body(&body, p.mti, code, p.started) {
            // The host answered: what it did must be undone.
            return self.fail(p, Failure::LinkLost);
        }
        self.remember(p.key, p.content, &body, p.started);
        if code == codes::APPROVED {
            self.approval_buffered(p);
        }
    }

    fn transcode_answer(&mut self, p: Pending, body: bytes::Bytes, code: [u8; 2]) {
        let answer = match Message::parse(body, p.host_spec) {
            Ok(m) => m,
            Err(e) => {
                warn!(peer = %self.peer, "host answer unreadable: {e}");
                return self.fail(p, Failure::LinkLost);
            }
        };
        let mut b = MessageBuilder::new(self.spec, answer.mti());
        b.copy_all(&answer);
        if let Some(body) = self.write_packed(&b, p.mti, code, p.started) {
            self.remember(p.key, p.content, &self.wbuf[body], p.started);
            if code == codes::APPROVED {
                self.approval_buffered(p);
            }
        }
    }

    /// A forwarded request that got no answer: 91 (or 94 for a duplicate
    /// the link caught), a stand-in approval where allowed, and a reversal
    /// when the host may have acted on it.
    pub(super) fn fail(&mut self, p: Pending, why: Failure) {
        if self.unmaced_failure(why) {
            // The HSM did not answer the link: the 96 goes without a MAC.
            self.hsm.unmaced = true;
            self.fail(p, why);
            self.hsm.unmaced = false;
            return;
        }
        let code = match why {
            Failure::Duplicate => codes::DUPLICATE,
            Failure::Timeout
            | Failure::LinkDown
            | Failure::LinkLost
            | Failure::LinkBusy
            | Failure::BadAnswerMac => codes::ISSUER_UNAVAILABLE,
            // DESIGN.md: the HSM not answering is a 96.
            Failure::HsmUnavailable | Failure::AnswerUnverified => codes::SYSTEM_MALFUNCTION,
        };
        // The request parsed when it arrived; it parses again.
        let Ok(request) = Message::parse(p.request.clone(), self.spec) else {
            self.outcomes += 1;
            return;
        };
        // The host may have acted on it: reverse, whatever the terminal
        // is told.
        let reverse = matches!(
            why,
            Failure::Timeout
                | Failure::LinkLost
                | Failure::BadAnswerMac
                | Failure::AnswerUnverified
        );
        if reverse {
            self.queue_reversal(&request, p.acquirer, p.txn, code);
        }
        let at_ms = self.now.unix_ms;
        let final_record = if reverse {
            Record::Timeout { txn: p.txn, at_ms }
        } else {
            records::response(p.txn, at_ms, code)
        };
        if self.gone {
            // Nobody to approve for in stand-in.
            self.journal(final_record);
            self.outcomes += 1;
            return;
        }
        let body = if code == codes::ISSUER_UNAVAILABLE
            && matches!(p.mti.match_class(), 100 | 200)
            && self.stand_in(
                &request,
                (p.key, p.content),
                p.acquirer,
                p.points,
                p.txn,
                p.started,
            ) {
            None
        } else {
            self.journal(final_record);
            self.respond_at(&request, code, p.started)
        };
        if let Some(body) = body
            && code != codes::DUPLICATE
        {
            self.remember(p.key, p.content, &self.wbuf[body], p.started);
        }
    }

    /// Queues the 0420 reversal of a request the host may have acted on.
    pub(super) fn queue_reversal(
        &mut self,
        request: &Message,
        acquirer: u16,
        txn: u64,
        reason: [u8; 2],
    ) {
        let shared = self.shared.clone();
        let Some(a) = shared.acquirers.get(acquirer as usize) else {
            return;
        };
        let Some((body, key)) = crate::switch::saf::reversal_of(request, a.spec, reason) else {
            warn!(peer = %self.peer, acquirer = %a.name, "reversal can not be built");
            return;
        };
        let entry = SafEntry::new(txn, SafKind::Reversal, body, key, self.now.unix_ms);
        // Journaled first: if the queue is full, recovery still knows.
        self.journal(Record::ReversalQueued {
            txn,
            at_ms: self.now.unix_ms,
            acquirer,
            reason,
        });
        if a.saf.push(entry).is_err() {
            warn!(acquirer = %a.name, stan = key.stan(), "reversal not queued now: store-and-forward queue full; it resumes from the journal on restart");
            return;
        }
        self.shared.events.reversals_queued.increment(1);
    }
}
