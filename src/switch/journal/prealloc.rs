//! Segments made ahead of need, full of zeros, for fsync durability.
//!
//! `fdatasync` after an append that grows a file must also commit the
//! file's new size and extents (a file system journal commit); after an
//! append into blocks already written it has only the data to write. So
//! each segment is written full of zeros, and synced, before its first
//! record, by a thread of its own: the writer never waits for it (when no
//! segment is ready it makes one as before, growing with its appends).
//! `fallocate` alone would not do: ext4 keeps fallocated blocks as
//! "unwritten" extents, and the first write to each converts it, which
//! is again metadata to commit.
//!
//! The writer asks for the next segment once the active one is half full
//! (so a journal that never fills a segment, as in most tests and short
//! runs, never writes one in vain; the first segment of a run grows as
//! written). A prepared file is `journal-prepared-<n>.tmp` (not a segment
//! name, so readers and retention pass it by) until the writer links it
//! under the segment's name. At most one waits at a time.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use super::segment::MAGIC;

/// Zeros are written in pieces of this size.
const CHUNK: usize = 1 << 20;

/// Room past `segment_bytes`, a sixteenth of it: a segment rolls only
/// once a group commit has taken it past its size (a commit larger than
/// the room grows the file, as without preallocation).
fn slack(segment_bytes: u64) -> u64 {
    segment_bytes / 16
}

/// A segment file ready to take records after its header.
pub(super) struct Prepared {
    pub file: File,
    pub path: PathBuf,
}

/// The thread that prepares segments, as seen by the writer.
pub(super) struct Preparer {
    wanted: mpsc::SyncSender<()>,
    ready: mpsc::Receiver<Prepared>,
}

const PREFIX: &str = "journal-prepared-";

impl Preparer {
    /// Starts the thread for segments of `segment_bytes` in `dir`, after
    /// removing prepared files a crash left behind.
    pub(super) fn spawn(
        dir: &Path,
        segment_bytes: u64,
        prepared: Arc<AtomicU64>,
    ) -> io::Result<Preparer> {
        remove_stale(dir)?;
        // One request waits at most; a rendezvous for the file: it waits
        // in the thread until the writer takes it.
        let (wanted, requests) = mpsc::sync_channel(1);
        let (tx, ready) = mpsc::sync_channel(0);
        let dir = dir.to_owned();
        std::thread::Builder::new()
            .name("journal-prealloc".into())
            .spawn(move || {
                prepare_on_request(
                    &dir,
                    Self::file_len(segment_bytes),
                    &requests,
                    &tx,
                    &prepared,
                )
            })?;
        Ok(Preparer { wanted, ready })
    }

    /// The length of a prepared file for segments of `segment_bytes`.
    pub(super) fn file_len(segment_bytes: u64) -> u64 {
        segment_bytes + slack(segment_bytes)
    }

    /// Asks for a segment to be made (at most one request waits; more are
    /// the same request).
    pub(super) fn request(&self) {
        let _ = self.wanted.try_send(());
    }

    /// A prepared segment if one is ready; never waits.
    pub(super) fn take(&self) -> Option<Prepared> {
        self.ready.try_recv().ok()
    }
}

fn remove_stale(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(".tmp"))
        {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn prepare_on_request(
    dir: &Path,
    bytes: u64,
    requests: &mpsc::Receiver<()>,
    tx: &mpsc::SyncSender<Prepared>,
    prepared: &AtomicU64,
) {
    for n in 0u64.. {
        // The writer gone (the journal closed) ends the thread.
        if requests.recv().is_err() {
            return;
        }
        let path = dir.join(format!("{PREFIX}{n}.tmp"));
        let file = match prepare(&path, bytes) {
            Ok(f) => f,
            Err(e) => {
                // Not fatal: the writer makes its own segments meanwhile,
                // only its syncs are slower.
                tracing::warn!(error = %e, path = %path.display(),
                    "journal: could not preallocate a segment; segments grow as written");
                let _ = fs::remove_file(&path);
                return;
            }
        };
        prepared.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::SendError(p)) = tx.send(Prepared { file, path }) {
            // The writer is gone (the journal closed).
            let _ = fs::remove_file(&p.path);
            return;
        }
    }
}

/// Writes the header and zeros up to `bytes`, and syncs data and size.
fn prepare(path: &Path, bytes: u64) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(&MAGIC)?;
    let zeros = vec![0u8; CHUNK];
    let mut at = MAGIC.len() as u64;
    while at < bytes {
        let n = (bytes - at).min(CHUNK as u64) as usize;
        file.write_all(&zeros[..n])?;
        at += n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// Links `prepared` under `path`, failing if `path` exists (as creating
/// a segment does: a collision means two writers or a recovery bug).
pub(super) fn install(prepared: Prepared, path: &Path) -> io::Result<File> {
    fs::hard_link(&prepared.path, path)?;
    fs::remove_file(&prepared.path)?;
    Ok(prepared.file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepared_segment_is_header_then_zeros_and_links_under_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("journal-prepared-7.tmp"), b"stale").expect("write");
        let p = Preparer::spawn(dir.path(), 8192, Default::default()).expect("spawn");
        p.request();
        let wait = std::time::Duration::from_secs(10);
        let prepared = p.ready.recv_timeout(wait).expect("a segment prepared");
        assert!(
            !dir.path().join("journal-prepared-7.tmp").exists(),
            "stale file kept"
        );
        let target = dir.path().join(super::super::segment::segment_name(1));
        install(prepared, &target).expect("install");
        let bytes = std::fs::read(&target).expect("read");
        assert_eq!(bytes.len() as u64, Preparer::file_len(8192));
        assert_eq!(&bytes[..MAGIC.len()], &MAGIC);
        assert!(bytes[MAGIC.len()..].iter().all(|&b| b == 0));
        // An existing name is never replaced.
        p.request();
        let again = p.ready.recv_timeout(wait).expect("a second segment");
        std::fs::write(&target, b"records").expect("write");
        assert!(install(again, &target).is_err());
        assert_eq!(std::fs::read(&target).expect("read"), b"records");
    }
}
