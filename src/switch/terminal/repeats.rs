//! Repeats: a request answered recently (an x01 repeat, or a resend) gets
//! its original answer again without going upstream; the same key with
//! other content is a duplicate (94).

use std::time::Instant;

use super::core::TerminalCore;
use super::records::JournalAppend;
use crate::codes;
use crate::iso8583::Message;
use crate::switch::acquirer::MatchKey;
use crate::switch::repeats::{Seen, content_hash};

impl<J: JournalAppend> TerminalCore<J> {
    /// `None` when the request was answered here, else its content
    /// fingerprint (for remembering its answer).
    pub(super) fn answered_before(
        &mut self,
        msg: &Message,
        key: &MatchKey,
        started: Instant,
    ) -> Option<u64> {
        let content = content_hash(msg);
        match self.shared.recent.check(key, content, started) {
            Seen::New => Some(content),
            Seen::Conflict => {
                self.respond(msg, codes::DUPLICATE, started);
                None
            }
            Seen::Repeat(answer) => {
                let code = Message::parse(answer.clone(), self.spec)
                    .ok()
                    .and_then(|m| m.response_code())
                    .unwrap_or(codes::APPROVED);
                self.shared.events.repeats_answered.increment(1);
                if !self.write_body(&answer, msg.mti(), code, started) {
                    self.outcomes += 1;
                }
                None
            }
        }
    }

    /// Keeps an answer (unframed, in the terminal's spec) for repeats.
    pub(super) fn remember(&self, key: MatchKey, content: u64, answer: &[u8], started: Instant) {
        self.shared.recent.remember(key, content, answer, started);
    }
}
