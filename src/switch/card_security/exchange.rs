//! Key exchange over 0800 with DE70 161: new working keys under a master
//! key, each with its check value, in DE48.
//!
//! DE48 holds one entry per key, one after the other, each 41 characters:
//! a 3-letter tag (`TPK`, `TAK` from the switch to a terminal; `ZPK`,
//! `ZAK` from a host to the switch), the double-length TDES key encrypted
//! under the master key (TMK or ZMK) in ECB as 32 hex digits, and its KCV
//! as 6 hex digits. The receiver decrypts, checks the KCV, and only then
//! takes the key. The replaced key stays valid for checks during
//! `[security] key_overlap_ms`, for what the other side sent before it
//! had the new one.

use crate::security::Kcv;

/// DE70 of a key change.
pub const KEY_CHANGE: u16 = 161;

const ENTRY_LEN: usize = 3 + 32 + 6;

/// One key in DE48.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangedKey {
    pub tag: [u8; 3],
    /// The key under the master key, 32 hex digits.
    pub under: String,
    pub kcv: Kcv,
}

/// The entries of a key change's DE48.
pub fn parse(de48: &[u8]) -> Result<Vec<ExchangedKey>, String> {
    if de48.is_empty() || de48.len() % ENTRY_LEN != 0 {
        return Err(format!(
            "DE48 of a key change is entries of {ENTRY_LEN} characters (tag, 32 hex digits, KCV); it has {}",
            de48.len()
        ));
    }
    de48.chunks(ENTRY_LEN)
        .enumerate()
        .map(|(i, e)| {
            let text = std::str::from_utf8(e).map_err(|_| format!("DE48 entry {i}: not text"))?;
            let (tag, rest) = text.split_at(3);
            let (under, kcv) = rest.split_at(32);
            if !tag.bytes().all(|c| c.is_ascii_uppercase()) {
                return Err(format!("DE48 entry {i}: tag {tag:?} is not three capitals"));
            }
            if !under.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!(
                    "DE48 entry {i} ({tag}): the key is not 32 hex digits"
                ));
            }
            let kcv = Kcv::parse(kcv).map_err(|e| format!("DE48 entry {i} ({tag}): KCV: {e}"))?;
            let mut t = [0u8; 3];
            t.copy_from_slice(tag.as_bytes());
            Ok(ExchangedKey {
                tag: t,
                under: under.to_ascii_uppercase(),
                kcv,
            })
        })
        .collect()
}

/// DE48 for `keys`.
pub fn format(keys: &[ExchangedKey]) -> String {
    let mut out = String::with_capacity(keys.len() * ENTRY_LEN);
    for k in keys {
        out.push_str(&String::from_utf8_lossy(&k.tag));
        out.push_str(&k.under);
        out.push_str(&k.kcv.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_ones_are_named() {
        let keys = vec![
            ExchangedKey {
                tag: *b"TPK",
                under: "0123456789ABCDEF0123456789ABCDEF".into(),
                kcv: Kcv::parse("08D7B4").expect("kcv"),
            },
            ExchangedKey {
                tag: *b"TAK",
                under: "FEDCBA9876543210FEDCBA9876543210".into(),
                kcv: Kcv::parse("A1B2C3").expect("kcv"),
            },
        ];
        let text = format(&keys);
        assert_eq!(text.len(), 82);
        assert_eq!(parse(text.as_bytes()), Ok(keys));
        assert!(parse(b"TPK0123").unwrap_err().contains("41 characters"));
        let bad = format!("TPK{}ZZZZZZ", "0".repeat(32));
        assert!(parse(bad.as_bytes()).unwrap_err().contains("KCV"));
    }
}
