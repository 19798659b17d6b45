//! The acquirer host simulator behind `switchyard sim`.
//!
//! A TCP server that answers ISO 8583 like an acquirer host: 0800 -> 0810,
//! authorizations and financials by configurable [`rules`], reversals and
//! advices acknowledged, anything else 12. Faults (latency, dropped
//! answers, silence, closed connections, wrong STANs) can be set at start
//! in [`SimConfig`] and changed while running through a [`SimHandle`] or
//! the line-based [`control`] port. Everything it receives is kept in a
//! bounded record so tests can check what reached the host.
//!
//! With [`SimConfig::tls`] every connection is TLS: the handshake runs
//! in the connection's own task, under a timeout, so a slow or failed one
//! holds up no other connection and never the accept loop; a failure is
//! logged (peer address and reason, rate-limited) and counted.
//!
//! Shape: one accept task, one task per connection (`conn`), optionally
//! one control task. The knobs live in atomics read once per read batch;
//! counters and records are accumulated per connection and published once
//! per batch, so connections do not contend per message.

pub mod cli;
mod conn;
pub mod control;
pub mod rules;
pub mod settlement;
pub mod zone;

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::frame::{DEFAULT_MAX_FRAME, LengthHeader};
use crate::iso8583::{Mti, SmallText, Spec, specs};

pub use rules::Rules;

/// Default number of requests kept in the record.
pub const DEFAULT_RECORD_CAPACITY: usize = 1_000_000;

/// Everything the simulator needs at start.
#[derive(Clone)]
pub struct SimConfig {
    /// Port 0 picks a free port; see [`SimHandle::local_addr`].
    pub listen: SocketAddr,
    pub spec: &'static Spec,
    pub framing: LengthHeader,
    pub max_frame: usize,
    pub latency: Latency,
    /// 0100/0200 with DE4 above this are declined 51.
    pub decline_over_amount: Option<u64>,
    /// 0100/0200 whose PAN starts with one of these are declined 05.
    pub decline_prefixes: Vec<String>,
    /// Share of the remaining 0100/0200 declined 05 at random (0.0..=1.0).
    pub decline_ratio: f64,
    /// Seeds the decline and latency draws (each connection gets its own
    /// stream derived from it and the connection's sequence number).
    pub seed: u64,
    /// Drop every Nth transaction answer (0: never).
    pub drop_every: u64,
    /// Start without answering anything.
    pub stopped: bool,
    pub wrong_stan: bool,
    /// Close every new connection at once while set.
    pub refuse_connections: bool,
    /// The zone keys shared with the switch: requests' MACs and PINs
    /// checked, answers MACed.
    pub zone: Option<Arc<zone::ZoneKeys>>,
    /// Address of the line-based control port, if wanted.
    pub control: Option<SocketAddr>,
    /// Requests kept in the record; the oldest is dropped when full. 0
    /// turns recording off (load tests).
    pub record_capacity: usize,
    /// TLS on every connection (`tls::ServerSettings::build`; with a
    /// client CA and `require_client_cert`, clients without a certificate
    /// it accepts are refused in the handshake). `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Longest a TLS handshake may take: a client that connects and says
    /// nothing holds only its own task, and only this long.
    pub tls_handshake_timeout: Duration,
    /// Keep a settlement file of what was approved and not reversed
    /// ([`settlement`]), written here on the control commands
    /// `settlement`, `cutover` and `skew N`, and at stop.
    pub settlement_file: Option<std::path::PathBuf>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9583)),
            spec: specs::iso87ascii(),
            framing: LengthHeader::Binary2,
            max_frame: DEFAULT_MAX_FRAME,
            latency: Latency::None,
            decline_over_amount: None,
            decline_prefixes: Vec::new(),
            decline_ratio: 0.0,
            seed: 0x5EED,
            drop_every: 0,
            stopped: false,
            wrong_stan: false,
            refuse_connections: false,
            control: None,
            zone: None,
            record_capacity: DEFAULT_RECORD_CAPACITY,
            tls: None,
            tls_handshake_timeout: Duration::from_secs(10),
            settlement_file: None,
        }
    }
}

impl fmt::Debug for SimConfig {
    // By hand: the derived form would print the whole field table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("listen", &self.listen)
            .field("spec", &self.spec.name)
            .field("framing", &self.framing)
            .field("max_frame", &self.max_frame)
            .field("latency", &self.latency)
            .field("decline_over_amount", &self.decline_over_amount)
            .field("decline_prefixes", &self.decline_prefixes)
            .field("decline_ratio", &self.decline_ratio)
            .field("seed", &self.seed)
            .field("drop_every", &self.drop_every)
            .field("stopped", &self.stopped)
            .field("wrong_stan", &self.wrong_stan)
            .field("refuse_connections", &self.refuse_connections)
            .field("control", &self.control)
            .field("zone", &self.zone.is_some())
            .field("record_capacity", &self.record_capacity)
            .field("tls", &self.tls.is_some())
            .field("tls_handshake_timeout", &self.tls_handshake_timeout)
            .field("settlement_file", &self.settlement_file)
            .finish()
    }
}

/// Delay before each answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Latency {
    #[default]
    None,
    Fixed(Duration),
    /// Uniform between the two bounds (inclusive), drawn per answer.
    Uniform(Duration, Duration),
}

/// Latencies are kept as two microsecond counts in one atomic word, so a
/// reader never sees half of an update.
const LATENCY_MAX_US: u64 = u32::MAX as u64;

impl Latency {
    /// `N` (milliseconds), `MIN-MAX`, or `0` / `off` / `none`.
    pub fn parse_ms(s: &str) -> Result<Latency, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
            return Ok(Latency::None);
        }
        let ms = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{t}` is not a number of milliseconds"))
        };
        let latency = match s.split_once('-') {
            None => Latency::Fixed(Duration::from_millis(ms(s)?)),
            Some((lo, hi)) => {
                let (lo, hi) = (ms(lo)?, ms(hi)?);
                if lo > hi {
                    return Err(format!("latency range {lo}-{hi} is upside down"));
                }
                Latency::Uniform(Duration::from_millis(lo), Duration::from_millis(hi))
            }
        };
        let (_, max) = latency.bounds_us();
        if max >= LATENCY_MAX_US {
            return Err(format!("latency `{s}` is too long"));
        }
        Ok(latency.normalized())
    }

    /// Zero delays become `None`, equal bounds become `Fixed`.
    fn normalized(self) -> Latency {
        Latency::from_bounds_us(self.bounds_us())
    }

    fn bounds_us(self) -> (u64, u64) {
        let us = |d: Duration| (d.as_micros() as u64).min(LATENCY_MAX_US);
        match self {
            Latency::None => (0, 0),
            Latency::Fixed(d) => (us(d), us(d)),
            Latency::Uniform(a, b) => (us(a.min(b)), us(a.max(b))),
        }
    }

    fn from_bounds_us((lo, hi): (u64, u64)) -> Latency {
        match (lo, hi) {
            (_, 0) => Latency::None,
            (lo, hi) if lo == hi => Latency::Fixed(Duration::from_micros(lo)),
            (lo, hi) => Latency::Uniform(Duration::from_micros(lo), Duration::from_micros(hi)),
        }
    }

    fn pack(self) -> u64 {
        let (lo, hi) = self.bounds_us();
        lo << 32 | hi
    }

    fn unpack(word: u64) -> (u64, u64) {
        (word >> 32, word & LATENCY_MAX_US)
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Latency::None => f.write_str("none"),
            Latency::Fixed(d) => write!(f, "{d:?}"),
            Latency::Uniform(a, b) => write!(f, "{a:?}-{b:?}"),
        }
    }
}

/// One request as the simulator received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Sequence number of the connection it came on (0 for the first).
    pub connection: u64,
    pub mti: Mti,
    /// DE11; 0 when absent.
    pub stan: u32,
    /// DE41 without its trailing padding; empty when absent.
    pub terminal_id: String,
    /// DE4.
    pub amount: Option<u64>,
    /// DE39 of the answer; `None` when not answered.
    pub response_code: Option<[u8; 2]>,
    /// Deliberately not answered: drop-every, or the simulator was stopped.
    pub dropped: bool,
    /// DE90, original data elements (reversals).
    pub original_data: Option<String>,
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Requests parsed (answered or not).
    pub received: u64,
    /// Answers handed to the socket (after their latency, if any).
    pub answered: u64,
    /// Requests deliberately not answered (drop-every or stopped).
    pub dropped: u64,
    /// Frames that did not parse, and broken length headers.
    pub unparseable: u64,
    /// Messages that are not requests, and answers that could not be packed.
    pub ignored: u64,
    /// Connections open now.
    pub connections: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections closed at once because of `refuse_connections`.
    pub refused: u64,
    /// Records dropped from the full record.
    pub evicted: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS handshakes that failed or timed out (each logged).
    pub tls_handshake_failures: u64,
    /// Transaction requests answered 63: their MAC missing or wrong.
    pub mac_refused: u64,
    /// PIN blocks that decrypted to the PIN expected (or to a valid
    /// block, when none is expected) under the zone PIN key.
    pub pin_verified: u64,
    /// PIN blocks refused: 81 (not valid under the key) or 55 (another PIN).
    pub pin_refused: u64,
}

impl fmt::Display for SimStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} answered={} dropped={} unparseable={} ignored={} connections={} accepted={} refused={} evicted={} tls_handshakes={} tls_handshake_failures={} mac_refused={} pin_verified={} pin_refused={}",
            self.received,
            self.answered,
            self.dropped,
            self.unparseable,
            self.ignored,
            self.connections,
            self.accepted,
            self.refused,
            self.evicted,
            self.tls_handshakes,
            self.tls_handshake_failures,
            self.mac_refused,
            self.pin_verified,
            self.pin_refused
        )
    }
}

/// Runtime-changeable faults, read without locks on the hot path.
struct Knobs {
    latency: AtomicU64,
    drop_every: AtomicU64,
    /// Transaction answers counted towards drop-every since it was set.
    drop_count: AtomicU64,
    stopped: AtomicBool,
    wrong_stan: AtomicBool,
    refuse: AtomicBool,
}

/// The knobs as one batch of frames sees them.
#[derive(Clone, Copy)]
struct Faults {
    latency_us: (u64, u64),
    drop_every: u64,
    stopped: bool,
    wrong_stan: bool,
}

impl Knobs {
    fn faults(&self) -> Faults {
        Faults {
            latency_us: Latency::unpack(self.latency.load(Relaxed)),
            drop_every: self.drop_every.load(Relaxed),
            stopped: self.stopped.load(Relaxed),
            wrong_stan: self.wrong_stan.load(Relaxed),
        }
    }

    /// Counts one transaction answer; true if it is the one to drop.
    fn drop_tick(&self, every: u64) -> bool {
        (self.drop_count.fetch_add(1, Relaxed) + 1) % every == 0
    }
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    answered: AtomicU64,
    dropped: AtomicU64,
    unparseable: AtomicU64,
    ignored: AtomicU64,
    connections: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_handshake_failures: AtomicU64,
    mac_refused: AtomicU64,
    pin_verified: AtomicU64,
    pin_refused: AtomicU64,
}

/// A record as kept: compact and without allocation for the common case;
/// turned into [`Received`] only when someone asks.
struct Entry {
    connection: u64,
    mti: Mti,
    stan: u32,
    terminal_id: SmallText,
    amount: Option<u64>,
    response_code: Option<[u8; 2]>,
    dropped: bool,
    original_data: Option<Box<[u8]>>,
}

impl Entry {
    fn to_received(&self) -> Received {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Received {
            connection: self.connection,
            mti: self.mti,
            stan: self.stan,
            terminal_id: text(self.terminal_id.trimmed()),
            amount: self.amount,
            response_code: self.response_code,
            dropped: self.dropped,
            original_data: self.original_data.as_deref().map(text),
        }
    }
}

#[derive(Default)]
struct Record {
    entries: VecDeque<Entry>,
    evicted: u64,
}

struct Shared {
    spec: &'static Spec,
    framing: LengthHeader,
    max_frame: usize,
    rules: Rules,
    zone: Option<Arc<zone::ZoneKeys>>,
    seed: u64,
    knobs: Knobs,
    counters: Counters,
    record: Mutex<Record>,
    record_capacity: usize,
    /// Bumped to make every connection close; on shutdown too.
    close: watch::Sender<u64>,
    shutdown: AtomicBool,
    /// Woken whenever counters or the record change, for [`SimHandle::wait_until`].
    changed: Notify,
    next_connection: AtomicU64,
    approvals: AtomicU64,
    local_addr: SocketAddr,
    control_addr: Option<SocketAddr>,
    tls: Option<Arc<rustls::ServerConfig>>,
    tls_handshake_timeout: Duration,
    /// One line per second about failed handshakes, however many fail.
    handshake_log: Mutex<crate::throttle::LogThrottle>,
    /// With a settlement file: what it holds so far.
    settlement: Option<Mutex<settlement::Book>>,
}

impl Shared {
    fn record(&self) -> MutexGuard<'_, Record> {
        crate::sync::lock(&self.record)
    }

    /// Moves a connection's batch of entries into the record.
    fn push_records(&self, batch: &mut Vec<Entry>) {
        let cap = self.record_capacity;
        let mut r = self.record();
        let over = (r.entries.len() + batch.len()).saturating_sub(cap);
        let from_record = over.min(r.entries.len());
        r.entries.drain(..from_record);
        let from_batch = over - from_record;
        r.evicted += over as u64;
        r.entries.extend(batch.drain(..).skip(from_batch));
    }

    fn is_shut_down(&self) -> bool {
        self.shutdown.load(SeqCst)
    }

    /// Resolves once [`SimHandle::shutdown`] has been called.
    async fn until_shutdown(&self) {
        // Subscribe before checking, so a shutdown in between is not missed.
        let mut rx = self.close.subscribe();
        while !self.is_shut_down() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Controls a running simulator. Cheap to clone; the simulator keeps
/// running when every handle is dropped, until [`SimHandle::shutdown`].
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHandle")
            .field("local_addr", &self.shared.local_addr)
            .field("control_addr", &self.shared.control_addr)
            .finish()
    }
}

impl SimHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.shared.control_addr
    }

    /// Applies to answers decided from now on; answers already waiting
    /// keep their time.
    pub fn set_latency(&self, latency: Latency) {
        self.shared.knobs.latency.store(latency.pack(), Relaxed);
    }

    pub fn latency(&self) -> Latency {
        Latency::from_bounds_us(Latency::unpack(self.shared.knobs.latency.load(Relaxed)))
    }

    /// Drops every `n`th transaction answer from now on, counting afresh
    /// (0 turns dropping off).
    pub fn set_drop_every(&self, n: u64) {
        let k = &self.shared.knobs;
        k.drop_count.store(0, Relaxed);
        k.drop_every.store(n, Relaxed);
    }

    /// Answers nothing, not even 0800, until [`SimHandle::resume`]. What
    /// arrives meanwhile is recorded as dropped and never answered.
    pub fn stop_answering(&self) {
        self.shared.knobs.stopped.store(true, Relaxed);
    }

    pub fn resume(&self) {
        self.shared.knobs.stopped.store(false, Relaxed);
    }

    /// Closes every connection the simulator has accepted so far (answers
    /// still waiting for their latency are lost). New connections are
    /// served as usual unless [`SimHandle::set_refuse_connections`].
    pub fn close_connections(&self) {
        self.shared.close.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// While set, every new connection is closed as soon as it is
    /// accepted. Setting it does not close current ones; see
    /// [`SimHandle::close_connections`].
    pub fn set_refuse_connections(&self, refuse: bool) {
        self.shared.knobs.refuse.store(refuse, SeqCst);
    }

    /// Answers transactions with DE11 + 1 (mod 1 000 000), so they match
    /// nothing at the client. Network management is answered correctly.
    pub fn set_wrong_stan(&self, on: bool) {
        self.shared.knobs.wrong_stan.store(on, Relaxed);
    }

    /// A snapshot of the record, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .record()
            .entries
            .iter()
            .map(Entry::to_received)
            .collect()
    }

    /// Empties the record (counters are kept).
    pub fn clear_received(&self) {
        self.shared.record().entries.clear();
    }

    pub fn stats(&self) -> SimStats {
        let c = &self.shared.counters;
        SimStats {
            received: c.received.load(Relaxed),
            answered: c.answered.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            unparseable: c.unparseable.load(Relaxed),
            ignored: c.ignored.load(Relaxed),
            connections: c.connections.load(Relaxed),
            accepted: c.accepted.load(Relaxed),
            refused: c.refused.load(Relaxed),
            evicted: self.shared.record().evicted,
            tls_handshakes: c.tls_handshakes.load(Relaxed),
            tls_handshake_failures: c.tls_handshake_failures.load(Relaxed),
            mac_refused: c.mac_refused.load(Relaxed),
            pin_verified: c.pin_verified.load(Relaxed),
            pin_refused: c.pin_refused.load(Relaxed),
        }
    }

    /// Waits until `cond` holds, re-checking whenever the simulator has
    /// received, answered, accepted or closed something. Returns whether it
    /// held before `timeout`. For tests: "wait until the host got the
    /// 0420" without sleeping.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&SimHandle) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a change in between wakes us.
            notified.as_mut().enable();
            if cond(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return cond(self);
            }
        }
    }

    fn book(&self) -> Result<MutexGuard<'_, settlement::Book>, String> {
        match &self.shared.settlement {
            Some(b) => Ok(crate::sync::lock(b)),
            None => Err("no settlement file (start with --settlement-file FILE)".into()),
        }
    }

    /// Writes the settlement file now; says how many records and where.
    pub fn write_settlement(&self) -> Result<String, String> {
        let book = self.book()?;
        let n = book
            .write()
            .map_err(|e| format!("{}: {e}", book.path().display()))?;
        Ok(format!(
            "{n} records written to {} ({} reversals named nothing kept)",
            book.path().display(),
            book.unmatched_reversals()
        ))
    }

    /// Writes the settlement file, then starts a new day: the records
    /// after this go to the next file written.
    pub fn settlement_cutover(&self) -> Result<String, String> {
        let said = self.write_settlement()?;
        self.book()?.cutover();
        Ok(format!("{said}; a new day begins"))
    }

    /// Alters `n` of the settlement file's records (amounts, drops, adds:
    /// see [`settlement`]) and writes it.
    pub fn skew_settlement(&self, n: usize) -> Result<String, String> {
        let said = self.book()?.skew(n)?;
        Ok(format!("{said}; {}", self.write_settlement()?))
    }

    /// Records in the settlement file now.
    pub fn settled(&self) -> Option<usize> {
        self.book().ok().map(|b| b.len())
    }

    /// Stops accepting, closes every connection and the control port. The
    /// tasks end shortly after; the listening ports are released then.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, SeqCst);
        self.close_connections();
    }
}

/// Binds the listener (and the control port, if configured), starts the
/// simulator on the current tokio runtime and returns at once.
pub async fn spawn(config: SimConfig) -> std::io::Result<SimHandle> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    if !(0.0..=1.0).contains(&config.decline_ratio) {
        return Err(invalid(format!(
            "decline ratio {} is not between 0 and 1",
            config.decline_ratio
        )));
    }
    if let Some(p) = config
        .decline_prefixes
        .iter()
        .find(|p| p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(invalid(format!(
            "decline prefix `{p}` is not a run of digits"
        )));
    }
    let listener = TcpListener::bind(config.listen).await?;
    let local_addr = listener.local_addr()?;
    let control = match config.control {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let control_addr = match &control {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let shared = Arc::new(Shared {
        spec: config.spec,
        framing: config.framing,
        max_frame: config.max_frame,
        rules: Rules {
            decline_over_amount: config.decline_over_amount,
            decline_prefixes: config
                .decline_prefixes
                .iter()
                .map(|p| p.as_bytes().into())
                .collect(),
            decline_ratio: config.decline_ratio,
        },
        zone: config.zone.clone(),
        seed: config.seed,
        knobs: Knobs {
            latency: AtomicU64::new(config.latency.pack()),
            drop_every: AtomicU64::new(config.drop_every),
            drop_count: AtomicU64::new(0),
            stopped: AtomicBool::new(config.stopped),
            wrong_stan: AtomicBool::new(config.wrong_stan),
            refuse: AtomicBool::new(config.refuse_connections),
        },
        counters: Counters::default(),
        record: Mutex::new(Record::default()),
        record_capacity: config.record_capacity,
        close: watch::Sender::new(0),
        shutdown: AtomicBool::new(false),
        changed: Notify::new(),
        next_connection: AtomicU64::new(0),
        approvals: AtomicU64::new(0),
        local_addr,
        control_addr,
        tls: config.tls,
        tls_handshake_timeout: config.tls_handshake_timeout,
        handshake_log: Mutex::new(crate::throttle::LogThrottle::new(Duration::from_secs(1))),
        settlement: config
            .settlement_file
            .map(|path| Mutex::new(settlement::Book::new(path))),
    });
    let handle = SimHandle { shared };
    tokio::spawn(accept_loop(listener, handle.shared.clone()));
    if let Some(listener) = control {
        tokio::spawn(control::serve(listener, handle.clone()));
    }
    Ok(handle)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let shutdown = shared.clone();
    let shutdown = shutdown.until_shutdown();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                warn!("sim: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if shared.knobs.refuse.load(SeqCst) {
            shared.counters.refused.fetch_add(1, Relaxed);
            drop(stream);
            shared.changed.notify_waiters();
            continue;
        }
        let id = shared.next_connection.fetch_add(1, Relaxed);
        // Subscribed here, not in the task, so a close requested after the
        // accept reaches this connection too.
        let close = shared.close.subscribe();
        shared.counters.accepted.fetch_add(1, Relaxed);
        shared.counters.connections.fetch_add(1, Relaxed);
        shared.changed.notify_waiters();
        tokio::spawn(conn::serve(stream, peer, shared.clone(), close, id));
    }
    debug!("sim: listener closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_parses_and_round_trips_through_the_atomic() {
        let ms = Duration::from_millis;
        assert_eq!(Latency::parse_ms("50"), Ok(Latency::Fixed(ms(50))));
        assert_eq!(
            Latency::parse_ms("10-100"),
            Ok(Latency::Uniform(ms(10), ms(100)))
        );
        assert_eq!(Latency::parse_ms("7-7"), Ok(Latency::Fixed(ms(7))));
        assert_eq!(Latency::parse_ms("0"), Ok(Latency::None));
        assert_eq!(Latency::parse_ms("off"), Ok(Latency::None));
        assert!(Latency::parse_ms("100-10").is_err());
        assert!(Latency::parse_ms("ten").is_err());
        assert!(Latency::parse_ms("5-").is_err());
        assert!(Latency::parse_ms("99999999999").is_err());
        for l in [
            Latency::None,
            Latency::Fixed(ms(3)),
            Latency::Uniform(ms(1), ms(2_000_000)),
        ] {
            assert_eq!(Latency::from_bounds_us(Latency::unpack(l.pack())), l, "{l}");
        }
        assert_eq!(
            Latency::Uniform(ms(9), ms(2)).normalized(),
            Latency::Uniform(ms(2), ms(9))
        );
    }

    fn entry(stan: u32) -> Entry {
        Entry {
            connection: 0,
            mti: Mti::FINANCIAL,
            stan,
            terminal_id: SmallText::new(b"T1      ").unwrap_or(SmallText::EMPTY),
            amount: None,
            response_code: None,
            dropped: false,
            original_data: None,
        }
    }

    #[tokio::test]
    async fn the_record_is_bounded_and_counts_what_it_drops() {
        let h = spawn(SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            record_capacity: 3,
            ..SimConfig::default()
        })
        .await
        .expect("binds");
        let s = &h.shared;
        s.push_records(&mut vec![entry(1), entry(2)]);
        s.push_records(&mut vec![entry(3), entry(4)]);
        let stans = |h: &SimHandle| h.received().iter().map(|r| r.stan).collect::<Vec<_>>();
        assert_eq!(stans(&h), [2, 3, 4]);
        s.push_records(&mut (5..10).map(entry).collect());
        assert_eq!(stans(&h), [7, 8, 9]);
        assert_eq!(h.stats().evicted, 6);
        assert_eq!(h.received()[0].terminal_id, "T1");
        h.shutdown();
    }

    #[tokio::test]
    async fn bad_settings_are_refused() {
        let bad = |c: SimConfig| async { spawn(c).await.err().map(|e| e.to_string()) };
        let base = || SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..SimConfig::default()
        };
        let e = bad(SimConfig {
            decline_ratio: 1.5,
            ..base()
        })
        .await;
        assert!(e.is_some_and(|e| e.contains("1.5")));
        let e = bad(SimConfig {
            decline_prefixes: vec!["47x".into()],
            ..base()
        })
        .await;
        assert!(e.is_some_and(|e| e.contains("47x")));
    }
}
