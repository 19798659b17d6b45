//! Building answers and framing them into the write buffer. Every answer
//! the core gives goes through here, so each request's one outcome is
//! counted here (`outcomes`), as is its latency.

use std::ops::Range;
use std::time::Instant;

use tracing::warn;

use super::ECHO_FIELDS;
use super::core::TerminalCore;
use super::records::{self, JournalAppend};
use crate::iso8583::{Message, MessageBuilder, Mti};

impl<J: JournalAppend> TerminalCore<J> {
    /// Answers `code` to `request`, its echo fields copied.
    pub(super) fn respond(&mut self, request: &Message, code: [u8; 2], started: Instant) {
        self.respond_at(request, code, started);
    }

    /// As `respond`; returns where the answer's body lies in the write
    /// buffer.
    pub(super) fn respond_at(
        &mut self,
        request: &Message,
        code: [u8; 2],
        started: Instant,
    ) -> Option<Range<usize>> {
        let Some(mut b) = MessageBuilder::response_to(request, ECHO_FIELDS) else {
            self.outcomes += 1;
            return None;
        };
        b.set(39, &code);
        self.write_packed(&b, request.mti(), code, started)
    }

    /// Answers `code` to a journaled request, journaling the answer as its
    /// final record.
    pub(super) fn respond_final(
        &mut self,
        msg: &Message,
        txn: u64,
        code: [u8; 2],
        started: Instant,
    ) {
        let at_ms = self.now.unix_ms;
        self.journal(records::response(txn, at_ms, code));
        self.respond(msg, code, started);
    }

    /// Frames and queues a response; returns where its body lies in the
    /// write buffer. The request's one outcome, whether packed or not.
    pub(super) fn write_packed(
        &mut self,
        b: &MessageBuilder<'_>,
        mti: Mti,
        code: [u8; 2],
        started: Instant,
    ) -> Option<Range<usize>> {
        self.outcomes += 1;
        if self.gone {
            return None;
        }
        let framing = self.framing;
        let at = framing.begin(&mut self.wbuf);
        let packed = b.pack(&mut self.wbuf).map_err(|e| e.to_string());
        let packed = packed.and_then(|()| self.mac_answer(at + framing.width()));
        match packed.and_then(|()| {
            framing
                .finish(&mut self.wbuf, at)
                .map_err(|e| e.to_string())
        }) {
            Ok(()) => {
                self.count(mti, code, started);
                Some(at + framing.width()..self.wbuf.len())
            }
            Err(e) => {
                self.wbuf.truncate(at);
                self.answer_unframed(at);
                warn!(peer = %self.peer, mti = %mti, "response could not be packed: {e}");
                None
            }
        }
    }

    /// Frames an answer already in the terminal's spec (a host's, or one
    /// kept for repeats): the request's one outcome. False when it could
    /// not be framed, the outcome then still to be given.
    pub(super) fn write_body(
        &mut self,
        body: &[u8],
        mti: Mti,
        code: [u8; 2],
        started: Instant,
    ) -> bool {
        if self.gone {
            self.outcomes += 1;
            return true;
        }
        let framing = self.framing;
        let at = framing.begin(&mut self.wbuf);
        self.wbuf.extend_from_slice(body);
        let framed = self.mac_answer(at + framing.width()).and_then(|()| {
            framing
                .finish(&mut self.wbuf, at)
                .map_err(|e| e.to_string())
        });
        match framed {
            Ok(()) => {
                self.outcomes += 1;
                self.count(mti, code, started);
                true
            }
            Err(e) => {
                self.wbuf.truncate(at);
                self.answer_unframed(at);
                warn!(peer = %self.peer, mti = %mti, "answer can not be framed: {e}");
                false
            }
        }
    }
}
