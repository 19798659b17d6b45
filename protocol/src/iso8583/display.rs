//! Printing messages for people: card numbers masked (first 6, last 4),
//! track data, PIN blocks and chip data never shown.

use std::fmt;

use super::message::{FieldValue, Message};
use super::spec::FieldKind;
use super::values::{MaskedPan, write_printable};

/// How a field may be shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sensitivity {
    Clear,
    /// A card number: first 6 and last 4 digits only.
    MaskPan,
    /// Never shown; only the length is printed.
    Redact,
}

/// The 1987 fields that carry card secrets: DE2/DE34 (PAN), DE35/DE36/DE45
/// (track data), DE52 (PIN block), DE55 (chip data, may hold track
/// equivalents).
pub fn sensitivity(field: usize) -> Sensitivity {
    match field {
        2 | 34 => Sensitivity::MaskPan,
        35 | 36 | 45 | 52 | 55 => Sensitivity::Redact,
        _ => Sensitivity::Clear,
    }
}

/// Writes a field's value as it may be shown to people.
pub fn write_safe(f: &mut impl fmt::Write, n: usize, v: &FieldValue<'_>) -> fmt::Result {
    match sensitivity(n) {
        Sensitivity::Redact => write!(f, "[redacted, {} bytes]", v.wire.len()),
        Sensitivity::MaskPan => {
            let mut text = Vec::with_capacity(v.logical_len());
            v.write_logical(&mut text);
            write!(f, "{}", MaskedPan::of(&text))
        }
        Sensitivity::Clear => {
            let mut text = Vec::with_capacity(v.logical_len());
            v.write_logical(&mut text);
            if v.def.kind == FieldKind::Binary {
                for b in text {
                    write!(f, "{b:02X}")?;
                }
                Ok(())
            } else {
                write_printable(f, &text)
            }
        }
    }
}

pub(crate) fn debug(m: &Message, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "Message {{ spec: {}, mti: {}", m.spec().name, m.mti())?;
    for (n, v) in m.fields() {
        write!(f, ", {n}: \"")?;
        write_safe(f, n, &v)?;
        f.write_str("\"")?;
    }
    f.write_str(" }")
}

/// A multi-line, masked listing of a message, one field per line.
pub struct Dump<'a>(pub(crate) &'a Message);

impl fmt::Display for Dump<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        let b = m.bitmap();
        writeln!(f, "MTI   {}  ({})", m.mti(), m.spec().name)?;
        write!(f, "BITMAP {:016X}", b.primary())?;
        if b.is_set(1) {
            write!(f, " {:016X}", b.secondary())?;
        }
        writeln!(f)?;
        for (n, v) in m.fields() {
            let spec = m.spec();
            write!(
                f,
                "  {n:>3}  {:<44} {:<3} [",
                spec.name_of(n),
                v.def.kind.code()
            )?;
            write_safe(f, n, &v)?;
            writeln!(f, "]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::iso8583::builder::MessageBuilder;
    use crate::iso8583::mti::Mti;
    use crate::iso8583::specs::iso87ascii;

    use super::*;

    #[test]
    fn dumps_mask_pan_and_hide_track_pin_and_chip_data() {
        let mut b = MessageBuilder::new(iso87ascii(), Mti::FINANCIAL);
        b.set(2, b"4761739001010010")
            .set(4, b"000000001000")
            .set(35, b"4761739001010010=25122011234567890")
            .set(41, b"TERM0001")
            .set(45, b"B4761739001010010^DOE/JOHN^2512201")
            .set(52, &[0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE, 0xF0])
            .set(55, &[0x9F, 0x26, 0x08, 0xAA, 0xBB]);
        let mut out = bytes::BytesMut::new();
        b.pack(&mut out).expect("packs");
        let m = Message::parse(Bytes::from(out), iso87ascii()).expect("parses");
        for text in [format!("{}", m.dump()), format!("{m:?}")] {
            assert!(text.contains("476173******0010"), "{text}");
            assert!(!text.contains("4761739001010010"), "{text}");
            assert!(!text.contains("DOE/JOHN"), "{text}");
            assert!(!text.contains("123456789ABCDEF0"), "{text}");
            assert!(!text.contains("9F2608"), "{text}");
            assert!(text.contains("[redacted, 34 bytes]"), "{text}");
            assert!(text.contains("TERM0001"), "{text}");
        }
    }
}
