//! `--pin` and `--mac`: the load generator as a terminal with keys. Every
//! 0100/0200 carries a PIN block (ISO 9564 format 0 under the terminal PIN
//! key, the PIN bound to the card number) and every transaction request a
//! MAC under the terminal MAC key (ISO 9797-1 algorithm 3, the retail MAC,
//! or AES-CMAC); every answer's MAC is checked, and an answer whose MAC
//! does not verify makes the run not clean.
//!
//! The keys come from a small TOML file, as a terminal's secure memory
//! would hold them (test keys only: a real terminal never has them in a
//! file):
//!
//! ```toml
//! pin_key = "0123456789ABCDEFFEDCBA9876543210"   # TPK, TDES
//! mac_key = "1A1B1C1D1E1F2A2B2C2D2E2F3A3B3C3D"   # TAK
//! mac_algorithm = "retail"                      # or "aes-cmac"
//! pin = "1234"                                  # every card's PIN
//! ```

use std::path::Path;

use serde::Deserialize;
use switchyard_protocol::crypto::mac::{self, MacKey, Padding};
use switchyard_protocol::crypto::pinblock::{self, Pin, PinFormat};
use switchyard_protocol::crypto::{Algorithm, SecretKey};
use switchyard_protocol::iso8583::Message;
use switchyard_protocol::iso8583::mac_field::MacBytes;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacKind {
    Retail,
    AesCmac,
}

/// What the terminal signs and encrypts with.
pub struct TerminalKeys {
    /// With `--pin`: the TPK and the PIN.
    pub pin: Option<(SecretKey, Pin)>,
    /// With `--mac`: the TAK.
    pub mac: Option<(MacKind, SecretKey)>,
    /// `mac`'s key with its schedule made once.
    prepared_mac: Option<MacKey>,
}

impl std::fmt::Debug for TerminalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalKeys")
            .field("pin_key", &self.pin.as_ref().map(|(k, _)| k.kcv()))
            .field("mac", &self.mac.as_ref().map(|(m, k)| (m, k.kcv())))
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    pin_key: Option<String>,
    mac_key: Option<String>,
    mac_algorithm: Option<String>,
    pin: Option<String>,
}

impl TerminalKeys {
    /// Reads `path`, taking what `pin` and `mac` ask for. Errors name the
    /// file and the key, never a key's value.
    pub fn load(path: &Path, pin: bool, mac: bool) -> Result<TerminalKeys, String> {
        let name = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
        let f: File = toml::from_str(&text).map_err(|e| format!("{name}: {}", e.message()))?;
        let pin = if pin {
            let key = f
                .pin_key
                .ok_or(format!("{name}: --pin needs pin_key (the TPK)"))?;
            let key = SecretKey::from_hex(Algorithm::Tdes, &key)
                .map_err(|e| format!("{name}: pin_key: {e}"))?;
            let digits = f.pin.unwrap_or_else(|| "1234".into());
            let p = Pin::new(&digits).map_err(|e| format!("{name}: pin: {e}"))?;
            Some((key, p))
        } else {
            None
        };
        let mac = if mac {
            let key = f
                .mac_key
                .ok_or(format!("{name}: --mac needs mac_key (the TAK)"))?;
            let kind = match f.mac_algorithm.as_deref().unwrap_or("retail") {
                "retail" => MacKind::Retail,
                "aes-cmac" => MacKind::AesCmac,
                other => {
                    return Err(format!(
                        "{name}: mac_algorithm `{other}`: retail or aes-cmac"
                    ));
                }
            };
            let alg = match kind {
                MacKind::Retail => Algorithm::Tdes,
                MacKind::AesCmac => Algorithm::Aes,
            };
            let key =
                SecretKey::from_hex(alg, &key).map_err(|e| format!("{name}: mac_key: {e}"))?;
            Some((kind, key))
        } else {
            None
        };
        let prepared_mac = match &mac {
            Some((_, key)) => Some(MacKey::new(key).ok_or(format!(
                "{name}: mac_key: not a MAC key ({})",
                key.describe()
            ))?),
            None => None,
        };
        Ok(TerminalKeys {
            pin,
            mac,
            prepared_mac,
        })
    }

    /// DE52 for a card: the PIN in format 0 under the TPK.
    pub fn pin_block(&self, pan: &[u8]) -> Option<[u8; 8]> {
        let (key, pin) = self.pin.as_ref()?;
        let pan = std::str::from_utf8(pan).ok()?;
        let block = pinblock::encrypt(key, PinFormat::Iso0, pin, pan, &[0; 8]).ok()?;
        block.as_bytes().try_into().ok()
    }

    /// The MAC of `data`, `len` bytes.
    pub fn mac(&self, data: &[u8], len: usize) -> Result<MacBytes, String> {
        let (Some((kind, _)), Some(key)) = (&self.mac, &self.prepared_mac) else {
            return Err("no MAC key".into());
        };
        let full: MacBytes = match kind {
            MacKind::Retail => key
                .retail(data, Padding::Method1)
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect(),
            MacKind::AesCmac => key
                .cmac(data)
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect(),
        };
        if len > full.len() {
            return Err(format!("a MAC of {len} bytes"));
        }
        Ok(full.into_iter().take(len).collect())
    }

    /// Does an answer carry a MAC that verifies (true without `--mac`)?
    pub fn answer_mac_ok(&self, answer: &Message) -> bool {
        if self.mac.is_none() {
            return true;
        }
        let (Some((kind, _)), Some(key), Ok(p)) =
            (&self.mac, &self.prepared_mac, answer.mac_parts())
        else {
            return false;
        };
        match kind {
            MacKind::Retail => key
                .retail(p.data, Padding::Method1)
                .and_then(|full| mac::compare(&full, &p.mac)),
            MacKind::AesCmac => key
                .cmac(p.data)
                .and_then(|full| mac::compare(&full, &p.mac)),
        }
        .is_ok()
    }
}
