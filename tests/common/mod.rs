//! Helpers for end-to-end tests: a terminal client over a real socket, a
//! switch and simulator on free loopback ports, and config text.
//!
//! Timeouts here only conclude that nothing came ("no answer within
//! 300 ms") or guard against a hung test; they never bound how fast the
//! switch must be.

#![allow(dead_code)]

pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchyard::frame::{FrameCodec, LengthHeader};
use switchyard::iso8583::{Message, MessageBuilder, Mti, specs};
use switchyard::switch::config::Config;
use switchyard::switch::server::Switch;
use switchyard::tools::sim::{self, SimConfig, SimHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::{Decoder, Encoder};

/// How long to wait before concluding that no answer is coming.
pub const SILENCE: Duration = Duration::from_millis(300);
/// Guard against a hung test.
pub const GUARD: Duration = Duration::from_secs(10);

pub const PAN: &str = "4761739001010010";
pub const TID: &str = "TERM0001";

/// A card terminal: framed ISO 8583 (iso87ascii, 2-byte header).
pub struct Terminal {
    pub stream: TcpStream,
    codec: FrameCodec,
    rbuf: BytesMut,
}

impl Terminal {
    pub async fn connect(addr: SocketAddr) -> Terminal {
        let stream = TcpStream::connect(addr).await.expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        Terminal {
            stream,
            codec: FrameCodec::new(LengthHeader::Binary2, 8192),
            rbuf: BytesMut::new(),
        }
    }

    /// Over a stream already open (a test playing the host of a link).
    pub fn over(stream: TcpStream) -> Terminal {
        Terminal {
            stream,
            codec: FrameCodec::new(LengthHeader::Binary2, 8192),
            rbuf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, body: &[u8]) {
        let mut out = BytesMut::new();
        self.codec.encode(body, &mut out).expect("frames");
        self.send_raw(&out).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("writes");
    }

    /// The next answer; `None` once the switch has closed the connection.
    pub async fn recv_or_closed(&mut self) -> Option<Message> {
        timeout(GUARD, async {
            loop {
                if let Some(frame) = self.codec.decode(&mut self.rbuf).expect("well framed") {
                    return Some(
                        Message::parse(frame, specs::iso87ascii()).expect("answer parses"),
                    );
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                    Err(e) => panic!("read: {e}"),
                }
            }
        })
        .await
        .expect("an answer or a close within the guard time")
    }

    pub async fn recv(&mut self) -> Message {
        self.recv_or_closed()
            .await
            .expect("an answer, not a closed connection")
    }

    /// Asserts that nothing arrives within `SILENCE`.
    pub async fn expect_silence(&mut self) {
        let got = timeout(SILENCE, self.recv_or_closed()).await;
        if let Ok(m) = got {
            panic!(
                "expected nothing, got {:?}",
                m.map(|m| m.dump().to_string())
            );
        }
    }

    /// Asserts that the switch closes the connection.
    pub async fn expect_closed(&mut self) {
        let got = self.recv_or_closed().await;
        assert!(
            got.is_none(),
            "expected a close, got {:?}",
            got.map(|m| m.dump().to_string())
        );
    }

    pub async fn request(&mut self, body: &[u8]) -> Message {
        self.send(body).await;
        self.recv().await
    }
}

/// A request with the fields a switch requires (DE 2, 3, 4, 7, 11, 18, 37,
/// 41, 42, 49); RRN is 500000000000 + STAN.
pub fn auth(mti: Mti, stan: u32, pan: &str, amount: u64) -> Bytes {
    auth_from(mti, stan, pan, amount, TID)
}

pub fn auth_from(mti: Mti, stan: u32, pan: &str, amount: u64, tid: &str) -> Bytes {
    let pan = pan.as_bytes().to_vec();
    let tid = tid.as_bytes().to_vec();
    let rrn = format!("{:012}", 500_000_000_000u64 + stan as u64).into_bytes();
    let mut b = MessageBuilder::new(specs::iso87ascii(), mti);
    b.set(2, &pan)
        .set(3, b"000000")
        .set_number(4, amount)
        .set(7, b"1125101010")
        .set_number(11, stan as u64)
        .set(18, b"5411")
        .set(37, &rrn)
        .set(41, &tid)
        .set(42, b"MERCHANT0000001")
        .set(49, b"840");
    b.to_bytes().expect("packs").freeze()
}

/// 0800 with DE70 `code` (001 sign-on, 301 echo, 002 sign-off).
pub fn network(stan: u32, code: &str) -> Bytes {
    let code = code.as_bytes().to_vec();
    let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::NETWORK);
    b.set(7, b"1125101010")
        .set_number(11, stan as u64)
        .set(70, &code);
    b.to_bytes().expect("packs").freeze()
}

pub fn code(m: &Message) -> String {
    m.response_code()
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .unwrap_or_else(|| "<none>".to_owned())
}

pub fn text(m: &Message, n: usize) -> String {
    m.field(n)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A port that was free a moment ago (for "host down at start" tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A loopback port with nothing listening on it, held so that no other
/// test can take it meanwhile: bound but not listening, so a connection
/// to it is refused, as to a host that is down. [`free_port`]'s port is
/// free only when asked: another test's listener may take it before this
/// test starts its own there (a switch then reached some other test's
/// process). Drop it just before binding the port.
pub struct ReservedPort {
    _socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

pub fn reserve_port() -> ReservedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bound");
    let addr = socket.local_addr().expect("its address");
    ReservedPort {
        _socket: socket,
        addr,
    }
}

/// The simulator's defaults, on a free port (not its well-known 9583).
pub fn sim_config() -> SimConfig {
    SimConfig {
        listen: free_addr(),
        ..SimConfig::default()
    }
}

pub async fn start_sim() -> SimHandle {
    start_sim_with(sim_config()).await
}

pub async fn start_sim_with(config: SimConfig) -> SimHandle {
    sim::spawn(config).await.expect("simulator starts")
}

fn links_toml(links: &[SocketAddr]) -> String {
    links
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One acquirer `acquirer-a` on `links`, default route to it; `acquirer`
/// adds keys to its table, `extra` appends whole tables.
pub fn config(links: &[SocketAddr], acquirer: &str, extra: &str) -> String {
    config_routed(links, acquirer, "default = \"acquirer-a\"\n", extra)
}

pub fn config_routed(links: &[SocketAddr], acquirer: &str, routing: &str, extra: &str) -> String {
    config_full(links, "", acquirer, routing, extra)
}

/// As `config`, with keys added to `[terminals]`.
pub fn config_terminals(links: &[SocketAddr], terminals: &str) -> String {
    config_full(links, terminals, "", "default = \"acquirer-a\"\n", "")
}

fn config_full(
    links: &[SocketAddr],
    terminals: &str,
    acquirer: &str,
    routing: &str,
    extra: &str,
) -> String {
    let journal = fresh_journal_dir();
    format!(
        r#"
test_setup = true
[terminals]
listen = "127.0.0.1:0"
{terminals}
[admin]
listen = "127.0.0.1:0"
[limits]
shutdown_grace_ms = 3000
[[acquirers]]
name = "acquirer-a"
links = [{links}]
{timeout}
connect_timeout_ms = 500
backoff_initial_ms = 20
backoff_max_ms = 200
{acquirer}
[routing]
{routing}
[journal]
dir = "{journal}"
[fraud]
pan_key = "000102030405060708090a0b0c0d0e0f"
{extra}
{store}
"#,
        journal = journal.display(),
        // The store is on by default: each switch its own, beside its
        // journal, unless the test configures one. After `extra`, whose
        // first lines may be keys of `[fraud]`.
        store = if extra.contains("[store]") {
            String::new()
        } else {
            format!(
                "[store]\nurl = \"sqlite://{}-store/switchyard.db\"",
                journal.display()
            )
        },
        links = links_toml(links),
        // A test that sets its own timeout keeps it.
        terminals = if terminals.contains("max_in_flight_per_connection") {
            terminals.to_owned()
        } else {
            format!("max_in_flight_per_connection = 64\n{terminals}")
        },
        timeout = if acquirer.contains("request_timeout_ms") {
            ""
        } else {
            "request_timeout_ms = 1000"
        },
    )
}

/// A new, empty journal directory for one switch.
pub fn fresh_journal_dir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Under target/, so `cargo clean` takes them away.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "switchyard-test-{}-{n}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub async fn start_switch(toml: &str) -> Switch {
    let config = Config::parse(toml).unwrap_or_else(|e| panic!("test config invalid: {e:?}"));
    Switch::start(config).await.expect("switch starts")
}

/// Waits until every link of every acquirer is up.
pub async fn wait_links_up(switch: &Switch) {
    for a in &switch.shared.acquirers {
        for l in &a.links {
            timeout(GUARD, l.shared.wait_for(true))
                .await
                .expect("link comes up");
        }
    }
}

/// A minimal HTTP/1.0 GET: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("admin connects");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("writes");
    let mut out = Vec::new();
    timeout(GUARD, s.read_to_end(&mut out))
        .await
        .expect("admin answers")
        .expect("reads");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// The value of one Prometheus sample line (`name{labels} value`), summed
/// over lines that contain every one of `parts`.
pub fn metric(body: &str, name: &str, parts: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts `switchyard run` and returns it with its terminal address, read
/// from the banner it prints once it listens.
pub async fn start_process(
    config: &std::path::Path,
) -> (tokio::process::Child, std::net::SocketAddr) {
    let (child, banner) = start_process_banner(config).await;
    (child, banner.terminals)
}

/// What `switchyard run` says it listens on, from its banner.
#[derive(Debug, Clone, Copy)]
pub struct Banner {
    pub terminals: SocketAddr,
    /// `[terminals.tls]`: where TLS terminals connect (`terminals` itself
    /// when the listener speaks TLS).
    pub tls: Option<SocketAddr>,
    /// The admin endpoint, unless disabled.
    pub admin: Option<SocketAddr>,
}

impl Banner {
    /// "switchyard: terminals on ADDR[, TLS terminals on ADDR], metrics
    /// (http[s]://ADDR/metrics|off); Ctrl-C to stop"
    pub fn parse(line: &str) -> Option<Banner> {
        let after = |marker: &str| line.split(marker).nth(1);
        let terminals = after("switchyard: terminals on ")?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()?;
        let tls = match after("TLS terminals on ") {
            Some(rest) => Some(rest.split(',').next()?.trim().parse().ok()?),
            None => None,
        };
        let admin = match after("metrics http://").or_else(|| after("metrics https://")) {
            Some(rest) => Some(rest.split('/').next()?.parse().ok()?),
            None => None,
        };
        Some(Banner {
            terminals,
            tls,
            admin,
        })
    }
}

/// Starts `switchyard run` (RUST_LOG=warn, stderr discarded) and returns
/// it with what its banner says, once it printed it.
pub async fn start_process_banner(config: &std::path::Path) -> (tokio::process::Child, Banner) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        // Test configs may leave pan_key unset (the development key).
        .args(["run", "--allow-dev-key", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("switchyard starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let banner = timeout(GUARD, lines.next_line())
        .await
        .expect("banner in time")
        .expect("reads")
        .expect("a banner line");
    let parsed = Banner::parse(&banner).unwrap_or_else(|| panic!("no address in banner: {banner}"));
    (child, parsed)
}

/// Polls the admin endpoint's /metrics until `done` holds for the sum of
/// `name`'s samples with every one of `parts` (see [`metric`]); returns
/// that value, or panics naming the metric after the guard time.
pub async fn wait_metric(
    admin: SocketAddr,
    name: &str,
    parts: &[&str],
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let (_, body) = http_get(admin, "/metrics").await;
        let v = metric(&body, name, parts);
        if done(v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{parts:?} is {v}, still not as awaited after {GUARD:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// This process's log, captured: every line the switch's tracing writes
/// (INFO and up), for tests of what operators read.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Installs the capture as this process's subscriber, once: every
    /// test of the binary that calls it shares one log (filter lines by
    /// what is unique to the test: an address, an acquirer's name).
    pub fn install() -> Captured {
        static LOG: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
        LOG.get_or_init(|| {
            let log = Captured::default();
            let writer = log.clone();
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(move || writer.clone())
                .init();
            log
        })
        .clone()
    }

    /// Lines at `level` ("WARN", "INFO"...) that contain `text`.
    pub fn lines(&self, level: &str, text: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
            .lines()
            .filter(|l| l.contains(level) && l.contains(text))
            .map(str::to_owned)
            .collect()
    }
}

#[derive(clap::Parser)]
struct LoadCli {
    #[command(flatten)]
    args: loadtest::cli::LoadArgs,
}

/// A `loadtest` run in this process, its flags (`argv` without the
/// program's name) parsed and checked as its command line does. Blocking:
/// call it from `spawn_blocking` when a switch runs in the same runtime.
pub fn loadtest_run(argv: &[&str]) -> loadtest::Report {
    use clap::Parser;
    let config = LoadCli::try_parse_from(std::iter::once("loadtest").chain(argv.iter().copied()))
        .expect("flags parse")
        .args
        .to_config()
        .expect("flags are accepted");
    loadtest::run(config).expect("runs")
}

/// Every maximal run of 13 to 19 digits that passes the Luhn check,
/// except the fraction of a decimal number (`0.30000000000000004`).
pub fn card_numbers(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let fraction = start >= 2 && b[start - 1] == b'.' && b[start - 2].is_ascii_digit();
        let run = &b[start..i];
        if (13..=19).contains(&run.len()) && !fraction && switchyard::iso8583::values::luhn_ok(run)
        {
            found.push(String::from_utf8_lossy(run).into_owned());
        }
    }
    found
}

/// `switchyard ARGS` with `stdin`: (status, stdout, stderr).
pub async fn cli(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("switchyard starts");
    let mut input = child.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut input, stdin.as_bytes())
        .await
        .expect("writes");
    drop(input);
    let out = timeout(GUARD * 3, child.wait_with_output())
        .await
        .expect("the CLI ends in time")
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
