//! The command line's side of the control socket: a request goes to the running daemon,
//! or to the store opened here when no daemon answers; typed calls decode each answer.
//!
//! Root never opens a data folder that belongs to another user (the service user) by path:
//! that user can plant links in it, and the store's start-up clean-up or a file root
//! creates would then act on whatever they point to. When no daemon answers, root runs the
//! request in a child process ([`OWNER_SUBCOMMAND`]) with the folder owner's user and group,
//! which opens the store as that user, and reads its answer.

use super::execute::{execute, Caller};
use super::protocol::{FromAnswer, OutboxListing, Request, Requeued, Response, StoreStatus};
use super::socket_path;
use crate::audit::{Audit, Event, Head, VerificationReport};
use crate::store::{Store, StoreError};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    /// The daemon gave no answer in the time the request may take.
    #[error("control socket {path}: no answer within {} s", .after.as_secs())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// How long the command waited.
        after: std::time::Duration,
    },
}

/// Runs `req` and takes its answer as `T` (the type the request answers, see
/// [`super::Answer`]); the daemon's or the store's refusal is [`ClientError::Refused`],
/// an answer of another kind [`ClientError::Decode`].
pub async fn call<T: FromAnswer>(data_dir: &Path, req: Request) -> Result<T, ClientError> {
    run_request(data_dir, req).await?.into_answer()
}

impl Response {
    /// The answer taken as `T` (the type the request answers), or the refusal.
    pub fn into_answer<T: FromAnswer>(self) -> Result<T, ClientError> {
        match self {
            Response::Ok { data } => T::from_answer(data).ok_or_else(|| {
                ClientError::Decode("an answer of another kind than the request's".into())
            }),
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

/// Sends a request to the running daemon; `Ok(None)` when no daemon listens. The answer
/// is awaited for [`Request::timeout`] and read up to [`MAX_ANSWER`] bytes.
pub async fn ask_daemon(data_dir: &Path, req: &Request) -> Result<Option<Response>, ClientError> {
    ask_within(&socket_path(data_dir), req, req.timeout()).await
}

/// [`ask_daemon`] on the socket `path`, waiting at most `after` for the whole exchange.
async fn ask_within(
    path: &Path,
    req: &Request,
    after: std::time::Duration,
) -> Result<Option<Response>, ClientError> {
    match tokio::time::timeout(after, exchange(path, req, MAX_ANSWER)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            path: path.to_path_buf(),
            after,
        }),
    }
}

/// Largest answer read from the daemon or from the child run as the folder's owner (an
/// instance listing of a large store is the longest legitimate one).
pub const MAX_ANSWER: u64 = 256 << 20;

/// One request and its answer over the socket at `path`, the answer at most `cap` bytes.
async fn exchange(path: &Path, req: &Request, cap: u64) -> Result<Option<Response>, ClientError> {
    socket_owned_by_folder_owner(path)?;
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(source) => {
            return Err(ClientError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let io = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    peer_is_root_or_folder_owner(&stream, path)?;
    let (r, mut w) = stream.into_split();
    let mut msg = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
    msg.push(b'\n');
    w.write_all(&msg).await.map_err(io)?;
    let mut line = Vec::new();
    BufReader::new(r.take(cap))
        .read_until(b'\n', &mut line)
        .await
        .map_err(io)?;
    if line.len() as u64 >= cap && line.last() != Some(&b'\n') {
        return Err(ClientError::Decode(format!(
            "the answer is larger than {cap} bytes"
        )));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| ClientError::Decode(e.to_string()))
}

/// Checks what stands at `path` before connecting (root connects there, in a folder the
/// service user owns): nothing, or a socket itself (not a link to one elsewhere) owned by
/// root or by the folder's owner.
fn socket_owned_by_folder_owner(path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let refused = |why: String| ClientError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ClientError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(refused(
            "is not a socket (a link or another kind of file): not connected to".into(),
        ));
    }
    let folder = path.parent().unwrap_or(Path::new("."));
    let folder_owner = std::fs::metadata(folder).map(|m| m.uid()).ok();
    if meta.uid() != 0 && Some(meta.uid()) != folder_owner {
        return Err(refused(format!(
            "belongs to uid {}, neither root nor the owner of {}: not connected to",
            meta.uid(),
            folder.display()
        )));
    }
    Ok(())
}

/// Checks who listens at the other end of `stream`, connected at `path`: root or the
/// owner of the socket's folder (the daemon). What stood at the path when it was checked
/// may have been swapped before the connection; the peer's credentials cannot be.
fn peer_is_root_or_folder_owner(stream: &UnixStream, path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::MetadataExt;
    let refused = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let uid = stream.peer_cred().map_err(refused)?.uid();
    let folder = path.parent().unwrap_or(Path::new("."));
    let folder_owner = std::fs::metadata(folder).map(|m| m.uid()).ok();
    if uid != 0 && Some(uid) != folder_owner {
        return Err(refused(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "is served by uid {uid}, neither root nor the owner of {}: nothing sent",
                folder.display()
            ),
        )));
    }
    Ok(())
}

/// Runs a request through the daemon when it runs, else on the store opened here (as the
/// data folder's owner when this process is root and the folder is another user's).
pub async fn run_request(data_dir: &Path, req: Request) -> Result<Response, ClientError> {
    if let Some(resp) = ask_daemon(data_dir, &req).await? {
        return Ok(resp);
    }
    if let Some(owner) = foreign_owner(data_dir)? {
        return run_as_owner(data_dir, &req, owner).await;
    }
    run_here(data_dir, req, Caller::this_process()).await
}

/// Hidden subcommand of the child that runs one request as the data folder's owner:
/// `duli control-as-owner DATA_DIR ACTOR`, the request on stdin, the response on stdout;
/// ACTOR is who the audit trail names (the root user who asked, not the owner).
pub const OWNER_SUBCOMMAND: &str = "control-as-owner";

/// Largest request the child reads, and largest answer read back from it.
const MAX_CHILD_MESSAGE: u64 = MAX_ANSWER;

/// The owner (uid, gid) of `data_dir` when this process is root and the folder belongs to
/// another user; `None` otherwise (and when the folder does not exist yet).
fn foreign_owner(data_dir: &Path) -> Result<Option<(u32, u32)>, ClientError> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match std::fs::symlink_metadata(data_dir) {
        Ok(m) if m.file_type().is_symlink() => Err(ClientError::Refused(format!(
            "{} is a symbolic link: root does not open a data folder through one",
            data_dir.display()
        ))),
        Ok(m) if m.uid() != 0 => Ok(Some((m.uid(), m.gid()))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ClientError::Io {
            path: data_dir.to_path_buf(),
            source,
        }),
    }
}

/// Runs `req` in a child process with the user and group `owner` (no supplementary
/// groups, empty environment) and reads its answer.
async fn run_as_owner(
    data_dir: &Path,
    req: &Request,
    owner: (u32, u32),
) -> Result<Response, ClientError> {
    let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
    let dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || run_as_owner_blocking(&dir, &body, owner))
        .await
        .map_err(|e| ClientError::Decode(e.to_string()))?
}

fn run_as_owner_blocking(
    data_dir: &Path,
    body: &[u8],
    (uid, gid): (u32, u32),
) -> Result<Response, ClientError> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    // The child runs this very executable through /proc/self/exe, which the kernel
    // resolves without a path walk: the owner may have no right to search the folders
    // above the binary (a build under /root or another user's home).
    let exe = PathBuf::from(crate::locate::SELF_EXE);
    let io = |source| ClientError::Io {
        path: exe.clone(),
        source,
    };
    // As root, setting the user also drops the supplementary groups.
    let mut child = Command::new(&exe)
        .arg(OWNER_SUBCOMMAND)
        .arg(data_dir)
        .arg(crate::cli_audit::actor())
        .uid(uid)
        .gid(gid)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body).map_err(io)?;
    }
    let stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(s) = stderr {
            let _ = s.take(4096).read_to_end(&mut text);
        }
        text
    });
    let mut out = Vec::new();
    if let Some(s) = child.stdout.take() {
        s.take(MAX_CHILD_MESSAGE)
            .read_to_end(&mut out)
            .map_err(io)?;
    }
    let status = child.wait().map_err(io)?;
    let err = errors.join().unwrap_or_default();
    if !status.success() {
        return Err(ClientError::Refused(format!(
            "running the request as the owner of {} (uid {uid}) failed ({status}): {}",
            data_dir.display(),
            String::from_utf8_lossy(&err).trim()
        )));
    }
    serde_json::from_slice(&out).map_err(|e| ClientError::Decode(e.to_string()))
}

/// The child of `run_as_owner`: reads one request from stdin, runs it on the store of
/// `args[0]` and writes the response to stdout. Refuses to run as root.
pub fn owner_child_main(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    use std::io::{Read, Write};
    let fail = |why: String| {
        let _ = writeln!(std::io::stderr(), "{why}");
        std::process::ExitCode::from(2)
    };
    let [dir, actor] = args else {
        return fail(format!("usage: duli {OWNER_SUBCOMMAND} DATA_DIR ACTOR"));
    };
    let caller = Caller {
        actor: actor.to_string_lossy().into_owned(),
        process: Some(std::os::unix::process::parent_id()),
    };
    if nix::unistd::geteuid().is_root() {
        return fail("refusing to open a data folder as root".into());
    }
    // Files the store makes are the owner's alone, whatever umask the caller ran with (a
    // root shell, the update service's 0022), as under `duli run`.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(MAX_CHILD_MESSAGE)
        .read_to_end(&mut body)
    {
        return fail(format!("reading the request: {e}"));
    }
    let req: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return fail(format!("unreadable request: {e}")),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e.to_string()),
    };
    let resp = match rt.block_on(run_here(Path::new(dir), req, caller)) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let out = match serde_json::to_vec(&resp) {
        Ok(o) => o,
        Err(e) => return fail(e.to_string()),
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&out).and_then(|()| stdout.flush()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(format!("writing the answer: {e}")),
    }
}

/// Runs `req` of `caller` on the store of `data_dir` opened in this process.
async fn run_here(data_dir: &Path, req: Request, caller: Caller) -> Result<Response, ClientError> {
    let dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let store = Store::open(&dir)?;
        let audit = Audit::open(&store)?;
        let resp = execute(&store, &audit, None, &caller, &req);
        store.flush_blocking()?;
        Ok(resp)
    })
    .await
    .map_err(|e| ClientError::Decode(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A daemon that takes the request and never answers is given up on after the
    /// request's time; a reindex may take far longer than a status.
    #[tokio::test]
    async fn a_daemon_that_never_answers_is_given_up_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(s);
        });
        let started = std::time::Instant::now();
        let r = ask_within(&path, &Request::Status, Duration::from_millis(300)).await;
        assert!(matches!(r, Err(ClientError::Timeout { .. })), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(Request::Reindex.timeout() >= Duration::from_secs(3600));
        assert!(Request::Status.timeout() <= Duration::from_secs(300));
        server.abort();
    }

    /// Root connects to the socket in the service user's folder: a link planted in its
    /// place (to another socket root can reach) or a file of another kind is refused before
    /// anything is sent.
    #[tokio::test]
    async fn a_link_or_a_file_in_place_of_the_socket_is_not_connected_to() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.sock");
        let _listener = tokio::net::UnixListener::bind(&elsewhere).unwrap();
        let path = socket_path(dir.path());
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let r = ask_within(&path, &Request::Status, Duration::from_secs(2)).await;
        assert!(
            matches!(&r, Err(ClientError::Io { source, .. }) if source.to_string().contains("not a socket")),
            "{r:?}"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        let r = ask_within(&path, &Request::Status, Duration::from_secs(2)).await;
        assert!(matches!(&r, Err(ClientError::Io { .. })), "{r:?}");
    }

    /// What stood at the path when it was checked (a socket of root's) may be another
    /// server by the time root connects: a server running as neither root nor the folder's
    /// owner is refused on its credentials, before anything is sent to it.
    #[tokio::test]
    async fn a_server_of_another_user_behind_the_socket_is_not_talked_to() {
        use std::io::BufRead;
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            crate::infer::testdata::note_skip("needs root to run a server as another user");
            return;
        }
        // Under /tmp, which the other user can reach whatever TMPDIR says.
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = socket_path(dir.path());
        let server = "import socket, sys\n\
            s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)\n\
            print('ready', flush=True)\n\
            c, _ = s.accept(); c.settimeout(10)\n\
            print('got %d bytes' % len(c.recv(4096)), flush=True)\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", server])
            .arg(&path)
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        // The socket file is root's, as the daemon's would pass the check on the path.
        std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
        let r = ask_within(&path, &Request::Status, Duration::from_secs(5)).await;
        assert!(
            matches!(&r, Err(ClientError::Io { source, .. }) if source.to_string().contains("uid 65534")),
            "{r:?}"
        );
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "got 0 bytes", "nothing was sent");
        child.wait().unwrap();
    }
}
