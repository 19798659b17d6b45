//! Sample messages shared by the benchmarks, the allocation test and the
//! profiling example, so that all of them measure the same bytes.

use bytes::BytesMut;

use super::{MessageBuilder, Mti, PackError, Spec};

pub const TYPICAL_PAN: &[u8] = b"4761739001010010";
pub const TYPICAL_STAN: u32 = 123_456;
pub const TYPICAL_AMOUNT: u64 = 12_345;

/// A typical card-present purchase: DE 2, 3, 4, 7, 11, 12, 13, 14, 18,
/// 22, 25, 37, 41, 42, 43, 49 (173 bytes in iso87ascii).
pub fn typical_0200(spec: &'static Spec) -> Result<BytesMut, PackError> {
    typical_0200_for(spec, TYPICAL_PAN, TYPICAL_STAN as u64)
}

/// The typical purchase for another card and STAN.
pub fn typical_0200_for(spec: &'static Spec, pan: &[u8], stan: u64) -> Result<BytesMut, PackError> {
    let mut b = MessageBuilder::new(spec, Mti::FINANCIAL);
    b.set(2, pan)
        .set(3, b"000000")
        .set_number(4, TYPICAL_AMOUNT)
        .set(7, b"0612143015")
        .set_number(11, stan)
        .set(12, b"143015")
        .set(13, b"0612")
        .set(14, b"2712")
        .set(18, b"5411")
        .set(22, b"051")
        .set(25, b"00")
        .set(37, b"416314123456")
        .set(41, b"TERM0001")
        .set(42, b"MERCHANT0000001")
        .set(43, b"ACME GROCERY #42       SPRINGFIELD  ILUS")
        .set(49, b"840");
    b.to_bytes()
}
