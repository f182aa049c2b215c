//! Storage Commitment of the result push: the transactions a PACS has been asked to commit
//! to, and the reports that answer them.
//!
//! The push channel ([`super::pacs`]) registers a transaction ([`Commitments::register`])
//! before it sends the N-ACTION, then waits for its [`Verdict`]; the SCP hands each
//! N-EVENT-REPORT it receives to [`Commitments::report`]. A transaction lives only while
//! its channel waits: the outbox entry is the durable record, and stays queued until the
//! archive committed to every object in it (a restart sends the objects and asks again).
//!
//! A report is taken only from the AE title the request went to, and only for a
//! transaction this box issued: Transaction UIDs carry 128 random bits, so a peer on the
//! LAN cannot answer for the archive without having seen the request.

use crate::dimse::command::Command;
use crate::dimse::commitment::{
    reason_text, Failure, Reference, Report, EVENT_FAILURES_EXIST, EVENT_SUCCESSFUL,
};
use crate::dimse::refusal::{Cause, Refused};
use crate::dimse::uids;
use crate::metrics::{CommitmentOutcome, Metrics};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Most transactions waiting at once (one per PACS worker; the bound only guards memory).
const MAX_PENDING: usize = 256;

/// What the archive answered for the objects of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It committed to keeping every one.
    Committed,
    /// It did not commit to these (with its reasons); it may have committed to others.
    NotCommitted(Vec<Failure>),
}

impl Verdict {
    /// One line for the outbox entry and the journal: how many were not committed, and why.
    pub fn describe(failures: &[Failure]) -> String {
        let mut reasons: Vec<String> = failures
            .iter()
            .take(3)
            .map(|f| {
                format!(
                    "{} ({:04X}H {})",
                    f.reference.sop_instance,
                    f.reason,
                    reason_text(f.reason)
                )
            })
            .collect();
        if failures.len() > 3 {
            reasons.push(format!("and {} more", failures.len() - 3));
        }
        format!(
            "the PACS did not commit to keeping {} object(s): {}",
            failures.len(),
            reasons.join(", ")
        )
    }
}

/// How a received report was taken: it fixes the status of the N-EVENT-REPORT-RSP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// It answered a waiting transaction.
    Answered,
    /// No transaction of that UID waits (answered after its time limit, or never ours):
    /// acknowledged and ignored; the objects are sent and asked about again.
    Unknown,
    /// The transaction waits for another AE title's report: refused.
    WrongPeer {
        /// The AE title the request went to.
        expected: String,
    },
}

struct Pending {
    ae_title: String,
    references: HashSet<Reference>,
    answer: oneshot::Sender<Verdict>,
}

/// The transactions waiting for their report. Shared by the push workers and the SCP.
#[derive(Default)]
pub struct Commitments {
    pending: Mutex<HashMap<String, Pending>>,
    /// Where each report taken is counted (`duli_commitment_reports_total`), if anywhere.
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Commitments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commitments")
            .field("pending", &self.lock().len())
            .finish()
    }
}

/// A registered transaction; dropping it forgets the transaction.
pub struct Waiting {
    registry: Arc<Commitments>,
    transaction_uid: String,
    answer: Option<oneshot::Receiver<Verdict>>,
}

impl Waiting {
    /// The transaction's UID, for the N-ACTION.
    pub fn transaction_uid(&self) -> &str {
        &self.transaction_uid
    }

    /// Waits for the archive's report (forever: the caller bounds it in time).
    pub async fn verdict(&mut self) -> Option<Verdict> {
        self.answer.as_mut()?.await.ok()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.transaction_uid);
    }
}

/// Why a transaction could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitmentsError {
    /// Too many transactions wait already.
    #[error("{MAX_PENDING} Storage Commitment transactions already wait for their report")]
    Full,
    /// No random bytes for the Transaction UID.
    #[error("no random source for a Transaction UID")]
    Random,
}

impl Commitments {
    /// An empty registry.
    pub fn new() -> Arc<Commitments> {
        Arc::new(Commitments::default())
    }

    /// An empty registry that counts every report [`take_report`] takes into `metrics`.
    pub fn counted(metrics: Arc<Metrics>) -> Arc<Commitments> {
        Arc::new(Commitments {
            metrics: Some(metrics),
            ..Commitments::default()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new transaction for `references`, sent to the archive `ae_title`.
    pub fn register(
        self: &Arc<Self>,
        ae_title: &str,
        references: &[Reference],
    ) -> Result<Waiting, CommitmentsError> {
        let transaction_uid = new_transaction_uid()?;
        let (tx, rx) = oneshot::channel();
        let mut pending = self.lock();
        if pending.len() >= MAX_PENDING {
            return Err(CommitmentsError::Full);
        }
        pending.insert(
            transaction_uid.clone(),
            Pending {
                ae_title: ae_title.trim().to_string(),
                references: references.iter().cloned().collect(),
                answer: tx,
            },
        );
        Ok(Waiting {
            registry: self.clone(),
            transaction_uid,
            answer: Some(rx),
        })
    }

    /// Takes a report received from `calling_ae`: the waiting transaction it answers gets
    /// its verdict. An object of the transaction the report names neither committed nor
    /// failed counts as not committed (reason 0); objects it names that the transaction
    /// did not ask about are ignored.
    pub fn report(&self, calling_ae: &str, report: &Report) -> Taken {
        let mut pending = self.lock();
        let Some(waiting) = pending.get(&report.transaction_uid) else {
            return Taken::Unknown;
        };
        if waiting.ae_title != calling_ae.trim() {
            return Taken::WrongPeer {
                expected: waiting.ae_title.clone(),
            };
        }
        let Some(waiting) = pending.remove(&report.transaction_uid) else {
            return Taken::Unknown;
        };
        drop(pending);
        let committed: HashSet<&Reference> = report
            .committed
            .iter()
            .filter(|r| waiting.references.contains(*r))
            .collect();
        let mut failures: Vec<Failure> = report
            .failed
            .iter()
            .filter(|f| waiting.references.contains(&f.reference))
            .filter(|f| !committed.contains(&f.reference))
            .cloned()
            .collect();
        for r in &waiting.references {
            if !committed.contains(r) && !failures.iter().any(|f| &f.reference == r) {
                failures.push(Failure {
                    reference: r.clone(),
                    reason: 0,
                });
            }
        }
        let verdict = if failures.is_empty() {
            Verdict::Committed
        } else {
            Verdict::NotCommitted(failures)
        };
        // The channel may have stopped waiting meanwhile: nothing to tell then.
        let _ = waiting.answer.send(verdict);
        Taken::Answered
    }
}

/// Takes an N-EVENT-REPORT `rq` of Storage Commitment with event information `data`
/// (transfer syntax `ts`) from `calling_ae`, wherever it came (an association the archive
/// opened, or the one that asked): checks the SOP instance and event type, reads the
/// report and hands it to `registry`, which counts it by outcome. `Ok` is answered
/// Success; a refusal carries the status to answer.
pub fn take_report(
    registry: &Commitments,
    calling_ae: &str,
    rq: &Command,
    ts: &str,
    data: &[u8],
) -> Result<(Taken, Report), Refused> {
    let taken = read_report(registry, calling_ae, rq, ts, data);
    if let Some(metrics) = &registry.metrics {
        metrics.commitment_report(match &taken {
            Ok((Taken::Answered, _)) => CommitmentOutcome::Answered,
            Ok(_) => CommitmentOutcome::Ignored,
            Err(_) => CommitmentOutcome::Refused,
        });
    }
    taken
}

fn read_report(
    registry: &Commitments,
    calling_ae: &str,
    rq: &Command,
    ts: &str,
    data: &[u8],
) -> Result<(Taken, Report), Refused> {
    let instance = rq.affected_sop_instance_uid.as_deref().unwrap_or_default();
    if instance.trim_end_matches(['\0', ' ']) != uids::STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE {
        return Err(Refused::new(
            Cause::CommitmentInstanceUnknown,
            "not the Storage Commitment SOP instance",
        ));
    }
    if !matches!(
        rq.event_type_id,
        Some(EVENT_SUCCESSFUL | EVENT_FAILURES_EXIST)
    ) {
        return Err(Refused::new(
            Cause::CommitmentEventUnknown,
            format!("event type {:?} is not 1 or 2", rq.event_type_id),
        ));
    }
    let report = crate::dimse::commitment::parse_report(data, ts)
        .map_err(|e| Refused::new(Cause::CommitmentReportRefused, e.to_string()))?;
    match registry.report(calling_ae, &report) {
        Taken::WrongPeer { expected } => Err(Refused::new(
            Cause::CommitmentReportRefused,
            format!("the transaction was sent to {expected:?}, not to the caller"),
        )),
        taken => Ok((taken, report)),
    }
}

/// A Transaction UID: `2.25.` and 128 random bits as a decimal number (PS3.5 B.2).
fn new_transaction_uid() -> Result<String, CommitmentsError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| CommitmentsError::Random)?;
    Ok(format!("2.25.{}", u128::from_be_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(i: u32) -> Reference {
        Reference {
            sop_class: crate::dimse::uids::COMPREHENSIVE_SR.into(),
            sop_instance: format!("2.25.{i}"),
        }
    }

    fn report(uid: &str, committed: &[Reference], failed: &[(Reference, u16)]) -> Report {
        Report {
            transaction_uid: uid.into(),
            committed: committed.to_vec(),
            failed: failed
                .iter()
                .map(|(reference, reason)| Failure {
                    reference: reference.clone(),
                    reason: *reason,
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn a_full_report_from_the_archive_commits_the_transaction() {
        let registry = Commitments::new();
        let mut waiting = registry.register("PACS", &[r(1), r(2)]).unwrap();
        let uid = waiting.transaction_uid().to_string();
        assert!(uid.starts_with("2.25.") && uid.len() <= 64, "{uid}");
        assert_eq!(
            registry.report("PACS", &report(&uid, &[r(2), r(1), r(9)], &[])),
            Taken::Answered
        );
        assert_eq!(waiting.verdict().await, Some(Verdict::Committed));
        // Answered once: the same report again finds nothing waiting.
        assert_eq!(
            registry.report("PACS", &report(&uid, &[r(1), r(2)], &[])),
            Taken::Unknown
        );
    }

    #[tokio::test]
    async fn failed_and_unnamed_objects_are_not_committed() {
        let registry = Commitments::new();
        let mut waiting = registry.register("PACS", &[r(1), r(2), r(3)]).unwrap();
        let uid = waiting.transaction_uid().to_string();
        registry.report("PACS", &report(&uid, &[r(1)], &[(r(2), 0x0112)]));
        let Some(Verdict::NotCommitted(failures)) = waiting.verdict().await else {
            panic!("expected failures");
        };
        let mut got: Vec<(String, u16)> = failures
            .iter()
            .map(|f| (f.reference.sop_instance.clone(), f.reason))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![("2.25.2".to_string(), 0x0112), ("2.25.3".to_string(), 0)]
        );
        let text = Verdict::describe(&failures);
        assert!(text.contains("2 object(s)") && text.contains("no such object instance"));
    }

    #[tokio::test]
    async fn only_the_archive_asked_may_answer_and_only_while_asked() {
        let registry = Commitments::new();
        let mut waiting = registry.register("PACS", &[r(1)]).unwrap();
        let uid = waiting.transaction_uid().to_string();
        assert_eq!(
            registry.report("MODALITY", &report(&uid, &[r(1)], &[])),
            Taken::WrongPeer {
                expected: "PACS".into()
            }
        );
        assert_eq!(
            registry.report("PACS", &report("2.25.1", &[r(1)], &[])),
            Taken::Unknown
        );
        // Still waiting for the archive's own report.
        assert_eq!(
            registry.report("PACS", &report(&uid, &[r(1)], &[])),
            Taken::Answered
        );
        assert_eq!(waiting.verdict().await, Some(Verdict::Committed));
        let dropped = registry.register("PACS", &[r(1)]).unwrap();
        let uid = dropped.transaction_uid().to_string();
        drop(dropped);
        assert_eq!(
            registry.report("PACS", &report(&uid, &[r(1)], &[])),
            Taken::Unknown
        );
    }

    #[test]
    fn transactions_are_bounded_and_unique() {
        let registry = Commitments::new();
        let held: Vec<Waiting> = (0..MAX_PENDING)
            .map(|_| registry.register("PACS", &[r(1)]).unwrap())
            .collect();
        let uids: HashSet<&str> = held.iter().map(|w| w.transaction_uid()).collect();
        assert_eq!(uids.len(), MAX_PENDING);
        assert_eq!(
            registry.register("PACS", &[r(1)]).err(),
            Some(CommitmentsError::Full)
        );
    }
}
