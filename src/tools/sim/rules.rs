//! The simulator's sans-IO core: what kind of request a message is, what the
//! host decides for it, and how the answer is packed. No sockets, no
//! clocks; the connection task feeds it parsed messages.

use arrayvec::ArrayVec;
use bytes::BytesMut;

use crate::codes;
use crate::frame::LengthHeader;
use crate::iso8583::{Message, Mti, PackError, pack_response};

/// Fields echoed in answers to authorizations, financials, advices and
/// reversals when the request has them. Track data (35, 45), PIN block
/// (52) and chip data (55) are deliberately absent: a host never sends
/// them back.
pub const ECHO_TRANSACTION: &[usize] = &[2, 3, 4, 7, 11, 12, 13, 18, 22, 32, 37, 41, 42, 49];

/// Fields echoed in answers to network management.
pub const ECHO_NETWORK: &[usize] = &[7, 11, 41, 70];

/// Fields echoed in answers to an acquirer reconciliation (0520): its
/// date, settlement date, terminal, currency and institution.
pub const ECHO_RECONCILE: &[usize] = &[7, 11, 15, 41, 50, 99];

/// How the host treats a request, from its MTI alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// 0800: answered 0810 / 00.
    Network,
    /// 0100, 0101, 0200, 0201: decided by the [`Rules`].
    Decision,
    /// Advices and reversals (0120, 0220, 0400, 0420 and their repeats):
    /// acknowledged 00.
    Acknowledge,
    /// An acquirer reconciliation (0520, 0521): answered 0530 / 00 with
    /// DE66 from the simulator's own totals (`settlement.rs`).
    Reconcile,
    /// Any other request: answered with 12 (invalid transaction).
    Other,
    /// Not a request (a response or an unknown function): not answered.
    NotRequest,
}

impl Kind {
    pub fn of(mti: Mti) -> Kind {
        if !mti.is_request() {
            return Kind::NotRequest;
        }
        match (mti.class(), mti.function()) {
            (8, 0) => Kind::Network,
            (1 | 2, 0) => Kind::Decision,
            (1 | 2, 2) | (4, 0 | 2) => Kind::Acknowledge,
            (5, 2) => Kind::Reconcile,
            _ => Kind::Other,
        }
    }

    /// Authorization, financial and reversal traffic (advices included):
    /// what drop-every counts and wrong-STAN alters. Network management is
    /// left alone so that faults hit transactions, not the link itself.
    pub fn is_transaction(self, mti: Mti) -> bool {
        self != Kind::NotRequest && matches!(mti.class(), 1 | 2 | 4)
    }
}

/// The host's decision rules for 0100/0200.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub decline_over_amount: Option<u64>,
    pub decline_prefixes: Vec<Box<[u8]>>,
    /// 0.0 ..= 1.0.
    pub decline_ratio: f64,
}

impl Rules {
    /// DE39 for a 0100/0200: 51 over the amount limit, 05 for a declined
    /// card range or by the random ratio, else 00. `rng` is drawn from only
    /// when the ratio rule is reached, so a run is reproducible per seed.
    pub fn decide(&self, msg: &Message, rng: &mut XorShift) -> [u8; 2] {
        if let (Some(limit), Some(amount)) = (self.decline_over_amount, msg.amount_minor())
            && amount > limit
        {
            return codes::INSUFFICIENT_FUNDS;
        }
        if !self.decline_prefixes.is_empty()
            && let Some(pan) = msg.pan()
            && self
                .decline_prefixes
                .iter()
                .any(|p| pan.digits().starts_with(p))
        {
            return codes::DO_NOT_HONOUR;
        }
        if self.decline_ratio > 0.0 && rng.next_f64() < self.decline_ratio {
            return codes::DO_NOT_HONOUR;
        }
        codes::APPROVED
    }
}

/// xorshift64*: tiny, fast, deterministic; plenty for fault injection.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// Any seed is fine: it is mixed (splitmix64) so that nearby seeds give
    /// unrelated streams and the state is never zero.
    pub fn new(seed: u64) -> XorShift {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n); 0 when n is 0. The modulo bias is irrelevant for
    /// latencies.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// Six ASCII digits for an approval code (DE38), never `000000`.
pub fn approval_code(counter: u64) -> [u8; 6] {
    let mut v = counter % 999_999 + 1;
    let mut out = [b'0'; 6];
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out
}

fn stan_digits(stan: u64) -> [u8; 6] {
    let mut d = [b'0'; 6];
    let mut v = stan;
    for slot in d.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    d
}

/// What goes into one answer besides the echoed fields.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    pub response_code: [u8; 2],
    pub approval: Option<[u8; 6]>,
    /// Replace DE11 so the answer matches nothing the client sent.
    pub wrong_stan: bool,
    /// DE66 of a reconciliation answer: 1 in balance, 2 out of balance.
    pub balance: Option<u8>,
}

/// Packs the answer to `req` as one framed message at the end of `out`.
/// On error `out` is left as it was.
pub fn pack_answer(
    req: &Message,
    kind: Kind,
    answer: &Answer,
    framing: LengthHeader,
    out: &mut BytesMut,
) -> Result<(), PackError> {
    let echo = match kind {
        Kind::Network => ECHO_NETWORK,
        Kind::Reconcile => ECHO_RECONCILE,
        _ => ECHO_TRANSACTION,
    };
    let wrong;
    let settlement;
    let balance;
    let mut set: ArrayVec<(usize, &[u8]), 5> = ArrayVec::new();
    if answer.wrong_stan {
        let stan = (u64::from(req.stan().unwrap_or(0)) + 1) % 1_000_000;
        wrong = stan_digits(stan);
        set.push((11, &wrong));
    }
    // DE15, the host's settlement date (MMDD): the request's DE7 date,
    // as a host settling by transmission date would give it; what the
    // switch keeps in its Response record and the store. A reconciliation
    // names its own (echoed).
    if !matches!(kind, Kind::Network | Kind::Reconcile)
        && let Some(de7) = req.transmission_time()
    {
        let d = stan_digits(de7 / 1_000_000);
        settlement = [d[2], d[3], d[4], d[5]];
        set.push((15, &settlement));
    }
    if let Some(code) = &answer.approval {
        set.push((38, code));
    }
    set.push((39, &answer.response_code));
    if let Some(b) = answer.balance {
        balance = [b'0' + b % 10];
        set.push((66, &balance));
    }
    // Echo lists and `set` are in field order, as pack_response needs.
    let at = framing.begin(out);
    if let Err(e) = pack_response(req, echo, &set, out) {
        out.truncate(at);
        return Err(e);
    }
    let len = out.len() - at - framing.width();
    // Only an answer over the header's limit fails here; finish removes it.
    framing.finish(out, at).map_err(|_| PackError::TooLarge {
        len,
        max: framing.limit(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::MessageBuilder;
    use crate::iso8583::spec::Spec;
    use crate::iso8583::specs::{iso87ascii, iso87binary};

    fn request(spec: &'static Spec, mti: Mti, pan: &[u8], amount: u64) -> Message {
        let mut b = MessageBuilder::new(spec, mti);
        b.set(2, pan)
            .set(3, b"000000")
            .set_number(4, amount)
            .set_number(11, 999_999)
            .set(35, b"4761739001010010=2512")
            .set(41, b"TERM0001")
            .set(52, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let bytes = b.to_bytes().expect("packs").freeze();
        Message::parse(bytes, spec).expect("parses")
    }

    #[test]
    fn kinds_follow_the_mti() {
        let k = |v: u16| Kind::of(Mti::new(v).expect("mti"));
        assert_eq!(k(800), Kind::Network);
        assert_eq!(k(520), Kind::Reconcile);
        assert_eq!(k(521), Kind::Reconcile);
        for v in [100, 101, 200, 201] {
            assert_eq!(k(v), Kind::Decision, "{v}");
        }
        for v in [120, 121, 220, 221, 400, 401, 420, 421] {
            assert_eq!(k(v), Kind::Acknowledge, "{v}");
        }
        for v in [500, 600, 820, 300] {
            assert_eq!(k(v), Kind::Other, "{v}");
        }
        for v in [110, 210, 430, 810, 811] {
            assert_eq!(k(v), Kind::NotRequest, "{v}");
        }
        assert!(k(420).is_transaction(Mti::REVERSAL_ADVICE));
        assert!(!k(800).is_transaction(Mti::NETWORK));
        assert!(!k(500).is_transaction(Mti::RECONCILIATION));
    }

    #[test]
    fn rules_apply_in_order() {
        let rules = Rules {
            decline_over_amount: Some(10_000),
            decline_prefixes: vec![b"5555".to_vec().into_boxed_slice()],
            decline_ratio: 0.0,
        };
        let mut rng = XorShift::new(1);
        let spec = iso87ascii();
        let ok = request(spec, Mti::FINANCIAL, b"4761739001010010", 10_000);
        assert_eq!(rules.decide(&ok, &mut rng), *b"00");
        let over = request(spec, Mti::FINANCIAL, b"5555000011112222", 10_001);
        assert_eq!(rules.decide(&over, &mut rng), *b"51", "amount comes first");
        let range = request(spec, Mti::FINANCIAL, b"5555000011112222", 100);
        assert_eq!(rules.decide(&range, &mut rng), *b"05");
        // BCD PANs are decoded before the prefix check.
        let bin = request(iso87binary(), Mti::AUTHORIZATION, b"5555000011112222", 1);
        assert_eq!(rules.decide(&bin, &mut rng), *b"05");
    }

    #[test]
    fn decline_ratio_is_roughly_honoured_and_reproducible() {
        let rules = Rules {
            decline_ratio: 0.25,
            ..Rules::default()
        };
        let msg = request(iso87ascii(), Mti::FINANCIAL, b"4761739001010010", 1);
        let run = |seed| {
            let mut rng = XorShift::new(seed);
            (0..4000)
                .map(|_| rules.decide(&msg, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = run(42);
        assert_eq!(a, run(42));
        assert_ne!(a, run(43));
        let declined = a.iter().filter(|c| **c == *b"05").count();
        assert!((800..1200).contains(&declined), "{declined} of 4000");
        let all = Rules {
            decline_ratio: 1.0,
            ..Rules::default()
        };
        assert_eq!(all.decide(&msg, &mut XorShift::new(0)), *b"05");
    }

    #[test]
    fn prng_stays_in_range() {
        let mut r = XorShift::new(0);
        for _ in 0..10_000 {
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(r.below(7) < 7);
        }
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn approval_codes_are_six_digits_and_not_zero() {
        assert_eq!(&approval_code(0), b"000001");
        assert_eq!(&approval_code(41), b"000042");
        assert_eq!(&approval_code(999_998), b"999999");
        assert_eq!(&approval_code(999_999), b"000001");
    }

    #[test]
    fn answers_echo_safe_fields_only() {
        let req = request(iso87ascii(), Mti::FINANCIAL, b"4761739001010010", 1234);
        let mut out = BytesMut::from(&b"xx"[..]);
        let answer = Answer {
            response_code: *b"00",
            approval: Some(*b"000007"),
            wrong_stan: false,
            balance: None,
        };
        pack_answer(
            &req,
            Kind::Decision,
            &answer,
            LengthHeader::Ascii4,
            &mut out,
        )
        .expect("packs");
        assert_eq!(&out[..2], b"xx");
        let len: usize = std::str::from_utf8(&out[2..6]).unwrap().parse().unwrap();
        assert_eq!(len, out.len() - 6);
        let resp = Message::parse(out.split_off(6).freeze(), iso87ascii()).expect("parses");
        assert_eq!(resp.mti(), Mti::FINANCIAL_RESPONSE);
        assert_eq!(resp.response_code(), Some(*b"00"));
        assert_eq!(resp.approval_code().as_deref(), Some(&b"000007"[..]));
        assert_eq!(resp.stan(), Some(999_999));
        assert_eq!(resp.amount_minor(), Some(1234));
        assert!(!resp.has(35) && !resp.has(52), "no card secrets echoed");
    }

    #[test]
    fn wrong_stan_wraps() {
        let req = request(iso87ascii(), Mti::REVERSAL_ADVICE, b"4761739001010010", 1);
        let mut out = BytesMut::new();
        let answer = Answer {
            response_code: *b"00",
            approval: None,
            wrong_stan: true,
            balance: None,
        };
        pack_answer(
            &req,
            Kind::Acknowledge,
            &answer,
            LengthHeader::Binary2,
            &mut out,
        )
        .expect("packs");
        let resp = Message::parse(out.split_off(2).freeze(), iso87ascii()).expect("parses");
        assert_eq!(resp.mti(), Mti::REVERSAL_ADVICE_RESPONSE);
        assert_eq!(resp.stan(), Some(0));
        assert!(!resp.has(38));
    }
}
