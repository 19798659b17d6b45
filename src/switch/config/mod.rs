//! The switch's TOML configuration. Each subsystem declares its own
//! table next to its code, in three parts: the typed config it uses
//! (`TerminalConfig` in `terminal/config.rs`, ...); the table as written,
//! a serde struct whose fields are the keys, with their defaults and
//! ranges (`table!`); and its validation from the one to the other. Here:
//! the whole file ([`Config`], its root struct, the checks across tables
//! and the warnings), the `table!` macro, the problem collector
//! (`Section`) and the small parsers the tables share.
//!
//! Every problem is reported at once, each with its TOML path
//! (`acquirers[1].links[0]: ...`): serde stops at its first error, so the
//! reader (`reader.rs`) reports it, drops the value and reads again.
//! Unknown keys are problems too: a typo must not silently fall back to a
//! default.

mod reader;

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Table;

use crate::iso8583::{Spec, specs};
use crate::runtime::{RuntimeConfig, RuntimeFile};
use crate::switch::acquirer::{AcquirerConfig, AcquirerFile};
use crate::switch::admin::{AdminConfig, AdminFile};
use crate::switch::analytics::{AnalyticsConfig, AnalyticsFile};
use crate::switch::fraud::{DEV_PAN_KEY, FraudConfig, FraudFile, SHIPPED_DEV_PAN_KEY};
use crate::switch::journal::{JournalConfig, JournalFile};
use crate::switch::router::{RoutingConfig, RoutingFile};
use crate::switch::saf::{SafConfig, SafFile};
use crate::switch::server::{LimitsConfig, LimitsFile};
use crate::switch::store::{StoreConfig, StoreFile};
use crate::switch::terminal::{TerminalConfig, TerminalsFile};

/// One configuration problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where, as a TOML path (`terminals.listen`, `acquirers[0].name`).
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All the problems found in a config file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        // A problem with no TOML path is about the file itself (unreadable,
        // not TOML): it is named by the file, not by an empty path.
        if let [p] = self.problems.as_slice()
            && p.path.is_empty()
        {
            return writeln!(f, "{file}: {}", p.message);
        }
        writeln!(f, "{file}: {} problem(s):", self.problems.len())?;
        for p in &self.problems {
            if p.path.is_empty() {
                writeln!(f, "  {file}: {}", p.message)?;
            } else {
                writeln!(f, "  {p}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A spec by the name it was configured with.
#[derive(Clone, Copy)]
pub struct SpecRef {
    pub spec: &'static Spec,
}

impl fmt::Debug for SpecRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.spec.name)
    }
}

impl SpecRef {
    pub fn iso87ascii() -> SpecRef {
        SpecRef {
            spec: specs::iso87ascii(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub terminals: TerminalConfig,
    pub admin: AdminConfig,
    pub limits: LimitsConfig,
    pub runtime: RuntimeConfig,
    pub acquirers: Vec<AcquirerConfig>,
    pub routing: RoutingConfig,
    pub fraud: FraudConfig,
    pub journal: JournalConfig,
    pub saf: SafConfig,
    pub store: StoreConfig,
    /// `[analytics]`: rollups, the recent transactions, alerts.
    pub analytics: AnalyticsConfig,
    /// `[settlement]`: the business date's cutover.
    pub settlement: crate::switch::settlement::SettlementConfig,
    /// `[security]`: the key store, the HSM, terminal profiles.
    pub security: Option<crate::switch::card_security::SecurityConfig>,
    /// Top-level `test_setup = true`: a development or test configuration,
    /// allowed to run with the development `pan_key`.
    pub test_setup: bool,
    /// `[blocks]`: where operators' card and BIN blocks are kept.
    pub blocks: crate::switch::blocks::BlocksConfig,
    /// The whole config as `/api/config` shows it, secrets redacted.
    pub view: crate::switch::admin::ConfigView,
    /// Every key's value as a fingerprint, to name what a reload changes
    /// (`reload::diff`); secrets included, never their values.
    pub fingerprints: Fingerprints,
    /// The file it was read from (`Config::load`), which a reload reads
    /// again; `None` for config text (`Config::parse`).
    pub source: Option<PathBuf>,
}

/// Each leaf of the config file as read (defaults filled in), by its TOML
/// path (`acquirers[1].links[0]`), as a keyed hash of its value: enough to
/// tell which keys two files set differently, and nothing to read a value
/// back from (the key is random per process, so a short secret can not be
/// found by hashing guesses either).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fingerprints(std::collections::BTreeMap<String, u64>);

impl fmt::Debug for Fingerprints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprints({} keys)", self.0.len())
    }
}

impl Fingerprints {
    fn of(file: &impl serde::Serialize) -> Fingerprints {
        static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        let key = KEY.get_or_init(Default::default);
        let mut out = std::collections::BTreeMap::new();
        if let Ok(v) = serde_json::to_value(file) {
            flatten(&v, String::new(), key, &mut out);
        }
        Fingerprints(out)
    }

    /// The paths whose values differ, or that only one of the two has,
    /// in order.
    pub fn changed(&self, other: &Fingerprints) -> Vec<String> {
        let mut paths: BTreeSet<&String> = BTreeSet::new();
        for (k, v) in &self.0 {
            if other.0.get(k) != Some(v) {
                paths.insert(k);
            }
        }
        for k in other.0.keys() {
            if !self.0.contains_key(k) {
                paths.insert(k);
            }
        }
        paths.into_iter().cloned().collect()
    }
}

fn flatten(
    v: &serde_json::Value,
    path: String,
    key: &std::collections::hash_map::RandomState,
    out: &mut std::collections::BTreeMap<String, u64>,
) {
    use std::hash::BuildHasher;
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                flatten(v, p, key, out);
            }
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                flatten(v, format!("{path}[{i}]"), key, out);
            }
        }
        // A scalar, or an empty table or list (so that `[]` to `["x"]` is
        // a change of the key itself).
        leaf => {
            out.insert(path, key.hash_one(leaf.to_string()));
        }
    }
}

// ---------------------------------------------------------------------------
// The file as written: one struct per TOML table, its fields named as the
// keys, refusing unknown ones, each with the default a missing key takes.

/// `table! { Name { key: Type = default, in range; ... } }`: the struct,
/// its `Default` made of the defaults, and `check_ranges`, which reports
/// every integer key outside its range (`in` is optional). A visibility
/// before the name (`pub(crate) TerminalsFile`) lets the root file struct
/// hold a table declared in its owner's module.
macro_rules! table {
    ($vis:vis $name:ident {
        $($(#[$doc:meta])* $key:ident: $ty:ty = $default:expr $(, in $range:expr)?;)*
    }) => {
        // Serialize: `/api/config` shows the file as read (admin::ConfigView).
        #[derive(::serde::Deserialize, ::serde::Serialize)]
        #[serde(deny_unknown_fields, default)]
        $vis struct $name {
            $($(#[$doc])* $key: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($key: $default,)* }
            }
        }

        impl $name {
            /// Reports every key outside its range, and brings it to the
            /// nearest bound (the config is refused then) so that the
            /// conversions after cannot overflow.
            #[allow(unused_variables)] // a table without ranges
            fn check_ranges(&mut self, s: &mut $crate::switch::config::Section) {
                $($(s.range(stringify!($key), &mut self.$key, $range);)?)*
            }
        }
    };
}
pub(crate) use table;

#[derive(Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
struct ConfigFile {
    terminals: TerminalsFile,
    admin: AdminFile,
    limits: LimitsFile,
    runtime: RuntimeFile,
    acquirers: Vec<AcquirerFile>,
    routing: RoutingFile,
    fraud: FraudFile,
    journal: JournalFile,
    saf: SafFile,
    store: StoreFile,
    analytics: AnalyticsFile,
    settlement: crate::switch::settlement::SettlementFile,
    security: Option<crate::switch::card_security::config::SecurityFile>,
    blocks: crate::switch::blocks::BlocksFile,
    test_setup: bool,
}

// ---------------------------------------------------------------------------
// Validation: from the file as written to the typed config, every problem
// collected with its TOML path.

/// Stands in for an address that was refused (the config is refused too).
pub(crate) const NO_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem {
                path: String::new(),
                message: format!("can not read: {e}"),
            }],
        })?;
        let mut config = Config::parse(&text).map_err(|problems| ConfigError {
            file: path.to_owned(),
            problems,
        })?;
        // Absolute: a reload reads it again whatever the directory then.
        config.source = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_owned()));
        Ok(config)
    }

    /// Parses and validates config text, returning every problem.
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let root: Table = toml::from_str(text).map_err(|e| {
            vec![Problem {
                path: String::new(),
                message: format!("not valid TOML: {}", e.to_string().trim()),
            }]
        })?;
        let mut problems = Problems::default();
        let file = reader::read_file(root, &mut problems);
        let view = crate::switch::admin::ConfigView::of(&file);
        let fingerprints = Fingerprints::of(&file);
        let config = file.validate(
            view,
            fingerprints,
            &mut Section {
                problems: &mut problems,
                path: String::new(),
            },
        );
        if problems.found.is_empty() {
            Ok(config)
        } else {
            Err(problems.found)
        }
    }

    /// Is the card-hash key one of the published development keys? Card
    /// hashes made with it can be reversed by anyone with a card list.
    pub fn uses_dev_key(&self) -> bool {
        self.fraud.pan_key == DEV_PAN_KEY || self.fraud.pan_key == SHIPPED_DEV_PAN_KEY
    }

    /// What is valid but probably not meant: a switch that can route
    /// nothing, a development key. `check-config` prints these; `run` logs
    /// them at startup.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut w = Vec::new();
        if self.acquirers.is_empty() {
            w.push(Problem {
                path: "acquirers".into(),
                message: "no acquirer is configured: every request will be answered 92".into(),
            });
        } else if self.routing.routes.is_empty() && self.routing.default.is_none() {
            w.push(Problem {
                path: "routing".into(),
                message: "no route and no default: every request will be answered 92".into(),
            });
        }
        if self.uses_dev_key() {
            let how = if self.fraud.pan_key == DEV_PAN_KEY {
                "not set: the built-in development key is used"
            } else {
                "is the development key shipped in config/switchyard.toml"
            };
            w.push(Problem {
                path: "fraud.pan_key".into(),
                message: format!(
                    "{how}; set your own 32 hex digits for production (`run` refuses it \
                     unless --allow-dev-key or test_setup = true)"
                ),
            });
        }
        w
    }
}

#[derive(Default)]
struct Problems {
    found: Vec<Problem>,
    /// Paths of the values dropped while reading (of the wrong type or
    /// under an unknown key): not reported again as missing.
    dropped: BTreeSet<String>,
}

/// The validation of one table: its problems go under its TOML path.
pub(crate) struct Section<'p> {
    problems: &'p mut Problems,
    path: String,
}

impl Section<'_> {
    /// The table or array element at `key` (`"stand_in"`, `"routes[0]"`).
    pub(crate) fn sub(&mut self, key: &str) -> Section<'_> {
        Section {
            path: self.at(key),
            problems: self.problems,
        }
    }

    /// The TOML path of `key`; `""` is the table itself.
    fn at(&self, key: &str) -> String {
        match (self.path.as_str(), key) {
            ("", key) => key.to_owned(),
            (path, "") => path.to_owned(),
            (path, key) => format!("{path}.{key}"),
        }
    }

    pub(crate) fn problem(&mut self, key: &str, message: impl Into<String>) {
        let path = self.at(key);
        if !self.problems.dropped.contains(&path) {
            self.problems.found.push(Problem {
                path,
                message: message.into(),
            });
        }
    }

    /// No problem found so far in this table or under it.
    pub(crate) fn is_clean(&self) -> bool {
        let prefix = self.at("");
        let under = |path: &str| {
            prefix.is_empty()
                || path == prefix
                || path
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        !self.problems.found.iter().any(|p| under(&p.path))
    }

    /// `value`, or `fallback` with the error reported at `key` (the config
    /// is refused then, so the fallback is never used).
    pub(crate) fn ok<T>(&mut self, key: &str, value: Result<T, String>, fallback: T) -> T {
        value.unwrap_or_else(|message| {
            self.problem(key, message);
            fallback
        })
    }

    /// Reports `v` if it lies outside `range`, and brings it in.
    pub(crate) fn range(&mut self, key: &str, v: &mut impl Ranged, range: RangeInclusive<u64>) {
        if let Some(outside) = v.clamp_into(&range) {
            let (low, high) = (range.start(), range.end());
            self.problem(key, format!("{outside} is out of range ({low}..={high})"));
        }
    }
}

/// An integer key that has a valid range, or an optional one.
pub(crate) trait Ranged {
    /// Brings the value into `range`; returns it if it was outside.
    fn clamp_into(&mut self, range: &RangeInclusive<u64>) -> Option<u64>;
}

impl Ranged for u64 {
    fn clamp_into(&mut self, range: &RangeInclusive<u64>) -> Option<u64> {
        let v = *self;
        *self = v.clamp(*range.start(), *range.end());
        (v != *self).then_some(v)
    }
}

impl Ranged for usize {
    fn clamp_into(&mut self, range: &RangeInclusive<u64>) -> Option<u64> {
        // Lossless both ways: usize is at most 64 bits, and every range
        // fits in 32.
        let mut v = *self as u64;
        let outside = v.clamp_into(range);
        *self = v as usize;
        outside
    }
}

impl<T: Ranged> Ranged for Option<T> {
    fn clamp_into(&mut self, range: &RangeInclusive<u64>) -> Option<u64> {
        self.as_mut()?.clamp_into(range)
    }
}

pub(crate) fn address(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not an IP:port address (e.g. \"127.0.0.1:8583\")"))
}

pub(crate) fn spec(s: &str) -> Result<SpecRef, String> {
    specs::resolve(s)
        .map(|spec| SpecRef { spec })
        .map_err(|e| match e {
            crate::iso8583::spec_toml::SpecFileError::Io { .. } => format!(
                "`{s}` is neither a built-in spec ({}) nor a readable spec file",
                specs::BUILT_IN.join(", ")
            ),
            other => other.to_string(),
        })
}

pub(crate) fn is_digits(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit())
}

impl ConfigFile {
    fn validate(
        self,
        view: crate::switch::admin::ConfigView,
        fingerprints: Fingerprints,
        s: &mut Section,
    ) -> Config {
        let terminals = self.terminals.validate(&mut s.sub("terminals"));
        let admin = self.admin.validate(&mut s.sub("admin"));
        let limits = self.limits.validate(&mut s.sub("limits"));
        let runtime = self.runtime.validate(&mut s.sub("runtime"));
        let security = self
            .security
            .and_then(|t| t.validate(&mut s.sub("security")));
        let mut acquirers: Vec<AcquirerConfig> = (self.acquirers.into_iter().enumerate())
            .map(|(i, a)| a.validate(&mut s.sub(&format!("acquirers[{i}]"))))
            .collect();
        for (i, a) in acquirers.iter_mut().enumerate() {
            let spec = a.spec.spec;
            a.security.check_keys(
                &mut s.sub(&format!("acquirers[{i}].security")),
                security.as_ref(),
                spec,
            );
        }
        let mut names = BTreeSet::new();
        for (i, a) in acquirers.iter().enumerate() {
            if !names.insert(a.name.as_str()) {
                let message = format!("`{}` is used by another acquirer", a.name);
                s.problem(&format!("acquirers[{i}].name"), message);
            }
        }
        let routing = self.routing.validate(&mut s.sub("routing"), &names);
        let settlement = self.settlement.validate(&mut s.sub("settlement"));
        let journal = self.journal.validate(&mut s.sub("journal"));
        let store = self.store.validate(&mut s.sub("store"), &journal.dir);
        for (i, (name, _)) in settlement.profile_close_codes.iter().enumerate() {
            let known = (security.as_ref()).is_some_and(|sec| sec.profiles.named(name).is_some());
            if !known {
                s.problem(
                    &format!("settlement.terminal_profiles[{i}].name"),
                    format!("`{name}`: no [[security.terminals]] profile has this name"),
                );
            }
        }
        Config {
            terminals,
            admin,
            limits,
            runtime,
            routing,
            acquirers,
            fraud: self.fraud.validate(&mut s.sub("fraud")),
            journal,
            saf: self.saf.validate(&mut s.sub("saf")),
            store,
            analytics: self.analytics.validate(&mut s.sub("analytics")),
            settlement,
            security,
            blocks: self.blocks.validate(&mut s.sub("blocks")),
            test_setup: self.test_setup,
            view,
            fingerprints,
            source: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::frame::LengthHeader;
    use crate::switch::journal::Durability;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let c = Config::parse("").expect("valid");
        assert_eq!(c.terminals.listen.to_string(), "127.0.0.1:8583");
        assert_eq!(c.terminals.framing, LengthHeader::Binary2);
        assert_eq!(
            c.admin.listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9090")
        );
        assert_eq!(c.journal.durability, Durability::Fsync);
        assert!(c.acquirers.is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
            colour = "red"
            [terminals]
            listen = "localhost"
            max_frame = 0
            spec = "iso99"
            [[acquirers]]
            name = "a"
            links = ["127.0.0.1:9583", "nowhere"]
            request_timeout_ms = "soon"
            retries = 3
            [[acquirers]]
            name = "a"
            links = ["127.0.0.1:9584"]
            [routing]
            default = "b"
            [[routing.routes]]
            prefix = "4x"
            acquirer = "zz"
            [fraud]
            pan_key = "abc"
            [journal]
            durability = "maybe"
        "#;
        let problems = Config::parse(text).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "colour",
            "terminals.listen",
            "terminals.max_frame",
            "terminals.spec",
            "acquirers[0].links[1]",
            "acquirers[0].request_timeout_ms",
            "acquirers[0].retries",
            "acquirers[1].name",
            "routing.default",
            "routing.routes[0].prefix",
            "routing.routes[0].acquirer",
            "fraud.pan_key",
            "journal.durability",
        ] {
            assert!(
                paths.contains(&expected),
                "missing {expected} in {problems:#?}"
            );
        }
        let listen = problems
            .iter()
            .find(|p| p.path == "terminals.listen")
            .unwrap();
        assert!(listen.message.contains("not an IP:port"), "{listen}");
    }

    #[test]
    fn a_complete_config_reads_back() {
        let text = r#"
            [terminals]
            listen = "127.0.0.1:18583"
            framing = "ascii4"
            allowed_terminals = ["TERM0001"]
            [[terminals.countries]]
            terminal = "TERM0001"
            country = 840
            [[acquirers]]
            name = "visa"
            links = ["127.0.0.1:19583", "127.0.0.1:19583"]
            spec = "iso87binary"
            request_timeout_ms = 250
            [acquirers.stand_in]
            enabled = true
            max_amount = 5000
            max_fraud_points = 10
            [routing]
            default = "visa"
            [[routing.routes]]
            prefix = "4"
            acquirer = "visa"
            [fraud]
            pan_key = "000102030405060708090a0b0c0d0e0f"
            [[fraud.velocity]]
            window_s = 60
            max_count = 5
            [fraud.card_testing]
            max_small = 2
        "#;
        let c = Config::parse(text).expect("valid");
        assert_eq!(c.terminals.framing, LengthHeader::Ascii4);
        assert!(c.terminals.allowed_terminals.contains("TERM0001"));
        assert_eq!(
            c.terminals.terminal_countries,
            [("TERM0001".to_owned(), 840)]
        );
        let a = &c.acquirers[0];
        assert_eq!(a.links.len(), 2);
        assert_eq!(a.spec.spec.name, "iso87binary");
        assert_eq!(a.request_timeout, Duration::from_millis(250));
        assert!(a.stand_in.enabled);
        assert_eq!(c.routing.routes[0].prefix, "4");
        assert_eq!(c.fraud.pan_key[15], 0x0f);
        assert_eq!(c.fraud.velocity[0].window, Duration::from_secs(60));
        assert_eq!(c.fraud.card_testing.as_ref().map(|c| c.max_small), Some(2));
    }

    /// The one problem `text` has, as `check-config` prints it (for the
    /// owners' tests too).
    pub(crate) fn only_problem(text: &str) -> String {
        let problems = Config::parse(text).expect_err("refused");
        assert_eq!(problems.len(), 1, "{problems:#?}");
        problems[0].to_string()
    }

    #[test]
    fn zero_durations_and_limits_are_refused_with_their_path_and_range() {
        for (text, expected) in [
            (
                "[terminals]\nframe_timeout_ms = 0",
                "terminals.frame_timeout_ms: 0 is out of range (100..=600000)",
            ),
            (
                "[terminals]\nidle_timeout_ms = 0",
                "terminals.idle_timeout_ms: 0 is out of range (1000..=86400000)",
            ),
            (
                "[journal]\nretention_hours = 0",
                "journal.retention_hours: 0 is out of range (1..=87600)",
            ),
            (
                "[saf]\nexpiry_s = 0",
                "saf.expiry_s: 0 is out of range (60..=2592000)",
            ),
            (
                "[saf]\nretry_interval_ms = 0",
                "saf.retry_interval_ms: 0 is out of range (100..=3600000)",
            ),
            (
                "[limits]\nrecent_answers_ttl_s = 0",
                "limits.recent_answers_ttl_s: 0 is out of range (1..=86400)",
            ),
            (
                "[fraud.card_testing]\nwindow_s = 0",
                "fraud.card_testing.window_s: 0 is out of range (1..=2592000)",
            ),
        ] {
            assert_eq!(only_problem(text), expected, "for {text:?}");
        }
    }

    #[test]
    fn absurdly_large_limits_are_refused() {
        for key in [
            "[terminals]\nmax_connections = 100000000",
            "[limits]\nmax_in_flight = 100000000000",
            "[journal]\nqueue_capacity = 1000000000",
            "[saf]\nmax_attempts = 5000000000",
        ] {
            assert!(
                only_problem(key).contains("is out of range"),
                "{key}: {}",
                only_problem(key)
            );
        }
    }

    #[test]
    fn an_empty_config_and_the_development_keys_are_warned_about() {
        let empty = Config::parse("").expect("valid");
        let paths: Vec<String> = empty.warnings().into_iter().map(|w| w.path).collect();
        assert_eq!(paths, ["acquirers", "fraud.pan_key"]);
        assert!(empty.uses_dev_key());
        assert!(!empty.test_setup);

        let shipped =
            Config::parse(include_str!("../../../config/switchyard.toml")).expect("valid");
        assert!(
            shipped.uses_dev_key(),
            "the shipped key is a development key"
        );
        assert!(
            shipped.test_setup,
            "the shipped config says it is a test setup"
        );
        let w = shipped.warnings();
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0].message.contains("shipped"), "{}", w[0]);

        let own = Config::parse(
            "[[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n\
             [routing]\ndefault = \"a\"\n[fraud]\npan_key = \"000102030405060708090a0b0c0d0e0f\"",
        )
        .expect("valid");
        assert!(!own.uses_dev_key());
        assert!(own.warnings().is_empty(), "{:#?}", own.warnings());

        let unrouted =
            Config::parse("[[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]").expect("valid");
        assert_eq!(unrouted.warnings()[0].path, "routing");
    }

    #[test]
    fn a_file_level_problem_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[terminals\n").expect("written");
        let e = Config::load(&bad).expect_err("not TOML").to_string();
        assert!(
            e.starts_with(&format!("{}: not valid TOML", bad.display())),
            "{e}"
        );
        let missing = dir.path().join("missing.toml");
        let e = Config::load(&missing).expect_err("unreadable").to_string();
        assert!(
            e.starts_with(&format!("{}: can not read", missing.display())),
            "{e}"
        );
        assert!(!e.contains("\n  : "), "no empty path: {e}");
    }

    #[test]
    fn a_wrong_type_is_named_with_its_path_and_what_was_expected() {
        for (text, expected) in [
            (
                "[terminals]\nmax_frame = \"big\"",
                "terminals.max_frame: expected an integer, found a string",
            ),
            (
                "[terminals]\nallowed_terminals = [\"T1\", 2]",
                "terminals.allowed_terminals[1]: expected a string, found an integer",
            ),
            (
                "[admin]\nenabled = \"yes\"",
                "admin.enabled: expected true or false, found a string",
            ),
            ("saf = 3", "saf: expected a table, found an integer"),
            (
                "[saf]\nexpiry_s = 1e3",
                "saf.expiry_s: expected an integer, found a float",
            ),
            (
                "[saf]\nmax_attempts = -1",
                "saf.max_attempts: -1 is out of range (0..=18446744073709551615)",
            ),
            (
                "[[fraud.velocity]]\nwindow_s = 60\npoints = 70000",
                "fraud.velocity[0].points: 70000 is out of range (0..=65535)",
            ),
            (
                "[[acquirers]]\nname = 5\nlinks = [\"127.0.0.1:1\"]",
                // Not also "required": what was refused is not missing.
                "acquirers[0].name: expected a string, found an integer",
            ),
        ] {
            assert_eq!(only_problem(text), expected, "for {text:?}");
        }
    }

    #[test]
    fn every_unknown_key_and_wrong_type_in_one_table_is_reported() {
        let text = "[[fraud.velocity]]\nwindow_s = 60\n\
                    [[fraud.velocity]]\nwindow = 60\nwindow_s = \"x\"\npoints = 1.5\n\
                    [saf]\nretries = 1\nbackoff = 2\nmax_attempts = 0";
        let problems = Config::parse(text).expect_err("refused");
        let mut found: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        found.sort();
        assert_eq!(
            found,
            [
                "fraud.velocity[1].points: expected an integer, found a float",
                "fraud.velocity[1].window: unknown key (known here: window_s, max_count, \
                 max_amount, points)",
                "fraud.velocity[1].window_s: expected an integer, found a string",
                "saf.backoff: unknown key (known here: max_attempts, retry_interval_ms, \
                 expiry_s, max_entries)",
                "saf.max_attempts: 0 is out of range (1..=10000)",
                "saf.retries: unknown key (known here: max_attempts, retry_interval_ms, \
                 expiry_s, max_entries)",
            ]
        );
    }

    #[test]
    fn the_defaults_lie_in_their_ranges() {
        let c = Config::parse(
            "[[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n[acquirers.stand_in]\n\
             [fraud.card_testing]\n[fraud.declines]",
        )
        .expect("the defaults are valid");
        assert_eq!(c.saf.retry_interval, Duration::from_secs(5));
        assert_eq!(c.journal.retention, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.terminals.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.acquirers[0].max_missed_echoes, 2);
        let ct = c.fraud.card_testing.expect("present");
        assert_eq!((ct.window, ct.max_small), (Duration::from_secs(600), 3));
        let d = c.fraud.declines.expect("present");
        assert_eq!((d.window, d.max_declines), (Duration::from_secs(3600), 3));
    }

    #[test]
    fn the_shipped_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("config/ exists") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Err(e) = Config::load(&path) {
                    panic!("{e}");
                }
                checked += 1;
            }
        }
        assert!(checked >= 1);
    }
}
