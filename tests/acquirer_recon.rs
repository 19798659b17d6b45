//! Acquirer reconciliation end to end: the real `switchyard run` binary
//! with its store on SQLite, the simulator as the host, an operator's
//! cutover (the real `switchyard settle cutover`). After it the switch
//! sends the closed date's 0520 through store-and-forward; the host
//! answers 0530 with DE66 from its own book (approved minus reversed):
//! 1 when the switch's totals agree, 2 after the host's `skew`, which the
//! switch counts, logs as a warning and stores. With the host down at the
//! cutover, the 0520 waits in store-and-forward and goes when it is back.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use switchyard::iso8583::Mti;
use switchyard::switch::settlement::Schedule;
use switchyard::switch::store::{self, Backend, Reconciliation};
use switchyard::tools::sim::{SimConfig, SimHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::{Instant, timeout};

/// How long a reconciliation may take: the exporter, then one send (or a
/// few, after the host came back).
const RECON_WAIT: Duration = Duration::from_secs(30);

struct Run {
    dir: PathBuf,
    child: tokio::process::Child,
    terminals: SocketAddr,
    admin: SocketAddr,
    backend: Backend,
    log: PathBuf,
}

fn test_dir() -> PathBuf {
    let dir = fresh_journal_dir();
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// `switchyard run` towards `host`, its store and log in a directory of
/// its own; once its banner is out.
async fn start(host: SocketAddr) -> Run {
    let dir = test_dir();
    write_config(&dir, host, 0);
    start_in(dir).await
}

/// The config in `dir`: its store there, the 0520s made `delay_ms` after
/// a cutover.
fn write_config(dir: &Path, host: SocketAddr, delay_ms: u64) {
    let db = dir.join("store.db");
    let toml = config(
        &[host],
        "",
        &format!(
            "[store]\nenabled = true\nurl = \"sqlite://{}\"\nbatch_max = 64\n\
             [settlement]\ncutover_time = \"off\"\ninstitution_id = \"4711\"\n\
             reconciliation_delay_ms = {delay_ms}\n\
             [saf]\nretry_interval_ms = 100\n",
            db.display()
        ),
    );
    std::fs::write(dir.join("switchyard.toml"), toml).expect("config written");
}

/// `switchyard run` with the config in `dir`.
async fn start_in(dir: PathBuf) -> Run {
    let db = dir.join("store.db");
    let path = dir.join("switchyard.toml");
    let log = dir.join("switchyard.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--allow-dev-key", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("switchyard starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let banner = timeout(GUARD, lines.next_line())
        .await
        .expect("banner in time")
        .expect("reads")
        .expect("a banner line");
    let parsed = Banner::parse(&banner).unwrap_or_else(|| panic!("no address in banner: {banner}"));
    // The rest of stdout is not read: keep the pipe drained.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Run {
        dir,
        child,
        terminals: parsed.terminals,
        admin: parsed.admin.expect("admin on"),
        backend: Backend::Sqlite { path: db },
        log,
    }
}

/// Purchases of `amounts` from one terminal, each answered 00 (retried
/// while the link to the host is still coming up: 91).
async fn purchases(run: &Run, amounts: &[u64]) -> u64 {
    let mut t = Terminal::connect(run.terminals).await;
    let mut stan = 0;
    for &amount in amounts {
        let deadline = Instant::now() + GUARD;
        loop {
            stan += 1;
            let answer = t.request(&auth(Mti::FINANCIAL, stan, PAN, amount)).await;
            if code(&answer) == "00" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "purchase not approved: {}",
                code(&answer)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    amounts.iter().sum()
}

async fn sim_control(addr: SocketAddr, command: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("control connects");
    s.write_all(format!("{command}\n").as_bytes())
        .await
        .expect("writes");
    let mut line = String::new();
    timeout(GUARD, BufReader::new(s).read_line(&mut line))
        .await
        .expect("control answers")
        .expect("reads");
    line.trim_end().to_owned()
}

/// The business date before the cutover: the clock's (no scheduled
/// cutover, UTC).
fn today() -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    Schedule::utc(None).date_at(now_ms).to_string()
}

async fn cutover(run: &Run) {
    let admin = run.admin.to_string();
    let (status, out, err) = cli(&["settle", "cutover", "--admin", &admin], "").await;
    assert_eq!(status, 0, "{out}{err}");
}

fn reconciliations(backend: &Backend, date: &str) -> Vec<Reconciliation> {
    match store::open_to_read(backend) {
        Ok(mut s) => s
            .reconciliations("node-1", Some(date), 100)
            .expect("reconciliations read"),
        // Not made yet by the switch.
        Err(_) => Vec::new(),
    }
}

/// Polls the store until `date` has a reconciliation that `done` accepts.
async fn wait_reconciliation(
    run: &Run,
    date: &str,
    done: impl Fn(&Reconciliation) -> bool,
) -> Reconciliation {
    let deadline = Instant::now() + RECON_WAIT;
    loop {
        let backend = run.backend.clone();
        let d = date.to_owned();
        let rows = tokio::task::spawn_blocking(move || reconciliations(&backend, &d))
            .await
            .expect("read");
        if let Some(r) = rows.iter().find(|r| done(r)) {
            assert_eq!(rows.len(), 1, "one acquirer, one currency: {rows:#?}");
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no such reconciliation of {date} after {RECON_WAIT:?}: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn received_0520s(sim: &SimHandle) -> usize {
    sim.received()
        .iter()
        .filter(|r| r.mti.value() / 10 == 52)
        .count()
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_balance_the_host_answers_1_and_it_is_stored() {
    let sim = start_sim_with(SimConfig {
        settlement_file: Some(test_dir().join("host.csv")),
        ..sim_config()
    })
    .await;
    let mut run = start(sim.local_addr()).await;
    let date = today();
    let total = purchases(&run, &[1000, 2550, 399]).await;
    cutover(&run).await;
    let r = wait_reconciliation(&run, &date, |r| r.answered_at_ms.is_some()).await;
    assert_eq!(r.acquirer, "acquirer-a");
    assert_eq!((r.currency, r.response_code.as_deref()), (840, Some("00")));
    assert_eq!(r.balance, Some(1), "{r:#?}");
    assert_eq!((r.totals.debits, r.totals.debits_amount), (3, total));
    assert_eq!(r.totals.net(), i128::from(total));
    // (A repeat, 0521, only if the answer took longer than the request
    // timeout on a loaded machine.)
    assert!(received_0520s(&sim) >= 1);
    let in_balance = wait_metric(
        run.admin,
        "switchyard_reconciliations_total",
        &["result=\"in_balance\""],
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(in_balance, 1.0);
    let (_, metrics) = http_get(run.admin, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "switchyard_reconciliation_out_of_balance_total",
            &[]
        ),
        0.0
    );
    assert!(!log_text(&run.log).contains("OUT OF BALANCE"));
    let _ = run.child.kill().await;
    sim.shutdown();
    let _ = std::fs::remove_dir_all(&run.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_hosts_skew_it_answers_2_counted_logged_and_stored() {
    let sim = start_sim_with(SimConfig {
        control: Some(free_addr()),
        settlement_file: Some(test_dir().join("host.csv")),
        ..sim_config()
    })
    .await;
    let mut run = start(sim.local_addr()).await;
    let date = today();
    let total = purchases(&run, &[1000, 2000, 3000, 4000]).await;
    // One amount raised by 1.00 at the host.
    let said = sim_control(sim.control_addr().expect("control"), "skew 1").await;
    assert!(
        said.starts_with("ok: altered 1 records (1 amounts"),
        "{said}"
    );
    cutover(&run).await;
    let r = wait_reconciliation(&run, &date, |r| r.answered_at_ms.is_some()).await;
    assert_eq!(r.balance, Some(2), "{r:#?}");
    assert_eq!((r.totals.debits, r.totals.debits_amount), (4, total));
    let out = wait_metric(
        run.admin,
        "switchyard_reconciliation_out_of_balance_total",
        &["acquirer=\"acquirer-a\""],
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(out, 1.0);
    let deadline = Instant::now() + GUARD;
    while !log_text(&run.log).contains("OUT OF BALANCE with the acquirer") {
        assert!(Instant::now() < deadline, "{}", log_text(&run.log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = log_text(&run.log)
        .lines()
        .find(|l| l.contains("OUT OF BALANCE"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        line.contains("WARN") && line.contains("acquirer-a"),
        "{line}"
    );
    let _ = run.child.kill().await;
    sim.shutdown();
    let _ = std::fs::remove_dir_all(&run.dir);
}

/// Binds a simulator on `addr` again, once the stopped one let it go.
async fn restart_sim(addr: SocketAddr, book: PathBuf) -> SimHandle {
    let deadline = Instant::now() + GUARD;
    loop {
        let config = SimConfig {
            listen: addr,
            settlement_file: Some(book.clone()),
            ..sim_config()
        };
        match switchyard::tools::sim::spawn(config).await {
            Ok(sim) => return sim,
            Err(e) => {
                assert!(Instant::now() < deadline, "{addr} not free again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_host_down_the_0520_waits_and_goes_when_it_is_back() {
    let dir = test_dir();
    let sim = start_sim_with(SimConfig {
        settlement_file: Some(dir.join("host.csv")),
        ..sim_config()
    })
    .await;
    let host = sim.local_addr();
    let mut run = start(host).await;
    let date = today();
    let total = purchases(&run, &[1500, 2500]).await;
    sim.shutdown();
    // The link has seen the host go.
    wait_metric(run.admin, "switchyard_link_up", &[], |v| v == 0.0).await;
    cutover(&run).await;
    // Written and queued, not answered: it waits in store-and-forward.
    let waiting = wait_reconciliation(&run, &date, |_| true).await;
    assert_eq!(waiting.answered_at_ms, None);
    assert_eq!(waiting.totals.debits_amount, total);
    let depth = wait_metric(
        run.admin,
        "switchyard_saf_depth",
        &["acquirer=\"acquirer-a\""],
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(depth, 1.0);
    // The host comes back (a new process: its book of the day is gone,
    // so it disagrees; what this shows is that the 0520 reaches it).
    let back = restart_sim(host, dir.join("host-2.csv")).await;
    let r = wait_reconciliation(&run, &date, |r| r.answered_at_ms.is_some()).await;
    assert_eq!(r.response_code.as_deref(), Some("00"));
    assert_eq!(
        r.balance,
        Some(2),
        "the host came back without the day: {r:#?}"
    );
    assert_eq!(r.stan, waiting.stan, "the same 0520");
    assert!(received_0520s(&back) >= 1);
    wait_metric(
        run.admin,
        "switchyard_saf_depth",
        &["acquirer=\"acquirer-a\""],
        |v| v == 0.0,
    )
    .await;
    let _ = run.child.kill().await;
    back.shutdown();
    let _ = std::fs::remove_dir_all(&run.dir);
}

/// `kill -9` after the cutover, before the 0520's row was written (the
/// delay is long): the next start reconciles the day before its own, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_whose_0520_was_never_made_is_reconciled_at_the_next_start() {
    let sim = start_sim_with(SimConfig {
        settlement_file: Some(test_dir().join("host.csv")),
        ..sim_config()
    })
    .await;
    let dir = test_dir();
    write_config(&dir, sim.local_addr(), 600_000);
    let mut run = start_in(dir.clone()).await;
    let date = today();
    let total = purchases(&run, &[700, 800]).await;
    cutover(&run).await;
    // Exported before the kill, so the store has the day (the next start
    // would export it from the journal otherwise, too).
    let mut exported_day = false;
    let deadline = Instant::now() + RECON_WAIT;
    while !exported_day {
        let backend = run.backend.clone();
        let d = date.clone();
        exported_day = tokio::task::spawn_blocking(move || {
            let Ok(mut s) = store::open_to_read(&backend) else {
                return false;
            };
            s.business_day(&d, &mut |_| {}).expect("day") >= 2
        })
        .await
        .expect("read");
        assert!(Instant::now() < deadline, "the day never reached the store");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.child.start_kill().expect("kill -9");
    let _ = run.child.wait().await;
    assert!(
        reconciliations(&run.backend, &date).is_empty(),
        "no row yet"
    );
    assert_eq!(received_0520s(&sim), 0);

    // The same journal and store; the 0520s made at once now.
    let path = dir.join("switchyard.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replace(
        "reconciliation_delay_ms = 600000",
        "reconciliation_delay_ms = 0",
    );
    std::fs::write(&path, text).expect("config written");
    let mut again = start_in(dir).await;
    let r = wait_reconciliation(&again, &date, |r| r.answered_at_ms.is_some()).await;
    assert_eq!(r.balance, Some(1), "{r:#?}");
    assert_eq!(r.totals.debits_amount, total);
    assert!(received_0520s(&sim) >= 1);
    let _ = again.child.kill().await;
    sim.shutdown();
    let _ = std::fs::remove_dir_all(&again.dir);
}
