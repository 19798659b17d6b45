//! Settlement end to end: a real switch (in-process) between loadtest and
//! the simulator dropping every 5th answer, an operator's cutover (the
//! real `switchyard settle cutover`) between two load runs, the store on
//! SQLite (and on PostgreSQL). Once the exporter has caught up and
//! store-and-forward has nothing left, `switchyard settle report` shows
//! for each business date, to the cent, what loadtest saw approved minus
//! what was reversed; `switchyard recon` against the simulator's own
//! settlement file of that day finds no exception, and after the
//! simulator's `skew 7` exactly 7.

mod common;
#[path = "common/postgres.rs"]
mod pg_server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use switchyard::iso8583::{MessageBuilder, Mti, specs};
use switchyard::switch::server::Switch;
use switchyard::switch::settlement::BusinessDate;
use switchyard::switch::settlement::day::{Day, Status};
use switchyard::switch::store::{self, Backend};
use switchyard::tools::sim::SimConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::{Instant, timeout};

/// How long the store may take to settle down after a load run: the
/// 0420s of the timeouts, one at a time (every 5th dropped again: 250 ms
/// to notice, resent after 100 ms), then the exporter.
const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_recon_agree_with_loadtest_and_the_host_across_a_cutover() {
    let dir = test_dir();
    let db = dir.join("store.db");
    end_to_end(&dir, &format!("sqlite://{}", db.display())).await;
}

/// The same with the store on a private PostgreSQL server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_recon_agree_on_postgres_too() {
    let Some(server) = tokio::task::block_in_place(pg_server::PgServer::shared) else {
        return; // SWITCHYARD_SKIP_POSTGRES
    };
    let url = tokio::task::block_in_place(|| server.create_database());
    end_to_end(&test_dir(), &url).await;
}

fn test_dir() -> PathBuf {
    let dir = fresh_journal_dir();
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// One line to the simulator's control port; its answer.
async fn control(addr: SocketAddr, command: &str) -> String {
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

/// A short, bounded open-loop run (2 s at 150/s over 2 connections, the
/// default mix: purchases, authorizations, reversals, fraud), seeded.
async fn load(switch: &Switch, seed: u64) -> loadtest::Report {
    let target = switch.terminal_addr.to_string();
    let seed = seed.to_string();
    tokio::task::spawn_blocking(move || {
        loadtest_run(&[
            "--target",
            &target,
            "--connections",
            "2",
            "--rate",
            "150",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            // Longer than the switch's request timeout: every request
            // gets the switch's answer, 91 included.
            "--timeout",
            "5s",
            "--threads",
            "1",
            "--terminals",
            "8",
            "--seed",
            &seed,
            "--no-progress",
        ])
    })
    .await
    .expect("loadtest ran")
}

/// Waits until the store holds every transaction of `date` with its
/// final answer and nothing is left in store-and-forward: the journal
/// exported up to its durable end, no row in flight or pending.
async fn settled(switch: &Switch, backend: &Backend, date: BusinessDate) -> Day {
    let started = Instant::now();
    let deadline = started + SETTLE;
    let mut exported = switch.store_exported().expect("store on");
    loop {
        let durable = switch.shared.journal.stats().durable;
        timeout(
            deadline.saturating_duration_since(Instant::now()),
            exported.wait_for(|&p| p >= durable),
        )
        .await
        .expect("the exporter caught up in time")
        .expect("exporter running");
        let day = tokio::task::block_in_place(|| {
            let mut s = store::open_to_read(backend).expect("store opens");
            Day::load(&mut *s, &date.to_string()).expect("day reads")
        });
        let open = day
            .entries
            .iter()
            .filter(|e| e.pending_saf() || e.status == Status::Incomplete)
            .count();
        if open == 0 && !day.entries.is_empty() {
            eprintln!("{date}: settled down in {:?}", started.elapsed());
            return day;
        }
        assert!(
            Instant::now() < deadline,
            "{open} transaction(s) of {date} still open after {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What loadtest saw, as settlement counts it: approved minus reversed
/// (a reversal answered 91 too: the switch carries it on with a 0420
/// naming the original, so the host reverses it), per class:
/// `[authorizations, financial]` as (count, minor units).
fn expected(r: &loadtest::Report) -> [(u64, i128); 2] {
    let m = r.money();
    [0, 1].map(|c| {
        let gone = m.reversed[c].count + m.reversals_unanswered[c].count;
        let gone_amount = m.reversed[c].amount + m.reversals_unanswered[c].amount;
        (
            m.approved[c].count - gone,
            i128::from(m.approved[c].amount) - i128::from(gone_amount),
        )
    })
}

async fn report_json(config: &Path, date: BusinessDate) -> Value {
    let date = date.to_string();
    let (status, out, err) = cli(
        &[
            "settle",
            "report",
            "--date",
            &date,
            "--format",
            "json",
            "--config",
            config.to_str().expect("utf-8"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 0, "{err}");
    serde_json::from_str(&out).expect("JSON")
}

fn lines_sum(v: &Value) -> (u64, i128) {
    v.as_array()
        .expect("lines")
        .iter()
        .fold((0, 0), |(c, a), l| {
            (
                c + l["count"].as_u64().expect("count"),
                a + l["amount_minor"].as_i64().expect("amount") as i128,
            )
        })
}

/// Checks the report of `date` against what loadtest saw; returns the
/// settled count.
async fn check_report(config: &Path, date: BusinessDate, run: &loadtest::Report) -> u64 {
    let [(auth_count, auth_amount), (count, net)] = expected(run);
    eprintln!(
        "{date}: loadtest saw {:?}; settled {count} ({net} minor units), authorizations \
         {auth_count} ({auth_amount})",
        run.money()
    );
    assert!(count > 50, "a run of substance: {count} settled");
    let r = report_json(config, date).await;
    assert_eq!(r["business_date"], date.to_string());
    let totals = r["totals"].as_array().expect("totals");
    assert_eq!(totals.len(), 1, "{totals:?}");
    let t = &totals[0];
    assert_eq!(t["currency_code"], "USD");
    assert_eq!(
        (
            t["count"].as_u64().expect("count"),
            t["net_minor"].as_i64().expect("net") as i128
        ),
        (count, net),
        "{date}: the report's settled total is what loadtest saw approved minus reversed"
    );
    // Every breakdown adds up to the same.
    for by in [
        "by_acquirer",
        "by_merchant",
        "by_terminal",
        "by_scheme",
        "by_transaction_type",
    ] {
        assert_eq!(lines_sum(&r[by]), (count, net), "{by}");
    }
    let schemes: Vec<&str> = r["by_scheme"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["key"].as_str().expect("key"))
        .collect();
    assert!(
        schemes.contains(&"Visa") && schemes.contains(&"Mastercard"),
        "{schemes:?}"
    );
    assert_eq!(lines_sum(&r["authorizations"]), (auth_count, auth_amount));
    assert_eq!(r["pending_saf"], Value::Array(vec![]));
    assert_eq!(r["incomplete"], 0);
    // The drops: 91s among the declines, the switch's reversals of them.
    let declined = r["declined"].as_array().expect("lines");
    assert!(
        declined.iter().any(|l| l["key"] == "91 (timed out)"),
        "{declined:?}"
    );
    let reversals = r["reversals"].as_array().expect("lines");
    assert!(
        reversals.iter().any(|l| l["key"]
            .as_str()
            .is_some_and(|k| k.contains("by a terminal (0400)"))),
        "{reversals:?}"
    );
    count
}

/// `switchyard recon` of acquirer-a for `date` against `file`:
/// (exit status, exception lines of its CSV, matched lines).
async fn recon(config: &Path, date: BusinessDate, file: &Path) -> (i32, Vec<String>, usize) {
    let date = date.to_string();
    let (status, out, err) = cli(
        &[
            "recon",
            "--acquirer",
            "acquirer-a",
            "--date",
            &date,
            "--file",
            file.to_str().expect("utf-8"),
            "--format",
            "csv",
            "--config",
            config.to_str().expect("utf-8"),
        ],
        "",
    )
    .await;
    assert!(status == 0 || status == 1, "recon ran: {status} {err}");
    let mut lines = out.lines();
    assert!(lines.next().is_some_and(|h| h.starts_with("outcome,")));
    let (matched, exceptions): (Vec<&str>, Vec<&str>) =
        lines.partition(|l| l.starts_with("matched,"));
    (
        status,
        exceptions.into_iter().map(str::to_owned).collect(),
        matched.len(),
    )
}

async fn end_to_end(dir: &Path, url: &str) {
    let host_file = dir.join("host-settlement.csv");
    let sim = start_sim_with(SimConfig {
        drop_every: 5,
        control: Some(free_addr()),
        settlement_file: Some(host_file.clone()),
        ..sim_config()
    })
    .await;
    let ctl = sim.control_addr().expect("control port");
    // No scheduled cutover: only the operator's moves the date.
    // A short request timeout: each dropped answer (and dropped 0420,
    // which store-and-forward resends) costs that long. Should a real
    // answer come later than it on a loaded box, the switch answers 91
    // and reverses, the host takes it back: the figures still agree.
    let toml = config(
        &[sim.local_addr()],
        "request_timeout_ms = 250",
        &format!(
            "[store]\nenabled = true\nurl = \"{url}\"\nbatch_max = 256\n\
             [settlement]\ncutover_time = \"off\"\n\
             [saf]\nretry_interval_ms = 100\n"
        ),
    );
    let config_path = dir.join("switchyard.toml");
    std::fs::write(&config_path, &toml).expect("config written");
    let backend = store::parse_url(url).expect("url");
    let switch = start_switch(&toml).await;
    wait_links_up(&switch).await;
    let admin = switch.admin_addr.expect("admin on").to_string();

    // Day one.
    let first_date = switch.shared.business_day.current();
    let first = load(&switch, 11).await;
    assert_eq!((first.timed_out(), first.lost()), (0, 0), "{first:?}");
    let day = settled(&switch, &backend, first_date).await;
    assert!(
        day.entries.iter().any(|e| e.status == Status::TimedOut),
        "drop-every 5 made the switch time out"
    );
    let (status, out, err) = cli(&["settle", "cutover", "--admin", &admin], "").await;
    assert_eq!(status, 0, "{out}{err}");
    let said = control(ctl, "cutover").await;
    assert!(said.starts_with("ok: "), "{said}");
    let first_file = dir.join("host-day-1.csv");
    std::fs::copy(&host_file, &first_file).expect("day one's file kept");

    // Day two.
    let second_date = switch.shared.business_day.current();
    assert_eq!(second_date, first_date.next());
    let second = load(&switch, 12).await;
    assert_eq!((second.timed_out(), second.lost()), (0, 0), "{second:?}");
    settled(&switch, &backend, second_date).await;
    let said = control(ctl, "settlement").await;
    assert!(said.starts_with("ok: "), "{said}");

    // The report, day by day, to the cent.
    let settled_first = check_report(&config_path, first_date, &first).await;
    let settled_second = check_report(&config_path, second_date, &second).await;

    // The other formats of the report.
    let day2 = second_date.to_string();
    for format in ["table", "csv", "html"] {
        let (status, out, err) = cli(
            &[
                "settle",
                "report",
                "--date",
                &day2,
                "--format",
                format,
                "--config",
                config_path.to_str().expect("utf-8"),
            ],
            "",
        )
        .await;
        assert_eq!(status, 0, "{format}: {err}");
        match format {
            "csv" => assert!(out.contains(&format!("{day2},total,settled,USD,{settled_second},"))),
            "html" => assert!(
                out.starts_with("<!doctype html>")
                    && out.contains("<style>")
                    && !out.contains("<script"),
                "self-contained"
            ),
            _ => assert!(out.contains("Settled totals"), "{out}"),
        }
        assert!(card_numbers(&out).is_empty(), "{format}: no card number");
    }

    // The host's own file agrees, day by day.
    let (status, exceptions, matched) = recon(&config_path, first_date, &first_file).await;
    assert_eq!((status, exceptions.len()), (0, 0), "{exceptions:#?}");
    assert_eq!(matched as u64, settled_first);
    let (status, exceptions, matched) = recon(&config_path, second_date, &host_file).await;
    assert_eq!((status, exceptions.len()), (0, 0), "{exceptions:#?}");
    assert_eq!(matched as u64, settled_second);
    // Day one's file is not day two's.
    let (status, exceptions, _) = recon(&config_path, second_date, &first_file).await;
    assert_eq!(status, 1);
    assert!(exceptions.len() as u64 >= settled_second);

    // Seven records altered at the host: seven exceptions.
    let said = control(ctl, "skew 7").await;
    assert!(
        said.starts_with("ok: altered 7 records (3 amounts, 2 dropped, 2 added)"),
        "{said}"
    );
    let (status, exceptions, _) = recon(&config_path, second_date, &host_file).await;
    assert_eq!(status, 1, "{exceptions:#?}");
    assert_eq!(exceptions.len(), 7, "{exceptions:#?}");
    let kinds = |prefix: &str| exceptions.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(
        (
            kinds("amount mismatch,"),
            kinds("missing at the acquirer,"),
            kinds("missing at the switch,")
        ),
        (3, 2, 2),
        "{exceptions:#?}"
    );
    // The table says so, and exits 1 too.
    let (status, out, _) = cli(
        &[
            "recon",
            "--acquirer",
            "acquirer-a",
            "--date",
            &day2,
            "--file",
            host_file.to_str().expect("utf-8"),
            "--config",
            config_path.to_str().expect("utf-8"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 1);
    assert!(out.contains("; 7 exception(s)"), "{out}");

    switch.shutdown().await;
    sim.shutdown();
}

/// A request's DE3, DE18, DE19, DE22 and batch number (DE60) reach the
/// store; a bad recon file line and an unknown acquirer are errors (exit
/// 2) that say where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_what_settlement_needs_and_recon_names_what_it_can_not_read() {
    let dir = test_dir();
    let sim = start_sim().await;
    let url = format!("sqlite://{}", dir.join("store.db").display());
    let toml = config(
        &[sim.local_addr()],
        "[acquirers.recon]\namount = \"Amount\"\namount_unit = \"major\"\n",
        &format!(
            "[store]\nenabled = true\nurl = \"{url}\"\n[settlement]\ncutover_time = \"off\"\n"
        ),
    );
    let config_path = dir.join("switchyard.toml");
    std::fs::write(&config_path, &toml).expect("config written");
    let switch = start_switch(&toml).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::FINANCIAL);
    b.set(2, PAN.as_bytes())
        .set(3, b"200000")
        .set_number(4, 4321)
        .set(7, b"1125101010")
        .set_number(11, 1)
        .set(18, b"5812")
        .set(19, b"276")
        .set(22, b"071")
        .set(37, b"500000000001")
        .set(41, TID.as_bytes())
        .set(42, b"MERCHANT0000001")
        .set(49, b"978")
        .set(60, b"000042");
    let answer = t.request(&b.to_bytes().expect("packs")).await;
    assert_eq!(code(&answer), "00");
    let mut exported = switch.store_exported().expect("store on");
    let durable = switch.shared.journal.stats().durable;
    timeout(GUARD, exported.wait_for(|&p| p >= durable))
        .await
        .expect("exported in time")
        .expect("exporter running");
    let backend = store::parse_url(&url).expect("url");
    let rows = tokio::task::block_in_place(|| {
        let mut s = store::open_to_read(&backend).expect("store");
        s.transactions("node-1", 0, 10).expect("rows")
    });
    let req = rows[0].request.as_ref().expect("request");
    assert_eq!(req.processing_code.as_deref(), Some("200000"));
    assert_eq!((req.mcc, req.country), (Some(5812), Some(276)));
    assert_eq!(req.pos_entry_mode.as_deref(), Some("071"));
    assert_eq!(req.batch.as_deref(), Some("000042"));

    let date = switch.shared.business_day.current().to_string();
    // A refund: a credit of 43.21 EUR.
    let r = report_json(&config_path, switch.shared.business_day.current()).await;
    assert_eq!(r["totals"][0]["currency_code"], "EUR");
    assert_eq!(r["totals"][0]["net_minor"], -4321);
    assert_eq!(r["totals"][0]["credit_minor"], 4321);

    let run = |file: PathBuf, acquirer: &'static str| {
        let config_path = config_path.clone();
        let date = date.clone();
        async move {
            cli(
                &[
                    "recon",
                    "--acquirer",
                    acquirer,
                    "--date",
                    &date,
                    "--file",
                    file.to_str().expect("utf-8"),
                    "--config",
                    config_path.to_str().expect("utf-8"),
                ],
                "",
            )
            .await
        }
    };
    let header = "rrn,approval_code,Amount,currency,terminal,stan,date\n";
    let approval = text(&answer, 38);
    let good = dir.join("good.csv");
    std::fs::write(
        &good,
        format!("{header}500000000001,{approval},43.21,EUR,{TID},1,1125\n"),
    )
    .expect("file");
    let (status, out, err) = run(good.clone(), "acquirer-a").await;
    assert_eq!(status, 0, "{out}{err}");
    assert!(
        out.contains("1 matched") && out.contains("; 0 exception(s)"),
        "{out}"
    );
    let bad = dir.join("bad.csv");
    std::fs::write(
        &bad,
        format!(
            "{header}500000000001,{approval},43.21,EUR,{TID},1,1125\nR2,A2,4.321,EUR,T,2,1125\n"
        ),
    )
    .expect("file");
    let (status, _, err) = run(bad.clone(), "acquirer-a").await;
    assert_eq!(status, 2, "{err}");
    assert!(
        err.contains("bad.csv: line 3, column `Amount`: `4.321` is not an amount"),
        "{err}"
    );
    let no_column = dir.join("no-column.csv");
    std::fs::write(
        &no_column,
        "rrn,approval_code,amount,currency,terminal,stan,date\n",
    )
    .expect("file");
    let (status, _, err) = run(no_column, "acquirer-a").await;
    assert_eq!(status, 2);
    assert!(err.contains("no column `Amount` (recon.amount"), "{err}");
    let (status, _, err) = run(good, "acquirer-z").await;
    assert_eq!(status, 2);
    assert!(
        err.contains("--acquirer acquirer-z: not in the config"),
        "{err}"
    );
    switch.shutdown().await;
}

/// `switchyard sim --settlement-file` as a process writes its file when
/// it stops (SIGTERM).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_process_writes_its_settlement_file_at_stop() {
    let dir = test_dir();
    let file = dir.join("host.csv");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["sim", "--listen", "127.0.0.1:0", "--settlement-file"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("switchyard sim starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut banner = String::new();
    timeout(GUARD, BufReader::new(stdout).read_line(&mut banner))
        .await
        .expect("banner in time")
        .expect("reads");
    let addr: SocketAddr = banner
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {banner:?}"));
    let mut t = Terminal::connect(addr).await;
    for stan in 1..=2 {
        assert_eq!(
            code(&t.request(&auth(Mti::FINANCIAL, stan, PAN, 100)).await),
            "00"
        );
    }
    assert!(!file.exists(), "not written before it is asked or stops");
    let pid = child.id().expect("running") as libc::pid_t;
    // SAFETY: kill(2) with a live child's pid and a signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = timeout(GUARD, child.wait_with_output())
        .await
        .expect("stops in time")
        .expect("waits");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("settlement file: 2 records written to"),
        "{stderr}"
    );
    let csv = std::fs::read_to_string(&file).expect("written at stop");
    assert_eq!(csv.lines().count(), 3, "{csv}");
}
