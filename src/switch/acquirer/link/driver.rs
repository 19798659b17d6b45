//! The link's tokio task: moves bytes between the socket and the core,
//! forwards from the inbox into it, answers back to terminals, runs its
//! card security effects (an [`HsmRunner`]) and posts what they bring,
//! sleeps until the core's next deadline, and logs what the core reports.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use metrics::Gauge;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::core::{LinkCore, LinkEvent};
use super::{BATCH, LinkSettings, Want, Wanted};
use crate::clock::Now;
use crate::frame::FrameCodec;
use crate::net::Conn;
use crate::switch::acquirer::{Failure, Forward, LinkAdmin, LinkShared, Outcome, ReplyTo};
use crate::switch::card_security::runner::HsmRunner;
use crate::switch::tls::LinkTls;
use crate::telemetry;
use crate::throttle::LogThrottle;

/// While a link stays down, one warn line per this interval (with the
/// count of failures not logged).
const DOWN_LOG_INTERVAL: Duration = Duration::from_secs(30);

type Connecting = Pin<Box<dyn Future<Output = Result<Conn, String>> + Send>>;

struct Driver {
    core: LinkCore<ReplyTo>,
    rx: mpsc::Receiver<Forward>,
    shared: Arc<LinkShared>,
    batch: Vec<Forward>,
    codec: FrameCodec,
    rbuf: BytesMut,
    up_gauge: Gauge,
    in_flight_gauge: Gauge,
    was_up: bool,
    down_log: LogThrottle,
    /// The TLS client when `[acquirers.tls]` is set (or why it could not
    /// be made: every connect then fails with that reason).
    tls: Option<Result<LinkTls, String>>,
    /// The core's card security effects under way.
    hsm: HsmRunner,
    /// What is asked of the link (`None` once the control is gone: it
    /// then runs as configured until the switch stops).
    control: Option<watch::Receiver<Wanted>>,
    want: Want,
    /// Stopping or retiring: takes no new request from terminals (counts
    /// as down) and signs off once nothing is in flight, or at this
    /// moment at the latest.
    draining: Option<std::time::Instant>,
    /// The sign-off of a stop or retirement has begun.
    signing_off: bool,
}

/// How the core of a link ended.
enum Ended {
    /// The switch is stopping, or nobody can forward to it any more.
    Shutdown,
    /// An operator stopped it.
    Stopped,
    /// It is no longer in the config.
    Retired,
}

pub(super) async fn run(
    settings: LinkSettings,
    rx: mpsc::Receiver<Forward>,
    shared: Arc<LinkShared>,
    wanted: watch::Receiver<Wanted>,
    shutdown: CancellationToken,
) {
    let name = settings.name.clone();
    let tls = settings.acquirer.tls.as_ref().map(LinkTls::new);
    let network = settings
        .acquirer
        .security
        .hsm
        .as_ref()
        .and_then(|h| h.network().cloned());
    let mut d = Driver {
        control: Some(wanted),
        want: Want::Run,
        draining: None,
        signing_off: false,
        tls,
        hsm: HsmRunner::new(network),
        codec: FrameCodec::new(settings.acquirer.framing, settings.acquirer.max_frame),
        core: LinkCore::new(settings, Now::read()),
        rx,
        shared,
        batch: Vec::with_capacity(BATCH),
        rbuf: BytesMut::with_capacity(64 * 1024),
        up_gauge: metrics::gauge!(telemetry::LINK_UP, "link" => name.clone()),
        in_flight_gauge: metrics::gauge!(telemetry::LINK_IN_FLIGHT, "link" => name),
        was_up: false,
        down_log: LogThrottle::new(DOWN_LOG_INTERVAL),
    };
    loop {
        match d.run(&shutdown).await {
            Ended::Stopped => {
                if !d.stay_stopped(&shutdown).await {
                    break;
                }
                // Started again: a fresh core, as at start.
                let mut settings = d.core.settings().clone();
                if let Some(c) = &d.control {
                    settings.acquirer = c.borrow().acquirer.clone();
                }
                d.core = LinkCore::new(settings, Now::read());
                d.draining = None;
                d.signing_off = false;
                d.was_up = false;
                d.shared.set_admin(LinkAdmin::Running);
            }
            Ended::Retired => {
                d.shared.set_admin(LinkAdmin::Retired);
                break;
            }
            Ended::Shutdown => break,
        }
    }
    d.rx.close();
    while let Some(f) = d.rx.recv().await {
        f.reply_to.send(Outcome::Failed(Failure::LinkDown));
    }
}

/// The next change of what is asked; never, once the control is gone.
async fn next_wanted(control: &mut Option<watch::Receiver<Wanted>>) -> Option<Wanted> {
    let Some(rx) = control else {
        return std::future::pending().await;
    };
    match rx.changed().await {
        Ok(()) => Some(rx.borrow_and_update().clone()),
        Err(_) => {
            *control = None;
            None
        }
    }
}

/// TCP connect and, with TLS, the handshake, both within `within`.
async fn connect(
    addr: std::net::SocketAddr,
    within: Duration,
    tls: Option<Result<LinkTls, String>>,
) -> Result<Conn, String> {
    let attempt = async {
        let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        match tls {
            None => Ok(Conn::Plain(s)),
            Some(Ok(tls)) => tls.connect(s).await,
            Some(Err(e)) => Err(format!("TLS client not usable: {e}")),
        }
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no connection within {within:?}")),
    }
}

async fn connected(c: &mut Option<Connecting>) -> Result<Conn, String> {
    match c {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn readable(s: &Option<Conn>) -> std::io::Result<()> {
    match s {
        // Plaintext that came with the handshake's end: no readiness
        // announces it.
        Some(s) if s.has_buffered() => Ok(()),
        Some(s) => s.tcp().readable().await,
        None => std::future::pending().await,
    }
}

async fn writable(s: &Option<Conn>) -> std::io::Result<()> {
    match s {
        Some(s) => s.tcp().writable().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    /// What was asked: new settings apply at once; a stop or retirement
    /// starts the drain; a start cancels one not yet signing off.
    fn apply(&mut self, w: Wanted, now: Now) {
        self.core.update_acquirer(w.acquirer);
        if w.want == self.want {
            return;
        }
        self.want = w.want;
        match w.want {
            Want::Run => {
                if !self.signing_off {
                    self.draining = None;
                    self.shared.set_admin(LinkAdmin::Running);
                }
            }
            Want::Stop | Want::Retire => {
                let s = &self.core.settings().acquirer;
                // In flight requests are answered by their timeout at
                // worst; a second more for the last answers to come in.
                let until = now.at + s.request_timeout + Duration::from_secs(1);
                self.draining = Some(self.draining.map_or(until, |d| d.min(until)));
                self.shared.set_admin(if w.want == Want::Stop {
                    LinkAdmin::Stopping
                } else {
                    LinkAdmin::Retiring
                });
                info!(acquirer = %s.name, link = self.core.settings().index,
                    addr = %self.core.settings().addr, in_flight = self.core.in_flight(),
                    "link {}: draining, then signing off",
                    if w.want == Want::Stop { "stopped by an operator" } else { "no longer in the config" });
            }
        }
    }

    /// A stopped link: down, answering anything handed to it `LinkDown`,
    /// until it is started again (`true`), retired or the switch stops.
    async fn stay_stopped(&mut self, shutdown: &CancellationToken) -> bool {
        self.shared.set_admin(LinkAdmin::Stopped);
        self.shared.set_up(false);
        self.up_gauge.set(0.0);
        loop {
            match self.want {
                Want::Run => return true,
                Want::Retire => {
                    self.shared.set_admin(LinkAdmin::Retired);
                    return false;
                }
                Want::Stop => {}
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                w = next_wanted(&mut self.control) => {
                    if let Some(w) = w {
                        self.core.update_acquirer(w.acquirer);
                        self.want = w.want;
                    }
                }
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

    async fn run(&mut self, shutdown: &CancellationToken) -> Ended {
        let mut stream: Option<Conn> = None;
        let mut connecting: Option<Connecting> = None;
        let mut stopping = false;
        let mut inbox_open = true;
        let timer = sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        // Read once per wake, in the branch that woke: the top of the loop
        // acts on the moment of the event it just handled.
        let mut now = Now::read();
        loop {
            // Draining: sign off once nothing is in flight or queued (or
            // at the drain's end), or at once while not up.
            if let Some(until) = self.draining
                && !self.signing_off
                && !stopping
                && (!self.core.is_up()
                    || (self.core.in_flight() == 0 && self.rx.is_empty())
                    || now.at >= until)
            {
                self.signing_off = true;
                self.core.handle_shutdown(now);
                connecting = None;
            }
            if connecting.is_none() && stream.is_none() && self.core.poll_connect(now) {
                let s = self.core.settings();
                let tls = self.tls.clone();
                connecting = Some(Box::pin(connect(s.addr, s.acquirer.connect_timeout, tls)));
            }
            if let Some(s) = &mut stream
                && let Err(e) = self.write_out(s)
            {
                self.core.handle_closed(now, format!("write: {e}"));
            }
            self.publish(now);
            while let Some(call) = self.core.poll_hsm() {
                self.hsm.start(call);
            }
            if !self.core.wants_socket() && stream.is_some() {
                stream = None;
                self.rbuf.clear();
            }
            if !self.core.is_connecting() {
                connecting = None;
            }
            if self.core.is_closed() {
                break;
            }
            let wake = match (self.core.poll_timeout(), self.draining) {
                (Some(a), Some(b)) if !self.signing_off => Some(a.min(b)),
                (None, Some(b)) if !self.signing_off => Some(b),
                (a, _) => a,
            };
            if let Some(at) = wake
                && timer.deadline() != at.into()
            {
                timer.as_mut().reset(at.into());
            }
            let want_write = stream
                .as_ref()
                .is_some_and(|s| s.wants_flush() || self.core.poll_transmit().is_some());
            let take_forwards = inbox_open && self.core.accepts_forwards();
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    now = Now::read();
                    self.core.handle_shutdown(now);
                }
                (id, done) = self.hsm.next(), if !self.hsm.is_empty() => {
                    now = Now::read();
                    self.core.handle_hsm_reply(now, id, done);
                }
                w = next_wanted(&mut self.control) => {
                    now = Now::read();
                    if let Some(w) = w {
                        self.apply(w, now);
                    }
                }
                r = connected(&mut connecting) => {
                    connecting = None;
                    now = Now::read();
                    match r {
                        Ok(s) => {
                            stream = Some(s);
                            self.rbuf.clear();
                            self.core.handle_connected(now);
                        }
                        Err(e) => self.core.handle_connect_failed(now, e),
                    }
                }
                r = readable(&stream) => {
                    now = Now::read();
                    match r {
                        Err(e) => self.core.handle_closed(now, format!("read: {e}")),
                        Ok(()) => {
                            if let Some(s) = &mut stream {
                                self.read(s, now);
                            }
                        }
                    }
                }
                n = self.rx.recv_many(&mut self.batch, BATCH), if take_forwards => {
                    now = Now::read();
                    if n == 0 {
                        // Every handle is gone: nobody can forward again.
                        inbox_open = false;
                        stopping = true;
                        self.core.handle_shutdown(now);
                    }
                    for f in self.batch.drain(..) {
                        self.core.handle_forward(now, f.key, f.body, f.echo, f.reply_to);
                    }
                }
                r = writable(&stream), if want_write => {
                    now = Now::read();
                    if let Err(e) = r {
                        self.core.handle_closed(now, format!("write: {e}"));
                    }
                }
                _ = &mut timer, if wake.is_some() => {
                    now = Now::read();
                    self.core.handle_timeout(now);
                }
            }
        }
        self.publish(Now::read());
        match (stopping, self.signing_off, self.want) {
            (false, true, Want::Stop) => Ended::Stopped,
            (false, true, Want::Retire) => Ended::Retired,
            // Started again while signing off: down now, up again next.
            (false, true, Want::Run) => Ended::Stopped,
            _ => Ended::Shutdown,
        }
    }

    /// Reads what the socket has and hands every whole frame to the core.
    fn read(&mut self, s: &mut Conn, now: Now) {
        let open = match s.read_available(&mut self.rbuf) {
            Ok(open) => open,
            Err(e) => {
                if s.is_tls() && !self.core.is_up() {
                    // Under TLS 1.3 the host judges our certificate after
                    // our side of the handshake is done: its refusal
                    // arrives here, before the sign-on is answered, and
                    // is a failed handshake all the same.
                    let reason = switchyard_protocol::tls::failure_reason(&e);
                    metrics::counter!(telemetry::TLS_HANDSHAKE_FAILURES, "listener" => "link", "reason" => reason)
                        .increment(1);
                }
                self.core.handle_closed(now, format!("read: {e}"));
                return;
            }
        };
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(frame)) => self.core.handle_frame(now, frame),
                Ok(None) => break,
                Err(e) => {
                    self.core
                        .handle_closed(now, format!("bad frame from host: {e}"));
                    return;
                }
            }
        }
        if !open {
            self.core.handle_closed(now, "host closed the connection");
        }
    }

    /// Writes as much as the socket takes now.
    fn write_out(&mut self, s: &mut Conn) -> std::io::Result<()> {
        s.flush()?;
        while let Some(buf) = self.core.poll_transmit() {
            match s.try_write(buf) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.core.handle_transmitted(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Logs the core's events, mirrors its state into `LinkShared` (before
    /// any answer goes out, so a terminal told `LinkLost` sees the link
    /// down), then delivers its answers.
    fn publish(&mut self, now: Now) {
        while let Some(e) = self.core.poll_event() {
            self.log(e, now);
        }
        // A draining link counts as down: terminals route around it.
        let up = self.core.is_up() && self.draining.is_none();
        if up != self.was_up {
            self.was_up = up;
            self.shared.set_up(up);
            self.up_gauge.set(if up { 1.0 } else { 0.0 });
        }
        let n = self.core.in_flight();
        self.shared.set_in_flight(n);
        if let Some(ms) = self.core.last_echo_ms() {
            self.shared.set_last_echo_ms(ms);
        }
        self.in_flight_gauge.set(n as f64);
        while let Some((to, outcome)) = self.core.poll_reply() {
            to.send(outcome);
        }
    }

    fn log(&mut self, e: LinkEvent, now: Now) {
        let s = self.core.settings();
        let (acquirer, link, addr) = (&s.acquirer.name, s.index, s.addr);
        match e {
            LinkEvent::Up { attempts } => {
                self.down_log.reset();
                info!(%acquirer, link, %addr, attempts, "link up");
            }
            LinkEvent::ConnectFailed {
                reason,
                attempts,
                retry_in,
            } => match self.down_log.allow(now.at) {
                Some(suppressed) => warn!(%acquirer, link, %addr, attempts, ?retry_in,
                    suppressed, "link not up: {reason}"),
                None => {
                    debug!(%acquirer, link, %addr, attempts, ?retry_in, "link not up: {reason}")
                }
            },
            LinkEvent::Down { reason, retry_in } => {
                // A drop is news; the failures to come back after it are
                // rate-limited from here.
                self.down_log.reset();
                let _ = self.down_log.allow(now.at);
                warn!(%acquirer, link, %addr, ?retry_in, "link down: {reason}");
            }
            LinkEvent::MissedEcho { missed } => {
                warn!(%acquirer, link, %addr, missed, "echo test not answered in time");
            }
            LinkEvent::SignedOff => info!(%acquirer, link, %addr, "signed off"),
            LinkEvent::SignOffUnconfirmed { reason } => {
                info!(%acquirer, link, %addr, "sign-off not confirmed: {reason}")
            }
            LinkEvent::Mismatch {
                mti,
                stan,
                terminal,
                pan,
                fields,
            } => warn!(%acquirer, link, %mti, stan, %terminal, pan = ?pan, %fields,
                "answer disagrees with its request in fields {fields}; discarded, the request waits for its own answer"),
            LinkEvent::Late {
                mti,
                stan,
                terminal,
                pan,
            } => info!(%acquirer, link, %mti, stan, %terminal, pan = ?pan,
                "late answer after timeout dropped"),
            LinkEvent::Unknown {
                mti,
                stan,
                terminal,
                pan,
            } => warn!(%acquirer, link, %mti, stan, %terminal, pan = ?pan,
                "answer matches no request; dropped"),
            LinkEvent::Unmatchable { mti } => {
                warn!(%acquirer, link, %mti, "answer without DE11/DE41 can not be matched")
            }
            LinkEvent::Unreadable { reason } => {
                warn!(%acquirer, link, "unreadable answer from host: {reason}")
            }
            LinkEvent::HostRequest { mti } => warn!(%acquirer, link, %mti,
                "host sent a request; only network management is accepted from hosts"),
            LinkEvent::Unframeable { reason } => {
                warn!(%acquirer, link, "request can not be framed for the host: {reason}")
            }
            // More than a log line: the cutover itself is made here, where
            // the business day is at hand (the core has no clock and no
            // handle; the lock it takes is never a terminal's).
            LinkEvent::Cutover => match &s.settlement {
                Some((day, index)) => {
                    let trigger = crate::switch::settlement::Trigger::Host { acquirer: *index };
                    match day.cutover(trigger, now.unix_ms) {
                        Ok(done) => info!(%acquirer, link, date = %done.to,
                            "cutover on the host's 0800 (DE70 201)"),
                        Err(why) => info!(%acquirer, link,
                            "host's cutover (0800, DE70 201) changed nothing: {why}"),
                    }
                }
                None => {
                    warn!(%acquirer, link, "host's cutover (0800, DE70 201) with no business day to move")
                }
            },
            LinkEvent::KeyChange { result: Ok(()) } => {
                info!(%acquirer, link, "zone keys changed by the host (0800, DE70 161)")
            }
            LinkEvent::KeyChange { result: Err(why) } => {
                warn!(%acquirer, link, "host key change refused: answered {why}")
            }
            LinkEvent::Unsealable { reason } => {
                warn!(%acquirer, link, "request can not be given its MAC; not sent: {reason}")
            }
            LinkEvent::AnswerMacWrong {
                mti,
                stan,
                terminal,
                pan,
                reason,
            } => warn!(%acquirer, link, %mti, stan, %terminal, pan = ?pan, reason,
                "answer's MAC does not verify; discarded, its request is treated as unanswered (91, reversed)"),
        }
    }
}
