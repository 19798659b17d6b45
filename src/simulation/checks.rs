//! What must hold at the end of every simulated run, from three points of
//! view that must agree: the terminals' (what each send got back), the
//! journal's (what the switch recorded as durable), and the host's (what
//! it approved, and what reversals and advices reached it).

use std::collections::BTreeMap;

use super::host::TxnKey;
use super::world::World;
use crate::switch::journal::Record;

/// The promises, checked one after the other; the first broken one is
/// returned with what broke it.
pub fn verify(w: &World) -> Result<(), String> {
    one_answer_per_send(w)?;
    journal_outcomes(w)?;
    host_approvals_reached_or_reversed(w)?;
    nothing_approved_and_reversed(w)?;
    stand_in_approvals_advised(w)?;
    no_transaction_forwarded_twice(w)
}

fn key_of(w: &World, client: usize, stan: u32) -> TxnKey {
    (w.clients[client].tid.clone(), stan)
}

/// Every request gets exactly one answer, unless its terminal hung up or
/// the switch crashed while it waited (then at most one).
fn one_answer_per_send(w: &World) -> Result<(), String> {
    for s in &w.sent {
        let n = s.answers.len();
        if n > 1 || (n == 0 && !s.abandoned) {
            return Err(format!(
                "terminal {} STAN {} (MTI {:04}) got {n} answers{}",
                s.client,
                s.stan,
                s.mti,
                if s.abandoned { " after hanging up" } else { "" }
            ));
        }
    }
    Ok(())
}

#[derive(Default)]
struct TxnView {
    key: Option<TxnKey>,
    finals: u32,
    forwarded: bool,
    timed_out: bool,
    reversal_queued: bool,
    reversal_settled: bool,
    advice_queued: bool,
    advice_settled: bool,
}

fn txn_views(w: &World) -> BTreeMap<u64, TxnView> {
    let mut txns: BTreeMap<u64, TxnView> = BTreeMap::new();
    for (_, r) in &w.journal.borrow().records {
        if let Record::Cutover { .. } = r {
            continue;
        }
        let t = txns.entry(r.txn()).or_default();
        match r {
            Record::Request { request, .. } => {
                t.key = Some((request.terminal_id.as_bytes().to_vec(), request.stan));
            }
            Record::Forwarded { .. } => t.forwarded = true,
            Record::Response { .. } => t.finals += 1,
            Record::Timeout { .. } => {
                t.finals += 1;
                t.timed_out = true;
            }
            Record::ReversalQueued { .. } => t.reversal_queued = true,
            Record::ReversalAcked { .. } | Record::ReversalExpired { .. } => {
                t.reversal_settled = true
            }
            Record::AdviceQueued { .. } => t.advice_queued = true,
            Record::AdviceAcked { .. } | Record::AdviceExpired { .. } => t.advice_settled = true,
            Record::ReversalSent { .. } | Record::AdviceSent { .. } | Record::Cutover { .. } => {}
        }
    }
    txns
}

/// In the journal: at most one final outcome per transaction; every
/// forward ends in one or is reversed; every timeout is reversed; every
/// reversal and advice is acknowledged by the end of the quiet time.
fn journal_outcomes(w: &World) -> Result<(), String> {
    for (txn, t) in txn_views(w) {
        let who = || format!("txn {txn} ({:?})", t.key.as_ref().map(readable));
        if t.finals > 1 {
            return Err(format!("{} has {} final outcomes", who(), t.finals));
        }
        if t.forwarded && t.finals == 0 && !t.reversal_queued {
            return Err(format!(
                "{} was forwarded and neither answered nor reversed",
                who()
            ));
        }
        if t.timed_out && !t.reversal_queued {
            return Err(format!("{} timed out with no reversal queued", who()));
        }
        if t.reversal_queued && !t.reversal_settled {
            return Err(format!("{}: its reversal never reached the host", who()));
        }
        if t.advice_queued && !t.advice_settled {
            return Err(format!("{}: its advice never reached the host", who()));
        }
        if t.timed_out
            && let Some(k) = &t.key
            && !w.host.log.reversed.contains(k)
            && w.host.log.approved.contains(k)
        {
            return Err(format!(
                "{} timed out, the host approved it, and no reversal came",
                who()
            ));
        }
    }
    Ok(())
}

fn readable(k: &TxnKey) -> String {
    format!("{} STAN {}", String::from_utf8_lossy(&k.0), k.1)
}

/// A host approval is either the approval the terminal received, or it is
/// reversed at the host (by the switch, or by the terminal itself when the
/// switch went away): money is never taken for a sale the terminal does
/// not know was approved.
fn host_approvals_reached_or_reversed(w: &World) -> Result<(), String> {
    for k in &w.host.log.approved {
        let Some(client) = w.clients.iter().position(|c| c.tid == k.0) else {
            return Err(format!(
                "the host approved {} from no terminal",
                readable(k)
            ));
        };
        let delivered = w.sent.iter().any(|s| {
            s.client == client
                && s.stan == k.1
                && s.reverses.is_none()
                && s.answers
                    .iter()
                    .any(|(code, stand_in)| *code == crate::codes::APPROVED && !stand_in)
        });
        if !delivered && !w.host.log.reversed.contains(k) {
            return Err(format!(
                "the host approved {}, the terminal never got that approval, and no reversal \
                 reached the host",
                readable(k)
            ));
        }
    }
    Ok(())
}

/// No transaction the terminal was told the host approved (and did not
/// reverse itself) is reversed upstream.
fn nothing_approved_and_reversed(w: &World) -> Result<(), String> {
    for s in &w.sent {
        let told_approved = s.reverses.is_none()
            && matches!(s.mti, 100 | 101 | 200 | 201)
            && s.answers
                .iter()
                .any(|(code, stand_in)| *code == crate::codes::APPROVED && !stand_in);
        if !told_approved {
            continue;
        }
        let reversed_by_terminal = w
            .sent
            .iter()
            .any(|r| r.client == s.client && r.reverses == Some(s.stan));
        let k = key_of(w, s.client, s.stan);
        if !reversed_by_terminal && w.host.log.reversed.contains(&k) {
            return Err(format!(
                "{} was approved to the terminal and reversed at the host",
                readable(&k)
            ));
        }
    }
    Ok(())
}

/// A stand-in approval reaches the host as an advice by the end.
fn stand_in_approvals_advised(w: &World) -> Result<(), String> {
    for s in &w.sent {
        let stand_in = s
            .answers
            .iter()
            .any(|(code, stand_in)| *code == crate::codes::APPROVED && *stand_in);
        let k = key_of(w, s.client, s.stan);
        if stand_in && !w.host.log.advised.contains(&k) {
            return Err(format!(
                "{} was approved in stand-in and the host was never advised",
                readable(&k)
            ));
        }
    }
    Ok(())
}

/// The host sees each original 0100/0200 once: repeats and resends are
/// answered by the switch from what it already has.
fn no_transaction_forwarded_twice(w: &World) -> Result<(), String> {
    for ((tid, stan, class), n) in &w.host.log.originals {
        if *n > 1 {
            return Err(format!(
                "the host received {} STAN {stan} (class {class:04}) {n} times",
                String::from_utf8_lossy(tid)
            ));
        }
    }
    Ok(())
}
