//! `/api/v1/login`, `/api/v1/logout` and `/api/v1/me`: sessions as the browser sees them.

use super::{audit_now, parse_json, source, Request};
use crate::accounts::{self, Role};
use crate::audit::{Action, Event};
use crate::console::login_throttle::Target;
use crate::console::reply::{self, ApiError};
use crate::console::sessions::{self, Session};
use crate::console::Console;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use warp::http::StatusCode;
use warp::reply::Response;

/// Body of `POST /api/v1/login`.
#[derive(Deserialize)]
pub(super) struct LoginBody {
    username: String,
    password: String,
}

/// Who is logged in, and the CSRF token of the session (answer of login and `me`).
#[derive(Debug, Serialize)]
pub struct SessionView<'a> {
    /// User name.
    pub user: &'a str,
    /// Role.
    pub role: Role,
    /// The token state-changing requests must send in `X-CSRF-Token`.
    pub csrf: &'a str,
}

/// Answer of `POST /api/v1/logout`.
#[derive(Debug, Serialize)]
struct LoggedOut {
    logged_out: bool,
}

/// `GET /api/v1/me`.
pub(super) fn me(s: &Session) -> Response {
    reply::json(
        StatusCode::OK,
        &SessionView {
            user: &s.user,
            role: s.role,
            csrf: &s.csrf,
        },
    )
}

/// Answer of `GET /api/v1/session`.
#[derive(Debug, Serialize)]
struct Live {
    live: bool,
}

/// `GET /api/v1/session`: `{"live": true}` while the request's session lives, else 401.
/// Does not refresh the session's idle timer (the page asks it periodically to clear its
/// screen once the server ended the session; asking is not activity).
pub(super) fn check(c: &Console, req: &Request) -> Result<Response, ApiError> {
    let token = super::session_token(&req.headers)?.ok_or(ApiError::Unauthenticated)?;
    if !c.sessions.is_live(&token)? {
        return Err(ApiError::Unauthenticated);
    }
    Ok(reply::json(StatusCode::OK, &Live { live: true }))
}

/// The answer to a throttled login (or setup) attempt on `name` that must wait `wait`:
/// 429. Only the first throttled attempt of a window is audited; the rest are counted and
/// summed up in one record per window.
pub(in crate::console) async fn throttled(
    c: &Console,
    name: &str,
    req: &Request,
    wait: Duration,
) -> ApiError {
    // Rounded up: a client that retries after the Retry-After it was given is not
    // turned away again for the fraction of a second left.
    let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    if c.sessions.throttled.note(name, req.peer) == crate::console::throttle_log::Noted::First {
        let audited = audit_now(
            c,
            Event::new(name, Action::LoginFailed, name)
                .from(&source(req))
                .detail(format!(
                    "throttled for {secs} s; further throttled attempts are counted"
                ))
                .failed(),
        )
        .await;
        if let Err(e) = audited {
            return e;
        }
    }
    ApiError::Throttled(secs)
}

/// Ends the session whose cookie a login request carries: the browser's cookie is about
/// to be replaced, and the session of someone who did not log out on a shared reading-room
/// PC must not stay usable on the box until it expires. Recorded as that user's logout.
async fn end_the_browsers_previous_session(
    c: &Console,
    req: &Request,
    src: &str,
) -> Result<(), ApiError> {
    let Ok(Some(token)) = super::session_token(&req.headers) else {
        return Ok(());
    };
    let Some(previous) = c.sessions.lookup(&token, sessions::Activity::Background)? else {
        return Ok(());
    };
    c.sessions.remove(&token)?;
    audit_now(
        c,
        Event::new(&previous.user, Action::Logout, &previous.user)
            .from(src)
            .detail("ended by a new login in the same browser"),
    )
    .await?;
    Ok(())
}

/// `POST /api/v1/login`: checks the password (throttled per account and address, per
/// address and per account: [`crate::console::login_throttle`]) and opens a session.
pub(super) async fn login(c: &Arc<Console>, req: &Request) -> Result<Response, ApiError> {
    let body: LoginBody = parse_json(req)?;
    let src = source(req);
    let name = body.username.trim().to_string();
    if name.is_empty() || name.len() > 64 || body.password.len() > 1024 {
        return Err(ApiError::BadRequest(
            "user name and password required".into(),
        ));
    }
    // A password check is taken before the attempt counts: waiting for one is not a
    // failed login.
    let permit = tokio::time::timeout(
        crate::console::limits::PASSWORD_CHECK_WAIT,
        Arc::clone(&c.limits.password_checks).acquire_owned(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .ok_or_else(|| {
        ApiError::Busy("the console is checking as many passwords as it can; try again".into())
    })?;
    let target = Target::Account(name.clone());
    let attempt = match c.sessions.login_throttle.begin(target, req.peer) {
        Ok(attempt) => attempt,
        Err(wait) => return Err(throttled(c, &name, req, wait).await),
    };
    let user = c.users.get(&name)?;
    let password = body.password;
    let verified = {
        let user = user.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match &user {
                Some(u) => accounts::verify_password(&u.password, &password) && !u.disabled,
                None => {
                    accounts::burn_verify(&password);
                    false
                }
            }
        })
        .await?
    };
    let user = match (verified, user) {
        (true, Some(u)) => u,
        (_, u) => {
            // The attempt was counted as a failure when it began.
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
    c.sessions.login_throttle.succeeded(attempt);
    end_the_browsers_previous_session(c, req, &src).await?;
    let (token, session) = c.sessions.create(&user.name, user.role, &src)?;
    // A change to the account while its password was checked (role, disabled, password,
    // removal) is written before it ends the account's sessions: either it ended this one
    // too, or it is seen here and this session is ended. No session outlives a change.
    if c.users.get(&user.name)?.as_ref() != Some(&user) {
        c.sessions.remove(&token)?;
        audit_now(
            c,
            Event::new(&user.name, Action::LoginFailed, &user.name)
                .from(&src)
                .detail("the account changed while logging in")
                .failed(),
        )
        .await?;
        return Err(ApiError::BadLogin);
    }
    audit_now(
        c,
        Event::new(&user.name, Action::Login, &user.name)
            .from(&src)
            .detail(format!("role {}", user.role)),
    )
    .await?;
    let r = reply::json(
        StatusCode::OK,
        &SessionView {
            user: &user.name,
            role: user.role,
            csrf: &session.csrf,
        },
    );
    Ok(reply::with_cookies(
        r,
        &sessions::login_cookies(&token, &session.csrf),
    ))
}

/// `POST /api/v1/logout`: ends the session.
pub(super) async fn logout(
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
        reply::json(StatusCode::OK, &LoggedOut { logged_out: true }),
        &sessions::logout_cookies(),
    ))
}
