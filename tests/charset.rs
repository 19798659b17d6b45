//! Fields carrying bytes their type does not allow (issue 10 item B): an
//! outside tester's DE41 with 0xC1, DE42 with a NUL, DE37 with 0xB5 and
//! DE49 with 0x07 were approved and forwarded. Each is a format error (30)
//! now, and nothing reaches the acquirer.

mod common;

use common::*;
use switchyard::iso8583::Mti;

/// A 0200 in iso87ascii with the fields `auth` sets (DE 2, 3, 4, 7, 11,
/// 18, 37, 41, 42, 49), written out by hand so a byte of `field` can be
/// replaced with `byte`, which the builder would refuse.
fn request_with(stan: u32, field: usize, byte: u8) -> Vec<u8> {
    let fields = [2, 3, 4, 7, 11, 18, 37, 41, 42, 49];
    let mut bits = 0u64;
    for f in fields {
        bits |= 1 << (64 - f);
    }
    let mut body = format!("0200{bits:016X}").into_bytes();
    for f in fields {
        let value: Vec<u8> = match f {
            2 => format!("16{PAN}").into_bytes(),
            3 => b"000000".to_vec(),
            4 => b"000000000100".to_vec(),
            7 => b"1125101010".to_vec(),
            11 => format!("{stan:06}").into_bytes(),
            18 => b"5411".to_vec(),
            37 => format!("{:012}", 500_000_000_000u64 + stan as u64).into_bytes(),
            41 => TID.as_bytes().to_vec(),
            42 => b"MERCHANT0000001".to_vec(),
            49 => b"840".to_vec(),
            _ => unreachable!(),
        };
        let mut value = value;
        if f == field {
            // The last byte: past the first 8 of DE42, so the wide check
            // must find it in the tail as well as in a full word.
            let last = value.len() - 1;
            value[last] = byte;
        }
        body.extend_from_slice(&value);
    }
    body
}

/// The 0200s the simulator received (sign-on and echoes left out).
fn financial(sim: &switchyard::tools::sim::SimHandle) -> Vec<switchyard::tools::sim::Received> {
    sim.received()
        .into_iter()
        .filter(|r| r.mti == Mti::FINANCIAL)
        .collect()
}

#[tokio::test]
async fn fields_with_bytes_outside_their_charset_get_30_and_are_not_forwarded() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;

    // The hand-written frame is a good request when no byte is bad.
    let a = t.request(&request_with(40, 0, 0)).await;
    assert_eq!(code(&a), "00", "the unaltered request is approved");
    assert_eq!(financial(&sim).len(), 1, "and forwarded");
    sim.clear_received();

    let cases = [
        ("DE41 with 0xC1", 41, 0xC1),
        ("DE42 with a NUL", 42, 0x00),
        ("DE37 with 0xB5", 37, 0xB5),
        ("DE49 with 0x07", 49, 0x07),
        ("DE41 with DEL", 41, 0x7F),
        ("DE37 (an) with '-'", 37, b'-'),
        ("DE2 (n) with 'A'", 2, b'A'),
    ];
    for (i, (what, field, byte)) in cases.into_iter().enumerate() {
        let stan = 41 + i as u32;
        let a = t.request(&request_with(stan, field, byte)).await;
        assert_eq!(a.mti(), Mti::FINANCIAL_RESPONSE, "{what}");
        assert_eq!(code(&a), "30", "{what}");
        assert_eq!(a.stan(), Some(stan), "{what}: STAN echoed");
        // The answer parsed (the terminal client uses the same codec), and
        // it does not carry the bad field back.
        assert!(!a.has(field), "{what}: bad field echoed");
    }

    // The link still carries traffic, and none of the bad requests went
    // up before this good one (the simulator records in arrival order).
    let a = t.request(&request_with(60, 0, 0)).await;
    assert_eq!(code(&a), "00");
    let got = financial(&sim);
    assert_eq!(got.len(), 1, "only the good request reached the acquirer");
    assert_eq!(got[0].stan, 60);
    switch.shutdown().await;
}
