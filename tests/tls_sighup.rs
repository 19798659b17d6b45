//! SIGHUP to a real `switchyard run` process with TLS terminals: the
//! certificate files are replaced, the signal sent, and new handshakes
//! present the new certificate while a connection opened before keeps
//! transacting; the process does not die of the signal (SIGHUP's default
//! action), and the reload is counted.

mod common;

use common::tls::{TlsTerminal, certs, toml_path};
use common::*;
use switchyard::iso8583::Mti;

#[tokio::test]
async fn sighup_rereads_the_certificate_and_keeps_connections() {
    let mut c = certs();
    let sim = start_sim().await;
    let live_cert = c.dir.path().join("live.pem");
    let live_key = c.dir.path().join("live.key");
    std::fs::copy(&c.server.cert, &live_cert).expect("copy");
    std::fs::copy(&c.server.key, &live_key).expect("copy");
    let tls = format!(
        "[terminals.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        toml_path(&live_cert),
        toml_path(&live_key),
        toml_path(&c.pki.ca)
    );
    let path = c.dir.path().join("switch.toml");
    std::fs::write(&path, config_terminals(&[sim.local_addr()], &tls)).expect("config");
    let (mut child, banner) = start_process_banner(&path).await;
    let addr = banner.tls.expect("a TLS listener");
    let admin = banner.admin.expect("admin");
    wait_metric(admin, "switchyard_link_up", &[], |v| v >= 1.0).await;

    let mut before = TlsTerminal::connect(addr, &c.pki.ca, Some(&c.term1))
        .await
        .expect("handshake");
    let old_cert = before.peer_certificate();
    assert_eq!(
        code(&before.request(&auth(Mti::FINANCIAL, 1, PAN, 100)).await),
        "00"
    );

    let renewed = c.pki.server("renewed", &[]).expect("cert");
    std::fs::copy(&renewed.cert, &live_cert).expect("copy");
    std::fs::copy(&renewed.key, &live_key).expect("copy");
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) with a pid of our own child and a valid signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait_metric(
        admin,
        "switchyard_tls_reloads_total",
        &["result=\"ok\""],
        |v| v >= 1.0,
    )
    .await;

    let after = TlsTerminal::connect(addr, &c.pki.ca, Some(&c.term1))
        .await
        .expect("handshake");
    let new_cert = after.peer_certificate();
    assert_ne!(
        new_cert, old_cert,
        "new handshakes present the new certificate"
    );
    let renewed_der = switchyard_protocol::tls::read_certs(&renewed.cert).expect("pem");
    assert_eq!(new_cert, renewed_der[0].to_vec());
    assert_eq!(
        code(&before.request(&auth(Mti::FINANCIAL, 2, PAN, 100)).await),
        "00",
        "the connection from before the signal still transacts"
    );
    assert!(
        child.try_wait().expect("status").is_none(),
        "SIGHUP did not end the process"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(GUARD, child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "{status:?}");
}
