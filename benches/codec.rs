//! Codec micro-benchmarks: parse and pack of typical messages, and the same
//! 0200 parsed by the `iso8583_rs` crate for comparison.
//!
//! Run with `cargo bench --bench codec`.
//!
//! `iso8583_rs` always reads the bitmap as 8 raw bytes (it ignores the
//! encoding a spec gives its bitmap), so it can not read the iso87ascii
//! 0200 with its 16 hex character bitmap. The comparison therefore uses the
//! same 0200 with a binary bitmap and ASCII fields, parsed by both codecs
//! from identical bytes: `parse/0200_typical_ascii_binbitmap` against
//! `iso8583_rs/parse_0200_typical`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use switchyard::iso8583::spec::BitmapEncoding;
use switchyard::iso8583::specs::{iso87ascii, iso87binary};
use switchyard::iso8583::{Message, MessageBuilder, Mti, Spec, pack_response, samples};

/// Fields a 0210 echoes from its 0200.
const ECHO_0210: [usize; 11] = [2, 3, 4, 7, 11, 12, 13, 37, 41, 42, 49];

const STAN: u32 = samples::TYPICAL_STAN;
const AMOUNT: u64 = samples::TYPICAL_AMOUNT;

/// The shared typical purchase (`switchyard::iso8583::samples`).
fn typical_0200(spec: &'static Spec) -> Bytes {
    samples::typical_0200(spec)
        .expect("typical 0200 packs")
        .freeze()
}

/// Appends one BER-TLV with a one-byte length.
fn tlv(out: &mut Vec<u8>, tag: &[u8], value: &[u8]) {
    out.extend_from_slice(tag);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// EMV chip data of an online authorisation request (ARQC), 151 bytes.
fn icc_data() -> Vec<u8> {
    let mut d = Vec::with_capacity(160);
    tlv(
        &mut d,
        &[0x9F, 0x26],
        &[0x8A, 0x3C, 0x51, 0x0E, 0x27, 0x9B, 0x44, 0xD1],
    );
    tlv(&mut d, &[0x9F, 0x27], &[0x80]);
    tlv(
        &mut d,
        &[0x9F, 0x10],
        &[
            0x06, 0x01, 0x0A, 0x03, 0xA0, 0xB8, 0x00, 0x0F, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
        ],
    );
    tlv(&mut d, &[0x9F, 0x37], &[0x5A, 0x1B, 0xE2, 0x07]);
    tlv(&mut d, &[0x9F, 0x36], &[0x00, 0x2C]);
    tlv(&mut d, &[0x95], &[0x00, 0x00, 0x04, 0x80, 0x00]);
    tlv(&mut d, &[0x9A], &[0x25, 0x06, 0x12]);
    tlv(&mut d, &[0x9C], &[0x00]);
    tlv(&mut d, &[0x9F, 0x02], &[0x00, 0x00, 0x00, 0x01, 0x23, 0x45]);
    tlv(&mut d, &[0x9F, 0x03], &[0x00; 6]);
    tlv(&mut d, &[0x5F, 0x2A], &[0x08, 0x40]);
    tlv(&mut d, &[0x82], &[0x39, 0x00]);
    tlv(&mut d, &[0x9F, 0x1A], &[0x08, 0x40]);
    tlv(&mut d, &[0x9F, 0x34], &[0x42, 0x03, 0x00]);
    tlv(&mut d, &[0x9F, 0x33], &[0xE0, 0xF8, 0xC8]);
    tlv(&mut d, &[0x9F, 0x35], &[0x22]);
    tlv(&mut d, &[0x9F, 0x1E], b"TERM0001");
    tlv(&mut d, &[0x84], &[0xA0, 0x00, 0x00, 0x00, 0x03, 0x10, 0x10]);
    tlv(&mut d, &[0x9F, 0x09], &[0x00, 0x8C]);
    tlv(&mut d, &[0x9F, 0x41], &[0x00, 0x00, 0x01, 0x27]);
    tlv(&mut d, &[0x5F, 0x34], &[0x01]);
    tlv(&mut d, &[0x9F, 0x53], &[0x52]);
    d
}

/// A chip authorisation: the fields of the 0200 plus DE23 and track 2,
/// DE55 (302 hex characters in iso87ascii) and the secondary-bitmap fields
/// DE100 and DE102 (559 bytes in iso87ascii).
fn chip_0100(spec: &'static Spec, icc: &[u8]) -> Bytes {
    let mut b = MessageBuilder::new(spec, Mti::AUTHORIZATION);
    b.set(2, b"4761739001010010")
        .set(3, b"000000")
        .set_number(4, AMOUNT)
        .set(7, b"0612143015")
        .set_number(11, STAN as u64)
        .set(12, b"143015")
        .set(13, b"0612")
        .set(14, b"2712")
        .set(18, b"5411")
        .set(22, b"051")
        .set(23, b"001")
        .set(25, b"00")
        .set(35, b"4761739001010010=27122011758928889")
        .set(37, b"416314123456")
        .set(41, b"TERM0001")
        .set(42, b"MERCHANT0000001")
        .set(43, b"ACME GROCERY #42       SPRINGFIELD  ILUS")
        .set(49, b"840")
        .set(55, icc)
        .set(100, b"476173")
        .set(102, b"0012345678901234");
    b.to_bytes().expect("chip 0100 packs").freeze()
}

/// iso87ascii with a binary bitmap: the dialect `iso8583_rs` can read.
fn iso87ascii_binary_bitmap() -> &'static Spec {
    let mut spec = iso87ascii().clone();
    spec.name = "iso87ascii-binbitmap".into();
    spec.bitmap = BitmapEncoding::Binary;
    spec.leak()
}

/// Checks a parsed 0200 reads back what `typical_0200` put in.
fn check_0200(m: &Message) {
    assert_eq!(m.mti(), Mti::FINANCIAL);
    assert_eq!(m.stan(), Some(STAN));
    assert_eq!(m.amount_minor(), Some(AMOUNT));
    assert_eq!(m.fields().count(), 16);
}

/// Packs the 0210 answering `req` into `out`, reused, the way the switch
/// does: straight into the buffer with `pack_response`.
fn pack_0210(req: &Message, out: &mut BytesMut) {
    out.clear();
    pack_response(req, &ECHO_0210, &[(38, b"A1B2C3"), (39, b"00")], out).expect("0210 packs");
}

/// The same 0210 through the general-purpose `MessageBuilder`.
fn build_0210(req: &Message, out: &mut BytesMut) {
    out.clear();
    let mut resp = MessageBuilder::response_to(req, &ECHO_0210).expect("a request");
    resp.set(38, b"A1B2C3").set(39, b"00");
    resp.pack(out).expect("0210 packs");
}

fn parse_and_read(frame: &Bytes, spec: &'static Spec) -> (Option<u32>, Option<u64>) {
    let m = black_box(Message::parse(black_box(frame.clone()), spec)).expect("parses");
    (m.stan(), m.amount_minor())
}

fn ours(c: &mut Criterion) {
    let ascii = typical_0200(iso87ascii());
    assert_eq!(ascii.len(), 173);
    let req = Message::parse(ascii.clone(), iso87ascii()).expect("0200 parses");
    check_0200(&req);

    c.bench_function("parse/0200_typical", |b| {
        b.iter(|| parse_and_read(&ascii, iso87ascii()))
    });

    let mut out = BytesMut::with_capacity(512);
    pack_0210(&req, &mut out);
    let resp = Message::parse(Bytes::copy_from_slice(&out), iso87ascii()).expect("0210 parses");
    assert_eq!(resp.mti(), Mti::FINANCIAL_RESPONSE);
    assert_eq!(resp.stan(), Some(STAN));
    assert_eq!(resp.response_code(), Some(*b"00"));
    assert_eq!(resp.fields().count(), ECHO_0210.len() + 2);
    c.bench_function("pack/0210_response", |b| {
        b.iter(|| {
            pack_0210(black_box(&req), &mut out);
            black_box(out.len())
        })
    });
    let mut built = BytesMut::with_capacity(512);
    build_0210(&req, &mut built);
    assert_eq!(built, out, "both ways of packing agree");
    c.bench_function("pack/0210_response_builder", |b| {
        b.iter(|| {
            build_0210(black_box(&req), &mut built);
            black_box(built.len())
        })
    });

    let icc = icc_data();
    assert_eq!(icc.len(), 151);
    let chip = chip_0100(iso87ascii(), &icc);
    assert_eq!(chip.len(), 559);
    let m = Message::parse(chip.clone(), iso87ascii()).expect("0100 parses");
    assert!(m.bitmap().is_set(1) && m.has(100) && m.has(102));
    assert_eq!(m.field(55).map(<[u8]>::len), Some(2 * icc.len()));
    c.bench_function("parse/0100_secondary_bitmap_de55", |b| {
        b.iter(|| {
            let m =
                black_box(Message::parse(black_box(chip.clone()), iso87ascii())).expect("parses");
            (m.stan(), m.field(55).map(<[u8]>::len))
        })
    });

    let binary = typical_0200(iso87binary());
    check_0200(&Message::parse(binary.clone(), iso87binary()).expect("binary 0200 parses"));
    c.bench_function("parse/0200_typical_iso87binary", |b| {
        b.iter(|| parse_and_read(&binary, iso87binary()))
    });
}

mod theirs {
    use std::collections::HashMap;

    use iso8583_rs::iso8583::iso_spec::{self, IsoMsg, Spec};

    static SPEC_FILE: std::sync::Once = std::sync::Once::new();

    /// The spec of benches/data/iso8583_rs_iso87ascii.yaml. iso8583_rs
    /// reads the file named by `SPEC_FILE` on first use.
    pub fn spec() -> &'static Spec {
        SPEC_FILE.call_once(|| {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/data/iso8583_rs_iso87ascii.yaml"
            );
            // SAFETY: called once, from the benchmark's only thread, before
            // anything else reads the environment.
            unsafe { std::env::set_var("SPEC_FILE", path) };
        });
        iso_spec::spec("iso87ascii-binbitmap")
    }

    fn field<'m>(m: &'m IsoMsg, name: &str) -> Option<&'m [u8]> {
        let map: &HashMap<String, Vec<u8>> = &m.fd_map;
        map.get(name).map(Vec::as_slice)
    }

    /// Parses and checks that iso8583_rs read every field of the 0200 as
    /// our codec did; panics with the difference if not.
    pub fn check(frame: &[u8], ours: &switchyard::iso8583::Message) {
        let msg = spec()
            .parse(&mut frame.to_vec())
            .unwrap_or_else(|e| panic!("iso8583_rs can not parse the 0200: {e}"));
        let stan = msg.bmp_child_value(11).expect("iso8583_rs has no DE11");
        let amount = msg.bmp_child_value(4).expect("iso8583_rs has no DE4");
        assert_eq!(
            (stan.parse::<u32>().ok(), amount.parse::<u64>().ok()),
            (ours.stan(), ours.amount_minor()),
            "iso8583_rs read another STAN/amount than ours"
        );
        let mut count = 0;
        for (n, value) in ours.fields() {
            let theirs = msg
                .bmp_child_value(n as u32)
                .unwrap_or_else(|e| panic!("iso8583_rs did not read DE{n}: {}", e.msg));
            assert_eq!(
                theirs.as_bytes(),
                value.wire,
                "iso8583_rs read DE{n} differently"
            );
            count += 1;
        }
        assert_eq!(count, 16);
        assert_eq!(field(&msg, "message_type"), Some(&b"0200"[..]));
    }

    /// One parse, reading STAN and amount as raw bytes (the cheapest
    /// access iso8583_rs offers; `bmp_child_value` would allocate a String).
    pub fn parse_and_read(frame: &mut Vec<u8>) -> (usize, usize) {
        let msg = spec().parse(frame).expect("parses");
        let msg = std::hint::black_box(msg);
        (
            field(&msg, "stan").map_or(0, <[u8]>::len),
            field(&msg, "amount").map_or(0, <[u8]>::len),
        )
    }
}

fn versus_iso8583_rs(c: &mut Criterion) {
    let spec = iso87ascii_binary_bitmap();
    let frame = typical_0200(spec);
    let ours = Message::parse(frame.clone(), spec).expect("binary-bitmap 0200 parses");
    check_0200(&ours);
    theirs::check(&frame, &ours);

    c.bench_function("parse/0200_typical_ascii_binbitmap", |b| {
        b.iter(|| parse_and_read(&frame, spec))
    });

    let mut input = frame.to_vec();
    c.bench_function("iso8583_rs/parse_0200_typical", |b| {
        b.iter(|| theirs::parse_and_read(black_box(&mut input)))
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = ours, versus_iso8583_rs
}
criterion_main!(benches);
