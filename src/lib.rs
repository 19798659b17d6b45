//! Switchyard: an ISO 8583 transaction switch.
//!
//! See `ARCHITECTURE.md` for the map of modules and the life of one
//! transaction.

pub mod decode;
pub mod frame;
pub mod iso8583;
