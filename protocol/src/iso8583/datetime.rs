//! ISO 8583 date and time fields (DE7 `MMDDhhmmss`) and a readable UTC
//! timestamp, from Unix seconds. Pure functions: the caller reads the clock.

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
