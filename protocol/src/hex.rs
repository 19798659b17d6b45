//! Hex text to bytes: for keys and card hashes in the config, and for
//! messages given to `switchyard decode` and the interoperability peer.

/// Reads hex into bytes, ignoring whitespace and an optional `0x`.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let digits: Vec<u8> = t.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    digits
        .chunks_exact(2)
        .enumerate()
        .map(|(i, p)| {
            let hi = (p[0] as char).to_digit(16);
            let lo = (p[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
                _ => Err(format!("not hex at digit {}", 2 * i)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parsing() {
        assert_eq!(parse_hex("0x30 31\n"), Ok(vec![0x30, 0x31]));
        assert!(parse_hex("303").unwrap_err().contains("odd"));
        assert!(parse_hex("3g").unwrap_err().contains("not hex"));
    }
}
