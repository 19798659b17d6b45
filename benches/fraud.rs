//! Fraud scoring on the hot path, with the shipped rules (three velocity
//! windows, card testing, declines, an MCC limit) and a velocity map that
//! already tracks 100,000 cards.
//!
//! Run with `cargo bench --bench fraud`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard::switch::config::Config;
use switchyard::switch::fraud::{self, Auth, FraudRules, FraudState};

const KEY: [u8; 16] = *b"bench-pan-key-01";
const CARDS: u64 = 100_000;
const NOW: u64 = 1_780_000_000;

fn pan(i: u64) -> Vec<u8> {
    format!("4761{:012}", i).into_bytes()
}

fn setup() -> (FraudRules, FraudState, Vec<Vec<u8>>) {
    let config = Config::parse(include_str!("../config/switchyard.toml"))
        .unwrap_or_else(|e| panic!("shipped config invalid: {e:?}"));
    let rules = FraudRules::from_config(&config.fraud);
    let state = FraudState::new(config.fraud.max_tracked_cards);
    let pans: Vec<Vec<u8>> = (0..CARDS).map(pan).collect();
    for (i, p) in pans.iter().enumerate() {
        for k in 0..3u64 {
            let a = Auth {
                card: fraud::card_hash(&KEY, p),
                pan: p,
                amount_minor: 1_000 + i as u64,
                mcc: Some(5411),
                merchant_id: b"MERCHANT0001",
                terminal_country: Some(840),
                now_s: NOW - 600 + k * 100,
            };
            state.record_forwarded(&rules, &a);
        }
    }
    (rules, state, pans)
}

/// The request being scored: a purchase now, at another merchant.
fn request(pan: &[u8]) -> Auth<'_> {
    Auth {
        card: fraud::card_hash(&KEY, pan),
        pan,
        amount_minor: 12_345,
        mcc: Some(5411),
        merchant_id: b"MERCHANT0002",
        terminal_country: Some(840),
        now_s: NOW,
    }
}

fn benches(c: &mut Criterion) {
    let (rules, state, pans) = setup();
    let mut i = 0usize;
    let mut next = || {
        i = (i + 7919) % pans.len();
        &pans[i]
    };

    c.bench_function("fraud/card_hash", |b| {
        b.iter(|| fraud::card_hash(black_box(&KEY), black_box(next())))
    });

    let mut g = c.benchmark_group("fraud");
    g.bench_function("score_known_card", |b| {
        b.iter(|| {
            let a = request(next());
            black_box(fraud::score(&rules, black_box(&a), &state))
        })
    });
    g.bench_function("score_and_record", |b| {
        b.iter(|| {
            let a = request(next());
            let s = fraud::score(&rules, black_box(&a), &state);
            if rules.decide(&s) != fraud::Decision::Decline {
                state.record_forwarded(&rules, &a);
            }
            black_box(s)
        })
    });
    g.finish();
}

criterion_group! {
    name = fraud_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(fraud_benches);
