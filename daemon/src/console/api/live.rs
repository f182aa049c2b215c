//! `GET /api/v1/events`: live study events for the worklist, as server-sent events.

use crate::console::reply::ApiError;
use crate::console::sessions::Session;
use crate::console::{events, Console};
use futures::StreamExt;
use std::convert::Infallible;
use std::sync::Arc;
use warp::reply::Response;
use warp::Reply;

/// How often a live event stream checks that its session still lives (besides being
/// woken at once by every ended session).
pub const STREAM_SESSION_CHECK: std::time::Duration = std::time::Duration::from_secs(5);
/// Interval of the keep-alive comments of event streams.
pub const STREAM_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Milliseconds left at `now_ms` of a session created at `created_ms` that lives `max_age`
/// (0 once it has ended); no lifetime, however long, wraps round to an end in the past.
fn remaining_ms(created_ms: i64, max_age: std::time::Duration, now_ms: i64) -> u64 {
    let max_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    let left = created_ms.saturating_add(max_ms).saturating_sub(now_ms);
    u64::try_from(left).unwrap_or(0)
}

/// The instant `ms` milliseconds from now, or thirty years from now when the clock cannot
/// represent that (a stream that outlives its session is ended by the session checks).
fn deadline_in(ms: u64) -> tokio::time::Instant {
    const FAR: std::time::Duration = std::time::Duration::from_secs(30 * 365 * 86_400);
    let now = tokio::time::Instant::now();
    now.checked_add(std::time::Duration::from_millis(ms).min(FAR))
        .unwrap_or(now)
}

/// What woke an event stream.
enum Wake {
    Event(Result<events::StudyEvent, tokio::sync::broadcast::error::RecvError>),
    Check,
    Ended,
}

/// The live study events of a session (server-sent events), until the session ends
/// (logout, user removed, disabled or role changed, idle or absolute expiry) or the
/// daemon stops. Each stream holds one of `console.max_event_streams` slots, at most
/// `console.max_event_streams_per_user` of them for one user.
pub(super) fn event_stream(
    c: &Arc<Console>,
    token: String,
    s: &Session,
) -> Result<Response, ApiError> {
    use tokio::sync::broadcast::error::RecvError;
    use warp::sse::Event as Sse;
    let permit = c
        .limits
        .streams
        .try_take(s.user.clone())
        .map_err(|e| match e {
            crate::console::limits::Refused::Total(_) => {
                ApiError::Busy("the console serves as many event streams as it can".into())
            }
            crate::console::limits::Refused::PerKey(n) => ApiError::TooMany(format!(
            "this user has {n} live event streams open already; close a tab or log out elsewhere"
        )),
        })?;
    let rx = c.events.subscribe();
    let ended = c.sessions.ended();
    let end = deadline_in(remaining_ms(
        s.created_ms,
        c.sessions.max_age(),
        crate::clock::now_millis(),
    ));
    let first = futures::stream::once(async {
        Ok::<_, Infallible>(Sse::default().event("ready").data("{}"))
    });
    let check = tokio::time::interval(STREAM_SESSION_CHECK);
    let state = (rx, ended, check, c.clone(), token, permit);
    let rest = futures::stream::unfold(state, move |mut st| async move {
        loop {
            let (rx, ended, check, c, token, _) = &mut st;
            let wake = tokio::select! {
                e = rx.recv() => Wake::Event(e),
                _ = check.tick() => Wake::Check,
                r = ended.changed() => if r.is_ok() { Wake::Check } else { Wake::Ended },
                // The session's absolute lifetime ended.
                _ = tokio::time::sleep_until(end) => Wake::Ended,
            };
            let event = match wake {
                Wake::Ended | Wake::Event(Err(RecvError::Closed)) => return None,
                Wake::Check => {
                    if c.sessions.is_live(token).unwrap_or(false) {
                        continue;
                    }
                    return None;
                }
                Wake::Event(Ok(ev)) => Sse::default()
                    .event("study")
                    .data(serde_json::to_string(&ev).unwrap_or_default()),
                Wake::Event(Err(RecvError::Lagged(_))) => Sse::default().event("reload").data("{}"),
            };
            return Some((Ok(event), st));
        }
    });
    let stream = first.chain(rest);
    let mut r = warp::sse::reply(
        warp::sse::keep_alive()
            .interval(STREAM_KEEP_ALIVE)
            .stream(stream),
    )
    .into_response();
    // The stream names studies: kept by no cache, like every answer of the console (the
    // event-stream reply says only `no-cache`).
    r.headers_mut().insert(
        warp::http::header::CACHE_CONTROL,
        warp::http::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The time left of a session: its lifetime from its creation, none once past; a
    /// lifetime too long for milliseconds in an i64 saturates (it wrapped to an end in
    /// the past, or a panic adding it to the clock).
    #[test]
    fn the_time_left_of_a_session_never_wraps() {
        let hour = Duration::from_secs(3600);
        assert_eq!(remaining_ms(1_000, hour, 1_000), 3_600_000);
        assert_eq!(remaining_ms(1_000, hour, 601_000), 3_000_000);
        assert_eq!(remaining_ms(1_000, hour, 1_000 + 3_600_000), 0);
        assert_eq!(remaining_ms(1_000, hour, i64::MAX), 0);
        let now = 1_700_000_000_000;
        for huge in [Duration::MAX, Duration::from_secs(u64::MAX / 1000)] {
            let left = remaining_ms(now, huge, now);
            assert_eq!(left, u64::try_from(i64::MAX - now).unwrap(), "{huge:?}");
        }
        // Any of them is a deadline the clock can hold.
        let start = tokio::time::Instant::now();
        assert!(deadline_in(u64::MAX) > start + Duration::from_secs(86_400 * 365));
        assert!(deadline_in(0) >= start);
    }
}
