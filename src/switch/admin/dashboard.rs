//! The operators' console: the page at `/` (one HTML file with its CSS and
//! JavaScript inline, compiled in: no build step, no CDN, works offline)
//! and the analytics API behind it.
//!
//! * `GET /api/stream`: server-sent events, one frame a second (the
//!   analytics thread's JSON, made once and shared by every client).
//!   At most [`analytics::MAX_STREAMS`] at once (else 503). A client that
//!   falls [`analytics::FRAMES_BUFFERED`] frames behind is dropped, as is
//!   one that has read nothing for [`STREAM_STALL`] (the accept loop's
//!   watch): nothing is buffered for it beyond that. A stream ends after
//!   [`STREAM_MAX`]; the browser reconnects.
//! * `GET /api/alerts`: open and recently cleared alerts.
//! * `GET /api/terminals?limit=N`: per terminal counts, approval rate,
//!   last seen (the most recently seen first).
//! * `GET /api/transactions?rrn=..|stan=..&terminal=..|pan=MASKED`: the
//!   recent transactions (a bounded ring; the store keeps older ones).
//!
//! The page is open; what it shows comes from `/api/*`, which the session
//! guard covers: with a users file the page shows its login form until
//! `/api/login` gives it a session.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Extension, Query as UrlQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;

use super::{AdminState, error, json};
use crate::switch::analytics::recent::Search;
use crate::switch::analytics::{self, Query};

const PAGE: &str = include_str!("dashboard.html");

/// A stream whose client has read nothing for this long is cut.
pub const STREAM_STALL: Duration = Duration::from_secs(10);
/// A stream ends after this long (the page reconnects at once).
pub const STREAM_MAX: Duration = Duration::from_secs(3600);
/// The thread's answer within this, else 503.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Results of `/api/transactions` and rows of `/api/terminals` at most.
const MAX_ROWS: usize = 1000;

/// Whether a connection serves a stream, and when it last moved: the
/// accept loop's watch over it (a stream outlives the connection timeout
/// while its client reads).
#[derive(Default)]
pub struct StreamWatch {
    streaming: AtomicBool,
    last_ms: AtomicU64,
    started: std::sync::OnceLock<Instant>,
}

impl StreamWatch {
    fn begin(&self) {
        let _ = self.started.set(Instant::now());
        self.moved();
        self.streaming.store(true, Ordering::Release);
    }

    fn moved(&self) {
        let since = self
            .started
            .get()
            .map_or(0, |s| s.elapsed().as_millis() as u64);
        self.last_ms.store(since, Ordering::Release);
    }

    pub fn streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire)
    }

    /// The stream should be cut: stalled or too old.
    pub fn expired(&self) -> bool {
        let Some(s) = self.started.get() else {
            return false;
        };
        let now = s.elapsed();
        let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        now >= STREAM_MAX || now.saturating_sub(last) >= STREAM_STALL
    }
}

/// The connection's watch, put in each request's extensions.
#[derive(Clone, Default)]
pub struct Watch(pub Arc<StreamWatch>);

pub(super) async fn page() -> Response {
    let mut r = (StatusCode::OK, PAGE).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The page's own script only (by its hash: an injected one would not
    // run), inline style, data from this origin only.
    if let Ok(csp) = HeaderValue::from_str(csp()) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    r
}

/// The Content-Security-Policy, with the SHA-256 of the page's script.
fn csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use sha2::Digest;
        let script = PAGE
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(s, _)| s);
        let hash = data_encoding::BASE64.encode(&sha2::Sha256::digest(script.as_bytes()));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        )
    })
}

fn analytics_off() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "analytics_off",
        "analytics is off ([analytics] enabled = false)",
    )
}

async fn ask(s: &AdminState, q: Query) -> Response {
    let Some(a) = &s.analytics else {
        return analytics_off();
    };
    match a.ask(q, ASK_TIMEOUT).await {
        Some(v) => json(StatusCode::OK, &v),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the analytics thread did not answer in time; try again",
        ),
    }
}

pub(super) async fn alerts(State(s): State<Arc<AdminState>>) -> Response {
    ask(&s, Query::Alerts).await
}

pub(super) async fn terminals(
    State(s): State<Arc<AdminState>>,
    UrlQuery(q): UrlQuery<HashMap<String, String>>,
) -> Response {
    let Some(limit) = limit(&q) else {
        return bad_limit();
    };
    ask(&s, Query::Terminals { limit }).await
}

/// `limit=N`, 1 to [`MAX_ROWS`] (that when absent); `None` when bad.
fn limit(q: &HashMap<String, String>) -> Option<usize> {
    match q.get("limit") {
        None => Some(MAX_ROWS),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_ROWS).contains(n)),
    }
}

fn bad_limit() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad_limit",
        &format!("limit is a number from 1 to {MAX_ROWS}"),
    )
}

pub(super) async fn transactions(
    State(s): State<Arc<AdminState>>,
    UrlQuery(q): UrlQuery<HashMap<String, String>>,
) -> Response {
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "bad_search", m);
    for k in q.keys() {
        if !matches!(k.as_str(), "rrn" | "stan" | "terminal" | "pan" | "limit") {
            return bad("search by rrn, stan and terminal, or pan (masked); limit");
        }
    }
    let Some(limit) = limit(&q).map(|l| l.min(100)) else {
        return bad_limit();
    };
    let stan = match q.get("stan").map(|s| s.trim().parse::<u32>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return bad("stan is a number"),
    };
    let pan = q.get("pan").map(|p| p.trim().to_owned());
    // A full card number is never a search key: the ring keeps none, and
    // it would sit in logs of proxies in front of this.
    if let Some(p) = &pan
        && p.len() >= 13
        && p.bytes().all(|c| c.is_ascii_digit())
    {
        return bad("search by the masked PAN (first six, last four: 411111******1111)");
    }
    let search = Search {
        rrn: q.get("rrn").map(|r| r.trim().to_owned()),
        stan,
        terminal: q.get("terminal").map(|t| t.trim().to_owned()),
        pan,
        limit,
    };
    if search.is_empty() {
        return bad("give rrn, stan and terminal, or pan (masked)");
    }
    if search.stan.is_some() && search.terminal.is_none() {
        return bad("a stan needs its terminal");
    }
    ask(&s, Query::Transactions(search)).await
}

pub(super) async fn stream(
    State(s): State<Arc<AdminState>>,
    watch: Option<Extension<Watch>>,
) -> Response {
    let Some(a) = s.analytics.clone() else {
        return analytics_off();
    };
    let Ok(permit) = a.streams.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            &format!("{} streams are open already", analytics::MAX_STREAMS),
        );
    };
    let watch = watch.map(|Extension(w)| w.0).unwrap_or_default();
    watch.begin();
    let rx = a.subscribe();
    let first = a.latest();
    struct St {
        rx: tokio::sync::broadcast::Receiver<Arc<str>>,
        first: Option<Arc<String>>,
        watch: Arc<StreamWatch>,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let st = St {
        rx,
        first: Some(first),
        watch,
        _permit: permit,
    };
    let events = futures_util::stream::unfold(st, |mut st| async move {
        // The latest frame at once: the page fills without waiting.
        let data: String = match st.first.take() {
            Some(f) => f.as_str().to_owned(),
            None => match st.rx.recv().await {
                Ok(f) => f.as_ref().to_owned(),
                // Behind by more than the channel holds: dropped.
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return None,
            },
        };
        st.watch.moved();
        let e = SseEvent::default().data(data);
        Some((Ok::<_, std::convert::Infallible>(e), st))
    });
    let mut r = Sse::new(events).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
