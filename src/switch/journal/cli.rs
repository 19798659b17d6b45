//! `switchyard journal tail|show|stats`: read-only views for operators.
//!
//! They never repair anything (a running switch may be writing the last
//! segment, whose unfinished tail looks torn), and they only ever print
//! masked card numbers because that is all the journal holds.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::record::{Names, Record, RecordKind, RequestData};
use super::recovery::{Fold, SafKind};
use super::segment::{ReadError, Reader, SegmentReader, list_segments};

const OPEN_WORK_HELP: &str = "Open work, as a restart would find it:
  unfinished  forwarded upstream with no final answer recorded (the switch
              stopped or the host never answered, and no reversal was queued
              yet): the next start reverses each one (0420) through
              store-and-forward.
  unanswered  arrived and journaled, but neither forwarded nor answered before
              the switch stopped: nothing reached the host, so nothing is
              reversed; the terminal got no answer and repeats or reverses on
              its own.
  saf depth   reversals and advices queued and not yet acknowledged by the
              host: the next start resends them.";

const NAMES_HELP: &str = "Acquirers and routes are stored as indices into the config's \
[[acquirers]]; with --config (default: config/switchyard.toml when present) they \
are shown by name, otherwise as \"acquirer #N\". Use the config the journal was \
written with.";

#[derive(Debug, clap::Subcommand)]
pub enum JournalCommand {
    /// Print the last N records.
    #[command(after_help = NAMES_HELP)]
    Tail {
        /// The journal directory (journal.dir in the switch's config).
        #[arg(long, default_value = "journal")]
        dir: PathBuf,
        /// How many records to print, the newest last.
        #[arg(short, default_value_t = 20)]
        n: usize,
        /// The switch's config, for acquirer names.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print every record of one transaction.
    #[command(after_help = NAMES_HELP)]
    Show {
        /// The journal directory (journal.dir in the switch's config).
        #[arg(long, default_value = "journal")]
        dir: PathBuf,
        /// The switch's config, for acquirer names.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Transaction id (as printed by `tail`).
        txn: u64,
    },
    /// Records by kind, segments, bytes, and the open work (unfinished,
    /// unanswered, store-and-forward) a restart would find.
    #[command(after_help = OPEN_WORK_HELP)]
    Stats {
        /// The journal directory (journal.dir in the switch's config).
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
    #[error(
        "{}: not a journal directory (no journal-*.log segments); give the switch's \
         journal.dir with --dir",
        .0.display()
    )]
    NotAJournal(PathBuf),
    #[error("{0}")]
    Config(String),
}

/// The segments of the journal in `dir`; a directory with none is not a
/// journal (a mistyped --dir must not read as an empty journal).
fn segments_of(dir: &Path) -> Result<Vec<super::segment::SegmentFile>, CliError> {
    let segments = list_segments(dir).map_err(|source| ReadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    if segments.is_empty() {
        return Err(CliError::NotAJournal(dir.to_owned()));
    }
    Ok(segments)
}

const DEFAULT_CONFIG: &str = "config/switchyard.toml";

/// Acquirer names from `config`, or from the default config when it is
/// there; without one, indices.
pub fn names(config: Option<&Path>) -> Result<Names, CliError> {
    let path = match config {
        Some(p) => p,
        None if Path::new(DEFAULT_CONFIG).exists() => Path::new(DEFAULT_CONFIG),
        None => return Ok(Names::default()),
    };
    let c =
        crate::switch::config::Config::load(path).map_err(|e| CliError::Config(e.to_string()))?;
    Ok(Names {
        acquirers: c.acquirers.into_iter().map(|a| a.name).collect(),
    })
}

pub fn run(cmd: JournalCommand) -> ExitCode {
    let mut out = io::stdout().lock();
    let result = match cmd {
        JournalCommand::Tail { dir, n, config } => {
            names(config.as_deref()).and_then(|names| tail_named(&dir, n, &names, &mut out))
        }
        JournalCommand::Show { dir, txn, config } => {
            names(config.as_deref()).and_then(|names| show_named(&dir, txn, &names, &mut out))
        }
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

/// Requests seen so far, by transaction: what a reversal line points to.
type Originals = HashMap<u64, (u64, RequestData)>;

fn line(
    out: &mut impl Write,
    seq: u64,
    record: &Record,
    names: &Names,
    originals: &mut Originals,
) -> io::Result<()> {
    write!(out, "{seq:>10} {}", record.named(names))?;
    match record {
        Record::Request { txn, request, .. } => {
            originals.insert(*txn, (seq, *request));
        }
        Record::ReversalQueued { txn, .. }
        | Record::ReversalSent { txn, .. }
        | Record::ReversalAcked { txn, .. }
        | Record::ReversalExpired { txn, .. } => match originals.get(txn) {
            Some((at, r)) => write!(
                out,
                " -> reverses txn {txn}: {:04} stan={:06} rrn={} amount={} (record {at})",
                r.mti, r.stan, r.rrn, r.amount_minor
            )?,
            None => write!(
                out,
                " -> reverses txn {txn} (`switchyard journal show {txn}` for the original)"
            )?,
        },
        _ => {}
    }
    writeln!(out)
}

/// The last `n` records, with acquirer indices.
pub fn tail(dir: &Path, n: usize, out: &mut impl Write) -> Result<(), CliError> {
    tail_named(dir, n, &Names::default(), out)
}

/// The last `n` records. Reads segments from the newest backwards and
/// stops once it has enough, so it stays fast on a large journal.
pub fn tail_named(
    dir: &Path,
    n: usize,
    names: &Names,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let segments = segments_of(dir)?;
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
    // Bounded by `n`: only the requests among the printed records.
    let mut originals = Originals::new();
    for item in last {
        match item {
            Ok((seq, record)) => line(out, seq, &record, names, &mut originals)?,
            Err(e) => note(out, &e)?,
        }
    }
    Ok(())
}

/// Every record of transaction `txn`, with acquirer indices.
pub fn show(dir: &Path, txn: u64, out: &mut impl Write) -> Result<(), CliError> {
    show_named(dir, txn, &Names::default(), out)
}

/// Every record of transaction `txn`, in order.
pub fn show_named(
    dir: &Path,
    txn: u64,
    names: &Names,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut found = false;
    let mut originals = Originals::new();
    for item in Reader::over(segments_of(dir)?) {
        match item {
            Ok((seq, record)) if record.txn() == txn => {
                found = true;
                line(out, seq, &record, names, &mut originals)?;
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
    let segments = segments_of(dir)?;
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
    match fold.last_cutover() {
        Some(c) => writeln!(
            out,
            "business date            {} (last cutover at {}, {}, record {})",
            crate::switch::settlement::BusinessDate(c.business_date),
            crate::clock::rfc3339(c.at_ms / 1000),
            c.reason.name(),
            c.seq
        )?,
        None => writeln!(
            out,
            "business date            no cutover on record (a start takes the clock's)"
        )?,
    }
    if fold.orphans() > 0 {
        writeln!(out, "orphaned open work       {}", fold.orphans())?;
    }
    if damage > 0 {
        writeln!(out, "damaged places           {damage} (see above)")?;
    }
    Ok(())
}
