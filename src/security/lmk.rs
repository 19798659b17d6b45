//! The local master key (LMK): the AES-256 key every stored key is wrapped
//! under. It is formed from two or more components, each held by a
//! different custodian and entered separately, XORed together (split
//! knowledge and dual control, PCI DSS 3.6.1.2 / 3.7.6): no one custodian
//! knows anything of the LMK. Only KCVs are ever shown.
//!
//! At run time the LMK is read from a file: `--lmk-file PATH`, or the path
//! in the environment variable `SWITCHYARD_LMK_FILE`. The variable holds a
//! path, never the key: a process's environment is readable through
//! `/proc/PID/environ` by its user, is inherited by every child process and
//! ends up in crash reports. The file must be readable by its owner only
//! (mode 0600 or stricter; checked, as ssh checks its keys), and is written
//! so by `keys form-lmk`.
//!
//! File layout: `#` comment lines, then one line of 64 hex digits.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroize;

use super::kcv::Kcv;
use super::keys::{Algorithm, SecretKey};

pub const LMK_ENV: &str = "SWITCHYARD_LMK_FILE";
pub const LMK_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum LmkError {
    #[error("an LMK needs at least two components (split knowledge), not {0}")]
    TooFewComponents(usize),
    #[error("component {0}: {1}")]
    Component(usize, String),
    #[error("components {0} and {1} are the same: each custodian's must be their own")]
    SameComponents(usize, usize),
    #[error("no LMK file: pass --lmk-file PATH or set {LMK_ENV} to its path")]
    NoPath,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// The LMK. `Debug` shows its KCV only.
#[derive(Clone)]
pub struct Lmk(SecretKey);

impl Lmk {
    /// A component typed or read as hex: 64 digits (AES-256).
    pub fn parse_component(index: usize, text: &str) -> Result<SecretKey, LmkError> {
        let mut bytes = crate::hex::parse_hex(text).map_err(|e| LmkError::Component(index, e))?;
        let key = if bytes.len() == LMK_LEN {
            SecretKey::aes(&bytes).map_err(|e| LmkError::Component(index, e.to_string()))
        } else {
            Err(LmkError::Component(
                index,
                format!(
                    "an LMK component is {} hex digits (AES-256), not {}",
                    2 * LMK_LEN,
                    2 * bytes.len()
                ),
            ))
        };
        bytes.zeroize();
        key
    }

    /// XOR of the components (numbered from 1 in errors).
    pub fn from_components(components: &[SecretKey]) -> Result<Lmk, LmkError> {
        if components.len() < 2 {
            return Err(LmkError::TooFewComponents(components.len()));
        }
        for (i, c) in components.iter().enumerate() {
            if c.algorithm() != Algorithm::Aes || c.len() != LMK_LEN {
                return Err(LmkError::Component(i + 1, "not an AES-256 key".into()));
            }
            for (j, d) in components.iter().enumerate().skip(i + 1) {
                use subtle::ConstantTimeEq;
                if bool::from(c.expose_secret().ct_eq(d.expose_secret())) {
                    return Err(LmkError::SameComponents(i + 1, j + 1));
                }
            }
        }
        let mut lmk = components[0].clone();
        for c in &components[1..] {
            lmk = lmk
                .xor(c)
                .map_err(|e| LmkError::Component(0, e.to_string()))?;
        }
        Ok(Lmk(lmk))
    }

    pub fn key(&self) -> &SecretKey {
        &self.0
    }

    pub fn kcv(&self) -> Kcv {
        self.0.kcv()
    }

    /// The path from `--lmk-file`, else from `SWITCHYARD_LMK_FILE`.
    pub fn path_from(flag: Option<&Path>) -> Result<PathBuf, LmkError> {
        if let Some(p) = flag {
            return Ok(p.to_owned());
        }
        match std::env::var_os(LMK_ENV) {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(LmkError::NoPath),
        }
    }

    pub fn load(path: &Path) -> Result<Lmk, LmkError> {
        let io = |source| LmkError::Io {
            path: path.to_owned(),
            source,
        };
        let file_err = |reason: String| LmkError::File {
            path: path.to_owned(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(file_err(format!(
                    "the LMK file is readable by others (mode {mode:04o}); \
                     chmod 600 it, and check who has read it"
                )));
            }
        }
        if !meta.is_file() {
            return Err(file_err("not a file".into()));
        }
        let mut text = std::fs::read_to_string(path).map_err(io)?;
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let key = match (lines.next(), lines.next()) {
            (Some(line), None) => Lmk::parse_component(1, line).map_err(|_| {
                file_err(format!(
                    "the key line is not {} hex digits (AES-256)",
                    2 * LMK_LEN
                ))
            }),
            _ => Err(file_err(
                "expected one line of hex after the comments".into(),
            )),
        };
        text.zeroize();
        key.map(Lmk)
    }

    /// Writes the LMK to a new file, mode 0600; never over an existing one
    /// (an LMK overwritten is every stored key lost).
    pub fn save_new(&self, path: &Path) -> Result<(), LmkError> {
        let io = |source| LmkError::Io {
            path: path.to_owned(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        let mut text = format!(
            "# Switchyard local master key (AES-256), KCV {}.\n\
             # Every key in the key store is wrapped under it: keep this file\n\
             # readable by its owner only, and the components apart.\n",
            self.kcv()
        );
        for b in self.0.expose_secret() {
            text.push_str(&format!("{b:02X}"));
        }
        text.push('\n');
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        text.zeroize();
        written.map_err(io)
    }
}

impl fmt::Debug for Lmk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lmk(KCV {})", self.kcv())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: &str = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";
    const C2: &str = "FFEEDDCCBBAA99887766554433221100FFEEDDCCBBAA99887766554433221100";

    #[test]
    fn components_xor_and_are_checked() {
        let c1 = Lmk::parse_component(1, C1).expect("c1");
        let c2 = Lmk::parse_component(2, C2).expect("c2");
        let lmk = Lmk::from_components(&[c1.clone(), c2.clone()]).expect("lmk");
        assert_eq!(lmk.key().expose_secret(), &[0xFF; 32]);
        assert!(matches!(
            Lmk::from_components(std::slice::from_ref(&c1)),
            Err(LmkError::TooFewComponents(1))
        ));
        assert!(matches!(
            Lmk::from_components(&[c1.clone(), c2, c1]),
            Err(LmkError::SameComponents(1, 3))
        ));
        let e = Lmk::parse_component(2, "0011").expect_err("short");
        assert!(e.to_string().contains("component 2"), "{e}");
        assert!(format!("{lmk:?}").starts_with("Lmk(KCV "));
    }

    #[test]
    fn file_round_trip_and_permissions() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("lmk");
        let lmk = Lmk::from_components(&[
            Lmk::parse_component(1, C1).expect("c1"),
            Lmk::parse_component(2, C2).expect("c2"),
        ])
        .expect("lmk");
        lmk.save_new(&path).expect("save");
        assert!(lmk.save_new(&path).is_err(), "never overwrites");
        let back = Lmk::load(&path).expect("load");
        assert_eq!(back.kcv(), lmk.kcv());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let e = Lmk::load(&path).expect_err("world-readable");
            assert!(e.to_string().contains("readable by others"), "{e}");
        }
    }
}
