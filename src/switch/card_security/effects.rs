//! Card security work a core hands its driver instead of doing it in
//! line: commands for a network HSM (whose answers come later), and the
//! key store's rewrite on a key change (a blocking file write, which must
//! not run on the runtime's thread).
//!
//! A core parks what waits for the work in a [`Calls`] table, under the
//! id of the [`HsmCall`] it queues; the driver polls the call out, runs
//! it ([`super::runner::HsmRunner`]) and hands back its [`HsmDone`] with
//! the id, and the core takes the parked state out and goes on. A call
//! may carry a deadline: past it the core takes its state out as
//! expired (the request then gets 96), and the answer that still comes
//! finds no id and is dropped. No clock is read here; deadlines come
//! from the `now` the core was given.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

use crate::security::hsm::payshield::KeyBlocks;
use crate::security::hsm::soft::SoftHsm;
use crate::security::hsm::{HsmCommand, HsmError, HsmReply, KeyName};
use crate::security::keys::SecretKey;
use crate::security::store::{KeyType, StoredBlock};

/// One piece of work for the driver.
pub struct HsmCall {
    pub id: u64,
    pub work: HsmWork,
}

pub enum HsmWork {
    /// A command for the network HSM.
    Command(HsmCommand),
    /// New keys into the soft HSM: the key store file rewritten (synced,
    /// renamed over) before it returns, on a blocking thread.
    Install(KeyInstall),
    /// New key blocks a network HSM made, into the payShield client's
    /// blocks and the key store file, the same way.
    InstallBlocks(BlockInstall),
}

impl fmt::Debug for HsmWork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HsmWork::Command(c) => write!(f, "Command({})", c.name()),
            HsmWork::Install(k) => write!(f, "Install({} keys)", k.keys.len()),
            HsmWork::InstallBlocks(k) => write!(f, "InstallBlocks({} keys)", k.blocks.len()),
        }
    }
}

/// What came of an [`HsmWork`].
#[derive(Debug)]
pub enum HsmDone {
    Reply(Result<HsmReply, HsmError>),
    Installed(Result<(), HsmError>),
}

impl HsmDone {
    /// The command's answer (an install's outcome is not one).
    pub fn into_reply(self) -> Result<HsmReply, HsmError> {
        match self {
            HsmDone::Reply(r) => r,
            HsmDone::Installed(_) => Err(HsmError::Protocol(
                "a key install answered a command".into(),
            )),
        }
    }

    /// The install's outcome (a command's answer is not one).
    pub fn into_installed(self) -> Result<(), HsmError> {
        match self {
            HsmDone::Installed(r) => r,
            HsmDone::Reply(_) => Err(HsmError::Protocol(
                "a command answered a key install".into(),
            )),
        }
    }
}

/// Keys to install ([`SoftHsm::install`] each, in order; the first
/// failure stops it).
pub struct KeyInstall {
    pub hsm: Arc<SoftHsm>,
    pub keys: Vec<(KeyName, KeyType, SecretKey)>,
    pub now_ms: u64,
    pub overlap_ms: u64,
}

impl KeyInstall {
    /// Blocks: each key's store rewrite is synced to disk.
    pub fn run(self) -> Result<(), HsmError> {
        for (name, key_type, key) in self.keys {
            self.hsm
                .install(&name, key_type, key, self.now_ms, self.overlap_ms)?;
        }
        Ok(())
    }
}

/// Key blocks under the network HSM's LMK to install
/// ([`KeyBlocks::install`]: all or none).
pub struct BlockInstall {
    pub keys: Arc<KeyBlocks>,
    pub blocks: Vec<StoredBlock>,
    pub now_ms: u64,
    pub overlap_ms: u64,
}

impl BlockInstall {
    /// Blocks: the key store file's rewrite is synced to disk.
    pub fn run(self) -> Result<(), HsmError> {
        self.keys
            .install(self.blocks, self.now_ms, self.overlap_ms)
            .map_err(|e| HsmError::Unavailable(format!("the key store: {e}")))
    }
}

/// What a core parks while its calls are out, by call id: bounded by the
/// core (it counts `len` against its own limits), with each call's
/// deadline kept in issue order.
pub struct Calls<T> {
    parked: Slab<(u64, T)>,
    /// Makes ids unique over time: a late answer never finds a newer
    /// call's state.
    generation: u32,
    /// `(deadline, id)` in issue order; every deadline is `now` plus the
    /// same timeout, so the order is the deadlines'. Entries whose call
    /// was answered are skipped when they come up.
    deadlines: VecDeque<(Instant, u64)>,
    out: VecDeque<HsmCall>,
}

impl<T> Default for Calls<T> {
    fn default() -> Self {
        Calls {
            parked: Slab::new(),
            generation: 0,
            deadlines: VecDeque::new(),
            out: VecDeque::new(),
        }
    }
}

impl<T> Calls<T> {
    /// Parks `state` and queues `work` for the driver; `deadline`: when
    /// the state is given up if no answer came. Returns the call's id.
    pub fn issue(&mut self, work: HsmWork, deadline: Option<Instant>, state: T) -> u64 {
        self.generation = self.generation.wrapping_add(1);
        let entry = self.parked.vacant_entry();
        let id = (u64::from(self.generation) << 32) | entry.key() as u64;
        entry.insert((id, state));
        if let Some(at) = deadline {
            debug_assert!(
                self.deadlines.back().is_none_or(|(last, _)| *last <= at),
                "call deadlines out of order"
            );
            self.deadlines.push_back((at, id));
        }
        self.out.push_back(HsmCall { id, work });
        id
    }

    /// The state parked under `id`, if its call is still out.
    pub fn take(&mut self, id: u64) -> Option<T> {
        let key = (id & u64::from(u32::MAX)) as usize;
        match self.parked.get(key) {
            Some((i, _)) if *i == id => {}
            _ => return None,
        }
        let (_, state) = self.parked.remove(key);
        self.skip_answered();
        Some(state)
    }

    /// A state whose deadline is at or before `now`, taken out.
    pub fn expired(&mut self, now: Instant) -> Option<T> {
        loop {
            let &(at, id) = self.deadlines.front()?;
            if at > now {
                return None;
            }
            self.deadlines.pop_front();
            if let Some(state) = self.take(id) {
                return Some(state);
            }
        }
    }

    /// The earliest deadline of a call still out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(at, _)| *at)
    }

    /// The next call for the driver.
    pub fn poll_call(&mut self) -> Option<HsmCall> {
        self.out.pop_front()
    }

    /// States parked.
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    /// The states parked, with their call ids.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.parked.iter().map(|(_, (id, s))| (*id, s))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut T)> {
        self.parked.iter_mut().map(|(_, (id, s))| (*id, s))
    }

    /// Takes out every parked state `f` picks.
    pub fn take_where(&mut self, mut f: impl FnMut(&T) -> bool) -> Vec<T> {
        let ids: Vec<u64> = self
            .iter()
            .filter(|(_, s)| f(s))
            .map(|(id, _)| id)
            .collect();
        ids.into_iter().filter_map(|id| self.take(id)).collect()
    }

    /// Drops the deadlines at the front whose calls were answered, so the
    /// next deadline is a live one.
    fn skip_answered(&mut self) {
        while let Some(&(_, id)) = self.deadlines.front() {
            let key = (id & u64::from(u32::MAX)) as usize;
            if self.parked.get(key).is_some_and(|(i, _)| *i == id) {
                break;
            }
            self.deadlines.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn work() -> HsmWork {
        HsmWork::Command(HsmCommand::Diagnostics)
    }

    #[test]
    fn states_come_back_by_id_once_and_late_answers_find_nothing() {
        let mut c = Calls::default();
        let t0 = Instant::now();
        let a = c.issue(work(), Some(t0 + Duration::from_secs(1)), "a");
        let b = c.issue(work(), Some(t0 + Duration::from_secs(2)), "b");
        assert_eq!(c.len(), 2);
        assert_eq!(c.poll_call().map(|x| x.id), Some(a));
        assert_eq!(c.poll_call().map(|x| x.id), Some(b));
        assert!(c.poll_call().is_none());
        assert_eq!(c.take(b), Some("b"));
        assert_eq!(c.take(b), None, "once");
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(c.expired(t0), None);
        assert_eq!(c.expired(t0 + Duration::from_secs(1)), Some("a"));
        assert_eq!(c.take(a), None, "expired: its answer is late");
        assert!(c.is_empty());
        assert_eq!(c.next_deadline(), None);
        // A new call in the same slot has another id.
        let d = c.issue(work(), None, "d");
        assert_ne!(d, a);
        assert_eq!(c.take(a), None);
        assert_eq!(c.take(d), Some("d"));
    }

    #[test]
    fn an_answered_call_leaves_no_deadline_behind() {
        let mut c = Calls::default();
        let t0 = Instant::now();
        let a = c.issue(work(), Some(t0 + Duration::from_secs(1)), 1);
        let _b = c.issue(work(), Some(t0 + Duration::from_secs(2)), 2);
        assert_eq!(c.take(a), Some(1));
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(c.take_where(|s| *s == 2), vec![2]);
        assert_eq!(c.next_deadline(), None);
    }
}
