//! The messages store-and-forward delivers, built in the host's spec: the
//! 0420 reversal of a request the host may have acted on, the advice of a
//! stand-in approval, a terminal's own advice, the same rebuilt from the
//! journal after a restart, and the repeat (x21) a resend goes as.

use bytes::Bytes;

use crate::iso8583::{Message, MessageBuilder, Mti, Spec};
use crate::switch::acquirer::MatchKey;

/// The same message marked as a repeat (0420 -> 0421); `None` if it does
/// not parse or can not be packed again.
pub fn as_repeat(body: &Bytes, spec: &'static Spec) -> Option<Bytes> {
    let msg = Message::parse(body.clone(), spec).ok()?;
    let repeat = msg.mti().repeat();
    if repeat == msg.mti() {
        return Some(body.clone());
    }
    let mut b = MessageBuilder::new(spec, repeat);
    b.copy_all(&msg);
    Some(b.to_bytes().ok()?.freeze())
}

/// The 0420 reversal advice of a request the host may have acted on:
/// the fields an answer echoes (`terminal::ECHO_FIELDS`), DE39 = `reason`,
/// and DE90 (original data elements: MTI, STAN, DE7, then two zero-filled
/// institution ids). Written in the host's spec. A request that is itself
/// a reversal keeps its DE90.
pub fn reversal_of(
    request: &Message,
    host_spec: &'static Spec,
    reason: [u8; 2],
) -> Option<(Bytes, MatchKey)> {
    let mti = Mti::REVERSAL_ADVICE;
    let own;
    let de90 = match request.field(90) {
        Some(v) => v,
        None => {
            own = original_data(
                request.mti(),
                request.stan()?,
                request.field(7).unwrap_or(&[]),
            );
            &own[..]
        }
    };
    let mut b = MessageBuilder::new(host_spec, mti);
    b.copy_fields(request, crate::switch::terminal::ECHO_FIELDS);
    b.set(39, &reason).set(90, de90);
    let key = MatchKey::new(mti, &request.terminal_id()?, request.stan()?)?;
    Some((b.to_bytes().ok()?.freeze(), key))
}

/// DE90, original data elements: the original MTI, STAN (6 digits) and
/// DE7 (zeros unless it is the 10 digits `MMDDhhmmss`), then two
/// zero-filled institution ids.
fn original_data(mti: Mti, stan: u32, de7: &[u8]) -> [u8; 42] {
    let mut v = [b'0'; 42];
    v[..4].copy_from_slice(&mti.to_ascii());
    let mut rest = stan;
    for d in v[4..10].iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    if de7.len() == 10 {
        v[10..20].copy_from_slice(de7);
    }
    v
}

/// The advice (0120 for an 0100, 0220 for an 0200) telling the host of a
/// stand-in approval: the request's fields, DE38 and DE39 = 00.
pub fn advice_of(
    request: &Message,
    host_spec: &'static Spec,
    approval_code: &[u8],
) -> Option<(Bytes, MatchKey)> {
    let mti = Mti::new(request.mti().match_class() + 20)?;
    let mut b = MessageBuilder::new(host_spec, mti);
    b.copy_all(request);
    strip_sensitive(&mut b);
    b.set(38, approval_code).set(39, &crate::codes::APPROVED);
    let key = MatchKey::new(mti, &request.terminal_id()?, request.stan()?)?;
    Some((b.to_bytes().ok()?.freeze(), key))
}

/// A message a terminal sent as an advice (0120, 0220, 0420 and their
/// repeats), as the host's spec writes it, for store-and-forward.
pub fn advice_from_terminal(msg: &Message, host_spec: &'static Spec) -> Option<(Bytes, MatchKey)> {
    let mti = Mti::new(msg.mti().match_class())?;
    let mut b = MessageBuilder::new(host_spec, mti);
    b.copy_all(msg);
    strip_sensitive(&mut b);
    let key = MatchKey::new(mti, &msg.terminal_id()?, msg.stan()?)?;
    Some((b.to_bytes().ok()?.freeze(), key))
}

/// Track data, PIN blocks and chip data have no business in a message that
/// waits in a queue; nor has the terminal's MAC (DE64/DE128) in a message
/// that is not the terminal's (the link MACs it under the zone's key when
/// the acquirer wants one).
fn strip_sensitive(b: &mut MessageBuilder<'_>) {
    for n in [35, 36, 45, 52, 55, 64, 128] {
        b.remove(n);
    }
}

/// Rebuilds, from what the journal kept of a request, the message that
/// store-and-forward must deliver after a restart: the 0420 reversal
/// (`advice_mti` `None`) or an advice of that MTI. The journal holds no
/// full card number, so the message carries none: the host matches it by
/// DE90 (reversals), DE11, DE37 and DE41.
pub fn from_journal(
    req: &crate::switch::journal::RequestData,
    reversal_reason: Option<[u8; 2]>,
    advice_mti: Option<u16>,
    host_spec: &'static Spec,
) -> Option<(Bytes, MatchKey)> {
    let mti = match advice_mti {
        Some(m) => Mti::new(m)?,
        None => Mti::REVERSAL_ADVICE,
    };
    let stan = format!("{:06}", req.stan);
    let time = format!("{:010}", req.transmission_time);
    let currency = format!("{:03}", req.currency);
    let de90 = original_data(Mti::new(req.mti)?, req.stan, time.as_bytes());
    let mut b = MessageBuilder::new(host_spec, mti);
    b.set(3, b"000000")
        .set_number(4, req.amount_minor)
        .set(7, time.as_bytes())
        .set(11, stan.as_bytes());
    if !req.rrn.is_empty() {
        b.set(37, req.rrn.as_bytes());
    }
    b.set(41, req.terminal_id.as_bytes());
    if !req.merchant_id.is_empty() {
        b.set(42, req.merchant_id.as_bytes());
    }
    b.set(49, currency.as_bytes());
    if let Some(reason) = &reversal_reason {
        b.set(39, reason).set(90, &de90);
    } else {
        b.set(39, &crate::codes::APPROVED);
    }
    let key = MatchKey::new(mti, req.terminal_id.as_bytes(), req.stan)?;
    Some((b.to_bytes().ok()?.freeze(), key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::specs::iso87ascii;

    #[test]
    fn an_advice_from_a_terminal_loses_track_data_pin_block_and_mac() {
        let spec = iso87ascii();
        let mut b = MessageBuilder::new(spec, Mti::new(220).expect("mti"));
        b.set(2, b"4761739001010010")
            .set(3, b"000000")
            .set_number(4, 100)
            .set_number(11, 7)
            .set(35, b"4761739001010010=2512")
            .set(41, b"TERM0001")
            .set(52, &[1; 8])
            .set(64, &[2; 8]);
        let msg = Message::parse(b.to_bytes().expect("packs").freeze(), spec).expect("parses");
        let (body, _) = advice_from_terminal(&msg, spec).expect("advice");
        let advice = Message::parse(body, spec).expect("parses");
        for n in [35, 52, 64] {
            assert!(!advice.has(n), "DE{n} kept");
        }
        assert!(
            advice.has(2) && advice.has(4),
            "the transaction's fields stay"
        );
    }
}
