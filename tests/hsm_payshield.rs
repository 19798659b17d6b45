//! The payShield client against `switchyard hsm-sim` as a process, over
//! 127.0.0.1: for the same key store and inputs it answers as the soft
//! HSM does (PIN translation from TPK, ZPK and DUKPT, to formats 0 and 4;
//! retail and AES-CMAC MACs made and verified, a changed one refused; a
//! wrong PIN key; unknown keys; generated keys under the LMK and a ZMK);
//! 200 calls at once on two connections, answered out of order, each
//! matched by its header; a slow HSM times out and a full client says
//! busy; a killed HSM fails the call in flight, a restarted one is used
//! again; the emulator's answers to bad input over a raw socket (error
//! codes, closes, its connection limit). Readiness is the emulator's "listening on" line and the
//! client's connection watch, never a sleep.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

use switchyard::security::dukpt::Ksn;
use switchyard::security::hsm::payshield::{KeyBlocks, PayShieldClient, PayShieldConfig};
use switchyard::security::hsm::soft::{SoftHsm, full_mac, import_tdes_under_kek};
use switchyard::security::hsm::{
    HsmCommand, HsmError, HsmReply, KeyName, MacAlgorithm, MacValue, PinSource,
};
use switchyard::security::keyblock;
use switchyard::security::keys::{Algorithm, SecretKey};
use switchyard::security::lmk::Lmk;
use switchyard::security::pinblock::{self, EncryptedPinBlock, Pin, PinFormat};
use switchyard::security::random;
use switchyard::security::store::{KeyStore, KeyType};

const GUARD: Duration = Duration::from_secs(20);
const PAN: &str = "4012345678909";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    switchyard::hex::parse_hex(s).expect("hex")
}

fn tdes(h: &str) -> SecretKey {
    SecretKey::from_hex(Algorithm::Tdes, h).expect("key")
}

/// An LMK file and a key store under it, with the clear keys kept for
/// checking what comes back.
struct Keys {
    _dir: tempfile::TempDir,
    lmk_path: PathBuf,
    store_path: PathBuf,
    lmk: Lmk,
    clear: Vec<(String, SecretKey)>,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().expect("dir");
        let lmk = Lmk::from_components(&[
            random::key(Algorithm::Aes, 32).expect("c1"),
            random::key(Algorithm::Aes, 32).expect("c2"),
        ])
        .expect("lmk");
        let lmk_path = dir.path().join("lmk");
        lmk.save_new(&lmk_path).expect("lmk file");
        let store_path = dir.path().join("keys.toml");
        let mut store = KeyStore::create(&store_path, &lmk).expect("store");
        let rnd = |a, n| random::key(a, n).expect("key");
        let clear = vec![
            ("t.tpk".to_owned(), KeyType::Tpk, rnd(Algorithm::Tdes, 16)),
            ("a.zpk".to_owned(), KeyType::Zpk, rnd(Algorithm::Tdes, 16)),
            ("b.zpk".to_owned(), KeyType::Zpk, rnd(Algorithm::Tdes, 16)),
            ("a4.zpk".to_owned(), KeyType::Zpk, rnd(Algorithm::Aes, 16)),
            (
                "z.bdk".to_owned(),
                KeyType::Bdk,
                tdes("0123456789ABCDEFFEDCBA9876543210"),
            ),
            ("t.tak".to_owned(), KeyType::Tak, rnd(Algorithm::Tdes, 16)),
            ("t.cmac".to_owned(), KeyType::Tak, rnd(Algorithm::Aes, 32)),
            ("z.zmk".to_owned(), KeyType::Zmk, rnd(Algorithm::Tdes, 16)),
            ("z4.zmk".to_owned(), KeyType::Zmk, rnd(Algorithm::Aes, 32)),
        ];
        for (name, t, key) in &clear {
            store.add(&lmk, name, *t, key).expect("add");
        }
        store.save().expect("save");
        Keys {
            _dir: dir,
            lmk_path,
            store_path,
            lmk,
            clear: clear.into_iter().map(|(n, _, k)| (n, k)).collect(),
        }
    }

    fn key(&self, name: &str) -> &SecretKey {
        &self
            .clear
            .iter()
            .find(|(n, _)| n == name)
            .expect("a test key")
            .1
    }

    fn soft(&self) -> SoftHsm {
        let lmk = Lmk::load(&self.lmk_path).expect("lmk");
        SoftHsm::open(&self.store_path, lmk).expect("soft HSM")
    }

    fn blocks(&self) -> Arc<KeyBlocks> {
        Arc::new(KeyBlocks::open(&self.store_path).expect("blocks"))
    }
}

/// `switchyard hsm-sim` on `listen`, killed when dropped.
struct Sim {
    child: Child,
    addr: SocketAddr,
}

impl Sim {
    async fn start(keys: &Keys, listen: &str, extra: &[&str]) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["hsm-sim", "--listen", listen, "--lmk"])
            .arg(&keys.lmk_path)
            .arg("--keys")
            .arg(&keys.store_path)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("hsm-sim starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        timeout(GUARD, BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("the banner in time")
            .expect("reads the banner");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        assert!(line.contains("9 keys in the store"), "{line}");
        Sim { child, addr }
    }

    /// Kills the emulator and returns what it logged.
    async fn kill(mut self) -> String {
        self.child.kill().await.expect("kill");
        let mut log = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut log).await.expect("log");
        }
        log
    }
}

fn client(
    addr: SocketAddr,
    keys: Arc<KeyBlocks>,
    f: impl FnOnce(&mut PayShieldConfig),
) -> PayShieldClient {
    let mut config = PayShieldConfig {
        addr: addr.to_string(),
        timeout: Duration::from_secs(5),
        ..PayShieldConfig::default()
    };
    f(&mut config);
    PayShieldClient::start(config, keys).expect("client")
}

fn name(s: &str) -> KeyName {
    KeyName::from(s)
}

fn pin_block(key: &SecretKey, format: PinFormat) -> EncryptedPinBlock {
    let pin = Pin::new("1234").expect("pin");
    let mut fill = [0u8; 8];
    random::fill(&mut fill).expect("random");
    pinblock::encrypt(key, format, &pin, PAN, &fill).expect("encrypt")
}

fn translate(source: PinSource, to: &str, block: EncryptedPinBlock, f: PinFormat) -> HsmCommand {
    HsmCommand::TranslatePin {
        source,
        to: name(to),
        block,
        to_format: f,
        pan: PAN.into(),
    }
}

fn pin_of(reply: &Result<HsmReply, HsmError>) -> &EncryptedPinBlock {
    match reply {
        Ok(HsmReply::Pin(b)) => b,
        other => panic!("not a PIN block: {other:?}"),
    }
}

fn assert_pin_1234(key: &SecretKey, block: &EncryptedPinBlock) {
    let pin = pinblock::decrypt(key, block, PAN).expect("decrypts under the ZPK");
    assert!(pin.matches("1234"));
}

fn mac_of(reply: Result<HsmReply, HsmError>) -> MacValue {
    match reply {
        Ok(HsmReply::Mac(m)) => m,
        other => panic!("not a MAC: {other:?}"),
    }
}

fn generate_mac(key: &str, algorithm: MacAlgorithm, data: &Bytes, len: usize) -> HsmCommand {
    HsmCommand::GenerateMac {
        key: name(key),
        algorithm,
        data: data.clone(),
        len,
    }
}

fn verify_mac(key: &str, algorithm: MacAlgorithm, data: &Bytes, mac: MacValue) -> HsmCommand {
    HsmCommand::VerifyMac {
        key: name(key),
        algorithm,
        data: data.clone(),
        mac,
    }
}

/// Asserts that no 8-byte run of any clear key, and no PIN block, shows
/// in `text`.
fn assert_no_secrets(keys: &Keys, blocks: &[&EncryptedPinBlock], text: &str, what: &str) {
    let hay = text.to_uppercase();
    for (name, key) in &keys.clear {
        let h = hex(key.expose_secret());
        for start in (0..=h.len() - 16).step_by(2) {
            assert!(
                !hay.contains(&h[start..start + 16]),
                "bytes of {name} in {what}"
            );
        }
    }
    for b in blocks {
        assert!(!hay.contains(&hex(b.as_bytes())), "a PIN block in {what}");
    }
}

#[tokio::test]
async fn payshield_answers_as_the_soft_hsm_does() {
    let keys = Keys::new();
    let sim = Sim::start(&keys, "127.0.0.1:0", &[]).await;
    let soft = keys.soft();
    let ps = client(sim.addr, keys.blocks(), |_| {});
    let both = |c: HsmCommand| {
        let ps = ps.clone();
        let s = soft.execute(&c);
        async move {
            (
                s,
                timeout(GUARD, ps.call(c)).await.expect("answered in time"),
            )
        }
    };
    let mut seen_blocks = Vec::new();

    // TPK -> ZPK, format 0 -> 0: deterministic, so the same block.
    let tpk_block = pin_block(keys.key("t.tpk"), PinFormat::Iso0);
    let (s, p) = both(translate(
        PinSource::Tpk(name("t.tpk")),
        "a.zpk",
        tpk_block.clone(),
        PinFormat::Iso0,
    ))
    .await;
    assert_eq!(pin_of(&s), pin_of(&p));
    assert_pin_1234(keys.key("a.zpk"), pin_of(&p));
    seen_blocks.push(tpk_block.clone());

    // ZPK -> ZPK.
    let zpk_block = pin_of(&p).clone();
    let (s, p) = both(translate(
        PinSource::Zpk(name("a.zpk")),
        "b.zpk",
        zpk_block,
        PinFormat::Iso0,
    ))
    .await;
    assert_eq!(pin_of(&s), pin_of(&p));
    assert_pin_1234(keys.key("b.zpk"), pin_of(&p));

    // DUKPT -> ZPK: jPOS's DUKPTTest vector.
    let dukpt_block =
        EncryptedPinBlock::from_bytes(PinFormat::Iso0, &unhex("1B9C1845EB993A7A")).expect("block");
    let ksn = Ksn::new(&unhex("FFFF9876543210E00001")).expect("ksn");
    let dukpt = || PinSource::Dukpt {
        bdk: name("z.bdk"),
        ksn,
    };
    let (s, p) = both(translate(
        dukpt(),
        "a.zpk",
        dukpt_block.clone(),
        PinFormat::Iso0,
    ))
    .await;
    assert_eq!(pin_of(&s), pin_of(&p));
    assert_pin_1234(keys.key("a.zpk"), pin_of(&p));

    // Format 0 -> 4 (random fill: compared by what they decrypt to), from
    // a TPK and from DUKPT.
    for source in [PinSource::Tpk(name("t.tpk")), dukpt()] {
        let block = if matches!(source, PinSource::Tpk(_)) {
            tpk_block.clone()
        } else {
            dukpt_block.clone()
        };
        let (s, p) = both(translate(source, "a4.zpk", block, PinFormat::Iso4)).await;
        assert_eq!(pin_of(&p).format(), PinFormat::Iso4);
        assert_pin_1234(keys.key("a4.zpk"), pin_of(&s));
        assert_pin_1234(keys.key("a4.zpk"), pin_of(&p));
        seen_blocks.push(pin_of(&p).clone());
    }

    // A PIN under a key that is not the TPK: a bad block for both.
    let stranger = random::key(Algorithm::Tdes, 16).expect("key");
    let (s, p) = both(translate(
        PinSource::Tpk(name("t.tpk")),
        "a.zpk",
        pin_block(&stranger, PinFormat::Iso0),
        PinFormat::Iso0,
    ))
    .await;
    assert!(matches!(s, Err(HsmError::BadPinBlock(_))), "{s:?}");
    assert!(matches!(p, Err(HsmError::BadPinBlock(_))), "{p:?}");

    // Unknown keys, keys of the wrong type, a bad PAN: the same errors,
    // found before anything is sent.
    let (s, p) = both(translate(
        PinSource::Tpk(name("nope.tpk")),
        "a.zpk",
        tpk_block.clone(),
        PinFormat::Iso0,
    ))
    .await;
    assert_eq!(s, p);
    assert_eq!(p, Err(HsmError::UnknownKey("nope.tpk".into())));
    let (s, p) = both(translate(
        PinSource::Tpk(name("a.zpk")),
        "a.zpk",
        tpk_block.clone(),
        PinFormat::Iso0,
    ))
    .await;
    assert_eq!(s, p);
    assert!(matches!(p, Err(HsmError::WrongKeyType { .. })), "{p:?}");
    let mut bad_pan = translate(
        PinSource::Tpk(name("t.tpk")),
        "a.zpk",
        tpk_block.clone(),
        PinFormat::Iso0,
    );
    if let HsmCommand::TranslatePin { pan, .. } = &mut bad_pan {
        *pan = "12345".into();
    }
    let (s, p) = both(bad_pan).await;
    assert_eq!(s, p);

    // MACs: retail and AES-CMAC, made the same, verified, a change refused;
    // a 6-byte MAC (checked by the client over the HSM's whole MAC).
    let data = Bytes::from_static(b"0200\xF2\x3C\x46\x81 an ISO 8583 message's bytes");
    for (key, algorithm, lens) in [
        ("t.tak", MacAlgorithm::Retail, &[4usize, 6, 8][..]),
        ("t.tak", MacAlgorithm::TdesCbc, &[8][..]),
        ("t.cmac", MacAlgorithm::AesCmac, &[8, 16][..]),
    ] {
        for &len in lens {
            let (s, p) = both(generate_mac(key, algorithm, &data, len)).await;
            let mac = mac_of(p);
            assert_eq!(mac_of(s), mac, "{algorithm:?} {len}");
            let (s, p) = both(verify_mac(key, algorithm, &data, mac.clone())).await;
            assert_eq!((s, p), (Ok(HsmReply::Verified), Ok(HsmReply::Verified)));
            let mut bad = mac.clone();
            bad[len - 1] ^= 0x01;
            let (s, p) = both(verify_mac(key, algorithm, &data, bad)).await;
            assert_eq!(
                (s, p),
                (Err(HsmError::MacMismatch), Err(HsmError::MacMismatch))
            );
            let mut changed = data.to_vec();
            changed[0] ^= 0x01;
            let (s, p) = both(verify_mac(key, algorithm, &Bytes::from(changed), mac)).await;
            assert_eq!(
                (s, p),
                (Err(HsmError::MacMismatch), Err(HsmError::MacMismatch))
            );
        }
    }
    let (s, p) = both(generate_mac("t.cmac", MacAlgorithm::Retail, &data, 8)).await;
    assert!(
        matches!(
            (&s, &p),
            (Err(HsmError::BadInput(_)), Err(HsmError::BadInput(_)))
        ),
        "{s:?} {p:?}"
    );
    let (s, p) = both(generate_mac("t.tak", MacAlgorithm::Retail, &data, 9)).await;
    assert_eq!(s, p);

    // Diagnostics: the same LMK.
    let (s, p) = both(HsmCommand::Diagnostics).await;
    let (
        Ok(HsmReply::Diagnostics { lmk_kcv: a, .. }),
        Ok(HsmReply::Diagnostics {
            lmk_kcv: b,
            firmware,
        }),
    ) = (s, p)
    else {
        panic!("diagnostics")
    };
    assert_eq!((a, b), (keys.lmk.kcv(), keys.lmk.kcv()));
    assert!(!firmware.is_empty());
    assert_eq!(ps.lmk_matches().await, Ok(Some(true)));

    // Generated keys: under the LMK, and under a TDES and an AES ZMK.
    for (zmk, algorithm) in [("z.zmk", Algorithm::Tdes), ("z4.zmk", Algorithm::Aes)] {
        let r = ps
            .call(HsmCommand::GenerateKey {
                key_type: KeyType::Zpk,
                algorithm,
                export_under: Some(name(zmk)),
                label: None,
            })
            .await;
        let Ok(HsmReply::Key {
            block,
            exported,
            kcv,
        }) = r
        else {
            panic!("not a key: {r:?}")
        };
        let (header, under_lmk) = keyblock::unwrap(keys.lmk.key(), &block).expect("under the LMK");
        assert_eq!(header.block("10"), Some("ZPK"));
        assert_eq!(under_lmk.kcv(), kcv);
        let exported = exported.expect("exported");
        let under_zmk = match algorithm {
            Algorithm::Tdes => {
                import_tdes_under_kek(keys.key(zmk), &exported).expect("under the ZMK")
            }
            Algorithm::Aes => {
                keyblock::unwrap(keys.key(zmk), &exported)
                    .expect("under the ZMK")
                    .1
            }
        };
        assert_eq!(under_zmk.kcv(), kcv);
    }
    let (s, p) = both(HsmCommand::GenerateKey {
        key_type: KeyType::Zpk,
        algorithm: Algorithm::Aes,
        export_under: Some(name("z.zmk")),
        label: None,
    })
    .await;
    assert_eq!(s, p);

    // A block under another LMK: the HSM refuses it (key block
    // authentication failure), by its code.
    let other = Keys::new();
    let stray = client(sim.addr, other.blocks(), |_| {});
    assert_eq!(stray.lmk_matches().await, Ok(Some(false)));
    let r = stray
        .call(generate_mac("t.tak", MacAlgorithm::Retail, &data, 8))
        .await;
    assert_eq!(
        r,
        Err(HsmError::Refused {
            code: "A4".into(),
            meaning: "key block authentication failure".into()
        })
    );

    let log = sim.kill().await;
    let refs: Vec<&EncryptedPinBlock> = seen_blocks.iter().collect();
    assert_no_secrets(&keys, &refs, &log, "the emulator's log");
}

/// Random digits from the OS.
fn digits(n: usize) -> String {
    let mut b = vec![0u8; n];
    random::fill(&mut b).expect("random");
    b.iter().map(|x| char::from(b'0' + x % 10)).collect()
}

#[tokio::test]
async fn random_pins_pans_and_formats_translate_as_the_soft_hsm_does() {
    // PANs of 8 to 19 digits (the 12N account field is zero-padded below
    // 13), PINs of 4 to 12, every pair of formats the keys allow.
    let keys = Keys::new();
    let sim = Sim::start(&keys, "127.0.0.1:0", &[]).await;
    let soft = keys.soft();
    let ps = client(sim.addr, keys.blocks(), |_| {});
    let mut len = [0u8; 2];
    for i in 0..120usize {
        random::fill(&mut len).expect("random");
        let pan = digits(8 + usize::from(len[0]) % 12);
        let pin_text = digits(4 + usize::from(len[1]) % 9);
        let pin = Pin::new(&pin_text).expect("pin");
        // Source: the TPK (format 0) or the AES ZPK (format 4).
        let (source, from_key, from_format) = if i % 2 == 0 {
            (PinSource::Tpk(name("t.tpk")), "t.tpk", PinFormat::Iso0)
        } else {
            (PinSource::Zpk(name("a4.zpk")), "a4.zpk", PinFormat::Iso4)
        };
        // Target: a TDES ZPK (format 0) or the AES one (format 4).
        let (to, to_format) = match (i / 2) % 3 {
            0 => ("a.zpk", PinFormat::Iso0),
            1 => ("b.zpk", PinFormat::Iso0),
            _ => ("a4.zpk", PinFormat::Iso4),
        };
        let mut fill = [0u8; 8];
        random::fill(&mut fill).expect("random");
        let block =
            pinblock::encrypt(keys.key(from_key), from_format, &pin, &pan, &fill).expect("encrypt");
        let cmd = HsmCommand::TranslatePin {
            source,
            to: name(to),
            block,
            to_format,
            pan: pan.clone(),
        };
        let s = soft.execute(&cmd);
        let p = ps.call(cmd).await;
        let (s, p) = (pin_of(&s), pin_of(&p));
        assert_eq!(p.format(), to_format);
        if to_format == PinFormat::Iso0 {
            assert_eq!(s, p, "case {i}: PAN of {} digits", pan.len());
        }
        let back = pinblock::decrypt(keys.key(to), p, &pan).expect("decrypts");
        assert!(back.matches(&pin_text), "case {i}");
    }
    drop(sim);
}

#[tokio::test]
async fn two_hundred_calls_at_once_are_each_matched_by_header() {
    let keys = Keys::new();
    // Up to 20 ms of random delay per answer: they come back out of order.
    // A 3-character header on both sides (46,656 numbers).
    let sim = Sim::start(
        &keys,
        "127.0.0.1:0",
        &["--jitter-ms", "20", "--header-len", "3"],
    )
    .await;
    let soft = Arc::new(keys.soft());
    let ps = client(sim.addr, keys.blocks(), |c| {
        c.connections = 2;
        c.max_in_flight = 256;
        c.header_len = 3;
    });
    ps.wait_connected().await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let (ps, soft) = (ps.clone(), soft.clone());
        set.spawn(async move {
            let data = Bytes::from(format!("message number {i}").into_bytes());
            let cmd = generate_mac("t.tak", MacAlgorithm::Retail, &data, 8);
            let want = mac_of(soft.execute(&cmd));
            let got = mac_of(ps.call(cmd).await);
            assert_eq!(got, want, "call {i}");
            i
        });
    }
    let mut done = 0;
    while let Some(r) = timeout(GUARD, set.join_next()).await.expect("in time") {
        r.expect("a call panicked");
        done += 1;
    }
    assert_eq!(done, 200);
    assert_eq!(ps.in_flight(), 0);
}

#[tokio::test]
async fn late_answers_are_dropped_never_given_to_another_call() {
    let keys = Keys::new();
    // Answers come 0 to 300 ms late against a 150 ms timeout: about half
    // arrive after their call gave up, among the answers of others.
    let sim = Sim::start(&keys, "127.0.0.1:0", &["--jitter-ms", "300"]).await;
    let soft = Arc::new(keys.soft());
    let ps = client(sim.addr, keys.blocks(), |c| {
        c.max_in_flight = 128;
        c.timeout = Duration::from_millis(150);
    });
    ps.wait_connected().await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..100u32 {
        let (ps, soft) = (ps.clone(), soft.clone());
        set.spawn(async move {
            let data = Bytes::from(format!("late {i}").into_bytes());
            let cmd = generate_mac("t.tak", MacAlgorithm::Retail, &data, 8);
            let want = mac_of(soft.execute(&cmd));
            match ps.call(cmd).await {
                Ok(HsmReply::Mac(got)) => {
                    assert_eq!(got, want, "call {i} got another's MAC");
                    true
                }
                Err(HsmError::Timeout(_)) => false,
                other => panic!("call {i}: {other:?}"),
            }
        });
    }
    let mut answered = 0;
    while let Some(r) = timeout(GUARD, set.join_next()).await.expect("in time") {
        answered += usize::from(r.expect("a call panicked"));
    }
    assert!(
        (1..100).contains(&answered),
        "{answered} of 100 in time: widen the jitter?"
    );
    // The client is still in step: a patient call gets its own answer.
    let patient = client(sim.addr, keys.blocks(), |c| {
        c.timeout = Duration::from_secs(5)
    });
    let data = Bytes::from_static(b"after the late ones");
    let cmd = generate_mac("t.tak", MacAlgorithm::Retail, &data, 8);
    assert_eq!(
        mac_of(patient.call(cmd.clone()).await),
        mac_of(soft.execute(&cmd))
    );
}

#[tokio::test]
async fn a_stalled_hsm_times_out() {
    let keys = Keys::new();
    let sim = Sim::start(&keys, "127.0.0.1:0", &["--stall"]).await;
    let ps = client(sim.addr, keys.blocks(), |c| {
        c.timeout = Duration::from_millis(200)
    });
    ps.wait_connected().await;
    let r = timeout(GUARD, ps.call(HsmCommand::Diagnostics))
        .await
        .expect("in time");
    assert_eq!(r, Err(HsmError::Timeout(Duration::from_millis(200))));
}

#[tokio::test]
async fn a_slow_hsm_times_out_and_a_full_client_is_busy() {
    let keys = Keys::new();
    let sim = Sim::start(&keys, "127.0.0.1:0", &["--delay-ms", "3000"]).await;
    let ps = client(sim.addr, keys.blocks(), |c| {
        c.max_in_flight = 2;
        c.timeout = Duration::from_millis(300);
    });
    ps.wait_connected().await;
    let mut calls = Vec::new();
    for _ in 0..2 {
        let ps = ps.clone();
        calls.push(tokio::spawn(async move {
            ps.call(HsmCommand::Diagnostics).await
        }));
    }
    // The two calls have taken their places (a permit each) once their
    // tasks ran: yield to them, no sleep.
    while ps.in_flight() < 2 {
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    assert_eq!(
        ps.call(HsmCommand::Diagnostics).await,
        Err(HsmError::Unavailable("busy".into()))
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "busy is said at once"
    );
    for c in calls {
        let r = timeout(GUARD, c).await.expect("in time").expect("task");
        assert_eq!(r, Err(HsmError::Timeout(Duration::from_millis(300))));
    }
    drop(sim);
}

#[tokio::test]
async fn a_killed_hsm_fails_its_calls_and_a_restarted_one_serves_again() {
    let keys = Keys::new();
    let sim = Sim::start(&keys, "127.0.0.1:0", &["--delay-ms", "2000"]).await;
    let addr = sim.addr;
    let ps = client(addr, keys.blocks(), |c| {
        c.backoff_min = Duration::from_millis(20);
        c.backoff_max = Duration::from_millis(100);
    });
    ps.wait_connected().await;
    let in_flight = {
        let ps = ps.clone();
        tokio::spawn(async move { ps.call(HsmCommand::Diagnostics).await })
    };
    while ps.in_flight() < 1 {
        tokio::task::yield_now().await;
    }
    let _ = sim.kill().await;
    let r = timeout(GUARD, in_flight)
        .await
        .expect("in time")
        .expect("task");
    assert!(matches!(r, Err(HsmError::Unavailable(_))), "{r:?}");
    // While it is away: unavailable, at once or after the reconnect fails.
    let r = timeout(GUARD, ps.call(HsmCommand::Diagnostics))
        .await
        .expect("in time");
    assert!(matches!(r, Err(HsmError::Unavailable(_))), "{r:?}");

    let _sim = Sim::start(&keys, &addr.to_string(), &[]).await;
    timeout(GUARD, ps.wait_connected())
        .await
        .expect("reconnects");
    let r = ps.call(HsmCommand::Diagnostics).await;
    assert!(matches!(r, Ok(HsmReply::Diagnostics { .. })), "{r:?}");
}

/// A6 through the client: a key under the ZMK comes back under the LMK
/// with its KCV; installed, it is the name's key on disk and for the
/// client, and the key it replaced is still taken for a MAC check during
/// its overlap, not after.
#[tokio::test]
async fn an_imported_key_is_installed_and_its_predecessor_taken_during_the_overlap() {
    use switchyard::security::hsm::soft::export_under_kek;
    use switchyard::security::store::header_for;
    let keys = Keys::new();
    let sim = Sim::start(&keys, "127.0.0.1:0", &[]).await;
    let blocks = keys.blocks();
    let ps = client(sim.addr, blocks.clone(), |_| {});
    timeout(GUARD, ps.wait_connected()).await.expect("connects");

    let new_tak = random::key(Algorithm::Tdes, 16).expect("key");
    let header = header_for("x", KeyType::Tak, &new_tak, &keys.lmk);
    let under = export_under_kek(keys.key("z.zmk"), &header, &new_tak).expect("export");
    let import = |zmk: &str, under: &str| HsmCommand::ImportKey {
        key_type: KeyType::Tak,
        zmk: name(zmk),
        under: under.to_owned(),
        label: Some(name("t.tak")),
    };
    let r = ps.call(import("z.zmk", &under)).await;
    let Ok(HsmReply::Key {
        block,
        exported: None,
        kcv,
    }) = r
    else {
        panic!("not an imported key: {r:?}")
    };
    assert_eq!(kcv, new_tak.kcv());
    let (header, key) = keyblock::unwrap(keys.lmk.key(), &block).expect("under the LMK");
    assert_eq!(key.kcv(), new_tak.kcv());
    assert_eq!(header.block("LB"), Some("t.tak"));
    // The client refuses what it can not send before it sends it.
    assert_eq!(
        ps.call(import("t.tpk", &under)).await,
        Err(HsmError::WrongKeyType {
            name: "t.tpk".into(),
            actual: "tpk",
            wanted: "zmk"
        })
    );
    assert!(matches!(
        ps.call(import("z.zmk", "0123")).await,
        Err(HsmError::BadInput(_))
    ));

    let data = Bytes::from_static(b"0200 a message to MAC");
    let old_mac: MacValue = full_mac(keys.key("t.tak"), MacAlgorithm::Retail, &data)
        .expect("mac")
        .into_iter()
        .take(8)
        .collect();
    let stored = switchyard::security::store::StoredBlock {
        name: "t.tak".into(),
        key_type: KeyType::Tak,
        algorithm: Algorithm::Tdes,
        kcv,
        block,
    };
    let now = switchyard::clock::unix_now_ms();
    let overlap_ms = 60_000;
    blocks
        .install(vec![stored.clone()], now, overlap_ms)
        .expect("installed");
    let new_mac = mac_of(
        ps.call(generate_mac("t.tak", MacAlgorithm::Retail, &data, 8))
            .await,
    );
    let want: MacValue = full_mac(&new_tak, MacAlgorithm::Retail, &data)
        .expect("mac")
        .into_iter()
        .take(8)
        .collect();
    assert_eq!(new_mac, want, "MACs are made under the new key");
    assert_eq!(
        ps.call(verify_mac(
            "t.tak",
            MacAlgorithm::Retail,
            &data,
            old_mac.clone()
        ))
        .await,
        Ok(HsmReply::Verified),
        "the old key's MAC is taken during the overlap"
    );
    // The file has the new block: a restart (or hsm-sim's check) reads it.
    let reread = KeyBlocks::open(&keys.store_path).expect("the rewritten store reads");
    assert_eq!(reread.get("t.tak").expect("t.tak").kcv, new_tak.kcv());
    assert_eq!(reread.len(), 9);
    let lmk = Lmk::load(&keys.lmk_path).expect("lmk");
    SoftHsm::open(&keys.store_path, lmk).expect("every block still authenticates");

    // Installed again with its overlap over: only the newest key holds.
    blocks.install(vec![stored], now, 0).expect("installed");
    assert_eq!(
        ps.call(verify_mac("t.tak", MacAlgorithm::Retail, &data, old_mac))
            .await,
        Err(HsmError::MacMismatch),
        "the old key is refused after its overlap"
    );
    // A block whose label is not its name is refused, and nothing changes.
    let mut renamed = reread.get("t.tak").expect("t.tak").as_ref().clone();
    renamed.name = "t2.tak".into();
    assert!(blocks.install(vec![renamed], now, 0).is_err());
    assert!(blocks.get("t2.tak").is_none());
}

#[test]
fn the_store_is_read_without_the_lmk_and_a_wrong_lmk_is_refused_by_the_emulator() {
    let keys = Keys::new();
    let blocks = KeyBlocks::open(&keys.store_path).expect("blocks");
    assert_eq!(blocks.len(), 9);
    assert_eq!(blocks.lmk_kcv(), Some(keys.lmk.kcv()));
    let b = blocks.get("t.tak").expect("t.tak");
    assert_eq!((b.key_type, b.algorithm), (KeyType::Tak, Algorithm::Tdes));
    assert_eq!(b.kcv, keys.key("t.tak").kcv());
    assert!(!format!("{b:?}").contains(&b.block[20..60]));

    // The emulator refuses a store under another LMK at start.
    let other = Keys::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["hsm-sim", "--listen", "127.0.0.1:0", "--lmk"])
        .arg(&other.lmk_path)
        .arg("--keys")
        .arg(&keys.store_path)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong LMK file?"), "{err}");
    let _: &Path = &keys.store_path;
}

/// One framed request over a raw socket; `None` when the emulator closed
/// the connection instead of answering.
async fn raw(stream: &mut tokio::net::TcpStream, body: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::AsyncWriteExt;
    let mut frame = (body.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    send_raw(stream, &frame).await;
    let mut len = [0u8; 2];
    timeout(GUARD, stream.read_exact(&mut len))
        .await
        .expect("in time")
        .ok()?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    timeout(GUARD, stream.read_exact(&mut answer))
        .await
        .expect("in time")
        .ok()?;
    let _ = stream.flush().await;
    Some(answer)
}

async fn send_raw(stream: &mut tokio::net::TcpStream, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    // A write to a connection the emulator already closed may fail: the
    // read after it says so.
    let _ = stream.write_all(bytes).await;
}

async fn closed(stream: &mut tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        timeout(GUARD, stream.read(&mut b)).await.expect("in time"),
        Ok(0) | Err(_)
    )
}

#[tokio::test]
async fn the_emulator_answers_bad_input_with_error_codes_and_closes_what_it_cannot_read() {
    let keys = Keys::new();
    let sim = Sim::start(&keys, "127.0.0.1:0", &["--max-connections", "2"]).await;
    let connect = || tokio::net::TcpStream::connect(sim.addr);
    let mut s = connect().await.expect("connects");
    let nd = raw(&mut s, b"0001NC").await.expect("answered");
    assert!(
        nd.starts_with(b"0001ND00"),
        "{}",
        String::from_utf8_lossy(&nd)
    );
    // A command it does not serve: 68; one it can not read: 15, the
    // header echoed either way.
    assert_eq!(
        raw(&mut s, b"0002ZZ").await.as_deref(),
        Some(&b"0002Z068"[..])
    );
    assert_eq!(
        raw(&mut s, b"0003CAS").await.as_deref(),
        Some(&b"0003CB15"[..])
    );
    assert_eq!(
        raw(&mut s, b"0004M6\xFF\x00").await.as_deref(),
        Some(&b"0004M715"[..])
    );
    // Random bodies behind a good header and code: each answered, none
    // kills the emulator.
    for i in 0..200u32 {
        let mut body = format!("{i:04}").into_bytes();
        body.extend_from_slice([&b"CA"[..], b"CC", b"G0", b"M6", b"M8", b"A0"][i as usize % 6]);
        let mut junk = vec![0u8; (i as usize * 7) % 300];
        random::fill(&mut junk).expect("random");
        body.extend_from_slice(&junk);
        let answer = raw(&mut s, &body).await.expect("answered");
        assert_eq!(&answer[..4], &body[..4]);
        assert_ne!(&answer[6..8], b"00", "junk accepted");
    }
    // No header and code: the connection is closed.
    assert_eq!(raw(&mut s, b"00").await, None);
    assert!(closed(&mut s).await);
    // A frame over --max-frame: closed before it is read.
    let mut s = connect().await.expect("connects");
    send_raw(&mut s, &[0xFF, 0xFF, b'0']).await;
    assert!(closed(&mut s).await);
    // Two connections served at once; a third is closed at once.
    let mut a = connect().await.expect("connects");
    let mut b = connect().await.expect("connects");
    assert!(raw(&mut a, b"0001NC").await.is_some());
    assert!(raw(&mut b, b"0001NC").await.is_some());
    let mut c = connect().await.expect("connects");
    assert!(closed(&mut c).await);
    // The two served ones go on being served.
    let again = raw(&mut a, b"0009NC").await.expect("answered");
    assert!(again.starts_with(b"0009ND00"));
    drop((a, b));
    let log = sim.kill().await;
    assert!(!log.contains("panicked"), "{log}");
}
