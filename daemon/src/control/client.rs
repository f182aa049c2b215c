//! The command line's side of the control socket: a request goes to the running daemon,
//! or to the store opened here when no daemon answers; typed calls decode each answer.

use super::execute::execute;
use super::protocol::{OutboxListing, Request, Requeued, Response, StoreStatus};
use super::socket_path;
use crate::audit::{Audit, Event, Head, VerificationReport};
use crate::store::{Store, StoreError};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

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

/// Runs `req` and decodes its answer as `T` (the type the request answers, see
/// [`super::Answer`]); the daemon's or the store's refusal is [`ClientError::Refused`].
pub async fn call<T: DeserializeOwned>(data_dir: &Path, req: Request) -> Result<T, ClientError> {
    run_request(data_dir, req).await?.into_answer()
}

impl Response {
    /// The answer decoded as `T` (the type the request answers), or the refusal.
    pub fn into_answer<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        match self {
            Response::Ok { data } => {
                serde_json::from_value(data).map_err(|e| ClientError::Decode(e.to_string()))
            }
            Response::Error { message } => Err(ClientError::Refused(message)),
        }
    }
}

/// Appends `event` to the audit trail, through the running daemon or, when none runs, on
/// the store opened here. Returns the new record's sequence number.
pub async fn record_audit(data_dir: &Path, event: Event) -> Result<u64, ClientError> {
    Ok(call::<Head>(data_dir, Request::audit(event)).await?.seq)
}

/// Instances, and studies per state.
pub async fn status(data_dir: &Path) -> Result<StoreStatus, ClientError> {
    call(data_dir, Request::Status).await
}

/// Verifies the audit trail's hash chain.
pub async fn audit_verify(data_dir: &Path) -> Result<VerificationReport, ClientError> {
    call(data_dir, Request::AuditVerify).await
}

/// The outbox entries (of one destination, or all) as a table.
pub async fn outbox_list(
    data_dir: &Path,
    dest: Option<String>,
) -> Result<OutboxListing, ClientError> {
    call(data_dir, Request::OutboxList { dest }).await
}

/// Re-queues dead entries and makes retrying ones due now.
pub async fn outbox_retry(data_dir: &Path, selector: String) -> Result<Requeued, ClientError> {
    call(data_dir, Request::OutboxRetry { selector }).await
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
