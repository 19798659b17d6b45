//! Settlement, its first step: the business date and the cutover.
//!
//! Every transaction carries the business date it was accepted in (the
//! journal's `Request` record, then the store's `business_date` column).
//! The date advances at a cutover: at the configured local time
//! (`timer.rs`), on an operator's `switchyard settle cutover`
//! (`POST /api/actions/cutover`), or on an acquirer's 0800 with DE70 201
//! when that acquirer is configured for it. A cutover is a journal
//! record, so a restart continues with the date it left (or, with none on
//! record, the date the clock and the config give).
//!
//! The hot path pays one relaxed atomic load per request
//! ([`BusinessDay::current`]); cutovers are rare and take a lock of their
//! own, never one the terminals touch.
//!
//! Layout: `date.rs` (dates and the clock's rule), `config.rs`
//! (`[settlement]`), `cutover.rs` (the shared state and the triggers'
//! rules), `timer.rs` (the scheduled cutover), `cli.rs` (`switchyard
//! settle cutover`).

pub mod acquirer_recon;
pub mod batch;
pub mod capture;
pub mod cli;
mod config;
pub mod cutover;
pub mod date;
pub mod day;
pub mod money;
pub mod recon;
pub mod report;
pub mod scheme;
pub mod timer;

pub use capture::capture;
pub use config::SettlementConfig;
pub(crate) use config::SettlementFile;
pub use cutover::{BusinessDay, CutoverDone, CutoverRefused, Trigger};
pub use date::{BusinessDate, Schedule};
