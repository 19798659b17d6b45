//! The recent transactions (a ring, for `/api/transactions`), the
//! terminals seen (for `/api/terminals`) and the high-risk ones of the
//! last minutes. Masked PANs only: the events carry no more.

use std::collections::{HashMap, VecDeque};

use super::rollup::approved;
use super::tap::{Event, text};

/// The last `cap` events, oldest first.
pub struct Recent {
    ring: VecDeque<Event>,
    cap: usize,
}

/// What `/api/transactions` looks for; every given field must match.
#[derive(Clone, Debug, Default)]
pub struct Search {
    pub rrn: Option<String>,
    pub stan: Option<u32>,
    pub terminal: Option<String>,
    /// A masked PAN (`411111******1111`) or its first six and last four.
    pub pan: Option<String>,
    pub limit: usize,
}

impl Search {
    pub fn is_empty(&self) -> bool {
        self.rrn.is_none() && self.stan.is_none() && self.terminal.is_none() && self.pan.is_none()
    }

    fn matches(&self, e: &Event, pan: Option<(&[u8], &[u8])>) -> bool {
        self.rrn.as_deref().is_none_or(|r| text(&e.rrn) == r)
            && self.stan.is_none_or(|s| e.stan == s)
            && self
                .terminal
                .as_deref()
                .is_none_or(|t| text(&e.terminal) == t)
            && pan.is_none_or(|(first, last)| {
                e.has_pan() && e.bin[..] == *first && e.last4[..] == *last
            })
    }
}

/// The first six and last four digits of a masked PAN as given
/// (`411111******1111`, `411111...1111`, `4111111111`).
pub fn pan_parts(s: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let b = s.as_bytes();
    if b.len() < 10 {
        return None;
    }
    let (first, last) = (&b[..6], &b[b.len() - 4..]);
    (first.iter().chain(last).all(u8::is_ascii_digit)).then(|| (first.to_vec(), last.to_vec()))
}

impl Recent {
    pub fn new(cap: usize) -> Recent {
        Recent {
            // Grown as it fills: an idle switch does not hold 10 MB.
            ring: VecDeque::new(),
            cap,
        }
    }

    pub fn add(&mut self, e: &Event) {
        if self.cap == 0 {
            return;
        }
        if self.ring.len() >= self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back(*e);
    }

    /// The newest matches first, at most `s.limit`.
    pub fn search(&self, s: &Search) -> Vec<Event> {
        let parts = s.pan.as_deref().and_then(pan_parts);
        if s.pan.is_some() && parts.is_none() {
            return Vec::new();
        }
        let pan = parts.as_ref().map(|(f, l)| (f.as_slice(), l.as_slice()));
        self.ring
            .iter()
            .rev()
            .filter(|e| s.matches(e, pan))
            .take(s.limit)
            .copied()
            .collect()
    }

    /// The newest events matching `keep`, at most `n`, since `from_ms`.
    pub fn latest(&self, n: usize, from_ms: u64, keep: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.ring
            .iter()
            .rev()
            .take_while(|e| e.unix_ms >= from_ms)
            .filter(|e| keep(e))
            .take(n)
            .copied()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

/// One terminal's totals since it was first seen (or since it came back
/// after eviction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TerminalStats {
    pub requests: u64,
    pub approved: u64,
    /// Authorizations and financials (what the approval rate is over).
    pub decisions: u64,
    pub decisions_approved: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub last_code: [u8; 2],
    pub merchant: [u8; 15],
}

/// Terminals by DE41, at most `cap`: when full, the tenth seen longest
/// ago is forgotten.
pub struct Terminals {
    map: HashMap<[u8; 8], TerminalStats, super::rollup::Hasher>,
    cap: usize,
}

impl Terminals {
    pub fn new(cap: usize) -> Terminals {
        Terminals {
            map: HashMap::default(),
            cap: cap.max(1),
        }
    }

    pub fn add(&mut self, e: &Event) {
        if e.terminal == [b' '; 8] {
            return;
        }
        if !self.map.contains_key(&e.terminal) && self.map.len() >= self.cap {
            let mut ages: Vec<u64> = self.map.values().map(|t| t.last_seen_ms).collect();
            let tenth = (ages.len() / 10).max(1);
            let (_, &mut cut, _) = ages.select_nth_unstable(tenth - 1);
            let mut left = tenth;
            self.map.retain(|_, t| {
                if left > 0 && t.last_seen_ms <= cut {
                    left -= 1;
                    false
                } else {
                    true
                }
            });
        }
        let t = self.map.entry(e.terminal).or_insert(TerminalStats {
            first_seen_ms: e.unix_ms,
            ..TerminalStats::default()
        });
        let ok = approved(e.code);
        t.requests += 1;
        t.approved += u64::from(ok);
        if super::rollup::is_decision(e.mti) {
            t.decisions += 1;
            t.decisions_approved += u64::from(ok);
        }
        t.last_seen_ms = t.last_seen_ms.max(e.unix_ms);
        t.last_code = e.code;
        if e.merchant != [b' '; 15] {
            t.merchant = e.merchant;
        }
    }

    /// Every terminal kept, the most recently seen first.
    pub fn list(&self) -> Vec<([u8; 8], TerminalStats)> {
        let mut v: Vec<_> = self.map.iter().map(|(k, t)| (*k, *t)).collect();
        v.sort_by(|a, b| b.1.last_seen_ms.cmp(&a.1.last_seen_ms).then(a.0.cmp(&b.0)));
        v
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u32, terminal: &[u8; 8]) -> Event {
        let mut rrn = [b' '; 12];
        rrn.copy_from_slice(format!("{:012}", 500_000_000_000u64 + u64::from(i)).as_bytes());
        Event {
            unix_ms: 1_000 + u64::from(i),
            mti: 200,
            code: if i % 2 == 0 { *b"00" } else { *b"05" },
            stan: i,
            rrn,
            terminal: *terminal,
            bin: *b"411111",
            last4: *b"1111",
            pan_len: 16,
            ..Event::default()
        }
    }

    #[test]
    fn search_by_rrn_stan_terminal_and_masked_pan() {
        let mut r = Recent::new(1000);
        for i in 0..3000 {
            r.add(&event(
                i,
                if i % 3 == 0 { b"TERM0001" } else { b"TERM0002" },
            ));
        }
        assert_eq!(r.len(), 1000);
        let s = |f: fn(&mut Search)| {
            let mut s = Search {
                limit: 10,
                ..Search::default()
            };
            f(&mut s);
            r.search(&s)
        };
        let found = s(|s| s.rrn = Some("500000002999".into()));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].stan, 2999);
        assert!(
            s(|s| s.rrn = Some("500000000001".into())).is_empty(),
            "evicted"
        );
        let found = s(|s| {
            s.stan = Some(2997);
            s.terminal = Some("TERM0001".into());
        });
        assert_eq!(found.len(), 1);
        assert!(
            s(|s| {
                s.stan = Some(2997);
                s.terminal = Some("TERM0002".into());
            })
            .is_empty()
        );
        let found = s(|s| s.pan = Some("411111******1111".into()));
        assert_eq!(found.len(), 10);
        assert_eq!(found[0].stan, 2999, "newest first");
        assert!(s(|s| s.pan = Some("411111******2222".into())).is_empty());
        assert!(s(|s| s.pan = Some("4111".into())).is_empty());
        assert!(
            Recent::new(0)
                .search(&Search {
                    limit: 1,
                    ..Search::default()
                })
                .is_empty()
        );
    }

    #[test]
    fn terminals_are_counted_and_bounded() {
        let mut t = Terminals::new(100);
        for i in 0..1000u32 {
            let mut tid = *b"T0000000";
            tid[1..].copy_from_slice(format!("{:07}", i % 500).as_bytes());
            t.add(&event(i, &tid));
            assert!(t.len() <= 100);
        }
        let list = t.list();
        assert_eq!(&list[0].0, b"T0000499");
        // Forgotten in between (a hundred others came since), counted
        // again from its return.
        assert_eq!(list[0].1.requests, 1);
        assert_eq!(list[0].1.first_seen_ms, 1_999);
        assert_eq!(list[0].1.last_code, *b"05");
    }
}
