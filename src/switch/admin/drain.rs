//! `POST /api/actions/drain`: an operator asks the switch to stop in
//! order, as SIGTERM does: `/ready` answers 503 from then on, the
//! listeners stop, requests in flight finish (within
//! `limits.shutdown_grace_ms`), links sign off, the process exits 0. With
//! `[admin] users_file` only an operator's session gets here, and the
//! request is in the audit trail before anything stops (fail closed: a
//! trail that can not record it refuses the drain).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::audit::AuditError;
use super::auth::{audit_unavailable, client_addr};
use super::sessions::Session;
use super::{AdminState, error, json};

pub(super) async fn drain(State(s): State<Arc<AdminState>>, req: Request) -> Response {
    let peer = client_addr(&req);
    let session = req.extensions().get::<Session>().cloned();
    if let Some(auth) = &s.auth {
        let Some(session) = &session else {
            return error(StatusCode::UNAUTHORIZED, "login_required", "log in first");
        };
        if !auth.audit_healthy() {
            return audit_unavailable(&AuditError::Failed("an earlier write failed".into()));
        }
        let details = json!({"action": "drain", "session": session.id});
        if let Err(e) = auth
            .record("action", Some(&session.user), peer, details, "ok")
            .await
        {
            return audit_unavailable(&e);
        }
    }
    let already = s.shared.drain_requested.is_cancelled();
    tracing::info!(
        operator = session.as_ref().map(|s| s.user.as_str()),
        "drain requested over the admin API"
    );
    s.shared.drain_requested.cancel();
    json(
        StatusCode::ACCEPTED,
        &json!({"draining": true, "already": already}),
    )
}
