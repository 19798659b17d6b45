//! `POST /api/actions/cutover`: an operator closes the business day
//! (`switchyard settle cutover`). With `[admin] users_file` the guard has
//! let only an operator's session through, and the action goes into the
//! audit trail, refused ones too; without operators (loopback only) it
//! is open, as every route there.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::audit::AuditError;
use super::auth::{audit_unavailable, client_addr};
use super::sessions::Session;
use super::{AdminState, error, json};
use crate::switch::settlement::{CutoverRefused, Trigger};

pub(super) async fn cutover(State(s): State<Arc<AdminState>>, req: Request) -> Response {
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
    let shared = s.shared();
    let day = &shared.business_day;
    let before = day.current();
    let result = day.cutover(Trigger::Operator, crate::clock::unix_now_ms());
    if let (Some(auth), Some(session)) = (&s.auth, &session) {
        let (details, outcome) = match &result {
            Ok(done) => (
                json!({"action": "cutover", "from": done.from.to_string(),
                       "to": done.to.to_string(), "session": session.id}),
                "ok".to_owned(),
            ),
            Err(why) => (
                json!({"action": "cutover", "business_date": before.to_string(),
                       "session": session.id}),
                format!("refused: {why}"),
            ),
        };
        if let Err(e) = auth
            .record("action", Some(&session.user), peer, details, &outcome)
            .await
            && result.is_ok()
        {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit_failed",
                &format!("the cutover was made, but its audit line was not written: {e}"),
            );
        }
    }
    match result {
        Ok(done) => json(
            StatusCode::OK,
            &json!({
                "business_date": done.to.to_string(),
                "previous": done.from.to_string(),
                "at": crate::clock::rfc3339(done.at_ms / 1000),
            }),
        ),
        Err(CutoverRefused::JournalRefused) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "journal_refused",
            &CutoverRefused::JournalRefused.to_string(),
        ),
        Err(why) => error(StatusCode::CONFLICT, "not_due", &why.to_string()),
    }
}
