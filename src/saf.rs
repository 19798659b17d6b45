//! Store-and-forward: reversals (0420) and advices (0120/0220) that must
//! reach an acquirer eventually. One actor per acquirer owns a FIFO queue,
//! sends its head through any link that is up, one at a time, and resends
//! until the host acknowledges it. After the first send an entry goes as a
//! repeat (0421, 0121, 0221). Bounded: `max_entries` per acquirer,
//! `max_attempts` sends, `expiry` age; what is given up is counted and
//! logged (and journaled as expired).
//!
//! While no link is up the queue waits; it drains after sign-on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::acquirer::{Forward, LinkHandle, MatchKey, Outcome, Reply, ReplyTo};
use crate::config::SafConfig;
use crate::iso8583::{Message, MessageBuilder, Mti, Spec};
use crate::telemetry;

/// One message to deliver.
#[derive(Clone, Debug)]
pub struct SafEntry {
    /// The transaction it belongs to (journal id).
    pub txn: u64,
    pub kind: SafKind,
    /// The message in the host's spec, as first sent (0420, 0120, 0220).
    pub body: Bytes,
    pub key: MatchKey,
    /// Sends so far (also across restarts, from the journal).
    pub attempts: u32,
    /// Unix ms when it was first queued (from the journal after a
    /// restart): `expiry_s` counts from here.
    pub queued_at_ms: u64,
}

impl SafEntry {
    /// A new entry, not sent yet.
    pub fn new(txn: u64, kind: SafKind, body: Bytes, key: MatchKey, queued_at_ms: u64) -> SafEntry {
        SafEntry {
            txn,
            kind,
            body,
            key,
            attempts: 0,
            queued_at_ms,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafKind {
    Reversal,
    Advice,
}

impl SafKind {
    pub fn name(self) -> &'static str {
        match self {
            SafKind::Reversal => "reversal",
            SafKind::Advice => "advice",
        }
    }
}

/// What happened to an entry; the server journals these.
#[derive(Clone, Debug)]
pub enum SafEvent {
    Sent {
        txn: u64,
        kind: SafKind,
        attempt: u32,
    },
    Acked {
        txn: u64,
        kind: SafKind,
        response_code: [u8; 2],
    },
    Expired {
        txn: u64,
        kind: SafKind,
    },
}

/// Where SAF events go (the journal, in the switch; a channel in tests).
pub type EventSink = Arc<dyn Fn(SafEvent) + Send + Sync>;

/// Queue of one acquirer, as the rest of the switch sees it.
#[derive(Clone)]
pub struct SafHandle {
    tx: mpsc::Sender<SafEntry>,
    depth: Arc<std::sync::atomic::AtomicUsize>,
}

impl SafHandle {
    /// A queue its caller reads instead of a SAF actor (unit tests of the
    /// terminal core; the deterministic simulation).
    pub fn channel(capacity: usize) -> (SafHandle, mpsc::Receiver<SafEntry>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let depth = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (SafHandle { tx, depth }, rx)
    }

    /// Queues an entry without waiting.
    pub fn push(&self, e: SafEntry) -> Result<(), SafEntry> {
        self.tx.try_send(e).map_err(|e| match e {
            mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => e,
        })
    }

    /// Entries waiting (queued and not yet acknowledged or expired).
    pub fn depth(&self) -> usize {
        self.depth.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub struct SafSettings {
    pub acquirer: String,
    pub spec: &'static Spec,
    pub config: SafConfig,
}

/// Starts the SAF actor of one acquirer sending through `links`.
pub fn spawn(
    settings: SafSettings,
    links: Vec<LinkHandle>,
    events: EventSink,
    stop: CancellationToken,
) -> (SafHandle, tokio::task::JoinHandle<()>) {
    let cap = settings.config.max_entries.max(1);
    let (tx, rx) = mpsc::channel(cap);
    let depth = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let actor = SafActor {
        s: settings,
        links,
        events,
        rx,
        queue: VecDeque::new(),
        depth: depth.clone(),
        stop,
    };
    let task = tokio::spawn(actor.run());
    (SafHandle { tx, depth }, task)
}

struct SafActor {
    s: SafSettings,
    links: Vec<LinkHandle>,
    events: EventSink,
    rx: mpsc::Receiver<SafEntry>,
    queue: VecDeque<SafEntry>,
    depth: Arc<std::sync::atomic::AtomicUsize>,
    stop: CancellationToken,
}

enum Attempt {
    Acked([u8; 2]),
    Failed(&'static str),
}

impl SafActor {
    async fn run(mut self) {
        let gauge = metrics::gauge!(telemetry::SAF_DEPTH, "acquirer" => self.s.acquirer.clone());
        let retries =
            metrics::counter!(telemetry::SAF_RETRIES, "acquirer" => self.s.acquirer.clone());
        let expired =
            metrics::counter!(telemetry::SAF_EXPIRED, "acquirer" => self.s.acquirer.clone());
        let (reply_tx, mut reply_rx) = mpsc::channel(1);
        loop {
            self.take_new();
            self.publish_depth(&gauge);
            let Some(head) = self.queue.front().cloned() else {
                tokio::select! {
                    e = self.rx.recv() => match e {
                        Some(e) => { self.accept(e); continue; }
                        None => return,
                    },
                    _ = self.stop.cancelled() => return,
                }
            };
            if self.give_up(&head) {
                expired.increment(1);
                warn!(acquirer = %self.s.acquirer, txn = head.txn, kind = head.kind.name(), attempts = head.attempts,
                    "store-and-forward gave up: expired or out of attempts");
                (self.events)(SafEvent::Expired {
                    txn: head.txn,
                    kind: head.kind,
                });
                self.queue.pop_front();
                continue;
            }
            let Some(link) = self.link_up() else {
                // Nothing up: wait for a link (or new entries, or stop).
                let waits: Vec<WaitUp> = self
                    .links
                    .iter()
                    .map(|l| {
                        let s = l.shared.clone();
                        Box::pin(async move { s.wait_for(true).await }) as WaitUp
                    })
                    .collect();
                tokio::select! {
                    _ = any_of(waits) => {}
                    e = self.rx.recv() => if let Some(e) = e { self.accept(e) } else { return },
                    _ = self.stop.cancelled() => return,
                }
                continue;
            };
            let attempt = head.attempts + 1;
            let body = if head.attempts == 0 {
                head.body.clone()
            } else {
                retries.increment(1);
                match as_repeat(&head.body, self.s.spec) {
                    Some(b) => b,
                    None => head.body.clone(),
                }
            };
            if let Some(e) = self.queue.front_mut() {
                e.attempts = attempt;
            }
            (self.events)(SafEvent::Sent {
                txn: head.txn,
                kind: head.kind,
                attempt,
            });
            let outcome = self
                .send(&link, head.key, body, &reply_tx, &mut reply_rx)
                .await;
            match outcome {
                Some(Attempt::Acked(code)) => {
                    debug!(acquirer = %self.s.acquirer, txn = head.txn, kind = head.kind.name(), "acknowledged");
                    (self.events)(SafEvent::Acked {
                        txn: head.txn,
                        kind: head.kind,
                        response_code: code,
                    });
                    self.queue.pop_front();
                }
                Some(Attempt::Failed(why)) => {
                    debug!(acquirer = %self.s.acquirer, txn = head.txn, attempt, "not acknowledged: {why}");
                    let until = Instant::now() + self.s.config.retry_interval;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            e = self.rx.recv() => match e { Some(e) => self.accept(e), None => return },
                            _ = self.stop.cancelled() => return,
                        }
                    }
                }
                None => return,
            }
        }
    }

    fn publish_depth(&self, gauge: &metrics::Gauge) {
        let n = self.queue.len() + self.rx.len();
        self.depth.store(n, std::sync::atomic::Ordering::Relaxed);
        gauge.set(n as f64);
    }

    fn take_new(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.accept(e);
        }
    }

    fn accept(&mut self, e: SafEntry) {
        if self.queue.len() >= self.s.config.max_entries {
            // The channel is as large as the queue, so this means both are
            // full: refuse loudly rather than grow.
            warn!(acquirer = %self.s.acquirer, txn = e.txn, "store-and-forward queue full; entry dropped");
            (self.events)(SafEvent::Expired {
                txn: e.txn,
                kind: e.kind,
            });
            return;
        }
        self.queue.push_back(e);
    }

    fn give_up(&self, e: &SafEntry) -> bool {
        let age_ms = crate::clock::unix_now_ms().saturating_sub(e.queued_at_ms);
        let age = Duration::from_millis(age_ms);
        e.attempts >= self.s.config.max_attempts || age > self.s.config.expiry
    }

    fn link_up(&self) -> Option<LinkHandle> {
        self.links.iter().find(|l| l.is_up()).cloned()
    }

    /// One send and its answer; `None` when stopping.
    async fn send(
        &mut self,
        link: &LinkHandle,
        key: MatchKey,
        body: Bytes,
        reply_tx: &mpsc::Sender<Reply>,
        reply_rx: &mut mpsc::Receiver<Reply>,
    ) -> Option<Attempt> {
        let f = Forward {
            key,
            body,
            reply_to: ReplyTo {
                tx: reply_tx.clone(),
                token: 0,
            },
        };
        if link.try_forward(f).is_err() {
            return Some(Attempt::Failed("link queue full"));
        }
        // The link answers every forward (answer, timeout, or link down).
        let reply = tokio::select! {
            r = reply_rx.recv() => r?,
            _ = self.stop.cancelled() => return None,
        };
        Some(match reply.outcome {
            Outcome::Answered { response_code, .. }
                if crate::codes::acknowledges(response_code) =>
            {
                Attempt::Acked(response_code)
            }
            Outcome::Answered { .. } => Attempt::Failed("host answered with a retry code"),
            Outcome::Failed(_) => Attempt::Failed("no answer"),
        })
    }
}

/// The same message marked as a repeat (0420 -> 0421).
fn as_repeat(body: &Bytes, spec: &'static Spec) -> Option<Bytes> {
    let msg = Message::parse(body.clone(), spec).ok()?;
    let repeat = msg.mti().repeat();
    if repeat == msg.mti() {
        return Some(body.clone());
    }
    let mut b = MessageBuilder::new(spec, repeat);
    b.copy_all(&msg);
    Some(b.to_bytes().ok()?.freeze())
}

type WaitUp = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Resolves when any of the futures does.
async fn any_of(mut futs: Vec<WaitUp>) {
    if futs.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for f in futs.iter_mut() {
            if f.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The 0420 reversal advice of a request the host may have acted on:
/// the request's own fields, DE39 = `reason`, and DE90 (original data
/// elements: MTI, STAN, DE7, then two zero-filled institution ids). Written
/// in the host's spec. A request that is itself a reversal keeps its DE90.
pub fn reversal_of(
    request: &Message,
    host_spec: &'static Spec,
    reason: [u8; 2],
) -> Option<(Bytes, MatchKey)> {
    const FIELDS: &[usize] = &[2, 3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49];
    let mti = Mti::REVERSAL_ADVICE;
    let own;
    let de90 = match request.field(90) {
        Some(v) => v,
        None => {
            own = original_data(
                request.mti(),
                request.stan()?,
                request.field(7).unwrap_or(&[]),
            );
            &own[..]
        }
    };
    let mut b = MessageBuilder::new(host_spec, mti);
    b.copy_fields(request, FIELDS);
    b.set(39, &reason).set(90, de90);
    let key = MatchKey::new(mti, &request.terminal_id()?, request.stan()?)?;
    Some((b.to_bytes().ok()?.freeze(), key))
}

/// DE90, original data elements: the original MTI, STAN (6 digits) and
/// DE7 (zeros unless it is the 10 digits `MMDDhhmmss`), then two
/// zero-filled institution ids.
fn original_data(mti: Mti, stan: u32, de7: &[u8]) -> [u8; 42] {
    let mut v = [b'0'; 42];
    v[..4].copy_from_slice(&mti.to_ascii());
    let mut rest = stan;
    for d in v[4..10].iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    if de7.len() == 10 {
        v[10..20].copy_from_slice(de7);
    }
    v
}

/// The advice (0120 for an 0100, 0220 for an 0200) telling the host of a
/// stand-in approval: the request's fields, DE38 and DE39 = 00.
pub fn advice_of(
    request: &Message,
    host_spec: &'static Spec,
    approval_code: &[u8],
) -> Option<(Bytes, MatchKey)> {
    let mti = Mti::new(request.mti().match_class() + 20)?;
    let mut b = MessageBuilder::new(host_spec, mti);
    b.copy_all(request);
    strip_sensitive(&mut b);
    b.set(38, approval_code).set(39, &crate::codes::APPROVED);
    let key = MatchKey::new(mti, &request.terminal_id()?, request.stan()?)?;
    Some((b.to_bytes().ok()?.freeze(), key))
}

/// A message a terminal sent as an advice (0120, 0220, 0420 and their
/// repeats), as the host's spec writes it, for store-and-forward.
pub fn advice_from_terminal(msg: &Message, host_spec: &'static Spec) -> Option<(Bytes, MatchKey)> {
    let mti = Mti::new(msg.mti().match_class())?;
    let mut b = MessageBuilder::new(host_spec, mti);
    b.copy_all(msg);
    strip_sensitive(&mut b);
    let key = MatchKey::new(mti, &msg.terminal_id()?, msg.stan()?)?;
    Some((b.to_bytes().ok()?.freeze(), key))
}

/// Track data, PIN blocks and chip data have no business in a message that
/// waits in a queue.
fn strip_sensitive(b: &mut MessageBuilder<'_>) {
    for n in [35, 36, 45, 52, 55] {
        b.remove(n);
    }
}

/// Rebuilds, from what the journal kept of a request, the message that
/// store-and-forward must deliver after a restart: the 0420 reversal
/// (`advice_mti` `None`) or an advice of that MTI. The journal holds no
/// full card number, so the message carries none: the host matches it by
/// DE90 (reversals), DE11, DE37 and DE41.
pub fn from_journal(
    req: &crate::journal::RequestData,
    reversal_reason: Option<[u8; 2]>,
    advice_mti: Option<u16>,
    host_spec: &'static Spec,
) -> Option<(Bytes, MatchKey)> {
    let mti = match advice_mti {
        Some(m) => Mti::new(m)?,
        None => Mti::REVERSAL_ADVICE,
    };
    let stan = format!("{:06}", req.stan);
    let time = format!("{:010}", req.transmission_time);
    let currency = format!("{:03}", req.currency);
    let de90 = original_data(Mti::new(req.mti)?, req.stan, time.as_bytes());
    let mut b = MessageBuilder::new(host_spec, mti);
    b.set(3, b"000000")
        .set_number(4, req.amount_minor)
        .set(7, time.as_bytes())
        .set(11, stan.as_bytes());
    if !req.rrn.is_empty() {
        b.set(37, req.rrn.as_bytes());
    }
    b.set(41, req.terminal_id.as_bytes());
    if !req.merchant_id.is_empty() {
        b.set(42, req.merchant_id.as_bytes());
    }
    b.set(49, currency.as_bytes());
    if let Some(reason) = &reversal_reason {
        b.set(39, reason).set(90, &de90);
    } else {
        b.set(39, &crate::codes::APPROVED);
    }
    let key = MatchKey::new(mti, req.terminal_id.as_bytes(), req.stan)?;
    Some((b.to_bytes().ok()?.freeze(), key))
}
