//! Checks of a request before anything is looked up for it: required
//! fields and their form (30), the card number's Luhn digit (14), and
//! whether the terminal may transact at all (58).

use crate::codes;
use crate::iso8583::{Message, Pan, SmallText};
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
