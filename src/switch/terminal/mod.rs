//! The terminal side: one actor per inbound connection, split into a core
//! that decides everything ([`core::TerminalCore`], no I/O, no clock) and a
//! thin tokio driver that moves bytes ([`driver::serve`]).
//!
//! # The life of a request
//!
//! The driver reads what the socket has, splits frames and hands each to
//! [`TerminalCore::handle_frame`]. The core then runs the steps, each a
//! named function in the file that says what it holds:
//!
//! 1. parse (`core.rs`): unreadable with MTI and STAN readable: 30, else
//!    the connection closes; the MTI chooses the pipeline (0800 answered
//!    here, an unknown request MTI 12);
//! 2. [`validate`]: required fields, PAN length (30), Luhn (14), allowed
//!    terminal (58);
//! 3. [`repeats`]: the same request answered recently gets that answer
//!    again; the same key with other content 94;
//! 4. [`admission`]: the key already pending here 94; the connection's or
//!    the switch's in-flight limit 96;
//! 5. [`scoring`] (0100/0200): fraud score, the `Request` record; 59 at
//!    the decline threshold;
//! 6. [`forward`]: route (92 without one), pick an acquirer with a link
//!    up (else 91 or stand-in), the `Forwarded` record, then the forward
//!    waits until the journal is durable up to it and leaves through
//!    [`TerminalCore::poll_forward`]. Authorizations and 0400 share this
//!    one sequence;
//! 7. the reply ([`outcome`]): the host's answer is journaled and queued
//!    for the terminal; a timeout or a lost link queues a 0420 and answers
//!    91, or approves in [`stand_in`] with an advice for the host;
//! 8. [`answer`]: answers are framed into the write buffer, which leaves
//!    through [`TerminalCore::poll_transmit`] once the journal is durable
//!    up to the records of every answer in it.
//!
//! With `[security]`, the terminal's MAC is checked before step 3, DE52
//! translated in step 6 and answers MACed in step 8 ([`security`]); with
//! a network HSM each of these waits for the HSM's answer as an effect
//! (`hsm.rs`) while the connection's other requests go on.
//!
//! A terminal's batch close (0500) and upload (0320) are answered here
//! (`close.rs`), never forwarded: the totals are the switch's own
//! (`settlement::batch`).
//!
//! Advices from terminals (0120/0220/0420) go to [`advice`]: journaled,
//! queued in store-and-forward, acknowledged at once.
//!
//! An answer that cannot reach its terminal (the connection is gone or the
//! write failed) is not simply dropped: a host approval is reversed
//! upstream (0420, DE39 68), journaled and counted. The actor therefore
//! stays until every request it forwarded has its reply.

pub mod admission;
pub mod advice;
pub mod answer;
mod blocks;
mod close;
mod config;
pub mod core;
pub mod driver;
pub mod forward;
mod hsm;
pub mod outcome;
pub mod records;
pub mod repeats;
pub mod scoring;
pub mod security;
pub mod stand_in;
pub mod validate;

#[cfg(test)]
mod tests;

pub use self::core::{ForwardOut, TerminalCore};
pub use config::TerminalConfig;
pub(crate) use config::TerminalsFile;
pub use driver::serve;
pub use records::{JournalAppend, JournalQueue};

/// Fields a response echoes from its request (those present).
pub const ECHO_FIELDS: &[usize] = &[2, 3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49];
