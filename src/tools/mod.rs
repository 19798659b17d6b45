//! Tools that run beside the switch, not in it: the acquirer host
//! simulator ([`sim`], `switchyard sim`, also the host of the end-to-end
//! tests and the demo) and the message decoder ([`decode`],
//! `switchyard decode`). The load generator is the `loadtest` crate.

#[cfg(feature = "cli")]
pub mod certs;
pub mod decode;
pub mod sim;
