//! `/api/v1/audit`: the audit trail (admins only): a page of records with the trail's head
//! and the state of its forwarding to an audit record repository, the whole trail as JSON
//! or RFC 5424 syslog lines (itself audited), and the verification of its hash chain.
//!
//! An export streams: a blocking thread reads the trail a page at a time and hands each
//! page, encoded, through a bounded channel to the response body, so the memory it takes
//! does not grow with the trail.

use super::{audit_now, source, Request};
use crate::audit::{search, Action, Audit, Event, Head, Record, VerificationReport, TRAIL_OBJECT};
use crate::audit_forward::status::ForwardStatus;
use crate::console::reply::{self, ApiError};
use crate::console::sessions::Session;
use crate::console::{atna, Console};
use crate::store::StoreError;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::mpsc;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

/// Records an export reads from the trail at a time.
pub const EXPORT_PAGE: usize = 512;
/// Encoded pages an export may hold waiting for a slow client.
pub const EXPORT_CHUNKS: usize = 4;

/// A page of the trail, its head and the forwarding state.
#[derive(Serialize)]
struct AuditPage {
    records: Vec<Record>,
    /// How far a search for one patient's records read (`patient=`), when it was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    search: Option<SearchView>,
    head: Option<Head>,
    /// `null` when `[audit] syslog` is unset.
    forward: Option<ForwardStatus>,
    /// Records on the box against `[audit] max_records`, and the alarm.
    budget: crate::audit::budget::BudgetState,
}

/// What a patient search read: the patient, where it stopped, whether it reached the
/// first record held.
#[derive(Serialize)]
struct SearchView {
    patient: String,
    searched_from: u64,
    complete: bool,
}

/// The head of the trail as the console shows it.
pub(super) fn head(c: &Console) -> Option<Head> {
    c.audit.head().map(|(seq, hash)| Head { seq, hash })
}

/// The state of the forwarding to the audit record repository, when it is on.
pub(super) fn forward_status(c: &Console) -> Option<ForwardStatus> {
    crate::audit_forward::status_of(&c.audit)
}

/// `GET /api/v1/audit?from=&limit=` (at most 1000 records from `from`), or
/// `?before=&limit=`: the newest `limit` records before record `before` (`before=latest`:
/// the newest of the trail). Reading the trail is itself audited (the trail names patients
/// and what was searched for): once per user, page and window, so that re-reading a page
/// leaves one record, and paging through the trail one per page.
pub(super) async fn list(c: &Console, req: &Request, s: &Session) -> Result<Response, ApiError> {
    if let Some(patient) = req.query.get("patient") {
        return search(c, req, s, patient).await;
    }
    let mut limit = page_limit(req);
    let mut before_seq = None;
    let from = match req.query.get("before") {
        Some(before) => {
            let before = record_before(c, before)?;
            let from = before.saturating_sub(limit as u64);
            limit = limit.min(usize::try_from(before - from).unwrap_or(limit));
            before_seq = Some(before);
            from
        }
        None => req
            .query
            .get("from")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u64),
    };
    let mut records = if limit == 0 {
        Vec::new()
    } else {
        c.audit.records(from, limit)?
    };
    // Paging back past the start of the trail kept on the box (records removed after
    // forwarding) finds the first record held, which is not before `before`.
    if let Some(before) = before_seq {
        records.retain(|r| r.seq < before);
    }
    let record = audit_now(
        c,
        Event::new(&s.user, Action::View, TRAIL_OBJECT)
            .from(&source(req))
            .detail(format!(
                "read {} records from #{from}; the same page re-read within {} min not recorded one by one",
                records.len(),
                crate::console::access_log::WINDOW.as_secs() / 60
            )),
    );
    c.accesses
        .once(&s.user, &format!("{TRAIL_OBJECT} {from}+{limit}"), record)
        .await?;
    Ok(reply::json(
        StatusCode::OK,
        &AuditPage {
            records,
            search: None,
            head: head(c),
            forward: forward_status(c),
            budget: c.audit.budget(),
        },
    ))
}

/// The `limit` of a page: 200 records unless asked, 1000 at most.
fn page_limit(req: &Request) -> usize {
    req.query
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200usize)
        .min(1000)
}

/// The record a page ends before: `latest` (past the newest record) or a record number,
/// never past the newest (a number beyond it reads from the newest back).
fn record_before(c: &Console, before: &str) -> Result<u64, ApiError> {
    let latest = c.audit.head().map_or(0, |(seq, _)| seq.saturating_add(1));
    match before {
        "latest" => Ok(latest),
        n => n
            .parse::<u64>()
            .map(|n| n.min(latest))
            .map_err(|_| ApiError::BadRequest("before is a record number or \"latest\"".into())),
    }
}

/// `GET /api/v1/audit?patient=ID&before=&limit=`: the newest records (at most `limit`,
/// 200 by default, 1000 at most) before record `before` (default: the newest) that name
/// the patient (by Patient ID alone, or as `ID^^^ISSUER`), reading at most
/// [`search::MAX_SCAN`] records off the runtime's threads; `search.searched_from` is where
/// the next search goes on. Each search is audited (once per user, patient and starting
/// point within the window): it reads the trail and names a patient.
async fn search(
    c: &Console,
    req: &Request,
    s: &Session,
    patient: &str,
) -> Result<Response, ApiError> {
    let patient = patient.trim().to_string();
    if patient.is_empty()
        || patient.len() > search::MAX_PATIENT
        || patient.chars().any(char::is_control)
    {
        return Err(ApiError::BadRequest(format!(
            "patient is a Patient ID of 1 to {} bytes without control characters",
            search::MAX_PATIENT
        )));
    }
    let limit = page_limit(req).max(1);
    let before = record_before(c, req.query.get("before").map_or("latest", String::as_str))?;
    let audit = c.audit.clone();
    let wanted = patient.clone();
    let found = tokio::task::spawn_blocking(move || {
        audit.records_of_patient(&wanted, before, limit, search::MAX_SCAN)
    })
    .await??;
    let record = audit_now(
        c,
        Event::new(&s.user, Action::View, TRAIL_OBJECT)
            .from(&source(req))
            .detail(format!(
                "searched for the records of patient {patient} before #{before}: {} found, read back to #{}",
                found.records.len(),
                found.searched_from
            )),
    );
    c.accesses
        .once(
            &s.user,
            &format!("{TRAIL_OBJECT} patient {patient} {before}"),
            record,
        )
        .await?;
    Ok(reply::json(
        StatusCode::OK,
        &AuditPage {
            records: found.records,
            search: Some(SearchView {
                patient: found.patient,
                searched_from: found.searched_from,
                complete: found.complete,
            }),
            head: head(c),
            forward: forward_status(c),
            budget: c.audit.budget(),
        },
    ))
}

/// How an export encodes the trail.
#[derive(Debug, Clone)]
enum Format {
    /// One JSON array of the records as stored.
    Json,
    /// One RFC 5424 line per record, from `host` with the audit source `source_id`.
    Syslog { host: String, source_id: String },
}

impl Format {
    fn name(&self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Syslog { .. } => "syslog",
        }
    }

    /// Appends `rec` to `out`; `first` says whether it opens the document.
    fn encode(&self, rec: &Record, first: bool, out: &mut Vec<u8>) {
        match self {
            Format::Json => {
                if !first {
                    out.push(b',');
                }
                // A record always serialises (plain strings, numbers and booleans).
                let _ = serde_json::to_writer(&mut *out, rec);
            }
            Format::Syslog { host, source_id } => {
                out.extend_from_slice(atna::syslog_line(rec, host, source_id).as_bytes());
                out.push(b'\n');
            }
        }
    }
}

/// Why an export ended before the end of the trail (the client sees the body cut short).
#[derive(Debug, thiserror::Error)]
enum ExportError {
    /// The trail could not be read.
    #[error("audit export: {0}")]
    Store(#[from] StoreError),
    /// The session that asked for it ended.
    #[error("audit export: the session that asked for it ended")]
    SessionEnded,
}

/// Encodes the records before `end` into chunks of [`EXPORT_PAGE`] records sent on `tx`,
/// until the end, until the client goes away, or until `live` says the session that asked
/// ended (a logout, or its administrator disabled or demoted meanwhile): checked before
/// each page, so a long export stops with its session as the live event stream does.
/// Blocking.
fn encode_pages(
    audit: &Audit,
    format: &Format,
    end: u64,
    tx: &mpsc::Sender<Result<Vec<u8>, ExportError>>,
    live: &dyn Fn() -> bool,
) {
    let json = matches!(format, Format::Json);
    let mut from = 0u64;
    let mut first = true;
    let mut chunk = Vec::new();
    if json {
        chunk.push(b'[');
    }
    while from < end {
        if !live() {
            let _ = tx.blocking_send(Err(ExportError::SessionEnded));
            return;
        }
        let limit = usize::try_from(end - from).map_or(EXPORT_PAGE, |n| n.min(EXPORT_PAGE));
        let page = match audit.records(from, limit) {
            Ok(page) => page,
            Err(e) => {
                let _ = tx.blocking_send(Err(ExportError::Store(e)));
                return;
            }
        };
        let Some(last) = page.last() else {
            break;
        };
        // Keys are distinct sequence numbers from `from` on: the walk always advances.
        from = last
            .seq
            .saturating_add(1)
            .max(from.saturating_add(page.len() as u64));
        for rec in page.iter().filter(|r| r.seq < end) {
            format.encode(rec, first, &mut chunk);
            first = false;
        }
        if tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
            return; // the client went away
        }
    }
    if json {
        chunk.push(b']');
    }
    let _ = tx.blocking_send(Ok(chunk));
}

/// A response whose body is the trail up to `end` (exclusive), encoded on a blocking
/// thread and streamed with at most [`EXPORT_CHUNKS`] chunks waiting, while the session
/// `token` of `console` lives.
fn streamed(console: Arc<Console>, token: String, format: Format, end: u64) -> Response {
    let (tx, rx) = mpsc::channel(EXPORT_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let live = || console.sessions.is_live(&token).unwrap_or(false);
        encode_pages(&console.audit, &format, end, &tx, &live)
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    warp::reply::stream(body).into_response()
}

/// `GET /api/v1/audit/export?format=json|syslog`: the whole trail as a download, up to its
/// head when asked (the export's own audit record follows it).
pub(super) async fn export(
    c: &Arc<Console>,
    req: &Request,
    s: &Session,
    token: String,
) -> Result<Response, ApiError> {
    let format = match req
        .query
        .get("format")
        .map(String::as_str)
        .unwrap_or("json")
    {
        "json" => Format::Json,
        "syslog" => Format::Syslog {
            host: crate::console::hostname().unwrap_or_default(),
            source_id: c.device_id.clone(),
        },
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown format {other:?} (json or syslog)"
            )))
        }
    };
    let end = c.audit.head().map_or(0, |(seq, _)| seq.saturating_add(1));
    audit_now(
        c,
        Event::new(&s.user, Action::Export, TRAIL_OBJECT)
            .from(&source(req))
            .detail(format!("{end} records as {}", format.name())),
    )
    .await?;
    let (content_type, disposition) = match format {
        Format::Json => (
            "application/json",
            "attachment; filename=\"duli-audit.json\"",
        ),
        Format::Syslog { .. } => (
            "text/plain; charset=utf-8",
            "attachment; filename=\"duli-audit.log\"",
        ),
    };
    let mut r = streamed(Arc::clone(c), token, format, end);
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static(disposition),
    );
    Ok(r)
}

/// How long a verification of a trail whose head has not moved is answered again rather
/// than run again (the audit page asks on every visit; a walk of millions of records takes
/// a while).
pub const VERIFIED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// A verification of the trail, with the head it ended at and when it ran.
#[derive(Debug)]
pub struct Verified {
    head: Option<u64>,
    at: std::time::Instant,
    report: VerificationReport,
}

/// `GET /api/v1/audit/verify`: walks the hash chain off the runtime's threads, one walk at
/// a time (a request that comes meanwhile waits for it and takes its answer), answered
/// again for [`VERIFIED_FOR`] while the trail's head has not moved.
pub(super) async fn verify(c: &Console) -> Result<Response, ApiError> {
    let mut last = c.verified.lock().await;
    let head = c.audit.head().map(|(seq, _)| seq);
    if let Some(v) = last
        .as_ref()
        .filter(|v| v.head == head && v.at.elapsed() < VERIFIED_FOR)
    {
        return Ok(reply::json(StatusCode::OK, &v.report));
    }
    let audit = c.audit.clone();
    let report =
        VerificationReport::from(tokio::task::spawn_blocking(move || audit.verify()).await??);
    *last = Some(Verified {
        head,
        at: std::time::Instant::now(),
        report: report.clone(),
    });
    Ok(reply::json(StatusCode::OK, &report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Event};
    use crate::store::Store;

    /// An export stops at the page after its session ended, with an error (the client
    /// sees the body cut short), not at the end of the trail.
    #[test]
    fn an_export_stops_when_its_session_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        for i in 0..(3 * EXPORT_PAGE) {
            audit
                .append(Event::new("ada", Action::View, &format!("1.2.{i}")))
                .unwrap();
        }
        let end = audit.head().map_or(0, |(seq, _)| seq + 1);
        let (tx, mut rx) = mpsc::channel(16);
        let pages = std::sync::atomic::AtomicUsize::new(0);
        let live = || pages.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 1;
        encode_pages(&audit, &Format::Json, end, &tx, &live);
        drop(tx);
        let mut chunks = Vec::new();
        while let Ok(c) = rx.try_recv() {
            chunks.push(c);
        }
        assert_eq!(chunks.len(), 2, "one page, then the end");
        assert!(chunks[0].as_ref().is_ok_and(|c| !c.is_empty()));
        assert!(matches!(chunks[1], Err(ExportError::SessionEnded)));
        // A live session gets the whole trail.
        let (tx, mut rx) = mpsc::channel(16);
        encode_pages(&audit, &Format::Json, end, &tx, &|| true);
        drop(tx);
        let mut body = Vec::new();
        while let Ok(c) = rx.try_recv() {
            body.extend(c.unwrap());
        }
        let all: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(all.len(), 3 * EXPORT_PAGE);
    }
}
