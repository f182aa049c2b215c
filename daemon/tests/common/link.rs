//! A switchable TCP link between the daemon and a peer, standing in for the network: while
//! it is down, connections to its port are refused and open ones are cut (what the daemon
//! sees when a RIS or broker is unreachable); while up, it forwards bytes both ways,
//! optionally holding each chunk coming back from the peer for a while (a slow peer).
//!
//! The peer itself keeps running, so a test can watch what arrives across an outage
//! (a subscriber stays subscribed to the broker throughout).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// One period during which the link is up.
struct Up {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: JoinHandle<()>,
}

/// See the module docs. Starts down; [`TcpLink::up`] and [`TcpLink::down`] switch it.
pub struct TcpLink {
    /// The port the daemon connects to, on 127.0.0.1.
    pub port: u16,
    target: u16,
    delay: Duration,
    up: Mutex<Option<Up>>,
}

impl TcpLink {
    /// A link (down) to the peer on 127.0.0.1:`target`.
    pub fn new(target: u16) -> TcpLink {
        TcpLink::slow(target, Duration::ZERO)
    }

    /// A link that holds each chunk from the peer for `delay` before passing it on.
    pub fn slow(target: u16, delay: Duration) -> TcpLink {
        TcpLink {
            port: super::free_port(),
            target,
            delay,
            up: Mutex::new(None),
        }
    }

    /// Starts accepting and forwarding (no-op when already up).
    pub fn up(&self) {
        let mut up = self.up.lock().unwrap();
        if up.is_some() {
            return;
        }
        // The port was free when it was chosen; a socket of the port's last use that the
        // kernel still holds, or a short-lived one of another process, may keep it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("link port {}: {e}; trying again", self.port);
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("bind the link port {}: {e}", self.port),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (target, delay) = (self.target, self.delay);
        let acceptor = {
            let (stop, conns) = (stop.clone(), conns.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            if let Ok(peer) = TcpStream::connect(("127.0.0.1", target)) {
                                forward(client, peer, delay, &conns);
                            }
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        *up = Some(Up {
            stop,
            conns,
            acceptor,
        });
    }

    /// Stops accepting (connections are refused) and cuts every open connection.
    pub fn down(&self) {
        // Also from Drop while a test unwinds: a poisoned lock is taken as it is, so that a
        // failed test reports its failure instead of aborting the binary.
        let Some(up) = self.up.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        up.stop.store(true, Ordering::SeqCst);
        let _ = up.acceptor.join();
        for c in up.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        self.down();
    }
}

/// Pipes `client` ↔ `peer` on two threads; both sockets are registered for [`TcpLink::down`].
fn forward(client: TcpStream, peer: TcpStream, delay: Duration, conns: &Mutex<Vec<TcpStream>>) {
    let (Ok(c2), Ok(p2)) = (client.try_clone(), peer.try_clone()) else {
        return;
    };
    if let (Ok(c3), Ok(p3)) = (client.try_clone(), peer.try_clone()) {
        conns.lock().unwrap().extend([c3, p3]);
    }
    thread::spawn(move || pipe(client, peer, Duration::ZERO));
    thread::spawn(move || pipe(p2, c2, delay));
}

/// Copies `from` → `to` until either side closes, holding each chunk for `delay`.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
