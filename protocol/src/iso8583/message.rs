//! Parsing: a [`Message`] is a view over one frame. It records where each
//! field lies and borrows the bytes from the frame (`bytes::Bytes`), so a
//! parse allocates nothing and copies nothing.

use std::fmt;

use bytes::Bytes;

use super::bitmap::{self, Bitmap};
use super::encoding::{self, DataProblem};
use super::error::{ParseError, Part};
use super::mti::Mti;
use super::spec::{FieldDef, Length, MAX_FIELD, MtiEncoding, Spec};
use super::values::{Pan, SmallText};

/// Offsets are kept as `u16`; no 1987 framing carries more.
pub const MAX_MESSAGE_LEN: usize = u16::MAX as usize;

/// A parsed message: the frame, its spec, and where each field lies.
#[derive(Clone)]
pub struct Message {
    frame: Bytes,
    spec: &'static Spec,
    mti: Mti,
    bitmap: Bitmap,
    /// Where each present field's data starts. The length is the spec's
    /// for fixed fields and is read again from the prefix for variable
    /// ones: half the state to initialise and move than storing it.
    starts: [u16; MAX_FIELD + 1],
}

/// What could be read of a message that failed to parse: the MTI, the
/// fields before the bad one, and those after it whose length could still
/// be read; enough to answer with a format error.
#[derive(Clone)]
pub struct Salvage {
    pub error: ParseError,
    /// `None` when not even the MTI could be read. Boxed: this is the
    /// rare path, and it keeps `Result<Message, Salvage>` small.
    pub partial: Option<Box<Message>>,
}

impl fmt::Debug for Salvage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Salvage")
            .field("error", &self.error)
            .field("partial", &self.partial)
            .finish()
    }
}

impl Message {
    /// Parses one message (the frame body, without length header).
    #[inline]
    pub fn parse(frame: Bytes, spec: &'static Spec) -> Result<Message, ParseError> {
        let mut msg = Message::empty(frame, spec);
        match msg.parse_in_place() {
            Ok(()) => Ok(msg),
            Err(e) => Err(e),
        }
    }

    /// Like [`Message::parse`], but on failure keeps what could be read.
    pub fn parse_or_salvage(frame: Bytes, spec: &'static Spec) -> Result<Message, Salvage> {
        let mut msg = Message::empty(frame, spec);
        match msg.parse_in_place() {
            Ok(()) => Ok(msg),
            Err(error) => {
                let partial = (error != ParseError::BadMti
                    && !matches!(error, ParseError::TooLarge { .. })
                    && !matches!(
                        error,
                        ParseError::Truncated {
                            part: Part::Mti,
                            ..
                        }
                    ))
                .then(|| {
                    msg.salvage_rest();
                    Box::new(msg)
                });
                Err(Salvage { error, partial })
            }
        }
    }

    /// After a failed parse: reads on past fields whose value is invalid
    /// but whose length is known, leaving them out, so that a STAN after a
    /// bad amount can still be answered. Stops at the first field whose
    /// extent can not be known.
    fn salvage_rest(&mut self) {
        let data: &[u8] = &self.frame;
        let width = self.spec.bitmap.width();
        let mut pos = self.spec.mti_width();
        let read = |at: usize| {
            data.get(at..at + width)
                .and_then(|b| bitmap::read(self.spec.bitmap, b))
        };
        let Some(primary) = read(pos) else { return };
        pos += width;
        let secondary = if primary >> 63 == 1 {
            let Some(s) = read(pos) else { return };
            pos += width;
            s
        } else {
            0
        };
        let declared = Bitmap::from_parts(primary, secondary);
        let mut kept = Bitmap::EMPTY;
        for n in declared.fields() {
            let Some(def) = self.spec.field(n) else { break };
            let Ok((start, end, units)) = field_extent(def, data, pos) else {
                break;
            };
            if encoding::validate(def, &data[start..end], units).is_ok() {
                self.starts[n] = start as u16;
                kept.set(n);
            }
            pos = end;
        }
        self.bitmap = kept;
    }

    fn empty(frame: Bytes, spec: &'static Spec) -> Message {
        Message {
            frame,
            spec,
            mti: Mti::NETWORK,
            bitmap: Bitmap::EMPTY,
            starts: [0; MAX_FIELD + 1],
        }
    }

    /// Fills `self`; on error `self.bitmap` holds the fields parsed so far.
    #[inline]
    fn parse_in_place(&mut self) -> Result<(), ParseError> {
        let Message {
            frame,
            spec,
            mti,
            bitmap: parsed,
            starts,
        } = self;
        let spec: &'static Spec = spec;
        let data: &[u8] = frame;
        if data.len() > MAX_MESSAGE_LEN {
            return Err(ParseError::TooLarge {
                len: data.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let mti_width = spec.mti_width();
        let mti_bytes = take(data, 0, mti_width, Part::Mti)?;
        *mti = read_mti(spec.mti, mti_bytes).ok_or(ParseError::BadMti)?;
        let mut pos = mti_width;

        let width = spec.bitmap.width();
        let primary = bitmap::read(spec.bitmap, take(data, pos, width, Part::PrimaryBitmap)?)
            .ok_or(ParseError::BadBitmap {
                part: Part::PrimaryBitmap,
                offset: pos,
            })?;
        pos += width;
        let secondary = if primary >> 63 == 1 {
            let s = bitmap::read(spec.bitmap, take(data, pos, width, Part::SecondaryBitmap)?)
                .ok_or(ParseError::BadBitmap {
                    part: Part::SecondaryBitmap,
                    offset: pos,
                })?;
            pos += width;
            s
        } else {
            0
        };
        let declared = Bitmap::from_parts(primary, secondary);

        for n in declared.fields() {
            // Errors are rare: the field's name is looked up only for one.
            let result = match spec.field(n) {
                Some(def) => parse_field(def, data, pos),
                None => Err(FieldError::Undefined),
            };
            match result {
                Ok((start, end)) => {
                    starts[n] = start as u16;
                    pos = end;
                }
                Err(e) => {
                    *parsed = declared.below(n);
                    return Err(e.into_parse_error(spec, n));
                }
            }
        }
        *parsed = declared;
        if pos != data.len() {
            return Err(ParseError::TrailingBytes {
                offset: pos,
                count: data.len() - pos,
            });
        }
        Ok(())
    }

    pub fn spec(&self) -> &'static Spec {
        self.spec
    }

    pub fn mti(&self) -> Mti {
        self.mti
    }

    pub fn bitmap(&self) -> Bitmap {
        self.bitmap
    }

    /// The whole message as received (without the framing header).
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    #[inline]
    pub fn has(&self, n: usize) -> bool {
        n >= 2 && self.bitmap.is_set(n)
    }

    /// Present data elements in ascending order.
    pub fn fields(&self) -> impl Iterator<Item = (usize, FieldValue<'_>)> + '_ {
        self.bitmap
            .fields()
            .filter_map(move |n| self.value(n).map(|v| (n, v)))
    }

    /// The field's data as it is on the wire, length prefix excluded. For
    /// ASCII-encoded fields (all text fields of the built-in specs) that is
    /// the value itself; [`Message::value`] decodes any encoding.
    #[inline]
    pub fn field(&self, n: usize) -> Option<&[u8]> {
        self.value(n).map(|v| v.wire)
    }

    /// The field with its definition, for decoding in any encoding.
    #[inline]
    pub fn value(&self, n: usize) -> Option<FieldValue<'_>> {
        if !self.has(n) {
            return None;
        }
        let def = self.spec.field(n)?;
        let start = self.starts[n] as usize;
        let units = match def.length {
            Length::Fixed(l) => l as usize,
            Length::Variable { prefix_digits, .. } => {
                let width = def.prefix.width(prefix_digits);
                let prefix = self.frame.get(start.checked_sub(width)?..start)?;
                encoding::read_prefix(def.prefix, prefix)?
            }
        };
        let wire = self.frame.get(start..start + def.wire_len(units))?;
        Some(FieldValue { def, wire, units })
    }

    /// The field as an unsigned number, for numeric fields.
    #[inline]
    pub fn number(&self, n: usize) -> Option<u64> {
        self.value(n)?.as_u64()
    }

    /// The field decoded to text, if it fits a [`SmallText`].
    #[inline]
    pub fn text(&self, n: usize) -> Option<SmallText> {
        self.value(n)?.to_small_text()
    }

    /// DE2, the card number.
    pub fn pan(&self) -> Option<Pan> {
        let v = self.value(2)?;
        if let Some(digits) = v.borrowed() {
            return Pan::new(digits);
        }
        Pan::new(&v.to_small_text()?)
    }

    /// DE3.
    pub fn processing_code(&self) -> Option<u32> {
        self.number(3).map(|v| v as u32)
    }

    /// DE4, in the currency's minor unit.
    pub fn amount_minor(&self) -> Option<u64> {
        self.number(4)
    }

    /// DE7, MMDDhhmmss.
    pub fn transmission_time(&self) -> Option<u64> {
        self.number(7)
    }

    /// DE11.
    pub fn stan(&self) -> Option<u32> {
        self.number(11).map(|v| v as u32)
    }

    /// DE18, merchant category code.
    pub fn mcc(&self) -> Option<u16> {
        self.number(18).map(|v| v as u16)
    }

    /// DE19, acquiring institution country (ISO 3166 numeric).
    pub fn acquiring_country(&self) -> Option<u16> {
        self.number(19).map(|v| v as u16)
    }

    /// DE37.
    pub fn rrn(&self) -> Option<SmallText> {
        self.text(37)
    }

    /// DE38.
    pub fn approval_code(&self) -> Option<SmallText> {
        self.text(38)
    }

    /// DE39, two characters.
    pub fn response_code(&self) -> Option<[u8; 2]> {
        let t = self.text(39)?;
        t.as_bytes().try_into().ok()
    }

    /// DE41.
    pub fn terminal_id(&self) -> Option<SmallText> {
        self.text(41)
    }

    /// DE42.
    pub fn merchant_id(&self) -> Option<SmallText> {
        self.text(42)
    }

    /// DE49 as a number (ISO 4217 numeric), when it is numeric.
    pub fn currency(&self) -> Option<u16> {
        let t = self.text(49)?;
        let t = t.as_bytes();
        if t.len() == 3 && encoding::all_digits(t) {
            Some(t.iter().fold(0u16, |a, &c| a * 10 + (c - b'0') as u16))
        } else {
            None
        }
    }

    /// DE70, network management information code (001 sign-on, 002
    /// sign-off, 301 echo).
    pub fn network_code(&self) -> Option<u16> {
        self.number(70).map(|v| v as u16)
    }

    /// A masked, multi-line dump for operators (see [`super::display`]).
    pub fn dump(&self) -> super::display::Dump<'_> {
        super::display::Dump(self)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::display::debug(self, f)
    }
}

impl PartialEq for Message {
    /// Same MTI and same logical field values (wire bytes may differ, e.g.
    /// in hex case or BCD pad nibbles).
    fn eq(&self, other: &Self) -> bool {
        if self.mti != other.mti || self.bitmap.fields().ne(other.bitmap.fields()) {
            return false;
        }
        self.fields().zip(other.fields()).all(|((_, a), (_, b))| {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            a.write_logical(&mut x);
            b.write_logical(&mut y);
            x == y
        })
    }
}

/// One field of a message: its definition and wire bytes.
#[derive(Clone, Copy)]
pub struct FieldValue<'a> {
    pub def: &'a FieldDef,
    pub wire: &'a [u8],
    /// Length in the field's units (characters, digits or bytes).
    pub units: usize,
}

impl<'a> FieldValue<'a> {
    /// The logical value without copying, when the wire form is the
    /// logical form (ASCII text, raw binary).
    #[inline]
    pub fn borrowed(&self) -> Option<&'a [u8]> {
        match self.def.data {
            super::spec::Encoding::Ascii | super::spec::Encoding::Binary => Some(self.wire),
            _ => None,
        }
    }

    /// Appends the logical value: text for text kinds, bytes for binary.
    pub fn write_logical(&self, out: &mut impl Extend<u8>) {
        encoding::decode_logical(self.def, self.wire, self.units, out)
    }

    pub fn logical_len(&self) -> usize {
        self.def.logical_len(self.units)
    }

    pub fn as_u64(&self) -> Option<u64> {
        encoding::decode_u64(self.def, self.wire, self.units)
    }

    pub fn to_small_text(&self) -> Option<SmallText> {
        let mut t = SmallText::EMPTY;
        if let Some(b) = self.borrowed() {
            return SmallText::new(b);
        }
        let mut ok = true;
        let mut sink = SmallTextSink(&mut t, &mut ok);
        self.write_logical(&mut sink);
        ok.then_some(t)
    }
}

struct SmallTextSink<'a>(&'a mut SmallText, &'a mut bool);

impl Extend<u8> for SmallTextSink<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        if !self.0.try_extend(iter) {
            *self.1 = false;
        }
    }
}

/// A field-level parse problem, turned into a [`ParseError`] (with the
/// field's name) only when it happens.
enum FieldError {
    Undefined,
    Truncated {
        offset: usize,
        needed: usize,
        available: usize,
    },
    BadLengthPrefix {
        offset: usize,
    },
    LengthOverMax {
        offset: usize,
        length: usize,
        max: usize,
    },
    Data {
        offset: usize,
        problem: DataProblem,
    },
}

impl FieldError {
    #[cold]
    fn into_parse_error(self, spec: &'static Spec, n: usize) -> ParseError {
        let part = Part::field(n, spec.name_of(n));
        match self {
            FieldError::Undefined => ParseError::UndefinedField {
                field: n as u8,
                spec: &spec.name,
            },
            FieldError::Truncated {
                offset,
                needed,
                available,
            } => ParseError::Truncated {
                part,
                offset,
                needed,
                available,
            },
            FieldError::BadLengthPrefix { offset } => ParseError::BadLengthPrefix { part, offset },
            FieldError::LengthOverMax {
                offset,
                length,
                max,
            } => ParseError::LengthOverMax {
                part,
                offset,
                length,
                max,
            },
            FieldError::Data {
                offset,
                problem: DataProblem::NonNumeric(i),
            } => ParseError::NonNumeric {
                part,
                offset: offset + i,
            },
            FieldError::Data {
                offset,
                problem: DataProblem::Invalid(i, expected),
            } => ParseError::InvalidCharacter {
                part,
                offset: offset + i,
                expected,
            },
        }
    }
}

/// Reads one field at `pos`: returns where its data starts and where the
/// next field starts.
#[inline]
fn parse_field(def: &FieldDef, data: &[u8], pos: usize) -> Result<(usize, usize), FieldError> {
    let (start, end, units) = field_extent(def, data, pos)?;
    encoding::validate(def, &data[start..end], units).map_err(|problem| FieldError::Data {
        offset: start,
        problem,
    })?;
    Ok((start, end))
}

/// Where a field's value lies (start, end, length in units), from its
/// definition and length prefix alone, without looking at the value.
#[inline]
fn field_extent(
    def: &FieldDef,
    data: &[u8],
    pos: usize,
) -> Result<(usize, usize, usize), FieldError> {
    let truncated = |offset: usize, needed: usize| FieldError::Truncated {
        offset,
        needed,
        available: data.len().saturating_sub(offset),
    };
    let (start, units) = match def.length {
        Length::Fixed(n) => (pos, n as usize),
        Length::Variable { prefix_digits, max } => {
            let width = def.prefix.width(prefix_digits);
            let prefix = data.get(pos..pos + width).ok_or(truncated(pos, width))?;
            let units = encoding::read_prefix(def.prefix, prefix)
                .ok_or(FieldError::BadLengthPrefix { offset: pos })?;
            if units > max as usize {
                return Err(FieldError::LengthOverMax {
                    offset: pos,
                    length: units,
                    max: max as usize,
                });
            }
            (pos + width, units)
        }
    };
    let wire = def.wire_len(units);
    if data.len() < start + wire {
        return Err(truncated(start, wire));
    }
    Ok((start, start + wire, units))
}

#[inline]
fn take(data: &[u8], offset: usize, len: usize, part: Part) -> Result<&[u8], ParseError> {
    data.get(offset..offset + len).ok_or(ParseError::Truncated {
        part,
        offset,
        needed: len,
        available: data.len().saturating_sub(offset),
    })
}

#[inline]
fn read_mti(enc: MtiEncoding, b: &[u8]) -> Option<Mti> {
    match enc {
        MtiEncoding::Ascii => Mti::from_ascii(b),
        MtiEncoding::Ebcdic => {
            let mut a = [0u8; 4];
            for (d, &c) in a.iter_mut().zip(b) {
                *d = super::ebcdic::FROM_EBCDIC[c as usize];
            }
            Mti::from_ascii(&a)
        }
        MtiEncoding::Bcd => {
            let v = encoding::read_prefix(super::spec::PrefixEncoding::Bcd, b)?;
            Mti::new(v as u16)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::specs::{iso87ascii, iso87binary};

    /// 0200 with DE2, 3, 4, 11, 41 in iso87ascii.
    fn ascii_0200() -> Vec<u8> {
        let mut m = b"0200".to_vec();
        m.extend_from_slice(b"7020000000800000");
        m.extend_from_slice(b"164761739001010010");
        m.extend_from_slice(b"000000");
        m.extend_from_slice(b"000000001234");
        m.extend_from_slice(b"000123");
        m.extend_from_slice(b"TERM0001");
        m
    }

    fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        Message::parse(Bytes::copy_from_slice(bytes), iso87ascii())
    }

    #[test]
    fn parses_a_typical_ascii_request() {
        let m = parse(&ascii_0200()).expect("parses");
        assert_eq!(m.mti(), Mti::FINANCIAL);
        assert_eq!(
            m.pan().map(|p| p.digits().to_vec()),
            Some(b"4761739001010010".to_vec())
        );
        assert_eq!(m.amount_minor(), Some(1234));
        assert_eq!(m.stan(), Some(123));
        assert_eq!(m.processing_code(), Some(0));
        assert_eq!(m.terminal_id().unwrap().as_bytes(), b"TERM0001");
        assert_eq!(m.field(3), Some(&b"000000"[..]));
        assert_eq!(m.field(5), None);
        assert_eq!(
            m.fields().map(|(n, _)| n).collect::<Vec<_>>(),
            [2, 3, 4, 11, 41]
        );
    }

    #[test]
    fn each_error_class_names_field_and_offset() {
        let good = ascii_0200();

        let mut bad = good.clone();
        bad.truncate(bad.len() - 3);
        assert_eq!(
            parse(&bad).unwrap_err(),
            ParseError::Truncated {
                part: Part::Field(41, "Card acceptor terminal identification"),
                offset: 62,
                needed: 8,
                available: 5
            }
        );

        let mut bad = good.clone();
        bad[20..22].copy_from_slice(b"20");
        assert!(matches!(
            parse(&bad).unwrap_err(),
            ParseError::LengthOverMax {
                part: Part::Field(2, _),
                offset: 20,
                length: 20,
                max: 19
            }
        ));

        let mut bad = good.clone();
        bad[20..22].copy_from_slice(b"1x");
        assert!(matches!(
            parse(&bad).unwrap_err(),
            ParseError::BadLengthPrefix {
                part: Part::Field(2, _),
                offset: 20
            }
        ));

        let mut bad = good.clone();
        bad[45] = b'X'; // inside DE4
        assert!(matches!(
            parse(&bad).unwrap_err(),
            ParseError::NonNumeric {
                part: Part::Field(4, _),
                offset: 45
            }
        ));

        let mut bad = good.clone();
        bad[4..20].copy_from_slice(b"7020000000800001"); // declares DE64
        assert!(matches!(
            parse(&bad).unwrap_err(),
            ParseError::Truncated {
                part: Part::Field(64, _),
                offset: 70,
                needed: 16,
                available: 0
            }
        ));

        let mut bad = good.clone();
        bad[1] = b'A';
        assert_eq!(parse(&bad).unwrap_err(), ParseError::BadMti);

        let mut bad = good.clone();
        bad[5] = b'Z';
        assert_eq!(
            parse(&bad).unwrap_err(),
            ParseError::BadBitmap {
                part: Part::PrimaryBitmap,
                offset: 4
            }
        );

        let mut bad = good.clone();
        bad.extend_from_slice(b"XY");
        assert_eq!(
            parse(&bad).unwrap_err(),
            ParseError::TrailingBytes {
                offset: 70,
                count: 2
            }
        );

        assert!(matches!(
            parse(b"02").unwrap_err(),
            ParseError::Truncated {
                part: Part::Mti,
                ..
            }
        ));
    }

    #[test]
    fn error_messages_never_contain_field_data() {
        let mut bad = ascii_0200();
        bad[45] = b'X';
        let text = parse(&bad).unwrap_err().to_string();
        assert_eq!(
            text,
            "field 4 (Amount, transaction): non-numeric data at offset 45"
        );
        assert!(!text.contains("4761739001010010"));
    }

    #[test]
    fn salvage_keeps_the_fields_before_the_error() {
        let mut bad = ascii_0200();
        bad.truncate(bad.len() - 3);
        let s = Message::parse_or_salvage(Bytes::from(bad), iso87ascii()).unwrap_err();
        let partial = s.partial.expect("MTI was readable");
        assert_eq!(partial.mti(), Mti::FINANCIAL);
        assert_eq!(partial.stan(), Some(123));
        assert_eq!(partial.terminal_id(), None);

        let s = Message::parse_or_salvage(Bytes::from_static(b"xx"), iso87ascii()).unwrap_err();
        assert!(s.partial.is_none());
    }

    #[test]
    fn a_byte_outside_the_field_charset_is_a_parse_error_naming_the_field() {
        let good = ascii_0200();
        let de41 = good.len() - 8;
        for (at, byte) in [(de41, 0xC1), (de41 + 7, 0x00), (de41 + 3, 0x7F)] {
            let mut bad = good.clone();
            bad[at] = byte;
            assert_eq!(
                parse(&bad).unwrap_err(),
                ParseError::InvalidCharacter {
                    part: Part::Field(41, "Card acceptor terminal identification"),
                    offset: at,
                    expected: "printable",
                },
                "{byte:#04x}"
            );
            // The terminal still gets its answer (30) keyed by MTI and STAN.
            let s = Message::parse_or_salvage(Bytes::from(bad), iso87ascii()).unwrap_err();
            let partial = s.partial.expect("MTI was readable");
            assert_eq!(partial.stan(), Some(123));
            assert_eq!(partial.terminal_id(), None, "the bad field is not kept");
        }
    }

    #[test]
    fn secondary_bitmap_and_undefined_fields() {
        let mut m = b"0800".to_vec();
        m.extend_from_slice(b"8220000000000000");
        m.extend_from_slice(b"0400000000000000");
        m.extend_from_slice(b"1125123456");
        m.extend_from_slice(b"000001");
        m.extend_from_slice(b"301");
        let msg = parse(&m).expect("parses");
        assert_eq!(msg.network_code(), Some(301));
        assert!(msg.bitmap().is_set(1));
        assert!(!msg.has(1), "field 1 is not a data element");
        assert_eq!(
            msg.fields().map(|(n, _)| n).collect::<Vec<_>>(),
            [7, 11, 70]
        );

        let mut spec = iso87ascii().clone();
        spec.fields[70] = None;
        let spec = spec.leak();
        assert!(matches!(
            Message::parse(Bytes::from(m), spec).unwrap_err(),
            ParseError::UndefinedField { field: 70, .. }
        ));
    }

    #[test]
    fn parses_bcd_fields_of_the_binary_spec() {
        // 0200, DE2 odd length (right padded), DE4 BCD, DE11, DE41 ASCII.
        let mut m = vec![0x02, 0x00];
        m.extend_from_slice(&[0x50, 0x20, 0, 0, 0, 0x80, 0, 0]);
        m.extend_from_slice(&[
            0x19, 0x47, 0x61, 0x73, 0x90, 0x01, 0x01, 0x00, 0x10, 0x01, 0x70,
        ]);
        m.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34]);
        m.extend_from_slice(&[0x00, 0x01, 0x23]);
        m.extend_from_slice(b"TERM0001");
        let msg = Message::parse(Bytes::from(m), iso87binary()).expect("parses");
        assert_eq!(msg.mti(), Mti::FINANCIAL);
        assert_eq!(
            msg.pan().map(|p| p.digits().to_vec()),
            Some(b"4761739001010010017".to_vec())
        );
        assert_eq!(msg.amount_minor(), Some(1234));
        assert_eq!(msg.stan(), Some(123));
        assert_eq!(msg.terminal_id().unwrap().as_bytes(), b"TERM0001");
    }
}
