//! The endpoints: `/metrics`, `/health`, `/ready` and the read-only JSON
//! API (`/api/summary`, `/api/links`, `/api/config`). Every figure is read
//! when asked for, from what the switch keeps anyway (`Shared`, the
//! journal's counters, the metrics registry): the hot path pays nothing
//! for them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{AdminState, json, text};
use crate::switch::server::Shared;

pub(super) async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    match crate::telemetry::prometheus() {
        Some(h) => {
            sample_gauges(&s.shared());
            text(StatusCode::OK, "text/plain; version=0.0.4", h.render())
        }
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "metrics recorder not installed\n".into(),
        ),
    }
}

/// Depths and sizes are read when scraped rather than updated per
/// request: the hot path pays nothing for them.
fn sample_gauges(shared: &Shared) {
    use crate::telemetry as t;
    metrics::gauge!(t::IN_FLIGHT).set(shared.in_flight.load(Ordering::Relaxed) as f64);
    let j = shared.journal.stats();
    metrics::gauge!(t::JOURNAL_QUEUE).set(j.queue_depth as f64);
    metrics::gauge!(t::JOURNAL_FSYNCS).set(j.fsyncs as f64);
    metrics::gauge!(t::JOURNAL_SEGMENTS_PREALLOCATED).set(j.preallocated_segments as f64);
    metrics::gauge!(t::JOURNAL_BYTES).set(j.disk_bytes as f64);
    metrics::gauge!(t::FRAUD_TRACKED_CARDS).set(shared.fraud_state.len() as f64);
    metrics::gauge!(t::RECENT_ANSWERS).set(shared.recent.len() as f64);
    let (y, m, d) = shared.business_day.current().ymd();
    metrics::gauge!(t::BUSINESS_DATE).set(f64::from(y) * 10_000.0 + f64::from(m * 100 + d));
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    connections: usize,
    in_flight: usize,
    acquirers: Vec<AcquirerLinks<'a>>,
}

#[derive(Serialize)]
struct AcquirerLinks<'a> {
    name: &'a str,
    links: Vec<Link<'a>>,
}

#[derive(Serialize)]
struct Link<'a> {
    name: &'a str,
    addr: String,
    up: bool,
    /// `up`, `down` (connecting or reconnecting), or what an operator or
    /// a reload asked: `stopping`, `stopped`, `retiring`, `retired`.
    state: &'static str,
    in_flight: usize,
    /// When the host last answered an echo (Unix ms), if it has.
    last_echo_ms: Option<u64>,
}

fn link(l: &crate::switch::acquirer::LinkHandle) -> Link<'_> {
    use crate::switch::acquirer::LinkAdmin;
    let admin = l.shared.admin();
    let state = match admin {
        LinkAdmin::Running if l.is_up() => "up",
        LinkAdmin::Running => "down",
        other => other.name(),
    };
    Link {
        name: &l.shared.name,
        addr: l.shared.addr.to_string(),
        up: l.is_up(),
        state,
        in_flight: l.shared.in_flight(),
        last_echo_ms: l.shared.last_echo_ms(),
    }
}

fn acquirer_links(shared: &Shared) -> Vec<AcquirerLinks<'_>> {
    shared
        .acquirers
        .iter()
        .map(|a| AcquirerLinks {
            name: &a.name,
            links: a.links.iter().map(link).collect(),
        })
        .collect()
}

/// Liveness, and the links: 200 when every acquirer has a link up
/// (`up`) or some have (`degraded`), 503 when none has (`down`).
pub(super) async fn health(State(s): State<Arc<AdminState>>) -> Response {
    let shared = &s.shared();
    let total = shared.acquirers.len();
    let up = shared.acquirers.iter().filter(|a| a.any_up()).count();
    let (status, code) = if up == total {
        ("up", StatusCode::OK)
    } else if up > 0 {
        ("degraded", StatusCode::OK)
    } else {
        ("down", StatusCode::SERVICE_UNAVAILABLE)
    };
    let body = Health {
        status,
        connections: shared.connections.load(Ordering::Relaxed),
        in_flight: shared.in_flight.load(Ordering::Relaxed),
        acquirers: acquirer_links(shared),
    };
    json(code, &body)
}

#[derive(Serialize)]
struct Ready {
    ready: bool,
    /// Why not, when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    acquirers: usize,
    acquirers_up: usize,
}

/// Readiness for a load balancer: 200 while the switch takes requests and
/// at least one acquirer has a link up; 503 (with the reason) while it
/// stops, or with no acquirer up (or none configured).
pub(super) async fn ready(State(s): State<Arc<AdminState>>) -> Response {
    let shared = &s.shared();
    let acquirers = shared.acquirers.len();
    let acquirers_up = shared.acquirers.iter().filter(|a| a.any_up()).count();
    let reason = if shared.stopping.is_cancelled() {
        Some("stopping: no new requests are taken")
    } else if acquirers == 0 {
        Some("no acquirer is configured")
    } else if acquirers_up == 0 {
        Some("no acquirer has a link up")
    } else {
        None
    };
    let code = match reason {
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = Ready {
        ready: reason.is_none(),
        reason,
        acquirers,
        acquirers_up,
    };
    json(code, &body)
}

#[derive(Serialize)]
struct Summary<'a> {
    version: &'static str,
    commit: &'static str,
    /// RFC 3339, UTC.
    started_at: String,
    uptime_s: u64,
    stopping: bool,
    /// Answers given to terminals since start: `null` without the
    /// metrics recorder (another one was installed first).
    requests: Option<Requests>,
    in_flight: usize,
    connections: usize,
    acquirers: Vec<AcquirerSummary<'a>>,
    journal: JournalSummary,
    fraud_tracked_cards: usize,
    recent_answers: usize,
    /// The business date requests are accepted in (`YYYY-MM-DD`).
    business_date: String,
    /// The config generation in force (`/api/config` shows it).
    config_generation: u64,
    /// The last cutover, this run's or the one recovered from the
    /// journal; `null` when none is on record.
    last_cutover: Option<CutoverSummary>,
}

#[derive(Serialize)]
struct CutoverSummary {
    /// RFC 3339, UTC.
    at: String,
    business_date: String,
    reason: &'static str,
}

#[derive(Serialize)]
struct AcquirerSummary<'a> {
    name: &'a str,
    links: usize,
    links_up: usize,
    saf_depth: usize,
}

#[derive(Serialize)]
struct JournalSummary {
    /// Every record up to this sequence number is on disk.
    durable: u64,
    appended: u64,
    queue_depth: usize,
    fsyncs: u64,
    disk_bytes: u64,
}

/// Answers given to terminals, counted as `switchyard_requests_total`
/// counts them: by request MTI, then DE39.
#[derive(Debug, Default, PartialEq, Serialize)]
pub(super) struct Requests {
    total: u64,
    by_code: BTreeMap<String, u64>,
    by_mti: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Most distinct label values kept per map (the terminal counters cache
/// at most 64 pairs per actor; a host inventing codes could make more).
const MAX_SERIES: usize = 1024;

impl Requests {
    /// From the Prometheus text the registry renders: the samples of
    /// `switchyard_requests_total{mti="..",code=".."}`.
    pub(super) fn from_prometheus(text: &str) -> Requests {
        let mut r = Requests::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(crate::telemetry::REQUESTS) else {
                continue;
            };
            let Some((labels, value)) = rest.strip_prefix('{').and_then(|l| l.rsplit_once("} "))
            else {
                continue;
            };
            let Ok(n) = value.trim().parse::<f64>() else {
                continue;
            };
            let (Some(mti), Some(code)) = (label(labels, "mti"), label(labels, "code")) else {
                continue;
            };
            let n = n as u64;
            r.total += n;
            if r.by_code.len() < MAX_SERIES || r.by_code.contains_key(code) {
                *r.by_code.entry(code.to_owned()).or_default() += n;
            }
            if r.by_mti.len() < MAX_SERIES || r.by_mti.contains_key(mti) {
                let codes = r.by_mti.entry(mti.to_owned()).or_default();
                if codes.len() < MAX_SERIES || codes.contains_key(code) {
                    *codes.entry(code.to_owned()).or_default() += n;
                }
            }
        }
        r
    }
}

/// The value of `name="value"` in a Prometheus label list (values here
/// are digits and letters: no escapes to undo).
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k == name).then(|| v.trim_matches('"'))
    })
}

pub(super) async fn summary(State(s): State<Arc<AdminState>>) -> Response {
    let shared = &s.shared();
    let j = shared.journal.stats();
    let body = Summary {
        version: crate::build_info::VERSION,
        commit: crate::build_info::COMMIT,
        started_at: crate::clock::rfc3339(s.started_unix_s),
        uptime_s: s.started.elapsed().as_secs(),
        stopping: shared.stopping.is_cancelled(),
        requests: crate::telemetry::prometheus().map(|h| Requests::from_prometheus(&h.render())),
        in_flight: shared.in_flight.load(Ordering::Relaxed),
        connections: shared.connections.load(Ordering::Relaxed),
        acquirers: shared
            .acquirers
            .iter()
            .map(|a| AcquirerSummary {
                name: &a.name,
                links: a.links.len(),
                links_up: a.links.iter().filter(|l| l.is_up()).count(),
                saf_depth: a.saf.depth(),
            })
            .collect(),
        journal: JournalSummary {
            durable: j.durable,
            appended: j.appended,
            queue_depth: j.queue_depth,
            fsyncs: j.fsyncs,
            disk_bytes: j.disk_bytes,
        },
        fraud_tracked_cards: shared.fraud_state.len(),
        recent_answers: shared.recent.len(),
        business_date: shared.business_day.current().to_string(),
        config_generation: shared.generation,
        last_cutover: shared.business_day.last().map(|c| CutoverSummary {
            at: crate::clock::rfc3339(c.at_ms / 1000),
            business_date: c.to.to_string(),
            reason: c.reason.name(),
        }),
    };
    json(StatusCode::OK, &body)
}

#[derive(Serialize)]
struct Links<'a> {
    acquirers: Vec<AcquirerLinksDetail<'a>>,
    /// Links a reload took out of the config, until they have signed off.
    retiring: Vec<Link<'a>>,
    /// Cards and BINs blocked by operators (`/api/blocks` lists them).
    blocks: BlockCounts,
    config_generation: u64,
}

#[derive(Serialize)]
struct BlockCounts {
    cards: usize,
    bins: usize,
    response_code: String,
}

#[derive(Serialize)]
struct AcquirerLinksDetail<'a> {
    name: &'a str,
    /// At least one link up.
    up: bool,
    saf_depth: usize,
    links: Vec<Link<'a>>,
}

pub(super) async fn links(State(s): State<Arc<AdminState>>) -> Response {
    let shared = &s.shared();
    let retiring = s
        .control
        .as_ref()
        .map(|c| c.supervisor().retiring())
        .unwrap_or_default();
    let body = Links {
        retiring: retiring.iter().map(link).collect(),
        blocks: BlockCounts {
            cards: shared.blocks.cards(),
            bins: shared.blocks.bins(),
            response_code: String::from_utf8_lossy(&shared.blocks.response_code).into_owned(),
        },
        config_generation: shared.generation,
        acquirers: shared
            .acquirers
            .iter()
            .zip(acquirer_links(shared))
            .map(|(a, l)| AcquirerLinksDetail {
                name: &a.name,
                up: a.any_up(),
                saf_depth: a.saf.depth(),
                links: l.links,
            })
            .collect(),
    };
    json(StatusCode::OK, &body)
}

/// The config in force, as read (defaults included, secrets redacted),
/// with its generation: `"generation": {"number", "loaded_at", "loaded_by"}`.
pub(super) async fn config(State(s): State<Arc<AdminState>>) -> Response {
    let shared = s.shared();
    let mut v = shared.config.view.json().clone();
    if let serde_json::Value::Object(m) = &mut v {
        m.insert(
            "generation".into(),
            serde_json::json!({
                "number": shared.generation,
                "loaded_at": crate::clock::rfc3339(shared.loaded_at_ms / 1000),
                "loaded_by": shared.loaded_by,
                "file": shared.config.source.as_ref().map(|p| p.display().to_string()),
            }),
        );
    }
    json(StatusCode::OK, &v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_from_the_prometheus_text() {
        let text = "\
# TYPE switchyard_requests_total counter
switchyard_requests_total{mti=\"0200\",code=\"00\"} 3
switchyard_requests_total{code=\"14\",mti=\"0200\"} 1
switchyard_requests_total{mti=\"0100\",code=\"00\"} 2
switchyard_requests_totalx{mti=\"0100\",code=\"00\"} 7
switchyard_request_duration_seconds_count 6
switchyard_requests_total{mti=\"0100\"} 9
switchyard_requests_total{mti=\"0100\",code=\"05\"} nan-ish
";
        let r = Requests::from_prometheus(text);
        assert_eq!(r.total, 6);
        assert_eq!(r.by_code["00"], 5);
        assert_eq!(r.by_code["14"], 1);
        assert_eq!(r.by_mti["0200"]["00"], 3);
        assert_eq!(r.by_mti["0200"]["14"], 1);
        assert_eq!(r.by_mti["0100"]["00"], 2);
        assert_eq!(r.by_mti.len(), 2);
        assert!(!r.by_code.contains_key("05"));
    }
}
