//! The HTTPS listener: warp filters served through hyper's HTTP/1 connections over
//! tokio-rustls (warp 0.4 has no TLS of its own).
//!
//! Each accepted connection takes a slot of `console.max_connections`, at most
//! `console.max_connections_per_address` of them per client address; beyond either cap
//! the connection is closed at once, so a flood from one address cannot lock others out.
//! When every slot is taken, a new connection takes the slot of the oldest connection still
//! in its TLS handshake ([`super::handshakes`]): bare TCP connections cannot hold the
//! console. The TLS handshake must finish within [`HANDSHAKE_TIMEOUT`]; after it, the
//! [`timeouts`](super::timeouts) clock closes connections whose request headers do not
//! arrive within `console.header_read_timeout_secs` or that stay without a request for
//! `console.idle_timeout_secs`, and never while a request (an event stream included) is in
//! flight. Idle connections hold no request permit: handlers take one of
//! `console.max_requests` only while they run. At shutdown the listener closes, open
//! connections get a grace period, then are dropped.

use super::handshakes::{Handshakes, Held};
use super::limits::Slot;
use super::timeouts::{Clock, Guarded, Watched};
use super::Console;
use crate::client_key::ClientKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Most bytes of one request's head (request line and headers); a longer
/// head is answered 431.
pub const MAX_HEAD: usize = 32 * 1024;

/// Most headers one request may carry.
pub const MAX_HEADERS: usize = 64;

/// Time a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's address, put into every request's extensions for the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// Connections refused at accept, logged as a warning at most once per
/// [`REFUSAL_LOG_INTERVAL`] (a flood must not flood the journal too).
#[derive(Debug, Default)]
struct Refusals {
    last_warning: Option<std::time::Instant>,
    since: u64,
}

/// Least time between two warnings about refused connections.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl Refusals {
    fn note(&mut self, peer: SocketAddr, why: super::limits::Refused) {
        self.since += 1;
        let due = self
            .last_warning
            .is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL);
        if due {
            log::warn!(
                "console: connection from {peer} refused ({why}); {} refused since the last \
                 warning",
                self.since
            );
            self.last_warning = Some(std::time::Instant::now());
            self.since = 0;
        } else {
            log::debug!("console: connection from {peer} refused: {why}");
        }
    }
}

/// Makes the last close of the socket behind `fd` abortive (`SO_LINGER` 0: a reset, and
/// whatever is still queued to send is dropped at once).
fn abort_on_close(fd: &std::os::fd::OwnedFd) {
    let off = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    if let Err(e) = nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::Linger, &off) {
        log::debug!("console: cannot reset a timed-out connection: {e}");
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// A connection slot for `peer` (per address and in all), taking the slot of the oldest
/// unfinished TLS handshake when the console is full; `None`, noted in `refused`, when
/// there is none to give.
fn admit(
    console: &Console,
    handshakes: &Handshakes,
    refused: &mut Refusals,
    peer: SocketAddr,
) -> Option<Held> {
    let connections = &console.limits.connections;
    let client = ClientKey::of(peer.ip());
    let taken = match connections.try_take(client) {
        Err(super::limits::Refused::Total(_)) if handshakes.evict_oldest() => {
            log::debug!("console: {peer} takes the slot of the oldest unfinished handshake");
            connections.try_take(client)
        }
        other => other,
    };
    match taken {
        Ok(slot) => Some(Handshakes::hold(slot)),
        Err(why) => {
            refused.note(peer, why);
            None
        }
    }
}

/// The TLS handshake of `tcp` within [`HANDSHAKE_TIMEOUT`]; done either way, the slot is
/// taken back from the list of handshakes (freed now on failure, the connection's until it
/// closes else). `None` when it failed, timed out, or the slot was given to a newer
/// connection meanwhile.
async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: tokio::net::TcpStream,
    slot: &Held,
    peer: SocketAddr,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Slot<ClientKey>,
)> {
    let shaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
    let slot = Handshakes::finish(slot)?;
    match shaken {
        Ok(Ok(s)) => Some((s, slot)),
        Ok(Err(e)) => {
            log::debug!("console: TLS handshake with {peer} failed: {e}");
            None
        }
        Err(_) => {
            log::debug!("console: TLS handshake with {peer} timed out");
            None
        }
    }
}

/// Serves the console on `listener` with `tls` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    console: Arc<Console>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let service = warp::service(super::api::filter(console.clone()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refused = Refusals::default();
    let handshakes = Handshakes::default();
    loop {
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("console accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let Some(slot) = admit(&console, &handshakes, &mut refused, peer) else {
            drop(tcp);
            continue;
        };
        let held = slot.clone();
        let _ = tcp.set_nodelay(true);
        // A second handle on the socket, to make a timed-out connection's close abortive.
        let abort_handle = {
            use std::os::fd::AsFd;
            tcp.as_fd().try_clone_to_owned().ok()
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        let watcher = graceful.watcher();
        let (header_read, idle) = (console.limits.header_read, console.limits.idle);
        let task = tokio::spawn(async move {
            let Some((stream, _slot)) = handshake(&acceptor, tcp, &slot, peer).await else {
                return;
            };
            let clock = Clock::new(header_read, idle);
            let io = hyper_util::rt::TokioIo::new(Watched::new(stream, clock.clone()));
            let service = hyper_util::service::TowerToHyperService::new(service);
            let requests = clock.clone();
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Peer(peer));
                    let in_flight = requests.request();
                    let answer = hyper::service::Service::call(&service, req);
                    async move {
                        let r = answer.await?;
                        Ok::<_, std::convert::Infallible>(
                            r.map(|body| Guarded::new(body, in_flight)),
                        )
                    }
                },
            );
            // A request's head (line and headers) is held to MAX_HEAD bytes and
            // MAX_HEADERS headers: a browser's fit with room to spare, and what a client
            // can make each connection hold.
            let conn = hyper::server::conn::http1::Builder::new()
                .max_header_size(MAX_HEAD)
                .max_headers(MAX_HEADERS)
                .serve_connection(io, service);
            tokio::select! {
                r = watcher.watch(conn) => {
                    if let Err(e) = r {
                        log::debug!("console: connection from {peer}: {e}");
                    }
                }
                why = clock.expired() => {
                    log::debug!("console: connection from {peer} closed ({why:?} timeout)");
                    // A client that stopped reading would otherwise keep the unsent answer
                    // in the kernel's send queue of the closed socket: reset it instead.
                    if let Some(fd) = &abort_handle {
                        abort_on_close(fd);
                    }
                }
            }
            drop(abort_handle);
        });
        handshakes.register(held, task.abort_handle());
    }
    drop(listener);
    if tokio::time::timeout(crate::supervise::drain::CONSOLE, graceful.shutdown())
        .await
        .is_err()
    {
        log::info!("console: open connections (event streams) closed at shutdown");
    }
}
