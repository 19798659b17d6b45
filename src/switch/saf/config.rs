//! The `[saf]` table: bounds on store-and-forward (attempts, retry
//! interval, expiry, entries per acquirer).

use std::time::Duration;

use crate::switch::config::{Section, table};

#[derive(Clone, Debug)]
pub struct SafConfig {
    /// Sends of one advice/reversal before it is given up (and journaled
    /// as expired).
    pub max_attempts: u32,
    pub retry_interval: Duration,
    /// Age after which an unacknowledged entry expires.
    pub expiry: Duration,
    /// Entries per acquirer; beyond it new entries are refused loudly.
    pub max_entries: usize,
}

table! {
    pub(crate) SafFile {
        max_attempts: u64 = 20, in 1..=10_000;
        retry_interval_ms: u64 = 5_000, in 100..=3_600_000;
        expiry_s: u64 = 24 * 3600, in 60..=30 * 86_400;
        max_entries: usize = 100_000, in 1..=10_000_000;
    }
}

impl SafFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> SafConfig {
        self.check_ranges(s);
        SafConfig {
            max_attempts: self.max_attempts as u32, // in range
            retry_interval: Duration::from_millis(self.retry_interval_ms),
            expiry: Duration::from_secs(self.expiry_s),
            max_entries: self.max_entries,
        }
    }
}
