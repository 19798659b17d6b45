//! The SQLite back end: one file, WAL mode, one writer (the exporter).
//!
//! `synchronous = NORMAL`: in WAL mode a commit survives the process being
//! killed; a power cut may lose the last commits, but never leaves the
//! store inconsistent, and the journal (synced) still holds what they
//! wrote, so the exporter writes it again from the position that did
//! survive.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::schema::{self, Migration};
use super::{
    ExportBatch, Outcome, Reconciliation, RequestFields, SafState, SafUpdate, Store, StoreError,
    TxnRow,
};

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating it and its directory if needed) the database at
    /// `path` and applies the migrations it lacks.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // `journal_mode` answers with the mode set: a query, not an execute.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        // Checkpoints every 64 MiB of WAL rather than 4 MiB: a hot index
        // page is copied into the database once per checkpoint, not once
        // per few batches; and the pages the upserts touch stay cached
        // (64 MiB, bounded). Measured: the export lag at 115k/s halved.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 16384; PRAGMA cache_size = -65536;")?;
        let mut store = SqliteStore {
            conn,
            path: path.to_owned(),
        };
        store.migrate(schema::SQLITE)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version the database is at (0: empty).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let v = self.conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )?;
        Ok(v)
    }

    fn migrate(&mut self, migrations: &[Migration]) -> Result<(), StoreError> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version     INTEGER PRIMARY KEY,
                 description TEXT NOT NULL
             )",
        )?;
        let found = self.schema_version()?;
        let known = schema::latest(migrations);
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        for m in migrations.iter().filter(|m| m.version > found) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(m.sql)?;
            tx.execute(
                "INSERT INTO schema_version (version, description) VALUES (?1, ?2)",
                params![m.version, m.description],
            )?;
            tx.commit()?;
            tracing::info!(
                version = m.version,
                "store: schema migrated: {}",
                m.description
            );
        }
        Ok(())
    }
}

fn int(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

fn opt_int(what: &'static str, value: Option<u64>) -> Result<Option<i64>, StoreError> {
    value.map(|v| int(what, v)).transpose()
}

/// Every column but the key takes the new value when the update has one
/// (`COALESCE(excluded.c, c)`); the times and sequence keep their bounds.
const UPSERT: &str = "
INSERT INTO transactions (
    node_id, txn_id, first_at_ms, updated_at_ms, last_seq,
    request_at_ms, mti, stan, terminal_id, merchant_id, rrn, masked_pan, card_hash,
    amount_minor, currency, transmission_time, route, fraud_points, fraud_reasons,
    acquirer, forwarded_at_ms,
    outcome, response_code, approval_code, stand_in, answered_at_ms,
    reversal_state, reversal_at_ms, reversal_reason, reversal_attempts, reversal_rc,
    advice_state, advice_at_ms, advice_mti, advice_attempts, advice_rc,
    business_date, settlement_date,
    processing_code, mcc, country, pos_entry_mode, batch
) VALUES (
    ?1, ?2, ?3, ?4, ?5,
    ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,
    ?14, ?15, ?16, ?17, ?18, ?19,
    ?20, ?21,
    ?22, ?23, ?24, ?25, ?26,
    ?27, ?28, ?29, ?30, ?31,
    ?32, ?33, ?34, ?35, ?36,
    ?37, ?38,
    ?39, ?40, ?41, ?42, ?43
)
ON CONFLICT (node_id, txn_id) DO UPDATE SET
    first_at_ms       = MIN(first_at_ms, excluded.first_at_ms),
    updated_at_ms     = MAX(updated_at_ms, excluded.updated_at_ms),
    last_seq          = MAX(last_seq, excluded.last_seq),
    request_at_ms     = COALESCE(excluded.request_at_ms, request_at_ms),
    mti               = COALESCE(excluded.mti, mti),
    stan              = COALESCE(excluded.stan, stan),
    terminal_id       = COALESCE(excluded.terminal_id, terminal_id),
    merchant_id       = COALESCE(excluded.merchant_id, merchant_id),
    rrn               = COALESCE(excluded.rrn, rrn),
    masked_pan        = COALESCE(excluded.masked_pan, masked_pan),
    card_hash         = COALESCE(excluded.card_hash, card_hash),
    amount_minor      = COALESCE(excluded.amount_minor, amount_minor),
    currency          = COALESCE(excluded.currency, currency),
    transmission_time = COALESCE(excluded.transmission_time, transmission_time),
    route             = COALESCE(excluded.route, route),
    fraud_points      = COALESCE(excluded.fraud_points, fraud_points),
    fraud_reasons     = COALESCE(excluded.fraud_reasons, fraud_reasons),
    acquirer          = COALESCE(excluded.acquirer, acquirer),
    forwarded_at_ms   = COALESCE(excluded.forwarded_at_ms, forwarded_at_ms),
    outcome           = COALESCE(excluded.outcome, outcome),
    response_code     = COALESCE(excluded.response_code, response_code),
    approval_code     = COALESCE(excluded.approval_code, approval_code),
    stand_in          = COALESCE(excluded.stand_in, stand_in),
    answered_at_ms    = COALESCE(excluded.answered_at_ms, answered_at_ms),
    reversal_state    = COALESCE(excluded.reversal_state, reversal_state),
    reversal_at_ms    = COALESCE(excluded.reversal_at_ms, reversal_at_ms),
    reversal_reason   = COALESCE(excluded.reversal_reason, reversal_reason),
    reversal_attempts = COALESCE(excluded.reversal_attempts, reversal_attempts),
    reversal_rc       = COALESCE(excluded.reversal_rc, reversal_rc),
    advice_state      = COALESCE(excluded.advice_state, advice_state),
    advice_at_ms      = COALESCE(excluded.advice_at_ms, advice_at_ms),
    advice_mti        = COALESCE(excluded.advice_mti, advice_mti),
    advice_attempts   = COALESCE(excluded.advice_attempts, advice_attempts),
    advice_rc         = COALESCE(excluded.advice_rc, advice_rc),
    business_date     = COALESCE(excluded.business_date, business_date),
    settlement_date   = COALESCE(excluded.settlement_date, settlement_date),
    processing_code   = COALESCE(excluded.processing_code, processing_code),
    mcc               = COALESCE(excluded.mcc, mcc),
    country           = COALESCE(excluded.country, country),
    pos_entry_mode    = COALESCE(excluded.pos_entry_mode, pos_entry_mode),
    batch             = COALESCE(excluded.batch, batch)
";

const COLUMNS: &str = "node_id, txn_id, first_at_ms, updated_at_ms, last_seq,
    request_at_ms, mti, stan, terminal_id, merchant_id, rrn, masked_pan, card_hash,
    amount_minor, currency, transmission_time, route, fraud_points, fraud_reasons,
    acquirer, forwarded_at_ms,
    outcome, response_code, approval_code, stand_in, answered_at_ms,
    reversal_state, reversal_at_ms, reversal_reason, reversal_attempts, reversal_rc,
    advice_state, advice_at_ms, advice_mti, advice_attempts, advice_rc,
    business_date, settlement_date,
    processing_code, mcc, country, pos_entry_mode, batch";

fn u(r: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    let v: i64 = r.get(i)?;
    Ok(v.max(0) as u64)
}

fn ou(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<u64>> {
    let v: Option<i64> = r.get(i)?;
    Ok(v.map(|v| v.max(0) as u64))
}

fn saf(r: &Row<'_>, first: usize) -> rusqlite::Result<SafUpdate> {
    let state: Option<String> = r.get(first)?;
    let attempts: Option<i64> = r.get(first + 3)?;
    Ok(SafUpdate {
        state: state.as_deref().and_then(SafState::parse),
        at_ms: ou(r, first + 1)?,
        detail: r.get(first + 2)?,
        attempts: attempts.and_then(|a| u32::try_from(a).ok()),
        response_code: r.get(first + 4)?,
    })
}

fn row(r: &Row<'_>) -> rusqlite::Result<TxnRow> {
    let request_at: Option<u64> = ou(r, 5)?;
    let request = match request_at {
        None => None,
        Some(at_ms) => {
            let hash: Option<Vec<u8>> = r.get(12)?;
            let mut card_hash = [0u8; 16];
            if let Some(h) = hash.filter(|h| h.len() == 16) {
                card_hash.copy_from_slice(&h);
            }
            let small = |i: usize| -> rusqlite::Result<u64> { Ok(ou(r, i)?.unwrap_or(0)) };
            Some(RequestFields {
                at_ms,
                mti: small(6)? as u16,
                stan: small(7)? as u32,
                terminal_id: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                merchant_id: r.get::<_, Option<String>>(9)?.unwrap_or_default(),
                rrn: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
                masked_pan: r.get::<_, Option<String>>(11)?.unwrap_or_default(),
                card_hash,
                amount_minor: small(13)?,
                currency: small(14)? as u16,
                transmission_time: small(15)?,
                route: r.get(16)?,
                fraud_points: small(17)? as u16,
                fraud_reasons: small(18)? as u16,
                business_date: r.get(36)?,
                processing_code: r.get(38)?,
                mcc: r.get(39)?,
                country: r.get(40)?,
                pos_entry_mode: r.get(41)?,
                batch: r.get(42)?,
            })
        }
    };
    let stand_in: Option<i64> = r.get(24)?;
    Ok(TxnRow {
        node_id: r.get(0)?,
        txn: u(r, 1)?,
        first_at_ms: u(r, 2)?,
        updated_at_ms: u(r, 3)?,
        last_seq: u(r, 4)?,
        request,
        acquirer: r.get(19)?,
        forwarded_at_ms: ou(r, 20)?,
        outcome: r.get(21)?,
        response_code: r.get(22)?,
        approval_code: r.get(23)?,
        stand_in: stand_in.map(|s| s != 0),
        answered_at_ms: ou(r, 25)?,
        settlement_date: r.get(37)?,
        reversal: saf(r, 26)?,
        advice: saf(r, 31)?,
    })
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn export_position(&mut self, node_id: &str) -> Result<u64, StoreError> {
        let seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM export_position WHERE node_id = ?1",
                [node_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(seq.map_or(0, |s| s.max(0) as u64))
    }

    fn apply(&mut self, batch: &ExportBatch<'_>) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        // The position check (see ExportBatch::from); returning drops
        // `tx`, which rolls it back.
        let stored: Option<i64> = tx
            .query_row(
                "SELECT seq FROM export_position WHERE node_id = ?1",
                [batch.node_id],
                |r| r.get(0),
            )
            .optional()?;
        let stored = stored.map_or(0, |s| s.max(0) as u64);
        if stored != batch.from {
            return Err(StoreError::PositionMoved {
                node: batch.node_id.to_owned(),
                expected: batch.from,
                found: stored,
            });
        }
        {
            let mut upsert = tx.prepare(UPSERT)?;
            for t in batch.rows {
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
                        Some(i64::from(*stand_in)),
                        Some(*at_ms),
                        settlement_date.as_deref(),
                    ),
                    Some(Outcome::TimedOut { at_ms }) => (
                        Some("timeout"),
                        Some("91"),
                        None,
                        Some(0),
                        Some(*at_ms),
                        None,
                    ),
                };
                let (r, a) = (&t.reversal, &t.advice);
                upsert.execute(params![
                    batch.node_id,
                    int("txn", t.txn)?,
                    int("time", t.first_at_ms)?,
                    int("time", t.last_at_ms)?,
                    int("seq", t.last_seq)?,
                    opt_int("time", req.map(|q| q.at_ms))?,
                    req.map(|q| q.mti),
                    req.map(|q| q.stan),
                    req.map(|q| q.terminal_id.as_str()),
                    req.map(|q| q.merchant_id.as_str()),
                    req.map(|q| q.rrn.as_str()),
                    req.map(|q| q.masked_pan.as_str()),
                    req.map(|q| &q.card_hash[..]),
                    opt_int("amount", req.map(|q| q.amount_minor))?,
                    req.map(|q| q.currency),
                    opt_int("DE7", req.map(|q| q.transmission_time))?,
                    req.and_then(|q| q.route.as_deref()),
                    req.map(|q| q.fraud_points),
                    req.map(|q| q.fraud_reasons),
                    t.forwarded.as_ref().map(|f| f.1.as_str()),
                    opt_int("time", t.forwarded.as_ref().map(|f| f.0))?,
                    outcome,
                    rc,
                    approval,
                    stand_in,
                    opt_int("time", answered_at)?,
                    r.state.map(SafState::as_str),
                    opt_int("time", r.at_ms)?,
                    r.detail.as_deref(),
                    r.attempts,
                    r.response_code.as_deref(),
                    a.state.map(SafState::as_str),
                    opt_int("time", a.at_ms)?,
                    a.detail.as_deref(),
                    a.attempts,
                    a.response_code.as_deref(),
                    req.and_then(|q| q.business_date.as_deref()),
                    de15,
                    req.and_then(|q| q.processing_code.as_deref()),
                    req.and_then(|q| q.mcc),
                    req.and_then(|q| q.country),
                    req.and_then(|q| q.pos_entry_mode.as_deref()),
                    req.and_then(|q| q.batch.as_deref()),
                ])?;
            }
            let at = batch.rows.iter().map(|t| t.last_at_ms).max().unwrap_or(0);
            tx.execute(
                "INSERT INTO export_position (node_id, seq, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (node_id) DO UPDATE SET
                     seq = excluded.seq,
                     updated_at_ms = MAX(updated_at_ms, excluded.updated_at_ms)",
                params![batch.node_id, int("seq", batch.position)?, int("time", at)?],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn delete_before(&mut self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let n = self.conn.execute(
            "DELETE FROM transactions WHERE first_at_ms < ?1",
            [int("time", cutoff_ms)?],
        )?;
        Ok(n as u64)
    }

    fn transaction(&mut self, node_id: &str, txn: u64) -> Result<Option<TxnRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM transactions WHERE node_id = ?1 AND txn_id = ?2");
        Ok(self
            .conn
            .query_row(&sql, params![node_id, int("txn", txn)?], row)
            .optional()?)
    }

    fn transactions(
        &mut self,
        node_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TxnRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM transactions WHERE node_id = ?1 AND txn_id > ?2 \
             ORDER BY txn_id LIMIT ?3"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![node_id, int("txn", after)?, limit], row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM transactions", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    fn business_day(
        &mut self,
        date: &str,
        each: &mut dyn FnMut(TxnRow),
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM transactions WHERE business_date = ?1 \
             ORDER BY first_at_ms, node_id, txn_id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut n = 0;
        for r in stmt.query_map([date], row)? {
            each(r?);
            n += 1;
        }
        Ok(n)
    }

    fn save_reconciliation(&mut self, r: &Reconciliation) -> Result<(), StoreError> {
        let t = &r.totals;
        let net = i64::try_from(t.net()).map_err(|_| StoreError::OutOfRange {
            what: "net settlement amount",
            value: t.net().unsigned_abs().min(u128::from(u64::MAX)) as u64,
        })?;
        self.conn.execute(
            "INSERT OR REPLACE INTO reconciliations (
                 node_id, acquirer, business_date, currency, stan,
                 credits, credits_amount, credit_reversals, credit_reversals_amount,
                 debits, debits_amount, debit_reversals, debit_reversals_amount,
                 authorizations, net_minor, queued_at_ms, answered_at_ms, response_code, balance
             ) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                       ?17, ?18, ?19)",
            params![
                r.node_id,
                r.acquirer,
                r.business_date,
                r.currency,
                r.stan,
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
                opt_int("time", r.answered_at_ms)?,
                r.response_code,
                r.balance,
            ],
        )?;
        Ok(())
    }

    fn reconciliations(
        &mut self,
        node_id: &str,
        date: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Reconciliation>, StoreError> {
        let filter = if date.is_some() {
            "business_date = ?2"
        } else {
            "answered_at_ms IS NULL AND ?2 IS NULL"
        };
        let sql = format!(
            "SELECT {RECON_COLUMNS} FROM reconciliations WHERE node_id = ?1 AND {filter} \
             ORDER BY business_date, acquirer, currency LIMIT ?3"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![node_id, date, limit], recon_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

const RECON_COLUMNS: &str = "node_id, acquirer, business_date, currency, stan,
    credits, credits_amount, credit_reversals, credit_reversals_amount,
    debits, debits_amount, debit_reversals, debit_reversals_amount,
    authorizations, queued_at_ms, answered_at_ms, response_code, balance";

fn recon_row(r: &Row<'_>) -> rusqlite::Result<Reconciliation> {
    let small = |i: usize| -> rusqlite::Result<u64> { u(r, i) };
    Ok(Reconciliation {
        node_id: r.get(0)?,
        acquirer: r.get(1)?,
        business_date: r.get(2)?,
        currency: r.get(3)?,
        stan: r.get(4)?,
        totals: crate::switch::settlement::batch::Totals {
            credits: small(5)?,
            credits_amount: small(6)?,
            credit_reversals: small(7)?,
            credit_reversals_amount: small(8)?,
            debits: small(9)?,
            debits_amount: small(10)?,
            debit_reversals: small(11)?,
            debit_reversals_amount: small(12)?,
        },
        authorizations: small(13)?,
        queued_at_ms: small(14)?,
        answered_at_ms: ou(r, 15)?,
        response_code: r.get(16)?,
        balance: r.get(17)?,
    })
}
