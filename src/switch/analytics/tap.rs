//! What the terminal core hands the analytics thread: one fixed-size
//! [`Event`] per answered request, and the [`Tap`] that gathers it.
//!
//! The fields are read from the request while it is parsed anyway (a few
//! offset lookups into the frame, no allocation); a forwarded request's
//! are kept per pending token until its reply. No card number leaves the
//! core: only the first six and last four digits and the length.

use std::time::Instant;

use crate::iso8583::Message;
use crate::switch::fraud::{Decision, Score};

/// No acquirer: answered by the switch itself.
pub const NO_ACQUIRER: u16 = u16::MAX;
/// Not scored (not an authorization, or refused before scoring).
pub const NOT_SCORED: u8 = u8::MAX;
/// Pending slots the tap keeps at most per connection: beyond it a
/// forwarded request's event carries only what its reply knows.
const MAX_SLOTS: usize = 4096;

/// One answered request. `Copy`, 96 bytes: the queue's slots hold it
/// inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub unix_ms: u64,
    pub amount: u64,
    /// The switch's own time for the request, from its arrival to its
    /// answer being framed, minus the acquirer's round trip.
    pub latency_us: u32,
    /// From the forward leaving to the reply; 0 when not forwarded.
    pub rtt_us: u32,
    pub stan: u32,
    /// Request MTI (0200...).
    pub mti: u16,
    pub acquirer: u16,
    /// DE18, `u16::MAX` when absent.
    pub mcc: u16,
    /// DE19 (ISO 3166 numeric), 0 when absent.
    pub country: u16,
    /// DE49 (ISO 4217 numeric), 0 when absent.
    pub currency: u16,
    pub points: u16,
    /// Fraud rules that fired (`fraud::Reasons` bits).
    pub reasons: u16,
    pub code: [u8; 2],
    /// DE41 and DE42, space padded.
    pub terminal: [u8; 8],
    pub merchant: [u8; 15],
    /// DE37, space padded.
    pub rrn: [u8; 12],
    /// The first six digits of the PAN (the BIN), zeros when absent.
    pub bin: [u8; 6],
    pub last4: [u8; 4],
    pub pan_len: u8,
    /// 0 allow, 1 review, 2 decline, [`NOT_SCORED`].
    pub decision: u8,
    pub stand_in: bool,
}

impl Default for Event {
    fn default() -> Event {
        Event {
            unix_ms: 0,
            amount: 0,
            latency_us: 0,
            rtt_us: 0,
            stan: 0,
            mti: 0,
            acquirer: NO_ACQUIRER,
            mcc: u16::MAX,
            country: 0,
            currency: 0,
            points: 0,
            reasons: 0,
            code: *b"  ",
            terminal: [b' '; 8],
            merchant: [b' '; 15],
            rrn: [b' '; 12],
            bin: [0; 6],
            last4: [0; 4],
            pan_len: 0,
            decision: NOT_SCORED,
            stand_in: false,
        }
    }
}

fn copy_padded<const N: usize>(to: &mut [u8; N], from: &[u8]) {
    let n = from.len().min(N);
    to[..n].copy_from_slice(&from[..n]);
    to[n..].fill(b' ');
}

impl Event {
    /// The request's fields, read from its parsed view.
    pub fn of_request(msg: &Message) -> Event {
        let mut e = Event {
            mti: msg.mti().value(),
            ..Event::default()
        };
        if let Some(t) = msg.field(41) {
            copy_padded(&mut e.terminal, t);
        }
        if let Some(m) = msg.field(42) {
            copy_padded(&mut e.merchant, m);
        }
        if let Some(r) = msg.field(37) {
            copy_padded(&mut e.rrn, r);
        }
        if let Some(pan) = msg.pan() {
            let d = pan.digits();
            if d.len() >= 10 {
                e.bin.copy_from_slice(&d[..6]);
                e.last4.copy_from_slice(&d[d.len() - 4..]);
                e.pan_len = d.len() as u8;
            }
        }
        e.amount = msg.amount_minor().unwrap_or(0);
        e.stan = msg.stan().unwrap_or(0);
        e.mcc = msg.mcc().unwrap_or(u16::MAX);
        e.country = msg.acquiring_country().unwrap_or(0);
        e.currency = msg.currency().unwrap_or(0);
        e
    }

    pub fn has_pan(&self) -> bool {
        self.pan_len > 0
    }

    /// `411111******1111`: first six, last four.
    pub fn masked_pan(&self) -> String {
        if !self.has_pan() {
            return String::new();
        }
        let mut s = String::with_capacity(self.pan_len as usize);
        s.extend(self.bin.iter().map(|&c| c as char));
        for _ in 0..(self.pan_len as usize).saturating_sub(10) {
            s.push('*');
        }
        s.extend(self.last4.iter().map(|&c| c as char));
        s
    }
}

/// A trimmed, printable view of a padded field.
pub fn text(b: &[u8]) -> String {
    let t = crate::iso8583::values::trim_padding(b);
    t.iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '?'
            }
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Slot {
    txn: u64,
    event: Event,
    forwarded_at: Option<Instant>,
}

/// The event of the request being handled, and those of the forwarded
/// requests of one connection, by pending token.
pub struct Tap {
    enabled: bool,
    current: Option<Event>,
    slots: Vec<Option<Slot>>,
}

impl Tap {
    pub fn new(enabled: bool) -> Tap {
        Tap {
            enabled,
            current: None,
            slots: Vec::new(),
        }
    }

    /// A request arrived and parsed.
    #[inline]
    pub fn request(&mut self, msg: &Message) {
        if self.enabled {
            self.current = Some(Event::of_request(msg));
        }
    }

    /// It was scored.
    #[inline]
    pub fn scored(&mut self, score: &Score, decision: Decision) {
        if let Some(e) = &mut self.current {
            e.points = score.points;
            e.reasons = score.reasons.bits();
            e.decision = match decision {
                Decision::Allow => 0,
                Decision::Review => 1,
                Decision::Decline => 2,
            };
        }
    }

    /// The request handled last became pending under `token` (transaction
    /// `txn`, for `acquirer`): its event waits there for the reply.
    pub fn pending(&mut self, token: usize, txn: u64, acquirer: u16) {
        let Some(mut event) = self.current else {
            return;
        };
        if token >= MAX_SLOTS {
            return;
        }
        if self.slots.len() <= token {
            self.slots.resize(token + 1, None);
        }
        event.acquirer = acquirer;
        self.slots[token] = Some(Slot {
            txn,
            event,
            forwarded_at: None,
        });
    }

    /// The forward with `token` left for its link.
    #[inline]
    pub fn forwarded(&mut self, token: u32, at: Instant) {
        if let Some(Some(s)) = self.slots.get_mut(token as usize)
            && s.forwarded_at.is_none()
        {
            s.forwarded_at = Some(at);
        }
    }

    /// The reply for `token` (transaction `txn`) came at `at`; `failed`
    /// when the link gave none (an approval then is stand-in).
    pub fn reply(
        &mut self,
        token: u32,
        txn: u64,
        acquirer: u16,
        points: u16,
        failed: bool,
        at: Instant,
    ) {
        if !self.enabled {
            return;
        }
        let slot = self
            .slots
            .get_mut(token as usize)
            .and_then(Option::take)
            .filter(|s| s.txn == txn);
        let mut e = slot.map_or_else(
            || Event {
                acquirer,
                points,
                ..Event::default()
            },
            |s| s.event,
        );
        if let Some(sent) = slot.and_then(|s| s.forwarded_at) {
            e.rtt_us = micros(at.saturating_duration_since(sent));
        }
        e.stand_in = failed;
        self.current = Some(e);
    }

    /// The request's one answer was framed: its event, if it has one.
    #[inline]
    pub fn answered(
        &mut self,
        mti: u16,
        code: [u8; 2],
        took: std::time::Duration,
        unix_ms: u64,
    ) -> Option<Event> {
        if !self.enabled {
            return None;
        }
        // Without one (an answer outside a request's handling: the
        // journal stopped, a refused forward), what the answer knows.
        let mut e = self.current.take().unwrap_or_default();
        e.mti = mti;
        e.code = code;
        e.unix_ms = unix_ms;
        e.latency_us = micros(took).saturating_sub(e.rtt_us);
        // Stand-in is an approval given for a request that got no reply.
        e.stand_in = e.stand_in && code == crate::codes::APPROVED;
        Some(e)
    }

    /// The event handled is over (whether answered or not).
    #[inline]
    pub fn done(&mut self) {
        self.current = None;
    }

    /// The event of the request being handled, to keep while the request
    /// waits (for an HSM's answer) and [`Tap::resume`] when it goes on.
    pub fn current(&self) -> Option<Event> {
        self.current
    }

    /// Goes on with a request's event kept by [`Tap::current`].
    pub fn resume(&mut self, event: Option<Event>) {
        if self.enabled {
            self.current = event;
        }
    }
}

fn micros(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::{MessageBuilder, Mti, specs};

    fn request() -> Message {
        let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::new(200).expect("mti"));
        b.set(2, b"4111111111111111")
            .set(3, b"000000")
            .set_number(4, 1234)
            .set_number(11, 42)
            .set(18, b"5411")
            .set(19, b"840")
            .set(37, b"500000000042")
            .set(41, b"TERM0001")
            .set(42, b"MERCHANT0000001")
            .set(49, b"978");
        Message::parse(b.to_bytes().expect("packs").freeze(), specs::iso87ascii()).expect("parses")
    }

    #[test]
    fn the_event_keeps_no_card_number() {
        let e = Event::of_request(&request());
        assert_eq!(std::mem::size_of::<Event>(), 96);
        assert_eq!(e.masked_pan(), "411111******1111");
        assert_eq!(&e.bin, b"411111");
        assert_eq!(
            (e.amount, e.stan, e.mcc, e.country, e.currency),
            (1234, 42, 5411, 840, 978)
        );
        assert_eq!(text(&e.terminal), "TERM0001");
        assert_eq!(text(&e.rrn), "500000000042");
    }

    #[test]
    fn a_forwarded_request_keeps_its_event_until_the_reply() {
        let t0 = Instant::now();
        let mut tap = Tap::new(true);
        tap.request(&request());
        tap.pending(3, 77, 1);
        tap.done();
        tap.forwarded(3, t0);
        let at = t0 + std::time::Duration::from_millis(5);
        tap.reply(3, 77, 1, 0, false, at);
        let e = tap
            .answered(200, *b"00", std::time::Duration::from_millis(7), 1)
            .expect("an event");
        assert_eq!((e.acquirer, e.rtt_us, e.latency_us), (1, 5000, 2000));
        assert_eq!(text(&e.merchant), "MERCHANT0000001");
        // Another transaction under the same token later: not confused.
        tap.reply(3, 78, 1, 0, true, at);
        let e = tap
            .answered(200, *b"00", std::time::Duration::ZERO, 1)
            .expect("an event");
        assert!(e.stand_in && !e.has_pan());
        assert!(
            Tap::new(false)
                .answered(200, *b"00", std::time::Duration::ZERO, 1)
                .is_none()
        );
    }
}
