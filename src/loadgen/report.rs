//! The figures of a run and their outputs: a human table, JSON, the
//! HdrHistogram percentile text (`.hgrm`) and a self-contained HTML page.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::stats::{OTHER_CODE, WorkerStats};
use super::{LoadConfig, Mix, Mode};

/// Share of scheduled sends later than 1 ms above which the run is said
/// to have fallen behind.
const LATE_SHARE_WARN: f64 = 0.01;

/// Everything a run measured. Figures are for the measured period (after
/// the warmup) unless a name says otherwise.
pub struct Report {
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
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// The per-second table's columns, in the order of `SecondRow::cells`.
const SECOND_COLUMNS: [&str; 7] = ["s", "sent", "answered", "timed out", "p50", "p99", "max"];

impl SecondRow {
    /// The row as the per-second table shows it (text and HTML alike).
    fn cells(&self) -> [String; 7] {
        [
            self.second.to_string(),
            self.sent.to_string(),
            self.answered.to_string(),
            self.timed_out.to_string(),
            fmt_us(self.p50_us),
            fmt_us(self.p99_us),
            fmt_us(self.max_us),
        ]
    }
}

/// One line of the text per-second table: the second, then six columns.
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
    pub(super) fn new(config: &LoadConfig, s: WorkerStats, workers: usize) -> Report {
        Report {
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
            s,
        }
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
    /// Answered per second over the measured period.
    pub fn achieved_rate(&self) -> f64 {
        self.answered() as f64 / self.duration.as_secs_f64().max(1e-9)
    }
    /// No lost requests and no mismatched answers, warmup included;
    /// timeouts are counted separately.
    pub fn is_clean(&self) -> bool {
        self.lost() == 0 && self.s.warmup.lost == 0 && self.mismatched() == 0
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
    /// The per-second series of the measured period.
    pub fn per_second(&self) -> Vec<SecondRow> {
        self.s
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| SecondRow {
                second: i,
                sent: s.sent,
                answered: s.answered,
                timed_out: s.timed_out,
                p50_us: s.latency.value_at_percentile(50.0),
                p99_us: s.latency.value_at_percentile(99.0),
                max_us: s.latency.max(),
            })
            .collect()
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
                format!("{:.1}/s answered", self.achieved_rate()),
            ),
            ("sent", self.sent().to_string()),
            ("answered", self.answered().to_string()),
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
                    "{} opened, {} reconnects, {} connect failures, {} sign-on failures",
                    s.connects, s.reconnects, s.connect_failures, s.sign_on_failures
                ),
            ),
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
        writeln!(
            out,
            "  spec {}, framing {}, seed {}, timeout {:.1} s, mix purchase={} auth={} reversal={} fraud={}",
            self.spec,
            self.framing,
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
        writeln!(out, "\n  responses        MTI   DE39       count   share")?;
        let answered = self.answered().max(1) as f64;
        for (mti, code, n) in self.responses() {
            writeln!(
                out,
                "                   {mti:04}  {code:<5} {n:>10}  {:5.1}%",
                n as f64 * 100.0 / answered
            )?;
        }
        let h = &self.s.latency;
        write!(out, "\n  latency        ")?;
        for (name, _) in PERCENTILES {
            write!(out, " {name:>9}")?;
        }
        write!(out, "      mean\n                 ")?;
        for (_, p) in PERCENTILES {
            write!(out, " {:>9}", fmt_us(h.value_at_percentile(p)))?;
        }
        writeln!(out, " {:>9}", fmt_us(h.mean() as u64))?;
        let rows = self.per_second();
        if !rows.is_empty() {
            writeln!(out, "\n  per second (by intended send time)")?;
            write_second_line(out, &SECOND_COLUMNS)?;
            for r in rows {
                write_second_line(out, &r.cells())?;
            }
        }
        writeln!(
            out,
            "\n  result: {}",
            if self.is_clean() {
                "clean (every request answered, timed out or lost as counted; nothing lost or mismatched)"
            } else {
                "NOT CLEAN: requests lost or answers mismatched"
            }
        )
    }

    pub fn to_json(&self) -> String {
        let h = &self.s.latency;
        let s = &self.s;
        let mut latency = serde_json::Map::new();
        for (name, p) in PERCENTILES {
            latency.insert(format!("{name}_us"), h.value_at_percentile(p).into());
        }
        latency.insert("mean_us".into(), h.mean().into());
        latency.insert("count".into(), h.len().into());
        let (mode, rate, in_flight) = match self.mode {
            Mode::Open { rate } => ("open", Some(rate), None),
            Mode::Closed { in_flight } => ("closed", None, Some(in_flight)),
        };
        let v = serde_json::json!({
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
                "behind": self.schedule_warning().is_some(),
            },
            "responses": self.responses().into_iter().map(|(mti, code, n)| serde_json::json!({
                "mti": format!("{mti:04}"), "de39": code, "count": n
            })).collect::<Vec<_>>(),
            "latency": latency,
            "per_second": self.per_second().into_iter().map(|r| serde_json::json!({
                "second": r.second, "sent": r.sent, "answered": r.answered,
                "timed_out": r.timed_out, "p50_us": r.p50_us, "p99_us": r.p99_us, "max_us": r.max_us,
            })).collect::<Vec<_>>(),
            "errors": s.errors,
        });
        v.to_string()
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
            "<h1>loadtest report</h1><p>{} over {} connections, {:.1} s measured after {:.1} s warmup; spec {}, framing {}, seed {}</p>",
            esc(&self.mode_line()),
            self.connections,
            self.duration.as_secs_f64(),
            self.warmup.as_secs_f64(),
            esc(&self.spec),
            esc(&self.framing),
            self.seed
        );
        if let Some(w) = self.schedule_warning() {
            let _ = write!(o, "<p class=\"warn\">{}</p>", esc(&w));
        }
        let _ = write!(
            o,
            "<p><b>{}</b></p><h2>Summary</h2><table>",
            if self.is_clean() {
                "Clean run"
            } else {
                "NOT CLEAN: requests lost or answers mismatched"
            }
        );
        for (k, v) in self.summary_rows() {
            let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
        }
        o.push_str("</table><h2>Latency</h2><table><tr>");
        for (name, _) in PERCENTILES {
            let _ = write!(o, "<th>{name}</th>");
        }
        o.push_str("<th>mean</th></tr><tr>");
        let h = &self.s.latency;
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
        o.push_str("<h2>Responses</h2><table><tr><th>MTI</th><th>DE39</th><th>count</th></tr>");
        for (mti, code, n) in self.responses() {
            let _ = write!(
                o,
                "<tr><td>{mti:04}</td><td>{}</td><td class=\"n\">{n}</td></tr>",
                esc(&code)
            );
        }
        o.push_str("</table><h2>Latency over time (by intended send time)</h2>");
        let rows = self.per_second();
        let series: Vec<Series> = vec![
            (
                "p50",
                "#1f77b4",
                rows.iter()
                    .map(|r| (r.second as f64, r.p50_us as f64))
                    .collect(),
            ),
            (
                "p99",
                "#ff7f0e",
                rows.iter()
                    .map(|r| (r.second as f64, r.p99_us as f64))
                    .collect(),
            ),
            (
                "max",
                "#d62728",
                rows.iter()
                    .map(|r| (r.second as f64, r.max_us as f64))
                    .collect(),
            ),
        ];
        svg_chart(&mut o, &series, "second", false);
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
        svg_chart(&mut o, &[("latency", "#1f77b4", dist)], "percentile", true);
        o.push_str("<h2>Per second</h2><table><tr>");
        for c in SECOND_COLUMNS {
            let _ = write!(o, "<th>{c}</th>");
        }
        o.push_str("</tr>");
        for r in rows {
            o.push_str("<tr>");
            for c in r.cells() {
                let _ = write!(o, "<td class=\"n\">{c}</td>");
            }
            o.push_str("</tr>");
        }
        o.push_str("</table></body></html>\n");
        o
    }
}

/// A named, coloured line of (x, y) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart in inline SVG; y is latency in µs on a log scale. With
/// `percentile_x`, x is 1/(1-p) on a log scale labelled as percentiles.
fn svg_chart(o: &mut String, series: &[Series], x_label: &str, percentile_x: bool) {
    const W: f64 = 800.0;
    const H: f64 = 320.0;
    const L: f64 = 70.0;
    const B: f64 = 40.0;
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 1.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        o.push_str("<p>(no data)</p>");
        return;
    }
    let fx = |x: f64| -> f64 {
        if percentile_x {
            let (a, b) = (1f64.log10(), x1.max(10.0).log10());
            L + (x.max(1.0).log10() - a) / (b - a) * (W - L - 10.0)
        } else {
            let span = (x1 - x0).max(1.0);
            L + (x - x0) / span * (W - L - 10.0)
        }
    };
    let ymax = 10f64.powf(y1.log10().ceil().max(1.0));
    let fy = |y: f64| -> f64 { H - B - (y.max(1.0).log10() / ymax.log10()) * (H - B - 10.0) };
    let _ = write!(
        o,
        "<svg width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\">"
    );
    // Decade grid lines for latency.
    let mut d = 1.0;
    while d <= ymax {
        let y = fy(d);
        let _ = write!(
            o,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - 10.0,
            L - 4.0,
            y + 4.0,
            esc(&fmt_us(d as u64))
        );
        d *= 10.0;
    }
    if percentile_x {
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
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"10\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
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
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        W / 2.0,
        H - 6.0,
        esc(x_label)
    );
    for (i, (name, color, data)) in series.iter().enumerate() {
        o.push_str("<polyline fill=\"none\" stroke-width=\"1.5\" stroke=\"");
        o.push_str(color);
        o.push_str("\" points=\"");
        for &(x, y) in data {
            let _ = write!(o, "{:.1},{:.1} ", fx(x), fy(y));
        }
        o.push_str("\"/>");
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>",
            L + 10.0 + i as f64 * 70.0,
            22.0,
            esc(name)
        );
    }
    o.push_str("</svg>");
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
