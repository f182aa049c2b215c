//! `[console]`: the HTTPS console and API listener, its certificate, sessions and the
//! limits that keep one client from exhausting it.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

/// `[console]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Address of the console/API listener.
    pub bind: IpAddr,
    /// Port of the console/API listener.
    pub port: u16,
    /// Certificate chain (PEM); generated self-signed when absent.
    pub cert: Option<PathBuf>,
    /// Private key (PEM).
    pub key: Option<PathBuf>,
    /// A console session ends after this many seconds without a request (at most
    /// [`MAX_SESSION_IDLE_SECS`]).
    pub session_idle_secs: u64,
    /// A console session ends this many seconds after login, however active (at most
    /// [`MAX_SESSION_MAX_SECS`]).
    pub session_max_secs: u64,
    /// Seconds a client has to send a request's headers, counted from its first byte
    /// (or from the end of the TLS handshake for the first request).
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight (keep-alive).
    pub idle_timeout_secs: u64,
    /// Most console connections open at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Most console connections open at once from one client address.
    pub max_connections_per_address: usize,
    /// Most requests served at once (idle connections hold none).
    pub max_requests: usize,
    /// Most live event streams (server-sent events) open at once.
    pub max_event_streams: usize,
    /// Most live event streams one user may hold open at once (all their sessions and
    /// tabs together), so one account cannot take every stream.
    pub max_event_streams_per_user: usize,
    /// Largest manual upload accepted (MB).
    pub max_upload_mb: u64,
    /// Most uploads received at once, all users together.
    pub max_uploads: usize,
    /// Most uploads one user may send at once.
    pub max_uploads_per_user: usize,
}

/// Longest `console.session_idle_secs`: 24 hours. A session left idle longer is an
/// unattended logged-in console.
pub const MAX_SESSION_IDLE_SECS: u64 = 24 * 3600;
/// Longest `console.session_max_secs`: 7 days. Longer, a stolen session cookie stays good
/// for as long, and a value in milliseconds by mistake would be years.
pub const MAX_SESSION_MAX_SECS: u64 = 7 * 24 * 3600;

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 8443,
            cert: None,
            key: None,
            session_idle_secs: 30 * 60,
            session_max_secs: 12 * 3600,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 2048,
            max_connections_per_address: 64,
            max_requests: 64,
            max_event_streams: 256,
            max_event_streams_per_user: 16,
            max_upload_mb: 64,
            max_uploads: 4,
            max_uploads_per_user: 2,
        }
    }
}
