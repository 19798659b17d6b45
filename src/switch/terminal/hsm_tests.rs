//! The terminal core with a network HSM, in virtual time: its commands
//! come out of `poll_hsm`, the test plays the HSM (a soft HSM over the
//! same key store answers, or nothing does), and the core resumes each
//! request from `handle_hsm_reply` or gives it 96 at its deadline, while
//! the connection's other requests go on.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::iso8583::mac_field::MacBytes;
use crate::security::hsm::soft::{SoftHsm, full_mac};
use crate::security::hsm::{HsmCommand, HsmError, MacAlgorithm};
use crate::security::keys::{Algorithm, SecretKey};
use crate::security::lmk::Lmk;
use crate::security::pinblock::{self, Pin, PinFormat};
use crate::security::store::{KeyStore, KeyType};
use crate::switch::card_security::effects::{HsmCall, HsmDone, HsmWork};

const TPK: &str = "0123456789ABCDEFFEDCBA9876543210";
const TAK: &str = "89ABCDEF0123456776543210FEDCBA98";
const ZPK: &str = "1A1B1C1D1E1F2A2B2C2D2E2F3A3B3C3D";
const TIMEOUT: Duration = Duration::from_millis(500);

fn tdes(hex: &str) -> SecretKey {
    SecretKey::from_hex(Algorithm::Tdes, hex).expect("key")
}

/// A key store in a new directory under a test LMK (also saved there, as
/// `lmk`), holding `keys` (name, type, TDES key in hex).
struct TestKeys {
    dir: tempfile::TempDir,
    lmk: Lmk,
    store_path: std::path::PathBuf,
}

impl TestKeys {
    fn new(keys: &[(&str, KeyType, &str)]) -> TestKeys {
        let dir = tempfile::tempdir().expect("dir");
        let c = |b: u8| SecretKey::new(Algorithm::Aes, &[b; 32]).expect("component");
        let lmk = Lmk::from_components(&[c(0x11), c(0x22)]).expect("lmk");
        lmk.save_new(&dir.path().join("lmk")).expect("lmk saved");
        let store_path = dir.path().join("keys.toml");
        let mut store = KeyStore::create(&store_path, &lmk).expect("store");
        for (name, t, hex) in keys {
            store.add(&lmk, name, *t, &tdes(hex)).expect("key added");
        }
        store.save().expect("saved");
        TestKeys {
            dir,
            lmk,
            store_path,
        }
    }

    fn lmk_path(&self) -> std::path::PathBuf {
        self.dir.path().join("lmk")
    }
}

/// A core whose `[security]` names a payShield (never reached: the test
/// answers its calls), with terminals `TERM*` MACing under a TAK and PIN
/// blocks under a TPK, translated to the acquirer's ZPK; terminals
/// `PLAIN*` have no profile. `max` requests in flight per connection.
/// Also the soft HSM over the same store, which plays the network one.
fn network_harness(max: usize) -> (Harness, SoftHsm, tempfile::TempDir) {
    let t = TestKeys::new(&[
        ("term.tpk", KeyType::Tpk, TPK),
        ("term.tak", KeyType::Tak, TAK),
        ("acq.zpk", KeyType::Zpk, ZPK),
    ]);
    let soft = SoftHsm::open(&t.store_path, t.lmk.clone()).expect("soft HSM");
    let security = format!(
        r#"
[security]
hsm = "payshield"
key_store = "{store}"

[security.payshield]
address = "127.0.0.1:9"
timeout_ms = {timeout}

[[security.terminals]]
terminal_id_prefixes = ["TERM"]
mac = "require"
mac_key = "term.tak"
pin_key = "term.tpk"
"#,
        store = t.store_path.display(),
        timeout = TIMEOUT.as_millis(),
    );
    let h = harness_with(
        &format!("max_in_flight_per_connection = {max}"),
        "[acquirers.security]\npin_key = \"acq.zpk\"\n",
        "default = \"acquirer-a\"",
        &security,
        true,
    );
    (h, soft, t.dir)
}

/// A 0200 from terminal `tid`; from a `TERM` terminal with PIN 1234 under
/// `tpk` and a MAC under the TAK.
fn request_from(spec: &'static Spec, stan: u64, tid: &[u8], tpk: Option<&str>) -> Bytes {
    let base = request(spec, Mti::FINANCIAL, stan, 100);
    let msg = Message::parse(base, spec).expect("parses");
    let pin = Pin::new("1234").expect("pin");
    let block = tpk.map(|k| {
        pinblock::encrypt(&tdes(k), PinFormat::Iso0, &pin, "4761739001010010", &[0; 8])
            .expect("block")
    });
    let mut b = MessageBuilder::new(spec, msg.mti());
    b.copy_all(&msg).set(41, tid);
    let Some(block) = &block else {
        return b.to_bytes().expect("packs").freeze();
    };
    b.set(52, block.as_bytes());
    let mut out = BytesMut::new();
    b.pack_with_mac(&mut out, |data, len| {
        full_mac(&tdes(TAK), MacAlgorithm::Retail, data)
            .map(|m| m.into_iter().take(len).collect::<MacBytes>())
            .map_err(|e| e.to_string())
    })
    .expect("packs");
    out.freeze()
}

impl Harness {
    fn hsm_calls(&mut self) -> Vec<HsmCall> {
        std::iter::from_fn(|| self.core.poll_hsm()).collect()
    }

    /// The one call out now, a command.
    fn one_command(&mut self) -> (u64, HsmCommand) {
        let mut calls = self.hsm_calls();
        assert_eq!(
            calls.len(),
            1,
            "one HSM call: {:?}",
            calls.iter().map(|c| &c.work).collect::<Vec<_>>()
        );
        let call = calls.remove(0);
        match call.work {
            HsmWork::Command(c) => (call.id, c),
            other => panic!("not a command: {other:?}"),
        }
    }

    /// The HSM answers call `id` with what `soft` says to `command`.
    fn hsm_answers(&mut self, soft: &SoftHsm, id: u64, command: &HsmCommand) {
        let answer = soft.execute(command);
        let now = self.tick(Duration::from_millis(2));
        self.core.handle_hsm_reply(now, id, HsmDone::Reply(answer));
    }

    /// Time passes to just past the HSM's deadline.
    fn hsm_times_out(&mut self) {
        let now = self.tick(TIMEOUT + Duration::from_millis(1));
        self.core.handle_timeout(now);
    }
}

fn pin_of(command: &HsmCommand) -> bool {
    matches!(command, HsmCommand::TranslatePin { .. })
}

/// Does the answer carry a right MAC under the TAK?
fn macs_under_the_tak(answer: &Message) -> bool {
    let Ok(parts) = answer.mac_parts() else {
        return false;
    };
    full_mac(&tdes(TAK), MacAlgorithm::Retail, parts.data)
        .is_ok_and(|m| m[..parts.mac.len()] == parts.mac[..])
}

#[test]
fn a_request_waits_for_the_hsm_while_another_is_answered() {
    let (mut h, soft, _keys) = network_harness(64);
    // TERM0001's MAC goes to the HSM, which takes its time.
    h.send(request_from(h.spec, 1, b"TERM0001", Some(TPK)));
    let (mac_id, verify) = h.one_command();
    assert!(matches!(verify, HsmCommand::VerifyMac { .. }), "{verify:?}");
    assert!(
        h.forwards().is_empty(),
        "not forwarded before its MAC holds"
    );
    assert!(h.answers().is_empty(), "not answered either");
    assert_eq!(h.core.in_flight(), 0);
    // Meanwhile a terminal without card security is forwarded and answered.
    h.send(request_from(h.spec, 2, b"PLAIN001", None));
    let f = h.forwards();
    assert_eq!(f.len(), 1, "the other request is not held up");
    h.host_answers(&f[0], codes::APPROVED);
    let a = h.one_answer();
    assert_eq!((a.stan(), code(&a)), (Some(2), codes::APPROVED));
    assert!(h.hsm_calls().is_empty(), "its answer needs no MAC");

    // The MAC verifies: the request goes on, its PIN to the HSM next.
    h.hsm_answers(&soft, mac_id, &verify);
    let (pin_id, translate) = h.one_command();
    assert!(pin_of(&translate), "{translate:?}");
    assert!(
        h.forwards().is_empty(),
        "not forwarded before its PIN is translated"
    );
    h.hsm_answers(&soft, pin_id, &translate);
    let f = h.forwards();
    assert_eq!(f.len(), 1);
    // The host gets DE52 under the ZPK.
    let sent = Message::parse(f[0].body.clone(), h.spec).expect("parses");
    let mut raw = Vec::new();
    sent.value(52).expect("DE52").write_logical(&mut raw);
    let block = pinblock::EncryptedPinBlock::from_bytes(PinFormat::Iso0, &raw).expect("block");
    let pin = pinblock::decrypt(&tdes(ZPK), &block, "4761739001010010").expect("under the ZPK");
    assert!(pin.matches("1234"));
    assert!(!sent.has(64), "the terminal's MAC is not passed on");

    // The host approves; the answer waits for its MAC, then goes.
    h.host_answers(&f[0], codes::APPROVED);
    assert!(
        h.answers().is_empty(),
        "an answer without its MAC is not written"
    );
    let (answer_id, generate) = h.one_command();
    assert!(
        matches!(generate, HsmCommand::GenerateMac { .. }),
        "{generate:?}"
    );
    h.hsm_answers(&soft, answer_id, &generate);
    let a = h.one_answer();
    assert_eq!((a.stan(), code(&a)), (Some(1), codes::APPROVED));
    assert!(macs_under_the_tak(&a), "MACed under the TAK");
    assert!(h.core.is_finished() || !h.core.is_gone());
}

#[test]
fn an_hsm_that_does_not_check_the_mac_in_time_gives_96_journaled() {
    let (mut h, soft, _keys) = network_harness(64);
    h.send(request_from(h.spec, 1, b"TERM0001", Some(TPK)));
    let (id, verify) = h.one_command();
    h.hsm_times_out();
    // The 96 goes at once, without a MAC: the HSM is what did not answer.
    assert!(h.hsm_calls().is_empty(), "the HSM is not asked again");
    let a = h.one_answer();
    assert_eq!(code(&a), codes::SYSTEM_MALFUNCTION);
    assert!(!a.has(64));
    assert!(has_record(&h, |r| matches!(r, Record::Request { .. })));
    assert!(has_record(
        &h,
        |r| matches!(r, Record::Response { response_code, .. } if *response_code == codes::SYSTEM_MALFUNCTION)
    ));
    assert!(h.forwards().is_empty(), "never forwarded");
    // The answer that comes late is dropped.
    h.hsm_answers(&soft, id, &verify);
    assert!(h.forwards().is_empty() && h.answers().is_empty());
    assert!(h.core.is_finished() || !h.core.is_gone());
}

#[test]
fn an_hsm_that_does_not_translate_the_pin_in_time_gives_96() {
    let (mut h, soft, _keys) = network_harness(64);
    h.send(request_from(h.spec, 1, b"TERM0001", Some(TPK)));
    let (id, verify) = h.one_command();
    h.hsm_answers(&soft, id, &verify);
    let (_pin_id, translate) = h.one_command();
    assert!(pin_of(&translate));
    h.hsm_times_out();
    assert!(h.hsm_calls().is_empty());
    assert_eq!(code(&h.one_answer()), codes::SYSTEM_MALFUNCTION);
    assert!(h.forwards().is_empty(), "never forwarded");
    let txns: Vec<u64> = h
        .records()
        .into_iter()
        .filter_map(|r| match r {
            Record::Response {
                txn, response_code, ..
            } if *response_code == codes::SYSTEM_MALFUNCTION => Some(*txn),
            _ => None,
        })
        .collect();
    assert_eq!(txns.len(), 1, "the request's final record says 96");
}

#[test]
fn a_wrong_pin_key_is_81_and_a_wrong_mac_63_from_the_hsm_s_answer() {
    let (mut h, soft, _keys) = network_harness(64);
    const OTHER: &str = "0E0E0E0E0E0E0E0E0F0F0F0F0F0F0F0F";
    h.send(request_from(h.spec, 1, b"TERM0001", Some(OTHER)));
    let (id, verify) = h.one_command();
    h.hsm_answers(&soft, id, &verify);
    let (id, translate) = h.one_command();
    h.hsm_answers(&soft, id, &translate);
    let (id, generate) = h.one_command();
    h.hsm_answers(&soft, id, &generate);
    assert_eq!(code(&h.one_answer()), codes::BAD_PIN_BLOCK);
    // A MAC the HSM says is wrong.
    let mut tampered = request_from(h.spec, 2, b"TERM0001", Some(TPK)).to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    h.send(Bytes::from(tampered));
    let (id, verify) = h.one_command();
    h.hsm_answers(&soft, id, &verify);
    let (id, generate) = h.one_command();
    h.hsm_answers(&soft, id, &generate);
    assert_eq!(code(&h.one_answer()), codes::SECURITY_VIOLATION);
    assert!(h.forwards().is_empty(), "neither is forwarded");
}

#[test]
fn an_answer_whose_mac_does_not_come_is_a_96_and_an_approval_reversed() {
    let (mut h, soft, _keys) = network_harness(64);
    h.send(request_from(h.spec, 1, b"TERM0001", Some(TPK)));
    let (id, verify) = h.one_command();
    h.hsm_answers(&soft, id, &verify);
    let (id, translate) = h.one_command();
    h.hsm_answers(&soft, id, &translate);
    let f = h.forwards();
    h.host_answers(&f[0], codes::APPROVED);
    let (_late, _generate) = h.one_command();
    // A plain terminal's answer framed behind it waits too (answers go in
    // order), and goes once the first is settled.
    h.send(request_from(h.spec, 2, b"PLAIN001", None));
    let f2 = h.forwards();
    h.host_answers(&f2[0], codes::APPROVED);
    assert!(
        h.answers().is_empty(),
        "behind an answer waiting for its MAC"
    );
    h.hsm_times_out();
    let answers = h.answers();
    let got: Vec<_> = answers.iter().map(|a| (a.stan(), code(a))).collect();
    assert_eq!(
        got,
        vec![
            (Some(1), codes::SYSTEM_MALFUNCTION),
            (Some(2), codes::APPROVED)
        ]
    );
    assert!(!answers[0].has(64), "no MAC: the HSM is what failed");
    let reversals = h
        .saf_entries()
        .into_iter()
        .filter(|e| e.kind == SafKind::Reversal)
        .count();
    assert_eq!(
        reversals, 1,
        "the host's approval the terminal never got is reversed"
    );
}

#[test]
fn requests_waiting_for_the_hsm_count_in_the_connection_s_limit() {
    let (mut h, _soft, _keys) = network_harness(2);
    h.send(request_from(h.spec, 1, b"TERM0001", Some(TPK)));
    h.send(request_from(h.spec, 2, b"TERM0001", Some(TPK)));
    assert_eq!(h.hsm_calls().len(), 2);
    // A third, parked or forwarded, is over the limit.
    h.send(request_from(h.spec, 3, b"PLAIN001", None));
    let a = h.one_answer();
    assert_eq!((a.stan(), code(&a)), (Some(3), codes::SYSTEM_MALFUNCTION));
    assert!(h.forwards().is_empty());
    h.hsm_times_out();
    assert!(!h.core.is_finished() || h.core.is_gone());
}

#[test]
fn an_unreachable_hsm_answers_96_at_once() {
    let (mut h, _soft, _keys) = network_harness(64);
    h.send(request_from(h.spec, 1, b"TERM0001", Some(TPK)));
    let (id, _) = h.one_command();
    let now = h.tick(Duration::from_millis(1));
    h.core.handle_hsm_reply(
        now,
        id,
        HsmDone::Reply(Err(HsmError::Unavailable("busy".into()))),
    );
    assert!(h.hsm_calls().is_empty());
    let a = h.one_answer();
    assert_eq!(code(&a), codes::SYSTEM_MALFUNCTION);
    assert!(!a.has(64));
}

#[test]
fn a_link_s_hsm_failures_are_96_and_an_unverified_answer_is_reversed() {
    for (why, reversed) in [
        (Failure::HsmUnavailable, false),
        (Failure::AnswerUnverified, true),
    ] {
        let mut h = harness();
        h.send_auth(1, 100);
        let f = h.forwards();
        h.fails(&f[0], why);
        assert_eq!(code(&h.one_answer()), codes::SYSTEM_MALFUNCTION, "{why:?}");
        let reversals = h
            .saf_entries()
            .into_iter()
            .filter(|e| e.kind == SafKind::Reversal)
            .count();
        assert_eq!(reversals, usize::from(reversed), "{why:?}");
    }
}

#[test]
fn a_key_change_s_0810_waits_for_the_key_store_to_be_written() {
    let keys = TestKeys::new(&[
        ("t-TERMK001.tmk", KeyType::Tmk, ZPK),
        ("t-TERMK001.tpk", KeyType::Tpk, TPK),
        ("t-TERMK001.tak", KeyType::Tak, TAK),
    ]);
    let (lmk, store_path, lmk_path) = (keys.lmk.clone(), keys.store_path.clone(), keys.lmk_path());
    let security = format!(
        r#"
[security]
key_store = "{store}"
lmk_file = "{lmk}"

[[security.terminals]]
terminal_ids = ["TERMK001"]
mac = "off"
pin_key = "t-{{terminal}}.tpk"
mac_key = "t-{{terminal}}.tak"
tmk = "t-{{terminal}}.tmk"
"#,
        store = store_path.display(),
        lmk = lmk_path.display(),
    );
    let mut h = harness_with("", "", "default = \"acquirer-a\"", &security, true);
    let mut b = MessageBuilder::new(h.spec, Mti::NETWORK);
    b.set(7, b"1125101010")
        .set_number(11, 7)
        .set(41, b"TERMK001")
        .set(70, b"161");
    h.send(b.to_bytes().expect("packs").freeze());
    let mut calls = h.hsm_calls();
    assert_eq!(calls.len(), 1);
    let call = calls.remove(0);
    let HsmWork::Install(install) = call.work else {
        panic!("not an install: {:?}", call.work)
    };
    assert!(
        h.answers().is_empty(),
        "no 0810 before the key store holds the keys"
    );
    let before = KeyStore::open(&store_path, &lmk).expect("opens");
    let old = before.entry("t-TERMK001.tpk").expect("entry").kcv;
    // The driver runs it on the blocking pool; here, in the test's thread.
    let done = install.run();
    let after = KeyStore::open(&store_path, &lmk).expect("opens");
    let new = after.entry("t-TERMK001.tpk").expect("entry").kcv;
    assert_ne!(old, new, "the file holds the new TPK");
    let now = h.tick(Duration::from_millis(3));
    h.core
        .handle_hsm_reply(now, call.id, HsmDone::Installed(done));
    let a = h.one_answer();
    assert_eq!(
        (a.mti(), code(&a)),
        (Mti::NETWORK_RESPONSE, codes::APPROVED)
    );
    let de48 = crate::switch::card_security::exchange::parse(a.field(48).expect("DE48"))
        .expect("readable");
    assert_eq!(de48[0].kcv, new, "the 0810 gives the key the file holds");
}

#[test]
fn through_a_network_hsm_a_key_change_makes_each_key_in_turn_then_installs_them() {
    let keys = TestKeys::new(&[
        ("t-TERMK001.tmk", KeyType::Tmk, ZPK),
        ("t-TERMK001.tpk", KeyType::Tpk, TPK),
        ("t-TERMK001.tak", KeyType::Tak, TAK),
    ]);
    let (lmk, store_path) = (keys.lmk.clone(), keys.store_path.clone());
    // Plays the network HSM: the same keys under the same LMK.
    let soft = SoftHsm::open(&store_path, lmk.clone()).expect("soft HSM");
    let security = format!(
        r#"
[security]
hsm = "payshield"
key_store = "{store}"
key_overlap_ms = 1000

[security.payshield]
address = "127.0.0.1:9"
timeout_ms = {timeout}

[[security.terminals]]
terminal_ids = ["TERMK001"]
mac = "off"
pin_key = "t-{{terminal}}.tpk"
mac_key = "t-{{terminal}}.tak"
tmk = "t-{{terminal}}.tmk"
"#,
        store = store_path.display(),
        timeout = TIMEOUT.as_millis(),
    );
    let mut h = harness_with("", "", "default = \"acquirer-a\"", &security, true);
    let key_change = |h: &Harness, stan: u64| {
        let mut b = MessageBuilder::new(h.spec, Mti::NETWORK);
        b.set(7, b"1125101010")
            .set_number(11, stan)
            .set(41, b"TERMK001")
            .set(70, b"161");
        b.to_bytes().expect("packs").freeze()
    };
    h.send(key_change(&h, 7));
    // One A0 at a time: the TPK, then the TAK, each also under the TMK.
    let mut made = Vec::new();
    for (name, key_type) in [
        ("t-TERMK001.tpk", KeyType::Tpk),
        ("t-TERMK001.tak", KeyType::Tak),
    ] {
        let (id, command) = h.one_command();
        let HsmCommand::GenerateKey {
            key_type: t,
            export_under: Some(tmk),
            label: Some(label),
            ..
        } = &command
        else {
            panic!("not an A0 under the TMK: {command:?}")
        };
        assert_eq!((*t, &**tmk, &**label), (key_type, "t-TERMK001.tmk", name));
        assert!(h.answers().is_empty(), "no 0810 before the keys are made");
        let reply = soft.execute(&command);
        if let Ok(crate::security::hsm::HsmReply::Key { kcv, .. }) = &reply {
            made.push(*kcv);
        }
        let now = h.tick(Duration::from_millis(2));
        h.core.handle_hsm_reply(now, id, HsmDone::Reply(reply));
    }
    let mut calls = h.hsm_calls();
    assert_eq!(calls.len(), 1);
    let call = calls.remove(0);
    let HsmWork::InstallBlocks(install) = call.work else {
        panic!("not an install: {:?}", call.work)
    };
    assert!(h.answers().is_empty(), "no 0810 before the store has them");
    let done = install.run();
    let after = KeyStore::open(&store_path, &lmk).expect("the rewritten store opens");
    assert_eq!(after.entry("t-TERMK001.tpk").expect("tpk").kcv, made[0]);
    assert_eq!(after.entry("t-TERMK001.tak").expect("tak").kcv, made[1]);
    let now = h.tick(Duration::from_millis(3));
    h.core
        .handle_hsm_reply(now, call.id, HsmDone::Installed(done));
    let a = h.one_answer();
    assert_eq!(code(&a), codes::APPROVED);
    let de48 = crate::switch::card_security::exchange::parse(a.field(48).expect("DE48"))
        .expect("readable");
    assert_eq!(
        de48.iter().map(|e| (e.tag, e.kcv)).collect::<Vec<_>>(),
        vec![(*b"TPK", made[0]), (*b"TAK", made[1])]
    );

    // An answer that is not a key under the TMK, or none in time: 96,
    // nothing installed.
    h.send(key_change(&h, 8));
    let (id, _) = h.one_command();
    let now = h.tick(Duration::from_millis(1));
    h.core.handle_hsm_reply(
        now,
        id,
        HsmDone::Reply(Ok(crate::security::hsm::HsmReply::Verified)),
    );
    assert_eq!(code(&h.one_answer()), codes::SYSTEM_MALFUNCTION);
    assert!(h.hsm_calls().is_empty(), "no install");
    h.send(key_change(&h, 9));
    let (_, _) = h.one_command();
    h.hsm_times_out();
    assert_eq!(code(&h.one_answer()), codes::SYSTEM_MALFUNCTION);
    assert!(h.hsm_calls().is_empty(), "no install");
    let unchanged = KeyStore::open(&store_path, &lmk).expect("opens");
    assert_eq!(unchanged.entry("t-TERMK001.tpk").expect("tpk").kcv, made[0]);
}
