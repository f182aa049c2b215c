//! The C-FIND service: the identifier is matched against the index on a blocking thread
//! that streams each match as a pending response; C-CANCEL stops it between matches and
//! the final response then says Cancel. At most `dicom.max_find_matches` matches are
//! answered: one more stops the matching and the final response is A700 with an Error
//! Comment asking to narrow the query.
//!
//! Every C-FIND whose matching started is audited with the number of matches sent
//! (`FindAudit`): when it ends, and also when it is cut off (connection lost, association
//! aborted while answers were going out), then marked as ended early.

use super::identifier;
use super::query::{self, QueryError};
use super::Op;
use crate::audit::Action;
use crate::dimse::command::Command;
use crate::dimse::refusal::{Cause, Refused};
use crate::dimse::status::Status;
use tokio::sync::mpsc;

/// Responses buffered between the matching thread and the socket.
const IN_FLIGHT: usize = 32;

/// Most C-FIND matchings that run at once on the box (each on a blocking thread); more
/// wait for a turn, so no number of associations can keep every core scanning.
const CONCURRENT_MATCHINGS: usize = 2;

/// The turns of [`CONCURRENT_MATCHINGS`].
static MATCHING_TURNS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(CONCURRENT_MATCHINGS);

/// A matching thread's turn of a semaphore, given back while the thread waits for the
/// peer to take its answers: a peer that reads slowly (or not at all) holds its
/// association, never the box's matchings.
struct Turn {
    turns: &'static tokio::sync::Semaphore,
    held: Option<tokio::sync::SemaphorePermit<'static>>,
    runtime: tokio::runtime::Handle,
}

impl Turn {
    /// The thread holds `held`, a turn of `turns`; `runtime` waits for the next turn.
    fn new(
        turns: &'static tokio::sync::Semaphore,
        held: tokio::sync::SemaphorePermit<'static>,
        runtime: tokio::runtime::Handle,
    ) -> Turn {
        Turn {
            turns,
            held: Some(held),
            runtime,
        }
    }

    /// Sends `item` from the blocking thread. When the channel is full the turn is given
    /// back until the item is taken, then taken again before matching goes on. `false`
    /// when the receiver is gone.
    fn send<T>(&mut self, tx: &mpsc::Sender<T>, item: T) -> bool {
        let item = match tx.try_send(item) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        self.held = None;
        if tx.blocking_send(item).is_err() {
            return false;
        }
        self.held = self.runtime.block_on(self.turns.acquire()).ok();
        self.held.is_some()
    }
}

/// Stops the matching when the request's task is dropped mid-way (an abort, the
/// association's end): the blocking thread is not cancelled by dropping its handle, only
/// by this flag, which it reads between any two studies. Disarmed once the matching ended.
struct StopOnDrop(Option<std::sync::Arc<super::Stop>>);

impl StopOnDrop {
    /// The matching ended: nothing to stop.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = &self.0 {
            stop.stop();
        }
    }
}

/// The line logged when the peer's connection is lost while answering.
const CONNECTION_LOST: &str = "connection lost while answering C-FIND";

/// Runs one C-FIND to its final response; returns a line for the log.
pub async fn serve(op: Op) -> String {
    let q = match parse(&op) {
        Ok(q) => q,
        Err(refused) => return refuse(&op, refused).await,
    };
    warn_undeclared_charset(&op, &q);
    let description = q.describe();
    let mut audit = FindAudit {
        op: &op,
        object: studies_named(&q),
        audited: q.describe_with_values(),
        sent: 0,
        recorded: false,
    };
    let Ok(failure) = send_matches(&op, q, &mut audit).await else {
        return CONNECTION_LOST.into();
    };
    if failure.is_none() && op.cancelled() && !op.cancelled_by_peer() {
        // Its association is ending: recorded as cut off, with the matches sent.
        audit.ended_early("stopped with its association");
        return format!(
            "C-FIND {description}: {} match(es) sent, stopped",
            audit.sent
        );
    }
    let (status, outcome) = if let Some(refused) = &failure {
        (refused.status(), format!("failed: {}", refused.comment))
    } else if op.cancelled_by_peer() {
        (Status::CANCEL, "cancelled".to_string())
    } else {
        (Status::SUCCESS, "completed".to_string())
    };
    let sent = audit.sent;
    audit.record(format!("{sent} match(es), {outcome}"), failure.is_some());
    drop(audit);
    let mut rsp = Command::find_rsp(&op.rq, status);
    if let Some(refused) = &failure {
        rsp = rsp.with_error_comment(&refused.comment);
    }
    let sent_final = op.writer.lock().await.command(op.pc_id, &rsp).await;
    if sent_final.is_err() {
        return CONNECTION_LOST.into();
    }
    format!("C-FIND {description}: {sent} match(es), {outcome}")
}

/// The query of the request, or why it is refused (audited when the identifier is bad).
fn parse(op: &Op) -> Result<query::Query, Refused> {
    let Some(model) = op.model() else {
        return Err(Refused::new(
            Cause::NotQueryRetrieve,
            "not a C-FIND SOP class",
        ));
    };
    identifier::decode_identifier(&op.identifier, &op.transfer_syntax)
        .and_then(|obj| query::parse(&obj, model))
        .map_err(|e| {
            op.audit(Action::Query, "-", format!("C-FIND refused: {e}"), true);
            e.into()
        })
}

/// Logs, once per association, that the query holds non-ASCII values without a Specific
/// Character Set and how they are read.
fn warn_undeclared_charset(op: &Op, q: &query::Query) {
    if q.undeclared_non_ascii
        && !op
            .charset_warned
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        log::warn!(
            "C-FIND from {:?} at {}: non-ASCII values without Specific Character Set \
             (0008,0005); read as UTF-8 where valid, otherwise as ISO-IR 100 (Latin-1) \
             (said once per association)",
            op.accepted.calling_ae,
            op.peer
        );
    }
}

/// The Study Instance UID the query names, or `-` (the object of its audit record).
fn studies_named(q: &query::Query) -> String {
    q.keys
        .iter()
        .find(|k| k.tag == dicom_dictionary_std::tags::STUDY_INSTANCE_UID && !k.raw.is_empty())
        .map(|k| k.raw.clone())
        .unwrap_or_else(|| "-".to_string())
}

/// The connection was lost while answering (recorded in the audit as ended early).
struct ConnectionLost;

/// Matches `q` on a blocking thread and sends each match as a pending response until
/// the matching ends, is cancelled, or passes `dicom.max_find_matches`; returns why the
/// C-FIND failed, if it did.
async fn send_matches(
    op: &Op,
    q: query::Query,
    audit: &mut FindAudit<'_>,
) -> Result<Option<Refused>, ConnectionLost> {
    let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>, QueryError>>(IN_FLIGHT);
    let store = op.ctx.store.clone();
    let ae = op.ctx.ae_title.clone();
    let ts = op.transfer_syntax.clone();
    let cancel = op.cancel.clone();
    let mut stop_on_drop = StopOnDrop(Some(op.cancel.clone()));
    // A turn, held by the blocking thread while it matches (the semaphore is never closed,
    // so the error arm does not occur; without a turn nothing runs).
    let Ok(turn) = MATCHING_TURNS.acquire().await else {
        stop_on_drop.disarm();
        return Ok(Some(Refused::new(
            Cause::IndexFailed,
            "the matching could not start".to_string(),
        )));
    };
    let mut turn = Turn::new(&MATCHING_TURNS, turn, tokio::runtime::Handle::current());
    let worker = tokio::task::spawn_blocking(move || {
        query::run(&store, &q, &ae, &cancel, &mut |obj| {
            turn.send(&tx, identifier::encode_identifier(&obj, &ts))
        })
    });
    let mut failure: Option<Refused> = None;
    let cap = op.ctx.max_find_matches;
    while let Some(item) = rx.recv().await {
        if op.cancelled() {
            break;
        }
        match item {
            Ok(_) if audit.sent >= cap => {
                // Stops the matching thread at its next match; C-CANCEL is not involved.
                op.cancel.stop();
                failure = Some(Refused::new(
                    Cause::TooManyMatches,
                    format!("more than {cap} matches; narrow the query"),
                ));
                break;
            }
            Ok(bytes) => {
                let rsp = Command::find_rsp(&op.rq, Status::PENDING);
                let mut w = op.writer.lock().await;
                if w.message(op.pc_id, &rsp, Some(&bytes)).await.is_err() {
                    op.cancel.stop();
                    audit.ended_early("connection lost");
                    return Err(ConnectionLost);
                }
                audit.sent += 1;
            }
            Err(e) => {
                failure = Some(e.into());
                break;
            }
        }
    }
    drop(rx);
    match worker.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => failure = Some(e.into()),
        Err(e) => {
            failure = Some(Refused::new(
                Cause::IndexFailed,
                format!("query task failed: {e}"),
            ))
        }
    }
    stop_on_drop.disarm();
    Ok(failure)
}

/// The audit record owed for a C-FIND whose matching has started: written by
/// [`FindAudit::record`] when the C-FIND ends, by [`FindAudit::ended_early`] when the
/// connection is lost, and otherwise when this is dropped (the association ended and
/// stopped the task mid-way) — the last two with the matches sent so far, marked as
/// ended early.
struct FindAudit<'a> {
    /// The request.
    op: &'a Op,
    /// The study the query names, or `-`.
    object: String,
    /// The query with its values, as the trail records it.
    audited: String,
    /// Matches sent so far (pending responses written).
    sent: usize,
    /// Whether the record is written.
    recorded: bool,
}

impl FindAudit<'_> {
    /// Writes the record: the query, then `outcome`.
    fn record(&mut self, outcome: String, failed: bool) {
        self.recorded = true;
        self.op.audit(
            Action::Query,
            &self.object,
            format!("C-FIND {}: {outcome}", self.audited),
            failed,
        );
    }

    /// Writes the record of a C-FIND cut off because `why`, unless it is written.
    fn ended_early(&mut self, why: &str) {
        if !self.recorded {
            let outcome = format!("{} match(es) sent, ended early ({why})", self.sent);
            self.record(outcome, true);
        }
    }
}

impl Drop for FindAudit<'_> {
    fn drop(&mut self) {
        self.ended_early("stopped with its association");
    }
}

async fn refuse(op: &Op, refused: Refused) -> String {
    let _ = op
        .writer
        .lock()
        .await
        .command(op.pc_id, &refused.response(&op.rq))
        .await;
    format!("C-FIND refused ({refused})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::Semaphore;

    /// A matching whose answers wait for a peer that does not read gives its turn back
    /// while it waits (another matching can run), takes it again once the answer is
    /// taken, and stops when the receiver is gone.
    #[test]
    fn a_matching_waiting_on_its_peer_gives_its_turn_back() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let turns: &'static Semaphore = Box::leak(Box::new(Semaphore::new(1)));
        rt.block_on(async {
            let (tx, mut rx) = mpsc::channel::<u32>(1);
            let held = turns.acquire().await.unwrap();
            let mut turn = Turn::new(turns, held, tokio::runtime::Handle::current());
            let worker = tokio::task::spawn_blocking(move || {
                let sent = (0..3).all(|i| turn.send(&tx, i));
                (sent, turn.held.is_some())
            });
            tokio::time::timeout(Duration::from_secs(10), async {
                while turns.available_permits() == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("the turn is given back while the answers wait");
            drop(
                turns
                    .try_acquire()
                    .expect("another matching takes the turn"),
            );
            for i in 0..3 {
                assert_eq!(rx.recv().await, Some(i));
            }
            assert_eq!(worker.await.unwrap(), (true, true), "turn taken again");
            assert_eq!(turns.available_permits(), 1, "given back when done");

            let (tx, rx) = mpsc::channel::<u32>(1);
            let held = turns.acquire().await.unwrap();
            let mut turn = Turn::new(turns, held, tokio::runtime::Handle::current());
            drop(rx);
            let sent = tokio::task::spawn_blocking(move || turn.send(&tx, 7))
                .await
                .unwrap();
            assert!(!sent, "no receiver: the matching stops");
            assert_eq!(turns.available_permits(), 1);
        });
    }
}
