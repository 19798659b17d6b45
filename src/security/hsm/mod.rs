//! The hardware security module interface: the few operations a switch
//! asks of an HSM, named by what they do, with keys named as the key store
//! names them.
//!
//! Two implementations answer the same [`HsmCommand`]s:
//!
//! * [`soft::SoftHsm`], in the process: the key store's blocks unwrapped
//!   once under the LMK at start and held zeroized-on-drop; it answers at
//!   once, so the core calls it in line;
//! * [`payshield::PayShieldClient`], a client for the Thales payShield
//!   host command protocol over TCP (and `switchyard hsm-sim`, an emulator
//!   of the subset, [`payshield::sim`]): its answers come later, so the
//!   core issues commands as effects and resumes the request when the
//!   answer comes.
//!
//! A command carries key *names*; each implementation resolves them (the
//! soft one to the unwrapped key, the payShield client to the key block
//! under the HSM's LMK, which is what the key store file holds). No
//! command, answer or error carries a clear key or PIN, and `Debug` of a
//! PIN block shows only its format.

pub mod payshield;
pub mod soft;

use std::sync::Arc;

use arrayvec::ArrayVec;
use bytes::Bytes;

use super::dukpt::Ksn;
use super::dukpt_aes::AesKsn;
use super::kcv::Kcv;
use super::keys::Algorithm;
use super::pinblock::{EncryptedPinBlock, PinFormat};
use super::store::KeyType;

/// A key's name in the key store (`term0001.tpk`). Shared, so a command
/// built per request clones a pointer, not the text.
pub type KeyName = Arc<str>;

/// How a MAC is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MacAlgorithm {
    /// ISO 9797-1 algorithm 3 (the retail MAC), double-length TDES,
    /// padding method 1: what most ISO 8583 hosts mean by "the MAC".
    Retail,
    /// ISO 9797-1 algorithm 1 (TDES CBC-MAC), padding method 1.
    TdesCbc,
    /// AES-CMAC (NIST SP 800-38B), truncated to the MAC field's length.
    AesCmac,
}

impl MacAlgorithm {
    pub fn parse(text: &str) -> Option<MacAlgorithm> {
        match text {
            "retail" | "iso9797-1-3" => Some(MacAlgorithm::Retail),
            "tdes-cbc" | "iso9797-1-1" => Some(MacAlgorithm::TdesCbc),
            "aes-cmac" | "cmac" => Some(MacAlgorithm::AesCmac),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MacAlgorithm::Retail => "retail",
            MacAlgorithm::TdesCbc => "tdes-cbc",
            MacAlgorithm::AesCmac => "aes-cmac",
        }
    }
}

/// The key a PIN block arrives under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// A terminal PIN key.
    Tpk(KeyName),
    /// Another zone's PIN key.
    Zpk(KeyName),
    /// TDES DUKPT: the base derivation key and the transaction's KSN.
    Dukpt { bdk: KeyName, ksn: Ksn },
    /// AES DUKPT (ANSI X9.24-3): an AES base derivation key and the
    /// transaction's 12-byte KSN. The PIN working key is AES-128 for a
    /// format 4 block, double-length TDES for a format 0 one.
    AesDukpt { bdk: KeyName, ksn: AesKsn },
}

/// A MAC as it travels: 4 to 16 bytes (DE64 and DE128 carry 8).
pub type MacValue = ArrayVec<u8, 16>;

/// What the switch asks of an HSM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HsmCommand {
    /// DE52 from `source` to the zone PIN key `to`, in `to_format`. `pan`
    /// is the card number's digits (both formats bind the PIN to it).
    TranslatePin {
        source: PinSource,
        to: KeyName,
        block: EncryptedPinBlock,
        to_format: PinFormat,
        pan: String,
    },
    /// A MAC of `len` bytes over `data`.
    GenerateMac {
        key: KeyName,
        algorithm: MacAlgorithm,
        data: Bytes,
        len: usize,
    },
    /// Does `mac` (its length is the one checked) belong to `data`?
    VerifyMac {
        key: KeyName,
        algorithm: MacAlgorithm,
        data: Bytes,
        mac: MacValue,
    },
    /// A new random key of `key_type`, as a key block under the LMK, and,
    /// with `export_under` (a ZMK or TMK), under that key too, for the
    /// other side.
    GenerateKey {
        key_type: KeyType,
        algorithm: Algorithm,
        export_under: Option<KeyName>,
        /// The name the block is made for (its `LB` label block), so it
        /// can go in the key store under that name.
        label: Option<KeyName>,
    },
    /// A double-length TDES key that came under the zone master key `zmk`
    /// (`under`: 32 hex digits of its ECB encryption), as a key block
    /// under the LMK with its KCV (nothing exported). The caller compares
    /// the KCV with the one that came with the key before it takes it.
    ImportKey {
        key_type: KeyType,
        zmk: KeyName,
        under: String,
        label: Option<KeyName>,
    },
    /// Is the HSM there, and under which LMK?
    Diagnostics,
}

impl HsmCommand {
    /// A short name for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            HsmCommand::TranslatePin { .. } => "translate_pin",
            HsmCommand::GenerateMac { .. } => "generate_mac",
            HsmCommand::VerifyMac { .. } => "verify_mac",
            HsmCommand::GenerateKey { .. } => "generate_key",
            HsmCommand::ImportKey { .. } => "import_key",
            HsmCommand::Diagnostics => "diagnostics",
        }
    }
}

/// An HSM's answer to a command that succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HsmReply {
    Pin(EncryptedPinBlock),
    Mac(MacValue),
    /// The MAC verified.
    Verified,
    Key {
        /// Under the LMK (for the key store).
        block: String,
        /// Under `export_under`: a key block (TR-31 version D) with that
        /// key as its key block protection key, for the other side.
        exported: Option<String>,
        kcv: Kcv,
    },
    Diagnostics {
        lmk_kcv: Kcv,
        /// What the HSM says it runs.
        firmware: String,
    },
}

/// Why a command failed. Never a key, PIN or PIN block.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HsmError {
    #[error("no key named {0:?} in the HSM's key store")]
    UnknownKey(String),
    #[error("key {name:?} is a {actual} key; this needs a {wanted} key")]
    WrongKeyType {
        name: String,
        actual: &'static str,
        wanted: &'static str,
    },
    #[error("the MAC does not verify")]
    MacMismatch,
    /// The PIN block does not decrypt to a valid block under the source
    /// key (wrong key, PAN or format): the request gets 81.
    #[error("PIN block refused: {0}")]
    BadPinBlock(String),
    #[error("{0}")]
    BadInput(String),
    /// The HSM did not answer in time: the request gets 96.
    #[error("the HSM did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the HSM is not reachable: {0}")]
    Unavailable(String),
    /// The HSM answered with an error code of its own.
    #[error("the HSM refused the command with error code {code}: {meaning}")]
    Refused { code: String, meaning: String },
    #[error("the HSM's answer could not be read: {0}")]
    Protocol(String),
}
