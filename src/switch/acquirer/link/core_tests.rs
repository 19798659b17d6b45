//! Unit tests of the link core in virtual time: no socket, no runtime, no
//! sleep. (Kept out of `core.rs` so that file never reads a clock, not
//! even to start a test's virtual time.)

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use super::core::*;
use super::{LinkSettings, MAX_PENDING_WRITE};
use crate::clock::Now;
use crate::frame::LengthHeader;
use crate::iso8583::specs;
use crate::iso8583::{Message, MessageBuilder, Mti};
use crate::switch::acquirer::matcher::MatchKey;
use crate::switch::acquirer::{AcquirerConfig, EchoSpans, Failure, Outcome};

const TID: &[u8] = b"TERM0001";
const PAN: &[u8] = b"4761739001010010";

fn settings() -> LinkSettings {
    let config = crate::switch::config::Config::parse(
        r#"
test_setup = true
[[acquirers]]
name = "acq"
links = ["127.0.0.1:9"]
request_timeout_ms = 1000
connect_timeout_ms = 500
backoff_initial_ms = 100
backoff_max_ms = 1600
echo_interval_ms = 5000
echo_timeout_ms = 500
max_missed_echoes = 2
max_in_flight_per_link = 8
"#,
    )
    .expect("the test's config is valid");
    LinkSettings {
        seed: 7,
        ..LinkSettings::from_acquirer(&config.acquirers[0], 0)
    }
}

/// `settings()` with its acquirer's config changed by `change`.
fn settings_with(change: impl FnOnce(&mut AcquirerConfig)) -> LinkSettings {
    let mut s = settings();
    change(&mut s.acquirer);
    s
}

fn t0() -> Now {
    Now {
        at: Instant::now(),
        unix_ms: 1_795_592_096_000,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

type Core = LinkCore<u32>;

/// The messages the core wants written, taken out of its buffer.
fn sent(core: &mut Core) -> Vec<Message> {
    let mut out = Vec::new();
    let Some(buf) = core.poll_transmit() else {
        return out;
    };
    let mut buf = Bytes::copy_from_slice(buf);
    let n = buf.len();
    while !buf.is_empty() {
        let len = LengthHeader::Binary2.read(&buf[..2]).expect("header");
        let frame = buf.slice(2..2 + len);
        buf.advance(2 + len);
        out.push(Message::parse(frame, specs::iso87ascii()).expect("parses"));
    }
    core.handle_transmitted(n);
    out
}

fn replies(core: &mut Core) -> Vec<(u32, Result<[u8; 2], Failure>)> {
    std::iter::from_fn(|| core.poll_reply())
        .map(|(r, o)| match o {
            Outcome::Answered { response_code, .. } => (r, Ok(response_code)),
            Outcome::Failed(f) => (r, Err(f)),
        })
        .collect()
}

fn events(core: &mut Core) -> Vec<LinkEvent> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

fn answer_to(req: &Message, code: &[u8; 2]) -> Bytes {
    let mut b =
        MessageBuilder::response_to(req, &[2, 3, 4, 7, 11, 37, 41, 49, 70]).expect("a request");
    b.set(39, code);
    b.to_bytes().expect("packs").freeze()
}

fn request(stan: u32, amount: u64) -> (MatchKey, Bytes) {
    let rrn = format!("{:012}", 500_000_000_000u64 + u64::from(stan)).into_bytes();
    let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::FINANCIAL);
    b.set(2, PAN)
        .set(3, b"000000")
        .set_number(4, amount)
        .set(7, b"1125101010")
        .set_number(11, u64::from(stan))
        .set(37, &rrn)
        .set(41, TID)
        .set(49, b"840");
    let body = b.to_bytes().expect("packs").freeze();
    (MatchKey::new(Mti::FINANCIAL, TID, stan).unwrap(), body)
}

/// A core connected and signed on at `t0`.
fn up_core(s: LinkSettings) -> (Core, Now) {
    let now = t0();
    let mut c = Core::new(s, now);
    assert!(c.poll_connect(now));
    c.handle_connected(now);
    let signon = sent(&mut c);
    assert_eq!(signon.len(), 1);
    assert_eq!(signon[0].network_code(), Some(1));
    c.handle_frame(now, answer_to(&signon[0], b"00"));
    assert!(c.is_up());
    assert_eq!(events(&mut c), [LinkEvent::Up { attempts: 1 }]);
    (c, now)
}

/// Forwards `request(stan, amount)` with reply address `stan`; the
/// message as the host sees it.
fn forward(c: &mut Core, now: Now, stan: u32, amount: u64) -> Message {
    let (key, body) = request(stan, amount);
    c.handle_forward(now, key, body, EchoSpans::UNKNOWN, stan);
    sent(c).pop().expect("forwarded")
}

#[test]
fn sign_on_answered_00_brings_the_link_up_with_de7_from_now() {
    let now = t0();
    let mut c = Core::new(settings(), now);
    assert_eq!(c.poll_timeout(), Some(now.at), "first connect at once");
    assert!(c.poll_connect(now));
    assert!(!c.poll_connect(now), "one connect at a time");
    c.handle_connected(now);
    assert!(c.wants_socket() && !c.is_up());
    let m = sent(&mut c);
    assert_eq!(m[0].mti(), Mti::NETWORK);
    assert_eq!(m[0].field(7), Some(&b"1125073456"[..]));
    // An 0810 with another STAN does not sign on.
    let mut other = MessageBuilder::response_to(&m[0], &[7, 70]).unwrap();
    other.set_number(11, 999).set(39, b"00");
    c.handle_frame(now, other.to_bytes().unwrap().freeze());
    assert!(!c.is_up());
    c.handle_frame(now, answer_to(&m[0], b"00"));
    assert!(c.is_up());
    assert_eq!(c.state(), LinkState::Up);
}

#[test]
fn sign_on_refused_backs_off_and_connects_again() {
    let now = t0();
    let mut c = Core::new(settings(), now);
    assert!(c.poll_connect(now));
    c.handle_connected(now);
    let m = sent(&mut c);
    c.handle_frame(now, answer_to(&m[0], b"05"));
    assert!(!c.is_up() && !c.wants_socket());
    let ev = events(&mut c);
    let LinkEvent::ConnectFailed {
        reason, retry_in, ..
    } = &ev[0]
    else {
        panic!("{ev:?}")
    };
    assert!(reason.contains("refused with 05"), "{reason}");
    assert!(*retry_in >= ms(50) && *retry_in <= ms(100), "{retry_in:?}");
    let again = c.poll_timeout().expect("a retry is scheduled");
    assert!(!c.poll_connect(now));
    assert!(c.poll_connect(Now {
        at: again,
        ..now.plus(*retry_in)
    }));
}

#[test]
fn sign_on_not_answered_by_echo_timeout_fails() {
    let now = t0();
    let mut c = Core::new(settings(), now);
    c.poll_connect(now);
    c.handle_connected(now);
    sent(&mut c);
    assert_eq!(c.poll_timeout(), Some(now.at + ms(500)));
    c.handle_timeout(now.plus(ms(499)));
    assert!(c.wants_socket());
    c.handle_timeout(now.plus(ms(500)));
    assert!(!c.wants_socket() && !c.is_up());
    assert!(matches!(&events(&mut c)[0],
        LinkEvent::ConnectFailed { reason, .. } if reason.contains("0800/001")));
}

#[test]
fn without_sign_on_a_connection_is_up() {
    let now = t0();
    let mut c = Core::new(settings_with(|a| a.sign_on = false), now);
    c.poll_connect(now);
    c.handle_connected(now);
    assert!(c.is_up());
    assert!(c.poll_transmit().is_none());
}

#[test]
fn two_missed_echoes_drop_the_link() {
    let (mut c, t) = up_core(settings());
    assert_eq!(c.poll_timeout(), Some(t.at + ms(5000)), "echo when idle");
    let t1 = t.plus(ms(5000));
    c.handle_timeout(t1);
    let echo = sent(&mut c);
    assert_eq!(echo[0].network_code(), Some(301));
    c.handle_timeout(t1.plus(ms(500)));
    assert_eq!(events(&mut c), [LinkEvent::MissedEcho { missed: 1 }]);
    assert!(c.is_up(), "one miss is tolerated");
    let t2 = t1.plus(ms(5500));
    c.handle_timeout(t2);
    assert_eq!(sent(&mut c)[0].network_code(), Some(301));
    c.handle_timeout(t2.plus(ms(500)));
    assert!(!c.is_up());
    let ev = events(&mut c);
    assert_eq!(ev[0], LinkEvent::MissedEcho { missed: 2 });
    assert!(matches!(&ev[1], LinkEvent::Down { reason, .. } if reason.contains("2 echo")));
}

#[test]
fn an_answered_echo_resets_the_missed_count() {
    let (mut c, t) = up_core(settings());
    let t1 = t.plus(ms(5000));
    c.handle_timeout(t1);
    sent(&mut c);
    c.handle_timeout(t1.plus(ms(500)));
    assert_eq!(events(&mut c), [LinkEvent::MissedEcho { missed: 1 }]);
    let t2 = t1.plus(ms(5500));
    c.handle_timeout(t2);
    let echo = sent(&mut c);
    assert_eq!(c.last_echo_ms(), None, "no echo answered yet");
    c.handle_frame(t2.plus(ms(10)), answer_to(&echo[0], b"00"));
    assert_eq!(
        c.last_echo_ms(),
        Some(t2.plus(ms(10)).unix_ms),
        "the dashboard's last echo"
    );
    let t3 = t2.plus(ms(5010));
    c.handle_timeout(t3);
    sent(&mut c);
    c.handle_timeout(t3.plus(ms(500)));
    assert_eq!(
        events(&mut c),
        [LinkEvent::MissedEcho { missed: 1 }],
        "count started again"
    );
    assert!(c.is_up());
}

#[test]
fn backoff_doubles_within_bounds_with_jitter_and_replays_from_its_seed() {
    let delays = |seed| {
        let mut b = Backoff::new(ms(100), ms(1600), seed);
        (0..12).map(|_| b.next_delay()).collect::<Vec<_>>()
    };
    let a = delays(1);
    let mut base = ms(100);
    for d in &a {
        assert!(*d >= base / 2 && *d <= base, "{d:?} for base {base:?}");
        base = (base * 2).min(ms(1600));
    }
    assert!(a[8..].iter().all(|d| *d >= ms(800)), "reaches the cap");
    assert_eq!(a, delays(1), "same seed, same delays");
    assert_ne!(a, delays(2), "another seed, other delays");
}

#[test]
fn backoff_grows_across_failures_and_resets_after_sign_on() {
    let mut now = t0();
    let mut c = Core::new(settings(), now);
    let mut retries = Vec::new();
    for _ in 0..5 {
        assert!(c.poll_connect(now));
        c.handle_connect_failed(now, "refused");
        let Some(LinkEvent::ConnectFailed { retry_in, .. }) = c.poll_event() else {
            panic!("no event")
        };
        retries.push(retry_in);
        now = now.plus(retry_in);
    }
    assert!(retries[4] >= ms(800), "{retries:?}");
    assert!(c.poll_connect(now));
    c.handle_connected(now);
    let m = sent(&mut c);
    c.handle_frame(now, answer_to(&m[0], b"00"));
    assert_eq!(events(&mut c), [LinkEvent::Up { attempts: 6 }]);
    c.handle_closed(now, "host closed the connection");
    let Some(LinkEvent::Down { retry_in, .. }) = c.poll_event() else {
        panic!("no down event")
    };
    assert!(
        retry_in <= ms(100),
        "reset to the initial delay: {retry_in:?}"
    );
}

#[test]
fn forwards_while_down_are_answered_link_down() {
    let now = t0();
    let mut c = Core::new(settings(), now);
    let (key, body) = request(1, 100);
    c.handle_forward(now, key, body.clone(), EchoSpans::UNKNOWN, 1);
    c.poll_connect(now);
    c.handle_connected(now);
    c.handle_forward(now, key, body, EchoSpans::UNKNOWN, 2);
    assert_eq!(
        replies(&mut c),
        [(1, Err(Failure::LinkDown)), (2, Err(Failure::LinkDown))]
    );
    assert_eq!(sent(&mut c).len(), 1, "only the sign-on went out");
}

#[test]
fn requests_in_flight_when_the_connection_drops_are_lost() {
    let (mut c, t) = up_core(settings());
    forward(&mut c, t, 1, 100);
    forward(&mut c, t, 2, 200);
    c.handle_closed(t, "read: reset");
    let mut r = replies(&mut c);
    r.sort_by_key(|(to, _)| *to);
    assert_eq!(
        r,
        [(1, Err(Failure::LinkLost)), (2, Err(Failure::LinkLost))]
    );
    assert_eq!(c.in_flight(), 0);
    assert!(
        matches!(&events(&mut c)[0], LinkEvent::Down { reason, .. } if reason == "read: reset")
    );
}

#[test]
fn answers_are_delivered_and_timeouts_come_in_deadline_order() {
    let (mut c, t) = up_core(settings());
    let m1 = forward(&mut c, t, 1, 100);
    forward(&mut c, t.plus(ms(10)), 2, 200);
    forward(&mut c, t.plus(ms(20)), 3, 300);
    c.handle_frame(t.plus(ms(30)), answer_to(&m1, b"00"));
    assert_eq!(replies(&mut c), [(1, Ok(*b"00"))]);
    assert_eq!(c.poll_timeout(), Some(t.at + ms(1010)));
    c.handle_timeout(t.plus(ms(1020)));
    assert_eq!(
        replies(&mut c),
        [(2, Err(Failure::Timeout)), (3, Err(Failure::Timeout))]
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_late_answer_after_timeout_is_dropped() {
    let (mut c, t) = up_core(settings());
    let m = forward(&mut c, t, 1, 100);
    c.handle_timeout(t.plus(ms(1000)));
    assert_eq!(replies(&mut c), [(1, Err(Failure::Timeout))]);
    c.handle_frame(t.plus(ms(1100)), answer_to(&m, b"00"));
    assert!(replies(&mut c).is_empty());
    assert!(matches!(
        events(&mut c)[..],
        [LinkEvent::Late { stan: 1, .. }]
    ));
}

#[test]
fn duplicate_keys_and_a_full_table_are_refused() {
    let (mut c, t) = up_core(settings_with(|a| a.max_in_flight_per_link = 2));
    forward(&mut c, t, 1, 100);
    let (key, body) = request(1, 100);
    c.handle_forward(t, key, body, EchoSpans::UNKNOWN, 91);
    forward(&mut c, t, 2, 100);
    let (key, body) = request(3, 100);
    c.handle_forward(t, key, body, EchoSpans::UNKNOWN, 93);
    assert_eq!(
        replies(&mut c),
        [(91, Err(Failure::Duplicate)), (93, Err(Failure::LinkBusy))]
    );
    assert!(sent(&mut c).is_empty(), "refused requests are not written");
}

#[test]
fn a_host_cutover_is_answered_00_and_an_event_only_when_followed() {
    for follow in [false, true] {
        let (mut c, t) = up_core(settings_with(|a| a.cutover_on_host_0800 = follow));
        let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::NETWORK);
        b.set(7, b"1125101010")
            .set_number(11, 4243)
            .set_number(70, 201);
        c.handle_frame(t, b.to_bytes().unwrap().freeze());
        let out = sent(&mut c);
        assert_eq!(out[0].response_code(), Some(*b"00"));
        assert_eq!(out[0].network_code(), Some(201));
        let cutovers = events(&mut c)
            .into_iter()
            .filter(|e| matches!(e, LinkEvent::Cutover))
            .count();
        assert_eq!(cutovers, usize::from(follow));
    }
}

#[test]
fn an_answers_de15_reaches_the_requester_when_it_is_a_date() {
    for (de15, want) in [(Some(&b"1202"[..]), 1202), (Some(b"1399"), 0), (None, 0)] {
        let (mut c, t) = up_core(settings());
        let req = forward(&mut c, t, 7, 100);
        let mut b =
            MessageBuilder::response_to(&req, &[2, 3, 4, 7, 11, 37, 41, 49]).expect("a request");
        if let Some(d) = de15 {
            b.set(15, d);
        }
        b.set(39, b"00");
        c.handle_frame(t, b.to_bytes().expect("packs").freeze());
        match c.poll_reply() {
            Some((
                7,
                Outcome::Answered {
                    settlement_date, ..
                },
            )) => assert_eq!(settlement_date, want, "{de15:?}"),
            _ => panic!("an answer"),
        }
    }
}

#[test]
fn a_host_0800_is_answered_0810() {
    let (mut c, t) = up_core(settings());
    let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::NETWORK);
    b.set(7, b"1125101010")
        .set_number(11, 4242)
        .set_number(70, 301);
    c.handle_frame(t, b.to_bytes().unwrap().freeze());
    let out = sent(&mut c);
    assert_eq!(out[0].mti(), Mti::NETWORK_RESPONSE);
    assert_eq!(out[0].stan(), Some(4242));
    assert_eq!(out[0].response_code(), Some(*b"00"));
}

#[test]
fn a_mismatched_answer_is_discarded_and_the_right_one_delivered_later() {
    let (mut c, t) = up_core(settings());
    let host_sees_1 = forward(&mut c, t, 1, 100);
    let host_sees_2 = forward(&mut c, t, 2, 200);
    // The host answers request 1 with request 2's STAN (wrong-stan).
    let mut b = MessageBuilder::response_to(&host_sees_1, &[2, 3, 4, 7, 37, 41, 49]).unwrap();
    b.set_number(11, 2).set(39, b"00");
    c.handle_frame(t.plus(ms(5)), b.to_bytes().unwrap().freeze());
    assert!(replies(&mut c).is_empty(), "not delivered to request 2");
    let ev = events(&mut c);
    let [
        LinkEvent::Mismatch {
            stan, fields, pan, ..
        },
    ] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(*stan, 2);
    assert_eq!(fields.to_string(), "4,37");
    assert_eq!(
        pan.map(|p| p.to_string()).as_deref(),
        Some("476173******0010")
    );
    assert_eq!(c.in_flight(), 2, "request 2 still waits");
    c.handle_frame(t.plus(ms(6)), answer_to(&host_sees_2, b"05"));
    assert_eq!(replies(&mut c), [(2, Ok(*b"05"))]);
}

#[test]
fn spans_from_the_terminal_check_the_answer_without_a_second_parse() {
    let (mut c, t) = up_core(settings());
    let (key, body) = request(1, 100);
    let parsed = Message::parse(body.clone(), specs::iso87ascii()).unwrap();
    let echo = EchoSpans::of(&parsed, settings().answer_must_match);
    assert!(echo.is_known());
    c.handle_forward(t, key, body, echo, 1);
    let host_sees = sent(&mut c).pop().expect("forwarded");
    // Same key, another amount: discarded, the request waits on.
    let mut b = MessageBuilder::response_to(&host_sees, &[2, 3, 7, 11, 37, 41, 49]).unwrap();
    b.set_number(4, 999).set(39, b"00");
    c.handle_frame(t.plus(ms(5)), b.to_bytes().unwrap().freeze());
    assert!(replies(&mut c).is_empty());
    assert!(
        matches!(&events(&mut c)[..], [LinkEvent::Mismatch { fields, .. }] if fields.to_string() == "4")
    );
    c.handle_frame(t.plus(ms(6)), answer_to(&host_sees, b"00"));
    assert_eq!(replies(&mut c), [(1, Ok(*b"00"))]);
}

#[test]
fn a_mismatched_answer_leaves_its_request_to_time_out() {
    let (mut c, t) = up_core(settings());
    forward(&mut c, t, 1, 100);
    let (_, other) = request(1, 999);
    let other = Message::parse(other, specs::iso87ascii()).unwrap();
    c.handle_frame(t, answer_to(&other, b"00"));
    assert!(replies(&mut c).is_empty());
    c.handle_timeout(t.plus(ms(1000)));
    assert_eq!(replies(&mut c), [(1, Err(Failure::Timeout))]);
}

#[test]
fn an_empty_answer_must_match_accepts_any_answer_with_the_key() {
    let (mut c, t) = up_core(LinkSettings {
        answer_must_match: FieldSet::EMPTY,
        ..settings()
    });
    forward(&mut c, t, 1, 100);
    let (_, other) = request(1, 999);
    let other = Message::parse(other, specs::iso87ascii()).unwrap();
    c.handle_frame(t, answer_to(&other, b"00"));
    assert_eq!(replies(&mut c), [(1, Ok(*b"00"))]);
}

#[test]
fn shutdown_signs_off_and_answers_what_is_in_flight_lost() {
    let (mut c, t) = up_core(settings());
    forward(&mut c, t, 1, 100);
    c.handle_shutdown(t);
    assert!(!c.is_up());
    assert_eq!(replies(&mut c), [(1, Err(Failure::LinkLost))]);
    let off = sent(&mut c);
    assert_eq!(off[0].network_code(), Some(2));
    let (key, body) = request(2, 100);
    c.handle_forward(t, key, body, EchoSpans::UNKNOWN, 2);
    assert_eq!(replies(&mut c), [(2, Err(Failure::LinkDown))]);
    c.handle_frame(t.plus(ms(5)), answer_to(&off[0], b"00"));
    assert!(c.is_closed() && !c.wants_socket());
    assert_eq!(events(&mut c), [LinkEvent::SignedOff]);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn an_unanswered_sign_off_closes_by_the_echo_timeout() {
    let (mut c, t) = up_core(settings());
    c.handle_shutdown(t);
    sent(&mut c);
    c.handle_timeout(t.plus(ms(500)));
    assert!(c.is_closed());
    assert!(matches!(
        &events(&mut c)[..],
        [LinkEvent::SignOffUnconfirmed { .. }]
    ));
}

#[test]
fn a_full_write_buffer_stops_taking_forwards() {
    let (mut c, t) = up_core(settings_with(|a| a.max_in_flight_per_link = 100_000));
    let mut stan = 0;
    while c.accepts_forwards() {
        stan += 1;
        let (key, body) = request(stan, 100);
        c.handle_forward(t, key, body, EchoSpans::UNKNOWN, stan);
    }
    assert!(c.poll_transmit().unwrap().len() >= MAX_PENDING_WRITE);
    c.handle_transmitted(c.poll_transmit().unwrap().len());
    assert!(c.accepts_forwards());
}

#[test]
fn field_sets_list_their_numbers() {
    let s = FieldSet::of(&[128, 2, 41, 0, 200]);
    assert_eq!(s.iter().collect::<Vec<_>>(), [2, 41, 128]);
    assert!(s.contains(128) && !s.contains(0) && !s.contains(3));
    assert_eq!(format!("{s}"), "2,41,128");
}

/// The same core with a network HSM (its commands as effects).
#[path = "core_hsm_tests.rs"]
mod hsm;
