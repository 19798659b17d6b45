//! `kill -9` of the switch under load, then a restart on the same
//! journal: every request must end in exactly one known outcome. The
//! switch runs as a real child process (`switchyard run`); terminals and
//! the acquirer simulator run in this test, so their records are the
//! terminal's and the host's view. Over plain TCP, and with TLS on both
//! sides: terminals with client certificates, and a link to a host that
//! requires the switch's client certificate.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::tls::{Certs, TlsTerminal, certs, toml_path};
use common::*;
use switchyard::iso8583::{Message, Mti};
use switchyard::switch::journal::Record;
use switchyard::tools::certs::CertFiles;
use switchyard::tools::sim::{Latency, SimConfig, SimHandle};
use tokio::sync::Notify;
use tokio::time::timeout;

const CONNECTIONS: usize = 8;
const PIPELINE: u32 = 8;

/// How terminals reach the switch and the switch the host.
#[derive(Clone)]
enum Transport {
    Plain,
    /// TLS both ways: terminals present `terminal`, the link `link`; every
    /// certificate comes from the one CA `ca`.
    Tls {
        ca: PathBuf,
        server: CertFiles,
        terminal: CertFiles,
        link: CertFiles,
    },
}

impl Transport {
    fn tls(c: &mut Certs) -> Transport {
        Transport::Tls {
            ca: c.pki.ca.clone(),
            server: c.server.clone(),
            terminal: c.term1.clone(),
            link: c.pki.client("link", "SWITCH01", &[]).expect("link cert"),
        }
    }

    /// `[terminals.tls]` (client certificates required) and
    /// `[acquirers.tls]` (the link presents its certificate).
    fn tables(&self) -> (String, String) {
        let Transport::Tls {
            ca, server, link, ..
        } = self
        else {
            return (String::new(), String::new());
        };
        let terminals = format!(
            "[terminals.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            toml_path(&server.cert),
            toml_path(&server.key),
            toml_path(ca)
        );
        let acquirer = format!(
            "[acquirers.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nserver_name = \"localhost\"\n",
            toml_path(ca),
            toml_path(&link.cert),
            toml_path(&link.key)
        );
        (terminals, acquirer)
    }
}

/// A terminal over either transport.
enum CrashTerminal {
    Plain(Terminal),
    Tls(TlsTerminal),
}

impl CrashTerminal {
    async fn connect(addr: std::net::SocketAddr, transport: &Transport) -> CrashTerminal {
        match transport {
            Transport::Plain => CrashTerminal::Plain(Terminal::connect(addr).await),
            Transport::Tls { ca, terminal, .. } => CrashTerminal::Tls(
                TlsTerminal::connect(addr, ca, Some(terminal))
                    .await
                    .expect("TLS terminal connects"),
            ),
        }
    }

    /// Writes one framed request; false once the switch is gone.
    async fn send(&mut self, req: &[u8]) -> bool {
        match self {
            CrashTerminal::Plain(t) => {
                let mut framed = (req.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(req);
                tokio::io::AsyncWriteExt::write_all(&mut t.stream, &framed)
                    .await
                    .is_ok()
            }
            CrashTerminal::Tls(t) => t.send(req).await.is_ok(),
        }
    }

    /// The next answer; `None` once the switch is gone.
    async fn recv(&mut self) -> Option<Message> {
        match self {
            CrashTerminal::Plain(t) => t.recv_or_closed().await,
            CrashTerminal::Tls(t) => t.recv().await.ok().flatten(),
        }
    }
}

fn write_config(dir: &Path, sim: &SimHandle, transport: &Transport) -> PathBuf {
    let path = dir.join("switch.toml");
    let (terminals_tls, acquirer_tls) = transport.tables();
    let toml = format!(
        r#"
[terminals]
listen = "127.0.0.1:0"
{terminals_tls}
[admin]
enabled = false
[limits]
shutdown_grace_ms = 3000
[[acquirers]]
name = "acquirer-a"
links = ["{sim}"]
request_timeout_ms = 3000
backoff_initial_ms = 20
backoff_max_ms = 200
{acquirer_tls}
[routing]
default = "acquirer-a"
[fraud]
enabled = false
[store]
url = "sqlite://{journal}-store/switchyard.db"
[journal]
dir = "{journal}"
durability = "fsync"
[saf]
retry_interval_ms = 200
"#,
        sim = sim.local_addr(),
        journal = dir.join("journal").display(),
    );
    std::fs::write(&path, toml).expect("config written");
    path
}

/// What the terminals saw: STAN -> response code, for every request sent.
#[derive(Default)]
struct TerminalView {
    sent: BTreeSet<u32>,
    answered: BTreeMap<u32, String>,
}

/// Terminals sending 0200s in pipelined batches until the switch dies.
async fn drive_until_killed(
    addr: std::net::SocketAddr,
    transport: Transport,
    first_stan: u32,
    answered_count: Arc<AtomicUsize>,
    enough: Arc<Notify>,
    kill_after: usize,
) -> TerminalView {
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let answered_count = answered_count.clone();
        let enough = enough.clone();
        let transport = transport.clone();
        tasks.push(tokio::spawn(async move {
            let mut view = TerminalView::default();
            let mut t = CrashTerminal::connect(addr, &transport).await;
            let tid = format!("CRASH{c:03}");
            let mut stan = first_stan + c as u32 * 10_000;
            'batches: for _ in 0..1000 {
                let batch: Vec<u32> = (0..PIPELINE).map(|i| stan + i).collect();
                stan += PIPELINE;
                for &s in &batch {
                    let req = auth_from(Mti::FINANCIAL, s, PAN, 100 + s as u64 % 1000, &tid);
                    if !t.send(&req).await {
                        break 'batches;
                    }
                    view.sent.insert(s);
                }
                for _ in &batch {
                    match timeout(GUARD, t.recv()).await {
                        Ok(Some(a)) => {
                            if let Some(s) = a.stan() {
                                view.answered.insert(s, code(&a));
                            }
                            if answered_count.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                                enough.notify_one();
                            }
                        }
                        _ => break 'batches,
                    }
                }
            }
            view
        }));
    }
    let mut all = TerminalView::default();
    for t in tasks {
        let v = t.await.expect("terminal task");
        all.sent.extend(v.sent);
        all.answered.extend(v.answered);
    }
    all
}

/// The host's view: STANs of 0200s received, and STANs with an
/// acknowledged reversal (0420/0421 answered 00).
fn host_view(sim: &SimHandle) -> (BTreeSet<u32>, BTreeMap<u32, usize>) {
    let mut saw = BTreeSet::new();
    let mut reversed: BTreeMap<u32, usize> = BTreeMap::new();
    for r in sim.received() {
        match r.mti.value() {
            200 => {
                saw.insert(r.stan);
            }
            420 | 421 if r.response_code == Some(*b"00") => {
                *reversed.entry(r.stan).or_default() += 1;
            }
            _ => {}
        }
    }
    (saw, reversed)
}

/// Per transaction, what the journal says.
#[derive(Default, Debug)]
struct JournalTxn {
    stan: u32,
    forwarded: bool,
    /// Response or Timeout records.
    finals: usize,
    answered_code: Option<[u8; 2]>,
    reversal: bool,
}

/// Reads a journal; a damaged tail (as `kill -9` can leave) ends the read.
fn journal_view(dir: &Path) -> BTreeMap<u64, JournalTxn> {
    let mut txns: BTreeMap<u64, JournalTxn> = BTreeMap::new();
    for r in switchyard::switch::journal::read_all(dir).expect("journal readable") {
        let Ok((_, rec)) = r else { break };
        let t = txns.entry(rec.txn()).or_default();
        match rec {
            Record::Request { request, .. } => t.stan = request.stan,
            Record::Forwarded { .. } => t.forwarded = true,
            Record::Response { response_code, .. } => {
                t.finals += 1;
                t.answered_code = Some(response_code);
            }
            Record::Timeout { .. } => t.finals += 1,
            Record::ReversalQueued { .. } => t.reversal = true,
            _ => {}
        }
    }
    txns
}

/// The reusable cross-check: each request the terminals sent has exactly
/// one outcome, and the terminals, the host and the journal agree on it.
fn assert_one_outcome_each(view: &TerminalView, sim: &SimHandle, journal: &Path) {
    let (host_saw, reversed) = host_view(sim);
    for (&stan, &n) in &reversed {
        assert_eq!(n, 1, "STAN {stan}: reversal acknowledged {n} times");
    }
    for &stan in view.sent.iter().filter(|&&s| s < 999_000) {
        let answer = view.answered.get(&stan).map(String::as_str);
        let rev = reversed.contains_key(&stan);
        match (answer, host_saw.contains(&stan), rev) {
            // Answered by the host, nothing to undo.
            (Some("00"), true, false) => {}
            // Timed out: told 91 and reversed.
            (Some("91"), _, true) => {}
            // The host had it when the switch died: reversed after restart.
            (None, true, true) => {}
            // The host answered and the switch journaled the answer, but
            // died before the terminal got it (checked against the journal
            // below).
            (None, true, false) => {}
            // Never reached the host: nothing happened anywhere (the
            // terminal heard nothing, or a refusal such as 91 while the
            // link was still signing on).
            (None, false, false) => {}
            (Some(c), false, false) if c != "00" => {}
            // Journaled as forwarded but never written to the socket:
            // reversing what the host never saw is the safe side.
            (None, false, true) => {}
            other => {
                panic!("STAN {stan}: inconsistent outcome (answer, host saw, reversed) = {other:?}")
            }
        }
    }

    // The journal: every request has at most one final outcome, and one
    // that was forwarded without an answer has a reversal queued and
    // acknowledged.
    let txns = journal_view(journal);
    let mut by_stan: BTreeMap<u32, &JournalTxn> = BTreeMap::new();
    for (txn, t) in &txns {
        assert!(
            t.finals <= 1,
            "txn {txn} (STAN {}): {} final outcomes",
            t.stan,
            t.finals
        );
        if t.forwarded && t.finals == 0 {
            assert!(
                t.reversal,
                "txn {txn} (STAN {}): forwarded, unanswered, not reversed",
                t.stan
            );
            assert!(
                reversed.contains_key(&t.stan),
                "STAN {}: reversal not acknowledged",
                t.stan
            );
        }
        by_stan.insert(t.stan, t);
    }
    // Requests the host approved and the switch journaled as answered, but
    // whose answer died with the process: the journal knows the outcome.
    for &stan in view.sent.iter().filter(|&&s| s < 999_000) {
        if !view.answered.contains_key(&stan)
            && host_saw.contains(&stan)
            && !reversed.contains_key(&stan)
        {
            let t = by_stan
                .get(&stan)
                .unwrap_or_else(|| panic!("STAN {stan}: host had it, journal did not"));
            assert_eq!(t.answered_code, Some(*b"00"), "STAN {stan}: {t:?}");
        }
    }
}

async fn crash_and_recover(kill_after: usize, first_stan: u32, tls: bool) {
    let dir = fresh_journal_dir();
    std::fs::create_dir_all(&dir).expect("test dir");
    let mut certs = tls.then(certs);
    let transport = match &mut certs {
        Some(c) => Transport::tls(c),
        None => Transport::Plain,
    };
    let sim = start_sim_with(SimConfig {
        latency: Latency::Uniform(Duration::from_millis(2), Duration::from_millis(30)),
        // The host requires the link's client certificate.
        tls: certs.as_ref().map(Certs::server_requiring_client_certs),
        ..sim_config()
    })
    .await;
    let config = write_config(&dir, &sim, &transport);
    let (mut child, addr) = start_process(&config).await;
    assert!(
        sim.wait_until(GUARD, |s| s
            .received()
            .iter()
            .any(|r| r.mti.value() == 800 && r.response_code.is_some()))
            .await,
        "switch signed on"
    );

    // The banner comes when the listener is up; the link signs on just
    // after. Another process gives no signal for that, so probe: a request
    // answered 00 proves the link is up.
    let mut probe = CrashTerminal::connect(addr, &transport).await;
    let mut stan = 999_000;
    loop {
        stan += 1;
        assert!(
            probe
                .send(&auth_from(Mti::FINANCIAL, stan, PAN, 1, "PROBE001"))
                .await
        );
        let a = probe.recv().await.expect("the probe is answered");
        if code(&a) == "00" {
            break;
        }
        assert!(stan < 999_500, "link never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let answered = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let driver = tokio::spawn(drive_until_killed(
        addr,
        transport.clone(),
        first_stan,
        answered.clone(),
        enough.clone(),
        kill_after,
    ));
    timeout(GUARD, enough.notified())
        .await
        .expect("load reached the kill point");
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    let view = timeout(GUARD, driver)
        .await
        .expect("terminals stop")
        .expect("no panic");
    assert!(view.answered.len() >= kill_after, "answers before the kill");
    let approved = view.answered.values().filter(|c| *c == "00").count();
    assert!(
        approved >= kill_after,
        "approved before the kill: {approved}"
    );

    // What the journal owes: forwarded, no final outcome.
    let owed: Vec<u32> = journal_view(&dir.join("journal"))
        .values()
        .filter(|t| t.forwarded && t.finals == 0)
        .map(|t| t.stan)
        .collect();
    // Restart on the same journal: recovery reverses those.
    let (mut child, _) = start_process(&config).await;
    if kill_after >= 300 {
        // 64 requests pipelined against a host taking 2-30 ms: the kill
        // always finds some at the host.
        assert!(!owed.is_empty(), "nothing was in flight at the kill");
    }
    assert!(
        sim.wait_until(GUARD, |s| {
            let (_, rev) = host_view(s);
            owed.iter().all(|stan| rev.contains_key(stan))
        })
        .await,
        "every request the host had without an answer was reversed: {owed:?}"
    );
    // An orderly stop, so the journal is complete on disk.
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = timeout(GUARD, child.wait())
        .await
        .expect("stops")
        .expect("exit status");
    assert!(exit.success(), "exit 0 after SIGTERM: {exit:?}");

    assert_one_outcome_each(&view, &sim, &dir.join("journal"));
    if tls {
        // Each of the two processes' link did its handshake, presenting
        // the certificate the host requires.
        let stats = sim.stats();
        assert!(stats.tls_handshakes >= 2, "{stats:?}");
        assert_eq!(stats.tls_handshake_failures, 0, "{stats:?}");
    }
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_early_then_recover() {
    crash_and_recover(20, 100_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_recover() {
    crash_and_recover(300, 200_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_late_then_recover() {
    crash_and_recover(1500, 300_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_early_over_tls_then_recover() {
    crash_and_recover(20, 400_000, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_over_tls_then_recover() {
    crash_and_recover(300, 500_000, true).await;
}
