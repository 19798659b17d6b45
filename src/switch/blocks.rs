//! Cards and BINs an operator blocked (`POST /api/actions/block`): an
//! authorization of one is declined before routing with
//! `blocks.response_code` (62, "restricted card", by default), journaled
//! and counted (`switchyard_blocked_total{kind}`).
//!
//! A card is kept only as its keyed hash: the card hash the journal and
//! the store keep (HMAC-SHA-256 under `[security] card_hash_key`, else
//! `fraud.pan_key`, its first 16 bytes), so the PAN an operator gives is
//! never stored, and a blocked card can be found in the journal by the
//! same hash. A BIN is 6 to 8 digits, kept as given.
//!
//! [`BlockList`] is what terminals read (a part of each generation of
//! `Shared`: a block changes the list by publishing the next one, so the
//! hot path pays nothing more for it than a field read while the list is
//! empty). [`BlockStore`] is the operators' side: the entries, bounded by
//! `max_entries`, persisted in a small JSON file written atomically
//! (temporary file, fsync, rename, fsync of the directory) before a
//! change takes effect. The file holds the hashes, the BINs, who added
//! each and when, and the check value of the key they were made under:
//! hashes made under another key match nothing, so a file of another key
//! refuses the start rather than silently unblock its cards.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::security::card_hash::{CardHashKey, card_hash_128};
use crate::switch::config::{Section, table};

/// A blocked card or BIN, as matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Card,
    Bin,
}

impl BlockKind {
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Card => "card",
            BlockKind::Bin => "bin",
        }
    }
}

/// The blocks terminals check, one generation's.
pub struct BlockList {
    /// Keyed hashes of blocked cards.
    cards: HashSet<[u8; 16]>,
    /// Blocked BINs: `len << 32 | value`.
    bins: HashSet<u64>,
    /// Bit `n` set: some BIN of `n` digits is blocked.
    bin_lengths: u16,
    /// What a blocked card or BIN is answered.
    pub response_code: [u8; 2],
    counters: [metrics::Counter; 2],
}

fn bin_key(digits: &[u8]) -> Option<u64> {
    if !(MIN_BIN..=MAX_BIN).contains(&digits.len()) || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
    Some((digits.len() as u64) << 32 | value)
}

impl BlockList {
    /// No block, answered with `config`'s code should one come.
    pub fn empty(config: &BlocksConfig) -> BlockList {
        BlockList::of(&[], config.response_code)
    }

    fn of(entries: &[Entry], response_code: [u8; 2]) -> BlockList {
        let mut l = BlockList {
            cards: HashSet::new(),
            bins: HashSet::new(),
            bin_lengths: 0,
            response_code,
            counters: [
                metrics::counter!(crate::telemetry::BLOCKED, "kind" => "card"),
                metrics::counter!(crate::telemetry::BLOCKED, "kind" => "bin"),
            ],
        };
        for e in entries {
            match &e.what {
                Blocked::Card { card_hash } => {
                    if let Ok(h) = parse_hash(card_hash) {
                        l.cards.insert(h);
                    }
                }
                Blocked::Bin { bin } => {
                    if let Some(k) = bin_key(bin.as_bytes()) {
                        l.bins.insert(k);
                        l.bin_lengths |= 1 << bin.len();
                    }
                }
            }
        }
        l
    }

    /// Nothing blocked: the one check the hot path makes while so.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.cards.is_empty() && self.bins.is_empty()
    }

    /// Is this card (its digits) blocked, by its BIN or itself? The card
    /// is hashed under `key` only when some card is blocked. Counted.
    pub fn check(&self, pan: &[u8], key: &CardHashKey) -> Option<BlockKind> {
        self.check_hashed(pan, &card_hash_128(key, pan))
    }

    /// As [`BlockList::check`], with the card's hash made already (the
    /// terminal core makes it once per request: `Shared::card_hash`).
    pub fn check_hashed(&self, pan: &[u8], card: &[u8; 16]) -> Option<BlockKind> {
        let kind = self.find(pan, card)?;
        self.counters[kind as usize].increment(1);
        Some(kind)
    }

    fn find(&self, pan: &[u8], card: &[u8; 16]) -> Option<BlockKind> {
        if self.bin_lengths != 0 {
            for n in MIN_BIN..=MAX_BIN.min(pan.len()) {
                if self.bin_lengths & (1 << n) != 0
                    && bin_key(&pan[..n]).is_some_and(|k| self.bins.contains(&k))
                {
                    return Some(BlockKind::Bin);
                }
            }
        }
        if !self.cards.is_empty() && self.cards.contains(card) {
            return Some(BlockKind::Card);
        }
        None
    }

    pub fn cards(&self) -> usize {
        self.cards.len()
    }

    pub fn bins(&self) -> usize {
        self.bins.len()
    }
}

/// Shortest and longest BIN that can be blocked.
pub const MIN_BIN: usize = 6;
pub const MAX_BIN: usize = 8;

/// What an entry blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Blocked {
    /// The card's keyed hash, 32 hex digits.
    Card {
        card_hash: String,
    },
    Bin {
        bin: String,
    },
}

/// One block, as kept and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub what: Blocked,
    /// Unix seconds.
    pub added_at: u64,
    /// The operator who added it (`null` without operators).
    pub added_by: Option<String>,
}

/// The file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    /// The check value of the card-hash key the hashes were made under.
    key_check: String,
    entries: Vec<Entry>,
}

/// Why a block or unblock was refused.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("the block list holds {0} entries already (blocks.max_entries)")]
    Full(usize),
    #[error("no such block")]
    NotFound,
    #[error("{0}")]
    Invalid(&'static str),
    #[error("the block list could not be written, nothing changed: {0}")]
    Write(String),
}

/// The operators' side of the blocks: the entries and their file.
pub struct BlockStore {
    path: PathBuf,
    max_entries: usize,
    key_check: String,
    entries: Vec<Entry>,
}

/// What a block names, checked: a card (its digits) or a BIN.
pub enum Target<'a> {
    Card(&'a [u8]),
    Bin(&'a str),
}

impl<'a> Target<'a> {
    /// From what an operator sent: `pan` (12-19 digits, Luhn-valid) or
    /// `bin` (6-8 digits), exactly one. The error never holds the value.
    pub fn parse(pan: Option<&'a str>, bin: Option<&'a str>) -> Result<Target<'a>, BlockError> {
        match (pan, bin) {
            (Some(p), None) => {
                let d = p.as_bytes();
                if !(12..=19).contains(&d.len()) || !d.iter().all(u8::is_ascii_digit) {
                    return Err(BlockError::Invalid("`pan` is not 12 to 19 digits"));
                }
                if !crate::iso8583::values::luhn_ok(d) {
                    return Err(BlockError::Invalid("`pan` fails the Luhn check"));
                }
                Ok(Target::Card(d))
            }
            (None, Some(b)) => {
                if bin_key(b.as_bytes()).is_none() {
                    return Err(BlockError::Invalid("`bin` is not 6 to 8 digits"));
                }
                Ok(Target::Bin(b))
            }
            _ => Err(BlockError::Invalid(
                "give exactly one of `pan` (the card's digits) or `bin` (6 to 8 digits)",
            )),
        }
    }
}

impl BlockStore {
    /// Reads `config.file` (none yet: no block). Refused when it does not
    /// read, holds more than `max_entries`, or was made under another
    /// card-hash key than `key`.
    pub fn open(config: &BlocksConfig, key: &CardHashKey) -> Result<BlockStore, String> {
        let key_check = data_encoding::HEXLOWER.encode(&key.check_value());
        let mut store = BlockStore {
            path: config.file.clone(),
            max_entries: config.max_entries,
            key_check,
            entries: Vec::new(),
        };
        let text = match std::fs::read_to_string(&config.file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => return Err(format!("blocks.file {}: {e}", config.file.display())),
        };
        let file: File = serde_json::from_str(&text).map_err(|e| {
            format!(
                "blocks.file {}: not a block list (line {}, column {})",
                config.file.display(),
                e.line(),
                e.column()
            )
        })?;
        if file.version != 1 {
            return Err(format!(
                "blocks.file {}: version {} is not known (1 is)",
                config.file.display(),
                file.version
            ));
        }
        let cards = file
            .entries
            .iter()
            .filter(|e| matches!(e.what, Blocked::Card { .. }))
            .count();
        if cards > 0 && file.key_check != store.key_check {
            return Err(format!(
                "blocks.file {}: its {cards} card(s) were blocked under another card-hash key \
                 (check value {}, this one's {}): they would match nothing. Block them again \
                 under this key, or move the file away to start without them",
                config.file.display(),
                file.key_check,
                store.key_check
            ));
        }
        for e in &file.entries {
            let ok = match &e.what {
                Blocked::Card { card_hash } => parse_hash(card_hash).is_ok(),
                Blocked::Bin { bin } => bin_key(bin.as_bytes()).is_some(),
            };
            if !ok {
                return Err(format!(
                    "blocks.file {}: an entry is neither a 32 hex digit card hash nor a 6-8 digit BIN",
                    config.file.display()
                ));
            }
        }
        if file.entries.len() > store.max_entries {
            return Err(format!(
                "blocks.file {}: {} entries, more than blocks.max_entries ({})",
                config.file.display(),
                file.entries.len(),
                store.max_entries
            ));
        }
        store.entries = file.entries;
        Ok(store)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What terminals check, answered with `response_code`.
    pub fn list(&self, response_code: [u8; 2]) -> BlockList {
        BlockList::of(&self.entries, response_code)
    }

    /// The entry `target` is or would be.
    pub fn blocked_of(target: &Target<'_>, key: &CardHashKey) -> Blocked {
        match target {
            Target::Card(d) => Blocked::Card {
                card_hash: data_encoding::HEXLOWER.encode(&card_hash_128(key, d)),
            },
            Target::Bin(b) => Blocked::Bin {
                bin: (*b).to_owned(),
            },
        }
    }

    /// Adds a block and writes the file; `Ok(false)` when it was there
    /// already (nothing written). On a write failure nothing changes.
    pub fn add(&mut self, what: Blocked, by: Option<&str>, at_s: u64) -> Result<bool, BlockError> {
        if self.entries.iter().any(|e| e.what == what) {
            return Ok(false);
        }
        if self.entries.len() >= self.max_entries {
            return Err(BlockError::Full(self.max_entries));
        }
        let mut next = self.entries.clone();
        next.push(Entry {
            what,
            added_at: at_s,
            added_by: by.map(str::to_owned),
        });
        self.save(&next)?;
        self.entries = next;
        Ok(true)
    }

    /// Removes a block and writes the file.
    pub fn remove(&mut self, what: &Blocked) -> Result<Entry, BlockError> {
        let Some(i) = self.entries.iter().position(|e| &e.what == what) else {
            return Err(BlockError::NotFound);
        };
        let mut next = self.entries.clone();
        let removed = next.remove(i);
        self.save(&next)?;
        self.entries = next;
        Ok(removed)
    }

    fn save(&self, entries: &[Entry]) -> Result<(), BlockError> {
        let file = File {
            version: 1,
            key_check: self.key_check.clone(),
            entries: entries.to_vec(),
        };
        let mut text =
            serde_json::to_string_pretty(&file).map_err(|e| BlockError::Write(e.to_string()))?;
        text.push('\n');
        crate::files::write_atomically(&self.path, text.as_bytes()).map_err(BlockError::Write)
    }
}

fn parse_hash(hex: &str) -> Result<[u8; 16], ()> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(hex.as_bytes())
        .map_err(|_| ())?;
    bytes.try_into().map_err(|_| ())
}

// ---------------------------------------------------------------------------
// Its config: the `[blocks]` table.

#[derive(Clone, Debug)]
pub struct BlocksConfig {
    /// Where the blocks are kept (made at the first block).
    pub file: PathBuf,
    /// What a blocked card or BIN is answered (a reload may change it).
    pub response_code: [u8; 2],
    /// Most blocks kept.
    pub max_entries: usize,
}

table! {
    pub(crate) BlocksFile {
        file: String = "data/blocks.json".into();
        response_code: String = "62".into();
        max_entries: usize = 10_000, in 1..=1_000_000;
    }
}

impl BlocksFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> BlocksConfig {
        self.check_ranges(s);
        if self.file.is_empty() {
            s.problem("file", "an empty path");
        }
        let code = self.response_code.as_bytes();
        let response_code = match code {
            [a, b] if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => [*a, *b],
            _ => {
                s.problem(
                    "response_code",
                    format!(
                        "`{}` is not a response code (two letters or digits)",
                        self.response_code
                    ),
                );
                *b"62"
            }
        };
        BlocksConfig {
            file: PathBuf::from(self.file),
            response_code,
            max_entries: self.max_entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CardHashKey {
        CardHashKey::new(&[7; 16]).expect("key")
    }

    fn config(dir: &Path) -> BlocksConfig {
        BlocksConfig {
            file: dir.join("blocks.json"),
            response_code: *b"62",
            max_entries: 3,
        }
    }

    const PAN: &[u8] = b"4761739001010010";

    #[test]
    fn a_card_and_a_bin_are_found_and_nothing_else() {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = BlockStore::open(&config(dir.path()), &key()).expect("opens");
        assert!(s.list(*b"62").is_empty());
        let card = BlockStore::blocked_of(&Target::Card(PAN), &key());
        assert!(s.add(card.clone(), Some("olga"), 1).expect("added"));
        assert!(!s.add(card.clone(), Some("olga"), 2).expect("already"));
        let l = s.list(*b"62");
        assert_eq!(l.check(PAN, &key()), Some(BlockKind::Card));
        assert_eq!(l.check(b"4761739001010028", &key()), None);
        s.add(
            BlockStore::blocked_of(&Target::Bin("5500001"), &key()),
            None,
            3,
        )
        .expect("added");
        let l = s.list(*b"62");
        assert_eq!(l.check(b"5500001234567890", &key()), Some(BlockKind::Bin));
        assert_eq!(l.check(b"5500002234567890", &key()), None);
        assert_eq!((l.cards(), l.bins()), (1, 1));
        // The file holds the hash, never the digits.
        let text = std::fs::read_to_string(dir.path().join("blocks.json")).expect("written");
        assert!(!text.contains("4761739001010010"), "{text}");
        assert!(text.contains("5500001"));
        // Read again after a restart; bounded.
        let mut again = BlockStore::open(&config(dir.path()), &key()).expect("opens");
        assert_eq!(again.entries().len(), 2);
        again
            .add(
                BlockStore::blocked_of(&Target::Bin("666666"), &key()),
                None,
                4,
            )
            .expect("third");
        assert!(matches!(
            again.add(
                BlockStore::blocked_of(&Target::Bin("777777"), &key()),
                None,
                5
            ),
            Err(BlockError::Full(3))
        ));
        again.remove(&card).expect("removed");
        assert!(matches!(again.remove(&card), Err(BlockError::NotFound)));
        assert_eq!(again.list(*b"62").check(PAN, &key()), None);
    }

    #[test]
    fn a_file_of_another_key_refuses_the_start() {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = BlockStore::open(&config(dir.path()), &key()).expect("opens");
        s.add(BlockStore::blocked_of(&Target::Card(PAN), &key()), None, 1)
            .expect("added");
        let other = CardHashKey::new(&[8; 16]).expect("key");
        let e = BlockStore::open(&config(dir.path()), &other)
            .err()
            .expect("refused");
        assert!(e.contains("another card-hash key"), "{e}");
    }

    #[test]
    fn what_an_operator_sends_is_checked_without_echoing_it() {
        for (pan, bin) in [
            (Some("4761739001010011"), None),
            (Some("47617390"), None),
            (None, Some("12345")),
            (None, Some("12345a")),
            (Some("4761739001010010"), Some("476173")),
            (None, None),
        ] {
            let e = Target::parse(pan, bin).err().expect("refused").to_string();
            assert!(!e.contains("476173900101001"), "{e}");
        }
        assert!(matches!(
            Target::parse(Some("4761739001010010"), None),
            Ok(Target::Card(_))
        ));
        assert!(matches!(
            Target::parse(None, Some("47617390")),
            Ok(Target::Bin(_))
        ));
    }
}
