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
pub const SQLITE: &[Migration] = &[
    Migration {
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
    },
    // The business date (`YYYY-MM-DD`) the transaction was accepted in,
    // and the host's DE15 (`MMDD`): text on both back ends, so the same
    // values compare and sort the same way in both.
    Migration {
        version: 2,
        description: "business_date and settlement_date",
        sql: "
ALTER TABLE transactions ADD COLUMN business_date TEXT;
ALTER TABLE transactions ADD COLUMN settlement_date TEXT;
CREATE INDEX transactions_business_date ON transactions (business_date);
",
    },
    // What settlement reads (issue 14): DE3 and DE22 as their digits
    // (the processing code's first two are the transaction type), DE18
    // and DE19 as numbers, the terminal's batch number as text.
    Migration {
        version: 3,
        description: "processing_code, mcc, country, pos_entry_mode, batch",
        sql: "
ALTER TABLE transactions ADD COLUMN processing_code TEXT;
ALTER TABLE transactions ADD COLUMN mcc INTEGER;
ALTER TABLE transactions ADD COLUMN country INTEGER;
ALTER TABLE transactions ADD COLUMN pos_entry_mode TEXT;
ALTER TABLE transactions ADD COLUMN batch TEXT;
",
    },
    // Acquirer reconciliation (issue 14): per node, acquirer, business
    // date and currency, the totals the 0520 carried and the host's
    // answer (DE39, DE66: 1 in balance, 2 out of balance). A row without
    // an answer is still owed: a restart queues its 0520 again.
    Migration {
        version: 4,
        description: "reconciliations",
        sql: "
CREATE TABLE reconciliations (
    node_id                 TEXT    NOT NULL,
    acquirer                TEXT    NOT NULL,
    business_date           TEXT    NOT NULL,
    currency                INTEGER NOT NULL,
    stan                    INTEGER NOT NULL,
    credits                 INTEGER NOT NULL,
    credits_amount          INTEGER NOT NULL,
    credit_reversals        INTEGER NOT NULL,
    credit_reversals_amount INTEGER NOT NULL,
    debits                  INTEGER NOT NULL,
    debits_amount           INTEGER NOT NULL,
    debit_reversals         INTEGER NOT NULL,
    debit_reversals_amount  INTEGER NOT NULL,
    authorizations          INTEGER NOT NULL,
    net_minor               INTEGER NOT NULL,
    queued_at_ms            INTEGER NOT NULL,
    answered_at_ms          INTEGER,
    response_code           TEXT,
    balance                 INTEGER,
    PRIMARY KEY (node_id, acquirer, business_date, currency)
);
",
    },
    // Version 1's lookups by terminal + STAN and by RRN: no query of the
    // switch reads them (settlement reads a business date, the exporter
    // the primary key, retention the first time), and on SQLite they
    // were a third of the exporter's CPU a row (10.5 against 6.9 µs at
    // 20,000/s, docs/BENCHMARKS.md), CPU the hot path shares on a small
    // box. An operator who searches by RRN creates them again by hand
    // (README.md); later migrations never touch them.
    Migration {
        version: 5,
        description: "no lookup indexes by terminal + STAN and RRN",
        sql: "
DROP INDEX IF EXISTS transactions_terminal;
DROP INDEX IF EXISTS transactions_rrn;
",
    },
];

/// The PostgreSQL schema: the same tables, columns and indexes as
/// [`SQLITE`] version for version. Ids, times, amounts and counts are
/// BIGINT (63 bits, as in SQLite); the u16 fields (MTI, currency, fraud
/// points and reasons, MCC, country) INTEGER; the card hash BYTEA, never text; stand-in
/// a BOOLEAN where SQLite has 0/1.
pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        description: "transactions and export_position",
        sql: "
CREATE TABLE transactions (
    node_id            TEXT    NOT NULL,
    txn_id             BIGINT  NOT NULL,
    first_at_ms        BIGINT  NOT NULL,
    updated_at_ms      BIGINT  NOT NULL,
    last_seq           BIGINT  NOT NULL,
    request_at_ms      BIGINT,
    mti                INTEGER,
    stan               BIGINT,
    terminal_id        TEXT,
    merchant_id        TEXT,
    rrn                TEXT,
    masked_pan         TEXT,
    card_hash          BYTEA,
    amount_minor       BIGINT,
    currency           INTEGER,
    transmission_time  BIGINT,
    route              TEXT,
    fraud_points       INTEGER,
    fraud_reasons      INTEGER,
    acquirer           TEXT,
    forwarded_at_ms    BIGINT,
    outcome            TEXT,
    response_code      TEXT,
    approval_code      TEXT,
    stand_in           BOOLEAN,
    answered_at_ms     BIGINT,
    reversal_state     TEXT,
    reversal_at_ms     BIGINT,
    reversal_reason    TEXT,
    reversal_attempts  BIGINT,
    reversal_rc        TEXT,
    advice_state       TEXT,
    advice_at_ms       BIGINT,
    advice_mti         TEXT,
    advice_attempts    BIGINT,
    advice_rc          TEXT,
    PRIMARY KEY (node_id, txn_id)
);
CREATE INDEX transactions_first_at ON transactions (first_at_ms);
CREATE INDEX transactions_terminal ON transactions (terminal_id, stan);
CREATE INDEX transactions_rrn ON transactions (rrn);
CREATE TABLE export_position (
    node_id        TEXT    PRIMARY KEY,
    seq            BIGINT  NOT NULL,
    updated_at_ms  BIGINT  NOT NULL
);
",
    },
    Migration {
        version: 2,
        description: "business_date and settlement_date",
        sql: "
ALTER TABLE transactions ADD COLUMN business_date TEXT;
ALTER TABLE transactions ADD COLUMN settlement_date TEXT;
CREATE INDEX transactions_business_date ON transactions (business_date);
",
    },
    // What settlement reads (issue 14): DE3 and DE22 as their digits
    // (the processing code's first two are the transaction type), DE18
    // and DE19 as numbers, the terminal's batch number as text.
    Migration {
        version: 3,
        description: "processing_code, mcc, country, pos_entry_mode, batch",
        sql: "
ALTER TABLE transactions ADD COLUMN processing_code TEXT;
ALTER TABLE transactions ADD COLUMN mcc INTEGER;
ALTER TABLE transactions ADD COLUMN country INTEGER;
ALTER TABLE transactions ADD COLUMN pos_entry_mode TEXT;
ALTER TABLE transactions ADD COLUMN batch TEXT;
",
    },
    // Acquirer reconciliation (issue 14): per node, acquirer, business
    // date and currency, the totals the 0520 carried and the host's
    // answer (DE39, DE66: 1 in balance, 2 out of balance). A row without
    // an answer is still owed: a restart queues its 0520 again.
    Migration {
        version: 4,
        description: "reconciliations",
        sql: "
CREATE TABLE reconciliations (
    node_id                 TEXT    NOT NULL,
    acquirer                TEXT    NOT NULL,
    business_date           TEXT    NOT NULL,
    currency                INTEGER NOT NULL,
    stan                    BIGINT  NOT NULL,
    credits                 BIGINT  NOT NULL,
    credits_amount          BIGINT  NOT NULL,
    credit_reversals        BIGINT  NOT NULL,
    credit_reversals_amount BIGINT  NOT NULL,
    debits                  BIGINT  NOT NULL,
    debits_amount           BIGINT  NOT NULL,
    debit_reversals         BIGINT  NOT NULL,
    debit_reversals_amount  BIGINT  NOT NULL,
    authorizations          BIGINT  NOT NULL,
    net_minor               BIGINT  NOT NULL,
    queued_at_ms            BIGINT  NOT NULL,
    answered_at_ms          BIGINT,
    response_code           TEXT,
    balance                 INTEGER,
    PRIMARY KEY (node_id, acquirer, business_date, currency)
);
",
    },
    // Version 1's lookups by terminal + STAN and by RRN: no query of the
    // switch reads them (settlement reads a business date, the exporter
    // the primary key, retention the first time), and on SQLite they
    // were a third of the exporter's CPU a row (10.5 against 6.9 µs at
    // 20,000/s, docs/BENCHMARKS.md), CPU the hot path shares on a small
    // box. An operator who searches by RRN creates them again by hand
    // (README.md); later migrations never touch them.
    Migration {
        version: 5,
        description: "no lookup indexes by terminal + STAN and RRN",
        sql: "
DROP INDEX IF EXISTS transactions_terminal;
DROP INDEX IF EXISTS transactions_rrn;
",
    },
];

/// The newest version this build knows.
pub fn latest(migrations: &[Migration]) -> i64 {
    migrations.last().map_or(0, |m| m.version)
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_back_ends_have_the_same_versions() {
        let v = |m: &[super::Migration]| m.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(v(super::SQLITE), v(super::POSTGRES));
    }
}
