//! `[admin.tls]`: the admin endpoint over HTTPS. The server settings are
//! `[terminals.tls]`'s (`tls::config`), built by the same code; the
//! handshake is tokio-rustls's, since hyper reads and writes through
//! tokio's `AsyncRead`/`AsyncWrite` rather than the terminal drivers'
//! readiness loop (`net::Conn`).
//!
//! The certificate, key, CA bundle and CRLs are re-read on SIGHUP, as the
//! terminal listener's: new handshakes use them, a refused re-read keeps
//! the material in use. A handshake holds its connection's slot (one of
//! `MAX_CONNECTIONS`) and has `handshake_timeout` to finish; a refused
//! one (a plain HTTP request, an unknown client certificate...) is
//! counted under `listener="admin"` with its reason and closes that
//! connection only.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::warn;

use crate::switch::tls::AdminTlsConfig;
use crate::telemetry;
use crate::throttle::LogThrottle;
use switchyard_protocol::tls::failure_reason;

/// Refused handshakes: one warn line per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

pub struct AdminTls {
    settings: AdminTlsConfig,
    server: ArcSwap<rustls::ServerConfig>,
    refusal_log: Mutex<LogThrottle>,
}

impl AdminTls {
    pub fn new(settings: AdminTlsConfig) -> Result<AdminTls, String> {
        let server = build(&settings)?;
        Ok(AdminTls {
            settings,
            server: ArcSwap::new(server),
            refusal_log: Mutex::new(LogThrottle::new(REFUSAL_LOG_INTERVAL)),
        })
    }

    /// Re-reads every file; on any problem the material in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let built = build(&self.settings);
        let label = if built.is_ok() { "ok" } else { "failed" };
        metrics::counter!(telemetry::TLS_RELOADS, "result" => label).increment(1);
        self.server.store(built?);
        Ok(())
    }

    /// The handshake within its time; `None` when refused (counted and
    /// logged here).
    pub async fn accept(&self, tcp: TcpStream, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.load_full());
        let timeout = self.settings.handshake_timeout;
        let result = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no handshake within {timeout:?}"),
            )),
        };
        match result {
            Ok(stream) => {
                metrics::counter!(telemetry::TLS_HANDSHAKES, "listener" => "admin").increment(1);
                Some(stream)
            }
            Err(e) => {
                let reason = failure_reason(&e);
                metrics::counter!(telemetry::TLS_HANDSHAKE_FAILURES, "listener" => "admin", "reason" => reason)
                    .increment(1);
                let allow = match self.refusal_log.lock() {
                    Ok(mut log) => log.allow(Instant::now()),
                    Err(_) => Some(0),
                };
                if let Some(suppressed) = allow {
                    warn!(%peer, reason, suppressed, "admin TLS handshake refused: {e}");
                }
                None
            }
        }
    }
}

/// The server config, speaking HTTP/1.1 only (what hyper serves here).
fn build(settings: &AdminTlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let built = settings.server.build().map_err(|e| e.to_string())?;
    let mut config = Arc::unwrap_or_clone(built);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
