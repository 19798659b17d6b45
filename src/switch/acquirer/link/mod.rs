//! An acquirer link: one persistent TCP connection to an acquirer host.
//!
//! Life of a link: connect (exponential backoff with jitter between
//! attempts), sign on with 0800/001 and count as up only on a 00 answer,
//! then forward requests and match answers until the connection drops,
//! echoes (0800/301) go unanswered `max_missed_echoes` times in a row, or
//! the switch shuts down, in which case it signs off (0800/002). Requests
//! in flight when a link goes down are answered `LinkLost` at once (the
//! host may have them); requests that arrive while it is down are answered
//! `LinkDown`.
//!
//! An answer is matched to its request by key (MTI class + DE41 + DE11),
//! then checked against it: the fields in `answer_must_match` must carry
//! the request's bytes wherever both carry them. A host that answers with
//! the wrong STAN would otherwise hand one terminal another's approval and
//! amount; an answer that disagrees is discarded and the request keeps
//! waiting for its own (a timeout and a reversal if none comes).
//!
//! Split in two, as quinn-proto splits QUIC:
//! - [`core::LinkCore`]: every decision (connection state, sign-on, echo,
//!   backoff, in-flight table, answer checks, the write buffer) as a plain
//!   struct fed with events and a `Now`; no I/O, no clock, no runtime, so
//!   it is tested in virtual time.
//! - `driver`: the tokio task that connects, reads and writes the socket,
//!   takes forwards from the inbox, sleeps until the core's next deadline,
//!   and turns the core's events into log lines.
//!
//! A link started with [`spawn_controlled`] also answers to a
//! [`LinkControl`] (`reload::links`): new timeouts from a reload (they
//! apply to what starts from then on), an operator's stop and start, and
//! the retirement of a link no longer in the config. Stopping and
//! retiring drain first: the link counts as down at once, so terminals
//! route around it, the requests it has in flight are answered (by their
//! timeout at worst), then it signs off; a stopped link stays down, and
//! answers anything still handed to it `LinkDown`, until started again
//! with a fresh core (connect, sign on).

pub mod core;
#[cfg(test)]
mod core_tests;
mod driver;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{AcquirerConfig, LinkHandle, LinkShared};
pub use core::{FieldSet, LinkCore, LinkEvent, LinkState};

/// Everything a link needs to know: its acquirer's config (timeouts,
/// spec, framing, limits: read from there, not copied field by field) and
/// what is its own.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    /// `acquirer#index`, for logs and metric labels.
    pub name: String,
    /// Which of the acquirer's links this is.
    pub index: usize,
    pub addr: std::net::SocketAddr,
    /// The `[[acquirers]]` entry this link belongs to.
    pub acquirer: AcquirerConfig,
    /// `acquirer.answer_must_match` as a set.
    pub answer_must_match: FieldSet,
    /// Seeds the backoff jitter; differs between links so they do not
    /// reconnect in lockstep.
    pub seed: u64,
    /// The business day a host's 0800/201 moves, with this acquirer's
    /// index (the journal's); `None` when the acquirer does not follow
    /// the host's cutover (`cutover_on_host_0800`), and in tests.
    pub settlement: Option<(Arc<crate::switch::settlement::BusinessDay>, u16)>,
}

impl LinkSettings {
    /// The settings of link `index` of acquirer `a` (an index into its
    /// `links`, which the caller iterates).
    pub fn from_acquirer(a: &AcquirerConfig, index: usize) -> LinkSettings {
        LinkSettings::for_link(a, index, a.links[index])
    }

    /// The settings of a link of `a` to `addr`, numbered `index` among the
    /// acquirer's links (a reload numbers the links it adds after those
    /// started before, so a name is never used twice in a run).
    pub fn for_link(a: &AcquirerConfig, index: usize, addr: std::net::SocketAddr) -> LinkSettings {
        LinkSettings {
            name: format!("{}#{index}", a.name),
            index,
            addr,
            acquirer: a.clone(),
            answer_must_match: FieldSet::of(&a.answer_must_match),
            seed: link_seed(&a.name, index),
            settlement: None,
        }
    }
}

/// FNV-1a over the acquirer's name and the link's index: stable across
/// runs (a replay sees the same jitter) and different for every link.
fn link_seed(acquirer: &str, index: usize) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in acquirer.bytes().chain((index as u64).to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Frames taken from the inbox per loop turn: enough to fill one write
/// under load, few enough to keep reading answers in between.
const BATCH: usize = 256;
/// Stop taking new requests while this much is still unwritten (the host
/// is not reading); the inbox then fills and terminals shed with 96.
pub const MAX_PENDING_WRITE: usize = 1 << 20;

/// What is asked of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Up, as configured.
    Run,
    /// Drain, sign off, stay down (an operator's stop).
    Stop,
    /// Drain, sign off, end (no longer in the config).
    Retire,
}

/// The latest of what is asked of a link: its state, and its acquirer's
/// settings (a reload changes only timeouts and echoes of a running link).
#[derive(Clone, Debug)]
pub struct Wanted {
    pub want: Want,
    pub acquirer: AcquirerConfig,
}

/// The controlling end of a link started with [`spawn_controlled`].
pub struct LinkControl {
    tx: watch::Sender<Wanted>,
}

impl LinkControl {
    /// What is asked of the link now.
    pub fn wanted(&self) -> Wanted {
        self.tx.borrow().clone()
    }

    pub fn set_want(&self, want: Want) {
        self.tx.send_modify(|w| w.want = want);
    }

    /// New settings for what starts from now on (timeouts, echoes).
    pub fn update(&self, acquirer: AcquirerConfig) {
        self.tx.send_modify(|w| w.acquirer = acquirer);
    }
}

/// Starts a link on the current runtime.
pub fn spawn(settings: LinkSettings, shutdown: CancellationToken) -> (LinkHandle, JoinHandle<()>) {
    let (handle, task, _uncontrolled) = spawn_controlled(settings, shutdown);
    (handle, task)
}

/// Starts a link that also answers to its [`LinkControl`].
pub fn spawn_controlled(
    settings: LinkSettings,
    shutdown: CancellationToken,
) -> (LinkHandle, JoinHandle<()>, LinkControl) {
    // The queue in front of a link absorbs bursts; the in-flight table
    // behind it is the real bound.
    let (tx, rx) = mpsc::channel(settings.acquirer.max_in_flight_per_link.clamp(64, 16_384));
    let shared = Arc::new(LinkShared::new(settings.name.clone(), settings.addr));
    let (control, wanted) = watch::channel(Wanted {
        want: Want::Run,
        acquirer: settings.acquirer.clone(),
    });
    let task = tokio::spawn(driver::run(settings, rx, shared.clone(), wanted, shutdown));
    (LinkHandle { tx, shared }, task, LinkControl { tx: control })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_of_one_acquirer_get_different_seeds() {
        assert_ne!(link_seed("visa", 0), link_seed("visa", 1));
        assert_ne!(link_seed("visa", 0), link_seed("amex", 0));
        assert_eq!(link_seed("visa", 1), link_seed("visa", 1));
    }
}
