//! The `[admin]` table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::switch::config::{NO_ADDRESS, Section, address, table};

#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// The admin endpoint's address; `None` disables it.
    pub listen: Option<SocketAddr>,
    /// The operators (`switchyard user add`). `None`: no login, and the
    /// endpoint must be on loopback.
    pub users_file: Option<PathBuf>,
    /// The audit trail, opened when there is a users file.
    pub audit_file: PathBuf,
    /// A session ends after this long without a request...
    pub session_ttl: Duration,
    /// ... and this long after login, whatever it does.
    pub session_max: Duration,
    /// `/metrics` asks for a session too.
    pub metrics_require_login: bool,
    /// `[admin.tls]`: HTTPS only, and the session cookie is `Secure`.
    pub tls: Option<crate::switch::tls::AdminTlsConfig>,
    /// Audit files older than this are deleted (`audit.rs`).
    pub audit_retention_days: u64,
}

table! {
    pub(crate) AdminFile {
        listen: String = "127.0.0.1:9090".into();
        enabled: bool = true;
        users_file: Option<String> = None;
        audit_file: String = "data/audit.jsonl".into();
        session_ttl_secs: u64 = 900, in 1..=86_400;
        session_max_secs: u64 = 8 * 3600, in 1..=7 * 86_400;
        metrics_require_login: bool = false;
        audit_retention_days: u64 = 400, in 1..=36_500;
        tls: Option<crate::switch::tls::config::AdminTlsFile> = None;
    }
}

impl AdminFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> AdminConfig {
        self.check_ranges(s);
        // Checked even when disabled: turning it on must not reveal a typo.
        let parsed = address(&self.listen);
        let off_loopback = parsed.as_ref().is_ok_and(|a| !a.ip().is_loopback());
        let listen = s.ok("listen", parsed, NO_ADDRESS);
        let users_file = self.users_file.filter(|f| !f.is_empty()).map(PathBuf::from);
        if self.enabled && users_file.is_none() {
            // Without operators nobody logs in: what the endpoint shows
            // is open to whoever reaches it, so only this host may.
            if off_loopback {
                s.problem(
                    "listen",
                    format!(
                        "{listen} is not a loopback address, and admin.users_file is not set: \
                         without operators (password and TOTP, `switchyard user add`) the admin \
                         endpoint has no login and listens on loopback only"
                    ),
                );
            }
            if self.metrics_require_login {
                s.problem(
                    "metrics_require_login",
                    "needs admin.users_file: there is nobody to log in",
                );
            }
        }
        let tls = self.tls.map(|t| t.validate(&mut s.sub("tls")));
        if self.enabled && users_file.is_some() && off_loopback && tls.is_none() {
            // Passwords, TOTP codes and session cookies would cross the
            // network in the clear.
            s.problem(
                "listen",
                format!(
                    "{listen} is not a loopback address: operators log in there, so it needs \
                     [admin.tls] (cert and key); plain HTTP is for loopback only"
                ),
            );
        }
        if self.audit_file.is_empty() {
            s.problem("audit_file", "an empty path");
        }
        AdminConfig {
            listen: self.enabled.then_some(listen),
            users_file,
            audit_file: PathBuf::from(self.audit_file),
            session_ttl: Duration::from_secs(self.session_ttl_secs),
            session_max: Duration::from_secs(self.session_max_secs),
            metrics_require_login: self.metrics_require_login,
            tls,
            audit_retention_days: self.audit_retention_days,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::switch::config::Config;

    fn problems(admin: &str) -> Vec<String> {
        match Config::parse(&format!("[admin]\n{admin}\n")) {
            Ok(_) => Vec::new(),
            Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn off_loopback_needs_a_users_file() {
        let p = problems("listen = \"0.0.0.0:0\"");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("admin.listen: 0.0.0.0:0 is not a loopback address")
                && p[0].contains("admin.users_file"),
            "{p:?}"
        );
        let p = problems("listen = \"0.0.0.0:9090\"\nusers_file = \"users.toml\"");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("admin.listen: 0.0.0.0:9090 is not a loopback address")
                && p[0].contains("[admin.tls]"),
            "{p:?}"
        );
        assert!(problems("listen = \"0.0.0.0:9090\"\nenabled = false").is_empty());
        assert!(problems("listen = \"[::1]:9090\"").is_empty());
        let p = problems("metrics_require_login = true");
        assert!(p[0].starts_with("admin.metrics_require_login"), "{p:?}");
        let p = problems("session_ttl_secs = 0");
        assert!(p[0].starts_with("admin.session_ttl_secs"), "{p:?}");
    }

    #[test]
    fn defaults() {
        let c = Config::parse("").expect("valid").admin;
        assert!(c.users_file.is_none());
        assert_eq!(c.audit_file.to_str(), Some("data/audit.jsonl"));
        assert_eq!(c.session_ttl.as_secs(), 900);
        assert_eq!(c.session_max.as_secs(), 8 * 3600);
        assert!(!c.metrics_require_login);
        assert_eq!(c.audit_retention_days, 400);
        assert!(c.tls.is_none());
        let p = problems("audit_retention_days = 0");
        assert!(
            p[0].starts_with("admin.audit_retention_days: 0 is out of range"),
            "{p:?}"
        );
    }
}
