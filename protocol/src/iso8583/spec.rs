//! Field tables: how each data element of a dialect is laid out on the wire.
//!
//! A [`Spec`] is data, not code: the two built-in dialects live in
//! [`super::specs`], and a third can be read from TOML ([`super::spec_toml`]).
//! Specs are created once at start-up and live for the whole process, so a
//! parsed message can point at its spec with a plain `&'static` reference.

use std::borrow::Cow;

/// Highest data element number (with a secondary bitmap).
pub const MAX_FIELD: usize = 128;

/// What a field may contain (the ISO 8583 attribute letters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// `n`: decimal digits only.
    Numeric,
    /// `a`: letters and spaces.
    Alpha,
    /// `an`: letters, digits and spaces.
    Alphanumeric,
    /// `ans`: any printable ASCII character (0x20..=0x7E).
    Text,
    /// `b`: raw bytes.
    Binary,
    /// `z`: track 2/3 data (the ISO 7813 code set: digits, the separator
    /// `=` (or `D`) and the sentinels; in BCD, digits and the `D` nibble).
    Track,
    /// `x+n`: an amount with a leading `C` (credit) or `D` (debit).
    SignedAmount,
}

impl FieldKind {
    pub fn code(self) -> &'static str {
        match self {
            FieldKind::Numeric => "n",
            FieldKind::Alpha => "a",
            FieldKind::Alphanumeric => "an",
            FieldKind::Text => "ans",
            FieldKind::Binary => "b",
            FieldKind::Track => "z",
            FieldKind::SignedAmount => "x+n",
        }
    }

    /// Logical values of these kinds are text; `Binary` is raw bytes.
    pub fn is_textual(self) -> bool {
        !matches!(self, FieldKind::Binary)
    }
}

/// How a field's data is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// One ASCII byte per character.
    Ascii,
    /// One EBCDIC (cp500) byte per character.
    Ebcdic,
    /// Packed BCD, two digits per byte; lengths count digits.
    Bcd,
    /// Raw bytes; lengths count bytes.
    Binary,
    /// Binary data written as ASCII hex characters; lengths count characters
    /// (as jPOS `IFA_BINARY`/`IFA_LLLCHAR` and pyiso8583 `default_ascii` do).
    Hex,
}

impl Encoding {
    pub fn code(self) -> &'static str {
        match self {
            Encoding::Ascii => "ascii",
            Encoding::Ebcdic => "ebcdic",
            Encoding::Bcd => "bcd",
            Encoding::Binary => "binary",
            Encoding::Hex => "hex",
        }
    }
}

/// How a variable length prefix is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixEncoding {
    /// Decimal digits, one ASCII byte each (`LL` = 2 bytes).
    Ascii,
    /// Decimal digits, one EBCDIC byte each.
    Ebcdic,
    /// Packed BCD (`LL` = 1 byte, `LLL`/`LLLL` = 2 bytes).
    Bcd,
    /// Unsigned big-endian integer (`LL` = 1 byte, `LLL`/`LLLL` = 2 bytes).
    Binary,
}

impl PrefixEncoding {
    pub fn code(self) -> &'static str {
        match self {
            PrefixEncoding::Ascii => "ascii",
            PrefixEncoding::Ebcdic => "ebcdic",
            PrefixEncoding::Bcd => "bcd",
            PrefixEncoding::Binary => "binary",
        }
    }

    /// Bytes taken by a prefix of `digits` decimal digits.
    pub fn width(self, digits: u8) -> usize {
        match self {
            PrefixEncoding::Ascii | PrefixEncoding::Ebcdic => digits as usize,
            PrefixEncoding::Bcd | PrefixEncoding::Binary => (digits as usize).div_ceil(2),
        }
    }
}

/// Fixed or variable length. Lengths are in the field's units: characters for
/// ASCII/EBCDIC/hex, digits for BCD, bytes for binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    Fixed(u16),
    /// `L`, `LL`, `LLL` or `LLLL` (1-4 prefix digits) with a maximum.
    Variable {
        prefix_digits: u8,
        max: u16,
    },
}

impl Length {
    pub fn max(self) -> u16 {
        match self {
            Length::Fixed(n) => n,
            Length::Variable { max, .. } => max,
        }
    }
}

/// Where padding goes when a value is shorter than the wire needs: a fixed
/// field with a shorter value, or an odd number of BCD digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pad {
    /// Pad on the left with this character (ASCII) or nibble (BCD).
    Left(u8),
    /// Pad on the right with this character or nibble.
    Right(u8),
}

/// The wire layout of one data element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldDef {
    pub kind: FieldKind,
    pub length: Length,
    pub data: Encoding,
    pub prefix: PrefixEncoding,
    pub pad: Pad,
}

impl FieldDef {
    /// Wire bytes taken by a value of `units` length units (prefix excluded).
    #[inline]
    pub fn wire_len(&self, units: usize) -> usize {
        match (self.data, self.kind) {
            (Encoding::Bcd, FieldKind::SignedAmount) => 1 + units.saturating_sub(1).div_ceil(2),
            (Encoding::Bcd, _) => units.div_ceil(2),
            _ => units,
        }
    }

    /// Length of the logical value (text characters or raw bytes) of a
    /// value of `units` units.
    #[inline]
    pub fn logical_len(&self, units: usize) -> usize {
        match self.data {
            Encoding::Hex => units / 2,
            _ => units,
        }
    }

    /// Units needed on the wire for a logical value of `len` bytes.
    #[inline]
    pub fn units_for_logical(&self, len: usize) -> usize {
        match self.data {
            Encoding::Hex => len * 2,
            _ => len,
        }
    }

    /// Default padding for a kind: numbers pad left with zeros, text pads
    /// right with spaces.
    pub fn default_pad(kind: FieldKind, data: Encoding) -> Pad {
        match (kind, data) {
            (FieldKind::Numeric, Encoding::Bcd) => Pad::Left(0),
            (FieldKind::Track, Encoding::Bcd) => Pad::Right(0),
            (FieldKind::Numeric, _) => Pad::Left(b'0'),
            (FieldKind::Binary, Encoding::Hex) => Pad::Right(b'0'),
            (FieldKind::Binary, _) => Pad::Right(0),
            _ => Pad::Right(b' '),
        }
    }
}

/// How the MTI is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtiEncoding {
    Ascii,
    Ebcdic,
    Bcd,
}

/// How the bitmaps are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitmapEncoding {
    /// 8 raw bytes per bitmap.
    Binary,
    /// 16 ASCII hex characters per bitmap.
    Hex,
    /// 16 EBCDIC hex characters per bitmap.
    EbcdicHex,
}

impl BitmapEncoding {
    pub fn width(self) -> usize {
        match self {
            BitmapEncoding::Binary => 8,
            BitmapEncoding::Hex | BitmapEncoding::EbcdicHex => 16,
        }
    }
}

/// A whole dialect: MTI, bitmap and the 2..=128 field table.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub mti: MtiEncoding,
    pub bitmap: BitmapEncoding,
    /// Indexed by field number; 0 and 1 are always `None` (field 1 is the
    /// secondary bitmap indicator, never data).
    pub fields: [Option<FieldDef>; MAX_FIELD + 1],
    pub names: [Cow<'static, str>; MAX_FIELD + 1],
}

impl Spec {
    pub fn empty(name: impl Into<String>, mti: MtiEncoding, bitmap: BitmapEncoding) -> Spec {
        Spec {
            name: name.into(),
            mti,
            bitmap,
            fields: [None; MAX_FIELD + 1],
            names: std::array::from_fn(|_| Cow::Borrowed("")),
        }
    }

    #[inline]
    pub fn field(&self, n: usize) -> Option<&FieldDef> {
        self.fields.get(n).and_then(|f| f.as_ref())
    }

    pub fn name_of(&self, n: usize) -> &str {
        self.names.get(n).map(|c| c.as_ref()).unwrap_or("")
    }

    /// Bytes taken by the MTI.
    pub fn mti_width(&self) -> usize {
        match self.mti {
            MtiEncoding::Ascii | MtiEncoding::Ebcdic => 4,
            MtiEncoding::Bcd => 2,
        }
    }

    /// Leaks the spec so messages can reference it for the life of the
    /// process; call once per spec at start-up, never per message.
    pub fn leak(self) -> &'static Spec {
        Box::leak(Box::new(self))
    }
}

impl PartialEq for Spec {
    fn eq(&self, other: &Self) -> bool {
        self.mti == other.mti && self.bitmap == other.bitmap && self.fields == other.fields
    }
}
