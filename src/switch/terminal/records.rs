//! Journal records the terminal writes, and the one call it makes into the
//! journal: an append that returns the record's sequence number.

use crate::iso8583::{Message, SmallText};
use crate::switch::fraud;
use crate::switch::journal::{Journal, Record};

/// The journal as the terminal core uses it: a synchronous append that
/// returns the record's sequence number, or `None` when the journal
/// refuses it (queue full, or stopped). Durability is learned separately
/// ([`super::TerminalCore::handle_durable`]), so a test's in-memory journal
/// steps it by hand.
pub trait JournalAppend {
    fn append(&mut self, record: Record) -> Option<u64>;
}

/// The switch's journal for one terminal: appends are quiet, and the
/// writer is woken once per driver turn ([`JournalQueue::flush`]) rather
/// than per record.
pub struct JournalQueue {
    journal: Journal,
    dirty: bool,
}

impl JournalQueue {
    pub fn new(journal: Journal) -> JournalQueue {
        JournalQueue {
            journal,
            dirty: false,
        }
    }

    /// Wakes the writer if anything was appended since the last flush.
    pub fn flush(&mut self) {
        if self.dirty {
            self.dirty = false;
            self.journal.wake();
        }
    }
}

impl JournalAppend for JournalQueue {
    fn append(&mut self, record: Record) -> Option<u64> {
        let seq = self.journal.append_quiet(record).ok()?;
        self.dirty = true;
        Some(seq)
    }
}

/// The journal's record of an accepted request: masked PAN and keyed hash
/// (`card_hash`: [`crate::security::card_hash::card_hash_128`]), never the
/// card number, track data, CVV or PIN block. `batch_field`: where the
/// terminal's batch number is (`[settlement] batch_field`, 0: none).
#[allow(clippy::too_many_arguments)]
pub fn request_record(
    msg: &Message,
    at_ms: u64,
    txn: u64,
    route: u16,
    score: &fraud::Score,
    card_hash: [u8; 16],
    business_date: u32,
    batch_field: u16,
) -> Record {
    // A masked PAN is never longer than the PAN's 19 digits.
    let masked = msg.pan().map_or_else(Default::default, |p| {
        crate::switch::journal::MaskedPanStr::from(p.masked().as_str()).unwrap_or_default()
    });
    Record::Request {
        txn,
        at_ms,
        request: crate::switch::journal::RequestData {
            mti: msg.mti().value(),
            stan: msg.stan().unwrap_or(0),
            terminal_id: journal_text(msg.terminal_id()),
            merchant_id: journal_text(msg.merchant_id()),
            rrn: journal_text(msg.rrn()),
            masked_pan: masked,
            card_hash,
            amount_minor: msg.amount_minor().unwrap_or(0),
            currency: msg.currency().unwrap_or(0),
            transmission_time: msg.transmission_time().unwrap_or(0),
            route,
            settlement: crate::switch::settlement::capture(msg, batch_field),
        },
        fraud_points: score.points,
        fraud_reasons: score.reasons.bits(),
        business_date,
    }
}

/// The final record of a request answered `code` by the switch itself.
pub fn response(txn: u64, at_ms: u64, code: [u8; 2]) -> Record {
    Record::Response {
        txn,
        at_ms,
        response_code: code,
        approval_code: Default::default(),
        stand_in: false,
        settlement_date: 0,
    }
}

/// A text field as the journal keeps it: trimmed, printable ASCII only, cut
/// to the record's width.
pub fn journal_text<const N: usize>(t: Option<SmallText>) -> arrayvec::ArrayString<N> {
    let mut out = arrayvec::ArrayString::<N>::new();
    if let Some(t) = t {
        let text = t.trimmed();
        let text = &text[..text.len().min(N)];
        // Nearly always all printable: one copy, not a push per byte.
        if text.iter().all(|&c| c.is_ascii_graphic() || c == b' ')
            && let Ok(s) = std::str::from_utf8(text)
            && out.try_push_str(s).is_ok()
        {
            return out;
        }
        for &c in text {
            if c.is_ascii_graphic() || c == b' ' {
                out.push(c as char);
            }
        }
    }
    out
}
