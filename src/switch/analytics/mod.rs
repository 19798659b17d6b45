//! Analytics, off the hot path: the terminal core hands one fixed-size
//! [`Event`] per answered request to the `analytics` OS thread through a
//! bounded lock-free queue ([`Sink`]: a `crossbeam_queue::ArrayQueue`; a
//! full queue drops the event and counts it in
//! `switchyard_analytics_dropped_total`, the request never waits).
//!
//! The thread (this file) drains the queue every 10 ms into
//! * the rollups ([`rollup`]): per second and per minute, an hour of each;
//! * the recent transactions, the terminals and the high-risk events
//!   ([`recent`]);
//! * the anomaly detector ([`detector`]), fed once per `window_s`.
//!
//! Once a second it builds the dashboard's frame (one JSON text, scrubbed
//! of card numbers, shared by every `/api/stream` client) and publishes it;
//! the admin endpoint's other questions (`/api/alerts`, `/api/terminals`,
//! `/api/transactions`) reach it over a bounded channel and are answered
//! between drains. Its state is its own: nothing here is shared with the
//! hot path but the queue.

pub mod config;
pub mod detector;
pub mod recent;
pub mod rollup;
pub mod tap;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use serde_json::{Value, json};
use tracing::{info, warn};

pub use config::AnalyticsConfig;
pub(crate) use config::AnalyticsFile;
use detector::{Change, Detector, Measure, Scope, SeriesKey};
use recent::{Recent, Search, Terminals};
use rollup::{Ring, Scheme, Window, approved, is_decision};
pub use tap::{Event, Tap};

use crate::switch::router::PrefixMap;
use crate::switch::server::Shared;

use crate::telemetry::{
    ALERTS_OPEN, ALERTS_RAISED, ANALYTICS_DROPPED as DROPPED, ANALYTICS_EVENTS as EVENTS,
};

/// How often the thread drains the queue when no question comes.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// Questions from the admin endpoint waiting at most; more are refused.
const QUERIES: usize = 32;
/// Frames the stream channel holds; a client further behind is dropped.
pub const FRAMES_BUFFERED: usize = 4;
/// What the charts show: the last five minutes, by second.
const CHART_SECONDS: u64 = 300;
/// What the tops, the fraud figures and the schemes cover.
const TOP_MINUTES: u64 = 15;
/// High-risk events kept (reviews and fraud declines) and shown.
const HIGH_RISK_KEPT: usize = 200;
const HIGH_RISK_SHOWN: usize = 20;
const HIGH_RISK_MINUTES: u64 = 15;
/// Response codes listed at most (a host inventing codes is cut there).
const FEW_SHOWN: usize = 20;
/// Codes whose rates the detector follows.
const WATCHED: [[u8; 2]; 4] = [*b"05", *b"14", *b"91", *b"96"];
/// Acquirers tallied per detector window at most.
const MAX_ACQUIRERS: usize = 256;

/// The hot path's end of the queue, in `Shared`.
pub struct Sink {
    queue: Option<Arc<ArrayQueue<Event>>>,
    dropped: AtomicU64,
    dropped_counter: metrics::Counter,
}

impl Sink {
    pub fn new(config: &AnalyticsConfig) -> Sink {
        Sink {
            queue: config
                .enabled
                .then(|| Arc::new(ArrayQueue::new(config.queue_capacity.max(1)))),
            dropped: AtomicU64::new(0),
            dropped_counter: metrics::counter!(DROPPED),
        }
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Hands `e` to the analytics thread; when its queue is full, drops
    /// it and counts it. Never waits, never allocates.
    #[inline]
    pub fn push(&self, e: Event) {
        if let Some(q) = &self.queue
            && q.push(e).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_counter.increment(1);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn queue(&self) -> Option<Arc<ArrayQueue<Event>>> {
        self.queue.clone()
    }

    /// The consumer's end, for `benches/analytics.rs` (the switch's is the
    /// analytics thread); an empty queue when analytics is off.
    #[doc(hidden)]
    pub fn queue_for_bench(&self) -> Arc<ArrayQueue<Event>> {
        self.queue().unwrap_or_else(|| Arc::new(ArrayQueue::new(1)))
    }
}

/// What the admin endpoint asks the thread.
pub enum Query {
    Alerts,
    Terminals { limit: usize },
    Transactions(Search),
}

type Reply = tokio::sync::oneshot::Sender<Value>;

/// The admin endpoint's end: the latest frame, the stream of frames, and
/// the questions channel.
pub struct Handle {
    latest: ArcSwap<String>,
    frames: tokio::sync::broadcast::Sender<Arc<str>>,
    queries: std::sync::mpsc::SyncSender<(Query, Reply)>,
    /// Streams served at once (`/api/stream`).
    pub streams: Arc<tokio::sync::Semaphore>,
}

/// Concurrent `/api/stream` clients at most.
pub const MAX_STREAMS: usize = 16;

impl Handle {
    /// The latest frame (`{}` before the first second has passed).
    pub fn latest(&self) -> Arc<String> {
        self.latest.load_full()
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.frames.subscribe()
    }

    /// Asks the thread; `None` when it is busy (its queue of questions is
    /// full) or gone, or has not answered within `timeout`.
    pub async fn ask(&self, q: Query, timeout: Duration) -> Option<Value> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queries.try_send((q, tx)).ok()?;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }
}

/// The running thread, for the switch to stop.
pub struct Runner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runner {
    /// Stops the thread after one last drain and waits for it (blocking).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Runner {
    /// A switch dropped without `shutdown` (a test) stops its thread too,
    /// without waiting for it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Starts the thread over `shared`'s queue; `None` when analytics is off.
/// `store_exported` is the store exporter's position, for its lag.
pub fn spawn(
    config: &crate::switch::config::Config,
    shared: Arc<Shared>,
    store_exported: Option<tokio::sync::watch::Receiver<u64>>,
) -> std::io::Result<Option<(Arc<Handle>, Runner)>> {
    let Some(queue) = shared.analytics.queue() else {
        return Ok(None);
    };
    let (frames, _) = tokio::sync::broadcast::channel(FRAMES_BUFFERED);
    let (qtx, qrx) = std::sync::mpsc::sync_channel(QUERIES);
    let handle = Arc::new(Handle {
        latest: ArcSwap::from_pointee("{}".to_owned()),
        frames: frames.clone(),
        queries: qtx,
        streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
    });
    let mut bin_countries = PrefixMap::new();
    for (prefix, country) in &config.fraud.bin_countries {
        let _ = bin_countries.insert(prefix, *country);
    }
    let terminal_countries = config
        .terminals
        .terminal_countries
        .iter()
        .map(|(t, c)| (pad8(t.as_bytes()), *c))
        .collect();
    let state = State::new(&config.analytics, bin_countries, terminal_countries);
    let stop = Arc::new(AtomicBool::new(false));
    let worker = Worker {
        state,
        queue,
        queries: qrx,
        handle: handle.clone(),
        shared,
        store_exported,
        stop: stop.clone(),
        events: metrics::counter!(EVENTS),
    };
    let thread = std::thread::Builder::new()
        .name("analytics".into())
        .spawn(move || worker.run())?;
    Ok(Some((
        handle,
        Runner {
            stop,
            thread: Some(thread),
        },
    )))
}

fn pad8(b: &[u8]) -> [u8; 8] {
    let mut t = [b' '; 8];
    let n = b.len().min(8);
    t[..n].copy_from_slice(&b[..n]);
    t
}

/// Tallies of one detector window.
#[derive(Clone, Copy, Default)]
struct Tally {
    requests: u64,
    decisions: u64,
    approved: u64,
    watched: [u64; 4],
    /// Forwards with a round trip, and its sum (µs).
    forwards: u64,
    rtt_sum_us: u64,
}

impl Tally {
    fn add(&mut self, e: &Event) {
        self.requests += 1;
        if e.rtt_us > 0 {
            self.forwards += 1;
            self.rtt_sum_us += u64::from(e.rtt_us);
        }
        if is_decision(e.mti) {
            self.decisions += 1;
            self.approved += u64::from(approved(e.code));
            if let Some(i) = WATCHED.iter().position(|c| *c == e.code) {
                self.watched[i] += 1;
            }
        }
    }
}

/// Everything the thread keeps.
pub struct State {
    config: AnalyticsConfig,
    seconds: Ring,
    minutes: Ring,
    recent: Recent,
    terminals: Terminals,
    high_risk: VecDeque<Event>,
    detector: Detector,
    window_end_ms: u64,
    switch_tally: Tally,
    acquirer_tally: HashMap<u16, Tally, rollup::Hasher>,
    terminal_tally: HashMap<[u8; 8], Tally, rollup::Hasher>,
    bin_countries: PrefixMap<u16>,
    terminal_countries: HashMap<[u8; 8], u16, rollup::Hasher>,
    pub events: u64,
}

impl State {
    pub fn new(
        config: &AnalyticsConfig,
        bin_countries: PrefixMap<u16>,
        terminal_countries: HashMap<[u8; 8], u16>,
    ) -> State {
        // Series: the switch's, seven per acquirer, five per terminal.
        let max_series = 16 + 7 * MAX_ACQUIRERS + 5 * config.max_terminals;
        State {
            // A second's tops are not shown (the charts read its totals,
            // codes and latency): its windows keep no many-key dimension.
            seconds: Ring::new(1, 3600, 0),
            minutes: Ring::new(60, 60, config.top_per_minute),
            recent: Recent::new(config.recent_transactions),
            terminals: Terminals::new(config.max_terminals),
            high_risk: VecDeque::new(),
            detector: Detector::new(config.detector.clone(), max_series),
            window_end_ms: 0,
            switch_tally: Tally::default(),
            acquirer_tally: HashMap::default(),
            terminal_tally: HashMap::default(),
            bin_countries,
            terminal_countries: terminal_countries.into_iter().collect(),
            events: 0,
            config: config.clone(),
        }
    }

    /// DE19, else the terminal's configured country, else the BIN's.
    fn country(&self, e: &Event) -> u16 {
        if e.country != 0 {
            return e.country;
        }
        if let Some(c) = self.terminal_countries.get(&e.terminal) {
            return *c;
        }
        if e.has_pan()
            && let Some(c) = self.bin_countries.longest(&e.bin)
        {
            return *c;
        }
        0
    }

    pub fn add(&mut self, e: &Event) {
        self.events += 1;
        let country = self.country(e);
        self.seconds.add(e, country);
        self.minutes.add(e, country);
        self.recent.add(e);
        self.terminals.add(e);
        if e.decision == 1 || e.decision == 2 {
            if self.high_risk.len() >= HIGH_RISK_KEPT {
                self.high_risk.pop_front();
            }
            self.high_risk.push_back(*e);
        }
        self.switch_tally.add(e);
        if e.acquirer != tap::NO_ACQUIRER
            && (self.acquirer_tally.len() < MAX_ACQUIRERS
                || self.acquirer_tally.contains_key(&e.acquirer))
        {
            self.acquirer_tally.entry(e.acquirer).or_default().add(e);
        }
        if e.terminal != [b' '; 8]
            && (self.terminal_tally.len() < self.config.max_terminals
                || self.terminal_tally.contains_key(&e.terminal))
        {
            self.terminal_tally.entry(e.terminal).or_default().add(e);
        }
    }

    /// The detector's window ends when `now_ms` passes it: every series
    /// is fed, and the changes come back.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Change> {
        let window = self.config.detector.window.as_millis() as u64;
        if self.window_end_ms == 0 {
            self.window_end_ms = now_ms + window;
            return Vec::new();
        }
        if now_ms < self.window_end_ms {
            return Vec::new();
        }
        self.window_end_ms = now_ms + window;
        let mut out = Vec::new();
        let d = &mut self.detector;
        let rates = |d: &mut Detector, scope: Scope, t: &Tally, out: &mut Vec<Change>| {
            let key = |measure| SeriesKey { scope, measure };
            d.rate(
                now_ms,
                key(Measure::ApprovalRate),
                t.approved,
                t.decisions,
                out,
            );
            for (i, c) in WATCHED.iter().enumerate() {
                d.rate(
                    now_ms,
                    key(Measure::CodeRate(*c)),
                    t.watched[i],
                    t.decisions,
                    out,
                );
            }
        };
        let round_trip = |d: &mut Detector, scope: Scope, t: &Tally, out: &mut Vec<Change>| {
            let mean = t.rtt_sum_us as f64 / t.forwards.max(1) as f64;
            let key = SeriesKey {
                scope,
                measure: Measure::RoundTrip,
            };
            d.level(now_ms, key, mean, t.forwards, out);
        };
        let t = std::mem::take(&mut self.switch_tally);
        let key = SeriesKey {
            scope: Scope::Switch,
            measure: Measure::ApprovalRate,
        };
        d.rate(now_ms, key, t.approved, t.decisions, &mut out);
        for (a, t) in std::mem::take(&mut self.acquirer_tally) {
            rates(d, Scope::Acquirer(a), &t, &mut out);
            round_trip(d, Scope::Acquirer(a), &t, &mut out);
        }
        let terminals = std::mem::take(&mut self.terminal_tally);
        for (id, t) in &terminals {
            let scope = Scope::Terminal(*id);
            for (i, c) in WATCHED.iter().enumerate() {
                let key = SeriesKey {
                    scope,
                    measure: Measure::CodeRate(*c),
                };
                d.rate(now_ms, key, t.watched[i], t.decisions, &mut out);
            }
            let key = SeriesKey {
                scope,
                measure: Measure::Volume,
            };
            d.volume(now_ms, key, t.requests, &mut out);
        }
        d.silent_terminals(now_ms, &|t| terminals.contains_key(t), &mut out);
        out
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    pub fn alert_json(&self, a: &detector::Alert, names: &dyn Fn(u16) -> String) -> Value {
        let (scope, subject) = match a.key.scope {
            Scope::Switch => ("switch", String::new()),
            Scope::Acquirer(i) => ("acquirer", names(i)),
            Scope::Terminal(t) => ("terminal", tap::text(&t)),
        };
        let series = match (&a.key.measure, subject.is_empty()) {
            (m, true) => measure_name(m),
            (m, false) => format!("{scope} {subject}: {}", measure_name(m)),
        };
        json!({
            "kind": a.key.kind(),
            "scope": scope,
            "subject": subject,
            "series": series,
            "value": round(a.value),
            "baseline": round(a.baseline),
            "z": round(a.z),
            "since": crate::clock::rfc3339(a.since_ms / 1000),
            "since_ms": a.since_ms,
            "raised_ms": a.raised_ms,
            "cleared_ms": a.cleared_ms,
            "open": a.cleared_ms.is_none(),
        })
    }

    pub fn alerts_json(&self, names: &dyn Fn(u16) -> String) -> Value {
        json!({
            "open": self.detector.open().into_iter().map(|a| self.alert_json(a, names)).collect::<Vec<_>>(),
            "cleared": self.detector.cleared().map(|a| self.alert_json(a, names)).collect::<Vec<_>>(),
            "series": self.detector.series(),
        })
    }

    pub fn terminals_json(&self, limit: usize) -> Value {
        let list = self.terminals.list();
        let total = list.len();
        let terminals: Vec<Value> = list
            .into_iter()
            .take(limit)
            .map(|(id, t)| {
                json!({
                    "terminal": tap::text(&id),
                    "merchant": tap::text(&t.merchant),
                    "requests": t.requests,
                    "approved": t.approved,
                    "declined": t.requests - t.approved,
                    "approval_rate": (t.decisions > 0).then(|| round(t.decisions_approved as f64 / t.decisions as f64)),
                    "last_code": tap::text(&t.last_code),
                    "first_seen": crate::clock::rfc3339(t.first_seen_ms / 1000),
                    "last_seen": crate::clock::rfc3339(t.last_seen_ms / 1000),
                    "last_seen_ms": t.last_seen_ms,
                })
            })
            .collect();
        json!({ "terminals": terminals, "count": total, "kept_at_most": self.config.max_terminals })
    }

    pub fn transactions_json(&self, s: &Search, names: &dyn Fn(u16) -> String) -> Value {
        let found: Vec<Value> = self
            .recent
            .search(s)
            .iter()
            .map(|e| txn_json(e, names))
            .collect();
        json!({
            "transactions": found,
            "searched": self.recent.len(),
            "kept_at_most": self.config.recent_transactions,
        })
    }

    /// The dashboard's frame at `now_ms`; `live` is what the switch's
    /// handles say now (links, queues), merged in as it is.
    pub fn frame(&self, now_ms: u64, mut live: Value, names: &dyn Fn(u16) -> String) -> Value {
        let now_s = now_ms / 1000;
        // Charts: complete seconds only.
        let from = now_s.saturating_sub(CHART_SECONDS);
        let mut tps = Vec::with_capacity(CHART_SECONDS as usize);
        let mut p50 = Vec::with_capacity(CHART_SECONDS as usize);
        let mut p99 = Vec::with_capacity(CHART_SECONDS as usize);
        let mut approval = Vec::with_capacity(CHART_SECONDS as usize);
        let recent = self.minutes_since(now_s, 5);
        let codes: Vec<[u8; 2]> = recent
            .by_code
            .top(5, |c| c.n)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let mut mix: Vec<Vec<u64>> = vec![Vec::new(); codes.len() + 1];
        for s in from..now_s {
            let w = self.seconds.get(s);
            tps.push(w.map_or(0, |w| w.total.n));
            p50.push(w.and_then(|w| w.latency.quantile(0.5)));
            p99.push(w.and_then(|w| w.latency.quantile(0.99)));
            approval.push(w.and_then(Window::approval_rate).map(round));
            let mut other = w.map_or(0, |w| w.total.n);
            for (i, c) in codes.iter().enumerate() {
                let n = w.and_then(|w| w.by_code.get(c)).map_or(0, |c| c.n);
                other -= n.min(other);
                mix[i].push(n);
            }
            mix[codes.len()].push(other);
        }
        let mut code_mix = serde_json::Map::new();
        for (i, c) in codes.iter().enumerate() {
            code_mix.insert(tap::text(c), json!(mix[i]));
        }
        code_mix.insert("other".into(), json!(mix[codes.len()]));
        let last = self.seconds.get(now_s.saturating_sub(1));
        // The last 60 complete seconds: the figures do not empty at the
        // top of each minute. Round trips by acquirer are kept by the
        // minute only: the current and the last one.
        let minute = self.seconds.merged_between(
            now_s.saturating_sub(60),
            now_s,
            self.config.top_per_minute,
        );
        let two_minutes = self.minutes_since(now_s, 2);
        let top = self.minutes_since(now_s, TOP_MINUTES);
        let declining = |m: Vec<(String, rollup::Counts)>| -> Vec<Value> {
            m.into_iter()
                .map(|(k, c)| json!({"key": k, "requests": c.n, "declined": c.declined(), "amount": c.amount}))
                .collect()
        };
        let top_terms = top
            .by_terminal
            .top(10, |c| c.declined())
            .into_iter()
            .map(|(k, c)| (tap::text(&k), c))
            .collect();
        let top_merch = top
            .by_merchant
            .top(10, |c| c.declined())
            .into_iter()
            .map(|(k, c)| (tap::text(&k), c))
            .collect();
        let top_bins = top
            .by_bin
            .top(10, |c| c.declined())
            .into_iter()
            .map(|(k, c)| (tap::text(&k), c))
            .collect();
        let schemes: Vec<Value> = Scheme::ALL
            .iter()
            .zip(top.by_scheme.iter())
            .filter(|(_, c)| c.n > 0)
            .map(|(s, c)| json!({"scheme": s.name(), "requests": c.n, "approved": c.approved, "amount": c.amount}))
            .collect();
        let decision_codes: Vec<Value> = top
            .by_decision_code
            .top(FEW_SHOWN, |c| c.n)
            .into_iter()
            .map(|(k, c)| json!({"code": tap::text(&k), "requests": c.n, "amount": c.amount}))
            .collect();
        let countries: Vec<Value> = top
            .by_country
            .top(12, |c| c.n)
            .into_iter()
            .map(|(k, c)| json!({"country": format!("{k:03}"), "requests": c.n, "approved": c.approved, "amount": c.amount}))
            .collect();
        let f = &top.fraud;
        let reasons: Vec<Value> = {
            let mut r: Vec<(usize, u64)> = f
                .reasons
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, n)| *n > 0)
                .collect();
            r.sort_by_key(|x| std::cmp::Reverse(x.1));
            r.into_iter()
                .filter_map(|(i, n)| {
                    crate::switch::fraud::RuleId::ALL
                        .get(i)
                        .map(|rule| json!({"rule": rule.name(), "count": n}))
                })
                .collect()
        };
        let since_ms = now_ms.saturating_sub(HIGH_RISK_MINUTES * 60_000);
        let high_risk: Vec<Value> = self
            .high_risk
            .iter()
            .rev()
            .take_while(|e| e.unix_ms >= since_ms)
            .take(HIGH_RISK_SHOWN)
            .map(|e| txn_json(e, names))
            .collect();
        let rtt_by_acquirer: HashMap<u16, (Option<u64>, Option<u64>)> = two_minutes
            .rtt_by_acquirer
            .iter()
            .map(|(a, h)| (*a, (h.quantile(0.5), h.quantile(0.99))))
            .collect();
        if let Some(links) = live.get_mut("links").and_then(Value::as_array_mut) {
            for (i, a) in links.iter_mut().enumerate() {
                let (p50, p99) = rtt_by_acquirer
                    .get(&(i as u16))
                    .copied()
                    .unwrap_or((None, None));
                if let Some(o) = a.as_object_mut() {
                    o.insert("rtt_p50_us".into(), json!(p50));
                    o.insert("rtt_p99_us".into(), json!(p99));
                    let c = minute
                        .by_acquirer
                        .get(&(i as u16))
                        .copied()
                        .unwrap_or_default();
                    o.insert("requests_minute".into(), json!(c.n));
                }
            }
        }
        let mut frame = json!({
            "t": now_ms,
            "now": {
                "tps": last.map_or(0, |w| w.total.n),
                "p50_us": minute.latency.quantile(0.5),
                "p99_us": minute.latency.quantile(0.99),
                "rtt_p50_us": minute.rtt.quantile(0.5),
                "rtt_p99_us": minute.rtt.quantile(0.99),
                "approval_rate": minute.approval_rate().map(round),
                "requests_minute": minute.total.n,
                "stand_in_minute": minute.stand_in,
            },
            "series": {
                "start_s": from,
                "tps": tps,
                "p50_us": p50,
                "p99_us": p99,
                "approval": approval,
                "codes": code_mix,
            },
            "fraud": {
                "minutes": TOP_MINUTES,
                "allowed": f.allowed,
                "reviewed": f.reviewed,
                "declined": f.declined,
                "reasons": reasons,
            },
            "top_declining": {
                "minutes": TOP_MINUTES,
                "terminals": declining(top_terms),
                "merchants": declining(top_merch),
                "bins": declining(top_bins),
            },
            "schemes": schemes,
            "countries": countries,
            "decision_codes": decision_codes,
            "high_risk": high_risk,
            "alerts": self.detector.open().into_iter().map(|a| self.alert_json(a, names)).collect::<Vec<_>>(),
            "analytics": { "events": self.events, "terminals": self.terminals.len(), "recent": self.recent.len() },
        });
        if let (Some(f), Value::Object(l)) = (frame.as_object_mut(), live) {
            for (k, v) in l {
                f.insert(k, v);
            }
        }
        frame
    }

    /// The minute windows of the last `minutes` (the current one included).
    fn minutes_since(&self, now_s: u64, minutes: u64) -> Window {
        let from = (now_s - now_s % 60).saturating_sub((minutes - 1) * 60);
        self.minutes.merged_since(from, self.config.top_per_minute)
    }
}

fn measure_name(m: &Measure) -> String {
    match m {
        Measure::ApprovalRate => "approval rate".into(),
        Measure::CodeRate(c) => format!("rate of {}", tap::text(c)),
        Measure::Volume => "volume".into(),
        Measure::RoundTrip => "round trip (µs)".into(),
    }
}

fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn txn_json(e: &Event, names: &dyn Fn(u16) -> String) -> Value {
    let decision = match e.decision {
        0 => Some("allow"),
        1 => Some("review"),
        2 => Some("decline"),
        _ => None,
    };
    let reasons: Vec<&str> = crate::switch::fraud::Reasons::from_bits(e.reasons)
        .iter()
        .map(|r| r.name())
        .collect();
    json!({
        "at": crate::clock::rfc3339(e.unix_ms / 1000),
        "at_ms": e.unix_ms,
        "mti": format!("{:04}", e.mti),
        "code": tap::text(&e.code),
        "stan": format!("{:06}", e.stan),
        "rrn": tap::text(&e.rrn),
        "terminal": tap::text(&e.terminal),
        "merchant": tap::text(&e.merchant),
        "pan": e.masked_pan(),
        "scheme": Scheme::of(&e.bin, e.has_pan()).name(),
        "amount": e.amount,
        "currency": (e.currency != 0).then(|| format!("{:03}", e.currency)),
        "mcc": (e.mcc != u16::MAX).then(|| format!("{:04}", e.mcc)),
        "acquirer": (e.acquirer != tap::NO_ACQUIRER).then(|| names(e.acquirer)),
        "latency_us": e.latency_us,
        "rtt_us": (e.rtt_us > 0).then_some(e.rtt_us),
        "points": e.points,
        "decision": decision,
        "reasons": reasons,
        "stand_in": e.stand_in,
    })
}

struct Worker {
    state: State,
    queue: Arc<ArrayQueue<Event>>,
    queries: std::sync::mpsc::Receiver<(Query, Reply)>,
    handle: Arc<Handle>,
    shared: Arc<Shared>,
    store_exported: Option<tokio::sync::watch::Receiver<u64>>,
    stop: Arc<AtomicBool>,
    events: metrics::Counter,
}

impl Worker {
    fn run(mut self) {
        let mut next_frame_s = 0u64;
        loop {
            match self.queries.recv_timeout(DRAIN_EVERY) {
                Ok((q, reply)) => {
                    // The question sees every event pushed before it.
                    self.drain();
                    let _ = reply.send(self.answer(q));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(DRAIN_EVERY)
                }
            }
            // Links and names of the generation in force (a reload may
            // have added acquirers).
            if !self.shared.is_current() {
                self.shared = self.shared.current();
            }
            self.drain();
            let now_ms = crate::clock::unix_now_ms();
            if now_ms / 1000 >= next_frame_s {
                next_frame_s = now_ms / 1000 + 1;
                self.second(now_ms);
            }
            if self.stop.load(Ordering::Acquire) {
                self.drain();
                return;
            }
        }
    }

    fn drain(&mut self) {
        let mut n = 0u64;
        while let Some(e) = self.queue.pop() {
            self.state.add(&e);
            n += 1;
        }
        if n > 0 {
            self.events.increment(n);
        }
    }

    fn names(&self) -> impl Fn(u16) -> String + '_ {
        |i| {
            self.shared
                .acquirers
                .get(i as usize)
                .map_or_else(|| format!("#{i}"), |a| a.name.clone())
        }
    }

    fn answer(&self, q: Query) -> Value {
        let names = self.names();
        match q {
            Query::Alerts => self.state.alerts_json(&names),
            Query::Terminals { limit } => self.state.terminals_json(limit),
            Query::Transactions(s) => self.state.transactions_json(&s, &names),
        }
    }

    /// Once a second: the detector's window, then the frame.
    fn second(&mut self, now_ms: u64) {
        let changes = self.state.tick(now_ms);
        if !changes.is_empty() {
            let names = self.names();
            for c in &changes {
                match c {
                    Change::Raised(a) => {
                        let j = self.state.alert_json(a, &names);
                        metrics::counter!(ALERTS_RAISED, "kind" => a.key.kind()).increment(1);
                        warn!(series = %j["series"].as_str().unwrap_or_default(), value = a.value,
                            baseline = a.baseline, z = a.z, since = %j["since"].as_str().unwrap_or_default(),
                            "alert raised");
                    }
                    Change::Cleared(a) => {
                        let j = self.state.alert_json(a, &names);
                        info!(series = %j["series"].as_str().unwrap_or_default(), value = a.value,
                            baseline = a.baseline, "alert cleared");
                    }
                }
            }
        }
        metrics::gauge!(ALERTS_OPEN).set(self.state.detector().open().len() as f64);
        let live = self.live();
        let names = self.names();
        let frame = self.state.frame(now_ms, live, &names);
        let text = crate::switch::admin::scrub_json(&frame.to_string());
        self.handle.latest.store(Arc::new(text.clone()));
        // No receiver is not an error: nobody is watching.
        let _ = self.handle.frames.send(Arc::from(text));
    }

    /// What the switch's handles say now: links, queues, lags.
    fn live(&self) -> Value {
        let s = &self.shared;
        let links: Vec<Value> = s
            .acquirers
            .iter()
            .map(|a| {
                json!({
                    "acquirer": a.name,
                    "up": a.any_up(),
                    "saf_depth": a.saf.depth(),
                    "links": a.links.iter().map(|l| json!({
                        "name": l.shared.name,
                        "addr": l.shared.addr.to_string(),
                        "up": l.is_up(),
                        "in_flight": l.shared.in_flight(),
                        "last_echo_ms": l.shared.last_echo_ms(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let j = s.journal.stats();
        let store = self.store_exported.as_ref().map(|w| {
            let exported = *w.borrow();
            json!({ "exported": exported, "lag_records": j.durable.saturating_sub(exported) })
        });
        json!({
            "links": links,
            "saf_depth": s.acquirers.iter().map(|a| a.saf.depth()).sum::<usize>(),
            "in_flight": s.in_flight.load(Ordering::Relaxed),
            "connections": s.connections.load(Ordering::Relaxed),
            "journal": {
                "appended": j.appended,
                "durable": j.durable,
                "queue_depth": j.queue_depth,
                "lag_records": j.appended.saturating_sub(j.written),
            },
            "store": store,
            "dropped": s.analytics.dropped(),
            "stopping": s.stopping.is_cancelled(),
        })
    }
}

#[cfg(test)]
mod tests;
