//! The card security steps of a terminal's request (see
//! [`crate::switch::card_security`]): its MAC checked before anything
//! else is done with it, DE52 translated for the acquirer as the request
//! is written in the host's form, and answers MACed under the terminal's
//! key as they are framed. A refusal is journaled (the request and its
//! answer), counted by reason and logged (rate-limited), and never
//! forwarded.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tracing::warn;

use super::core::TerminalCore;
use super::records::JournalAppend;
use crate::codes;
use crate::iso8583::{Message, MessageBuilder};
use crate::switch::acquirer::AcquirerHandle;
use crate::switch::card_security::{self, Refusal};
use crate::switch::fraud::Score;
use crate::telemetry;

impl<J: JournalAppend> TerminalCore<J> {
    /// Does the request's MAC hold, as its terminal's profile asks? When
    /// not, it has been answered 63.
    pub(super) fn mac_holds(&mut self, msg: &Message, tid: &[u8], started: Instant) -> bool {
        let Some(sec) = &self.shared.security else {
            return true;
        };
        let Some(profile) = sec.profiles.find(tid) else {
            return true;
        };
        let checked = card_security::check_mac(
            &sec.hsm,
            profile.mac,
            profile.mac_algorithm,
            profile.mac_key.as_ref(),
            msg,
        );
        match checked {
            Ok(()) => true,
            Err(r) => {
                self.refuse(msg, r, codes::SECURITY_VIOLATION, started);
                false
            }
        }
    }

    /// Journals the request and its answer `code`, counts and logs why.
    fn refuse(&mut self, msg: &Message, why: Refusal, code: [u8; 2], started: Instant) {
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
    /// removed): `Ok(None)` when it goes as it is. The error is the code
    /// to answer with and the refusal to count
    /// ([`TerminalCore::security_refused`]).
    pub(super) fn secured_host_body(
        &self,
        msg: &Message,
        acquirer: &AcquirerHandle,
    ) -> Result<Option<Bytes>, ([u8; 2], Option<Refusal>)> {
        let Some(sec) = &self.shared.security else {
            return Ok(None);
        };
        let zone = &acquirer.security;
        let has_mac = msg.has(64) || msg.has(128);
        if !has_mac && (zone.pin.is_none() || !msg.has(52)) {
            return Ok(None);
        }
        let profile = msg
            .terminal_id()
            .and_then(|t| sec.profiles.find(t.trimmed()).cloned());
        let pan = msg.pan();
        let digits = pan.as_ref().map_or(&[][..], |p| p.digits());
        let pin =
            match card_security::translate_pin(&sec.hsm, profile.as_deref(), zone, msg, digits) {
                Ok(p) => p,
                Err(why) => return Err((sec.bad_pin_code, Some(why))),
            };
        let mut b = MessageBuilder::new(acquirer.spec, msg.mti());
        b.copy_all(msg).remove(64).remove(128);
        if let Some(block) = &pin {
            b.set(52, block.as_bytes());
            match &zone.de53 {
                Some(d) => b.set(53, d.as_bytes()),
                None => b.remove(53),
            };
        }
        match b.to_bytes() {
            Ok(out) => Ok(Some(out.freeze())),
            Err(e) => {
                warn!(peer = %self.peer, acquirer = %acquirer.name,
                    "request can not be written for the host: {e}");
                Err((codes::FORMAT_ERROR, None))
            }
        }
    }

    /// MACs the answer framed from `start` in the write buffer under its
    /// terminal's key, when the terminal's profile asks for it (any MAC
    /// it carried, a host's, replaced). On error the answer is removed.
    pub(super) fn mac_answer(&mut self, start: usize) -> Result<(), String> {
        let shared = self.shared.clone();
        let Some(sec) = &shared.security else {
            return Ok(());
        };
        if !sec.profiles.any_macs_answers() {
            return Ok(());
        }
        let body = Bytes::copy_from_slice(&self.wbuf[start..]);
        let answer = Message::parse(body, self.spec).map_err(|e| e.to_string())?;
        let Some(tid) = answer.terminal_id() else {
            return Ok(());
        };
        let Some(profile) = sec.profiles.find(tid.trimmed()) else {
            return Ok(());
        };
        let Some(key) = profile.mac_key.as_ref().filter(|_| profile.macs_answers()) else {
            return Ok(());
        };
        let mut b = MessageBuilder::new(self.spec, answer.mti());
        b.copy_all(&answer);
        let mut out = BytesMut::with_capacity(answer.frame().len() + 32);
        card_security::pack_with_mac(&sec.hsm, profile.mac_algorithm, key, &b, &mut out)?;
        self.wbuf.truncate(start);
        self.wbuf.extend_from_slice(&out);
        Ok(())
    }
}
