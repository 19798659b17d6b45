//! Switchyard: an ISO 8583 transaction switch.
//!
//! See `ARCHITECTURE.md` for the map of modules and the life of one
//! transaction.

pub mod acquirer;
pub mod admin;
pub mod build_info;
pub mod clock;
pub mod codes;
pub mod config;
pub mod decode;
pub mod demo;
pub mod frame;
pub mod fraud;
pub mod iso8583;
pub mod journal;
pub mod loadgen;
pub mod net;
pub mod repeats;
pub mod router;
pub mod runtime;
pub mod saf;
pub mod server;
pub mod sim;
pub mod sync;
pub mod telemetry;
pub mod terminal;
pub mod throttle;
