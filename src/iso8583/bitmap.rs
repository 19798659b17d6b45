//! The presence bitmap: bit 1 (the most significant bit of the first byte)
//! says a secondary bitmap follows; bits 2..=128 say which fields are present.

use super::ebcdic::FROM_EBCDIC;
use super::encoding::{hex_digit, hex_value};
use super::spec::BitmapEncoding;

/// Fields 1..=128, field `n` at bit `128 - n` of a `u128`, so the primary
/// bitmap is the high 64 bits exactly as it is on the wire.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Bitmap(u128);

impl Bitmap {
    pub const EMPTY: Bitmap = Bitmap(0);

    #[inline]
    const fn bit(n: usize) -> u128 {
        1u128 << (128 - n)
    }

    #[inline]
    pub fn is_set(self, n: usize) -> bool {
        (1..=128).contains(&n) && self.0 & Self::bit(n) != 0
    }

    #[inline]
    pub fn set(&mut self, n: usize) {
        if (1..=128).contains(&n) {
            self.0 |= Self::bit(n);
        }
    }

    #[inline]
    pub fn clear(&mut self, n: usize) {
        if (1..=128).contains(&n) {
            self.0 &= !Self::bit(n);
        }
    }

    /// True when any of fields 65..=128 is present.
    #[inline]
    pub fn needs_secondary(self) -> bool {
        self.0 as u64 != 0
    }

    pub fn primary(self) -> u64 {
        (self.0 >> 64) as u64
    }

    pub fn secondary(self) -> u64 {
        self.0 as u64
    }

    pub fn from_parts(primary: u64, secondary: u64) -> Bitmap {
        Bitmap((primary as u128) << 64 | secondary as u128)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Present data elements (2..=128) in ascending order.
    pub fn fields(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0 & !Self::bit(1);
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let lz = bits.leading_zeros() as usize;
            bits &= !(1u128 << (127 - lz));
            Some(lz + 1)
        })
    }
}

impl std::fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitmap({:016X}", self.primary())?;
        if self.is_set(1) {
            write!(f, " {:016X}", self.secondary())?;
        }
        f.write_str(")")
    }
}

/// Reads one 64-bit bitmap; `None` if the hex is not hex. `buf` holds
/// exactly `enc.width()` bytes.
#[inline]
pub(crate) fn read(enc: BitmapEncoding, buf: &[u8]) -> Option<u64> {
    match enc {
        BitmapEncoding::Binary => Some(u64::from_be_bytes(buf.try_into().ok()?)),
        BitmapEncoding::Hex => {
            let mut v = 0u64;
            for &c in buf {
                v = v << 4 | hex_value(c)? as u64;
            }
            Some(v)
        }
        BitmapEncoding::EbcdicHex => {
            let mut v = 0u64;
            for &c in buf {
                v = v << 4 | hex_value(FROM_EBCDIC[c as usize])? as u64;
            }
            Some(v)
        }
    }
}

/// Writes one 64-bit bitmap into `out`, which is exactly `enc.width()` long.
#[inline]
pub(crate) fn write(enc: BitmapEncoding, value: u64, out: &mut [u8]) {
    match enc {
        BitmapEncoding::Binary => out.copy_from_slice(&value.to_be_bytes()),
        BitmapEncoding::Hex | BitmapEncoding::EbcdicHex => {
            for (i, slot) in out.iter_mut().enumerate() {
                let c = hex_digit((value >> (60 - 4 * i)) as u8);
                *slot = if enc == BitmapEncoding::Hex {
                    c
                } else {
                    super::ebcdic::TO_EBCDIC[c as usize]
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_numbers_map_to_wire_bits() {
        let mut b = Bitmap::EMPTY;
        for n in [2, 3, 4, 11, 41, 64] {
            b.set(n);
        }
        assert_eq!(b.primary(), 0x7020_0000_0080_0001);
        assert!(!b.needs_secondary());
        b.set(70);
        assert!(b.needs_secondary());
        assert_eq!(b.secondary(), 0x0400_0000_0000_0000);
        assert_eq!(b.fields().collect::<Vec<_>>(), [2, 3, 4, 11, 41, 64, 70]);
        b.set(1);
        assert_eq!(b.fields().count(), 7, "field 1 is never a data element");
        assert!(!b.is_set(0) && !b.is_set(129));
    }

    #[test]
    fn hex_and_binary_encodings_round_trip() {
        for enc in [
            BitmapEncoding::Binary,
            BitmapEncoding::Hex,
            BitmapEncoding::EbcdicHex,
        ] {
            let mut out = vec![0u8; enc.width()];
            write(enc, 0xF23C_4481_2AE1_8002, &mut out);
            assert_eq!(read(enc, &out), Some(0xF23C_4481_2AE1_8002), "{enc:?}");
        }
        let mut out = [0u8; 16];
        write(BitmapEncoding::Hex, 0x7020_0000_0080_0001, &mut out);
        assert_eq!(&out, b"7020000000800001");
        assert_eq!(read(BitmapEncoding::Hex, b"702000000080000g"), None);
        assert_eq!(
            read(BitmapEncoding::Hex, b"7020000000800001"),
            Some(0x7020_0000_0080_0001)
        );
        assert_eq!(
            read(BitmapEncoding::Hex, b"f020000000800001"),
            Some(0xF020_0000_0080_0001)
        );
    }
}
