//! The acquirer host of the simulation: the simulator's own rules
//! (`crate::tools::sim::rules`) deciding and packing every answer, plus a record
//! of what the host saw, which the checks compare with what terminals got.

use std::collections::{HashMap, HashSet};

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::frame::{FrameCodec, LengthHeader};
use crate::iso8583::{Message, Spec};
use crate::tools::sim::rules::{self, Answer, Kind, Rules, XorShift};

/// A transaction as the host knows it: terminal id and the STAN of the
/// original request.
pub type TxnKey = (Vec<u8>, u32);

/// What the host saw over the whole run (across switch crashes).
#[derive(Default)]
pub struct HostLog {
    /// Originals (0100/0200, not repeats) by (terminal, STAN, MTI class).
    pub originals: HashMap<(Vec<u8>, u32, u16), u32>,
    /// Requests the host approved (00), by terminal and STAN.
    pub approved: HashSet<TxnKey>,
    /// Reversals (0400/0420 and repeats) by the terminal and STAN of the
    /// transaction they reverse (DE90 when present, else DE11).
    pub reversed: HashSet<TxnKey>,
    /// Advices (0120/0220 and repeats), by terminal and STAN.
    pub advised: HashSet<TxnKey>,
}

/// One connection of the host: its framing state.
pub struct HostConn {
    codec: FrameCodec,
    rbuf: BytesMut,
}

impl HostConn {
    pub fn new() -> HostConn {
        HostConn {
            codec: FrameCodec::new(LengthHeader::Binary2, 8192),
            rbuf: BytesMut::new(),
        }
    }
}

pub struct Host {
    spec: &'static Spec,
    rules: Rules,
    rng: XorShift,
    approvals: u64,
    pub log: HostLog,
    /// Refuse sign-ons (0800/001 answered 05) while set.
    pub refuse_sign_on: bool,
}

/// An answer the host wants to send, framed.
pub struct Reply {
    pub bytes: Bytes,
    /// A transaction answer (faults apply to these only, as with the
    /// simulator's drop-every and wrong-stan modes).
    pub transaction: bool,
}

impl Host {
    pub fn new(spec: &'static Spec, seed: u64) -> Host {
        Host {
            spec,
            rules: Rules {
                decline_over_amount: Some(90_000),
                decline_prefixes: Vec::new(),
                decline_ratio: 0.1,
            },
            rng: XorShift::new(seed ^ 0x4845_5354),
            approvals: 0,
            log: HostLog::default(),
            refuse_sign_on: false,
        }
    }

    /// Takes bytes from a link and returns the answers, in order.
    pub fn receive(&mut self, conn: &mut HostConn, bytes: &[u8]) -> Vec<Reply> {
        conn.rbuf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let frame = match conn.codec.decode(&mut conn.rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => panic!("the switch sent the host a bad frame: {e}"),
            };
            let msg = match Message::parse(frame, self.spec) {
                Ok(m) => m,
                Err(e) => panic!("the switch sent the host an unreadable message: {e}"),
            };
            if let Some(r) = self.answer(&msg) {
                out.push(r);
            }
        }
        out
    }

    fn answer(&mut self, msg: &Message) -> Option<Reply> {
        let mti = msg.mti();
        let kind = Kind::of(mti);
        let tid = msg
            .terminal_id()
            .map(|t| t.trimmed().to_vec())
            .unwrap_or_default();
        let stan = msg.stan().unwrap_or(0);
        let original_stan = msg
            .field(90)
            .and_then(|v| std::str::from_utf8(v.get(4..10)?).ok()?.parse().ok())
            .unwrap_or(stan);
        let mut answer = Answer {
            response_code: crate::codes::APPROVED,
            approval: None,
            wrong_stan: false,
            balance: None,
        };
        match kind {
            Kind::Network => {
                let sign_on = msg.field(70) == Some(b"001".as_slice());
                if sign_on && self.refuse_sign_on {
                    answer.response_code = *b"05";
                }
            }
            Kind::Decision => {
                if !mti.is_repeat() {
                    *self
                        .log
                        .originals
                        .entry((tid.clone(), stan, mti.match_class()))
                        .or_insert(0) += 1;
                }
                answer.response_code = self.rules.decide(msg, &mut self.rng);
                if answer.response_code == crate::codes::APPROVED {
                    self.approvals += 1;
                    answer.approval = Some(rules::approval_code(self.approvals));
                    self.log.approved.insert((tid, stan));
                }
            }
            Kind::Acknowledge => match mti.class() {
                4 => {
                    self.log.reversed.insert((tid, original_stan));
                }
                _ => {
                    self.log.advised.insert((tid, stan));
                }
            },
            // The simulation's host keeps no settlement book to judge an
            // 0520 by (and the simulated switch sends none).
            Kind::Other | Kind::Reconcile => {
                answer.response_code = crate::codes::INVALID_TRANSACTION
            }
            Kind::NotRequest => return None,
        }
        let mut out = BytesMut::new();
        if let Err(e) = rules::pack_answer(msg, kind, &answer, LengthHeader::Binary2, &mut out) {
            panic!("the host could not answer {mti}: {e}");
        }
        Some(Reply {
            bytes: out.freeze(),
            transaction: kind.is_transaction(mti),
        })
    }
}
