//! The tokio task around [`SafCore`]: takes entries from the handle's
//! channel (only while the core has room), tells the core when the set of
//! links up changes, forwards what it hands out through a link that is up,
//! brings back the link's answer (a link answers every forward), sleeps
//! until the core's next deadline, and journals its events.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::{Answer, EventSink, SafCore, SafEntry, SafEvent};
use crate::clock::Now;
use crate::switch::acquirer::{EchoSpans, Forward, LinkHandle, Outcome, Reply, ReplyTo};
use crate::telemetry;

pub(super) struct Driver {
    pub acquirer: String,
    pub core: SafCore,
    pub links: Vec<LinkHandle>,
    /// The acquirer's links as a reload changes them; `None` when they
    /// never change.
    pub links_changes: Option<tokio::sync::watch::Receiver<Vec<LinkHandle>>>,
    pub events: EventSink,
    pub rx: mpsc::Receiver<SafEntry>,
    /// The handle's reservation count, released here as entries leave.
    pub depth: Arc<AtomicUsize>,
    /// Where to say that an entry with an `answer_to` was given up.
    pub given_up_to: std::collections::HashMap<u64, tokio::sync::mpsc::Sender<(u64, bytes::Bytes)>>,
    pub stop: CancellationToken,
}

struct Metrics {
    depth: metrics::Gauge,
    retries: metrics::Counter,
    expired: metrics::Counter,
}

pub(super) async fn run(mut d: Driver) {
    let m = Metrics {
        depth: metrics::gauge!(telemetry::SAF_DEPTH, "acquirer" => d.acquirer.clone()),
        retries: metrics::counter!(telemetry::SAF_RETRIES, "acquirer" => d.acquirer.clone()),
        expired: metrics::counter!(telemetry::SAF_EXPIRED, "acquirer" => d.acquirer.clone()),
    };
    // One send at a time, so one slot is enough.
    let (reply_tx, mut reply_rx) = mpsc::channel::<Reply>(1);
    let mut told_up = None;
    loop {
        let up_now: Vec<bool> = d.links.iter().map(LinkHandle::is_up).collect();
        let any_up = up_now.iter().any(|&u| u);
        if told_up != Some(any_up) {
            d.core.handle_links_up(Now::read(), any_up);
            told_up = Some(any_up);
        }
        d.carry_out(&reply_tx, &m);

        let deadline = d.core.poll_timeout();
        let timer = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let room = !d.core.is_full();
        tokio::select! {
            biased;
            _ = d.stop.cancelled() => return,
            Some(reply) = reply_rx.recv() => {
                let answer = answer_of(&reply.outcome);
                debug!(acquirer = %d.acquirer, ?answer, "store-and-forward answer");
                d.hand_answer(&reply.outcome);
                d.core.handle_answer(Now::read(), answer);
            }
            e = d.rx.recv(), if room => match e {
                Some(e) => d.accept(e),
                None => return,
            },
            _ = timer => d.core.handle_timeout(Now::read()),
            _ = any_change(&d.links, &up_now) => {}
            l = next_links(&mut d.links_changes) => {
                if let Some(l) = l {
                    d.links = l;
                }
            }
        }
    }
}

impl Driver {
    /// The acknowledging answer of a head that wants it (one send at a
    /// time: the answer is the head's) goes to its `answer_to` before the
    /// core lets the entry go.
    fn hand_answer(&self, outcome: &Outcome) {
        let Outcome::Answered {
            body,
            response_code,
            ..
        } = outcome
        else {
            return;
        };
        let Some(head) = self.core.head() else { return };
        let Some(to) = &head.answer_to else { return };
        if !crate::codes::acknowledges(*response_code) {
            return;
        }
        if to.try_send((head.txn, body.clone())).is_err() {
            warn!(acquirer = %self.acquirer, txn = head.txn, kind = head.kind.name(),
                "store-and-forward: the answer's reader is gone or full; its answer is not recorded");
        }
    }

    fn accept(&mut self, e: SafEntry) {
        // Bounded by the queue: one per entry waiting for its answer.
        let given_up_to = e.answer_to.clone().map(|to| (e.txn, to));
        if let Some((txn, to)) = given_up_to {
            self.given_up_to.insert(txn, to);
        }
        if let Err(e) = self.core.handle_entry(Now::read(), e) {
            if let Some(to) = self.given_up_to.remove(&e.txn) {
                let _ = to.try_send((e.txn, bytes::Bytes::new()));
            }
            // Not reachable: the handle reserves room before it queues, and
            // nothing is received while the core is full.
            debug_assert!(
                false,
                "store-and-forward core refused an entry it had room for"
            );
            error!(acquirer = %self.acquirer, txn = e.txn, kind = e.kind.name(),
                "store-and-forward core full despite its reservation; entry given up");
            super::release(&self.depth);
            (self.events)(SafEvent::Expired {
                txn: e.txn,
                kind: e.kind,
                attempts: e.attempts,
                reason: super::GiveUp::QueueFull,
            });
        }
    }

    /// Journals what the core reports and forwards what it hands out. A
    /// send's `Sent` is journaled before the send goes, so the attempt
    /// count a restart finds is never short of what the host saw.
    fn carry_out(&mut self, reply_tx: &mpsc::Sender<Reply>, m: &Metrics) {
        loop {
            self.journal_events(m);
            let Some((key, body)) = self.core.poll_send() else {
                break;
            };
            let forwarded = match self.links.iter().find(|l| l.is_up()) {
                Some(link) => link
                    .try_forward(Forward {
                        key,
                        body,
                        // Rebuilt messages: the link parses them to check.
                        echo: EchoSpans::UNKNOWN,
                        reply_to: ReplyTo {
                            tx: reply_tx.clone(),
                            token: 0,
                        },
                    })
                    .map_err(|_| "link queue full"),
                None => Err("no link up"),
            };
            if let Err(why) = forwarded {
                debug!(acquirer = %self.acquirer, stan = key.stan(), "store-and-forward send not made: {why}");
                self.core.handle_answer(Now::read(), Answer::NotAnswered);
            }
        }
        m.depth
            .set(self.depth.load(std::sync::atomic::Ordering::Acquire) as f64);
    }

    fn journal_events(&mut self, m: &Metrics) {
        while let Some(e) = self.core.poll_event() {
            match &e {
                SafEvent::Sent { attempt, .. } => {
                    if *attempt > 1 {
                        m.retries.increment(1);
                    }
                }
                SafEvent::Acked { txn, kind, .. } => {
                    debug!(acquirer = %self.acquirer, txn, kind = kind.name(), "acknowledged");
                    super::release(&self.depth);
                    self.given_up_to.remove(txn);
                }
                SafEvent::Expired {
                    txn,
                    kind,
                    attempts,
                    reason,
                } => {
                    m.expired.increment(1);
                    warn!(acquirer = %self.acquirer, txn, kind = kind.name(), attempts, reason = reason.name(),
                        "store-and-forward gave up: expired or out of attempts");
                    super::release(&self.depth);
                    if let Some(to) = self.given_up_to.remove(txn) {
                        // An empty answer: none is coming.
                        let _ = to.try_send((*txn, bytes::Bytes::new()));
                    }
                }
            }
            (self.events)(e);
        }
    }
}

fn answer_of(outcome: &Outcome) -> Answer {
    match outcome {
        Outcome::Answered { response_code, .. } => Answer::Answered(*response_code),
        Outcome::Failed(_) => Answer::NotAnswered,
    }
}

/// The acquirer's links after the next change; never, when they do not
/// change.
async fn next_links(
    changes: &mut Option<tokio::sync::watch::Receiver<Vec<LinkHandle>>>,
) -> Option<Vec<LinkHandle>> {
    let Some(rx) = changes else {
        return std::future::pending().await;
    };
    match rx.changed().await {
        Ok(()) => Some(rx.borrow_and_update().clone()),
        Err(_) => {
            *changes = None;
            None
        }
    }
}

type WaitChange = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Resolves when any link is no longer as `was` saw it (up or down).
async fn any_change(links: &[LinkHandle], was: &[bool]) {
    let mut waits: Vec<WaitChange> = links
        .iter()
        .zip(was)
        .map(|(l, &up)| {
            let s = l.shared.clone();
            Box::pin(async move { s.wait_for(!up).await }) as WaitChange
        })
        .collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for w in waits.iter_mut() {
            if w.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}
