//! Card security end to end: terminal profiles with a TPK/TAK or a DUKPT
//! BDK, an acquirer zone with a ZPK and ZAK, the switch between a
//! terminal and a simulated host that checks what it gets under its own
//! copy of the zone keys. Real sockets on 127.0.0.1, a real key store
//! under a real LMK file.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use common::*;
use switchyard::iso8583::mac_field::MacBytes;
use switchyard::iso8583::{Message, MessageBuilder, Mti, specs};
use switchyard::security::hsm::MacAlgorithm;
use switchyard::security::hsm::soft::full_mac;
use switchyard::security::lmk::Lmk;
use switchyard::security::mac::MacKey;
use switchyard::security::pinblock::{self, Pin, PinFormat};
use switchyard::security::store::{KeyStore, KeyType};
use switchyard::security::{Algorithm, SecretKey};
use switchyard::tools::sim::zone::ZoneKeys;
use switchyard::tools::sim::{SimConfig, SimHandle};

const TPK: &str = "0123456789ABCDEFFEDCBA9876543210";
const TAK: &str = "89ABCDEF0123456776543210FEDCBA98";
const ZPK: &str = "1A1B1C1D1E1F2A2B2C2D2E2F3A3B3C3D";
const ZAK: &str = "4C4C4C4C4C4C4C4C5D5D5D5D5D5D5D5D";
/// jPOS DUKPTTest's BDK.
const BDK: &str = "0123456789ABCDEFFEDCBA9876543210";
const OTHER: &str = "0E0E0E0E0E0E0E0E0F0F0F0F0F0F0F0F";
const ZMK: &str = "2C2C2C2C2C2C2C2C3D3D3D3D3D3D3D3D";
const TMK: &str = "6E6E6E6E6E6E6E6E7F7F7F7F7F7F7F7F";
/// ANSI X9.24-3-2017's AES-128 test BDK; its initial key ID is
/// 1234567890123456.
const AES_BDK: &str = "FEDCBA9876543210F1F1F1F1F1F1F1F1";

fn tdes(hex: &str) -> SecretKey {
    SecretKey::from_hex(Algorithm::Tdes, hex).expect("key")
}

/// An LMK and a key store with the test keys, in a fresh directory.
struct Keys {
    dir: PathBuf,
    lmk: PathBuf,
    store: PathBuf,
}

fn key_store() -> Keys {
    let dir = fresh_journal_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    let lmk_path = dir.join("lmk");
    let c = |b: u8| SecretKey::new(Algorithm::Aes, &[b; 32]).expect("component");
    let lmk = Lmk::from_components(&[c(0x11), c(0x22)]).expect("lmk");
    lmk.save_new(&lmk_path).expect("lmk saved");
    let store_path = dir.join("keys.toml");
    let mut store = KeyStore::create(&store_path, &lmk).expect("store");
    for (name, t, hex) in [
        ("term.tpk", KeyType::Tpk, TPK),
        ("term.tak", KeyType::Tak, TAK),
        ("acq.zpk", KeyType::Zpk, ZPK),
        ("acq.zak", KeyType::Zak, ZAK),
        ("fleet.bdk", KeyType::Bdk, BDK),
        ("acq.zmk", KeyType::Zmk, ZMK),
        ("t-TERMK001.tmk", KeyType::Tmk, TMK),
        ("t-TERMK001.tpk", KeyType::Tpk, TPK),
        ("t-TERMK001.tak", KeyType::Tak, TAK),
    ] {
        store.add(&lmk, name, t, &tdes(hex)).expect("key added");
    }
    store
        .add(
            &lmk,
            "acq.aeszmk",
            KeyType::Zmk,
            &SecretKey::new(Algorithm::Aes, &[0x3E; 32]).expect("aes zmk"),
        )
        .expect("key added");
    store
        .add(
            &lmk,
            "fleet.aesbdk",
            KeyType::Bdk,
            &SecretKey::from_hex(Algorithm::Aes, AES_BDK).expect("aes bdk"),
        )
        .expect("key added");
    let hmac = SecretKey::new(Algorithm::Aes, &[0x5A; 32]).expect("hmac key");
    store
        .add(&lmk, "rest.hmac", KeyType::Hmac, &hmac)
        .expect("key added");
    store.save().expect("store saved");
    Keys {
        dir,
        lmk: lmk_path,
        store: store_path,
    }
}

fn security_toml(k: &Keys, terminal_mac: &str) -> String {
    format!(
        r#"
[security]
key_store = "{store}"
lmk_file = "{lmk}"
card_hash_key = "rest.hmac"

[[security.terminals]]
name = "load-terminals"
terminal_id_prefixes = ["LT", "TERM"]
mac = "{terminal_mac}"
mac_key = "term.tak"
pin_key = "term.tpk"

[[security.terminals]]
name = "keyed-per-terminal"
terminal_ids = ["TERMK001"]
mac = "require"
mac_key = "t-{{terminal}}.tak"
pin_key = "t-{{terminal}}.tpk"
tmk = "t-{{terminal}}.tmk"

[[security.terminals]]
name = "macs-over-fields"
terminal_ids = ["TERMF001"]
mac = "require"
mac_key = "term.tak"
mac_fields = [2, 3, 4, 11, 41]

[[security.terminals]]
name = "dukpt-fleet"
terminal_ids = ["DUKPT001"]
dukpt_bdk = "fleet.bdk"
ksn_field = 62

[[security.terminals]]
name = "aes-dukpt-fleet"
terminal_ids = ["DUKPTA01"]
dukpt_bdk = "fleet.aesbdk"
ksn_field = 62
"#,
        store = k.store.display(),
        lmk = k.lmk.display(),
    )
}

const ZONE: &str = r#"
[acquirers.security]
mac = "require"
mac_key = "acq.zak"
pin_key = "acq.zpk"
zmk = "acq.zmk"
de53 = "2001010100000000"
"#;

/// The host simulator holding the zone keys (`zak` its MAC key).
async fn host(zak: &str) -> SimHandle {
    host_macing(zak, &[]).await
}

/// The host simulator, its MACs over `mac_fields` (empty: the whole
/// message).
async fn host_macing(zak: &str, mac_fields: &[u16]) -> SimHandle {
    start_sim_with(SimConfig {
        zone: Some(Arc::new(ZoneKeys {
            mac_fields: mac_fields.to_vec(),
            mac: Some((
                MacAlgorithm::Retail,
                MacKey::new(&tdes(zak)).expect("a TDES key"),
            )),
            pin_key: Some(tdes(ZPK)),
            expected_pin: Some("1234".into()),
        })),
        ..sim_config()
    })
    .await
}

/// A request as a terminal with the TPK and TAK sends it: PIN 1234 in
/// DE52 under `pin_key`, a MAC under the TAK unless `mac` is false.
fn secured_request(stan: u32, tid: &str, pin_key: &str, mac: bool) -> Bytes {
    request_under(stan, tid, &tdes(pin_key), mac.then(|| tdes(TAK)).as_ref())
}

/// A request of terminal `tid` with PIN 1234 under `tpk` and, given a
/// `tak`, a MAC under it.
fn request_under(stan: u32, tid: &str, tpk: &SecretKey, tak: Option<&SecretKey>) -> Bytes {
    let base = auth_from(Mti::FINANCIAL, stan, PAN, 1_000, tid);
    let msg = Message::parse(base, specs::iso87ascii()).expect("parses");
    let pin = Pin::new("1234").expect("pin");
    let block = pinblock::encrypt(tpk, PinFormat::Iso0, &pin, PAN, &[0; 8]).expect("block");
    let mut b = MessageBuilder::new(specs::iso87ascii(), msg.mti());
    b.copy_all(&msg).set(52, block.as_bytes());
    let mut out = BytesMut::new();
    match tak {
        Some(k) => b.pack_with_mac(&mut out, mac_under(k)).expect("packs"),
        None => b.pack(&mut out).expect("packs"),
    }
    out.freeze()
}

/// Retail MACs under `key`, as `pack_with_mac` takes them.
fn mac_under(key: &SecretKey) -> impl FnOnce(&[u8], usize) -> Result<MacBytes, String> + '_ {
    move |data, len| {
        full_mac(key, MacAlgorithm::Retail, data)
            .map(|m| m.into_iter().take(len).collect())
            .map_err(|e| e.to_string())
    }
}

fn terminal_mac(data: &[u8], len: usize) -> Result<MacBytes, String> {
    mac_under(&tdes(TAK))(data, len)
}

/// Does the answer carry a right MAC under the TAK?
fn answer_mac_is_the_terminals(answer: &Message) -> bool {
    let Ok(parts) = answer.mac_parts() else {
        return false;
    };
    terminal_mac(parts.data, parts.mac.len()).is_ok_and(|m| m == parts.mac)
}

/// Transaction requests the host got (the links' 0800s aside).
fn transactions_at(sim: &SimHandle) -> usize {
    sim.received().iter().filter(|r| r.mti.class() != 8).count()
}

async fn switch_with(
    k: &Keys,
    sim: &SimHandle,
    terminal_mac: &str,
) -> switchyard::switch::server::Switch {
    let toml = config(&[sim.local_addr()], ZONE, &security_toml(k, terminal_mac));
    let switch = start_switch(&toml).await;
    wait_links_up(&switch).await;
    switch
}

#[tokio::test]
async fn pin_translated_and_macs_made_and_checked_on_both_sides() {
    let k = key_store();
    let sim = host(ZAK).await;
    let switch = switch_with(&k, &sim, "require").await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let answer = t.request(&secured_request(1, TID, TPK, true)).await;
    assert_eq!(
        code(&answer),
        "00",
        "approved by a host that checked PIN and MAC"
    );
    assert!(
        answer_mac_is_the_terminals(&answer),
        "the answer carries a MAC under the TAK"
    );
    let s = sim.stats();
    assert_eq!(
        (s.pin_verified, s.pin_refused, s.mac_refused),
        (1, 0, 0),
        "{s}"
    );
    switch.shutdown().await;
}

#[tokio::test]
async fn a_tampered_or_missing_mac_gets_63_and_is_not_forwarded() {
    let log = Captured::install();
    let k = key_store();
    let sim = host(ZAK).await;
    let switch = switch_with(&k, &sim, "require").await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    // A second connection: the refusal line is rate-limited per connection.
    let mut t2 = Terminal::connect(switch.terminal_addr).await;
    let mut tampered = secured_request(2, TID, TPK, true).to_vec();
    // The amount's last digit: the MAC no longer covers these bytes.
    let msg = Message::parse(Bytes::from(tampered.clone()), specs::iso87ascii()).expect("parses");
    let amount_at =
        msg.field(4).expect("DE4").as_ptr() as usize - msg.frame().as_ptr() as usize + 11;
    tampered[amount_at] = b'9';
    assert_eq!(code(&t.request(&tampered).await), "63");
    assert_eq!(
        code(&t2.request(&secured_request(3, TID, TPK, false)).await),
        "63"
    );
    assert_eq!(transactions_at(&sim), 0, "nothing reached the host");
    // The metrics are this test binary's (other tests refuse too): at
    // least these; the log lines are this test's own, by connection.
    let admin = switch.admin_addr.expect("admin");
    let (_, metrics) = http_get(admin, "/metrics").await;
    for reason in ["mac_wrong", "mac_missing"] {
        let n = metric(&metrics, "switchyard_security_refusals_total", &[reason]);
        assert!(n >= 1.0, "{reason}: {n}");
    }
    for (terminal, reason) in [(&t, "mac_wrong"), (&t2, "mac_missing")] {
        let peer = terminal.stream.local_addr().expect("addr").to_string();
        let lines = log.lines("WARN", &format!("peer={peer}"));
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("reason=\"{reason}\""))
                    || l.contains(&format!("reason={reason}"))),
            "{reason}: {lines:?}"
        );
        assert!(
            lines.iter().all(|l| l.contains("476173******0010")),
            "the PAN masked: {lines:?}"
        );
    }
    switch.shutdown().await;
}

#[tokio::test]
async fn mac_verify_takes_a_request_without_one_but_not_a_wrong_one() {
    let k = key_store();
    let sim = host(ZAK).await;
    let switch = switch_with(&k, &sim, "verify").await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let answer = t.request(&secured_request(4, TID, TPK, false)).await;
    assert_eq!(code(&answer), "00");
    assert!(
        answer_mac_is_the_terminals(&answer),
        "verify mode MACs its answers too"
    );
    let mut wrong = secured_request(5, TID, TPK, true).to_vec();
    let last = wrong.len() - 1;
    wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
    assert_eq!(code(&t.request(&wrong).await), "63");
    switch.shutdown().await;
}

#[tokio::test]
async fn a_pin_under_a_wrong_key_gets_81_and_is_not_forwarded() {
    let k = key_store();
    let sim = host(ZAK).await;
    let switch = switch_with(&k, &sim, "require").await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let answer = t.request(&secured_request(6, TID, OTHER, true)).await;
    assert_eq!(code(&answer), "81");
    assert!(
        answer_mac_is_the_terminals(&answer),
        "a refusal is MACed too"
    );
    assert_eq!(transactions_at(&sim), 0, "nothing reached the host");
    switch.shutdown().await;
}

#[tokio::test]
async fn a_dukpt_pin_is_translated_from_the_bdk() {
    // jPOS DUKPTTest: BDK 0123..3210, KSN FFFF9876543210E00001, PIN 1234
    // and PAN 4012345678909 give the block 1B9C1845EB993A7A.
    let k = key_store();
    let sim = host(ZAK).await;
    let switch = switch_with(&k, &sim, "off").await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let base = auth_from(Mti::FINANCIAL, 7, "4012345678909", 1_000, "DUKPT001");
    let msg = Message::parse(base, specs::iso87ascii()).expect("parses");
    let block = switchyard::hex::parse_hex("1B9C1845EB993A7A").expect("hex");
    let mut b = MessageBuilder::new(specs::iso87ascii(), msg.mti());
    b.copy_all(&msg)
        .set(52, &block)
        .set(62, b"FFFF9876543210E00001");
    let answer = t.request(&b.to_bytes().expect("packs")).await;
    assert_eq!(code(&answer), "00");
    assert_eq!(
        sim.stats().pin_verified,
        1,
        "the host found PIN 1234 under its ZPK"
    );
    switch.shutdown().await;
}

/// AES DUKPT (X9.24-3): a terminal's ISO format 4 PIN block under the
/// standard's published PIN working key for its KSN reaches the host in
/// format 0 under the zone's ZPK, translated from the BDK and the KSN.
/// The terminals' spec carries a 16-byte DE52.
#[tokio::test]
async fn an_aes_dukpt_terminal_s_format_4_pin_is_translated_from_the_bdk() {
    const KSN1: &str = "123456789012345600000001";
    /// X9.24-3's PIN working key (AES-128) for counter 1 and counter 2.
    const PIN_KEY_1: &str = "AF8CB133A78F8DC2D1359F18527593FB";
    const PIN_KEY_2: &str = "D30BDC73EC9714B000BEC66BDB7B6D09";
    let k = key_store();
    let spec_path = k.dir.join("aes-pins.toml");
    let spec_text = "name = \"aes-pins\"\nbase = \"iso87ascii\"\n\n[fields.52]\nencoding = \"hex\"\nlength = 32\n";
    std::fs::write(&spec_path, spec_text).expect("spec written");
    let spec: &'static switchyard::iso8583::Spec = Box::leak(Box::new(
        switchyard::iso8583::spec_toml::parse(spec_text, &spec_path).expect("spec"),
    ));
    let sim = host(ZAK).await;
    let toml = config(&[sim.local_addr()], ZONE, &security_toml(&k, "require")).replacen(
        "listen = \"127.0.0.1:0\"\n",
        &format!(
            "listen = \"127.0.0.1:0\"\nspec = \"{}\"\n",
            spec_path.display()
        ),
        1,
    );
    let switch = start_switch(&toml).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let request = |stan: u32, pin_key: &str, ksn: &str| {
        let base = auth_from(Mti::FINANCIAL, stan, "4012345678909", 1_000, "DUKPTA01");
        let msg = Message::parse(base, specs::iso87ascii()).expect("parses");
        let key = SecretKey::from_hex(Algorithm::Aes, pin_key).expect("key");
        let pin = Pin::new("1234").expect("pin");
        let block = pinblock::encrypt(&key, PinFormat::Iso4, &pin, "4012345678909", &[0x3C; 8])
            .expect("block");
        assert_eq!(block.as_bytes().len(), 16);
        let mut b = MessageBuilder::new(spec, msg.mti());
        b.copy_all(&msg)
            .set(52, block.as_bytes())
            .set(62, ksn.as_bytes());
        b.to_bytes().expect("packs")
    };
    let answer = t.request(&request(1, PIN_KEY_1, KSN1)).await;
    assert_eq!(code(&answer), "00");
    let s = sim.stats();
    assert_eq!(
        (s.pin_verified, s.pin_refused),
        (1, 0),
        "the host found PIN 1234 under its ZPK: {s}"
    );
    // Under the next counter's key but with this KSN: not a valid block.
    let answer = t.request(&request(2, PIN_KEY_2, KSN1)).await;
    assert_eq!(code(&answer), "81");
    // With the next counter's KSN it is.
    let answer = t
        .request(&request(3, PIN_KEY_2, "123456789012345600000002"))
        .await;
    assert_eq!(code(&answer), "00");
    // A TDES-length KSN (20 hex digits) for an AES BDK: 81.
    let answer = t
        .request(&request(4, PIN_KEY_1, "12345678901234560001"))
        .await;
    assert_eq!(code(&answer), "81");
    assert_eq!(
        transactions_at(&sim),
        2,
        "only the good ones reached the host"
    );
    switch.shutdown().await;
}

#[tokio::test]
async fn an_answer_with_a_wrong_mac_is_discarded_and_the_request_reversed() {
    let k = key_store();
    // The host has another ZAK: its answers' MACs do not verify.
    let sim = host(OTHER).await;
    let switch = switch_with(&k, &sim, "require").await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    assert_eq!(
        code(&t.request(&secured_request(8, TID, TPK, true)).await),
        "91"
    );
    let admin = switch.admin_addr.expect("admin");
    let failures = wait_metric(
        admin,
        "switchyard_link_answer_mac_failures_total",
        &[],
        |v| v >= 1.0,
    )
    .await;
    assert!(failures >= 1.0);
    // The reversal reaches the host (which refuses its MAC in turn).
    let reversed = sim
        .wait_until(GUARD, |s| {
            s.received().iter().any(|r| r.mti == Mti::REVERSAL_ADVICE)
        })
        .await;
    assert!(
        reversed,
        "a 0420 was sent for the request the host may have approved"
    );
    switch.shutdown().await;
}

#[tokio::test]
async fn the_journal_names_cards_by_hmac_under_the_key_stores_key() {
    let k = key_store();
    let sim = host(ZAK).await;
    let toml = config(&[sim.local_addr()], ZONE, &security_toml(&k, "require"));
    let journal_dir = journal_dir_of(&toml);
    let switch = start_switch(&toml).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    assert_eq!(
        code(&t.request(&secured_request(10, TID, TPK, true)).await),
        "00"
    );
    switch.shutdown().await;
    let key = switchyard::security::card_hash::CardHashKey::new(&[0x5A; 32]).expect("key");
    let want = switchyard::security::card_hash::card_hash_128(&key, PAN.as_bytes());
    let hashes: Vec<[u8; 16]> = switchyard::switch::journal::read_all(&journal_dir)
        .expect("journal readable")
        .filter_map(|r| match r {
            Ok((_, switchyard::switch::journal::Record::Request { request, .. })) => {
                Some(request.card_hash)
            }
            _ => None,
        })
        .collect();
    assert_eq!(hashes, vec![want], "one request, named by HMAC-SHA-256/128");
}

/// The journal directory a test config names.
fn journal_dir_of(toml: &str) -> PathBuf {
    toml.lines()
        .find_map(|l| l.strip_prefix("dir = \""))
        .and_then(|l| l.strip_suffix('"'))
        .map(PathBuf::from)
        .expect("journal dir in the config")
}

#[tokio::test]
async fn config_names_keys_missing_from_the_store() {
    let k = key_store();
    let sim = host(ZAK).await;
    let toml = config(
        &[sim.local_addr()],
        &ZONE
            .replace("acq.zak", "acq.nope")
            .replace("acq.zmk", "acq.aeszmk"),
        &security_toml(&k, "require").replace("term.tak", "term.tpk"),
    );
    let problems = switchyard::switch::config::Config::parse(&toml).expect_err("refused");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter().any(|p| p.starts_with(
            "acquirers[0].security.zmk: `acq.aeszmk` is an AES key: key exchange carries TDES keys"
        )),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|p| p.starts_with("security.terminals[0].mac_key: no tak key named `term.tpk`")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|p| p.starts_with("acquirers[0].security.mac_key: no zak key named `acq.nope`")),
        "{text:?}"
    );
}

#[tokio::test]
async fn a_mac_over_a_field_list_covers_those_fields_only() {
    use switchyard::iso8583::mac_field::field_list_input;
    const FIELDS: [u16; 5] = [2, 3, 4, 11, 41];
    let k = key_store();
    let sim = host(ZAK).await;
    let switch = switch_with(&k, &sim, "require").await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    // DE42 changes after the MAC is made: it is not in the list.
    let request = |stan: u32, amount_after: Option<u64>| {
        let base = auth_from(Mti::FINANCIAL, stan, PAN, 1_000, "TERMF001");
        let msg = Message::parse(base, specs::iso87ascii()).expect("parses");
        let mut covered = Vec::new();
        field_list_input(&msg, &FIELDS, &mut covered);
        let mut b = MessageBuilder::new(specs::iso87ascii(), msg.mti());
        b.copy_all(&msg).set(42, b"ANOTHERMERCHANT");
        if let Some(a) = amount_after {
            b.set_number(4, a);
        }
        let mut out = BytesMut::new();
        b.pack_with_mac(&mut out, |_, len| mac_under(&tdes(TAK))(&covered, len))
            .expect("packs");
        out.freeze()
    };
    let answer = t.request(&request(40, None)).await;
    assert_eq!(code(&answer), "00", "a field outside the list may change");
    let mut covered = Vec::new();
    field_list_input(&answer, &FIELDS, &mut covered);
    let parts = answer.mac_parts().expect("the answer is MACed");
    let want = mac_under(&tdes(TAK))(&covered, parts.mac.len()).expect("mac");
    assert_eq!(parts.mac, want, "the answer's MAC covers the same fields");
    assert_eq!(
        code(&t.request(&request(41, Some(999))).await),
        "63",
        "DE4 is covered"
    );
    switch.shutdown().await;
}

#[tokio::test]
async fn an_acquirer_field_list_naming_the_mac_field_is_refused_by_name() {
    let k = key_store();
    let sim = host(ZAK).await;
    let zone = ZONE.replace(
        "mac_key = \"acq.zak\"\n",
        "mac_key = \"acq.zak\"\nmac_fields = [2, 64]\n",
    );
    let toml = config(&[sim.local_addr()], &zone, &security_toml(&k, "require"));
    let problems = switchyard::switch::config::Config::parse(&toml).expect_err("refused");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter().any(|p| p.starts_with(
            "acquirers[0].security.mac_fields[1]: 64: a data element 2..=127 other than 64"
        )),
        "{text:?}"
    );
}

#[tokio::test]
async fn an_acquirer_zone_macs_over_its_field_list_both_ways() {
    const FIELDS: [u16; 5] = [2, 3, 4, 11, 41];
    let k = key_store();
    let zone = ZONE.replace(
        "mac_key = \"acq.zak\"\n",
        "mac_key = \"acq.zak\"\nmac_fields = [2, 3, 4, 11, 41]\n",
    );
    assert_ne!(zone, ZONE);
    let switch_to = async |sim: &SimHandle| {
        let toml = config(&[sim.local_addr()], &zone, &security_toml(&k, "require"));
        let switch = start_switch(&toml).await;
        wait_links_up(&switch).await;
        switch
    };

    // A host checking and making its MACs over the same list: the
    // request's MAC holds there, and the answer's (over the list too)
    // holds in the switch, else the terminal would get 91.
    let sim = host_macing(ZAK, &FIELDS).await;
    let switch = switch_to(&sim).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let answer = t.request(&secured_request(1, TID, TPK, true)).await;
    assert_eq!(code(&answer), "00", "MACs over the list both ways");
    let s = sim.stats();
    assert_eq!((s.mac_refused, s.pin_verified), (0, 1), "{s}");
    switch.shutdown().await;

    // A host MACing the whole message refuses the switch's MAC.
    let sim = host(ZAK).await;
    let switch = switch_to(&sim).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let answer = t.request(&secured_request(2, TID, TPK, true)).await;
    assert_ne!(code(&answer), "00");
    // The request, and the reversal the switch sends when the host's 63
    // fails its check over the list: each refused, no PIN looked at.
    let s = sim.stats();
    assert!(
        s.mac_refused >= 1 && s.pin_verified == 0,
        "the switch MACed the list, not the message: {s}"
    );
    switch.shutdown().await;
}

/// 0800 with DE70 161 from terminal `tid`.
fn key_change_request(stan: u32, tid: &str) -> Bytes {
    let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::NETWORK);
    b.set(7, b"1125101010")
        .set_number(11, stan as u64)
        .set(41, tid.as_bytes())
        .set(70, b"161");
    b.to_bytes().expect("packs").freeze()
}

/// A terminal key change's 0810: its DE48 holds a new TPK and TAK, in
/// that order, each under the TMK with its own KCV; the keys in clear.
fn keys_under_the_tmk(answer: &Message) -> Vec<SecretKey> {
    use switchyard::security::hsm::soft::import_tdes_under_kek;
    use switchyard::switch::card_security::exchange;
    let keys = exchange::parse(answer.field(48).expect("DE48 with the keys")).expect("readable");
    assert_eq!(
        keys.iter().map(|k| k.tag).collect::<Vec<_>>(),
        vec![*b"TPK", *b"TAK"]
    );
    keys.iter()
        .map(|e| {
            let key = import_tdes_under_kek(&tdes(TMK), &e.under).expect("decrypts under the TMK");
            assert_eq!(key.kcv(), e.kcv, "the KCV given is the key's");
            key
        })
        .collect()
}

#[tokio::test]
async fn a_terminal_gets_new_keys_under_its_tmk_and_transacts_with_them() {
    let k = key_store();
    let sim = host(ZAK).await;
    let switch = switch_with(&k, &sim, "require").await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let answer = t.request(&key_change_request(20, "TERMK001")).await;
    assert_eq!(code(&answer), "00");
    let new = keys_under_the_tmk(&answer);
    assert_ne!(new[0].kcv(), tdes(TPK).kcv(), "a new TPK");
    let answer = t
        .request(&request_under(21, "TERMK001", &new[0], Some(&new[1])))
        .await;
    assert_eq!(code(&answer), "00", "the new keys are taken");
    // The old keys, during their overlap, too (requests already sent).
    let answer = t
        .request(&request_under(22, "TERMK001", &tdes(TPK), Some(&tdes(TAK))))
        .await;
    assert_eq!(
        code(&answer),
        "00",
        "the replaced keys are taken during the overlap"
    );
    assert_eq!(sim.stats().pin_verified, 2);
    switch.shutdown().await;
    // The key store on disk has the new keys: a restart keeps them.
    let lmk = Lmk::load(&k.lmk).expect("lmk");
    let store = KeyStore::open(&k.store, &lmk).expect("the rewritten store opens");
    let on_disk = store.entry("t-TERMK001.tpk").expect("entry").kcv;
    assert_eq!(on_disk, new[0].kcv());
}

#[tokio::test]
async fn a_host_changes_the_zone_keys_under_the_zmk() {
    let k = key_store();
    a_host_changes_the_zone_keys(|host| config(&[host], ZONE, &security_toml(&k, "require"))).await;
}

/// A host's zone key change under the ZMK, against the switch `toml`
/// makes for a host at the address it is given: a wrong KCV is 63 and
/// the old keys stay (a request after it reaches the host under them);
/// then the new ZPK and ZAK are taken, and a request reaches the host
/// under them and its answer under the new ZAK is taken.
async fn a_host_changes_the_zone_keys(toml: impl FnOnce(SocketAddr) -> String) {
    use switchyard::security::hsm::soft::export_under_kek;
    use switchyard::switch::card_security::exchange::{self, ExchangedKey};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let switch = start_switch(&toml(listener.local_addr().expect("addr"))).await;
    let (stream, _) = listener.accept().await.expect("the link connects");
    let mut host = Terminal::over(stream);
    let sign_on = host.recv().await;
    let mut b = MessageBuilder::response_to(&sign_on, &[7, 11, 70]).expect("0810");
    b.set(39, b"00");
    host.send(&b.to_bytes().expect("packs")).await;
    wait_links_up(&switch).await;

    // New zone keys, under the ZMK, with their KCVs.
    let (zpk2, zak2) = (
        tdes("1111111111111111EEEEEEEEEEEEEEEE"),
        tdes("2222222222222222DDDDDDDDDDDDDDDD"),
    );
    let header = switchyard::security::keyblock::Header {
        usage: *b"P0",
        algorithm: Algorithm::Tdes,
        mode: b'B',
        version: *b"00",
        exportability: b'E',
        blocks: vec![],
    };
    let entry = |tag: [u8; 3], key: &SecretKey, kcv| ExchangedKey {
        tag,
        under: export_under_kek(&tdes(ZMK), &header, key).expect("exports"),
        kcv,
    };
    let send_change = |stan: u32, entries: Vec<ExchangedKey>| {
        let de48 = exchange::format(&entries);
        let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::NETWORK);
        b.set(7, b"1125101010")
            .set_number(11, stan as u64)
            .set(48, de48.as_bytes())
            .set(70, b"161");
        b.to_bytes().expect("packs")
    };
    // A KCV that is not the key's: refused, nothing changes.
    host.send(&send_change(
        900_001,
        vec![
            entry(*b"ZAK", &zak2, zak2.kcv()),
            entry(*b"ZPK", &zpk2, tdes(OTHER).kcv()),
        ],
    ))
    .await;
    assert_eq!(code(&host.recv().await), "63");
    let mut t = Terminal::connect(switch.terminal_addr).await;
    t.send(&secured_request(29, TID, TPK, true)).await;
    let request = host.recv().await;
    host_checks_and_approves(&mut host, &request, &tdes(ZPK), &tdes(ZAK)).await;
    assert_eq!(
        code(&t.recv().await),
        "00",
        "the old keys are the zone's still: the refused change took none of its keys"
    );

    host.send(&send_change(
        900_002,
        vec![
            entry(*b"ZPK", &zpk2, zpk2.kcv()),
            entry(*b"ZAK", &zak2, zak2.kcv()),
        ],
    ))
    .await;
    assert_eq!(code(&host.recv().await), "00");

    // A terminal's request now reaches the host under the new keys.
    t.send(&secured_request(30, TID, TPK, true)).await;
    let request = host.recv().await;
    host_checks_and_approves(&mut host, &request, &zpk2, &zak2).await;
    assert_eq!(
        code(&t.recv().await),
        "00",
        "the host's answer under the new ZAK is taken"
    );
    switch.shutdown().await;
}

/// As the host: `request`'s MAC must be under `zak` and its PIN 1234
/// under `zpk`; the answer, 00, goes MACed under `zak`.
async fn host_checks_and_approves(
    host: &mut Terminal,
    request: &Message,
    zpk: &SecretKey,
    zak: &SecretKey,
) {
    let parts = request.mac_parts().expect("a MAC");
    switchyard::security::hsm::soft::verify_mac(zak, MacAlgorithm::Retail, parts.data, &parts.mac)
        .expect("MACed under the zone's ZAK");
    let mut raw = Vec::new();
    request.value(52).expect("DE52").write_logical(&mut raw);
    let block =
        switchyard::security::pinblock::EncryptedPinBlock::from_bytes(PinFormat::Iso0, &raw)
            .expect("a block");
    let pin = pinblock::decrypt(zpk, &block, PAN).expect("under the zone's ZPK");
    assert!(pin.matches("1234"));
    let mut b = MessageBuilder::response_to(request, &[2, 3, 4, 7, 11, 37, 41, 49]).expect("0210");
    b.set(39, b"00");
    let mut out = BytesMut::new();
    b.pack_with_mac(&mut out, mac_under(zak)).expect("packs");
    host.send(&out).await;
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p, bytes));
        }
    }
    out
}

#[tokio::test]
async fn a_load_test_with_pin_and_mac_is_clean_and_leaves_no_secret_behind() {
    let log = Captured::install();
    let k = key_store();
    let sim = host(ZAK).await;
    let toml = config(&[sim.local_addr()], ZONE, &security_toml(&k, "require"));
    let journal_dir = journal_dir_of(&toml);
    let switch = start_switch(&toml).await;
    wait_links_up(&switch).await;
    let api_config = secured_load_is_clean(&switch, &k, &sim, 9).await;
    switch.shutdown().await;
    assert_no_secret_in(&journal_dir, api_config, &log);
}

/// One request of a known card (whose PIN blocks the scan looks for),
/// then `loadtest --pin --mac` through the switch: clean, every PIN
/// checked by the host. Returns `/api/config` as the admin port gives it.
async fn secured_load_is_clean(
    switch: &switchyard::switch::server::Switch,
    k: &Keys,
    sim: &SimHandle,
    stan: u32,
) -> String {
    let mut t = Terminal::connect(switch.terminal_addr).await;
    assert_eq!(
        code(&t.request(&secured_request(stan, TID, TPK, true)).await),
        "00"
    );
    let keys_file = k.dir.join("terminal-keys.toml");
    std::fs::write(
        &keys_file,
        format!(
            "pin_key = \"{TPK}\"\nmac_key = \"{TAK}\"\nmac_algorithm = \"retail\"\npin = \"1234\"\n"
        ),
    )
    .expect("terminal keys written");
    let target = switch.terminal_addr;
    let report = tokio::task::spawn_blocking(move || load(target, &keys_file))
        .await
        .expect("load test ran");
    assert!(report.is_clean(), "{:?}", report.problems());
    let s = sim.stats();
    // As many as the box managed in the second (no rate is asserted: a
    // busy machine runs fewer), the known card's among them.
    assert!(
        s.pin_verified > 1 && report.approved() > 0,
        "PINs checked by the host: {s}"
    );
    assert_eq!((s.pin_refused, s.mac_refused), (0, 0), "{s}");
    // What must never be kept (checked by the caller): the keys and PIN
    // blocks, raw or as hex.
    let admin = switch.admin_addr.expect("admin");
    let (_, api_config) = http_get(admin, "/api/config").await;
    api_config
}

/// No key (of the test's store) and no PIN block of the test card, raw or
/// as hex, in the journal's files, `/api/config` or the log.
fn assert_no_secret_in(journal_dir: &Path, api_config: String, log: &Captured) {
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let hmac_hex = "5A".repeat(32);
    for hex in [TPK, TAK, ZPK, ZAK, BDK, &hmac_hex] {
        secrets.push(hex.as_bytes().to_vec());
        secrets.push(switchyard::hex::parse_hex(hex).expect("hex"));
    }
    // That card's PIN block as the terminal sent it and as the host got
    // it (format 0 is deterministic).
    let pin = Pin::new("1234").expect("pin");
    for key in [TPK, ZPK] {
        let block =
            pinblock::encrypt(&tdes(key), PinFormat::Iso0, &pin, PAN, &[0; 8]).expect("block");
        let hex: String = block
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        secrets.push(hex.into_bytes());
        secrets.push(block.as_bytes().to_vec());
    }
    let logged = log.lines("", "");
    let mut haystacks: Vec<(String, Vec<u8>)> = files_under(journal_dir)
        .into_iter()
        .map(|(p, b)| (p.display().to_string(), b))
        .collect();
    haystacks.push(("/api/config".into(), api_config.into_bytes()));
    haystacks.push(("log".into(), logged.join("\n").into_bytes()));
    assert!(haystacks.len() > 2, "the journal has files");
    for (name, hay) in &haystacks {
        for s in &secrets {
            assert!(
                !hay.windows(s.len()).any(|w| w == &s[..]),
                "{name} holds a key or PIN block"
            );
        }
    }
}

fn load(target: SocketAddr, keys: &Path) -> loadtest::Report {
    let target = target.to_string();
    let keys = keys.display().to_string();
    let argv = [
        "--target",
        &target,
        "--no-progress",
        "-c",
        "4",
        "-d",
        "1s",
        "--warmup",
        "200ms",
        "--timeout",
        "2s",
        "--pin",
        "--mac",
        "--terminal-keys",
        &keys,
    ];
    loadtest_run(&argv)
}

// ---- the same through a network HSM: `switchyard hsm-sim` ----------------

/// `switchyard hsm-sim` as a process over the test's LMK and key store,
/// with a control port; killed when dropped.
struct HsmSim {
    child: tokio::process::Child,
    addr: SocketAddr,
    control: tokio::net::TcpStream,
}

impl HsmSim {
    async fn start(k: &Keys, listen: &str) -> HsmSim {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "hsm-sim",
                "--listen",
                listen,
                "--control",
                "127.0.0.1:0",
                "--lmk",
            ])
            .arg(&k.lmk)
            .arg("--keys")
            .arg(&k.store)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("hsm-sim starts");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next_addr = async |marker: &str| {
            let line = tokio::time::timeout(GUARD, lines.next_line())
                .await
                .expect("a banner line in time")
                .expect("reads")
                .expect("a line");
            line.split(marker)
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"))
        };
        let addr = next_addr("listening on ").await;
        let control = next_addr("control on ").await;
        let control = tokio::net::TcpStream::connect(control)
            .await
            .expect("control connects");
        HsmSim {
            child,
            addr,
            control,
        }
    }

    /// A control command (`hold`, `release`), answered `ok`.
    async fn command(&mut self, cmd: &str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.control
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("control write");
        let mut ok = [0u8; 3];
        tokio::time::timeout(GUARD, self.control.read_exact(&mut ok))
            .await
            .expect("control answers in time")
            .expect("control read");
        assert_eq!(&ok, b"ok\n", "{cmd}");
    }

    async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }
}

/// `[security]` with `hsm = "payshield"` at `hsm`: the profiles of
/// `security_toml` but the AES DUKPT one, no LMK file (the HSM holds it) and no card hash key
/// (it is used in the process).
fn payshield_toml(k: &Keys, hsm: SocketAddr, timeout_ms: u64) -> String {
    let soft = security_toml(k, "require");
    let profiles = &soft[soft.find("[[security.terminals]]").expect("profiles")..];
    // Without the AES DUKPT profile: X9.24-3 is the soft HSM's.
    let aes = profiles
        .find("[[security.terminals]]\nname = \"aes-dukpt-fleet\"")
        .expect("the AES DUKPT profile");
    let profiles = &profiles[..aes];
    format!(
        r#"
[security]
hsm = "payshield"
key_store = "{store}"

[security.payshield]
address = "{hsm}"
timeout_ms = {timeout_ms}
max_in_flight = 64

{profiles}"#,
        store = k.store.display(),
    )
}

/// The zone, its keys through the HSM.
fn payshield_zone() -> String {
    ZONE.to_owned()
}

/// Cards of this prefix go to `acquirer-b`, a host without card security
/// (when the test gives one).
const PLAIN_PAN: &str = "5555555555554444";

async fn payshield_switch(
    k: &Keys,
    sim: &SimHandle,
    hsm: &HsmSim,
    timeout_ms: u64,
) -> switchyard::switch::server::Switch {
    payshield_switch_with(k, sim, None, hsm, timeout_ms).await
}

/// As `payshield_switch`, with `plain` as `acquirer-b`'s host.
async fn payshield_switch_with(
    k: &Keys,
    sim: &SimHandle,
    plain: Option<&SimHandle>,
    hsm: &HsmSim,
    timeout_ms: u64,
) -> switchyard::switch::server::Switch {
    let mut routing = "default = \"acquirer-a\"\n".to_owned();
    let mut extra = String::new();
    if let Some(p) = plain {
        routing.push_str("[[routing.routes]]\nprefix = \"5\"\nacquirer = \"acquirer-b\"\n");
        extra = format!(
            "[[acquirers]]\nname = \"acquirer-b\"\nlinks = [\"{}\"]\nconnect_timeout_ms = 500\n\
             backoff_initial_ms = 20\nbackoff_max_ms = 200\n",
            p.local_addr()
        );
    }
    extra.push_str(&payshield_toml(k, hsm.addr, timeout_ms));
    let toml = config_routed(&[sim.local_addr()], &payshield_zone(), &routing, &extra);
    let switch = start_switch(&toml).await;
    wait_links_up(&switch).await;
    switch
}

#[tokio::test]
async fn through_a_payshield_pin_translated_macs_both_ways_63_and_81() {
    let k = key_store();
    let hsm = HsmSim::start(&k, "127.0.0.1:0").await;
    let sim = host(ZAK).await;
    let switch = payshield_switch(&k, &sim, &hsm, 2_000).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;

    // PIN translated by the HSM, the MAC checked by it, the zone's MAC
    // made by it (the host checks both), the host's answer's checked and
    // the terminal's answer MACed by it.
    let answer = t.request(&secured_request(101, TID, TPK, true)).await;
    assert_eq!(
        code(&answer),
        "00",
        "approved by a host that checked PIN and MAC"
    );
    assert!(
        answer_mac_is_the_terminals(&answer),
        "the answer carries a MAC under the TAK"
    );
    let s = sim.stats();
    assert_eq!(
        (s.pin_verified, s.pin_refused, s.mac_refused),
        (1, 0, 0),
        "{s}"
    );

    // A tampered MAC: 63, not forwarded.
    let mut tampered = secured_request(102, TID, TPK, true).to_vec();
    let msg = Message::parse(Bytes::from(tampered.clone()), specs::iso87ascii()).expect("parses");
    let amount_at =
        msg.field(4).expect("DE4").as_ptr() as usize - msg.frame().as_ptr() as usize + 11;
    tampered[amount_at] = b'9';
    assert_eq!(code(&t.request(&tampered).await), "63");
    // A missing one too.
    assert_eq!(
        code(&t.request(&secured_request(103, TID, TPK, false)).await),
        "63"
    );

    // A PIN under a wrong key: 81, MACed, not forwarded.
    let answer = t.request(&secured_request(104, TID, OTHER, true)).await;
    assert_eq!(code(&answer), "81");
    assert!(
        answer_mac_is_the_terminals(&answer),
        "a refusal is MACed too"
    );
    assert_eq!(transactions_at(&sim), 1, "only the first reached the host");

    // DUKPT (the jPOS vector) through the HSM's G0.
    let base = auth_from(Mti::FINANCIAL, 105, "4012345678909", 1_000, "DUKPT001");
    let msg = Message::parse(base, specs::iso87ascii()).expect("parses");
    let block = switchyard::hex::parse_hex("1B9C1845EB993A7A").expect("hex");
    let mut b = MessageBuilder::new(specs::iso87ascii(), msg.mti());
    b.copy_all(&msg)
        .set(52, &block)
        .set(62, b"FFFF9876543210E00001");
    assert_eq!(code(&t.request(&b.to_bytes().expect("packs")).await), "00");
    assert_eq!(
        sim.stats().pin_verified,
        2,
        "the host found PIN 1234 under its ZPK"
    );
    switch.shutdown().await;
    hsm.kill().await;
}

#[tokio::test]
async fn through_a_payshield_a_wrong_host_mac_is_91_and_reversed() {
    let k = key_store();
    let hsm = HsmSim::start(&k, "127.0.0.1:0").await;
    let sim = host(OTHER).await;
    let switch = payshield_switch(&k, &sim, &hsm, 2_000).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    assert_eq!(
        code(&t.request(&secured_request(110, TID, TPK, true)).await),
        "91"
    );
    let reversed = sim
        .wait_until(GUARD, |s| {
            s.received().iter().any(|r| r.mti == Mti::REVERSAL_ADVICE)
        })
        .await;
    assert!(
        reversed,
        "a 0420 was sent for the request the host may have approved"
    );
    switch.shutdown().await;
    hsm.kill().await;
}

#[tokio::test]
async fn a_held_payshield_gives_96_in_its_timeout_while_other_requests_flow_and_a_restarted_one_00()
{
    const TIMEOUT_MS: u64 = 600;
    let k = key_store();
    let mut hsm = HsmSim::start(&k, "127.0.0.1:0").await;
    let sim = host(ZAK).await;
    // A host without card security, for requests that need no HSM at all.
    let plain_host = start_sim().await;
    let switch = payshield_switch_with(&k, &sim, Some(&plain_host), &hsm, TIMEOUT_MS).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    assert_eq!(
        code(&t.request(&secured_request(120, TID, TPK, true)).await),
        "00"
    );

    // Held: commands are read and never answered. A secured request waits
    // for its MAC check; a terminal without card security on the same
    // connection is answered meanwhile.
    hsm.command("hold").await;
    let sent = std::time::Instant::now();
    t.send(&secured_request(121, TID, TPK, true)).await;
    t.send(&auth_from(
        Mti::FINANCIAL,
        122,
        PLAIN_PAN,
        1_000,
        "PLAIN001",
    ))
    .await;
    let first = t.recv().await;
    assert_eq!(
        (first.stan(), code(&first).as_str()),
        (Some(122), "00"),
        "the plain request is answered while the other waits for the HSM"
    );
    let second = t.recv().await;
    let took = sent.elapsed();
    assert_eq!((second.stan(), code(&second).as_str()), (Some(121), "96"));
    assert!(
        took >= std::time::Duration::from_millis(TIMEOUT_MS - 50)
            && took < std::time::Duration::from_millis(TIMEOUT_MS + 3_000),
        "96 at the HSM's timeout: {took:?}"
    );
    assert!(
        second.mac_parts().is_err(),
        "without a MAC: the HSM is what failed"
    );
    assert_eq!(
        transactions_at(&sim),
        1,
        "the held one never reached the host"
    );

    // Released: 00 again.
    hsm.command("release").await;
    assert_eq!(
        code(&t.request(&secured_request(123, TID, TPK, true)).await),
        "00"
    );

    // Stopped: 96 at once (the connection is down), plain requests still
    // answered.
    let addr = hsm.addr;
    hsm.kill().await;
    let mut stan = 130;
    let down = tokio::time::timeout(GUARD, async {
        loop {
            stan += 1;
            let a = t.request(&secured_request(stan, TID, TPK, true)).await;
            if code(&a) == "96" {
                return sent_quickly(&mut t, stan).await;
            }
        }
    })
    .await
    .expect("96 once the HSM is gone");
    assert!(
        down < std::time::Duration::from_millis(TIMEOUT_MS),
        "{down:?}"
    );
    stan += 1;
    let plain = t
        .request(&auth_from(
            Mti::FINANCIAL,
            stan,
            PLAIN_PAN,
            1_000,
            "PLAIN001",
        ))
        .await;
    assert_eq!(code(&plain), "00");

    // Restarted on the same port: the client reconnects, 00 again.
    let again = HsmSim::start(&k, &addr.to_string()).await;
    let back = tokio::time::timeout(GUARD, async {
        loop {
            stan += 1;
            let a = t.request(&secured_request(stan, TID, TPK, true)).await;
            if code(&a) == "00" {
                return a;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("00 once the HSM is back");
    assert!(answer_mac_is_the_terminals(&back));
    switch.shutdown().await;
    again.kill().await;
}

/// How long a secured request takes to be answered 96 while the HSM is
/// down (the one before it was answered 96 too).
async fn sent_quickly(t: &mut Terminal, stan: u32) -> std::time::Duration {
    let at = std::time::Instant::now();
    let a = t
        .request(&secured_request(stan + 1000, TID, TPK, true))
        .await;
    assert_eq!(code(&a), "96");
    at.elapsed()
}

#[test]
fn check_config_names_what_payshield_refuses() {
    let k = key_store();
    let hsm: SocketAddr = "127.0.0.1:1500".parse().expect("addr");
    let sim: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let mut security = payshield_toml(&k, hsm, 1_000)
        .replace("address = \"127.0.0.1:1500\"\n", "address = \"no port\"\n")
        .replace(
            "max_in_flight = 64",
            "max_in_flight = 64\nheader_length = 1",
        );
    security = security.replacen(
        "hsm = \"payshield\"\n",
        &format!(
            "hsm = \"payshield\"\nlmk_file = \"{}\"\ncard_hash_key = \"rest.hmac\"\n",
            k.lmk.display()
        ),
        1,
    );
    let toml = config(&[sim], ZONE, &security);
    let problems = switchyard::switch::config::Config::parse(&toml).expect_err("refused");
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    for want in [
        "security.payshield.address: `no port` is not host:port",
        "security.payshield.max_in_flight: 64: a header of 1 characters numbers only 36",
        "security.lmk_file: not with hsm = \"payshield\"",
        "security.card_hash_key: not with hsm = \"payshield\"",
    ] {
        assert!(
            text.iter().any(|p| p.starts_with(want)),
            "{want}: {text:#?}"
        );
    }
    // Without its table: the address is what is missing.
    let toml = config(
        &[sim],
        &payshield_zone(),
        &payshield_toml(&k, hsm, 1_000)
            .replace("[security.payshield]\naddress = \"127.0.0.1:1500\"\n", ""),
    );
    let text: Vec<String> = switchyard::switch::config::Config::parse(&toml)
        .expect_err("refused")
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(
        text.iter()
            .any(|p| p.starts_with("security.payshield.address: required")),
        "{text:#?}"
    );
    // Key exchange runs through the HSM: a zone's ZMK and a profile's TMK
    // are taken, and checked against the store's blocks.
    assert!(
        !text.iter().any(|p| p.contains("tmk") || p.contains("zmk")),
        "{text:#?}"
    );
    let toml = config(
        &[sim],
        &ZONE.replace("acq.zmk", "acq.nozmk"),
        &payshield_toml(&k, hsm, 1_000),
    );
    let text: Vec<String> = switchyard::switch::config::Config::parse(&toml)
        .expect_err("refused")
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(
        text.iter()
            .any(|p| p.starts_with("acquirers[0].security.zmk: no zmk key named `acq.nozmk`")),
        "{text:#?}"
    );
    // And the keys named are checked against the store's blocks, no LMK.
    let toml = config(
        &[sim],
        &payshield_zone().replace("acq.zak", "acq.nope"),
        &payshield_toml(&k, hsm, 1_000),
    );
    let text: Vec<String> = switchyard::switch::config::Config::parse(&toml)
        .expect_err("refused")
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(
        text.iter()
            .any(|p| p.starts_with("acquirers[0].security.mac_key: no zak key named `acq.nope`")),
        "{text:#?}"
    );
    // An AES BDK (X9.24-3 DUKPT) is the soft HSM's.
    let toml = config(
        &[sim],
        &payshield_zone(),
        &(payshield_toml(&k, hsm, 1_000)
            + "\n[[security.terminals]]\nterminal_ids = [\"DUKPTA01\"]\n\
               dukpt_bdk = \"fleet.aesbdk\"\nksn_field = 62\n"),
    );
    let text: Vec<String> = switchyard::switch::config::Config::parse(&toml)
        .expect_err("refused")
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(
        text.iter().any(|p| p.starts_with(
            "security.terminals[4].dukpt_bdk: `fleet.aesbdk` is an AES BDK: AES DUKPT (X9.24-3) runs on the soft HSM only"
        )),
        "{text:#?}"
    );
    // A valid one parses.
    let toml = config(&[sim], &payshield_zone(), &payshield_toml(&k, hsm, 1_000));
    switchyard::switch::config::Config::parse(&toml).expect("a payshield config");
}

#[tokio::test]
async fn through_a_payshield_a_load_test_with_pin_and_mac_is_clean_and_leaves_no_secret_behind() {
    let log = Captured::install();
    let k = key_store();
    let hsm = HsmSim::start(&k, "127.0.0.1:0").await;
    let sim = host(ZAK).await;
    let toml = config(
        &[sim.local_addr()],
        &payshield_zone(),
        &payshield_toml(&k, hsm.addr, 2_000),
    );
    let journal_dir = journal_dir_of(&toml);
    let switch = start_switch(&toml).await;
    wait_links_up(&switch).await;
    let api_config = secured_load_is_clean(&switch, &k, &sim, 140).await;
    switch.shutdown().await;
    hsm.kill().await;
    assert_no_secret_in(&journal_dir, api_config, &log);
}

#[tokio::test]
async fn through_a_payshield_a_host_changes_the_zone_keys_under_the_zmk() {
    let k = key_store();
    let hsm = HsmSim::start(&k, "127.0.0.1:0").await;
    a_host_changes_the_zone_keys(|host| {
        config(&[host], ZONE, &payshield_toml(&k, hsm.addr, 2_000))
    })
    .await;
    // The imported blocks are the store's: a restarted switch has them.
    let lmk = Lmk::load(&k.lmk).expect("lmk");
    let store = KeyStore::open(&k.store, &lmk).expect("the rewritten store opens under the LMK");
    let zpk2 = tdes("1111111111111111EEEEEEEEEEEEEEEE");
    assert_eq!(store.entry("acq.zpk").expect("acq.zpk").kcv, zpk2.kcv());
    hsm.kill().await;
}

#[tokio::test]
async fn through_a_payshield_a_terminal_gets_new_keys_and_its_old_ones_end_with_the_overlap() {
    const TERMINAL: &str = "TERMK001";
    let k = key_store();
    let hsm = HsmSim::start(&k, "127.0.0.1:0").await;
    let sim = host(ZAK).await;
    // Long enough for the requests right after the change on a busy
    // machine; the test waits it out below.
    let security = payshield_toml(&k, hsm.addr, 2_000).replacen(
        "hsm = \"payshield\"\n",
        "hsm = \"payshield\"\nkey_overlap_ms = 3000\n",
        1,
    );
    let toml = config(&[sim.local_addr()], ZONE, &security);
    let switch = start_switch(&toml).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;

    let answer = t.request(&key_change_request(40, TERMINAL)).await;
    assert_eq!(code(&answer), "00");
    let new = keys_under_the_tmk(&answer);
    let (tpk2, tak2) = (&new[0], &new[1]);
    assert_ne!(tpk2.kcv(), tdes(TPK).kcv(), "a new TPK");
    assert_ne!(tak2.kcv(), tdes(TAK).kcv(), "a new TAK");

    // The new keys are the HSM's for this terminal: its PIN and MAC are
    // checked under them, and its answers MACed under the new TAK.
    let answer = t
        .request(&request_under(41, TERMINAL, tpk2, Some(tak2)))
        .await;
    assert_eq!(code(&answer), "00", "the new keys are taken");
    let parts = answer.mac_parts().expect("a MACed answer");
    switchyard::security::hsm::soft::verify_mac(tak2, MacAlgorithm::Retail, parts.data, &parts.mac)
        .expect("the answer is MACed under the new TAK");
    // The old ones during their overlap too; then refused, by the MAC (63)
    // first, by the PIN (81) with the new TAK.
    let mut approved_old = 0;
    let deadline = tokio::time::Instant::now() + GUARD;
    let refused = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old keys are still taken long after their overlap"
        );
        let stan = 42 + approved_old;
        let answer = t
            .request(&request_under(stan, TERMINAL, &tdes(TPK), Some(&tdes(TAK))))
            .await;
        match code(&answer).as_str() {
            "00" => approved_old += 1,
            other => break other.to_owned(),
        }
    };
    assert!(
        approved_old >= 1,
        "the old keys are taken during the overlap"
    );
    // The MAC and the PIN are two commands: the overlap may end between
    // them, and the first refusal be the PIN's.
    assert!(
        refused == "63" || refused == "81",
        "the end of the overlap refuses the old keys: {refused}"
    );
    let answer = t
        .request(&request_under(899, TERMINAL, &tdes(TPK), Some(&tdes(TAK))))
        .await;
    assert_eq!(
        code(&answer),
        "63",
        "after the overlap the old TAK's MAC is refused"
    );
    let answer = t
        .request(&request_under(900, TERMINAL, &tdes(TPK), Some(tak2)))
        .await;
    assert_eq!(code(&answer), "81", "and a PIN under the old TPK");
    let s = sim.stats();
    assert_eq!(s.pin_verified, 1 + u64::from(approved_old), "{s}");
    assert_eq!(transactions_at(&sim), 1 + approved_old as usize);
    switch.shutdown().await;
    hsm.kill().await;

    // The key store on disk has the new blocks, under the LMK.
    let lmk = Lmk::load(&k.lmk).expect("lmk");
    let store = KeyStore::open(&k.store, &lmk).expect("the rewritten store opens under the LMK");
    assert_eq!(store.entry("t-TERMK001.tpk").expect("tpk").kcv, tpk2.kcv());
    assert_eq!(store.entry("t-TERMK001.tak").expect("tak").kcv, tak2.kcv());
}

#[tokio::test]
async fn through_a_held_payshield_a_key_change_is_96_and_changes_nothing() {
    const TERMINAL: &str = "TERMK001";
    let k = key_store();
    let before = std::fs::read(&k.store).expect("store");
    let mut hsm = HsmSim::start(&k, "127.0.0.1:0").await;
    let sim = host(ZAK).await;
    let switch = payshield_switch(&k, &sim, &hsm, 300).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    hsm.command("hold").await;
    let answer = t.request(&key_change_request(50, TERMINAL)).await;
    assert_eq!(code(&answer), "96");
    assert!(answer.field(48).is_none(), "no keys without the HSM's");
    hsm.command("release").await;
    // The terminal's keys are what they were.
    let answer = t
        .request(&request_under(51, TERMINAL, &tdes(TPK), Some(&tdes(TAK))))
        .await;
    assert_eq!(code(&answer), "00");
    assert_eq!(std::fs::read(&k.store).expect("store"), before);
    switch.shutdown().await;
    hsm.kill().await;
}
