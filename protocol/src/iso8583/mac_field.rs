//! Where a message's MAC lives, what it is computed over, and how a
//! message is packed with one. ISO 8583:1987 puts the MAC in the last data
//! element of the last bitmap: DE64 when the message has only the primary
//! bitmap, DE128 when it has a secondary one. The MAC covers every byte of
//! the message before that field's data (MTI, bitmaps with the MAC's bit
//! set, every other field): "the whole message". The cryptography is the
//! caller's (the switch's HSM, a tool's own keys).

use arrayvec::ArrayVec;
use bytes::BytesMut;

use super::bitmap::Bitmap;
use super::builder::MessageBuilder;
use super::error::PackError;
use super::message::Message;
use super::spec::{Length, Spec};

/// The most bytes a MAC field holds.
pub const MAX_MAC_LEN: usize = 16;

/// A MAC as it travels.
pub type MacBytes = ArrayVec<u8, MAX_MAC_LEN>;

/// The MAC field of a message with these other fields: 128 when one of
/// them needs the secondary bitmap, else 64.
pub fn mac_field_for(fields: Bitmap) -> usize {
    let mut others = fields;
    others.clear(64);
    others.clear(128);
    if others.needs_secondary() { 128 } else { 64 }
}

/// Why a received message's MAC could not even be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MacFieldError {
    #[error("the message carries no MAC (DE64 or DE128)")]
    Missing,
    #[error("the MAC is in DE{0}, which is not the message's last field")]
    NotLast(u8),
    #[error("the spec does not define DE{0} as fixed binary of 4 to 16 bytes")]
    BadDefinition(u8),
}

/// The parts of a received message a MAC check needs.
pub struct MacParts<'a> {
    /// The MAC field (64 or 128).
    pub field: usize,
    /// The bytes the MAC covers.
    pub data: &'a [u8],
    /// The MAC it carries.
    pub mac: MacBytes,
}

impl Message {
    /// What this message's MAC covers and the MAC itself.
    pub fn mac_parts(&self) -> Result<MacParts<'_>, MacFieldError> {
        let bits = self.bitmap();
        let field = match (bits.is_set(64), bits.is_set(128)) {
            (_, true) => 128,
            (true, false) => 64,
            (false, false) => return Err(MacFieldError::Missing),
        };
        if bits.fields().any(|n| n > field) || (field == 128 && bits.is_set(64)) {
            return Err(MacFieldError::NotLast(field as u8));
        }
        let v = self
            .value(field)
            .ok_or(MacFieldError::BadDefinition(field as u8))?;
        let frame = self.frame();
        // `wire` is a slice of the frame: its offset is where the MAC's
        // data starts (a fixed field has no length prefix).
        let at = v.wire.as_ptr() as usize - frame.as_ptr() as usize;
        debug_assert!(at + v.wire.len() <= frame.len());
        let mut mac = MacBytes::new();
        let mut logical = ArrayVec::<u8, { 2 * MAX_MAC_LEN }>::new();
        if v.logical_len() > MAX_MAC_LEN {
            return Err(MacFieldError::BadDefinition(field as u8));
        }
        v.write_logical(&mut logical);
        mac.try_extend_from_slice(&logical)
            .map_err(|_| MacFieldError::BadDefinition(field as u8))?;
        Ok(MacParts {
            field,
            data: &frame[..at],
            mac,
        })
    }
}

/// What a MAC over a field list covers: each listed field the message
/// has, as on the wire without its length prefix, in the list's order
/// (the MAC field itself never).
pub fn field_list_input(msg: &Message, fields: &[u16], out: &mut Vec<u8>) {
    for &n in fields {
        let n = usize::from(n);
        if n == 64 || n == 128 {
            continue;
        }
        if let Some(v) = msg.field(n) {
            out.extend_from_slice(v);
        }
    }
}

/// The MAC length a spec's DE64/DE128 holds (fixed binary), if it does.
pub fn mac_len(spec: &Spec, field: usize) -> Option<usize> {
    let def = spec.field(field)?;
    match def.length {
        Length::Fixed(units) => {
            let len = def.logical_len(units as usize);
            (def.kind == super::spec::FieldKind::Binary && (4..=MAX_MAC_LEN).contains(&len))
                .then_some(len)
        }
        Length::Variable { .. } => None,
    }
}

/// Why a message could not be packed with its MAC.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("the spec `{spec}` has no fixed binary DE{field} of 4 to 16 bytes for a MAC")]
    NoMacField { spec: &'static str, field: usize },
    #[error("the MAC could not be made: {0}")]
    Mac(String),
}

const PLACEHOLDER: [u8; MAX_MAC_LEN] = [0; MAX_MAC_LEN];

impl MessageBuilder<'_> {
    /// Appends the message to `out` with a MAC in its MAC field (64 or 128,
    /// any MAC it had replaced): `mac` is given the bytes the MAC covers
    /// and the MAC's length, and returns it. On error `out` is as it was.
    pub fn pack_with_mac(
        &self,
        out: &mut BytesMut,
        mac: impl FnOnce(&[u8], usize) -> Result<MacBytes, String>,
    ) -> Result<(), SealError> {
        let spec = self.spec();
        let field = mac_field_for(self.fields());
        let len = mac_len(spec, field).ok_or(SealError::NoMacField {
            spec: &spec.name,
            field,
        })?;
        let mut except = Bitmap::EMPTY;
        except.set(64);
        except.set(128);
        let start = out.len();
        self.pack_except(out, except, Some((field, &PLACEHOLDER[..len])))?;
        let filled = fill_trailing_mac(spec, field, &mut out[start..], mac);
        if filled.is_err() {
            out.truncate(start);
        }
        filled
    }
}

/// The placeholder a MAC field is packed with before its MAC is known.
pub fn mac_placeholder(spec: &Spec, field: usize) -> Option<&'static [u8]> {
    mac_len(spec, field).map(|len| &PLACEHOLDER[..len])
}

/// Fills in the MAC of a message packed with [`mac_placeholder`] in its
/// MAC field `field`, its last: `mac` is given the bytes the MAC covers
/// and its length. The way to MAC a message written with a
/// `MessageWriter`.
pub fn fill_trailing_mac(
    spec: &'static Spec,
    field: usize,
    message: &mut [u8],
    mac: impl FnOnce(&[u8], usize) -> Result<MacBytes, String>,
) -> Result<(), SealError> {
    let no_field = || SealError::NoMacField {
        spec: &spec.name,
        field,
    };
    let len = mac_len(spec, field).ok_or_else(no_field)?;
    let def = spec.field(field).ok_or_else(no_field)?;
    let units = def.units_for_logical(len);
    let wire = def.wire_len(units);
    let data_end = message.len().checked_sub(wire).ok_or(SealError::Mac(
        "the message is shorter than its MAC field".into(),
    ))?;
    let value = match mac(&message[..data_end], len) {
        Ok(v) if v.len() == len => v,
        Ok(v) => return Err(SealError::Mac(format!("{} bytes, not {len}", v.len()))),
        Err(e) => return Err(SealError::Mac(e)),
    };
    let mut encoded = BytesMut::with_capacity(wire);
    super::encoding::encode_logical(def, &value, units, &mut encoded);
    if encoded.len() != wire {
        return Err(SealError::Mac(format!(
            "encoded in {} bytes, not {wire}",
            encoded.len()
        )));
    }
    message[data_end..].copy_from_slice(&encoded);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::{Mti, specs};

    fn xor_mac(data: &[u8], len: usize) -> Result<MacBytes, String> {
        let mut m = MacBytes::new();
        for i in 0..len {
            m.push(data.iter().skip(i).step_by(len).fold(0u8, |a, b| a ^ b));
        }
        Ok(m)
    }

    #[test]
    fn a_packed_mac_is_found_again_over_the_same_bytes() {
        for spec in [specs::iso87ascii(), specs::iso87binary()] {
            for with_secondary in [false, true] {
                let mut b = MessageBuilder::new(spec, Mti::new(200).expect("mti"));
                b.set(2, b"4111111111111111")
                    .set(3, b"000000")
                    .set(11, b"000001");
                if with_secondary {
                    b.set(102, b"ACCOUNT");
                }
                // A MAC of another party, to be replaced.
                b.set(64, &[9; 8]);
                let mut out = BytesMut::new();
                b.pack_with_mac(&mut out, xor_mac).expect("pack");
                let msg = Message::parse(out.freeze(), spec).expect("parse");
                let parts = msg.mac_parts().expect("parts");
                assert_eq!(parts.field, if with_secondary { 128 } else { 64 });
                assert!(!msg.has(if with_secondary { 64 } else { 128 }));
                assert_eq!(parts.mac, xor_mac(parts.data, 8).expect("mac"));
                assert_eq!(msg.field(102).is_some(), with_secondary);
            }
        }
    }

    #[test]
    fn a_mac_that_is_not_last_or_missing_is_named() {
        let spec = specs::iso87ascii();
        let mut b = MessageBuilder::new(spec, Mti::new(200).expect("mti"));
        b.set(3, b"000000").set(11, b"000001");
        let msg = Message::parse(b.to_bytes().expect("pack").freeze(), spec).expect("parse");
        assert_eq!(msg.mac_parts().err(), Some(MacFieldError::Missing));
        b.set(64, &[1; 8]).set(102, b"X");
        let msg = Message::parse(b.to_bytes().expect("pack").freeze(), spec).expect("parse");
        assert_eq!(msg.mac_parts().err(), Some(MacFieldError::NotLast(64)));
    }
}
