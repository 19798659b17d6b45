//! Acquirer links: one actor per persistent TCP connection to an upstream
//! host ([`link`]), each with its own in-flight table ([`matcher`]).
//! Terminals hold cheap [`LinkHandle`]s and forward requests with
//! `try_send` on a bounded queue; answers come back on the terminal's own
//! bounded inbox as [`Reply`]s.

mod config;
pub mod link;
pub mod matcher;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::iso8583::Spec;
pub(crate) use config::AcquirerFile;
pub use config::{AcquirerConfig, DEFAULT_ANSWER_MUST_MATCH, StandInConfig};
pub use matcher::MatchKey;

/// A request on its way upstream.
pub struct Forward {
    pub key: MatchKey,
    /// The request as the host's spec lays it out.
    pub body: Bytes,
    /// Where the fields its answer must echo lie in `body`, when the
    /// sender knows (it parsed the request); else the link parses it.
    pub echo: EchoSpans,
    pub reply_to: ReplyTo,
}

/// Most fields an answer is checked against (`answer_must_match`) whose
/// place in the request travels with a forward; a longer list is checked
/// by parsing the request again.
pub const MAX_ECHO_SPANS: usize = 8;

/// Where in a forwarded request the fields of `answer_must_match` lie
/// (field, length, start), found by the terminal when it parsed the
/// request, so that the link checks each answer without parsing the
/// request a second time. `UNKNOWN` (store-and-forward, a request written
/// in another spec, a list over `MAX_ECHO_SPANS`, a field over 255
/// bytes): the link parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoSpans {
    known: bool,
    len: u8,
    spans: [(u8, u8, u16); MAX_ECHO_SPANS],
}

impl EchoSpans {
    pub const UNKNOWN: EchoSpans = EchoSpans {
        known: false,
        len: 0,
        spans: [(0, 0, 0); MAX_ECHO_SPANS],
    };

    /// The spans in `msg` (whose frame is the forwarded body) of the
    /// fields of `must` it carries.
    pub fn of(msg: &crate::iso8583::Message, must: link::FieldSet) -> EchoSpans {
        let mut out = EchoSpans {
            known: true,
            ..EchoSpans::UNKNOWN
        };
        let frame = msg.frame();
        for n in must.iter() {
            let Some(value) = msg.field(n) else { continue };
            // A field is a slice of the frame: its place is its offset.
            let start = value.as_ptr() as usize - frame.as_ptr() as usize;
            debug_assert!(start + value.len() <= frame.len());
            let (Ok(len), Ok(start)) = (u8::try_from(value.len()), u16::try_from(start)) else {
                return EchoSpans::UNKNOWN;
            };
            if out.len as usize == MAX_ECHO_SPANS {
                return EchoSpans::UNKNOWN;
            }
            out.spans[out.len as usize] = (n as u8, len, start);
            out.len += 1;
        }
        out
    }

    pub fn is_known(&self) -> bool {
        self.known
    }

    /// (field, bytes) of each span, read from the forwarded `body`.
    pub fn fields<'a>(&'a self, body: &'a [u8]) -> impl Iterator<Item = (usize, &'a [u8])> + 'a {
        self.spans[..self.len as usize]
            .iter()
            .filter_map(move |&(n, len, start)| {
                let (start, len) = (start as usize, len as usize);
                body.get(start..start + len).map(|v| (n as usize, v))
            })
    }
}

/// Where an answer goes: the terminal's inbox and the request's slot there.
pub struct ReplyTo {
    pub tx: mpsc::Sender<Reply>,
    pub token: u32,
}

impl ReplyTo {
    /// Sends the outcome. The terminal sized its inbox for every request it
    /// has in flight, so this never finds it full; a closed inbox means the
    /// terminal is gone and the answer has nowhere to go.
    pub fn send(self, outcome: Outcome) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Reply {
            token: self.token,
            outcome,
        }) {
            tracing::error!("terminal inbox full; an answer was dropped (inbox sizing bug)");
        }
    }
}

/// An answer for a terminal.
pub struct Reply {
    pub token: u32,
    pub outcome: Outcome,
}

pub enum Outcome {
    /// The host answered: its message (host spec), DE39 and DE38, read
    /// once by the link so the terminal need not parse the answer again.
    Answered {
        body: Bytes,
        response_code: [u8; 2],
        approval_code: Option<crate::iso8583::SmallText>,
        /// DE15, the host's settlement date (MMDD) as a number; 0 when
        /// absent or not a date.
        settlement_date: u16,
    },
    Failed(Failure),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the request timeout.
    Timeout,
    /// The link was down, or went down before the request was written:
    /// the host never saw it.
    LinkDown,
    /// The link went down with the request in its in-flight table (entered
    /// when it is queued for writing, so possibly not yet written): the
    /// host may have it, so it is reversed, like a timeout.
    LinkLost,
    /// The link's in-flight table is full (a slow host).
    LinkBusy,
    /// The same key is already in flight.
    Duplicate,
    /// The host's answer came with a MAC that did not verify: discarded,
    /// and the request treated as unanswered (the host may have acted on
    /// it, so it is reversed).
    BadAnswerMac,
    /// The network HSM did not make the request's MAC in time (or could
    /// not be reached): not sent, 96.
    HsmUnavailable,
    /// The network HSM did not check the answer's MAC in time: the host
    /// may have acted on the request, so it is reversed; 96.
    AnswerUnverified,
}

/// State a link shares with the rest of the switch.
pub struct LinkShared {
    pub name: String,
    pub addr: std::net::SocketAddr,
    up: AtomicBool,
    in_flight: AtomicUsize,
    /// When the host last answered an echo (Unix ms; 0 never).
    last_echo_ms: std::sync::atomic::AtomicU64,
    /// What an operator or a reload asked of it ([`LinkAdmin`]).
    admin: AtomicU8,
    /// Tells watchers (health checks, tests, the demo) when the link goes up
    /// or down; the hot path reads `up` instead.
    changes: tokio::sync::watch::Sender<bool>,
}

impl LinkShared {
    pub(crate) fn new(name: String, addr: std::net::SocketAddr) -> LinkShared {
        LinkShared {
            name,
            addr,
            up: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_echo_ms: std::sync::atomic::AtomicU64::new(0),
            admin: AtomicU8::new(LinkAdmin::Running as u8),
            changes: tokio::sync::watch::Sender::new(false),
        }
    }

    /// What an operator or a reload asked of the link, as it stands.
    pub fn admin(&self) -> LinkAdmin {
        LinkAdmin::of(self.admin.load(Ordering::Relaxed))
    }

    pub(crate) fn set_admin(&self, a: LinkAdmin) {
        self.admin.store(a as u8, Ordering::Relaxed);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.changes
            .send_if_modified(|v| std::mem::replace(v, up) != up);
    }

    /// Resolves once the link is up (`true`) or down (`false`).
    pub async fn wait_for(&self, up: bool) {
        let mut rx = self.changes.subscribe();
        let _ = rx.wait_for(|&v| v == up).await;
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// When the host last answered an echo (Unix ms), if it has.
    pub fn last_echo_ms(&self) -> Option<u64> {
        let ms = self.last_echo_ms.load(Ordering::Relaxed);
        (ms > 0).then_some(ms)
    }

    pub(crate) fn set_last_echo_ms(&self, ms: u64) {
        self.last_echo_ms.store(ms, Ordering::Relaxed);
    }
}

/// What an operator (`POST /api/actions/link/stop|start`) or a reload (a
/// link no longer in the file) asked of a link, and how far it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkAdmin {
    /// Connecting, signing on, forwarding, reconnecting: as configured.
    Running = 0,
    /// Asked to stop: takes no new request, finishes those in flight,
    /// then signs off.
    Stopping = 1,
    /// Signed off and staying down until started again.
    Stopped = 2,
    /// No longer in the config: finishing what is in flight, then signing
    /// off for good.
    Retiring = 3,
    /// Signed off for good.
    Retired = 4,
}

impl LinkAdmin {
    fn of(v: u8) -> LinkAdmin {
        match v {
            1 => LinkAdmin::Stopping,
            2 => LinkAdmin::Stopped,
            3 => LinkAdmin::Retiring,
            4 => LinkAdmin::Retired,
            _ => LinkAdmin::Running,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LinkAdmin::Running => "running",
            LinkAdmin::Stopping => "stopping",
            LinkAdmin::Stopped => "stopped",
            LinkAdmin::Retiring => "retiring",
            LinkAdmin::Retired => "retired",
        }
    }
}

/// A cheap handle on a link actor.
#[derive(Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<Forward>,
    pub shared: Arc<LinkShared>,
}

impl LinkHandle {
    /// A handle on a queue its caller reads instead of a link actor (unit
    /// tests of the terminal core; the deterministic simulation).
    pub fn channel(
        shared: Arc<LinkShared>,
        capacity: usize,
    ) -> (LinkHandle, mpsc::Receiver<Forward>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (LinkHandle { tx, shared }, rx)
    }

    pub fn is_up(&self) -> bool {
        self.shared.is_up()
    }

    /// Queues a request; hands it back if the link's queue is full.
    pub fn try_forward(&self, f: Forward) -> Result<(), Forward> {
        self.tx.try_send(f).map_err(|e| match e {
            mpsc::error::TrySendError::Full(f) | mpsc::error::TrySendError::Closed(f) => f,
        })
    }
}

/// One configured acquirer and its links (a generation's view of them).
#[derive(Clone)]
pub struct AcquirerHandle {
    pub name: String,
    pub spec: &'static Spec,
    pub links: Vec<LinkHandle>,
    pub stand_in: StandInConfig,
    /// The fields an answer must echo (`answer_must_match`), for the spans
    /// that travel with each forward.
    pub answer_must_match: link::FieldSet,
    /// Reversals and advices waiting to reach this acquirer.
    pub saf: crate::switch::saf::SafHandle,
    /// The zone's PIN key and format (its MAC is the links').
    pub security: crate::switch::card_security::AcquirerSecurity,
}

impl AcquirerHandle {
    pub fn any_up(&self) -> bool {
        self.links.iter().any(LinkHandle::is_up)
    }

    /// A link that is up, chosen by `hash` among those up, so one key
    /// always lands on the same link while the set of links up holds (and
    /// the link's table catches duplicates).
    pub fn pick(&self, hash: u64) -> Option<&LinkHandle> {
        let up = self.links.iter().filter(|l| l.is_up()).count();
        if up == 0 {
            return None;
        }
        let n = (hash % up as u64) as usize;
        self.links.iter().filter(|l| l.is_up()).nth(n)
    }
}
