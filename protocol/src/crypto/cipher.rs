//! The block ciphers over a [`SecretKey`]: single DES halves for the
//! retail MAC and DUKPT, TDES and AES by the key's length. A cipher value
//! holds the key schedule; the RustCrypto types wipe it on drop (feature
//! `zeroize`). ECB and CBC here are the few lines every caller needs, so no
//! mode crate is pulled in.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};

use super::keys::{Algorithm, SecretKey};

/// TDES by the key's length (K1 K2 K1 or K1 K2 K3).
pub enum Tdes {
    Two(des::TdesEde2),
    Three(des::TdesEde3),
}

impl Tdes {
    /// `None` when the key is not a TDES key.
    pub fn new(key: &SecretKey) -> Option<Tdes> {
        if key.algorithm() != Algorithm::Tdes {
            return None;
        }
        let k = key.expose_secret();
        match k.len() {
            16 => des::TdesEde2::new_from_slice(k).ok().map(Tdes::Two),
            24 => des::TdesEde3::new_from_slice(k).ok().map(Tdes::Three),
            _ => None,
        }
    }

    pub fn encrypt(&self, block: &mut [u8; 8]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Tdes::Two(c) => c.encrypt_block(b),
            Tdes::Three(c) => c.encrypt_block(b),
        }
    }

    pub fn decrypt(&self, block: &mut [u8; 8]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Tdes::Two(c) => c.decrypt_block(b),
            Tdes::Three(c) => c.decrypt_block(b),
        }
    }
}

/// Single DES under 8 bytes of a longer key (the retail MAC's K1 and K2,
/// DUKPT's halves). Never used with a single-length key of its own.
pub fn des_half(half: &[u8]) -> Option<des::Des> {
    des::Des::new_from_slice(half).ok()
}

pub fn des_encrypt(c: &des::Des, block: &mut [u8; 8]) {
    c.encrypt_block(GenericArray::from_mut_slice(block));
}

pub fn des_decrypt(c: &des::Des, block: &mut [u8; 8]) {
    c.decrypt_block(GenericArray::from_mut_slice(block));
}

/// AES by the key's length.
pub enum Aes {
    A128(aes::Aes128),
    A192(aes::Aes192),
    A256(aes::Aes256),
}

impl Aes {
    /// `None` when the key is not an AES key.
    pub fn new(key: &SecretKey) -> Option<Aes> {
        if key.algorithm() != Algorithm::Aes {
            return None;
        }
        let k = key.expose_secret();
        match k.len() {
            16 => aes::Aes128::new_from_slice(k).ok().map(Aes::A128),
            24 => aes::Aes192::new_from_slice(k).ok().map(Aes::A192),
            32 => aes::Aes256::new_from_slice(k).ok().map(Aes::A256),
            _ => None,
        }
    }

    pub fn encrypt(&self, block: &mut [u8; 16]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Aes::A128(c) => c.encrypt_block(b),
            Aes::A192(c) => c.encrypt_block(b),
            Aes::A256(c) => c.encrypt_block(b),
        }
    }

    pub fn decrypt(&self, block: &mut [u8; 16]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Aes::A128(c) => c.decrypt_block(b),
            Aes::A192(c) => c.decrypt_block(b),
            Aes::A256(c) => c.decrypt_block(b),
        }
    }

    /// CBC encryption in place; `data` is a whole number of blocks.
    pub fn cbc_encrypt(&self, iv: &[u8; 16], data: &mut [u8]) {
        debug_assert_eq!(data.len() % 16, 0);
        let mut chain = *iv;
        for chunk in data.chunks_exact_mut(16) {
            let mut block = [0u8; 16];
            for (b, (d, c)) in block.iter_mut().zip(chunk.iter().zip(&chain)) {
                *b = d ^ c;
            }
            self.encrypt(&mut block);
            chunk.copy_from_slice(&block);
            chain = block;
        }
    }

    /// CBC decryption in place; `data` is a whole number of blocks.
    pub fn cbc_decrypt(&self, iv: &[u8; 16], data: &mut [u8]) {
        debug_assert_eq!(data.len() % 16, 0);
        let mut chain = *iv;
        for chunk in data.chunks_exact_mut(16) {
            let mut block = [0u8; 16];
            block.copy_from_slice(chunk);
            let cipher_text = block;
            self.decrypt(&mut block);
            for (d, (b, c)) in chunk.iter_mut().zip(block.iter().zip(&chain)) {
                *d = b ^ c;
            }
            chain = cipher_text;
        }
    }
}

/// AES-CMAC (NIST SP 800-38B) over `data` with an AES key.
pub fn aes_cmac(key: &SecretKey, data: &[u8]) -> Option<[u8; 16]> {
    use cmac::Mac;
    if key.algorithm() != Algorithm::Aes {
        return None;
    }
    let k = key.expose_secret();
    let tag = match k.len() {
        16 => {
            let mut m = <cmac::Cmac<aes::Aes128> as Mac>::new_from_slice(k).ok()?;
            m.update(data);
            m.finalize().into_bytes()
        }
        24 => {
            let mut m = <cmac::Cmac<aes::Aes192> as Mac>::new_from_slice(k).ok()?;
            m.update(data);
            m.finalize().into_bytes()
        }
        32 => {
            let mut m = <cmac::Cmac<aes::Aes256> as Mac>::new_from_slice(k).ok()?;
            m.update(data);
            m.finalize().into_bytes()
        }
        _ => return None,
    };
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag);
    Some(out)
}
