//! Wall-clock helpers: Unix seconds and the moment cores are given ([`Now`]);
//! the ISO 8583 date/time formatting is re-exported from the codec.
//! Everything else in the switch takes time as a parameter; this is where
//! it is read.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// The date/time formatting is pure and shared with the tools, so it lives
// with the codec; re-exported so `clock::transmission_time` keeps working.
pub use switchyard_protocol::iso8583::datetime::{civil, rfc3339, transmission_time};

/// A moment as the cores take it: `at` (monotonic) for deadlines and
/// latency, `unix_ms` for what is recorded. Drivers read the clock with
/// [`Now::read`]; cores only ever get a `Now` passed in, so a test steps
/// time by hand with [`Now::plus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub at: Instant,
    pub unix_ms: u64,
}

impl Now {
    /// Reads both clocks (drivers only).
    pub fn read() -> Now {
        Now {
            at: Instant::now(),
            unix_ms: unix_now_ms(),
        }
    }

    /// This moment moved on by `d` (virtual time in tests and simulation).
    pub fn plus(self, d: Duration) -> Now {
        Now {
            at: self.at + d,
            unix_ms: self.unix_ms.saturating_add(d.as_millis() as u64),
        }
    }
}

/// The wall clock as `SystemTime`, to compare with file times.
pub fn wall_now() -> SystemTime {
    SystemTime::now()
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
