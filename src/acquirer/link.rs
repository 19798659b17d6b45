//! The link actor: owns one TCP connection to an acquirer host.
//!
//! Life of a link: connect (exponential backoff between attempts), sign on
//! with 0800/001 and count as up only on a 00 answer, then forward requests
//! and match answers until the connection drops, echoes (0800/301) go
//! unanswered `max_missed_echoes` times in a row, or the switch shuts down,
//! in which case it signs off (0800/002). Requests in flight when a link
//! goes down are answered `LinkLost` at once (the host may have them);
//! requests that arrive while it is down are answered `LinkDown`.
//!
//! One task does all the I/O: it selects on socket readiness, its inbox and
//! one timer, and batches every frame ready into a single write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use metrics::{Counter, Gauge, Histogram};
use tokio::net::TcpStream;

use crate::net::read_available;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::matcher::{InFlight, MatchKey, Matched, Refused};
use super::{Failure, Forward, LinkHandle, LinkShared, Outcome, ReplyTo};
use crate::clock;
use crate::frame::{FrameCodec, LengthHeader};
use crate::iso8583::{Message, MessageBuilder, Mti, Spec};
use crate::telemetry;

/// Everything a link needs to know.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    /// `acquirer#index`, for logs and metric labels.
    pub name: String,
    pub addr: std::net::SocketAddr,
    pub spec: &'static Spec,
    pub framing: LengthHeader,
    pub max_frame: usize,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub echo_interval: Duration,
    pub echo_timeout: Duration,
    pub max_missed_echoes: u32,
    pub max_in_flight: usize,
    pub sign_on: bool,
}

impl LinkSettings {
    pub fn from_acquirer(a: &crate::config::AcquirerConfig, index: usize) -> LinkSettings {
        LinkSettings {
            name: format!("{}#{index}", a.name),
            addr: a.links[index],
            spec: a.spec.spec,
            framing: a.framing,
            max_frame: a.max_frame,
            request_timeout: a.request_timeout,
            connect_timeout: a.connect_timeout,
            backoff_initial: a.backoff_initial,
            backoff_max: a.backoff_max,
            echo_interval: a.echo_interval,
            echo_timeout: a.echo_timeout,
            max_missed_echoes: a.max_missed_echoes,
            max_in_flight: a.max_in_flight_per_link,
            sign_on: a.sign_on,
        }
    }
}

/// Frames taken from the inbox per loop turn: enough to fill one write
/// under load, few enough to keep reading answers in between.
const BATCH: usize = 256;
/// Stop taking new requests while this much is still unwritten (the host
/// is not reading); the inbox then fills and terminals shed with 96.
const MAX_PENDING_WRITE: usize = 1 << 20;

/// Starts a link actor on the current runtime.
pub fn spawn(settings: LinkSettings, shutdown: CancellationToken) -> (LinkHandle, JoinHandle<()>) {
    // The queue in front of a link absorbs bursts; the in-flight table
    // behind it is the real bound.
    let (tx, rx) = mpsc::channel(settings.max_in_flight.clamp(64, 16_384));
    let shared = Arc::new(LinkShared::new(settings.name.clone(), settings.addr));
    let actor = LinkActor::new(settings, rx, shared.clone(), shutdown);
    let task = tokio::spawn(actor.run());
    (LinkHandle { tx, shared }, task)
}

struct Metrics {
    up: Gauge,
    in_flight: Gauge,
    connect_failures: Counter,
    timeouts: Counter,
    late: Counter,
    unknown: Counter,
    missed_echoes: Counter,
    upstream_seconds: Histogram,
}

impl Metrics {
    fn new(link: &str) -> Metrics {
        let l = link.to_owned();
        Metrics {
            up: metrics::gauge!(telemetry::LINK_UP, "link" => l.clone()),
            in_flight: metrics::gauge!(telemetry::LINK_IN_FLIGHT, "link" => l.clone()),
            connect_failures: metrics::counter!(telemetry::LINK_CONNECT_FAILURES, "link" => l.clone()),
            timeouts: metrics::counter!(telemetry::LINK_TIMEOUTS, "link" => l.clone()),
            late: metrics::counter!(telemetry::LINK_UNMATCHED, "link" => l.clone(), "kind" => "late"),
            unknown: metrics::counter!(telemetry::LINK_UNMATCHED, "link" => l.clone(), "kind" => "unknown"),
            missed_echoes: metrics::counter!(telemetry::LINK_MISSED_ECHOES, "link" => l.clone()),
            upstream_seconds: metrics::histogram!(telemetry::UPSTREAM_SECONDS, "link" => l),
        }
    }
}

/// A network management request of ours awaiting its 0810.
#[derive(Clone, Copy)]
struct NetPending {
    stan: u32,
    code: u16,
    deadline: Instant,
}

/// Why a session ended.
#[derive(Debug)]
enum SessionEnd {
    /// Shutdown: signed off (or tried to).
    Shutdown,
    /// Worth reconnecting after a backoff.
    Lost(String),
}

struct LinkActor {
    s: LinkSettings,
    rx: mpsc::Receiver<Forward>,
    shared: Arc<LinkShared>,
    shutdown: CancellationToken,
    table: InFlight<(ReplyTo, Instant)>,
    stan: u32,
    m: Metrics,
    batch: Vec<Forward>,
}

impl LinkActor {
    fn new(
        s: LinkSettings,
        rx: mpsc::Receiver<Forward>,
        shared: Arc<LinkShared>,
        shutdown: CancellationToken,
    ) -> LinkActor {
        let m = Metrics::new(&s.name);
        LinkActor {
            table: InFlight::new(s.max_in_flight),
            s,
            rx,
            shared,
            shutdown,
            stan: 0,
            m,
            batch: Vec::with_capacity(BATCH),
        }
    }

    fn next_stan(&mut self) -> u32 {
        self.stan = self.stan % 999_999 + 1;
        self.stan
    }

    async fn run(mut self) {
        let mut backoff = self.s.backoff_initial;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let connect =
                tokio::time::timeout(self.s.connect_timeout, TcpStream::connect(self.s.addr));
            let stream = tokio::select! {
                r = connect => match r {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no connection within {:?}", self.s.connect_timeout)),
                },
                _ = self.shutdown.cancelled() => break,
            };
            let end = match stream {
                Ok(stream) => self.session(stream).await,
                Err(e) => SessionEnd::Lost(format!("connect failed: {e}")),
            };
            let was_up = self.shared.is_up();
            self.set_up(false);
            self.fail_all(Failure::LinkLost);
            match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Lost(why) => {
                    if was_up {
                        warn!(link = %self.s.name, addr = %self.s.addr, "link down: {why}");
                        backoff = self.s.backoff_initial;
                    } else {
                        self.m.connect_failures.increment(1);
                        debug!(link = %self.s.name, addr = %self.s.addr, "link not up: {why}; retry in {backoff:?}");
                    }
                }
            }
            if !self.idle_until(Instant::now() + backoff).await {
                break;
            }
            backoff = (backoff * 2).min(self.s.backoff_max);
        }
        self.set_up(false);
        self.fail_all(Failure::LinkLost);
        self.rx.close();
        while let Some(f) = self.rx.recv().await {
            f.reply_to.send(Outcome::Failed(Failure::LinkDown));
        }
    }

    /// Waits while disconnected, answering queued requests `LinkDown`.
    /// Returns false on shutdown.
    async fn idle_until(&mut self, until: Instant) -> bool {
        loop {
            tokio::select! {
                _ = sleep_until(until.into()) => return true,
                _ = self.shutdown.cancelled() => return false,
                n = self.rx.recv_many(&mut self.batch, BATCH) => {
                    if n == 0 {
                        return false;
                    }
                    for f in self.batch.drain(..) {
                        f.reply_to.send(Outcome::Failed(Failure::LinkDown));
                    }
                }
            }
        }
    }

    fn set_up(&mut self, up: bool) {
        self.shared.set_up(up);
        self.m.up.set(if up { 1.0 } else { 0.0 });
    }

    fn fail_all(&mut self, why: Failure) {
        for (_, (reply, _)) in self.table.drain() {
            reply.send(Outcome::Failed(why));
        }
        self.update_in_flight();
    }

    fn update_in_flight(&self) {
        self.shared.set_in_flight(self.table.len());
        self.m.in_flight.set(self.table.len() as f64);
    }

    fn network_request(&mut self, code: u16, out: &mut BytesMut) -> NetPending {
        let stan = self.next_stan();
        let time = clock::transmission_time(clock::unix_now());
        let mut b = MessageBuilder::new(self.s.spec, Mti::NETWORK);
        b.set(7, &time)
            .set_number(11, stan as u64)
            .set_number(70, code as u64);
        let at = self.s.framing.begin(out);
        // Built from constants and a clock: it always packs.
        if b.pack(out).is_ok() {
            let _ = self.s.framing.finish(out, at);
        } else {
            out.truncate(at);
        }
        NetPending {
            stan,
            code,
            deadline: Instant::now() + self.s.echo_timeout,
        }
    }

    async fn session(&mut self, mut stream: TcpStream) -> SessionEnd {
        let _ = stream.set_nodelay(true);
        let mut codec = FrameCodec::new(self.s.framing, self.s.max_frame);
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let mut wbuf = BytesMut::with_capacity(64 * 1024);

        if self.s.sign_on {
            let pending = self.network_request(1, &mut wbuf);
            match self
                .await_network_answer(&mut stream, &mut codec, &mut rbuf, &mut wbuf, pending)
                .await
            {
                Ok(crate::codes::APPROVED) => {}
                Ok(code) => {
                    return SessionEnd::Lost(format!(
                        "sign-on refused with {}",
                        String::from_utf8_lossy(&code)
                    ));
                }
                Err(end) => return end,
            }
        }
        self.set_up(true);
        info!(link = %self.s.name, addr = %self.s.addr, "link up");

        let mut net: Option<NetPending> = None;
        let mut missed = 0u32;
        let mut last_rx = Instant::now();
        let timer = sleep_until(Instant::now().into());
        tokio::pin!(timer);

        loop {
            let echo_due = last_rx + self.s.echo_interval;
            let mut wake = net.map_or(echo_due, |n| n.deadline);
            if let Some(d) = self.table.next_deadline() {
                wake = wake.min(d);
            }
            if timer.deadline() != wake.into() {
                timer.as_mut().reset(wake.into());
            }
            let take_more = wbuf.len() < MAX_PENDING_WRITE;
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    return self.sign_off(&mut stream, &mut codec, &mut rbuf, &mut wbuf).await;
                }
                r = stream.readable() => {
                    if let Err(e) = r {
                        return SessionEnd::Lost(format!("read: {e}"));
                    }
                    let open = match read_available(&stream, &mut rbuf) {
                        Ok(open) => open,
                        Err(e) => return SessionEnd::Lost(format!("read: {e}")),
                    };
                    let mut framed = false;
                    loop {
                        match codec.decode(&mut rbuf) {
                            Ok(Some(frame)) => {
                                framed = true;
                                self.on_frame(frame, &mut net, &mut missed, &mut wbuf);
                            }
                            Ok(None) => break,
                            Err(e) => return SessionEnd::Lost(format!("bad frame from host: {e}")),
                        }
                    }
                    // Once per read, not per frame: a clock read each.
                    if framed {
                        last_rx = Instant::now();
                    }
                    self.update_in_flight();
                    if !open {
                        return SessionEnd::Lost("host closed the connection".into());
                    }
                }
                n = self.rx.recv_many(&mut self.batch, BATCH), if take_more => {
                    if n == 0 {
                        return self.sign_off(&mut stream, &mut codec, &mut rbuf, &mut wbuf).await;
                    }
                    let now = Instant::now();
                    let deadline = now + self.s.request_timeout;
                    let mut batch = std::mem::take(&mut self.batch);
                    for f in batch.drain(..) {
                        self.forward(f, now, deadline, &mut wbuf);
                    }
                    self.batch = batch;
                    self.update_in_flight();
                }
                r = stream.writable(), if !wbuf.is_empty() => {
                    if let Err(e) = r {
                        return SessionEnd::Lost(format!("write: {e}"));
                    }
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    let timeouts = &self.m.timeouts;
                    self.table.expire(now, |key, (reply, _)| {
                        timeouts.increment(1);
                        debug!(stan = key.stan(), "request timed out upstream");
                        reply.send(Outcome::Failed(Failure::Timeout));
                    });
                    self.update_in_flight();
                    match net {
                        Some(p) if now >= p.deadline => {
                            net = None;
                            missed += 1;
                            self.m.missed_echoes.increment(1);
                            warn!(link = %self.s.name, missed, "echo test not answered in time");
                            if missed >= self.s.max_missed_echoes {
                                return SessionEnd::Lost(format!("{missed} echo tests unanswered"));
                            }
                        }
                        None if now >= echo_due => {
                            net = Some(self.network_request(301, &mut wbuf));
                        }
                        _ => {}
                    }
                    // Without traffic the echo schedule restarts from now.
                    if net.is_none() && now >= echo_due {
                        last_rx = now;
                    }
                }
            }
            if !wbuf.is_empty() {
                match stream.try_write(&wbuf) {
                    Ok(n) => wbuf.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return SessionEnd::Lost(format!("write: {e}")),
                }
            }
        }
    }

    fn forward(&mut self, f: Forward, now: Instant, deadline: Instant, wbuf: &mut BytesMut) {
        let at = wbuf.len();
        if let Err(e) = self.s.framing.encode(&f.body, wbuf) {
            warn!(link = %self.s.name, "request can not be framed for the host: {e}");
            wbuf.truncate(at);
            f.reply_to.send(Outcome::Failed(Failure::LinkDown));
            return;
        }
        if let Err((why, (reply, _))) = self.table.insert(f.key, (f.reply_to, now), deadline) {
            wbuf.truncate(at);
            reply.send(Outcome::Failed(match why {
                Refused::Duplicate => Failure::Duplicate,
                Refused::Full => Failure::LinkBusy,
            }));
        }
    }

    fn on_frame(
        &mut self,
        frame: bytes::Bytes,
        net: &mut Option<NetPending>,
        missed: &mut u32,
        wbuf: &mut BytesMut,
    ) {
        let msg = match Message::parse(frame, self.s.spec) {
            Ok(m) => m,
            Err(e) => {
                self.m.unknown.increment(1);
                warn!(link = %self.s.name, "unreadable answer from host: {e}");
                return;
            }
        };
        let mti = msg.mti();
        if mti.class() == 8 {
            if mti == Mti::NETWORK_RESPONSE {
                if let Some(p) = *net
                    && msg.stan() == Some(p.stan)
                {
                    *net = None;
                    *missed = 0;
                }
            } else if mti == Mti::NETWORK {
                // The host tests us: answer its echo.
                if let Some(mut b) = MessageBuilder::response_to(&msg, &[7, 11, 70]) {
                    b.set(39, &crate::codes::APPROVED);
                    let at = self.s.framing.begin(wbuf);
                    if b.pack(wbuf).is_ok() {
                        let _ = self.s.framing.finish(wbuf, at);
                    } else {
                        wbuf.truncate(at);
                    }
                }
            }
            return;
        }
        if mti.is_request() {
            warn!(link = %self.s.name, mti = %mti, "host sent a request; only network management is accepted from hosts");
            return;
        }
        let Some(key) = MatchKey::of(&msg) else {
            self.m.unknown.increment(1);
            warn!(link = %self.s.name, mti = %mti, "answer without DE11/DE41 can not be matched");
            return;
        };
        match self.table.take(&key) {
            Matched::Found((reply, sent_at)) => {
                self.m
                    .upstream_seconds
                    .record(sent_at.elapsed().as_secs_f64());
                let response_code = msg.response_code().unwrap_or(*b"  ");
                reply.send(Outcome::Answered {
                    body: msg.frame().clone(),
                    response_code,
                    approval_code: msg.approval_code(),
                });
            }
            Matched::Late => {
                self.m.late.increment(1);
                info!(link = %self.s.name, mti = %mti, stan = key.stan(),
                    terminal = %String::from_utf8_lossy(key.terminal_id()),
                    pan = ?msg.pan(), "late answer after timeout dropped");
            }
            Matched::Unknown => {
                self.m.unknown.increment(1);
                warn!(link = %self.s.name, mti = %mti, stan = key.stan(),
                    terminal = %String::from_utf8_lossy(key.terminal_id()),
                    pan = ?msg.pan(), "answer matches no request; dropped");
            }
        }
    }

    /// Sends the queued bytes and waits for the 0810 answering `pending`,
    /// answering any forwarded request `LinkDown` meanwhile.
    async fn await_network_answer(
        &mut self,
        stream: &mut TcpStream,
        codec: &mut FrameCodec,
        rbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
        pending: NetPending,
    ) -> Result<[u8; 2], SessionEnd> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let write = stream.write_all(wbuf).await;
        wbuf.clear();
        if let Err(e) = write {
            return Err(SessionEnd::Lost(format!("write: {e}")));
        }
        let deadline = pending.deadline;
        let mut inbox_open = true;
        loop {
            while let Some(frame) = codec
                .decode(rbuf)
                .map_err(|e| SessionEnd::Lost(format!("bad frame from host: {e}")))?
            {
                if let Ok(m) = Message::parse(frame, self.s.spec)
                    && m.mti() == Mti::NETWORK_RESPONSE
                    && m.stan() == Some(pending.stan)
                {
                    return Ok(m.response_code().unwrap_or(*b"  "));
                }
            }
            tokio::select! {
                r = stream.read_buf(rbuf) => match r {
                    Ok(0) => return Err(SessionEnd::Lost("host closed the connection".into())),
                    Ok(_) => {}
                    Err(e) => return Err(SessionEnd::Lost(format!("read: {e}"))),
                },
                _ = sleep_until(deadline.into()) => {
                    return Err(SessionEnd::Lost(format!(
                        "no answer to 0800/{:03} within {:?}", pending.code, self.s.echo_timeout
                    )));
                }
                _ = self.shutdown.cancelled(), if pending.code != 2 => return Err(SessionEnd::Shutdown),
                n = self.rx.recv_many(&mut self.batch, BATCH), if inbox_open => {
                    if n == 0 {
                        if pending.code != 2 {
                            return Err(SessionEnd::Shutdown);
                        }
                        inbox_open = false;
                    }
                    for f in self.batch.drain(..) {
                        f.reply_to.send(Outcome::Failed(Failure::LinkDown));
                    }
                }
            }
        }
    }

    async fn sign_off(
        &mut self,
        stream: &mut TcpStream,
        codec: &mut FrameCodec,
        rbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
    ) -> SessionEnd {
        self.set_up(false);
        self.fail_all(Failure::LinkLost);
        let pending = self.network_request(2, wbuf);
        match self
            .await_network_answer(stream, codec, rbuf, wbuf, pending)
            .await
        {
            Ok(_) => info!(link = %self.s.name, "signed off"),
            Err(SessionEnd::Lost(why)) => {
                info!(link = %self.s.name, "sign-off not confirmed: {why}")
            }
            Err(SessionEnd::Shutdown) => {}
        }
        SessionEnd::Shutdown
    }
}
