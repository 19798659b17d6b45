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
        self.pack_except(out, Bitmap::EMPTY, None)
    }

    /// Packs the fields not in `except`, then `last` (a field after every
    /// other: the MAC's).
    pub(super) fn pack_except(
        &self,
        out: &mut BytesMut,
        except: Bitmap,
        last: Option<(usize, &[u8])>,
    ) -> Result<(), PackError> {
        if let Some(field) = self.bad_field {
            return Err(PackError::NotADataElement { field });
        }
        let mut w = MessageWriter::begin(self.spec, self.mti, out);
        for e in &self.entries {
            let n = e.field as usize;
            if except.is_set(n) {
                continue;
            }
            match e.value {
                Value::Logical(v) => w.set(n, v),
                Value::Number(x) => w.set_number(n, x),
                Value::Wire { spec, wire, units } => w.put_wire(n, spec, wire, units as usize),
            };
        }
        if let Some((n, v)) = last {
            w.set(n, v);
        }
        w.finish()
    }

    /// The fields set.
    pub fn fields(&self) -> Bitmap {
        let mut b = Bitmap::EMPTY;
        for e in &self.entries {
            b.set(e.field as usize);
        }
        b
    }

    /// Packs into a new buffer (tests and tools; the switch reuses buffers).
    pub fn to_bytes(&self) -> Result<BytesMut, PackError> {
        let mut out = BytesMut::with_capacity(256);
        self.pack(&mut out)?;
        Ok(out)
    }
}

/// Writes a message straight into a buffer, fields in ascending order, with
/// nothing stored in between: the fastest way to pack, used on the hot
/// path. The bitmap is reserved up front and filled in by
/// [`MessageWriter::finish`]; the first field over 64 makes room for the
/// secondary bitmap. The first error is kept and returned by `finish`,
/// which then removes the partial message from the buffer.
pub struct MessageWriter<'o> {
    out: &'o mut BytesMut,
    spec: &'static Spec,
    start: usize,
    bitmap_at: usize,
    bits: Bitmap,
    last: usize,
    error: Option<PackError>,
}

impl<'o> MessageWriter<'o> {
    /// Writes the MTI and reserves the primary bitmap.
    pub fn begin(spec: &'static Spec, mti: Mti, out: &'o mut BytesMut) -> MessageWriter<'o> {
        let start = out.len();
        out.reserve(256);
        let digits = mti.to_ascii();
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
        let bitmap_at = out.len();
        out.put_bytes(0, spec.bitmap.width());
        MessageWriter {
            out,
            spec,
            start,
            bitmap_at,
            bits: Bitmap::EMPTY,
            last: 1,
            error: None,
        }
    }

    /// Checks order and definition; returns the field's definition and
    /// error label, or records the error.
    #[inline]
    fn open(&mut self, n: usize) -> Option<(&'static FieldDef, Part)> {
        if self.error.is_some() {
            return None;
        }
        let spec = self.spec;
        let fail = |e| Some(e);
        let err = if !(2..=MAX_FIELD).contains(&n) {
            fail(PackError::NotADataElement {
                field: n.min(255) as u8,
            })
        } else if n <= self.last {
            fail(PackError::OutOfOrder {
                field: n as u8,
                after: self.last as u8,
            })
        } else {
            match spec.field(n) {
                None => fail(PackError::UndefinedField {
                    field: n as u8,
                    spec: &spec.name,
                }),
                Some(def) => {
                    if n > 64 && !self.bits.needs_secondary() {
                        // Room for the secondary bitmap after the primary.
                        let w = spec.bitmap.width();
                        let from = self.bitmap_at + w;
                        let len = self.out.len();
                        self.out.put_bytes(0, w);
                        self.out.copy_within(from..len, from + w);
                        self.out[from..from + w].fill(0);
                    }
                    self.last = n;
                    self.bits.set(n);
                    return Some((def, Part::field(n, spec.name_of(n))));
                }
            }
        };
        self.error = err;
        None
    }

    /// Sets a field from its logical value (text, or raw bytes for `b`).
    pub fn set(&mut self, n: usize, value: &[u8]) -> &mut Self {
        if let Some((def, part)) = self.open(n)
            && let Err(e) = write_logical(def, part, value, self.out)
        {
            self.error = Some(e);
        }
        self
    }

    /// Sets a numeric field; fixed fields are zero padded.
    pub fn set_number(&mut self, n: usize, value: u64) -> &mut Self {
        if let Some((def, part)) = self.open(n) {
            if def.kind != FieldKind::Numeric {
                self.error = Some(PackError::NonNumeric { part });
            } else if let Err(e) = write_logical(def, part, itoa_buf(value).as_slice(), self.out) {
                self.error = Some(e);
            }
        }
        self
    }

    /// Copies field `n` of a parsed message, if it has it: wire bytes as
    /// they are when both specs lay the field out alike, else transcoded.
    pub fn copy(&mut self, from: &Message, n: usize) -> &mut Self {
        if let Some(v) = from.value(n) {
            self.put_wire(n, from.spec(), v.wire, v.units);
        }
        self
    }

    fn put_wire(&mut self, n: usize, from: &'static Spec, wire: &[u8], units: usize) -> &mut Self {
        let Some((def, part)) = self.open(n) else {
            return self;
        };
        match from.field(n) {
            // Same spec (the usual case): same layout, no need to compare.
            Some(src) if std::ptr::eq(from, self.spec) || src == def => {
                if let Length::Variable { prefix_digits, .. } = def.length {
                    encoding::write_prefix(def.prefix, prefix_digits, units, self.out);
                }
                self.out.put_slice(wire);
            }
            Some(src) => {
                let mut logical = Vec::with_capacity(src.logical_len(units));
                encoding::decode_logical(src, wire, units, &mut logical);
                if let Err(e) = write_logical(def, part, &logical, self.out) {
                    self.error = Some(e);
                }
            }
            None => {
                self.error = Some(PackError::UndefinedField {
                    field: n as u8,
                    spec: &from.name,
                })
            }
        }
        self
    }

    /// Fills in the bitmap(s). On error the partial message is removed.
    pub fn finish(self) -> Result<(), PackError> {
        if let Some(e) = self.error {
            self.out.truncate(self.start);
            return Err(e);
        }
        let len = self.out.len() - self.start;
        if len > MAX_MESSAGE_LEN {
            self.out.truncate(self.start);
            return Err(PackError::TooLarge {
                len,
                max: MAX_MESSAGE_LEN,
            });
        }
        let mut bits = self.bits;
        let enc = self.spec.bitmap;
        let w = enc.width();
        let at = self.bitmap_at;
        if bits.needs_secondary() {
            bits.set(1);
            bitmap::write(enc, bits.secondary(), &mut self.out[at + w..at + 2 * w]);
        }
        bitmap::write(enc, bits.primary(), &mut self.out[at..at + w]);
        Ok(())
    }
}

/// Packs the response to `request` (response MTI, same spec): the `echo`
/// fields it has, merged with `set` (which wins where both name a field).
/// Both lists must be in ascending field order. The hot-path way to answer.
pub fn pack_response(
    request: &Message,
    echo: &[usize],
    set: &[(usize, &[u8])],
    out: &mut BytesMut,
) -> Result<(), PackError> {
    let mti = request.mti().response().ok_or(PackError::BadMti)?;
    let mut w = MessageWriter::begin(request.spec(), mti, out);
    let (mut i, mut j) = (0, 0);
    while i < echo.len() || j < set.len() {
        let e = echo.get(i).copied().unwrap_or(usize::MAX);
        let s = set.get(j).map_or(usize::MAX, |&(n, _)| n);
        if s <= e {
            w.set(s, set[j].1);
            j += 1;
            if s == e {
                i += 1;
            }
        } else {
            w.copy(request, e);
            i += 1;
        }
    }
    w.finish()
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
    fn the_writer_inserts_the_secondary_bitmap_when_needed() {
        let mut out = BytesMut::from(&b"hdr"[..]);
        let mut w = MessageWriter::begin(iso87ascii(), Mti::NETWORK, &mut out);
        w.set_number(11, 1).set(70, b"301");
        w.finish().expect("packs");
        assert_eq!(&out[3..], b"080080200000000000000400000000000000000001301");
    }

    #[test]
    fn the_writer_refuses_fields_out_of_order_and_cleans_up() {
        let mut out = BytesMut::from(&b"hdr"[..]);
        let mut w = MessageWriter::begin(iso87ascii(), Mti::FINANCIAL, &mut out);
        w.set_number(11, 1).set(3, b"000000");
        assert_eq!(
            w.finish(),
            Err(PackError::OutOfOrder {
                field: 3,
                after: 11
            })
        );
        assert_eq!(&out[..], b"hdr");
    }

    #[test]
    fn pack_response_merges_echo_and_set_fields() {
        let mut b = MessageBuilder::new(iso87ascii(), Mti::FINANCIAL);
        b.set(2, b"4761739001010010")
            .set_number(4, 500)
            .set_number(11, 42)
            .set(39, b"XX")
            .set(41, b"TERM0001")
            .set(52, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let req = Message::parse(b.to_bytes().unwrap().freeze(), iso87ascii()).unwrap();
        let mut out = BytesMut::new();
        pack_response(
            &req,
            &[2, 4, 11, 39, 41],
            &[(38, b"ABC123"), (39, b"00")],
            &mut out,
        )
        .expect("packs");
        let r = Message::parse(out.freeze(), iso87ascii()).unwrap();
        assert_eq!(r.mti(), Mti::FINANCIAL_RESPONSE);
        assert_eq!(
            r.fields().map(|(n, _)| n).collect::<Vec<_>>(),
            [2, 4, 11, 38, 39, 41]
        );
        assert_eq!(r.response_code(), Some(*b"00"), "set wins over echo");
        let mut via_builder = MessageBuilder::response_to(&req, &[2, 4, 11, 41]).unwrap();
        via_builder.set(38, b"ABC123").set(39, b"00");
        assert_eq!(via_builder.to_bytes().unwrap(), r.frame()[..]);
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
