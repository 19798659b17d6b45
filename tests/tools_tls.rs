//! TLS in the tools, over real sockets on 127.0.0.1: the simulator's
//! handshakes (in-process: one that stalls or fails holds up no other
//! connection, is counted, and a stalled one is cut at its timeout), and
//! the load generator (`loadtest`'s command line and run, in this
//! process) against `switchyard sim --tls --client-ca` as a process:
//! clean with a client certificate, one handshake per request with
//! `--reconnect-every 1`, refused and not clean without a certificate.
//!
//! Every test makes its own certificates (`tools::certs`) in a temporary
//! directory.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchyard::frame::{FrameCodec, LengthHeader};
use switchyard::iso8583::{Message, MessageBuilder, Mti, specs};
use switchyard::net::{Conn, TlsConn};
use switchyard::tools::certs::Pki;
use switchyard::tools::sim::{self, SimConfig, SimHandle};
use switchyard_protocol::tls::{ClientSettings, ServerSettings, server_name};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::{Decoder, Encoder};

/// Guard against a hung test; answers normally take microseconds.
const GUARD: Duration = Duration::from_secs(10);

/// A private CA and what it issued, as PEM files.
struct Certs {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pki = Pki::new(dir.path(), "test").expect("CA");
    let server = pki.server("server", &[]).expect("server certificate");
    let client = pki
        .client("client", "TERM0001", &[])
        .expect("client certificate");
    Certs {
        ca: pki.ca.clone(),
        server_cert: server.cert,
        server_key: server.key,
        client_cert: client.cert,
        client_key: client.key,
        _dir: dir,
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

// ---- the simulator's handshakes, in-process ----

async fn tls_sim(c: &Certs, handshake_timeout: Duration) -> SimHandle {
    let tls = ServerSettings {
        cert: c.server_cert.clone(),
        key: c.server_key.clone(),
        client_ca: Some(c.ca.clone()),
        require_client_cert: true,
        ..ServerSettings::default()
    }
    .build()
    .expect("server config");
    sim::spawn(SimConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: Some(tls),
        tls_handshake_timeout: handshake_timeout,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// A terminal-side TLS client speaking framed ISO 8583.
struct TlsClient {
    conn: Conn,
    codec: FrameCodec,
    rbuf: BytesMut,
}

impl TlsClient {
    /// Connects and completes the handshake, with or without a client
    /// certificate.
    async fn connect(addr: SocketAddr, c: &Certs, with_cert: bool) -> TlsClient {
        let config = ClientSettings {
            ca: c.ca.clone(),
            cert: with_cert.then(|| c.client_cert.clone()),
            key: with_cert.then(|| c.client_key.clone()),
            ..ClientSettings::default()
        }
        .build()
        .expect("client config");
        let tcp = TcpStream::connect(addr).await.expect("connects");
        let name = server_name("localhost").expect("name");
        let conn = timeout(
            GUARD,
            TlsConn::client(tcp, config, name)
                .expect("client")
                .handshake(),
        )
        .await
        .expect("handshake within the guard")
        .expect("the client's side of the handshake completes");
        TlsClient {
            conn,
            codec: FrameCodec::new(LengthHeader::Binary2, 8192),
            rbuf: BytesMut::new(),
        }
    }

    async fn send(&mut self, body: &[u8]) {
        let mut wbuf = BytesMut::new();
        self.codec.encode(body, &mut wbuf).expect("frames");
        loop {
            self.conn.write_available(&mut wbuf).expect("writes");
            if wbuf.is_empty() && !self.conn.wants_flush() {
                return;
            }
            self.conn.tcp().writable().await.expect("writable");
        }
    }

    /// The next answer, or the error that ended the connection instead.
    async fn recv(&mut self) -> std::io::Result<Message> {
        let read = async {
            loop {
                if let Some(frame) = self.codec.decode(&mut self.rbuf).expect("well framed") {
                    return Ok(Message::parse(frame, specs::iso87ascii()).expect("parses"));
                }
                if !self.conn.has_buffered() {
                    self.conn.tcp().readable().await?;
                }
                if !self.conn.read_available(&mut self.rbuf)? {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        };
        timeout(GUARD, read).await.expect("an answer or an error")
    }
}

fn sign_on(stan: u32) -> Bytes {
    let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::NETWORK);
    b.set(7, b"1201101010")
        .set_number(11, u64::from(stan))
        .set(70, b"001");
    b.to_bytes().expect("packs").freeze()
}

async fn signed_on(client: &mut TlsClient, stan: u32) {
    client.send(&sign_on(stan)).await;
    let answer = client.recv().await.expect("an 0810");
    assert_eq!(answer.mti(), Mti::NETWORK_RESPONSE);
    assert_eq!(answer.stan(), Some(stan));
    assert_eq!(answer.response_code(), Some(*b"00"));
}

/// A client that connects and never says a word holds only its own
/// handshake: others connect, handshake and are answered meanwhile, and
/// the silent one is cut at the handshake timeout and counted.
#[tokio::test]
async fn a_stalled_handshake_holds_up_no_one_and_is_cut_at_its_timeout() {
    let c = certs();
    let limit = Duration::from_millis(300);
    let sim = tls_sim(&c, limit).await;
    let silent_since = std::time::Instant::now();
    let mut silent = TcpStream::connect(sim.local_addr())
        .await
        .expect("connects");
    let mut client = TlsClient::connect(sim.local_addr(), &c, true).await;
    signed_on(&mut client, 1).await;
    assert_eq!(sim.stats().tls_handshakes, 1);
    // The simulator closes the silent connection at its timeout, not
    // before.
    let mut buf = [0u8; 64];
    let got = timeout(GUARD, silent.read(&mut buf))
        .await
        .expect("closed within the guard");
    assert!(
        matches!(got, Ok(0) | Err(_)),
        "closed, not answered: {got:?}"
    );
    assert!(
        silent_since.elapsed() >= limit,
        "{:?}",
        silent_since.elapsed()
    );
    let counted = sim
        .wait_until(GUARD, |s| s.stats().tls_handshake_failures == 1)
        .await;
    assert!(counted, "{:?}", sim.stats());
    // The first connection is still served.
    signed_on(&mut client, 2).await;
    sim.shutdown();
}

/// A client without a certificate is refused in the handshake (TLS 1.3:
/// the client learns it at its first read) and counted; a connection
/// already open goes on being answered.
#[tokio::test]
async fn a_refused_handshake_disturbs_no_other_connection() {
    let c = certs();
    let sim = tls_sim(&c, Duration::from_secs(10)).await;
    let mut good = TlsClient::connect(sim.local_addr(), &c, true).await;
    signed_on(&mut good, 1).await;
    let mut bad = TlsClient::connect(sim.local_addr(), &c, false).await;
    bad.send(&sign_on(2)).await;
    let err = bad.recv().await.expect_err("refused, not answered");
    // The server's alert, or the close right behind it.
    let reason = switchyard_protocol::tls::failure_reason(&err);
    assert!(
        ["refused_by_peer", "closed"].contains(&reason),
        "{reason}: {err}"
    );
    let counted = sim
        .wait_until(GUARD, |s| s.stats().tls_handshake_failures == 1)
        .await;
    assert!(counted, "{:?}", sim.stats());
    signed_on(&mut good, 3).await;
    let stats = sim.stats();
    assert_eq!(stats.tls_handshakes, 1, "{stats:?}");
    assert!(
        stats.to_string().contains("tls_handshake_failures=1"),
        "{stats}"
    );
    let stans: Vec<u32> = sim.received().iter().map(|r| r.stan).collect();
    assert_eq!(stans, [1, 3], "nothing of the refused client got through");
    sim.shutdown();
}

// ---- the load generator against `switchyard sim` as a process ----

/// `switchyard sim --tls` on a free port, with its control port; killed
/// when dropped.
struct SimProcess {
    child: Child,
    addr: SocketAddr,
    control: SocketAddr,
}

impl SimProcess {
    fn start(c: &Certs) -> SimProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["sim", "--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"])
            .args(["--tls", "--cert", path(&c.server_cert)])
            .args(["--key", path(&c.server_key)])
            .args(["--client-ca", path(&c.ca)])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("switchyard sim starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut banner = String::new();
        BufReader::new(stdout)
            .read_line(&mut banner)
            .expect("reads the banner");
        // "switchyard sim: listening on A (spec ..., TLS with client
        // certificates required, control on B)"
        let word_after = |key: &str| -> SocketAddr {
            banner
                .split(key)
                .nth(1)
                .and_then(|rest| rest.split([' ', ')']).next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address after {key:?} in {banner:?}"))
        };
        assert!(
            banner.contains("TLS with client certificates required"),
            "{banner}"
        );
        SimProcess {
            addr: word_after("listening on "),
            control: word_after("control on "),
            child,
        }
    }

    /// The simulator's counters, from its control port's `stats`.
    fn stat(&self, name: &str) -> u64 {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(self.control).expect("control connects");
        s.set_read_timeout(Some(GUARD)).expect("timeout");
        s.write_all(b"stats\n").expect("asks");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("answer");
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    }

    /// Stops the simulator and returns what it logged.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut log = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut log).expect("reads the log");
        }
        log
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A short closed-loop run of `loadtest` with these extra flags, parsed
/// and checked as its command line does.
fn load(target: SocketAddr, extra: &[&str]) -> loadtest::Report {
    let target = target.to_string();
    let mut argv = vec!["--target", &target, "--no-progress"];
    argv.extend([
        "-c",
        "4",
        "-d",
        "1s",
        "--warmup",
        "200ms",
        "--timeout",
        "2s",
    ]);
    argv.extend(extra);
    common::loadtest_run(&argv)
}

fn with_client_cert(c: &Certs) -> Vec<&str> {
    vec![
        "--tls",
        "--ca",
        path(&c.ca),
        "--cert",
        path(&c.client_cert),
        "--key",
        path(&c.client_key),
    ]
}

fn json(r: &loadtest::Report) -> serde_json::Value {
    serde_json::from_str(&r.to_json()).expect("valid JSON")
}

fn warmup_sent(r: &loadtest::Report) -> u64 {
    json(r)["warmup"]["sent"].as_u64().expect("warmup sent")
}

#[test]
fn loadtest_with_a_client_certificate_is_answered_in_full() {
    let c = certs();
    let sim = SimProcess::start(&c);
    let r = load(sim.addr, &with_client_cert(&c));
    assert!(r.sent() > 100, "{r:?}");
    assert_eq!(r.answered(), r.sent(), "{:?}", r.problems());
    assert_eq!(r.errors(), 0);
    assert!(r.is_clean(), "{:?}", r.problems());
    assert_eq!(r.exit_code(), 0);
    assert_eq!(r.handshakes(), 4, "one per connection");
    assert_eq!(r.connections_opened(), 4);
    assert_eq!(r.handshake_failures().0, 0);
    let j = json(&r);
    assert_eq!(j["tls"]["handshakes"], 4);
    assert_eq!(j["tls"]["handshake_failures"], 0);
    assert_eq!(sim.stat("tls_handshakes"), 4);
    assert_eq!(sim.stat("tls_handshake_failures"), 0);
    assert_eq!(sim.stat("answered"), r.sent() + warmup_sent(&r) + 4);
}

#[test]
fn reconnect_every_1_makes_a_handshake_per_request() {
    let c = certs();
    let sim = SimProcess::start(&c);
    let mut flags = with_client_cert(&c);
    flags.extend(["--reconnect-every", "1"]);
    let r = load(sim.addr, &flags);
    let requests = r.sent() + warmup_sent(&r);
    assert!(r.sent() > 10, "{r:?}");
    assert!(
        r.handshakes() >= requests,
        "{} handshakes for {requests} requests",
        r.handshakes()
    );
    assert_eq!(r.handshakes(), r.connections_opened());
    assert!(r.reopens() + 4 >= requests, "{r:?}");
    assert!(r.is_clean(), "{:?}", r.problems());
    assert!(r.handshake_rate() > 0.0);
    assert_eq!(sim.stat("tls_handshakes"), r.handshakes());
    let mut text = Vec::new();
    r.print_human(&mut text).expect("prints");
    let text = String::from_utf8(text).expect("utf8");
    assert!(text.contains("reopened (--reconnect-every 1)"), "{text}");
    assert!(text.contains("handshakes completed"), "{text}");
    assert!(
        json(&r)["tls"]["resumed"].as_u64() > Some(0),
        "resumption is on by default"
    );
}

#[test]
fn no_resume_makes_every_handshake_a_full_one() {
    let c = certs();
    let sim = SimProcess::start(&c);
    let mut flags = with_client_cert(&c);
    flags.extend(["--reconnect-every", "1", "--no-resume"]);
    let r = load(sim.addr, &flags);
    assert!(r.handshakes() > 10, "{r:?}");
    assert!(r.is_clean(), "{:?}", r.problems());
    assert_eq!(json(&r)["tls"]["resumed"], 0, "{:?}", json(&r)["tls"]);
}

/// Without a client certificate every handshake is refused: counted with
/// its reason, not clean (exit status 1), and the simulator logs each
/// refusal (rate-limited) with the peer and the reason; a run with a
/// certificate at the same time is not disturbed.
#[test]
fn loadtest_without_a_client_certificate_is_refused_and_not_clean() {
    let c = certs();
    let sim = SimProcess::start(&c);
    let addr = sim.addr;
    let good_flags: Vec<String> = with_client_cert(&c).iter().map(|s| s.to_string()).collect();
    let good = std::thread::spawn(move || {
        let flags: Vec<&str> = good_flags.iter().map(String::as_str).collect();
        load(addr, &flags)
    });
    let r = load(sim.addr, &["--tls", "--ca", path(&c.ca)]);
    let good = good.join().expect("the good run");
    assert!(good.is_clean(), "{:?}", good.problems());
    assert_eq!(good.handshakes(), 4);

    assert_eq!(r.sent(), 0);
    assert_eq!(r.handshakes(), 0);
    let (failures, reasons) = r.handshake_failures();
    assert!(failures >= 4, "each connection tried: {failures}");
    let reasons: Vec<String> = reasons.iter().map(|(r, _)| r.to_string()).collect();
    assert!(
        reasons
            .iter()
            .all(|r| r == "refused_by_peer:CertificateRequired" || r == "closed"),
        "{reasons:?}"
    );
    assert!(!r.is_clean());
    assert_eq!(r.exit_code(), 1);
    let problems = r.problems().join("; ");
    assert!(
        problems.contains(&format!("{failures} TLS handshakes failed")),
        "{problems}"
    );
    let j = json(&r);
    assert_eq!(j["clean"], false);
    assert_eq!(j["tls"]["handshake_failures"], failures);
    let refused = sim.stat("tls_handshake_failures");
    assert!(refused >= failures, "the simulator counted {refused}");
    let log = sim.stop();
    assert!(log.contains("sim: TLS handshake failed"), "{log}");
    assert!(log.contains("peer=127.0.0.1:"), "{log}");
    assert!(log.contains("reason=\"no_certificate\""), "{log}");
}

#[test]
fn sim_tls_flags_are_refused_by_name() {
    let c = certs();
    let sim = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["sim", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("runs")
    };
    let missing = c.ca.with_file_name("missing.pem");
    let cases: [(Vec<&str>, String); 4] = [
        (
            vec!["--client-ca", path(&c.ca)],
            "--client-ca needs --tls".into(),
        ),
        (
            vec!["--tls", "--cert", path(&c.server_cert)],
            "--tls needs --cert FILE and --key FILE".into(),
        ),
        (
            vec![
                "--tls",
                "--cert",
                path(&missing),
                "--key",
                path(&c.server_key),
            ],
            format!("--cert {}: ", missing.display()),
        ),
        (
            vec![
                "--tls",
                "--cert",
                path(&c.server_cert),
                "--key",
                path(&c.ca),
            ],
            format!("--key {}: no usable private key", c.ca.display()),
        ),
    ];
    for (args, want) in cases {
        let out = sim(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("switchyard sim: {want}")),
            "{args:?}: {stderr}"
        );
    }
}

/// `switchyard certs --dir D` (hidden): the files it lists exist, keys
/// are readable by their owner only, and they make a working server
/// configuration that requires client certificates.
#[test]
fn the_certs_command_writes_usable_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("made");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["certs", "--dir", path(&out_dir)])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{:?}", out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let file = |what: &str| -> PathBuf {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{what}: ")))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no {what:?} in {stdout}"))
    };
    for what in [
        "ca",
        "server cert",
        "server key",
        "client key",
        "link client cert (CN SWITCH01)",
        "link client key",
    ] {
        assert!(file(what).starts_with(&out_dir), "{what}: {stdout}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file("client key"))
            .expect("key written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    ServerSettings {
        cert: file("server cert"),
        key: file("server key"),
        client_ca: Some(file("ca")),
        require_client_cert: true,
        ..ServerSettings::default()
    }
    .build()
    .expect("a server configuration");
    ClientSettings {
        ca: file("ca"),
        cert: Some(file("client cert (CN TERM0001)")),
        key: Some(file("client key")),
        ..ClientSettings::default()
    }
    .build()
    .expect("a client configuration");
    let help = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--help")
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("decode") && !help.contains("certs"), "{help}");
}
