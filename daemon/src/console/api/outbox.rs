//! `/api/v1/outbox`: delivery by destination, and technicians' retry requests.

use super::{audit_now, parse_json, source, Request};
use crate::audit::{Action, Event};
use crate::console::reply::{self, ApiError};
use crate::console::sessions::Session;
use crate::console::{outbox_view, Console};
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;

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
