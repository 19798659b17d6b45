//! The in-flight table of one acquirer link: which request an upstream
//! answer belongs to, and when each request times out. Sans-IO: the caller
//! passes `Instant`s in.
//!
//! Keyed as jPOS QMUX does: MTI class + terminal id (DE41) + STAN (DE11).
//! A second request with a key already in flight is refused as a duplicate,
//! never overwritten. Every request on a link has the same timeout, so
//! deadlines arrive in insertion order and a FIFO replaces a timer wheel.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::iso8583::{Message, Mti};

/// Longest terminal id a key holds (DE41 is 8 in the 1987 layout).
pub const MAX_TID: usize = 16;

/// What matches an answer to its request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MatchKey {
    class: u16,
    stan: u32,
    tid_len: u8,
    tid: [u8; MAX_TID],
}

impl MatchKey {
    /// `None` if the terminal id is longer than [`MAX_TID`].
    pub fn new(mti: Mti, tid: &[u8], stan: u32) -> Option<MatchKey> {
        if tid.len() > MAX_TID {
            return None;
        }
        let mut t = [0u8; MAX_TID];
        t[..tid.len()].copy_from_slice(tid);
        Some(MatchKey {
            class: mti.match_class(),
            stan,
            tid_len: tid.len() as u8,
            tid: t,
        })
    }

    /// The key of a request or of its answer; `None` without DE11 or DE41.
    pub fn of(msg: &Message) -> Option<MatchKey> {
        MatchKey::new(msg.mti(), &msg.terminal_id()?, msg.stan()?)
    }

    pub fn stan(&self) -> u32 {
        self.stan
    }

    pub fn terminal_id(&self) -> &[u8] {
        &self.tid[..self.tid_len as usize]
    }

    /// The request MTI class (`0100`, `0200`, `0420`...).
    pub fn class(&self) -> u16 {
        self.class
    }

    /// A well-mixed hash for spreading keys over links.
    pub fn spread_hash(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut mix = |b: u64| {
            h ^= b;
            h = h.wrapping_mul(0x0100_0000_01b3);
        };
        mix(self.class as u64);
        mix(self.stan as u64);
        for &c in self.terminal_id() {
            mix(c as u64);
        }
        h ^ (h >> 29)
    }
}

/// Why a request could not be entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The table is at its bound.
    Full,
    /// The same key is already in flight.
    Duplicate,
}

/// What an answer matched.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched<T> {
    Found(T),
    /// The request timed out a little while ago: a late answer.
    Late,
    /// Nothing we know of.
    Unknown,
}

/// What an answer matched when the request is checked before it is taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked<T> {
    Found(T),
    /// A request with this key is in flight, but the answer does not
    /// belong to it; the request was left in the table.
    Refused,
    Late,
    Unknown,
}

struct Slot<T> {
    generation: u64,
    value: T,
}

/// Keys of recently timed-out requests remembered to tell late answers
/// from unknown ones.
const LATE_MEMORY: usize = 4096;

pub struct InFlight<T> {
    // foldhash: far cheaper than SipHash for a 24-byte key, and seeded
    // per process, so terminals can not aim collisions at the table.
    map: HashMap<MatchKey, Slot<T>, foldhash::fast::RandomState>,
    deadlines: VecDeque<(Instant, MatchKey, u64)>,
    capacity: usize,
    next_generation: u64,
    expired: VecDeque<MatchKey>,
}

impl<T> InFlight<T> {
    pub fn new(capacity: usize) -> InFlight<T> {
        InFlight {
            map: HashMap::with_capacity_and_hasher(capacity.min(4096), Default::default()),
            deadlines: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            next_generation: 0,
            expired: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.map.len() >= self.capacity
    }

    pub fn contains(&self, key: &MatchKey) -> bool {
        self.map.contains_key(key)
    }

    /// Enters a request; on refusal the value is handed back.
    pub fn insert(
        &mut self,
        key: MatchKey,
        value: T,
        deadline: Instant,
    ) -> Result<(), (Refused, T)> {
        let full = self.map.len() >= self.capacity;
        // One lookup for the duplicate check and the insert.
        let vacant = match self.map.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => {
                return Err((Refused::Duplicate, value));
            }
            std::collections::hash_map::Entry::Vacant(_) if full => {
                return Err((Refused::Full, value));
            }
            std::collections::hash_map::Entry::Vacant(v) => v,
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        vacant.insert(Slot { generation, value });
        self.deadlines.push_back((deadline, key, generation));
        // Answered entries leave stale deadline records behind; keep the
        // queue within twice the table so memory stays bounded even when
        // one slow request holds the head.
        if self.deadlines.len() > 2 * self.capacity.max(16) {
            let map = &self.map;
            self.deadlines
                .retain(|(_, k, g)| map.get(k).is_some_and(|s| s.generation == *g));
        }
        Ok(())
    }

    /// Takes the request an answer with this key belongs to.
    pub fn take(&mut self, key: &MatchKey) -> Matched<T> {
        match self.map.remove(key) {
            Some(slot) => {
                self.drop_stale_heads();
                Matched::Found(slot.value)
            }
            None if self.expired.contains(key) => Matched::Late,
            None => Matched::Unknown,
        }
    }

    /// Takes the request an answer with this key belongs to, if `accept`
    /// agrees after looking at it; a refused request stays in the table
    /// with its deadline, waiting for its real answer.
    pub fn take_if(&mut self, key: &MatchKey, accept: impl FnOnce(&T) -> bool) -> Checked<T> {
        use std::collections::hash_map::Entry;
        // One lookup for the check and the removal: this runs per answer.
        match self.map.entry(*key) {
            Entry::Occupied(slot) if !accept(&slot.get().value) => Checked::Refused,
            Entry::Occupied(slot) => {
                let value = slot.remove().value;
                self.drop_stale_heads();
                Checked::Found(value)
            }
            Entry::Vacant(_) if self.expired.contains(key) => Checked::Late,
            Entry::Vacant(_) => Checked::Unknown,
        }
    }

    fn drop_stale_heads(&mut self) {
        while let Some((_, k, g)) = self.deadlines.front() {
            if self.map.get(k).is_some_and(|s| s.generation == *g) {
                break;
            }
            self.deadlines.pop_front();
        }
    }

    /// When the next request times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(d, _, _)| *d)
    }

    /// Removes every request whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant, mut on_timeout: impl FnMut(MatchKey, T)) {
        while let Some(&(deadline, key, generation)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self
                .map
                .get(&key)
                .is_some_and(|s| s.generation == generation)
                && let Some(slot) = self.map.remove(&key)
            {
                if self.expired.len() >= LATE_MEMORY {
                    self.expired.pop_front();
                }
                self.expired.push_back(key);
                on_timeout(key, slot.value);
            }
        }
        self.drop_stale_heads();
    }

    /// Removes everything (the link went down).
    /// In the order the requests were entered: what follows (replies,
    /// reversals) happens in the order the host saw them, the same on
    /// every run (the map's own order is seeded per process).
    pub fn drain(&mut self) -> impl Iterator<Item = (MatchKey, T)> + '_ {
        self.deadlines.clear();
        let mut all: Vec<(MatchKey, Slot<T>)> = self.map.drain().collect();
        all.sort_unstable_by_key(|(_, s)| s.generation);
        all.into_iter().map(|(k, s)| (k, s.value))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(stan: u32) -> MatchKey {
        MatchKey::new(Mti::FINANCIAL, b"TERM0001", stan).unwrap()
    }

    #[test]
    fn request_and_response_mtis_share_a_key() {
        let a = MatchKey::new(Mti::AUTHORIZATION, b"T1", 7).unwrap();
        let b = MatchKey::new(Mti::AUTHORIZATION_RESPONSE, b"T1", 7).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, MatchKey::new(Mti::FINANCIAL, b"T1", 7).unwrap());
        assert_ne!(a, MatchKey::new(Mti::AUTHORIZATION, b"T2", 7).unwrap());
        assert!(MatchKey::new(Mti::FINANCIAL, &[b'x'; 17], 1).is_none());
    }

    #[test]
    fn answers_find_their_request_once() {
        let now = Instant::now();
        let mut t = InFlight::new(10);
        t.insert(key(1), "a", now + Duration::from_secs(1)).unwrap();
        t.insert(key(2), "b", now + Duration::from_secs(1)).unwrap();
        assert_eq!(t.take(&key(2)), Matched::Found("b"));
        assert_eq!(t.take(&key(2)), Matched::Unknown);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn duplicates_and_overflow_are_refused_without_overwriting() {
        let now = Instant::now();
        let mut t = InFlight::new(2);
        t.insert(key(1), 1, now).unwrap();
        assert_eq!(t.insert(key(1), 9, now), Err((Refused::Duplicate, 9)));
        t.insert(key(2), 2, now).unwrap();
        assert_eq!(t.insert(key(3), 3, now), Err((Refused::Full, 3)));
        assert_eq!(t.take(&key(1)), Matched::Found(1));
    }

    #[test]
    fn deadlines_expire_in_order_and_late_answers_are_recognised() {
        let t0 = Instant::now();
        let mut t = InFlight::new(10);
        for i in 0..5 {
            t.insert(key(i), i, t0 + Duration::from_millis(100 * i as u64))
                .unwrap();
        }
        assert_eq!(t.take(&key(1)), Matched::Found(1));
        let mut expired = Vec::new();
        t.expire(t0 + Duration::from_millis(250), |k, v| {
            expired.push((k.stan(), v))
        });
        assert_eq!(expired, [(0, 0), (2, 2)]);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(300)));
        assert_eq!(t.take(&key(2)), Matched::Late);
        assert_eq!(t.take(&key(99)), Matched::Unknown);
        assert_eq!(t.take(&key(3)), Matched::Found(3));
    }

    #[test]
    fn a_reused_key_is_not_expired_by_its_predecessor_deadline() {
        let t0 = Instant::now();
        let mut t = InFlight::new(10);
        t.insert(key(1), "old", t0).unwrap();
        assert_eq!(t.take(&key(1)), Matched::Found("old"));
        t.insert(key(1), "new", t0 + Duration::from_secs(10))
            .unwrap();
        let mut expired = Vec::new();
        t.expire(t0 + Duration::from_secs(1), |_, v| expired.push(v));
        assert!(expired.is_empty());
        assert_eq!(t.take(&key(1)), Matched::Found("new"));
    }

    #[test]
    fn deadline_records_stay_bounded_behind_a_slow_head() {
        let t0 = Instant::now();
        let mut t = InFlight::new(16);
        t.insert(key(0), 0, t0 + Duration::from_secs(60)).unwrap();
        for i in 1..10_000 {
            t.insert(key(i), i, t0 + Duration::from_secs(60)).unwrap();
            assert_eq!(t.take(&key(i)), Matched::Found(i));
        }
        assert!(t.deadlines.len() <= 2 * 16 + 1, "{}", t.deadlines.len());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn take_if_leaves_a_refused_request_waiting_with_its_deadline() {
        let t0 = Instant::now();
        let mut t = InFlight::new(4);
        t.insert(key(1), 10, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(t.take_if(&key(1), |&v| v == 11), Checked::Refused);
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.take_if(&key(1), |&v| v == 10), Checked::Found(10));
        assert_eq!(t.take_if(&key(1), |_| true), Checked::Unknown);
        t.insert(key(2), 20, t0).unwrap();
        t.expire(t0, |_, _| {});
        assert_eq!(t.take_if(&key(2), |_| true), Checked::Late);
    }

    #[test]
    fn drain_empties_the_table() {
        let mut t = InFlight::new(4);
        t.insert(key(1), 1, Instant::now()).unwrap();
        t.insert(key(2), 2, Instant::now()).unwrap();
        let mut all: Vec<_> = t.drain().map(|(_, v)| v).collect();
        all.sort();
        assert_eq!(all, [1, 2]);
        assert!(t.is_empty() && t.next_deadline().is_none());
    }
}
