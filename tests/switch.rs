//! The switch end to end: terminals, the switch and the acquirer host
//! simulator on real sockets on 127.0.0.1, all in this process's runtime.

mod common;

use std::time::Duration;

use common::*;
use switchyard::iso8583::Mti;
use switchyard::tools::sim::{Latency, SimConfig};
use tokio::time::timeout;

fn mtis(sim: &switchyard::tools::sim::SimHandle) -> Vec<u16> {
    sim.received().iter().map(|r| r.mti.value()).collect()
}

#[tokio::test]
async fn approves_0100_and_0200_and_echoes_the_request() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;

    for (mti, answer, stan) in [(Mti::AUTHORIZATION, 110, 11), (Mti::FINANCIAL, 210, 12)] {
        let a = t.request(&auth(mti, stan, PAN, 1234)).await;
        assert_eq!(a.mti().value(), answer);
        assert_eq!(code(&a), "00");
        // The real response carries the real card number, unmasked.
        assert_eq!(text(&a, 2), PAN);
        assert_eq!(a.stan(), Some(stan));
        assert_eq!(a.amount_minor(), Some(1234));
        assert_eq!(
            text(&a, 37),
            format!("{}", 500_000_000_000u64 + stan as u64)
        );
        assert_eq!(text(&a, 41), TID);
        assert_eq!(text(&a, 38).len(), 6, "approval code");
    }
    assert_eq!(mtis(&sim), vec![800, 100, 200]);
    switch.shutdown().await;
}

#[tokio::test]
async fn host_declines_reach_the_terminal() {
    let sim = start_sim_with(SimConfig {
        decline_over_amount: Some(100_000),
        decline_prefixes: vec!["5".into()],
        ..sim_config()
    })
    .await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let a = t.request(&auth(Mti::FINANCIAL, 1, PAN, 100_001)).await;
    assert_eq!((a.mti().value(), code(&a)), (210, "51".into()));
    let a = t
        .request(&auth(Mti::FINANCIAL, 2, "5500000000000004", 100))
        .await;
    assert_eq!(code(&a), "05");
    switch.shutdown().await;
}

#[tokio::test]
async fn fraud_decline_answers_59_without_asking_the_host() {
    let sim = start_sim().await;
    let switch = start_switch(&config(
        &[sim.local_addr()],
        "",
        "blocked_bins = [\"476173\"]\nblocked_points = 100\ndecline_points = 80",
    ))
    .await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let a = t.request(&auth(Mti::FINANCIAL, 1, PAN, 100)).await;
    assert_eq!((a.mti().value(), code(&a)), (210, "59".into()));
    // Another card still goes through, so the host was reachable.
    let a = t
        .request(&auth(Mti::FINANCIAL, 2, "4000000000000002", 100))
        .await;
    assert_eq!(code(&a), "00");
    assert_eq!(
        mtis(&sim),
        vec![800, 200],
        "only the clean card went upstream"
    );
    switch.shutdown().await;
}

#[tokio::test]
async fn velocity_rule_declines_after_too_many_requests() {
    let sim = start_sim().await;
    let switch = start_switch(&config(
        &[sim.local_addr()],
        "",
        "decline_points = 80\n[[fraud.velocity]]\nwindow_s = 60\nmax_count = 3\npoints = 90",
    ))
    .await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    for stan in 1..=3 {
        let a = t.request(&auth(Mti::FINANCIAL, stan, PAN, 100)).await;
        assert_eq!(code(&a), "00", "request {stan}");
    }
    let a = t.request(&auth(Mti::FINANCIAL, 4, PAN, 100)).await;
    assert_eq!(code(&a), "59");
    assert_eq!(sim.received().len(), 4, "sign-on and three forwarded");
    switch.shutdown().await;
}

#[tokio::test]
async fn no_route_answers_92() {
    let sim = start_sim().await;
    let switch = start_switch(&config_routed(
        &[sim.local_addr()],
        "",
        "[[routing.routes]]\nprefix = \"5\"\nacquirer = \"acquirer-a\"\n",
        "",
    ))
    .await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let a = t.request(&auth(Mti::AUTHORIZATION, 1, PAN, 100)).await;
    assert_eq!((a.mti().value(), code(&a)), (110, "92".into()));
    let a = t
        .request(&auth(Mti::AUTHORIZATION, 2, "5500000000000004", 100))
        .await;
    assert_eq!(code(&a), "00");
    switch.shutdown().await;
}

#[tokio::test]
async fn missing_required_field_answers_30() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let mut b = switchyard::iso8583::MessageBuilder::new(
        switchyard::iso8583::specs::iso87ascii(),
        Mti::FINANCIAL,
    );
    b.set(2, PAN.as_bytes())
        .set(3, b"000000")
        .set_number(4, 100)
        .set(7, b"1125101010")
        .set_number(11, 77)
        .set(41, TID.as_bytes())
        .set(42, b"MERCHANT0000001"); // no DE49
    let a = t.request(&b.to_bytes().expect("packs")).await;
    assert_eq!(
        (a.mti().value(), code(&a), a.stan()),
        (210, "30".into(), Some(77))
    );
    assert_eq!(mtis(&sim), vec![800]);
    switch.shutdown().await;
}

#[tokio::test]
async fn duplicate_in_flight_answers_94() {
    let sim = start_sim_with(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(300)),
        ..sim_config()
    })
    .await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let mut other = Terminal::connect(switch.terminal_addr).await;
    let req = auth(Mti::FINANCIAL, 42, PAN, 100);
    t.send(&req).await;
    t.send(&req).await;
    // The duplicate is refused at once, before the original is answered.
    let first = t.recv().await;
    assert_eq!((first.stan(), code(&first)), (Some(42), "94".into()));
    // Same key from another connection: caught by the link's table.
    let dup = other.request(&req).await;
    assert_eq!(code(&dup), "94");
    let original = t.recv().await;
    assert_eq!((original.stan(), code(&original)), (Some(42), "00".into()));
    let forwarded = sim
        .received()
        .iter()
        .filter(|r| r.mti.value() == 200)
        .count();
    assert_eq!(forwarded, 1);
    switch.shutdown().await;
}

#[tokio::test]
async fn host_timeout_answers_91_and_the_late_answer_is_dropped() {
    let sim = start_sim_with(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(1500)),
        ..sim_config()
    })
    .await;
    // Sign-on must not time out: the latency applies from the first
    // transaction on.
    sim.set_latency(Latency::None);
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    sim.set_latency(Latency::Fixed(Duration::from_millis(1500)));
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let a = t.request(&auth(Mti::FINANCIAL, 5, PAN, 100)).await;
    assert_eq!((a.stan(), code(&a)), (Some(5), "91".into()));
    // The host answers later; nothing more reaches the terminal.
    assert!(
        sim.wait_until(GUARD, |s| s.stats().answered >= 2).await,
        "host answered late"
    );
    t.expect_silence().await;
    let (_, body) = http_get(switch.admin_addr.expect("admin"), "/metrics").await;
    assert!(
        metric(&body, "switchyard_link_unmatched_total", &["late"]) >= 1.0,
        "late answer counted: {body}"
    );
    switch.shutdown().await;
}

#[tokio::test]
async fn link_down_at_start_comes_up_with_backoff_and_sign_on() {
    let reserved = reserve_port();
    let addr = reserved.addr;
    let switch = start_switch(&config(&[addr], "", "")).await;
    let admin = switch.admin_addr.expect("admin");
    let (status, body) = http_get(admin, "/health").await;
    assert_eq!(status, 503, "{body}");
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let a = t.request(&auth(Mti::FINANCIAL, 1, PAN, 100)).await;
    assert_eq!(code(&a), "91", "host down: issuer unavailable");

    drop(reserved);
    let sim = start_sim_with(SimConfig {
        listen: addr,
        ..sim_config()
    })
    .await;
    wait_links_up(&switch).await;
    let (status, body) = http_get(admin, "/health").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"up\":true"), "{body}");
    let a = t.request(&auth(Mti::FINANCIAL, 2, PAN, 100)).await;
    assert_eq!(code(&a), "00");
    let got = sim.received();
    assert_eq!(got[0].mti.value(), 800, "sign-on first");
    assert_eq!(got[0].response_code, Some(*b"00"));
    switch.shutdown().await;
}

#[tokio::test]
async fn missed_echoes_drop_the_link_and_it_relinks() {
    let sim = start_sim().await;
    let switch = start_switch(&config(
        &[sim.local_addr()],
        "echo_interval_ms = 100\necho_timeout_ms = 200\nmax_missed_echoes = 1",
        "",
    ))
    .await;
    wait_links_up(&switch).await;
    let link = switch.shared.acquirers[0].links[0].shared.clone();
    sim.stop_answering();
    timeout(GUARD, link.wait_for(false))
        .await
        .expect("link marked down after missed echoes");
    let connections_before = sim.stats().connections;
    sim.resume();
    timeout(GUARD, link.wait_for(true))
        .await
        .expect("link comes back");
    assert!(sim.stats().connections > connections_before || sim.stats().accepted >= 2);
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let a = t.request(&auth(Mti::FINANCIAL, 1, PAN, 100)).await;
    assert_eq!(code(&a), "00");
    switch.shutdown().await;
}

#[tokio::test]
async fn two_links_share_the_load() {
    let (s1, s2) = (start_sim().await, start_sim().await);
    let switch = start_switch(&config(&[s1.local_addr(), s2.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    for stan in 1..=40 {
        t.send(&auth(Mti::FINANCIAL, stan, PAN, 100)).await;
    }
    let mut stans = Vec::new();
    for _ in 1..=40 {
        let a = t.recv().await;
        assert_eq!(code(&a), "00");
        stans.push(a.stan().expect("stan"));
    }
    stans.sort_unstable();
    assert_eq!(stans, (1..=40).collect::<Vec<_>>());
    let n1 = mtis(&s1).iter().filter(|&&m| m == 200).count();
    let n2 = mtis(&s2).iter().filter(|&&m| m == 200).count();
    assert_eq!(n1 + n2, 40);
    assert!(n1 > 0 && n2 > 0, "both links used: {n1} / {n2}");
    switch.shutdown().await;
}

#[tokio::test]
async fn backup_acquirer_takes_over_when_the_primary_is_down() {
    let backup = start_sim().await;
    // Held for the whole test: the primary stays down.
    let dead_port = reserve_port();
    let dead = dead_port.addr;
    let toml = config_routed(
        &[dead],
        &format!(
            "[[acquirers]]\nname = \"acquirer-b\"\nlinks = [\"{}\"]\n\
             request_timeout_ms = 1000\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\n",
            backup.local_addr()
        ),
        "[[routing.routes]]\nprefix = \"4\"\nacquirer = \"acquirer-a\"\nbackup = \"acquirer-b\"\n",
        "",
    );
    let switch = start_switch(&toml).await;
    timeout(
        GUARD,
        switch.shared.acquirers[1].links[0].shared.wait_for(true),
    )
    .await
    .expect("backup link up");
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let a = t.request(&auth(Mti::FINANCIAL, 1, PAN, 100)).await;
    assert_eq!(code(&a), "00");
    assert_eq!(mtis(&backup), vec![800, 200]);
    switch.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_are_answered_or_closed_without_disturbing_others() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut good = Terminal::connect(switch.terminal_addr).await;

    // MTI and STAN readable, DE4 not numeric: 30.
    let mut bad = auth(Mti::FINANCIAL, 9, PAN, 100).to_vec();
    let amount = b"000000000100";
    let at = bad
        .windows(amount.len())
        .position(|w| w == amount)
        .expect("amount in frame");
    bad[at + 3] = b'X';
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let a = t.request(&bad).await;
    assert_eq!(
        (a.mti().value(), a.stan(), code(&a)),
        (210, Some(9), "30".into())
    );

    // No MTI at all: closed.
    let mut t2 = Terminal::connect(switch.terminal_addr).await;
    t2.send(b"XY").await;
    t2.expect_closed().await;

    // A length header over the maximum: closed before the body is read.
    let mut t3 = Terminal::connect(switch.terminal_addr).await;
    t3.send_raw(&[0xFF, 0xFF, b'0', b'2']).await;
    t3.expect_closed().await;

    // Unknown MTI class (0600, administrative; 0500 is the batch
    // close now): the response MTI with 12.
    let mut b = switchyard::iso8583::MessageBuilder::new(
        switchyard::iso8583::specs::iso87ascii(),
        Mti::new(600).expect("an MTI"),
    );
    b.set(7, b"1125101010").set_number(11, 31);
    let a = t.request(&b.to_bytes().expect("packs")).await;
    assert_eq!((a.mti().value(), code(&a)), (610, "12".into()));

    let a = good.request(&auth(Mti::FINANCIAL, 10, PAN, 100)).await;
    assert_eq!(code(&a), "00");
    switch.shutdown().await;
}

#[tokio::test]
async fn network_management_is_answered_locally() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    for (stan, code70) in [(1, "001"), (2, "301"), (3, "002")] {
        let a = t.request(&network(stan, code70)).await;
        assert_eq!(
            (a.mti().value(), a.stan(), code(&a)),
            (810, Some(stan), "00".into())
        );
        assert_eq!(text(&a, 70), code70);
    }
    assert_eq!(
        mtis(&sim),
        vec![800],
        "only the switch's own sign-on went upstream"
    );
    switch.shutdown().await;
}

#[tokio::test]
async fn reversals_and_advices_are_forwarded_and_answered() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    // A reversal request goes online; advices are acknowledged by the
    // switch and reach the host through store-and-forward.
    for (mti, answer, stan) in [
        (Mti::REVERSAL, 410, 21),
        (Mti::REVERSAL_ADVICE, 430, 22),
        (Mti::FINANCIAL_ADVICE, 230, 23),
    ] {
        let a = t.request(&auth(mti, stan, PAN, 100)).await;
        assert_eq!(
            (a.mti().value(), a.stan(), code(&a)),
            (answer, Some(stan), "00".into())
        );
    }
    assert!(
        sim.wait_until(GUARD, |s| s.received().len() == 4).await,
        "{:?}",
        sim.received()
    );
    let mut got = mtis(&sim);
    got.sort_unstable();
    assert_eq!(got, vec![220, 400, 420, 800]);
    switch.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_answers_what_is_in_flight_and_signs_off() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    sim.set_latency(Latency::Fixed(Duration::from_millis(300)));
    let mut t = Terminal::connect(switch.terminal_addr).await;
    for stan in 1..=5 {
        t.send(&auth(Mti::FINANCIAL, stan, PAN, 100)).await;
    }
    assert!(
        sim.wait_until(GUARD, |s| s.stats().received >= 6).await,
        "all five reached the host"
    );
    let stopping = tokio::spawn(switch.shutdown());
    for _ in 1..=5 {
        let a = t.recv().await;
        assert_eq!(code(&a), "00");
    }
    t.expect_closed().await;
    timeout(GUARD, stopping)
        .await
        .expect("stops")
        .expect("no panic");
    let network: Vec<u16> = mtis(&sim).into_iter().filter(|&m| m == 800).collect();
    assert_eq!(network.len(), 2, "sign-on and sign-off");
}

#[tokio::test]
async fn metrics_count_requests_by_mti_and_code() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let admin = switch.admin_addr.expect("admin");
    let (_, before) = http_get(admin, "/metrics").await;
    let labels = ["mti=\"0200\"", "code=\"00\""];
    let n0 = metric(&before, "switchyard_requests_total", &labels);
    let mut t = Terminal::connect(switch.terminal_addr).await;
    for stan in 1..=3 {
        assert_eq!(
            code(&t.request(&auth(Mti::FINANCIAL, stan, PAN, 100)).await),
            "00"
        );
    }
    // Counters are flushed by the actor as it answers; a request after the
    // three makes sure they are visible.
    let (_, after) = http_get(admin, "/metrics").await;
    let n1 = metric(&after, "switchyard_requests_total", &labels);
    assert!(n1 - n0 >= 3.0, "0200/00 went from {n0} to {n1}:\n{after}");
    assert!(after.contains("switchyard_link_up"), "{after}");
    // Sampled at scrape time: three journaled transactions, none in flight.
    assert!(
        metric(&after, "switchyard_journal_fsyncs_total", &[]) >= 1.0,
        "{after}"
    );
    assert_eq!(metric(&after, "switchyard_in_flight", &[]), 0.0);
    assert!(after.contains("switchyard_journal_queue_depth"), "{after}");
    switch.shutdown().await;
}

/// An independent client: pyiso8583 over a socket. Needs a Python with
/// the `iso8583` package: `SWITCHYARD_PYTHON`, or the venv `scripts/test`
/// makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiso8583_client_gets_its_0210() {
    let python = std::env::var("SWITCHYARD_PYTHON").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/interop-venv/bin/python"
        )
        .to_owned()
    });
    if !std::path::Path::new(&python).exists() {
        panic!(
            "no Python with pyiso8583 at {python}: run `bash scripts/test` once, \
             or set SWITCHYARD_PYTHON"
        );
    }
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/pyiso8583_client.py"
    );
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .arg(switch.terminal_addr.to_string())
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0210 39=00 11=314159"), "{stdout}");
    let got = sim.received();
    assert!(
        got.iter()
            .any(|r| r.mti.value() == 200 && r.stan == 314_159 && r.terminal_id == "PYTERM01"),
        "the host saw the python client's 0200"
    );
    switch.shutdown().await;
}

#[tokio::test]
async fn repeats_get_the_original_answer_without_a_second_forward() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let first = t.request(&auth(Mti::FINANCIAL, 61, PAN, 700)).await;
    assert_eq!(code(&first), "00");
    // An x01 repeat and an unchanged resend, even from another connection.
    let repeat = t.request(&auth(Mti::FINANCIAL_REPEAT, 61, PAN, 700)).await;
    let mut other = Terminal::connect(switch.terminal_addr).await;
    let resend = other.request(&auth(Mti::FINANCIAL, 61, PAN, 700)).await;
    for again in [&repeat, &resend] {
        assert_eq!(
            again.frame(),
            first.frame(),
            "the original answer, byte for byte"
        );
    }
    // Same key, different content: a different transaction reusing the STAN.
    let conflict = t.request(&auth(Mti::FINANCIAL, 61, PAN, 701)).await;
    assert_eq!(code(&conflict), "94");
    let forwarded = sim
        .received()
        .iter()
        .filter(|r| r.mti.value() == 200)
        .count();
    assert_eq!(forwarded, 1, "the host saw the transaction once");
    switch.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_every_request_already_sent() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut terminals = Vec::new();
    for i in 0..8u32 {
        let mut t = Terminal::connect(switch.terminal_addr).await;
        // Each connection's actor is up and has answered once.
        let a = t.request(&auth(Mti::FINANCIAL, i * 100, PAN, 100)).await;
        assert_eq!(code(&a), "00");
        terminals.push(t);
    }
    // Written to the sockets (on loopback: in the switch's receive
    // queues) before the stop, and not yet read by the switch.
    for (i, t) in terminals.iter_mut().enumerate() {
        t.send(&auth(Mti::FINANCIAL, i as u32 * 100 + 1, PAN, 100))
            .await;
    }
    timeout(GUARD, switch.shutdown()).await.expect("stops");
    for (i, t) in terminals.iter_mut().enumerate() {
        let a = t.recv_or_closed().await;
        let a = a.unwrap_or_else(|| panic!("connection {i}: closed without an answer"));
        assert_eq!(
            (code(&a), a.stan()),
            ("00".into(), Some(i as u32 * 100 + 1))
        );
        t.expect_closed().await;
    }
}
