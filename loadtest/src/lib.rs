//! The load generator behind `loadtest` and `switchyard demo`.
//!
//! Shape: [`run`] starts one OS thread per worker (by default one per core,
//! at most two, to leave the rest of a small box to the switch; `threads`
//! asks for exactly N), each with its own
//! current-thread tokio runtime; connections are dealt round-robin to the
//! workers and each is one task that owns its socket, its generator
//! ([`messages`]) and its in-flight table ([`conn`]). Figures are accumulated
//! per worker without locks ([`stats`]) and merged into a [`Report`] at the
//! end. The main thread only draws the progress line.
//!
//! * Open loop (`Mode::Open`): each connection sends on a fixed schedule;
//!   latency counts from the intended send time, so a stall of the peer (or
//!   of us) shows up in the figures instead of silently slowing the rate
//!   (coordinated omission, as wrk2 corrects it). One pacer per worker
//!   ([`pacer`]: a 50 µs timerfd tick, not tokio's millisecond timer, and
//!   no spinning) wakes each connection when its next send is due.
//!   Lateness against the schedule is reported (p50/p99/max, share over
//!   1 ms), and loudly when the generator falls behind.
//! * Closed loop (`Mode::Closed`): K requests in flight per connection, the
//!   next sent as soon as one is answered. Latency counts from the actual
//!   send: a closed loop waits for the peer, so it is *not* corrected for
//!   coordinated omission (a stall delays the sends it would have measured).
//!
//! Connections are plain TCP or, with [`LoadConfig::tls`], TLS
//! (`switchyard_protocol::net::Conn` either way, so the plain path costs
//! what a bare socket does). Each connection signs on (0800) once it is
//! open; with [`LoadConfig::reconnect_every`] it is closed after N
//! requests and opened again, to load connection set-up. A TLS 1.3
//! server checks a client certificate after the client's handshake has
//! ended, so a refusal reaches the client at its first read, as an alert
//! or a close before any answer: that counts as a failed handshake, not a
//! failed sign-on. Failed handshakes make a run not clean.
//!
//! Runs against a switch that stays up are kept apart: the seed (random
//! unless given) places each run's terminal ids (DE41) and STAN sequences
//! in its own part of the key space, so a later run is not answered 94
//! (duplicate) for an earlier run's keys. What repeated runs still share
//! is the card population, and so the switch's fraud history of those
//! cards (velocity, declines, card testing): later runs may see more 59s.

pub mod build_info;
pub mod cli;
mod conn;
pub mod messages;
mod pacer;
mod report;
pub mod scrape;
mod stats;
pub mod terminal_keys;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchyard_protocol::frame::LengthHeader;
use switchyard_protocol::iso8583::{Spec, specs};

pub use messages::sample_messages;
pub use report::{Report, SecondRow, de39_meaning, is_switch_refusal};
pub use stats::{HandshakeFailure, Money, Tally};

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// A fixed total rate (requests per second), spread over connections.
    Open { rate: f64 },
    /// This many requests in flight per connection.
    Closed { in_flight: usize },
}

/// Shares of each kind of request (relative weights, any scale).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// 0200.
    pub purchase: u32,
    /// 0100.
    pub authorization: u32,
    /// 0400 of an earlier approved request of the same connection.
    pub reversal: u32,
    /// Requests built to trip fraud rules.
    pub fraud: u32,
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            purchase: 70,
            authorization: 20,
            reversal: 5,
            fraud: 5,
        }
    }
}

impl Mix {
    /// Parses "purchase=70,auth=20,reversal=5,fraud=5"; kinds left out are 0.
    pub fn parse(s: &str) -> Result<Mix, String> {
        let mut m = Mix {
            purchase: 0,
            authorization: 0,
            reversal: 0,
            fraud: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("mix: `{part}` is not kind=share"))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("mix: share `{v}` of `{k}` is not a whole number"))?;
            match k.trim() {
                "purchase" | "0200" => m.purchase = v,
                "auth" | "authorization" | "0100" => m.authorization = v,
                "reversal" | "0400" => m.reversal = v,
                "fraud" => m.fraud = v,
                other => {
                    return Err(format!(
                        "mix: unknown kind `{other}` (known: purchase, auth, reversal, fraud)"
                    ));
                }
            }
        }
        if m.purchase + m.authorization + m.reversal + m.fraud == 0 {
            return Err("mix: all shares are 0".into());
        }
        Ok(m)
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub connections: usize,
    pub mode: Mode,
    /// Measured period (after the warmup).
    pub duration: Duration,
    /// Sent before the measured period; excluded from the report's figures.
    pub warmup: Duration,
    pub spec: &'static Spec,
    pub framing: LengthHeader,
    pub seed: u64,
    pub mix: Mix,
    /// Card population: Luhn-valid PANs over several BIN ranges.
    pub cards: usize,
    /// Terminal ids (DE41), dealt to connections so none shares one; at
    /// least one per connection.
    pub terminals: usize,
    /// A request unanswered this long counts as timed out.
    pub timeout: Duration,
    /// Live progress line on stderr.
    pub progress: bool,
    /// Worker threads; 0 picks one per core, at most `MAX_WORKERS`; N
    /// asks for exactly N (never more than one per connection).
    pub threads: usize,
    /// Largest share (0..1) of answers that may be the switch's own
    /// refusals (see [`is_switch_refusal`]), and of requests that may time
    /// out, for the run to count as clean.
    pub max_error_rate: f64,
    /// The target switch's admin address: its `/metrics` are read at the
    /// start and end of the measured period for the switch's own latency.
    pub admin: Option<SocketAddr>,
    /// TLS to the target (each connection's handshake before its
    /// sign-on); `None`: plain TCP.
    pub tls: Option<TlsTarget>,
    /// Close each connection after this many requests on it and open a
    /// new one (TCP connect, TLS handshake, sign-on); 0: never.
    pub reconnect_every: u64,
    /// Requests without an answer when the peer ended the connection
    /// cleanly (FIN, not a reset or an error) are sent again on the next
    /// connection, each this many times at most; 0: they are lost. For a
    /// switch that ends a connection only after answering every request
    /// it read (a drain: switchyard throws away what came after its stop
    /// and then closes), such a request was never taken. Counted as
    /// `resent`.
    pub resend_on_close: u32,
    /// `--pin` / `--mac`: PIN blocks and MACs made as a terminal would,
    /// answers' MACs checked.
    pub terminal_keys: Option<Arc<terminal_keys::TerminalKeys>>,
}

/// How to reach a TLS target: whom to trust and what to present
/// (`tls::ClientSettings::build`), and the name its certificate must carry.
#[derive(Clone)]
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    // By hand: the configuration holds the client's key, which has no
    // business in a debug print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("server_name", &self.server_name)
            .field(
                "client_certificate",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for LoadConfig {
    fn default() -> LoadConfig {
        LoadConfig {
            target: SocketAddr::from(([127, 0, 0, 1], 8583)),
            connections: 64,
            mode: Mode::Closed { in_flight: 1 },
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            spec: specs::iso87ascii(),
            framing: LengthHeader::Binary2,
            seed: 1,
            mix: Mix::default(),
            cards: 100_000,
            terminals: 1_000,
            timeout: Duration::from_secs(5),
            progress: true,
            threads: 0,
            max_error_rate: 0.001,
            admin: None,
            tls: None,
            reconnect_every: 0,
            resend_on_close: 0,
            terminal_keys: None,
        }
    }
}

/// A seed for a run nobody gave one: random, so that each run gets its own
/// key space (see the module doc). Kept below 2^32 so it is easy to retype
/// with `--seed`.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(unix_now_ms());
    h.write_u32(std::process::id());
    h.finish() & 0xFFFF_FFFF
}

/// Milliseconds since the Unix epoch (0 if the clock is before it). The
/// load generator is a tool, not a core: it reads the wall clock itself.
fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Most worker threads picked automatically: the generator must leave
/// cores to the switch when both share a small box.
const MAX_WORKERS: usize = 2;
/// Time left after the last answer's deadline before giving up on a
/// connection (its outstanding requests then count as lost).
const GRACE: Duration = Duration::from_millis(250);

/// Runs the load and returns the figures. Blocks; builds its own threads
/// and runtimes, so it can be called from anywhere except inside an async
/// task of a current-thread runtime (use `spawn_blocking`). Returns within
/// warmup + duration + timeout + a small grace.
pub fn run(config: LoadConfig) -> std::io::Result<Report> {
    validate(&config)?;
    let auto = MAX_WORKERS.min(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let workers = config
        .connections
        .min(if config.threads == 0 {
            auto
        } else {
            config.threads
        })
        .max(1);
    let progress = Arc::new(stats::Live::default());
    let started_unix_ms = unix_now_ms();
    let de7 = switchyard_protocol::iso8583::datetime::transmission_time(started_unix_ms / 1000);
    // Every worker shares one start, so connection schedules interleave.
    let start = Instant::now() + Duration::from_millis(20);
    let plan = Arc::new(conn::Plan::new(&config, start, de7, GRACE));
    let mut handles = Vec::with_capacity(workers);
    for w in 0..workers {
        let plan = plan.clone();
        let live = progress.clone();
        let conns: Vec<usize> = (w..config.connections).step_by(workers).collect();
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{w}"))
            .spawn(move || conn::worker(plan, conns, live))?;
        handles.push(h);
    }
    let total = config.warmup + config.duration;
    let bar = progress_bar(config.progress, total);
    // The switch's own view, read when the measured period starts and
    // again when every answer is in (to within the 100 ms of this loop).
    let mut scrape_before: Option<Result<scrape::Histogram, String>> = None;
    loop {
        if let (Some(admin), None) = (config.admin, &scrape_before)
            && start.elapsed() >= config.warmup
        {
            scrape_before = Some(scrape::request_latency(admin));
        }
        if handles.iter().all(|h| h.is_finished()) {
            break;
        }
        let mut nap = Duration::from_millis(100);
        if config.admin.is_some() && scrape_before.is_none() {
            nap = nap.min(config.warmup.saturating_sub(start.elapsed()));
        }
        std::thread::sleep(nap);
        if let Some(bar) = &bar {
            let el = start.elapsed().min(total);
            bar.set_position(el.as_millis() as u64);
            let behind = progress.late.load(Relaxed);
            bar.set_message(format!(
                "sent {} answered {} timed out {} lost {}{}",
                progress.sent.load(Relaxed),
                progress.answered.load(Relaxed),
                progress.timed_out.load(Relaxed),
                progress.lost.load(Relaxed),
                if behind > 0 {
                    format!("  BEHIND SCHEDULE: {behind} sends late >1ms")
                } else {
                    String::new()
                }
            ));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut merged = stats::WorkerStats::new(&plan);
    for h in handles {
        let s = h
            .join()
            .map_err(|_| std::io::Error::other("a load generator thread panicked"))??;
        merged.merge(s);
    }
    let switch = config.admin.map(|admin| {
        let before = scrape_before.unwrap_or_else(|| scrape::request_latency(admin))?;
        let after = scrape::request_latency(admin)?;
        Ok(after.since(&before))
    });
    let mut report = Report::new(&config, merged, workers, started_unix_ms);
    if let Some(s) = switch {
        report.set_switch_latency(s);
    }
    if let Some(warning) = report.schedule_warning() {
        eprintln!("loadtest: WARNING: {warning}");
    }
    Ok(report)
}

fn validate(c: &LoadConfig) -> std::io::Result<()> {
    let bad = |m: &str| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, m));
    if c.connections == 0 {
        return bad("connections must be at least 1");
    }
    match c.mode {
        Mode::Open { rate } if !(rate.is_finite() && rate > 0.0) => {
            return bad("rate must be a positive number");
        }
        Mode::Closed { in_flight } if in_flight == 0 || in_flight > conn::MAX_IN_FLIGHT => {
            return bad("in-flight must be between 1 and 65536");
        }
        _ => {}
    }
    if c.duration.is_zero() {
        return bad("duration must be positive");
    }
    if c.duration + c.warmup > Duration::from_secs(stats::MAX_SECONDS as u64) {
        return bad("warmup + duration must be at most 24 hours");
    }
    if c.timeout.is_zero() || c.timeout > Duration::from_secs(60) {
        return bad("timeout must be between 1 ms and 60 s");
    }
    if !(0.0..=1.0).contains(&c.max_error_rate) {
        return bad("max error rate must be between 0 and 100%");
    }
    Ok(())
}

fn progress_bar(enabled: bool, total: Duration) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total.as_millis() as u64),
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    let style = indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    Some(bar)
}
