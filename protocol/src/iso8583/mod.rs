//! Sans-IO ISO 8583 codec, driven by data-defined specs.
//!
//! * [`Spec`] / [`FieldDef`]: field tables; [`specs`] holds the built-in
//!   dialects, [`spec_toml`] reads more from TOML.
//! * [`Message::parse`]: a zero-copy view over one frame with typed
//!   accessors (`pan()`, `stan()`, `amount_minor()`...).
//! * [`MessageBuilder`]: packs into a reusable `BytesMut`.
//! * Printing a message masks the card number and hides track data, PIN
//!   blocks and chip data ([`display`]).

pub mod bitmap;
pub mod builder;
pub mod datetime;
pub mod display;
mod ebcdic;
mod encoding;
pub mod error;
pub mod mac_field;
pub mod message;
pub mod mti;
pub mod samples;
pub mod spec;
pub mod spec_toml;
pub mod specs;
pub mod values;

pub use bitmap::Bitmap;
pub use builder::{MessageBuilder, MessageWriter, pack_response};
pub use error::{PackError, ParseError, Part};
pub use message::{FieldValue, MAX_MESSAGE_LEN, Message, Salvage};
pub use mti::Mti;
pub use spec::{FieldDef, FieldKind, Length, Spec};
pub use values::{MaskedPan, Pan, SmallText};
