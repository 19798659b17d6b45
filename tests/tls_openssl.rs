//! OpenSSL's `s_client` against `switchyard run` as a process with
//! `[terminals.tls]` (client certificates required, `s_client` presents
//! one): a TLS 1.1 ClientHello is refused and counted under
//! reason="version"; TLS 1.2 and 1.3 connect, the server's certificate
//! checks out against the CA and the name, and a framed 0800 and 0200 sent
//! through `s_client` get their 0810 and 0210.
//!
//! `openssl` must be installed (`.ci/run` installs Debian's package when
//! it is missing); without it these tests fail, they do not skip.

mod common;

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};

use bytes::BytesMut;
use common::tls::{Certs, certs, toml_path};
use common::*;
use switchyard::frame::{FrameCodec, LengthHeader};
use switchyard::iso8583::{Message, Mti, specs};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;
use tokio_util::codec::{Decoder, Encoder};

/// The `openssl` program, or a failure that says how to get it.
fn openssl() -> &'static str {
    match std::process::Command::new("openssl")
        .arg("version")
        .output()
    {
        Ok(out) if out.status.success() => "openssl",
        Ok(out) => panic!(
            "`openssl version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "these tests need the openssl command line tool ({e}); \
             install it (Debian: apt-get install openssl; .ci/run does)"
        ),
    }
}

/// What one `s_client` run did.
struct Session {
    status: ExitStatus,
    /// Its summary (`-brief` writes it, and its errors, to stderr).
    log: String,
    /// "TLSv1.2", "TLSv1.3": from "Protocol version: ..." once connected.
    protocol: Option<String>,
    answers: Vec<Message>,
}

/// Runs `openssl s_client` against `addr` with `version` ("-tls1_2"...)
/// and `extra` flags, presenting the terminal's client certificate and
/// checking the server's against the CA and "localhost". Once it says it
/// is connected, writes `requests` framed (2-byte header) to its stdin and
/// reads as many answers from its stdout, then closes its stdin.
async fn s_client(
    addr: SocketAddr,
    c: &Certs,
    version: &str,
    extra: &[&str],
    requests: &[bytes::Bytes],
) -> Session {
    let mut child = tokio::process::Command::new(openssl())
        .arg("s_client")
        .args(["-connect", &addr.to_string()])
        .arg(version)
        .args(extra)
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .arg("-verify_return_error")
        .arg("-CAfile")
        .arg(&c.pki.ca)
        .arg("-cert")
        .arg(&c.term1.cert)
        .arg("-key")
        .arg(&c.term1.key)
        // The summary only, on stderr: stdout carries the server's bytes.
        .args(["-brief", "-nocommands"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_client starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();

    let mut log = String::new();
    let mut protocol = None;
    // Its summary ends the handshake: "CONNECTION ESTABLISHED", then
    // "Protocol version: TLSv1.3"; a refusal ends stderr instead.
    while protocol.is_none() {
        let line = timeout(GUARD, stderr.next_line())
            .await
            .expect("s_client says something in time")
            .expect("reads stderr");
        let Some(line) = line else { break };
        log.push_str(&line);
        log.push('\n');
        protocol = line
            .strip_prefix("Protocol version: ")
            .map(|v| v.trim().to_owned());
    }

    let mut answers = Vec::new();
    if protocol.is_some() {
        let mut codec = FrameCodec::new(LengthHeader::Binary2, 8192);
        let mut out = BytesMut::new();
        for r in requests {
            codec.encode(&r[..], &mut out).expect("frames");
        }
        stdin.write_all(&out).await.expect("writes to s_client");
        stdin.flush().await.expect("flushes");
        let mut rbuf = BytesMut::new();
        while answers.len() < requests.len() {
            if let Some(frame) = codec.decode(&mut rbuf).expect("well framed") {
                answers.push(Message::parse(frame, specs::iso87ascii()).expect("answer parses"));
                continue;
            }
            let n = timeout(GUARD, stdout.read_buf(&mut rbuf))
                .await
                .expect("answers through s_client in time")
                .expect("reads stdout");
            if n == 0 {
                break;
            }
        }
    }
    // End of input: s_client says goodbye and exits.
    drop(stdin);
    let rest = async {
        while let Ok(Some(line)) = stderr.next_line().await {
            log.push_str(&line);
            log.push('\n');
        }
    };
    timeout(GUARD, rest)
        .await
        .expect("s_client ends its output");
    let status = timeout(GUARD, child.wait())
        .await
        .expect("s_client exits in time")
        .expect("exit status");
    Session {
        status,
        log,
        protocol,
        answers,
    }
}

/// A simulator, and the switch process with TLS on its terminal listener.
async fn start() -> (
    Certs,
    switchyard::tools::sim::SimHandle,
    tokio::process::Child,
    SocketAddr,
    SocketAddr,
) {
    openssl();
    let c = certs();
    let sim = start_sim().await;
    let tls = format!(
        "[terminals.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        toml_path(&c.server.cert),
        toml_path(&c.server.key),
        toml_path(&c.pki.ca)
    );
    let path = c.dir.path().join("switch.toml");
    std::fs::write(&path, config_terminals(&[sim.local_addr()], &tls)).expect("config");
    let (child, banner) = start_process_banner(&path).await;
    assert_eq!(
        banner.tls,
        Some(banner.terminals),
        "the terminal listener itself speaks TLS"
    );
    let admin = banner.admin.expect("admin endpoint");
    (c, sim, child, banner.terminals, admin)
}

const FAILURES: &str = "switchyard_tls_handshake_failures_total";
const HANDSHAKES: &str = "switchyard_tls_handshakes_total";

#[tokio::test]
async fn a_tls_1_1_hello_is_refused_and_counted_as_a_version_refusal() {
    let (c, _sim, _child, addr, admin) = start().await;
    let version = ["listener=\"terminals\"", "reason=\"version\""];
    let before = metric(&http_get(admin, "/metrics").await.1, FAILURES, &version);
    // OpenSSL 3 at its default security level refuses TLS 1.1 itself,
    // before sending anything: level 0 lets the ClientHello go out.
    let s = s_client(addr, &c, "-tls1_1", &["-cipher", "DEFAULT@SECLEVEL=0"], &[]).await;
    assert!(!s.status.success(), "s_client -tls1_1 failed: {}", s.log);
    assert_eq!(s.protocol, None, "no session: {}", s.log);
    // The switch counts the refusal just after its alert went out.
    let after = wait_metric(admin, FAILURES, &version, |v| v > before).await;
    assert_eq!(after, before + 1.0, "one refusal for one hello");
    let body = http_get(admin, "/metrics").await.1;
    assert_eq!(
        metric(&body, FAILURES, &["listener=\"terminals\""]),
        after,
        "counted under reason=\"version\" and no other: {body}"
    );
    assert_eq!(metric(&body, HANDSHAKES, &[]), 0.0);
}

#[tokio::test]
async fn tls_1_2_and_1_3_connect_and_carry_iso8583() {
    let (c, _sim, _child, addr, admin) = start().await;
    // The 0200 goes to the host: wait until the link is up.
    wait_metric(admin, "switchyard_link_up", &[], |v| v >= 1.0).await;
    for (n, (flag, want)) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")]
        .into_iter()
        .enumerate()
    {
        let stan = 100 * (n as u32 + 1);
        let requests = [
            network(stan, "301"),
            auth(Mti::FINANCIAL, stan + 1, PAN, 1500),
        ];
        let s = s_client(addr, &c, flag, &[], &requests).await;
        assert_eq!(s.protocol.as_deref(), Some(want), "{flag}: {}", s.log);
        assert!(
            s.log.contains("Verification: OK"),
            "{flag}: the switch's certificate checks out: {}",
            s.log
        );
        assert!(
            s.status.success(),
            "{flag}: exit status {}: {}",
            s.status,
            s.log
        );
        assert_eq!(s.answers.len(), 2, "{flag}: two answers: {}", s.log);
        let echo = &s.answers[0];
        assert_eq!(echo.mti(), Mti::NETWORK_RESPONSE, "{flag}");
        assert_eq!(echo.stan(), Some(stan), "{flag}");
        assert_eq!(code(echo), "00", "{flag}");
        let auth = &s.answers[1];
        assert_eq!(auth.mti(), Mti::FINANCIAL_RESPONSE, "{flag}");
        assert_eq!(auth.stan(), Some(stan + 1), "{flag}");
        assert_eq!(code(auth), "00", "{flag}: approved by the host");
        let handshakes = metric(
            &http_get(admin, "/metrics").await.1,
            HANDSHAKES,
            &["listener=\"terminals\""],
        );
        assert_eq!(handshakes, n as f64 + 1.0, "{flag}: counted");
    }
    let body = http_get(admin, "/metrics").await.1;
    assert_eq!(metric(&body, FAILURES, &[]), 0.0, "no refusal: {body}");
}
