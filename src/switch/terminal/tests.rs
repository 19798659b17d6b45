//! The terminal core in virtual time: no socket, no runtime, no sleep. The
//! test plays the driver (durability stepped by hand with
//! `handle_durable`), the links (reading `poll_forward`, answering with
//! `handle_reply`) and store-and-forward (draining its queue).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{ECHO_FIELDS, ForwardOut, JournalAppend, TerminalCore};
use crate::clock::Now;
use crate::codes;
use crate::iso8583::{Message, MessageBuilder, Mti, Spec, samples};
use crate::switch::acquirer::{AcquirerHandle, Failure, Forward, LinkHandle, LinkShared, Outcome};
use crate::switch::config::Config;
use crate::switch::journal::{Journal, Record};
use crate::switch::saf::{SafEntry, SafHandle, SafKind};
use crate::switch::server::Shared;

const PAN: &[u8] = samples::TYPICAL_PAN;

/// An in-memory journal; durability is whatever the test says.
#[derive(Default)]
struct MemJournal {
    records: Vec<(u64, Record)>,
    last: u64,
    /// Refuses every append once this many records are in (a full or
    /// stopped journal).
    refuse_after: Option<u64>,
}

impl JournalAppend for MemJournal {
    fn append(&mut self, record: Record) -> Option<u64> {
        if self.refuse_after.is_some_and(|n| self.last >= n) {
            return None;
        }
        self.last += 1;
        self.records.push((self.last, record));
        Some(self.last)
    }
}

struct Harness {
    core: TerminalCore<MemJournal>,
    shared: Arc<Shared>,
    saf: Vec<mpsc::Receiver<SafEntry>>,
    _links: Vec<mpsc::Receiver<Forward>>,
    now: Now,
    spec: &'static Spec,
    _dir: tempfile::TempDir,
}

/// A core with one acquirer (`acquirer-a`, one link) routed by default;
/// `extra` is appended to the config, `terminals` added to its
/// `[terminals]`, `acquirer` to its acquirer.
fn harness_with(terminals: &str, acquirer: &str, routing: &str, extra: &str, up: bool) -> Harness {
    harness_full(terminals, acquirer, routing, extra, "", up)
}

/// As `harness_with`, with `journal` added to `[journal]`.
fn harness_full(
    terminals: &str,
    acquirer: &str,
    routing: &str,
    extra: &str,
    journal: &str,
    up: bool,
) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = format!(
        r#"
[terminals]
{terminals}
[[acquirers]]
name = "acquirer-a"
links = ["127.0.0.1:9"]
{acquirer}
[routing]
{routing}
[journal]
dir = "{dir}"
{journal}
[fraud]
pan_key = "000102030405060708090a0b0c0d0e0f"
{extra}
"#,
        dir = dir.path().display()
    );
    let config = Config::parse(&toml).unwrap_or_else(|p| panic!("config: {p:?}"));
    let (journal, recovery) = Journal::open(&config.journal).expect("journal");
    let mut acquirers = Vec::new();
    let mut saf = Vec::new();
    let mut links = Vec::new();
    for a in &config.acquirers {
        let mut handles = Vec::new();
        for (i, addr) in a.links.iter().enumerate() {
            let ls = Arc::new(LinkShared::new(format!("{}-{i}", a.name), *addr));
            ls.set_up(up);
            let (h, rx) = LinkHandle::channel(ls, 8);
            handles.push(h);
            links.push(rx);
        }
        let (s, rx) = SafHandle::channel(64);
        saf.push(rx);
        acquirers.push(AcquirerHandle {
            name: a.name.clone(),
            spec: a.spec.spec,
            links: handles,
            stand_in: a.stand_in.clone(),
            answer_must_match: crate::switch::acquirer::link::FieldSet::of(&a.answer_must_match),
            saf: s,
            security: a.security.clone(),
        });
    }
    let shared =
        Arc::new(Shared::new(&config, acquirers, journal, recovery.next_txn).expect("routes"));
    let now = Now {
        at: Instant::now(),
        unix_ms: 1_795_592_096_000,
    };
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let core = TerminalCore::new(now, shared.clone(), MemJournal::default(), peer, 0);
    Harness {
        spec: shared.terminals.spec.spec,
        core,
        shared,
        saf,
        _links: links,
        now,
        _dir: dir,
    }
}

fn harness() -> Harness {
    harness_with("", "", "default = \"acquirer-a\"", "", true)
}

/// A 0200 (or other MTI) like the typical sample, for `stan` and `amount`.
fn request(spec: &'static Spec, mti: Mti, stan: u64, amount: u64) -> Bytes {
    let mut b = MessageBuilder::new(spec, mti);
    b.set(2, PAN)
        .set(3, b"000000")
        .set_number(4, amount)
        .set(7, b"0612143015")
        .set_number(11, stan)
        .set(12, b"143015")
        .set(13, b"0612")
        .set(37, b"416314123456")
        .set(41, b"TERM0001")
        .set(42, b"MERCHANT0000001")
        .set(49, b"840");
    b.to_bytes().expect("packs").freeze()
}

impl Harness {
    fn tick(&mut self, d: Duration) -> Now {
        self.now = self.now.plus(d);
        self.now
    }

    fn send(&mut self, frame: Bytes) {
        let now = self.tick(Duration::from_millis(1));
        self.core.handle_frame(now, frame);
    }

    fn send_auth(&mut self, stan: u64, amount: u64) {
        let r = request(self.spec, Mti::FINANCIAL, stan, amount);
        self.send(r);
    }

    /// Makes everything journaled so far durable.
    fn sync(&mut self) {
        let last = self.core.journal_mut().last;
        let now = self.tick(Duration::from_millis(1));
        self.core.handle_durable(now, last);
    }

    fn forwards(&mut self) -> Vec<ForwardOut> {
        self.sync();
        std::iter::from_fn(|| self.core.poll_forward()).collect()
    }

    /// What the terminal would read now (without making anything durable).
    fn transmitted(&mut self) -> Vec<Message> {
        let Some(out) = self.core.poll_transmit() else {
            return Vec::new();
        };
        let bytes = Bytes::copy_from_slice(out);
        self.core.advance(bytes.len());
        let mut frames = Vec::new();
        let mut at = 0;
        while at + 2 <= bytes.len() {
            let len = u16::from_be_bytes([bytes[at], bytes[at + 1]]) as usize;
            let body = bytes.slice(at + 2..at + 2 + len);
            frames.push(Message::parse(body, self.spec).expect("answer parses"));
            at += 2 + len;
        }
        frames
    }

    fn answers(&mut self) -> Vec<Message> {
        self.sync();
        self.transmitted()
    }

    fn one_answer(&mut self) -> Message {
        let mut a = self.answers();
        assert_eq!(a.len(), 1, "one answer");
        a.remove(0)
    }

    /// The host answers forward `f` with `code`.
    fn host_answers(&mut self, f: &ForwardOut, code: [u8; 2]) {
        let req = Message::parse(f.body.clone(), self.spec).expect("forward parses");
        let mut b = MessageBuilder::response_to(&req, ECHO_FIELDS).expect("response");
        b.set(38, b"A1B2C3").set(39, &code);
        let body = b.to_bytes().expect("packs").freeze();
        let now = self.tick(Duration::from_millis(5));
        self.core.handle_reply(
            now,
            f.token,
            Outcome::Answered {
                body,
                response_code: code,
                approval_code: None,
                settlement_date: 0,
            },
        );
    }

    fn fails(&mut self, f: &ForwardOut, why: Failure) {
        let now = self.tick(Duration::from_millis(5));
        self.core.handle_reply(now, f.token, Outcome::Failed(why));
    }

    fn saf_entries(&mut self) -> Vec<SafEntry> {
        std::iter::from_fn(|| self.saf[0].try_recv().ok()).collect()
    }

    fn records(&self) -> Vec<&Record> {
        self.core.journal.records.iter().map(|(_, r)| r).collect()
    }

    /// A new connection sends the 0201 repeat of STAN `stan` (amount 100);
    /// the code it is answered (nothing forwarded).
    fn reconnect_and_repeat(&mut self, stan: u64) -> [u8; 2] {
        let now = self.tick(Duration::from_millis(1));
        let peer: SocketAddr = "127.0.0.1:40001".parse().expect("addr");
        self.core = TerminalCore::new(now, self.shared.clone(), MemJournal::default(), peer, 0);
        let repeat = request(self.spec, Mti::FINANCIAL_REPEAT, stan, 100);
        self.send(repeat);
        assert!(self.forwards().is_empty(), "the repeat went upstream");
        code(&self.one_answer())
    }

    fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }
}

fn code(m: &Message) -> [u8; 2] {
    m.response_code().expect("DE39")
}

fn has_record(h: &Harness, f: impl Fn(&Record) -> bool) -> bool {
    h.records().into_iter().any(f)
}

#[test]
fn host_approval_is_passed_through() {
    let mut h = harness();
    h.send_auth(1, 100);
    let f = h.forwards();
    assert_eq!(f.len(), 1);
    assert_eq!(h.in_flight(), 1);
    h.host_answers(&f[0], codes::APPROVED);
    let a = h.one_answer();
    assert_eq!(
        (a.mti(), code(&a)),
        (Mti::FINANCIAL_RESPONSE, codes::APPROVED)
    );
    assert_eq!(a.stan(), Some(1));
    assert_eq!(h.in_flight(), 0);
    assert!(has_record(&h, |r| matches!(r, Record::Forwarded { .. })));
    assert!(has_record(
        &h,
        |r| matches!(r, Record::Response { response_code, .. } if *response_code == codes::APPROVED)
    ));
    assert!(h.core.is_finished() || !h.core.is_gone());
}

#[test]
fn host_decline_is_passed_through() {
    let mut h = harness();
    h.send_auth(1, 100);
    let f = h.forwards();
    h.host_answers(&f[0], *b"05");
    assert_eq!(code(&h.one_answer()), *b"05");
    assert_eq!(h.in_flight(), 0);
}

#[test]
fn unknown_request_mti_answers_12() {
    let mut h = harness();
    let r = request(h.spec, Mti::RECONCILIATION, 1, 100);
    h.send(r);
    assert_eq!(code(&h.one_answer()), codes::INVALID_TRANSACTION);
    assert!(h.forwards().is_empty());
}

#[test]
fn bad_luhn_answers_14() {
    let mut h = harness();
    let mut b = MessageBuilder::new(h.spec, Mti::FINANCIAL);
    b.set(2, b"4761739001010011")
        .set(3, b"000000")
        .set_number(4, 100)
        .set(7, b"0612143015")
        .set_number(11, 1)
        .set(41, b"TERM0001")
        .set(42, b"MERCHANT0000001")
        .set(49, b"840");
    h.send(b.to_bytes().expect("packs").freeze());
    assert_eq!(code(&h.one_answer()), codes::INVALID_CARD_NUMBER);
    assert!(h.forwards().is_empty());
}

#[test]
fn missing_required_field_answers_30() {
    let mut h = harness();
    let full = request(h.spec, Mti::FINANCIAL, 1, 100);
    let msg = Message::parse(full, h.spec).expect("parses");
    let mut b = MessageBuilder::new(h.spec, Mti::FINANCIAL);
    b.copy_all(&msg).remove(42);
    h.send(b.to_bytes().expect("packs").freeze());
    assert_eq!(code(&h.one_answer()), codes::FORMAT_ERROR);
    assert!(h.forwards().is_empty());
}

#[test]
fn terminal_not_allowed_answers_58() {
    let mut h = harness_with(
        "allowed_terminals = [\"OTHER001\"]",
        "",
        "default = \"acquirer-a\"",
        "",
        true,
    );
    h.send_auth(1, 100);
    assert_eq!(code(&h.one_answer()), codes::UNKNOWN_TERMINAL);
    assert!(h.forwards().is_empty());
}

#[test]
fn fraud_decline_answers_59_without_a_forward() {
    let mut h = harness_with(
        "",
        "",
        "default = \"acquirer-a\"",
        "blocked_bins = [\"476173\"]",
        true,
    );
    h.send_auth(1, 100);
    assert_eq!(code(&h.one_answer()), codes::SUSPECTED_FRAUD);
    assert!(h.forwards().is_empty());
    assert!(has_record(&h, |r| matches!(r, Record::Request { .. })));
}

#[test]
fn host_timeout_answers_91_and_queues_a_reversal() {
    let mut h = harness();
    h.send_auth(7, 100);
    let f = h.forwards();
    h.fails(&f[0], Failure::Timeout);
    assert_eq!(code(&h.one_answer()), codes::ISSUER_UNAVAILABLE);
    let saf = h.saf_entries();
    assert_eq!(saf.len(), 1);
    assert_eq!(saf[0].kind, SafKind::Reversal);
    assert_eq!(saf[0].key.stan(), 7);
    assert!(has_record(&h, |r| matches!(
        r,
        Record::ReversalQueued { .. }
    )));
    assert!(has_record(&h, |r| matches!(r, Record::Timeout { .. })));
    assert_eq!(h.in_flight(), 0);
}

#[test]
fn no_link_up_answers_91() {
    let mut h = harness_with("", "", "default = \"acquirer-a\"", "", false);
    h.send_auth(1, 100);
    assert_eq!(code(&h.one_answer()), codes::ISSUER_UNAVAILABLE);
    assert!(h.forwards().is_empty());
    assert!(
        h.saf_entries().is_empty(),
        "nothing reached a host: no reversal"
    );
}

#[test]
fn no_route_answers_92() {
    let mut h = harness_with(
        "",
        "",
        "routes = [{ prefix = \"5\", acquirer = \"acquirer-a\" }]",
        "",
        true,
    );
    h.send_auth(1, 100);
    assert_eq!(code(&h.one_answer()), codes::NO_ROUTE);
    assert!(h.forwards().is_empty());
}

#[test]
fn same_key_in_flight_answers_94() {
    let mut h = harness();
    h.send_auth(1, 100);
    h.send_auth(1, 100);
    let a = h.one_answer();
    assert_eq!(code(&a), codes::DUPLICATE);
    assert_eq!(h.forwards().len(), 1, "only the first went upstream");
}

#[test]
fn changed_resend_answers_94() {
    let mut h = harness();
    h.send_auth(1, 100);
    let f = h.forwards();
    h.host_answers(&f[0], codes::APPROVED);
    assert_eq!(code(&h.one_answer()), codes::APPROVED);
    h.send_auth(1, 200);
    assert_eq!(code(&h.one_answer()), codes::DUPLICATE);
    assert!(h.forwards().is_empty());
}

#[test]
fn identical_repeat_gets_the_original_answer_without_a_second_forward() {
    let mut h = harness();
    h.send_auth(1, 100);
    let f = h.forwards();
    h.host_answers(&f[0], codes::APPROVED);
    let first = h.one_answer();
    h.send_auth(1, 100);
    let again = h.one_answer();
    assert_eq!(
        again.frame(),
        first.frame(),
        "the same answer, byte for byte"
    );
    assert!(h.forwards().is_empty());
}

#[test]
fn over_the_connection_limit_answers_96() {
    let mut h = harness_with(
        "max_in_flight_per_connection = 2",
        "",
        "default = \"acquirer-a\"",
        "",
        true,
    );
    for stan in 1..=3 {
        h.send_auth(stan, 100);
    }
    let a = h.one_answer();
    assert_eq!((code(&a), a.stan()), (codes::SYSTEM_MALFUNCTION, Some(3)));
    assert_eq!(h.forwards().len(), 2);
    assert_eq!(h.in_flight(), 2);
}

#[test]
fn stand_in_approves_and_queues_its_advice() {
    let mut h = harness_with(
        "",
        "[acquirers.stand_in]\nenabled = true\nmax_amount = 5000\nmax_fraud_points = 10",
        "default = \"acquirer-a\"",
        "",
        false,
    );
    h.send_auth(1, 1_000);
    let a = h.one_answer();
    assert_eq!(code(&a), codes::APPROVED);
    assert!(
        a.approval_code()
            .is_some_and(|c| c.trimmed().starts_with(b"S"))
    );
    let saf = h.saf_entries();
    assert_eq!(saf.len(), 1);
    assert_eq!(saf[0].kind, SafKind::Advice);
    assert_eq!(saf[0].key.class(), 220);
    assert!(has_record(&h, |r| matches!(r, Record::AdviceQueued { .. })));
    assert!(has_record(&h, |r| matches!(
        r,
        Record::Response { stand_in: true, .. }
    )));
    // Over the stand-in limit: 91.
    h.send_auth(2, 9_000);
    assert_eq!(code(&h.one_answer()), codes::ISSUER_UNAVAILABLE);
}

#[test]
fn a_reply_for_a_token_no_longer_pending_is_ignored() {
    let mut h = harness();
    h.send_auth(1, 100);
    let f = h.forwards();
    h.host_answers(&f[0], codes::APPROVED);
    assert_eq!(h.answers().len(), 1);
    // The same token again (a late duplicate), and one never given out.
    h.host_answers(&f[0], codes::APPROVED);
    let now = h.tick(Duration::from_millis(1));
    h.core
        .handle_reply(now, 999, Outcome::Failed(Failure::Timeout));
    assert!(h.answers().is_empty());
    assert!(h.saf_entries().is_empty());
    assert_eq!(h.in_flight(), 0);
}

#[test]
fn terminal_advices_are_acknowledged_and_queued() {
    let mut h = harness();
    let r = request(h.spec, Mti::FINANCIAL_ADVICE, 5, 100);
    h.send(r);
    let a = h.one_answer();
    assert_eq!(
        (a.mti(), code(&a)),
        (Mti::FINANCIAL_ADVICE_RESPONSE, codes::APPROVED)
    );
    assert!(h.forwards().is_empty(), "advices go through SAF");
    let saf = h.saf_entries();
    assert_eq!(saf.len(), 1);
    assert_eq!((saf[0].kind, saf[0].key.stan()), (SafKind::Advice, 5));
}

#[test]
fn nothing_leaves_before_its_records_are_durable() {
    let mut h = harness();
    assert!(h.shared.journal_sync, "the default durability is fsync");
    h.send_auth(1, 100);
    assert!(h.core.poll_forward().is_none(), "Forwarded not yet durable");
    assert!(h.core.waiting_for_disk());
    let forwarded_at = h.core.journal.last;
    let now = h.tick(Duration::from_millis(1));
    h.core.handle_durable(now, forwarded_at - 1);
    assert!(
        h.core.poll_forward().is_none(),
        "Request durable, Forwarded not"
    );
    h.core.handle_durable(now, forwarded_at);
    let f = h.core.poll_forward().expect("released once durable");
    h.host_answers(&f, codes::APPROVED);
    assert!(h.core.poll_transmit().is_none(), "Response not yet durable");
    let response_at = h.core.journal.last;
    h.core.handle_durable(now, response_at);
    assert_eq!(h.transmitted().len(), 1);
}

#[test]
fn a_full_link_queue_answers_once() {
    let mut h = harness();
    h.send_auth(1, 100);
    let f = h.forwards();
    let now = h.tick(Duration::from_millis(1));
    h.core.handle_forward_refused(now, f[0].token);
    assert_eq!(code(&h.one_answer()), codes::ISSUER_UNAVAILABLE);
    assert_eq!(h.in_flight(), 0);
    // Its reply can never come; one that did would be ignored.
    h.host_answers(&f[0], codes::APPROVED);
    assert!(h.answers().is_empty());
}

#[test]
fn an_approval_for_a_terminal_that_has_gone_is_reversed() {
    let mut h = harness();
    h.send_auth(3, 100);
    h.send_auth(4, 100);
    let f = h.forwards();
    let now = h.tick(Duration::from_millis(1));
    h.core.handle_peer_closed(now);
    assert!(h.core.is_gone());
    assert!(!h.core.is_finished(), "replies are still owed");
    h.host_answers(&f[0], codes::APPROVED);
    h.host_answers(&f[1], *b"05");
    assert!(h.core.is_finished());
    assert!(h.answers().is_empty());
    let saf = h.saf_entries();
    assert_eq!(saf.len(), 1, "only the approval is reversed");
    assert_eq!((saf[0].kind, saf[0].key.stan()), (SafKind::Reversal, 3));
    let reversal = Message::parse(saf[0].body.clone(), h.spec).expect("parses");
    assert_eq!(reversal.response_code(), Some(codes::UNDELIVERABLE));
    assert!(has_record(
        &h,
        |r| matches!(r, Record::ReversalQueued { reason, .. } if *reason == codes::UNDELIVERABLE)
    ));
    assert_eq!(h.in_flight(), 0);
    // Back on a new connection, its repeat is not told "approved".
    assert_eq!(h.reconnect_and_repeat(3), codes::ISSUER_UNAVAILABLE);
}

#[test]
fn an_approval_whose_write_failed_is_reversed() {
    let mut h = harness();
    h.send_auth(3, 100);
    let f = h.forwards();
    h.host_answers(&f[0], codes::APPROVED);
    h.sync();
    assert!(h.core.poll_transmit().is_some());
    let now = h.tick(Duration::from_millis(1));
    h.core.handle_write_failed(now);
    let saf = h.saf_entries();
    assert_eq!(saf.len(), 1);
    assert_eq!(saf[0].kind, SafKind::Reversal);
    // The approval kept for repeats was replaced.
    assert_eq!(h.reconnect_and_repeat(3), codes::ISSUER_UNAVAILABLE);
}

#[test]
fn an_approval_written_is_not_reversed_when_the_peer_closes_later() {
    let mut h = harness();
    h.send_auth(3, 100);
    let f = h.forwards();
    h.host_answers(&f[0], codes::APPROVED);
    assert_eq!(h.answers().len(), 1);
    let now = h.tick(Duration::from_millis(1));
    h.core.handle_peer_closed(now);
    assert!(h.saf_entries().is_empty());
    assert!(h.core.is_finished());
}

#[test]
fn a_terminal_that_does_not_read_stops_being_read_then_is_closed() {
    let mut h = harness_with(
        "max_write_buffer = 1000\nwrite_stall_timeout_ms = 500",
        "",
        "default = \"acquirer-a\"",
        "",
        true,
    );
    let mut stan = 0;
    while h.core.wants_read() {
        stan += 1;
        let r = request(h.spec, Mti::RECONCILIATION, stan, 100);
        h.send(r);
        h.sync();
        assert!(stan < 100, "never stopped reading");
    }
    let deadline = h.core.poll_timeout().expect("a stall deadline");
    assert!(deadline <= h.now.at + Duration::from_millis(500));
    let wait = deadline - h.now.at;
    let now = h.tick(wait - Duration::from_millis(1));
    h.core.handle_timeout(now);
    assert!(!h.core.is_gone(), "not before the deadline");
    assert!(!h.core.wants_read());
    let now = h.tick(Duration::from_millis(1));
    h.core.handle_timeout(now);
    assert!(h.core.is_gone() && h.core.is_finished());
}

#[test]
fn a_terminal_that_reads_again_is_read_again() {
    let mut h = harness_with(
        "max_write_buffer = 1000",
        "",
        "default = \"acquirer-a\"",
        "",
        true,
    );
    let mut stan = 0;
    while h.core.wants_read() {
        stan += 1;
        let r = request(h.spec, Mti::RECONCILIATION, stan, 100);
        h.send(r);
        h.sync();
    }
    assert_eq!(h.transmitted().len(), stan as usize);
    assert!(h.core.wants_read());
    assert!(h.core.poll_timeout() > Some(h.now.at + Duration::from_secs(60)));
}

#[test]
fn on_stop_what_was_read_is_answered_then_the_core_finishes() {
    let mut h = harness();
    h.send_auth(1, 100);
    let now = h.tick(Duration::from_millis(1));
    h.core.handle_stop(now);
    assert!(!h.core.wants_read());
    assert!(!h.core.is_finished(), "one in flight");
    let f = h.forwards();
    h.host_answers(&f[0], codes::APPROVED);
    assert_eq!(h.answers().len(), 1);
    assert!(h.core.is_finished());
}

#[test]
fn idle_and_partial_frame_deadlines() {
    let mut h = harness();
    let now = h.tick(Duration::from_millis(1));
    h.core.handle_read(now, true);
    let frame_deadline = h.core.poll_timeout().expect("deadline");
    assert_eq!(frame_deadline, now.at + h.shared.terminals.frame_timeout);
    let now = h.tick(h.shared.terminals.frame_timeout);
    h.core.handle_timeout(now);
    assert!(h.core.is_gone() && h.core.is_finished());

    let mut h = harness();
    let idle = h.shared.terminals.idle_timeout;
    let now = h.tick(idle);
    h.core.handle_timeout(now);
    assert!(h.core.is_finished(), "idle without requests: closed");
}

#[test]
fn an_unreadable_frame_closes_after_the_answers_already_queued() {
    let mut h = harness();
    let r = request(h.spec, Mti::RECONCILIATION, 1, 100);
    h.send(r);
    h.send(Bytes::from_static(b"02"));
    assert!(!h.core.wants_read());
    assert!(!h.core.is_gone(), "the 12 still goes out");
    assert_eq!(h.answers().len(), 1);
    assert!(h.core.is_gone() && h.core.is_finished());
}

fn stand_in_harness() -> Harness {
    harness_with(
        "",
        "[acquirers.stand_in]\nenabled = true\nmax_amount = 5000\nmax_fraud_points = 10",
        "default = \"acquirer-a\"",
        "",
        false,
    )
}

#[test]
fn a_repeat_of_a_stand_in_approval_gets_the_same_approval() {
    let mut h = stand_in_harness();
    h.send_auth(1, 1_000);
    let first = h.one_answer();
    assert_eq!(code(&first), codes::APPROVED);
    let repeat = request(h.spec, Mti::FINANCIAL_REPEAT, 1, 1_000);
    h.send(repeat);
    let again = h.one_answer();
    assert_eq!(again.frame(), first.frame(), "the same approval, same DE38");
    assert_eq!(h.saf_entries().len(), 1, "one advice, not two");
}

#[test]
fn stand_in_is_not_given_when_the_journal_refuses_its_advice() {
    let mut h = stand_in_harness();
    // The Request record goes in; the advice's record is refused.
    h.core.journal_mut().refuse_after = Some(1);
    h.send_auth(1, 1_000);
    let a = h.one_answer();
    assert_eq!(code(&a), codes::ISSUER_UNAVAILABLE);
    assert!(h.saf_entries().is_empty(), "no advice without its record");
}

#[test]
fn with_durability_none_a_full_link_queue_journals_one_final_record() {
    let mut h = harness_full(
        "",
        "",
        "default = \"acquirer-a\"",
        "",
        "durability = \"none\"",
        true,
    );
    assert!(!h.shared.journal_sync);
    h.send_auth(1, 100);
    let f = h.core.poll_forward().expect("forwarded without waiting");
    let now = h.tick(Duration::from_millis(1));
    h.core.handle_forward_refused(now, f.token);
    assert_eq!(code(&h.one_answer()), codes::SYSTEM_MALFUNCTION);
    let finals = h
        .records()
        .into_iter()
        .filter(|r| matches!(r, Record::Response { .. } | Record::Timeout { .. }))
        .count();
    assert_eq!(finals, 1);
    assert_eq!(h.in_flight(), 0);
}

#[test]
fn a_closed_connection_gives_up_on_replies_that_never_come() {
    let mut h = harness();
    h.send_auth(8, 100);
    let f = h.forwards();
    assert_eq!(f.len(), 1);
    let now = h.tick(Duration::from_millis(1));
    h.core.handle_peer_closed(now);
    assert!(!h.core.is_finished());
    let idle = h.shared.terminals.idle_timeout;
    let now = h.tick(idle);
    h.core.handle_timeout(now);
    assert!(h.core.is_finished());
    assert_eq!(h.in_flight(), 0);
    let saf = h.saf_entries();
    assert_eq!((saf.len(), saf[0].kind), (1, SafKind::Reversal));
    // The reply, if it ever comes, finds nothing.
    h.host_answers(&f[0], codes::APPROVED);
    assert!(h.saf_entries().is_empty());
}

#[test]
fn a_request_carries_the_business_date_it_was_accepted_in() {
    let mut h = harness();
    let day = h.shared.business_day.clone();
    let before = day.current();
    h.send_auth(1, 100);
    day.cutover(
        crate::switch::settlement::Trigger::Operator,
        crate::clock::unix_now_ms(),
    )
    .expect("cutover");
    h.send_auth(2, 100);
    let dates: Vec<(u32, u32)> = h
        .records()
        .into_iter()
        .filter_map(|r| match r {
            Record::Request {
                request,
                business_date,
                ..
            } => Some((request.stan, *business_date)),
            _ => None,
        })
        .collect();
    assert_eq!(dates, vec![(1, before.days()), (2, before.next().days())]);
}

/// The same core with a network HSM (its commands as effects).
#[path = "hsm_tests.rs"]
mod hsm;

/// `request` of batch `001` (DE60) with processing code `pc`.
fn batch_request(spec: &'static Spec, mti: Mti, pc: &[u8], stan: u64, amount: u64) -> Bytes {
    let m = Message::parse(request(spec, mti, stan, amount), spec).expect("parses");
    let mut b = MessageBuilder::new(spec, mti);
    b.copy_all(&m).set(3, pc).set(60, b"001");
    b.to_bytes().expect("packs").freeze()
}

/// A 0500 of batch `001` closing with `pc`: `fields` DE74-DE97.
fn close(spec: &'static Spec, pc: &[u8], stan: u64, fields: &[(usize, &[u8])]) -> Bytes {
    let mut b = MessageBuilder::new(spec, Mti::RECONCILIATION);
    b.set(3, pc)
        .set(7, b"0612143015")
        .set_number(11, stan)
        .set(41, b"TERM0001")
        .set(42, b"MERCHANT0000001")
        .set(49, b"840")
        .set(60, b"001");
    for &(n, v) in fields {
        b.set(n, v);
    }
    b.to_bytes().expect("packs").freeze()
}

impl Harness {
    /// Sends `frame`, the host (if asked) answers 00; the terminal's answer.
    fn approved(&mut self, frame: Bytes) -> Message {
        self.send(frame);
        let f = self.forwards();
        assert_eq!(f.len(), 1, "forwarded");
        self.host_answers(&f[0], codes::APPROVED);
        self.one_answer()
    }
}

#[test]
fn a_batch_close_balances_with_what_the_terminal_was_told() {
    let mut h = harness();
    let s = h.spec;
    // A purchase of 10.00, a refund of 2.50, a purchase of 5.00 reversed,
    // a purchase declined (not counted).
    for (mti, pc, stan, amount) in [
        (Mti::FINANCIAL, b"000000", 1, 1000),
        (Mti::FINANCIAL, b"200000", 2, 250),
        (Mti::FINANCIAL, b"000000", 3, 500),
        (Mti::REVERSAL, b"000000", 3, 500),
    ] {
        let a = h.approved(batch_request(s, mti, pc, stan, amount));
        assert_eq!(code(&a), codes::APPROVED, "{mti} {stan}");
    }
    h.send(batch_request(s, Mti::FINANCIAL, b"000000", 4, 700));
    let f = h.forwards();
    h.host_answers(&f[0], *b"51");
    assert_eq!(code(&h.one_answer()), *b"51");

    // Tampered: the refund left out.
    let tampered: &[(usize, &[u8])] = &[(76, b"0000000002"), (88, b"0000000000001500")];
    h.send(close(s, b"920000", 10, tampered));
    assert!(h.forwards().is_empty(), "a close is never forwarded");
    let a = h.one_answer();
    assert_eq!(a.mti(), Mti::RECONCILIATION_RESPONSE);
    assert_eq!(code(&a), codes::OUT_OF_BALANCE);
    let got: Vec<Option<u64>> = [74, 75, 76, 77, 86, 87, 88, 89]
        .iter()
        .map(|&n| a.number(n))
        .collect();
    let want = [1, 0, 2, 1, 250, 0, 1500, 500].map(Some);
    assert_eq!(got, want, "the switch's own totals");
    assert_eq!(a.field(97), Some(&b"D0000000000000750"[..]));

    // Right (gross, with the reversal apart): 00, and the batch closes.
    let right: &[(usize, &[u8])] = &[
        (74, b"0000000001"),
        (76, b"0000000002"),
        (77, b"0000000001"),
        (86, b"0000000000000250"),
        (88, b"0000000000001500"),
        (89, b"0000000000000500"),
        (97, b"D0000000000000750"),
    ];
    h.send(close(s, b"920000", 11, right));
    assert_eq!(code(&h.one_answer()), codes::APPROVED);
    assert!(has_record(&h, |r| matches!(r,
        Record::Request { request, .. } if request.mti == 500)));
    assert_eq!(h.shared.business_day.ledger().open_batches(), 0);
    // Closed: the same totals again are out of balance with nothing.
    h.send(close(s, b"920000", 12, right));
    assert_eq!(code(&h.one_answer()), codes::OUT_OF_BALANCE);
}

#[test]
fn an_upload_then_a_close_after_upload_balances() {
    let mut h = harness();
    let s = h.spec;
    let a = h.approved(batch_request(s, Mti::FINANCIAL, b"000000", 1, 1000));
    assert_eq!(code(&a), codes::APPROVED);
    // The terminal counted a refund the switch never approved: 95.
    let claim: &[(usize, &[u8])] = &[
        (74, b"0000000001"),
        (76, b"0000000001"),
        (86, b"0000000000000300"),
        (88, b"0000000000001000"),
    ];
    h.send(close(s, b"920000", 2, claim));
    assert_eq!(code(&h.one_answer()), codes::OUT_OF_BALANCE);
    // It uploads what it has, and closes after upload: 00.
    for (stan, pc, amount) in [(3, b"000000", 1000), (4, b"200000", 300)] {
        let up = batch_request(s, Mti::new(320).expect("mti"), pc, stan, amount);
        h.send(up);
        assert!(h.forwards().is_empty(), "an upload is never forwarded");
        let a = h.one_answer();
        assert_eq!((a.mti().value(), code(&a)), (330, codes::APPROVED));
    }
    h.send(close(s, b"960000", 5, claim));
    assert_eq!(code(&h.one_answer()), codes::APPROVED);
    assert_eq!(h.shared.business_day.ledger().open_batches(), 0);
}

#[test]
fn a_bad_close_gets_30_or_12() {
    let mut h = harness();
    let s = h.spec;
    // No totals at all.
    h.send(close(s, b"920000", 1, &[]));
    assert_eq!(code(&h.one_answer()), codes::FORMAT_ERROR);
    // A net that is not the fields'.
    h.send(close(
        s,
        b"920000",
        2,
        &[(88, b"0000000000001000"), (97, b"D0000000000000001")],
    ));
    assert_eq!(code(&h.one_answer()), codes::FORMAT_ERROR);
    // No DE41: whose batch?
    let m =
        Message::parse(close(s, b"920000", 4, &[(88, b"0000000000001000")]), s).expect("parses");
    let mut b = MessageBuilder::new(s, Mti::RECONCILIATION);
    b.copy_all(&m).remove(41);
    h.send(b.to_bytes().expect("packs").freeze());
    assert_eq!(code(&h.one_answer()), codes::FORMAT_ERROR);
    // A processing code that is no close.
    h.send(close(s, b"930000", 3, &[(88, b"0000000000001000")]));
    assert_eq!(code(&h.one_answer()), codes::INVALID_TRANSACTION);
    assert!(
        !has_record(&h, |r| matches!(r, Record::Request { .. })),
        "refused closes are not journaled"
    );
}
