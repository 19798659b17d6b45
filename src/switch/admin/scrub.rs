//! The last step of every JSON answer of the admin API: each run of 13 to
//! 19 digits that passes the Luhn check is masked (first 6, last 4), so
//! no answer carries what could be a card number, whatever put it there
//! (a config value, a journal directory named with a timestamp, a path
//! asked for). Inside a JSON string the digits are masked in place; a
//! bare JSON number becomes a string of its masked digits.

use crate::iso8583::values::{MaskedPan, luhn_ok};

/// Shortest and longest card number (ISO/IEC 7812).
const PAN_DIGITS: std::ops::RangeInclusive<usize> = 13..=19;

/// `json` with every Luhn-valid run of 13 to 19 digits masked. A run is
/// maximal (digits on neither side); outside strings, the digits after a
/// decimal point are a fraction, not a number of their own.
pub(crate) fn scrub_json(json: &str) -> String {
    let b = json.as_bytes();
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut copied = 0; // b[..copied] is in `out` already
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
        } else if c == b'"' {
            in_string = true;
        }
        if !c.is_ascii_digit() || escaped {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let run = &b[start..i];
        let fraction = !in_string && start > 0 && b[start - 1] == b'.';
        if !PAN_DIGITS.contains(&run.len()) || fraction || !luhn_ok(run) {
            continue;
        }
        let masked = MaskedPan::of(run);
        // A bare negative number's sign goes into the string too.
        let token = if !in_string && start > 0 && b[start - 1] == b'-' {
            start - 1
        } else {
            start
        };
        out.push_str(&json[copied..token]);
        if in_string {
            out.push_str(masked.as_str());
            copied = i;
        } else {
            // The whole number token (fraction, exponent) becomes a string.
            while i < b.len() && matches!(b[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                i += 1;
            }
            out.push('"');
            out.push_str(masked.as_str());
            out.push('"');
            copied = i;
        }
    }
    out.push_str(&json[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_in_strings_are_masked_in_place() {
        let s = scrub_json(r#"{"path":"/a/4761739001010010/b","x":"pan 4111111111111111."}"#);
        assert_eq!(
            s,
            r#"{"path":"/a/476173******0010/b","x":"pan 411111******1111."}"#
        );
    }

    #[test]
    fn a_bare_number_that_could_be_a_card_becomes_a_masked_string() {
        let s = scrub_json(r#"{"n":4111111111111111,"m":-4111111111111111.5e3}"#);
        assert_eq!(s, r#"{"n":"411111******1111","m":"411111******1111"}"#);
        let v: serde_json::Value = serde_json::from_str(&s).expect("still JSON");
        assert_eq!(v["n"], "411111******1111");
    }

    #[test]
    fn other_numbers_are_left_alone() {
        for s in [
            // Luhn-invalid, too short, too long (20 digits: u64::MAX).
            r#"{"a":"4111111111111112","b":411111111111,"c":18446744073709551615}"#,
            // The fraction of a decimal number.
            r#"{"sum":0.30000000000000004,"t":1.4111111111111111}"#,
            // An escaped quote does not end the string.
            r#"{"q":"say \"12\" 3"}"#,
            "",
        ] {
            assert_eq!(scrub_json(s), s);
        }
    }

    #[test]
    fn inside_a_string_a_run_after_a_point_is_still_masked() {
        assert_eq!(
            scrub_json(r#"["v.4111111111111111"]"#),
            r#"["v.411111******1111"]"#
        );
    }

    #[test]
    fn text_around_multibyte_characters_is_kept() {
        let s = scrub_json(r#"{"名":"卡 4111111111111111 号"}"#);
        assert_eq!(s, r#"{"名":"卡 411111******1111 号"}"#);
    }
}
