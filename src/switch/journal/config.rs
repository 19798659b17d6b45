//! The `[journal]` table: where the journal lives, how it syncs, how big
//! its segments grow and how long they are kept.

use std::path::PathBuf;
use std::time::Duration;

use crate::switch::config::{Section, table};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// A request is forwarded and answered only once its record is on disk.
    Fsync,
    /// Records are written but not synced (load tests only).
    None,
}

#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    pub segment_bytes: u64,
    pub retention: Duration,
    /// Bound on the segments' total size: past it the oldest closed
    /// segments go at roll, except those holding open work. `None`: no
    /// size bound (age only).
    pub max_bytes: Option<u64>,
    /// Records waiting for the journal thread; when full the switch sheds
    /// load (96).
    pub queue_capacity: usize,
    /// Durability `fsync`: `fdatasync` calls that may be in flight at once
    /// (one thread each).
    pub syncs_in_flight: usize,
}

table! {
    pub(crate) JournalFile {
        dir: String = "journal".into();
        durability: String = "fsync".into();
        segment_bytes: u64 = 64 * 1024 * 1024, in 4096..=1 << 32;
        retention_hours: u64 = 24 * 7, in 1..=87_600;
        max_bytes: Option<u64> = None, in 65_536..=1 << 50;
        queue_capacity: usize = 65_536, in 1..=16_777_216;
        syncs_in_flight: usize = 1, in 1..=16;
    }
}

impl JournalFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> JournalConfig {
        self.check_ranges(s);
        let durability = match self.durability.as_str() {
            "fsync" => Durability::Fsync,
            "none" => Durability::None,
            other => {
                s.problem(
                    "durability",
                    format!("`{other}`: expected \"fsync\" or \"none\""),
                );
                Durability::Fsync
            }
        };
        if let Some(max) = self.max_bytes
            && max < 2 * self.segment_bytes
        {
            let message = format!(
                "{max} is less than two segments ({} = 2 x segment_bytes): the active \
                 segment alone could exceed it",
                2 * self.segment_bytes
            );
            s.problem("max_bytes", message);
        }
        JournalConfig {
            dir: PathBuf::from(self.dir),
            durability,
            segment_bytes: self.segment_bytes,
            retention: Duration::from_secs(3600 * self.retention_hours), // in range
            max_bytes: self.max_bytes,
            queue_capacity: self.queue_capacity,
            syncs_in_flight: self.syncs_in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::switch::config::Config;
    use crate::switch::config::tests::only_problem;

    #[test]
    fn a_huge_retention_is_refused_not_overflowed() {
        // 3600 * this overflows u64; it must be a problem, not a panic or a wrap.
        let text = format!("[journal]\nretention_hours = {}", i64::MAX);
        assert_eq!(
            only_problem(&text),
            format!(
                "journal.retention_hours: {} is out of range (1..=87600)",
                i64::MAX
            )
        );
        let c = Config::parse("[journal]\nretention_hours = 87600").expect("ten years is fine");
        assert_eq!(c.journal.retention, Duration::from_secs(87_600 * 3600));
    }

    #[test]
    fn max_bytes_must_hold_two_segments() {
        let c = Config::parse("[journal]\nsegment_bytes = 4096\nmax_bytes = 65536").expect("valid");
        assert_eq!(c.journal.max_bytes, Some(65_536));
        assert_eq!(Config::parse("").expect("valid").journal.max_bytes, None);
        let p = only_problem("[journal]\nmax_bytes = 100000");
        assert!(
            p.starts_with("journal.max_bytes: 100000 is less than two segments"),
            "{p}"
        );
    }
}
