use super::*;
use crate::security::pinblock::{self, Pin};
use proptest::prelude::*;

fn block_text(alg: char) -> KeyBlockText {
    // A syntactically whole version D block (not under any key: the codec
    // does not unwrap).
    let body = format!("D0112P0{alg}B00E0000");
    let rest = "0".repeat(112 - body.len());
    KeyBlockText(format!("{body}{rest}"))
}

fn round_trip(req: &Request, header_len: usize) {
    let header = "A".repeat(header_len);
    let mut body = Vec::new();
    encode_request(header.as_bytes(), req, &mut body).expect("encodes");
    let (h, back) = decode_request(&body, header_len).expect("decodes");
    assert_eq!(h, header.as_bytes());
    assert_eq!(&back, req);
}

fn ksn() -> Ksn {
    Ksn::new(&crate::hex::parse_hex("FFFF9876543210E00001").expect("hex")).expect("ksn")
}

#[test]
fn response_codes_are_the_command_plus_one() {
    for (c, r) in [
        (b"CA", b"CB"),
        (b"CC", b"CD"),
        (b"G0", b"G1"),
        (b"M6", b"M7"),
        (b"M8", b"M9"),
        (b"A0", b"A1"),
        (b"A6", b"A7"),
        (b"NC", b"ND"),
    ] {
        assert_eq!(&response_code(*c), r);
    }
}

#[test]
fn a_ca_command_is_laid_out_as_the_manual_says() {
    let t = PinTranslation {
        from: block_text('T'),
        to: block_text('T'),
        block: EncryptedPinBlock::Iso0([0x1B, 0x9C, 0x18, 0x45, 0xEB, 0x99, 0x3A, 0x7A]),
        to_format: PinFormat::Iso0,
        account: Account::for_pan("4012345678909", PinFormat::Iso0, PinFormat::Iso0).expect("pan"),
    };
    let mut body = Vec::new();
    encode_request(b"0001", &Request::TranslateTpk(t.clone()), &mut body).expect("encodes");
    let text = String::from_utf8(body).expect("ascii");
    let keys = format!("S{}S{}", t.from.0, t.to.0);
    assert_eq!(
        text,
        format!("0001CA{keys}121B9C1845EB993A7A0101401234567890")
    );
}

#[test]
fn account_numbers_bind_the_pin_as_the_pan_does() {
    // 12 right-most digits before the check digit; zero-padded when short.
    let a = Account::for_pan("4012345678909", PinFormat::Iso0, PinFormat::Iso0).expect("pan");
    assert_eq!(a, Account::Digits12(*b"401234567890"));
    let a = Account::for_pan("123456789", PinFormat::Iso0, PinFormat::Iso0).expect("pan");
    assert_eq!(a, Account::Digits12(*b"000012345678"));
    let a = Account::for_pan("4012345678909", PinFormat::Iso0, PinFormat::Iso4).expect("pan");
    assert_eq!(a, Account::Pan("4012345678909".into()));
    assert_eq!(
        Account::for_pan("1234567", PinFormat::Iso0, PinFormat::Iso0),
        Err(PinBlockError::BadPan)
    );
    assert_eq!(
        Account::for_pan("40123456789x9", PinFormat::Iso0, PinFormat::Iso0),
        Err(PinBlockError::BadPan)
    );
}

proptest! {
    #[test]
    fn the_12_digits_give_the_same_format0_block(pan in "[0-9]{8,19}", pin in "[0-9]{4,12}") {
        let a = Account::for_pan(&pan, PinFormat::Iso0, PinFormat::Iso0).expect("pan");
        let pin = Pin::new(&pin).expect("pin");
        prop_assert_eq!(
            pinblock::encode_iso0(&pin, &pan).expect("block"),
            pinblock::encode_iso0(&pin, &a.pan()).expect("block")
        );
    }
}

#[test]
fn every_command_round_trips() {
    let t0 = PinTranslation {
        from: block_text('T'),
        to: block_text('T'),
        block: EncryptedPinBlock::Iso0([7; 8]),
        to_format: PinFormat::Iso0,
        account: Account::Digits12(*b"401234567890"),
    };
    let t4 = PinTranslation {
        from: block_text('A'),
        to: block_text('A'),
        block: EncryptedPinBlock::Iso4([9; 16]),
        to_format: PinFormat::Iso4,
        account: Account::Pan("4012345678909".into()),
    };
    let mixed = PinTranslation {
        to: block_text('A'),
        to_format: PinFormat::Iso4,
        account: Account::Pan("4012345678909".into()),
        ..t0.clone()
    };
    let mac: MacValue = [1u8, 2, 3, 4, 5, 6, 7, 8].into_iter().collect();
    let cases = [
        Request::TranslateTpk(t0.clone()),
        Request::TranslateZpk(t4),
        Request::TranslateZpk(mixed.clone()),
        Request::TranslateDukpt {
            pin: t0.clone(),
            ksn: ksn(),
        },
        Request::TranslateDukpt {
            pin: mixed,
            ksn: ksn(),
        },
        Request::GenerateMac {
            key: block_text('T'),
            algorithm: MacAlgorithm::Retail,
            size: MacSize::Eight,
            data: Bytes::from_static(b"0200 and \x00\xFF binary"),
        },
        Request::GenerateMac {
            key: block_text('A'),
            algorithm: MacAlgorithm::AesCmac,
            size: MacSize::Sixteen,
            data: Bytes::new(),
        },
        Request::VerifyMac {
            key: block_text('T'),
            algorithm: MacAlgorithm::TdesCbc,
            data: Bytes::from_static(b"x"),
            mac,
        },
        Request::GenerateKey {
            key_type: KeyType::Zpk,
            algorithm: Algorithm::Tdes,
            export: None,
            label: None,
        },
        Request::GenerateKey {
            key_type: KeyType::Tak,
            algorithm: Algorithm::Aes,
            export: Some(Export {
                tmk: true,
                kek: block_text('A'),
                scheme: b'S',
            }),
            label: Some("t-TERM0001.tak".into()),
        },
        Request::ImportKey {
            key_type: KeyType::Zak,
            zmk: block_text('T'),
            under_zmk: "0123456789ABCDEF0123456789ABCDEF".into(),
            label: Some("acq.zak".into()),
        },
        Request::ImportKey {
            key_type: KeyType::Zpk,
            zmk: block_text('T'),
            under_zmk: "FEDCBA9876543210FEDCBA9876543210".into(),
            label: None,
        },
        Request::Diagnostics,
    ];
    for req in &cases {
        for h in [1, 4, 8] {
            round_trip(req, h);
        }
    }
}

#[test]
fn every_answer_round_trips() {
    let kcv = Kcv::parse("0A1B2C").expect("kcv");
    let cases: Vec<([u8; 2], Response)> = vec![
        (
            *b"CA",
            Response::Pin {
                pin_len: 4,
                block: EncryptedPinBlock::Iso0([3; 8]),
            },
        ),
        (
            *b"G0",
            Response::Pin {
                pin_len: 12,
                block: EncryptedPinBlock::Iso4([3; 16]),
            },
        ),
        (*b"M6", Response::Mac([5u8; 8].into_iter().collect())),
        (*b"M6", Response::Mac([5u8; 16].into_iter().collect())),
        (*b"M8", Response::Verified),
        (
            *b"A0",
            Response::Key {
                under_lmk: block_text('T'),
                exported: None,
                kcv,
            },
        ),
        (
            *b"A0",
            Response::Key {
                under_lmk: block_text('T'),
                exported: Some((b'X', "0123456789ABCDEF0123456789ABCDEF".into())),
                kcv,
            },
        ),
        (
            *b"A0",
            Response::Key {
                under_lmk: block_text('A'),
                exported: Some((b'S', block_text('A').0)),
                kcv,
            },
        ),
        (
            *b"A6",
            Response::Key {
                under_lmk: block_text('T'),
                exported: None,
                kcv,
            },
        ),
        (
            *b"NC",
            Response::Diagnostics {
                lmk_kcv: kcv,
                firmware: "SY-0.1.0".into(),
            },
        ),
    ];
    for (command, resp) in cases {
        let mut body = Vec::new();
        encode_response(b"ZZ01", command, Ok(&resp), &mut body);
        let (h, code, back) = decode_response(&body, 4).expect("decodes");
        assert_eq!(h, b"ZZ01");
        assert_eq!(code, response_code(command));
        assert_eq!(back, Ok(resp));
    }
    let mut body = Vec::new();
    encode_response(
        b"0007",
        *b"M8",
        Err(ErrorCode::VERIFICATION_FAILURE),
        &mut body,
    );
    assert_eq!(body, b"0007M901");
    assert_eq!(
        decode_response(&body, 4),
        Ok((&b"0007"[..], *b"M9", Err(ErrorCode::VERIFICATION_FAILURE)))
    );
}

#[test]
fn bad_requests_are_refused_with_15_or_68_and_unreadable_ones_closed() {
    assert_eq!(decode_request(b"00", 4), Err(None));
    assert_eq!(decode_request(b"0000C", 4), Err(None));
    assert_eq!(decode_request(b"0000C-", 4), Err(None));
    let r = decode_request(b"0000CA", 4)
        .expect_err("short")
        .expect("answerable");
    assert_eq!(
        (r.header.as_slice(), r.code),
        (&b"0000"[..], ErrorCode::INVALID_INPUT)
    );
    let r = decode_request(b"0000ZZ", 4)
        .expect_err("unknown")
        .expect("answerable");
    assert_eq!(r.code, ErrorCode::COMMAND_DISABLED);
    let r = decode_request(b"0000NCx", 4)
        .expect_err("extra")
        .expect("answerable");
    assert_eq!(r.code, ErrorCode::INVALID_INPUT);
    // A format code not served (03): 23.
    let t = PinTranslation {
        from: block_text('T'),
        to: block_text('T'),
        block: EncryptedPinBlock::Iso0([7; 8]),
        to_format: PinFormat::Iso0,
        account: Account::Digits12(*b"401234567890"),
    };
    let mut body = Vec::new();
    encode_request(b"0000", &Request::TranslateTpk(t), &mut body).expect("encodes");
    let at = body.len() - 12 - 4;
    body[at..at + 2].copy_from_slice(b"03");
    let r = decode_request(&body, 4)
        .expect_err("format")
        .expect("answerable");
    assert_eq!(r.code, ErrorCode::INVALID_PIN_FORMAT);
}

#[test]
fn debug_shows_no_block_or_pan() {
    let t = PinTranslation {
        from: block_text('T'),
        to: block_text('T'),
        block: EncryptedPinBlock::Iso0([0xAB; 8]),
        to_format: PinFormat::Iso0,
        account: Account::Pan("4012345678909".into()),
    };
    let s = format!("{t:?}");
    assert!(!s.contains("ABAB") && !s.contains("4012345678909"), "{s}");
    assert!(!s.contains(&t.from.0[12..40]), "{s}");
}

fn arb_request() -> impl Strategy<Value = Request> {
    let fmt = prop_oneof![Just(PinFormat::Iso0), Just(PinFormat::Iso4)];
    let alg = prop_oneof![Just('T'), Just('A')];
    let pin = (alg.clone(), alg, fmt, "[0-9]{8,19}", any::<[u8; 16]>()).prop_map(
        |(fa, ta, to_format, pan, bytes)| {
            let block = if fa == 'T' {
                EncryptedPinBlock::Iso0(bytes[..8].try_into().expect("8"))
            } else {
                EncryptedPinBlock::Iso4(bytes)
            };
            let account = Account::for_pan(&pan, block.format(), to_format).expect("a valid PAN");
            PinTranslation {
                from: block_text(fa),
                to: block_text(ta),
                block,
                to_format,
                account,
            }
        },
    );
    let mac_alg = prop_oneof![
        Just(MacAlgorithm::Retail),
        Just(MacAlgorithm::TdesCbc),
        Just(MacAlgorithm::AesCmac)
    ];
    let size = prop_oneof![
        Just(MacSize::Four),
        Just(MacSize::Eight),
        Just(MacSize::Sixteen)
    ];
    let key_type = proptest::sample::select(crate::security::store::KEY_TYPES.to_vec());
    prop_oneof![
        pin.clone().prop_map(Request::TranslateTpk),
        pin.clone().prop_map(Request::TranslateZpk),
        (pin, any::<[u8; 10]>()).prop_map(|(mut p, k)| {
            // G0's source is TDES DUKPT: a format 0 block of 8 bytes.
            let b = p.block.as_bytes();
            p.block = EncryptedPinBlock::Iso0(b[..8].try_into().expect("8"));
            p.account =
                Account::for_pan(&p.account.pan(), PinFormat::Iso0, p.to_format).expect("pan");
            Request::TranslateDukpt {
                pin: p,
                ksn: Ksn::new(&k).expect("10"),
            }
        }),
        (
            mac_alg.clone(),
            size.clone(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(algorithm, size, data)| Request::GenerateMac {
                key: block_text('T'),
                algorithm,
                size,
                data: Bytes::from(data),
            }),
        (
            mac_alg,
            size,
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(algorithm, size, data)| Request::VerifyMac {
                key: block_text('A'),
                algorithm,
                data: Bytes::from(data),
                mac: std::iter::repeat_n(0x5A, size.bytes()).collect(),
            }),
        (
            key_type.clone(),
            any::<bool>(),
            proptest::option::of(any::<bool>()),
            proptest::option::of("[a-zA-Z0-9._-]{1,64}")
        )
            .prop_map(|(key_type, aes, export, label)| Request::GenerateKey {
                key_type,
                algorithm: if aes { Algorithm::Aes } else { Algorithm::Tdes },
                export: export.map(|tmk| Export {
                    tmk,
                    kek: block_text('A'),
                    scheme: b'S',
                }),
                label,
            }),
        (
            key_type,
            "[0-9A-F]{32}",
            proptest::option::of("[a-z0-9.]{1,64}")
        )
            .prop_map(|(key_type, under_zmk, label)| Request::ImportKey {
                key_type,
                zmk: block_text('T'),
                under_zmk,
                label,
            }),
        Just(Request::Diagnostics),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(req in arb_request(), header_len in 1usize..=MAX_HEADER_LEN) {
        let header = "7".repeat(header_len);
        let mut body = Vec::new();
        encode_request(header.as_bytes(), &req, &mut body).expect("encodes");
        let (h, back) = decode_request(&body, header_len).expect("decodes");
        prop_assert_eq!(h, header.as_bytes());
        prop_assert_eq!(back, req);
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), header_len in 0usize..8) {
        let _ = decode_request(&bytes, header_len);
        let _ = decode_response(&bytes, header_len);
        let _ = split_head(&bytes, header_len);
    }

    #[test]
    fn decoders_never_panic_on_near_misses(
        req in arb_request(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        // Whole requests, cut short or with one byte changed: the inputs
        // that reach deep into the field readers.
        let mut body = Vec::new();
        encode_request(b"0000", &req, &mut body).expect("encodes");
        let _ = decode_request(&body[..cut.index(body.len() + 1)], 4);
        let i = flip.index(body.len());
        body[i] = byte;
        let _ = decode_request(&body, 4);
        let _ = decode_response(&body, 4);
    }
}

#[test]
fn an_a6_command_is_laid_out_as_the_manual_says_with_our_key_block_fields() {
    let zmk = block_text('T');
    let req = Request::ImportKey {
        key_type: KeyType::Zpk,
        zmk: zmk.clone(),
        under_zmk: "0123456789ABCDEF0123456789ABCDEF".into(),
        label: Some("acq.zpk".into()),
    };
    let mut body = Vec::new();
    encode_request(b"0042", &req, &mut body).expect("encodes");
    let text = String::from_utf8(body).expect("ascii");
    // Key type FFF, the ZMK, X + the key under it, scheme S, then the key
    // block fields: P0 T2 B 00 E, two optional blocks (10: ZPK, LB: the
    // name).
    assert_eq!(
        text,
        format!(
            "0042A6FFFS{}X0123456789ABCDEF0123456789ABCDEFS#P0T2B00E021007ZPKLB0Bacq.zpk",
            zmk.0
        )
    );
    // A7: the key under the LMK and the KCV.
    let kcv = Kcv::parse("08D7B4").expect("kcv");
    let block = block_text('T');
    let answer = format!("0042A700S{}08D7B4", block.0);
    assert_eq!(
        decode_response(answer.as_bytes(), 4),
        Ok((
            &b"0042"[..],
            *b"A7",
            Ok(Response::Key {
                under_lmk: block,
                exported: None,
                kcv
            })
        ))
    );
    // Its errors come as codes: a ZMK block the HSM can not authenticate.
    assert_eq!(
        decode_response(b"0042A7A4", 4),
        Ok((&b"0042"[..], *b"A7", Err(ErrorCode::KEY_BLOCK_AUTH)))
    );
}

#[test]
fn a_bad_a6_is_refused_with_15_naming_the_field() {
    let good = {
        let mut body = Vec::new();
        let req = Request::ImportKey {
            key_type: KeyType::Zak,
            zmk: block_text('T'),
            under_zmk: "0123456789ABCDEF0123456789ABCDEF".into(),
            label: None,
        };
        encode_request(b"0000", &req, &mut body).expect("encodes");
        String::from_utf8(body).expect("ascii")
    };
    let refused = |text: &str| {
        decode_request(text.as_bytes(), 4)
            .expect_err("refused")
            .expect("answerable")
    };
    // Not hex under the ZMK.
    let r = refused(&good.replacen("X0123", "X012G", 1));
    assert_eq!(r.code, ErrorCode::INVALID_INPUT);
    assert!(
        r.reason.to_string().contains("key under the ZMK"),
        "{}",
        r.reason
    );
    // Scheme U (variant) under the ZMK: only X is read.
    let r = refused(&good.replacen("X0123", "U0123", 1));
    assert!(
        r.reason.to_string().contains("key scheme (ZMK)"),
        "{}",
        r.reason
    );
    // An AES algorithm for a scheme-X key.
    let r = refused(&good.replacen("#M3T2", "#M6A1", 1));
    assert!(r.reason.to_string().contains("T2"), "{}", r.reason);
    // A label that is no key name.
    let with_label = good.replacen("0110", "0210", 1) + "LB06a b";
    let r = refused(&with_label);
    assert!(r.reason.to_string().contains("LB"), "{}", r.reason);
    // And the encoder refuses what it would not read back.
    let mut body = Vec::new();
    let bad = Request::ImportKey {
        key_type: KeyType::Zak,
        zmk: block_text('T'),
        under_zmk: "0123".into(),
        label: None,
    };
    assert!(encode_request(b"0000", &bad, &mut body).is_err());
}
