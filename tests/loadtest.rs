//! The load generator's accounting against a tiny in-test ISO 8583 peer
//! that answers each request with MTI + 10 and DE39 00, echoing the
//! request's key fields, and can be told to misbehave.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use switchyard::frame::{DEFAULT_MAX_FRAME, FrameCodec, LengthHeader};
use switchyard::iso8583::{Message, Mti, pack_response, specs};
use switchyard::loadgen::{self, LoadConfig, Mix, Mode, Report};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;

const ECHO: &[usize] = &[2, 3, 4, 7, 11, 37, 41, 42, 49, 70];

#[derive(Clone, Copy)]
enum Behaviour {
    Echo,
    /// Leave every Nth request unanswered; close after `close_after`
    /// requests.
    Drop {
        every: u64,
        close_after: u64,
    },
    /// Answer every Nth request with a wrong STAN.
    WrongStan {
        every: u64,
    },
}

/// Starts the peer on its own thread and runtime; returns its address.
fn peer(behaviour: Behaviour) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
            tx.send(listener.local_addr().expect("addr"))
                .expect("sends");
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, behaviour));
            }
        });
    });
    rx.recv().expect("peer address")
}

async fn serve(mut s: TcpStream, behaviour: Behaviour) {
    let _ = s.set_nodelay(true);
    let mut codec = FrameCodec::new(LengthHeader::Binary2, DEFAULT_MAX_FRAME);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let mut n = 0u64;
    loop {
        match s.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Ok(Some(frame)) = codec.decode(&mut rbuf) {
            let Ok(req) = Message::parse(frame, specs::iso87ascii()) else {
                return;
            };
            let network = req.mti() == Mti::NETWORK;
            if !network {
                n += 1;
            }
            let mut set: Vec<(usize, &[u8])> = Vec::new();
            match behaviour {
                Behaviour::Drop { every, close_after } if !network => {
                    if n > close_after {
                        let _ = s.write_all(&wbuf).await;
                        return;
                    }
                    if n % every == 0 {
                        continue;
                    }
                }
                Behaviour::WrongStan { every } if !network && n % every == 0 => {
                    set.push((11, b"999998"));
                }
                _ => {}
            }
            set.push((39, b"00"));
            let at = LengthHeader::Binary2.begin(&mut wbuf);
            if pack_response(&req, ECHO, &set, &mut wbuf).is_err() {
                return;
            }
            let _ = LengthHeader::Binary2.finish(&mut wbuf, at);
        }
        if s.write_all(&wbuf).await.is_err() {
            return;
        }
        wbuf.clear();
    }
}

fn config(target: SocketAddr) -> LoadConfig {
    LoadConfig {
        target,
        connections: 4,
        mode: Mode::Closed { in_flight: 4 },
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
        progress: false,
        ..LoadConfig::default()
    }
}

fn accounted(r: &Report) -> bool {
    r.sent() == r.answered() + r.timed_out() + r.lost()
}

#[test]
fn closed_loop_answers_everything() {
    let r = loadgen::run(config(peer(Behaviour::Echo))).expect("runs");
    assert!(r.sent() > 100, "sent {}", r.sent());
    assert_eq!(r.sent(), r.answered());
    assert_eq!(r.lost(), 0);
    assert_eq!(r.timed_out(), 0);
    assert_eq!(r.mismatched(), 0);
    assert!(r.is_clean());
    let by_code: u64 = r.responses().iter().map(|(_, _, n)| n).sum();
    assert_eq!(by_code, r.answered());
    assert!(
        r.responses().iter().any(|(mti, _, _)| *mti == 410),
        "reversals were sent"
    );
    assert_eq!(r.latency().len(), r.answered());
    let mut human = Vec::new();
    r.print_human(&mut human).expect("prints");
    let human = String::from_utf8(human).expect("utf8");
    assert!(human.contains("p99.99"), "{human}");
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).expect("valid JSON");
    assert_eq!(json["sent"], r.sent());
}

#[test]
fn dropped_and_closed_requests_are_each_counted_once() {
    let target = peer(Behaviour::Drop {
        every: 5,
        close_after: 100,
    });
    // Open loop, so a dropped answer does not stall the connection.
    let mut c = config(target);
    c.mode = Mode::Open { rate: 4000.0 };
    c.warmup = Duration::ZERO;
    c.timeout = Duration::from_millis(100);
    let r = loadgen::run(c).expect("runs");
    assert!(accounted(&r), "{r:?}");
    assert!(r.timed_out() + r.lost() > 0, "{r:?}");
    assert!(r.reconnects() > 0, "{r:?}");
    assert_eq!(r.mismatched(), 0, "{r:?}");
}

#[test]
fn wrong_stans_are_mismatched() {
    let r = loadgen::run(config(peer(Behaviour::WrongStan { every: 7 }))).expect("runs");
    assert!(r.mismatched() > 0, "{r:?}");
    assert!(!r.is_clean());
    assert!(accounted(&r), "{r:?}");
}

#[test]
fn open_loop_delivers_the_offered_rate() {
    let mut c = config(peer(Behaviour::Echo));
    c.mode = Mode::Open { rate: 2000.0 };
    c.duration = Duration::from_secs(1);
    let r = loadgen::run(c).expect("runs");
    let achieved = r.achieved_rate();
    assert!(
        (1000.0..3000.0).contains(&achieved),
        "achieved {achieved}/s"
    );
    assert!(r.is_clean(), "{r:?}");
    assert!(accounted(&r), "{r:?}");
    let hgrm = r.hgrm_text();
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(hgrm.contains("#[Mean    ="));
    let html = r.html();
    assert!(html.contains("<svg"));
    assert!(
        !html.contains("src=") && !html.contains("href="),
        "self-contained"
    );
}

/// Sends far apart (the pacer skips the gaps between them) leave on their
/// schedule: the bound only catches a pacer that is off by whole timer
/// periods (a 20 ms offset was such a bug); precision itself is measured
/// in the throughput run and the report, not asserted on a shared box.
#[test]
fn sparse_open_loop_sends_on_time() {
    let mut c = config(peer(Behaviour::Echo));
    c.mode = Mode::Open { rate: 200.0 };
    c.duration = Duration::from_secs(1);
    let r = loadgen::run(c).expect("runs");
    assert!((150..=250).contains(&r.sent()), "sent {}", r.sent());
    assert!(r.is_clean(), "{r:?}");
    assert!(r.lag_us(50.0) < 10_000, "lag p50 {} µs", r.lag_us(50.0));
}

#[test]
fn a_seed_fixes_the_message_stream() {
    let c = LoadConfig {
        mix: Mix {
            purchase: 40,
            authorization: 20,
            reversal: 20,
            fraud: 20,
        },
        ..LoadConfig::default()
    };
    let a = loadgen::sample_messages(&c, 3, 200);
    let b = loadgen::sample_messages(&c, 3, 200);
    assert_eq!(a.len(), 200);
    assert_eq!(a, b);
    let other = loadgen::sample_messages(
        &LoadConfig {
            seed: 2,
            ..c.clone()
        },
        3,
        200,
    );
    assert_ne!(a, other);
    // Every message parses and carries what the switch requires.
    for f in &a {
        let m = Message::parse(bytes::Bytes::copy_from_slice(&f[2..]), specs::iso87ascii())
            .expect("parses");
        for n in [2, 3, 4, 7, 11, 41, 42, 49] {
            assert!(m.has(n), "field {n} in {}", m.dump());
        }
        assert!(m.pan().expect("pan").luhn_ok());
    }
}

/// Throughput against the echo peer (not a test: run it by hand with
/// `cargo test --release --test loadtest -- --ignored --nocapture`).
/// `LOADTEST_RATE` (open loop), `LOADTEST_CONNECTIONS` and
/// `LOADTEST_IN_FLIGHT` change the load.
#[test]
#[ignore]
fn throughput_against_echo_peer() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let mut c = config(peer(Behaviour::Echo));
    c.connections = env("LOADTEST_CONNECTIONS").map_or(16, |v| v as usize);
    c.mode = match env("LOADTEST_RATE") {
        Some(rate) => Mode::Open { rate },
        None => Mode::Closed {
            in_flight: env("LOADTEST_IN_FLIGHT").map_or(64, |v| v as usize),
        },
    };
    c.duration = Duration::from_secs(5);
    c.warmup = Duration::from_secs(1);
    c.timeout = Duration::from_secs(5);
    let r = loadgen::run(c).expect("runs");
    r.print_human(&mut std::io::stdout()).expect("prints");
}
