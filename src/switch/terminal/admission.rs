//! Admission: a key already pending on this connection is a duplicate
//! (94); past the connection's or the switch's in-flight limit the request
//! is shed (96) at once rather than queued.

use std::sync::atomic::Ordering;

use super::core::TerminalCore;
use super::records::JournalAppend;
use crate::codes;
use crate::switch::acquirer::MatchKey;

impl<J: JournalAppend> TerminalCore<J> {
    /// `None` when the request may go on, else the code to answer.
    pub(super) fn admit(&self, key: &MatchKey) -> Option<[u8; 2]> {
        if self.pending.iter().any(|(_, p)| p.key == *key) || self.parked_key(key) {
            return Some(codes::DUPLICATE);
        }
        // Requests waiting for an HSM count with those forwarded.
        if self.pending.len() + self.hsm.requests()
            >= self.shared.terminals.max_in_flight_per_connection
        {
            self.shared.events.shed_connection_limit.increment(1);
            return Some(codes::SYSTEM_MALFUNCTION);
        }
        if self.shared.in_flight.load(Ordering::Acquire) >= self.shared.limits.max_in_flight {
            self.shared.events.shed_global_limit.increment(1);
            return Some(codes::SYSTEM_MALFUNCTION);
        }
        None
    }
}
