//! The admin endpoint over real sockets: `/ready`, the read-only JSON API
//! (`/api/summary`, `/api/links`, `/api/config`), its bounds and errors,
//! and that no answer carries what could be a card number.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchyard::iso8583::Mti;
use switchyard::iso8583::values::luhn_ok;
use switchyard::tools::sim::SimConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The metrics registry is one per process: the tests that send requests
/// to a terminal and count them run one at a time.
static COUNTED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `GET path` as JSON: (status, body).
async fn get_json(admin: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = http_get(admin, path).await;
    let v =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body:?}"));
    (status, v)
}

/// Sends `request` as it is, reads to the close: (status, head, body).
async fn raw(admin: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(admin).await.expect("connects");
    s.write_all(request).await.expect("writes");
    let mut out = Vec::new();
    // The server may close before reading all of an oversized request: a
    // reset after the answer is fine.
    let _ = timeout(GUARD, s.read_to_end(&mut out))
        .await
        .expect("answered and closed in time");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// `digits` with its Luhn check digit appended.
fn with_check_digit(digits: &str) -> String {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = u32::from(c - b'0');
            if i % 2 == 0 {
                let d = d * 2;
                if d > 9 { d - 9 } else { d }
            } else {
                d
            }
        })
        .sum();
    format!("{digits}{}", (10 - sum % 10) % 10)
}

#[test]
fn the_card_number_scan_finds_card_numbers() {
    assert!(luhn_ok(PAN.as_bytes()));
    assert_eq!(with_check_digit("476173900101001"), PAN);
    assert_eq!(card_numbers(&format!("{{\"p\":\"x{PAN}y\"}}")), [PAN]);
    assert_eq!(card_numbers(&format!("v {PAN}\n")), [PAN]);
    assert!(card_numbers("0.4761739001010010 18446744073709551615 4761739001010011").is_empty());
}

/// One sim with a control port; amounts over 1000 are declined 51, cards
/// starting 4000 declined 05.
async fn start_sim_controlled() -> switchyard::tools::sim::SimHandle {
    start_sim_with(SimConfig {
        control: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        decline_over_amount: Some(1000),
        decline_prefixes: vec!["4000".into()],
        ..sim_config()
    })
    .await
}

/// A session on the simulator's control port.
struct Control {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Control {
    async fn connect(sim: &switchyard::tools::sim::SimHandle) -> Control {
        let s = TcpStream::connect(sim.control_addr().expect("control port"))
            .await
            .expect("control connects");
        let (r, w) = s.into_split();
        Control {
            lines: BufReader::new(r).lines(),
            w,
        }
    }

    async fn command(&mut self, cmd: &str) {
        self.w
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("control write");
        let answer = timeout(GUARD, self.lines.next_line())
            .await
            .expect("control answers")
            .expect("control read")
            .expect("control line");
        assert_eq!(answer, "ok", "{cmd}");
    }
}

#[tokio::test]
async fn ready_is_200_with_a_link_up_and_503_when_the_host_stops_answering() {
    let sim = start_sim_controlled().await;
    // Echoes every 100 ms, down at the first one missed.
    let acquirer = "echo_interval_ms = 100\necho_timeout_ms = 100\nmax_missed_echoes = 1\n";
    let switch = start_switch(&config(&[sim.local_addr()], acquirer, "")).await;
    let admin = switch.admin_addr.expect("admin");
    wait_links_up(&switch).await;
    let (status, v) = get_json(admin, "/ready").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ready"], true);
    assert_eq!(v["acquirers_up"], 1);

    let mut control = Control::connect(&sim).await;
    control.command("stop").await;
    let link = &switch.shared.acquirers[0].links[0].shared;
    timeout(GUARD, link.wait_for(false))
        .await
        .expect("the link goes down once an echo is missed");
    let (status, v) = get_json(admin, "/ready").await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["ready"], false);
    assert_eq!(v["reason"], "no acquirer has a link up");
    assert_eq!(v["acquirers_up"], 0);
    // Liveness is a different question: the process is up, its links not.
    let (status, v) = get_json(admin, "/health").await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["status"], "down");

    control.command("resume").await;
    timeout(GUARD, link.wait_for(true))
        .await
        .expect("the link signs on again");
    let (status, v) = get_json(admin, "/ready").await;
    assert_eq!(status, 200, "{v}");
    switch.shutdown().await;
}

#[tokio::test]
async fn ready_is_503_while_the_switch_stops() {
    let sim = start_sim_controlled().await;
    // The request below waits for the host past the grace period (3 s), so
    // the switch is stopping, not stopped, while /ready is asked.
    let switch = start_switch(&config(
        &[sim.local_addr()],
        "request_timeout_ms = 10000",
        "",
    ))
    .await;
    let admin = switch.admin_addr.expect("admin");
    wait_links_up(&switch).await;
    assert_eq!(get_json(admin, "/ready").await.0, 200);
    Control::connect(&sim).await.command("stop").await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    t.send(&auth(Mti::FINANCIAL, 1, PAN, 100)).await;

    let shared = switch.shared.clone();
    let stopping = tokio::spawn(switch.shutdown());
    timeout(GUARD, shared.stopping.cancelled())
        .await
        .expect("shutdown begins");
    let (status, v) = get_json(admin, "/ready").await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["ready"], false);
    assert_eq!(v["reason"], "stopping: no new requests are taken");
    let (status, v) = get_json(admin, "/api/summary").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stopping"], true);
    // The request held up the stop; it ends with the links (91).
    assert_eq!(code(&t.recv().await), "91");
    timeout(GUARD, stopping)
        .await
        .expect("the switch stops")
        .expect("shutdown ran");
}

#[tokio::test]
async fn summary_counts_what_a_burst_of_requests_got() {
    let _one_at_a_time = COUNTED.lock().await;
    let sim = start_sim_controlled().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    let admin = switch.admin_addr.expect("admin");
    wait_links_up(&switch).await;
    let (status, before) = get_json(admin, "/api/summary").await;
    assert_eq!(status, 200, "{before}");

    let declined_card = with_check_digit("400000000000000");
    let bad_luhn = "4761739001010011";
    let mut expected = std::collections::BTreeMap::<&str, u64>::new();
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let mut stan = 0;
    for (n, pan, amount, want) in [
        (5, PAN, 100, "00"),
        (3, PAN, 5000, "51"),
        (2, declined_card.as_str(), 100, "05"),
        (4, bad_luhn, 100, "14"),
    ] {
        for _ in 0..n {
            stan += 1;
            let a = t.request(&auth(Mti::FINANCIAL, stan, pan, amount)).await;
            assert_eq!(code(&a), want, "stan {stan}");
        }
        *expected.entry(want).or_default() += n;
    }

    let (status, after) = get_json(admin, "/api/summary").await;
    assert_eq!(status, 200, "{after}");
    let count = |v: &Value, code: &str| v["requests"]["by_mti"]["0200"][code].as_u64().unwrap_or(0);
    for (code, n) in &expected {
        assert_eq!(
            count(&after, code) - count(&before, code),
            *n,
            "DE39 {code}: {after}"
        );
        let by_code = |v: &Value| v["requests"]["by_code"][*code].as_u64().unwrap_or(0);
        assert_eq!(by_code(&after) - by_code(&before), *n, "by_code {code}");
    }
    let total = |v: &Value| v["requests"]["total"].as_u64().expect("total");
    assert_eq!(total(&after) - total(&before), stan as u64, "{after}");
    assert_eq!(after["in_flight"], 0);
    assert_eq!(after["connections"], 1);
    assert_eq!(after["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(after["stopping"], false);
    assert_eq!(after["acquirers"][0]["name"], "acquirer-a");
    assert_eq!(after["acquirers"][0]["links_up"], 1);
    assert_eq!(after["acquirers"][0]["saf_depth"], 0);
    // Answered with fsync durability: their records are on disk.
    assert!(after["journal"]["durable"].as_u64().expect("durable") >= stan as u64);
    assert!(
        after["started_at"]
            .as_str()
            .expect("started_at")
            .ends_with('Z')
    );

    let (status, links) = get_json(admin, "/api/links").await;
    assert_eq!(status, 200, "{links}");
    let link = &links["acquirers"][0]["links"][0];
    assert_eq!(link["up"], true);
    assert_eq!(link["addr"], sim.local_addr().to_string());
    assert_eq!(link["in_flight"], 0);
    assert_eq!(links["acquirers"][0]["up"], true);
    switch.shutdown().await;
}

#[tokio::test]
async fn config_is_shown_with_the_pan_key_redacted() {
    let sim = start_sim().await;
    let text = config(&[sim.local_addr()], "", "");
    let switch = start_switch(&text).await;
    let admin = switch.admin_addr.expect("admin");
    let (status, v) = get_json(admin, "/api/config").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["fraud"]["pan_key"], "[redacted]");
    assert_eq!(v["acquirers"][0]["name"], "acquirer-a");
    assert_eq!(v["acquirers"][0]["links"][0], sim.local_addr().to_string());
    assert_eq!(v["acquirers"][0]["request_timeout_ms"], 1000);
    // A default the file does not set.
    assert_eq!(v["terminals"]["max_connections"], 4096);
    let body = http_get(admin, "/api/config").await.1;
    let key = "000102030405060708090a0b0c0d0e0f";
    assert!(text.contains(key), "the test config sets the key");
    assert!(!body.contains(key), "{body}");
    switch.shutdown().await;
}

#[tokio::test]
async fn no_answer_of_the_admin_endpoint_carries_a_card_number() {
    let _one_at_a_time = COUNTED.lock().await;
    let sim = start_sim_controlled().await;
    // A journal directory whose name holds a card number: the config view
    // must not show it whole.
    let text = config(&[sim.local_addr()], "", "");
    let text = text.replacen("switchyard-test-", &format!("switchyard-{PAN}-"), 1);
    assert!(text.contains(PAN));
    let switch = start_switch(&text).await;
    let admin = switch.admin_addr.expect("admin");
    wait_links_up(&switch).await;

    let pans = [
        PAN.to_owned(),
        with_check_digit("476173900101"),       // 13 digits
        with_check_digit("476173900101001000"), // 19 digits
        with_check_digit("400000000000000"),    // declined 05
    ];
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let mut stan = 0;
    for pan in &pans {
        for amount in [100, 5000] {
            stan += 1;
            t.request(&auth(Mti::FINANCIAL, stan, pan, amount)).await;
        }
    }
    let mut bodies = Vec::new();
    for path in [
        "/metrics",
        "/health",
        "/ready",
        "/api/summary",
        "/api/links",
        "/api/config",
        &format!("/{PAN}"),
        &format!("/api/summary?pan={PAN}"),
    ] {
        let (status, body) = http_get(admin, path).await;
        assert!(status != 0 && !body.is_empty(), "{path}: {status}");
        bodies.push((path.to_owned(), body));
    }
    let (_, _, post) = raw(
        admin,
        format!("POST /api/{PAN} HTTP/1.1\r\nHost: t\r\nContent-Length: 16\r\n\r\n{PAN}")
            .as_bytes(),
    )
    .await;
    bodies.push(("POST".into(), post));
    for (path, body) in &bodies {
        let found = card_numbers(body);
        assert!(found.is_empty(), "{path} carries {found:?}:\n{body}");
    }
    let config = &bodies
        .iter()
        .find(|(p, _)| p == "/api/config")
        .expect("config")
        .1;
    assert!(
        config.contains("switchyard-476173******0010-"),
        "the journal directory is shown, masked: {config}"
    );
    switch.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_4xx_json_errors() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    let admin = switch.admin_addr.expect("admin");

    let (status, v) = get_json(admin, "/no/such/thing").await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"], "not_found");
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("/api/summary")
    );

    let (status, head, body) = raw(
        admin,
        b"DELETE /api/config HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("allow: get, head"),
        "{head}"
    );
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["error"], "method_not_allowed");

    let (status, _, body) = raw(
        admin,
        b"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413);
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["error"], "body_too_large");

    let (status, _, body) = raw(
        admin,
        b"GET /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 411);
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["error"], "length_required");

    // A head over the bound: refused by hyper, before any handler.
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(switchyard::switch::admin::MAX_HEAD + 1)
    );
    let (status, head, _) = raw(admin, big.as_bytes()).await;
    assert_eq!(status, 431, "{head}");
    let many: String = (0..switchyard::switch::admin::MAX_HEADERS + 1)
        .map(|i| format!("X-H{i}: v\r\n"))
        .collect();
    let (status, head, _) = raw(
        admin,
        format!("GET /health HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 431, "{head}");

    // Not HTTP at all.
    let (status, head, _) = raw(admin, b"\x16\x03\x01 hello\r\n\r\n").await;
    assert_eq!(status, 400, "{head}");
    // Still serving.
    assert_eq!(http_get(admin, "/health").await.0, 200);
    switch.shutdown().await;
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_dropped_after_the_head_timeout() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    let admin = switch.admin_addr.expect("admin");
    let started = Instant::now();
    let mut s = TcpStream::connect(admin).await.expect("connects");
    let mut buf = [0u8; 256];
    let head_timeout = switchyard::switch::admin::HEAD_TIMEOUT;
    let read = timeout(head_timeout + GUARD, s.read(&mut buf))
        .await
        .expect("closed within the head timeout");
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)) || buf.starts_with(b"HTTP/1.1 408"),
        "closed, or a 408: {read:?} {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(
        waited >= head_timeout - Duration::from_millis(500),
        "not before the head timeout: {waited:?}"
    );
    switch.shutdown().await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_a_slot_frees() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    let admin = switch.admin_addr.expect("admin");
    let cap = switchyard::switch::admin::MAX_CONNECTIONS;
    // Each holds a slot: connected, its request head not yet sent.
    let mut idle = Vec::new();
    for _ in 0..cap {
        idle.push(TcpStream::connect(admin).await.expect("connects"));
    }
    // One more: the kernel completes the handshake, the switch does not
    // take it while every slot is held.
    let mut waiting = TcpStream::connect(admin).await.expect("connects");
    waiting
        .write_all(b"GET /health HTTP/1.0\r\n\r\n")
        .await
        .expect("writes");
    let mut out = Vec::new();
    let early = timeout(SILENCE, waiting.read_to_end(&mut out)).await;
    assert!(
        early.is_err(),
        "answered past the cap: {:?}",
        String::from_utf8_lossy(&out)
    );
    // A slot frees: it is served.
    drop(idle.pop());
    timeout(GUARD, waiting.read_to_end(&mut out))
        .await
        .expect("served once a slot is free")
        .expect("reads");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    drop(idle);
    switch.shutdown().await;
}
