//! Journal records and their compact binary encoding.
//!
//! A record body is a tag byte, then `txn` and `at_ms` (every record has
//! them), then the variant's fields, all little-endian. Strings are a length
//! byte plus bytes. The body carries no length or checksum of its own: the
//! segment frame (see `segment.rs`) wraps it with both.
//!
//! Fields added later go at the end of their record and are optional on
//! decode: a record written before them (a shorter body) reads with the
//! field at its "none" value, so old journals stay readable.
//!
//! Only masked card data is ever written: the record has no field for track
//! data, CVV or PIN blocks, and `masked_pan` is re-masked on encode if a
//! caller hands over unmasked digits by mistake.

use std::fmt;

use arrayvec::ArrayString;

use crate::iso8583::values::MaskedPan;

/// Terminal id (DE41) or merchant id (DE42), at most 16 bytes.
pub type SmallStr = ArrayString<16>;
/// Retrieval reference number (DE37).
pub type Rrn = ArrayString<12>;
/// First 6 + `*` + last 4 digits of the card number.
pub type MaskedPanStr = ArrayString<19>;
/// Approval code (DE38).
pub type ApprovalCode = ArrayString<6>;
/// The terminal's batch number, as text (a configured field, DE60 by
/// default), at most 16 bytes.
pub type BatchText = ArrayString<16>;

/// What settlement needs of a request besides the amount: the processing
/// code (DE3, netted by its first two digits), the merchant category
/// (DE18), the acquiring country (DE19), the POS entry mode (DE22) and the
/// terminal's batch number. Copied out of the parsed frame as numbers and
/// one inline string, never owned text; `None` for a field the request
/// did not carry (and for all of them in records written before they
/// were kept).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SettlementFields {
    /// DE3, its six digits as a number (`000000` purchase, `200000`
    /// refund...).
    pub processing_code: Option<u32>,
    pub mcc: Option<u16>,
    pub country: Option<u16>,
    /// DE22, its three digits as a number.
    pub pos_entry_mode: Option<u16>,
    /// Trimmed, printable ASCII only, cut to 16 bytes; an empty field is
    /// `None`.
    pub batch: Option<BatchText>,
}

/// What the journal keeps of a request: enough for recovery to reverse or
/// advise it (0420/0220) after a restart, and never the card number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestData {
    pub mti: u16,
    pub stan: u32,
    pub terminal_id: SmallStr,
    pub merchant_id: SmallStr,
    pub rrn: Rrn,
    pub masked_pan: MaskedPanStr,
    /// Keyed hash of the full PAN, so one card can be found without
    /// storing its number.
    pub card_hash: [u8; 16],
    pub amount_minor: u64,
    pub currency: u16,
    /// DE7 `MMDDhhmmss` as a number.
    pub transmission_time: u64,
    /// Acquirer index the router chose.
    pub route: u16,
    pub settlement: SettlementFields,
}

/// One event in the life of a transaction. `txn` is the switch's own id for
/// the transaction; `at_ms` is Unix time in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A terminal request was accepted (before it is forwarded anywhere).
    Request {
        txn: u64,
        at_ms: u64,
        request: RequestData,
        fraud_points: u16,
        fraud_reasons: u16,
        /// The business date it was accepted in, as days since the
        /// epoch (`settlement::BusinessDate`); 0 in records written before
        /// business dates.
        business_date: u32,
    },
    /// The request was sent upstream; from here on it may need a reversal.
    Forwarded {
        txn: u64,
        at_ms: u64,
        acquirer: u16,
    },
    /// Final outcome: the terminal got this answer.
    Response {
        txn: u64,
        at_ms: u64,
        response_code: [u8; 2],
        approval_code: ApprovalCode,
        stand_in: bool,
        /// The host's DE15 (settlement date, MMDD) as a number; 0 when the
        /// answer had none (or came from the switch itself).
        settlement_date: u16,
    },
    /// Final outcome: the terminal got 91; a reversal follows.
    Timeout {
        txn: u64,
        at_ms: u64,
    },
    ReversalQueued {
        txn: u64,
        at_ms: u64,
        acquirer: u16,
        reason: [u8; 2],
    },
    ReversalSent {
        txn: u64,
        at_ms: u64,
        attempt: u32,
    },
    ReversalAcked {
        txn: u64,
        at_ms: u64,
        response_code: [u8; 2],
    },
    ReversalExpired {
        txn: u64,
        at_ms: u64,
    },
    AdviceQueued {
        txn: u64,
        at_ms: u64,
        acquirer: u16,
        mti: u16,
    },
    AdviceSent {
        txn: u64,
        at_ms: u64,
        attempt: u32,
    },
    AdviceAcked {
        txn: u64,
        at_ms: u64,
        response_code: [u8; 2],
    },
    AdviceExpired {
        txn: u64,
        at_ms: u64,
    },
    /// The business date changed to `business_date` (days since the
    /// epoch). Belongs to no transaction: written with `txn` 0.
    Cutover {
        at_ms: u64,
        business_date: u32,
        reason: CutoverReason,
    },
}

/// What started a cutover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutoverReason {
    /// The configured `[settlement] cutover_time`.
    Scheduled,
    /// At start, the date the journal had was behind the clock (the
    /// switch was stopped over a cutover time).
    Startup,
    /// `switchyard settle cutover` (`POST /api/actions/cutover`).
    Operator,
    /// An acquirer's 0800 with DE70 201 (index into `[[acquirers]]`).
    Host { acquirer: u16 },
}

impl CutoverReason {
    fn encode(self) -> (u8, u16) {
        match self {
            CutoverReason::Scheduled => (1, u16::MAX),
            CutoverReason::Startup => (2, u16::MAX),
            CutoverReason::Operator => (3, u16::MAX),
            CutoverReason::Host { acquirer } => (4, acquirer),
        }
    }

    fn decode(tag: u8, acquirer: u16) -> Result<CutoverReason, DecodeError> {
        Ok(match tag {
            1 => CutoverReason::Scheduled,
            2 => CutoverReason::Startup,
            3 => CutoverReason::Operator,
            4 => CutoverReason::Host { acquirer },
            other => return Err(DecodeError::BadReason(other)),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            CutoverReason::Scheduled => "scheduled",
            CutoverReason::Startup => "startup",
            CutoverReason::Operator => "operator",
            CutoverReason::Host { .. } => "host",
        }
    }
}

/// The kinds of record, in tag order (the tag byte is `kind as u8 + 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    Request,
    Forwarded,
    Response,
    Timeout,
    ReversalQueued,
    ReversalSent,
    ReversalAcked,
    ReversalExpired,
    AdviceQueued,
    AdviceSent,
    AdviceAcked,
    AdviceExpired,
    Cutover,
}

impl RecordKind {
    pub const ALL: [RecordKind; 13] = [
        RecordKind::Request,
        RecordKind::Forwarded,
        RecordKind::Response,
        RecordKind::Timeout,
        RecordKind::ReversalQueued,
        RecordKind::ReversalSent,
        RecordKind::ReversalAcked,
        RecordKind::ReversalExpired,
        RecordKind::AdviceQueued,
        RecordKind::AdviceSent,
        RecordKind::AdviceAcked,
        RecordKind::AdviceExpired,
        RecordKind::Cutover,
    ];

    fn tag(self) -> u8 {
        self as u8 + 1
    }

    fn from_tag(tag: u8) -> Option<RecordKind> {
        RecordKind::ALL
            .get(usize::from(tag).checked_sub(1)?)
            .copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Request => "request",
            RecordKind::Forwarded => "forwarded",
            RecordKind::Response => "response",
            RecordKind::Timeout => "timeout",
            RecordKind::ReversalQueued => "reversal-queued",
            RecordKind::ReversalSent => "reversal-sent",
            RecordKind::ReversalAcked => "reversal-acked",
            RecordKind::ReversalExpired => "reversal-expired",
            RecordKind::AdviceQueued => "advice-queued",
            RecordKind::AdviceSent => "advice-sent",
            RecordKind::AdviceAcked => "advice-acked",
            RecordKind::AdviceExpired => "advice-expired",
            RecordKind::Cutover => "cutover",
        }
    }
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Request { .. } => RecordKind::Request,
            Record::Forwarded { .. } => RecordKind::Forwarded,
            Record::Response { .. } => RecordKind::Response,
            Record::Timeout { .. } => RecordKind::Timeout,
            Record::ReversalQueued { .. } => RecordKind::ReversalQueued,
            Record::ReversalSent { .. } => RecordKind::ReversalSent,
            Record::ReversalAcked { .. } => RecordKind::ReversalAcked,
            Record::ReversalExpired { .. } => RecordKind::ReversalExpired,
            Record::AdviceQueued { .. } => RecordKind::AdviceQueued,
            Record::AdviceSent { .. } => RecordKind::AdviceSent,
            Record::AdviceAcked { .. } => RecordKind::AdviceAcked,
            Record::AdviceExpired { .. } => RecordKind::AdviceExpired,
            Record::Cutover { .. } => RecordKind::Cutover,
        }
    }

    pub fn txn(&self) -> u64 {
        self.header().0
    }

    pub fn at_ms(&self) -> u64 {
        self.header().1
    }

    fn header(&self) -> (u64, u64) {
        match *self {
            Record::Request { txn, at_ms, .. }
            | Record::Forwarded { txn, at_ms, .. }
            | Record::Response { txn, at_ms, .. }
            | Record::Timeout { txn, at_ms }
            | Record::ReversalQueued { txn, at_ms, .. }
            | Record::ReversalSent { txn, at_ms, .. }
            | Record::ReversalAcked { txn, at_ms, .. }
            | Record::ReversalExpired { txn, at_ms }
            | Record::AdviceQueued { txn, at_ms, .. }
            | Record::AdviceSent { txn, at_ms, .. }
            | Record::AdviceAcked { txn, at_ms, .. }
            | Record::AdviceExpired { txn, at_ms } => (txn, at_ms),
            Record::Cutover { at_ms, .. } => (0, at_ms),
        }
    }

    /// Appends the encoded body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (txn, at_ms) = self.header();
        out.push(self.kind().tag());
        out.extend_from_slice(&txn.to_le_bytes());
        out.extend_from_slice(&at_ms.to_le_bytes());
        match self {
            Record::Request {
                request: r,
                fraud_points,
                fraud_reasons,
                business_date,
                ..
            } => {
                out.extend_from_slice(&r.mti.to_le_bytes());
                out.extend_from_slice(&r.stan.to_le_bytes());
                put_str(out, &r.terminal_id);
                put_str(out, &r.merchant_id);
                put_str(out, &r.rrn);
                put_str(out, &safe_masked_pan(&r.masked_pan));
                out.extend_from_slice(&r.card_hash);
                out.extend_from_slice(&r.amount_minor.to_le_bytes());
                out.extend_from_slice(&r.currency.to_le_bytes());
                out.extend_from_slice(&r.transmission_time.to_le_bytes());
                out.extend_from_slice(&r.route.to_le_bytes());
                out.extend_from_slice(&fraud_points.to_le_bytes());
                out.extend_from_slice(&fraud_reasons.to_le_bytes());
                out.extend_from_slice(&business_date.to_le_bytes());
                put_settlement(out, &r.settlement);
            }
            Record::Forwarded { acquirer, .. } => out.extend_from_slice(&acquirer.to_le_bytes()),
            Record::Response {
                response_code,
                approval_code,
                stand_in,
                settlement_date,
                ..
            } => {
                out.extend_from_slice(response_code);
                put_str(out, approval_code);
                out.push(u8::from(*stand_in));
                out.extend_from_slice(&settlement_date.to_le_bytes());
            }
            Record::Cutover {
                business_date,
                reason,
                ..
            } => {
                out.extend_from_slice(&business_date.to_le_bytes());
                let (tag, acquirer) = reason.encode();
                out.push(tag);
                out.extend_from_slice(&acquirer.to_le_bytes());
            }
            Record::ReversalQueued {
                acquirer, reason, ..
            } => {
                out.extend_from_slice(&acquirer.to_le_bytes());
                out.extend_from_slice(reason);
            }
            Record::AdviceQueued { acquirer, mti, .. } => {
                out.extend_from_slice(&acquirer.to_le_bytes());
                out.extend_from_slice(&mti.to_le_bytes());
            }
            Record::ReversalSent { attempt, .. } | Record::AdviceSent { attempt, .. } => {
                out.extend_from_slice(&attempt.to_le_bytes())
            }
            Record::ReversalAcked { response_code, .. }
            | Record::AdviceAcked { response_code, .. } => out.extend_from_slice(response_code),
            Record::Timeout { .. }
            | Record::ReversalExpired { .. }
            | Record::AdviceExpired { .. } => {}
        }
    }

    /// Decodes one body. The whole slice must be consumed: trailing bytes
    /// mean the record is not what its tag says.
    pub fn decode(body: &[u8]) -> Result<Record, DecodeError> {
        let mut c = Cursor { buf: body, pos: 0 };
        let tag = c.u8()?;
        let kind = RecordKind::from_tag(tag).ok_or(DecodeError::UnknownTag(tag))?;
        let txn = c.u64()?;
        let at_ms = c.u64()?;
        let record = match kind {
            // Fields are read in the order they are written: a struct
            // expression evaluates its fields in source order.
            RecordKind::Request => {
                let mut request = RequestData {
                    mti: c.u16()?,
                    stan: c.u32()?,
                    terminal_id: c.str()?,
                    merchant_id: c.str()?,
                    rrn: c.str()?,
                    masked_pan: c.str()?,
                    card_hash: c.array()?,
                    amount_minor: c.u64()?,
                    currency: c.u16()?,
                    transmission_time: c.u64()?,
                    route: c.u16()?,
                    settlement: SettlementFields::default(),
                };
                let fraud_points = c.u16()?;
                let fraud_reasons = c.u16()?;
                let business_date = c.optional_u32()?;
                // Written after the business date, all or none: a body
                // that ends at the business date is the older format.
                if !c.at_end() {
                    request.settlement = c.settlement()?;
                }
                Record::Request {
                    txn,
                    at_ms,
                    request,
                    fraud_points,
                    fraud_reasons,
                    business_date,
                }
            }
            RecordKind::Forwarded => Record::Forwarded {
                txn,
                at_ms,
                acquirer: c.u16()?,
            },
            RecordKind::Response => Record::Response {
                txn,
                at_ms,
                response_code: c.array()?,
                approval_code: c.str()?,
                stand_in: match c.u8()? {
                    0 => false,
                    1 => true,
                    other => return Err(DecodeError::BadBool(other)),
                },
                settlement_date: c.optional_u16()?,
            },
            RecordKind::Timeout => Record::Timeout { txn, at_ms },
            RecordKind::ReversalQueued => Record::ReversalQueued {
                txn,
                at_ms,
                acquirer: c.u16()?,
                reason: c.array()?,
            },
            RecordKind::ReversalSent => Record::ReversalSent {
                txn,
                at_ms,
                attempt: c.u32()?,
            },
            RecordKind::ReversalAcked => Record::ReversalAcked {
                txn,
                at_ms,
                response_code: c.array()?,
            },
            RecordKind::ReversalExpired => Record::ReversalExpired { txn, at_ms },
            RecordKind::AdviceQueued => Record::AdviceQueued {
                txn,
                at_ms,
                acquirer: c.u16()?,
                mti: c.u16()?,
            },
            RecordKind::AdviceSent => Record::AdviceSent {
                txn,
                at_ms,
                attempt: c.u32()?,
            },
            RecordKind::AdviceAcked => Record::AdviceAcked {
                txn,
                at_ms,
                response_code: c.array()?,
            },
            RecordKind::AdviceExpired => Record::AdviceExpired { txn, at_ms },
            RecordKind::Cutover => Record::Cutover {
                at_ms,
                business_date: c.u32()?,
                reason: {
                    let tag = c.u8()?;
                    CutoverReason::decode(tag, c.u16()?)?
                },
            },
        };
        if c.pos != body.len() {
            return Err(DecodeError::TrailingBytes(body.len() - c.pos));
        }
        Ok(record)
    }
}

/// Why a checksummed body still did not decode (a newer format, or a bug).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown record tag {0}")]
    UnknownTag(u8),
    #[error("record ends early")]
    Short,
    #[error("string field of {0} bytes does not fit")]
    StringTooLong(usize),
    #[error("string field is not UTF-8")]
    NotUtf8,
    #[error("boolean field holds {0}")]
    BadBool(u8),
    #[error("cutover reason {0} unknown")]
    BadReason(u8),
    #[error("{0} bytes after the record")]
    TrailingBytes(usize),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Every string type here holds at most 19 bytes, so the length fits in
    // one byte; `min` only guards against a future wider type.
    let bytes = &s.as_bytes()[..s.len().min(usize::from(u8::MAX))];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

/// Absent numbers are written as the type's maximum (no DE3 is
/// 4294967295, no DE18/19/22 is 65535), an absent batch as an empty
/// string.
const NO_U32: u32 = u32::MAX;
const NO_U16: u16 = u16::MAX;

fn put_settlement(out: &mut Vec<u8>, f: &SettlementFields) {
    out.extend_from_slice(&f.processing_code.unwrap_or(NO_U32).to_le_bytes());
    for v in [f.mcc, f.country, f.pos_entry_mode] {
        out.extend_from_slice(&v.unwrap_or(NO_U16).to_le_bytes());
    }
    put_str(out, f.batch.as_deref().unwrap_or(""));
}

/// A card number is written only masked. Callers pass an already masked
/// value; if one arrives without a `*` (unmasked digits by mistake) it is
/// masked here rather than reaching the disk.
fn safe_masked_pan(pan: &MaskedPanStr) -> MaskedPanStr {
    if pan.is_empty() || pan.contains('*') {
        return *pan;
    }
    let digits: arrayvec::ArrayVec<u8, 19> = pan.bytes().filter(u8::is_ascii_digit).collect();
    let masked = MaskedPan::of(&digits);
    // MaskedPan is never longer than its input, which fit in 19 bytes.
    MaskedPanStr::from(masked.as_str()).unwrap_or_default()
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Short)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Short)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }

    /// A field added at the end of a record later: absent (0) when the
    /// body ends before it.
    fn optional_u32(&mut self) -> Result<u32, DecodeError> {
        if self.pos == self.buf.len() {
            return Ok(0);
        }
        self.u32()
    }

    fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn settlement(&mut self) -> Result<SettlementFields, DecodeError> {
        let number = |v: u32| (v != NO_U32).then_some(v);
        let small = |v: u16| (v != NO_U16).then_some(v);
        Ok(SettlementFields {
            processing_code: number(self.u32()?),
            mcc: small(self.u16()?),
            country: small(self.u16()?),
            pos_entry_mode: small(self.u16()?),
            batch: Some(self.str::<16>()?).filter(|b| !b.is_empty()),
        })
    }

    fn optional_u16(&mut self) -> Result<u16, DecodeError> {
        if self.pos == self.buf.len() {
            return Ok(0);
        }
        self.u16()
    }

    fn str<const N: usize>(&mut self) -> Result<ArrayString<N>, DecodeError> {
        let len = usize::from(self.u8()?);
        if len > N {
            return Err(DecodeError::StringTooLong(len));
        }
        let s = std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::NotUtf8)?;
        ArrayString::from(s).map_err(|_| DecodeError::StringTooLong(len))
    }
}

/// One line for operators: `kind txn=.. time fields`.
/// Acquirer names by index, for operator views: the journal stores
/// indices (into the config's `[[acquirers]]`), not names.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub acquirers: Vec<String>,
}

impl Names {
    fn acquirer(&self, f: &mut fmt::Formatter<'_>, i: u16) -> fmt::Result {
        match self.acquirers.get(i as usize) {
            Some(name) => f.write_str(name),
            None => write!(f, "acquirer #{i}"),
        }
    }
}

/// A record as `journal tail|show` print it: acquirers and routes by
/// name, fraud rules by name.
pub struct Named<'a> {
    pub record: &'a Record,
    pub names: &'a Names,
}

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.record.write(f, Some(self.names))
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, None)
    }
}

impl Record {
    /// This record with acquirer and route names, for operators.
    pub fn named<'a>(&'a self, names: &'a Names) -> Named<'a> {
        Named {
            record: self,
            names,
        }
    }

    /// The one-line form; with `names`, indices and bit sets in words.
    fn write(&self, f: &mut fmt::Formatter<'_>, names: Option<&Names>) -> fmt::Result {
        let acquirer = |f: &mut fmt::Formatter<'_>, i: u16| match names {
            Some(n) => n.acquirer(f, i),
            None => write!(f, "{i}"),
        };
        let at = self.at_ms();
        write!(
            f,
            "{:<16} txn={} at={}.{:03}Z",
            self.kind().name(),
            self.txn(),
            crate::clock::rfc3339(at / 1000).trim_end_matches('Z'),
            at % 1000
        )?;
        match self {
            Record::Request {
                request: r,
                fraud_points,
                fraud_reasons,
                business_date,
                ..
            } => {
                write!(
                    f,
                    " mti={:04} stan={:06} tid={} mid={} rrn={} pan={} amount={} cur={:03} \
                     de7={:010} bdate={} route=",
                    r.mti,
                    r.stan,
                    r.terminal_id,
                    r.merchant_id,
                    r.rrn,
                    safe_masked_pan(&r.masked_pan),
                    r.amount_minor,
                    r.currency,
                    r.transmission_time,
                    crate::switch::settlement::BusinessDate(*business_date),
                )?;
                match names {
                    None => write!(f, "{} fraud={fraud_points}/{fraud_reasons:#06x}", r.route),
                    Some(_) => {
                        // u16::MAX: no route matched (answered 92).
                        if r.route == u16::MAX {
                            f.write_str("none")?;
                        } else {
                            acquirer(f, r.route)?;
                        }
                        write!(f, " fraud={fraud_points}")?;
                        let mut sep = " (";
                        for rule in crate::switch::fraud::RuleId::ALL {
                            if fraud_reasons & (1 << rule as u8) != 0 {
                                write!(f, "{sep}{}", rule.name())?;
                                sep = ", ";
                            }
                        }
                        if sep == ", " {
                            f.write_str(")")?;
                        }
                        Ok(())
                    }
                }?;
                write_settlement(f, &r.settlement)
            }
            Record::Forwarded { acquirer: a, .. } => {
                f.write_str(" acquirer=")?;
                acquirer(f, *a)
            }
            Record::Response {
                response_code,
                approval_code,
                stand_in,
                settlement_date,
                ..
            } => {
                write!(
                    f,
                    " rc={} approval={approval_code}{}",
                    code(response_code),
                    if *stand_in { " stand-in" } else { "" }
                )?;
                if *settlement_date != 0 {
                    write!(f, " de15={settlement_date:04}")?;
                }
                Ok(())
            }
            Record::Cutover {
                business_date,
                reason,
                ..
            } => {
                write!(
                    f,
                    " bdate={} reason={}",
                    crate::switch::settlement::BusinessDate(*business_date),
                    reason.name()
                )?;
                if let CutoverReason::Host { acquirer: a } = reason {
                    f.write_str(" acquirer=")?;
                    acquirer(f, *a)?;
                }
                Ok(())
            }
            Record::ReversalQueued {
                acquirer: a,
                reason,
                ..
            } => {
                f.write_str(" acquirer=")?;
                acquirer(f, *a)?;
                write!(f, " reason={}", code(reason))
            }
            Record::AdviceQueued {
                acquirer: a, mti, ..
            } => {
                f.write_str(" acquirer=")?;
                acquirer(f, *a)?;
                write!(f, " mti={mti:04}")
            }
            Record::ReversalSent { attempt, .. } | Record::AdviceSent { attempt, .. } => {
                write!(f, " attempt={attempt}")
            }
            Record::ReversalAcked { response_code, .. }
            | Record::AdviceAcked { response_code, .. } => {
                write!(f, " rc={}", code(response_code))
            }
            Record::Timeout { .. }
            | Record::ReversalExpired { .. }
            | Record::AdviceExpired { .. } => Ok(()),
        }
    }
}

/// The settlement fields a request carried, each only when present:
/// ` pc=000000 mcc=5411 country=840 entry=051 batch=000123`.
fn write_settlement(f: &mut fmt::Formatter<'_>, s: &SettlementFields) -> fmt::Result {
    if let Some(pc) = s.processing_code {
        write!(f, " pc={pc:06}")?;
    }
    if let Some(mcc) = s.mcc {
        write!(f, " mcc={mcc:04}")?;
    }
    if let Some(c) = s.country {
        write!(f, " country={c:03}")?;
    }
    if let Some(e) = s.pos_entry_mode {
        write!(f, " entry={e:03}")?;
    }
    if let Some(b) = &s.batch {
        write!(f, " batch={b}")?;
    }
    Ok(())
}

/// A two-character code for display; bytes that are not printable ASCII
/// are shown as `?` so a damaged record cannot garble the terminal.
fn code(c: &[u8; 2]) -> String {
    c.iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}
