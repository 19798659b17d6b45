//! Key check values: what an operator compares to know two parties hold
//! the same key, without either showing it. TDES: the first 3 bytes of the
//! key's encryption of a zero block (the classic KCV); AES: the first 3
//! bytes of AES-CMAC over a zero block (X9.24-1:2017's CMAC method; some
//! HSMs print 5 bytes of the same value, whose first 6 digits are these).
//! 3 bytes say nothing useful about a 16-byte key, so a KCV may be printed,
//! logged and stored.

use std::fmt;

use super::cipher::{Tdes, aes_cmac};
use super::keys::{Algorithm, SecretKey};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kcv([u8; 3]);

impl Kcv {
    pub fn of(key: &SecretKey) -> Kcv {
        let mut out = [0u8; 3];
        match key.algorithm() {
            Algorithm::Tdes => {
                let mut block = [0u8; 8];
                // A SecretKey of algorithm TDES always has a valid length,
                // so the cipher is always there.
                if let Some(c) = Tdes::new(key) {
                    c.encrypt(&mut block);
                }
                out.copy_from_slice(&block[..3]);
            }
            Algorithm::Aes => {
                if let Some(tag) = aes_cmac(key, &[0u8; 16]) {
                    out.copy_from_slice(&tag[..3]);
                }
            }
        }
        Kcv(out)
    }

    pub fn bytes(&self) -> [u8; 3] {
        self.0
    }

    /// From 6 hex digits, as an operator types one (`--kcv`).
    pub fn parse(text: &str) -> Result<Kcv, String> {
        let bytes = crate::hex::parse_hex(text)?;
        <[u8; 3]>::try_from(bytes.as_slice())
            .map(Kcv)
            .map_err(|_| format!("a KCV is 6 hex digits, not {}", 2 * bytes.len()))
    }
}

impl fmt::Display for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02X}{:02X}{:02X}", self.0[0], self.0[1], self.0[2])
    }
}

impl fmt::Debug for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kcv({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tdes_kcv_of_the_common_test_key() {
        // The X9.24 / jPOS test BDK; its KCV 08D7B4 is printed in many
        // published examples.
        let key =
            SecretKey::from_hex(Algorithm::Tdes, "0123456789ABCDEFFEDCBA9876543210").expect("key");
        assert_eq!(key.kcv().to_string(), "08D7B4");
    }

    #[test]
    fn aes_kcv_is_the_cmac_of_a_zero_block() {
        // NIST SP 800-38B's AES-128 key. The CMAC itself is checked
        // against the NIST vectors in mac.rs, and AES KCVs against Python's
        // `cryptography` in the psec oracle test.
        let key =
            SecretKey::from_hex(Algorithm::Aes, "2b7e151628aed2a6abf7158809cf4f3c").expect("key");
        let tag = aes_cmac(&key, &[0u8; 16]).expect("aes");
        assert_eq!(key.kcv().bytes(), [tag[0], tag[1], tag[2]]);
        assert_eq!(Kcv::parse("a1B2c3").expect("kcv").to_string(), "A1B2C3");
        assert!(Kcv::parse("A1B2").is_err());
    }
}
