//! `Conn` over TLS between two real rustls ends on 127.0.0.1: frames both
//! ways after the handshake, data sent with the handshake's end not lost,
//! and a refused client certificate reported by its reason.

use std::path::Path;

use bytes::BytesMut;
use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
use switchyard_protocol::net::{Conn, TlsConn};
use switchyard_protocol::tls::{ClientSettings, ServerSettings, failure_reason, server_name};
use tokio::net::{TcpListener, TcpStream};

struct Pki {
    dir: tempfile::TempDir,
}

fn write(dir: &Path, name: &str, pem: String) {
    std::fs::write(dir.join(name), pem).expect("write pem");
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    write(dir.path(), "ca.pem", ca_cert.pem());
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    write(
        dir.path(),
        "server.pem",
        server.signed_by(&server_key, &issuer).expect("sign").pem(),
    );
    write(dir.path(), "server.key", server_key.serialize_pem());
    let client_key = KeyPair::generate().expect("key");
    let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
    client
        .distinguished_name
        .push(DnType::CommonName, "TERM0001");
    write(
        dir.path(),
        "client.pem",
        client.signed_by(&client_key, &issuer).expect("sign").pem(),
    );
    write(dir.path(), "client.key", client_key.serialize_pem());
    Pki { dir }
}

impl Pki {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
    fn server(&self, require: bool) -> ServerSettings {
        ServerSettings {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: Some(self.path("ca.pem")),
            require_client_cert: require,
            ..ServerSettings::default()
        }
    }
    fn client(&self, with_cert: bool) -> ClientSettings {
        ClientSettings {
            ca: self.path("ca.pem"),
            cert: with_cert.then(|| self.path("client.pem")),
            key: with_cert.then(|| self.path("client.key")),
            ..ClientSettings::default()
        }
    }
}

async fn pair(
    server: ServerSettings,
    client: ClientSettings,
) -> (std::io::Result<Conn>, std::io::Result<Conn>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server_config = server.build().expect("server config");
    let client_config = client.build().expect("client config");
    let accept = async {
        let (tcp, _) = listener.accept().await?;
        TlsConn::server(tcp, server_config)?.handshake().await
    };
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = server_name("localhost").expect("name");
        TlsConn::client(tcp, client_config, name)?.handshake().await
    };
    tokio::join!(accept, connect)
}

async fn read_exact(conn: &mut Conn, want: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    if conn.has_buffered() {
        conn.read_available(&mut buf).expect("read");
    }
    while buf.len() < want {
        conn.tcp().readable().await.expect("readable");
        assert!(conn.read_available(&mut buf).expect("read"), "closed early");
    }
    buf
}

async fn write_all(conn: &mut Conn, data: &[u8]) {
    let mut wbuf = BytesMut::from(data);
    loop {
        conn.write_available(&mut wbuf).expect("write");
        if wbuf.is_empty() && !conn.wants_flush() {
            return;
        }
        conn.tcp().writable().await.expect("writable");
    }
}

#[tokio::test]
async fn bytes_cross_both_ways_and_the_client_certificate_is_seen() {
    let pki = pki();
    let (server, client) = pair(pki.server(true), pki.client(true)).await;
    let (mut server, mut client) = (server.expect("server"), client.expect("client"));
    let peer = server
        .tls()
        .and_then(|t| t.peer_certificates())
        .map(|c| c.len());
    assert_eq!(peer, Some(1), "the server holds the client's certificate");
    // Larger than one TLS record and than rustls's buffer: many records,
    // several writes.
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let (got, ()) = tokio::join!(
        read_exact(&mut server, big.len()),
        write_all(&mut client, &big)
    );
    assert_eq!(&got[..], &big[..]);
    write_all(&mut server, b"answer").await;
    assert_eq!(&read_exact(&mut client, 6).await[..], b"answer");
    client.shutdown();
    let mut rest = BytesMut::new();
    loop {
        server.tcp().readable().await.expect("readable");
        if !server.read_available(&mut rest).expect("read") {
            break;
        }
    }
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_for_that_reason() {
    let pki = pki();
    let (server, _client) = pair(pki.server(true), pki.client(false)).await;
    let err = server.err().expect("the server refuses");
    assert_eq!(failure_reason(&err), "no_certificate", "{err}");
}

#[tokio::test]
async fn an_optional_client_certificate_may_be_left_out() {
    let pki = pki();
    let (server, client) = pair(pki.server(false), pki.client(false)).await;
    let (server, _client) = (server.expect("server"), client.expect("client"));
    assert!(server.tls().and_then(|t| t.peer_certificates()).is_none());
}

#[test]
fn old_versions_and_unknown_suites_are_refused_by_name() {
    assert!(
        switchyard_protocol::tls::MinVersion::parse("1.1")
            .unwrap_err()
            .contains("not allowed")
    );
    let err = switchyard_protocol::tls::provider(&["TLS_RSA_WITH_RC4_128_SHA".into()]).unwrap_err();
    assert!(
        err.to_string().contains("TLS_RSA_WITH_RC4_128_SHA"),
        "{err}"
    );
    let missing = ServerSettings {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
        ..ServerSettings::default()
    };
    let err = missing.build().unwrap_err().to_string();
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}
