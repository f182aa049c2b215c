//! The local control socket: `duli` commands that read or change the store work whether
//! or not the daemon runs. The store admits one process, so a command first asks the
//! running daemon over `<data_dir>/duli.sock` (mode 0600, and the peer's uid must be the
//! daemon's or root), and opens the store itself when no daemon answers.
//!
//! - [`protocol`]: the requests and their typed answers (one JSON line each way).
//! - [`mod@execute`]: a request run against an open store.
//! - [`client`]: the command line's calls, through the daemon or on the store.
//! - this module: the daemon's socket (mode 0600, peer uid checked, at most
//!   [`MAX_CONNECTIONS`] at once, each with [`REQUEST_DEADLINE`] to send its request).

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
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// File name of the socket inside the data directory.
pub const SOCKET_NAME: &str = "duli.sock";

/// Path of the socket in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Longest wait for a client's request line; a client that sends none is answered so and
/// closed.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Longest wait for a client to take its answer.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(60);
/// Most control connections served at once; one more is answered "busy" and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request line read.
const MAX_REQUEST: u64 = 64 * 1024;

/// Why a connection's request was not run (sent back as the error answer).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No complete request line came in time.
    #[error("no request within {} s", REQUEST_DEADLINE.as_secs())]
    Deadline,
    /// The request line is not UTF-8.
    #[error("bad request: not UTF-8")]
    NotUtf8,
    /// The request line is not a request.
    #[error("bad request: {0}")]
    Malformed(String),
    /// Every connection slot is taken.
    #[error("busy: {MAX_CONNECTIONS} control connections are open; try again")]
    Busy,
    /// Reading the request failed.
    #[error("reading the request: {0}")]
    Read(std::io::Error),
}

/// Serves the control socket until the task is dropped: at most [`MAX_CONNECTIONS`] at
/// once, each given [`REQUEST_DEADLINE`] to send its request line.
pub async fn serve(
    store: Arc<Store>,
    audit: Arc<Audit>,
    outbox: Arc<Outbox>,
    model: crate::infer::ModelStatus,
    listener: UnixListener,
) {
    let my_uid = nix::unistd::getuid().as_raw();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let caller = match stream.peer_cred() {
            Ok(cred) if cred.uid() == my_uid || cred.uid() == 0 => {
                execute::Caller::peer(cred.uid(), cred.pid())
            }
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
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::warn!("control socket: {}", RequestError::Busy);
            tokio::spawn(async move {
                let (_, mut w) = stream.into_split();
                let _ = reply(&mut w, &Response::error(RequestError::Busy)).await;
            });
            continue;
        };
        let store = store.clone();
        let audit = audit.clone();
        let outbox = outbox.clone();
        let model = model.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(store, audit, outbox, model, caller, stream).await {
                log::warn!("control socket: {e}");
            }
            drop(slot);
        });
    }
}

/// Writes `resp` as one line, within [`ANSWER_DEADLINE`].
async fn reply(w: &mut OwnedWriteHalf, resp: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    match tokio::time::timeout(ANSWER_DEADLINE, w.write_all(&out)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client did not take its answer",
        )),
    }
}

/// Reads the request line of a connection.
async fn read_request(r: OwnedReadHalf) -> Result<Request, RequestError> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    match tokio::time::timeout(REQUEST_DEADLINE, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err(RequestError::Deadline),
        Ok(Err(e)) => return Err(RequestError::Read(e)),
        Ok(Ok(_)) => {}
    }
    let text = std::str::from_utf8(&line).map_err(|_| RequestError::NotUtf8)?;
    serde_json::from_str::<Request>(text).map_err(|e| RequestError::Malformed(e.to_string()))
}

async fn handle(
    store: Arc<Store>,
    audit: Arc<Audit>,
    outbox: Arc<Outbox>,
    model: crate::infer::ModelStatus,
    caller: execute::Caller,
    stream: UnixStream,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let resp = match read_request(r).await {
        Ok(req) => {
            log::info!("control: {}", describe(&req));
            let mut resp = tokio::task::spawn_blocking(move || {
                execute(&store, &audit, Some(&outbox), &caller, &req)
            })
            .await
            .unwrap_or_else(|e| Response::Error {
                message: format!("command failed: {e}"),
            });
            // Only the running daemon knows its model's state.
            if let Response::Ok {
                data: crate::control::protocol::Answer::Status(status),
            } = &mut resp
            {
                status.model = Some(model.get().describe());
            }
            resp
        }
        Err(e) => {
            log::warn!("control socket: {e}");
            Response::error(e)
        }
    };
    reply(&mut w, &resp).await
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
        let outbox = Arc::new(store.outbox(Default::default()).unwrap());
        let task = tokio::spawn(serve(
            store.clone(),
            audit.clone(),
            outbox,
            crate::infer::ModelStatus::default(),
            listener,
        ));
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

    /// Reads one answer line from `stream` (at most 64 KiB), or `None` when the socket
    /// closes first or nothing comes within `within`.
    async fn reply_line(stream: &mut UnixStream, within: std::time::Duration) -> Option<String> {
        let mut buf = Vec::new();
        let mut reader = BufReader::new(stream).take(64 * 1024);
        match tokio::time::timeout(within, reader.read_until(b'\n', &mut buf)).await {
            Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf).into_owned()),
            _ => None,
        }
    }

    /// A request that is not UTF-8 gets an error answer; a client that sends nothing is
    /// cut off after the request deadline; past the cap on connections, one more is told
    /// so and closed, while the others still count.
    #[tokio::test]
    async fn silent_clients_bad_bytes_and_too_many_connections_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let audit = Arc::new(Audit::open(&store).unwrap());
        let listener = bind(dir.path()).unwrap();
        let outbox = Arc::new(store.outbox(Default::default()).unwrap());
        let task = tokio::spawn(serve(
            store,
            audit,
            outbox,
            crate::infer::ModelStatus::default(),
            listener,
        ));
        let path = socket_path(dir.path());
        let second = std::time::Duration::from_secs(1);

        let mut bad = UnixStream::connect(&path).await.unwrap();
        bad.write_all(b"{\"cmd\":\"status\xff\"}\n").await.unwrap();
        let answer = reply_line(&mut bad, 5 * second).await.expect("no answer");
        match serde_json::from_str::<Response>(&answer).unwrap() {
            Response::Error { message } => assert!(message.contains("UTF-8"), "{message}"),
            other => panic!("{other:?}"),
        }

        let started = std::time::Instant::now();
        let mut silent = Vec::new();
        for _ in 0..16 {
            silent.push(UnixStream::connect(&path).await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut extra = UnixStream::connect(&path).await.unwrap();
        extra.write_all(b"{\"cmd\":\"status\"}\n").await.unwrap();
        let answer = reply_line(&mut extra, 5 * second).await.expect("no answer");
        match serde_json::from_str::<Response>(&answer).unwrap() {
            Response::Error { message } => assert!(message.contains("busy"), "{message}"),
            other => panic!("the 17th connection was served: {other:?}"),
        }
        // The silent ones are closed after the deadline (with an answer saying why).
        for s in &mut silent {
            let line = reply_line(s, 15 * second)
                .await
                .expect("silent client kept");
            assert!(line.contains("no request"), "{line}");
        }
        let waited = started.elapsed();
        assert!(waited >= 9 * second && waited < 15 * second, "{waited:?}");
        // Served again once they are gone.
        let resp = run_request(dir.path(), Request::Status).await.unwrap();
        assert!(matches!(resp, Response::Ok { .. }), "{resp:?}");
        task.abort();
    }

    /// An answer that never ends (a socket planted in the data folder) is cut at the
    /// limit instead of filling the memory of the command.
    #[tokio::test]
    async fn an_endless_answer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(socket_path(dir.path())).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let chunk = vec![b'x'; 1 << 20];
            while s.write_all(&chunk).await.is_ok() {}
        });
        let asked = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            ask_daemon(dir.path(), &Request::Status),
        )
        .await
        .expect("still reading after 60 s");
        match asked {
            Err(ClientError::Decode(m)) => assert!(m.contains("larger than"), "{m}"),
            other => panic!("{other:?}"),
        }
        server.abort();
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
