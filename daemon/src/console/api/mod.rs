//! The console's request handling: one warp filter takes every request, [`handle`] finds
//! its route in the role table, checks the session, role and CSRF token, and dispatches
//! to the handler of the route's [`Endpoint`].
//!
//! Patient data views, searches, feedback, logins and user changes are appended to the
//! audit trail, and the store is flushed before the answer goes out.

mod audit;
mod feedback;
mod live;
mod outbox;
mod results;
mod session;
mod studies;
mod system;
mod upload;
mod users;

pub use audit::{Verified, VERIFIED_FOR};
pub use live::{STREAM_KEEP_ALIVE, STREAM_SESSION_CHECK};
pub use results::ResultView;
pub(in crate::console) use session::throttled;
pub use studies::{StudyView, WorklistRow};

use super::reply::{self, ApiError};
use super::roles::{self, Access, Endpoint, NoMatch};
use super::server::Peer;
use super::sessions::{self, Activity, Session};
use super::{assets, Console};
use crate::audit::Event;
use bytes::Buf;
use futures::StreamExt;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

/// Header the page sets (`X-Background: 1`) on the requests it makes on its own (the
/// worklist's reload after a live event): they are answered as any other but are not the
/// user's activity, so they do not restart the session's idle timer.
pub const BACKGROUND_HEADER: &str = "x-background";

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Most studies in one worklist answer.
pub const MAX_STUDIES: usize = 1000;

/// One request as the handlers see it.
#[derive(Debug)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path (no query).
    pub path: String,
    /// Decoded query parameters.
    pub query: HashMap<String, String>,
    /// Headers.
    pub headers: HeaderMap,
    /// Client address.
    pub peer: Option<IpAddr>,
    /// Body (at most [`MAX_BODY`], or `console.max_upload_mb` for uploads).
    pub body: Vec<u8>,
}

type Body = Result<Vec<u8>, ApiError>;

/// `n` bytes as the 413 answer states the limit (`64 KB`, `64 MB`).
fn size_text(n: usize) -> String {
    if n >= 1024 * 1024 {
        format!("{} MB", n / (1024 * 1024))
    } else {
        format!("{} KB", n / 1024)
    }
}

/// How a request's body is read.
enum BodyPlan {
    /// Read at most this many bytes.
    Read(usize),
    /// An upload: read at most this many bytes while holding the user's upload slot.
    Upload(usize, super::limits::Slot<String>),
    /// Not read: the request will be refused (401/403) whatever its body.
    Skip,
}

/// How this request's body is read: uploads from a session allowed to upload may send
/// `console.max_upload_mb` once they hold an upload slot (429 when the user already
/// sends as many uploads as allowed, 503 when the console does; then the body is never
/// read), everything else [`MAX_BODY`]. An upload without a session, with a role that may
/// not upload or without the session's CSRF token is not read and takes no slot, so the
/// answer is the 401 or 403 at once, whatever its size.
fn body_plan(
    console: &Console,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<BodyPlan, ApiError> {
    let Ok(m) = roles::find(method.as_str(), path) else {
        return Ok(BodyPlan::Read(MAX_BODY));
    };
    if m.route.endpoint != Endpoint::Upload {
        return Ok(BodyPlan::Read(MAX_BODY));
    }
    let activity = activity(m.route.endpoint, headers);
    let Some(s) = session_token(headers)
        .ok()
        .flatten()
        .and_then(|t| console.sessions.lookup(&t, activity).ok().flatten())
        .filter(|s| m.route.access.allows(s.role) && csrf_matches(headers, s))
    else {
        return Ok(BodyPlan::Skip);
    };
    let slot = console
        .limits
        .uploads
        .try_take(s.user.clone())
        .map_err(|e| match e {
            super::limits::Refused::PerKey(n) => {
                ApiError::TooMany(format!("at most {n} uploads at a time per user"))
            }
            super::limits::Refused::Total(_) => {
                ApiError::Busy("the console receives as many uploads as it can".into())
            }
        })?;
    console
        .limits
        .upload_rate
        .try_take(s.user.clone())
        .map_err(|wait| {
            ApiError::TooMany(format!(
                "at most {} uploads an hour per user (each is analysed in the queue of received \
                 studies); retry in {} s",
                super::limits::UPLOADS_PER_USER_PER_HOUR,
                wait.as_secs().max(1)
            ))
        })?;
    Ok(BodyPlan::Upload(console.limits.max_upload, slot))
}

/// Slowest a request body may arrive on average, beyond the first `stall`: a body that
/// trickles in (one byte every few seconds) would otherwise hold its connection for days.
pub const MIN_BODY_BYTES_PER_SEC: u64 = 64 * 1024;

/// Reads a body of at most `limit` bytes: 413 as soon as the declared length or the
/// bytes received pass it (nothing beyond it is buffered), 408 when no byte arrives for
/// `stall`, or when the whole body has not arrived within `stall` plus its size (declared,
/// else `limit`) at [`MIN_BODY_BYTES_PER_SEC`].
async fn read_body<S, B>(
    mut stream: S,
    headers: &HeaderMap,
    limit: usize,
    stall: std::time::Duration,
) -> Body
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let declared = headers
        .get(warp::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(size_text(limit)));
    }
    let size = declared.unwrap_or(limit as u64).min(limit as u64);
    let deadline = tokio::time::Instant::now()
        + stall
        + std::time::Duration::from_secs(size / MIN_BODY_BYTES_PER_SEC + 1);
    let mut out = Vec::new();
    loop {
        let until = deadline.min(tokio::time::Instant::now() + stall);
        let next = tokio::time::timeout_at(until, stream.next())
            .await
            .map_err(|_| ApiError::Timeout)?;
        let Some(chunk) = next else { break };
        let mut chunk = chunk?;
        if out.len() + chunk.remaining() > limit {
            return Err(ApiError::TooLarge(size_text(limit)));
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            out.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(out)
}

/// The single filter of the console: every request goes to [`handle`].
pub fn filter(
    console: Arc<Console>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<Peer>())
        .and(warp::body::stream())
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: HeaderMap,
                  peer: Option<Peer>,
                  body| {
                let console = console.clone();
                async move {
                    let stall = console.limits.header_read;
                    let mut upload_slot = None;
                    let body = match body_plan(&console, &method, path.as_str(), &headers) {
                        Ok(BodyPlan::Read(limit)) => {
                            read_body(Box::pin(body), &headers, limit, stall).await
                        }
                        Ok(BodyPlan::Upload(limit, slot)) => {
                            upload_slot = Some(slot);
                            read_body(Box::pin(body), &headers, limit, stall).await
                        }
                        Ok(BodyPlan::Skip) => Ok(Vec::new()),
                        Err(e) => Err(e),
                    };
                    let query = parse_query(&query);
                    let req = Request {
                        method,
                        path: path.as_str().to_string(),
                        query,
                        headers,
                        peer: peer.map(|p| p.0.ip()),
                        body: Vec::new(),
                    };
                    let resp = match body {
                        Ok(b) if waits_on_other_hosts(&req) => {
                            // Holds an outbound slot instead (taken by its handler): a
                            // peer that never answers keeps nobody else waiting.
                            handle(console, Request { body: b, ..req }).await
                        }
                        Ok(b) => {
                            // A permit only while the handler runs: idle connections
                            // and bodies still arriving hold none.
                            let permit = console.limits.requests.clone().acquire_owned().await;
                            let resp = handle(console, Request { body: b, ..req }).await;
                            drop(permit);
                            resp
                        }
                        Err(e) => e.into_response(),
                    };
                    drop(upload_slot);
                    reply::secure(resp)
                }
            },
        )
}

/// Whether the request's route waits on other hosts ([`Endpoint::waits_on_other_hosts`]).
fn waits_on_other_hosts(req: &Request) -> bool {
    roles::find(req.method.as_str(), &req.path)
        .is_ok_and(|m| m.route.endpoint.waits_on_other_hosts())
}

/// Decodes `a=1&b=x%20y` (also `+` as space).
pub fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The client address of a request, as the audit trail names it.
fn source(req: &Request) -> String {
    req.peer.map(|p| p.to_string()).unwrap_or_default()
}

/// The session token of the request's cookies. A request carrying more than one session
/// cookie is refused rather than served with whichever comes first: only this host can set
/// a `__Host-` cookie, so a second one means the browser's cookies are not what this
/// console set.
fn session_token(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut tokens = headers
        .get_all(warp::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|h| sessions::cookie_values(h, sessions::SESSION_COOKIE));
    let first = tokens.next().map(str::to_string);
    if tokens.next().is_some() {
        return Err(ApiError::DuplicateSession);
    }
    Ok(first)
}

/// Whether the request repeats the session's CSRF token in `X-CSRF-Token` (compared in
/// constant time).
fn csrf_matches(headers: &HeaderMap, s: &Session) -> bool {
    let sent = headers
        .get(sessions::CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    sessions::same_token(sent, &s.csrf)
}

fn is_json(req: &Request) -> bool {
    req.headers
        .get(warp::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// The JSON body of a request (400 unless it is JSON of the expected shape).
pub(in crate::console) fn parse_json<'a, T: Deserialize<'a>>(
    req: &'a Request,
) -> Result<T, ApiError> {
    if !is_json(req) {
        return Err(ApiError::BadRequest(
            "the body must be JSON (Content-Type: application/json)".into(),
        ));
    }
    Ok(serde_json::from_slice(&req.body)?)
}

/// Decodes `body` as each JSON request body of the API, as its handler would (the entry
/// point of the console's fuzz target and its corpus replay).
pub fn fuzz_bodies(body: &[u8]) {
    let _ = serde_json::from_slice::<session::LoginBody>(body);
    let _ = serde_json::from_slice::<feedback::FeedbackBody>(body);
    let _ = serde_json::from_slice::<users::UserBody>(body);
    let _ = serde_json::from_slice::<super::outbox_view::RetryBody>(body);
    let _ = serde_json::from_slice::<super::setup::SetupBody>(body);
}

/// Whether a request to `endpoint` with `headers` is the user's activity: not when the
/// route is not ([`Endpoint::is_user_activity`]), nor when the page marks the request as
/// its own with [`BACKGROUND_HEADER`] `1`.
fn activity(endpoint: Endpoint, headers: &HeaderMap) -> Activity {
    let background = headers
        .get(BACKGROUND_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    if background || !endpoint.is_user_activity() {
        Activity::Background
    } else {
        Activity::User
    }
}

/// The session of a request, when it has a valid one; `activity` tells whether the
/// request restarts the session's idle timer.
pub fn session_of(
    console: &Console,
    req: &Request,
    activity: Activity,
) -> Result<Option<(String, Session)>, ApiError> {
    let Some(token) = session_token(&req.headers)? else {
        return Ok(None);
    };
    Ok(console
        .sessions
        .lookup(&token, activity)?
        .map(|s| (token, s)))
}

/// Routes, authenticates, authorises and dispatches one request.
pub async fn handle(console: Arc<Console>, req: Request) -> Response {
    match route_and_run(console, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Refuses a request a browser made for a page of another origin (`Sec-Fetch-Site` other
/// than `same-origin`, or `none` for a typed address), before its session is looked up:
/// `SameSite=Strict` cookies still reach the console from another host of the same site
/// (`intranet.hospital.local` beside `duli.hospital.local`), whose page could otherwise
/// make a user's browser search studies or export the audit trail in their name. Clients
/// that are not browsers send no such header.
pub(super) fn cross_site(req: &Request) -> Result<(), ApiError> {
    match req
        .headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
    {
        None | Some("same-origin" | "none") => Ok(()),
        Some(_) => Err(ApiError::Forbidden),
    }
}

async fn route_and_run(console: Arc<Console>, req: Request) -> Result<Response, ApiError> {
    let matched = roles::find(req.method.as_str(), &req.path).map_err(|e| match e {
        NoMatch::NotFound => ApiError::NotFound,
        NoMatch::MethodNotAllowed => ApiError::MethodNotAllowed,
        NoMatch::BadParameter => ApiError::BadRequest(
            "a path segment decodes to '/', NUL or bytes that are not UTF-8".into(),
        ),
    })?;
    let route = matched.route;
    if route.endpoint == Endpoint::SessionCheck {
        // Asking must not keep the session alive: no lookup, which would refresh it.
        return session::check(&console, &req);
    }
    let session = if matches!(route.access, Access::Public | Access::Setup) {
        None
    } else {
        cross_site(&req)?;
        let activity = activity(route.endpoint, &req.headers);
        let (token, s) = session_of(&console, &req, activity)?.ok_or(ApiError::Unauthenticated)?;
        if !route.access.allows(s.role) {
            audit_refusal(&console, &req, &s, route.pattern, "the role may not use it").await?;
            return Err(ApiError::Forbidden);
        }
        let safe = matches!(req.method, Method::GET | Method::HEAD);
        if !safe && !csrf_matches(&req.headers, &s) {
            audit_refusal(&console, &req, &s, route.pattern, "no valid CSRF token").await?;
            return Err(ApiError::Csrf);
        }
        Some((token, s))
    };
    let p = &matched.params;
    let param = |i: usize| p.get(i).map(String::as_str).unwrap_or("");
    let c = &console;
    match (route.endpoint, session) {
        (Endpoint::Health, _) => Ok(system::health(c)),
        (Endpoint::Metrics, _) => system::metrics(c).await,
        (Endpoint::Asset, _) => asset(&req.path),
        (Endpoint::Login, _) => session::login(c, &req).await,
        (Endpoint::SetupStatus, _) => super::setup::status(c).await,
        (Endpoint::Setup, _) => super::setup::complete(c, &req).await,
        (_, None) => Err(ApiError::Unauthenticated),
        (Endpoint::Logout, Some((token, s))) => session::logout(c, &req, &token, &s).await,
        (Endpoint::Me, Some((_, s))) => Ok(session::me(&s)),
        (Endpoint::SessionCheck, Some(_)) => session::check(c, &req),
        (Endpoint::Models, Some(_)) => Ok(system::models(c)),
        (Endpoint::Studies, Some((_, s))) => studies::worklist(c, &req, &s).await,
        (Endpoint::Study, Some((_, s))) => studies::study(c, &req, &s, param(0)).await,
        (Endpoint::Preview, Some((_, s))) => {
            studies::preview(c, &req, &s, (param(0), param(1)), false).await
        }
        (Endpoint::PreviewInfo, Some((_, s))) => {
            studies::preview(c, &req, &s, (param(0), param(1)), true).await
        }
        (Endpoint::Heatmap, Some((_, s))) => results::heatmap(c, &req, &s, param(0)).await,
        (Endpoint::Feedback, Some((_, s))) => feedback::give(c, &req, &s, param(0)).await,
        (Endpoint::Events, Some((token, s))) => live::event_stream(c, token, &s),
        (Endpoint::Users, Some(_)) => users::list(c),
        (Endpoint::UserPut, Some((_, s))) => users::put(c, &req, &s, param(0)).await,
        (Endpoint::UserDelete, Some((_, s))) => users::delete(c, &req, &s, param(0)).await,
        (Endpoint::Audit, Some((_, s))) => audit::list(c, &req, &s).await,
        (Endpoint::AuditExport, Some((token, s))) => audit::export(c, &req, &s, token).await,
        (Endpoint::AuditVerify, Some(_)) => audit::verify(c).await,
        (Endpoint::System, Some(_)) => system::system(c),
        (Endpoint::Outbox, Some(_)) => outbox::overview(c).await,
        (Endpoint::OutboxRetry, Some((_, s))) => outbox::retry(c, &req, &s).await,
        (Endpoint::OutboxPeerText, Some((_, s))) => outbox::peer_text(c, &req, &s, param(0)).await,
        (Endpoint::Echo, Some((_, s))) => system::echo(c, &s).await,
        (Endpoint::Upload, Some((_, s))) => upload::upload(c, req, &s).await,
    }
}

fn asset(path: &str) -> Result<Response, ApiError> {
    let (_, ctype, body) = assets::lookup(path).ok_or(ApiError::NotFound)?;
    Ok(reply::bytes(StatusCode::OK, ctype, body.to_vec()))
}

/// Audits a request refused to a logged-in user (`why`), once per user, route and window
/// (a probe of every route leaves one record per route, not one per request).
async fn audit_refusal(
    c: &Console,
    req: &Request,
    s: &Session,
    route: &str,
    why: &str,
) -> Result<(), ApiError> {
    let key = format!("refused {} {route}", req.method);
    // Taken as audited only once the record is written.
    let record = audit_now(
        c,
        Event::new(&s.user, crate::audit::Action::Other, &req.path)
            .from(&source(req))
            .detail(format!(
                "{} {} refused ({why}; role {}); further refusals of this route within {} min not recorded one by one",
                req.method,
                req.path,
                s.role,
                super::access_log::WINDOW.as_secs() / 60
            ))
            .failed(),
    );
    c.accesses.once(&s.user, &key, record).await?;
    Ok(())
}

/// Appends `event` to the audit trail and makes it durable before the answer goes out.
pub(in crate::console) async fn audit_now(c: &Console, event: Event) -> Result<(), ApiError> {
    c.audit.append(event)?;
    c.store.flush().await?;
    Ok(())
}

/// The event kinds, re-exported for clients of the API documentation.
pub use super::events::EventKind;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let q = parse_query("q=Jo%C3%A3o+Silva&state=done&x");
        assert_eq!(q["q"], "João Silva");
        assert_eq!(q["state"], "done");
        assert_eq!(q["x"], "");
        assert_eq!(parse_query("a=%zz%4")["a"], "%zz%4");
    }
}
