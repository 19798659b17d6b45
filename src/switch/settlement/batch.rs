//! Terminal batch close (host capture): the switch's own totals per
//! terminal (DE41) and batch (`[settlement] batch_field`), and the 0500
//! compared with them.
//!
//! # Where the totals come from
//!
//! The [`Ledger`] folds journal records, the same way live (every record
//! the terminal core appends goes through [`Ledger::observe`]) and at
//! recovery (the journal's recovery scan feeds it every record it reads).
//! The store is not asked: it lags the journal by the exporter's batch, so
//! a close right after the last sale would have to wait for the exporter
//! (and fail when the database is down, which must not stop terminals from
//! closing). The journal is the record of what each terminal was told, so
//! totals folded from it are exactly what the terminal can have counted.
//!
//! A transaction counts when its final `Response` record says 00 (the
//! terminal was told "approved", by the host or in stand-in):
//!
//! - 0200/0220 (financial, and advices of offline approvals): a debit or
//!   a credit by its processing code ([`TxnType`]: 00 purchase, 01 cash,
//!   09 cashback are debits; 20 refund and 02 void credits; other types
//!   move no money and are not counted);
//! - 0400/0420 from the terminal: a debit reversal or credit reversal, by
//!   the processing code it carries (the original's);
//! - 0320 (batch upload, one transaction each): into the batch's uploaded
//!   set, compared by a close after upload (960000 by default);
//! - 0500 answered 00: the batch (that currency of it) is closed and
//!   forgotten.
//!
//! Per currency (DE49): one 0500 closes one currency of a batch.
//!
//! Timeouts (91) do not count: the terminal was told the transaction did
//! not go through. A host approval the switch could not deliver (reversed
//! with 68) stays counted here while the terminal never saw it: its 0500
//! is then out of balance (95), and its upload and close after upload put
//! the batch right, which is what the upload is for.
//!
//! # Bounds
//!
//! Requests waiting for their answer are held until their final record
//! (at most the switch's in-flight limit, plus the few lost in a crash,
//! cleared at the end of recovery); open batches up to `max_open_batches`,
//! each with at most [`MAX_CURRENCIES`] currencies. What does not fit is
//! counted (`switchyard_batch_untracked_total`), not grown into: its batch
//! then closes out of balance and is uploaded.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use super::day::TxnType;
use crate::iso8583::{Message, MessageBuilder};
use crate::switch::journal::{BatchText, Record, SmallStr};

/// Currencies one batch keeps totals for.
pub const MAX_CURRENCIES: usize = 8;

/// Metric: transactions (or batches) not counted because a bound was hit.
pub const UNTRACKED_METRIC: &str = "switchyard_batch_untracked_total";

/// A batch's counts and amounts in one currency, as the 0500's fields
/// carry them (ISO 8583:1987 DE74-DE77, DE86-DE89).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// DE74, DE86.
    pub credits: u64,
    pub credits_amount: u64,
    /// DE75, DE87.
    pub credit_reversals: u64,
    pub credit_reversals_amount: u64,
    /// DE76, DE88.
    pub debits: u64,
    pub debits_amount: u64,
    /// DE77, DE89.
    pub debit_reversals: u64,
    pub debit_reversals_amount: u64,
}

/// Which side of the totals a transaction lands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Credit,
    Debit,
}

impl Side {
    /// By the processing code's transaction type; `None`: no money moves.
    pub fn of(processing_code: Option<u32>) -> Option<Side> {
        match TxnType::of_code(processing_code).sign() {
            1 => Some(Side::Debit),
            -1 => Some(Side::Credit),
            _ => None,
        }
    }
}

/// A field of a 0500 that could not be used: its number and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadField {
    pub field: usize,
    pub reason: &'static str,
}

impl Totals {
    pub fn add(&mut self, side: Side, reversal: bool, amount: u64) {
        let (count, sum) = match (side, reversal) {
            (Side::Credit, false) => (&mut self.credits, &mut self.credits_amount),
            (Side::Credit, true) => (
                &mut self.credit_reversals,
                &mut self.credit_reversals_amount,
            ),
            (Side::Debit, false) => (&mut self.debits, &mut self.debits_amount),
            (Side::Debit, true) => (&mut self.debit_reversals, &mut self.debit_reversals_amount),
        };
        // Saturating: no batch holds 10^19 cents; a corrupt record must
        // not wrap a total into a plausible one.
        *count = count.saturating_add(1);
        *sum = sum.saturating_add(amount);
    }

    /// Debits net of their reversals less credits net of theirs, in minor
    /// units: positive when the cards were debited more than credited.
    pub fn net(&self) -> i128 {
        let debit = i128::from(self.debits_amount) - i128::from(self.debit_reversals_amount);
        let credit = i128::from(self.credits_amount) - i128::from(self.credit_reversals_amount);
        debit - credit
    }

    /// Counts and amounts net of reversals: (credits, credit amount,
    /// debits, debit amount). Two sides agree when these do, whether one
    /// of them counted a reversal in the reversal fields or by leaving its
    /// original out (an upload carries only what stands).
    fn netted(&self) -> (i128, i128, i128, i128) {
        let d = |a: u64, b: u64| i128::from(a) - i128::from(b);
        (
            d(self.credits, self.credit_reversals),
            d(self.credits_amount, self.credit_reversals_amount),
            d(self.debits, self.debit_reversals),
            d(self.debits_amount, self.debit_reversals_amount),
        )
    }

    /// The terminal's totals balance with the switch's.
    pub fn balances(&self, switch: &Totals) -> bool {
        self.netted() == switch.netted()
    }

    /// The totals of a 0500: DE74-DE77 and DE86-DE89 (absent: 0), and
    /// DE97 when present, which must then equal the net of the others.
    /// At least one of them must be there.
    pub fn read(msg: &Message) -> Result<Totals, BadField> {
        let mut any = false;
        let mut get = |n: usize| -> Result<u64, BadField> {
            if !msg.has(n) {
                return Ok(0);
            }
            any = true;
            msg.number(n).ok_or(BadField {
                field: n,
                reason: "not a number",
            })
        };
        let t = Totals {
            credits: get(74)?,
            credit_reversals: get(75)?,
            debits: get(76)?,
            debit_reversals: get(77)?,
            credits_amount: get(86)?,
            credit_reversals_amount: get(87)?,
            debits_amount: get(88)?,
            debit_reversals_amount: get(89)?,
        };
        if let Some(v) = msg.value(97) {
            let text = v.to_small_text().ok_or(BadField {
                field: 97,
                reason: "not text",
            })?;
            let net = parse_net(text.trimmed()).ok_or(BadField {
                field: 97,
                reason: "expected C or D and 16 digits",
            })?;
            if net != t.net() {
                return Err(BadField {
                    field: 97,
                    reason: "the net does not match DE74-DE77 and DE86-DE89",
                });
            }
        } else if !any {
            return Err(BadField {
                field: 74,
                reason: "no totals: none of DE74-DE77, DE86-DE89, DE97",
            });
        }
        Ok(t)
    }

    /// DE97 (`x+n16`): `D` and the net when the cards were debited more
    /// (or it is 0), `C` when credited more.
    pub fn de97(&self) -> [u8; 17] {
        let net = self.net();
        let mut out = [b'0'; 17];
        out[0] = if net < 0 { b'C' } else { b'D' };
        // n16 holds up to 10^16 - 1; a larger net (impossible from n16
        // fields, but the switch's own sums saturate) shows as all nines.
        let abs = net.unsigned_abs().min(9_999_999_999_999_999);
        let digits = format!("{abs:016}");
        out[1..].copy_from_slice(digits.as_bytes());
        out
    }

    /// Puts these totals into an answer: DE74-DE77, DE86-DE89 and DE97
    /// (`de97` is [`Totals::de97`], held by the caller for the builder's
    /// lifetime).
    pub fn write<'v>(&self, b: &mut MessageBuilder<'v>, de97: &'v [u8; 17]) {
        b.set_number(74, self.credits)
            .set_number(75, self.credit_reversals)
            .set_number(76, self.debits)
            .set_number(77, self.debit_reversals)
            .set_number(86, self.credits_amount)
            .set_number(87, self.credit_reversals_amount)
            .set_number(88, self.debits_amount)
            .set_number(89, self.debit_reversals_amount)
            .set(97, de97);
    }
}

/// DE97's text: `C` or `D` and digits; `C` is negative.
fn parse_net(text: &[u8]) -> Option<i128> {
    let (&sign, digits) = text.split_first()?;
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v: i128 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    match sign {
        b'D' | b'd' => Some(v),
        b'C' | b'c' => Some(-v),
        _ => None,
    }
}

/// What a close (0500) compares: the switch's own totals, or the set the
/// terminal uploaded (0320) since its last close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    Close,
    AfterUpload,
}

/// The processing codes of the two closes (`[settlement]`
/// `batch_close_code`, `batch_close_after_upload_code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseCodes {
    pub close: u32,
    pub after_upload: u32,
}

impl Default for CloseCodes {
    fn default() -> Self {
        CloseCodes {
            close: 920_000,
            after_upload: 960_000,
        }
    }
}

impl CloseCodes {
    pub fn kind(&self, processing_code: Option<u32>) -> Option<CloseKind> {
        match processing_code {
            Some(pc) if pc == self.close => Some(CloseKind::Close),
            Some(pc) if pc == self.after_upload => Some(CloseKind::AfterUpload),
            _ => None,
        }
    }
}

/// (terminal id, batch).
pub type BatchKey = (SmallStr, BatchText);

/// What a request will do to its batch once answered 00.
#[derive(Clone, Copy, Debug)]
enum Effect {
    /// A financial transaction (`false`) or reversal (`true`).
    Count(Side, bool),
    Upload(Side),
    Close,
}

#[derive(Clone, Copy, Debug)]
pub struct Waiting {
    key: BatchKey,
    effect: Effect,
    amount: u64,
    currency: u16,
}

/// What a journal record does to the ledger.
#[derive(Clone, Copy, Debug)]
pub enum Note {
    /// A request of a batch, waiting for its final answer.
    Request(u64, Waiting),
    /// A final answer: approved (00) or not (another code, a timeout).
    Answer(u64, bool),
}

/// One open batch: per currency, the switch's totals and the uploaded.
#[derive(Clone, Debug, Default)]
struct Batch {
    own: Vec<(u16, Totals)>,
    uploaded: Vec<(u16, Totals)>,
}

fn slot(list: &mut Vec<(u16, Totals)>, currency: u16) -> Option<&mut Totals> {
    let at = match list.iter().position(|(c, _)| *c == currency) {
        Some(at) => at,
        None if list.len() < MAX_CURRENCIES => {
            list.push((currency, Totals::default()));
            list.len() - 1
        }
        None => return None,
    };
    Some(&mut list[at].1)
}

/// The comparison of a close with the switch's totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub in_balance: bool,
    /// The currency compared (the 0500's DE49, or the batch's one).
    pub currency: u16,
    /// The switch's side: its totals, or the uploaded set's.
    pub switch: Totals,
}

/// Why a close could not be compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseError {
    /// No DE49 and the batch holds more than one currency.
    CurrencyNeeded,
}

/// The switch's totals of every open batch (see the module's doc).
pub struct Ledger {
    waiting: DashMap<u64, Waiting>,
    waiting_len: AtomicUsize,
    batches: DashMap<BatchKey, Batch>,
    batches_len: AtomicUsize,
    max_waiting: usize,
    /// Set from the config after recovery made the ledger.
    max_batches: AtomicUsize,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("open_batches", &self.batches_len.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new(DEFAULT_MAX_BATCHES)
    }
}

/// Open batches kept by default (`[settlement] max_open_batches`).
pub const DEFAULT_MAX_BATCHES: usize = 100_000;
/// Requests awaiting their answer the ledger holds: far above any
/// in-flight limit, a bound against records of lost requests.
const MAX_WAITING: usize = 1 << 20;

impl Ledger {
    pub fn new(max_batches: usize) -> Ledger {
        Ledger {
            waiting: DashMap::new(),
            waiting_len: AtomicUsize::new(0),
            batches: DashMap::new(),
            batches_len: AtomicUsize::new(0),
            max_waiting: MAX_WAITING,
            max_batches: AtomicUsize::new(max_batches),
        }
    }

    /// The config's limit (the ledger recovered from the journal was made
    /// before the config was at hand).
    pub fn set_max_batches(&self, max_batches: usize) {
        self.max_batches.store(max_batches, Ordering::Relaxed);
    }

    pub fn open_batches(&self) -> usize {
        self.batches_len.load(Ordering::Relaxed)
    }

    /// Folds one journal record (recovery's way in).
    pub fn observe(&self, record: &Record) {
        if let Some(n) = self.note(record) {
            self.fold(n);
        }
    }

    /// What `record` would do here, taken before the record moves into
    /// the journal: the terminal core folds it ([`Ledger::fold`]) only
    /// once the journal took the record. On the hot path: a request
    /// without a batch costs a few comparisons.
    pub fn note(&self, record: &Record) -> Option<Note> {
        match record {
            Record::Request { txn, request, .. } => {
                let batch = request.settlement.batch?;
                let pc = request.settlement.processing_code;
                let effect = match request.mti / 10 {
                    20 | 22 => Effect::Count(Side::of(pc)?, false),
                    40 | 42 => Effect::Count(Side::of(pc)?, true),
                    32 => Effect::Upload(Side::of(pc)?),
                    // Only closes are journaled as 0500s (the terminal
                    // core answers other processing codes 12 first), so
                    // any 0500 answered 00 closed its batch.
                    50 => Effect::Close,
                    _ => return None,
                };
                Some(Note::Request(
                    *txn,
                    Waiting {
                        key: (request.terminal_id, batch),
                        effect,
                        amount: request.amount_minor,
                        currency: request.currency,
                    },
                ))
            }
            Record::Response {
                txn, response_code, ..
            } => Some(Note::Answer(*txn, *response_code == *b"00")),
            Record::Timeout { txn, .. } => Some(Note::Answer(*txn, false)),
            _ => None,
        }
    }

    /// Folds what [`Ledger::note`] took of a journaled record.
    pub fn fold(&self, note: Note) {
        match note {
            Note::Request(txn, w) => {
                if self.waiting_len.load(Ordering::Relaxed) >= self.max_waiting {
                    metrics::counter!(UNTRACKED_METRIC).increment(1);
                    return;
                }
                if self.waiting.insert(txn, w).is_none() {
                    self.waiting_len.fetch_add(1, Ordering::Relaxed);
                }
            }
            Note::Answer(txn, approved) => {
                // Most answers are of requests without a batch: with
                // none waiting (a switch whose terminals send none), one
                // relaxed load. A request's own record was noted before
                // its answer, by the same connection, so it is counted.
                if self.waiting_len.load(Ordering::Relaxed) == 0 {
                    return;
                }
                if let Some((_, w)) = self.waiting.remove(&txn) {
                    self.waiting_len.fetch_sub(1, Ordering::Relaxed);
                    if approved {
                        self.apply(w);
                    }
                }
            }
        }
    }

    fn apply(&self, w: Waiting) {
        if let Effect::Close = w.effect {
            if let Some(mut b) = self.batches.get_mut(&w.key) {
                if w.currency == 0 {
                    b.own.clear();
                    b.uploaded.clear();
                } else {
                    b.own.retain(|(c, _)| *c != w.currency);
                    b.uploaded.retain(|(c, _)| *c != w.currency);
                }
            }
            // Checked again under the shard's lock: a sale of another
            // currency may have come in since.
            let empty = |_: &BatchKey, b: &Batch| b.own.is_empty() && b.uploaded.is_empty();
            if self.batches.remove_if(&w.key, empty).is_some() {
                self.batches_len.fetch_sub(1, Ordering::Relaxed);
            }
            return;
        }
        let mut batch = match self.batches.get_mut(&w.key) {
            Some(b) => b,
            None => {
                if self.batches_len.load(Ordering::Relaxed)
                    >= self.max_batches.load(Ordering::Relaxed)
                {
                    metrics::counter!(UNTRACKED_METRIC).increment(1);
                    return;
                }
                self.batches.entry(w.key).or_insert_with(|| {
                    self.batches_len.fetch_add(1, Ordering::Relaxed);
                    Batch::default()
                })
            }
        };
        let (list, side, reversal) = match w.effect {
            Effect::Count(side, reversal) => (&mut batch.own, side, reversal),
            Effect::Upload(side) => (&mut batch.uploaded, side, false),
            Effect::Close => return,
        };
        match slot(list, w.currency) {
            Some(t) => t.add(side, reversal, w.amount),
            None => metrics::counter!(UNTRACKED_METRIC).increment(1),
        }
    }

    /// Recovery is over: requests still waiting belonged to the process
    /// that stopped and will get no answer.
    pub fn finish_recovery(&self) {
        self.waiting.clear();
        self.waiting_len.store(0, Ordering::Relaxed);
    }

    /// The switch's side of a close of `key` in `currency` (0: the 0500
    /// named none, so the batch's one currency), compared with `terminal`.
    pub fn compare(
        &self,
        key: &BatchKey,
        currency: u16,
        kind: CloseKind,
        terminal: &Totals,
    ) -> Result<Verdict, CloseError> {
        let (currency, switch) = match self.batches.get(key) {
            None => (currency, Totals::default()),
            Some(b) => {
                let c = if currency != 0 {
                    currency
                } else {
                    // No DE49: the batch's one currency (either list may
                    // name it).
                    let mut all = b.own.iter().chain(b.uploaded.iter()).map(|(c, _)| *c);
                    let first = all.next();
                    if all.any(|c| Some(c) != first) {
                        return Err(CloseError::CurrencyNeeded);
                    }
                    first.unwrap_or(0)
                };
                let list = match kind {
                    CloseKind::Close => &b.own,
                    CloseKind::AfterUpload => &b.uploaded,
                };
                let totals = list.iter().find(|(x, _)| *x == c).map(|e| e.1);
                (c, totals.unwrap_or_default())
            }
        };
        Ok(Verdict {
            in_balance: terminal.balances(&switch),
            currency,
            switch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::{Mti, specs};
    use crate::switch::journal::{RequestData, SettlementFields};

    const T1: &str = "TERM0001";

    fn request(txn: u64, mti: u16, pc: u32, amount: u64, currency: u16, batch: &str) -> Record {
        Record::Request {
            txn,
            at_ms: 0,
            request: RequestData {
                mti,
                stan: txn as u32,
                terminal_id: SmallStr::from(T1).expect("fits"),
                merchant_id: SmallStr::new(),
                rrn: Default::default(),
                masked_pan: Default::default(),
                card_hash: [0; 16],
                amount_minor: amount,
                currency,
                transmission_time: 0,
                route: 0,
                settlement: SettlementFields {
                    processing_code: Some(pc),
                    batch: BatchText::from(batch).ok(),
                    ..Default::default()
                },
            },
            fraud_points: 0,
            fraud_reasons: 0,
            business_date: 0,
        }
    }

    fn answer(ledger: &Ledger, txn: u64, rc: &[u8; 2]) {
        ledger.observe(&Record::Response {
            txn,
            at_ms: 0,
            response_code: *rc,
            approval_code: Default::default(),
            stand_in: false,
            settlement_date: 0,
        });
    }

    /// Sends `mti`/`pc` for `amount` in `currency` and answers it `rc`.
    fn txn(ledger: &Ledger, txn: u64, mti: u16, pc: u32, amount: u64, currency: u16, rc: &[u8; 2]) {
        ledger.observe(&request(txn, mti, pc, amount, currency, "001"));
        answer(ledger, txn, rc);
    }

    fn key() -> BatchKey {
        (
            SmallStr::from(T1).expect("fits"),
            BatchText::from("001").expect("fits"),
        )
    }

    fn own(ledger: &Ledger, currency: u16) -> Totals {
        ledger
            .compare(&key(), currency, CloseKind::Close, &Totals::default())
            .expect("one currency")
            .switch
    }

    #[test]
    fn purchases_refunds_voids_and_reversals_net_by_processing_code() {
        let l = Ledger::default();
        txn(&l, 1, 200, 0, 1000, 840, b"00"); // purchase: debit
        txn(&l, 2, 200, 0, 2500, 840, b"00"); // purchase: debit
        txn(&l, 3, 200, 200_000, 700, 840, b"00"); // refund: credit
        txn(&l, 4, 200, 20_000, 300, 840, b"00"); // void: credit
        txn(&l, 5, 400, 0, 2500, 840, b"00"); // reversal of the 2500 purchase
        txn(&l, 6, 200, 0, 9999, 840, b"51"); // declined: nothing
        txn(&l, 7, 220, 90_000, 400, 840, b"00"); // advice, cashback: debit
        txn(&l, 8, 200, 310_000, 5000, 840, b"00"); // inquiry: no money
        txn(&l, 9, 100, 0, 5000, 840, b"00"); // authorization: not settled
        txn(&l, 10, 420, 200_000, 700, 840, b"00"); // refund reversed
        // A timeout: the terminal was told 91.
        l.observe(&request(11, 200, 0, 800, 840, "001"));
        l.observe(&Record::Timeout { txn: 11, at_ms: 0 });
        answer(&l, 11, b"00"); // a stray answer after it counts nothing
        let t = own(&l, 840);
        assert_eq!(
            t,
            Totals {
                credits: 2,
                credits_amount: 1000,
                credit_reversals: 1,
                credit_reversals_amount: 700,
                debits: 3,
                debits_amount: 3900,
                debit_reversals: 1,
                debit_reversals_amount: 2500,
            }
        );
        // Debits 3900 - 2500, credits 1000 - 700.
        assert_eq!(t.net(), 1400 - 300);
        assert_eq!(&t.de97(), b"D0000000000001100");
    }

    #[test]
    fn currencies_are_kept_apart_and_a_close_needs_one() {
        let l = Ledger::default();
        txn(&l, 1, 200, 0, 1000, 840, b"00");
        txn(&l, 2, 200, 0, 500, 978, b"00");
        assert_eq!(own(&l, 840).debits_amount, 1000);
        assert_eq!(own(&l, 978).debits_amount, 500);
        assert_eq!(
            l.compare(&key(), 0, CloseKind::Close, &Totals::default()),
            Err(CloseError::CurrencyNeeded)
        );
        // Closing USD (an 0500 answered 00) leaves EUR open.
        l.observe(&request(3, 500, 920_000, 0, 840, "001"));
        answer(&l, 3, b"00");
        assert_eq!(own(&l, 840), Totals::default());
        assert_eq!(own(&l, 978).debits_amount, 500);
        assert_eq!(l.open_batches(), 1);
        l.observe(&request(4, 500, 920_000, 0, 978, "001"));
        answer(&l, 4, b"95"); // out of balance: stays open
        assert_eq!(own(&l, 978).debits_amount, 500);
        l.observe(&request(5, 500, 920_000, 0, 978, "001"));
        answer(&l, 5, b"00");
        assert_eq!(l.open_batches(), 0);
    }

    #[test]
    fn a_terminal_that_nets_reversals_itself_balances_too() {
        let l = Ledger::default();
        txn(&l, 1, 200, 0, 1000, 840, b"00");
        txn(&l, 2, 200, 0, 2000, 840, b"00");
        txn(&l, 3, 400, 0, 2000, 840, b"00");
        let switch = own(&l, 840);
        let gross = switch;
        let netted = Totals {
            debits: 1,
            debits_amount: 1000,
            ..Default::default()
        };
        assert!(gross.balances(&switch));
        assert!(netted.balances(&switch));
        let wrong = Totals {
            debits: 1,
            debits_amount: 1001,
            ..Default::default()
        };
        assert!(!wrong.balances(&switch));
        // A refund counted as a purchase: same count, other side.
        let flipped = Totals {
            credits: 1,
            credits_amount: 1000,
            ..Default::default()
        };
        assert!(!flipped.balances(&switch));
    }

    #[test]
    fn uploads_are_compared_by_the_close_after_upload() {
        let l = Ledger::default();
        txn(&l, 1, 200, 0, 1000, 840, b"00");
        txn(&l, 2, 320, 0, 1000, 840, b"00");
        txn(&l, 3, 320, 200_000, 250, 840, b"00");
        let claim = Totals {
            debits: 1,
            debits_amount: 1000,
            credits: 1,
            credits_amount: 250,
            ..Default::default()
        };
        let v = l
            .compare(&key(), 840, CloseKind::AfterUpload, &claim)
            .expect("one currency");
        assert!(v.in_balance, "{v:?}");
        let v = l
            .compare(&key(), 840, CloseKind::Close, &claim)
            .expect("one currency");
        assert!(!v.in_balance, "the switch's own totals have no refund");
        // A batch the switch never saw: zeros.
        let other = (key().0, BatchText::from("999").expect("fits"));
        let v = l
            .compare(&other, 0, CloseKind::Close, &Totals::default())
            .expect("empty");
        assert!(v.in_balance);
    }

    #[test]
    fn requests_without_a_batch_and_lost_ones_hold_nothing() {
        let l = Ledger::default();
        let mut r = request(1, 200, 0, 1000, 840, "");
        if let Record::Request { request, .. } = &mut r {
            request.settlement.batch = None;
        }
        l.observe(&r);
        answer(&l, 1, b"00");
        assert_eq!(l.open_batches(), 0);
        l.observe(&request(2, 200, 0, 1000, 840, "001"));
        assert_eq!(l.waiting_len.load(Ordering::Relaxed), 1);
        l.finish_recovery();
        assert_eq!(l.waiting_len.load(Ordering::Relaxed), 0);
        answer(&l, 2, b"00");
        assert_eq!(l.open_batches(), 0, "its process is gone; not counted");
    }

    #[test]
    fn open_batches_and_currencies_are_bounded() {
        let l = Ledger::new(2);
        for (i, batch) in ["A", "B", "C"].iter().enumerate() {
            let id = i as u64 + 1;
            l.observe(&request(id, 200, 0, 100, 840, batch));
            answer(&l, id, b"00");
        }
        assert_eq!(l.open_batches(), 2, "the third batch is not tracked");
        let l = Ledger::default();
        for i in 0..(MAX_CURRENCIES as u64 + 2) {
            txn(&l, i + 1, 200, 0, 100, 100 + i as u16, b"00");
        }
        let b = l.batches.get(&key()).expect("open");
        assert_eq!(b.own.len(), MAX_CURRENCIES);
    }

    fn parse(fields: &[(usize, &[u8])]) -> Message {
        let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::RECONCILIATION);
        b.set(11, b"000001");
        for &(n, v) in fields {
            b.set(n, v);
        }
        Message::parse(b.to_bytes().expect("packs").freeze(), specs::iso87ascii()).expect("parses")
    }

    #[test]
    fn a_0500s_totals_are_read_and_checked_against_its_net() {
        let m = parse(&[
            (74, b"0000000001"),
            (76, b"0000000002"),
            (86, b"0000000000000250"),
            (88, b"0000000000001500"),
            (97, b"D0000000000001250"),
        ]);
        let t = Totals::read(&m).expect("valid");
        assert_eq!((t.credits, t.debits, t.net()), (1, 2, 1250));
        let bad_net = parse(&[(88, b"0000000000001500"), (97, b"C0000000000001500")]);
        assert_eq!(Totals::read(&bad_net).map_err(|e| e.field), Err(97));
        // (A sign other than C or D is refused by the codec already: the
        // frame does not parse, and is answered 30 there.)
        let none = parse(&[(41, b"TERM0001")]);
        assert_eq!(Totals::read(&none).map_err(|e| e.field), Err(74));
        // What the switch writes reads back the same.
        let de97 = t.de97();
        let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::RECONCILIATION_RESPONSE);
        t.write(&mut b, &de97);
        let back = Message::parse(b.to_bytes().expect("packs").freeze(), specs::iso87ascii())
            .expect("parses");
        assert_eq!(Totals::read(&back), Ok(t));
        let credit = Totals {
            credits: 1,
            credits_amount: 5,
            ..Default::default()
        };
        assert_eq!(&credit.de97(), b"C0000000000000005");
    }
}
