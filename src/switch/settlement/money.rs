//! Money as settlement handles it: integer minor units (cents) of an
//! ISO 4217 currency, never floating point. A currency's exponent (2 for
//! USD, 0 for JPY, 3 for BHD) is used only to show an amount and to read
//! one written in major units (`12.34`), both with integer arithmetic.

/// (numeric code, alphabetic code, minor-unit exponent).
const CURRENCIES: &[(u16, &str, u8)] = &[
    (36, "AUD", 2),
    (48, "BHD", 3),
    (124, "CAD", 2),
    (152, "CLP", 0),
    (156, "CNY", 2),
    (203, "CZK", 2),
    (208, "DKK", 2),
    (344, "HKD", 2),
    (348, "HUF", 2),
    (352, "ISK", 0),
    (356, "INR", 2),
    (360, "IDR", 2),
    (368, "IQD", 3),
    (376, "ILS", 2),
    (392, "JPY", 0),
    (400, "JOD", 3),
    (404, "KES", 2),
    (410, "KRW", 0),
    (414, "KWD", 3),
    (434, "LYD", 3),
    (458, "MYR", 2),
    (484, "MXN", 2),
    (512, "OMR", 3),
    (554, "NZD", 2),
    (566, "NGN", 2),
    (578, "NOK", 2),
    (600, "PYG", 0),
    (608, "PHP", 2),
    (643, "RUB", 2),
    (682, "SAR", 2),
    (702, "SGD", 2),
    (704, "VND", 0),
    (710, "ZAR", 2),
    (752, "SEK", 2),
    (756, "CHF", 2),
    (764, "THB", 2),
    (784, "AED", 2),
    (788, "TND", 3),
    (800, "UGX", 0),
    (818, "EGP", 2),
    (826, "GBP", 2),
    (840, "USD", 2),
    (901, "TWD", 2),
    (949, "TRY", 2),
    (950, "XAF", 0),
    (952, "XOF", 0),
    (978, "EUR", 2),
    (985, "PLN", 2),
    (986, "BRL", 2),
];

fn find(numeric: u16) -> Option<&'static (u16, &'static str, u8)> {
    CURRENCIES
        .binary_search_by_key(&numeric, |c| c.0)
        .ok()
        .map(|i| &CURRENCIES[i])
}

/// The alphabetic code (`USD`), or the three digits for a currency not
/// in the table.
pub fn code(numeric: u16) -> String {
    match find(numeric) {
        Some(c) => c.1.to_owned(),
        None => format!("{numeric:03}"),
    }
}

/// Digits after the decimal point; 2 for a currency not in the table.
pub fn exponent(numeric: u16) -> u8 {
    find(numeric).map_or(2, |c| c.2)
}

/// A currency as written in a file: three digits (`840`) or an
/// alphabetic code of the table (`USD`, any case).
pub fn parse_currency(text: &str) -> Option<u16> {
    let t = text.trim();
    if t.len() == 3 && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().ok();
    }
    CURRENCIES
        .iter()
        .find(|c| c.1.eq_ignore_ascii_case(t))
        .map(|c| c.0)
}

/// `amount` minor units in major units: `-12.34` (USD), `1234` (JPY).
pub fn format(amount: i128, currency: u16) -> String {
    let e = u32::from(exponent(currency));
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    if e == 0 {
        return format!("{sign}{abs}");
    }
    let unit = 10u128.pow(e);
    format!(
        "{sign}{}.{:0width$}",
        abs / unit,
        abs % unit,
        width = e as usize
    )
}

/// How amounts are written in a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AmountUnit {
    /// Whole minor units: `1234` is 12.34 USD.
    #[default]
    Minor,
    /// Major units with at most the currency's decimals: `12.34`, `12`.
    Major,
}

/// An amount in minor units, read from text in `unit`.
pub fn parse_amount(text: &str, unit: AmountUnit, currency: u16) -> Result<u64, String> {
    let t = text.trim();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let bad = || format!("`{t}` is not an amount in {}", unit_name(unit, currency));
    match unit {
        AmountUnit::Minor => {
            if !digits(t) {
                return Err(bad());
            }
            t.parse().map_err(|_| bad())
        }
        AmountUnit::Major => {
            let e = usize::from(exponent(currency));
            let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
            if !digits(whole) || (t.contains('.') && !digits(frac)) || frac.len() > e {
                return Err(bad());
            }
            let whole: u64 = whole.parse().map_err(|_| bad())?;
            let frac: u64 = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<e$}").parse().map_err(|_| bad())?
            };
            whole
                .checked_mul(10u64.pow(e as u32))
                .and_then(|w| w.checked_add(frac))
                .ok_or_else(bad)
        }
    }
}

fn unit_name(unit: AmountUnit, currency: u16) -> String {
    match unit {
        AmountUnit::Minor => "minor units (whole digits)".to_owned(),
        AmountUnit::Major => format!(
            "major units (at most {} decimals for {})",
            exponent(currency),
            code(currency)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_for_its_binary_search() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn amounts_show_with_their_currencys_exponent() {
        assert_eq!(format(123_456, 840), "1234.56");
        assert_eq!(format(-5, 978), "-0.05");
        assert_eq!(format(0, 840), "0.00");
        assert_eq!(format(1234, 392), "1234");
        assert_eq!(format(1_234_567, 48), "1234.567");
        assert_eq!(format(101, 999), "1.01", "an unknown currency: 2");
        assert_eq!(code(840), "USD");
        assert_eq!(code(999), "999");
    }

    #[test]
    fn amounts_and_currencies_read_exactly() {
        assert_eq!(parse_amount("1234", AmountUnit::Minor, 840), Ok(1234));
        assert_eq!(parse_amount(" 12.34 ", AmountUnit::Major, 840), Ok(1234));
        assert_eq!(parse_amount("12.3", AmountUnit::Major, 840), Ok(1230));
        assert_eq!(parse_amount("12", AmountUnit::Major, 840), Ok(1200));
        assert_eq!(parse_amount("1234", AmountUnit::Major, 392), Ok(1234));
        assert_eq!(parse_amount("1.234", AmountUnit::Major, 48), Ok(1234));
        // 0.1 + 0.2 in floating point is not 0.3; here it is 30 cents.
        assert_eq!(parse_amount("0.30", AmountUnit::Major, 840), Ok(30));
        for bad in ["12.34", "-5", "1e3", "", "12a"] {
            assert!(parse_amount(bad, AmountUnit::Minor, 840).is_err(), "{bad}");
        }
        for bad in [
            "12.345",
            "12.",
            ".5",
            "1,00",
            "12.3.4",
            "99999999999999999999",
        ] {
            assert!(parse_amount(bad, AmountUnit::Major, 840).is_err(), "{bad}");
        }
        assert!(
            parse_amount("1.5", AmountUnit::Major, 392).is_err(),
            "JPY has none"
        );
        assert_eq!(parse_currency("840"), Some(840));
        assert_eq!(parse_currency("usd"), Some(840));
        assert_eq!(parse_currency("EUR"), Some(978));
        assert_eq!(parse_currency("XYZ"), None);
        assert_eq!(parse_currency("84"), None);
    }
}
