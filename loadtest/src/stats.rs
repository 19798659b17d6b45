//! Figures, accumulated per worker thread (its connections share them
//! through a `RefCell`: one thread, no locks) and merged at the end.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use hdrhistogram::Histogram;

use super::conn::Plan;

/// Longest run the per-second series covers.
pub const MAX_SECONDS: usize = 86_400;
/// Highest latency the histograms hold, in µs; larger values are clamped.
pub const MAX_LATENCY_US: u64 = 60_000_000;
/// Distinct (MTI, DE39) pairs tracked; more land in one "other" entry so a
/// misbehaving peer can not grow the map.
const MAX_CODES: usize = 256;
/// First errors kept for the report.
const MAX_ERRORS: usize = 8;
/// Key of the "other" entry of the response table.
pub const OTHER_CODE: (u16, [u8; 2]) = (9999, *b"??");

/// Totals the progress line reads while the run goes on.
#[derive(Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub answered: AtomicU64,
    pub timed_out: AtomicU64,
    pub lost: AtomicU64,
    pub late: AtomicU64,
}

/// Why a handshake failed: `tls::failure_reason`'s word, and for an
/// alert from the server, which one (a client mostly learns of a refusal
/// that way: "refused_by_peer:CertificateRequired").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HandshakeFailure {
    pub reason: &'static str,
    pub alert: Option<&'static str>,
}

impl HandshakeFailure {
    pub fn of(e: &std::io::Error) -> HandshakeFailure {
        let alert = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(a)) => a.as_str(),
            _ => None,
        };
        HandshakeFailure {
            reason: switchyard_protocol::tls::failure_reason(e),
            alert,
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.alert {
            Some(a) => write!(f, "{}:{a}", self.reason),
            None => f.write_str(self.reason),
        }
    }
}

/// TLS handshakes, whole run unless a name says otherwise.
pub struct TlsStats {
    pub handshakes: u64,
    /// Of `handshakes`, those that resumed an earlier session.
    pub resumed: u64,
    /// Handshakes completed within the measured period.
    pub measured: u64,
    pub failures: u64,
    /// Failures by reason: a fixed set, so the list stays short.
    pub reasons: Vec<(HandshakeFailure, u64)>,
    /// From the TCP connection to the handshake's end, µs.
    pub time: Histogram<u64>,
}

impl TlsStats {
    fn new() -> TlsStats {
        TlsStats {
            handshakes: 0,
            resumed: 0,
            measured: 0,
            failures: 0,
            reasons: Vec::new(),
            time: latency_histogram(),
        }
    }

    pub fn failed(&mut self, reason: HandshakeFailure) {
        self.failures += 1;
        self.count_reason(reason, 1);
    }

    fn count_reason(&mut self, reason: HandshakeFailure, n: u64) {
        match self.reasons.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, c)) => *c += n,
            None => self.reasons.push((reason, n)),
        }
    }

    fn merge(&mut self, o: TlsStats) {
        self.handshakes += o.handshakes;
        self.resumed += o.resumed;
        self.measured += o.measured;
        self.failures += o.failures;
        for (r, n) in o.reasons {
            self.count_reason(r, n);
        }
        // Same bounds on both sides: adding can not fail.
        let _ = self.time.add(&o.time);
    }
}

/// A count and an amount (minor units of the run's one currency, DE49
/// 840).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub amount: u64,
}

impl Tally {
    fn add(&mut self, amount: u64) {
        self.count += 1;
        self.amount += amount;
    }

    fn merge(&mut self, o: Tally) {
        self.count += o.count;
        self.amount += o.amount;
    }
}

/// The money of the well-matched answers, whole run (warmup included):
/// what a settlement of the run's transactions should show. Indexed by
/// the transaction's class: `[authorizations (0100), financial (0200)]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Money {
    /// Approved (DE39 00).
    pub approved: [Tally; 2],
    /// Reversals (0400) approved, by the class of what they reversed.
    pub reversed: [Tally; 2],
    /// Reversals answered 91: the switch got no answer from the host and
    /// carries the reversal on itself (a 0420), so the host reverses the
    /// original even though this terminal was not told.
    pub reversals_unanswered: [Tally; 2],
}

impl Money {
    pub fn count(&mut self, req: &super::messages::Request, code: [u8; 2]) {
        let class = |mti: switchyard_protocol::iso8583::Mti| usize::from(mti.class() != 1);
        match req.reverses {
            Some(original) if &code == b"00" => self.reversed[class(original)].add(req.amount),
            Some(original) if &code == b"91" => {
                self.reversals_unanswered[class(original)].add(req.amount)
            }
            Some(_) => {}
            None if &code == b"00" => self.approved[class(req.mti)].add(req.amount),
            None => {}
        }
    }

    fn merge(&mut self, o: &Money) {
        for i in 0..2 {
            self.approved[i].merge(o.approved[i]);
            self.reversed[i].merge(o.reversed[i]);
            self.reversals_unanswered[i].merge(o.reversals_unanswered[i]);
        }
    }
}

/// What happened to the requests of one period (warmup or measured).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub sent: u64,
    pub answered: u64,
    pub timed_out: u64,
    pub lost: u64,
    /// Answered, but the answer's MTI or amount does not fit the request.
    pub bad_echo: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.answered += o.answered;
        self.timed_out += o.timed_out;
        self.lost += o.lost;
        self.bad_echo += o.bad_echo;
    }
}

/// One second of the measured period, by intended send time.
pub struct Second {
    pub sent: u64,
    pub answered: u64,
    pub timed_out: u64,
    /// Answers that are the switch's own refusals (errors, see
    /// `is_switch_refusal`).
    pub refused: u64,
    /// 2 significant digits: enough for a time series, 10x smaller.
    pub latency: Histogram<u32>,
}

pub struct WorkerStats {
    pub measured: Counts,
    pub warmup: Counts,
    /// Answers that match no request in flight (wrong STAN, TID or MTI
    /// class, or a request we never sent).
    pub unmatched: u64,
    /// Answers that could not be parsed.
    pub unparseable: u64,
    /// Answers to requests that had already timed out.
    pub late_answers: u64,
    /// Latency of measured, well-matched answers, µs.
    pub latency: Histogram<u64>,
    /// Answered requests of the measured period by (response MTI, DE39).
    pub by_code: HashMap<(u16, [u8; 2]), u64>,
    pub seconds: Vec<Second>,
    /// Connections opened (connected, handshaken, signed on or not).
    pub connects: u64,
    /// Connections opened again after one broke.
    pub reconnects: u64,
    /// Connections closed and opened again by plan (`reconnect_every`).
    pub reopens: u64,
    /// Requests sent again after a clean close (`resend_on_close`).
    pub resent: u64,
    pub connect_failures: u64,
    pub sign_on_failures: u64,
    pub tls: TlsStats,
    /// Open loop: sends made, and how late against the schedule (µs).
    pub scheduled_sends: u64,
    pub late_sends: u64,
    pub lag: Histogram<u64>,
    /// Times a connection could not send because its in-flight table was
    /// full (open loop: the schedule slipped).
    pub table_full: u64,
    /// With `--mac`: answers whose MAC was missing or did not verify.
    pub answer_mac_failures: u64,
    pub money: Money,
    pub errors: Vec<String>,
}

// The bounds are constants that hdrhistogram accepts: these can not fail.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

pub fn second_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid histogram bounds")
}

impl WorkerStats {
    pub fn new(plan: &Plan) -> WorkerStats {
        WorkerStats {
            measured: Counts::default(),
            warmup: Counts::default(),
            unmatched: 0,
            unparseable: 0,
            late_answers: 0,
            latency: latency_histogram(),
            by_code: HashMap::with_capacity(16),
            seconds: Vec::with_capacity(plan.seconds.min(MAX_SECONDS)),
            connects: 0,
            reconnects: 0,
            reopens: 0,
            resent: 0,
            connect_failures: 0,
            sign_on_failures: 0,
            tls: TlsStats::new(),
            scheduled_sends: 0,
            late_sends: 0,
            lag: latency_histogram(),
            table_full: 0,
            answer_mac_failures: 0,
            money: Money::default(),
            errors: Vec::new(),
        }
    }

    pub fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS && !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }

    /// The bucket of second `i` of the measured period (`None` past the
    /// end, which only a clock oddity could produce).
    pub fn second(&mut self, i: usize, limit: usize) -> Option<&mut Second> {
        if i >= limit.min(MAX_SECONDS) {
            return None;
        }
        while self.seconds.len() <= i {
            self.seconds.push(Second {
                sent: 0,
                answered: 0,
                timed_out: 0,
                refused: 0,
                latency: second_histogram(),
            });
        }
        self.seconds.get_mut(i)
    }

    pub fn count_code(&mut self, mti: u16, code: [u8; 2]) {
        let n = self.by_code.len();
        if let Some(c) = self.by_code.get_mut(&(mti, code)) {
            *c += 1;
        } else if n < MAX_CODES {
            self.by_code.insert((mti, code), 1);
        } else {
            *self.by_code.entry(OTHER_CODE).or_insert(0) += 1;
        }
    }

    pub fn merge(&mut self, o: WorkerStats) {
        self.measured.add(&o.measured);
        self.warmup.add(&o.warmup);
        self.unmatched += o.unmatched;
        self.unparseable += o.unparseable;
        self.late_answers += o.late_answers;
        // Same bounds on both sides: adding can not fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.lag.add(&o.lag);
        for (k, v) in o.by_code {
            *self.by_code.entry(k).or_insert(0) += v;
        }
        for (i, s) in o.seconds.into_iter().enumerate() {
            if let Some(mine) = self.second(i, MAX_SECONDS) {
                mine.sent += s.sent;
                mine.answered += s.answered;
                mine.timed_out += s.timed_out;
                mine.refused += s.refused;
                let _ = mine.latency.add(&s.latency);
            }
        }
        self.connects += o.connects;
        self.reconnects += o.reconnects;
        self.reopens += o.reopens;
        self.resent += o.resent;
        self.tls.merge(o.tls);
        self.connect_failures += o.connect_failures;
        self.sign_on_failures += o.sign_on_failures;
        self.scheduled_sends += o.scheduled_sends;
        self.late_sends += o.late_sends;
        self.table_full += o.table_full;
        self.answer_mac_failures += o.answer_mac_failures;
        self.money.merge(&o.money);
        for e in o.errors {
            self.error(e);
        }
    }
}
