//! Operators see link trouble (issue 10 item 12): a link that can not
//! connect is a warn line naming the acquirer, the link, the address and
//! the reason, rate-limited while it stays down; coming up is an info line;
//! a drop is a warn line. The log is captured from this process's
//! subscriber (one test in this binary, so nothing else writes to it).

mod common;

use std::time::Duration;

use common::*;
use tokio::time::timeout;

#[tokio::test]
async fn a_link_down_at_start_warns_once_per_interval_then_says_when_it_is_up() {
    let log = Captured::install();

    let reserved = reserve_port();
    let addr = reserved.addr;
    let switch = start_switch(&config(&[addr], "", "")).await;
    let admin = switch.admin_addr.expect("admin");
    // Several attempts fail (backoff 20..200 ms)...
    let mut failures = 0.0;
    for _ in 0..100 {
        let (_, body) = http_get(admin, "/metrics").await;
        failures = metric(&body, "switchyard_link_connect_failures_total", &[]);
        if failures >= 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures >= 4.0, "connects failed: {failures}");
    // ... and one warn line says so, with who, where and why.
    let warns = log.lines("WARN", "link not up");
    assert_eq!(warns.len(), 1, "rate-limited: {warns:#?}");
    let w = &warns[0];
    for part in ["acquirer-a", "link=0", &addr.to_string(), "connect failed"] {
        assert!(w.contains(part), "{part} missing from {w}");
    }

    drop(reserved);
    let sim = start_sim_with(switchyard::tools::sim::SimConfig {
        listen: addr,
        ..sim_config()
    })
    .await;
    wait_links_up(&switch).await;
    let ups = log.lines("INFO", "link up");
    assert_eq!(ups.len(), 1, "{ups:#?}");
    assert!(
        ups[0].contains("acquirer-a") && ups[0].contains(&addr.to_string()),
        "{}",
        ups[0]
    );
    assert!(ups[0].contains("attempts="), "{}", ups[0]);

    // A drop of an up link is news: warned at once.
    let link = switch.shared.acquirers[0].links[0].shared.clone();
    sim.set_refuse_connections(true);
    sim.close_connections();
    timeout(GUARD, link.wait_for(false))
        .await
        .expect("link goes down");
    let downs = log.lines("WARN", "link down");
    assert_eq!(downs.len(), 1, "{downs:#?}");
    assert!(
        downs[0].contains("acquirer-a") && downs[0].contains(&addr.to_string()),
        "{}",
        downs[0]
    );
    switch.shutdown().await;
}
