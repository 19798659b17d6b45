//! Assembly of a running switch: the terminal listener, the acquirer link
//! actors, the admin endpoint, and an orderly shutdown.
//!
//! Shutdown order: stop accepting and stop reading new requests; give the
//! requests in flight `shutdown_grace` to be answered; then stop the links
//! (each signs off), which answers anything still waiting with 91.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::acquirer::AcquirerHandle;
use crate::acquirer::link::{self, LinkSettings};
use crate::config::{Config, LimitsConfig, TerminalConfig};
use crate::fraud::{Decision, FraudRules, FraudState, Score};
use crate::iso8583::values::trim_padding;
use crate::router::RoutingTable;
use crate::telemetry;

/// What every terminal actor reads: configuration, the routing and fraud
/// snapshots, the acquirer handles, and the global in-flight count.
pub struct Shared {
    pub terminals: TerminalConfig,
    pub limits: LimitsConfig,
    pub routes: ArcSwap<RoutingTable>,
    pub acquirers: Vec<AcquirerHandle>,
    pub fraud_rules: ArcSwap<FraudRules>,
    pub fraud_state: FraudState,
    /// Registered once: a registry lookup per request costs more than the
    /// scoring it counts.
    pub fraud_counters: FraudCounters,
    /// Event counters (shed, malformed, repeats...), registered once.
    pub events: crate::telemetry::EventCounters,
    /// Answers given recently, for repeats.
    pub recent: crate::repeats::RecentAnswers,
    pub pan_key: [u8; 16],
    /// Requests forwarded and not yet answered, across all connections.
    pub in_flight: AtomicUsize,
    pub journal: crate::journal::Journal,
    /// Forward and answer only once the records are on disk.
    pub journal_sync: bool,
    /// Transaction ids, continuing the journal's.
    pub txn_seq: std::sync::atomic::AtomicU64,
    /// Numbers stand-in approval codes.
    pub stand_in_seq: std::sync::atomic::AtomicU32,
    pub connections: AtomicUsize,
    /// Cancelled when the switch stops taking requests.
    pub stopping: CancellationToken,
    allowed: HashSet<Vec<u8>>,
    countries: HashMap<Vec<u8>, u16>,
}

impl Shared {
    /// Everything terminals read, from `config`, the acquirers' handles
    /// (links and store-and-forward) and the journal; transaction ids
    /// continue from `next_txn`. Built by [`Switch::start`], and by unit
    /// tests of the terminal core with handles of their own.
    pub fn new(
        config: &Config,
        acquirers: Vec<AcquirerHandle>,
        journal: crate::journal::Journal,
        next_txn: u64,
    ) -> Result<Shared, crate::router::RouteError> {
        let routes = RoutingTable::from_config(&config.routing, |name| {
            config
                .acquirers
                .iter()
                .position(|a| a.name == name)
                .map(|i| i as u16)
        })?;
        Ok(Shared {
            allowed: config
                .terminals
                .allowed_terminals
                .iter()
                .map(|t| trim_padding(t.as_bytes()).to_vec())
                .collect(),
            countries: config
                .terminals
                .terminal_countries
                .iter()
                .map(|(t, c)| (trim_padding(t.as_bytes()).to_vec(), *c))
                .collect(),
            terminals: config.terminals.clone(),
            limits: config.limits.clone(),
            routes: ArcSwap::from_pointee(routes),
            acquirers,
            fraud_rules: ArcSwap::from_pointee(FraudRules::from_config(&config.fraud)),
            fraud_state: FraudState::new(config.fraud.max_tracked_cards),
            fraud_counters: FraudCounters::new(),
            events: crate::telemetry::EventCounters::new(),
            recent: crate::repeats::RecentAnswers::new(
                config.limits.recent_answers,
                config.limits.recent_answers_ttl,
            ),
            pan_key: config.fraud.pan_key,
            in_flight: AtomicUsize::new(0),
            txn_seq: std::sync::atomic::AtomicU64::new(next_txn.max(1)),
            journal_sync: config.journal.durability == crate::config::Durability::Fsync,
            journal,
            stand_in_seq: std::sync::atomic::AtomicU32::new(0),
            connections: AtomicUsize::new(0),
            stopping: CancellationToken::new(),
        })
    }

    /// Is this terminal id (DE41, trailing spaces ignored) allowed?
    pub fn terminal_allowed(&self, tid: &[u8]) -> bool {
        self.allowed.is_empty() || self.allowed.contains(trim_padding(tid))
    }

    /// A new transaction id.
    pub fn next_txn(&self) -> u64 {
        self.txn_seq.fetch_add(1, Ordering::Relaxed)
    }

    pub fn terminal_country(&self, tid: &[u8]) -> Option<u16> {
        self.countries.get(trim_padding(tid)).copied()
    }

    pub fn count_fraud(&self, decision: Decision, score: &Score) {
        let d = match decision {
            Decision::Allow => 0,
            Decision::Review => 1,
            Decision::Decline => 2,
        };
        self.fraud_counters.decisions[d].increment(1);
        for r in score.reasons.iter() {
            self.fraud_counters.reasons[r as usize].increment(1);
        }
    }
}

/// Fraud metric handles, by decision and by rule.
pub struct FraudCounters {
    decisions: [metrics::Counter; 3],
    reasons: Vec<metrics::Counter>,
}

impl FraudCounters {
    fn new() -> FraudCounters {
        let d =
            |name: &'static str| metrics::counter!(telemetry::FRAUD_DECISIONS, "decision" => name);
        FraudCounters {
            decisions: [d("allow"), d("review"), d("decline")],
            reasons: crate::fraud::RuleId::ALL
                .iter()
                .map(|r| metrics::counter!(telemetry::FRAUD_REASONS, "reason" => r.name()))
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("can not listen for terminals on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("can not serve /metrics and /health on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("routing: {0}")]
    Routing(#[from] crate::router::RouteError),
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
}

/// A running switch.
pub struct Switch {
    pub terminal_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    terminals: TaskTracker,
    links_stop: CancellationToken,
    saf_stop: CancellationToken,
    saf_tasks: Vec<JoinHandle<()>>,
    links: Vec<JoinHandle<()>>,
    accept: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
    grace: std::time::Duration,
}

impl Switch {
    /// Binds the listeners and starts every actor on the current runtime.
    pub async fn start(config: Config) -> Result<Switch, StartError> {
        // Installed before the first metric is touched, or early counts are lost.
        let _ = crate::telemetry::prometheus();
        let listener = TcpListener::bind(config.terminals.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.terminals.listen,
                source,
            })?;
        let terminal_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.terminals.listen,
            source,
        })?;

        let journal_config = config.journal.clone();
        let (journal, recovery) =
            tokio::task::spawn_blocking(move || crate::journal::Journal::open(&journal_config))
                .await
                .map_err(|e| {
                    crate::journal::JournalError::Spawn(std::io::Error::other(e.to_string()))
                })??;
        if config.journal.durability == crate::config::Durability::None {
            warn!(dir = %config.journal.dir.display(),
                "JOURNAL DURABILITY IS OFF (durability = \"none\"): requests are forwarded and \
                 answered before their records reach the disk; a crash can lose them. For load tests only.");
        }
        if let Some(t) = &recovery.torn {
            warn!(segment = %t.segment.display(), offset = t.offset, "journal: torn final record cut off");
        }

        let links_stop = CancellationToken::new();
        let saf_stop = CancellationToken::new();
        let mut saf_tasks = Vec::new();
        let mut acquirers = Vec::new();
        let mut links = Vec::new();
        for a in &config.acquirers {
            let mut handles = Vec::new();
            for i in 0..a.links.len() {
                let (h, task) = link::spawn(LinkSettings::from_acquirer(a, i), links_stop.clone());
                handles.push(h);
                links.push(task);
            }
            let (saf, saf_task) = crate::saf::spawn(
                crate::saf::SafSettings {
                    acquirer: a.name.clone(),
                    spec: a.spec.spec,
                    config: config.saf.clone(),
                },
                handles.clone(),
                saf_events(journal.clone()),
                saf_stop.clone(),
            );
            saf_tasks.push(saf_task);
            acquirers.push(AcquirerHandle {
                name: a.name.clone(),
                spec: a.spec.spec,
                links: handles,
                stand_in: a.stand_in.clone(),
                saf,
            });
        }
        let shared = Arc::new(Shared::new(&config, acquirers, journal, recovery.next_txn)?);

        let (admin_addr, admin) = match config.admin.listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Admin { addr, source })?;
                let bound = l
                    .local_addr()
                    .map_err(|source| StartError::Admin { addr, source })?;
                (
                    Some(bound),
                    Some(tokio::spawn(crate::admin::serve(l, shared.clone()))),
                )
            }
            None => (None, None),
        };

        resume_from_journal(&shared, &recovery);
        let terminals = TaskTracker::new();
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), terminals.clone()));
        info!(terminals = %terminal_addr, admin = ?admin_addr, acquirers = config.acquirers.len(), "switch started");
        Ok(Switch {
            terminal_addr,
            admin_addr,
            shared,
            terminals,
            links_stop,
            saf_stop,
            saf_tasks,
            links,
            accept,
            admin,
            grace: config.limits.shutdown_grace,
        })
    }

    /// Stops accepting, lets requests in flight finish within the grace
    /// period, signs the links off, and returns when everything has ended.
    pub async fn shutdown(self) {
        info!("stopping: no new requests; finishing those in flight");
        self.shared.stopping.cancel();
        self.accept.abort();
        self.terminals.close();
        if tokio::time::timeout(self.grace, self.terminals.wait())
            .await
            .is_err()
        {
            warn!(
                in_flight = self.shared.in_flight.load(Ordering::Acquire),
                "grace period over; stopping links with requests still in flight"
            );
        }
        // Store-and-forward stops first: what it still holds stays for the
        // next start (from the journal).
        self.saf_stop.cancel();
        for t in self.saf_tasks {
            let _ = t.await;
        }
        self.links_stop.cancel();
        for l in self.links {
            let _ = l.await;
        }
        // Terminals waiting on links got their 91s when the links stopped.
        self.terminals.wait().await;
        if let Some(a) = self.admin {
            a.abort();
        }
        let journal = self.shared.journal.clone();
        let _ = tokio::task::spawn_blocking(move || journal.close()).await;
        info!("stopped");
    }
}

/// Store-and-forward progress goes to the journal, so a restart resumes
/// where it stopped.
fn saf_events(journal: crate::journal::Journal) -> crate::saf::EventSink {
    use crate::journal::Record;
    use crate::saf::{SafEvent, SafKind};
    Arc::new(move |e| {
        let at_ms = crate::clock::unix_now_ms();
        let record = match e {
            SafEvent::Sent {
                txn,
                kind: SafKind::Reversal,
                attempt,
            } => Record::ReversalSent {
                txn,
                at_ms,
                attempt,
            },
            SafEvent::Sent {
                txn,
                kind: SafKind::Advice,
                attempt,
            } => Record::AdviceSent {
                txn,
                at_ms,
                attempt,
            },
            SafEvent::Acked {
                txn,
                kind: SafKind::Reversal,
                response_code,
            } => Record::ReversalAcked {
                txn,
                at_ms,
                response_code,
            },
            SafEvent::Acked {
                txn,
                kind: SafKind::Advice,
                response_code,
            } => Record::AdviceAcked {
                txn,
                at_ms,
                response_code,
            },
            SafEvent::Expired {
                txn,
                kind: SafKind::Reversal,
            } => Record::ReversalExpired { txn, at_ms },
            SafEvent::Expired {
                txn,
                kind: SafKind::Advice,
            } => Record::AdviceExpired { txn, at_ms },
        };
        let txn = record.txn();
        if journal.append(record).is_err() {
            tracing::error!(txn, "journal refused a store-and-forward record");
        }
    })
}

/// Puts back into store-and-forward what the journal says is still owed:
/// reversals of requests forwarded before a crash without a final answer,
/// and reversals and advices queued but never acknowledged.
fn resume_from_journal(shared: &Shared, recovery: &crate::journal::Recovery) {
    use crate::journal::{Record, SafKind as JKind};
    use crate::saf::{SafEntry, SafKind};
    let mut pushed = 0usize;
    for u in &recovery.unfinished {
        let Some(a) = shared.acquirers.get(u.acquirer as usize) else {
            continue;
        };
        let reason = crate::codes::ISSUER_UNAVAILABLE;
        let Some((body, key)) = crate::saf::from_journal(&u.request, Some(reason), None, a.spec)
        else {
            continue;
        };
        let _ = shared.journal.append(Record::ReversalQueued {
            txn: u.txn,
            at_ms: crate::clock::unix_now_ms(),
            acquirer: u.acquirer,
            reason,
        });
        let entry = SafEntry::new(u.txn, SafKind::Reversal, body, key, u.forwarded_at_ms);
        if a.saf.push(entry).is_ok() {
            pushed += 1;
        }
    }
    for e in &recovery.saf {
        let Some(a) = shared.acquirers.get(e.acquirer as usize) else {
            continue;
        };
        let (kind, rebuilt) = match e.kind {
            JKind::Reversal { reason } => (
                SafKind::Reversal,
                crate::saf::from_journal(&e.request, Some(reason), None, a.spec),
            ),
            JKind::Advice { mti } => (
                SafKind::Advice,
                crate::saf::from_journal(&e.request, None, Some(mti), a.spec),
            ),
        };
        let Some((body, key)) = rebuilt else { continue };
        let entry = SafEntry {
            attempts: e.attempts,
            ..SafEntry::new(e.txn, kind, body, key, e.queued_at_ms)
        };
        if a.saf.push(entry).is_ok() {
            pushed += 1;
        }
    }
    if pushed > 0 || !recovery.unfinished.is_empty() {
        info!(
            reversals_for_unfinished = recovery.unfinished.len(),
            saf_entries = recovery.saf.len(),
            queued = pushed,
            "journal recovery: store-and-forward resumes"
        );
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    let per_ip: Arc<DashMap<IpAddr, usize>> = Arc::new(DashMap::new());
    let gauge = metrics::gauge!(telemetry::CONNECTIONS);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: pause, don't spin.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shared.stopping.cancelled() => return,
        };
        let Some(guard) = ConnectionGuard::admit(&shared, &per_ip, peer.ip()) else {
            metrics::counter!(telemetry::CONNECTIONS_REFUSED).increment(1);
            warn!(peer = %peer, "connection refused: connection limit reached");
            drop(stream);
            continue;
        };
        gauge.set(shared.connections.load(Ordering::Relaxed) as f64);
        let shared = shared.clone();
        let gauge = gauge.clone();
        tracker.spawn(async move {
            serve_connection(stream, peer, shared.clone()).await;
            drop(guard);
            gauge.set(shared.connections.load(Ordering::Relaxed) as f64);
        });
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    crate::terminal::serve(stream, peer, shared).await;
}

/// Counts a connection overall and per source address while it lives.
struct ConnectionGuard {
    shared: Arc<Shared>,
    per_ip: Arc<DashMap<IpAddr, usize>>,
    ip: IpAddr,
}

impl ConnectionGuard {
    fn admit(
        shared: &Arc<Shared>,
        per_ip: &Arc<DashMap<IpAddr, usize>>,
        ip: IpAddr,
    ) -> Option<ConnectionGuard> {
        let t = &shared.terminals;
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= t.max_connections {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let mut n = per_ip.entry(ip).or_insert(0);
        if *n >= t.max_connections_per_ip {
            drop(n);
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *n += 1;
        drop(n);
        Some(ConnectionGuard {
            shared: shared.clone(),
            per_ip: per_ip.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        // The map holds only addresses with connections open: bounded by
        // max_connections.
        self.per_ip.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}
