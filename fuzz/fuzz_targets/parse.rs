//! Feeds arbitrary bytes to the parser of every built-in spec. Whatever
//! parses must also print (masked) and re-pack to the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard::iso8583::{Message, MessageBuilder, specs};

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    for spec in [specs::iso87ascii(), specs::iso87binary()] {
        match Message::parse_or_salvage(frame.clone(), spec) {
            Ok(m) => {
                let _ = format!("{m:?}{}", m.dump());
                let mut b = MessageBuilder::new(spec, m.mti());
                b.copy_all(&m);
                let packed = b.to_bytes().expect("a parsed message re-packs");
                // Hex case and pad nibbles may differ, the logical values may not.
                let again = Message::parse(packed.freeze(), spec).expect("re-packed parses");
                assert!(again == m, "re-pack changed the message");
            }
            Err(s) => {
                let _ = s.error.to_string();
            }
        }
    }
});
