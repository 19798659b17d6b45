//! The operator's console end to end, over 127.0.0.1: a switch and the
//! simulator, traffic from a terminal, then `/api/terminals`,
//! `/api/transactions`, `/api/stream` (server-sent events), an alert
//! raised when the simulator starts declining (a short hold and a seeded
//! baseline), the stream cap, and no card number in any answer. Then a
//! real browser (headless Chromium, driven over the DevTools protocol by
//! `tests/browser/live_dom.py`) renders the page with live figures, in
//! English and in Chinese.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchyard::iso8583::Mti;
use switchyard::iso8583::values::luhn_ok;
use switchyard::tools::sim::SimConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The metrics registry is one per process, and each switch's analytics
/// thread sets the `switchyard_alerts_open` gauge every second: the tests
/// here run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Cards the simulator declines (05) start with this.
const DECLINED_PREFIX: &str = "4000";

/// The analytics table of these tests: one-second windows, a hold of one
/// second, a healthy baseline from the start (no warm-up).
const ANALYTICS: &str = "[analytics]\nwindow_s = 1\nhold_s = 1\nmin_volume = 5\n\
                         seed_baseline = true\nwarmup_windows = 0\n";

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

/// Every answer read, to be scanned for card numbers at the end.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    async fn get(&mut self, admin: SocketAddr, path: &str) -> (u16, Value) {
        let (status, body) = http_get(admin, path).await;
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body:?}"));
        self.0.push(body);
        (status, v)
    }

    fn assert_no_card_number(&self) {
        for body in &self.0 {
            let found = card_numbers(body);
            assert!(found.is_empty(), "card numbers {found:?} in {body}");
        }
    }
}

/// Polls `path` until `ok` holds for its JSON, within `within`.
async fn until(
    seen: &mut Seen,
    admin: SocketAddr,
    path: &str,
    within: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, v) = seen.get(admin, path).await;
        if status == 200 && ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: condition not met in {within:?}; last answer {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens `/api/stream` and returns the first `n` frames' JSON, and the
/// head of the answer.
async fn stream_frames(admin: SocketAddr, n: usize) -> (String, Vec<String>) {
    let mut s = TcpStream::connect(admin).await.expect("connects");
    s.write_all(b"GET /api/stream HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("writes");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            let frames: Vec<String> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .filter(|d| d.trim_start().starts_with('{') && d.trim_end().ends_with('}'))
                .map(|d| d.trim().to_owned())
                .collect();
            if frames.len() >= n {
                let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
                return (head, frames);
            }
            let k = s.read(&mut chunk).await.expect("reads");
            assert!(k > 0, "stream closed early: {text}");
            buf.extend_from_slice(&chunk[..k]);
        }
    };
    timeout(GUARD, read).await.expect("frames in time")
}

async fn start(sim: &switchyard::tools::sim::SimHandle) -> switchyard::switch::server::Switch {
    let switch = start_switch(&config(&[sim.local_addr()], "", ANALYTICS)).await;
    wait_links_up(&switch).await;
    switch
}

#[tokio::test]
async fn terminals_transactions_stream_and_an_alert() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sim = start_sim_with(SimConfig {
        decline_prefixes: vec![DECLINED_PREFIX.into()],
        ..sim_config()
    })
    .await;
    let switch = start(&sim).await;
    let admin = switch.admin_addr.expect("admin");
    let mut seen = Seen::default();

    // The page itself: HTML, inline, no outside resource.
    let (status, page) = http_get(admin, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<!doctype html>") && page.contains("EventSource(\"/api/stream\")"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no outside resource"
    );
    // Only the page's own script runs (its hash in the policy).
    let mut c = TcpStream::connect(admin).await.expect("connects");
    c.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("writes");
    let mut raw = Vec::new();
    timeout(GUARD, c.read_to_end(&mut raw))
        .await
        .expect("answered")
        .expect("reads");
    let raw = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let head = raw.split("\r\n\r\n").next().unwrap_or_default();
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'sha256-"),
        "{head}"
    );

    // Approvals from one terminal.
    let mut t = Terminal::connect(switch.terminal_addr).await;
    for stan in 1..=40u32 {
        let a = t
            .request(&auth(Mti::new(200).expect("mti"), stan, PAN, 1500))
            .await;
        assert_eq!(code(&a), "00");
    }
    let terms = until(&mut seen, admin, "/api/terminals", GUARD, |v| {
        v["terminals"][0]["requests"].as_u64() >= Some(40)
    })
    .await;
    let t0 = &terms["terminals"][0];
    assert_eq!(t0["terminal"], TID);
    assert_eq!(t0["merchant"], "MERCHANT0000001");
    assert_eq!(t0["approval_rate"], 1.0);
    assert!(t0["last_seen"].as_str().is_some_and(|s| s.ends_with('Z')));

    // A transaction by RRN, by STAN and terminal, by masked PAN.
    let (status, found) = seen.get(admin, "/api/transactions?rrn=500000000007").await;
    assert_eq!(status, 200, "{found}");
    let tx = &found["transactions"][0];
    assert_eq!(tx["stan"], "000007");
    assert_eq!(tx["terminal"], TID);
    assert_eq!(tx["code"], "00");
    assert_eq!(tx["acquirer"], "acquirer-a");
    assert_eq!(tx["pan"], format!("{}******{}", &PAN[..6], &PAN[12..]));
    assert!(tx["rtt_us"].as_u64().is_some_and(|r| r > 0), "{tx}");
    let (_, found) = seen
        .get(admin, &format!("/api/transactions?stan=7&terminal={TID}"))
        .await;
    assert_eq!(found["transactions"].as_array().map(Vec::len), Some(1));
    let masked = format!("{}******{}", &PAN[..6], &PAN[12..]);
    let (_, found) = seen
        .get(admin, &format!("/api/transactions?pan={masked}&limit=5"))
        .await;
    assert_eq!(found["transactions"].as_array().map(Vec::len), Some(5));
    assert_eq!(found["transactions"][0]["stan"], "000040", "newest first");
    // Refused searches: a whole card number, nothing, a STAN alone.
    let (status, v) = seen
        .get(admin, &format!("/api/transactions?pan={PAN}"))
        .await;
    assert_eq!((status, v["error"].as_str()), (400, Some("bad_search")));
    assert_eq!(seen.get(admin, "/api/transactions").await.0, 400);
    assert_eq!(seen.get(admin, "/api/transactions?stan=7").await.0, 400);

    // The stream: frames at once and every second, with the page's keys.
    let (head, frames) = stream_frames(admin, 2).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    for f in &frames {
        seen.0.push(f.clone());
    }
    let f: Value = serde_json::from_str(&frames[1]).expect("a frame is JSON");
    for key in [
        "t",
        "now",
        "series",
        "links",
        "saf_depth",
        "journal",
        "store",
        "fraud",
        "top_declining",
        "schemes",
        "countries",
        "high_risk",
        "alerts",
        "in_flight",
    ] {
        assert!(f.get(key).is_some(), "frame without {key}: {f}");
    }
    for key in [
        "tps",
        "p50_us",
        "p99_us",
        "approval_rate",
        "requests_minute",
    ] {
        assert!(f["now"].get(key).is_some(), "now without {key}: {f}");
    }
    assert_eq!(f["links"][0]["acquirer"], "acquirer-a");
    assert_eq!(f["links"][0]["up"], true);
    assert_eq!(f["schemes"][0]["scheme"], "visa");
    assert_eq!(f["series"]["tps"].as_array().map(Vec::len), Some(300));
    assert!(
        f["series"]["tps"]
            .as_array()
            .is_some_and(|v| v.iter().any(|n| n.as_u64() > Some(0)))
    );

    // At most 16 streams: the 17th is refused; the others stay open.
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut s = TcpStream::connect(admin).await.expect("connects");
        s.write_all(b"GET /api/stream HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("writes");
        let mut b = [0u8; 64];
        let n = timeout(GUARD, s.read(&mut b))
            .await
            .expect("answered")
            .expect("reads");
        assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"));
        open.push(s);
    }
    let (status, v) = seen.get(admin, "/api/stream").await;
    assert_eq!(
        (status, v["error"].as_str()),
        (503, Some("too_many_streams"))
    );
    drop(open);

    // No alert while all is well.
    let (_, alerts) = seen.get(admin, "/api/alerts").await;
    assert_eq!(alerts["open"], Value::Array(Vec::new()), "{alerts}");

    // The simulator starts declining (this card range): the approval rate
    // and the rate of 05 leave their baselines, and after the hold the
    // alerts are open. Traffic goes on meanwhile.
    let declined = with_check_digit(&format!("{DECLINED_PREFIX}00000000000"));
    assert!(luhn_ok(declined.as_bytes()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stan = 100u32;
    let alerts = loop {
        for _ in 0..10 {
            stan += 1;
            let a = t
                .request(&auth(Mti::new(200).expect("mti"), stan, &declined, 1500))
                .await;
            assert_eq!(code(&a), "05");
        }
        let (_, v) = seen.get(admin, "/api/alerts").await;
        let kinds: Vec<&str> = v["open"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["kind"].as_str()).collect())
            .unwrap_or_default();
        if kinds.contains(&"approval_rate") && kinds.contains(&"rate_05") {
            break v;
        }
        assert!(Instant::now() < deadline, "no alert in time: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let open = alerts["open"].as_array().expect("open");
    let by_acquirer = open
        .iter()
        .find(|a| a["kind"] == "rate_05" && a["scope"] == "acquirer")
        .unwrap_or_else(|| panic!("no acquirer alert: {alerts}"));
    assert_eq!(by_acquirer["subject"], "acquirer-a");
    // Seeded at 0; it moves a little while the alert holds.
    assert!(
        by_acquirer["baseline"].as_f64().is_some_and(|b| b < 0.1),
        "{by_acquirer}"
    );
    assert!(
        by_acquirer["value"].as_f64().is_some_and(|v| v > 0.5),
        "{by_acquirer}"
    );
    assert!(
        by_acquirer["since"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
    assert!(
        open.iter()
            .any(|a| a["scope"] == "terminal" && a["subject"] == TID)
    );
    // The metric and the stream show it too.
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(
        metric(&metrics, "switchyard_alerts_open", &[]) >= 2.0,
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_alerts_raised_total{kind=\"rate_05\"}"));
    assert!(metric(&metrics, "switchyard_analytics_events_total", &[]) >= 140.0);
    let (_, frames) = stream_frames(admin, 1).await;
    let f: Value = serde_json::from_str(&frames[0]).expect("JSON");
    assert!(f["alerts"].as_array().is_some_and(|a| !a.is_empty()), "{f}");
    assert!(f["top_declining"]["bins"][0]["key"] == "400000", "{f}");
    seen.0.extend(frames);

    // Back to approvals: cleared, and listed as recently cleared.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for _ in 0..10 {
            stan += 1;
            let a = t
                .request(&auth(Mti::new(200).expect("mti"), stan, PAN, 1500))
                .await;
            assert_eq!(code(&a), "00");
        }
        let (_, v) = seen.get(admin, "/api/alerts").await;
        if v["open"]
            .as_array()
            .is_some_and(|o| o.iter().all(|a| a["kind"] == "volume"))
        {
            assert!(
                v["cleared"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|a| a["kind"] == "rate_05"))
            );
            break;
        }
        assert!(Instant::now() < deadline, "not cleared in time: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    seen.assert_no_card_number();
    switch.shutdown().await;
}

/// The browser's view: headless Chromium opens the page during traffic,
/// waits (on the DOM, not on a clock) until the JavaScript has filled the
/// throughput figure from the stream, and dumps the DOM; in English and
/// in Chinese. A screenshot of each is saved under target/.
#[tokio::test]
async fn a_real_browser_renders_live_figures_in_english_and_chinese() {
    let _one = ONE_AT_A_TIME.lock().await;
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("Chromium is needed for this test: apt-get install -y chromium (.ci/run does)");
    let sim = start_sim().await;
    let switch = start(&sim).await;
    let admin = switch.admin_addr.expect("admin");
    let addr = switch.terminal_addr;
    // Traffic all along: 50 requests a second.
    let traffic = tokio::spawn(async move {
        let mut t = Terminal::connect(addr).await;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for stan in 1..u32::MAX {
            tick.tick().await;
            t.request(&auth(
                Mti::new(200).expect("mti"),
                stan % 999_999 + 1,
                PAN,
                1500,
            ))
            .await;
        }
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/live_dom.py");
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    // In English, a search typed into the page's form finds a
    // transaction of the traffic (RRN 500000000000 + STAN).
    let search = "document.getElementById('s-rrn').value = '500000000005'; \
                  document.getElementById('search').requestSubmit(); true";
    let found = "(() => { const td = document.querySelector('#results tr td:nth-child(4)'); \
                 return !!td && td.textContent === '000005'; })()";
    for (lang, label, html_lang) in [
        ("en-US", "throughput (requests/s)", "lang=\"en\""),
        ("zh-CN", "吞吐量（笔/秒）", "lang=\"zh-CN\""),
    ] {
        let shot = target.join(format!("dashboard-{lang}.png"));
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(script)
            .arg(chromium)
            .arg(format!("http://{admin}/"))
            .arg(lang)
            .arg(&shot)
            .arg("30");
        if lang == "en-US" {
            cmd.env("ACTION", search).env("WAIT_FOR", found);
        }
        let out = cmd.output();
        let out = timeout(Duration::from_secs(60), out)
            .await
            .expect("the browser finishes")
            .expect("python3 runs");
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{lang}: {}\n{dom}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(dom.contains(html_lang), "{lang}: {dom}");
        assert!(dom.contains(label), "{lang}: no label {label}");
        // The throughput figure, filled by the page's JavaScript from a
        // frame: a number, not the placeholder.
        let tps = dom
            .split("id=\"tps\">")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .unwrap_or_default();
        assert!(
            !tps.is_empty() && tps.chars().all(|c| c.is_ascii_digit() || c == ','),
            "{lang}: throughput figure {tps:?}"
        );
        assert!(
            tps.replace(',', "").parse::<u64>().is_ok_and(|n| n > 0),
            "{lang}: {tps}"
        );
        assert!(dom.contains("acquirer-a"), "{lang}: the links table");
        let frames = dom
            .split("data-frames=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|n| n.parse::<u32>().ok());
        assert!(frames >= Some(2), "{lang}: frames {frames:?}");
        if lang == "zh-CN" {
            for zh in [
                "收单机构",
                "高风险交易（15 分钟）",
                "交易查询",
                "批准率（1 分钟）",
            ] {
                assert!(dom.contains(zh), "no {zh}");
            }
        }
        assert!(card_numbers(&dom).is_empty(), "a card number on the page");
        assert!(
            std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
            "screenshot"
        );
    }
    traffic.abort();
    switch.shutdown().await;
}

/// With operators the page is served, but what it shows needs a session:
/// `/api/stream` and the rest answer 401 until a login (password and
/// TOTP); the browser fills the page's login form and then renders live
/// figures.
#[tokio::test]
async fn with_operators_the_page_asks_for_a_login() {
    use switchyard::switch::admin::{totp, users};
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = fresh_journal_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    let users_file = dir.join("users.toml");
    let secret = users::new_totp_secret().expect("a secret");
    let password = "correct horse battery staple";
    users::write_entries(
        &users_file,
        &[users::UserEntry {
            name: "alice".into(),
            role: users::Role::Viewer,
            password_hash: users::hash_password(password).expect("hashes"),
            totp_secret: totp::encode_secret(&secret),
        }],
    )
    .expect("users file");
    let sim = start_sim().await;
    let toml = config(&[sim.local_addr()], "", ANALYTICS).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\nusers_file = \"{}\"\naudit_file = \"{}\"\n",
            users_file.display(),
            dir.join("audit.jsonl").display()
        ),
    );
    let switch = start_switch(&toml).await;
    wait_links_up(&switch).await;
    let admin = switch.admin_addr.expect("admin");

    let (status, page) = http_get(admin, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"login-form\""));
    for path in [
        "/api/stream",
        "/api/alerts",
        "/api/terminals",
        "/api/transactions?rrn=1",
    ] {
        let (status, body) = http_get(admin, path).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("login_required"), "{path}: {body}");
    }

    let addr = switch.terminal_addr;
    let traffic = tokio::spawn(async move {
        let mut t = Terminal::connect(addr).await;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for stan in 1..u32::MAX {
            tick.tick().await;
            t.request(&auth(
                Mti::new(200).expect("mti"),
                stan % 999_999 + 1,
                PAN,
                1500,
            ))
            .await;
        }
    });
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        panic!("Chromium is needed for this test: apt-get install -y chromium (.ci/run does)");
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let code = totp::code(&secret, totp::step(now));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/live_dom.py");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-login.png");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(chromium)
        .arg(format!("http://{admin}/"))
        .arg("en-US")
        .arg(&shot)
        .arg("30")
        .env("LOGIN_USER", "alice")
        .env("LOGIN_PASSWORD", password)
        .env("LOGIN_CODE", &code)
        .output();
    let out = timeout(Duration::from_secs(60), out)
        .await
        .expect("the browser finishes")
        .expect("python3 runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("alice (viewer)"), "the session's user shown");
    assert!(dom.contains("acquirer-a"));
    assert!(card_numbers(&dom).is_empty());
    traffic.abort();
    switch.shutdown().await;
}

/// The simulator's control port (`latency N`).
async fn sim_command(sim: &switchyard::tools::sim::SimHandle, cmd: &str) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let s = TcpStream::connect(sim.control_addr().expect("control port"))
        .await
        .expect("control connects");
    let (r, mut w) = s.into_split();
    w.write_all(format!("{cmd}\n").as_bytes())
        .await
        .expect("writes");
    let line = timeout(GUARD, BufReader::new(r).lines().next_line())
        .await
        .expect("control answers")
        .expect("reads");
    assert_eq!(line.as_deref(), Some("ok"), "{cmd}");
}

/// Ten requests at once on one connection (the switch takes 64 in
/// flight per connection), then their ten answers.
async fn burst(t: &mut Terminal, stan: &mut u32) {
    for _ in 0..10 {
        *stan += 1;
        t.send(&auth(Mti::new(200).expect("mti"), *stan, PAN, 1500))
            .await;
    }
    for _ in 0..10 {
        assert_eq!(code(&t.recv().await), "00");
    }
}

/// A host that slows down: `latency 500` on the simulator, an alert on
/// the acquirer's round trip within 10 s; `latency 0`, cleared.
#[tokio::test]
async fn a_slow_host_raises_a_round_trip_alert_and_clears_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sim = start_sim_with(SimConfig {
        control: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..sim_config()
    })
    .await;
    let switch = start(&sim).await;
    let admin = switch.admin_addr.expect("admin");
    let mut seen = Seen::default();
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let mut stan = 0u32;
    let round_trip_open = |v: &Value| {
        v["open"].as_array().is_some_and(|o| {
            o.iter()
                .any(|a| a["kind"] == "round_trip" && a["subject"] == "acquirer-a")
        })
    };
    // A baseline: traffic through three and a half detector windows (of
    // 1 s) while the host is quick. Traffic for a time, not a wait: the
    // detector has nothing to signal while all is well.
    let start_at = Instant::now();
    while start_at.elapsed() < Duration::from_millis(3500) {
        burst(&mut t, &mut stan).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, v) = seen.get(admin, "/api/alerts").await;
    assert!(!round_trip_open(&v), "{v}");

    sim_command(&sim, "latency 500").await;
    let slow_from = Instant::now();
    let alert = loop {
        burst(&mut t, &mut stan).await;
        let (_, v) = seen.get(admin, "/api/alerts").await;
        if round_trip_open(&v) {
            break v;
        }
        assert!(
            slow_from.elapsed() < Duration::from_secs(10),
            "no alert within 10 s: {v}"
        );
    };
    let a = alert["open"]
        .as_array()
        .and_then(|o| o.iter().find(|a| a["kind"] == "round_trip"))
        .cloned()
        .unwrap_or_default();
    assert!(a["value"].as_f64().is_some_and(|v| v >= 400_000.0), "{a}");
    assert!(a["baseline"].as_f64().is_some_and(|b| b < 100_000.0), "{a}");

    sim_command(&sim, "latency 0").await;
    let quick_from = Instant::now();
    loop {
        burst(&mut t, &mut stan).await;
        let (_, v) = seen.get(admin, "/api/alerts").await;
        if !round_trip_open(&v) {
            assert!(
                v["cleared"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|a| a["kind"] == "round_trip"))
            );
            break;
        }
        assert!(
            quick_from.elapsed() < Duration::from_secs(10),
            "not cleared within 10 s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen.assert_no_card_number();
    switch.shutdown().await;
}

/// A seeded load test (`loadtest`, its mix of purchases, authorizations,
/// reversals and fraud probes, against a simulator declining a fifth at
/// random), then the browser: the page's table of authorizations and
/// financials by DE39 shows exactly the counts in loadtest's report.
#[tokio::test]
async fn the_page_counts_by_de39_what_a_seeded_load_test_counted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sim = start_sim_with(SimConfig {
        decline_ratio: 0.2,
        seed: 7,
        ..sim_config()
    })
    .await;
    let switch = start(&sim).await;
    let admin = switch.admin_addr.expect("admin");
    let target = switch.terminal_addr.to_string();
    let report = tokio::task::spawn_blocking(move || {
        let argv = [
            "--target",
            &target,
            "--no-progress",
            "-c",
            "2",
            "-d",
            "2s",
            "--warmup",
            "0s",
            "--timeout",
            "2s",
            "--seed",
            "42",
        ];
        loadtest_run(&argv)
    })
    .await
    .expect("loadtest finishes");
    let mut want: std::collections::BTreeMap<String, u64> = Default::default();
    for (mti, code, n) in report.responses() {
        if mti == 110 || mti == 210 {
            *want.entry(code).or_default() += n;
        }
    }
    assert!(want.get("00").is_some_and(|&n| n > 50), "{want:?}");
    assert!(want.get("05").is_some_and(|&n| n > 5), "{want:?}");
    let want_js = serde_json::to_string(&want).expect("JSON");
    let wait_for = format!(
        "(() => {{ const want = {want_js}; const got = {{}}; \
         document.querySelectorAll('#codes15 tr[data-code]').forEach(tr => {{ got[tr.dataset.code] = Number(tr.dataset.n); }}); \
         const k = Object.keys(want); \
         return k.length === Object.keys(got).length && k.every(c => got[c] === want[c]); }})()"
    );
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("Chromium is needed for this test: apt-get install -y chromium (.ci/run does)");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/live_dom.py");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-loadtest.png");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(chromium)
        .arg(format!("http://{admin}/"))
        .arg("en-US")
        .arg(&shot)
        .arg("30")
        .env("WAIT_FOR", &wait_for)
        .output();
    let out = timeout(Duration::from_secs(60), out)
        .await
        .expect("the browser finishes")
        .expect("python3 runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "counts {want:?} not shown: {}\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(card_numbers(&dom).is_empty());
    switch.shutdown().await;
}
