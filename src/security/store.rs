//! The key store: a TOML file of key blocks under the LMK.
//!
//! ```toml
//! format = 1
//! lmk_kcv = "A1B2C3"          # the LMK the blocks are under
//!
//! [[key]]
//! name = "term0001.tpk"       # also in the block (LB), authenticated
//! type = "tpk"                # also in the block (proprietary block 10)
//! kcv = "08D7B4"              # also in the block (KC)
//! block = "D0176P0TB00E0400LB10term0001.tpk..."
//! ```
//!
//! Each block is an X9.143 / TR-31 version D key block (see
//! [`super::keyblock`]) with these optional blocks: `LB` the key's name,
//! `10` the Switchyard key type, `KC` the key's check value (`00` + KCV
//! for TDES, `01` + KCV for AES, as X9.143 numbers the methods), `KP` the
//! LMK's (`01` + KCV). The plain `name`, `type` and `kcv` are there for a
//! reader of the file; on open they must match the authenticated header,
//! or the store is refused as tampered. A wrong LMK is told apart from a
//! changed block by `lmk_kcv`.
//!
//! The store is rewritten whole (to a temporary file, synced, renamed) on
//! every change; one writer at a time (the `keys` commands).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::kcv::Kcv;
use super::keyblock::{self, Header};
use super::keys::{Algorithm, SecretKey};
use super::lmk::Lmk;
use super::random;

/// What a key is for, as the switch names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum KeyType {
    /// Terminal PIN key: DE52 from a terminal.
    Tpk,
    /// Terminal authentication (MAC) key.
    Tak,
    /// Zone PIN key: DE52 to an acquirer.
    Zpk,
    /// Zone authentication (MAC) key.
    Zak,
    /// Zone master key: wraps keys exchanged with an acquirer.
    Zmk,
    /// Terminal master key: wraps a terminal's TPK and TAK.
    Tmk,
    /// DUKPT base derivation key.
    Bdk,
    /// The key of the keyed hash (HMAC-SHA-256) that names cards at rest,
    /// in the journal and the store. Held as an AES-256 key's 32 bytes.
    Hmac,
}

pub const KEY_TYPES: [KeyType; 8] = [
    KeyType::Tpk,
    KeyType::Tak,
    KeyType::Zpk,
    KeyType::Zak,
    KeyType::Zmk,
    KeyType::Tmk,
    KeyType::Bdk,
    KeyType::Hmac,
];

impl KeyType {
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Tpk => "tpk",
            KeyType::Tak => "tak",
            KeyType::Zpk => "zpk",
            KeyType::Zak => "zak",
            KeyType::Zmk => "zmk",
            KeyType::Tmk => "tmk",
            KeyType::Bdk => "bdk",
            KeyType::Hmac => "hmac",
        }
    }

    pub fn parse(text: &str) -> Option<KeyType> {
        KEY_TYPES
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(text))
    }

    /// TR-31 key usage: P0 PIN encryption; M3 ISO 9797-1 MAC algorithm 3
    /// (TDES) or M6 AES-CMAC; K0 key encryption or wrapping; B0 BDK; M7
    /// HMAC.
    pub fn usage(self, algorithm: Algorithm) -> [u8; 2] {
        match (self, algorithm) {
            (KeyType::Tpk | KeyType::Zpk, _) => *b"P0",
            (KeyType::Tak | KeyType::Zak, Algorithm::Tdes) => *b"M3",
            (KeyType::Tak | KeyType::Zak, Algorithm::Aes) => *b"M6",
            (KeyType::Zmk | KeyType::Tmk, _) => *b"K0",
            (KeyType::Bdk, _) => *b"B0",
            (KeyType::Hmac, _) => *b"M7",
        }
    }

    /// TR-31 mode of use: B both ways, C MAC generate and verify, X key
    /// derivation only.
    pub fn mode(self) -> u8 {
        match self {
            KeyType::Tak | KeyType::Zak | KeyType::Hmac => b'C',
            KeyType::Bdk => b'X',
            _ => b'B',
        }
    }

    /// A BDK never leaves the switch (every device key can be derived from
    /// it), nor does the card hash key (with it, a card list reverses every
    /// hash at rest); the others may be exported under a ZMK or TMK.
    pub fn exportable(self) -> bool {
        !matches!(self, KeyType::Bdk | KeyType::Hmac)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a key store: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error(
        "{path}: the store's keys are under the LMK with KCV {store}, and the LMK given has \
         KCV {given}: wrong LMK file?"
    )]
    WrongLmk {
        path: PathBuf,
        store: Kcv,
        given: Kcv,
    },
    #[error("{path}: key {name:?} is refused: {reason} (the file was changed, or is damaged)")]
    Tampered {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: already exists")]
    Exists { path: PathBuf },
    #[error("a key named {0:?} is already in the store")]
    Duplicate(String),
    #[error("no key named {0:?} in the store")]
    NotFound(String),
    #[error("key name {0:?}: 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadName(String),
    #[error("{0}")]
    Key(String),
    #[error(transparent)]
    Random(#[from] random::RandomError),
}

/// A key's description: what `keys list` shows. No key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub key_type: KeyType,
    pub algorithm: Algorithm,
    /// Bits.
    pub bits: usize,
    pub usage: String,
    pub mode: char,
    pub exportable: bool,
    pub version: String,
    pub kcv: Kcv,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRow {
    name: String,
    #[serde(rename = "type")]
    key_type: String,
    kcv: String,
    block: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    lmk_kcv: String,
    #[serde(default, rename = "key")]
    keys: Vec<FileRow>,
}

const FORMAT: u32 = 1;
const TYPE_BLOCK: &str = "10";

pub struct KeyStore {
    path: PathBuf,
    lmk_kcv: Kcv,
    entries: Vec<(Entry, String)>,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn kc_block(key: &SecretKey) -> String {
    let method = match key.algorithm() {
        Algorithm::Tdes => "00",
        Algorithm::Aes => "01",
    };
    format!("{method}{}", key.kcv())
}

impl KeyStore {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lmk_kcv(&self) -> Kcv {
        self.lmk_kcv
    }

    /// A new, empty store (written at once); refuses an existing file.
    pub fn create(path: &Path, lmk: &Lmk) -> Result<KeyStore, StoreError> {
        if path.exists() {
            return Err(StoreError::Exists {
                path: path.to_owned(),
            });
        }
        let store = KeyStore {
            path: path.to_owned(),
            lmk_kcv: lmk.kcv(),
            entries: Vec::new(),
        };
        store.save()?;
        Ok(store)
    }

    /// Opens a store and checks every block under `lmk`.
    pub fn open(path: &Path, lmk: &Lmk) -> Result<KeyStore, StoreError> {
        let (file, store_kcv) = read_file(path)?;
        if store_kcv != lmk.kcv() {
            return Err(StoreError::WrongLmk {
                path: path.to_owned(),
                store: store_kcv,
                given: lmk.kcv(),
            });
        }
        let mut store = KeyStore {
            path: path.to_owned(),
            lmk_kcv: store_kcv,
            entries: Vec::with_capacity(file.keys.len()),
        };
        for row in file.keys {
            let tampered = |reason: String| StoreError::Tampered {
                path: path.to_owned(),
                name: row.name.clone(),
                reason,
            };
            let (header, key) =
                keyblock::unwrap(lmk.key(), &row.block).map_err(|e| tampered(e.to_string()))?;
            let entry = entry_of(&header, &key).map_err(tampered)?;
            if entry.name != row.name
                || entry.key_type.name() != row.key_type
                || entry.kcv.to_string() != row.kcv.to_ascii_uppercase()
            {
                return Err(tampered(
                    "its name, type or KCV differs from its key block's".into(),
                ));
            }
            if store.find(&entry.name).is_some() {
                return Err(tampered("the name is there twice".into()));
            }
            store.entries.push((entry, row.block));
        }
        Ok(store)
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|(e, _)| e.name == name)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().map(|(e, _)| e)
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.find(name).map(|i| &self.entries[i].0)
    }

    /// A key and its description (the block unwrapped again under `lmk`).
    pub fn get(&self, name: &str, lmk: &Lmk) -> Result<(Entry, SecretKey), StoreError> {
        let i = self
            .find(name)
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        let (entry, block) = &self.entries[i];
        let (_, key) = keyblock::unwrap(lmk.key(), block).map_err(|e| StoreError::Tampered {
            path: self.path.clone(),
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        Ok((entry.clone(), key))
    }

    /// Adds a key, or replaces the one of that name (not saved until
    /// [`KeyStore::save`]): a key change.
    pub fn put(
        &mut self,
        lmk: &Lmk,
        name: &str,
        key_type: KeyType,
        key: &SecretKey,
    ) -> Result<(), StoreError> {
        let old = self.find(name).map(|i| self.entries.remove(i));
        match self.add(lmk, name, key_type, key) {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(old) = old {
                    self.entries.push(old);
                }
                Err(e)
            }
        }
    }

    /// Adds a key (not saved until [`KeyStore::save`]).
    pub fn add(
        &mut self,
        lmk: &Lmk,
        name: &str,
        key_type: KeyType,
        key: &SecretKey,
    ) -> Result<&Entry, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::BadName(name.to_owned()));
        }
        if self.find(name).is_some() {
            return Err(StoreError::Duplicate(name.to_owned()));
        }
        if lmk.kcv() != self.lmk_kcv {
            return Err(StoreError::WrongLmk {
                path: self.path.clone(),
                store: self.lmk_kcv,
                given: lmk.kcv(),
            });
        }
        let header = header_for(name, key_type, key, lmk);
        let mut pad = [0u8; 32];
        random::fill(&mut pad)?;
        let block = keyblock::wrap(lmk.key(), &header, key, &pad)
            .map_err(|e| StoreError::Key(e.to_string()))?;
        let entry = entry_of(&header, key).map_err(StoreError::Key)?;
        self.entries.push((entry, block));
        Ok(&self.entries[self.entries.len() - 1].0)
    }

    /// Writes the store: a temporary file beside it, synced, renamed over.
    pub fn save(&self) -> Result<(), StoreError> {
        let file = File {
            format: FORMAT,
            lmk_kcv: self.lmk_kcv.to_string(),
            keys: self
                .entries
                .iter()
                .map(|(e, block)| FileRow {
                    name: e.name.clone(),
                    key_type: e.key_type.name().to_owned(),
                    kcv: e.kcv.to_string(),
                    block: block.clone(),
                })
                .collect(),
        };
        write_file(&self.path, &file)
    }

    /// Puts `blocks` in the store at `path` without the LMK (a network
    /// HSM's key change: the HSM made them under its LMK), each replacing
    /// the row of its name or added; the file rewritten as
    /// [`KeyStore::save`] does. Each block's name, type and KCV must be
    /// those of its header, as [`KeyStore::read_blocks`] will check.
    pub fn put_blocks(path: &Path, blocks: &[StoredBlock]) -> Result<(), StoreError> {
        let (mut file, _) = read_file(path)?;
        for b in blocks {
            if !valid_name(&b.name) {
                return Err(StoreError::BadName(b.name.clone()));
            }
            let refused = |reason: &str| StoreError::Tampered {
                path: path.to_owned(),
                name: b.name.clone(),
                reason: reason.to_owned(),
            };
            let (header, _) =
                keyblock::read_header(&b.block).map_err(|e| refused(&e.to_string()))?;
            let kcv = header
                .block("KC")
                .and_then(|kc| kc.get(2..))
                .and_then(|k| Kcv::parse(k).ok());
            if header.block("LB") != Some(b.name.as_str())
                || header.block(TYPE_BLOCK).and_then(KeyType::parse) != Some(b.key_type)
                || kcv != Some(b.kcv)
            {
                return Err(refused(
                    "the new block's name, type or KCV differs from its header's",
                ));
            }
            let row = FileRow {
                name: b.name.clone(),
                key_type: b.key_type.name().to_owned(),
                kcv: b.kcv.to_string(),
                block: b.block.clone(),
            };
            match file.keys.iter_mut().find(|r| r.name == b.name) {
                Some(r) => *r = row,
                None => file.keys.push(row),
            }
        }
        write_file(path, &file)
    }
}

/// Writes a store file: a temporary file beside it, synced, renamed over.
fn write_file(path: &Path, file: &File) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let body = toml::to_string(file).map_err(|e| StoreError::Key(e.to_string()))?;
    let text = format!(
        "# Switchyard key store: X9.143 (TR-31) version D key blocks under the LMK.\n\
         # Written by `switchyard keys`; a changed character makes the store refused.\n\n\
         {body}"
    );
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(io)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A key block as the store file holds it, read without the LMK: what a
/// client of a network HSM (whose LMK the blocks are under) passes to it.
/// Nothing here is verified but the file's own consistency; the HSM
/// authenticates each block when it uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredBlock {
    pub name: String,
    pub key_type: KeyType,
    pub algorithm: Algorithm,
    pub kcv: Kcv,
    /// The TR-31 block text under the LMK.
    pub block: String,
}

impl fmt::Debug for StoredBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The block is not a clear key, but it stays out of logs all the same.
        write!(
            f,
            "StoredBlock({} {} {} KCV {})",
            self.name, self.key_type, self.algorithm, self.kcv
        )
    }
}

/// The store file parsed, its format checked, and the KCV of the LMK its
/// blocks are under.
fn read_file(path: &Path) -> Result<(File, Kcv), StoreError> {
    let parse = |reason: String| StoreError::Parse {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })?;
    let file: File = toml::from_str(&text).map_err(|e| parse(e.message().to_owned()))?;
    if file.format != FORMAT {
        return Err(parse(format!(
            "format {} (this build reads {FORMAT})",
            file.format
        )));
    }
    let kcv = Kcv::parse(&file.lmk_kcv).map_err(|e| parse(format!("lmk_kcv: {e}")))?;
    Ok((file, kcv))
}

impl KeyStore {
    /// The store's blocks and the KCV of the LMK they are under, without
    /// the LMK: each row's name, type and KCV must agree with its block's
    /// (unauthenticated) header, names must be unique.
    pub fn read_blocks(path: &Path) -> Result<(Kcv, Vec<StoredBlock>), StoreError> {
        let (file, lmk_kcv) = read_file(path)?;
        let mut out: Vec<StoredBlock> = Vec::with_capacity(file.keys.len());
        let mut seen = std::collections::HashSet::new();
        for row in file.keys {
            let tampered = |reason: String| StoreError::Tampered {
                path: path.to_owned(),
                name: row.name.clone(),
                reason,
            };
            let (header, _) =
                keyblock::read_header(&row.block).map_err(|e| tampered(e.to_string()))?;
            let key_type = header
                .block(TYPE_BLOCK)
                .and_then(KeyType::parse)
                .ok_or_else(|| tampered("its key block has no Switchyard key type".into()))?;
            let kcv = header
                .block("KC")
                .and_then(|kc| kc.get(2..))
                .and_then(|k| Kcv::parse(k).ok())
                .ok_or_else(|| tampered("its key block has no KCV".into()))?;
            if header.block("LB") != Some(row.name.as_str())
                || key_type.name() != row.key_type
                || kcv.to_string() != row.kcv.to_ascii_uppercase()
            {
                return Err(tampered(
                    "its name, type or KCV differs from its key block's".into(),
                ));
            }
            if !seen.insert(row.name.clone()) {
                return Err(tampered("the name is there twice".into()));
            }
            out.push(StoredBlock {
                name: row.name,
                key_type,
                algorithm: header.algorithm,
                kcv,
                block: row.block,
            });
        }
        Ok((lmk_kcv, out))
    }
}

/// The header a key of this type is stored with.
pub fn header_for(name: &str, key_type: KeyType, key: &SecretKey, lmk: &Lmk) -> Header {
    Header {
        usage: key_type.usage(key.algorithm()),
        algorithm: key.algorithm(),
        mode: key_type.mode(),
        version: *b"00",
        exportability: if key_type.exportable() { b'E' } else { b'N' },
        blocks: vec![
            ("LB".into(), name.to_owned()),
            (TYPE_BLOCK.into(), key_type.name().to_uppercase()),
            ("KC".into(), kc_block(key)),
            ("KP".into(), format!("01{}", lmk.kcv())),
        ],
    }
}

fn entry_of(header: &Header, key: &SecretKey) -> Result<Entry, String> {
    let name = header.block("LB").ok_or("its key block has no name (LB)")?;
    let key_type = header
        .block(TYPE_BLOCK)
        .and_then(KeyType::parse)
        .ok_or("its key block has no Switchyard key type")?;
    if header.block("KC") != Some(kc_block(key).as_str()) {
        return Err("the KCV in its key block is not its key's".into());
    }
    if header.usage != key_type.usage(key.algorithm()) {
        return Err(format!(
            "its usage {} is not a {key_type}'s",
            String::from_utf8_lossy(&header.usage)
        ));
    }
    Ok(Entry {
        name: name.to_owned(),
        key_type,
        algorithm: key.algorithm(),
        bits: key.len() * 8,
        usage: String::from_utf8_lossy(&header.usage).into_owned(),
        mode: char::from(header.mode),
        exportable: header.exportability == b'E',
        version: String::from_utf8_lossy(&header.version).into_owned(),
        kcv: key.kcv(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lmk(byte: u8) -> Lmk {
        Lmk::from_components(&[
            SecretKey::aes(&[byte; 32]).expect("key"),
            SecretKey::aes(&[0x01; 32]).expect("key"),
        ])
        .expect("lmk")
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys.toml");
        let lmk = lmk(0x70);
        let mut store = KeyStore::create(&path, &lmk).expect("create");
        let tpk = random::key(Algorithm::Tdes, 16).expect("key");
        let zpk = random::key(Algorithm::Aes, 32).expect("key");
        store
            .add(&lmk, "term0001.tpk", KeyType::Tpk, &tpk)
            .expect("add");
        store
            .add(&lmk, "acq1.zpk", KeyType::Zpk, &zpk)
            .expect("add");
        assert!(matches!(
            store.add(&lmk, "acq1.zpk", KeyType::Zpk, &zpk),
            Err(StoreError::Duplicate(_))
        ));
        assert!(matches!(
            store.add(&lmk, "bad name", KeyType::Zpk, &zpk),
            Err(StoreError::BadName(_))
        ));
        store.save().expect("save");

        let text = std::fs::read_to_string(&path).expect("read");
        for key in [&tpk, &zpk] {
            let hex: String = key
                .expose_secret()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect();
            assert!(
                !text.to_uppercase().contains(&hex),
                "clear key in the store file"
            );
        }
        let store = KeyStore::open(&path, &lmk).expect("open");
        let (e, k) = store.get("term0001.tpk", &lmk).expect("get");
        assert_eq!(k.expose_secret(), tpk.expose_secret());
        assert_eq!(
            (e.key_type, e.usage.as_str(), e.mode),
            (KeyType::Tpk, "P0", 'B')
        );
        assert_eq!(e.kcv, tpk.kcv());
        let (e, k) = store.get("acq1.zpk", &lmk).expect("get");
        assert_eq!(k.expose_secret(), zpk.expose_secret());
        assert_eq!(e.bits, 256);
        assert!(matches!(
            store.get("nope", &lmk),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn wrong_lmk_and_tampering_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys.toml");
        let lmk1 = lmk(0x70);
        let mut store = KeyStore::create(&path, &lmk1).expect("create");
        let tak = random::key(Algorithm::Tdes, 16).expect("key");
        store
            .add(&lmk1, "term0001.tak", KeyType::Tak, &tak)
            .expect("add");
        store.save().expect("save");

        let e = KeyStore::open(&path, &lmk(0x71)).err().expect("wrong LMK");
        assert!(matches!(e, StoreError::WrongLmk { .. }), "{e}");
        assert!(e.to_string().contains("wrong LMK file?"), "{e}");

        let text = std::fs::read_to_string(&path).expect("read");
        // A changed usage in the block (M3 -> P0), a changed type outside
        // it, a changed character of the encrypted key, a wrong lmk_kcv
        // with another LMK's blocks: each refused with a reason.
        let block_start = text.find("block = \"").expect("block") + 9;
        let mut changed_key = text.clone().into_bytes();
        let at = block_start + 100;
        changed_key[at] = if changed_key[at] == b'A' { b'B' } else { b'A' };
        let cases = [
            text.replacen("M3", "P0", 1),
            text.replacen("type = \"tak\"", "type = \"tpk\"", 1),
            String::from_utf8(changed_key).expect("ascii"),
        ];
        for bad in cases {
            std::fs::write(&path, &bad).expect("write");
            let e = KeyStore::open(&path, &lmk1).err().expect("tampered");
            assert!(matches!(e, StoreError::Tampered { .. }), "{e}");
            assert!(e.to_string().contains("term0001.tak"), "{e}");
        }
        std::fs::write(&path, "format = 1\n").expect("write");
        assert!(matches!(
            KeyStore::open(&path, &lmk1),
            Err(StoreError::Parse { .. })
        ));
    }
}
