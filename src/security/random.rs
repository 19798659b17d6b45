//! Random bytes from the operating system (getrandom: `getrandom(2)` on
//! Linux). The primitives take their random input as an argument, so they
//! stay pure and testable; the key store and the CLI draw it here.

use super::keys::{Algorithm, SecretKey};

#[derive(Debug, thiserror::Error)]
#[error("the operating system gave no random bytes: {0}")]
pub struct RandomError(String);

pub fn fill(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(|e| RandomError(e.to_string()))
}

/// A fresh key; TDES keys get odd parity, as DES keys conventionally have.
pub fn key(algorithm: Algorithm, len: usize) -> Result<SecretKey, RandomError> {
    let mut bytes = [0u8; 32];
    let n = len.min(32);
    fill(&mut bytes[..n])?;
    let key = SecretKey::new(algorithm, &bytes[..n])
        .map_err(|e| RandomError(format!("no key made: {e}")));
    zeroize::Zeroize::zeroize(&mut bytes);
    Ok(key?.with_odd_parity())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ() {
        let a = key(Algorithm::Aes, 32).expect("key");
        let b = key(Algorithm::Aes, 32).expect("key");
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(key(Algorithm::Tdes, 16).expect("key").has_odd_parity());
        assert!(key(Algorithm::Tdes, 8).is_err());
    }
}
