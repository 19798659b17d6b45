//! Card security in the request path: which terminal has which keys
//! (terminal profiles, by DE41), what each acquirer's zone wants (its MAC
//! key, its PIN key and format), and the steps a request takes through the
//! HSM: the terminal's MAC checked (63 when missing or wrong), DE52
//! translated from the terminal's key (TPK or DUKPT) to the acquirer's
//! zone PIN key (81, or `bad_pin_code`, when it can not be), the host's
//! MAC made and its answers' checked (by the link), and the terminal's
//! answers MACed under its key.
//!
//! Two HSMs ([`Hsm`]): the soft one ([`SoftHsm`]), called in line (its
//! answers are immediate, a few microseconds), and a network one
//! ([`NetworkHsm`]: the payShield client), whose answers come later: the
//! cores then issue its commands as effects ([`effects`]) that their
//! drivers carry out ([`runner`]), and resume the request when the answer
//! comes or its deadline passes (96). The functions here are the steps
//! either way: each builds the [`HsmCommand`] (`*_command`) and reads its
//! answer (`*_verdict`); the soft path runs one after the other.

pub mod config;
pub mod effects;
pub mod exchange;
pub mod runner;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::iso8583::mac_field::{MacBytes, MacFieldError};
use crate::iso8583::{Message, MessageBuilder, Spec};
use crate::security::dukpt::Ksn;
use crate::security::dukpt_aes::AesKsn;
use crate::security::hsm::payshield::{KeyBlocks, PayShieldClient, PayShieldConfig};
use crate::security::hsm::soft::SoftHsm;
use crate::security::hsm::{HsmCommand, HsmError, HsmReply, KeyName, MacAlgorithm, PinSource};
use crate::security::pinblock::{EncryptedPinBlock, PinFormat};
use crate::security::store::KeyType;
use crate::switch::config::Section;

/// Most terminal profiles (each a few ids or prefixes; fleets share one).
pub const MAX_PROFILES: usize = 10_000;

/// What a terminal's requests must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacMode {
    /// DE64/DE128 ignored; answers carry none.
    Off,
    /// A MAC, when present, must be right; answers carry one.
    Verify,
    /// A MAC must be present and right; answers carry one.
    Require,
}

/// A key name in a terminal profile: fixed (a fleet's key), or with
/// `{terminal}` standing for the terminal's DE41 (`t-{terminal}.tpk`),
/// so that each terminal has keys of its own (what key exchange needs).
#[derive(Clone, Debug)]
pub enum KeyRef {
    Fixed(KeyName),
    PerTerminal { before: String, after: String },
}

impl KeyRef {
    pub fn parse(text: &str) -> KeyRef {
        match text.split_once("{terminal}") {
            Some((before, after)) => KeyRef::PerTerminal {
                before: before.to_owned(),
                after: after.to_owned(),
            },
            None => KeyRef::Fixed(KeyName::from(text)),
        }
    }

    /// The key's name for terminal `tid` (DE41, padding trimmed).
    pub fn name(&self, tid: &[u8]) -> KeyName {
        match self {
            KeyRef::Fixed(n) => n.clone(),
            KeyRef::PerTerminal { before, after } => {
                let tid = String::from_utf8_lossy(trim(tid));
                KeyName::from(format!("{before}{tid}{after}").as_str())
            }
        }
    }
}

/// The key a terminal's PIN blocks are under.
#[derive(Clone, Debug)]
pub enum PinKey {
    Tpk(KeyRef),
    /// DUKPT: the KSN in `ksn_field`. TDES (ANSI X9.24-1) with a TDES
    /// BDK: 20 hex digits, or 10 bytes in a binary field; AES (X9.24-3)
    /// with an AES BDK (`aes`): 24 hex digits or 12 bytes.
    Dukpt {
        bdk: KeyName,
        ksn_field: usize,
        aes: bool,
    },
}

#[derive(Clone, Debug)]
pub struct TerminalProfile {
    pub name: String,
    pub terminal_ids: Vec<String>,
    pub terminal_id_prefixes: Vec<String>,
    pub mac: MacMode,
    pub mac_algorithm: MacAlgorithm,
    pub mac_key: Option<KeyRef>,
    /// The fields the MAC covers, in this order; empty: the whole message.
    pub mac_fields: Vec<u16>,
    pub pin: Option<PinKey>,
    /// The terminal master key the TPK and TAK are exchanged under.
    pub tmk: Option<KeyRef>,
    /// DE70 of the terminal's 0800 that asks for new keys.
    pub key_change_code: u16,
}

impl TerminalProfile {
    /// Do answers to this terminal carry a MAC?
    pub fn macs_answers(&self) -> bool {
        self.mac != MacMode::Off && self.mac_key.is_some()
    }
}

/// Profiles by DE41: exact ids first, then the longest matching prefix.
#[derive(Clone, Debug, Default)]
pub struct TerminalProfiles {
    list: Vec<Arc<TerminalProfile>>,
    exact: HashMap<Vec<u8>, usize>,
    /// Longest first.
    prefixes: Vec<(Vec<u8>, usize)>,
}

impl TerminalProfiles {
    pub(crate) fn add(&mut self, s: &mut Section, profile: TerminalProfile) {
        if self.list.len() == MAX_PROFILES {
            s.problem("", format!("more than {MAX_PROFILES} terminal profiles"));
            return;
        }
        let index = self.list.len();
        for (j, id) in profile.terminal_ids.iter().enumerate() {
            let key = id.trim_end().as_bytes().to_vec();
            if self.exact.insert(key, index).is_some() {
                s.problem(
                    &format!("terminal_ids[{j}]"),
                    format!("`{id}` is in another profile too"),
                );
            }
        }
        for (j, p) in profile.terminal_id_prefixes.iter().enumerate() {
            if self.prefixes.iter().any(|(q, _)| q == p.as_bytes()) {
                s.problem(
                    &format!("terminal_id_prefixes[{j}]"),
                    format!("`{p}` is in another profile too"),
                );
            }
            self.prefixes.push((p.as_bytes().to_vec(), index));
        }
        self.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        self.list.push(Arc::new(profile));
    }

    /// The profile called `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<TerminalProfile>> {
        self.list.iter().find(|p| p.name == name)
    }

    /// The profile of terminal `tid` (DE41, padding trimmed).
    pub fn find(&self, tid: &[u8]) -> Option<&Arc<TerminalProfile>> {
        let tid = trim(tid);
        let i = match self.exact.get(tid) {
            Some(&i) => i,
            None => self.prefixes.iter().find(|(p, _)| tid.starts_with(p))?.1,
        };
        self.list.get(i)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Does any profile MAC its answers (so answers must be looked at)?
    pub fn any_macs_answers(&self) -> bool {
        self.list.iter().any(|p| p.macs_answers())
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&c| c != b' ').map_or(0, |i| i + 1);
    &b[..end]
}

/// The HSM the request path uses (`[security] hsm`).
#[derive(Clone)]
pub enum Hsm {
    /// In the process: called in line.
    Soft(Arc<SoftHsm>),
    /// Over TCP: its commands are the cores' effects.
    Network(Arc<NetworkHsm>),
}

impl Hsm {
    pub fn soft(&self) -> Option<&Arc<SoftHsm>> {
        match self {
            Hsm::Soft(h) => Some(h),
            Hsm::Network(_) => None,
        }
    }

    pub fn network(&self) -> Option<&Arc<NetworkHsm>> {
        match self {
            Hsm::Soft(_) => None,
            Hsm::Network(n) => Some(n),
        }
    }

    /// The algorithm of the key named, if the key store has it.
    pub fn algorithm_of(&self, name: &str) -> Option<crate::security::keys::Algorithm> {
        match self {
            Hsm::Soft(h) => h.algorithm_of(name),
            Hsm::Network(n) => n.keys.get(name).map(|b| b.algorithm),
        }
    }

    /// Is a key of this name and one of these types in the key store?
    pub fn has(&self, name: &str, types: &[KeyType]) -> bool {
        match self {
            Hsm::Soft(h) => h.has(name, types),
            Hsm::Network(n) => n
                .keys
                .get(name)
                .is_some_and(|b| types.contains(&b.key_type)),
        }
    }
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hsm::Soft(h) => write!(f, "soft, LMK KCV {}", h.lmk_kcv()),
            Hsm::Network(n) => write!(f, "payshield at {} ({} keys)", n.config.addr, n.keys.len()),
        }
    }
}

/// `hsm = "payshield"`: the client's settings and the key store's blocks
/// (under the HSM's LMK, which the switch does not hold). The client
/// itself needs a runtime: [`NetworkHsm::client`] starts it on first use
/// (the switch does so at start), never while the config is checked.
pub struct NetworkHsm {
    pub config: PayShieldConfig,
    pub keys: Arc<KeyBlocks>,
    client: OnceLock<Result<PayShieldClient, String>>,
}

impl NetworkHsm {
    pub fn new(config: PayShieldConfig, keys: Arc<KeyBlocks>) -> NetworkHsm {
        NetworkHsm {
            config,
            keys,
            client: OnceLock::new(),
        }
    }

    /// How long a command may take: past it the request gets 96.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// The client, started (its connections opened) on the current
    /// runtime the first time it is asked for.
    pub fn client(&self) -> Result<&PayShieldClient, &str> {
        self.client
            .get_or_init(|| {
                PayShieldClient::start(self.config.clone(), self.keys.clone())
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| e.as_str())
    }
}

/// `[security]`: the HSM and the terminal profiles.
#[derive(Clone)]
pub struct SecurityConfig {
    pub hsm: Hsm,
    /// After a key change the replaced key is still taken this long.
    pub key_overlap_ms: u64,
    /// `card_hash_key`: the key of the card hash the journal and store
    /// keep.
    pub card_hash_key: Option<Arc<crate::security::card_hash::CardHashKey>>,
    pub bad_pin_code: [u8; 2],
    pub profiles: TerminalProfiles,
}

impl fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("hsm", &self.hsm)
            .field("bad_pin_code", &String::from_utf8_lossy(&self.bad_pin_code))
            .field("profiles", &self.profiles.list.len())
            .finish()
    }
}

/// `[acquirers.security]`: what the acquirer's zone wants.
#[derive(Clone, Debug, Default)]
pub struct AcquirerSecurity {
    /// Requests carry a MAC made under this key, answers must.
    pub mac: Option<(MacAlgorithm, KeyName)>,
    /// The zone master key the host's new ZPK and ZAK come under (0800,
    /// DE70 161).
    pub zmk: Option<KeyName>,
    /// The fields the zone's MACs cover, in this order; empty: the whole
    /// message.
    pub mac_fields: Vec<u16>,
    /// `[security] key_overlap_ms`, copied for the links.
    pub key_overlap_ms: u64,
    /// DE52 translated to this zone PIN key, in this format.
    pub pin: Option<(KeyName, PinFormat)>,
    pub de53: Option<String>,
    /// `[security]`'s HSM, when `mac` or `pin` is set.
    pub hsm: Option<Hsm>,
}

impl AcquirerSecurity {
    pub fn is_on(&self) -> bool {
        self.mac.is_some() || self.pin.is_some()
    }
}

/// Why a request's security did not hold: the reason for the warn line
/// and the metric's label. Never a key, PIN block or MAC value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    MacMissing,
    MacMisplaced,
    MacWrong,
    /// DE52 without a PIN key for the terminal.
    NoPinKey,
    /// The KSN field is missing or not the DUKPT's length.
    BadKsn,
    /// The PIN block does not decrypt to a valid block.
    BadPinBlock,
    /// The HSM could not do it (unknown key, wrong type...).
    Hsm,
    /// The network HSM did not answer in time, or could not be reached:
    /// 96.
    HsmUnavailable,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MacMissing => "mac_missing",
            Refusal::MacMisplaced => "mac_misplaced",
            Refusal::MacWrong => "mac_wrong",
            Refusal::NoPinKey => "no_pin_key",
            Refusal::BadKsn => "bad_ksn",
            Refusal::BadPinBlock => "bad_pin_block",
            Refusal::Hsm => "hsm_error",
            Refusal::HsmUnavailable => "hsm_unavailable",
        }
    }

    pub fn is_mac(self) -> bool {
        matches!(
            self,
            Refusal::MacMissing | Refusal::MacMisplaced | Refusal::MacWrong
        )
    }
}

/// Checks a request's MAC as `mac` and `key` say (`None` key: MAC off),
/// at `now_ms` (a replaced key is taken during its overlap).
pub fn check_mac(
    hsm: &SoftHsm,
    now_ms: u64,
    mode: MacMode,
    algorithm: MacAlgorithm,
    key: Option<&KeyName>,
    fields: &[u16],
    msg: &Message,
) -> Result<(), Refusal> {
    match mac_check_command(mode, algorithm, key, fields, msg)? {
        None => Ok(()),
        Some(command) => mac_verdict(hsm.execute_at(&command, now_ms)),
    }
}

/// What checking a request's MAC asks of the HSM: `None` when there is
/// nothing to check (MAC off, or none carried with `verify`).
pub fn mac_check_command(
    mode: MacMode,
    algorithm: MacAlgorithm,
    key: Option<&KeyName>,
    fields: &[u16],
    msg: &Message,
) -> Result<Option<HsmCommand>, Refusal> {
    let Some(key) = key else {
        return Ok(None);
    };
    if mode == MacMode::Off {
        return Ok(None);
    }
    let parts = match msg.mac_parts() {
        Ok(p) => p,
        Err(MacFieldError::Missing) if mode == MacMode::Verify => return Ok(None),
        Err(MacFieldError::Missing) => return Err(Refusal::MacMissing),
        Err(_) => return Err(Refusal::MacMisplaced),
    };
    let data = if fields.is_empty() {
        msg.frame().slice(..parts.data.len())
    } else {
        let mut d = Vec::with_capacity(128);
        crate::iso8583::mac_field::field_list_input(msg, fields, &mut d);
        Bytes::from(d)
    };
    Ok(Some(HsmCommand::VerifyMac {
        key: key.clone(),
        algorithm,
        data,
        mac: parts.mac,
    }))
}

/// The HSM's answer to [`mac_check_command`]'s command.
pub fn mac_verdict(answer: Result<HsmReply, HsmError>) -> Result<(), Refusal> {
    match answer {
        Ok(HsmReply::Verified) => Ok(()),
        Err(HsmError::MacMismatch) => Err(Refusal::MacWrong),
        Err(e) if unavailable(&e) => Err(Refusal::HsmUnavailable),
        _ => Err(Refusal::Hsm),
    }
}

/// The HSM did not answer (in time), or could not be reached: the
/// request gets 96, not a security refusal.
pub fn unavailable(e: &HsmError) -> bool {
    matches!(e, HsmError::Timeout(_) | HsmError::Unavailable(_))
}

/// Packs `b` with a MAC under `key` (replacing any it had), over the
/// whole message or, with `fields`, over those.
pub fn pack_with_mac(
    hsm: &SoftHsm,
    algorithm: MacAlgorithm,
    key: &KeyName,
    fields: &[u16],
    b: &MessageBuilder<'_>,
    out: &mut BytesMut,
) -> Result<(), String> {
    let generate = |data: &[u8], len: usize| match hsm.execute(&HsmCommand::GenerateMac {
        key: key.clone(),
        algorithm,
        data: Bytes::copy_from_slice(data),
        len,
    }) {
        Ok(HsmReply::Mac(m)) => MacBytes::try_from(&m[..]).map_err(|e| e.to_string()),
        Ok(other) => Err(format!("the HSM answered {other:?}")),
        Err(e) => Err(e.to_string()),
    };
    if fields.is_empty() {
        return b.pack_with_mac(out, generate).map_err(|e| e.to_string());
    }
    // The fields' bytes are known once packed: pack with a placeholder,
    // read the fields back, then fill the MAC in.
    let mut packed = BytesMut::with_capacity(256);
    b.pack_with_mac(&mut packed, |_, len| {
        Ok(std::iter::repeat_n(0, len).collect())
    })
    .map_err(|e| e.to_string())?;
    let msg = Message::parse(packed.split().freeze(), b.spec()).map_err(|e| e.to_string())?;
    let field = msg.mac_parts().map_err(|e| e.to_string())?.field;
    let mut data = Vec::with_capacity(128);
    crate::iso8583::mac_field::field_list_input(&msg, fields, &mut data);
    let mut message = msg.frame().to_vec();
    crate::iso8583::mac_field::fill_trailing_mac(b.spec(), field, &mut message, |_, len| {
        generate(&data, len)
    })
    .map_err(|e| e.to_string())?;
    out.extend_from_slice(&message);
    Ok(())
}

/// MACs `msg` under `key` in place when it already ends with its MAC
/// field (a placeholder, or another key's MAC): `out`, the message's own
/// bytes, gets the new MAC in that field and nothing else is copied or
/// packed again. `None` when `msg` has no MAC field last (the caller
/// packs it with one).
pub fn remac_in_place(
    hsm: &SoftHsm,
    algorithm: MacAlgorithm,
    key: &KeyName,
    fields: &[u16],
    msg: &Message,
    out: &mut [u8],
) -> Option<Result<(), String>> {
    let parts = msg.mac_parts().ok()?;
    debug_assert_eq!(out, &msg.frame()[..], "the message's own bytes");
    let field = parts.field;
    let data = if fields.is_empty() {
        msg.frame().slice(..parts.data.len())
    } else {
        let mut d = Vec::with_capacity(128);
        crate::iso8583::mac_field::field_list_input(msg, fields, &mut d);
        Bytes::from(d)
    };
    let filled = crate::iso8583::mac_field::fill_trailing_mac(msg.spec(), field, out, |_, len| {
        match hsm.execute(&HsmCommand::GenerateMac {
            key: key.clone(),
            algorithm,
            data,
            len,
        }) {
            Ok(HsmReply::Mac(m)) => MacBytes::try_from(&m[..]).map_err(|e| e.to_string()),
            Ok(other) => Err(format!("the HSM answered {}", reply_name(&other))),
            Err(e) => Err(e.to_string()),
        }
    });
    Some(filled.map_err(|e| e.to_string()))
}

/// `msg` again, with a MAC under `key` over the whole message or, with
/// `fields`, over those.
pub fn seal(
    hsm: &SoftHsm,
    algorithm: MacAlgorithm,
    key: &KeyName,
    fields: &[u16],
    msg: &Message,
) -> Result<Bytes, String> {
    let mut own = BytesMut::from(&msg.frame()[..]);
    if let Some(done) = remac_in_place(hsm, algorithm, key, fields, msg, &mut own) {
        return done.map(|()| own.freeze());
    }
    let mut b = MessageBuilder::new(msg.spec(), msg.mti());
    b.copy_all(msg);
    let mut out = BytesMut::with_capacity(msg.frame().len() + 32);
    pack_with_mac(hsm, algorithm, key, fields, &b, &mut out)?;
    Ok(out.freeze())
}

/// `msg` again with a placeholder for a MAC under `key`, and the command
/// that makes it (the network HSM's [`seal`]).
pub fn seal_later(
    algorithm: MacAlgorithm,
    key: &KeyName,
    fields: &[u16],
    msg: &Message,
) -> Result<(BytesMut, MacToMake), String> {
    let mut b = MessageBuilder::new(msg.spec(), msg.mti());
    b.copy_all(msg);
    let mut out = BytesMut::with_capacity(msg.frame().len() + 32);
    let mac = pack_for_mac(algorithm, key, fields, &b, &mut out)?;
    Ok((out, mac))
}

/// DE52 of `msg` under the acquirer's zone PIN key: `None` when there is
/// nothing to translate (no DE52, or the acquirer takes it as it is).
pub fn translate_pin(
    hsm: &SoftHsm,
    now_ms: u64,
    profile: Option<&TerminalProfile>,
    zone: &AcquirerSecurity,
    msg: &Message,
    pan: &[u8],
) -> Result<Option<EncryptedPinBlock>, Refusal> {
    match pin_command(profile, zone, msg, pan)? {
        None => Ok(None),
        Some(command) => pin_verdict(hsm.execute_at(&command, now_ms)).map(Some),
    }
}

/// What translating DE52 for the acquirer asks of the HSM: `None` when
/// there is nothing to translate.
pub fn pin_command(
    profile: Option<&TerminalProfile>,
    zone: &AcquirerSecurity,
    msg: &Message,
    pan: &[u8],
) -> Result<Option<HsmCommand>, Refusal> {
    let (Some((zpk, to_format)), Some(de52)) = (&zone.pin, msg.value(52)) else {
        return Ok(None);
    };
    let Some(pin_key) = profile.and_then(|p| p.pin.as_ref()) else {
        return Err(Refusal::NoPinKey);
    };
    let mut raw = arrayvec::ArrayVec::<u8, 32>::new();
    if de52.logical_len() > raw.capacity() {
        return Err(Refusal::BadPinBlock);
    }
    de52.write_logical(&mut raw);
    let format = if raw.len() == 16 {
        PinFormat::Iso4
    } else {
        PinFormat::Iso0
    };
    let block = EncryptedPinBlock::from_bytes(format, &raw).map_err(|_| Refusal::BadPinBlock)?;
    let tid = msg.terminal_id();
    let tid = tid.as_ref().map_or(&[][..], |t| t.trimmed());
    let source = match pin_key {
        PinKey::Tpk(k) => PinSource::Tpk(k.name(tid)),
        PinKey::Dukpt {
            bdk,
            ksn_field,
            aes: false,
        } => PinSource::Dukpt {
            bdk: bdk.clone(),
            ksn: ksn_of(msg, *ksn_field)
                .and_then(|k| Ksn::new(&k).ok())
                .ok_or(Refusal::BadKsn)?,
        },
        PinKey::Dukpt {
            bdk,
            ksn_field,
            aes: true,
        } => PinSource::AesDukpt {
            bdk: bdk.clone(),
            ksn: ksn_of(msg, *ksn_field)
                .and_then(|k| AesKsn::new(&k).ok())
                .ok_or(Refusal::BadKsn)?,
        },
    };
    let pan = std::str::from_utf8(pan).map_err(|_| Refusal::BadPinBlock)?;
    Ok(Some(HsmCommand::TranslatePin {
        source,
        to: zpk.clone(),
        block,
        to_format: *to_format,
        pan: pan.to_owned(),
    }))
}

/// The HSM's answer to [`pin_command`]'s command.
pub fn pin_verdict(answer: Result<HsmReply, HsmError>) -> Result<EncryptedPinBlock, Refusal> {
    match answer {
        Ok(HsmReply::Pin(b)) => Ok(b),
        Err(HsmError::BadPinBlock(_)) => Err(Refusal::BadPinBlock),
        Err(e) if unavailable(&e) => Err(Refusal::HsmUnavailable),
        _ => Err(Refusal::Hsm),
    }
}

/// A message packed with a placeholder where its MAC goes, waiting for the
/// MAC that `command` makes ([`fill_mac`] puts it in).
#[derive(Debug)]
pub struct MacToMake {
    pub command: HsmCommand,
    /// The MAC field (64 or 128), the message's last.
    pub field: usize,
}

/// Packs `b` into `out` with a placeholder MAC (any MAC it had replaced),
/// over the whole message or, with `fields`, over those; returns the
/// command that makes the MAC. On error `out` is as it was.
pub fn pack_for_mac(
    algorithm: MacAlgorithm,
    key: &KeyName,
    fields: &[u16],
    b: &MessageBuilder<'_>,
    out: &mut BytesMut,
) -> Result<MacToMake, String> {
    let start = out.len();
    let mut covered = None;
    b.pack_with_mac(out, |data, len| {
        covered = Some((Bytes::copy_from_slice(data), len));
        Ok(std::iter::repeat_n(0, len).collect())
    })
    .map_err(|e| e.to_string())?;
    let Some((mut data, len)) = covered else {
        out.truncate(start);
        return Err("no MAC was asked for".into());
    };
    let field = crate::iso8583::mac_field::mac_field_for(b.fields());
    if !fields.is_empty() {
        let packed = Bytes::copy_from_slice(&out[start..]);
        let msg = match Message::parse(packed, b.spec()) {
            Ok(m) => m,
            Err(e) => {
                out.truncate(start);
                return Err(e.to_string());
            }
        };
        let mut d = Vec::with_capacity(128);
        crate::iso8583::mac_field::field_list_input(&msg, fields, &mut d);
        data = Bytes::from(d);
    }
    Ok(MacToMake {
        command: HsmCommand::GenerateMac {
            key: key.clone(),
            algorithm,
            data,
            len,
        },
        field,
    })
}

/// Puts the MAC the HSM made (`answer`, to [`pack_for_mac`]'s command) in
/// `message`, packed with its placeholder in `field`.
pub fn fill_mac(
    spec: &'static Spec,
    field: usize,
    message: &mut [u8],
    answer: Result<HsmReply, HsmError>,
) -> Result<(), String> {
    let mac = match answer {
        Ok(HsmReply::Mac(m)) => MacBytes::try_from(&m[..]).map_err(|e| e.to_string())?,
        Ok(other) => return Err(format!("the HSM answered {}", reply_name(&other))),
        Err(e) => return Err(e.to_string()),
    };
    crate::iso8583::mac_field::fill_trailing_mac(spec, field, message, |_, _| Ok(mac))
        .map_err(|e| e.to_string())
}

/// What kind of answer (never its content).
fn reply_name(r: &HsmReply) -> &'static str {
    match r {
        HsmReply::Pin(_) => "a PIN block",
        HsmReply::Mac(_) => "a MAC",
        HsmReply::Verified => "verified",
        HsmReply::Key { .. } => "a key",
        HsmReply::Diagnostics { .. } => "diagnostics",
    }
}

/// The KSN's bytes in field `n`: raw (10 bytes for TDES DUKPT, 12 for
/// AES), or text of twice as many hex digits.
fn ksn_of(msg: &Message, n: usize) -> Option<arrayvec::ArrayVec<u8, 12>> {
    let v = msg.value(n)?;
    let mut raw = arrayvec::ArrayVec::<u8, 40>::new();
    if v.logical_len() > raw.capacity() {
        return None;
    }
    v.write_logical(&mut raw);
    match raw.len() {
        10 | 12 => Some(raw.iter().copied().collect()),
        20 | 24 => {
            let bytes = crate::hex::parse_hex(std::str::from_utf8(&raw).ok()?).ok()?;
            Some(bytes.into_iter().collect())
        }
        _ => None,
    }
}
