//! TDES DUKPT, ANSI X9.24-1:2009: the host side. From the base derivation
//! key (BDK) and the key serial number (KSN, DE53) of a transaction, the
//! initial key (IPEK) of the device and the transaction key the device
//! used, then its variants: PIN, MAC request, MAC response.
//!
//! The KSN is 10 bytes: the initial key serial number in the left 59 bits
//! and a 21-bit transaction counter. The host derives the transaction key
//! by walking the counter's one bits from the highest, one non-reversible
//! key generation step per bit, as the device did. At most 10 one bits
//! are ever used by a device (X9.24), so a counter with more is refused,
//! as is counter 0 (the IPEK itself, never a transaction key).

use super::cipher::{Tdes, des_encrypt, des_half};
use super::keys::{Algorithm, SecretKey};

const COUNTER_BITS: u32 = 21;
const COUNTER_MASK: u32 = (1 << COUNTER_BITS) - 1;
const KEY_MASK: [u8; 16] = [
    0xC0, 0xC0, 0xC0, 0xC0, 0x00, 0x00, 0x00, 0x00, 0xC0, 0xC0, 0xC0, 0xC0, 0x00, 0x00, 0x00, 0x00,
];

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DukptError {
    #[error("TDES DUKPT needs a double-length TDES base derivation key (the key given is {0})")]
    WrongBdk(String),
    #[error("a TDES DUKPT key serial number is 10 bytes, not {0}")]
    KsnLength(usize),
    #[error("the KSN's transaction counter is 0: it names no transaction key")]
    CounterZero,
    #[error("the KSN's transaction counter has {0} one bits; a device never uses more than 10")]
    CounterBits(u32),
}

/// A key serial number (not secret: it travels in clear in DE53).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ksn([u8; 10]);

impl Ksn {
    pub fn new(bytes: &[u8]) -> Result<Ksn, DukptError> {
        bytes
            .try_into()
            .map(Ksn)
            .map_err(|_| DukptError::KsnLength(bytes.len()))
    }

    pub fn bytes(&self) -> [u8; 10] {
        self.0
    }

    /// The 21-bit transaction counter.
    pub fn counter(&self) -> u32 {
        let k = &self.0;
        (u32::from(k[7]) << 16 | u32::from(k[8]) << 8 | u32::from(k[9])) & COUNTER_MASK
    }

    /// The same device's KSN with another counter (tests, simulators).
    pub fn with_counter(&self, counter: u32) -> Ksn {
        let mut k = self.0;
        let c = counter & COUNTER_MASK;
        k[7] = (k[7] & 0xE0) | (c >> 16) as u8;
        k[8] = (c >> 8) as u8;
        k[9] = c as u8;
        Ksn(k)
    }

    /// The right-most 8 bytes with the counter cleared: where the
    /// derivation starts.
    fn base_register(&self) -> u64 {
        let mut r = [0u8; 8];
        r.copy_from_slice(&self.0[2..]);
        u64::from_be_bytes(r) & !u64::from(COUNTER_MASK)
    }
}

/// Which variant of the transaction key: the key XOR a constant that
/// puts FF in one byte of each half (X9.24-1:2009's variant constants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Pin,
    MacRequest,
    MacResponse,
}

impl Variant {
    fn mask(self) -> [u8; 16] {
        let mut m = [0u8; 16];
        let at = match self {
            Variant::Pin => 7,
            Variant::MacRequest => 6,
            Variant::MacResponse => 4,
        };
        m[at] = 0xFF;
        m[at + 8] = 0xFF;
        m
    }
}

fn check_bdk(bdk: &SecretKey) -> Result<(), DukptError> {
    if bdk.algorithm() != Algorithm::Tdes || bdk.len() != 16 {
        return Err(DukptError::WrongBdk(bdk.describe()));
    }
    Ok(())
}

fn xor16(key: &SecretKey, mask: &[u8; 16]) -> SecretKey {
    let mut bytes = [0u8; 16];
    for (b, (k, m)) in bytes.iter_mut().zip(key.expose_secret().iter().zip(mask)) {
        *b = k ^ m;
    }
    let out = SecretKey::tdes(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    match out {
        Ok(k) => k,
        Err(_) => unreachable!("16 bytes make a TDES key"),
    }
}

/// The initial PIN encryption key (IPEK) of the device whose KSN this is.
pub fn ipek(bdk: &SecretKey, ksn: &Ksn) -> Result<SecretKey, DukptError> {
    check_bdk(bdk)?;
    // The left 8 bytes of the KSN with the counter cleared.
    let mut data = [0u8; 8];
    data.copy_from_slice(&ksn.0[..8]);
    data[7] &= 0xE0;
    let encrypt_under = |key: &SecretKey| {
        let mut b = data;
        if let Some(c) = Tdes::new(key) {
            c.encrypt(&mut b);
        }
        b
    };
    let left = encrypt_under(bdk);
    let right = encrypt_under(&xor16(bdk, &KEY_MASK));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&left);
    bytes[8..].copy_from_slice(&right);
    let key = SecretKey::tdes(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    key.map_err(|_| DukptError::WrongBdk(bdk.describe()))
}

/// The non-reversible key generation process: one step of the derivation.
fn non_reversible(key: &SecretKey, register: u64) -> SecretKey {
    let half = |k: &[u8], reg: u64| {
        let (l, r) = k.split_at(8);
        let mut b = reg.to_be_bytes();
        for (x, y) in b.iter_mut().zip(r) {
            *x ^= y;
        }
        if let Some(c) = des_half(l) {
            des_encrypt(&c, &mut b);
        }
        for (x, y) in b.iter_mut().zip(r) {
            *x ^= y;
        }
        b
    };
    let right = half(key.expose_secret(), register);
    let masked = xor16(key, &KEY_MASK);
    let left = half(masked.expose_secret(), register);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&left);
    bytes[8..].copy_from_slice(&right);
    let out = SecretKey::tdes(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    match out {
        Ok(k) => k,
        Err(_) => unreachable!("16 bytes make a TDES key"),
    }
}

/// The transaction key for `ksn` from the device's IPEK (before any
/// variant).
pub fn transaction_key(ipek: &SecretKey, ksn: &Ksn) -> Result<SecretKey, DukptError> {
    check_bdk(ipek)?;
    let counter = ksn.counter();
    if counter == 0 {
        return Err(DukptError::CounterZero);
    }
    if counter.count_ones() > 10 {
        return Err(DukptError::CounterBits(counter.count_ones()));
    }
    let mut register = ksn.base_register();
    let mut key = ipek.clone();
    for bit in (0..COUNTER_BITS).rev() {
        let b = 1u64 << bit;
        if u64::from(counter) & b != 0 {
            register |= b;
            key = non_reversible(&key, register);
        }
    }
    Ok(key)
}

/// A variant of the transaction key for `ksn`, from the BDK.
pub fn derive(bdk: &SecretKey, ksn: &Ksn, variant: Variant) -> Result<SecretKey, DukptError> {
    let ipek = ipek(bdk, ksn)?;
    let key = transaction_key(&ipek, ksn)?;
    Ok(xor16(&key, &variant.mask()))
}

/// The PIN encryption key for `ksn` (the key DE52 is under).
pub fn pin_key(bdk: &SecretKey, ksn: &Ksn) -> Result<SecretKey, DukptError> {
    derive(bdk, ksn, Variant::Pin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::mac;
    use crate::crypto::pinblock::{self, EncryptedPinBlock, Pin, PinFormat};
    use crate::hex::parse_hex;

    fn upper(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02X}")).collect()
    }

    fn bdk() -> SecretKey {
        SecretKey::from_hex(Algorithm::Tdes, "0123456789ABCDEFFEDCBA9876543210").expect("bdk")
    }

    fn ksn(s: &str) -> Ksn {
        Ksn::new(&parse_hex(s).expect("hex")).expect("ksn")
    }

    /// jPOS DUKPTTest and the ANSI X9.24-1:2009 appendix A example: BDK
    /// 0123...3210, KSN FFFF9876543210E00001: the IPEK, the transaction
    /// key ("current key" 042666B4...7BC9) and, under its PIN variant,
    /// PIN 1234 with PAN 4012345678909.
    #[test]
    fn jpos_and_x9_24_vectors() {
        let k = ksn("FFFF9876543210E00001");
        let ipek = ipek(&bdk(), &k).expect("ipek");
        assert_eq!(
            upper(ipek.expose_secret()),
            "6AC292FAA1315B4D858AB3A3D7D5933A"
        );
        let current = transaction_key(&ipek, &k).expect("key");
        assert_eq!(
            upper(current.expose_secret()),
            "042666B49184CFA368DE9628D0397BC9"
        );
        let pin_key = pin_key(&bdk(), &k).expect("pin key");
        let pin = Pin::new("1234").expect("pin");
        let block = pinblock::encrypt(&pin_key, PinFormat::Iso0, &pin, "4012345678909", &[0; 8])
            .expect("encrypt");
        assert_eq!(upper(block.as_bytes()), "1B9C1845EB993A7A");
        let back = EncryptedPinBlock::from_bytes(PinFormat::Iso0, block.as_bytes()).expect("block");
        assert!(
            pinblock::decrypt(&pin_key, &back, "4012345678909")
                .expect("pin")
                .matches("1234")
        );
    }

    /// X9.24-1:2009 appendix A.4's table for the same device (as
    /// reproduced in the test tables of open DUKPT implementations): for
    /// counters with one to ten bits set, the PIN key, the request MAC key,
    /// the encrypted PIN block of PIN 1234 / PAN 4012345678909, and the
    /// ANSI X9.19 (retail) MAC of "1234567890" four times, its left 4
    /// bytes.
    #[test]
    fn x9_24_appendix_table() {
        let cases = [
            (
                "E00001",
                "042666B49184CF5C68DE9628D0397B36",
                "042666B4918430A368DE9628D03984C9",
                "1B9C1845EB993A7A",
                "BF3DF9F4",
            ),
            (
                "E00002",
                "C46551CEF9FD244FAA9AD834130D3B38",
                "C46551CEF9FDDBB0AA9AD834130DC4C7",
                "10A01C8D02C69107",
                "1F05D23A",
            ),
            (
                "E00015",
                "E161D1956A61F62DF37AFD7F9CC36965",
                "E161D1956A6109D2F37AFD7F9CC3969A",
                "72105C22EBC791E6",
                "2B42A5B7",
            ),
            (
                "E10000",
                "2F9A0C0B46ECCBA1F8287A7A071AF54B",
                "2F9A0C0B46EC345EF8287A7A071A0AB4",
                "19776D96D73AF1E2",
                "D9DFF7D6",
            ),
            (
                "EFF800",
                "F9CDFEBF4F5B1D61B3EC12454527E189",
                "F9CDFEBF4F5BE29EB3EC124545271E76",
                "33365F5CC6F23C35",
                "3F7A0CE1",
            ),
            (
                "EFFC00",
                "F9430DF97508246EC77BE4EF4FDB9111",
                "F9430DF97508DB91C77BE4EF4FDB6EEE",
                "DEFC6F09F8927B71",
                "2EBFA205",
            ),
            (
                "F00000",
                "AA4D58DB653EC7B548C75F2F047DD24A",
                "AA4D58DB653E384A48C75F2F047D2DB5",
                "73EC88AD0AC5830E",
                "E771B48A",
            ),
        ];
        let pin = Pin::new("1234").expect("pin");
        let data = b"1234567890".repeat(4);
        for (tail, pin_hex, mac_hex, epb, mac) in cases {
            let k = ksn(&format!("FFFF9876543210{tail}"));
            let pk = pin_key(&bdk(), &k).expect("pin key");
            assert_eq!(upper(pk.expose_secret()), pin_hex, "{tail}");
            let mk = derive(&bdk(), &k, Variant::MacRequest).expect("mac key");
            assert_eq!(upper(mk.expose_secret()), mac_hex, "{tail}");
            let block = pinblock::encrypt(&pk, PinFormat::Iso0, &pin, "4012345678909", &[0; 8])
                .expect("encrypt");
            assert_eq!(upper(block.as_bytes()), epb, "{tail}");
            let m = mac::retail_mac(&mk, &data, mac::Padding::Method1).expect("mac");
            assert_eq!(upper(&m[..4]), mac, "{tail}");
        }
    }

    #[test]
    fn mac_variants_differ_from_the_pin_key_by_their_masks() {
        let k = ksn("FFFF9876543210E00001");
        let base = transaction_key(&ipek(&bdk(), &k).expect("ipek"), &k).expect("key");
        let pin = derive(&bdk(), &k, Variant::Pin).expect("pin");
        let req = derive(&bdk(), &k, Variant::MacRequest).expect("mac");
        let resp = derive(&bdk(), &k, Variant::MacResponse).expect("mac");
        let diff = |a: &SecretKey| -> Vec<u8> {
            a.expose_secret()
                .iter()
                .zip(base.expose_secret())
                .map(|(x, y)| x ^ y)
                .collect()
        };
        assert_eq!(upper(&diff(&pin)), "00000000000000FF00000000000000FF");
        assert_eq!(upper(&diff(&req)), "000000000000FF00000000000000FF00");
        assert_eq!(upper(&diff(&resp)), "00000000FF00000000000000FF000000");
    }

    #[test]
    fn refusals() {
        let k = ksn("FFFF9876543210E00000");
        assert_eq!(pin_key(&bdk(), &k).err(), Some(DukptError::CounterZero));
        assert_eq!(
            pin_key(&bdk(), &k.with_counter(0x7FF)).err(),
            Some(DukptError::CounterBits(11))
        );
        assert_eq!(Ksn::new(&[0; 8]).err(), Some(DukptError::KsnLength(8)));
        let aes = SecretKey::aes(&[0; 16]).expect("key");
        assert!(matches!(ipek(&aes, &k), Err(DukptError::WrongBdk(_))));
        assert_eq!(k.with_counter(0x1FFFFF).counter(), 0x1FFFFF);
        assert_eq!(k.with_counter(5).bytes()[..7], k.bytes()[..7]);
    }
}
