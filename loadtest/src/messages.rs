//! The message stream, sans-IO: a seeded PRNG, the card population and the
//! generator that packs one framed request at a time into a reused buffer.
//!
//! Everything one connection sends follows from (seed, connection index),
//! so a run can be replayed. Reversals are the one input from the network:
//! they reverse requests the peer approved, so the stream is identical for
//! two runs only when the same requests were approved (always, against an
//! approving peer).

use std::collections::VecDeque;

use std::sync::Arc;

use bytes::BytesMut;

use switchyard_protocol::frame::LengthHeader;
use switchyard_protocol::iso8583::{MessageWriter, Mti, Spec, mac_field};

use super::terminal_keys::TerminalKeys;
use super::{LoadConfig, Mix};

/// splitmix64: tiny, fast, and good enough to pick cards and amounts; we
/// want a stream that is the same on every platform, not cryptography.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`); Lemire's multiply-shift, whose bias is
    /// negligible for the small ranges used here.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// Issuer BINs of the card population (all route to the default acquirer
/// of the shipped config).
pub const BINS: [&[u8; 6]; 4] = [b"476173", b"400000", b"550000", b"541111"];
/// The BIN of the "blocked-looking" fraud cards: no real issuer, so a
/// fraud config that blocks it (`blocked_bins = ["666666"]`) declines them.
pub const FRAUD_BIN: &[u8; 6] = b"666666";
/// Cards used for card-testing bursts: few, so that the small-amount
/// rule sees several attempts per card quickly.
const TESTING_CARDS: u64 = 16;
/// Largest terminal number: DE41 is "LT" + 6 digits.
pub const MAX_TERMINALS: usize = 999_999;
/// Approved requests remembered per connection as reversal candidates.
const REVERSIBLE: usize = 1024;

/// A 16-digit Luhn-valid PAN: BIN, 9 account digits, check digit.
pub fn card_pan(bin: &[u8; 6], account: u64) -> [u8; 16] {
    let mut pan = [b'0'; 16];
    pan[..6].copy_from_slice(bin);
    let mut a = account % 1_000_000_000;
    for i in (6..15).rev() {
        pan[i] = b'0' + (a % 10) as u8;
        a /= 10;
    }
    pan[15] = b'0' + luhn_check_digit(&pan[..15]);
    pan
}

/// The digit that makes `payload` + digit pass the Luhn check.
fn luhn_check_digit(payload: &[u8]) -> u8 {
    let mut sum = 0u32;
    // Walking from the right, the digit next to the check digit is doubled.
    for (i, &c) in payload.iter().rev().enumerate() {
        let mut d = (c - b'0') as u32;
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    ((10 - sum % 10) % 10) as u8
}

/// DE41 of terminal number `n`.
pub fn terminal_id(n: u32) -> [u8; 8] {
    let mut t = *b"LT000000";
    let mut v = n;
    for i in (2..8).rev() {
        t[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    t
}

/// The terminal number of a DE41 we generated, or `None`.
pub fn parse_terminal_id(tid: &[u8]) -> Option<u32> {
    let tid = tid.trim_ascii_end();
    if tid.len() != 8 || &tid[..2] != b"LT" {
        return None;
    }
    let mut n = 0u32;
    for &c in &tid[2..] {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n * 10 + d as u32;
    }
    Some(n)
}

/// What a request was, as the generator chose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Purchase,
    Authorization,
    Reversal,
    Fraud,
}

/// What is kept about a request until its answer: enough to check the
/// answer and to reverse it later.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub kind: Kind,
    pub mti: Mti,
    pub terminal: u32,
    pub stan: u32,
    pub amount: u64,
    pub pan: [u8; 16],
    pub merchant: u32,
    pub mcc: u16,
    pub rrn: u64,
    /// A reversal's original MTI (0100 or 0200); `None` for the others.
    pub reverses: Option<Mti>,
    /// A reversal's original STAN (DE90); 0 for the others.
    pub reverses_stan: u32,
}

/// Packs the requests of one connection.
pub struct Generator {
    rng: SplitMix64,
    spec: &'static Spec,
    framing: LengthHeader,
    /// Cumulative thresholds of the mix over 0..total.
    thresholds: [u64; 4],
    cards: u64,
    /// This connection's terminals: first, first + step, ...
    term_first: u32,
    term_step: u32,
    term_count: u32,
    /// STAN of the sign-ons (requests get theirs from the caller).
    stan: u32,
    rrn_base: u64,
    rrn_seq: u64,
    de7: [u8; 10],
    with_de90: bool,
    reversible: VecDeque<Request>,
    /// `--pin` / `--mac`.
    keys: Option<Arc<TerminalKeys>>,
}

impl Generator {
    /// The generator of connection `index` (of `config.connections`);
    /// `de7` is the transmission time stamped on every request.
    pub fn new(config: &LoadConfig, index: usize, de7: [u8; 10]) -> Generator {
        let conns = config.connections.max(1);
        let terminals = config.terminals.clamp(conns, MAX_TERMINALS.max(conns));
        // This run's block of terminal numbers, placed by the seed (see
        // `stan_offset` in `conn` for the other half of the key).
        let term_base = SplitMix64::new(config.seed ^ 0x5445_524D)
            .below((MAX_TERMINALS + 1).saturating_sub(terminals) as u64 + 1)
            as u32;
        let index32 = index as u32;
        let term_count = (terminals - index).div_ceil(conns).max(1) as u32;
        let Mix {
            purchase,
            authorization,
            reversal,
            fraud,
        } = config.mix;
        let mut acc = 0u64;
        let mut thresholds = [0u64; 4];
        for (t, share) in thresholds
            .iter_mut()
            .zip([purchase, authorization, reversal, fraud])
        {
            acc += share as u64;
            *t = acc;
        }
        if acc == 0 {
            // An empty mix means purchases only.
            thresholds = [1, 1, 1, 1];
        }
        Generator {
            // Distinct, well-mixed streams per connection from one seed.
            rng: SplitMix64::new(
                SplitMix64::new(config.seed ^ (index as u64).wrapping_mul(0xA076_1D64_78BD_642F))
                    .next_u64(),
            ),
            spec: config.spec,
            framing: config.framing,
            thresholds,
            cards: config.cards.max(1) as u64,
            term_first: term_base + index32,
            term_step: conns as u32,
            term_count,
            stan: 0,
            // RRNs unique across connections: 12 digits, connection in the
            // top 4 (modulo), a per-connection sequence below.
            rrn_base: (index as u64 % 10_000) * 100_000_000,
            rrn_seq: 0,
            de7,
            with_de90: config.spec.field(90).is_some(),
            reversible: VecDeque::with_capacity(REVERSIBLE),
            keys: config.terminal_keys.clone(),
        }
    }

    fn next_stan(&mut self) -> u32 {
        self.stan = self.stan % 999_999 + 1;
        self.stan
    }

    /// Remembers an approved request as a candidate for a later reversal.
    pub fn approved(&mut self, request: &Request) {
        if matches!(request.kind, Kind::Reversal) {
            return;
        }
        if self.reversible.len() == REVERSIBLE {
            self.reversible.pop_front();
        }
        self.reversible.push_back(*request);
    }

    /// Appends the sign-on (0800, DE70 001) frame; returns its STAN.
    pub fn sign_on(&mut self, out: &mut BytesMut) -> Result<u32, String> {
        let stan = self.next_stan();
        let at = self.framing.begin(out);
        let mut w = MessageWriter::begin(self.spec, Mti::NETWORK, out);
        w.set(7, &self.de7).set_number(11, stan as u64);
        w.set(70, b"001");
        w.finish().map_err(|e| e.to_string())?;
        self.framing
            .finish(out, at)
            .map_err(|e| e.to_string())
            .map(|_| stan)
    }

    /// Appends the next request's frame to `out`. `stan` must be unique
    /// among this connection's requests in flight: with terminals owned by
    /// one connection, the (class, DE41, DE11) keys then are too.
    pub fn next(&mut self, stan: u32, out: &mut BytesMut) -> Result<Request, String> {
        let roll = self.rng.below(self.thresholds[3]);
        let kind = if roll < self.thresholds[0] {
            Kind::Purchase
        } else if roll < self.thresholds[1] {
            Kind::Authorization
        } else if roll < self.thresholds[2] {
            Kind::Reversal
        } else {
            Kind::Fraud
        };
        self.rrn_seq = (self.rrn_seq + 1) % 100_000_000;
        let rrn = self.rrn_base + self.rrn_seq;
        let request = match kind {
            Kind::Reversal => match self.reversible.pop_front() {
                Some(original) => {
                    return self.pack_reversal(original, stan, out);
                }
                // Nothing approved yet to reverse: a purchase instead.
                None => self.retail(Kind::Purchase, stan, rrn),
            },
            Kind::Fraud => self.fraud(stan, rrn),
            _ => self.retail(kind, stan, rrn),
        };
        self.pack(&request, None, out)?;
        Ok(request)
    }

    fn terminal(&mut self) -> u32 {
        self.term_first + self.term_step * self.rng.below(self.term_count as u64) as u32
    }

    fn retail(&mut self, kind: Kind, stan: u32, rrn: u64) -> Request {
        let card = self.rng.below(self.cards);
        let bin = BINS[(card % BINS.len() as u64) as usize];
        // Mostly everyday amounts (1.00 .. 150.00), sometimes larger.
        let amount = if self.rng.below(10) == 0 {
            self.rng.range(15_000, 200_000)
        } else {
            self.rng.range(100, 15_000)
        };
        const MCCS: [u16; 6] = [5411, 5812, 5541, 5311, 5999, 4121];
        Request {
            kind,
            mti: if kind == Kind::Authorization {
                Mti::AUTHORIZATION
            } else {
                Mti::FINANCIAL
            },
            terminal: self.terminal(),
            stan,
            amount,
            pan: card_pan(bin, card / BINS.len() as u64),
            merchant: self.rng.below(10_000) as u32,
            mcc: MCCS[self.rng.below(MCCS.len() as u64) as usize],
            rrn,
            reverses: None,
            reverses_stan: 0,
        }
    }

    /// Requests built to trip the fraud rules: a huge amount at a betting
    /// merchant, a blocked-looking BIN, or one step of a card-testing burst
    /// (small amounts on a few cards across many merchants).
    fn fraud(&mut self, stan: u32, rrn: u64) -> Request {
        let mut r = self.retail(Kind::Fraud, stan, rrn);
        match self.rng.below(3) {
            0 => {
                r.amount = self.rng.range(2_000_000, 9_999_999);
                r.mcc = 7995;
            }
            1 => r.pan = card_pan(FRAUD_BIN, self.rng.below(1_000)),
            _ => {
                r.pan = card_pan(BINS[0], 999_000_000 + self.rng.below(TESTING_CARDS));
                r.amount = self.rng.range(1, 200);
                r.merchant = self.rng.below(100_000) as u32;
            }
        }
        r
    }

    fn pack_reversal(
        &mut self,
        original: Request,
        stan: u32,
        out: &mut BytesMut,
    ) -> Result<Request, String> {
        let mut r = original;
        r.kind = Kind::Reversal;
        r.mti = Mti::REVERSAL;
        r.stan = stan;
        r.reverses = Some(original.mti);
        r.reverses_stan = original.stan;
        // The reversal keeps the original's RRN, as acquirers expect.
        self.pack(&r, Some(&original), out)?;
        Ok(r)
    }

    /// Appends `r`'s frame again (a request sent once already, to be sent
    /// on another connection).
    pub fn repack(&self, r: &Request, out: &mut BytesMut) -> Result<(), String> {
        match r.reverses {
            Some(mti) => {
                let original = Request {
                    mti,
                    stan: r.reverses_stan,
                    reverses: None,
                    reverses_stan: 0,
                    ..*r
                };
                self.pack(r, Some(&original), out)
            }
            None => self.pack(r, None, out),
        }
    }

    fn pack(
        &self,
        r: &Request,
        original: Option<&Request>,
        out: &mut BytesMut,
    ) -> Result<(), String> {
        let at = self.framing.begin(out);
        let start = out.len();
        let mut w = MessageWriter::begin(self.spec, r.mti, out);
        let mut digits = [0u8; 15];
        let pin = self.keys.as_ref().and_then(|k| {
            (r.kind != Kind::Reversal)
                .then(|| k.pin_block(&r.pan))
                .flatten()
        });
        w.set(2, &r.pan)
            .set(3, b"000000")
            .set_number(4, r.amount)
            .set(7, &self.de7)
            .set_number(11, r.stan as u64)
            .set_number(18, r.mcc as u64)
            .set(37, fmt_digits(r.rrn, &mut digits[..12]))
            .set(41, &terminal_id(r.terminal));
        let mut mid = *b"LOADGEN00000000";
        fmt_digits(r.merchant as u64, &mut mid[7..]);
        w.set(42, &mid).set(49, b"840");
        if let Some(block) = &pin {
            w.set(52, block);
        }
        // DE90 (on reversals) brings the secondary bitmap: the MAC goes in
        // DE128 then.
        let mac_field = match (original, self.with_de90) {
            (Some(_), true) => 128,
            _ => 64,
        };
        let mac = self.keys.as_ref().filter(|k| k.mac.is_some());
        if let (Some(o), true) = (original, self.with_de90) {
            // DE90: original MTI, STAN, DE7, acquirer and forwarding ids.
            let mut de90 = [b'0'; 42];
            de90[..4].copy_from_slice(&o.mti.to_ascii());
            fmt_digits(o.stan as u64, &mut de90[4..10]);
            de90[10..20].copy_from_slice(&self.de7);
            w.set(90, &de90);
        }
        if mac.is_some() {
            let placeholder = mac_field::mac_placeholder(self.spec, mac_field)
                .ok_or_else(|| format!("the spec has no DE{mac_field} for a MAC"))?;
            w.set(mac_field, placeholder);
        }
        w.finish().map_err(|e| e.to_string())?;
        if let Some(keys) = mac {
            let filled = mac_field::fill_trailing_mac(
                self.spec,
                mac_field,
                &mut out[start..],
                |data, len| keys.mac(data, len),
            );
            if let Err(e) = filled {
                out.truncate(at);
                return Err(e.to_string());
            }
        }
        self.framing.finish(out, at).map_err(|e| e.to_string())
    }
}

/// Writes `v` as zero-padded decimal filling `out`; returns `out`.
fn fmt_digits(mut v: u64, out: &mut [u8]) -> &[u8] {
    for c in out.iter_mut().rev() {
        *c = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out
}

/// The first `n` framed requests connection `connection` would send, as if
/// every request were approved: for checking that a seed fixes the stream.
pub fn sample_messages(config: &LoadConfig, connection: usize, n: usize) -> Vec<Vec<u8>> {
    let mut g = Generator::new(config, connection, *b"1125101010");
    let mut out = BytesMut::with_capacity(256);
    let mut frames = Vec::with_capacity(n);
    for i in 0..n {
        out.clear();
        match g.next((i % 999_999) as u32 + 1, &mut out) {
            Ok(r) => {
                g.approved(&r);
                frames.push(out.to_vec());
            }
            Err(_) => break,
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_protocol::iso8583::values::luhn_ok;

    #[test]
    fn pans_pass_luhn() {
        for a in [0, 1, 42, 999_999_999, 123_456_789] {
            for bin in BINS.iter().chain([&FRAUD_BIN]) {
                assert!(luhn_ok(&card_pan(bin, a)));
            }
        }
    }

    #[test]
    fn terminal_ids_round_trip() {
        for n in [0, 7, 999_999] {
            assert_eq!(parse_terminal_id(&terminal_id(n)), Some(n));
        }
        assert_eq!(parse_terminal_id(b"TERM0001"), None);
    }
}
