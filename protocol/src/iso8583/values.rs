//! Small owned values read out of a message without touching the heap: a
//! card number, short texts, and the masked forms that are safe to log.

use std::fmt;
use std::ops::Deref;

/// Longest PAN ISO 8583 allows.
pub const MAX_PAN_DIGITS: usize = 19;

/// A primary account number. Its `Debug` and `Display` print it masked
/// (first 6, last 4); the digits are reachable only through
/// [`Pan::digits`], so a PAN can not end up in a log line by accident.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pan {
    len: u8,
    digits: [u8; MAX_PAN_DIGITS],
}

impl Pan {
    /// `None` unless `digits` is 1..=19 ASCII digits.
    pub fn new(digits: &[u8]) -> Option<Pan> {
        if digits.is_empty()
            || digits.len() > MAX_PAN_DIGITS
            || !digits.iter().all(u8::is_ascii_digit)
        {
            return None;
        }
        let mut d = [0u8; MAX_PAN_DIGITS];
        d[..digits.len()].copy_from_slice(digits);
        Some(Pan {
            len: digits.len() as u8,
            digits: d,
        })
    }

    /// The clear digits. Handle with care: never log them.
    pub fn digits(&self) -> &[u8] {
        &self.digits[..self.len as usize]
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `n` digits (the BIN/IIN is 6 or 8).
    pub fn prefix(&self, n: usize) -> &[u8] {
        &self.digits[..n.min(self.len as usize)]
    }

    /// Does the Luhn (mod 10) check digit hold?
    pub fn luhn_ok(&self) -> bool {
        luhn_ok(self.digits())
    }

    pub fn masked(&self) -> MaskedPan {
        MaskedPan::of(self.digits())
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan({})", self.masked())
    }
}

impl fmt::Display for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.masked(), f)
    }
}

/// Luhn check over ASCII digits.
pub fn luhn_ok(digits: &[u8]) -> bool {
    if digits.len() < 2 {
        return false;
    }
    let mut sum = 0u32;
    for (i, &c) in digits.iter().rev().enumerate() {
        let mut d = c.wrapping_sub(b'0') as u32;
        if d > 9 {
            return false;
        }
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

/// A card number with all but the first 6 and last 4 digits replaced by `*`
/// (values shorter than 13 keep only the last 4, shorter than 8 nothing).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MaskedPan {
    len: u8,
    text: [u8; MAX_PAN_DIGITS],
}

impl MaskedPan {
    pub fn of(digits: &[u8]) -> MaskedPan {
        let len = digits.len().min(MAX_PAN_DIGITS);
        let (lead, tail) = match len {
            13.. => (6, 4),
            8..=12 => (0, 4),
            _ => (0, 0),
        };
        let mut text = [b'*'; MAX_PAN_DIGITS];
        text[..lead].copy_from_slice(&digits[..lead]);
        text[len - tail..len].copy_from_slice(&digits[len - tail..len]);
        MaskedPan {
            len: len as u8,
            text,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and '*' are ever written.
        std::str::from_utf8(&self.text[..self.len as usize]).unwrap_or("*")
    }
}

impl fmt::Display for MaskedPan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for MaskedPan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Capacity of [`SmallText`]: enough for every fixed text field of the 1987
/// layout up to DE43 (40 characters).
pub const SMALL_TEXT_CAP: usize = 47;

/// A short text value (terminal id, merchant id, RRN...) copied out of a
/// message, decoded to ASCII/Latin-1 whatever the field's wire encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SmallText {
    len: u8,
    buf: [u8; SMALL_TEXT_CAP],
}

impl SmallText {
    pub const EMPTY: SmallText = SmallText {
        len: 0,
        buf: [0; SMALL_TEXT_CAP],
    };

    /// `None` if `bytes` is longer than the capacity.
    pub fn new(bytes: &[u8]) -> Option<SmallText> {
        // One copy, not a byte at a time: terminal and merchant ids are
        // read several times per request.
        if bytes.len() > SMALL_TEXT_CAP {
            return None;
        }
        let mut t = SmallText::EMPTY;
        t.buf[..bytes.len()].copy_from_slice(bytes);
        t.len = bytes.len() as u8;
        Some(t)
    }

    pub(crate) fn try_extend(&mut self, it: impl IntoIterator<Item = u8>) -> bool {
        for c in it {
            let i = self.len as usize;
            if i >= SMALL_TEXT_CAP {
                return false;
            }
            self.buf[i] = c;
            self.len += 1;
        }
        true
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// The text with trailing spaces (fixed-field padding) removed.
    pub fn trimmed(&self) -> &[u8] {
        trim_padding(self.as_bytes())
    }
}

/// `b` without its trailing spaces (the padding of a fixed `ans` field).
pub fn trim_padding(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&c| c != b' ').map_or(0, |i| i + 1);
    &b[..end]
}

impl Deref for SmallText {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Display for SmallText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_printable(f, self.as_bytes())
    }
}

impl fmt::Debug for SmallText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Writes bytes as text, escaping anything that is not printable ASCII.
pub(crate) fn write_printable(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    for &c in bytes {
        if (0x20..0x7F).contains(&c) {
            f.write_char(c as char)?;
        } else {
            write!(f, "\\x{c:02X}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pans_print_masked_only() {
        let pan = Pan::new(b"4761739001010010").unwrap();
        assert_eq!(pan.to_string(), "476173******0010");
        assert_eq!(format!("{pan:?}"), "Pan(476173******0010)");
        assert_eq!(pan.prefix(6), b"476173");
        assert!(pan.luhn_ok());
        assert!(!Pan::new(b"4761739001010011").unwrap().luhn_ok());
        assert_eq!(Pan::new(b"47617x"), None);
        assert_eq!(Pan::new(b""), None);
        assert_eq!(Pan::new(&[b'1'; 20]), None);
    }

    #[test]
    fn short_values_mask_more() {
        assert_eq!(MaskedPan::of(b"123456789012").as_str(), "********9012");
        assert_eq!(MaskedPan::of(b"1234567").as_str(), "*******");
        assert_eq!(MaskedPan::of(b"1234567890123").as_str(), "123456***0123");
        assert_eq!(
            MaskedPan::of(b"1234567890123456789").as_str(),
            "123456*********6789"
        );
    }

    #[test]
    fn small_text_trims_padding_and_refuses_overflow() {
        let t = SmallText::new(b"TERM01  ").unwrap();
        assert_eq!(t.trimmed(), b"TERM01");
        assert_eq!(t.len(), 8);
        assert!(SmallText::new(&[b'x'; SMALL_TEXT_CAP + 1]).is_none());
        assert_eq!(SmallText::new(b"a\x01").unwrap().to_string(), "a\\x01");
    }
}
