//! Segment files: naming, record framing, and reading them back.
//!
//! A segment is `journal-<first seq, 20 digits>.log`: an 8-byte magic, then
//! frames. A frame is
//!
//! ```text
//! len: u32 LE | crc: u32 LE | seq: u64 LE | body (see record.rs)
//! ```
//!
//! where `len` counts `seq` + body and `crc` is CRC-32 over `len`, `seq` and
//! body. Covering `len` means a damaged length is caught by the checksum
//! instead of sending the reader into the middle of another record.
//!
//! With fsync durability segments are preallocated: written full of zeros
//! before their first record, so that a sync after an append has only
//! data to write and no file size or extent to commit. A frame header of
//! eight zero bytes (no frame has length 0) is therefore where the
//! records end: the reader stops there as at the end of the file.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::record::{DecodeError, Record};

/// First bytes of every segment: name and format version.
pub const MAGIC: [u8; 8] = *b"SWYJRN\x00\x01";
/// `len` + `crc`.
pub const FRAME_HEADER: usize = 8;
/// Smallest body: tag + txn + at_ms.
const MIN_BODY: u32 = 1 + 8 + 8;
/// No record comes near this (a request is ~170 bytes); a larger length is
/// damage, and refusing it bounds what the reader allocates.
pub const MAX_FRAME_LEN: u32 = 1024;

/// `journal-00000000000000000001.log`: zero-padded so that names sort in
/// sequence order for people and tools too.
pub fn segment_name(first_seq: u64) -> String {
    format!("journal-{first_seq:020}.log")
}

/// The first sequence number in a segment file name, or `None` if the
/// name is not a segment's (other files in the directory are left alone).
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("journal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    pub first_seq: u64,
    pub path: PathBuf,
}

/// The segments in `dir`, oldest first.
pub fn list_segments(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first_seq) = name.to_str().and_then(parse_segment_name) else {
            continue;
        };
        if entry.file_type()?.is_file() {
            out.push(SegmentFile {
                first_seq,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// Appends one frame for `record` to `out`; returns the frame's length.
pub fn encode_frame(seq: u64, record: &Record, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.extend_from_slice(&seq.to_le_bytes());
    record.encode(out);
    let len = (out.len() - start - FRAME_HEADER) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len.to_le_bytes());
    crc.update(&out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.finalize().to_le_bytes());
    out.len() - start
}

/// What is wrong at a place in a segment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CorruptionKind {
    #[error("file ends inside a record (short write)")]
    Truncated,
    #[error("segment header is not a journal segment's")]
    BadHeader,
    #[error("record length {0} is out of range")]
    BadLength(u32),
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("sequence {seq} does not follow {prev}")]
    OutOfOrder { prev: u64, seq: u64 },
    #[error("record does not decode: {0}")]
    BadRecord(DecodeError),
    #[error(
        "data after the end of the records (a write torn by a crash, in a preallocated segment)"
    )]
    DataAfterEnd,
}

/// Damage found while reading: which segment, where, and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: offset {offset}: {kind}", segment.display())]
pub struct Corruption {
    pub segment: PathBuf,
    pub offset: u64,
    pub kind: CorruptionKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("journal damaged: {0}")]
    Corrupt(Corruption),
}

/// Reads one segment's frames in order. After the first damage it reports
/// it once and then ends: past a bad length there is no trustworthy way to
/// find the next frame.
pub struct SegmentReader {
    path: PathBuf,
    file: BufReader<File>,
    offset: u64,
    prev_seq: u64,
    body: Vec<u8>,
    done: bool,
    started: bool,
}

impl SegmentReader {
    /// `prev_seq` is the last sequence number read before this segment
    /// (0 if none): every record must be above it.
    pub fn open(path: &Path, prev_seq: u64) -> Result<SegmentReader, ReadError> {
        let file = File::open(path).map_err(|source| ReadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(SegmentReader {
            path: path.to_owned(),
            file: BufReader::with_capacity(64 * 1024, file),
            offset: 0,
            prev_seq,
            body: Vec::with_capacity(MAX_FRAME_LEN as usize),
            done: false,
            started: false,
        })
    }

    /// Continues a segment being followed (the store's exporter): reads
    /// from `offset`, which a reader of the same file reported as
    /// [`SegmentReader::good_offset`] just after the record `prev_seq`.
    /// At offset 0 it reads the header first, as [`SegmentReader::open`].
    pub fn resume(path: &Path, offset: u64, prev_seq: u64) -> Result<SegmentReader, ReadError> {
        let mut reader = SegmentReader::open(path, prev_seq)?;
        if offset > 0 {
            use std::io::{Seek, SeekFrom};
            let sought = reader.file.seek(SeekFrom::Start(offset));
            if let Err(e) = sought {
                return Err(reader.io(e));
            }
            reader.offset = offset;
            reader.started = true;
        }
        Ok(reader)
    }

    /// Byte offset just past the last good record (or header).
    pub fn good_offset(&self) -> u64 {
        self.offset
    }

    pub fn last_seq(&self) -> u64 {
        self.prev_seq
    }

    fn corrupt(&mut self, kind: CorruptionKind) -> ReadError {
        self.done = true;
        ReadError::Corrupt(Corruption {
            segment: self.path.clone(),
            offset: self.offset,
            kind,
        })
    }

    fn io(&mut self, source: io::Error) -> ReadError {
        self.done = true;
        ReadError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The next record, `Ok(None)` at a clean end of file.
    pub fn next_record(&mut self) -> Result<Option<(u64, Record)>, ReadError> {
        if self.done {
            return Ok(None);
        }
        if !self.started {
            self.started = true;
            let mut magic = [0u8; MAGIC.len()];
            match read_full(&mut self.file, &mut magic) {
                // An empty file: the writer crashed between creating the
                // segment and writing its header. Nothing was lost.
                Ok(0) => {
                    self.done = true;
                    return Ok(None);
                }
                Ok(n) if n == MAGIC.len() && magic == MAGIC => self.offset = n as u64,
                Ok(n) if n < MAGIC.len() => return Err(self.corrupt(CorruptionKind::Truncated)),
                Ok(_) => return Err(self.corrupt(CorruptionKind::BadHeader)),
                Err(e) => return Err(self.io(e)),
            }
        }
        let mut header = [0u8; FRAME_HEADER];
        match read_full(&mut self.file, &mut header) {
            Ok(0) => {
                self.done = true;
                return Ok(None);
            }
            Ok(FRAME_HEADER) => {}
            Ok(_) => return Err(self.corrupt(CorruptionKind::Truncated)),
            Err(e) => return Err(self.io(e)),
        }
        if header == [0u8; FRAME_HEADER] {
            // The preallocated, never written part (see the module's
            // comment): a clean end. Recovery checks that nothing but
            // zeros follows.
            self.done = true;
            return Ok(None);
        }
        let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        if !(8 + MIN_BODY..=MAX_FRAME_LEN).contains(&len) {
            return Err(self.corrupt(CorruptionKind::BadLength(len)));
        }
        self.body.resize(len as usize, 0);
        let mut body = std::mem::take(&mut self.body);
        let got = read_full(&mut self.file, &mut body);
        self.body = body;
        match got {
            Ok(n) if n == len as usize => {}
            Ok(_) => return Err(self.corrupt(CorruptionKind::Truncated)),
            Err(e) => return Err(self.io(e)),
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&len.to_le_bytes());
        hasher.update(&self.body);
        if hasher.finalize() != crc {
            return Err(self.corrupt(CorruptionKind::BadChecksum));
        }
        let (seq_bytes, rest) = self.body.split_at(8);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(seq_bytes);
        let seq = u64::from_le_bytes(seq);
        let record = Record::decode(rest);
        if seq <= self.prev_seq {
            let prev = self.prev_seq;
            return Err(self.corrupt(CorruptionKind::OutOfOrder { prev, seq }));
        }
        let record = match record {
            Ok(r) => r,
            Err(e) => return Err(self.corrupt(CorruptionKind::BadRecord(e))),
        };
        self.prev_seq = seq;
        self.offset += (FRAME_HEADER + len as usize) as u64;
        Ok(Some((seq, record)))
    }
}

/// Reads until `buf` is full or end of file; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Every record in a journal directory, oldest first, across segments.
///
/// Damage is yielded as an `Err` item and reading continues with the next
/// segment, so an operator sees both the damage and what follows it.
pub struct Reader {
    segments: std::vec::IntoIter<SegmentFile>,
    current: Option<SegmentReader>,
    prev_seq: u64,
}

impl Reader {
    pub fn open(dir: &Path) -> Result<Reader, ReadError> {
        let segments = list_segments(dir).map_err(|source| ReadError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Reader::over(segments))
    }

    pub fn over(segments: Vec<SegmentFile>) -> Reader {
        Reader {
            segments: segments.into_iter(),
            current: None,
            prev_seq: 0,
        }
    }
}

impl Iterator for Reader {
    type Item = Result<(u64, Record), ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let reader = match &mut self.current {
                Some(r) => r,
                None => {
                    let seg = self.segments.next()?;
                    match SegmentReader::open(&seg.path, self.prev_seq) {
                        Ok(r) => self.current.insert(r),
                        Err(e) => return Some(Err(e)),
                    }
                }
            };
            match reader.next_record() {
                Ok(Some(item)) => {
                    self.prev_seq = item.0;
                    return Some(Ok(item));
                }
                Ok(None) => self.current = None,
                Err(e) => {
                    self.current = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Every record in `dir`, oldest first; see [`Reader`].
pub fn read_all(dir: &Path) -> Result<Reader, ReadError> {
    Reader::open(dir)
}
