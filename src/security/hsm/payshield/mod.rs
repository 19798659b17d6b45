//! The Thales payShield host command protocol over TCP: the codec
//! ([`wire`], pure), the client the switch calls ([`client`]: a handle, and
//! per connection a driver around a sans-IO [`core`]), and the
//! emulator of the command subset that the tests run it against
//! ([`sim`], `switchyard hsm-sim`).
//!
//! The switch holds the key store file; its blocks are under the HSM's
//! LMK, which the switch does not have. [`KeyBlocks`] reads them without
//! the LMK, so the client can resolve a [`KeyName`] to the block it sends
//! and check the key's type and algorithm as [`super::soft::SoftHsm`]
//! does, with the same errors, before anything leaves the process.

pub mod client;
pub mod core;
pub mod sim;
pub mod wire;

use std::collections::HashMap;
use std::path::Path;

use super::KeyName;
use super::soft::MAX_KEYS;
use crate::security::kcv::Kcv;
use crate::security::store::{KeyStore, StoreError, StoredBlock};

pub use client::{PayShieldClient, PayShieldConfig};

/// The key store's blocks by name, read-only (built once; a new file means
/// a new map).
#[derive(Debug, Default)]
pub struct KeyBlocks {
    lmk_kcv: Option<Kcv>,
    keys: HashMap<KeyName, StoredBlock>,
}

impl KeyBlocks {
    /// The blocks of the key store at `path` (no LMK needed).
    pub fn open(path: &Path) -> Result<KeyBlocks, StoreError> {
        let (kcv, blocks) = KeyStore::read_blocks(path)?;
        if blocks.len() > MAX_KEYS {
            return Err(StoreError::Parse {
                path: path.to_owned(),
                reason: format!("more than {MAX_KEYS} keys"),
            });
        }
        let mut map = KeyBlocks::from_blocks(blocks);
        map.lmk_kcv = Some(kcv);
        Ok(map)
    }

    pub fn from_blocks(blocks: impl IntoIterator<Item = StoredBlock>) -> KeyBlocks {
        KeyBlocks {
            lmk_kcv: None,
            keys: blocks
                .into_iter()
                .map(|b| (KeyName::from(b.name.as_str()), b))
                .collect(),
        }
    }

    /// The KCV of the LMK the store says its blocks are under (compare
    /// with the HSM's diagnostics).
    pub fn lmk_kcv(&self) -> Option<Kcv> {
        self.lmk_kcv
    }

    pub fn get(&self, name: &str) -> Option<&StoredBlock> {
        self.keys.get(name)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
