//! Switchyard: an ISO 8583 transaction switch.
//!
//! See `ARCHITECTURE.md` for the map of modules and the life of one
//! transaction.

// The codec, framings, socket helpers and response codes live in their own
// crate (shared with the tools); re-exported so `crate::iso8583`,
// `crate::frame`, `crate::net` and `crate::codes` paths stay as they were.
pub use switchyard_protocol::{codes, frame, iso8583, net};

pub mod acquirer;
pub mod admin;
pub mod build_info;
pub mod clock;
pub mod config;
pub mod decode;
pub mod fraud;
pub mod journal;
pub mod repeats;
pub mod router;
pub mod runtime;
pub mod saf;
pub mod server;
pub mod sim;
#[cfg(test)]
mod simulation;
pub mod sync;
pub mod telemetry;
pub mod terminal;
pub mod throttle;
