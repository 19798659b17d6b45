//! One accepted connection: the TLS handshake if the simulator has TLS,
//! then read every frame available, decide and pack the answers, write
//! them in one go (now, or when their latency is up). Plain or TLS, the
//! socket is a `net::Conn` driven from the TCP socket's readiness.
//!
//! Delayed answers wait in per-connection queues served by one timer: a
//! FIFO while the delay is fixed (answers fall due in the order they were
//! made), a heap when it is random or the delay was just shortened.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::Decoder;
use tracing::{debug, warn};

use super::rules::{self, Answer, Kind, XorShift};
use super::{Entry, Faults, Shared};
use crate::frame::FrameCodec;
use crate::iso8583::{Message, SmallText};
use crate::net::{self, TlsConn};

/// Bytes read per turn before the frames are handled, so one fast sender
/// can not make a turn (and its write) arbitrarily large.
const READ_BUDGET: usize = 256 * 1024;
/// Stop reading while this much is unwritten (the client is not reading).
const MAX_PENDING_WRITE: usize = 1 << 20;
/// Stop reading while this many answers wait for their latency.
const MAX_DELAYED: usize = 1 << 20;
/// Approval codes taken from the shared counter at a time.
const APPROVAL_BLOCK: u64 = 64;
/// Room kept at the end of the arena that delayed answers are packed into.
const ARENA_CHUNK: usize = 64 * 1024;

/// Keeps the open-connections gauge right however the task ends.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.counters.connections.fetch_sub(1, Relaxed);
        self.0.changed.notify_waiters();
    }
}

pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut close: watch::Receiver<u64>,
    id: u64,
) {
    let _open = Open(shared.clone());
    let _ = stream.set_nodelay(true);
    let mut socket = match &shared.tls {
        None => net::Conn::Plain(stream),
        Some(config) => {
            let limit = shared.tls_handshake_timeout;
            let handshake = async {
                let tls = TlsConn::server(stream, config.clone())?;
                match tokio::time::timeout(limit, tls.handshake()).await {
                    Ok(r) => r,
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no handshake within {limit:?}"),
                    )),
                }
            };
            let done = tokio::select! {
                r = handshake => r,
                _ = close.changed() => return,
            };
            match done {
                Ok(socket) => {
                    shared.counters.tls_handshakes.fetch_add(1, Relaxed);
                    shared.changed.notify_waiters();
                    socket
                }
                Err(e) => return handshake_failed(&shared, peer, &e),
            }
        }
    };
    let mut conn = Conn::new(shared, id);
    match conn.run(&mut socket, close).await {
        Ok(why) => debug!(connection = id, "sim: connection closed: {why}"),
        Err(e) => debug!(connection = id, "sim: connection lost: {e}"),
    }
    conn.flush();
}

/// Counts a failed handshake and logs it: the peer and the reason (a
/// handshake carries no card data), at most one line a second.
fn handshake_failed(shared: &Shared, peer: SocketAddr, e: &io::Error) {
    shared.counters.tls_handshake_failures.fetch_add(1, Relaxed);
    shared.changed.notify_waiters();
    let reason = switchyard_protocol::tls::failure_reason(e);
    let allowed = crate::sync::lock(&shared.handshake_log).allow(std::time::Instant::now());
    if let Some(suppressed) = allowed {
        let more = match suppressed {
            0 => String::new(),
            n => format!(" ({n} more failed since the last line)"),
        };
        warn!(%peer, reason, "sim: TLS handshake failed: {e}{more}");
    }
}

#[derive(Default)]
struct Tally {
    received: u64,
    answered: u64,
    dropped: u64,
    unparseable: u64,
    ignored: u64,
    mac_refused: u64,
    pin_verified: u64,
    pin_refused: u64,
}

impl Tally {
    fn is_zero(&self) -> bool {
        self.received
            | self.answered
            | self.dropped
            | self.unparseable
            | self.ignored
            | self.mac_refused
            | self.pin_verified
            | self.pin_refused
            == 0
    }
}

/// Which buffer an answer was packed into.
#[derive(Clone, Copy)]
enum Target {
    Wbuf,
    Arena,
}

struct Conn {
    shared: Arc<Shared>,
    id: u64,
    codec: FrameCodec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Delayed answers are packed here and split off, so each one shares
    /// the arena's allocation instead of having its own.
    arena: BytesMut,
    delayed: Delayed,
    tally: Tally,
    entries: Vec<Entry>,
    decide_rng: XorShift,
    latency_rng: XorShift,
    approvals: std::ops::Range<u64>,
    /// What this batch did to the settlement file (with one).
    settled: Vec<super::settlement::Event>,
}

impl Conn {
    fn new(shared: Arc<Shared>, id: u64) -> Conn {
        // Separate streams, so latency draws do not shift the decisions.
        let seed = shared.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Conn {
            codec: FrameCodec::new(shared.framing, shared.max_frame),
            id,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(64 * 1024),
            arena: BytesMut::new(),
            delayed: Delayed::default(),
            tally: Tally::default(),
            entries: Vec::new(),
            decide_rng: XorShift::new(seed),
            latency_rng: XorShift::new(!seed),
            approvals: 0..0,
            settled: Vec::new(),
            shared,
        }
    }

    /// Serves until the peer is done, a close is requested, or the socket
    /// fails; says why it ended.
    async fn run(
        &mut self,
        conn: &mut net::Conn,
        mut close: watch::Receiver<u64>,
    ) -> io::Result<&'static str> {
        let timer = sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut read_open = true;
        loop {
            let next_due = self.delayed.next_due();
            if let Some(due) = next_due
                && timer.deadline() != due
            {
                timer.as_mut().reset(due);
            }
            let can_read = read_open
                && self.wbuf.len() < MAX_PENDING_WRITE
                && self.delayed.len() < MAX_DELAYED;
            // Plaintext that came with the TLS handshake's end has no
            // readiness event of its own: read it at once.
            let buffered = conn.has_buffered();
            // The branches' futures borrow `conn` only until one is
            // picked: the handlers may use it mutably.
            tokio::select! {
                biased;
                _ = close.changed() => return Ok("closed on request"),
                r = async {
                    if buffered { Ok(()) } else { conn.tcp().readable().await }
                }, if can_read => {
                    r?;
                    read_open = conn.read_up_to(&mut self.rbuf, READ_BUDGET)?;
                    if let Err(e) = self.on_bytes() {
                        // The stream can not be re-synchronised after a
                        // broken length header: answer what was decided,
                        // then give up on it.
                        self.flush();
                        let _ = self.write(conn);
                        debug!(connection = self.id, "sim: bad frame: {e}");
                        return Ok("bad frame");
                    }
                    if !read_open && !self.rbuf.is_empty() {
                        self.tally.unparseable += 1;
                        self.rbuf.clear();
                    }
                }
                r = conn.tcp().writable(), if !self.wbuf.is_empty() || conn.wants_flush() => { r?; }
                _ = &mut timer, if next_due.is_some() => {}
            }
            // Checked on every turn, not only when the timer wins: under a
            // steady stream of reads the timer branch may never be picked.
            if !self.delayed.is_empty() {
                self.tally.answered += self.delayed.release(Instant::now(), &mut self.wbuf);
            }
            self.flush();
            self.write(conn)?;
            if !read_open && self.wbuf.is_empty() && self.delayed.is_empty() && !conn.wants_flush()
            {
                return Ok("peer closed");
            }
        }
    }

    /// Handles every complete frame in the read buffer.
    fn on_bytes(&mut self) -> Result<(), crate::frame::FrameError> {
        let faults = self.shared.knobs.faults();
        let now = if faults.latency_us.1 > 0 {
            Some(Instant::now())
        } else {
            None
        };
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(frame)) => self.on_frame(frame, &faults, now),
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.tally.unparseable += 1;
                    return Err(e);
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Bytes, faults: &Faults, now: Option<Instant>) {
        let Ok(msg) = Message::parse(frame, self.shared.spec) else {
            self.tally.unparseable += 1;
            return;
        };
        let mti = msg.mti();
        let kind = Kind::of(mti);
        if kind == Kind::NotRequest {
            self.tally.ignored += 1;
            return;
        }
        self.tally.received += 1;
        let transaction = kind.is_transaction(mti);
        let unanswered = faults.stopped
            || (transaction
                && faults.drop_every > 0
                && self.shared.knobs.drop_tick(faults.drop_every));
        let mut response_code = None;
        if unanswered {
            self.tally.dropped += 1;
        } else {
            let refused = match (&self.shared.zone, transaction) {
                (Some(z), true) => {
                    let (code, seen) = z.check(&msg, kind == Kind::Decision);
                    self.tally.mac_refused += u64::from(seen.mac_refused);
                    self.tally.pin_verified += u64::from(seen.pin_verified);
                    self.tally.pin_refused += u64::from(seen.pin_refused);
                    code
                }
                _ => None,
            };
            let code = match (refused, kind) {
                (Some(code), _) => code,
                (None, Kind::Decision) => self.shared.rules.decide(&msg, &mut self.decide_rng),
                (None, Kind::Network | Kind::Acknowledge | Kind::Reconcile) => {
                    crate::codes::APPROVED
                }
                (None, Kind::Other | Kind::NotRequest) => crate::codes::INVALID_TRANSACTION,
            };
            let approval = (kind == Kind::Decision && code == crate::codes::APPROVED)
                .then(|| rules::approval_code(self.next_approval()));
            let balance = match (&self.shared.settlement, kind) {
                (Some(book), Kind::Reconcile) => {
                    // What this connection approved since its last flush
                    // is the book's too before the host judges.
                    let mut book = crate::sync::lock(book);
                    book.apply(&mut self.settled);
                    Some(if book.balances(&msg) { 1 } else { 2 })
                }
                _ => None,
            };
            let answer = Answer {
                response_code: code,
                approval,
                wrong_stan: faults.wrong_stan && transaction,
                balance,
            };
            if self.emit(&msg, kind, &answer, faults, now, transaction) {
                response_code = Some(code);
                if self.shared.settlement.is_some()
                    && let Some(e) = super::settlement::event(&msg, code, approval)
                {
                    self.settled.push(e);
                }
            } else {
                self.tally.ignored += 1;
            }
        }
        if self.shared.record_capacity > 0 {
            self.entries.push(Entry {
                connection: self.id,
                mti,
                stan: msg.stan().unwrap_or(0),
                terminal_id: msg.terminal_id().unwrap_or(SmallText::EMPTY),
                amount: msg.amount_minor(),
                response_code,
                dropped: unanswered,
                original_data: msg.text(90).map(|t| t.as_bytes().into()),
            });
        }
    }

    /// Packs the answer straight into the write buffer, or into the arena
    /// to wait for its latency. False if it could not be packed.
    fn emit(
        &mut self,
        msg: &Message,
        kind: Kind,
        answer: &Answer,
        faults: &Faults,
        now: Option<Instant>,
        transaction: bool,
    ) -> bool {
        let framing = self.shared.framing;
        let Some(now) = now else {
            let at = self.wbuf.len();
            let ok = rules::pack_answer(msg, kind, answer, framing, &mut self.wbuf).is_ok()
                && self.mac_answer(at, transaction, Target::Wbuf);
            self.tally.answered += u64::from(ok);
            return ok;
        };
        if self.arena.capacity() - self.arena.len() < 1024 {
            self.arena.reserve(ARENA_CHUNK);
        }
        let at = self.arena.len();
        if rules::pack_answer(msg, kind, answer, framing, &mut self.arena).is_err()
            || !self.mac_answer(at, transaction, Target::Arena)
        {
            return false;
        }
        let bytes = self.arena.split();
        let (lo, hi) = faults.latency_us;
        let delay = lo + self.latency_rng.below(hi - lo + 1);
        let due = now + Duration::from_micros(delay);
        self.delayed.push(due, bytes, lo == hi);
        true
    }

    /// MACs a transaction answer framed at `at` when the zone has a MAC
    /// key; false (the answer removed) when it could not be.
    fn mac_answer(&mut self, at: usize, transaction: bool, target: Target) -> bool {
        let Some(zone) = self.shared.zone.clone().filter(|_| transaction) else {
            return true;
        };
        let out = match target {
            Target::Wbuf => &mut self.wbuf,
            Target::Arena => &mut self.arena,
        };
        match zone.mac_framed(out, at, self.shared.framing, self.shared.spec) {
            Ok(()) => true,
            Err(e) => {
                debug!("answer can not be given its MAC: {e}");
                false
            }
        }
    }

    fn next_approval(&mut self) -> u64 {
        if self.approvals.is_empty() {
            let start = self.shared.approvals.fetch_add(APPROVAL_BLOCK, Relaxed);
            self.approvals = start..start + APPROVAL_BLOCK;
        }
        let n = self.approvals.start;
        self.approvals.start += 1;
        n
    }

    /// Publishes this batch's counters and records, then wakes waiters.
    /// Done before the answers are written, so whoever holds an answer
    /// also sees it counted.
    fn flush(&mut self) {
        if !self.settled.is_empty()
            && let Some(book) = &self.shared.settlement
        {
            crate::sync::lock(book).apply(&mut self.settled);
        }
        if self.tally.is_zero() && self.entries.is_empty() {
            return;
        }
        if !self.entries.is_empty() {
            self.shared.push_records(&mut self.entries);
        }
        let t = std::mem::take(&mut self.tally);
        let c = &self.shared.counters;
        for (counter, n) in [
            (&c.received, t.received),
            (&c.answered, t.answered),
            (&c.dropped, t.dropped),
            (&c.unparseable, t.unparseable),
            (&c.ignored, t.ignored),
            (&c.mac_refused, t.mac_refused),
            (&c.pin_verified, t.pin_verified),
            (&c.pin_refused, t.pin_refused),
        ] {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
        self.shared.changed.notify_waiters();
    }

    /// Writes as much of the buffer as the connection takes now.
    fn write(&mut self, conn: &mut net::Conn) -> io::Result<()> {
        conn.write_available(&mut self.wbuf)
    }
}

/// An answer waiting in the heap; ordered by due time, then by when it was
/// made.
struct Waiting {
    due: Instant,
    seq: u64,
    bytes: BytesMut,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Answers waiting for their latency.
#[derive(Default)]
struct Delayed {
    /// Due times never decrease along it.
    fifo: VecDeque<(Instant, BytesMut)>,
    heap: BinaryHeap<Reverse<Waiting>>,
    seq: u64,
}

impl Delayed {
    fn len(&self) -> usize {
        self.fifo.len() + self.heap.len()
    }

    fn is_empty(&self) -> bool {
        self.fifo.is_empty() && self.heap.is_empty()
    }

    /// `fixed`: the delay is the same for every answer, so the FIFO keeps
    /// order unless the delay was just shortened.
    fn push(&mut self, due: Instant, bytes: BytesMut, fixed: bool) {
        if fixed && self.fifo.back().is_none_or(|(last, _)| *last <= due) {
            self.fifo.push_back((due, bytes));
        } else {
            self.seq += 1;
            self.heap.push(Reverse(Waiting {
                due,
                seq: self.seq,
                bytes,
            }));
        }
    }

    fn next_due(&self) -> Option<Instant> {
        let a = self.fifo.front().map(|(d, _)| *d);
        let b = self.heap.peek().map(|Reverse(w)| w.due);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves every answer due by `now` to `out`, earliest first; returns
    /// how many.
    fn release(&mut self, now: Instant, out: &mut BytesMut) -> u64 {
        let mut n = 0;
        loop {
            let fifo = self.fifo.front().map(|(d, _)| *d).filter(|d| *d <= now);
            let heap = self
                .heap
                .peek()
                .map(|Reverse(w)| w.due)
                .filter(|d| *d <= now);
            let bytes = match (fifo, heap) {
                (Some(f), Some(h)) if h < f => self.heap.pop().map(|Reverse(w)| w.bytes),
                (Some(_), _) => self.fifo.pop_front().map(|(_, b)| b),
                (None, Some(_)) => self.heap.pop().map(|Reverse(w)| w.bytes),
                (None, None) => None,
            };
            let Some(bytes) = bytes else { return n };
            out.extend_from_slice(&bytes);
            n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delayed_answers_leave_in_due_order() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let b = |s: &str| BytesMut::from(s.as_bytes());
        let mut d = Delayed::default();
        d.push(ms(10), b("a"), true);
        d.push(ms(20), b("b"), true);
        // The fixed delay was shortened: this one must not wait behind b.
        d.push(ms(15), b("c"), true);
        d.push(ms(5), b("d"), false);
        d.push(ms(30), b("e"), false);
        assert_eq!(d.fifo.len(), 2);
        assert_eq!(d.len(), 5);
        assert_eq!(d.next_due(), Some(ms(5)));

        let mut out = BytesMut::new();
        assert_eq!(d.release(ms(4), &mut out), 0);
        assert_eq!(d.release(ms(15), &mut out), 3);
        assert_eq!(&out[..], b"dac");
        assert_eq!(d.next_due(), Some(ms(20)));
        assert_eq!(d.release(ms(100), &mut out), 2);
        assert_eq!(&out[..], b"dacbe");
        assert!(d.is_empty());
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn equal_due_times_keep_their_order_in_the_heap() {
        let t = Instant::now();
        let mut d = Delayed::default();
        for s in ["1", "2", "3"] {
            d.push(t, BytesMut::from(s.as_bytes()), false);
        }
        let mut out = BytesMut::new();
        d.release(t, &mut out);
        assert_eq!(&out[..], b"123");
    }
}
