//! The link's card security work handed to its driver as effects rather
//! than done in line (see [`crate::switch::card_security::effects`]): a
//! network HSM's commands (`hsm = "payshield"`: the zone's MAC on a
//! request, the check of an answer's MAC), whose answers come later, and
//! the key store's rewrite on a host's key change (a blocking file
//! write). With the soft HSM the MACs stay in line.
//!
//! * A request waiting for its MAC is packed with a placeholder; it is
//!   framed and entered in the in-flight table when the MAC comes. It
//!   counts against `max_in_flight_per_link` with the table; without a
//!   MAC in time it fails `HsmUnavailable` (96, never sent).
//! * An answer waiting for its MAC's check is held; verified, it is
//!   matched as any answer; wrong, it is refused as in line (91 and a
//!   reversal); not checked in time, its request fails `AnswerUnverified`
//!   (96 and a reversal: the host may have acted on it).
//! * A host's 0800 key change waits for the key store to be written; its
//!   0810 goes then, on the same connection only. With a network HSM each
//!   key is first imported from under the ZMK (A6), its KCV compared
//!   with DE48's as the answer comes: a wrong one is 63, an HSM that does
//!   not answer in time 96, and either way the zone keeps its keys.
//!
//! A link that goes down fails the requests waiting for their MAC with
//! `LinkDown` (they were never sent) and drops the answers held (their
//! requests were failed with the table).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{LinkCore, LinkEvent, LinkState};
use crate::clock::Now;
use crate::codes;
use crate::iso8583::Message;
use crate::security::hsm::{HsmCommand, HsmError, HsmReply, KeyName};
use crate::security::keys::Algorithm;
use crate::security::store::{KeyType, StoredBlock};
use crate::switch::acquirer::matcher::MatchKey;
use crate::switch::acquirer::{EchoSpans, Failure, Outcome};
use crate::switch::card_security::effects::{BlockInstall, HsmCall, HsmDone, HsmWork, KeyInstall};
use crate::switch::card_security::exchange::ExchangedKey;
use crate::switch::card_security::{self, MacToMake, NetworkHsm, Refusal};

pub(super) enum Parked<R> {
    /// A request packed with a placeholder MAC in `field`.
    Seal {
        key: MatchKey,
        body: BytesMut,
        field: usize,
        reply: R,
    },
    /// A transaction answer whose MAC is being checked.
    Answer { frame: Bytes, key: MatchKey },
    /// A host's 0800 whose keys the network HSM is importing.
    Import(Box<Importing>),
    /// A host's 0800 whose keys are being written, on connection `epoch`.
    Keys { frame: Bytes, epoch: u64 },
}

/// A host's zone key change through the network HSM: one A6 per key, in
/// turn, each answer's KCV compared with the one in DE48 before the next;
/// the blocks are installed only once all are in.
pub(in crate::switch::acquirer::link) struct Importing {
    network: Arc<NetworkHsm>,
    zmk: KeyName,
    /// Still to import, in order; the first is being imported.
    todo: Vec<(KeyName, KeyType, ExchangedKey)>,
    made: Vec<StoredBlock>,
    frame: Bytes,
    /// The connection the 0800 came on.
    epoch: u64,
}

impl Importing {
    pub(super) fn new(
        network: Arc<NetworkHsm>,
        zmk: KeyName,
        todo: Vec<(KeyName, KeyType, ExchangedKey)>,
        frame: Bytes,
        epoch: u64,
    ) -> Box<Importing> {
        let made = Vec::with_capacity(todo.len());
        Box::new(Importing {
            network,
            zmk,
            todo,
            made,
            frame,
            epoch,
        })
    }
}

impl<R> LinkCore<R> {
    /// Work for the driver; its outcome comes back to
    /// [`LinkCore::handle_hsm_reply`] with the call's id.
    pub fn poll_hsm(&mut self) -> Option<HsmCall> {
        self.hsm.poll_call()
    }

    /// The outcome of the call `id`; a call given up already finds
    /// nothing.
    pub fn handle_hsm_reply(&mut self, now: Now, id: u64, done: HsmDone) {
        let Some(parked) = self.hsm.take(id) else {
            return;
        };
        match parked {
            Parked::Seal {
                key,
                body,
                field,
                reply,
            } => self.sealed(now, key, body, field, reply, done.into_reply()),
            Parked::Answer { frame, key } => {
                self.answer_checked(now, frame, key, done.into_reply())
            }
            Parked::Import(i) => self.key_imported(now, i, done.into_reply()),
            Parked::Keys { frame, epoch } => {
                self.keys_installed(frame, epoch, done.into_installed())
            }
        }
    }

    /// Calls past their deadline: given up.
    pub(super) fn expire_hsm(&mut self, now: Now) {
        while let Some(parked) = self.hsm.expired(now.at) {
            let timeout = Err(HsmError::Timeout(Duration::ZERO));
            match parked {
                Parked::Seal {
                    key,
                    body,
                    field,
                    reply,
                } => self.sealed(now, key, body, field, reply, timeout),
                Parked::Answer { frame, key } => self.answer_checked(now, frame, key, timeout),
                Parked::Import(i) => self.key_imported(now, i, timeout),
                Parked::Keys { frame, epoch } => {
                    self.keys_installed(frame, epoch, timeout.map(|_| ()))
                }
            }
        }
    }

    /// The request waits for the network HSM to make its MAC.
    pub(super) fn seal_later(
        &mut self,
        now: Now,
        key: MatchKey,
        body: BytesMut,
        made: MacToMake,
        timeout: Duration,
        reply: R,
    ) {
        let waiting = self
            .hsm
            .iter()
            .filter(|(_, p)| matches!(p, Parked::Seal { .. }))
            .count();
        if self.table.len() + waiting >= self.s.acquirer.max_in_flight_per_link {
            self.replies
                .push_back((reply, Outcome::Failed(Failure::LinkBusy)));
            return;
        }
        let parked = Parked::Seal {
            key,
            body,
            field: made.field,
            reply,
        };
        self.hsm.issue(
            HsmWork::Command(made.command),
            Some(now.at + timeout),
            parked,
        );
    }

    /// The answer waits for the network HSM to check its MAC.
    pub(super) fn check_answer_later(
        &mut self,
        now: Now,
        msg: &Message,
        key: MatchKey,
        command: HsmCommand,
        timeout: Duration,
    ) {
        // A host sending answers faster than the HSM checks them: held at
        // most as many as the table holds requests.
        if self.hsm.len() >= self.s.acquirer.max_in_flight_per_link {
            return self.refuse_answer(msg, key, "hsm_busy", Failure::AnswerUnverified);
        }
        let parked = Parked::Answer {
            frame: msg.frame().clone(),
            key,
        };
        self.hsm
            .issue(HsmWork::Command(command), Some(now.at + timeout), parked);
    }

    /// The host's 0800 waits for its keys to be written; no deadline (the
    /// file is written or the write fails).
    pub(super) fn install_later(&mut self, msg: &Message, install: KeyInstall) {
        let parked = Parked::Keys {
            frame: msg.frame().clone(),
            epoch: self.epoch,
        };
        self.hsm.issue(HsmWork::Install(install), None, parked);
    }

    /// The host's 0800 waits for the network HSM to import its keys.
    pub(super) fn import_later(&mut self, now: Now, msg: &Message, importing: Box<Importing>) {
        debug_assert_eq!(&importing.frame, msg.frame(), "the 0800 being answered");
        self.import_next(now, importing);
    }

    /// The next key's A6, or, all imported and checked, their install.
    fn import_next(&mut self, now: Now, i: Box<Importing>) {
        if let Some((name, key_type, e)) = i.todo.first() {
            let command = HsmCommand::ImportKey {
                key_type: *key_type,
                zmk: i.zmk.clone(),
                under: e.under.clone(),
                label: Some(name.clone()),
            };
            let deadline = now.at + i.network.timeout();
            self.hsm
                .issue(HsmWork::Command(command), Some(deadline), Parked::Import(i));
            return;
        }
        let i = *i;
        let work = BlockInstall {
            keys: i.network.keys.clone(),
            blocks: i.made,
            now_ms: now.unix_ms,
            overlap_ms: self.s.acquirer.security.key_overlap_ms,
        };
        let parked = Parked::Keys {
            frame: i.frame,
            epoch: i.epoch,
        };
        self.hsm.issue(HsmWork::InstallBlocks(work), None, parked);
    }

    /// An A6's answer: the key under the LMK, taken when its KCV is the
    /// one DE48 gave; else the key change is refused (63; 96 when the HSM
    /// did not answer) and the zone keeps its keys.
    fn key_imported(
        &mut self,
        now: Now,
        mut i: Box<Importing>,
        answer: Result<HsmReply, HsmError>,
    ) {
        let refusal = match answer {
            Ok(HsmReply::Key { block, kcv, .. }) => match i.todo.first() {
                Some((_, _, e)) if e.kcv != kcv => (
                    codes::SECURITY_VIOLATION,
                    format!(
                        "the key's check value is {kcv}, not the {} that came with it",
                        e.kcv
                    ),
                ),
                Some(_) => {
                    let (name, key_type, _) = i.todo.remove(0);
                    i.made.push(StoredBlock {
                        name: name.to_string(),
                        key_type,
                        algorithm: Algorithm::Tdes,
                        kcv,
                        block,
                    });
                    return self.import_next(now, i);
                }
                None => (
                    codes::SYSTEM_MALFUNCTION,
                    "an answer for no key asked".into(),
                ),
            },
            Ok(_) => (
                codes::SYSTEM_MALFUNCTION,
                "the HSM's answer is not a key".into(),
            ),
            Err(e) if card_security::unavailable(&e) => (codes::SYSTEM_MALFUNCTION, e.to_string()),
            Err(e) => (codes::SECURITY_VIOLATION, e.to_string()),
        };
        let (code, why) = refusal;
        self.key_change_done(Err(format!("{} ({why})", String::from_utf8_lossy(&code))));
        if i.epoch != self.epoch || !self.wants_socket() {
            return;
        }
        if let Ok(msg) = Message::parse(i.frame, self.s.acquirer.spec.spec) {
            self.answer_network(&msg, code);
        }
    }

    /// The link went down or closed: what waits for the HSM has no
    /// connection to go on.
    pub(super) fn drop_parked(&mut self) {
        // A key change goes on: the keys the host sent are good whether
        // or not its 0810 can still go (the soft path's install, too).
        let gone = self
            .hsm
            .take_where(|p| !matches!(p, Parked::Keys { .. } | Parked::Import(_)));
        for p in gone {
            if let Parked::Seal { reply, .. } = p {
                self.replies
                    .push_back((reply, Outcome::Failed(Failure::LinkDown)));
            }
        }
    }

    fn sealed(
        &mut self,
        now: Now,
        key: MatchKey,
        mut body: BytesMut,
        field: usize,
        reply: R,
        answer: Result<HsmReply, HsmError>,
    ) {
        let unavailable = matches!(&answer, Err(e) if card_security::unavailable(e));
        let spec = self.s.acquirer.spec.spec;
        if let Err(reason) = card_security::fill_mac(spec, field, &mut body, answer) {
            self.event(LinkEvent::Unsealable { reason });
            let failure = if unavailable {
                Failure::HsmUnavailable
            } else {
                Failure::LinkDown
            };
            self.replies.push_back((reply, Outcome::Failed(failure)));
            return;
        }
        if self.state != LinkState::Up {
            self.replies
                .push_back((reply, Outcome::Failed(Failure::LinkDown)));
            return;
        }
        self.send(now, key, body.freeze(), EchoSpans::UNKNOWN, reply);
    }

    fn answer_checked(
        &mut self,
        now: Now,
        frame: Bytes,
        key: MatchKey,
        answer: Result<HsmReply, HsmError>,
    ) {
        if self.state != LinkState::Up {
            return;
        }
        let Ok(msg) = Message::parse(frame, self.s.acquirer.spec.spec) else {
            return;
        };
        match card_security::mac_verdict(answer) {
            Ok(()) => self.take_answer(now, &msg, key),
            Err(Refusal::HsmUnavailable) => self.refuse_answer(
                &msg,
                key,
                Refusal::HsmUnavailable.label(),
                Failure::AnswerUnverified,
            ),
            Err(r) => {
                self.refuse_answer(&msg, key, super::answer_refusal(r), Failure::BadAnswerMac)
            }
        }
    }

    fn keys_installed(&mut self, frame: Bytes, epoch: u64, installed: Result<(), HsmError>) {
        let code = match installed {
            Ok(()) => {
                self.key_change_done(Ok(()));
                codes::APPROVED
            }
            Err(e) => {
                let code = codes::SYSTEM_MALFUNCTION;
                self.key_change_done(Err(format!("{} ({e})", String::from_utf8_lossy(&code))));
                code
            }
        };
        if epoch != self.epoch || !self.wants_socket() {
            return;
        }
        if let Ok(msg) = Message::parse(frame, self.s.acquirer.spec.spec) {
            self.answer_network(&msg, code);
        }
    }
}
