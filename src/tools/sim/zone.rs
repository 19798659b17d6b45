//! The host's side of the zone keys it shares with the switch: the MAC of
//! every transaction request checked (63 when missing or wrong) and every
//! transaction answer MACed, and the PIN in DE52 decrypted under the zone
//! PIN key (81 when the block is not valid under it; 55 when it is not the
//! PIN the simulator was told to expect). The keys are held in clear, as a
//! host's HSM would hold them: the simulator is the other party, not the
//! switch, so it uses the primitives directly.

use bytes::{Bytes, BytesMut};

use crate::frame::LengthHeader;
use crate::iso8583::mac_field::{field_list_input, fill_trailing_mac};
use crate::iso8583::{Message, MessageBuilder};
use crate::security::SecretKey;
use crate::security::hsm::MacAlgorithm;
use crate::security::hsm::soft::{full_mac_with, verify_mac_with};
use crate::security::mac::MacKey;
use crate::security::pinblock::{self, EncryptedPinBlock, PinFormat};

/// Incorrect PIN: the block is valid but not the PIN expected.
pub const INCORRECT_PIN: [u8; 2] = *b"55";

/// The zone keys, and the PIN every card is taken to have.
pub struct ZoneKeys {
    /// The ZAK, its schedule made once.
    pub mac: Option<(MacAlgorithm, MacKey)>,
    /// The fields the MACs cover, in this order; empty: the whole message
    /// (as the acquirer's `mac_fields`).
    pub mac_fields: Vec<u16>,
    pub pin_key: Option<SecretKey>,
    pub expected_pin: Option<String>,
}

/// What the checks of one request found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub mac_refused: bool,
    pub pin_verified: bool,
    pub pin_refused: bool,
}

impl ZoneKeys {
    /// The code a transaction request gets from the zone's checks when
    /// they fail; `decision` says whether it carries a PIN to check
    /// (0100/0200).
    pub fn check(&self, msg: &Message, decision: bool) -> (Option<[u8; 2]>, Checked) {
        let mut seen = Checked::default();
        if let Some((algorithm, key)) = &self.mac {
            let ok = msg.mac_parts().is_ok_and(|p| {
                let listed;
                let data = if self.mac_fields.is_empty() {
                    p.data
                } else {
                    let mut d = Vec::with_capacity(128);
                    field_list_input(msg, &self.mac_fields, &mut d);
                    listed = d;
                    &listed[..]
                };
                verify_mac_with(key, *algorithm, data, &p.mac).is_ok()
            });
            if !ok {
                seen.mac_refused = true;
                return (Some(crate::codes::SECURITY_VIOLATION), seen);
            }
        }
        if let (true, Some(key), Some(de52)) = (decision, &self.pin_key, msg.value(52)) {
            let mut raw = arrayvec::ArrayVec::<u8, 32>::new();
            if de52.logical_len() <= raw.capacity() {
                de52.write_logical(&mut raw);
            }
            let format = if raw.len() == 16 {
                PinFormat::Iso4
            } else {
                PinFormat::Iso0
            };
            let pan = msg.pan();
            let pan = pan
                .as_ref()
                .and_then(|p| std::str::from_utf8(p.digits()).ok())
                .unwrap_or("");
            let pin = EncryptedPinBlock::from_bytes(format, &raw)
                .ok()
                .and_then(|b| pinblock::decrypt(key, &b, pan).ok());
            match pin {
                None => {
                    seen.pin_refused = true;
                    return (Some(crate::codes::BAD_PIN_BLOCK), seen);
                }
                Some(pin) => {
                    if let Some(want) = &self.expected_pin
                        && !pin.matches(want)
                    {
                        seen.pin_refused = true;
                        return (Some(INCORRECT_PIN), seen);
                    }
                    seen.pin_verified = true;
                }
            }
        }
        (None, seen)
    }

    /// MACs the answer framed from `at` in `out` (a transaction answer),
    /// when the zone has a MAC key. On error the answer is removed.
    pub fn mac_framed(
        &self,
        out: &mut BytesMut,
        at: usize,
        framing: LengthHeader,
        spec: &'static crate::iso8583::Spec,
    ) -> Result<(), String> {
        let Some((algorithm, key)) = &self.mac else {
            return Ok(());
        };
        let result = (|| {
            let body = Bytes::copy_from_slice(&out[at + framing.width()..]);
            let answer = Message::parse(body, spec).map_err(|e| e.to_string())?;
            let mut b = MessageBuilder::new(spec, answer.mti());
            b.copy_all(&answer);
            out.truncate(at);
            let start = framing.begin(out);
            let mac = |data: &[u8], len: usize| {
                full_mac_with(key, *algorithm, data)
                    .map(|m| m.into_iter().take(len).collect())
                    .map_err(|e| e.to_string())
            };
            if self.mac_fields.is_empty() {
                b.pack_with_mac(out, mac).map_err(|e| e.to_string())?;
            } else {
                // The listed fields' bytes are known once packed: with a
                // placeholder first, then the MAC filled in.
                let body_at = out.len();
                b.pack_with_mac(out, |_, len| Ok(std::iter::repeat_n(0, len).collect()))
                    .map_err(|e| e.to_string())?;
                let packed = Bytes::copy_from_slice(&out[body_at..]);
                let msg = Message::parse(packed, spec).map_err(|e| e.to_string())?;
                let field = msg.mac_parts().map_err(|e| e.to_string())?.field;
                let mut data = Vec::with_capacity(128);
                field_list_input(&msg, &self.mac_fields, &mut data);
                fill_trailing_mac(spec, field, &mut out[body_at..], |_, len| mac(&data, len))
                    .map_err(|e| e.to_string())?;
            }
            framing.finish(out, start).map_err(|e| e.to_string())
        })();
        if result.is_err() {
            out.truncate(at);
        }
        result
    }
}
