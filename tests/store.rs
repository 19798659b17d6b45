//! The transaction store, end to end: the switch's exporter writes what
//! the terminals saw (approvals, declines, a timeout and its reversal) to
//! a real database; after `kill -9` while the exporter is behind, a
//! restart leaves each transaction in the store exactly once; no card
//! number is in any column. Each test twice, with the same assertions: on
//! a SQLite file and on a private PostgreSQL server (`common/postgres.rs`).

mod common;
#[path = "common/postgres.rs"]
mod pg_server;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use pg_server::PgServer;
use switchyard::iso8583::Mti;
use switchyard::iso8583::values::luhn_ok;
use switchyard::switch::journal::Record;
use switchyard::switch::store::{self, SafState, Store, StoreError, TxnRow};
use switchyard::tools::sim::SimConfig;
use tokio::sync::Notify;
use tokio::task::block_in_place;
use tokio::time::timeout;

const NODE: &str = "node-1";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    Postgres,
}

/// Each named `async fn NAME(kind: Kind)` as `NAME::sqlite` and
/// `NAME::postgres`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Kind::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Kind::Postgres).await
            }
        }
    )*};
}

on_both!(
    the_store_holds_what_the_terminal_saw_and_marks_the_reversal,
    after_kill_9_while_behind_each_transaction_is_stored_exactly_once,
);

/// A test's database: a SQLite file, or a fresh database on the shared
/// PostgreSQL server (running while held).
enum Db {
    Sqlite(PathBuf),
    Postgres { url: String, _server: Arc<PgServer> },
}

impl Db {
    /// `None`: PostgreSQL missing and skipped (`SWITCHYARD_SKIP_POSTGRES`).
    fn new(kind: Kind, dir: &Path) -> Option<Db> {
        Some(match kind {
            Kind::Sqlite => Db::Sqlite(dir.join("data/store.db")),
            Kind::Postgres => {
                let server = PgServer::shared()?;
                Db::Postgres {
                    url: server.create_database(),
                    _server: server,
                }
            }
        })
    }

    /// What `[store] url` says.
    fn url(&self) -> String {
        match self {
            Db::Sqlite(path) => format!("sqlite://{}", path.display()),
            Db::Postgres { url, .. } => url.clone(),
        }
    }

    /// Opens the store as the switch does and runs `f` on it, off the
    /// tokio worker (the PostgreSQL client blocks on a runtime of its own).
    fn with_store<T>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        block_in_place(|| {
            let backend = store::parse_url(&self.url()).expect("a store url");
            let mut s = store::open(&backend)?;
            f(&mut *s)
        })
    }

    fn rows(&self) -> Vec<TxnRow> {
        self.with_store(|s| s.transactions(NODE, 0, 1_000_000))
            .expect("rows")
    }

    fn text_values(&self) -> Values {
        match self {
            Db::Sqlite(path) => sqlite_text_values(path),
            Db::Postgres { url, .. } => block_in_place(|| postgres_text_values(url)),
        }
    }
}

/// Every run of 13 to 19 ASCII digits in `bytes` (and every such window
/// of a longer run) that passes the Luhn check.
fn card_numbers_in(bytes: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for run in bytes.split(|b| !b.is_ascii_digit()) {
        for len in 13..=19.min(run.len()) {
            for w in run.windows(len) {
                if luhn_ok(w) {
                    found.push(String::from_utf8_lossy(w).into_owned());
                }
            }
        }
    }
    found
}

/// Scans every text and binary value of every table in the database.
fn assert_no_card_number(db: &Db) {
    let (tables, values) = db.text_values();
    assert!(tables.iter().any(|t| t == "transactions"), "{tables:?}");
    assert!(!values.is_empty(), "the scan saw text");
    for (t, c, bytes) in &values {
        let found = card_numbers_in(bytes);
        assert!(found.is_empty(), "{t} column {c}: card number {found:?}");
    }
}

/// The tables, and every text and binary value: (table, column, bytes).
type Values = (Vec<String>, Vec<(String, String, Vec<u8>)>);

fn postgres_text_values(url: &str) -> Values {
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("db opens");
    let columns = c
        .query(
            "SELECT table_name::TEXT, column_name::TEXT, data_type::TEXT \
             FROM information_schema.columns WHERE table_schema = 'public' \
             ORDER BY table_name, ordinal_position",
            &[],
        )
        .expect("columns");
    let mut tables = Vec::new();
    let mut values = Vec::new();
    for col in &columns {
        let (t, name, ty): (String, String, String) = (col.get(0), col.get(1), col.get(2));
        if !tables.contains(&t) {
            tables.push(t.clone());
        }
        let binary = match ty.as_str() {
            "bytea" => true,
            "text" | "character varying" | "character" => false,
            _ => continue,
        };
        for r in c
            .query(&format!("SELECT \"{name}\" FROM \"{t}\""), &[])
            .expect("select")
        {
            let bytes = if binary {
                r.get::<_, Option<Vec<u8>>>(0)
            } else {
                r.get::<_, Option<String>>(0).map(String::into_bytes)
            };
            if let Some(b) = bytes {
                values.push((t.clone(), name.clone(), b));
            }
        }
    }
    (tables, values)
}

fn sqlite_text_values(db: &Path) -> Values {
    let conn = rusqlite::Connection::open(db).expect("db opens");
    let tables: Vec<String> = {
        let mut s = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .expect("tables");
        s.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("names")
    };
    let mut values = Vec::new();
    for t in &tables {
        let mut s = conn
            .prepare(&format!("SELECT * FROM \"{t}\""))
            .expect("select");
        let columns = s.column_count();
        let mut rows = s.query([]).expect("rows");
        while let Some(row) = rows.next().expect("row") {
            for c in 0..columns {
                let bytes = match row.get_ref(c).expect("value") {
                    rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => b,
                    _ => continue,
                };
                values.push((t.clone(), format!("#{c}"), bytes.to_vec()));
            }
        }
    }
    (tables, values)
}

async fn the_store_holds_what_the_terminal_saw_and_marks_the_reversal(kind: Kind) {
    let dir = fresh_journal_dir();
    let Some(db) = Db::new(kind, &dir) else {
        return;
    };
    let sim = start_sim_with(SimConfig {
        decline_over_amount: Some(5_000),
        drop_every: 4,
        ..sim_config()
    })
    .await;
    let toml = config(
        &[sim.local_addr()],
        "request_timeout_ms = 300",
        &format!(
            "[store]\nenabled = true\nurl = \"{}\"\nbatch_max = 7\n\
             [saf]\nretry_interval_ms = 100\n",
            db.url()
        ),
    );
    let switch = start_switch(&toml).await;
    wait_links_up(&switch).await;
    let mut exported = switch.store_exported().expect("store enabled");

    let mut t = Terminal::connect(switch.terminal_addr).await;
    let mut seen: BTreeMap<u32, (String, String)> = BTreeMap::new();
    for stan in 1..=24u32 {
        let amount = if stan % 3 == 0 {
            9_000
        } else {
            100 + u64::from(stan)
        };
        let a = t.request(&auth(Mti::FINANCIAL, stan, PAN, amount)).await;
        assert_eq!(a.stan(), Some(stan));
        seen.insert(stan, (code(&a), text(&a, 38)));
    }
    let count = |c: &str| seen.values().filter(|(rc, _)| rc == c).count();
    assert!(
        count("00") > 0 && count("51") > 0 && count("91") > 0,
        "{seen:?}"
    );

    // The exporter's position moves as the journal does; wait (on it)
    // until the store has every request and every reversal acknowledged.
    // A row can be in before its answer is (the request's record was
    // exported in one batch, the answer's not yet): wait for outcomes too.
    let done = |rows: &[TxnRow]| {
        rows.len() == seen.len()
            && rows.iter().all(|r| {
                r.outcome.is_some()
                    && (r.outcome.as_deref() != Some("timeout")
                        || r.reversal.state == Some(SafState::Acked))
            })
    };
    let caught_up = timeout(GUARD, async {
        loop {
            let rows = db.rows();
            if done(&rows) {
                return rows;
            }
            exported.changed().await.expect("exporter running");
        }
    })
    .await;
    let rows = caught_up.unwrap_or_else(|_| panic!("store never caught up: {:#?}", db.rows()));

    let mut by_stan = BTreeMap::new();
    for r in &rows {
        let req = r.request.as_ref().expect("request fields");
        assert_eq!(req.masked_pan, "476173******0010");
        assert_eq!(req.terminal_id, TID);
        assert_eq!(req.merchant_id, "MERCHANT0000001");
        assert_eq!(req.currency, 840);
        assert_eq!(r.acquirer.as_deref(), Some("acquirer-a"));
        assert!(
            by_stan.insert(req.stan, r).is_none(),
            "STAN {} twice",
            req.stan
        );
    }
    for (stan, (rc, approval)) in &seen {
        let r = by_stan
            .get(stan)
            .unwrap_or_else(|| panic!("STAN {stan} not stored"));
        assert_eq!(r.response_code.as_deref(), Some(rc.as_str()), "STAN {stan}");
        if rc == "91" {
            assert_eq!(r.outcome.as_deref(), Some("timeout"));
            assert_eq!(r.reversal.state, Some(SafState::Acked), "STAN {stan}");
            assert_eq!(r.reversal.detail.as_deref(), Some("91"));
        } else {
            assert_eq!(r.outcome.as_deref(), Some("answered"));
            assert_eq!(
                r.approval_code.as_deref(),
                Some(approval.as_str()),
                "STAN {stan}"
            );
            assert_eq!(r.reversal.state, None, "STAN {stan}");
        }
    }
    switch.shutdown().await;
    assert_no_card_number(&db);
}

#[test]
fn the_card_number_scan_finds_one() {
    // The scan above must be able to fail.
    let found = card_numbers_in(b"x 4761739001010010 y");
    assert!(found.iter().any(|f| f == "4761739001010010"), "{found:?}");
    assert!(card_numbers_in(b"476173******0010 000000000001").is_empty());
}

/// Per transaction id, the journal's final response code ("91" for a
/// timeout), if any; and the last sequence number read.
fn journal_txns(dir: &Path) -> (BTreeMap<u64, Option<String>>, u64) {
    let mut txns = BTreeMap::new();
    let mut last = 0;
    for r in switchyard::switch::journal::read_all(dir).expect("journal readable") {
        let Ok((seq, rec)) = r else { break };
        last = seq;
        let entry = txns.entry(rec.txn()).or_insert(None);
        match rec {
            Record::Response { response_code, .. } => {
                *entry = Some(String::from_utf8_lossy(&response_code).into_owned())
            }
            Record::Timeout { .. } => *entry = Some("91".into()),
            _ => {}
        }
    }
    (txns, last)
}

/// `batch_max`: 1 before the kill (one record per SQL transaction: the
/// exporter is behind the journal when the switch is killed).
fn write_crash_config(dir: &Path, sim: std::net::SocketAddr, db: &Db, batch_max: usize) -> PathBuf {
    let path = dir.join("switch.toml");
    let toml = format!(
        r#"
[terminals]
listen = "127.0.0.1:0"
max_in_flight_per_connection = 64
[admin]
enabled = false
[[acquirers]]
name = "acquirer-a"
links = ["{sim}"]
request_timeout_ms = 3000
backoff_initial_ms = 20
backoff_max_ms = 200
[routing]
default = "acquirer-a"
[fraud]
enabled = false
[journal]
dir = "{journal}"
[saf]
retry_interval_ms = 200
[store]
enabled = true
url = "{url}"
batch_max = {batch_max}
poll_interval_ms = 50
"#,
        journal = dir.join("journal").display(),
        url = db.url(),
    );
    std::fs::write(&path, toml).expect("config written");
    path
}

async fn after_kill_9_while_behind_each_transaction_is_stored_exactly_once(kind: Kind) {
    const CONNECTIONS: usize = 4;
    const PIPELINE: u32 = 8;
    const KILL_AFTER: usize = 1_500;
    let dir = fresh_journal_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    let Some(db) = Db::new(kind, &dir) else {
        return;
    };
    let sim = start_sim().await;
    let config = write_crash_config(&dir, sim.local_addr(), &db, 1);
    let (mut child, addr) = start_process(&config).await;

    let answered = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let (answered, enough) = (answered.clone(), enough.clone());
        tasks.push(tokio::spawn(async move {
            // The link signs on just after the banner: until then 91s.
            let mut t = Terminal::connect(addr).await;
            let tid = format!("STORE{c:03}");
            let mut stan = 1 + c as u32 * 100_000;
            loop {
                let first = stan;
                stan += PIPELINE;
                for s in first..stan {
                    let req = auth_from(Mti::FINANCIAL, s, PAN, 100, &tid);
                    let mut framed = (req.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&req);
                    if tokio::io::AsyncWriteExt::write_all(&mut t.stream, &framed)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                for _ in first..stan {
                    match timeout(GUARD, t.recv_or_closed()).await {
                        Ok(Some(_)) => {
                            if answered.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                                enough.notify_one();
                            }
                        }
                        _ => return,
                    }
                }
            }
        }));
    }
    timeout(GUARD * 3, enough.notified())
        .await
        .expect("load reached the kill point");
    // The kill must come mid-export: once the store has some of it. Another
    // process's database gives no signal, so look at it (SQLite's WAL, and
    // PostgreSQL: a reader does not disturb the writer).
    let exporting = timeout(GUARD, async {
        loop {
            if let Ok(p) = db.with_store(|s| s.export_position(NODE))
                && p > 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    exporting.expect("the exporter exported something before the kill");
    for t in tasks {
        timeout(GUARD, t)
            .await
            .expect("terminal stops")
            .expect("no panic");
    }

    let (before, journal_last) = journal_txns(&dir.join("journal"));
    let position = db
        .with_store(|s| s.export_position(NODE))
        .expect("position");
    println!(
        "at the kill: journal at record {journal_last}, store at {position}, {} transactions",
        before.len()
    );
    assert!(
        0 < position && position < journal_last,
        "the exporter was behind at the kill ({position} of {journal_last})"
    );

    // Restart, exporting in batches of up to 500 records: one record per
    // round trip to a PostgreSQL server on a busy machine would not catch
    // up within the stop's drain limit; what is checked is that nothing is
    // lost or doubled, not the speed. Recovery reverses what was left
    // open. Then a clean stop, which lets the exporter take everything the
    // journal made durable.
    let config = write_crash_config(&dir, sim.local_addr(), &db, 500);
    let (mut child, _) = start_process(&config).await;
    let pid = child.id().expect("pid") as i32;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = timeout(GUARD * 3, child.wait())
        .await
        .expect("stops in time")
        .expect("reaped");
    assert!(status.success(), "{status}");

    let (txns, journal_last) = journal_txns(&dir.join("journal"));
    assert!(txns.len() >= KILL_AFTER, "{} transactions", txns.len());
    let (position, stored, count) = db
        .with_store(|s| {
            Ok((
                s.export_position(NODE)?,
                s.transactions(NODE, 0, 10_000_000)?,
                s.count()?,
            ))
        })
        .expect("store");
    assert_eq!(position, journal_last);
    assert_eq!(count, txns.len() as u64);
    let ids: BTreeSet<u64> = stored.iter().map(|r| r.txn).collect();
    assert_eq!(ids.len(), stored.len(), "a transaction stored twice");
    assert_eq!(ids, txns.keys().copied().collect::<BTreeSet<_>>());
    for r in &stored {
        assert!(r.request.is_some(), "txn {}: no request fields", r.txn);
        assert_eq!(&r.response_code, &txns[&r.txn], "txn {}", r.txn);
    }
    assert_no_card_number(&db);
}
