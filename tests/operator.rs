//! What an operator sees from the `switchyard` binary itself: check-config
//! verdicts, refusals at `run`, startup and shutdown lines, log formats.
//! Each test runs the real binary in a temporary directory.

use std::path::Path;
use std::process::{Command, Output};

fn switchyard(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .expect("switchyard runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_config_warns_about_an_empty_file_and_the_development_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("empty.toml"), "").expect("written");
    let o = switchyard(dir.path(), &["check-config", "empty.toml"]);
    assert!(o.status.success(), "valid, only warned: {}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("empty.toml: warning: acquirers: no acquirer"),
        "{err}"
    );
    assert!(err.contains("answered 92"), "{err}");
    assert!(err.contains("warning: fraud.pan_key"), "{err}");
}

#[test]
fn check_config_names_the_file_on_a_syntax_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bad.toml"), "[terminals\n").expect("written");
    let o = switchyard(dir.path(), &["check-config", "bad.toml"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).starts_with("bad.toml: not valid TOML"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_refuses_the_development_key_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Admin off and a port that is taken later do not matter: the refusal
    // comes before anything is bound.
    std::fs::write(
        dir.path().join("dev.toml"),
        "[terminals]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = false\n",
    )
    .expect("written");
    let o = switchyard(dir.path(), &["run", "--config", "dev.toml"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("development key"), "{err}");
    assert!(err.contains("--allow-dev-key"), "{err}");
    assert!(err.contains("test_setup"), "{err}");
    assert!(
        !dir.path().join("journal").exists(),
        "refused before opening the journal"
    );
}

#[test]
fn run_outside_the_repository_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = switchyard(dir.path(), &["run"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("config/switchyard.toml"), "{err}");
    let cwd = dir.path().canonicalize().expect("canonical");
    assert!(err.contains(&cwd.display().to_string()), "{err}");
    assert!(err.contains("--config"), "{err}");
}

/// A switch config in `dir`: terminals and admin on free ports, one
/// acquirer whose link points at a port nobody listens on (its link stays
/// down, which does not stop the switch from starting or stopping).
fn write_config(dir: &Path) -> std::path::PathBuf {
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let path = dir.join("switch.toml");
    let text = format!(
        r#"
[terminals]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[[acquirers]]
name = "acquirer-a"
links = ["{down}"]
connect_timeout_ms = 200
[routing]
default = "acquirer-a"
[[routing.routes]]
prefix = "4"
acquirer = "acquirer-a"
[fraud]
pan_key = "000102030405060708090a0b0c0d0e0f"
[store]
url = "sqlite://{journal}-store/switchyard.db"
[journal]
dir = "{journal}"
"#,
        journal = dir.join("journal").display(),
    );
    std::fs::write(&path, text).expect("written");
    path
}

/// Runs the switch until its banner, sends SIGTERM, and returns its stderr.
fn run_and_terminate(config: &Path, extra: &[&str]) -> String {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("run")
        .args(extra)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("switchyard starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut banner = String::new();
    stdout.read_line(&mut banner).expect("banner");
    assert!(banner.contains("terminals on"), "banner: {banner:?}");
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid, no memory involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().expect("exits");
    assert!(out.status.success(), "exit after SIGTERM: {:?}", out.status);
    String::from_utf8(out.stderr).expect("utf-8 log")
}

#[test]
fn startup_and_shutdown_lines_say_what_runs_in_plain_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let log = run_and_terminate(&config, &[]);
    assert!(!log.contains('\x1b'), "no colour codes into a pipe:\n{log}");
    let journal = dir.path().join("journal");
    for expected in [
        format!("starting with config {}", config.display()),
        "terminals: listening on 127.0.0.1:".to_owned(),
        "admin: http://127.0.0.1:".to_owned(),
        "acquirer acquirer-a: 1 link(s) to 127.0.0.1:".to_owned(),
        "routing: 1 route(s); other cards go to acquirer-a".to_owned(),
        format!("journal: {}, durability fsync", journal.display()),
        "runtime: current-thread".to_owned(),
        format!(
            "journal recovery in {}: scanned 0 segment(s), 0 record(s)",
            journal.display()
        ),
        "switch started: 1 acquirer(s), 1 route(s)".to_owned(),
        "SIGTERM received: stopping".to_owned(),
        "journal synced".to_owned(),
    ] {
        assert!(log.contains(&expected), "missing {expected:?} in:\n{log}");
    }
    assert!(!log.contains("Some("), "no Debug output:\n{log}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let log = run_and_terminate(&config, &["--log-format", "json"]);
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"));
        if let Some(m) = v["fields"]["message"].as_str() {
            messages.push(m.to_owned());
        }
    }
    assert!(
        messages.iter().any(|m| m.starts_with("switch started")),
        "{messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("journal synced")),
        "{messages:#?}"
    );
}

#[test]
fn help_documents_rust_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = switchyard(dir.path(), &["run", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("RUST_LOG"), "{help}");
    assert!(help.contains("--log-format"), "{help}");
}

#[test]
fn journal_help_explains_open_work_and_every_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = switchyard(dir.path(), &["journal", "stats", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("unfinished  forwarded upstream"), "{help}");
    assert!(help.contains("unanswered  arrived"), "{help}");
    assert!(help.contains("The journal directory"), "{help}");
    let o = switchyard(dir.path(), &["journal", "tail", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("How many records to print"), "{help}");
    assert!(help.contains("--config"), "{help}");
    // A directory that is not a journal is an error, not an empty journal.
    let o = switchyard(dir.path(), &["journal", "stats", "--dir", "."]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a journal directory"),
        "{}",
        stderr(&o)
    );
}
