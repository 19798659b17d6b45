//! TLS on the terminal listeners and the acquirer links.
//!
//! The handshake is done before a connection reaches its driver; after
//! it, the drivers move bytes through [`crate::net::Conn`] exactly as
//! over plain TCP (one `recv` per wake, many frames per write, now many
//! frames per TLS record too).
//!
//! Terminal side: the certificate, key, CA bundle, CRLs and terminal id
//! map are re-read on SIGHUP ([`TerminalTls::reload`]); new handshakes use
//! the new material, established connections keep theirs. Handshakes
//! take a slot of `max_handshakes_in_flight` so that a storm of them
//! cannot starve the terminals already transacting. A refused handshake
//! is counted by reason and logged with the peer's address, never with
//! card data.

pub mod config;
pub mod identity;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tracing::{info, warn};

pub use config::{AcquirerTlsConfig, AdminTlsConfig, BindTerminalId, TerminalTlsConfig};
use identity::{BoundTerminals, TerminalIdMap};

use crate::net::{Conn, TlsConn};
use crate::telemetry;
use crate::throttle::LogThrottle;
use switchyard_protocol::tls::failure_reason;

/// Refusals of one reason: one warn line per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// A terminal listener's TLS: what new handshakes use, and their limit.
pub struct TerminalTls {
    settings: TerminalTlsConfig,
    server: ArcSwap<rustls::ServerConfig>,
    id_map: ArcSwap<TerminalIdMap>,
    handshakes: tokio::sync::Semaphore,
    refusal_log: Mutex<HashMap<&'static str, LogThrottle>>,
}

/// A terminal connection after its handshake.
pub struct Accepted {
    pub conn: Conn,
    /// The terminal ids it may use, when DE41 is bound to certificates.
    pub bound: Option<BoundTerminals>,
}

impl TerminalTls {
    pub fn new(settings: TerminalTlsConfig) -> Result<TerminalTls, String> {
        let server = settings.server.build().map_err(|e| e.to_string())?;
        let id_map = load_map(&settings)?;
        Ok(TerminalTls {
            handshakes: tokio::sync::Semaphore::new(settings.max_handshakes_in_flight),
            settings,
            server: ArcSwap::new(server),
            id_map: ArcSwap::new(Arc::new(id_map)),
            refusal_log: Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> &TerminalTlsConfig {
        &self.settings
    }

    /// Re-reads every file; on any problem the material in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let loaded = self
            .settings
            .server
            .build()
            .map_err(|e| e.to_string())
            .and_then(|server| Ok((server, load_map(&self.settings)?)));
        let label = if loaded.is_ok() { "ok" } else { "failed" };
        metrics::counter!(telemetry::TLS_RELOADS, "result" => label).increment(1);
        let (server, map) = loaded?;
        self.server.store(server);
        self.id_map.store(Arc::new(map));
        Ok(())
    }

    /// Runs the handshake within its slot and time; `None` when refused
    /// (counted and logged here).
    pub async fn accept(&self, tcp: TcpStream, peer: SocketAddr) -> Option<Accepted> {
        let _slot = match self.handshakes.try_acquire() {
            Ok(slot) => slot,
            Err(_) => {
                metrics::counter!(telemetry::TLS_HANDSHAKE_WAITS).increment(1);
                self.handshakes.acquire().await.ok()?
            }
        };
        let in_flight = metrics::gauge!(telemetry::TLS_HANDSHAKES_IN_FLIGHT);
        in_flight.increment(1.0);
        let config = self.server.load_full();
        let timeout = self.settings.handshake_timeout;
        let handshake = async { TlsConn::server(tcp, config)?.handshake().await };
        let result = match tokio::time::timeout(timeout, handshake).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no handshake within {timeout:?}"),
            )),
        };
        in_flight.decrement(1.0);
        let conn = match result {
            Ok(conn) => conn,
            Err(e) => {
                self.refused(peer, failure_reason(&e), &e);
                return None;
            }
        };
        metrics::counter!(telemetry::TLS_HANDSHAKES, "listener" => "terminals").increment(1);
        let bound = self.bind(&conn, peer);
        Some(Accepted { conn, bound })
    }

    fn bind(&self, conn: &Conn, peer: SocketAddr) -> Option<BoundTerminals> {
        let bind = self.settings.bind_terminal_id;
        if bind == BindTerminalId::Off {
            return None;
        }
        let cert = conn
            .tls()
            .and_then(|t| t.peer_certificates())
            .and_then(|c| c.first());
        let identities = match cert.map(|c| identity::identities(c, bind)) {
            Some(Ok(ids)) => ids,
            Some(Err(e)) => {
                warn!(%peer, "client certificate: {e}; no terminal id is bound to it");
                Vec::new()
            }
            None => Vec::new(),
        };
        if identities.is_empty() {
            warn!(%peer, ?bind, "client certificate names no terminal; its requests get 58");
        }
        let ids = self.id_map.load().terminal_ids(&identities);
        Some(BoundTerminals::new(&identities, ids))
    }

    fn refused(&self, peer: SocketAddr, reason: &'static str, e: &std::io::Error) {
        metrics::counter!(telemetry::TLS_HANDSHAKE_FAILURES, "listener" => "terminals", "reason" => reason)
            .increment(1);
        let allow = match self.refusal_log.lock() {
            Ok(mut log) => log
                .entry(reason)
                .or_insert_with(|| LogThrottle::new(REFUSAL_LOG_INTERVAL))
                .allow(Instant::now()),
            Err(_) => Some(0),
        };
        if let Some(suppressed) = allow {
            warn!(%peer, reason, suppressed, "TLS handshake refused: {e}");
        }
    }
}

fn load_map(settings: &TerminalTlsConfig) -> Result<TerminalIdMap, String> {
    match &settings.terminal_id_map {
        Some(path) => TerminalIdMap::load(path),
        None => Ok(TerminalIdMap::default()),
    }
}

/// An acquirer link's TLS client, made once at start.
#[derive(Clone)]
pub struct LinkTls {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkTls({:?})", self.name)
    }
}

impl LinkTls {
    pub fn new(c: &AcquirerTlsConfig) -> Result<LinkTls, String> {
        Ok(LinkTls {
            config: c.client.build().map_err(|e| e.to_string())?,
            name: switchyard_protocol::tls::server_name(&c.server_name)
                .map_err(|e| e.to_string())?,
        })
    }

    /// The client handshake on a connected socket; the error names the
    /// reason (as the metric label) and what rustls said.
    pub async fn connect(&self, tcp: TcpStream) -> Result<Conn, String> {
        let result = async {
            TlsConn::client(tcp, self.config.clone(), self.name.clone())?
                .handshake()
                .await
        }
        .await;
        match result {
            Ok(conn) => {
                metrics::counter!(telemetry::TLS_HANDSHAKES, "listener" => "link").increment(1);
                Ok(conn)
            }
            Err(e) => {
                let reason = failure_reason(&e);
                metrics::counter!(telemetry::TLS_HANDSHAKE_FAILURES, "listener" => "link", "reason" => reason)
                    .increment(1);
                Err(format!("TLS handshake failed ({reason}): {e}"))
            }
        }
    }
}

/// Logs a reload's result for the operator.
pub fn log_reload(result: &Result<(), String>) {
    match result {
        Ok(()) => info!("terminal TLS material re-read; new handshakes use it"),
        Err(e) => warn!("terminal TLS material not re-read, the old stays in use: {e}"),
    }
}
