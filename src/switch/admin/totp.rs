//! TOTP (RFC 6238 over RFC 4226's HOTP): HMAC-SHA-1, 30-second steps,
//! 6 digits: what authenticator apps use by default.
//!
//! A dozen lines over `hmac` + `sha1` rather than a crate: the crates
//! (totp-rs...) bring their own base32, URL and clock handling, and the
//! parts that matter here (the ±1 step window, replay by step, the
//! constant-time comparison) are the caller's anyway. Pure: the time is
//! passed in.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// Seconds per step (RFC 6238's default X).
pub const STEP_SECS: u64 = 30;
/// Digits in a code.
pub const DIGITS: u32 = 6;
/// Bytes in a fresh secret: 160 bits, RFC 4226 section 4's recommendation
/// (and an HMAC-SHA-1 block's natural key size).
pub const SECRET_LEN: usize = 20;

/// The step a Unix time falls in.
pub fn step(unix_secs: u64) -> u64 {
    unix_secs / STEP_SECS
}

/// HOTP (RFC 4226 section 5.3): the code for counter `counter`, as a
/// number below 10^`digits`.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> u32 {
    // HMAC takes a key of any length: new_from_slice does not fail.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return 0;
    };
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    // Dynamic truncation: the low nibble of the last byte is an offset.
    let offset = usize::from(h[19] & 0x0f);
    let bin = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    bin % 10u32.pow(digits)
}

/// The 6-digit code of a step, zero-padded.
pub fn code(secret: &[u8], step: u64) -> String {
    format!("{:06}", hotp(secret, step, DIGITS))
}

/// The step in `now_step - 1 ..= now_step + 1` whose code is `given`, if
/// any (RFC 6238 section 5.2: one step either way for clock drift and
/// typing time). Every candidate is compared, in constant time, whatever
/// matched: the answer's timing says nothing of which step did.
pub fn matching_step(secret: &[u8], given: &str, now_step: u64) -> Option<u64> {
    let given = given.as_bytes();
    let mut found = None;
    for s in [now_step.saturating_sub(1), now_step, now_step + 1] {
        let expected = code(secret, s);
        let equal: bool = expected.as_bytes().ct_eq(given).into();
        if equal && found.is_none() {
            found = Some(s);
        }
    }
    found
}

/// Base32 (RFC 4648, no padding), as authenticator apps take secrets.
pub fn encode_secret(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// A base32 secret as written in the users file (upper case, spaces and
/// padding tolerated, as apps show them).
pub fn decode_secret(text: &str) -> Result<Vec<u8>, String> {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let bytes = data_encoding::BASE32_NOPAD
        .decode(clean.as_bytes())
        .map_err(|_| "not base32 (RFC 4648: A-Z and 2-7)".to_owned())?;
    // RFC 4226 section 4 asks for at least 128 bits.
    if bytes.len() < 16 {
        return Err(format!(
            "{} bytes; a TOTP secret has at least 16 (RFC 4226)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// The provisioning URI authenticator apps scan (Key Uri Format):
/// SHA-1, 6 digits and 30 s are the defaults, so they are left out.
pub fn provisioning_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    format!(
        "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}",
        encode_secret(secret)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B: the SHA-1 rows, with the 8-digit codes the
    /// RFC lists (its seed is the ASCII "12345678901234567890").
    #[test]
    fn rfc_6238_appendix_b_sha1_vectors() {
        let seed = b"12345678901234567890";
        for (t, expected) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(hotp(seed, step(t), 8), expected, "T = {t}");
            // The 6-digit code is the low six digits of the same number.
            assert_eq!(code(seed, step(t)), format!("{:06}", expected % 1_000_000));
        }
    }

    /// RFC 4226 appendix D: HOTP counters 0 to 9.
    #[test]
    fn rfc_4226_appendix_d_hotp_vectors() {
        let seed = b"12345678901234567890";
        let expected = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (c, e) in expected.iter().enumerate() {
            assert_eq!(hotp(seed, c as u64, 6), *e, "counter {c}");
        }
    }

    #[test]
    fn a_code_matches_one_step_either_way_and_no_further() {
        let seed = b"12345678901234567890";
        let now = step(1_234_567_890);
        for s in [now - 1, now, now + 1] {
            assert_eq!(matching_step(seed, &code(seed, s), now), Some(s));
        }
        assert_eq!(matching_step(seed, &code(seed, now - 2), now), None);
        assert_eq!(matching_step(seed, &code(seed, now + 2), now), None);
        assert_eq!(matching_step(seed, "", now), None);
        assert_eq!(matching_step(seed, "12345", now), None);
        let c = code(seed, now);
        assert_eq!(matching_step(seed, &format!("{c}0"), now), None);
    }

    #[test]
    fn secrets_round_trip_through_base32() {
        let s = b"12345678901234567890";
        let text = encode_secret(s);
        assert_eq!(text, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(decode_secret(&text).expect("decodes"), s);
        assert_eq!(
            decode_secret("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").expect("decodes"),
            s
        );
        assert!(decode_secret("GEZDGNBV").is_err(), "too short");
        assert!(decode_secret("not base32!").is_err());
        assert_eq!(
            provisioning_uri("Switchyard", "alice", s),
            "otpauth://totp/Switchyard:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Switchyard"
        );
    }
}
