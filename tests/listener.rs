//! The terminal listener: its backlog, bursts of connects, refusals.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::*;
use tokio::time::timeout;

/// The accept-queue size of the socket listening on `addr`, as the kernel
/// reports it (`ss -ltn`: Send-Q of a listening socket is its backlog);
/// `None` when `ss` is not installed.
fn kernel_backlog(addr: SocketAddr) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", addr.port())])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&addr.to_string()))
        .unwrap_or_else(|| panic!("{addr} not listed by ss: {text}"));
    // State Recv-Q Send-Q Local Peer
    let send_q = line.split_whitespace().nth(2).expect("a Send-Q column");
    Some(send_q.parse().expect("a number"))
}

fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

#[tokio::test]
async fn the_listen_backlog_is_the_configured_one() {
    let sim = start_sim().await;
    let configured = 777.min(somaxconn());
    let switch = start_switch(&config_terminals(
        &[sim.local_addr()],
        &format!("listen_backlog = {configured}"),
    ))
    .await;
    match kernel_backlog(switch.terminal_addr) {
        Some(b) => assert_eq!(b, configured),
        None => eprintln!("ss not installed: backlog not checked"),
    }
    switch.shutdown().await;

    // Unset: 1024, or less if the system allows less (tokio's bind: 128).
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    if let Some(b) = kernel_backlog(switch.terminal_addr) {
        assert_eq!(b, 1024.min(somaxconn()));
    }
    switch.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_two_thousand_concurrent_connects_is_served() {
    const N: usize = 2_000;
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    let addr = switch.terminal_addr;
    // All connect at once (the burst), then each asks for an echo, which
    // the switch answers itself.
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let go = go.clone();
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            let mut t = Terminal::connect(addr).await;
            let answer = t.request(&network(i as u32 + 1, "301")).await;
            code(&answer)
        }));
    }
    let served = timeout(GUARD * 3, async {
        let mut ok = 0;
        for t in tasks {
            if t.await.expect("task") == "00" {
                ok += 1;
            }
        }
        ok
    })
    .await
    .expect("the burst is served in time");
    assert_eq!(served, N, "every connection got its echo answered");
    switch.shutdown().await;
}

/// Log lines written while it is the thread's default subscriber.
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

#[tokio::test]
async fn refusals_at_the_connection_limit_are_logged_once_per_interval() {
    let log = CapturedLog::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // A current-thread test runtime: the switch's tasks log on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = start_sim().await;
    let switch = start_switch(&config_terminals(
        &[sim.local_addr()],
        "max_connections = 1",
    ))
    .await;
    let mut held = Terminal::connect(switch.terminal_addr).await;
    let echo = held.request(&network(1, "301")).await;
    assert_eq!(code(&echo), "00");
    const REFUSED: usize = 40;
    for _ in 0..REFUSED {
        let mut t = Terminal::connect(switch.terminal_addr).await;
        t.expect_closed().await;
    }
    let (_, body) = http_get(switch.admin_addr.expect("admin"), "/metrics").await;
    assert!(
        metric(&body, "switchyard_connections_refused_total", &[]) >= REFUSED as f64,
        "every refusal is counted"
    );
    switch.shutdown().await;
    let text = log.text();
    let lines = text
        .lines()
        .filter(|l| l.contains("connection refused: connection limit reached"))
        .count();
    // 40 refusals well within one 10 s interval: one line, not 40.
    assert_eq!(lines, 1, "{text}");
}
