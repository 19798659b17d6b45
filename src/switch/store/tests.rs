//! The store and the exporter over real files: a SQLite database and a
//! journal in a temporary directory.

use std::path::Path;
use std::time::Duration;

use super::sqlite::SqliteStore;
use super::{ExportBatch, ExportSettings, Exporter, SafState, Store, TxnRow, TxnUpdate};
use crate::switch::journal::{Durability, Journal, JournalConfig, Record, RequestData};

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
    }
}

fn settings(dir: &Path, batch_max: usize) -> ExportSettings {
    ExportSettings {
        journal_dir: dir.join("journal"),
        node_id: NODE.into(),
        batch_max,
        retention: Duration::from_millis(400 * DAY_MS),
        poll_interval: Duration::from_millis(5),
        acquirers: vec!["acquirer-a".into()],
    }
}

/// Journals `n` transactions: every third times out and is reversed
/// (queued, sent, acknowledged), every fifth is declined 51, the rest
/// approved. Returns the last sequence number.
fn journal_traffic(journal: &Journal, n: u32, at_ms: u64) -> u64 {
    let mut last = 0;
    for i in 1..=n {
        let txn = u64::from(i);
        let at = at_ms + u64::from(i);
        let mut records = vec![
            Record::Request {
                txn,
                at_ms: at,
                request: request_data(i),
                fraud_points: 3,
                fraud_reasons: 1,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_a_journal_across_segments_in_small_batches_and_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("data/store.db");
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

    // Half of it, in batches of 7 records: a batch ends mid-transaction.
    let store = Box::new(SqliteStore::open(&db).expect("store"));
    let mut e = Exporter::new(settings(dir.path(), 7), store).expect("exporter");
    assert_eq!(export_all(&mut e, last / 2), (last / 2) as usize);
    assert_eq!(e.position(), last / 2);
    drop(e);

    // A restart: from the committed position to the end.
    let store = Box::new(SqliteStore::open(&db).expect("reopened"));
    let mut e = Exporter::new(settings(dir.path(), 7), store).expect("exporter");
    assert_eq!(e.position(), last / 2, "resumes where it committed");
    assert_eq!(export_all(&mut e, last), (last - last / 2) as usize);
    assert_eq!(e.gaps(), 0);
    let first = all_rows(e.store());
    check_rows(&first, 300);
    assert_eq!(e.store().count().expect("count"), 300);

    // A commit lost after its rows were written (as if the position had
    // not moved): the records go again and change nothing.
    let raw = rusqlite::Connection::open(&db).expect("raw");
    raw.execute("UPDATE export_position SET seq = 10", [])
        .expect("rewind");
    drop(raw);
    let store = Box::new(SqliteStore::open(&db).expect("reopened"));
    let mut e = Exporter::new(settings(dir.path(), 50), store).expect("exporter");
    assert_eq!(export_all(&mut e, last), (last - 10) as usize);
    assert_eq!(all_rows(e.store()), first, "exported twice, stored once");
    journal.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thread_follows_the_watermark_while_the_journal_grows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let (journal, _) = Journal::open(&journal_config(dir.path())).expect("journal");
    let store = Box::new(SqliteStore::open(&db).expect("store"));
    let e = Exporter::new(settings(dir.path(), 16), store).expect("exporter");
    e.check_journal(0).expect("an empty store fits any journal");
    let handle = e.spawn(journal.durable()).expect("thread");
    let mut exported = handle.exported();
    let last = journal_traffic(&journal, 120, 5_000_000);
    tokio::time::timeout(Duration::from_secs(20), exported.wait_for(|&p| p >= last))
        .await
        .expect("caught up in time")
        .expect("exporter running");
    handle.stop();
    let mut store = SqliteStore::open(&db).expect("reopened");
    check_rows(&all_rows(&mut store), 120);
    journal.close();
}

#[test]
fn a_store_ahead_of_the_journal_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = SqliteStore::open(&dir.path().join("s.db")).expect("store");
    store
        .apply(&ExportBatch {
            node_id: NODE,
            rows: &[],
            position: 500,
        })
        .expect("position");
    let e = Exporter::new(settings(dir.path(), 10), Box::new(store)).expect("exporter");
    let err = e.check_journal(20).expect_err("journal behind the store");
    assert!(err.to_string().contains("up to 500"), "{err}");
    e.check_journal(500).expect("at the position is fine");
}

#[test]
fn retention_deletes_only_rows_older_than_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = SqliteStore::open(&dir.path().join("s.db")).expect("store");
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
            position: 4,
        })
        .expect("rows");
    let mut e = Exporter::new(settings(dir.path(), 10), Box::new(store)).expect("exporter");
    assert_eq!(e.retain(now).expect("retention"), 2);
    let left: Vec<u64> = all_rows(e.store()).iter().map(|r| r.txn).collect();
    assert_eq!(left, [3, 4]);
    assert_eq!(e.retain(now).expect("again"), 0, "nothing else goes");
    assert_eq!(e.store().export_position(NODE).expect("position"), 4);
}

#[test]
fn migrations_run_once_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path).expect("store");
    assert_eq!(s.schema_version().expect("version"), 1);
    drop(s);
    let s = SqliteStore::open(&path).expect("reopened: nothing to migrate");
    assert_eq!(s.schema_version().expect("version"), 1);
    drop(s);
    let raw = rusqlite::Connection::open(&path).expect("raw");
    raw.execute(
        "INSERT INTO schema_version (version, description) VALUES (99, 'future')",
        [],
    )
    .expect("future version");
    drop(raw);
    let err = SqliteStore::open(&path).err().expect("refused");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}
