//! Key blocks: ANSI X9.143 / ASC TR-31, key block version D (AES key
//! block protection key). How the key store holds every key under the LMK,
//! and how a key travels under an AES ZMK.
//!
//! ```text
//! D 0144 P0 T B 00 E 03 00 | LB0F..name.. KC0A01..kcv.. PB.. | hex(E) | hex(MAC)
//! ^ ^    ^  ^ ^ ^  ^ ^  ^    optional blocks (ID, 2 hex length, data),
//! | |    |  | | |  | |  reserved   padded by PB to a multiple of 16
//! | |    |  | | |  | number of optional blocks
//! | |    |  | | |  exportability (E under a KEK, N never, S sensitive)
//! | |    |  | | key version number
//! | |    |  | mode of use (B both, E encrypt, D decrypt, C MAC, X derive)
//! | |    |  algorithm (T TDES, A AES)
//! | |    key usage (P0 PIN, M3 retail MAC, M6 CMAC, K0 key wrapping, B0 BDK)
//! | length of the whole block, in characters
//! version D: AES, CMAC-derived keys, 16-byte MAC
//! ```
//!
//! From the key block protection key (KBPK) two keys are derived with
//! AES-CMAC (NIST SP 800-108 in counter mode): KBEK for encryption and
//! KBAK for authentication. The clear key data is a 2-byte key length in
//! bits, the key, and random padding (to 32 key bytes, so the block does
//! not tell a 16-byte key from a 32-byte one, then to a whole AES block).
//! MAC = CMAC(KBAK, header || clear key data); E = AES-CBC(KBEK, IV = MAC,
//! clear key data). The MAC covers the header, so nobody can change a
//! key's usage, name or check value without the KBPK; and it is checked
//! on the clear data, so a wrong KBPK or a changed character fails it.
//!
//! psec's `tr31` module (PyPI) wraps and unwraps the same blocks; the psec
//! oracle test checks both directions.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::cipher::{Aes, aes_cmac};
use super::keys::{Algorithm, SecretKey};

/// The fixed part of a version D header, and the sizes that follow from
/// AES: the clear key data of a key up to 32 bytes is 48 bytes (96 hex),
/// the MAC 16 (32 hex).
const FIXED: usize = 16;
const CLEAR_LEN: usize = 48;
const MAC_LEN: usize = 16;

/// Why a key block could not be made or read. Says where, never the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyBlockError {
    #[error("the key block protection key must be an AES key (the key given is {0})")]
    WrongKbpk(String),
    #[error("key block version {0:?} is not supported (only D, AES)")]
    Version(char),
    #[error("malformed key block: {0}")]
    Malformed(String),
    #[error("the key block's MAC does not verify: it was changed, or it is not under this key")]
    Mac,
    #[error("the header says {header} but the key is {key}")]
    AlgorithmMismatch { header: Algorithm, key: Algorithm },
    #[error("the key inside is {0} bits long, which is no {1} key")]
    KeyLength(usize, Algorithm),
}

fn malformed(what: impl Into<String>) -> KeyBlockError {
    KeyBlockError::Malformed(what.into())
}

/// A key block's header: what the key is for. Every field is authenticated.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// Key usage, e.g. `P0`, `M3`, `K0`, `B0`.
    pub usage: [u8; 2],
    pub algorithm: Algorithm,
    /// Mode of use, e.g. `B`, `C`, `X`.
    pub mode: u8,
    /// Key version number (`00` when versions are not used).
    pub version: [u8; 2],
    /// `E` exportable under a key-encryption key, `N` not exportable.
    pub exportability: u8,
    /// Optional blocks but the padding one (PB), in order: two-character
    /// ID and printable data.
    pub blocks: Vec<(String, String)>,
}

impl Header {
    pub fn block(&self, id: &str) -> Option<&str> {
        self.blocks
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, d)| d.as_str())
    }

    fn usage_str(&self) -> &str {
        std::str::from_utf8(&self.usage).unwrap_or("??")
    }

    /// The header text for a block of `total` characters.
    fn render(&self, total: usize) -> Result<String, KeyBlockError> {
        let alnum = |b: u8| b.is_ascii_alphanumeric();
        if !self.usage.iter().all(|&b| alnum(b))
            || !alnum(self.mode)
            || !self.version.iter().all(|&b| alnum(b))
            || !alnum(self.exportability)
        {
            return Err(malformed("header fields must be ASCII letters or digits"));
        }
        let mut blocks = String::new();
        for (id, data) in &self.blocks {
            if id.len() != 2 || !id.bytes().all(alnum) || id == "PB" {
                return Err(malformed(format!("optional block ID {id:?}")));
            }
            if !data.bytes().all(|b| (0x20..0x7F).contains(&b)) {
                return Err(malformed(format!(
                    "optional block {id}'s data is not printable ASCII"
                )));
            }
            if data.len() + 4 > 0xFF {
                return Err(malformed(format!("optional block {id} is too long")));
            }
            blocks.push_str(&format!("{id}{:02X}{data}", data.len() + 4));
        }
        let mut count = self.blocks.len();
        // The header is a whole number of AES blocks: a PB block pads it,
        // sized as psec sizes it (so both make the same header).
        if blocks.len() % 16 != 0 {
            let pad = 16 - (blocks.len() + 4) % 16;
            blocks.push_str(&format!("PB{:02X}{}", pad + 4, "0".repeat(pad)));
            count += 1;
        }
        if count > 99 {
            return Err(malformed("more than 99 optional blocks"));
        }
        Ok(format!(
            "D{total:04}{}{}{}{}{}{count:02}00{blocks}",
            self.usage_str(),
            char::from(self.algorithm.tr31_letter()),
            char::from(self.mode),
            std::str::from_utf8(&self.version).unwrap_or("00"),
            char::from(self.exportability),
        ))
    }

    fn header_len(&self) -> Result<usize, KeyBlockError> {
        Ok(self.render(0)?.len())
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Header({} {} {} v{} {} {:?})",
            self.usage_str(),
            self.algorithm,
            char::from(self.mode),
            String::from_utf8_lossy(&self.version),
            char::from(self.exportability),
            self.blocks
        )
    }
}

/// KBEK and KBAK from the KBPK (X9.143 version D's derivation).
fn derive(kbpk: &SecretKey) -> Result<(SecretKey, SecretKey), KeyBlockError> {
    if kbpk.algorithm() != Algorithm::Aes {
        return Err(KeyBlockError::WrongKbpk(kbpk.describe()));
    }
    let (alg, bits): (u16, u16) = match kbpk.len() {
        16 => (2, 128),
        24 => (3, 192),
        _ => (4, 256),
    };
    let calls = if kbpk.len() == 16 { 1 } else { 2 };
    let mut enc = [0u8; 32];
    let mut auth = [0u8; 32];
    for i in 0..calls {
        for (usage, out) in [(0u16, &mut enc), (1u16, &mut auth)] {
            let mut data = [0u8; 8];
            data[0] = (i + 1) as u8;
            data[1..3].copy_from_slice(&usage.to_be_bytes());
            data[4..6].copy_from_slice(&alg.to_be_bytes());
            data[6..8].copy_from_slice(&bits.to_be_bytes());
            let tag = aes_cmac(kbpk, &data).ok_or(KeyBlockError::WrongKbpk(kbpk.describe()))?;
            out[16 * i..16 * i + 16].copy_from_slice(&tag);
        }
    }
    let kbek = SecretKey::aes(&enc[..kbpk.len()]);
    let kbak = SecretKey::aes(&auth[..kbpk.len()]);
    enc.zeroize();
    auth.zeroize();
    match (kbek, kbak) {
        (Ok(e), Ok(a)) => Ok((e, a)),
        _ => Err(KeyBlockError::WrongKbpk(kbpk.describe())),
    }
}

fn mac_over(kbak: &SecretKey, header: &str, clear: &[u8]) -> Result<[u8; 16], KeyBlockError> {
    let mut data = Vec::with_capacity(header.len() + clear.len());
    data.extend_from_slice(header.as_bytes());
    data.extend_from_slice(clear);
    let tag = aes_cmac(kbak, &data);
    data.zeroize();
    tag.ok_or(KeyBlockError::WrongKbpk(kbak.describe()))
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Wraps `key` under `kbpk` with `header`. `random` pads the key data: give
/// fresh random bytes every time (only its first 30 or fewer are used).
pub fn wrap(
    kbpk: &SecretKey,
    header: &Header,
    key: &SecretKey,
    random: &[u8; 32],
) -> Result<String, KeyBlockError> {
    if header.algorithm != key.algorithm() {
        return Err(KeyBlockError::AlgorithmMismatch {
            header: header.algorithm,
            key: key.algorithm(),
        });
    }
    let (kbek, kbak) = derive(kbpk)?;
    let total = header.header_len()? + 2 * CLEAR_LEN + 2 * MAC_LEN;
    let head = header.render(total)?;
    let mut clear = [0u8; CLEAR_LEN];
    let k = key.expose_secret();
    clear[..2].copy_from_slice(&((k.len() * 8) as u16).to_be_bytes());
    clear[2..2 + k.len()].copy_from_slice(k);
    let pad = CLEAR_LEN - 2 - k.len();
    clear[2 + k.len()..].copy_from_slice(&random[..pad]);
    let mac = mac_over(&kbak, &head, &clear)?;
    let Some(cipher) = Aes::new(&kbek) else {
        clear.zeroize();
        return Err(KeyBlockError::WrongKbpk(kbpk.describe()));
    };
    cipher.cbc_encrypt(&mac, &mut clear);
    let out = format!("{head}{}{}", hex_upper(&clear), hex_upper(&mac));
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

fn parse_hex_exact(text: &str, what: &str) -> Result<Vec<u8>, KeyBlockError> {
    crate::hex::parse_hex(text).map_err(|e| malformed(format!("{what}: {e}")))
}

/// Reads the header only (no key needed, nothing verified): for listings
/// of what a file holds. Trust it only after [`unwrap`].
pub fn read_header(block: &str) -> Result<(Header, usize), KeyBlockError> {
    if !block.is_ascii() {
        return Err(malformed("not ASCII"));
    }
    let b = block.as_bytes();
    if b.len() < FIXED {
        return Err(malformed(format!(
            "{} characters, shorter than a header",
            b.len()
        )));
    }
    if b[0] != b'D' {
        return Err(KeyBlockError::Version(char::from(b[0])));
    }
    let total: usize = block[1..5]
        .parse()
        .map_err(|_| malformed("the length field is not 4 digits"))?;
    if total != b.len() {
        return Err(malformed(format!(
            "the header gives a length of {total}, the block has {}",
            b.len()
        )));
    }
    let algorithm = Algorithm::from_tr31_letter(b[7])
        .ok_or_else(|| malformed(format!("algorithm {:?}", char::from(b[7]))))?;
    let count: usize = block[12..14]
        .parse()
        .map_err(|_| malformed("the number of optional blocks is not 2 digits"))?;
    let mut at = FIXED;
    let mut blocks = Vec::new();
    for _ in 0..count {
        let id = block
            .get(at..at + 2)
            .ok_or_else(|| malformed("an optional block runs past the end"))?;
        let len = block
            .get(at + 2..at + 4)
            .and_then(|l| usize::from_str_radix(l, 16).ok())
            .ok_or_else(|| malformed(format!("optional block {id}'s length")))?;
        if len < 4 {
            // 0 introduces an extended length, which no key of ours needs.
            return Err(malformed(format!("optional block {id}'s length {len}")));
        }
        let data = block
            .get(at + 4..at + len)
            .ok_or_else(|| malformed(format!("optional block {id} runs past the end")))?;
        if id != "PB" {
            blocks.push((id.to_owned(), data.to_owned()));
        }
        at += len;
    }
    if at % 16 != 0 {
        return Err(malformed("the header is not a whole number of AES blocks"));
    }
    let header = Header {
        usage: [b[5], b[6]],
        algorithm,
        mode: b[8],
        version: [b[9], b[10]],
        exportability: b[11],
        blocks,
    };
    Ok((header, at))
}

/// Checks the MAC under `kbpk` and gives the header and the key.
pub fn unwrap(kbpk: &SecretKey, block: &str) -> Result<(Header, SecretKey), KeyBlockError> {
    let (header, head_len) = read_header(block)?;
    let rest = &block[head_len..];
    if rest.len() < 2 * (16 + MAC_LEN) || (rest.len() - 2 * MAC_LEN) % 32 != 0 {
        return Err(malformed(format!(
            "{} characters of key data and MAC: not whole AES blocks",
            rest.len()
        )));
    }
    let (data_hex, mac_hex) = rest.split_at(rest.len() - 2 * MAC_LEN);
    let mut data = parse_hex_exact(data_hex, "the key data")?;
    let mac: [u8; 16] = match parse_hex_exact(mac_hex, "the MAC")?.try_into() {
        Ok(m) => m,
        Err(_) => return Err(malformed("the MAC is not 16 bytes")),
    };
    let (kbek, kbak) = derive(kbpk)?;
    let Some(cipher) = Aes::new(&kbek) else {
        return Err(KeyBlockError::WrongKbpk(kbpk.describe()));
    };
    cipher.cbc_decrypt(&mac, &mut data);
    let ours = mac_over(&kbak, &block[..head_len], &data)?;
    if !bool::from(ours.ct_eq(&mac)) {
        data.zeroize();
        return Err(KeyBlockError::Mac);
    }
    let bits = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let key = if bits % 8 == 0 && bits / 8 + 2 <= data.len() {
        SecretKey::new(header.algorithm, &data[2..2 + bits / 8])
            .map_err(|_| KeyBlockError::KeyLength(bits, header.algorithm))
    } else {
        Err(KeyBlockError::KeyLength(bits, header.algorithm))
    };
    data.zeroize();
    Ok((header, key?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kbpk() -> SecretKey {
        SecretKey::aes(&[0x42; 32]).expect("key")
    }

    fn header(alg: Algorithm) -> Header {
        Header {
            usage: *b"P0",
            algorithm: alg,
            mode: b'B',
            version: *b"00",
            exportability: b'E',
            blocks: vec![("LB".into(), "tpk.term0001".into())],
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let key = SecretKey::tdes(&[0x13; 16]).expect("key");
        let block = wrap(&kbpk(), &header(Algorithm::Tdes), &key, &[7; 32]).expect("wrap");
        assert!(
            block.starts_with("D0160P0TB00E0100LB10tpk.term0001"),
            "{block}"
        );
        assert_eq!(block.len(), 160);
        let (h, back) = unwrap(&kbpk(), &block).expect("unwrap");
        assert_eq!(h, header(Algorithm::Tdes));
        assert_eq!(back.expose_secret(), key.expose_secret());
        assert!(!block.contains("1313131313"));
    }

    #[test]
    fn every_changed_character_is_refused() {
        let key = SecretKey::aes(&[0x5C; 32]).expect("key");
        let block = wrap(&kbpk(), &header(Algorithm::Aes), &key, &[1; 32]).expect("wrap");
        for i in 0..block.len() {
            let mut b = block.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            let text = String::from_utf8(b).expect("ascii");
            assert!(unwrap(&kbpk(), &text).is_err(), "changed at {i}: {text}");
        }
        let other = SecretKey::aes(&[0x43; 32]).expect("key");
        assert_eq!(unwrap(&other, &block).err(), Some(KeyBlockError::Mac));
        let tdes = SecretKey::tdes(&[1; 16]).expect("key");
        assert!(matches!(
            unwrap(&tdes, &block),
            Err(KeyBlockError::WrongKbpk(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn wrap_unwrap_round_trip(
            kbpk in proptest::sample::select(vec![16usize, 24, 32]),
            aes in proptest::bool::ANY,
            len in proptest::sample::select(vec![16usize, 24, 32]),
            bytes in proptest::array::uniform32(proptest::num::u8::ANY),
            random in proptest::array::uniform32(proptest::num::u8::ANY),
            name in "[a-z0-9.]{0,40}",
        ) {
            let kbpk = SecretKey::aes(&bytes[..kbpk]).expect("kbpk");
            let (alg, len) = if aes { (Algorithm::Aes, len) } else { (Algorithm::Tdes, len.min(24)) };
            let key = SecretKey::new(alg, &random[..len]).expect("key");
            let mut h = header(alg);
            h.blocks = vec![("LB".into(), name)];
            let block = wrap(&kbpk, &h, &key, &bytes).expect("wrap");
            let (back_h, back) = unwrap(&kbpk, &block).expect("unwrap");
            proptest::prop_assert_eq!(back_h, h);
            proptest::prop_assert_eq!(back.expose_secret(), key.expose_secret());
        }
    }

    #[test]
    fn header_refusals() {
        let key = SecretKey::aes(&[0x5C; 16]).expect("key");
        assert!(matches!(
            wrap(&kbpk(), &header(Algorithm::Tdes), &key, &[0; 32]),
            Err(KeyBlockError::AlgorithmMismatch { .. })
        ));
        let mut h = header(Algorithm::Aes);
        h.blocks.push(("LB".into(), "é".into()));
        assert!(wrap(&kbpk(), &h, &key, &[0; 32]).is_err());
        assert_eq!(
            read_header("B0016P0TE00N0000").err(),
            Some(KeyBlockError::Version('B'))
        );
        assert!(read_header("D0017P0TE00N0000").is_err());
    }
}
