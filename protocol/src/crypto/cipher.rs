//! The block ciphers over a [`SecretKey`]: single DES halves for the
//! retail MAC and DUKPT, TDES and AES by the key's length. A cipher value
//! holds the key schedule and wipes it on drop (ours for DES, see
//! [`super::des`]; the RustCrypto AES types with their feature `zeroize`).
//! ECB and CBC here are the few lines every caller needs, so no mode crate
//! is pulled in.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};

use super::des::{Block, Des};
use super::keys::{Algorithm, SecretKey};

/// TDES (EDE) by the key's length: K1 K2 K1 or K1 K2 K3.
pub struct Tdes {
    k1: Des,
    k2: Des,
    /// `None`: K1 again (a double-length key).
    k3: Option<Des>,
}

fn des_of(bytes: &[u8]) -> Option<Des> {
    bytes.try_into().ok().map(|k: &[u8; 8]| Des::new(k))
}

impl Tdes {
    /// `None` when the key is not a TDES key.
    pub fn new(key: &SecretKey) -> Option<Tdes> {
        if key.algorithm() != Algorithm::Tdes {
            return None;
        }
        let k = key.expose_secret();
        let (k1, k2) = (des_of(k.get(..8)?)?, des_of(k.get(8..16)?)?);
        let k3 = match k.len() {
            16 => None,
            24 => Some(des_of(&k[16..24])?),
            _ => return None,
        };
        Some(Tdes { k1, k2, k3 })
    }

    pub fn encrypt(&self, block: &mut [u8; 8]) {
        let mut b = Block::new(block);
        self.encrypt_block(&mut b);
        *block = b.to_bytes();
    }

    pub fn decrypt(&self, block: &mut [u8; 8]) {
        let mut b = Block::new(block);
        b.decrypt(self.k3.as_ref().unwrap_or(&self.k1));
        b.encrypt(&self.k2);
        b.decrypt(&self.k1);
        *block = b.to_bytes();
    }

    /// EDE on a block in DES's internal form (a CBC chain's state).
    pub fn encrypt_block(&self, b: &mut Block) {
        b.encrypt(&self.k1);
        b.decrypt(&self.k2);
        b.encrypt(self.k3.as_ref().unwrap_or(&self.k1));
    }

    /// K1 and K2 of a double-length key (the retail MAC's), `None` for a
    /// triple-length one.
    pub fn halves(&self) -> Option<(&Des, &Des)> {
        match self.k3 {
            None => Some((&self.k1, &self.k2)),
            Some(_) => None,
        }
    }
}

/// Single DES under 8 bytes of a longer key (the retail MAC's K1 and K2,
/// DUKPT's halves). Never used with a single-length key of its own.
pub fn des_half(half: &[u8]) -> Option<Des> {
    des_of(half)
}

pub fn des_encrypt(c: &Des, block: &mut [u8; 8]) {
    c.encrypt(block);
}

pub fn des_decrypt(c: &Des, block: &mut [u8; 8]) {
    c.decrypt(block);
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
