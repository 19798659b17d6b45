//! Config reload as generations, against the real `switchyard run` with
//! two simulators and the load generator over real sockets:
//!
//! * under open-loop load at 5,000 requests/s, an operator's reload that
//!   adds a second acquirer and moves a route to it: nothing lost or
//!   mismatched, no terminal reconnects, the new simulator sees traffic
//!   within 1 s of the reload's answer; then, under the same load, a file
//!   that does not check (refused 422 naming the key) and a file that
//!   changes a restart-only key (refused 409 naming it): the generation
//!   stays, traffic is not touched; all in the audit trail;
//! * SIGHUP: a link's address replaced in the file, the old link drains and
//!   signs off, the new one carries the traffic, generation 2.

#[path = "common/admin_http.rs"]
mod admin_http;
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use admin_http::*;
use common::*;
use serde_json::Value;
use switchyard::iso8583::Mti;

const OLGA_PW: &str = "olga's long passphrase";

/// The switch's config: acquirer `acquirer-a` on `a`, and `acquirer-b`
/// on `b` when given, with `routing` and `extra` tables.
fn toml(d: &Dir, a: &[SocketAddr], b: Option<SocketAddr>, routing: &str, extra: &str) -> String {
    let links = |l: &[SocketAddr]| {
        l.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let second = b.map_or(String::new(), |b| {
        format!(
            "[[acquirers]]\nname = \"acquirer-b\"\nlinks = [{}]\nrequest_timeout_ms = 2000\n\
             connect_timeout_ms = 500\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\n",
            links(&[b])
        )
    });
    format!(
        r#"
test_setup = true
[terminals]
listen = "127.0.0.1:0"
# A debug build on a shared box: bursts queue rather than shed.
max_in_flight_per_connection = 1024
{admin}
[limits]
shutdown_grace_ms = 3000
[[acquirers]]
name = "acquirer-a"
links = [{a}]
request_timeout_ms = 2000
connect_timeout_ms = 500
backoff_initial_ms = 20
backoff_max_ms = 200
{second}
[routing]
default = "acquirer-a"
{routing}
[journal]
dir = "{journal}"
[fraud]
pan_key = "000102030405060708090a0b0c0d0e0f"
{extra}
{store}
"#,
        admin = d.admin_table(),
        a = links(a),
        journal = d.journal.display(),
        // The store is on by default: this switch's own, unless the test
        // configures one.
        store = if extra.contains("[store]") {
            String::new()
        } else {
            format!(
                "[store]\nurl = \"sqlite://{}-store/switchyard.db\"",
                d.journal.display()
            )
        },
    )
}

/// Transaction requests the simulator received (not its 0800s).
fn transactions(sim: &switchyard::tools::sim::SimHandle) -> usize {
    sim.received()
        .iter()
        .filter(|r| r.mti.value() != 800)
        .count()
}

/// Requests a simulator that keeps no record received, but for the one
/// sign-on of each link (no echo is due in these tests).
fn received_past_sign_on(sim: &switchyard::tools::sim::SimHandle, links: u64) -> u64 {
    sim.stats().received.saturating_sub(links)
}

/// A simulator that keeps no record of what it answers: the load test's
/// CPU goes to the switch.
async fn unrecorded_sim() -> switchyard::tools::sim::SimHandle {
    start_sim_with(switchyard::tools::sim::SimConfig {
        record_capacity: 0,
        ..sim_config()
    })
    .await
}

async fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_moves_a_route_and_bad_files_change_nothing() {
    let d = Dir::new("reload-");
    let olga = add_user(&d, "olga", "operator", OLGA_PW).await;
    let sim1 = unrecorded_sim().await;
    let sim2 = unrecorded_sim().await;
    std::fs::write(&d.config, toml(&d, &[sim1.local_addr()], None, "", "")).expect("config");
    let (mut child, banner) = start_logged(&d).await;
    let admin = banner.admin.expect("admin on");
    wait_metric(admin, "switchyard_link_up", &[], |v| v >= 1.0).await;
    let cookie = login(admin, "olga", OLGA_PW, &olga).await;
    assert_eq!(
        get(admin, "/api/config", &cookie).await.json()["generation"]["number"],
        1
    );

    // Open loop, 5,000/s for 5 s, from a seeded stream.
    let target = banner.terminals.to_string();
    let load = tokio::task::spawn_blocking(move || {
        loadtest_run(&[
            "--target",
            &target,
            "--no-progress",
            "-R",
            "5000",
            "-c",
            "16",
            "-d",
            "5s",
            "--warmup",
            "0s",
            "--timeout",
            "4s",
            "--seed",
            "15",
        ])
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        received_past_sign_on(&sim1, 1) > 1000,
        "the load reaches the first host"
    );
    assert_eq!(received_past_sign_on(&sim2, 0), 0);

    // The second acquirer added, and the cards of BIN 4... moved to it.
    std::fs::write(
        &d.config,
        toml(
            &d,
            &[sim1.local_addr()],
            Some(sim2.local_addr()),
            "[[routing.routes]]\nprefix = \"4\"\nacquirer = \"acquirer-b\"\n",
            "",
        ),
    )
    .expect("config");
    let a = post(admin, "/api/actions/reload", &cookie, "").await;
    let answered = Instant::now();
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["generation"], 2, "{v}");
    let c = &v["config"];
    assert_eq!(c["result"], "ok", "{v}");
    assert_eq!(c["previous"], 1);
    assert_eq!(c["acquirers_added"][0], "acquirer-b", "{v}");
    assert_eq!(c["links_started"][0]["name"], "acquirer-b#0", "{v}");
    assert_eq!(c["links_started"][0]["up"], true, "{v}");
    let changed: Vec<&str> = c["changed"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        changed.contains(&"routing.routes") && changed.contains(&"acquirers[1]"),
        "{changed:?}"
    );
    let moved = eventually(Duration::from_secs(1), || {
        received_past_sign_on(&sim2, 1) > 0
    })
    .await;
    let took = answered.elapsed();
    assert!(
        moved,
        "the new host saw no traffic within 1 s of the reload's answer"
    );
    eprintln!("the new host's first transaction {took:?} after the reload's answer");

    // A file that does not check: refused with the key, nothing changes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let good = std::fs::read_to_string(&d.config).expect("config");
    std::fs::write(
        &d.config,
        good.replace("request_timeout_ms = 2000", "request_timeout_ms = \"soon\""),
    )
    .expect("config");
    let a = post(admin, "/api/actions/reload", &cookie, "").await;
    assert_eq!(a.status, 422, "{}", a.body);
    let v = a.json();
    assert_eq!(v["error"], "invalid_config");
    assert_eq!(v["generation"], 2);
    assert_eq!(
        v["problems"][0]["path"], "acquirers[0].request_timeout_ms",
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("acquirers[0].request_timeout_ms")),
        "{v}"
    );

    // A key that needs a restart: refused naming it.
    std::fs::write(
        &d.config,
        good.replace(
            "[journal]\ndir",
            "[runtime]\nflavor = \"multi-thread\"\n[journal]\ndir",
        )
        .replace(
            "[terminals]\nlisten = \"127.0.0.1:0\"",
            "[terminals]\nlisten = \"127.0.0.1:1\"",
        ),
    )
    .expect("config");
    let a = post(admin, "/api/actions/reload", &cookie, "").await;
    assert_eq!(a.status, 409, "{}", a.body);
    let v = a.json();
    assert_eq!(v["error"], "restart_required");
    let keys: Vec<&str> = v["problems"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|p| p["path"].as_str())
        .collect();
    assert_eq!(keys, ["runtime.flavor", "terminals.listen"], "{v}");
    assert_eq!(v["generation"], 2);
    std::fs::write(&d.config, &good).expect("config");

    let report = load.await.expect("the load test ends");
    let m = metrics(admin).await;
    let shed: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("switchyard_shed_total"))
        .collect();
    eprintln!("sent {}, shed: {shed:?}", report.sent());
    for r in report.per_second() {
        eprintln!(
            "second {}: sent {} answered {} errors {} p99 {:?} µs max {:?} µs",
            r.second, r.sent, r.answered, r.errors, r.p99_us, r.max_us
        );
    }
    assert!(report.sent() >= 20_000, "sent {}", report.sent());
    assert_eq!(report.lost(), 0, "lost");
    assert_eq!(report.mismatched(), 0, "mismatched");
    assert_eq!(report.reconnects(), 0, "terminal reconnects");
    assert_eq!(report.timed_out(), 0, "timed out");
    assert_eq!(
        report.errors(),
        0,
        "the switch's refusals: {:?}",
        report.responses()
    );
    assert!(report.problems().is_empty(), "{:?}", report.problems());
    // Both hosts carried traffic after the move: 5... cards stay on the first.
    let after_first = received_past_sign_on(&sim1, 1);
    assert!(
        received_past_sign_on(&sim2, 1) > 1000,
        "{}",
        received_past_sign_on(&sim2, 1)
    );

    let cfg = get(admin, "/api/config", &cookie).await.json();
    assert_eq!(cfg["generation"]["number"], 2);
    assert_eq!(cfg["generation"]["loaded_by"], "api");
    assert_eq!(cfg["acquirers"][1]["name"], "acquirer-b");
    let m = metrics(admin).await;
    assert_eq!(metric(&m, "switchyard_config_generation", &[]), 2.0);
    for (result, n) in [("ok", 1.0), ("invalid", 1.0), ("restart_required", 1.0)] {
        assert_eq!(
            metric(
                &m,
                "switchyard_config_reloads_total",
                &[&format!("result=\"{result}\"")]
            ),
            n,
            "{result}"
        );
    }

    // In the audit trail: who, what changed, the result; refusals too.
    let reloads: Vec<Value> = d
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "action" && l["details"]["action"] == "reload")
        .collect();
    assert_eq!(reloads.len(), 3, "{reloads:?}");
    assert!(reloads.iter().all(|l| l["user"] == "olga"));
    assert_eq!(reloads[0]["result"], "ok");
    assert_eq!(reloads[0]["details"]["config"]["generation"], 2);
    assert!(
        reloads[0]["details"]["config"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|k| k == "routing.routes"))
    );
    assert!(
        reloads[1]["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("failed: config:")
                && r.contains("acquirers[0].request_timeout_ms")),
        "{}",
        reloads[1]
    );
    assert!(
        reloads[2]["result"]
            .as_str()
            .is_some_and(|r| r.contains("terminals.listen")),
        "{}",
        reloads[2]
    );
    // Never a value: not the key, not the address refused.
    let trail = std::fs::read_to_string(&d.audit).expect("trail");
    assert!(!trail.contains("000102030405060708090a0b0c0d0e0f"));
    assert!(!trail.contains("127.0.0.1:1\""), "{trail}");

    // Still both hosts: a 4... card goes to the second, a 5... to the first.
    let mut t = Terminal::connect(banner.terminals).await;
    let before = received_past_sign_on(&sim2, 1);
    assert_eq!(
        code(&t.request(&auth(Mti::FINANCIAL, 1, PAN, 100)).await),
        "00"
    );
    assert_eq!(received_past_sign_on(&sim2, 1), before + 1);
    assert_eq!(
        code(
            &t.request(&auth(Mti::FINANCIAL, 2, "5500000000000004", 100))
                .await
        ),
        "00"
    );
    assert_eq!(received_past_sign_on(&sim1, 1), after_first + 1);
    assert!(stop(&mut child).await.success(), "{}", d.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_a_replaced_link_drains_and_signs_off() {
    let d = Dir::new("reload-hup-");
    let olga = add_user(&d, "olga", "operator", OLGA_PW).await;
    let sim1 = start_sim().await;
    let sim2 = start_sim().await;
    std::fs::write(&d.config, toml(&d, &[sim1.local_addr()], None, "", "")).expect("config");
    let (mut child, banner) = start_logged(&d).await;
    let admin = banner.admin.expect("admin on");
    wait_metric(admin, "switchyard_link_up", &[], |v| v >= 1.0).await;
    let mut t = Terminal::connect(banner.terminals).await;
    assert_eq!(
        code(&t.request(&auth(Mti::FINANCIAL, 1, PAN, 100)).await),
        "00"
    );
    assert_eq!(transactions(&sim1), 1);
    let signed_on = sim1.received().len();

    // acquirer-a's link moves to the second host.
    std::fs::write(&d.config, toml(&d, &[sim2.local_addr()], None, "", "")).expect("config");
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) with a pid of our own child and a valid signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait_metric(admin, "switchyard_config_generation", &[], |v| v >= 2.0).await;
    // The old link signs off (an 0800 after its sign-on) and disconnects.
    assert!(
        sim1.wait_until(GUARD, |s| s.stats().connections == 0).await,
        "the old link disconnects"
    );
    let r = sim1.received();
    assert_eq!(r.len(), signed_on + 1, "{r:?}");
    assert_eq!(r.last().map(|r| r.mti.value()), Some(800), "a sign-off");
    // The new one carries the traffic.
    assert_eq!(
        code(&t.request(&auth(Mti::FINANCIAL, 2, PAN, 100)).await),
        "00"
    );
    assert_eq!(transactions(&sim2), 1);
    assert_eq!(transactions(&sim1), 1);

    let cookie = login(admin, "olga", OLGA_PW, &olga).await;
    let links = get(admin, "/api/links", &cookie).await.json();
    let a = &links["acquirers"][0]["links"];
    assert_eq!(a.as_array().map(Vec::len), Some(1), "{links}");
    assert_eq!(a[0]["name"], "acquirer-a#1", "{links}");
    assert_eq!(a[0]["state"], "up", "{links}");
    assert_eq!(links["config_generation"], 2);
    let cfg = get(admin, "/api/config", &cookie).await.json();
    assert_eq!(cfg["generation"]["loaded_by"], "sighup");
    // Recorded without a user: the signal's.
    let hup: Vec<Value> = d
        .audit_lines()
        .into_iter()
        .filter(|l| l["details"]["trigger"] == "sighup")
        .collect();
    assert_eq!(hup.len(), 1, "{hup:?}");
    assert_eq!(hup[0]["result"], "ok");
    assert!(hup[0]["user"].is_null());
    assert_eq!(
        hup[0]["details"]["config"]["links_retired"][0],
        "acquirer-a#0"
    );
    // The same file again: nothing to do, the generation stays.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait_metric(
        admin,
        "switchyard_config_reloads_total",
        &["result=\"unchanged\""],
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(
        metric(&metrics(admin).await, "switchyard_config_generation", &[]),
        2.0
    );
    assert!(stop(&mut child).await.success(), "{}", d.log_text());
}

/// The store names a reload's new acquirer in its rows, not by number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_names_an_acquirer_a_reload_added() {
    let d = Dir::new("reload-store-");
    add_user(&d, "olga", "operator", OLGA_PW).await;
    let sim1 = start_sim().await;
    let sim2 = start_sim().await;
    let db = d.path().join("store.db");
    let store = format!(
        "[store]\nenabled = true\nurl = \"sqlite://{}\"\nbatch_max = 4\n",
        db.display()
    );
    std::fs::write(&d.config, toml(&d, &[sim1.local_addr()], None, "", &store)).expect("config");
    let (mut child, banner) = start_logged(&d).await;
    let admin = banner.admin.expect("admin on");
    wait_metric(admin, "switchyard_link_up", &[], |v| v >= 1.0).await;
    std::fs::write(
        &d.config,
        toml(
            &d,
            &[sim1.local_addr()],
            Some(sim2.local_addr()),
            "[[routing.routes]]\nprefix = \"4\"\nacquirer = \"acquirer-b\"\n",
            &store,
        ),
    )
    .expect("config");
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) with a pid of our own child and a valid signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait_metric(admin, "switchyard_config_generation", &[], |v| v >= 2.0).await;
    let mut t = Terminal::connect(banner.terminals).await;
    assert_eq!(
        code(&t.request(&auth(Mti::FINANCIAL, 1, PAN, 100)).await),
        "00"
    );
    assert_eq!(transactions(&sim2), 1);
    assert!(stop(&mut child).await.success(), "{}", d.log_text());
    let rows = tokio::task::block_in_place(|| {
        let backend = switchyard::switch::store::parse_url(&format!("sqlite://{}", db.display()))
            .expect("url");
        let mut s = switchyard::switch::store::open(&backend).expect("store opens");
        s.transactions("node-1", 0, 10).expect("rows")
    });
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].acquirer.as_deref(), Some("acquirer-b"));
}
