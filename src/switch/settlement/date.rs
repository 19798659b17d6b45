//! The business date and the clock: a date as days since the Unix epoch,
//! and the rule that names the business day a moment belongs to.
//!
//! The rule: a business day runs from one cutover to the next and is
//! named after the calendar date most of it falls on. With a cutover at
//! or after noon (the usual 23:00) the day that starts at 23:00 on
//! 1 December is 2 December; with one before noon (02:00) the day that
//! starts at 02:00 on 2 December is 2 December, and 00:00 to 02:00 still
//! belongs to 1 December. A cutover at 00:00 makes business and calendar
//! dates the same.

use std::fmt;

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A business date: days since 1970-01-01. Zero stands for "none" in the
/// journal (records written before business dates), never a real date.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusinessDate(pub u32);

impl BusinessDate {
    pub const NONE: BusinessDate = BusinessDate(0);

    pub fn days(self) -> u32 {
        self.0
    }

    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The next day (saturating: year 11 million is not a concern).
    pub fn next(self) -> BusinessDate {
        BusinessDate(self.0.saturating_add(1))
    }

    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<BusinessDate> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        let days = days_from_civil(year, month, day);
        u32::try_from(days)
            .ok()
            .filter(|&d| d > 0)
            .map(BusinessDate)
    }

    pub fn ymd(self) -> (i32, u32, u32) {
        civil_from_days(i64::from(self.0))
    }

    /// `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<BusinessDate> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            let part = s.get(r)?;
            part.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| part.parse().ok())?
        };
        let year = i32::try_from(num(0..4)?).ok()?;
        BusinessDate::from_ymd(year, num(5..7)?, num(8..10)?)
    }
}

impl fmt::Display for BusinessDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("none");
        }
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m, d)
}

/// When the business day changes: a local time of day in a time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub time_zone: TimeZone,
    /// Minutes after local midnight; `None`: no scheduled cutover (the
    /// date is then reckoned as if the cutover were at midnight).
    pub cutover: Option<u16>,
}

impl Schedule {
    pub fn utc(cutover: Option<u16>) -> Schedule {
        Schedule {
            time_zone: TimeZone::UTC,
            cutover,
        }
    }

    /// The business date the clock says it is at `at_ms` (Unix ms).
    pub fn date_at(&self, at_ms: u64) -> BusinessDate {
        let ms = i64::try_from(at_ms).unwrap_or(i64::MAX);
        // Out of jiff's range (year 9999+): the latest moment it knows.
        let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::MAX);
        let local = self.time_zone.to_datetime(ts);
        let day = days_from_civil(
            i32::from(local.year()),
            local.month() as u32,
            local.day() as u32,
        );
        let minute = i64::from(local.hour()) * 60 + i64::from(local.minute());
        let day = match self.cutover.map(i64::from) {
            None | Some(0) => day,
            Some(c) if c >= 12 * 60 => day + i64::from(minute >= c),
            Some(c) => day - i64::from(minute < c),
        };
        BusinessDate(u32::try_from(day.max(1)).unwrap_or(u32::MAX))
    }

    /// The first moment after `at_ms` at which [`Schedule::date_at`]
    /// may change: the next local cutover time (a DST gap moves it as
    /// jiff's "compatible" rule does; the timer also looks once a minute,
    /// so that is not relied on). `None` without a scheduled cutover.
    pub fn next_cutover_ms(&self, at_ms: u64) -> Option<u64> {
        let c = self.cutover?;
        let ms = i64::try_from(at_ms).ok()?;
        let ts = Timestamp::from_millisecond(ms).ok()?;
        let local = self.time_zone.to_datetime(ts);
        let (h, m) = ((c / 60) as i8, (c % 60) as i8);
        let mut day = local.date();
        for _ in 0..3 {
            let at = day.at(h, m, 0, 0);
            if let Ok(t) = self.time_zone.to_timestamp(at)
                && t > ts
            {
                return u64::try_from(t.as_millisecond()).ok();
            }
            day = day.tomorrow().ok()?;
        }
        None
    }
}

/// `HH:MM` (24-hour) as minutes after midnight.
pub fn parse_time_of_day(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// An IANA name (`Europe/Berlin`), `UTC`, or a fixed offset (`+08:00`,
/// `-05:30`).
pub fn parse_time_zone(s: &str) -> Result<TimeZone, String> {
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return Ok(TimeZone::UTC);
    }
    if let Some(sign) = s.chars().next().filter(|c| *c == '+' || *c == '-') {
        let minutes = parse_time_of_day(&s[1..])
            .filter(|&m| m <= 18 * 60)
            .ok_or_else(|| format!("`{s}`: a fixed offset is +HH:MM or -HH:MM, at most 18:00"))?;
        let secs = i32::from(minutes) * 60 * if sign == '-' { -1 } else { 1 };
        let offset = jiff::tz::Offset::from_seconds(secs).map_err(|e| format!("`{s}`: {e}"))?;
        return Ok(TimeZone::fixed(offset));
    }
    TimeZone::get(s).map_err(|e| format!("`{s}`: not a known time zone ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC date and time.
    fn utc(y: i32, mo: u32, d: u32, h: u64, mi: u64) -> u64 {
        let days = BusinessDate::from_ymd(y, mo, d).expect("date").days();
        (u64::from(days) * 86_400 + h * 3600 + mi * 60) * 1000
    }

    fn date(s: &str) -> BusinessDate {
        BusinessDate::parse(s).expect("date")
    }

    #[test]
    fn dates_round_trip_through_days() {
        assert_eq!(date("1970-01-02").days(), 1);
        assert_eq!(date("2026-12-01").to_string(), "2026-12-01");
        assert_eq!(date("2024-02-29").next().to_string(), "2024-03-01");
        assert_eq!(date("2026-12-31").next().to_string(), "2027-01-01");
        for d in [1u32, 59, 60, 365, 10_957, 20_000, 2_932_896] {
            let (y, m, dd) = BusinessDate(d).ymd();
            assert_eq!(BusinessDate::from_ymd(y, m, dd), Some(BusinessDate(d)));
        }
        assert_eq!(BusinessDate::parse("2026-02-29"), None);
        assert_eq!(BusinessDate::parse("2026-13-01"), None);
        assert_eq!(BusinessDate::parse("2026-1-01"), None);
        assert_eq!(BusinessDate::parse("+026-01-01"), None);
        assert_eq!(BusinessDate::NONE.to_string(), "none");
    }

    #[test]
    fn a_cutover_at_23_names_the_late_evening_after_the_next_day() {
        let s = Schedule::utc(Some(23 * 60));
        assert_eq!(s.date_at(utc(2026, 12, 1, 22, 59)), date("2026-12-01"));
        assert_eq!(s.date_at(utc(2026, 12, 1, 23, 0)), date("2026-12-02"));
        // Across midnight the date stays: the day began at 23:00.
        assert_eq!(s.date_at(utc(2026, 12, 2, 0, 30)), date("2026-12-02"));
        assert_eq!(s.date_at(utc(2026, 12, 31, 23, 30)), date("2027-01-01"));
        assert_eq!(
            s.next_cutover_ms(utc(2026, 12, 1, 22, 0)),
            Some(utc(2026, 12, 1, 23, 0))
        );
        assert_eq!(
            s.next_cutover_ms(utc(2026, 12, 1, 23, 0)),
            Some(utc(2026, 12, 2, 23, 0))
        );
    }

    #[test]
    fn a_cutover_after_midnight_keeps_the_small_hours_on_the_day_before() {
        let s = Schedule::utc(Some(2 * 60));
        assert_eq!(s.date_at(utc(2026, 12, 2, 1, 59)), date("2026-12-01"));
        assert_eq!(s.date_at(utc(2026, 12, 2, 2, 0)), date("2026-12-02"));
        assert_eq!(s.date_at(utc(2026, 12, 2, 23, 59)), date("2026-12-02"));
        let midnight = Schedule::utc(Some(0));
        assert_eq!(midnight.date_at(utc(2026, 12, 2, 0, 0)), date("2026-12-02"));
        assert_eq!(
            Schedule::utc(None).date_at(utc(2026, 12, 2, 23, 59)),
            date("2026-12-02")
        );
        assert_eq!(
            Schedule::utc(None).next_cutover_ms(utc(2026, 12, 2, 1, 0)),
            None
        );
    }

    #[test]
    fn the_cutover_is_at_local_time_in_the_zone() {
        let tz = parse_time_zone("Asia/Singapore").expect("zone");
        let s = Schedule {
            time_zone: tz,
            cutover: Some(23 * 60),
        };
        // 23:00 in Singapore (+08) is 15:00 UTC.
        assert_eq!(s.date_at(utc(2026, 12, 1, 14, 59)), date("2026-12-01"));
        assert_eq!(s.date_at(utc(2026, 12, 1, 15, 0)), date("2026-12-02"));
        let fixed = Schedule {
            time_zone: parse_time_zone("+08:00").expect("offset"),
            cutover: Some(23 * 60),
        };
        assert_eq!(fixed.date_at(utc(2026, 12, 1, 15, 0)), date("2026-12-02"));
        assert!(parse_time_zone("Mars/Olympus_Mons").is_err());
        assert!(parse_time_zone("+19:00").is_err());
    }

    #[test]
    fn daylight_saving_moves_the_cutover_in_utc_and_a_gap_does_not_skip_it() {
        let tz = parse_time_zone("Europe/Berlin").expect("zone");
        let s = Schedule {
            time_zone: tz.clone(),
            cutover: Some(23 * 60),
        };
        // Winter (+01): 23:00 is 22:00 UTC; summer (+02): 21:00 UTC.
        assert_eq!(s.date_at(utc(2026, 1, 10, 21, 59)), date("2026-01-10"));
        assert_eq!(s.date_at(utc(2026, 1, 10, 22, 0)), date("2026-01-11"));
        assert_eq!(s.date_at(utc(2026, 7, 10, 20, 59)), date("2026-07-10"));
        assert_eq!(s.date_at(utc(2026, 7, 10, 21, 0)), date("2026-07-11"));
        // 2026-03-29: clocks go 02:00 -> 03:00. A cutover at 02:30 does
        // not exist that night; the day still changes, at 03:00 local
        // (01:00 UTC), and once.
        let gap = Schedule {
            time_zone: tz.clone(),
            cutover: Some(2 * 60 + 30),
        };
        assert_eq!(gap.date_at(utc(2026, 3, 29, 0, 59)), date("2026-03-28"));
        assert_eq!(gap.date_at(utc(2026, 3, 29, 1, 0)), date("2026-03-29"));
        assert_eq!(gap.date_at(utc(2026, 3, 29, 20, 0)), date("2026-03-29"));
        let next = gap.next_cutover_ms(utc(2026, 3, 28, 12, 0)).expect("next");
        assert!(next > utc(2026, 3, 28, 12, 0) && next <= utc(2026, 3, 29, 2, 0));
        // 2026-10-25: clocks go 03:00 -> 02:00; 02:30 comes twice. The
        // clock's reckoning changes at the first, goes back for the
        // repeated hour, and comes to the same date at the second: the
        // business date only ever moves forward (cutover.rs), so it
        // changes once.
        let fold = Schedule {
            time_zone: tz,
            cutover: Some(2 * 60 + 30),
        };
        assert_eq!(fold.date_at(utc(2026, 10, 25, 0, 29)), date("2026-10-24"));
        assert_eq!(fold.date_at(utc(2026, 10, 25, 0, 30)), date("2026-10-25"));
        assert_eq!(fold.date_at(utc(2026, 10, 25, 1, 29)), date("2026-10-24"));
        assert_eq!(fold.date_at(utc(2026, 10, 25, 1, 30)), date("2026-10-25"));
    }

    #[test]
    fn times_of_day_are_hh_mm() {
        assert_eq!(parse_time_of_day("23:00"), Some(1380));
        assert_eq!(parse_time_of_day("00:00"), Some(0));
        assert_eq!(parse_time_of_day("24:00"), None);
        assert_eq!(parse_time_of_day("7:00"), None);
        assert_eq!(parse_time_of_day("07:60"), None);
        assert_eq!(parse_time_of_day("+7:00"), None);
    }
}
