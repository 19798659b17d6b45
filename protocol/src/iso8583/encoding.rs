//! Wire primitives: length prefixes, validation of field data, and the
//! conversion between a field's wire form and its logical value (text for
//! `n`/`an`/`ans`/`z`/`x+n` fields, raw bytes for `b` fields).

use bytes::BufMut;

use super::ebcdic::{FROM_EBCDIC, TO_EBCDIC};
use super::spec::{Encoding, FieldDef, FieldKind, Pad, PrefixEncoding};

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

#[inline]
pub(crate) fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[inline]
pub(crate) fn hex_digit(v: u8) -> u8 {
    HEX_UPPER[(v & 0x0F) as usize]
}

#[inline]
pub(crate) fn is_digit(c: u8) -> bool {
    c.wrapping_sub(b'0') < 10
}

#[inline]
pub(crate) fn all_digits(s: &[u8]) -> bool {
    first_non_digit(s).is_none()
}

/// Position of the first byte that is not an ASCII digit. Eight bytes at a
/// time: a byte is a digit when its high nibble is 3 and adding 6 to it
/// does not carry out of the low nibble.
#[inline]
pub(crate) fn first_non_digit(s: &[u8]) -> Option<usize> {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const THREES: u64 = 0x3030_3030_3030_3030;
    const SIXES: u64 = 0x0606_0606_0606_0606;
    let mut at = 0;
    while let Some(chunk) = s.get(at..at + 8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        let v = u64::from_le_bytes(b);
        if v & HIGH != THREES || (v + SIXES) & HIGH != THREES {
            break;
        }
        at += 8;
    }
    s[at..].iter().position(|&c| !is_digit(c)).map(|i| i + at)
}

/// Reads a length prefix of `digits` decimal digits; `None` when it is not
/// a valid number in its encoding. `buf` holds exactly the prefix bytes.
#[inline]
pub(crate) fn read_prefix(enc: PrefixEncoding, buf: &[u8]) -> Option<usize> {
    let mut v = 0usize;
    match enc {
        PrefixEncoding::Ascii => {
            for &c in buf {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    return None;
                }
                v = v * 10 + d as usize;
            }
        }
        PrefixEncoding::Ebcdic => {
            for &c in buf {
                let d = c.wrapping_sub(0xF0);
                if d > 9 {
                    return None;
                }
                v = v * 10 + d as usize;
            }
        }
        PrefixEncoding::Bcd => {
            for &c in buf {
                let (hi, lo) = (c >> 4, c & 0x0F);
                if hi > 9 || lo > 9 {
                    return None;
                }
                v = v * 100 + (hi * 10 + lo) as usize;
            }
        }
        PrefixEncoding::Binary => {
            for &c in buf {
                v = (v << 8) | c as usize;
            }
        }
    }
    Some(v)
}

/// Writes `value` as a length prefix of `digits` digits.
pub(crate) fn write_prefix(enc: PrefixEncoding, digits: u8, value: usize, out: &mut impl BufMut) {
    match enc {
        PrefixEncoding::Ascii | PrefixEncoding::Ebcdic => {
            let zero = if enc == PrefixEncoding::Ascii {
                b'0'
            } else {
                0xF0
            };
            let mut div = 10usize.pow(digits as u32 - 1);
            for _ in 0..digits {
                out.put_u8(zero + ((value / div) % 10) as u8);
                div /= 10;
            }
        }
        PrefixEncoding::Bcd => {
            let width = enc.width(digits);
            let mut div = 100usize.pow(width as u32 - 1);
            for _ in 0..width {
                let two = (value / div) % 100;
                out.put_u8(((two / 10) << 4 | (two % 10)) as u8);
                div /= 100;
            }
        }
        PrefixEncoding::Binary => {
            let width = enc.width(digits);
            for i in (0..width).rev() {
                out.put_u8((value >> (8 * i)) as u8);
            }
        }
    }
}

/// What is wrong with a field's data, and where (offset within the data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataProblem {
    NonNumeric(usize),
    Invalid(usize, &'static str),
}

/// Is this nibble a valid digit of `kind` in BCD?
#[inline]
fn bcd_nibble_ok(kind: FieldKind, n: u8) -> bool {
    n <= 9 || (kind == FieldKind::Track && n == 0x0D)
}

/// Position of the pad nibble of an odd-length BCD value of `digits` digits
/// in `wire`: index of the nibble counting from the left.
#[inline]
fn bcd_pad_nibble(pad: Pad, digits: usize) -> Option<usize> {
    if digits % 2 == 0 {
        return None;
    }
    match pad {
        Pad::Left(_) => Some(0),
        Pad::Right(_) => Some(digits),
    }
}

/// The characters a textual field kind allows, as ASCII (EBCDIC data is
/// converted first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Charset {
    /// `n`: `0`-`9`.
    Digits,
    /// `a`: letters and space.
    Alpha,
    /// `an`: letters, digits and space.
    Alphanumeric,
    /// `ans`: printable ASCII, 0x20..=0x7E.
    Printable,
    /// `z`: the track 2/3 code set of ISO 7813 / ISO 4909 (0x30..=0x3F:
    /// digits, `:;<=>?`, so separator and sentinels), plus `D`/`d`, the
    /// separator as ISO 8583 messages often write it.
    Track,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// 0x80 in each byte of `y` (every byte below 0x80) that lies in
/// `lo..=hi`, 0 elsewhere. Each byte's sum stays below 0x100, so no carry
/// crosses into the next byte and the answer is exact per byte.
#[inline(always)]
const fn in_range(y: u64, lo: u8, hi: u8) -> u64 {
    let at_least_lo = y + ONES * (0x80 - lo as u64);
    let above_hi = y + ONES * (0x7F - hi as u64);
    at_least_lo & !above_hi & HIGHS
}

impl Charset {
    pub(crate) fn of(kind: FieldKind) -> Option<Charset> {
        match kind {
            FieldKind::Numeric => Some(Charset::Digits),
            FieldKind::Alpha => Some(Charset::Alpha),
            FieldKind::Alphanumeric => Some(Charset::Alphanumeric),
            FieldKind::Text => Some(Charset::Printable),
            FieldKind::Track => Some(Charset::Track),
            FieldKind::Binary | FieldKind::SignedAmount => None,
        }
    }

    /// Names the set in a parse error ("invalid {name} character").
    pub(crate) fn name(self) -> &'static str {
        match self {
            Charset::Digits => "numeric",
            Charset::Alpha => "alphabetic",
            Charset::Alphanumeric => "alphanumeric",
            Charset::Printable => "printable",
            Charset::Track => "track",
        }
    }

    /// One character at a time: the definition the wide check must match.
    #[inline]
    pub(crate) fn contains(self, c: u8) -> bool {
        match self {
            Charset::Digits => c.is_ascii_digit(),
            Charset::Alpha => c.is_ascii_alphabetic() || c == b' ',
            Charset::Alphanumeric => c.is_ascii_alphanumeric() || c == b' ',
            Charset::Printable => (0x20..=0x7E).contains(&c),
            Charset::Track => (0x30..=0x3F).contains(&c) || c == b'D' || c == b'd',
        }
    }

    /// 0x80 in each byte of `x` that is in the set, 0 elsewhere.
    #[inline(always)]
    fn members(self, x: u64) -> u64 {
        let ascii = !x & HIGHS;
        let y = x & !HIGHS;
        // Setting bit 5 folds upper case onto lower case; nothing else
        // lands in `a..=z`.
        let folded = y | (ONES * 0x20);
        let letter = || in_range(folded, b'a', b'z');
        let space = in_range(y, b' ', b' ');
        let digit = in_range(y, b'0', b'9');
        let set = match self {
            Charset::Digits => digit,
            Charset::Alpha => letter() | space,
            Charset::Alphanumeric => letter() | digit | space,
            Charset::Printable => in_range(y, 0x20, 0x7E),
            Charset::Track => in_range(y, 0x30, 0x3F) | in_range(folded, b'd', b'd'),
        };
        set & ascii
    }

    /// A character of the set (tests fill words with it).
    #[cfg(test)]
    const fn filler(self) -> u8 {
        match self {
            Charset::Digits | Charset::Track => b'0',
            _ => b' ',
        }
    }
}

/// Position of the first byte of `s` outside `set`, eight bytes at a time,
/// branching once per word. A tail shorter than a word is checked as the
/// last eight bytes (overlapping the words already found clean); fields
/// under eight bytes go one byte at a time.
#[inline(always)]
pub(crate) fn first_outside(s: &[u8], set: Charset) -> Option<usize> {
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&s[at..at + 8]);
        !set.members(u64::from_le_bytes(b)) & HIGHS
    };
    if s.len() < 8 {
        return s.iter().position(|&c| !set.contains(c));
    }
    let mut at = 0;
    while at + 8 <= s.len() {
        let outside = word(at);
        if outside != 0 {
            return Some(at + (outside.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    if at < s.len() {
        let last = s.len() - 8;
        let outside = word(last);
        if outside != 0 {
            return Some(last + (outside.trailing_zeros() / 8) as usize);
        }
    }
    None
}

#[inline(always)]
fn ascii_charset(def: &FieldDef, wire: &[u8], set: Charset) -> Result<(), DataProblem> {
    match first_outside(wire, set) {
        None => Ok(()),
        Some(i) => outside_declared_pad(def, wire, set, i),
    }
}

/// The problem to report for a byte outside `set` at `i`.
fn outside(set: Charset, i: usize) -> DataProblem {
    match set {
        Charset::Digits => DataProblem::NonNumeric(i),
        _ => DataProblem::Invalid(i, set.name()),
    }
}

/// A byte outside the set was found at `first`: still fine when the spec
/// pads with a character outside the set and every such byte belongs to
/// the run of padding on the side the spec pads.
#[cold]
fn outside_declared_pad(
    def: &FieldDef,
    wire: &[u8],
    set: Charset,
    first: usize,
) -> Result<(), DataProblem> {
    let (Pad::Left(pad) | Pad::Right(pad)) = def.pad;
    if set.contains(pad) {
        return Err(outside(set, first));
    }
    let ebcdic = def.data == Encoding::Ebcdic;
    let pad_wire = if ebcdic { TO_EBCDIC[pad as usize] } else { pad };
    let is_pad = |c: &&u8| **c == pad_wire;
    let (body_start, body) = match def.pad {
        Pad::Left(_) => {
            let run = wire.iter().take_while(is_pad).count();
            (run, &wire[run..])
        }
        Pad::Right(_) => {
            let run = wire.iter().rev().take_while(is_pad).count();
            (0, &wire[..wire.len() - run])
        }
    };
    let to_ascii = |c: u8| if ebcdic { FROM_EBCDIC[c as usize] } else { c };
    match body.iter().position(|&c| !set.contains(to_ascii(c))) {
        None => Ok(()),
        Some(i) => Err(outside(set, body_start + i)),
    }
}

/// Checks a field's wire data against its kind. `units` is its length in
/// the field's units.
#[inline]
pub(crate) fn validate(def: &FieldDef, wire: &[u8], units: usize) -> Result<(), DataProblem> {
    match (def.data, def.kind) {
        (Encoding::Ascii, FieldKind::Numeric) => match first_non_digit(wire) {
            None => Ok(()),
            Some(i) => outside_declared_pad(def, wire, Charset::Digits, i),
        },
        // One arm per charset so each inlines its own SWAR check.
        (Encoding::Ascii, FieldKind::Alpha) => ascii_charset(def, wire, Charset::Alpha),
        (Encoding::Ascii, FieldKind::Alphanumeric) => {
            ascii_charset(def, wire, Charset::Alphanumeric)
        }
        (Encoding::Ascii, FieldKind::Text) => ascii_charset(def, wire, Charset::Printable),
        (Encoding::Ascii, FieldKind::Track) => ascii_charset(def, wire, Charset::Track),
        (Encoding::Ascii, FieldKind::SignedAmount) => signed_amount(wire, |c| c, is_digit),
        (Encoding::Ebcdic, FieldKind::SignedAmount) => signed_amount(
            wire,
            |c| FROM_EBCDIC[c as usize],
            |c| c.wrapping_sub(0xF0) <= 9,
        ),
        // EBCDIC specs are rare: convert each byte, then check it.
        (Encoding::Ebcdic, kind) => match Charset::of(kind) {
            Some(set) => match wire
                .iter()
                .position(|&c| !set.contains(FROM_EBCDIC[c as usize]))
            {
                None => Ok(()),
                Some(i) => outside_declared_pad(def, wire, set, i),
            },
            None => Ok(()),
        },
        (Encoding::Hex, _) => {
            if units % 2 != 0 {
                return Err(DataProblem::Invalid(0, "even-length hex"));
            }
            match wire.iter().position(|&c| hex_value(c).is_none()) {
                None => Ok(()),
                Some(i) => Err(DataProblem::Invalid(i, "hex")),
            }
        }
        (Encoding::Bcd, FieldKind::SignedAmount) => {
            let sign = wire.first().copied().unwrap_or(b'C');
            if sign != b'C' && sign != b'D' {
                return Err(DataProblem::Invalid(0, "C/D sign"));
            }
            let digits = units.saturating_sub(1);
            validate_bcd(
                FieldKind::Numeric,
                def.pad,
                &wire[1.min(wire.len())..],
                digits,
            )
            .map_err(|p| match p {
                DataProblem::NonNumeric(i) => DataProblem::NonNumeric(i + 1),
                other => other,
            })
        }
        (Encoding::Bcd, kind) => validate_bcd(kind, def.pad, wire, units),
        _ => Ok(()),
    }
}

fn signed_amount(
    wire: &[u8],
    to_ascii: impl Fn(u8) -> u8,
    digit: impl Fn(u8) -> bool,
) -> Result<(), DataProblem> {
    match wire.first().map(|&c| to_ascii(c)) {
        Some(b'C') | Some(b'D') => {}
        Some(_) => return Err(DataProblem::Invalid(0, "C/D sign")),
        None => return Ok(()),
    }
    match wire[1..].iter().position(|&c| !digit(c)) {
        None => Ok(()),
        Some(i) => Err(DataProblem::NonNumeric(i + 1)),
    }
}

fn validate_bcd(kind: FieldKind, pad: Pad, wire: &[u8], digits: usize) -> Result<(), DataProblem> {
    let pad_at = bcd_pad_nibble(pad, digits);
    for (i, &byte) in wire.iter().enumerate() {
        for (j, nib) in [(2 * i, byte >> 4), (2 * i + 1, byte & 0x0F)] {
            if Some(j) == pad_at {
                if nib != 0 && nib != 0x0F {
                    return Err(DataProblem::Invalid(i, "pad nibble"));
                }
            } else if !bcd_nibble_ok(kind, nib) {
                return Err(match kind {
                    FieldKind::Numeric => DataProblem::NonNumeric(i),
                    _ => DataProblem::Invalid(i, "BCD digit"),
                });
            }
        }
    }
    Ok(())
}

/// Appends the logical value of a field's wire data to `out`.
pub(crate) fn decode_logical(def: &FieldDef, wire: &[u8], units: usize, out: &mut impl Extend<u8>) {
    match def.data {
        Encoding::Ascii | Encoding::Binary => out.extend(wire.iter().copied()),
        Encoding::Ebcdic => out.extend(wire.iter().map(|&c| FROM_EBCDIC[c as usize])),
        Encoding::Hex => out.extend(
            wire.chunks_exact(2)
                .map(|p| (hex_value(p[0]).unwrap_or(0) << 4) | hex_value(p[1]).unwrap_or(0)),
        ),
        Encoding::Bcd => {
            let (wire, digits) = if def.kind == FieldKind::SignedAmount {
                if let Some(&sign) = wire.first() {
                    out.extend([sign]);
                }
                (wire.get(1..).unwrap_or(&[]), units.saturating_sub(1))
            } else {
                (wire, units)
            };
            let skip = match bcd_pad_nibble(def.pad, digits) {
                Some(0) => 1,
                _ => 0,
            };
            out.extend(
                wire.iter()
                    .flat_map(|&b| [b >> 4, b & 0x0F])
                    .skip(skip)
                    .take(digits)
                    .map(|n| if n <= 9 { b'0' + n } else { hex_digit(n) }),
            );
        }
    }
}

/// Parses a numeric field's wire data as an unsigned integer. `None` for
/// non-numeric kinds or values over `u64`.
pub(crate) fn decode_u64(def: &FieldDef, wire: &[u8], units: usize) -> Option<u64> {
    let mut v: u64 = 0;
    let mut push = |d: u8| -> Option<()> {
        v = v.checked_mul(10)?.checked_add(d as u64)?;
        Some(())
    };
    match def.data {
        Encoding::Ascii => {
            for &c in wire {
                push(c.wrapping_sub(b'0')).filter(|_| is_digit(c))?;
            }
        }
        Encoding::Ebcdic => {
            for &c in wire {
                let d = c.wrapping_sub(0xF0);
                if d > 9 {
                    return None;
                }
                push(d)?;
            }
        }
        Encoding::Bcd if def.kind == FieldKind::Numeric => {
            let skip = match bcd_pad_nibble(def.pad, units) {
                Some(0) => 1,
                _ => 0,
            };
            for n in wire
                .iter()
                .flat_map(|&b| [b >> 4, b & 0x0F])
                .skip(skip)
                .take(units)
            {
                if n > 9 {
                    return None;
                }
                push(n)?;
            }
        }
        _ => return None,
    }
    Some(v)
}

/// Checks that a logical value can be written in `def`'s encoding and
/// returns its length in the field's units.
pub(crate) fn check_logical(def: &FieldDef, value: &[u8]) -> Result<usize, DataProblem> {
    match def.kind {
        FieldKind::Numeric => {
            if let Some(i) = value.iter().position(|&c| !is_digit(c)) {
                return Err(DataProblem::NonNumeric(i));
            }
        }
        FieldKind::Track if def.data == Encoding::Bcd => {
            if let Some(i) = value
                .iter()
                .position(|&c| !(is_digit(c) || c == b'=' || c == b'D' || c == b'd'))
            {
                return Err(DataProblem::Invalid(i, "track"));
            }
        }
        FieldKind::SignedAmount => {
            signed_amount(value, |c| c, is_digit)?;
        }
        // What parse would refuse is refused here, so a packed message
        // always parses again (the pad character is the spec's own).
        FieldKind::Alpha | FieldKind::Alphanumeric | FieldKind::Text | FieldKind::Track => {
            match (def.data, Charset::of(def.kind)) {
                (Encoding::Ascii | Encoding::Ebcdic, Some(set)) => {
                    if let Some(i) = value.iter().position(|&c| !set.contains(c)) {
                        return Err(DataProblem::Invalid(i, set.name()));
                    }
                }
                // BCD carries digits only; anything else would be written
                // as a 0 nibble, changing the value.
                (Encoding::Bcd, _) => {
                    if let Some(i) = value.iter().position(|&c| !is_digit(c)) {
                        return Err(DataProblem::NonNumeric(i));
                    }
                }
                _ => {}
            }
        }
        FieldKind::Binary => {}
    }
    Ok(def.units_for_logical(value.len()))
}

/// Writes a logical value (already checked with [`check_logical`]) as wire
/// data of exactly `units` units, padding per `def.pad` when the value is
/// shorter (fixed fields).
pub(crate) fn encode_logical(def: &FieldDef, value: &[u8], units: usize, out: &mut impl BufMut) {
    let value_units = def.units_for_logical(value.len());
    let missing = units.saturating_sub(value_units);
    match def.data {
        Encoding::Ascii | Encoding::Binary | Encoding::Ebcdic | Encoding::Hex => {
            let (pad_left, pad_char) = match def.pad {
                Pad::Left(c) => (true, c),
                Pad::Right(c) => (false, c),
            };
            let map = |c: u8| {
                if def.data == Encoding::Ebcdic {
                    TO_EBCDIC[c as usize]
                } else {
                    c
                }
            };
            if pad_left {
                out.put_bytes(map(pad_char), missing);
            }
            if def.data == Encoding::Hex {
                for &b in value {
                    out.put_u8(hex_digit(b >> 4));
                    out.put_u8(hex_digit(b));
                }
            } else if def.data == Encoding::Ebcdic {
                for &c in value {
                    out.put_u8(TO_EBCDIC[c as usize]);
                }
            } else {
                out.put_slice(value);
            }
            if !pad_left {
                out.put_bytes(map(pad_char), missing);
            }
        }
        Encoding::Bcd => {
            let (value, digits) = if def.kind == FieldKind::SignedAmount {
                out.put_u8(value.first().copied().unwrap_or(b'C'));
                (value.get(1..).unwrap_or(&[]), units.saturating_sub(1))
            } else {
                (value, units)
            };
            let missing = digits.saturating_sub(value.len());
            let (pad_nib, left) = match def.pad {
                Pad::Left(c) => (c & 0x0F, true),
                Pad::Right(c) => (c & 0x0F, false),
            };
            let nibble = |c: u8| match c {
                b'0'..=b'9' => c - b'0',
                b'=' | b'D' | b'd' => 0x0D,
                _ => 0,
            };
            // A value shorter than the field is padded with zero digits on
            // the side the padding goes; an odd count gets one pad nibble.
            let odd_pad = digits % 2;
            let lead = if left { missing + odd_pad } else { 0 };
            let trail = if left { 0 } else { missing + odd_pad };
            let lead_iter = std::iter::repeat_n(0u8, lead);
            let mut nibbles = lead_iter
                .chain(value.iter().map(|&c| nibble(c)))
                .chain(std::iter::repeat_n(0u8, trail));
            let total = (digits + odd_pad) / 2;
            let first_is_pad = left && odd_pad == 1;
            let last_is_pad = !left && odd_pad == 1;
            for i in 0..total {
                let mut hi = nibbles.next().unwrap_or(0);
                let mut lo = nibbles.next().unwrap_or(0);
                if i == 0 && first_is_pad && missing == 0 {
                    hi = pad_nib;
                }
                if i + 1 == total && last_is_pad && missing == 0 {
                    lo = pad_nib;
                }
                out.put_u8(hi << 4 | lo);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::spec::Length;

    fn def(kind: FieldKind, data: Encoding, len: u16, pad: Pad) -> FieldDef {
        FieldDef {
            kind,
            length: Length::Fixed(len),
            data,
            prefix: PrefixEncoding::Ascii,
            pad,
        }
    }

    #[test]
    fn the_wide_digit_check_agrees_with_the_simple_one() {
        let mut cases: Vec<Vec<u8>> = vec![b"".to_vec(), b"0123456789012345678".to_vec()];
        for bad in [b'/', b':', b'a', b' ', 0x00, 0xFF, 0xB5, b'?', 0x39 + 0x80] {
            for len in [1usize, 7, 8, 9, 16, 17] {
                for at in 0..len {
                    let mut v = vec![b'5'; len];
                    v[at] = bad;
                    cases.push(v);
                }
            }
        }
        for c in cases {
            assert_eq!(
                first_non_digit(&c),
                c.iter().position(|&b| !is_digit(b)),
                "{c:?}"
            );
        }
    }

    #[test]
    fn prefixes_round_trip_in_every_encoding() {
        for enc in [
            PrefixEncoding::Ascii,
            PrefixEncoding::Ebcdic,
            PrefixEncoding::Bcd,
            PrefixEncoding::Binary,
        ] {
            for (digits, value) in [(1u8, 7usize), (2, 19), (3, 999), (4, 1234)] {
                let mut out = Vec::new();
                write_prefix(enc, digits, value, &mut out);
                assert_eq!(out.len(), enc.width(digits), "{enc:?} {digits}");
                assert_eq!(read_prefix(enc, &out), Some(value), "{enc:?} {digits}");
            }
        }
        let mut out = Vec::new();
        write_prefix(PrefixEncoding::Bcd, 3, 104, &mut out);
        assert_eq!(out, [0x01, 0x04]);
        assert_eq!(read_prefix(PrefixEncoding::Ascii, b"1x"), None);
        assert_eq!(read_prefix(PrefixEncoding::Bcd, &[0x1A]), None);
    }

    #[test]
    fn bcd_odd_lengths_pad_on_the_configured_side() {
        let left = def(FieldKind::Numeric, Encoding::Bcd, 3, Pad::Left(0));
        let mut out = Vec::new();
        encode_logical(&left, b"840", 3, &mut out);
        assert_eq!(out, [0x08, 0x40]);
        let mut text = Vec::new();
        decode_logical(&left, &out, 3, &mut text);
        assert_eq!(text, b"840");
        assert_eq!(decode_u64(&left, &out, 3), Some(840));

        let right = def(FieldKind::Numeric, Encoding::Bcd, 19, Pad::Right(0x0F));
        let mut out = Vec::new();
        encode_logical(&right, b"4761739001010010017", 19, &mut out);
        assert_eq!(out.len(), 10);
        assert_eq!(out[9], 0x7F);
        let mut text = Vec::new();
        decode_logical(&right, &out, 19, &mut text);
        assert_eq!(text, b"4761739001010010017");
    }

    #[test]
    fn bcd_rejects_non_decimal_nibbles_but_accepts_pad() {
        let d = def(FieldKind::Numeric, Encoding::Bcd, 3, Pad::Left(0));
        assert_eq!(validate(&d, &[0xF8, 0x40], 3), Ok(()));
        assert_eq!(
            validate(&d, &[0x08, 0x4A], 3),
            Err(DataProblem::NonNumeric(1))
        );
        let track = def(FieldKind::Track, Encoding::Bcd, 4, Pad::Right(0));
        assert_eq!(validate(&track, &[0x12, 0xD3], 4), Ok(()));
    }

    #[test]
    fn short_fixed_values_are_padded() {
        let n = def(FieldKind::Numeric, Encoding::Ascii, 6, Pad::Left(b'0'));
        let mut out = Vec::new();
        encode_logical(&n, b"42", 6, &mut out);
        assert_eq!(out, b"000042");
        let bcd = def(FieldKind::Numeric, Encoding::Bcd, 6, Pad::Left(0));
        let mut out = Vec::new();
        encode_logical(&bcd, b"42", 6, &mut out);
        assert_eq!(out, [0x00, 0x00, 0x42]);
        let text = def(FieldKind::Text, Encoding::Ebcdic, 4, Pad::Right(b' '));
        let mut out = Vec::new();
        encode_logical(&text, b"AB", 4, &mut out);
        assert_eq!(out, [0xC1, 0xC2, 0x40, 0x40]);
        let mut back = Vec::new();
        decode_logical(&text, &out, 4, &mut back);
        assert_eq!(back, b"AB  ");
    }

    #[test]
    fn signed_amounts_keep_their_sign() {
        let d = def(FieldKind::SignedAmount, Encoding::Bcd, 9, Pad::Left(0));
        let mut out = Vec::new();
        encode_logical(&d, b"D00001234", 9, &mut out);
        assert_eq!(out, [b'D', 0x00, 0x00, 0x12, 0x34]);
        assert_eq!(validate(&d, &out, 9), Ok(()));
        let mut back = Vec::new();
        decode_logical(&d, &out, 9, &mut back);
        assert_eq!(back, b"D00001234");
        assert_eq!(
            validate(&d, &[b'X', 0, 0, 0, 0], 9),
            Err(DataProblem::Invalid(0, "C/D sign"))
        );
    }

    #[test]
    fn hex_binary_round_trips() {
        let d = def(FieldKind::Binary, Encoding::Hex, 4, Pad::Right(b'0'));
        let mut out = Vec::new();
        encode_logical(&d, &[0xAB, 0x01], 4, &mut out);
        assert_eq!(out, b"AB01");
        assert_eq!(validate(&d, b"ab01", 4), Ok(()));
        assert_eq!(
            validate(&d, b"AG01", 4),
            Err(DataProblem::Invalid(1, "hex"))
        );
        let mut back = Vec::new();
        decode_logical(&d, b"ab01", 4, &mut back);
        assert_eq!(back, [0xAB, 0x01]);
    }

    /// What each kind allows, written out byte by byte apart from the code
    /// under test.
    fn allowed(kind: FieldKind, c: u8) -> bool {
        match kind {
            FieldKind::Numeric => c.is_ascii_digit(),
            FieldKind::Alpha => matches!(c, b'A'..=b'Z' | b'a'..=b'z' | b' '),
            FieldKind::Alphanumeric => matches!(c, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b' '),
            FieldKind::Text => matches!(c, b' '..=b'~'),
            FieldKind::Track => matches!(c, b'0'..=b'9' | b':'..=b'?' | b'D' | b'd'),
            FieldKind::Binary | FieldKind::SignedAmount => unreachable!(),
        }
    }

    const CHECKED_KINDS: [FieldKind; 5] = [
        FieldKind::Numeric,
        FieldKind::Alpha,
        FieldKind::Alphanumeric,
        FieldKind::Text,
        FieldKind::Track,
    ];

    #[test]
    fn the_wide_charset_check_agrees_with_the_byte_definition() {
        for kind in CHECKED_KINDS {
            let set = Charset::of(kind).expect("textual kind");
            for c in 0..=255u8 {
                assert_eq!(set.contains(c), allowed(kind, c), "{kind:?} {c:#04x}");
            }
            for bad in 0..=255u8 {
                for len in [1usize, 7, 8, 9, 15, 16, 17, 24] {
                    for at in 0..len {
                        let mut v = vec![set.filler(); len];
                        // Members elsewhere, to catch borrows across bytes.
                        for (i, b) in v.iter_mut().enumerate() {
                            if i != at && allowed(kind, b'z') && i % 3 == 1 {
                                *b = b'z';
                            }
                        }
                        v[at] = bad;
                        let expected = v.iter().position(|&b| !allowed(kind, b));
                        assert_eq!(first_outside(&v, set), expected, "{kind:?} {v:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_byte_is_accepted_or_refused_as_the_kind_says_in_ascii_and_ebcdic() {
        for kind in CHECKED_KINDS {
            for data in [Encoding::Ascii, Encoding::Ebcdic] {
                let d = def(kind, data, 3, FieldDef::default_pad(kind, data));
                let to_wire = |c: u8| {
                    if data == Encoding::Ebcdic {
                        TO_EBCDIC[c as usize]
                    } else {
                        c
                    }
                };
                let fill = if kind == FieldKind::Numeric || kind == FieldKind::Track {
                    b'7'
                } else {
                    b'K'
                };
                for b in 0..=255u8 {
                    let wire = [to_wire(fill), b, to_wire(fill)];
                    let logical = if data == Encoding::Ebcdic {
                        FROM_EBCDIC[b as usize]
                    } else {
                        b
                    };
                    let got = validate(&d, &wire, 3);
                    if allowed(kind, logical) {
                        assert_eq!(got, Ok(()), "{kind:?} {data:?} {b:#04x}");
                    } else {
                        let want = if kind == FieldKind::Numeric {
                            DataProblem::NonNumeric(1)
                        } else {
                            DataProblem::Invalid(1, Charset::of(kind).unwrap().name())
                        };
                        assert_eq!(got, Err(want), "{kind:?} {data:?} {b:#04x}");
                    }
                    // The builder refuses exactly what parse refuses.
                    let value = [fill, logical, fill];
                    assert_eq!(
                        check_logical(&d, &value).is_ok(),
                        allowed(kind, logical),
                        "pack {kind:?} {data:?} {b:#04x}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_byte_is_accepted_or_refused_in_bcd() {
        let n = def(FieldKind::Numeric, Encoding::Bcd, 4, Pad::Left(0));
        let z = def(FieldKind::Track, Encoding::Bcd, 4, Pad::Right(0));
        for b in 0..=255u8 {
            let (hi, lo) = (b >> 4, b & 0x0F);
            assert_eq!(
                validate(&n, &[0x12, b], 4).is_ok(),
                hi <= 9 && lo <= 9,
                "n {b:#04x}"
            );
            let track = |x: u8| x <= 9 || x == 0x0D;
            assert_eq!(
                validate(&z, &[0x12, b], 4).is_ok(),
                track(hi) && track(lo),
                "z {b:#04x}"
            );
        }
    }

    #[test]
    fn a_declared_pad_outside_the_charset_passes_only_as_padding() {
        let n = def(FieldKind::Numeric, Encoding::Ascii, 6, Pad::Left(b'F'));
        assert_eq!(validate(&n, b"FF1234", 6), Ok(()));
        assert_eq!(validate(&n, b"12F34F", 6), Err(DataProblem::NonNumeric(2)));
        let mut out = Vec::new();
        encode_logical(&n, b"42", 6, &mut out);
        assert_eq!(validate(&n, &out, 6), Ok(()), "a padded value parses again");

        let a = def(FieldKind::Alpha, Encoding::Ebcdic, 4, Pad::Right(b'0'));
        let mut out = Vec::new();
        encode_logical(&a, b"AB", 4, &mut out);
        assert_eq!(validate(&a, &out, 4), Ok(()));
        let wire: Vec<u8> = b"A0B0".iter().map(|&c| TO_EBCDIC[c as usize]).collect();
        assert_eq!(
            validate(&a, &wire, 4),
            Err(DataProblem::Invalid(1, "alphabetic"))
        );
        // A pad inside the set changes nothing: 0x00 is still refused.
        let ans = def(FieldKind::Text, Encoding::Ascii, 4, Pad::Right(b' '));
        assert_eq!(
            validate(&ans, b"AB\0\0", 4),
            Err(DataProblem::Invalid(2, "printable"))
        );
    }
}
