//! `POST /api/actions/reload`: the config file read again and put in force
//! as the next generation (`reload::Control`), and the users file read
//! again (`Auth::reload_users`). With operators only an operator's session
//! gets here (the guard), and the action is in the audit trail with who,
//! what changed (keys, acquirers and links, never a value) and the result,
//! refusals too; a trail that can not be written refuses it first (503).
//! SIGHUP reloads the config the same way ([`reload_on_signal`]), recorded
//! without a user.
//!
//! Answers: 200 with what changed (`"config": {"result": "ok" |
//! "unchanged", "generation", "changed", ...}`); 422 for a file that does
//! not check (`invalid_config`, every problem by key) or a users file that
//! does not read; 409 for keys that need a restart (`restart_required`,
//! named); the running generation stays in every refusal.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::audit::{AuditError, Event};
use super::auth::{UsersReloaded, audit_unavailable, client_addr};
use super::sessions::Session;
use super::{AdminState, error, json};
use crate::switch::reload::{Refusal, Reloaded, Source};

/// Problems listed in an answer or an audit line at most.
const MAX_PROBLEMS: usize = 20;

fn config_details(r: &Result<Reloaded, Refusal>) -> Value {
    match r {
        Ok(done) => serde_json::to_value(done).unwrap_or(Value::Null),
        Err(refusal) => json!({
            "result": refusal.result(),
            "problems": problems(refusal),
        }),
    }
}

fn problems(refusal: &Refusal) -> Vec<Value> {
    refusal
        .problems()
        .into_iter()
        .take(MAX_PROBLEMS)
        .map(|p| json!({"path": p.path, "message": p.message}))
        .collect()
}

/// The refusal as an answer: 422 invalid, 409 restart required, 500
/// otherwise; the running generation in it.
fn refused(refusal: &Refusal, generation: u64, users: Option<Value>) -> Response {
    let (status, kind) = match refusal {
        Refusal::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config"),
        Refusal::RestartRequired(_) => (StatusCode::CONFLICT, "restart_required"),
        Refusal::NoFile => (StatusCode::CONFLICT, "no_config_file"),
        Refusal::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "reload_failed"),
    };
    let mut body = json!({
        "error": kind,
        "message": refusal.message(),
        "problems": problems(refusal),
        "generation": generation,
    });
    if let Some(u) = users {
        body["users_file"] = u;
    }
    json(status, &body)
}

pub(super) async fn reload(State(s): State<Arc<AdminState>>, req: Request) -> Response {
    let peer = client_addr(&req);
    let session = req.extensions().get::<Session>().cloned();
    if let Some(auth) = &s.auth {
        if session.is_none() {
            return error(StatusCode::UNAUTHORIZED, "login_required", "log in first");
        }
        // Fail closed: nothing is done that the trail could not record.
        if !auth.audit_healthy() {
            return audit_unavailable(&AuditError::Failed("an earlier write failed".into()));
        }
    }
    let users: Option<Result<UsersReloaded, String>> = match &s.auth {
        Some(auth) => Some(auth.reload_users().await),
        None => None,
    };
    let config: Option<Result<Reloaded, Refusal>> = match &s.control {
        Some(c) if c.config_path().is_some() => Some(c.reload(Source::Api).await),
        _ => None,
    };
    if users.is_none() && config.is_none() {
        return refused(&Refusal::NoFile, s.shared().generation, None);
    }
    let mut failures = Vec::new();
    if let Some(Err(e)) = &users {
        tracing::warn!(
            user = session.as_ref().map(|s| s.user.as_str()),
            "admin: reload of the users file refused: {e}"
        );
        failures.push(format!("users_file: {e}"));
    }
    if let Some(Err(refusal)) = &config {
        failures.push(format!("config: {}", refusal.message()));
    }
    if let (Some(auth), Some(session)) = (&s.auth, &session) {
        let mut details = json!({"action": "reload", "session": session.id});
        match &users {
            Some(Ok(u)) => details["users_file"] = u.details(),
            Some(Err(e)) => details["users_file"] = json!({"error": e}),
            None => {}
        }
        details["config"] = match &config {
            Some(r) => config_details(r),
            None => json!({"result": "skipped", "why": Refusal::NoFile.message()}),
        };
        // Compatibility: the users file's figures where they were.
        if let Some(Ok(u)) = &users {
            for k in ["users", "added", "removed", "changed", "sessions_ended"] {
                details[k] = u.details()[k].clone();
            }
            details["what"] = json!("users_file");
        }
        let result = if failures.is_empty() {
            "ok".to_owned()
        } else {
            format!("failed: {}", failures.join("; "))
        };
        if let Err(e) = auth
            .record("action", Some(&session.user), peer, details, &result)
            .await
            && failures.is_empty()
        {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit_failed",
                &format!("the reload was made, but its audit line was not written: {e}"),
            );
        }
    }
    let users_answer = users.as_ref().map(|u| match u {
        Ok(u) => json!({
            "users": u.users,
            "added": u.added.len(),
            "removed": u.removed.len(),
            "changed": u.changed.len(),
            "sessions_ended": u.sessions_ended,
        }),
        Err(e) => json!({"error": e}),
    });
    if let Some(Err(refusal)) = &config {
        return refused(refusal, s.shared().generation, users_answer);
    }
    if let Some(Err(e)) = &users {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload_failed",
            &format!("{e}; the running users are unchanged"),
        );
    }
    let mut body = json!({
        "reloaded": [],
        "generation": s.shared().generation,
    });
    let mut what = Vec::new();
    if let Some(Value::Object(m)) = &users_answer {
        for (k, v) in m {
            body[k] = v.clone();
        }
        what.push("users_file");
    }
    match &config {
        Some(Ok(done)) => {
            body["config"] = serde_json::to_value(done).unwrap_or(Value::Null);
            what.push("config");
        }
        _ => body["config"] = Value::Null,
    }
    body["reloaded"] = json!(what);
    json(StatusCode::OK, &body)
}

/// SIGHUP: the config file read again as `POST /api/actions/reload`
/// reads it, recorded in the audit trail (no user: the signal's) when
/// there are operators.
pub async fn reload_on_signal(s: &AdminState, source: Source) -> Result<Reloaded, Refusal> {
    let Some(control) = &s.control else {
        return Err(Refusal::NoFile);
    };
    if let Some(auth) = &s.auth
        && !auth.audit_healthy()
    {
        let why = "the audit trail can not be written; nothing is reloaded";
        tracing::warn!("config reload on {}: {why}", source.name());
        return Err(Refusal::Failed(why.into()));
    }
    let r = control.reload(source).await;
    if let Some(auth) = &s.auth {
        let result = match &r {
            Ok(_) => "ok".to_owned(),
            Err(refusal) => format!("failed: config: {}", refusal.message()),
        };
        let _ = auth
            .audit_event(Event {
                event: "action",
                user: None,
                source: None,
                details: json!({"action": "reload", "trigger": source.name(),
                                "config": config_details(&r)}),
                result,
            })
            .await;
    }
    r
}
