//! The forwarding stage: reads the trail from the cursor a page at a time (on a blocking
//! thread), writes each page to the repository as framed messages, flushes, waits until the
//! repository's TCP has acknowledged every byte, then moves and stores the cursor. Woken by each append ([`super::Forwarding`]) and every
//! [`RECHECK`]; reconnects with a doubling pause when the repository is away, while the
//! trail keeps what waits. Failures are reported in the status and the log, never by
//! ending the stage (a repository that is down is not a daemon that is down).

use super::cursor::{Cursor, Cursors};
use super::link::{Link, Linked, Stream};
use super::message::{frame_into, message, Origin};
use super::Forwarding;
use crate::audit::{Audit, Record};
use crate::store::{Store, StoreError};
use crate::supervise::Beat;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Records read from the trail and written at once: the forwarder's in-memory queue.
pub const PAGE: usize = 256;
/// Time allowed to write and flush one page.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The trail is looked at this often even when no append woke the stage.
pub const RECHECK: Duration = Duration::from_secs(30);
/// First pause after a failure; it doubles up to [`MAX_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause between attempts.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);

/// Why a step that touches the store failed.
#[derive(Debug, thiserror::Error)]
enum StepError {
    /// The store refused.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The blocking task did not complete.
    #[error("blocking task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Everything an incarnation of the stage works with.
#[derive(Debug)]
pub(super) struct Forwarder {
    /// The trail.
    pub audit: Arc<Audit>,
    /// The store (flushes, the cursor).
    pub store: Arc<Store>,
    /// The stored cursor.
    pub cursors: Cursors,
    /// The repository.
    pub link: Link,
    /// The messages' sender.
    pub origin: Origin,
    /// The wake-up signal and the status.
    pub forwarding: Arc<Forwarding>,
    /// Turns true at shutdown.
    pub stop: watch::Receiver<bool>,
    /// Time allowed to write and flush one page ([`WRITE_TIMEOUT`]).
    pub write_timeout: Duration,
}

/// The doubling pause between attempts.
#[derive(Debug)]
struct Retry(Duration);

impl Retry {
    fn new() -> Retry {
        Retry(FIRST_PAUSE)
    }

    /// The pause to take now; the next one doubles.
    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(MAX_PAUSE);
        now
    }

    fn reset(&mut self) {
        self.0 = FIRST_PAUSE;
    }
}

impl Forwarder {
    /// Notes a failure in the status and the log, with the pause before the next attempt
    /// when one follows. The same failure again, while still not connected, is logged at
    /// debug level only: a repository away for days does not fill the journal.
    fn trouble(&self, why: String, retry: Option<Duration>) {
        let retry = retry
            .map(|d| format!("; retrying in {} s", d.as_secs()))
            .unwrap_or_default();
        let target = self.link.target();
        if self.forwarding.status.failed(why.clone()) {
            log::debug!("audit forwarding to {target}: {why}{retry}");
        } else {
            log::warn!("audit forwarding to {target}: {why}{retry}");
        }
    }

    /// Runs `f` on a blocking thread with the trail, the store and the cursor.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Forwarder) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StepError> {
        let me = self.clone();
        Ok(tokio::task::spawn_blocking(move || f(&me)).await??)
    }

    /// Up to [`PAGE`] records from `from` on.
    async fn page(self: &Arc<Self>, from: u64) -> Result<Vec<Record>, StepError> {
        self.blocking(move |f| f.audit.records(from, PAGE)).await
    }

    /// Stores `cursor` and makes it durable; then, past the trail's budget, removes the
    /// oldest records the repository acknowledged ([`crate::audit::budget`]).
    async fn save(self: &Arc<Self>, cursor: Cursor) -> Result<(), StepError> {
        let next = cursor.next_seq;
        self.blocking(move |f| f.cursors.save(&cursor)).await?;
        self.store.flush().await?;
        let shed = self.blocking(move |f| f.audit.shed_forwarded(&f.store, next));
        if let Err(e) = shed.await {
            log::error!("audit trail: cannot remove forwarded records past its budget: {e}");
        }
        Ok(())
    }
}

/// Sleeps `pause` (beating); `true` when shutdown began meanwhile.
async fn pause(beat: &Beat, stop: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    beat.during(async {
        tokio::select! {
            _ = tokio::time::sleep(pause) => false,
            _ = stop.wait_for(|s| *s) => true,
        }
    })
    .await
}

/// Reports `why` and waits the next retry pause (beating); `true` when shutdown began
/// meanwhile.
async fn back_off(
    f: &Forwarder,
    retry: &mut Retry,
    beat: &Beat,
    stop: &mut watch::Receiver<bool>,
    why: String,
) -> bool {
    let wait = retry.next();
    f.trouble(why, Some(wait));
    pause(beat, stop, wait).await
}

/// One incarnation: forwards until shutdown. Each turn reads a page of the trail from the
/// cursor, connects when not connected, flushes the store, sends the page and moves the
/// cursor past it; any failure reports, waits the next retry pause and tries again.
pub(super) async fn run(f: Arc<Forwarder>, beat: Beat) {
    let mut wake = f.forwarding.wake.subscribe();
    let mut stop = f.stop.clone();
    let mut retry = Retry::new();
    let mut conn: Option<Linked> = None;
    let mut cursor = loop {
        match f.blocking(|f| f.cursors.resume(&f.audit)).await {
            Ok(c) => break c,
            Err(e) => {
                let why = format!("cannot read the forwarding cursor: {e}");
                if back_off(&f, &mut retry, &beat, &mut stop, why).await {
                    return;
                }
            }
        }
    };
    f.forwarding.status.forwarded_to(cursor.next_seq);
    loop {
        beat.tick();
        if *stop.borrow() {
            return;
        }
        // Seen before the trail is read: an append after the read wakes the wait below.
        wake.borrow_and_update();
        let page = match f.page(cursor.next_seq).await {
            Ok(page) => page,
            Err(e) => {
                let why = format!("cannot read the trail from {}: {e}", cursor.next_seq);
                if back_off(&f, &mut retry, &beat, &mut stop, why).await {
                    return;
                }
                continue;
            }
        };
        let Some(last) = page.last() else {
            idle(&f, &beat, &mut conn, &mut wake, &mut stop).await;
            continue;
        };
        let stream = match conn.as_mut() {
            Some(stream) => stream,
            None => match connect(&f, &beat, &mut stop, cursor.next_seq).await {
                None => return,
                Some(Ok(stream)) => conn.insert(stream),
                Some(Err(e)) => {
                    if back_off(&f, &mut retry, &beat, &mut stop, e.to_string()).await {
                        return;
                    }
                    continue;
                }
            },
        };
        // What leaves the box is durable on it first: the repository never holds a record
        // a crash could take back from the trail.
        if let Err(e) = f.store.flush().await {
            let why = format!("cannot flush the store: {e}");
            if back_off(&f, &mut retry, &beat, &mut stop, why).await {
                return;
            }
            continue;
        }
        if let Err(e) = send_page(&f, &beat, stream, &page).await {
            // The page is sent again on the next connection.
            conn = None;
            if back_off(&f, &mut retry, &beat, &mut stop, e.to_string()).await {
                return;
            }
            continue;
        }
        // Pauses start short again only once a page went through: a repository that
        // accepts and drops every connection is not hammered.
        retry.reset();
        // Keys are distinct sequence numbers from the cursor on: it always advances.
        cursor = Cursor {
            next_seq: last
                .seq
                .saturating_add(1)
                .max(cursor.next_seq.saturating_add(page.len() as u64)),
            last_hash: Some(last.hash.clone()),
        };
        f.forwarding.status.forwarded_to(cursor.next_seq);
        if let Err(e) = f.save(cursor.clone()).await {
            // Kept in memory: the next page's save stores it; a restart before then sends
            // this page again.
            log::error!("audit forwarding: cannot store the cursor: {e}");
        }
    }
}

/// Connects to the repository (beating); `None` when shutdown began meanwhile.
async fn connect(
    f: &Forwarder,
    beat: &Beat,
    stop: &mut watch::Receiver<bool>,
    next_seq: u64,
) -> Option<Result<Linked, super::link::ConnectError>> {
    let attempt = beat.during(async {
        tokio::select! {
            r = f.link.connect() => Some(r),
            _ = stop.wait_for(|s| *s) => None,
        }
    });
    let connected = attempt.await?;
    if connected.is_ok() {
        log::info!(
            "audit forwarding: connected to {}{}; {} records to send",
            f.link.target(),
            if f.link.is_tls() { " (TLS)" } else { "" },
            f.audit
                .head()
                .map_or(0, |(h, _)| (h + 1).saturating_sub(next_seq))
        );
        f.forwarding.status.connected();
    }
    Some(connected)
}

/// Why a page did not go through (the connection is then dropped).
#[derive(Debug, thiserror::Error)]
enum PageNotTaken {
    /// Writing failed.
    #[error("connection lost: {0}")]
    Lost(std::io::Error),
    /// The repository did not take it within the write timeout (seconds).
    #[error("connection dropped: a page not taken within {0} s")]
    TimedOut(f32),
    /// The repository's TCP did not acknowledge all of it within the write timeout: the
    /// connection may have died silently.
    #[error("connection dropped: {0} bytes of a page not acknowledged within {1} s")]
    Unacknowledged(usize, f32),
}

/// Sends one page of records, framed, and waits until the repository's TCP acknowledged
/// every byte of it, within the write timeout.
async fn send_page(
    f: &Forwarder,
    beat: &Beat,
    link: &mut Linked,
    page: &[Record],
) -> Result<(), PageNotTaken> {
    let mut bytes = Vec::new();
    for rec in page {
        frame_into(&message(rec, &f.origin), &mut bytes);
    }
    let deadline = tokio::time::Instant::now() + f.write_timeout;
    let stream: &mut dyn Stream = link.stream.as_mut();
    let written = beat
        .during(tokio::time::timeout_at(deadline, async {
            stream.write_all(&bytes).await?;
            stream.flush().await
        }))
        .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(PageNotTaken::Lost(e)),
        Err(_) => return Err(PageNotTaken::TimedOut(f.write_timeout.as_secs_f32())),
    }
    beat.during(acknowledged(link, deadline))
        .await
        .map_err(|left| PageNotTaken::Unacknowledged(left, f.write_timeout.as_secs_f32()))
}

/// Waits until the peer acknowledged everything written into `link`, or `deadline`;
/// the bytes still unacknowledged then.
async fn acknowledged(link: &Linked, deadline: tokio::time::Instant) -> Result<(), usize> {
    let mut wait = Duration::from_millis(1);
    loop {
        match link.unacknowledged() {
            Ok(0) => return Ok(()),
            Ok(left) if tokio::time::Instant::now() >= deadline => return Err(left),
            Ok(_) => {}
            // A socket that cannot say: the write went through, as before it could.
            Err(e) => {
                log::debug!("audit forwarding: send queue not readable: {e}");
                return Ok(());
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(50));
    }
}

/// Waits for an append, the periodic look, or shutdown; notices meanwhile a repository
/// that closed the connection. A repository sends nothing (RFC 5425): one that does is
/// dropped, not read on and on.
async fn idle(
    f: &Forwarder,
    beat: &Beat,
    conn: &mut Option<Linked>,
    wake: &mut watch::Receiver<u64>,
    stop: &mut watch::Receiver<bool>,
) {
    let woken = async {
        if wake.changed().await.is_err() {
            // no sender left: only the periodic look remains
            std::future::pending::<()>().await;
        }
    };
    let closed = beat
        .during(async {
            let mut buf = [0u8; 512];
            tokio::select! {
                _ = woken => None,
                _ = tokio::time::sleep(RECHECK) => None,
                _ = stop.wait_for(|s| *s) => None,
                r = read_some(conn, &mut buf) => match r {
                    Ok(0) => Some("connection closed by the repository".to_string()),
                    Err(e) => Some(format!("connection lost: {e}")),
                    Ok(n) => Some(format!(
                        "the repository sent {n} bytes, which a syslog receiver never does; \
                         connection dropped"
                    )),
                },
            }
        })
        .await;
    if let Some(why) = closed {
        *conn = None;
        f.trouble(why, None);
    }
}

/// Reads from the connection, or never returns when there is none.
async fn read_some(conn: &mut Option<Linked>, buf: &mut [u8]) -> std::io::Result<usize> {
    match conn.as_mut() {
        Some(link) => link.stream.read(buf).await,
        None => std::future::pending().await,
    }
}
