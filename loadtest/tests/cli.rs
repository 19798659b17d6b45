//! The `loadtest` binary's exit status and output as a shell sees them.
#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_loadtest");

/// An address nothing listens on: a listener's port, closed again.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    l.local_addr().expect("addr")
}

/// A pipe whose reading end is already closed (`loadtest ... | head` once
/// head has gone).
fn closed_stdout() -> Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: both descriptors were just created and are owned by no one else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

fn short_run(target: SocketAddr) -> Command {
    let mut c = Command::new(BIN);
    c.args(["--target", &target.to_string()]).args([
        "-d",
        "1s",
        "--warmup",
        "0s",
        "-c",
        "2",
        "--no-progress",
    ]);
    c
}

/// Issue 10 item 1: nothing sent, connections refused: exit status 1,
/// "NOT CLEAN", no made-up latency.
#[test]
fn a_run_against_nothing_fails() {
    let out = short_run(closed_port()).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("result: NOT CLEAN: nothing was sent"),
        "{stdout}"
    );
    assert!(!stdout.contains("0 µs"), "{stdout}");
}

/// Issue 10 item 11: a closed stdout ends the run quietly.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let out = short_run(closed_port())
        .stdout(closed_stdout())
        .stderr(Stdio::piped())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

/// A CA certificate (PEM) in a temporary directory, for --ca.
fn ca_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("self-signed");
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, cert.pem()).expect("written");
    (dir, path)
}

/// A TLS run against a peer that closes every connection at once: each
/// handshake fails, the report says why, and the exit status is 1.
#[test]
fn a_tls_run_whose_handshakes_fail_exits_1() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let target = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let (_dir, ca) = ca_file();
    let out = short_run(target)
        .arg("--tls")
        .arg("--ca")
        .arg(&ca)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("TLS handshakes failed (closed "),
        "{stdout}"
    );
    assert!(stdout.contains("result: NOT CLEAN"), "{stdout}");
}

/// A TLS file that can not be read is refused before the run, with its
/// flag and path: exit status 2.
#[test]
fn an_unreadable_tls_file_is_named_with_its_flag() {
    let (dir, ca) = ca_file();
    let missing = dir.path().join("client.pem");
    let out = short_run(closed_port())
        .arg("--tls")
        .arg("--ca")
        .arg(&ca)
        .arg("--cert")
        .arg(&missing)
        .arg("--key")
        .arg(&missing)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = format!("loadtest: --cert {}: ", missing.display());
    assert!(stderr.starts_with(&want), "{stderr}");
}
