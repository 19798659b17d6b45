//! What `GET /api/config` shows: the running config as JSON, every key
//! with the value in force (the defaults taken included), made once when
//! the file is read, with its secrets already replaced.
//!
//! A key is a secret by its name, wherever it lies: `key` and `*_key`
//! (`fraud.pan_key`, the TLS private keys `terminals.tls.key` and
//! `acquirers[].tls.key`), `*_keys`, and any name holding `password`,
//! `secret`, `token` or `private`. A secret that is set shows as
//! `"[redacted]"`; one left unset stays `null` (that it is unset is no
//! secret). Certificate and CA paths are shown. Any other value that is
//! a url (`store.url = "postgres://user:PASSWORD@host/db"`) is shown with
//! its password replaced.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

/// What a secret's value is replaced by.
pub const REDACTED: &str = "[redacted]";

/// The config as `/api/config` shows it, secrets redacted.
#[derive(Clone)]
pub struct ConfigView(Arc<Value>);

impl ConfigView {
    /// The view of the config file as read (with its defaults filled in).
    pub(crate) fn of(file: &impl Serialize) -> ConfigView {
        let mut v = serde_json::to_value(file)
            .unwrap_or_else(|e| Value::String(format!("the config can not be shown: {e}")));
        redact(&mut v);
        ConfigView(Arc::new(v))
    }

    pub fn json(&self) -> &Value {
        &self.0
    }
}

// Never the values, though redacted: Config's Debug stays short.
impl fmt::Debug for ConfigView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfigView { .. }")
    }
}

/// Is a key of this name a secret?
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "key"
        || k.ends_with("_key")
        || k.ends_with("_keys")
        || ["password", "secret", "token", "private"]
            .iter()
            .any(|w| k.contains(w))
}

fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret(k) {
                    if !v.is_null() {
                        *v = Value::String(REDACTED.to_owned());
                    }
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(text) if text.contains("://") => {
            *text = crate::switch::store::redact_url(text);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::config::Config;

    #[test]
    fn secrets_are_redacted_and_the_rest_shown_with_defaults() {
        let key = "000102030405060708090a0b0c0d0e0f";
        let text = format!(
            r#"
            [terminals]
            listen = "127.0.0.1:0"
            [fraud]
            pan_key = "{key}"
            blocked_bins = ["476173"]
            "#
        );
        let c = Config::parse(&text).expect("valid");
        let v = c.view.json();
        assert_eq!(v["fraud"]["pan_key"], REDACTED);
        assert_eq!(v["fraud"]["blocked_bins"][0], "476173");
        assert_eq!(v["terminals"]["listen"], "127.0.0.1:0");
        // A default, not in the file.
        assert_eq!(v["terminals"]["max_connections"], 4096);
        assert_eq!(v["admin"]["listen"], "127.0.0.1:9090");
        let all = v.to_string();
        assert!(!all.contains(key), "{all}");
        assert!(!format!("{c:?}").contains("[redacted]"));
    }

    #[test]
    fn a_database_url_is_shown_without_its_password() {
        let c = Config::parse("[store]\nurl = \"postgres://sw:hunter2@db:5432/switchyard\"")
            .expect("valid");
        let v = c.view.json();
        assert_eq!(
            v["store"]["url"],
            "postgres://sw:[redacted]@db:5432/switchyard"
        );
        assert!(!v.to_string().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn an_unset_secret_stays_null() {
        let c = Config::parse("").expect("valid");
        assert!(c.view.json()["fraud"]["pan_key"].is_null());
    }

    #[test]
    fn secret_names() {
        for k in [
            "key",
            "pan_key",
            "PAN_KEY",
            "pan_keys",
            "private_key_file",
            "admin_password",
            "totp_secret",
            "api_token",
        ] {
            assert!(is_secret(k), "{k}");
        }
        for k in [
            "cert",
            "client_ca",
            "crl_files",
            "keyring_dir",
            "listen",
            "monkey",
        ] {
            assert!(!is_secret(k), "{k}");
        }
    }

    #[test]
    fn nested_secrets_in_arrays_are_redacted() {
        let mut v = serde_json::json!({
            "acquirers": [{"tls": {"key": "/etc/k.pem", "cert": "/etc/c.pem"}}],
            "other": {"key": null}
        });
        redact(&mut v);
        assert_eq!(v["acquirers"][0]["tls"]["key"], REDACTED);
        assert_eq!(v["acquirers"][0]["tls"]["cert"], "/etc/c.pem");
        assert!(v["other"]["key"].is_null());
    }
}
