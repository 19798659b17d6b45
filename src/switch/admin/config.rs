//! The `[admin]` table.

use std::net::SocketAddr;

use crate::switch::config::{NO_ADDRESS, Section, address, table};

#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// The admin endpoint's address; `None` disables it.
    pub listen: Option<SocketAddr>,
}

table! {
    pub(crate) AdminFile {
        listen: String = "127.0.0.1:9090".into();
        enabled: bool = true;
    }
}

impl AdminFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> AdminConfig {
        self.check_ranges(s);
        // Checked even when disabled: turning it on must not reveal a typo.
        let listen = s.ok("listen", address(&self.listen), NO_ADDRESS);
        AdminConfig {
            listen: self.enabled.then_some(listen),
        }
    }
}
