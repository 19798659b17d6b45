//! Metrics operators scrape: journal sync latency, journal size, build.

mod common;

use common::*;
use switchyard::iso8583::Mti;

#[tokio::test]
async fn metrics_show_fsync_latency_journal_size_and_build_info() {
    let sim = start_sim().await;
    let switch = start_switch(&config(&[sim.local_addr()], "", "")).await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    for stan in 1..=3 {
        let a = t.request(&auth(Mti::AUTHORIZATION, stan, PAN, 1_000)).await;
        assert_eq!(code(&a), "00");
    }
    let (status, body) = http_get(switch.admin_addr.expect("admin"), "/metrics").await;
    assert_eq!(status, 200);
    // Durability fsync (the default): every group commit is one sample.
    let syncs = metric(&body, "switchyard_journal_fsync_seconds_count", &[]);
    assert!(syncs >= 1.0, "fsync histogram missing or empty:\n{body}");
    assert!(
        body.contains("switchyard_journal_fsync_seconds_bucket{le="),
        "a histogram, with buckets"
    );
    let journal_bytes = metric(&body, "switchyard_journal_bytes", &[]);
    assert!(
        journal_bytes > 0.0,
        "the journal's size on disk is shown: {journal_bytes}"
    );
    let build = format!(
        "switchyard_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        switchyard::build_info::VERSION,
        switchyard::build_info::COMMIT
    );
    assert!(body.lines().any(|l| l == build), "no `{build}` in:\n{body}");
    switch.shutdown().await;
}
