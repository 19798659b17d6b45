//! TLS on the terminal side, end to end over 127.0.0.1: a rustls client
//! with its own certificate (made per test by a private CA) against the
//! switch's TLS listener. Refusals by reason, DE41 bound to the
//! certificate, plain and TLS listeners side by side, certificates
//! re-read under load, and a handshake storm beside a steady terminal.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use common::tls::{Certs, TlsTerminal, certs};
use common::*;
use switchyard::frame::{FrameCodec, LengthHeader};
use switchyard::iso8583::Mti;
use switchyard::tools::certs::{CertFiles, Pki};
use tokio_util::codec::Encoder;

fn tls_table(c: &Certs, extra: &str) -> String {
    format!(
        "[terminals.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{extra}\n",
        c.server.cert.display(),
        c.server.key.display(),
        c.pki.ca.display()
    )
}

async fn tls_switch(links: &[SocketAddr], terminals: &str) -> switchyard::switch::server::Switch {
    let switch = start_switch(&config_terminals(links, terminals)).await;
    wait_links_up(&switch).await;
    switch
}

async fn metrics(switch: &switchyard::switch::server::Switch) -> String {
    http_get(switch.admin_addr.expect("admin"), "/metrics")
        .await
        .1
}

fn failures(body: &str, reason: &str) -> f64 {
    metric(
        body,
        "switchyard_tls_handshake_failures_total",
        &["listener=\"terminals\"", &format!("reason=\"{reason}\"")],
    )
}

#[tokio::test]
async fn a_terminal_with_its_certificate_is_answered_over_tls() {
    let sim = start_sim().await;
    let c = certs();
    let switch = tls_switch(&[sim.local_addr()], &tls_table(&c, "")).await;
    assert_eq!(
        switch.tls_addr,
        Some(switch.terminal_addr),
        "listen itself speaks TLS"
    );
    let mut t = TlsTerminal::connect(switch.terminal_addr, &c.pki.ca, Some(&c.term1))
        .await
        .expect("handshake");
    assert_eq!(code(&t.request(&network(1, "301")).await), "00");
    let m = t.request(&auth(Mti::FINANCIAL, 2, PAN, 1000)).await;
    assert_eq!(m.mti(), Mti::FINANCIAL_RESPONSE);
    assert_eq!(code(&m), "00");
    // Many requests in one write: many frames per TLS record both ways.
    let mut batch = BytesMut::new();
    let mut codec = FrameCodec::new(LengthHeader::Binary2, 8192);
    for stan in 10..60 {
        codec
            .encode(&auth(Mti::FINANCIAL, stan, PAN, 1000)[..], &mut batch)
            .expect("frames");
    }
    let mut out = batch;
    t.conn.write_available(&mut out).expect("writes");
    assert!(out.is_empty());
    for _ in 10..60 {
        let m = t.recv().await.expect("session").expect("answer");
        assert_eq!(code(&m), "00");
    }
    let body = metrics(&switch).await;
    assert!(
        metric(
            &body,
            "switchyard_tls_handshakes_total",
            &["listener=\"terminals\""]
        ) >= 1.0
    );
    switch.shutdown().await;
}

/// The refused client sees its handshake or its first read fail (in TLS
/// 1.3 the client finishes first and learns of the refusal by alert).
async fn refused(addr: SocketAddr, ca: &Path, cert: Option<&CertFiles>) -> bool {
    match TlsTerminal::connect(addr, ca, cert).await {
        Err(_) => true,
        Ok(mut t) => {
            let _ = t.send(&network(1, "301")).await;
            !matches!(t.recv().await, Ok(Some(_)))
        }
    }
}

#[tokio::test]
async fn refusals_are_counted_by_reason() {
    let sim = start_sim().await;
    let mut c = certs();
    let other_dir = tempfile::tempdir().expect("tempdir");
    let mut other = Pki::new(other_dir.path(), "other").expect("CA");
    let stranger = other.client("stranger", TID, &[]).expect("cert");
    let expired = c.pki.expired_client("expired", TID).expect("cert");
    let revoked = c.pki.client("revoked", TID, &[]).expect("cert");
    let crl = c.pki.crl("crl", &[&revoked]).expect("crl");
    let extra = format!("crl_files = [\"{}\"]", crl.display());
    let switch = tls_switch(&[sim.local_addr()], &tls_table(&c, &extra)).await;
    let addr = switch.terminal_addr;

    let cases: [(&str, Option<&CertFiles>); 4] = [
        ("no_certificate", None),
        ("unknown_ca", Some(&stranger)),
        ("expired", Some(&expired)),
        ("revoked", Some(&revoked)),
    ];
    for (reason, cert) in cases {
        let before = failures(&metrics(&switch).await, reason);
        assert!(
            refused(addr, &c.pki.ca, cert).await,
            "{reason}: the client is refused"
        );
        let after = failures(&metrics(&switch).await, reason);
        assert_eq!(after, before + 1.0, "{reason}: its counter moves by one");
    }
    // The good certificate still gets through after all that.
    let mut t = TlsTerminal::connect(addr, &c.pki.ca, Some(&c.term1))
        .await
        .expect("handshake");
    assert_eq!(code(&t.request(&network(2, "301")).await), "00");
    switch.shutdown().await;
}

#[tokio::test]
async fn de41_must_be_the_certificates_terminal() {
    let sim = start_sim().await;
    let mut c = certs();
    let dir = tempfile::tempdir().expect("tempdir");
    let map = dir.path().join("terminal-ids.toml");
    std::fs::write(&map, "\"GATEWAY1\" = [\"TERM0007\", \"TERM0008\"]\n").expect("map");
    let gateway = c.pki.client("gateway", "GATEWAY1", &[]).expect("cert");
    let extra = format!(
        "bind_terminal_id = \"cn\"\nterminal_id_map = \"{}\"",
        map.display()
    );
    let switch = tls_switch(&[sim.local_addr()], &tls_table(&c, &extra)).await;
    let addr = switch.terminal_addr;

    let mut t = TlsTerminal::connect(addr, &c.pki.ca, Some(&c.term1))
        .await
        .expect("handshake");
    assert_eq!(
        code(
            &t.request(&auth_from(Mti::FINANCIAL, 1, PAN, 100, TID))
                .await
        ),
        "00"
    );
    let other = t
        .request(&auth_from(Mti::FINANCIAL, 2, PAN, 100, "TERM0002"))
        .await;
    assert_eq!(
        code(&other),
        "58",
        "another terminal's id on this certificate"
    );
    let mismatches = metric(
        &metrics(&switch).await,
        "switchyard_tls_terminal_id_mismatch_total",
        &[],
    );
    assert_eq!(mismatches, 1.0);

    // A gateway certificate may use the ids the map gives it, not its own.
    let mut g = TlsTerminal::connect(addr, &c.pki.ca, Some(&gateway))
        .await
        .expect("handshake");
    for (stan, tid, want) in [
        (3, "TERM0007", "00"),
        (4, "TERM0008", "00"),
        (5, TID, "58"),
        (6, "GATEWAY1", "58"),
    ] {
        let m = g
            .request(&auth_from(Mti::FINANCIAL, stan, PAN, 100, tid))
            .await;
        assert_eq!(code(&m), want, "{tid} on the gateway's certificate");
    }
    switch.shutdown().await;
}

#[tokio::test]
async fn plain_and_tls_listeners_side_by_side() {
    let sim = start_sim().await;
    let c = certs();
    let extra = "listen = \"127.0.0.1:0\"\nrequire_client_cert = false";
    // A ClientHello reads as the start of a 5,635-byte frame there: the
    // frame timeout ends it.
    let terminals = format!("frame_timeout_ms = 500\n{}", tls_table(&c, extra));
    let switch = tls_switch(&[sim.local_addr()], &terminals).await;
    let tls_addr = switch.tls_addr.expect("a TLS listener");
    assert_ne!(tls_addr, switch.terminal_addr);
    let mut plain = Terminal::connect(switch.terminal_addr).await;
    assert_eq!(
        code(&plain.request(&auth(Mti::FINANCIAL, 1, PAN, 100)).await),
        "00"
    );
    // Client certificate optional here: a terminal without one is served.
    let mut t = TlsTerminal::connect(tls_addr, &c.pki.ca, None)
        .await
        .expect("handshake");
    assert_eq!(
        code(&t.request(&auth(Mti::FINANCIAL, 2, PAN, 100)).await),
        "00"
    );
    // TLS on the plain listener is not ISO 8583: the handshake never
    // completes.
    let wrong = TlsTerminal::connect(switch.terminal_addr, &c.pki.ca, None).await;
    assert!(wrong.is_err(), "the plain listener does not speak TLS");
    switch.shutdown().await;
}

#[tokio::test]
async fn certificates_replaced_and_reloaded_under_load_drop_no_connection() {
    let sim = start_sim().await;
    let mut c = certs();
    let dir = tempfile::tempdir().expect("tempdir");
    let live_cert = dir.path().join("live.pem");
    let live_key = dir.path().join("live.key");
    std::fs::copy(&c.server.cert, &live_cert).expect("copy");
    std::fs::copy(&c.server.key, &live_key).expect("copy");
    let table = format!(
        "[terminals.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        live_cert.display(),
        live_key.display(),
        c.pki.ca.display()
    );
    let switch = tls_switch(&[sim.local_addr()], &table).await;
    let addr = switch.terminal_addr;
    let first = TlsTerminal::connect(addr, &c.pki.ca, Some(&c.term1))
        .await
        .expect("handshake");
    let old_cert = first.peer_certificate();

    // Terminals keep transacting while the material changes: each does
    // its requests, the first says when it is a quarter through.
    const EACH: u32 = 400;
    let quarter = Arc::new(tokio::sync::Notify::new());
    let mut load = Vec::new();
    for n in 0..4u32 {
        let mut t = TlsTerminal::connect(addr, &c.pki.ca, Some(&c.term1))
            .await
            .expect("handshake");
        let quarter = quarter.clone();
        load.push(tokio::spawn(async move {
            for i in 1..=EACH {
                let m = t
                    .request(&auth(Mti::FINANCIAL, n * 100_000 + i, PAN, 100))
                    .await;
                assert_eq!(code(&m), "00");
                if n == 0 && i == EACH / 4 {
                    quarter.notify_one();
                }
            }
        }));
    }
    quarter.notified().await;
    let renewed = c.pki.server("renewed", &[]).expect("new cert");
    std::fs::copy(&renewed.cert, &live_cert).expect("copy");
    std::fs::copy(&renewed.key, &live_key).expect("copy");
    switch.reload_tls().expect("reload");

    let fresh = TlsTerminal::connect(addr, &c.pki.ca, Some(&c.term1))
        .await
        .expect("handshake");
    let new_cert = fresh.peer_certificate();
    assert_ne!(
        new_cert, old_cert,
        "new handshakes present the new certificate"
    );
    let renewed_der = switchyard_protocol::tls::read_certs(&renewed.cert).expect("pem");
    assert_eq!(new_cert, renewed_der[0].to_vec());
    for l in load {
        l.await
            .expect("every load connection was answered throughout");
    }
    // The connection from before the reload still works.
    let mut first = first;
    assert_eq!(
        code(&first.request(&auth(Mti::FINANCIAL, 9, PAN, 100)).await),
        "00"
    );

    // A broken file is refused; what is in use stays.
    std::fs::write(&live_key, "not a key").expect("write");
    let err = switch.reload_tls().unwrap_err();
    assert!(err.contains("live.key"), "the error names the file: {err}");
    let again = TlsTerminal::connect(addr, &c.pki.ca, Some(&c.term1))
        .await
        .expect("handshake");
    assert_eq!(again.peer_certificate(), new_cert);
    switch.shutdown().await;
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill or read a plain struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= 5_000,
        "the storm needs 5,000 descriptors, the limit is {}",
        limit.rlim_cur
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_storm_does_not_starve_a_transacting_terminal() {
    raise_fd_limit();
    const STORM: usize = 2_000;
    const SLOTS: usize = 8;
    let sim = start_sim().await;
    let c = certs();
    let extra = format!("max_handshakes_in_flight = {SLOTS}\nhandshake_timeout_ms = 60000");
    let switch = tls_switch(
        &[sim.local_addr()],
        &format!("max_connections = 5000\n{}", tls_table(&c, &extra)),
    )
    .await;
    let addr = switch.terminal_addr;
    let admin = switch.admin_addr.expect("admin");
    let mut steady = TlsTerminal::connect(addr, &c.pki.ca, Some(&c.term1))
        .await
        .expect("handshake");

    let ca: PathBuf = c.pki.ca.clone();
    let term1 = c.term1.clone();
    let storm = tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..STORM {
            let (ca, term1) = (ca.clone(), term1.clone());
            set.spawn(async move {
                TlsTerminal::connect(addr, &ca, Some(&term1))
                    .await
                    .map(|t| t.conn)
            });
        }
        let mut ok = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(Ok(conn)) = r {
                ok.push(conn);
            }
        }
        ok.len()
    });
    // While it rages: the steady terminal is answered, and no more than
    // SLOTS handshakes ever run at once.
    let mut answered = 0;
    let mut stan = 0;
    let mut max_seen = 0.0f64;
    while !storm.is_finished() {
        stan += 1;
        let m = steady.request(&auth(Mti::FINANCIAL, stan, PAN, 100)).await;
        assert_eq!(code(&m), "00");
        answered += 1;
        let body = http_get(admin, "/metrics").await.1;
        max_seen = max_seen.max(metric(&body, "switchyard_tls_handshakes_in_flight", &[]));
    }
    let connected = storm.await.expect("storm task");
    assert_eq!(
        connected, STORM,
        "every storm connection got through, in turn"
    );
    assert!(
        answered >= 3,
        "the steady terminal kept transacting ({answered} answers)"
    );
    assert!(
        max_seen <= SLOTS as f64,
        "at most {SLOTS} handshakes at once, saw {max_seen}"
    );
    let body = metrics(&switch).await;
    let waits = metric(&body, "switchyard_tls_handshake_waits_total", &[]);
    assert!(waits > 0.0, "connections waited for a handshake slot");
    switch.shutdown().await;
}

#[test]
fn bad_tls_settings_are_config_problems_that_name_key_and_file() {
    let c = certs();
    let problems = |terminals: &str| {
        let toml = config_terminals(&["127.0.0.1:9".parse().expect("addr")], terminals);
        match switchyard::switch::config::Config::parse(&toml) {
            Ok(_) => panic!("accepted: {terminals}"),
            Err(p) => p
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    };
    let missing = problems(
        "[terminals.tls]\ncert = \"/nonexistent/switch.pem\"\nkey = \"/nonexistent/switch.key\"\n",
    );
    assert!(
        missing.contains("terminals.tls: /nonexistent/switch.pem"),
        "{missing}"
    );
    let old = problems(&tls_table(&c, "min_version = \"1.1\""));
    assert!(
        old.contains("terminals.tls.min_version") && old.contains("not allowed"),
        "{old}"
    );
    let bind = problems(&tls_table(&c, "bind_terminal_id = \"serial\""));
    assert!(bind.contains("terminals.tls.bind_terminal_id"), "{bind}");
    let no_ca = problems(&format!(
        "[terminals.tls]\ncert = \"{}\"\nkey = \"{}\"\nbind_terminal_id = \"cn\"\n",
        c.server.cert.display(),
        c.server.key.display()
    ));
    assert!(no_ca.contains("needs client_ca"), "{no_ca}");
    let suites = problems(&tls_table(
        &c,
        "cipher_suites = [\"TLS_RSA_WITH_RC4_128_SHA\"]",
    ));
    assert!(suites.contains("TLS_RSA_WITH_RC4_128_SHA"), "{suites}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_cut_at_the_timeout() {
    let sim = start_sim().await;
    let c = certs();
    let switch = tls_switch(
        &[sim.local_addr()],
        &tls_table(&c, "handshake_timeout_ms = 200"),
    )
    .await;
    let mut silent = tokio::net::TcpStream::connect(switch.terminal_addr)
        .await
        .expect("connects");
    // Nothing sent: the switch closes it once the timeout is over.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(GUARD, tokio::io::AsyncReadExt::read(&mut silent, &mut buf))
        .await
        .expect("closed within the guard time");
    assert!(matches!(n, Ok(0) | Err(_)), "closed, not answered: {n:?}");
    assert_eq!(failures(&metrics(&switch).await, "timeout"), 1.0);
    switch.shutdown().await;
}

#[tokio::test]
async fn de41_may_be_bound_to_the_certificates_dns_names() {
    let sim = start_sim().await;
    let mut c = certs();
    // Common name TERM0001, DNS names TERM0003 and TERM0004: with
    // san-dns only the DNS names count.
    let multi = c
        .pki
        .client("multi", TID, &["TERM0003", "TERM0004"])
        .expect("cert");
    let extra = "bind_terminal_id = \"san-dns\"";
    let switch = tls_switch(&[sim.local_addr()], &tls_table(&c, extra)).await;
    let mut t = TlsTerminal::connect(switch.terminal_addr, &c.pki.ca, Some(&multi))
        .await
        .expect("handshake");
    for (stan, tid, want) in [(1, "TERM0003", "00"), (2, "TERM0004", "00"), (3, TID, "58")] {
        let m = t
            .request(&auth_from(Mti::FINANCIAL, stan, PAN, 100, tid))
            .await;
        assert_eq!(code(&m), want, "{tid} under san-dns");
    }
    switch.shutdown().await;
}
