//! Operators and the admin API over a plain socket, for the tests of the
//! admin endpoint and run-time changes (`tests/admin_auth.rs`,
//! `tests/reload.rs`, `tests/operator_actions.rs`, `tests/settlement.rs`;
//! `tests/rolling_restart.rs` starts its switches with `start_run`):
//! the users file
//! made by the real binary (`switchyard user add`), a login with the TOTP
//! code computed from the printed URI, requests with the session cookie, a
//! `switchyard run` whose log is kept, and the audit trail's lines.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::common::{Banner, GUARD, cli};

/// A test's directory: users file, audit trail, config, log, journal.
pub struct Dir {
    pub tmp: tempfile::TempDir,
    pub users: PathBuf,
    pub audit: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub journal: PathBuf,
}

impl Dir {
    pub fn new(prefix: &str) -> Dir {
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("tempdir");
        let p = tmp.path().to_owned();
        Dir {
            users: p.join("users.toml"),
            audit: p.join("audit.jsonl"),
            config: p.join("switch.toml"),
            log: p.join("switch.log"),
            journal: p.join("journal"),
            tmp,
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// The `[admin]` table with the users file and the audit trail.
    pub fn admin_table(&self) -> String {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\nusers_file = \"{}\"\naudit_file = \"{}\"\n",
            self.users.display(),
            self.audit.display()
        )
    }

    /// The audit trail's lines, parsed.
    pub fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// The switch's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `user add NAME --role ROLE` through the binary: the TOTP secret it
/// printed.
pub async fn add_user(d: &Dir, name: &str, role: &str, password: &str) -> Vec<u8> {
    let users = d.users.to_str().expect("utf-8 path");
    let (status, out, err) = cli(
        &["user", "add", name, "--role", role, "--users-file", users],
        &format!("{password}\n{password}\n"),
    )
    .await;
    assert_eq!(status, 0, "user add: {err}");
    let secret = out
        .trim()
        .split("secret=")
        .nth(1)
        .and_then(|r| r.split('&').next())
        .expect("a provisioning URI");
    switchyard::switch::admin::totp::decode_secret(secret).expect("base32")
}

/// An answer: status, head (header names as sent), body.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// `switchyard_session=...` from Set-Cookie.
    pub fn cookie(&self) -> Option<String> {
        let c = self.header("set-cookie")?;
        let pair = c.split(';').next()?.trim().to_owned();
        pair.starts_with("switchyard_session=").then_some(pair)
    }
}

/// One HTTP/1.1 request; `cookie` is the `switchyard_session=...` pair.
/// Returns the answer and its head.
pub async fn http(
    admin: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<&str>,
) -> (Answer, String) {
    let a = http_from(admin, Ipv4Addr::LOCALHOST, method, path, cookie, body).await;
    let head = a.head.clone();
    (a, head)
}

/// One HTTP/1.1 request from `source` (an address on loopback: the
/// admin endpoint's limits are per source).
pub async fn http_from(
    admin: SocketAddr,
    source: Ipv4Addr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .expect("binds the source address");
    let mut s = timeout(GUARD, socket.connect(admin))
        .await
        .expect("connects in time")
        .expect("connects");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    let body = body.unwrap_or("");
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("writes");
    let mut out = Vec::new();
    timeout(GUARD, s.read_to_end(&mut out))
        .await
        .expect("answered in time")
        .expect("reads");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

pub async fn post(admin: SocketAddr, path: &str, cookie: &str, body: &str) -> Answer {
    http(admin, "POST", path, Some(cookie), Some(body)).await.0
}

pub async fn get(admin: SocketAddr, path: &str, cookie: &str) -> Answer {
    http(admin, "GET", path, Some(cookie), None).await.0
}

/// Logs in with the password and the current TOTP code: the cookie pair.
pub async fn login(admin: SocketAddr, user: &str, password: &str, secret: &[u8]) -> String {
    use switchyard::switch::admin::totp;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let code = totp::code(secret, totp::step(now));
    let body = serde_json::json!({"user": user, "password": password, "code": code}).to_string();
    let (a, head) = http(admin, "POST", "/api/login", None, Some(&body)).await;
    assert_eq!(a.status, 200, "login of {user}: {}", a.body);
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            if !k.eq_ignore_ascii_case("set-cookie") {
                return None;
            }
            let pair = v.trim().split(';').next()?.to_owned();
            pair.starts_with("switchyard_session=").then_some(pair)
        })
        .expect("a session cookie")
}

/// `switchyard run --config CONFIG` with its log (info) in `d.log`: the
/// process and its banner.
pub async fn start_logged(d: &Dir) -> (tokio::process::Child, Banner) {
    let log = std::fs::File::create(&d.log).expect("log file");
    start_run(&d.config, log, || d.log_text()).await
}

/// `switchyard run --config CONFIG` with its log (info) going to `log`:
/// the process and its banner; `log_text` shows the log if no banner comes.
pub async fn start_run(
    config: &Path,
    log: std::fs::File,
    log_text: impl Fn() -> String,
) -> (tokio::process::Child, Banner) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--allow-dev-key", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("switchyard starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let banner = timeout(GUARD, lines.next_line())
        .await
        .expect("banner in time")
        .expect("reads")
        .unwrap_or_else(|| panic!("no banner; the log:\n{}", log_text()));
    let parsed = Banner::parse(&banner).unwrap_or_else(|| panic!("no address in banner: {banner}"));
    // Keep reading stdout so the process never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, parsed)
}

/// SIGTERM, and the exit status within the guard time.
pub async fn stop(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) with a pid of our own child and a valid signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    timeout(GUARD, child.wait())
        .await
        .expect("exits in time")
        .expect("waits")
}

/// Polls until `cond` holds (every 5 ms), `within` at most: whether it did.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
