//! A rolling restart under load behind a real load balancer: two
//! `switchyard run` processes (each its own journal and admin port) in
//! front of one simulator, Debian's `haproxy` in TCP mode checking each
//! switch's `/ready` over HTTP, and `loadtest` through HAProxy. While the
//! load runs, switch 1 is drained (`POST /api/actions/drain`), exits 0,
//! starts again on the same ports and HAProxy sees it up; then switch 2.
//!
//! Every request is answered exactly once: loadtest counts nothing lost,
//! timed out or mismatched (a connection a drain closed cleanly is opened
//! again, and its unanswered requests, which the switch never took, sent
//! again: `--resend-on-close`, counted); the two journals together hold
//! each request once, as many as loadtest sent, and the simulator saw as
//! many transactions as the journals say were forwarded.
//!
//! `haproxy` must be installed (`.ci/run` installs it); without it the
//! test fails under `CI=true` and is skipped, saying so, otherwise.

#[path = "common/admin_http.rs"]
mod admin_http;
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use switchyard::switch::journal::Record;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

/// How long one restart (drain, exit, start, HAProxy sees it up) may take.
const STEP: Duration = Duration::from_secs(30);

fn haproxy_available() -> bool {
    let found = std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "haproxy is needed for the rolling restart test under CI=true: \
             apt-get install -y haproxy (.ci/run does)"
        );
    }
    found
}

/// One switch: its config file (fixed ports, so that a restart binds the
/// same ones HAProxy knows), journal and log.
struct SwitchSlot {
    name: &'static str,
    config: PathBuf,
    journal: PathBuf,
    log: PathBuf,
    terminals: SocketAddr,
    admin: SocketAddr,
}

impl SwitchSlot {
    fn new(dir: &Path, name: &'static str, sim: SocketAddr) -> SwitchSlot {
        let terminals = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let journal = dir.join(format!("{name}-journal"));
        let config = dir.join(format!("{name}.toml"));
        let text = format!(
            r#"
test_setup = true
[terminals]
listen = "{terminals}"
max_in_flight_per_connection = 64
[admin]
listen = "{admin}"
[limits]
shutdown_grace_ms = 5000
[[acquirers]]
name = "acquirer-a"
links = ["{sim}"]
request_timeout_ms = 2000
connect_timeout_ms = 500
backoff_initial_ms = 20
backoff_max_ms = 200
[routing]
default = "acquirer-a"
[journal]
dir = "{journal}"
[store]
url = "sqlite://{store}"
[fraud]
pan_key = "000102030405060708090a0b0c0d0e0f"
"#,
            journal = journal.display(),
            // Each switch its own store beside its journal: the default
            // (data/switchyard.db in the working directory) would be shared
            // by both and kept across runs, and a store's export position
            // ahead of a switch's journal refuses its start.
            store = dir.join(format!("{name}-store/switchyard.db")).display()
        );
        std::fs::write(&config, text).expect("config");
        SwitchSlot {
            name,
            config,
            log: dir.join(format!("{name}.log")),
            journal,
            terminals,
            admin,
        }
    }

    /// `switchyard run`, its log appended to; returns once its banner
    /// shows the ports of the config.
    async fn start(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let (child, parsed) = admin_http::start_run(&self.config, log, || {
            format!("{}:\n{}", self.name, self.log_text())
        })
        .await;
        assert_eq!(parsed.terminals, self.terminals, "{}", self.name);
        assert_eq!(parsed.admin, Some(self.admin), "{}", self.name);
        child
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// HAProxy in the foreground with its config in `dir`; its stats socket
/// answers `show stat`.
struct Haproxy {
    child: Child,
    stats: PathBuf,
    frontend: SocketAddr,
}

impl Haproxy {
    async fn start(dir: &Path, switches: &[&SwitchSlot]) -> Haproxy {
        let frontend = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let stats = dir.join("haproxy.sock");
        let servers: String = switches
            .iter()
            .map(|s| {
                // The health check asks the admin port's /ready: 503 from
                // the moment a drain starts.
                format!(
                    "    server {} {} check port {} inter 100ms fall 1 rise 1\n",
                    s.name,
                    s.terminals,
                    s.admin.port()
                )
            })
            .collect();
        let config = format!(
            r#"global
    maxconn 1000
    stats socket {stats} mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout client-fin 5s
    timeout server-fin 5s
    # A connection refused by a switch that has stopped listening is
    # tried again on the other one.
    retries 3
    option redispatch 1
frontend terminals
    bind {frontend}
    default_backend switches
backend switches
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
{servers}"#,
            stats = stats.display(),
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("haproxy config");
        let check = std::process::Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("haproxy runs");
        assert!(
            check.status.success(),
            "haproxy refuses its config: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).expect("log"))
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy starts");
        Haproxy {
            child,
            stats,
            frontend,
        }
    }

    /// Each server's status as HAProxy sees it ("UP", "DOWN", ...);
    /// empty while the stats socket is not there yet.
    async fn statuses(&self) -> HashMap<String, String> {
        let Ok(mut s) = tokio::net::UnixStream::connect(&self.stats).await else {
            return HashMap::new();
        };
        if s.write_all(b"show stat\n").await.is_err() {
            return HashMap::new();
        }
        let mut out = String::new();
        let _ = timeout(GUARD, s.read_to_string(&mut out)).await;
        // CSV: pxname,svname,...; "status" is the 18th column.
        out.lines()
            .filter(|l| l.starts_with("switches,"))
            .filter_map(|l| {
                let cols: Vec<&str> = l.split(',').collect();
                Some((cols.get(1)?.to_string(), cols.get(17)?.to_string()))
            })
            .collect()
    }

    /// Until HAProxy says `server` is `status`.
    async fn wait_status(&self, server: &str, status: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            let now = self.statuses().await;
            if now.get(server).is_some_and(|s| s == status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy never saw {server} {status}: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A bare HTTP/1.0 POST with an empty body: its status code.
async fn http_post(addr: SocketAddr, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin connects");
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

/// What a journal holds: each transaction request's key (MTI, DE41,
/// DE11, DE37), and how many were forwarded.
fn journal(dir: &Path) -> (Vec<(u16, String, u32, String)>, u64) {
    let mut requests = Vec::new();
    let mut forwarded = 0;
    for r in switchyard::switch::journal::read_all(dir).expect("journal readable") {
        let (_, rec) = r.expect("a whole journal: both switches stopped in order");
        match rec {
            Record::Request { request, .. } if request.mti / 100 != 8 => requests.push((
                request.mti,
                request.terminal_id.to_string(),
                request.stan,
                request.rrn.to_string(),
            )),
            Record::Forwarded { .. } => forwarded += 1,
            _ => {}
        }
    }
    (requests, forwarded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_haproxy_answers_every_request_once() {
    if !haproxy_available() {
        eprintln!(
            "SKIPPED: haproxy is not installed (apt-get install -y haproxy; under CI=true this \
             test fails instead)"
        );
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("rolling-restart-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    // The simulator records what it receives (1,000,000 entries at most).
    let sim = start_sim().await;
    let s1 = SwitchSlot::new(dir.path(), "s1", sim.local_addr());
    let s2 = SwitchSlot::new(dir.path(), "s2", sim.local_addr());
    let mut c1 = s1.start().await;
    let mut c2 = s2.start().await;
    let haproxy = Haproxy::start(dir.path(), &[&s1, &s2]).await;
    haproxy.wait_status("s1", "UP").await;
    haproxy.wait_status("s2", "UP").await;

    // Open loop, 400/s on 8 connections for 20 s, through HAProxy.
    let target = haproxy.frontend.to_string();
    let load = tokio::task::spawn_blocking(move || {
        loadtest_run(&[
            "--target",
            &target,
            "--no-progress",
            "-R",
            "400",
            "-c",
            "8",
            "-d",
            "20s",
            "--warmup",
            "0s",
            "--timeout",
            "5s",
            "--resend-on-close",
            "3",
            "--seed",
            "16",
        ])
    });
    let started = Instant::now();
    // Both switches take traffic before the first drain.
    let deadline = Instant::now() + STEP;
    loop {
        let (_, m1) = http_get(s1.admin, "/metrics").await;
        let (_, m2) = http_get(s2.admin, "/metrics").await;
        let answered = |m: &str| metric(m, "switchyard_requests_total", &[]);
        if answered(&m1) > 50.0 && answered(&m2) > 50.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the load never reached both switches"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (slot, child) in [(&s1, &mut c1), (&s2, &mut c2)] {
        assert_eq!(http_post(slot.admin, "/api/actions/drain").await, 202);
        let status = timeout(STEP, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit after its drain", slot.name))
            .expect("waits");
        assert!(
            status.success(),
            "{} exited {status}; log:\n{}",
            slot.name,
            slot.log_text()
        );
        haproxy.wait_status(slot.name, "DOWN").await;
        *child = slot.start().await;
        haproxy.wait_status(slot.name, "UP").await;
        eprintln!(
            "{} restarted {:?} into the run",
            slot.name,
            started.elapsed()
        );
    }
    assert!(
        !load.is_finished(),
        "both restarts must happen while the load runs: make the run longer"
    );
    // The restarted switches take traffic again before the run ends.
    let report = timeout(Duration::from_secs(60), load)
        .await
        .expect("the load test ends")
        .expect("the load test ran");
    eprintln!("{}", report.to_json());

    assert!(report.sent() > 4000, "sent {}", report.sent());
    assert_eq!(report.lost(), 0, "{}", report.to_json());
    assert_eq!(report.timed_out(), 0, "{}", report.to_json());
    assert_eq!(report.mismatched(), 0, "{}", report.to_json());
    assert_eq!(report.answered(), report.sent(), "{}", report.to_json());
    // Each drain closed its switch's connections: loadtest opened them
    // again (through HAProxy, on the other switch).
    assert!(report.reconnects() >= 2, "{}", report.to_json());

    // Stopped in order, the journals are whole.
    for (slot, child) in [(&s1, &mut c1), (&s2, &mut c2)] {
        assert_eq!(http_post(slot.admin, "/api/actions/drain").await, 202);
        let status = timeout(STEP, child.wait())
            .await
            .expect("exits")
            .expect("waits");
        assert!(status.success(), "{}: {status}", slot.name);
    }
    let (mut requests, forwarded1) = journal(&s1.journal);
    let (r2, forwarded2) = journal(&s2.journal);
    assert!(
        !requests.is_empty() && !r2.is_empty(),
        "both switches took requests"
    );
    requests.extend(r2);
    let total = requests.len() as u64;
    requests.sort();
    requests.dedup();
    assert_eq!(
        requests.len() as u64,
        total,
        "a request is in the journals more than once"
    );
    assert_eq!(
        total,
        report.sent(),
        "the journals hold each request sent, once"
    );
    // The host saw, once, each transaction the switches say they
    // forwarded (fraud declines are answered without it); the links'
    // sign-ons and echoes apart.
    let host_transactions = sim.received().iter().filter(|r| r.mti.class() != 8).count() as u64;
    assert!(forwarded1 > 0 && forwarded2 > 0);
    assert_eq!(
        host_transactions,
        forwarded1 + forwarded2,
        "the host and the journals disagree"
    );
    // kill_on_drop would do it too; said here so that it is not left
    // for the end of the test's scope.
    let mut haproxy = haproxy;
    let _ = haproxy.child.kill().await;
}
