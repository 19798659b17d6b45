//! The store and the exporter over real files and servers: a journal in
//! a temporary directory, and each test twice, on a SQLite database and
//! on a private PostgreSQL server's database (`pg_server`), with the same
//! assertions (`on_both!`).
//!
//! The PostgreSQL client must not run on a tokio worker thread (its own
//! runtime refuses to), so the async tests do their store work inside
//! `block_in_place`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::block_in_place;

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{
    Backend, ExportBatch, ExportSettings, Exporter, SafState, Store, TxnRow, TxnUpdate, parse_url,
};
use crate::switch::journal::{
    Durability, Journal, JournalConfig, Record, RequestData, SettlementFields,
};

#[path = "../../../tests/common/postgres.rs"]
mod pg_server;
use pg_server::PgServer;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    Postgres,
}

/// One test's database: a SQLite file in its directory, or a fresh
/// database on the shared PostgreSQL server (kept running while held).
struct Db {
    backend: Backend,
    _server: Option<Arc<PgServer>>,
}

impl Db {
    /// `None`: PostgreSQL missing and skipped (`SWITCHYARD_SKIP_POSTGRES`).
    fn new(kind: Kind, dir: &Path) -> Option<Db> {
        Some(match kind {
            Kind::Sqlite => Db {
                backend: Backend::Sqlite {
                    path: dir.join("data/store.db"),
                },
                _server: None,
            },
            Kind::Postgres => {
                let server = PgServer::shared()?;
                Db::postgres(&server.create_database(), Some(server))
            }
        })
    }

    fn postgres(url: &str, server: Option<Arc<PgServer>>) -> Db {
        Db {
            backend: parse_url(url).expect("a postgres url"),
            _server: server,
        }
    }

    /// Opens the store (and migrates it); failing loudly, where the
    /// switch's `open` would let a PostgreSQL store connect later.
    fn open(&self) -> Result<Box<dyn Store>, super::StoreError> {
        Ok(match &self.backend {
            Backend::Sqlite { path } => Box::new(SqliteStore::open(path)?),
            Backend::Postgres { url } => Box::new(PgStore::connect(url)?),
        })
    }

    fn store(&self) -> Box<dyn Store> {
        self.open().expect("store opens")
    }

    /// The names of the indexes on `transactions` (those the database
    /// makes for the primary key included), sorted.
    fn index_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.backend {
            Backend::Sqlite { path } => {
                let raw = rusqlite::Connection::open(path).expect("raw");
                let mut q = raw
                    .prepare(
                        "SELECT name FROM sqlite_master \
                         WHERE type = 'index' AND tbl_name = 'transactions'",
                    )
                    .expect("prepare");
                q.query_map([], |r| r.get(0))
                    .expect("query")
                    .collect::<Result<_, _>>()
                    .expect("names")
            }
            Backend::Postgres { url } => {
                let mut raw =
                    ::postgres::Client::connect(url.expose(), ::postgres::NoTls).expect("raw");
                raw.query(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'transactions'",
                    &[],
                )
                .expect("query")
                .iter()
                .map(|r| r.get(0))
                .collect()
            }
        };
        names.sort();
        names
    }

    /// Runs SQL on the database behind the store's back.
    fn execute(&self, sql: &str) {
        match &self.backend {
            Backend::Sqlite { path } => {
                let raw = rusqlite::Connection::open(path).expect("raw");
                raw.execute_batch(sql).expect("sql runs");
            }
            Backend::Postgres { url } => {
                let mut raw =
                    ::postgres::Client::connect(url.expose(), ::postgres::NoTls).expect("raw");
                raw.batch_execute(sql).expect("sql runs");
            }
        }
    }

    fn schema_version(&self) -> i64 {
        match &self.backend {
            Backend::Sqlite { path } => SqliteStore::open(path)
                .expect("store")
                .schema_version()
                .expect("version"),
            Backend::Postgres { url } => PgStore::connect(url)
                .expect("store")
                .schema_version()
                .expect("version"),
        }
    }
}

/// Each named test function, `fn NAME(kind: Kind)` (or `async fn`), run
/// as `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both {
    (async $($name:ident),* $(,)?) => {$(
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
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(super::Kind::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name(super::Kind::Postgres)
            }
        }
    )*};
}

on_both!(async exports_a_journal_across_segments_in_small_batches_and_resumes,
    a_business_day_reads_back_and_reports_to_the_cent,
    the_exporter_thread_applies_retention_at_start,
    a_store_that_lost_commits_is_exported_again_from_where_it_is,
    the_thread_follows_the_watermark_while_the_journal_grows,
    full_batches_go_at_once_and_the_stop_drains_without_the_wait);
on_both!(
    a_store_ahead_of_the_journal_is_refused,
    retention_deletes_only_rows_older_than_configured,
    migrations_run_once_and_a_newer_schema_is_refused,
    a_version_1_store_is_migrated_and_keeps_its_rows,
    a_version_2_store_is_migrated_keeps_its_rows_and_takes_the_new_fields,
    a_batch_with_a_transaction_twice_is_merged_in_order,
    a_batch_from_another_position_writes_nothing,
    reconciliations_are_written_answered_and_read_back,
);

const NODE: &str = "node-t";
const DAY_MS: u64 = 86_400_000;

fn request_data(stan: u32) -> RequestData {
    RequestData {
        mti: 200,
        stan,
        terminal_id: "TERM0001".try_into().expect("fits"),
        merchant_id: "MERCHANT0000001".try_into().expect("fits"),
        rrn: format!("{stan:012}").as_str().try_into().expect("fits"),
        masked_pan: "476173******0010".try_into().expect("fits"),
        card_hash: [7; 16],
        amount_minor: 1000 + u64::from(stan),
        currency: 978,
        transmission_time: 1_201_123_456,
        route: 0,
        // Every seventh without any (an old record, or a request without
        // the fields).
        settlement: if stan % 7 == 0 {
            SettlementFields::default()
        } else {
            SettlementFields {
                processing_code: Some(if stan % 4 == 0 { 200_000 } else { 0 }),
                mcc: Some(5411),
                country: Some(276),
                pos_entry_mode: Some(51),
                batch: Some(
                    format!("B{:05}", stan % 3)
                        .as_str()
                        .try_into()
                        .expect("fits"),
                ),
            }
        },
    }
}

fn journal_config(dir: &Path) -> JournalConfig {
    JournalConfig {
        dir: dir.join("journal"),
        durability: Durability::Fsync,
        // Small segments: the exporter follows the journal across rolls.
        segment_bytes: 4096,
        retention: Duration::from_secs(3600),
        max_bytes: None,
        queue_capacity: 4096,
        syncs_in_flight: 4,
    }
}

fn settings(dir: &Path, batch_max: usize) -> ExportSettings {
    ExportSettings {
        journal_dir: dir.join("journal"),
        node_id: NODE.into(),
        batch_max,
        retention: Duration::from_millis(400 * DAY_MS),
        poll_interval: Duration::from_millis(5),
        acquirers: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(vec!["acquirer-a".into()])),
        retry_max: Duration::from_millis(100),
    }
}

/// Journals `n` transactions: every third times out and is reversed
/// (queued, sent, acknowledged), every fifth is declined 51, the rest
/// approved. Returns the last sequence number.
fn journal_traffic(journal: &Journal, n: u32, at_ms: u64) -> u64 {
    journal_traffic_from(journal, 1, n, at_ms)
}

/// [`journal_traffic`] for transactions `from..from + n`.
fn journal_traffic_from(journal: &Journal, from: u32, n: u32, at_ms: u64) -> u64 {
    let mut last = 0;
    for i in from..from + n {
        let txn = u64::from(i);
        let at = at_ms + u64::from(i);
        let mut records = vec![
            Record::Request {
                txn,
                at_ms: at,
                request: request_data(i),
                fraud_points: 3,
                fraud_reasons: 1,
                // Two business dates: 2026-12-01 and the day after.
                business_date: 20_788 + i % 2,
            },
            Record::Forwarded {
                txn,
                at_ms: at,
                acquirer: 0,
            },
        ];
        if i % 3 == 0 {
            records.extend([
                Record::Timeout { txn, at_ms: at + 1 },
                Record::ReversalQueued {
                    txn,
                    at_ms: at + 1,
                    acquirer: 0,
                    reason: *b"91",
                },
                Record::ReversalSent {
                    txn,
                    at_ms: at + 2,
                    attempt: 1,
                },
                Record::ReversalAcked {
                    txn,
                    at_ms: at + 3,
                    response_code: *b"00",
                },
            ]);
        } else {
            let rc = if i % 5 == 0 { *b"51" } else { *b"00" };
            records.push(Record::Response {
                txn,
                at_ms: at + 1,
                response_code: rc,
                approval_code: if rc == *b"00" {
                    "A1B2C3".try_into().expect("fits")
                } else {
                    Default::default()
                },
                stand_in: false,
                settlement_date: if i % 2 == 0 { 1201 } else { 0 },
            });
        }
        for r in records {
            last = journal.append(r).expect("journal takes it");
        }
    }
    last
}

async fn durable(journal: &Journal, seq: u64) {
    tokio::time::timeout(Duration::from_secs(10), journal.wait_durable(seq))
        .await
        .expect("in time")
        .expect("durable");
}

fn export_all(e: &mut Exporter, upto: u64) -> usize {
    let mut total = 0;
    loop {
        let n = e.step(upto).expect("step");
        if n == 0 {
            return total;
        }
        total += n;
    }
}

fn all_rows(store: &mut dyn Store) -> Vec<TxnRow> {
    store.transactions(NODE, 0, 100_000).expect("rows")
}

fn check_rows(rows: &[TxnRow], n: u32) {
    assert_eq!(rows.len(), n as usize);
    for (i, row) in (1..=n).zip(rows) {
        let req = row.request.as_ref().expect("request fields");
        assert_eq!(req.stan, i);
        assert_eq!(req.amount_minor, 1000 + u64::from(i));
        assert_eq!(req.masked_pan, "476173******0010");
        assert_eq!(req.route.as_deref(), Some("acquirer-a"));
        assert_eq!(row.acquirer.as_deref(), Some("acquirer-a"));
        let date = if i % 2 == 0 {
            "2026-12-01"
        } else {
            "2026-12-02"
        };
        assert_eq!(req.business_date.as_deref(), Some(date), "txn {i}");
        let de15 = (i % 3 != 0 && i % 2 == 0).then_some("1201");
        assert_eq!(row.settlement_date.as_deref(), de15, "txn {i}");
        if i % 7 == 0 {
            assert_eq!(
                (
                    &req.processing_code,
                    req.mcc,
                    req.country,
                    &req.pos_entry_mode,
                    &req.batch
                ),
                (&None, None, None, &None, &None),
                "txn {i}"
            );
        } else {
            let pc = if i % 4 == 0 { "200000" } else { "000000" };
            assert_eq!(req.processing_code.as_deref(), Some(pc), "txn {i}");
            assert_eq!((req.mcc, req.country), (Some(5411), Some(276)));
            assert_eq!(req.pos_entry_mode.as_deref(), Some("051"));
            let batch = format!("B{:05}", i % 3);
            assert_eq!(req.batch.as_deref(), Some(batch.as_str()), "txn {i}");
        }
        if i % 3 == 0 {
            assert_eq!(row.outcome.as_deref(), Some("timeout"), "txn {i}");
            assert_eq!(row.response_code.as_deref(), Some("91"));
            assert_eq!(row.reversal.state, Some(SafState::Acked), "txn {i}");
            assert_eq!(row.reversal.attempts, Some(1));
            assert_eq!(row.reversal.response_code.as_deref(), Some("00"));
        } else {
            let rc = if i % 5 == 0 { "51" } else { "00" };
            assert_eq!(row.outcome.as_deref(), Some("answered"));
            assert_eq!(row.response_code.as_deref(), Some(rc), "txn {i}");
            assert_eq!(row.reversal.state, None, "txn {i}");
        }
    }
}

async fn exports_a_journal_across_segments_in_small_batches_and_resumes(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let (journal, _) = Journal::open(&journal_config(dir.path())).expect("journal");
    let last = journal_traffic(&journal, 300, 1_000_000);
    durable(&journal, last).await;
    assert!(
        crate::switch::journal::segment::list_segments(&dir.path().join("journal"))
            .expect("segments")
            .len()
            > 3,
        "the journal rolled several segments"
    );

    block_in_place(|| {
        // Half of it, in batches of 7 records: a batch ends mid-transaction.
        let mut e = Exporter::new(settings(dir.path(), 7), db.store()).expect("exporter");
        assert_eq!(export_all(&mut e, last / 2), (last / 2) as usize);
        assert_eq!(e.position(), last / 2);
        drop(e);

        // A restart: from the committed position to the end.
        let mut e = Exporter::new(settings(dir.path(), 7), db.store()).expect("exporter");
        assert_eq!(e.position(), last / 2, "resumes where it committed");
        assert_eq!(export_all(&mut e, last), (last - last / 2) as usize);
        assert_eq!(e.gaps(), 0);
        let first = all_rows(e.store());
        check_rows(&first, 300);
        assert_eq!(e.store().count().expect("count"), 300);
        drop(e);

        // A commit lost after its rows were written (as if the position
        // had not moved): the records go again and change nothing.
        db.execute("UPDATE export_position SET seq = 10");
        let mut e = Exporter::new(settings(dir.path(), 50), db.store()).expect("exporter");
        assert_eq!(export_all(&mut e, last), (last - 10) as usize);
        assert_eq!(all_rows(e.store()), first, "exported twice, stored once");
    });
    journal.close();
}

/// `business_day` hands over one date's rows, all of them and only
/// them; the settlement report made of them nets to the cent what the
/// journal says was approved (refunds as credits, timeouts out).
async fn a_business_day_reads_back_and_reports_to_the_cent(kind: Kind) {
    use crate::switch::settlement::day::Day;
    use crate::switch::settlement::report::Report;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let (journal, _) = Journal::open(&journal_config(dir.path())).expect("journal");
    let n = 120;
    let last = journal_traffic(&journal, n, 1_000_000);
    durable(&journal, last).await;
    block_in_place(|| {
        let mut e = Exporter::new(settings(dir.path(), 64), db.store()).expect("exporter");
        export_all(&mut e, last);
        for (date, parity) in [("2026-12-01", 0), ("2026-12-02", 1)] {
            let mut stans = Vec::new();
            let rows = e
                .store()
                .business_day(date, &mut |r| {
                    stans.push(r.request.as_ref().map_or(0, |q| q.stan))
                })
                .expect("rows");
            let want: Vec<u32> = (1..=n).filter(|i| i % 2 == parity).collect();
            assert_eq!(stans, want, "{date}: its rows, in order");
            assert_eq!(rows, want.len() as u64);
            // journal_traffic: every third timed out, every fifth declined,
            // the rest approved; a fourth (not a seventh) a refund.
            let (mut count, mut net) = (0u64, 0i128);
            for i in want.iter().filter(|i| *i % 3 != 0 && *i % 5 != 0) {
                count += 1;
                let amount = i128::from(1000 + i);
                net += if i % 4 == 0 && i % 7 != 0 {
                    -amount
                } else {
                    amount
                };
            }
            let day = Day::load(e.store(), date).expect("day");
            let report = Report::of(&day);
            assert_eq!(report.totals.len(), 1);
            let t = &report.totals[0];
            assert_eq!(
                (t.currency, t.count, t.net_minor),
                (978, count, net),
                "{date}"
            );
            assert_eq!(report.incomplete, 0);
        }
        let mut none = 0;
        e.store()
            .business_day("2026-12-03", &mut |_| none += 1)
            .expect("no rows");
        assert_eq!(none, 0);
    });
    journal.close();
}

/// `[store] retention_days` in the running exporter: at its start (then
/// hourly) rows past it go, the others and the export position stay,
/// and exporting goes on.
async fn the_exporter_thread_applies_retention_at_start(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let now = crate::clock::unix_now_ms();
    let rows = [
        TxnUpdate::new(1_000_001, 1, now - 401 * DAY_MS),
        TxnUpdate::new(1_000_002, 2, now - 399 * DAY_MS),
        TxnUpdate::new(1_000_003, 3, now - 1000),
    ];
    block_in_place(|| {
        db.store()
            .apply(&ExportBatch {
                node_id: "another-node",
                rows: &rows,
                from: 0,
                position: 3,
            })
            .expect("rows")
    });
    let (journal, _) = Journal::open(&journal_config(dir.path())).expect("journal");
    let e =
        block_in_place(|| Exporter::new(settings(dir.path(), 16), db.store())).expect("exporter");
    let handle = e.spawn(journal.durable()).expect("thread");
    let last = journal_traffic(&journal, 5, now);
    let mut exported = handle.exported();
    tokio::time::timeout(Duration::from_secs(20), exported.wait_for(|&p| p >= last))
        .await
        .expect("exported in time")
        .expect("exporter running");
    block_in_place(|| {
        handle.stop();
        let mut store = db.store();
        let kept: Vec<u64> = store
            .transactions("another-node", 0, 10)
            .expect("rows")
            .iter()
            .map(|r| r.txn)
            .collect();
        assert_eq!(
            kept,
            [1_000_002, 1_000_003],
            "only the one past 400 days went"
        );
        assert_eq!(store.export_position("another-node").expect("position"), 3);
        check_rows(&all_rows(&mut *store), 5);
    });
    journal.close();
}

/// A database that lost acknowledged commits (a crash with asynchronous
/// commit, a failover), here all of them: the exporter's next batch finds
/// the position elsewhere, and it goes again from there.
async fn a_store_that_lost_commits_is_exported_again_from_where_it_is(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let (journal, _) = Journal::open(&journal_config(dir.path())).expect("journal");
    let first = journal_traffic(&journal, 80, 1_000_000);
    durable(&journal, first).await;
    let mut e =
        block_in_place(|| Exporter::new(settings(dir.path(), 50), db.store())).expect("exporter");
    block_in_place(|| assert_eq!(export_all(&mut e, first), first as usize));
    block_in_place(|| db.execute("DELETE FROM transactions; DELETE FROM export_position"));
    let last = journal_traffic_from(&journal, 81, 20, 2_000_000);
    durable(&journal, last).await;
    block_in_place(|| {
        export_all(&mut e, last);
        assert_eq!(e.position(), last);
        check_rows(&all_rows(e.store()), 100);
        assert_eq!(e.store().export_position(NODE).expect("position"), last);
        drop(e);
    });
    journal.close();
}

async fn the_thread_follows_the_watermark_while_the_journal_grows(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let (journal, _) = Journal::open(&journal_config(dir.path())).expect("journal");
    let mut e =
        block_in_place(|| Exporter::new(settings(dir.path(), 16), db.store())).expect("exporter");
    e.check_journal(0).expect("an empty store fits any journal");
    let handle = e.spawn(journal.durable()).expect("thread");
    let mut exported = handle.exported();
    let last = journal_traffic(&journal, 120, 5_000_000);
    tokio::time::timeout(Duration::from_secs(20), exported.wait_for(|&p| p >= last))
        .await
        .expect("caught up in time")
        .expect("exporter running");
    block_in_place(|| {
        handle.stop();
        check_rows(&all_rows(&mut *db.store()), 120);
    });
    journal.close();
}

/// The thread waits `poll_interval` only after a batch that reached the
/// watermark: a backlog of many full batches goes at once (here the wait
/// is a minute, the backlog 20-odd batches), and a stop drains what
/// became durable during the wait without waiting it out.
async fn full_batches_go_at_once_and_the_stop_drains_without_the_wait(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let (journal, _) = Journal::open(&journal_config(dir.path())).expect("journal");
    let first = journal_traffic(&journal, 100, 6_000_000);
    durable(&journal, first).await;
    assert!(
        first > 16 * 10,
        "a backlog of many batches: {first} records"
    );
    let mut slow = settings(dir.path(), 16);
    slow.poll_interval = Duration::from_secs(60);
    let e = block_in_place(|| Exporter::new(slow, db.store())).expect("exporter");
    let handle = e.spawn(journal.durable()).expect("thread");
    let mut exported = handle.exported();
    tokio::time::timeout(Duration::from_secs(20), exported.wait_for(|&p| p >= first))
        .await
        .expect("full batches exported one after the other, no poll wait between")
        .expect("exporter running");
    // Now caught up and waiting its minute: more becomes durable.
    let last = journal_traffic_from(&journal, 101, 10, 7_000_000);
    durable(&journal, last).await;
    block_in_place(|| {
        handle.stop();
        let mut store = db.store();
        assert_eq!(store.export_position(NODE).expect("position"), last);
        check_rows(&all_rows(&mut *store), 110);
    });
    journal.close();
}

fn a_store_ahead_of_the_journal_is_refused(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let mut store = db.store();
    store
        .apply(&ExportBatch {
            node_id: NODE,
            rows: &[],
            from: 0,
            position: 500,
        })
        .expect("position");
    let mut e = Exporter::new(settings(dir.path(), 10), store).expect("exporter");
    let err = e.check_journal(20).expect_err("journal behind the store");
    assert!(err.to_string().contains("up to 500"), "{err}");
    e.check_journal(500).expect("at the position is fine");
}

fn retention_deletes_only_rows_older_than_configured(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let mut store = db.store();
    let now = 1_000 * DAY_MS;
    // Ages in days: well past, just past, just inside, recent.
    let ages = [
        (1, 500 * DAY_MS),
        (2, 400 * DAY_MS + 1),
        (3, 400 * DAY_MS - 1),
        (4, DAY_MS),
    ];
    let rows: Vec<TxnUpdate> = ages
        .iter()
        .map(|&(txn, age)| TxnUpdate::new(txn, txn, now - age))
        .collect();
    store
        .apply(&ExportBatch {
            node_id: NODE,
            rows: &rows,
            from: 0,
            position: 4,
        })
        .expect("rows");
    let mut e = Exporter::new(settings(dir.path(), 10), store).expect("exporter");
    assert_eq!(e.retain(now).expect("retention"), 2);
    let left: Vec<u64> = all_rows(e.store()).iter().map(|r| r.txn).collect();
    assert_eq!(left, [3, 4]);
    assert_eq!(e.retain(now).expect("again"), 0, "nothing else goes");
    assert_eq!(e.store().export_position(NODE).expect("position"), 4);
}

fn migrations_run_once_and_a_newer_schema_is_refused(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let latest = super::schema::latest(super::schema::SQLITE);
    assert_eq!(db.schema_version(), latest);
    drop(db.store());
    assert_eq!(db.schema_version(), latest, "reopened: nothing to migrate");
    db.execute("INSERT INTO schema_version (version, description) VALUES (99, 'future')");
    let err = db.open().err().expect("refused");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

/// A store made by the first release (schema 1, a row in it) gets the
/// business date and DE15 columns at open; its rows have none.
fn a_version_1_store_is_migrated_and_keeps_its_rows(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let (v1, version_table) = match kind {
        Kind::Sqlite => (
            super::schema::SQLITE[0].sql,
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL);",
        ),
        Kind::Postgres => (
            super::schema::POSTGRES[0].sql,
            "CREATE TABLE schema_version (version BIGINT PRIMARY KEY, description TEXT NOT NULL);",
        ),
    };
    if let Backend::Sqlite { path } = &db.backend {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
    }
    db.execute(&format!(
        "{version_table} {v1} INSERT INTO schema_version VALUES (1, 'v1'); \
         INSERT INTO transactions (node_id, txn_id, first_at_ms, updated_at_ms, last_seq, rrn) \
         VALUES ('{NODE}', 1, 5, 5, 1, 'R1');"
    ));
    // (Db::schema_version would open the store, and so migrate it.)
    let mut store = db.store();
    assert_eq!(
        db.schema_version(),
        super::schema::latest(super::schema::SQLITE)
    );
    let row = store
        .transaction(NODE, 1)
        .expect("read")
        .expect("the old row");
    assert_eq!(row.settlement_date, None);
    assert_eq!(row.first_at_ms, 5);
    // Version 5 dropped the lookups no query of the switch reads; what
    // settlement and retention read stays.
    let indexes = db.index_names();
    for gone in ["transactions_rrn", "transactions_terminal"] {
        assert!(!indexes.iter().any(|n| n == gone), "{gone} in {indexes:?}");
    }
    for kept in ["transactions_business_date", "transactions_first_at"] {
        assert!(
            indexes.iter().any(|n| n == kept),
            "{kept} not in {indexes:?}"
        );
    }
    // An index the operator makes again by hand (README.md) outlives
    // the next start: the migrations that ran never run again.
    drop(store);
    db.execute("CREATE INDEX transactions_rrn ON transactions (rrn)");
    drop(db.store());
    assert!(
        db.index_names().iter().any(|n| n == "transactions_rrn"),
        "the operator's index is kept"
    );
}

/// A store at schema 2 (business dates, the release before settlement
/// kept DE3, DE18, DE19, DE22 and the batch) gets their columns at open:
/// its rows read with none, and an update of such a row fills them.
fn a_version_2_store_is_migrated_keeps_its_rows_and_takes_the_new_fields(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let (migrations, version_table) = match kind {
        Kind::Sqlite => (
            super::schema::SQLITE,
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL);",
        ),
        Kind::Postgres => (
            super::schema::POSTGRES,
            "CREATE TABLE schema_version (version BIGINT PRIMARY KEY, description TEXT NOT NULL);",
        ),
    };
    if let Backend::Sqlite { path } = &db.backend {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
    }
    let v2: String = migrations
        .iter()
        .filter(|m| m.version <= 2)
        .map(|m| m.sql)
        .collect();
    db.execute(&format!(
        "{version_table} {v2} INSERT INTO schema_version VALUES (1, 'v1'), (2, 'v2'); \
         INSERT INTO transactions (node_id, txn_id, first_at_ms, updated_at_ms, last_seq, \
             request_at_ms, rrn, amount_minor, business_date) \
         VALUES ('{NODE}', 1, 5, 5, 1, 5, 'R1', 1000, '2026-12-01');"
    ));
    let mut store = db.store();
    assert_eq!(
        db.schema_version(),
        super::schema::latest(super::schema::SQLITE)
    );
    let row = store
        .transaction(NODE, 1)
        .expect("read")
        .expect("the old row");
    let req = row.request.as_ref().expect("request fields");
    assert_eq!(req.business_date.as_deref(), Some("2026-12-01"));
    assert_eq!(
        (
            &req.processing_code,
            req.mcc,
            req.country,
            &req.pos_entry_mode,
            &req.batch
        ),
        (&None, None, None, &None, &None)
    );
    // The same transaction's request again, as the exporter would send it.
    let mut update = full_rows(1, 1).remove(0);
    update.last_seq = 2;
    store
        .apply(&ExportBatch {
            node_id: NODE,
            rows: &[update],
            from: 0,
            position: 2,
        })
        .expect("update");
    let row = store.transaction(NODE, 1).expect("read").expect("the row");
    let req = row.request.as_ref().expect("request fields");
    assert_eq!(req.processing_code.as_deref(), Some("000000"));
    assert_eq!((req.mcc, req.country), (Some(5411), Some(840)));
    assert_eq!(req.pos_entry_mode.as_deref(), Some("051"));
    assert_eq!(req.batch.as_deref(), Some("000042"));
    assert_eq!(row.first_at_ms, 5, "kept its bounds");
}

/// A batch that does not follow the store's position writes nothing and
/// says where the store is; the exporter then goes again from there.
fn a_batch_from_another_position_writes_nothing(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let mut store = db.store();
    let rows = [TxnUpdate::new(1, 1, 1_000)];
    let batch = |from, position| ExportBatch {
        node_id: NODE,
        rows: &rows,
        from,
        position,
    };
    let err = store.apply(&batch(5, 9)).expect_err("no position yet");
    assert!(
        matches!(
            err,
            super::StoreError::PositionMoved {
                expected: 5,
                found: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.count().expect("count"), 0, "nothing written");
    store.apply(&batch(0, 9)).expect("from none");
    let err = store.apply(&batch(4, 12)).expect_err("not at 4");
    assert!(
        matches!(
            err,
            super::StoreError::PositionMoved {
                expected: 4,
                found: 9,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.export_position(NODE).expect("position"), 9);
    store.apply(&batch(9, 12)).expect("from 9");
    assert_eq!(store.export_position(NODE).expect("position"), 12);
}

/// The trait takes any rows, not only the exporter's one per
/// transaction: the later update of a transaction wins field by field,
/// as applied one after the other.
fn a_batch_with_a_transaction_twice_is_merged_in_order(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let mut store = db.store();
    let mut first = TxnUpdate::new(5, 1, 1_000);
    first.reversal.state = Some(SafState::Queued);
    first.reversal.attempts = Some(0);
    let mut second = TxnUpdate::new(5, 3, 900);
    second.reversal.state = Some(SafState::Acked);
    let other = TxnUpdate::new(6, 2, 950);
    store
        .apply(&ExportBatch {
            node_id: NODE,
            rows: &[first, other, second],
            from: 0,
            position: 3,
        })
        .expect("rows");
    let rows = all_rows(&mut *store);
    assert_eq!(rows.iter().map(|r| r.txn).collect::<Vec<_>>(), [5, 6]);
    let r = &rows[0];
    assert_eq!(r.reversal.state, Some(SafState::Acked));
    assert_eq!(r.reversal.attempts, Some(0), "kept from the first");
    assert_eq!(
        (r.first_at_ms, r.updated_at_ms, r.last_seq),
        (900, 1_000, 3)
    );
    assert_eq!(store.export_position(NODE).expect("position"), 3);
}

/// The write method kept for measurements stores what the default does:
/// new rows, updates, and a batch with a transaction twice.
#[test]
fn postgres_copy_method_stores_what_unnest_does() {
    use super::postgres::Method;
    let Some(server) = PgServer::shared() else {
        return;
    };
    let mut stored = Vec::new();
    for method in [Method::Unnest, Method::Copy] {
        let db = Db::postgres(&server.create_database(), None);
        let Backend::Postgres { url } = &db.backend else {
            unreachable!()
        };
        let mut store = PgStore::connect(url).expect("store");
        store.set_method(method);
        let mut rows = full_rows(1, 50);
        let mut again = TxnUpdate::new(7, 200, 5);
        again.reversal.state = Some(SafState::Expired);
        rows.push(again);
        for (from, position, batch) in [(0, 10, &rows[..30]), (10, 20, &rows[20..])] {
            store
                .apply(&ExportBatch {
                    node_id: NODE,
                    rows: batch,
                    from,
                    position,
                })
                .expect("apply");
        }
        assert_eq!(store.export_position(NODE).expect("position"), 20);
        stored.push(all_rows(&mut store));
    }
    assert_eq!(stored[0].len(), 50);
    assert_eq!(stored[0][6].reversal.state, Some(SafState::Expired));
    assert_eq!(stored[0][6].first_at_ms, 5);
    assert_eq!(stored[0], stored[1]);
}

/// PostgreSQL down at start, and again while exporting: the exporter
/// waits and retries, exports nothing meanwhile, and catches up once the
/// server is back, each transaction once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_at_start_and_later_costs_lag_only() {
    let Some(mut server) = PgServer::start(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::postgres(&server.create_database(), None);
    let Backend::Postgres { url } = &db.backend else {
        unreachable!()
    };
    let (journal, _) = Journal::open(&journal_config(dir.path())).expect("journal");
    server.stop();
    let mut e = block_in_place(|| {
        let store = super::open(&db.backend).expect("no error: connects later");
        Exporter::new(settings(dir.path(), 16), store).expect("no error: reads it later")
    });
    assert!(!e.resumed());
    e.check_journal(0)
        .expect("checked once the position is read");
    let handle = e.spawn(journal.durable()).expect("thread");
    let mut exported = handle.exported();
    let last = journal_traffic(&journal, 60, 7_000_000);
    durable(&journal, last).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*exported.borrow(), 0, "nothing exported without a server");

    server.start_again();
    tokio::time::timeout(Duration::from_secs(20), exported.wait_for(|&p| p >= last))
        .await
        .expect("caught up once the server is back")
        .expect("exporter running");

    server.stop();
    let more = journal_traffic_from(&journal, 61, 40, 8_000_000);
    durable(&journal, more).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*exported.borrow(), last, "nothing exported while down");
    server.start_again();
    tokio::time::timeout(Duration::from_secs(20), exported.wait_for(|&p| p >= more))
        .await
        .expect("caught up again")
        .expect("exporter running");
    block_in_place(|| {
        handle.stop();
        let mut store = PgStore::connect(url).expect("store");
        check_rows(&all_rows(&mut store), 100);
    });
    journal.close();
}

/// Rows as the exporter makes them at full load: a request, its forward
/// and its answer (new rows), then the same again (updates).
fn full_rows(from: u64, n: u64) -> Vec<TxnUpdate> {
    (from..from + n)
        .map(|txn| {
            let mut t = TxnUpdate::new(txn, txn * 3, 1_000_000 + txn);
            let r = request_data(txn as u32);
            t.request = Some(super::RequestFields {
                at_ms: 1_000_000 + txn,
                mti: r.mti,
                stan: r.stan,
                terminal_id: r.terminal_id.to_string(),
                merchant_id: r.merchant_id.to_string(),
                rrn: r.rrn.to_string(),
                masked_pan: r.masked_pan.to_string(),
                card_hash: r.card_hash,
                amount_minor: r.amount_minor,
                currency: r.currency,
                transmission_time: r.transmission_time,
                route: Some("acquirer-a".into()),
                fraud_points: 3,
                fraud_reasons: 1,
                business_date: Some("2026-12-01".into()),
                processing_code: Some("000000".into()),
                mcc: Some(5411),
                country: Some(840),
                pos_entry_mode: Some("051".into()),
                batch: Some("000042".into()),
            });
            t.forwarded = Some((1_000_000 + txn, "acquirer-a".into()));
            t.outcome = Some(super::Outcome::Answered {
                at_ms: 1_000_001 + txn,
                response_code: "00".into(),
                approval_code: "A1B2C3".into(),
                stand_in: false,
                settlement_date: Some("1201".into()),
            });
            t
        })
        .collect()
}

/// How fast `apply` writes, by batch size and PostgreSQL write method,
/// interleaved so that a busy machine's drift hits all alike: `cargo
/// test --lib switch::store::tests::apply_rate -- --ignored --nocapture`.
/// A private server with fsync on.
#[test]
#[ignore = "a measurement, not a test"]
fn apply_rate() {
    use super::postgres::Method;
    let Some(server) = PgServer::start(&["fsync=on"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = Db::new(Kind::Sqlite, dir.path()).expect("sqlite");
    let pg = Db::postgres(&server.create_database(), None);
    let Backend::Postgres { url } = &pg.backend else {
        unreachable!()
    };
    let mut next = 1;
    for round in 1..=3 {
        for (batch, batches) in [(1u64, 300u64), (100, 50), (2_000, 10), (20_000, 3)] {
            for method in [None, Some(Method::Unnest), Some(Method::Copy)] {
                let mut store: Box<dyn Store> = match method {
                    None => sqlite.store(),
                    Some(m) => {
                        let mut s = PgStore::connect(url).expect("pg");
                        s.set_method(m);
                        Box::new(s)
                    }
                };
                let all = full_rows(next, batch * batches);
                next += batch * batches;
                let mut at = store.export_position(NODE).expect("position");
                for pass in ["insert", "update"] {
                    let started = std::time::Instant::now();
                    for rows in all.chunks(batch as usize) {
                        store
                            .apply(&ExportBatch {
                                node_id: NODE,
                                rows,
                                from: at,
                                position: at + 1,
                            })
                            .expect("apply");
                        at += 1;
                    }
                    let s = started.elapsed().as_secs_f64();
                    println!(
                        "round {round} {:<14} batch {batch:>6} {pass}: {:>7.0} rows/s, {:>9.1} \
                         us a batch",
                        method.map_or("sqlite".into(), |m| format!("pg {m:?}")),
                        all.len() as f64 / s,
                        s * 1e6 / batches as f64
                    );
                }
            }
        }
    }
}

fn reconciliations_are_written_answered_and_read_back(kind: Kind) {
    use super::Reconciliation;
    use crate::switch::settlement::batch::Totals;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(db) = Db::new(kind, dir.path()) else {
        return;
    };
    let mut store = db.store();
    let row = |acquirer: &str, date: &str, currency: u16| Reconciliation {
        node_id: NODE.into(),
        acquirer: acquirer.into(),
        business_date: date.into(),
        currency,
        stan: 123_456,
        totals: Totals {
            credits: 1,
            credits_amount: 250,
            credit_reversals: 0,
            credit_reversals_amount: 0,
            debits: 7,
            debits_amount: 9_000_000_000_000,
            debit_reversals: 2,
            debit_reversals_amount: 3000,
        },
        authorizations: 4,
        queued_at_ms: 1_764_590_400_000,
        answered_at_ms: None,
        response_code: None,
        balance: None,
    };
    let a = row("acq-a", "2026-12-01", 840);
    let b = row("acq-b", "2026-12-01", 978);
    let c = row("acq-a", "2026-12-02", 840);
    for r in [&a, &b, &c] {
        store.save_reconciliation(r).expect("saved");
    }
    assert_eq!(
        store
            .reconciliations(NODE, Some("2026-12-01"), 10)
            .expect("read"),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        store.reconciliations(NODE, None, 10).expect("read").len(),
        3
    );
    assert_eq!(store.reconciliations(NODE, None, 1).expect("read").len(), 1);
    // The host's answer completes the row: no longer owed.
    let answered = Reconciliation {
        answered_at_ms: Some(1_764_590_401_000),
        response_code: Some("00".into()),
        balance: Some(2),
        ..b.clone()
    };
    store.save_reconciliation(&answered).expect("answered");
    assert_eq!(
        store
            .reconciliations(NODE, Some("2026-12-01"), 10)
            .expect("read"),
        vec![a.clone(), answered]
    );
    assert_eq!(
        store.reconciliations(NODE, None, 10).expect("read"),
        vec![a, c]
    );
    assert!(
        store
            .reconciliations("another-node", None, 10)
            .expect("read")
            .is_empty()
    );
}
