//! TLS on the acquirer side, in-process over 127.0.0.1: the switch's
//! links (`[acquirers.tls]`) to a simulator that speaks TLS and requires
//! a client certificate. A link that trusts another CA, or expects a name
//! the host's certificate does not carry, never comes up: each failed
//! attempt is a connect failure and a link handshake failure counted by
//! its reason ("unknown_ca", "wrong_name"), and the warn line says which.
//! A link with the right CA and its client certificate comes up and
//! carries a 0200 to its 00.

mod common;

use std::net::SocketAddr;

use common::tls::{Certs, certs, toml_path};
use common::*;
use switchyard::iso8583::Mti;
use switchyard::switch::server::Switch;
use switchyard::tools::certs::{CertFiles, Pki};
use switchyard::tools::sim::{SimConfig, SimHandle};

/// The host: TLS with a certificate for localhost from `c`'s CA, client
/// certificates from that CA required.
async fn tls_host(c: &Certs) -> SimHandle {
    start_sim_with(SimConfig {
        tls: Some(c.server_requiring_client_certs()),
        ..sim_config()
    })
    .await
}

/// One `[[acquirers]]` entry on `host` with its `[acquirers.tls]`.
fn acquirer(
    name: &str,
    host: SocketAddr,
    ca: &std::path::Path,
    cert: &CertFiles,
    server_name: &str,
) -> String {
    format!(
        r#"
[[acquirers]]
name = "{name}"
links = ["{host}"]
request_timeout_ms = 1000
connect_timeout_ms = 2000
backoff_initial_ms = 20
backoff_max_ms = 100
[acquirers.tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
server_name = "{server_name}"
"#,
        ca = toml_path(ca),
        cert = toml_path(&cert.cert),
        key = toml_path(&cert.key),
    )
}

async fn switch_with(acquirers: &[String], default: &str) -> Switch {
    let toml = format!(
        r#"
test_setup = true
[terminals]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
{acquirers}
[routing]
default = "{default}"
[store]
url = "sqlite://{journal}-store/switchyard.db"
[journal]
dir = "{journal}"
[fraud]
pan_key = "000102030405060708090a0b0c0d0e0f"
"#,
        acquirers = acquirers.concat(),
        journal = fresh_journal_dir().display(),
    );
    start_switch(&toml).await
}

const CONNECT_FAILURES: &str = "switchyard_link_connect_failures_total";
const TLS_FAILURES: &str = "switchyard_tls_handshake_failures_total";

#[tokio::test]
async fn a_link_that_cannot_verify_its_host_never_comes_up_and_says_why() {
    let log = Captured::install();
    let mut c = certs();
    let link_cert = c.pki.client("link", "SWITCH01", &[]).expect("cert");
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Pki::new(other_dir.path(), "other").expect("CA");
    let host = tls_host(&c).await;
    let addr = host.local_addr();
    let switch = switch_with(
        &[
            // Trusts a CA that did not issue the host's certificate.
            acquirer("wrong-ca", addr, &other.ca, &link_cert, "localhost"),
            // Expects a name the host's certificate does not carry.
            acquirer(
                "wrong-name",
                addr,
                &c.pki.ca,
                &link_cert,
                "acquirer.example",
            ),
        ],
        "wrong-ca",
    )
    .await;
    let admin = switch.admin_addr.expect("admin");

    for (name, reason) in [("wrong-ca", "unknown_ca"), ("wrong-name", "wrong_name")] {
        // Several attempts, each refused by the switch's side of the
        // handshake.
        let link = format!("link=\"{name}#0\"");
        let failed = wait_metric(admin, CONNECT_FAILURES, &[&link], |v| v >= 3.0).await;
        let body = http_get(admin, "/metrics").await.1;
        let refused = metric(
            &body,
            TLS_FAILURES,
            &["listener=\"link\"", &format!("reason=\"{reason}\"")],
        );
        // Counted before the attempt is (the TLS failure comes first).
        assert!(
            refused >= failed,
            "{name}: {refused} handshakes refused for {reason}, {failed} connects failed: {body}"
        );
        assert_eq!(
            metric(&body, "switchyard_link_up", &[&link]),
            0.0,
            "{name} is not up"
        );
        // The operator's line names the acquirer and the reason.
        let warns: Vec<String> = log
            .lines("WARN", "link not up")
            .into_iter()
            .filter(|l| l.contains(&format!("acquirer={name} ")))
            .collect();
        assert!(!warns.is_empty(), "{name}: a warn line");
        for w in &warns {
            let why = format!("TLS handshake failed ({reason})");
            for part in [why.as_str(), &addr.to_string(), "link=0"] {
                assert!(w.contains(part), "{part} missing from {w}");
            }
        }
    }
    // Neither link ever finished a handshake: the host saw no sign-on.
    let stats = host.stats();
    assert_eq!(stats.tls_handshakes, 0, "{stats:?}");
    assert!(host.received().is_empty(), "the host got nothing");
    for a in &switch.shared.acquirers {
        assert!(!a.any_up(), "{} is down", a.name);
    }
    // A terminal's request has nowhere to go and is told so at once.
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let m = t.request(&auth(Mti::FINANCIAL, 1, PAN, 1000)).await;
    assert_eq!(code(&m), "91", "issuer unavailable: no link is up");
    switch.shutdown().await;
}

#[tokio::test]
async fn a_link_with_the_right_ca_and_its_certificate_carries_a_0200() {
    let mut c = certs();
    let link_cert = c.pki.client("link", "SWITCH01", &[]).expect("cert");
    let host = tls_host(&c).await;
    let switch = switch_with(
        &[acquirer(
            "good",
            host.local_addr(),
            &c.pki.ca,
            &link_cert,
            "localhost",
        )],
        "good",
    )
    .await;
    wait_links_up(&switch).await;
    let mut t = Terminal::connect(switch.terminal_addr).await;
    let m = t.request(&auth(Mti::FINANCIAL, 7, PAN, 1000)).await;
    assert_eq!(m.mti(), Mti::FINANCIAL_RESPONSE);
    assert_eq!(code(&m), "00", "approved by the host");
    assert!(
        host.received()
            .iter()
            .any(|r| r.mti.value() == 200 && r.stan == 7),
        "the 0200 reached the host"
    );
    // One handshake, the host's requirement of a client certificate met.
    let stats = host.stats();
    assert_eq!(stats.tls_handshakes, 1, "{stats:?}");
    assert_eq!(stats.tls_handshake_failures, 0, "{stats:?}");
    let body = http_get(switch.admin_addr.expect("admin"), "/metrics")
        .await
        .1;
    assert!(
        metric(
            &body,
            "switchyard_tls_handshakes_total",
            &["listener=\"link\""]
        ) >= 1.0,
        "{body}"
    );
    switch.shutdown().await;
}

/// Under TLS 1.3 the host judges the link's certificate after the link's
/// side of the handshake is done: the refusal comes as an alert on the
/// first read, before the sign-on is answered. The link stays down and
/// the refusal is counted as a link handshake failure all the same.
#[tokio::test]
async fn a_link_whose_certificate_the_host_refuses_never_comes_up() {
    let c = certs();
    let other_dir = tempfile::tempdir().expect("tempdir");
    let mut other = Pki::new(other_dir.path(), "other").expect("CA");
    let stranger = other.client("stranger", "SWITCH01", &[]).expect("cert");
    let host = tls_host(&c).await;
    let switch = switch_with(
        &[acquirer(
            "refused",
            host.local_addr(),
            &c.pki.ca,
            &stranger,
            "localhost",
        )],
        "refused",
    )
    .await;
    let admin = switch.admin_addr.expect("admin");
    let refused = wait_metric(
        admin,
        TLS_FAILURES,
        &["listener=\"link\"", "reason=\"refused_by_peer\""],
        |v| v >= 2.0,
    )
    .await;
    assert!(refused >= 2.0);
    let body = http_get(admin, "/metrics").await.1;
    assert_eq!(
        metric(&body, "switchyard_link_up", &["link=\"refused#0\""]),
        0.0
    );
    assert!(
        host.stats().tls_handshake_failures >= 2,
        "the host refused each attempt"
    );
    assert!(host.received().is_empty(), "no sign-on reached the host");
    switch.shutdown().await;
}
