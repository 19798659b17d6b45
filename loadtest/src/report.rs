//! The figures of a run and their outputs: a human table, JSON, the
//! HdrHistogram percentile text (`.hgrm`) and a self-contained HTML page.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;

use std::net::SocketAddr;

use switchyard_protocol::codes;

use super::scrape;
use super::stats::{HandshakeFailure, OTHER_CODE, WorkerStats};
use super::{LoadConfig, Mix, Mode};

/// Share of scheduled sends later than 1 ms above which the run is said
/// to have fallen behind.
const LATE_SHARE_WARN: f64 = 0.01;

/// Is this DE39 one of the switch's own refusals, which a load test counts
/// as errors (like wrk2's "Non-2xx")? Host declines (05, 51, ...) and fraud
/// declines (59) are answers, not errors. An answer without DE39 is one too.
pub fn is_switch_refusal(code: [u8; 2]) -> bool {
    matches!(
        code,
        codes::FORMAT_ERROR
            | codes::ISSUER_UNAVAILABLE
            | codes::NO_ROUTE
            | codes::DUPLICATE
            | codes::SYSTEM_MALFUNCTION
            | codes::INVALID_TRANSACTION
            | codes::SECURITY_VIOLATION
            | codes::BAD_PIN_BLOCK
            | NO_CODE
    )
}

/// How the generator records an answer that carried no DE39.
pub const NO_CODE: [u8; 2] = *b"--";

/// What a DE39 means, for the reports (ISO 8583:1987 meanings; the
/// switch's own codes as `switchyard_protocol::codes` describes them).
pub fn de39_meaning(code: &str) -> &'static str {
    let b = code.as_bytes();
    let Ok(code) = <[u8; 2]>::try_from(b) else {
        return "more codes than the report tracks";
    };
    match code {
        codes::APPROVED => "approved",
        codes::INVALID_TRANSACTION => "invalid transaction (switch refusal)",
        codes::INVALID_CARD_NUMBER => "invalid card number (Luhn)",
        codes::FORMAT_ERROR => "format error (switch refusal)",
        codes::UNKNOWN_TERMINAL => "terminal not allowed",
        codes::SUSPECTED_FRAUD => "suspected fraud (fraud decline)",
        codes::ISSUER_UNAVAILABLE => {
            "issuer unavailable: host timeout or link down (switch refusal)"
        }
        codes::NO_ROUTE => "no route for the card (switch refusal)",
        codes::DUPLICATE => "duplicate transmission (switch refusal)",
        codes::SYSTEM_MALFUNCTION => "system malfunction: switch overloaded (switch refusal)",
        codes::UNDELIVERABLE => "response received too late",
        NO_CODE => "no DE39 in the answer (error)",
        _ => match &code {
            b"01" => "refer to card issuer",
            b"03" => "invalid merchant",
            b"04" => "pick up card",
            b"05" => "do not honour (host decline)",
            b"13" => "invalid amount",
            b"41" => "lost card",
            b"43" => "stolen card",
            b"51" => "insufficient funds (host decline)",
            b"54" => "expired card",
            b"55" => "incorrect PIN",
            b"57" => "transaction not permitted to cardholder",
            b"61" => "exceeds withdrawal limit",
            b"62" => "restricted card",
            b"65" => "exceeds withdrawal frequency",
            _ => "host decline or other answer",
        },
    }
}

/// The switch's own latency over the measured period, from its metrics.
#[derive(Clone, Debug)]
struct SwitchLatency {
    admin: SocketAddr,
    view: Result<scrape::Histogram, String>,
}

/// Everything a run measured. Figures are for the measured period (after
/// the warmup) unless a name says otherwise.
pub struct Report {
    target: SocketAddr,
    admin: Option<SocketAddr>,
    started_unix_ms: u64,
    mode: Mode,
    connections: usize,
    workers: usize,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
    spec: String,
    framing: String,
    seed: u64,
    mix: Mix,
    max_error_rate: f64,
    /// The connections were TLS.
    tls: bool,
    reconnect_every: u64,
    /// Seconds in the measured period (the per-second table's rows).
    seconds: usize,
    /// Extra lines of context a caller adds (the demo: durability, config).
    context: Vec<(String, String)>,
    switch: Option<SwitchLatency>,
    s: WorkerStats,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("mode", &self.mode)
            .field("connections", &self.connections)
            .field("measured", &self.s.measured)
            .field("warmup", &self.s.warmup)
            .field("unmatched", &self.s.unmatched)
            .field("reconnects", &self.s.reconnects)
            .finish_non_exhaustive()
    }
}

/// One row of the per-second series.
#[derive(Clone, Copy, Debug)]
pub struct SecondRow {
    pub second: usize,
    pub sent: u64,
    pub answered: u64,
    pub timed_out: u64,
    /// Answers that are switch refusals (errors).
    pub errors: u64,
    /// Latency of the second's well-matched answers; `None` without any.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
}

/// The per-second table's columns, in the order of `SecondRow::cells`.
const SECOND_COLUMNS: [&str; 8] = [
    "s",
    "sent",
    "answered",
    "errors",
    "timed out",
    "p50",
    "p99",
    "max",
];

impl SecondRow {
    /// The row as the per-second table shows it (text and HTML alike).
    fn cells(&self) -> [String; 8] {
        let lat = |v: Option<u64>| v.map_or_else(|| "-".to_string(), fmt_us);
        [
            self.second.to_string(),
            self.sent.to_string(),
            self.answered.to_string(),
            self.errors.to_string(),
            self.timed_out.to_string(),
            lat(self.p50_us),
            lat(self.p99_us),
            lat(self.max_us),
        ]
    }
}

/// `{"count": N, "amount_minor": M}`.
fn tally_json(t: crate::Tally) -> serde_json::Value {
    serde_json::json!({ "count": t.count, "amount_minor": t.amount })
}

/// One line of the text per-second table: the second, then the others.
fn write_second_line(
    out: &mut impl std::io::Write,
    cells: &[impl std::fmt::Display],
) -> std::io::Result<()> {
    write!(out, "  {:>4}", cells[0])?;
    for c in &cells[1..] {
        write!(out, " {c:>10}")?;
    }
    writeln!(out)
}

const PERCENTILES: [(&str, f64); 6] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
    ("max", 100.0),
];

impl Report {
    pub(super) fn new(
        config: &LoadConfig,
        s: WorkerStats,
        workers: usize,
        started_unix_ms: u64,
    ) -> Report {
        Report {
            target: config.target,
            admin: config.admin,
            started_unix_ms,
            mode: config.mode,
            connections: config.connections,
            workers,
            duration: config.duration,
            warmup: config.warmup,
            timeout: config.timeout,
            spec: config.spec.name.clone(),
            framing: config.framing.name().to_string(),
            seed: config.seed,
            mix: config.mix,
            max_error_rate: config.max_error_rate,
            tls: config.tls.is_some(),
            reconnect_every: config.reconnect_every,
            seconds: config.duration.as_secs_f64().ceil() as usize,
            context: Vec::new(),
            switch: None,
            s,
        }
    }

    pub(super) fn set_switch_latency(&mut self, view: Result<scrape::Histogram, String>) {
        if let Some(admin) = self.admin {
            self.switch = Some(SwitchLatency { admin, view });
        }
    }

    /// Adds a line of context to every output (e.g. the demo's journal
    /// durability and config).
    pub fn add_context(&mut self, key: &str, value: impl Into<String>) {
        self.context.push((key.to_string(), value.into()));
    }

    /// The lines of context every output starts with.
    fn context_rows(&self) -> Vec<(String, String)> {
        let mut rows = vec![
            ("target".to_string(), self.target.to_string()),
            (
                "started".to_string(),
                switchyard_protocol::iso8583::datetime::rfc3339(self.started_unix_ms / 1000),
            ),
            (
                "switchyard".to_string(),
                format!(
                    "{} (commit {})",
                    crate::build_info::VERSION,
                    crate::build_info::COMMIT
                ),
            ),
        ];
        rows.extend(self.context.iter().cloned());
        rows
    }

    /// Requests sent in the measured period.
    pub fn sent(&self) -> u64 {
        self.s.measured.sent
    }
    /// Measured requests answered (well or not: see `mismatched`).
    pub fn answered(&self) -> u64 {
        self.s.measured.answered
    }
    pub fn timed_out(&self) -> u64 {
        self.s.measured.timed_out
    }
    /// The money of the run's well-matched answers (warmup included):
    /// approvals and reversals by class, for checking a settlement.
    pub fn money(&self) -> &crate::Money {
        &self.s.money
    }

    /// Measured requests whose connection closed before an answer, or
    /// still unanswered when the run gave up.
    pub fn lost(&self) -> u64 {
        self.s.measured.lost
    }
    /// Answers that do not fit: wrong MTI or amount for their request,
    /// answers matching no request, unparseable answers (whole run).
    pub fn mismatched(&self) -> u64 {
        self.s.measured.bad_echo + self.s.warmup.bad_echo + self.s.unmatched + self.s.unparseable
    }
    /// Answers matching no request in flight (part of `mismatched`).
    pub fn unmatched(&self) -> u64 {
        self.s.unmatched
    }
    /// Answers that came after their request had timed out.
    pub fn late_answers(&self) -> u64 {
        self.s.late_answers
    }
    pub fn reconnects(&self) -> u64 {
        self.s.reconnects
    }
    /// Connections opened (whole run).
    pub fn connections_opened(&self) -> u64 {
        self.s.connects
    }
    /// Requests sent again after a clean close (`resend_on_close`).
    pub fn resent(&self) -> u64 {
        self.s.resent
    }
    /// Connections closed and opened again by `reconnect_every`.
    pub fn reopens(&self) -> u64 {
        self.s.reopens
    }
    /// TLS handshakes completed (whole run).
    pub fn handshakes(&self) -> u64 {
        self.s.tls.handshakes
    }
    /// TLS handshakes that failed (whole run), by reason (the word of
    /// `tls::failure_reason`, and the server's alert if one came), most
    /// frequent first.
    pub fn handshake_failures(&self) -> (u64, Vec<(HandshakeFailure, u64)>) {
        let mut reasons = self.s.tls.reasons.clone();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        (self.s.tls.failures, reasons)
    }
    /// Handshakes completed in the measured period, per second.
    pub fn handshake_rate(&self) -> f64 {
        self.s.tls.measured as f64 / self.duration.as_secs_f64().max(1e-9)
    }
    /// Measured answers by (response MTI, DE39), sorted.
    pub fn responses(&self) -> Vec<(u16, String, u64)> {
        let mut v: Vec<_> = self
            .s
            .by_code
            .iter()
            .map(|(&(mti, code), &n)| {
                let code = if (mti, code) == OTHER_CODE {
                    "other".to_string()
                } else {
                    String::from_utf8_lossy(&code).into_owned()
                };
                (mti, code, n)
            })
            .collect();
        v.sort();
        v
    }
    /// Latency of the measured, well-matched answers, µs (from the
    /// intended send time in the open loop).
    pub fn latency(&self) -> &Histogram<u64> {
        &self.s.latency
    }
    /// Offered rate (open loop), requests per second.
    pub fn offered_rate(&self) -> Option<f64> {
        match self.mode {
            Mode::Open { rate } => Some(rate),
            Mode::Closed { .. } => None,
        }
    }
    /// Answered per second over the measured period (every answer, the
    /// switch's refusals included: see `approved_rate`, `error_rate`).
    pub fn achieved_rate(&self) -> f64 {
        self.answered() as f64 / self.duration.as_secs_f64().max(1e-9)
    }
    /// Measured answers that are the switch's own refusals
    /// ([`is_switch_refusal`]): errors.
    pub fn errors(&self) -> u64 {
        self.s
            .by_code
            .iter()
            .filter(|((_, code), _)| is_switch_refusal(*code))
            .map(|(_, n)| n)
            .sum()
    }
    /// Errors as a share (0..1) of the measured answers.
    pub fn error_rate(&self) -> f64 {
        share(self.errors(), self.answered())
    }
    /// Measured answers with DE39 00.
    pub fn approved(&self) -> u64 {
        self.s
            .by_code
            .iter()
            .filter(|((_, code), _)| *code == codes::APPROVED)
            .map(|(_, n)| n)
            .sum()
    }
    /// Approved answers per second over the measured period.
    pub fn approved_rate(&self) -> f64 {
        self.approved() as f64 / self.duration.as_secs_f64().max(1e-9)
    }
    /// Why the run is not clean; empty when it is. A run is clean when it
    /// sent, every connection came up and signed on, nothing was lost or
    /// mismatched (warmup included), and neither the switch's refusals
    /// (share of answers) nor timeouts (share of requests) exceed the
    /// maximum error rate.
    pub fn problems(&self) -> Vec<String> {
        let s = &self.s;
        let mut p = Vec::new();
        if self.sent() == 0 {
            p.push("nothing was sent".to_string());
        } else if self.answered() == 0 {
            p.push("no request was answered".to_string());
        }
        if s.connect_failures > 0 {
            p.push(format!("{} connection attempts failed", s.connect_failures));
        }
        if s.sign_on_failures > 0 {
            p.push(format!(
                "{} sign-ons failed or were refused",
                s.sign_on_failures
            ));
        }
        if s.tls.failures > 0 {
            p.push(format!(
                "{} TLS handshakes failed ({})",
                s.tls.failures,
                self.failure_reasons()
            ));
        }
        let lost = self.lost() + s.warmup.lost;
        if lost > 0 {
            p.push(format!("{lost} requests lost"));
        }
        if self.mismatched() > 0 {
            p.push(format!("{} answers mismatched", self.mismatched()));
        }
        if s.answer_mac_failures > 0 {
            p.push(format!(
                "{} answers' MAC missing or wrong",
                s.answer_mac_failures
            ));
        }
        if self.errors() > 0 && self.error_rate() > self.max_error_rate {
            p.push(format!(
                "{} errors ({}) of {} answers, over the maximum error rate {}",
                self.errors(),
                pct(self.error_rate()),
                self.answered(),
                pct(self.max_error_rate)
            ));
        }
        let timeout_rate = share(self.timed_out(), self.sent());
        if self.timed_out() > 0 && timeout_rate > self.max_error_rate {
            p.push(format!(
                "{} requests timed out ({}), over the maximum error rate {}",
                self.timed_out(),
                pct(timeout_rate),
                pct(self.max_error_rate)
            ));
        }
        p
    }
    /// See [`Report::problems`].
    pub fn is_clean(&self) -> bool {
        self.problems().is_empty()
    }
    /// The exit status of a run: 0 when clean, 1 when not.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.is_clean())
    }
    /// The target switch's request latency over the measured period, from
    /// its `/metrics` (`--admin`): `None` without an admin address.
    pub fn switch_latency(&self) -> Option<Result<&scrape::Histogram, &str>> {
        self.switch
            .as_ref()
            .map(|s| s.view.as_ref().map_err(String::as_str))
    }
    /// The seed of the message stream (random unless given).
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Open loop: share of sends later than 1 ms against the schedule.
    pub fn late_share(&self) -> f64 {
        if self.s.scheduled_sends == 0 {
            0.0
        } else {
            self.s.late_sends as f64 / self.s.scheduled_sends as f64
        }
    }
    /// Open loop: lag behind the schedule at `percentile` (0-100), µs.
    pub fn lag_us(&self, percentile: f64) -> u64 {
        self.s.lag.value_at_percentile(percentile)
    }
    /// Why the open loop's figures are not those of the offered rate, if
    /// it fell behind its schedule.
    pub fn schedule_warning(&self) -> Option<String> {
        self.offered_rate()?;
        let late = self.late_share();
        if late > LATE_SHARE_WARN || self.s.table_full > 0 {
            Some(format!(
                "the load generator fell BEHIND SCHEDULE: {:.2}% of sends were more than 1 ms late \
                 (lag p50 {}, p99 {}, max {}){}; latency is still counted from the intended send times, \
                 but the offered rate was not delivered evenly",
                late * 100.0,
                fmt_us(self.s.lag.value_at_percentile(50.0)),
                fmt_us(self.s.lag.value_at_percentile(99.0)),
                fmt_us(self.s.lag.max()),
                if self.s.table_full > 0 {
                    format!(
                        ", and in-flight tables were full {} times (answers slower than the timeout allows)",
                        self.s.table_full
                    )
                } else {
                    String::new()
                }
            ))
        } else {
            None
        }
    }
    /// The per-second series of the measured period: every second, those
    /// with no traffic too.
    pub fn per_second(&self) -> Vec<SecondRow> {
        (0..self.seconds.max(self.s.seconds.len()))
            .map(|i| match self.s.seconds.get(i) {
                Some(s) => {
                    let some = |v: u64| (!s.latency.is_empty()).then_some(v);
                    SecondRow {
                        second: i,
                        sent: s.sent,
                        answered: s.answered,
                        timed_out: s.timed_out,
                        errors: s.refused,
                        p50_us: some(s.latency.value_at_percentile(50.0)),
                        p99_us: some(s.latency.value_at_percentile(99.0)),
                        max_us: some(s.latency.max()),
                    }
                }
                None => SecondRow {
                    second: i,
                    sent: 0,
                    answered: 0,
                    timed_out: 0,
                    errors: 0,
                    p50_us: None,
                    p99_us: None,
                    max_us: None,
                },
            })
            .collect()
    }

    /// What the latency figures count from.
    fn latency_basis(&self) -> &'static str {
        match self.mode {
            Mode::Open { .. } => {
                "from the intended send time (open loop: corrected for coordinated omission)"
            }
            Mode::Closed { .. } => {
                "from the actual send time (closed loop: NOT corrected for coordinated omission)"
            }
        }
    }

    /// How the per-second rows are bucketed.
    fn second_basis(&self) -> &'static str {
        match self.mode {
            Mode::Open { .. } => "by intended send time",
            Mode::Closed { .. } => {
                "by send time; closed loop, not corrected for coordinated omission"
            }
        }
    }

    /// "no_certificate 3, timeout 1".
    fn failure_reasons(&self) -> String {
        let (_, reasons) = self.handshake_failures();
        let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
        parts.join(", ")
    }

    /// The TLS line of the summary.
    fn tls_line(&self) -> String {
        let t = &self.s.tls;
        if !self.tls {
            return "off (plain TCP)".to_string();
        }
        let mut line = format!(
            "{} handshakes completed ({} resumed), {:.1}/s in the measured period; {} failed",
            t.handshakes,
            t.resumed,
            self.handshake_rate(),
            t.failures
        );
        if t.failures > 0 {
            let _ = write!(line, " ({})", self.failure_reasons());
        }
        if !t.time.is_empty() {
            let _ = write!(
                line,
                "; handshake time p50 {} p99 {} max {}",
                fmt_us(t.time.value_at_percentile(50.0)),
                fmt_us(t.time.value_at_percentile(99.0)),
                fmt_us(t.time.max())
            );
        }
        line
    }

    fn mode_line(&self) -> String {
        match self.mode {
            Mode::Open { rate } => format!("open loop, {rate:.0}/s offered"),
            Mode::Closed { in_flight } => {
                format!("closed loop, {in_flight} in flight per connection")
            }
        }
    }

    fn summary_rows(&self) -> Vec<(&'static str, String)> {
        let s = &self.s;
        let mut rows = vec![
            (
                "offered rate",
                self.offered_rate()
                    .map_or("- (closed loop)".into(), |r| format!("{r:.1}/s")),
            ),
            (
                "achieved rate",
                format!(
                    "{:.1}/s answered, {:.1}/s approved; errors {} ({})",
                    self.achieved_rate(),
                    self.approved_rate(),
                    self.errors(),
                    pct(self.error_rate())
                ),
            ),
            ("sent", self.sent().to_string()),
            ("answered", self.answered().to_string()),
            (
                "errors",
                format!(
                    "{} answers were the switch's own refusals (30, 91, 92, 94, 96, 12, 63, 81), {} of answers; maximum {}",
                    self.errors(),
                    pct(self.error_rate()),
                    pct(self.max_error_rate)
                ),
            ),
            ("timed out", self.timed_out().to_string()),
            ("lost", self.lost().to_string()),
            (
                "mismatched",
                format!(
                    "{} (bad echo {}, unmatched {}, unparseable {})",
                    self.mismatched(),
                    s.measured.bad_echo + s.warmup.bad_echo,
                    s.unmatched,
                    s.unparseable
                ),
            ),
            ("late answers", s.late_answers.to_string()),
            (
                "connections",
                format!(
                    "{} opened, {} reopened{}, {} reconnects ({} requests resent after a clean close), {} connect failures, {} sign-on failures",
                    s.connects,
                    s.reopens,
                    match self.reconnect_every {
                        0 => String::new(),
                        n => format!(" (--reconnect-every {n})"),
                    },
                    s.reconnects,
                    s.resent,
                    s.connect_failures,
                    s.sign_on_failures
                ),
            ),
            ("TLS", self.tls_line()),
            (
                "warmup",
                format!(
                    "{} sent, {} answered, {} timed out, {} lost (not in the figures)",
                    s.warmup.sent, s.warmup.answered, s.warmup.timed_out, s.warmup.lost
                ),
            ),
        ];
        if self.offered_rate().is_some() {
            rows.push((
                "schedule",
                format!(
                    "{:.2}% of sends >1 ms late, lag p50 {} p99 {} max {}",
                    self.late_share() * 100.0,
                    fmt_us(s.lag.value_at_percentile(50.0)),
                    fmt_us(s.lag.value_at_percentile(99.0)),
                    fmt_us(s.lag.max())
                ),
            ));
        }
        rows
    }

    /// The verdict line: what "clean" means, or why the run is not.
    fn result_line(&self) -> String {
        let problems = self.problems();
        if problems.is_empty() {
            format!(
                "clean (every request answered; nothing lost or mismatched; errors and timeouts within {})",
                pct(self.max_error_rate)
            )
        } else {
            format!("NOT CLEAN: {}", problems.join("; "))
        }
    }

    pub fn print_human(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "loadtest: {} over {} connections ({} threads), {:.1} s measured after {:.1} s warmup",
            self.mode_line(),
            self.connections,
            self.workers,
            self.duration.as_secs_f64(),
            self.warmup.as_secs_f64()
        )?;
        for (k, v) in self.context_rows() {
            writeln!(out, "  {k:<15} {v}")?;
        }
        writeln!(
            out,
            "  spec {}, framing {}, seed {} (--seed {} repeats it; runs with other seeds use other terminal ids and STANs but share the cards, and the switch's fraud history of them), timeout {:.1} s, mix purchase={} auth={} reversal={} fraud={}",
            self.spec,
            self.framing,
            self.seed,
            self.seed,
            self.timeout.as_secs_f64(),
            self.mix.purchase,
            self.mix.authorization,
            self.mix.reversal,
            self.mix.fraud
        )?;
        if let Some(w) = self.schedule_warning() {
            writeln!(out, "\n  !!! WARNING: {w}")?;
        }
        writeln!(out)?;
        for (k, v) in self.summary_rows() {
            writeln!(out, "  {k:<15} {v}")?;
        }
        for e in &self.s.errors {
            writeln!(out, "  error           {e}")?;
        }
        writeln!(
            out,
            "\n  responses        MTI   DE39       count   share  meaning"
        )?;
        let answered = self.answered();
        for (mti, code, n) in self.responses() {
            writeln!(
                out,
                "                   {mti:04}  {code:<5} {n:>10}  {:>6}  {}",
                pct_short(share(n, answered)),
                de39_meaning(&code)
            )?;
        }
        if answered == 0 {
            writeln!(out, "                   (no answers)")?;
        }
        let h = &self.s.latency;
        writeln!(out, "\n  latency {}", self.latency_basis())?;
        if h.is_empty() {
            writeln!(out, "                  no answers: no latency to show")?;
        } else {
            write!(out, "                 ")?;
            for (name, _) in PERCENTILES {
                write!(out, " {name:>9}")?;
            }
            write!(out, "      mean\n                 ")?;
            for (_, p) in PERCENTILES {
                write!(out, " {:>9}", fmt_us(h.value_at_percentile(p)))?;
            }
            writeln!(out, " {:>9}", fmt_us(h.mean() as u64))?;
        }
        if let Some(line) = self.switch_line() {
            writeln!(out, "  in the switch   {line}")?;
        }
        let rows = self.per_second();
        if !rows.is_empty() {
            writeln!(out, "\n  per second ({})", self.second_basis())?;
            write_second_line(out, &SECOND_COLUMNS)?;
            for r in rows {
                write_second_line(out, &r.cells())?;
            }
        }
        writeln!(out, "\n  result: {}", self.result_line())
    }

    /// The switch's own latency in one line, when `--admin` was given.
    fn switch_line(&self) -> Option<String> {
        let sw = self.switch.as_ref()?;
        Some(match &sw.view {
            Err(e) => format!("(could not read the switch's metrics: {e})"),
            Ok(h) if h.count <= 0.0 => {
                format!("no requests recorded by the switch at {}", sw.admin)
            }
            Ok(h) => format!(
                "{} requests: {}, {}, {} within 1 ms (switchyard_request_duration_seconds from http://{}/metrics; arrival to answer written)",
                h.count,
                bound_phrase(h, "p50", 0.5),
                bound_phrase(h, "p99", 0.99),
                h.share_within(0.001).map_or_else(|| "-".to_string(), pct),
                sw.admin
            ),
        })
    }

    pub fn to_json(&self) -> String {
        let h = &self.s.latency;
        let s = &self.s;
        // No answers, no latency: null rather than a 0 that reads as fast.
        let mut latency = serde_json::Map::new();
        let some = |v: serde_json::Value| {
            if h.is_empty() {
                serde_json::Value::Null
            } else {
                v
            }
        };
        for (name, p) in PERCENTILES {
            latency.insert(format!("{name}_us"), some(h.value_at_percentile(p).into()));
        }
        latency.insert("mean_us".into(), some(h.mean().into()));
        latency.insert("count".into(), h.len().into());
        latency.insert("basis".into(), self.latency_basis().into());
        let switch_latency = self.switch.as_ref().map(|sw| match &sw.view {
            Ok(h) => serde_json::json!({
                "admin": sw.admin.to_string(),
                "metric": scrape::METRIC,
                "count": h.count,
                "p50_at_most_s": h.quantile_bound(0.5).filter(|v| v.is_finite()),
                "p99_at_most_s": h.quantile_bound(0.99).filter(|v| v.is_finite()),
                "within_1ms_share": h.share_within(0.001),
            }),
            Err(e) => serde_json::json!({ "admin": sw.admin.to_string(), "error": e }),
        });
        let context: serde_json::Map<String, serde_json::Value> = self
            .context
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let answered = self.answered();
        let (mode, rate, in_flight) = match self.mode {
            Mode::Open { rate } => ("open", Some(rate), None),
            Mode::Closed { in_flight } => ("closed", None, Some(in_flight)),
        };
        // Two objects merged: one `json!` of every key exceeds the macro's
        // recursion limit.
        let head = serde_json::json!({
            "target": self.target.to_string(),
            "started_utc": switchyard_protocol::iso8583::datetime::rfc3339(self.started_unix_ms / 1000),
            "started_unix_ms": self.started_unix_ms,
            "switchyard_version": crate::build_info::VERSION,
            "switchyard_commit": crate::build_info::COMMIT,
            "context": context,
            "approved_rate": self.approved_rate(),
            "approved": self.approved(),
            "error_count": self.errors(),
            "error_rate": self.error_rate(),
            "max_error_rate": self.max_error_rate,
            "problems": self.problems(),
            "switch_latency": switch_latency,
            "reopens": s.reopens,
            "resent": s.resent,
            "reconnect_every": self.reconnect_every,
            "tls": self.tls_json(),
        });
        let mut v = serde_json::json!({
            "mode": mode,
            "offered_rate": rate,
            "in_flight_per_connection": in_flight,
            "connections": self.connections,
            "threads": self.workers,
            "duration_s": self.duration.as_secs_f64(),
            "warmup_s": self.warmup.as_secs_f64(),
            "timeout_s": self.timeout.as_secs_f64(),
            "spec": self.spec,
            "framing": self.framing,
            "seed": self.seed,
            "mix": {
                "purchase": self.mix.purchase,
                "auth": self.mix.authorization,
                "reversal": self.mix.reversal,
                "fraud": self.mix.fraud,
            },
            "achieved_rate": self.achieved_rate(),
            "sent": self.sent(),
            "answered": self.answered(),
            "timed_out": self.timed_out(),
            "lost": self.lost(),
            "mismatched": self.mismatched(),
            "bad_echo": s.measured.bad_echo + s.warmup.bad_echo,
            "unmatched": s.unmatched,
            "unparseable": s.unparseable,
            "late_answers": s.late_answers,
            "clean": self.is_clean(),
            "connects": s.connects,
            "reconnects": s.reconnects,
            "connect_failures": s.connect_failures,
            "sign_on_failures": s.sign_on_failures,
            "warmup": {
                "sent": s.warmup.sent,
                "answered": s.warmup.answered,
                "timed_out": s.warmup.timed_out,
                "lost": s.warmup.lost,
            },
            "schedule": {
                "sends": s.scheduled_sends,
                "late_over_1ms": s.late_sends,
                "late_share": self.late_share(),
                "lag_p50_us": s.lag.value_at_percentile(50.0),
                "lag_p99_us": s.lag.value_at_percentile(99.0),
                "lag_max_us": s.lag.max(),
                "table_full": s.table_full,
                "answer_mac_failures": s.answer_mac_failures,
                "behind": self.schedule_warning().is_some(),
            },
            "responses": self.responses().into_iter().map(|(mti, code, n)| serde_json::json!({
                "mti": format!("{mti:04}"), "de39": code, "count": n,
                "share": share(n, answered), "meaning": de39_meaning(&code),
                "error": code.as_bytes().try_into().is_ok_and(is_switch_refusal),
            })).collect::<Vec<_>>(),
            "latency": latency,
            "per_second": self.per_second().into_iter().map(|r| serde_json::json!({
                "second": r.second, "sent": r.sent, "answered": r.answered, "errors": r.errors,
                "timed_out": r.timed_out, "p50_us": r.p50_us, "p99_us": r.p99_us, "max_us": r.max_us,
            })).collect::<Vec<_>>(),
            "money": {
                "currency": "840",
                "approved_authorizations": tally_json(s.money.approved[0]),
                "approved_financial": tally_json(s.money.approved[1]),
                "reversed_authorizations": tally_json(s.money.reversed[0]),
                "reversed_financial": tally_json(s.money.reversed[1]),
                "reversals_unanswered_authorizations": tally_json(s.money.reversals_unanswered[0]),
                "reversals_unanswered_financial": tally_json(s.money.reversals_unanswered[1]),
            },
            "errors": s.errors,
        });
        if let (Some(v), serde_json::Value::Object(head)) = (v.as_object_mut(), head) {
            v.extend(head);
        }
        v.to_string()
    }

    /// The TLS figures; `null` for a plain run.
    fn tls_json(&self) -> serde_json::Value {
        if !self.tls {
            return serde_json::Value::Null;
        }
        let t = &self.s.tls;
        let (failures, reasons) = self.handshake_failures();
        let reasons: serde_json::Map<String, serde_json::Value> = reasons
            .into_iter()
            .map(|(r, n)| (r.to_string(), n.into()))
            .collect();
        let time = |p: f64| (!t.time.is_empty()).then(|| t.time.value_at_percentile(p));
        serde_json::json!({
            "handshakes": t.handshakes,
            "resumed": t.resumed,
            "handshakes_measured": t.measured,
            "handshake_rate": self.handshake_rate(),
            "handshake_failures": failures,
            "failure_reasons": reasons,
            "handshake_p50_us": time(50.0),
            "handshake_p99_us": time(99.0),
            "handshake_max_us": time(100.0),
        })
    }

    /// The percentile distribution in HdrHistogram's text format (as
    /// `outputPercentileDistribution` and wrk2 write it), values in ms.
    pub fn hgrm_text(&self) -> String {
        let h = &self.s.latency;
        let scale = 1000.0;
        let mut out = String::with_capacity(16 * 1024);
        out.push_str("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
        let mut total = 0u64;
        if !h.is_empty() {
            for v in h.iter_quantiles(5) {
                total += v.count_since_last_iteration();
                let q = v.quantile_iterated_to();
                let value = h.highest_equivalent(v.value_iterated_to()) as f64 / scale;
                if q < 1.0 {
                    let _ = writeln!(
                        out,
                        "{value:12.3} {q:1.12} {total:10} {:14.2}",
                        1.0 / (1.0 - q)
                    );
                } else {
                    let _ = writeln!(out, "{value:12.3} {q:1.12} {total:10}");
                }
            }
        }
        let _ = writeln!(
            out,
            "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
            h.mean() / scale,
            h.stdev() / scale
        );
        let _ = writeln!(
            out,
            "#[Max     = {:12.3}, Total count    = {:12}]",
            h.max() as f64 / scale,
            h.len()
        );
        // Sub-buckets: the smallest power of two holding 2 * 10^digits.
        let sub = (2 * 10u64.pow(h.sigfig() as u32)).next_power_of_two();
        let _ = writeln!(
            out,
            "#[Buckets = {:12}, SubBuckets     = {:12}]",
            h.buckets(),
            sub
        );
        out
    }

    pub fn write_hgrm(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.hgrm_text())
    }

    pub fn write_html(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.html())
    }

    /// A page with no outside references: inline SVG charts and tables.
    pub fn html(&self) -> String {
        let mut o = String::with_capacity(64 * 1024);
        o.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>loadtest report</title><style>\
            body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}\
            td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}td.n{text-align:right;font-variant-numeric:tabular-nums}\
            .warn{background:#fee;border:2px solid #c00;padding:.5em;font-weight:bold}svg{background:#fafafa;border:1px solid #ccc}\
            </style></head><body>");
        let _ = write!(
            o,
            "<h1>loadtest report</h1><p>{} over {} connections ({} threads), {:.1} s measured after {:.1} s warmup; spec {}, framing {}, seed {} (<code>--seed {}</code> repeats it)</p><table>",
            esc(&self.mode_line()),
            self.connections,
            self.workers,
            self.duration.as_secs_f64(),
            self.warmup.as_secs_f64(),
            esc(&self.spec),
            esc(&self.framing),
            self.seed,
            self.seed
        );
        for (k, v) in self.context_rows() {
            let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(&k), esc(&v));
        }
        o.push_str("</table>");
        if let Some(w) = self.schedule_warning() {
            let _ = write!(o, "<p class=\"warn\">{}</p>", esc(&w));
        }
        let verdict = self.result_line();
        if self.is_clean() {
            let _ = write!(o, "<p><b>{}</b></p>", esc(&verdict));
        } else {
            let _ = write!(o, "<p class=\"warn\">{}</p>", esc(&verdict));
        }
        o.push_str("<h2>Summary</h2><table>");
        for (k, v) in self.summary_rows() {
            let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
        }
        let _ = write!(
            o,
            "</table><h2>Latency</h2><p>End to end, {}.</p>",
            esc(self.latency_basis())
        );
        let h = &self.s.latency;
        if h.is_empty() {
            o.push_str("<p>No answers: no latency to show.</p>");
        } else {
            o.push_str("<table><tr>");
            for (name, _) in PERCENTILES {
                let _ = write!(o, "<th>{name}</th>");
            }
            o.push_str("<th>mean</th></tr><tr>");
            for (_, p) in PERCENTILES {
                let _ = write!(
                    o,
                    "<td class=\"n\">{}</td>",
                    esc(&fmt_us(h.value_at_percentile(p)))
                );
            }
            let _ = write!(
                o,
                "<td class=\"n\">{}</td></tr></table>",
                esc(&fmt_us(h.mean() as u64))
            );
        }
        if let Some(line) = self.switch_line() {
            let _ = write!(o, "<p>In the switch: {}</p>", esc(&line));
        }
        o.push_str("<h2>Responses</h2><table><tr><th>MTI</th><th>DE39</th><th>meaning</th><th>count</th><th>share</th></tr>");
        let answered = self.answered();
        for (mti, code, n) in self.responses() {
            let _ = write!(
                o,
                "<tr><td>{mti:04}</td><td>{}</td><td>{}</td><td class=\"n\">{n}</td><td class=\"n\">{}</td></tr>",
                esc(&code),
                esc(de39_meaning(&code)),
                pct_short(share(n, answered))
            );
        }
        o.push_str("</table>");
        let rows = self.per_second();
        let _ = write!(
            o,
            "<h2>Throughput over time ({})</h2>",
            esc(self.second_basis())
        );
        let per_s = |f: fn(&SecondRow) -> u64| -> Vec<(f64, f64)> {
            rows.iter()
                .map(|r| (r.second as f64, f(r) as f64))
                .collect()
        };
        let throughput: Vec<Series> = vec![
            ("sent", "#1f77b4", per_s(|r| r.sent)),
            ("answered", "#2ca02c", per_s(|r| r.answered)),
            ("errors", "#d62728", per_s(|r| r.errors)),
            ("timed out", "#9467bd", per_s(|r| r.timed_out)),
        ];
        svg_chart(
            &mut o,
            &throughput,
            &Axes {
                x_title: "second of the measured period",
                y_title: "requests per second",
                percentile_x: false,
                log_y: false,
            },
        );
        let _ = write!(
            o,
            "<h2>Latency over time ({})</h2>",
            esc(self.second_basis())
        );
        let lat = |f: fn(&SecondRow) -> Option<u64>| -> Vec<(f64, f64)> {
            rows.iter()
                .filter_map(|r| f(r).map(|v| (r.second as f64, v as f64)))
                .collect()
        };
        let series: Vec<Series> = vec![
            ("p50", "#1f77b4", lat(|r| r.p50_us)),
            ("p99", "#ff7f0e", lat(|r| r.p99_us)),
            ("max", "#d62728", lat(|r| r.max_us)),
        ];
        svg_chart(
            &mut o,
            &series,
            &Axes {
                x_title: "second of the measured period",
                y_title: "latency (log scale)",
                percentile_x: false,
                log_y: true,
            },
        );
        o.push_str("<h2>Percentile distribution</h2>");
        let mut dist = Vec::new();
        if !h.is_empty() {
            for v in h.iter_quantiles(5) {
                let q = v.quantile_iterated_to();
                if q >= 1.0 {
                    break;
                }
                dist.push((
                    1.0 / (1.0 - q),
                    h.highest_equivalent(v.value_iterated_to()) as f64,
                ));
            }
        }
        svg_chart(
            &mut o,
            &[("latency", "#1f77b4", dist)],
            &Axes {
                x_title: "percentile",
                y_title: "latency (log scale)",
                percentile_x: true,
                log_y: true,
            },
        );
        let _ = write!(
            o,
            "<h2>Per second ({})</h2><table><tr>",
            esc(self.second_basis())
        );
        for c in SECOND_COLUMNS {
            let _ = write!(o, "<th>{c}</th>");
        }
        o.push_str("</tr>");
        for r in rows {
            o.push_str("<tr>");
            for c in r.cells() {
                let _ = write!(o, "<td class=\"n\">{}</td>", esc(&c));
            }
            o.push_str("</tr>");
        }
        o.push_str("</table></body></html>\n");
        o
    }
}

/// A named, coloured line of (x, y) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// How a chart's axes read.
struct Axes<'a> {
    x_title: &'a str,
    y_title: &'a str,
    /// x is 1/(1-p) on a log scale, labelled as percentiles.
    percentile_x: bool,
    /// y is latency in µs on a log scale spanning the data's decades;
    /// otherwise a count from 0 on a linear scale.
    log_y: bool,
}

/// The y range and grid of a chart, scaled to the data.
fn y_grid(lo: f64, hi: f64, log: bool) -> (f64, f64, Vec<f64>) {
    if log {
        let lo = 10f64.powf(lo.max(1.0).log10().floor());
        let mut hi = 10f64.powf(hi.max(1.0).log10().ceil());
        if hi <= lo {
            hi = lo * 10.0;
        }
        let decades = (hi / lo).log10().round() as i32;
        let mut grid = Vec::new();
        let mut d = lo;
        while d <= hi * 1.0001 {
            grid.push(d);
            // Few decades: 2x and 5x lines too, so values can be read.
            if decades <= 2 && d < hi {
                grid.push(d * 2.0);
                grid.push(d * 5.0);
            }
            d *= 10.0;
        }
        (lo, hi, grid)
    } else {
        // A 1-2-5 step giving at most ~8 lines from 0.
        let hi = hi.max(1.0);
        let raw = hi / 8.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag)
            .max(1.0);
        let top = (hi / step).ceil() * step;
        let grid = (0..=((top / step) as usize))
            .map(|i| i as f64 * step)
            .collect();
        (0.0, top, grid)
    }
}

/// A line chart in inline SVG with axis titles and a legend.
fn svg_chart(o: &mut String, series: &[Series], axes: &Axes) {
    const W: f64 = 800.0;
    const H: f64 = 340.0;
    const L: f64 = 90.0;
    const B: f64 = 44.0;
    const T: f64 = 34.0;
    let (mut x0, mut x1, mut ylo, mut yhi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in series.iter().flat_map(|s| s.2.iter()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        ylo = ylo.min(y);
        yhi = yhi.max(y);
    }
    if x0 > x1 {
        o.push_str("<p>(no data)</p>");
        return;
    }
    let (y0, y1, grid) = y_grid(ylo, yhi, axes.log_y);
    let fx = |x: f64| -> f64 {
        if axes.percentile_x {
            let b = x1.max(10.0).log10();
            L + x.max(1.0).log10() / b * (W - L - 10.0)
        } else {
            let span = (x1 - x0).max(1.0);
            L + (x - x0) / span * (W - L - 10.0)
        }
    };
    let fy = |y: f64| -> f64 {
        let f = if axes.log_y {
            (y.max(y0).log10() - y0.log10()) / (y1.log10() - y0.log10())
        } else {
            (y - y0) / (y1 - y0)
        };
        H - B - f * (H - B - T)
    };
    let _ = write!(
        o,
        "<svg width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\">"
    );
    for d in grid {
        let y = fy(d);
        let label = if axes.log_y {
            fmt_axis_us(d)
        } else {
            format!("{d}")
        };
        let _ = write!(
            o,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - 10.0,
            L - 4.0,
            y + 4.0,
            esc(&label)
        );
    }
    if axes.percentile_x {
        for (label, inv) in [
            ("0%", 1.0),
            ("90%", 10.0),
            ("99%", 100.0),
            ("99.9%", 1e3),
            ("99.99%", 1e4),
            ("99.999%", 1e5),
        ] {
            if inv > x1.max(10.0) {
                break;
            }
            let x = fx(inv);
            let _ = write!(
                o,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{T}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
                H - B,
                H - B + 14.0
            );
        }
    } else {
        let step = ((x1 - x0) / 10.0).ceil().max(1.0);
        let mut x = x0;
        while x <= x1 {
            let _ = write!(
                o,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{x}</text>",
                fx(x),
                H - B + 14.0
            );
            x += step;
        }
    }
    let _ = write!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate(14,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        (W + L) / 2.0,
        H - 8.0,
        esc(axes.x_title),
        (H - B + T) / 2.0,
        esc(axes.y_title)
    );
    for (i, (name, color, data)) in series.iter().enumerate() {
        o.push_str("<polyline fill=\"none\" stroke-width=\"1.5\" stroke=\"");
        o.push_str(color);
        o.push_str("\" points=\"");
        for &(x, y) in data {
            let _ = write!(o, "{:.1},{:.1} ", fx(x), fy(y));
        }
        o.push_str("\"/>");
        // A line needs two points: short series get dots too (a 1 s run).
        if data.len() < 3 {
            for &(x, y) in data {
                let _ = write!(
                    o,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                    fx(x),
                    fy(y)
                );
            }
        }
        // Legend: a line sample in the series' colour, then its name.
        let lx = L + 10.0 + i as f64 * 110.0;
        let _ = write!(
            o,
            "<line x1=\"{lx}\" x2=\"{}\" y1=\"14\" y2=\"14\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{}\" y=\"18\">{}</text>",
            lx + 24.0,
            lx + 30.0,
            esc(name)
        );
    }
    o.push_str("</svg>");
}

/// `part` as a share (0..1) of `whole`; 0 of nothing.
fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A share (0..1) as a percentage with enough digits for small rates.
fn pct(v: f64) -> String {
    let p = v * 100.0;
    if p == 0.0 || p >= 1.0 {
        format!("{p:.2}%")
    } else {
        format!("{p:.3}%")
    }
}

/// A share (0..1) as a percentage for table columns.
fn pct_short(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// A grid value in µs, as short as it can be: "10 µs", "2 ms", "1 s".
fn fmt_axis_us(us: f64) -> String {
    let (v, unit) = if us < 1e3 {
        (us, "µs")
    } else if us < 1e6 {
        (us / 1e3, "ms")
    } else {
        (us / 1e6, "s")
    };
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v} {unit}")
    }
}

/// "p99 at most 500 µs" from a bucketed histogram, or "p99 over 30 s"
/// when it lies past the last finite bucket.
fn bound_phrase(h: &scrape::Histogram, name: &str, q: f64) -> String {
    let us = |s: f64| fmt_us((s * 1e6).round() as u64);
    match h.quantile_bound(q) {
        None => format!("{name} -"),
        Some(b) if b.is_finite() => format!("{name} at most {}", us(b)),
        Some(_) => match h.buckets.last() {
            Some((last, _)) => format!("{name} over {}", us(*last)),
            None => format!("{name} unknown (no buckets)"),
        },
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// µs, ms or s with 3 significant-ish digits.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_axes_span_the_data() {
        let (lo, hi, grid) = y_grid(150.0, 20_000.0, true);
        assert_eq!((lo, hi), (100.0, 100_000.0));
        assert_eq!(grid.first(), Some(&100.0));
        assert_eq!(fmt_axis_us(10_000.0), "10 ms");
        // Within one decade: 2x and 5x lines so values can be read.
        let (_, _, grid) = y_grid(120.0, 800.0, true);
        assert!(grid.contains(&200.0) && grid.contains(&500.0), "{grid:?}");
        let (lo, hi, grid) = y_grid(0.0, 12_345.0, false);
        assert_eq!((lo, hi), (0.0, 14_000.0));
        assert!(grid.len() <= 9, "{grid:?}");
    }

    #[test]
    fn refusals_are_the_switchs_own_codes() {
        for c in [*b"30", *b"91", *b"92", *b"94", *b"96", *b"12", NO_CODE] {
            assert!(is_switch_refusal(c), "{c:?}");
        }
        for c in [*b"00", *b"05", *b"51", *b"59", *b"14"] {
            assert!(!is_switch_refusal(c), "{c:?}");
        }
        assert_eq!(de39_meaning("59"), "suspected fraud (fraud decline)");
        assert!(de39_meaning("51").contains("insufficient funds"));
    }
}
