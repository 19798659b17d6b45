//! The switch: what runs in `switchyard run`.
//!
//! * [`server`]: the assembly: journal and recovery, link and SAF actors,
//!   the terminal listener, the admin endpoint, orderly shutdown.
//! * [`terminal`]: one actor per terminal connection (core + driver), the
//!   request pipeline (validate, repeats, admission, fraud, route, journal,
//!   forward, answer, stand-in, advice).
//! * [`acquirer`]: the links to acquirer hosts (core + driver) and the
//!   matching of answers to requests.
//! * [`saf`]: store-and-forward of reversals and advices (core + driver).
//! * [`router`]: card range -> acquirer. [`fraud`]: scoring and per-card
//!   history. [`repeats`]: recent answers for repeated requests.
//! * [`journal`]: the append-only transaction journal and its recovery.
//! * [`tls`]: TLS on the terminal listeners and acquirer links (config,
//!   handshake slots, certificate binding, SIGHUP reload).
//! * [`card_security`]: terminal profiles and zone keys; the MAC and PIN
//!   steps of a request through the HSM.
//! * [`store`]: the transaction store the exporter fills from the journal.
//! * [`admin`]: `/metrics`, `/health`, `/ready`, the JSON API, and its
//!   operators (login with password and TOTP, roles, the audit trail),
//!   and the dashboard. [`analytics`]: the thread the hot path hands one
//!   event per answered request; rollups, recent transactions, alerts.
//!   [`config`]: the TOML config.
//! * [`reload`]: the config reloaded at run time as generations of
//!   `server::Shared`, the acquirers' links started, updated, stopped and
//!   retired under it, and the operators' blocks ([`blocks`]) published
//!   the same way.

pub mod acquirer;
pub mod admin;
pub mod analytics;
pub mod blocks;
pub mod card_security;
pub mod config;
pub mod fraud;
pub mod journal;
pub mod reload;
pub mod repeats;
pub mod router;
pub mod saf;
pub mod server;
pub mod settlement;
pub mod store;
pub mod terminal;
pub mod tls;
