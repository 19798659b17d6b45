//! The wire side of Switchyard, shared by the switch and the tools that
//! talk to it (simulator, load generator, decoder, fuzzers):
//!
//! * [`iso8583`]: the sans-IO ISO 8583 codec (specs, parse, build) and
//!   the DE7 date/time formatting.
//! * [`frame`]: the length-header framings that delimit messages on a
//!   TCP stream (a tokio-util `Decoder`/`Encoder`, no socket).
//! * [`net`]: non-blocking read/write of a framed socket's buffers,
//!   plain or TLS ([`net::Conn`]).
//! * [`tls`]: TLS material (PEM files) and rustls configurations.
//! * [`crypto`]: card security primitives (keys, MACs, PIN blocks,
//!   DUKPT), needed on both sides of the wire.
//! * [`hex`]: hex text to bytes.
//! * [`codes`]: the response codes (DE39) the switch sets: its wire
//!   contract with terminals, which the load generator reads them by.

pub mod codes;
pub mod crypto;
pub mod frame;
pub mod hex;
pub mod iso8583;
pub mod net;
pub mod tls;
