//! A terminal over TLS (a rustls client through `net::Conn`, framed ISO
//! 8583), and a private CA with the certificates most TLS tests need.

use std::net::SocketAddr;
use std::path::Path;

use bytes::BytesMut;
use switchyard::frame::{FrameCodec, LengthHeader};
use switchyard::iso8583::{Message, specs};
use switchyard::net::{Conn, TlsConn};
use switchyard::tools::certs::{CertFiles, Pki};
use switchyard_protocol::tls::{ClientSettings, ServerSettings, server_name};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::{Decoder, Encoder};

use super::{GUARD, TID};

/// A terminal over TLS: framed ISO 8583 (iso87ascii, 2-byte header)
/// through `net::Conn`.
pub struct TlsTerminal {
    pub conn: Conn,
    codec: FrameCodec,
    rbuf: BytesMut,
}

impl TlsTerminal {
    /// Connects and runs the handshake, checking the server's certificate
    /// against `ca` and the name "localhost"; with `cert`, presents it.
    pub async fn connect(
        addr: SocketAddr,
        ca: &Path,
        cert: Option<&CertFiles>,
    ) -> std::io::Result<TlsTerminal> {
        let settings = ClientSettings {
            ca: ca.to_path_buf(),
            cert: cert.map(|c| c.cert.clone()),
            key: cert.map(|c| c.key.clone()),
            ..ClientSettings::default()
        };
        let config = settings.build().expect("client config");
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = server_name("localhost").expect("name");
        let conn = timeout(GUARD, TlsConn::client(tcp, config, name)?.handshake())
            .await
            .expect("handshake ends in time")?;
        Ok(TlsTerminal {
            conn,
            codec: FrameCodec::new(LengthHeader::Binary2, 8192),
            rbuf: BytesMut::new(),
        })
    }

    pub fn peer_certificate(&self) -> Vec<u8> {
        let certs = self
            .conn
            .tls()
            .and_then(|t| t.peer_certificates())
            .expect("server certificate");
        certs[0].to_vec()
    }

    /// Frames `body` and writes it all (TLS records flushed too).
    pub async fn send(&mut self, body: &[u8]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        self.codec.encode(body, &mut out).expect("frames");
        loop {
            self.conn.write_available(&mut out)?;
            if out.is_empty() && !self.conn.wants_flush() {
                return Ok(());
            }
            self.conn.tcp().writable().await?;
        }
    }

    /// The next answer; `Ok(None)` once the switch closed (after the
    /// answers that came before the close); `Err` when the TLS session
    /// failed (an alert from the switch, say).
    pub async fn recv(&mut self) -> std::io::Result<Option<Message>> {
        timeout(GUARD, async {
            let mut open = true;
            if self.conn.has_buffered() {
                open = self.conn.read_available(&mut self.rbuf)?;
            }
            loop {
                if let Some(frame) = self.codec.decode(&mut self.rbuf).expect("well framed") {
                    return Ok(Some(
                        Message::parse(frame, specs::iso87ascii()).expect("parses"),
                    ));
                }
                if !open {
                    return Ok(None);
                }
                self.conn.tcp().readable().await?;
                open = self.conn.read_available(&mut self.rbuf)?;
            }
        })
        .await
        .expect("an answer or a close within the guard time")
    }

    pub async fn request(&mut self, body: &[u8]) -> Message {
        self.send(body).await.expect("sends");
        self.recv()
            .await
            .expect("TLS session holds")
            .expect("an answer")
    }
}

/// A private CA in a temporary directory, a server certificate (for
/// localhost and 127.0.0.1) and a client certificate whose CN is `TID`.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub server: CertFiles,
    pub term1: CertFiles,
}

pub fn certs() -> Certs {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pki = Pki::new(dir.path(), "switch").expect("CA");
    let server = pki.server("server", &[]).expect("server cert");
    let term1 = pki.client("term1", TID, &[]).expect("client cert");
    Certs {
        dir,
        pki,
        server,
        term1,
    }
}

impl Certs {
    /// A TLS server with this CA's server certificate that requires a
    /// client certificate from this CA (for the simulator).
    pub fn server_requiring_client_certs(&self) -> std::sync::Arc<rustls::ServerConfig> {
        ServerSettings {
            cert: self.server.cert.clone(),
            key: self.server.key.clone(),
            client_ca: Some(self.pki.ca.clone()),
            require_client_cert: true,
            ..ServerSettings::default()
        }
        .build()
        .expect("server config")
    }
}

/// A path as TOML string content (temporary paths are UTF-8).
pub fn toml_path(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").replace('\\', "\\\\")
}
