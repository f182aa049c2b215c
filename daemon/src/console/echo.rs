//! The system page's connectivity test: one C-ECHO to each configured DICOM peer (the PACS
//! destinations and this box's own SCP), all at once, each with a time limit.

use crate::scu::{self, Target};
use serde::Serialize;
use std::time::Duration;

/// One peer to test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// What the table calls it.
    pub name: String,
    /// Its address and AE title.
    pub target: Target,
}

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

/// The peers of the test: this box's SCP first (an unspecified bind address is reached
/// over loopback), then the `[[pacs.destinations]]`.
pub fn peers(config: &crate::config::Config) -> Vec<Peer> {
    let bind = config.dicom.bind;
    let host = match bind {
        std::net::IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(a) if a.is_unspecified() => "::1".to_string(),
        a => a.to_string(),
    };
    let mut out = vec![Peer {
        name: "this box (SCP)".into(),
        target: Target {
            ae_title: config.dicom.ae_title.clone(),
            host,
            port: config.dicom.port,
        },
    }];
    out.extend(config.pacs.destinations.iter().map(|d| Peer {
        name: d.name.clone(),
        target: Target {
            ae_title: d.ae_title.clone(),
            host: d.host.clone(),
            port: d.port,
        },
    }));
    out
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
