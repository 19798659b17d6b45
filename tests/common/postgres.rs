//! A private PostgreSQL server for a test run: `initdb` into a temporary
//! directory, `pg_ctl start` on a free loopback port with its socket in
//! that directory, a database per test (`createdb`), stopped on drop.
//! Debian's `postgresql` package provides the binaries (under
//! `/usr/lib/postgresql/*/bin`); `initdb` refuses to run as root, so as
//! root the server runs as the `postgres` user, in a directory it owns.
//!
//! Without PostgreSQL a test fails saying how to install it, unless
//! `SWITCHYARD_SKIP_POSTGRES=1`, when [`PgServer::shared`] returns `None`
//! and the PostgreSQL half of the store tests is skipped (said on stderr).
//!
//! Only std and tempfile: this file is included by the library's unit
//! tests (`#[path]`) as well as by the integration tests, and it runs
//! commands rather than a client, so it can be called from async tests.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The superuser the tests connect as (trust authentication, loopback).
pub const USER: &str = "switchyard";

pub struct PgServer {
    bin: PathBuf,
    /// Data directory and socket directory inside it; removed on drop.
    dir: tempfile::TempDir,
    port: u16,
    /// Run the server's commands as `postgres` (we are root).
    as_postgres: bool,
    /// Extra `-c name=value` settings.
    settings: Vec<String>,
}

fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    // Elsewhere (not Debian): on PATH.
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.parent()
        .filter(|_| out.status.success())
        .map(Path::to_owned)
}

fn skipped() -> bool {
    std::env::var("SWITCHYARD_SKIP_POSTGRES").is_ok_and(|v| v == "1")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl PgServer {
    /// The server shared by the tests running now in this process: made
    /// by the first, stopped when the last lets go. `None` only when
    /// PostgreSQL is missing and `SWITCHYARD_SKIP_POSTGRES=1`.
    pub fn shared() -> Option<Arc<PgServer>> {
        static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shared.upgrade() {
            return Some(s);
        }
        let s = Arc::new(PgServer::start(&[])?);
        *shared = Arc::downgrade(&s);
        Some(s)
    }

    /// A server of its own (to stop and start in a test), with extra
    /// settings (`"fsync=on"`). Tests share the machine's two cores: the
    /// default is no fsync, nothing here survives a power cut anyway.
    pub fn start(settings: &[&str]) -> Option<PgServer> {
        let Some(bin) = bin_dir() else {
            if skipped() {
                eprintln!("PostgreSQL not installed: its store tests skipped");
                return None;
            }
            panic!(
                "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin nor \
                 on PATH): `apt-get install -y postgresql`, or SWITCHYARD_SKIP_POSTGRES=1 to \
                 skip the PostgreSQL store tests"
            );
        };
        // SAFETY: getuid has no preconditions.
        let as_postgres = unsafe { libc_getuid() } == 0;
        stop_orphans(&bin, as_postgres);
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir()
            .expect("temp dir");
        // Whose server this is, for `stop_orphans` of a later run.
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())
            .expect("owner written");
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
        }
        let mut settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        if !settings.iter().any(|s| s.starts_with("fsync=")) {
            settings.push("fsync=off".into());
        }
        let mut server = PgServer {
            bin,
            dir,
            port: 0,
            as_postgres,
            settings,
        };
        let mut initdb = server.command("initdb");
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(server.data());
        run(&mut initdb);
        server.start_again();
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `name` from the server's bin directory, as the server's user.
    fn command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// Starts the server (after [`PgServer::stop`], on the same port).
    pub fn start_again(&mut self) {
        // A port taken between our look and the server's bind: another.
        for attempt in 0..5 {
            if self.port == 0 || attempt > 0 {
                self.port = free_port();
            }
            let mut options = format!(
                "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={}",
                self.port,
                self.dir.path().display()
            );
            for s in &self.settings {
                options.push_str(" -c ");
                options.push_str(s);
            }
            let status = self
                .command("pg_ctl")
                .args(["start", "-s", "-w", "-t", "60", "-D"])
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-o", &options])
                .status()
                .expect("pg_ctl runs");
            if status.success() {
                return;
            }
        }
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        panic!("PostgreSQL did not start; its log:\n{log}");
    }

    /// Stops the server now (immediate: as a crash would).
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-s", "-w", "-m", "immediate", "-D"])
            .arg(self.data())
            .status();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database; its url.
    pub fn create_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        run(Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-U", USER, "-p"])
            .arg(self.port.to_string())
            .arg(&name));
        self.url(&name)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

const PREFIX: &str = "switchyard-pg-";

/// Stops and removes the servers of test processes that died without
/// dropping them (a test binary aborted, a run killed), so that they do
/// not pile up on the machine.
fn stop_orphans(bin: &Path, as_postgres: bool) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        let ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(PREFIX));
        let Some(owner) = std::fs::read_to_string(dir.join("owner.pid"))
            .ok()
            .filter(|_| ours)
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let mut stop = if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join("pg_ctl"));
            c
        } else {
            Command::new(bin.join("pg_ctl"))
        };
        let _ = stop
            .args(["stop", "-s", "-w", "-m", "immediate", "-D"])
            .arg(dir.join("data"))
            .status();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn run(c: &mut Command) {
    let out = c.output().expect("command runs");
    assert!(
        out.status.success(),
        "{c:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// std has no getuid; libc is a dev-dependency of the integration tests
// only, so the one call is declared here.
unsafe extern "C" {
    #[link_name = "getuid"]
    fn libc_getuid() -> u32;
}
