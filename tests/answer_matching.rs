//! Answers are checked against their request before they reach a
//! terminal (issue 10 A). The simulator's `wrong-stan` mode answers each
//! transaction with the next STAN, so with several requests in flight on
//! one connection every answer's key names another request: matched by
//! key alone, request N+1 would be told request N's amount and RRN.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use switchyard::iso8583::Mti;
use switchyard::tools::sim::Latency;

const N: u32 = 6;

fn amount(stan: u32) -> u64 {
    1000 + u64::from(stan) * 111
}

fn rrn(stan: u32) -> String {
    format!("{:012}", 500_000_000_000u64 + u64::from(stan))
}

#[tokio::test]
async fn an_answer_for_another_request_is_discarded_and_the_request_reversed() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "request_timeout_ms = 400", "")).await;
    wait_links_up(&switch).await;
    // Latency keeps every request in flight when the first answer comes.
    sim.set_latency(Latency::Fixed(Duration::from_millis(100)));
    sim.set_wrong_stan(true);

    let mut t = Terminal::connect(switch.terminal_addr).await;
    for stan in 1..=N {
        t.send(&auth(Mti::FINANCIAL, stan, PAN, amount(stan))).await;
    }
    assert!(
        sim.wait_until(GUARD, |s| s
            .received()
            .iter()
            .filter(|r| r.mti.value() == 200)
            .count()
            >= N as usize)
            .await,
        "all requests reached the host"
    );
    // The wrong answers are already on their way; what comes next (the
    // reversals) waits until the host answers right again.
    sim.stop_answering();

    let mut codes = HashMap::new();
    for _ in 1..=N {
        let a = t.recv().await;
        let stan = a.stan().expect("DE11");
        assert_eq!(
            a.amount_minor(),
            Some(amount(stan)),
            "STAN {stan}: the answer carries its own request's amount"
        );
        assert_eq!(
            text(&a, 37),
            rrn(stan),
            "STAN {stan}: the answer carries its own request's RRN"
        );
        codes.insert(stan, code(&a));
    }
    let expected: HashMap<u32, String> = (1..=N).map(|s| (s, "91".to_owned())).collect();
    assert_eq!(codes, expected, "no answer of its own: 91 each");

    let admin = switch.admin_addr.expect("admin");
    let (_, body) = http_get(admin, "/metrics").await;
    assert!(
        metric(&body, "switchyard_link_unmatched_total", &["mismatch"]) >= f64::from(N - 1),
        "mismatches counted: {body}"
    );

    sim.set_wrong_stan(false);
    sim.resume();
    let reversed = |s: &switchyard::tools::sim::SimHandle, stan: u32| {
        s.received()
            .iter()
            .filter(|r| {
                matches!(r.mti.value(), 420 | 421)
                    && r.stan == stan
                    && r.response_code == Some(*b"00")
            })
            .count()
    };
    assert!(
        sim.wait_until(GUARD, |s| (1..=N).all(|stan| reversed(s, stan) >= 1))
            .await,
        "every request reversed: {:?}",
        sim.received()
    );
    // Nothing more follows (the SAF stops once a reversal is acknowledged).
    t.expect_silence().await;
    for stan in 1..=N {
        assert_eq!(reversed(&sim, stan), 1, "STAN {stan}: one reversal");
        let amounts: Vec<_> = sim
            .received()
            .iter()
            .filter(|r| matches!(r.mti.value(), 420 | 421) && r.stan == stan)
            .map(|r| r.amount)
            .collect();
        assert!(
            amounts.iter().all(|a| *a == Some(amount(stan))),
            "STAN {stan}: reversal of its own amount {amounts:?}"
        );
    }
    switch.shutdown().await;
}
