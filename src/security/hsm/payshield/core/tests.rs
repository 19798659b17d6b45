//! The connection core in virtual time: a `now` stepped by hand, answers
//! made with the codec.

use super::*;
use crate::security::hsm::payshield::wire::{Request, encode_request, encode_response};

const TIMEOUT: Duration = Duration::from_millis(500);

fn core() -> ClientCore<u32> {
    ClientCore::new(CoreSettings {
        header_len: 4,
        timeout: TIMEOUT,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
    })
}

fn nc(reply: u32) -> Command<u32> {
    let mut body = Vec::new();
    encode_request(b"????", &Request::Diagnostics, &mut body).expect("encodes");
    Command {
        body,
        response: *b"ND",
        name: "diagnostics",
        expect: Expect::Diagnostics,
        reply,
    }
}

fn nd(header: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let kcv = crate::security::Kcv::parse("A1B2C3").expect("kcv");
    let r = Response::Diagnostics {
        lmk_kcv: kcv,
        firmware: "test".into(),
    };
    encode_response(header, *b"NC", Ok(&r), &mut body);
    body
}

/// The frames written, as (header, body) pairs; consumes them.
fn sent(c: &mut ClientCore<u32>) -> Vec<Vec<u8>> {
    let bytes = c.poll_transmit().to_vec();
    c.advance(bytes.len());
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        out.push(bytes[at + 2..at + 2 + len][..4].to_vec());
        at += 2 + len;
    }
    out
}

fn replies(c: &mut ClientCore<u32>) -> Vec<(u32, Result<HsmReply, HsmError>)> {
    std::iter::from_fn(|| c.poll_reply()).collect()
}

fn up(c: &mut ClientCore<u32>, now: Instant) {
    assert!(c.poll_connect());
    c.handle_connected(now);
    assert_eq!(c.poll_event(), Some(Event::Up));
}

#[test]
fn commands_wait_for_the_connect_then_answers_are_matched_by_header() {
    let t0 = Instant::now();
    let mut c = core();
    assert!(c.poll_connect());
    assert!(!c.poll_connect(), "one connect at a time");
    c.handle_command(t0, nc(1));
    c.handle_command(t0, nc(2));
    assert!(
        c.poll_transmit().is_empty(),
        "nothing written before the connect"
    );
    c.handle_connected(t0);
    let headers = sent(&mut c);
    assert_eq!(headers, [b"0000".to_vec(), b"0001".to_vec()]);
    assert_eq!(c.in_flight(), 2);
    // Answered out of order: each to its own command.
    c.handle_frame(t0, &nd(b"0001"));
    c.handle_frame(t0, &nd(b"0000"));
    let r = replies(&mut c);
    assert_eq!(r.iter().map(|(to, _)| *to).collect::<Vec<_>>(), [2, 1]);
    assert!(
        r.iter()
            .all(|(_, a)| matches!(a, Ok(HsmReply::Diagnostics { .. })))
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_command_times_out_at_its_deadline_and_its_late_answer_is_dropped() {
    let t0 = Instant::now();
    let mut c = core();
    up(&mut c, t0);
    c.handle_command(t0, nc(7));
    let h = sent(&mut c).remove(0);
    assert_eq!(c.poll_timeout(), Some(t0 + TIMEOUT));
    c.handle_timeout(t0 + TIMEOUT - Duration::from_millis(1));
    assert!(replies(&mut c).is_empty());
    c.handle_timeout(t0 + TIMEOUT);
    assert_eq!(replies(&mut c), [(7, Err(HsmError::Timeout(TIMEOUT)))]);
    // The next command gets the next header, not the timed-out one's.
    c.handle_command(t0 + TIMEOUT, nc(8));
    assert_eq!(sent(&mut c), [b"0001".to_vec()]);
    c.handle_frame(t0 + TIMEOUT, &nd(&h));
    assert_eq!(c.poll_event(), Some(Event::Late));
    assert!(replies(&mut c).is_empty());
    c.handle_frame(t0 + TIMEOUT, &nd(b"0001"));
    assert!(matches!(&replies(&mut c)[..], [(8, Ok(_))]));
}

#[test]
fn a_dropped_connection_fails_what_is_in_flight_and_reconnects_after_a_backoff() {
    let t0 = Instant::now();
    let mut c = core();
    up(&mut c, t0);
    c.handle_command(t0, nc(1));
    let _ = sent(&mut c);
    c.handle_closed(t0, "the HSM closed the connection");
    assert_eq!(
        replies(&mut c),
        [(
            1,
            Err(HsmError::Unavailable(
                "the HSM closed the connection".into()
            ))
        )]
    );
    assert!(matches!(
        c.poll_event(),
        Some(Event::Down { failed: 1, .. })
    ));
    // Down: a command fails at once; the connect comes after the backoff.
    c.handle_command(t0, nc(2));
    assert!(matches!(
        &replies(&mut c)[..],
        [(2, Err(HsmError::Unavailable(_)))]
    ));
    assert!(!c.poll_connect());
    let retry = c.poll_timeout().expect("a retry");
    assert_eq!(retry, t0 + Duration::from_millis(50));
    c.handle_timeout(retry);
    // Failing connects double the wait, up to the maximum.
    let mut now = retry;
    for want in [50, 100, 200, 400, 400] {
        assert!(c.poll_connect());
        c.handle_connect_failed(now, "refused");
        assert_eq!(
            c.poll_event(),
            Some(Event::ConnectFailed {
                reason: "refused".into(),
                retry_in: Duration::from_millis(want)
            })
        );
        now = c.poll_timeout().expect("a retry");
        c.handle_timeout(now);
    }
    // A command taken while the connect is due waits for it.
    c.handle_command(now, nc(3));
    assert!(c.poll_connect());
    c.handle_connected(now);
    assert_eq!(sent(&mut c).len(), 1);
}

#[test]
fn commands_waiting_on_a_failed_connect_fail_and_those_waiting_too_long_time_out() {
    let t0 = Instant::now();
    let mut c = core();
    assert!(c.poll_connect());
    c.handle_command(t0, nc(1));
    c.handle_connect_failed(t0, "refused");
    assert_eq!(
        replies(&mut c),
        [(1, Err(HsmError::Unavailable("refused".into())))]
    );
    let at = c.poll_timeout().expect("retry");
    c.handle_timeout(at);
    assert!(c.poll_connect());
    c.handle_command(at, nc(2));
    c.handle_timeout(at + TIMEOUT);
    assert_eq!(replies(&mut c), [(2, Err(HsmError::Timeout(TIMEOUT)))]);
}

#[test]
fn wrong_and_unreadable_answers() {
    let t0 = Instant::now();
    let mut c = core();
    up(&mut c, t0);
    c.handle_command(t0, nc(1));
    let _ = sent(&mut c);
    // The right header, another command's response code.
    c.handle_frame(t0, b"0000M700AABBCCDD");
    assert!(matches!(
        &replies(&mut c)[..],
        [(1, Err(HsmError::Protocol(_)))]
    ));
    c.handle_frame(t0, b"00");
    assert_eq!(c.poll_event(), Some(Event::Unreadable));
    c.handle_command(t0, nc(2));
    let _ = sent(&mut c);
    c.handle_frame(t0, b"0001ND15");
    assert_eq!(
        replies(&mut c),
        [(
            2,
            Err(HsmError::Refused {
                code: "15".into(),
                meaning: "invalid input data".into()
            })
        )]
    );
    c.handle_stop();
    assert!(replies(&mut c).is_empty());
}

#[test]
fn error_codes_become_the_soft_hsms_errors() {
    assert_eq!(
        map_error(&Expect::Verify, ErrorCode::VERIFICATION_FAILURE),
        HsmError::MacMismatch
    );
    for code in [b"20", b"22", b"23", b"24"] {
        assert!(matches!(
            map_error(&Expect::Pin(PinFormat::Iso0), ErrorCode(*code)),
            HsmError::BadPinBlock(_)
        ));
    }
    assert!(matches!(
        map_error(&Expect::Mac(8), ErrorCode::VERIFICATION_FAILURE),
        HsmError::Refused { .. }
    ));
    // A 6-byte MAC checked over the whole one.
    let full: MacValue = [1u8, 2, 3, 4, 5, 6, 7, 8].into_iter().collect();
    let want: MacValue = [1u8, 2, 3, 4, 5, 6].into_iter().collect();
    let mut bad = want.clone();
    bad[5] ^= 1;
    assert_eq!(
        finish(Expect::VerifyLocal(want), Ok(Response::Mac(full.clone()))),
        Ok(HsmReply::Verified)
    );
    assert_eq!(
        finish(Expect::VerifyLocal(bad), Ok(Response::Mac(full))),
        Err(HsmError::MacMismatch)
    );
}

#[test]
fn headers_round_trip_and_fill_their_width() {
    let mut h = [0u8; 4];
    for n in [0u64, 1, 35, 36, 1295, 36u64.pow(4) - 1] {
        write_header(n, &mut h);
        assert_eq!(read_header(&h), Some(n));
    }
    write_header(0, &mut h);
    assert_eq!(&h, b"0000");
    assert_eq!(read_header(b"00a0"), None);
    assert_eq!(read_header(b"00-0"), None);
    assert_eq!(header_space(4), 36u64.pow(4));
    assert_eq!(header_space(40), u64::MAX);
}
