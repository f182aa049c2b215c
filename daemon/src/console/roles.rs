//! Who may call what: the console's roles and its one route → role table.
//!
//! Every request is matched against [`ROUTES`] before any handler runs: a route that is
//! not public answers 401 without a valid session and 403 when the session's role is not
//! listed. Radiologists read studies and give feedback; technicians see system status,
//! the outbox and models, test connectivity and re-queue deliveries; both may upload
//! images for analysis; admins manage users and read the audit trail.

pub use crate::accounts::{Role, UnknownRole};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a session (health, metrics, login, the static front end).
    Public,
    /// No session, and changes only while no admin account exists (first-time setup).
    Setup,
    /// Any logged-in user.
    AnyRole,
    /// Logged-in users holding one of these roles.
    Roles(&'static [Role]),
}

impl Access {
    /// Whether `role` may call a route with this access.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Public | Access::AnyRole => true,
            Access::Setup => false,
            Access::Roles(roles) => roles.contains(&role),
        }
    }
}

/// What a route does; `api` dispatches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/healthz`.
    Health,
    /// `/metrics` (Prometheus).
    Metrics,
    /// A file of the front end.
    Asset,
    /// Log in.
    Login,
    /// Whether first-time setup is open.
    SetupStatus,
    /// Create the first administrator (first-time setup).
    Setup,
    /// Log out.
    Logout,
    /// The current session: user, role, CSRF token.
    Me,
    /// Whether the session still lives, without counting as activity (the page's check
    /// for automatic logoff).
    SessionCheck,
    /// The worklist.
    Studies,
    /// One study with its result.
    Study,
    /// An instance's 16-bit preview (PNG).
    Preview,
    /// What the preview's values mean (size, value range, window).
    PreviewInfo,
    /// The study's heatmap (PNG).
    Heatmap,
    /// Radiologist feedback on a study.
    Feedback,
    /// Server-sent events: studies arriving and changing state.
    Events,
    /// List users.
    Users,
    /// Create or replace a user.
    UserPut,
    /// Remove a user.
    UserDelete,
    /// Read the audit trail (JSON).
    Audit,
    /// Export the audit trail (JSON or RFC 5424 syslog lines).
    AuditExport,
    /// Verify the audit trail's hash chain.
    AuditVerify,
    /// System status: disk, queues, version, uptime.
    System,
    /// Deliveries waiting or failed.
    Outbox,
    /// The installed model(s).
    Models,
    /// A manual upload: DICOM, or a PNG/JPEG wrapped as Secondary Capture.
    Upload,
    /// C-ECHO to every configured DICOM peer.
    Echo,
    /// Re-queue dead-lettered outbox entries.
    OutboxRetry,
    /// The peer's own words with an entry's last refusal (audited: they may name the
    /// patient).
    OutboxPeerText,
}

impl Endpoint {
    /// Whether the route waits on other hosts (C-ECHO to a PACS that may never answer):
    /// such a request takes no request permit, but one of the console's few outbound
    /// slots ([`super::limits::Limits::outbound`]).
    pub fn waits_on_other_hosts(self) -> bool {
        matches!(self, Endpoint::Echo)
    }

    /// Whether a request of the route is the user's activity, restarting the session's
    /// idle timer: not the live event stream (opened and reopened by the page on its own)
    /// nor the page's check whether its session lives.
    pub fn is_user_activity(self) -> bool {
        !matches!(self, Endpoint::Events | Endpoint::SessionCheck)
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path pattern: literal segments, `{name}` for one segment, a trailing `*` for any rest.
    pub pattern: &'static str,
    /// Who may call it.
    pub access: Access,
    /// What it does.
    pub endpoint: Endpoint,
}

const RADIOLOGIST: &[Role] = &[Role::Radiologist];
const RADIOLOGIST_TECHNICIAN: &[Role] = &[Role::Radiologist, Role::Technician];
const TECHNICIAN: &[Role] = &[Role::Technician];
const TECHNICIAN_ADMIN: &[Role] = &[Role::Technician, Role::Admin];
const ADMIN: &[Role] = &[Role::Admin];

const fn route(
    method: &'static str,
    pattern: &'static str,
    access: Access,
    endpoint: Endpoint,
) -> Route {
    Route {
        method,
        pattern,
        access,
        endpoint,
    }
}

/// The one route → role table of the console.
pub const ROUTES: &[Route] = &[
    route("GET", "/healthz", Access::Public, Endpoint::Health),
    route("GET", "/metrics", Access::Public, Endpoint::Metrics),
    route("GET", "/", Access::Public, Endpoint::Asset),
    route("GET", "/static/*", Access::Public, Endpoint::Asset),
    route("POST", "/api/v1/login", Access::Public, Endpoint::Login),
    route("GET", "/api/v1/setup", Access::Setup, Endpoint::SetupStatus),
    route("POST", "/api/v1/setup", Access::Setup, Endpoint::Setup),
    route("POST", "/api/v1/logout", Access::AnyRole, Endpoint::Logout),
    route("GET", "/api/v1/me", Access::AnyRole, Endpoint::Me),
    route(
        "GET",
        "/api/v1/session",
        Access::AnyRole,
        Endpoint::SessionCheck,
    ),
    route("GET", "/api/v1/models", Access::AnyRole, Endpoint::Models),
    route(
        "GET",
        "/api/v1/studies",
        Access::Roles(RADIOLOGIST),
        Endpoint::Studies,
    ),
    route(
        "GET",
        "/api/v1/studies/{uid}",
        Access::Roles(RADIOLOGIST),
        Endpoint::Study,
    ),
    route(
        "GET",
        "/api/v1/studies/{uid}/instances/{sop}/preview",
        Access::Roles(RADIOLOGIST),
        Endpoint::Preview,
    ),
    route(
        "GET",
        "/api/v1/studies/{uid}/instances/{sop}/preview-info",
        Access::Roles(RADIOLOGIST),
        Endpoint::PreviewInfo,
    ),
    route(
        "GET",
        "/api/v1/studies/{uid}/heatmap",
        Access::Roles(RADIOLOGIST),
        Endpoint::Heatmap,
    ),
    route(
        "POST",
        "/api/v1/studies/{uid}/feedback",
        Access::Roles(RADIOLOGIST),
        Endpoint::Feedback,
    ),
    route(
        "GET",
        "/api/v1/events",
        Access::Roles(RADIOLOGIST),
        Endpoint::Events,
    ),
    route(
        "GET",
        "/api/v1/users",
        Access::Roles(ADMIN),
        Endpoint::Users,
    ),
    route(
        "PUT",
        "/api/v1/users/{name}",
        Access::Roles(ADMIN),
        Endpoint::UserPut,
    ),
    route(
        "DELETE",
        "/api/v1/users/{name}",
        Access::Roles(ADMIN),
        Endpoint::UserDelete,
    ),
    route(
        "GET",
        "/api/v1/audit",
        Access::Roles(ADMIN),
        Endpoint::Audit,
    ),
    route(
        "GET",
        "/api/v1/audit/export",
        Access::Roles(ADMIN),
        Endpoint::AuditExport,
    ),
    route(
        "GET",
        "/api/v1/audit/verify",
        Access::Roles(ADMIN),
        Endpoint::AuditVerify,
    ),
    route(
        "GET",
        "/api/v1/system",
        Access::Roles(TECHNICIAN_ADMIN),
        Endpoint::System,
    ),
    route(
        "GET",
        "/api/v1/outbox",
        Access::Roles(TECHNICIAN_ADMIN),
        Endpoint::Outbox,
    ),
    route(
        "POST",
        "/api/v1/outbox/retry",
        Access::Roles(TECHNICIAN),
        Endpoint::OutboxRetry,
    ),
    route(
        "GET",
        "/api/v1/outbox/{id}/peer-text",
        Access::Roles(TECHNICIAN_ADMIN),
        Endpoint::OutboxPeerText,
    ),
    route(
        "POST",
        "/api/v1/system/echo",
        Access::Roles(TECHNICIAN),
        Endpoint::Echo,
    ),
    route(
        "POST",
        "/api/v1/uploads",
        Access::Roles(RADIOLOGIST_TECHNICIAN),
        Endpoint::Upload,
    ),
];

/// A matched route with the values of its `{name}` segments, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The table row.
    pub route: Route,
    /// Values of the `{name}` segments.
    pub params: Vec<String>,
}

/// Why no route matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMatch {
    /// No pattern matches the path (404).
    NotFound,
    /// A pattern matches, but not with this method (405).
    MethodNotAllowed,
    /// A `{name}` segment decodes to `/`, NUL or bytes that are not UTF-8 (400).
    BadParameter,
}

/// Decodes one `{name}` segment: the path arrives as sent, percent-encoded (a browser
/// sends `ana.silva@h1` as `ana.silva%40h1`), and handlers look names up decoded. A
/// segment that decodes to a `/` (it would name another path), a NUL or bytes that are not
/// UTF-8 is refused rather than passed on.
fn decode_param(segment: &str) -> Result<String, NoMatch> {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(segment).collect();
    if bytes.iter().any(|b| *b == b'/' || *b == 0) {
        return Err(NoMatch::BadParameter);
    }
    String::from_utf8(bytes).map_err(|_| NoMatch::BadParameter)
}

/// Matches one pattern against a path; `Some(params)` on a match, the parameters as they
/// appear in the path (still percent-encoded).
pub fn match_pattern(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/').skip(1).peekable();
    let mut segs = path.split('/').skip(1);
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return Some(params),
            (Some("*"), _) if pat.peek().is_none() => return Some(params),
            (Some(p), Some(s)) if p.starts_with('{') && p.ends_with('}') => {
                if s.is_empty() {
                    return None;
                }
                params.push(s.to_string());
            }
            (Some(p), Some(s)) if p == s => {}
            _ => return None,
        }
    }
}

/// Finds the route of `method` and `path`, with its parameters percent-decoded.
pub fn find(method: &str, path: &str) -> Result<Matched, NoMatch> {
    let mut path_matched = false;
    for route in ROUTES {
        if let Some(params) = match_pattern(route.pattern, path) {
            path_matched = true;
            if route.method == method || (method == "HEAD" && route.method == "GET") {
                let params = params
                    .iter()
                    .map(|p| decode_param(p))
                    .collect::<Result<_, _>>()?;
                return Ok(Matched {
                    route: *route,
                    params,
                });
            }
        }
    }
    Err(if path_matched {
        NoMatch::MethodNotAllowed
    } else {
        NoMatch::NotFound
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments_and_capture_parameters() {
        assert_eq!(
            match_pattern("/api/v1/studies", "/api/v1/studies"),
            Some(vec![])
        );
        assert_eq!(match_pattern("/api/v1/studies", "/api/v1/studies/x"), None);
        assert_eq!(
            match_pattern(
                "/api/v1/studies/{uid}/heatmap",
                "/api/v1/studies/1.2.3/heatmap"
            ),
            Some(vec!["1.2.3".to_string()])
        );
        assert_eq!(
            match_pattern("/api/v1/studies/{uid}", "/api/v1/studies/"),
            None
        );
        assert_eq!(match_pattern("/static/*", "/static/app.js"), Some(vec![]));
        assert_eq!(match_pattern("/", "/"), Some(vec![]));
        assert_eq!(match_pattern("/", "/x"), None);
    }

    /// Parameters arrive percent-encoded (the browser encodes `@` in a user name); they
    /// are matched decoded, and a segment that decodes to `/`, NUL or bytes that are not
    /// UTF-8 matches nothing.
    #[test]
    fn parameters_are_percent_decoded_and_unsafe_ones_refused() {
        assert_eq!(
            find("DELETE", "/api/v1/users/ana.silva%40h1")
                .unwrap()
                .params,
            vec!["ana.silva@h1".to_string()]
        );
        assert_eq!(
            find("PUT", "/api/v1/users/ana.silva@h1").unwrap().params,
            vec!["ana.silva@h1".to_string()]
        );
        for bad in ["a%2Fb", "a%2fb", "a%00b", "a%FFb", "%2F"] {
            let path = format!("/api/v1/users/{bad}");
            assert_eq!(find("PUT", &path), Err(NoMatch::BadParameter), "{path}");
        }
    }

    #[test]
    fn every_api_route_but_login_needs_a_session() {
        for r in ROUTES {
            if r.pattern.starts_with("/api/") && r.endpoint != Endpoint::Login {
                assert_ne!(r.access, Access::Public, "{r:?}");
            }
        }
        assert_eq!(
            find("DELETE", "/api/v1/studies/1").unwrap_err(),
            NoMatch::MethodNotAllowed
        );
        assert_eq!(find("GET", "/nope").unwrap_err(), NoMatch::NotFound);
        assert_eq!(
            find("GET", "/api/v1/studies/1.2").unwrap().params,
            vec!["1.2".to_string()]
        );
    }
}
