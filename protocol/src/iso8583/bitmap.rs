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
        // Two 64-bit shifts: a variable 128-bit shift costs several
        // instructions and a branch on x86-64.
        if n <= 64 {
            ((1u64 << (64 - n)) as u128) << 64
        } else {
            (1u64 << (128 - n)) as u128
        }
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

    /// The fields of this bitmap numbered below `n` (bit 1 kept).
    #[inline]
    pub fn below(self, n: usize) -> Bitmap {
        if n > 128 {
            return self;
        }
        // Fields 1..n are the high n-1 bits.
        let keep = if n <= 1 { 0 } else { !0u128 << (129 - n) };
        Bitmap(self.0 & keep)
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
    #[inline]
    pub fn fields(self) -> Fields {
        Fields {
            // Reversed so the lowest field is the lowest bit: clearing it is
            // then `x & (x - 1)`, far cheaper than 128-bit shifts.
            high: (self.primary() & !(1 << 63)).reverse_bits(),
            low: self.secondary().reverse_bits(),
        }
    }
}

/// Iterator over the fields of a [`Bitmap`].
pub struct Fields {
    high: u64,
    low: u64,
}

impl Iterator for Fields {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.high != 0 {
            let n = self.high.trailing_zeros() as usize + 1;
            self.high &= self.high - 1;
            Some(n)
        } else if self.low != 0 {
            let n = self.low.trailing_zeros() as usize + 65;
            self.low &= self.low - 1;
            Some(n)
        } else {
            None
        }
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

/// Hex digit values; 0xFF for anything else.
const HEX: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'A' as usize + i] = 10 + i as u8;
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Reads one 64-bit bitmap; `None` if the hex is not hex. `buf` holds
/// exactly `enc.width()` bytes.
#[inline]
pub(crate) fn read(enc: BitmapEncoding, buf: &[u8]) -> Option<u64> {
    match enc {
        BitmapEncoding::Binary => Some(u64::from_be_bytes(buf.try_into().ok()?)),
        BitmapEncoding::Hex => {
            let mut v = 0u64;
            let mut bad = 0u8;
            for &c in buf {
                let d = HEX[c as usize];
                bad |= d;
                v = v << 4 | (d & 0x0F) as u64;
            }
            // Invalid characters map to 0xFF; one test after the loop.
            (bad & 0xF0 == 0).then_some(v)
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
        assert_eq!(b.below(41).fields().collect::<Vec<_>>(), [2, 3, 4, 11]);
        assert!(b.below(41).is_set(1));
        assert_eq!(b.below(129), b);
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
