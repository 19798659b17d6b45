//! Faults injected into the switch's surroundings: a host that stops
//! answering, answers late, or drops the link; stand-in while it is down;
//! advices from terminals. Real sockets on 127.0.0.1, the simulator's own
//! record as the host's view.

mod common;

use std::time::Duration;

use common::*;
use switchyard::iso8583::Mti;
use switchyard::tools::sim::{Latency, Received, SimHandle};
use tokio::time::timeout;

fn of_mti(sim: &SimHandle, mti: u16) -> Vec<Received> {
    sim.received()
        .into_iter()
        .filter(|r| r.mti.value() == mti)
        .collect()
}

/// Each (STAN) of `stans` has exactly one acknowledged 0420 or 0421 at the
/// host, and every 0421 comes after a first 0420.
fn assert_reversed_once(sim: &SimHandle, stans: &[u32]) {
    let got = sim.received();
    for &stan in stans {
        let sends: Vec<&Received> = got
            .iter()
            .filter(|r| matches!(r.mti.value(), 420 | 421) && r.stan == stan)
            .collect();
        let acked: Vec<_> = sends
            .iter()
            .filter(|r| r.response_code == Some(*b"00"))
            .collect();
        assert_eq!(
            acked.len(),
            1,
            "STAN {stan}: acknowledged reversals {sends:?}"
        );
        assert_eq!(sends[0].mti.value(), 420, "first send is not a repeat");
        assert!(
            sends[1..].iter().all(|r| r.mti.value() == 421),
            "later sends are marked repeats"
        );
        let de90 = sends[0].original_data.as_deref().unwrap_or("");
        assert!(
            de90.starts_with(&format!("0200{stan:06}")),
            "DE90 names the original: {de90}"
        );
    }
}

#[tokio::test]
async fn a_host_that_stops_answering_gets_91s_then_every_reversal() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "request_timeout_ms = 300", "")).await;
    wait_links_up(&switch).await;
    sim.stop_answering();
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let stans: Vec<u32> = (1..=5).collect();
    for &s in &stans {
        t.send(&auth(Mti::FINANCIAL, s, PAN, 100 + s as u64)).await;
    }
    for _ in &stans {
        let a = t.recv().await;
        assert_eq!(code(&a), "91");
    }
    // Reversals are held while the host is silent, and go once it answers.
    sim.resume();
    assert!(
        sim.wait_until(GUARD, |s| {
            s.received()
                .iter()
                .filter(|r| matches!(r.mti.value(), 420 | 421) && r.response_code.is_some())
                .count()
                >= stans.len()
        })
        .await,
        "every reversal acknowledged: {:?}",
        sim.received()
    );
    assert_reversed_once(&sim, &stans);
    t.expect_silence().await;
    switch.shutdown().await;
}

#[tokio::test]
async fn a_late_answer_is_dropped_and_the_reversal_still_goes() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "request_timeout_ms = 300", "")).await;
    wait_links_up(&switch).await;
    sim.set_latency(Latency::Fixed(Duration::from_millis(600)));
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let a = t.request(&auth(Mti::FINANCIAL, 7, PAN, 100)).await;
    assert_eq!(code(&a), "91");
    sim.set_latency(Latency::None);
    assert!(
        sim.wait_until(GUARD, |s| of_mti(s, 420)
            .iter()
            .chain(of_mti(s, 421).iter())
            .any(|r| r.response_code == Some(*b"00")))
            .await
    );
    assert_reversed_once(&sim, &[7]);
    // The late 0210 reached the switch but not the terminal.
    t.expect_silence().await;
    switch.shutdown().await;
}

#[tokio::test]
async fn link_killed_under_load_reversals_wait_then_drain() {
    let sim = start_sim().await;
    let switch = start_switch(&config(
        &[sim.local_addr()],
        "request_timeout_ms = 2000",
        "",
    ))
    .await;
    wait_links_up(&switch).await;
    let link = switch.shared.acquirers[0].links[0].shared.clone();
    sim.stop_answering();
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let stans: Vec<u32> = (11..=30).collect();
    for &s in &stans {
        t.send(&auth(Mti::FINANCIAL, s, PAN, 100)).await;
    }
    assert!(
        sim.wait_until(GUARD, |s| of_mti(s, 200).len() == stans.len())
            .await
    );
    // The link dies with all of them in flight, and stays down a while.
    sim.set_refuse_connections(true);
    sim.close_connections();
    for _ in &stans {
        assert_eq!(code(&t.recv().await), "91");
    }
    timeout(GUARD, link.wait_for(false))
        .await
        .expect("link down");
    assert_eq!(
        switch.shared.acquirers[0].saf.depth(),
        stans.len(),
        "queued while down"
    );
    sim.resume();
    sim.set_refuse_connections(false);
    timeout(GUARD, link.wait_for(true))
        .await
        .expect("link back");
    assert!(
        sim.wait_until(GUARD, |s| {
            s.received()
                .iter()
                .filter(|r| r.mti.value() == 420 && r.response_code == Some(*b"00"))
                .count()
                == stans.len()
        })
        .await,
        "all drained"
    );
    assert_reversed_once(&sim, &stans);
    let (_, metrics) = http_get(switch.admin_addr.expect("admin"), "/metrics").await;
    assert_eq!(metric(&metrics, "switchyard_saf_expired_total", &[]), 0.0);
    switch.shutdown().await;
}

#[tokio::test]
async fn stand_in_approves_small_requests_and_advises_the_host_later() {
    let reserved = reserve_port();
    let addr = reserved.addr;
    let switch = start_switch(&config(
        &[addr],
        "[acquirers.stand_in]\nenabled = true\nmax_amount = 5000\nmax_fraud_points = 10",
        "",
    ))
    .await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let small = t.request(&auth(Mti::FINANCIAL, 41, PAN, 1_000)).await;
    assert_eq!(code(&small), "00", "approved in stand-in");
    let approval = text(&small, 38);
    assert!(
        approval.starts_with('S') && approval.len() == 6,
        "{approval}"
    );
    let large = t.request(&auth(Mti::FINANCIAL, 42, PAN, 10_000)).await;
    assert_eq!(code(&large), "91", "over the stand-in limit");

    drop(reserved);
    let sim = start_sim_with(switchyard::tools::sim::SimConfig {
        listen: addr,
        ..sim_config()
    })
    .await;
    wait_links_up(&switch).await;
    assert!(
        sim.wait_until(GUARD, |s| of_mti(s, 220)
            .iter()
            .any(|r| r.stan == 41 && r.response_code == Some(*b"00")))
            .await,
        "advice reached the host: {:?}",
        sim.received()
    );
    assert!(
        of_mti(&sim, 220).iter().all(|r| r.stan == 41),
        "no advice for the declined one"
    );
    assert!(of_mti(&sim, 200).is_empty(), "nothing was forwarded online");
    switch.shutdown().await;
}

#[tokio::test]
async fn advices_from_terminals_are_acknowledged_and_stored_and_forwarded() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    sim.stop_answering();
    let mut t = Terminal::connect(switch.terminal_addr).await;
    // Acknowledged at once, although the host is silent.
    let a = t.request(&auth(Mti::REVERSAL_ADVICE, 51, PAN, 100)).await;
    assert_eq!((a.mti().value(), code(&a)), (430, "00".into()));
    let a = t.request(&auth(Mti::FINANCIAL_ADVICE, 52, PAN, 100)).await;
    assert_eq!((a.mti().value(), code(&a)), (230, "00".into()));
    // A repeat of the advice is answered again, not queued twice.
    let again = t
        .request(&auth(Mti::REVERSAL_ADVICE_REPEAT, 51, PAN, 100))
        .await;
    assert_eq!(code(&again), "00");
    sim.resume();
    assert!(
        sim.wait_until(GUARD, |s| {
            let acked = |m: &[u16], stan| {
                s.received().iter().any(|r| {
                    m.contains(&r.mti.value()) && r.stan == stan && r.response_code.is_some()
                })
            };
            acked(&[420, 421], 51) && acked(&[220, 221], 52)
        })
        .await,
        "{:?}",
        sim.received()
    );
    let reversals = sim
        .received()
        .iter()
        .filter(|r| matches!(r.mti.value(), 420 | 421) && r.response_code.is_some())
        .count();
    assert_eq!(reversals, 1, "one reversal acknowledged");
    switch.shutdown().await;
}

#[tokio::test]
async fn an_approval_the_terminal_is_gone_for_is_reversed_once() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    sim.set_latency(Latency::Fixed(Duration::from_millis(300)));
    let mut t = Terminal::connect(switch.terminal_addr).await;
    t.send(&auth(Mti::FINANCIAL, 61, PAN, 100)).await;
    assert!(
        sim.wait_until(GUARD, |s| s
            .received()
            .iter()
            .any(|r| r.mti.value() == 200 && r.stan == 61))
            .await,
        "the 0200 reached the host"
    );
    // The terminal gives up before the host's (approving) answer.
    drop(t);
    assert!(
        sim.wait_until(GUARD, |s| !of_mti(s, 420).is_empty()).await,
        "the undelivered approval is reversed"
    );
    // Nothing more comes: one reversal, acknowledged, not repeated.
    let mut t = Terminal::connect(switch.terminal_addr).await;
    t.expect_silence().await;
    let reversals: Vec<Received> = sim
        .received()
        .into_iter()
        .filter(|r| matches!(r.mti.value(), 420 | 421))
        .collect();
    assert_eq!(reversals.len(), 1, "{reversals:?}");
    assert_eq!(reversals[0].stan, 61);
    assert_eq!(reversals[0].response_code, Some(*b"00"), "acknowledged");
    let admin = switch.admin_addr.expect("admin");
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(&metrics, "switchyard_undeliverable_reversed_total", &[]),
        1.0,
        "{metrics}"
    );
    switch.shutdown().await;
}
