//! The `[terminals]` table: the listener terminals connect to, its
//! limits and timeouts, which terminals may transact, and their countries.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::frame::LengthHeader;
use crate::switch::config::{NO_ADDRESS, Section, SpecRef, address, spec, table};

#[derive(Clone, Debug)]
pub struct TerminalConfig {
    pub listen: SocketAddr,
    pub spec: SpecRef,
    pub framing: LengthHeader,
    pub max_frame: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_in_flight_per_connection: usize,
    pub idle_timeout: Duration,
    /// A frame that has started must be complete within this time.
    pub frame_timeout: Duration,
    /// Connections the kernel queues before they are accepted; `None`:
    /// 1024, or the system's `somaxconn` if that is lower.
    pub listen_backlog: Option<u32>,
    /// Answers waiting to be written to one terminal, in bytes; past it
    /// the switch stops reading that terminal's requests.
    pub max_write_buffer: usize,
    /// A terminal whose answers stay over `max_write_buffer` this long
    /// (it does not read them) is disconnected.
    pub write_stall_timeout: Duration,
    /// Terminal ids (DE41) allowed to transact; empty means any.
    pub allowed_terminals: BTreeSet<String>,
    /// Country (ISO 3166 numeric) of each terminal, for the fraud rule that
    /// compares it with the card's issuing country; DE19 is used otherwise.
    pub terminal_countries: Vec<(String, u16)>,
    /// `[terminals.tls]`: TLS on `listen`, or on a listener of its own.
    pub tls: Option<crate::switch::tls::TerminalTlsConfig>,
}

table! {
    pub(crate) TerminalsFile {
        listen: String = "127.0.0.1:8583".into();
        spec: String = "iso87ascii".into();
        framing: String = LengthHeader::Binary2.name().into();
        max_frame: usize = crate::frame::DEFAULT_MAX_FRAME;
        max_connections: usize = 4096, in 1..=1_000_000;
        max_connections_per_ip: usize = 4096, in 1..=1_000_000;
        max_in_flight_per_connection: usize = 64, in 1..=65_536;
        idle_timeout_ms: u64 = 300_000, in 1_000..=86_400_000;
        frame_timeout_ms: u64 = 10_000, in 100..=600_000;
        listen_backlog: Option<u64> = None, in 1..=65_535;
        max_write_buffer: usize = 1024 * 1024, in 512..=1 << 30;
        write_stall_timeout_ms: u64 = 10_000, in 100..=3_600_000;
        allowed_terminals: Vec<String> = Vec::new();
        countries: Vec<TerminalCountryFile> = Vec::new();
        tls: Option<crate::switch::tls::config::TerminalTlsFile> = None;
    }
}

table! {
    TerminalCountryFile {
        terminal: Option<String> = None;
        country: Option<u16> = None;
    }
}

impl TerminalsFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> TerminalConfig {
        self.check_ranges(s);
        let framing = s.ok("framing", self.framing.parse(), LengthHeader::Binary2);
        if self.max_frame == 0 {
            s.problem("max_frame", "must be at least 1");
        } else if self.max_frame > framing.limit() {
            let (max, limit) = (self.max_frame, framing.limit());
            let message = format!("{max} is more than a `{framing}` header can carry ({limit})");
            s.problem("max_frame", message);
        }
        let mut terminal_countries = Vec::new();
        for (i, mut c) in self.countries.into_iter().enumerate() {
            let s = &mut s.sub(&format!("countries[{i}]"));
            c.check_ranges(s);
            match (c.terminal, c.country) {
                (Some(id), Some(c)) if c <= 999 => terminal_countries.push((id, c)),
                (Some(_), Some(_)) => s.problem("country", "ISO 3166 numeric, 0..=999"),
                _ => s.problem("", "needs `terminal` and `country`"),
            }
        }
        let tls = self.tls.map(|t| t.validate(&mut s.sub("tls")));
        let listen = s.ok("listen", address(&self.listen), NO_ADDRESS);
        if let Some(t) = &tls
            && t.listen == Some(listen)
            && listen.port() != 0
        {
            s.problem(
                "tls.listen",
                "is the same address as terminals.listen; leave it out to make that listener TLS",
            );
        }
        TerminalConfig {
            tls,
            listen,
            spec: s.ok("spec", spec(&self.spec), SpecRef::iso87ascii()),
            framing,
            max_frame: self.max_frame,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_in_flight_per_connection: self.max_in_flight_per_connection,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            frame_timeout: Duration::from_millis(self.frame_timeout_ms),
            listen_backlog: self.listen_backlog.map(|b| b as u32), // in range
            max_write_buffer: self.max_write_buffer,
            write_stall_timeout: Duration::from_millis(self.write_stall_timeout_ms),
            allowed_terminals: self.allowed_terminals.into_iter().collect(),
            terminal_countries,
        }
    }
}
