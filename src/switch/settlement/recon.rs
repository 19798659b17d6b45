//! `switchyard recon`: one acquirer's settlement file (CSV) against what
//! the store says the switch settled with it on a business date.
//!
//! The switch's side is the date's financial transactions routed to the
//! acquirer that stand settled ([`super::day`]: approved, not reversed).
//! Each line of the file is matched
//!
//! 1. by RRN + approval code + amount (and currency): matched;
//! 2. else by RRN + approval code alone: an amount mismatch;
//! 3. else by DE41 + DE11 + date (DE7's MMDD): matched when the amount
//!    (and currency) agree, else an amount mismatch;
//!
//! each switch transaction at most once. What is left of the file is a
//! transaction the host approved that the switch timed out (91) or
//! reversed, when the switch has one of that RRN (or DE41 + DE11 + date)
//! so; else missing at the switch. What is left of the switch's is
//! missing at the acquirer. Every one of those four is an exception.
//!
//! Columns are found by name in the file's header line, as
//! `[acquirers.recon]` maps them (the defaults are the names
//! `switchyard sim --settlement-file` writes); a mapped name the header
//! lacks is an error naming it, and so is a line that does not read
//! (naming its line and column).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use super::day::{Class, Day, Entry, Status};
use super::money::{self, AmountUnit};
use super::report::{csv_field, esc};
use crate::switch::config::{Section, table};

/// Output formats of `switchyard recon`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The summary and the exceptions.
    Table,
    /// Every line, matched ones too.
    Csv,
    /// Every line, exceptions marked; self-contained.
    Html,
}

/// `[acquirers.recon]`: how to read the acquirer's settlement file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconConfig {
    pub rrn: String,
    pub approval_code: String,
    pub amount: String,
    pub currency: String,
    pub terminal: String,
    pub stan: String,
    pub date: String,
    pub amount_unit: AmountUnit,
    pub delimiter: u8,
}

impl Default for ReconConfig {
    /// The names `switchyard sim --settlement-file` writes.
    fn default() -> Self {
        let f = ReconFile::default();
        ReconConfig {
            rrn: f.rrn,
            approval_code: f.approval_code,
            amount: f.amount,
            currency: f.currency,
            terminal: f.terminal,
            stan: f.stan,
            date: f.date,
            amount_unit: AmountUnit::Minor,
            delimiter: b',',
        }
    }
}

table! {
    pub(crate) ReconFile {
        /// Column names, as the file's header line has them.
        rrn: String = "rrn".into();
        approval_code: String = "approval_code".into();
        amount: String = "amount".into();
        currency: String = "currency".into();
        terminal: String = "terminal".into();
        stan: String = "stan".into();
        date: String = "date".into();
        /// "minor" (1234 is 12.34 USD) or "major" (12.34).
        amount_unit: String = "minor".into();
        delimiter: String = ",".into();
    }
}

impl ReconFile {
    pub(crate) fn validate(mut self, s: &mut Section) -> ReconConfig {
        self.check_ranges(s);
        for (key, name) in [
            ("rrn", &self.rrn),
            ("approval_code", &self.approval_code),
            ("amount", &self.amount),
            ("currency", &self.currency),
            ("terminal", &self.terminal),
            ("stan", &self.stan),
            ("date", &self.date),
        ] {
            if name.trim().is_empty() {
                s.problem(key, "a column name of the file's header line");
            }
        }
        let amount_unit = match self.amount_unit.as_str() {
            "minor" => AmountUnit::Minor,
            "major" => AmountUnit::Major,
            other => {
                s.problem(
                    "amount_unit",
                    format!("`{other}`: \"minor\" (1234 is 12.34) or \"major\" (12.34)"),
                );
                AmountUnit::Minor
            }
        };
        let delimiter = match self.delimiter.as_bytes() {
            [d] if d.is_ascii_graphic() && *d != b'"' || *d == b'\t' => *d,
            _ => {
                s.problem(
                    "delimiter",
                    "one character (\",\", \";\", \"|\", \"\\t\"), not a quote",
                );
                b','
            }
        };
        ReconConfig {
            rrn: self.rrn,
            approval_code: self.approval_code,
            amount: self.amount,
            currency: self.currency,
            terminal: self.terminal,
            stan: self.stan,
            date: self.date,
            amount_unit,
            delimiter,
        }
    }
}

/// One line of the acquirer's file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcquirerRecord {
    /// Its line number in the file (the header is line 1).
    pub line: usize,
    pub rrn: String,
    pub approval_code: String,
    pub amount: u64,
    pub currency: u16,
    pub terminal: String,
    pub stan: u32,
    /// MMDD.
    pub date: u16,
}

/// Splits CSV text into records (RFC 4180: quoted fields with `""`,
/// CRLF or LF), each with the line it starts on.
fn records(text: &str, delimiter: u8) -> Result<Vec<(usize, Vec<String>)>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let (mut line, mut start) = (1, 1);
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let delimiter = char::from(delimiter);
    let mut fresh = true; // at the start of a field
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if fresh => {
                quoted = true;
                fresh = false;
            }
            '"' => return Err(format!("line {line}: a quote inside an unquoted field")),
            c if c == delimiter => {
                fields.push(std::mem::take(&mut field));
                fresh = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                out.push((start, std::mem::take(&mut fields)));
                line += 1;
                start = line;
                fresh = true;
            }
            c => {
                field.push(c);
                fresh = false;
            }
        }
    }
    if quoted {
        return Err(format!("line {start}: a quoted field is not closed"));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        out.push((start, fields));
    }
    // Blank lines carry nothing.
    out.retain(|(_, f)| !(f.len() == 1 && f[0].trim().is_empty()));
    Ok(out)
}

/// `MMDD`, `YYYYMMDD` or `YYYY-MM-DD`, as MMDD.
fn parse_date(text: &str) -> Option<u16> {
    let t = text.trim();
    let digits: String = match t.len() {
        4 | 8 => t.to_owned(),
        10 if t.as_bytes()[4] == b'-' && t.as_bytes()[7] == b'-' => t.replace('-', ""),
        _ => return None,
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mmdd: u16 = digits[digits.len() - 4..].parse().ok()?;
    let (m, d) = (mmdd / 100, mmdd % 100);
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some(mmdd)
}

/// Reads an acquirer's settlement file; errors name the file, the line
/// and the column.
pub fn read_file(path: &Path, config: &ReconConfig) -> Result<Vec<AcquirerRecord>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    parse_file(&text, config).map_err(|e| format!("{shown}: {e}"))
}

/// [`read_file`] of text already read.
pub fn parse_file(text: &str, config: &ReconConfig) -> Result<Vec<AcquirerRecord>, String> {
    let mut rows = records(text, config.delimiter)?.into_iter();
    let Some((_, header)) = rows.next() else {
        return Err("empty: no header line".into());
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_owned()).collect();
    let column = |key: &str, name: &str| -> Result<usize, String> {
        header.iter().position(|h| h == name).ok_or_else(|| {
            format!(
                "the header line has no column `{name}` (recon.{key}; it has: {})",
                header.join(", ")
            )
        })
    };
    let c = [
        column("rrn", &config.rrn)?,
        column("approval_code", &config.approval_code)?,
        column("amount", &config.amount)?,
        column("currency", &config.currency)?,
        column("terminal", &config.terminal)?,
        column("stan", &config.stan)?,
        column("date", &config.date)?,
    ];
    let names = [
        &config.rrn,
        &config.approval_code,
        &config.amount,
        &config.currency,
        &config.terminal,
        &config.stan,
        &config.date,
    ];
    let mut out = Vec::new();
    for (line, fields) in rows {
        if fields.len() != header.len() {
            return Err(format!(
                "line {line}: {} fields, the header line has {}",
                fields.len(),
                header.len()
            ));
        }
        let get = |i: usize| fields[c[i]].trim();
        let bad = |i: usize, why: String| format!("line {line}, column `{}`: {why}", names[i]);
        let currency_text = get(3);
        let currency = money::parse_currency(currency_text).ok_or_else(|| {
            bad(
                3,
                format!("`{currency_text}` is not a currency (840 or USD)"),
            )
        })?;
        let amount =
            money::parse_amount(get(2), config.amount_unit, currency).map_err(|e| bad(2, e))?;
        let stan_text = get(5);
        let stan = (!stan_text.is_empty()
            && stan_text.len() <= 6
            && stan_text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stan_text.parse().ok())
        .flatten()
        .ok_or_else(|| bad(5, format!("`{stan_text}` is not a STAN (1 to 6 digits)")))?;
        let date_text = get(6);
        let date = parse_date(date_text).ok_or_else(|| {
            bad(
                6,
                format!("`{date_text}` is not a date (MMDD, YYYYMMDD or YYYY-MM-DD)"),
            )
        })?;
        out.push(AcquirerRecord {
            line,
            rrn: get(0).to_owned(),
            approval_code: get(1).to_owned(),
            amount,
            currency,
            terminal: get(4).to_owned(),
            stan,
            date,
        });
    }
    Ok(out)
}

/// What one exception, or a match, is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Matched,
    AmountMismatch,
    MissingAtAcquirer,
    MissingAtSwitch,
    /// The host's file shows it approved; the switch answered 91 (timed
    /// out) or reversed it.
    ApprovedAfterTimeout,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Matched,
        Outcome::AmountMismatch,
        Outcome::MissingAtAcquirer,
        Outcome::MissingAtSwitch,
        Outcome::ApprovedAfterTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Matched => "matched",
            Outcome::AmountMismatch => "amount mismatch",
            Outcome::MissingAtAcquirer => "missing at the acquirer",
            Outcome::MissingAtSwitch => "missing at the switch",
            Outcome::ApprovedAfterTimeout => "approved by the host, timed out or reversed here",
        }
    }
}

/// One line of the result: a switch transaction, a file line, or both.
#[derive(Clone, Debug)]
pub struct Pair {
    pub outcome: Outcome,
    /// Index into the day's entries.
    pub switch: Option<usize>,
    pub acquirer: Option<AcquirerRecord>,
}

/// One matching pass of [`Recon::run`].
#[derive(Clone, Copy)]
struct Pass {
    switch_key: fn(&Entry) -> String,
    file_key: fn(&AcquirerRecord) -> String,
    fits: fn(&Entry, &AcquirerRecord) -> bool,
}

fn by_rrn_fits(e: &Entry, a: &AcquirerRecord) -> bool {
    e.rrn == a.rrn && e.approval_code.as_deref() == Some(a.approval_code.as_str())
}

fn terminal_stan_date(e: &Entry, a: &AcquirerRecord) -> bool {
    e.terminal == a.terminal && e.stan == a.stan && e.transmission_date() == a.date
}

pub struct Recon {
    pub acquirer: String,
    pub date: String,
    pub pairs: Vec<Pair>,
    day: Day,
}

impl Recon {
    /// Matches `file` against the day's settled transactions of
    /// `acquirer`.
    pub fn run(acquirer: &str, day: Day, file: Vec<AcquirerRecord>) -> Recon {
        let of_acquirer = |e: &Entry| e.acquirer == acquirer && e.class == Class::Financial;
        let settled: Vec<usize> = (0..day.entries.len())
            .filter(|&i| of_acquirer(&day.entries[i]) && day.entries[i].status == Status::Settled)
            .collect();
        let mut taken = vec![false; day.entries.len()];
        let mut pairs = Vec::new();
        let mut left: Vec<AcquirerRecord> = file;

        // Each pass indexes the switch's untaken transactions by a key
        // (RRN + approval code, or DE41 + DE11 + date) and takes, for a
        // file line of the same key, the first that fits.
        let by_rrn = Pass {
            switch_key: |e| format!("{}|{}", e.rrn, e.approval_code.as_deref().unwrap_or("")),
            file_key: |a| format!("{}|{}", a.rrn, a.approval_code),
            fits: by_rrn_fits,
        };
        let passes = [
            Pass {
                fits: |e, a| by_rrn_fits(e, a) && e.amount == a.amount && e.currency == a.currency,
                ..by_rrn
            },
            by_rrn,
            Pass {
                switch_key: |e| format!("{}|{}|{}", e.terminal, e.stan, e.transmission_date()),
                file_key: |a| format!("{}|{}|{}", a.terminal, a.stan, a.date),
                fits: terminal_stan_date,
            },
        ];
        for (
            pass,
            Pass {
                switch_key,
                file_key,
                fits,
            },
        ) in passes.into_iter().enumerate()
        {
            let mut index: HashMap<String, Vec<usize>> = HashMap::new();
            for &i in settled.iter().filter(|&&i| !taken[i]) {
                index
                    .entry(switch_key(&day.entries[i]))
                    .or_default()
                    .push(i);
            }
            let mut still = Vec::new();
            for a in left {
                let found = index.get_mut(&file_key(&a)).and_then(|c| {
                    let at = c
                        .iter()
                        .position(|&i| !taken[i] && fits(&day.entries[i], &a))?;
                    Some(c.remove(at))
                });
                match found {
                    Some(i) => {
                        taken[i] = true;
                        let e = &day.entries[i];
                        let same = e.amount == a.amount && e.currency == a.currency;
                        let outcome = if pass == 1 || !same {
                            Outcome::AmountMismatch
                        } else {
                            Outcome::Matched
                        };
                        pairs.push(Pair {
                            outcome,
                            switch: Some(i),
                            acquirer: Some(a),
                        });
                    }
                    None => still.push(a),
                }
            }
            left = still;
        }
        // The host approved what the switch did not settle.
        let unsettled: Vec<usize> = (0..day.entries.len())
            .filter(|&i| {
                let e = &day.entries[i];
                of_acquirer(e)
                    && matches!(
                        e.status,
                        Status::TimedOut | Status::ReversedBySwitch | Status::ReversedByTerminal(_)
                    )
            })
            .collect();
        for a in left {
            let found = unsettled.iter().copied().find(|&i| {
                let e = &day.entries[i];
                !taken[i] && ((!e.rrn.is_empty() && e.rrn == a.rrn) || terminal_stan_date(e, &a))
            });
            let outcome = match found {
                Some(i) => {
                    taken[i] = true;
                    Outcome::ApprovedAfterTimeout
                }
                None => Outcome::MissingAtSwitch,
            };
            pairs.push(Pair {
                outcome,
                switch: found,
                acquirer: Some(a),
            });
        }
        for &i in settled.iter().filter(|&&i| !taken[i]) {
            pairs.push(Pair {
                outcome: Outcome::MissingAtAcquirer,
                switch: Some(i),
                acquirer: None,
            });
        }
        pairs.sort_by_key(|p| {
            (
                p.outcome,
                p.switch.map(|i| day.entries[i].txn),
                p.acquirer.as_ref().map(|a| a.line),
            )
        });
        Recon {
            acquirer: acquirer.to_owned(),
            date: day.date.clone(),
            pairs,
            day,
        }
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.pairs.iter().filter(|p| p.outcome == outcome).count()
    }

    /// Everything that is not a match.
    pub fn exceptions(&self) -> usize {
        self.pairs.len() - self.count(Outcome::Matched)
    }

    /// The columns of one result line, for every format.
    fn cells(&self, p: &Pair) -> [String; 11] {
        let e = p.switch.map(|i| &self.day.entries[i]);
        let a = p.acquirer.as_ref();
        let amount = |v: Option<(u64, u16)>| v.map_or(String::new(), |(m, _)| m.to_string());
        let currency = e
            .map(|e| e.currency)
            .or(a.map(|a| a.currency))
            .map_or(String::new(), money::code);
        [
            p.outcome.name().to_owned(),
            e.map(|e| e.rrn.clone())
                .or(a.map(|a| a.rrn.clone()))
                .unwrap_or_default(),
            e.and_then(|e| e.approval_code.clone())
                .or(a.map(|a| a.approval_code.clone()))
                .unwrap_or_default(),
            e.map(|e| e.terminal.clone())
                .or(a.map(|a| a.terminal.clone()))
                .unwrap_or_default(),
            e.map(|e| e.stan)
                .or(a.map(|a| a.stan))
                .map_or(String::new(), |s| format!("{s:06}")),
            e.map(|e| e.transmission_date())
                .or(a.map(|a| a.date))
                .map_or(String::new(), |d| format!("{d:04}")),
            currency,
            amount(e.map(|e| (e.amount, e.currency))),
            amount(a.map(|a| (a.amount, a.currency))),
            e.map_or(String::new(), |e| format!("{}/{}", e.node, e.txn)),
            a.map_or(String::new(), |a| a.line.to_string()),
        ]
    }

    const HEADER: [&'static str; 11] = [
        "outcome",
        "rrn",
        "approval_code",
        "terminal",
        "stan",
        "date",
        "currency",
        "switch_amount_minor",
        "acquirer_amount_minor",
        "switch_txn",
        "file_line",
    ];

    fn summary(&self) -> String {
        let mut o = format!(
            "Reconciliation of {} for business date {}: ",
            self.acquirer, self.date
        );
        let parts: Vec<String> = Outcome::ALL
            .iter()
            .map(|&k| format!("{} {}", self.count(k), k.name()))
            .collect();
        o.push_str(&parts.join(", "));
        let _ = write!(o, "; {} exception(s)", self.exceptions());
        o
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Csv => {
                let mut o = Self::HEADER.join(",") + "\n";
                for p in &self.pairs {
                    let cells = self.cells(p).map(|c| csv_field(&c));
                    o.push_str(&cells.join(","));
                    o.push('\n');
                }
                o
            }
            Format::Html => self.html(),
            Format::Table => self.table(),
        }
    }

    fn table(&self) -> String {
        let mut o = self.summary() + "\n";
        let rows: Vec<[String; 11]> = self
            .pairs
            .iter()
            .filter(|p| p.outcome != Outcome::Matched)
            .map(|p| self.cells(p))
            .collect();
        if rows.is_empty() {
            o.push_str("No exceptions: every transaction matched.\n");
            return o;
        }
        let mut widths = Self::HEADER.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        o.push('\n');
        let line = |o: &mut String, cells: &[&str]| {
            for (i, c) in cells.iter().enumerate() {
                let _ = write!(o, "{:<w$}  ", c, w = widths[i]);
            }
            o.truncate(o.trim_end().len());
            o.push('\n');
        };
        line(&mut o, &Self::HEADER);
        for r in &rows {
            line(&mut o, &r.iter().map(String::as_str).collect::<Vec<_>>());
        }
        o
    }

    fn html(&self) -> String {
        let mut o = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>reconciliation {a} {d}</title><style>\
             body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}\
             td,th{{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}}\
             .bad{{background:#fee}}.ok{{color:#060}}\
             </style></head><body><h1>Reconciliation</h1><p>{s}</p>",
            a = esc(&self.acquirer),
            d = esc(&self.date),
            s = esc(&self.summary()),
        );
        if self.exceptions() == 0 {
            o.push_str("<p class=\"ok\"><b>No exceptions: every transaction matched.</b></p>");
        }
        o.push_str("<table><tr>");
        for h in Self::HEADER {
            let _ = write!(o, "<th>{}</th>", esc(h));
        }
        o.push_str("</tr>");
        for p in &self.pairs {
            let class = if p.outcome == Outcome::Matched {
                ""
            } else {
                " class=\"bad\""
            };
            let _ = write!(o, "<tr{class}>");
            for c in self.cells(p) {
                let _ = write!(o, "<td>{}</td>", esc(&c));
            }
            o.push_str("</tr>");
        }
        o.push_str("</table></body></html>\n");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::settlement::day::tests::entry;
    use crate::switch::store::SafState;

    fn config() -> ReconConfig {
        ReconConfig::default()
    }

    const HEADER: &str = "rrn,approval_code,amount,currency,terminal,stan,date\n";

    #[test]
    fn csv_reads_quotes_crlf_and_blank_lines() {
        let r = records("a,\"b,\"\"c\"\"\",d\r\n\r\n\"x\ny\",,z\n", b',').expect("reads");
        assert_eq!(
            r,
            vec![
                (1, vec!["a".into(), "b,\"c\"".into(), "d".into()]),
                (3, vec!["x\ny".into(), String::new(), "z".into()]),
            ]
        );
        assert!(records("a\"b\n", b',').is_err());
        assert!(records("\"open\n", b',').is_err());
        let semi = records("a;b\n", b';').expect("reads");
        assert_eq!(semi[0].1, ["a", "b"]);
    }

    #[test]
    fn a_bad_file_is_an_error_naming_line_and_column() {
        let err = |text: &str| parse_file(text, &config()).expect_err("refused");
        let e = err("rrn,approval,amount,currency,terminal,stan,date\n");
        assert!(
            e.contains("no column `approval_code` (recon.approval_code"),
            "{e}"
        );
        let e = err(&format!("{HEADER}R1,A1,12x,840,T1,1,1201\n"));
        assert_eq!(
            e,
            "line 2, column `amount`: `12x` is not an amount in minor units (whole digits)"
        );
        let e = err(&format!(
            "{HEADER}R1,A1,1,840,T1,1,1201\nR2,A2,1,XYZ,T1,2,1201\n"
        ));
        assert!(e.starts_with("line 3, column `currency`: `XYZ`"), "{e}");
        let e = err(&format!("{HEADER}R1,A1,1,840,T1,1234567,1201\n"));
        assert!(e.starts_with("line 2, column `stan`"), "{e}");
        let e = err(&format!("{HEADER}R1,A1,1,840,T1,1,1301\n"));
        assert!(e.starts_with("line 2, column `date`"), "{e}");
        let e = err(&format!("{HEADER}R1,A1,1,840\n"));
        assert_eq!(e, "line 2: 4 fields, the header line has 7");
        assert_eq!(err(""), "empty: no header line");
        // Mapped names, another delimiter, major units, other date forms.
        let mapped = ReconConfig {
            rrn: "RRN".into(),
            amount: "Amount".into(),
            amount_unit: AmountUnit::Major,
            delimiter: b';',
            ..config()
        };
        let got = parse_file(
            "RRN;approval_code;Amount;currency;terminal;stan;date;extra\n\
             R1;A1;12.34;USD;T1;7;2026-12-01;x\nR2;A2;5;978;T2;8;20261202;y\n",
            &mapped,
        )
        .expect("reads");
        assert_eq!(
            (got[0].amount, got[0].currency, got[0].date, got[0].line),
            (1234, 840, 1201, 2)
        );
        assert_eq!((got[1].amount, got[1].date), (500, 1202));
    }

    /// The acquirer's line for entry `e` as it matches.
    fn line_of(e: &Entry, line: usize) -> AcquirerRecord {
        AcquirerRecord {
            line,
            rrn: e.rrn.clone(),
            approval_code: e.approval_code.clone().unwrap_or_default(),
            amount: e.amount,
            currency: e.currency,
            terminal: e.terminal.clone(),
            stan: e.stan,
            date: e.transmission_date(),
        }
    }

    #[test]
    fn each_kind_of_exception_is_found_once() {
        let mut timed_out = entry(6, 200, "R6", None);
        timed_out.reversal.state = Some(SafState::Acked);
        let mut other_acquirer = entry(7, 200, "R7", Some("00"));
        other_acquirer.acquirer = "other".into();
        let entries = vec![
            entry(1, 200, "R1", Some("00")),
            entry(2, 200, "R2", Some("00")),
            entry(3, 200, "R3", Some("00")),
            entry(4, 200, "R4", Some("00")),
            entry(5, 200, "R5", Some("00")),
            timed_out,
            other_acquirer,
            entry(8, 100, "R8", Some("00")),
        ];
        let day = Day::classify("2026-12-01", entries);
        let e = &day.entries;
        let mut file = vec![line_of(&e[0], 2)];
        // R2: the amount differs.
        let mut changed = line_of(&e[1], 3);
        changed.amount += 100;
        file.push(changed);
        // R3: another RRN, found by DE41 + DE11 + date.
        let mut other_rrn = line_of(&e[2], 4);
        other_rrn.rrn = "X3".into();
        file.push(other_rrn);
        // R4 missing from the file; R5 there.
        file.push(line_of(&e[4], 5));
        // The host approved what timed out here.
        let mut late = line_of(&e[5], 6);
        late.approval_code = "H00006".into();
        file.push(late);
        // Nothing of the switch's.
        let mut extra = line_of(&e[0], 7);
        extra.rrn = "R99".into();
        extra.stan = 99;
        file.push(extra);
        let r = Recon::run("acq", day, file);
        let counts: Vec<usize> = Outcome::ALL.iter().map(|&o| r.count(o)).collect();
        assert_eq!(counts, [3, 1, 1, 1, 1], "matched R1 R3 R5, R2, R4, R99, R6");
        assert_eq!(r.exceptions(), 4);
        let csv = r.render(Format::Csv);
        assert!(csv.starts_with("outcome,rrn,"), "{csv}");
        assert!(
            csv.contains("amount mismatch,R2,A00002,T1,000002,1201,USD,1000,1100,node-1/2,3\n"),
            "{csv}"
        );
        assert!(csv.contains("missing at the acquirer,R4,"), "{csv}");
        let table = r.render(Format::Table);
        assert!(table.contains("4 exception(s)"), "{table}");
        let html = r.render(Format::Html);
        assert!(html.contains("class=\"bad\"") && !html.contains("<script"));
    }

    #[test]
    fn the_config_table_maps_columns_and_refuses_what_it_can_not_use() {
        use crate::switch::config::Config;
        let base = "[[acquirers]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n";
        let c = Config::parse(base).expect("valid");
        assert_eq!(c.acquirers[0].recon, ReconConfig::default());
        let c = Config::parse(&format!(
            "{base}[acquirers.recon]\nrrn = \"RRN\"\namount_unit = \"major\"\ndelimiter = \";\"\n"
        ))
        .expect("valid");
        let r = &c.acquirers[0].recon;
        assert_eq!(
            (r.rrn.as_str(), r.amount_unit, r.delimiter),
            ("RRN", AmountUnit::Major, b';')
        );
        assert_eq!(r.stan, "stan");
        let problems = Config::parse(&format!(
            "{base}[acquirers.recon]\nstan = \"\"\ndelimiter = \"\\\"\"\n"
        ))
        .expect_err("refused");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["acquirers[0].recon.stan", "acquirers[0].recon.delimiter"]
        );
        let problems = Config::parse(&format!(
            "{base}[acquirers.recon]\namount_unit = \"cents\"\n"
        ))
        .expect_err("refused");
        assert!(problems[0].message.contains("cents"), "{problems:?}");
    }

    #[test]
    fn the_defaults_read_the_simulators_file() {
        let text = "rrn,approval_code,amount,currency,terminal,stan,date,local_date,\
                    transmission_time,processing_code,mti\n\
                    000100000001,000001,1250,840,LT000123,000001,1125,,1125101010,000000,0200\n";
        let got = parse_file(text, &config()).expect("reads");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].stan, got[0].date, got[0].amount), (1, 1125, 1250));
    }
}
