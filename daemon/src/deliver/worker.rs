//! The delivery worker: one task per destination that drains its queue in order through a
//! [`Channel`], at least once, surviving peer outages of any length.
//!
//! Loop: take the head entry; if it is not due yet, sleep until it is (or until woken);
//! send it; mark it delivered, rejected (dead at once when it can never be sent) or retried;
//! flush. Woken by the outbox's [`tokio::sync::Notify`] when new entries commit; stopped by
//! a `watch` signal.

use super::{Channel, Delivery};
use crate::clock::now_millis;
use crate::store::outbox::{Backoff, Destination, Outbox};
use crate::supervise::Beat;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a worker treats failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerOptions {
    /// Explicit refusals before an entry is dead-lettered (`[hl7] max_rejections`, a
    /// destination's `[[pacs.destinations]] max_rejections`; 5 for MQTT, whose refusals
    /// are messages that can never be sent).
    pub max_rejections: u32,
    /// Backoff between attempts.
    pub backoff: Backoff,
    /// Pause after an outbox (database) error before trying again.
    pub error_pause: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            max_rejections: 5,
            backoff: Backoff::default(),
            error_pause: Duration::from_secs(1),
        }
    }
}

/// How one delivery attempt ended for the loop.
enum Attempt {
    /// The channel answered.
    Done(Delivery),
    /// The shutdown signal's sender is gone.
    Stop,
    /// The shutdown signal changed: look again.
    Again,
}

/// Starts the worker of `dest` on the current tokio runtime. It stops when `shutdown`
/// turns `true` (or its sender is dropped), after calling [`Channel::close`].
pub fn spawn<C: Channel>(
    outbox: Arc<Outbox>,
    dest: Destination,
    channel: C,
    options: WorkerOptions,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(outbox, dest, channel, options, shutdown))
}

/// The worker loop (see [`spawn`]).
pub async fn run<C: Channel>(
    outbox: Arc<Outbox>,
    dest: Destination,
    channel: C,
    options: WorkerOptions,
    shutdown: watch::Receiver<bool>,
) {
    let beat = Beat::detached(&format!("deliver {dest}"));
    run_beating(outbox, dest, channel, options, shutdown, beat).await
}

/// [`run`] beating `beat` each time round its loop and while it waits (for an entry, a
/// due time, or the peer's answer), for [`crate::supervise`].
pub async fn run_beating<C: Channel>(
    outbox: Arc<Outbox>,
    dest: Destination,
    mut channel: C,
    options: WorkerOptions,
    mut shutdown: watch::Receiver<bool>,
    beat: Beat,
) {
    let notify = outbox.notifier(&dest);
    log::info!("delivery worker for {dest} started");
    loop {
        beat.tick();
        if *shutdown.borrow() {
            break;
        }
        let head = match outbox.head(&dest) {
            Ok(h) => h,
            Err(e) => {
                log::error!("outbox {dest}: {e}");
                let stop = beat
                    .during(async {
                        tokio::select! {
                            _ = tokio::time::sleep(options.error_pause) => false,
                            r = shutdown.changed() => r.is_err(),
                        }
                    })
                    .await;
                if stop {
                    break;
                }
                continue;
            }
        };
        // Nothing queued: wait for an entry. The head not yet due: wait for its time, or
        // for a new entry (which may be due sooner).
        let due_in = head.as_ref().map(|e| e.next_attempt_at - now_millis());
        let Some(entry) = head.filter(|_| due_in.is_some_and(|ms| ms <= 0)) else {
            let stop = beat
                .during(async {
                    tokio::select! {
                        _ = sleep_for(due_in) => false,
                        _ = notify.notified() => false,
                        _ = channel.idle() => false,
                        r = shutdown.changed() => r.is_err(),
                    }
                })
                .await;
            if stop {
                break;
            }
            continue;
        };
        let attempt = beat
            .during(async {
                tokio::select! {
                    d = channel.deliver(&entry) => Attempt::Done(d),
                    r = shutdown.changed() => if r.is_err() { Attempt::Stop } else { Attempt::Again },
                }
            })
            .await;
        let outcome = match attempt {
            Attempt::Done(d) => d,
            Attempt::Stop => break,
            Attempt::Again => continue,
        };
        let result = match &outcome {
            Delivery::Acked => outbox.mark_delivered(&entry).map(|_| ()),
            Delivery::Rejected(reason) => {
                log::warn!(
                    "{dest}: {} of report {} refused: {reason}",
                    entry.kind.as_str(),
                    entry.report_id
                );
                outbox
                    .mark_rejected(&entry, reason, options.max_rejections, &options.backoff)
                    .map(|_| ())
            }
            Delivery::Unsendable(reason) => {
                log::warn!(
                    "{dest}: {} of report {} cannot be sent: {reason}",
                    entry.kind.as_str(),
                    entry.report_id
                );
                outbox
                    .mark_rejected(&entry, reason, 1, &options.backoff)
                    .map(|_| ())
            }
            Delivery::Failed(reason) => {
                let level = if entry.attempts == 0 || entry.attempts % 20 == 0 {
                    log::Level::Warn
                } else {
                    log::Level::Debug
                };
                log::log!(
                    level,
                    "{dest}: {} of report {} not delivered (attempt {}): {reason}",
                    entry.kind.as_str(),
                    entry.report_id,
                    entry.attempts + 1
                );
                outbox
                    .mark_retry(&entry, reason, &options.backoff)
                    .map(|_| ())
            }
        };
        if let Err(e) = result {
            log::error!(
                "outbox {dest}: cannot record the outcome of entry {}: {e}",
                entry.id
            );
            tokio::time::sleep(options.error_pause).await;
        }
        if let Err(e) = outbox.flush().await {
            log::error!("outbox {dest}: flush failed: {e}");
        }
    }
    channel.close().await;
    log::info!("delivery worker for {dest} stopped");
}

/// Sleeps `ms` milliseconds when given (a due time in the future), forever when not.
async fn sleep_for(ms: Option<i64>) {
    match ms {
        Some(ms) => tokio::time::sleep(Duration::from_millis(ms.max(0) as u64)).await,
        None => std::future::pending().await,
    }
}
