//! `switchyard keys` as an operator runs it: the LMK formed from component
//! files and from stdin, keys generated, listed, exported under a ZMK and
//! imported into another store; a wrong LMK and a changed store refused.
//! Every byte of every key (components, LMK, stored keys) is looked for in
//! everything the commands printed and in the store file: never there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use switchyard::security::lmk::Lmk;
use switchyard::security::store::KeyStore;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Everything the commands printed, for the scan at the end.
#[derive(Default)]
struct Transcript(String);

impl Transcript {
    fn keys(&mut self, dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = Command::new(BIN);
        cmd.arg("keys")
            .args(args)
            .current_dir(dir)
            .env_remove("SWITCHYARD_LMK_FILE")
            .env_remove("SWITCHYARD_KEY_STORE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn switchyard");
        {
            let mut input = child.stdin.take().expect("stdin");
            if let Some(text) = stdin {
                input.write_all(text.as_bytes()).expect("write stdin");
            }
        }
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().expect("wait");
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        self.0.push_str(&run.stdout);
        self.0.push_str(&run.stderr);
        run
    }
}

fn ok(run: &Run) -> &str {
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    &run.stdout
}

fn failed(run: &Run) -> &str {
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    &run.stderr
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn random_hex(len: usize) -> String {
    let mut b = vec![0u8; len];
    switchyard::security::random::fill(&mut b).expect("random");
    hex(&b)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// Asserts that no 8-byte run of any secret shows in `haystack` (in
/// either case): a key printed whole or in part.
fn assert_absent(secrets: &[String], haystack: &str, what: &str) {
    let hay = haystack.to_uppercase();
    for s in secrets {
        for start in (0..=s.len().saturating_sub(16)).step_by(2) {
            let piece = &s[start..start + 16];
            assert!(!hay.contains(piece), "key bytes {piece} found in {what}");
        }
    }
}

#[test]
fn keys_end_to_end() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let mut t = Transcript::default();
    let mut secrets = Vec::new();

    // The LMK from two component files, a store created with it.
    let (c1, c2) = (random_hex(32), random_hex(32));
    secrets.extend([c1.clone(), c2.clone()]);
    write(d, "c1", &c1);
    write(d, "c2", &c2);
    let run = t.keys(
        d,
        &[
            "form-lmk",
            "--out",
            "lmk",
            "--component-file",
            "c1",
            "--component-file",
            "c2",
            "--store",
            "ks.toml",
        ],
        None,
    );
    let out = ok(&run).to_owned();
    let lmk = Lmk::load(&d.join("lmk")).expect("load the LMK");
    secrets.push(hex(lmk.key().expose_secret()));
    let c1_kcv = Lmk::parse_component(1, &c1).expect("c1").kcv();
    assert!(out.contains(&format!("component 1: KCV {c1_kcv}")), "{out}");
    assert!(
        out.contains(&format!("LMK (AES-256): KCV {}", lmk.kcv())),
        "{out}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("lmk"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never over an existing LMK; never from one component.
    let e = failed(&t.keys(
        d,
        &[
            "form-lmk",
            "--out",
            "lmk",
            "--component-file",
            "c1",
            "--component-file",
            "c2",
        ],
        None,
    ))
    .to_owned();
    assert!(e.contains("never overwritten"), "{e}");
    let e = failed(&t.keys(
        d,
        &["form-lmk", "--out", "lmk1", "--component-file", "c1"],
        None,
    ))
    .to_owned();
    assert!(e.contains("at least two components"), "{e}");

    // Keys generated; the store found by its flags.
    let store = ["--store", "ks.toml", "--lmk-file", "lmk"];
    for (name, ty, alg, bits) in [
        ("term0001.tpk", "tpk", "tdes", "128"),
        ("term0001.tak", "tak", "tdes", "128"),
        ("acq1.zpk", "zpk", "aes", "128"),
        ("acq1.zak", "zak", "aes", "256"),
        ("acq1.zmk", "zmk", "aes", "256"),
        ("legacy.zmk", "zmk", "tdes", "128"),
        ("dukpt.bdk", "bdk", "tdes", "128"),
    ] {
        let mut args = vec![
            "generate",
            "--name",
            name,
            "--type",
            ty,
            "--algorithm",
            alg,
            "--bits",
            bits,
        ];
        args.extend(store);
        let out = ok(&t.keys(d, &args, None)).to_owned();
        assert!(out.starts_with(&format!("{name} ({ty}, ")), "{out}");
    }
    let mut dup = vec!["generate", "--name", "acq1.zpk", "--type", "zpk"];
    dup.extend(store);
    assert!(failed(&t.keys(d, &dup, None)).contains("already in the store"));
    let mut bad = vec![
        "generate",
        "--name",
        "x",
        "--type",
        "zpk",
        "--algorithm",
        "aes",
        "--bits",
        "100",
    ];
    bad.extend(store);
    failed(&t.keys(d, &bad, None));

    let ks = KeyStore::open(&d.join("ks.toml"), &lmk).expect("open");
    let mut list = vec!["list"];
    list.extend(store);
    let listing = ok(&t.keys(d, &list, None)).to_owned();
    for e in ks.entries() {
        let (_, key) = ks.get(&e.name, &lmk).expect("get");
        secrets.push(hex(key.expose_secret()));
        let line = listing
            .lines()
            .find(|l| l.starts_with(&e.name))
            .unwrap_or_else(|| panic!("{} not listed: {listing}", e.name));
        assert!(
            line.contains(&key.kcv().to_string()) && line.contains(e.key_type.name()),
            "{line}"
        );
    }
    assert!(
        listing.contains("dukpt.bdk") && listing.contains("B0"),
        "{listing}"
    );

    // Export under the AES ZMK and the TDES ZMK; a BDK never.
    let mut export = vec!["export", "--name", "term0001.tpk", "--under", "acq1.zmk"];
    export.extend(store);
    let exported = ok(&t.keys(d, &export, None)).to_owned();
    let block = exported.lines().last().expect("block").trim().to_owned();
    assert!(
        block.starts_with('D') && block.contains("P0TB00E"),
        "{exported}"
    );
    let mut export = vec!["export", "--name", "term0001.tpk", "--under", "legacy.zmk"];
    export.extend(store);
    let exported = ok(&t.keys(d, &export, None)).to_owned();
    let cryptogram = exported
        .lines()
        .last()
        .expect("cryptogram")
        .trim()
        .to_owned();
    let mut export = vec!["export", "--name", "dukpt.bdk", "--under", "acq1.zmk"];
    export.extend(store);
    assert!(failed(&t.keys(d, &export, None)).contains("not exportable"));

    // A second store (another LMK, formed from stdin), with the same ZMKs
    // imported as components, receives the TPK both ways.
    let (c3, c4, c5) = (random_hex(32), random_hex(32), random_hex(32));
    secrets.extend([c3.clone(), c4.clone(), c5.clone()]);
    let input = format!("{c3}\n{c4}\n{c5}\n");
    ok(&t.keys(
        d,
        &["form-lmk", "--out", "lmk2", "--components", "3"],
        Some(&input),
    ));
    let lmk2 = Lmk::load(&d.join("lmk2")).expect("lmk2");
    secrets.push(hex(lmk2.key().expose_secret()));
    let store2 = ["--store", "ks2.toml", "--lmk-file", "lmk2"];
    for (name, ty, alg, bits) in [
        ("acq1.zmk", "zmk", "aes", "256"),
        ("legacy.zmk", "zmk", "tdes", "128"),
    ] {
        let (_, zmk) = ks.get(name, &lmk).expect("zmk");
        // Two components whose XOR is the ZMK.
        let len = zmk.len();
        let a = random_hex(len);
        let a_bytes = switchyard::hex::parse_hex(&a).expect("hex");
        let b: Vec<u8> = a_bytes
            .iter()
            .zip(zmk.expose_secret())
            .map(|(x, y)| x ^ y)
            .collect();
        let b = hex(&b);
        secrets.extend([a.clone(), b.clone()]);
        let mut args = vec![
            "import",
            "--name",
            name,
            "--type",
            ty,
            "--algorithm",
            alg,
            "--bits",
            bits,
            "--kcv",
        ];
        let kcv = zmk.kcv().to_string();
        args.push(&kcv);
        args.extend(store2);
        let out = ok(&t.keys(d, &args, Some(&format!("{a}\n{b}\n")))).to_owned();
        assert!(out.contains(&format!("KCV {kcv}")), "{out}");
    }
    let (_, tpk) = ks.get("term0001.tpk", &lmk).expect("tpk");
    let tpk_kcv = tpk.kcv().to_string();
    let mut args = vec![
        "import",
        "--name",
        "tpk.a",
        "--type",
        "tpk",
        "--under",
        "acq1.zmk",
        "--key-block",
        &block,
    ];
    args.extend(store2);
    assert!(ok(&t.keys(d, &args, None)).contains(&tpk_kcv));
    let mut args = vec![
        "import",
        "--name",
        "tpk.b",
        "--type",
        "tpk",
        "--under",
        "legacy.zmk",
        "--cryptogram",
        &cryptogram,
        "--kcv",
        &tpk_kcv,
    ];
    args.extend(store2);
    assert!(ok(&t.keys(d, &args, None)).contains(&tpk_kcv));
    // The wrong KCV, the wrong usage: not imported.
    let mut args = vec![
        "import",
        "--name",
        "tpk.c",
        "--type",
        "tpk",
        "--under",
        "legacy.zmk",
        "--cryptogram",
        &cryptogram,
        "--kcv",
        "000000",
    ];
    args.extend(store2);
    assert!(failed(&t.keys(d, &args, None)).contains("not imported"));
    let mut args = vec![
        "import",
        "--name",
        "tak.d",
        "--type",
        "tak",
        "--under",
        "acq1.zmk",
        "--key-block",
        &block,
    ];
    args.extend(store2);
    assert!(failed(&t.keys(d, &args, None)).contains("usage P0"));
    let ks2 = KeyStore::open(&d.join("ks2.toml"), &lmk2).expect("open 2");
    for name in ["tpk.a", "tpk.b"] {
        let (_, k) = ks2.get(name, &lmk2).expect("imported");
        assert_eq!(k.expose_secret(), tpk.expose_secret(), "{name}");
    }

    // The wrong LMK: refused, both KCVs named. The environment variables
    // point at the files too.
    let run = {
        let mut cmd = Command::new(BIN);
        let out = cmd
            .args(["keys", "list"])
            .current_dir(d)
            .env("SWITCHYARD_KEY_STORE", "ks.toml")
            .env("SWITCHYARD_LMK_FILE", "lmk2")
            .output()
            .expect("run");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    t.0.push_str(&run.stdout);
    t.0.push_str(&run.stderr);
    let e = failed(&run);
    assert!(
        e.contains("wrong LMK file?")
            && e.contains(&lmk.kcv().to_string())
            && e.contains(&lmk2.kcv().to_string()),
        "{e}"
    );

    // One character of a block changed: the store is refused, the key named.
    let text = std::fs::read_to_string(d.join("ks.toml")).expect("read");
    let at = text.find("name = \"acq1.zak\"").expect("zak");
    let block_at = at + text[at..].find("block = \"").expect("block") + 9 + 80;
    let mut bytes = text.clone().into_bytes();
    bytes[block_at] = if bytes[block_at] == b'0' { b'1' } else { b'0' };
    std::fs::write(d.join("ks.toml"), &bytes).expect("write");
    let e = failed(&t.keys(d, &list, None)).to_owned();
    assert!(e.contains("acq1.zak") && e.contains("refused"), "{e}");
    std::fs::write(d.join("ks.toml"), &text).expect("restore");
    ok(&t.keys(d, &list, None));

    // No key's bytes in anything printed, nor in the stores.
    assert_absent(&secrets, &t.0, "the commands' output");
    for f in ["ks.toml", "ks2.toml"] {
        let stored = std::fs::read_to_string(d.join(f)).expect("store");
        // The LMKs are only in their own files.
        assert_absent(&secrets, &stored, f);
    }
}

/// The scan itself finds a key printed in part, in lower case.
#[test]
#[should_panic(expected = "key bytes")]
fn the_scan_finds_a_leak() {
    let key = "00112233445566778899AABBCCDDEEFF".to_owned();
    assert_absent(&[key], "kcv 123456 then 8899aabbccddeeff", "a line");
}
