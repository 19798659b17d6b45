//! The `[security]` table (the key store, the HSM, terminal profiles) and
//! each acquirer's `[acquirers.security]`. Key names are checked against
//! the key store while the config is checked: a missing key, or one of the
//! wrong type, is a problem with its TOML path, not a refusal at the first
//! transaction.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{
    AcquirerSecurity, Hsm, KeyRef, MacMode, NetworkHsm, PinKey, SecurityConfig, TerminalProfile,
    TerminalProfiles,
};
use crate::security::hsm::payshield::{KeyBlocks, PayShieldConfig, wire};
use crate::security::hsm::soft::SoftHsm;
use crate::security::hsm::{KeyName, MacAlgorithm};
use crate::security::keys::Algorithm;
use crate::security::lmk::Lmk;
use crate::security::pinblock::PinFormat;
use crate::security::store::KeyType;
use crate::switch::config::{Section, table};

table! {
    pub(crate) SecurityFile {
        /// The key store file (`switchyard keys` makes it).
        key_store: Option<String> = None;
        /// The LMK file; default: `$SWITCHYARD_LMK_FILE`. Not with
        /// `hsm = "payshield"` (the HSM holds the LMK).
        lmk_file: Option<String> = None;
        /// "soft": the key store unwrapped in the process; "payshield": a
        /// Thales payShield (or `switchyard hsm-sim`) over TCP, set in
        /// `[security.payshield]`.
        hsm: String = "soft".into();
        payshield: Option<PayShieldFile> = None;
        /// DE39 for a PIN block that can not be translated.
        bad_pin_code: String = "81".into();
        /// The key (type `hmac`) of the card hash kept in the journal and
        /// the store; without it, `fraud.pan_key` is that key.
        card_hash_key: Option<String> = None;
        /// After a key change (0800, DE70 161), the replaced key is still
        /// taken for checks this long.
        key_overlap_ms: u64 = 300_000, in 0..=86_400_000;
        terminals: Vec<TerminalProfileFile> = Vec::new();
    }
}

table! {
    pub(crate) PayShieldFile {
        /// `host:port` of the HSM's host port.
        address: Option<String> = None;
        /// The HSM's message header length, in characters.
        header_length: usize = wire::DEFAULT_HEADER_LEN, in 1..=32;
        /// Per command: a request whose HSM answer has not come by then
        /// gets 96.
        timeout_ms: u64 = 1_000, in 1..=60_000;
        /// Commands in flight over all connections; past it a request
        /// gets 96 at once.
        max_in_flight: usize = 64, in 1..=65_536;
        /// Connections kept open to the HSM (commands go round them).
        connections: usize = 1, in 1..=64;
        connect_timeout_ms: u64 = 1_000, in 1..=60_000;
    }
}

table! {
    pub(crate) TerminalProfileFile {
        name: Option<String> = None;
        /// DE41 values this profile is for.
        terminal_ids: Vec<String> = Vec::new();
        /// ... and DE41 prefixes (the longest matching one wins).
        terminal_id_prefixes: Vec<String> = Vec::new();
        /// "off", "verify" (a MAC, when present, must be right) or
        /// "require" (it must be present and right).
        mac: String = "off".into();
        mac_algorithm: String = "retail".into();
        /// The terminal's MAC key (TAK). In key names, `{terminal}` stands
        /// for DE41: each terminal its own key.
        mac_key: Option<String> = None;
        /// The terminal's PIN key (TPK) ...
        pin_key: Option<String> = None;
        /// ... or a DUKPT base derivation key, the KSN in `ksn_field`.
        dukpt_bdk: Option<String> = None;
        ksn_field: Option<u64> = None, in 2..=128;
        /// The terminal master key its TPK and TAK are exchanged under.
        tmk: Option<String> = None;
        /// DE70 of the terminal's 0800 asking for new keys.
        key_change_code: u64 = 161, in 1..=999;
        /// The fields the MAC covers, in this order (their data as on the
        /// wire, length prefixes left out); empty: the whole message.
        mac_fields: Vec<u16> = Vec::new();
    }
}

table! {
    pub(crate) AcquirerSecurityFile {
        /// "off" or "require": requests carry a MAC under `mac_key`, and
        /// answers must.
        mac: String = "off".into();
        mac_algorithm: String = "retail".into();
        /// The zone MAC key (ZAK).
        mac_key: Option<String> = None;
        /// The zone PIN key (ZPK) DE52 is translated to.
        pin_key: Option<String> = None;
        /// "iso0" or "iso4".
        pin_format: String = "iso0".into();
        /// DE53 sent with a translated PIN (16 digits); without it, the
        /// terminal's DE53 is removed.
        de53: Option<String> = None;
        /// The zone master key: the host's 0800 with DE70 161 brings a new
        /// ZPK and ZAK under it.
        zmk: Option<String> = None;
        /// The fields the zone's MACs cover, in this order (their data as
        /// on the wire, length prefixes left out); empty: the whole
        /// message. As a terminal profile's `mac_fields`.
        mac_fields: Vec<u16> = Vec::new();
    }
}

/// A MAC field list names data elements 2..=127, never the MAC field.
fn check_mac_fields(s: &mut Section, fields: &[u16]) {
    for (j, &n) in fields.iter().enumerate() {
        if !(2..=127).contains(&n) || n == 64 {
            let message = format!("{n}: a data element 2..=127 other than 64");
            s.problem(&format!("mac_fields[{j}]"), message);
        }
    }
}

fn mac_algorithm(s: &mut Section, text: &str) -> MacAlgorithm {
    let parsed = MacAlgorithm::parse(text)
        .ok_or_else(|| format!("`{text}` is not a MAC algorithm (retail, tdes-cbc or aes-cmac)"));
    s.ok("mac_algorithm", parsed, MacAlgorithm::Retail)
}

/// A profile's key name: checked against the store for each of the
/// profile's exact `ids` when it names keys per terminal, else as it is.
fn key_ref(
    s: &mut Section,
    hsm: Option<&Hsm>,
    at: &str,
    (name, ids): (&str, &[String]),
    types: &[KeyType],
) -> KeyRef {
    let r = KeyRef::parse(name);
    match &r {
        KeyRef::Fixed(n) => {
            key(s, hsm, at, n, types);
        }
        KeyRef::PerTerminal { .. } => {
            for id in ids {
                key(s, hsm, at, &r.name(id.as_bytes()), types);
            }
        }
    }
    r
}

/// Checks that `name` is a key of one of `types` in the store.
fn key(s: &mut Section, hsm: Option<&Hsm>, at: &str, name: &str, types: &[KeyType]) -> KeyName {
    if let Some(h) = hsm
        && !h.has(name, types)
    {
        let wanted: Vec<&str> = types.iter().map(|t| t.name()).collect();
        s.problem(
            at,
            format!(
                "no {} key named `{name}` in the key store",
                wanted.join(" or ")
            ),
        );
    }
    // A key change's DE48 carries each key as 32 hex digits: a TDES key
    // under a TDES master key.
    let master = types
        .iter()
        .any(|t| matches!(t, KeyType::Tmk | KeyType::Zmk));
    if master && hsm.and_then(|h| h.algorithm_of(name)) == Some(Algorithm::Aes) {
        s.problem(
            at,
            format!(
                "`{name}` is an AES key: key exchange carries TDES keys under a TDES \
                 master key (DE48: 32 hex digits per key)"
            ),
        );
    }
    KeyName::from(name)
}

impl SecurityFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> Option<SecurityConfig> {
        self.check_ranges(s);
        let network = match self.hsm.as_str() {
            "soft" => {
                if self.payshield.is_some() {
                    s.problem("payshield", "only with hsm = \"payshield\"");
                }
                false
            }
            "payshield" => true,
            other => {
                s.problem("hsm", format!("`{other}`: \"soft\" or \"payshield\""));
                false
            }
        };
        let bad_pin_code = match self.bad_pin_code.as_bytes() {
            &[a, b] if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => [a, b],
            _ => {
                s.problem("bad_pin_code", "two letters or digits (a DE39 value)");
                crate::codes::BAD_PIN_BLOCK
            }
        };
        let hsm = if network {
            self.open_network(s)
        } else {
            self.open_soft(s).map(Hsm::Soft)
        };
        let mut profiles = TerminalProfiles::default();
        for (i, p) in self.terminals.into_iter().enumerate() {
            let s = &mut s.sub(&format!("terminals[{i}]"));
            if let Some(profile) = p.validate(s, hsm.as_ref(), i) {
                profiles.add(s, profile);
            }
        }
        let card_hash_key = match (&self.card_hash_key, &hsm) {
            (Some(_), _) if network => {
                s.problem(
                    "card_hash_key",
                    "not with hsm = \"payshield\": the card hash key is used in the process, \
                     and the switch does not hold the LMK it is under (fraud.pan_key keys the \
                     card hash then)",
                );
                None
            }
            (Some(name), Some(Hsm::Soft(h))) => match h.card_hash_key(name) {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    s.problem("card_hash_key", e.to_string());
                    None
                }
            },
            _ => None,
        };
        Some(SecurityConfig {
            key_overlap_ms: self.key_overlap_ms,
            card_hash_key,
            hsm: hsm?,
            bad_pin_code,
            profiles,
        })
    }

    /// `hsm = "payshield"`: the client's settings, checked as the client
    /// checks them, and the key store's blocks (no LMK).
    fn open_network(&mut self, s: &mut Section) -> Option<Hsm> {
        if self.lmk_file.is_some() {
            s.problem(
                "lmk_file",
                "not with hsm = \"payshield\": the HSM holds the LMK",
            );
        }
        let mut file = self.payshield.take().unwrap_or_default();
        let ps = &mut s.sub("payshield");
        file.check_ranges(ps);
        let addr = match &file.address {
            None => {
                ps.problem(
                    "address",
                    "required with hsm = \"payshield\": the HSM's host:port",
                );
                None
            }
            Some(a) => match host_port(a) {
                Ok(()) => Some(a.clone()),
                Err(e) => {
                    ps.problem("address", e);
                    None
                }
            },
        };
        let space = crate::security::hsm::payshield::core::header_space(file.header_length);
        if space < file.max_in_flight as u64 {
            ps.problem(
                "max_in_flight",
                format!(
                    "{}: a header of {} characters numbers only {space} commands in flight",
                    file.max_in_flight, file.header_length
                ),
            );
        }
        let keys = self.open_blocks(s);
        let config = PayShieldConfig {
            addr: addr?,
            connections: file.connections,
            header_len: file.header_length,
            max_in_flight: file.max_in_flight,
            timeout: Duration::from_millis(file.timeout_ms),
            connect_timeout: Duration::from_millis(file.connect_timeout_ms),
            ..PayShieldConfig::default()
        };
        Some(Hsm::Network(Arc::new(NetworkHsm::new(
            config,
            Arc::new(keys?),
        ))))
    }

    fn open_blocks(&self, s: &mut Section) -> Option<KeyBlocks> {
        let store = self.store_path(s)?;
        match KeyBlocks::open(std::path::Path::new(store)) {
            Ok(k) => Some(k),
            Err(e) => {
                s.problem("key_store", e.to_string());
                None
            }
        }
    }

    fn store_path(&self, s: &mut Section) -> Option<&str> {
        if self.key_store.is_none() {
            s.problem(
                "key_store",
                "required: the key store file (`switchyard keys generate` makes one)",
            );
        }
        self.key_store.as_deref()
    }

    fn open_soft(&self, s: &mut Section) -> Option<Arc<SoftHsm>> {
        let store = self.store_path(s)?;
        let lmk_path = match &self.lmk_file {
            Some(p) => PathBuf::from(p),
            None => match Lmk::path_from(None) {
                Ok(p) => p,
                Err(e) => {
                    s.problem("lmk_file", e.to_string());
                    return None;
                }
            },
        };
        let lmk = match Lmk::load(&lmk_path) {
            Ok(l) => l,
            Err(e) => {
                s.problem("lmk_file", e.to_string());
                return None;
            }
        };
        match SoftHsm::open(std::path::Path::new(store), lmk) {
            Ok(h) => Some(Arc::new(h)),
            Err(e) => {
                s.problem("key_store", e.to_string());
                None
            }
        }
    }
}

/// `host:port`: an IP address or a name, and a port.
fn host_port(text: &str) -> Result<(), String> {
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("`{text}` is not host:port (e.g. \"10.0.0.5:1500\")");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let name_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    match port.parse::<u16>() {
        Ok(p) if p > 0 && name_ok => Ok(()),
        _ => Err(bad()),
    }
}

impl TerminalProfileFile {
    fn validate(mut self, s: &mut Section, hsm: Option<&Hsm>, i: usize) -> Option<TerminalProfile> {
        self.check_ranges(s);
        let mac = match self.mac.as_str() {
            "off" => MacMode::Off,
            "verify" => MacMode::Verify,
            "require" => MacMode::Require,
            other => {
                s.problem("mac", format!("`{other}`: off, verify or require"));
                MacMode::Off
            }
        };
        let mac_algorithm = mac_algorithm(s, &self.mac_algorithm);
        let mac_key = match (&self.mac_key, mac) {
            (None, MacMode::Off) => None,
            (None, _) => {
                s.problem("mac_key", "required when mac is not \"off\"");
                None
            }
            (Some(k), _) => Some(key_ref(
                s,
                hsm,
                "mac_key",
                (k, &self.terminal_ids),
                &[KeyType::Tak],
            )),
        };
        let pin = match (&self.pin_key, &self.dukpt_bdk) {
            (Some(_), Some(_)) => {
                s.problem("dukpt_bdk", "give pin_key or dukpt_bdk, not both");
                None
            }
            (Some(k), None) => Some(PinKey::Tpk(key_ref(
                s,
                hsm,
                "pin_key",
                (k, &self.terminal_ids),
                &[KeyType::Tpk],
            ))),
            (None, Some(k)) => {
                let bdk = key(s, hsm, "dukpt_bdk", k, &[KeyType::Bdk]);
                // The BDK's algorithm says which DUKPT: X9.24-1 (TDES) or
                // X9.24-3 (AES).
                let aes = hsm.and_then(|h| h.algorithm_of(&bdk)) == Some(Algorithm::Aes);
                if aes && hsm.is_some_and(|h| h.network().is_some()) {
                    s.problem(
                        "dukpt_bdk",
                        format!(
                            "`{k}` is an AES BDK: AES DUKPT (X9.24-3) runs on the soft HSM only, \
                             not with hsm = \"payshield\""
                        ),
                    );
                }
                match self.ksn_field {
                    Some(f) => Some(PinKey::Dukpt {
                        bdk,
                        ksn_field: f as usize, // in range
                        aes,
                    }),
                    None => {
                        s.problem(
                            "ksn_field",
                            "required with dukpt_bdk: the field carrying the KSN (20 hex \
                             digits; 24 with an AES BDK)",
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        };
        if self.terminal_ids.is_empty() && self.terminal_id_prefixes.is_empty() {
            s.problem(
                "terminal_ids",
                "a profile needs terminal_ids or terminal_id_prefixes",
            );
        }
        let tmk = self
            .tmk
            .as_deref()
            .map(|k| key_ref(s, hsm, "tmk", (k, &self.terminal_ids), &[KeyType::Tmk]));
        if tmk.is_some() && self.pin_key.is_none() && self.mac_key.is_none() {
            s.problem(
                "tmk",
                "a TMK exchanges pin_key and mac_key; the profile has neither",
            );
        }
        // A key change gives one terminal new keys: keys shared by a fleet
        // can not change that way.
        for (k, name) in [("pin_key", &self.pin_key), ("mac_key", &self.mac_key)] {
            if tmk.is_some()
                && let Some(n) = name
                && !n.contains("{terminal}")
            {
                s.problem(k, "with a tmk, name the key per terminal (`t-{terminal}.tpk`): a key change changes one terminal's keys");
            }
        }
        check_mac_fields(s, &self.mac_fields);
        Some(TerminalProfile {
            mac_fields: self.mac_fields,
            tmk,
            key_change_code: self.key_change_code as u16, // in range
            name: self.name.unwrap_or_else(|| format!("terminals[{i}]")),
            terminal_ids: self.terminal_ids,
            terminal_id_prefixes: self.terminal_id_prefixes,
            mac,
            mac_algorithm,
            mac_key,
            pin,
        })
    }
}

impl AcquirerSecurityFile {
    /// Key names are checked later, against the key store
    /// ([`AcquirerSecurity::check_keys`]): `[security]` is its own table.
    pub(crate) fn validate(mut self, s: &mut Section) -> AcquirerSecurity {
        self.check_ranges(s);
        let mac_algorithm = mac_algorithm(s, &self.mac_algorithm);
        check_mac_fields(s, &self.mac_fields);
        if self.mac == "off" && !self.mac_fields.is_empty() {
            s.problem("mac_fields", "only with mac = \"require\"");
        }
        let mac = match (self.mac.as_str(), self.mac_key) {
            ("off", _) => None,
            ("require", Some(k)) => Some((mac_algorithm, KeyName::from(k.as_str()))),
            ("require", None) => {
                s.problem("mac_key", "required when mac = \"require\"");
                None
            }
            (other, _) => {
                s.problem("mac", format!("`{other}`: off or require"));
                None
            }
        };
        let pin_format = match self.pin_format.as_str() {
            "iso0" => PinFormat::Iso0,
            "iso4" => PinFormat::Iso4,
            other => {
                s.problem("pin_format", format!("`{other}`: iso0 or iso4"));
                PinFormat::Iso0
            }
        };
        if let Some(d) = &self.de53
            && !crate::switch::config::is_digits(d, 16, 16)
        {
            s.problem("de53", "16 digits");
        }
        AcquirerSecurity {
            mac,
            pin: self
                .pin_key
                .map(|k| (KeyName::from(k.as_str()), pin_format)),
            zmk: self.zmk.map(|k| KeyName::from(k.as_str())),
            mac_fields: self.mac_fields,
            key_overlap_ms: 0,
            de53: self.de53,
            hsm: None,
        }
    }
}

impl AcquirerSecurity {
    /// Every key named is in the key store with the right type; `spec`
    /// can carry what is asked of it.
    pub(crate) fn check_keys(
        &mut self,
        s: &mut Section,
        security: Option<&SecurityConfig>,
        spec: &'static crate::iso8583::Spec,
    ) {
        let Some(sec) = security else {
            if self.mac.is_some() || self.pin.is_some() || self.zmk.is_some() {
                s.problem("", "needs a [security] table with the key store");
            }
            return;
        };
        if self.is_on() || self.zmk.is_some() {
            self.hsm = Some(sec.hsm.clone());
            self.key_overlap_ms = sec.key_overlap_ms;
        }
        if let Some(k) = &self.zmk {
            key(s, Some(&sec.hsm), "zmk", k, &[KeyType::Zmk]);
        }
        if let Some((_, k)) = &self.mac {
            key(s, Some(&sec.hsm), "mac_key", k, &[KeyType::Zak]);
            if crate::iso8583::mac_field::mac_len(spec, 64).is_none() {
                s.problem(
                    "mac",
                    format!(
                        "the spec `{}` has no fixed binary DE64 for a MAC",
                        spec.name
                    ),
                );
            }
        }
        if let Some((k, format)) = &self.pin {
            key(s, Some(&sec.hsm), "pin_key", k, &[KeyType::Zpk]);
            let fits = spec.field(52).is_some_and(|d| match d.length {
                crate::iso8583::Length::Fixed(u) => d.logical_len(u as usize) == format.block_len(),
                crate::iso8583::Length::Variable { .. } => false,
            });
            if !fits {
                s.problem(
                    "pin_format",
                    format!(
                        "{format} is a {}-byte block; the spec `{}` has no DE52 of that length",
                        format.block_len(),
                        spec.name
                    ),
                );
            }
        }
    }
}
