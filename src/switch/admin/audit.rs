//! The audit trail (`[admin] audit_file`): an append-only file of JSON
//! lines, one per login, logout, expired session and action:
//!
//! ```json
//! {"time":"2026-12-01T14:12:27.123Z","event":"login_ok","user":"alice","source":"127.0.0.1:50312","details":{"role":"operator","session":"3f2a..."},"result":"ok","prev":"<64 hex>"}
//! ```
//!
//! `prev` is the SHA-256 of the line before, its bytes without the
//! newline (64 zeros on the first line): a changed, removed or inserted
//! line breaks the chain at the line after it, and [`verify`] names it.
//! What a chain alone cannot show is lines cut off the end: the switch
//! logs the hash it continues from at start, and `audit verify` prints
//! the last line's, to compare with a copy kept elsewhere.
//!
//! One writer thread owns the file (an actor: callers send it an event on
//! a bounded queue and wait for its answer). It writes the line and
//! fsyncs it before it answers, so an action's answer is never sent
//! before its record is on disk. A write or sync that fails stops the
//! writer for good (the chain's position on disk is unknown then): every
//! later record fails, and the logins and actions that need one are
//! refused (fail closed). That is logged once, at error.
//!
//! Retention (`[admin] audit_retention_days`, default 400: PCI DSS
//! 10.5.1 asks for a year): the file holds one UTC day. The first record
//! of a new day renames it to `<stem>.<YYYY-MM-DD>.<ext>` beside it (the
//! day its lines are of; `.1`, `.2`... before the extension should that
//! name be taken) and starts a new one whose first line, a `rotate`
//! event naming the file before, chains to that file's last line: the
//! chain runs on across files. Dated files of a day older than the
//! retention are deleted at start and at each rotation, and each sweep
//! that deletes is itself a line (`retention`, naming the files): `audit
//! verify DIR` accepts a trail whose oldest file chains to a file gone
//! only if a `retention` line deleted it.
//!
//! At start the last whole line is read (from the end: the file is not
//! read through) and the chain continues from it. A torn last line (bytes
//! after the last newline: a crash mid-write, whose action was never
//! answered) is cut off, reported in the log, and recorded in the chain
//! itself: the first line written after it, a `start` event, carries the
//! torn bytes' length and SHA-256.

use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

/// Longest line written or accepted by `verify` (bytes, newline
/// excluded). A line whose details would make it longer keeps only a note
/// that they were cut.
pub const MAX_LINE: usize = 4096;
/// Records waiting for the writer; a full queue refuses the record (and
/// so the action) rather than waiting.
pub const QUEUE: usize = 64;
/// The first line's `prev`.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One record, as the caller gives it; the writer adds the time and
/// `prev`.
#[derive(Clone, Debug)]
pub struct Event {
    /// `login_ok`, `login_failed`, `logout`, `session_expired`, `action`,
    /// `start`.
    pub event: &'static str,
    /// The operator; `None` when there is none (an unknown name at login,
    /// kept out: it is sometimes a password typed in the wrong field).
    pub user: Option<String>,
    pub source: Option<SocketAddr>,
    pub details: Value,
    /// `ok`, `refused`, `forbidden`, `expired`, `failed: ...`.
    pub result: String,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: &'a str,
    user: Option<&'a str>,
    source: Option<String>,
    details: &'a Value,
    result: &'a str,
    prev: &'a str,
}

/// The time as written: RFC 3339, UTC, milliseconds.
fn time_ms(unix_ms: u64) -> String {
    let s = crate::clock::rfc3339(unix_ms / 1000);
    let s = s.strip_suffix('Z').unwrap_or(&s);
    format!("{s}.{:03}Z", unix_ms % 1000)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(bytes))
}

/// The line for `event` after `prev`, without its newline, within
/// [`MAX_LINE`].
fn render(event: &Event, prev: &str, unix_ms: u64) -> Result<Vec<u8>, String> {
    let line = |details: &Value| {
        serde_json::to_vec(&Line {
            time: time_ms(unix_ms),
            event: event.event,
            user: event.user.as_deref(),
            source: event.source.map(|s| s.to_string()),
            details,
            result: &event.result,
            prev,
        })
        .map_err(|e| format!("audit line not serialised: {e}"))
    };
    let bytes = line(&event.details)?;
    if bytes.len() <= MAX_LINE {
        return Ok(bytes);
    }
    let cut = json!({"truncated": true, "bytes": bytes.len()});
    let bytes = line(&cut)?;
    if bytes.len() <= MAX_LINE {
        Ok(bytes)
    } else {
        Err(format!("audit line of {} bytes", bytes.len()))
    }
}

/// Why a record was not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit trail is not writable ({0}); refused")]
    Failed(String),
    #[error("the audit writer is busy; refused")]
    Busy,
    #[error("the audit writer has stopped; refused")]
    Stopped,
}

struct Job {
    event: Event,
    reply: tokio::sync::oneshot::Sender<Result<(), AuditError>>,
}

/// The handle callers hold.
pub struct AuditLog {
    tx: SyncSender<Job>,
    healthy: Arc<AtomicBool>,
    path: PathBuf,
}

/// What opening found at the end of the file.
#[derive(Debug, PartialEq, Eq)]
pub struct Tail {
    /// The hash the next line's `prev` takes.
    pub prev: String,
    /// A torn last line that was cut off: its length and SHA-256.
    pub torn: Option<(usize, String)>,
}

/// The wall clock in Unix milliseconds (a test's own, to cross days).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

impl AuditLog {
    /// Opens (or creates, mode 0600) the file, continues its chain, writes
    /// a `start` line and starts the writer thread; keeps dated files for
    /// `retention_days`.
    pub fn open(path: &Path, retention_days: u64) -> Result<AuditLog, String> {
        AuditLog::open_with_clock(path, retention_days, Arc::new(crate::clock::unix_now_ms))
    }

    /// [`AuditLog::open`] with the time from `clock`.
    pub fn open_with_clock(
        path: &Path,
        retention_days: u64,
        clock: Clock,
    ) -> Result<AuditLog, String> {
        let at = |e: std::io::Error| format!("audit_file {}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(at)?;
        }
        let mut file = open_append(path).map_err(at)?;
        let mut tail =
            continue_chain(&mut file).map_err(|e| format!("audit_file {}: {e}", path.display()))?;
        let day = first_day(&mut file).map_err(at)?;
        if tail.prev == GENESIS {
            // No whole line: a new file after a rotation (or a crash
            // right after its rename, or in its first line): the chain
            // goes on from the newest dated file.
            if let Some(newest) = dated_files(path).map_err(at)?.pop() {
                let mut f = open_append(&newest.path).map_err(at)?;
                tail.prev = continue_chain(&mut f)
                    .map_err(|e| format!("audit file {}: {e}", newest.path.display()))?
                    .prev;
            }
        }
        match &tail.torn {
            Some((n, hash)) => warn!(
                file = %path.display(),
                "audit trail: a torn last line ({n} bytes, SHA-256 {hash}) was cut off; the chain \
                 continues from the last whole line, and the next line records the cut"
            ),
            None => info!(
                file = %path.display(),
                "audit trail: the chain continues from SHA-256 {}",
                tail.prev
            ),
        }
        let mut writer = Writer {
            file,
            prev: tail.prev,
            failed: None,
            path: path.to_owned(),
            healthy: Arc::new(AtomicBool::new(true)),
            day,
            retention_days,
            clock,
        };
        let mut details = json!({"version": crate::build_info::VERSION});
        if let Some((n, hash)) = &tail.torn {
            details["torn_tail"] = json!({"bytes": n, "sha256": hash});
        }
        // Files past their time go now, not at the next day's first
        // record (a rotation sweeps too).
        let now = (writer.clock)();
        if !writer.rotate_if_due(now) {
            writer
                .sweep(now)
                .map_err(|e| format!("audit_file {}: {e}", path.display()))?;
        }
        writer
            .write(&Event {
                event: "start",
                user: None,
                source: None,
                details,
                result: "ok".into(),
            })
            .map_err(|e| format!("audit_file {}: {e}", path.display()))?;
        let healthy = writer.healthy.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("audit writer thread: {e}"))?;
        Ok(AuditLog {
            tx,
            healthy,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Is the writer still writing? (Checked before an action is done.)
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Writes `event` and waits until it is on disk.
    pub async fn record(&self, event: Event) -> Result<(), AuditError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        match self.tx.try_send(Job { event, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(AuditError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(AuditError::Stopped),
        }
        answer.await.unwrap_or(Err(AuditError::Stopped))
    }
}

struct Writer {
    file: File,
    prev: String,
    failed: Option<String>,
    path: PathBuf,
    healthy: Arc<AtomicBool>,
    /// The UTC day (`YYYY-MM-DD`) of the file's lines; `None` while it
    /// is empty.
    day: Option<String>,
    retention_days: u64,
    clock: Clock,
}

/// `YYYY-MM-DD` of a Unix time in milliseconds, UTC.
fn day_of(unix_ms: u64) -> String {
    let mut s = crate::clock::rfc3339(unix_ms / 1000);
    s.truncate(10);
    s
}

const DAY_MS: u64 = 86_400_000;

impl Writer {
    fn run(mut self, rx: Receiver<Job>) {
        // Ends when every handle has gone.
        while let Ok(job) = rx.recv() {
            let r = self.write(&job.event);
            let _ = job.reply.send(r);
        }
    }

    fn write(&mut self, event: &Event) -> Result<(), AuditError> {
        let now = (self.clock)();
        self.rotate_if_due(now);
        self.write_at(event, now)
    }

    /// A new file when `now` is past the file's day: true if it rotated
    /// (or tried to: a failure is the writer's, as a failed write).
    fn rotate_if_due(&mut self, now: u64) -> bool {
        match &self.day {
            Some(day) if *day != day_of(now) && self.failed.is_none() => {
                let day = day.clone();
                if let Err(e) = self.rotate(&day, now) {
                    self.fail(format!("rotation: {e}"));
                }
                true
            }
            _ => false,
        }
    }

    /// Renames the file to its dated name, starts an empty one, and
    /// chains its first line to the last of the dated file; then sweeps.
    fn rotate(&mut self, day: &str, now: u64) -> Result<(), String> {
        let dated = free_dated_name(&self.path, day).map_err(|e| e.to_string())?;
        std::fs::rename(&self.path, &dated).map_err(|e| {
            format!(
                "can not rename {} to {}: {e}",
                self.path.display(),
                dated.display()
            )
        })?;
        sync_dir(&self.path);
        self.file = open_append(&self.path)
            .map_err(|e| format!("can not create {}: {e}", self.path.display()))?;
        self.day = None;
        let name = file_name(&dated);
        info!(file = %dated.display(), "audit trail: {day} closed; the chain goes on in a new file");
        self.write_at(
            &Event {
                event: "rotate",
                user: None,
                source: None,
                details: json!({"previous_file": name, "previous_day": day}),
                result: "ok".into(),
            },
            now,
        )
        .map_err(|e| e.to_string())?;
        self.sweep(now)
    }

    /// Deletes the dated files of days older than the retention, and
    /// records what it deleted (and what it could not).
    fn sweep(&mut self, now: u64) -> Result<(), String> {
        let oldest_kept = day_of(now.saturating_sub(self.retention_days.saturating_mul(DAY_MS)));
        let files = dated_files(&self.path).map_err(|e| format!("can not list: {e}"))?;
        let mut deleted = Vec::new();
        let mut failed = Vec::new();
        for f in files.iter().filter(|f| f.day < oldest_kept) {
            match std::fs::remove_file(&f.path) {
                Ok(()) => deleted.push(file_name(&f.path)),
                Err(e) => failed.push(format!("{}: {e}", file_name(&f.path))),
            }
        }
        if deleted.is_empty() && failed.is_empty() {
            return Ok(());
        }
        sync_dir(&self.path);
        info!(
            deleted = deleted.len(),
            failed = failed.len(),
            "audit trail: files of days before {oldest_kept} deleted ({} days kept)",
            self.retention_days
        );
        let result = if failed.is_empty() {
            "ok".to_owned()
        } else {
            warn!("audit trail: could not delete {failed:?}");
            format!("failed: {}", failed.join("; "))
        };
        self.write_at(
            &Event {
                event: "retention",
                user: None,
                source: None,
                details: json!({
                    "retention_days": self.retention_days,
                    "before_day": oldest_kept,
                    "deleted": deleted,
                }),
                result,
            },
            now,
        )
        .map_err(|e| e.to_string())
    }

    fn fail(&mut self, e: String) {
        error!(
            file = %self.path.display(),
            "audit trail: {e}; every later login and action is refused \
             until the switch is restarted with a writable audit_file"
        );
        self.failed = Some(e);
        self.healthy.store(false, Ordering::Release);
    }

    fn write_at(&mut self, event: &Event, now: u64) -> Result<(), AuditError> {
        if let Some(e) = &self.failed {
            return Err(AuditError::Failed(e.clone()));
        }
        let result = render(event, &self.prev, now).and_then(|line| {
            let mut buf = line.clone();
            buf.push(b'\n');
            // One write of the whole line: a crash leaves at most one torn
            // line at the end, which the next start cuts off.
            self.file
                .write_all(&buf)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| e.to_string())?;
            Ok(line)
        });
        match result {
            Ok(line) => {
                self.prev = sha256_hex(&line);
                if self.day.is_none() {
                    self.day = Some(day_of(now));
                }
                Ok(())
            }
            Err(e) => {
                self.fail(format!("write failed ({e})"));
                Err(AuditError::Failed(e))
            }
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A rename or a deletion survives a crash once its directory is synced.
fn sync_dir(path: &Path) {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The day of the file's first line (`YYYY-MM-DD` from its `time`);
/// `None` for an empty file or one whose first line has no time.
fn first_day(file: &mut File) -> std::io::Result<Option<String>> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::new();
    std::io::BufReader::new(&mut *file)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    let day = serde_json::from_slice::<Value>(buf.strip_suffix(b"\n").unwrap_or(&buf))
        .ok()
        .and_then(|v| {
            v.get("time")?
                .as_str()
                .and_then(|t| t.get(..10))
                .map(str::to_owned)
        })
        .filter(|d| is_day(d));
    Ok(day)
}

/// `YYYY-MM-DD`, digits where they go.
fn is_day(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// One rotated file of a trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dated {
    pub path: PathBuf,
    pub day: String,
    /// 0 for the day's first name, then 1, 2... (a clock set back).
    pub seq: u32,
}

/// The live file's name cut in two: `audit` and `.jsonl`.
fn stem_and_ext(live: &Path) -> (String, String) {
    let name = file_name(live);
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem.to_owned(), format!(".{ext}")),
        _ => (name, String::new()),
    }
}

/// `name` as one of the dated files of the trail `stem`+`ext`.
fn parse_dated(name: &str, stem: &str, ext: &str) -> Option<(String, u32)> {
    let mid = name
        .strip_prefix(stem)?
        .strip_prefix('.')?
        .strip_suffix(ext)?;
    let (day, seq) = match mid.split_once('.') {
        Some((day, seq)) => (day, seq.parse().ok()?),
        None => (mid, 0),
    };
    is_day(day).then(|| (day.to_owned(), seq))
}

/// The dated files beside `live`, oldest first.
pub fn dated_files(live: &Path) -> std::io::Result<Vec<Dated>> {
    let (stem, ext) = stem_and_ext(live);
    let dir = match live.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((day, seq)) = parse_dated(name, &stem, &ext) {
            out.push(Dated {
                path: entry.path(),
                day,
                seq,
            });
        }
    }
    out.sort_by(|a, b| (&a.day, a.seq).cmp(&(&b.day, b.seq)));
    Ok(out)
}

/// `<stem>.<day><ext>`, or with `.1`, `.2`... when taken.
fn free_dated_name(live: &Path, day: &str) -> std::io::Result<PathBuf> {
    let (stem, ext) = stem_and_ext(live);
    for seq in 0..1000u32 {
        let name = if seq == 0 {
            format!("{stem}.{day}{ext}")
        } else {
            format!("{stem}.{day}.{seq}{ext}")
        };
        let p = live.with_file_name(name);
        if !p.exists() {
            return Ok(p);
        }
    }
    Err(std::io::Error::other(format!(
        "1000 files named for {day} already"
    )))
}

#[cfg(unix)]
fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

/// Reads the end of the file: the hash of the last whole line, and cuts
/// a torn line after it.
fn continue_chain(file: &mut File) -> Result<Tail, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Ok(Tail {
            prev: GENESIS.into(),
            torn: None,
        });
    }
    // A torn line and the whole line before it, each within MAX_LINE
    // and its newline.
    let window = len.min(2 * (MAX_LINE as u64 + 1));
    let start = len - window;
    let mut buf = vec![0u8; window as usize];
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| e.to_string())?;
    let mut torn = None;
    let whole_end = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if start == 0 => 0,
        None => {
            return Err(format!(
                "the last {window} bytes hold no line end: not a trail this switch wrote \
                 (lines are at most {MAX_LINE} bytes); check it with `switchyard audit verify`"
            ));
        }
    };
    if whole_end < buf.len() {
        let fragment = &buf[whole_end..];
        torn = Some((fragment.len(), sha256_hex(fragment)));
        file.set_len(start + whole_end as u64)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("can not cut the torn last line: {e}"))?;
    }
    if whole_end == 0 {
        return Ok(Tail {
            prev: GENESIS.into(),
            torn,
        });
    }
    let body = &buf[..whole_end - 1];
    let line = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[i + 1..],
        None if start == 0 => body,
        None => {
            return Err(format!(
                "the last line is longer than {MAX_LINE} bytes: not a line this switch wrote; \
                 check it with `switchyard audit verify`"
            ));
        }
    };
    Ok(Tail {
        prev: sha256_hex(line),
        torn,
    })
}

/// What `verify` concluded.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every whole line chains from the one before.
    Intact {
        lines: u64,
        /// The last whole line's SHA-256 (what the next line's `prev`
        /// will be): compare it with a copy kept elsewhere to see that no
        /// line was cut off the end.
        last_hash: String,
        /// Bytes after the last newline: a line being written, or torn by
        /// a crash (the switch cuts it at its next start).
        torn_tail: Option<usize>,
        /// Line 1 is a `rotate` line chaining to this file, not checked
        /// here (`audit verify DIR` checks across files).
        after_file: Option<String>,
    },
    /// The first broken line (1-based) and why.
    Broken { line: u64, message: String },
}

/// One line of at most MAX_LINE bytes, newline excluded: `Ok(None)` at the
/// end, `Err(true)` for a line over the limit, `Err(false)` for a torn end.
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<Result<(), bool>>> {
    buf.clear();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(Ok(())));
    }
    Ok(Some(Err(buf.len() > MAX_LINE)))
}

/// The `prev` of a line that is a JSON object with one, and the line.
fn parse_line(line: &[u8]) -> Option<(String, Value)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let p = v.as_object()?.get("prev")?.as_str()?.to_ascii_lowercase();
    let ok = p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then_some((p, v))
}

fn prev_of(line: &[u8]) -> Option<String> {
    parse_line(line).map(|(p, _)| p)
}

/// Files named deleted by `retention` lines, at most this many kept while
/// a trail is checked (400 days of daily files is 400).
const MAX_DELETED_NAMES: usize = 100_000;

/// Where a file's chain starts.
enum Start<'a> {
    /// The trail's first file: 64 zeros, or a `rotate` line chaining to
    /// a file not checked.
    First,
    /// After the file before it, whose last line has this hash.
    After { hash: &'a str, file: &'a str },
}

/// One file's check, and what the trail's check needs from it.
struct Checked {
    verdict: Verdict,
    /// Files that `retention` lines in it deleted.
    deleted: Vec<String>,
}

/// Checks the chain of one file from its first line; a `rotate` line
/// first is taken as where the file starts (the file before is not
/// checked: [`verify_trail`] does).
pub fn verify(r: impl BufRead) -> std::io::Result<Verdict> {
    Ok(check(r, Start::First)?.verdict)
}

fn check(mut r: impl BufRead, start: Start<'_>) -> std::io::Result<Checked> {
    let mut buf = Vec::new();
    let mut n = 0u64;
    let mut expected = match start {
        Start::First => GENESIS.to_owned(),
        Start::After { hash, .. } => hash.to_owned(),
    };
    let mut after_file = None;
    let mut deleted = Vec::new();
    let broken = |deleted: Vec<String>, line: u64, message: String| Checked {
        verdict: Verdict::Broken { line, message },
        deleted,
    };
    loop {
        let got = next_line(&mut r, &mut buf)?;
        let Some(got) = got else {
            return Ok(Checked {
                verdict: Verdict::Intact {
                    lines: n,
                    last_hash: expected,
                    torn_tail: None,
                    after_file,
                },
                deleted,
            });
        };
        n += 1;
        match got {
            Ok(()) => {}
            Err(true) => {
                return Ok(broken(
                    deleted,
                    n,
                    format!("longer than {MAX_LINE} bytes: not a line the switch wrote"),
                ));
            }
            Err(false) => {
                // Nothing follows a torn end: read_until stopped at EOF.
                return Ok(Checked {
                    verdict: Verdict::Intact {
                        lines: n - 1,
                        last_hash: expected,
                        torn_tail: Some(buf.len()),
                        after_file,
                    },
                    deleted,
                });
            }
        }
        let Some((prev, value)) = parse_line(&buf) else {
            return Ok(broken(
                deleted,
                n,
                "not a JSON object with a 64-hex-digit `prev`: changed, or not an audit line"
                    .into(),
            ));
        };
        if value["event"] == "retention"
            && let Some(names) = value["details"]["deleted"].as_array()
        {
            for name in names.iter().filter_map(Value::as_str) {
                if deleted.len() < MAX_DELETED_NAMES {
                    deleted.push(name.to_owned());
                }
            }
        }
        let hash = sha256_hex(&buf);
        if prev == expected {
            expected = hash;
            continue;
        }
        if n == 1 {
            match start {
                Start::First => {
                    if value["event"] == "rotate"
                        && let Some(before) = value["details"]["previous_file"].as_str()
                    {
                        after_file = Some(before.to_owned());
                        expected = hash;
                        continue;
                    }
                    return Ok(broken(
                        deleted,
                        1,
                        "its prev is not 64 zeros: line 1 was changed, or the lines before it \
                         were removed"
                            .into(),
                    ));
                }
                Start::After { file, .. } => {
                    return Ok(broken(
                        deleted,
                        1,
                        format!(
                            "its prev is not the SHA-256 of the last line of {file}: one of the \
                             two was changed, or lines were removed or inserted between them"
                        ),
                    ));
                }
            }
        }
        // Line n does not chain from line n-1. If line n+1 chains from
        // line n, line n is as written and line n-1 was changed (or lines
        // went missing between them); if it does not, line n was.
        let next = match next_line(&mut r, &mut buf)? {
            Some(Ok(())) => Some(prev_of(&buf)),
            _ => None,
        };
        let (line, message) = match next {
            Some(Some(p)) if p == hash => (
                n - 1,
                format!(
                    "changed: line {n}'s prev is not its SHA-256 (or lines were removed or \
                     inserted between lines {} and {n})",
                    n - 1
                ),
            ),
            Some(_) => (
                n,
                format!(
                    "changed: its prev is not the SHA-256 of line {}, and line {}'s prev is not \
                     its own",
                    n - 1,
                    n + 1
                ),
            ),
            None => (
                n - 1,
                format!(
                    "line {n}'s prev is not the SHA-256 of line {}: line {} was changed, or \
                     line {n}'s prev was, or lines were removed between them",
                    n - 1,
                    n - 1
                ),
            ),
        };
        return Ok(broken(deleted, line, message));
    }
}

/// What `verify_trail` concluded about a trail of several files.
#[derive(Debug, PartialEq, Eq)]
pub enum TrailVerdict {
    Intact {
        /// Each file checked, oldest first, with its line count.
        files: Vec<(PathBuf, u64)>,
        last_hash: String,
        /// Bytes after the last newline of the live file.
        torn_tail: Option<usize>,
        /// The oldest file chains to this one, which a `retention` line
        /// deleted.
        after_deleted: Option<String>,
    },
    Broken {
        file: PathBuf,
        line: u64,
        message: String,
    },
}

/// The trails in `dir`: each `<stem>.jsonl` and its dated files, or dated
/// files whose live file is gone; by stem.
pub fn trails_in(dir: &Path) -> std::io::Result<Vec<Vec<PathBuf>>> {
    let mut stems = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(base) = name.strip_suffix(".jsonl") else {
            continue;
        };
        // `audit.2026-12-01[.1]` is a dated file of `audit`.
        let mut parts: Vec<&str> = base.split('.').collect();
        if parts.len() >= 2 && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit()) {
            if parts.len() >= 3 && is_day(parts[parts.len() - 2]) {
                parts.truncate(parts.len() - 2);
            }
        } else if parts.len() >= 2 && is_day(parts[parts.len() - 1]) {
            parts.truncate(parts.len() - 1);
        }
        stems.insert(parts.join("."));
    }
    let mut trails = Vec::new();
    for stem in stems {
        let live = dir.join(format!("{stem}.jsonl"));
        let mut files: Vec<PathBuf> = dated_files(&live)?.into_iter().map(|d| d.path).collect();
        if live.exists() {
            files.push(live);
        }
        if !files.is_empty() {
            trails.push(files);
        }
    }
    Ok(trails)
}

/// Checks a trail's files, oldest first and the live one last, as one
/// chain: each file's first line chains to the last line of the one
/// before. The oldest may chain to a file gone, if a `retention` line
/// deleted it. A torn end is allowed in the last file only.
pub fn verify_trail(files: &[PathBuf]) -> std::io::Result<TrailVerdict> {
    let mut checked = Vec::new();
    let mut deleted = std::collections::HashSet::new();
    let mut hash = String::new();
    let mut first_after = None;
    let mut torn = None;
    for (i, path) in files.iter().enumerate() {
        let r = std::io::BufReader::new(File::open(path)?);
        let before = if i == 0 {
            String::new()
        } else {
            file_name(&files[i - 1])
        };
        let start = if i == 0 {
            Start::First
        } else {
            Start::After {
                hash: &hash,
                file: &before,
            }
        };
        let c = check(r, start)?;
        for d in c.deleted {
            if deleted.len() < MAX_DELETED_NAMES {
                deleted.insert(d);
            }
        }
        match c.verdict {
            Verdict::Broken { line, message } => {
                return Ok(TrailVerdict::Broken {
                    file: path.clone(),
                    line,
                    message,
                });
            }
            Verdict::Intact {
                lines,
                last_hash,
                torn_tail,
                after_file,
            } => {
                if torn_tail.is_some() && i + 1 < files.len() {
                    return Ok(TrailVerdict::Broken {
                        file: path.clone(),
                        line: lines + 1,
                        message: "a torn last line in a file the switch closed: changed".into(),
                    });
                }
                if i == 0 {
                    first_after = after_file;
                }
                torn = torn_tail;
                hash = last_hash;
                checked.push((path.clone(), lines));
            }
        }
    }
    if let Some(gone) = &first_after
        && !deleted.contains(gone)
    {
        return Ok(TrailVerdict::Broken {
            file: files[0].clone(),
            line: 1,
            message: format!(
                "it chains to {gone}, which is not here, and no retention line deleted it: \
                 files were removed"
            ),
        });
    }
    Ok(TrailVerdict::Intact {
        files: checked,
        last_hash: if hash.is_empty() {
            GENESIS.into()
        } else {
            hash
        },
        torn_tail: torn,
        after_deleted: first_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize) -> Event {
        Event {
            event: "action",
            user: Some(format!("user{i}")),
            source: Some(SocketAddr::from(([127, 0, 0, 1], 4000 + i as u16))),
            details: json!({"action": "reload", "i": i}),
            result: "ok".into(),
        }
    }

    /// A trail of `n` lines after the `start` line, written by a Writer.
    fn trail(path: &Path, n: usize) {
        let log = AuditLog::open(path, 400).expect("opens");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for i in 0..n {
                log.record(event(i)).await.expect("recorded");
            }
        });
    }

    fn verdict(path: &Path) -> Verdict {
        verify(std::io::BufReader::new(File::open(path).expect("opens"))).expect("reads")
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("reads")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn lines_chain_and_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/audit.jsonl");
        trail(&path, 3);
        let l = lines(&path);
        assert_eq!(l.len(), 4);
        let first: Value = serde_json::from_str(&l[0]).expect("JSON");
        assert_eq!(first["event"], "start");
        assert_eq!(first["prev"], GENESIS);
        let second: Value = serde_json::from_str(&l[1]).expect("JSON");
        assert_eq!(second["prev"], sha256_hex(l[0].as_bytes()));
        assert_eq!(second["user"], "user0");
        assert_eq!(second["source"], "127.0.0.1:4000");
        assert!(second["time"].as_str().expect("time").ends_with('Z'));
        let Verdict::Intact {
            lines: 4,
            last_hash,
            torn_tail: None,
            after_file: None,
        } = verdict(&path)
        else {
            panic!("intact: {:?}", verdict(&path));
        };
        assert_eq!(last_hash, sha256_hex(l[3].as_bytes()));

        // A second start continues the chain.
        trail(&path, 1);
        assert!(matches!(verdict(&path), Verdict::Intact { lines: 6, .. }));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<String>)) {
        let mut l = lines(path);
        edit(&mut l);
        std::fs::write(path, l.join("\n") + "\n").expect("writes");
    }

    #[test]
    fn a_changed_line_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        trail(&path, 5);
        let good = lines(&path);

        // Content of line 3 changed: line 4 no longer chains.
        rewrite(&path, |l| l[2] = l[2].replace("user1", "mallory"));
        assert!(
            matches!(verdict(&path), Verdict::Broken { line: 3, .. }),
            "{:?}",
            verdict(&path)
        );
        // Line 3's prev changed: line 3 itself.
        rewrite(&path, |l| {
            *l = good.clone();
            let at = l[2].find("\"prev\":\"").expect("prev") + 8;
            let flipped = if &l[2][at..=at] == "a" { "b" } else { "a" };
            l[2].replace_range(at..=at, flipped);
        });
        assert!(
            matches!(verdict(&path), Verdict::Broken { line: 3, .. }),
            "{:?}",
            verdict(&path)
        );
        // Line 3 removed: line 2 or a removal between 2 and 3.
        rewrite(&path, |l| {
            *l = good.clone();
            l.remove(2);
        });
        let Verdict::Broken { line: 2, message } = verdict(&path) else {
            panic!("{:?}", verdict(&path));
        };
        assert!(message.contains("removed"), "{message}");
        // Not JSON.
        rewrite(&path, |l| {
            *l = good.clone();
            l[4] = "garbage".into();
        });
        assert!(matches!(verdict(&path), Verdict::Broken { line: 5, .. }));
        // Line 1.
        rewrite(&path, |l| {
            *l = good.clone();
            l.remove(0);
        });
        assert!(matches!(verdict(&path), Verdict::Broken { line: 1, .. }));
        // Too long.
        rewrite(&path, |l| {
            *l = good.clone();
            l[1] = "x".repeat(MAX_LINE + 1);
        });
        assert!(matches!(verdict(&path), Verdict::Broken { line: 2, .. }));
    }

    #[test]
    fn a_torn_tail_is_cut_and_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        trail(&path, 2);
        let whole = std::fs::read(&path).expect("reads");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("opens");
        f.write_all(b"{\"time\":\"2026-").expect("writes");
        drop(f);
        assert!(matches!(
            verdict(&path),
            Verdict::Intact {
                lines: 3,
                torn_tail: Some(14),
                ..
            }
        ));
        trail(&path, 0);
        let l = lines(&path);
        assert_eq!(l.len(), 4);
        assert!(std::fs::read(&path).expect("reads").starts_with(&whole));
        let start: Value = serde_json::from_str(&l[3]).expect("JSON");
        assert_eq!(start["event"], "start");
        assert_eq!(start["details"]["torn_tail"]["bytes"], 14);
        assert!(matches!(
            verdict(&path),
            Verdict::Intact {
                lines: 4,
                torn_tail: None,
                ..
            }
        ));
    }

    #[test]
    fn a_torn_only_file_starts_from_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, b"{\"ti").expect("writes");
        trail(&path, 0);
        assert!(matches!(verdict(&path), Verdict::Intact { lines: 1, .. }));
    }

    #[test]
    fn long_details_are_cut_to_the_line_limit() {
        let mut e = event(0);
        e.details = json!({"names": "n".repeat(2 * MAX_LINE)});
        let line = render(&e, GENESIS, 1_700_000_000_123).expect("renders");
        assert!(line.len() <= MAX_LINE);
        let v: Value = serde_json::from_slice(&line).expect("JSON");
        assert_eq!(v["details"]["truncated"], true);
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn a_failed_writer_refuses_every_later_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut w = Writer {
            // Read-only: the write fails.
            file: {
                std::fs::write(&path, b"").expect("creates");
                File::open(&path).expect("opens")
            },
            prev: GENESIS.into(),
            failed: None,
            path: path.clone(),
            healthy: Arc::new(AtomicBool::new(true)),
            day: None,
            retention_days: 400,
            clock: Arc::new(crate::clock::unix_now_ms),
        };
        assert!(matches!(w.write(&event(0)), Err(AuditError::Failed(_))));
        assert!(!w.healthy.load(Ordering::Acquire));
        assert!(matches!(w.write(&event(1)), Err(AuditError::Failed(_))));
    }

    /// A clock the test moves: Unix milliseconds.
    struct TestClock(Arc<std::sync::atomic::AtomicU64>);

    impl TestClock {
        /// 2026-01-10T12:00:00Z.
        fn new() -> TestClock {
            TestClock(Arc::new(std::sync::atomic::AtomicU64::new(
                1_768_046_400_000,
            )))
        }
        fn clock(&self) -> Clock {
            let t = self.0.clone();
            Arc::new(move || t.load(Ordering::Relaxed))
        }
        fn next_day(&self) {
            self.0.fetch_add(DAY_MS, Ordering::Relaxed);
        }
    }

    fn record_at(log: &AuditLog, n: usize) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for i in 0..n {
                log.record(event(i)).await.expect("recorded");
            }
        });
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .expect("lists")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    fn trail_verdict(dir: &Path) -> TrailVerdict {
        let trails = trails_in(dir).expect("lists");
        assert_eq!(trails.len(), 1, "{trails:?}");
        verify_trail(&trails[0]).expect("reads")
    }

    #[test]
    fn days_rotate_into_dated_files_the_chain_runs_across_and_old_days_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let t = TestClock::new();
        let log = AuditLog::open_with_clock(&path, 3, t.clock()).expect("opens");
        record_at(&log, 2);
        t.next_day();
        record_at(&log, 1);
        assert_eq!(names(dir.path()), ["audit.2026-01-10.jsonl", "audit.jsonl"]);
        let closed = lines(&dir.path().join("audit.2026-01-10.jsonl"));
        assert_eq!(closed.len(), 3, "start and two records: {closed:?}");
        let live = lines(&path);
        let rotate: Value = serde_json::from_str(&live[0]).expect("JSON");
        assert_eq!(rotate["event"], "rotate");
        assert_eq!(rotate["details"]["previous_file"], "audit.2026-01-10.jsonl");
        assert_eq!(rotate["prev"], sha256_hex(closed[2].as_bytes()));
        assert!(
            rotate["time"]
                .as_str()
                .expect("time")
                .starts_with("2026-01-11")
        );
        // The live file alone: it starts after the dated one.
        assert!(matches!(
            verdict(&path),
            Verdict::Intact { lines: 2, after_file: Some(ref f), .. } if f == "audit.2026-01-10.jsonl"
        ));
        let TrailVerdict::Intact {
            files,
            after_deleted: None,
            ..
        } = trail_verdict(dir.path())
        else {
            panic!("{:?}", trail_verdict(dir.path()));
        };
        assert_eq!(files.iter().map(|(_, n)| n).sum::<u64>(), 5);

        // Days 12 to 14: on the 14th, with 3 days kept, the 10th's file
        // goes (the 11th's is 3 days old, kept), and that is on record.
        for _ in 0..3 {
            t.next_day();
            record_at(&log, 1);
        }
        assert_eq!(
            names(dir.path()),
            [
                "audit.2026-01-11.jsonl",
                "audit.2026-01-12.jsonl",
                "audit.2026-01-13.jsonl",
                "audit.jsonl"
            ]
        );
        let retention: Vec<Value> = lines(&path)
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
            .filter(|v| v["event"] == "retention")
            .collect();
        assert_eq!(retention.len(), 1, "{retention:?}");
        assert_eq!(
            retention[0]["details"]["deleted"],
            json!(["audit.2026-01-10.jsonl"])
        );
        assert_eq!(retention[0]["details"]["before_day"], "2026-01-11");
        assert_eq!(retention[0]["result"], "ok");
        // The oldest file now chains to a file retention deleted: intact.
        assert!(
            matches!(
                trail_verdict(dir.path()),
                TrailVerdict::Intact { after_deleted: Some(ref f), .. } if f == "audit.2026-01-10.jsonl"
            ),
            "{:?}",
            trail_verdict(dir.path())
        );

        // One edited line in a dated file: named, with its file.
        let middle = dir.path().join("audit.2026-01-12.jsonl");
        let good = lines(&middle);
        assert_eq!(good.len(), 2, "rotate and one record: {good:?}");
        rewrite(&middle, |l| {
            l[0] = l[0].replace("\"result\":\"ok\"", "\"result\":\"no\"")
        });
        match trail_verdict(dir.path()) {
            TrailVerdict::Broken { file, line: 1, .. } => assert_eq!(file, middle),
            v => panic!("{v:?}"),
        }
        rewrite(&middle, |l| *l = good.clone());
        assert!(matches!(
            trail_verdict(dir.path()),
            TrailVerdict::Intact { .. }
        ));
        // An edited last line of a dated file: the next file's first line
        // no longer chains to it.
        rewrite(&middle, |l| {
            let last = l.len() - 1;
            l[last] = l[last].replace("user0", "mallory");
        });
        match trail_verdict(dir.path()) {
            TrailVerdict::Broken {
                file,
                line: 1,
                message,
            } => {
                assert_eq!(file, dir.path().join("audit.2026-01-13.jsonl"));
                assert!(message.contains("audit.2026-01-12.jsonl"), "{message}");
            }
            v => panic!("{v:?}"),
        }
        rewrite(&middle, |l| *l = good.clone());
        // A file removed by hand (no retention line): the trail is broken.
        std::fs::remove_file(dir.path().join("audit.2026-01-11.jsonl")).expect("removes");
        match trail_verdict(dir.path()) {
            TrailVerdict::Broken {
                file,
                line: 1,
                message,
            } => {
                assert_eq!(file, middle);
                assert!(message.contains("no retention line"), "{message}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_start_on_a_later_day_rotates_sweeps_and_an_empty_file_continues_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let t = TestClock::new();
        let log = AuditLog::open_with_clock(&path, 400, t.clock()).expect("opens");
        record_at(&log, 1);
        drop(log);
        t.next_day();
        // Started on the next day: the old day's lines go to their file
        // before the start line is written.
        let log = AuditLog::open_with_clock(&path, 400, t.clock()).expect("opens");
        drop(log);
        assert_eq!(names(dir.path()), ["audit.2026-01-10.jsonl", "audit.jsonl"]);
        let live = lines(&path);
        assert_eq!(live.len(), 2, "{live:?}");
        assert!(live[0].contains("\"event\":\"rotate\""), "{live:?}");
        assert!(live[1].contains("\"event\":\"start\""), "{live:?}");
        // A crash between the rename and the first line, or in it: a
        // live file with no whole line; the chain continues from the
        // dated file.
        std::fs::rename(&path, dir.path().join("audit.2026-01-11.jsonl")).expect("renames");
        std::fs::write(&path, b"{\"time\":\"2026-01-11T").expect("a torn first line");
        let log = AuditLog::open_with_clock(&path, 400, t.clock()).expect("opens");
        drop(log);
        assert!(
            matches!(trail_verdict(dir.path()), TrailVerdict::Intact { ref files, .. } if files.len() == 3),
            "{:?}",
            trail_verdict(dir.path())
        );
        // Started 400 days later with 3 days kept: everything dated goes
        // at start, recorded.
        for _ in 0..400 {
            t.next_day();
        }
        let log = AuditLog::open_with_clock(&path, 3, t.clock()).expect("opens");
        drop(log);
        assert_eq!(names(dir.path()), ["audit.jsonl"]);
        let live = lines(&path);
        let retention: Value = live
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
            .find(|v| v["event"] == "retention")
            .expect("a retention line");
        assert_eq!(
            retention["details"]["deleted"],
            json!([
                "audit.2026-01-10.jsonl",
                "audit.2026-01-11.jsonl",
                "audit.2026-01-11.1.jsonl"
            ])
        );
        assert!(matches!(
            trail_verdict(dir.path()),
            TrailVerdict::Intact {
                after_deleted: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn dated_names_parse_and_sort() {
        assert_eq!(
            parse_dated("audit.2026-01-10.jsonl", "audit", ".jsonl"),
            Some(("2026-01-10".into(), 0))
        );
        assert_eq!(
            parse_dated("audit.2026-01-10.2.jsonl", "audit", ".jsonl"),
            Some(("2026-01-10".into(), 2))
        );
        assert_eq!(parse_dated("audit.jsonl", "audit", ".jsonl"), None);
        assert_eq!(
            parse_dated("audit.2026-1-10.jsonl", "audit", ".jsonl"),
            None
        );
        assert_eq!(
            parse_dated("other.2026-01-10.jsonl", "audit", ".jsonl"),
            None
        );
        assert_eq!(day_of(1_768_046_400_000), "2026-01-10");
    }
}
