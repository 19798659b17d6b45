//! What `Journal::open` finds on disk: the repaired tail, the numbers to
//! continue from, and the work a crash left open.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::JournalError;
use super::record::{CutoverReason, Record, RecordKind, RequestData};
use super::segment::{Corruption, CorruptionKind, MAGIC, ReadError, SegmentReader, list_segments};

/// The state the journal was found in and the work left open.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// Sequence number the next append gets.
    pub next_seq: u64,
    /// One above the highest transaction id ever journaled, so ids stay
    /// unique across restarts.
    pub next_txn: u64,
    /// The last segment ended in a partial or damaged record; it was cut
    /// back to the last good one.
    pub torn: Option<TornTail>,
    /// Damage inside older segments. Those records are unreadable; the rest
    /// of each damaged segment was skipped, and the files were left as they
    /// are for inspection.
    pub corrupt: Vec<Corruption>,
    /// Sent upstream with no final answer to the terminal (or timed out
    /// with no reversal queued yet): the caller must reverse these.
    pub unfinished: Vec<Unfinished>,
    /// Reversals and advices queued but neither acknowledged nor expired,
    /// oldest first.
    pub saf: Vec<SafEntry>,
    pub stats: RecoveryStats,
    /// Sequence number of the oldest record still needed by open work
    /// (the request record behind a reversal to send or an entry to
    /// resend); `None` when nothing is open. Size retention keeps it.
    pub oldest_needed_seq: Option<u64>,
    /// The last cutover on record: the business date to continue with.
    /// `None` when the journal holds none (new, or retention removed it).
    pub last_cutover: Option<LastCutover>,
    /// Terminal batch totals, folded from every record read.
    pub batches: std::sync::Arc<crate::switch::settlement::batch::Ledger>,
}

/// A `Cutover` record as recovery found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastCutover {
    pub seq: u64,
    pub at_ms: u64,
    /// Days since the epoch.
    pub business_date: u32,
    pub reason: CutoverReason,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    pub records: u64,
    pub segments: u64,
    pub bytes: u64,
    /// Requests that never reached upstream nor got an answer (the switch
    /// stopped in between). Nothing to reverse; counted for the operator.
    pub unanswered: u64,
    /// Open work whose request record is missing (deleted by retention or
    /// lost to damage), so no reversal can be built for it. Logged.
    pub orphans: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    /// Where the file was cut: everything before is intact.
    pub offset: u64,
    /// How many bytes were cut off (kept in `<segment>.torn-<offset>`
    /// next to it).
    pub discarded_bytes: u64,
    pub kind: CorruptionKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfinished {
    pub txn: u64,
    /// The acquirer the request went to (the reversal goes there too).
    pub acquirer: u16,
    pub forwarded_at_ms: u64,
    /// The terminal already got 91; otherwise it got nothing.
    pub timed_out: bool,
    pub request: RequestData,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafKind {
    Reversal { reason: [u8; 2] },
    Advice { mti: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafEntry {
    pub txn: u64,
    pub kind: SafKind,
    pub acquirer: u16,
    /// Sequence number of the queued record: the FIFO order.
    pub queued_seq: u64,
    pub queued_at_ms: u64,
    /// Sends so far (the highest attempt number journaled).
    pub attempts: u32,
    pub request: RequestData,
}

/// Per-transaction state while folding.
#[derive(Default)]
struct Txn {
    request: Option<RequestData>,
    /// Sequence number of the request record.
    request_seq: Option<u64>,
    /// Found in flight at recovery: the process that held it is gone, so
    /// no answer will come for it.
    abandoned: bool,
    /// (seq, acquirer, at_ms) of the forward.
    forwarded: Option<(u64, u16, u64)>,
    responded: bool,
    timed_out: bool,
    reversal_ever_queued: bool,
    reversal: Option<Open>,
    advice: Option<Open>,
    settled: bool,
}

struct Open {
    seq: u64,
    at_ms: u64,
    acquirer: u16,
    kind: SafKind,
    attempts: u32,
}

impl Txn {
    /// Nothing more can be asked of this transaction: it has its final
    /// answer and no reversal or advice is pending.
    fn is_settled(&self) -> bool {
        let answered = self.responded || (self.timed_out && self.reversal_ever_queued);
        answered && self.reversal.is_none() && self.advice.is_none()
    }

    /// Does open work still depend on this transaction's request record?
    /// In flight (an answer or a reversal may yet need it), forwarded with
    /// no answer and no reversal queued (recovery would build one from
    /// it), or a reversal or advice waiting in store-and-forward.
    fn needs_request(&self) -> bool {
        let in_flight = !self.abandoned && !self.responded && !self.timed_out;
        let to_reverse = self.forwarded.is_some() && !self.responded && !self.reversal_ever_queued;
        in_flight || to_reverse || self.reversal.is_some() || self.advice.is_some()
    }
}

/// How many records a settled transaction's state is kept after it
/// settles. Records that follow a final answer (a stand-in advice, a
/// reversal after a timeout) are written right after it, so this window
/// is generous; it is what keeps recovery's memory bounded by the traffic
/// of a short window instead of by the whole retained journal.
const SETTLED_WINDOW: u64 = 200_000;

/// Folds records, in sequence order, into the open work.
#[derive(Default)]
pub struct Fold {
    txns: HashMap<u64, Txn>,
    settled: VecDeque<(u64, u64)>,
    max_txn: u64,
    records: u64,
    orphans: u64,
    kinds: [u64; RecordKind::ALL.len()],
    last_cutover: Option<LastCutover>,
    /// Terminal batch totals (`settlement::batch`), which need every
    /// record, not only those of open work. Taken at the end of recovery:
    /// the writer's fold that follows (with a size bound) needs none.
    batches: Option<crate::switch::settlement::batch::Ledger>,
}

impl Fold {
    pub fn new() -> Fold {
        Fold {
            batches: Some(Default::default()),
            ..Fold::default()
        }
    }

    /// Records seen per kind, in `RecordKind::ALL` order.
    pub fn kinds(&self) -> &[u64; RecordKind::ALL.len()] {
        &self.kinds
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// The terminal batch totals folded so far, for the switch that
    /// starts: requests still waiting for an answer are dropped (their
    /// process is gone). The fold keeps none from here on.
    pub fn take_batches(&mut self) -> std::sync::Arc<crate::switch::settlement::batch::Ledger> {
        let batches = self.batches.take().unwrap_or_default();
        batches.finish_recovery();
        std::sync::Arc::new(batches)
    }

    pub fn apply(&mut self, seq: u64, record: &Record) {
        self.records += 1;
        self.kinds[record.kind() as usize] += 1;
        if let Some(b) = &self.batches {
            b.observe(record);
        }
        if let Record::Cutover {
            at_ms,
            business_date,
            reason,
        } = *record
        {
            // No transaction's: nothing to fold but the date.
            self.last_cutover = Some(LastCutover {
                seq,
                at_ms,
                business_date,
                reason,
            });
            return;
        }
        let id = record.txn();
        self.max_txn = self.max_txn.max(id);
        let txn = self.txns.entry(id).or_default();
        match *record {
            Record::Request { request, .. } => {
                txn.request = Some(request);
                txn.request_seq = Some(seq);
            }
            Record::Forwarded {
                acquirer, at_ms, ..
            } => txn.forwarded = Some((seq, acquirer, at_ms)),
            Record::Response { .. } => txn.responded = true,
            Record::Timeout { .. } => txn.timed_out = true,
            Record::ReversalQueued {
                at_ms,
                acquirer,
                reason,
                ..
            } => {
                txn.reversal_ever_queued = true;
                txn.reversal = Some(Open {
                    seq,
                    at_ms,
                    acquirer,
                    kind: SafKind::Reversal { reason },
                    attempts: 0,
                });
            }
            Record::AdviceQueued {
                at_ms,
                acquirer,
                mti,
                ..
            } => {
                txn.advice = Some(Open {
                    seq,
                    at_ms,
                    acquirer,
                    kind: SafKind::Advice { mti },
                    attempts: 0,
                })
            }
            Record::ReversalSent { attempt, .. } => {
                if let Some(open) = &mut txn.reversal {
                    open.attempts = open.attempts.max(attempt);
                }
            }
            Record::AdviceSent { attempt, .. } => {
                if let Some(open) = &mut txn.advice {
                    open.attempts = open.attempts.max(attempt);
                }
            }
            Record::ReversalAcked { .. } | Record::ReversalExpired { .. } => txn.reversal = None,
            Record::AdviceAcked { .. } | Record::AdviceExpired { .. } => txn.advice = None,
            Record::Cutover { .. } => {}
        }
        if !txn.settled && txn.is_settled() {
            txn.settled = true;
            self.settled.push_back((seq, id));
        }
        self.evict(seq);
    }

    /// Forgets transactions that settled more than `SETTLED_WINDOW`
    /// records ago (unless something reopened them).
    fn evict(&mut self, now_seq: u64) {
        while let Some(&(seq, id)) = self.settled.front() {
            if now_seq.saturating_sub(seq) < SETTLED_WINDOW {
                break;
            }
            self.settled.pop_front();
            if let Some(t) = self.txns.get_mut(&id) {
                if t.is_settled() {
                    self.txns.remove(&id);
                } else {
                    // A record after settling reopened it; watch it again.
                    t.settled = false;
                }
            }
        }
    }

    /// The oldest request record open work still depends on (see
    /// `Txn::needs_request`). A scan of the transactions held: the window
    /// of recently settled ones plus the open ones; called at segment roll.
    pub fn oldest_needed(&self) -> Option<u64> {
        self.txns
            .values()
            .filter(|t| t.needs_request())
            .filter_map(|t| t.request_seq)
            .min()
    }

    /// After recovery: requests in flight belonged to the process that
    /// stopped and will get no answer. Those never forwarded need nothing
    /// (recovery counts them as unanswered) and must not hold retention
    /// forever; those forwarded stay needed until their reversal is
    /// queued and acknowledged (`needs_request`).
    pub(super) fn abandon_in_flight(&mut self) {
        for t in self.txns.values_mut() {
            if !t.responded && !t.timed_out {
                t.abandoned = true;
            }
        }
    }

    /// One above the highest transaction id seen (1 for an empty journal).
    pub fn next_txn(&self) -> u64 {
        self.max_txn + 1
    }

    /// The open work, and how many requests were never answered.
    pub fn finish(&mut self) -> (Vec<Unfinished>, Vec<SafEntry>, u64) {
        let mut unfinished = Vec::new();
        let mut saf = Vec::new();
        let mut unanswered = 0;
        let mut orphans = 0;
        for (&id, t) in &self.txns {
            let needs_reversal = !t.responded && !t.reversal_ever_queued;
            if let (Some((seq, acquirer, at_ms)), true) = (t.forwarded, needs_reversal) {
                match &t.request {
                    Some(request) => unfinished.push((
                        seq,
                        Unfinished {
                            txn: id,
                            acquirer,
                            forwarded_at_ms: at_ms,
                            timed_out: t.timed_out,
                            request: *request,
                        },
                    )),
                    None => {
                        orphans += 1;
                        tracing::error!(
                            txn = id,
                            "journal: forwarded transaction has no request record; it cannot be reversed automatically"
                        );
                    }
                }
            }
            if t.request.is_some() && t.forwarded.is_none() && !t.responded && !t.timed_out {
                unanswered += 1;
            }
            for open in [&t.reversal, &t.advice].into_iter().flatten() {
                match &t.request {
                    Some(request) => saf.push(SafEntry {
                        txn: id,
                        kind: open.kind,
                        acquirer: open.acquirer,
                        queued_seq: open.seq,
                        queued_at_ms: open.at_ms,
                        attempts: open.attempts,
                        request: *request,
                    }),
                    None => {
                        orphans += 1;
                        tracing::error!(txn = id, kind = ?open.kind, "journal: queued reversal/advice has no request record; it cannot be resent");
                    }
                }
            }
        }
        unfinished.sort_by_key(|(seq, _)| *seq);
        saf.sort_by_key(|e| e.queued_seq);
        self.orphans = orphans;
        (
            unfinished.into_iter().map(|(_, u)| u).collect(),
            saf,
            unanswered,
        )
    }

    pub fn orphans(&self) -> u64 {
        self.orphans
    }

    /// The last `Cutover` record folded.
    pub fn last_cutover(&self) -> Option<LastCutover> {
        self.last_cutover
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads every segment, repairs a torn tail, and folds the open work.
/// Returns the fold too: a writer that bounds the journal's size goes on
/// folding from it to know which records open work still needs.
pub(super) fn recover(dir: &Path) -> Result<(Recovery, Fold), JournalError> {
    let segments = list_segments(dir).map_err(io_err(dir))?;
    let mut fold = Fold::new();
    let mut rec = Recovery::default();
    let mut prev_seq = 0;
    let mut changed_dir = false;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let mut reader = SegmentReader::open(&seg.path, prev_seq).map_err(read_err)?;
        let mut count = 0u64;
        let damage = loop {
            match reader.next_record() {
                Ok(Some((seq, record))) => {
                    if count == 0 && seq != seg.first_seq {
                        tracing::warn!(segment = %seg.path.display(), seq, "journal: segment's first record does not match its name");
                    }
                    count += 1;
                    fold.apply(seq, &record);
                }
                Ok(None) => break None,
                Err(ReadError::Corrupt(c)) => break Some(c),
                Err(e) => return Err(read_err(e)),
            }
        };
        prev_seq = reader.last_seq();
        let good = reader.good_offset();
        let damage = match damage {
            Some(c) => Some(c),
            None => check_tail(&seg.path, good)?,
        };
        rec.stats.segments += 1;
        rec.stats.bytes += good;
        if let Some(c) = damage {
            if last {
                rec.torn = Some(cut_tail(&seg.path, c, good)?);
                changed_dir = true;
            } else {
                tracing::error!(segment = %c.segment.display(), offset = c.offset, kind = %c.kind,
                    "journal: DAMAGED segment; records after this offset are unreadable and were skipped");
                rec.corrupt.push(c);
            }
        }
        // A last segment with no records (crash right after creating it, or
        // cut back to nothing) is removed: its name is the next sequence
        // number, which the new writer will create afresh.
        if last && count == 0 {
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            rec.stats.segments -= 1;
            changed_dir = true;
        }
        rec.stats.records += count;
    }
    if changed_dir {
        super::sync_dir(dir).map_err(io_err(dir))?;
    }
    let (unfinished, saf, unanswered) = fold.finish();
    // A segment's name is the sequence number of its first record, so it is
    // a floor even when the segment held nothing readable (an empty last
    // segment removed above): numbers never go back below a name once used.
    let named = segments.last().map_or(1, |s| s.first_seq);
    rec.next_seq = (prev_seq + 1).max(named);
    rec.next_txn = fold.next_txn();
    rec.unfinished = unfinished;
    rec.saf = saf;
    rec.stats.unanswered = unanswered;
    rec.stats.orphans = fold.orphans();
    rec.last_cutover = fold.last_cutover();
    rec.batches = fold.take_batches();
    fold.abandon_in_flight();
    rec.oldest_needed_seq = fold.oldest_needed();
    Ok((rec, fold))
}

fn read_err(e: ReadError) -> JournalError {
    match e {
        ReadError::Io { path, source } => JournalError::Io { path, source },
        // Only reached for damage outside the reading loop, which does
        // not happen; kept total rather than panicking.
        ReadError::Corrupt(c) => JournalError::Corrupt(c),
    }
}

/// After the records of a segment end cleanly at `good`: a preallocated
/// segment's zeros are cut off (the writer had not cut them: a crash, or
/// a segment still open). Anything but zeros there is a write torn by a
/// crash (its later pages reached the disk, an earlier one did not):
/// damage, reported as such.
fn check_tail(path: &Path, good: u64) -> Result<Option<Corruption>, JournalError> {
    let err = io_err(path);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len <= good {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(good)).map_err(io_err(path))?;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut chunk).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(Some(Corruption {
                segment: path.to_owned(),
                offset: good,
                kind: CorruptionKind::DataAfterEnd,
            }));
        }
    }
    file.set_len(good).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    tracing::info!(segment = %path.display(), bytes = len - good,
        "journal: cut the unused preallocated tail of a segment");
    Ok(None)
}

/// Cuts a damaged tail off the last segment at `good`, keeping the cut
/// bytes in `<segment>.torn-<good>` for inspection, and syncs the result so the
/// new writer never appends after garbage.
fn cut_tail(path: &Path, c: Corruption, good: u64) -> Result<TornTail, JournalError> {
    let err = io_err(path);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let discarded = len.saturating_sub(good);
    let mut torn_path = path.as_os_str().to_owned();
    torn_path.push(format!(".torn-{good}"));
    let torn_path = PathBuf::from(torn_path);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(good)).map_err(io_err(path))?;
    file.read_to_end(&mut tail).map_err(io_err(path))?;
    // A preallocated segment's zeros after the damage are not worth
    // keeping.
    let kept = tail.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    tail.truncate(kept);
    fs::write(&torn_path, &tail).map_err(io_err(&torn_path))?;
    // Damage inside the header leaves nothing worth keeping: cut to empty.
    // (A last segment left without records is removed by the caller.)
    let keep = if good < MAGIC.len() as u64 { 0 } else { good };
    file.set_len(keep).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    tracing::warn!(segment = %path.display(), offset = good, discarded_bytes = discarded, kind = %c.kind,
        saved = %torn_path.display(),
        "journal: torn tail in last segment (crash during a write); cut back to the last good record");
    Ok(TornTail {
        segment: path.to_owned(),
        offset: good,
        discarded_bytes: discarded,
        kind: c.kind,
    })
}
