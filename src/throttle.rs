//! Rate-limited warnings: one refusal of a kind is worth a log line; two
//! thousand of them in a minute are worth one line per interval with a
//! count. Sans-IO: the caller passes `now`.

use std::time::{Duration, Instant};

/// Decides when a repeated warning of one kind may be logged again.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    pub const fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this occurrence should be logged, `n` being how many
    /// were suppressed since the last line; `None` to stay quiet.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(at) if now.saturating_duration_since(at) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Forgets the history (the condition cleared): the next one logs.
    pub fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_suppressed() {
        let t0 = Instant::now();
        let mut t = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(t.allow(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.allow(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(t.allow(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(t.allow(t0 + Duration::from_secs(11)), None);
        t.reset();
        assert_eq!(t.allow(t0 + Duration::from_secs(12)), Some(0));
    }
}
