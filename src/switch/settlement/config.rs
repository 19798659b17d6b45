//! The `[settlement]` table: when the business day changes.
//!
//! ```toml
//! [settlement]
//! cutover_time = "23:00"      # local time in time_zone; "off": no timer
//! time_zone = "Europe/Berlin" # IANA name, "UTC", or a fixed "+08:00"
//! host_cutover_guard_minutes = 60
//! batch_field = 60            # the terminal's batch number (text); 0: none
//! batch_close_code = 920000   # DE3 of a terminal's 0500: close
//! batch_close_after_upload_code = 960000 # close after its 0320 upload
//! max_open_batches = 100000   # terminal batches with totals kept at once
//! institution_id = "12345678901" # DE99 of the acquirer 0520 (digits); "": none
//! reconciliation_delay_ms = 60000 # after a cutover, before the 0520s are made
//! ```
//!
//! A terminal profile (`[[security.terminals]]`, by its name) may have
//! close codes of its own:
//!
//! ```toml
//! [[settlement.terminal_profiles]]
//! name = "pos-fleet-b"                   # a [[security.terminals]] name
//! batch_close_code = 930000
//! batch_close_after_upload_code = 970000 # either may be left out: the switch's
//! ```
//!
//! Per acquirer, `cutover_on_host_0800 = true` lets its 0800 with DE70 201
//! start a cutover, and `reconciliation = false` sends it no 0520
//! (`acquirer/config.rs`).

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
    /// DE3 of a terminal's 0500: a close, and a close after upload.
    pub close_codes: super::batch::CloseCodes,
    /// The same for the terminals of a profile (`[[security.terminals]]`
    /// name), where they differ.
    pub profile_close_codes: Vec<(String, super::batch::CloseCodes)>,
    /// Terminal batches the switch keeps totals for at once.
    pub max_open_batches: usize,
    /// DE99 of the acquirer reconciliation (0520): the settlement
    /// institution; empty: not sent.
    pub institution_id: String,
    /// How long after a cutover the closed date's 0520s are made: the
    /// requests of that date still in flight get their final answers
    /// first (at least the longest request timeout).
    pub reconciliation_delay: Duration,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        SettlementConfig {
            schedule: Schedule::utc(Some(DEFAULT_CUTOVER)),
            host_guard: Duration::from_secs(3600),
            batch_field: DEFAULT_BATCH_FIELD as u16,
            close_codes: Default::default(),
            profile_close_codes: Vec::new(),
            max_open_batches: super::batch::DEFAULT_MAX_BATCHES,
            institution_id: String::new(),
            reconciliation_delay: Duration::from_millis(DEFAULT_RECONCILIATION_DELAY_MS),
        }
    }
}

const DEFAULT_RECONCILIATION_DELAY_MS: u64 = 60_000;

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
        batch_close_code: u64 = 920_000, in 0..=999_999;
        batch_close_after_upload_code: u64 = 960_000, in 0..=999_999;
        max_open_batches: u64 = super::batch::DEFAULT_MAX_BATCHES as u64, in 1..=10_000_000;
        institution_id: String = String::new();
        reconciliation_delay_ms: u64 = DEFAULT_RECONCILIATION_DELAY_MS, in 0..=86_400_000;
        terminal_profiles: Vec<ProfileCloseFile> = Vec::new();
    }
}

table! {
    pub(crate) ProfileCloseFile {
        /// The `[[security.terminals]]` profile these codes are for.
        name: Option<String> = None;
        batch_close_code: Option<u64> = None;
        batch_close_after_upload_code: Option<u64> = None;
    }
}

impl ProfileCloseFile {
    fn validate(
        mut self,
        s: &mut Section,
        switch_wide: super::batch::CloseCodes,
    ) -> Option<(String, super::batch::CloseCodes)> {
        self.check_ranges(s);
        let code = |s: &mut Section, key: &str, v: Option<u64>, default: u32| match v {
            None => default,
            Some(v) if v <= 999_999 => v as u32, // checked
            Some(v) => {
                s.problem(
                    key,
                    format!("{v}: a processing code is six digits (0..=999999)"),
                );
                default
            }
        };
        let codes = super::batch::CloseCodes {
            close: code(
                s,
                "batch_close_code",
                self.batch_close_code,
                switch_wide.close,
            ),
            after_upload: code(
                s,
                "batch_close_after_upload_code",
                self.batch_close_after_upload_code,
                switch_wide.after_upload,
            ),
        };
        if codes.close == codes.after_upload {
            s.problem(
                "batch_close_after_upload_code",
                "the same as the profile's batch_close_code: the two closes need two processing codes",
            );
        }
        let Some(name) = self.name else {
            s.problem(
                "name",
                "required: the name of a [[security.terminals]] profile",
            );
            return None;
        };
        Some((name, codes))
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
        if self.batch_close_code == self.batch_close_after_upload_code {
            s.problem(
                "batch_close_after_upload_code",
                "the same as batch_close_code: the two closes need two processing codes",
            );
        }
        if self.institution_id.len() > 11
            || !self.institution_id.bytes().all(|b| b.is_ascii_digit())
        {
            s.problem(
                "institution_id",
                "DE99 is up to 11 digits (or \"\" to send none)",
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
        let close_codes = super::batch::CloseCodes {
            close: self.batch_close_code as u32, // in range
            after_upload: self.batch_close_after_upload_code as u32,
        };
        let mut profile_close_codes: Vec<(String, super::batch::CloseCodes)> = Vec::new();
        for (i, p) in std::mem::take(&mut self.terminal_profiles)
            .into_iter()
            .enumerate()
        {
            let s = &mut s.sub(&format!("terminal_profiles[{i}]"));
            if let Some((name, codes)) = p.validate(s, close_codes) {
                if profile_close_codes.iter().any(|(n, _)| *n == name) {
                    s.problem("name", format!("`{name}` has close codes above already"));
                }
                profile_close_codes.push((name, codes));
            }
        }
        SettlementConfig {
            schedule: Schedule { time_zone, cutover },
            host_guard: Duration::from_secs(60 * self.host_cutover_guard_minutes), // in range
            batch_field: self.batch_field as u16,                                  // in range
            close_codes,
            profile_close_codes,
            max_open_batches: self.max_open_batches as usize, // in range
            institution_id: self.institution_id,
            reconciliation_delay: Duration::from_millis(self.reconciliation_delay_ms),
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
        assert_eq!(c.settlement.close_codes.close, 920_000);
        let c = Config::parse("[settlement]\nbatch_close_code = 930000").expect("valid");
        assert_eq!(c.settlement.close_codes.close, 930_000);
        assert!(
            only_problem("[settlement]\nbatch_close_code = 960000")
                .starts_with("settlement.batch_close_after_upload_code: the same")
        );
        let c = Config::parse("[settlement]\ninstitution_id = \"00001234\"").expect("valid");
        assert_eq!(c.settlement.institution_id, "00001234");
        assert!(
            only_problem("[settlement]\ninstitution_id = \"12AB\"")
                .starts_with("settlement.institution_id: DE99 is up to 11 digits")
        );
        assert!(
            only_problem(
                "[[settlement.terminal_profiles]]\nname = \"nowhere\"\nbatch_close_code = 930000"
            )
            .starts_with(
                "settlement.terminal_profiles[0].name: `nowhere`: no [[security.terminals]] profile"
            )
        );
        let problems = Config::parse(
            "[[settlement.terminal_profiles]]\nname = \"x\"\nbatch_close_code = 960000",
        )
        .expect_err("refused");
        assert!(
            problems.iter().any(|p| p.to_string().starts_with(
                "settlement.terminal_profiles[0].batch_close_after_upload_code: the same as the \
                 profile's"
            )),
            "{problems:#?}"
        );
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
