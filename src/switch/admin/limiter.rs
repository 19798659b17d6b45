//! Failed logins, counted per key (a source address, a user name): after
//! [`FREE_FAILURES`] in a row the key is locked for [`FIRST_LOCK`],
//! doubling with each failure after that, up to [`MAX_LOCK`]. A login
//! tried while locked is refused before any password is checked and does
//! not count (so the lock does not grow while an attacker hammers it).
//! A success clears the key; a key with no failure for [`FORGET_AFTER`]
//! is forgotten. Pure: the moment is passed in.
//!
//! Bounded at [`MAX_KEYS`] keys: when full, forgotten and unlocked keys
//! go first, then the one whose last failure is oldest. An attacker with
//! many source addresses can push an address out that way, never a user
//! name's count faster than it pushes its own out, and the per-user
//! count holds against any number of addresses.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Failures in a row allowed before a lock.
pub const FREE_FAILURES: u32 = 5;
/// The first lock; each further failure doubles it.
pub const FIRST_LOCK: Duration = Duration::from_secs(30);
/// The longest lock.
pub const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// A key with no failure for this long starts again from zero.
pub const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
/// Most keys tracked per limiter.
pub const MAX_KEYS: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Limiter<K> {
    entries: HashMap<K, Entry>,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> Default for Limiter<K> {
    fn default() -> Self {
        Limiter::with_capacity(MAX_KEYS)
    }
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn with_capacity(max_keys: usize) -> Limiter<K> {
        Limiter {
            entries: HashMap::new(),
            max_keys: max_keys.max(1),
        }
    }

    /// How long `key` stays locked, if it is.
    pub fn locked(&self, key: &K, now: Instant) -> Option<Duration> {
        let until = self.entries.get(key)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// A failed login; returns the lock it starts, if any.
    pub fn fail(&mut self, key: &K, now: Instant) -> Option<Duration> {
        if !self.entries.contains_key(key) {
            self.make_room(now);
        }
        let e = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            last_failure: now,
            locked_until: None,
        });
        if now.saturating_duration_since(e.last_failure) > FORGET_AFTER {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        if e.failures < FREE_FAILURES {
            return None;
        }
        let doublings = (e.failures - FREE_FAILURES).min(16);
        let lock = FIRST_LOCK.saturating_mul(1 << doublings).min(MAX_LOCK);
        e.locked_until = Some(now + lock);
        Some(lock)
    }

    /// A successful login: the key starts again from zero.
    pub fn succeed(&mut self, key: &K) {
        self.entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.max_keys {
            return;
        }
        let stale = |e: &Entry| {
            let unlocked = e.locked_until.is_none_or(|u| u <= now);
            unlocked && now.saturating_duration_since(e.last_failure) > FORGET_AFTER
        };
        self.entries.retain(|_, e| !stale(e));
        if self.entries.len() < self.max_keys {
            return;
        }
        // Unlocked keys before locked ones, then the oldest failure.
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, e)| (e.locked_until.is_some_and(|u| u > now), e.last_failure))
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.entries.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_lock_and_the_lock_grows() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let k = "alice".to_owned();
        for i in 0..FREE_FAILURES - 1 {
            assert_eq!(l.fail(&k, t0), None, "failure {i}");
            assert_eq!(l.locked(&k, t0), None);
        }
        assert_eq!(l.fail(&k, t0), Some(FIRST_LOCK));
        assert_eq!(l.locked(&k, t0), Some(FIRST_LOCK));
        let t1 = t0 + FIRST_LOCK;
        assert_eq!(l.locked(&k, t1), None, "the lock ends");
        assert_eq!(
            l.fail(&k, t1),
            Some(FIRST_LOCK * 2),
            "and the next failure doubles it"
        );
        let mut t = t1;
        let mut last = FIRST_LOCK * 2;
        for _ in 0..20 {
            t += last;
            last = l.fail(&k, t).expect("locks");
        }
        assert_eq!(last, MAX_LOCK, "capped");
        l.succeed(&k);
        assert_eq!(l.locked(&k, t), None);
        assert_eq!(l.fail(&k, t), None, "a success starts it again");
    }

    #[test]
    fn failures_are_forgotten_after_an_hour() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            l.fail(&1u32, t0);
        }
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(l.fail(&1, later), None, "counted from one again");
    }

    #[test]
    fn bounded_and_locked_keys_stay_longest() {
        let mut l = Limiter::with_capacity(3);
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            l.fail(&0u32, t0);
        }
        assert!(l.locked(&0, t0).is_some());
        for k in 1..100u32 {
            l.fail(&k, t0 + Duration::from_millis(u64::from(k)));
            assert!(l.len() <= 3);
        }
        assert!(l.locked(&0, t0 + Duration::from_secs(1)).is_some(), "kept");
        assert!(l.entries.contains_key(&99) && l.entries.contains_key(&98));
    }
}
