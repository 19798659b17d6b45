//! The acquirer host simulator over real sockets on 127.0.0.1: answers,
//! decisions, faults, the control port and the record.
//!
//! Timeouts are used only to conclude that no answer came ("nothing within
//! 300 ms") and as a guard against hanging; never as upper bounds on how
//! fast the simulator is.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchyard::frame::{FrameCodec, LengthHeader};
use switchyard::iso8583::{Message, MessageBuilder, Mti, specs};
use switchyard::tools::sim::{self, Latency, Received, SimConfig, SimHandle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_util::codec::{Decoder, Encoder};

/// How long to wait before concluding that no answer is coming.
const SILENCE: Duration = Duration::from_millis(300);
/// Guard against a hung test; answers normally take microseconds.
const GUARD: Duration = Duration::from_secs(10);

const PAN: &str = "4761739001010010";

fn config() -> SimConfig {
    SimConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..SimConfig::default()
    }
}

async fn start(config: SimConfig) -> SimHandle {
    sim::spawn(config).await.expect("simulator starts")
}

/// A terminal-side test client speaking framed ISO 8583.
struct Client {
    stream: TcpStream,
    codec: FrameCodec,
    rbuf: BytesMut,
}

impl Client {
    async fn connect(sim: &SimHandle) -> Client {
        let stream = TcpStream::connect(sim.local_addr())
            .await
            .expect("connects");
        Client {
            stream,
            codec: FrameCodec::new(LengthHeader::Binary2, 8192),
            rbuf: BytesMut::new(),
        }
    }

    async fn send(&mut self, body: &[u8]) {
        let mut out = BytesMut::new();
        self.codec.encode(body, &mut out).expect("frames");
        self.stream.write_all(&out).await.expect("writes");
    }

    /// The next answer; `None` once the simulator has closed the connection.
    async fn recv_or_closed(&mut self) -> Option<Message> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.rbuf).expect("well framed") {
                return Some(Message::parse(frame, specs::iso87ascii()).expect("answer parses"));
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => return None,
                Ok(_) => {}
                // A close with unread data arrives as a reset.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    async fn recv(&mut self) -> Message {
        match timeout(GUARD, self.recv_or_closed()).await {
            Ok(Some(m)) => m,
            Ok(None) => panic!("simulator closed the connection"),
            Err(_) => panic!("no answer within {GUARD:?}"),
        }
    }

    /// Asserts that nothing arrives for a while.
    async fn expect_silence(&mut self) {
        if let Ok(got) = timeout(SILENCE, self.recv_or_closed()).await {
            panic!("expected no answer, got {got:?}");
        }
    }

    async fn expect_closed(&mut self) {
        match timeout(GUARD, self.recv_or_closed()).await {
            Ok(None) => {}
            Ok(Some(m)) => panic!("expected the connection closed, got {m:?}"),
            Err(_) => panic!("connection still open after {GUARD:?}"),
        }
    }

    async fn round_trip(&mut self, body: &[u8]) -> Message {
        self.send(body).await;
        self.recv().await
    }
}

fn txn(mti: Mti, stan: u32, amount: u64) -> Bytes {
    txn_with(mti, stan, amount, PAN, "TERM0001")
}

fn txn_with(mti: Mti, stan: u32, amount: u64, pan: &str, tid: &str) -> Bytes {
    let mut b = MessageBuilder::new(specs::iso87ascii(), mti);
    b.set(2, pan.as_bytes())
        .set(3, b"000000")
        .set_number(4, amount)
        .set(7, b"0102030405")
        .set_number(11, u64::from(stan))
        .set(12, b"030405")
        .set(13, b"0102")
        .set(22, b"051")
        .set(35, b"4761739001010010=2512")
        .set(37, b"000000123456")
        .set(41, tid.as_bytes())
        .set(42, b"MERCHANT0000001")
        .set(49, b"978")
        .set(52, &[1, 2, 3, 4, 5, 6, 7, 8]);
    b.to_bytes().expect("request packs").freeze()
}

fn reversal(mti: Mti, stan: u32, original_stan: u32) -> Bytes {
    let original = format!("0200{original_stan:06}0102030405{:011}{:011}", 0, 0);
    let mut b = MessageBuilder::new(specs::iso87ascii(), mti);
    b.set(2, PAN.as_bytes())
        .set(3, b"000000")
        .set_number(4, 1500)
        .set_number(11, u64::from(stan))
        .set(41, b"TERM0001")
        .set(90, original.as_bytes());
    b.to_bytes().expect("reversal packs").freeze()
}

fn echo(stan: u32) -> Bytes {
    let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::NETWORK);
    b.set(7, b"0102030405")
        .set_number(11, u64::from(stan))
        .set(41, b"TERM0001")
        .set(70, b"301");
    b.to_bytes().expect("echo packs").freeze()
}

fn rc(m: &Message) -> [u8; 2] {
    m.response_code().expect("answer has DE39")
}

fn text(m: &Message, n: usize) -> Vec<u8> {
    m.field(n).map(<[u8]>::to_vec).unwrap_or_default()
}

async fn wait_received(sim: &SimHandle, n: u64) {
    assert!(
        sim.wait_until(GUARD, |s| s.stats().received >= n).await,
        "simulator received {} of {n}",
        sim.stats().received
    );
}

#[tokio::test]
async fn approves_and_echoes_the_matching_fields() {
    let sim = start(config()).await;
    let mut c = Client::connect(&sim).await;
    let req = txn(Mti::FINANCIAL, 42, 1234);
    let resp = c.round_trip(&req).await;
    assert_eq!(resp.mti(), Mti::FINANCIAL_RESPONSE);
    assert_eq!(rc(&resp), *b"00");
    let approval = resp.approval_code().expect("DE38 on approval");
    assert_eq!(approval.len(), 6);
    assert_eq!(resp.stan(), Some(42));
    assert_eq!(text(&resp, 41), b"TERM0001");
    assert_eq!(resp.amount_minor(), Some(1234));
    assert_eq!(text(&resp, 2), PAN.as_bytes());
    for n in [3, 7, 12, 13, 22, 37, 42, 49] {
        let req = Message::parse(req.clone(), specs::iso87ascii()).expect("parses");
        assert_eq!(resp.field(n), req.field(n), "DE{n} echoed");
    }
    for n in [35, 45, 52, 55] {
        assert!(!resp.has(n), "DE{n} must never be echoed");
    }

    // 0100 and the repeats are decided the same way; codes differ.
    let auth = c.round_trip(&txn(Mti::AUTHORIZATION, 43, 1)).await;
    assert_eq!(auth.mti(), Mti::AUTHORIZATION_RESPONSE);
    assert_eq!(rc(&auth), *b"00");
    assert_ne!(auth.approval_code(), Some(approval));
    for (req, resp) in [
        (Mti::AUTHORIZATION_REPEAT, 110),
        (Mti::FINANCIAL_REPEAT, 210),
    ] {
        let r = c.round_trip(&txn(req, 44, 1)).await;
        assert_eq!(r.mti().value(), resp);
        assert_eq!(rc(&r), *b"00");
    }
}

#[tokio::test]
async fn declines_over_the_amount_with_51() {
    let sim = start(SimConfig {
        decline_over_amount: Some(10_000),
        ..config()
    })
    .await;
    let mut c = Client::connect(&sim).await;
    let over = c.round_trip(&txn(Mti::FINANCIAL, 1, 10_001)).await;
    assert_eq!(rc(&over), *b"51");
    assert!(!over.has(38), "no approval code on a decline");
    let at = c.round_trip(&txn(Mti::FINANCIAL, 2, 10_000)).await;
    assert_eq!(rc(&at), *b"00");
    // Reversals are acknowledged whatever the amount.
    let rev = c.round_trip(&txn(Mti::REVERSAL, 3, 99_999)).await;
    assert_eq!(rc(&rev), *b"00");
}

#[tokio::test]
async fn declines_card_ranges_with_05() {
    let sim = start(SimConfig {
        decline_prefixes: vec!["5555".into(), "4000".into()],
        ..config()
    })
    .await;
    let mut c = Client::connect(&sim).await;
    for (pan, code) in [
        ("5555000011112222", *b"05"),
        ("4000123412341234", *b"05"),
        ("4761739001010010", *b"00"),
        ("5554000011112222", *b"00"),
    ] {
        let r = c
            .round_trip(&txn_with(Mti::AUTHORIZATION, 1, 100, pan, "TERM0001"))
            .await;
        assert_eq!(rc(&r), code, "{pan}");
    }
}

#[tokio::test]
async fn decline_ratio_one_declines_everything() {
    let sim = start(SimConfig {
        decline_ratio: 1.0,
        ..config()
    })
    .await;
    let mut c = Client::connect(&sim).await;
    for stan in 1..=5 {
        assert_eq!(
            rc(&c.round_trip(&txn(Mti::FINANCIAL, stan, 1)).await),
            *b"05"
        );
    }
}

#[tokio::test]
async fn answers_network_management() {
    let sim = start(config()).await;
    let mut c = Client::connect(&sim).await;
    let r = c.round_trip(&echo(77)).await;
    assert_eq!(r.mti(), Mti::NETWORK_RESPONSE);
    assert_eq!(rc(&r), *b"00");
    assert_eq!(r.stan(), Some(77));
    assert_eq!(r.network_code(), Some(301));
    assert_eq!(text(&r, 7), b"0102030405");
    assert_eq!(text(&r, 41), b"TERM0001");
    assert!(!r.has(38));
}

#[tokio::test]
async fn acknowledges_reversals_and_advices_and_refuses_the_rest() {
    let sim = start(config()).await;
    let mut c = Client::connect(&sim).await;
    for (req, resp, code) in [
        (Mti::REVERSAL_ADVICE, 430, *b"00"),
        (Mti::REVERSAL_ADVICE_REPEAT, 430, *b"00"),
        (Mti::REVERSAL, 410, *b"00"),
        (Mti::REVERSAL_REPEAT, 410, *b"00"),
        (Mti::FINANCIAL_ADVICE, 230, *b"00"),
        (Mti::FINANCIAL_ADVICE_REPEAT, 230, *b"00"),
        (Mti::AUTHORIZATION_ADVICE, 130, *b"00"),
        (Mti::AUTHORIZATION_ADVICE_REPEAT, 130, *b"00"),
        (Mti::RECONCILIATION, 510, *b"12"),
    ] {
        let r = c.round_trip(&reversal(req, 9, 8)).await;
        assert_eq!(r.mti().value(), resp, "{req}");
        assert_eq!(rc(&r), code, "{req}");
        assert_eq!(r.stan(), Some(9));
        assert!(!r.has(38), "{req}: no approval code");
    }
    // A response sent to the host is not a request: ignored, not answered.
    c.send(&txn(Mti::FINANCIAL_RESPONSE, 10, 1)).await;
    let r = c.round_trip(&echo(11)).await;
    assert_eq!(r.stan(), Some(11));
    assert_eq!(sim.stats().ignored, 1);
}

#[tokio::test]
async fn fixed_latency_is_honoured() {
    let latency = Duration::from_millis(150);
    let sim = start(SimConfig {
        latency: Latency::Fixed(latency),
        ..config()
    })
    .await;
    let mut c = Client::connect(&sim).await;
    let sent = Instant::now();
    let r = c.round_trip(&txn(Mti::FINANCIAL, 5, 100)).await;
    assert!(
        sent.elapsed() >= latency,
        "answered after {:?}",
        sent.elapsed()
    );
    assert_eq!(r.stan(), Some(5));
    assert_eq!(rc(&r), *b"00");

    // Changed at run time, to a random range and then off.
    sim.set_latency(Latency::Uniform(
        Duration::from_millis(60),
        Duration::from_millis(90),
    ));
    assert_eq!(
        sim.latency(),
        Latency::Uniform(Duration::from_millis(60), Duration::from_millis(90))
    );
    let sent = Instant::now();
    c.round_trip(&echo(6)).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(60),
        "{:?}",
        sent.elapsed()
    );
    sim.set_latency(Latency::None);
    assert_eq!(sim.latency(), Latency::None);
    assert_eq!(c.round_trip(&echo(7)).await.stan(), Some(7));
}

#[tokio::test]
async fn drop_every_second_transaction_answer() {
    let sim = start(SimConfig {
        drop_every: 2,
        ..config()
    })
    .await;
    let mut c = Client::connect(&sim).await;
    // 0800s are answered and not counted: transactions 2 and 4 are dropped.
    c.send(&txn(Mti::FINANCIAL, 1, 1)).await;
    c.send(&echo(100)).await;
    for stan in 2..=4 {
        c.send(&txn(Mti::FINANCIAL, stan, 1)).await;
    }
    c.send(&reversal(Mti::REVERSAL_ADVICE, 5, 1)).await;
    c.send(&reversal(Mti::REVERSAL_ADVICE, 6, 1)).await;
    c.send(&echo(101)).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(c.recv().await.stan().expect("DE11"));
    }
    // Answers are written in order: the last 0810 proves nothing else is
    // coming for 2, 4 and 6.
    assert_eq!(got, [1, 100, 3, 5, 101]);
    c.expect_silence().await;

    let dropped: Vec<u32> = sim
        .received()
        .iter()
        .filter(|r| r.dropped)
        .map(|r| r.stan)
        .collect();
    assert_eq!(dropped, [2, 4, 6]);
    let s = sim.stats();
    assert_eq!((s.received, s.answered, s.dropped), (8, 5, 3));

    // Set at run time the count starts afresh (6 transactions were
    // counted so far: without the restart 11 would be the one dropped);
    // 0 turns it off.
    sim.set_drop_every(4);
    for stan in 10..=13 {
        c.send(&txn(Mti::FINANCIAL, stan, 1)).await;
    }
    wait_received(&sim, 12).await;
    sim.set_drop_every(0);
    c.send(&txn(Mti::FINANCIAL, 14, 1)).await;
    c.send(&txn(Mti::FINANCIAL, 15, 1)).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(c.recv().await.stan().expect("DE11"));
    }
    assert_eq!(got, [10, 11, 12, 14, 15]);
}

#[tokio::test]
async fn stop_and_resume() {
    let sim = start(config()).await;
    let mut c = Client::connect(&sim).await;
    c.round_trip(&echo(1)).await;
    sim.stop_answering();
    c.send(&echo(2)).await;
    c.send(&txn(Mti::FINANCIAL, 3, 1)).await;
    wait_received(&sim, 3).await;
    c.expect_silence().await;
    sim.resume();
    // What arrived while stopped is never answered: the next answer is 4's.
    let r = c.round_trip(&txn(Mti::FINANCIAL, 4, 1)).await;
    assert_eq!(r.stan(), Some(4));
    let rec = sim.received();
    let stopped: Vec<(u32, bool, Option<[u8; 2]>)> = rec
        .iter()
        .map(|r| (r.stan, r.dropped, r.response_code))
        .collect();
    assert_eq!(
        stopped,
        [
            (1, false, Some(*b"00")),
            (2, true, None),
            (3, true, None),
            (4, false, Some(*b"00"))
        ]
    );
}

#[tokio::test]
async fn starts_stopped_when_asked() {
    let sim = start(SimConfig {
        stopped: true,
        ..config()
    })
    .await;
    let mut c = Client::connect(&sim).await;
    c.send(&echo(1)).await;
    wait_received(&sim, 1).await;
    c.expect_silence().await;
    sim.resume();
    assert_eq!(c.round_trip(&echo(2)).await.stan(), Some(2));
}

#[tokio::test]
async fn wrong_stan_alters_transactions_only() {
    let sim = start(SimConfig {
        wrong_stan: true,
        ..config()
    })
    .await;
    let mut c = Client::connect(&sim).await;
    assert_eq!(
        c.round_trip(&txn(Mti::FINANCIAL, 41, 1)).await.stan(),
        Some(42)
    );
    assert_eq!(
        c.round_trip(&txn(Mti::FINANCIAL, 999_999, 1)).await.stan(),
        Some(0)
    );
    assert_eq!(
        c.round_trip(&reversal(Mti::REVERSAL_ADVICE, 7, 1))
            .await
            .stan(),
        Some(8)
    );
    // The link itself stays healthy: network management is answered right.
    assert_eq!(c.round_trip(&echo(50)).await.stan(), Some(50));
    sim.set_wrong_stan(false);
    assert_eq!(
        c.round_trip(&txn(Mti::FINANCIAL, 43, 1)).await.stan(),
        Some(43)
    );
    // The record keeps the STAN that was received.
    assert_eq!(sim.received()[0].stan, 41);
}

#[tokio::test]
async fn close_drops_current_connections_and_can_refuse_new_ones() {
    let sim = start(config()).await;
    let mut a = Client::connect(&sim).await;
    let mut b = Client::connect(&sim).await;
    a.round_trip(&echo(1)).await;
    b.round_trip(&echo(2)).await;
    assert_eq!(sim.stats().connections, 2);
    sim.close_connections();
    a.expect_closed().await;
    b.expect_closed().await;
    assert!(sim.wait_until(GUARD, |s| s.stats().connections == 0).await);

    // A one-off close: new connections are served.
    let mut c = Client::connect(&sim).await;
    assert_eq!(c.round_trip(&echo(3)).await.stan(), Some(3));

    sim.set_refuse_connections(true);
    let mut d = Client::connect(&sim).await;
    d.expect_closed().await;
    assert_eq!(sim.stats().refused, 1);
    // Refusing new connections leaves the current one alone.
    assert_eq!(c.round_trip(&echo(4)).await.stan(), Some(4));
    sim.set_refuse_connections(false);
    let mut e = Client::connect(&sim).await;
    assert_eq!(e.round_trip(&echo(5)).await.stan(), Some(5));
    assert_eq!(sim.stats().accepted, 4);
}

#[tokio::test]
async fn close_loses_answers_still_waiting_for_their_latency() {
    let sim = start(SimConfig {
        latency: Latency::Fixed(Duration::from_secs(30)),
        ..config()
    })
    .await;
    let mut c = Client::connect(&sim).await;
    c.send(&txn(Mti::FINANCIAL, 1, 1)).await;
    wait_received(&sim, 1).await;
    sim.close_connections();
    c.expect_closed().await;
    assert_eq!(sim.stats().answered, 0);
}

/// One command to the control port, its answer line.
async fn command(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    cmd: &str,
) -> String {
    w.write_all(format!("{cmd}\n").as_bytes())
        .await
        .expect("control write");
    timeout(GUARD, lines.next_line())
        .await
        .expect("control answers")
        .expect("control read")
        .expect("control line")
}

#[tokio::test]
async fn control_port_commands() {
    let sim = start(SimConfig {
        control: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..config()
    })
    .await;
    let addr = sim.control_addr().expect("control port bound");
    let (r, mut w) = TcpStream::connect(addr)
        .await
        .expect("control connects")
        .into_split();
    let mut lines = BufReader::new(r).lines();
    let mut c = Client::connect(&sim).await;

    assert_eq!(command(&mut lines, &mut w, "latency 50").await, "ok");
    assert_eq!(sim.latency(), Latency::Fixed(Duration::from_millis(50)));
    let sent = Instant::now();
    c.round_trip(&echo(1)).await;
    assert!(sent.elapsed() >= Duration::from_millis(50));
    assert_eq!(command(&mut lines, &mut w, "latency 10-100").await, "ok");
    assert_eq!(
        sim.latency(),
        Latency::Uniform(Duration::from_millis(10), Duration::from_millis(100))
    );
    assert_eq!(command(&mut lines, &mut w, "latency 0").await, "ok");
    assert_eq!(sim.latency(), Latency::None);

    assert_eq!(command(&mut lines, &mut w, "drop-every 2").await, "ok");
    c.send(&txn(Mti::FINANCIAL, 2, 1)).await;
    c.send(&txn(Mti::FINANCIAL, 3, 1)).await;
    c.send(&txn(Mti::FINANCIAL, 4, 1)).await;
    assert_eq!(c.recv().await.stan(), Some(2));
    assert_eq!(c.recv().await.stan(), Some(4));
    assert_eq!(command(&mut lines, &mut w, "drop-every 0").await, "ok");

    assert_eq!(command(&mut lines, &mut w, "stop").await, "ok");
    c.send(&echo(5)).await;
    wait_received(&sim, 5).await;
    c.expect_silence().await;
    assert_eq!(command(&mut lines, &mut w, "resume").await, "ok");
    assert_eq!(c.round_trip(&echo(6)).await.stan(), Some(6));

    assert_eq!(command(&mut lines, &mut w, "wrong-stan on").await, "ok");
    assert_eq!(
        c.round_trip(&txn(Mti::FINANCIAL, 7, 1)).await.stan(),
        Some(8)
    );
    assert_eq!(command(&mut lines, &mut w, "wrong-stan off").await, "ok");
    assert_eq!(
        c.round_trip(&txn(Mti::FINANCIAL, 9, 1)).await.stan(),
        Some(9)
    );

    let stats = command(&mut lines, &mut w, "stats").await;
    assert!(
        stats.starts_with("received=8 answered=6 dropped=2 unparseable=0"),
        "{stats}"
    );
    assert!(stats.contains("connections=1"), "{stats}");

    assert_eq!(command(&mut lines, &mut w, "close").await, "ok");
    c.expect_closed().await;
    assert_eq!(command(&mut lines, &mut w, "close on").await, "ok");
    Client::connect(&sim).await.expect_closed().await;
    assert_eq!(command(&mut lines, &mut w, "close off").await, "ok");
    let mut c = Client::connect(&sim).await;
    assert_eq!(c.round_trip(&echo(10)).await.stan(), Some(10));

    let err = command(&mut lines, &mut w, "reboot now").await;
    assert!(err.starts_with("error: "), "{err}");
    let err = command(&mut lines, &mut w, "latency soon").await;
    assert!(err.starts_with("error: "), "{err}");
    // The session survives errors.
    assert_eq!(command(&mut lines, &mut w, "resume").await, "ok");
}

#[tokio::test]
async fn pipelined_requests_are_all_answered() {
    let sim = start(config()).await;
    let mut c = Client::connect(&sim).await;
    pipeline(&mut c, 1..=100).await;

    // With random latency answers come out of order; all still arrive.
    sim.set_latency(Latency::Uniform(
        Duration::from_millis(1),
        Duration::from_millis(30),
    ));
    pipeline(&mut c, 101..=200).await;
    assert_eq!(sim.stats().answered, 200);
}

async fn pipeline(c: &mut Client, stans: std::ops::RangeInclusive<u32>) {
    let mut all = BytesMut::new();
    let mut codec = FrameCodec::new(LengthHeader::Binary2, 8192);
    for stan in stans.clone() {
        codec
            .encode(&txn(Mti::FINANCIAL, stan, u64::from(stan))[..], &mut all)
            .expect("frames");
    }
    // One write: the requests arrive back-to-back, many per read.
    c.stream.write_all(&all).await.expect("writes");
    let mut seen = BTreeSet::new();
    for _ in stans.clone() {
        let r = c.recv().await;
        let stan = r.stan().expect("DE11");
        assert_eq!(
            r.amount_minor(),
            Some(u64::from(stan)),
            "answer matches its request"
        );
        assert!(seen.insert(stan), "STAN {stan} answered twice");
    }
    assert_eq!(seen, stans.collect::<BTreeSet<_>>());
}

#[tokio::test]
async fn many_connections_at_once() {
    let sim = start(config()).await;
    let mut tasks = Vec::new();
    for t in 0..20u32 {
        let sim = sim.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&sim).await;
            let tid = format!("T{t:07}");
            for stan in 1..=10 {
                let r = c
                    .round_trip(&txn_with(Mti::FINANCIAL, stan, 1, PAN, &tid))
                    .await;
                assert_eq!(r.stan(), Some(stan));
                assert_eq!(text(&r, 41), tid.as_bytes());
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    assert_eq!(sim.stats().received, 200);
    assert_eq!(sim.stats().accepted, 20);
}

#[tokio::test]
async fn the_record_shows_what_the_host_received() {
    let sim = start(SimConfig {
        decline_over_amount: Some(500),
        ..config()
    })
    .await;
    let mut c = Client::connect(&sim).await;
    c.round_trip(&txn_with(Mti::FINANCIAL, 1, 100, PAN, "TID1"))
        .await;
    c.round_trip(&txn_with(Mti::AUTHORIZATION, 2, 900, PAN, "TID2"))
        .await;
    c.round_trip(&reversal(Mti::REVERSAL_ADVICE, 3, 1)).await;
    c.round_trip(&echo(4)).await;
    let rec = sim.received();
    let expect = |mti, stan, tid: &str, amount, code: &[u8; 2], de90: Option<&str>| Received {
        connection: 0,
        mti,
        stan,
        terminal_id: tid.into(),
        amount,
        response_code: Some(*code),
        dropped: false,
        original_data: de90.map(Into::into),
    };
    assert_eq!(
        rec,
        [
            expect(Mti::FINANCIAL, 1, "TID1", Some(100), b"00", None),
            expect(Mti::AUTHORIZATION, 2, "TID2", Some(900), b"51", None),
            expect(
                Mti::REVERSAL_ADVICE,
                3,
                "TERM0001",
                Some(1500),
                b"00",
                Some(&format!("0200{:06}0102030405{}", 1, "0".repeat(22)))
            ),
            expect(Mti::NETWORK, 4, "TERM0001", None, b"00", None),
        ]
    );
    sim.clear_received();
    assert!(sim.received().is_empty());
    assert_eq!(sim.stats().received, 4);
}

#[tokio::test]
async fn record_capacity_bounds_the_record() {
    let sim = start(SimConfig {
        record_capacity: 2,
        ..config()
    })
    .await;
    let mut c = Client::connect(&sim).await;
    for stan in 1..=5 {
        c.round_trip(&echo(stan)).await;
    }
    let stans: Vec<u32> = sim.received().iter().map(|r| r.stan).collect();
    assert_eq!(stans, [4, 5]);
    assert_eq!(sim.stats().evicted, 3);
}

#[tokio::test]
async fn garbage_does_not_kill_the_connection_or_the_server() {
    let sim = start(config()).await;
    let mut c = Client::connect(&sim).await;
    c.send(b"hello, this is not ISO 8583").await;
    c.send(b"").await;
    c.send(b"0200ZZZZ").await;
    // The same connection still works, and answers only the real request.
    assert_eq!(c.round_trip(&echo(1)).await.stan(), Some(1));
    assert_eq!(sim.stats().unparseable, 3);
    assert_eq!(sim.stats().received, 1);

    // A length header over the limit can not be skipped: that connection
    // is closed, the server carries on.
    let mut bad = Client::connect(&sim).await;
    bad.stream
        .write_all(&[0xFF, 0xFF, b'x'])
        .await
        .expect("writes");
    bad.expect_closed().await;
    assert_eq!(c.round_trip(&echo(2)).await.stan(), Some(2));
    let mut fresh = Client::connect(&sim).await;
    assert_eq!(fresh.round_trip(&echo(3)).await.stan(), Some(3));
    assert_eq!(sim.stats().unparseable, 4);
}

#[tokio::test]
async fn shutdown_closes_everything() {
    let sim = start(config()).await;
    let mut c = Client::connect(&sim).await;
    c.round_trip(&echo(1)).await;
    sim.shutdown();
    c.expect_closed().await;
    assert!(sim.wait_until(GUARD, |s| s.stats().connections == 0).await);
}

#[tokio::test]
async fn other_framings_and_specs() {
    let sim = start(SimConfig {
        spec: specs::iso87binary(),
        framing: LengthHeader::Ascii4,
        ..config()
    })
    .await;
    let mut stream = TcpStream::connect(sim.local_addr())
        .await
        .expect("connects");
    let mut b = MessageBuilder::new(specs::iso87binary(), Mti::FINANCIAL);
    b.set(2, PAN.as_bytes())
        .set_number(4, 700)
        .set_number(11, 12)
        .set(41, b"TERM0001");
    let body = b.to_bytes().expect("packs");
    let mut codec = FrameCodec::new(LengthHeader::Ascii4, 8192);
    let mut out = BytesMut::new();
    codec.encode(&body[..], &mut out).expect("frames");
    stream.write_all(&out).await.expect("writes");
    let mut rbuf = BytesMut::new();
    let frame = timeout(GUARD, async {
        loop {
            if let Some(f) = codec.decode(&mut rbuf).expect("well framed") {
                return f;
            }
            assert_ne!(
                stream.read_buf(&mut rbuf).await.expect("reads"),
                0,
                "closed"
            );
        }
    })
    .await
    .expect("answered");
    let r = Message::parse(frame, specs::iso87binary()).expect("parses");
    assert_eq!(r.mti(), Mti::FINANCIAL_RESPONSE);
    assert_eq!(r.stan(), Some(12));
    assert_eq!(r.amount_minor(), Some(700));
    assert_eq!(r.response_code(), Some(*b"00"));
}

/// `--settlement-file`: the financial transactions approved, without
/// the one a 0400 took back, the authorization, the decline and the
/// dropped one; advices of approvals in; written on `settlement`, then
/// `skew` alters exactly what it says and `cutover` starts afresh.
#[tokio::test]
async fn the_settlement_file_holds_what_was_approved_and_not_reversed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("settlement.csv");
    let sim = start(SimConfig {
        control: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        decline_over_amount: Some(100_000),
        settlement_file: Some(file.clone()),
        ..config()
    })
    .await;
    let (r, mut w) = TcpStream::connect(sim.control_addr().expect("control"))
        .await
        .expect("control connects")
        .into_split();
    let mut lines = BufReader::new(r).lines();
    let mut c = Client::connect(&sim).await;
    for stan in 1..=3 {
        let a = c
            .round_trip(&txn(Mti::FINANCIAL, stan, 1000 + u64::from(stan)))
            .await;
        assert_eq!(&rc(&a), b"00");
    }
    assert_eq!(
        &rc(&c.round_trip(&txn(Mti::AUTHORIZATION, 4, 500)).await),
        b"00"
    );
    assert_eq!(
        &rc(&c.round_trip(&txn(Mti::FINANCIAL, 5, 200_000)).await),
        b"51"
    );
    // STAN 2 reversed (DE90 names it).
    assert_eq!(
        &rc(&c.round_trip(&reversal(Mti::REVERSAL, 6, 2)).await),
        b"00"
    );
    // An advice of an approval (stand-in, say).
    let mut advice = MessageBuilder::new(specs::iso87ascii(), Mti::FINANCIAL_ADVICE);
    advice
        .set(3, b"000000")
        .set_number(4, 777)
        .set(7, b"0102030405")
        .set_number(11, 7)
        .set(37, b"000000000007")
        .set(38, b"SI0007")
        .set(39, b"00")
        .set(41, b"TERM0001")
        .set(49, b"978");
    let advice = advice.to_bytes().expect("packs").freeze();
    assert_eq!(&rc(&c.round_trip(&advice).await), b"00");
    // Dropped: never decided, never kept.
    assert_eq!(command(&mut lines, &mut w, "drop-every 1").await, "ok");
    c.send(&txn(Mti::FINANCIAL, 8, 900)).await;
    c.expect_silence().await;
    assert_eq!(command(&mut lines, &mut w, "drop-every 0").await, "ok");

    let said = command(&mut lines, &mut w, "settlement").await;
    assert!(said.starts_with("ok: 3 records written to "), "{said}");
    let csv = std::fs::read_to_string(&file).expect("file written");
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        [
            "rrn",
            "approval_code",
            "amount",
            "currency",
            "terminal",
            "stan",
            "date",
            "local_date",
            "transmission_time",
            "processing_code",
            "mti"
        ]
    );
    let kept: Vec<(&str, &str, &str, &str)> = rows[1..]
        .iter()
        .map(|r| (r[5], r[2], r[1], r[10]))
        .collect();
    assert_eq!(kept.len(), 3, "{csv}");
    assert_eq!(
        (kept[0].0, kept[0].1, kept[0].3),
        ("000001", "1001", "0200")
    );
    assert_eq!(
        (kept[1].0, kept[1].1, kept[1].3),
        ("000003", "1003", "0200")
    );
    assert_eq!(kept[2], ("000007", "777", "SI0007", "0220"));
    assert_eq!(
        &rows[1][..],
        [
            "000000123456",
            rows[1][1],
            "1001",
            "978",
            "TERM0001",
            "000001",
            "0102",
            "0102",
            "0102030405",
            "000000",
            "0200"
        ]
    );
    assert_eq!(rows[1][1].len(), 6, "the approval code the host gave");

    let said = command(&mut lines, &mut w, "skew 3").await;
    assert!(
        said.starts_with("ok: altered 3 records (1 amounts, 1 dropped, 1 added); 3 records"),
        "{said}"
    );
    let skewed = std::fs::read_to_string(&file).expect("file");
    assert_ne!(skewed, csv);
    assert!(skewed.contains(",SKEW0001,"), "{skewed}");

    let said = command(&mut lines, &mut w, "cutover").await;
    assert!(said.ends_with("a new day begins"), "{said}");
    assert_eq!(sim.settled(), Some(0));
    assert_eq!(
        c.round_trip(&txn(Mti::FINANCIAL, 9, 50)).await.stan(),
        Some(9)
    );
    let said = command(&mut lines, &mut w, "settlement").await;
    assert!(said.starts_with("ok: 1 records"), "{said}");
    let err = command(&mut lines, &mut w, "skew 5").await;
    assert!(
        err.starts_with("error: skew 5 changes or drops 4 records"),
        "{err}"
    );

    let plain = start(SimConfig {
        control: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..config()
    })
    .await;
    let (r, mut w) = TcpStream::connect(plain.control_addr().expect("control"))
        .await
        .expect("control connects")
        .into_split();
    let mut lines = BufReader::new(r).lines();
    let err = command(&mut lines, &mut w, "settlement").await;
    assert!(err.contains("--settlement-file"), "{err}");
}
