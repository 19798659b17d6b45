//! Operators' link and block actions, and the block list:
//!
//! * `POST /api/actions/link/stop` `{"acquirer", "link"}`: the link drains
//!   (takes no new request: terminals route to the acquirer's other links,
//!   or answer 91 / stand in as for a link down), signs off, and stays down.
//!   `link` is its name as `/api/links` shows it (`acquirer-a#0`) or its
//!   number (`0`).
//! * `POST /api/actions/link/start`: connects and signs on again.
//! * `POST /api/actions/block` `{"pan"}` or `{"bin"}` and
//!   `/api/actions/unblock`: a card (12-19 digits, Luhn-valid; kept only
//!   as its keyed hash, echoed only masked) or a BIN (6-8 digits); a
//!   blocked one is declined before routing (`switch::blocks`).
//! * `GET /api/blocks`: the list, hashes and BINs only.
//!
//! As every action: an operator's (the guard refuses a viewer 403), in
//! the audit trail with its result (refusals too), refused 503 first if
//! the trail can not be written. A request body is read only as JSON of
//! the documented shape; no error quotes it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::audit::AuditError;
use super::auth::{audit_unavailable, client_addr};
use super::sessions::Session;
use super::{AdminState, MAX_BODY, error, json};
use crate::switch::acquirer::link::Want;
use crate::switch::blocks::{BlockError, Blocked, Target};
use crate::switch::reload::Control;

/// Who acts, checked: the session (with operators) and a trail that
/// can be written.
struct Actor {
    peer: std::net::SocketAddr,
    session: Option<Session>,
}

impl Actor {
    fn user(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.user.as_str())
    }
}

/// The session and the trail checked, the body read as `T`.
async fn begin<T: serde::de::DeserializeOwned>(
    s: &AdminState,
    req: Request,
    shape: &str,
) -> Result<(Actor, T, Arc<Control>), Response> {
    let actor = Actor {
        peer: client_addr(&req),
        session: req.extensions().get::<Session>().cloned(),
    };
    if let Some(auth) = &s.auth {
        if actor.session.is_none() {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "login_required",
                "log in first",
            ));
        }
        if !auth.audit_healthy() {
            return Err(audit_unavailable(&AuditError::Failed(
                "an earlier write failed".into(),
            )));
        }
    }
    let Some(control) = s.control.clone() else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_switch",
            "this endpoint runs without a switch to act on",
        ));
    };
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "the body could not be read",
            )
        })?;
    // Never the parser's message: it may quote the body (a card number).
    let body = zeroize::Zeroizing::new(body.to_vec());
    let value: T = serde_json::from_slice(&body).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            &format!("the body must be JSON: {shape}"),
        )
    })?;
    Ok((actor, value, control))
}

/// Records the action; an audit line not written after the action was
/// made is a 500 (the action stands).
async fn finish(
    s: &AdminState,
    actor: &Actor,
    mut details: Value,
    result: &str,
    made: bool,
) -> Option<Response> {
    let (Some(auth), Some(session)) = (&s.auth, &actor.session) else {
        return None;
    };
    details["session"] = json!(session.id);
    match auth
        .record("action", Some(&session.user), actor.peer, details, result)
        .await
    {
        Err(e) if made => Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit_failed",
            &format!("the action was made, but its audit line was not written: {e}"),
        )),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    acquirer: String,
    link: String,
}

const LINK_SHAPE: &str = "{\"acquirer\": \"NAME\", \"link\": \"NAME#N\" or \"N\"}";

pub(super) async fn link_stop(State(s): State<Arc<AdminState>>, req: Request) -> Response {
    link_action(&s, req, Want::Stop).await
}

pub(super) async fn link_start(State(s): State<Arc<AdminState>>, req: Request) -> Response {
    link_action(&s, req, Want::Run).await
}

async fn link_action(s: &AdminState, req: Request, want: Want) -> Response {
    let (actor, body, control) = match begin::<LinkBody>(s, req, LINK_SHAPE).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let action = if want == Want::Stop {
        "link_stop"
    } else {
        "link_start"
    };
    let result = control
        .supervisor()
        .command(&body.acquirer, &body.link, want);
    let outcome = if result.is_ok() { "ok" } else { "refused" };
    metrics::counter!(crate::telemetry::LINK_ACTIONS,
        "action" => if want == Want::Stop { "stop" } else { "start" }, "result" => outcome)
    .increment(1);
    let details = match &result {
        Ok((name, was)) => json!({"action": action, "acquirer": body.acquirer, "link": name,
                                  "was": was.name()}),
        Err(_) => json!({"action": action, "acquirer": body.acquirer, "link": body.link}),
    };
    let audit_result = match &result {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("refused: {e}"),
    };
    if let Some(r) = finish(s, &actor, details, &audit_result, result.is_ok()).await {
        return r;
    }
    match result {
        Ok((name, was)) => {
            tracing::info!(operator = actor.user(), link = %name, was = was.name(),
                "admin: link {} requested", if want == Want::Stop { "stop" } else { "start" });
            json(
                StatusCode::ACCEPTED,
                &json!({
                    "link": name,
                    "action": if want == Want::Stop { "stop" } else { "start" },
                    "was": was.name(),
                }),
            )
        }
        Err(e) => error(StatusCode::NOT_FOUND, "no_such_link", &e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    pan: Option<String>,
    bin: Option<String>,
}

impl Drop for BlockBody {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(p) = &mut self.pan {
            p.zeroize();
        }
    }
}

const BLOCK_SHAPE: &str = "{\"pan\": \"CARD DIGITS\"} or {\"bin\": \"6 TO 8 DIGITS\"}";

/// What an answer or the trail may show of a block: the hash and the
/// masked PAN of a card, the BIN.
fn shown(what: &Blocked, masked: Option<&str>) -> Value {
    match what {
        Blocked::Card { card_hash } => {
            json!({"kind": "card", "card_hash": card_hash, "masked_pan": masked})
        }
        Blocked::Bin { bin } => json!({"kind": "bin", "bin": bin}),
    }
}

fn block_error(e: &BlockError) -> Response {
    let (status, kind) = match e {
        BlockError::Full(_) => (StatusCode::CONFLICT, "block_list_full"),
        BlockError::NotFound => (StatusCode::NOT_FOUND, "not_blocked"),
        BlockError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        BlockError::Write(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_written"),
    };
    error(status, kind, &e.to_string())
}

pub(super) async fn block(State(s): State<Arc<AdminState>>, req: Request) -> Response {
    block_action(&s, req, true).await
}

pub(super) async fn unblock(State(s): State<Arc<AdminState>>, req: Request) -> Response {
    block_action(&s, req, false).await
}

async fn block_action(s: &AdminState, req: Request, add: bool) -> Response {
    let (actor, body, control) = match begin::<BlockBody>(s, req, BLOCK_SHAPE).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let action = if add { "block" } else { "unblock" };
    let (what, masked) = match Target::parse(body.pan.as_deref(), body.bin.as_deref()) {
        Ok(t) => {
            let masked = match &t {
                Target::Card(d) => Some(crate::iso8583::MaskedPan::of(d).to_string()),
                Target::Bin(_) => None,
            };
            (control.blocked_of(&t), masked)
        }
        Err(e) => {
            let _ = finish(
                s,
                &actor,
                json!({"action": action}),
                &format!("refused: {e}"),
                false,
            )
            .await;
            return block_error(&e);
        }
    };
    drop(body);
    let result = if add {
        control
            .block(what.clone(), actor.user().map(str::to_owned))
            .await
            .map(|added| if added { "added" } else { "already blocked" })
    } else {
        control.unblock(what.clone()).await.map(|_| "removed")
    };
    let mut details = shown(&what, masked.as_deref());
    details["action"] = json!(action);
    let audit_result = match &result {
        Ok(r) => format!("ok: {r}"),
        Err(e) => format!("refused: {e}"),
    };
    if let Some(r) = finish(s, &actor, details, &audit_result, result.is_ok()).await {
        return r;
    }
    match result {
        Ok(r) => {
            tracing::info!(operator = actor.user(), action, block = %shown(&what, masked.as_deref()),
                "admin: {action}: {r}");
            let shared = s.shared();
            json(
                StatusCode::OK,
                &json!({
                    action: shown(&what, masked.as_deref()),
                    "result": r,
                    "blocks": {"cards": shared.blocks.cards(), "bins": shared.blocks.bins()},
                }),
            )
        }
        Err(e) => block_error(&e),
    }
}

/// `GET /api/blocks`: every block, hashes and BINs only.
pub(super) async fn blocks(State(s): State<Arc<AdminState>>) -> Response {
    let Some(control) = &s.control else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_switch",
            "this endpoint runs without a switch",
        );
    };
    let (entries, max) = control.blocks();
    let shared = s.shared();
    let show = |e: &crate::switch::blocks::Entry| {
        let mut v = shown(&e.what, None);
        if let Value::Object(m) = &mut v {
            m.remove("masked_pan");
            m.remove("kind");
        }
        v["added_at"] = json!(crate::clock::rfc3339(e.added_at));
        v["added_by"] = json!(e.added_by);
        v
    };
    let cards: Vec<Value> = entries
        .iter()
        .filter(|e| matches!(e.what, Blocked::Card { .. }))
        .map(show)
        .collect();
    let bins: Vec<Value> = entries
        .iter()
        .filter(|e| matches!(e.what, Blocked::Bin { .. }))
        .map(show)
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "response_code": String::from_utf8_lossy(&shared.blocks.response_code),
            "max_entries": max,
            "cards": cards,
            "bins": bins,
        }),
    )
}
