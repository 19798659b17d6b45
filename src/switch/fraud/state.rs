//! Per-card history for the velocity, card-testing and decline rules:
//! a sharded map from keyed card hash to a fixed-size record, bounded by
//! `max_tracked_cards` with eviction of the cards seen least recently.
//!
//! Windows are bucketed: each velocity window is cut into `BUCKETS`
//! buckets, and a window's count is the sum of the buckets that are not
//! older than the window. The window thus slides in steps of one bucket
//! (`window_s / BUCKETS` rounded up: a 60 s window in 8 s steps), which
//! bounds memory per card without keeping every event.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use siphasher::sip128::{Hasher128, SipHasher13};

use crate::sync::lock;

use super::{Auth, FraudRules, RuleId, Score};
use crate::switch::fraud::crate_limits::{MAX_VELOCITY_WINDOWS, RECENT_EVENTS};

/// Buckets per velocity window.
pub(crate) const BUCKETS: usize = 8;
/// Cards sampled per shard to estimate the eviction cutoff (1,024 in all).
const SAMPLE_PER_SHARD: usize = 4;

/// A card, as the switch remembers it: a 128-bit keyed hash of the PAN
/// digits. The switch names cards with `Shared::card_hash` (the at-rest
/// HMAC, so the journal, the store and the blocked-card list name a card
/// alike); stable across restarts as long as the key is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CardHash(pub [u8; 16]);

/// SipHash-1-3 (128-bit) under `key`: a fast keyed hash for tests and
/// benchmarks that need a `CardHash` without the switch's key.
pub fn card_hash(key: &[u8; 16], pan_digits: &[u8]) -> CardHash {
    let mut h = SipHasher13::new_with_key(key);
    h.write(pan_digits);
    CardHash(h.finish128().as_bytes())
}

impl CardHash {
    /// Parses the 32 hex digits that `Display` prints.
    pub fn from_hex(s: &str) -> Option<CardHash> {
        // Exactly the 32 digits: `parse_hex` alone would also take spaces
        // and a `0x`.
        if s.len() != 32 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let bytes = crate::hex::parse_hex(s).ok()?;
        bytes.try_into().ok().map(CardHash)
    }
}

impl fmt::Display for CardHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CardHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardHash({self})")
    }
}

impl Hash for CardHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.map_hash());
    }
}

impl CardHash {
    /// Already a keyed hash: its first 8 bytes are as good as any hash of
    /// it, for the card map's buckets.
    fn map_hash(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        u64::from_ne_bytes(first)
    }
}

/// One bucket of a velocity window, packed in a word: the request count
/// in the low 16 bits, the amount in the high 48 (both saturating).
#[derive(Clone, Copy, Default)]
struct Bucket(u64);

impl Bucket {
    const COUNT_MAX: u64 = 0xFFFF;
    const AMOUNT_MAX: u64 = (1 << 48) - 1;

    fn count(self) -> u64 {
        self.0 & Self::COUNT_MAX
    }

    fn amount(self) -> u64 {
        self.0 >> 16
    }

    fn add(&mut self, amount: u64) {
        let count = (self.count() + 1).min(Self::COUNT_MAX);
        let amount = self.amount().saturating_add(amount).min(Self::AMOUNT_MAX);
        self.0 = (amount << 16) | count;
    }
}

/// A recent forwarded request, for the card-testing rule.
#[derive(Clone, Copy, Default)]
struct Recent {
    at: u32,
    /// Hash of the merchant id, with bit 0 set when the amount was small.
    tag: u32,
}

/// 448 bytes per card, the card's hash included, laid out by cache line so
/// that scoring reads as few as it can. Line 0 holds the key the lookup
/// compares and each window's newest bucket index and running count
/// (enough to score a card seen in its current bucket), line 1 the running
/// amounts and the decline ring, line 2 the recent events of the
/// card-testing rule; the bucket rings (lines 3-6) are read only when some
/// of their buckets have aged out since the card's last request. With the
/// key in a map entry of its own, apart from the value, a lookup read one
/// line more (a perf profile put most of the scorer's time on loading it).
#[derive(Clone)]
#[repr(C, align(64))]
struct CardState {
    card: CardHash,
    /// Per velocity window: the bucket index (`now_s / bucket_s`) of the
    /// newest bucket; the ring holds it and the `BUCKETS - 1` before it.
    newest: [u32; MAX_VELOCITY_WINDOWS],
    /// Per window: the sums over its ring.
    counts: [u32; MAX_VELOCITY_WINDOWS],
    last_seen: u32,
    recent_next: u8,
    declines_next: u8,
    /// Puts `amounts` at the start of line 1.
    _line_0_end: [u8; 10],
    amounts: [u64; MAX_VELOCITY_WINDOWS],
    declines: [u32; RECENT_EVENTS],
    recent: [Recent; RECENT_EVENTS],
    windows: [[Bucket; BUCKETS]; MAX_VELOCITY_WINDOWS],
}

const _: () = assert!(std::mem::size_of::<CardState>() == 448);
const _: () = assert!(std::mem::offset_of!(CardState, amounts) == 64);
const _: () = assert!(std::mem::offset_of!(CardState, recent) == 128);

impl CardState {
    fn new(card: CardHash) -> CardState {
        CardState {
            card,
            newest: [0; MAX_VELOCITY_WINDOWS],
            counts: [0; MAX_VELOCITY_WINDOWS],
            last_seen: 0,
            recent_next: 0,
            declines_next: 0,
            _line_0_end: [0; 10],
            amounts: [0; MAX_VELOCITY_WINDOWS],
            declines: [0; RECENT_EVENTS],
            recent: [Recent::default(); RECENT_EVENTS],
            windows: [[Bucket::default(); BUCKETS]; MAX_VELOCITY_WINDOWS],
        }
    }

    fn record(&mut self, rules: &FraudRules, a: &Auth<'_>, now: u32) {
        self.last_seen = now;
        for (i, w) in rules.windows.iter().enumerate() {
            self.window_add(i, now / w.bucket_s, a.amount_minor);
        }
        if let Some(t) = &rules.card_testing {
            let slot = self.recent_next as usize % RECENT_EVENTS;
            self.recent[slot] = Recent {
                at: now,
                tag: merchant_tag(a.merchant_id, a.amount_minor <= t.small_amount),
            };
            self.recent_next = ((slot + 1) % RECENT_EVENTS) as u8;
        }
    }

    /// Count and amount of window `i` that are not older than `BUCKETS`
    /// buckets at `now_index`.
    fn window_sum(&self, i: usize, now_index: u32) -> (u64, u64) {
        let newest = self.newest[i];
        // A clock that stepped back counts as now.
        let age = now_index.saturating_sub(newest) as usize;
        let (mut count, mut amount) = (self.counts[i] as u64, self.amounts[i]);
        if age == 0 {
            return (count, amount);
        }
        if age >= BUCKETS {
            return (0, 0);
        }
        // The oldest `age` buckets of the ring have aged out.
        for k in BUCKETS - age..BUCKETS {
            let b = self.windows[i][newest.wrapping_sub(k as u32) as usize % BUCKETS];
            count = count.saturating_sub(b.count());
            amount = amount.saturating_sub(b.amount());
        }
        (count, amount)
    }

    fn window_add(&mut self, i: usize, now_index: u32, amount: u64) {
        let newest = self.newest[i];
        if now_index > newest {
            // Buckets between the newest and now are stale: empty them.
            let stale = (now_index - newest).min(BUCKETS as u32);
            for k in 0..stale {
                let b = &mut self.windows[i][now_index.wrapping_sub(k) as usize % BUCKETS];
                self.counts[i] = self.counts[i].saturating_sub(b.count() as u32);
                self.amounts[i] = self.amounts[i].saturating_sub(b.amount());
                *b = Bucket::default();
            }
            self.newest[i] = now_index;
        }
        let b = &mut self.windows[i][self.newest[i] as usize % BUCKETS];
        let before = *b;
        b.add(amount);
        self.counts[i] += (b.count() - before.count()) as u32;
        self.amounts[i] += b.amount() - before.amount();
    }
}

fn secs32(now_s: u64) -> u32 {
    now_s.min(u32::MAX as u64) as u32
}

fn merchant_tag(merchant: &[u8], small: bool) -> u32 {
    // FNV-1a: only distinctness among a card's last few merchants matters.
    let mut h: u32 = 0x811c_9dc5;
    for &b in merchant {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    (h & !1) | small as u32
}

/// Whether an event at `at` is inside a window of `window_s` ending now.
fn within(at: u32, now: u32, window_s: u32) -> bool {
    at != 0 && at <= now && now - at < window_s
}

/// Shards of the card map, each a plain hash map under its own lock. A
/// shard grows by copying every record it holds (about 450 bytes each)
/// while the actors wait: with 8 shards (DashMap's default of 4 per core
/// here) a growth step at 100,000 cards copied megabytes at once and
/// showed as a 15-20 ms stall of every terminal in the first seconds of a
/// load test. Many small shards make each step small, and let eviction
/// sweep a few at a time.
const SHARDS: usize = 256;

/// Records an eviction step examines at most (beyond finishing a shard):
/// about 0.2 ms of scanning. A sweep of the whole map at a million cards
/// took the runtime for tens of milliseconds.
const SWEEP_STEP: usize = 4096;

/// A shard's cards, each entry keyed by the card hash it holds.
#[derive(Default)]
struct Shard(HashTable<CardState>);

impl Shard {
    fn get(&self, card: &CardHash) -> Option<&CardState> {
        self.0.find(card.map_hash(), |st| st.card == *card)
    }

    fn get_mut(&mut self, card: &CardHash) -> Option<&mut CardState> {
        self.0.find_mut(card.map_hash(), |st| st.card == *card)
    }

    /// The card's entry, added if it is not there; whether it was added.
    fn get_or_insert(&mut self, card: CardHash) -> (&mut CardState, bool) {
        use hashbrown::hash_table::Entry;
        match self.0.entry(
            card.map_hash(),
            |st| st.card == card,
            |st| st.card.map_hash(),
        ) {
            Entry::Occupied(e) => (e.into_mut(), false),
            Entry::Vacant(e) => (e.insert(CardState::new(card)).into_mut(), true),
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Where the eviction sweep stands: it goes round the shards a step at a
/// time, with a cutoff estimated at the start of each round.
struct Sweep {
    next_shard: usize,
    cutoff: u64,
}

/// The history of every card seen recently. Shared by all terminal
/// actors; no lock is held beyond one map operation (never across an
/// await).
pub struct FraudState {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    tracked: AtomicUsize,
    max_cards: usize,
    /// Held by the one caller evicting; others skip tracking meanwhile.
    sweep: Mutex<Sweep>,
}

impl FraudState {
    pub fn new(max_cards: usize) -> FraudState {
        FraudState {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::default()))
                .collect(),
            tracked: AtomicUsize::new(0),
            max_cards: max_cards.max(1),
            sweep: Mutex::new(Sweep {
                next_shard: 0,
                cutoff: 0,
            }),
        }
    }

    /// The locked shard of a card. Bytes the in-shard hash (the first 8)
    /// does not use pick it.
    fn shard(&self, card: &CardHash) -> MutexGuard<'_, Shard> {
        let i = u16::from_ne_bytes([card.0[14], card.0[15]]) as usize % SHARDS;
        lock(&self.shards[i])
    }

    /// Cards currently tracked.
    pub fn len(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the velocity, card-testing and decline rules' points for this
    /// card (reads only). The request being scored counts as one more.
    pub(super) fn score_history(&self, rules: &FraudRules, a: &Auth<'_>, s: &mut Score) {
        let now = secs32(a.now_s);
        let shard = self.shard(&a.card);
        let st = shard.get(&a.card);
        for (i, w) in rules.windows.iter().enumerate() {
            let (mut count, mut amount) = (1u64, a.amount_minor);
            if let Some(st) = st {
                let (c, m) = st.window_sum(i, now / w.bucket_s);
                count += c;
                amount = amount.saturating_add(m);
            }
            let over_count = count > w.max_count as u64;
            let over_amount = amount > w.max_amount;
            if over_count {
                s.reasons.insert(RuleId::VelocityCount);
            }
            if over_amount {
                s.reasons.insert(RuleId::VelocityAmount);
            }
            if over_count || over_amount {
                s.points = s.points.saturating_add(w.points);
            }
        }
        if let Some(t) = &rules.card_testing {
            let small = a.amount_minor <= t.small_amount;
            let tag = merchant_tag(a.merchant_id, small);
            let mut smalls = small as u32;
            // Distinct merchants among the recent events and this one.
            let mut distinct = arrayvec::ArrayVec::<u32, { RECENT_EVENTS + 1 }>::new();
            distinct.push(tag | 1);
            if let Some(st) = st {
                for r in &st.recent {
                    if within(r.at, now, t.window_s) {
                        smalls += r.tag & 1;
                        if !distinct.contains(&(r.tag | 1)) {
                            distinct.push(r.tag | 1);
                        }
                    }
                }
            }
            if smalls > t.max_small {
                s.add(RuleId::CardTestingSmall, t.points);
            }
            if distinct.len() as u32 > t.max_merchants {
                s.add(RuleId::CardTestingMerchants, t.points);
            }
        }
        if let (Some(d), Some(st)) = (&rules.declines, st) {
            let n = st
                .declines
                .iter()
                .filter(|&&at| within(at, now, d.window_s))
                .count() as u32;
            if n > d.max_declines {
                s.add(RuleId::RepeatedDeclines, d.points);
            }
        }
    }

    /// Records a request that was forwarded upstream (or approved in
    /// stand-in): it now counts towards the card's velocity and
    /// card-testing history.
    pub fn record_forwarded(&self, rules: &FraudRules, a: &Auth<'_>) {
        if !rules.tracks_cards() {
            return;
        }
        let now = secs32(a.now_s);
        // A card seen before (the common case) costs one map access.
        if let Some(st) = self.shard(&a.card).get_mut(&a.card) {
            st.record(rules, a, now);
            return;
        }
        if !self.make_room() {
            return;
        }
        let mut shard = self.shard(&a.card);
        let (st, added) = shard.get_or_insert(a.card);
        st.record(rules, a, now);
        if added {
            self.tracked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a host decline of a forwarded request for this card.
    pub fn record_decline(&self, card: CardHash, now_s: u64) {
        if let Some(st) = self.shard(&card).get_mut(&card) {
            let slot = st.declines_next as usize % RECENT_EVENTS;
            st.declines[slot] = secs32(now_s);
            st.declines_next = ((slot + 1) % RECENT_EVENTS) as u8;
        }
    }

    /// Keeps the map under its bound. Returns whether a new card may be
    /// added now. When full, one caller takes an eviction step: it removes
    /// the cards seen least recently from the next few shards (about a
    /// tenth of them, so a round of all shards brings the map to about
    /// 90 % of its bound), and the cost of a round is spread over many
    /// new cards. Meanwhile other callers skip tracking their new card
    /// rather than wait.
    fn make_room(&self) -> bool {
        if self.len() < self.max_cards {
            return true;
        }
        let Some(mut sweep) = crate::sync::try_lock(&self.sweep) else {
            return false;
        };
        let target = self.max_cards - self.max_cards / 10;
        let mut examined = 0;
        let mut visited = 0;
        while examined < SWEEP_STEP && visited < SHARDS {
            if sweep.next_shard == 0 {
                sweep.cutoff = self.eviction_cutoff(target);
            }
            let mut shard = lock(&self.shards[sweep.next_shard]);
            let before = shard.len();
            examined += before;
            let cutoff = sweep.cutoff;
            shard.0.retain(|st| age_key(st) > cutoff);
            self.tracked
                .fetch_sub(before - shard.len(), Ordering::Relaxed);
            drop(shard);
            sweep.next_shard = (sweep.next_shard + 1) % SHARDS;
            visited += 1;
        }
        self.len() < self.max_cards
    }

    /// The `age_key` at or under which cards go, estimated from a sample
    /// of every shard so that about `len - target` cards go.
    fn eviction_cutoff(&self, target: usize) -> u64 {
        let len = self.len().max(1);
        let share = 1.0 - target as f64 / len as f64;
        // On the stack: an eviction step runs inside `record_forwarded`.
        let mut sample = arrayvec::ArrayVec::<u64, { SAMPLE_PER_SHARD * SHARDS }>::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            sample.extend(shard.0.iter().take(SAMPLE_PER_SHARD).map(age_key));
        }
        if sample.is_empty() {
            return u64::MAX;
        }
        sample.sort_unstable();
        let n = ((sample.len() as f64 * share).ceil() as usize).clamp(1, sample.len());
        sample[n - 1]
    }
}

/// Orders cards for eviction: least recently seen first; cards seen in
/// the same second by hash, so a burst inside one second is thinned
/// rather than dropped whole.
fn age_key(st: &CardState) -> u64 {
    let mut low = [0u8; 4];
    low.copy_from_slice(&st.card.0[8..12]);
    ((st.last_seen as u64) << 32) | u32::from_ne_bytes(low) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running sums give what summing the ring gives, for any
    /// sequence of requests and any later time.
    #[test]
    fn running_sums_match_a_recount_of_the_ring() {
        let mut st = CardState::new(CardHash([7; 16]));
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let recount = |st: &CardState, now_index: u32| {
            let newest = st.newest[0];
            let age = now_index.saturating_sub(newest) as usize;
            let (mut c, mut a) = (0u64, 0u64);
            for k in 0..BUCKETS.saturating_sub(age) {
                let b = st.windows[0][newest.wrapping_sub(k as u32) as usize % BUCKETS];
                c += b.count();
                a += b.amount();
            }
            (c, a)
        };
        let mut now = 1_000u32;
        for _ in 0..5_000 {
            now += (next() % 5) as u32;
            st.window_add(0, now, next() % 10_000);
            for ahead in [0, 1, 3, 7, 8, 20] {
                assert_eq!(st.window_sum(0, now + ahead), recount(&st, now + ahead));
            }
        }
    }
}
