//! Parses (or packs) a typical 0200 in a loop, for instruction counting:
//! `valgrind --tool=callgrind target/release/examples/codec_profile parse 100000`.
//! Instruction counts, unlike times, do not depend on what else the
//! machine is doing, so small codec changes can be compared reliably.

use std::hint::black_box;

use bytes::BytesMut;
use switchyard::iso8583::specs::iso87ascii;
use switchyard::iso8583::{Message, pack_response, samples};

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "parse".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let frame = match samples::typical_0200(iso87ascii()) {
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
