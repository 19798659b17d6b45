use super::*;
use crate::switch::config::Config;

const KEY: [u8; 16] = *b"0123456789abcdef";
const PAN: &[u8] = b"4761739001010119";
const T0: u64 = 1_780_000_000;

fn rules(toml: &str) -> FraudRules {
    let c = Config::parse(toml).unwrap_or_else(|e| panic!("test config invalid: {e:?}"));
    FraudRules::from_config(&c.fraud)
}

fn auth(pan: &'static [u8], amount: u64, now_s: u64) -> Auth<'static> {
    Auth {
        card: card_hash(&KEY, pan),
        pan,
        amount_minor: amount,
        mcc: Some(5411),
        merchant_id: b"MERCHANT0001",
        terminal_country: None,
        now_s,
    }
}

fn fired(s: &Score) -> Vec<&'static str> {
    s.reasons.iter().map(RuleId::name).collect()
}

#[test]
fn card_hash_is_keyed_stable_and_prints_as_hex() {
    let a = card_hash(&KEY, PAN);
    assert_eq!(a, card_hash(&KEY, PAN));
    assert_ne!(a, card_hash(&KEY, b"4761739001010127"));
    assert_ne!(a, card_hash(b"fedcba9876543210", PAN));
    let hex = a.to_string();
    assert_eq!(hex.len(), 32);
    assert!(!hex.contains("4761739001010119"));
    assert_eq!(CardHash::from_hex(&hex), Some(a));
    assert_eq!(CardHash::from_hex("zz"), None);
}

#[test]
fn amount_over_global_and_mcc_limits() {
    let r = rules(
        "[fraud]\nmax_amount = 1000\namount_points = 30\n\
         [[fraud.mcc_limits]]\nmcc = 7995\nmax_amount = 100\npoints = 40\n",
    );
    let st = FraudState::new(10);
    assert_eq!(score(&r, &auth(PAN, 1000, T0), &st), Score::default());
    let s = score(&r, &auth(PAN, 1001, T0), &st);
    assert_eq!((s.points, fired(&s)), (30, vec!["amount"]));
    let mut a = auth(PAN, 101, T0);
    a.mcc = Some(7995);
    let s = score(&r, &a, &st);
    assert_eq!((s.points, fired(&s)), (40, vec!["mcc_amount"]));
    a.amount_minor = 5000;
    assert_eq!(score(&r, &a, &st).points, 70);
}

#[test]
fn blocked_bins_and_cards() {
    let blocked = card_hash(&KEY, b"5500000000000004");
    let toml = format!(
        "[fraud]\npan_key = \"{}\"\nblocked_bins = [\"476173\"]\nblocked_cards = [\"{}\"]\n\
         blocked_points = 100\n",
        KEY.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        blocked
    );
    let r = rules(&toml);
    let st = FraudState::new(10);
    let s = score(&r, &auth(PAN, 10, T0), &st);
    assert_eq!((s.points, fired(&s)), (100, vec!["blocked_bin"]));
    let s = score(&r, &auth(b"5500000000000004", 10, T0), &st);
    assert_eq!(fired(&s), vec!["blocked_card"]);
    assert_eq!(r.decide(&s), Decision::Decline);
    let s = score(&r, &auth(b"5500000000000012", 10, T0), &st);
    assert_eq!(s, Score::default());
}

#[test]
fn country_mismatch_uses_the_longest_bin_match() {
    let r = rules(
        "[fraud]\ncountry_mismatch_points = 20\n\
         [[fraud.bin_countries]]\nprefix = \"4\"\ncountry = 840\n\
         [[fraud.bin_countries]]\nprefix = \"476173\"\ncountry = 250\n",
    );
    let st = FraudState::new(10);
    let mut a = auth(PAN, 10, T0);
    a.terminal_country = Some(250);
    assert_eq!(score(&r, &a, &st), Score::default());
    a.terminal_country = Some(840);
    let s = score(&r, &a, &st);
    assert_eq!((s.points, fired(&s)), (20, vec!["country_mismatch"]));
    // Unknown terminal country or unknown BIN: no opinion.
    a.terminal_country = None;
    assert_eq!(score(&r, &a, &st), Score::default());
    let mut b = auth(b"5500000000000004", 10, T0);
    b.terminal_country = Some(840);
    assert_eq!(score(&r, &b, &st), Score::default());
}

#[test]
fn velocity_counts_only_what_was_recorded() {
    let r = rules("[fraud]\n[[fraud.velocity]]\nwindow_s = 60\nmax_count = 3\npoints = 30\n");
    let st = FraudState::new(10);
    // Scoring alone never changes the history.
    for _ in 0..10 {
        assert_eq!(score(&r, &auth(PAN, 10, T0), &st), Score::default());
    }
    for i in 0..3 {
        let a = auth(PAN, 10, T0 + i);
        assert_eq!(score(&r, &a, &st), Score::default(), "request {i}");
        st.record_forwarded(&r, &a);
    }
    let s = score(&r, &auth(PAN, 10, T0 + 3), &st);
    assert_eq!((s.points, fired(&s)), (30, vec!["velocity_count"]));
    // Another card has its own history.
    assert_eq!(
        score(&r, &auth(b"4761739001010127", 10, T0 + 3), &st),
        Score::default()
    );
    // Once the window has slid past, the card is clean again.
    assert_eq!(score(&r, &auth(PAN, 10, T0 + 70), &st), Score::default());
}

#[test]
fn velocity_amount_sums_the_window() {
    let r = rules("[fraud]\n[[fraud.velocity]]\nwindow_s = 3600\nmax_amount = 1000\npoints = 25\n");
    let st = FraudState::new(10);
    st.record_forwarded(&r, &auth(PAN, 600, T0));
    assert_eq!(score(&r, &auth(PAN, 400, T0 + 100), &st), Score::default());
    let s = score(&r, &auth(PAN, 401, T0 + 100), &st);
    assert_eq!((s.points, fired(&s)), (25, vec!["velocity_amount"]));
}

#[test]
fn card_testing_small_amounts_and_many_merchants() {
    let r = rules(
        "[fraud]\n[fraud.card_testing]\nwindow_s = 600\nsmall_amount = 200\n\
         max_small = 2\nmax_merchants = 3\npoints = 60\n",
    );
    let st = FraudState::new(10);
    st.record_forwarded(&r, &auth(PAN, 100, T0));
    st.record_forwarded(&r, &auth(PAN, 150, T0 + 1));
    // A large amount is not small.
    assert_eq!(score(&r, &auth(PAN, 5000, T0 + 2), &st), Score::default());
    let s = score(&r, &auth(PAN, 199, T0 + 2), &st);
    assert_eq!((s.points, fired(&s)), (60, vec!["card_testing_small"]));
    // Outside the window the small ones are forgotten.
    assert_eq!(score(&r, &auth(PAN, 199, T0 + 700), &st), Score::default());

    let other: &'static [u8] = b"4761739001010127";
    for (i, m) in [&b"M1"[..], b"M2", b"M3"].into_iter().enumerate() {
        let mut a = auth(other, 5000, T0 + i as u64);
        a.merchant_id = m;
        st.record_forwarded(&r, &a);
    }
    let mut a = auth(other, 5000, T0 + 5);
    a.merchant_id = b"M2";
    assert_eq!(score(&r, &a, &st), Score::default());
    a.merchant_id = b"M4";
    let s = score(&r, &a, &st);
    assert_eq!(fired(&s), vec!["card_testing_merchants"]);
}

#[test]
fn repeated_declines() {
    let r = rules(
        "[fraud]\n[fraud.declines]\nwindow_s = 3600\nmax_declines = 2\npoints = 50\n\
         [[fraud.velocity]]\nwindow_s = 60\npoints = 1\n",
    );
    let st = FraudState::new(10);
    let a = auth(PAN, 10, T0);
    // A decline for a card never forwarded is not remembered.
    st.record_decline(a.card, T0);
    st.record_forwarded(&r, &a);
    st.record_decline(a.card, T0);
    st.record_decline(a.card, T0 + 1);
    assert_eq!(score(&r, &auth(PAN, 10, T0 + 2), &st), Score::default());
    st.record_decline(a.card, T0 + 2);
    let s = score(&r, &auth(PAN, 10, T0 + 3), &st);
    assert_eq!((s.points, fired(&s)), (50, vec!["repeated_declines"]));
    assert_eq!(score(&r, &auth(PAN, 10, T0 + 4000), &st), Score::default());
}

#[test]
fn thresholds_decide() {
    let r = rules("[fraud]\nreview_points = 50\ndecline_points = 80\n");
    let s = |points| Score {
        points,
        reasons: {
            let mut x = Reasons::default();
            x.insert(RuleId::Amount);
            x
        },
    };
    assert_eq!(r.decide(&s(49)), Decision::Allow);
    assert_eq!(r.decide(&s(50)), Decision::Review);
    assert_eq!(r.decide(&s(79)), Decision::Review);
    assert_eq!(r.decide(&s(80)), Decision::Decline);
    assert_eq!(r.decide(&Score::default()), Decision::Allow);
    let zero = rules("[fraud]\nreview_points = 0\ndecline_points = 0\n");
    assert_eq!(zero.decide(&Score::default()), Decision::Allow);
}

#[test]
fn disabled_scores_nothing_and_tracks_nothing() {
    let r = rules(
        "[fraud]\nenabled = false\nmax_amount = 1\nblocked_bins = [\"4\"]\n\
         [[fraud.velocity]]\nwindow_s = 60\nmax_count = 0\n",
    );
    let st = FraudState::new(10);
    let a = auth(PAN, 1000, T0);
    assert_eq!(score(&r, &a, &st), Score::default());
    st.record_forwarded(&r, &a);
    assert!(st.is_empty());
}

#[test]
fn the_map_stays_bounded_and_keeps_recent_cards() {
    let r = rules("[fraud]\n[[fraud.velocity]]\nwindow_s = 86400\nmax_count = 1\npoints = 30\n");
    let st = FraudState::new(100);
    let pans: Vec<&'static [u8]> = (0..1000u64)
        .map(|i| &*format!("4{:015}", i).into_bytes().leak())
        .collect();
    for (i, pan) in pans.iter().enumerate() {
        st.record_forwarded(&r, &auth(pan, 10, T0 + i as u64));
        assert!(st.len() <= 100, "{} cards tracked after {i}", st.len());
    }
    assert!(st.len() >= 80, "eviction went too far: {}", st.len());
    // The most recent card is remembered (its next request is over the
    // velocity limit); the first one was evicted.
    let last = pans[999];
    assert_eq!(
        fired(&score(&r, &auth(last, 10, T0 + 1000), &st)),
        vec!["velocity_count"]
    );
    assert_eq!(
        score(&r, &auth(pans[0], 10, T0 + 1000), &st),
        Score::default()
    );
}

#[test]
fn a_burst_inside_one_second_does_not_empty_the_map() {
    let r = rules("[fraud]\n[[fraud.velocity]]\nwindow_s = 60\npoints = 1\n");
    let st = FraudState::new(1000);
    for i in 0..5000u64 {
        let pan = format!("5{:015}", i).into_bytes();
        let a = Auth {
            pan: &pan,
            card: card_hash(&KEY, &pan),
            ..auth(PAN, 10, T0)
        };
        st.record_forwarded(&r, &a);
        assert!(st.len() <= 1000);
    }
    assert!(st.len() >= 500, "only {} cards left", st.len());
}

#[test]
fn eviction_at_scale_goes_in_steps_and_keeps_recent_cards() {
    // Large enough that a step covers only some shards: eviction must go
    // round them step by step without emptying the map or losing the
    // newest cards.
    const BOUND: usize = 20_000;
    let r = rules("[fraud]\n[[fraud.velocity]]\nwindow_s = 86400\nmax_count = 1\npoints = 30\n");
    let st = FraudState::new(BOUND);
    let pans: Vec<&'static [u8]> = (0..60_000u64)
        .map(|i| &*format!("4{:015}", i).into_bytes().leak())
        .collect();
    let (mut lowest_after_full, mut largest_step) = (usize::MAX, 0);
    for (i, pan) in pans.iter().enumerate() {
        let before = st.len();
        // Ten new cards a second, so cards differ in age.
        st.record_forwarded(&r, &auth(pan, 10, T0 + i as u64 / 10));
        assert!(st.len() <= BOUND, "{} cards tracked after {i}", st.len());
        largest_step = largest_step.max(before.saturating_sub(st.len()));
        if i >= BOUND {
            lowest_after_full = lowest_after_full.min(st.len());
        }
    }
    // One step removes about a tenth of the cards it looks at, never a
    // tenth of the whole map at once.
    assert!(
        largest_step > 0 && largest_step < BOUND / 20,
        "one eviction step removed {largest_step} cards"
    );
    assert!(
        lowest_after_full >= BOUND - BOUND / 10,
        "eviction went too far: {lowest_after_full} left"
    );
    let now = T0 + 60_000 / 10;
    let recent_tracked = pans[pans.len() - 1000..]
        .iter()
        .filter(|pan| !score(&r, &auth(pan, 10, now), &st).reasons.is_empty())
        .count();
    assert!(
        recent_tracked >= 990,
        "only {recent_tracked} of the newest 1000 cards tracked"
    );
    let oldest_tracked = pans[..1000]
        .iter()
        .filter(|pan| !score(&r, &auth(pan, 10, now), &st).reasons.is_empty())
        .count();
    assert_eq!(oldest_tracked, 0, "the oldest cards should have gone first");
}
