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
//! does, with the same errors, before anything leaves the process. A key
//! exchange (A0 for a terminal's keys, A6 for a zone's) gives new blocks
//! under the LMK, which [`KeyBlocks::install`] writes to the file and
//! puts in the map, the old block still taken during the overlap.

pub mod client;
pub mod core;
pub mod sim;
pub mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::KeyName;
use super::soft::MAX_KEYS;
use crate::security::kcv::Kcv;
use crate::security::store::{KeyStore, StoreError, StoredBlock};

pub use client::{PayShieldClient, PayShieldConfig};

/// A name's block and, after a key change, the block it replaced, still
/// taken for checks until its time (ms since the epoch): the other side
/// may still use the old key for what it sent before the change.
#[derive(Debug)]
struct Slot {
    current: Arc<StoredBlock>,
    previous: Option<(Arc<StoredBlock>, u64)>,
}

/// The key store's blocks by name: read on every command, changed by a
/// key exchange ([`KeyBlocks::install`]: one current and one previous
/// block per name, at most [`MAX_KEYS`] names).
#[derive(Debug, Default)]
pub struct KeyBlocks {
    lmk_kcv: Option<Kcv>,
    keys: RwLock<HashMap<KeyName, Slot>>,
    /// The file the blocks came from, rewritten by `install`; the lock
    /// keeps two key changes from interleaving their rewrites.
    store: Option<Mutex<PathBuf>>,
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
        map.store = Some(Mutex::new(path.to_owned()));
        Ok(map)
    }

    /// Blocks in hand (tests): no file behind them.
    pub fn from_blocks(blocks: impl IntoIterator<Item = StoredBlock>) -> KeyBlocks {
        let keys = blocks
            .into_iter()
            .map(|b| {
                let slot = Slot {
                    current: Arc::new(b),
                    previous: None,
                };
                (KeyName::from(slot.current.name.as_str()), slot)
            })
            .collect();
        KeyBlocks {
            lmk_kcv: None,
            keys: RwLock::new(keys),
            store: None,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<KeyName, Slot>> {
        // Every write is one insert: a panic elsewhere leaves the map whole.
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The KCV of the LMK the store says its blocks are under (compare
    /// with the HSM's diagnostics).
    pub fn lmk_kcv(&self) -> Option<Kcv> {
        self.lmk_kcv
    }

    /// `name`'s current block.
    pub fn get(&self, name: &str) -> Option<Arc<StoredBlock>> {
        self.read().get(name).map(|s| s.current.clone())
    }

    /// The block `name`'s current one replaced, while it is still taken
    /// at `now_ms`.
    pub fn previous_at(&self, name: &str, now_ms: u64) -> Option<Arc<StoredBlock>> {
        self.read()
            .get(name)
            .and_then(|s| s.previous.as_ref())
            .filter(|(_, until)| now_ms < *until)
            .map(|(b, _)| b.clone())
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// A key change: each of `blocks` becomes its name's block (a new name
    /// is added), the one it replaces still taken for `overlap_ms` after
    /// `now_ms`. The key store file, when there is one, is rewritten
    /// (synced, renamed over) first: blocks it would refuse, or a failed
    /// write, change nothing. Blocks: call it off the runtime's threads.
    pub fn install(
        &self,
        blocks: Vec<StoredBlock>,
        now_ms: u64,
        overlap_ms: u64,
    ) -> Result<(), StoreError> {
        // Installs take the file's lock first, so the count checked here
        // is the one the insert below finds.
        let file = self
            .store
            .as_ref()
            .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()));
        let new = {
            let keys = self.read();
            blocks
                .iter()
                .filter(|b| !keys.contains_key(b.name.as_str()))
                .count()
        };
        if self.len() + new > MAX_KEYS {
            return Err(StoreError::Parse {
                path: file.as_deref().cloned().unwrap_or_default(),
                reason: format!("more than {MAX_KEYS} keys"),
            });
        }
        if let Some(path) = &file {
            KeyStore::put_blocks(path, &blocks)?;
        }
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let until = now_ms.saturating_add(overlap_ms);
        for b in blocks {
            let name = KeyName::from(b.name.as_str());
            let previous = keys.remove(&name).map(|old| (old.current, until));
            keys.insert(
                name,
                Slot {
                    current: Arc::new(b),
                    previous,
                },
            );
        }
        Ok(())
    }
}
