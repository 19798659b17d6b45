//! Packing: a [`MessageBuilder`] collects borrowed field values (kept in
//! field order on the stack) and writes the message into a caller's reusable
//! `BytesMut`. Values copied from a parsed message of the same layout are
//! copied as wire bytes, without decoding.

use arrayvec::ArrayVec;
use bytes::{BufMut, BytesMut};

use super::bitmap::{self, Bitmap};
use super::encoding::{self, DataProblem};
use super::error::{PackError, Part};
use super::message::{MAX_MESSAGE_LEN, Message};
use super::mti::Mti;
use super::spec::{FieldDef, FieldKind, Length, MAX_FIELD, MtiEncoding, Spec};

#[derive(Clone, Copy)]
enum Value<'v> {
    /// Text for text kinds, raw bytes for binary.
    Logical(&'v [u8]),
    Number(u64),
    /// Wire data of a field of a parsed message, with its spec.
    Wire {
        spec: &'static Spec,
        wire: &'v [u8],
        units: u16,
    },
}

#[derive(Clone, Copy)]
struct Entry<'v> {
    field: u8,
    value: Value<'v>,
}

/// Builds one message. Setting a field twice keeps the last value.
pub struct MessageBuilder<'v> {
    spec: &'static Spec,
    mti: Mti,
    entries: ArrayVec<Entry<'v>, MAX_FIELD>,
    bad_field: Option<u8>,
}

impl<'v> MessageBuilder<'v> {
    pub fn new(spec: &'static Spec, mti: Mti) -> MessageBuilder<'v> {
        MessageBuilder {
            spec,
            mti,
            entries: ArrayVec::new(),
            bad_field: None,
        }
    }

    /// A response to `request` (response MTI, same spec) echoing `echo`
    /// fields where the request has them. `None` if the request's MTI is
    /// already a response.
    pub fn response_to(request: &'v Message, echo: &[usize]) -> Option<MessageBuilder<'v>> {
        let mut b = MessageBuilder::new(request.spec(), request.mti().response()?);
        b.copy_fields(request, echo);
        Some(b)
    }

    pub fn spec(&self) -> &'static Spec {
        self.spec
    }

    pub fn mti(&self) -> Mti {
        self.mti
    }

    pub fn set_mti(&mut self, mti: Mti) -> &mut Self {
        self.mti = mti;
        self
    }

    fn put(&mut self, n: usize, value: Value<'v>) -> &mut Self {
        if !(2..=MAX_FIELD).contains(&n) {
            self.bad_field.get_or_insert(n.min(255) as u8);
            return self;
        }
        let field = n as u8;
        let entry = Entry { field, value };
        match self.entries.last() {
            None => self.entries.push(entry),
            Some(last) if last.field < field => self.entries.push(entry),
            _ => match self.entries.binary_search_by_key(&field, |e| e.field) {
                Ok(i) => self.entries[i] = entry,
                Err(i) => self.entries.insert(i, entry),
            },
        }
        self
    }

    /// Sets a field from its logical value: text (digits for `n` fields)
    /// or raw bytes for `b` fields.
    pub fn set(&mut self, n: usize, value: &'v [u8]) -> &mut Self {
        self.put(n, Value::Logical(value))
    }

    /// Sets a numeric field; fixed fields are zero padded.
    pub fn set_number(&mut self, n: usize, value: u64) -> &mut Self {
        self.put(n, Value::Number(value))
    }

    /// Copies field `n` from a parsed message, if present there.
    pub fn copy(&mut self, from: &'v Message, n: usize) -> &mut Self {
        if let Some(v) = from.value(n) {
            self.put(
                n,
                Value::Wire {
                    spec: from.spec(),
                    wire: v.wire,
                    units: v.units as u16,
                },
            );
        }
        self
    }

    /// Copies each of `fields` that `from` has.
    pub fn copy_fields(&mut self, from: &'v Message, fields: &[usize]) -> &mut Self {
        for &n in fields {
            self.copy(from, n);
        }
        self
    }

    /// Copies every field of `from`.
    pub fn copy_all(&mut self, from: &'v Message) -> &mut Self {
        for n in from.bitmap().fields() {
            self.copy(from, n);
        }
        self
    }

    pub fn remove(&mut self, n: usize) -> &mut Self {
        if let Some(i) = self.entries.iter().position(|e| e.field as usize == n) {
            self.entries.remove(i);
        }
        self
    }

    pub fn has(&self, n: usize) -> bool {
        self.entries.iter().any(|e| e.field as usize == n)
    }

    /// Appends the packed message to `out`. On error `out` is left as it
    /// was.
    pub fn pack(&self, out: &mut BytesMut) -> Result<(), PackError> {
        let start = out.len();
        let result = self.pack_inner(out);
        match result {
            Ok(()) if out.len() - start > MAX_MESSAGE_LEN => {
                let len = out.len() - start;
                out.truncate(start);
                Err(PackError::TooLarge {
                    len,
                    max: MAX_MESSAGE_LEN,
                })
            }
            Ok(()) => Ok(()),
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Packs into a new buffer (tests and tools; the switch reuses buffers).
    pub fn to_bytes(&self) -> Result<BytesMut, PackError> {
        let mut out = BytesMut::with_capacity(256);
        self.pack(&mut out)?;
        Ok(out)
    }

    fn pack_inner(&self, out: &mut BytesMut) -> Result<(), PackError> {
        if let Some(field) = self.bad_field {
            return Err(PackError::NotADataElement { field });
        }
        let spec = self.spec;
        let mut bits = Bitmap::EMPTY;
        for e in &self.entries {
            bits.set(e.field as usize);
        }
        let secondary = bits.needs_secondary();
        if secondary {
            bits.set(1);
        }
        out.reserve(64 + self.entries.len() * 16);

        let digits = self.mti.to_ascii();
        match spec.mti {
            MtiEncoding::Ascii => out.put_slice(&digits),
            MtiEncoding::Ebcdic => {
                for c in digits {
                    out.put_u8(super::ebcdic::TO_EBCDIC[c as usize]);
                }
            }
            MtiEncoding::Bcd => {
                out.put_u8((digits[0] - b'0') << 4 | (digits[1] - b'0'));
                out.put_u8((digits[2] - b'0') << 4 | (digits[3] - b'0'));
            }
        }
        let width = spec.bitmap.width();
        let mut bm = [0u8; 16];
        bitmap::write(spec.bitmap, bits.primary(), &mut bm[..width]);
        out.put_slice(&bm[..width]);
        if secondary {
            bitmap::write(spec.bitmap, bits.secondary(), &mut bm[..width]);
            out.put_slice(&bm[..width]);
        }

        for e in &self.entries {
            let n = e.field as usize;
            let def = spec.field(n).ok_or(PackError::UndefinedField {
                field: e.field,
                spec: &spec.name,
            })?;
            let part = Part::field(n, spec.name_of(n));
            match e.value {
                Value::Logical(v) => write_logical(def, part, v, out)?,
                Value::Number(x) => {
                    if def.kind != FieldKind::Numeric {
                        return Err(PackError::NonNumeric { part });
                    }
                    let digits = itoa_buf(x);
                    write_logical(def, part, digits.as_slice(), out)?;
                }
                Value::Wire {
                    spec: from,
                    wire,
                    units,
                } => {
                    let units = units as usize;
                    if from.field(n) == Some(def) {
                        if let Length::Variable { prefix_digits, .. } = def.length {
                            encoding::write_prefix(def.prefix, prefix_digits, units, out);
                        }
                        out.put_slice(wire);
                    } else {
                        let src = from.field(n).ok_or(PackError::UndefinedField {
                            field: e.field,
                            spec: &from.name,
                        })?;
                        let mut logical = Vec::with_capacity(src.logical_len(units));
                        encoding::decode_logical(src, wire, units, &mut logical);
                        write_logical(def, part, &logical, out)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn itoa_buf(mut x: u64) -> ArrayVec<u8, 20> {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (x % 10) as u8;
        x /= 10;
        if x == 0 {
            break;
        }
    }
    let mut out = ArrayVec::new();
    out.try_extend_from_slice(&tmp[i..]).ok();
    out
}

fn write_logical(
    def: &FieldDef,
    part: Part,
    value: &[u8],
    out: &mut BytesMut,
) -> Result<(), PackError> {
    let units = encoding::check_logical(def, value).map_err(|p| match p {
        DataProblem::NonNumeric(_) => PackError::NonNumeric { part },
        DataProblem::Invalid(..) => PackError::InvalidCharacter { part },
    })?;
    match def.length {
        Length::Fixed(len) => {
            let len = len as usize;
            if units > len {
                return Err(PackError::TooLong {
                    part,
                    length: units,
                    max: len,
                });
            }
            encoding::encode_logical(def, value, len, out);
        }
        Length::Variable { prefix_digits, max } => {
            if units > max as usize {
                return Err(PackError::TooLong {
                    part,
                    length: units,
                    max: max as usize,
                });
            }
            encoding::write_prefix(def.prefix, prefix_digits, units, out);
            encoding::encode_logical(def, value, units, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::specs::{iso87ascii, iso87binary};

    #[test]
    fn packs_fields_in_order_whatever_the_order_set() {
        let mut b = MessageBuilder::new(iso87ascii(), Mti::FINANCIAL);
        b.set(41, b"TERM0001")
            .set_number(11, 123)
            .set(2, b"4761739001010010")
            .set_number(4, 1234)
            .set(3, b"000000");
        let out = b.to_bytes().expect("packs");
        let mut expected = b"02007020000000800000".to_vec();
        expected.extend_from_slice(b"164761739001010010000000000000001234000123TERM0001");
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn secondary_bitmap_is_added_when_needed() {
        let mut b = MessageBuilder::new(iso87ascii(), Mti::NETWORK);
        b.set_number(11, 1).set(70, b"301");
        let out = b.to_bytes().expect("packs");
        assert_eq!(&out[..], b"080080200000000000000400000000000000000001301");
        let m = Message::parse(out.freeze(), iso87ascii()).expect("parses");
        assert_eq!(m.network_code(), Some(301));
    }

    #[test]
    fn pack_errors_name_the_field_and_leave_the_buffer_alone() {
        let mut out = BytesMut::from(&b"hdr"[..]);
        let mut b = MessageBuilder::new(iso87ascii(), Mti::FINANCIAL);
        b.set(4, b"12x");
        assert_eq!(
            b.pack(&mut out),
            Err(PackError::NonNumeric {
                part: Part::Field(4, "Amount, transaction")
            })
        );
        assert_eq!(&out[..], b"hdr");

        let mut b = MessageBuilder::new(iso87ascii(), Mti::FINANCIAL);
        b.set(2, &[b'1'; 20]);
        assert!(matches!(
            b.pack(&mut out),
            Err(PackError::TooLong {
                length: 20,
                max: 19,
                ..
            })
        ));
        let mut b = MessageBuilder::new(iso87ascii(), Mti::FINANCIAL);
        b.set(41, b"TERMINAL9");
        assert!(matches!(
            b.pack(&mut out),
            Err(PackError::TooLong {
                length: 9,
                max: 8,
                ..
            })
        ));
        let mut b = MessageBuilder::new(iso87ascii(), Mti::FINANCIAL);
        b.set(1, b"x");
        assert_eq!(
            b.pack(&mut out),
            Err(PackError::NotADataElement { field: 1 })
        );
        assert_eq!(&out[..], b"hdr");
    }

    #[test]
    fn response_echoes_fields_and_sets_mti() {
        let mut b = MessageBuilder::new(iso87ascii(), Mti::AUTHORIZATION);
        b.set(2, b"4761739001010010")
            .set_number(4, 500)
            .set_number(11, 42)
            .set(41, b"TERM0001")
            .set(52, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let req = Message::parse(b.to_bytes().unwrap().freeze(), iso87ascii()).unwrap();
        let mut resp = MessageBuilder::response_to(&req, &[2, 4, 11, 41]).expect("request");
        resp.set(39, b"00").set(38, b"A1B2C3");
        let out = resp.to_bytes().unwrap();
        let r = Message::parse(out.freeze(), iso87ascii()).unwrap();
        assert_eq!(r.mti(), Mti::AUTHORIZATION_RESPONSE);
        assert_eq!(r.response_code(), Some(*b"00"));
        assert_eq!(r.stan(), Some(42));
        assert_eq!(r.pan(), req.pan());
        assert!(!r.has(52), "PIN block is not echoed");
        assert_eq!(
            r.fields().map(|(n, _)| n).collect::<Vec<_>>(),
            [2, 4, 11, 38, 39, 41]
        );
    }

    #[test]
    fn copying_across_specs_transcodes() {
        let mut b = MessageBuilder::new(iso87ascii(), Mti::FINANCIAL);
        b.set(2, b"4761739001010010017")
            .set_number(4, 1234)
            .set(35, b"4761739001010010017=2512")
            .set(41, b"TERM0001")
            .set(52, &[0xDE, 0xAD, 0xBE, 0xEF, 0, 1, 2, 3]);
        let ascii = Message::parse(b.to_bytes().unwrap().freeze(), iso87ascii()).unwrap();

        let mut t = MessageBuilder::new(iso87binary(), ascii.mti());
        t.copy_all(&ascii);
        let bin = Message::parse(t.to_bytes().unwrap().freeze(), iso87binary()).unwrap();
        assert_eq!(bin.pan(), ascii.pan());
        assert_eq!(bin.amount_minor(), Some(1234));
        assert_eq!(
            bin.field(52),
            Some(&[0xDE, 0xAD, 0xBE, 0xEF, 0, 1, 2, 3][..])
        );
        let mut track = Vec::new();
        bin.value(35).unwrap().write_logical(&mut track);
        assert_eq!(track, b"4761739001010010017D2512");

        let mut back = MessageBuilder::new(iso87ascii(), bin.mti());
        back.copy_all(&bin);
        let again = Message::parse(back.to_bytes().unwrap().freeze(), iso87ascii()).unwrap();
        assert_eq!(again.field(52), Some(&b"DEADBEEF00010203"[..]));
        assert_eq!(again.pan(), ascii.pan());
    }

    #[test]
    fn numbers_are_refused_for_text_fields() {
        let mut b = MessageBuilder::new(iso87ascii(), Mti::FINANCIAL);
        b.set_number(41, 7);
        assert!(matches!(
            b.pack(&mut BytesMut::new()),
            Err(PackError::NonNumeric { .. })
        ));
    }
}
