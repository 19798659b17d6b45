//! Drain over the admin API: `POST /api/actions/drain` stops the real
//! `switchyard run` process in order, as SIGTERM does: a request in
//! flight at the drain is still answered, then the process exits 0.

mod common;

use std::time::Duration;

use common::*;
use switchyard::iso8583::Mti;
use switchyard::tools::sim::{Latency, SimConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A bare HTTP/1.0 POST with an empty body: its status code.
async fn http_post(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("admin connects");
    let head = format!("POST {path} HTTP/1.0\r\nHost: test\r\nContent-Length: 0\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("writes");
    let mut out = Vec::new();
    timeout(GUARD, s.read_to_end(&mut out))
        .await
        .expect("admin answers")
        .expect("reads");
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_answers_what_is_in_flight_and_exits_0() {
    // The host takes a while: the request is in flight when the drain comes.
    let sim = start_sim_with(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(500)),
        ..sim_config()
    })
    .await;
    let dir = fresh_journal_dir();
    std::fs::create_dir_all(&dir).expect("test dir");
    let path = dir.join("switch.toml");
    std::fs::write(&path, config(&[sim.local_addr()], "", "")).expect("config");
    let (mut child, banner) = start_process_banner(&path).await;
    let admin = banner.admin.expect("an admin address");
    let mut t = Terminal::connect(banner.terminals).await;
    // Up: a first request answered.
    let mut stan = 1;
    loop {
        if code(
            &t.request(&auth_from(Mti::FINANCIAL, stan, PAN, 100, "DRAIN001"))
                .await,
        ) == "00"
        {
            break;
        }
        stan += 1;
        assert!(stan < 500, "the link never came up");
        // The switch says 91 until its link is up: try again shortly.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stan += 1;
    t.send(&auth_from(Mti::FINANCIAL, stan, PAN, 100, "DRAIN001"))
        .await;
    // The request reached the host before the drain is asked for.
    let reached = sim
        .wait_until(GUARD, |s| {
            s.received()
                .iter()
                .any(|r| r.stan == stan && r.terminal_id == "DRAIN001")
        })
        .await;
    assert!(reached, "the request reached the host");
    assert_eq!(http_post(admin, "/api/actions/drain").await, 202);
    let answer = t.recv().await;
    assert_eq!(code(&answer), "00", "the request in flight is answered");
    // A request sent after the stop is never taken: the switch ends the
    // connection after its answers (FIN, not a reset, which could discard
    // answers on their way), reads and throws away what comes after, and
    // the terminal knows that what it has no answer for may go elsewhere.
    let late = stan + 1;
    t.send(&auth_from(Mti::FINANCIAL, late, PAN, 100, "DRAIN001"))
        .await;
    let mut rest = Vec::new();
    let end = timeout(GUARD, t.stream.read_to_end(&mut rest))
        .await
        .expect("the switch ends the connection");
    assert!(end.is_ok(), "a clean end, not a reset: {end:?}");
    assert!(
        rest.is_empty(),
        "no answer to a request sent after the stop"
    );
    let status = timeout(GUARD, child.wait())
        .await
        .expect("the process exits after the drain")
        .expect("waits");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        !sim.received()
            .iter()
            .any(|r| r.stan == late && r.terminal_id == "DRAIN001"),
        "the request sent after the stop never reached the host"
    );
}
