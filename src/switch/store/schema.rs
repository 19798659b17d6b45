//! Schema versions as migrations, applied in order at open. The database
//! records the versions it has in `schema_version`; a version is never
//! edited once released, a change is a new one. Each back end has its own
//! list (SQL types differ); their version numbers stay in step.

/// One schema step.
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

/// The SQLite schema. Integers are SQLite's 64-bit signed ones (ids and
/// times fit in 63 bits); the card hash is a BLOB, never text, so no run
/// of digits can appear in it.
pub const SQLITE: &[Migration] = &[Migration {
    version: 1,
    description: "transactions and export_position",
    sql: "
CREATE TABLE transactions (
    node_id            TEXT    NOT NULL,
    txn_id             INTEGER NOT NULL,
    first_at_ms        INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    last_seq           INTEGER NOT NULL,
    request_at_ms      INTEGER,
    mti                INTEGER,
    stan               INTEGER,
    terminal_id        TEXT,
    merchant_id        TEXT,
    rrn                TEXT,
    masked_pan         TEXT,
    card_hash          BLOB,
    amount_minor       INTEGER,
    currency           INTEGER,
    transmission_time  INTEGER,
    route              TEXT,
    fraud_points       INTEGER,
    fraud_reasons      INTEGER,
    acquirer           TEXT,
    forwarded_at_ms    INTEGER,
    outcome            TEXT,
    response_code      TEXT,
    approval_code      TEXT,
    stand_in           INTEGER,
    answered_at_ms     INTEGER,
    reversal_state     TEXT,
    reversal_at_ms     INTEGER,
    reversal_reason    TEXT,
    reversal_attempts  INTEGER,
    reversal_rc        TEXT,
    advice_state       TEXT,
    advice_at_ms       INTEGER,
    advice_mti         TEXT,
    advice_attempts    INTEGER,
    advice_rc          TEXT,
    PRIMARY KEY (node_id, txn_id)
);
CREATE INDEX transactions_first_at ON transactions (first_at_ms);
CREATE INDEX transactions_terminal ON transactions (terminal_id, stan);
CREATE INDEX transactions_rrn ON transactions (rrn);
CREATE TABLE export_position (
    node_id        TEXT    PRIMARY KEY,
    seq            INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);
",
}];

/// The newest version this build knows.
pub fn latest(migrations: &[Migration]) -> i64 {
    migrations.last().map_or(0, |m| m.version)
}
