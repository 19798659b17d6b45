//! Anomaly detection: a moving baseline (EWMA of the mean and variance)
//! per series and a z-score against it. A series is anomalous while its
//! z-score is at or over the threshold; an alert is raised once that has
//! held for `hold`, and cleared at the first window it no longer does.
//!
//! Pure and in virtual time: windows are fed with the moment they ended.
//!
//! * Rates (approval, and the shares of 05, 14, 91 and 96) count only in
//!   windows of at least `min_volume` requests: a quiet terminal does not
//!   alert on its one decline, and a window under it leaves the series as
//!   it was (neither raising nor clearing). Their deviation is at least
//!   `min_stddev` and the binomial error of the window (`p(1-p)/n`).
//! * Round trip (an acquirer's mean per window, µs) counts in windows of
//!   at least `min_volume` forwards; a rise alerts, its deviation at least
//!   a quarter of the baseline and 1 ms.
//! * Volume (a terminal's requests per window) alerts in both directions,
//!   once its baseline is at least `min_volume`; its deviation is at least
//!   the Poisson `sqrt(mean)`.
//! * While a series is anomalous its baseline's mean learns ten times
//!   slower and its variance not at all: an outage does not become the
//!   normal within the hold time.
//!
//! Series are bounded: at most `max_series`; when full, those not seen
//! for the longest go first (an open alert of theirs is cleared).

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::config::DetectorConfig;

/// What a series measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Measure {
    /// Approved share of authorizations: a drop alerts.
    ApprovalRate,
    /// Share of this response code: a rise alerts.
    CodeRate([u8; 2]),
    /// Requests per window: either way.
    Volume,
    /// Mean acquirer round trip in the window (µs): a rise alerts.
    RoundTrip,
}

/// Whose series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Switch,
    Acquirer(u16),
    Terminal([u8; 8]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub scope: Scope,
    pub measure: Measure,
}

impl SeriesKey {
    /// The alert's kind, for the counter's label: `approval_rate`,
    /// `rate_05`, `volume`.
    pub fn kind(&self) -> String {
        match self.measure {
            Measure::ApprovalRate => "approval_rate".into(),
            Measure::CodeRate(c) => format!("rate_{}", super::tap::text(&c)),
            Measure::Volume => "volume".into(),
            Measure::RoundTrip => "round_trip".into(),
        }
    }
}

#[derive(Clone, Debug)]
struct Series {
    mean: f64,
    var: f64,
    windows: u32,
    /// When it became anomalous (the end of that window).
    over_since: Option<u64>,
    last_seen: u64,
}

/// An alert, open or cleared.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub key: SeriesKey,
    /// The value of the last window counted, and the baseline it was
    /// measured against.
    pub value: f64,
    pub baseline: f64,
    pub z: f64,
    /// Anomalous since (unix ms).
    pub since_ms: u64,
    pub raised_ms: u64,
    pub cleared_ms: Option<u64>,
}

/// What a window changed.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Raised(Alert),
    Cleared(Alert),
}

/// Cleared alerts kept for `/api/alerts`.
const CLEARED_KEPT: usize = 100;

pub struct Detector {
    config: DetectorConfig,
    max_series: usize,
    series: HashMap<SeriesKey, Series>,
    open: HashMap<SeriesKey, Alert>,
    cleared: VecDeque<Alert>,
}

impl Detector {
    pub fn new(config: DetectorConfig, max_series: usize) -> Detector {
        Detector {
            config,
            max_series: max_series.max(16),
            series: HashMap::new(),
            open: HashMap::new(),
            cleared: VecDeque::new(),
        }
    }

    /// A rate series' window ended at `now_ms`: `hits` of `n`.
    pub fn rate(&mut self, now_ms: u64, key: SeriesKey, hits: u64, n: u64, out: &mut Vec<Change>) {
        if n < self.config.min_volume {
            if let Some(s) = self.series.get_mut(&key) {
                s.last_seen = now_ms;
            }
            return;
        }
        let x = hits as f64 / n as f64;
        self.observe(now_ms, key, x, n, out);
    }

    /// A level series' window ended at `now_ms` (the mean round trip of
    /// `n` forwards): counted with at least `min_volume` of them.
    pub fn level(
        &mut self,
        now_ms: u64,
        key: SeriesKey,
        value: f64,
        n: u64,
        out: &mut Vec<Change>,
    ) {
        if n < self.config.min_volume {
            if let Some(s) = self.series.get_mut(&key) {
                s.last_seen = now_ms;
            }
            return;
        }
        self.observe(now_ms, key, value, n, out);
    }

    /// A volume series' window ended at `now_ms` with `n` requests.
    pub fn volume(&mut self, now_ms: u64, key: SeriesKey, n: u64, out: &mut Vec<Change>) {
        self.observe(now_ms, key, n as f64, n, out);
    }

    fn observe(&mut self, now_ms: u64, key: SeriesKey, x: f64, n: u64, out: &mut Vec<Change>) {
        if !self.series.contains_key(&key) && self.series.len() >= self.max_series {
            self.evict(now_ms, out);
        }
        let c = &self.config;
        let seeded =
            c.seed_baseline && matches!(key.measure, Measure::ApprovalRate | Measure::CodeRate(_));
        let s = self.series.entry(key).or_insert_with(|| Series {
            mean: match key.measure {
                Measure::ApprovalRate if seeded => 1.0,
                Measure::CodeRate(_) if seeded => 0.0,
                _ => x,
            },
            var: 0.0,
            windows: if seeded { c.warmup_windows } else { 0 },
            over_since: None,
            last_seen: now_ms,
        });
        s.last_seen = now_ms;
        let sd = match key.measure {
            Measure::Volume => s.var.sqrt().max(s.mean.sqrt()).max(1.0),
            // A quarter of the mean, and a millisecond: a host's ordinary
            // jitter is not an anomaly.
            Measure::RoundTrip => s.var.sqrt().max(s.mean / 4.0).max(1000.0),
            _ => {
                let p = s.mean.clamp(0.0, 1.0);
                s.var
                    .max(c.min_stddev * c.min_stddev)
                    .max(p * (1.0 - p) / n.max(1) as f64)
                    .sqrt()
            }
        };
        let z = match key.measure {
            Measure::ApprovalRate => (s.mean - x) / sd,
            Measure::CodeRate(_) | Measure::RoundTrip => (x - s.mean) / sd,
            Measure::Volume => (x - s.mean).abs() / sd,
        };
        let warm = s.windows >= c.warmup_windows;
        let counts = match key.measure {
            Measure::Volume => s.mean >= c.min_volume as f64 || x >= c.min_volume as f64,
            _ => true,
        };
        let over = warm && counts && z >= c.z_threshold;
        let baseline = s.mean;
        // The baseline learns; while anomalous its mean ten times slower
        // and its variance not at all (else the anomaly widens the band
        // that measures it, and clears itself).
        let d = x - s.mean;
        if over {
            s.mean += c.alpha / 10.0 * d;
        } else {
            s.mean += c.alpha * d;
            s.var = (1.0 - c.alpha) * (s.var + c.alpha * d * d);
        }
        s.windows = s.windows.saturating_add(1);
        if over {
            let since = *s.over_since.get_or_insert(now_ms);
            if let Some(a) = self.open.get_mut(&key) {
                a.value = x;
                a.baseline = baseline;
                a.z = z;
            } else if now_ms.saturating_sub(since) >= c.hold.as_millis() as u64 {
                let a = Alert {
                    key,
                    value: x,
                    baseline,
                    z,
                    since_ms: since,
                    raised_ms: now_ms,
                    cleared_ms: None,
                };
                self.open.insert(key, a.clone());
                out.push(Change::Raised(a));
            }
        } else {
            s.over_since = None;
            if let Some(mut a) = self.open.remove(&key) {
                a.value = x;
                a.baseline = baseline;
                a.z = z;
                a.cleared_ms = Some(now_ms);
                self.keep_cleared(a.clone());
                out.push(Change::Cleared(a));
            }
        }
    }

    /// The volume series of terminals not seen in a window: they had 0.
    pub fn silent_terminals(
        &mut self,
        now_ms: u64,
        seen: &dyn Fn(&[u8; 8]) -> bool,
        out: &mut Vec<Change>,
    ) {
        let quiet: Vec<SeriesKey> = self
            .series
            .keys()
            .filter(|k| {
                k.measure == Measure::Volume && matches!(k.scope, Scope::Terminal(t) if !seen(&t))
            })
            .copied()
            .collect();
        for k in quiet {
            self.volume(now_ms, k, 0, out);
        }
    }

    fn evict(&mut self, now_ms: u64, out: &mut Vec<Change>) {
        let mut ages: Vec<u64> = self.series.values().map(|s| s.last_seen).collect();
        let tenth = (ages.len() / 10).max(1);
        let (_, &mut cut, _) = ages.select_nth_unstable(tenth - 1);
        let gone: Vec<SeriesKey> = self
            .series
            .iter()
            .filter(|(_, s)| s.last_seen <= cut)
            .map(|(k, _)| *k)
            .take(tenth)
            .collect();
        for k in gone {
            self.series.remove(&k);
            if let Some(mut a) = self.open.remove(&k) {
                a.cleared_ms = Some(now_ms);
                self.keep_cleared(a.clone());
                out.push(Change::Cleared(a));
            }
        }
    }

    fn keep_cleared(&mut self, a: Alert) {
        if self.cleared.len() >= CLEARED_KEPT {
            self.cleared.pop_front();
        }
        self.cleared.push_back(a);
    }

    /// Open alerts, the longest open first.
    pub fn open(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self.open.values().collect();
        v.sort_by_key(|a| (a.since_ms, a.key.kind()));
        v
    }

    /// Cleared alerts, the latest first.
    pub fn cleared(&self) -> impl Iterator<Item = &Alert> {
        self.cleared.iter().rev()
    }

    pub fn series(&self) -> usize {
        self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> DetectorConfig {
        DetectorConfig {
            z_threshold: 4.0,
            hold: Duration::from_secs(60),
            window: Duration::from_secs(10),
            min_volume: 20,
            alpha: 0.1,
            warmup_windows: 10,
            seed_baseline: false,
            min_stddev: 0.02,
        }
    }

    const TERMINAL: Scope = Scope::Terminal(*b"TERM0001");

    fn key(measure: Measure) -> SeriesKey {
        SeriesKey {
            scope: TERMINAL,
            measure,
        }
    }

    /// Feeds windows of 10 s: `approved` of `n` each, from `t` (ms);
    /// returns the changes with the moment of each.
    fn feed(
        d: &mut Detector,
        t: &mut u64,
        windows: u32,
        approved: u64,
        n: u64,
    ) -> Vec<(u64, Change)> {
        let mut all = Vec::new();
        for _ in 0..windows {
            *t += 10_000;
            let mut out = Vec::new();
            d.rate(*t, key(Measure::ApprovalRate), approved, n, &mut out);
            d.rate(
                *t,
                key(Measure::CodeRate(*b"05")),
                n - approved,
                n,
                &mut out,
            );
            all.extend(out.into_iter().map(|c| (*t, c)));
        }
        all
    }

    #[test]
    fn raised_after_the_hold_and_cleared_after_recovery() {
        let mut d = Detector::new(config(), 1000);
        let mut t = 0;
        // An hour of a steady 95% with a little noise.
        for i in 0..360 {
            let approved = 95 - (i % 3);
            assert!(feed(&mut d, &mut t, 1, approved, 100).is_empty());
        }
        // Approvals fall to 50%: anomalous from the first window, raised
        // once 60 s have passed since then, not before.
        let start = t + 10_000;
        let changes = feed(&mut d, &mut t, 5, 50, 100);
        assert!(changes.is_empty(), "{changes:?}");
        let changes = feed(&mut d, &mut t, 2, 50, 100);
        assert_eq!(changes.len(), 2, "{changes:?}");
        let (at, Change::Raised(a)) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!(*at, start + 60_000);
        assert_eq!(a.since_ms, start);
        // The baseline moved a little towards 0.5 over the hold.
        assert!((0.9..0.95).contains(&a.baseline) && a.value == 0.5, "{a:?}");
        assert_eq!(d.open().len(), 2);
        // Still open while it lasts, even minutes later: the baseline
        // learns slowly meanwhile.
        assert!(feed(&mut d, &mut t, 30, 50, 100).is_empty());
        // Recovery: cleared at the first normal window.
        let changes = feed(&mut d, &mut t, 1, 95, 100);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(&changes[0].1, Change::Cleared(a) if a.cleared_ms == Some(t)));
        assert!(d.open().is_empty());
        assert_eq!(d.cleared().count(), 2);
    }

    #[test]
    fn a_short_dip_does_not_alert() {
        let mut d = Detector::new(config(), 1000);
        let mut t = 0;
        feed(&mut d, &mut t, 100, 95, 100);
        assert!(feed(&mut d, &mut t, 5, 40, 100).is_empty());
        assert!(feed(&mut d, &mut t, 100, 95, 100).is_empty());
        assert!(d.open().is_empty());
    }

    #[test]
    fn no_alert_under_min_volume() {
        let mut d = Detector::new(config(), 1000);
        let mut t = 0;
        // A quiet terminal: 5 requests a window, every one declined later.
        feed(&mut d, &mut t, 100, 5, 5);
        assert!(feed(&mut d, &mut t, 100, 0, 5).is_empty());
        assert_eq!(d.series(), 0, "windows under min_volume are not counted");
        // Its volume series: a baseline of 5 stays under min_volume.
        let mut out = Vec::new();
        for i in 0..200u64 {
            let n = if i < 100 { 5 } else { 15 };
            d.volume(i * 10_000, key(Measure::Volume), n, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn volume_alerts_both_ways_and_silence_counts() {
        let mut d = Detector::new(config(), 1000);
        let mut out = Vec::new();
        let mut t = 0;
        for i in 0..100u64 {
            t += 10_000;
            d.volume(t, key(Measure::Volume), 100 + i % 5, &mut out);
        }
        assert!(out.is_empty());
        // The terminal goes silent: 0 per window, raised after the hold.
        for _ in 0..7 {
            t += 10_000;
            d.silent_terminals(t, &|_| false, &mut out);
        }
        assert!(
            matches!(&out[..], [Change::Raised(a)] if a.key.measure == Measure::Volume && a.value == 0.0),
            "{out:?}"
        );
    }

    #[test]
    fn a_seeded_baseline_is_warm_at_once() {
        let mut c = config();
        c.seed_baseline = true;
        c.hold = Duration::from_secs(10);
        let mut d = Detector::new(c, 1000);
        let mut t = 0;
        // The first windows already decline everything.
        let changes = feed(&mut d, &mut t, 2, 0, 50);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(
            changes
                .iter()
                .all(|(at, c)| *at == 20_000 && matches!(c, Change::Raised(_)))
        );
        let kinds: Vec<String> = d.open().iter().map(|a| a.key.kind()).collect();
        assert!(
            kinds.contains(&"approval_rate".to_string()) && kinds.contains(&"rate_05".to_string())
        );
    }

    #[test]
    fn a_slow_host_alerts_on_its_round_trip_and_clears() {
        let mut d = Detector::new(config(), 1000);
        let key = SeriesKey {
            scope: Scope::Acquirer(0),
            measure: Measure::RoundTrip,
        };
        let mut out = Vec::new();
        let mut t = 0;
        for i in 0..100u64 {
            t += 10_000;
            d.level(t, key, 2_000.0 + (i % 5) as f64 * 100.0, 50, &mut out);
        }
        // 500 ms: far out, but windows under min_volume count for nothing.
        for _ in 0..10 {
            t += 10_000;
            d.level(t, key, 500_000.0, 3, &mut out);
        }
        assert!(out.is_empty() && d.open().is_empty());
        let start = t + 10_000;
        for _ in 0..7 {
            t += 10_000;
            d.level(t, key, 500_000.0, 50, &mut out);
        }
        assert!(
            matches!(&out[..], [Change::Raised(a)] if a.since_ms == start && a.key.kind() == "round_trip"),
            "{out:?}"
        );
        t += 10_000;
        d.level(t, key, 2_100.0, 50, &mut out);
        assert!(matches!(&out[1], Change::Cleared(_)), "{out:?}");
        // A smaller rise (4 ms over 2.2) stays in the band.
        let mut quiet = Vec::new();
        for _ in 0..20 {
            t += 10_000;
            d.level(t, key, 4_000.0, 50, &mut quiet);
        }
        assert!(quiet.is_empty(), "{quiet:?}");
    }

    #[test]
    fn series_are_bounded() {
        let mut d = Detector::new(config(), 100);
        let mut out = Vec::new();
        for i in 0..1000u32 {
            let mut tid = *b"T0000000";
            tid[1..].copy_from_slice(format!("{i:07}").as_bytes());
            let k = SeriesKey {
                scope: Scope::Terminal(tid),
                measure: Measure::Volume,
            };
            d.volume(u64::from(i), k, 10, &mut out);
            assert!(d.series() <= 100);
        }
    }
}
