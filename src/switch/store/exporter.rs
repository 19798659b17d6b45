//! The exporter: follows the journal's segment files up to the durable
//! watermark, folds each transaction's records into a row update, and
//! writes them to the store in batches, each in one database transaction
//! together with the journal position it reached (`export_position`).
//! After a crash it resumes from the last committed position; the rows
//! are upserts keyed on (node id, transaction id), so records exported
//! twice (written, then the commit lost) change nothing: each transaction
//! is in the store exactly once.
//!
//! It runs on an OS thread of its own, like the journal writer, not as a
//! tokio task through `spawn_blocking`: its work is a loop that never ends
//! (file reads and SQLite calls, all blocking), its connection must stay
//! on one thread, and a blocking-pool thread held forever is a thread the
//! pool thinks it can reuse. It shares nothing with the hot path but the
//! journal's durable watermark, which it reads (a `watch` borrow) once a
//! batch; when caught up it sleeps `poll_interval` between looks. It never
//! reads past the watermark, so the store never holds a record the journal
//! could still lose.
//!
//! A database server that is down (PostgreSQL, at start or later) stops
//! only the export: each failed batch is retried after a backoff that
//! doubles up to `retry_max`, the log says so once a minute naming the
//! server, and the lag gauges grow. When the store could not be read at
//! start, the export position is read (and the journal checked against
//! it) at the first batch that reaches it.
//!
//! Each batch names the position it follows; a store found elsewhere
//! (it lost commits it had acknowledged: a database crash with
//! asynchronous commit, a failover) wrote nothing, and the exporter
//! follows the journal again from the store's position, at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use tokio::sync::watch;

use super::{
    ExportBatch, Outcome, RequestFields, SafState, Store, StoreConfig, StoreError, TxnUpdate,
};
use crate::iso8583::values::MaskedPan;
use crate::switch::journal::segment::{
    CorruptionKind, ReadError, SegmentFile, SegmentReader, list_segments,
};
use crate::switch::journal::{Record, RequestData};

/// How often retention runs (and once at start).
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// After a failed batch (database locked, disk full, server down...),
/// the next try; doubled at each failure in a row, up to `retry_max`.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// The default `retry_max`.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// At shutdown, the exporter keeps exporting what is durable this long.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// What the exporter needs besides the store.
#[derive(Clone, Debug)]
pub struct ExportSettings {
    pub journal_dir: PathBuf,
    pub node_id: String,
    pub batch_max: usize,
    pub retention: Duration,
    pub poll_interval: Duration,
    /// Acquirer names by the index the journal stores (the config's
    /// `[[acquirers]]` order); a reload that adds acquirers adds their
    /// names (`reload::Control`), read once per batch.
    pub acquirers: std::sync::Arc<arc_swap::ArcSwap<Vec<String>>>,
    /// The longest wait between tries after failures.
    pub retry_max: Duration,
}

impl ExportSettings {
    pub fn new(store: &StoreConfig, journal_dir: PathBuf, acquirers: Vec<String>) -> Self {
        ExportSettings {
            journal_dir,
            node_id: store.node_id.clone(),
            batch_max: store.batch_max.max(1),
            retention: store.retention,
            poll_interval: store.poll_interval,
            acquirers: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(acquirers)),
            retry_max: RETRY_MAX,
        }
    }
}

/// Reads the journal's records in sequence order, from a position on,
/// while the writer appends to the newest segment.
struct Follower {
    dir: PathBuf,
    /// The segment being read and the offset just past its last record
    /// read; `None`: pick one again (at start, or the file went away).
    at: Option<(SegmentFile, u64)>,
    /// The last sequence number handed out (or exported before start).
    last_seq: u64,
    /// Records skipped because the journal no longer has them.
    gaps: u64,
}

enum SegmentEnd {
    /// Enough records, or the watermark reached.
    Full,
    /// The end of what this segment has now.
    End,
    /// Damaged (not the tail being written): go on with the next one.
    Damaged,
    /// The file is gone (journal retention): pick again.
    Gone,
}

impl Follower {
    fn segments(&self) -> Result<Vec<SegmentFile>, ReadError> {
        list_segments(&self.dir).map_err(|source| ReadError::Io {
            path: self.dir.clone(),
            source,
        })
    }

    /// The segment holding `last_seq + 1`: the last one that starts at or
    /// before it (or the oldest, if the journal no longer goes back so far).
    fn pick(&self) -> Result<Option<SegmentFile>, ReadError> {
        let segments = self.segments()?;
        let next = self.last_seq + 1;
        let found = segments.iter().rev().find(|s| s.first_seq <= next);
        Ok(found.or(segments.first()).cloned())
    }

    fn after(&self, first_seq: u64) -> Result<Option<SegmentFile>, ReadError> {
        Ok(self
            .segments()?
            .into_iter()
            .find(|s| s.first_seq > first_seq))
    }

    /// Appends to `out` the records after `last_seq`, up to `upto` and at
    /// most `max` of them in all.
    fn read(
        &mut self,
        upto: u64,
        max: usize,
        out: &mut Vec<(u64, Record)>,
    ) -> Result<(), ReadError> {
        while out.len() < max && self.last_seq < upto {
            let (segment, offset) = match self.at.take() {
                Some(at) => at,
                None => match self.pick()? {
                    Some(s) => (s, 0),
                    None => return Ok(()),
                },
            };
            let (end, offset) = self.read_segment(&segment, offset, upto, max, out)?;
            match end {
                SegmentEnd::Full => {
                    self.at = Some((segment, offset));
                    return Ok(());
                }
                SegmentEnd::Gone => {}
                SegmentEnd::End | SegmentEnd::Damaged => match self.after(segment.first_seq)? {
                    Some(next) => self.at = Some((next, 0)),
                    None => {
                        // The newest segment: more comes here.
                        self.at = Some((segment, offset));
                        return Ok(());
                    }
                },
            }
        }
        Ok(())
    }

    fn read_segment(
        &mut self,
        segment: &SegmentFile,
        offset: u64,
        upto: u64,
        max: usize,
        out: &mut Vec<(u64, Record)>,
    ) -> Result<(SegmentEnd, u64), ReadError> {
        // Read from the file's start, records at or below `last_seq` are
        // skipped; the reader checks order from the one before the segment.
        let prev = if offset == 0 {
            segment.first_seq.saturating_sub(1)
        } else {
            self.last_seq
        };
        let mut reader = match SegmentReader::resume(&segment.path, offset, prev) {
            Ok(r) => r,
            Err(ReadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok((SegmentEnd::Gone, 0));
            }
            Err(e) => return Err(e),
        };
        loop {
            if out.len() >= max || self.last_seq >= upto {
                return Ok((SegmentEnd::Full, reader.good_offset()));
            }
            match reader.next_record() {
                Ok(Some((seq, record))) => {
                    if seq <= self.last_seq {
                        continue;
                    }
                    if seq != self.last_seq + 1 && self.last_seq != 0 {
                        let missing = seq - self.last_seq - 1;
                        self.gaps += missing;
                        tracing::warn!(
                            from = self.last_seq + 1,
                            to = seq - 1,
                            "store: {missing} journal record(s) are gone (journal retention?) \
                             before they were exported; their transactions are incomplete in \
                             the store"
                        );
                    }
                    self.last_seq = seq;
                    out.push((seq, record));
                }
                Ok(None) => return Ok((SegmentEnd::End, reader.good_offset())),
                Err(ReadError::Corrupt(c)) => {
                    let newest = self.after(segment.first_seq)?.is_none();
                    if newest && c.kind == CorruptionKind::Truncated {
                        // The writer is inside this record; it is not
                        // durable yet (the watermark said so), wait.
                        return Ok((SegmentEnd::End, c.offset));
                    }
                    tracing::error!(corruption = %c,
                        "store: journal damaged; the rest of this segment is not exported");
                    return Ok((SegmentEnd::Damaged, c.offset));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Folds records, in order, into one update per transaction.
struct Fold<'a> {
    acquirers: &'a [String],
    txns: HashMap<u64, TxnUpdate>,
}

impl Fold<'_> {
    fn name(&self, index: u16) -> String {
        match self.acquirers.get(usize::from(index)) {
            Some(n) => n.clone(),
            None => format!("#{index}"),
        }
    }

    fn apply(&mut self, seq: u64, record: &Record) {
        // A cutover belongs to no transaction: each transaction's row
        // has its own business date, from its request record.
        if let Record::Cutover { .. } = record {
            return;
        }
        let (txn, at_ms) = (record.txn(), record.at_ms());
        let acquirer = |f: &Self, a: u16| f.name(a);
        let name = match record {
            Record::Forwarded { acquirer: a, .. } => Some(acquirer(self, *a)),
            Record::Request { request, .. } if request.route != u16::MAX => {
                Some(acquirer(self, request.route))
            }
            _ => None,
        };
        let t = self
            .txns
            .entry(txn)
            .or_insert_with(|| TxnUpdate::new(txn, seq, at_ms));
        t.first_at_ms = t.first_at_ms.min(at_ms);
        t.last_at_ms = t.last_at_ms.max(at_ms);
        t.last_seq = seq;
        match record {
            Record::Request {
                request,
                fraud_points,
                fraud_reasons,
                business_date,
                ..
            } => {
                let mut fields =
                    request_fields(at_ms, request, name, *fraud_points, *fraud_reasons);
                fields.business_date = (*business_date != 0)
                    .then(|| crate::switch::settlement::BusinessDate(*business_date).to_string());
                t.request = Some(fields)
            }
            Record::Forwarded { .. } => {
                t.forwarded = name.map(|n| (at_ms, n));
            }
            Record::Response {
                response_code,
                approval_code,
                stand_in,
                settlement_date,
                ..
            } => {
                t.outcome = Some(Outcome::Answered {
                    at_ms,
                    response_code: code(response_code),
                    approval_code: approval_code.to_string(),
                    stand_in: *stand_in,
                    settlement_date: (*settlement_date != 0)
                        .then(|| format!("{settlement_date:04}")),
                })
            }
            Record::Timeout { .. } => t.outcome = Some(Outcome::TimedOut { at_ms }),
            Record::ReversalQueued { reason, .. } => {
                t.reversal.state = Some(SafState::Queued);
                t.reversal.at_ms = Some(at_ms);
                t.reversal.detail = Some(code(reason));
                t.reversal.attempts.get_or_insert(0);
            }
            Record::ReversalSent { attempt, .. } => {
                let a = t.reversal.attempts.get_or_insert(0);
                *a = (*a).max(*attempt);
            }
            Record::ReversalAcked { response_code, .. } => {
                t.reversal.state = Some(SafState::Acked);
                t.reversal.at_ms = Some(at_ms);
                t.reversal.response_code = Some(code(response_code));
            }
            Record::ReversalExpired { .. } => {
                t.reversal.state = Some(SafState::Expired);
                t.reversal.at_ms = Some(at_ms);
            }
            Record::AdviceQueued { mti, .. } => {
                t.advice.state = Some(SafState::Queued);
                t.advice.at_ms = Some(at_ms);
                t.advice.detail = Some(format!("{mti:04}"));
                t.advice.attempts.get_or_insert(0);
            }
            Record::AdviceSent { attempt, .. } => {
                let a = t.advice.attempts.get_or_insert(0);
                *a = (*a).max(*attempt);
            }
            Record::AdviceAcked { response_code, .. } => {
                t.advice.state = Some(SafState::Acked);
                t.advice.at_ms = Some(at_ms);
                t.advice.response_code = Some(code(response_code));
            }
            Record::AdviceExpired { .. } => {
                t.advice.state = Some(SafState::Expired);
                t.advice.at_ms = Some(at_ms);
            }
            Record::Cutover { .. } => {}
        }
    }
}

fn code(c: &[u8; 2]) -> String {
    c.iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

fn request_fields(
    at_ms: u64,
    r: &RequestData,
    route: Option<String>,
    fraud_points: u16,
    fraud_reasons: u16,
) -> RequestFields {
    RequestFields {
        at_ms,
        mti: r.mti,
        stan: r.stan,
        terminal_id: r.terminal_id.to_string(),
        merchant_id: r.merchant_id.to_string(),
        rrn: r.rrn.to_string(),
        masked_pan: masked(&r.masked_pan),
        card_hash: r.card_hash,
        amount_minor: r.amount_minor,
        currency: r.currency,
        transmission_time: r.transmission_time,
        route,
        fraud_points,
        fraud_reasons,
        business_date: None,
        processing_code: r.settlement.processing_code.map(|v| format!("{v:06}")),
        mcc: r.settlement.mcc,
        country: r.settlement.country,
        pos_entry_mode: r.settlement.pos_entry_mode.map(|v| format!("{v:03}")),
        batch: r.settlement.batch.map(|b| b.to_string()),
    }
}

/// The journal writes the PAN masked; a value without a `*` (an old or
/// damaged record) is masked here rather than stored as digits.
fn masked(pan: &str) -> String {
    if pan.is_empty() || pan.contains('*') {
        return pan.to_owned();
    }
    let digits: ArrayVec<u8, 19> = pan.bytes().filter(u8::is_ascii_digit).take(19).collect();
    MaskedPan::of(&digits).as_str().to_owned()
}

/// Metric handles, looked up once.
struct Metrics {
    lag_records: metrics::Gauge,
    lag_seconds: metrics::Gauge,
    rows: metrics::Counter,
    records: metrics::Counter,
    batches: metrics::Counter,
    errors: metrics::Counter,
    deleted: metrics::Counter,
}

impl Metrics {
    fn new() -> Metrics {
        use crate::telemetry as t;
        Metrics {
            lag_records: metrics::gauge!(t::STORE_EXPORT_LAG_RECORDS),
            lag_seconds: metrics::gauge!(t::STORE_EXPORT_LAG_SECONDS),
            rows: metrics::counter!(t::STORE_ROWS_WRITTEN),
            records: metrics::counter!(t::STORE_RECORDS_EXPORTED),
            batches: metrics::counter!(t::STORE_BATCHES),
            errors: metrics::counter!(t::STORE_EXPORT_ERRORS),
            deleted: metrics::counter!(t::STORE_RETENTION_DELETED),
        }
    }
}

/// The exporter's state: the store, where it is in the journal, and its
/// buffers (bounded by `batch_max`). Driven by [`Exporter::step`], from
/// its thread ([`Exporter::spawn`]) or directly in tests.
pub struct Exporter {
    settings: ExportSettings,
    store: Box<dyn Store>,
    follower: Follower,
    records: Vec<(u64, Record)>,
    rows: Vec<TxnUpdate>,
    /// at_ms of the last record exported, for the lag in seconds (at
    /// start: when the exporter was made).
    last_at_ms: u64,
    /// The export position has been read from the store: `follower`
    /// starts from it. Until then nothing is exported.
    resumed: bool,
    /// The journal's durable record at start, to check the position
    /// against once it is read (see [`Exporter::check_journal`]).
    journal_at_start: Option<u64>,
    /// The store is ahead of this journal (exported, journal): refused.
    refused: Option<(u64, u64)>,
    metrics: Metrics,
}

impl Exporter {
    /// Reads the store's export position for this node. A store that
    /// fails for a while (a server down: [`StoreError::is_retryable`]) is
    /// no error: the position is read at the first step that can.
    pub fn new(
        settings: ExportSettings,
        mut store: Box<dyn Store>,
    ) -> Result<Exporter, StoreError> {
        let (position, resumed) = match store.export_position(&settings.node_id) {
            Ok(p) => (p, true),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e,
                    "store: export position unknown for now; exporting starts when the store \
                     answers");
                (0, false)
            }
            Err(e) => return Err(e),
        };
        Ok(Exporter {
            follower: Follower {
                dir: settings.journal_dir.clone(),
                at: None,
                last_seq: position,
                gaps: 0,
            },
            records: Vec::with_capacity(settings.batch_max),
            rows: Vec::with_capacity(settings.batch_max),
            settings,
            store,
            last_at_ms: crate::clock::unix_now_ms(),
            resumed,
            journal_at_start: None,
            refused: None,
            metrics: Metrics::new(),
        })
    }

    /// The export position has been read from the store.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The last journal sequence number in the store.
    pub fn position(&self) -> u64 {
        self.follower.last_seq
    }

    /// Journal records that were gone before they could be exported.
    pub fn gaps(&self) -> u64 {
        self.follower.gaps
    }

    pub fn store(&mut self) -> &mut dyn Store {
        &mut *self.store
    }

    /// Refuses a journal that ends before what the store already has for
    /// this node (another journal, or a reset one): its transaction ids
    /// would overwrite other transactions' rows. Before the position is
    /// known the check waits for it: the first step that reads it refuses
    /// then, and every step after.
    pub fn check_journal(&mut self, durable: u64) -> Result<(), StoreError> {
        if !self.resumed {
            self.journal_at_start = Some(durable);
            return Ok(());
        }
        if self.position() > durable {
            return Err(StoreError::JournalBehind {
                node: self.settings.node_id.clone(),
                exported: self.position(),
                journal: durable,
            });
        }
        Ok(())
    }

    /// Exports one batch: up to `batch_max` records after the position,
    /// none past `durable`. Returns how many records it exported (0:
    /// caught up). On an error nothing of the batch is committed and the
    /// position is as before, so the next step reads the records again.
    pub fn step(&mut self, durable: u64) -> Result<usize, StoreError> {
        self.step_once(durable, true)
    }

    /// [`Exporter::step`]; `again`: after finding the store at another
    /// position than expected, start over from it (once).
    fn step_once(&mut self, durable: u64, again: bool) -> Result<usize, StoreError> {
        if !self.resumed {
            let position = self.store.export_position(&self.settings.node_id)?;
            if let Some(journal) = self.journal_at_start.filter(|&j| position > j) {
                self.refused = Some((position, journal));
            }
            self.follower.last_seq = position;
            self.resumed = true;
            tracing::info!(
                position,
                "store: export position read; exporting from there"
            );
        }
        if let Some((exported, journal)) = self.refused {
            return Err(StoreError::JournalBehind {
                node: self.settings.node_id.clone(),
                exported,
                journal,
            });
        }
        let start = (self.follower.at.clone(), self.follower.last_seq);
        self.records.clear();
        let read = self
            .follower
            .read(durable, self.settings.batch_max, &mut self.records);
        if let Err(e) = read {
            (self.follower.at, self.follower.last_seq) = start;
            return Err(e.into());
        }
        if self.records.is_empty() {
            return Ok(0);
        }
        let names = self.settings.acquirers.load();
        let mut fold = Fold {
            acquirers: &names,
            txns: HashMap::with_capacity(self.records.len()),
        };
        for (seq, record) in &self.records {
            fold.apply(*seq, record);
        }
        self.rows.clear();
        self.rows.extend(fold.txns.into_values());
        let position = self.follower.last_seq;
        let applied = self.store.apply(&ExportBatch {
            node_id: &self.settings.node_id,
            rows: &self.rows,
            from: start.1,
            position,
        });
        match applied {
            Ok(()) => {}
            Err(StoreError::PositionMoved { found, .. }) if found <= durable && again => {
                // The store lost commits it had acknowledged (or another
                // writer moved it): follow the journal again from where
                // the store is; the records go again, idempotently.
                tracing::warn!(
                    expected = start.1,
                    found,
                    "store: the export position is not where this exporter left it; \
                     exporting again from the store's"
                );
                self.follower.at = None;
                self.follower.last_seq = found;
                return self.step_once(durable, false);
            }
            Err(StoreError::PositionMoved { found, .. }) if found > durable => {
                (self.follower.at, self.follower.last_seq) = start;
                self.refused = Some((found, durable));
                return Err(StoreError::JournalBehind {
                    node: self.settings.node_id.clone(),
                    exported: found,
                    journal: durable,
                });
            }
            Err(e) => {
                (self.follower.at, self.follower.last_seq) = start;
                return Err(e);
            }
        }
        let n = self.records.len();
        self.last_at_ms = self.records.last().map_or(0, |(_, r)| r.at_ms());
        self.metrics.rows.increment(self.rows.len() as u64);
        self.metrics.records.increment(n as u64);
        self.metrics.batches.increment(1);
        Ok(n)
    }

    /// Sets the lag gauges against the journal's watermark.
    fn report_lag(&self, durable: u64, now_ms: u64) {
        let behind = durable.saturating_sub(self.position());
        self.metrics.lag_records.set(behind as f64);
        let seconds = if behind == 0 {
            0.0
        } else {
            now_ms.saturating_sub(self.last_at_ms) as f64 / 1000.0
        };
        self.metrics.lag_seconds.set(seconds);
    }

    /// Deletes the rows of transactions that began more than `retention`
    /// before `now_ms`; nothing else.
    pub fn retain(&mut self, now_ms: u64) -> Result<u64, StoreError> {
        let retention = u64::try_from(self.settings.retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms.saturating_sub(retention);
        let n = self.store.delete_before(cutoff)?;
        self.metrics.deleted.increment(n);
        if n > 0 {
            tracing::info!(
                rows = n,
                "store: retention deleted rows older than {} days",
                self.settings.retention.as_secs() / 86_400
            );
        }
        Ok(n)
    }

    /// Runs the exporter on its own thread, following `durable`.
    pub fn spawn(self, durable: watch::Receiver<u64>) -> Result<ExporterHandle, StoreError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(self.position());
        let thread_stop = stop.clone();
        let join = std::thread::Builder::new()
            .name("store-export".into())
            .spawn(move || self.run(durable, thread_stop, tx))
            .map_err(StoreError::Spawn)?;
        Ok(ExporterHandle {
            stop,
            thread: join.thread().clone(),
            join: Some(join),
            exported: rx,
        })
    }

    fn run(
        mut self,
        durable: watch::Receiver<u64>,
        stop: Arc<AtomicBool>,
        exported: watch::Sender<u64>,
    ) {
        let mut next_retention = Instant::now();
        let mut draining_since: Option<Instant> = None;
        let mut last_error: Option<Instant> = None;
        let first_backoff = ERROR_BACKOFF.min(self.settings.retry_max);
        let mut backoff = first_backoff;
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            if stopping && draining_since.is_none() {
                draining_since = Some(Instant::now());
            }
            let upto = *durable.borrow();
            let now_ms = crate::clock::unix_now_ms();
            if Instant::now() >= next_retention {
                next_retention = Instant::now() + RETENTION_EVERY;
                if let Err(e) = self.retain(now_ms) {
                    tracing::warn!(error = %e, "store: retention failed; next try in an hour");
                }
            }
            match self.step(upto) {
                Ok(n) => {
                    if last_error.is_some() {
                        last_error = None;
                        tracing::info!(position = self.position(), "store: exporting again");
                    }
                    backoff = first_backoff;
                    // Against the watermark as it is now: records made
                    // durable while the batch was written are lag too.
                    self.report_lag(*durable.borrow(), crate::clock::unix_now_ms());
                    exported.send_replace(self.position());
                    let over = draining_since.is_some_and(|t| t.elapsed() > DRAIN_LIMIT);
                    if (n == 0 && stopping) || over {
                        break;
                    }
                    // A batch short of `batch_max` reached the watermark:
                    // wait for the next look rather than commit at once
                    // the few records made durable meanwhile. Each commit
                    // writes every index page it dirtied, so its cost is
                    // per batch, not per row: fewer, fuller batches cost
                    // the switch's cores less. The lag stays bounded by
                    // `poll_interval` plus one batch (and is a metric).
                    // Stopping, the drain goes on without waiting.
                    if n == 0 || (n < self.settings.batch_max && !stopping) {
                        std::thread::park_timeout(self.settings.poll_interval);
                    }
                }
                Err(e) => {
                    self.metrics.errors.increment(1);
                    // The lag grows while the store is away.
                    self.report_lag(*durable.borrow(), crate::clock::unix_now_ms());
                    // One line a minute at most: a locked or full database
                    // fails at every try.
                    if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        last_error = Some(Instant::now());
                        tracing::warn!(error = %e, position = self.position(),
                            "store: export failed; retrying, at most {} s apart (the journal \
                             keeps the records)", self.settings.retry_max.as_secs_f64());
                    }
                    if stopping {
                        break;
                    }
                    std::thread::park_timeout(backoff);
                    backoff = (backoff * 2).min(self.settings.retry_max.max(first_backoff));
                }
            }
        }
        tracing::info!(position = self.position(), "store: exporter stopped");
    }
}

/// The running exporter thread.
pub struct ExporterHandle {
    stop: Arc<AtomicBool>,
    thread: Thread,
    join: Option<JoinHandle<()>>,
    exported: watch::Receiver<u64>,
}

impl ExporterHandle {
    /// The journal position the store has reached, as it moves.
    pub fn exported(&self) -> watch::Receiver<u64> {
        self.exported.clone()
    }

    /// Exports what is durable (for at most a few seconds), then stops
    /// and joins the thread. Blocks: call it from a blocking context.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
        if let Some(j) = self.join.take()
            && j.join().is_err()
        {
            tracing::error!("store: exporter thread panicked");
        }
    }
}

impl Drop for ExporterHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
