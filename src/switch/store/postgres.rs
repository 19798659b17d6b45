//! The PostgreSQL back end: a server that several nodes can share, rows
//! keyed on (node id, transaction id) as in SQLite.
//!
//! The synchronous `postgres` client (tokio-postgres on a current-thread
//! runtime of its own): the exporter is a plain thread making one call at
//! a time, so an async client would only add a runtime to drive by hand.
//! Its calls block and must not be made on a tokio worker thread (its
//! runtime refuses to run inside another): the exporter's thread, the
//! switch's `spawn_blocking`, or `block_in_place` in tests.
//!
//! The connection is made when first needed and made again after it
//! breaks: every call that fails for want of a server drops the client,
//! and the next call connects (and checks the schema) anew. So a server
//! that is down at start or restarts later costs export lag, never the
//! switch: the exporter retries with backoff and the journal keeps the
//! records. No TLS to the database yet (`NoTls`): run it on a trusted
//! network or through a local socket.
//!
//! Commits do not wait for the server's WAL flush (`synchronous_commit =
//! off`, as SQLite's `synchronous = NORMAL`), and a failover may lose the
//! last commits too; every batch therefore moves the export position only
//! from the one the exporter expects ([`ExportBatch::from`]), so a store
//! that lost commits answers where it really is and the exporter goes
//! again from there.
//!
//! A batch is one statement, one round trip: each column an array
//! parameter (binary), `INSERT ... SELECT ... FROM UNNEST(...) ON
//! CONFLICT` into `transactions`, and the export position moved in the
//! same statement. Binary COPY into a temporary table then `INSERT ...
//! SELECT` was slower at every batch size (docs/BENCHMARKS.md), and a
//! multi-row `VALUES` needs a statement per 1,524 rows (65,535 parameters
//! over 43 columns).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Row};

use super::config::DbUrl;
use super::schema::{self, Migration};
use super::{
    ExportBatch, Outcome, Reconciliation, RequestFields, SafState, SafUpdate, Store, StoreError,
    TxnRow, TxnUpdate,
};

/// Connect attempts give up after this: the exporter then backs off and
/// tries again, and a stop is not held up for longer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A server that vanished without closing the connection (a cable, a
/// failover) is noticed by TCP keepalives after about a minute, not never.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;
/// Migrations of nodes starting together take turns on this advisory
/// lock ("8583" and the store's first schema).
const MIGRATION_LOCK: i64 = 8_583_001;

/// The stored columns, in the order of every statement here and of
/// [`Values::params`].
const COLUMNS: [(&str, Type); 43] = [
    ("node_id", Type::TEXT),
    ("txn_id", Type::INT8),
    ("first_at_ms", Type::INT8),
    ("updated_at_ms", Type::INT8),
    ("last_seq", Type::INT8),
    ("request_at_ms", Type::INT8),
    ("mti", Type::INT4),
    ("stan", Type::INT8),
    ("terminal_id", Type::TEXT),
    ("merchant_id", Type::TEXT),
    ("rrn", Type::TEXT),
    ("masked_pan", Type::TEXT),
    ("card_hash", Type::BYTEA),
    ("amount_minor", Type::INT8),
    ("currency", Type::INT4),
    ("transmission_time", Type::INT8),
    ("route", Type::TEXT),
    ("fraud_points", Type::INT4),
    ("fraud_reasons", Type::INT4),
    ("acquirer", Type::TEXT),
    ("forwarded_at_ms", Type::INT8),
    ("outcome", Type::TEXT),
    ("response_code", Type::TEXT),
    ("approval_code", Type::TEXT),
    ("stand_in", Type::BOOL),
    ("answered_at_ms", Type::INT8),
    ("reversal_state", Type::TEXT),
    ("reversal_at_ms", Type::INT8),
    ("reversal_reason", Type::TEXT),
    ("reversal_attempts", Type::INT8),
    ("reversal_rc", Type::TEXT),
    ("advice_state", Type::TEXT),
    ("advice_at_ms", Type::INT8),
    ("advice_mti", Type::TEXT),
    ("advice_attempts", Type::INT8),
    ("advice_rc", Type::TEXT),
    ("business_date", Type::TEXT),
    ("settlement_date", Type::TEXT),
    ("processing_code", Type::TEXT),
    ("mcc", Type::INT4),
    ("country", Type::INT4),
    ("pos_entry_mode", Type::TEXT),
    ("batch", Type::TEXT),
];

/// The SQL made once from [`COLUMNS`].
struct Sql {
    /// One statement: the export position moved (`$44`, at `$45`) if it
    /// is at `$46`, and only then the rows (`$1` the node, `$2..=$43`
    /// one array per column) merged into `transactions`. A single
    /// statement is atomic: both or neither, without BEGIN and COMMIT
    /// round trips. It answers whether it moved the position, and where
    /// the position was.
    apply: String,
    /// [`Method::Copy`]'s position check and move alone (`$1` node, `$2`
    /// position, `$3` at, `$4` from), answering as `apply` does.
    position: String,
    /// `$2..=$43`: the arrays' types, in [`COLUMNS`] order.
    array_types: Vec<Type>,
    select: String,
    /// [`Method::Copy`]: `COPY export_rows ... FROM STDIN BINARY`, then
    /// `INSERT INTO transactions ... SELECT ... FROM export_rows ...`.
    copy: String,
    merge: String,
    types: Vec<Type>,
}

impl Sql {
    fn new() -> Sql {
        let names: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
        let columns = names.join(", ");
        // The same merge as SQLite's upsert: every column but the key
        // takes the new value when the update has one, the first time
        // keeps its minimum, the last time and sequence their maximum.
        let mut set = String::new();
        for name in &names[2..] {
            let value = match *name {
                "first_at_ms" => format!("LEAST(t.{name}, EXCLUDED.{name})"),
                "updated_at_ms" | "last_seq" => format!("GREATEST(t.{name}, EXCLUDED.{name})"),
                _ => format!("COALESCE(EXCLUDED.{name}, t.{name})"),
            };
            let sep = if set.is_empty() { "" } else { ",\n        " };
            let _ = write!(set, "{sep}{name} = {value}");
        }
        let array_types: Vec<Type> = COLUMNS[1..].iter().map(|c| array_of(&c.1)).collect();
        let arrays: Vec<String> = array_types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::{}", i + 2, t.name().trim_start_matches('_')) + "[]")
            .collect();
        let position = array_types.len() + 2;
        let moved = move_position(position, position + 1, position + 2);
        Sql {
            apply: format!(
                "WITH moved AS ({moved}),
merged AS (
    INSERT INTO transactions AS t ({columns})
    SELECT $1::TEXT, u.* FROM UNNEST({arrays}) AS u
    WHERE EXISTS (SELECT 1 FROM moved)
    ON CONFLICT (node_id, txn_id) DO UPDATE SET
        {set}
)
SELECT (SELECT COUNT(*) FROM moved),
       (SELECT seq FROM export_position WHERE node_id = $1)",
                arrays = arrays.join(", "),
            ),
            position: format!(
                "WITH moved AS ({}) SELECT (SELECT COUNT(*) FROM moved), \
                 (SELECT seq FROM export_position WHERE node_id = $1)",
                move_position(2, 3, 4)
            ),
            array_types,
            select: format!("SELECT {columns} FROM transactions"),
            copy: format!("COPY export_rows ({columns}) FROM STDIN BINARY"),
            merge: format!(
                "INSERT INTO transactions AS t ({columns}) SELECT {columns} FROM export_rows \
                 ON CONFLICT (node_id, txn_id) DO UPDATE SET\n        {set}"
            ),
            types: COLUMNS.iter().map(|c| c.1.clone()).collect(),
        }
    }
}

/// The export position of node `$1` set to `$position` (at `$at`) if it
/// is at `$from` (an absent row is at 0), `RETURNING` a row if it was.
/// The statement's snapshot is from before it, so a `SELECT` beside it
/// sees the position as it was.
fn move_position(position: usize, at: usize, from: usize) -> String {
    format!(
        "INSERT INTO export_position AS p (node_id, seq, updated_at_ms)
    SELECT $1, ${position}, ${at}
    WHERE ${from} = 0 OR EXISTS (SELECT 1 FROM export_position WHERE node_id = $1)
    ON CONFLICT (node_id) DO UPDATE SET
        seq = EXCLUDED.seq,
        updated_at_ms = GREATEST(p.updated_at_ms, EXCLUDED.updated_at_ms)
    WHERE p.seq = ${from}
    RETURNING 1"
    )
}

/// What [`Sql::apply`] and [`Sql::position`] answer: Ok if the position
/// moved, else where it was.
fn moved(row: &Row, batch: &ExportBatch<'_>) -> Result<(), Failure> {
    let count: i64 = row.try_get(0)?;
    if count > 0 {
        return Ok(());
    }
    let found: Option<i64> = row.try_get(1)?;
    Err(Failure::Store(StoreError::PositionMoved {
        node: batch.node_id.to_owned(),
        expected: batch.from,
        found: found.map_or(0, |s| s.max(0) as u64),
    }))
}

fn array_of(t: &Type) -> Type {
    match *t {
        Type::INT8 => Type::INT8_ARRAY,
        Type::INT4 => Type::INT4_ARRAY,
        Type::BYTEA => Type::BYTEA_ARRAY,
        Type::BOOL => Type::BOOL_ARRAY,
        _ => Type::TEXT_ARRAY,
    }
}

/// How a batch goes in. Both are kept so that the choice can be measured
/// again (`apply_rate` in the store's tests); see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    /// One statement, a column array each (the default).
    #[default]
    Unnest,
    /// Binary COPY into a temporary table, then INSERT ... SELECT, then
    /// the position, in one transaction.
    Copy,
}

pub struct PgStore {
    conn: Conn,
    method: Method,
    sql: Sql,
    /// Transaction ids seen in the part of a batch being copied (reused).
    seen: HashSet<u64>,
}

/// The connection, made when needed.
struct Conn {
    config: postgres::Config,
    /// `host:port/db`, what errors and logs name; never the password.
    target: String,
    /// `None`: not connected (yet, or since the connection broke).
    client: Option<Client>,
}

impl Conn {
    fn error(&self, source: postgres::Error) -> StoreError {
        StoreError::Postgres {
            target: self.target.clone(),
            source,
        }
    }

    /// The connected client, connecting (and migrating) first if needed.
    fn get(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        match self.client {
            Some(ref mut client) => Ok(client),
            None => {
                let client = self.open()?;
                Ok(self.client.insert(client))
            }
        }
    }

    fn open(&self) -> Result<Client, StoreError> {
        let mut client = self.config.connect(NoTls).map_err(|e| self.error(e))?;
        migrate(&mut client, schema::POSTGRES).map_err(|e| match e {
            Migrate::Pg(e) => self.error(e),
            Migrate::TooNew { found, known } => StoreError::SchemaTooNew { found, known },
        })?;
        // A commit does not wait for its WAL flush (as SQLite's
        // `synchronous = NORMAL`): a server crash may lose the last few
        // commits, each with the export position it moved, so the exporter
        // writes them again from the journal (which keeps them); the store
        // is never inconsistent. At small batches the flush wait, not the
        // work, was what bounded the exporter's rate.
        client
            .batch_execute("SET synchronous_commit = off")
            .map_err(|e| self.error(e))?;
        // Per session: the staging table of [`Method::Copy`], emptied by
        // each commit.
        client
            .batch_execute(
                "CREATE TEMPORARY TABLE IF NOT EXISTS export_rows \
                 (LIKE transactions) ON COMMIT DELETE ROWS",
            )
            .map_err(|e| self.error(e))?;
        tracing::info!(server = %self.target, "store: connected to postgres");
        Ok(client)
    }
}

impl PgStore {
    /// A store that connects when first used. Only the url is checked
    /// here (already done by the config).
    pub fn lazy(url: &DbUrl) -> Result<PgStore, StoreError> {
        let target = url.target().to_owned();
        let mut config: postgres::Config =
            url.expose()
                .parse()
                .map_err(|source| StoreError::Postgres {
                    target: target.clone(),
                    source,
                })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("switchyard");
        }
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
        Ok(PgStore {
            conn: Conn {
                config,
                target,
                client: None,
            },
            method: Method::default(),
            sql: Sql::new(),
            seen: HashSet::new(),
        })
    }

    /// Chooses how batches are written (for measurements).
    pub fn set_method(&mut self, method: Method) {
        self.method = method;
    }

    /// Connects now and applies the migrations the database lacks.
    pub fn connect(url: &DbUrl) -> Result<PgStore, StoreError> {
        let mut store = PgStore::lazy(url)?;
        store.conn.get()?;
        Ok(store)
    }

    /// `host:port/db`.
    pub fn target(&self) -> &str {
        &self.conn.target
    }

    /// Runs `f` on the client; an error that is not the server's answer
    /// to a statement (the connection broke, the server went away) drops
    /// the client, so the next call connects again.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Client, &Sql, &mut HashSet<u64>) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let PgStore {
            conn,
            sql,
            seen,
            method: _,
        } = self;
        let client = conn.get()?;
        match f(client, sql, seen) {
            Ok(v) => Ok(v),
            Err(Failure::Store(e)) => Err(e),
            Err(Failure::Pg(e)) => {
                if connection_lost(&e) || client.is_closed() {
                    conn.client = None;
                }
                Err(conn.error(e))
            }
        }
    }

    /// The schema version the database is at (0: empty).
    pub fn schema_version(&mut self) -> Result<i64, StoreError> {
        self.with(|c, _, _| {
            let row = c.query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_version",
                &[],
            )?;
            Ok(row.try_get(0)?)
        })
    }
}

/// Connection-class failures (SQLSTATE class 08, the server shutting
/// down or not yet accepting, too many connections) and every error that
/// is not the server's (I/O, a closed connection).
fn connection_lost(e: &postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }
    }
}

/// What can go wrong inside [`PgStore::with`].
enum Failure {
    Pg(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Failure {
        Failure::Pg(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Store(e)
    }
}

enum Migrate {
    Pg(postgres::Error),
    TooNew { found: i64, known: i64 },
}

impl From<postgres::Error> for Migrate {
    fn from(e: postgres::Error) -> Migrate {
        Migrate::Pg(e)
    }
}

/// Applies the migrations the database lacks, all in one transaction
/// (PostgreSQL's DDL is transactional) under an advisory lock, so nodes
/// starting together neither race nor see half a schema.
fn migrate(client: &mut Client, migrations: &[Migration]) -> Result<(), Migrate> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version     BIGINT PRIMARY KEY,
             description TEXT NOT NULL
         )",
    )?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_version",
            &[],
        )?
        .try_get(0)?;
    let known = schema::latest(migrations);
    if found > known {
        return Err(Migrate::TooNew { found, known });
    }
    for m in migrations.iter().filter(|m| m.version > found) {
        tx.batch_execute(m.sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, description) VALUES ($1, $2)",
            &[&m.version, &m.description],
        )?;
        tracing::info!(
            version = m.version,
            "store: schema migrated: {}",
            m.description
        );
    }
    tx.commit()?;
    Ok(())
}

fn int(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

fn opt_int(what: &'static str, value: Option<u64>) -> Result<Option<i64>, StoreError> {
    value.map(|v| int(what, v)).transpose()
}

/// One value of a row.
enum Cell<'a> {
    Int(Option<i64>),
    Small(Option<i32>),
    Text(Option<&'a str>),
    Bytes(Option<&'a [u8]>),
    Bool(Option<bool>),
}

impl Cell<'_> {
    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Int(v) => v,
            Cell::Small(v) => v,
            Cell::Text(v) => v,
            Cell::Bytes(v) => v,
            Cell::Bool(v) => v,
        }
    }
}

/// A row's values but the node id, in [`COLUMNS`] order.
fn cells(t: &TxnUpdate) -> Result<[Cell<'_>; 42], StoreError> {
    use Cell::{Bool, Bytes, Int, Small, Text};
    let req = t.request.as_ref();
    let (outcome, rc, approval, stand_in, answered_at, de15) = match &t.outcome {
        None => (None, None, None, None, None, None),
        Some(Outcome::Answered {
            at_ms,
            response_code,
            approval_code,
            stand_in,
            settlement_date,
        }) => (
            Some("answered"),
            Some(response_code.as_str()),
            Some(approval_code.as_str()),
            Some(*stand_in),
            Some(*at_ms),
            settlement_date.as_deref(),
        ),
        Some(Outcome::TimedOut { at_ms }) => (
            Some("timeout"),
            Some("91"),
            None,
            Some(false),
            Some(*at_ms),
            None,
        ),
    };
    let (r, a) = (&t.reversal, &t.advice);
    Ok([
        Int(Some(int("txn", t.txn)?)),
        Int(Some(int("time", t.first_at_ms)?)),
        Int(Some(int("time", t.last_at_ms)?)),
        Int(Some(int("seq", t.last_seq)?)),
        Int(opt_int("time", req.map(|q| q.at_ms))?),
        Small(req.map(|q| i32::from(q.mti))),
        Int(req.map(|q| i64::from(q.stan))),
        Text(req.map(|q| q.terminal_id.as_str())),
        Text(req.map(|q| q.merchant_id.as_str())),
        Text(req.map(|q| q.rrn.as_str())),
        Text(req.map(|q| q.masked_pan.as_str())),
        Bytes(req.map(|q| &q.card_hash[..])),
        Int(opt_int("amount", req.map(|q| q.amount_minor))?),
        Small(req.map(|q| i32::from(q.currency))),
        Int(opt_int("DE7", req.map(|q| q.transmission_time))?),
        Text(req.and_then(|q| q.route.as_deref())),
        Small(req.map(|q| i32::from(q.fraud_points))),
        Small(req.map(|q| i32::from(q.fraud_reasons))),
        Text(t.forwarded.as_ref().map(|f| f.1.as_str())),
        Int(opt_int("time", t.forwarded.as_ref().map(|f| f.0))?),
        Text(outcome),
        Text(rc),
        Text(approval),
        Bool(stand_in),
        Int(opt_int("time", answered_at)?),
        Text(r.state.map(SafState::as_str)),
        Int(opt_int("time", r.at_ms)?),
        Text(r.detail.as_deref()),
        Int(r.attempts.map(i64::from)),
        Text(r.response_code.as_deref()),
        Text(a.state.map(SafState::as_str)),
        Int(opt_int("time", a.at_ms)?),
        Text(a.detail.as_deref()),
        Int(a.attempts.map(i64::from)),
        Text(a.response_code.as_deref()),
        Text(req.and_then(|q| q.business_date.as_deref())),
        Text(de15),
        Text(req.and_then(|q| q.processing_code.as_deref())),
        Small(req.and_then(|q| q.mcc).map(i32::from)),
        Small(req.and_then(|q| q.country).map(i32::from)),
        Text(req.and_then(|q| q.pos_entry_mode.as_deref())),
        Text(req.and_then(|q| q.batch.as_deref())),
    ])
}

/// One column of a batch, as the array parameter that carries it.
enum Column<'a> {
    Int(Vec<Option<i64>>),
    Small(Vec<Option<i32>>),
    Text(Vec<Option<&'a str>>),
    Bytes(Vec<Option<&'a [u8]>>),
    Bool(Vec<Option<bool>>),
}

impl<'a> Column<'a> {
    fn for_type(t: &Type, n: usize) -> Column<'a> {
        match *t {
            Type::INT8_ARRAY => Column::Int(Vec::with_capacity(n)),
            Type::INT4_ARRAY => Column::Small(Vec::with_capacity(n)),
            Type::BYTEA_ARRAY => Column::Bytes(Vec::with_capacity(n)),
            Type::BOOL_ARRAY => Column::Bool(Vec::with_capacity(n)),
            _ => Column::Text(Vec::with_capacity(n)),
        }
    }

    /// `cell` is of this column's type: both follow [`COLUMNS`].
    fn push(&mut self, cell: Cell<'a>) {
        match (self, cell) {
            (Column::Int(v), Cell::Int(c)) => v.push(c),
            (Column::Small(v), Cell::Small(c)) => v.push(c),
            (Column::Text(v), Cell::Text(c)) => v.push(c),
            (Column::Bytes(v), Cell::Bytes(c)) => v.push(c),
            (Column::Bool(v), Cell::Bool(c)) => v.push(c),
            _ => debug_assert!(false, "a cell of another type than its column"),
        }
    }

    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Int(v) => v,
            Column::Small(v) => v,
            Column::Text(v) => v,
            Column::Bytes(v) => v,
            Column::Bool(v) => v,
        }
    }
}

/// Merges `rows` and moves the position in one statement (see
/// [`Sql::apply`]). A transaction id twice in one statement would make
/// `ON CONFLICT DO UPDATE` fail (a row may be changed once per
/// statement), so such a batch goes in parts, in order, each with
/// distinct ids, inside one transaction: the same result as SQLite's
/// row-by-row upserts. The exporter's batches have one update per
/// transaction, so one part.
fn apply_rows(
    client: &mut Client,
    sql: &Sql,
    seen: &mut HashSet<u64>,
    batch: &ExportBatch<'_>,
) -> Result<(), Failure> {
    let position = int("seq", batch.position)?;
    let at = int(
        "time",
        batch.rows.iter().map(|t| t.last_at_ms).max().unwrap_or(0),
    )?;
    let parts = parts(seen, batch.rows);
    let from = int("seq", batch.from)?;
    if let [rows] = parts[..] {
        return apply_part(client, sql, batch, rows, (from, position, at));
    }
    // After the first part the position is the batch's own.
    let mut tx = client.transaction()?;
    for (i, rows) in parts.into_iter().enumerate() {
        let from = if i == 0 { from } else { position };
        apply_part(&mut tx, sql, batch, rows, (from, position, at))?;
    }
    tx.commit()?;
    Ok(())
}

/// One statement of [`apply_rows`]: alone (autocommit) or inside the
/// transaction of a batch in parts.
/// `(from, position, at)`: see [`Sql::apply`].
fn apply_part(
    c: &mut impl postgres::GenericClient,
    sql: &Sql,
    batch: &ExportBatch<'_>,
    rows: &[TxnUpdate],
    (from, position, at): (i64, i64, i64),
) -> Result<(), Failure> {
    let mut columns: Vec<Column<'_>> = sql
        .array_types
        .iter()
        .map(|t| Column::for_type(t, rows.len()))
        .collect();
    for t in rows {
        for (column, cell) in columns.iter_mut().zip(cells(t)?) {
            column.push(cell);
        }
    }
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = Vec::with_capacity(COLUMNS.len() + 3);
    params.push((&batch.node_id, Type::TEXT));
    for (column, t) in columns.iter().zip(&sql.array_types) {
        params.push((column.param(), t.clone()));
    }
    params.push((&position, Type::INT8));
    params.push((&at, Type::INT8));
    params.push((&from, Type::INT8));
    let row = c.query_typed_one(&sql.apply, &params)?;
    moved(&row, batch)
}

/// `rows` cut where a transaction id comes again.
fn parts<'r>(seen: &mut HashSet<u64>, rows: &'r [TxnUpdate]) -> Vec<&'r [TxnUpdate]> {
    let mut parts = Vec::new();
    let mut rest = rows;
    loop {
        seen.clear();
        let end = rest
            .iter()
            .position(|t| !seen.insert(t.txn))
            .unwrap_or(rest.len());
        let (part, later) = rest.split_at(end);
        parts.push(part);
        rest = later;
        if rest.is_empty() {
            return parts;
        }
    }
}

/// [`Method::Copy`]: the same result as [`apply_rows`].
fn copy_rows(
    client: &mut Client,
    sql: &Sql,
    seen: &mut HashSet<u64>,
    batch: &ExportBatch<'_>,
) -> Result<(), Failure> {
    let position = int("seq", batch.position)?;
    let at = int(
        "time",
        batch.rows.iter().map(|t| t.last_at_ms).max().unwrap_or(0),
    )?;
    let from = int("seq", batch.from)?;
    let mut tx = client.transaction()?;
    // The check first: a store elsewhere gets no rows (dropping `tx`
    // rolls back).
    let row = tx.query_typed_one(
        &sql.position,
        &[
            (&batch.node_id, Type::TEXT),
            (&position, Type::INT8),
            (&at, Type::INT8),
            (&from, Type::INT8),
        ],
    )?;
    moved(&row, batch)?;
    for (i, rows) in parts(seen, batch.rows).into_iter().enumerate() {
        if i > 0 {
            tx.batch_execute("TRUNCATE export_rows")?;
        }
        let mut writer = BinaryCopyInWriter::new(tx.copy_in(&sql.copy)?, &sql.types);
        for t in rows {
            let cells = cells(t)?;
            let mut values: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(COLUMNS.len());
            values.push(&batch.node_id);
            values.extend(cells.iter().map(Cell::param));
            writer.write(&values)?;
        }
        writer.finish()?;
        tx.execute(&sql.merge, &[])?;
    }
    tx.commit()?;
    Ok(())
}

fn u(r: &Row, i: usize) -> Result<u64, postgres::Error> {
    let v: i64 = r.try_get(i)?;
    Ok(v.max(0) as u64)
}

fn ou(r: &Row, i: usize) -> Result<Option<u64>, postgres::Error> {
    let v: Option<i64> = r.try_get(i)?;
    Ok(v.map(|v| v.max(0) as u64))
}

fn small(r: &Row, i: usize) -> Result<u64, postgres::Error> {
    let v: Option<i32> = r.try_get(i)?;
    Ok(v.map_or(0, |v| v.max(0) as u64))
}

fn opt_small(r: &Row, i: usize) -> Result<Option<u16>, postgres::Error> {
    let v: Option<i32> = r.try_get(i)?;
    Ok(v.and_then(|v| u16::try_from(v).ok()))
}

fn saf(r: &Row, first: usize) -> Result<SafUpdate, postgres::Error> {
    let state: Option<String> = r.try_get(first)?;
    let attempts: Option<i64> = r.try_get(first + 3)?;
    Ok(SafUpdate {
        state: state.as_deref().and_then(SafState::parse),
        at_ms: ou(r, first + 1)?,
        detail: r.try_get(first + 2)?,
        attempts: attempts.and_then(|a| u32::try_from(a).ok()),
        response_code: r.try_get(first + 4)?,
    })
}

fn row(r: &Row) -> Result<TxnRow, postgres::Error> {
    let request = match ou(r, 5)? {
        None => None,
        Some(at_ms) => {
            let hash: Option<Vec<u8>> = r.try_get(12)?;
            let mut card_hash = [0u8; 16];
            if let Some(h) = hash.filter(|h| h.len() == 16) {
                card_hash.copy_from_slice(&h);
            }
            let text = |i: usize| -> Result<String, postgres::Error> {
                Ok(r.try_get::<_, Option<String>>(i)?.unwrap_or_default())
            };
            Some(RequestFields {
                at_ms,
                mti: small(r, 6)? as u16,
                stan: ou(r, 7)?.unwrap_or(0) as u32,
                terminal_id: text(8)?,
                merchant_id: text(9)?,
                rrn: text(10)?,
                masked_pan: text(11)?,
                card_hash,
                amount_minor: ou(r, 13)?.unwrap_or(0),
                currency: small(r, 14)? as u16,
                transmission_time: ou(r, 15)?.unwrap_or(0),
                route: r.try_get(16)?,
                fraud_points: small(r, 17)? as u16,
                fraud_reasons: small(r, 18)? as u16,
                business_date: r.try_get(36)?,
                processing_code: r.try_get(38)?,
                mcc: opt_small(r, 39)?,
                country: opt_small(r, 40)?,
                pos_entry_mode: r.try_get(41)?,
                batch: r.try_get(42)?,
            })
        }
    };
    Ok(TxnRow {
        node_id: r.try_get(0)?,
        txn: u(r, 1)?,
        first_at_ms: u(r, 2)?,
        updated_at_ms: u(r, 3)?,
        last_seq: u(r, 4)?,
        request,
        acquirer: r.try_get(19)?,
        forwarded_at_ms: ou(r, 20)?,
        outcome: r.try_get(21)?,
        response_code: r.try_get(22)?,
        approval_code: r.try_get(23)?,
        stand_in: r.try_get(24)?,
        answered_at_ms: ou(r, 25)?,
        settlement_date: r.try_get(37)?,
        reversal: saf(r, 26)?,
        advice: saf(r, 31)?,
    })
}

impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn export_position(&mut self, node_id: &str) -> Result<u64, StoreError> {
        self.with(|c, _, _| {
            let row = c.query_opt(
                "SELECT seq FROM export_position WHERE node_id = $1",
                &[&node_id],
            )?;
            let seq: Option<i64> = row.map(|r| r.try_get(0)).transpose()?;
            Ok(seq.map_or(0, |s| s.max(0) as u64))
        })
    }

    fn apply(&mut self, batch: &ExportBatch<'_>) -> Result<(), StoreError> {
        match self.method {
            Method::Unnest => self.with(|c, sql, seen| apply_rows(c, sql, seen, batch)),
            Method::Copy => self.with(|c, sql, seen| copy_rows(c, sql, seen, batch)),
        }
    }

    fn delete_before(&mut self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let cutoff = int("time", cutoff_ms)?;
        self.with(|c, _, _| {
            Ok(c.execute(
                "DELETE FROM transactions WHERE first_at_ms < $1",
                &[&cutoff],
            )?)
        })
    }

    fn transaction(&mut self, node_id: &str, txn: u64) -> Result<Option<TxnRow>, StoreError> {
        let txn = int("txn", txn)?;
        self.with(|c, sql, _| {
            let q = format!("{} WHERE node_id = $1 AND txn_id = $2", sql.select);
            let r = c.query_opt(&q, &[&node_id, &txn])?;
            Ok(r.as_ref().map(row).transpose()?)
        })
    }

    fn transactions(
        &mut self,
        node_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TxnRow>, StoreError> {
        let after = int("txn", after)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|c, sql, _| {
            let q = format!(
                "{} WHERE node_id = $1 AND txn_id > $2 ORDER BY txn_id LIMIT $3",
                sql.select
            );
            let rows = c.query(&q, &[&node_id, &after, &limit])?;
            Ok(rows.iter().map(row).collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn count(&mut self) -> Result<u64, StoreError> {
        self.with(|c, _, _| {
            let n: i64 = c
                .query_one("SELECT COUNT(*) FROM transactions", &[])?
                .try_get(0)?;
            Ok(n.max(0) as u64)
        })
    }

    fn business_day(
        &mut self,
        date: &str,
        each: &mut dyn FnMut(TxnRow),
    ) -> Result<u64, StoreError> {
        self.with(|c, sql, _| {
            let q = format!(
                "{} WHERE business_date = $1 ORDER BY first_at_ms, node_id, txn_id",
                sql.select
            );
            // Streamed: a day's rows need not fit in one answer's memory.
            let mut rows = c.query_raw(&q, [date])?;
            let mut n = 0;
            while let Some(r) = postgres::fallible_iterator::FallibleIterator::next(&mut rows)? {
                each(row(&r)?);
                n += 1;
            }
            Ok(n)
        })
    }

    fn save_reconciliation(&mut self, r: &Reconciliation) -> Result<(), StoreError> {
        let t = &r.totals;
        let net = i64::try_from(t.net()).map_err(|_| StoreError::OutOfRange {
            what: "net settlement amount",
            value: t.net().unsigned_abs().min(u128::from(u64::MAX)) as u64,
        })?;
        let ints = [
            int("count", t.credits)?,
            int("amount", t.credits_amount)?,
            int("count", t.credit_reversals)?,
            int("amount", t.credit_reversals_amount)?,
            int("count", t.debits)?,
            int("amount", t.debits_amount)?,
            int("count", t.debit_reversals)?,
            int("amount", t.debit_reversals_amount)?,
            int("count", r.authorizations)?,
            net,
            int("time", r.queued_at_ms)?,
        ];
        let answered = opt_int("time", r.answered_at_ms)?;
        let currency = i32::from(r.currency);
        let stan = i64::from(r.stan);
        let balance = r.balance.map(i32::from);
        self.with(|c, _, _| {
            c.execute(
                "INSERT INTO reconciliations (
                     node_id, acquirer, business_date, currency, stan,
                     credits, credits_amount, credit_reversals, credit_reversals_amount,
                     debits, debits_amount, debit_reversals, debit_reversals_amount,
                     authorizations, net_minor, queued_at_ms, answered_at_ms, response_code,
                     balance
                 ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                           $16, $17, $18, $19)
                 ON CONFLICT (node_id, acquirer, business_date, currency) DO UPDATE SET
                     stan = excluded.stan,
                     credits = excluded.credits,
                     credits_amount = excluded.credits_amount,
                     credit_reversals = excluded.credit_reversals,
                     credit_reversals_amount = excluded.credit_reversals_amount,
                     debits = excluded.debits,
                     debits_amount = excluded.debits_amount,
                     debit_reversals = excluded.debit_reversals,
                     debit_reversals_amount = excluded.debit_reversals_amount,
                     authorizations = excluded.authorizations,
                     net_minor = excluded.net_minor,
                     queued_at_ms = excluded.queued_at_ms,
                     answered_at_ms = excluded.answered_at_ms,
                     response_code = excluded.response_code,
                     balance = excluded.balance",
                &[
                    &r.node_id,
                    &r.acquirer,
                    &r.business_date,
                    &currency,
                    &stan,
                    &ints[0],
                    &ints[1],
                    &ints[2],
                    &ints[3],
                    &ints[4],
                    &ints[5],
                    &ints[6],
                    &ints[7],
                    &ints[8],
                    &ints[9],
                    &ints[10],
                    &answered,
                    &r.response_code,
                    &balance,
                ],
            )?;
            Ok(())
        })
    }

    fn reconciliations(
        &mut self,
        node_id: &str,
        date: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Reconciliation>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|c, _, _| {
            let filter = if date.is_some() {
                "business_date = $2"
            } else {
                "answered_at_ms IS NULL AND $2::TEXT IS NULL"
            };
            let q = format!(
                "SELECT {RECON_COLUMNS} FROM reconciliations WHERE node_id = $1 AND {filter} \
                 ORDER BY business_date, acquirer, currency LIMIT $3"
            );
            let rows = c.query(&q, &[&node_id, &date, &limit])?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(recon_row(r)?);
            }
            Ok(out)
        })
    }
}

const RECON_COLUMNS: &str = "node_id, acquirer, business_date, currency, stan,
    credits, credits_amount, credit_reversals, credit_reversals_amount,
    debits, debits_amount, debit_reversals, debit_reversals_amount,
    authorizations, queued_at_ms, answered_at_ms, response_code, balance";

fn recon_row(r: &Row) -> Result<Reconciliation, postgres::Error> {
    let currency: i32 = r.try_get(3)?;
    let balance: Option<i32> = r.try_get(17)?;
    Ok(Reconciliation {
        node_id: r.try_get(0)?,
        acquirer: r.try_get(1)?,
        business_date: r.try_get(2)?,
        currency: u16::try_from(currency).unwrap_or(0),
        stan: u32::try_from(u(r, 4)?).unwrap_or(0),
        totals: crate::switch::settlement::batch::Totals {
            credits: u(r, 5)?,
            credits_amount: u(r, 6)?,
            credit_reversals: u(r, 7)?,
            credit_reversals_amount: u(r, 8)?,
            debits: u(r, 9)?,
            debits_amount: u(r, 10)?,
            debit_reversals: u(r, 11)?,
            debit_reversals_amount: u(r, 12)?,
        },
        authorizations: u(r, 13)?,
        queued_at_ms: u(r, 14)?,
        answered_at_ms: ou(r, 15)?,
        response_code: r.try_get(16)?,
        balance: balance.and_then(|b| u8::try_from(b).ok()),
    })
}
