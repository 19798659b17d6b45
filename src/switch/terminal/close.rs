//! A terminal's batch close (0500, answered 0510) and batch upload (0320,
//! answered 0330), answered here like an 0800: nothing goes upstream.
//!
//! Both are journaled as a `Request` record and its `Response`, which is
//! what the batch totals fold (`settlement::batch`): an upload answered 00
//! is in the batch's uploaded set, a close answered 00 closes the batch.
//! The totals compared are the switch's own, folded from the journal as
//! each record is appended; the answer leaves once its records are
//! durable, like every answer.

use std::time::Instant;

use tracing::warn;

use super::core::TerminalCore;
use super::records::{JournalAppend, journal_text, response};
use crate::codes;
use crate::iso8583::{Message, MessageBuilder};
use crate::switch::fraud::Score;
use crate::switch::settlement::batch::{CloseError, Totals};

/// The journal's route for what goes to no acquirer.
const NO_ACQUIRER: u16 = u16::MAX;

impl<J: JournalAppend> TerminalCore<J> {
    pub(super) fn close_batch(&mut self, msg: Message, started: Instant) {
        if !self.identified(&msg, started) {
            return;
        }
        let Some((key, content)) = self.accept_other(&msg, started) else {
            return;
        };
        let day = self.shared.business_day.clone();
        let pc = msg.processing_code();
        let profile = (self.shared.security.as_ref())
            .zip(msg.terminal_id())
            .and_then(|(sec, tid)| sec.profiles.find(tid.trimmed()));
        let codes = day.close_codes(profile.map(|p| p.name.as_str()));
        let Some(kind) = codes.kind(pc) else {
            warn!(peer = %self.peer, processing_code = ?pc, stan = msg.stan(),
                profile = profile.map(|p| p.name.as_str()),
                "0500 whose DE3 is neither close code of the terminal ([settlement] \
                 batch_close_code, batch_close_after_upload_code, or its profile's in \
                 [[settlement.terminal_profiles]]); answered 12");
            return self.respond(&msg, codes::INVALID_TRANSACTION, started);
        };
        let claimed = match Totals::read(&msg) {
            Ok(t) => t,
            Err(bad) => return self.format_error(&msg, bad.field, bad.reason, started),
        };
        let field = day.batch_field();
        let Some(batch) = crate::switch::settlement::capture(&msg, field).batch else {
            return self.format_error(
                &msg,
                usize::from(field),
                "no batch number ([settlement] batch_field)",
                started,
            );
        };
        if msg.has(49) && msg.currency().is_none() {
            return self.format_error(&msg, 49, "not a currency code", started);
        }
        let currency = msg.currency().unwrap_or(0);
        let batch_key = (journal_text(msg.terminal_id()), batch);
        let verdict = match day.ledger().compare(&batch_key, currency, kind, &claimed) {
            Ok(v) => v,
            Err(CloseError::CurrencyNeeded) => {
                return self.format_error(
                    &msg,
                    49,
                    "absent, and the batch holds more than one currency",
                    started,
                );
            }
        };
        let Some(txn) = self.journal_request(&msg, NO_ACQUIRER, &Score::default()) else {
            return self.respond(&msg, codes::SYSTEM_MALFUNCTION, started);
        };
        let code = if verdict.in_balance {
            codes::APPROVED
        } else {
            warn!(peer = %self.peer, terminal = %batch_key.0, batch = %batch_key.1,
                currency = verdict.currency, claimed_net = claimed.net(),
                switch_net = verdict.switch.net(), ?kind,
                "batch close out of balance; answered 95 with the switch's totals");
            codes::OUT_OF_BALANCE
        };
        // 00 closes the batch: the ledger folds this record.
        self.journal(response(txn, self.now.unix_ms, code));
        let de97 = verdict.switch.de97();
        // Without DE49 the batch's one currency was compared: named.
        let currency_text = format!("{:03}", verdict.currency);
        let Some(mut b) = MessageBuilder::response_to(&msg, super::ECHO_FIELDS) else {
            self.outcomes += 1;
            return;
        };
        b.set(39, &code);
        if field >= 2 {
            b.copy(&msg, usize::from(field));
        }
        // The switch's own totals, in the fields the terminal sent its in
        // (on 00 they balance with the terminal's).
        verdict.switch.write(&mut b, &de97);
        if !msg.has(49) && verdict.currency != 0 {
            b.set(49, currency_text.as_bytes());
        }
        if let Some(body) = self.write_packed(&b, msg.mti(), code, started) {
            self.remember(key, content, &self.wbuf[body], started);
        }
    }

    /// A 0320: one transaction of the terminal's batch, journaled and
    /// acknowledged; it counts in the uploaded set.
    pub(super) fn upload(&mut self, msg: Message, started: Instant) {
        if !self.identified(&msg, started) {
            return;
        }
        let Some((key, content)) = self.accept_other(&msg, started) else {
            return;
        };
        let field = self.shared.business_day.batch_field();
        if crate::switch::settlement::capture(&msg, field)
            .batch
            .is_none()
        {
            return self.format_error(
                &msg,
                usize::from(field),
                "no batch number ([settlement] batch_field)",
                started,
            );
        }
        if msg.processing_code().is_none() {
            return self.format_error(&msg, 3, "absent or not six digits", started);
        }
        if msg.amount_minor().is_none() {
            return self.format_error(&msg, 4, "absent or not a number", started);
        }
        let Some(txn) = self.journal_request(&msg, NO_ACQUIRER, &Score::default()) else {
            return self.respond(&msg, codes::SYSTEM_MALFUNCTION, started);
        };
        self.journal(response(txn, self.now.unix_ms, codes::APPROVED));
        if let Some(body) = self.respond_at(&msg, codes::APPROVED, started) {
            self.remember(key, content, &self.wbuf[body], started);
        }
    }

    /// DE11 and DE41 are there (the key, and whose batch it is); else 30,
    /// naming the field.
    fn identified(&mut self, msg: &Message, started: Instant) -> bool {
        for (field, present) in [
            (11, msg.stan().is_some()),
            (41, msg.terminal_id().is_some()),
        ] {
            if !present {
                self.format_error(msg, field, "absent or invalid", started);
                return false;
            }
        }
        true
    }

    /// Answers 30, naming the field in the log line.
    fn format_error(&mut self, msg: &Message, field: usize, reason: &str, started: Instant) {
        warn!(peer = %self.peer, mti = %msg.mti(), stan = msg.stan(), field,
            "format error in DE{field}: {reason}; answered 30");
        self.shared.events.malformed_answered_30.increment(1);
        self.respond(msg, codes::FORMAT_ERROR, started);
    }
}
