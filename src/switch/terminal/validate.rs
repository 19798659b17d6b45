//! Checks of a request before anything is looked up for it: required
//! fields and their form (30), the card number's Luhn digit (14), and
//! whether the terminal may transact at all (58); and the entry steps
//! reversals and advices share (`accept_other`).

use std::time::Instant;

use super::core::TerminalCore;
use super::records::JournalAppend;
use crate::codes;
use crate::iso8583::{Message, Pan, SmallText};
use crate::switch::acquirer::MatchKey;
use crate::switch::server::Shared;

/// Required in 0100/0200 requests.
pub const REQUIRED_AUTH_FIELDS: &[usize] = &[2, 3, 4, 7, 11, 41, 42, 49];

/// What the checks of an authorization read, for the steps after them.
pub struct CheckedAuth {
    pub pan: Pan,
    pub amount_minor: u64,
    pub terminal_id: SmallText,
}

/// Checks an authorization (0100/0200); the error is the code to answer.
pub fn check_authorization(msg: &Message, shared: &Shared) -> Result<CheckedAuth, [u8; 2]> {
    if REQUIRED_AUTH_FIELDS.iter().any(|&n| !msg.has(n)) {
        return Err(codes::FORMAT_ERROR);
    }
    let pan = msg
        .pan()
        .filter(|p| (12..=19).contains(&p.len()))
        .ok_or(codes::FORMAT_ERROR)?;
    if !pan.luhn_ok() {
        return Err(codes::INVALID_CARD_NUMBER);
    }
    let amount_minor = msg.amount_minor().ok_or(codes::FORMAT_ERROR)?;
    let terminal_id = msg.terminal_id().ok_or(codes::FORMAT_ERROR)?;
    if !shared.terminal_allowed(&terminal_id) {
        return Err(codes::UNKNOWN_TERMINAL);
    }
    Ok(CheckedAuth {
        pan,
        amount_minor,
        terminal_id,
    })
}

/// Checks a reversal or an advice: its terminal, when it names one, must
/// be allowed.
pub fn check_other(msg: &Message, shared: &Shared) -> Result<(), [u8; 2]> {
    match msg.terminal_id() {
        Some(tid) if !shared.terminal_allowed(&tid) => Err(codes::UNKNOWN_TERMINAL),
        _ => Ok(()),
    }
}

impl<J: JournalAppend> TerminalCore<J> {
    /// The steps reversals and advices share before their own: the key
    /// (30 without DE11 or DE41), [`check_other`] (30, 58), and repeats
    /// (the earlier answer again, or 94). `None` when the request was
    /// answered here; else its key and content fingerprint.
    pub(super) fn accept_other(
        &mut self,
        msg: &Message,
        started: Instant,
    ) -> Option<(MatchKey, u64)> {
        let Some(key) = MatchKey::of(msg) else {
            self.respond(msg, codes::FORMAT_ERROR, started);
            return None;
        };
        if let Err(code) = check_other(msg, &self.shared) {
            self.respond(msg, code, started);
            return None;
        }
        // Unbound connections (plain TCP, or no binding) skip reading
        // DE41 again.
        if self.bound.is_some()
            && let Some(tid) = msg.terminal_id()
            && !self.terminal_bound(&tid)
        {
            self.respond(msg, codes::UNKNOWN_TERMINAL, started);
            return None;
        }
        if self.shared.security.is_some()
            && let Some(tid) = msg.terminal_id()
            && !self.mac_holds(msg, tid.trimmed(), started)
        {
            return None;
        }
        let content = self.answered_before(msg, &key, started)?;
        Some((key, content))
    }
}
