//! `/api/v1/users`: console accounts (admins only). The last enabled admin can be neither
//! demoted, disabled nor removed; every change ends the user's sessions and is audited.

use super::{audit_now, parse_json, source, Request};
use crate::accounts::{self, Change, Changed, Role, UserInfo};
use crate::audit::{Action, Event};
use crate::console::reply::{self, ApiError};
use crate::console::sessions::Session;
use crate::console::Console;
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::reply::Response;

/// Body of `PUT /api/v1/users/{name}`: what changes (all of role and password for a new
/// account). A field it does not know is refused: a misspelt `"disable"` must not pass
/// for a change that was made.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserBody {
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
}

/// `PUT /api/v1/users/{name}`: creates (201) or changes (200) an account.
pub(super) async fn put(
    c: &Console,
    req: &Request,
    s: &Session,
    name: &str,
) -> Result<Response, ApiError> {
    accounts::check_name(name)?;
    let body: UserBody = parse_json(req)?;
    if body.role.is_none() && body.password.is_none() && body.disabled.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give role, password or disabled".into(),
        ));
    }
    // Hashed first, outside the accounts' lock: the change itself then applies to the
    // account as it is once hashing is done, not as it was when the request came in.
    let password = match body.password {
        Some(p) => Some(tokio::task::spawn_blocking(move || accounts::hash_password(&p)).await??),
        None => None,
    };
    let change = Change {
        role: body.role,
        password,
        disabled: body.disabled,
    };
    let Changed { old, new: user } = c.users.change(name, change, crate::clock::now_millis())?;
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

/// `DELETE /api/v1/users/{name}`.
pub(super) async fn delete(
    c: &Console,
    req: &Request,
    s: &Session,
    name: &str,
) -> Result<Response, ApiError> {
    c.users.remove(name)?;
    c.sessions.remove_user(name)?;
    audit_now(
        c,
        Event::new(&s.user, Action::UserChange, name)
            .from(&source(req))
            .detail("removed"),
    )
    .await?;
    Ok(reply::json(StatusCode::OK, &Removed { removed: name }))
}

/// Answer of a removal.
#[derive(Serialize)]
struct Removed<'a> {
    removed: &'a str,
}

/// `GET /api/v1/users`: every account, without password hashes.
pub(super) fn list(c: &Console) -> Result<Response, ApiError> {
    let list: Vec<UserInfo> = c.users.list()?.iter().map(UserInfo::from).collect();
    Ok(reply::json(StatusCode::OK, &list))
}
