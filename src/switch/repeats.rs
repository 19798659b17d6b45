//! Recent answers: a terminal that did not get (or did not trust) an
//! answer sends the request again, as an x01 repeat (0101, 0201, 0401,
//! 0421, 0221) or unchanged. It must get the original answer, and the host
//! must not see the transaction twice. Same key (MTI class, DE41, DE11)
//! with different content is a different transaction reusing a STAN: 94.
//!
//! Bounded: room for `capacity` answers (rounded up), each kept for `ttl`;
//! when a set is full its oldest answer goes.

use std::sync::Mutex;

use crate::sync::lock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::iso8583::Message;
use crate::switch::acquirer::MatchKey;

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

/// Ways per set: a new answer replaces the oldest of its set's four.
const WAYS: usize = 4;

#[derive(Default)]
struct Entry {
    key: Option<MatchKey>,
    content: u64,
    /// The answer's bytes, in a buffer the way keeps and refills: no
    /// allocation or free per answer once the table has filled.
    answer: Vec<u8>,
    at: Option<Instant>,
}

/// A way's buffer grown past this by an unusually large answer is given
/// back when it next holds an ordinary one, so a few large answers do not
/// pin their size in every way they pass through.
const KEEP_BUFFER: usize = 1024;

/// One set: a tag per way (from the key's hash; 0 = empty) ahead of the
/// entries, so a lookup that finds nothing reads one cache line.
#[derive(Default)]
struct Set {
    tags: [u32; WAYS],
    ways: [Entry; WAYS],
}

/// A set-associative table: the key's hash picks a set of `WAYS`
/// entries under one small lock. One lookup touches one set; the slots are
/// fixed at creation (no map growth, no eviction queue), and each way's
/// answer buffer is as large as the answers it has held (see
/// `KEEP_BUFFER`).
pub struct RecentAnswers {
    sets: Box<[Mutex<Set>]>,
    mask: usize,
    ttl: Duration,
    /// Seeded per process (terminals can not aim many keys at one set),
    /// or by the caller ([`RecentAnswers::with_seed`]) for a replayable
    /// simulation.
    hasher: foldhash::fast::FixedState,
}

/// A fingerprint of a request's content: every byte after the MTI (so an
/// x01 repeat of a request has the fingerprint of the original). Fixed
/// seed: the same content always gives the same fingerprint.
pub fn content_hash(msg: &Message) -> u64 {
    use std::hash::BuildHasher;
    let frame = msg.frame();
    let from = msg.spec().mti_width().min(frame.len());
    foldhash::quality::FixedState::with_seed(0x5357_4954_4348_5941).hash_one(&frame[from..])
}

impl RecentAnswers {
    /// Room for at least `capacity` answers (rounded up to a power of two).
    pub fn new(capacity: usize, ttl: Duration) -> RecentAnswers {
        use std::hash::BuildHasher;
        let seed = foldhash::fast::RandomState::default().hash_one(0x5265_7065_6174_7321u64);
        RecentAnswers::with_seed(capacity, ttl, seed)
    }

    /// As [`RecentAnswers::new`], with the set placement fixed by `seed`.
    pub fn with_seed(capacity: usize, ttl: Duration, seed: u64) -> RecentAnswers {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        RecentAnswers {
            sets: (0..sets).map(|_| Mutex::new(Default::default())).collect(),
            mask: sets - 1,
            ttl,
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    /// Answers held (counts every set: for metrics, not the hot path).
    pub fn len(&self) -> usize {
        self.sets
            .iter()
            .map(|s| lock(s).tags.iter().filter(|&&t| t != 0).count())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key's set and its tag there (never 0).
    fn place(&self, key: &MatchKey) -> (&Mutex<Set>, u32) {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(key);
        (
            &self.sets[h as usize & self.mask],
            ((h >> 32) as u32).max(1),
        )
    }

    /// Starts loading the key's set into the cache, so that a
    /// [`RecentAnswers::remember`] a little later does not stall on it:
    /// the table is tens of megabytes and a set is rarely still cached
    /// when its request's answer comes (the miss was most of `remember`'s
    /// cost). A hint only; it reads and changes nothing.
    pub fn prefetch(&self, key: &MatchKey) {
        let (set, _) = self.place(key);
        let start = (set as *const Mutex<Set>).cast::<u8>();
        for line in (0..std::mem::size_of::<Mutex<Set>>()).step_by(64) {
            prefetch_line(start.wrapping_add(line));
        }
    }

    pub fn check(&self, key: &MatchKey, content: u64, now: Instant) -> Seen {
        let (set, tag) = self.place(key);
        let set = lock(set);
        let found =
            (0..WAYS).find(|&i| set.tags[i] == tag && set.ways[i].key.as_ref() == Some(key));
        let Some(e) = found.map(|i| &set.ways[i]) else {
            return Seen::New;
        };
        match e.at {
            Some(at) if now.saturating_duration_since(at) <= self.ttl => {
                if e.content == content {
                    Seen::Repeat(Bytes::copy_from_slice(&e.answer))
                } else {
                    Seen::Conflict
                }
            }
            _ => Seen::New,
        }
    }

    /// Keeps a copy of the answer given to a request, in place of the same
    /// key's older answer, an empty way, or the oldest answer of the set.
    ///
    /// A copy, not a slice of the buffer the answer arrived in: a slice
    /// would keep that whole read buffer (64 KiB, shared by hundreds of
    /// answers) alive for as long as any one of them is held, which
    /// measured at about 650 bytes per held answer instead of its size.
    /// The copy goes into the way's own buffer, reused from the answer it
    /// replaces: an allocation and a free per answer measured at about 4%
    /// of the switch's CPU.
    pub fn remember(&self, key: MatchKey, content: u64, answer: &[u8], now: Instant) {
        let (set, tag) = self.place(&key);
        let mut set = lock(set);
        let i = (0..WAYS)
            .find(|&i| set.tags[i] == tag && set.ways[i].key == Some(key))
            .or_else(|| set.tags.iter().position(|&t| t == 0))
            .unwrap_or_else(|| (0..WAYS).min_by_key(|&i| set.ways[i].at).unwrap_or(0));
        set.tags[i] = tag;
        let way = &mut set.ways[i];
        way.key = Some(key);
        way.content = content;
        way.at = Some(now);
        if way.answer.capacity() > KEEP_BUFFER && answer.len() <= KEEP_BUFFER {
            way.answer = Vec::new();
        }
        way.answer.clear();
        way.answer.extend_from_slice(answer);
    }
}

/// A prefetch of the cache line at `p` (x86-64; elsewhere nothing).
#[inline(always)]
fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the
    // address, and reads or writes nothing the program can observe.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
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
        r.remember(key, content_hash(&orig), b"0210-answer", now);

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
        // Capacity 4: one set of four ways.
        let r = RecentAnswers::new(4, Duration::from_secs(60));
        let t0 = Instant::now();
        let keys: Vec<_> = (1..=6)
            .map(|s| MatchKey::of(&msg(Mti::FINANCIAL, s, 1)).expect("key"))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            r.remember(*k, 7, &[], t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(r.len(), 4);
        let now = t0 + Duration::from_secs(1);
        assert_eq!(r.check(&keys[0], 7, now), Seen::New);
        assert_eq!(r.check(&keys[1], 7, now), Seen::New);
        assert_eq!(r.check(&keys[5], 7, now), Seen::Repeat(Bytes::new()));
        // Answering a key again refreshes it in place.
        r.remember(keys[2], 8, &[], now);
        r.remember(keys[0], 7, &[], now);
        assert_eq!(r.check(&keys[2], 8, now), Seen::Repeat(Bytes::new()));
        assert_eq!(r.check(&keys[3], 7, now), Seen::New, "the oldest went");
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn a_reused_way_holds_exactly_the_new_answer() {
        // One set: every key lands in it, so ways are reused.
        let r = RecentAnswers::new(4, Duration::from_secs(60));
        let t0 = Instant::now();
        let keys: Vec<_> = (1..=8)
            .map(|s| MatchKey::of(&msg(Mti::FINANCIAL, s, 1)).expect("key"))
            .collect();
        let big = vec![b'B'; 5000];
        for (i, k) in keys[..4].iter().enumerate() {
            r.remember(*k, 1, &big, t0 + Duration::from_millis(i as u64));
        }
        // Each of these replaces one of the big answers.
        for (i, k) in keys[4..].iter().enumerate() {
            let answer = format!("0210-short-{i}");
            r.remember(
                *k,
                1,
                answer.as_bytes(),
                t0 + Duration::from_millis(10 + i as u64),
            );
        }
        for (i, k) in keys[4..].iter().enumerate() {
            let answer = format!("0210-short-{i}");
            assert_eq!(
                r.check(k, 1, t0 + Duration::from_secs(1)),
                Seen::Repeat(Bytes::from(answer.into_bytes()))
            );
        }
        // And a big answer in a way that held a short one.
        r.remember(keys[0], 1, &big, t0 + Duration::from_millis(20));
        assert_eq!(
            r.check(&keys[0], 1, t0 + Duration::from_secs(1)),
            Seen::Repeat(Bytes::from(big))
        );
    }
}
