//! The card security steps of a terminal's request (see
//! [`crate::switch::card_security`]): its MAC checked before anything
//! else is done with it, DE52 translated for the acquirer as the request
//! is written in the host's form, and answers MACed under the terminal's
//! key as they are framed. A refusal is journaled (the request and its
//! answer), counted by reason and logged (rate-limited), and never
//! forwarded. The soft HSM is called in line; a network HSM's commands
//! leave as effects and the request waits for them (`hsm.rs`).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{info, warn};

use super::core::{NETWORK_ECHO, TerminalCore};
use super::records::JournalAppend;
use crate::codes;
use crate::iso8583::{Message, MessageBuilder};
use crate::security::hsm::HsmCommand;
use crate::security::pinblock::EncryptedPinBlock;
use crate::security::store::KeyType;
use crate::switch::acquirer::AcquirerHandle;
use crate::switch::card_security::effects::KeyInstall;
use crate::switch::card_security::exchange::{self, ExchangedKey};
use crate::switch::card_security::{self, Hsm, PinKey, Refusal};
use crate::switch::fraud::Score;
use crate::telemetry;

impl<J: JournalAppend> TerminalCore<J> {
    /// Does the request's MAC hold, as its terminal's profile asks? When
    /// not, it has been answered 63, or (a network HSM) it waits for the
    /// HSM's answer, which hands it to the pipeline again
    /// ([`TerminalCore::handle_hsm_reply`]).
    pub(super) fn mac_holds(&mut self, msg: &Message, tid: &[u8], started: Instant) -> bool {
        let Some(sec) = &self.shared.security else {
            return true;
        };
        if std::mem::take(&mut self.hsm.mac_taken) {
            return true;
        }
        let Some(profile) = sec.profiles.find(tid) else {
            return true;
        };
        let key = profile.mac_key.as_ref().map(|k| k.name(tid));
        let command = card_security::mac_check_command(
            profile.mac,
            profile.mac_algorithm,
            key.as_ref(),
            &profile.mac_fields,
            msg,
        );
        let checked = match (command, &sec.hsm) {
            (Ok(None), _) => Ok(()),
            (Ok(Some(c)), Hsm::Soft(h)) => {
                card_security::mac_verdict(h.execute_at(&c, self.now.unix_ms))
            }
            (Ok(Some(c)), Hsm::Network(n)) => {
                let timeout = n.timeout();
                self.check_mac_later(msg, c, timeout, started);
                return false;
            }
            (Err(r), _) => Err(r),
        };
        match checked {
            Ok(()) => true,
            Err(r) => {
                self.refuse(msg, r, refusal_code(r, codes::SECURITY_VIOLATION), started);
                false
            }
        }
    }

    /// Journals the request and its answer `code`, counts and logs why.
    pub(super) fn refuse(&mut self, msg: &Message, why: Refusal, code: [u8; 2], started: Instant) {
        self.security_refused(msg, why);
        match self.journal_request(msg, u16::MAX, &Score::default()) {
            Some(txn) => self.respond_final(msg, txn, code, started),
            None => self.respond(msg, codes::SYSTEM_MALFUNCTION, started),
        }
    }

    /// The metric and the (rate-limited) warn line of a refusal.
    pub(super) fn security_refused(&mut self, msg: &Message, why: Refusal) {
        metrics::counter!(telemetry::SECURITY_REFUSALS, "reason" => why.label()).increment(1);
        if let Some(suppressed) = self.security_log.allow(self.now.at) {
            let terminal = msg.terminal_id();
            let terminal =
                String::from_utf8_lossy(terminal.as_ref().map_or(&b"-"[..], |t| t.trimmed()));
            let pan = msg.pan().map(|p| p.masked());
            let pan = pan.as_ref().map_or("-", |p| p.as_str());
            warn!(peer = %self.peer, %terminal, pan, stan = msg.stan(), reason = why.label(), suppressed,
                "card security refused the request; not forwarded");
        }
    }

    /// The request as the acquirer gets it when card security changes it
    /// (DE52 under the zone's PIN key, DE53 the zone's, the terminal's MAC
    /// removed): `AsIs` when it goes as it is, `Later` when a network HSM
    /// must translate DE52 first. The error is the code to answer with
    /// and the refusal to count ([`TerminalCore::security_refused`]).
    pub(super) fn secured_host_body(
        &self,
        msg: &Message,
        acquirer: &AcquirerHandle,
    ) -> Result<Secured, ([u8; 2], Option<Refusal>)> {
        let Some(sec) = &self.shared.security else {
            return Ok(Secured::AsIs);
        };
        let zone = &acquirer.security;
        let has_mac = msg.has(64) || msg.has(128);
        if !has_mac && (zone.pin.is_none() || !msg.has(52)) {
            return Ok(Secured::AsIs);
        }
        let profile = msg
            .terminal_id()
            .and_then(|t| sec.profiles.find(t.trimmed()).cloned());
        let pan = msg.pan();
        let digits = pan.as_ref().map_or(&[][..], |p| p.digits());
        let refused = |why| (refusal_code(why, sec.bad_pin_code), Some(why));
        let command =
            card_security::pin_command(profile.as_deref(), zone, msg, digits).map_err(refused)?;
        let pin = match (command, &sec.hsm) {
            (None, _) => None,
            (Some(c), Hsm::Soft(h)) => Some(
                card_security::pin_verdict(h.execute_at(&c, self.now.unix_ms)).map_err(refused)?,
            ),
            (Some(c), Hsm::Network(n)) => return Ok(Secured::Later(c, n.timeout())),
        };
        self.secured_body(msg, acquirer, pin.as_ref())
            .map(Secured::Body)
            .map_err(|code| (code, None))
    }

    /// The request in the acquirer's spec, its MAC removed and, with
    /// `pin`, DE52 and DE53 the zone's.
    pub(super) fn secured_body(
        &self,
        msg: &Message,
        acquirer: &AcquirerHandle,
        pin: Option<&EncryptedPinBlock>,
    ) -> Result<Bytes, [u8; 2]> {
        let mut b = MessageBuilder::new(acquirer.spec, msg.mti());
        b.copy_all(msg).remove(64).remove(128);
        if let Some(block) = pin {
            b.set(52, block.as_bytes());
            match &acquirer.security.de53 {
                Some(d) => b.set(53, d.as_bytes()),
                None => b.remove(53),
            };
        }
        // A zone that MACs its requests gets this one with a placeholder
        // MAC that the link overwrites in place, rather than packing it
        // all again to add the field.
        if acquirer.security.mac.is_some() && matches!(msg.mti().class(), 1 | 2 | 4) {
            let mut out = BytesMut::with_capacity(msg.frame().len() + 16);
            let placeholder =
                b.pack_with_mac(&mut out, |_, len| Ok(std::iter::repeat_n(0, len).collect()));
            if placeholder.is_ok() {
                return Ok(out.freeze());
            }
        }
        match b.to_bytes() {
            Ok(out) => Ok(out.freeze()),
            Err(e) => {
                warn!(peer = %self.peer, acquirer = %acquirer.name,
                    "request can not be written for the host: {e}");
                Err(codes::FORMAT_ERROR)
            }
        }
    }

    /// A terminal's 0800 asking for new keys (DE70 its profile's
    /// `key_change_code`, the profile with a TMK): a new TPK and TAK, each
    /// installed (the key store rewritten) before the 0810 gives them
    /// under the TMK with their KCVs in DE48. False when the 0800 is not
    /// one.
    pub(super) fn key_change(&mut self, msg: &Message, started: Instant) -> bool {
        let shared = self.shared.clone();
        let Some(sec) = &shared.security else {
            return false;
        };
        let Some(tid) = msg.terminal_id() else {
            return false;
        };
        let tid = tid.trimmed();
        let Some(profile) = sec.profiles.find(tid) else {
            return false;
        };
        let Some(tmk) = &profile.tmk else {
            return false;
        };
        if msg.network_code() != Some(profile.key_change_code) {
            return false;
        }
        if !self.terminal_bound(tid) {
            self.answer_key_change(msg, codes::UNKNOWN_TERMINAL, None, started);
            return true;
        }
        let tmk = tmk.name(tid);
        let pin_key = match &profile.pin {
            Some(PinKey::Tpk(k)) => Some(k),
            _ => None,
        };
        let wanted = [
            (*b"TPK", pin_key, KeyType::Tpk),
            (*b"TAK", profile.mac_key.as_ref(), KeyType::Tak),
        ];
        let hsm = match &sec.hsm {
            Hsm::Soft(h) => h,
            Hsm::Network(n) => {
                // The HSM makes each key (A0, under its LMK and the TMK),
                // one command after the other; the 0810 goes once the
                // blocks are in the key store.
                let todo = wanted
                    .into_iter()
                    .filter_map(|(tag, name, t)| Some((tag, name?.name(tid), t)))
                    .collect();
                self.generate_later(msg, n.clone(), tmk, todo, started);
                return true;
            }
        };
        // The keys are made here (in memory, microseconds); the key store
        // file is rewritten off this thread, and the 0810 goes once it is.
        let mut exchanged = Vec::with_capacity(2);
        let mut install = Vec::with_capacity(2);
        for (tag, name, key_type) in wanted {
            let Some(name) = name else { continue };
            match hsm.new_key_under(&tmk, key_type) {
                Ok((key, under)) => {
                    exchanged.push(ExchangedKey {
                        tag,
                        under,
                        kcv: key.kcv(),
                    });
                    install.push((name.name(tid), key_type, key));
                }
                Err(e) => {
                    let terminal = String::from_utf8_lossy(tid);
                    warn!(peer = %self.peer, %terminal, "terminal key change failed: {e}");
                    metrics::counter!(telemetry::KEY_CHANGES, "side" => "terminal", "result" => "failed").increment(1);
                    self.answer_key_change(msg, codes::SYSTEM_MALFUNCTION, None, started);
                    return true;
                }
            }
        }
        let work = KeyInstall {
            hsm: hsm.clone(),
            keys: install,
            now_ms: self.now.unix_ms,
            overlap_ms: sec.key_overlap_ms,
        };
        self.install_later(msg, work, exchanged, started);
        true
    }

    /// The end of a key change: the 0810, with the keys when the key
    /// store took them.
    pub(super) fn key_change_done(
        &mut self,
        msg: &Message,
        installed: Result<(), crate::security::hsm::HsmError>,
        exchanged: &[ExchangedKey],
        started: Instant,
    ) {
        let tid = msg.terminal_id();
        let terminal = String::from_utf8_lossy(tid.as_ref().map_or(&b"-"[..], |t| t.trimmed()));
        let code = match &installed {
            Ok(()) => {
                let kcvs: Vec<String> = exchanged.iter().map(|k| k.kcv.to_string()).collect();
                info!(peer = %self.peer, %terminal, kcvs = ?kcvs, "terminal keys changed");
                codes::APPROVED
            }
            Err(e) => {
                warn!(peer = %self.peer, %terminal, "terminal key change failed: {e}");
                codes::SYSTEM_MALFUNCTION
            }
        };
        metrics::counter!(telemetry::KEY_CHANGES, "side" => "terminal", "result" => if installed.is_ok() { "ok" } else { "failed" }).increment(1);
        let de48 = installed.is_ok().then(|| exchange::format(exchanged));
        self.answer_key_change(msg, code, de48.as_deref(), started);
    }

    pub(super) fn answer_key_change(
        &mut self,
        msg: &Message,
        code: [u8; 2],
        de48: Option<&str>,
        started: Instant,
    ) {
        let Some(mut b) = MessageBuilder::response_to(msg, NETWORK_ECHO) else {
            self.outcomes += 1;
            return;
        };
        b.set(39, &code);
        if let Some(d) = de48 {
            b.set(48, d.as_bytes());
        }
        self.write_packed(&b, msg.mti(), code, started);
    }

    /// MACs the answer framed from `start` in the write buffer under its
    /// terminal's key, when the terminal's profile asks for it (any MAC
    /// it carried, a host's, replaced). On error the answer is removed.
    pub(super) fn mac_answer(&mut self, start: usize) -> Result<(), String> {
        // Every answer passes here: without a profile that MACs answers,
        // leave before touching the shared state's reference count.
        let macs_answers =
            (self.shared.security.as_ref()).is_some_and(|sec| sec.profiles.any_macs_answers());
        if !macs_answers {
            return Ok(());
        }
        let shared = self.shared.clone();
        let Some(sec) = &shared.security else {
            return Ok(());
        };
        if !sec.profiles.any_macs_answers() || self.hsm.unmaced {
            return Ok(());
        }
        let body = Bytes::copy_from_slice(&self.wbuf[start..]);
        let answer = Message::parse(body, self.spec).map_err(|e| e.to_string())?;
        // Transaction answers only, as the acquirers' MACs.
        if !matches!(answer.mti().class(), 1 | 2 | 4) {
            return Ok(());
        }
        let Some(tid) = answer.terminal_id() else {
            return Ok(());
        };
        let Some(profile) = sec.profiles.find(tid.trimmed()) else {
            return Ok(());
        };
        let Some(key) = profile.mac_key.as_ref().filter(|_| profile.macs_answers()) else {
            return Ok(());
        };
        let key = key.name(tid.trimmed());
        if let Hsm::Soft(h) = &sec.hsm
            && let Some(done) = card_security::remac_in_place(
                h,
                profile.mac_algorithm,
                &key,
                &profile.mac_fields,
                &answer,
                &mut self.wbuf[start..],
            )
        {
            return done;
        }
        let mut b = MessageBuilder::new(self.spec, answer.mti());
        b.copy_all(&answer);
        let mut out = BytesMut::with_capacity(answer.frame().len() + 32);
        match &sec.hsm {
            Hsm::Soft(h) => card_security::pack_with_mac(
                h,
                profile.mac_algorithm,
                &key,
                &profile.mac_fields,
                &b,
                &mut out,
            )?,
            Hsm::Network(n) => {
                let made = card_security::pack_for_mac(
                    profile.mac_algorithm,
                    &key,
                    &profile.mac_fields,
                    &b,
                    &mut out,
                )?;
                self.wbuf.truncate(start);
                self.wbuf.extend_from_slice(&out);
                self.mac_answer_later(start, made, n.timeout());
                return Ok(());
            }
        }
        self.wbuf.truncate(start);
        self.wbuf.extend_from_slice(&out);
        Ok(())
    }
}

/// The code a refusal is answered with: 96 when the HSM did not answer,
/// else `code` (63 for a MAC, `bad_pin_code` for a PIN block).
pub(super) fn refusal_code(why: Refusal, code: [u8; 2]) -> [u8; 2] {
    match why {
        Refusal::HsmUnavailable => codes::SYSTEM_MALFUNCTION,
        _ => code,
    }
}

/// What a request becomes for its acquirer ([`TerminalCore::secured_host_body`]).
pub(super) enum Secured {
    /// Sent as it came (in the host's spec).
    AsIs,
    /// Rewritten: DE52 and DE53 the zone's, the terminal's MAC removed.
    Body(Bytes),
    /// DE52 must first be translated by the network HSM: this command,
    /// given up after this long.
    Later(HsmCommand, Duration),
}
