//! The store-and-forward state machine of one acquirer, without I/O and
//! without a clock: time comes in as `now`. Inputs go in through
//! `handle_*`; what to forward, what to journal and when to be woken come
//! out of `poll_send`, `poll_event` and `poll_timeout`.
//!
//! The head of the FIFO is the only entry in motion: it is idle (no link
//! up, or nothing queued), sent and waiting for its answer, or waiting to
//! be retried. Every other entry waits behind it, so the host sees them in
//! the order they were queued.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{GiveUp, SafEntry, SafEvent, messages};
use crate::clock::Now;
use crate::iso8583::Spec;
use crate::switch::acquirer::MatchKey;
use crate::switch::saf::SafConfig;

/// What became of a send, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The host answered with this DE39.
    Answered([u8; 2]),
    /// No answer: timeout, link down or lost, link queue full.
    NotAnswered,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Head {
    /// Nothing in motion: the queue is empty or no link is up.
    Idle,
    /// Sent as attempt `attempt`; its answer is awaited.
    Waiting { attempt: u32 },
    /// Not acknowledged; goes again at this moment.
    RetryAt(Instant),
}

pub struct SafCore {
    config: SafConfig,
    spec: &'static Spec,
    queue: VecDeque<SafEntry>,
    head: Head,
    links_up: bool,
    /// The head's send, until the driver takes it: at most one at a time.
    send: Option<(MatchKey, Bytes)>,
    /// Bounded by the queue: one `Sent` and one `Acked` per handled input,
    /// at most one `Expired` per entry.
    events: VecDeque<SafEvent>,
    /// When the idle head becomes too old (checked while no link is up, so
    /// an expired head does not wait for a link to be given up).
    head_expires: Option<Instant>,
}

impl SafCore {
    pub fn new(config: SafConfig, spec: &'static Spec) -> SafCore {
        SafCore {
            queue: VecDeque::with_capacity(config.max_entries.min(1024)),
            config,
            spec,
            head: Head::Idle,
            links_up: false,
            send: None,
            events: VecDeque::new(),
            head_expires: None,
        }
    }

    /// Queues an entry at the tail; hands it back when `max_entries` are
    /// queued.
    pub fn handle_entry(&mut self, now: Now, entry: SafEntry) -> Result<(), SafEntry> {
        if self.is_full() {
            return Err(entry);
        }
        self.queue.push_back(entry);
        assert!(self.queue.len() <= self.config.max_entries);
        self.step(now);
        Ok(())
    }

    /// Whether any link of the acquirer is up.
    pub fn handle_links_up(&mut self, now: Now, up: bool) {
        self.links_up = up;
        self.step(now);
    }

    /// The outcome of the send handed out by `poll_send`.
    pub fn handle_answer(&mut self, now: Now, answer: Answer) {
        let Head::Waiting { attempt } = self.head else {
            debug_assert!(false, "store-and-forward answer with nothing sent");
            return;
        };
        // A send not taken yet is void once its outcome is known.
        self.send = None;
        let Some(head) = self.queue.front() else {
            unreachable!("store-and-forward waits for an answer with an empty queue");
        };
        debug_assert_eq!(head.attempts, attempt);
        match answer {
            Answer::Answered(code) if crate::codes::acknowledges(code) => {
                self.events.push_back(SafEvent::Acked {
                    txn: head.txn,
                    kind: head.kind,
                    response_code: code,
                });
                self.queue.pop_front();
                self.head = Head::Idle;
            }
            Answer::Answered(_) | Answer::NotAnswered => {
                self.head = Head::RetryAt(later(now.at, self.config.retry_interval));
            }
        }
        self.step(now);
    }

    /// The moment from `poll_timeout` has come (early calls do nothing).
    pub fn handle_timeout(&mut self, now: Now) {
        if let Head::RetryAt(at) = self.head
            && now.at >= at
        {
            self.head = Head::Idle;
        }
        self.step(now);
    }

    /// The message to forward now through a link that is up, and its key.
    /// Its outcome must come back through `handle_answer`.
    pub fn poll_send(&mut self) -> Option<(MatchKey, Bytes)> {
        self.send.take()
    }

    /// The next event to journal, in the order they happened.
    pub fn poll_event(&mut self) -> Option<SafEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.head {
            Head::RetryAt(at) => Some(at),
            Head::Idle => self.head_expires,
            Head::Waiting { .. } => None,
        }
    }

    /// The entry in motion (or next to go).
    pub fn head(&self) -> Option<&SafEntry> {
        self.queue.front()
    }

    /// Entries queued (the head included) and not acknowledged or given up.
    pub fn depth(&self) -> usize {
        self.queue.len()
    }

    pub fn is_full(&self) -> bool {
        self.queue.len() >= self.config.max_entries
    }

    /// Moves the head on as far as it can go now: gives up heads that are
    /// too old or out of attempts, then sends the next one if a link is up.
    fn step(&mut self, now: Now) {
        self.head_expires = None;
        while self.head == Head::Idle {
            let Some(head) = self.queue.front_mut() else {
                break;
            };
            if let Some(reason) = give_up(&self.config, now, head) {
                self.events.push_back(SafEvent::Expired {
                    txn: head.txn,
                    kind: head.kind,
                    attempts: head.attempts,
                    reason,
                });
                self.queue.pop_front();
                continue;
            }
            if !self.links_up {
                self.head_expires = expires_at(&self.config, now, head);
                break;
            }
            let body = if head.attempts == 0 {
                head.body.clone()
            } else {
                messages::as_repeat(&head.body, self.spec).unwrap_or_else(|| head.body.clone())
            };
            let attempt = head.attempts + 1;
            assert!(attempt > head.attempts && attempt <= self.config.max_attempts);
            head.attempts = attempt;
            assert!(self.send.is_none(), "store-and-forward: two sends at once");
            self.send = Some((head.key, body));
            self.events.push_back(SafEvent::Sent {
                txn: head.txn,
                kind: head.kind,
                attempt,
            });
            self.head = Head::Waiting { attempt };
        }
        debug_assert!(self.queue.len() <= self.config.max_entries);
        debug_assert!(self.head == Head::Idle || !self.queue.is_empty());
        debug_assert!(self.send.is_none() || matches!(self.head, Head::Waiting { .. }));
    }
}

fn give_up(config: &SafConfig, now: Now, e: &SafEntry) -> Option<GiveUp> {
    let age = Duration::from_millis(now.unix_ms.saturating_sub(e.queued_at_ms));
    if e.attempts >= config.max_attempts {
        Some(GiveUp::Attempts)
    } else if age > config.expiry {
        Some(GiveUp::Age)
    } else {
        None
    }
}

/// The first moment `give_up` finds the entry too old (the age must pass
/// `expiry`, hence the extra millisecond); `None` if beyond what an
/// `Instant` can hold.
fn expires_at(config: &SafConfig, now: Now, e: &SafEntry) -> Option<Instant> {
    let age_ms = now.unix_ms.saturating_sub(e.queued_at_ms);
    let expiry_ms = u64::try_from(config.expiry.as_millis()).unwrap_or(u64::MAX);
    let left = expiry_ms.saturating_sub(age_ms).saturating_add(1);
    now.at.checked_add(Duration::from_millis(left))
}

/// `at + d`, or a moment decades away if that overflows an `Instant` (a
/// retry interval out of all reason must not panic).
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(at)
}
