//! Metric names, the Prometheus recorder, and log setup.
//!
//! Metric handles with labels are looked up once and cached by those that
//! use them ([`CodeCounters`], [`EventCounters`]): a registry lookup per
//! message would cost more than the rest of the hot path.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Responses sent to terminals, by request MTI and response code.
pub const REQUESTS: &str = "switchyard_requests_total";
/// Time from a request's arrival to its answer leaving the switch.
pub const REQUEST_SECONDS: &str = "switchyard_request_duration_seconds";
/// Time from forwarding upstream to the upstream answer, per acquirer.
pub const UPSTREAM_SECONDS: &str = "switchyard_upstream_duration_seconds";
/// Fraud decisions (`allow`, `review`, `decline`).
pub const FRAUD_DECISIONS: &str = "switchyard_fraud_decisions_total";
/// Fraud rules that added points, by rule.
pub const FRAUD_REASONS: &str = "switchyard_fraud_reasons_total";
/// Requests refused for load (`connection_limit`, `global_limit`,
/// `link_queue_full`, `journal_full`), answered 96.
pub const SHED: &str = "switchyard_shed_total";
/// Frames that could not be parsed, by what was done (`answered_30`,
/// `closed`).
pub const MALFORMED: &str = "switchyard_malformed_total";
/// Repeats answered from the recent-answers cache, not forwarded.
pub const REPEATS_ANSWERED: &str = "switchyard_repeats_answered_total";
/// Per acquirer: store-and-forward entries waiting.
pub const SAF_DEPTH: &str = "switchyard_saf_depth";
/// Per acquirer: store-and-forward resends.
pub const SAF_RETRIES: &str = "switchyard_saf_retries_total";
/// Per acquirer: store-and-forward entries given up.
pub const SAF_EXPIRED: &str = "switchyard_saf_expired_total";
/// Reversals queued after a timeout or a lost link.
pub const REVERSALS_QUEUED: &str = "switchyard_reversals_queued_total";
/// Host approvals that could not be delivered to their terminal (it had
/// gone, or the write failed), reversed upstream.
pub const UNDELIVERABLE_REVERSED: &str = "switchyard_undeliverable_reversed_total";
/// Terminal connections closed because they did not read their answers.
pub const WRITE_STALLED: &str = "switchyard_terminal_write_stalled_total";
/// Requests approved in stand-in.
pub const STAND_IN_APPROVED: &str = "switchyard_stand_in_approved_total";
/// Open terminal connections.
pub const CONNECTIONS: &str = "switchyard_terminal_connections";
/// Connections refused by the listener limits.
pub const CONNECTIONS_REFUSED: &str = "switchyard_connections_refused_total";
/// Failed accepts, by listener (`terminals`, `admin`); each is followed
/// by a pause.
pub const ACCEPT_ERRORS: &str = "switchyard_accept_errors_total";
/// Requests in flight in the whole switch.
pub const IN_FLIGHT: &str = "switchyard_in_flight";
/// Journal records accepted and not yet written (the journal's queue).
pub const JOURNAL_QUEUE: &str = "switchyard_journal_queue_depth";
/// Journal group commits (fsyncs) since start.
pub const JOURNAL_FSYNCS: &str = "switchyard_journal_fsyncs_total";
/// Journal segments begun on a preallocated (zero-filled) file since
/// start; the others grew as written (the first of a run, or when none
/// was ready).
pub const JOURNAL_SEGMENTS_PREALLOCATED: &str = "switchyard_journal_segments_preallocated_total";
/// Duration of each journal `fdatasync` (one per group commit): with
/// fsync durability most of a request's latency.
pub const JOURNAL_FSYNC_SECONDS: &str = "switchyard_journal_fsync_seconds";
/// Bytes of journal segments on disk.
pub const JOURNAL_BYTES: &str = "switchyard_journal_bytes";
/// Durable journal records not yet in the transaction store.
pub const STORE_EXPORT_LAG_RECORDS: &str = "switchyard_store_export_lag_records";
/// Age of the last record the store has while it is behind (0: caught up).
pub const STORE_EXPORT_LAG_SECONDS: &str = "switchyard_store_export_lag_seconds";
/// Row upserts written to the transaction store.
pub const STORE_ROWS_WRITTEN: &str = "switchyard_store_rows_written_total";
/// Journal records exported to the transaction store.
pub const STORE_RECORDS_EXPORTED: &str = "switchyard_store_records_exported_total";
/// Export batches committed (one SQL transaction each).
pub const STORE_BATCHES: &str = "switchyard_store_batches_total";
/// Export batches that failed (retried).
pub const STORE_EXPORT_ERRORS: &str = "switchyard_store_export_errors_total";
/// Rows deleted by `store.retention_days`.
pub const STORE_RETENTION_DELETED: &str = "switchyard_store_retention_deleted_total";
/// Always 1; the labels say which build runs (`version`, `commit`).
pub const BUILD_INFO: &str = "switchyard_build_info";
/// Cards whose fraud history is held in memory.
pub const FRAUD_TRACKED_CARDS: &str = "switchyard_fraud_tracked_cards";
/// Answers held for repeats.
pub const RECENT_ANSWERS: &str = "switchyard_recent_answers";
/// The business date as YYYYMMDD (an alert can compare it with today's).
pub const BUSINESS_DATE: &str = "switchyard_business_date";
/// Cutovers made, by reason (scheduled, startup, operator, host).
pub const CUTOVERS: &str = "switchyard_cutovers_total";
/// Per link: 1 when signed on.
pub const LINK_UP: &str = "switchyard_link_up";
/// Per link: requests waiting for an answer.
pub const LINK_IN_FLIGHT: &str = "switchyard_link_in_flight";
/// Per link: connects that failed or were refused at sign-on.
pub const LINK_CONNECT_FAILURES: &str = "switchyard_link_connect_failures_total";
/// Per link: requests that timed out upstream.
pub const LINK_TIMEOUTS: &str = "switchyard_link_timeouts_total";
/// Per link: answers that matched no request (`late` or `unknown`).
pub const LINK_UNMATCHED: &str = "switchyard_link_unmatched_total";
/// Per link: echo tests not answered in time.
/// TLS handshakes refused or failed, by listener and reason.
pub const TLS_HANDSHAKE_FAILURES: &str = "switchyard_tls_handshake_failures_total";
/// TLS handshakes completed, by listener.
pub const TLS_HANDSHAKES: &str = "switchyard_tls_handshakes_total";
/// Terminal TLS handshakes running now.
pub const TLS_HANDSHAKES_IN_FLIGHT: &str = "switchyard_tls_handshakes_in_flight";
/// Terminal connections that waited for a handshake slot.
pub const TLS_HANDSHAKE_WAITS: &str = "switchyard_tls_handshake_waits_total";
/// Requests refused (58) because DE41 is not the client certificate's.
pub const TLS_TERMINAL_ID_MISMATCH: &str = "switchyard_tls_terminal_id_mismatch_total";
/// Requests card security refused (63, 81), by reason.
pub const SECURITY_REFUSALS: &str = "switchyard_security_refusals_total";
/// Host answers discarded because their MAC did not verify, by link.
pub const LINK_ANSWER_MAC_FAILURES: &str = "switchyard_link_answer_mac_failures_total";
/// Key changes (0800, DE70 161), by side (terminal, acquirer) and result.
pub const KEY_CHANGES: &str = "switchyard_key_changes_total";
/// Commands sent to the network HSM (payShield), by command and result
/// (ok, refused, timeout, unavailable).
pub const HSM_COMMANDS: &str = "switchyard_hsm_commands_total";
/// Time from a command leaving for the network HSM to its answer, by
/// command (answers only, not timeouts).
pub const HSM_SECONDS: &str = "switchyard_hsm_command_duration_seconds";
/// Re-reads of the TLS material (SIGHUP), by result.
pub const TLS_RELOADS: &str = "switchyard_tls_reloads_total";
pub const LINK_MISSED_ECHOES: &str = "switchyard_link_missed_echoes_total";
/// Analytics events dropped because the queue to the analytics thread was full.
pub const ANALYTICS_DROPPED: &str = "switchyard_analytics_dropped_total";
/// The config generation in force (1 at start, one more per reload that
/// changed something).
pub const CONFIG_GENERATION: &str = "switchyard_config_generation";
/// Config reloads (SIGHUP or `POST /api/actions/reload`), by result (`ok`,
/// `unchanged`, `invalid`, `restart_required`, `failed`).
pub const CONFIG_RELOADS: &str = "switchyard_config_reloads_total";
/// Authorizations declined because an operator blocked the card or its
/// BIN, by kind (`card`, `bin`).
pub const BLOCKED: &str = "switchyard_blocked_total";
/// Operators' link actions (`stop`, `start`), by action and result.
pub const LINK_ACTIONS: &str = "switchyard_link_actions_total";
/// Analytics events the analytics thread took.
pub const ANALYTICS_EVENTS: &str = "switchyard_analytics_events_total";
/// Alerts open now (the anomaly detector's).
pub const ALERTS_OPEN: &str = "switchyard_alerts_open";
/// Alerts raised, by kind (approval_rate, rate_05, ..., volume).
pub const ALERTS_RAISED: &str = "switchyard_alerts_raised_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle
/// (`None` if another recorder was installed first, e.g. in tests).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            metrics::gauge!(
                BUILD_INFO,
                "version" => crate::build_info::VERSION,
                "commit" => crate::build_info::COMMIT
            )
            .set(1.0);
            spawn_upkeep(handle.clone());
            Some(handle)
        })
        .as_ref()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The recorder keeps every histogram sample in a queue until a scrape or
/// an upkeep drains it: without one, memory grew about 40 bytes per
/// request with nobody scraping (`build_recorder`, unlike `install`, does
/// not start an upkeep). A plain thread drains it once a second, off the
/// runtime that serves terminals, so the queue holds at most a second of
/// samples.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the metrics upkeep thread; histograms drain only when /metrics is scraped");
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        "Responses sent to terminals, by request MTI and DE39"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes refused or failed, by listener (terminals, link, admin) and reason"
    );
    describe_counter!(TLS_HANDSHAKES, "TLS handshakes completed, by listener");
    describe_gauge!(
        TLS_HANDSHAKES_IN_FLIGHT,
        "Terminal TLS handshakes running now"
    );
    describe_counter!(
        TLS_HANDSHAKE_WAITS,
        "Terminal connections that waited for a handshake slot (max_handshakes_in_flight)"
    );
    describe_counter!(
        TLS_TERMINAL_ID_MISMATCH,
        "Requests answered 58 because DE41 is not bound to the client certificate"
    );
    describe_counter!(
        TLS_RELOADS,
        "Re-reads of the terminal TLS material, by result"
    );
    describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Request arrival to answer sent"
    );
    describe_histogram!(
        UPSTREAM_SECONDS,
        metrics::Unit::Seconds,
        "Forwarded upstream to upstream answer"
    );
    describe_counter!(FRAUD_DECISIONS, "Fraud decisions");
    describe_counter!(FRAUD_REASONS, "Fraud rules that added points");
    describe_counter!(SHED, "Requests shed at admission (answered 96)");
    describe_counter!(MALFORMED, "Frames that could not be parsed");
    describe_counter!(REPEATS_ANSWERED, "Repeats answered from recent answers");
    describe_gauge!(SAF_DEPTH, "Store-and-forward entries waiting");
    describe_counter!(SAF_RETRIES, "Store-and-forward resends");
    describe_counter!(SAF_EXPIRED, "Store-and-forward entries given up");
    describe_counter!(
        REVERSALS_QUEUED,
        "Reversals queued after a timeout or lost link"
    );
    describe_counter!(STAND_IN_APPROVED, "Requests approved in stand-in");
    describe_counter!(
        ANALYTICS_DROPPED,
        "Analytics events dropped: the queue to the analytics thread was full"
    );
    describe_counter!(
        ANALYTICS_EVENTS,
        "Analytics events taken by the analytics thread"
    );
    describe_gauge!(ALERTS_OPEN, "Alerts open now");
    describe_counter!(ALERTS_RAISED, "Alerts raised, by kind");
    describe_gauge!(
        STORE_EXPORT_LAG_RECORDS,
        "Durable journal records not yet in the transaction store"
    );
    describe_gauge!(
        STORE_EXPORT_LAG_SECONDS,
        "Age of the newest exported record while the store is behind"
    );
    describe_counter!(
        STORE_ROWS_WRITTEN,
        "Row upserts written to the transaction store"
    );
    describe_counter!(
        STORE_RECORDS_EXPORTED,
        "Journal records exported to the store"
    );
    describe_counter!(STORE_BATCHES, "Store export batches committed");
    describe_counter!(STORE_EXPORT_ERRORS, "Store export batches that failed");
    describe_counter!(STORE_RETENTION_DELETED, "Store rows deleted by retention");
    describe_counter!(
        UNDELIVERABLE_REVERSED,
        "Host approvals that could not be delivered to the terminal, reversed"
    );
    describe_counter!(
        WRITE_STALLED,
        "Terminal connections closed for not reading their answers"
    );
    describe_gauge!(CONNECTIONS, "Open terminal connections");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused by listener limits"
    );
    describe_counter!(ACCEPT_ERRORS, "Failed accepts (each followed by a pause)");
    describe_gauge!(IN_FLIGHT, "Requests in flight in the switch");
    describe_gauge!(JOURNAL_QUEUE, "Journal records waiting for the writer");
    describe_gauge!(JOURNAL_FSYNCS, "Journal group commits since start");
    describe_gauge!(
        JOURNAL_SEGMENTS_PREALLOCATED,
        "Journal segments begun on a preallocated, zero-filled file since start"
    );
    describe_histogram!(
        JOURNAL_FSYNC_SECONDS,
        metrics::Unit::Seconds,
        "Journal fdatasync per group commit"
    );
    describe_gauge!(JOURNAL_BYTES, "Bytes of journal segments on disk");
    describe_gauge!(BUILD_INFO, "1; labels: version and commit of this build");
    describe_gauge!(FRAUD_TRACKED_CARDS, "Cards with fraud history in memory");
    describe_gauge!(RECENT_ANSWERS, "Answers held for repeats");
    describe_gauge!(BUSINESS_DATE, "The business date, as YYYYMMDD");
    describe_counter!(CUTOVERS, "Cutovers of the business date, by reason");
    describe_counter!(
        crate::switch::settlement::acquirer_recon::RECONCILIATIONS_METRIC,
        "Acquirer reconciliations (0520) answered, by acquirer and result"
    );
    describe_counter!(
        crate::switch::settlement::acquirer_recon::OUT_OF_BALANCE_METRIC,
        "Acquirer reconciliations the host answered out of balance (DE66 2)"
    );
    describe_gauge!(LINK_UP, "1 when the acquirer link is signed on");
    describe_gauge!(LINK_IN_FLIGHT, "Requests waiting for an upstream answer");
    describe_counter!(LINK_CONNECT_FAILURES, "Failed connects or sign-ons");
    describe_counter!(LINK_TIMEOUTS, "Requests that timed out upstream");
    describe_counter!(LINK_UNMATCHED, "Upstream answers that matched no request");
    describe_counter!(LINK_MISSED_ECHOES, "Echo tests not answered in time");
    describe_gauge!(CONFIG_GENERATION, "The config generation in force");
    describe_counter!(CONFIG_RELOADS, "Config reloads, by result");
    describe_counter!(
        BLOCKED,
        "Authorizations declined for a card or BIN an operator blocked, by kind"
    );
    describe_counter!(LINK_ACTIONS, "Operators' link stops and starts, by result");
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Sets up `tracing` output to stderr. `RUST_LOG` overrides the default
/// level (`info`). Colour codes only when stderr is a terminal and
/// `NO_COLOR` is unset: in a file or a collector they are noise.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).try_init()
        }
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Handles of the counters terminals bump on events, looked up once: the
/// shed ones run at flood rate exactly when the switch is overloaded.
pub struct EventCounters {
    pub shed_connection_limit: Counter,
    pub shed_global_limit: Counter,
    pub shed_link_queue_full: Counter,
    pub shed_journal_full: Counter,
    pub malformed_answered_30: Counter,
    pub malformed_closed: Counter,
    pub repeats_answered: Counter,
    pub stand_in_approved: Counter,
    pub reversals_queued: Counter,
    pub undeliverable_reversed: Counter,
    pub write_stalled: Counter,
}

impl EventCounters {
    /// After the recorder is installed (`prometheus`), or the handles count
    /// nowhere.
    pub fn new() -> EventCounters {
        let shed = |reason: &'static str| metrics::counter!(SHED, "reason" => reason);
        let malformed = |action: &'static str| metrics::counter!(MALFORMED, "action" => action);
        EventCounters {
            shed_connection_limit: shed("connection_limit"),
            shed_global_limit: shed("global_limit"),
            shed_link_queue_full: shed("link_queue_full"),
            shed_journal_full: shed("journal_full"),
            malformed_answered_30: malformed("answered_30"),
            malformed_closed: malformed("closed"),
            repeats_answered: metrics::counter!(REPEATS_ANSWERED),
            stand_in_approved: metrics::counter!(STAND_IN_APPROVED),
            reversals_queued: metrics::counter!(REVERSALS_QUEUED),
            undeliverable_reversed: metrics::counter!(UNDELIVERABLE_REVERSED),
            write_stalled: metrics::counter!(WRITE_STALLED),
        }
    }
}

impl Default for EventCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// Response counters by (request MTI, response code), cached per actor.
/// Codes are few; a linear scan of a short vector beats hashing.
#[derive(Default)]
pub struct CodeCounters {
    cache: Vec<(u16, [u8; 2], Counter)>,
}

/// Bound on distinct (MTI, code) pairs cached per actor; pairs beyond it
/// (a host inventing codes) go through the registry each time.
const CODE_CACHE: usize = 64;

impl CodeCounters {
    pub fn increment(&mut self, mti: u16, code: [u8; 2]) {
        if let Some((_, _, c)) = self.cache.iter().find(|(m, k, _)| *m == mti && *k == code) {
            c.increment(1);
            return;
        }
        let label_code = if code.iter().all(|c| c.is_ascii_alphanumeric()) {
            String::from_utf8_lossy(&code).into_owned()
        } else {
            "invalid".to_owned()
        };
        let c = metrics::counter!(REQUESTS, "mti" => format!("{mti:04}"), "code" => label_code);
        c.increment(1);
        if self.cache.len() < CODE_CACHE {
            self.cache.push((mti, code, c));
        }
    }
}

/// The histogram of switch-internal request latency.
pub fn request_seconds() -> Histogram {
    metrics::histogram!(REQUEST_SECONDS)
}
