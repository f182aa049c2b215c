//! `POST /api/v1/studies/{uid}/feedback`: a radiologist agrees or disagrees with a
//! result; the record is stored, audited and handed to delivery.

use super::{parse_json, source, Request};
use crate::audit::{Action, Event};
use crate::console::feedback;
use crate::console::reply::{self, ApiError};
use crate::console::sessions::Session;
use crate::console::Console;
use serde::Deserialize;
use warp::http::StatusCode;
use warp::reply::Response;

/// Body of the feedback request (a field it does not know is refused).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedbackBody {
    agree: bool,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    finding: Option<String>,
}

/// Stores, audits and queues one feedback record (201 with the record).
pub(super) async fn give(
    c: &Console,
    req: &Request,
    s: &Session,
    uid: &str,
) -> Result<Response, ApiError> {
    let body: FeedbackBody = parse_json(req)?;
    if body.comment.chars().count() > feedback::MAX_COMMENT {
        return Err(ApiError::BadRequest(format!(
            "comment longer than {} characters",
            feedback::MAX_COMMENT
        )));
    }
    let rec = c.store.study(uid)?.ok_or(ApiError::NotFound)?;
    // Feedback is bounded before anything is stored: per study and user, per user and
    // hour, and not at all while the delivery queue is nearly full (received studies are
    // refused once it is full, and feedback must never be what fills it).
    if feedback::given_by(&c.store, uid, &s.user)? >= feedback::MAX_PER_USER_AND_STUDY {
        return Err(ApiError::TooMany(format!(
            "at most {} feedback records per user and study",
            feedback::MAX_PER_USER_AND_STUDY
        )));
    }
    if !c.feedback.has_room() {
        return Err(ApiError::Busy(
            "the delivery queue is nearly full: feedback is taken again once it drains \
             (the room left is kept for the results of received studies)"
                .into(),
        ));
    }
    c.limits
        .feedback_rate
        .try_take(s.user.clone())
        .map_err(|wait| {
            ApiError::TooMany(format!(
                "at most {} feedback records an hour per user; retry in {} s",
                crate::console::limits::FEEDBACK_PER_USER_PER_HOUR,
                wait.as_secs().max(1)
            ))
        })?;
    let finding = match body.finding.filter(|f| !f.is_empty()) {
        Some(named) => Some(model_code(c, uid, &named)?),
        None => None,
    };
    let f = feedback::Feedback {
        study_uid: uid.to_string(),
        user: s.user.clone(),
        agree: body.agree,
        comment: body.comment,
        finding,
        result_version: rec.result_version,
        at_ms: crate::clock::now_millis(),
    };
    feedback::store(&c.store, &f)?;
    c.audit.append(
        Event::new(&s.user, Action::Feedback, uid)
            .from(&source(req))
            .detail(format!(
                "{}{}",
                if f.agree { "agree" } else { "disagree" },
                f.finding
                    .as_ref()
                    .map(|x| format!(" on {x}"))
                    .unwrap_or_default()
            )),
    )?;
    c.feedback.queue_feedback(&f, &s.role.to_string())?;
    c.store.flush().await?;
    Ok(reply::json(StatusCode::CREATED, &f))
}

/// The code of the study's finding that `named` names (by label or code): feedback on a
/// finding may only name one of the model's labels, since it reaches the cloud and free
/// text could carry anything (a name, a note). The code is what the cloud's reports name
/// the finding by (their `label`), so feedback joins them.
fn model_code(c: &Console, uid: &str, named: &str) -> Result<String, ApiError> {
    let result = crate::store::results::latest_result(&c.store, uid)?;
    result
        .iter()
        .flat_map(|r| r.findings.iter())
        .find(|f| f.label == named || f.code == named)
        .map(|f| f.code.clone())
        .ok_or_else(|| {
            ApiError::BadRequest("finding is not one of the model's labels for this study".into())
        })
}
