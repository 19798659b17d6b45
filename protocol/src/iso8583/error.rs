//! Typed codec errors. Each names the place (field number and name, byte
//! offset from the start of the message) and the problem, and never the data:
//! the data might be a card number.

use std::fmt;

/// The part of a message an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Mti,
    PrimaryBitmap,
    SecondaryBitmap,
    /// A data element: number and name from the spec.
    Field(u8, &'static str),
}

impl Part {
    pub(crate) fn field(n: usize, name: &'static str) -> Part {
        Part::Field(n as u8, name)
    }

    /// The field number, if the part is a data element.
    pub fn field_number(self) -> Option<u8> {
        match self {
            Part::Field(n, _) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Mti => f.write_str("MTI"),
            Part::PrimaryBitmap => f.write_str("primary bitmap"),
            Part::SecondaryBitmap => f.write_str("secondary bitmap"),
            Part::Field(n, "") => write!(f, "field {n}"),
            Part::Field(n, name) => write!(f, "field {n} ({name})"),
        }
    }
}

/// Why a message could not be parsed.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    #[error("{part} is truncated at offset {offset}: needs {needed} bytes, {available} left")]
    Truncated {
        part: Part,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("{part}: length prefix at offset {offset} is not a valid length")]
    BadLengthPrefix { part: Part, offset: usize },
    #[error("{part}: length {length} at offset {offset} is over the maximum {max}")]
    LengthOverMax {
        part: Part,
        offset: usize,
        length: usize,
        max: usize,
    },
    #[error("{part}: non-numeric data at offset {offset}")]
    NonNumeric { part: Part, offset: usize },
    #[error("{part}: invalid {expected} character at offset {offset}")]
    InvalidCharacter {
        part: Part,
        offset: usize,
        expected: &'static str,
    },
    #[error("MTI at offset 0 is not four decimal digits")]
    BadMti,
    #[error("{part} at offset {offset} is not valid hexadecimal")]
    BadBitmap { part: Part, offset: usize },
    #[error("bitmap declares field {field}, which the spec `{spec}` does not define")]
    UndefinedField { field: u8, spec: &'static str },
    #[error("{count} trailing bytes after the last field, at offset {offset}")]
    TrailingBytes { offset: usize, count: usize },
    #[error("message of {len} bytes is over the codec limit of {max}")]
    TooLarge { len: usize, max: usize },
}

impl ParseError {
    /// The data element the error is about, if any; lets the switch tell
    /// a terminal which field was wrong without echoing the bad data.
    pub fn field(&self) -> Option<u8> {
        match self {
            ParseError::Truncated { part, .. }
            | ParseError::BadLengthPrefix { part, .. }
            | ParseError::LengthOverMax { part, .. }
            | ParseError::NonNumeric { part, .. }
            | ParseError::InvalidCharacter { part, .. } => part.field_number(),
            ParseError::UndefinedField { field, .. } => Some(*field),
            _ => None,
        }
    }
}

/// Why a message could not be packed.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum PackError {
    #[error("field {field} is not defined by the spec `{spec}`")]
    UndefinedField { field: u8, spec: &'static str },
    #[error("field {field} can not be set: 0 and 1 are not data elements")]
    NotADataElement { field: u8 },
    #[error("{part}: value of length {length} is over the maximum {max}")]
    TooLong {
        part: Part,
        length: usize,
        max: usize,
    },
    #[error("{part}: value must be numeric")]
    NonNumeric { part: Part },
    #[error("{part}: value has a character the field's encoding can not carry")]
    InvalidCharacter { part: Part },
    #[error("{part}: binary value of odd length can not be written as hex")]
    OddHexLength { part: Part },
    #[error("field {field} set after field {after}: a writer takes fields in ascending order")]
    OutOfOrder { field: u8, after: u8 },
    #[error("MTI must be four decimal digits, and a request to have a response")]
    BadMti,
    #[error("message of {len} bytes is over the codec limit of {max}")]
    TooLarge { len: usize, max: usize },
}
