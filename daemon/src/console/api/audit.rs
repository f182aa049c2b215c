//! `/api/v1/audit`: the audit trail (admins only): a page of records, the whole trail as
//! JSON or RFC 5424 syslog lines (itself audited), and the verification of its hash chain.

use super::{audit_now, source, Request};
use crate::audit::{Action, Event, Head, Record, VerificationReport};
use crate::console::reply::{self, ApiError};
use crate::console::sessions::Session;
use crate::console::{atna, Console};
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;

/// A page of the trail and its head.
#[derive(Serialize)]
struct AuditPage {
    records: Vec<Record>,
    head: Option<Head>,
}

/// The head of the trail as the console shows it.
pub(super) fn head(c: &Console) -> Option<Head> {
    c.audit.head().map(|(seq, hash)| Head { seq, hash })
}

/// `GET /api/v1/audit?from=&limit=` (at most 1000 records).
pub(super) fn list(c: &Console, req: &Request) -> Result<Response, ApiError> {
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
        &AuditPage {
            records,
            head: head(c),
        },
    ))
}

/// `GET /api/v1/audit/export?format=json|syslog`: the whole trail as a download.
pub(super) async fn export(c: &Console, req: &Request, s: &Session) -> Result<Response, ApiError> {
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
            let host = crate::console::hostname().unwrap_or_default();
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

/// `GET /api/v1/audit/verify`: walks the hash chain.
pub(super) fn verify(c: &Console) -> Result<Response, ApiError> {
    let report = VerificationReport::from(c.audit.verify()?);
    Ok(reply::json(StatusCode::OK, &report))
}
