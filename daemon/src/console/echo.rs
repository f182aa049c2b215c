//! The system page's connectivity test: one C-ECHO to each configured DICOM peer
//! ([`scu::configured_peers`]: this box's own SCP and the PACS destinations), all at once,
//! each with a time limit.

use crate::scu::{self, Peer};
use serde::Serialize;
use std::time::Duration;

/// The result of one C-ECHO.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EchoRow {
    /// Peer name.
    pub name: String,
    /// Called AE title.
    pub ae_title: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `success` or `failed`.
    pub status: &'static str,
    /// Round trip of the echo itself, milliseconds (on success).
    pub rtt_ms: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
}

async fn echo_one(peer: &Peer, calling_ae: &str, limit: Duration) -> EchoRow {
    let outcome = tokio::time::timeout(limit, scu::echo(&peer.target, calling_ae)).await;
    let (status, rtt_ms, error) = match outcome {
        Ok(Ok(rtt)) => ("success", Some(rtt.as_secs_f64() * 1000.0), None),
        Ok(Err(e)) => ("failed", None, Some(e.to_string())),
        Err(_) => (
            "failed",
            None,
            Some(format!("no answer within {} s", limit.as_secs())),
        ),
    };
    EchoRow {
        name: peer.name.clone(),
        ae_title: peer.target.ae_title.clone(),
        host: peer.target.host.clone(),
        port: peer.target.port,
        status,
        rtt_ms,
        error,
    }
}

/// Echoes every peer at once, each within `limit`; rows in the order of `peers`.
pub async fn echo_all(peers: &[Peer], calling_ae: &str, limit: Duration) -> Vec<EchoRow> {
    futures::future::join_all(peers.iter().map(|p| echo_one(p, calling_ae, limit))).await
}
