//! Offered load far over capacity, against the switch as a real process:
//! the excess gets fast 96s, accepted requests keep their latency, and the
//! process's memory stays bounded (read from /proc).

mod common;

use std::time::{Duration, Instant};

use common::*;
use switchyard::iso8583::Mti;
use switchyard::tools::sim::{Latency, SimConfig};
use tokio::io::AsyncWriteExt;

const CONNECTIONS: u32 = 32;
const PER_CONNECTION: u32 = 1_000;
// Long enough that shedding the whole flood (a debug build, on a CI box
// shared with other test processes) finishes well inside it.
const HOST_LATENCY: Duration = Duration::from_millis(2000);

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_over_capacity_the_excess_gets_fast_96s_and_memory_stays_bounded() {
    let sim = start_sim_with(SimConfig {
        record_capacity: 0,
        ..sim_config()
    })
    .await;
    let dir = fresh_journal_dir();
    std::fs::create_dir_all(&dir).expect("test dir");
    let config = dir.join("switch.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[terminals]
listen = "127.0.0.1:0"
max_in_flight_per_connection = 1000
[admin]
enabled = false
[limits]
max_in_flight = 2000
[[acquirers]]
name = "acquirer-a"
links = ["{sim}"]
request_timeout_ms = 5000
[routing]
default = "acquirer-a"
[fraud]
enabled = false
[store]
url = "sqlite://{journal}-store/switchyard.db"
[journal]
dir = "{journal}"
durability = "none"
"#,
            sim = sim.local_addr(),
            journal = dir.join("journal").display()
        ),
    )
    .expect("config");
    let (child, addr) = start_process(&config).await;
    let pid = child.id().expect("pid");
    // Link up: a request approved.
    let mut probe = Terminal::connect(addr).await;
    let mut stan = 900_000;
    loop {
        stan += 1;
        if code(
            &probe
                .request(&auth_from(Mti::FINANCIAL, stan, PAN, 1, "PROBE001"))
                .await,
        ) == "00"
        {
            break;
        }
        assert!(stan < 900_500, "link never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let baseline = rss_kib(pid);
    sim.set_latency(Latency::Fixed(HOST_LATENCY));

    // 32,000 requests at once, 16 times what may be in flight.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let mut t = Terminal::connect(addr).await;
            let tid = format!("LOAD{c:04}");
            let mut burst = Vec::new();
            for i in 0..PER_CONNECTION {
                let req = auth_from(Mti::FINANCIAL, c * 10_000 + i + 1, PAN, 100, &tid);
                burst.extend_from_slice(&(req.len() as u16).to_be_bytes());
                burst.extend_from_slice(&req);
            }
            t.stream.write_all(&burst).await.expect("writes");
            // (code, time since start) per answer
            let mut got = Vec::new();
            for _ in 0..PER_CONNECTION {
                let a = t.recv().await;
                got.push((code(&a), started.elapsed()));
            }
            got
        }));
    }
    let mut peak = baseline;
    let mut answers = Vec::new();
    let mut pending: Vec<_> = tasks.into_iter().map(Some).collect();
    while pending.iter().any(Option::is_some) {
        peak = peak.max(rss_kib(pid));
        for slot in pending.iter_mut() {
            if let Some(h) = slot
                && h.is_finished()
            {
                let h = slot.take().expect("present");
                answers.extend(h.await.expect("terminal task"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(started.elapsed() < GUARD, "all answered in time");
    }

    let total = (CONNECTIONS * PER_CONNECTION) as usize;
    assert_eq!(answers.len(), total, "every request answered");
    let shed: Vec<_> = answers.iter().filter(|(c, _)| c == "96").collect();
    let approved: Vec<_> = answers.iter().filter(|(c, _)| c == "00").collect();
    assert_eq!(shed.len() + approved.len(), total, "only 00 and 96");
    assert!(
        approved.len() >= 1000 && approved.len() <= 2000 * 3,
        "accepted: {}",
        approved.len()
    );
    assert!(
        shed.len() >= total / 2,
        "most of the excess shed: {}",
        shed.len()
    );
    // The shed ones are fast: answered before the host could answer anything.
    let slowest_96 = shed.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let fastest_00 = approved.iter().map(|(_, t)| *t).min().unwrap_or_default();
    assert!(
        slowest_96 < HOST_LATENCY,
        "96s took up to {slowest_96:?}, the host takes {HOST_LATENCY:?}"
    );
    assert!(
        fastest_00 >= HOST_LATENCY / 2,
        "accepted ones went to the host"
    );
    // Accepted requests keep their latency: host latency plus a little,
    // not a queue behind the flood.
    let slowest_00 = approved.iter().map(|(_, t)| *t).max().unwrap_or_default();
    assert!(
        slowest_00 < HOST_LATENCY * 4,
        "accepted requests answered within {slowest_00:?}"
    );
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    assert!(grown_mib < 64, "RSS grew {grown_mib} MiB under the flood");
    eprintln!(
        "overload: {} accepted, {} shed (slowest 96 after {slowest_96:?}), RSS {} -> {} KiB",
        approved.len(),
        shed.len(),
        baseline,
        peak
    );
    drop(child);
    sim.shutdown();
}
