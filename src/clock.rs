//! Wall-clock helpers: Unix seconds and the ISO 8583 date/time fields.
//! Everything else in the switch takes time as a parameter; this is where
//! it is read.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// (year, month, day, hour, minute, second) in UTC.
pub fn civil(unix_s: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (secs / 3600) as u32,
        (secs / 60 % 60) as u32,
        (secs % 60) as u32,
    )
}

fn two(out: &mut [u8], v: u32) {
    out[0] = b'0' + (v / 10 % 10) as u8;
    out[1] = b'0' + (v % 10) as u8;
}

/// DE7, transmission date and time: `MMDDhhmmss` in UTC.
pub fn transmission_time(unix_s: u64) -> [u8; 10] {
    let (_, mo, d, h, mi, s) = civil(unix_s);
    let mut out = [0u8; 10];
    two(&mut out[0..2], mo);
    two(&mut out[2..4], d);
    two(&mut out[4..6], h);
    two(&mut out[6..8], mi);
    two(&mut out[8..10], s);
    out
}

/// `YYYY-MM-DDThh:mm:ssZ`, for people.
pub fn rfc3339(unix_s: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_s);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_795_592_096), (2026, 11, 25, 7, 34, 56));
        assert_eq!(&transmission_time(1_795_592_096), b"1125073456");
        assert_eq!(rfc3339(1_795_592_096), "2026-11-25T07:34:56Z");
    }
}
