//! The local control socket: `duli` commands that read or change the store work whether
//! or not the daemon runs. The store admits one process, so a command first asks the
//! running daemon over `<data_dir>/duli.sock` (mode 0600, and the peer's uid must be the
//! daemon's or root), and opens the store itself when no daemon answers.
//!
//! Wire format: one JSON [`Request`] line, one JSON [`Response`] line.

use crate::accounts::{PasswordHash, Role, User, UserInfo, Users};
use crate::audit::{Action, Audit, Event};
use crate::deliver::outbox::{Destination, Outbox, OutboxLimits, RetrySelector};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// File name of the socket inside the data directory.
pub const SOCKET_NAME: &str = "duli.sock";

/// A command for the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Rebuild the instance index from the files.
    Reindex,
    /// Counts of instances and studies per state.
    Status,
    /// List studies.
    Studies,
    /// Verify the audit trail's hash chain.
    AuditVerify,
    /// List outbox entries (optionally of one destination).
    OutboxList {
        /// `hl7`, `mqtt` or `pacs:NAME`; all when absent.
        #[serde(default)]
        dest: Option<String>,
    },
    /// Re-queue dead entries and make retrying ones due now: `all`, an entry id, or a
    /// destination.
    OutboxRetry {
        /// What to retry.
        selector: String,
    },
    /// List the instances of one study, or of every study.
    Instances {
        /// Study Instance UID; all studies when absent.
        #[serde(default)]
        study: Option<String>,
    },
    /// Create a console user (the password is hashed by the CLI; only the hash travels).
    UserAdd {
        /// Login name.
        name: String,
        /// Role.
        role: Role,
        /// PBKDF2 hash of the password.
        password_hash: PasswordHash,
    },
    /// List console users (names, roles, never hashes).
    UserList,
    /// Append a record to the audit trail (technician commands: firmware, provisioning).
    AuditAppend(Event),
}

impl Request {
    /// The request that appends `event` to the audit trail.
    pub fn audit(event: Event) -> Request {
        Request::AuditAppend(event)
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// Done; `data` is the command's result.
    Ok {
        /// The result as JSON.
        data: serde_json::Value,
    },
    /// Failed; `message` says why.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Path of the socket in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
enum ExecError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
}

fn user_add(
    store: &Store,
    audit: &Audit,
    name: &str,
    role: Role,
    password_hash: &PasswordHash,
) -> Result<serde_json::Value, ExecError> {
    let users = Users::open(store)?;
    if users.get(name)?.is_some() {
        return Err(ExecError::Refused(format!(
            "user {name} exists (change it in the console's Users page)"
        )));
    }
    let user = User {
        name: name.to_string(),
        role,
        password: password_hash.clone(),
        created_ms: crate::clock::now_millis(),
        disabled: false,
    };
    users
        .put(&user)
        .map_err(|e| ExecError::Refused(e.to_string()))?;
    audit.append(
        Event::new("local-cli", Action::UserChange, name)
            .from("local")
            .detail(format!("created with role {role}")),
    )?;
    store.flush_blocking()?;
    Ok(serde_json::json!({"created": name, "role": role}))
}

/// Runs a request against an open store and its audit trail (in the daemon, or in the CLI
/// when no daemon runs). The daemon passes its one shared [`Audit`] handle so that
/// appended records keep the chain, and its own `outbox` so a retry wakes its workers;
/// without one the outbox is opened here.
pub fn execute(store: &Store, audit: &Audit, outbox: Option<&Outbox>, req: &Request) -> Response {
    let result: Result<serde_json::Value, ExecError> = match req {
        Request::OutboxList { .. } | Request::OutboxRetry { .. } => {
            return with_outbox(store, outbox, req)
        }
        Request::UserAdd {
            name,
            role,
            password_hash,
        } => user_add(store, audit, name, *role, password_hash),
        Request::UserList => Users::open(store)
            .and_then(|u| u.list())
            .map(|list| {
                serde_json::to_value(
                    list.iter()
                        .map(UserInfo::from)
                        .collect::<Vec<_>>(),
                )
                .unwrap_or_default()
            })
            .map_err(ExecError::from),
        Request::Reindex => store
            .reindex()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .map_err(ExecError::from),
        Request::Status => store.study_state_counts().map(|counts| {
            let mut studies = serde_json::Map::new();
            for (s, n) in counts {
                studies.insert(s.as_str().to_string(), n.into());
            }
            serde_json::json!({
                "instances": store.instance_count(),
                "studies": studies,
            })
        })
        .map_err(ExecError::from),
        Request::Studies => store
            .studies()
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .map_err(ExecError::from),
        Request::AuditVerify => audit
            .verify()
            .map_err(ExecError::from)
            .map(|v| {
                serde_json::json!({
                    "records": v.records,
                    "head": v.head,
                    "intact": v.broken.is_none(),
                    "first_broken": v.broken.map(|b| serde_json::json!({"seq": b.seq, "reason": b.reason})),
                })
            }),
        Request::AuditAppend(event) => audit
            .append(event.clone())
            .and_then(|rec| {
                store.flush_blocking()?;
                Ok(serde_json::json!({"seq": rec.seq, "hash": rec.hash}))
            })
            .map_err(ExecError::from),
        Request::Instances { study } => {
            let studies = match study {
                Some(uid) => Ok(vec![uid.clone()]),
                None => store
                    .studies()
                    .map(|v| v.into_iter().map(|s| s.study_instance_uid).collect()),
            };
            studies.and_then(|uids| {
                let mut all = Vec::new();
                for uid in uids {
                    all.extend(store.instances_of(&uid)?);
                }
                Ok(serde_json::to_value(all).unwrap_or_default())
            })
            .map_err(ExecError::from)
        }
    };
    match result {
        Ok(data) => Response::Ok { data },
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

/// Runs an outbox request on the daemon's outbox, or on one opened here.
fn with_outbox(store: &Store, outbox: Option<&Outbox>, req: &Request) -> Response {
    match outbox {
        Some(o) => outbox_request(o, req),
        None => match store.outbox(OutboxLimits::default()) {
            Ok(o) => outbox_request(&o, req),
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        },
    }
}

fn outbox_request(outbox: &Outbox, req: &Request) -> Response {
    let result = match req {
        Request::OutboxList { dest } => {
            let dest = match dest.as_deref().map(str::parse::<Destination>).transpose() {
                Ok(d) => d,
                Err(e) => return Response::Error { message: e },
            };
            outbox.list(dest.as_ref()).map(|entries| {
                serde_json::json!({
                    "table": crate::deliver::outbox::render_table(&entries, crate::clock::now_millis()),
                    "entries": entries.len(),
                })
            })
        }
        Request::OutboxRetry { selector } => {
            let sel = match selector.parse::<RetrySelector>() {
                Ok(s) => s,
                Err(e) => {
                    return Response::Error {
                        message: e.to_string(),
                    }
                }
            };
            outbox
                .retry(&sel)
                .map(|n| serde_json::json!({ "requeued": n }))
        }
        _ => {
            return Response::Error {
                message: "not an outbox request".into(),
            }
        }
    };
    match result {
        Ok(data) => Response::Ok { data },
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

/// Serves the control socket until the task is dropped.
pub async fn serve(
    store: Arc<Store>,
    audit: Arc<Audit>,
    outbox: Option<Arc<Outbox>>,
    listener: UnixListener,
) {
    let my_uid = nix::unistd::getuid().as_raw();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == my_uid || cred.uid() == 0 => {}
            Ok(cred) => {
                log::warn!(
                    "control socket: refused uid {} (only {my_uid} and root)",
                    cred.uid()
                );
                continue;
            }
            Err(e) => {
                log::warn!("control socket: cannot read peer credentials: {e}");
                continue;
            }
        }
        let store = store.clone();
        let audit = audit.clone();
        let outbox = outbox.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(store, audit, outbox, stream).await {
                log::warn!("control socket: {e}");
            }
        });
    }
}

async fn handle(
    store: Arc<Store>,
    audit: Arc<Audit>,
    outbox: Option<Arc<Outbox>>,
    stream: UnixStream,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(64 * 1024));
    reader.read_line(&mut line).await?;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            log::info!("control: {}", describe(&req));
            tokio::task::spawn_blocking(move || execute(&store, &audit, outbox.as_deref(), &req))
                .await
                .unwrap_or_else(|e| Response::Error {
                    message: format!("command failed: {e}"),
                })
        }
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await
}

/// A log line for a request (without password hashes).
fn describe(req: &Request) -> String {
    match req {
        Request::UserAdd { name, role, .. } => {
            format!("UserAdd {{ name: {name:?}, role: {role} }}")
        }
        other => format!("{other:?}"),
    }
}

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Talking to the daemon failed mid-way.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon answered something unreadable.
    #[error("control socket: unreadable answer: {0}")]
    Decode(String),
    /// Opening the store directly failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The daemon (or the store) refused the request.
    #[error("{0}")]
    Refused(String),
}

/// Appends `event` to the audit trail, through the running daemon or, when none runs, on
/// the store opened here. Returns the new record's sequence number.
pub async fn record_audit(data_dir: &Path, event: Event) -> Result<u64, ClientError> {
    match run_request(data_dir, Request::audit(event)).await? {
        Response::Ok { data } => Ok(data["seq"].as_u64().unwrap_or_default()),
        Response::Error { message } => Err(ClientError::Refused(message)),
    }
}

/// Sends a request to the running daemon; `Ok(None)` when no daemon listens.
pub async fn ask_daemon(data_dir: &Path, req: &Request) -> Result<Option<Response>, ClientError> {
    let path = socket_path(data_dir);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(source) => return Err(ClientError::Io { path, source }),
    };
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let (r, mut w) = stream.into_split();
    let mut msg = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
    msg.push(b'\n');
    w.write_all(&msg).await.map_err(io)?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.map_err(io)?;
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| ClientError::Decode(e.to_string()))
}

/// Runs a request through the daemon when it runs, else on the store opened here.
pub async fn run_request(data_dir: &Path, req: Request) -> Result<Response, ClientError> {
    if let Some(resp) = ask_daemon(data_dir, &req).await? {
        return Ok(resp);
    }
    let dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let store = Store::open(&dir)?;
        let audit = Audit::open(&store)?;
        let resp = execute(&store, &audit, None, &req);
        store.flush_blocking()?;
        Ok(resp)
    })
    .await
    .map_err(|e| ClientError::Decode(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit request carries the event's fields flat beside the command, as an older
    /// CLI sends them (source and detail optional).
    #[test]
    fn audit_append_is_the_event_flat_on_the_wire() {
        let req = Request::audit(Event::new("cli:root", Action::Software, "firmware").detail("x"));
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["cmd"], "audit_append");
        assert_eq!(
            (v["actor"].as_str(), v["detail"].as_str()),
            (Some("cli:root"), Some("x"))
        );
        let old = r#"{"cmd":"audit_append","actor":"a","action":"software","object":"o","success":false}"#;
        match serde_json::from_str::<Request>(old).unwrap() {
            Request::AuditAppend(e) => {
                assert_eq!(
                    (e.actor.as_str(), e.success, e.detail.as_str()),
                    ("a", false, "")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn request_goes_through_the_socket_when_a_daemon_listens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let audit = Arc::new(Audit::open(&store).unwrap());
        let listener = bind(dir.path()).unwrap();
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let task = tokio::spawn(serve(store.clone(), audit.clone(), None, listener));
        // The store is held by this process: only the socket path can answer.
        let resp = run_request(dir.path(), Request::Status).await.unwrap();
        match resp {
            Response::Ok { data } => assert_eq!(data["instances"], 0),
            other => panic!("{other:?}"),
        }
        // Records appended through the socket use the daemon's handle: the chain holds.
        audit
            .append(Event::new("daemon", Action::Other, "x"))
            .unwrap();
        let seq = record_audit(
            dir.path(),
            Event::new("technician", Action::Software, "firmware").detail("install 1.2.3"),
        )
        .await
        .unwrap();
        assert_eq!(seq, 1);
        audit
            .append(Event::new("daemon", Action::Other, "y"))
            .unwrap();
        let v = audit.verify().unwrap();
        assert_eq!(v.records, 3);
        assert!(v.broken.is_none(), "{v:?}");
        task.abort();
    }

    #[tokio::test]
    async fn without_a_daemon_the_store_is_opened_directly() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let resp = run_request(dir.path(), Request::Reindex).await.unwrap();
        assert!(matches!(resp, Response::Ok { .. }), "{resp:?}");
        for i in 0..2 {
            let seq = record_audit(dir.path(), Event::new("technician", Action::Software, "x"))
                .await
                .unwrap();
            assert_eq!(seq, i);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(Audit::open(&store).unwrap().verify().unwrap().records, 2);
    }
}
