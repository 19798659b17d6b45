//! Parses (or packs) a typical 0200 in a loop, for instruction counting:
//! `valgrind --tool=callgrind target/release/examples/codec_profile parse 100000`.
//! Instruction counts, unlike times, do not depend on what else the
//! machine is doing, so small codec changes can be compared reliably.

use std::hint::black_box;

use bytes::BytesMut;
use switchyard::iso8583::specs::iso87ascii;
use switchyard::iso8583::{Message, MessageBuilder, Mti, pack_response};

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "parse".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let mut b = MessageBuilder::new(iso87ascii(), Mti::FINANCIAL);
    b.set(2, b"4761739001010010")
        .set(3, b"000000")
        .set_number(4, 12_345)
        .set(7, b"0612143015")
        .set_number(11, 123_456)
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
    let frame = match b.to_bytes() {
        Ok(f) => f.freeze(),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let mut sum = 0u64;
    match what.as_str() {
        "parse" => {
            for _ in 0..n {
                if let Ok(m) = Message::parse(black_box(frame.clone()), iso87ascii()) {
                    sum += m.stan().unwrap_or(0) as u64;
                }
            }
        }
        "pack" => {
            let Ok(req) = Message::parse(frame.clone(), iso87ascii()) else {
                return;
            };
            let mut out = BytesMut::with_capacity(512);
            let echo = [2, 3, 4, 7, 11, 12, 13, 37, 41, 42, 49];
            for _ in 0..n {
                out.clear();
                let _ = pack_response(
                    black_box(&req),
                    &echo,
                    &[(38, b"A1B2C3"), (39, b"00")],
                    &mut out,
                );
                sum += out.len() as u64;
            }
        }
        other => {
            eprintln!("usage: codec_profile parse|pack [N] (not `{other}`)");
            std::process::exit(2);
        }
    }
    println!("{sum}");
}
