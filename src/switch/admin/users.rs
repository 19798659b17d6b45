//! The users file (`[admin] users_file`): the operators, each with a role,
//! an argon2id password hash (PHC string) and a TOTP secret (base32).
//!
//! ```toml
//! [[users]]
//! name = "alice"
//! role = "operator"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! totp_secret = "GEZDGNBVGY3TQOJQ..."
//! ```
//!
//! Written by `switchyard user add|remove` only, atomically (a temporary
//! file in the same directory, fsynced, renamed over the old one, the
//! directory fsynced) and mode 0600: it holds what opens the admin API.
//! Read at start and by the reload action.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

use super::totp;

/// Most operators in one file.
pub const MAX_USERS: usize = 1000;
/// Largest users file read (a thousand users take about 250 KB).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Longest user name.
pub const MAX_NAME: usize = 32;
/// Shortest password `user add` accepts: PCI DSS v4 8.3.6 asks for 12.
pub const MIN_PASSWORD: usize = 12;
/// Longest password accepted, at `user add` and at login (argon2 takes any
/// length, but a megabyte password is only a way to burn CPU).
pub const MAX_PASSWORD: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the API.
    Viewer,
    /// Reads, and calls the actions.
    Operator,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            other => Err(format!("`{other}` is not a role (viewer or operator)")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One operator as the file holds it. No `Debug`: it carries the hash and
/// the TOTP secret, and nothing should print them by accident.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    pub role: Role,
    pub password_hash: String,
    pub totp_secret: String,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserEntry>,
}

/// One operator, checked: the hash parses as an argon2 PHC string, the
/// secret decodes.
#[derive(Clone)]
pub struct User {
    pub name: String,
    pub role: Role,
    password_hash: String,
    totp_secret: Vec<u8>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl User {
    pub fn totp_secret(&self) -> &[u8] {
        &self.totp_secret
    }

    pub fn password_hash(&self) -> &str {
        &self.password_hash
    }
}

/// The operators, by name.
#[derive(Clone, Debug, Default)]
pub struct Users {
    by_name: BTreeMap<String, User>,
}

impl Users {
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.by_name.values()
    }

    /// Reads and checks the file; every problem named with the user's
    /// place in it.
    pub fn load(path: &Path) -> Result<Users, String> {
        let entries = read_entries(path)?;
        Users::from_entries(&entries).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn from_entries(entries: &[UserEntry]) -> Result<Users, String> {
        if entries.len() > MAX_USERS {
            return Err(format!(
                "{} users; at most {MAX_USERS} are read",
                entries.len()
            ));
        }
        let mut by_name = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            let at = format!("users[{i}]");
            check_name(&e.name).map_err(|m| format!("{at}.name: {m}"))?;
            PasswordHash::new(&e.password_hash)
                .ok()
                .filter(|h| h.algorithm.as_str() == "argon2id")
                .ok_or_else(|| {
                    format!("{at}.password_hash: not an argon2id PHC string ($argon2id$v=19$...)")
                })?;
            let secret = totp::decode_secret(&e.totp_secret)
                .map_err(|m| format!("{at}.totp_secret: {m}"))?;
            let user = User {
                name: e.name.clone(),
                role: e.role,
                password_hash: e.password_hash.clone(),
                totp_secret: secret,
            };
            if by_name.insert(e.name.clone(), user).is_some() {
                return Err(format!("{at}.name: `{}` is named twice", e.name));
            }
        }
        Ok(Users { by_name })
    }
}

/// The file's entries as written; a missing file is an empty list (the
/// first `user add` makes it).
pub fn read_entries(path: &Path) -> Result<Vec<UserEntry>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{}: no such file", path.display()));
        }
        Err(e) => return Err(format!("{}: can not open: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: can not read: {e}", path.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{}: larger than {MAX_FILE_BYTES} bytes",
            path.display()
        ));
    }
    let file: UsersFile = toml::from_str(&text).map_err(|e| {
        // toml's message quotes the offending line, which may be a hash
        // or a secret: only its position is kept.
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        format!("{}: not a valid users file{at}", path.display())
    })?;
    Ok(file.users)
}

/// Names are what the TOTP label and the audit trail show as they are:
/// letters, digits, `.`, `_`, `-`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a user name is 1 to {MAX_NAME} letters, digits, `.`, `_` or `-`, starting with \
             a letter or digit"
        ))
    }
}

/// Writes the entries atomically, mode 0600.
pub fn write_entries(path: &Path, entries: &[UserEntry]) -> Result<(), String> {
    let text = toml::to_string(&UsersFile {
        users: entries.to_vec(),
    })
    .map_err(|e| format!("can not write the users file: {e}"))?;
    let text = format!(
        "# Switchyard operators, written by `switchyard user add|remove`. Mode 0600: the\n\
         # password hashes and TOTP secrets here open the admin API.\n\n{text}"
    );
    crate::files::write_atomically(path, text.as_bytes())
}

/// The argon2id parameters new hashes get: OWASP's first choice (19 MiB,
/// 2 passes, 1 lane), RustCrypto's defaults. Verification reads the
/// parameters from each PHC string, so they can change without a rehash.
fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// A PHC string for `password` with a fresh 16-byte salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    crate::security::random::fill(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| format!("salt: {e}"))?;
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("argon2: {e}"))
}

/// Does `password` match the PHC string? argon2's verification compares
/// in constant time.
pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => hasher().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash verified against for unknown users, so that their refusal
/// costs the time a wrong password does. What it hashes does not matter:
/// a match is still a refusal, there being no such user.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        SaltString::encode_b64(b"switchyard decoy")
            .ok()
            .and_then(|salt| {
                let h = hasher().hash_password(b"decoy", &salt).ok()?;
                Some(h.to_string())
            })
            .unwrap_or_default()
    })
}

/// A fresh TOTP secret.
pub fn new_totp_secret() -> Result<Vec<u8>, String> {
    let mut s = vec![0u8; totp::SECRET_LEN];
    crate::security::random::fill(&mut s).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Warns (returns the text) when the file can be read by others.
#[cfg(unix)]
pub fn permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{}: mode {:o}: others can read the operators' password hashes and TOTP \
             secrets; chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
pub fn permission_warning(_path: &Path) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, role: Role, password: &str) -> UserEntry {
        UserEntry {
            name: name.into(),
            role,
            password_hash: hash_password(password).expect("hashes"),
            totp_secret: totp::encode_secret(b"12345678901234567890"),
        }
    }

    #[test]
    fn hashes_verify_and_wrong_passwords_do_not() {
        let h = hash_password("correct horse battery").expect("hashes");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse batterx"));
        assert!(!verify_password("not a hash", "x"));
        assert!(!verify_password(decoy_hash(), ""));
    }

    #[test]
    fn the_file_round_trips_private_and_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/users.toml");
        let entries = vec![
            entry("alice", Role::Operator, "alice password"),
            entry("bob", Role::Viewer, "bob password!"),
        ];
        write_entries(&path, &entries).expect("writes");
        assert_eq!(permission_warning(&path), None, "0600");
        let users = Users::load(&path).expect("loads");
        assert_eq!(users.len(), 2);
        assert_eq!(users.get("alice").map(|u| u.role), Some(Role::Operator));
        assert_eq!(users.get("bob").map(|u| u.role), Some(Role::Viewer));
        assert_eq!(
            users.get("bob").map(|u| u.totp_secret().to_vec()),
            Some(b"12345678901234567890".to_vec())
        );
        // No temporary file left beside it.
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("lists")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["users.toml"]);

        let mut twice = entries.clone();
        twice.push(entry("alice", Role::Viewer, "another password"));
        let e = Users::from_entries(&twice).expect_err("twice");
        assert!(e.contains("users[2].name") && e.contains("twice"), "{e}");
        let mut bad = entries.clone();
        bad[1].password_hash = "$2b$12$bcrypt".into();
        let e = Users::from_entries(&bad).expect_err("bcrypt");
        assert!(e.starts_with("users[1].password_hash"), "{e}");
        let mut bad = entries;
        bad[0].name = "al ice".into();
        assert!(Users::from_entries(&bad).is_err());
    }

    #[test]
    fn a_bad_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        std::fs::write(&path, "[[users]]\nname = \"a\"\ntotp_secret = GEZDGNBV\n").expect("w");
        let e = Users::load(&path).expect_err("not TOML");
        assert!(e.contains("line 3") && !e.contains("GEZDGNBV"), "{e}");
        assert!(Users::load(&dir.path().join("none")).is_err());
    }

    #[test]
    fn names() {
        for ok in ["alice", "a", "ops.night-2", "A_b"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a b", "ä", &"a".repeat(33), "a:b", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
