//! The thread's state fed by hand, in virtual time: the frame's figures,
//! an alert through `tick`, the answers to the admin endpoint.

use super::*;
use crate::switch::config::Config;

fn config(extra: &str) -> AnalyticsConfig {
    Config::parse(&format!("[analytics]\n{extra}\n"))
        .map_err(|p| format!("{p:?}"))
        .expect("valid")
        .analytics
}

fn event(at_ms: u64, code: &[u8; 2], stan: u32) -> Event {
    let mut rrn = [b' '; 12];
    rrn.copy_from_slice(format!("{:012}", 500_000_000_000u64 + u64::from(stan)).as_bytes());
    Event {
        unix_ms: at_ms,
        mti: 200,
        code: *code,
        stan,
        rrn,
        acquirer: 0,
        terminal: *b"TERM0001",
        merchant: *b"MERCHANT0000001",
        bin: *b"550000",
        last4: *b"0004",
        pan_len: 16,
        amount: 250,
        currency: 840,
        latency_us: 150,
        rtt_us: 900,
        decision: 0,
        ..Event::default()
    }
}

fn names(i: u16) -> String {
    format!("acq{i}")
}

#[test]
fn the_frame_shows_what_was_fed() {
    let mut s = State::new(&config(""), PrefixMap::new(), HashMap::new());
    let t0 = 1_800_000_000_000u64;
    for i in 0..100u32 {
        let code = if i % 10 == 0 { b"05" } else { b"00" };
        let mut e = event(t0 + u64::from(i) * 10, code, i);
        if i == 7 {
            e.decision = 1;
            e.reasons = 1;
        }
        s.add(&e);
    }
    let f = s.frame(t0 + 1500, json!({"links": [{"acquirer": "acq0"}]}), &names);
    assert_eq!(f["now"]["tps"], 100);
    assert_eq!(f["now"]["approval_rate"], 0.9);
    assert_eq!(f["series"]["tps"].as_array().map(Vec::len), Some(300));
    assert_eq!(f["series"]["tps"][299], 100);
    assert_eq!(f["series"]["codes"]["05"][299], 10);
    assert_eq!(f["schemes"][0]["scheme"], "mastercard");
    assert_eq!(f["countries"], json!([]));
    assert_eq!(f["top_declining"]["terminals"][0]["key"], "TERM0001");
    assert_eq!(f["top_declining"]["terminals"][0]["declined"], 10);
    assert_eq!(f["fraud"]["reviewed"], 1);
    assert_eq!(f["fraud"]["reasons"][0]["rule"], "amount");
    assert_eq!(f["high_risk"][0]["pan"], "550000******0004");
    assert_eq!(
        f["links"][0]["rtt_p50_us"].as_u64().map(|v| v >= 900),
        Some(true)
    );
    let p50 = f["now"]["p50_us"].as_u64().expect("p50");
    assert!((150..=170).contains(&p50), "{p50}");
    let found = s.transactions_json(
        &Search {
            rrn: Some("500000000042".into()),
            limit: 10,
            ..Search::default()
        },
        &names,
    );
    assert_eq!(found["transactions"][0]["stan"], "000042");
    assert_eq!(found["transactions"][0]["acquirer"], "acq0");
    let t = s.terminals_json(10);
    assert_eq!(t["terminals"][0]["requests"], 100);
    assert_eq!(t["terminals"][0]["approval_rate"], 0.9);
}

#[test]
fn an_alert_is_raised_and_cleared_through_the_windows() {
    let mut s = State::new(
        &config(
            "window_s = 1\nhold_s = 2\nmin_volume = 10\nseed_baseline = true\nwarmup_windows = 0",
        ),
        PrefixMap::new(),
        HashMap::new(),
    );
    let t0 = 1_800_000_000_000u64;
    let mut stan = 0;
    let mut second = |s: &mut State, k: u64, code: &[u8; 2]| {
        for i in 0..20 {
            stan += 1;
            s.add(&event(t0 + k * 1000 + i, code, stan));
        }
        s.tick(t0 + k * 1000 + 999)
    };
    assert!(
        second(&mut s, 0, b"00").is_empty(),
        "the first tick starts the window"
    );
    for k in 1..5 {
        assert!(second(&mut s, k, b"00").is_empty());
    }
    // Declines from second 5: anomalous at once, raised 2 s later.
    assert!(second(&mut s, 5, b"05").is_empty());
    assert!(second(&mut s, 6, b"05").is_empty());
    let raised = second(&mut s, 7, b"05");
    let kinds: Vec<String> = raised
        .iter()
        .map(|c| match c {
            Change::Raised(a) => a.key.kind(),
            Change::Cleared(a) => format!("cleared {}", a.key.kind()),
        })
        .collect();
    assert!(
        kinds.iter().filter(|k| *k == "approval_rate").count() >= 2,
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| *k == "rate_05").count() == 2,
        "{kinds:?}"
    );
    let a = s.alerts_json(&names);
    assert!(
        a["open"]
            .as_array()
            .is_some_and(|v| v.len() == raised.len())
    );
    assert!(a["open"].as_array().is_some_and(|v| {
        v.iter()
            .any(|x| x["series"] == "terminal TERM0001: rate of 05")
    }));
    let cleared = second(&mut s, 8, b"00");
    assert!(cleared.iter().all(|c| matches!(c, Change::Cleared(_))));
    assert_eq!(cleared.len(), raised.len());
    assert_eq!(s.alerts_json(&names)["open"], json!([]));
}

#[test]
fn the_sink_drops_and_counts_when_full() {
    let sink = Sink::new(&config("queue_capacity = 64"));
    for _ in 0..100 {
        sink.push(Event::default());
    }
    assert_eq!(sink.dropped(), 36);
    let off = Sink::new(&config("enabled = false"));
    off.push(Event::default());
    assert!(!off.enabled() && off.dropped() == 0);
}
