//! Hostile and excessive input: broken frames, slow senders, idle sockets
//! by the thousand, more requests than the limits allow. The switch must
//! answer what it can, close what it must, and keep serving everyone else.

mod common;

use std::time::{Duration, Instant};

use common::*;
use switchyard::iso8583::Mti;
use switchyard::tools::sim::Latency;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A framed message body with a 2-byte header.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// "0200", a hex bitmap with `fields`, then `data` as given.
fn raw_0200(fields: &[usize], data: &str) -> Vec<u8> {
    let mut bits = 0u64;
    for &f in fields {
        bits |= 1 << (64 - f);
    }
    format!("0200{bits:016X}{data}").into_bytes()
}

#[tokio::test]
async fn broken_frames_are_answered_30_or_closed_and_others_carry_on() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut good = Terminal::connect(switch.terminal_addr).await;
    let addr = switch.terminal_addr;

    // Closed: nothing to answer to.
    let closers: Vec<(&str, Vec<u8>)> = vec![
        ("zero length header", vec![0, 0]),
        (
            "65535 length header",
            vec![0xFF, 0xFF, b'0', b'2', b'0', b'0'],
        ),
        (
            "bitmap declares fields the frame lacks",
            framed(&raw_0200(&[2, 3, 4, 11, 41], "164761739001010010000000")),
        ),
        (
            "LLVAR PAN over its maximum",
            framed(&raw_0200(&[2, 11], "254761739001010010000000000000123456")),
        ),
        ("no MTI", framed(b"02")),
    ];
    for (what, bytes) in &closers {
        let mut t = Terminal::connect(addr).await;
        t.send_raw(bytes).await;
        let got = t.recv_or_closed().await;
        assert!(got.is_none(), "{what}: expected a close, got an answer");
    }

    // A frame cut short by the sender: the connection ends, nothing else.
    let mut cut = TcpStream::connect(addr).await.expect("connects");
    let whole = framed(&auth(Mti::FINANCIAL, 5, PAN, 100));
    cut.write_all(&whole[..whole.len() / 2])
        .await
        .expect("writes");
    cut.shutdown().await.expect("half-close");

    // Answered 30: MTI and STAN readable, something else wrong.
    let answered: Vec<(&str, Vec<u8>)> = vec![
        (
            "DE32 (LLVAR, max 11) declares 15",
            raw_0200(&[3, 11, 32, 41], "000000000031")
                .into_iter()
                .chain(b"15123456789012345TERM0001".iter().copied())
                .collect(),
        ),
        (
            "non-numeric amount",
            raw_0200(&[3, 4, 11, 41], "0000000000001X0000000032TERM0001"),
        ),
    ];
    for (what, body) in &answered {
        let mut t = Terminal::connect(addr).await;
        t.send(body).await;
        let a = t.recv_or_closed().await;
        let a = a.unwrap_or_else(|| panic!("{what}: closed instead of answered"));
        assert_eq!((a.mti().value(), code(&a)), (210, "30".into()), "{what}");
        assert!(
            matches!(a.stan(), Some(31) | Some(32)),
            "{what}: STAN echoed"
        );
    }

    let a = good.request(&auth(Mti::FINANCIAL, 1, PAN, 100)).await;
    assert_eq!(code(&a), "00");
    switch.shutdown().await;
}

#[tokio::test]
async fn a_one_byte_at_a_time_sender_is_closed_by_the_frame_deadline() {
    let sim = start_sim().await;
    let switch = start_switch(&config_terminals(
        &[sim.local_addr()],
        "frame_timeout_ms = 400",
    ))
    .await;
    wait_links_up(&switch).await;
    let frame = framed(&auth(Mti::FINANCIAL, 9, PAN, 100));
    let mut slow = Terminal::connect(switch.terminal_addr).await;
    let mut good = Terminal::connect(switch.terminal_addr).await;
    let started = Instant::now();
    let mut closed = false;
    for &b in &frame {
        // A real slow sender: this pace is what is under test.
        if slow.stream.write_all(&[b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
        // Everyone else is served meanwhile.
        if b == frame[10] {
            assert_eq!(
                code(&good.request(&auth(Mti::FINANCIAL, 2, PAN, 100)).await),
                "00"
            );
        }
    }
    if !closed {
        slow.expect_closed().await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed long before the whole frame could trickle in"
    );
    switch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_sockets_do_not_stop_service() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        idle.push(
            TcpStream::connect(switch.terminal_addr)
                .await
                .expect("connects"),
        );
    }
    let mut t = Terminal::connect(switch.terminal_addr).await;
    for stan in 1..=20 {
        assert_eq!(
            code(&t.request(&auth(Mti::FINANCIAL, stan, PAN, 100)).await),
            "00"
        );
    }
    let (_, health) = http_get(switch.admin_addr.expect("admin"), "/health").await;
    let connections: usize = health
        .split("\"connections\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(connections >= 2000, "{health}");
    drop(idle);
    switch.shutdown().await;
}

#[tokio::test]
async fn connection_limits_refuse_the_excess_only() {
    let sim = start_sim().await;
    let switch = start_switch(&config_terminals(
        &[sim.local_addr()],
        "max_connections = 20\nmax_connections_per_ip = 20",
    ))
    .await;
    wait_links_up(&switch).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(Terminal::connect(switch.terminal_addr).await);
    }
    // Proves all 20 were accepted before the next one arrives.
    for (i, t) in held.iter_mut().enumerate() {
        let a = t.request(&network(i as u32 + 1, "301")).await;
        assert_eq!(code(&a), "00");
    }
    let mut extra = Terminal::connect(switch.terminal_addr).await;
    extra.expect_closed().await;
    let a = held[0].request(&auth(Mti::FINANCIAL, 1, PAN, 100)).await;
    assert_eq!(code(&a), "00");
    switch.shutdown().await;
}

#[tokio::test]
async fn over_the_in_flight_limits_the_excess_gets_a_fast_96() {
    let sim = start_sim().await;
    let switch = start_switch(&config_terminals(
        &[sim.local_addr()],
        "max_in_flight_per_connection = 4",
    ))
    .await;
    wait_links_up(&switch).await;
    sim.set_latency(Latency::Fixed(Duration::from_millis(400)));
    let mut t = Terminal::connect(switch.terminal_addr).await;
    for stan in 1..=10 {
        t.send(&auth(Mti::FINANCIAL, stan, PAN, 100)).await;
    }
    // The six over the limit are refused before any accepted one is
    // answered; the four accepted are then approved.
    let mut order = Vec::new();
    for _ in 1..=10 {
        order.push(code(&t.recv().await));
    }
    assert_eq!(order[..6], ["96"; 6], "{order:?}");
    assert_eq!(order[6..], ["00"; 4], "{order:?}");
    let forwarded = sim
        .received()
        .iter()
        .filter(|r| r.mti.value() == 200)
        .count();
    assert_eq!(forwarded, 4);
    switch.shutdown().await;
}

#[tokio::test]
async fn a_very_slow_host_turns_into_fast_91s_not_memory() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "request_timeout_ms = 300", "")).await;
    wait_links_up(&switch).await;
    sim.set_latency(Latency::Fixed(Duration::from_secs(5)));
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let started = Instant::now();
    for stan in 1..=50 {
        t.send(&auth(Mti::FINANCIAL, stan, PAN, 100)).await;
    }
    for _ in 1..=50 {
        assert_eq!(code(&t.recv().await), "91");
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered by the switch's timeout, not the host's 5 s"
    );
    assert_eq!(
        switch
            .shared
            .in_flight
            .load(std::sync::atomic::Ordering::Acquire),
        0,
        "nothing left in flight"
    );
    sim.set_latency(Latency::None);
    switch.shutdown().await;
}

#[tokio::test]
async fn a_terminal_that_never_reads_is_cut_off_and_others_are_served() {
    let sim = start_sim().await;
    let switch = start_switch(&config_terminals(
        &[sim.local_addr()],
        "max_write_buffer = 65536\nwrite_stall_timeout_ms = 500",
    ))
    .await;
    wait_links_up(&switch).await;
    // A small receive window, so the answers back up into the switch soon.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut hog = socket
        .connect(switch.terminal_addr)
        .await
        .expect("connects");
    let batch: Vec<u8> = (0..200u32)
        .flat_map(|stan| framed(&network(stan, "301")))
        .collect();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = written.clone();
    let writer = tokio::spawn(async move {
        loop {
            if let Err(e) = hog.write_all(&batch).await {
                return e;
            }
            count.fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Meanwhile, another terminal is served as usual.
    let mut t = Terminal::connect(switch.terminal_addr).await;
    for stan in 1..=3 {
        let a = t.request(&auth(Mti::FINANCIAL, stan, PAN, 100)).await;
        assert_eq!(code(&a), "00");
    }
    // The one that never reads is disconnected once its answers have sat
    // unread past the stall deadline (its writes then fail).
    let ended = tokio::time::timeout(GUARD, writer).await;
    let err = ended
        .expect("the switch disconnects a terminal that never reads")
        .expect("no panic");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
    let sent = written.load(std::sync::atomic::Ordering::Relaxed);
    let a = t.request(&auth(Mti::FINANCIAL, 4, PAN, 100)).await;
    assert_eq!(
        code(&a),
        "00",
        "still served after {sent} bytes from the other"
    );
    let admin = switch.admin_addr.expect("admin");
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(
        metric(&metrics, "switchyard_terminal_write_stalled_total", &[]) >= 1.0,
        "{metrics}"
    );
    switch.shutdown().await;
}
