//! Login (password and TOTP), sessions, roles, and the audit trail of
//! both, once `[admin] users_file` names the operators.
//!
//! * `POST /api/login` `{"user", "password", "code"}`: a session cookie.
//!   One refusal for an unknown user, a wrong password, a wrong or
//!   replayed code (401, the same body; an unknown user costs the same
//!   argon2 verification as a known one). Failed logins are counted per
//!   source address and per user name (`limiter.rs`): over the limit,
//!   429 until the lock ends, before any password is checked.
//! * `POST /api/logout`: ends the session.
//! * Every other `/api/*` route needs a session (`guard`); `viewer` reads,
//!   `operator` may also call `/api/actions/*` (else 403, audited).
//!   `/health` and `/ready` stay open, `/metrics` too unless
//!   `metrics_require_login`.
//! * `POST /api/actions/reload` (`reload.rs`) re-reads the users file
//!   too ([`Auth::reload_users`]): sessions of users removed, or whose
//!   role, password or secret changed, end.
//!
//! Every login, failed login, logout, expired session and action is in
//! the audit trail before its answer is sent; a trail that cannot be
//! written refuses logins and actions (503). Nothing here logs or records
//! a password, a TOTP code or secret, or a session token (sessions are
//! named by the first 16 hex digits of the token's SHA-256).
//!
//! The state (sessions, failure counts, the last TOTP step used per user)
//! sits behind one mutex: a handful of admin requests a second, each
//! holding it for microseconds and never across an await.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::audit::{AuditError, AuditLog, Event};
use super::limiter::Limiter;
use super::sessions::{self, Expiry, Lookup, Session, Sessions};
use super::users::{self, Role, Users};
use super::{AdminConfig, AdminState, MAX_BODY, error, json, totp};

/// argon2 verifications at once: each takes 19 MiB and a core for tens
/// of milliseconds; more logins wait (within the request timeout).
const HASHING_AT_ONCE: usize = 2;
/// Longest user name looked at; a longer one is refused as unknown.
const MAX_USER_FIELD: usize = 64;
/// Longest TOTP code field.
const MAX_CODE_FIELD: usize = 16;
/// Failed logins logged and recorded per second at most: refusals of a
/// locked key cost an attacker no argon2 time, and each record is an
/// fsync and a line that stays. Past it they are counted, and the next
/// one recorded says how many were not.
const FAILURES_RECORDED_PER_SEC: u32 = 20;

/// The per-second allowance of recorded failed logins.
#[derive(Debug, Default)]
struct FailureBudget {
    second: u64,
    used: u32,
    skipped: u64,
}

impl FailureBudget {
    /// `Some(n)` when a failure in `unix_s` may be recorded, `n` being
    /// how many were not since the last recorded one.
    fn take(&mut self, unix_s: u64) -> Option<u64> {
        if unix_s != self.second {
            self.second = unix_s;
            self.used = 0;
        }
        if self.used >= FAILURES_RECORDED_PER_SEC {
            self.skipped += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.skipped))
    }
}

/// The peer of a connection, put in each request's extensions by the
/// accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

pub(super) fn client_addr(req: &Request) -> SocketAddr {
    req.extensions()
        .get::<ClientAddr>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0)
}

struct AuthState {
    sessions: Sessions,
    by_addr: Limiter<IpAddr>,
    by_user: Limiter<String>,
    /// The last TOTP step each user logged in with: a code is accepted
    /// once, and none of an earlier step after it (RFC 6238 section 5.2).
    /// One entry per user of the file at most (pruned on reload). Kept in
    /// memory: after a restart a code of the last 90 s could be used once
    /// more, with its password.
    last_step: HashMap<String, u64>,
    failures: FailureBudget,
}

pub struct Auth {
    users_path: PathBuf,
    users: ArcSwap<Users>,
    audit: AuditLog,
    state: Mutex<AuthState>,
    hashing: tokio::sync::Semaphore,
    session_ttl: Duration,
    session_max: Duration,
    pub metrics_require_login: bool,
    /// `[admin.tls]` is on: the cookie says `Secure`, so a browser never
    /// sends it over plain HTTP.
    secure_cookie: bool,
}

impl Auth {
    fn secure_attribute(&self) -> &'static str {
        if self.secure_cookie { "; Secure" } else { "" }
    }

    /// Reads the users file and opens the audit trail.
    pub fn open(users_path: &std::path::Path, config: &AdminConfig) -> Result<Auth, String> {
        let users = Users::load(users_path).map_err(|e| {
            let hint = if users_path.exists() {
                String::new()
            } else {
                format!(
                    " (make it with `switchyard user add NAME --role operator --users-file {}`)",
                    users_path.display()
                )
            };
            format!("admin.users_file: {e}{hint}")
        })?;
        if let Some(w) = users::permission_warning(users_path) {
            warn!("admin.users_file: {w}");
        }
        if users.is_empty() {
            warn!(
                "admin.users_file {} names no operator: nobody can log in \
                 (`switchyard user add NAME --role operator`)",
                users_path.display()
            );
        }
        let audit = AuditLog::open(&config.audit_file, config.audit_retention_days)?;
        Ok(Auth {
            users_path: users_path.to_owned(),
            users: ArcSwap::from_pointee(users),
            audit,
            state: Mutex::new(AuthState {
                sessions: Sessions::new(
                    config.session_ttl,
                    config.session_max,
                    sessions::MAX_SESSIONS,
                ),
                by_addr: Limiter::default(),
                by_user: Limiter::default(),
                last_step: HashMap::new(),
                failures: FailureBudget::default(),
            }),
            hashing: tokio::sync::Semaphore::new(HASHING_AT_ONCE),
            session_ttl: config.session_ttl,
            session_max: config.session_max,
            metrics_require_login: config.metrics_require_login,
            secure_cookie: config.tls.is_some(),
        })
    }

    pub fn users(&self) -> usize {
        self.users.load().len()
    }

    /// Writes an event; a failure is logged by the writer.
    pub(super) fn audit_healthy(&self) -> bool {
        self.audit.is_healthy()
    }

    pub(super) async fn record(
        &self,
        event: &'static str,
        user: Option<&str>,
        source: SocketAddr,
        details: serde_json::Value,
        result: &str,
    ) -> Result<(), AuditError> {
        self.audit
            .record(Event {
                event,
                user: user.map(str::to_owned),
                source: Some(source),
                details,
                result: result.to_owned(),
            })
            .await
    }

    /// Writes `e` (an event of no session: SIGHUP's reload).
    pub(super) async fn audit_event(&self, e: Event) -> Result<(), AuditError> {
        self.audit.record(e).await
    }

    /// A refused login, logged and recorded within the budget.
    async fn record_failure(
        &self,
        known: Option<&str>,
        peer: SocketAddr,
        refusal: Refusal,
        lock: Option<Duration>,
    ) {
        let Some(skipped) = crate::sync::lock(&self.state)
            .failures
            .take(crate::clock::unix_now())
        else {
            return;
        };
        let user = known.unwrap_or("(unknown)");
        match lock {
            Some(d) => warn!(
                %peer, user, "admin: failed login ({}); locked for {} s", refusal.name(), d.as_secs()
            ),
            None => warn!(%peer, user, "admin: failed login ({})", refusal.name()),
        }
        let mut details = json!({"reason": refusal.name()});
        if skipped > 0 {
            warn!(
                "admin: {skipped} failed login(s) before this one were neither logged nor recorded (over {FAILURES_RECORDED_PER_SEC}/s)"
            );
            details["not_recorded_before"] = json!(skipped);
        }
        let _ = self
            .record("login_failed", known, peer, details, "refused")
            .await;
    }

    async fn record_expired(&self, ended: Vec<(Session, Option<Expiry>)>) {
        for (s, why) in ended {
            let reason = why.map_or("evicted: the session table was full", Expiry::name);
            info!(user = %s.user, session = %s.id, "admin: session ended ({reason})");
            let _ = self
                .record(
                    "session_expired",
                    Some(&s.user),
                    s.source,
                    json!({"session": s.id, "reason": reason}),
                    "expired",
                )
                .await;
        }
    }
}

#[derive(Deserialize)]
struct LoginRequest {
    user: String,
    password: String,
    code: String,
}

#[derive(Serialize)]
struct LoginAnswer<'a> {
    user: &'a str,
    role: Role,
    /// Seconds without a request before the session ends.
    idle_timeout_s: u64,
    /// Seconds until it ends whatever it does.
    max_age_s: u64,
}

/// Why a login was refused, for the audit trail only: the answer is the
/// same for all but `Locked`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    UnknownUser,
    Password,
    Code,
    Replayed,
    Locked,
}

impl Refusal {
    fn name(self) -> &'static str {
        match self {
            Refusal::UnknownUser => "unknown_user",
            Refusal::Password => "wrong_password",
            Refusal::Code => "wrong_code",
            Refusal::Replayed => "replayed_code",
            Refusal::Locked => "locked",
        }
    }
}

fn no_auth() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no_login",
        "admin.users_file is not set: there are no operators and no login",
    )
}

fn refused() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "login_failed",
        "wrong user, password or code",
    )
}

/// 429 until the lock ends (the same for known and unknown users).
fn locked_answer(wait: Duration) -> Response {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "locked",
        "too many failed logins from this address or for this user; try again later",
    );
    if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

pub(super) fn audit_unavailable(e: &AuditError) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        &e.to_string(),
    )
}

pub(super) async fn login(State(s): State<Arc<AdminState>>, req: Request) -> Response {
    let Some(auth) = &s.auth else {
        return no_auth();
    };
    let peer = client_addr(&req);
    // A form cannot post JSON to another site without a CORS preflight:
    // asking for it keeps cross-site pages from posting logins.
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "json_required",
            "POST a JSON body {\"user\", \"password\", \"code\"} with Content-Type: application/json",
        );
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_BODY).await else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "the body could not be read",
        );
    };
    let Ok(login) = serde_json::from_slice::<LoginRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected {\"user\": \"...\", \"password\": \"...\", \"code\": \"123456\"}",
        );
    };
    drop(body);
    login_checked(auth, login, peer).await
}

async fn login_checked(auth: &Auth, login: LoginRequest, peer: SocketAddr) -> Response {
    let users = auth.users.load_full();
    let name: String = login.user.chars().take(MAX_USER_FIELD).collect();
    let user = (login.user.len() <= MAX_USER_FIELD)
        .then(|| users.get(&login.user))
        .flatten();
    // Only a known name goes into the trail and the log: an unknown one
    // is sometimes a password typed into the wrong field.
    let known = user.map(|u| u.name.as_str());

    let locked = {
        let st = crate::sync::lock(&auth.state);
        let now = Instant::now();
        let by_addr = st.by_addr.locked(&peer.ip(), now);
        let by_user = st.by_user.locked(&name, now);
        by_addr.max(by_user)
    };
    if let Some(wait) = locked {
        auth.record_failure(known, peer, Refusal::Locked, None)
            .await;
        return locked_answer(wait);
    }

    // The argon2 verification, off the runtime's threads and at most
    // HASHING_AT_ONCE at a time. An unknown user is verified against a
    // decoy hash, for the same time.
    let phc = user
        .map_or(users::decoy_hash(), |u| u.password_hash())
        .to_owned();
    let password = login.password;
    let password_ok = if password.len() > users::MAX_PASSWORD {
        false
    } else {
        let Ok(_permit) = auth.hashing.acquire().await else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "stopping", "shutting down");
        };
        tokio::task::spawn_blocking(move || {
            let ok = users::verify_password(&phc, &password);
            drop(zeroize::Zeroizing::new(password));
            ok
        })
        .await
        .unwrap_or(false)
    };
    let decoy_secret = [0u8; totp::SECRET_LEN];
    let secret = user.map_or(&decoy_secret[..], |u| u.totp_secret());
    let code = if login.code.len() <= MAX_CODE_FIELD {
        login.code.trim()
    } else {
        ""
    };
    let step = totp::matching_step(secret, code, totp::step(crate::clock::unix_now()));

    let now = Instant::now();
    let outcome = {
        let mut st = crate::sync::lock(&auth.state);
        // Locked while this attempt was hashing (by attempts in parallel
        // with it): refused too, or 32 connections would get 32 guesses
        // per lock instead of five.
        let locked_now = st
            .by_addr
            .locked(&peer.ip(), now)
            .max(st.by_user.locked(&name, now));
        let refusal = match (user, password_ok, step) {
            _ if locked_now.is_some() => Some(Refusal::Locked),
            (None, _, _) => Some(Refusal::UnknownUser),
            (Some(_), false, _) => Some(Refusal::Password),
            (Some(_), true, None) => Some(Refusal::Code),
            (Some(u), true, Some(step)) => {
                let last = st.last_step.get(&u.name).copied();
                if last.is_some_and(|l| step <= l) {
                    Some(Refusal::Replayed)
                } else {
                    // Taken now, under the lock: two logins racing with one
                    // code cannot both pass.
                    st.last_step.insert(u.name.clone(), step);
                    None
                }
            }
        };
        match refusal {
            Some(Refusal::Locked) => Err((Refusal::Locked, locked_now)),
            Some(r) => {
                let a = st.by_addr.fail(&peer.ip(), now);
                let b = st.by_user.fail(&name, now);
                Err((r, a.max(b)))
            }
            None => {
                st.by_user.succeed(&name);
                Ok(())
            }
        }
    };
    let user = match (outcome, user) {
        (Ok(()), Some(u)) => u,
        (Err((Refusal::Locked, wait)), _) => {
            auth.record_failure(known, peer, Refusal::Locked, None)
                .await;
            return locked_answer(wait.unwrap_or(super::limiter::FIRST_LOCK));
        }
        (Err((refusal, lock)), _) => {
            auth.record_failure(known, peer, refusal, lock).await;
            return refused();
        }
        (Ok(()), None) => return refused(),
    };

    let (token, hash) = match sessions::new_token() {
        Ok(t) => t,
        Err(e) => {
            warn!("admin: no session token: {e}");
            return error(StatusCode::SERVICE_UNAVAILABLE, "no_random", "try again");
        }
    };
    let id = data_encoding::HEXLOWER.encode(&hash[..8]);
    // On record before the session exists: a login the trail does not
    // show gives no session.
    if let Err(e) = auth
        .record(
            "login_ok",
            Some(&user.name),
            peer,
            json!({"role": user.role, "session": id}),
            "ok",
        )
        .await
    {
        return audit_unavailable(&e);
    }
    let (_, ended) = {
        let mut st = crate::sync::lock(&auth.state);
        st.sessions
            .insert(hash, &user.name, user.role, peer, Instant::now())
    };
    auth.record_expired(ended).await;
    info!(%peer, user = %user.name, role = %user.role, session = %id, "admin: login");
    let mut r = json(
        StatusCode::OK,
        &LoginAnswer {
            user: &user.name,
            role: user.role,
            idle_timeout_s: auth.session_ttl.as_secs(),
            max_age_s: auth.session_max.as_secs(),
        },
    );
    // `Secure` only over TLS: on plain loopback a browser would not send
    // a Secure cookie back.
    let cookie = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        sessions::COOKIE,
        auth.session_max.as_secs(),
        auth.secure_attribute()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn token_hash(req: &Request) -> Option<sessions::TokenHash> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(sessions::token_in_cookies)
        .map(sessions::hash_token)
}

/// Expires the cookie in the browser.
fn clear_cookie(r: &mut Response, auth: &Auth) {
    let cookie = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        sessions::COOKIE,
        auth.secure_attribute()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
}

pub(super) async fn logout(State(s): State<Arc<AdminState>>, req: Request) -> Response {
    let Some(auth) = &s.auth else {
        return no_auth();
    };
    let peer = client_addr(&req);
    let session = token_hash(&req).and_then(|h| crate::sync::lock(&auth.state).sessions.remove(&h));
    let mut r = match session {
        Some(session) => {
            info!(%peer, user = %session.user, session = %session.id, "admin: logout");
            // The session has ended whatever the trail says: a failed
            // record is logged by the writer.
            let _ = auth
                .record(
                    "logout",
                    Some(&session.user),
                    peer,
                    json!({"session": session.id}),
                    "ok",
                )
                .await;
            json(StatusCode::OK, &json!({"logged_out": session.user}))
        }
        None => error(
            StatusCode::UNAUTHORIZED,
            "login_required",
            "no session to end",
        ),
    };
    clear_cookie(&mut r, auth);
    r
}

/// Which routes need what.
fn needs(auth: &Auth, path: &str) -> Option<Role> {
    match path {
        "/health" | "/ready" | "/api/login" | "/api/logout" => None,
        "/metrics" if auth.metrics_require_login => Some(Role::Viewer),
        p if p.starts_with("/api/actions/") => Some(Role::Operator),
        p if p == "/api" || p.starts_with("/api/") => Some(Role::Viewer),
        _ => None,
    }
}

/// The session check in front of every route (a no-op without a users
/// file): 401 without a valid session, 403 for a viewer's action.
pub(super) async fn guard(
    State(s): State<Arc<AdminState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(auth) = &s.auth else {
        return next.run(req).await;
    };
    let Some(needed) = needs(auth, req.uri().path()) else {
        return next.run(req).await;
    };
    let peer = client_addr(&req);
    let now = Instant::now();
    let (lookup, swept) = {
        let mut st = crate::sync::lock(&auth.state);
        let lookup = match token_hash(&req) {
            Some(h) => st.sessions.touch(&h, peer, now),
            None => Lookup::Unknown,
        };
        (lookup, st.sessions.sweep(now))
    };
    let mut ended: Vec<(Session, Option<Expiry>)> =
        swept.into_iter().map(|(s, e)| (s, Some(e))).collect();
    let session = match lookup {
        Lookup::Valid(session) => Some(session),
        Lookup::Expired(session, why) => {
            ended.insert(0, (session, Some(why)));
            None
        }
        Lookup::Unknown => None,
    };
    let expired_here = session.is_none() && !ended.is_empty() && ended[0].1.is_some();
    auth.record_expired(ended).await;
    let Some(session) = session else {
        let mut r = if expired_here {
            error(
                StatusCode::UNAUTHORIZED,
                "session_expired",
                "the session has ended; POST /api/login again",
            )
        } else {
            error(
                StatusCode::UNAUTHORIZED,
                "login_required",
                "log in first: POST /api/login {\"user\", \"password\", \"code\"}",
            )
        };
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Cookie"));
        return r;
    };
    if needed == Role::Operator && session.role != Role::Operator {
        warn!(%peer, user = %session.user, path = %req.uri().path(), "admin: action refused to a viewer");
        let path = req.uri().path().to_owned();
        let _ = auth
            .record(
                "action",
                Some(&session.user),
                peer,
                json!({"path": path, "session": session.id}),
                "forbidden",
            )
            .await;
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "actions need the operator role",
        );
    }
    req.extensions_mut().insert(session);
    next.run(req).await
}

fn names(v: &[String]) -> &[String] {
    // A line has room for a few dozen names; the counts are whole.
    &v[..v.len().min(20)]
}

impl Auth {
    /// Re-reads the users file (`POST /api/actions/reload`): the running
    /// users are replaced, and the sessions of users removed, or whose
    /// role, password or secret changed, end. A file that does not read
    /// leaves the running users as they were (the error says why).
    pub(super) async fn reload_users(&self) -> Result<UsersReloaded, String> {
        let path = self.users_path.clone();
        let new = tokio::task::spawn_blocking(move || Users::load(&path))
            .await
            .unwrap_or_else(|e| Err(format!("reload task: {e}")))?;
        let old = self.users.load_full();
        let added: Vec<String> = new
            .iter()
            .filter(|u| old.get(&u.name).is_none())
            .map(|u| u.name.clone())
            .collect();
        let removed: Vec<String> = old
            .iter()
            .filter(|u| new.get(&u.name).is_none())
            .map(|u| u.name.clone())
            .collect();
        let changed: Vec<String> = new
            .iter()
            .filter(|u| {
                old.get(&u.name).is_some_and(|o| {
                    o.role != u.role
                        || o.password_hash() != u.password_hash()
                        || o.totp_secret() != u.totp_secret()
                })
            })
            .map(|u| u.name.clone())
            .collect();
        let new = Arc::new(new);
        self.users.store(new.clone());
        let ended = {
            let mut st = crate::sync::lock(&self.state);
            st.last_step.retain(|name, _| new.get(name).is_some());
            // A user removed, or whose role or credentials changed, logs in
            // again under the new entry.
            st.sessions
                .retain(|s| !removed.contains(&s.user) && !changed.contains(&s.user))
        };
        info!(
            "admin: users file re-read: {} user(s), {} added, {} removed, {} changed, {} session(s) ended",
            new.len(),
            added.len(),
            removed.len(),
            changed.len(),
            ended.len()
        );
        Ok(UsersReloaded {
            users: new.len(),
            added,
            removed,
            changed,
            sessions_ended: ended.len(),
        })
    }
}

/// What a re-read of the users file changed.
pub(super) struct UsersReloaded {
    pub users: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub sessions_ended: usize,
}

impl UsersReloaded {
    /// For the audit trail: the names (a line has room for a few dozen;
    /// the counts are whole).
    pub fn details(&self) -> serde_json::Value {
        json!({
            "users": self.users,
            "added": names(&self.added),
            "removed": names(&self.removed),
            "changed": names(&self.changed),
            "sessions_ended": self.sessions_ended,
        })
    }
}

/// The caller's session, `GET /api/session` (a viewer's check that the
/// cookie works; `null` fields without a users file).
pub(super) async fn whoami(req: Request) -> Response {
    let session = req.extensions().get::<Session>();
    json(
        StatusCode::OK,
        &json!({
            "user": session.map(|s| s.user.as_str()),
            "role": session.map(|s| s.role),
            "session": session.map(|s| s.id.as_str()),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_past_the_budget_are_counted_not_recorded() {
        let mut b = FailureBudget::default();
        for _ in 0..FAILURES_RECORDED_PER_SEC {
            assert_eq!(b.take(100), Some(0));
        }
        assert_eq!(b.take(100), None);
        assert_eq!(b.take(100), None);
        assert_eq!(b.take(101), Some(2), "the next second says how many");
        assert_eq!(b.take(101), Some(0));
    }
}
