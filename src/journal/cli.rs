//! `switchyard journal tail|show|stats`: read-only views for operators.
//!
//! They never repair anything (a running switch may be writing the last
//! segment, whose unfinished tail looks torn), and they only ever print
//! masked card numbers because that is all the journal holds.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::record::{Record, RecordKind};
use super::recovery::{Fold, SafKind};
use super::segment::{ReadError, Reader, SegmentReader, list_segments};

#[derive(Debug, clap::Subcommand)]
pub enum JournalCommand {
    /// Print the last N records.
    Tail {
        #[arg(long, default_value = "journal")]
        dir: PathBuf,
        #[arg(short, default_value_t = 20)]
        n: usize,
    },
    /// Print every record of one transaction.
    Show {
        #[arg(long, default_value = "journal")]
        dir: PathBuf,
        /// Transaction id (as printed by `tail`).
        txn: u64,
    },
    /// Records by kind, segments, bytes, open work.
    Stats {
        #[arg(long, default_value = "journal")]
        dir: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("writing output: {0}")]
    Output(#[from] io::Error),
    #[error("no records for transaction {0}")]
    NotFound(u64),
}

pub fn run(cmd: JournalCommand) -> ExitCode {
    let mut out = io::stdout().lock();
    let result = match cmd {
        JournalCommand::Tail { dir, n } => tail(&dir, n, &mut out),
        JournalCommand::Show { dir, txn } => show(&dir, txn, &mut out),
        JournalCommand::Stats { dir } => stats(&dir, &mut out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `journal tail | head` closing the pipe is not a failure.
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard journal: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints damage found while reading and carries on: the operator should
/// see both the damage and the records around it.
fn note(out: &mut impl Write, e: &ReadError) -> io::Result<()> {
    writeln!(out, "!! {e}")
}

fn line(out: &mut impl Write, seq: u64, record: &Record) -> io::Result<()> {
    writeln!(out, "{seq:>10} {record}")
}

/// The last `n` records. Reads segments from the newest backwards and
/// stops once it has enough, so it stays fast on a large journal.
pub fn tail(dir: &Path, n: usize, out: &mut impl Write) -> Result<(), CliError> {
    let segments = list_segments(dir).map_err(|source| ReadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    // Newest segments first; each holds its records (and any damage) in order.
    let mut chunks: Vec<Vec<Result<(u64, Record), ReadError>>> = Vec::new();
    let mut have = 0;
    for seg in segments.iter().rev() {
        if have >= n {
            break;
        }
        let mut items = Vec::new();
        match SegmentReader::open(&seg.path, 0) {
            Ok(mut r) => loop {
                match r.next_record() {
                    Ok(Some(item)) => {
                        have += 1;
                        items.push(Ok(item));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        items.push(Err(e));
                        break;
                    }
                }
            },
            Err(e) => items.push(Err(e)),
        }
        chunks.push(items);
    }
    // Keep the last `n` records, and any damage notes among them.
    let mut last: VecDeque<Result<(u64, Record), ReadError>> = VecDeque::new();
    let mut records = 0;
    for item in chunks.into_iter().rev().flatten() {
        records += usize::from(item.is_ok());
        last.push_back(item);
        while records > n {
            if let Some(Ok(_)) = last.pop_front() {
                records -= 1;
            }
        }
    }
    for item in last {
        match item {
            Ok((seq, record)) => line(out, seq, &record)?,
            Err(e) => note(out, &e)?,
        }
    }
    Ok(())
}

/// Every record of transaction `txn`, in order.
pub fn show(dir: &Path, txn: u64, out: &mut impl Write) -> Result<(), CliError> {
    let mut found = false;
    for item in Reader::open(dir)? {
        match item {
            Ok((seq, record)) if record.txn() == txn => {
                found = true;
                line(out, seq, &record)?;
            }
            Ok(_) => {}
            Err(e) => note(out, &e)?,
        }
    }
    if found {
        Ok(())
    } else {
        Err(CliError::NotFound(txn))
    }
}

/// Counts by kind, segments, bytes, and the open work recovery would find.
pub fn stats(dir: &Path, out: &mut impl Write) -> Result<(), CliError> {
    let segments = list_segments(dir).map_err(|source| ReadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let bytes: u64 = segments
        .iter()
        .filter_map(|s| std::fs::metadata(&s.path).ok())
        .map(|m| m.len())
        .sum();
    let mut fold = Fold::new();
    let mut first = None;
    let mut last = 0;
    let mut damage = 0;
    for item in Reader::over(segments.clone()) {
        match item {
            Ok((seq, record)) => {
                first.get_or_insert(seq);
                last = seq;
                fold.apply(seq, &record);
            }
            Err(e) => {
                damage += 1;
                note(out, &e)?;
            }
        }
    }
    let (unfinished, saf, unanswered) = fold.finish();
    writeln!(out, "journal   {}", dir.display())?;
    writeln!(out, "segments  {}", segments.len())?;
    writeln!(out, "bytes     {bytes}")?;
    writeln!(out, "records   {}", fold.records())?;
    match first {
        Some(first) => writeln!(out, "seq       {first}..={last}")?,
        None => writeln!(out, "seq       (empty)")?,
    }
    writeln!(out, "next txn  {}", fold.next_txn())?;
    for (kind, count) in RecordKind::ALL.iter().zip(fold.kinds()) {
        if *count > 0 {
            writeln!(out, "  {:<18}{count}", kind.name())?;
        }
    }
    let reversals = saf
        .iter()
        .filter(|e| matches!(e.kind, SafKind::Reversal { .. }))
        .count();
    writeln!(out, "unfinished (to reverse)  {}", unfinished.len())?;
    writeln!(
        out,
        "saf depth                {} ({reversals} reversals, {} advices)",
        saf.len(),
        saf.len() - reversals
    )?;
    writeln!(out, "unanswered requests      {unanswered}")?;
    if fold.orphans() > 0 {
        writeln!(out, "orphaned open work       {}", fold.orphans())?;
    }
    if damage > 0 {
        writeln!(out, "damaged places           {damage} (see above)")?;
    }
    Ok(())
}
