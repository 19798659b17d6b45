//! Cards and BINs an operator blocked (`switch::blocks`): an
//! authorization of one is declined before routing, with the list's
//! response code (62 by default), journaled as any request is (its
//! `Request` record with no route, then its `Response`).

use std::time::Instant;

use super::core::TerminalCore;
use super::records::JournalAppend;
use crate::codes;
use crate::iso8583::Message;
use crate::switch::fraud::Score;

impl<J: JournalAppend> TerminalCore<J> {
    /// Answers `msg` if its card (`pan`, its digits) or BIN is blocked;
    /// true when it did. A field read while nothing is blocked.
    pub(super) fn refuse_blocked(
        &mut self,
        msg: &Message,
        pan: &[u8],
        card: [u8; 16],
        started: Instant,
    ) -> bool {
        let blocks = &self.shared.blocks;
        if blocks.is_empty() {
            return false;
        }
        let Some(kind) = blocks.check_hashed(pan, &card) else {
            return false;
        };
        let code = blocks.response_code;
        tracing::debug!(peer = %self.peer, kind = kind.name(), "blocked by an operator");
        match self.journal_request_hashed(msg, u16::MAX, &Score::default(), card) {
            Some(txn) => self.respond_final(msg, txn, code, started),
            None => self.respond(msg, codes::SYSTEM_MALFUNCTION, started),
        }
        true
    }
}
