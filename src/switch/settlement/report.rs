//! `switchyard settle report`: one business date's totals from the store,
//! per currency, to the cent (integer minor units throughout), by
//! acquirer, merchant, terminal, card scheme and transaction type; and,
//! apart, authorizations, reversals, stand-in approvals, declines and the
//! store-and-forward work still pending. What each row counts as is
//! decided once, in [`super::day`].
//!
//! Output as a text table, CSV (one line per figure), JSON, or a
//! self-contained HTML page (inline CSS, no scripts), like the load
//! report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::day::{Class, Day, Entry, Status};
use super::money;
use crate::switch::store::SafState;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Html,
}

/// A count and an amount in one currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    pub key: String,
    /// ISO 4217 numeric.
    pub currency: u16,
    /// `USD` (or the digits of a currency the table lacks).
    pub currency_code: String,
    pub count: u64,
    /// Signed minor units: what the line adds to the net total.
    pub amount_minor: i128,
}

/// The settled total of one currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Total {
    pub currency: u16,
    pub currency_code: String,
    /// Settled transactions: approved financial ones not reversed.
    pub count: u64,
    /// Purchases, cash, cashback (to the cards' debit).
    pub debit_count: u64,
    pub debit_minor: i128,
    /// Refunds and voids (to the cards' credit), as a positive amount.
    pub credit_count: u64,
    pub credit_minor: i128,
    /// Debits minus credits.
    pub net_minor: i128,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub business_date: String,
    /// Rows of the date in the store.
    pub rows: u64,
    pub totals: Vec<Total>,
    pub by_acquirer: Vec<Line>,
    pub by_merchant: Vec<Line>,
    pub by_terminal: Vec<Line>,
    pub by_scheme: Vec<Line>,
    pub by_transaction_type: Vec<Line>,
    /// Approved authorizations (0100/0120) that stand: funds held, not
    /// settled.
    pub authorizations: Vec<Line>,
    /// Reversals, by who sent them and how far they got (amounts
    /// positive: what they took out of the totals).
    pub reversals: Vec<Line>,
    /// Stand-in approvals (part of the totals), by acquirer and the state
    /// of their advice.
    pub stand_in: Vec<Line>,
    /// Declined and timed-out requests, by response code.
    pub declined: Vec<Line>,
    /// Reversals and advices not yet acknowledged by the host.
    pub pending_saf: Vec<Line>,
    /// Rows without a request or an answer yet (in flight at the last
    /// export, or records lost before it).
    pub incomplete: u64,
}

/// Sums per (key, currency).
#[derive(Default)]
struct Sums(BTreeMap<(String, u16), (u64, i128)>);

impl Sums {
    fn add(&mut self, key: impl Into<String>, currency: u16, amount: i128) {
        let v = self.0.entry((key.into(), currency)).or_default();
        v.0 += 1;
        v.1 += amount;
    }

    fn lines(self) -> Vec<Line> {
        self.0
            .into_iter()
            .map(|((key, currency), (count, amount_minor))| Line {
                key,
                currency,
                currency_code: money::code(currency),
                count,
                amount_minor,
            })
            .collect()
    }
}

fn saf_state(s: Option<SafState>) -> &'static str {
    s.map_or("none", SafState::as_str)
}

/// The sums a report is made of, filled row by row.
#[derive(Default)]
struct Tally {
    totals: BTreeMap<u16, Total>,
    acquirer: Sums,
    merchant: Sums,
    terminal: Sums,
    scheme: Sums,
    txn_type: Sums,
    authorizations: Sums,
    reversals: Sums,
    stand_in: Sums,
    declined: Sums,
    pending: Sums,
    incomplete: u64,
}

impl Tally {
    fn settled(&mut self, e: &Entry) {
        let amount = i128::from(e.amount);
        let signed = e.signed_amount();
        let t = self.totals.entry(e.currency).or_insert_with(|| Total {
            currency: e.currency,
            currency_code: money::code(e.currency),
            count: 0,
            debit_count: 0,
            debit_minor: 0,
            credit_count: 0,
            credit_minor: 0,
            net_minor: 0,
        });
        t.count += 1;
        match e.txn_type.sign() {
            1 => {
                t.debit_count += 1;
                t.debit_minor += amount;
            }
            -1 => {
                t.credit_count += 1;
                t.credit_minor += amount;
            }
            _ => {}
        }
        t.net_minor += signed;
        self.acquirer.add(e.acquirer.clone(), e.currency, signed);
        self.merchant.add(e.merchant.clone(), e.currency, signed);
        self.terminal.add(e.terminal.clone(), e.currency, signed);
        self.scheme.add(e.scheme.name(), e.currency, signed);
        self.txn_type.add(e.txn_type.name(), e.currency, signed);
        if e.stand_in {
            let key = format!("{}, advice {}", e.acquirer, saf_state(e.advice.state));
            self.stand_in.add(key, e.currency, signed);
        }
    }

    fn entry(&mut self, day: &Day, e: &Entry) {
        let amount = i128::from(e.amount);
        if e.reversal.state == Some(SafState::Queued) {
            let key = format!("reversal to {}", e.acquirer);
            self.pending.add(key, e.currency, amount);
        }
        if e.advice.state == Some(SafState::Queued) {
            let key = format!("advice to {}", e.acquirer);
            self.pending.add(key, e.currency, amount);
        }
        let reversal = saf_state(e.reversal.state);
        match e.status {
            Status::Settled => self.settled(e),
            Status::Authorized => self
                .authorizations
                .add(e.acquirer.clone(), e.currency, amount),
            // Counted with the reversal that undid it.
            Status::ReversedByTerminal(_) => {}
            Status::ReversedBySwitch => {
                let what = match e.reversal.detail.as_deref() {
                    Some("68") => "an approval the terminal never got (68)".to_owned(),
                    other => format!("an approval ({})", other.unwrap_or("??")),
                };
                let key = format!("by the switch: {what}, {reversal}");
                self.reversals.add(key, e.currency, amount);
            }
            Status::TimedOut => {
                self.declined.add("91 (timed out)", e.currency, amount);
                if e.reversal.state.is_some() {
                    let key = format!("by the switch: a request that timed out, {reversal}");
                    self.reversals.add(key, e.currency, amount);
                }
            }
            Status::Declined => {
                let code = e.response_code.clone().unwrap_or_else(|| "??".into());
                self.declined.add(code, e.currency, amount);
            }
            Status::Reversal(original) => {
                let of = match original.map(|o| day.entries[o].class) {
                    Some(Class::Financial) => "of a financial transaction",
                    Some(_) => "of an authorization",
                    None => "whose original is not in this day (not netted)",
                };
                let how = if e.outcome.as_deref() == Some("timeout") {
                    format!("timed out, carried on by the switch's 0420 ({reversal})")
                } else {
                    "approved".to_owned()
                };
                let key = format!("by a terminal ({:04}) {of}, {how}", e.mti);
                self.reversals.add(key, e.currency, amount);
            }
            Status::ReversalRefused => {
                let code = e.response_code.as_deref().unwrap_or("??");
                let key = format!("by a terminal ({:04}), not in effect ({code})", e.mti);
                self.reversals.add(key, e.currency, amount);
            }
            Status::Incomplete => self.incomplete += 1,
            // The terminal's own accounting, checked when it was answered.
            Status::TerminalBatch => {}
        }
    }
}

impl Report {
    pub fn of(day: &Day) -> Report {
        let mut t = Tally::default();
        for e in &day.entries {
            t.entry(day, e);
        }
        Report {
            business_date: day.date.clone(),
            rows: day.entries.len() as u64,
            totals: t.totals.into_values().collect(),
            by_acquirer: t.acquirer.lines(),
            by_merchant: t.merchant.lines(),
            by_terminal: t.terminal.lines(),
            by_scheme: t.scheme.lines(),
            by_transaction_type: t.txn_type.lines(),
            authorizations: t.authorizations.lines(),
            reversals: t.reversals.lines(),
            stand_in: t.stand_in.lines(),
            declined: t.declined.lines(),
            pending_saf: t.pending.lines(),
            incomplete: t.incomplete,
        }
    }

    /// The grouped sections, in the order every format shows them:
    /// (CSV section name, title, what the amounts are, lines).
    fn sections(&self) -> Vec<(&'static str, &'static str, &'static str, &[Line])> {
        vec![
            ("acquirer", "By acquirer", NET, &self.by_acquirer),
            ("merchant", "By merchant (DE42)", NET, &self.by_merchant),
            ("terminal", "By terminal (DE41)", NET, &self.by_terminal),
            ("scheme", "By card scheme (BIN)", NET, &self.by_scheme),
            (
                "transaction_type",
                "By transaction type (DE3)",
                NET,
                &self.by_transaction_type,
            ),
            (
                "authorization",
                "Authorizations approved (funds held, not settled)",
                APART,
                &self.authorizations,
            ),
            (
                "reversal",
                "Reversals",
                "amounts taken out of the totals, or never in them",
                &self.reversals,
            ),
            (
                "stand_in",
                "Stand-in approvals",
                "net, part of the totals",
                &self.stand_in,
            ),
            (
                "declined",
                "Declined and timed out (by DE39)",
                APART,
                &self.declined,
            ),
            (
                "pending_saf",
                "Store-and-forward still pending",
                "the transactions' amounts",
                &self.pending_saf,
            ),
        ]
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.table(),
            Format::Csv => self.csv(),
            Format::Json => serde_json::to_string_pretty(self).unwrap_or_default() + "\n",
            Format::Html => self.html(),
        }
    }

    fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "Settlement report, business date {} ({} rows in the store)",
            self.business_date, self.rows
        );
        o.push_str("\nSettled totals (approved financial transactions, reversals netted out)\n");
        let _ = writeln!(
            o,
            "  {:<8} {:>8} {:>18} {:>8} {:>18} {:>18}",
            "currency", "debits", "amount", "credits", "amount", "net"
        );
        if self.totals.is_empty() {
            o.push_str("  (none)\n");
        }
        for t in &self.totals {
            let _ = writeln!(
                o,
                "  {:<8} {:>8} {:>18} {:>8} {:>18} {:>18}",
                t.currency_code,
                t.debit_count,
                money::format(t.debit_minor, t.currency),
                t.credit_count,
                money::format(t.credit_minor, t.currency),
                money::format(t.net_minor, t.currency),
            );
        }
        for (_, title, what, lines) in self.sections() {
            let _ = writeln!(o, "\n{title} ({what})");
            let width = lines.iter().map(|l| l.key.len()).max().unwrap_or(0).max(4);
            if lines.is_empty() {
                o.push_str("  (none)\n");
            }
            for l in lines {
                let _ = writeln!(
                    o,
                    "  {:<width$} {:<3} {:>8} {:>18}",
                    l.key,
                    l.currency_code,
                    l.count,
                    money::format(l.amount_minor, l.currency),
                );
            }
        }
        if self.incomplete > 0 {
            let _ = writeln!(
                o,
                "\n{} row(s) without a request or an answer yet (in flight at the last export, \
                 or journal records lost before it): not counted",
                self.incomplete
            );
        }
        o
    }

    /// One line per figure: `section,key,currency,count,amount_minor`.
    fn csv(&self) -> String {
        let mut o = String::from("business_date,section,key,currency,count,amount_minor\n");
        let d = &self.business_date;
        for t in &self.totals {
            let c = &t.currency_code;
            let _ = writeln!(o, "{d},total,settled,{c},{},{}", t.count, t.net_minor);
            let _ = writeln!(
                o,
                "{d},total,debits,{c},{},{}",
                t.debit_count, t.debit_minor
            );
            let _ = writeln!(
                o,
                "{d},total,credits,{c},{},{}",
                t.credit_count, t.credit_minor
            );
        }
        for (section, _, _, lines) in self.sections() {
            for l in lines {
                let _ = writeln!(
                    o,
                    "{d},{section},{},{},{},{}",
                    csv_field(&l.key),
                    l.currency_code,
                    l.count,
                    l.amount_minor
                );
            }
        }
        if self.incomplete > 0 {
            let _ = writeln!(o, "{d},incomplete,rows,,{},0", self.incomplete);
        }
        o
    }

    fn html(&self) -> String {
        let mut o = String::new();
        let _ = write!(
            o,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>settlement report {d}</title><style>\
             body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin-bottom:1em}}\
             td,th{{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}}td.n,th.n{{text-align:right;font-variant-numeric:tabular-nums}}\
             .neg{{color:#a00}}.note{{color:#555}}\
             </style></head><body><h1>Settlement report</h1><p>Business date <b>{d}</b>, {rows} rows in the store. \
             Amounts in each currency's major units, computed in integer minor units.</p>",
            d = esc(&self.business_date),
            rows = self.rows,
        );
        o.push_str(
            "<h2>Settled totals</h2><p class=\"note\">Approved financial transactions, \
             reversals netted out; refunds and voids are credits.</p><table><tr><th>currency</th>\
             <th class=\"n\">debits</th><th class=\"n\">amount</th><th class=\"n\">credits</th>\
             <th class=\"n\">amount</th><th class=\"n\">net</th></tr>",
        );
        for t in &self.totals {
            let _ = write!(
                o,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\"><b>{}</b></td></tr>",
                esc(&t.currency_code),
                t.debit_count,
                money::format(t.debit_minor, t.currency),
                t.credit_count,
                money::format(t.credit_minor, t.currency),
                money::format(t.net_minor, t.currency),
            );
        }
        o.push_str("</table>");
        for (_, title, what, lines) in self.sections() {
            let _ = write!(
                o,
                "<h2>{}</h2><p class=\"note\">{}</p><table><tr><th></th><th>currency</th>\
                 <th class=\"n\">count</th><th class=\"n\">amount</th></tr>",
                esc(title),
                esc(what)
            );
            for l in lines {
                let class = if l.amount_minor < 0 { "n neg" } else { "n" };
                let _ = write!(
                    o,
                    "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"{class}\">{}</td></tr>",
                    esc(&l.key),
                    esc(&l.currency_code),
                    l.count,
                    money::format(l.amount_minor, l.currency),
                );
            }
            if lines.is_empty() {
                o.push_str("<tr><td colspan=\"4\" class=\"note\">none</td></tr>");
            }
            o.push_str("</table>");
        }
        if self.incomplete > 0 {
            let _ = write!(
                o,
                "<p class=\"note\">{} row(s) without a request or an answer yet: not counted.</p>",
                self.incomplete
            );
        }
        o.push_str("</body></html>\n");
        o
    }
}

const NET: &str = "net, as in the totals";
const APART: &str = "amounts not in the totals";

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Text for HTML: `&`, `<`, `>`, `"` and `'` escaped.
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::settlement::day::TxnType;
    use crate::switch::settlement::day::tests::entry;
    use crate::switch::settlement::scheme::Scheme;

    fn day() -> Day {
        let mut refund = entry(3, 200, "R3", Some("00"));
        refund.txn_type = TxnType::Refund;
        refund.amount = 250;
        refund.terminal = "T2".into();
        let mut euro = entry(4, 200, "R4", Some("00"));
        euro.currency = 978;
        euro.scheme = Scheme::Mastercard;
        let mut stand_in = entry(5, 200, "R5", Some("00"));
        stand_in.stand_in = true;
        stand_in.advice.state = Some(SafState::Queued);
        let mut timeout = entry(6, 200, "R6", None);
        timeout.reversal.state = Some(SafState::Acked);
        timeout.reversal.detail = Some("91".into());
        Day::classify(
            "2026-12-01",
            vec![
                entry(1, 200, "R1", Some("00")),
                entry(2, 200, "R2", Some("00")),
                refund,
                euro,
                stand_in,
                timeout,
                entry(7, 400, "R2", Some("00")),
                entry(8, 100, "R8", Some("00")),
                entry(9, 200, "R9", Some("51")),
            ],
        )
    }

    #[test]
    fn totals_net_by_type_and_currency_with_reversals_out() {
        let r = Report::of(&day());
        let usd = &r.totals[0];
        assert_eq!((usd.currency, usd.currency_code.as_str()), (840, "USD"));
        // R1 + R5 (stand-in) purchases, R3 a refund; R2 reversed.
        assert_eq!((usd.count, usd.debit_count, usd.credit_count), (3, 2, 1));
        assert_eq!(
            (usd.debit_minor, usd.credit_minor, usd.net_minor),
            (2000, 250, 1750)
        );
        let eur = &r.totals[1];
        assert_eq!((eur.currency_code.as_str(), eur.net_minor), ("EUR", 1000));
        let keys = |lines: &[Line]| -> Vec<(String, String, u64, i128)> {
            lines
                .iter()
                .map(|l| {
                    (
                        l.key.clone(),
                        l.currency_code.clone(),
                        l.count,
                        l.amount_minor,
                    )
                })
                .collect()
        };
        assert_eq!(
            keys(&r.by_terminal),
            [
                ("T1".into(), "USD".into(), 2, 2000),
                ("T1".into(), "EUR".into(), 1, 1000),
                ("T2".into(), "USD".into(), 1, -250),
            ]
        );
        assert_eq!(
            keys(&r.by_scheme),
            [
                ("Mastercard".into(), "EUR".into(), 1, 1000),
                ("Visa".into(), "USD".into(), 3, 1750),
            ]
        );
        assert_eq!(
            keys(&r.authorizations),
            [("acq".into(), "USD".into(), 1, 1000)]
        );
        assert_eq!(
            keys(&r.stand_in),
            [("acq, advice queued".into(), "USD".into(), 1, 1000)]
        );
        assert_eq!(
            keys(&r.pending_saf),
            [("advice to acq".into(), "USD".into(), 1, 1000)]
        );
        assert_eq!(
            keys(&r.declined),
            [
                ("51".into(), "USD".into(), 1, 1000),
                ("91 (timed out)".into(), "USD".into(), 1, 1000),
            ]
        );
        let reversals = keys(&r.reversals);
        assert_eq!(reversals.len(), 2, "{reversals:?}");
        assert!(
            reversals
                .iter()
                .any(|(k, ..)| k.contains("by a terminal (0400) of a financial"))
        );
        assert!(
            reversals
                .iter()
                .any(|(k, ..)| k.contains("timed out, acked"))
        );
    }

    #[test]
    fn every_format_renders_the_same_figures() {
        let r = Report::of(&day());
        let table = r.render(Format::Table);
        assert!(table.contains("17.50"), "{table}");
        assert!(table.contains("-2.50"), "{table}");
        let csv = r.render(Format::Csv);
        assert!(csv.starts_with("business_date,section,key,currency,count,amount_minor\n"));
        assert!(
            csv.contains("2026-12-01,total,settled,USD,3,1750\n"),
            "{csv}"
        );
        assert!(csv.contains("2026-12-01,terminal,T2,USD,1,-250\n"), "{csv}");
        // Every line has the header's six fields (keys with commas quoted).
        assert!(csv.contains("\"acq, advice queued\""), "{csv}");
        let json: serde_json::Value = serde_json::from_str(&r.render(Format::Json)).expect("JSON");
        assert_eq!(json["totals"][0]["net_minor"], 1750);
        assert_eq!(json["business_date"], "2026-12-01");
        let html = r.render(Format::Html);
        assert!(html.starts_with("<!doctype html>") && html.contains("<style>"));
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="));
        assert!(html.contains("17.50"));
        assert_eq!(
            esc("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}
