//! `switchyard decode`: hex in, a masked field listing out.

use std::io::{BufRead, Write};

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::frame::{FrameCodec, LengthHeader};
use crate::hex::parse_hex;
use crate::iso8583::{Message, Spec};

/// Decodes one hex message (optionally with a length header) and writes
/// the masked dump. Returns false if it could not be decoded.
pub fn decode_one(
    hex: &str,
    spec: &'static Spec,
    framing: Option<LengthHeader>,
    out: &mut impl Write,
) -> std::io::Result<bool> {
    let bytes = match parse_hex(hex) {
        Ok(b) => b,
        Err(e) => {
            writeln!(out, "error: {e}")?;
            return Ok(false);
        }
    };
    let body = match framing {
        None => Bytes::from(bytes),
        Some(h) => {
            let mut codec = FrameCodec::new(h, h.limit());
            let mut buf = BytesMut::from(&bytes[..]);
            match codec.decode_eof(&mut buf) {
                Ok(Some(body)) if buf.is_empty() => body,
                Ok(Some(_)) => {
                    writeln!(out, "error: {} bytes after the frame", buf.len())?;
                    return Ok(false);
                }
                Ok(None) => {
                    writeln!(out, "error: empty input")?;
                    return Ok(false);
                }
                Err(e) => {
                    writeln!(out, "error: {e}")?;
                    return Ok(false);
                }
            }
        }
    };
    match Message::parse(body, spec) {
        Ok(m) => {
            write!(out, "{}", m.dump())?;
            Ok(true)
        }
        Err(e) => {
            writeln!(out, "error: {e}")?;
            Ok(false)
        }
    }
}

/// Decodes each non-empty, non-comment (`#`) line. Returns how many failed.
pub fn decode_lines(
    input: impl BufRead,
    spec: &'static Spec,
    framing: Option<LengthHeader>,
    out: &mut impl Write,
) -> std::io::Result<usize> {
    let mut failed = 0;
    let mut first = true;
    for line in input.lines() {
        let line = line?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if !first {
            writeln!(out)?;
        }
        first = false;
        if !decode_one(t, spec, framing, out)? {
            failed += 1;
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::specs::iso87ascii;

    #[test]
    fn decodes_framed_and_unframed_lines() {
        let msg = b"0800822000000000000004000000000000001125123456000001301";
        let hex: String = msg.iter().map(|b| format!("{b:02x}")).collect();
        let framed = format!("{:04x}{hex}", msg.len());
        let input = format!("# echo\n{hex}\n\n{framed}\nzz\n");
        let mut out = Vec::new();
        let failed = decode_lines(input.as_bytes(), iso87ascii(), None, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(failed, 2, "{text}");
        assert!(text.contains("MTI   0800"), "{text}");
        assert!(
            text.contains("Network management information code"),
            "{text}"
        );

        let mut out = Vec::new();
        let ok = decode_one(&framed, iso87ascii(), Some(LengthHeader::Binary2), &mut out).unwrap();
        assert!(ok, "{}", String::from_utf8_lossy(&out));
    }
}
