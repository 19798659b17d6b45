//! Feeds arbitrary bytes, in arbitrary chunks, to the frame decoder of
//! every length header: it must never panic nor yield a frame over the
//! maximum.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard::frame::{FrameCodec, LengthHeader};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = (chunk as usize % 64) + 1;
    for header in LengthHeader::ALL {
        let mut codec = FrameCodec::new(header, 1024);
        let mut buf = BytesMut::new();
        'feed: for piece in rest.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => assert!(frame.len() <= 1024),
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }
});
