//! The requests that go online: authorizations (0100/0200 and repeats)
//! and reversals from terminals (0400/0401). Both end in the one sequence
//! [`TerminalCore::forward`]: pick an acquirer with a link up, write the
//! request in its spec, journal `Forwarded`, and hold the forward until
//! the journal is durable.

use std::time::Instant;

use bytes::Bytes;

use super::core::{ForwardOut, Pending, TerminalCore};
use super::records::JournalAppend;
use super::security::Secured;
use super::validate::check_authorization;
use crate::codes;
use crate::iso8583::{Message, MessageBuilder, SmallText, Spec};
use crate::switch::acquirer::{AcquirerHandle, EchoSpans, MatchKey};
use crate::switch::fraud::{self, Auth, CardHash, Decision, Score};
use crate::switch::journal::Record;
use crate::switch::router::RouteTarget;

/// Where a routed request goes and what it is: what the forward's last
/// step needs ([`TerminalCore::send_forward`]), kept while a network HSM
/// translates DE52.
pub(super) struct ForwardPlan {
    pub(super) key: MatchKey,
    pub(super) acquirer: u16,
    pub(super) link: usize,
    pub(super) host_spec: &'static Spec,
    pub(super) txn: TxnInfo,
    pub(super) started: Instant,
}

/// What [`TerminalCore::forward`] keeps of a journaled transaction.
pub(super) struct TxnInfo {
    pub(super) txn: u64,
    /// Content fingerprint, for the recent-answers cache.
    pub(super) content: u64,
    /// Card of an authorization (for decline history).
    pub(super) card: Option<CardHash>,
    /// Fraud score, for stand-in.
    pub(super) points: u16,
}

impl<J: JournalAppend> TerminalCore<J> {
    /// 0100/0200 and their repeats: validate, repeats, admission, fraud,
    /// route, forward (or stand-in when no acquirer is up).
    pub(super) fn authorize(&mut self, msg: Message, started: Instant) {
        let checked = match check_authorization(&msg, &self.shared) {
            Ok(c) => c,
            Err(code) => return self.respond(&msg, code, started),
        };
        if !self.terminal_bound(&checked.terminal_id) {
            return self.respond(&msg, codes::UNKNOWN_TERMINAL, started);
        }
        if !self.mac_holds(&msg, &checked.terminal_id, started) {
            return;
        }
        let Some(key) = MatchKey::of(&msg) else {
            return self.respond(&msg, codes::FORMAT_ERROR, started);
        };
        let Some(content) = self.answered_before(&msg, &key, started) else {
            return;
        };
        if let Some(code) = self.admit(&key) {
            return self.respond(&msg, code, started);
        }
        let pan = checked.pan.digits();
        // Made once: the block list, the fraud map and the journal all
        // name the card by it.
        let card = self.shared.card_hash(pan);
        if self.refuse_blocked(&msg, pan, card, started) {
            return;
        }
        let merchant = msg.merchant_id().unwrap_or(SmallText::EMPTY);
        let auth = Auth {
            card: fraud::CardHash(card),
            pan,
            amount_minor: checked.amount_minor,
            mcc: msg.mcc(),
            merchant_id: merchant.trimmed(),
            terminal_country: self
                .shared
                .terminal_country(&checked.terminal_id)
                .or(msg.acquiring_country()),
            now_s: self.now.unix_ms / 1000,
        };
        let route = self.shared.routes.lookup(pan);
        let primary = route.map_or(u16::MAX, |r| r.primary);
        let Some((txn, score, decision)) = self.score_and_journal(&msg, &auth, primary) else {
            return self.respond(&msg, codes::SYSTEM_MALFUNCTION, started);
        };
        if decision == Decision::Decline {
            return self.respond_final(&msg, txn, codes::SUSPECTED_FRAUD, started);
        }
        let Some(route) = route else {
            return self.respond_final(&msg, txn, codes::NO_ROUTE, started);
        };
        let info = TxnInfo {
            txn,
            content,
            card: Some(auth.card),
            points: score.points,
        };
        match self.forward(&msg, key, route, info, started) {
            Ok(()) => self.record_forwarded(&auth),
            Err(codes::ISSUER_UNAVAILABLE) => {
                if self.stand_in(
                    &msg,
                    (key, content),
                    route.primary,
                    score.points,
                    txn,
                    started,
                ) {
                    self.record_forwarded(&auth)
                } else {
                    self.respond_final(&msg, txn, codes::ISSUER_UNAVAILABLE, started)
                }
            }
            Err(code) => self.respond_final(&msg, txn, code, started),
        }
    }

    /// The card's history learns of a request handed on, under this
    /// generation's rules.
    fn record_forwarded(&self, auth: &Auth<'_>) {
        let s = &self.shared;
        s.fraud_state.record_forwarded(&s.fraud_rules, auth);
    }

    /// 0400/0401 from a terminal: forwarded like an authorization, without
    /// fraud scoring or stand-in, and answered with the host's answer.
    pub(super) fn reverse_online(&mut self, msg: Message, started: Instant) {
        let Some((key, content)) = self.accept_other(&msg, started) else {
            return;
        };
        if let Some(code) = self.admit(&key) {
            return self.respond(&msg, code, started);
        }
        let pan = msg.pan();
        let digits = pan.as_ref().map_or(&[][..], |p| p.digits());
        let Some(route) = self.shared.routes.lookup(digits) else {
            return self.respond(&msg, codes::NO_ROUTE, started);
        };
        let Some(txn) = self.journal_request(&msg, route.primary, &Score::default()) else {
            return self.respond(&msg, codes::SYSTEM_MALFUNCTION, started);
        };
        let info = TxnInfo {
            txn,
            content,
            card: None,
            points: 0,
        };
        if let Err(code) = self.forward(&msg, key, route, info, started) {
            self.respond_final(&msg, txn, code, started);
        }
    }

    /// Route, journal, forward: takes the request into this connection's
    /// requests in flight and holds its forward until `Forwarded` is
    /// durable. The error is the code to answer with (91: no acquirer
    /// up).
    pub(super) fn forward(
        &mut self,
        msg: &Message,
        key: MatchKey,
        target: RouteTarget,
        txn: TxnInfo,
        started: Instant,
    ) -> Result<(), [u8; 2]> {
        let hash = key.spread_hash();
        let acquirers = &self.shared.acquirers;
        let chosen = [Some(target.primary), target.backup]
            .into_iter()
            .flatten()
            .find_map(|i| {
                let a = acquirers.get(i as usize)?;
                pick_link(a, hash).map(|l| (i, a, l))
            });
        let Some((index, acquirer, link)) = chosen else {
            return Err(codes::ISSUER_UNAVAILABLE);
        };
        let host_spec = acquirer.spec;
        let mut echo = EchoSpans::UNKNOWN;
        let plan = ForwardPlan {
            key,
            acquirer: index,
            link,
            host_spec,
            txn,
            started,
        };
        let body = match self.secured_host_body(msg, acquirer) {
            // Rewritten: the link finds the echoed fields itself.
            Ok(Secured::Body(body)) => body,
            Ok(Secured::Later(command, timeout)) => {
                // A network HSM translates DE52; the forward goes on when
                // it answers (`forward_translated`).
                self.translate_later(msg, plan, command, timeout);
                return Ok(());
            }
            Ok(Secured::AsIs) if std::ptr::eq(host_spec, self.spec) => {
                // Parsed already: the link checks the answer against these.
                echo = EchoSpans::of(msg, acquirer.answer_must_match);
                msg.frame().clone()
            }
            Ok(Secured::AsIs) => {
                let mut b = MessageBuilder::new(host_spec, msg.mti());
                b.copy_all(msg);
                match b.to_bytes() {
                    Ok(out) => out.freeze(),
                    Err(e) => {
                        tracing::warn!(peer = %self.peer, acquirer = %acquirer.name,
                            "request can not be written in the host's spec: {e}");
                        return Err(codes::FORMAT_ERROR);
                    }
                }
            }
            Err((code, why)) => {
                if let Some(why) = why {
                    self.security_refused(msg, why);
                }
                return Err(code);
            }
        };
        self.send_forward(msg, plan, body, echo)
    }

    /// The forward's last step: journals `Forwarded`, takes the request
    /// into this connection's requests in flight and holds its forward
    /// until the record is durable.
    pub(super) fn send_forward(
        &mut self,
        msg: &Message,
        plan: ForwardPlan,
        body: Bytes,
        echo: EchoSpans,
    ) -> Result<(), [u8; 2]> {
        let ForwardPlan {
            key,
            acquirer: index,
            link,
            host_spec,
            txn:
                TxnInfo {
                    txn,
                    content,
                    card,
                    points,
                },
            started,
        } = plan;
        // The forward, not the answers, waits for this record.
        let Some(seq) = self.append(Record::Forwarded {
            txn,
            at_ms: self.now.unix_ms,
            acquirer: index,
        }) else {
            return Err(codes::SYSTEM_MALFUNCTION);
        };
        let entry = self.pending.vacant_entry();
        let token = entry.key() as u32;
        entry.insert(Pending {
            request: msg.frame().clone(),
            mti: msg.mti(),
            key,
            card,
            host_spec,
            started,
            content,
            acquirer: index,
            points,
            txn,
            epoch: self.shared.epoch,
        });
        self.take_in_flight();
        self.hold(
            seq,
            ForwardOut {
                acquirer: index,
                link,
                epoch: self.shared.epoch,
                key,
                body,
                echo,
                token,
            },
        );
        Ok(())
    }
}

/// The index of a link that is up, chosen by `hash` among those up (as
/// [`AcquirerHandle::pick`]): one key lands on the same link while the set
/// of links up holds, so that link's table catches duplicates.
fn pick_link(a: &AcquirerHandle, hash: u64) -> Option<usize> {
    let up = a.links.iter().filter(|l| l.is_up()).count();
    if up == 0 {
        return None;
    }
    let n = (hash % up as u64) as usize;
    a.links
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_up())
        .nth(n)
        .map(|(i, _)| i)
}
