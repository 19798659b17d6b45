//! The built-in dialects.
//!
//! * `iso87ascii`: ISO 8583:1987 in ASCII, the dialect of jPOS
//!   `ISO87APackager` and pyiso8583 `default_ascii` (lengths follow
//!   pyiso8583 where the two differ: DE54 240, DE55 510 hex characters,
//!   DE65/DE96 16 hex characters).
//! * `iso87binary`: ISO 8583:1987 with a binary bitmap, packed BCD numerics
//!   and BCD length prefixes, the dialect of jPOS `ISO87BPackager`. DE55 is
//!   carried as binary (`LLL`, up to 255 bytes) as EMV hosts send it, and
//!   DE65 as 8 bytes, as pyiso8583 does.

use std::borrow::Cow;
use std::sync::LazyLock;

use super::spec::{
    BitmapEncoding, Encoding, FieldDef, FieldKind, Length, MtiEncoding, Pad, PrefixEncoding, Spec,
};

/// Names of the 1987 data elements, shared by both built-in dialects.
pub const FIELD_NAMES: [&str; 129] = [
    "",
    "Secondary bitmap",
    "Primary account number (PAN)",
    "Processing code",
    "Amount, transaction",
    "Amount, settlement",
    "Amount, cardholder billing",
    "Transmission date and time",
    "Amount, cardholder billing fee",
    "Conversion rate, settlement",
    "Conversion rate, cardholder billing",
    "System trace audit number (STAN)",
    "Time, local transaction",
    "Date, local transaction",
    "Date, expiration",
    "Date, settlement",
    "Date, conversion",
    "Date, capture",
    "Merchant type (MCC)",
    "Acquiring institution country code",
    "PAN extended country code",
    "Forwarding institution country code",
    "Point of service entry mode",
    "Card sequence number",
    "Network international identifier",
    "Point of service condition code",
    "Point of service PIN capture code",
    "Authorization identification response length",
    "Amount, transaction fee",
    "Amount, settlement fee",
    "Amount, transaction processing fee",
    "Amount, settlement processing fee",
    "Acquiring institution identification code",
    "Forwarding institution identification code",
    "Primary account number, extended",
    "Track 2 data",
    "Track 3 data",
    "Retrieval reference number",
    "Authorization identification response",
    "Response code",
    "Service restriction code",
    "Card acceptor terminal identification",
    "Card acceptor identification code",
    "Card acceptor name/location",
    "Additional response data",
    "Track 1 data",
    "Additional data, ISO",
    "Additional data, national",
    "Additional data, private",
    "Currency code, transaction",
    "Currency code, settlement",
    "Currency code, cardholder billing",
    "PIN data",
    "Security related control information",
    "Additional amounts",
    "ICC data (EMV)",
    "Reserved ISO",
    "Reserved national",
    "Reserved national",
    "Reserved national",
    "Reserved national",
    "Reserved private",
    "Reserved private",
    "Reserved private",
    "Message authentication code (MAC)",
    "Extended bitmap indicator",
    "Settlement code",
    "Extended payment code",
    "Receiving institution country code",
    "Settlement institution country code",
    "Network management information code",
    "Message number",
    "Message number, last",
    "Date, action",
    "Credits, number",
    "Credits, reversal number",
    "Debits, number",
    "Debits, reversal number",
    "Transfer, number",
    "Transfer, reversal number",
    "Inquiries, number",
    "Authorizations, number",
    "Credits, processing fee amount",
    "Credits, transaction fee amount",
    "Debits, processing fee amount",
    "Debits, transaction fee amount",
    "Credits, amount",
    "Credits, reversal amount",
    "Debits, amount",
    "Debits, reversal amount",
    "Original data elements",
    "File update code",
    "File security code",
    "Response indicator",
    "Service indicator",
    "Replacement amounts",
    "Message security code",
    "Amount, net settlement",
    "Payee",
    "Settlement institution identification code",
    "Receiving institution identification code",
    "File name",
    "Account identification 1",
    "Account identification 2",
    "Transaction description",
    "Reserved ISO",
    "Reserved ISO",
    "Reserved ISO",
    "Reserved ISO",
    "Reserved ISO",
    "Reserved ISO",
    "Reserved ISO",
    "Reserved national",
    "Reserved national",
    "Reserved national",
    "Reserved national",
    "Reserved national",
    "Reserved national",
    "Reserved national",
    "Reserved national",
    "Reserved private",
    "Reserved private",
    "Reserved private",
    "Reserved private",
    "Reserved private",
    "Reserved private",
    "Reserved private",
    "Reserved private",
    "Message authentication code (MAC 2)",
];

/// The shape of a 1987 field, independent of encoding: kind and length.
#[derive(Clone, Copy)]
enum Shape {
    /// Fixed length.
    F(FieldKind, u16),
    /// Variable with `digits` prefix digits and a maximum.
    V(FieldKind, u8, u16),
}

use FieldKind::{
    Alphanumeric as AN, Binary as B, Numeric as N, SignedAmount as XN, Text as ANS, Track as Z,
};
use Shape::{F, V};

/// The 1987 layout as pyiso8583 `default_ascii` sizes it. Binary fields are
/// sized in hex characters here; `iso87binary` overrides them.
const SHAPES_1987: [Option<Shape>; 129] = {
    let mut s: [Option<Shape>; 129] = [None; 129];
    s[2] = Some(V(N, 2, 19));
    s[3] = Some(F(N, 6));
    s[4] = Some(F(N, 12));
    s[5] = Some(F(N, 12));
    s[6] = Some(F(N, 12));
    s[7] = Some(F(N, 10));
    s[8] = Some(F(N, 8));
    s[9] = Some(F(N, 8));
    s[10] = Some(F(N, 8));
    s[11] = Some(F(N, 6));
    s[12] = Some(F(N, 6));
    let mut i = 13;
    while i <= 18 {
        s[i] = Some(F(N, 4));
        i += 1;
    }
    while i <= 24 {
        s[i] = Some(F(N, 3));
        i += 1;
    }
    s[25] = Some(F(N, 2));
    s[26] = Some(F(N, 2));
    s[27] = Some(F(N, 1));
    s[28] = Some(F(XN, 9));
    s[29] = Some(F(XN, 9));
    s[30] = Some(F(XN, 9));
    s[31] = Some(F(XN, 9));
    s[32] = Some(V(N, 2, 11));
    s[33] = Some(V(N, 2, 11));
    s[34] = Some(V(ANS, 2, 28));
    s[35] = Some(V(Z, 2, 37));
    s[36] = Some(V(ANS, 3, 104));
    s[37] = Some(F(AN, 12));
    s[38] = Some(F(AN, 6));
    s[39] = Some(F(AN, 2));
    s[40] = Some(F(AN, 3));
    s[41] = Some(F(ANS, 8));
    s[42] = Some(F(ANS, 15));
    s[43] = Some(F(ANS, 40));
    s[44] = Some(V(ANS, 2, 25));
    s[45] = Some(V(ANS, 2, 76));
    s[46] = Some(V(ANS, 3, 999));
    s[47] = Some(V(ANS, 3, 999));
    s[48] = Some(V(ANS, 3, 999));
    s[49] = Some(F(AN, 3));
    s[50] = Some(F(AN, 3));
    s[51] = Some(F(AN, 3));
    s[52] = Some(F(B, 16));
    s[53] = Some(F(N, 16));
    s[54] = Some(V(ANS, 3, 240));
    s[55] = Some(V(B, 3, 510));
    i = 56;
    while i <= 63 {
        s[i] = Some(V(ANS, 3, 999));
        i += 1;
    }
    s[64] = Some(F(B, 16));
    s[65] = Some(F(B, 16));
    s[66] = Some(F(N, 1));
    s[67] = Some(F(N, 2));
    s[68] = Some(F(N, 3));
    s[69] = Some(F(N, 3));
    s[70] = Some(F(N, 3));
    s[71] = Some(F(N, 4));
    s[72] = Some(F(N, 4));
    s[73] = Some(F(N, 6));
    i = 74;
    while i <= 81 {
        s[i] = Some(F(N, 10));
        i += 1;
    }
    while i <= 85 {
        s[i] = Some(F(N, 12));
        i += 1;
    }
    while i <= 89 {
        s[i] = Some(F(N, 16));
        i += 1;
    }
    s[90] = Some(F(N, 42));
    s[91] = Some(F(AN, 1));
    s[92] = Some(F(AN, 2));
    s[93] = Some(F(AN, 5));
    s[94] = Some(F(AN, 7));
    s[95] = Some(F(AN, 42));
    s[96] = Some(F(B, 16));
    s[97] = Some(F(XN, 17));
    s[98] = Some(F(ANS, 25));
    s[99] = Some(V(N, 2, 11));
    s[100] = Some(V(N, 2, 11));
    s[101] = Some(V(ANS, 2, 17));
    s[102] = Some(V(ANS, 2, 28));
    s[103] = Some(V(ANS, 2, 28));
    s[104] = Some(V(ANS, 3, 100));
    i = 105;
    while i <= 127 {
        s[i] = Some(V(ANS, 3, 999));
        i += 1;
    }
    s[128] = Some(F(B, 16));
    s
};

fn build(
    name: &str,
    mti: MtiEncoding,
    bitmap: BitmapEncoding,
    field: impl Fn(usize, Shape) -> FieldDef,
) -> Spec {
    let mut spec = Spec::empty(name, mti, bitmap);
    for (n, shape) in SHAPES_1987.iter().enumerate() {
        if let Some(shape) = *shape {
            spec.fields[n] = Some(field(n, shape));
        }
        spec.names[n] = Cow::Borrowed(FIELD_NAMES[n]);
    }
    spec
}

fn def(kind: FieldKind, length: Length, data: Encoding, prefix: PrefixEncoding) -> FieldDef {
    FieldDef {
        kind,
        length,
        data,
        prefix,
        pad: FieldDef::default_pad(kind, data),
    }
}

fn iso87ascii_spec() -> Spec {
    build(
        "iso87ascii",
        MtiEncoding::Ascii,
        BitmapEncoding::Hex,
        |_, shape| {
            let (kind, length) = match shape {
                F(k, l) => (k, Length::Fixed(l)),
                V(k, d, m) => (
                    k,
                    Length::Variable {
                        prefix_digits: d,
                        max: m,
                    },
                ),
            };
            let data = if kind == B {
                Encoding::Hex
            } else {
                Encoding::Ascii
            };
            def(kind, length, data, PrefixEncoding::Ascii)
        },
    )
}

fn iso87binary_spec() -> Spec {
    build(
        "iso87binary",
        MtiEncoding::Bcd,
        BitmapEncoding::Binary,
        |n, shape| {
            let (kind, length) = match shape {
                F(k, l) => (k, Length::Fixed(l)),
                V(k, d, m) => (
                    k,
                    Length::Variable {
                        prefix_digits: d,
                        max: m,
                    },
                ),
            };
            // Binary fields were sized in hex characters above; here they
            // are raw bytes (jPOS sizes DE96 at 16 bytes, DE55 at 255).
            let length = match (n, length) {
                (96, _) => Length::Fixed(16),
                (_, Length::Fixed(l)) if kind == B => Length::Fixed(l / 2),
                (_, Length::Variable { prefix_digits, max }) if kind == B => Length::Variable {
                    prefix_digits,
                    max: max / 2,
                },
                (_, l) => l,
            };
            let data = match kind {
                N | Z | XN => Encoding::Bcd,
                B => Encoding::Binary,
                _ => Encoding::Ascii,
            };
            let mut d = def(kind, length, data, PrefixEncoding::Bcd);
            // jPOS IFB_LLNUM(pad=false): odd variable numerics are right padded.
            if matches!(length, Length::Variable { .. }) && kind == N {
                d.pad = Pad::Right(0);
            }
            d
        },
    )
}

static ISO87ASCII: LazyLock<Spec> = LazyLock::new(iso87ascii_spec);
static ISO87BINARY: LazyLock<Spec> = LazyLock::new(iso87binary_spec);

/// ISO 8583:1987, ASCII (jPOS `ISO87APackager`, pyiso8583 `default_ascii`).
pub fn iso87ascii() -> &'static Spec {
    &ISO87ASCII
}

/// ISO 8583:1987, binary bitmap and BCD (jPOS `ISO87BPackager`).
pub fn iso87binary() -> &'static Spec {
    &ISO87BINARY
}

/// Names of the built-in specs, for help texts and errors.
pub const BUILT_IN: [&str; 2] = ["iso87ascii", "iso87binary"];

/// Looks up a built-in spec by name.
pub fn built_in(name: &str) -> Option<&'static Spec> {
    match name {
        "iso87ascii" => Some(iso87ascii()),
        "iso87binary" => Some(iso87binary()),
        _ => None,
    }
}

/// A built-in name, or else the path of a TOML spec file. TOML specs are
/// leaked: call this at start-up, not per message.
pub fn resolve(name_or_path: &str) -> Result<&'static Spec, super::spec_toml::SpecFileError> {
    if let Some(spec) = built_in(name_or_path) {
        return Ok(spec);
    }
    super::spec_toml::load_file(std::path::Path::new(name_or_path)).map(Spec::leak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_spec_matches_the_pyiso8583_default_ascii_sizes() {
        let s = iso87ascii();
        let pan = s.field(2).expect("DE2");
        assert_eq!(
            pan.length,
            Length::Variable {
                prefix_digits: 2,
                max: 19
            }
        );
        assert_eq!(pan.data, Encoding::Ascii);
        assert_eq!(s.field(55).map(|f| f.length.max()), Some(510));
        assert_eq!(s.field(52).map(|f| f.data), Some(Encoding::Hex));
        assert!(s.field(1).is_none() && s.field(0).is_none());
        assert_eq!(s.name_of(11), "System trace audit number (STAN)");
    }

    #[test]
    fn binary_spec_uses_bcd_numerics_and_byte_sized_binaries() {
        let s = iso87binary();
        let amount = s.field(4).expect("DE4");
        assert_eq!(
            (amount.data, amount.length),
            (Encoding::Bcd, Length::Fixed(12))
        );
        assert_eq!(amount.wire_len(12), 6);
        assert_eq!(s.field(52).map(|f| f.length), Some(Length::Fixed(8)));
        assert_eq!(s.field(96).map(|f| f.length), Some(Length::Fixed(16)));
        assert_eq!(s.field(41).map(|f| f.data), Some(Encoding::Ascii));
        assert_eq!(s.field(2).map(|f| f.pad), Some(Pad::Right(0)));
        assert_eq!(s.field(28).map(|f| f.wire_len(9)), Some(5));
    }
}
