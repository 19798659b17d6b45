//! The switch's TOML configuration: typed sections, defaults, and a
//! validation that reports every problem at once, each with its TOML path
//! (`acquirers[1].links[0]: ...`). Unknown keys are problems too: a typo
//! must not silently fall back to a default.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::frame::LengthHeader;
use crate::iso8583::{Spec, specs};

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
    /// Top-level `test_setup = true`: a development or test configuration,
    /// allowed to run with the development `pan_key`.
    pub test_setup: bool,
}

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
}

#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// `/metrics` and `/health`; `None` disables the endpoint.
    pub listen: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// Requests in flight across the whole switch; over it, 96 at once.
    pub max_in_flight: usize,
    /// On SIGINT/SIGTERM, how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
    /// Answers kept for repeats (x01 or resent requests), oldest out first.
    pub recent_answers: usize,
    /// How long an answer is kept for repeats.
    pub recent_answers_ttl: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeFlavor {
    /// One tokio work-stealing runtime over `worker_threads` threads.
    MultiThread,
    /// One single-threaded runtime; the fastest on small machines where
    /// the load generator and the acquirer share the cores.
    CurrentThread,
}

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub flavor: RuntimeFlavor,
    /// 0 means one per core.
    pub worker_threads: usize,
}

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
    /// Fields an answer must carry with the request's exact bytes (where
    /// both carry them) to be delivered; see `acquirer::link`.
    pub answer_must_match: Vec<u16>,
    pub stand_in: StandInConfig,
}

/// What an answer must echo unchanged by default: PAN, processing code,
/// amount, RRN, terminal id, currency.
pub const DEFAULT_ANSWER_MUST_MATCH: [u16; 6] = [2, 3, 4, 37, 41, 49];

#[derive(Clone, Debug)]
pub struct StandInConfig {
    pub enabled: bool,
    /// Approve in stand-in only at or under this amount (minor units).
    pub max_amount: u64,
    /// ... and only with fraud points at or under this.
    pub max_fraud_points: u16,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// 1 to 11 PAN digits.
    pub prefix: String,
    pub acquirer: String,
    pub backup: Option<String>,
}

#[derive(Clone, Debug)]
pub struct RoutingConfig {
    pub routes: Vec<Route>,
    /// Acquirer for cards that match no route; `None`: answer 92.
    pub default: Option<String>,
}

#[derive(Clone, Debug)]
pub struct VelocityRule {
    pub window: Duration,
    /// More than this many requests in the window adds `points`.
    pub max_count: u32,
    /// More than this total amount in the window adds `points`.
    pub max_amount: u64,
    pub points: u16,
}

#[derive(Clone, Debug)]
pub struct MccLimit {
    pub mcc: u16,
    pub max_amount: u64,
    pub points: u16,
}

#[derive(Clone, Debug)]
pub struct CardTestingRule {
    pub window: Duration,
    /// Amounts at or under this count as "small".
    pub small_amount: u64,
    /// More small amounts than this in the window adds `points`.
    pub max_small: u32,
    /// More distinct merchants (DE42) than this in the window adds `points`.
    pub max_merchants: u32,
    pub points: u16,
}

#[derive(Clone, Debug)]
pub struct DeclineRule {
    pub window: Duration,
    /// More declines than this in the window adds `points`.
    pub max_declines: u32,
    pub points: u16,
}

#[derive(Clone, Debug)]
pub struct FraudConfig {
    pub enabled: bool,
    /// Forward, but flag in the journal and metrics.
    pub review_points: u16,
    /// Answer 59 without forwarding.
    pub decline_points: u16,
    /// 128-bit key for the keyed hash of card numbers (hex).
    pub pan_key: [u8; 16],
    /// Cards whose velocity is tracked at once (least recently seen go
    /// first when full).
    pub max_tracked_cards: usize,
    pub max_amount: u64,
    pub amount_points: u16,
    pub mcc_limits: Vec<MccLimit>,
    pub velocity: Vec<VelocityRule>,
    pub card_testing: Option<CardTestingRule>,
    pub blocked_bins: Vec<String>,
    /// Keyed hashes (hex, as the journal shows them) of blocked cards.
    pub blocked_cards: Vec<String>,
    pub blocked_points: u16,
    /// Issuing country by BIN prefix (longest match).
    pub bin_countries: Vec<(String, u16)>,
    pub country_mismatch_points: u16,
    pub declines: Option<DeclineRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// A request is forwarded and answered only once its record is on disk.
    Fsync,
    /// Records are written but not synced (load tests only).
    None,
}

#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    pub segment_bytes: u64,
    pub retention: Duration,
    /// Bound on the segments' total size: past it the oldest closed
    /// segments go at roll, except those holding open work. `None`: no
    /// size bound (age only).
    pub max_bytes: Option<u64>,
    /// Records waiting for the journal thread; when full the switch sheds
    /// load (96).
    pub queue_capacity: usize,
}

#[derive(Clone, Debug)]
pub struct SafConfig {
    /// Sends of one advice/reversal before it is given up (and journaled
    /// as expired).
    pub max_attempts: u32,
    pub retry_interval: Duration,
    /// Age after which an unacknowledged entry expires.
    pub expiry: Duration,
    /// Entries per acquirer; beyond it new entries are refused loudly.
    pub max_entries: usize,
}

// ---------------------------------------------------------------------------
// Reading

/// Conversion of one TOML value; the error says what was expected.
trait FromValue: Sized {
    fn from_value(v: &Value) -> Result<Self, String>;
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: &Value) -> Result<Self, String> {
                match v {
                    Value::Integer(i) => <$t>::try_from(*i).map_err(|_| {
                        format!("{i} is out of range ({}..={})", <$t>::MIN, <$t>::MAX)
                    }),
                    other => Err(format!("expected an integer, found {}", describe(other))),
                }
            }
        }
    )*};
}
int_from_value!(u16, u32, u64, usize);

impl FromValue for bool {
    fn from_value(v: &Value) -> Result<Self, String> {
        v.as_bool()
            .ok_or_else(|| format!("expected true or false, found {}", describe(v)))
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Result<Self, String> {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("expected a string, found {}", describe(v)))
    }
}

impl FromValue for SocketAddr {
    fn from_value(v: &Value) -> Result<Self, String> {
        let s = String::from_value(v)?;
        s.parse()
            .map_err(|_| format!("`{s}` is not an IP:port address (e.g. \"127.0.0.1:8583\")"))
    }
}

impl FromValue for LengthHeader {
    fn from_value(v: &Value) -> Result<Self, String> {
        String::from_value(v)?.parse()
    }
}

impl FromValue for SpecRef {
    fn from_value(v: &Value) -> Result<Self, String> {
        let s = String::from_value(v)?;
        specs::resolve(&s)
            .map(|spec| SpecRef { spec })
            .map_err(|e| match e {
                crate::iso8583::spec_toml::SpecFileError::Io { .. } => format!(
                    "`{s}` is neither a built-in spec ({}) nor a readable spec file",
                    specs::BUILT_IN.join(", ")
                ),
                other => other.to_string(),
            })
    }
}

impl<T: FromValue> FromValue for Vec<T> {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, x)| T::from_value(x).map_err(|e| format!("[{i}]: {e}")))
                .collect(),
            other => Err(format!("expected an array, found {}", describe(other))),
        }
    }
}

/// Collects problems while reading.
#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Reader {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn check_keys(&mut self, t: &Table, path: &str, known: &[&str]) {
        for key in t.keys() {
            if !known.contains(&key.as_str()) {
                self.problem(
                    join(path, key),
                    format!("unknown key (known here: {})", known.join(", ")),
                );
            }
        }
    }

    fn opt<T: FromValue>(&mut self, t: &Table, path: &str, key: &str) -> Option<T> {
        let v = t.get(key)?;
        match T::from_value(v) {
            Ok(x) => Some(x),
            Err(e) => {
                // Array element errors start with "[i]" and attach to the key.
                let p = join(path, key);
                match e.strip_prefix('[') {
                    Some(rest) => {
                        let (idx, msg) = rest.split_once("]: ").unwrap_or((rest, ""));
                        self.problem(format!("{p}[{idx}]"), msg.to_owned());
                    }
                    None => self.problem(p, e),
                }
                None
            }
        }
    }

    fn get<T: FromValue>(&mut self, t: &Table, path: &str, key: &str, default: T) -> T {
        self.opt(t, path, key).unwrap_or(default)
    }

    /// A sub-table; an empty one if absent.
    fn table<'t>(&mut self, t: &'t Table, path: &str, key: &str) -> Option<&'t Table> {
        match t.get(key) {
            None => None,
            Some(Value::Table(sub)) => Some(sub),
            Some(other) => {
                self.problem(
                    join(path, key),
                    format!("expected a table, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// An array of tables (`[[acquirers]]`).
    fn tables<'t>(&mut self, t: &'t Table, path: &str, key: &str) -> Vec<(String, &'t Table)> {
        match t.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let p = format!("{}[{i}]", join(path, key));
                    match v {
                        Value::Table(sub) => Some((p, sub)),
                        other => {
                            self.problem(p, format!("expected a table, found {}", describe(other)));
                            None
                        }
                    }
                })
                .collect(),
            Some(other) => {
                self.problem(
                    join(path, key),
                    format!("expected an array of tables, found {}", describe(other)),
                );
                Vec::new()
            }
        }
    }

    fn positive(&mut self, path: &str, key: &str, v: usize) {
        if v == 0 {
            self.problem(join(path, key), "must be at least 1");
        }
    }

    /// An integer that must lie in `range`; outside it is a problem naming
    /// the range, and the default stands in so reading can go on. Checked
    /// before any unit conversion, so `3600 * hours` cannot overflow.
    fn ranged(
        &mut self,
        t: &Table,
        path: &str,
        key: &str,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> u64 {
        debug_assert!(
            range.contains(&default),
            "{path}.{key} default out of range"
        );
        match self.opt::<u64>(t, path, key) {
            Some(v) if range.contains(&v) => v,
            Some(v) => {
                self.problem(
                    join(path, key),
                    format!("{v} is out of range ({}..={})", range.start(), range.end()),
                );
                default
            }
            None => default,
        }
    }

    /// [`Reader::ranged`] as a count (`usize`); ranges stay under `u32::MAX`.
    fn count(
        &mut self,
        t: &Table,
        path: &str,
        key: &str,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> usize {
        usize::try_from(self.ranged(t, path, key, default, range)).unwrap_or(usize::MAX)
    }

    /// A `*_ms` duration within `range` (milliseconds).
    fn ms_in(
        &mut self,
        t: &Table,
        path: &str,
        key: &str,
        default_ms: u64,
        range: RangeInclusive<u64>,
    ) -> Duration {
        Duration::from_millis(self.ranged(t, path, key, default_ms, range))
    }

    /// A `*_s` duration within `range` (seconds).
    fn secs_in(
        &mut self,
        t: &Table,
        path: &str,
        key: &str,
        default_s: u64,
        range: RangeInclusive<u64>,
    ) -> Duration {
        Duration::from_secs(self.ranged(t, path, key, default_s, range))
    }
}

fn is_digits(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit())
}

fn parse_key(hex: &str) -> Option<[u8; 16]> {
    let bytes = crate::hex::parse_hex(hex).ok()?;
    bytes.try_into().ok()
}

/// A fixed development key, used only when the config sets none (the
/// default config says so loudly).
pub const DEV_PAN_KEY: [u8; 16] = *b"switchyard-dev!!";
/// The key in the shipped `config/switchyard.toml` ("Switchyard dev k"):
/// public, so as much a development key as the built-in one.
pub const SHIPPED_DEV_PAN_KEY: [u8; 16] = *b"Switchyard dev k";

static EMPTY: std::sync::LazyLock<Table> = std::sync::LazyLock::new(Table::new);

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
        Config::parse(&text).map_err(|problems| ConfigError {
            file: path.to_owned(),
            problems,
        })
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

    /// Parses and validates config text, returning every problem.
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let root: Table = toml::from_str(text).map_err(|e| {
            vec![Problem {
                path: String::new(),
                message: format!("not valid TOML: {}", e.to_string().trim()),
            }]
        })?;
        let mut r = Reader::default();
        r.check_keys(
            &root,
            "",
            &[
                "terminals",
                "admin",
                "limits",
                "runtime",
                "acquirers",
                "routing",
                "fraud",
                "journal",
                "saf",
                "test_setup",
            ],
        );
        let empty: &Table = &EMPTY;
        let test_setup = r.get(&root, "", "test_setup", false);

        let p = "terminals";
        let t = r.table(&root, "", p).unwrap_or(empty);
        r.check_keys(
            t,
            p,
            &[
                "listen",
                "spec",
                "framing",
                "max_frame",
                "max_connections",
                "max_connections_per_ip",
                "max_in_flight_per_connection",
                "idle_timeout_ms",
                "frame_timeout_ms",
                "listen_backlog",
                "max_write_buffer",
                "write_stall_timeout_ms",
                "allowed_terminals",
                "countries",
            ],
        );
        let terminals = TerminalConfig {
            listen: r.get(t, p, "listen", SocketAddr::from(([127, 0, 0, 1], 8583))),
            spec: r.get(t, p, "spec", SpecRef::iso87ascii()),
            framing: r.get(t, p, "framing", LengthHeader::Binary2),
            max_frame: r.get(t, p, "max_frame", crate::frame::DEFAULT_MAX_FRAME),
            max_connections: r.count(t, p, "max_connections", 4096, 1..=1_000_000),
            max_connections_per_ip: r.count(t, p, "max_connections_per_ip", 4096, 1..=1_000_000),
            max_in_flight_per_connection: r.count(
                t,
                p,
                "max_in_flight_per_connection",
                64,
                1..=65_536,
            ),
            // A connection must get time to send its first request; a day
            // of silence is already far past any terminal's heartbeat.
            idle_timeout: r.ms_in(t, p, "idle_timeout_ms", 300_000, 1_000..=86_400_000),
            frame_timeout: r.ms_in(t, p, "frame_timeout_ms", 10_000, 100..=600_000),
            listen_backlog: t
                .contains_key("listen_backlog")
                .then(|| r.ranged(t, p, "listen_backlog", 1024, 1..=65_535) as u32),
            max_write_buffer: r.count(t, p, "max_write_buffer", 1024 * 1024, 512..=1 << 30),
            write_stall_timeout: r.ms_in(t, p, "write_stall_timeout_ms", 10_000, 100..=3_600_000),
            allowed_terminals: r
                .get::<Vec<String>>(t, p, "allowed_terminals", Vec::new())
                .into_iter()
                .collect(),
            terminal_countries: Vec::new(),
        };
        let mut terminals = terminals;
        for (tp, tt) in r.tables(t, p, "countries") {
            r.check_keys(tt, &tp, &["terminal", "country"]);
            let id = r.opt::<String>(tt, &tp, "terminal");
            let country = r.opt::<u16>(tt, &tp, "country");
            match (id, country) {
                (Some(id), Some(c)) if c <= 999 => terminals.terminal_countries.push((id, c)),
                (Some(_), Some(_)) => r.problem(join(&tp, "country"), "ISO 3166 numeric, 0..=999"),
                _ => r.problem(tp, "needs `terminal` and `country`"),
            }
        }
        r.positive(p, "max_frame", terminals.max_frame);
        if terminals.max_frame > terminals.framing.limit() {
            r.problem(
                join(p, "max_frame"),
                format!(
                    "{} is more than a `{}` header can carry ({})",
                    terminals.max_frame,
                    terminals.framing,
                    terminals.framing.limit()
                ),
            );
        }

        let p = "admin";
        let t = r.table(&root, "", p).unwrap_or(empty);
        r.check_keys(t, p, &["listen", "enabled"]);
        let admin_enabled = r.get(t, p, "enabled", true);
        let admin_listen = r.get(t, p, "listen", SocketAddr::from(([127, 0, 0, 1], 9090)));
        let admin = AdminConfig {
            listen: admin_enabled.then_some(admin_listen),
        };

        let p = "limits";
        let t = r.table(&root, "", p).unwrap_or(empty);
        r.check_keys(
            t,
            p,
            &[
                "max_in_flight",
                "shutdown_grace_ms",
                "recent_answers",
                "recent_answers_ttl_s",
            ],
        );
        let limits = LimitsConfig {
            max_in_flight: r.count(t, p, "max_in_flight", 100_000, 1..=10_000_000),
            shutdown_grace: r.ms_in(t, p, "shutdown_grace_ms", 5_000, 0..=600_000),
            recent_answers: r.count(t, p, "recent_answers", 100_000, 1..=10_000_000),
            recent_answers_ttl: r.secs_in(t, p, "recent_answers_ttl_s", 600, 1..=86_400),
        };

        let p = "runtime";
        let t = r.table(&root, "", p).unwrap_or(empty);
        r.check_keys(t, p, &["flavor", "worker_threads"]);
        let flavor = match r.opt::<String>(t, p, "flavor").as_deref() {
            None | Some("current-thread") => RuntimeFlavor::CurrentThread,
            Some("multi-thread") => RuntimeFlavor::MultiThread,
            Some(other) => {
                r.problem(
                    join(p, "flavor"),
                    format!("`{other}`: expected \"current-thread\" or \"multi-thread\""),
                );
                RuntimeFlavor::CurrentThread
            }
        };
        let runtime = RuntimeConfig {
            flavor,
            worker_threads: r.count(t, p, "worker_threads", 0, 0..=1024),
        };

        let mut acquirers = Vec::new();
        for (ap, at) in r.tables(&root, "", "acquirers") {
            acquirers.push(read_acquirer(&mut r, &ap, at));
        }
        let mut names = BTreeSet::new();
        for (i, a) in acquirers.iter().enumerate() {
            if !names.insert(a.name.clone()) {
                r.problem(
                    format!("acquirers[{i}].name"),
                    format!("`{}` is used by another acquirer", a.name),
                );
            }
        }

        let p = "routing";
        let t = r.table(&root, "", p).unwrap_or(empty);
        r.check_keys(t, p, &["default", "routes"]);
        let mut routing = RoutingConfig {
            routes: Vec::new(),
            default: r.opt(t, p, "default"),
        };
        if let Some(d) = &routing.default
            && !names.contains(d)
        {
            r.problem(join(p, "default"), format!("no acquirer is named `{d}`"));
        }
        let mut prefixes = BTreeSet::new();
        for (rp, rt) in r.tables(t, p, "routes") {
            r.check_keys(rt, &rp, &["prefix", "acquirer", "backup"]);
            let prefix: Option<String> = r.opt(rt, &rp, "prefix");
            let acquirer: Option<String> = r.opt(rt, &rp, "acquirer");
            let backup: Option<String> = r.opt(rt, &rp, "backup");
            match &prefix {
                Some(pre) if !is_digits(pre, 1, 11) => r.problem(
                    join(&rp, "prefix"),
                    format!("`{pre}`: a route prefix is 1 to 11 digits"),
                ),
                Some(pre) if !prefixes.insert(pre.clone()) => {
                    r.problem(join(&rp, "prefix"), format!("`{pre}` is routed twice"))
                }
                Some(_) => {}
                None => r.problem(join(&rp, "prefix"), "required"),
            }
            for (key, name) in [("acquirer", &acquirer), ("backup", &backup)] {
                if let Some(n) = name
                    && !names.contains(n)
                {
                    r.problem(join(&rp, key), format!("no acquirer is named `{n}`"));
                }
            }
            if acquirer.is_none() {
                r.problem(join(&rp, "acquirer"), "required");
            }
            if let (Some(prefix), Some(acquirer)) = (prefix, acquirer) {
                routing.routes.push(Route {
                    prefix,
                    acquirer,
                    backup,
                });
            }
        }

        let fraud = read_fraud(&mut r, &root, empty);

        let p = "journal";
        let t = r.table(&root, "", p).unwrap_or(empty);
        r.check_keys(
            t,
            p,
            &[
                "dir",
                "durability",
                "segment_bytes",
                "retention_hours",
                "max_bytes",
                "queue_capacity",
            ],
        );
        let durability = match r.opt::<String>(t, p, "durability").as_deref() {
            None | Some("fsync") => Durability::Fsync,
            Some("none") => Durability::None,
            Some(other) => {
                r.problem(
                    join(p, "durability"),
                    format!("`{other}`: expected \"fsync\" or \"none\""),
                );
                Durability::Fsync
            }
        };
        let journal = JournalConfig {
            dir: PathBuf::from(r.get(t, p, "dir", "journal".to_owned())),
            durability,
            segment_bytes: r.ranged(t, p, "segment_bytes", 64 * 1024 * 1024, 4096..=1 << 32),
            // Ranged before the multiplication: at most ten years.
            retention: Duration::from_secs(
                3600 * r.ranged(t, p, "retention_hours", 24 * 7, 1..=87_600),
            ),
            max_bytes: t
                .contains_key("max_bytes")
                .then(|| r.ranged(t, p, "max_bytes", 1 << 30, 65_536..=1 << 50)),
            queue_capacity: r.count(t, p, "queue_capacity", 65_536, 1..=16_777_216),
        };
        if let Some(max) = journal.max_bytes
            && max < 2 * journal.segment_bytes
        {
            r.problem(
                join(p, "max_bytes"),
                format!(
                    "{max} is less than two segments ({} = 2 x segment_bytes): the active \
                     segment alone could exceed it",
                    2 * journal.segment_bytes
                ),
            );
        }

        let p = "saf";
        let t = r.table(&root, "", p).unwrap_or(empty);
        r.check_keys(
            t,
            p,
            &[
                "max_attempts",
                "retry_interval_ms",
                "expiry_s",
                "max_entries",
            ],
        );
        let saf = SafConfig {
            max_attempts: r.ranged(t, p, "max_attempts", 20, 1..=10_000) as u32,
            retry_interval: r.ms_in(t, p, "retry_interval_ms", 5_000, 100..=3_600_000),
            // Under a minute a reversal may expire before its first resend.
            expiry: r.secs_in(t, p, "expiry_s", 24 * 3600, 60..=30 * 86_400),
            max_entries: r.count(t, p, "max_entries", 100_000, 1..=10_000_000),
        };

        if r.problems.is_empty() {
            Ok(Config {
                terminals,
                admin,
                limits,
                runtime,
                acquirers,
                routing,
                fraud,
                journal,
                saf,
                test_setup,
            })
        } else {
            Err(r.problems)
        }
    }
}

fn read_acquirer(r: &mut Reader, p: &str, t: &Table) -> AcquirerConfig {
    r.check_keys(
        t,
        p,
        &[
            "name",
            "links",
            "spec",
            "framing",
            "max_frame",
            "request_timeout_ms",
            "connect_timeout_ms",
            "backoff_initial_ms",
            "backoff_max_ms",
            "echo_interval_ms",
            "echo_timeout_ms",
            "max_missed_echoes",
            "max_in_flight_per_link",
            "sign_on",
            "answer_must_match",
            "stand_in",
        ],
    );
    let name: Option<String> = r.opt(t, p, "name");
    if name.is_none() {
        r.problem(join(p, "name"), "required");
    }
    let links: Vec<SocketAddr> = r.get(t, p, "links", Vec::new());
    if links.is_empty() && t.contains_key("links") {
        r.problem(join(p, "links"), "at least one address");
    } else if !t.contains_key("links") {
        r.problem(join(p, "links"), "required (one address per link)");
    }
    let sp = join(p, "stand_in");
    let st = r.table(t, p, "stand_in").unwrap_or(&EMPTY);
    r.check_keys(st, &sp, &["enabled", "max_amount", "max_fraud_points"]);
    let stand_in = StandInConfig {
        enabled: r.get(st, &sp, "enabled", false),
        max_amount: r.get(st, &sp, "max_amount", 0),
        max_fraud_points: r.get(st, &sp, "max_fraud_points", 0),
    };
    let a = AcquirerConfig {
        name: name.unwrap_or_default(),
        links,
        spec: r.get(t, p, "spec", SpecRef::iso87ascii()),
        framing: r.get(t, p, "framing", LengthHeader::Binary2),
        max_frame: r.get(t, p, "max_frame", crate::frame::DEFAULT_MAX_FRAME),
        request_timeout: r.ms_in(t, p, "request_timeout_ms", 30_000, 10..=600_000),
        connect_timeout: r.ms_in(t, p, "connect_timeout_ms", 3_000, 10..=600_000),
        backoff_initial: r.ms_in(t, p, "backoff_initial_ms", 100, 1..=600_000),
        backoff_max: r.ms_in(t, p, "backoff_max_ms", 10_000, 1..=3_600_000),
        echo_interval: r.ms_in(t, p, "echo_interval_ms", 30_000, 10..=86_400_000),
        echo_timeout: r.ms_in(t, p, "echo_timeout_ms", 5_000, 10..=600_000),
        max_missed_echoes: r.ranged(t, p, "max_missed_echoes", 2, 1..=100) as u32,
        max_in_flight_per_link: r.count(t, p, "max_in_flight_per_link", 10_000, 1..=1_000_000),
        sign_on: r.get(t, p, "sign_on", true),
        answer_must_match: r.get(
            t,
            p,
            "answer_must_match",
            DEFAULT_ANSWER_MUST_MATCH.to_vec(),
        ),
        stand_in,
    };
    for (i, &n) in a.answer_must_match.iter().enumerate() {
        if !(2..=128).contains(&n) {
            r.problem(
                format!("{}[{i}]", join(p, "answer_must_match")),
                format!("{n} is not a data element number (2..=128)"),
            );
        }
    }
    if a.backoff_max < a.backoff_initial {
        r.problem(
            join(p, "backoff_max_ms"),
            "must not be less than backoff_initial_ms",
        );
    }
    a
}

fn read_fraud(r: &mut Reader, root: &Table, empty: &Table) -> FraudConfig {
    let p = "fraud";
    let t = r.table(root, "", p).unwrap_or(empty);
    r.check_keys(
        t,
        p,
        &[
            "enabled",
            "review_points",
            "decline_points",
            "pan_key",
            "max_tracked_cards",
            "max_amount",
            "amount_points",
            "mcc_limits",
            "velocity",
            "card_testing",
            "blocked_bins",
            "blocked_cards",
            "blocked_points",
            "bin_countries",
            "country_mismatch_points",
            "declines",
        ],
    );
    let pan_key = match r.opt::<String>(t, p, "pan_key") {
        None => DEV_PAN_KEY,
        Some(hex) => parse_key(&hex).unwrap_or_else(|| {
            r.problem(join(p, "pan_key"), "expected 32 hex digits (a 128-bit key)");
            DEV_PAN_KEY
        }),
    };
    let mut f = FraudConfig {
        enabled: r.get(t, p, "enabled", true),
        review_points: r.get(t, p, "review_points", 50),
        decline_points: r.get(t, p, "decline_points", 80),
        pan_key,
        max_tracked_cards: r.count(t, p, "max_tracked_cards", 1_000_000, 1..=100_000_000),
        max_amount: r.get(t, p, "max_amount", u64::MAX),
        amount_points: r.get(t, p, "amount_points", 30),
        mcc_limits: Vec::new(),
        velocity: Vec::new(),
        card_testing: None,
        blocked_bins: r.get(t, p, "blocked_bins", Vec::new()),
        blocked_cards: r.get(t, p, "blocked_cards", Vec::new()),
        blocked_points: r.get(t, p, "blocked_points", 100),
        bin_countries: Vec::new(),
        country_mismatch_points: r.get(t, p, "country_mismatch_points", 20),
        declines: None,
    };
    if f.decline_points < f.review_points {
        r.problem(
            join(p, "decline_points"),
            "must not be less than review_points",
        );
    }
    for (i, b) in f.blocked_bins.iter().enumerate() {
        if !is_digits(b, 1, 11) {
            r.problem(
                format!("{p}.blocked_bins[{i}]"),
                format!("`{b}` is not 1 to 11 digits"),
            );
        }
    }
    for (i, c) in f.blocked_cards.iter().enumerate() {
        if crate::switch::fraud::CardHash::from_hex(c).is_none() {
            r.problem(
                format!("{p}.blocked_cards[{i}]"),
                "a card hash is 32 hex digits, as the journal shows it",
            );
        }
    }
    for (mp, mt) in r.tables(t, p, "mcc_limits") {
        r.check_keys(mt, &mp, &["mcc", "max_amount", "points"]);
        match (
            r.opt::<u16>(mt, &mp, "mcc"),
            r.opt::<u64>(mt, &mp, "max_amount"),
        ) {
            (Some(mcc), Some(max_amount)) => {
                let points = r.get(mt, &mp, "points", f.amount_points);
                f.mcc_limits.push(MccLimit {
                    mcc,
                    max_amount,
                    points,
                })
            }
            _ => r.problem(mp, "needs `mcc` and `max_amount`"),
        }
    }
    for (vp, vt) in r.tables(t, p, "velocity") {
        r.check_keys(vt, &vp, &["window_s", "max_count", "max_amount", "points"]);
        if !vt.contains_key("window_s") {
            r.problem(join(&vp, "window_s"), "required, at least 1");
        }
        let window = r.secs_in(vt, &vp, "window_s", MAX_WINDOW_S, 1..=MAX_WINDOW_S);
        f.velocity.push(VelocityRule {
            window,
            max_count: r.get(vt, &vp, "max_count", u32::MAX),
            max_amount: r.get(vt, &vp, "max_amount", u64::MAX),
            points: r.get(vt, &vp, "points", 30),
        });
    }
    if f.velocity.len() > crate_limits::MAX_VELOCITY_WINDOWS {
        r.problem(
            join(p, "velocity"),
            format!("at most {} windows", crate_limits::MAX_VELOCITY_WINDOWS),
        );
    }
    if let Some(ct) = r.table(t, p, "card_testing") {
        let cp = join(p, "card_testing");
        r.check_keys(
            ct,
            &cp,
            &[
                "window_s",
                "small_amount",
                "max_small",
                "max_merchants",
                "points",
            ],
        );
        f.card_testing = Some(CardTestingRule {
            window: r.secs_in(ct, &cp, "window_s", 600, 1..=MAX_WINDOW_S),
            small_amount: r.get(ct, &cp, "small_amount", 200),
            max_small: r.get(ct, &cp, "max_small", 3),
            max_merchants: r.get(ct, &cp, "max_merchants", 3),
            points: r.get(ct, &cp, "points", 50),
        });
    }
    if let Some(ct) = &f.card_testing {
        let cp = join(p, "card_testing");
        for (key, v) in [
            ("max_small", ct.max_small),
            ("max_merchants", ct.max_merchants),
        ] {
            if v as usize >= crate_limits::RECENT_EVENTS {
                r.problem(
                    join(&cp, key),
                    format!("at most {}", crate_limits::RECENT_EVENTS - 1),
                );
            }
        }
    }
    for (bp, bt) in r.tables(t, p, "bin_countries") {
        r.check_keys(bt, &bp, &["prefix", "country"]);
        match (
            r.opt::<String>(bt, &bp, "prefix"),
            r.opt::<u16>(bt, &bp, "country"),
        ) {
            (Some(pre), Some(c)) if is_digits(&pre, 1, 11) && c <= 999 => {
                f.bin_countries.push((pre, c))
            }
            (Some(_), Some(_)) => r.problem(
                bp,
                "`prefix` is 1 to 11 digits and `country` ISO 3166 numeric (0..=999)",
            ),
            _ => r.problem(bp, "needs `prefix` and `country`"),
        }
    }
    if let Some(dt) = r.table(t, p, "declines") {
        let dp = join(p, "declines");
        r.check_keys(dt, &dp, &["window_s", "max_declines", "points"]);
        f.declines = Some(DeclineRule {
            window: r.secs_in(dt, &dp, "window_s", 3600, 1..=MAX_WINDOW_S),
            max_declines: r.get(dt, &dp, "max_declines", 3),
            points: r.get(dt, &dp, "points", 40),
        });
        if f.declines
            .as_ref()
            .is_some_and(|d| d.max_declines as usize >= crate_limits::RECENT_EVENTS)
        {
            r.problem(
                join(&dp, "max_declines"),
                format!("at most {}", crate_limits::RECENT_EVENTS - 1),
            );
        }
    }
    f
}

/// Longest fraud window: a month (the fraud state counts in `u32` seconds).
const MAX_WINDOW_S: u64 = 30 * 86_400;

/// Limits that size fixed arrays in the fraud engine.
pub mod crate_limits {
    pub const MAX_VELOCITY_WINDOWS: usize = 4;
    /// Recent events kept per card for the card-testing and decline rules;
    /// their thresholds must stay under it.
    pub const RECENT_EVENTS: usize = 8;
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn only_problem(text: &str) -> String {
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
    fn a_huge_retention_is_refused_not_overflowed() {
        // 3600 * this overflows u64; it must be a problem, not a panic or a wrap.
        let text = format!("[journal]\nretention_hours = {}", i64::MAX);
        assert_eq!(
            only_problem(&text),
            format!(
                "journal.retention_hours: {} is out of range (1..=87600)",
                i64::MAX
            )
        );
        let c = Config::parse("[journal]\nretention_hours = 87600").expect("ten years is fine");
        assert_eq!(c.journal.retention, Duration::from_secs(87_600 * 3600));
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

        let shipped = Config::parse(include_str!("../../config/switchyard.toml")).expect("valid");
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
    fn max_bytes_must_hold_two_segments() {
        let c = Config::parse("[journal]\nsegment_bytes = 4096\nmax_bytes = 65536").expect("valid");
        assert_eq!(c.journal.max_bytes, Some(65_536));
        assert_eq!(Config::parse("").expect("valid").journal.max_bytes, None);
        let p = only_problem("[journal]\nmax_bytes = 100000");
        assert!(
            p.starts_with("journal.max_bytes: 100000 is less than two segments"),
            "{p}"
        );
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
