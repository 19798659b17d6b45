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

impl AuditLog {
    /// Opens (or creates, mode 0600) the file, continues its chain, writes
    /// a `start` line and starts the writer thread.
    pub fn open(path: &Path) -> Result<AuditLog, String> {
        let at = |e: std::io::Error| format!("audit_file {}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(at)?;
        }
        let mut file = open_append(path).map_err(at)?;
        let tail =
            continue_chain(&mut file).map_err(|e| format!("audit_file {}: {e}", path.display()))?;
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
        };
        let mut details = json!({"version": crate::build_info::VERSION});
        if let Some((n, hash)) = &tail.torn {
            details["torn_tail"] = json!({"bytes": n, "sha256": hash});
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
}

impl Writer {
    fn run(mut self, rx: Receiver<Job>) {
        // Ends when every handle has gone.
        while let Ok(job) = rx.recv() {
            let r = self.write(&job.event);
            let _ = job.reply.send(r);
        }
    }

    fn write(&mut self, event: &Event) -> Result<(), AuditError> {
        if let Some(e) = &self.failed {
            return Err(AuditError::Failed(e.clone()));
        }
        let result = render(event, &self.prev, crate::clock::unix_now_ms()).and_then(|line| {
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
                Ok(())
            }
            Err(e) => {
                error!(
                    file = %self.path.display(),
                    "audit trail: write failed ({e}); every later login and action is refused \
                     until the switch is restarted with a writable audit_file"
                );
                self.failed = Some(e.clone());
                self.healthy.store(false, Ordering::Release);
                Err(AuditError::Failed(e))
            }
        }
    }
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

/// The `prev` a line names, if it is a JSON object with one.
fn prev_of(line: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let p = v.as_object()?.get("prev")?.as_str()?;
    (p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit())).then(|| p.to_ascii_lowercase())
}

/// Checks the chain from the first line.
pub fn verify(mut r: impl BufRead) -> std::io::Result<Verdict> {
    let mut buf = Vec::new();
    let mut n = 0u64;
    let mut expected = GENESIS.to_owned();
    loop {
        let got = next_line(&mut r, &mut buf)?;
        let Some(got) = got else {
            return Ok(Verdict::Intact {
                lines: n,
                last_hash: expected,
                torn_tail: None,
            });
        };
        n += 1;
        match got {
            Ok(()) => {}
            Err(true) => {
                return Ok(Verdict::Broken {
                    line: n,
                    message: format!("longer than {MAX_LINE} bytes: not a line the switch wrote"),
                });
            }
            Err(false) => {
                // Nothing follows a torn end: read_until stopped at EOF.
                return Ok(Verdict::Intact {
                    lines: n - 1,
                    last_hash: expected,
                    torn_tail: Some(buf.len()),
                });
            }
        }
        let Some(prev) = prev_of(&buf) else {
            return Ok(Verdict::Broken {
                line: n,
                message: "not a JSON object with a 64-hex-digit `prev`: changed, or not an \
                          audit line"
                    .into(),
            });
        };
        let hash = sha256_hex(&buf);
        if prev == expected {
            expected = hash;
            continue;
        }
        if n == 1 {
            return Ok(Verdict::Broken {
                line: 1,
                message: "its prev is not 64 zeros: line 1 was changed, or the lines before it \
                          were removed"
                    .into(),
            });
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
        return Ok(Verdict::Broken { line, message });
    }
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
        let log = AuditLog::open(path).expect("opens");
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
        };
        assert!(matches!(w.write(&event(0)), Err(AuditError::Failed(_))));
        assert!(!w.healthy.load(Ordering::Acquire));
        assert!(matches!(w.write(&event(1)), Err(AuditError::Failed(_))));
    }
}
