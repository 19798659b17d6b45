//! The link core with a network HSM, in virtual time: the zone's MAC on a
//! request and the check of an answer's come out of `poll_hsm`; the test
//! plays the HSM with a soft one holding the ZAK (or does not answer).

use std::sync::Arc;

use super::*;
use crate::iso8583::mac_field::MacBytes;
use crate::security::hsm::HsmError;
use crate::security::hsm::payshield::{KeyBlocks, PayShieldConfig};
use crate::security::hsm::soft::{SoftHsm, full_mac};
use crate::security::hsm::{HsmCommand, MacAlgorithm};
use crate::security::keys::{Algorithm, SecretKey};
use crate::security::lmk::Lmk;
use crate::security::store::KeyType;
use crate::switch::card_security::effects::{HsmCall, HsmDone, HsmWork};
use crate::switch::card_security::{AcquirerSecurity, Hsm, NetworkHsm};

const ZAK: &str = "4C4C4C4C4C4C4C4C5D5D5D5D5D5D5D5D";
const TIMEOUT: Duration = Duration::from_millis(300);

fn zak() -> SecretKey {
    SecretKey::from_hex(Algorithm::Tdes, ZAK).expect("key")
}

/// A network HSM that is never reached (the tests answer its calls),
/// with commands timing out after [`TIMEOUT`].
fn network_hsm() -> NetworkHsm {
    NetworkHsm::new(
        PayShieldConfig {
            timeout: TIMEOUT,
            ..PayShieldConfig::default()
        },
        Arc::new(KeyBlocks::default()),
    )
}

/// A link whose zone MACs under `acq.zak` through a network HSM, up; the
/// soft HSM that plays it.
fn network_core() -> (Core, Now, SoftHsm) {
    let hsm = network_hsm();
    let s = settings_with(|a| {
        a.security = AcquirerSecurity {
            mac: Some((MacAlgorithm::Retail, "acq.zak".into())),
            hsm: Some(Hsm::Network(Arc::new(hsm))),
            ..AcquirerSecurity::default()
        };
    });
    let c = |b: u8| SecretKey::new(Algorithm::Aes, &[b; 32]).expect("component");
    let lmk = Lmk::from_components(&[c(1), c(2)]).expect("lmk");
    let soft = SoftHsm::from_keys(lmk, [("acq.zak".to_owned(), KeyType::Zak, zak())]);
    let (core, now) = up_core(s);
    (core, now, soft)
}

fn commands(c: &mut Core) -> Vec<(u64, HsmCommand)> {
    std::iter::from_fn(|| c.poll_hsm())
        .map(|HsmCall { id, work }| match work {
            HsmWork::Command(cmd) => (id, cmd),
            other => panic!("not a command: {other:?}"),
        })
        .collect()
}

fn answer(c: &mut Core, soft: &SoftHsm, now: Now, (id, command): &(u64, HsmCommand)) {
    c.handle_hsm_reply(now, *id, HsmDone::Reply(soft.execute(command)));
}

fn mac_holds(m: &Message) -> bool {
    let parts = m.mac_parts().expect("a MAC");
    crate::security::hsm::soft::verify_mac(&zak(), MacAlgorithm::Retail, parts.data, &parts.mac)
        .is_ok()
}

/// The host's answer to `req`, MACed under `key`.
fn maced_answer(req: &Message, key: &SecretKey) -> Bytes {
    let mut b = MessageBuilder::response_to(req, &[2, 3, 4, 7, 11, 37, 41, 49]).expect("0210");
    b.set(39, b"00");
    let mut out = bytes::BytesMut::new();
    b.pack_with_mac(&mut out, |data, len| {
        full_mac(key, MacAlgorithm::Retail, data)
            .map(|m| m.into_iter().take(len).collect::<MacBytes>())
            .map_err(|e| e.to_string())
    })
    .expect("packs");
    out.freeze()
}

#[test]
fn requests_wait_for_their_mac_each_on_its_own() {
    let (mut c, now, soft) = network_core();
    let (k1, b1) = request(1, 100);
    let (k2, b2) = request(2, 200);
    c.handle_forward(now, k1, b1, EchoSpans::UNKNOWN, 1);
    c.handle_forward(now, k2, b2, EchoSpans::UNKNOWN, 2);
    assert!(sent(&mut c).is_empty(), "nothing goes before its MAC");
    let calls = commands(&mut c);
    assert_eq!(calls.len(), 2);
    // The second's MAC comes first: it goes, the first still waits.
    answer(&mut c, &soft, now.plus(ms(5)), &calls[1]);
    let out = sent(&mut c);
    assert_eq!(out.iter().map(|m| m.stan()).collect::<Vec<_>>(), [Some(2)]);
    assert!(mac_holds(&out[0]), "MACed under the ZAK");
    answer(&mut c, &soft, now.plus(ms(6)), &calls[0]);
    let out = sent(&mut c);
    assert_eq!(out.iter().map(|m| m.stan()).collect::<Vec<_>>(), [Some(1)]);
    assert!(mac_holds(&out[0]));
    assert_eq!(c.in_flight(), 2);
}

#[test]
fn a_mac_not_made_in_time_fails_the_request_unsent() {
    let (mut c, now, _soft) = network_core();
    let (k, b) = request(1, 100);
    c.handle_forward(now, k, b, EchoSpans::UNKNOWN, 1);
    let calls = commands(&mut c);
    assert_eq!(c.poll_timeout(), Some(now.at + TIMEOUT));
    c.handle_timeout(now.plus(TIMEOUT));
    assert_eq!(replies(&mut c), [(1, Err(Failure::HsmUnavailable))]);
    assert!(sent(&mut c).is_empty(), "never sent");
    assert_eq!(c.in_flight(), 0);
    // Its MAC, late, finds nothing.
    let (id, _) = &calls[0];
    c.handle_hsm_reply(
        now.plus(ms(400)),
        *id,
        HsmDone::Reply(Err(HsmError::MacMismatch)),
    );
    assert!(replies(&mut c).is_empty() && sent(&mut c).is_empty());
}

#[test]
fn answers_wait_for_their_mac_check_and_one_not_checked_in_time_is_unverified() {
    let (mut c, now, soft) = network_core();
    let mut reqs = Vec::new();
    for stan in [1, 2] {
        let (k, b) = request(stan, 100);
        c.handle_forward(now, k, b, EchoSpans::UNKNOWN, stan);
        let calls = commands(&mut c);
        answer(&mut c, &soft, now, &calls[0]);
        reqs.push(sent(&mut c).pop().expect("sent"));
    }
    c.handle_frame(now.plus(ms(10)), maced_answer(&reqs[0], &zak()));
    c.handle_frame(now.plus(ms(10)), maced_answer(&reqs[1], &zak()));
    assert!(
        replies(&mut c).is_empty(),
        "not delivered before its MAC is checked"
    );
    let checks = commands(&mut c);
    assert_eq!(checks.len(), 2);
    assert!(
        checks
            .iter()
            .all(|(_, c)| matches!(c, HsmCommand::VerifyMac { .. }))
    );
    // The second's check comes; the first's never does.
    answer(&mut c, &soft, now.plus(ms(20)), &checks[1]);
    assert_eq!(replies(&mut c), [(2, Ok(*b"00"))]);
    c.handle_timeout(now.plus(ms(10) + TIMEOUT));
    assert_eq!(replies(&mut c), [(1, Err(Failure::AnswerUnverified))]);
    assert!(events(&mut c).iter().any(|e| matches!(
        e,
        LinkEvent::AnswerMacWrong {
            reason: "hsm_unavailable",
            ..
        }
    )));
}

#[test]
fn an_answer_the_hsm_finds_wrong_fails_its_request_as_in_line() {
    let (mut c, now, soft) = network_core();
    let (k, b) = request(1, 100);
    c.handle_forward(now, k, b, EchoSpans::UNKNOWN, 1);
    let calls = commands(&mut c);
    answer(&mut c, &soft, now, &calls[0]);
    let req = sent(&mut c).pop().expect("sent");
    let other =
        SecretKey::from_hex(Algorithm::Tdes, "0E0E0E0E0E0E0E0E0F0F0F0F0F0F0F0F").expect("key");
    c.handle_frame(now.plus(ms(10)), maced_answer(&req, &other));
    let checks = commands(&mut c);
    answer(&mut c, &soft, now.plus(ms(11)), &checks[0]);
    assert_eq!(replies(&mut c), [(1, Err(Failure::BadAnswerMac))]);
}

#[test]
fn a_link_that_goes_down_fails_the_requests_waiting_for_their_mac() {
    let (mut c, now, soft) = network_core();
    let (k, b) = request(1, 100);
    c.handle_forward(now, k, b, EchoSpans::UNKNOWN, 1);
    let calls = commands(&mut c);
    c.handle_closed(now.plus(ms(1)), "host closed");
    assert_eq!(replies(&mut c), [(1, Err(Failure::LinkDown))]);
    // The MAC that comes after finds nothing.
    answer(&mut c, &soft, now.plus(ms(2)), &calls[0]);
    assert!(replies(&mut c).is_empty() && sent(&mut c).is_empty());
}

/// The host's 0800 key change: `entries` in DE48.
fn key_change(
    stan: u64,
    entries: &[crate::switch::card_security::exchange::ExchangedKey],
) -> Bytes {
    let de48 = crate::switch::card_security::exchange::format(entries);
    let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::NETWORK);
    b.set(7, b"1125101010")
        .set_number(11, stan)
        .set(48, de48.as_bytes())
        .set(70, b"161");
    b.to_bytes().expect("packs").freeze()
}

#[test]
fn a_zone_key_change_imports_each_key_checks_its_kcv_and_answers_96_without_the_hsm() {
    use crate::security::hsm::HsmReply;
    use crate::switch::card_security::exchange::ExchangedKey;
    const ZMK: &str = "2C2C2C2C2C2C2C2C3D3D3D3D3D3D3D3D";
    let zmk = SecretKey::from_hex(Algorithm::Tdes, ZMK).expect("key");
    let hsm = network_hsm();
    let s = settings_with(|a| {
        a.security = AcquirerSecurity {
            mac: Some((MacAlgorithm::Retail, "acq.zak".into())),
            zmk: Some("acq.zmk".into()),
            key_overlap_ms: 5_000,
            hsm: Some(Hsm::Network(Arc::new(hsm))),
            ..AcquirerSecurity::default()
        };
    });
    let c2 = |b: u8| SecretKey::new(Algorithm::Aes, &[b; 32]).expect("component");
    let lmk = Lmk::from_components(&[c2(1), c2(2)]).expect("lmk");
    let soft = SoftHsm::from_keys(
        lmk,
        [
            ("acq.zak".to_owned(), KeyType::Zak, zak()),
            ("acq.zmk".to_owned(), KeyType::Zmk, zmk.clone()),
        ],
    );
    let (mut c, now) = up_core(s);
    let zak2 =
        SecretKey::from_hex(Algorithm::Tdes, "2222222222222222DDDDDDDDDDDDDDDD").expect("key");
    let header = crate::security::store::header_for(
        "x",
        KeyType::Zak,
        &zak2,
        &Lmk::from_components(&[c2(3), c2(4)]).expect("lmk"),
    );
    let under = crate::security::hsm::soft::export_under_kek(&zmk, &header, &zak2).expect("export");
    let entry = |kcv| ExchangedKey {
        tag: *b"ZAK",
        under: under.clone(),
        kcv,
    };

    // A right KCV: imported (A6 with the key's name), then installed.
    c.handle_frame(now, key_change(1, &[entry(zak2.kcv())]));
    let calls = commands(&mut c);
    assert_eq!(calls.len(), 1);
    assert!(
        matches!(&calls[0].1, HsmCommand::ImportKey { key_type: KeyType::Zak, zmk, label: Some(l), .. }
            if &**zmk == "acq.zmk" && &**l == "acq.zak"),
        "{:?}",
        calls[0].1
    );
    assert!(sent(&mut c).is_empty(), "no 0810 before the keys are in");
    answer(&mut c, &soft, now.plus(ms(5)), &calls[0]);
    let HsmCall { id, work } = c.poll_hsm().expect("the install");
    let HsmWork::InstallBlocks(install) = work else {
        panic!("not an install: {work:?}")
    };
    assert_eq!(install.blocks.len(), 1);
    assert_eq!(install.blocks[0].name, "acq.zak");
    assert_eq!(install.blocks[0].kcv, zak2.kcv());
    assert_eq!(install.overlap_ms, 5_000);
    c.handle_hsm_reply(now.plus(ms(6)), id, HsmDone::Installed(Ok(())));
    let out = sent(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response_code(), Some(*b"00"));

    // A KCV that is not the key's: 63, nothing installed.
    c.handle_frame(now.plus(ms(10)), key_change(2, &[entry(zmk.kcv())]));
    let calls = commands(&mut c);
    answer(&mut c, &soft, now.plus(ms(12)), &calls[0]);
    assert!(c.poll_hsm().is_none(), "no install");
    let out = sent(&mut c);
    assert_eq!(out[0].response_code(), Some(*b"63"));

    // The HSM does not answer: 96 at the deadline, its late answer dropped.
    let at = now.plus(ms(20));
    c.handle_frame(at, key_change(3, &[entry(zak2.kcv())]));
    let calls = commands(&mut c);
    assert_eq!(c.poll_timeout(), Some(at.at + TIMEOUT));
    c.handle_timeout(at.plus(TIMEOUT));
    let out = sent(&mut c);
    assert_eq!(out[0].response_code(), Some(*b"96"));
    c.handle_hsm_reply(
        at.plus(TIMEOUT + ms(1)),
        calls[0].0,
        HsmDone::Reply(Ok(HsmReply::Verified)),
    );
    assert!(c.poll_hsm().is_none() && sent(&mut c).is_empty());
}
