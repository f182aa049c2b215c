//! The delivery worker: one task per destination that drains its queue in order through a
//! [`Channel`], at least once, surviving peer outages of any length.
//!
//! Loop: take the head entry; if it is not due yet, sleep until it is (or until woken),
//! at most the backoff cap from when it was first seen waiting ([`HeadWait`]: a due time
//! further away was computed before the wall clock stepped backwards); send it; record
//! it in the audit trail when the peer answered a delivery that takes patient data off
//! the box ([`super::export_audit`]); mark it delivered, rejected (dead at once when it
//! can never be sent) or retried; flush. Woken
//! by the outbox's [`tokio::sync::Notify`] when new entries commit; stopped by a `watch`
//! signal.
//!
//! A message the peer cannot take without dropping the connection (a RIS parser that
//! crashes on it, a broker that disconnects on a packet it will not take) must not hold
//! every later report behind it, yet a silent drop alone does not tell such a message from
//! a peer that is down. After [`WorkerOptions::drops_before_probe`] drops of the head in a
//! row the worker probes: it sends the next entry of another study; when the
//! peer answers that, it sends the head once more at once, and only when the peer drops
//! it again is the head dead-lettered (kept, listed, re-queueable). A peer that does not
//! answer the probe either is at fault itself: the count starts again and the queue keeps
//! its order.

use super::export_audit::ExportAudit;
#[cfg(test)]
use super::Refusal;
use super::{Channel, Delivery};
use crate::clock::now_millis;
use crate::store::outbox::{Backoff, Destination, Entry, Outbox, OutboxError};
use crate::supervise::Beat;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a worker treats failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerOptions {
    /// Explicit refusals before an entry is dead-lettered (`[hl7] max_rejections`, a
    /// destination's `[[pacs.destinations]] max_rejections`; 5 for MQTT, whose refusals
    /// are messages that can never be sent).
    pub max_rejections: u32,
    /// Backoff between attempts that got no answer.
    pub backoff: Backoff,
    /// Backoff between explicit refusals ([`REFUSAL_BACKOFF`] by default): longer, so a
    /// refusal that only means "not now" (a RIS answering `AR` while its interface engine
    /// restarts, a PACS out of resources) does not dead-letter a report within seconds.
    pub refusal_backoff: Backoff,
    /// Pause after an outbox (database) error before trying again.
    pub error_pause: Duration,
    /// Drops of the head in a row (sent in full, no answer: [`Delivery::Dropped`]) after
    /// which the worker probes whether the message or the peer is at fault (see the module).
    pub drops_before_probe: u32,
}

/// The default [`WorkerOptions::drops_before_probe`]: five drops in a row, spaced by the
/// backoff (about 15 s in all at the default's 1 s doubling).
pub const DROPS_BEFORE_PROBE: u32 = 5;

/// The default spacing of refusals: 15 s doubling to 2 min (each within its lower half by
/// jitter), so with five refusals allowed a report is dead-lettered after two to four
/// minutes of refusals, not seconds; the entries behind it wait that long at most.
pub const REFUSAL_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(15),
    cap: Duration::from_secs(120),
};

impl WorkerOptions {
    /// The backoff whose cap bounds any wait for the head entry: the longer of the two
    /// (an entry refused waits its refusal backoff, not the shorter cap).
    fn longest_wait(&self) -> Backoff {
        Backoff {
            base: self.backoff.base,
            cap: self.backoff.cap.max(self.refusal_backoff.cap),
        }
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            max_rejections: 5,
            backoff: Backoff::default(),
            refusal_backoff: REFUSAL_BACKOFF,
            error_pause: Duration::from_secs(1),
            drops_before_probe: DROPS_BEFORE_PROBE,
        }
    }
}

/// The wait for the head entry, on the monotonic clock: when the worker first sees an
/// entry waiting (at a given attempt), its deadline is set from the wall clock's due time,
/// at most the backoff cap away ([`Backoff::wait`]); waking up for another reason (a new
/// entry) and looking again never pushes that deadline back, and a wall clock stepped
/// backwards cannot either.
#[derive(Debug, Default)]
pub struct HeadWait {
    /// The entry (id, attempts) and its deadline.
    deadline: Option<((u64, u32), Instant)>,
}

impl HeadWait {
    /// How long to wait, at wall-clock `now_ms` and monotonic `now`, before trying the
    /// entry `entry` (its id and attempts so far) due at `due_at_ms`: zero when it is due
    /// by either clock, else the shorter of its wall-clock wait and what is left of its
    /// deadline.
    pub fn wait(
        &mut self,
        entry: (u64, u32),
        due_at_ms: i64,
        now_ms: i64,
        now: Instant,
        backoff: &Backoff,
    ) -> Duration {
        let wall = backoff.wait(due_at_ms, now_ms);
        let deadline = match self.deadline {
            Some((seen, at)) if seen == entry => at,
            _ => {
                let at = now + wall;
                self.deadline = Some((entry, at));
                at
            }
        };
        wall.min(deadline.saturating_duration_since(now))
    }
}

/// The head entry's drops in a row ([`Delivery::Dropped`]), kept in memory: a restart
/// starts the count again, which only delays a probe.
#[derive(Debug, Default)]
struct Drops {
    /// The entry counted.
    entry: u64,
    /// Its drops in a row.
    count: u32,
}

impl Drops {
    /// Counts `outcome` of an attempt at entry `entry`; its drops in a row since.
    fn count(&mut self, entry: u64, outcome: &Delivery) -> u32 {
        match outcome {
            Delivery::Dropped(_) if self.entry == entry => self.count += 1,
            Delivery::Dropped(_) => *self = Drops { entry, count: 1 },
            // Not reached: neither evidence about the message nor against it.
            Delivery::Failed(_) if self.entry == entry => {}
            _ => *self = Drops::default(),
        }
        if self.entry == entry {
            self.count
        } else {
            0
        }
    }
}

/// How a probe ended ([`probe`]).
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// No entry of another study is queued behind the head: nothing to tell by.
    NothingBehind,
    /// The peer did not answer the other study's entry either: it is at fault, not the
    /// message.
    PeerAtFault,
    /// The peer answered the other report and then the head itself.
    HeadAnswered,
    /// The peer answered the other report and dropped the head again: dead-lettered.
    HeadDead,
    /// Stopped or interrupted (the shutdown signal changed).
    Interrupted { stop: bool },
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
    let ends = Ends { shutdown, beat };
    run_beating(outbox, dest, channel, options, None, ends).await
}

/// How a worker run by [`run_beating`] is watched and stopped.
pub struct Ends {
    /// Stops the worker when it changes to `true` (or its sender is dropped).
    pub shutdown: watch::Receiver<bool>,
    /// Beaten each time round the loop and while it waits.
    pub beat: Beat,
}

/// [`run`] beating `ends.beat` each time round its loop and while it waits (for an entry,
/// a due time, or the peer's answer), for [`crate::supervise`]; with `exports`, each
/// delivery that takes patient data off the box is recorded in the audit trail
/// ([`super::export_audit`]).
pub async fn run_beating<C: Channel>(
    outbox: Arc<Outbox>,
    dest: Destination,
    mut channel: C,
    options: WorkerOptions,
    exports: Option<ExportAudit>,
    ends: Ends,
) {
    let Ends { mut shutdown, beat } = ends;
    let recorder = Recorder {
        outbox: &outbox,
        dest: &dest,
        options: &options,
        exports: exports.as_ref(),
    };
    let notify = outbox.notifier(&dest);
    log::info!("delivery worker for {dest} started");
    let mut head_wait = HeadWait::default();
    let mut drops = Drops::default();
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
        // Nothing queued: wait for an entry. The head not yet due: wait for its time (at
        // most the backoff cap), or for a new entry (which may be due sooner).
        let (now_ms, now) = (now_millis(), Instant::now());
        let wait = head.as_ref().map(|e| {
            head_wait.wait(
                (e.id, e.attempts),
                e.next_attempt_at,
                now_ms,
                now,
                &options.longest_wait(),
            )
        });
        let Some(entry) = head.filter(|_| wait.is_some_and(|w| w.is_zero())) else {
            let stop = beat
                .during(async {
                    tokio::select! {
                        _ = sleep_for(wait) => false,
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
        let outcome = match attempt(&mut channel, &entry, &mut shutdown, &beat).await {
            Attempt::Done(d) => d,
            Attempt::Stop => break,
            Attempt::Again => continue,
        };
        let dropped = drops.count(entry.id, &outcome);
        recorder.record(&entry, &outcome).await;
        if dropped >= options.drops_before_probe.max(1) {
            let ended = probe(
                &recorder,
                &mut channel,
                &entry,
                dropped,
                &mut shutdown,
                &beat,
            )
            .await;
            match ended {
                Probe::Interrupted { stop: true } => break,
                Probe::NothingBehind | Probe::Interrupted { stop: false } => {}
                Probe::PeerAtFault | Probe::HeadAnswered | Probe::HeadDead => {
                    drops = Drops::default()
                }
            }
        }
        if let Err(e) = outbox.flush().await {
            log::error!("outbox {dest}: flush failed: {e}");
        }
    }
    channel.close().await;
    log::info!("delivery worker for {dest} stopped");
}

/// One attempt at `entry` through `channel`, given up when the shutdown signal changes.
async fn attempt<C: Channel>(
    channel: &mut C,
    entry: &Entry,
    shutdown: &mut watch::Receiver<bool>,
    beat: &Beat,
) -> Attempt {
    beat.during(async {
        tokio::select! {
            d = channel.deliver(entry) => Attempt::Done(d),
            r = shutdown.changed() => if r.is_err() { Attempt::Stop } else { Attempt::Again },
        }
    })
    .await
}

/// Where a worker records the outcomes of its attempts: the outbox, and the audit trail
/// for exports.
struct Recorder<'a> {
    outbox: &'a Outbox,
    dest: &'a Destination,
    options: &'a WorkerOptions,
    exports: Option<&'a ExportAudit>,
}

impl Recorder<'_> {
    /// The export record of the attempt (before the entry is marked, so a crash between
    /// the two repeats the delivery rather than leaving it unrecorded), then
    /// [`record_outcome`], an error logged and paused on.
    async fn record(&self, entry: &Entry, outcome: &Delivery) {
        if let Some(exports) = self.exports {
            exports.record(entry, outcome);
        }
        let (outbox, dest, options) = (self.outbox, self.dest, self.options);
        if let Err(e) = record_outcome(outbox, dest, entry, outcome, options) {
            log::error!(
                "outbox {dest}: cannot record the outcome of entry {}: {e}",
                entry.id
            );
            tokio::time::sleep(options.error_pause).await;
        }
    }
}

/// Tells a message the peer cannot take from a peer that is down, after the head `head`
/// was dropped `dropped` times in a row: sends the first entry of another study queued
/// behind it; when the peer answers that (acknowledges or refuses it), sends the head
/// once more at once, and dead-letters it when the peer drops it again. The other report
/// is then delivered before the head, which the peer could not take anyway; results of
/// the head's own study never overtake it (a RIS must never get an older result of a
/// study after a newer one).
async fn probe<C: Channel>(
    recorder: &Recorder<'_>,
    channel: &mut C,
    head: &Entry,
    dropped: u32,
    shutdown: &mut watch::Receiver<bool>,
    beat: &Beat,
) -> Probe {
    let (outbox, dest) = (recorder.outbox, &head.dest);
    let what = head.kind.as_str();
    let next = match outbox.next_of_another_study(head) {
        Ok(Some(next)) => next,
        Ok(None) => return Probe::NothingBehind,
        Err(e) => {
            log::error!("outbox {dest}: {e}");
            return Probe::NothingBehind;
        }
    };
    log::warn!(
        "{dest}: the peer dropped {what} of report {} {dropped} times in a row without \
         answering; sending entry {} (report {}) to tell the message from the peer",
        head.report_id,
        next.id,
        next.report_id
    );
    let answer = match attempt(channel, &next, shutdown, beat).await {
        Attempt::Done(d) => d,
        Attempt::Stop => return Probe::Interrupted { stop: true },
        Attempt::Again => return Probe::Interrupted { stop: false },
    };
    if let Delivery::Failed(why) | Delivery::Dropped(why) = &answer {
        // Left as it was: the peer, not that entry, is at fault (a copy it may have taken
        // goes again in order, as at-least-once allows).
        log::warn!(
            "{dest}: entry {} of another study was not answered either ({why}): the peer \
             is at fault, not the message; delivery goes on in order",
            next.id
        );
        return Probe::PeerAtFault;
    }
    recorder.record(&next, &answer).await;
    // The peer answers other messages: the head once more, at once.
    let head = match outbox.head(dest) {
        Ok(Some(h)) if h.id == head.id => h,
        Ok(_) => return Probe::HeadAnswered,
        Err(e) => {
            log::error!("outbox {dest}: {e}");
            return Probe::NothingBehind;
        }
    };
    let again = match attempt(channel, &head, shutdown, beat).await {
        Attempt::Done(d) => d,
        Attempt::Stop => return Probe::Interrupted { stop: true },
        Attempt::Again => return Probe::Interrupted { stop: false },
    };
    let Delivery::Dropped(why) = &again else {
        recorder.record(&head, &again).await;
        return Probe::HeadAnswered;
    };
    let reason = format!(
        "{why}: the peer ended the exchange without answering this message {} times in a \
         row and answered entry {} of another study between two of them, so it cannot \
         take this message (re-queue it with `duli outbox retry` once the peer or the \
         message is corrected)",
        dropped + 1,
        next.id
    );
    if let Err(e) = outbox.mark_dead(&head, &reason) {
        log::error!("outbox {dest}: cannot dead-letter entry {}: {e}", head.id);
        return Probe::NothingBehind;
    }
    Probe::HeadDead
}

/// Records the outcome of one attempt at `entry` in the outbox, the one place the five
/// outcomes map to outbox transitions: acknowledged → delivered, refused → counted towards
/// `max_rejections`, unsendable → dead at once, failed or dropped → retried after the
/// backoff.
fn record_outcome(
    outbox: &Outbox,
    dest: &Destination,
    entry: &Entry,
    outcome: &Delivery,
    options: &WorkerOptions,
) -> Result<(), OutboxError> {
    let what = entry.kind.as_str();
    match outcome {
        Delivery::Acked => outbox.mark_delivered(entry),
        Delivery::Rejected(refusal) => {
            log::warn!(
                "{dest}: {what} of report {} refused: {}",
                entry.report_id,
                refusal.for_the_journal()
            );
            outbox
                .mark_rejected(
                    entry,
                    &refusal.summary,
                    refusal.peer_text.as_deref(),
                    options.max_rejections,
                    &options.refusal_backoff,
                )
                .map(|_| ())
        }
        Delivery::Unsendable(reason) => {
            log::warn!(
                "{dest}: {what} of report {} cannot be sent: {reason}",
                entry.report_id
            );
            outbox
                .mark_rejected(entry, reason, None, 1, &options.backoff)
                .map(|_| ())
        }
        Delivery::Failed(reason) | Delivery::Dropped(reason) => {
            let level = if entry.attempts == 0 || entry.attempts % 20 == 0 {
                log::Level::Warn
            } else {
                log::Level::Debug
            };
            let how = match outcome {
                Delivery::Dropped(_) => "sent, not answered",
                _ => "not delivered",
            };
            log::log!(
                level,
                "{dest}: {what} of report {} {how} (attempt {}): {reason}",
                entry.report_id,
                entry.attempts + 1
            );
            outbox
                .mark_retry(entry, reason, &options.backoff)
                .map(|_| ())
        }
    }
}

/// Sleeps `wait` when given (the head entry's wait), forever when not (nothing queued).
async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RIS's words, which may name the patient, stay out of the journal and with the
    /// entry; the code goes in both.
    #[test]
    fn a_peers_words_are_kept_with_the_entry_not_journalled() {
        let r = Refusal::from_peer("AE", "Patient 123456 SMITH^JOHN not found");
        let said = r.for_the_journal();
        assert!(said.starts_with("AE ") && !said.contains("SMITH") && !said.contains("123456"));
        assert_eq!(
            (r.summary.as_str(), r.peer_text.as_deref()),
            ("AE", Some("Patient 123456 SMITH^JOHN not found"))
        );
        let bare = Refusal::from_peer("AR", "");
        assert_eq!(
            (bare.for_the_journal(), bare.peer_text),
            ("AR".into(), None)
        );
        let ours = Refusal::ours("status A700");
        assert_eq!(ours.for_the_journal(), "status A700");
    }

    /// Drops are counted in a row for one entry: an unreachable peer neither adds nor
    /// clears them, any answer clears them, and another entry starts its own count.
    #[test]
    fn drops_count_in_a_row_per_entry() {
        let mut d = Drops::default();
        let dropped = Delivery::Dropped("closed".into());
        assert_eq!(d.count(7, &dropped), 1);
        assert_eq!(d.count(7, &dropped), 2);
        assert_eq!(d.count(7, &Delivery::Failed("refused".into())), 2);
        assert_eq!(d.count(7, &dropped), 3);
        assert_eq!(d.count(7, &Delivery::Rejected(Refusal::ours("AE"))), 0);
        assert_eq!(d.count(7, &dropped), 1);
        assert_eq!(d.count(8, &Delivery::Failed("refused".into())), 0);
        assert_eq!(d.count(8, &dropped), 1);
        assert_eq!(d.count(8, &Delivery::Acked), 0);
    }

    /// After the wall clock stepped back by a day, the head entry's due time lies a day
    /// ahead: it is tried within the backoff cap (120 s), and new entries waking the
    /// worker meanwhile do not start that wait again.
    #[test]
    fn a_head_due_a_day_ahead_is_tried_within_the_cap() {
        let backoff = Backoff::default();
        assert_eq!(backoff.cap, Duration::from_secs(120));
        let (t0, now_ms, day) = (Instant::now(), 1_800_000_000_000_i64, 86_400_000_i64);
        let at = |s: u64| (t0 + Duration::from_secs(s), now_ms + s as i64 * 1000);
        let mut w = HeadWait::default();
        let due = now_ms + day;
        let (t, ms) = at(0);
        assert_eq!(
            w.wait((7, 1), due, ms, t, &backoff),
            Duration::from_secs(120)
        );
        // Woken by a new entry 100 s later: 20 s left, not 120 again.
        let (t, ms) = at(100);
        assert_eq!(
            w.wait((7, 1), due, ms, t, &backoff),
            Duration::from_secs(20)
        );
        let (t, ms) = at(120);
        assert_eq!(w.wait((7, 1), due, ms, t, &backoff), Duration::ZERO);
        // Its next attempt waits its own backoff; an entry due now waits nothing.
        let (t, ms) = at(121);
        assert_eq!(
            w.wait((7, 2), ms + 3_000, ms, t, &backoff),
            Duration::from_secs(3)
        );
        assert_eq!(w.wait((8, 0), ms, ms, t, &backoff), Duration::ZERO);
    }
}
