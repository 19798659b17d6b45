//! The business date and its cutover, end to end over real sockets: the
//! switch in-process, the simulator (or a test playing the host), the
//! real binary for `switchyard settle cutover` and `journal tail`, the
//! store on SQLite.

#[path = "common/admin_http.rs"]
mod admin_http;
mod common;
#[path = "common/postgres.rs"]
mod pg_server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use switchyard::iso8583::{MessageBuilder, Mti};
use switchyard::switch::journal::{CutoverReason, Record};
use switchyard::switch::settlement::BusinessDate;
use switchyard::switch::store::{self, Backend, Store};
use tokio::time::timeout;

async fn settle_cutover(admin: SocketAddr, session: Option<&str>) -> (i32, String, String) {
    let admin = admin.to_string();
    let mut args = vec!["settle", "cutover", "--admin", admin.as_str()];
    if let Some(s) = session {
        args.extend(["--session", s]);
    }
    cli(&args, "").await
}

/// The journal directory a config names.
fn journal_dir(toml: &str) -> PathBuf {
    let config = switchyard::switch::config::Config::parse(toml).expect("valid");
    config.journal.dir
}

fn records(dir: &Path) -> Vec<Record> {
    switchyard::switch::journal::read_all(dir)
        .expect("journal readable")
        .map(|r| r.expect("undamaged").1)
        .collect()
}

async fn summary(admin: SocketAddr) -> Value {
    let (status, body) = http_get(admin, "/api/summary").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Runs `f` on the store off the tokio worker.
fn with_store<T>(backend: &Backend, f: impl FnOnce(&mut dyn Store) -> T) -> T {
    tokio::task::block_in_place(|| {
        let mut s = store::open(backend).expect("store opens");
        f(&mut *s)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cutover_moves_the_business_date_in_the_journal_and_the_store() {
    let db = fresh_journal_dir().with_extension("db");
    operator_cutover(&format!("sqlite://{}", db.display())).await;
}

/// The same on PostgreSQL (a private server, as tests/store.rs's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cutover_moves_the_business_date_in_the_store_on_postgres() {
    // Starting the server blocks (initdb, pg_ctl).
    let Some(server) = tokio::task::block_in_place(pg_server::PgServer::shared) else {
        return; // SWITCHYARD_SKIP_POSTGRES
    };
    let url = tokio::task::block_in_place(|| server.create_database());
    operator_cutover(&url).await;
}

async fn operator_cutover(url: &str) {
    let sim = start_sim().await;
    // No scheduled cutover: a test that runs across 23:00 UTC must not
    // see the timer move the date too.
    let toml = config(
        &[sim.local_addr()],
        "",
        &format!(
            "[store]\nenabled = true\nurl = \"{url}\"\nbatch_max = 4\n\
             [settlement]\ncutover_time = \"off\"\n"
        ),
    );
    let dir = journal_dir(&toml);
    let switch = start_switch(&toml).await;
    wait_links_up(&switch).await;
    let admin = switch.admin_addr.expect("admin on");
    let before = switch.shared.business_day.current();
    assert_eq!(
        summary(admin).await["business_date"],
        before.to_string(),
        "the clock's date, with no cutover on record"
    );
    assert_eq!(summary(admin).await["last_cutover"], Value::Null);

    let mut t = Terminal::connect(switch.terminal_addr).await;
    for stan in 1..=3 {
        let a = t.request(&auth(Mti::FINANCIAL, stan, PAN, 100)).await;
        assert_eq!(code(&a), "00");
    }
    let (status, out, err) = settle_cutover(admin, None).await;
    assert_eq!(status, 0, "{out}{err}");
    let answer: Value = serde_json::from_str(&out).expect("JSON");
    let after = before.next();
    assert_eq!(answer["business_date"], after.to_string());
    assert_eq!(answer["previous"], before.to_string());
    for stan in 4..=6 {
        let a = t.request(&auth(Mti::FINANCIAL, stan, PAN, 100)).await;
        assert_eq!(code(&a), "00");
    }
    // A second cutover the same day would close a day not yet begun.
    let (status, _, err) = settle_cutover(admin, None).await;
    assert_eq!(status, 1);
    assert!(
        err.contains("409") && err.contains("ahead of the clock"),
        "{err}"
    );
    let s = summary(admin).await;
    assert_eq!(s["business_date"], after.to_string());
    let (_, metrics) = http_get(admin, "/metrics").await;
    let (y, m, d) = after.ymd();
    assert_eq!(
        metric(&metrics, "switchyard_business_date", &[]),
        f64::from(y) * 10_000.0 + f64::from(m * 100 + d)
    );
    assert!(metric(&metrics, "switchyard_cutovers_total", &["operator"]) >= 1.0);
    assert_eq!(s["last_cutover"]["reason"], "operator");
    assert_eq!(s["last_cutover"]["business_date"], after.to_string());

    // The journal: three requests of the day before, the cutover, three of
    // the new day, each answer with the simulator's DE15.
    let mut exported = switch.store_exported().expect("store on");
    let durable = switch.shared.journal.stats().appended;
    timeout(GUARD, exported.wait_for(|&p| p >= durable))
        .await
        .expect("exported in time")
        .expect("exporter running");
    let mut dates = Vec::new();
    let mut cutovers = Vec::new();
    for r in records(&dir) {
        match r {
            Record::Request {
                request,
                business_date,
                ..
            } => dates.push((request.stan, BusinessDate(business_date))),
            Record::Cutover {
                business_date,
                reason,
                ..
            } => {
                cutovers.push((BusinessDate(business_date), reason));
                dates.push((0, BusinessDate(business_date)));
            }
            Record::Response {
                settlement_date, ..
            } => assert_eq!(settlement_date, 1125, "DE7 1125101010 -> DE15 1125"),
            _ => {}
        }
    }
    assert_eq!(cutovers, vec![(after, CutoverReason::Operator)]);
    assert_eq!(
        dates,
        vec![
            (1, before),
            (2, before),
            (3, before),
            (0, after),
            (4, after),
            (5, after),
            (6, after),
        ]
    );

    // The store: the same dates, and DE15.
    let backend: Backend = store::parse_url(url).expect("url");
    // `node-1`: the default store.node_id.
    let rows = with_store(&backend, |s| {
        s.transactions("node-1", 0, 100).expect("rows")
    });
    assert_eq!(rows.len(), 6);
    for r in &rows {
        let req = r.request.as_ref().expect("request");
        let want = if req.stan <= 3 { before } else { after };
        assert_eq!(
            req.business_date.as_deref(),
            Some(want.to_string().as_str()),
            "STAN {}",
            req.stan
        );
        assert_eq!(r.settlement_date.as_deref(), Some("1125"));
    }

    // `journal tail` shows both.
    let (status, out, err) = cli(
        &[
            "journal",
            "tail",
            "--dir",
            dir.to_str().expect("utf-8"),
            "-n",
            "20",
        ],
        "",
    )
    .await;
    assert_eq!(status, 0, "{err}");
    assert!(
        out.contains("cutover          txn=0")
            && out.contains(&format!("bdate={after} reason=operator"))
            && out.contains(&format!("bdate={before} route="))
            && out.contains("de15=1125"),
        "{out}"
    );

    // A restart continues with the date on record, not the clock's.
    switch.shutdown().await;
    let switch = start_switch(&toml).await;
    assert_eq!(switch.shared.business_day.current(), after);
    let s = summary(switch.admin_addr.expect("admin on")).await;
    assert_eq!(s["last_cutover"]["reason"], "operator");
    switch.shutdown().await;
}

/// The token of a `switchyard_session=TOKEN` cookie, as `settle cutover
/// --session` takes it.
fn session_token(cookie: String) -> String {
    cookie
        .strip_prefix("switchyard_session=")
        .unwrap_or_else(|| panic!("a session cookie: {cookie}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_cutover_is_in_the_audit_trail_and_a_viewer_may_not_make_one() {
    let o = admin_http::Dir::new("settle-");
    let op = admin_http::add_user(&o, "olga", "operator", "olga's long passphrase").await;
    let view = admin_http::add_user(&o, "victor", "viewer", "victor's long passphrase").await;
    let toml = config(&[free_addr()], "", "[settlement]\ncutover_time = \"off\"\n")
        .replace("[admin]\nlisten = \"127.0.0.1:0\"\n", &o.admin_table());
    let switch = start_switch(&toml).await;
    let admin = switch.admin_addr.expect("admin on");
    let before = switch.shared.business_day.current();

    let (status, _, err) = settle_cutover(admin, None).await;
    assert_eq!(status, 1);
    assert!(err.contains("401"), "{err}");
    let viewer =
        session_token(admin_http::login(admin, "victor", "victor's long passphrase", &view).await);
    let (status, _, err) = settle_cutover(admin, Some(&viewer)).await;
    assert_eq!(status, 1);
    assert!(err.contains("403"), "{err}");
    assert_eq!(switch.shared.business_day.current(), before);

    let operator =
        session_token(admin_http::login(admin, "olga", "olga's long passphrase", &op).await);
    let (status, out, err) = settle_cutover(admin, Some(&operator)).await;
    assert_eq!(status, 0, "{out}{err}");
    assert_eq!(switch.shared.business_day.current(), before.next());
    // Refused the second time: recorded too.
    let (status, _, _) = settle_cutover(admin, Some(&operator)).await;
    assert_eq!(status, 1);

    let lines: Vec<Value> = o.audit_lines();
    let cutovers: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "action" && l["details"]["action"] == "cutover")
        .collect();
    assert_eq!(cutovers.len(), 2, "{lines:#?}");
    assert_eq!(cutovers[0]["user"], "olga");
    assert_eq!(cutovers[0]["result"], "ok");
    assert_eq!(cutovers[0]["details"]["from"], before.to_string());
    assert_eq!(cutovers[0]["details"]["to"], before.next().to_string());
    assert!(
        cutovers[1]["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("refused: ")),
        "{:?}",
        cutovers[1]
    );
    let forbidden = lines
        .iter()
        .filter(|l| l["user"] == "victor" && l["result"] == "forbidden")
        .count();
    assert_eq!(forbidden, 1, "{lines:#?}");
    let (status, out, err) = cli(&["audit", "verify", o.audit.to_str().expect("utf-8")], "").await;
    assert_eq!(status, 0, "{out}{err}");
    switch.shutdown().await;
}

/// Plays the host: accepts the link and answers its sign-on.
async fn host_signed_on(
    listener: &tokio::net::TcpListener,
    switch: &switchyard::switch::server::Switch,
) -> Terminal {
    let (stream, _) = timeout(GUARD, listener.accept())
        .await
        .expect("the link connects in time")
        .expect("accepts");
    let mut host = Terminal::over(stream);
    let sign_on = host.recv().await;
    let mut b = MessageBuilder::response_to(&sign_on, &[7, 11, 70]).expect("0810");
    b.set(39, b"00");
    host.send(&b.to_bytes().expect("packs")).await;
    wait_links_up(switch).await;
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquirers_0800_201_cuts_over_once_when_it_is_configured_to() {
    for follow in [true, false] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let toml = config(
            &[listener.local_addr().expect("addr")],
            &format!("cutover_on_host_0800 = {follow}"),
            "[settlement]\ncutover_time = \"off\"\n",
        );
        let dir = journal_dir(&toml);
        let switch = start_switch(&toml).await;
        let mut host = host_signed_on(&listener, &switch).await;
        let before = switch.shared.business_day.current();

        host.send(&network(700_001, "201")).await;
        let answer = host.recv().await;
        assert_eq!(code(&answer), "00", "the host's cutover is acknowledged");
        assert_eq!(text(&answer, 70), "201");
        // Announced again (another link would): the date is ahead already.
        host.send(&network(700_002, "201")).await;
        assert_eq!(code(&host.recv().await), "00");

        let want = if follow { before.next() } else { before };
        // The driver makes the cutover after answering; wait for it.
        let reached = timeout(GUARD, async {
            while switch.shared.business_day.current() != want {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(reached.is_ok(), "follow = {follow}");
        switch.shutdown().await;
        let cutovers: Vec<_> = records(&dir)
            .into_iter()
            .filter_map(|r| match r {
                Record::Cutover {
                    business_date,
                    reason,
                    ..
                } => Some((BusinessDate(business_date), reason)),
                _ => None,
            })
            .collect();
        if follow {
            assert_eq!(
                cutovers,
                vec![(before.next(), CutoverReason::Host { acquirer: 0 })]
            );
        } else {
            assert!(cutovers.is_empty(), "{cutovers:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_stopped_over_cutover_times_catches_up_once_at_start() {
    // The default schedule: 23:00 UTC.
    let toml = config(&[free_addr()], "", "");
    let config = switchyard::switch::config::Config::parse(&toml).expect("valid");
    let old = BusinessDate::parse("2026-01-15").expect("date");
    {
        let (journal, _) =
            switchyard::switch::journal::Journal::open(&config.journal).expect("journal opens");
        journal
            .append(Record::Cutover {
                at_ms: 1_768_500_000_000,
                business_date: old.days(),
                reason: CutoverReason::Operator,
            })
            .expect("appended");
        journal.shutdown();
    }
    let switch = start_switch(&toml).await;
    // Made before the listeners took a request: at once.
    let caught_up = switch.shared.business_day.last().expect("a cutover");
    assert_eq!(caught_up.reason, CutoverReason::Startup);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let today = config.settlement.schedule.date_at(now);
    assert_eq!((caught_up.from, caught_up.to), (old, today));
    let s = summary(switch.admin_addr.expect("admin on")).await;
    assert_eq!(s["last_cutover"]["reason"], "startup");
    assert_eq!(s["business_date"], today.to_string());
    switch.shutdown().await;
    let cutovers: Vec<_> = records(&config.journal.dir)
        .into_iter()
        .filter_map(|r| match r {
            Record::Cutover {
                business_date,
                reason,
                ..
            } => Some((BusinessDate(business_date), reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        cutovers,
        vec![
            (old, CutoverReason::Operator),
            (today, CutoverReason::Startup)
        ]
    );
}
