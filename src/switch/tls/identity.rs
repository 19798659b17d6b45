//! Which terminal ids a client certificate may use: its identity (the
//! subject's common name, or its DNS subject alternative names), and a
//! map file for certificates that serve several terminals (a store's
//! gateway, say).
//!
//! The map file is TOML, one identity per key:
//!
//! ```toml
//! "gateway-17.shops.example" = ["TERM0001", "TERM0002"]
//! ```

use std::collections::HashMap;
use std::path::Path;

use der::Decode;
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use super::config::BindTerminalId;

/// DE41 is 8 characters at most.
const MAX_TERMINAL_ID: usize = 8;
/// Identities in a map file at most (each bounded by the file's size).
const MAX_MAP_ENTRIES: usize = 1_000_000;

/// The identities a certificate carries under `bind`.
pub fn identities(cert_der: &[u8], bind: BindTerminalId) -> Result<Vec<String>, String> {
    let cert =
        Certificate::from_der(cert_der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let tbs = &cert.tbs_certificate;
    Ok(match bind {
        BindTerminalId::Off => Vec::new(),
        BindTerminalId::Cn => tbs
            .subject
            .0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .filter(|atv| atv.oid == const_oid::db::rfc4519::CN)
            .filter_map(|atv| std::str::from_utf8(atv.value.value()).ok())
            .map(str::to_owned)
            .collect(),
        BindTerminalId::SanDns => match tbs.get::<SubjectAltName>() {
            Ok(Some((_, san))) => san
                .0
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DnsName(d) => Some(d.as_str().to_owned()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(format!("unreadable subject alternative names: {e}")),
        },
    })
}

/// Identity -> terminal ids it may use.
#[derive(Debug, Default)]
pub struct TerminalIdMap {
    map: HashMap<String, Vec<String>>,
}

impl TerminalIdMap {
    pub fn load(path: &Path) -> Result<TerminalIdMap, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if table.len() > MAX_MAP_ENTRIES {
            return Err(format!(
                "{}: more than {MAX_MAP_ENTRIES} identities",
                path.display()
            ));
        }
        let mut map = HashMap::with_capacity(table.len());
        for (identity, ids) in table {
            let bad = || {
                format!(
                    "{}: {identity:?}: expected an array of terminal ids",
                    path.display()
                )
            };
            let ids = ids.as_array().ok_or_else(bad)?;
            let mut list = Vec::with_capacity(ids.len());
            for id in ids {
                let id = id.as_str().ok_or_else(bad)?;
                if id.is_empty() || id.len() > MAX_TERMINAL_ID {
                    return Err(format!(
                        "{}: {identity:?}: terminal id {id:?} is not 1 to {MAX_TERMINAL_ID} characters",
                        path.display()
                    ));
                }
                list.push(id.to_owned());
            }
            map.insert(identity, list);
        }
        Ok(TerminalIdMap { map })
    }

    /// The terminal ids `identities` may use: what the map lists for
    /// each, or the identity itself.
    pub fn terminal_ids(&self, identities: &[String]) -> Vec<String> {
        let mut ids = Vec::new();
        for identity in identities {
            match self.map.get(identity) {
                Some(list) => ids.extend(list.iter().cloned()),
                None => ids.push(identity.clone()),
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }
}

/// The terminal ids one connection may use, from its certificate.
#[derive(Debug, Clone)]
pub struct BoundTerminals {
    /// What the certificate says, for log lines.
    pub identity: String,
    ids: Box<[Box<[u8]>]>,
}

impl BoundTerminals {
    pub fn new(identities: &[String], ids: Vec<String>) -> BoundTerminals {
        BoundTerminals {
            identity: identities.join(","),
            ids: ids
                .into_iter()
                .map(|s| s.into_bytes().into_boxed_slice())
                .collect(),
        }
    }

    /// DE41 as sent (trailing spaces are padding) is one of the ids.
    pub fn allows(&self, de41: &[u8]) -> bool {
        let end = de41.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
        let tid = &de41[..end];
        self.ids.iter().any(|id| &id[..] == tid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_not_part_of_the_terminal_id() {
        let b = BoundTerminals::new(&["TERM01".into()], vec!["TERM01".into()]);
        assert!(b.allows(b"TERM01  "));
        assert!(b.allows(b"TERM01"));
        assert!(!b.allows(b"TERM0"));
        assert!(!b.allows(b"TERM011 "));
    }

    #[test]
    fn the_map_widens_an_identity_and_others_stand_for_themselves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("map.toml");
        std::fs::write(&path, "\"gw.example\" = [\"T1\", \"T2\"]\n").expect("write");
        let map = TerminalIdMap::load(&path).expect("load");
        assert_eq!(map.terminal_ids(&["gw.example".into()]), vec!["T1", "T2"]);
        assert_eq!(map.terminal_ids(&["T9".into()]), vec!["T9"]);
        std::fs::write(&path, "\"gw\" = [\"TOOLONGID\"]\n").expect("write");
        let err = TerminalIdMap::load(&path).unwrap_err();
        assert!(err.contains("TOOLONGID"), "{err}");
    }
}
