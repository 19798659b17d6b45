//! The transaction store: every transaction's final state in a SQL
//! database, written off the hot path by an exporter that follows the
//! journal (`exporter.rs`).
//!
//! One interface ([`Store`]), one back end per database: SQLite
//! (`sqlite.rs`, embedded, the default) and PostgreSQL (`postgres.rs`,
//! `url = "postgres://..."`, for a server several nodes share). The trait
//! is synchronous and takes `&mut self`: its callers (the exporter thread,
//! later the settlement commands) run in a blocking context of their own;
//! the PostgreSQL back end's client drives tokio-postgres on a private
//! current-thread runtime inside its methods (the `postgres` crate), so
//! it must not be called on a tokio worker thread.
//!
//! Layout: `schema.rs` (migrations, one list per back end),
//! `sqlite.rs` and `postgres.rs` (the back ends), `exporter.rs` (the
//! journal follower and its thread), `config.rs` (`[store]`).
//!
//! Card data: a row holds the PAN only as the journal does, masked (first
//! 6, last 4) and as the keyed hash; the journal has no field for track
//! data, CVV or PIN blocks, so neither has the store.

mod config;
pub mod exporter;
pub mod postgres;
pub mod schema;
pub mod sqlite;

#[cfg(test)]
mod tests;

pub(crate) use config::StoreFile;
pub use config::{Backend, DEFAULT_URL, DbUrl, StoreConfig, parse_url, redact_url};
pub use exporter::{ExportSettings, Exporter, ExporterHandle};

use std::path::PathBuf;

/// A failure of the store or of the exporter's reading of the journal.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Names the server (`host:port/db`), never the url's password.
    #[error("postgres {target}: {source}")]
    Postgres {
        target: String,
        #[source]
        source: ::postgres::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the database is at schema version {found}, newer than this build knows ({known}); \
         run the newer build or restore a matching database"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("{what} {value} does not fit the database's 63-bit integers")]
    OutOfRange { what: &'static str, value: u64 },
    #[error("journal: {0}")]
    Journal(#[from] crate::switch::journal::ReadError),
    #[error(
        "the store has exported journal records up to {exported} for node `{node}`, but the \
         journal ends at {journal}: a different or reset journal? Give this journal its own \
         store.node_id (or store), or restore the journal"
    )]
    JournalBehind {
        node: String,
        exported: u64,
        journal: u64,
    },
    #[error(
        "the store's export position for node `{node}` is {found}, not {expected} as this \
         exporter had it (commits lost in a database crash or failover, or another switch \
         exporting as the same store.node_id); nothing of the batch was written"
    )]
    PositionMoved {
        node: String,
        expected: u64,
        found: u64,
    },
    #[error("starting the exporter thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl StoreError {
    /// A failure that waiting may cure (a database server down,
    /// restarting, unreachable): the exporter retries it, also at start,
    /// rather than stop the switch. A SQLite file that cannot be opened is
    /// a configuration problem, reported at start.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Postgres { .. })
    }
}

/// Where a reversal or advice stands in store-and-forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafState {
    Queued,
    Acked,
    Expired,
}

impl SafState {
    pub fn as_str(self) -> &'static str {
        match self {
            SafState::Queued => "queued",
            SafState::Acked => "acked",
            SafState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<SafState> {
        Some(match s {
            "queued" => SafState::Queued,
            "acked" => SafState::Acked,
            "expired" => SafState::Expired,
            _ => return None,
        })
    }
}

/// What the journal's request record says, as a row holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFields {
    pub at_ms: u64,
    pub mti: u16,
    pub stan: u32,
    pub terminal_id: String,
    pub merchant_id: String,
    pub rrn: String,
    /// First 6 + `*` + last 4.
    pub masked_pan: String,
    /// The keyed hash of the PAN.
    pub card_hash: [u8; 16],
    pub amount_minor: u64,
    pub currency: u16,
    /// DE7 `MMDDhhmmss` as a number.
    pub transmission_time: u64,
    /// The acquirer the router chose, by name; `None`: no route (92).
    pub route: Option<String>,
    pub fraud_points: u16,
    pub fraud_reasons: u16,
    /// The business date it was accepted in (`YYYY-MM-DD`); `None` for
    /// records written before business dates.
    pub business_date: Option<String>,
    /// DE3, six digits (`000000`); `None` when the request had none (or
    /// its record was written before schema 3's fields were kept).
    pub processing_code: Option<String>,
    /// DE18, merchant category code.
    pub mcc: Option<u16>,
    /// DE19, acquiring institution country (ISO 3166 numeric).
    pub country: Option<u16>,
    /// DE22, three digits (`051`).
    pub pos_entry_mode: Option<String>,
    /// The terminal's batch number (`[settlement] batch_field`), as text.
    pub batch: Option<String>,
}

/// The final answer the terminal got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Answered {
        at_ms: u64,
        response_code: String,
        approval_code: String,
        stand_in: bool,
        /// The host's DE15 (`MMDD`), when its answer had one.
        settlement_date: Option<String>,
    },
    /// Answered 91; a reversal follows.
    TimedOut { at_ms: u64 },
}

/// A reversal's or advice's progress. Fields a record did not carry are
/// `None` and leave the stored value as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SafUpdate {
    pub state: Option<SafState>,
    pub at_ms: Option<u64>,
    /// Reversal: its reason (DE39 of the 0420). Advice: its MTI.
    pub detail: Option<String>,
    pub attempts: Option<u32>,
    /// The host's answer to it.
    pub response_code: Option<String>,
}

/// What a run of journal records says about one transaction: applied to
/// its row as an upsert, every `None` leaving the stored value alone, so
/// applying the same records again gives the same row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnUpdate {
    pub txn: u64,
    /// Earliest and latest record time in this run (Unix ms).
    pub first_at_ms: u64,
    pub last_at_ms: u64,
    /// Sequence number of the latest record in this run.
    pub last_seq: u64,
    pub request: Option<RequestFields>,
    /// (when, acquirer name) of the forward upstream.
    pub forwarded: Option<(u64, String)>,
    pub outcome: Option<Outcome>,
    pub reversal: SafUpdate,
    pub advice: SafUpdate,
}

impl TxnUpdate {
    pub fn new(txn: u64, seq: u64, at_ms: u64) -> TxnUpdate {
        TxnUpdate {
            txn,
            first_at_ms: at_ms,
            last_at_ms: at_ms,
            last_seq: seq,
            request: None,
            forwarded: None,
            outcome: None,
            reversal: SafUpdate::default(),
            advice: SafUpdate::default(),
        }
    }
}

/// One SQL transaction's worth: the rows and the journal position they
/// bring the store to (the last record folded into them), from the one
/// the writer believes the store is at.
#[derive(Clone, Debug)]
pub struct ExportBatch<'a> {
    pub node_id: &'a str,
    pub rows: &'a [TxnUpdate],
    /// The export position the batch follows (0: none yet). The store
    /// writes nothing unless it is at this position
    /// ([`StoreError::PositionMoved`]): a database that lost commits the
    /// writer saw acknowledged (a crash with asynchronous commit, a
    /// failover), or a second writer for the node, is caught, not
    /// papered over.
    pub from: u64,
    pub position: u64,
}

/// A stored transaction, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRow {
    pub node_id: String,
    pub txn: u64,
    pub first_at_ms: u64,
    pub updated_at_ms: u64,
    pub last_seq: u64,
    pub request: Option<RequestFields>,
    pub acquirer: Option<String>,
    pub forwarded_at_ms: Option<u64>,
    /// `answered` or `timeout`; `None` while in flight (or never answered).
    pub outcome: Option<String>,
    /// DE39 the terminal got.
    pub response_code: Option<String>,
    /// DE38.
    pub approval_code: Option<String>,
    pub stand_in: Option<bool>,
    pub answered_at_ms: Option<u64>,
    /// The host's DE15 (`MMDD`).
    pub settlement_date: Option<String>,
    pub reversal: SafUpdate,
    pub advice: SafUpdate,
}

/// One acquirer reconciliation: the 0520 of a business date and currency
/// (`settlement::acquirer_recon`), and the host's answer once it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconciliation {
    pub node_id: String,
    pub acquirer: String,
    /// `YYYY-MM-DD`.
    pub business_date: String,
    /// DE50.
    pub currency: u16,
    /// DE11 of the 0520.
    pub stan: u32,
    /// DE74-DE77, DE86-DE89 as sent.
    pub totals: crate::switch::settlement::batch::Totals,
    /// DE81.
    pub authorizations: u64,
    pub queued_at_ms: u64,
    pub answered_at_ms: Option<u64>,
    /// DE39 of the 0530.
    pub response_code: Option<String>,
    /// DE66 of the 0530: 1 in balance, 2 out of balance; `None` until
    /// answered, or when the answer had none.
    pub balance: Option<u8>,
}

/// The transaction store. Every method is a blocking call; see the module
/// documentation for why.
pub trait Store: Send {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// The last journal sequence number exported for `node_id` (0: none).
    fn export_position(&mut self, node_id: &str) -> Result<u64, StoreError>;

    /// Upserts the rows and moves the node's export position from
    /// `batch.from` to `batch.position`, in one database transaction:
    /// after a crash both or neither are there. A store not at
    /// `batch.from` writes nothing and answers
    /// [`StoreError::PositionMoved`] with where it is.
    fn apply(&mut self, batch: &ExportBatch<'_>) -> Result<(), StoreError>;

    /// Deletes the rows of transactions that began before `cutoff_ms`
    /// (Unix ms); returns how many.
    fn delete_before(&mut self, cutoff_ms: u64) -> Result<u64, StoreError>;

    /// One transaction's row.
    fn transaction(&mut self, node_id: &str, txn: u64) -> Result<Option<TxnRow>, StoreError>;

    /// Up to `limit` rows of `node_id` with a transaction id above
    /// `after`, in id order.
    fn transactions(
        &mut self,
        node_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TxnRow>, StoreError>;

    /// Rows in the store, all nodes.
    fn count(&mut self) -> Result<u64, StoreError>;

    /// Every row of business date `date` (`YYYY-MM-DD`), all nodes,
    /// in the order the transactions began, handed to `each` one at a
    /// time; returns how many. What settlement reads.
    fn business_day(&mut self, date: &str, each: &mut dyn FnMut(TxnRow))
    -> Result<u64, StoreError>;

    /// Writes a reconciliation (insert, or replace the one of the same
    /// node, acquirer, date and currency).
    fn save_reconciliation(&mut self, r: &Reconciliation) -> Result<(), StoreError>;

    /// The reconciliations of `node_id`: of `date` when given, else the
    /// ones not answered yet; at most `limit`, oldest date first.
    fn reconciliations(
        &mut self,
        node_id: &str,
        date: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Reconciliation>, StoreError>;
}

/// Opens the configured store for a command that reads it (`settle
/// report`, `recon`): a SQLite file that is not there is an error, not an
/// empty store made for the occasion, and a PostgreSQL server that does
/// not answer is an error now. The schema is brought up to date as at
/// the switch's start.
pub fn open_to_read(backend: &Backend) -> Result<Box<dyn Store>, StoreError> {
    match backend {
        Backend::Sqlite { path } => {
            if !path.exists() {
                return Err(StoreError::Io {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no store there (the switch makes it when [store] enabled = true)",
                    ),
                });
            }
            Ok(Box::new(sqlite::SqliteStore::open(path)?))
        }
        Backend::Postgres { url } => Ok(Box::new(postgres::PgStore::connect(url)?)),
    }
}

/// Opens the configured store and brings its schema up to date. A
/// PostgreSQL server that does not answer is no error here: the store is
/// returned unconnected (logged), and connects on its first use, which
/// the exporter retries.
pub fn open(backend: &Backend) -> Result<Box<dyn Store>, StoreError> {
    match backend {
        Backend::Sqlite { path } => Ok(Box::new(sqlite::SqliteStore::open(path)?)),
        Backend::Postgres { url } => match postgres::PgStore::connect(url) {
            Ok(store) => Ok(Box::new(store)),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e,
                    "store: postgres {} not reachable now; the switch runs and the exporter \
                     keeps trying (the journal keeps the records)", url.target());
                Ok(Box::new(postgres::PgStore::lazy(url)?))
            }
            Err(e) => Err(e),
        },
    }
}
