//! The connection to the audit record repository: TCP, or TLS (RFC 5425) with the
//! repository's certificate verified against the site's CA and a client certificate when
//! one is configured, through the daemon's one TLS profile ([`crate::tls`]). The socket
//! probes an idle peer (TCP keepalive) and gives up on data a peer does not acknowledge
//! within [`ACK_TIMEOUT`] (`TCP_USER_TIMEOUT`), and tells how many bytes sent the peer has
//! not acknowledged yet ([`Linked::unacknowledged`]): a page counts as forwarded only once
//! that is zero, so a connection that died silently (a firewall that forgot it, a host
//! gone) loses nothing that was written into it.

use crate::config::audit::{AuditConfig, SyslogTarget, SyslogTargetError};
use crate::tls::{client_config, HandshakeError, TlsError};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Time allowed to connect, and again for the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a peer may leave sent data unacknowledged before the connection is given up.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte stream to the repository (TCP or TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// Why `[audit]` does not give a repository to connect to.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// `audit.syslog` is not `host:port`.
    #[error("audit.syslog {0}")]
    Target(#[from] SyslogTargetError),
    /// TLS without a CA bundle.
    #[error("audit.syslog_tls = true needs audit.syslog_ca")]
    NoCa,
    /// A client certificate without its key, or the reverse.
    #[error("audit.syslog_cert and audit.syslog_key must be set together")]
    UnpairedClientCert,
    /// The TLS files do not make a client configuration.
    #[error("audit forwarding TLS (audit.syslog_ca, audit.syslog_cert, audit.syslog_key): {0}")]
    Tls(#[from] TlsError),
}

/// A connection to the repository: the stream, and its TCP socket to ask what the peer
/// has not acknowledged.
pub struct Linked {
    /// The stream (TCP, or TLS over it).
    pub stream: Box<dyn Stream>,
    /// The same TCP socket (a second descriptor of it).
    socket: OwnedFd,
}

impl std::fmt::Debug for Linked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linked")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Linked {
    /// Bytes written into the socket that the peer has not acknowledged yet.
    pub fn unacknowledged(&self) -> std::io::Result<usize> {
        unacknowledged(&self.socket)
    }
}

/// Bytes written into TCP socket `socket` that its peer has not acknowledged yet.
pub fn unacknowledged(socket: &impl AsFd) -> std::io::Result<usize> {
    let mut queued: nix::libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int, the queue's length, into `queued`, which
    // lives for the call; the descriptor is valid for the lifetime of `socket`.
    let rc = unsafe {
        nix::libc::ioctl(
            socket.as_fd().as_raw_fd(),
            nix::libc::TIOCOUTQ,
            &mut queued as *mut nix::libc::c_int,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// Keepalive probes on an idle connection, and [`ACK_TIMEOUT`] for sent data.
fn watch_peer(tcp: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let ms = u32::try_from(ACK_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    let set = [
        setsockopt(tcp, sockopt::KeepAlive, &true),
        setsockopt(tcp, sockopt::TcpKeepIdle, &30),
        setsockopt(tcp, sockopt::TcpKeepInterval, &10),
        setsockopt(tcp, sockopt::TcpKeepCount, &3),
        setsockopt(tcp, sockopt::TcpUserTimeout, &ms),
    ];
    if let Some(Err(e)) = set.into_iter().find(Result::is_err) {
        log::warn!("audit forwarding: cannot set the connection's peer checks: {e}");
    }
}

/// Why a connection to the repository was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP did not connect in time.
    #[error("TCP connect timed out")]
    Timeout,
    /// TCP failed.
    #[error("TCP connect: {0}")]
    Tcp(std::io::Error),
    /// The TLS handshake did not give a connection (e.g. a certificate the site CA did
    /// not issue).
    #[error(transparent)]
    Tls(#[from] HandshakeError),
}

/// Where and how to reach the repository.
#[derive(Debug, Clone)]
pub struct Link {
    target: SyslogTarget,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Link {
    /// The link of `[audit]`, or `None` when `syslog` is unset (nothing is forwarded).
    pub fn from_config(cfg: &AuditConfig) -> Result<Option<Link>, LinkError> {
        let Some(target) = cfg.target() else {
            return Ok(None);
        };
        let target = target?;
        let tls = if cfg.syslog_tls {
            let ca = cfg.syslog_ca.as_deref().ok_or(LinkError::NoCa)?;
            if cfg.syslog_cert.is_some() != cfg.syslog_key.is_some() {
                return Err(LinkError::UnpairedClientCert);
            }
            Some(client_config(
                "audit",
                Some(ca),
                cfg.syslog_cert.as_deref(),
                cfg.syslog_key.as_deref(),
            )?)
        } else {
            None
        };
        Ok(Some(Link { target, tls }))
    }

    /// A plain TCP link to `target` (tests, and the loopback case).
    pub fn plain(target: SyslogTarget) -> Link {
        Link { target, tls: None }
    }

    /// The repository as configured.
    pub fn target(&self) -> &SyslogTarget {
        &self.target
    }

    /// Whether the link is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects (and, over TLS, completes the handshake), each step within
    /// [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> Result<Linked, ConnectError> {
        let addr = (self.target.host.as_str(), self.target.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        watch_peer(&tcp);
        let socket = tcp
            .as_fd()
            .try_clone_to_owned()
            .map_err(ConnectError::Tcp)?;
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(cfg) => Box::new(
                crate::tls::connect(cfg.clone(), &self.target.host, tcp, CONNECT_TIMEOUT).await?,
            ),
        };
        Ok(Linked { stream, socket })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the peer has not acknowledged is known: bytes a peer does not take (its window
    /// closed) stay counted, however much the local write accepted; once it reads, none.
    #[tokio::test]
    async fn bytes_the_peer_has_not_acknowledged_are_counted() {
        use nix::sys::socket::{setsockopt, sockopt};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // A small receive window, set before the connection is accepted.
        setsockopt(&listener, sockopt::RcvBuf, &4096).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let link = Link::plain(SyslogTarget {
            host: "127.0.0.1".into(),
            port,
        });
        let (linked, accepted) = tokio::join!(link.connect(), listener.accept());
        let mut linked = linked.unwrap();
        let (mut peer, _) = accepted.unwrap();
        assert_eq!(linked.unacknowledged().unwrap(), 0);
        // Write what the local socket takes within a moment: more than the peer's window.
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0usize;
        while let Ok(Ok(())) =
            tokio::time::timeout(Duration::from_millis(200), linked.stream.write_all(&chunk)).await
        {
            written += chunk.len();
            if written >= 4 * 1024 * 1024 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let left = linked.unacknowledged().unwrap();
        assert!(
            left > 0,
            "{written} bytes written, none waiting for the peer"
        );
        // The peer reads everything: nothing is left unacknowledged.
        linked.stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), peer.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got.len() >= written);
        assert_eq!(linked.unacknowledged().unwrap(), 0);
    }
}
