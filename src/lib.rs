//! Switchyard: an ISO 8583 transaction switch.
//!
//! * [`switch`]: the switch itself: terminals, acquirer links,
//!   store-and-forward, routing, fraud, repeats, the journal, and the
//!   assembly that starts them ([`switch::server`]).
//! * [`tools`]: what runs beside the switch: the acquirer host simulator
//!   and the message decoder. (The load generator is the `loadtest` crate;
//!   `switchyard demo` lives in the binary.)
//! * [`security`]: keys under a local master key, MACs, PIN blocks,
//!   DUKPT, the keyed card hash (the primitives; not yet in the request
//!   path).
//! * The protocol (codec, framings, response codes) is the
//!   `switchyard-protocol` crate, re-exported here.
//! * At the top, the small pieces every part shares: the clock, telemetry,
//!   locks, the log throttle, the runtime and build info.
//!
//! See `ARCHITECTURE.md` for the map of modules and the life of one
//! transaction.

// The codec, framings, socket helpers and response codes live in their own
// crate (shared with the tools); re-exported so `crate::iso8583`,
// `crate::frame`, `crate::net` and `crate::codes` paths stay as they were.
pub use switchyard_protocol::{codes, frame, hex, iso8583, net};

pub mod build_info;
pub mod clock;
pub mod files;
pub mod runtime;
pub mod security;
#[cfg(test)]
mod simulation;
pub mod switch;
pub mod sync;
pub mod telemetry;
pub mod throttle;
pub mod tools;
