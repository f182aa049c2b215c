//! Header-read and idle timeouts of one console connection.
//!
//! A connection is in one of three phases, tracked by its [`Clock`]:
//!
//! - waiting for a request's headers: from the end of the TLS handshake, or from the
//!   first byte after an idle pause, the headers must be complete within the
//!   header-read timeout;
//! - serving: while a request is in flight (from its parsed headers until its answer's
//!   body is fully sent or dropped) only the write-stall timeout runs: a write the
//!   client does not take (it stopped reading) for the idle time closes the connection.
//!   A server-sent event stream read by its client lives as long as its session (it
//!   sends a keep-alive comment every 15 s);
//! - idle: with no request in flight and no byte arriving, the connection is closed after
//!   the idle timeout.
//!
//! [`Watched`] tells the clock when bytes arrive and when a write waits on the client,
//! [`Clock::request`] when a request
//! starts, and [`Guarded`] ends it with its answer's body; [`Clock::expired`] resolves
//! when the current phase's deadline passed.

use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug)]
struct State {
    in_flight: usize,
    idle_since: Instant,
    headers_since: Option<Instant>,
    /// Since when a write has been waiting for the client to take bytes.
    write_blocked_since: Option<Instant>,
}

/// The timeout clock of one connection.
#[derive(Debug)]
pub struct Clock {
    state: Mutex<State>,
    changed: Notify,
    header_read: Duration,
    idle: Duration,
}

/// Which timeout ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The request's headers did not arrive in time.
    HeaderRead,
    /// No request for the idle time.
    Idle,
    /// An answer's bytes not taken by the client for the idle time.
    WriteStalled,
}

impl Clock {
    /// A clock for a connection whose TLS handshake just ended: its first request's
    /// headers are due within `header_read`.
    pub fn new(header_read: Duration, idle: Duration) -> Arc<Clock> {
        let now = Instant::now();
        Arc::new(Clock {
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: now,
                headers_since: Some(now),
                write_blocked_since: None,
            }),
            changed: Notify::new(),
            header_read,
            idle,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: between requests, they start the header-read timeout.
    pub fn bytes_arrived(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 && s.headers_since.is_none() {
            s.headers_since = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A write could not go out (`blocked`, the client's window is full) or went out: a
    /// write left blocked for the idle time ends the connection.
    pub fn write_blocked(&self, blocked: bool) {
        let mut s = self.lock();
        match (blocked, s.write_blocked_since) {
            (true, None) => {
                s.write_blocked_since = Some(Instant::now());
                drop(s);
                self.changed.notify_one();
            }
            (false, Some(_)) => s.write_blocked_since = None,
            _ => {}
        }
    }

    /// A request's headers were parsed: no timeout runs until the returned guard (kept
    /// with the answer's body) is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        let mut s = self.lock();
        s.in_flight += 1;
        s.headers_since = None;
        drop(s);
        self.changed.notify_one();
        InFlight {
            clock: self.clone(),
        }
    }

    /// The current phase's deadline and what it is; while a request is in flight, only
    /// that of a stalled write.
    fn deadline(&self) -> Option<(Instant, Expired)> {
        let s = self.lock();
        if let Some(t) = s.write_blocked_since {
            return Some((t + self.idle, Expired::WriteStalled));
        }
        if s.in_flight > 0 {
            return None;
        }
        Some(match s.headers_since {
            Some(t) => (t + self.header_read, Expired::HeaderRead),
            None => (s.idle_since + self.idle, Expired::Idle),
        })
    }

    /// Resolves when a deadline passes (while requests are in flight, only that of a
    /// stalled write).
    pub async fn expired(&self) -> Expired {
        loop {
            match self.deadline() {
                None => self.changed.notified().await,
                Some((at, why)) => {
                    if Instant::now() >= at {
                        return why;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// A request in flight on a connection; dropping it starts the idle time.
#[derive(Debug)]
pub struct InFlight {
    clock: Arc<Clock>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.clock.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
        }
        drop(s);
        self.clock.changed.notify_one();
    }
}

/// An answer's body that keeps its request in flight until it is sent or dropped.
#[derive(Debug)]
pub struct Guarded<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Guarded<B> {
    /// Keeps `in_flight` alive as long as `inner`.
    pub fn new(inner: B, in_flight: InFlight) -> Guarded<B> {
        Guarded {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's byte stream that tells its [`Clock`] when bytes arrive.
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    clock: Arc<Clock>,
}

impl<T> Watched<T> {
    /// Watches `inner` for `clock`.
    pub fn new(inner: T, clock: Arc<Clock>) -> Watched<T> {
        Watched { inner, clock }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.bytes_arrived();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.clock.write_blocked(r.is_pending());
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.clock.write_blocked(r.is_pending());
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.clock.write_blocked(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn near(got: Duration, want: Duration) -> bool {
        got >= want && got < want + MS(150)
    }

    #[tokio::test]
    async fn headers_are_due_after_the_handshake_and_after_a_first_byte() {
        let c = Clock::new(MS(200), MS(600));
        let t0 = Instant::now();
        assert_eq!(c.expired().await, Expired::HeaderRead);
        assert!(near(t0.elapsed(), MS(200)), "{:?}", t0.elapsed());
        // A request, then an idle pause, then a byte: the header timer starts at the byte.
        drop(c.request());
        tokio::time::sleep(MS(300)).await;
        c.bytes_arrived();
        let t1 = Instant::now();
        assert_eq!(c.expired().await, Expired::HeaderRead);
        assert!(near(t1.elapsed(), MS(200)), "{:?}", t1.elapsed());
    }

    #[tokio::test]
    async fn no_timeout_runs_while_a_request_is_in_flight_then_idle_time_counts() {
        let c = Clock::new(MS(100), MS(400));
        let r = c.request();
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.expired().await })
        };
        tokio::time::sleep(MS(1000)).await;
        assert!(
            !waiter.is_finished(),
            "expired while a request was in flight"
        );
        let t0 = Instant::now();
        drop(r);
        assert_eq!(waiter.await.unwrap(), Expired::Idle);
        assert!(near(t0.elapsed(), MS(400)), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn a_write_the_client_does_not_take_ends_the_connection_even_in_flight() {
        let c = Clock::new(MS(100), MS(300));
        let _r = c.request();
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.expired().await })
        };
        // Writes that wait and then go out do not count.
        c.write_blocked(true);
        tokio::time::sleep(MS(200)).await;
        c.write_blocked(false);
        tokio::time::sleep(MS(200)).await;
        assert!(
            !waiter.is_finished(),
            "a write that went out stalled nothing"
        );
        let t0 = Instant::now();
        c.write_blocked(true);
        assert_eq!(waiter.await.unwrap(), Expired::WriteStalled);
        assert!(near(t0.elapsed(), MS(300)), "{:?}", t0.elapsed());
    }
}
