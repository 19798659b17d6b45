//! The payShield host command codec: pure, no I/O. A message body (what
//! follows the 2-byte big-endian length prefix, which
//! [`crate::frame::FrameCodec`] with `LengthHeader::Binary2` reads and
//! writes) is
//!
//! ```text
//! request:  header (m chars) | command code (2) | fields
//! answer:   header (m chars) | response code (2) | error code (2) | fields (when "00")
//! ```
//!
//! The header is echoed by the HSM; the client makes each one unique among
//! the commands in flight on a connection and matches answers by it. The
//! response code is the command code with its second character + 1 (CA ->
//! CB, M6 -> M7, NC -> ND).
//!
//! Keys travel as key blocks under the LMK: `S` and the TR-31 version D
//! block text as the key store holds it (the block gives its own length in
//! its characters 1 to 4, so the field delimits itself).
//!
//! The field layouts follow the payShield host command reference as far
//! as public material shows it; each command's doc says where this codec
//! simplifies or extends. Everything here is checked byte by byte: a
//! decoder never panics on any input (property-tested) and answers
//! [`ErrorCode::INVALID_INPUT`] (15) for what it cannot read.

use std::fmt;

use bytes::Bytes;

use crate::security::dukpt::Ksn;
use crate::security::hsm::{MacAlgorithm, MacValue};
use crate::security::kcv::Kcv;
use crate::security::keys::Algorithm;
use crate::security::pinblock::{EncryptedPinBlock, PinBlockError, PinFormat};
use crate::security::store::KeyType;

/// The header length a payShield is configured with by default.
pub const DEFAULT_HEADER_LEN: usize = 4;
/// Longest header this codec accepts (the HSM's setting is 1 to 255; no
/// client needs more than a few characters to number its calls).
pub const MAX_HEADER_LEN: usize = 32;
/// Largest body the 2-byte length prefix can carry.
pub const MAX_BODY: usize = u16::MAX as usize;
/// Longest key block text accepted in a field (ours are under 300).
pub const MAX_KEY_BLOCK: usize = 1024;

/// A 2-character payShield error code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub [u8; 2]);

impl ErrorCode {
    pub const OK: ErrorCode = ErrorCode(*b"00");
    /// Verification failure (M8/M9: the MAC does not verify).
    pub const VERIFICATION_FAILURE: ErrorCode = ErrorCode(*b"01");
    pub const SOURCE_KEY_PARITY: ErrorCode = ErrorCode(*b"10");
    pub const DESTINATION_KEY_PARITY: ErrorCode = ErrorCode(*b"11");
    /// Invalid input data (invalid format, invalid characters, or not
    /// enough data provided).
    pub const INVALID_INPUT: ErrorCode = ErrorCode(*b"15");
    /// The PIN block does not contain valid values.
    pub const PIN_BLOCK_ERROR: ErrorCode = ErrorCode(*b"20");
    pub const INVALID_ACCOUNT: ErrorCode = ErrorCode(*b"22");
    pub const INVALID_PIN_FORMAT: ErrorCode = ErrorCode(*b"23");
    /// The PIN is fewer than 4 or more than 12 digits long.
    pub const PIN_LENGTH: ErrorCode = ErrorCode(*b"24");
    pub const INVALID_KEY_SCHEME: ErrorCode = ErrorCode(*b"26");
    pub const KEY_FUNCTION_NOT_PERMITTED: ErrorCode = ErrorCode(*b"29");
    pub const INTERNAL: ErrorCode = ErrorCode(*b"41");
    pub const COMMAND_DISABLED: ErrorCode = ErrorCode(*b"68");
    /// Key block authentication failure (wrong LMK, or a changed block).
    pub const KEY_BLOCK_AUTH: ErrorCode = ErrorCode(*b"A4");
    pub const INVALID_KEY_USAGE: ErrorCode = ErrorCode(*b"A6");
    pub const INVALID_ALGORITHM: ErrorCode = ErrorCode(*b"A7");

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// What the payShield manual says the code means. The values are those
    /// of public payShield error lists (e.g. the ut-codec-payshield
    /// project's); the A-codes are the key block LMK's and were not checked
    /// against the manual itself.
    pub fn meaning(&self) -> &'static str {
        match &self.0 {
            b"00" => "no error",
            b"01" => "verification failure",
            b"04" => "invalid key type code",
            b"05" => "invalid key length flag",
            b"10" => "source key parity error",
            b"11" => "destination key parity error or key all zeros",
            b"12" => "contents of user storage not available",
            b"13" => "invalid LMK identifier",
            b"15" => "invalid input data",
            b"17" => "HSM not in the authorised state",
            b"20" => "PIN block does not contain valid values",
            b"21" => "invalid index value",
            b"22" => "invalid account number",
            b"23" => "invalid PIN block format code",
            b"24" => "PIN is fewer than 4 or more than 12 digits in length",
            b"25" => "decimalisation table error",
            b"26" => "invalid key scheme",
            b"27" => "incompatible key length",
            b"28" => "invalid key type",
            b"29" => "key function not permitted",
            b"41" => "internal hardware/software error",
            b"42" => "DES failure",
            b"47" => "algorithm not licensed",
            b"51" => "invalid message header",
            b"67" => "command not licensed",
            b"68" => "command has been disabled",
            b"69" => "PIN block format has been disabled",
            b"80" => "data length error",
            b"A1" => "incompatible LMK schemes",
            b"A4" => "key block authentication failure",
            b"A5" => "incompatible key length",
            b"A6" => "invalid key usage",
            b"A7" => "invalid algorithm",
            b"A8" => "invalid mode of use",
            b"B2" => "miscellaneous key block error",
            _ => "unknown error code",
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({} {})", self.as_str(), self.meaning())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.meaning())
    }
}

/// A key block under the LMK, as text (`D0176P0TB00E...`), without the
/// `S` scheme tag. Not a clear key, but `Debug` shows only its header's
/// first characters all the same: nothing of a key reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBlockText(pub String);

impl fmt::Debug for KeyBlockText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = self.0.get(..12).unwrap_or("");
        write!(f, "KeyBlock({head}..., {} chars)", self.0.len())
    }
}

impl KeyBlockText {
    /// The algorithm letter of its header (character 7), read without the
    /// LMK: it tells a PIN block's length in CA and CC.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.0
            .as_bytes()
            .get(7)
            .and_then(|&c| Algorithm::from_tr31_letter(c))
    }
}

/// The account number field of CA, CC and G0.
///
/// For ISO format 0 on both sides it is the manual's 12N: the 12
/// right-most PAN digits excluding the check digit (zero-padded on the
/// left for short PANs), which is all format 0 binds the PIN to.
///
/// ISO format 4 binds the whole PAN, so when either side is format 4
/// (code 48) this codec carries the whole PAN instead: `2N` its length
/// (08 to 19) and the digits. That is our extension: the manual's layout
/// for format 48 was not available to check against.
#[derive(Clone, PartialEq, Eq)]
pub enum Account {
    Digits12([u8; 12]),
    Pan(String),
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Card data: never shown.
        match self {
            Account::Digits12(_) => f.write_str("Account(12N, ****)"),
            Account::Pan(p) => write!(f, "Account(PAN of {} digits, ****)", p.len()),
        }
    }
}

impl Account {
    /// The field for `pan` (8 to 19 digits) when the PIN goes `from` ->
    /// `to`.
    pub fn for_pan(pan: &str, from: PinFormat, to: PinFormat) -> Result<Account, PinBlockError> {
        let b = pan.as_bytes();
        if !(8..=19).contains(&b.len()) || !b.iter().all(u8::is_ascii_digit) {
            return Err(PinBlockError::BadPan);
        }
        if from == PinFormat::Iso4 || to == PinFormat::Iso4 {
            return Ok(Account::Pan(pan.to_owned()));
        }
        let body = &b[..b.len() - 1];
        let take = body.len().min(12);
        let mut out = [b'0'; 12];
        out[12 - take..].copy_from_slice(&body[body.len() - take..]);
        Ok(Account::Digits12(out))
    }

    /// A PAN for [`crate::security::pinblock`]'s functions that binds the
    /// PIN as this field does: the 12 digits with a check digit appended
    /// (format 0 ignores it), or the PAN itself.
    pub fn pan(&self) -> String {
        match self {
            Account::Digits12(d) => {
                let mut s: String = d.iter().map(|&c| char::from(c)).collect();
                s.push('0');
                s
            }
            Account::Pan(p) => p.clone(),
        }
    }
}

/// A PIN translation: CA (TPK -> ZPK), CC (ZPK -> ZPK), G0 (BDK -> ZPK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinTranslation {
    pub from: KeyBlockText,
    pub to: KeyBlockText,
    pub block: EncryptedPinBlock,
    pub to_format: PinFormat,
    pub account: Account,
}

/// How a MAC is asked for: `MAC size` of M6/M8.
///
/// `0` 8H (4 bytes) and `1` 16H (8 bytes) are the manual's; `2` 32H (16
/// bytes, a whole AES-CMAC) is our extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacSize {
    Four,
    Eight,
    Sixteen,
}

impl MacSize {
    pub fn bytes(self) -> usize {
        match self {
            MacSize::Four => 4,
            MacSize::Eight => 8,
            MacSize::Sixteen => 16,
        }
    }

    pub fn of_len(len: usize) -> Option<MacSize> {
        match len {
            4 => Some(MacSize::Four),
            8 => Some(MacSize::Eight),
            16 => Some(MacSize::Sixteen),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            MacSize::Four => b'0',
            MacSize::Eight => b'1',
            MacSize::Sixteen => b'2',
        }
    }

    fn from_code(c: u8) -> Option<MacSize> {
        match c {
            b'0' => Some(MacSize::Four),
            b'1' => Some(MacSize::Eight),
            b'2' => Some(MacSize::Sixteen),
            _ => None,
        }
    }
}

/// Where a generated key is also exported (A0 mode 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// ZMK (`0`) or TMK (`1`): the ZMK/TMK flag.
    pub tmk: bool,
    pub kek: KeyBlockText,
    /// The key scheme under the ZMK: `X` (ANSI X9.17: a TDES key ECB
    /// under a TDES KEK, as hex) or `S` (a TR-31 key block under an AES
    /// KEK).
    pub scheme: u8,
}

/// A command, its keys as key blocks under the LMK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// CA: translate a PIN from TPK to ZPK.
    TranslateTpk(PinTranslation),
    /// CC: translate a PIN from ZPK to ZPK.
    TranslateZpk(PinTranslation),
    /// G0: translate a PIN from TDES DUKPT (the BDK, the KSN) to ZPK.
    TranslateDukpt { pin: PinTranslation, ksn: Ksn },
    /// M6: generate a MAC (mode 0: the whole message in one command; input
    /// format 0: binary).
    GenerateMac {
        key: KeyBlockText,
        algorithm: MacAlgorithm,
        size: MacSize,
        data: Bytes,
    },
    /// M8: verify a MAC.
    VerifyMac {
        key: KeyBlockText,
        algorithm: MacAlgorithm,
        data: Bytes,
        mac: MacValue,
    },
    /// A0: generate a key under the LMK (key scheme S), optionally also
    /// under a ZMK or TMK.
    GenerateKey {
        key_type: KeyType,
        algorithm: Algorithm,
        export: Option<Export>,
        /// The key's name, carried in the new block's `LB` (label)
        /// optional block, so that the block can go in the key store.
        label: Option<String>,
    },
    /// A6: import a key from under a ZMK (key scheme `X`: a double-length
    /// TDES key ECB under a TDES ZMK, as 32H) to under the LMK (key scheme
    /// S).
    ImportKey {
        key_type: KeyType,
        zmk: KeyBlockText,
        /// 32 hex digits.
        under_zmk: String,
        label: Option<String>,
    },
    /// NC: diagnostics.
    Diagnostics,
}

impl Request {
    pub fn command_code(&self) -> [u8; 2] {
        match self {
            Request::TranslateTpk(_) => *b"CA",
            Request::TranslateZpk(_) => *b"CC",
            Request::TranslateDukpt { .. } => *b"G0",
            Request::GenerateMac { .. } => *b"M6",
            Request::VerifyMac { .. } => *b"M8",
            Request::GenerateKey { .. } => *b"A0",
            Request::ImportKey { .. } => *b"A6",
            Request::Diagnostics => *b"NC",
        }
    }
}

/// The response code of a command code: its second character + 1.
pub fn response_code(command: [u8; 2]) -> [u8; 2] {
    let second = match command[1] {
        b'9' => b'A',
        b'Z' => b'0',
        c => c.wrapping_add(1),
    };
    [command[0], second]
}

/// What a successful answer carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// CB, CD, G1: the PIN's length (2N) and the block under the ZPK.
    Pin {
        pin_len: u8,
        block: EncryptedPinBlock,
    },
    /// M7.
    Mac(MacValue),
    /// M9 with 00.
    Verified,
    /// A1: the key under the LMK, under the ZMK/TMK (scheme `S`: a key
    /// block; `X`: hex), its KCV (6H). A7 (to A6): the key under the LMK
    /// and its KCV, nothing exported.
    Key {
        under_lmk: KeyBlockText,
        exported: Option<(u8, String)>,
        kcv: Kcv,
    },
    /// ND: the LMK check value and the firmware number.
    ///
    /// The manual gives the LMK check value as 16H; ours is a 6H KCV
    /// followed by ten `0`s (our LMK's check value is 3 bytes).
    Diagnostics { lmk_kcv: Kcv, firmware: String },
}

/// Why a body could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the message is shorter than its header and code")]
    Short,
    #[error("the command or response code is not two letters or digits")]
    BadCode,
    #[error("unknown command code {0}")]
    UnknownCommand(String),
    #[error("{0}")]
    Field(String),
    #[error("{0}: not a PIN block format code served (01 or 48)")]
    PinFormat(&'static str),
    #[error("the message is {0} bytes, over the {MAX_BODY} a 2-byte length carries")]
    TooLong(usize),
}

fn field(what: impl Into<String>) -> WireError {
    WireError::Field(what.into())
}

/// A request that could not be read, but whose header and command code
/// could: the HSM answers it with `code`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub header: Vec<u8>,
    pub command: [u8; 2],
    pub code: ErrorCode,
    pub reason: WireError,
}

// ---- encoding ----

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0x0F)]);
    }
}

fn push_key(out: &mut Vec<u8>, key: &KeyBlockText) {
    out.push(b'S');
    out.extend_from_slice(key.0.as_bytes());
}

fn format_code(f: PinFormat) -> &'static [u8; 2] {
    match f {
        PinFormat::Iso0 => b"01",
        PinFormat::Iso4 => b"48",
    }
}

fn format_of(code: &[u8]) -> Option<PinFormat> {
    match code {
        b"01" => Some(PinFormat::Iso0),
        b"48" => Some(PinFormat::Iso4),
        _ => None,
    }
}

fn mac_algorithm_code(a: MacAlgorithm) -> (u8, u8) {
    // (algorithm, padding): ISO 9797-1 algorithm 1 and 3 with padding
    // method 1 are the manual's `1`/`3` and `1`. AES-CMAC as `6` with
    // padding `0` (CMAC pads itself) is a guess at the newer firmware's
    // numbering.
    match a {
        MacAlgorithm::TdesCbc => (b'1', b'1'),
        MacAlgorithm::Retail => (b'3', b'1'),
        MacAlgorithm::AesCmac => (b'6', b'0'),
    }
}

fn mac_algorithm_of(algorithm: u8, padding: u8) -> Option<MacAlgorithm> {
    match (algorithm, padding) {
        (b'1', b'1') => Some(MacAlgorithm::TdesCbc),
        (b'3', b'1') => Some(MacAlgorithm::Retail),
        (b'6', b'0') => Some(MacAlgorithm::AesCmac),
        _ => None,
    }
}

fn key_type_code(t: KeyType) -> &'static str {
    // The Switchyard key type, carried in the key block's proprietary
    // optional block 10 as the key store writes it.
    match t {
        KeyType::Tpk => "TPK",
        KeyType::Tak => "TAK",
        KeyType::Zpk => "ZPK",
        KeyType::Zak => "ZAK",
        KeyType::Zmk => "ZMK",
        KeyType::Tmk => "TMK",
        KeyType::Bdk => "BDK",
        KeyType::Hmac => "HMAC",
    }
}

fn push_translation(out: &mut Vec<u8>, t: &PinTranslation, from_format: Option<PinFormat>) {
    push_key(out, &t.from);
    push_key(out, &t.to);
    if from_format.is_some() {
        // Maximum PIN length (CA, CC).
        out.extend_from_slice(b"12");
    }
    push_hex(out, t.block.as_bytes());
    out.extend_from_slice(format_code(t.block.format()));
    out.extend_from_slice(format_code(t.to_format));
    push_account(out, &t.account);
}

fn push_account(out: &mut Vec<u8>, a: &Account) {
    match a {
        Account::Digits12(d) => out.extend_from_slice(d),
        Account::Pan(p) => {
            out.extend_from_slice(format!("{:02}", p.len()).as_bytes());
            out.extend_from_slice(p.as_bytes());
        }
    }
}

/// The body of a request: `header`, the command code, its fields.
///
/// CA and CC: source key, destination key, maximum PIN length (`12`), the
/// source PIN block (16H for format 01, 32H for 48), source and
/// destination format codes (2N), the account field ([`Account`]).
///
/// G0: BDK, ZPK, KSN descriptor (3H, `A05`: not interpreted), KSN (20H),
/// the source PIN block (16H, format 01), source and destination format
/// codes, the account field. (The manual's variants of G0 with a BDK as
/// destination are not built.)
///
/// M6: mode `0`, input format `0` (binary), MAC size ([`MacSize`]), MAC
/// algorithm (`1` ISO 9797-1 algorithm 1, `3` algorithm 3, `6` AES-CMAC:
/// the last a guess) and padding (`1` ISO 9797-1 method 1; `0` for
/// CMAC), key type `FFF`
/// (the key block says what it is), the key, message length (4H, bytes),
/// the message. M8: the same, then the MAC (hex of the size's length).
///
/// A0: mode (`0`, or `1` with export), key type `FFF`, key scheme (LMK)
/// `S`; with export: `;`, the ZMK/TMK flag, the ZMK or TMK, the key scheme
/// under it; then `#` and the key block fields ([`push_key_fields`]:
/// usage, algorithm, mode of use, version, exportability, the optional
/// blocks `10` with the Switchyard key type and `LB` with a label).
///
/// A6: key type `FFF`, the ZMK, `X` and the key under it (32H), key
/// scheme (LMK) `S`, then `#` and the key block fields as A0's (algorithm
/// `T2`: scheme X carries a double-length TDES key). The payShield
/// manual's A6 has more optional fields (a key check value to compare,
/// ATALLA variants); the switch compares the KCV A7 returns itself.
///
/// NC: nothing.
pub fn encode_request(header: &[u8], req: &Request, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(header);
    out.extend_from_slice(&req.command_code());
    match req {
        Request::TranslateTpk(t) | Request::TranslateZpk(t) => {
            push_translation(out, t, Some(t.block.format()))
        }
        Request::TranslateDukpt { pin, ksn } => {
            push_key(out, &pin.from);
            push_key(out, &pin.to);
            out.extend_from_slice(b"A05");
            push_hex(out, &ksn.bytes());
            push_hex(out, pin.block.as_bytes());
            out.extend_from_slice(format_code(pin.block.format()));
            out.extend_from_slice(format_code(pin.to_format));
            push_account(out, &pin.account);
        }
        Request::GenerateMac {
            key,
            algorithm,
            size,
            data,
        } => push_mac_head(out, key, *algorithm, *size, data)?,
        Request::VerifyMac {
            key,
            algorithm,
            data,
            mac,
        } => {
            let size = MacSize::of_len(mac.len())
                .ok_or_else(|| field(format!("a MAC of {} bytes", mac.len())))?;
            push_mac_head(out, key, *algorithm, size, data)?;
            push_hex(out, mac);
        }
        Request::GenerateKey {
            key_type,
            algorithm,
            export,
            label,
        } => {
            out.push(if export.is_some() { b'1' } else { b'0' });
            out.extend_from_slice(b"FFFS");
            if let Some(e) = export {
                out.push(b';');
                out.push(if e.tmk { b'1' } else { b'0' });
                push_key(out, &e.kek);
                out.push(e.scheme);
            }
            push_key_fields(out, *key_type, *algorithm, label.as_deref())?;
        }
        Request::ImportKey {
            key_type,
            zmk,
            under_zmk,
            label,
        } => {
            if under_zmk.len() != 32 || !under_zmk.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(field("key under the ZMK: not 32 hex digits"));
            }
            out.extend_from_slice(b"FFF");
            push_key(out, zmk);
            out.push(b'X');
            out.extend_from_slice(under_zmk.as_bytes());
            out.push(b'S');
            push_key_fields(out, *key_type, Algorithm::Tdes, label.as_deref())?;
        }
        Request::Diagnostics => {}
    }
    let len = out.len() - start;
    if len > MAX_BODY {
        out.truncate(start);
        return Err(WireError::TooLong(len));
    }
    Ok(())
}

fn push_mac_head(
    out: &mut Vec<u8>,
    key: &KeyBlockText,
    algorithm: MacAlgorithm,
    size: MacSize,
    data: &[u8],
) -> Result<(), WireError> {
    if data.len() > MAX_BODY {
        return Err(WireError::TooLong(data.len()));
    }
    let (a, p) = mac_algorithm_code(algorithm);
    out.extend_from_slice(&[b'0', b'0', size.code(), a, p]);
    out.extend_from_slice(b"FFF");
    push_key(out, key);
    out.extend_from_slice(format!("{:04X}", data.len()).as_bytes());
    out.extend_from_slice(data);
    Ok(())
}

/// `#` and the key block fields of A0 and A6: usage (2A), algorithm (`T2`
/// double-length TDES, `A1` AES-128: the soft HSM's keys are 16 bytes),
/// mode of use (1A), key version `00`, exportability (1A), the number of
/// optional blocks (2N) and the blocks: `10` with the Switchyard key type,
/// and with a label `LB` (X9.143's label block) with the key's name.
fn push_key_fields(
    out: &mut Vec<u8>,
    key_type: KeyType,
    algorithm: Algorithm,
    label: Option<&str>,
) -> Result<(), WireError> {
    if let Some(l) = label
        && !label_ok(l)
    {
        return Err(field("label: 1 to 64 letters, digits, `.`, `_` or `-`"));
    }
    out.push(b'#');
    out.extend_from_slice(&key_type.usage(algorithm));
    out.extend_from_slice(match algorithm {
        Algorithm::Tdes => b"T2",
        Algorithm::Aes => b"A1",
    });
    out.push(key_type.mode());
    out.extend_from_slice(b"00");
    out.push(if key_type.exportable() { b'E' } else { b'N' });
    let t = key_type_code(key_type);
    let count = if label.is_some() { 2 } else { 1 };
    out.extend_from_slice(format!("{count:02}10{:02X}{t}", t.len() + 4).as_bytes());
    if let Some(l) = label {
        out.extend_from_slice(format!("LB{:02X}{l}", l.len() + 4).as_bytes());
    }
    Ok(())
}

/// A key store name (what [`crate::security::store`] takes), so a label
/// is printable and its block's length fits 2H.
fn label_ok(l: &str) -> bool {
    (1..=64).contains(&l.len())
        && l.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The body of an answer: `header`, the response code of `command`, the
/// error code, and on success the fields.
///
/// CB, CD, G1: PIN length (2N), the PIN block (16H or 32H), its format
/// code. M7: the MAC (hex). M9: nothing. A1: `S` and the key block under
/// the LMK; with export, the key under the ZMK/TMK (`S` + block or `X` +
/// 32H); the KCV (6H). A7: `S` and the key block under the LMK, the KCV. ND: LMK check value (16H, see
/// [`Response::Diagnostics`]), firmware number.
pub fn encode_response(
    header: &[u8],
    command: [u8; 2],
    answer: Result<&Response, ErrorCode>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(header);
    out.extend_from_slice(&response_code(command));
    let r = match answer {
        Err(code) => {
            out.extend_from_slice(&code.0);
            return;
        }
        Ok(r) => r,
    };
    out.extend_from_slice(b"00");
    match r {
        Response::Pin { pin_len, block } => {
            out.extend_from_slice(format!("{:02}", pin_len.min(&99)).as_bytes());
            push_hex(out, block.as_bytes());
            out.extend_from_slice(format_code(block.format()));
        }
        Response::Mac(mac) => push_hex(out, mac),
        Response::Verified => {}
        Response::Key {
            under_lmk,
            exported,
            kcv,
        } => {
            push_key(out, under_lmk);
            if let Some((scheme, text)) = exported {
                out.push(*scheme);
                out.extend_from_slice(text.as_bytes());
            }
            out.extend_from_slice(kcv.to_string().as_bytes());
        }
        Response::Diagnostics { lmk_kcv, firmware } => {
            out.extend_from_slice(lmk_kcv.to_string().as_bytes());
            out.extend_from_slice(b"0000000000");
            out.extend_from_slice(firmware.as_bytes());
        }
    }
}

// ---- decoding ----

/// A cursor over a body: every read checks what is left.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| field(format!("{what}: the message ends first")))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn rest(&self) -> &'a [u8] {
        &self.b[self.at..]
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn done(&self, what: &str) -> Result<(), WireError> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(field(format!(
                "{} bytes after {what}",
                self.b.len() - self.at
            )))
        }
    }

    fn expect(&mut self, c: u8, what: &str) -> Result<(), WireError> {
        if self.take(1, what)? == [c] {
            Ok(())
        } else {
            Err(field(format!("{what}: expected {:?}", char::from(c))))
        }
    }

    fn hex(&mut self, chars: usize, what: &str) -> Result<Vec<u8>, WireError> {
        let t = self.take(chars, what)?;
        parse_hex_strict(t).ok_or_else(|| field(format!("{what}: not hex")))
    }

    fn digits(&mut self, n: usize, what: &str) -> Result<usize, WireError> {
        let t = self.take(n, what)?;
        if !t.iter().all(u8::is_ascii_digit) {
            return Err(field(format!("{what}: not {n} digits")));
        }
        Ok(t.iter().fold(0, |acc, d| acc * 10 + usize::from(d - b'0')))
    }

    /// `S` and a key block, whose characters 1 to 4 give its length.
    fn key(&mut self, what: &str) -> Result<KeyBlockText, WireError> {
        self.expect(b'S', what)?;
        let start = self.at;
        let head = self.take(5, what)?;
        if head[0] != b'D' || !head[1..].iter().all(u8::is_ascii_digit) {
            return Err(field(format!("{what}: not a version D key block")));
        }
        let len = head[1..]
            .iter()
            .fold(0usize, |acc, d| acc * 10 + usize::from(d - b'0'));
        if !(16..=MAX_KEY_BLOCK).contains(&len) {
            return Err(field(format!("{what}: a key block of {len} characters")));
        }
        self.at = start;
        let t = self.take(len, what)?;
        if !t.iter().all(|b| (0x21..0x7F).contains(b)) {
            return Err(field(format!("{what}: not printable")));
        }
        // Printable ASCII: valid UTF-8.
        let text = String::from_utf8_lossy(t).into_owned();
        Ok(KeyBlockText(text))
    }

    fn account(&mut self, from: PinFormat, to: PinFormat) -> Result<Account, WireError> {
        if from == PinFormat::Iso4 || to == PinFormat::Iso4 {
            let n = self.digits(2, "PAN length")?;
            if !(8..=19).contains(&n) {
                return Err(field(format!("a PAN of {n} digits")));
            }
            let t = self.take(n, "PAN")?;
            if !t.iter().all(u8::is_ascii_digit) {
                return Err(field("PAN: not digits"));
            }
            Ok(Account::Pan(String::from_utf8_lossy(t).into_owned()))
        } else {
            let t = self.take(12, "account number")?;
            if !t.iter().all(u8::is_ascii_digit) {
                return Err(field("account number: not 12 digits"));
            }
            let mut d = [0u8; 12];
            d.copy_from_slice(t);
            Ok(Account::Digits12(d))
        }
    }

    fn pin_format(&mut self, what: &'static str) -> Result<PinFormat, WireError> {
        let t = self.take(2, what)?;
        format_of(t).ok_or(WireError::PinFormat(what))
    }
}

fn parse_hex_strict(t: &[u8]) -> Option<Vec<u8>> {
    if t.len() % 2 != 0 {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    t.chunks_exact(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}

fn code_ok(c: &[u8]) -> bool {
    c.len() == 2 && c.iter().all(u8::is_ascii_alphanumeric)
}

/// Splits a body into its header and code; `None` when it is too short
/// or the code is not two letters or digits (nothing can be answered).
pub fn split_head(body: &[u8], header_len: usize) -> Option<(&[u8], [u8; 2], &[u8])> {
    let code = body.get(header_len..header_len.checked_add(2)?)?;
    if !code_ok(code) {
        return None;
    }
    Some((
        &body[..header_len],
        [code[0], code[1]],
        &body[header_len + 2..],
    ))
}

/// Reads a request (the HSM's side). `Err(None)`: no header and command
/// code could be read, so nothing can be answered (close the
/// connection); `Err(Some(refusal))`: answer with its code.
pub fn decode_request(
    body: &[u8],
    header_len: usize,
) -> Result<(Vec<u8>, Request), Option<Refusal>> {
    let (header, command, fields) = split_head(body, header_len).ok_or(None)?;
    let refuse = |code: ErrorCode, reason: WireError| Refusal {
        header: header.to_vec(),
        command,
        code,
        reason,
    };
    let mut r = Reader { b: fields, at: 0 };
    let req = match &command {
        b"CA" | b"CC" => read_translation(&mut r, true).map(|t| {
            if &command == b"CA" {
                Request::TranslateTpk(t)
            } else {
                Request::TranslateZpk(t)
            }
        }),
        b"G0" => read_dukpt(&mut r),
        b"M6" => read_mac(&mut r, false),
        b"M8" => read_mac(&mut r, true),
        b"A0" => read_generate(&mut r),
        b"A6" => read_import(&mut r),
        b"NC" => r.done("NC").map(|()| Request::Diagnostics),
        _ => {
            // Not a command this emulator knows: as a payShield answers a
            // command it has disabled. (What a real one answers to an
            // unknown code is not in the material at hand.)
            return Err(Some(refuse(
                ErrorCode::COMMAND_DISABLED,
                WireError::UnknownCommand(String::from_utf8_lossy(&command).into_owned()),
            )));
        }
    };
    match req {
        Ok(req) => Ok((header.to_vec(), req)),
        Err(e) => {
            let code = match &e {
                WireError::PinFormat(_) => ErrorCode::INVALID_PIN_FORMAT,
                _ => ErrorCode::INVALID_INPUT,
            };
            Err(Some(refuse(code, e)))
        }
    }
}

fn block_chars(key: &KeyBlockText) -> usize {
    // A PIN block is one cipher block of the source key's algorithm: 8
    // bytes under TDES (format 0), 16 under AES (format 4).
    match key.algorithm() {
        Some(Algorithm::Aes) => 32,
        _ => 16,
    }
}

fn read_block(r: &mut Reader<'_>, chars: usize) -> Result<Vec<u8>, WireError> {
    r.hex(chars, "source PIN block")
}

fn make_block(bytes: &[u8], format: PinFormat) -> Result<EncryptedPinBlock, WireError> {
    EncryptedPinBlock::from_bytes(format, bytes).map_err(|e| field(e.to_string()))
}

fn read_translation(r: &mut Reader<'_>, max_len: bool) -> Result<PinTranslation, WireError> {
    let from = r.key("source key")?;
    let to = r.key("destination key")?;
    if max_len {
        let n = r.digits(2, "maximum PIN length")?;
        if !(4..=12).contains(&n) {
            return Err(field(format!("maximum PIN length {n}")));
        }
    }
    let bytes = read_block(r, block_chars(&from))?;
    let from_format = r.pin_format("source PIN block format code")?;
    let to_format = r.pin_format("destination PIN block format code")?;
    let account = r.account(from_format, to_format)?;
    r.done("the account number")?;
    Ok(PinTranslation {
        block: make_block(&bytes, from_format)?,
        from,
        to,
        to_format,
        account,
    })
}

fn read_dukpt(r: &mut Reader<'_>) -> Result<Request, WireError> {
    let from = r.key("BDK")?;
    let to = r.key("ZPK")?;
    let desc = r.take(3, "KSN descriptor")?;
    if !desc.iter().all(u8::is_ascii_hexdigit) {
        return Err(field("KSN descriptor: not 3H"));
    }
    let ksn = r.hex(20, "KSN")?;
    let ksn = Ksn::new(&ksn).map_err(|e| field(e.to_string()))?;
    let bytes = read_block(r, 16)?;
    let from_format = r.pin_format("source PIN block format code")?;
    let to_format = r.pin_format("destination PIN block format code")?;
    let account = r.account(from_format, to_format)?;
    r.done("the account number")?;
    Ok(Request::TranslateDukpt {
        pin: PinTranslation {
            block: make_block(&bytes, from_format)?,
            from,
            to,
            to_format,
            account,
        },
        ksn,
    })
}

fn read_mac(r: &mut Reader<'_>, verify: bool) -> Result<Request, WireError> {
    let flags = r.take(5, "MAC flags")?;
    if flags[0] != b'0' {
        return Err(field("MAC mode: only 0 (the whole message) is served"));
    }
    if flags[1] != b'0' {
        return Err(field("MAC input format: only 0 (binary) is served"));
    }
    let size = MacSize::from_code(flags[2]).ok_or_else(|| field("MAC size"))?;
    let algorithm =
        mac_algorithm_of(flags[3], flags[4]).ok_or_else(|| field("MAC algorithm or padding"))?;
    let key_type = r.take(3, "key type")?;
    if !key_type.iter().all(u8::is_ascii_hexdigit) {
        return Err(field("key type: not 3H"));
    }
    let key = r.key("MAC key")?;
    let len = r.hex(4, "message length")?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let data = Bytes::copy_from_slice(r.take(len, "message")?);
    if verify {
        let mac = r.hex(2 * size.bytes(), "MAC")?;
        r.done("the MAC")?;
        let mac = MacValue::try_from(mac.as_slice()).map_err(|_| field("MAC length"))?;
        Ok(Request::VerifyMac {
            key,
            algorithm,
            data,
            mac,
        })
    } else {
        r.done("the message")?;
        Ok(Request::GenerateMac {
            key,
            algorithm,
            size,
            data,
        })
    }
}

fn read_generate(r: &mut Reader<'_>) -> Result<Request, WireError> {
    let mode = r.take(1, "mode")?[0];
    if mode != b'0' && mode != b'1' {
        return Err(field("mode: 0 or 1"));
    }
    if r.take(3, "key type")? != b"FFF" {
        return Err(field("key type: only FFF (key block LMK)"));
    }
    if r.take(1, "key scheme (LMK)")? != b"S" {
        return Err(field("key scheme (LMK): only S"));
    }
    let export = if mode == b'1' {
        r.expect(b';', "delimiter")?;
        let tmk = match r.take(1, "ZMK/TMK flag")?[0] {
            b'0' => false,
            b'1' => true,
            _ => return Err(field("ZMK/TMK flag: 0 or 1")),
        };
        let kek = r.key("ZMK/TMK")?;
        let scheme = r.take(1, "key scheme (ZMK)")?[0];
        if scheme != b'S' && scheme != b'X' {
            return Err(field("key scheme (ZMK): S or X"));
        }
        Some(Export { tmk, kek, scheme })
    } else {
        None
    };
    let (key_type, algorithm, label) = read_key_fields(r)?;
    Ok(Request::GenerateKey {
        key_type,
        algorithm,
        export,
        label,
    })
}

fn read_import(r: &mut Reader<'_>) -> Result<Request, WireError> {
    if r.take(3, "key type")? != b"FFF" {
        return Err(field("key type: only FFF (key block LMK)"));
    }
    let zmk = r.key("ZMK")?;
    r.expect(b'X', "key scheme (ZMK)")?;
    let under = r.take(32, "key under the ZMK")?;
    if !under.iter().all(u8::is_ascii_hexdigit) {
        return Err(field("key under the ZMK: not 32 hex digits"));
    }
    let under_zmk = String::from_utf8_lossy(under).into_owned();
    r.expect(b'S', "key scheme (LMK)")?;
    let (key_type, algorithm, label) = read_key_fields(r)?;
    if algorithm != Algorithm::Tdes {
        return Err(field("algorithm: a key under scheme X is T2"));
    }
    Ok(Request::ImportKey {
        key_type,
        zmk,
        under_zmk,
        label,
    })
}

/// [`push_key_fields`]'s fields, to the end of the message.
fn read_key_fields(r: &mut Reader<'_>) -> Result<(KeyType, Algorithm, Option<String>), WireError> {
    r.expect(b'#', "key block delimiter")?;
    let usage = r.take(2, "key usage")?;
    let algorithm = match r.take(2, "algorithm")? {
        b"T2" => Algorithm::Tdes,
        b"A1" => Algorithm::Aes,
        _ => return Err(field("algorithm: T2 or A1")),
    };
    let mode_of_use = r.take(1, "mode of use")?[0];
    r.take(2, "key version number")?;
    let exportability = r.take(1, "exportability")?[0];
    let count = r.digits(2, "number of optional blocks")?;
    if !(1..=2).contains(&count) || r.take(2, "optional block")? != b"10" {
        return Err(field(
            "optional blocks: 10 (the key type), then LB (a label) or nothing",
        ));
    }
    let len = r.hex(2, "optional block length")?[0];
    let data = r.take(usize::from(len).saturating_sub(4), "optional block 10")?;
    let key_type = std::str::from_utf8(data)
        .ok()
        .and_then(KeyType::parse)
        .ok_or_else(|| field("optional block 10: not a key type"))?;
    let label = if count == 2 {
        if r.take(2, "optional block")? != b"LB" {
            return Err(field("the second optional block: only LB (a label)"));
        }
        let len = r.hex(2, "optional block length")?[0];
        let data = r.take(usize::from(len).saturating_sub(4), "optional block LB")?;
        let label = std::str::from_utf8(data)
            .ok()
            .filter(|l| label_ok(l))
            .ok_or_else(|| field("optional block LB: not a key name"))?;
        Some(label.to_owned())
    } else {
        None
    };
    r.done("the optional blocks")?;
    if usage != key_type.usage(algorithm)
        || mode_of_use != key_type.mode()
        || exportability != if key_type.exportable() { b'E' } else { b'N' }
    {
        return Err(field(
            "key usage, mode or exportability is not the key type's",
        ));
    }
    Ok((key_type, algorithm, label))
}

/// An answer as the client reads it: the header, the response code, and
/// the error code or the fields.
pub type Answer<'a> = (&'a [u8], [u8; 2], Result<Response, ErrorCode>);

/// Reads an answer (the client's side).
pub fn decode_response(body: &[u8], header_len: usize) -> Result<Answer<'_>, WireError> {
    let (header, code, rest) = split_head(body, header_len).ok_or(WireError::Short)?;
    let mut r = Reader { b: rest, at: 0 };
    let err = r.take(2, "error code")?;
    if !code_ok(err) {
        return Err(WireError::BadCode);
    }
    if err != b"00" {
        // Some commands send fields after an error (01 of a few
        // verifications); none of ours needs them.
        return Ok((header, code, Err(ErrorCode([err[0], err[1]]))));
    }
    let resp = match &code {
        b"CB" | b"CD" | b"G1" => {
            let pin_len = r.digits(2, "PIN length")? as u8;
            let chars = r.rest().len().saturating_sub(2);
            if chars != 16 && chars != 32 {
                return Err(field(format!("a PIN block of {chars} characters")));
            }
            let bytes = r.hex(chars, "PIN block")?;
            let format = r.pin_format("PIN block format code")?;
            r.done("the PIN block format")?;
            Response::Pin {
                pin_len,
                block: make_block(&bytes, format)?,
            }
        }
        b"M7" => {
            let rest = r.rest();
            let mac = parse_hex_strict(rest).ok_or_else(|| field("MAC: not hex"))?;
            if MacSize::of_len(mac.len()).is_none() {
                return Err(field(format!("a MAC of {} bytes", mac.len())));
            }
            Response::Mac(MacValue::try_from(mac.as_slice()).map_err(|_| field("MAC"))?)
        }
        b"M9" => {
            r.done("the error code")?;
            Response::Verified
        }
        b"A1" | b"A7" => {
            let under_lmk = r.key("key under the LMK")?;
            let exported = match r.peek() {
                Some(b'S') => Some((b'S', r.key("key under the ZMK")?.0)),
                Some(b'X') => {
                    r.take(1, "key scheme")?;
                    let t = r.take(32, "key under the ZMK")?;
                    if !t.iter().all(u8::is_ascii_hexdigit) {
                        return Err(field("key under the ZMK: not hex"));
                    }
                    Some((b'X', String::from_utf8_lossy(t).into_owned()))
                }
                _ => None,
            };
            let kcv = read_kcv(&mut r)?;
            r.done("the KCV")?;
            Response::Key {
                under_lmk,
                exported,
                kcv,
            }
        }
        b"ND" => {
            let check = r.take(16, "LMK check value")?;
            let kcv = Kcv::parse(&String::from_utf8_lossy(&check[..6]))
                .map_err(|e| field(format!("LMK check value: {e}")))?;
            let fw = r.rest();
            if fw.len() > 32 || !fw.iter().all(|b| (0x20..0x7F).contains(b)) {
                return Err(field("firmware number: 0 to 32 printable characters"));
            }
            Response::Diagnostics {
                lmk_kcv: kcv,
                firmware: String::from_utf8_lossy(fw).into_owned(),
            }
        }
        other => {
            return Err(WireError::UnknownCommand(
                String::from_utf8_lossy(other).into_owned(),
            ));
        }
    };
    Ok((header, code, Ok(resp)))
}

fn read_kcv(r: &mut Reader<'_>) -> Result<Kcv, WireError> {
    let t = r.take(6, "KCV")?;
    Kcv::parse(&String::from_utf8_lossy(t)).map_err(|e| field(format!("KCV: {e}")))
}

#[cfg(test)]
mod tests;
