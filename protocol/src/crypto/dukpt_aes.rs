//! AES DUKPT, ANSI X9.24-3-2017: the host side. From an AES base
//! derivation key (BDK) and a 12-byte KSN (the 8-byte initial key ID, then
//! a 32-bit transaction counter), the device's initial key, the
//! intermediate derivation key for the counter, and a working key (PIN,
//! MAC, data) of the type the device uses: AES-128/192/256 or TDES.
//!
//! Every step is one derivation: AES-ECB under the derivation key of a
//! 16-byte derivation data block (version 01, block counter, key usage,
//! algorithm, length in bits, then the initial key ID for the initial key,
//! or its right half and a counter for the others), one block per 128
//! bits of output. The host walks the counter's one bits from the highest,
//! as the device did; a device never uses a counter with more than 16 one
//! bits, so one with more is refused, as is counter 0.

use super::cipher::Aes;
use super::keys::{Algorithm, SecretKey};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AesDukptError {
    #[error("AES DUKPT needs an AES base derivation key (the key given is {0})")]
    WrongBdk(String),
    #[error("an AES DUKPT key serial number is 12 bytes, not {0}")]
    KsnLength(usize),
    #[error("the KSN's transaction counter is 0: it names no transaction key")]
    CounterZero,
    #[error("the KSN's transaction counter has {0} one bits; a device never uses more than 16")]
    CounterBits(u32),
}

/// An AES DUKPT key serial number (not secret: it travels in clear).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AesKsn([u8; 12]);

impl AesKsn {
    pub fn new(bytes: &[u8]) -> Result<AesKsn, AesDukptError> {
        bytes
            .try_into()
            .map(AesKsn)
            .map_err(|_| AesDukptError::KsnLength(bytes.len()))
    }

    pub fn bytes(&self) -> [u8; 12] {
        self.0
    }

    /// The initial key ID: the BDK ID and the derivation ID, 4 bytes each.
    pub fn initial_key_id(&self) -> [u8; 8] {
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.0[..8]);
        id
    }

    pub fn counter(&self) -> u32 {
        u32::from_be_bytes([self.0[8], self.0[9], self.0[10], self.0[11]])
    }

    pub fn with_counter(&self, counter: u32) -> AesKsn {
        let mut k = self.0;
        k[8..].copy_from_slice(&counter.to_be_bytes());
        AesKsn(k)
    }
}

/// What a working key is for (X9.24-3's key usage indicators).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUsage {
    KeyEncryption,
    Pin,
    MacGenerate,
    MacVerify,
    MacBoth,
    DataEncrypt,
    DataDecrypt,
    DataBoth,
}

impl KeyUsage {
    fn indicator(self) -> u16 {
        match self {
            KeyUsage::KeyEncryption => 0x0002,
            KeyUsage::Pin => 0x1000,
            KeyUsage::MacGenerate => 0x2000,
            KeyUsage::MacVerify => 0x2001,
            KeyUsage::MacBoth => 0x2002,
            KeyUsage::DataEncrypt => 0x3000,
            KeyUsage::DataDecrypt => 0x3001,
            KeyUsage::DataBoth => 0x3002,
        }
    }
}

const KEY_DERIVATION: u16 = 0x8000;
const INITIAL_KEY: u16 = 0x8001;

/// The type (algorithm and length) of a derived key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Tdes2,
    Tdes3,
    Aes128,
    Aes192,
    Aes256,
}

impl KeyType {
    fn indicator(self) -> u16 {
        match self {
            KeyType::Tdes2 => 0,
            KeyType::Tdes3 => 1,
            KeyType::Aes128 => 2,
            KeyType::Aes192 => 3,
            KeyType::Aes256 => 4,
        }
    }

    fn len(self) -> usize {
        match self {
            KeyType::Tdes2 | KeyType::Aes128 => 16,
            KeyType::Tdes3 | KeyType::Aes192 => 24,
            KeyType::Aes256 => 32,
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            KeyType::Tdes2 | KeyType::Tdes3 => Algorithm::Tdes,
            _ => Algorithm::Aes,
        }
    }

    /// The AES type of a BDK (the intermediate keys have the BDK's type).
    fn of_aes_key(key: &SecretKey) -> Result<KeyType, AesDukptError> {
        match (key.algorithm(), key.len()) {
            (Algorithm::Aes, 16) => Ok(KeyType::Aes128),
            (Algorithm::Aes, 24) => Ok(KeyType::Aes192),
            (Algorithm::Aes, 32) => Ok(KeyType::Aes256),
            _ => Err(AesDukptError::WrongBdk(key.describe())),
        }
    }
}

fn derivation_data(usage: u16, key_type: KeyType, tail: &[u8; 8]) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0] = 0x01;
    d[1] = 0x01;
    d[2..4].copy_from_slice(&usage.to_be_bytes());
    d[4..6].copy_from_slice(&key_type.indicator().to_be_bytes());
    d[6..8].copy_from_slice(&((key_type.len() * 8) as u16).to_be_bytes());
    d[8..].copy_from_slice(tail);
    d
}

/// One derivation: AES-ECB of the data under `key`, block counter 1, 2.
fn derive(
    key: &SecretKey,
    key_type: KeyType,
    mut data: [u8; 16],
) -> Result<SecretKey, AesDukptError> {
    let cipher = Aes::new(key).ok_or_else(|| AesDukptError::WrongBdk(key.describe()))?;
    let mut out = [0u8; 32];
    for i in 0..key_type.len().div_ceil(16) {
        data[1] = (i + 1) as u8;
        let mut block = data;
        cipher.encrypt(&mut block);
        out[16 * i..16 * i + 16].copy_from_slice(&block);
    }
    let key = SecretKey::new(key_type.algorithm(), &out[..key_type.len()]);
    zeroize::Zeroize::zeroize(&mut out);
    key.map_err(|e| AesDukptError::WrongBdk(e.to_string()))
}

/// The device's initial key, of the BDK's type.
pub fn initial_key(bdk: &SecretKey, initial_key_id: &[u8; 8]) -> Result<SecretKey, AesDukptError> {
    let t = KeyType::of_aes_key(bdk)?;
    derive(bdk, t, derivation_data(INITIAL_KEY, t, initial_key_id))
}

fn tail(ksn: &AesKsn, counter: u32) -> [u8; 8] {
    let mut t = [0u8; 8];
    t[..4].copy_from_slice(&ksn.0[4..8]);
    t[4..].copy_from_slice(&counter.to_be_bytes());
    t
}

/// The intermediate derivation key for the KSN's counter, from the initial
/// key (the device's "current key").
pub fn derivation_key(initial_key: &SecretKey, ksn: &AesKsn) -> Result<SecretKey, AesDukptError> {
    let t = KeyType::of_aes_key(initial_key)?;
    let counter = ksn.counter();
    if counter == 0 {
        return Err(AesDukptError::CounterZero);
    }
    if counter.count_ones() > 16 {
        return Err(AesDukptError::CounterBits(counter.count_ones()));
    }
    let mut key = initial_key.clone();
    let mut working = 0u32;
    for bit in (0..32).rev() {
        let mask = 1u32 << bit;
        if counter & mask != 0 {
            working |= mask;
            key = derive(
                &key,
                t,
                derivation_data(KEY_DERIVATION, t, &tail(ksn, working)),
            )?;
        }
    }
    Ok(key)
}

/// The working key of `usage` and `key_type` for the transaction whose KSN
/// this is, from the BDK.
pub fn working_key(
    bdk: &SecretKey,
    ksn: &AesKsn,
    usage: KeyUsage,
    key_type: KeyType,
) -> Result<SecretKey, AesDukptError> {
    let ik = initial_key(bdk, &ksn.initial_key_id())?;
    let dk = derivation_key(&ik, ksn)?;
    derive(
        &dk,
        key_type,
        derivation_data(usage.indicator(), key_type, &tail(ksn, ksn.counter())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::parse_hex;

    fn upper(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02X}")).collect()
    }

    fn key(hex: &str) -> SecretKey {
        SecretKey::from_hex(Algorithm::Aes, hex).expect("key")
    }

    fn ksn(counter: u32) -> AesKsn {
        AesKsn::new(&parse_hex("123456789012345600000000").expect("hex"))
            .expect("ksn")
            .with_counter(counter)
    }

    const BDK128: &str = "FEDCBA9876543210F1F1F1F1F1F1F1F1";
    const BDK256: &str = "FEDCBA9876543210F1F1F1F1F1F1F1F1FEDCBA9876543210F1F1F1F1F1F1F1F1";

    /// ANSI X9.24-3-2017's published test vectors (AES-128 and AES-256
    /// BDKs, initial key ID 1234567890123456), as reproduced in the test
    /// tables of open implementations: the initial keys, then for counters
    /// with 1, 1, 2, 16, 15 and 16 one bits the intermediate derivation key
    /// and the PIN working key of the BDK's type.
    #[test]
    fn x9_24_3_vectors() {
        let id = ksn(0).initial_key_id();
        assert_eq!(
            upper(initial_key(&key(BDK128), &id).expect("ik").expose_secret()),
            "1273671EA26AC29AFA4D1084127652A1"
        );
        assert_eq!(
            upper(initial_key(&key(BDK256), &id).expect("ik").expose_secret()),
            "CE9CE0C101D1138F97FB6CAD4DF045A7083D4EAE2D35A31789D01CCF0949550F"
        );
        let aes128 = [
            (
                0x00000001,
                "4F21B565BAD9835E112B6465635EAE44",
                "AF8CB133A78F8DC2D1359F18527593FB",
            ),
            (
                0x00000002,
                "2F34D68DE10F68D38091A73B9E7C437C",
                "D30BDC73EC9714B000BEC66BDB7B6D09",
            ),
            (
                0x00000003,
                "031504E530365CF81264238540518318",
                "7D69F01F3B45449F62C7816ECE723268",
            ),
            (
                0xFFFE4000,
                "396C2C7CA1EA701C03B86B7D41F0C562",
                "6239A27F572DEDB17BCA1AC413EF9FE9",
            ),
            (
                0xFFFE8000,
                "0387625F189B58AE03EF0E8CCA41105E",
                "F10C1404137A80718FCCE8BD90FF9F67",
            ),
            (
                0xFFFF0000,
                "F6BA59389BD14A9855BE9727E7C52E3C",
                "27EFAC1D158632588F4AC69E45C247C4",
            ),
        ];
        let ik = initial_key(&key(BDK128), &id).expect("ik");
        for (counter, dk, pin) in aes128 {
            let k = ksn(counter);
            assert_eq!(
                upper(derivation_key(&ik, &k).expect("dk").expose_secret()),
                dk
            );
            let w = working_key(&key(BDK128), &k, KeyUsage::Pin, KeyType::Aes128).expect("pin");
            assert_eq!(upper(w.expose_secret()), pin, "counter {counter:#x}");
        }
        let aes256 = [
            (
                0x00000001,
                "8C1AB7BEE973829E30242E0BBBDD4946D540C98FC1B5BDCF94790001A23FD502",
            ),
            (
                0x00000002,
                "3583D6CD02FC38822CC71A8D7678E04F4A8556335E6CC66863D3DADC5AEE2C62",
            ),
            (
                0x00000003,
                "96A1AB5D37CB7CF81DDE64F66C46E0389B833E7AD5F4E44C791F04FAFDA6DA0E",
            ),
            (
                0xFFFE4000,
                "F388FF9FB1D66E8812BC67CA5B85CE5554063E09A2440EC1AF4EB433CCFBAF35",
            ),
            (
                0xFFFE8000,
                "FAC4E05A67AB1522505CF0E94E5977B99D0E5B116D76ABB6B8A64F0D785FF6DF",
            ),
            (
                0xFFFF0000,
                "88B82556AEF4A681E0687F443A4C4F305AF9203B114470DFC77C7F08BC43F9DA",
            ),
        ];
        for (counter, pin) in aes256 {
            let w = working_key(&key(BDK256), &ksn(counter), KeyUsage::Pin, KeyType::Aes256)
                .expect("pin");
            assert_eq!(upper(w.expose_secret()), pin, "counter {counter:#x}");
        }
    }

    /// The same suite's other working keys for counter 1.
    #[test]
    fn other_usages_for_counter_1() {
        let bdk = key(BDK128);
        let cases = [
            (KeyUsage::MacGenerate, "A2DC23DE6FDE0824A2BC321E08E4B8B7"),
            (KeyUsage::DataEncrypt, "A35C412EFD41FDB98B69797C02DCD08F"),
        ];
        for (usage, want) in cases {
            let w = working_key(&bdk, &ksn(1), usage, KeyType::Aes128).expect("key");
            assert_eq!(upper(w.expose_secret()), want, "{usage:?}");
        }
        // A TDES working key (for a format 0 PIN block) from an AES BDK.
        let t = working_key(&bdk, &ksn(1), KeyUsage::Pin, KeyType::Tdes2).expect("key");
        assert_eq!((t.algorithm(), t.len()), (Algorithm::Tdes, 16));
    }

    #[test]
    fn refusals() {
        let bdk = key(BDK128);
        assert_eq!(
            working_key(&bdk, &ksn(0), KeyUsage::Pin, KeyType::Aes128).err(),
            Some(AesDukptError::CounterZero)
        );
        assert_eq!(
            working_key(&bdk, &ksn(0x0001FFFF), KeyUsage::Pin, KeyType::Aes128).err(),
            Some(AesDukptError::CounterBits(17))
        );
        let tdes = SecretKey::tdes(&[1; 16]).expect("key");
        assert!(matches!(
            initial_key(&tdes, &[0; 8]),
            Err(AesDukptError::WrongBdk(_))
        ));
        assert_eq!(
            AesKsn::new(&[0; 10]).err(),
            Some(AesDukptError::KsnLength(10))
        );
    }
}
