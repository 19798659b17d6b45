//! The soft HSM: the key store's keys unwrapped once under the LMK and
//! held in memory (zeroized when dropped), answering every command at once
//! with the primitives of [`crate::security`].
//!
//! It is the default and what the core calls in line on the hot path; its
//! cost per command is that of the cryptography (see `benches/security.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use super::{HsmCommand, HsmError, HsmReply, KeyName, MacAlgorithm, MacValue, PinSource};
use zeroize::Zeroize;

use crate::security::card_hash::CardHashKey;
use crate::security::cipher::Tdes;
use crate::security::keyblock;
use crate::security::keys::{Algorithm, SecretKey};
use crate::security::lmk::Lmk;
use crate::security::mac::{self, MacError, MacKey, Padding};
use crate::security::pinblock::{self, PinFormat, PinKey};
use crate::security::random;
use crate::security::store::{self, KeyStore, KeyType, StoreError};
use crate::security::{Kcv, dukpt, dukpt_aes};

/// Most keys a soft HSM holds: a key store is a config file, not a
/// database of terminals (DUKPT serves fleets with one BDK).
pub const MAX_KEYS: usize = 100_000;

/// One key and, after a key change, the key it replaced, still valid for
/// checks (MACs, PIN blocks arriving) until `until_ms`: the other side may
/// still use it for what it sent before it learned of the change.
struct Slot {
    key_type: KeyType,
    current: SecretKey,
    /// A MAC key's schedule, made once: each MAC would otherwise make it
    /// again from the key's bytes.
    current_mac: Option<MacKey>,
    /// A PIN key's cipher, made once: every request's PIN translation
    /// would otherwise make TDES's DES schedules twice per key.
    current_pin: Option<PinKey>,
    previous: Option<(SecretKey, u64)>,
}

impl Slot {
    fn new(key_type: KeyType, current: SecretKey, previous: Option<(SecretKey, u64)>) -> Slot {
        let current_mac = matches!(key_type, KeyType::Tak | KeyType::Zak)
            .then(|| MacKey::new(&current))
            .flatten();
        let current_pin =
            matches!(key_type, KeyType::Tpk | KeyType::Zpk).then(|| PinKey::new(&current));
        Slot {
            key_type,
            current,
            current_mac,
            current_pin,
            previous,
        }
    }

    /// The replaced key, if still valid at `now_ms`.
    fn previous_at(&self, now_ms: u64) -> Option<&SecretKey> {
        self.previous
            .as_ref()
            .filter(|(_, until)| now_ms < *until)
            .map(|(k, _)| k)
    }

    /// The current key as a PIN key: the one kept, else one made in
    /// `made` (a slot of another type asked for a PIN is refused by the
    /// lookup before this).
    fn pin_key<'a>(&'a self, made: &'a mut Option<PinKey>) -> &'a PinKey {
        match &self.current_pin {
            Some(p) => p,
            None => made.insert(PinKey::new(&self.current)),
        }
    }

    /// `f` of the current key as a MAC key.
    fn with_mac_key<T>(
        &self,
        f: impl FnOnce(&MacKey) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        match &self.current_mac {
            Some(m) => f(m),
            None => f(&prepared_mac_key(&self.current)?),
        }
    }
}

type Keys = HashMap<KeyName, Slot>;

pub struct SoftHsm {
    /// Read on every command, written on a key change.
    keys: RwLock<Keys>,
    lmk: Lmk,
    /// The file the keys came from, rewritten on a key change; `None` for
    /// an HSM made from keys in hand.
    store: Option<Mutex<KeyStore>>,
}

impl std::fmt::Debug for SoftHsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SoftHsm({} keys, LMK KCV {})",
            self.read().len(),
            self.lmk.kcv()
        )
    }
}

fn lookup<'k>(keys: &'k Keys, name: &str, wanted: &[KeyType]) -> Result<&'k Slot, HsmError> {
    let slot = keys
        .get(name)
        .ok_or_else(|| HsmError::UnknownKey(name.to_owned()))?;
    if !wanted.contains(&slot.key_type) {
        return Err(HsmError::WrongKeyType {
            name: name.to_owned(),
            actual: slot.key_type.name(),
            wanted: wanted[0].name(),
        });
    }
    Ok(slot)
}

impl SoftHsm {
    /// Every key of the store at `path`, unwrapped under `lmk` (each
    /// block's authentication checked).
    pub fn open(path: &Path, lmk: Lmk) -> Result<SoftHsm, StoreError> {
        let store = KeyStore::open(path, &lmk)?;
        let mut keys = HashMap::new();
        for entry in store.entries() {
            if keys.len() == MAX_KEYS {
                return Err(StoreError::Parse {
                    path: path.to_owned(),
                    reason: format!("more than {MAX_KEYS} keys"),
                });
            }
            let (entry, key) = store.get(&entry.name, &lmk)?;
            keys.insert(
                KeyName::from(entry.name.as_str()),
                Slot::new(entry.key_type, key, None),
            );
        }
        Ok(SoftHsm {
            keys: RwLock::new(keys),
            lmk,
            store: Some(Mutex::new(store)),
        })
    }

    /// From keys in hand (tests, the simulator's own side).
    pub fn from_keys(
        lmk: Lmk,
        keys: impl IntoIterator<Item = (String, KeyType, SecretKey)>,
    ) -> SoftHsm {
        let keys = keys
            .into_iter()
            .map(|(name, t, k)| (KeyName::from(name.as_str()), Slot::new(t, k, None)))
            .collect();
        SoftHsm {
            keys: RwLock::new(keys),
            lmk,
            store: None,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        // A panic while holding the lock leaves the map whole (inserts are
        // single calls): carry on with it.
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lmk_kcv(&self) -> Kcv {
        self.lmk.kcv()
    }

    /// The algorithm of the key named, if held.
    pub fn algorithm_of(&self, name: &str) -> Option<Algorithm> {
        self.read().get(name).map(|s| s.current.algorithm())
    }

    /// Is a key of this name and one of these types held?
    pub fn has(&self, name: &str, types: &[KeyType]) -> bool {
        self.read()
            .get(name)
            .is_some_and(|s| types.contains(&s.key_type))
    }

    /// The card hash key named `name` (a key of type `hmac`).
    pub fn card_hash_key(&self, name: &str) -> Result<CardHashKey, HsmError> {
        let keys = self.read();
        let slot = lookup(&keys, name, &[KeyType::Hmac])?;
        CardHashKey::new(slot.current.expose_secret())
            .map_err(|e| HsmError::BadInput(e.to_string()))
    }

    /// A key change: `key` becomes `name`'s key (a new name is added), the
    /// key it replaces stays valid for checks for `overlap_ms` after
    /// `now_ms`; the key store file is rewritten (synced, renamed over)
    /// before this returns. On a write error nothing changes.
    pub fn install(
        &self,
        name: &str,
        key_type: KeyType,
        key: SecretKey,
        now_ms: u64,
        overlap_ms: u64,
    ) -> Result<(), HsmError> {
        if let Some(store) = &self.store {
            let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
            let written = store
                .put(&self.lmk, name, key_type, &key)
                .and_then(|()| store.save());
            written.map_err(|e| HsmError::Unavailable(format!("the key store: {e}")))?;
        }
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= MAX_KEYS && !keys.contains_key(name) {
            return Err(HsmError::BadInput(format!("more than {MAX_KEYS} keys")));
        }
        let previous = keys
            .remove(name)
            .map(|old| (old.current, now_ms.saturating_add(overlap_ms)));
        keys.insert(KeyName::from(name), Slot::new(key_type, key, previous));
        Ok(())
    }

    /// A key of `key_type` to go under the key-encrypting key `kek` (a TMK
    /// or ZMK): new and random, for `install` once the other side has it.
    pub fn new_key_under(
        &self,
        kek: &str,
        key_type: KeyType,
    ) -> Result<(SecretKey, String), HsmError> {
        let keys = self.read();
        let kek = lookup(&keys, kek, &[KeyType::Tmk, KeyType::Zmk])?;
        let key =
            random::key(Algorithm::Tdes, 16).map_err(|e| HsmError::Unavailable(e.to_string()))?;
        let header = store::header_for("exchanged", key_type, &key, &self.lmk);
        let under = export_under_kek(&kek.current, &header, &key)?;
        Ok((key, under))
    }

    /// A key that came under `kek` (hex of its TDES ECB encryption) and
    /// its check value, for `install`: refused when the KCV differs.
    pub fn key_from_under(&self, kek: &str, hex: &str, kcv: &Kcv) -> Result<SecretKey, HsmError> {
        let keys = self.read();
        let kek = lookup(&keys, kek, &[KeyType::Tmk, KeyType::Zmk])?;
        let key = import_tdes_under_kek(&kek.current, hex)?;
        if key.kcv() != *kcv {
            return Err(HsmError::BadInput(format!(
                "the key's check value is {}, not the {kcv} that came with it",
                key.kcv()
            )));
        }
        Ok(key)
    }

    /// As [`SoftHsm::execute_at`] with only current keys.
    pub fn execute(&self, command: &HsmCommand) -> Result<HsmReply, HsmError> {
        self.execute_at(command, 0)
    }

    /// Answers `command` at `now_ms`: MACs and PIN blocks that arrive are
    /// checked against a key's predecessor too while its overlap lasts.
    pub fn execute_at(&self, command: &HsmCommand, now_ms: u64) -> Result<HsmReply, HsmError> {
        let keys = self.read();
        match command {
            HsmCommand::TranslatePin {
                source,
                to,
                block,
                to_format,
                pan,
            } => self.translate_pin(&keys, now_ms, (source, block, pan), to, *to_format),
            HsmCommand::GenerateMac {
                key,
                algorithm,
                data,
                len,
            } => {
                let slot = lookup(&keys, key, &[KeyType::Tak, KeyType::Zak])?;
                let full = slot.with_mac_key(|k| full_mac_with(k, *algorithm, data))?;
                if !(4..=full.len()).contains(len) {
                    return Err(HsmError::BadInput(format!("a MAC of {len} bytes")));
                }
                Ok(HsmReply::Mac(full.into_iter().take(*len).collect()))
            }
            HsmCommand::VerifyMac {
                key,
                algorithm,
                data,
                mac,
            } => {
                let slot = lookup(&keys, key, &[KeyType::Tak, KeyType::Zak])?;
                match (
                    slot.with_mac_key(|k| verify_mac_with(k, *algorithm, data, mac)),
                    slot.previous_at(now_ms),
                ) {
                    (Err(HsmError::MacMismatch), Some(old)) => {
                        verify_mac(old, *algorithm, data, mac)?
                    }
                    (result, _) => result?,
                }
                Ok(HsmReply::Verified)
            }
            HsmCommand::GenerateKey {
                key_type,
                algorithm,
                export_under,
                label,
            } => self.generate_key(
                &keys,
                (*key_type, *algorithm),
                export_under.as_deref(),
                label.as_deref(),
            ),
            HsmCommand::ImportKey {
                key_type,
                zmk,
                under,
                label,
            } => {
                let zmk = lookup(&keys, zmk, &[KeyType::Zmk])?;
                let key = import_tdes_under_kek(&zmk.current, under)?;
                let header = store::header_for(
                    label.as_deref().unwrap_or("imported"),
                    *key_type,
                    &key,
                    &self.lmk,
                );
                Ok(HsmReply::Key {
                    block: wrap(self.lmk.key(), &header, &key)?,
                    exported: None,
                    kcv: key.kcv(),
                })
            }
            HsmCommand::Diagnostics => Ok(HsmReply::Diagnostics {
                lmk_kcv: self.lmk.kcv(),
                firmware: format!("switchyard soft HSM {}", env!("CARGO_PKG_VERSION")),
            }),
        }
    }

    /// `(source, block, pan)`: what arrived. A block under the source
    /// key's predecessor (within its overlap) is taken too.
    fn translate_pin(
        &self,
        keys: &Keys,
        now_ms: u64,
        (source, block, pan): (&PinSource, &pinblock::EncryptedPinBlock, &str),
        to: &str,
        to_format: PinFormat,
    ) -> Result<HsmReply, HsmError> {
        let (mut made_from, mut made_to) = (None, None);
        let (from, previous) = match source {
            PinSource::Tpk(name) | PinSource::Zpk(name) => {
                let wanted = match source {
                    PinSource::Tpk(_) => KeyType::Tpk,
                    _ => KeyType::Zpk,
                };
                let slot = lookup(keys, name, &[wanted])?;
                (slot.pin_key(&mut made_from), slot.previous_at(now_ms))
            }
            PinSource::Dukpt { bdk, ksn } => {
                let bdk = lookup(keys, bdk, &[KeyType::Bdk])?;
                let derived = dukpt::pin_key(&bdk.current, ksn)
                    .map_err(|e| HsmError::BadPinBlock(format!("the KSN: {e}")))?;
                (&*made_from.insert(PinKey::new(&derived)), None)
            }
            PinSource::AesDukpt { bdk, ksn } => {
                let bdk = lookup(keys, bdk, &[KeyType::Bdk])?;
                let key_type = match block.format() {
                    PinFormat::Iso4 => dukpt_aes::KeyType::Aes128,
                    PinFormat::Iso0 => dukpt_aes::KeyType::Tdes2,
                };
                let derived =
                    dukpt_aes::working_key(&bdk.current, ksn, dukpt_aes::KeyUsage::Pin, key_type)
                        .map_err(|e| HsmError::BadPinBlock(format!("the KSN: {e}")))?;
                (&*made_from.insert(PinKey::new(&derived)), None)
            }
        };
        let to = lookup(keys, to, &[KeyType::Zpk])?.pin_key(&mut made_to);
        let mut fill = [0u8; 8];
        if to_format == PinFormat::Iso4 {
            random::fill(&mut fill).map_err(|e| HsmError::Unavailable(e.to_string()))?;
        }
        let out = match (
            pinblock::translate_with(block, from, to, to_format, pan, &fill),
            previous,
        ) {
            (Err(_), Some(old)) => {
                pinblock::translate_with(block, &PinKey::new(old), to, to_format, pan, &fill)
            }
            (result, _) => result,
        }
        .map_err(|e| HsmError::BadPinBlock(e.to_string()))?;
        Ok(HsmReply::Pin(out))
    }

    fn generate_key(
        &self,
        keys: &Keys,
        (key_type, algorithm): (KeyType, Algorithm),
        export_under: Option<&str>,
        label: Option<&str>,
    ) -> Result<HsmReply, HsmError> {
        let len = match algorithm {
            Algorithm::Tdes => 16,
            Algorithm::Aes => 16,
        };
        let key = random::key(algorithm, len).map_err(|e| HsmError::Unavailable(e.to_string()))?;
        let header = store::header_for(label.unwrap_or("generated"), key_type, &key, &self.lmk);
        let block = wrap(self.lmk.key(), &header, &key)?;
        let exported = match export_under {
            None => None,
            Some(name) => {
                let kek = lookup(keys, name, &[KeyType::Zmk, KeyType::Tmk])?;
                Some(export_under_kek(&kek.current, &header, &key)?)
            }
        };
        Ok(HsmReply::Key {
            block,
            exported,
            kcv: key.kcv(),
        })
    }
}

fn wrap(kbpk: &SecretKey, header: &keyblock::Header, key: &SecretKey) -> Result<String, HsmError> {
    let mut pad = [0u8; 32];
    random::fill(&mut pad).map_err(|e| HsmError::Unavailable(e.to_string()))?;
    keyblock::wrap(kbpk, header, key, &pad).map_err(|e| HsmError::BadInput(e.to_string()))
}

/// A key for the other side under a key-encrypting key (ZMK or TMK): a
/// TDES key under a TDES KEK as hex of its ECB encryption (what 0800 key
/// exchange carries, checked by its KCV), anything under an AES KEK as a
/// TR-31 version D block.
pub fn export_under_kek(
    kek: &SecretKey,
    header: &keyblock::Header,
    key: &SecretKey,
) -> Result<String, HsmError> {
    match (kek.algorithm(), key.algorithm()) {
        (Algorithm::Aes, _) => wrap(kek, header, key),
        (Algorithm::Tdes, Algorithm::Tdes) => {
            let c = Tdes::new(kek)
                .ok_or_else(|| HsmError::BadInput(format!("KEK {}", kek.describe())))?;
            let mut out = String::with_capacity(2 * key.len());
            for chunk in key.expose_secret().chunks(8) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                c.encrypt(&mut b);
                out.extend(b.iter().map(|x| format!("{x:02X}")));
                b.zeroize();
            }
            Ok(out)
        }
        (Algorithm::Tdes, Algorithm::Aes) => Err(HsmError::BadInput(
            "an AES key can not be exported under a TDES key-encrypting key".into(),
        )),
    }
}

/// The inverse of [`export_under_kek`] for a TDES key under a TDES KEK.
pub fn import_tdes_under_kek(kek: &SecretKey, hex: &str) -> Result<SecretKey, HsmError> {
    let c = Tdes::new(kek).ok_or_else(|| HsmError::BadInput(format!("KEK {}", kek.describe())))?;
    let mut bytes = crate::hex::parse_hex(hex)
        .map_err(|e| HsmError::BadInput(format!("encrypted key: {e}")))?;
    if bytes.len() != 16 && bytes.len() != 24 {
        bytes.zeroize();
        return Err(HsmError::BadInput(format!(
            "an encrypted TDES key of {} bytes",
            bytes.len()
        )));
    }
    for chunk in bytes.chunks_mut(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        c.decrypt(&mut b);
        chunk.copy_from_slice(&b);
        b.zeroize();
    }
    let key = SecretKey::tdes(&bytes).map_err(|e| HsmError::BadInput(e.to_string()));
    bytes.zeroize();
    key
}

fn mac_error(e: MacError) -> HsmError {
    match e {
        MacError::Mismatch => HsmError::MacMismatch,
        other => HsmError::BadInput(other.to_string()),
    }
}

/// `key` as a MAC key (its schedule made).
pub fn prepared_mac_key(key: &SecretKey) -> Result<MacKey, HsmError> {
    MacKey::new(key).ok_or_else(|| HsmError::BadInput(format!("MAC key {}", key.describe())))
}

/// The whole MAC value (8 bytes for TDES, 16 for AES-CMAC).
pub fn full_mac(
    key: &SecretKey,
    algorithm: MacAlgorithm,
    data: &[u8],
) -> Result<MacValue, HsmError> {
    full_mac_with(&prepared_mac_key(key)?, algorithm, data)
}

/// [`full_mac`] under a prepared key.
pub fn full_mac_with(
    key: &MacKey,
    algorithm: MacAlgorithm,
    data: &[u8],
) -> Result<MacValue, HsmError> {
    let mut out = MacValue::new();
    match algorithm {
        MacAlgorithm::Retail => {
            out.try_extend_from_slice(&key.retail(data, Padding::Method1).map_err(mac_error)?)
        }
        MacAlgorithm::TdesCbc => {
            out.try_extend_from_slice(&key.tdes_cbc(data, Padding::Method1).map_err(mac_error)?)
        }
        MacAlgorithm::AesCmac => out.try_extend_from_slice(&key.cmac(data).map_err(mac_error)?),
    }
    .map_err(|_| HsmError::BadInput("MAC longer than 16 bytes".into()))?;
    Ok(out)
}

/// Checks `received` (4 bytes or more: the left-most of the full value),
/// in constant time.
pub fn verify_mac(
    key: &SecretKey,
    algorithm: MacAlgorithm,
    data: &[u8],
    received: &[u8],
) -> Result<(), HsmError> {
    verify_mac_with(&prepared_mac_key(key)?, algorithm, data, received)
}

/// [`verify_mac`] under a prepared key.
pub fn verify_mac_with(
    key: &MacKey,
    algorithm: MacAlgorithm,
    data: &[u8],
    received: &[u8],
) -> Result<(), HsmError> {
    let full = full_mac_with(key, algorithm, data)?;
    mac::compare(&full, received).map_err(mac_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::pinblock::{EncryptedPinBlock, Pin};
    use bytes::Bytes;

    fn tdes(hex: &str) -> SecretKey {
        SecretKey::from_hex(Algorithm::Tdes, hex).expect("key")
    }

    fn hsm() -> SoftHsm {
        let lmk = Lmk::from_components(&[
            SecretKey::from_hex(
                Algorithm::Aes,
                "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
            )
            .expect("c1"),
            SecretKey::from_hex(
                Algorithm::Aes,
                "0F0E0D0C0B0A090807060504030201000F0E0D0C0B0A09080706050403020100",
            )
            .expect("c2"),
        ])
        .expect("lmk");
        SoftHsm::from_keys(
            lmk,
            [
                (
                    "t.tpk".into(),
                    KeyType::Tpk,
                    tdes("0123456789ABCDEFFEDCBA9876543210"),
                ),
                (
                    "a.zpk".into(),
                    KeyType::Zpk,
                    tdes("1A1B1C1D1E1F2A2B2C2D2E2F3A3B3C3D"),
                ),
                (
                    "t.tak".into(),
                    KeyType::Tak,
                    tdes("1A1B1C1D1E1F2A2B2C2D2E2F3A3B3C3D"),
                ),
                (
                    "z.bdk".into(),
                    KeyType::Bdk,
                    tdes("0123456789ABCDEFFEDCBA9876543210"),
                ),
                (
                    "z.zmk".into(),
                    KeyType::Zmk,
                    tdes("89ABCDEF0123456776543210FEDCBA98"),
                ),
            ],
        )
    }

    #[test]
    fn translates_a_pin_from_tpk_to_zpk() {
        let h = hsm();
        let pan = "4012345678909";
        let pin = Pin::new("1234").expect("pin");
        let block = pinblock::encrypt(
            &tdes("0123456789ABCDEFFEDCBA9876543210"),
            PinFormat::Iso0,
            &pin,
            pan,
            &[0; 8],
        )
        .expect("encrypt");
        let out = h
            .execute(&HsmCommand::TranslatePin {
                source: PinSource::Tpk("t.tpk".into()),
                to: "a.zpk".into(),
                block,
                to_format: PinFormat::Iso0,
                pan: pan.into(),
            })
            .expect("translate");
        let HsmReply::Pin(out) = out else {
            panic!("not a PIN block: {out:?}")
        };
        let back = pinblock::decrypt(&tdes("1A1B1C1D1E1F2A2B2C2D2E2F3A3B3C3D"), &out, pan)
            .expect("decrypt");
        assert!(back.matches("1234"));
    }

    #[test]
    fn dukpt_pin_of_the_published_vector_translates() {
        // jPOS DUKPTTest: PIN 1234, PAN 4012345678909, KSN FFFF9876543210E00001.
        let h = hsm();
        let block = EncryptedPinBlock::from_bytes(
            PinFormat::Iso0,
            &crate::hex::parse_hex("1B9C1845EB993A7A").expect("hex"),
        )
        .expect("block");
        let ksn = dukpt::Ksn::new(&crate::hex::parse_hex("FFFF9876543210E00001").expect("hex"))
            .expect("ksn");
        let out = h
            .execute(&HsmCommand::TranslatePin {
                source: PinSource::Dukpt {
                    bdk: "z.bdk".into(),
                    ksn,
                },
                to: "a.zpk".into(),
                block,
                to_format: PinFormat::Iso0,
                pan: "4012345678909".into(),
            })
            .expect("translate");
        let HsmReply::Pin(out) = out else {
            panic!("not a PIN block")
        };
        let back = pinblock::decrypt(
            &tdes("1A1B1C1D1E1F2A2B2C2D2E2F3A3B3C3D"),
            &out,
            "4012345678909",
        )
        .expect("decrypt");
        assert!(back.matches("1234"));
    }

    /// AES DUKPT: a format 4 block made under X9.24-3's published PIN
    /// working keys (AES-128 BDK FEDCBA9876543210F1F1F1F1F1F1F1F1, initial
    /// key ID 1234567890123456) translates from the BDK and the KSN alone.
    #[test]
    fn aes_dukpt_pins_under_the_published_working_keys_translate() {
        const BDK: &str = "FEDCBA9876543210F1F1F1F1F1F1F1F1";
        let lmk = Lmk::from_components(&[
            SecretKey::aes(&[1; 32]).expect("c1"),
            SecretKey::aes(&[2; 32]).expect("c2"),
        ])
        .expect("lmk");
        let zpk4 = SecretKey::aes(&[0x4A; 16]).expect("key");
        let h = SoftHsm::from_keys(
            lmk,
            [
                (
                    "aes.bdk".into(),
                    KeyType::Bdk,
                    SecretKey::from_hex(Algorithm::Aes, BDK).expect("bdk"),
                ),
                (
                    "tdes.bdk".into(),
                    KeyType::Bdk,
                    tdes("0123456789ABCDEFFEDCBA9876543210"),
                ),
                ("a4.zpk".into(), KeyType::Zpk, zpk4.clone()),
                (
                    "a.zpk".into(),
                    KeyType::Zpk,
                    tdes("1A1B1C1D1E1F2A2B2C2D2E2F3A3B3C3D"),
                ),
            ],
        );
        let pan = "4012345678909";
        let pin = Pin::new("1234").expect("pin");
        let ksn = |counter: u32| {
            dukpt_aes::AesKsn::new(&crate::hex::parse_hex("123456789012345600000000").expect("hex"))
                .expect("ksn")
                .with_counter(counter)
        };
        let translate =
            |bdk: &str, counter: u32, block: &pinblock::EncryptedPinBlock, to: &str, f| {
                h.execute(&HsmCommand::TranslatePin {
                    source: PinSource::AesDukpt {
                        bdk: bdk.into(),
                        ksn: ksn(counter),
                    },
                    to: to.into(),
                    block: block.clone(),
                    to_format: f,
                    pan: pan.into(),
                })
            };
        for (counter, pin_key) in [
            (0x00000001, "AF8CB133A78F8DC2D1359F18527593FB"),
            (0xFFFF0000, "27EFAC1D158632588F4AC69E45C247C4"),
        ] {
            let key = SecretKey::from_hex(Algorithm::Aes, pin_key).expect("key");
            let block =
                pinblock::encrypt(&key, PinFormat::Iso4, &pin, pan, &[0x5C; 8]).expect("block");
            let Ok(HsmReply::Pin(out)) =
                translate("aes.bdk", counter, &block, "a4.zpk", PinFormat::Iso4)
            else {
                panic!("not translated (counter {counter:#x})")
            };
            assert!(
                pinblock::decrypt(&zpk4, &out, pan)
                    .expect("under the ZPK")
                    .matches("1234")
            );
            // To a TDES zone in format 0 as well.
            let Ok(HsmReply::Pin(out)) =
                translate("aes.bdk", counter, &block, "a.zpk", PinFormat::Iso0)
            else {
                panic!("not translated to format 0")
            };
            let zpk = tdes("1A1B1C1D1E1F2A2B2C2D2E2F3A3B3C3D");
            assert!(
                pinblock::decrypt(&zpk, &out, pan)
                    .expect("under the ZPK")
                    .matches("1234")
            );
            // Another counter's key does not open it.
            assert!(matches!(
                translate("aes.bdk", counter ^ 0x10, &block, "a4.zpk", PinFormat::Iso4),
                Err(HsmError::BadPinBlock(_))
            ));
        }
        let key =
            SecretKey::from_hex(Algorithm::Aes, "AF8CB133A78F8DC2D1359F18527593FB").expect("key");
        let block = pinblock::encrypt(&key, PinFormat::Iso4, &pin, pan, &[0; 8]).expect("block");
        // A TDES BDK, counter 0, more than 16 one bits: refused as bad blocks.
        for (bdk, counter) in [("tdes.bdk", 1), ("aes.bdk", 0), ("aes.bdk", 0x0001_FFFF)] {
            let got = translate(bdk, counter, &block, "a4.zpk", PinFormat::Iso4);
            assert!(
                matches!(&got, Err(HsmError::BadPinBlock(m)) if m.starts_with("the KSN")),
                "{bdk} {counter:#x}: {got:?}"
            );
        }
    }

    #[test]
    fn a_pin_under_another_key_is_refused_as_a_bad_block() {
        let h = hsm();
        let pan = "4012345678909";
        let pin = Pin::new("1234").expect("pin");
        let block = pinblock::encrypt(
            &tdes("1111111111111111FEDCBA9876543210"),
            PinFormat::Iso0,
            &pin,
            pan,
            &[0; 8],
        )
        .expect("encrypt");
        let got = h.execute(&HsmCommand::TranslatePin {
            source: PinSource::Tpk("t.tpk".into()),
            to: "a.zpk".into(),
            block,
            to_format: PinFormat::Iso0,
            pan: pan.into(),
        });
        assert!(matches!(got, Err(HsmError::BadPinBlock(_))), "{got:?}");
    }

    #[test]
    fn macs_verify_and_a_changed_byte_does_not() {
        let h = hsm();
        let data = Bytes::from_static(b"0200 some message bytes");
        let HsmReply::Mac(mac) = h
            .execute(&HsmCommand::GenerateMac {
                key: "t.tak".into(),
                algorithm: MacAlgorithm::Retail,
                data: data.clone(),
                len: 8,
            })
            .expect("mac")
        else {
            panic!("not a MAC")
        };
        assert_eq!(mac.len(), 8);
        let verify = |data: Bytes, mac: MacValue| {
            h.execute(&HsmCommand::VerifyMac {
                key: "t.tak".into(),
                algorithm: MacAlgorithm::Retail,
                data,
                mac,
            })
        };
        assert_eq!(verify(data.clone(), mac.clone()), Ok(HsmReply::Verified));
        let mut bad = mac.clone();
        bad[0] ^= 1;
        assert_eq!(verify(data, bad), Err(HsmError::MacMismatch));
    }

    #[test]
    fn keys_are_checked_by_name_and_type() {
        let h = hsm();
        let got = h.execute(&HsmCommand::GenerateMac {
            key: "t.tpk".into(),
            algorithm: MacAlgorithm::Retail,
            data: Bytes::new(),
            len: 8,
        });
        assert!(matches!(got, Err(HsmError::WrongKeyType { .. })), "{got:?}");
        let got = h.execute(&HsmCommand::GenerateMac {
            key: "nope".into(),
            algorithm: MacAlgorithm::Retail,
            data: Bytes::new(),
            len: 8,
        });
        assert_eq!(got, Err(HsmError::UnknownKey("nope".into())));
    }

    #[test]
    fn a_generated_key_comes_under_the_lmk_and_under_the_zmk() {
        let h = hsm();
        let HsmReply::Key {
            block,
            exported,
            kcv,
        } = h
            .execute(&HsmCommand::GenerateKey {
                key_type: KeyType::Zpk,
                algorithm: Algorithm::Tdes,
                export_under: Some("z.zmk".into()),
                label: Some("z.zpk".into()),
            })
            .expect("generate")
        else {
            panic!("not a key")
        };
        let (header, under_lmk) = keyblock::unwrap(h.lmk.key(), &block).expect("under the LMK");
        assert_eq!(header.block("LB"), Some("z.zpk"), "labelled with its name");
        let exported = exported.expect("exported");
        let under_zmk = import_tdes_under_kek(&tdes("89ABCDEF0123456776543210FEDCBA98"), &exported)
            .expect("under the ZMK");
        assert_eq!(under_lmk.kcv(), kcv);
        assert_eq!(under_zmk.kcv(), kcv);
        // Imported back from under the ZMK: the same key, under the LMK.
        let Ok(HsmReply::Key {
            block,
            exported: None,
            kcv: imported,
        }) = h.execute(&HsmCommand::ImportKey {
            key_type: KeyType::Zpk,
            zmk: "z.zmk".into(),
            under: exported,
            label: None,
        })
        else {
            panic!("not an imported key")
        };
        assert_eq!(imported, kcv);
        let (_, key) = keyblock::unwrap(h.lmk.key(), &block).expect("under the LMK");
        assert_eq!(key.kcv(), kcv);
    }
}
