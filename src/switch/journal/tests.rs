//! Journal tests on a real disk (temporary directories).

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arrayvec::ArrayString;

use super::segment::{MAGIC, list_segments, segment_name};
use super::*;
use crate::switch::journal::{Durability, JournalConfig};

fn config(dir: &Path) -> JournalConfig {
    JournalConfig {
        dir: dir.to_owned(),
        durability: Durability::Fsync,
        segment_bytes: 64 * 1024 * 1024,
        retention: Duration::from_secs(7 * 24 * 3600),
        max_bytes: None,
        queue_capacity: 1024,
        syncs_in_flight: 4,
    }
}

fn s<const N: usize>(text: &str) -> ArrayString<N> {
    ArrayString::from(text).expect("test string fits")
}

fn request(txn: u64) -> Record {
    Record::Request {
        txn,
        at_ms: 1_795_592_096_123 + txn,
        request: RequestData {
            mti: 200,
            stan: (txn % 1_000_000) as u32,
            terminal_id: s("TERM0001"),
            merchant_id: s("MERCHANT000001"),
            rrn: s("612345678901"),
            masked_pan: s("411111*1111"),
            card_hash: [7; 16],
            amount_minor: 12_345,
            currency: 978,
            transmission_time: 1_125_073_456,
            route: 1,
            settlement: SettlementFields {
                processing_code: Some(200_000),
                mcc: Some(5411),
                country: Some(276),
                pos_entry_mode: Some(51),
                batch: Some(s("000123")),
            },
        },
        fraud_points: 30,
        fraud_reasons: 0b101,
        business_date: 20_788,
    }
}

fn every_kind(txn: u64) -> Vec<Record> {
    let at_ms = 1_795_592_096_000;
    vec![
        request(txn),
        Record::Forwarded {
            txn,
            at_ms,
            acquirer: 2,
        },
        Record::Response {
            txn,
            at_ms,
            response_code: *b"00",
            approval_code: s("A1B2C3"),
            stand_in: true,
            settlement_date: 1202,
        },
        Record::Timeout { txn, at_ms },
        Record::ReversalQueued {
            txn,
            at_ms,
            acquirer: 2,
            reason: *b"68",
        },
        Record::ReversalSent {
            txn,
            at_ms,
            attempt: 3,
        },
        Record::ReversalAcked {
            txn,
            at_ms,
            response_code: *b"00",
        },
        Record::ReversalExpired { txn, at_ms },
        Record::AdviceQueued {
            txn,
            at_ms,
            acquirer: 1,
            mti: 220,
        },
        Record::AdviceSent {
            txn,
            at_ms,
            attempt: 1,
        },
        Record::AdviceAcked {
            txn,
            at_ms,
            response_code: *b"00",
        },
        Record::AdviceExpired { txn, at_ms },
        Record::Cutover {
            at_ms,
            business_date: 20_789,
            reason: CutoverReason::Host { acquirer: 1 },
        },
        Record::Cutover {
            at_ms,
            business_date: 20_790,
            reason: CutoverReason::Operator,
        },
    ]
}

/// Bytes of a `Request` body's settlement fields (DE3, DE18, DE19, DE22,
/// the batch's length byte and text).
fn settlement_len(record: &Record) -> usize {
    match record {
        Record::Request { request, .. } => {
            4 + 2 + 2 + 2 + 1 + request.settlement.batch.map_or(0, |b| b.len())
        }
        _ => 0,
    }
}

/// The lengths of `record`'s body as written before its kind gained
/// fields at the end (business date, then the settlement fields; DE15):
/// shorter bodies of those kinds are the old formats and read with the
/// fields at 0 or none.
fn old_format_lens(record: &Record, len: usize) -> Vec<usize> {
    match record {
        Record::Request { .. } => {
            let v2 = len - settlement_len(record);
            vec![v2, v2 - 4]
        }
        Record::Response { .. } => vec![len - 2],
        _ => Vec::new(),
    }
}

fn read_back(dir: &Path) -> Vec<(u64, Record)> {
    read_all(dir)
        .expect("journal dir readable")
        .collect::<Result<Vec<_>, _>>()
        .expect("journal undamaged")
}

fn only_segment(dir: &Path) -> PathBuf {
    let segs = list_segments(dir).expect("list");
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs[0].path.clone()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn every_kind_encodes_and_decodes() {
    for record in every_kind(42) {
        let mut buf = Vec::new();
        record.encode(&mut buf);
        assert_eq!(Record::decode(&buf), Ok(record.clone()));
        // Any cut is detected, never misread, but at the end of a body of
        // the older, shorter format (the segment frame's length and CRC
        // catch a cut record before it is decoded).
        let old = old_format_lens(&record, buf.len());
        for cut in (0..buf.len()).filter(|c| !old.contains(c)) {
            assert!(
                Record::decode(&buf[..cut]).is_err(),
                "{record:?} cut at {cut}"
            );
        }
    }
}

#[test]
fn records_written_before_business_dates_still_read() {
    let mut new = request(3);
    let mut buf = Vec::new();
    new.encode(&mut buf);
    // The format before settlement fields: the same body without them.
    buf.truncate(buf.len() - settlement_len(&new));
    if let Record::Request { request, .. } = &mut new {
        request.settlement = SettlementFields::default();
    }
    assert_eq!(Record::decode(&buf), Ok(new.clone()));
    // The first format: without the business date too.
    buf.truncate(buf.len() - 4);
    if let Record::Request { business_date, .. } = &mut new {
        *business_date = 0;
    }
    assert_eq!(Record::decode(&buf), Ok(new));
    // Absent fields and an empty batch round-trip as none.
    let mut bare = request(4);
    if let Record::Request { request, .. } = &mut bare {
        request.settlement = SettlementFields::default();
    }
    let mut buf = Vec::new();
    bare.encode(&mut buf);
    assert_eq!(Record::decode(&buf), Ok(bare));
    let mut answer = Record::Response {
        txn: 3,
        at_ms: 5,
        response_code: *b"00",
        approval_code: s("A1B2C3"),
        stand_in: false,
        settlement_date: 1202,
    };
    let mut buf = Vec::new();
    answer.encode(&mut buf);
    buf.truncate(buf.len() - 2);
    if let Record::Response {
        settlement_date, ..
    } = &mut answer
    {
        *settlement_date = 0;
    }
    assert_eq!(Record::decode(&buf), Ok(answer));
    // A cutover of an unknown reason is refused, not guessed at.
    let mut buf = Vec::new();
    Record::Cutover {
        at_ms: 1,
        business_date: 2,
        reason: CutoverReason::Scheduled,
    }
    .encode(&mut buf);
    let reason_at = buf.len() - 3;
    buf[reason_at] = 9;
    assert_eq!(Record::decode(&buf), Err(record::DecodeError::BadReason(9)));
}

/// A journal written by the releases before (requests without the
/// settlement fields, the first ones without a business date either)
/// still opens: recovery finds its open work with the request data it
/// needs, and the new writer appends after it.
#[test]
fn a_journal_of_older_formats_still_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = |record: &Record, cut: usize| {
        let mut b = Vec::new();
        record.encode(&mut b);
        b.truncate(b.len() - cut);
        b
    };
    let frame = |seq: u64, body: &[u8], out: &mut Vec<u8>| {
        let len = (8 + body.len()) as u32;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len.to_le_bytes());
        crc.update(&seq.to_le_bytes());
        crc.update(body);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(body);
    };
    let v2 = request(1);
    let v1 = request(2);
    let mut file = MAGIC.to_vec();
    let forwarded = |txn| Record::Forwarded {
        txn,
        at_ms: 1,
        acquirer: 1,
    };
    frame(1, &body(&v2, settlement_len(&v2)), &mut file);
    frame(2, &body(&forwarded(1), 0), &mut file);
    frame(3, &body(&v1, settlement_len(&v1) + 4), &mut file);
    frame(4, &body(&forwarded(2), 0), &mut file);
    fs::write(dir.path().join(segment_name(1)), &file).expect("old segment");

    let (journal, rec) = Journal::open(&config(dir.path())).expect("the old journal opens");
    assert_eq!(rec.next_seq, 5);
    assert!(
        rec.torn.is_none() && rec.corrupt.is_empty(),
        "{:?}",
        rec.torn
    );
    let open: Vec<_> = rec
        .unfinished
        .iter()
        .map(|u| {
            (
                u.txn,
                u.request.stan,
                u.request.amount_minor,
                u.request.settlement,
            )
        })
        .collect();
    assert_eq!(
        open,
        vec![
            (1, 1, 12_345, SettlementFields::default()),
            (2, 2, 12_345, SettlementFields::default()),
        ]
    );
    let seq = journal
        .append(request(3))
        .expect("appends after the old records");
    assert_eq!(seq, 5);
    block_on(journal.wait_durable(seq)).expect("durable");
    journal.close();
    let all = read_back(dir.path());
    assert_eq!(all.len(), 5);
    assert_eq!(all[4].1, request(3), "the new format, fields and all");
}

#[test]
fn recovery_rebuilds_the_terminal_batch_totals() {
    use crate::switch::settlement::batch::{CloseKind, Totals};
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = Journal::open(&config(dir.path())).expect("open");
    let answer = |txn: u64| Record::Response {
        txn,
        at_ms: 1_795_592_096_500,
        response_code: *b"00",
        approval_code: s("A00001"),
        stand_in: txn == 2,
        settlement_date: 0,
    };
    // Two refunds approved (one in stand-in), one timed out, one in
    // flight when the process stopped.
    for r in [
        request(1),
        answer(1),
        request(2),
        answer(2),
        request(3),
        Record::Timeout {
            txn: 3,
            at_ms: 1_795_592_096_600,
        },
        request(4),
    ] {
        journal.append(r).expect("append");
    }
    journal.shutdown();
    let (journal, recovery) = Journal::open(&config(dir.path())).expect("reopen");
    let ledger = &recovery.batches;
    assert_eq!(ledger.open_batches(), 1);
    let key = (s("TERM0001"), s("000123"));
    let two_refunds = Totals {
        credits: 2,
        credits_amount: 2 * 12_345,
        ..Default::default()
    };
    let v = ledger
        .compare(&key, 978, CloseKind::Close, &two_refunds)
        .expect("one currency");
    assert!(v.in_balance, "{v:?}");
    // The request in flight at the stop gets no answer from this process;
    // a stray one is not counted.
    ledger.observe(&answer(4));
    let v = ledger
        .compare(&key, 978, CloseKind::Close, &two_refunds)
        .expect("one currency");
    assert_eq!(v.switch, two_refunds);
    journal.shutdown();
}

#[test]
fn recovery_restores_the_last_cutover_and_the_business_date() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, recovery) = Journal::open(&config(dir.path())).expect("open");
    assert_eq!(recovery.last_cutover, None);
    let cutover = |date: u32, reason| Record::Cutover {
        at_ms: 1_795_592_096_000,
        business_date: date,
        reason,
    };
    journal.append(request(1)).expect("append");
    journal
        .append(cutover(20_789, CutoverReason::Scheduled))
        .expect("append");
    journal.append(request(2)).expect("append");
    journal
        .append(cutover(20_790, CutoverReason::Host { acquirer: 0 }))
        .expect("append");
    journal.append(request(3)).expect("append");
    journal.shutdown();
    let (journal, recovery) = Journal::open(&config(dir.path())).expect("reopen");
    let last = recovery.last_cutover.expect("a cutover on record");
    assert_eq!(
        (last.seq, last.business_date, last.reason),
        (4, 20_790, CutoverReason::Host { acquirer: 0 })
    );
    // A cutover is no transaction: nothing open, ids continue.
    assert_eq!(recovery.next_txn, 4);
    assert!(recovery.unfinished.is_empty() && recovery.saf.is_empty());
    let day = crate::switch::settlement::BusinessDay::with_journal(
        crate::switch::settlement::SettlementConfig::default(),
        recovery.last_cutover,
        // Long before: the recorded date holds whatever the clock says.
        0,
        journal.clone(),
    );
    assert_eq!(day.current().to_string(), "2026-12-03");
    journal.shutdown();
}

#[test]
fn round_trip_of_every_record_kind_through_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, recovery) = Journal::open(&config(dir.path())).expect("open");
    assert_eq!((recovery.next_seq, recovery.next_txn), (1, 1));
    let records = every_kind(7);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(journal.append(record.clone()), Ok(i as u64 + 1));
    }
    journal.shutdown();
    let back = read_back(dir.path());
    let expected: Vec<_> = (1..).zip(records).collect();
    assert_eq!(back, expected);
}

#[test]
fn unmasked_pan_is_masked_before_it_reaches_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = Journal::open(&config(dir.path())).expect("open");
    let mut careless = request(1);
    let Record::Request { request, .. } = &mut careless else {
        unreachable!()
    };
    request.masked_pan = s("4111111111111111");
    journal.append(careless).expect("append");
    journal.close();
    let raw = fs::read(only_segment(dir.path())).expect("read");
    assert!(!raw.windows(16).any(|w| w == b"4111111111111111"));
    match &read_back(dir.path())[0].1 {
        Record::Request { request, .. } => {
            assert_eq!(request.masked_pan.as_str(), "411111******1111")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn appends_from_many_threads_read_back_in_sequence_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.queue_capacity = 100_000;
    let (journal, _) = Journal::open(&cfg).expect("open");
    const THREADS: u64 = 4;
    const EACH: u64 = 2_500;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let journal = journal.clone();
            scope.spawn(move || {
                for i in 0..EACH {
                    journal
                        .append(Record::Timeout {
                            txn: t * 1_000_000 + i,
                            at_ms: i,
                        })
                        .expect("queue has room");
                }
            });
        }
    });
    let total = THREADS * EACH;
    block_on(journal.wait_durable(total)).expect("durable");
    assert_eq!(*journal.durable().borrow(), total);
    let stats = journal.stats();
    assert_eq!((stats.appended, stats.written), (total, total));
    journal.shutdown();

    let back = read_back(dir.path());
    let seqs: Vec<u64> = back.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    // Each thread's records are all there, in that thread's order.
    for t in 0..THREADS {
        let mine: Vec<u64> = back
            .iter()
            .map(|(_, r)| r.txn())
            .filter(|txn| txn / 1_000_000 == t)
            .collect();
        assert_eq!(
            mine,
            (0..EACH).map(|i| t * 1_000_000 + i).collect::<Vec<_>>()
        );
    }
}

#[test]
fn group_commit_covers_many_records_with_one_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.queue_capacity = 4_096;
    let (journal, _) = Journal::open(&cfg).expect("open");
    // Hold the writer so that everything below is one batch, whatever the
    // scheduler does.
    journal.pause_writer(true);
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let journal = journal.clone();
            scope.spawn(move || {
                for i in 0..500 {
                    journal.append(request(t * 1000 + i)).expect("room");
                }
            });
        }
    });
    assert_eq!(journal.stats().queue_depth, 2_000);
    journal.pause_writer(false);
    block_on(journal.wait_durable(2_000)).expect("durable");
    let stats = journal.stats();
    assert_eq!(stats.written, 2_000);
    assert_eq!(stats.fsyncs, 1, "{stats:?}");
    assert_eq!(stats.queue_depth, 0);
    journal.close();
    assert_eq!(read_back(dir.path()).len(), 2_000);
}

#[test]
fn full_queue_refuses_without_blocking_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.queue_capacity = 4;
    let (journal, _) = Journal::open(&cfg).expect("open");
    journal.pause_writer(true);
    for seq in 1..=4 {
        assert_eq!(
            journal.append(Record::Timeout { txn: seq, at_ms: 0 }),
            Ok(seq)
        );
    }
    // The writer is held, so the queue stays full: refused, not waited on.
    for _ in 0..3 {
        assert_eq!(
            journal.append(Record::Timeout { txn: 9, at_ms: 0 }),
            Err(JournalFull)
        );
    }
    assert_eq!(*journal.durable().borrow(), 0);
    journal.pause_writer(false);
    block_on(journal.wait_durable(4)).expect("durable");
    // Refusals took no sequence numbers.
    assert_eq!(journal.append(Record::Timeout { txn: 5, at_ms: 0 }), Ok(5));
    journal.close();
    assert_eq!(read_back(dir.path()).len(), 5);
}

#[test]
fn closed_journal_refuses_and_waiters_learn_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = Journal::open(&config(dir.path())).expect("open");
    let seq = journal
        .append(Record::Timeout { txn: 1, at_ms: 0 })
        .expect("append");
    let other = journal.clone();
    other.close();
    // What was accepted before close is on disk.
    assert_eq!(*journal.durable().borrow(), seq);
    block_on(journal.wait_durable(seq)).expect("durable");
    assert_eq!(
        journal.append(Record::Timeout { txn: 2, at_ms: 0 }),
        Err(JournalFull)
    );
    assert!(matches!(
        block_on(journal.wait_durable(seq + 1)),
        Err(JournalError::Stopped)
    ));
}

#[test]
fn durability_none_writes_without_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.durability = Durability::None;
    let (journal, _) = Journal::open(&cfg).expect("open");
    for txn in 1..=100 {
        journal
            .append(Record::Timeout { txn, at_ms: 0 })
            .expect("append");
    }
    block_on(journal.wait_durable(100)).expect("written");
    assert_eq!(journal.stats().fsyncs, 0);
    journal.close();
    assert_eq!(read_back(dir.path()).len(), 100);
}

/// Writes `n` requests (txn 1..=n) and closes.
fn write_requests(cfg: &JournalConfig, n: u64) {
    let (journal, _) = Journal::open(cfg).expect("open");
    for txn in 1..=n {
        journal.append(request(txn)).expect("append");
    }
    journal.close();
}

fn assert_torn_tail_repaired(dir: &Path, original: &Path, kind: CorruptionKind) {
    let good_len = {
        let (journal, recovery) = Journal::open(&config(dir)).expect("reopen");
        let torn = recovery.torn.as_ref().expect("torn tail reported");
        assert_eq!(torn.segment, original);
        assert_eq!(torn.kind, kind);
        assert!(torn.discarded_bytes > 0);
        assert_eq!(recovery.next_seq, 10, "records 1..=9 survive");
        assert_eq!(recovery.stats.records, 9);
        // New appends go to a new segment named by their first sequence.
        assert_eq!(journal.append(request(100)), Ok(10));
        journal.close();
        torn.offset
    };
    assert_eq!(fs::metadata(original).expect("meta").len(), good_len);
    let segs = list_segments(dir).expect("list");
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[1].path, dir.join(segment_name(10)));
    let back = read_back(dir);
    assert_eq!(back.len(), 10);
    for (i, (seq, record)) in back.iter().enumerate().take(9) {
        assert_eq!((*seq, record), (i as u64 + 1, &request(i as u64 + 1)));
    }
    assert_eq!(back[9], (10, request(100)));
    // A clean reopen finds nothing torn.
    let (journal, recovery) = Journal::open(&config(dir)).expect("reopen");
    assert!(recovery.torn.is_none());
    assert_eq!(recovery.next_seq, 11);
    journal.close();
}

#[test]
fn torn_tail_short_write_is_cut_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_requests(&config(dir.path()), 10);
    let seg = only_segment(dir.path());
    let len = fs::metadata(&seg).expect("meta").len();
    let file = OpenOptions::new().write(true).open(&seg).expect("open");
    file.set_len(len - 5).expect("truncate");
    drop(file);
    assert_torn_tail_repaired(dir.path(), &seg, CorruptionKind::Truncated);
}

#[test]
fn torn_tail_bad_checksum_is_cut_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_requests(&config(dir.path()), 10);
    let seg = only_segment(dir.path());
    let mut raw = fs::read(&seg).expect("read");
    let at = raw.len() - 20;
    raw[at] ^= 0x40;
    fs::write(&seg, &raw).expect("write");
    assert_torn_tail_repaired(dir.path(), &seg, CorruptionKind::BadChecksum);
}

#[test]
fn empty_segment_left_by_a_crash_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_requests(&config(dir.path()), 3);
    // Crash between creating the next segment and writing to it.
    fs::write(dir.path().join(segment_name(4)), &MAGIC[..3]).expect("write");
    let (journal, recovery) = Journal::open(&config(dir.path())).expect("open");
    assert_eq!(recovery.next_seq, 4);
    assert_eq!(journal.append(request(4)), Ok(4));
    journal.close();
    assert_eq!(read_back(dir.path()).len(), 4);

    // Older segments gone (retention) and the only one left empty: numbers
    // still continue from its name, never restart at 1.
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join(segment_name(50)), b"").expect("write");
    let (journal, recovery) = Journal::open(&config(dir.path())).expect("open");
    assert_eq!(recovery.next_seq, 50);
    assert_eq!(journal.append(request(1)), Ok(50));
    journal.close();
    assert_eq!(list_segments(dir.path()).expect("list").len(), 1);
}

#[test]
fn segments_roll_by_size_and_are_named_by_first_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 4096;
    write_requests(&cfg, 300);
    let segs = list_segments(dir.path()).expect("list");
    assert!(segs.len() >= 8, "{} segments", segs.len());
    let back = read_back(dir.path());
    assert_eq!(back.len(), 300);
    for seg in &segs {
        let len = fs::metadata(&seg.path).expect("meta").len();
        // A segment stops taking records once it reaches the limit, so it
        // overshoots by less than one record.
        assert!(len < 4096 + 200, "{len}");
        assert!(back.iter().any(|(seq, _)| *seq == seg.first_seq));
    }
    assert_eq!(segs[0].first_seq, 1);
}

#[test]
fn corruption_inside_an_older_segment_is_reported_and_the_rest_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 4096;
    write_requests(&cfg, 100);
    let segs = list_segments(dir.path()).expect("list");
    assert!(segs.len() >= 3);
    let mut raw = fs::read(&segs[0].path).expect("read");
    raw[1000] ^= 0xff;
    fs::write(&segs[0].path, &raw).expect("write");

    let (journal, recovery) = Journal::open(&cfg).expect("open");
    assert!(recovery.torn.is_none());
    assert_eq!(recovery.corrupt.len(), 1);
    assert_eq!(recovery.corrupt[0].segment, segs[0].path);
    assert!(recovery.corrupt[0].offset <= 1000);
    // Damage is not repaired away: the older file keeps its bytes.
    assert_eq!(fs::read(&segs[0].path).expect("read"), raw);
    assert_eq!(recovery.next_seq, 101);
    journal.close();

    let items: Vec<_> = read_all(dir.path()).expect("read").collect();
    assert_eq!(items.iter().filter(|i| i.is_err()).count(), 1);
    let last = items.last().expect("records").as_ref().expect("good");
    assert_eq!(last.0, 100);
}

fn set_age(path: &Path, age: Duration) {
    let file = OpenOptions::new().write(true).open(path).expect("open");
    file.set_modified(SystemTime::now() - age)
        .expect("set mtime");
}

#[test]
fn retention_deletes_old_segments_at_roll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 4096;
    write_requests(&cfg, 100);
    let old = list_segments(dir.path()).expect("list");
    assert!(old.len() >= 3);
    let (keep, expire) = old.split_last().expect("segments");
    for seg in expire {
        set_age(&seg.path, Duration::from_secs(3 * 3600));
    }
    set_age(&keep.path, Duration::from_secs(10 * 60));

    cfg.retention = Duration::from_secs(3600);
    let (journal, _) = Journal::open(&cfg).expect("open");
    journal.append(request(500)).expect("append");
    journal.close();
    let now: Vec<_> = list_segments(dir.path()).expect("list");
    let paths: Vec<_> = now.iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        vec![keep.path.clone(), dir.path().join(segment_name(101))]
    );
}

#[test]
fn recovery_finds_unfinished_and_saf_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = Journal::open(&config(dir.path())).expect("open");
    let at_ms = 1;
    let append = |r: Record| journal.append(r).expect("append");
    // 1: forwarded, no outcome -> unfinished.
    append(request(1));
    append(Record::Forwarded {
        txn: 1,
        at_ms,
        acquirer: 3,
    });
    // 2: forwarded and answered -> nothing.
    append(request(2));
    append(Record::Forwarded {
        txn: 2,
        at_ms,
        acquirer: 3,
    });
    append(Record::Response {
        txn: 2,
        at_ms,
        response_code: *b"00",
        approval_code: s("123456"),
        stand_in: false,
        settlement_date: 0,
    });
    // 3: timed out, reversal queued and sent twice -> SAF, 2 attempts.
    append(request(3));
    append(Record::Forwarded {
        txn: 3,
        at_ms,
        acquirer: 4,
    });
    append(Record::Timeout { txn: 3, at_ms });
    append(Record::ReversalQueued {
        txn: 3,
        at_ms,
        acquirer: 4,
        reason: *b"68",
    });
    append(Record::ReversalSent {
        txn: 3,
        at_ms,
        attempt: 1,
    });
    append(Record::ReversalSent {
        txn: 3,
        at_ms,
        attempt: 2,
    });
    // 4: reversal acked -> gone.
    append(request(4));
    append(Record::Forwarded {
        txn: 4,
        at_ms,
        acquirer: 4,
    });
    append(Record::Timeout { txn: 4, at_ms });
    append(Record::ReversalQueued {
        txn: 4,
        at_ms,
        acquirer: 4,
        reason: *b"68",
    });
    append(Record::ReversalAcked {
        txn: 4,
        at_ms,
        response_code: *b"00",
    });
    // 5: stand-in answer, advice queued -> SAF after txn 3's reversal.
    append(request(5));
    append(Record::Response {
        txn: 5,
        at_ms,
        response_code: *b"00",
        approval_code: s("SI0001"),
        stand_in: true,
        settlement_date: 0,
    });
    append(Record::AdviceQueued {
        txn: 5,
        at_ms,
        acquirer: 1,
        mti: 220,
    });
    // 6: timed out but the crash came before the reversal was queued ->
    // still must be reversed.
    append(request(6));
    append(Record::Forwarded {
        txn: 6,
        at_ms,
        acquirer: 2,
    });
    append(Record::Timeout { txn: 6, at_ms });
    // 7: advice expired -> gone. 900: request never forwarded.
    append(request(7));
    append(Record::AdviceQueued {
        txn: 7,
        at_ms,
        acquirer: 1,
        mti: 220,
    });
    append(Record::AdviceExpired { txn: 7, at_ms });
    let last = append(request(900));
    block_on(journal.wait_durable(last)).expect("durable");
    // Simulate kill -9: no orderly close (the leaked writer stays parked
    // and idle); the records are already durable.
    std::mem::forget(journal);

    let (journal, rec) = Journal::open(&config(dir.path())).expect("reopen");
    assert_eq!(rec.next_seq, last + 1);
    assert_eq!(rec.next_txn, 901);
    let unfinished: Vec<_> = rec
        .unfinished
        .iter()
        .map(|u| (u.txn, u.acquirer, u.timed_out))
        .collect();
    assert_eq!(unfinished, vec![(1, 3, false), (6, 2, true)]);
    let u = &rec.unfinished[0];
    assert_eq!(u.request.stan, 1);
    assert_eq!(u.request.masked_pan.as_str(), "411111*1111");
    assert_eq!(u.request.amount_minor, 12_345);
    let saf: Vec<_> = rec
        .saf
        .iter()
        .map(|e| (e.txn, e.kind, e.acquirer, e.attempts))
        .collect();
    assert_eq!(
        saf,
        vec![
            (3, SafKind::Reversal { reason: *b"68" }, 4, 2),
            (5, SafKind::Advice { mti: 220 }, 1, 0),
        ]
    );
    assert_eq!(
        rec.stats.unanswered, 2,
        "txns 7 and 900 never went upstream"
    );
    assert_eq!(rec.stats.orphans, 0);
    journal.close();
}

#[test]
fn cli_views() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = Journal::open(&config(dir.path())).expect("open");
    for txn in 1..=30 {
        journal.append(request(txn)).expect("append");
        journal
            .append(Record::Forwarded {
                txn,
                at_ms: 0,
                acquirer: 1,
            })
            .expect("append");
    }
    journal.close();

    let mut out = Vec::new();
    cli::tail(dir.path(), 5, &mut out).expect("tail");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(text.lines().last().expect("line").contains("forwarded"));

    let mut out = Vec::new();
    cli::show(dir.path(), 7, &mut out).expect("show");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("pan=411111*1111"), "{text}");
    assert!(matches!(
        cli::show(dir.path(), 999, &mut Vec::new()),
        Err(cli::CliError::NotFound(999))
    ));

    let mut out = Vec::new();
    cli::stats(dir.path(), &mut out).expect("stats");
    let text = String::from_utf8(out).expect("utf8");
    assert!(text.contains("records   60"), "{text}");
    assert!(text.contains("unfinished (to reverse)  30"), "{text}");
}

#[test]
fn any_damaged_byte_costs_only_the_records_from_it_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_requests(&config(dir.path()), 3);
    let seg = only_segment(dir.path());
    let clean = fs::read(&seg).expect("read");
    // Where each record's frame ends.
    let mut ends = Vec::new();
    let mut r = super::segment::SegmentReader::open(&seg, 0).expect("open");
    while r.next_record().expect("clean").is_some() {
        ends.push(r.good_offset() as usize);
    }
    for at in 0..clean.len() {
        let mut raw = clean.clone();
        raw[at] ^= 0x01;
        fs::write(&seg, &raw).expect("write");
        let intact = ends.iter().filter(|&&end| end <= at).count();
        let items: Vec<_> = read_all(dir.path()).expect("read").collect();
        let good = items.iter().take_while(|i| i.is_ok()).count();
        assert_eq!(good, intact, "flip at {at}");
        assert!(
            items.len() == good + 1,
            "damage reported once (flip at {at})"
        );
    }
    fs::write(&seg, &clean).expect("restore");
}

/// Child half of `kill_9_loses_nothing_that_was_durable`: appends until
/// killed, printing each durable watermark. Does nothing in a normal run.
#[test]
fn kill_9_child() {
    let Some(dir) = std::env::var_os("SWITCHYARD_JOURNAL_KILL9_DIR") else {
        return;
    };
    let mut cfg = config(Path::new(&dir));
    cfg.segment_bytes = 16 * 1024;
    let (journal, _) = Journal::open(&cfg).expect("open");
    block_on(async {
        for txn in 1.. {
            journal.append(request(txn)).expect("room");
            let seq = journal
                .append(Record::Forwarded {
                    txn,
                    at_ms: 0,
                    acquirer: 1,
                })
                .expect("room");
            if txn % 10 == 0 {
                journal.wait_durable(seq).await.expect("durable");
                println!("durable {seq}");
            }
        }
    });
}

#[test]
fn kill_9_loses_nothing_that_was_durable() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "switch::journal::tests::kill_9_child",
            "--exact",
            "--nocapture",
        ])
        .env("SWITCHYARD_JOURNAL_KILL9_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut durable = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        if let Some(n) = line.strip_prefix("durable ") {
            durable = n.parse().expect("number");
            if durable >= 3_000 {
                break;
            }
        }
    }
    // SIGKILL: no destructor, no close, mid-write for all we know.
    child.kill().expect("kill");
    child.wait().expect("reap");
    assert!(durable >= 3_000, "child stopped early");

    let (journal, recovery) = Journal::open(&config(dir.path())).expect("reopen");
    assert!(recovery.corrupt.is_empty(), "{:?}", recovery.corrupt);
    assert!(recovery.next_seq > durable, "lost durable records");
    let back = read_back(dir.path());
    let seqs: Vec<u64> = back.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..recovery.next_seq).collect::<Vec<_>>());
    // No transaction was ever answered: every forwarded one is to reverse.
    let forwarded = back
        .iter()
        .filter(|(_, r)| r.kind() == RecordKind::Forwarded)
        .count();
    assert_eq!(recovery.unfinished.len(), forwarded);
    assert_eq!(
        recovery.next_txn,
        back.iter().map(|(_, r)| r.txn()).max().expect("records") + 1
    );
    journal.close();
}

#[test]
fn a_request_reads_as_one_line_for_operators() {
    let line = request(1).to_string();
    let fields = line.split_once("Z ").map(|(_, rest)| rest);
    assert_eq!(
        fields,
        Some(
            "mti=0200 stan=000001 tid=TERM0001 mid=MERCHANT000001 rrn=612345678901 \
             pan=411111*1111 amount=12345 cur=978 de7=1125073456 bdate=2026-12-01 route=1 \
             fraud=30/0x0005 pc=200000 mcc=5411 country=276 entry=051 batch=000123"
        ),
        "{line}"
    );
    let cutover = Record::Cutover {
        at_ms: 0,
        business_date: 20_789,
        reason: CutoverReason::Host { acquirer: 1 },
    };
    let names = Names {
        acquirers: vec!["visa".into(), "acme".into()],
    };
    assert_eq!(
        cutover.named(&names).to_string(),
        "cutover          txn=0 at=1970-01-01T00:00:00.000Z bdate=2026-12-02 reason=host \
         acquirer=acme"
    );
}

fn response(txn: u64) -> Record {
    Record::Response {
        txn,
        at_ms: 1,
        response_code: *b"00",
        approval_code: s("123456"),
        stand_in: false,
        settlement_date: 0,
    }
}

fn forwarded(txn: u64) -> Record {
    Record::Forwarded {
        txn,
        at_ms: 1,
        acquirer: 0,
    }
}

/// Transactions `txns` forwarded and answered: nothing left open.
fn settled(journal: &Journal, txns: std::ops::RangeInclusive<u64>) {
    for txn in txns {
        journal.append(request(txn)).expect("append");
        journal.append(forwarded(txn)).expect("append");
        journal.append(response(txn)).expect("append");
    }
}

fn bytes_on_disk(dir: &Path) -> u64 {
    list_segments(dir)
        .expect("list")
        .iter()
        .map(|s| fs::metadata(&s.path).expect("meta").len())
        .sum()
}

fn size_bounded(dir: &Path) -> JournalConfig {
    JournalConfig {
        segment_bytes: 4096,
        max_bytes: Some(16 * 1024),
        ..config(dir)
    }
}

/// At most `max_bytes` after the last roll, plus the active segment.
const SIZE_SLACK: u64 = 4096 + 400;

#[test]
fn max_bytes_removes_the_oldest_closed_segments_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = size_bounded(dir.path());
    let (journal, _) = Journal::open(&cfg).expect("open");
    settled(&journal, 1..=300);
    block_on(journal.wait_durable(900)).expect("durable");
    assert_eq!(journal.stats().disk_bytes, bytes_on_disk(dir.path()));
    journal.close();
    let total = bytes_on_disk(dir.path());
    assert!(total <= 16 * 1024 + SIZE_SLACK, "{total} bytes kept");
    // What is left is the newest, contiguous, up to the last record.
    let back = read_back(dir.path());
    assert_eq!(back.last().map(|(seq, _)| *seq), Some(900));
    assert!(back.first().is_some_and(|(seq, _)| *seq > 1));
    assert!(back.windows(2).all(|w| w[1].0 == w[0].0 + 1));
}

#[test]
fn max_bytes_keeps_a_segment_whose_request_is_still_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = size_bounded(dir.path());
    let (journal, _) = Journal::open(&cfg).expect("open");
    // Txn 1 is forwarded and not yet answered while 300 others pass.
    journal.append(request(1)).expect("append");
    journal.append(forwarded(1)).expect("append");
    settled(&journal, 2..=301);
    block_on(journal.wait_durable(902)).expect("durable");
    let first = dir.path().join(segment_name(1));
    assert!(first.exists(), "the segment with txn 1's request is kept");
    assert!(bytes_on_disk(dir.path()) > 16 * 1024 + SIZE_SLACK);
    // Answered: its segment may go at the next rolls.
    journal.append(response(1)).expect("append");
    settled(&journal, 302..=400);
    journal.close();
    assert!(!first.exists(), "removed once nothing needs it");
    assert!(bytes_on_disk(dir.path()) <= 16 * 1024 + SIZE_SLACK);
}

#[test]
fn max_bytes_keeps_open_work_found_by_recovery_until_it_is_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = size_bounded(dir.path());
    let (journal, _) = Journal::open(&cfg).expect("open");
    // A crash leaves txn 1 forwarded without an answer (to reverse) and
    // txn 2 arrived but never forwarded (nothing to do).
    journal.append(request(1)).expect("append");
    journal.append(forwarded(1)).expect("append");
    journal.append(request(2)).expect("append");
    journal.close();

    let (journal, recovery) = Journal::open(&cfg).expect("reopen");
    assert_eq!(recovery.unfinished.len(), 1);
    assert_eq!(recovery.stats.unanswered, 1);
    assert_eq!(recovery.oldest_needed_seq, Some(1));
    let first = dir.path().join(segment_name(1));
    // The switch queues the reversal; it is not acknowledged yet.
    journal
        .append(Record::ReversalQueued {
            txn: 1,
            at_ms: 1,
            acquirer: 0,
            reason: *b"68",
        })
        .expect("append");
    settled(&journal, 3..=300);
    block_on(journal.wait_durable(4 + 298 * 3)).expect("durable");
    assert!(first.exists(), "txn 1's request backs a pending reversal");
    journal
        .append(Record::ReversalAcked {
            txn: 1,
            at_ms: 1,
            response_code: *b"00",
        })
        .expect("append");
    settled(&journal, 301..=400);
    journal.close();
    // Txn 2 (never forwarded) did not hold the segment.
    assert!(
        !first.exists(),
        "removed once the reversal was acknowledged"
    );
    assert!(bytes_on_disk(dir.path()) <= 16 * 1024 + SIZE_SLACK);
}

#[test]
fn show_names_acquirers_routes_and_fraud_rules_and_points_reversals_to_the_original() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = Journal::open(&config(dir.path())).expect("open");
    journal.append(request(1)).expect("append");
    journal
        .append(Record::Forwarded {
            txn: 1,
            at_ms: 1,
            acquirer: 1,
        })
        .expect("append");
    journal
        .append(Record::Timeout { txn: 1, at_ms: 2 })
        .expect("append");
    journal
        .append(Record::ReversalQueued {
            txn: 1,
            at_ms: 2,
            acquirer: 1,
            reason: *b"68",
        })
        .expect("append");
    journal.close();

    let names = Names {
        acquirers: vec!["visa-host".into(), "mc-host".into()],
    };
    let mut out = Vec::new();
    cli::show_named(dir.path(), 1, &names, &mut out).expect("show");
    let text = String::from_utf8(out).expect("utf8");
    // request(1): route 1, fraud reasons 0b101 (bits 0 and 2).
    assert!(text.contains("route=mc-host"), "{text}");
    assert!(text.contains("fraud=30 (amount, velocity_count)"), "{text}");
    assert!(!text.contains("0x0005"), "{text}");
    assert!(
        text.contains("forwarded") && text.contains("acquirer=mc-host"),
        "{text}"
    );
    assert!(
        text.contains(
            "-> reverses txn 1: 0200 stan=000001 rrn=612345678901 amount=12345 (record 1)"
        ),
        "{text}"
    );

    // Without a config: indices, said as such.
    let mut out = Vec::new();
    cli::show(dir.path(), 1, &mut out).expect("show");
    let text = String::from_utf8(out).expect("utf8");
    assert!(text.contains("route=acquirer #1"), "{text}");

    // tail without the request in its window still says what it reverses.
    let mut out = Vec::new();
    cli::tail_named(dir.path(), 1, &names, &mut out).expect("tail");
    let text = String::from_utf8(out).expect("utf8");
    assert!(
        text.contains("-> reverses txn 1 (`switchyard journal show 1`"),
        "{text}"
    );
}

#[test]
fn journal_views_take_acquirer_names_from_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("switch.toml");
    fs::write(
        &path,
        "[[acquirers]]\nname = \"visa-host\"\nlinks = [\"127.0.0.1:1\"]\n\
         [[acquirers]]\nname = \"mc-host\"\nlinks = [\"127.0.0.1:2\"]\n",
    )
    .expect("written");
    let names = cli::names(Some(&path)).expect("config reads");
    assert_eq!(names.acquirers, ["visa-host", "mc-host"]);
    assert!(matches!(
        cli::names(Some(&dir.path().join("missing.toml"))),
        Err(cli::CliError::Config(_))
    ));
}

#[test]
fn journal_views_of_a_directory_that_is_not_a_journal_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("notes.txt"), "hello").expect("written");
    assert!(matches!(
        cli::stats(dir.path(), &mut Vec::new()),
        Err(cli::CliError::NotAJournal(_))
    ));
    assert!(matches!(
        cli::tail(dir.path(), 5, &mut Vec::new()),
        Err(cli::CliError::NotAJournal(_))
    ));
    assert!(cli::stats(&dir.path().join("nowhere"), &mut Vec::new()).is_err());
}

/// A segment left with a preallocated zero tail (a crash while it was
/// open): its records are all read, the zeros are cut, nothing is torn.
#[test]
fn a_preallocated_zero_tail_is_read_to_its_end_and_cut_at_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_requests(&config(dir.path()), 10);
    let seg = only_segment(dir.path());
    let written = fs::metadata(&seg).expect("meta").len();
    let file = OpenOptions::new().write(true).open(&seg).expect("open");
    file.set_len(written + 256 * 1024).expect("extend");
    drop(file);
    // Readers stop at the zeros as at the end of the file.
    assert_eq!(read_back(dir.path()).len(), 10);
    let (journal, recovery) = Journal::open(&config(dir.path())).expect("reopen");
    assert!(recovery.torn.is_none(), "{:?}", recovery.torn);
    assert!(recovery.corrupt.is_empty());
    assert_eq!((recovery.stats.records, recovery.next_seq), (10, 11));
    journal.close();
    assert_eq!(fs::metadata(&seg).expect("meta").len(), written);
}

/// Records after zeros: a write whose later pages reached the disk and an
/// earlier one did not. Not durable (its sync never returned), so cut,
/// and reported as a torn tail; the saved copy leaves the zeros out.
#[test]
fn data_after_the_zeros_of_a_preallocated_segment_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_requests(&config(dir.path()), 10);
    let seg = only_segment(dir.path());
    let written = fs::metadata(&seg).expect("meta").len();
    let mut raw = fs::read(&seg).expect("read");
    raw.extend_from_slice(&[0u8; 4096]);
    raw.extend_from_slice(b"a later page of a torn write");
    raw.extend_from_slice(&[0u8; 64 * 1024]);
    fs::write(&seg, &raw).expect("write");
    let (journal, recovery) = Journal::open(&config(dir.path())).expect("reopen");
    let torn = recovery.torn.clone().expect("torn tail reported");
    assert_eq!(torn.kind, CorruptionKind::DataAfterEnd);
    assert_eq!(torn.offset, written);
    assert_eq!((recovery.stats.records, recovery.next_seq), (10, 11));
    journal.close();
    assert_eq!(fs::metadata(&seg).expect("meta").len(), written);
    let mut saved = seg.as_os_str().to_owned();
    saved.push(format!(".torn-{written}"));
    let saved = fs::read(PathBuf::from(saved)).expect("tail saved");
    assert_eq!(saved.len(), 4096 + b"a later page of a torn write".len());
    assert!(saved.ends_with(b"torn write"));
}

/// With fsync durability the writer asks for the next segment once the
/// active one is half full, and begins it on the zero-filled file; closed
/// segments hold no zeros; everything reads back in order.
#[test]
fn segments_are_preallocated_and_closed_without_their_zeros() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 4096;
    let (journal, _) = Journal::open(&cfg).expect("open");
    let mut seq = 0;
    let mut append_to = |journal: &Journal, n: u64| {
        for _ in 0..n {
            seq += 1;
            journal.append(request(seq)).expect("append");
        }
        block_on(journal.wait_durable(seq)).expect("durable");
    };
    // Past half of the first segment: the next one is asked for.
    append_to(&journal, 25);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while journal.stats().prepared_segments == 0 {
        assert!(std::time::Instant::now() < deadline, "no segment prepared");
        std::thread::yield_now();
    }
    // Enough to roll: the new segment is the prepared one.
    append_to(&journal, 40);
    let stats = journal.stats();
    assert!(stats.preallocated_segments >= 1, "{stats:?}");
    assert!(stats.segments >= 2, "{stats:?}");
    journal.close();
    let segs = list_segments(dir.path()).expect("list");
    assert_eq!(segs.len() as u64, stats.segments);
    let mut prev = 0;
    for s in &segs {
        // Each file ends where its last record does.
        let mut r = super::segment::SegmentReader::open(&s.path, prev).expect("open");
        while r.next_record().expect("undamaged").is_some() {}
        prev = r.last_seq();
        let len = fs::metadata(&s.path).expect("meta").len();
        assert_eq!(len, r.good_offset(), "{} keeps zeros", s.path.display());
    }
    let back = read_back(dir.path());
    assert_eq!(back.len(), 65);
    assert!(
        back.iter()
            .enumerate()
            .all(|(i, (s, r))| *s == i as u64 + 1 && *r == request(*s))
    );
    // No prepared file is left behind once the journal closed and reopened.
    let (journal, recovery) = Journal::open(&cfg).expect("reopen");
    assert!(recovery.torn.is_none());
    journal.close();
    let stale = fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(stale, 0);
}

/// Several `fdatasync` calls in flight, segments rolling every few dozen
/// records: the durable watermark only grows, never passes what the writer
/// has written, reaches the last record, and every record reads back once,
/// in order.
#[test]
fn syncs_in_flight_together_publish_only_what_was_written_across_rolls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 4096;
    cfg.queue_capacity = 100_000;
    cfg.syncs_in_flight = 4;
    let (journal, _) = Journal::open(&cfg).expect("open");
    const THREADS: u64 = 4;
    const EACH: u64 = 400;
    let total = THREADS * EACH;
    let watcher = {
        let journal = journal.clone();
        std::thread::spawn(move || {
            let mut rx = journal.durable();
            let mut last = *rx.borrow_and_update();
            let mut seen = 0u32;
            while last < total {
                if block_on(rx.changed()).is_err() {
                    break;
                }
                let now = *rx.borrow_and_update();
                // `written` is counted before a sync is handed the records.
                let written = journal.stats().written;
                assert!(now >= last, "watermark went back from {last} to {now}");
                assert!(now <= written, "durable {now} but only {written} written");
                last = now;
                seen += 1;
            }
            (last, seen)
        })
    };
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let journal = journal.clone();
            scope.spawn(move || {
                for i in 0..EACH {
                    let seq = journal.append(request(t * 1000 + i)).expect("room");
                    if i % 50 == 0 {
                        // Some appenders wait, as a terminal does, so that
                        // groups stay small and syncs overlap.
                        block_on(journal.wait_durable(seq)).expect("durable");
                    }
                }
            });
        }
    });
    block_on(journal.wait_durable(total)).expect("durable");
    let (last, seen) = watcher.join().expect("watcher");
    assert_eq!(last, total);
    assert!(seen >= 1);
    let stats = journal.stats();
    assert!(stats.segments >= 10, "{stats:?}");
    journal.close();
    assert!(journal.all_synced());
    let back = read_back(dir.path());
    let seqs: Vec<u64> = back.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
}
