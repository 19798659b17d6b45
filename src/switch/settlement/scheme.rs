//! The card scheme of a card number, from its BIN (the leading digits,
//! which the masked PAN keeps: first 6, last 4): one table of prefix
//! ranges, the first matching row wins.
//!
//! The ranges are the schemes' published IIN ranges as card-type
//! libraries use them; co-badged and regional cards (Mir, RuPay, Elo,
//! Diners...) fall under `Other`, as do numbers too short to tell.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    UnionPay,
    Maestro,
    Other,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Visa => "Visa",
            Scheme::Mastercard => "Mastercard",
            Scheme::Amex => "Amex",
            Scheme::Discover => "Discover",
            Scheme::Jcb => "JCB",
            Scheme::UnionPay => "UnionPay",
            Scheme::Maestro => "Maestro",
            Scheme::Other => "other",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// (prefix digits, lowest, highest, scheme): the number's first `digits`
/// digits, read as a number, within `lowest..=highest`. Longer, more
/// specific prefixes come before the shorter ones they sit inside.
const RANGES: &[(usize, u32, u32, Scheme)] = &[
    (4, 2221, 2720, Scheme::Mastercard),
    (4, 3528, 3589, Scheme::Jcb),
    (4, 6011, 6011, Scheme::Discover),
    (4, 6304, 6304, Scheme::Maestro),
    (4, 6390, 6390, Scheme::Maestro),
    (3, 644, 649, Scheme::Discover),
    (2, 34, 34, Scheme::Amex),
    (2, 37, 37, Scheme::Amex),
    (2, 51, 55, Scheme::Mastercard),
    (2, 50, 50, Scheme::Maestro),
    (2, 56, 58, Scheme::Maestro),
    (2, 67, 67, Scheme::Maestro),
    (2, 65, 65, Scheme::Discover),
    (2, 62, 62, Scheme::UnionPay),
    (2, 81, 81, Scheme::UnionPay),
    (1, 4, 4, Scheme::Visa),
];

/// The scheme of `pan` (a masked PAN `476173******0010`, or digits): by
/// its leading digits up to the first that is not one.
pub fn scheme_of(pan: &str) -> Scheme {
    let lead: Vec<u32> = pan
        .bytes()
        .take_while(u8::is_ascii_digit)
        .take(6)
        .map(|d| u32::from(d - b'0'))
        .collect();
    for &(digits, low, high, scheme) in RANGES {
        if lead.len() < digits {
            continue;
        }
        let prefix = lead[..digits].iter().fold(0, |a, d| a * 10 + d);
        if (low..=high).contains(&prefix) {
            return scheme;
        }
    }
    Scheme::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_map_to_their_schemes() {
        for (pan, scheme) in [
            ("476173******0010", Scheme::Visa),
            ("400000******0002", Scheme::Visa),
            ("4", Scheme::Visa),
            ("550000******0004", Scheme::Mastercard),
            ("510000", Scheme::Mastercard),
            ("541111******1111", Scheme::Mastercard),
            ("222100******0000", Scheme::Mastercard),
            ("272099", Scheme::Mastercard),
            ("272100", Scheme::Other),
            ("222099", Scheme::Other),
            ("340000******0009", Scheme::Amex),
            ("371449******8431", Scheme::Amex),
            ("601100******0004", Scheme::Discover),
            ("644000", Scheme::Discover),
            ("649999", Scheme::Discover),
            ("650000", Scheme::Discover),
            ("352800", Scheme::Jcb),
            ("358999", Scheme::Jcb),
            ("359000", Scheme::Other),
            ("620000******0000", Scheme::UnionPay),
            ("810000", Scheme::UnionPay),
            ("500000", Scheme::Maestro),
            ("560000", Scheme::Maestro),
            ("589300", Scheme::Maestro),
            ("630400", Scheme::Maestro),
            ("675900", Scheme::Maestro),
            ("360000", Scheme::Other),
            ("666666******0000", Scheme::Other),
            ("601200", Scheme::Other),
            ("", Scheme::Other),
            ("******", Scheme::Other),
            ("3", Scheme::Other),
        ] {
            assert_eq!(scheme_of(pan), scheme, "{pan}");
        }
    }

    #[test]
    fn every_range_is_reachable_and_well_formed() {
        for (i, &(digits, low, high, scheme)) in RANGES.iter().enumerate() {
            assert!((1..=6).contains(&digits) && low <= high, "row {i}");
            assert!(high < 10u32.pow(digits as u32), "row {i}");
            // Its lowest prefix, padded to six digits, is this scheme.
            let pan = format!("{low:0<6}");
            assert_eq!(scheme_of(&pan), scheme, "row {i}: {pan}");
        }
    }
}
