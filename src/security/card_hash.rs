//! The keyed card hash for what is kept at rest (the journal, the store):
//! HMAC-SHA-256 of the PAN under a secret key, the "keyed cryptographic
//! hash" PCI DSS 4.0 requirement 3.5.1.1 asks for. A plain hash of a PAN
//! is no protection (the PAN space is small enough to enumerate); a keyed
//! one is, while the key stays secret.
//!
//! The journal and the store keep [`card_hash_128`]: the tag truncated to
//! its first 128 bits (NIST SP 800-107 allows truncated HMAC tags; 128
//! bits leave no collision to find among the world's cards). The fraud
//! scorer's in-memory map keeps its faster SipHash: it never leaves the
//! process. The key comes from the key store (`[security]
//! card_hash_key`, a key of type `hmac`), or, without one, from
//! `fraud.pan_key`.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The card hash key: 16 to 64 bytes, wiped on drop, shown only by its
/// check value (the first 3 bytes of its HMAC over 16 zero bytes).
pub struct CardHashKey {
    /// The HMAC state after the key's inner and outer pads, kept instead
    /// of the key: every request hashes its card, and keying HMAC each
    /// time cost two more SHA-256 blocks and the pad work on the hot path.
    /// As secret as the key, so wiped on drop.
    keyed: Hmac<Sha256>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a card hash key is 16 to 64 bytes, not {0}")]
pub struct CardHashKeyLength(pub usize);

impl CardHashKey {
    pub fn new(key: &[u8]) -> Result<CardHashKey, CardHashKeyLength> {
        if !(16..=64).contains(&key.len()) {
            return Err(CardHashKeyLength(key.len()));
        }
        let keyed = match Hmac::<Sha256>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes a key of any length"),
        };
        Ok(CardHashKey { keyed })
    }

    fn mac(&self) -> Hmac<Sha256> {
        self.keyed.clone()
    }

    pub fn check_value(&self) -> [u8; 3] {
        let mut m = self.mac();
        m.update(&[0u8; 16]);
        let out = m.finalize().into_bytes();
        [out[0], out[1], out[2]]
    }
}

impl Drop for CardHashKey {
    fn drop(&mut self) {
        // SAFETY: `keyed` is plain data (hash words, a block buffer and
        // counters: no pointer, no drop glue), for which all zeros is a
        // valid value, and we hold it exclusively; it is not used again.
        unsafe { zeroize::zeroize_flat_type(&mut self.keyed) };
    }
}

impl fmt::Debug for CardHashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.check_value();
        write!(f, "CardHashKey(KCV {:02X}{:02X}{:02X})", c[0], c[1], c[2])
    }
}

/// HMAC-SHA-256 of the PAN's digits (ASCII, as they are in DE2).
pub fn card_hash(key: &CardHashKey, pan: &[u8]) -> [u8; 32] {
    let mut m = key.mac();
    m.update(pan);
    m.finalize().into_bytes().into()
}

/// [`card_hash`] truncated to 128 bits: what the journal and store keep.
pub fn card_hash_128(key: &CardHashKey, pan: &[u8]) -> [u8; 16] {
    let full = card_hash(key, pan);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::parse_hex;

    fn upper(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02X}")).collect()
    }

    /// RFC 4231 test case 1: 20 bytes of 0x0b, "Hi There". (Case 2's key
    /// is 4 bytes, below the minimum here.)
    #[test]
    fn rfc4231_case_1() {
        let key = CardHashKey::new(&[0x0b; 20]).expect("key");
        assert_eq!(
            upper(&card_hash(&key, b"Hi There")),
            "B0344C61D8DB38535CA8AFCEAF0BF12B881DC200C9833DA726E9376C2E32CFF7"
        );
    }

    /// RFC 4231 test case 3: 20 bytes of 0xaa, 50 bytes of 0xdd.
    #[test]
    fn rfc4231_case_3() {
        let key = CardHashKey::new(&[0xaa; 20]).expect("key");
        assert_eq!(
            upper(&card_hash(&key, &[0xdd; 50])),
            "773EA91E36800E46854DB8EBD09181A72959098B3EF8C122D9635514CED565FE"
        );
    }

    #[test]
    fn keys_differ_and_are_not_shown() {
        let k1 = CardHashKey::new(&parse_hex("00112233445566778899AABBCCDDEEFF").expect("hex"))
            .expect("key");
        let k2 = CardHashKey::new(&[0x42; 32]).expect("key");
        let pan = b"4012345678909";
        assert_ne!(card_hash(&k1, pan), card_hash(&k2, pan));
        let shown = format!("{k1:?}");
        assert!(
            shown.starts_with("CardHashKey(KCV ") && !shown.contains("0011"),
            "{shown}"
        );
        assert_eq!(CardHashKey::new(&[0; 8]).err(), Some(CardHashKeyLength(8)));
        assert_eq!(card_hash_128(&k1, pan)[..], card_hash(&k1, pan)[..16]);
    }
}
