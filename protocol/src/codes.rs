//! Response codes (DE39) the switch itself sets, and how it reads the ones
//! hosts send. The one place these values are written down: every other
//! module names them from here (see `docs/DESIGN.md`, "Response codes").

/// Approved (also: stand-in approvals, acknowledged advices, 0810 answers).
pub const APPROVED: [u8; 2] = *b"00";
/// Host decline: do not honour (the simulator's declined card ranges and
/// random declines).
pub const DO_NOT_HONOUR: [u8; 2] = *b"05";
/// Host decline: insufficient funds (the simulator's amount limit).
pub const INSUFFICIENT_FUNDS: [u8; 2] = *b"51";
/// Invalid transaction type (an MTI the switch does not handle).
pub const INVALID_TRANSACTION: [u8; 2] = *b"12";
/// The PAN fails the Luhn check.
pub const INVALID_CARD_NUMBER: [u8; 2] = *b"14";
/// Format error in the request.
pub const FORMAT_ERROR: [u8; 2] = *b"30";
/// Unknown or unauthorized terminal.
pub const UNKNOWN_TERMINAL: [u8; 2] = *b"58";
/// Suspected fraud: score at or over the decline threshold.
pub const SUSPECTED_FRAUD: [u8; 2] = *b"59";
/// Acquirer timeout or link down.
pub const ISSUER_UNAVAILABLE: [u8; 2] = *b"91";
/// No route for the card range.
pub const NO_ROUTE: [u8; 2] = *b"92";
/// Duplicate transmission.
pub const DUPLICATE: [u8; 2] = *b"94";
/// Security violation: a MAC missing or wrong.
pub const SECURITY_VIOLATION: [u8; 2] = *b"63";
/// The PIN block could not be translated (a wrong key, PAN or format);
/// the default of `[security] bad_pin_code`.
pub const BAD_PIN_BLOCK: [u8; 2] = *b"81";
/// A terminal's batch totals (0500) do not balance with the switch's:
/// the 0510 carries the switch's own.
pub const OUT_OF_BALANCE: [u8; 2] = *b"95";
/// Switch overloaded (shedding), or a part of it not answering.
pub const SYSTEM_MALFUNCTION: [u8; 2] = *b"96";
/// Reversal reason: the host's answer reached the switch but could not be
/// delivered to the terminal (it had gone, or the write failed). ISO 8583
/// "response received too late".
pub const UNDELIVERABLE: [u8; 2] = *b"68";

/// Does a host's answer to a reversal or advice mean "got it"? 91 and 96
/// say "try again"; any other answer means the host has it.
pub fn acknowledges(code: [u8; 2]) -> bool {
    !matches!(code, ISSUER_UNAVAILABLE | SYSTEM_MALFUNCTION)
}
