//! The `[settlement]` table: when the business day changes.
//!
//! ```toml
//! [settlement]
//! cutover_time = "23:00"      # local time in time_zone; "off": no timer
//! time_zone = "Europe/Berlin" # IANA name, "UTC", or a fixed "+08:00"
//! host_cutover_guard_minutes = 60
//! batch_field = 60            # the terminal's batch number (text); 0: none
//! ```
//!
//! Per acquirer, `cutover_on_host_0800 = true` lets its 0800 with DE70 201
//! start a cutover (`acquirer/config.rs`).

use std::time::Duration;

use super::date::{Schedule, parse_time_of_day, parse_time_zone};
use crate::switch::config::{Section, table};

#[derive(Clone, Debug)]
pub struct SettlementConfig {
    pub schedule: Schedule,
    /// A host's 0800/201 within this long after the last cutover changes
    /// nothing: several links (or acquirers) announce the same cutover.
    pub host_guard: Duration,
    /// The request field holding the terminal's batch number, kept as
    /// text in the journal and the store (`batch`); 0: none kept.
    pub batch_field: u16,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        SettlementConfig {
            schedule: Schedule::utc(Some(DEFAULT_CUTOVER)),
            host_guard: Duration::from_secs(3600),
            batch_field: DEFAULT_BATCH_FIELD as u16,
        }
    }
}

/// 23:00.
const DEFAULT_CUTOVER: u16 = 23 * 60;
/// DE60, a private field many terminal specs put the batch number in.
const DEFAULT_BATCH_FIELD: u64 = 60;

table! {
    pub(crate) SettlementFile {
        cutover_time: String = "23:00".into();
        time_zone: String = "UTC".into();
        host_cutover_guard_minutes: u64 = 60, in 0..=1440;
        batch_field: u64 = DEFAULT_BATCH_FIELD, in 0..=128;
    }
}

impl SettlementFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> SettlementConfig {
        self.check_ranges(s);
        if self.batch_field == 1 {
            s.problem(
                "batch_field",
                "1 is the secondary bitmap: a data element number (2..=128), or 0 for none",
            );
        }
        let cutover = if self.cutover_time == "off" {
            None
        } else {
            let parsed = parse_time_of_day(&self.cutover_time).ok_or_else(|| {
                format!(
                    "`{}`: expected a local time HH:MM (24-hour), or \"off\"",
                    self.cutover_time
                )
            });
            Some(s.ok("cutover_time", parsed, DEFAULT_CUTOVER))
        };
        let time_zone = s.ok(
            "time_zone",
            parse_time_zone(&self.time_zone),
            jiff::tz::TimeZone::UTC,
        );
        SettlementConfig {
            schedule: Schedule { time_zone, cutover },
            host_guard: Duration::from_secs(60 * self.host_cutover_guard_minutes), // in range
            batch_field: self.batch_field as u16,                                  // in range
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::switch::config::Config;
    use crate::switch::config::tests::only_problem;

    #[test]
    fn the_table_reads_and_refuses_what_it_can_not_use() {
        let c = Config::parse("").expect("valid");
        assert_eq!(c.settlement.schedule.cutover, Some(23 * 60));
        let c =
            Config::parse("[settlement]\ncutover_time = \"02:30\"\ntime_zone = \"Europe/Berlin\"")
                .expect("valid");
        assert_eq!(c.settlement.schedule.cutover, Some(150));
        let c = Config::parse("[settlement]\ncutover_time = \"off\"").expect("valid");
        assert_eq!(c.settlement.schedule.cutover, None);
        assert_eq!(c.settlement.batch_field, 60);
        let c = Config::parse("[settlement]\nbatch_field = 0").expect("valid");
        assert_eq!(c.settlement.batch_field, 0);
        assert!(
            only_problem("[settlement]\nbatch_field = 1")
                .starts_with("settlement.batch_field: 1 is the secondary bitmap")
        );
        assert!(
            only_problem("[settlement]\ncutover_time = \"25:00\"")
                .starts_with("settlement.cutover_time: `25:00`")
        );
        assert!(
            only_problem("[settlement]\ntime_zone = \"Nowhere/Special\"")
                .starts_with("settlement.time_zone: `Nowhere/Special`")
        );
    }
}
