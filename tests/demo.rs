//! The `switchyard` binary's demo and decode paths as a user runs them:
//! from a directory that is not the repository, and with stdout closed
//! under them (`switchyard demo | head -2`).

use std::path::Path;
use std::process::{Command, Output, Stdio};

use loadtest::LoadConfig;
use switchyard::frame::LengthHeader;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
/// A short demo: the shortest that still measures something.
const SHORT_DEMO: [&str; 10] = [
    "demo",
    "--duration",
    "1s",
    "--warmup",
    "200ms",
    "-c",
    "8",
    "--no-progress",
    "--journal-durability",
    "none",
];

/// A pipe whose reading end is already closed: every write to it fails
/// with EPIPE, as when `head` has read what it wanted and gone.
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

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("reads").next().is_none()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Issue 10 item 3: from a directory without `config/`, the demo runs the
/// built-in shipped config: approvals, not 92s, and a clean verdict.
#[test]
fn the_demo_runs_from_any_directory() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out: Output = Command::new(BIN)
        .args(SHORT_DEMO)
        .current_dir(cwd.path())
        .env("TMPDIR", tmp.path())
        .output()
        .expect("runs");
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("0210  00"), "{stdout}");
    assert!(!stdout.contains("  92 "), "{stdout}");
    assert!(
        stdout.contains("built-in config/switchyard.toml"),
        "{stdout}"
    );
    assert!(stdout.contains("result: clean"), "{stdout}");
    // The demo's own switch's latency, read from its admin listener.
    assert!(stdout.contains("in the switch"), "{stdout}");
    // Run outside a checkout (no `target/` here), the report goes to the
    // temp dir; nothing else of the demo stays there.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("reads")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(left, ["demo-report.html"], "the demo's journal is removed");
    assert!(is_empty_dir(cwd.path()), "nothing written where it ran");
}

/// `switchyard demo --tls`: the same demo over TLS on both sides, with
/// certificates made for the run: answered and clean, handshakes in the
/// report, and the certificates gone afterwards.
#[test]
fn the_demo_runs_over_tls() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out: Output = Command::new(BIN)
        .args(SHORT_DEMO)
        .arg("--tls")
        .current_dir(cwd.path())
        .env("TMPDIR", tmp.path())
        .output()
        .expect("runs");
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("0210  00"), "{stdout}");
    assert!(stdout.contains("result: clean"), "{stdout}");
    assert!(
        stdout.contains("TLS                 terminals and acquirer link"),
        "{stdout}"
    );
    assert!(
        stdout.to_lowercase().contains("handshake"),
        "the report counts handshakes: {stdout}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("reads")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(
        left,
        ["demo-report.html"],
        "certificates and journal are removed"
    );
}

/// Issue 10 item 11: `switchyard demo | head`: no panic, the temporary
/// journal removed, the SIGPIPE-like status.
#[test]
fn the_demo_stops_quietly_when_stdout_closes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cwd = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(SHORT_DEMO)
        .current_dir(cwd.path())
        .env("TMPDIR", tmp.path())
        .stdout(closed_stdout())
        .stderr(Stdio::piped())
        .output()
        .expect("runs");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(is_empty_dir(tmp.path()), "the demo's journal is removed");
}

/// Issue 10 item 11: `switchyard decode ... | head` says nothing.
#[test]
fn decode_stops_quietly_when_stdout_closes() {
    let frame = &loadtest::sample_messages(&LoadConfig::default(), 0, 1)[0];
    assert_eq!(LoadConfig::default().framing, LengthHeader::Binary2);
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let decoded = Command::new(BIN)
        .args(["decode", "--framing", "binary2", &hex])
        .output()
        .expect("runs");
    assert!(decoded.status.success(), "{}", text(&decoded.stderr));
    let out = Command::new(BIN)
        .args(["decode", "--framing", "binary2", &hex])
        .stdout(closed_stdout())
        .stderr(Stdio::piped())
        .output()
        .expect("runs");
    let stderr = text(&out.stderr);
    assert_eq!(stderr, "", "nothing on stderr");
    assert_eq!(out.status.code(), Some(141));
}
