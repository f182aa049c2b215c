//! First-time setup: creating the first administrator from the console while the users
//! store holds no admin account.
//!
//! - At start, with no admin account, a provisioned first administrator that came with a
//!   password (`pending-admin.toml` beside `duli.toml`, holding its hash, see
//!   [`crate::provision::take_pending_admin`]) is created at once, unless an account of
//!   that name exists: an account is never replaced. A pending file with a password is
//!   removed at start whether it was applied or not, and so is any pending file once an
//!   administrator exists. Otherwise a one-time
//!   setup code is generated and written to `<data_dir>/console/setup-code` (0600); the log
//!   names that file but never holds the code (logs travel: journal exports, support
//!   bundles). Whoever completes the setup must have read the file on the box, so a random
//!   client of the LAN cannot claim the box.
//! - `GET /api/v1/setup` tells the login page whether setup is open and which user name
//!   provisioning fixed. `POST /api/v1/setup` takes `{code, username, password}` as a
//!   same-origin JSON request (a cross-site form can neither send `application/json` nor
//!   forge `Origin`), needs no session, and is accepted only while no admin exists. Wrong
//!   codes are throttled like failed logins, on counters of their own
//!   ([`super::login_throttle::Target::Setup`]) that no login name shares (the client's
//!   counter, whatever it tries, is the same).
//! - Success: the admin account, an audit record, the code file and the pending file
//!   deleted; from then on the route answers 409 and the normal login works.

use super::api::{audit_now, parse_json, Request};
use super::login_throttle::Target;
use super::reply::{self, ApiError};
use super::Console;
use crate::accounts::{self, Role, User, UserInfo, Users};
use crate::audit::{Action, Audit, Event};
use crate::fsutil::{self, PRIVATE};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;

/// Name of the setup code file under `<data_dir>/console/`.
pub const CODE_FILE: &str = "setup-code";
/// Characters of a setup code (no 0/O, 1/I/L).
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Characters in a setup code (about 79 bits).
const CODE_LEN: usize = 16;

/// Errors of preparing the setup at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The users store failed.
    #[error("users store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The code file could not be written.
    #[error("setup code: {0}")]
    Write(#[from] fsutil::WriteError),
    /// The provisioned first administrator could not be created.
    #[error("provisioned first administrator: {0}")]
    User(#[from] accounts::UserError),
    /// The pending administrator file could not be read.
    #[error("{path}: {source}")]
    Pending {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The system random source failed.
    #[error("random source failed")]
    Random,
}

/// Setup while it is open.
struct Open {
    code: String,
    username: Option<String>,
    code_file: PathBuf,
}

/// The first-time setup state of the console.
pub struct Setup {
    open: tokio::sync::Mutex<Option<Open>>,
    config_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("config_dir", &self.config_dir)
            .finish_non_exhaustive()
    }
}

/// Whether any admin account exists (disabled ones count: setup is for a new box only).
pub fn has_admin(users: &Users) -> Result<bool, crate::store::StoreError> {
    Ok(users.list()?.iter().any(|u| u.role == Role::Admin))
}

fn new_code() -> Result<String, SetupError> {
    let mut bytes = [0u8; CODE_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SetupError::Random)?;
    let mut code = String::with_capacity(CODE_LEN + CODE_LEN / 4);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        // 256 is not a multiple of 31: the bias (at most 1/8 per character) is harmless here.
        code.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
    }
    Ok(code)
}

/// Whether `word` has the shape of a setup code (`XXXX-XXXX-XXXX-XXXX` over the code's
/// alphabet), so that text can be scrubbed of codes it should never have held.
pub fn looks_like_code(word: &str) -> bool {
    let b = word.as_bytes();
    b.len() == CODE_LEN + CODE_LEN / 4 - 1
        && b.iter().enumerate().all(|(i, c)| {
            if i % 5 == 4 {
                *c == b'-'
            } else {
                ALPHABET.contains(c)
            }
        })
}

/// A code as typed: upper case, without dashes and spaces.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Where the one-time setup code of `data_dir`'s console is kept while setup is open.
pub fn code_file(data_dir: &Path) -> PathBuf {
    data_dir
        .join(crate::tls::self_signed::GENERATED_DIR)
        .join(CODE_FILE)
}

/// What became of a provisioned first administrator while no administrator exists.
enum FromPending {
    /// Created with the provisioned password hash.
    Created,
    /// Not created: an account of that name exists.
    NotCreated,
    /// No usable password came with it: setup stays open and will create this name.
    NameOnly(String),
}

/// Creates the first administrator provisioned in `dir` (read as `p`), unless an account
/// of that name exists (never taken over) or it came without a usable password; the
/// pending file is removed unless it came without a password at all, and only once a
/// created account is durable.
fn create_pending(
    store: &crate::store::Store,
    users: &Users,
    audit: &Audit,
    p: crate::provision::ProvisionedAdmin,
    dir: &Path,
) -> Result<FromPending, SetupError> {
    let file = dir.join(crate::provision::PENDING_ADMIN);
    if users.get(&p.name)?.is_some() {
        // Provisioning creates an account; it never takes over one that exists.
        forget_pending(dir);
        audit.append(
            Event::new("system", Action::UserChange, &p.name)
                .from("local")
                .detail(
                    "provisioned first administrator not created: an account of that \
                     name exists",
                )
                .failed(),
        )?;
        log::warn!(
            "console: first administrator {:?} of {} not created: an account of that \
             name exists and is never replaced; the file was removed",
            p.name,
            file.display()
        );
        return Ok(FromPending::NotCreated);
    }
    let password = match p.credential() {
        Ok(Some(password)) => password,
        Ok(None) => return Ok(FromPending::NameOnly(p.name)),
        Err(e) => {
            forget_pending(dir);
            log::warn!(
                "console: first administrator {:?} of {} not created: {e}; the file was \
                 removed",
                p.name,
                file.display()
            );
            return Ok(FromPending::NameOnly(p.name));
        }
    };
    let user = User {
        name: p.name.clone(),
        role: Role::Admin,
        password,
        created_ms: crate::clock::now_millis(),
        disabled: false,
    };
    users.put(&user)?;
    audit.append(
        Event::new("system", Action::UserChange, &user.name)
            .from("local")
            .detail("first administrator created from the provisioning file"),
    )?;
    // Durable before the hash is gone: the file never outlives this start.
    store.flush_blocking()?;
    forget_pending(dir);
    log::info!(
        "console: first administrator {:?} created from {}",
        user.name,
        file.display()
    );
    Ok(FromPending::Created)
}

fn read_pending(
    config_dir: &Path,
) -> Result<Option<crate::provision::ProvisionedAdmin>, SetupError> {
    let path = config_dir.join(crate::provision::PENDING_ADMIN);
    crate::provision::read_pending_admin(config_dir)
        .map_err(|source| SetupError::Pending { path, source })
}

fn forget_pending(config_dir: &Path) {
    if let Err(e) = crate::provision::take_pending_admin(config_dir) {
        log::warn!(
            "console: cannot remove {}: {e}; delete it by hand",
            config_dir.join(crate::provision::PENDING_ADMIN).display()
        );
    }
}

impl Setup {
    /// Prepares the setup at start: nothing when an admin exists (a stale code file and a
    /// stale pending administrator are removed); the provisioned administrator when it came
    /// with a password and no account has its name (the pending file is removed either
    /// way); else a new one-time code, written to `<data_dir>/console/setup-code` (0600);
    /// the log names the file, never the code. An account created here is flushed to the
    /// store before its pending file is removed.
    pub fn prepare(
        store: &crate::store::Store,
        users: &Users,
        audit: &Audit,
        config_dir: Option<&Path>,
    ) -> Result<Setup, SetupError> {
        let code_file = code_file(store.root());
        let closed = Setup {
            open: tokio::sync::Mutex::new(None),
            config_dir: config_dir.map(Path::to_path_buf),
        };
        let pending = match config_dir {
            Some(dir) => read_pending(dir).map(|p| p.map(|p| (p, dir)))?,
            None => None,
        };
        if has_admin(users)? {
            let _ = std::fs::remove_file(&code_file);
            if let Some((p, dir)) = &pending {
                forget_pending(dir);
                log::warn!(
                    "console: {} named first administrator {:?}, but an administrator exists: \
                     nothing was changed and the file was removed",
                    dir.join(crate::provision::PENDING_ADMIN).display(),
                    p.name
                );
            }
            return Ok(closed);
        }
        let mut username = None;
        if let Some((p, dir)) = pending {
            match create_pending(store, users, audit, p, dir)? {
                FromPending::Created => {
                    let _ = std::fs::remove_file(&code_file);
                    return Ok(closed);
                }
                FromPending::NotCreated => {}
                FromPending::NameOnly(name) => username = Some(name),
            }
        }
        let code = new_code()?;
        fsutil::write_atomic(&code_file, format!("{code}\n").as_bytes(), PRIVATE, None)?;
        log::warn!(
            "console: no administrator yet; first-time setup is open on the console with the \
             one-time code in {} (readable by root and the service user only){}",
            code_file.display(),
            username
                .as_ref()
                .map(|u| format!("; the administrator will be {u:?}"))
                .unwrap_or_default()
        );
        Ok(Setup {
            open: tokio::sync::Mutex::new(Some(Open {
                code,
                username,
                code_file,
            })),
            config_dir: closed.config_dir,
        })
    }
}

/// `GET /api/v1/setup`: whether first-time setup is open, the fixed user name, and
/// whether any account exists (then the login page offers setup beside the login form).
pub async fn status(c: &Console) -> Result<Response, ApiError> {
    let open = c.setup.open.lock().await;
    let required = open.is_some() && !has_admin(&c.users)?;
    let username = open.as_ref().and_then(|o| o.username.clone());
    Ok(reply::json(
        StatusCode::OK,
        &json!({
            "required": required,
            "username": if required { username } else { None },
            "accounts": !c.users.is_empty(),
        }),
    ))
}

#[derive(Deserialize)]
pub(super) struct SetupBody {
    code: String,
    #[serde(default)]
    username: Option<String>,
    password: String,
}

/// Refuses a request whose `Origin` (or `Sec-Fetch-Site`) shows another site.
fn same_origin(req: &Request) -> Result<(), ApiError> {
    super::api::cross_site(req)?;
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(origin) = header("origin") {
        let host = header("host").unwrap_or_default();
        if origin != format!("https://{host}") {
            return Err(ApiError::Forbidden);
        }
    }
    Ok(())
}

/// `POST /api/v1/setup`: creates the first administrator with the setup code.
pub async fn complete(c: &Arc<Console>, req: &Request) -> Result<Response, ApiError> {
    same_origin(req)?;
    let body: SetupBody = parse_json(req)?;
    let src = req.peer.map(|p| p.to_string()).unwrap_or_default();
    let mut open = c.setup.open.lock().await;
    if has_admin(&c.users)? {
        if let Some(o) = open.take() {
            let _ = std::fs::remove_file(&o.code_file);
        }
    }
    let Some(o) = open.as_ref() else {
        return Err(ApiError::Conflict(
            "first-time setup is done; log in instead".into(),
        ));
    };
    let attempt = match c.sessions.login_throttle.begin(Target::Setup, req.peer) {
        Ok(attempt) => attempt,
        // Audited and rounded up as a throttled login is.
        Err(wait) => return Err(super::api::throttled(c, "setup", req, wait).await),
    };
    if !super::sessions::same_token(&normalise(&body.code), &normalise(&o.code)) {
        // The attempt was counted as a failure when it began.
        audit_now(
            c,
            Event::new("setup", Action::LoginFailed, "first-time setup")
                .from(&src)
                .detail("wrong setup code")
                .failed(),
        )
        .await?;
        return Err(ApiError::Forbidden);
    }
    // The right code: the attempt is given back, whatever the rest of the request holds.
    c.sessions.login_throttle.succeeded(attempt);
    let name = match (&o.username, body.username.as_deref().map(str::trim)) {
        (Some(fixed), Some(given)) if given != fixed && !given.is_empty() => {
            return Err(ApiError::BadRequest(format!(
                "the administrator of this box is {fixed:?} (set at provisioning)"
            )))
        }
        (Some(fixed), _) => fixed.clone(),
        (None, Some(given)) => given.to_string(),
        (None, None) => return Err(ApiError::BadRequest("user name required".into())),
    };
    accounts::check_name(&name)?;
    if c.users.get(&name)?.is_some() {
        // Setup creates an account; it never takes over one that exists.
        return Err(ApiError::Conflict(format!(
            "an account {name:?} exists already; choose another name"
        )));
    }
    let password = body.password;
    let hash = tokio::task::spawn_blocking(move || accounts::hash_password(&password)).await??;
    let user = User {
        name: name.clone(),
        role: Role::Admin,
        password: hash,
        created_ms: crate::clock::now_millis(),
        disabled: false,
    };
    // Checked again with the write, under the accounts' lock: an account made while the
    // password was hashed is not replaced.
    c.users.create(&user).map_err(|e| match e {
        accounts::CreateError::Exists(name) => ApiError::Conflict(format!(
            "an account {name:?} exists already; choose another name"
        )),
        accounts::CreateError::User(e) => e.into(),
    })?;
    audit_now(
        c,
        Event::new(&name, Action::UserChange, &name)
            .from(&src)
            .detail("first administrator created by first-time setup"),
    )
    .await?;
    if let Some(o) = open.take() {
        if let Err(e) = std::fs::remove_file(&o.code_file) {
            log::warn!("console: cannot remove {}: {e}", o.code_file.display());
        }
    }
    if let Some(dir) = &c.setup.config_dir {
        forget_pending(dir);
    }
    log::info!("console: first-time setup done; administrator {name:?} created from {src}");
    Ok(reply::json(StatusCode::CREATED, &UserInfo::from(&user)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_random_grouped_and_compare_as_typed() {
        let a = new_code().unwrap();
        let b = new_code().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), CODE_LEN + 3);
        assert_eq!(a.matches('-').count(), 3);
        assert!(normalise(&a).bytes().all(|c| ALPHABET.contains(&c)));
        assert_eq!(
            normalise(&a.to_lowercase().replace('-', " ")),
            normalise(&a)
        );
    }
}
