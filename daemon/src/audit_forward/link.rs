//! The connection to the audit record repository: TCP, or TLS (RFC 5425) with the
//! repository's certificate verified against the site's CA and a client certificate when
//! one is configured, through the daemon's one TLS profile ([`crate::tls`]).

use crate::config::audit::{AuditConfig, SyslogTarget, SyslogTargetError};
use crate::tls::{client_config, HandshakeError, TlsError};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Time allowed to connect, and again for the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    pub async fn connect(&self) -> Result<Box<dyn Stream>, ConnectError> {
        let addr = (self.target.host.as_str(), self.target.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(cfg) => {
                let tls = crate::tls::connect(cfg.clone(), &self.target.host, tcp, CONNECT_TIMEOUT)
                    .await?;
                Ok(Box::new(tls))
            }
        }
    }
}
