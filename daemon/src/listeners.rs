//! The listening sockets of the daemon's network stages: those bound before it starts
//! (as root, see [`crate::privileges`]) and the binding of the rest, shared by the DICOM
//! and console stages.

use std::net::SocketAddr;

/// Listeners bound before the daemon starts (as root, before switching to the service
/// user, see [`crate::privileges`]); the rest are bound by [`crate::daemon::start_with`] itself.
#[derive(Debug, Default)]
pub struct Prebound {
    /// The plain DICOM listener (`dicom.bind`, `dicom.port`).
    pub dicom: Option<std::net::TcpListener>,
    /// The DICOM TLS listener (`dicom.tls_port`), when `dicom.tls`.
    pub dicom_tls: Option<std::net::TcpListener>,
    /// The console listener (`console.bind`, `console.port`).
    pub console: Option<std::net::TcpListener>,
}

/// A listener that could not be had.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {what} on {addr}: {source}")]
pub struct ListenError {
    /// What it was for, naming the configuration keys.
    pub what: String,
    /// The address.
    pub addr: SocketAddr,
    /// The system's error.
    pub source: std::io::Error,
}

/// A listener bound earlier, or a new one on `addr`; `what` names the keys in errors.
pub async fn take_or_bind(
    prebound: Option<std::net::TcpListener>,
    addr: SocketAddr,
    what: &str,
) -> Result<tokio::net::TcpListener, ListenError> {
    let bound = match prebound {
        Some(l) => l
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l)),
        None => tokio::net::TcpListener::bind(addr).await,
    };
    bound.map_err(|source| ListenError {
        what: what.to_string(),
        addr,
        source,
    })
}

/// A supervised stage's listener (or control socket) could not be had for a new
/// incarnation: the stage ends with this error and is restarted.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct IncarnationError {
    /// Which listener.
    pub what: String,
    /// The system's error.
    pub source: std::io::Error,
}

impl IncarnationError {
    /// A mapper for `Result::map_err` naming `what`.
    pub fn of(what: &str) -> impl FnOnce(std::io::Error) -> IncarnationError + '_ {
        move |source| IncarnationError {
            what: what.to_string(),
            source,
        }
    }
}
