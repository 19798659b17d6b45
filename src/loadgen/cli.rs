//! The command line of `loadtest` (and of `switchyard demo`'s load part).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::frame::LengthHeader;
use crate::iso8583::specs;

use super::{LoadConfig, Mix, Mode, Report};

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Host to load: HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:8583")]
    pub target: String,
    /// TCP connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Open loop: total requests per second over all connections. Without
    /// it the load is closed loop (see --in-flight).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Measured period, e.g. "10s", "500ms", "2m".
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measured period, excluded from the figures.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Built-in spec name (iso87ascii, iso87binary) or a TOML spec file.
    #[arg(long, default_value = "iso87ascii")]
    pub spec: String,
    /// Length header: binary2, ascii4, binary2-inclusive, binary4.
    #[arg(long, default_value = "binary2")]
    pub framing: String,
    /// Seed of the message stream.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Card population size.
    #[arg(long, default_value_t = 100_000)]
    pub cards: usize,
    /// Terminal ids (DE41); at least one per connection is used.
    #[arg(long, default_value_t = 1_000)]
    pub terminals: usize,
    /// A request unanswered this long counts as timed out.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Request mix, e.g. "purchase=70,auth=20,reversal=5,fraud=5".
    #[arg(long, default_value = "purchase=70,auth=20,reversal=5,fraud=5")]
    pub mix: String,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the latency distribution (HdrHistogram .hgrm text) to this file.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Write a self-contained HTML report to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub no_progress: bool,
    /// Worker threads (0: one per core, at most 2). On a box shared with
    /// the switch, fewer threads leave it more CPU.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// "10s", "500ms", "250us", "2m", "1.5s"; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 10s, 500ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        other => return Err(format!("unknown duration unit `{other}` (s, ms, us, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

impl LoadArgs {
    pub fn to_config(&self) -> Result<LoadConfig, String> {
        let target: SocketAddr = self
            .target
            .to_socket_addrs()
            .map_err(|e| format!("--target {}: {e}", self.target))?
            .next()
            .ok_or_else(|| format!("--target {}: no address", self.target))?;
        let spec = specs::resolve(&self.spec).map_err(|e| format!("--spec: {e}"))?;
        let framing: LengthHeader = self
            .framing
            .parse()
            .map_err(|e| format!("--framing: {e}"))?;
        let mode = match self.rate {
            Some(rate) if rate.is_finite() && rate > 0.0 => Mode::Open { rate },
            Some(rate) => return Err(format!("--rate {rate}: must be a positive number")),
            None if self.in_flight == 0 => return Err("--in-flight must be at least 1".into()),
            None => Mode::Closed {
                in_flight: self.in_flight,
            },
        };
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        Ok(LoadConfig {
            target,
            connections: self.connections,
            mode,
            duration: self.duration,
            warmup: self.warmup,
            spec,
            framing,
            seed: self.seed,
            mix: Mix::parse(&self.mix)?,
            cards: self.cards,
            terminals: self.terminals,
            timeout: self.timeout,
            progress: !self.no_progress,
            threads: self.threads,
        })
    }
}

/// Runs the load, prints the report, writes the files asked for. Exit
/// status 1 when the run is not clean (requests lost or answers
/// mismatched), 2 when it could not run.
/// Writes the report files the flags ask for (`--json`, `--hgrm`,
/// `--html`), in that order: what each is, where, and how it went.
pub fn write_outputs<'a>(
    report: &'a Report,
    args: &'a LoadArgs,
) -> impl Iterator<Item = (&'static str, &'a Path, std::io::Result<()>)> + 'a {
    type Write = fn(&Report, &Path) -> std::io::Result<()>;
    let outputs: [(&'static str, &'a Option<PathBuf>, Write); 3] = [
        ("JSON report", &args.json, |r, p| {
            std::fs::write(p, r.to_json())
        }),
        ("histogram", &args.hgrm, Report::write_hgrm),
        ("HTML report", &args.html, Report::write_html),
    ];
    outputs.into_iter().filter_map(move |(what, path, write)| {
        let path = path.as_deref()?;
        Some((what, path, write(report, path)))
    })
}

pub fn run(args: LoadArgs) -> ExitCode {
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match super::run(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    if let Err(e) = report.print_human(&mut std::io::stdout().lock()) {
        eprintln!("loadtest: printing the report: {e}");
        failed = true;
    }
    for (what, path, written) in write_outputs(&report, &args) {
        if let Err(e) = written {
            eprintln!("loadtest: writing the {what} to {}: {e}", path.display());
            failed = true;
        }
    }
    if !report.is_clean() || report.lost() > 0 {
        eprintln!(
            "loadtest: NOT CLEAN: {} lost, {} mismatched",
            report.lost(),
            report.mismatched()
        );
        return ExitCode::from(1);
    }
    if failed {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
