//! The console's request handling: one warp filter takes every request, [`handle`] finds
//! its route in the role table, checks the session, role and CSRF token, and dispatches
//! to the handler of the route's [`Endpoint`].
//!
//! Patient data views, searches, feedback, logins and user changes are appended to the
//! audit trail, and the store is flushed before the answer goes out.

use super::reply::{self, ApiError};
use super::roles::{self, Access, Endpoint, NoMatch, Role};
use super::server::Peer;
use super::sessions::{self, Session};
use super::users::{self, User, UserInfo};
use super::{assets, atna, echo, events, feedback, outbox_view, preview, upload, Console};
use crate::audit::{Action, Event};
use crate::model::StudyRecord;
use bytes::Buf;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

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
/// read), everything else [`MAX_BODY`]. An upload without a session or with a role that
/// may not upload is not read, so the answer is the 401 or 403, whatever its size.
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
    let Some(s) = session_token(headers)
        .and_then(|t| console.sessions.lookup(&t).ok().flatten())
        .filter(|s| m.route.access.allows(s.role))
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
    Ok(BodyPlan::Upload(console.limits.max_upload, slot))
}

/// Reads a body of at most `limit` bytes: 413 as soon as the declared length or the
/// bytes received pass it (nothing beyond it is buffered), 408 when no byte arrives for
/// `stall`.
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
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(stall, stream.next())
            .await
            .map_err(|_| ApiError::Timeout)?;
        let Some(chunk) = next else { break };
        let mut chunk = chunk.map_err(|e| ApiError::BadRequest(e.to_string()))?;
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

fn source(req: &Request) -> String {
    req.peer.map(|p| p.to_string()).unwrap_or_default()
}

fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(warp::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| sessions::cookie_value(h, sessions::SESSION_COOKIE))
        .map(str::to_string)
}

fn is_json(req: &Request) -> bool {
    req.headers
        .get(warp::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

pub(super) fn parse_json<'a, T: Deserialize<'a>>(req: &'a Request) -> Result<T, ApiError> {
    if !is_json(req) {
        return Err(ApiError::BadRequest(
            "the body must be JSON (Content-Type: application/json)".into(),
        ));
    }
    serde_json::from_slice(&req.body).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Decodes `body` as each JSON request body of the API, as its handler would (the entry
/// point of the console's fuzz target and its corpus replay).
pub fn fuzz_bodies(body: &[u8]) {
    let _ = serde_json::from_slice::<LoginBody>(body);
    let _ = serde_json::from_slice::<FeedbackBody>(body);
    let _ = serde_json::from_slice::<UserBody>(body);
    let _ = serde_json::from_slice::<outbox_view::RetryBody>(body);
    let _ = serde_json::from_slice::<super::setup::SetupBody>(body);
}

/// The session of a request, when it has a valid one.
pub fn session_of(console: &Console, req: &Request) -> Result<Option<(String, Session)>, ApiError> {
    let Some(token) = session_token(&req.headers) else {
        return Ok(None);
    };
    Ok(console.sessions.lookup(&token)?.map(|s| (token, s)))
}

/// Routes, authenticates, authorises and dispatches one request.
pub async fn handle(console: Arc<Console>, req: Request) -> Response {
    match route_and_run(console, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route_and_run(console: Arc<Console>, req: Request) -> Result<Response, ApiError> {
    let matched = roles::find(req.method.as_str(), &req.path).map_err(|e| match e {
        NoMatch::NotFound => ApiError::NotFound,
        NoMatch::MethodNotAllowed => ApiError::MethodNotAllowed,
    })?;
    let route = matched.route;
    let session = if matches!(route.access, Access::Public | Access::Setup) {
        None
    } else {
        let (token, s) = session_of(&console, &req)?.ok_or(ApiError::Unauthenticated)?;
        if !route.access.allows(s.role) {
            return Err(ApiError::Forbidden);
        }
        let safe = matches!(req.method, Method::GET | Method::HEAD);
        if !safe {
            let sent = req
                .headers
                .get(sessions::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !sessions::same_token(sent, &s.csrf) {
                return Err(ApiError::Csrf);
            }
        }
        Some((token, s))
    };
    let p = &matched.params;
    let param = |i: usize| p.get(i).map(String::as_str).unwrap_or("");
    let c = &console;
    match (route.endpoint, session) {
        (Endpoint::Health, _) => Ok(health(c)),
        (Endpoint::Metrics, _) => {
            let snap = crate::web::snapshot(&c.store, c.outbox.as_deref());
            Ok(reply::bytes(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                c.metrics.render(&snap).into_bytes(),
            ))
        }
        (Endpoint::Asset, _) => asset(&req.path),
        (Endpoint::Login, _) => login(c, &req).await,
        (Endpoint::SetupStatus, _) => super::setup::status(c).await,
        (Endpoint::Setup, _) => super::setup::complete(c, &req).await,
        (_, None) => Err(ApiError::Unauthenticated),
        (Endpoint::Logout, Some((token, s))) => logout(c, &req, &token, &s).await,
        (Endpoint::Me, Some((_, s))) => Ok(reply::json(
            StatusCode::OK,
            &json!({"user": s.user, "role": s.role, "csrf": s.csrf}),
        )),
        (Endpoint::Models, Some(_)) => models(c),
        (Endpoint::Studies, Some((_, s))) => studies(c, &req, &s).await,
        (Endpoint::Study, Some((_, s))) => study(c, &req, &s, param(0)).await,
        (Endpoint::Preview, Some(_)) => preview(c, param(0), param(1), false).await,
        (Endpoint::PreviewInfo, Some(_)) => preview(c, param(0), param(1), true).await,
        (Endpoint::Heatmap, Some(_)) => heatmap(c, param(0)).await,
        (Endpoint::Feedback, Some((_, s))) => give_feedback(c, &req, &s, param(0)).await,
        (Endpoint::Events, Some((token, s))) => event_stream(c, token, &s),
        (Endpoint::Users, Some(_)) => {
            let list: Vec<UserInfo> = c.users.list()?.iter().map(UserInfo::from).collect();
            Ok(reply::json(StatusCode::OK, &list))
        }
        (Endpoint::UserPut, Some((_, s))) => put_user(c, &req, &s, param(0)).await,
        (Endpoint::UserDelete, Some((_, s))) => delete_user(c, &req, &s, param(0)).await,
        (Endpoint::Audit, Some(_)) => audit_list(c, &req),
        (Endpoint::AuditExport, Some((_, s))) => audit_export(c, &req, &s).await,
        (Endpoint::AuditVerify, Some(_)) => {
            let v = c.audit.verify()?;
            Ok(reply::json(
                StatusCode::OK,
                &json!({
                    "records": v.records,
                    "head": v.head,
                    "intact": v.broken.is_none(),
                    "first_broken": v.broken.map(|b| json!({"seq": b.seq, "reason": b.reason})),
                }),
            ))
        }
        (Endpoint::System, Some(_)) => system(c),
        (Endpoint::Outbox, Some(_)) => outbox(c),
        (Endpoint::OutboxRetry, Some((_, s))) => outbox_retry(c, &req, &s).await,
        (Endpoint::Echo, Some(_)) => Ok(reply::json(
            StatusCode::OK,
            &json!({"results": echo::echo_all(&c.echo_peers, &c.ae_title, ECHO_LIMIT).await}),
        )),
        (Endpoint::Upload, Some((_, s))) => upload_file(c, req, &s).await,
    }
}

fn asset(path: &str) -> Result<Response, ApiError> {
    let (_, ctype, body) = assets::lookup(path).ok_or(ApiError::NotFound)?;
    Ok(reply::bytes(StatusCode::OK, ctype, body.to_vec()))
}

pub(super) async fn audit_now(c: &Console, event: Event) -> Result<(), ApiError> {
    c.audit.append(event)?;
    c.store.flush().await?;
    Ok(())
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(c: &Arc<Console>, req: &Request) -> Result<Response, ApiError> {
    let body: LoginBody = parse_json(req)?;
    let src = source(req);
    let name = body.username.trim().to_string();
    if name.is_empty() || name.len() > 64 || body.password.len() > 1024 {
        return Err(ApiError::BadRequest(
            "user name and password required".into(),
        ));
    }
    if let Err(wait) = c.sessions.login_allowed(&name, req.peer) {
        let secs = wait.as_secs().max(1);
        // Only the first throttled attempt of a window is written; the rest are counted
        // and summed up in one record per window.
        if c.sessions.throttled.note(&name, req.peer) == super::throttle_log::Noted::First {
            audit_now(
                c,
                Event::new(&name, Action::LoginFailed, &name)
                    .from(&src)
                    .detail(format!(
                        "throttled for {secs} s; further throttled attempts are counted"
                    ))
                    .failed(),
            )
            .await?;
        }
        return Err(ApiError::Throttled(secs));
    }
    let user = c.users.get(&name)?;
    let password = body.password;
    let verified = {
        let user = user.clone();
        tokio::task::spawn_blocking(move || match &user {
            Some(u) => users::verify_password(&u.password, &password) && !u.disabled,
            None => {
                users::burn_verify(&password);
                false
            }
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    };
    let user = match (verified, user) {
        (true, Some(u)) => u,
        (_, u) => {
            c.sessions.login_failed(&name, req.peer);
            let why = match u {
                None => "unknown user",
                Some(u) if u.disabled => "account disabled",
                Some(_) => "wrong password",
            };
            audit_now(
                c,
                Event::new(&name, Action::LoginFailed, &name)
                    .from(&src)
                    .detail(why)
                    .failed(),
            )
            .await?;
            return Err(ApiError::BadLogin);
        }
    };
    c.sessions.login_succeeded(&user.name);
    let (token, session) = c
        .sessions
        .create(&user.name, user.role, &src)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    audit_now(
        c,
        Event::new(&user.name, Action::Login, &user.name)
            .from(&src)
            .detail(format!("role {}", user.role)),
    )
    .await?;
    let r = reply::json(
        StatusCode::OK,
        &json!({"user": user.name, "role": user.role, "csrf": session.csrf}),
    );
    Ok(reply::with_cookies(
        r,
        &sessions::login_cookies(&token, &session.csrf, c.sessions.max_age()),
    ))
}

async fn logout(
    c: &Console,
    req: &Request,
    token: &str,
    s: &Session,
) -> Result<Response, ApiError> {
    c.sessions.remove(token)?;
    audit_now(
        c,
        Event::new(&s.user, Action::Logout, &s.user).from(&source(req)),
    )
    .await?;
    Ok(reply::with_cookies(
        reply::json(StatusCode::OK, &json!({"logged_out": true})),
        &sessions::logout_cookies(),
    ))
}

/// The latest recorded result of a study (as the inference stage stored it), plus
/// `heatmap_path`: the first analysed image's heatmap, when one is done, `not_applicable`:
/// why the study was not analysed, and `caveat`: what comes with its findings.
pub fn result_of(c: &Console, uid: &str) -> Result<Option<Value>, ApiError> {
    let Some(result) = crate::infer::record::latest_result(&c.store, uid)? else {
        return Ok(None);
    };
    let heatmap = result.images.iter().find_map(|i| match &i.heatmap {
        crate::result::HeatmapState::Done { path, .. } => Some(path.clone()),
        _ => None,
    });
    // Through JSON text, so f32 probabilities keep their shortest form (0.93, not
    // 0.9300000071525574).
    let mut v: Value = serde_json::to_string(&result)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        if let Some(path) = heatmap {
            obj.insert("heatmap_path".into(), Value::String(path));
        }
        // Outside the model's intended use, or analysed with a caveat: said on every page.
        obj.insert(
            "not_applicable".into(),
            json!(result.not_applicable_reason()),
        );
        obj.insert("caveat".into(), json!(result.caveat()));
    }
    Ok(Some(v))
}

/// Whether a result marks the study urgent (`triage` as a bool, `"urgent"`, or an
/// object with `urgent`).
pub fn triage_flag(result: &Value) -> Option<bool> {
    match result.get("triage")? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => Some(s.eq_ignore_ascii_case("urgent")),
        Value::Object(o) => o.get("urgent").and_then(Value::as_bool),
        _ => None,
    }
}

/// The finding with the highest probability: `(label, probability)`.
pub fn top_finding(result: &Value) -> Option<(String, f64)> {
    result
        .get("findings")?
        .as_array()?
        .iter()
        .filter_map(|f| {
            Some((
                f.get("label")?.as_str()?.to_string(),
                f.get("probability")?.as_f64()?,
            ))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

fn worklist_row(s: &StudyRecord, result: Option<&Value>) -> Value {
    let top = result.and_then(top_finding);
    json!({
        "study_uid": s.study_instance_uid,
        "patient_id": s.patient_id,
        "patient_name": s.patient_name,
        "accession": s.accession_number,
        "study_date": s.study_date,
        "description": s.study_description,
        "modalities": s.modalities,
        "instances": s.instances,
        "received": s.first_received,
        "last_received": s.last_received,
        "state": s.state,
        "error": s.error,
        "triage": result.and_then(triage_flag),
        "top_finding": top.map(|(label, p)| json!({"label": label, "probability": p})),
        "not_applicable": result.and_then(|r| r.get("not_applicable")).cloned(),
        "caveat": result.and_then(|r| r.get("caveat")).cloned(),
    })
}

async fn studies(c: &Console, req: &Request, s: &Session) -> Result<Response, ApiError> {
    let q = req
        .query
        .get("q")
        .map(|v| v.trim().to_lowercase())
        .filter(|v| !v.is_empty());
    let state = req.query.get("state").filter(|v| !v.is_empty());
    let urgent_only = req
        .query
        .get("urgent")
        .is_some_and(|v| v == "1" || v == "true");
    let limit = req
        .query
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200usize)
        .min(MAX_STUDIES);
    let mut rows = Vec::new();
    for st in c.store.studies()? {
        if let Some(state) = state {
            if st.state.as_str() != state.as_str() {
                continue;
            }
        }
        if let Some(q) = &q {
            let hay = [
                &st.patient_name,
                &st.patient_id,
                &st.accession_number,
                &st.study_instance_uid,
                &st.study_description,
            ];
            if !hay.iter().any(|h| h.to_lowercase().contains(q.as_str())) {
                continue;
            }
        }
        let result = result_of(c, &st.study_instance_uid).unwrap_or(None);
        let urgent = result.as_ref().and_then(triage_flag).unwrap_or(false);
        if urgent_only && !urgent {
            continue;
        }
        rows.push((
            urgent,
            st.first_received,
            worklist_row(&st, result.as_ref()),
        ));
    }
    // Urgent first, then newest.
    rows.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let total = rows.len();
    let rows: Vec<Value> = rows.into_iter().take(limit).map(|r| r.2).collect();
    if let Some(q) = &q {
        audit_now(
            c,
            Event::new(&s.user, Action::Query, "worklist")
                .from(&source(req))
                .detail(format!("search {q:?}: {total} studies")),
        )
        .await?;
    }
    Ok(reply::json(
        StatusCode::OK,
        &json!({"total": total, "studies": rows}),
    ))
}

fn delivery_of(c: &Console, result: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    if let Some(Value::Array(d)) = result.and_then(|r| r.get("delivery")) {
        return Ok(d.clone());
    }
    if let Some(Value::Object(d)) = result.and_then(|r| r.get("delivery")) {
        return Ok(d
            .iter()
            .map(|(k, v)| json!({"destination": k, "state": v}))
            .collect());
    }
    // Otherwise the outbox's account of the result's report: pending and delivered.
    let (Some(outbox), Some(report_id)) = (
        c.outbox.as_deref(),
        result
            .and_then(|r| r.get("report_id"))
            .and_then(Value::as_str),
    ) else {
        return Ok(Vec::new());
    };
    Ok(outbox
        .status_of(report_id)
        .map_err(outbox_error)?
        .into_iter()
        .map(|s| {
            json!({
                "destination": s.dest.name(),
                "kind": s.kind.as_str(),
                "state": s.state,
                "attempts": s.attempts,
                "last_error": s.last_error,
            })
        })
        .collect())
}

fn safe_data_path(c: &Console, rel: &str) -> Option<std::path::PathBuf> {
    let rel = std::path::Path::new(rel);
    if rel.is_absolute()
        || rel
            .components()
            .any(|p| !matches!(p, std::path::Component::Normal(_)))
    {
        return None;
    }
    Some(c.data_dir.join(rel))
}

async fn study(c: &Console, req: &Request, s: &Session, uid: &str) -> Result<Response, ApiError> {
    let rec = c.store.study(uid)?.ok_or(ApiError::NotFound)?;
    let instances = c.store.instances_of(uid)?;
    let result = result_of(c, uid)?;
    let heatmap = result
        .as_ref()
        .and_then(|r| r.get("heatmap_path"))
        .and_then(Value::as_str)
        .and_then(|p| safe_data_path(c, p))
        .filter(|p| p.exists())
        .map(|_| format!("/api/v1/studies/{uid}/heatmap"));
    let inst: Vec<Value> = instances
        .iter()
        .map(|i| {
            json!({
                "sop_instance_uid": i.sop_instance_uid,
                "series_instance_uid": i.series_instance_uid,
                "sop_class_uid": i.sop_class_uid,
                "modality": i.modality,
                "series_number": i.series_number,
                "instance_number": i.instance_number,
                "view_position": i.view_position,
                "body_part": i.body_part,
                "rows": i.rows,
                "columns": i.columns,
                "pruned": i.pruned,
                "preview": format!("/api/v1/studies/{uid}/instances/{}/preview", i.sop_instance_uid),
                "preview_info": format!("/api/v1/studies/{uid}/instances/{}/preview-info", i.sop_instance_uid),
            })
        })
        .collect();
    let fb = feedback::of_study(&c.store, uid)?;
    let delivery = delivery_of(c, result.as_ref())?;
    audit_now(
        c,
        Event::new(&s.user, Action::View, uid)
            .from(&source(req))
            .detail(format!("study of patient {}", rec.patient_id)),
    )
    .await?;
    let mut row = worklist_row(&rec, result.as_ref());
    if let Value::Object(m) = &mut row {
        m.insert(
            "study".into(),
            serde_json::to_value(&rec).unwrap_or_default(),
        );
        m.insert("instances".into(), Value::Array(inst));
        m.insert("result".into(), result.clone().unwrap_or(Value::Null));
        m.insert("heatmap".into(), json!(heatmap));
        m.insert(
            "feedback".into(),
            serde_json::to_value(fb).unwrap_or_default(),
        );
        m.insert("delivery".into(), Value::Array(delivery));
        m.insert(
            "ai_notice".into(),
            json!("AI-generated, preliminary: not a diagnosis"),
        );
    }
    Ok(reply::json(StatusCode::OK, &row))
}

async fn preview(c: &Console, uid: &str, sop: &str, info_only: bool) -> Result<Response, ApiError> {
    let inst = c
        .store
        .instance(sop)?
        .filter(|i| i.study_instance_uid == uid)
        .ok_or(ApiError::NotFound)?;
    let data_dir = c.data_dir.clone();
    let max_pixels = c.max_pixels;
    let (png, info) =
        tokio::task::spawn_blocking(move || preview::get_or_render(&data_dir, &inst, max_pixels))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| match e {
                preview::PreviewError::Pruned => ApiError::Gone(e.to_string()),
                preview::PreviewError::Write(_) => ApiError::Internal(e.to_string()),
                _ => ApiError::Conflict(e.to_string()),
            })?;
    if info_only {
        return Ok(reply::json(StatusCode::OK, &info));
    }
    let bytes = tokio::fs::read(&png)
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", png.display())))?;
    // Never stored by the browser (`reply::secure` sets `no-store`): reading-room PCs are
    // shared, and the file is cached on the server already.
    Ok(reply::bytes(StatusCode::OK, "image/png", bytes))
}

async fn heatmap(c: &Console, uid: &str) -> Result<Response, ApiError> {
    let result = result_of(c, uid)?.ok_or(ApiError::NotFound)?;
    let path = result
        .get("heatmap_path")
        .and_then(Value::as_str)
        .and_then(|p| safe_data_path(c, p))
        .ok_or(ApiError::NotFound)?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::NotFound)?;
    Ok(reply::bytes(StatusCode::OK, "image/png", bytes))
}

#[derive(Deserialize)]
struct FeedbackBody {
    agree: bool,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    finding: Option<String>,
}

async fn give_feedback(
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
    let finding = match body.finding.filter(|f| !f.is_empty()) {
        Some(named) => Some(model_label(c, uid, &named)?),
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
    feedback::enqueue_for_delivery(c.recorder.as_deref(), &f, &s.role.to_string())?;
    c.store.flush().await?;
    Ok(reply::json(StatusCode::CREATED, &f))
}

/// The label of the study's finding that `named` names (by label or code): feedback on a
/// finding may only name one of the model's labels, since it reaches the cloud and free
/// text could carry anything (a name, a note).
fn model_label(c: &Console, uid: &str, named: &str) -> Result<String, ApiError> {
    let result = crate::infer::record::latest_result(&c.store, uid)?;
    result
        .iter()
        .flat_map(|r| r.findings.iter())
        .find(|f| f.label == named || f.code == named)
        .map(|f| f.label.clone())
        .ok_or_else(|| {
            ApiError::BadRequest("finding is not one of the model's labels for this study".into())
        })
}

/// How often a live event stream checks that its session still lives (besides being
/// woken at once by every ended session).
pub const STREAM_SESSION_CHECK: std::time::Duration = std::time::Duration::from_secs(5);
/// Interval of the keep-alive comments of event streams.
pub const STREAM_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// What woke an event stream.
enum Wake {
    Event(Result<events::StudyEvent, tokio::sync::broadcast::error::RecvError>),
    Check,
    Ended,
}

/// The live study events of a session (server-sent events), until the session ends
/// (logout, user removed, disabled or role changed, idle or absolute expiry) or the
/// daemon stops. Each stream holds one of `console.max_event_streams` permits.
fn event_stream(c: &Arc<Console>, token: String, s: &Session) -> Result<Response, ApiError> {
    use tokio::sync::broadcast::error::RecvError;
    use warp::sse::Event as Sse;
    let permit =
        c.limits.streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::Busy("the console serves as many event streams as it can".into())
        })?;
    let rx = c.events.subscribe();
    let ended = c.sessions.ended();
    let end = tokio::time::Instant::now()
        + std::time::Duration::from_millis(
            (s.created_ms + c.sessions.max_age().as_millis() as i64 - crate::clock::now_millis())
                .max(0) as u64,
        );
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
    Ok(warp::sse::reply(
        warp::sse::keep_alive()
            .interval(STREAM_KEEP_ALIVE)
            .stream(stream),
    )
    .into_response())
}

#[derive(Deserialize)]
struct UserBody {
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
}

fn admins_left(c: &Console, without: &str) -> Result<usize, ApiError> {
    Ok(c.users
        .list()?
        .iter()
        .filter(|u| u.role == Role::Admin && !u.disabled && u.name != without)
        .count())
}

async fn put_user(
    c: &Console,
    req: &Request,
    s: &Session,
    name: &str,
) -> Result<Response, ApiError> {
    users::check_name(name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let body: UserBody = parse_json(req)?;
    let old = c.users.get(name)?;
    let password = match body.password {
        Some(p) => Some(
            tokio::task::spawn_blocking(move || users::hash_password(&p))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        ),
        None => None,
    };
    let user = match &old {
        Some(o) => User {
            name: name.to_string(),
            role: body.role.unwrap_or(o.role),
            password: password.unwrap_or_else(|| o.password.clone()),
            created_ms: o.created_ms,
            disabled: body.disabled.unwrap_or(o.disabled),
        },
        None => User {
            name: name.to_string(),
            role: body
                .role
                .ok_or_else(|| ApiError::BadRequest("role required for a new user".into()))?,
            password: password
                .ok_or_else(|| ApiError::BadRequest("password required for a new user".into()))?,
            created_ms: crate::clock::now_millis(),
            disabled: body.disabled.unwrap_or(false),
        },
    };
    if old.as_ref().is_some_and(|o| o.role == Role::Admin)
        && (user.role != Role::Admin || user.disabled)
        && admins_left(c, name)? == 0
    {
        return Err(ApiError::Conflict(
            "the last admin cannot be demoted or disabled".into(),
        ));
    }
    c.users
        .put(&user)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let what = match &old {
        None => format!("created with role {}", user.role),
        Some(o) => {
            let mut changes = Vec::new();
            if o.role != user.role {
                changes.push(format!("role {} -> {}", o.role, user.role));
            }
            if o.password != user.password {
                changes.push("password changed".to_string());
            }
            if o.disabled != user.disabled {
                changes.push(if user.disabled { "disabled" } else { "enabled" }.to_string());
            }
            if !changes.is_empty() {
                c.sessions.remove_user(name)?;
            }
            format!("changed: {}", changes.join(", "))
        }
    };
    audit_now(
        c,
        Event::new(&s.user, Action::UserChange, name)
            .from(&source(req))
            .detail(what),
    )
    .await?;
    let status = if old.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(reply::json(status, &UserInfo::from(&user)))
}

async fn delete_user(
    c: &Console,
    req: &Request,
    s: &Session,
    name: &str,
) -> Result<Response, ApiError> {
    let old = c.users.get(name)?.ok_or(ApiError::NotFound)?;
    if old.role == Role::Admin && admins_left(c, name)? == 0 {
        return Err(ApiError::Conflict(
            "the last admin cannot be removed".into(),
        ));
    }
    c.users.remove(name)?;
    c.sessions.remove_user(name)?;
    audit_now(
        c,
        Event::new(&s.user, Action::UserChange, name)
            .from(&source(req))
            .detail("removed"),
    )
    .await?;
    Ok(reply::json(StatusCode::OK, &json!({"removed": name})))
}

fn audit_list(c: &Console, req: &Request) -> Result<Response, ApiError> {
    let from = req
        .query
        .get("from")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0u64);
    let limit = req
        .query
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200usize)
        .min(1000);
    let records = c.audit.records(from, limit)?;
    Ok(reply::json(
        StatusCode::OK,
        &json!({"records": records, "head": c.audit.head().map(|(seq, hash)| json!({"seq": seq, "hash": hash}))}),
    ))
}

async fn audit_export(c: &Console, req: &Request, s: &Session) -> Result<Response, ApiError> {
    let format = req
        .query
        .get("format")
        .map(String::as_str)
        .unwrap_or("json");
    let records = c.audit.records(0, usize::MAX)?;
    let n = records.len();
    let resp = match format {
        "json" => {
            let mut r = reply::json(StatusCode::OK, &records);
            r.headers_mut().insert(
                warp::http::header::CONTENT_DISPOSITION,
                warp::http::HeaderValue::from_static("attachment; filename=\"duli-audit.json\""),
            );
            r
        }
        "syslog" => {
            let host = super::hostname().unwrap_or_default();
            let mut text = String::new();
            for r in &records {
                text.push_str(&atna::syslog_line(r, &host, &c.device_id));
                text.push('\n');
            }
            let mut r = reply::bytes(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                text.into_bytes(),
            );
            r.headers_mut().insert(
                warp::http::header::CONTENT_DISPOSITION,
                warp::http::HeaderValue::from_static("attachment; filename=\"duli-audit.log\""),
            );
            r
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown format {other:?} (json or syslog)"
            )))
        }
    };
    audit_now(
        c,
        Event::new(&s.user, Action::Export, "audit trail")
            .from(&source(req))
            .detail(format!("{n} records as {format}")),
    )
    .await?;
    Ok(resp)
}

fn read_manifest(path: &std::path::Path) -> Value {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<Value>(&text)
            .ok()
            .or_else(|| {
                toml::from_str::<toml::Value>(&text)
                    .ok()
                    .and_then(|t| serde_json::to_value(t).ok())
            })
            .unwrap_or(Value::String(text.chars().take(4096).collect())),
        Err(e) => json!({"error": e.to_string()}),
    }
}

fn models(c: &Console) -> Result<Response, ApiError> {
    Ok(reply::json(
        StatusCode::OK,
        &json!([{"manifest_path": c.model.display().to_string(), "manifest": read_manifest(&c.model)}]),
    ))
}

/// `/healthz`: `status` is `ok`, or `degraded` with the inference stage's reason (e.g.
/// `waiting for model: ...`) while studies cannot be analysed: 200 while every supervised
/// stage runs and beats; 503 with `stages` naming each one that is down or stale.
fn health(c: &Console) -> Response {
    let model = c.model_status.get();
    let check = c
        .stages
        .as_ref()
        .map_or(Ok(()), |s| s.check(crate::supervise::STALE_AFTER));
    match check {
        Ok(()) => {
            let status = match model {
                crate::infer::ModelState::Waiting(_) => "degraded",
                _ => "ok",
            };
            reply::json(
                StatusCode::OK,
                &json!({"status": status, "inference": model.describe()}),
            )
        }
        Err(problems) => {
            let stages: Vec<serde_json::Value> = problems
                .iter()
                .map(|p| json!({"stage": p.stage(), "problem": p.to_string()}))
                .collect();
            reply::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "degraded", "inference": model.describe(), "stages": stages}),
            )
        }
    }
}

fn system(c: &Console) -> Result<Response, ApiError> {
    let free = c.store.files().free_bytes().ok();
    let total = nix::sys::statvfs::statvfs(&c.data_dir)
        .ok()
        .map(|s| s.blocks() * s.fragment_size());
    let counts: serde_json::Map<String, Value> = c
        .store
        .study_state_counts()?
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), n.into()))
        .collect();
    let outbox = c.outbox.as_ref().map(|o| o.fill());
    Ok(reply::json(
        StatusCode::OK,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "site_id": c.site_id,
            "device_id": c.device_id,
            "uptime_secs": c.started.elapsed().as_secs(),
            "disk": {"data_dir": c.data_dir.display().to_string(), "free_bytes": free, "total_bytes": total},
            "store": {"instances": c.store.instance_count(), "studies": counts},
            "outbox": outbox,
            "model": {"manifest_path": c.model.display().to_string(), "state": c.model_status.get().describe()},
            "peers": c.peers.iter().map(|p| json!({"name": p.name, "ae_title": p.ae_title, "host": p.host, "port": p.port})).collect::<Vec<_>>(),
            "audit_head": c.audit.head().map(|(seq, hash)| json!({"seq": seq, "hash": hash})),
        }),
    ))
}

fn delivery(c: &Console) -> Result<&crate::deliver::outbox::Outbox, ApiError> {
    c.outbox
        .as_deref()
        .ok_or_else(|| ApiError::Conflict("delivery is not running".into()))
}

fn outbox_error(e: crate::deliver::outbox::OutboxError) -> ApiError {
    match e {
        crate::deliver::outbox::OutboxError::NotFound(_) => ApiError::NotFound,
        e => ApiError::Internal(e.to_string()),
    }
}

fn outbox(c: &Console) -> Result<Response, ApiError> {
    let view =
        outbox_view::overview(delivery(c)?, crate::clock::now_millis()).map_err(outbox_error)?;
    Ok(reply::json(StatusCode::OK, &view))
}

async fn outbox_retry(c: &Console, req: &Request, s: &Session) -> Result<Response, ApiError> {
    let body: outbox_view::RetryBody = parse_json(req)?;
    let which = body.selector().map_err(ApiError::BadRequest)?;
    let requeued = delivery(c)?.retry(&which).map_err(outbox_error)?;
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
    Ok(reply::json(StatusCode::OK, &json!({"requeued": requeued})))
}

/// How long the connectivity test waits for each peer.
const ECHO_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

async fn upload_file(c: &Console, req: Request, s: &Session) -> Result<Response, ApiError> {
    let src = source(&req);
    let filename = req.query.get("name").cloned().unwrap_or_default();
    let size = req.body.len();
    let (store, root, name) = (c.store.clone(), c.uid_root.clone(), filename.clone());
    let max_pixels = c.max_pixels;
    let body = req.body;
    let stored = tokio::task::spawn_blocking(move || {
        let p = upload::prepare(&body, &name, &root, max_pixels)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let rec = crate::results::store_as(&store, &p.object, upload::UPLOAD_AE, false)
            .map_err(|e| ApiError::Internal(format!("store the upload: {e}")))?;
        Ok::<_, ApiError>((p.format, p.patient_id, rec))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (format, patient_id, rec) = match stored {
        Ok(x) => x,
        Err(e) => {
            audit_now(
                c,
                Event::new(&s.user, Action::Import, "upload")
                    .from(&src)
                    .detail(format!("{filename:?} ({size} bytes) refused: {e}"))
                    .failed(),
            )
            .await?;
            return Err(e);
        }
    };
    let study = rec.study_instance_uid.clone();
    c.audit.append(
        Event::new(&s.user, Action::Import, &study)
            .from(&src)
            .detail(format!(
                "upload {filename:?} ({format}, {size} bytes) as patient {patient_id}"
            )),
    )?;
    c.store.flush().await?;
    if let Some(tx) = c.assembly.as_ref().and_then(|w| w.upgrade()) {
        let _ = tx
            .send(crate::assemble::Event::Added {
                study: study.clone(),
            })
            .await;
    }
    Ok(reply::json(
        StatusCode::CREATED,
        &json!({
            "study_uid": study,
            "sop_instance_uid": rec.sop_instance_uid,
            "sop_class_uid": rec.sop_class_uid,
            "patient_id": patient_id,
            "format": format,
            "study_url": format!("#/study/{study}"),
        }),
    ))
}

/// The event kinds, re-exported for clients of the API documentation.
pub use events::EventKind;

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

    #[test]
    fn results_give_triage_and_top_finding() {
        let r = json!({"triage": true, "findings": [
            {"label": "NORMAL", "probability": 0.2},
            {"label": "PNEUMONIA", "probability": 0.91}]});
        assert_eq!(triage_flag(&r), Some(true));
        assert_eq!(top_finding(&r), Some(("PNEUMONIA".to_string(), 0.91)));
        assert_eq!(triage_flag(&json!({"triage": "routine"})), Some(false));
        assert_eq!(
            triage_flag(&json!({"triage": {"urgent": true}})),
            Some(true)
        );
        assert_eq!(top_finding(&json!({})), None);
    }
}
