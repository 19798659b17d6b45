//! What the journal's `Request` record keeps for settlement, taken from
//! the request as parsed: DE3, DE18, DE19 and DE22 as numbers (decoded
//! from the field's span in the frame, whatever its encoding), and the
//! batch number from the configured field (`[settlement] batch_field`,
//! DE60 by default) copied into an inline string. Nothing is allocated:
//! this runs once per journaled request, on the hot path.

use crate::iso8583::Message;
use crate::switch::journal::{BatchText, SettlementFields};

/// The settlement fields of `msg`; `batch_field` 0 keeps no batch.
pub fn capture(msg: &Message, batch_field: u16) -> SettlementFields {
    let small = |n: usize| msg.number(n).and_then(|v| u16::try_from(v).ok());
    SettlementFields {
        processing_code: msg.number(3).and_then(|v| u32::try_from(v).ok()),
        mcc: small(18),
        country: small(19),
        pos_entry_mode: small(22),
        batch: batch(msg, usize::from(batch_field)),
    }
}

/// The field as text: trimmed, printable ASCII only, cut to 16 bytes;
/// `None` when absent or empty.
fn batch(msg: &Message, field: usize) -> Option<BatchText> {
    if field < 2 {
        return None;
    }
    let value = msg.value(field)?;
    let mut out = BatchText::new();
    let mut push = |bytes: &[u8]| {
        let bytes = crate::iso8583::values::trim_padding(bytes);
        let start = bytes.iter().position(|&c| c != b' ').unwrap_or(bytes.len());
        for &c in &bytes[start..] {
            if out.is_full() {
                break;
            }
            if c.is_ascii_graphic() || c == b' ' {
                out.push(c as char);
            }
        }
    };
    match value.borrowed() {
        // ASCII on the wire (the built-in specs' text fields): the span.
        Some(span) => push(span),
        // EBCDIC or BCD: decoded into a stack buffer first.
        None => push(value.to_small_text()?.as_bytes()),
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::{MessageBuilder, Mti, specs};

    fn parse(fields: &[(usize, &[u8])]) -> Message {
        let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::FINANCIAL);
        for &(n, v) in fields {
            b.set(n, v);
        }
        Message::parse(b.to_bytes().expect("packs").freeze(), specs::iso87ascii()).expect("parses")
    }

    #[test]
    fn the_fields_are_taken_as_numbers_and_the_batch_as_text() {
        let m = parse(&[
            (3, b"200000"),
            (4, b"000000001000"),
            (18, b"5411"),
            (19, b"840"),
            (22, b"051"),
            (60, b"  000123  "),
        ]);
        let f = capture(&m, 60);
        assert_eq!(f.processing_code, Some(200_000));
        assert_eq!(f.mcc, Some(5411));
        assert_eq!(f.country, Some(840));
        assert_eq!(f.pos_entry_mode, Some(51));
        assert_eq!(f.batch.as_deref(), Some("000123"));
        // Another field, or none.
        assert_eq!(capture(&m, 0).batch, None);
        assert_eq!(capture(&m, 61).batch, None);
    }

    #[test]
    fn absent_fields_are_none_and_a_long_batch_is_cut() {
        let m = parse(&[(4, b"000000001000"), (60, b"BATCH-0123456789-XYZ")]);
        let f = capture(&m, 60);
        assert_eq!(
            (f.processing_code, f.mcc, f.country, f.pos_entry_mode),
            (None, None, None, None)
        );
        assert_eq!(f.batch.as_deref(), Some("BATCH-0123456789"));
        let blank = parse(&[(60, b"   ")]);
        assert_eq!(capture(&blank, 60).batch, None, "blank is absent");
    }

    /// What the capture costs a request, on both built-in specs (ASCII
    /// spans, and BCD numbers decoded): `cargo test --release --lib
    /// settlement::capture::tests::capture_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a test"]
    fn capture_cost() {
        use crate::iso8583::samples::typical_0200;
        for spec in [specs::iso87ascii(), specs::iso87binary()] {
            let frame = typical_0200(spec).expect("packs").freeze();
            let m = Message::parse(frame, spec).expect("parses");
            let n = 2_000_000u32;
            let started = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(capture(std::hint::black_box(&m), 60));
            }
            let per = started.elapsed().as_nanos() as f64 / f64::from(n);
            println!("{}: capture {per:.1} ns a request", spec.name);
        }
        println!(
            "Record: {} bytes in memory (the journal queue's element), of which the \
             settlement fields {}",
            std::mem::size_of::<crate::switch::journal::Record>(),
            std::mem::size_of::<SettlementFields>()
        );
    }
}
