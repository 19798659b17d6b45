//! The terminal actor: one tokio task per inbound connection.
//!
//! It owns the socket, a bounded table of its requests in flight, and a
//! bounded inbox on which acquirer links post answers. Per request it
//! parses, validates, scores for fraud, routes and forwards, all without an
//! `.await`; answers are written as they complete (pipelining), every
//! answer ready in one loop turn going out in a single write.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use metrics::Histogram;
use slab::Slab;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tokio_util::codec::Decoder;
use tracing::{debug, warn};

use crate::acquirer::{Failure, Forward, MatchKey, Outcome, Reply, ReplyTo};
use crate::codes;
use crate::frame::FrameCodec;
use crate::fraud::{self, Auth, CardHash, Decision};
use crate::iso8583::{Message, MessageBuilder, Mti, Salvage, Spec};
use crate::journal::Record;
use crate::net::read_available;
use crate::repeats::{self, Seen};
use crate::saf::{SafEntry, SafKind};
use crate::server::Shared;
use crate::telemetry::{self, CodeCounters};

/// Fields a response echoes from its request (those present).
pub const ECHO_FIELDS: &[usize] = &[2, 3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49];
/// Fields an 0810 echoes from its 0800.
const NETWORK_ECHO: &[usize] = &[7, 11, 41, 70];
/// Required in 0100/0200 requests.
const REQUIRED_AUTH_FIELDS: &[usize] = &[2, 3, 4, 7, 11, 41, 42, 49];

/// A request of this connection waiting for its acquirer.
struct Pending {
    request: Bytes,
    mti: Mti,
    key: MatchKey,
    card: Option<CardHash>,
    host_spec: &'static Spec,
    started: Instant,
    /// Fingerprint for the recent-answers cache.
    content: u64,
    /// Index of the acquirer it went to.
    acquirer: u16,
    /// Fraud score (0 for reversals and advices), for stand-in.
    points: u16,
    /// Journal transaction id.
    txn: u64,
}

/// What `forward` needs to know of a journaled transaction.
struct TxnInfo {
    txn: u64,
    /// Content fingerprint, for the recent-answers cache.
    content: u64,
    /// Card of an authorization (for decline history).
    card: Option<CardHash>,
    /// Fraud score, for stand-in.
    points: u16,
}

/// A forward waiting for its journal records to reach the disk.
struct Held {
    seq: u64,
    link: crate::acquirer::LinkHandle,
    forward: Forward,
}

struct Terminal {
    shared: Arc<Shared>,
    peer: SocketAddr,
    inbox_tx: mpsc::Sender<Reply>,
    pending: Slab<Pending>,
    wbuf: BytesMut,
    counters: CodeCounters,
    request_seconds: Histogram,
    /// Set when the connection must close after flushing.
    closing: bool,
    /// Forwards held until the journal is durable up to their record.
    held: std::collections::VecDeque<Held>,
    /// Journal sequence number that must be durable before the write
    /// buffer may go out (answers are given only once journaled).
    wbuf_needs: u64,
    durable: tokio::sync::watch::Receiver<u64>,
    /// Records appended this turn; the writer is woken once at its end.
    journal_dirty: bool,
    /// Clock read once per batch of frames or replies: reading it per
    /// record and per request showed in profiles. (The latency histogram
    /// still reads it once per answer, when the answer is packed.)
    now: Instant,
    now_ms: u64,
}

/// Serves one terminal connection until it closes, idles out, or the
/// switch stops (after answering what is in flight).
pub async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let max = shared.terminals.max_in_flight_per_connection;
    // Every request in flight gets exactly one reply: an inbox this size
    // never refuses a link.
    let (inbox_tx, mut inbox) = mpsc::channel(max + 1);
    let mut t = Terminal {
        peer,
        inbox_tx,
        pending: Slab::with_capacity(max.min(1024)),
        wbuf: BytesMut::with_capacity(16 * 1024),
        counters: CodeCounters::default(),
        request_seconds: telemetry::request_seconds(),
        closing: false,
        held: std::collections::VecDeque::new(),
        wbuf_needs: 0,
        durable: shared.journal.durable(),
        journal_dirty: false,
        now: Instant::now(),
        now_ms: crate::clock::unix_now_ms(),
        shared,
    };
    let shared = t.shared.clone();
    let mut codec = FrameCodec::new(shared.terminals.framing, shared.terminals.max_frame);
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut replies = Vec::with_capacity(64);
    let mut reading = true;
    let mut last_activity = Instant::now();
    let mut frame_started: Option<Instant> = None;
    let idle = shared.terminals.idle_timeout;
    let frame_timeout = shared.terminals.frame_timeout;
    let timer = sleep_until((Instant::now() + idle).into());
    tokio::pin!(timer);

    loop {
        let wake = match frame_started {
            Some(at) => at + frame_timeout,
            None => last_activity + idle,
        };
        if timer.deadline() != wake.into() {
            timer.as_mut().reset(wake.into());
        }
        tokio::select! {
            biased;
            _ = inbox.recv_many(&mut replies, 64) => {
                t.tick();
                for r in replies.drain(..) {
                    t.on_reply(r);
                }
            }
            r = stream.readable(), if reading && !t.closing => {
                if r.is_err() {
                    break;
                }
                let open = match read_available(&stream, &mut rbuf) {
                    Ok(open) => open,
                    Err(e) => {
                        debug!(peer = %peer, "read error: {e}");
                        break;
                    }
                };
                t.tick();
                last_activity = t.now;
                loop {
                    match codec.decode(&mut rbuf) {
                        Ok(Some(frame)) => t.on_frame(frame),
                        Ok(None) => break,
                        Err(e) => {
                            warn!(peer = %peer, "closing connection: {e}");
                            t.shared.events.malformed_closed.increment(1);
                            t.closing = true;
                            break;
                        }
                    }
                    if t.closing {
                        break;
                    }
                }
                frame_started = match (rbuf.is_empty(), frame_started) {
                    (true, _) => None,
                    (false, None) => Some(last_activity),
                    (false, started) => started,
                };
                if !open {
                    reading = false;
                }
            }
            r = t.durable.changed(), if t.waiting_for_disk() => {
                if r.is_err() {
                    t.journal_stopped();
                }
                t.release_held();
            }
            r = stream.writable(), if !t.wbuf.is_empty() && t.may_flush() => {
                if r.is_err() {
                    break;
                }
            }
            _ = &mut timer => {
                if frame_started.is_some() {
                    warn!(peer = %peer, "closing connection: frame not complete within {frame_timeout:?}");
                    break;
                }
                if t.pending.is_empty() {
                    debug!(peer = %peer, "closing idle connection");
                    break;
                }
                last_activity = Instant::now();
            }
            _ = shared.stopping.cancelled(), if reading => {
                reading = false;
            }
        }
        if t.journal_dirty {
            t.journal_dirty = false;
            t.shared.journal.wake();
        }
        if !t.wbuf.is_empty() && t.may_flush() {
            match stream.try_write(&t.wbuf) {
                Ok(n) => t.wbuf.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        let done = !reading || t.closing;
        if done && t.pending.is_empty() && t.wbuf.is_empty() {
            break;
        }
        if t.closing && t.wbuf.is_empty() {
            break;
        }
    }
    // Answers still owed to this connection have nowhere to go now.
    shared
        .in_flight
        .fetch_sub(t.pending.len(), Ordering::AcqRel);
}

impl Terminal {
    fn spec(&self) -> &'static Spec {
        self.shared.terminals.spec.spec
    }

    /// Reads the clock for the batch about to be handled.
    fn tick(&mut self) {
        self.now = Instant::now();
        self.now_ms = crate::clock::unix_now_ms();
    }

    fn on_frame(&mut self, frame: Bytes) {
        let started = self.now;
        let msg = match Message::parse_or_salvage(frame, self.spec()) {
            Ok(m) => m,
            Err(s) => return self.malformed(s, started),
        };
        let mti = msg.mti();
        match mti.value() {
            800 => self.network(&msg, started),
            100 | 101 | 200 | 201 => self.authorize(msg, started),
            120 | 121 | 220 | 221 | 400 | 401 | 420 | 421 => self.forward_other(msg, started),
            _ if mti.is_request() => self.respond(&msg, codes::INVALID_TRANSACTION, started),
            _ => {
                warn!(peer = %self.peer, mti = %mti, "terminal sent a response message; ignored");
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
            }
        }
    }

    fn network(&mut self, msg: &Message, started: Instant) {
        if let Some(mut b) = MessageBuilder::response_to(msg, NETWORK_ECHO) {
            b.set(39, &codes::APPROVED);
            self.write_packed(&b, msg.mti(), codes::APPROVED, started);
        }
    }

    /// Writes a response with `code` built from `request`'s echo fields.
    fn respond(&mut self, request: &Message, code: [u8; 2], started: Instant) {
        self.respond_at(request, code, started);
    }

    /// As `respond`; returns where the answer's body lies in the write
    /// buffer.
    fn respond_at(
        &mut self,
        request: &Message,
        code: [u8; 2],
        started: Instant,
    ) -> Option<std::ops::Range<usize>> {
        let mut b = MessageBuilder::response_to(request, ECHO_FIELDS)?;
        b.set(39, &code);
        self.write_packed(&b, request.mti(), code, started)
    }

    /// Frames and queues a response; returns where its body lies in the
    /// write buffer.
    fn write_packed(
        &mut self,
        b: &MessageBuilder<'_>,
        mti: Mti,
        code: [u8; 2],
        started: Instant,
    ) -> Option<std::ops::Range<usize>> {
        let framing = self.shared.terminals.framing;
        let at = framing.begin(&mut self.wbuf);
        let packed = b.pack(&mut self.wbuf).map_err(|e| e.to_string());
        match packed.and_then(|()| {
            framing
                .finish(&mut self.wbuf, at)
                .map_err(|e| e.to_string())
        }) {
            Ok(()) => {
                self.count(mti, code, started);
                Some(at + framing.width()..self.wbuf.len())
            }
            Err(e) => {
                self.wbuf.truncate(at);
                warn!(peer = %self.peer, mti = %mti, "response could not be packed: {e}");
                None
            }
        }
    }

    fn count(&mut self, mti: Mti, code: [u8; 2], started: Instant) {
        self.counters.increment(mti.value(), code);
        self.request_seconds.record(started.elapsed().as_secs_f64());
    }

    fn authorize(&mut self, msg: Message, started: Instant) {
        if let Some(field) = REQUIRED_AUTH_FIELDS.iter().find(|&&n| !msg.has(n)) {
            debug!(peer = %self.peer, field, "required field missing");
            return self.respond(&msg, codes::FORMAT_ERROR, started);
        }
        let Some(pan) = msg.pan().filter(|p| (12..=19).contains(&p.len())) else {
            return self.respond(&msg, codes::FORMAT_ERROR, started);
        };
        if !pan.luhn_ok() {
            return self.respond(&msg, codes::INVALID_CARD_NUMBER, started);
        }
        let Some(amount) = msg.amount_minor() else {
            return self.respond(&msg, codes::FORMAT_ERROR, started);
        };
        let Some(tid) = msg.terminal_id() else {
            return self.respond(&msg, codes::FORMAT_ERROR, started);
        };
        if !self.shared.terminal_allowed(&tid) {
            return self.respond(&msg, codes::UNKNOWN_TERMINAL, started);
        }
        let Some(key) = MatchKey::of(&msg) else {
            return self.respond(&msg, codes::FORMAT_ERROR, started);
        };
        let Some(content) = self.answered_before(&msg, &key, started) else {
            return;
        };
        if let Some(code) = self.admit(&key) {
            return self.respond(&msg, code, started);
        }

        let now_s = self.now_ms / 1000;
        let card = fraud::card_hash(&self.shared.pan_key, pan.digits());
        let merchant = msg
            .merchant_id()
            .unwrap_or(crate::iso8583::SmallText::EMPTY);
        let auth = Auth {
            card,
            pan: pan.digits(),
            amount_minor: amount,
            mcc: msg.mcc(),
            merchant_id: merchant.trimmed(),
            terminal_country: self
                .shared
                .terminal_country(&tid)
                .or(msg.acquiring_country()),
            now_s,
        };
        let rules = self.shared.fraud_rules.load();
        let score = fraud::score(&rules, &auth, &self.shared.fraud_state);
        let decision = rules.decide(&score);
        self.shared.count_fraud(decision, &score);
        let route = self.shared.routes.load().lookup(pan.digits());
        let txn = self.shared.next_txn();
        let record = request_record(
            &msg,
            self.now_ms,
            txn,
            route.map_or(u16::MAX, |r| r.primary),
            &score,
            card,
        );
        if !self.journal(record) {
            return self.respond(&msg, codes::SYSTEM_MALFUNCTION, started);
        }
        if decision == Decision::Decline {
            debug!(peer = %self.peer, pan = %pan, points = score.points, "declined as suspected fraud");
            return self.respond_final(&msg, txn, codes::SUSPECTED_FRAUD, started);
        }
        let Some(route) = route else {
            return self.respond_final(&msg, txn, codes::NO_ROUTE, started);
        };
        match self.forward(
            &msg,
            key,
            route,
            TxnInfo {
                txn,
                content,
                card: Some(card),
                points: score.points,
            },
            started,
        ) {
            Ok(()) => self.shared.fraud_state.record_forwarded(&rules, &auth),
            Err(codes::ISSUER_UNAVAILABLE) => {
                if self.stand_in(&msg, route.primary, score.points, txn, started) {
                    self.shared.fraud_state.record_forwarded(&rules, &auth)
                } else {
                    self.respond_final(&msg, txn, codes::ISSUER_UNAVAILABLE, started)
                }
            }
            Err(code) => self.respond_final(&msg, txn, code, started),
        }
    }

    /// Answers `code` to a journaled request, journaling the answer.
    fn respond_final(&mut self, msg: &Message, txn: u64, code: [u8; 2], started: Instant) {
        self.journal(Record::Response {
            txn,
            at_ms: self.now_ms,
            response_code: code,
            approval_code: Default::default(),
            stand_in: false,
        });
        self.respond(msg, code, started);
    }

    /// Appends a record; the write buffer then waits for it to be durable.
    /// False when the journal refused it (full or stopped).
    /// Journals a record that the next answers written must wait for
    /// (durability `fsync`); false when the journal's queue is full.
    fn journal(&mut self, record: Record) -> bool {
        match append(&self.shared, &mut self.journal_dirty, record) {
            Some(seq) => {
                self.wbuf_needs = self.wbuf_needs.max(seq);
                true
            }
            None => false,
        }
    }

    fn waiting_for_disk(&self) -> bool {
        self.shared.journal_sync
            && (!self.held.is_empty() || (!self.wbuf.is_empty() && !self.may_flush()))
    }

    fn may_flush(&self) -> bool {
        !self.shared.journal_sync || *self.durable.borrow() >= self.wbuf_needs
    }

    /// Sends the held forwards whose records are now on disk.
    fn release_held(&mut self) {
        let durable = *self.durable.borrow();
        while self.held.front().is_some_and(|h| h.seq <= durable) {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            let token = h.forward.reply_to.token as usize;
            if h.link.try_forward(h.forward).is_err() {
                self.shared.events.shed_link_queue_full.increment(1);
                if let Some(p) = self.pending.try_remove(token) {
                    self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    self.fail(p, Failure::LinkBusy);
                }
            }
        }
    }

    /// The journal writer died: nothing held may go out as if recorded.
    fn journal_stopped(&mut self) {
        tracing::error!(peer = %self.peer, "journal stopped; refusing held requests");
        while let Some(h) = self.held.pop_front() {
            if let Some(p) = self.pending.try_remove(h.forward.reply_to.token as usize) {
                self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                if let Ok(request) = Message::parse(p.request, self.spec()) {
                    self.respond(&request, codes::SYSTEM_MALFUNCTION, p.started);
                }
            }
        }
        self.closing = true;
    }

    /// Stand-in processing: approves `msg` locally if its acquirer allows
    /// it for this amount and fraud score, and queues the advice that
    /// tells the host. Returns whether it approved (and answered).
    fn stand_in(
        &mut self,
        msg: &Message,
        acquirer: u16,
        points: u16,
        txn: u64,
        started: Instant,
    ) -> bool {
        let Some(a) = self.shared.acquirers.get(acquirer as usize) else {
            return false;
        };
        let si = &a.stand_in;
        let amount = msg.amount_minor().unwrap_or(u64::MAX);
        if !si.enabled || amount > si.max_amount || points > si.max_fraud_points {
            return false;
        }
        let n = self.shared.stand_in_seq.fetch_add(1, Ordering::Relaxed) % 100_000;
        let mut approval = crate::journal::ApprovalCode::new();
        // "S" and five digits: the six characters DE38 holds.
        let _ = write!(approval, "S{n:05}");
        let Some((body, key)) = crate::saf::advice_of(msg, a.spec, approval.as_bytes()) else {
            return false;
        };
        let advice_mti = key.class();
        let entry = SafEntry::new(txn, SafKind::Advice, body, key, self.now_ms);
        if a.saf.push(entry).is_err() {
            warn!(acquirer = %a.name, "stand-in refused: store-and-forward queue full");
            return false;
        }
        let Some(mut b) = MessageBuilder::response_to(msg, ECHO_FIELDS) else {
            return false;
        };
        let at_ms = self.now_ms;
        self.journal(Record::AdviceQueued {
            txn,
            at_ms,
            acquirer,
            mti: advice_mti,
        });
        self.journal(Record::Response {
            txn,
            at_ms,
            response_code: codes::APPROVED,
            approval_code: approval,
            stand_in: true,
        });
        b.set(38, approval.as_bytes()).set(39, &codes::APPROVED);
        self.shared.events.stand_in_approved.increment(1);
        self.write_packed(&b, msg.mti(), codes::APPROVED, started)
            .is_some()
    }

    /// Advices from terminals (0120, 0220, 0420 and repeats): queued for
    /// the card's acquirer and acknowledged at once; the host gets them
    /// through store-and-forward.
    fn store_advice(&mut self, msg: &Message, key: MatchKey, content: u64, started: Instant) {
        let pan = msg.pan();
        let digits = pan.as_ref().map_or(&[][..], |p| p.digits());
        let Some(target) = self.shared.routes.load().lookup(digits) else {
            return self.respond(msg, codes::NO_ROUTE, started);
        };
        let Some(a) = self.shared.acquirers.get(target.primary as usize) else {
            return self.respond(msg, codes::NO_ROUTE, started);
        };
        let Some((body, saf_key)) = crate::saf::advice_from_terminal(msg, a.spec) else {
            return self.respond(msg, codes::FORMAT_ERROR, started);
        };
        // A terminal's 0420 goes as an advice: the journal can rebuild it
        // after a restart only as the message it was, not as a reversal
        // the switch builds.
        let kind = SafKind::Advice;
        let txn = self.shared.next_txn();
        let card = msg
            .pan()
            .map(|p| fraud::card_hash(&self.shared.pan_key, p.digits()));
        let record = request_record(
            msg,
            self.now_ms,
            txn,
            target.primary,
            &fraud::Score::default(),
            card.unwrap_or(CardHash([0; 16])),
        );
        let advice_mti = saf_key.class();
        let acquirer = target.primary;
        if !self.journal(record)
            || !self.journal(Record::AdviceQueued {
                txn,
                at_ms: self.now_ms,
                acquirer,
                mti: advice_mti,
            })
        {
            return self.respond(msg, codes::SYSTEM_MALFUNCTION, started);
        }
        let Some(a) = self.shared.acquirers.get(acquirer as usize) else {
            return self.respond(msg, codes::NO_ROUTE, started);
        };
        let entry = SafEntry::new(txn, kind, body, saf_key, self.now_ms);
        if a.saf.push(entry).is_err() {
            warn!(acquirer = %a.name, "advice refused: store-and-forward queue full");
            self.journal(Record::AdviceExpired {
                txn,
                at_ms: self.now_ms,
            });
            return self.respond_final(msg, txn, codes::SYSTEM_MALFUNCTION, started);
        }
        self.journal(Record::Response {
            txn,
            at_ms: self.now_ms,
            response_code: codes::APPROVED,
            approval_code: Default::default(),
            stand_in: false,
        });
        if let Some(body) = self.respond_at(msg, codes::APPROVED, started) {
            self.shared
                .recent
                .remember(key, content, &self.wbuf[body], started);
        }
    }

    /// Queues the 0420 reversal of a request the host may have acted on.
    fn queue_reversal(&mut self, request: &Message, acquirer: u16, txn: u64, reason: [u8; 2]) {
        let shared = self.shared.clone();
        let Some(a) = shared.acquirers.get(acquirer as usize) else {
            return;
        };
        let Some((body, key)) = crate::saf::reversal_of(request, a.spec, reason) else {
            warn!(peer = %self.peer, acquirer = %a.name, "reversal can not be built");
            return;
        };
        let entry = SafEntry::new(txn, SafKind::Reversal, body, key, self.now_ms);
        let name = a.name.clone();
        // Journaled first: if the queue is full, recovery still knows.
        self.journal(Record::ReversalQueued {
            txn,
            at_ms: self.now_ms,
            acquirer,
            reason,
        });
        if a.saf.push(entry).is_err() {
            warn!(acquirer = %name, stan = key.stan(), "reversal not queued now: store-and-forward queue full; it resumes from the journal on restart");
            return;
        }
        self.shared.events.reversals_queued.increment(1);
    }

    /// Reversals and advices: forwarded upstream, answered with the
    /// upstream answer.
    fn forward_other(&mut self, msg: Message, started: Instant) {
        let Some(key) = MatchKey::of(&msg) else {
            return self.respond(&msg, codes::FORMAT_ERROR, started);
        };
        if let Some(tid) = msg.terminal_id()
            && !self.shared.terminal_allowed(&tid)
        {
            return self.respond(&msg, codes::UNKNOWN_TERMINAL, started);
        }
        let Some(content) = self.answered_before(&msg, &key, started) else {
            return;
        };
        if matches!(msg.mti().match_class(), 120 | 220 | 420) {
            return self.store_advice(&msg, key, content, started);
        }
        if let Some(code) = self.admit(&key) {
            return self.respond(&msg, code, started);
        }
        let pan = msg.pan();
        let digits = pan.as_ref().map_or(&[][..], |p| p.digits());
        let Some(route) = self.shared.routes.load().lookup(digits) else {
            return self.respond(&msg, codes::NO_ROUTE, started);
        };
        let txn = self.shared.next_txn();
        let card = pan.as_ref().map_or(CardHash([0; 16]), |p| {
            fraud::card_hash(&self.shared.pan_key, p.digits())
        });
        let record = request_record(
            &msg,
            self.now_ms,
            txn,
            route.primary,
            &fraud::Score::default(),
            card,
        );
        if !self.journal(record) {
            return self.respond(&msg, codes::SYSTEM_MALFUNCTION, started);
        }
        if let Err(code) = self.forward(
            &msg,
            key,
            route,
            TxnInfo {
                txn,
                content,
                card: None,
                points: 0,
            },
            started,
        ) {
            self.respond_final(&msg, txn, code, started);
        }
    }

    /// Repeats of a request answered recently get the original answer
    /// again, without going upstream; the same key with other content
    /// gets 94. `None` when the request was answered here, else its
    /// content fingerprint (for remembering its answer).
    fn answered_before(&mut self, msg: &Message, key: &MatchKey, started: Instant) -> Option<u64> {
        let content = repeats::content_hash(msg);
        match self.shared.recent.check(key, content, started) {
            Seen::New => Some(content),
            Seen::Conflict => {
                self.respond(msg, codes::DUPLICATE, started);
                None
            }
            Seen::Repeat(answer) => {
                let code = Message::parse(answer.clone(), self.spec())
                    .ok()
                    .and_then(|m| m.response_code())
                    .unwrap_or(codes::APPROVED);
                self.shared.events.repeats_answered.increment(1);
                let framing = self.shared.terminals.framing;
                if framing.encode(&answer, &mut self.wbuf).is_ok() {
                    self.count(msg.mti(), code, started);
                }
                None
            }
        }
    }

    /// Keeps the answer to a forwarded request for repeats.
    fn remember(&self, p: &Pending, answer: &[u8]) {
        self.shared
            .recent
            .remember(p.key, p.content, answer, p.started);
    }

    /// Admission: duplicates on this connection, and the in-flight limits.
    fn admit(&mut self, key: &MatchKey) -> Option<[u8; 2]> {
        if self.pending.iter().any(|(_, p)| p.key == *key) {
            return Some(codes::DUPLICATE);
        }
        if self.pending.len() >= self.shared.terminals.max_in_flight_per_connection {
            self.shared.events.shed_connection_limit.increment(1);
            return Some(codes::SYSTEM_MALFUNCTION);
        }
        if self.shared.in_flight.load(Ordering::Acquire) >= self.shared.limits.max_in_flight {
            self.shared.events.shed_global_limit.increment(1);
            return Some(codes::SYSTEM_MALFUNCTION);
        }
        None
    }

    /// Routes and hands the request to a link; the error is the code to
    /// answer with.
    fn forward(
        &mut self,
        msg: &Message,
        key: MatchKey,
        target: crate::router::RouteTarget,
        txn: TxnInfo,
        started: Instant,
    ) -> Result<(), [u8; 2]> {
        let TxnInfo {
            txn,
            content,
            card,
            points,
        } = txn;
        let hash = key.spread_hash();
        let acquirers = &self.shared.acquirers;
        let chosen = [Some(target.primary), target.backup]
            .into_iter()
            .flatten()
            .find_map(|i| {
                let a = acquirers.get(i as usize)?;
                a.pick(hash).map(|l| (i, a, l))
            });
        let Some((index, acquirer, link)) = chosen else {
            return Err(codes::ISSUER_UNAVAILABLE);
        };
        let body = if std::ptr::eq(acquirer.spec, self.spec()) {
            msg.frame().clone()
        } else {
            let mut b = MessageBuilder::new(acquirer.spec, msg.mti());
            b.copy_all(msg);
            match b.to_bytes() {
                Ok(out) => out.freeze(),
                Err(e) => {
                    warn!(peer = %self.peer, acquirer = %acquirer.name, "request can not be written in the host's spec: {e}");
                    return Err(codes::FORMAT_ERROR);
                }
            }
        };
        // The forward, not the answers, waits for this record.
        let Some(seq) = append(
            &self.shared,
            &mut self.journal_dirty,
            Record::Forwarded {
                txn,
                at_ms: self.now_ms,
                acquirer: index,
            },
        ) else {
            return Err(codes::SYSTEM_MALFUNCTION);
        };
        let entry = self.pending.vacant_entry();
        let token = entry.key() as u32;
        let forward = Forward {
            key,
            body,
            reply_to: ReplyTo {
                tx: self.inbox_tx.clone(),
                token,
            },
        };
        if self.shared.journal_sync {
            // Forwarded only once its records are on disk.
            self.held.push_back(Held {
                seq,
                link: link.clone(),
                forward,
            });
        } else if link.try_forward(forward).is_err() {
            self.shared.events.shed_link_queue_full.increment(1);
            self.journal(Record::Response {
                txn,
                at_ms: self.now_ms,
                response_code: codes::SYSTEM_MALFUNCTION,
                approval_code: Default::default(),
                stand_in: false,
            });
            return Err(codes::SYSTEM_MALFUNCTION);
        }
        entry.insert(Pending {
            request: msg.frame().clone(),
            mti: msg.mti(),
            key,
            card,
            host_spec: acquirer.spec,
            started,
            content,
            acquirer: index,
            points,
            txn,
        });
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.shared.journal_sync {
            self.release_held();
        }
        Ok(())
    }

    fn on_reply(&mut self, reply: Reply) {
        let Some(p) = self.pending.try_remove(reply.token as usize) else {
            return;
        };
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        match reply.outcome {
            Outcome::Answered {
                body,
                response_code,
                approval_code,
            } => {
                self.journal(Record::Response {
                    txn: p.txn,
                    at_ms: self.now_ms,
                    response_code,
                    approval_code: journal_text(approval_code),
                    stand_in: false,
                });
                if response_code != codes::APPROVED
                    && let Some(card) = p.card
                {
                    self.shared
                        .fraud_state
                        .record_decline(card, self.now_ms / 1000);
                }
                if std::ptr::eq(p.host_spec, self.spec()) {
                    let framing = self.shared.terminals.framing;
                    if let Err(e) = framing.encode(&body, &mut self.wbuf) {
                        warn!(peer = %self.peer, "host answer can not be framed: {e}");
                        // The host answered: what it did must be undone.
                        return self.fail(p, Failure::LinkLost);
                    }
                    self.count(p.mti, response_code, p.started);
                    self.remember(&p, &body);
                } else {
                    self.transcode_answer(p, body, response_code);
                }
            }
            Outcome::Failed(why) => self.fail(p, why),
        }
    }

    fn transcode_answer(&mut self, p: Pending, body: Bytes, code: [u8; 2]) {
        let answer = match Message::parse(body, p.host_spec) {
            Ok(m) => m,
            Err(e) => {
                warn!(peer = %self.peer, "host answer unreadable: {e}");
                return self.fail(p, Failure::LinkLost);
            }
        };
        let mut b = MessageBuilder::new(self.spec(), answer.mti());
        b.copy_all(&answer);
        if let Some(body) = self.write_packed(&b, p.mti, code, p.started) {
            self.remember(&p, &self.wbuf[body]);
        }
    }

    fn fail(&mut self, p: Pending, why: Failure) {
        let code = match why {
            Failure::Duplicate => codes::DUPLICATE,
            Failure::Timeout | Failure::LinkDown | Failure::LinkLost | Failure::LinkBusy => {
                codes::ISSUER_UNAVAILABLE
            }
        };
        // The request parsed when it arrived; it parses again.
        let Ok(request) = Message::parse(p.request.clone(), self.spec()) else {
            return;
        };
        // The host may have acted on it: reverse, whatever the terminal
        // is told.
        let reverse = matches!(why, Failure::Timeout | Failure::LinkLost);
        if reverse {
            self.queue_reversal(&request, p.acquirer, p.txn, code);
        }
        let body = if code == codes::ISSUER_UNAVAILABLE
            && matches!(p.mti.match_class(), 100 | 200)
            && self.stand_in(&request, p.acquirer, p.points, p.txn, p.started)
        {
            None
        } else {
            let at_ms = self.now_ms;
            self.journal(if reverse {
                Record::Timeout { txn: p.txn, at_ms }
            } else {
                Record::Response {
                    txn: p.txn,
                    at_ms,
                    response_code: code,
                    approval_code: Default::default(),
                    stand_in: false,
                }
            });
            self.respond_at(&request, code, p.started)
        };
        if let Some(body) = body
            && code != codes::DUPLICATE
        {
            self.remember(&p, &self.wbuf[body]);
        }
    }
}

/// The journal's record of an accepted request: masked PAN and keyed hash,
/// never the card number, track data, CVV or PIN block.
fn request_record(
    msg: &Message,
    at_ms: u64,
    txn: u64,
    route: u16,
    score: &fraud::Score,
    card: CardHash,
) -> Record {
    // A masked PAN is never longer than the PAN's 19 digits.
    let masked = msg.pan().map_or_else(Default::default, |p| {
        crate::journal::MaskedPanStr::from(p.masked().as_str()).unwrap_or_default()
    });
    Record::Request {
        txn,
        at_ms,
        request: crate::journal::RequestData {
            mti: msg.mti().value(),
            stan: msg.stan().unwrap_or(0),
            terminal_id: journal_text(msg.terminal_id()),
            merchant_id: journal_text(msg.merchant_id()),
            rrn: journal_text(msg.rrn()),
            masked_pan: masked,
            card_hash: card.0,
            amount_minor: msg.amount_minor().unwrap_or(0),
            currency: msg.currency().unwrap_or(0),
            transmission_time: msg.transmission_time().unwrap_or(0),
            route,
        },
        fraud_points: score.points,
        fraud_reasons: score.reasons.bits(),
    }
}

/// Appends a record, the journal's writer to be woken at the end of the
/// turn (`dirty`); its sequence number, or `None` (counted) when the queue
/// is full.
fn append(shared: &Shared, dirty: &mut bool, record: Record) -> Option<u64> {
    match shared.journal.append_quiet(record) {
        Ok(seq) => {
            *dirty = true;
            Some(seq)
        }
        Err(_) => {
            shared.events.shed_journal_full.increment(1);
            None
        }
    }
}

/// A text field as the journal keeps it: trimmed, printable ASCII only, cut
/// to the record's width.
fn journal_text<const N: usize>(t: Option<crate::iso8583::SmallText>) -> arrayvec::ArrayString<N> {
    let mut out = arrayvec::ArrayString::<N>::new();
    if let Some(t) = t {
        for &c in t.trimmed().iter().take(N) {
            if c.is_ascii_graphic() || c == b' ' {
                out.push(c as char);
            }
        }
    }
    out
}
