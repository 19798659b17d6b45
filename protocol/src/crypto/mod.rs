//! Card security primitives: pure functions over byte slices (no I/O, no
//! clock; randomness comes in as an argument), one file per concern, over
//! the RustCrypto crates. They live here, beside the codec, because both
//! sides of the wire need them: the switch (through its HSM interface,
//! `switchyard::security`) and the tools that play terminal and host (the
//! load generator makes PIN blocks and MACs as a terminal would).
//!
//! * [`keys`]: [`keys::SecretKey`], TDES or AES, zeroized on drop, shown
//!   only by its [`kcv`] (key check value);
//! * [`mac`]: ISO 9797-1 MAC algorithm 3 (retail MAC), algorithm 1 with
//!   TDES, AES-CMAC;
//! * [`pinblock`]: ISO 9564 formats 0 and 4, translation between keys and
//!   formats;
//! * [`dukpt`]: TDES DUKPT (ANSI X9.24-1:2009), the host side;
//! * [`dukpt_aes`]: AES DUKPT (ANSI X9.24-3-2017), the host side;
//! * [`cipher`]: the block ciphers over a `SecretKey` the others share.
//!
//! Nothing here logs, and no error message carries a key, a PIN or a PIN
//! block: errors say what was wrong, `Debug` shows KCVs.

#[doc(hidden)]
pub mod cipher;
pub mod des;
pub mod dukpt;
pub mod dukpt_aes;
pub mod kcv;
pub mod keys;
pub mod mac;
pub mod pinblock;

pub use kcv::Kcv;
pub use keys::{Algorithm, SecretKey};
