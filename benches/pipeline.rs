//! The switch's per-request work in one thread, without sockets:
//! unframe -> parse -> validate -> fraud score (100,000 cards tracked) ->
//! route -> record velocity -> pack the 0210 -> frame it. What is left for
//! a real request is I/O and the hop to the link actor and back.
//!
//! Run with `cargo bench --bench pipeline`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use loadtest::messages::card_pan;
use switchyard::frame::{DEFAULT_MAX_FRAME, FrameCodec, LengthHeader};
use switchyard::iso8583::{Message, pack_response, samples, specs};
use switchyard::switch::config::Config;
use switchyard::switch::fraud::{self, Auth, Decision, FraudRules, FraudState};
use switchyard::switch::router::RoutingTable;
use tokio_util::codec::{Decoder, Encoder};

const KEY: [u8; 16] = *b"bench-pan-key-01";
const ECHO_0210: [usize; 11] = [2, 3, 4, 7, 11, 12, 13, 37, 41, 42, 49];

/// The shared typical 0200 for `pan` and `stan`, framed with a 2-byte
/// header.
fn framed_0200(pan: &[u8], stan: u64) -> Bytes {
    let body = samples::typical_0200_for(specs::iso87ascii(), pan, stan).expect("packs");
    let mut out = BytesMut::new();
    FrameCodec::new(LengthHeader::Binary2, DEFAULT_MAX_FRAME)
        .encode(&body[..], &mut out)
        .expect("frames");
    out.freeze()
}

fn bench(c: &mut Criterion) {
    let config = Config::parse(include_str!("../config/switchyard.toml"))
        .unwrap_or_else(|e| panic!("shipped config invalid: {e:?}"));
    let rules = FraudRules::from_config(&config.fraud);
    let state = FraudState::new(config.fraud.max_tracked_cards);
    let routes = RoutingTable::from_config(&config.routing, |_| Some(0)).expect("routes");
    let frames: Vec<Bytes> = (0..100_000u64)
        .map(|i| framed_0200(&card_pan(b"476173", i), i))
        .collect();
    // Warm the velocity map so scoring reads real history.
    for f in &frames {
        let msg = Message::parse(f.slice(2..), specs::iso87ascii()).expect("parses");
        let p = msg.pan().expect("pan");
        let a = Auth {
            card: fraud::card_hash(&KEY, p.digits()),
            pan: p.digits(),
            amount_minor: 12_345,
            mcc: msg.mcc(),
            merchant_id: b"MERCHANT0000001",
            terminal_country: None,
            now_s: 1_780_000_000,
        };
        state.record_forwarded(&rules, &a);
    }

    let mut codec = FrameCodec::new(LengthHeader::Binary2, DEFAULT_MAX_FRAME);
    let mut rbuf = BytesMut::with_capacity(1024);
    let mut wbuf = BytesMut::with_capacity(1024);
    let mut body = BytesMut::with_capacity(1024);
    let mut i = 0usize;
    c.bench_function("pipeline/0200_to_framed_0210", |b| {
        b.iter(|| {
            i = (i + 7919) % frames.len();
            rbuf.extend_from_slice(&frames[i]);
            let frame = codec.decode(&mut rbuf).expect("framed").expect("a frame");
            let msg = Message::parse(frame, specs::iso87ascii()).expect("parses");
            let p = msg.pan().expect("DE2");
            let amount = msg.amount_minor().expect("DE4");
            let _tid = msg.terminal_id().expect("DE41");
            let merchant = msg.merchant_id().expect("DE42");
            assert!(p.luhn_ok());
            let a = Auth {
                card: fraud::card_hash(&KEY, p.digits()),
                pan: p.digits(),
                amount_minor: amount,
                mcc: msg.mcc(),
                merchant_id: merchant.trimmed(),
                terminal_country: None,
                now_s: 1_780_000_000,
            };
            let score = fraud::score(&rules, &a, &state);
            let route = routes.lookup(p.digits());
            if rules.decide(&score) != Decision::Decline && route.is_some() {
                state.record_forwarded(&rules, &a);
            }
            body.clear();
            pack_response(&msg, &ECHO_0210, &[(38, b"A1B2C3"), (39, b"00")], &mut body)
                .expect("packs");
            wbuf.clear();
            codec.encode(&body[..], &mut wbuf).expect("frames");
            black_box(route);
            black_box(wbuf.len())
        })
    });
}

criterion_group! {
    name = pipeline;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(pipeline);
