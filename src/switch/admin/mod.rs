//! The operators' endpoint: axum's router on hyper's HTTP/1 server, fed
//! by an accept loop of our own (it pauses after a failed accept, as the
//! terminal listener does, and holds a slot per connection).
//!
//! * `GET /metrics`: Prometheus text format.
//! * `GET /health`: liveness and link states (200 when some acquirer has
//!   a link up or none is configured, 503 when none is up).
//! * `GET /ready`: readiness (200 while the switch takes requests and an
//!   acquirer has a link up; 503 with the reason otherwise).
//! * `GET /api/summary`, `/api/links`, `/api/config`: the read-only JSON
//!   API (`api.rs`).
//! * `GET /`: the dashboard; `/api/stream` (server-sent events),
//!   `/api/alerts`, `/api/terminals`, `/api/transactions`: the analytics
//!   thread's figures (`dashboard.rs`).
//! * `POST /api/login`, `/api/logout`, `GET /api/session`: operators,
//!   sessions and roles, with the audit trail (`auth.rs`, `audit.rs`),
//!   once `[admin] users_file` is set. Without it there is no login, and
//!   the listener must be on loopback (the config refuses any other
//!   address).
//! * The actions, an operator's (audited, a viewer's refused 403):
//!   `POST /api/actions/reload` (the config file as the next generation,
//!   and the users file: `reload.rs`), `/api/actions/cutover` (the
//!   business date, `cutover.rs`), `/api/actions/drain` (`drain.rs`),
//!   `/api/actions/link/stop|start` and `/api/actions/block|unblock`, with
//!   `GET /api/blocks` (`actions.rs`).
//!
//! With `[admin.tls]` every connection is HTTPS (`tls.rs`): the same
//! routes, and the session cookie carries `Secure`. Without it, plain
//! HTTP, which the config allows on loopback only: off loopback the
//! operators' passwords and cookies would cross the network in clear,
//! and without operators there is no login at all.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections served at once (more
//! wait in the kernel's backlog, not in memory); one request per
//! connection; the request head within [`MAX_HEAD`] bytes and
//! [`MAX_HEADERS`] headers (else 431, from hyper) and read within
//! [`HEAD_TIMEOUT`]; a body of at most [`MAX_BODY`] bytes with a
//! `Content-Length` (else 413 or 411); an answer within
//! [`REQUEST_TIMEOUT`]; the whole connection within
//! [`CONNECTION_TIMEOUT`] (a client that does not read its answer is cut),
//! but for a stream, cut when its client stops reading or after an hour.
//! Every JSON answer passes through `scrub::scrub_json`: no
//! Luhn-valid 13-19 digit number leaves here.

mod actions;
mod api;
pub mod audit;
mod auth;
mod config;
mod cutover;
pub mod dashboard;
mod drain;
mod reload;
pub use reload::reload_on_signal;
pub mod limiter;
mod scrub;
pub(crate) use scrub::scrub_json;
pub mod sessions;
mod tls;
pub use tls::AdminTls;
pub mod totp;
pub mod users;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::debug;

pub use config::AdminConfig;
pub(crate) use config::AdminFile;
pub use view::{ConfigView, REDACTED, is_secret};

use crate::switch::server::Shared;

/// Admin connections served at once; more wait in the kernel backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// Longest request head (request line and headers): hyper's read buffer.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in a request.
pub const MAX_HEADERS: usize = 64;
/// Longest request body accepted (a login's JSON).
pub const MAX_BODY: usize = 16 * 1024;
/// A client that has not sent its request head by then is dropped.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// An answer not ready by then is a 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed by then, whatever it is doing.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);

/// What the endpoints read.
pub struct AdminState {
    /// A generation of what terminals read: [`AdminState::shared`] is the
    /// one in force.
    shared: Arc<Shared>,
    started: Instant,
    started_unix_s: u64,
    /// Operators, sessions and the audit trail; `None` without
    /// `[admin] users_file` (no login, loopback only).
    auth: Option<auth::Auth>,
    /// The analytics thread's end: the dashboard's frames, alerts,
    /// terminals, recent transactions. `None` with `[analytics] enabled =
    /// false` (those routes answer 503).
    analytics: Option<Arc<crate::switch::analytics::Handle>>,
    /// Reloads, blocks and link actions; `None` in an endpoint built
    /// without a switch around it (those actions answer 503).
    control: Option<Arc<crate::switch::reload::Control>>,
}

impl AdminState {
    /// Without operators: every route open, as on loopback.
    pub fn new(shared: Arc<Shared>) -> AdminState {
        AdminState {
            shared,
            started: Instant::now(),
            started_unix_s: crate::clock::unix_now(),
            auth: None,
            analytics: None,
            control: None,
        }
    }

    /// With the switch's run-time changes.
    pub fn with_control(mut self, control: Arc<crate::switch::reload::Control>) -> AdminState {
        self.control = Some(control);
        self
    }

    /// The generation in force.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.current()
    }

    /// With the analytics thread's handle.
    pub fn with_analytics(
        mut self,
        analytics: Option<Arc<crate::switch::analytics::Handle>>,
    ) -> AdminState {
        self.analytics = analytics;
        self
    }

    /// With `[admin] users_file` set: reads it and opens the audit trail
    /// (refused, with the reason, if either fails).
    pub fn with_config(shared: Arc<Shared>, admin: &AdminConfig) -> Result<AdminState, String> {
        let mut s = AdminState::new(shared);
        if let Some(users) = &admin.users_file {
            s.auth = Some(auth::Auth::open(users, admin)?);
        }
        Ok(s)
    }

    /// Operators in the users file, when there is one.
    pub fn operators(&self) -> Option<usize> {
        self.auth.as_ref().map(auth::Auth::users)
    }
}

/// The routes, with the request bounds.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/api/stream", get(dashboard::stream))
        .route("/api/alerts", get(dashboard::alerts))
        .route("/api/terminals", get(dashboard::terminals))
        .route("/api/transactions", get(dashboard::transactions))
        .route("/metrics", get(api::metrics))
        .route("/health", get(api::health))
        .route("/ready", get(api::ready))
        .route("/api/summary", get(api::summary))
        .route("/api/links", get(api::links))
        .route("/api/config", get(api::config))
        .route("/api/login", post(auth::login))
        .route("/api/logout", post(auth::logout))
        .route("/api/session", get(auth::whoami))
        .route("/api/blocks", get(actions::blocks))
        .route("/api/actions/reload", post(reload::reload))
        .route("/api/actions/link/stop", post(actions::link_stop))
        .route("/api/actions/link/start", post(actions::link_start))
        .route("/api/actions/block", post(actions::block))
        .route("/api/actions/unblock", post(actions::unblock))
        .route("/api/actions/cutover", post(cutover::cutover))
        .route("/api/actions/drain", post(drain::drain))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .layer(middleware::from_fn(bounds))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves the endpoint on `listener`: HTTPS only when `tls` is given
/// (`[admin.tls]`), plain HTTP otherwise.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, tls: Option<Arc<AdminTls>>) {
    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut accept_failed =
        crate::throttle::LogThrottle::new(crate::switch::server::LISTENER_WARN_EVERY);
    loop {
        // A slot first: past MAX_CONNECTIONS nothing is accepted.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors: the same pause as the terminal
                // listener; retrying at once spun a core.
                crate::switch::server::pause_after_accept_error("admin", &e, &mut accept_failed)
                    .await;
                continue;
            }
        };
        // The peer, for the login limits and the audit trail; the watch,
        // for a stream to outlive the connection timeout while it moves.
        let watch = dashboard::Watch::default();
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(auth::ClientAddr(peer)))
                .layer(axum::Extension(watch.clone())),
        );
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                // The handshake holds the connection's slot: a storm of
                // them is bounded as connections are.
                Some(tls) => {
                    if let Some(stream) = tls.accept(stream, peer).await {
                        serve_connection(stream, peer, service, watch).await;
                    }
                }
                None => serve_connection(stream, peer, service, watch).await,
            }
            drop(permit);
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    service: TowerToHyperService<Router>,
    watch: dashboard::Watch,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let started = tokio::time::Instant::now();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    debug!(%peer, "admin connection: {e}");
                }
                return;
            }
            _ = check.tick() => {
                // A stream lives while its client reads (dashboard.rs);
                // any other connection CONNECTION_TIMEOUT at most.
                let w = &watch.0;
                if w.streaming() {
                    if w.expired() {
                        debug!(%peer, "admin stream cut: stalled or too old");
                        return;
                    }
                } else if started.elapsed() >= CONNECTION_TIMEOUT {
                    debug!(%peer, "admin connection cut after {CONNECTION_TIMEOUT:?}");
                    return;
                }
            }
        }
    }
}

/// Refuses a body over [`MAX_BODY`] or of unknown length before any
/// handler runs, and bounds the time to an answer.
async fn bounds(req: Request, next: Next) -> Response {
    let headers = req.headers();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return error(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a request body needs a Content-Length",
        );
    }
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        match len.to_str().ok().and_then(|l| l.parse::<u64>().ok()) {
            Some(n) if n <= MAX_BODY as u64 => {}
            Some(_) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    &format!("a request body is at most {MAX_BODY} bytes"),
                );
            }
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_content_length",
                    "Content-Length is not a number",
                );
            }
        }
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "no answer in time",
        ),
    }
}

const ENDPOINTS: &str = "/ (the dashboard), /metrics, /health, /ready, /api/summary, \
                         /api/links, /api/config, /api/blocks, /api/stream, /api/alerts, \
                         /api/terminals, /api/transactions, /api/login, /api/logout, \
                         /api/session, /api/actions/reload, /api/actions/cutover, \
                         /api/actions/drain, /api/actions/link/stop, /api/actions/link/start, \
                         /api/actions/block, /api/actions/unblock";

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no such endpoint; try {ENDPOINTS}"),
    )
}

async fn method_not_allowed() -> Response {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "GET to read; POST to /api/login, /api/logout and /api/actions/*",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
    r
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// A JSON error: `{"error": "<kind>", "message": "..."}`.
fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    json(
        status,
        &ErrorBody {
            error: kind,
            message,
        },
    )
}

/// A JSON answer, scrubbed of anything that could be a card number.
fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_string(body) {
        Ok(mut s) => {
            s.push('\n');
            text(status, "application/json", scrub::scrub_json(&s))
        }
        Err(e) => {
            debug!("admin answer not serialised: {e}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                "{\"error\":\"internal\",\"message\":\"the answer could not be made\"}\n".into(),
            )
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}
