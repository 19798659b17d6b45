//! A test-only peer for interoperability tests (see `tests/interop/`): our
//! codec behind a JSON-lines protocol, one request per stdin line, one
//! answer per stdout line.
//!
//! ```text
//! {"op":"decode","spec":"iso87ascii","hex":"0200..."}
//!   -> {"ok":true,"mti":"0200","fields":{"2":"3437...", "52":"DEADBEEF..."}}
//! {"op":"encode","spec":"iso87binary","mti":"0200","fields":{"2":"3437..."}}
//!   -> {"ok":true,"hex":"0200..."}
//! anything that fails
//!   -> {"ok":false,"error":"..."}            (plus "panic":true if the codec panicked)
//! ```
//!
//! `spec` is a built-in name (`iso87ascii`, `iso87binary`) or the path of a
//! TOML spec file (loaded once and cached). Frames are hex, without any
//! length header. Field values, in both directions, are the uppercase hex
//! of the field's *logical* value as the codec's accessors give it
//! ([`FieldValue::write_logical`] on decode, [`MessageBuilder::set`] on
//! encode): the text for `n`/`an`/`ans`/`z`/`x+n` fields (so `"000123"` is
//! `"303030313233"`, whatever the wire encoding: ASCII, BCD, EBCDIC) and
//! the raw bytes for `b` fields (whether the wire carries them raw or as
//! hex characters). Nothing is masked: this is a test tool, never run it
//! on production traffic.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use switchyard::hex::parse_hex;
use switchyard::iso8583::{FieldValue, Message, MessageBuilder, Mti, Spec, specs};

fn main() {
    // Panics are reported as answers; keep the default hook's stderr noise
    // out of the way of the caller's output.
    std::panic::set_hook(Box::new(|_| {}));
    let mut specs_cache: HashMap<String, &'static Spec> = HashMap::new();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let answer = match catch_unwind(AssertUnwindSafe(|| handle(&line, &mut specs_cache))) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => json!({"ok": false, "error": e}),
            Err(p) => {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                json!({"ok": false, "panic": true, "error": format!("panic: {what}")})
            }
        };
        if writeln!(out, "{answer}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
}

fn handle(line: &str, cache: &mut HashMap<String, &'static Spec>) -> Result<Value, String> {
    let req: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let op = req
        .get("op")
        .and_then(Value::as_str)
        .ok_or("missing \"op\"")?;
    let spec_name = req
        .get("spec")
        .and_then(Value::as_str)
        .ok_or("missing \"spec\"")?;
    let spec = match cache.get(spec_name) {
        Some(s) => *s,
        None => {
            let s = specs::resolve(spec_name).map_err(|e| e.to_string())?;
            cache.insert(spec_name.to_owned(), s);
            s
        }
    };
    match op {
        "decode" => decode(&req, spec),
        "encode" => encode(&req, spec),
        other => Err(format!("unknown op {other:?} (decode, encode)")),
    }
}

fn decode(req: &Value, spec: &'static Spec) -> Result<Value, String> {
    let hex = req
        .get("hex")
        .and_then(Value::as_str)
        .ok_or("missing \"hex\"")?;
    let frame = parse_hex(hex)?;
    let msg = Message::parse(Bytes::from(frame), spec).map_err(|e| e.to_string())?;
    let mut fields = Map::new();
    for (n, v) in msg.fields() {
        fields.insert(n.to_string(), Value::String(to_hex(&logical(&v))));
    }
    Ok(json!({"ok": true, "mti": msg.mti().to_string(), "fields": fields}))
}

fn encode(req: &Value, spec: &'static Spec) -> Result<Value, String> {
    let mti = req
        .get("mti")
        .and_then(Value::as_str)
        .ok_or("missing \"mti\"")?;
    let mti = Mti::from_ascii(mti.as_bytes()).ok_or_else(|| format!("bad MTI {mti:?}"))?;
    let given = req
        .get("fields")
        .and_then(Value::as_object)
        .ok_or("missing \"fields\" object")?;
    let mut values: Vec<(usize, Vec<u8>)> = Vec::with_capacity(given.len());
    for (k, v) in given {
        let n: usize = k.parse().map_err(|_| format!("bad field number {k:?}"))?;
        let hex = v
            .as_str()
            .ok_or_else(|| format!("field {k}: value must be a hex string"))?;
        values.push((n, parse_hex(hex).map_err(|e| format!("field {k}: {e}"))?));
    }
    let mut b = MessageBuilder::new(spec, mti);
    for (n, v) in &values {
        b.set(*n, v);
    }
    let out = b.to_bytes().map_err(|e| e.to_string())?;
    Ok(json!({"ok": true, "hex": to_hex(&out)}))
}

fn logical(v: &FieldValue<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.logical_len());
    v.write_logical(&mut out);
    out
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0x0F) as usize] as char);
    }
    s
}
