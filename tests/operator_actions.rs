//! Operators' actions against the real `switchyard run` over real sockets:
//!
//! * a link stopped: its host sees the sign-off and the disconnect,
//!   `/api/links` says it is stopped, traffic goes on over the acquirer's
//!   other link; started: it signs on again and carries traffic;
//! * a card blocked: answered 62, never reaching the host, journaled;
//!   unblocked: approved; a BIN blocked the same way, and still blocked
//!   after a restart (the file holds no card number);
//! * a viewer's action refused 403; every action in the audit trail; no
//!   Luhn-valid card number in any admin answer, the trail or the log.

#[path = "common/admin_http.rs"]
mod admin_http;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use admin_http::*;
use common::*;
use serde_json::Value;
use switchyard::iso8583::Mti;
use switchyard::switch::journal::Record;

const OLGA_PW: &str = "olga's long passphrase";
const VIC_PW: &str = "vic's long passphrase";
/// Same BIN as `PAN`, another card.
const SAME_BIN: &str = "4761739001010028";
const OTHER_BIN: &str = "5500000000000004";

fn toml(d: &Dir, links: &[SocketAddr]) -> String {
    let links = links
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
test_setup = true
[terminals]
listen = "127.0.0.1:0"
{admin}
[limits]
shutdown_grace_ms = 3000
[[acquirers]]
name = "acquirer-a"
links = [{links}]
request_timeout_ms = 1000
connect_timeout_ms = 500
backoff_initial_ms = 20
backoff_max_ms = 200
[routing]
default = "acquirer-a"
[store]
url = "sqlite://{journal}-store/switchyard.db"
[journal]
dir = "{journal}"
[fraud]
pan_key = "000102030405060708090a0b0c0d0e0f"
[blocks]
file = "{blocks}"
"#,
        admin = d.admin_table(),
        journal = d.journal.display(),
        blocks = d.path().join("blocks.json").display(),
    )
}

/// Every answer body an action or a read returned, for the card scan.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn keep(&mut self, a: Answer) -> Answer {
        self.0.push(a.body.clone());
        a
    }
}

fn link<'a>(links: &'a Value, name: &str) -> &'a Value {
    links["acquirers"][0]["links"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name))
        .unwrap_or_else(|| panic!("no link {name} in {links}"))
}

/// Polls `/api/links` until link `name` is in `state`: the links.
async fn wait_link_state(admin: SocketAddr, cookie: &str, name: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let links = get(admin, "/api/links", cookie).await.json();
        if link(&links, name)["state"] == state {
            return links;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never {state}: {links}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A 0200 of `pan` with the next STAN: the STAN and its DE39.
async fn pay(t: &mut Terminal, stan: &mut u32, pan: &str) -> (u32, String) {
    *stan += 1;
    let a = t.request(&auth(Mti::FINANCIAL, *stan, pan, 100)).await;
    (*stan, code(&a))
}

/// The host received a transaction from `terminal` with this STAN.
fn saw(sim: &switchyard::tools::sim::SimHandle, stan: u32) -> bool {
    sim.received()
        .iter()
        .any(|r| r.stan == stan && r.terminal_id == TID && r.mti.value() != 800)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_stop_and_start_and_blocked_cards_and_bins_are_declined_before_routing() {
    let d = Dir::new("actions-");
    let olga = add_user(&d, "olga", "operator", OLGA_PW).await;
    let vic = add_user(&d, "vic", "viewer", VIC_PW).await;
    let host0 = start_sim().await;
    let host1 = start_sim().await;
    std::fs::write(
        &d.config,
        toml(&d, &[host0.local_addr(), host1.local_addr()]),
    )
    .expect("config");
    let (mut child, banner) = start_logged(&d).await;
    let admin = banner.admin.expect("admin on");
    wait_metric(admin, "switchyard_link_up", &[], |v| v >= 2.0).await;
    let op = login(admin, "olga", OLGA_PW, &olga).await;
    let viewer = login(admin, "vic", VIC_PW, &vic).await;
    let mut seen = Seen::default();
    let mut t = Terminal::connect(banner.terminals).await;
    let mut stan = 0u32;

    // A viewer may look, not act.
    for (path, body) in [
        (
            "/api/actions/link/stop",
            r#"{"acquirer":"acquirer-a","link":"acquirer-a#0"}"#,
        ),
        ("/api/actions/block", r#"{"bin":"476173"}"#),
    ] {
        let a = seen.keep(post(admin, path, &viewer, body).await);
        assert_eq!(a.status, 403, "{path}: {}", a.body);
    }
    assert_eq!(
        seen.keep(get(admin, "/api/blocks", &viewer).await).status,
        200
    );

    // Link stop: drained, signed off, down; the other link carries on.
    let before = host0.received().len();
    let a = seen.keep(
        post(
            admin,
            "/api/actions/link/stop",
            &op,
            r#"{"acquirer":"acquirer-a","link":"acquirer-a#0"}"#,
        )
        .await,
    );
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.json()["was"], "running");
    assert!(
        host0
            .wait_until(GUARD, |s| s.stats().connections == 0)
            .await,
        "the stopped link disconnects"
    );
    let r = host0.received();
    assert_eq!(r.len(), before + 1, "one more message: the sign-off");
    assert_eq!(r.last().map(|r| r.mti.value()), Some(800));
    let links = wait_link_state(admin, &op, "acquirer-a#0", "stopped").await;
    seen.0.push(links.to_string());
    assert_eq!(link(&links, "acquirer-a#0")["up"], false);
    assert_eq!(link(&links, "acquirer-a#1")["state"], "up");
    for _ in 0..10 {
        let (s, c) = pay(&mut t, &mut stan, PAN).await;
        assert_eq!(c, "00");
        assert!(saw(&host1, s) && !saw(&host0, s));
    }
    // Stays down: no reconnect while stopped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(host0.stats().connections, 0);

    // Start: up again, and traffic reaches it.
    let a = seen.keep(
        post(
            admin,
            "/api/actions/link/start",
            &op,
            r#"{"acquirer":"acquirer-a","link":"0"}"#,
        )
        .await,
    );
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.json()["was"], "stopped");
    wait_metric(admin, "switchyard_link_up", &[], |v| v >= 2.0).await;
    let links = wait_link_state(admin, &op, "acquirer-a#0", "up").await;
    seen.0.push(links.to_string());
    let mut reached = false;
    for _ in 0..40 {
        let (s, c) = pay(&mut t, &mut stan, PAN).await;
        assert_eq!(c, "00");
        reached |= saw(&host0, s);
    }
    assert!(reached, "the started link carries traffic again");
    let a = seen.keep(
        post(
            admin,
            "/api/actions/link/stop",
            &op,
            r#"{"acquirer":"acquirer-a","link":"acquirer-a#7"}"#,
        )
        .await,
    );
    assert_eq!(a.status, 404, "{}", a.body);

    // A card blocked: 62, never forwarded; its BIN's other cards pass.
    let a = seen.keep(
        post(
            admin,
            "/api/actions/block",
            &op,
            &format!(r#"{{"pan":"{PAN}"}}"#),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["block"]["kind"], "card");
    assert_eq!(v["block"]["masked_pan"], "476173******0010");
    assert_eq!(v["result"], "added");
    let card_hash = v["block"]["card_hash"].as_str().expect("hash").to_owned();
    assert_eq!(card_hash.len(), 32);
    let (s, c) = pay(&mut t, &mut stan, PAN).await;
    assert_eq!(c, "62", "a blocked card");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!saw(&host0, s) && !saw(&host1, s), "never forwarded");
    assert_eq!(pay(&mut t, &mut stan, SAME_BIN).await.1, "00");
    let blocks = seen.keep(get(admin, "/api/blocks", &viewer).await).json();
    assert_eq!(
        blocks["cards"][0]["card_hash"],
        card_hash.as_str(),
        "{blocks}"
    );
    assert_eq!(blocks["cards"][0]["added_by"], "olga");
    assert_eq!(blocks["response_code"], "62");
    // A card that is not one is refused without an echo.
    let a = seen.keep(
        post(
            admin,
            "/api/actions/block",
            &op,
            r#"{"pan":"4761739001010011"}"#,
        )
        .await,
    );
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(!a.body.contains("4761739001010011"), "{}", a.body);
    let a = seen.keep(
        post(
            admin,
            "/api/actions/block",
            &op,
            r#"{"pan":4761739001010010}"#,
        )
        .await,
    );
    assert_eq!(a.status, 400, "{}", a.body);

    let a = seen.keep(
        post(
            admin,
            "/api/actions/unblock",
            &op,
            &format!(r#"{{"pan":"{PAN}"}}"#),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(pay(&mut t, &mut stan, PAN).await.1, "00", "unblocked");
    let a = seen.keep(
        post(
            admin,
            "/api/actions/unblock",
            &op,
            &format!(r#"{{"pan":"{PAN}"}}"#),
        )
        .await,
    );
    assert_eq!(a.status, 404, "{}", a.body);

    // A BIN blocked.
    let a = seen.keep(post(admin, "/api/actions/block", &op, r#"{"bin":"550000"}"#).await);
    assert_eq!(a.status, 200, "{}", a.body);
    let (s, c) = pay(&mut t, &mut stan, OTHER_BIN).await;
    assert_eq!(c, "62", "a blocked BIN");
    assert!(!saw(&host0, s) && !saw(&host1, s));
    assert_eq!(pay(&mut t, &mut stan, PAN).await.1, "00");
    let links = seen.keep(get(admin, "/api/links", &viewer).await).json();
    assert_eq!(links["blocks"]["bins"], 1, "{links}");
    let m = http_get(admin, "/metrics").await.1;
    assert_eq!(
        metric(&m, "switchyard_blocked_total", &["kind=\"card\""]),
        1.0
    );
    assert_eq!(
        metric(&m, "switchyard_blocked_total", &["kind=\"bin\""]),
        1.0
    );
    for path in ["/api/summary", "/api/config", "/api/links", "/api/blocks"] {
        seen.keep(get(admin, path, &op).await);
    }
    assert!(stop(&mut child).await.success(), "{}", d.log_text());

    // The file: hashes and BINs only. After a restart the BIN is still
    // blocked.
    let file = std::fs::read_to_string(d.path().join("blocks.json")).expect("blocks file");
    assert!(file.contains("550000") && !file.contains(PAN), "{file}");
    let (mut child, banner) = start_logged(&d).await;
    let admin = banner.admin.expect("admin on");
    wait_metric(admin, "switchyard_link_up", &[], |v| v >= 2.0).await;
    let op = login(admin, "olga", OLGA_PW, &olga).await;
    let blocks = seen.keep(get(admin, "/api/blocks", &op).await).json();
    assert_eq!(blocks["bins"][0]["bin"], "550000", "{blocks}");
    let mut t = Terminal::connect(banner.terminals).await;
    assert_eq!(
        code(&t.request(&auth(Mti::FINANCIAL, 900, OTHER_BIN, 100)).await),
        "62",
        "still blocked after the restart"
    );
    assert!(stop(&mut child).await.success(), "{}", d.log_text());

    // Journaled: each 62 has its request and its response.
    let declined = switchyard::switch::journal::read_all(&d.journal)
        .expect("journal")
        .map(|r| r.expect("undamaged").1)
        .filter(|r| matches!(r, Record::Response { response_code, .. } if response_code == b"62"))
        .count();
    assert_eq!(declined, 3);

    // In the audit trail: each action with its operator and result.
    let lines = d.audit_lines();
    let actions: Vec<(String, String, String)> = lines
        .iter()
        .filter(|l| l["event"] == "action")
        .map(|l| {
            (
                l["user"].as_str().unwrap_or("").to_owned(),
                l["details"]["action"]
                    .as_str()
                    .or(l["details"]["path"].as_str())
                    .unwrap_or("")
                    .to_owned(),
                l["result"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let has = |user: &str, action: &str, result: &str| {
        actions
            .iter()
            .any(|(u, a, r)| u == user && a == action && r.starts_with(result))
    };
    assert!(
        has("vic", "/api/actions/link/stop", "forbidden"),
        "{actions:?}"
    );
    assert!(has("vic", "/api/actions/block", "forbidden"), "{actions:?}");
    assert!(has("olga", "link_stop", "ok"), "{actions:?}");
    assert!(has("olga", "link_start", "ok"), "{actions:?}");
    assert!(has("olga", "link_stop", "refused"), "{actions:?}");
    assert!(has("olga", "block", "ok: added"), "{actions:?}");
    assert!(has("olga", "block", "refused"), "{actions:?}");
    assert!(has("olga", "unblock", "ok: removed"), "{actions:?}");
    assert!(has("olga", "unblock", "refused"), "{actions:?}");
    let blocked_card = lines
        .iter()
        .find(|l| l["details"]["action"] == "block" && l["details"]["kind"] == "card")
        .expect("the card's block");
    assert_eq!(blocked_card["details"]["card_hash"], card_hash.as_str());
    assert_eq!(blocked_card["details"]["masked_pan"], "476173******0010");

    // No card number anywhere an operator reads.
    for (what, text) in seen
        .0
        .iter()
        .map(|b| ("an admin answer", b.clone()))
        .chain([
            (
                "the audit trail",
                std::fs::read_to_string(&d.audit).expect("trail"),
            ),
            ("the log", d.log_text()),
            ("the blocks file", file.clone()),
        ])
    {
        let found = card_numbers(&text);
        assert!(found.is_empty(), "{what} holds {found:?}: {text}");
    }
}
