//! Card security: keys, MACs, PIN blocks, DUKPT, the key store.
//!
//! The primitives are pure functions over byte slices, one file per
//! concern, in the protocol crate (`switchyard_protocol::crypto`: the load
//! generator makes PIN blocks and MACs as a terminal would) and re-exported
//! here:
//!
//! * [`keys`]: [`keys::SecretKey`], TDES or AES, zeroized on drop, shown
//!   only by its [`kcv`] (key check value);
//! * [`mac`]: ISO 9797-1 MAC algorithm 3 (retail MAC), algorithm 1 with
//!   TDES, AES-CMAC;
//! * [`pinblock`]: ISO 9564 formats 0 and 4, translation between keys and
//!   formats;
//! * [`dukpt`]: TDES DUKPT (ANSI X9.24-1:2009), the host side;
//! * [`dukpt_aes`]: AES DUKPT (ANSI X9.24-3-2017), the host side;
//!
//! The switch's own, in this crate:
//!
//! * [`card_hash`]: HMAC-SHA-256 of the PAN (PCI DSS 3.5.1.1);
//! * [`keyblock`]: X9.143 / TR-31 version D key blocks;
//! * [`hsm`]: the commands a switch asks of an HSM, the soft HSM that
//!   answers them in the process, and the payShield client (and its
//!   emulator, `switchyard hsm-sim`) that sends them to a network HSM.
//!
//! Around them, with I/O: [`lmk`] (the local master key, from components,
//! in a file), [`store`] (the key store file), [`random`] (the OS's random
//! bytes) and [`cli`] (`switchyard keys`).
//!
//! Nothing here logs, and no error message carries a key, a PIN or a PIN
//! block: errors say what was wrong, `Debug` shows KCVs.

pub mod card_hash;
pub mod cli;
pub mod hsm;
pub mod keyblock;
pub mod lmk;
pub mod random;
pub mod store;

// The primitives are the protocol crate's (the load generator needs them
// too); re-exported so `crate::security::mac` and the like stay the paths.
pub use switchyard_protocol::crypto::{
    Algorithm, Kcv, SecretKey, cipher, dukpt, dukpt_aes, kcv, keys, mac, pinblock,
};
