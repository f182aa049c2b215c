//! Forwarding of the audit trail to the site's audit record repository (IHE ATNA):
//! `[audit] syslog = "host:port"`. Each record becomes one RFC 5424 message carrying its
//! DICOM Audit Message ([`message`]), sent over TCP with octet-counting framing (RFC 6587)
//! or over TLS (RFC 5425, [`link`]).
//!
//! The trail is the queue. An append only signals the stage ([`Forwarding`], the trail's
//! [`crate::audit::AppendSink`]): it never waits for the repository, which may be down.
//! The stage ([`stage`]) reads the trail from a stored cursor ([`cursor`]) a page at a
//! time, so memory stays bounded however long the repository is away and nothing is
//! dropped; after a restart or a reconnection it resumes from the cursor. A record counts
//! as forwarded once written to the socket and flushed: TCP carries no acknowledgement
//! from the application, so a record in flight when a connection breaks may be sent
//! again (the structured data name its sequence number and hash for the repository to
//! recognise it). [`status`]: what the console shows of it.

pub mod cursor;
pub mod link;
pub mod message;
pub mod stage;
pub mod status;

use crate::audit::{AppendSink, Audit, Record};
use crate::config::Config;
use crate::store::{Store, StoreError};
use crate::supervise::{Backoff, Shutdown};
use status::{ForwardStatus, Status};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Name of the supervised stage.
pub const STAGE: &str = "audit-forward";
/// How long shutdown waits for the page in flight.
pub const DRAIN: Duration = Duration::from_secs(5);

/// The trail's sink while forwarding is on: wakes the stage on each append and holds its
/// status.
#[derive(Debug)]
pub struct Forwarding {
    /// The sequence number of the latest append.
    wake: watch::Sender<u64>,
    /// The stage's state.
    status: Status,
}

impl AppendSink for Forwarding {
    fn appended(&self, rec: &Record) {
        self.wake.send_replace(rec.seq);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Forwarding {
    /// The state, its backlog counted against `head` (the trail's last sequence number).
    pub fn status(&self, head: Option<u64>) -> ForwardStatus {
        self.status.snapshot(head)
    }
}

/// The forwarder's state, when `audit` forwards.
pub fn status_of(audit: &Audit) -> Option<ForwardStatus> {
    let forwarding = audit.sink()?.as_any().downcast_ref::<Forwarding>()?;
    Some(forwarding.status(audit.head().map(|(seq, _)| seq)))
}

/// Why forwarding could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `[audit]` does not give a repository.
    #[error(transparent)]
    Link(#[from] link::LinkError),
    /// The cursor's tree cannot be opened.
    #[error("the forwarding cursor: {0}")]
    Store(#[from] StoreError),
    /// The trail already has a sink.
    #[error("the audit trail already has a sink")]
    SinkTaken,
}

/// Starts forwarding when `[audit] syslog` is set: the trail's sink and the supervised
/// stage [`STAGE`] (whose task is returned, to be given [`DRAIN`] at shutdown).
pub fn start(
    config: &Config,
    store: &Arc<Store>,
    audit: &Arc<Audit>,
    shutdown: &Shutdown,
) -> Result<Option<tokio::task::JoinHandle<()>>, StartError> {
    start_with(config, store, audit, shutdown, stage::WRITE_TIMEOUT)
}

/// [`start`] allowing `write_timeout` for each page (the tests shorten it).
fn start_with(
    config: &Config,
    store: &Arc<Store>,
    audit: &Arc<Audit>,
    shutdown: &Shutdown,
    write_timeout: Duration,
) -> Result<Option<tokio::task::JoinHandle<()>>, StartError> {
    let Some(link) = link::Link::from_config(&config.audit)? else {
        return Ok(None);
    };
    let cursors = cursor::Cursors::open(store)?;
    let forwarding = Arc::new(Forwarding {
        wake: watch::channel(audit.head().map_or(0, |(seq, _)| seq)).0,
        status: Status::new(link.target().to_string(), link.is_tls()),
    });
    if !audit.set_sink(forwarding.clone()) {
        return Err(StartError::SinkTaken);
    }
    let hostname = crate::console::hostname().unwrap_or_default();
    log::info!(
        "audit forwarding to {} over {}",
        link.target(),
        if link.is_tls() { "TLS" } else { "plain TCP" }
    );
    let forwarder = Arc::new(stage::Forwarder {
        audit: audit.clone(),
        store: store.clone(),
        cursors,
        origin: message::Origin::new(&hostname, &config.device.device_id),
        link,
        forwarding,
        stop: shutdown.signal(),
        write_timeout,
    });
    Ok(Some(shutdown.supervise(
        STAGE,
        Backoff::default(),
        move |beat| stage::run(forwarder.clone(), beat),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Event};
    use crate::config::audit::AuditConfig;
    use tokio::io::AsyncReadExt;

    /// Takes the complete octet-counted frames off the front of `data`; their sequence
    /// numbers. A frame cut short stays in `data`.
    fn complete_frames(data: &mut Vec<u8>) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(sp) = data.iter().position(|b| *b == b' ') {
            let len: usize = std::str::from_utf8(&data[..sp]).unwrap().parse().unwrap();
            if data.len() < sp + 1 + len {
                break;
            }
            let msg = String::from_utf8(data[sp + 1..sp + 1 + len].to_vec()).unwrap();
            let seq = msg
                .split("seq=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            seqs.push(seq.parse().unwrap());
            data.drain(..sp + 1 + len);
        }
        seqs
    }

    /// Reads octet-counted frames from `r` until `done` holds for the sequence numbers
    /// read so far; those.
    async fn read_until(r: &mut tokio::net::TcpStream, done: impl Fn(&[u64]) -> bool) -> Vec<u64> {
        let (mut data, mut seqs, mut buf) = (Vec::new(), Vec::new(), vec![0u8; 65536]);
        while !done(&seqs) {
            let got = tokio::time::timeout(Duration::from_secs(20), r.read(&mut buf))
                .await
                .expect("frames in time")
                .unwrap();
            assert!(got > 0, "closed early");
            data.extend_from_slice(&buf[..got]);
            seqs.extend(complete_frames(&mut data));
        }
        seqs
    }

    /// Reads octet-counted frames from `r` until `n` have come; their sequence numbers.
    async fn seqs_of(r: &mut tokio::net::TcpStream, n: usize) -> Vec<u64> {
        read_until(r, |seqs| seqs.len() >= n).await
    }

    /// The configuration forwarding to `port` on loopback over plain TCP.
    /// A store with its audit trail, in a temporary folder.
    fn trail() -> (tempfile::TempDir, Arc<Store>, Arc<Audit>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let audit = Arc::new(Audit::open(&store).unwrap());
        (dir, store, audit)
    }

    fn forwarding_to(port: u16) -> Config {
        Config {
            audit: AuditConfig {
                syslog: Some(format!("127.0.0.1:{port}")),
                syslog_tls: false,
                ..AuditConfig::default()
            },
            ..Config::default()
        }
    }

    /// A repository that accepts and then never reads: appends still never wait; once
    /// the socket buffers are full the page in flight is given up after the write
    /// timeout, the connection dropped and the status says why. When the repository
    /// reads again, what it had taken before the drop and what the next connection
    /// brings hold every record, in order, none missing (the page cut short is sent
    /// again).
    #[tokio::test]
    async fn a_repository_that_stops_reading_is_dropped_and_nothing_is_lost() {
        let (_dir, store, audit) = trail();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = Shutdown::new();
        let timeout = Duration::from_millis(500);
        let task = start_with(&forwarding_to(port), &store, &audit, &shutdown, timeout)
            .unwrap()
            .unwrap();
        audit
            .append(Event::new("ana", Action::Login, "ana"))
            .unwrap();
        let (mut silent, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .unwrap()
            .unwrap();
        // Far more than the loopback socket buffers hold (about 1 KB a record).
        let n: u64 = 20_000;
        for i in 1..n {
            audit
                .append(Event::new("ana", Action::View, &format!("1.2.{i}")))
                .unwrap();
        }
        let mut dropped = None;
        for _ in 0..600 {
            let st = status_of(&audit).unwrap();
            if st.last_error.as_deref().is_some_and(|e| {
                e.contains("not taken within") || e.contains("not acknowledged within")
            }) {
                dropped = Some(st);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let st = dropped.expect("the stalled connection is given up");
        assert!(!st.connected, "{st:?}");
        assert!(st.backlog > 0, "{st:?}");

        // The repository reads again: first what it was sent before the drop.
        let mut data = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), silent.read_to_end(&mut data))
            .await
            .expect("the dropped connection ends")
            .unwrap();
        let mut got = complete_frames(&mut data);
        assert!(!got.is_empty() && (got.len() as u64) < n, "{}", got.len());
        assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>());
        // Then the next connection, from the cursor on, to the end of the trail.
        let (mut next, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
            .await
            .unwrap()
            .unwrap();
        let first_missing = got.len() as u64;
        let again = read_until(&mut next, |seqs| seqs.last() == Some(&(n - 1))).await;
        assert!(
            again[0] <= first_missing,
            "a gap: {} .. {}",
            first_missing,
            again[0]
        );
        assert_eq!(
            again,
            (again[0]..n).collect::<Vec<_>>(),
            "the next connection sends the rest in order"
        );
        got.extend(again);
        got.sort_unstable();
        got.dedup();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
        shutdown.stop(None).await;
        tokio::time::timeout(DRAIN, task)
            .await
            .expect("the stage stops on the signal")
            .unwrap();
    }

    /// Starts forwarding to a port nobody listens on yet and appends `n` records while the
    /// repository is away; the port and the stage's task.
    async fn forwarding_while_away(
        store: &Arc<Store>,
        audit: &Arc<Audit>,
        shutdown: &Shutdown,
        n: u64,
    ) -> (u16, tokio::task::JoinHandle<()>) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let task = start(&forwarding_to(port), store, audit, shutdown)
            .unwrap()
            .unwrap();
        for i in 0..n {
            audit
                .append(Event::new("ana", Action::View, &format!("1.2.{i}")))
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        (port, task)
    }

    /// The repository comes up on `port`: its listener and the forwarder's connection.
    async fn repository_up(port: u16) -> (tokio::net::TcpListener, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let (conn, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .unwrap()
            .unwrap();
        (listener, conn)
    }

    /// Past the trail's budget, the records the repository acknowledged are removed from
    /// the box (the record saying so is forwarded like any other) and the rest still
    /// verifies; while the repository is away nothing is removed and the alarm is up.
    #[tokio::test]
    async fn past_its_budget_the_trail_sheds_only_what_the_repository_took() {
        let (_dir, store, audit) = trail();
        audit.set_budget(200);
        let shutdown = Shutdown::new();
        let (port, task) = forwarding_while_away(&store, &audit, &shutdown, 300).await;
        let b = audit.budget();
        assert_eq!((b.held, b.max_records, b.alarm), (300, 200, true));
        let (_listener, mut conn) = repository_up(port).await;
        // Every record, then the one saying which were removed.
        let got = read_until(&mut conn, |seqs| seqs.last().is_some_and(|l| *l >= 300)).await;
        assert_eq!(got, (0..=300).collect::<Vec<u64>>());
        let said = audit.records(300, 1).unwrap().remove(0);
        assert!(
            said.detail.starts_with(crate::audit::budget::SHED),
            "{said:?}"
        );
        assert!(audit.held() <= 200, "{:?}", audit.budget());
        assert!(audit.records(0, 1).unwrap()[0].seq >= 100);
        let v = audit.verify().unwrap();
        assert!(v.broken.is_none(), "{v:?}");
        shutdown.stop(None).await;
        tokio::time::timeout(DRAIN, task)
            .await
            .expect("the stage stops on the signal")
            .unwrap();
    }

    #[tokio::test]
    async fn appends_never_wait_and_arrive_once_the_repository_listens() {
        let (_dir, store, audit) = trail();
        let shutdown = Shutdown::new();
        let (port, task) = forwarding_while_away(&store, &audit, &shutdown, 300).await;
        let st = status_of(&audit).unwrap();
        assert!(!st.connected && st.last_error.is_some(), "{st:?}");
        assert_eq!((st.backlog, st.last_forwarded), (300, None));
        let (_listener, mut conn) = repository_up(port).await;
        assert_eq!(
            seqs_of(&mut conn, 300).await,
            (0..300).collect::<Vec<u64>>()
        );
        // Later appends follow on the same connection.
        audit
            .append(Event::new("bob", Action::Login, "bob"))
            .unwrap();
        assert_eq!(seqs_of(&mut conn, 1).await, vec![300]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let st = status_of(&audit).unwrap();
        assert!(st.connected, "{st:?}");
        assert_eq!((st.backlog, st.last_forwarded), (0, Some(300)));
        shutdown.stop(None).await;
        tokio::time::timeout(DRAIN, task)
            .await
            .expect("the stage stops on the signal")
            .unwrap();
        assert_eq!(
            cursor::Cursors::open(&store)
                .unwrap()
                .load()
                .unwrap()
                .next_seq,
            301
        );
    }

    /// A repository that sends anything (a syslog receiver never does) is dropped at once
    /// rather than read on and on; what follows goes out on the next connection.
    #[tokio::test]
    async fn a_repository_that_talks_back_is_dropped_and_records_follow() {
        use tokio::io::AsyncWriteExt;
        let (_dir, store, audit) = trail();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = Shutdown::new();
        let task = start(&forwarding_to(port), &store, &audit, &shutdown)
            .unwrap()
            .unwrap();
        audit
            .append(Event::new("ana", Action::Login, "ana"))
            .unwrap();
        let (mut chatty, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seqs_of(&mut chatty, 1).await, vec![0]);
        chatty.write_all(&[b'x'; 4096]).await.unwrap();
        let mut rest = Vec::new();
        // Closed with what it sent unread: an end or a reset, either way dropped.
        let _ = tokio::time::timeout(Duration::from_secs(20), chatty.read_to_end(&mut rest))
            .await
            .expect("the connection is dropped");
        let st = status_of(&audit).unwrap();
        assert!(
            st.last_error
                .as_deref()
                .is_some_and(|e| e.contains("never does")),
            "{st:?}"
        );
        audit
            .append(Event::new("bob", Action::Login, "bob"))
            .unwrap();
        let (mut next, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seqs_of(&mut next, 1).await, vec![1]);
        shutdown.stop(None).await;
        tokio::time::timeout(DRAIN, task)
            .await
            .expect("the stage stops on the signal")
            .unwrap();
    }
}
