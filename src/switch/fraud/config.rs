//! The `[fraud]` table: score thresholds, the card-hash key, and each
//! rule's limits (amounts, merchant categories, velocity windows, card
//! testing, blocked cards and ranges, countries, repeated declines).

use std::time::Duration;

use crate::switch::config::{Section, is_digits, table};

#[derive(Clone, Debug)]
pub struct VelocityRule {
    pub window: Duration,
    /// More than this many requests in the window adds `points`.
    pub max_count: u32,
    /// More than this total amount in the window adds `points`.
    pub max_amount: u64,
    pub points: u16,
}

#[derive(Clone, Debug)]
pub struct MccLimit {
    pub mcc: u16,
    pub max_amount: u64,
    pub points: u16,
}

#[derive(Clone, Debug)]
pub struct CardTestingRule {
    pub window: Duration,
    /// Amounts at or under this count as "small".
    pub small_amount: u64,
    /// More small amounts than this in the window adds `points`.
    pub max_small: u32,
    /// More distinct merchants (DE42) than this in the window adds `points`.
    pub max_merchants: u32,
    pub points: u16,
}

#[derive(Clone, Debug)]
pub struct DeclineRule {
    pub window: Duration,
    /// More declines than this in the window adds `points`.
    pub max_declines: u32,
    pub points: u16,
}

#[derive(Clone, Debug)]
pub struct FraudConfig {
    pub enabled: bool,
    /// Forward, but flag in the journal and metrics.
    pub review_points: u16,
    /// Answer 59 without forwarding.
    pub decline_points: u16,
    /// 128-bit key for the keyed hash of card numbers (hex).
    pub pan_key: [u8; 16],
    /// Cards whose velocity is tracked at once (least recently seen go
    /// first when full).
    pub max_tracked_cards: usize,
    pub max_amount: u64,
    pub amount_points: u16,
    pub mcc_limits: Vec<MccLimit>,
    pub velocity: Vec<VelocityRule>,
    pub card_testing: Option<CardTestingRule>,
    pub blocked_bins: Vec<String>,
    /// Keyed hashes (hex, as the journal shows them) of blocked cards.
    pub blocked_cards: Vec<String>,
    pub blocked_points: u16,
    /// Issuing country by BIN prefix (longest match).
    pub bin_countries: Vec<(String, u16)>,
    pub country_mismatch_points: u16,
    pub declines: Option<DeclineRule>,
}

table! {
    pub(crate) FraudFile {
        enabled: bool = true;
        review_points: u16 = 50;
        decline_points: u16 = 80;
        pan_key: Option<String> = None;
        max_tracked_cards: usize = 1_000_000, in 1..=100_000_000;
        max_amount: u64 = u64::MAX;
        amount_points: u16 = 30;
        mcc_limits: Vec<MccLimitFile> = Vec::new();
        velocity: Vec<VelocityFile> = Vec::new();
        card_testing: Option<CardTestingFile> = None;
        blocked_bins: Vec<String> = Vec::new();
        blocked_cards: Vec<String> = Vec::new();
        blocked_points: u16 = 100;
        bin_countries: Vec<BinCountryFile> = Vec::new();
        country_mismatch_points: u16 = 20;
        declines: Option<DeclinesFile> = None;
    }
}

table! {
    MccLimitFile {
        mcc: Option<u16> = None;
        max_amount: Option<u64> = None;
        /// `None`: the fraud section's `amount_points`.
        points: Option<u16> = None;
    }
}

table! {
    VelocityFile {
        window_s: Option<u64> = None, in 1..=MAX_WINDOW_S;
        max_count: u32 = u32::MAX;
        max_amount: u64 = u64::MAX;
        points: u16 = 30;
    }
}

table! {
    CardTestingFile {
        window_s: u64 = 600, in 1..=MAX_WINDOW_S;
        small_amount: u64 = 200;
        max_small: u32 = 3;
        max_merchants: u32 = 3;
        points: u16 = 50;
    }
}

table! {
    BinCountryFile {
        prefix: Option<String> = None;
        country: Option<u16> = None;
    }
}

table! {
    DeclinesFile {
        window_s: u64 = 3600, in 1..=MAX_WINDOW_S;
        max_declines: u32 = 3;
        points: u16 = 40;
    }
}

/// A fixed development key, used only when the config sets none (the
/// default config says so loudly).
pub const DEV_PAN_KEY: [u8; 16] = *b"switchyard-dev!!";

/// The key in the shipped `config/switchyard.toml` ("Switchyard dev k"):
/// public, so as much a development key as the built-in one.
pub const SHIPPED_DEV_PAN_KEY: [u8; 16] = *b"Switchyard dev k";

/// Longest fraud window: a month (the fraud state counts in `u32` seconds).
const MAX_WINDOW_S: u64 = 30 * 86_400;

/// Limits that size fixed arrays in the fraud engine.
pub mod crate_limits {
    pub const MAX_VELOCITY_WINDOWS: usize = 4;
    /// Recent events kept per card for the card-testing and decline rules;
    /// their thresholds must stay under it.
    pub const RECENT_EVENTS: usize = 8;
}

impl FraudFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> FraudConfig {
        self.check_ranges(s);
        let pan_key = match &self.pan_key {
            None => DEV_PAN_KEY,
            Some(hex) => {
                let key = crate::hex::parse_hex(hex)
                    .ok()
                    .and_then(|b| b.try_into().ok());
                let wrong = Err("expected 32 hex digits (a 128-bit key)".to_owned());
                s.ok("pan_key", key.map_or(wrong, Ok), DEV_PAN_KEY)
            }
        };
        if self.decline_points < self.review_points {
            s.problem("decline_points", "must not be less than review_points");
        }
        for (i, b) in self.blocked_bins.iter().enumerate() {
            if !is_digits(b, 1, 11) {
                s.problem(
                    &format!("blocked_bins[{i}]"),
                    format!("`{b}` is not 1 to 11 digits"),
                );
            }
        }
        for (i, c) in self.blocked_cards.iter().enumerate() {
            if crate::switch::fraud::CardHash::from_hex(c).is_none() {
                let message = "a card hash is 32 hex digits, as the journal shows it";
                s.problem(&format!("blocked_cards[{i}]"), message);
            }
        }
        let mut mcc_limits = Vec::new();
        for (i, mut m) in self.mcc_limits.into_iter().enumerate() {
            let s = &mut s.sub(&format!("mcc_limits[{i}]"));
            m.check_ranges(s);
            match (m.mcc, m.max_amount) {
                (Some(mcc), Some(max_amount)) => mcc_limits.push(MccLimit {
                    mcc,
                    max_amount,
                    points: m.points.unwrap_or(self.amount_points),
                }),
                _ => s.problem("", "needs `mcc` and `max_amount`"),
            }
        }
        let mut velocity = Vec::new();
        for (i, mut v) in self.velocity.into_iter().enumerate() {
            let s = &mut s.sub(&format!("velocity[{i}]"));
            v.check_ranges(s);
            if v.window_s.is_none() {
                s.problem("window_s", "required, at least 1");
            }
            velocity.push(VelocityRule {
                window: Duration::from_secs(v.window_s.unwrap_or(MAX_WINDOW_S)),
                max_count: v.max_count,
                max_amount: v.max_amount,
                points: v.points,
            });
        }
        if velocity.len() > crate_limits::MAX_VELOCITY_WINDOWS {
            let message = format!("at most {} windows", crate_limits::MAX_VELOCITY_WINDOWS);
            s.problem("velocity", message);
        }
        let card_testing = self.card_testing.map(|mut c| {
            let s = &mut s.sub("card_testing");
            c.check_ranges(s);
            below_recent_events(s, "max_small", c.max_small);
            below_recent_events(s, "max_merchants", c.max_merchants);
            CardTestingRule {
                window: Duration::from_secs(c.window_s),
                small_amount: c.small_amount,
                max_small: c.max_small,
                max_merchants: c.max_merchants,
                points: c.points,
            }
        });
        let mut bin_countries = Vec::new();
        for (i, mut b) in self.bin_countries.into_iter().enumerate() {
            let s = &mut s.sub(&format!("bin_countries[{i}]"));
            b.check_ranges(s);
            match (b.prefix, b.country) {
                (Some(p), Some(c)) if is_digits(&p, 1, 11) && c <= 999 => {
                    bin_countries.push((p, c))
                }
                (Some(_), Some(_)) => s.problem(
                    "",
                    "`prefix` is 1 to 11 digits and `country` ISO 3166 numeric (0..=999)",
                ),
                _ => s.problem("", "needs `prefix` and `country`"),
            }
        }
        let declines = self.declines.map(|mut d| {
            let s = &mut s.sub("declines");
            d.check_ranges(s);
            below_recent_events(s, "max_declines", d.max_declines);
            DeclineRule {
                window: Duration::from_secs(d.window_s),
                max_declines: d.max_declines,
                points: d.points,
            }
        });
        FraudConfig {
            enabled: self.enabled,
            review_points: self.review_points,
            decline_points: self.decline_points,
            pan_key,
            max_tracked_cards: self.max_tracked_cards,
            max_amount: self.max_amount,
            amount_points: self.amount_points,
            mcc_limits,
            velocity,
            card_testing,
            blocked_bins: self.blocked_bins,
            blocked_cards: self.blocked_cards,
            blocked_points: self.blocked_points,
            bin_countries,
            country_mismatch_points: self.country_mismatch_points,
            declines,
        }
    }
}

/// The card-testing and decline thresholds count events kept per card.
fn below_recent_events(s: &mut Section, key: &str, v: u32) {
    if v as usize >= crate_limits::RECENT_EVENTS {
        s.problem(key, format!("at most {}", crate_limits::RECENT_EVENTS - 1));
    }
}
