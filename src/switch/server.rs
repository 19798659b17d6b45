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
use std::time::Duration;

use dashmap::DashMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::iso8583::values::trim_padding;
use crate::net::Conn;
use crate::switch::acquirer::AcquirerHandle;
use crate::switch::config::{Config, Section, table};
use crate::switch::fraud::{Decision, FraudRules, FraudState, Score};
use crate::switch::router::RoutingTable;
use crate::switch::terminal::TerminalConfig;
use crate::switch::tls::TerminalTls;
use crate::telemetry;
use crate::throttle::LogThrottle;

/// What every terminal actor reads, as one generation: the config in force
/// (routes, fraud rules, allowed terminals, stand-in, timeouts, limits,
/// the acquirers and their links) and, shared by every generation, the
/// switch's running state (counters, the journal, the fraud history, the
/// in-flight count...).
///
/// A reload or an operator's action builds the next one
/// ([`Shared::next_generation`]) and publishes it (`reload::Control`); a
/// holder of an older one learns it is behind with one atomic load
/// ([`Shared::is_current`]) and takes the new one with
/// [`Shared::current`]. The terminal core checks once per request, and a
/// request keeps the generation it started in until its outcome.
pub struct Shared {
    // ---- this generation ----------------------------------------------
    /// The config generation: 1 at start, one more for each reload that
    /// changed something.
    pub generation: u64,
    /// This snapshot: one more for every one published (a reload, a
    /// block list changed by an operator). What [`Shared::is_current`]
    /// compares.
    pub epoch: u64,
    /// When this generation's config was read (Unix ms), and what read
    /// it (`start`, `api`, `sighup`).
    pub loaded_at_ms: u64,
    pub loaded_by: &'static str,
    /// The config this generation was made from (its view is what
    /// `/api/config` shows).
    pub config: Arc<Config>,
    pub terminals: TerminalConfig,
    pub limits: LimitsConfig,
    pub routes: RoutingTable,
    /// By index: an acquirer's place in `[[acquirers]]`, which a reload
    /// keeps (the journal names acquirers by it).
    pub acquirers: Vec<AcquirerHandle>,
    pub fraud_rules: FraudRules,
    /// Cards and BINs an operator blocked (declined before routing).
    pub blocks: Arc<crate::switch::blocks::BlockList>,
    allowed: HashSet<Vec<u8>>,
    countries: HashMap<Vec<u8>, u16>,

    // ---- shared by every generation ------------------------------------
    /// The newest generation published, for holders of older ones.
    latest: Arc<Latest>,
    pub fraud_state: Arc<FraudState>,
    /// Registered once: a registry lookup per request costs more than the
    /// scoring it counts.
    pub fraud_counters: Arc<FraudCounters>,
    /// Event counters (shed, malformed, repeats...), registered once.
    pub events: Arc<crate::telemetry::EventCounters>,
    /// Answers given recently, for repeats.
    pub recent: Arc<crate::switch::repeats::RecentAnswers>,
    /// The key of the card hash that names cards in memory, the journal
    /// and the store (HMAC-SHA-256, see [`Shared::card_hash`]):
    /// `[security] card_hash_key`, else `fraud.pan_key`.
    pub rest_key: Arc<crate::security::card_hash::CardHashKey>,
    /// Requests forwarded and not yet answered, across all connections.
    pub in_flight: Arc<AtomicUsize>,
    pub journal: crate::switch::journal::Journal,
    /// Forward and answer only once the records are on disk.
    pub journal_sync: bool,
    /// Transaction ids, continuing the journal's.
    pub txn_seq: Arc<std::sync::atomic::AtomicU64>,
    /// Numbers stand-in approval codes.
    pub stand_in_seq: Arc<std::sync::atomic::AtomicU32>,
    pub connections: Arc<AtomicUsize>,
    /// Cancelled when the switch stops taking requests.
    pub stopping: CancellationToken,
    /// `[security]`: the HSM and the terminal profiles (restart only; the
    /// HSM and its key store are shared by every generation).
    pub security: Option<crate::switch::card_security::SecurityConfig>,
    /// The queue to the analytics thread: one event per answered request.
    pub analytics: Arc<crate::switch::analytics::Sink>,
    /// The business date requests are accepted in, and its cutovers.
    pub business_day: Arc<crate::switch::settlement::BusinessDay>,
    /// Cancelled when an operator asks for a drain (`POST
    /// /api/actions/drain`): the process then stops as on SIGTERM.
    pub drain_requested: CancellationToken,
}

/// The key of the card hash kept at rest (journal, store, blocks):
/// `[security] card_hash_key`, else `fraud.pan_key`.
fn rest_key_of(config: &Config) -> Arc<crate::security::card_hash::CardHashKey> {
    config
        .security
        .as_ref()
        .and_then(|s| s.card_hash_key.clone())
        .unwrap_or_else(|| {
            Arc::new(
                crate::security::card_hash::CardHashKey::new(&config.fraud.pan_key)
                    .unwrap_or_else(|_| unreachable!("16 bytes is a valid HMAC key")),
            )
        })
}

/// The newest generation published: its epoch, read once per request by
/// every terminal, and a weak reference to it (the publisher holds it).
struct Latest {
    epoch: std::sync::atomic::AtomicU64,
    current: std::sync::Mutex<std::sync::Weak<Shared>>,
}

/// What a generation makes of its config: the parts terminals read.
struct GenerationParts {
    terminals: TerminalConfig,
    limits: LimitsConfig,
    routes: RoutingTable,
    fraud_rules: FraudRules,
    allowed: HashSet<Vec<u8>>,
    countries: HashMap<Vec<u8>, u16>,
}

impl GenerationParts {
    fn of(config: &Config) -> Result<GenerationParts, crate::switch::router::RouteError> {
        // An acquirer's index is its place in the file (a reload keeps it).
        let routes = RoutingTable::from_config(&config.routing, |name| {
            config
                .acquirers
                .iter()
                .position(|a| a.name == name)
                .map(|i| i as u16)
        })?;
        Ok(GenerationParts {
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
            routes,
            fraud_rules: FraudRules::from_config(&config.fraud),
        })
    }
}

impl Shared {
    /// Everything terminals read, from `config`, the acquirers' handles
    /// (links and store-and-forward) and the journal; transaction ids
    /// continue from `next_txn`. Generation 1. Built by [`Switch::start`],
    /// and by unit tests of the terminal core with handles of their own.
    pub fn new(
        config: &Config,
        acquirers: Vec<AcquirerHandle>,
        journal: crate::switch::journal::Journal,
        next_txn: u64,
    ) -> Result<Shared, crate::switch::router::RouteError> {
        let parts = GenerationParts::of(config)?;
        Ok(Shared {
            generation: 1,
            epoch: 1,
            loaded_at_ms: crate::clock::unix_now_ms(),
            loaded_by: "start",
            config: Arc::new(config.clone()),
            allowed: parts.allowed,
            countries: parts.countries,
            terminals: parts.terminals,
            limits: parts.limits,
            routes: parts.routes,
            acquirers,
            fraud_rules: parts.fraud_rules,
            blocks: Arc::new(crate::switch::blocks::BlockList::empty(&config.blocks)),
            latest: Arc::new(Latest {
                epoch: std::sync::atomic::AtomicU64::new(1),
                current: std::sync::Mutex::new(std::sync::Weak::new()),
            }),
            fraud_state: Arc::new(FraudState::new(config.fraud.max_tracked_cards)),
            fraud_counters: Arc::new(FraudCounters::new()),
            events: Arc::new(crate::telemetry::EventCounters::new()),
            recent: Arc::new(crate::switch::repeats::RecentAnswers::new(
                config.limits.recent_answers,
                config.limits.recent_answers_ttl,
            )),
            rest_key: rest_key_of(config),
            in_flight: Arc::new(AtomicUsize::new(0)),
            // Replaced by `Switch::start` with the one recovered from the
            // journal (`with_business_day`); unit tests keep this one.
            business_day: Arc::new(crate::switch::settlement::BusinessDay::with_journal(
                config.settlement.clone(),
                None,
                crate::clock::unix_now_ms(),
                journal.clone(),
            )),
            txn_seq: Arc::new(std::sync::atomic::AtomicU64::new(next_txn.max(1))),
            journal_sync: config.journal.durability == crate::switch::journal::Durability::Fsync,
            journal,
            stand_in_seq: Arc::new(std::sync::atomic::AtomicU32::new(0)),
            connections: Arc::new(AtomicUsize::new(0)),
            stopping: CancellationToken::new(),
            drain_requested: CancellationToken::new(),
            security: config.security.clone(),
            analytics: Arc::new(crate::switch::analytics::Sink::new(&config.analytics)),
        })
    }

    /// With the operators' blocks read at start.
    pub fn with_blocks(mut self, blocks: Arc<crate::switch::blocks::BlockList>) -> Shared {
        self.blocks = blocks;
        self
    }

    /// With the business day `day` (recovered from the journal, shared
    /// with the links that may cut over).
    pub fn with_business_day(mut self, day: Arc<crate::switch::settlement::BusinessDay>) -> Shared {
        self.business_day = day;
        self
    }

    /// The next generation: `config` (checked by the caller: only what a
    /// reload may change differs from this one's) with `acquirers`, and
    /// everything that runs across generations shared with this one.
    /// `generation` is the config generation it carries (this one's for a
    /// change that is not a reload). Not in force until published.
    pub fn next_generation(
        &self,
        config: Arc<Config>,
        acquirers: Vec<AcquirerHandle>,
        blocks: Arc<crate::switch::blocks::BlockList>,
        generation: u64,
        loaded_by: &'static str,
    ) -> Result<Shared, crate::switch::router::RouteError> {
        let parts = GenerationParts::of(&config)?;
        let loaded_at_ms = if generation == self.generation {
            self.loaded_at_ms
        } else {
            crate::clock::unix_now_ms()
        };
        Ok(Shared {
            generation,
            epoch: self.epoch + 1,
            loaded_at_ms,
            loaded_by: if generation == self.generation {
                self.loaded_by
            } else {
                loaded_by
            },
            config,
            terminals: parts.terminals,
            limits: parts.limits,
            routes: parts.routes,
            acquirers,
            fraud_rules: parts.fraud_rules,
            blocks,
            allowed: parts.allowed,
            countries: parts.countries,
            latest: self.latest.clone(),
            fraud_state: self.fraud_state.clone(),
            fraud_counters: self.fraud_counters.clone(),
            events: self.events.clone(),
            recent: self.recent.clone(),
            rest_key: self.rest_key.clone(),
            in_flight: self.in_flight.clone(),
            journal: self.journal.clone(),
            journal_sync: self.journal_sync,
            txn_seq: self.txn_seq.clone(),
            stand_in_seq: self.stand_in_seq.clone(),
            connections: self.connections.clone(),
            stopping: self.stopping.clone(),
            security: self.security.clone(),
            analytics: self.analytics.clone(),
            business_day: self.business_day.clone(),
            drain_requested: self.drain_requested.clone(),
        })
    }

    /// Would `config` make a generation? (Its routes resolve: the checks
    /// of the config make sure of it.)
    pub fn check_config(config: &Config) -> Result<(), crate::switch::router::RouteError> {
        GenerationParts::of(config).map(|_| ())
    }

    /// Makes `this` the generation every holder of an older one moves to.
    pub(crate) fn publish(this: &Arc<Shared>) {
        *crate::sync::lock(&this.latest.current) = Arc::downgrade(this);
        // After the pointer: whoever sees the epoch finds this one (or a
        // newer one) behind the lock.
        this.latest.epoch.store(this.epoch, Ordering::Release);
    }

    /// Is this the newest generation published? One atomic load: the
    /// terminal core asks once per request.
    #[inline]
    pub fn is_current(&self) -> bool {
        self.latest.epoch.load(Ordering::Acquire) == self.epoch
    }

    /// The newest generation published (this one if it is, or if the
    /// newer one is already gone).
    pub fn current(self: &Arc<Shared>) -> Arc<Shared> {
        if self.is_current() {
            return self.clone();
        }
        crate::sync::lock(&self.latest.current)
            .upgrade()
            .unwrap_or_else(|| self.clone())
    }

    /// Is this terminal id (DE41, trailing spaces ignored) allowed?
    pub fn terminal_allowed(&self, tid: &[u8]) -> bool {
        self.allowed.is_empty() || self.allowed.contains(trim_padding(tid))
    }

    /// The keyed hash that names a card everywhere: in the fraud map, in
    /// `fraud.blocked_cards`, in the journal and the store (HMAC-SHA-256
    /// under `rest_key`, cut to 128 bits). Made once per request.
    pub fn card_hash(&self, pan_digits: &[u8]) -> [u8; 16] {
        crate::security::card_hash::card_hash_128(&self.rest_key, pan_digits)
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
            reasons: crate::switch::fraud::RuleId::ALL
                .iter()
                .map(|r| metrics::counter!(telemetry::FRAUD_REASONS, "reason" => r.name()))
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("terminals.tls: {0}")]
    Tls(String),
    #[error("can not listen for terminals on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("can not serve the admin endpoint on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    AdminAuth(String),
    #[error("routing: {0}")]
    Routing(#[from] crate::switch::router::RouteError),
    #[error("journal: {0}")]
    Journal(#[from] crate::switch::journal::JournalError),
    #[error("store: {0}")]
    Store(#[from] crate::switch::store::StoreError),
    #[error("can not start the analytics thread: {0}")]
    Analytics(std::io::Error),
    #[error("security.payshield: {0}")]
    Hsm(String),
    #[error("{0}")]
    Blocks(String),
}

/// Starts the payShield client (its connections open now, and reopen on
/// their own), and asks the HSM once, in the background, whether its LMK
/// is the one the key store's blocks are under: a warning when not (every
/// command would be refused), a line when it could not say.
fn start_network_hsm(network: &crate::switch::card_security::NetworkHsm) -> Result<(), StartError> {
    let client = network
        .client()
        .map_err(|e| StartError::Hsm(e.to_owned()))?
        .clone();
    let addr = network.config.addr.clone();
    info!(hsm = %addr, timeout = ?network.timeout(), "network HSM (payShield) in the request path");
    tokio::spawn(async move {
        client.wait_connected().await;
        match client.lmk_matches().await {
            Ok(Some(true)) => info!(hsm = %addr, "the HSM's LMK is the key store's"),
            Ok(Some(false)) => warn!(hsm = %addr,
                "the HSM's LMK is NOT the one the key store's blocks are under: every command will be refused"),
            Ok(None) => {}
            Err(e) => warn!(hsm = %addr, "could not ask the HSM for its LMK's check value: {e}"),
        }
    });
    Ok(())
}

/// A running switch.
pub struct Switch {
    /// `[terminals] listen`, as bound (TLS when `[terminals.tls]` has no
    /// listen of its own).
    pub terminal_addr: SocketAddr,
    /// The TLS listener, as bound, if any.
    pub tls_addr: Option<SocketAddr>,
    terminal_tls: Option<Arc<TerminalTls>>,
    pub admin_addr: Option<SocketAddr>,
    /// The generation the switch started with; [`Switch::current`] is the
    /// one in force.
    pub shared: Arc<Shared>,
    terminals: TaskTracker,
    links_stop: CancellationToken,
    saf_stop: CancellationToken,
    /// The generations, the links and the blocks.
    control: Arc<crate::switch::reload::Control>,
    accept: Vec<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
    admin_state: Option<Arc<crate::switch::admin::AdminState>>,
    /// `[admin.tls]`'s material, re-read with the terminals' on SIGHUP.
    admin_tls: Option<Arc<crate::switch::admin::AdminTls>>,
    /// The analytics thread, when `[analytics] enabled`.
    analytics: Option<crate::switch::analytics::Runner>,
    /// The transaction store's exporter, when `[store] enabled`.
    store: Option<crate::switch::store::ExporterHandle>,
}

impl Switch {
    /// Binds the listeners and starts every actor on the current runtime.
    pub async fn start(config: Config) -> Result<Switch, StartError> {
        // Installed before the first metric is touched, or early counts are lost.
        let _ = crate::telemetry::prometheus();
        let listeners = bind_listeners(&config)?;
        let terminal_addr = listeners[0].addr;
        let backlog = listeners[0].backlog;
        let tls_addr = listeners.iter().find(|l| l.tls.is_some()).map(|l| l.addr);
        let terminal_tls = listeners.iter().find_map(|l| l.tls.clone());

        let journal_config = config.journal.clone();
        let (journal, recovery) = tokio::task::spawn_blocking(move || {
            crate::switch::journal::Journal::open(&journal_config)
        })
        .await
        .map_err(|e| {
            crate::switch::journal::JournalError::Spawn(std::io::Error::other(e.to_string()))
        })??;
        if config.journal.durability == crate::switch::journal::Durability::None {
            warn!(dir = %config.journal.dir.display(),
                "JOURNAL DURABILITY IS OFF (durability = \"none\"): requests are forwarded and \
                 answered before their records reach the disk; a crash can lose them. For load tests only.");
        }
        if let Some(t) = &recovery.torn {
            warn!(segment = %t.segment.display(), offset = t.offset, "journal: torn final record cut off");
        }

        let (store, store_names) = if config.store.enabled {
            let (s, names) = start_store(&config, &journal, recovery.next_seq - 1).await?;
            (Some(s), Some(names))
        } else {
            (None, None)
        };

        // The business date: the last cutover's, or the clock's. Made
        // before the links, which cut over on a host's 0800/201.
        let business_day = Arc::new(
            crate::switch::settlement::BusinessDay::with_journal(
                config.settlement.clone(),
                recovery.last_cutover,
                crate::clock::unix_now_ms(),
                journal.clone(),
            )
            .with_ledger(recovery.batches.clone()),
        );
        log_business_day(&business_day, recovery.last_cutover.is_some());

        if let Some(network) = config.security.as_ref().and_then(|s| s.hsm.network()) {
            start_network_hsm(network)?;
        }

        // Before any link starts: a block list that can not be read (or
        // was made under another card-hash key) refuses the start.
        let blocks = crate::switch::blocks::BlockStore::open(&config.blocks, &rest_key_of(&config))
            .map_err(StartError::Blocks)?;
        let links_stop = CancellationToken::new();
        let saf_stop = CancellationToken::new();
        let (supervisor, acquirers) = crate::switch::reload::Supervisor::start(
            &config,
            journal.clone(),
            business_day.clone(),
            links_stop.clone(),
            saf_stop.clone(),
        );
        let shared = Arc::new(
            Shared::new(&config, acquirers, journal, recovery.next_txn)?
                .with_business_day(business_day.clone())
                .with_blocks(Arc::new(blocks.list(config.blocks.response_code))),
        );
        let control = Arc::new(
            crate::switch::reload::Control::new(
                shared.clone(),
                config.source.clone(),
                supervisor,
                blocks,
            )
            .with_store_names(store_names),
        );
        let (analytics_handle, analytics) = match crate::switch::analytics::spawn(
            &config,
            shared.clone(),
            store.as_ref().map(|s| s.exported()),
        )
        .map_err(StartError::Analytics)?
        {
            Some((h, r)) => (Some(h), Some(r)),
            None => (None, None),
        };

        let (admin_addr, admin) = match config.admin.listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Admin { addr, source })?;
                let bound = l
                    .local_addr()
                    .map_err(|source| StartError::Admin { addr, source })?;
                let state = Arc::new(
                    crate::switch::admin::AdminState::with_config(shared.clone(), &config.admin)
                        .map_err(StartError::AdminAuth)?
                        .with_analytics(analytics_handle)
                        .with_control(control.clone()),
                );
                let tls = match &config.admin.tls {
                    Some(t) => Some(Arc::new(
                        crate::switch::admin::AdminTls::new(t.clone())
                            .map_err(|e| StartError::AdminAuth(format!("admin.tls: {e}")))?,
                    )),
                    None => None,
                };
                let serve = crate::switch::admin::serve(l, state.clone(), tls.clone());
                (Some(bound), Some((tokio::spawn(serve), state, tls)))
            }
            None => (None, None),
        };
        let (admin, admin_state, admin_tls) = match admin {
            Some((task, state, tls)) => (Some(task), Some(state), tls),
            None => (None, None, None),
        };

        log_recovery(&config, &recovery);
        crate::switch::saf::resume_from_journal(
            &shared.acquirers,
            &recovery,
            crate::clock::unix_now_ms(),
            |record| {
                let txn = record.txn();
                if shared.journal.append(record).is_err() {
                    warn!(
                        txn,
                        "journal refused a recovery record; the next start queues it again"
                    );
                }
            },
        );
        // After recovery's records (a catch-up cutover at start follows
        // them in the journal) and before the listeners (no request of the
        // new day gets the old date). Stops with store-and-forward, before
        // the journal closes.
        match &store {
            Some(exporter) => {
                let acquirers: Vec<String> = (config.acquirers.iter())
                    .filter(|a| a.reconciliation)
                    .map(|a| a.name.clone())
                    .collect();
                if !acquirers.is_empty() {
                    crate::switch::settlement::acquirer_recon::spawn(
                        crate::switch::settlement::acquirer_recon::Settings {
                            day: business_day.clone(),
                            control: control.clone(),
                            backend: config.store.backend.clone(),
                            node_id: config.store.node_id.clone(),
                            durable: shared.journal.durable(),
                            exported: exporter.exported(),
                            acquirers,
                        },
                        saf_stop.clone(),
                    );
                }
            }
            None if config.acquirers.iter().any(|a| a.reconciliation) => info!(
                "settlement: no acquirer reconciliation (0520) without the store ([store] enabled = false)"
            ),
            None => {}
        }
        crate::switch::settlement::timer::spawn(business_day, saf_stop.clone());
        let terminals = TaskTracker::new();
        let per_ip: Arc<DashMap<IpAddr, usize>> = Arc::new(DashMap::new());
        let accept = listeners
            .into_iter()
            .map(|l| {
                tokio::spawn(accept_loop(
                    l.listener,
                    l.tls,
                    shared.clone(),
                    per_ip.clone(),
                    terminals.clone(),
                ))
            })
            .collect();
        log_startup(&config, terminal_addr, backlog, tls_addr, admin_addr);
        Ok(Switch {
            terminal_addr,
            tls_addr,
            terminal_tls,
            admin_addr,
            shared,
            terminals,
            links_stop,
            saf_stop,
            control,
            accept,
            admin,
            admin_state,
            admin_tls,
            analytics,
            store,
        })
    }

    /// The generation in force (`shared` is the one the switch started
    /// with).
    pub fn current(&self) -> Arc<Shared> {
        self.control.current()
    }

    /// The admin endpoint speaks HTTPS (`[admin.tls]`).
    pub fn admin_is_tls(&self) -> bool {
        self.admin_tls.is_some()
    }

    /// The run-time changes: reloads, blocks, the links under them.
    pub fn control(&self) -> &Arc<crate::switch::reload::Control> {
        &self.control
    }

    /// Reads the config file again (SIGHUP): in force as the next
    /// generation if it checks and changes only what a reload may;
    /// logged, and in the audit trail when there are operators.
    pub async fn reload_config(
        &self,
        source: crate::switch::reload::Source,
    ) -> Result<crate::switch::reload::Reloaded, crate::switch::reload::Refusal> {
        match &self.admin_state {
            Some(state) => crate::switch::admin::reload_on_signal(state, source).await,
            None => self.control.reload(source).await,
        }
    }

    /// The journal position the transaction store has reached, as it
    /// moves; `None` without `[store] enabled`.
    pub fn store_exported(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.store.as_ref().map(|s| s.exported())
    }

    /// Re-reads the TLS material of the terminal listener and the admin
    /// endpoint (SIGHUP): new handshakes use it, established connections
    /// keep theirs; either keeps its old material if its new one is
    /// refused. `Ok` without TLS.
    pub fn reload_tls(&self) -> Result<(), String> {
        let result = match &self.terminal_tls {
            Some(t) => t.reload(),
            None => Ok(()),
        };
        crate::switch::tls::log_reload(&result);
        let admin = match &self.admin_tls {
            Some(t) => {
                let r = t.reload();
                match &r {
                    Ok(()) => info!("admin TLS material re-read; new handshakes use it"),
                    Err(e) => warn!("admin TLS material not re-read, the old stays in use: {e}"),
                }
                r.map_err(|e| format!("admin TLS: {e}"))
            }
            None => Ok(()),
        };
        result.and(admin)
    }

    /// Stops accepting, lets requests in flight finish within the grace
    /// period, signs the links off, and returns when everything has ended.
    pub async fn shutdown(self) {
        let in_flight_at_stop = self.shared.in_flight.load(Ordering::Acquire);
        let grace = self.current().limits.shutdown_grace;
        info!(
            "stopping: no new requests; finishing the {in_flight_at_stop} in flight \
             (grace period {} ms)",
            grace.as_millis()
        );
        self.shared.stopping.cancel();
        for a in &self.accept {
            a.abort();
        }
        self.terminals.close();
        let left = if tokio::time::timeout(grace, self.terminals.wait())
            .await
            .is_err()
        {
            let left = self.shared.in_flight.load(Ordering::Acquire);
            warn!(
                in_flight = left,
                "grace period over; stopping links with requests still in flight (they get 91)"
            );
            left
        } else {
            0
        };
        // Store-and-forward stops first: what it still holds stays for the
        // next start (from the journal). Every queue and link of the run,
        // those reloads started included.
        let (saf_tasks, link_tasks) = self.control.supervisor().take_tasks();
        self.saf_stop.cancel();
        for t in saf_tasks {
            let _ = t.await;
        }
        self.links_stop.cancel();
        for l in link_tasks {
            let _ = l.await;
        }
        // Terminals waiting on links got their 91s when the links stopped.
        self.terminals.wait().await;
        if let Some(a) = self.admin {
            a.abort();
        }
        let journal = self.shared.journal.clone();
        let closed = tokio::task::spawn_blocking(move || {
            journal.close();
            journal.all_synced()
        })
        .await;
        // Nothing answers any more: the analytics thread takes the last
        // events and stops.
        if let Some(a) = self.analytics {
            let _ = tokio::task::spawn_blocking(move || a.stop()).await;
        }
        // The journal is closed: the exporter takes what it made durable
        // and stops.
        if let Some(store) = self.store {
            let _ = tokio::task::spawn_blocking(move || store.stop()).await;
        }
        let stats = self.shared.journal.stats();
        let journal = if closed.unwrap_or(false) {
            format!("journal synced up to record {}", stats.durable)
        } else {
            format!(
                "JOURNAL NOT FULLY SYNCED (durable up to record {}; see the errors above)",
                stats.durable
            )
        };
        info!(
            "stopped: {} of {in_flight_at_stop} request(s) in flight finished within the grace \
             period, {left} answered 91 at the end; {journal}",
            in_flight_at_stop.saturating_sub(left)
        );
    }
}

/// Opens the transaction store (migrations run here) and starts its
/// exporter after the journal's `durable` record as it stands at start.
async fn start_store(
    config: &Config,
    journal: &crate::switch::journal::Journal,
    durable: u64,
) -> Result<(crate::switch::store::ExporterHandle, AcquirerNames), StartError> {
    use crate::switch::store::{self, ExportSettings, Exporter};
    let settings = ExportSettings::new(
        &config.store,
        config.journal.dir.clone(),
        config.acquirers.iter().map(|a| a.name.clone()).collect(),
    );
    let names = settings.acquirers.clone();
    let backend = config.store.backend.clone();
    let exporter = tokio::task::spawn_blocking(move || {
        let mut exporter = Exporter::new(settings, store::open(&backend)?)?;
        exporter.check_journal(durable)?;
        Ok::<_, store::StoreError>(exporter)
    })
    .await
    .map_err(|e| store::StoreError::Spawn(std::io::Error::other(e.to_string())))??;
    if exporter.resumed() {
        info!(
            "store: {}, node {}, exported up to journal record {} of {durable}",
            config.store.backend.describe(),
            config.store.node_id,
            exporter.position()
        );
    } else {
        info!(
            "store: {}, node {}: not reachable yet; the exporter keeps trying",
            config.store.backend.describe(),
            config.store.node_id,
        );
    }
    Ok((exporter.spawn(journal.durable())?, names))
}

/// The acquirers' names by journal index, as the store's exporter reads
/// them (a reload adds names).
type AcquirerNames = Arc<arc_swap::ArcSwap<Vec<String>>>;

fn log_business_day(day: &crate::switch::settlement::BusinessDay, recorded: bool) {
    let schedule = day.schedule();
    let when = match schedule.cutover {
        Some(m) => format!(
            "cutover at {:02}:{:02} {}",
            m / 60,
            m % 60,
            schedule.time_zone.iana_name().unwrap_or("(fixed offset)")
        ),
        None => "no scheduled cutover (cutover_time = \"off\")".to_owned(),
    };
    let from = if recorded {
        "from the journal's last cutover"
    } else {
        "from the clock (no cutover on record)"
    };
    info!(
        "settlement: business date {} ({from}); {when}",
        day.current()
    );
}

/// What recovery scanned, also when it found nothing to do: an operator
/// reading the log after a restart should not have to guess.
fn log_recovery(config: &Config, recovery: &crate::switch::journal::Recovery) {
    let s = &recovery.stats;
    info!(
        "journal recovery in {}: scanned {} segment(s), {} record(s), {} bytes; \
         {} forwarded without a final answer (to reverse), {} store-and-forward entries \
         to resend, {} never answered nor forwarded, {} orphaned, {} damaged place(s); \
         next transaction id {}",
        config.journal.dir.display(),
        s.segments,
        s.records,
        s.bytes,
        recovery.unfinished.len(),
        recovery.saf.len(),
        s.unanswered,
        s.orphans,
        recovery.corrupt.len(),
        recovery.next_txn.max(1),
    );
}

/// The startup lines, in plain words: listeners, acquirers and links,
/// routes, journal, runtime.
fn log_startup(
    config: &Config,
    terminal_addr: SocketAddr,
    backlog: u32,
    tls_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
) {
    let t = &config.terminals;
    let plain = if tls_addr == Some(terminal_addr) {
        "TLS"
    } else {
        "plain TCP"
    };
    info!(
        "terminals: listening on {terminal_addr} ({plain}, {} spec, {} framing, at most {} connection(s), \
         listen backlog {backlog})",
        t.spec.spec.name, t.framing, t.max_connections
    );
    if let (Some(addr), Some(tls)) = (tls_addr, &t.tls) {
        let client = match (&tls.server.client_ca, tls.server.require_client_cert) {
            (None, _) => "no client certificate asked",
            (Some(_), true) => "client certificate required",
            (Some(_), false) => "client certificate optional",
        };
        info!(
            "terminals: TLS on {addr} (TLS {}+, {client}, DE41 bound to certificate: {:?}, \
             at most {} handshake(s) at once)",
            match tls.server.min_version {
                switchyard_protocol::tls::MinVersion::Tls12 => "1.2",
                switchyard_protocol::tls::MinVersion::Tls13 => "1.3",
            },
            tls.bind_terminal_id,
            tls.max_handshakes_in_flight
        );
    }
    match admin_addr {
        Some(a) => {
            // Off loopback the config asks for a users file (admin/config.rs).
            let login = match &config.admin.users_file {
                Some(f) => format!("login with password and TOTP, operators in {}", f.display()),
                None => "no login: loopback only, admin.users_file is not set".to_owned(),
            };
            info!(
                "admin: http://{a}/metrics, /health, /ready and the JSON API \
                 (/api/summary, /api/links, /api/config; {login})"
            );
        }
        None => info!("admin: off (admin.enabled = false)"),
    }
    for a in &config.acquirers {
        let links: Vec<String> = a.links.iter().map(ToString::to_string).collect();
        info!(
            "acquirer {}: {} link(s) to {} ({} spec, {} framing, request timeout {} ms, sign-on {}, stand-in {})",
            a.name,
            a.links.len(),
            links.join(", "),
            a.spec.spec.name,
            a.framing,
            a.request_timeout.as_millis(),
            if a.sign_on { "on" } else { "off" },
            if a.stand_in.enabled { "on" } else { "off" },
        );
    }
    let default = match &config.routing.default {
        Some(d) => format!("other cards go to {d}"),
        None => "other cards are answered 92".to_owned(),
    };
    info!(
        "routing: {} route(s); {default}",
        config.routing.routes.len()
    );
    let j = &config.journal;
    let durability = match j.durability {
        crate::switch::journal::Durability::Fsync => {
            "fsync (a request is forwarded and answered only once its record is on disk)"
        }
        crate::switch::journal::Durability::None => {
            "none (records are not synced: load tests only)"
        }
    };
    let size = match j.max_bytes {
        Some(max) => format!("at most {max} bytes (never removing open work)"),
        None => "no size bound (journal.max_bytes unset)".to_owned(),
    };
    info!(
        "journal: {}, durability {durability}, retention {} h, {size}",
        j.dir.display(),
        j.retention.as_secs() / 3600
    );
    let runtime = match config.runtime.flavor {
        crate::runtime::RuntimeFlavor::CurrentThread => "current-thread (one thread)".to_owned(),
        crate::runtime::RuntimeFlavor::MultiThread if config.runtime.worker_threads == 0 => {
            "multi-thread, one worker per core".to_owned()
        }
        crate::runtime::RuntimeFlavor::MultiThread => format!(
            "multi-thread, {} worker threads",
            config.runtime.worker_threads
        ),
    };
    info!("runtime: {runtime}");
    info!(
        "switch started: {} acquirer(s), {} route(s)",
        config.acquirers.len(),
        config.routing.routes.len()
    );
}

/// Listen backlog when the config sets none: enough for a burst of a few
/// thousand connects (128 made 3,000 sequential connects stall on SYN
/// retransmits), within what the kernel allows.
const DEFAULT_BACKLOG: u32 = 1024;

/// The kernel's cap on any listen backlog (`net.core.somaxconn`).
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A bound terminal listener.
struct Listener {
    listener: TcpListener,
    addr: SocketAddr,
    backlog: u32,
    tls: Option<Arc<TerminalTls>>,
}

/// `[terminals] listen` (plain, or TLS when `[terminals.tls]` has no
/// listen of its own), then the TLS listener if it has one.
fn bind_listeners(config: &Config) -> Result<Vec<Listener>, StartError> {
    let t = &config.terminals;
    let tls = match &t.tls {
        Some(c) => Some(Arc::new(
            TerminalTls::new(c.clone()).map_err(StartError::Tls)?,
        )),
        None => None,
    };
    let separate = tls.as_ref().and_then(|x| x.settings().listen);
    let mut wanted = vec![(
        t.listen,
        if separate.is_some() {
            None
        } else {
            tls.clone()
        },
    )];
    if let Some(addr) = separate {
        wanted.push((addr, tls));
    }
    let mut bound = Vec::new();
    for (addr, tls) in wanted {
        let fail = |source| StartError::Listen { addr, source };
        let (listener, backlog) = bind_terminals(addr, t.listen_backlog).map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        bound.push(Listener {
            listener,
            addr,
            backlog,
            tls,
        });
    }
    Ok(bound)
}

/// Binds the terminal listener through socket2, which, unlike
/// `TcpListener::bind` (fixed at 128 in tokio and std), lets the
/// backlog be chosen. Returns the listener and the backlog in effect.
fn bind_terminals(
    addr: SocketAddr,
    configured: Option<u32>,
) -> std::io::Result<(TcpListener, u32)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let cap = somaxconn();
    let backlog = match (configured, cap) {
        (Some(b), Some(cap)) if b > cap => {
            warn!(
                "terminals.listen_backlog = {b} is more than the system allows \
                 (net.core.somaxconn = {cap}); the kernel caps it at {cap}"
            );
            cap
        }
        (Some(b), _) => b,
        (None, Some(cap)) => DEFAULT_BACKLOG.min(cap),
        (None, None) => DEFAULT_BACKLOG,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's bind does: a restart can reuse the port at once while old
    // connections sit in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok((TcpListener::from_std(socket.into())?, backlog))
}

/// Connections taken per wake before yielding to the runtime: the whole
/// queue of a burst in a few turns, without starving the terminals.
const ACCEPT_BATCH: usize = 256;

/// A connection that was already waiting, or `None` when the queue is
/// empty for now (the waker is then registered for the next one).
async fn accept_ready(listener: &TcpListener) -> Option<std::io::Result<(TcpStream, SocketAddr)>> {
    std::future::poll_fn(|cx| match listener.poll_accept(cx) {
        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// Repeated listener warnings of one kind: one line per this interval,
/// with the count of those suppressed (2,002 refusal lines in 49 s were
/// seen before).
pub(crate) const LISTENER_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a listener waits after a failed accept before trying again.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// After a failed accept (out of file descriptors, most often): log it,
/// rate-limited, and pause. Retrying at once spins, since the condition
/// that failed the accept is still there. Both listeners use this.
pub(crate) async fn pause_after_accept_error(
    listener: &'static str,
    e: &std::io::Error,
    throttle: &mut LogThrottle,
) {
    metrics::counter!(telemetry::ACCEPT_ERRORS, "listener" => listener).increment(1);
    if let Some(suppressed) = throttle.allow(std::time::Instant::now()) {
        warn!(
            "{listener} listener: accept failed: {e}; pausing {} ms ({suppressed} more failure(s) since the last line)",
            ACCEPT_PAUSE.as_millis()
        );
    }
    tokio::time::sleep(ACCEPT_PAUSE).await;
}

/// The terminal listener's warning throttles, one per kind.
struct ListenerWarnings {
    refused: LogThrottle,
    accept_failed: LogThrottle,
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<TerminalTls>>,
    shared: Arc<Shared>,
    per_ip: Arc<DashMap<IpAddr, usize>>,
    tracker: TaskTracker,
) {
    let gauge = metrics::gauge!(telemetry::CONNECTIONS);
    let mut warnings = ListenerWarnings {
        refused: LogThrottle::new(LISTENER_WARN_EVERY),
        accept_failed: LogThrottle::new(LISTENER_WARN_EVERY),
    };
    loop {
        let first = tokio::select! {
            r = listener.accept() => r,
            _ = shared.stopping.cancelled() => return,
        };
        // Then everything else already queued, each through the limits
        // of the generation in force, and served under it.
        let current = shared.current();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(r) = next.take() {
            let (stream, peer) = match r {
                Ok(x) => x,
                Err(e) => {
                    pause_after_accept_error("terminals", &e, &mut warnings.accept_failed).await;
                    break;
                }
            };
            taken += 1;
            admit(
                stream,
                peer,
                &tls,
                &current,
                &per_ip,
                &gauge,
                &tracker,
                &mut warnings,
            );
            if taken < ACCEPT_BATCH && !shared.stopping.is_cancelled() {
                next = accept_ready(&listener).await;
            }
        }
    }
}

/// Serves a new connection if the limits allow it, else closes it.
#[allow(clippy::too_many_arguments)]
fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &Option<Arc<TerminalTls>>,
    shared: &Arc<Shared>,
    per_ip: &Arc<DashMap<IpAddr, usize>>,
    gauge: &metrics::Gauge,
    tracker: &TaskTracker,
    warnings: &mut ListenerWarnings,
) {
    let Some(guard) = ConnectionGuard::admit(shared, per_ip, peer.ip()) else {
        metrics::counter!(telemetry::CONNECTIONS_REFUSED).increment(1);
        if let Some(suppressed) = warnings.refused.allow(std::time::Instant::now()) {
            warn!(
                peer = %peer,
                "connection refused: connection limit reached ({suppressed} more refused since \
                 the last line; switchyard_connections_refused_total counts them all)"
            );
        }
        drop(stream);
        return;
    };
    gauge.set(shared.connections.load(Ordering::Relaxed) as f64);
    let shared = shared.clone();
    let gauge = gauge.clone();
    let tls = tls.clone();
    tracker.spawn(async move {
        serve_connection(stream, peer, tls, shared.clone()).await;
        drop(guard);
        gauge.set(shared.connections.load(Ordering::Relaxed) as f64);
    });
}

/// The handshake first on a TLS listener (the connection already counts
/// against the limits while it runs), then the terminal's actor.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<TerminalTls>>,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let (conn, bound) = match tls {
        None => (Conn::Plain(stream), None),
        Some(tls) => {
            let handshake = tls.accept(stream, peer);
            let accepted = tokio::select! {
                a = handshake => a,
                _ = shared.stopping.cancelled() => None,
            };
            match accepted {
                Some(a) => (a.conn, a.bound),
                None => return,
            }
        }
    };
    crate::switch::terminal::serve(conn, peer, shared, bound).await;
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

// ---------------------------------------------------------------------------
// The switch-wide limits: the `[limits]` table.

#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// Requests in flight across the whole switch; over it, 96 at once.
    pub max_in_flight: usize,
    /// On SIGINT/SIGTERM, how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
    /// Answers kept for repeats (x01 or resent requests), oldest out first.
    pub recent_answers: usize,
    /// How long an answer is kept for repeats.
    pub recent_answers_ttl: Duration,
}

table! {
    pub(crate) LimitsFile {
        max_in_flight: usize = 100_000, in 1..=10_000_000;
        shutdown_grace_ms: u64 = 5_000, in 0..=600_000;
        recent_answers: usize = 100_000, in 1..=10_000_000;
        recent_answers_ttl_s: u64 = 600, in 1..=86_400;
    }
}

impl LimitsFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> LimitsConfig {
        self.check_ranges(s);
        LimitsConfig {
            max_in_flight: self.max_in_flight,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            recent_answers: self.recent_answers,
            recent_answers_ttl: Duration::from_secs(self.recent_answers_ttl_s),
        }
    }
}
