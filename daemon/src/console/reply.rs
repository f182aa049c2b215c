//! HTTP answers of the console: the one mapping from [`ApiError`] to status codes and JSON
//! bodies, and the security headers every answer carries.

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

/// Why a request failed; each kind has one status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No such route or object (404).
    #[error("not found")]
    NotFound,
    /// The route exists with another method (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No valid session (401).
    #[error("login required")]
    Unauthenticated,
    /// More than one session cookie (401): which one the browser meant cannot be told.
    #[error("more than one session cookie; clear this site's cookies and log in again")]
    DuplicateSession,
    /// The session's role may not call this route (403).
    #[error("your role may not do this")]
    Forbidden,
    /// A state-changing request without the session's CSRF token (403).
    #[error("missing or wrong CSRF token")]
    Csrf,
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the route accepts (413); the limit as text.
    #[error("request body too large (at most {0})")]
    TooLarge(String),
    /// Wrong user name or password, or a disabled account (401).
    #[error("wrong user name or password")]
    BadLogin,
    /// Too many failed logins; retry after this many seconds (429).
    #[error("too many failed logins; retry in {0} s")]
    Throttled(u64),
    /// This user already runs as many such requests as allowed (429).
    #[error("{0}")]
    TooMany(String),
    /// The console runs as many such requests as it can (503).
    #[error("{0}")]
    Busy(String),
    /// The request body stopped arriving (408).
    #[error("the request body stopped arriving")]
    Timeout,
    /// The object existed but its data is gone (410).
    #[error("{0}")]
    Gone(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// Something failed on our side (500); the detail goes to the log only.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The status code of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthenticated | ApiError::DuplicateSession | ApiError::BadLogin => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden | ApiError::Csrf => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Throttled(_) | ApiError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short machine-readable name.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::DuplicateSession => "duplicate_session_cookie",
            ApiError::Forbidden => "forbidden",
            ApiError::Csrf => "csrf",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::TooLarge(_) => "too_large",
            ApiError::BadLogin => "bad_login",
            ApiError::Throttled(_) => "throttled",
            ApiError::TooMany(_) => "too_many",
            ApiError::Busy(_) => "busy",
            ApiError::Timeout => "timeout",
            ApiError::Gone(_) => "gone",
            ApiError::Conflict(_) => "conflict",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The JSON answer.
    pub fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            log::error!("console: {detail}");
        }
        let mut r = json(
            self.status(),
            &serde_json::json!({"error": self.code(), "message": self.to_string()}),
        );
        let retry = match &self {
            ApiError::Throttled(secs) => Some(*secs),
            ApiError::TooMany(_) | ApiError::Busy(_) => Some(5),
            _ => None,
        };
        if let Some(secs) = retry {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::store::outbox::OutboxError> for ApiError {
    fn from(e: crate::store::outbox::OutboxError) -> ApiError {
        match e {
            crate::store::outbox::OutboxError::NotFound(_) => ApiError::NotFound,
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<super::outbox_view::RetryBodyError> for ApiError {
    fn from(e: super::outbox_view::RetryBodyError) -> ApiError {
        ApiError::BadRequest(e.to_string())
    }
}

/// An upload that is not an image this box takes is the client's mistake.
impl From<super::upload::UploadError> for ApiError {
    fn from(e: super::upload::UploadError) -> ApiError {
        ApiError::BadRequest(e.to_string())
    }
}

/// Storing an object failed on our side.
impl From<crate::results::ResultsError> for ApiError {
    fn from(e: crate::results::ResultsError) -> ApiError {
        ApiError::Internal(format!("store: {e}"))
    }
}

/// A request body that breaks off mid-way.
impl From<warp::Error> for ApiError {
    fn from(e: warp::Error) -> ApiError {
        ApiError::BadRequest(e.to_string())
    }
}

/// A JSON body that does not decode as the route's request.
impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> ApiError {
        ApiError::BadRequest(e.to_string())
    }
}

/// A file of ours that cannot be read (its path stays in the server's log, not the answer).
impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

/// A blocking task that panicked or was cancelled.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

/// A bad user name or password, or a new account without its role or password, is the
/// client's mistake; an unknown account is 404, a change that would leave no admin 409; the
/// rest is ours.
impl From<crate::accounts::UserError> for ApiError {
    fn from(e: crate::accounts::UserError) -> ApiError {
        use crate::accounts::UserError;
        match e {
            UserError::BadName(_) | UserError::BadPassword | UserError::Required(_) => {
                ApiError::BadRequest(e.to_string())
            }
            UserError::NotFound(_) => ApiError::NotFound,
            UserError::LastAdmin(_) => ApiError::Conflict(e.to_string()),
            UserError::Store(_) | UserError::BadHash(_) | UserError::Random => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<super::sessions::SessionError> for ApiError {
    fn from(e: super::sessions::SessionError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

impl From<super::services::FeedbackNotQueued> for ApiError {
    fn from(e: super::services::FeedbackNotQueued) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

/// A preview of pruned pixel data is gone, one that cannot be written is our failure, one
/// not rendered for other renders is busy (503; 429 when the user has several waiting
/// already), and one that cannot be read or decoded
/// conflicts with what the instance holds.
impl From<super::preview::PreviewError> for ApiError {
    fn from(e: super::preview::PreviewError) -> ApiError {
        use super::preview::PreviewError;
        match e {
            PreviewError::Pruned => ApiError::Gone(e.to_string()),
            // Its detail names the file on the box: kept in the log, as paths are.
            PreviewError::Read(ref detail) => {
                log::warn!("preview: cannot read the DICOM file: {detail}");
                ApiError::Conflict("cannot read the DICOM file of this instance".into())
            }
            PreviewError::Write(_) => ApiError::Internal(e.to_string()),
            PreviewError::Busy => ApiError::Busy(e.to_string()),
            PreviewError::UserBusy => ApiError::TooMany(e.to_string()),
            _ => ApiError::Conflict(e.to_string()),
        }
    }
}

/// A JSON answer.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    bytes(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

/// An answer with a body and content type.
pub fn bytes(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// Adds `Set-Cookie` headers.
pub fn with_cookies(mut r: Response, cookies: &[String]) -> Response {
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// The headers every answer carries: HSTS, no sniffing, no framing, no loading by other
/// origins, a strict content security policy, no referrer, and (unless the handler set
/// one) no caching.
pub fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut warp::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(
        h,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; \
         connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A preview whose file cannot be read answers 409 without the file's path on the box.
    #[test]
    fn an_unreadable_preview_names_no_path() {
        let e = ApiError::from(super::super::preview::PreviewError::Read(
            "/var/lib/duli/studies/1.2.3/4.dcm: No such file or directory".into(),
        ));
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(!e.to_string().contains("/var/lib"), "{e}");
    }
}
