//! The simulator's own settlement file (`--settlement-file`), so tests of
//! the switch's reconciliation have a real counterpart: what the host
//! approved, minus what a reversal it received took back.
//!
//! Kept: financial transactions (0200/0201) it approved, and financial
//! advices (0220/0221, a stand-in or offline approval it was told of)
//! that say 00. Authorizations (0100) are not: they hold funds, a
//! settlement file lists what moves money. A reversal (0400/0401,
//! 0420/0421) takes back the record its DE90 names (original STAN and
//! DE7; without DE90 its own DE11 and DE7) for its DE41; one that names
//! nothing kept is counted and changes nothing. Requests dropped on
//! purpose (`drop-every`, `stop`) were never decided, so never kept.
//!
//! The file is CSV with a header line, one record a line in (terminal,
//! STAN, DE7) order; amounts are integer minor units:
//!
//! ```text
//! rrn,approval_code,amount,currency,terminal,stan,date,local_date,transmission_time,processing_code,mti
//! 000100000001,000001,1250,840,LT000123,000001,1125,,1125101010,000000,0200
//! ```
//!
//! `date` is DE7's MMDD, `local_date` DE13 when the request had one. It is
//! written (whole, through a temporary file and a rename) by the control
//! commands `settlement`, `cutover` (which then starts a new day with
//! nothing kept) and `skew N`, and when the simulator stops.
//!
//! `skew N` alters N records deterministically, cycling through three
//! changes: an amount raised by 1.00 (100 minor units), a record dropped,
//! a record added (terminal `SKEW0001`, a STAN and RRN of its own). The
//! records changed or dropped are spread evenly over the (sorted) file;
//! each change is one exception for a reconciliation.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::iso8583::{Message, SmallText};

/// (DE41 without padding, DE11, DE7): what a reversal names.
type Key = (SmallText, u32, u64);

/// One kept record, copied out of the request (no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    pub mti: u16,
    pub rrn: SmallText,
    pub approval: SmallText,
    pub amount: u64,
    pub currency: u16,
    pub terminal: SmallText,
    pub stan: u32,
    /// DE7, `MMDDhhmmss`.
    pub transmission_time: u64,
    /// DE13, `MMDD`.
    pub local_date: Option<u16>,
    pub processing_code: Option<u32>,
}

impl Settled {
    fn key(&self) -> Key {
        (self.terminal, self.stan, self.transmission_time)
    }
}

/// What one answered request does to the file; collected per connection
/// batch and applied under the lock once per batch.
#[derive(Clone, Copy, Debug)]
pub(super) enum Event {
    Approved(Settled),
    Reversed(Key),
}

fn trimmed(t: Option<SmallText>) -> SmallText {
    t.and_then(|t| SmallText::new(t.trimmed()))
        .unwrap_or(SmallText::EMPTY)
}

/// The event of an answered request, if it has one: `approval` is the
/// code the simulator gave (decisions); an advice carries its own DE38.
pub(super) fn event(msg: &Message, code: [u8; 2], approval: Option<[u8; 6]>) -> Option<Event> {
    let mti = msg.mti();
    let (class, function) = (mti.class(), mti.function());
    if class == 4 {
        return reversal_key(msg).map(Event::Reversed);
    }
    if class != 2 || code != crate::codes::APPROVED {
        return None;
    }
    let approval = match (function, approval) {
        (0, Some(a)) => SmallText::new(&a)?,
        // An advice: approved if it says so.
        (2, _) if msg.response_code() == Some(crate::codes::APPROVED) => trimmed(msg.text(38)),
        _ => return None,
    };
    Some(Event::Approved(Settled {
        mti: mti.value(),
        rrn: trimmed(msg.rrn()),
        approval,
        amount: msg.amount_minor().unwrap_or(0),
        currency: msg.currency().unwrap_or(0),
        terminal: trimmed(msg.terminal_id()),
        stan: msg.stan().unwrap_or(0),
        transmission_time: msg.transmission_time().unwrap_or(0),
        local_date: msg.number(13).and_then(|v| u16::try_from(v).ok()),
        processing_code: msg.number(3).and_then(|v| u32::try_from(v).ok()),
    }))
}

/// The record a reversal takes back: DE41 with DE90's original STAN and
/// DE7, or its own DE11 and DE7 without a DE90.
fn reversal_key(msg: &Message) -> Option<Key> {
    let terminal = trimmed(msg.terminal_id());
    let digits = |b: &[u8]| -> Option<u64> {
        (!b.is_empty() && b.iter().all(u8::is_ascii_digit))
            .then(|| b.iter().fold(0u64, |a, &d| a * 10 + u64::from(d - b'0')))
    };
    if let Some(de90) = msg.text(90)
        && de90.len() >= 20
        && let (Some(stan), Some(de7)) = (digits(&de90[4..10]), digits(&de90[10..20]))
    {
        return Some((terminal, stan as u32, de7));
    }
    Some((terminal, msg.stan()?, msg.transmission_time()?))
}

/// The records of the current day, and where they are written.
pub(super) struct Book {
    path: PathBuf,
    records: HashMap<Key, Settled>,
    /// Reversals that named nothing kept (never approved, dropped, or
    /// already reversed).
    unmatched_reversals: u64,
    /// Records `skew` added so far: each gets its own STAN and RRN.
    added: u64,
}

impl Book {
    pub(super) fn new(path: PathBuf) -> Book {
        Book {
            path,
            records: HashMap::new(),
            unmatched_reversals: 0,
            added: 0,
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn apply(&mut self, events: &mut Vec<Event>) {
        for e in events.drain(..) {
            match e {
                Event::Approved(r) => {
                    self.records.insert(r.key(), r);
                }
                Event::Reversed(k) => {
                    if self.records.remove(&k).is_none() {
                        self.unmatched_reversals += 1;
                    }
                }
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    fn sorted(&self) -> Vec<&Settled> {
        let mut v: Vec<&Settled> = self.records.values().collect();
        v.sort_by(|a, b| {
            (a.terminal.as_bytes(), a.stan, a.transmission_time).cmp(&(
                b.terminal.as_bytes(),
                b.stan,
                b.transmission_time,
            ))
        });
        v
    }

    /// The file's text.
    pub(super) fn csv(&self) -> String {
        let text = |t: &SmallText| String::from_utf8_lossy(t.as_bytes()).into_owned();
        let mut o = String::from(
            "rrn,approval_code,amount,currency,terminal,stan,date,local_date,\
             transmission_time,processing_code,mti\n",
        );
        for r in self.sorted() {
            let _ = writeln!(
                o,
                "{},{},{},{:03},{},{:06},{:04},{},{:010},{},{:04}",
                field(&text(&r.rrn)),
                field(&text(&r.approval)),
                r.amount,
                r.currency,
                field(&text(&r.terminal)),
                r.stan,
                r.transmission_time / 1_000_000 % 10_000,
                r.local_date.map_or(String::new(), |d| format!("{d:04}")),
                r.transmission_time,
                r.processing_code
                    .map_or(String::new(), |p| format!("{p:06}")),
                r.mti,
            );
        }
        o
    }

    /// Writes the file (a temporary file renamed over it); how many
    /// records.
    pub(super) fn write(&self) -> std::io::Result<usize> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, self.csv())?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(self.records.len())
    }

    /// Starts a new day: nothing kept.
    pub(super) fn cutover(&mut self) {
        self.records.clear();
        self.unmatched_reversals = 0;
    }

    /// Whether an acquirer reconciliation's totals (0520: DE74-DE77,
    /// DE86-DE89, DE97, in the currency of DE50) agree with what this
    /// book holds in that currency, reversals netted: DE66 1, else 2. A
    /// 0520 whose totals can not be read does not agree.
    pub(super) fn balances(&self, msg: &Message) -> bool {
        use crate::switch::settlement::batch::{Side, Totals};
        let Ok(theirs) = Totals::read(msg) else {
            return false;
        };
        let currency = msg.number(50).and_then(|c| u16::try_from(c).ok());
        let mut own = Totals::default();
        for r in self.records.values() {
            if Some(r.currency) != currency {
                continue;
            }
            if let Some(side) = Side::of(r.processing_code) {
                own.add(side, false, r.amount);
            }
        }
        theirs.balances(&own)
    }

    pub(super) fn unmatched_reversals(&self) -> u64 {
        self.unmatched_reversals
    }

    /// Alters `n` records (see the module documentation); says what it
    /// did.
    pub(super) fn skew(&mut self, n: usize) -> Result<String, String> {
        // Change, drop, add, change, drop, add...
        let (changes, drops) = (n.div_ceil(3), (n + 1) / 3);
        let adds = n - changes - drops;
        let touched = changes + drops;
        let keys: Vec<Key> = self.sorted().iter().map(|r| r.key()).collect();
        if touched > keys.len() {
            return Err(format!(
                "skew {n} changes or drops {touched} records; there are {}",
                keys.len()
            ));
        }
        // Evenly spread, distinct (touched <= len).
        let targets: Vec<Key> = (0..touched)
            .map(|j| keys[j * keys.len() / touched])
            .collect();
        let (mut c, mut d) = (0, 0);
        for (i, key) in targets.into_iter().enumerate() {
            // Alternately, while both kinds are left.
            let is_change = if c == changes {
                false
            } else if d == drops {
                true
            } else {
                i % 2 == 0
            };
            if is_change {
                if let Some(r) = self.records.get_mut(&key) {
                    r.amount += 100;
                }
                c += 1;
            } else {
                self.records.remove(&key);
                d += 1;
            }
        }
        let template = keys.first().and_then(|k| self.records.get(k)).copied();
        for _ in 0..adds {
            self.added += 1;
            let k = self.added;
            let rrn = format!("9{k:011}");
            let approval = format!("SK{:04}", k % 10_000);
            let r = Settled {
                mti: 200,
                rrn: SmallText::new(rrn.as_bytes()).unwrap_or(SmallText::EMPTY),
                approval: SmallText::new(approval.as_bytes()).unwrap_or(SmallText::EMPTY),
                amount: 1234,
                currency: template.map_or(840, |t| t.currency),
                terminal: SmallText::new(b"SKEW0001").unwrap_or(SmallText::EMPTY),
                stan: (900_000 + k % 100_000) as u32,
                transmission_time: template.map_or(101_000_000, |t| t.transmission_time),
                local_date: None,
                processing_code: Some(0),
            };
            self.records.insert(r.key(), r);
        }
        Ok(format!(
            "altered {n} records ({changes} amounts, {drops} dropped, {adds} added)"
        ))
    }
}

/// A CSV field, quoted when it needs to be.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stan: u32) -> Settled {
        Settled {
            mti: 200,
            rrn: SmallText::new(format!("{:012}", 100 + stan).as_bytes()).expect("fits"),
            approval: SmallText::new(format!("{stan:06}").as_bytes()).expect("fits"),
            amount: 1000 + u64::from(stan),
            currency: 840,
            terminal: SmallText::new(b"LT000001").expect("fits"),
            stan,
            transmission_time: 1_125_101_010,
            local_date: None,
            processing_code: Some(0),
        }
    }

    fn book(n: u32) -> Book {
        let mut b = Book::new(PathBuf::from("unused.csv"));
        let mut events: Vec<Event> = (1..=n).map(|s| Event::Approved(record(s))).collect();
        b.apply(&mut events);
        b
    }

    #[test]
    fn reversals_take_back_what_they_name_once() {
        let mut b = book(3);
        let k = record(2).key();
        b.apply(&mut vec![Event::Reversed(k), Event::Reversed(k)]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.unmatched_reversals(), 1);
        let csv = b.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1],
            "000000000101,000001,1001,840,LT000001,000001,1125,,1125101010,000000,0200"
        );
        assert!(lines[2].contains(",000003,"));
    }

    /// An 0520 in `currency` with these debits (count, amount).
    fn reconciliation(currency: &[u8], debits: u64, amount: u64) -> Message {
        use crate::iso8583::{MessageBuilder, Mti, specs::iso87ascii};
        let mut b = MessageBuilder::new(iso87ascii(), Mti::new(520).expect("mti"));
        b.set_number(11, 1)
            .set(41, b"SWRECON1")
            .set(50, currency)
            .set_number(76, debits)
            .set_number(88, amount);
        Message::parse(b.to_bytes().expect("packs").freeze(), iso87ascii()).expect("parses")
    }

    #[test]
    fn a_reconciliation_balances_with_the_book_of_its_currency_only() {
        let mut b = book(3); // 1001 + 1002 + 1003 in 840
        assert!(b.balances(&reconciliation(b"840", 3, 3006)));
        assert!(!b.balances(&reconciliation(b"840", 3, 3005)), "a cent off");
        assert!(!b.balances(&reconciliation(b"840", 2, 3006)), "a count off");
        assert!(
            !b.balances(&reconciliation(b"978", 3, 3006)),
            "nothing in EUR"
        );
        assert!(b.balances(&reconciliation(b"978", 0, 0)));
        b.skew(1).expect("skews");
        assert!(!b.balances(&reconciliation(b"840", 3, 3006)), "skewed");
    }

    #[test]
    fn skew_alters_exactly_n_records_the_same_way_every_time() {
        let mut a = book(20);
        let said = a.skew(7).expect("skews");
        assert_eq!(said, "altered 7 records (3 amounts, 2 dropped, 2 added)");
        assert_eq!(a.len(), 20);
        let mut b = book(20);
        b.skew(7).expect("skews");
        assert_eq!(a.csv(), b.csv(), "deterministic");
        let original = book(20);
        let before: std::collections::HashSet<String> =
            original.csv().lines().map(str::to_owned).collect();
        let after: std::collections::HashSet<String> = a.csv().lines().map(str::to_owned).collect();
        // 3 changed + 2 dropped lines gone, 3 changed + 2 added new.
        assert_eq!(before.difference(&after).count(), 5);
        assert_eq!(after.difference(&before).count(), 5);
        assert!(book(2).skew(7).is_err(), "5 to change or drop, 2 there");
        let mut one = book(5);
        assert_eq!(
            one.skew(1).expect("skews"),
            "altered 1 records (1 amounts, 0 dropped, 0 added)"
        );
    }
}
