//! TLS material and configurations, shared by every peer that speaks TLS
//! (the switch's terminal listeners and acquirer links, the simulator,
//! the load generator): PEM files read with errors that name the file,
//! rustls configurations built with the `ring` provider, and the reason a
//! handshake failed in one word for metrics and logs.
//!
//! Nothing older than TLS 1.2 can be configured: rustls does not
//! implement it, and PCI DSS 4.2.1 forbids it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

/// Why TLS material or a configuration could not be made; each names the
/// file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// The oldest TLS version a peer accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

impl MinVersion {
    /// "1.2" or "1.3"; anything else is refused with the reason.
    pub fn parse(s: &str) -> Result<MinVersion, String> {
        match s {
            "1.2" => Ok(MinVersion::Tls12),
            "1.3" => Ok(MinVersion::Tls13),
            "1.0" | "1.1" | "1" => Err(format!(
                "TLS {s} is not allowed (PCI DSS 4.2.1); use \"1.2\" or \"1.3\""
            )),
            _ => Err(format!("expected \"1.2\" or \"1.3\", not {s:?}")),
        }
    }

    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            MinVersion::Tls12 => &BOTH,
            MinVersion::Tls13 => &TLS13_ONLY,
        }
    }
}

/// Certificates of a PEM file (a chain or a CA bundle), at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_error(path, format!("no usable private key: {e}")))
}

/// The revocation lists of PEM files.
pub fn read_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut crls = Vec::new();
    for path in paths {
        let before = crls.len();
        for crl in
            CertificateRevocationListDer::pem_file_iter(path).map_err(|e| file_error(path, e))?
        {
            crls.push(crl.map_err(|e| file_error(path, e))?);
        }
        if crls.len() == before {
            return Err(file_error(path, "no X509 CRL in the file"));
        }
    }
    Ok(crls)
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in read_certs(path)? {
        store
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// The `ring` provider, its cipher suites narrowed to `allow` (IANA
/// names such as "TLS13_AES_128_GCM_SHA256") when that is not empty.
pub fn provider(allow: &[String]) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut p = rustls::crypto::ring::default_provider();
    if !allow.is_empty() {
        for name in allow {
            if !p
                .cipher_suites
                .iter()
                .any(|s| suite_name(s) == name.as_str())
            {
                let known: Vec<_> = p.cipher_suites.iter().map(suite_name).collect();
                return Err(TlsError::Config(format!(
                    "cipher suite {name:?} is not supported; supported: {}",
                    known.join(", ")
                )));
            }
        }
        p.cipher_suites
            .retain(|s| allow.iter().any(|a| a == suite_name(s)));
    }
    Ok(Arc::new(p))
}

fn suite_name(s: &rustls::SupportedCipherSuite) -> &'static str {
    s.suite().as_str().unwrap_or("unknown")
}

/// What a TLS server needs: its chain and key, and who may connect.
#[derive(Debug, Clone, Default)]
pub struct ServerSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to; none: no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// With a `client_ca`: refuse clients without a certificate (else a
    /// certificate is asked for but optional, and checked when given).
    pub require_client_cert: bool,
    pub crl_files: Vec<PathBuf>,
    pub min_version: MinVersion,
    pub cipher_suites: Vec<String>,
}

impl ServerSettings {
    /// Reads every file and builds the rustls configuration.
    pub fn build(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider(&self.cipher_suites)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(self.min_version.versions())
            .map_err(|e| TlsError::Config(format!("cipher_suites and min_version: {e}")))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut v = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider)
                    .with_crls(read_crls(&self.crl_files)?);
                if !self.require_client_cert {
                    v = v.allow_unauthenticated();
                }
                let v = v.build().map_err(|e| file_error(ca, e))?;
                builder.with_client_cert_verifier(v)
            }
            None if !self.crl_files.is_empty() => {
                return Err(TlsError::Config(
                    "crl_files need a client_ca: revocation is checked on client certificates"
                        .into(),
                ));
            }
            None if self.require_client_cert => {
                return Err(TlsError::Config(
                    "require_client_cert needs a client_ca".into(),
                ));
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(read_certs(&self.cert)?, read_key(&self.key)?)
            .map_err(|e| {
                file_error(
                    &self.key,
                    format!("does not fit {}: {e}", self.cert.display()),
                )
            })?;
        Ok(Arc::new(config))
    }
}

/// What a TLS client needs: whom to trust, and optionally its own
/// certificate for servers that ask.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub min_version: MinVersion,
}

impl ClientSettings {
    pub fn build(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider(&[])?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(roots(&self.ca)?, provider.clone())
                .build()
                .map_err(|e| file_error(&self.ca, e))?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(self.min_version.versions())
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_webpki_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| file_error(key, format!("does not fit {}: {e}", cert.display())))?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs both cert and key".into(),
                ));
            }
        };
        Ok(Arc::new(config))
    }
}

/// The name a client checks the server's certificate against.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned())
        .map_err(|e| TlsError::Config(format!("server_name {name:?}: {e}")))
}

/// The reason a handshake failed, in one word (a metric label): the
/// rustls error inside an I/O error, or the I/O error's kind.
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E, PeerIncompatible as P};
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match e.kind() {
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => "closed",
            _ => "io",
        };
    };
    match tls {
        E::NoCertificatesPresented => "no_certificate",
        E::InvalidCertificate(C::UnknownIssuer) => "unknown_ca",
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "expired",
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => "not_yet_valid",
        E::InvalidCertificate(C::Revoked) => "revoked",
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "wrong_name"
        }
        E::InvalidCertificate(_) => "bad_certificate",
        // A TLS 1.0 or 1.1 ClientHello cannot carry signature_algorithms
        // (it came with TLS 1.2, and TLS 1.3 requires it), and rustls
        // checks for it before it looks at the version offered: that is
        // how a hello of an old version is refused.
        E::PeerIncompatible(
            P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled
            | P::Tls13RequiredForQuic
            | P::SupportedVersionsExtensionRequired
            | P::SignatureAlgorithmsExtensionRequired,
        ) => "version",
        E::PeerIncompatible(P::NoCipherSuitesInCommon) => "cipher",
        E::PeerIncompatible(_) => "incompatible",
        // The peer refused us (our certificate, most often); the log line
        // has the alert's name.
        E::AlertReceived(_) => "refused_by_peer",
        _ => "protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn an_old_versions_hello_is_a_version_refusal() {
        use rustls::PeerIncompatible as P;
        // What rustls says to a TLS 1.1 ClientHello (no signature_algorithms).
        for p in [
            P::SignatureAlgorithmsExtensionRequired,
            P::Tls12NotOffered,
            P::SupportedVersionsExtensionRequired,
        ] {
            assert_eq!(failure_reason(&io(p.into())), "version");
        }
        assert_eq!(
            failure_reason(&io(P::NoCipherSuitesInCommon.into())),
            "cipher"
        );
        assert_eq!(
            failure_reason(&io(P::NoKxGroupsInCommon.into())),
            "incompatible"
        );
    }
}
