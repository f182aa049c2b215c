//! The listener: accepts TCP (and TLS) connections, holds each in the table of
//! unassociated connections (see [`super::unassociated`]) until its A-ASSOCIATE-RQ arrives
//! under the ARTIM timer, enforces the association cap, runs each association on its own
//! task, and on shutdown stops accepting, lets in-flight associations finish up to a
//! deadline, then aborts the rest.

use super::association;
use super::Scp;
use crate::ul::framing::{self, PduReader};
use crate::ul::negotiate::{self, reject_busy};
use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource, AssociationRQ, Pdu};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use crate::ul::Stream;

/// Serves `listener` until `shutdown` turns true, then drains associations for up to
/// `grace` and aborts what is left.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    scp: Arc<Scp>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut tasks = JoinSet::new();
    let kind = if tls.is_some() { "DICOM TLS" } else { "DICOM" };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        log::warn!("{kind} accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let admission = scp
                    .unassociated
                    .admit(crate::client_key::ClientKey::of(peer.ip()));
                if let Some(address) = admission.evicted {
                    scp.metrics
                        .connections_evicted_total
                        .fetch_add(1, Ordering::Relaxed);
                    log::debug!("{peer}: the oldest unassociated connection from {address} closed to make room");
                }
                let _ = tcp.set_nodelay(true);
                let scp = scp.clone();
                let tls = tls.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(connection(tcp, peer, tls, scp, shutdown, admission.slot));
            }
            _ = shutdown.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let open = tasks.len();
    if open > 0 {
        log::info!("{kind}: waiting up to {grace:?} for {open} connection(s) to finish");
    }
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        log::warn!(
            "{kind}: {} connection(s) still open after {grace:?}; aborting them",
            tasks.len()
        );
        tasks.shutdown().await;
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    scp: Arc<Scp>,
    shutdown: watch::Receiver<bool>,
    slot: super::unassociated::Slot,
) {
    let artim = scp.artim;
    // One ARTIM deadline covers the TLS handshake and the A-ASSOCIATE-RQ; a newer
    // connection may evict this one before (see `unassociated`).
    let opened = tokio::select! {
        r = tokio::time::timeout(artim, open(tcp, peer, tls, &scp)) => r,
        _ = slot.evicted() => return,
    };
    let (mut stream, reader, rq, cert_sha256) = match opened {
        Ok(Some(opened)) => opened,
        Ok(None) => return,
        Err(_) => {
            log::info!("{peer}: no A-ASSOCIATE-RQ within {artim:?} (ARTIM); closed");
            return;
        }
    };
    let client = slot.client();
    drop(slot);
    let mut scratch = Vec::new();

    // Claim a slot; over the cap the rejection is transient (try again later).
    let active = scp.active.fetch_add(1, Ordering::SeqCst) + 1;
    let slot = ActiveGuard(scp.clone());
    let share = scp.per_address.try_take(client);
    let negotiated = if active > scp.max_associations {
        Err(reject_busy(active - 1))
    } else if let Err(held) = &share {
        Err(negotiate::reject_busy_address(*held))
    } else {
        negotiate::negotiate_with_cert(&rq, peer.ip(), cert_sha256.as_deref(), &scp.policy)
    };
    let accepted = match negotiated {
        Ok(a) => a,
        Err(rj) => {
            log::warn!(
                "{peer}: association from {:?} rejected: {}",
                rq.calling_ae_title.trim(),
                rj.reason
            );
            let calling = rq.calling_ae_title.trim();
            // A certificate that is not the AE's is recorded once per certificate offered
            // (or none, on the plain port) and window, like any other refusal.
            let kind = if rj.identity_mismatch {
                format!("cert:{}", cert_sha256.as_deref().unwrap_or("none"))
            } else {
                String::new()
            };
            if scp
                .rejections
                .first_in_window(peer.ip(), calling, &kind, std::time::Instant::now())
            {
                audit_rejection(&scp, peer, calling, &rj.reason);
            }
            scp.metrics
                .associations_rejected_total
                .fetch_add(1, Ordering::Relaxed);
            // Every write here has the idle timeout as its deadline: a peer with a zero
            // receive window holds no slot for good.
            let pdu = Pdu::AssociationRJ(rj.rj);
            let rejected = framing::write(&mut stream, &mut scratch, &pdu);
            let _ = tokio::time::timeout(scp.idle, rejected).await;
            drop(slot);
            let _ = tokio::time::timeout(scp.idle, close_after_reject(&mut stream)).await;
            return;
        }
    };
    let pdu = Pdu::AssociationAC(accepted.ac.clone());
    let accept = framing::write(&mut stream, &mut scratch, &pdu);
    if !matches!(tokio::time::timeout(scp.idle, accept).await, Ok(Ok(_))) {
        return;
    }
    scp.metrics
        .associations_total
        .fetch_add(1, Ordering::Relaxed);
    scp.metrics
        .associations_active
        .fetch_add(1, Ordering::Relaxed);
    let id = scp.next_id.fetch_add(1, Ordering::Relaxed);
    log::info!(
        "association {id} from {:?} at {peer}: {} presentation context(s) accepted",
        accepted.calling_ae,
        accepted.contexts.len()
    );
    let ended = Ended { scp: &scp, id };
    let outcome = association::run(id, &scp, accepted, peer, stream, reader, shutdown).await;
    drop(ended);
    log::info!("association {id}: {outcome}");
    drop(slot);
}

/// Tells the study tracker that association `id` ended, however it ends: returned,
/// panicked, or aborted with its stage. Until told, the tracker holds every study the
/// association touched as still receiving.
struct Ended<'a> {
    scp: &'a Scp,
    id: u64,
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        use tokio::sync::mpsc::error::TrySendError;
        self.scp
            .metrics
            .associations_active
            .fetch_sub(1, Ordering::Relaxed);
        let event = crate::assemble::Event::AssociationEnded { assoc: self.id };
        match self.scp.events.try_send(event) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(event)) => {
                // The tracker is behind: the event waits its turn without holding this
                // (maybe unwinding) task.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let events = self.scp.events.clone();
                    runtime.spawn(async move {
                        let _ = events.send(event).await;
                    });
                }
            }
        }
    }
}

/// How long a rejected peer is given to close the connection itself.
const REJECT_LINGER: Duration = Duration::from_secs(2);

/// Rejected connections given [`REJECT_LINGER`] at once, in the whole process. A rejected
/// connection holds neither an unassociated nor an association slot, so without this bound
/// a flood of rejected connects would hold rate × 2 s sockets; past it a rejected
/// connection is closed as soon as its A-ASSOCIATE-RJ is flushed.
const MAX_LINGERING: usize = 256;

/// Rejected connections lingering now.
static LINGERING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A place among the [`MAX_LINGERING`] rejected connections that may linger, given back
/// when dropped.
struct Lingering;

impl Lingering {
    fn try_take() -> Option<Lingering> {
        LINGERING
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_LINGERING).then_some(n + 1)
            })
            .ok()
            .map(|_| Lingering)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        LINGERING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Ends a connection whose association was rejected: the requestor closes it (PS3.8
/// 9.1.4); closing first while its bytes are unread would reset the connection and can
/// destroy the A-ASSOCIATE-RJ before the peer reads it (seen over TLS). At most
/// [`MAX_LINGERING`] wait for that at once.
async fn close_after_reject(stream: &mut Box<dyn Stream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.flush().await;
    if let Some(_place) = Lingering::try_take() {
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(REJECT_LINGER, async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
    let _ = stream.shutdown().await;
}

/// Records a refused association: always when the calling AE came with another client
/// certificate than the one `allowed_peers` binds it to, otherwise once per address,
/// calling AE and window ([`super::rejections`]).
fn audit_rejection(scp: &Scp, peer: SocketAddr, calling: &str, reason: &str) {
    use crate::audit::{Action, Event};
    let calling: String = calling.chars().take(16).collect();
    let event = Event::new(&format!("ae:{calling}"), Action::Other, "dicom-association")
        .from(&peer.ip().to_canonical().to_string())
        .detail(format!("association rejected: {reason}"))
        .failed();
    if let Err(e) = scp.audit.append(event) {
        log::error!("audit trail: cannot record a rejected association: {e}");
    }
}

/// SHA-256 (lower-case hex) of the leaf client certificate of a TLS connection.
fn client_cert_sha256(conn: &rustls::ServerConnection) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    Some(hex::encode(
        ring::digest::digest(&ring::digest::SHA256, leaf.as_ref()).as_ref(),
    ))
}

/// A connection ready to negotiate: its stream, the PDU reader, the A-ASSOCIATE-RQ and the
/// SHA-256 of the client certificate it presented on TLS.
type Opened = (Box<dyn Stream>, PduReader, AssociationRQ, Option<String>);

/// Completes the TLS handshake (if any) and reads the A-ASSOCIATE-RQ; `None` when the
/// connection ended or broke the protocol first (answered with A-ABORT where apt).
async fn open(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    scp: &Scp,
) -> Option<Opened> {
    let mut cert_sha256 = None;
    let mut stream: Box<dyn Stream> = match tls {
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(s) => {
                cert_sha256 = client_cert_sha256(s.get_ref().1);
                Box::new(s)
            }
            Err(e) => {
                log::warn!("{peer}: TLS handshake failed: {e}");
                if scp
                    .rejections
                    .first_in_window(peer.ip(), "", "tls", std::time::Instant::now())
                {
                    audit_rejection(scp, peer, "", &format!("TLS handshake failed: {e}"));
                }
                scp.metrics
                    .associations_rejected_total
                    .fetch_add(1, Ordering::Relaxed);
                return None;
            }
        },
        None => Box::new(tcp),
    };
    let mut reader = PduReader::awaiting_request(scp.policy.max_pdu);
    let mut scratch = Vec::new();
    match reader.read(&mut stream).await {
        Err(framing::FramingError::Closed) => None,
        Err(e) => {
            log::warn!("{peer}: before association: {e}; aborting");
            scp.metrics
                .protocol_errors_total
                .fetch_add(1, Ordering::Relaxed);
            let _ = framing::write(&mut stream, &mut scratch, &abort_pdu()).await;
            None
        }
        Ok(Pdu::AssociationRQ(rq)) => Some((stream, reader, rq, cert_sha256)),
        Ok(other) => {
            log::warn!(
                "{peer}: expected A-ASSOCIATE-RQ, got {}; aborting",
                pdu_name(&other)
            );
            scp.metrics
                .protocol_errors_total
                .fetch_add(1, Ordering::Relaxed);
            let _ = framing::write(&mut stream, &mut scratch, &abort_pdu()).await;
            None
        }
    }
}

/// Releases an association slot when dropped.
struct ActiveGuard(Arc<Scp>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An A-ABORT from the service provider.
pub fn abort_pdu() -> Pdu {
    Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnexpectedPdu),
    }
}

/// A short name of a PDU for log lines.
pub fn pdu_name(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::Unknown { .. } => "an unknown PDU",
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        Pdu::PData { .. } => "P-DATA-TF",
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::AbortRQ { .. } => "A-ABORT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past [`MAX_LINGERING`] places a rejected connection gets none (it is closed at
    /// once), and every place taken is given back.
    #[test]
    fn rejected_connections_linger_within_their_bound() {
        let before = LINGERING.load(Ordering::SeqCst);
        let taken: Vec<Lingering> = std::iter::from_fn(Lingering::try_take)
            .take(MAX_LINGERING + 10)
            .collect();
        assert_eq!(taken.len(), MAX_LINGERING - before);
        assert!(Lingering::try_take().is_none());
        drop(taken);
        assert!(Lingering::try_take().is_some());
    }
}
