//! One business date's transactions as settlement sees them: every store
//! row of the date, classified once, for the report and the
//! reconciliation alike.
//!
//! - **Financial** (0200, and 0220 advices of offline approvals): money
//!   moves at settlement. Approved (DE39 00) and not reversed, it is
//!   *settled*, netted by its processing code ([`TxnType`]).
//! - **Authorization** (0100, 0120): approved, it holds funds but does not
//!   settle (a completion would); shown apart.
//! - **Reversal** from a terminal (0400, 0401, and the 0420 it sends as an
//!   advice): in effect when the host approved it, or when it timed out
//!   and the switch's own 0420 carries it on (its DE90 names the original
//!   transaction, so the host reverses that). In effect, it reverses the
//!   approved original of the same terminal and RRN in this day (the one
//!   of equal amount first); both then drop out of the totals. One whose
//!   original is not in this day is listed, not netted.
//! - A reversal the switch itself sent (the row's reversal state: after a
//!   timeout, 91; of an approval the terminal never got, 68) undoes a
//!   financial or authorization approval too, unless the switch approved
//!   in stand-in, which stands (the reversal went to the host's copy of a
//!   request it never answered).

use std::collections::HashMap;

use super::scheme::{Scheme, scheme_of};
use crate::switch::store::{SafState, SafUpdate, Store, StoreError, TxnRow};

/// What kind of message a row is, by its MTI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Financial,
    Authorization,
    Reversal,
    /// A terminal's batch upload (0320) or close (0500): no money moves.
    TerminalBatch,
    /// Anything else the store holds (none today).
    Other,
}

impl Class {
    pub fn of(mti: u16) -> Class {
        let (class, function) = (mti / 100 % 10, mti / 10 % 10);
        match (class, function) {
            (2, 0 | 2) => Class::Financial,
            (1, 0 | 2) => Class::Authorization,
            (4, 0 | 2) => Class::Reversal,
            // 0320 batch upload, 0500 batch close: the terminal's own
            // accounting, answered by the switch (`settlement::batch`).
            (3 | 5, 2 | 0) => Class::TerminalBatch,
            _ => Class::Other,
        }
    }
}

/// The transaction type of a processing code (its first two digits) and
/// which way it moves money: purchases, cash and cashback are debits to
/// the card (+), refunds and voids credits (−); inquiries, transfers and
/// the rest move none at settlement (0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TxnType {
    Purchase,
    Cash,
    CashBack,
    Void,
    Refund,
    /// A processing code of another type (its first two digits).
    Other(u8),
    /// No processing code: a row stored before schema 3. Counted as a
    /// purchase.
    Unknown,
}

impl TxnType {
    pub fn of(processing_code: Option<&str>) -> TxnType {
        let Some(pc) = processing_code else {
            return TxnType::Unknown;
        };
        let Some(tt) = pc.get(..2).and_then(|t| t.parse::<u8>().ok()) else {
            return TxnType::Unknown;
        };
        match tt {
            0 => TxnType::Purchase,
            1 => TxnType::Cash,
            9 => TxnType::CashBack,
            2 => TxnType::Void,
            20 => TxnType::Refund,
            other => TxnType::Other(other),
        }
    }

    /// As [`TxnType::of`], from DE3 as the journal keeps it (a number:
    /// its first two digits are `pc / 10_000`).
    pub fn of_code(processing_code: Option<u32>) -> TxnType {
        match processing_code.map(|pc| pc / 10_000) {
            None => TxnType::Unknown,
            Some(0) => TxnType::Purchase,
            Some(1) => TxnType::Cash,
            Some(9) => TxnType::CashBack,
            Some(2) => TxnType::Void,
            Some(20) => TxnType::Refund,
            Some(other) => u8::try_from(other).map_or(TxnType::Unknown, TxnType::Other),
        }
    }

    /// +1 debit, −1 credit, 0 no money.
    pub fn sign(self) -> i128 {
        match self {
            TxnType::Purchase | TxnType::Cash | TxnType::CashBack | TxnType::Unknown => 1,
            TxnType::Void | TxnType::Refund => -1,
            TxnType::Other(_) => 0,
        }
    }

    pub fn name(self) -> String {
        match self {
            TxnType::Purchase => "00 purchase".into(),
            TxnType::Cash => "01 cash".into(),
            TxnType::CashBack => "09 purchase with cashback".into(),
            TxnType::Void => "02 void".into(),
            TxnType::Refund => "20 refund".into(),
            TxnType::Other(t) => format!("{t:02} (no money moved)"),
            TxnType::Unknown => "none (counted as purchase)".into(),
        }
    }
}

/// Where a row stands for settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// An approved financial transaction that stands: in the totals.
    Settled,
    /// An approved authorization that stands: shown apart.
    Authorized,
    /// Approved, then undone by a terminal's reversal (row index of it).
    ReversedByTerminal(usize),
    /// Approved, then reversed by the switch (its reversal state).
    ReversedBySwitch,
    /// Not approved: timed out (91, reversed by the switch) or declined.
    TimedOut,
    Declined,
    /// A terminal reversal in effect: of the original at this row index,
    /// or of one not in this day.
    Reversal(Option<usize>),
    /// A terminal reversal the host refused, or that was not sent.
    ReversalRefused,
    /// A batch upload or close: not a transaction of the day's totals.
    TerminalBatch,
    /// No request fields (journal records lost before export), no
    /// answer yet, or a class settlement ignores.
    Incomplete,
}

/// One row, with what settlement reads of it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub node: String,
    pub txn: u64,
    pub mti: u16,
    pub class: Class,
    pub terminal: String,
    pub merchant: String,
    pub rrn: String,
    pub stan: u32,
    /// DE7 `MMDDhhmmss`.
    pub transmission_time: u64,
    pub amount: u64,
    pub currency: u16,
    pub txn_type: TxnType,
    pub processing_code: Option<String>,
    pub scheme: Scheme,
    /// The acquirer it went to (or was routed to); `(none)` without one.
    pub acquirer: String,
    pub outcome: Option<String>,
    pub response_code: Option<String>,
    pub approval_code: Option<String>,
    pub stand_in: bool,
    pub batch: Option<String>,
    pub reversal: SafUpdate,
    pub advice: SafUpdate,
    pub status: Status,
}

impl Entry {
    fn of(row: TxnRow) -> Entry {
        let req = row
            .request
            .unwrap_or_else(|| crate::switch::store::RequestFields {
                at_ms: 0,
                mti: 0,
                stan: 0,
                terminal_id: String::new(),
                merchant_id: String::new(),
                rrn: String::new(),
                masked_pan: String::new(),
                card_hash: [0; 16],
                amount_minor: 0,
                currency: 0,
                transmission_time: 0,
                route: None,
                fraud_points: 0,
                fraud_reasons: 0,
                business_date: None,
                processing_code: None,
                mcc: None,
                country: None,
                pos_entry_mode: None,
                batch: None,
            });
        Entry {
            node: row.node_id,
            txn: row.txn,
            mti: req.mti,
            class: if req.mti == 0 {
                Class::Other
            } else {
                Class::of(req.mti)
            },
            terminal: req.terminal_id,
            merchant: req.merchant_id,
            rrn: req.rrn,
            stan: req.stan,
            transmission_time: req.transmission_time,
            amount: req.amount_minor,
            currency: req.currency,
            txn_type: TxnType::of(req.processing_code.as_deref()),
            processing_code: req.processing_code,
            scheme: scheme_of(&req.masked_pan),
            acquirer: row
                .acquirer
                .or(req.route)
                .unwrap_or_else(|| "(none)".into()),
            outcome: row.outcome,
            response_code: row.response_code,
            approval_code: row.approval_code.filter(|a| !a.is_empty()),
            stand_in: row.stand_in == Some(true),
            batch: req.batch,
            reversal: row.reversal,
            advice: row.advice,
            status: Status::Incomplete,
        }
    }

    fn approved(&self) -> bool {
        self.outcome.as_deref() == Some("answered") && self.response_code.as_deref() == Some("00")
    }

    fn timed_out(&self) -> bool {
        self.outcome.as_deref() == Some("timeout")
    }

    /// The switch sent (or is sending) a reversal of it.
    fn switch_reversed(&self) -> bool {
        self.reversal.state.is_some()
    }

    /// MMDD of DE7, the date the fallback match compares.
    pub fn transmission_date(&self) -> u16 {
        (self.transmission_time / 1_000_000 % 10_000) as u16
    }

    /// Its amount as it counts towards the totals: signed by its type.
    pub fn signed_amount(&self) -> i128 {
        i128::from(self.amount) * self.txn_type.sign()
    }

    /// Reversal or advice work not yet acknowledged by the host.
    pub fn pending_saf(&self) -> bool {
        self.reversal.state == Some(SafState::Queued) || self.advice.state == Some(SafState::Queued)
    }
}

/// A business date's rows, classified.
pub struct Day {
    pub date: String,
    pub entries: Vec<Entry>,
}

impl Day {
    /// Reads and classifies every row of `date` (`YYYY-MM-DD`).
    pub fn load(store: &mut dyn Store, date: &str) -> Result<Day, StoreError> {
        let mut entries = Vec::new();
        store.business_day(date, &mut |row| entries.push(Entry::of(row)))?;
        Ok(Day::classify(date, entries))
    }

    /// Classifies `entries`, in the order the transactions began.
    pub fn classify(date: &str, mut entries: Vec<Entry>) -> Day {
        // Approved originals open to a terminal reversal, by (terminal,
        // RRN): row indices, oldest first.
        let mut open: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for i in 0..entries.len() {
            let e = &entries[i];
            let status = match e.class {
                Class::Other => Status::Incomplete,
                Class::TerminalBatch => Status::TerminalBatch,
                _ if e.outcome.is_none() => Status::Incomplete,
                Class::Financial | Class::Authorization => {
                    if e.approved() && e.switch_reversed() && !e.stand_in {
                        Status::ReversedBySwitch
                    } else if e.approved() {
                        open.entry((e.terminal.clone(), e.rrn.clone()))
                            .or_default()
                            .push(i);
                        if e.class == Class::Financial {
                            Status::Settled
                        } else {
                            Status::Authorized
                        }
                    } else if e.timed_out() {
                        Status::TimedOut
                    } else {
                        Status::Declined
                    }
                }
                Class::Reversal => {
                    let in_effect = e.approved() || (e.timed_out() && e.switch_reversed());
                    if !in_effect {
                        Status::ReversalRefused
                    } else {
                        let key = (e.terminal.clone(), e.rrn.clone());
                        let original = open.get_mut(&key).and_then(|candidates| {
                            let at = candidates
                                .iter()
                                .position(|&c| entries[c].amount == e.amount)
                                .unwrap_or(0);
                            (!candidates.is_empty()).then(|| candidates.remove(at))
                        });
                        if let Some(o) = original {
                            entries[o].status = Status::ReversedByTerminal(i);
                        }
                        Status::Reversal(original)
                    }
                }
            };
            entries[i].status = status;
        }
        Day {
            date: date.to_owned(),
            entries,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row of `mti` answered `rc` (`None`: timed out), amount 1000 USD,
    /// terminal T1, RRN `rrn`.
    pub(crate) fn entry(txn: u64, mti: u16, rrn: &str, rc: Option<&str>) -> Entry {
        Entry {
            node: "node-1".into(),
            txn,
            mti,
            class: Class::of(mti),
            terminal: "T1".into(),
            merchant: "M1".into(),
            rrn: rrn.into(),
            stan: txn as u32,
            transmission_time: 1_201_101_010,
            amount: 1000,
            currency: 840,
            txn_type: TxnType::Purchase,
            processing_code: Some("000000".into()),
            scheme: Scheme::Visa,
            acquirer: "acq".into(),
            outcome: Some(if rc.is_some() { "answered" } else { "timeout" }.into()),
            response_code: Some(rc.unwrap_or("91").into()),
            approval_code: (rc == Some("00")).then(|| format!("A{txn:05}")),
            stand_in: false,
            batch: None,
            reversal: SafUpdate::default(),
            advice: SafUpdate::default(),
            status: Status::Incomplete,
        }
    }

    fn statuses(entries: Vec<Entry>) -> Vec<Status> {
        Day::classify("2026-12-01", entries)
            .entries
            .iter()
            .map(|e| e.status)
            .collect()
    }

    #[test]
    fn classes_follow_the_mti() {
        assert_eq!(Class::of(200), Class::Financial);
        assert_eq!(Class::of(220), Class::Financial);
        assert_eq!(Class::of(201), Class::Financial);
        assert_eq!(Class::of(100), Class::Authorization);
        assert_eq!(Class::of(400), Class::Reversal);
        assert_eq!(Class::of(421), Class::Reversal);
        assert_eq!(Class::of(800), Class::Other);
        assert_eq!(Class::of(320), Class::TerminalBatch);
        assert_eq!(Class::of(500), Class::TerminalBatch);
    }

    #[test]
    fn batch_uploads_and_closes_are_neither_money_nor_incomplete() {
        let got = statuses(vec![
            entry(1, 200, "R1", Some("00")),
            entry(2, 320, "R1", Some("00")),
            entry(3, 500, "", Some("95")),
        ]);
        assert_eq!(
            got,
            vec![
                Status::Settled,
                Status::TerminalBatch,
                Status::TerminalBatch
            ]
        );
        let day = Day::classify(
            "2026-12-01",
            vec![
                entry(1, 320, "R1", Some("00")),
                entry(2, 500, "", Some("00")),
            ],
        );
        assert_eq!(super::super::report::Report::of(&day).incomplete, 0);
    }

    #[test]
    fn processing_codes_net_by_their_type() {
        assert_eq!(TxnType::of(Some("000000")).sign(), 1);
        assert_eq!(TxnType::of(Some("200000")).sign(), -1);
        assert_eq!(TxnType::of(Some("020000")).sign(), -1);
        assert_eq!(TxnType::of(Some("090000")).sign(), 1);
        assert_eq!(TxnType::of(Some("310000")), TxnType::Other(31));
        assert_eq!(TxnType::of(Some("310000")).sign(), 0);
        assert_eq!(TxnType::of(None), TxnType::Unknown);
        assert_eq!(TxnType::of(None).sign(), 1);
    }

    #[test]
    fn reversals_undo_their_originals_once() {
        let mut switch_reversed = entry(4, 200, "R4", Some("00"));
        switch_reversed.reversal.state = Some(SafState::Acked);
        let mut timed_out_reversal = entry(7, 400, "R5", None);
        timed_out_reversal.reversal.state = Some(SafState::Queued);
        let mut stand_in = entry(8, 200, "R8", Some("00"));
        stand_in.stand_in = true;
        stand_in.reversal.state = Some(SafState::Acked);
        let got = statuses(vec![
            entry(1, 200, "R1", Some("00")),
            entry(2, 100, "R2", Some("00")),
            entry(3, 400, "R1", Some("00")),
            switch_reversed,
            entry(5, 200, "R5", Some("00")),
            entry(6, 400, "R9", Some("00")),
            timed_out_reversal,
            stand_in,
            entry(9, 400, "R1", Some("00")),
            entry(10, 200, "R10", Some("51")),
            entry(11, 200, "R11", None),
            entry(12, 400, "R2", Some("25")),
        ]);
        assert_eq!(
            got,
            vec![
                Status::ReversedByTerminal(2),
                Status::Authorized,
                Status::Reversal(Some(0)),
                Status::ReversedBySwitch,
                Status::ReversedByTerminal(6),
                Status::Reversal(None),
                Status::Reversal(Some(4)),
                Status::Settled,
                Status::Reversal(None),
                Status::Declined,
                Status::TimedOut,
                Status::ReversalRefused,
            ]
        );
    }
}
