//! Fraud scoring on the hot path, in memory.
//!
//! [`score`] reads the rules (an immutable [`FraudRules`] snapshot) and the
//! card's recent history ([`FraudState`]) and returns points and the rules
//! that fired; [`FraudRules::decide`] turns points into allow / review /
//! decline. Scoring never writes: the history of a card is updated by
//! [`FraudState::record_forwarded`] only for requests handed on to be
//! forwarded upstream or approved in stand-in (so a request the switch
//! declines at once, for fraud or any other reason, does not count towards
//! velocity), and by
//! [`FraudState::record_decline`] when the host declines one.
//!
//! Cards are identified by a keyed 128-bit hash of the PAN ([`card_hash`]):
//! the map never holds a card number.

mod config;
mod state;

pub(crate) use config::FraudFile;
pub use config::{
    CardTestingRule, DEV_PAN_KEY, DeclineRule, FraudConfig, MccLimit, SHIPPED_DEV_PAN_KEY,
    VelocityRule, crate_limits,
};
pub use state::{CardHash, FraudState, card_hash};

use self::crate_limits::MAX_VELOCITY_WINDOWS;
use crate::switch::router::PrefixMap;

/// One rule of the engine; `name()` is the label in metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RuleId {
    /// Amount over the global limit.
    Amount = 0,
    /// Amount over the limit of the merchant category (DE18).
    MccAmount,
    /// More requests than allowed in a velocity window.
    VelocityCount,
    /// More total amount than allowed in a velocity window.
    VelocityAmount,
    /// Several small amounts on one card in a short window.
    CardTestingSmall,
    /// Several distinct merchants (DE42) for one card in a short window.
    CardTestingMerchants,
    BlockedBin,
    BlockedCard,
    /// Terminal country differs from the card's issuing country.
    CountryMismatch,
    /// Several host declines for one card in a window.
    RepeatedDeclines,
}

impl RuleId {
    pub const ALL: [RuleId; 10] = [
        RuleId::Amount,
        RuleId::MccAmount,
        RuleId::VelocityCount,
        RuleId::VelocityAmount,
        RuleId::CardTestingSmall,
        RuleId::CardTestingMerchants,
        RuleId::BlockedBin,
        RuleId::BlockedCard,
        RuleId::CountryMismatch,
        RuleId::RepeatedDeclines,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RuleId::Amount => "amount",
            RuleId::MccAmount => "mcc_amount",
            RuleId::VelocityCount => "velocity_count",
            RuleId::VelocityAmount => "velocity_amount",
            RuleId::CardTestingSmall => "card_testing_small",
            RuleId::CardTestingMerchants => "card_testing_merchants",
            RuleId::BlockedBin => "blocked_bin",
            RuleId::BlockedCard => "blocked_card",
            RuleId::CountryMismatch => "country_mismatch",
            RuleId::RepeatedDeclines => "repeated_declines",
        }
    }
}

/// The rules that fired, as a bit set (no allocation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reasons(u16);

impl Reasons {
    /// From [`Reasons::bits`] (the analytics event's).
    pub fn from_bits(bits: u16) -> Reasons {
        Reasons(bits)
    }

    pub fn insert(&mut self, r: RuleId) {
        self.0 |= 1 << r as u8;
    }

    pub fn contains(self, r: RuleId) -> bool {
        self.0 & (1 << r as u8) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = RuleId> {
        RuleId::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// The raw bit set (bit n = `RuleId` n), for compact records.
    pub fn bits(self) -> u16 {
        self.0
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Score {
    pub points: u16,
    pub reasons: Reasons,
}

impl Score {
    fn add(&mut self, rule: RuleId, points: u16) {
        self.points = self.points.saturating_add(points);
        self.reasons.insert(rule);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Forward, but flag for review (metrics, journal).
    Review,
    /// Answer 59 without forwarding.
    Decline,
}

/// What scoring needs to know about one authorization or purchase.
#[derive(Clone, Copy, Debug)]
pub struct Auth<'a> {
    pub card: CardHash,
    /// ASCII digits; only its prefix is read (BIN rules).
    pub pan: &'a [u8],
    pub amount_minor: u64,
    /// Merchant category code (DE18).
    pub mcc: Option<u16>,
    /// Card acceptor id (DE42), trimmed.
    pub merchant_id: &'a [u8],
    /// ISO 3166 numeric country of the terminal (config, else DE19).
    pub terminal_country: Option<u16>,
    pub now_s: u64,
}

/// A velocity window as the engine uses it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// Width of one of the window's buckets, in seconds.
    pub bucket_s: u32,
    pub max_count: u32,
    pub max_amount: u64,
    pub points: u16,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct CardTesting {
    pub window_s: u32,
    pub small_amount: u64,
    pub max_small: u32,
    pub max_merchants: u32,
    pub points: u16,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Declines {
    pub window_s: u32,
    pub max_declines: u32,
    pub points: u16,
}

/// An immutable snapshot of the rules, built once from config. It sits in
/// an `ArcSwap` so that a reload could swap it whole without blocking a
/// lookup; no reload exists yet (a change of rules is a restart).
#[derive(Clone, Debug)]
pub struct FraudRules {
    enabled: bool,
    review_points: u16,
    decline_points: u16,
    max_amount: u64,
    amount_points: u16,
    /// (mcc, max amount, points); a handful, scanned linearly.
    mcc_limits: Vec<(u16, u64, u16)>,
    pub(crate) windows: arrayvec::ArrayVec<Window, MAX_VELOCITY_WINDOWS>,
    pub(crate) card_testing: Option<CardTesting>,
    pub(crate) declines: Option<Declines>,
    blocked_bins: PrefixMap<()>,
    /// Sorted, for binary search.
    blocked_cards: Vec<CardHash>,
    blocked_points: u16,
    bin_countries: PrefixMap<u16>,
    country_mismatch_points: u16,
}

impl FraudRules {
    /// Builds the rules from a validated config (entries that config
    /// validation would reject are skipped rather than trusted).
    pub fn from_config(c: &FraudConfig) -> FraudRules {
        let secs = |d: std::time::Duration| d.as_secs().clamp(1, u32::MAX as u64) as u32;
        let mut blocked_bins = PrefixMap::new();
        for b in &c.blocked_bins {
            let _ = blocked_bins.insert(b, ());
        }
        let mut bin_countries = PrefixMap::new();
        for (prefix, country) in &c.bin_countries {
            let _ = bin_countries.insert(prefix, *country);
        }
        let mut blocked_cards: Vec<CardHash> = c
            .blocked_cards
            .iter()
            .filter_map(|h| CardHash::from_hex(h))
            .collect();
        blocked_cards.sort_unstable();
        FraudRules {
            enabled: c.enabled,
            review_points: c.review_points,
            decline_points: c.decline_points,
            max_amount: c.max_amount,
            amount_points: c.amount_points,
            mcc_limits: c
                .mcc_limits
                .iter()
                .map(|m| (m.mcc, m.max_amount, m.points))
                .collect(),
            windows: c
                .velocity
                .iter()
                .take(MAX_VELOCITY_WINDOWS)
                .map(|v| {
                    let window_s = secs(v.window);
                    Window {
                        bucket_s: window_s.div_ceil(state::BUCKETS as u32).max(1),
                        max_count: v.max_count,
                        max_amount: v.max_amount,
                        points: v.points,
                    }
                })
                .collect(),
            card_testing: c.card_testing.as_ref().map(|t| CardTesting {
                window_s: secs(t.window),
                small_amount: t.small_amount,
                max_small: t.max_small,
                max_merchants: t.max_merchants,
                points: t.points,
            }),
            declines: c.declines.as_ref().map(|d| Declines {
                window_s: secs(d.window),
                max_declines: d.max_declines,
                points: d.points,
            }),
            blocked_bins,
            blocked_cards,
            blocked_points: c.blocked_points,
            bin_countries,
            country_mismatch_points: c.country_mismatch_points,
        }
    }

    /// Whether any rule reads or writes the per-card history.
    pub fn tracks_cards(&self) -> bool {
        self.enabled
            && (!self.windows.is_empty() || self.card_testing.is_some() || self.declines.is_some())
    }

    /// A score with no reasons is always allowed, whatever the thresholds.
    pub fn decide(&self, score: &Score) -> Decision {
        if score.reasons.is_empty() {
            Decision::Allow
        } else if score.points >= self.decline_points {
            Decision::Decline
        } else if score.points >= self.review_points {
            Decision::Review
        } else {
            Decision::Allow
        }
    }
}

/// Scores one request. Reads only; costs a hash-map read of the card's
/// history and a few comparisons (see `benches/fraud.rs`).
pub fn score(rules: &FraudRules, a: &Auth<'_>, state: &FraudState) -> Score {
    let mut s = Score::default();
    if !rules.enabled {
        return s;
    }
    if a.amount_minor > rules.max_amount {
        s.add(RuleId::Amount, rules.amount_points);
    }
    if let Some(mcc) = a.mcc
        && let Some(&(_, max, points)) = rules.mcc_limits.iter().find(|m| m.0 == mcc)
        && a.amount_minor > max
    {
        s.add(RuleId::MccAmount, points);
    }
    if rules.blocked_bins.longest(a.pan).is_some() {
        s.add(RuleId::BlockedBin, rules.blocked_points);
    }
    if !rules.blocked_cards.is_empty() && rules.blocked_cards.binary_search(&a.card).is_ok() {
        s.add(RuleId::BlockedCard, rules.blocked_points);
    }
    if let Some(terminal) = a.terminal_country
        && let Some(&issuer) = rules.bin_countries.longest(a.pan)
        && issuer != terminal
    {
        s.add(RuleId::CountryMismatch, rules.country_mismatch_points);
    }
    if rules.tracks_cards() {
        state.score_history(rules, a, &mut s);
    }
    s
}

#[cfg(test)]
mod tests;
