//! One `[[acquirers]]` entry: the host's links, spec and framing, timeouts,
//! backoff and echo, what an answer must match, and stand-in.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::frame::LengthHeader;
use crate::switch::config::{NO_ADDRESS, Section, SpecRef, address, spec, table};

#[derive(Clone, Debug)]
pub struct AcquirerConfig {
    pub name: String,
    /// One link actor per entry; the same address may appear twice for two
    /// links to one host.
    pub links: Vec<SocketAddr>,
    pub spec: SpecRef,
    pub framing: LengthHeader,
    pub max_frame: usize,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Idle time after which the link sends an echo (0800/301).
    pub echo_interval: Duration,
    /// How long to wait for a sign-on or echo answer.
    pub echo_timeout: Duration,
    /// Missed echo answers in a row before the link is dropped.
    pub max_missed_echoes: u32,
    pub max_in_flight_per_link: usize,
    pub sign_on: bool,
    /// A 0800 from the host with DE70 201 starts a cutover (settlement).
    pub cutover_on_host_0800: bool,
    /// After each cutover, the closed business date's totals go to the
    /// host in an 0520 (`settlement::acquirer_recon`); off for hosts that
    /// do not take one.
    pub reconciliation: bool,
    /// Fields an answer must carry with the request's exact bytes (where
    /// both carry them) to be delivered; see `acquirer::link`.
    pub answer_must_match: Vec<u16>,
    pub stand_in: StandInConfig,
    /// `[acquirers.tls]`: the links speak TLS to the host.
    pub tls: Option<crate::switch::tls::AcquirerTlsConfig>,
    /// `[acquirers.security]`: the zone's MAC and PIN keys.
    pub security: crate::switch::card_security::AcquirerSecurity,
    /// `[acquirers.recon]`: how `switchyard recon` reads this acquirer's
    /// settlement file.
    pub recon: crate::switch::settlement::recon::ReconConfig,
}

/// What an answer must echo unchanged by default: PAN, processing code,
/// amount, RRN, terminal id, currency.
pub const DEFAULT_ANSWER_MUST_MATCH: [u16; 6] = [2, 3, 4, 37, 41, 49];

#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StandInConfig {
    pub enabled: bool,
    /// Approve in stand-in only at or under this amount (minor units).
    pub max_amount: u64,
    /// ... and only with fraud points at or under this.
    pub max_fraud_points: u16,
}

table! {
    pub(crate) AcquirerFile {
        name: Option<String> = None;
        links: Option<Vec<String>> = None;
        spec: String = "iso87ascii".into();
        framing: String = LengthHeader::Binary2.name().into();
        max_frame: usize = crate::frame::DEFAULT_MAX_FRAME;
        request_timeout_ms: u64 = 30_000, in 10..=600_000;
        connect_timeout_ms: u64 = 3_000, in 10..=600_000;
        backoff_initial_ms: u64 = 100, in 1..=600_000;
        backoff_max_ms: u64 = 10_000, in 1..=3_600_000;
        echo_interval_ms: u64 = 30_000, in 10..=86_400_000;
        echo_timeout_ms: u64 = 5_000, in 10..=600_000;
        max_missed_echoes: u64 = 2, in 1..=100;
        max_in_flight_per_link: usize = 10_000, in 1..=1_000_000;
        sign_on: bool = true;
        cutover_on_host_0800: bool = false;
        reconciliation: bool = true;
        answer_must_match: Vec<u16> = DEFAULT_ANSWER_MUST_MATCH.to_vec();
        stand_in: StandInConfig = StandInConfig::default();
        tls: Option<crate::switch::tls::config::AcquirerTlsFile> = None;
        security: Option<crate::switch::card_security::config::AcquirerSecurityFile> = None;
        recon: Option<crate::switch::settlement::recon::ReconFile> = None;
    }
}

impl AcquirerFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> AcquirerConfig {
        self.check_ranges(s);
        if self.name.is_none() {
            s.problem("name", "required");
        }
        let mut links = Vec::new();
        match self.links {
            None => s.problem("links", "required (one address per link)"),
            Some(l) if l.is_empty() => s.problem("links", "at least one address"),
            Some(l) => {
                for (i, link) in l.iter().enumerate() {
                    links.push(s.ok(&format!("links[{i}]"), address(link), NO_ADDRESS));
                }
            }
        }
        for (i, &n) in self.answer_must_match.iter().enumerate() {
            if !(2..=128).contains(&n) {
                let message = format!("{n} is not a data element number (2..=128)");
                s.problem(&format!("answer_must_match[{i}]"), message);
            }
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            s.problem("backoff_max_ms", "must not be less than backoff_initial_ms");
        }
        let tls = self.tls.map(|t| t.validate(&mut s.sub("tls")));
        let security = self
            .security
            .map(|t| t.validate(&mut s.sub("security")))
            .unwrap_or_default();
        let recon = self
            .recon
            .map(|r| r.validate(&mut s.sub("recon")))
            .unwrap_or_default();
        AcquirerConfig {
            tls,
            security,
            recon,
            name: self.name.unwrap_or_default(),
            links,
            spec: s.ok("spec", spec(&self.spec), SpecRef::iso87ascii()),
            framing: s.ok("framing", self.framing.parse(), LengthHeader::Binary2),
            max_frame: self.max_frame,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            echo_interval: Duration::from_millis(self.echo_interval_ms),
            echo_timeout: Duration::from_millis(self.echo_timeout_ms),
            max_missed_echoes: self.max_missed_echoes as u32, // in range
            max_in_flight_per_link: self.max_in_flight_per_link,
            sign_on: self.sign_on,
            cutover_on_host_0800: self.cutover_on_host_0800,
            reconciliation: self.reconciliation,
            answer_must_match: self.answer_must_match,
            stand_in: self.stand_in,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::switch::config::Config;

    #[test]
    fn answer_must_match_defaults_and_takes_only_field_numbers() {
        let c = Config::parse("[[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n")
            .expect("valid");
        assert_eq!(c.acquirers[0].answer_must_match, [2, 3, 4, 37, 41, 49]);
        let c = Config::parse(
            "[[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\nanswer_must_match = [4]\n",
        )
        .expect("valid");
        assert_eq!(c.acquirers[0].answer_must_match, [4]);
        let problems = Config::parse(
            "[[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n\
             answer_must_match = [4, 1, 129]\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "acquirers[0].answer_must_match[1]",
                "acquirers[0].answer_must_match[2]"
            ],
            "{problems:#?}"
        );
    }
}
