//! One connection: connect (and with TLS, handshake), sign on, send on
//! schedule (open loop) or keep K in flight (closed loop), match answers,
//! time out, reconnect; with `reconnect_every`, close and open again
//! after that many requests.
//!
//! The socket is a `net::Conn`, plain or TLS, driven from the TCP
//! socket's readiness either way: the plain path makes the same calls as
//! a bare `TcpStream` would (one `recv` per wake, one `send` per batch).
//!
//! Requests in flight live in a ring indexed by sequence number; a
//! request's STAN is derived from its sequence number so that the slot of
//! an answer is found from its DE11 without a map, and the ring's tail is
//! also the oldest deadline (the timeout is the same for all), so timing
//! out is a scan from the tail. Nothing is allocated per message: frames
//! are packed straight into one write buffer and flushed with one write
//! per batch.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use switchyard_protocol::frame::{DEFAULT_MAX_FRAME, FrameCodec};
use switchyard_protocol::iso8583::Message;
use switchyard_protocol::net::{self, TlsConn};

use super::messages::{Generator, Kind, Request, parse_terminal_id};
use super::pacer::Pacer;
use super::stats::{HandshakeFailure, Live, WorkerStats};
use super::{LoadConfig, Mode};

/// Largest in-flight table per connection.
pub const MAX_IN_FLIGHT: usize = 65_536;
/// Most requests packed per turn before writing: keeps one turn short so
/// answers are read promptly, and the write buffer bounded.
const BATCH: usize = 256;
/// A send later than this against its schedule counts as late.
const LATE_NS: u64 = 1_000_000;
const READ_CHUNK: usize = 64 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The run's timeline and settings, shared read-only by all workers.
pub struct Plan {
    pub config: LoadConfig,
    pub start: Instant,
    /// Nanoseconds from `start`.
    pub measure_from: u64,
    pub send_end: u64,
    pub hard_end: u64,
    pub de7: [u8; 10],
    /// Seconds in the measured period (rounded up).
    pub seconds: usize,
}

impl Plan {
    pub fn new(config: &LoadConfig, start: Instant, de7: [u8; 10], grace: Duration) -> Plan {
        let ns = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        let measure_from = ns(config.warmup);
        let send_end = measure_from + ns(config.duration);
        Plan {
            config: config.clone(),
            start,
            measure_from,
            send_end,
            hard_end: send_end + ns(config.timeout) + ns(grace),
            de7,
            seconds: config.duration.as_secs_f64().ceil() as usize,
        }
    }

    pub(super) fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn at(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.start + Duration::from_nanos(ns))
    }
}

/// A worker thread: one current-thread runtime running its connections.
pub fn worker(plan: Arc<Plan>, conns: Vec<usize>, live: Arc<Live>) -> io::Result<WorkerStats> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stats = Rc::new(RefCell::new(WorkerStats::new(&plan)));
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        // Open loop: one pacer owns the schedule of this worker's
        // connections (see `pacer`).
        let pacer = match plan.config.mode {
            Mode::Open { .. } => Pacer::new(&plan, conns.len()),
            Mode::Closed { .. } => None,
        };
        if let Some(p) = &pacer {
            tokio::task::spawn_local(p.clone().run(plan.clone()));
        }
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(slot, c)| {
                let pace = pacer.clone().map(|p| (p, slot));
                let conn = Conn::new(plan.clone(), c, pace, stats.clone(), live.clone());
                tokio::task::spawn_local(conn.run())
            })
            .collect();
        for t in tasks {
            if t.await.is_err() {
                stats
                    .borrow_mut()
                    .error("a connection task panicked".to_string());
            }
        }
    });
    drop(local);
    drop(rt);
    Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .map_err(|_| io::Error::other("connection tasks outlived their runtime"))
}

/// Completes when the pacer finds this connection's send due; never
/// without a pacer.
async fn send_due(pace: Option<&(Rc<Pacer>, usize)>) {
    match pace {
        Some((p, slot)) => p.due(*slot).await,
        None => std::future::pending().await,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Live,
    /// Counted as timed out; kept until the slot is reused to tell a late
    /// answer from a wrong one.
    TimedOut,
    /// Unanswered when the peer closed cleanly: sent again on the next
    /// connection (`resend_on_close`).
    Resend,
}

#[derive(Clone, Copy)]
struct Slot {
    state: State,
    measured: bool,
    /// Nanoseconds from the plan's start.
    intended: u64,
    sent: u64,
    req: Request,
    /// Times sent again (`resend_on_close`).
    resends: u32,
}

enum End {
    /// The run is over.
    Done,
    /// The connection broke; reconnect. `clean`: the peer ended it
    /// (FIN), no reset or error.
    Dropped { clean: bool },
    /// `reconnect_every` requests were made on it: close it, open another.
    Reopen,
}

/// Why a connection could not be opened.
enum OpenError {
    /// The TCP connection.
    Connect(io::Error),
    /// The TLS handshake.
    Handshake {
        reason: HandshakeFailure,
        error: io::Error,
    },
    /// The sign-on (`sign_on_failed` has counted it).
    SignOn(io::Error),
}

/// A sign-on that did not complete.
struct SignOnFailure {
    error: io::Error,
    /// Some bytes of an answer came back before it failed.
    answered: bool,
}

struct Conn {
    plan: Arc<Plan>,
    index: usize,
    stats: Rc<RefCell<WorkerStats>>,
    live: Arc<Live>,
    generator: Generator,
    slots: Vec<Slot>,
    /// Ring size minus one (a power of two minus one).
    mask: u64,
    /// STANs run 1..=stan_wrap, a multiple of the ring size, so that
    /// `(stan - 1) & mask` is the slot.
    stan_wrap: u64,
    /// Where this run's STAN sequence starts (a multiple of the ring size,
    /// from the seed): runs against a switch that stays up use different
    /// STANs, so their keys are not taken for repeats of earlier runs'.
    stan_offset: u64,
    head: u64,
    tail: u64,
    in_flight: usize,
    /// Open loop: index of the next scheduled send of this connection.
    next_k: u64,
    interval_ns: f64,
    offset_ns: f64,
    wbuf: BytesMut,
    rbuf: BytesMut,
    codec: FrameCodec,
    pending_live: [u64; 5],
    /// Open loop: the worker's pacer and this connection's place in it.
    pace: Option<(Rc<Pacer>, usize)>,
    /// Requests this session may still send before it is closed and
    /// opened again (`reconnect_every`); u64::MAX when it never is.
    session_left: u64,
}

impl Conn {
    fn new(
        plan: Arc<Plan>,
        index: usize,
        pace: Option<(Rc<Pacer>, usize)>,
        stats: Rc<RefCell<WorkerStats>>,
        live: Arc<Live>,
    ) -> Conn {
        let c = &plan.config;
        let (ring, interval_ns, offset_ns) = match c.mode {
            Mode::Closed { in_flight } => ((in_flight * 4).max(64), 0.0, 0.0),
            Mode::Open { rate } => {
                let per_conn = rate / c.connections as f64;
                // Room for a full timeout's worth of sends, within bounds.
                let need = (per_conn * c.timeout.as_secs_f64() * 1.25) as usize;
                let interval = 1e9 / per_conn;
                // Connections are staggered within one interval.
                let offset = interval * index as f64 / c.connections as f64;
                (need.clamp(64, 16_384), interval, offset)
            }
        };
        let ring = ring.next_power_of_two().min(MAX_IN_FLIGHT);
        let template = Slot {
            state: State::Free,
            measured: false,
            intended: 0,
            sent: 0,
            req: Request {
                kind: Kind::Purchase,
                mti: switchyard_protocol::iso8583::Mti::FINANCIAL,
                terminal: 0,
                stan: 0,
                amount: 0,
                pan: [b'0'; 16],
                merchant: 0,
                mcc: 0,
                rrn: 0,
                reverses: None,
                reverses_stan: 0,
            },
            resends: 0,
        };
        let generator = Generator::new(c, index, plan.de7);
        let stan_wrap = (999_999 / ring as u64) * ring as u64;
        let stan_offset = super::messages::SplitMix64::new(c.seed ^ 0x5354_414E ^ index as u64)
            .below(stan_wrap / ring as u64)
            * ring as u64;
        let codec = FrameCodec::new(c.framing, DEFAULT_MAX_FRAME);
        Conn {
            index,
            stats,
            live,
            generator,
            slots: vec![template; ring],
            mask: ring as u64 - 1,
            stan_wrap,
            stan_offset,
            head: 0,
            tail: 0,
            in_flight: 0,
            next_k: 0,
            interval_ns,
            offset_ns,
            wbuf: BytesMut::with_capacity(64 * 1024),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            codec,
            pending_live: [0; 5],
            pace,
            session_left: u64::MAX,
            plan,
        }
    }

    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        // How the last session ended: tells a reconnect from a reopen.
        let mut last = None;
        // Past the sends' end still, while requests wait to be sent again.
        while self.plan.now() < self.plan.send_end
            || (self.holds_resends() && self.plan.now() < self.plan.hard_end)
        {
            let mut conn = match self.open().await {
                Ok(c) => c,
                Err(e) => {
                    {
                        let mut st = self.stats.borrow_mut();
                        let e = match e {
                            OpenError::Connect(e) | OpenError::SignOn(e) => {
                                st.connect_failures += 1;
                                e
                            }
                            OpenError::Handshake { reason, error } => {
                                st.tls.failed(reason);
                                error
                            }
                        };
                        st.error(format!("connection {}: {e}", self.index));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            {
                let mut st = self.stats.borrow_mut();
                st.connects += 1;
                match last {
                    Some(End::Dropped { .. }) => st.reconnects += 1,
                    Some(End::Reopen) => st.reopens += 1,
                    _ => {}
                }
            }
            let end = self.session(&mut conn).await;
            match end {
                End::Dropped { clean: true } if self.plan.config.resend_on_close > 0 => {
                    self.hold_for_resend()
                }
                _ => self.lose_all(),
            }
            match end {
                End::Done => {
                    // A TLS peer is told it was a clean end (close_notify);
                    // a plain one sees the close as before.
                    if conn.is_tls() {
                        conn.shutdown();
                    }
                    break;
                }
                End::Reopen => conn.shutdown(),
                End::Dropped { .. } => {}
            }
            last = Some(end);
        }
        self.flush_live();
    }

    /// Connects, does the TLS handshake if asked, and signs on.
    async fn open(&mut self) -> Result<net::Conn, OpenError> {
        let plan = self.plan.clone();
        let target = plan.config.target;
        let timeout = plan.config.timeout;
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                let e = io::Error::new(e.kind(), format!("connect {target}: {e}"));
                return Err(OpenError::Connect(e));
            }
            Err(_) => {
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect {target}: timed out"),
                );
                return Err(OpenError::Connect(e));
            }
        };
        tcp.set_nodelay(true).map_err(OpenError::Connect)?;
        self.rbuf.clear();
        self.wbuf.clear();
        let Some(tls) = &plan.config.tls else {
            let mut conn = net::Conn::Plain(tcp);
            return match self.sign_on(&mut conn).await {
                Ok(()) => Ok(conn),
                Err(f) => Err(self.sign_on_failed(f)),
            };
        };
        let refused = |e: io::Error| OpenError::Handshake {
            reason: HandshakeFailure::of(&e),
            error: io::Error::new(e.kind(), format!("TLS handshake with {target}: {e}")),
        };
        // Not the plan's clock: the first connections open before its start.
        let started = Instant::now();
        let handshake = async {
            TlsConn::client(tcp, tls.config.clone(), tls.server_name.clone())?
                .handshake()
                .await
        };
        let mut conn = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(refused(e)),
            Err(_) => return Err(refused(io::ErrorKind::TimedOut.into())),
        };
        let took = started.elapsed();
        let done = plan.now();
        match self.sign_on(&mut conn).await {
            // A server may refuse the handshake after the client's side of
            // it has ended: TLS 1.3 checks the client's certificate there.
            // The client learns it at its first read, which brings the
            // alert, or the end of the connection, instead of an answer.
            Err(f) if !f.answered && f.error.kind() != io::ErrorKind::TimedOut => {
                Err(refused(f.error))
            }
            signed_on => {
                self.handshake_done(&conn, took, done);
                match signed_on {
                    Ok(()) => Ok(conn),
                    Err(f) => Err(self.sign_on_failed(f)),
                }
            }
        }
    }

    /// Counts a completed handshake that took `took` and ended at `done`
    /// (the plan's nanoseconds).
    fn handshake_done(&self, conn: &net::Conn, took: Duration, done: u64) {
        let resumed =
            conn.tls().and_then(|t| t.handshake_kind()) == Some(rustls::HandshakeKind::Resumed);
        let plan = &self.plan;
        let mut st = self.stats.borrow_mut();
        let tls = &mut st.tls;
        tls.handshakes += 1;
        tls.resumed += u64::from(resumed);
        if (plan.measure_from..plan.send_end).contains(&done) {
            tls.measured += 1;
        }
        tls.time.saturating_record(took.as_micros() as u64);
    }

    /// 0800/001 and its 0810; a refusal (DE39 not 00) is counted but the
    /// load goes on, so a misconfigured peer still shows its behaviour.
    /// A sign-on that fails is counted by the caller, which may find it
    /// was the TLS handshake that failed.
    async fn sign_on(&mut self, conn: &mut net::Conn) -> Result<(), SignOnFailure> {
        let failure = |error, answered| SignOnFailure { error, answered };
        let stan = self
            .generator
            .sign_on(&mut self.wbuf)
            .map_err(|e| failure(io::Error::other(e), false))?;
        let deadline = tokio::time::Instant::now() + self.plan.config.timeout;
        let fail = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("sign-on: {m}"));
        let mut answered = false;
        let work = async {
            while !self.wbuf.is_empty() || conn.wants_flush() {
                conn.tcp().writable().await?;
                self.write_some(conn)?;
            }
            loop {
                while let Some(frame) = self
                    .codec
                    .decode(&mut self.rbuf)
                    .map_err(|e| fail(&e.to_string()))?
                {
                    let msg = Message::parse(frame, self.plan.config.spec)
                        .map_err(|e| fail(&e.to_string()))?;
                    if msg.mti() == switchyard_protocol::iso8583::Mti::NETWORK_RESPONSE
                        && msg.stan() == Some(stan)
                    {
                        if msg.response_code() != Some(*b"00") {
                            self.stats.borrow_mut().sign_on_failures += 1;
                        }
                        return Ok(());
                    }
                    self.stats.borrow_mut().unmatched += 1;
                }
                // Plaintext that came with the TLS handshake's end has no
                // readiness event of its own.
                if !conn.has_buffered() {
                    conn.tcp().readable().await?;
                }
                match self.read_some(conn) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "sign-on: connection closed",
                        ));
                    }
                    Ok(_) => answered = true,
                    // Readiness without plaintext: a TLS record not yet
                    // whole, or one that carries none (session tickets).
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        };
        let result = tokio::time::timeout_at(deadline, work).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "sign-on: no 0810 within the timeout",
            )),
        };
        result.map_err(|e| failure(e, answered))
    }

    fn sign_on_failed(&self, f: SignOnFailure) -> OpenError {
        self.stats.borrow_mut().sign_on_failures += 1;
        OpenError::SignOn(f.error)
    }

    /// Writes what the connection takes now; `Ok` also on a full socket.
    fn write_some(&mut self, conn: &mut net::Conn) -> io::Result<()> {
        conn.write_available(&mut self.wbuf)
    }

    /// Reads what is available; returns bytes read (0: closed), or
    /// WouldBlock when there was nothing. One `recv` per wake (see
    /// `net::read_available`).
    fn read_some(&mut self, conn: &mut net::Conn) -> io::Result<usize> {
        let before = self.rbuf.len();
        let open = conn.read_available(&mut self.rbuf)?;
        let n = self.rbuf.len() - before;
        match (n, open) {
            (0, true) => Err(io::ErrorKind::WouldBlock.into()),
            (n, _) => Ok(n),
        }
    }

    async fn session(&mut self, conn: &mut net::Conn) -> End {
        let plan = self.plan.clone();
        let open = matches!(plan.config.mode, Mode::Open { .. });
        let k_limit = match plan.config.mode {
            Mode::Closed { in_flight } => in_flight,
            Mode::Open { .. } => usize::MAX,
        };
        self.session_left = match plan.config.reconnect_every {
            0 => u64::MAX,
            n => n,
        };
        self.resend_held();
        loop {
            let now = plan.now();
            if now >= plan.hard_end {
                return End::Done;
            }
            let sending = now < plan.send_end;
            if sending {
                self.produce(now, open, k_limit);
            }
            if let Err(e) = self.write_some(conn) {
                self.stats.borrow_mut().error(format!("write: {e}"));
                return End::Dropped { clean: false };
            }
            self.expire(now);
            self.flush_live();
            if !sending && self.in_flight == 0 {
                return End::Done;
            }
            if self.session_left == 0 && self.in_flight == 0 {
                return End::Reopen;
            }
            // When to look again if nothing arrives.
            let mut wake = plan.hard_end;
            if sending {
                wake = wake.min(plan.send_end);
            }
            if self.in_flight > 0 {
                let oldest = self.slots[(self.tail & self.mask) as usize];
                wake = wake.min(oldest.sent + plan.config.timeout.as_nanos() as u64);
            }
            let other_wake = wake;
            let next_send =
                if open && sending && self.session_left > 0 && self.head - self.tail <= self.mask {
                    let t = self.scheduled(self.next_k);
                    wake = wake.min(t);
                    Some(t)
                } else {
                    None
                };
            let now = plan.now();
            if wake <= now {
                // Something is due already; still look at the socket
                // without blocking so answers keep flowing.
                tokio::task::yield_now().await;
                if let Err(e) = self.receive(conn) {
                    return self.dropped(e);
                }
                continue;
            }
            // A send is next: the pacer wakes us for it within its tick
            // (50 µs), while tokio's millisecond timer covers the rest
            // (timeouts, the end of the run).
            let pace = match (&self.pace, next_send) {
                (Some((p, slot)), Some(t)) if t == wake => {
                    p.request(*slot, t);
                    wake = other_wake;
                    Some((p.clone(), *slot))
                }
                _ => None,
            };
            // The branches' futures borrow `conn` only until one is picked:
            // the handler may use it mutably.
            tokio::select! {
                biased;
                r = conn.tcp().readable() => {
                    if let Err(e) = r.and_then(|_| self.receive(conn)) {
                        return self.dropped(e);
                    }
                }
                r = conn.tcp().writable(), if !self.wbuf.is_empty() || conn.wants_flush() => {
                    if let Err(e) = r {
                        return self.dropped(e);
                    }
                }
                _ = send_due(pace.as_ref()) => {}
                _ = tokio::time::sleep_until(plan.at(wake)) => {}
            }
        }
    }

    fn dropped(&mut self, e: io::Error) -> End {
        if e.kind() != io::ErrorKind::UnexpectedEof {
            self.stats
                .borrow_mut()
                .error(format!("connection {}: {e}", self.index));
        }
        End::Dropped {
            clean: e.kind() == io::ErrorKind::UnexpectedEof,
        }
    }

    fn scheduled(&self, k: u64) -> u64 {
        (k as f64 * self.interval_ns + self.offset_ns) as u64
    }

    /// Packs what is due: open loop, every scheduled send up to now;
    /// closed loop, up to K in flight.
    fn produce(&mut self, now: u64, open: bool, k_limit: usize) {
        let plan = self.plan.clone();
        let mut st = self.stats.borrow_mut();
        let mut n = 0;
        while n < BATCH {
            if self.session_left == 0 {
                // Due for a new connection once the rest is answered.
                break;
            }
            let intended = if open {
                let t = self.scheduled(self.next_k);
                if t > now || t >= plan.send_end {
                    break;
                }
                t
            } else {
                if self.in_flight >= k_limit {
                    break;
                }
                now
            };
            if self.head - self.tail > self.mask {
                // Ring full: the oldest is still waiting for its answer.
                st.table_full += 1;
                break;
            }
            let seq = self.head;
            let stan = ((seq + self.stan_offset) % self.stan_wrap) as u32 + 1;
            let req = match self.generator.next(stan, &mut self.wbuf) {
                Ok(r) => r,
                Err(e) => {
                    // Only a spec that can not hold our fields gets here.
                    st.error(format!("packing a request: {e}"));
                    break;
                }
            };
            let measured = intended >= plan.measure_from;
            self.slots[(seq & self.mask) as usize] = Slot {
                state: State::Live,
                measured,
                intended,
                sent: now,
                req,
                resends: 0,
            };
            self.head += 1;
            self.in_flight += 1;
            self.session_left -= 1;
            n += 1;
            if measured {
                st.measured.sent += 1;
                let sec = ((intended - plan.measure_from) / 1_000_000_000) as usize;
                if let Some(s) = st.second(sec, plan.seconds) {
                    s.sent += 1;
                }
            } else {
                st.warmup.sent += 1;
            }
            if open {
                self.next_k += 1;
                let lag = now - intended;
                st.scheduled_sends += 1;
                st.lag.saturating_record(lag / 1_000);
                if lag > LATE_NS {
                    st.late_sends += 1;
                    self.pending_live[4] += 1;
                }
            }
        }
        self.pending_live[0] += n as u64;
    }

    /// Times out, from the oldest, requests sent a timeout ago or more.
    fn expire(&mut self, now: u64) {
        let timeout = self.plan.config.timeout.as_nanos() as u64;
        let mut st = None;
        while self.tail < self.head {
            let i = (self.tail & self.mask) as usize;
            let slot = &mut self.slots[i];
            if matches!(slot.state, State::Live | State::Resend) {
                if slot.sent + timeout > now {
                    break;
                }
                slot.state = State::TimedOut;
                self.in_flight -= 1;
                self.pending_live[2] += 1;
                let st = st.get_or_insert_with(|| self.stats.borrow_mut());
                if slot.measured {
                    st.measured.timed_out += 1;
                    let sec = ((slot.intended - self.plan.measure_from) / 1_000_000_000) as usize;
                    if let Some(s) = st.second(sec, self.plan.seconds) {
                        s.timed_out += 1;
                    }
                } else {
                    st.warmup.timed_out += 1;
                }
            }
            self.tail += 1;
        }
    }

    /// The peer closed cleanly: what it had not answered it never took
    /// (`resend_on_close`), and goes again on the next connection, each
    /// request `resend_on_close` times at most; past that, lost. Answers
    /// of the old connection can not come any more: its timed-out
    /// requests' slots are freed.
    fn hold_for_resend(&mut self) {
        let limit = self.plan.config.resend_on_close;
        let mut st = self.stats.borrow_mut();
        for seq in self.tail..self.head {
            let slot = &mut self.slots[(seq & self.mask) as usize];
            match slot.state {
                State::Live | State::Resend if slot.resends < limit => slot.state = State::Resend,
                State::Live | State::Resend => {
                    if slot.measured {
                        st.measured.lost += 1;
                    } else {
                        st.warmup.lost += 1;
                    }
                    self.pending_live[3] += 1;
                    slot.state = State::Free;
                    self.in_flight -= 1;
                }
                State::TimedOut => slot.state = State::Free,
                State::Free => {}
            }
        }
    }

    fn holds_resends(&self) -> bool {
        (self.tail..self.head)
            .any(|seq| self.slots[(seq & self.mask) as usize].state == State::Resend)
    }

    /// A new connection: the requests held for it go first, with their
    /// STANs (their slots) and their first send's time (their latency
    /// and timeout count from it).
    fn resend_held(&mut self) {
        let mut st = None;
        for seq in self.tail..self.head {
            let i = (seq & self.mask) as usize;
            if self.slots[i].state != State::Resend {
                continue;
            }
            let st = st.get_or_insert_with(|| self.stats.borrow_mut());
            match self.generator.repack(&self.slots[i].req, &mut self.wbuf) {
                Ok(()) => {
                    let slot = &mut self.slots[i];
                    slot.state = State::Live;
                    slot.resends += 1;
                    st.resent += 1;
                }
                Err(e) => {
                    // Packed once already: only a broken spec gets here.
                    st.error(format!("packing a request again: {e}"));
                    let slot = &mut self.slots[i];
                    slot.state = State::Free;
                    if slot.measured {
                        st.measured.lost += 1;
                    } else {
                        st.warmup.lost += 1;
                    }
                    self.pending_live[3] += 1;
                    self.in_flight -= 1;
                }
            }
        }
    }

    /// The connection is gone: what it had in flight is lost.
    fn lose_all(&mut self) {
        let mut st = self.stats.borrow_mut();
        for seq in self.tail..self.head {
            let slot = &mut self.slots[(seq & self.mask) as usize];
            if matches!(slot.state, State::Live | State::Resend) {
                if slot.measured {
                    st.measured.lost += 1;
                } else {
                    st.warmup.lost += 1;
                }
                self.pending_live[3] += 1;
            }
        }
        // Late answers can not come on a new connection.
        for slot in &mut self.slots {
            slot.state = State::Free;
        }
        self.tail = self.head;
        self.in_flight = 0;
    }

    fn flush_live(&mut self) {
        let l = &self.live;
        let p = &mut self.pending_live;
        for (v, a) in p
            .iter_mut()
            .zip([&l.sent, &l.answered, &l.timed_out, &l.lost, &l.late])
        {
            if *v > 0 {
                a.fetch_add(*v, Relaxed);
                *v = 0;
            }
        }
    }

    /// Reads and handles every answer available.
    fn receive(&mut self, conn: &mut net::Conn) -> io::Result<()> {
        match self.read_some(conn) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
        let now = self.plan.now();
        let stats = self.stats.clone();
        let mut st = stats.borrow_mut();
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(frame)) => self.answer(frame, now, &mut st),
                Ok(None) => break,
                Err(e) => {
                    st.error(format!("bad framing from the peer: {e}"));
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
            }
        }
        Ok(())
    }

    fn answer(&mut self, frame: Bytes, now: u64, st: &mut WorkerStats) {
        let Ok(msg) = Message::parse(frame, self.plan.config.spec) else {
            st.unparseable += 1;
            return;
        };
        let mti = msg.mti();
        let (Some(stan), Some(terminal)) = (msg.stan(), msg.field(41).and_then(parse_terminal_id))
        else {
            st.unmatched += 1;
            return;
        };
        if stan == 0 || stan as u64 > self.stan_wrap {
            st.unmatched += 1;
            return;
        }
        let i = ((stan as u64 - 1) & self.mask) as usize;
        let slot = self.slots[i];
        if slot.state == State::Free
            || slot.req.stan != stan
            || slot.req.terminal != terminal
            || slot.req.mti.class() != mti.class()
        {
            st.unmatched += 1;
            return;
        }
        if slot.state == State::TimedOut {
            st.late_answers += 1;
            self.slots[i].state = State::Free;
            return;
        }
        self.slots[i].state = State::Free;
        self.in_flight -= 1;
        self.pending_live[1] += 1;
        let code = msg.response_code().unwrap_or(*b"--");
        if let Some(keys) = &self.plan.config.terminal_keys
            && !keys.answer_mac_ok(&msg)
        {
            st.answer_mac_failures += 1;
        }
        let good =
            slot.req.mti.response() == Some(mti) && msg.amount_minor() == Some(slot.req.amount);
        let counts = if slot.measured {
            &mut st.measured
        } else {
            &mut st.warmup
        };
        counts.answered += 1;
        if !good {
            counts.bad_echo += 1;
        }
        if slot.measured {
            st.count_code(mti.value(), code);
            let latency_us = now.saturating_sub(slot.intended) / 1_000;
            if good {
                st.latency.saturating_record(latency_us);
            }
            let sec = ((slot.intended - self.plan.measure_from) / 1_000_000_000) as usize;
            if let Some(s) = st.second(sec, self.plan.seconds) {
                s.answered += 1;
                if super::is_switch_refusal(code) {
                    s.refused += 1;
                }
                if good {
                    s.latency.saturating_record(latency_us);
                }
            }
        }
        if good {
            st.money.count(&slot.req, code);
        }
        if good && code == *b"00" {
            self.generator.approved(&slot.req);
        }
        // Let the ring's tail move past answered slots at once, so a
        // closed loop's table never looks full.
        while self.tail < self.head
            && self.slots[(self.tail & self.mask) as usize].state != State::Live
        {
            self.tail += 1;
        }
    }
}
