//! The state of one terminal connection and every decision about it, with
//! no I/O and no clock: the driver feeds it events (`handle_*`, each with
//! the moment it happened) and carries out what it asks (`poll_*`).
//!
//! It owns the requests in flight (a slab whose keys are the tokens links
//! answer with, bounded by `max_in_flight_per_connection`), the forwards
//! held until the journal is durable up to their records, and the write
//! buffer with the journal sequence its answers wait for.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use metrics::Histogram;
use slab::Slab;
use tracing::{debug, warn};

use super::records::JournalAppend;
use crate::clock::Now;
use crate::codes;
use crate::frame::LengthHeader;
use crate::iso8583::{Message, MessageBuilder, Mti, Salvage, Spec};
use crate::switch::acquirer::{EchoSpans, MatchKey, Outcome};
use crate::switch::fraud::CardHash;
use crate::switch::journal::Record;
use crate::switch::server::Shared;
use crate::switch::tls::identity::BoundTerminals;
use crate::telemetry::{self, CodeCounters};
use crate::throttle::LogThrottle;

/// DE41 not bound to the certificate: one warn line per connection per
/// this interval.
const MISMATCH_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How often a connection with requests of an older generation pending
/// looks for generations no longer used (they are kept until then).
const PRUNE_OLDER_EVERY: Duration = Duration::from_millis(100);

/// Fields an 0810 echoes from its 0800.
pub(super) const NETWORK_ECHO: &[usize] = &[7, 11, 41, 70];

/// A request of this connection waiting for its acquirer.
pub(super) struct Pending {
    pub(super) request: Bytes,
    pub(super) mti: Mti,
    pub(super) key: MatchKey,
    /// Card of an authorization (for decline history).
    pub(super) card: Option<CardHash>,
    pub(super) host_spec: &'static Spec,
    pub(super) started: Instant,
    /// Fingerprint for the recent-answers cache.
    pub(super) content: u64,
    /// Index of the acquirer it went to.
    pub(super) acquirer: u16,
    /// Fraud score (0 for reversals), for stand-in.
    pub(super) points: u16,
    /// Journal transaction id.
    pub(super) txn: u64,
    /// The generation (`Shared::epoch`) it started in, which its outcome
    /// is handled in.
    pub(super) epoch: u64,
}

/// A request ready to leave for a link: its records are durable. The
/// driver wraps it in a [`crate::switch::acquirer::Forward`] whose `ReplyTo`
/// carries `token`, and hands it to [`TerminalCore::link`]:
/// `acquirers[acquirer].links[link]` of the generation `epoch`.
#[derive(Debug)]
pub struct ForwardOut {
    pub acquirer: u16,
    pub link: usize,
    /// The generation (`Shared::epoch`) `acquirer` and `link` index.
    pub epoch: u64,
    pub key: MatchKey,
    /// The request in the host's spec.
    pub body: Bytes,
    /// Where its answer's echoed fields lie in `body`.
    pub echo: EchoSpans,
    pub token: u32,
}

/// A forward waiting for its journal records to reach the disk.
pub(super) struct Held {
    pub(super) seq: u64,
    pub(super) forward: ForwardOut,
}

/// A host approval framed in the write buffer and not yet written: if it
/// never is, it is reversed.
pub(super) struct Unwritten {
    /// Stream offset just past the answer.
    end: u64,
    request: Bytes,
    acquirer: u16,
    txn: u64,
    epoch: u64,
}

/// One terminal connection, as a state machine.
pub struct TerminalCore<J> {
    /// The newest generation this connection has seen: a new request
    /// takes the newest one published (`follow_generation`), and while a
    /// request's outcome is handled this is the request's own (`enter`).
    pub(super) shared: Arc<Shared>,
    /// Older generations that requests still pending (or approvals not
    /// yet written) started in; empty but for the moments after a reload.
    older: Vec<Arc<Shared>>,
    /// When `older` is next looked through for generations no request
    /// uses any more (a scan of the requests pending, so not per event).
    prune_older_at: Instant,
    pub(super) journal: J,
    pub(super) peer: SocketAddr,
    pub(super) spec: &'static Spec,
    pub(super) framing: LengthHeader,
    pub(super) pending: Slab<Pending>,
    pub(super) held: VecDeque<Held>,
    pub(super) wbuf: BytesMut,
    /// Journal sequence number that must be durable before the write
    /// buffer may go out (answers are given only once journaled).
    pub(super) wbuf_needs: u64,
    /// Bytes handed to the socket so far: the stream offset of `wbuf[0]`.
    pub(super) written: u64,
    unwritten_approvals: VecDeque<Unwritten>,
    /// The journal's durable watermark as last reported.
    durable: u64,
    pub(super) counters: CodeCounters,
    request_seconds: Histogram,
    /// The moment of the event being handled.
    pub(super) now: Now,
    /// Stop reading; close once the write buffer is out (a frame that
    /// could not be read, the journal stopped).
    closing: bool,
    /// The switch is stopping: no more reading.
    stopping: bool,
    /// The peer can no longer be written to (it closed, a write failed, it
    /// stalled): answers still owed are journaled, and reversed if they
    /// are host approvals, but not written.
    pub(super) gone: bool,
    last_activity: Instant,
    /// When the partial frame now buffered started arriving.
    frame_started: Option<Instant>,
    /// When the write buffer went over `max_write_buffer`.
    stalled_since: Option<Instant>,
    /// Requests that entered, and those that left with their one outcome
    /// (an answer, or a drop once the peer is gone).
    requests: u64,
    pub(super) outcomes: u64,
    /// The terminal ids this connection's client certificate may use,
    /// when DE41 is bound to certificates (`[terminals.tls]`).
    pub(super) bound: Option<BoundTerminals>,
    mismatch_log: LogThrottle,
    /// Card security refusals: one warn line per this connection per
    /// interval.
    pub(super) security_log: LogThrottle,
    /// Gathers each request's analytics event, pushed where it is counted.
    pub(super) tap: crate::switch::analytics::Tap,
    /// Card security work handed to the driver (a network HSM's commands,
    /// key store rewrites) and what waits for it (`hsm.rs`).
    pub(super) hsm: super::hsm::HsmState,
}

impl<J: JournalAppend> TerminalCore<J> {
    /// Binds this connection to the terminal ids its client certificate
    /// may use: a request naming another DE41 gets 58.
    pub fn bind_terminals(&mut self, bound: BoundTerminals) {
        self.bound = Some(bound);
    }

    /// `tid` may be used on this connection (always, when unbound);
    /// counted and logged when not.
    pub(super) fn terminal_bound(&mut self, tid: &[u8]) -> bool {
        let Some(b) = &self.bound else {
            return true;
        };
        if b.allows(tid) {
            return true;
        }
        metrics::counter!(telemetry::TLS_TERMINAL_ID_MISMATCH).increment(1);
        if let Some(suppressed) = self.mismatch_log.allow(self.now.at) {
            let terminal = String::from_utf8_lossy(tid);
            warn!(peer = %self.peer, %terminal, certificate = %b.identity, suppressed,
                "DE41 is not a terminal id of the client certificate; answered 58");
        }
        false
    }

    /// A new connection from `peer`; `durable` is the journal's durable
    /// watermark now.
    pub fn new(
        now: Now,
        shared: Arc<Shared>,
        journal: J,
        peer: SocketAddr,
        durable: u64,
    ) -> TerminalCore<J> {
        let max = shared.terminals.max_in_flight_per_connection;
        TerminalCore {
            spec: shared.terminals.spec.spec,
            framing: shared.terminals.framing,
            pending: Slab::with_capacity(max.min(1024)),
            held: VecDeque::new(),
            wbuf: BytesMut::with_capacity(16 * 1024),
            wbuf_needs: 0,
            written: 0,
            unwritten_approvals: VecDeque::new(),
            durable,
            counters: CodeCounters::default(),
            request_seconds: telemetry::request_seconds(),
            now,
            closing: false,
            stopping: false,
            gone: false,
            last_activity: now.at,
            frame_started: None,
            stalled_since: None,
            requests: 0,
            outcomes: 0,
            bound: None,
            mismatch_log: LogThrottle::new(MISMATCH_LOG_INTERVAL),
            security_log: LogThrottle::new(MISMATCH_LOG_INTERVAL),
            tap: crate::switch::analytics::Tap::new(shared.analytics.enabled()),
            hsm: Default::default(),
            older: Vec::new(),
            prune_older_at: now.at,
            journal,
            peer,
            shared,
        }
    }

    // ---- inputs ------------------------------------------------------

    /// A frame arrived from the terminal.
    pub fn handle_frame(&mut self, now: Now, frame: Bytes) {
        self.now = now;
        self.last_activity = now.at;
        self.requests += 1;
        self.follow_generation();
        let started = now.at;
        match Message::parse_or_salvage(frame, self.spec) {
            Ok(msg) => {
                self.tap.request(&msg);
                // A request left pending (forwarded) keeps its event
                // under its token until the reply.
                let token = self.pending.vacant_key();
                self.dispatch(msg, started);
                if let Some(p) = self.pending.get(token) {
                    self.tap.pending(token, p.txn, p.acquirer);
                }
            }
            Err(s) => {
                if let Some(partial) = &s.partial {
                    self.tap.request(partial);
                }
                self.malformed(s, started)
            }
        }
        self.tap.done();
        self.settle();
    }

    /// Bytes were read; `partial_frame` says whether the read buffer now
    /// holds the start of a frame not yet complete.
    pub fn handle_read(&mut self, now: Now, partial_frame: bool) {
        self.now = now;
        self.last_activity = now.at;
        self.frame_started = match (partial_frame, self.frame_started) {
            (false, _) => None,
            (true, None) => Some(now.at),
            (true, started) => started,
        };
    }

    /// The byte stream could not be split into frames.
    pub fn handle_unframeable(&mut self, now: Now, error: &dyn std::fmt::Display) {
        self.now = now;
        warn!(peer = %self.peer, "closing connection: {error}");
        self.shared.events.malformed_closed.increment(1);
        self.closing = true;
        self.settle();
    }

    /// The terminal closed its side. Terminals close when they are done or
    /// have given up: nothing written from now on would be read.
    pub fn handle_peer_closed(&mut self, now: Now) {
        self.now = now;
        self.frame_started = None;
        self.peer_gone();
        self.settle();
    }

    /// A read or write on the socket failed: what the write buffer holds
    /// is lost.
    pub fn handle_write_failed(&mut self, now: Now) {
        self.now = now;
        self.peer_gone();
        self.settle();
    }

    /// A link's reply for the request with `token`.
    pub fn handle_reply(&mut self, now: Now, token: u32, outcome: Outcome) {
        self.now = now;
        let Some(p) = self.pending.try_remove(token as usize) else {
            // Not pending: its reply was given already (refused forward).
            debug!(peer = %self.peer, token, "reply for a request no longer pending; dropped");
            return;
        };
        // The answer is remembered for repeats at the end of this: start
        // loading its place in the (large) table now.
        self.shared.recent.prefetch(&p.key);
        debug_assert!(
            !self.held.iter().any(|h| h.forward.token == token),
            "a reply for a forward still held"
        );
        self.release_in_flight();
        let failed = matches!(outcome, Outcome::Failed(_));
        self.tap
            .reply(token, p.txn, p.acquirer, p.points, failed, now.at);
        let entered = self.enter(p.epoch);
        self.on_reply(p, outcome);
        self.leave(entered);
        self.tap.done();
        self.settle();
    }

    /// The journal is durable up to `seq`.
    pub fn handle_durable(&mut self, now: Now, seq: u64) {
        self.now = now;
        debug_assert!(seq >= self.durable, "the durable watermark went back");
        self.durable = self.durable.max(seq);
    }

    /// The journal writer stopped: nothing held may go out as if recorded.
    pub fn handle_journal_stopped(&mut self, now: Now) {
        self.now = now;
        tracing::error!(peer = %self.peer, "journal stopped; refusing held requests");
        while let Some(h) = self.held.pop_front() {
            if let Some(p) = self.pending.try_remove(h.forward.token as usize) {
                self.release_in_flight();
                match Message::parse(p.request, self.spec) {
                    Ok(request) => self.respond(&request, codes::SYSTEM_MALFUNCTION, p.started),
                    Err(_) => self.outcomes += 1,
                }
            }
        }
        self.closing = true;
        self.settle();
    }

    /// The link's queue refused the forward with `token`.
    pub fn handle_forward_refused(&mut self, now: Now, token: u32) {
        self.now = now;
        self.shared.events.shed_link_queue_full.increment(1);
        let Some(p) = self.pending.try_remove(token as usize) else {
            return;
        };
        self.release_in_flight();
        if self.shared.journal_sync {
            // Durable and refused: as a link too busy to take it (91, or
            // stand-in).
            let entered = self.enter(p.epoch);
            self.fail(p, crate::switch::acquirer::Failure::LinkBusy);
            self.leave(entered);
        } else {
            match Message::parse(p.request.clone(), self.spec) {
                Ok(request) => {
                    self.respond_final(&request, p.txn, codes::SYSTEM_MALFUNCTION, p.started)
                }
                Err(_) => self.outcomes += 1,
            }
        }
        self.settle();
    }

    /// The deadline from [`TerminalCore::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Now) {
        self.now = now;
        self.expire_hsm();
        let t = &self.shared.terminals;
        let (frame_timeout, idle, stall) = (t.frame_timeout, t.idle_timeout, t.write_stall_timeout);
        if self
            .frame_started
            .is_some_and(|at| now.at >= at + frame_timeout)
        {
            warn!(peer = %self.peer, "closing connection: frame not complete within {frame_timeout:?}");
            self.frame_started = None;
            self.peer_gone();
        }
        if self.stalled_since.is_some_and(|at| now.at >= at + stall) {
            warn!(peer = %self.peer, buffered = self.wbuf.len(),
                "closing connection: the terminal has not read its answers for {stall:?}");
            self.shared.events.write_stalled.increment(1);
            self.peer_gone();
        }
        if now.at >= self.last_activity + idle {
            if self.pending.is_empty() && !self.gone {
                debug!(peer = %self.peer, "closing idle connection");
                self.peer_gone();
            } else if self.gone {
                // Links answer every forward by their request timeout, far
                // shorter than this; one that never came (a link stopped
                // with it queued) is treated as a timeout, so the actor
                // ends and the host's view is reversed.
                self.abandon_pending();
            }
            self.last_activity = now.at;
        }
        self.settle();
    }

    /// The switch is stopping: what was read is answered, nothing more is
    /// read.
    pub fn handle_stop(&mut self, now: Now) {
        self.now = now;
        self.stopping = true;
        self.settle();
    }

    // ---- outputs -----------------------------------------------------

    /// The bytes that may be written now (answers whose records are
    /// durable); after a write, [`TerminalCore::advance`] by what went out.
    pub fn poll_transmit(&self) -> Option<&[u8]> {
        // Up to the first answer still waiting for its MAC (all of it
        // without a network HSM).
        let end = self.flush_limit();
        (!self.gone && end > 0 && self.may_flush()).then_some(&self.wbuf[..end])
    }

    /// `n` bytes of [`TerminalCore::poll_transmit`] were written.
    pub fn advance(&mut self, n: usize) {
        debug_assert!(n <= self.wbuf.len());
        self.wbuf.advance(n);
        self.written += n as u64;
        while self
            .unwritten_approvals
            .front()
            .is_some_and(|u| u.end <= self.written)
        {
            self.unwritten_approvals.pop_front();
        }
        self.settle();
    }

    /// A forward whose records are durable, for the driver to hand to its
    /// link.
    pub fn poll_forward(&mut self) -> Option<ForwardOut> {
        let front = self.held.front()?;
        if self.shared.journal_sync && front.seq > self.durable {
            return None;
        }
        let h = self.held.pop_front()?;
        debug_assert!(
            self.pending.contains(h.forward.token as usize),
            "a held forward without its pending request"
        );
        self.tap.forwarded(h.forward.token, self.now.at);
        Some(h.forward)
    }

    /// The next moment [`TerminalCore::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = &self.shared.terminals;
        let idle = self.last_activity + t.idle_timeout;
        let frame = self.frame_started.map(|at| at + t.frame_timeout);
        let stall = self.stalled_since.map(|at| at + t.write_stall_timeout);
        let hsm = self.hsm.next_deadline();
        [Some(idle), frame, stall, hsm].into_iter().flatten().min()
    }

    /// Should the driver read from the socket? Not while closing or
    /// stopping, nor while the terminal leaves its answers unread.
    pub fn wants_read(&self) -> bool {
        !self.closing && !self.stopping && !self.gone && self.stalled_since.is_none()
    }

    /// Is something waiting for the journal's durable watermark to move?
    pub fn waiting_for_disk(&self) -> bool {
        self.shared.journal_sync
            && (self.held.front().is_some_and(|h| h.seq > self.durable)
                || (!self.gone && !self.wbuf.is_empty() && !self.may_flush()))
    }

    /// The socket is of no more use: the driver may shut it down (the
    /// core may still wait for replies).
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Nothing more to do: the driver ends.
    pub fn is_finished(&self) -> bool {
        self.pending.is_empty()
            && self.held.is_empty()
            && self.hsm.requests() == 0
            && (self.gone || (self.stopping && self.wbuf.is_empty()))
    }

    /// Are frames still taken (not closing, the peer not gone)?
    pub fn accepts_frames(&self) -> bool {
        !self.closing && !self.gone
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Requests in flight on this connection.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    pub fn journal_mut(&mut self) -> &mut J {
        &mut self.journal
    }

    // ---- internals shared by the steps --------------------------------

    pub(super) fn dispatch(&mut self, msg: Message, started: Instant) {
        let mti = msg.mti();
        match mti.value() {
            800 => self.network(&msg, started),
            100 | 101 | 200 | 201 => self.authorize(msg, started),
            400 | 401 => self.reverse_online(msg, started),
            500 | 501 => self.close_batch(msg, started),
            320 | 321 => self.upload(msg, started),
            120 | 121 | 220 | 221 | 420 | 421 => self.advise(msg, started),
            _ if mti.is_request() => self.respond(&msg, codes::INVALID_TRANSACTION, started),
            _ => {
                warn!(peer = %self.peer, mti = %mti, "terminal sent a response message; ignored");
                self.outcomes += 1;
            }
        }
    }

    /// Answers 30 when the MTI and STAN could be read, else closes.
    fn malformed(&mut self, s: Salvage, started: Instant) {
        match s.partial {
            Some(partial) if partial.mti().is_request() && partial.stan().is_some() => {
                warn!(peer = %self.peer, mti = %partial.mti(), stan = partial.stan(),
                    "format error, answered 30: {}", s.error);
                self.shared.events.malformed_answered_30.increment(1);
                self.respond(&partial, codes::FORMAT_ERROR, started);
            }
            _ => {
                warn!(peer = %self.peer, "closing connection: unreadable message: {}", s.error);
                self.shared.events.malformed_closed.increment(1);
                self.closing = true;
                self.outcomes += 1;
            }
        }
    }

    fn network(&mut self, msg: &Message, started: Instant) {
        if self.shared.security.is_some() && self.key_change(msg, started) {
            return;
        }
        match MessageBuilder::response_to(msg, NETWORK_ECHO) {
            Some(mut b) => {
                b.set(39, &codes::APPROVED);
                self.write_packed(&b, msg.mti(), codes::APPROVED, started);
            }
            None => self.outcomes += 1,
        }
    }

    /// Journals a record that the next answers written must wait for
    /// (durability `fsync`); false when the journal refused it.
    pub(super) fn journal(&mut self, record: Record) -> bool {
        match self.append(record) {
            Some(seq) => {
                self.wbuf_needs = self.wbuf_needs.max(seq);
                true
            }
            None => false,
        }
    }

    /// Journals a record the answers need not wait for (a forward waits
    /// for its own); its sequence number, or `None` (counted) when the
    /// journal refused it.
    pub(super) fn append(&mut self, record: Record) -> Option<u64> {
        // The terminal batch totals follow the records as written, so
        // they are what recovery folds from the journal after a restart.
        let ledger = self.shared.business_day.ledger();
        let note = ledger.note(&record);
        let seq = self.journal.append(record);
        match (seq, note) {
            (None, _) => self.shared.events.shed_journal_full.increment(1),
            (Some(_), Some(n)) => ledger.fold(n),
            (Some(_), None) => {}
        }
        seq
    }

    /// Holds a forward until its record `seq` is durable.
    pub(super) fn hold(&mut self, seq: u64, forward: ForwardOut) {
        self.held.push_back(Held { seq, forward });
    }

    fn may_flush(&self) -> bool {
        !self.shared.journal_sync || self.durable >= self.wbuf_needs
    }

    /// Counts a request taken into the in-flight limits.
    pub(super) fn take_in_flight(&self) {
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Gives back what [`TerminalCore::take_in_flight`] took.
    pub(super) fn release_in_flight(&self) {
        let before = self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "the switch's in-flight count went below zero");
    }

    /// Notes that a host approval was framed into the write buffer.
    /// Takes the finished request (its bytes move, no copy).
    pub(super) fn approval_buffered(&mut self, p: Pending) {
        if matches!(p.mti.match_class(), 100 | 200) {
            self.unwritten_approvals.push_back(Unwritten {
                end: self.written + self.wbuf.len() as u64,
                request: p.request,
                acquirer: p.acquirer,
                txn: p.txn,
                epoch: p.epoch,
            });
        }
    }

    /// The terminal can no longer be written to: the host approvals still
    /// in the write buffer are reversed, the rest of it dropped.
    fn peer_gone(&mut self) {
        if self.gone {
            return;
        }
        self.gone = true;
        self.stalled_since = None;
        while let Some(u) = self.unwritten_approvals.pop_front() {
            let entered = self.enter(u.epoch);
            self.reverse_undeliverable(&u.request, u.acquirer, u.txn);
            self.leave(entered);
        }
        self.written += self.wbuf.len() as u64;
        self.wbuf.clear();
    }

    /// Replaces the framed answer at `range` of the write buffer with
    /// `with` (nothing: removed); a host approval that was there is
    /// reversed, as one the terminal never got. Returns how far the
    /// answers after it moved.
    pub(super) fn replace_framed(&mut self, range: std::ops::Range<usize>, with: &[u8]) -> i64 {
        let end = self.written + range.end as u64;
        let delta = with.len() as i64 - range.len() as i64;
        let tail = self.wbuf[range.end..].to_vec();
        self.wbuf.truncate(range.start);
        self.wbuf.extend_from_slice(with);
        self.wbuf.extend_from_slice(&tail);
        let mut lost = None;
        self.unwritten_approvals.retain_mut(|u| {
            if u.end == end {
                lost = Some((u.request.clone(), u.acquirer, u.txn));
                return false;
            }
            if u.end > end {
                u.end = u.end.wrapping_add_signed(delta);
            }
            true
        });
        if let Some((request, acquirer, txn)) = lost {
            self.reverse_undeliverable(&request, acquirer, txn);
        }
        delta
    }

    /// Gives up on every request still waiting for a link's reply, as if
    /// each had timed out.
    fn abandon_pending(&mut self) {
        let tokens: Vec<usize> = self.pending.iter().map(|(k, _)| k).collect();
        if !tokens.is_empty() {
            warn!(peer = %self.peer, requests = tokens.len(),
                "no reply from the links for requests of a closed connection; treated as timed out");
        }
        self.held.clear();
        for token in tokens {
            if let Some(p) = self.pending.try_remove(token) {
                self.release_in_flight();
                let entered = self.enter(p.epoch);
                self.fail(p, crate::switch::acquirer::Failure::Timeout);
                self.leave(entered);
            }
        }
    }

    /// Reverses a host approval its terminal never got.
    pub(super) fn reverse_undeliverable(&mut self, request: &Bytes, acquirer: u16, txn: u64) {
        let Ok(request) = Message::parse(request.clone(), self.spec) else {
            return;
        };
        warn!(peer = %self.peer, stan = request.stan(), txn,
            "approval could not be delivered to the terminal; reversing it");
        self.shared.events.undeliverable_reversed.increment(1);
        self.queue_reversal(&request, acquirer, txn, codes::UNDELIVERABLE);
        // A repeat from the terminal (after it reconnects) must not be
        // told "approved" from the recent answers, nor approved again: it
        // learns the transaction did not go through.
        if let (Some(key), Some(mut b)) = (
            MatchKey::of(&request),
            MessageBuilder::response_to(&request, super::ECHO_FIELDS),
        ) {
            b.set(39, &codes::ISSUER_UNAVAILABLE);
            if let Ok(answer) = b.to_bytes() {
                let content = crate::switch::repeats::content_hash(&request);
                self.shared
                    .recent
                    .remember(key, content, &answer, self.now.at);
            }
        }
    }

    /// Takes the newest generation published, if this is not it (one
    /// atomic load when it is); the one left is kept while requests of
    /// it are pending.
    fn follow_generation(&mut self) {
        if self.shared.is_current() {
            return;
        }
        let newest = self.shared.current();
        if newest.epoch == self.shared.epoch {
            return;
        }
        let left = std::mem::replace(&mut self.shared, newest);
        if self.uses_epoch(left.epoch) {
            self.older.push(left);
        }
    }

    fn uses_epoch(&self, epoch: u64) -> bool {
        self.pending.iter().any(|(_, p)| p.epoch == epoch)
            || self.unwritten_approvals.iter().any(|u| u.epoch == epoch)
    }

    /// Puts generation `epoch` (a request's own) in `self.shared` while the
    /// request's outcome is handled; [`TerminalCore::leave`] with what
    /// this returns puts the newest back. Swaps, no reference counts.
    fn enter(&mut self, epoch: u64) -> Option<usize> {
        if epoch == self.shared.epoch {
            return None;
        }
        let i = self.older.iter().position(|s| s.epoch == epoch)?;
        std::mem::swap(&mut self.shared, &mut self.older[i]);
        Some(i)
    }

    fn leave(&mut self, entered: Option<usize>) {
        if let Some(i) = entered {
            std::mem::swap(&mut self.shared, &mut self.older[i]);
        }
    }

    /// The link a forward goes to: its `acquirer` and `link` in the
    /// generation `epoch` it was made in ([`ForwardOut`]'s).
    pub fn link(
        &self,
        epoch: u64,
        acquirer: u16,
        link: usize,
    ) -> Option<&crate::switch::acquirer::LinkHandle> {
        let shared = if epoch == self.shared.epoch {
            &self.shared
        } else {
            self.older.iter().find(|s| s.epoch == epoch)?
        };
        shared
            .acquirers
            .get(acquirer as usize)
            .and_then(|a| a.links.get(link))
    }

    /// Updates what follows from the state after an event, and checks the
    /// invariants.
    pub(super) fn settle(&mut self) {
        if self.closing && self.wbuf.is_empty() {
            self.peer_gone();
        }
        if !self.older.is_empty() && self.now.at >= self.prune_older_at {
            self.prune_older_at = self.now.at + PRUNE_OLDER_EVERY;
            let older = std::mem::take(&mut self.older);
            self.older = older
                .into_iter()
                .filter(|s| self.uses_epoch(s.epoch))
                .collect();
        }
        let over = self.wbuf.len() > self.shared.terminals.max_write_buffer;
        self.stalled_since = match (over && !self.gone, self.stalled_since) {
            (false, _) => None,
            (true, None) => Some(self.now.at),
            (true, since) => since,
        };
        debug_assert_eq!(
            self.requests,
            self.outcomes + self.pending.len() as u64 + self.hsm.requests() as u64,
            "every request leaves with exactly one outcome"
        );
        debug_assert!(self.held.len() <= self.pending.len());
        debug_assert!(
            self.pending.len() + self.hsm.requests()
                <= self.shared.terminals.max_in_flight_per_connection,
            "more in flight than the connection's limit"
        );
    }
}

impl<J> TerminalCore<J> {
    /// Time from `started` to the moment being handled.
    pub(super) fn since(&self, started: Instant) -> Duration {
        self.now.at.saturating_duration_since(started)
    }

    /// Counts an answer given, and its latency.
    pub(super) fn count(&mut self, mti: Mti, code: [u8; 2], started: Instant) {
        self.counters.increment(mti.value(), code);
        let took = self.since(started);
        self.request_seconds.record(took.as_secs_f64());
        // Analytics: one event per answer, never waiting (a full queue
        // drops it, counted).
        if let Some(e) = self.tap.answered(mti.value(), code, took, self.now.unix_ms) {
            self.shared.analytics.push(e);
        }
    }
}

impl<J> Drop for TerminalCore<J> {
    fn drop(&mut self) {
        // A core dropped with requests pending (the driver's task
        // aborted): their slots in the switch's limit are given back.
        let n = self.pending.len();
        if n > 0 {
            let before = self.shared.in_flight.fetch_sub(n, Ordering::AcqRel);
            debug_assert!(before >= n, "the switch's in-flight count went below zero");
        }
    }
}
