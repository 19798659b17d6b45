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
use crate::clock::{self, Now};
use crate::codes;
use crate::iso8583::{MaskedPan, Message, MessageBuilder, Mti, SmallText, Spec};
use crate::security::hsm::HsmCommand;
use crate::switch::acquirer::matcher::{Checked, InFlight, MatchKey, Refused};
use crate::switch::acquirer::{EchoSpans, Failure, Outcome};
use crate::switch::card_security::effects::Calls;
use crate::switch::card_security::{Hsm, MacToMake, Refusal};
use crate::telemetry;

mod hsm;

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
    /// The host changed the zone's keys (0800, DE70 161), or the change
    /// was refused (the 0810's code and why).
    KeyChange { result: Result<(), String> },
    /// The host announced a cutover (0800, DE70 201) and this acquirer
    /// is configured to follow it (`cutover_on_host_0800`).
    Cutover,
    /// A request that could not be given its MAC: not sent.
    Unsealable { reason: String },
    /// An answer whose MAC did not verify (`reason`): discarded, its
    /// request failed as unanswered.
    AnswerMacWrong {
        mti: Mti,
        stan: u32,
        terminal: SmallText,
        pan: Option<MaskedPan>,
        reason: &'static str,
    },
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
    /// Where the fields to check lie in it, when the sender knew.
    echo: EchoSpans,
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
    /// When the host last answered an echo (Unix ms; 0 never): the
    /// dashboard's "last echo".
    last_echo_ms: u64,
    /// When a frame last came in (echoes go out when the link is idle).
    last_rx: Instant,
    backoff: Backoff,
    /// Connect attempts since the link was last up.
    attempts: u32,
    wbuf: BytesMut,
    replies: VecDeque<(R, Outcome)>,
    events: VecDeque<LinkEvent>,
    m: Metrics,
    /// Card security work handed to the driver (a network HSM's commands,
    /// key store rewrites) and what waits for it (`core/hsm.rs`).
    hsm: Calls<hsm::Parked<R>>,
    /// Connections made so far: an 0810 whose key change outlived its
    /// connection is not sent on the next.
    epoch: u64,
}

impl<R> LinkCore<R> {
    /// A link with no connection; the first connect is due at `now`.
    pub fn new(settings: LinkSettings, now: Now) -> LinkCore<R> {
        let m = Metrics::new(&settings.name);
        LinkCore {
            table: InFlight::new(settings.acquirer.max_in_flight_per_link),
            backoff: Backoff::new(
                settings.acquirer.backoff_initial,
                settings.acquirer.backoff_max,
                settings.seed,
            ),
            s: settings,
            state: LinkState::Disconnected { until: now.at },
            stan: 0,
            echo: None,
            missed: 0,
            last_echo_ms: 0,
            last_rx: now.at,
            attempts: 0,
            wbuf: BytesMut::with_capacity(64 * 1024),
            replies: VecDeque::new(),
            events: VecDeque::new(),
            m,
            hsm: Calls::default(),
            epoch: 0,
        }
    }

    pub fn settings(&self) -> &LinkSettings {
        &self.s
    }

    /// New settings of the acquirer from a reload, which changes only
    /// timeouts and echoes of a running link (`reload::diff`): they apply
    /// to what starts from now on; requests in flight keep their
    /// deadlines.
    pub fn update_acquirer(&mut self, acquirer: crate::switch::acquirer::AcquirerConfig) {
        self.s.acquirer = acquirer;
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

    /// When the host last answered an echo (Unix ms), if it has.
    pub fn last_echo_ms(&self) -> Option<u64> {
        (self.last_echo_ms > 0).then_some(self.last_echo_ms)
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
        self.epoch += 1;
        self.wbuf.clear();
        self.last_rx = now.at;
        if self.s.acquirer.sign_on {
            let stan = self.network_request(now, SIGN_ON);
            self.state = LinkState::SigningOn {
                stan,
                deadline: now.at + self.s.acquirer.echo_timeout,
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
                    deadline: now.at + self.s.acquirer.echo_timeout,
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
    pub fn handle_forward(
        &mut self,
        now: Now,
        key: MatchKey,
        body: Bytes,
        echo: EchoSpans,
        reply: R,
    ) {
        if self.state != LinkState::Up {
            self.replies
                .push_back((reply, Outcome::Failed(Failure::LinkDown)));
            return;
        }
        let (body, echo) = match self.seal(body, echo) {
            Ok(Sealed::Now(body, echo)) => (body, echo),
            Ok(Sealed::Later(body, made, timeout)) => {
                // A network HSM makes the MAC: sent when it comes.
                self.seal_later(now, key, body, made, timeout, reply);
                return;
            }
            Err(reason) => {
                self.event(LinkEvent::Unsealable { reason });
                self.replies
                    .push_back((reply, Outcome::Failed(Failure::LinkDown)));
                return;
            }
        };
        self.send(now, key, body, echo, reply);
    }

    /// Frames a (sealed) request into the write buffer and enters it in
    /// the in-flight table; answers at once when it can not be.
    fn send(&mut self, now: Now, key: MatchKey, body: Bytes, echo: EchoSpans, reply: R) {
        let at = self.wbuf.len();
        if let Err(e) = self.s.acquirer.framing.encode(&body, &mut self.wbuf) {
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
            echo,
        };
        if let Err((why, p)) =
            self.table
                .insert(key, pending, now.at + self.s.acquirer.request_timeout)
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
        let msg = match Message::parse(frame, self.s.acquirer.spec.spec) {
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
                self.answer_host_network(now, &msg);
            }
            return;
        }
        if mti.is_request() {
            self.event(LinkEvent::HostRequest { mti });
            return;
        }
        // Signing on or off nothing is in flight: answers then are to
        // requests already answered `LinkLost` (and reversed), dropped
        // quietly as before the split.
        if self.state == LinkState::Up {
            self.on_answer(now, &msg);
        }
    }

    /// Timers: request timeouts, sign-on/off and echo deadlines, echoes
    /// due on an idle link.
    pub fn handle_timeout(&mut self, now: Now) {
        self.expire_hsm(now);
        match self.state {
            LinkState::SigningOn { deadline, .. } if now.at >= deadline => {
                let reason = format!(
                    "no answer to 0800/{SIGN_ON:03} within {:?}",
                    self.s.acquirer.echo_timeout
                );
                self.not_up(now, reason);
            }
            LinkState::SigningOff { deadline, .. } if now.at >= deadline => {
                let reason = format!(
                    "no answer to 0800/{SIGN_OFF:03} within {:?}",
                    self.s.acquirer.echo_timeout
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
        let hsm = self.hsm.next_deadline();
        let state = match self.state {
            LinkState::Disconnected { until } => Some(until),
            LinkState::SigningOn { deadline, .. } | LinkState::SigningOff { deadline, .. } => {
                Some(deadline)
            }
            LinkState::Up => {
                let echo = self
                    .echo
                    .map_or(self.last_rx + self.s.acquirer.echo_interval, |e| e.deadline);
                Some(self.table.next_deadline().map_or(echo, |d| d.min(echo)))
            }
            LinkState::Connecting | LinkState::Closed => None,
        };
        [state, hsm].into_iter().flatten().min()
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
        let mut b = MessageBuilder::new(self.s.acquirer.spec.spec, Mti::NETWORK);
        b.set(7, &time)
            .set_number(11, u64::from(stan))
            .set_number(70, u64::from(code));
        let at = self.s.acquirer.framing.begin(&mut self.wbuf);
        // Built from constants and a clock: it always packs.
        if b.pack(&mut self.wbuf).is_ok() {
            let _ = self.s.acquirer.framing.finish(&mut self.wbuf, at);
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
        self.drop_parked();
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
        self.drop_parked();
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
        let echo_due = self.last_rx + self.s.acquirer.echo_interval;
        match self.echo {
            Some(e) if now.at >= e.deadline => {
                self.echo = None;
                self.missed += 1;
                self.m.missed_echoes.increment(1);
                let missed = self.missed;
                self.event(LinkEvent::MissedEcho { missed });
                if missed >= self.s.acquirer.max_missed_echoes {
                    self.drop_link(now, format!("{missed} echo tests unanswered"));
                    return;
                }
            }
            None if now.at >= echo_due => {
                let stan = self.network_request(now, ECHO);
                self.echo = Some(EchoPending {
                    stan,
                    deadline: now.at + self.s.acquirer.echo_timeout,
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
            LinkState::Up if self.echo.is_some_and(|e| e.stan == stan) => {
                self.echo = None;
                self.missed = 0;
                self.last_echo_ms = now.unix_ms;
            }
            _ => {}
        }
    }

    /// The host tests us, or changes the zone's keys: answer its 0800.
    fn answer_host_network(&mut self, now: Now, msg: &Message) {
        let code = match msg.network_code() {
            Some(crate::switch::card_security::exchange::KEY_CHANGE) => {
                match self.zone_key_change(now, msg) {
                    Some(code) => code,
                    None => return,
                }
            }
            // The driver makes it (settlement::BusinessDay); the host is
            // answered 00 either way: its day has ended.
            Some(HOST_CUTOVER) if self.s.acquirer.cutover_on_host_0800 => {
                self.event(LinkEvent::Cutover);
                codes::APPROVED
            }
            _ => codes::APPROVED,
        };
        self.answer_network(msg, code);
    }

    /// The 0810 to a host's 0800.
    fn answer_network(&mut self, msg: &Message, code: [u8; 2]) {
        if let Some(mut b) = MessageBuilder::response_to(msg, &[7, 11, 70]) {
            b.set(39, &code);
            let at = self.s.acquirer.framing.begin(&mut self.wbuf);
            if b.pack(&mut self.wbuf).is_ok() {
                let _ = self.s.acquirer.framing.finish(&mut self.wbuf, at);
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
        // transaction answer is checked against its request
        // (`take_answer`), once its MAC holds.
        match self.answer_mac(now, msg) {
            AnswerMac::Holds => {}
            AnswerMac::Wrong(reason) => {
                return self.refuse_answer(msg, key, reason, Failure::BadAnswerMac);
            }
            AnswerMac::Later(command, timeout) => {
                return self.check_answer_later(now, msg, key, command, timeout);
            }
        }
        self.take_answer(now, msg, key);
    }

    /// A transaction answer whose MAC holds: matched to its request and
    /// checked against it.
    fn take_answer(&mut self, now: Now, msg: &Message, key: MatchKey) {
        let mti = msg.mti();
        let must = if matches!(mti.class(), 1 | 2 | 4) {
            self.s.answer_must_match
        } else {
            FieldSet::EMPTY
        };
        let spec = self.s.acquirer.spec.spec;
        let mut disagree = FieldSet::EMPTY;
        let checked = self.table.take_if(&key, |p| {
            disagree = disagreeing(spec, must, &p.request, &p.echo, msg);
            disagree.is_empty()
        });
        // What the log lines of the unhappy cases name; not worked out for
        // the answers that are delivered.
        let terminal = || SmallText::new(key.terminal_id()).unwrap_or(SmallText::EMPTY);
        let pan = || msg.pan().map(|p| p.masked());
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
                        settlement_date: settlement_date(msg),
                    },
                ));
            }
            Checked::Refused => {
                debug_assert!(!disagree.is_empty());
                self.m.mismatch.increment(1);
                self.event(LinkEvent::Mismatch {
                    mti,
                    stan,
                    terminal: terminal(),
                    pan: pan(),
                    fields: disagree,
                });
            }
            Checked::Late => {
                self.m.late.increment(1);
                self.event(LinkEvent::Late {
                    mti,
                    stan,
                    terminal: terminal(),
                    pan: pan(),
                });
            }
            Checked::Unknown => {
                self.m.unknown.increment(1);
                self.event(LinkEvent::Unknown {
                    mti,
                    stan,
                    terminal: terminal(),
                    pan: pan(),
                });
            }
        }
    }
}

impl<R> LinkCore<R> {
    /// A transaction request (01xx, 02xx, 04xx) with the zone's MAC, when
    /// the acquirer wants one. A changed layout loses the echo spans.
    fn seal(&self, body: Bytes, echo: EchoSpans) -> Result<Sealed, String> {
        let sec = &self.s.acquirer.security;
        let (Some((algorithm, key)), Some(hsm)) = (&sec.mac, &sec.hsm) else {
            return Ok(Sealed::Now(body, echo));
        };
        let msg = Message::parse(body, self.s.acquirer.spec.spec).map_err(|e| e.to_string())?;
        if !matches!(msg.mti().class(), 1 | 2 | 4) {
            return Ok(Sealed::Now(msg.frame().clone(), echo));
        }
        match hsm {
            Hsm::Soft(h) => {
                let sealed =
                    crate::switch::card_security::seal(h, *algorithm, key, &sec.mac_fields, &msg)?;
                Ok(Sealed::Now(sealed, EchoSpans::UNKNOWN))
            }
            Hsm::Network(n) => {
                let (body, made) = crate::switch::card_security::seal_later(
                    *algorithm,
                    key,
                    &sec.mac_fields,
                    &msg,
                )?;
                Ok(Sealed::Later(body, made, n.timeout()))
            }
        }
    }

    /// Does a transaction answer's MAC hold, when the acquirer MACs its
    /// messages (or is it for the network HSM to say)?
    fn answer_mac(&self, now: Now, msg: &Message) -> AnswerMac {
        let sec = &self.s.acquirer.security;
        let (Some((algorithm, key)), Some(hsm)) = (&sec.mac, &sec.hsm) else {
            return AnswerMac::Holds;
        };
        if !matches!(msg.mti().class(), 1 | 2 | 4) {
            return AnswerMac::Holds;
        }
        use crate::switch::card_security::{MacMode, mac_check_command, mac_verdict};
        let command = mac_check_command(
            MacMode::Require,
            *algorithm,
            Some(key),
            &sec.mac_fields,
            msg,
        );
        let checked = match command {
            Ok(Some(command)) => match hsm {
                Hsm::Soft(h) => mac_verdict(h.execute_at(&command, now.unix_ms)),
                Hsm::Network(n) => return AnswerMac::Later(command, n.timeout()),
            },
            Ok(None) => Ok(()),
            Err(r) => Err(r),
        };
        match checked {
            Ok(()) => AnswerMac::Holds,
            Err(r) => AnswerMac::Wrong(answer_refusal(r)),
        }
    }

    /// The host's 0800 with DE70 161: a new ZPK and/or ZAK under the ZMK
    /// in DE48. Every key is decrypted and its KCV checked before any is
    /// taken. The 0810's code: 00 taken; 30 DE48 unreadable or a key the
    /// zone does not have; 63 a KCV that does not match (or no ZMK); 96
    /// the key store could not be written. `None` when the keys are being
    /// written to the key store (off the runtime's thread): the 0810 goes
    /// once they are ([`LinkCore::handle_hsm_reply`]).
    fn zone_key_change(&mut self, now: Now, msg: &Message) -> Option<[u8; 2]> {
        match self.take_zone_keys(now, msg) {
            Ok(ZoneKeys::Install(install)) => {
                self.install_later(msg, install);
                None
            }
            Ok(ZoneKeys::Import(importing)) => {
                self.import_later(now, msg, importing);
                None
            }
            Err((code, why)) => {
                self.key_change_done(Err(format!("{} ({why})", String::from_utf8_lossy(&code))));
                Some(code)
            }
        }
    }

    /// The metric and the event of a zone key change, taken or refused.
    fn key_change_done(&mut self, result: Result<(), String>) {
        let label = if result.is_ok() { "ok" } else { "refused" };
        metrics::counter!(crate::telemetry::KEY_CHANGES, "side" => "acquirer", "result" => label)
            .increment(1);
        self.event(LinkEvent::KeyChange { result });
    }

    /// The keys of a host's key change, decrypted and checked, to install
    /// (the soft HSM), or to import first (a network HSM: A6, each KCV
    /// checked as its answer comes); else the 0810's code and why.
    fn take_zone_keys(&self, now: Now, msg: &Message) -> Result<ZoneKeys, ([u8; 2], String)> {
        use crate::security::store::KeyType;
        use crate::switch::card_security::exchange;
        let sec = &self.s.acquirer.security;
        let (Some(zmk), Some(hsm)) = (&sec.zmk, &sec.hsm) else {
            return Err((
                codes::SECURITY_VIOLATION,
                "the acquirer has no zmk configured".into(),
            ));
        };
        let entries = match msg.field(48).map(exchange::parse) {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Err((codes::FORMAT_ERROR, e)),
            None => return Err((codes::FORMAT_ERROR, "no DE48".into())),
        };
        let mut targets = Vec::with_capacity(entries.len());
        for e in entries {
            let target = match &e.tag {
                b"ZPK" => sec.pin.as_ref().map(|(n, _)| (n.clone(), KeyType::Zpk)),
                b"ZAK" => sec.mac.as_ref().map(|(_, n)| (n.clone(), KeyType::Zak)),
                _ => None,
            };
            let Some((name, key_type)) = target else {
                let tag = String::from_utf8_lossy(&e.tag);
                return Err((
                    codes::FORMAT_ERROR,
                    format!("{tag}: not a key this zone uses"),
                ));
            };
            targets.push((name, key_type, e));
        }
        let hsm = match hsm {
            Hsm::Soft(h) => h,
            Hsm::Network(n) => {
                return Ok(ZoneKeys::Import(hsm::Importing::new(
                    n.clone(),
                    zmk.clone(),
                    targets,
                    msg.frame().clone(),
                    self.epoch,
                )));
            }
        };
        let mut keys = Vec::with_capacity(targets.len());
        for (name, key_type, e) in &targets {
            match hsm.key_from_under(zmk, &e.under, &e.kcv) {
                Ok(k) => keys.push((name.clone(), *key_type, k)),
                Err(err) => return Err((codes::SECURITY_VIOLATION, err.to_string())),
            }
        }
        Ok(ZoneKeys::Install(
            crate::switch::card_security::effects::KeyInstall {
                hsm: hsm.clone(),
                keys,
                now_ms: now.unix_ms,
                overlap_ms: sec.key_overlap_ms,
            },
        ))
    }

    /// Discards an answer whose MAC failed; its request, if still in
    /// flight, fails as unanswered.
    fn refuse_answer(
        &mut self,
        msg: &Message,
        key: MatchKey,
        reason: &'static str,
        failure: Failure,
    ) {
        metrics::counter!(crate::telemetry::LINK_ANSWER_MAC_FAILURES, "link" => self.s.name.clone())
            .increment(1);
        if let Checked::Found(p) = self.table.take_if(&key, |_| true) {
            self.replies.push_back((p.reply, Outcome::Failed(failure)));
        }
        self.event(LinkEvent::AnswerMacWrong {
            mti: msg.mti(),
            stan: key.stan(),
            terminal: SmallText::new(key.terminal_id()).unwrap_or(SmallText::EMPTY),
            pan: msg.pan().map(|p| p.masked()),
            reason,
        });
    }
}

/// A host's key change, checked: what comes next.
enum ZoneKeys {
    /// The soft HSM's keys, to write to the key store.
    Install(crate::switch::card_security::effects::KeyInstall),
    /// For the network HSM to import, one A6 per key.
    Import(Box<hsm::Importing>),
}

/// What the request becomes for the host ([`LinkCore::seal`]).
enum Sealed {
    /// As it goes (with its MAC when the zone wants one).
    Now(Bytes, EchoSpans),
    /// Packed with a placeholder MAC the network HSM makes; given up after
    /// the duration.
    Later(BytesMut, MacToMake, Duration),
}

/// Does an answer's MAC hold ([`LinkCore::answer_mac`])?
enum AnswerMac {
    Holds,
    /// No: why (the metric's and the log's reason).
    Wrong(&'static str),
    /// For the network HSM to say: this command, given up after the
    /// duration.
    Later(HsmCommand, Duration),
}

/// The reason an answer's MAC refusal is logged with.
fn answer_refusal(r: Refusal) -> &'static str {
    match r {
        Refusal::MacMissing | Refusal::MacMisplaced | Refusal::MacWrong => r.label(),
        Refusal::HsmUnavailable => r.label(),
        _ => "hsm_error",
    }
}

/// The fields of `must` that `request` and `answer` both carry with
/// different bytes.
fn disagreeing(
    spec: &'static Spec,
    must: FieldSet,
    request: &Bytes,
    echo: &EchoSpans,
    answer: &Message,
) -> FieldSet {
    let mut out = FieldSet::EMPTY;
    if must.is_empty() {
        return out;
    }
    if echo.is_known() {
        // The terminal found the fields when it parsed the request.
        for (n, a) in echo.fields(request) {
            if must.contains(n)
                && let Some(b) = answer.field(n)
                && a != b
            {
                out.insert(n);
            }
        }
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

/// DE70 of a host's cutover announcement.
pub const HOST_CUTOVER: u16 = 201;

/// DE15 (MMDD) as a number, when it is a plausible month and day.
fn settlement_date(msg: &Message) -> u16 {
    match msg.number(15) {
        Some(v) if (1..=12).contains(&(v / 100)) && (1..=31).contains(&(v % 100)) => v as u16,
        _ => 0,
    }
}
