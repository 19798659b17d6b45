//! Card security work the core hands its driver as effects rather than
//! doing in line: commands for a network HSM (`hsm = "payshield"`), whose
//! answers come later, and the key store's rewrite on a terminal's key
//! change (a blocking file write). The soft HSM's commands stay in line
//! ([`super::security`]); a connection without `[security]` never comes
//! here.
//!
//! Each piece of work parks what waits for it in [`HsmState::calls`] and
//! leaves through [`TerminalCore::poll_hsm`]; its answer comes back
//! through [`TerminalCore::handle_hsm_reply`], or its deadline passes
//! first ([`TerminalCore::handle_timeout`]) and the request gets 96,
//! journaled (its answer without a MAC: the HSM is what did not answer,
//! and it is not asked again). Meanwhile the connection's other requests
//! go on. What waits:
//!
//! * a request whose MAC the HSM checks: verified, it is handed to its
//!   pipeline again from the start, its MAC taken (`mac_taken`); refused,
//!   63 as in line;
//! * a request whose DE52 the HSM translates (journaled, routed): the
//!   forward's last step ([`TerminalCore::send_forward`]) runs with the
//!   zone's PIN block, or it is answered 81 (96 without an answer);
//! * an answer whose MAC the HSM makes: it is framed in the write buffer
//!   in its place with a placeholder MAC, and nothing from it on is
//!   written until the MAC is filled in. Without one in time it is
//!   replaced by a 96 without a MAC (a host approval that was there is
//!   reversed, as an answer the terminal never got);
//! * a key change's 0800: its 0810 goes once the key store file holds the
//!   new keys (the guarantee of the in-line install before); with a
//!   network HSM the keys are first made by it, one A0 per key (each
//!   under the LMK and the TMK), and without an answer in time the 0810
//!   is a 96 and nothing changes.
//!
//! Parked requests count against `max_in_flight_per_connection` with the
//! forwarded ones: past it a request is answered 96 at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::warn;

use super::ECHO_FIELDS;
use super::core::TerminalCore;
use super::forward::ForwardPlan;
use super::records::JournalAppend;
use super::security::refusal_code;
use crate::clock::Now;
use crate::codes;
use crate::iso8583::{Message, MessageBuilder};
use crate::security::hsm::{HsmCommand, HsmError, KeyName};
use crate::security::keys::Algorithm;
use crate::security::store::{KeyType, StoredBlock};
use crate::switch::acquirer::{EchoSpans, MatchKey};
use crate::switch::analytics::Event;
use crate::switch::card_security::effects::{
    BlockInstall, Calls, HsmCall, HsmDone, HsmWork, KeyInstall,
};
use crate::switch::card_security::exchange::ExchangedKey;
use crate::switch::card_security::{self, MacToMake, NetworkHsm, Refusal};

/// The core's card security work under way.
#[derive(Default)]
pub struct HsmState {
    calls: Calls<Parked>,
    /// Parked requests (not answers): counted in the connection's
    /// in-flight limit and in its one-outcome-per-request invariant.
    requests: usize,
    /// Parked answers: the write buffer stops at the first of them.
    answers: usize,
    /// Set while a request whose MAC the HSM verified is handed to its
    /// pipeline again: the MAC step takes it.
    pub(super) mac_taken: bool,
    /// Set while a request is answered 96 because the HSM did not answer:
    /// that answer goes without a MAC, at once, rather than wait for the
    /// same HSM again.
    pub(super) unmaced: bool,
}

impl HsmState {
    /// Requests parked.
    pub(super) fn requests(&self) -> usize {
        self.requests
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.calls.next_deadline()
    }
}

enum Parked {
    /// The request's MAC, being verified.
    Mac { frame: Bytes, started: Instant },
    /// The request's DE52, being translated; then the forward goes on.
    Pin {
        frame: Bytes,
        plan: ForwardPlan,
        event: Option<Event>,
    },
    /// A framed answer's MAC, being made. Stream offsets (bytes written
    /// before it plus its place in the write buffer): of its length
    /// header, of its body, and just past it.
    Answer {
        frame_at: u64,
        body_at: u64,
        end: u64,
        field: usize,
    },
    /// A terminal key change's keys, being made by the network HSM.
    Generate(Box<Generating>),
    /// A key change's keys, being written to the key store.
    Keys {
        frame: Bytes,
        started: Instant,
        exchanged: Vec<ExchangedKey>,
    },
}

/// A terminal key change through the network HSM: one A0 per key, in
/// turn, each key under the LMK (to use) and under the TMK (to send).
pub(super) struct Generating {
    frame: Bytes,
    started: Instant,
    network: Arc<NetworkHsm>,
    tmk: KeyName,
    /// Still to make, in order; the first is being made.
    todo: Vec<([u8; 3], KeyName, KeyType)>,
    made: Vec<(ExchangedKey, StoredBlock)>,
}

impl Parked {
    fn is_request(&self) -> bool {
        !matches!(self, Parked::Answer { .. })
    }
}

impl<J: JournalAppend> TerminalCore<J> {
    // ---- the effects' inputs and outputs ------------------------------

    /// Work for the driver: a command for the network HSM, or a key store
    /// rewrite; its outcome comes back to [`TerminalCore::handle_hsm_reply`]
    /// with the call's id.
    pub fn poll_hsm(&mut self) -> Option<HsmCall> {
        self.hsm.calls.poll_call()
    }

    /// The outcome of the call `id`. A call already given up (its
    /// deadline passed) finds nothing: dropped.
    pub fn handle_hsm_reply(&mut self, now: Now, id: u64, done: HsmDone) {
        self.now = now;
        let Some(parked) = self.take_parked(id) else {
            return;
        };
        match parked {
            Parked::Mac { frame, started } => self.mac_checked(frame, started, done.into_reply()),
            Parked::Pin { frame, plan, event } => {
                self.pin_translated(frame, plan, event, done.into_reply())
            }
            Parked::Answer {
                frame_at,
                body_at,
                end,
                field,
            } => self.answer_mac_made(frame_at, body_at, end, field, done.into_reply()),
            Parked::Generate(g) => self.key_generated(g, done.into_reply()),
            Parked::Keys {
                frame,
                started,
                exchanged,
            } => self.keys_installed(frame, started, exchanged, done.into_installed()),
        }
        self.settle();
    }

    /// The calls whose deadline has passed: their requests get 96, their
    /// answers are replaced by a 96 (from [`TerminalCore::handle_timeout`]).
    pub(super) fn expire_hsm(&mut self) {
        let at = self.now.at;
        while let Some(parked) = self.hsm.calls.expired(at) {
            self.count_out(&parked);
            let timeout = Err(HsmError::Timeout(Duration::ZERO));
            match parked {
                Parked::Mac { frame, started } => self.mac_checked(frame, started, timeout),
                Parked::Pin { frame, plan, event } => {
                    self.pin_translated(frame, plan, event, timeout)
                }
                Parked::Answer {
                    frame_at,
                    body_at,
                    end,
                    field,
                } => self.answer_mac_made(frame_at, body_at, end, field, timeout),
                Parked::Generate(g) => self.key_generated(g, timeout),
                // Installs have no deadline: the file is written or not.
                Parked::Keys {
                    frame,
                    started,
                    exchanged,
                } => self.keys_installed(frame, started, exchanged, timeout.map(|_| ())),
            }
        }
    }

    /// How much of the write buffer may be written: up to the first
    /// answer whose MAC has not come.
    #[inline]
    pub(super) fn flush_limit(&self) -> usize {
        if self.hsm.answers == 0 {
            return self.wbuf.len();
        }
        let first = self
            .hsm
            .calls
            .iter()
            .filter_map(|(_, p)| match p {
                Parked::Answer { frame_at, .. } if *frame_at >= self.written => Some(*frame_at),
                _ => None,
            })
            .min();
        first.map_or(self.wbuf.len(), |at| {
            ((at - self.written) as usize).min(self.wbuf.len())
        })
    }

    /// Is a request with `key` past admission and waiting for the HSM to
    /// translate its PIN (a duplicate of it is one of a request in flight)?
    pub(super) fn parked_key(&self, key: &MatchKey) -> bool {
        self.hsm.requests > 0
            && self
                .hsm
                .calls
                .iter()
                .any(|(_, p)| matches!(p, Parked::Pin { plan, .. } if plan.key == *key))
    }

    // ---- parking -------------------------------------------------------

    fn park(&mut self, work: HsmWork, timeout: Option<Duration>, parked: Parked) {
        if parked.is_request() {
            self.hsm.requests += 1;
        } else {
            self.hsm.answers += 1;
        }
        let deadline = timeout.map(|t| self.now.at + t);
        self.hsm.calls.issue(work, deadline, parked);
    }

    fn take_parked(&mut self, id: u64) -> Option<Parked> {
        let parked = self.hsm.calls.take(id)?;
        self.count_out(&parked);
        Some(parked)
    }

    fn count_out(&mut self, parked: &Parked) {
        if parked.is_request() {
            self.hsm.requests -= 1;
        } else {
            self.hsm.answers -= 1;
        }
    }

    /// Room for one more parked request within the connection's limit;
    /// when there is none the request has been answered 96.
    fn room_to_park(&mut self, msg: &Message, started: Instant) -> bool {
        let max = self.shared.terminals.max_in_flight_per_connection;
        if self.pending.len() + self.hsm.requests < max {
            return true;
        }
        self.shared.events.shed_connection_limit.increment(1);
        self.respond(msg, codes::SYSTEM_MALFUNCTION, started);
        false
    }

    /// The request waits for the HSM to verify its MAC (`command`).
    pub(super) fn check_mac_later(
        &mut self,
        msg: &Message,
        command: HsmCommand,
        timeout: Duration,
        started: Instant,
    ) {
        if !self.room_to_park(msg, started) {
            return;
        }
        let parked = Parked::Mac {
            frame: msg.frame().clone(),
            started,
        };
        self.park(HsmWork::Command(command), Some(timeout), parked);
    }

    /// The routed, journaled request waits for the HSM to translate its
    /// DE52 (`command`). It passed admission: it fits the limit.
    pub(super) fn translate_later(
        &mut self,
        msg: &Message,
        plan: ForwardPlan,
        command: HsmCommand,
        timeout: Duration,
    ) {
        let parked = Parked::Pin {
            frame: msg.frame().clone(),
            plan,
            event: self.tap.current(),
        };
        self.park(HsmWork::Command(command), Some(timeout), parked);
    }

    /// The answer just packed at `start` in the write buffer, with a
    /// placeholder MAC, waits for the HSM to make its MAC.
    pub(super) fn mac_answer_later(&mut self, start: usize, made: MacToMake, timeout: Duration) {
        let body_at = self.written + start as u64;
        let parked = Parked::Answer {
            frame_at: body_at - self.framing.width() as u64,
            body_at,
            end: self.written + self.wbuf.len() as u64,
            field: made.field,
        };
        self.park(HsmWork::Command(made.command), Some(timeout), parked);
    }

    /// The answer framed from `at` in the write buffer was taken out (it
    /// could not be framed): a MAC waiting for it has no place any more.
    pub(super) fn answer_unframed(&mut self, at: usize) {
        if self.hsm.answers == 0 {
            return;
        }
        let from = self.written + at as u64;
        let gone = self
            .hsm
            .calls
            .take_where(|p| matches!(p, Parked::Answer { frame_at, .. } if *frame_at >= from));
        for p in &gone {
            self.count_out(p);
        }
    }

    /// The 0800 waits for its new keys to be written to the key store.
    pub(super) fn install_later(
        &mut self,
        msg: &Message,
        work: KeyInstall,
        exchanged: Vec<ExchangedKey>,
        started: Instant,
    ) {
        if !self.room_to_park(msg, started) {
            return;
        }
        let parked = Parked::Keys {
            frame: msg.frame().clone(),
            started,
            exchanged,
        };
        self.park(HsmWork::Install(work), None, parked);
    }

    /// The terminal's 0800 waits for the network HSM to make its new keys
    /// (`todo`: tag, name, type), then for the key store to take them.
    pub(super) fn generate_later(
        &mut self,
        msg: &Message,
        network: Arc<NetworkHsm>,
        tmk: KeyName,
        todo: Vec<([u8; 3], KeyName, KeyType)>,
        started: Instant,
    ) {
        if !self.room_to_park(msg, started) {
            return;
        }
        let made = Vec::with_capacity(todo.len());
        self.generate_next(Box::new(Generating {
            frame: msg.frame().clone(),
            started,
            network,
            tmk,
            todo,
            made,
        }));
    }

    /// The next key's A0, or, all made, their install.
    fn generate_next(&mut self, g: Box<Generating>) {
        if let Some((_, name, key_type)) = g.todo.first() {
            let command = HsmCommand::GenerateKey {
                key_type: *key_type,
                algorithm: Algorithm::Tdes,
                export_under: Some(g.tmk.clone()),
                label: Some(name.clone()),
            };
            let timeout = g.network.timeout();
            self.park(
                HsmWork::Command(command),
                Some(timeout),
                Parked::Generate(g),
            );
            return;
        }
        let g = *g;
        let (exchanged, blocks): (Vec<_>, Vec<_>) = g.made.into_iter().unzip();
        let overlap_ms = self
            .shared
            .security
            .as_ref()
            .map_or(0, |s| s.key_overlap_ms);
        let work = BlockInstall {
            keys: g.network.keys.clone(),
            blocks,
            now_ms: self.now.unix_ms,
            overlap_ms,
        };
        let parked = Parked::Keys {
            frame: g.frame,
            started: g.started,
            exchanged,
        };
        self.park(HsmWork::InstallBlocks(work), None, parked);
    }

    /// An A0's answer: the key under the LMK and under the TMK (as DE48
    /// carries it: 32 hex digits), or the key change fails (96).
    fn key_generated(
        &mut self,
        mut g: Box<Generating>,
        answer: Result<crate::security::hsm::HsmReply, HsmError>,
    ) {
        use crate::security::hsm::HsmReply;
        let failure = match answer {
            Ok(HsmReply::Key {
                block,
                exported: Some(under),
                kcv,
            }) if under.len() == 32 && under.bytes().all(|c| c.is_ascii_hexdigit()) => {
                if g.todo.is_empty() {
                    "an answer for no key asked".to_owned()
                } else {
                    let (tag, name, key_type) = g.todo.remove(0);
                    let stored = StoredBlock {
                        name: name.to_string(),
                        key_type,
                        algorithm: Algorithm::Tdes,
                        kcv,
                        block,
                    };
                    g.made.push((ExchangedKey { tag, under, kcv }, stored));
                    return self.generate_next(g);
                }
            }
            Ok(_) => "the HSM's answer is not a key under the TMK as 32 hex digits".to_owned(),
            Err(e) => e.to_string(),
        };
        let Ok(msg) = Message::parse(g.frame, self.spec) else {
            self.outcomes += 1;
            return;
        };
        let terminal = msg.terminal_id();
        let terminal =
            String::from_utf8_lossy(terminal.as_ref().map_or(&b"-"[..], |t| t.trimmed()));
        warn!(peer = %self.peer, %terminal, "terminal key change failed: {failure}");
        metrics::counter!(crate::telemetry::KEY_CHANGES, "side" => "terminal", "result" => "failed")
            .increment(1);
        self.answer_key_change(&msg, codes::SYSTEM_MALFUNCTION, None, g.started);
    }

    /// Runs `answer`, the answer to a request refused for `why`: without
    /// a MAC when the HSM is what did not answer.
    fn unmaced(&mut self, why: Refusal, answer: impl FnOnce(&mut Self)) {
        let was = self.hsm.unmaced;
        self.hsm.unmaced = was || why == Refusal::HsmUnavailable;
        answer(self);
        self.hsm.unmaced = was;
    }

    /// As [`TerminalCore::fail`] for a link's `why`: its 96 goes without a
    /// MAC when the link's HSM is what did not answer.
    pub(super) fn unmaced_failure(&self, why: crate::switch::acquirer::Failure) -> bool {
        use crate::switch::acquirer::Failure;
        !self.hsm.unmaced && matches!(why, Failure::HsmUnavailable | Failure::AnswerUnverified)
    }

    // ---- resuming ------------------------------------------------------

    fn mac_checked(
        &mut self,
        frame: Bytes,
        started: Instant,
        answer: Result<crate::security::hsm::HsmReply, HsmError>,
    ) {
        let Ok(msg) = Message::parse(frame, self.spec) else {
            // It parsed when it arrived.
            self.outcomes += 1;
            return;
        };
        if let Err(why) = card_security::mac_verdict(answer) {
            let code = refusal_code(why, codes::SECURITY_VIOLATION);
            self.tap.request(&msg);
            self.unmaced(why, |core| core.refuse(&msg, why, code, started));
            self.tap.done();
            return;
        }
        // Through its pipeline again, from the start: the checks before
        // the MAC are pure and pass as they did; the MAC step takes it.
        self.hsm.mac_taken = true;
        self.tap.request(&msg);
        let token = self.pending.vacant_key();
        self.dispatch(msg, started);
        self.hsm.mac_taken = false;
        if let Some(p) = self.pending.get(token) {
            self.tap.pending(token, p.txn, p.acquirer);
        }
        self.tap.done();
    }

    fn pin_translated(
        &mut self,
        frame: Bytes,
        plan: ForwardPlan,
        event: Option<Event>,
        answer: Result<crate::security::hsm::HsmReply, HsmError>,
    ) {
        let Ok(msg) = Message::parse(frame, self.spec) else {
            self.outcomes += 1;
            return;
        };
        self.tap.resume(event);
        let (txn, started) = (plan.txn.txn, plan.started);
        let token = self.pending.vacant_key();
        let mut refused = None;
        let sent = match card_security::pin_verdict(answer) {
            Ok(block) => {
                let shared = self.shared.clone();
                match shared.acquirers.get(plan.acquirer as usize) {
                    Some(a) => self
                        .secured_body(&msg, a, Some(&block))
                        .and_then(|body| self.send_forward(&msg, plan, body, EchoSpans::UNKNOWN)),
                    None => Err(codes::NO_ROUTE),
                }
            }
            Err(why) => {
                refused = Some(why);
                self.security_refused(&msg, why);
                let bad = self
                    .shared
                    .security
                    .as_ref()
                    .map_or(codes::BAD_PIN_BLOCK, |s| s.bad_pin_code);
                Err(refusal_code(why, bad))
            }
        };
        match sent {
            Ok(()) => {
                if let Some(p) = self.pending.get(token) {
                    self.tap.pending(token, p.txn, p.acquirer);
                }
            }
            Err(code) => match refused {
                Some(why) => self.unmaced(why, |core| core.respond_final(&msg, txn, code, started)),
                None => self.respond_final(&msg, txn, code, started),
            },
        }
        self.tap.done();
    }

    fn answer_mac_made(
        &mut self,
        frame_at: u64,
        body_at: u64,
        end: u64,
        field: usize,
        answer: Result<crate::security::hsm::HsmReply, HsmError>,
    ) {
        if frame_at < self.written {
            // The peer went: the write buffer was dropped with it.
            return;
        }
        let w = self.written;
        let body = (body_at - w) as usize..(end - w) as usize;
        debug_assert!(
            body.end <= self.wbuf.len(),
            "a parked answer past the write buffer"
        );
        if body.end > self.wbuf.len() {
            return;
        }
        let filled =
            card_security::fill_mac(self.spec, field, &mut self.wbuf[body.clone()], answer);
        let Err(why) = filled else {
            return;
        };
        // Without its MAC the answer can not go: a 96 (without a MAC: the
        // HSM is what failed) in its place.
        metrics::counter!(crate::telemetry::SECURITY_REFUSALS, "reason" => Refusal::HsmUnavailable.label())
            .increment(1);
        if let Some(suppressed) = self.security_log.allow(self.now.at) {
            warn!(peer = %self.peer, suppressed,
                "answer could not be MACed ({why}); answered 96 without a MAC instead");
        }
        let frame = (frame_at - w) as usize..body.end;
        let answer = Bytes::copy_from_slice(&self.wbuf[body]);
        let mut out = BytesMut::with_capacity(128);
        if let Ok(answer) = Message::parse(answer, self.spec) {
            let mut b = MessageBuilder::new(self.spec, answer.mti());
            b.copy_fields(&answer, ECHO_FIELDS)
                .set(39, &codes::SYSTEM_MALFUNCTION);
            let at = self.framing.begin(&mut out);
            if b.pack(&mut out).is_err() || self.framing.finish(&mut out, at).is_err() {
                out.clear();
            }
        }
        let delta = self.replace_framed(frame.clone(), &out);
        if delta != 0 {
            // The answers after it moved.
            let from = frame_at;
            for (_, p) in self.hsm.calls.iter_mut() {
                if let Parked::Answer {
                    frame_at,
                    body_at,
                    end,
                    ..
                } = p
                    && *frame_at > from
                {
                    *frame_at = frame_at.wrapping_add_signed(delta);
                    *body_at = body_at.wrapping_add_signed(delta);
                    *end = end.wrapping_add_signed(delta);
                }
            }
        }
    }

    fn keys_installed(
        &mut self,
        frame: Bytes,
        started: Instant,
        exchanged: Vec<ExchangedKey>,
        installed: Result<(), HsmError>,
    ) {
        match Message::parse(frame, self.spec) {
            Ok(msg) => self.key_change_done(&msg, installed, &exchanged, started),
            Err(_) => self.outcomes += 1,
        }
    }
}
