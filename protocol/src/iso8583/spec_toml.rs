//! Specs from TOML files, so a new dialect needs no recompiling.
//!
//! ```toml
//! name = "acme-host"
//! base = "iso87ascii"      # optional: start from a built-in spec
//! mti = "ascii"            # ascii | ebcdic | bcd
//! bitmap = "binary"        # binary | hex | ebcdic-hex
//! remove = [65]            # fields the dialect does not define
//!
//! [fields.52]
//! type = "b"               # n | a | an | ans | b | z | x+n
//! length = 8               # a fixed length, or:
//! # prefix = "LLL"         # L | LL | LLL | LLLL, with
//! # max = 255
//! encoding = "binary"      # ascii | ebcdic | bcd | binary | hex
//! prefix_encoding = "ascii"
//! pad = "left"             # left | right, with pad_char = "0"
//! name = "PIN data"
//! ```
//!
//! A field that overrides one of the base spec inherits every key it does
//! not set. Lengths count characters (ASCII, EBCDIC, hex), digits (BCD) or
//! bytes (binary).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::spec::{
    BitmapEncoding, Encoding, FieldDef, FieldKind, Length, MAX_FIELD, MtiEncoding, Pad,
    PrefixEncoding, Spec,
};
use super::specs;

#[derive(thiserror::Error, Debug)]
pub enum SpecFileError {
    #[error("spec file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spec file {path}: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("spec file {path}: `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    name: String,
    base: Option<String>,
    mti: Option<MtiChoice>,
    bitmap: Option<BitmapChoice>,
    #[serde(default)]
    remove: Vec<u32>,
    #[serde(default)]
    fields: BTreeMap<String, FieldEntry>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum MtiChoice {
    Ascii,
    Ebcdic,
    Bcd,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum BitmapChoice {
    Binary,
    Hex,
    EbcdicHex,
}

#[derive(Deserialize, Clone, Copy)]
enum KindChoice {
    #[serde(rename = "n")]
    N,
    #[serde(rename = "a")]
    A,
    // `anp`: alphanumeric and pad (space), which `an` allows already.
    #[serde(rename = "an", alias = "anp")]
    An,
    // `ns` (numeric and special) and `s` (special) are subsets of `ans`;
    // checked as `ans`.
    #[serde(rename = "ans", alias = "s", alias = "ns")]
    Ans,
    #[serde(rename = "b")]
    B,
    #[serde(rename = "z")]
    Z,
    #[serde(rename = "x+n")]
    Xn,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum EncodingChoice {
    Ascii,
    Ebcdic,
    Bcd,
    Binary,
    Hex,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum PrefixEncodingChoice {
    Ascii,
    Ebcdic,
    Bcd,
    Binary,
}

#[derive(Deserialize, Clone, Copy)]
enum PrefixChoice {
    #[serde(rename = "L")]
    L,
    #[serde(rename = "LL")]
    Ll,
    #[serde(rename = "LLL")]
    Lll,
    #[serde(rename = "LLLL")]
    Llll,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum PadChoice {
    Left,
    Right,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FieldEntry {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<KindChoice>,
    length: Option<u16>,
    prefix: Option<PrefixChoice>,
    max: Option<u16>,
    encoding: Option<EncodingChoice>,
    prefix_encoding: Option<PrefixEncodingChoice>,
    pad: Option<PadChoice>,
    pad_char: Option<String>,
}

/// Reads and validates a spec file.
pub fn load_file(path: &Path) -> Result<Spec, SpecFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates spec TOML; `path` is only used in errors.
pub fn parse(text: &str, path: &Path) -> Result<Spec, SpecFileError> {
    let file: SpecFile = toml::from_str(text).map_err(|e| SpecFileError::Toml {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let invalid = |key: String, problem: String| SpecFileError::Invalid {
        path: path.to_owned(),
        key,
        problem,
    };

    let mut spec = match &file.base {
        Some(base) => {
            let b = specs::built_in(base).ok_or_else(|| {
                invalid(
                    "base".into(),
                    format!(
                        "unknown built-in spec `{base}` (known: {})",
                        specs::BUILT_IN.join(", ")
                    ),
                )
            })?;
            let mut s = b.clone();
            s.name = file.name.clone();
            s
        }
        None => {
            let (Some(_), Some(_)) = (file.mti, file.bitmap) else {
                return Err(invalid(
                    "mti".into(),
                    "`mti` and `bitmap` are required when there is no `base`".into(),
                ));
            };
            Spec::empty(file.name.clone(), MtiEncoding::Ascii, BitmapEncoding::Hex)
        }
    };
    if let Some(m) = file.mti {
        spec.mti = match m {
            MtiChoice::Ascii => MtiEncoding::Ascii,
            MtiChoice::Ebcdic => MtiEncoding::Ebcdic,
            MtiChoice::Bcd => MtiEncoding::Bcd,
        };
    }
    if let Some(b) = file.bitmap {
        spec.bitmap = match b {
            BitmapChoice::Binary => BitmapEncoding::Binary,
            BitmapChoice::Hex => BitmapEncoding::Hex,
            BitmapChoice::EbcdicHex => BitmapEncoding::EbcdicHex,
        };
    }
    for (i, &n) in file.remove.iter().enumerate() {
        let n = n as usize;
        if !(2..=MAX_FIELD).contains(&n) {
            return Err(invalid(
                format!("remove[{i}]"),
                format!("{n} is not a field number (2..=128)"),
            ));
        }
        spec.fields[n] = None;
    }

    for (key, entry) in &file.fields {
        let at = |k: &str| format!("fields.{key}.{k}");
        let n: usize = key
            .parse()
            .ok()
            .filter(|n| (2..=MAX_FIELD).contains(n))
            .ok_or_else(|| {
                invalid(
                    format!("fields.{key}"),
                    "field numbers are 2..=128 (1 is the secondary bitmap indicator)".into(),
                )
            })?;
        let base = spec.fields[n];
        let kind = match (entry.kind, base) {
            (Some(k), _) => match k {
                KindChoice::N => FieldKind::Numeric,
                KindChoice::A => FieldKind::Alpha,
                KindChoice::An => FieldKind::Alphanumeric,
                KindChoice::Ans => FieldKind::Text,
                KindChoice::B => FieldKind::Binary,
                KindChoice::Z => FieldKind::Track,
                KindChoice::Xn => FieldKind::SignedAmount,
            },
            (None, Some(b)) => b.kind,
            (None, None) => return Err(invalid(at("type"), "required for a new field".into())),
        };
        let length = match (entry.length, entry.prefix, entry.max, base) {
            (Some(_), Some(_), _, _) => {
                return Err(invalid(
                    at("length"),
                    "set either `length` (fixed) or `prefix` and `max` (variable), not both".into(),
                ));
            }
            (Some(0), ..) => return Err(invalid(at("length"), "must be at least 1".into())),
            (Some(l), None, _, _) => Length::Fixed(l),
            (None, Some(p), Some(max), _) => Length::Variable {
                prefix_digits: match p {
                    PrefixChoice::L => 1,
                    PrefixChoice::Ll => 2,
                    PrefixChoice::Lll => 3,
                    PrefixChoice::Llll => 4,
                },
                max,
            },
            (None, Some(_), None, _) => {
                return Err(invalid(at("max"), "required with `prefix`".into()));
            }
            (
                None,
                None,
                Some(max),
                Some(FieldDef {
                    length: Length::Variable { prefix_digits, .. },
                    ..
                }),
            ) => Length::Variable { prefix_digits, max },
            (None, None, _, Some(b)) => b.length,
            (None, None, _, None) => {
                return Err(invalid(
                    at("length"),
                    "a new field needs `length` or `prefix` and `max`".into(),
                ));
            }
        };
        let data = match (entry.encoding, base) {
            (Some(e), _) => match e {
                EncodingChoice::Ascii => Encoding::Ascii,
                EncodingChoice::Ebcdic => Encoding::Ebcdic,
                EncodingChoice::Bcd => Encoding::Bcd,
                EncodingChoice::Binary => Encoding::Binary,
                EncodingChoice::Hex => Encoding::Hex,
            },
            (None, Some(b)) if b.kind == kind => b.data,
            (None, _) if kind == FieldKind::Binary => Encoding::Binary,
            (None, _) => Encoding::Ascii,
        };
        let prefix = match (entry.prefix_encoding, base) {
            (Some(p), _) => match p {
                PrefixEncodingChoice::Ascii => PrefixEncoding::Ascii,
                PrefixEncodingChoice::Ebcdic => PrefixEncoding::Ebcdic,
                PrefixEncodingChoice::Bcd => PrefixEncoding::Bcd,
                PrefixEncodingChoice::Binary => PrefixEncoding::Binary,
            },
            (None, Some(b)) => b.prefix,
            (None, None) => PrefixEncoding::Ascii,
        };
        let default_pad = match base {
            Some(b) if b.kind == kind && b.data == data => b.pad,
            _ => FieldDef::default_pad(kind, data),
        };
        let pad_char = match &entry.pad_char {
            None => None,
            Some(s) => {
                let bytes = s.as_bytes();
                if bytes.len() != 1 {
                    return Err(invalid(at("pad_char"), "must be one character".into()));
                }
                Some(if data == Encoding::Bcd {
                    super::encoding::hex_value(bytes[0]).ok_or_else(|| {
                        invalid(at("pad_char"), "a BCD pad is one hex digit".into())
                    })?
                } else {
                    bytes[0]
                })
            }
        };
        let pad = match (entry.pad, default_pad) {
            (None, p) => match (p, pad_char) {
                (Pad::Left(_), Some(c)) => Pad::Left(c),
                (Pad::Right(_), Some(c)) => Pad::Right(c),
                (p, None) => p,
            },
            (Some(side), p) => {
                let c = pad_char.unwrap_or(match p {
                    Pad::Left(c) | Pad::Right(c) => c,
                });
                match side {
                    PadChoice::Left => Pad::Left(c),
                    PadChoice::Right => Pad::Right(c),
                }
            }
        };
        let def = FieldDef {
            kind,
            length,
            data,
            prefix,
            pad,
        };
        check_def(&def).map_err(|(k, problem)| invalid(at(k), problem))?;
        spec.fields[n] = Some(def);
        if let Some(name) = &entry.name {
            spec.names[n] = Cow::Owned(name.clone());
        }
    }
    Ok(spec)
}

/// Checks that a definition is coherent; the error names the key to fix.
fn check_def(def: &FieldDef) -> Result<(), (&'static str, String)> {
    let ok = match def.kind {
        FieldKind::Numeric | FieldKind::Track | FieldKind::SignedAmount => {
            matches!(def.data, Encoding::Ascii | Encoding::Ebcdic | Encoding::Bcd)
        }
        FieldKind::Alpha | FieldKind::Alphanumeric | FieldKind::Text => {
            matches!(def.data, Encoding::Ascii | Encoding::Ebcdic)
        }
        FieldKind::Binary => matches!(def.data, Encoding::Binary | Encoding::Hex),
    };
    if !ok {
        return Err((
            "encoding",
            format!(
                "`{}` can not carry a `{}` field",
                def.data.code(),
                def.kind.code()
            ),
        ));
    }
    match def.length {
        Length::Fixed(l) => {
            if l > 9999 {
                return Err(("length", "at most 9999".into()));
            }
            if def.data == Encoding::Hex && l % 2 != 0 {
                return Err((
                    "length",
                    "a hex field has an even number of characters".into(),
                ));
            }
        }
        Length::Variable { prefix_digits, max } => {
            let digit_limit = 10usize.pow(prefix_digits as u32) - 1;
            let limit = match def.prefix {
                PrefixEncoding::Binary => (1usize << (8 * def.prefix.width(prefix_digits))) - 1,
                _ => digit_limit,
            };
            if max == 0 || max as usize > limit {
                return Err(("max", format!("must be 1..={limit} for this prefix")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Spec, SpecFileError> {
        parse(s, Path::new("test.toml"))
    }

    #[test]
    fn a_base_spec_can_be_adjusted() {
        let s = parse_str(
            r#"
            name = "ascii-binary-bitmap"
            base = "iso87ascii"
            bitmap = "binary"
            remove = [96]
            [fields.52]
            encoding = "binary"
            length = 8
            [fields.48]
            max = 200
            name = "Private data"
            "#,
        )
        .expect("valid");
        assert_eq!(s.bitmap, BitmapEncoding::Binary);
        assert!(s.field(96).is_none());
        assert_eq!(
            s.field(52).map(|f| (f.data, f.length)),
            Some((Encoding::Binary, Length::Fixed(8)))
        );
        assert_eq!(
            s.field(48).map(|f| f.length),
            Some(Length::Variable {
                prefix_digits: 3,
                max: 200
            })
        );
        assert_eq!(s.name_of(48), "Private data");
        assert_eq!(s.field(2), specs::iso87ascii().field(2));
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse_str("name = \"x\"\nbase = \"iso87ascii\"\n[fields.4]\nencoding = \"hex\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`fields.4.encoding`") && e.contains("`hex` can not carry a `n` field"),
            "{e}"
        );

        let e = parse_str(
            "name = \"x\"\nbase = \"iso87ascii\"\n[fields.1]\ntype = \"n\"\nlength = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`fields.1`"), "{e}");

        let e = parse_str(
            "name = \"x\"\nbase = \"iso87ascii\"\n[fields.2]\nprefix = \"LL\"\nmax = 100\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`fields.2.max`") && e.contains("1..=99"), "{e}");

        let e = parse_str("name = \"x\"\nbase = \"iso87ascii\"\ncolour = \"red\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");

        let e = parse_str("name = \"x\"\nbase = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`base`") && e.contains("iso87binary"), "{e}");

        let e =
            parse_str("name = \"x\"\nmti = \"ascii\"\nbitmap = \"hex\"\n[fields.3]\nlength = 6\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("`fields.3.type`"), "{e}");
    }

    #[test]
    fn a_spec_can_be_written_from_scratch() {
        let s = parse_str(
            r#"
            name = "tiny-ebcdic"
            mti = "ebcdic"
            bitmap = "binary"
            [fields.3]
            type = "n"
            length = 6
            encoding = "ebcdic"
            [fields.11]
            type = "n"
            length = 6
            encoding = "bcd"
            [fields.41]
            type = "ans"
            length = 8
            encoding = "ebcdic"
            "#,
        )
        .expect("valid");
        assert_eq!(s.mti, MtiEncoding::Ebcdic);
        assert_eq!(s.fields.iter().filter(|f| f.is_some()).count(), 3);
        assert_eq!(s.field(11).map(|f| f.pad), Some(Pad::Left(0)));
    }
}
