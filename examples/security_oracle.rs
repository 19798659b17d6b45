//! The Switchyard side of the psec oracle test
//! (`tests/interop/psec_oracle.py`): JSON requests in, one per line on
//! stdin; one JSON answer per line on stdout, in order. It makes and checks
//! MACs, PIN blocks, KCVs and key blocks with `switchyard::security`, so
//! that an independent implementation (psec, and Python's `cryptography`)
//! can check them and be checked.
//!
//! A test tool: its keys are the test's random ones, and it prints what it
//! is asked for (MACs, encrypted PIN blocks, key blocks); it never prints a
//! PIN. It is not part of the switch.

use std::io::{BufRead, Write};

use serde_json::{Value, json};

use switchyard::hex::parse_hex;
use switchyard::security::keyblock::{self, Header};
use switchyard::security::pinblock::{self, EncryptedPinBlock, Pin, PinFormat};
use switchyard::security::{Algorithm, SecretKey, mac, random};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn field<'a>(req: &'a Value, name: &str) -> Result<&'a str, String> {
    req.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string field {name:?}"))
}

fn bytes(req: &Value, name: &str) -> Result<Vec<u8>, String> {
    parse_hex(field(req, name)?).map_err(|e| format!("{name}: {e}"))
}

fn algorithm(req: &Value, name: &str) -> Result<Algorithm, String> {
    match field(req, name)? {
        "tdes" => Ok(Algorithm::Tdes),
        "aes" => Ok(Algorithm::Aes),
        other => Err(format!("{name}: unknown algorithm {other:?}")),
    }
}

fn key(req: &Value, name: &str, alg: &str) -> Result<SecretKey, String> {
    SecretKey::new(algorithm(req, alg)?, &bytes(req, name)?).map_err(|e| e.to_string())
}

fn padding(req: &Value) -> Result<mac::Padding, String> {
    match req.get("padding").and_then(Value::as_u64) {
        Some(1) => Ok(mac::Padding::Method1),
        Some(2) => Ok(mac::Padding::Method2),
        _ => Err("padding must be 1 or 2".into()),
    }
}

fn pin_format(req: &Value, name: &str) -> Result<PinFormat, String> {
    match req.get(name).and_then(Value::as_u64) {
        Some(0) => Ok(PinFormat::Iso0),
        Some(4) => Ok(PinFormat::Iso4),
        _ => Err(format!("{name} must be 0 or 4")),
    }
}

fn block_of(req: &Value) -> Result<EncryptedPinBlock, String> {
    let b = bytes(req, "block")?;
    let format = if b.len() == 8 {
        PinFormat::Iso0
    } else {
        PinFormat::Iso4
    };
    EncryptedPinBlock::from_bytes(format, &b).map_err(|e| e.to_string())
}

fn fill() -> Result<[u8; 8], String> {
    let mut r = [0u8; 8];
    random::fill(&mut r).map_err(|e| e.to_string())?;
    Ok(r)
}

fn make_mac(req: &Value) -> Result<Vec<u8>, String> {
    let data = bytes(req, "data")?;
    let k = key(req, "key", "key_alg")?;
    match field(req, "alg")? {
        "retail" => mac::retail_mac(&k, &data, padding(req)?).map(|m| m.to_vec()),
        "tdes_cbc" => mac::tdes_cbc_mac(&k, &data, padding(req)?).map(|m| m.to_vec()),
        "cmac" => mac::cmac(&k, &data).map(|m| m.to_vec()),
        other => return Err(format!("unknown MAC {other:?}")),
    }
    .map_err(|e| e.to_string())
}

fn verify_mac(req: &Value) -> Result<Value, String> {
    let data = bytes(req, "data")?;
    let k = key(req, "key", "key_alg")?;
    let m = bytes(req, "mac")?;
    let r = match field(req, "alg")? {
        "retail" => mac::verify_retail_mac(&k, &data, padding(req)?, &m),
        "tdes_cbc" => mac::verify_tdes_cbc_mac(&k, &data, padding(req)?, &m),
        "cmac" => mac::verify_cmac(&k, &data, &m),
        other => return Err(format!("unknown MAC {other:?}")),
    };
    Ok(match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    })
}

fn answer(req: &Value) -> Result<Value, String> {
    match field(req, "op")? {
        "mac" => Ok(json!({"mac": hex(&make_mac(req)?)})),
        "verify_mac" => verify_mac(req),
        "kcv" => Ok(json!({"kcv": key(req, "key", "key_alg")?.kcv().to_string()})),
        "encrypt_pin" => {
            let pin = Pin::new(field(req, "pin")?).map_err(|e| e.to_string())?;
            let k = key(req, "key", "key_alg")?;
            let b = pinblock::encrypt(
                &k,
                pin_format(req, "format")?,
                &pin,
                field(req, "pan")?,
                &fill()?,
            )
            .map_err(|e| e.to_string())?;
            Ok(json!({"block": hex(b.as_bytes())}))
        }
        "translate" => {
            let from = key(req, "from_key", "from_alg")?;
            let to = key(req, "to_key", "to_alg")?;
            let out = pinblock::translate(
                &block_of(req)?,
                &from,
                &to,
                pin_format(req, "to_format")?,
                field(req, "pan")?,
                &fill()?,
            );
            Ok(match out {
                Ok(b) => json!({"block": hex(b.as_bytes())}),
                Err(e) => json!({"error": e.to_string()}),
            })
        }
        "check_pin" => {
            let k = key(req, "key", "key_alg")?;
            Ok(
                match pinblock::decrypt(&k, &block_of(req)?, field(req, "pan")?) {
                    Ok(pin) => json!({"ok": pin.matches(field(req, "pin")?)}),
                    Err(e) => json!({"ok": false, "error": e.to_string()}),
                },
            )
        }
        "wrap" => {
            let kbpk = SecretKey::aes(&bytes(req, "kbpk")?).map_err(|e| e.to_string())?;
            let k = key(req, "key", "key_alg")?;
            let usage = field(req, "usage")?.as_bytes();
            let mode = field(req, "mode")?.as_bytes();
            if usage.len() != 2 || mode.len() != 1 {
                return Err("usage is 2 characters, mode 1".into());
            }
            let header = Header {
                usage: [usage[0], usage[1]],
                algorithm: k.algorithm(),
                mode: mode[0],
                version: *b"00",
                exportability: b'E',
                blocks: vec![("LB".into(), field(req, "name")?.to_owned())],
            };
            let mut pad = [0u8; 32];
            random::fill(&mut pad).map_err(|e| e.to_string())?;
            let block = keyblock::wrap(&kbpk, &header, &k, &pad).map_err(|e| e.to_string())?;
            Ok(json!({"block": block}))
        }
        "unwrap" => {
            let kbpk = SecretKey::aes(&bytes(req, "kbpk")?).map_err(|e| e.to_string())?;
            Ok(match keyblock::unwrap(&kbpk, field(req, "block")?) {
                Ok((h, k)) => json!({
                    "key": hex(k.expose_secret()),
                    "usage": String::from_utf8_lossy(&h.usage),
                    "algorithm": k.algorithm().to_string(),
                }),
                Err(e) => json!({"error": e.to_string()}),
            })
        }
        other => Err(format!("unknown op {other:?}")),
    }
}

fn main() {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(req) => answer(&req).unwrap_or_else(|e| json!({"request_error": e})),
            Err(e) => json!({"request_error": e.to_string()}),
        };
        if writeln!(out, "{reply}").is_err() {
            break;
        }
    }
    let _ = out.flush();
}
