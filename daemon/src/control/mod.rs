//! The local control socket: `duli` commands that read or change the store work whether
//! or not the daemon runs. The store admits one process, so a command first asks the
//! running daemon over `<data_dir>/duli.sock` (mode 0600, and the peer's uid must be the
//! daemon's or root), and opens the store itself when no daemon answers.
//!
//! - [`protocol`]: the requests and their typed answers (one JSON line each way).
//! - [`mod@execute`]: a request run against an open store.
//! - [`client`]: the command line's calls, through the daemon or on the store.
//! - this module: the daemon's socket (mode 0600, peer uid checked).

pub mod client;
pub mod execute;
pub mod protocol;

pub use client::{
    ask_daemon, owner_child_main, record_audit, run_request, ClientError, OWNER_SUBCOMMAND,
};
pub use execute::execute;
pub use protocol::{Answer, Request, Response};

use crate::audit::Audit;
use crate::store::outbox::Outbox;
use crate::store::Store;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// File name of the socket inside the data directory.
pub const SOCKET_NAME: &str = "duli.sock";

/// Path of the socket in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Event};

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
            Response::Ok {
                data: Answer::Status(status),
            } => assert_eq!(status.instances, 0),
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
