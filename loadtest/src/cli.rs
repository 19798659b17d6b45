//! The command line of `loadtest` (and of `switchyard demo`'s load part).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use switchyard_protocol::frame::LengthHeader;
use switchyard_protocol::iso8583::specs;
use switchyard_protocol::tls::{self, ClientSettings, TlsError};

use super::{LoadConfig, Mix, Mode, Report, TlsTarget};

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Host to load: HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:8583")]
    pub target: String,
    /// TCP connections.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: usize,
    /// Open loop: total requests per second over all connections; latency
    /// counts from each request's intended send time (corrected for
    /// coordinated omission, as wrk2 does). Without it the load is closed
    /// loop (see --in-flight).
    #[arg(short = 'R', long)]
    pub rate: Option<f64>,
    /// Closed loop: requests in flight per connection. Latency then counts
    /// from the actual send and is NOT corrected for coordinated omission:
    /// a stalled peer also stalls the sends that would have measured it
    /// (use --rate for that).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Measured period, e.g. "10s", "500ms", "2m".
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
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
    /// Seed of the message stream and of this run's key space (terminal
    /// ids, STANs). Default: random, printed in the report, so that runs
    /// against a switch that stays up do not repeat each other's keys (and
    /// get 94 duplicates); give the printed seed to repeat a run exactly.
    /// Repeated runs still share the card population, and so the switch's
    /// fraud history of those cards (velocity, declines): later runs may
    /// see more 59s.
    #[arg(long)]
    pub seed: Option<u64>,
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
    /// Worker threads: 0 picks one per core, at most 2; N runs exactly N
    /// (never more than one per connection). On a box shared with the
    /// switch, fewer threads leave it more CPU.
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Most errors allowed for a clean run, in percent: answers that are
    /// the switch's own refusals (30, 91, 92, 94, 96, 12, 63, 81) as a share of
    /// answers, and timeouts as a share of requests. Host and fraud
    /// declines (05, 51, 59, ...) are not errors. Over it: exit status 1.
    #[arg(long, default_value = "0.1%", value_parser = parse_percent)]
    pub max_error_rate: f64,
    /// The target switch's admin address (HOST:PORT): its /metrics are read
    /// at the start and end of the measured period, and the switch's own
    /// latency is shown next to the end-to-end figures.
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<String>,
    /// TLS to the target: each connection's TLS handshake (the server's
    /// certificate checked against --ca and --server-name) comes before
    /// its sign-on. The report counts handshakes, their rate and failures.
    #[arg(long)]
    pub tls: bool,
    /// With --tls: the CA certificate(s) (PEM) the server's certificate
    /// must chain to.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// With --tls: a client certificate chain (PEM) to present to servers
    /// that ask for one; needs --key.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// With --tls: the private key (PEM) of --cert.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// With --tls: the name the server's certificate must carry (a DNS
    /// name or an IP address) [default: localhost].
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Every 0100/0200 carries a PIN block (DE52, format 0 under the
    /// terminal PIN key of --terminal-keys).
    #[arg(long)]
    pub pin: bool,
    /// Every transaction request carries a MAC (DE64) under the terminal
    /// MAC key of --terminal-keys; every answer's MAC is checked, and one
    /// that does not verify makes the run not clean.
    #[arg(long)]
    pub mac: bool,
    /// With --pin or --mac: the terminal's keys (TOML: pin_key, mac_key,
    /// mac_algorithm, pin; see the README).
    #[arg(long, value_name = "FILE")]
    pub terminal_keys: Option<PathBuf>,
    /// Close each connection after N requests on it (once they are
    /// answered or timed out) and open a new one: TCP connect, TLS
    /// handshake, sign-on. Loads connection set-up; 0: never.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub reconnect_every: u64,
    /// Send a request again on the next connection (N times at most)
    /// when the peer ended the connection cleanly before answering it:
    /// for a switch that drains (answers what it read, then closes), such
    /// a request was never taken. Counted as `resent`; 0: lost.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub resend_on_close: u32,
    /// With --tls: no session resumption, so every handshake is a full
    /// one (certificates, key exchange) as for a fleet of terminals
    /// connecting for the first time.
    #[arg(long)]
    pub no_resume: bool,
}

/// "0.1%" or "0.1" (percent) as a share: 0.001.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v: f64 = t
        .strip_suffix('%')
        .unwrap_or(t)
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage (e.g. 0.1%)"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("`{s}`: a percentage from 0 to 100"));
    }
    Ok(v / 100.0)
}

fn resolve(flag: &str, addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{flag} {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{flag} {addr}: no address"))
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
        let target = resolve("--target", &self.target)?;
        let admin = self
            .admin
            .as_deref()
            .map(|a| resolve("--admin", a))
            .transpose()?;
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
            seed: self.seed.unwrap_or_else(super::random_seed),
            mix: Mix::parse(&self.mix)?,
            cards: self.cards,
            terminals: self.terminals,
            timeout: self.timeout,
            progress: !self.no_progress,
            threads: self.threads,
            max_error_rate: self.max_error_rate,
            admin,
            tls: self.tls_target()?,
            reconnect_every: self.reconnect_every,
            resend_on_close: self.resend_on_close,
            terminal_keys: self.terminal_keys()?,
        })
    }

    /// `--pin` and `--mac` with the keys of `--terminal-keys`.
    fn terminal_keys(
        &self,
    ) -> Result<Option<std::sync::Arc<crate::terminal_keys::TerminalKeys>>, String> {
        if !self.pin && !self.mac {
            return match &self.terminal_keys {
                Some(_) => Err("--terminal-keys needs --pin or --mac".into()),
                None => Ok(None),
            };
        }
        let Some(path) = &self.terminal_keys else {
            return Err("--pin and --mac need --terminal-keys FILE (the terminal's keys)".into());
        };
        crate::terminal_keys::TerminalKeys::load(path, self.pin, self.mac)
            .map(|k| Some(std::sync::Arc::new(k)))
    }

    /// The TLS flags as a client configuration, every file read now: a
    /// bad one is refused before the run, named with its flag.
    fn tls_target(&self) -> Result<Option<TlsTarget>, String> {
        if !self.tls {
            let given = [
                ("--ca", self.ca.is_some()),
                ("--cert", self.cert.is_some()),
                ("--key", self.key.is_some()),
                ("--server-name", self.server_name.is_some()),
            ];
            return match given.into_iter().find(|(_, given)| *given) {
                Some((flag, _)) => Err(format!("{flag} needs --tls")),
                None => Ok(None),
            };
        }
        let Some(ca) = self.ca.clone() else {
            return Err(
                "--tls needs --ca FILE: the CA certificate (PEM) that signed the server's".into(),
            );
        };
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err("--cert needs --key FILE: its private key".into()),
            (None, Some(_)) => return Err("--key needs --cert FILE: its certificate".into()),
            _ => {}
        }
        let settings = ClientSettings {
            ca,
            cert: self.cert.clone(),
            key: self.key.clone(),
            ..ClientSettings::default()
        };
        let mut config = settings.build().map_err(|e| self.tls_flag_error(&e))?;
        if self.no_resume {
            let mut c = (*config).clone();
            c.resumption = rustls::client::Resumption::disabled();
            config = std::sync::Arc::new(c);
        }
        let name = self.server_name.as_deref().unwrap_or("localhost");
        let server_name = tls::server_name(name).map_err(|e| format!("--server-name: {e}"))?;
        Ok(Some(TlsTarget {
            config,
            server_name,
        }))
    }

    /// A TLS material error with the flag of the file it names.
    fn tls_flag_error(&self, e: &TlsError) -> String {
        if let TlsError::File { path, .. } = e {
            let flags = [
                ("--ca", self.ca.as_ref()),
                ("--cert", self.cert.as_ref()),
                ("--key", self.key.as_ref()),
            ];
            if let Some((flag, _)) = flags.iter().find(|(_, p)| *p == Some(path)) {
                return format!("{flag} {e}");
            }
        }
        format!("--tls: {e}")
    }
}

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

/// The exit status of a program whose stdout was closed under it (a
/// reader like `head` that has read enough): what a shell reports for a
/// process ended by SIGPIPE, 128 + 13.
pub const CLOSED_STDOUT: u8 = 141;

/// Is this write error a closed stdout (the reader went away)?
pub fn is_closed_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

/// Runs the load, prints the report, writes the files asked for. Exit
/// status 0 when the run is clean, 1 when not ([`Report::problems`]), 2
/// when it could not run or a file could not be written, 141 (as for
/// SIGPIPE) when stdout was closed before the report was printed.
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
    let mut closed = false;
    let printed = {
        let mut out = std::io::stdout().lock();
        report
            .print_human(&mut out)
            .and_then(|()| std::io::Write::flush(&mut out))
    };
    match printed {
        Ok(()) => {}
        // The reader has gone (`loadtest ... | head`): nothing to say.
        Err(e) if is_closed_pipe(&e) => closed = true,
        Err(e) => {
            eprintln!("loadtest: printing the report: {e}");
            failed = true;
        }
    }
    for (what, path, written) in write_outputs(&report, &args) {
        if let Err(e) = written {
            eprintln!("loadtest: writing the {what} to {}: {e}", path.display());
            failed = true;
        }
    }
    if closed {
        return ExitCode::from(CLOSED_STDOUT);
    }
    let problems = report.problems();
    if !problems.is_empty() {
        eprintln!("loadtest: NOT CLEAN: {}", problems.join("; "));
        return ExitCode::from(report.exit_code());
    }
    if failed {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
