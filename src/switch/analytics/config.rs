//! The `[analytics]` table: the queue from the hot path, what is kept in
//! memory, and the anomaly detector's thresholds.

use std::time::Duration;

use crate::switch::config::{Section, table};

#[derive(Clone, Debug)]
pub struct AnalyticsConfig {
    /// Off: no thread, nothing pushed (the terminal core's push is one
    /// check of a `None`).
    pub enabled: bool,
    /// Events the queue from the hot path holds; past it they are dropped
    /// and counted (`switchyard_analytics_dropped_total`).
    pub queue_capacity: usize,
    /// Transactions kept for `/api/transactions` (the store keeps older ones).
    pub recent_transactions: usize,
    /// Terminals kept for `/api/terminals` (the longest unseen go first).
    pub max_terminals: usize,
    /// Terminals, merchants, BINs, MCCs, countries kept per minute (per
    /// second: a sixty-fourth, at least 8).
    pub top_per_minute: usize,
    pub detector: DetectorConfig,
}

#[derive(Clone, Debug)]
pub struct DetectorConfig {
    /// A series is anomalous while |z| is at least this...
    pub z_threshold: f64,
    /// ... and an alert is raised once it has been for this long.
    pub hold: Duration,
    /// Each series is evaluated over windows this long.
    pub window: Duration,
    /// Requests a window needs for its rate series to count (a quiet
    /// terminal does not alert on one decline).
    pub min_volume: u64,
    /// Weight of a new window in the moving mean and variance.
    pub alpha: f64,
    /// Windows a series must have been seen before it may alert.
    pub warmup_windows: u32,
    /// New rate series start from a healthy baseline (approval 1, each
    /// decline code 0) and are warm at once: for tests and for a switch
    /// whose normal is known. Volume series always learn theirs.
    pub seed_baseline: bool,
    /// Floor of the standard deviation of a rate (as a fraction): no
    /// alert for a wobble smaller than `z_threshold` times this.
    pub min_stddev: f64,
}

table! {
    pub(crate) AnalyticsFile {
        enabled: bool = true;
        /// 16,384 events of 96 bytes: 1.5 MiB; the thread drains it every
        /// 10 ms, so it absorbs bursts of 1.6M transactions/s.
        queue_capacity: usize = 16_384, in 64..=1_048_576;
        recent_transactions: usize = 100_000, in 0..=10_000_000;
        max_terminals: usize = 10_000, in 16..=1_000_000;
        top_per_minute: usize = 1_000, in 16..=100_000;
        z_threshold: f64 = 4.0;
        hold_s: u64 = 60, in 1..=86_400;
        window_s: u64 = 10, in 1..=3_600;
        min_volume: u64 = 20, in 1..=1_000_000_000;
        alpha: f64 = 0.05;
        warmup_windows: u64 = 30, in 0..=100_000;
        seed_baseline: bool = false;
        min_stddev: f64 = 0.02;
    }
}

impl AnalyticsFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> AnalyticsConfig {
        self.check_ranges(s);
        if !(self.z_threshold.is_finite() && (0.5..=100.0).contains(&self.z_threshold)) {
            s.problem("z_threshold", "expected a number from 0.5 to 100");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 1.0) {
            s.problem("alpha", "expected a number above 0, at most 1");
        }
        if !(self.min_stddev.is_finite() && (0.0..=1.0).contains(&self.min_stddev)) {
            s.problem("min_stddev", "expected a number from 0 to 1");
        }
        AnalyticsConfig {
            enabled: self.enabled,
            queue_capacity: self.queue_capacity,
            recent_transactions: self.recent_transactions,
            max_terminals: self.max_terminals,
            top_per_minute: self.top_per_minute,
            detector: DetectorConfig {
                z_threshold: self.z_threshold,
                hold: Duration::from_secs(self.hold_s),
                window: Duration::from_secs(self.window_s),
                min_volume: self.min_volume,
                alpha: self.alpha,
                warmup_windows: self.warmup_windows as u32,
                seed_baseline: self.seed_baseline,
                min_stddev: self.min_stddev,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::switch::config::Config;

    #[test]
    fn defaults_and_refusals() {
        let c = Config::parse("").expect("valid").analytics;
        assert!(c.enabled);
        assert_eq!(c.detector.z_threshold, 4.0);
        assert_eq!(c.detector.hold.as_secs(), 60);
        assert_eq!(c.recent_transactions, 100_000);
        let p = Config::parse("[analytics]\nz_threshold = -1.0\nalpha = 0.0\nhold_s = 0\n")
            .expect_err("refused");
        let p: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert_eq!(p.len(), 3, "{p:?}");
    }
}
