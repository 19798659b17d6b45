//! Keys as types: the bytes are wiped when the value is dropped, and
//! neither `Debug` nor `Display` shows them, only the algorithm, the length
//! and the key check value. The one way to the bytes is
//! [`SecretKey::expose_secret`], named so that every use is easy to find.

use std::fmt;

use zeroize::Zeroize;

use super::kcv::Kcv;

/// The block cipher a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Algorithm {
    /// Triple DES, double (16 bytes) or triple (24 bytes) length.
    Tdes,
    /// AES-128, -192 or -256.
    Aes,
}

impl Algorithm {
    /// The TR-31 algorithm letter ('T' TDES, 'A' AES).
    pub fn tr31_letter(self) -> u8 {
        match self {
            Algorithm::Tdes => b'T',
            Algorithm::Aes => b'A',
        }
    }

    pub fn from_tr31_letter(c: u8) -> Option<Algorithm> {
        match c {
            b'T' => Some(Algorithm::Tdes),
            b'A' => Some(Algorithm::Aes),
            _ => None,
        }
    }

    /// Key lengths in bytes this algorithm accepts. Single DES (8 bytes) is
    /// refused: PCI PIN security has not allowed it for PIN or MAC keys for
    /// years.
    pub fn valid_len(self, len: usize) -> bool {
        match self {
            Algorithm::Tdes => len == 16 || len == 24,
            Algorithm::Aes => len == 16 || len == 24 || len == 32,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Tdes => "TDES",
            Algorithm::Aes => "AES",
        })
    }
}

/// Why bytes could not become a key. Never carries the bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a {algorithm} key can not be {len} bytes long")]
    Length { algorithm: Algorithm, len: usize },
    #[error("keys of different algorithms or lengths can not be combined")]
    Mismatched,
}

/// A TDES or AES key. The bytes live in a fixed array (no heap copy left
/// behind by a reallocation) and are zeroized on drop.
pub struct SecretKey {
    algorithm: Algorithm,
    len: u8,
    bytes: [u8; 32],
}

impl SecretKey {
    pub fn new(algorithm: Algorithm, key: &[u8]) -> Result<SecretKey, KeyError> {
        if !algorithm.valid_len(key.len()) {
            return Err(KeyError::Length {
                algorithm,
                len: key.len(),
            });
        }
        let mut bytes = [0u8; 32];
        bytes[..key.len()].copy_from_slice(key);
        Ok(SecretKey {
            algorithm,
            len: key.len() as u8,
            bytes,
        })
    }

    pub fn tdes(key: &[u8]) -> Result<SecretKey, KeyError> {
        SecretKey::new(Algorithm::Tdes, key)
    }

    pub fn aes(key: &[u8]) -> Result<SecretKey, KeyError> {
        SecretKey::new(Algorithm::Aes, key)
    }

    /// A key from hex (tests, vectors, components typed by a custodian).
    /// The error says what is wrong, never which digits.
    pub fn from_hex(algorithm: Algorithm, hex: &str) -> Result<SecretKey, String> {
        let mut bytes = crate::hex::parse_hex(hex)?;
        let key = SecretKey::new(algorithm, &bytes).map_err(|e| e.to_string());
        bytes.zeroize();
        key
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true: a key has at least 16 bytes (here for clippy's sake).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key's bytes. Every caller is a cipher, a key derivation or a
    /// wrap under another key: nothing that prints, logs or stores them.
    pub fn expose_secret(&self) -> &[u8] {
        &self.bytes[..self.len()]
    }

    /// The key check value (TDES: E(K, 0); AES: CMAC(K, 0); 3 bytes).
    pub fn kcv(&self) -> Kcv {
        Kcv::of(self)
    }

    /// XOR of two keys of the same algorithm and length: how components
    /// are combined (split knowledge) and how DUKPT and others apply
    /// variants.
    pub fn xor(&self, other: &SecretKey) -> Result<SecretKey, KeyError> {
        if self.algorithm != other.algorithm || self.len != other.len {
            return Err(KeyError::Mismatched);
        }
        let mut out = SecretKey {
            algorithm: self.algorithm,
            len: self.len,
            bytes: [0; 32],
        };
        for (o, (a, b)) in out
            .bytes
            .iter_mut()
            .zip(self.bytes.iter().zip(&other.bytes))
        {
            *o = a ^ b;
        }
        Ok(out)
    }

    /// Sets every byte of a TDES key to odd parity (the DES convention;
    /// the parity bits are not used by the cipher). AES keys are left as
    /// they are.
    pub fn with_odd_parity(mut self) -> SecretKey {
        if self.algorithm == Algorithm::Tdes {
            let len = self.len();
            for b in &mut self.bytes[..len] {
                *b = odd_parity(*b);
            }
        }
        self
    }

    /// Whether every byte of a TDES key has odd parity (AES: always true).
    pub fn has_odd_parity(&self) -> bool {
        self.algorithm != Algorithm::Tdes
            || self.expose_secret().iter().all(|b| b.count_ones() % 2 == 1)
    }

    /// "TDES-128", "AES-256": the algorithm and the length in bits (a
    /// double-length TDES key is named by its 128 bits, as TR-31 does).
    pub fn describe(&self) -> String {
        format!("{}-{}", self.algorithm, self.len() * 8)
    }
}

fn odd_parity(b: u8) -> u8 {
    let high = b & 0xFE;
    if high.count_ones() % 2 == 0 {
        high | 1
    } else {
        high
    }
}

impl Clone for SecretKey {
    fn clone(&self) -> SecretKey {
        SecretKey {
            algorithm: self.algorithm,
            len: self.len,
            bytes: self.bytes,
        }
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, KCV {})", self.describe(), self.kcv())
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} key, KCV {}", self.describe(), self.kcv())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked() {
        assert!(SecretKey::tdes(&[0; 8]).is_err(), "single DES is refused");
        assert!(SecretKey::tdes(&[0; 16]).is_ok());
        assert!(SecretKey::tdes(&[0; 24]).is_ok());
        assert!(SecretKey::tdes(&[0; 32]).is_err());
        assert!(SecretKey::aes(&[0; 32]).is_ok());
        assert!(SecretKey::aes(&[0; 20]).is_err());
    }

    #[test]
    fn debug_and_display_show_the_kcv_not_the_key() {
        let key =
            SecretKey::from_hex(Algorithm::Tdes, "0123456789ABCDEFFEDCBA9876543210").expect("key");
        let shown = format!("{key:?} {key} {key:#?}");
        assert!(shown.contains("08D7B4"), "{shown}");
        for part in ["0123456789", "ABCDEF", "FEDCBA", "01 23", "[1, 35"] {
            assert!(!shown.to_uppercase().contains(part), "{part} in {shown}");
        }
    }

    #[test]
    fn parity_and_xor() {
        let key = SecretKey::tdes(&[0u8; 16]).expect("key").with_odd_parity();
        assert!(key.has_odd_parity());
        assert_eq!(key.expose_secret(), &[1u8; 16]);
        let other = SecretKey::tdes(&[3u8; 16]).expect("key");
        assert_eq!(key.xor(&other).expect("xor").expose_secret(), &[2u8; 16]);
        assert_eq!(
            key.xor(&SecretKey::aes(&[0; 16]).expect("key")).err(),
            Some(KeyError::Mismatched)
        );
    }
}
