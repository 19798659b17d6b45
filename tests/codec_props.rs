//! Property tests of the codec: for generated messages `parse(pack(m)) == m`
//! in every built-in spec and in a TOML spec using the other encodings
//! (EBCDIC text and lengths, binary lengths); and no input, however broken,
//! makes the parser or the framer panic.

use std::path::Path;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use switchyard::frame::{FrameCodec, LengthHeader};
use switchyard::iso8583::spec::{Encoding, FieldDef, FieldKind, Length};
use switchyard::iso8583::{Message, MessageBuilder, Mti, Spec, spec_toml, specs};
use tokio_util::codec::Decoder;

static EBCDIC_SPEC: LazyLock<&'static Spec> = LazyLock::new(|| {
    let text = r#"
        name = "props-ebcdic"
        base = "iso87ascii"
        mti = "ebcdic"
        bitmap = "ebcdic-hex"
        [fields.2]
        encoding = "bcd"
        prefix_encoding = "binary"
        [fields.3]
        encoding = "ebcdic"
        [fields.4]
        encoding = "ebcdic"
        [fields.35]
        encoding = "bcd"
        prefix_encoding = "bcd"
        [fields.41]
        encoding = "ebcdic"
        [fields.43]
        encoding = "ebcdic"
        [fields.48]
        encoding = "ebcdic"
        prefix_encoding = "ebcdic"
        [fields.28]
        encoding = "ebcdic"
        [fields.55]
        encoding = "binary"
        prefix_encoding = "binary"
        prefix = "LLL"
        max = 255
        [fields.62]
        prefix = "LLLL"
        max = 1200
    "#;
    spec_toml::parse(text, Path::new("props-ebcdic.toml"))
        .expect("valid test spec")
        .leak()
});

fn all_specs() -> Vec<&'static Spec> {
    vec![specs::iso87ascii(), specs::iso87binary(), *EBCDIC_SPEC]
}

/// A logical value valid for `def`, its length decided by `len_seed`.
fn value_for(def: &FieldDef, len_seed: u16, bytes: &[u8]) -> Vec<u8> {
    let units = match def.length {
        Length::Fixed(l) => l as usize,
        // Favour the edges: empty, one, maximum.
        Length::Variable { max, .. } => match len_seed % 8 {
            0 => 0,
            1 => 1.min(max as usize),
            2 => max as usize,
            _ => (len_seed as usize) % (max as usize + 1),
        },
    };
    let pick = |i: usize| bytes[i % bytes.len()];
    match (def.kind, def.data) {
        (FieldKind::Binary, Encoding::Hex) => (0..units / 2).map(pick).collect(),
        (FieldKind::Binary, _) => (0..units).map(pick).collect(),
        (FieldKind::Numeric, _) => (0..units).map(|i| b'0' + pick(i) % 10).collect(),
        (FieldKind::Track, Encoding::Bcd) => (0..units)
            .map(|i| {
                if pick(i) % 7 == 0 {
                    b'D'
                } else {
                    b'0' + pick(i) % 10
                }
            })
            .collect(),
        (FieldKind::Track, _) => (0..units)
            .map(|i| {
                if pick(i) % 7 == 0 {
                    b'='
                } else {
                    b'0' + pick(i) % 10
                }
            })
            .collect(),
        (FieldKind::SignedAmount, _) => (0..units)
            .map(|i| match i {
                0 if pick(0) % 2 == 0 => b'C',
                0 => b'D',
                _ => b'0' + pick(i) % 10,
            })
            .collect(),
        // Each kind's own charset, or parse would refuse what was packed.
        (FieldKind::Alpha, _) => {
            const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz ";
            (0..units)
                .map(|i| ALPHA[pick(i) as usize % ALPHA.len()])
                .collect()
        }
        (FieldKind::Alphanumeric, _) => {
            const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 ";
            (0..units)
                .map(|i| ALNUM[pick(i) as usize % ALNUM.len()])
                .collect()
        }
        // Printable ASCII; EBCDIC carries it through the cp500 table.
        _ => (0..units).map(|i| 0x20 + pick(i) % 0x5F).collect(),
    }
}

#[derive(Debug, Clone)]
struct Generated {
    spec: usize,
    mti: u16,
    fields: Vec<(usize, Vec<u8>)>,
}

fn generated() -> impl Strategy<Value = Generated> {
    (
        0usize..3,
        prop::sample::select(vec![100u16, 110, 200, 210, 220, 400, 420, 430, 800, 810]),
        prop::collection::btree_set(2usize..=128, 0..24),
        prop::collection::vec(any::<u16>(), 128),
        prop::collection::vec(any::<u8>(), 1..64),
    )
        .prop_map(|(spec, mti, numbers, lens, bytes)| {
            let s = all_specs()[spec];
            let fields = numbers
                .into_iter()
                .filter_map(|n| {
                    let def = s.field(n)?;
                    Some((n, value_for(def, lens[n - 1], &bytes)))
                })
                .collect();
            Generated { spec, mti, fields }
        })
}

fn pack(g: &Generated) -> BytesMut {
    let spec = all_specs()[g.spec];
    let mut b = MessageBuilder::new(spec, Mti::new(g.mti).expect("valid MTI"));
    for (n, v) in &g.fields {
        b.set(*n, v);
    }
    b.to_bytes().unwrap_or_else(|e| panic!("pack failed: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_of_pack_gives_back_every_field(g in generated()) {
        let spec = all_specs()[g.spec];
        let packed = pack(&g);
        let m = Message::parse(packed.clone().freeze(), spec)
            .unwrap_or_else(|e| panic!("parse failed: {e}"));
        prop_assert_eq!(m.mti().value(), g.mti);
        let present: Vec<usize> = m.fields().map(|(n, _)| n).collect();
        let expected: Vec<usize> = g.fields.iter().map(|(n, _)| *n).collect();
        prop_assert_eq!(present, expected);
        for (n, v) in &g.fields {
            let mut got = Vec::new();
            m.value(*n).expect("present").write_logical(&mut got);
            prop_assert_eq!(&got, v, "field {}", n);
        }
        // Re-packing a parsed message copies wire bytes: identical output.
        let mut again = MessageBuilder::new(spec, m.mti());
        again.copy_all(&m);
        prop_assert_eq!(&again.to_bytes().expect("repack")[..], &packed[..]);
    }

    #[test]
    fn transcoding_between_specs_keeps_values(g in generated(), target in 0usize..3) {
        let from = all_specs()[g.spec];
        let to = all_specs()[target];
        let m = Message::parse(pack(&g).freeze(), from).expect("parses");
        let mut t = MessageBuilder::new(to, m.mti());
        // Only fields both specs lay out alike in length can move across.
        let movable: Vec<usize> = m.fields().map(|(n, _)| n).filter(|&n| {
            match (from.field(n), to.field(n)) {
                (Some(a), Some(b)) => a.kind == b.kind
                    && a.logical_len(a.length.max() as usize) <= b.logical_len(b.length.max() as usize)
                    && matches!((a.length, b.length), (Length::Variable { .. }, Length::Variable { .. }) | (Length::Fixed(_), Length::Fixed(_)))
                    && !(a.kind == FieldKind::Track && a.data != b.data),
                _ => false,
            }
        }).collect();
        t.copy_fields(&m, &movable);
        let out = Message::parse(t.to_bytes().expect("packs").freeze(), to).expect("parses");
        for n in movable {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            m.value(n).expect("source").write_logical(&mut a);
            out.value(n).expect("target").write_logical(&mut b);
            if let Length::Fixed(_) = to.field(n).expect("defined").length {
                // Fixed fields may be longer in the target; compare the prefix.
                prop_assert!(b.starts_with(&a) || b.ends_with(&a), "field {}", n);
            } else {
                prop_assert_eq!(a, b, "field {}", n);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(data in prop::collection::vec(any::<u8>(), 0..600), spec in 0usize..3) {
        let spec = all_specs()[spec];
        let frame = Bytes::from(data);
        if let Ok(m) = Message::parse(frame.clone(), spec) {
            // Whatever parses must print (masked) and re-pack without panicking.
            let _ = format!("{m:?} {}", m.dump());
            let mut b = MessageBuilder::new(spec, m.mti());
            b.copy_all(&m);
            let again = b.to_bytes().expect("a parsed message re-packs");
            prop_assert!(Message::parse(again.freeze(), spec).is_ok(), "re-packed message parses");
        }
        let _ = Message::parse_or_salvage(frame, spec);
    }

    /// Never send a frame we could not parse again: whatever the builder
    /// packs, from any spec's fields into any other, parses.
    #[test]
    fn every_packed_message_parses_again(g in generated(), target in 0usize..3) {
        let from = all_specs()[g.spec];
        let to = all_specs()[target];
        let m = Message::parse(pack(&g).freeze(), from).expect("parses");
        for n in m.fields().map(|(n, _)| n).collect::<Vec<_>>() {
            let mut t = MessageBuilder::new(to, m.mti());
            t.copy(&m, n);
            if let Ok(out) = t.to_bytes() {
                let again = Message::parse(out.freeze(), to);
                prop_assert!(again.is_ok(), "field {} into {}: {:?}", n, to.name, again.err());
            }
        }
    }

    #[test]
    fn mutated_messages_never_panic_the_parser(g in generated(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let spec = all_specs()[g.spec];
        let mut bytes = pack(&g).to_vec();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        let frame = Bytes::from(bytes);
        let _ = Message::parse(frame.clone(), spec).map(|m| format!("{m:?}"));
        let truncated = frame.slice(..cut.index(frame.len() + 1));
        if let Err(s) = Message::parse_or_salvage(truncated, spec) {
            let _ = s.error.to_string();
        }
    }

    #[test]
    fn the_framer_never_panics_and_respects_the_limit(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
        header in 0usize..4,
        max in 0usize..512,
    ) {
        let mut codec = FrameCodec::new(LengthHeader::ALL[header], max);
        let mut buf = BytesMut::new();
        'outer: for c in chunks {
            buf.extend_from_slice(&c);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => prop_assert!(frame.len() <= max),
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }
}

#[test]
fn generated_values_cover_every_kind_and_encoding() {
    // Guard against the generator silently skipping a layout.
    let mut seen = std::collections::BTreeSet::new();
    for s in all_specs() {
        for n in 2..=128 {
            if let Some(d) = s.field(n) {
                seen.insert((d.kind.code(), d.data.code()));
            }
        }
    }
    for needed in [
        ("n", "ascii"),
        ("n", "bcd"),
        ("n", "ebcdic"),
        ("b", "hex"),
        ("b", "binary"),
        ("z", "bcd"),
        ("x+n", "bcd"),
        ("ans", "ebcdic"),
    ] {
        assert!(seen.contains(&needed), "{needed:?} not covered");
    }
}
