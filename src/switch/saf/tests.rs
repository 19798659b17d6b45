//! The SAF core in virtual time (no runtime, no sleeps), and the handle's
//! bound with the driver running.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::clock::Now;
use crate::iso8583::{Message, Mti, samples, specs};

const RETRY: Duration = Duration::from_secs(5);
const EXPIRY: Duration = Duration::from_secs(3600);
const T0_MS: u64 = 1_800_000_000_000;

fn spec() -> &'static Spec {
    specs::iso87ascii()
}

fn config(max_entries: usize) -> SafConfig {
    SafConfig {
        max_attempts: 4,
        retry_interval: RETRY,
        expiry: EXPIRY,
        max_entries,
    }
}

fn t0() -> Now {
    Now {
        at: Instant::now(),
        unix_ms: T0_MS,
    }
}

/// The 0420 of a typical 0200 with this STAN, queued at `queued_at_ms`.
fn reversal(txn: u64, stan: u32, queued_at_ms: u64) -> SafEntry {
    let request = samples::typical_0200_for(spec(), samples::TYPICAL_PAN, stan.into())
        .expect("sample packs")
        .freeze();
    let request = Message::parse(request, spec()).expect("sample parses");
    let (body, key) =
        reversal_of(&request, spec(), crate::codes::ISSUER_UNAVAILABLE).expect("reversal builds");
    SafEntry::new(txn, SafKind::Reversal, body, key, queued_at_ms)
}

/// MTI and STAN of a message the core handed out.
fn read(body: Bytes) -> (Mti, u32) {
    let m = Message::parse(body, spec()).expect("sent message parses");
    (m.mti(), m.stan().expect("has a STAN"))
}

fn events(core: &mut SafCore) -> Vec<SafEvent> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

fn sent(txn: u64, attempt: u32) -> SafEvent {
    SafEvent::Sent {
        txn,
        kind: SafKind::Reversal,
        attempt,
    }
}

fn acked(txn: u64, code: [u8; 2]) -> SafEvent {
    SafEvent::Acked {
        txn,
        kind: SafKind::Reversal,
        response_code: code,
    }
}

/// A core with every link up.
fn up_core(max_entries: usize) -> SafCore {
    let mut core = SafCore::new(config(max_entries), spec());
    core.handle_links_up(t0(), true);
    core
}

#[test]
fn a_retry_goes_after_the_interval_as_a_repeat_and_is_journaled_as_attempt_2() {
    let now = t0();
    let mut core = up_core(8);
    core.handle_entry(now, reversal(1, 11, T0_MS)).unwrap();
    let (_, body) = core.poll_send().expect("first send");
    assert_eq!(read(body), (Mti::REVERSAL_ADVICE, 11));
    assert_eq!(events(&mut core), [sent(1, 1)]);
    assert_eq!(core.poll_timeout(), None, "waiting for the link's answer");

    core.handle_answer(now, Answer::NotAnswered);
    assert_eq!(core.poll_timeout(), Some(now.at + RETRY));
    assert!(core.poll_send().is_none());

    core.handle_timeout(now.plus(RETRY - Duration::from_millis(1)));
    assert!(core.poll_send().is_none(), "not before the interval");
    assert!(events(&mut core).is_empty());

    core.handle_timeout(now.plus(RETRY));
    let (_, body) = core.poll_send().expect("retry");
    assert_eq!(read(body), (Mti::REVERSAL_ADVICE_REPEAT, 11));
    assert_eq!(events(&mut core), [sent(1, 2)]);
    assert_eq!(core.depth(), 1);
}

#[test]
fn an_acknowledgement_pops_the_head_and_the_next_goes_in_fifo_order() {
    let now = t0();
    let mut core = up_core(8);
    for (txn, stan) in [(1, 11), (2, 12), (3, 13)] {
        core.handle_entry(now, reversal(txn, stan, T0_MS)).unwrap();
    }
    assert_eq!(core.depth(), 3);
    for (left, stan) in [(2, 11u32), (1, 12), (0, 13)] {
        let (key, body) = core.poll_send().expect("head goes");
        assert_eq!(key.stan(), stan);
        assert_eq!(read(body), (Mti::REVERSAL_ADVICE, stan));
        assert!(core.poll_send().is_none(), "one send at a time");
        core.handle_answer(now, Answer::Answered(*b"00"));
        assert_eq!(core.depth(), left);
    }
    assert_eq!(
        events(&mut core),
        [
            sent(1, 1),
            acked(1, *b"00"),
            sent(2, 1),
            acked(2, *b"00"),
            sent(3, 1),
            acked(3, *b"00"),
        ]
    );
    assert!(core.poll_send().is_none());
    assert_eq!(core.poll_timeout(), None);
}

#[test]
fn codes_91_and_96_retry_and_any_other_answer_acknowledges() {
    let mut now = t0();
    let mut core = up_core(8);
    core.handle_entry(now, reversal(1, 11, T0_MS)).unwrap();
    for (attempt, code) in [
        (1, crate::codes::ISSUER_UNAVAILABLE),
        (2, crate::codes::SYSTEM_MALFUNCTION),
    ] {
        assert!(core.poll_send().is_some());
        assert_eq!(events(&mut core), [sent(1, attempt)]);
        core.handle_answer(now, Answer::Answered(code));
        assert!(
            events(&mut core).is_empty(),
            "{code:?} is not an acknowledgement"
        );
        assert_eq!(core.depth(), 1);
        now = now.plus(RETRY);
        core.handle_timeout(now);
    }
    let (_, body) = core.poll_send().expect("third send");
    assert_eq!(read(body).0, Mti::REVERSAL_ADVICE_REPEAT);
    // A decline still means the host has the reversal.
    core.handle_answer(now, Answer::Answered(*b"05"));
    assert_eq!(events(&mut core), [sent(1, 3), acked(1, *b"05")]);
    assert_eq!(core.depth(), 0);
}

#[test]
fn no_answer_retries() {
    let now = t0();
    let mut core = up_core(8);
    core.handle_entry(now, reversal(1, 11, T0_MS)).unwrap();
    assert!(core.poll_send().is_some());
    core.handle_answer(now, Answer::NotAnswered);
    core.handle_timeout(now.plus(RETRY));
    let (_, body) = core.poll_send().expect("sent again");
    assert_eq!(read(body).0, Mti::REVERSAL_ADVICE_REPEAT);
    assert_eq!(events(&mut core), [sent(1, 1), sent(1, 2)]);
}

#[test]
fn an_entry_older_than_expiry_is_given_up_and_journaled_as_expired() {
    let now = t0();
    let mut core = up_core(8);
    core.handle_entry(now, reversal(1, 11, T0_MS)).unwrap();
    core.handle_entry(now, reversal(2, 12, T0_MS + 1)).unwrap();
    assert!(core.poll_send().is_some());
    core.handle_answer(now, Answer::NotAnswered);
    // The retry comes after the entry has passed its expiry.
    let late = now.plus(EXPIRY + Duration::from_millis(1));
    core.handle_timeout(late);
    let (key, _) = core
        .poll_send()
        .expect("the next entry, still young enough");
    assert_eq!(key.stan(), 12);
    assert_eq!(
        events(&mut core),
        [
            sent(1, 1),
            SafEvent::Expired {
                txn: 1,
                kind: SafKind::Reversal,
                attempts: 1,
                reason: GiveUp::Age,
            },
            sent(2, 1),
        ]
    );
}

#[test]
fn a_head_expires_on_its_own_timer_while_no_link_is_up() {
    let now = t0();
    let mut core = SafCore::new(config(8), spec());
    core.handle_entry(now, reversal(1, 11, T0_MS)).unwrap();
    let due = core.poll_timeout().expect("expiry deadline");
    assert_eq!(due, now.at + EXPIRY + Duration::from_millis(1));
    core.handle_timeout(now.plus(EXPIRY));
    assert!(
        events(&mut core).is_empty(),
        "exactly at expiry it is still owed"
    );
    core.handle_timeout(now.plus(EXPIRY + Duration::from_millis(1)));
    assert_eq!(
        events(&mut core),
        [SafEvent::Expired {
            txn: 1,
            kind: SafKind::Reversal,
            attempts: 0,
            reason: GiveUp::Age,
        }]
    );
    assert_eq!(core.depth(), 0);
    assert_eq!(core.poll_timeout(), None);
}

#[test]
fn max_attempts_gives_up() {
    let mut now = t0();
    let mut core = up_core(8);
    core.handle_entry(now, reversal(1, 11, T0_MS)).unwrap();
    for attempt in 1..=4 {
        assert!(core.poll_send().is_some(), "attempt {attempt}");
        assert_eq!(events(&mut core), [sent(1, attempt)]);
        core.handle_answer(now, Answer::NotAnswered);
        now = now.plus(RETRY);
        core.handle_timeout(now);
    }
    assert!(core.poll_send().is_none(), "no fifth send");
    assert_eq!(
        events(&mut core),
        [SafEvent::Expired {
            txn: 1,
            kind: SafKind::Reversal,
            attempts: 4,
            reason: GiveUp::Attempts,
        }]
    );
    assert_eq!(core.depth(), 0);
}

#[test]
fn nothing_goes_while_no_link_is_up_and_sending_resumes_when_one_is() {
    let now = t0();
    let mut core = SafCore::new(config(8), spec());
    core.handle_entry(now, reversal(1, 11, T0_MS)).unwrap();
    core.handle_entry(now, reversal(2, 12, T0_MS)).unwrap();
    assert!(core.poll_send().is_none());
    assert!(events(&mut core).is_empty());
    core.handle_timeout(now.plus(Duration::from_secs(60)));
    assert!(core.poll_send().is_none(), "a timer is no link");

    core.handle_links_up(now.plus(Duration::from_secs(61)), true);
    let (key, body) = core.poll_send().expect("sent once a link is up");
    assert_eq!(key.stan(), 11);
    assert_eq!(read(body).0, Mti::REVERSAL_ADVICE);

    // Down with the head in flight: the link answers it (as not answered),
    // and the retry waits for a link again.
    let later = now.plus(Duration::from_secs(62));
    core.handle_links_up(later, false);
    core.handle_answer(later, Answer::NotAnswered);
    core.handle_timeout(later.plus(RETRY));
    assert!(core.poll_send().is_none());
    core.handle_links_up(later.plus(RETRY * 2), true);
    let (key, body) = core.poll_send().expect("resumes");
    assert_eq!(key.stan(), 11);
    assert_eq!(read(body).0, Mti::REVERSAL_ADVICE_REPEAT);
    assert_eq!(events(&mut core), [sent(1, 1), sent(1, 2)]);
}

#[test]
fn a_full_queue_refuses_and_takes_again_once_an_entry_leaves() {
    let now = t0();
    let mut core = up_core(2);
    core.handle_entry(now, reversal(1, 11, T0_MS)).unwrap();
    core.handle_entry(now, reversal(2, 12, T0_MS)).unwrap();
    assert!(core.is_full());
    let refused = core.handle_entry(now, reversal(3, 13, T0_MS)).unwrap_err();
    assert_eq!(refused.txn, 3);
    assert_eq!(core.depth(), 2);
    assert!(core.poll_send().is_some());
    core.handle_answer(now, Answer::Answered(*b"00"));
    assert!(!core.is_full());
    core.handle_entry(now, reversal(3, 13, T0_MS)).unwrap();
    assert_eq!(core.depth(), 2);
}

#[test]
fn a_restart_entry_already_sent_goes_as_a_repeat_at_once() {
    let now = t0();
    let mut core = up_core(8);
    let entry = SafEntry {
        attempts: 2,
        ..reversal(7, 17, T0_MS - 60_000)
    };
    core.handle_entry(now, entry).unwrap();
    let (_, body) = core.poll_send().expect("sent at once");
    assert_eq!(read(body), (Mti::REVERSAL_ADVICE_REPEAT, 17));
    assert_eq!(events(&mut core), [sent(7, 3)]);
}

#[test]
fn a_restart_entry_out_of_attempts_is_given_up_without_a_send() {
    let now = t0();
    let mut core = up_core(8);
    let entry = SafEntry {
        attempts: 4,
        ..reversal(7, 17, T0_MS)
    };
    core.handle_entry(now, entry).unwrap();
    assert!(core.poll_send().is_none());
    assert!(matches!(
        events(&mut core)[..],
        [SafEvent::Expired {
            txn: 7,
            reason: GiveUp::Attempts,
            ..
        }]
    ));
}

#[test]
fn events_become_their_journal_records() {
    use crate::switch::journal::Record;
    let at_ms = 42;
    assert!(matches!(
        record_of(&sent(5, 2), at_ms).expect("a record"),
        Record::ReversalSent {
            txn: 5,
            at_ms: 42,
            attempt: 2
        }
    ));
    let advice_acked = SafEvent::Acked {
        txn: 6,
        kind: SafKind::Advice,
        response_code: *b"00",
    };
    assert!(matches!(
        record_of(&advice_acked, at_ms).expect("a record"),
        Record::AdviceAcked {
            txn: 6,
            at_ms: 42,
            response_code: [b'0', b'0']
        }
    ));
    let expired = SafEvent::Expired {
        txn: 7,
        kind: SafKind::Reversal,
        attempts: 3,
        reason: GiveUp::Age,
    };
    assert!(matches!(
        record_of(&expired, at_ms).expect("a record"),
        Record::ReversalExpired { txn: 7, at_ms: 42 }
    ));
    // A reconciliation's number is no transaction's: the store keeps it.
    let recon = SafEvent::Acked {
        txn: 7,
        kind: SafKind::Reconciliation,
        response_code: *b"00",
    };
    assert!(record_of(&recon, at_ms).is_none());
}

/// The bug this replaced: once the actor's queue was full it kept taking
/// entries off its channel and dropped them as expired. Now the handle
/// refuses beyond `max_entries` and nothing is given up.
#[tokio::test]
async fn the_handle_refuses_beyond_max_entries_and_drops_nothing() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink: EventSink = {
        let seen = seen.clone();
        Arc::new(move |e| crate::sync::lock(&seen).push(e))
    };
    let stop = CancellationToken::new();
    let (handle, task) = spawn(
        SafSettings {
            acquirer: "test".into(),
            spec: spec(),
            config: config(3),
        },
        Vec::new(), // no link: nothing can leave the queue
        sink,
        stop.clone(),
    );
    let mut accepted = 0;
    for i in 0..12u32 {
        if handle
            .push(reversal(i.into(), 100 + i, crate::clock::unix_now_ms()))
            .is_ok()
        {
            accepted += 1;
        }
        // Lets the driver move what it received into its core.
        tokio::task::yield_now().await;
    }
    assert_eq!(accepted, 3);
    assert_eq!(handle.depth(), 3);
    stop.cancel();
    task.await.expect("driver ends");
    assert!(
        crate::sync::lock(&seen).is_empty(),
        "nothing sent, nothing given up"
    );
}

/// An entry that waits for its answer's content (a reconciliation) hears
/// when it is given up instead: an empty answer, so its owner does not
/// wait for one that will never come.
#[tokio::test]
async fn an_entry_given_up_says_so_to_its_answer_channel() {
    let sink: EventSink = Arc::new(|_| {});
    let stop = CancellationToken::new();
    let (handle, task) = spawn(
        SafSettings {
            acquirer: "test".into(),
            spec: spec(),
            config: SafConfig {
                expiry: Duration::from_millis(50),
                ..config(3)
            },
        },
        Vec::new(), // no link: it waits until it is too old
        sink,
        stop.clone(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let entry = SafEntry {
        kind: SafKind::Reconciliation,
        answer_to: Some(tx),
        ..reversal(77, 7, crate::clock::unix_now_ms())
    };
    assert!(handle.push(entry).is_ok());
    let (txn, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("told in time")
        .expect("an answer");
    assert_eq!((txn, body.len()), (77, 0));
    assert_eq!(handle.depth(), 0);
    stop.cancel();
    task.await.expect("driver ends");
}
