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
//! A batch goes in by binary COPY into a session-local temporary table,
//! then one `INSERT ... SELECT ... ON CONFLICT` into `transactions`: one
//! round trip of rows and one statement, where a multi-row INSERT needs a
//! statement per 1,820 rows (PostgreSQL's 65,535 parameters over 36
//! columns); docs/BENCHMARKS.md has the measurement.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Row};

use super::config::DbUrl;
use super::schema::{self, Migration};
use super::{
    ExportBatch, Outcome, RequestFields, SafState, SafUpdate, Store, StoreError, TxnRow, TxnUpdate,
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
const COLUMNS: [(&str, Type); 36] = [
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
];

/// The SQL made once from [`COLUMNS`].
struct Sql {
    /// `INSERT INTO transactions ... SELECT ... FROM export_rows ON CONFLICT ...`
    merge: String,
    /// `COPY export_rows (...) FROM STDIN BINARY`
    copy: String,
    select: String,
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
            let sep = if set.is_empty() { "" } else { ",\n    " };
            let _ = write!(set, "{sep}{name} = {value}");
        }
        Sql {
            merge: format!(
                "INSERT INTO transactions AS t ({columns}) SELECT {columns} FROM export_rows \
                 ON CONFLICT (node_id, txn_id) DO UPDATE SET\n    {set}"
            ),
            copy: format!("COPY export_rows ({columns}) FROM STDIN BINARY"),
            select: format!("SELECT {columns} FROM transactions"),
            types: COLUMNS.iter().map(|c| c.1.clone()).collect(),
        }
    }
}

pub struct PgStore {
    conn: Conn,
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
        // Per session: the staging table of every batch, emptied by each
        // commit.
        client
            .batch_execute(
                "CREATE TEMPORARY TABLE IF NOT EXISTS export_rows \
                 (LIKE transactions) ON COMMIT DELETE ROWS",
            )
            .map_err(|e| self.error(e))?;
        tracing::info!(target = %self.target, "store: connected to postgres");
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
            sql: Sql::new(),
            seen: HashSet::new(),
        })
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
        let PgStore { conn, sql, seen } = self;
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

/// One row's values, typed as the columns are.
struct Values<'a> {
    node_id: &'a str,
    ints: [Option<i64>; 14],
    small: [Option<i32>; 4],
    texts: [Option<&'a str>; 15],
    card_hash: Option<&'a [u8]>,
    stand_in: Option<bool>,
}

impl<'a> Values<'a> {
    fn of(node_id: &'a str, t: &'a TxnUpdate) -> Result<Values<'a>, StoreError> {
        let req = t.request.as_ref();
        let (outcome, rc, approval, stand_in, answered_at) = match &t.outcome {
            None => (None, None, None, None, None),
            Some(Outcome::Answered {
                at_ms,
                response_code,
                approval_code,
                stand_in,
            }) => (
                Some("answered"),
                Some(response_code.as_str()),
                Some(approval_code.as_str()),
                Some(*stand_in),
                Some(*at_ms),
            ),
            Some(Outcome::TimedOut { at_ms }) => {
                (Some("timeout"), Some("91"), None, Some(false), Some(*at_ms))
            }
        };
        let (r, a) = (&t.reversal, &t.advice);
        Ok(Values {
            node_id,
            ints: [
                Some(int("txn", t.txn)?),
                Some(int("time", t.first_at_ms)?),
                Some(int("time", t.last_at_ms)?),
                Some(int("seq", t.last_seq)?),
                opt_int("time", req.map(|q| q.at_ms))?,
                req.map(|q| i64::from(q.stan)),
                opt_int("amount", req.map(|q| q.amount_minor))?,
                opt_int("DE7", req.map(|q| q.transmission_time))?,
                opt_int("time", t.forwarded.as_ref().map(|f| f.0))?,
                opt_int("time", answered_at)?,
                opt_int("time", r.at_ms)?,
                r.attempts.map(i64::from),
                opt_int("time", a.at_ms)?,
                a.attempts.map(i64::from),
            ],
            small: [
                req.map(|q| i32::from(q.mti)),
                req.map(|q| i32::from(q.currency)),
                req.map(|q| i32::from(q.fraud_points)),
                req.map(|q| i32::from(q.fraud_reasons)),
            ],
            texts: [
                req.map(|q| q.terminal_id.as_str()),
                req.map(|q| q.merchant_id.as_str()),
                req.map(|q| q.rrn.as_str()),
                req.map(|q| q.masked_pan.as_str()),
                req.and_then(|q| q.route.as_deref()),
                t.forwarded.as_ref().map(|f| f.1.as_str()),
                outcome,
                rc,
                approval,
                r.state.map(SafState::as_str),
                r.detail.as_deref(),
                r.response_code.as_deref(),
                a.state.map(SafState::as_str),
                a.detail.as_deref(),
                a.response_code.as_deref(),
            ],
            card_hash: req.map(|q| &q.card_hash[..]),
            stand_in,
        })
    }

    /// In [`COLUMNS`] order.
    fn params(&self) -> [&(dyn ToSql + Sync); 36] {
        let (i, s, t) = (&self.ints, &self.small, &self.texts);
        [
            &self.node_id,
            &i[0],
            &i[1],
            &i[2],
            &i[3],
            &i[4],
            &s[0],
            &i[5],
            &t[0],
            &t[1],
            &t[2],
            &t[3],
            &self.card_hash,
            &i[6],
            &s[1],
            &i[7],
            &t[4],
            &s[2],
            &s[3],
            &t[5],
            &i[8],
            &t[6],
            &t[7],
            &t[8],
            &self.stand_in,
            &i[9],
            &t[9],
            &i[10],
            &t[10],
            &i[11],
            &t[11],
            &t[12],
            &i[12],
            &t[13],
            &i[13],
            &t[14],
        ]
    }
}

/// Copies `rows` into the staging table and merges them into
/// `transactions`, inside `tx`. A transaction id twice in one statement
/// would make `ON CONFLICT DO UPDATE` fail (a row may be changed once per
/// statement), so such a batch is merged in parts, in order, each with
/// distinct ids: the same result as SQLite's row-by-row upserts. The
/// exporter's batches have one update per transaction, so one part.
fn merge(
    tx: &mut postgres::Transaction<'_>,
    sql: &Sql,
    seen: &mut HashSet<u64>,
    node_id: &str,
    rows: &[TxnUpdate],
) -> Result<(), Failure> {
    let mut rest = rows;
    while !rest.is_empty() {
        seen.clear();
        let part = rest
            .iter()
            .position(|t| !seen.insert(t.txn))
            .unwrap_or(rest.len());
        let (now, later) = rest.split_at(part);
        rest = later;
        let mut writer = BinaryCopyInWriter::new(tx.copy_in(&sql.copy)?, &sql.types);
        for t in now {
            writer.write(&Values::of(node_id, t)?.params())?;
        }
        writer.finish()?;
        tx.execute(&sql.merge, &[])?;
        // Emptied here, not only at commit: the next part starts clean.
        if !rest.is_empty() {
            tx.batch_execute("TRUNCATE export_rows")?;
        }
    }
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
        let position = int("seq", batch.position)?;
        let at = int(
            "time",
            batch.rows.iter().map(|t| t.last_at_ms).max().unwrap_or(0),
        )?;
        self.with(|c, sql, seen| {
            let mut tx = c.transaction()?;
            merge(&mut tx, sql, seen, batch.node_id, batch.rows)?;
            tx.execute(
                "INSERT INTO export_position AS p (node_id, seq, updated_at_ms) \
                 VALUES ($1, $2, $3)
                 ON CONFLICT (node_id) DO UPDATE SET
                     seq = EXCLUDED.seq,
                     updated_at_ms = GREATEST(p.updated_at_ms, EXCLUDED.updated_at_ms)",
                &[&batch.node_id, &position, &at],
            )?;
            tx.commit()?;
            Ok(())
        })
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
}
