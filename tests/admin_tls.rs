//! `[admin.tls]` end to end: `switchyard run` as a process, and Python's
//! ssl module (OpenSSL) as the operator's client (tests/interop/
//! admin_https.py): the certificate checks out against the CA and the
//! name, a login with password and TOTP works over HTTPS and its cookie
//! carries `Secure`, the session is honoured; a plain-HTTP request to the
//! port gets no HTTP answer and is closed, while a TLS connection opened
//! before it is answered after it; the refusal is counted. SIGHUP re-reads
//! the certificate: a client trusting only a new CA gets through after
//! it. And `check-config` names a bad `[admin.tls]` key.

#[path = "common/admin_http.rs"]
mod admin_http;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use admin_http::*;
use common::tls::toml_path;
use common::*;
use serde_json::Value;
use switchyard::tools::certs::{CertFiles, Pki};

fn python() -> String {
    // Only the standard library is used: any python3 will do.
    std::env::var("SWITCHYARD_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn config(d: &Dir, server: &CertFiles) -> String {
    format!(
        r#"
test_setup = true
[terminals]
listen = "127.0.0.1:0"
{admin}
[admin.tls]
cert = "{cert}"
key = "{key}"
[journal]
dir = "{journal}"
[fraud]
pan_key = "000102030405060708090a0b0c0d0e0f"
"#,
        admin = d.admin_table(),
        cert = toml_path(&server.cert),
        key = toml_path(&server.key),
        journal = toml_path(&d.journal),
    )
}

fn code_now(secret: &[u8]) -> String {
    use switchyard::switch::admin::totp;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    totp::code(secret, totp::step(now))
}

/// Runs admin_https.py against `admin` trusting `ca`: what it saw.
async fn client(
    admin: SocketAddr,
    ca: &std::path::Path,
    user: &str,
    pw: &str,
    code: &str,
) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/admin_https.py");
    let out = tokio::time::timeout(
        GUARD,
        tokio::process::Command::new(python())
            .arg(script)
            .arg(admin.port().to_string())
            .arg(ca)
            .args([user, pw, code])
            .output(),
    )
    .await
    .expect("the client ends in time")
    .expect("python3 runs (apt-get install python3)");
    assert!(
        out.status.success(),
        "admin_https.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[tokio::test]
async fn an_operator_logs_in_over_https_and_plain_http_is_refused() {
    let d = Dir::new("admin-tls-");
    let pki_dir = d.path().join("pki");
    std::fs::create_dir_all(&pki_dir).expect("pki dir");
    let mut pki = Pki::new(&pki_dir, "admin").expect("CA");
    let server = pki.server("admin-server", &[]).expect("server cert");
    let secret = add_user(&d, "olga", "operator", "olga's long passphrase").await;
    std::fs::write(&d.config, config(&d, &server)).expect("config");
    let (mut child, banner) = start_logged(&d).await;
    let admin = banner.admin.expect("admin on");

    let seen = client(
        admin,
        &pki.ca,
        "olga",
        "olga's long passphrase",
        &code_now(&secret),
    )
    .await;
    let login = &seen["login"];
    assert_eq!(login["status"], 200, "{seen}");
    assert!(
        matches!(login["tls_version"].as_str(), Some("TLSv1.2" | "TLSv1.3")),
        "{seen}"
    );
    assert_eq!(login["alpn"], "http/1.1", "{seen}");
    let cookie = login["set_cookie"].as_str().expect("a Set-Cookie");
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert!(attributes[0].starts_with("switchyard_session="), "{cookie}");
    for a in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(attributes.contains(&a), "no {a} in {cookie}");
    }
    assert_eq!(seen["session"]["status"], 200, "{seen}");
    assert!(
        seen["session"]["body"]
            .as_str()
            .is_some_and(|b| b.contains("\"olga\"")),
        "{seen}"
    );

    // Plain HTTP: closed, and no HTTP answer among what came back (at
    // most a TLS alert record: content type 21).
    let plain = &seen["plain"];
    assert_eq!(plain["closed"], true, "{seen}");
    let reply = data_encoding::HEXLOWER
        .decode(plain["reply_hex"].as_str().expect("hex").as_bytes())
        .expect("hex");
    assert!(!reply.starts_with(b"HTTP/"), "{seen}");
    assert!(
        reply.is_empty() || reply[0] == 21,
        "not a TLS alert: {seen}"
    );
    // The TLS connection opened before it is still served.
    assert_eq!(seen["established_after_plain"], "HTTP/1.1 200 OK", "{seen}");
    // The login is on record, the refusal counted.
    let logins: Vec<Value> = d
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "login_ok")
        .collect();
    assert_eq!(logins.len(), 1, "{:?}", d.audit_lines());
    let cookie_pair = attributes[0];
    let metrics = https_get_metrics(admin, &pki.ca, cookie_pair).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_tls_handshake_failures_total")
                && l.contains("listener=\"admin\"")),
        "{metrics}"
    );

    // SIGHUP: a new certificate from a new CA; a client trusting only the
    // new CA gets through afterwards (and not before).
    let mut pki2 = Pki::new(&pki_dir, "admin2").expect("CA");
    let fresh = pki2.server("admin-server2", &[]).expect("server cert");
    assert!(python_handshake(admin, &pki2.ca).await.is_err());
    std::fs::copy(&fresh.cert, &server.cert).expect("cert swapped");
    std::fs::copy(&fresh.key, &server.key).expect("key swapped");
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) with our own child's pid and a valid signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        if python_handshake(admin, &pki2.ca).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served; log:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(python_handshake(admin, &pki.ca).await.is_err());
    assert!(stop(&mut child).await.success());
}

/// GET /metrics over HTTPS (Python, trusting `ca`).
async fn https_get_metrics(admin: SocketAddr, ca: &std::path::Path, cookie: &str) -> String {
    let script = r#"
import http.client, socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
c = http.client.HTTPSConnection("localhost", int(sys.argv[1]), context=ctx, timeout=10)
c.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10), server_hostname="localhost")
c.request("GET", "/metrics", headers={"Cookie": sys.argv[3]})
r = c.getresponse()
assert r.status == 200, r.status
sys.stdout.write(r.read().decode())
"#;
    let out = tokio::process::Command::new(python())
        .args(["-c", script, &admin.port().to_string()])
        .arg(ca)
        .arg(cookie)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A handshake only (Python, trusting `ca`): `Err` with what OpenSSL said.
async fn python_handshake(admin: SocketAddr, ca: &std::path::Path) -> Result<(), String> {
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10), server_hostname="localhost")
s.close()
"#;
    let out = tokio::process::Command::new(python())
        .args(["-c", script, &admin.port().to_string()])
        .arg(ca)
        .output()
        .await
        .expect("python3 runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn check_config_names_bad_admin_tls_keys() {
    let d = Dir::new("admin-tls-check-");
    let text = format!(
        r#"
[admin]
listen = "0.0.0.0:9443"
users_file = "{users}"
[admin.tls]
cert = "{missing}"
bind_terminal_id = "cn"
"#,
        users = toml_path(&d.users),
        missing = toml_path(&d.path().join("no-such-cert.pem")),
    );
    std::fs::write(&d.config, text).expect("config");
    let (status, _, err) = cli(&["check-config", d.config.to_str().expect("utf-8")], "").await;
    assert_ne!(status, 0, "{err}");
    assert!(err.contains("admin.tls.bind_terminal_id"), "{err}");
    assert!(err.contains("admin.tls.key: required"), "{err}");

    // Without [admin.tls], operators off loopback are refused.
    let text = format!(
        "[admin]\nlisten = \"0.0.0.0:9443\"\nusers_file = \"{}\"\n",
        toml_path(&d.users)
    );
    std::fs::write(&d.config, text).expect("config");
    let (status, _, err) = cli(&["check-config", d.config.to_str().expect("utf-8")], "").await;
    assert_ne!(status, 0, "{err}");
    assert!(
        err.contains("admin.listen: 0.0.0.0:9443 is not a loopback address")
            && err.contains("[admin.tls]"),
        "{err}"
    );
}
