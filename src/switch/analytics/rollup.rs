//! Rollups: counts and amounts per second and per minute, an hour of
//! each, by every dimension the dashboard shows; latency histograms; the
//! fraud decisions and their rules.
//!
//! Everything is bounded: the rings hold 3,600 seconds and 60 minutes;
//! the maps of many keys (terminals, merchants, BINs, MCCs, countries)
//! keep at most `cap` keys per window, and when a new key finds one full
//! the smallest tenth by count is evicted (their counts are lost, the
//! heavy hitters stay: a key needs a tenth of the window's traffic
//! arriving after the eviction to be missed, which a top-N view can bear).
//! Amounts are summed in minor units whatever the currency; `by_currency`
//! says what was mixed.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The maps' hasher: foldhash, seeded per process. Two windows take
/// about 20 map updates per event on the analytics thread; SipHash (the
/// std default) made them a tenth of the switch's CPU.
pub(crate) type Hasher = foldhash::fast::RandomState;

use serde::Serialize;

use super::tap::{Event, NO_ACQUIRER};

/// Approved as far as the approval rate goes (ISO 8583:1987 00, 08, 10, 11).
pub fn approved(code: [u8; 2]) -> bool {
    matches!(&code, b"00" | b"08" | b"10" | b"11")
}

/// Authorizations and financials: the requests an approval rate is about.
pub fn is_decision(mti: u16) -> bool {
    matches!(mti / 100 % 10, 1 | 2) && mti % 100 / 10 == 0
}

/// The card scheme, from the BIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    UnionPay,
    Other,
    None,
}

impl Scheme {
    pub const ALL: [Scheme; 8] = [
        Scheme::Visa,
        Scheme::Mastercard,
        Scheme::Amex,
        Scheme::Discover,
        Scheme::Jcb,
        Scheme::UnionPay,
        Scheme::Other,
        Scheme::None,
    ];

    pub fn of(bin: &[u8; 6], has_pan: bool) -> Scheme {
        if !has_pan || !bin.iter().all(u8::is_ascii_digit) {
            return Scheme::None;
        }
        let n = |k: usize| {
            bin[..k]
                .iter()
                .fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'))
        };
        match (n(1), n(2), n(3), n(4)) {
            (4, ..) => Scheme::Visa,
            (_, 51..=55, ..) | (.., 2221..=2720) => Scheme::Mastercard,
            (_, 34 | 37, ..) => Scheme::Amex,
            (.., 6011) | (_, 65, ..) => Scheme::Discover,
            (.., 3528..=3589) => Scheme::Jcb,
            (_, 62, ..) => Scheme::UnionPay,
            _ => Scheme::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scheme::Visa => "visa",
            Scheme::Mastercard => "mastercard",
            Scheme::Amex => "amex",
            Scheme::Discover => "discover",
            Scheme::Jcb => "jcb",
            Scheme::UnionPay => "unionpay",
            Scheme::Other => "other",
            Scheme::None => "none",
        }
    }
}

/// Latency histogram in microseconds: log-linear, 8 buckets per power of
/// two (within 12.5%), 1 µs to 71 minutes, 960 bytes.
#[derive(Clone)]
pub struct Hist {
    counts: [u32; BUCKETS],
    n: u64,
}

const BUCKETS: usize = 240;

impl Default for Hist {
    fn default() -> Hist {
        Hist {
            counts: [0; BUCKETS],
            n: 0,
        }
    }
}

impl Hist {
    fn bucket(v: u32) -> usize {
        if v < 8 {
            return v as usize;
        }
        let octave = 31 - v.leading_zeros();
        let sub = (v >> (octave - 3)) & 7;
        ((octave - 2) * 8 + sub) as usize
    }

    /// The highest value of bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < 8 {
            return i as u64;
        }
        let octave = (i / 8 + 2) as u32;
        let sub = (i % 8) as u64;
        ((8 + sub + 1) << (octave - 3)) - 1
    }

    pub fn record(&mut self, us: u32) {
        self.counts[Hist::bucket(us)] = self.counts[Hist::bucket(us)].saturating_add(1);
        self.n += 1;
    }

    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.n += o.n;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// The value at quantile `q` (0..=1), as its bucket's upper bound;
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.n as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(Hist::upper(i));
            }
        }
        Some(Hist::upper(BUCKETS - 1))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub n: u64,
    pub approved: u64,
    pub amount: u64,
}

impl Counts {
    fn add(&mut self, ok: bool, amount: u64) {
        self.n += 1;
        self.approved += u64::from(ok);
        self.amount = self.amount.saturating_add(amount);
    }

    fn merge(&mut self, o: &Counts) {
        self.n += o.n;
        self.approved += o.approved;
        self.amount = self.amount.saturating_add(o.amount);
    }

    pub fn declined(&self) -> u64 {
        self.n - self.approved
    }
}

/// Counts by key, at most `cap` keys (see the module's comment).
#[derive(Clone)]
pub struct TopMap<K> {
    map: HashMap<K, Counts, Hasher>,
    cap: usize,
}

impl<K: Copy + Eq + Hash> TopMap<K> {
    pub fn new(cap: usize) -> TopMap<K> {
        TopMap {
            map: HashMap::default(),
            cap: cap.max(1),
        }
    }

    pub fn add(&mut self, k: K, ok: bool, amount: u64) {
        if !self.map.contains_key(&k) && self.map.len() >= self.cap {
            self.evict();
        }
        self.map.entry(k).or_default().add(ok, amount);
    }

    fn evict(&mut self) {
        let mut by_n: Vec<u64> = self.map.values().map(|c| c.n).collect();
        let tenth = (by_n.len() / 10).max(1);
        let (_, &mut cut, _) = by_n.select_nth_unstable(tenth - 1);
        let mut left = tenth;
        self.map.retain(|_, c| {
            if left > 0 && c.n <= cut {
                left -= 1;
                false
            } else {
                true
            }
        });
    }

    pub fn merge(&mut self, o: &TopMap<K>) {
        for (k, c) in &o.map {
            if !self.map.contains_key(k) && self.map.len() >= self.cap {
                self.evict();
            }
            self.map.entry(*k).or_default().merge(c);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, k: &K) -> Option<&Counts> {
        self.map.get(k)
    }

    /// The `n` largest by `key`, ties by count; zeros left out.
    pub fn top(&self, n: usize, key: impl Fn(&Counts) -> u64) -> Vec<(K, Counts)> {
        let mut v: Vec<(K, Counts)> = self
            .map
            .iter()
            .filter(|(_, c)| key(c) > 0)
            .map(|(k, c)| (*k, *c))
            .collect();
        v.sort_by(|a, b| key(&b.1).cmp(&key(&a.1)).then(b.1.n.cmp(&a.1.n)));
        v.truncate(n);
        v
    }
}

/// Fraud decisions and the rules behind reviews and declines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FraudCounts {
    pub allowed: u64,
    pub reviewed: u64,
    pub declined: u64,
    /// By `fraud::RuleId`, for reviews and declines.
    pub reasons: [u64; 16],
}

impl FraudCounts {
    fn add(&mut self, e: &Event) {
        match e.decision {
            0 => self.allowed += 1,
            1 => self.reviewed += 1,
            2 => self.declined += 1,
            _ => return,
        }
        if e.decision > 0 {
            for (i, r) in self.reasons.iter_mut().enumerate() {
                *r += u64::from(e.reasons >> i & 1);
            }
        }
    }

    fn merge(&mut self, o: &FraudCounts) {
        self.allowed += o.allowed;
        self.reviewed += o.reviewed;
        self.declined += o.declined;
        for (a, b) in self.reasons.iter_mut().zip(o.reasons) {
            *a += b;
        }
    }
}

/// Low-cardinality keys (MTIs, codes, acquirers, currencies) kept per
/// window at most; a host inventing codes cannot grow a window further.
const FEW: usize = 64;

/// One second or one minute.
#[derive(Clone)]
pub struct Window {
    /// Unix seconds at its start.
    pub start_s: u64,
    pub total: Counts,
    /// Authorizations and financials: the approval rate's.
    pub decisions: Counts,
    pub stand_in: u64,
    pub by_mti: TopMap<u16>,
    pub by_code: TopMap<[u8; 2]>,
    /// DE39 of authorizations and financials only.
    pub by_decision_code: TopMap<[u8; 2]>,
    pub by_acquirer: TopMap<u16>,
    pub by_currency: TopMap<u16>,
    pub by_scheme: [Counts; 8],
    pub by_terminal: TopMap<[u8; 8]>,
    pub by_merchant: TopMap<[u8; 15]>,
    pub by_bin: TopMap<[u8; 6]>,
    pub by_mcc: TopMap<u16>,
    pub by_country: TopMap<u16>,
    pub latency: Hist,
    pub rtt: Hist,
    /// Round trips by acquirer: minute windows only (a second's would
    /// cost 960 bytes per acquirer 3,600 times over).
    pub rtt_by_acquirer: Vec<(u16, Hist)>,
    pub fraud: FraudCounts,
    /// Whether the many-key dimensions (terminal, merchant, BIN, MCC,
    /// country) are counted: not in a second's window, which nothing
    /// reads them from (the charts take its totals, codes and latency).
    pub keeps_parties: bool,
}

/// Acquirers with their own round-trip histogram per minute.
const RTT_ACQUIRERS: usize = 32;

impl Window {
    pub fn new(start_s: u64, many: usize) -> Window {
        Window {
            start_s,
            total: Counts::default(),
            decisions: Counts::default(),
            stand_in: 0,
            by_mti: TopMap::new(FEW),
            by_code: TopMap::new(FEW),
            by_decision_code: TopMap::new(FEW),
            by_acquirer: TopMap::new(FEW),
            by_currency: TopMap::new(FEW),
            by_scheme: [Counts::default(); 8],
            by_terminal: TopMap::new(many),
            by_merchant: TopMap::new(many),
            by_bin: TopMap::new(many),
            by_mcc: TopMap::new(many),
            by_country: TopMap::new(many),
            latency: Hist::default(),
            rtt: Hist::default(),
            rtt_by_acquirer: Vec::new(),
            fraud: FraudCounts::default(),
            keeps_parties: many > 0,
        }
    }

    /// Counts `e`, whose country is `country` (DE19, else the terminal's
    /// or the BIN's, as the caller found it).
    pub fn add(&mut self, e: &Event, country: u16, per_acquirer_rtt: bool) {
        let ok = approved(e.code);
        let amount = e.amount;
        self.total.add(ok, amount);
        if is_decision(e.mti) {
            self.decisions.add(ok, amount);
            self.by_decision_code.add(e.code, ok, amount);
        }
        self.stand_in += u64::from(e.stand_in);
        self.by_mti.add(e.mti, ok, amount);
        self.by_code.add(e.code, ok, amount);
        if e.acquirer != NO_ACQUIRER {
            self.by_acquirer.add(e.acquirer, ok, amount);
        }
        if e.currency != 0 {
            self.by_currency.add(e.currency, ok, amount);
        }
        let scheme = Scheme::of(&e.bin, e.has_pan());
        self.by_scheme[scheme as usize].add(ok, amount);
        if self.keeps_parties {
            self.add_parties(e, country, ok);
        }
        self.latency.record(e.latency_us);
        if e.rtt_us > 0 {
            self.rtt.record(e.rtt_us);
            if per_acquirer_rtt && e.acquirer != NO_ACQUIRER {
                let full = self.rtt_by_acquirer.len() >= RTT_ACQUIRERS;
                match self
                    .rtt_by_acquirer
                    .iter_mut()
                    .find(|(a, _)| *a == e.acquirer)
                {
                    Some((_, h)) => h.record(e.rtt_us),
                    None if !full => {
                        let mut h = Hist::default();
                        h.record(e.rtt_us);
                        self.rtt_by_acquirer.push((e.acquirer, h));
                    }
                    None => {}
                }
            }
        }
        self.fraud.add(e);
    }

    fn add_parties(&mut self, e: &Event, country: u16, ok: bool) {
        let amount = e.amount;
        if e.terminal != [b' '; 8] {
            self.by_terminal.add(e.terminal, ok, amount);
        }
        if e.merchant != [b' '; 15] {
            self.by_merchant.add(e.merchant, ok, amount);
        }
        if e.has_pan() {
            self.by_bin.add(e.bin, ok, amount);
        }
        if e.mcc != u16::MAX {
            self.by_mcc.add(e.mcc, ok, amount);
        }
        if country != 0 {
            self.by_country.add(country, ok, amount);
        }
    }

    /// Adds `o` into this window (a view over several).
    pub fn merge(&mut self, o: &Window) {
        self.total.merge(&o.total);
        self.decisions.merge(&o.decisions);
        self.stand_in += o.stand_in;
        self.by_mti.merge(&o.by_mti);
        self.by_code.merge(&o.by_code);
        self.by_decision_code.merge(&o.by_decision_code);
        self.by_acquirer.merge(&o.by_acquirer);
        self.by_currency.merge(&o.by_currency);
        for (a, b) in self.by_scheme.iter_mut().zip(o.by_scheme.iter()) {
            a.merge(b);
        }
        self.by_terminal.merge(&o.by_terminal);
        self.by_merchant.merge(&o.by_merchant);
        self.by_bin.merge(&o.by_bin);
        self.by_mcc.merge(&o.by_mcc);
        self.by_country.merge(&o.by_country);
        self.latency.merge(&o.latency);
        self.rtt.merge(&o.rtt);
        for (a, h) in &o.rtt_by_acquirer {
            let full = self.rtt_by_acquirer.len() >= RTT_ACQUIRERS;
            match self.rtt_by_acquirer.iter_mut().find(|(x, _)| x == a) {
                Some((_, mine)) => mine.merge(h),
                None if !full => self.rtt_by_acquirer.push((*a, h.clone())),
                None => {}
            }
        }
        self.fraud.merge(&o.fraud);
    }

    /// Approved share of authorizations and financials; `None` without any.
    pub fn approval_rate(&self) -> Option<f64> {
        (self.decisions.n > 0).then(|| self.decisions.approved as f64 / self.decisions.n as f64)
    }
}

/// The last `len` windows of `span_s` seconds each, oldest first.
pub struct Ring {
    span_s: u64,
    len: usize,
    many: usize,
    per_acquirer_rtt: bool,
    windows: VecDeque<Window>,
}

impl Ring {
    pub fn new(span_s: u64, len: usize, many: usize) -> Ring {
        Ring {
            span_s,
            len,
            many,
            per_acquirer_rtt: span_s >= 60,
            windows: VecDeque::new(),
        }
    }

    /// The window for `unix_s`: the newest, a new one, or an older one
    /// still kept (an event a little late); one older than the ring
    /// counts into the oldest.
    fn window(&mut self, unix_s: u64) -> &mut Window {
        let start = unix_s - unix_s % self.span_s;
        let newest = self.windows.back().map(|w| w.start_s);
        if newest.is_none_or(|n| start > n) {
            if self.windows.len() >= self.len {
                self.windows.pop_front();
            }
            self.windows.push_back(Window::new(start, self.many));
        }
        let i = self
            .windows
            .iter()
            .rposition(|w| w.start_s <= start)
            .unwrap_or(0);
        &mut self.windows[i]
    }

    pub fn add(&mut self, e: &Event, country: u16) {
        let per = self.per_acquirer_rtt;
        self.window(e.unix_ms / 1000).add(e, country, per);
    }

    /// Windows starting at or after `from_s`, oldest first.
    pub fn since(&self, from_s: u64) -> impl Iterator<Item = &Window> {
        self.windows.iter().filter(move |w| w.start_s >= from_s)
    }

    /// One window merging those starting at or after `from_s`.
    pub fn merged_since(&self, from_s: u64, many: usize) -> Window {
        let mut m = Window::new(from_s, many);
        for w in self.since(from_s) {
            m.merge(w);
        }
        m
    }

    /// One window merging those starting in `from_s..to_s`.
    pub fn merged_between(&self, from_s: u64, to_s: u64, many: usize) -> Window {
        let mut m = Window::new(from_s, many);
        for w in self.since(from_s).filter(|w| w.start_s < to_s) {
            m.merge(w);
        }
        m
    }

    pub fn get(&self, start_s: u64) -> Option<&Window> {
        self.windows.iter().rev().find(|w| w.start_s == start_s)
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at_s: u64, code: &[u8; 2], terminal: &[u8; 8]) -> Event {
        Event {
            unix_ms: at_s * 1000 + 5,
            mti: 200,
            code: *code,
            terminal: *terminal,
            bin: *b"411111",
            last4: *b"1111",
            pan_len: 16,
            amount: 100,
            latency_us: 120,
            ..Event::default()
        }
    }

    #[test]
    fn schemes_from_the_bin() {
        let s = |b: &[u8; 6]| Scheme::of(b, true);
        assert_eq!(s(b"411111"), Scheme::Visa);
        assert_eq!(s(b"510000"), Scheme::Mastercard);
        assert_eq!(s(b"222100"), Scheme::Mastercard);
        assert_eq!(s(b"272099"), Scheme::Mastercard);
        assert_eq!(s(b"272100"), Scheme::Other);
        assert_eq!(s(b"340000"), Scheme::Amex);
        assert_eq!(s(b"370000"), Scheme::Amex);
        assert_eq!(s(b"601100"), Scheme::Discover);
        assert_eq!(s(b"650000"), Scheme::Discover);
        assert_eq!(s(b"352800"), Scheme::Jcb);
        assert_eq!(s(b"358999"), Scheme::Jcb);
        assert_eq!(s(b"620000"), Scheme::UnionPay);
        assert_eq!(s(b"900000"), Scheme::Other);
        assert_eq!(Scheme::of(b"411111", false), Scheme::None);
    }

    #[test]
    fn histogram_quantiles_within_an_eighth() {
        let mut h = Hist::default();
        for v in 1..=10_000u32 {
            h.record(v);
        }
        let p50 = h.quantile(0.5).expect("some") as f64;
        let p99 = h.quantile(0.99).expect("some") as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 <= 0.125, "{p50}");
        assert!((p99 - 9900.0).abs() / 9900.0 <= 0.125, "{p99}");
        assert_eq!(Hist::default().quantile(0.5), None);
        h.record(u32::MAX);
        assert!(h.quantile(1.0).expect("some") >= u64::from(u32::MAX));
        for v in 0..100_000u32 {
            let b = Hist::bucket(v);
            assert!(Hist::upper(b) >= u64::from(v), "{v}");
            assert!(b == 0 || Hist::upper(b - 1) < u64::from(v), "{v}");
        }
    }

    #[test]
    fn seconds_and_minutes_roll_and_stay_bounded() {
        let mut secs = Ring::new(1, 3600, 64);
        let mut mins = Ring::new(60, 60, 1000);
        for s in 0..4000u64 {
            let e = event(
                1_000_000 + s,
                if s % 4 == 0 { b"05" } else { b"00" },
                b"TERM0001",
            );
            secs.add(&e, 840);
            mins.add(&e, 840);
        }
        assert_eq!(secs.len(), 3600);
        assert_eq!(mins.len(), 60);
        let last = secs.get(1_000_000 + 3999).expect("kept");
        assert_eq!(last.total.n, 1);
        let m = mins.merged_since(0, 1000);
        assert!(m.total.n <= 3600 && m.total.n >= 3500, "{}", m.total.n);
        let rate = m.approval_rate().expect("some");
        assert!((rate - 0.75).abs() < 0.01, "{rate}");
        assert_eq!(m.by_scheme[Scheme::Visa as usize].n, m.total.n);
        assert_eq!(m.by_country.get(&840).map(|c| c.n), Some(m.total.n));
        // A late event lands in its own second when still kept.
        secs.add(&event(1_000_000 + 3990, b"00", b"TERM0001"), 0);
        assert_eq!(secs.get(1_000_000 + 3990).map(|w| w.total.n), Some(2));
    }

    #[test]
    fn top_maps_keep_the_heavy_hitters_within_their_bound() {
        let mut m: TopMap<u32> = TopMap::new(100);
        for i in 0..10_000u32 {
            // Key 7 is a tenth of the traffic; the rest are all distinct.
            let k = if i % 10 == 0 { 7 } else { 1000 + i };
            m.add(k, i % 20 == 0, 1);
            assert!(m.len() <= 100);
        }
        let top = m.top(1, |c| c.n);
        assert_eq!(top[0].0, 7);
        assert_eq!(top[0].1.n, 1000);
        assert_eq!(top[0].1.declined(), 500);
    }

    #[test]
    fn fraud_counts_by_rule() {
        let mut w = Window::new(0, 16);
        let mut e = event(0, b"59", b"TERM0001");
        e.decision = 2;
        e.reasons = 0b101;
        w.add(&e, 0, false);
        e.decision = 1;
        e.reasons = 0b100;
        e.code = *b"00";
        w.add(&e, 0, false);
        assert_eq!((w.fraud.reviewed, w.fraud.declined), (1, 1));
        assert_eq!(w.fraud.reasons[0], 1);
        assert_eq!(w.fraud.reasons[2], 2);
    }
}
