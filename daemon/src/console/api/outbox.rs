//! `/api/v1/outbox`: delivery by destination, technicians' retry requests, and a peer's
//! own words with a refusal, one entry at a time.

use super::{audit_now, parse_json, source, Request};
use crate::audit::{Action, Event};
use crate::console::reply::{self, ApiError};
use crate::console::sessions::Session;
use crate::console::{outbox_view, Console};
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;

/// A peer's words with an entry's last refusal.
#[derive(Serialize)]
struct PeerText {
    id: u64,
    dest: String,
    report_id: String,
    last_error: Option<String>,
    peer_text: Option<String>,
}

/// Answer of a retry request.
#[derive(Serialize)]
struct Requeued {
    requeued: u64,
}

/// `GET /api/v1/outbox`: read off the runtime's threads, at most
/// [`outbox_view::MAX_PER_DESTINATION`] entries of each destination held.
pub(super) async fn overview(c: &Console) -> Result<Response, ApiError> {
    let delivery = c.delivery.clone();
    let body = tokio::task::spawn_blocking(move || {
        let entries = delivery.first_entries(outbox_view::MAX_PER_DESTINATION)?;
        let view = outbox_view::overview(delivery.as_ref(), &entries, crate::clock::now_millis())?;
        Ok::<_, ApiError>(reply::json(StatusCode::OK, &view))
    })
    .await??;
    Ok(body)
}

/// `POST /api/v1/outbox/retry`: one entry, one destination or all (audited); the walk
/// over the queue runs off the runtime's threads.
pub(super) async fn retry(c: &Console, req: &Request, s: &Session) -> Result<Response, ApiError> {
    let body: outbox_view::RetryBody = parse_json(req)?;
    let which = body.selector()?;
    let delivery = c.delivery.clone();
    let selector = which.clone();
    let requeued = tokio::task::spawn_blocking(move || delivery.retry(&selector)).await??;
    audit_now(
        c,
        Event::new(&s.user, Action::Other, "outbox")
            .from(&source(req))
            .detail(format!(
                "retry {}: {requeued} entries re-queued",
                outbox_view::describe(&which)
            )),
    )
    .await?;
    Ok(reply::json(StatusCode::OK, &Requeued { requeued }))
}

/// `GET /api/v1/outbox/{id}/peer-text`: the peer's own words with entry `id`'s last
/// refusal (a RIS's MSA-3 may name the patient: "patient 123456 SMITH not found"), which
/// the outbox list leaves out; each read is audited as a view of patient data.
pub(super) async fn peer_text(
    c: &Console,
    req: &Request,
    s: &Session,
    id: &str,
) -> Result<Response, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound)?;
    let delivery = c.delivery.clone();
    let entry = tokio::task::spawn_blocking(move || delivery.entry(id))
        .await??
        .ok_or(ApiError::NotFound)?;
    if entry.peer_text.is_some() {
        audit_now(
            c,
            Event::new(&s.user, Action::View, "outbox")
                .from(&source(req))
                .detail(format!(
                    "the {}'s words with the refusal of entry {id} (report {})",
                    entry.dest, entry.report_id
                )),
        )
        .await?;
    }
    Ok(reply::json(
        StatusCode::OK,
        &PeerText {
            id,
            dest: entry.dest.name(),
            report_id: entry.report_id,
            last_error: entry.last_error,
            peer_text: entry.peer_text,
        },
    ))
}
