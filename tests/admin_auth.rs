//! Operators on the admin endpoint, over real sockets on loopback: users
//! made by the real binary (`switchyard user add`, the password on
//! stdin), login with password and TOTP (the code computed here from the
//! secret the binary printed), sessions and their expiry, the roles, the
//! login limits per user and per source address (clients bound to
//! 127.0.0.2, .3, .4), and the audit trail checked by `switchyard audit
//! verify`, before and after a line is edited.

#[path = "common/admin_http.rs"]
mod admin_http;
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use admin_http::{Answer, http_from as http};
use common::*;
use serde_json::Value;
use switchyard::switch::admin::totp;

/// A test's files: the users file, the audit trail, the journal.
struct Dir {
    _tmp: tempfile::TempDir,
    users: PathBuf,
    audit: PathBuf,
    journal: PathBuf,
}

fn dir() -> Dir {
    let tmp = tempfile::Builder::new()
        .prefix("admin-auth-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    Dir {
        users: tmp.path().join("config/users.toml"),
        audit: tmp.path().join("data/audit.jsonl"),
        journal: tmp.path().join("journal"),
        _tmp: tmp,
    }
}

/// `user add NAME --role ROLE` with the password typed twice on stdin;
/// returns the TOTP secret from the URI it printed.
async fn add_user(d: &Dir, name: &str, role: &str, password: &str) -> Vec<u8> {
    let users = d.users.to_str().expect("utf-8 path");
    let (status, out, err) = cli(
        &["user", "add", name, "--role", role, "--users-file", users],
        &format!("{password}\n{password}\n"),
    )
    .await;
    assert_eq!(status, 0, "user add: {err}");
    let uri = out.trim();
    let prefix = format!("otpauth://totp/Switchyard:{name}?secret=");
    let rest = uri
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("a provisioning URI: {uri:?}"));
    let (secret, issuer) = rest.split_once('&').expect("secret&issuer");
    assert_eq!(issuer, "issuer=Switchyard");
    totp::decode_secret(secret).expect("a base32 secret")
}

fn config(d: &Dir, admin: &str) -> String {
    format!(
        r#"
test_setup = true
[terminals]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
users_file = "{users}"
audit_file = "{audit}"
{admin}
[store]
url = "sqlite://{journal}-store/switchyard.db"
[journal]
dir = "{journal}"
[fraud]
pan_key = "000102030405060708090a0b0c0d0e0f"
"#,
        users = d.users.display(),
        audit = d.audit.display(),
        journal = d.journal.display(),
    )
}

async fn start(d: &Dir, admin: &str) -> (switchyard::switch::server::Switch, SocketAddr) {
    let switch = start_switch(&config(d, admin)).await;
    let addr = switch.admin_addr.expect("admin on");
    (switch, addr)
}

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

async fn get(admin: SocketAddr, path: &str, cookie: Option<&str>) -> Answer {
    http(admin, LO, "GET", path, cookie, None).await
}

async fn login_from(
    admin: SocketAddr,
    source: Ipv4Addr,
    user: &str,
    password: &str,
    code: &str,
) -> Answer {
    let body = serde_json::json!({"user": user, "password": password, "code": code}).to_string();
    http(admin, source, "POST", "/api/login", None, Some(&body)).await
}

async fn login(admin: SocketAddr, user: &str, password: &str, code: &str) -> Answer {
    login_from(admin, LO, user, password, code).await
}

/// The code of the current step (`ahead` steps on: a second login of the
/// same user within one step uses the next one, which the window allows).
fn code_now(secret: &[u8], ahead: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    totp::code(secret, totp::step(now) + ahead)
}

/// A code no step of the window has.
fn wrong_code(secret: &[u8]) -> String {
    let valid: Vec<String> = (0..3).map(|i| code_now(secret, i)).collect();
    (0..1_000_000u32)
        .map(|n| format!("{n:06}"))
        .find(|c| !valid.contains(c) && c != &code_now(secret, 0))
        .expect("a wrong code")
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("audit trail")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn events<'a>(lines: &'a [Value], event: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == event).collect()
}

async fn verify(path: &Path) -> (i32, String) {
    let (status, out, err) = cli(&["audit", "verify", path.to_str().expect("utf-8")], "").await;
    (status, format!("{out}{err}"))
}

const ALICE_PW: &str = "alice's long passphrase";

#[tokio::test]
async fn login_with_password_and_code_gives_a_session_and_nothing_else_does() {
    let log = Captured::install();
    let d = dir();
    let secret = add_user(&d, "alice", "operator", ALICE_PW).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&d.users)
            .expect("users file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the users file is private");
    }
    let (_, listed, _) = cli(
        &[
            "user",
            "list",
            "--users-file",
            d.users.to_str().expect("utf-8"),
        ],
        "",
    )
    .await;
    assert_eq!(listed, "alice\toperator\n");
    let users_text = std::fs::read_to_string(&d.users).expect("reads");
    assert!(!users_text.contains(ALICE_PW));
    assert!(users_text.contains("$argon2id$"));

    let (switch, admin) = start(&d, "").await;

    // Open without a session: liveness, readiness, metrics.
    assert_ne!(get(admin, "/health", None).await.status, 401);
    assert_ne!(get(admin, "/ready", None).await.status, 401);
    assert_eq!(get(admin, "/metrics", None).await.status, 200);
    // The API is not.
    let a = get(admin, "/api/summary", None).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.json()["error"], "login_required");

    // Wrong password, wrong code, unknown user: one answer.
    let code = code_now(&secret, 0);
    let wrong_pw = login(admin, "alice", "not the passphrase", &code).await;
    let wrong = login(admin, "alice", ALICE_PW, &wrong_code(&secret)).await;
    let unknown = login(admin, "mallory", ALICE_PW, &code).await;
    for a in [&wrong_pw, &wrong, &unknown] {
        assert_eq!(a.status, 401, "{}", a.body);
        assert_eq!(a.body, wrong_pw.body, "the same refusal");
        assert!(a.cookie().is_none());
    }

    // The right password and code.
    let ok = login(admin, "alice", ALICE_PW, &code).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["role"], "operator");
    let set_cookie = ok.header("set-cookie").expect("a cookie");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = ok.cookie().expect("the session cookie");
    let token = cookie.split_once('=').expect("name=value").1.to_owned();
    assert_eq!(token.len(), 64, "256 bits in hex");
    // On record before the answer came.
    let lines = audit_lines(&d.audit);
    let ok_line = events(&lines, "login_ok");
    assert_eq!(ok_line.len(), 1);
    assert_eq!(ok_line[0]["user"], "alice");
    assert!(
        ok_line[0]["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:"))
    );

    let a = get(admin, "/api/summary", Some(&cookie)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        get(admin, "/api/session", Some(&cookie)).await.json()["user"],
        "alice"
    );
    assert_eq!(get(admin, "/api/config", Some(&cookie)).await.status, 200);

    // The same code again: replayed, refused even with the password.
    let replay = login(admin, "alice", ALICE_PW, &code).await;
    assert_eq!(replay.status, 401, "{}", replay.body);
    assert_eq!(replay.body, wrong_pw.body);

    // Logout ends the session.
    let out = http(admin, LO, "POST", "/api/logout", Some(&cookie), Some("")).await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(get(admin, "/api/summary", Some(&cookie)).await.status, 401);

    // The trail: every attempt, in order, with why (the unknown name is
    // not recorded), and a chain that holds.
    let lines = audit_lines(&d.audit);
    let seen: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["event"].as_str().expect("event"),
                l["details"]["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("start", ""),
            ("login_failed", "wrong_password"),
            ("login_failed", "wrong_code"),
            ("login_failed", "unknown_user"),
            ("login_ok", ""),
            ("login_failed", "replayed_code"),
            ("logout", ""),
        ]
    );
    assert!(lines[3]["user"].is_null(), "an unknown name is kept out");
    let (status, out) = verify(&d.audit).await;
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("OK: 7 line(s)"), "{out}");

    // No password, secret, code or token in the log or the trail.
    let secret_b32 = totp::encode_secret(&secret);
    let trail = std::fs::read_to_string(&d.audit).expect("reads");
    let logged = log.lines("", "");
    assert!(
        logged.iter().any(|l| l.contains("admin: login")),
        "the login is logged"
    );
    for (what, text) in [
        ("password", ALICE_PW),
        ("secret", &secret_b32),
        ("token", &token),
        ("code", &code),
    ] {
        assert!(!trail.contains(text), "the {what} is in the audit trail");
        for l in &logged {
            assert!(!l.contains(text), "the {what} is in the log: {l}");
        }
    }
    switch.shutdown().await;
}

#[tokio::test]
async fn failed_logins_lock_the_user_and_the_source_address() {
    let d = dir();
    let bob = add_user(&d, "bob", "viewer", "bob's long passphrase").await;
    let carol = add_user(&d, "carol", "viewer", "carol's long passphrase").await;
    let (switch, admin) = start(&d, "").await;
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    for i in 0..5 {
        let a = login_from(admin, attacker, "bob", "guess", &code_now(&bob, 0)).await;
        assert_eq!(a.status, 401, "failure {i}: {}", a.body);
    }
    // Bob is locked, from any address, even with the right password.
    let a = login_from(
        admin,
        Ipv4Addr::new(127, 0, 0, 3),
        "bob",
        "bob's long passphrase",
        &code_now(&bob, 0),
    )
    .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.json()["error"], "locked");
    assert!(a.header("retry-after").is_some());
    // The attacker's address is locked for every user.
    let carol_pw = "carol's long passphrase";
    let a = login_from(admin, attacker, "carol", carol_pw, &code_now(&carol, 0)).await;
    assert_eq!(a.status, 429, "{}", a.body);
    // Carol from elsewhere is not.
    let a = login_from(
        admin,
        Ipv4Addr::new(127, 0, 0, 4),
        "carol",
        carol_pw,
        &code_now(&carol, 0),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);

    let lines = audit_lines(&d.audit);
    let failed = events(&lines, "login_failed");
    assert_eq!(failed.len(), 7);
    assert_eq!(
        failed
            .iter()
            .filter(|l| l["details"]["reason"] == "locked")
            .count(),
        2
    );
    assert!(failed[..5].iter().all(|l| {
        l["user"] == "bob"
            && l["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("127.0.0.2:"))
    }));
    switch.shutdown().await;
}

#[tokio::test]
async fn a_viewer_may_read_an_operator_may_act_and_an_edited_trail_is_caught() {
    let d = dir();
    let vic = add_user(&d, "vic", "viewer", "vic's long passphrase").await;
    let olga = add_user(&d, "olga", "operator", "olga's long passphrase").await;
    let (switch, admin) = start(&d, "metrics_require_login = true").await;

    // /metrics asks for a session by config; /health does not.
    assert_eq!(get(admin, "/metrics", None).await.status, 401);
    assert_ne!(get(admin, "/health", None).await.status, 401);

    let v = login(admin, "vic", "vic's long passphrase", &code_now(&vic, 0)).await;
    assert_eq!(v.status, 200, "{}", v.body);
    let vic_cookie = v.cookie().expect("cookie");
    assert_eq!(get(admin, "/metrics", Some(&vic_cookie)).await.status, 200);
    assert_eq!(
        get(admin, "/api/links", Some(&vic_cookie)).await.status,
        200
    );
    let a = http(
        admin,
        LO,
        "POST",
        "/api/actions/reload",
        Some(&vic_cookie),
        Some(""),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    // Without a session at all: 401, not 403.
    let a = http(admin, LO, "POST", "/api/actions/reload", None, Some("")).await;
    assert_eq!(a.status, 401, "{}", a.body);

    let o = login(admin, "olga", "olga's long passphrase", &code_now(&olga, 0)).await;
    assert_eq!(o.status, 200, "{}", o.body);
    let olga_cookie = o.cookie().expect("cookie");
    let a = http(
        admin,
        LO,
        "POST",
        "/api/actions/reload",
        Some(&olga_cookie),
        Some(""),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["users"], 2);
    assert_eq!(a.json()["sessions_ended"], 0);

    // Vic removed from the file: the reload ends vic's session.
    let (status, _, err) = cli(
        &[
            "user",
            "remove",
            "vic",
            "--users-file",
            d.users.to_str().expect("utf-8"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 0, "{err}");
    let a = http(
        admin,
        LO,
        "POST",
        "/api/actions/reload",
        Some(&olga_cookie),
        Some(""),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["users"], 1);
    assert_eq!(a.json()["removed"], 1);
    assert_eq!(a.json()["sessions_ended"], 1);
    assert_eq!(
        get(admin, "/api/links", Some(&vic_cookie)).await.status,
        401
    );
    // A broken users file is refused, the running users kept (and
    // recorded as a failed action).
    std::fs::write(&d.users, "[[users]]\nname = 3\n").expect("writes");
    let a = http(
        admin,
        LO,
        "POST",
        "/api/actions/reload",
        Some(&olga_cookie),
        Some(""),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(
        get(admin, "/api/links", Some(&olga_cookie)).await.status,
        200
    );

    let lines = audit_lines(&d.audit);
    let actions = events(&lines, "action");
    let results: Vec<(&str, &str)> = actions
        .iter()
        .map(|l| {
            (
                l["user"].as_str().expect("user"),
                l["result"].as_str().expect("result"),
            )
        })
        .collect();
    assert_eq!(results.len(), 4, "{results:?}");
    assert_eq!(results[0], ("vic", "forbidden"));
    assert_eq!(results[1], ("olga", "ok"));
    assert_eq!(results[2], ("olga", "ok"));
    assert_eq!(actions[2]["details"]["removed"][0], "vic");
    assert!(results[3].1.starts_with("failed: "), "{results:?}");
    switch.shutdown().await;

    let (status, out) = verify(&d.audit).await;
    assert_eq!(status, 0, "{out}");

    // Edit the forbidden action into an allowed one: caught at its line.
    let text = std::fs::read_to_string(&d.audit).expect("reads");
    let mut edited: Vec<String> = text.lines().map(str::to_owned).collect();
    let at = edited
        .iter()
        .position(|l| l.contains("\"result\":\"forbidden\""))
        .expect("the forbidden line");
    edited[at] = edited[at].replace("\"result\":\"forbidden\"", "\"result\":\"ok\"");
    std::fs::write(&d.audit, edited.join("\n") + "\n").expect("writes");
    let (status, out) = verify(&d.audit).await;
    assert_eq!(status, 1, "{out}");
    assert!(
        out.contains(&format!("BROKEN at line {}:", at + 1)),
        "names line {}: {out}",
        at + 1
    );
}

#[tokio::test]
async fn sessions_end_when_idle_and_at_their_maximum_age() {
    let d = dir();
    let ida = add_user(&d, "ida", "viewer", "ida's long passphrase").await;
    let max = add_user(&d, "max", "viewer", "max's long passphrase").await;
    // Two seconds idle, four in all: wide enough that a request every
    // 200 ms keeps a session alive on a loaded machine.
    let (switch, admin) = start(&d, "session_ttl_secs = 2\nsession_max_secs = 4").await;

    // Idle: no request for two seconds ends it.
    let a = login(admin, "ida", "ida's long passphrase", &code_now(&ida, 0)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let idle_since = Instant::now();
    let ida_cookie = a.cookie().expect("cookie");

    // Busy: a request every 200 ms keeps it alive, until 4 s after login.
    let a = login(admin, "max", "max's long passphrase", &code_now(&max, 0)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let logged_in = Instant::now();
    let max_cookie = a.cookie().expect("cookie");
    let ended = loop {
        let a = get(admin, "/api/session", Some(&max_cookie)).await;
        if a.status != 200 {
            break a;
        }
        assert!(logged_in.elapsed() < GUARD, "the session never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        logged_in.elapsed() >= Duration::from_secs(3),
        "kept alive past the idle time by its requests"
    );
    assert_eq!(ended.status, 401);
    assert_eq!(ended.json()["error"], "session_expired");

    // Ida has made no request since login: past two seconds, it is gone.
    let deadline = idle_since + Duration::from_millis(2100);
    tokio::time::sleep_until(deadline.into()).await;
    let a = get(admin, "/api/session", Some(&ida_cookie)).await;
    assert_eq!(a.status, 401, "{}", a.body);

    let lines = audit_lines(&d.audit);
    let expired: Vec<(&str, &str)> = events(&lines, "session_expired")
        .iter()
        .map(|l| {
            (
                l["user"].as_str().expect("user"),
                l["details"]["reason"].as_str().expect("reason"),
            )
        })
        .collect();
    assert!(expired.contains(&("max", "max_age")), "{expired:?}");
    assert!(expired.contains(&("ida", "idle")), "{expired:?}");
    switch.shutdown().await;
}

#[tokio::test]
async fn the_switch_refuses_an_open_admin_port_without_operators() {
    let d = dir();
    let text = format!(
        r#"
test_setup = true
[terminals]
listen = "127.0.0.1:0"
[admin]
listen = "0.0.0.0:0"
[store]
url = "sqlite://{}-store/switchyard.db"
[journal]
dir = "{}"
"#,
        d.journal.display(),
        d.journal.display()
    );
    let path = d.journal.with_extension("toml");
    std::fs::write(&path, text).expect("writes");
    let (status, _, err) = cli(
        &[
            "run",
            "--allow-dev-key",
            "--config",
            path.to_str().expect("utf-8"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 1, "{err}");
    assert!(
        err.contains("admin.listen: 0.0.0.0:0 is not a loopback address")
            && err.contains("admin.users_file"),
        "{err}"
    );
}

/// A trail that cannot be written: the switch does not start (at run
/// time, a failed write refuses every later login and action: the unit
/// tests of audit.rs).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_unwritable_audit_trail_keeps_the_switch_from_starting() {
    let d = dir();
    add_user(&d, "una", "operator", "una's long passphrase").await;
    let text = config(&d, "").replace(
        &format!("audit_file = \"{}\"", d.audit.display()),
        "audit_file = \"/dev/full\"",
    );
    assert!(text.contains("/dev/full"));
    let config = switchyard::switch::config::Config::parse(&text).expect("valid");
    let e = switchyard::switch::server::Switch::start(config)
        .await
        .err()
        .expect("refused");
    let e = e.to_string();
    assert!(e.contains("/dev/full"), "{e}");
}

/// A trail over several days (the library's writer with a clock of the
/// test's, days apart), checked by the binary as a directory: one chain
/// across the dated files and the live one; one edited line is named
/// with its file and line number.
#[test]
fn audit_verify_checks_a_rotated_trail_across_its_files() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use switchyard::switch::admin::audit::{AuditLog, Event};
    let d = dir();
    let trail_dir = d.audit.parent().expect("a directory").to_owned();
    // 2026-01-10T12:00:00Z, then a day later each round.
    let now = Arc::new(AtomicU64::new(1_768_046_400_000));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::Relaxed))
    };
    let log = AuditLog::open_with_clock(&d.audit, 400, clock).expect("opens");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for day in 0..3 {
        for i in 0..2 {
            rt.block_on(log.record(Event {
                event: "action",
                user: Some(format!("op{day}{i}")),
                source: None,
                details: serde_json::json!({"action": "reload"}),
                result: "ok".into(),
            }))
            .expect("recorded");
        }
        now.fetch_add(86_400_000, Ordering::Relaxed);
    }
    drop(log);
    let dated = trail_dir.join("audit.2026-01-11.jsonl");
    assert!(dated.exists());
    let dir_arg = trail_dir.to_str().expect("utf-8");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["audit", "verify", dir_arg])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("OK: 3 file(s), 9 line(s)"), "{text}");

    let edited = std::fs::read_to_string(&dated)
        .expect("reads")
        .replacen("op10", "mallory", 1);
    std::fs::write(&dated, edited).expect("writes");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["audit", "verify", dir_arg])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with(&format!("{}: BROKEN at line 2:", dated.display())),
        "{text}"
    );
}
