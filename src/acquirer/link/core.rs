//! The link's decisions, without I/O: connection state, sign-on, echoes,
//! reconnect backoff, the in-flight table, answer checks and the write
//! buffer. The driver feeds it with `handle_*` and carries out what the
//! `poll_*` methods hand back; time only comes in as a [`Now`].
//!
//! `R` is the opaque address an answer goes back to (`ReplyTo` in the
//! switch, anything in a test).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use metrics::{Counter, Histogram};

use super::{LinkSettings, MAX_PENDING_WRITE};
use crate::acquirer::matcher::{Checked, InFlight, MatchKey, Refused};
use crate::acquirer::{Failure, Outcome};
use crate::clock::{self, Now};
use crate::codes;
use crate::iso8583::{MaskedPan, Message, MessageBuilder, Mti, SmallText, Spec};
use crate::telemetry;

/// DE70 network management codes the link sends.
const SIGN_ON: u16 = 1;
const SIGN_OFF: u16 = 2;
const ECHO: u16 = 301;

/// Events kept for the driver between two polls; more are dropped (they
/// only feed log lines, and the driver polls after every input).
const MAX_EVENTS: usize = 1024;

/// A set of data element numbers (1..=128).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct FieldSet(u128);

impl FieldSet {
    pub const EMPTY: FieldSet = FieldSet(0);

    /// The fields listed; numbers outside 1..=128 are left out (config
    /// validation refuses them).
    pub fn of(fields: &[u16]) -> FieldSet {
        let mut s = FieldSet::EMPTY;
        for &n in fields {
            s.insert(n as usize);
        }
        s
    }

    pub fn insert(&mut self, n: usize) {
        if (1..=128).contains(&n) {
            self.0 |= 1 << (n - 1);
        }
    }

    pub fn contains(self, n: usize) -> bool {
        (1..=128).contains(&n) && self.0 & (1 << (n - 1)) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The fields in ascending order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i + 1)
        })
    }
}

impl fmt::Display for FieldSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for FieldSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldSet[{self}]")
    }
}

/// Where the link's connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No connection; the next attempt is due at `until`.
    Disconnected { until: Instant },
    /// The driver is connecting.
    Connecting,
    /// Connected, our 0800/001 sent, waiting for its 0810.
    SigningOn { stan: u32, deadline: Instant },
    /// Signed on: forwarding.
    Up,
    /// Shutting down: our 0800/002 sent, waiting for its 0810.
    SigningOff { stan: u32, deadline: Instant },
    /// Shut down: no connection, none to come.
    Closed,
}

/// What happened, for log lines (the counters are kept by the core).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Signed on (or connected, without sign-on) after `attempts` connects.
    Up { attempts: u32 },
    /// A connect or sign-on failed; the next attempt is in `retry_in`.
    ConnectFailed {
        reason: String,
        attempts: u32,
        retry_in: Duration,
    },
    /// An up link went down.
    Down { reason: String, retry_in: Duration },
    /// An echo went unanswered; `missed` in a row.
    MissedEcho { missed: u32 },
    /// The host confirmed our sign-off.
    SignedOff,
    /// The link closed without a confirmed sign-off.
    SignOffUnconfirmed { reason: String },
    /// An answer matched a request by key but disagreed with it in
    /// `fields`: discarded, the request waits on.
    Mismatch {
        mti: Mti,
        stan: u32,
        terminal: SmallText,
        pan: Option<MaskedPan>,
        fields: FieldSet,
    },
    /// An answer for a request that had already timed out.
    Late {
        mti: Mti,
        stan: u32,
        terminal: SmallText,
        pan: Option<MaskedPan>,
    },
    /// An answer that matches no request we know of.
    Unknown {
        mti: Mti,
        stan: u32,
        terminal: SmallText,
        pan: Option<MaskedPan>,
    },
    /// An answer without DE11 or DE41.
    Unmatchable { mti: Mti },
    /// A frame that is not a readable message.
    Unreadable { reason: String },
    /// The host sent a request other than network management.
    HostRequest { mti: Mti },
    /// A request too long for the host's framing.
    Unframeable { reason: String },
}

/// Reconnect delays: doubling from `initial` up to `max`, each drawn with
/// "equal jitter" (half fixed, half random), so links that fail together
/// do not come back together.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    base: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        assert!(initial <= max, "backoff initial over max");
        Backoff {
            initial,
            max,
            base: initial,
            rng: seed,
        }
    }

    /// The next delay, in `[base/2, base]` with `base` doubling per call.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = base.saturating_mul(2).min(self.max);
        let half = base / 2;
        let spread = (base - half).as_nanos() as u64;
        let d = half + Duration::from_nanos(self.next_u64() % (spread + 1));
        debug_assert!(d <= self.max);
        d
    }

    /// Back to `initial` (after a successful sign-on).
    pub fn reset(&mut self) {
        self.base = self.initial;
    }

    /// SplitMix64: tiny, good enough for jitter, and replays from a seed.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A request in flight.
struct Pending<R> {
    reply: R,
    sent_at: Instant,
    /// The request as forwarded (a `Bytes` clone, no copy), to check its
    /// answer against.
    request: Bytes,
}

/// Our echo awaiting its 0810.
#[derive(Clone, Copy)]
struct EchoPending {
    stan: u32,
    deadline: Instant,
}

struct Metrics {
    connect_failures: Counter,
    timeouts: Counter,
    late: Counter,
    unknown: Counter,
    mismatch: Counter,
    missed_echoes: Counter,
    upstream_seconds: Histogram,
}

impl Metrics {
    fn new(link: &str) -> Metrics {
        let l = link.to_owned();
        Metrics {
            connect_failures: metrics::counter!(telemetry::LINK_CONNECT_FAILURES, "link" => l.clone()),
            timeouts: metrics::counter!(telemetry::LINK_TIMEOUTS, "link" => l.clone()),
            late: metrics::counter!(telemetry::LINK_UNMATCHED, "link" => l.clone(), "kind" => "late"),
            unknown: metrics::counter!(telemetry::LINK_UNMATCHED, "link" => l.clone(), "kind" => "unknown"),
            mismatch: metrics::counter!(telemetry::LINK_UNMATCHED, "link" => l.clone(), "kind" => "mismatch"),
            missed_echoes: metrics::counter!(telemetry::LINK_MISSED_ECHOES, "link" => l.clone()),
            upstream_seconds: metrics::histogram!(telemetry::UPSTREAM_SECONDS, "link" => l),
        }
    }
}

/// One link's state machine.
pub struct LinkCore<R> {
    s: LinkSettings,
    state: LinkState,
    table: InFlight<Pending<R>>,
    stan: u32,
    echo: Option<EchoPending>,
    missed: u32,
    /// When a frame last came in (echoes go out when the link is idle).
    last_rx: Instant,
    backoff: Backoff,
    /// Connect attempts since the link was last up.
    attempts: u32,
    wbuf: BytesMut,
    replies: VecDeque<(R, Outcome)>,
    events: VecDeque<LinkEvent>,
    m: Metrics,
}

impl<R> LinkCore<R> {
    /// A link with no connection; the first connect is due at `now`.
    pub fn new(settings: LinkSettings, now: Now) -> LinkCore<R> {
        let m = Metrics::new(&settings.name);
        LinkCore {
            table: InFlight::new(settings.max_in_flight),
            backoff: Backoff::new(
                settings.backoff_initial,
                settings.backoff_max,
                settings.seed,
            ),
            s: settings,
            state: LinkState::Disconnected { until: now.at },
            stan: 0,
            echo: None,
            missed: 0,
            last_rx: now.at,
            attempts: 0,
            wbuf: BytesMut::with_capacity(64 * 1024),
            replies: VecDeque::new(),
            events: VecDeque::new(),
            m,
        }
    }

    pub fn settings(&self) -> &LinkSettings {
        &self.s
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Signed on and forwarding (what `LinkShared::is_up` mirrors).
    pub fn is_up(&self) -> bool {
        self.state == LinkState::Up
    }

    /// The driver should hold a socket (connected, in any phase).
    pub fn wants_socket(&self) -> bool {
        matches!(
            self.state,
            LinkState::SigningOn { .. } | LinkState::Up | LinkState::SigningOff { .. }
        )
    }

    /// The driver should be connecting.
    pub fn is_connecting(&self) -> bool {
        self.state == LinkState::Connecting
    }

    /// Shut down for good: the driver may stop.
    pub fn is_closed(&self) -> bool {
        self.state == LinkState::Closed
    }

    pub fn in_flight(&self) -> usize {
        self.table.len()
    }

    /// False while the write buffer is over its bound: the driver then
    /// leaves forwards in the inbox (which fills, and terminals shed).
    pub fn accepts_forwards(&self) -> bool {
        self.wbuf.len() < MAX_PENDING_WRITE
    }

    /// True once when a connect is due: the state becomes `Connecting` and
    /// the driver starts one, reporting with `handle_connected` or
    /// `handle_connect_failed`.
    pub fn poll_connect(&mut self, now: Now) -> bool {
        match self.state {
            LinkState::Disconnected { until } if now.at >= until => {
                self.state = LinkState::Connecting;
                self.attempts += 1;
                true
            }
            _ => false,
        }
    }

    pub fn handle_connected(&mut self, now: Now) {
        if self.state != LinkState::Connecting {
            return;
        }
        self.wbuf.clear();
        self.last_rx = now.at;
        if self.s.sign_on {
            let stan = self.network_request(now, SIGN_ON);
            self.state = LinkState::SigningOn {
                stan,
                deadline: now.at + self.s.echo_timeout,
            };
        } else {
            self.come_up(now);
        }
    }

    pub fn handle_connect_failed(&mut self, now: Now, reason: impl Into<String>) {
        if self.state == LinkState::Connecting {
            self.not_up(now, format!("connect failed: {}", reason.into()));
        }
    }

    /// The connection closed or failed (read or write error, the host
    /// closed it, a bad frame).
    pub fn handle_closed(&mut self, now: Now, reason: impl Into<String>) {
        match self.state {
            LinkState::SigningOn { .. } => self.not_up(now, reason.into()),
            LinkState::Up => self.drop_link(now, reason.into()),
            LinkState::SigningOff { .. } => self.close(Some(reason.into())),
            LinkState::Disconnected { .. } | LinkState::Connecting | LinkState::Closed => {}
        }
    }

    /// Stop: sign off if up, answer what is in flight `LinkLost`, and
    /// close once the sign-off is answered (or not, by `echo_timeout`).
    pub fn handle_shutdown(&mut self, now: Now) {
        match self.state {
            LinkState::Up => {
                self.fail_all(Failure::LinkLost);
                self.echo = None;
                let stan = self.network_request(now, SIGN_OFF);
                self.state = LinkState::SigningOff {
                    stan,
                    deadline: now.at + self.s.echo_timeout,
                };
            }
            LinkState::SigningOff { .. } | LinkState::Closed => {}
            LinkState::Disconnected { .. }
            | LinkState::Connecting
            | LinkState::SigningOn { .. } => self.close(None),
        }
    }

    /// A request to forward. Answered at once (`LinkDown`, `Duplicate`,
    /// `LinkBusy`) if it can not be; else framed into the write buffer and
    /// entered in the in-flight table.
    pub fn handle_forward(&mut self, now: Now, key: MatchKey, body: Bytes, reply: R) {
        if self.state != LinkState::Up {
            self.replies
                .push_back((reply, Outcome::Failed(Failure::LinkDown)));
            return;
        }
        let at = self.wbuf.len();
        if let Err(e) = self.s.framing.encode(&body, &mut self.wbuf) {
            self.wbuf.truncate(at);
            self.event(LinkEvent::Unframeable {
                reason: e.to_string(),
            });
            self.replies
                .push_back((reply, Outcome::Failed(Failure::LinkDown)));
            return;
        }
        let pending = Pending {
            reply,
            sent_at: now.at,
            request: body,
        };
        if let Err((why, p)) = self
            .table
            .insert(key, pending, now.at + self.s.request_timeout)
        {
            self.wbuf.truncate(at);
            let failure = match why {
                Refused::Duplicate => Failure::Duplicate,
                Refused::Full => Failure::LinkBusy,
            };
            self.replies.push_back((p.reply, Outcome::Failed(failure)));
        }
    }

    /// One frame (without its length header) from the host.
    pub fn handle_frame(&mut self, now: Now, frame: Bytes) {
        if !self.wants_socket() {
            return;
        }
        self.last_rx = now.at;
        let msg = match Message::parse(frame, self.s.spec) {
            Ok(m) => m,
            Err(e) => {
                self.m.unknown.increment(1);
                self.event(LinkEvent::Unreadable {
                    reason: e.to_string(),
                });
                return;
            }
        };
        let mti = msg.mti();
        if mti.class() == 8 {
            if mti == Mti::NETWORK_RESPONSE {
                self.on_network_answer(now, &msg);
            } else if mti == Mti::NETWORK {
                self.answer_host_network(&msg);
            }
            return;
        }
        if mti.is_request() {
            self.event(LinkEvent::HostRequest { mti });
            return;
        }
        self.on_answer(now, &msg);
    }

    /// Timers: request timeouts, sign-on/off and echo deadlines, echoes
    /// due on an idle link.
    pub fn handle_timeout(&mut self, now: Now) {
        match self.state {
            LinkState::SigningOn { deadline, .. } if now.at >= deadline => {
                let reason = format!(
                    "no answer to 0800/{SIGN_ON:03} within {:?}",
                    self.s.echo_timeout
                );
                self.not_up(now, reason);
            }
            LinkState::SigningOff { deadline, .. } if now.at >= deadline => {
                let reason = format!(
                    "no answer to 0800/{SIGN_OFF:03} within {:?}",
                    self.s.echo_timeout
                );
                self.close(Some(reason));
            }
            LinkState::Up => self.up_timers(now),
            _ => {}
        }
    }

    /// Bytes to write; report how many went out with `handle_transmitted`.
    pub fn poll_transmit(&self) -> Option<&[u8]> {
        (!self.wbuf.is_empty()).then_some(&self.wbuf[..])
    }

    pub fn handle_transmitted(&mut self, n: usize) {
        debug_assert!(n <= self.wbuf.len(), "more written than buffered");
        self.wbuf.advance(n.min(self.wbuf.len()));
    }

    /// An outcome for a requester.
    pub fn poll_reply(&mut self) -> Option<(R, Outcome)> {
        self.replies.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// The next moment `handle_timeout` (or `poll_connect`) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            LinkState::Disconnected { until } => Some(until),
            LinkState::SigningOn { deadline, .. } | LinkState::SigningOff { deadline, .. } => {
                Some(deadline)
            }
            LinkState::Up => {
                let echo = self
                    .echo
                    .map_or(self.last_rx + self.s.echo_interval, |e| e.deadline);
                Some(self.table.next_deadline().map_or(echo, |d| d.min(echo)))
            }
            LinkState::Connecting | LinkState::Closed => None,
        }
    }

    fn event(&mut self, e: LinkEvent) {
        if self.events.len() < MAX_EVENTS {
            self.events.push_back(e);
        }
    }

    fn next_stan(&mut self) -> u32 {
        self.stan = self.stan % 999_999 + 1;
        self.stan
    }

    /// Appends an 0800 with DE70 `code` to the write buffer; its STAN.
    fn network_request(&mut self, now: Now, code: u16) -> u32 {
        let stan = self.next_stan();
        let time = clock::transmission_time(now.unix_ms / 1000);
        let mut b = MessageBuilder::new(self.s.spec, Mti::NETWORK);
        b.set(7, &time)
            .set_number(11, u64::from(stan))
            .set_number(70, u64::from(code));
        let at = self.s.framing.begin(&mut self.wbuf);
        // Built from constants and a clock: it always packs.
        if b.pack(&mut self.wbuf).is_ok() {
            let _ = self.s.framing.finish(&mut self.wbuf, at);
        } else {
            self.wbuf.truncate(at);
        }
        stan
    }

    fn come_up(&mut self, now: Now) {
        assert!(self.table.is_empty(), "requests in flight on a new link");
        self.state = LinkState::Up;
        self.backoff.reset();
        self.echo = None;
        self.missed = 0;
        self.last_rx = now.at;
        let attempts = std::mem::take(&mut self.attempts);
        self.event(LinkEvent::Up { attempts });
    }

    /// A connect or sign-on failed: try again after a backoff.
    fn not_up(&mut self, now: Now, reason: String) {
        self.m.connect_failures.increment(1);
        let retry_in = self.disconnect(now);
        let attempts = self.attempts;
        self.event(LinkEvent::ConnectFailed {
            reason,
            attempts,
            retry_in,
        });
    }

    /// An up link went down.
    fn drop_link(&mut self, now: Now, reason: String) {
        let retry_in = self.disconnect(now);
        self.event(LinkEvent::Down { reason, retry_in });
    }

    fn disconnect(&mut self, now: Now) -> Duration {
        self.fail_all(Failure::LinkLost);
        self.wbuf.clear();
        self.echo = None;
        self.missed = 0;
        let retry_in = self.backoff.next_delay();
        self.state = LinkState::Disconnected {
            until: now.at + retry_in,
        };
        retry_in
    }

    fn close(&mut self, unconfirmed: Option<String>) {
        let was_signing_off = matches!(self.state, LinkState::SigningOff { .. });
        self.fail_all(Failure::LinkLost);
        self.wbuf.clear();
        self.echo = None;
        self.state = LinkState::Closed;
        if let (true, Some(reason)) = (was_signing_off, unconfirmed) {
            self.event(LinkEvent::SignOffUnconfirmed { reason });
        }
    }

    fn fail_all(&mut self, why: Failure) {
        for (_, p) in self.table.drain() {
            self.replies.push_back((p.reply, Outcome::Failed(why)));
        }
    }

    fn up_timers(&mut self, now: Now) {
        let (replies, timeouts) = (&mut self.replies, &self.m.timeouts);
        self.table.expire(now.at, |_, p| {
            timeouts.increment(1);
            replies.push_back((p.reply, Outcome::Failed(Failure::Timeout)));
        });
        let echo_due = self.last_rx + self.s.echo_interval;
        match self.echo {
            Some(e) if now.at >= e.deadline => {
                self.echo = None;
                self.missed += 1;
                self.m.missed_echoes.increment(1);
                let missed = self.missed;
                self.event(LinkEvent::MissedEcho { missed });
                if missed >= self.s.max_missed_echoes {
                    self.drop_link(now, format!("{missed} echo tests unanswered"));
                    return;
                }
            }
            None if now.at >= echo_due => {
                let stan = self.network_request(now, ECHO);
                self.echo = Some(EchoPending {
                    stan,
                    deadline: now.at + self.s.echo_timeout,
                });
            }
            _ => {}
        }
        // Without traffic the echo schedule restarts from now.
        if self.echo.is_none() && now.at >= echo_due {
            self.last_rx = now.at;
        }
    }

    fn on_network_answer(&mut self, now: Now, msg: &Message) {
        let Some(stan) = msg.stan() else { return };
        match self.state {
            LinkState::SigningOn { stan: ours, .. } if stan == ours => {
                match msg.response_code().unwrap_or(*b"  ") {
                    codes::APPROVED => self.come_up(now),
                    code => self.not_up(
                        now,
                        format!("sign-on refused with {}", String::from_utf8_lossy(&code)),
                    ),
                }
            }
            LinkState::SigningOff { stan: ours, .. } if stan == ours => {
                self.close(None);
                self.event(LinkEvent::SignedOff);
            }
            LinkState::Up => {
                if self.echo.is_some_and(|e| e.stan == stan) {
                    self.echo = None;
                    self.missed = 0;
                }
            }
            _ => {}
        }
    }

    /// The host tests us: answer its 0800.
    fn answer_host_network(&mut self, msg: &Message) {
        if let Some(mut b) = MessageBuilder::response_to(msg, &[7, 11, 70]) {
            b.set(39, &codes::APPROVED);
            let at = self.s.framing.begin(&mut self.wbuf);
            if b.pack(&mut self.wbuf).is_ok() {
                let _ = self.s.framing.finish(&mut self.wbuf, at);
            } else {
                self.wbuf.truncate(at);
            }
        }
    }

    fn on_answer(&mut self, now: Now, msg: &Message) {
        let mti = msg.mti();
        let Some(key) = MatchKey::of(msg) else {
            self.m.unknown.increment(1);
            self.event(LinkEvent::Unmatchable { mti });
            return;
        };
        // Network management is matched by STAN alone (above); every
        // transaction answer is checked against its request.
        let must = if matches!(mti.class(), 1 | 2 | 4) {
            self.s.answer_must_match
        } else {
            FieldSet::EMPTY
        };
        let spec = self.s.spec;
        let mut disagree = FieldSet::EMPTY;
        let checked = self.table.take_if(&key, |p| {
            disagree = disagreeing(spec, must, &p.request, msg);
            disagree.is_empty()
        });
        let terminal = SmallText::new(key.terminal_id()).unwrap_or(SmallText::EMPTY);
        let pan = msg.pan().map(|p| p.masked());
        let stan = key.stan();
        match checked {
            Checked::Found(p) => {
                self.m
                    .upstream_seconds
                    .record(now.at.saturating_duration_since(p.sent_at).as_secs_f64());
                self.replies.push_back((
                    p.reply,
                    Outcome::Answered {
                        body: msg.frame().clone(),
                        response_code: msg.response_code().unwrap_or(*b"  "),
                        approval_code: msg.approval_code(),
                    },
                ));
            }
            Checked::Refused => {
                debug_assert!(!disagree.is_empty());
                self.m.mismatch.increment(1);
                self.event(LinkEvent::Mismatch {
                    mti,
                    stan,
                    terminal,
                    pan,
                    fields: disagree,
                });
            }
            Checked::Late => {
                self.m.late.increment(1);
                self.event(LinkEvent::Late {
                    mti,
                    stan,
                    terminal,
                    pan,
                });
            }
            Checked::Unknown => {
                self.m.unknown.increment(1);
                self.event(LinkEvent::Unknown {
                    mti,
                    stan,
                    terminal,
                    pan,
                });
            }
        }
    }
}

/// The fields of `must` that `request` and `answer` both carry with
/// different bytes.
fn disagreeing(spec: &'static Spec, must: FieldSet, request: &Bytes, answer: &Message) -> FieldSet {
    let mut out = FieldSet::EMPTY;
    if must.is_empty() {
        return out;
    }
    // The request is what this link framed from the switch's own packing:
    // it parses. Should it not, there is nothing to compare it with.
    let Ok(req) = Message::parse(request.clone(), spec) else {
        return out;
    };
    for n in must.iter() {
        if let (Some(a), Some(b)) = (req.field(n), answer.field(n))
            && a != b
        {
            out.insert(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::LengthHeader;
    use crate::iso8583::specs;

    const TID: &[u8] = b"TERM0001";
    const PAN: &[u8] = b"4761739001010010";

    fn settings() -> LinkSettings {
        LinkSettings {
            name: "acq#0".into(),
            acquirer: "acq".into(),
            index: 0,
            addr: "127.0.0.1:9".parse().unwrap(),
            spec: specs::iso87ascii(),
            framing: LengthHeader::Binary2,
            max_frame: 8192,
            request_timeout: Duration::from_millis(1000),
            connect_timeout: Duration::from_millis(500),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1600),
            echo_interval: Duration::from_millis(5000),
            echo_timeout: Duration::from_millis(500),
            max_missed_echoes: 2,
            max_in_flight: 8,
            sign_on: true,
            answer_must_match: FieldSet::of(&crate::config::DEFAULT_ANSWER_MUST_MATCH),
            seed: 7,
        }
    }

    fn t0() -> Now {
        Now {
            at: Instant::now(),
            unix_ms: 1_795_592_096_000,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    type Core = LinkCore<u32>;

    /// The messages the core wants written, taken out of its buffer.
    fn sent(core: &mut Core) -> Vec<Message> {
        let mut out = Vec::new();
        let Some(buf) = core.poll_transmit() else {
            return out;
        };
        let mut buf = Bytes::copy_from_slice(buf);
        let n = buf.len();
        while !buf.is_empty() {
            let len = LengthHeader::Binary2.read(&buf[..2]).expect("header");
            let frame = buf.slice(2..2 + len);
            buf.advance(2 + len);
            out.push(Message::parse(frame, specs::iso87ascii()).expect("parses"));
        }
        core.handle_transmitted(n);
        out
    }

    fn replies(core: &mut Core) -> Vec<(u32, Result<[u8; 2], Failure>)> {
        std::iter::from_fn(|| core.poll_reply())
            .map(|(r, o)| match o {
                Outcome::Answered { response_code, .. } => (r, Ok(response_code)),
                Outcome::Failed(f) => (r, Err(f)),
            })
            .collect()
    }

    fn events(core: &mut Core) -> Vec<LinkEvent> {
        std::iter::from_fn(|| core.poll_event()).collect()
    }

    fn answer_to(req: &Message, code: &[u8; 2]) -> Bytes {
        let mut b =
            MessageBuilder::response_to(req, &[2, 3, 4, 7, 11, 37, 41, 49, 70]).expect("a request");
        b.set(39, code);
        b.to_bytes().expect("packs").freeze()
    }

    fn request(stan: u32, amount: u64) -> (MatchKey, Bytes) {
        let rrn = format!("{:012}", 500_000_000_000u64 + u64::from(stan)).into_bytes();
        let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::FINANCIAL);
        b.set(2, PAN)
            .set(3, b"000000")
            .set_number(4, amount)
            .set(7, b"1125101010")
            .set_number(11, u64::from(stan))
            .set(37, &rrn)
            .set(41, TID)
            .set(49, b"840");
        let body = b.to_bytes().expect("packs").freeze();
        (MatchKey::new(Mti::FINANCIAL, TID, stan).unwrap(), body)
    }

    /// A core connected and signed on at `t0`.
    fn up_core(s: LinkSettings) -> (Core, Now) {
        let now = t0();
        let mut c = Core::new(s, now);
        assert!(c.poll_connect(now));
        c.handle_connected(now);
        let signon = sent(&mut c);
        assert_eq!(signon.len(), 1);
        assert_eq!(signon[0].network_code(), Some(1));
        c.handle_frame(now, answer_to(&signon[0], b"00"));
        assert!(c.is_up());
        assert_eq!(events(&mut c), [LinkEvent::Up { attempts: 1 }]);
        (c, now)
    }

    /// Forwards `request(stan, amount)` with reply address `stan`; the
    /// message as the host sees it.
    fn forward(c: &mut Core, now: Now, stan: u32, amount: u64) -> Message {
        let (key, body) = request(stan, amount);
        c.handle_forward(now, key, body, stan);
        sent(c).pop().expect("forwarded")
    }

    #[test]
    fn sign_on_answered_00_brings_the_link_up_with_de7_from_now() {
        let now = t0();
        let mut c = Core::new(settings(), now);
        assert_eq!(c.poll_timeout(), Some(now.at), "first connect at once");
        assert!(c.poll_connect(now));
        assert!(!c.poll_connect(now), "one connect at a time");
        c.handle_connected(now);
        assert!(c.wants_socket() && !c.is_up());
        let m = sent(&mut c);
        assert_eq!(m[0].mti(), Mti::NETWORK);
        assert_eq!(m[0].field(7), Some(&b"1125073456"[..]));
        // An 0810 with another STAN does not sign on.
        let mut other = MessageBuilder::response_to(&m[0], &[7, 70]).unwrap();
        other.set_number(11, 999).set(39, b"00");
        c.handle_frame(now, other.to_bytes().unwrap().freeze());
        assert!(!c.is_up());
        c.handle_frame(now, answer_to(&m[0], b"00"));
        assert!(c.is_up());
        assert_eq!(c.state(), LinkState::Up);
    }

    #[test]
    fn sign_on_refused_backs_off_and_connects_again() {
        let now = t0();
        let mut c = Core::new(settings(), now);
        assert!(c.poll_connect(now));
        c.handle_connected(now);
        let m = sent(&mut c);
        c.handle_frame(now, answer_to(&m[0], b"05"));
        assert!(!c.is_up() && !c.wants_socket());
        let ev = events(&mut c);
        let LinkEvent::ConnectFailed {
            reason, retry_in, ..
        } = &ev[0]
        else {
            panic!("{ev:?}")
        };
        assert!(reason.contains("refused with 05"), "{reason}");
        assert!(*retry_in >= ms(50) && *retry_in <= ms(100), "{retry_in:?}");
        let again = c.poll_timeout().expect("a retry is scheduled");
        assert!(!c.poll_connect(now));
        assert!(c.poll_connect(Now {
            at: again,
            ..now.plus(*retry_in)
        }));
    }

    #[test]
    fn sign_on_not_answered_by_echo_timeout_fails() {
        let now = t0();
        let mut c = Core::new(settings(), now);
        c.poll_connect(now);
        c.handle_connected(now);
        sent(&mut c);
        assert_eq!(c.poll_timeout(), Some(now.at + ms(500)));
        c.handle_timeout(now.plus(ms(499)));
        assert!(c.wants_socket());
        c.handle_timeout(now.plus(ms(500)));
        assert!(!c.wants_socket() && !c.is_up());
        assert!(matches!(&events(&mut c)[0],
            LinkEvent::ConnectFailed { reason, .. } if reason.contains("0800/001")));
    }

    #[test]
    fn without_sign_on_a_connection_is_up() {
        let now = t0();
        let mut c = Core::new(
            LinkSettings {
                sign_on: false,
                ..settings()
            },
            now,
        );
        c.poll_connect(now);
        c.handle_connected(now);
        assert!(c.is_up());
        assert!(c.poll_transmit().is_none());
    }

    #[test]
    fn two_missed_echoes_drop_the_link() {
        let (mut c, t) = up_core(settings());
        assert_eq!(c.poll_timeout(), Some(t.at + ms(5000)), "echo when idle");
        let t1 = t.plus(ms(5000));
        c.handle_timeout(t1);
        let echo = sent(&mut c);
        assert_eq!(echo[0].network_code(), Some(301));
        c.handle_timeout(t1.plus(ms(500)));
        assert_eq!(events(&mut c), [LinkEvent::MissedEcho { missed: 1 }]);
        assert!(c.is_up(), "one miss is tolerated");
        let t2 = t1.plus(ms(5500));
        c.handle_timeout(t2);
        assert_eq!(sent(&mut c)[0].network_code(), Some(301));
        c.handle_timeout(t2.plus(ms(500)));
        assert!(!c.is_up());
        let ev = events(&mut c);
        assert_eq!(ev[0], LinkEvent::MissedEcho { missed: 2 });
        assert!(matches!(&ev[1], LinkEvent::Down { reason, .. } if reason.contains("2 echo")));
    }

    #[test]
    fn an_answered_echo_resets_the_missed_count() {
        let (mut c, t) = up_core(settings());
        let t1 = t.plus(ms(5000));
        c.handle_timeout(t1);
        sent(&mut c);
        c.handle_timeout(t1.plus(ms(500)));
        assert_eq!(events(&mut c), [LinkEvent::MissedEcho { missed: 1 }]);
        let t2 = t1.plus(ms(5500));
        c.handle_timeout(t2);
        let echo = sent(&mut c);
        c.handle_frame(t2.plus(ms(10)), answer_to(&echo[0], b"00"));
        let t3 = t2.plus(ms(5010));
        c.handle_timeout(t3);
        sent(&mut c);
        c.handle_timeout(t3.plus(ms(500)));
        assert_eq!(
            events(&mut c),
            [LinkEvent::MissedEcho { missed: 1 }],
            "count started again"
        );
        assert!(c.is_up());
    }

    #[test]
    fn backoff_doubles_within_bounds_with_jitter_and_replays_from_its_seed() {
        let delays = |seed| {
            let mut b = Backoff::new(ms(100), ms(1600), seed);
            (0..12).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        let a = delays(1);
        let mut base = ms(100);
        for d in &a {
            assert!(*d >= base / 2 && *d <= base, "{d:?} for base {base:?}");
            base = (base * 2).min(ms(1600));
        }
        assert!(a[8..].iter().all(|d| *d >= ms(800)), "reaches the cap");
        assert_eq!(a, delays(1), "same seed, same delays");
        assert_ne!(a, delays(2), "another seed, other delays");
    }

    #[test]
    fn backoff_grows_across_failures_and_resets_after_sign_on() {
        let mut now = t0();
        let mut c = Core::new(settings(), now);
        let mut retries = Vec::new();
        for _ in 0..5 {
            assert!(c.poll_connect(now));
            c.handle_connect_failed(now, "refused");
            let Some(LinkEvent::ConnectFailed { retry_in, .. }) = c.poll_event() else {
                panic!("no event")
            };
            retries.push(retry_in);
            now = now.plus(retry_in);
        }
        assert!(retries[4] >= ms(800), "{retries:?}");
        assert!(c.poll_connect(now));
        c.handle_connected(now);
        let m = sent(&mut c);
        c.handle_frame(now, answer_to(&m[0], b"00"));
        assert_eq!(events(&mut c), [LinkEvent::Up { attempts: 6 }]);
        c.handle_closed(now, "host closed the connection");
        let Some(LinkEvent::Down { retry_in, .. }) = c.poll_event() else {
            panic!("no down event")
        };
        assert!(
            retry_in <= ms(100),
            "reset to the initial delay: {retry_in:?}"
        );
    }

    #[test]
    fn forwards_while_down_are_answered_link_down() {
        let now = t0();
        let mut c = Core::new(settings(), now);
        let (key, body) = request(1, 100);
        c.handle_forward(now, key, body.clone(), 1);
        c.poll_connect(now);
        c.handle_connected(now);
        c.handle_forward(now, key, body, 2);
        assert_eq!(
            replies(&mut c),
            [(1, Err(Failure::LinkDown)), (2, Err(Failure::LinkDown))]
        );
        assert_eq!(sent(&mut c).len(), 1, "only the sign-on went out");
    }

    #[test]
    fn requests_in_flight_when_the_connection_drops_are_lost() {
        let (mut c, t) = up_core(settings());
        forward(&mut c, t, 1, 100);
        forward(&mut c, t, 2, 200);
        c.handle_closed(t, "read: reset");
        let mut r = replies(&mut c);
        r.sort_by_key(|(to, _)| *to);
        assert_eq!(
            r,
            [(1, Err(Failure::LinkLost)), (2, Err(Failure::LinkLost))]
        );
        assert_eq!(c.in_flight(), 0);
        assert!(
            matches!(&events(&mut c)[0], LinkEvent::Down { reason, .. } if reason == "read: reset")
        );
    }

    #[test]
    fn answers_are_delivered_and_timeouts_come_in_deadline_order() {
        let (mut c, t) = up_core(settings());
        let m1 = forward(&mut c, t, 1, 100);
        forward(&mut c, t.plus(ms(10)), 2, 200);
        forward(&mut c, t.plus(ms(20)), 3, 300);
        c.handle_frame(t.plus(ms(30)), answer_to(&m1, b"00"));
        assert_eq!(replies(&mut c), [(1, Ok(*b"00"))]);
        assert_eq!(c.poll_timeout(), Some(t.at + ms(1010)));
        c.handle_timeout(t.plus(ms(1020)));
        assert_eq!(
            replies(&mut c),
            [(2, Err(Failure::Timeout)), (3, Err(Failure::Timeout))]
        );
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn a_late_answer_after_timeout_is_dropped() {
        let (mut c, t) = up_core(settings());
        let m = forward(&mut c, t, 1, 100);
        c.handle_timeout(t.plus(ms(1000)));
        assert_eq!(replies(&mut c), [(1, Err(Failure::Timeout))]);
        c.handle_frame(t.plus(ms(1100)), answer_to(&m, b"00"));
        assert!(replies(&mut c).is_empty());
        assert!(matches!(
            events(&mut c)[..],
            [LinkEvent::Late { stan: 1, .. }]
        ));
    }

    #[test]
    fn duplicate_keys_and_a_full_table_are_refused() {
        let (mut c, t) = up_core(LinkSettings {
            max_in_flight: 2,
            ..settings()
        });
        forward(&mut c, t, 1, 100);
        let (key, body) = request(1, 100);
        c.handle_forward(t, key, body, 91);
        forward(&mut c, t, 2, 100);
        let (key, body) = request(3, 100);
        c.handle_forward(t, key, body, 93);
        assert_eq!(
            replies(&mut c),
            [(91, Err(Failure::Duplicate)), (93, Err(Failure::LinkBusy))]
        );
        assert!(sent(&mut c).is_empty(), "refused requests are not written");
    }

    #[test]
    fn a_host_0800_is_answered_0810() {
        let (mut c, t) = up_core(settings());
        let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::NETWORK);
        b.set(7, b"1125101010")
            .set_number(11, 4242)
            .set_number(70, 301);
        c.handle_frame(t, b.to_bytes().unwrap().freeze());
        let out = sent(&mut c);
        assert_eq!(out[0].mti(), Mti::NETWORK_RESPONSE);
        assert_eq!(out[0].stan(), Some(4242));
        assert_eq!(out[0].response_code(), Some(*b"00"));
    }

    #[test]
    fn a_mismatched_answer_is_discarded_and_the_right_one_delivered_later() {
        let (mut c, t) = up_core(settings());
        let host_sees_1 = forward(&mut c, t, 1, 100);
        let host_sees_2 = forward(&mut c, t, 2, 200);
        // The host answers request 1 with request 2's STAN (wrong-stan).
        let mut b = MessageBuilder::response_to(&host_sees_1, &[2, 3, 4, 7, 37, 41, 49]).unwrap();
        b.set_number(11, 2).set(39, b"00");
        c.handle_frame(t.plus(ms(5)), b.to_bytes().unwrap().freeze());
        assert!(replies(&mut c).is_empty(), "not delivered to request 2");
        let ev = events(&mut c);
        let [
            LinkEvent::Mismatch {
                stan, fields, pan, ..
            },
        ] = &ev[..]
        else {
            panic!("{ev:?}")
        };
        assert_eq!(*stan, 2);
        assert_eq!(fields.to_string(), "4,37");
        assert_eq!(
            pan.map(|p| p.to_string()).as_deref(),
            Some("476173******0010")
        );
        assert_eq!(c.in_flight(), 2, "request 2 still waits");
        c.handle_frame(t.plus(ms(6)), answer_to(&host_sees_2, b"05"));
        assert_eq!(replies(&mut c), [(2, Ok(*b"05"))]);
    }

    #[test]
    fn a_mismatched_answer_leaves_its_request_to_time_out() {
        let (mut c, t) = up_core(settings());
        forward(&mut c, t, 1, 100);
        let (_, other) = request(1, 999);
        let other = Message::parse(other, specs::iso87ascii()).unwrap();
        c.handle_frame(t, answer_to(&other, b"00"));
        assert!(replies(&mut c).is_empty());
        c.handle_timeout(t.plus(ms(1000)));
        assert_eq!(replies(&mut c), [(1, Err(Failure::Timeout))]);
    }

    #[test]
    fn an_empty_answer_must_match_accepts_any_answer_with_the_key() {
        let (mut c, t) = up_core(LinkSettings {
            answer_must_match: FieldSet::EMPTY,
            ..settings()
        });
        forward(&mut c, t, 1, 100);
        let (_, other) = request(1, 999);
        let other = Message::parse(other, specs::iso87ascii()).unwrap();
        c.handle_frame(t, answer_to(&other, b"00"));
        assert_eq!(replies(&mut c), [(1, Ok(*b"00"))]);
    }

    #[test]
    fn shutdown_signs_off_and_answers_what_is_in_flight_lost() {
        let (mut c, t) = up_core(settings());
        forward(&mut c, t, 1, 100);
        c.handle_shutdown(t);
        assert!(!c.is_up());
        assert_eq!(replies(&mut c), [(1, Err(Failure::LinkLost))]);
        let off = sent(&mut c);
        assert_eq!(off[0].network_code(), Some(2));
        let (key, body) = request(2, 100);
        c.handle_forward(t, key, body, 2);
        assert_eq!(replies(&mut c), [(2, Err(Failure::LinkDown))]);
        c.handle_frame(t.plus(ms(5)), answer_to(&off[0], b"00"));
        assert!(c.is_closed() && !c.wants_socket());
        assert_eq!(events(&mut c), [LinkEvent::SignedOff]);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn an_unanswered_sign_off_closes_by_the_echo_timeout() {
        let (mut c, t) = up_core(settings());
        c.handle_shutdown(t);
        sent(&mut c);
        c.handle_timeout(t.plus(ms(500)));
        assert!(c.is_closed());
        assert!(matches!(
            &events(&mut c)[..],
            [LinkEvent::SignOffUnconfirmed { .. }]
        ));
    }

    #[test]
    fn a_full_write_buffer_stops_taking_forwards() {
        let (mut c, t) = up_core(LinkSettings {
            max_in_flight: 100_000,
            ..settings()
        });
        let mut stan = 0;
        while c.accepts_forwards() {
            stan += 1;
            let (key, body) = request(stan, 100);
            c.handle_forward(t, key, body, stan);
        }
        assert!(c.poll_transmit().unwrap().len() >= MAX_PENDING_WRITE);
        c.handle_transmitted(c.poll_transmit().unwrap().len());
        assert!(c.accepts_forwards());
    }

    #[test]
    fn field_sets_list_their_numbers() {
        let s = FieldSet::of(&[128, 2, 41, 0, 200]);
        assert_eq!(s.iter().collect::<Vec<_>>(), [2, 41, 128]);
        assert!(s.contains(128) && !s.contains(0) && !s.contains(3));
        assert_eq!(format!("{s}"), "2,41,128");
    }
}
