//! Recent answers: a terminal that did not get (or did not trust) an
//! answer sends the request again, as an x01 repeat (0101, 0201, 0401,
//! 0421, 0221) or unchanged. It must get the original answer, and the host
//! must not see the transaction twice. Same key (MTI class, DE41, DE11)
//! with different content is a different transaction reusing a STAN: 94.
//!
//! Bounded: at most `capacity` answers, each kept for `ttl`; the oldest
//! goes first. The order is a lock-free ring, the answers a `DashMap`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use dashmap::DashMap;

use crate::acquirer::MatchKey;
use crate::iso8583::Message;

/// What the cache knows about a request's key.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not answered recently: handle it.
    New,
    /// The same request was answered: send this answer (body, unframed,
    /// in the terminal's spec) again.
    Repeat(Bytes),
    /// The key was answered for different content.
    Conflict,
}

struct Answered {
    content: u64,
    answer: Bytes,
    at: Instant,
    stamp: u64,
}

pub struct RecentAnswers {
    answers: DashMap<MatchKey, Answered, foldhash::fast::RandomState>,
    order: ArrayQueue<(MatchKey, u64)>,
    stamps: AtomicU64,
    ttl: Duration,
}

/// A fingerprint of a request's content: every byte after the MTI (so an
/// x01 repeat of a request has the fingerprint of the original).
pub fn content_hash(msg: &Message) -> u64 {
    use std::hash::Hasher;
    let frame = msg.frame();
    let from = msg.spec().mti_width().min(frame.len());
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x5357_4954_4348, 0x5941_5244);
    h.write(&frame[from..]);
    h.finish()
}

impl RecentAnswers {
    pub fn new(capacity: usize, ttl: Duration) -> RecentAnswers {
        RecentAnswers {
            answers: DashMap::with_hasher(Default::default()),
            order: ArrayQueue::new(capacity.max(1)),
            stamps: AtomicU64::new(0),
            ttl,
        }
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    pub fn check(&self, key: &MatchKey, content: u64, now: Instant) -> Seen {
        match self.answers.get(key) {
            Some(a) if now.saturating_duration_since(a.at) <= self.ttl => {
                if a.content == content {
                    Seen::Repeat(a.answer.clone())
                } else {
                    Seen::Conflict
                }
            }
            _ => Seen::New,
        }
    }

    /// Keeps the answer given to a request.
    pub fn remember(&self, key: MatchKey, content: u64, answer: Bytes, now: Instant) {
        let stamp = self.stamps.fetch_add(1, Ordering::Relaxed);
        self.answers.insert(
            key,
            Answered {
                content,
                answer,
                at: now,
                stamp,
            },
        );
        let mut item = (key, stamp);
        // Full: the oldest answer goes (unless its key was answered again
        // since, which a newer ring entry then covers).
        while let Err(back) = self.order.push(item) {
            item = back;
            if let Some((old, old_stamp)) = self.order.pop() {
                self.answers.remove_if(&old, |_, a| a.stamp == old_stamp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::{MessageBuilder, Mti, specs};

    fn msg(mti: Mti, stan: u64, amount: u64) -> Message {
        let mut b = MessageBuilder::new(specs::iso87ascii(), mti);
        b.set(2, b"4761739001010010")
            .set_number(4, amount)
            .set_number(11, stan)
            .set(41, b"TERM0001");
        Message::parse(b.to_bytes().expect("packs").freeze(), specs::iso87ascii()).expect("parses")
    }

    #[test]
    fn repeats_get_the_original_answer_and_conflicts_are_told_apart() {
        let r = RecentAnswers::new(10, Duration::from_secs(60));
        let now = Instant::now();
        let orig = msg(Mti::FINANCIAL, 1, 100);
        let key = MatchKey::of(&orig).expect("key");
        assert_eq!(r.check(&key, content_hash(&orig), now), Seen::New);
        r.remember(
            key,
            content_hash(&orig),
            Bytes::from_static(b"0210-answer"),
            now,
        );

        let repeat = msg(Mti::FINANCIAL_REPEAT, 1, 100);
        assert_eq!(
            MatchKey::of(&repeat),
            Some(key),
            "0201 shares the 0200's key"
        );
        assert_eq!(
            r.check(&key, content_hash(&repeat), now),
            Seen::Repeat(Bytes::from_static(b"0210-answer"))
        );
        let other = msg(Mti::FINANCIAL, 1, 999);
        assert_eq!(r.check(&key, content_hash(&other), now), Seen::Conflict);
        // After the ttl the key is free again.
        assert_eq!(
            r.check(&key, content_hash(&orig), now + Duration::from_secs(61)),
            Seen::New
        );
    }

    #[test]
    fn bounded_oldest_first() {
        let r = RecentAnswers::new(3, Duration::from_secs(60));
        let now = Instant::now();
        let keys: Vec<_> = (1..=5)
            .map(|s| MatchKey::of(&msg(Mti::FINANCIAL, s, 1)).expect("key"))
            .collect();
        for k in &keys {
            r.remember(*k, 7, Bytes::new(), now);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.check(&keys[0], 7, now), Seen::New);
        assert_eq!(r.check(&keys[1], 7, now), Seen::New);
        assert_eq!(r.check(&keys[4], 7, now), Seen::Repeat(Bytes::new()));
        // Answering a key again keeps it past its first ring entry.
        r.remember(keys[2], 8, Bytes::new(), now);
        r.remember(keys[3], 7, Bytes::new(), now);
        assert_eq!(r.check(&keys[2], 8, now), Seen::Repeat(Bytes::new()));
        assert!(r.len() <= 3);
    }
}
