//! `[terminals.tls]` and `[acquirers.tls]`: certificates, keys, who may
//! connect, versions. Every file is read once while the config is
//! checked, so a missing or unusable certificate is a config problem
//! that names its key, not a failed start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::switch::config::{NO_ADDRESS, Section, address, table};
use switchyard_protocol::tls::{ClientSettings, MinVersion, ServerSettings};

/// How a terminal's DE41 is bound to its client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BindTerminalId {
    /// Any DE41 on any certificate.
    #[default]
    Off,
    /// DE41 must be the certificate's subject common name.
    Cn,
    /// DE41 must be one of the certificate's DNS subject alternative names.
    SanDns,
}

#[derive(Clone, Debug)]
pub struct TerminalTlsConfig {
    /// A TLS listener beside the plain one; `None`: `[terminals] listen`
    /// itself speaks TLS.
    pub listen: Option<SocketAddr>,
    pub server: ServerSettings,
    pub handshake_timeout: Duration,
    /// Handshakes running at once at most; further connections wait
    /// (accepted, not yet read) so that a storm of them leaves CPU to the
    /// terminals already up.
    pub max_handshakes_in_flight: usize,
    pub bind_terminal_id: BindTerminalId,
    /// TOML file mapping a certificate identity to the terminal ids it
    /// may use; an identity not in it may use itself only.
    pub terminal_id_map: Option<PathBuf>,
}

table! {
    pub(crate) TerminalTlsFile {
        listen: Option<String> = None;
        cert: Option<String> = None;
        key: Option<String> = None;
        client_ca: Option<String> = None;
        require_client_cert: Option<bool> = None;
        crl_files: Vec<String> = Vec::new();
        min_version: String = "1.2".into();
        cipher_suites: Vec<String> = Vec::new();
        handshake_timeout_ms: u64 = 10_000, in 100..=600_000;
        max_handshakes_in_flight: usize = 64, in 1..=100_000;
        bind_terminal_id: String = "off".into();
        terminal_id_map: Option<String> = None;
    }
}

fn required(s: &mut Section, key: &str, v: Option<String>) -> PathBuf {
    if v.is_none() {
        s.problem(key, "required (a PEM file)");
    }
    PathBuf::from(v.unwrap_or_default())
}

/// The keys every TLS server table has, as written.
struct ServerKeys {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    require_client_cert: Option<bool>,
    crl_files: Vec<String>,
    min_version: String,
    cipher_suites: Vec<String>,
}

/// The server side of `[terminals.tls]` and `[admin.tls]`: one reading
/// of the same keys.
fn server_settings(s: &mut Section, k: ServerKeys) -> ServerSettings {
    ServerSettings {
        cert: required(s, "cert", k.cert),
        key: required(s, "key", k.key),
        // Mutual TLS by default once there is a CA to check against.
        require_client_cert: k.require_client_cert.unwrap_or(k.client_ca.is_some()),
        client_ca: k.client_ca.map(PathBuf::from),
        crl_files: k.crl_files.into_iter().map(PathBuf::from).collect(),
        min_version: s.ok(
            "min_version",
            MinVersion::parse(&k.min_version),
            MinVersion::Tls12,
        ),
        cipher_suites: k.cipher_suites,
    }
}

impl TerminalTlsFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> TerminalTlsConfig {
        self.check_ranges(s);
        let listen = self.listen.map(|l| s.ok("listen", address(&l), NO_ADDRESS));
        let server = server_settings(
            s,
            ServerKeys {
                cert: self.cert,
                key: self.key,
                client_ca: self.client_ca,
                require_client_cert: self.require_client_cert,
                crl_files: self.crl_files,
                min_version: self.min_version,
                cipher_suites: self.cipher_suites,
            },
        );
        let bind_terminal_id = match self.bind_terminal_id.as_str() {
            "off" => BindTerminalId::Off,
            "cn" => BindTerminalId::Cn,
            "san-dns" => BindTerminalId::SanDns,
            other => {
                s.problem(
                    "bind_terminal_id",
                    format!("expected \"cn\", \"san-dns\" or \"off\", not {other:?}"),
                );
                BindTerminalId::Off
            }
        };
        if bind_terminal_id != BindTerminalId::Off && server.client_ca.is_none() {
            s.problem(
                "bind_terminal_id",
                "needs client_ca: the identity comes from the client certificate",
            );
        }
        if bind_terminal_id != BindTerminalId::Off && !server.require_client_cert {
            s.problem("bind_terminal_id", "needs require_client_cert = true");
        }
        let terminal_id_map = self.terminal_id_map.map(PathBuf::from);
        if let Some(map) = &terminal_id_map {
            if bind_terminal_id == BindTerminalId::Off {
                s.problem(
                    "terminal_id_map",
                    "has no effect with bind_terminal_id = \"off\"",
                );
            }
            if let Err(e) = super::identity::TerminalIdMap::load(map) {
                s.problem("terminal_id_map", e);
            }
        }
        if s.is_clean()
            && let Err(e) = server.build()
        {
            s.problem("", e.to_string());
        }
        TerminalTlsConfig {
            listen,
            server,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            max_handshakes_in_flight: self.max_handshakes_in_flight,
            bind_terminal_id,
            terminal_id_map,
        }
    }
}

/// `[admin.tls]`: the admin endpoint speaks HTTPS only. The keys of
/// `[terminals.tls]` that make a server (a client CA makes it mutual
/// TLS); those about terminals have no meaning here and are refused as
/// unknown.
#[derive(Clone, Debug)]
pub struct AdminTlsConfig {
    pub server: ServerSettings,
    pub handshake_timeout: Duration,
}

table! {
    pub(crate) AdminTlsFile {
        cert: Option<String> = None;
        key: Option<String> = None;
        client_ca: Option<String> = None;
        require_client_cert: Option<bool> = None;
        crl_files: Vec<String> = Vec::new();
        min_version: String = "1.2".into();
        cipher_suites: Vec<String> = Vec::new();
        handshake_timeout_ms: u64 = 10_000, in 100..=600_000;
    }
}

impl AdminTlsFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> AdminTlsConfig {
        self.check_ranges(s);
        let server = server_settings(
            s,
            ServerKeys {
                cert: self.cert,
                key: self.key,
                client_ca: self.client_ca,
                require_client_cert: self.require_client_cert,
                crl_files: self.crl_files,
                min_version: self.min_version,
                cipher_suites: self.cipher_suites,
            },
        );
        if s.is_clean()
            && let Err(e) = server.build()
        {
            s.problem("", e.to_string());
        }
        AdminTlsConfig {
            server,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AcquirerTlsConfig {
    pub client: ClientSettings,
    /// The name the host's certificate must carry.
    pub server_name: String,
}

table! {
    pub(crate) AcquirerTlsFile {
        ca: Option<String> = None;
        cert: Option<String> = None;
        key: Option<String> = None;
        server_name: Option<String> = None;
        min_version: String = "1.2".into();
    }
}

impl AcquirerTlsFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> AcquirerTlsConfig {
        self.check_ranges(s);
        let client = ClientSettings {
            ca: required(s, "ca", self.ca),
            cert: self.cert.map(PathBuf::from),
            key: self.key.map(PathBuf::from),
            min_version: s.ok(
                "min_version",
                MinVersion::parse(&self.min_version),
                MinVersion::Tls12,
            ),
        };
        let server_name = match self.server_name {
            Some(n) => n,
            None => {
                s.problem(
                    "server_name",
                    "required: the name the host's certificate must carry",
                );
                String::new()
            }
        };
        if s.is_clean() {
            if let Err(e) = switchyard_protocol::tls::server_name(&server_name) {
                s.problem("server_name", e.to_string());
            }
            if let Err(e) = client.build() {
                s.problem("", e.to_string());
            }
        }
        AcquirerTlsConfig {
            client,
            server_name,
        }
    }
}
