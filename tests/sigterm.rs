//! Issue 10 item 9, against the switch as a real process: SIGTERM under a
//! closed loop of 64 connections left one request per connection
//! unanswered. Now every request the terminals had written when the
//! signal came gets exactly one answer, then the connection closes, and
//! the process exits 0.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use switchyard::iso8583::Mti;
use switchyard::tools::sim::{Latency, SimConfig};
use tokio::time::timeout;

const CONNECTIONS: usize = 64;

/// What one terminal saw.
#[derive(Debug, Default)]
struct Seen {
    sent: u32,
    answered: u32,
    /// Its last request, written before the signal.
    outstanding_at_signal: bool,
    /// Answers to that one request (must be exactly one).
    after_signal: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_a_closed_loop_answers_every_request_already_sent() {
    // A host that takes a little while, so requests are in flight, and
    // others sit unread in the switch's sockets, when the signal comes.
    let sim = start_sim_with(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(5)),
        ..sim_config()
    })
    .await;
    let dir = fresh_journal_dir();
    std::fs::create_dir_all(&dir).expect("test dir");
    let path = dir.join("switch.toml");
    std::fs::write(&path, config(&[sim.local_addr()], "", "")).expect("config");
    let (mut child, addr) = start_process(&path).await;

    let stop = Arc::new(AtomicBool::new(false));
    // Terminals whose last request (sent after `stop`) is written.
    let last_written = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let (stop, last_written) = (stop.clone(), last_written.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Terminal::connect(addr).await;
            let tid = format!("SIG{c:05}");
            let mut seen = Seen::default();
            loop {
                // Once told to stop, one last request goes: it is in the
                // switch's socket, most likely unread, when the signal
                // comes (the signal waits for every last one's write).
                let last = stop.load(Ordering::SeqCst);
                seen.sent += 1;
                let body = auth_from(Mti::FINANCIAL, seen.sent, PAN, 1_000, &tid);
                t.send(&body).await;
                if last {
                    last_written.fetch_add(1, Ordering::SeqCst);
                    seen.outstanding_at_signal = true;
                    seen.after_signal += u32::from(t.recv_or_closed().await.is_some());
                    break;
                }
                match t.recv_or_closed().await {
                    Some(m) => {
                        assert_eq!(m.stan(), Some(seen.sent), "the answer to this request");
                        seen.answered += 1;
                    }
                    None => panic!("connection {c} closed before the signal"),
                }
            }
            // Whatever was owed has come; nothing more may, and the switch
            // closes the connection as it stops.
            assert!(
                t.recv_or_closed().await.is_none(),
                "connection {c}: a second answer, or no close"
            );
            seen
        }));
    }
    // Traffic for a while; then every terminal writes one last request,
    // and the signal follows the last of those writes at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    timeout(GUARD, async {
        while last_written.load(Ordering::SeqCst) < CONNECTIONS {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every terminal writes its last request");
    let pid = child.id().expect("running") as libc::pid_t;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

    let mut outstanding = 0;
    let mut total = 0;
    for task in tasks {
        let seen = task.await.expect("terminal task");
        total += seen.answered;
        if seen.outstanding_at_signal {
            outstanding += 1;
            assert_eq!(
                seen.after_signal, 1,
                "a request written before SIGTERM gets exactly one answer: {seen:?}"
            );
        }
    }
    let status = timeout(GUARD, child.wait())
        .await
        .expect("exits within the grace period")
        .expect("waits");
    assert!(status.success(), "exit status {status:?}");
    assert!(total > 0, "the closed loop ran");
    assert_eq!(
        outstanding, CONNECTIONS,
        "every terminal's last request was owed"
    );
    sim.shutdown();
}
