//! Terminal batch close against the real binary, over real sockets, with
//! the terminal played by an independent ISO 8583 library (pyiso8583,
//! `tests/interop/pyiso8583_batch.py`): sales, a refund, a reversal and a
//! decline through `switchyard run` to the simulator, then
//!
//! - a close (0500, 920000) with the totals the terminal counted: 00;
//! - a close claiming a sale the switch never approved: 95 with the
//!   switch's own totals, then the terminal's upload (0320 each, 0330 00)
//!   and a close after upload (960000): 00;
//! - a batch sold before a `kill -9` of the switch and closed after its
//!   restart: 00, the totals rebuilt from the journal.
//!
//! Needs a Python with the `iso8583` package: `SWITCHYARD_PYTHON`, or the
//! venv `scripts/test` makes.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use switchyard::tools::sim::SimConfig;

fn python() -> String {
    let python = std::env::var("SWITCHYARD_PYTHON").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/interop-venv/bin/python"
        )
        .to_owned()
    });
    assert!(
        Path::new(&python).exists(),
        "no Python with pyiso8583 at {python}: run `bash scripts/test` once, \
         or set SWITCHYARD_PYTHON"
    );
    python
}

/// Runs the batch script with `args`; its stdout, once it succeeded.
async fn terminal(args: &[&str]) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/pyiso8583_batch.py"
    );
    let out = tokio::process::Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "terminal {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `switchyard run` with `config`, once its link to the simulator is up;
/// the process and its terminal address.
async fn start(config: &Path) -> (tokio::process::Child, String) {
    let (child, banner) = start_process_banner(config).await;
    let admin = banner.admin.expect("admin on");
    wait_metric(admin, "switchyard_link_up", &[], |v| v >= 1.0).await;
    (child, banner.terminals.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pyiso8583_terminal_closes_its_batches_in_and_out_of_balance() {
    let sim = start_sim_with(SimConfig {
        decline_over_amount: Some(5000),
        ..sim_config()
    })
    .await;
    let dir: PathBuf = fresh_journal_dir();
    std::fs::create_dir_all(&dir).expect("test dir");
    let config = dir.join("switchyard.toml");
    std::fs::write(&config, common::config(&[sim.local_addr()], "", "")).expect("config");
    let state = |n: u32| dir.join(format!("batch-{n}.json")).display().to_string();
    let (mut switch, addr) = start(&config).await;

    // In balance.
    let sold = terminal(&["sell", &addr, "PYTERM01", "000001", "100", &state(1)]).await;
    assert!(sold.contains("0210 39=51"), "the decline: {sold}");
    let out = terminal(&["close", &addr, &state(1)]).await;
    assert!(out.contains("0510 39=00 batch=000001"), "{out}");

    // Out of balance, uploaded, closed after upload.
    terminal(&["sell", &addr, "PYTERM01", "000002", "200", &state(2)]).await;
    let out = terminal(&["disputed", &addr, &state(2)]).await;
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("0510")).collect();
    assert_eq!(
        lines,
        ["0510 39=95 batch=000002", "0510 39=00 batch=000002"],
        "{out}"
    );
    // 1 refund of 7.00; 2 purchases of 40.00, one of 25.00 reversed.
    assert!(
        out.contains("switch totals 74=1 75=0 76=2 77=1 86=700 87=0 88=4000 89=2500"),
        "{out}"
    );

    // Sold, then the switch is killed; closed after its restart.
    terminal(&["sell", &addr, "PYTERM01", "000003", "300", &state(3)]).await;
    switch.kill().await.expect("kill -9");
    let (mut switch, addr) = start(&config).await;
    let out = terminal(&["close", &addr, &state(3)]).await;
    assert!(out.contains("0510 39=00 batch=000003"), "{out}");
    // And the batches closed before stay closed: 000001 again is out of
    // balance (the switch holds nothing for it).
    let out = tokio::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/pyiso8583_batch.py"
        ))
        .args(["close", &addr, &state(1)])
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a closed batch closed again: {stdout}"
    );
    assert!(stdout.contains("0510 39=95 batch=000001"), "{stdout}");
    switch.kill().await.expect("stops");
}

/// An 0500 of `tid`'s batch `000009` with `fields`.
fn close_request(tid: &str, pc: &[u8], stan: u64, fields: &[(usize, &[u8])]) -> bytes::Bytes {
    use switchyard::iso8583::{MessageBuilder, Mti, specs};
    let mut b = MessageBuilder::new(specs::iso87ascii(), Mti::RECONCILIATION);
    b.set(3, pc)
        .set(7, b"1201101010")
        .set_number(11, stan)
        .set(41, tid.as_bytes())
        .set(49, b"840")
        .set(60, b"000009");
    for &(n, v) in fields {
        b.set(n, v);
    }
    b.to_bytes().expect("packs").freeze()
}

/// Bad closes over a real socket: 30 with the field named in the log,
/// 12 for a processing code that is no close; nothing reaches the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_close_is_answered_30_naming_the_field() {
    let log = Captured::install();
    let sim = start_sim().await;
    let switch = start_switch(&common::config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let tid = "BADCLOSE";
    let net_wrong: &[(usize, &[u8])] = &[(88, b"0000000000001000"), (97, b"D0000000000000999")];
    let a = t
        .request(&close_request(tid, b"920000", 1, net_wrong))
        .await;
    assert_eq!((a.mti().value(), code(&a)), (510, "30".to_owned()));
    let a = t.request(&close_request(tid, b"920000", 2, &[])).await;
    assert_eq!(code(&a), "30");
    let a = t
        .request(&close_request(tid, b"000000", 3, net_wrong))
        .await;
    assert_eq!(code(&a), "12");
    // Nothing of it went upstream.
    assert!(
        sim.received().iter().all(|r| r.terminal_id != tid),
        "a close reached the host"
    );
    for field in ["DE97", "DE74"] {
        assert_eq!(
            log.lines("WARN", &format!("format error in {field}")).len(),
            1,
            "one warn line naming {field}"
        );
    }
    switch.shutdown().await;
}

/// A terminal profile (`[[security.terminals]]`) with close codes of its
/// own (`[[settlement.terminal_profiles]]`): its terminals close with
/// those and not the switch's; terminals of no profile keep the
/// switch's. Over real sockets to the in-process switch, a real key store
/// under a real LMK file (the profile needs `[security]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_profile_closes_with_its_own_processing_codes() {
    use switchyard::security::lmk::Lmk;
    use switchyard::security::store::KeyStore;
    use switchyard::security::{Algorithm, SecretKey};
    let dir = fresh_journal_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    let lmk_path = dir.join("lmk");
    let c = |b: u8| SecretKey::new(Algorithm::Aes, &[b; 32]).expect("component");
    let lmk = Lmk::from_components(&[c(0x11), c(0x22)]).expect("lmk");
    lmk.save_new(&lmk_path).expect("lmk saved");
    let store_path = dir.join("keys.toml");
    KeyStore::create(&store_path, &lmk)
        .expect("store")
        .save()
        .expect("store saved");
    let extra = format!(
        "[security]\nkey_store = \"{}\"\nlmk_file = \"{}\"\n\
         [[security.terminals]]\nname = \"fleet-b\"\nterminal_id_prefixes = [\"FLB\"]\n\
         [[settlement.terminal_profiles]]\nname = \"fleet-b\"\nbatch_close_code = 930000\n\
         batch_close_after_upload_code = 970000\n",
        store_path.display(),
        lmk_path.display()
    );
    let sim = start_sim().await;
    let switch = start_switch(&common::config(&[sim.local_addr()], "", &extra)).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    // An empty batch, in balance: zero counted.
    let zero: &[(usize, &[u8])] = &[(74, b"0000000000")];
    let cases: [(&str, &[u8], &str); 6] = [
        ("FLB00001", b"930000", "00"),
        ("FLB00001", b"970000", "00"),
        ("FLB00001", b"920000", "12"),
        ("FLB00001", b"960000", "12"),
        ("TERM0001", b"920000", "00"),
        ("TERM0001", b"930000", "12"),
    ];
    for (stan, (tid, pc, want)) in cases.into_iter().enumerate() {
        let a = t
            .request(&close_request(tid, pc, stan as u64 + 1, zero))
            .await;
        assert_eq!(
            (a.mti().value(), code(&a)),
            (510, want.to_owned()),
            "{tid} {}",
            String::from_utf8_lossy(pc)
        );
    }
    switch.shutdown().await;
    sim.shutdown();
}
