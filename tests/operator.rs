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
