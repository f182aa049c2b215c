//! The PACS push channel: C-STORE SCU of stored result objects (SR, PM, SC) to one
//! `[[pacs.destinations]]` entry with `push = true`. The objects are read from the store at
//! send time and sent as stored, over one association per entry.
//!
//! With `storage_commitment = true` the same association then asks the PACS to commit to
//! keeping them (N-ACTION) and stays open while it waits, and the entry is delivered only
//! when the PACS's report ([`super::commitment`]), on an association of its own or on this
//! one, names every object committed: one it did not commit to is a
//! refusal (sent again, then dead-lettered with the PACS's reason), no report within
//! `commitment_timeout_s` a failed attempt (sent again).

use super::commitment::{Commitments, Verdict};
use super::{Channel, Delivery, Refusal};
use crate::config::PacsDestination;
use crate::dimse::commitment::Reference;
use crate::scu::{self, CommitmentRequestError, Target};
use crate::store::outbox::{Entry, Payload};
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// Pushes result objects to one PACS.
pub struct PacsChannel {
    store: Arc<Store>,
    target: Target,
    calling_ae: String,
    /// Storage Commitment: the registry the SCP hands reports to, and how long to wait.
    commitment: Option<(Arc<Commitments>, Duration)>,
}

impl PacsChannel {
    /// A channel to `dest`, calling as `calling_ae` (our AE title); `commitments` receives
    /// the PACS's Storage Commitment reports when `dest` asks for them.
    pub fn new(
        store: Arc<Store>,
        dest: &PacsDestination,
        calling_ae: &str,
        commitments: &Arc<Commitments>,
    ) -> PacsChannel {
        PacsChannel {
            store,
            target: Target::of(dest),
            calling_ae: calling_ae.to_string(),
            commitment: dest.storage_commitment.then(|| {
                (
                    commitments.clone(),
                    Duration::from_secs(dest.commitment_timeout_s),
                )
            }),
        }
    }

    /// Sends `files`, then asks the PACS to commit to keeping them and waits for its
    /// report (at most `timeout`).
    async fn send_committed(
        &self,
        files: Vec<scu::Prepared>,
        registry: &Arc<Commitments>,
        timeout: Duration,
    ) -> Delivery {
        let references: Vec<Reference> = files
            .iter()
            .map(|f| Reference {
                sop_class: f.sop_class.clone(),
                sop_instance: f.sop_instance.clone(),
            })
            .collect();
        // Registered before the N-ACTION goes out: the report may come at once.
        let mut waiting = match registry.register(&self.target.ae_title, &references) {
            Ok(w) => w,
            Err(e) => return Delivery::Failed(e.to_string()),
        };
        let (results, open) = scu::send_files_on(
            &self.target,
            &self.calling_ae,
            files,
            &[scu::commitment_context()],
        )
        .await;
        let stored = outcome(&results);
        let mut assoc = match open {
            Some(assoc) if stored == Delivery::Acked => assoc,
            Some(assoc) => {
                // An object refused: nothing to ask about; the association is still sound.
                assoc.release().await;
                return stored;
            }
            None => return stored,
        };
        let asked = assoc
            .request_commitment(waiting.transaction_uid(), &references)
            .await;
        match asked {
            // Success (or a warning: the classification of `Status::class`).
            Ok(status) if crate::dimse::status::Status(status).is_ok() => {}
            Ok(status) => {
                assoc.release().await;
                return Delivery::Rejected(Refusal::ours(format!(
                    "the PACS refused the Storage Commitment request (status {status:04X})"
                )));
            }
            Err(CommitmentRequestError::NotAccepted) => {
                assoc.release().await;
                return Delivery::Rejected(Refusal::ours(
                    "the PACS does not accept Storage Commitment Push Model from this AE \
                     title: allow it there, or set storage_commitment = false for this \
                     destination",
                ));
            }
            Err(CommitmentRequestError::Failed(e)) => {
                assoc.abort().await;
                return Delivery::Failed(format!(
                    "no answer to the Storage Commitment request ({e}): does the PACS \
                     accept it from this AE title?"
                ));
            }
        }
        // The report comes on an association the PACS opens (to the SCP), or on this one
        // while it stays open: both are heeded until the verdict or the time limit.
        let verdict = tokio::time::timeout(timeout, async {
            let mut open = Some(assoc);
            let verdict = loop {
                let Some(assoc) = open.as_mut() else {
                    break waiting.verdict().await;
                };
                tokio::select! {
                    v = waiting.verdict() => break v,
                    request = assoc.next_request() => {
                        if !self.answer_on_push(assoc, registry, request).await {
                            // Closed, aborted or broken: the SCP still takes the report.
                            if let Some(broken) = open.take() {
                                broken.abort().await;
                            }
                        }
                    }
                }
            };
            if let Some(assoc) = open {
                assoc.release().await;
            }
            verdict
        })
        .await;
        match verdict {
            Ok(Some(Verdict::Committed)) => Delivery::Acked,
            Ok(Some(Verdict::NotCommitted(failures))) => {
                Delivery::Rejected(Refusal::ours(Verdict::describe(&failures)))
            }
            Ok(None) | Err(_) => Delivery::Failed(format!(
                "no Storage Commitment report from the PACS within {} s; the objects are \
                 sent and asked about again",
                timeout.as_secs()
            )),
        }
    }
}

/// Maps the per-file results of one push to the outcome of the entry: every file stored
/// (Success or a warning) → acked; a failure status from the PACS → rejected; an instance
/// sent and the association ended without its answer → dropped; the PACS not reached →
/// failed (both retried).
pub fn outcome(results: &[scu::SendResult]) -> Delivery {
    let mut refused = Vec::new();
    for r in results {
        match &r.outcome {
            // Success and the warnings (one classification: `Status::class`).
            Ok(s) if crate::dimse::status::Status(*s).is_ok() => {}
            Ok(scu::SOP_CLASS_NOT_SUPPORTED) => refused.push(format!(
                "{}: the PACS does not accept this SOP class (status 0122, e.g. a Parametric \
                 Map): take it out of this destination's result_objects",
                r.path.display()
            )),
            Ok(s) => refused.push(format!("{}: status {s:04X}", r.path.display())),
            Err(scu::NotSent::Association(e)) if matches!(**e, scu::ScuError::Unanswered(_)) => {
                return Delivery::Dropped(e.to_string())
            }
            Err(e) => return Delivery::Failed(e.to_string()),
        }
    }
    if refused.is_empty() {
        Delivery::Acked
    } else {
        Delivery::Rejected(Refusal::ours(refused.join("; ")))
    }
}

impl PacsChannel {
    /// Answers a request the PACS sent on the push association while the push waits for
    /// its verdict: a Storage Commitment report on the Storage Commitment context is taken
    /// as the SCP takes one; any other request is "unrecognized operation"; a response
    /// (to nothing asked) ends the association. `false` once the association is of no
    /// more use.
    async fn answer_on_push(
        &self,
        assoc: &mut scu::StoreAssociation,
        registry: &Commitments,
        request: Result<(u8, String, crate::dimse::Command, Vec<u8>), scu::ScuError>,
    ) -> bool {
        let Ok((pc, ts, rq, data)) = request else {
            return false;
        };
        if rq.command_field.is_response() {
            log::warn!(
                "{:?} sent an unsolicited {} on the push association; ending it",
                self.target.ae_title,
                rq.command_field
            );
            return false;
        }
        let on_commitment_context = assoc.accepted().iter().any(|(id, class, _)| {
            *id == pc && class == crate::dimse::uids::STORAGE_COMMITMENT_PUSH_MODEL
        });
        let rsp = if rq.command_field == crate::dimse::CommandField::NEventReportRq
            && on_commitment_context
        {
            match super::commitment::take_report(registry, &self.target.ae_title, &rq, &ts, &data) {
                Ok((_, report)) => {
                    log::info!(
                        "Storage Commitment report from {:?} on the push association: {} \
                         committed, {} not",
                        self.target.ae_title,
                        report.committed.len(),
                        report.failed.len()
                    );
                    crate::dimse::Command::event_report_rsp(
                        &rq,
                        crate::dimse::status::Status::SUCCESS,
                    )
                }
                Err(refused) => {
                    log::warn!(
                        "Storage Commitment report from {:?} on the push association \
                         refused: {}",
                        self.target.ae_title,
                        refused.comment
                    );
                    refused.response(&rq)
                }
            }
        } else {
            crate::dimse::refusal::unrecognized(&rq)
        };
        assoc.answer(pc, &rsp).await.is_ok()
    }
}

impl Channel for PacsChannel {
    async fn deliver(&mut self, entry: &Entry) -> Delivery {
        let Payload::Dicom { sop_instance_uids } = &entry.payload else {
            return Delivery::Rejected(Refusal::ours(format!(
                "entry {} is not a DICOM push",
                entry.id
            )));
        };
        let mut files = Vec::new();
        for uid in sop_instance_uids {
            let rec = match self.store.instance(uid) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Delivery::Rejected(Refusal::ours(format!("{uid} is not in the store")))
                }
                Err(e) => return Delivery::Failed(format!("store: {e}")),
            };
            match scu::prepare(&self.store.root().join(&rec.path)) {
                Ok(p) => files.push(p),
                Err(e) => return Delivery::Rejected(Refusal::ours(e.to_string())),
            }
        }
        match &self.commitment {
            Some((registry, timeout)) => self.send_committed(files, registry, *timeout).await,
            None => outcome(&scu::send_files(&self.target, &self.calling_ae, files).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn r(outcome: Result<u16, scu::NotSent>) -> scu::SendResult {
        scu::SendResult {
            path: PathBuf::from("x.dcm"),
            outcome,
            bytes: 0,
        }
    }

    #[test]
    fn statuses_map_to_acked_rejected_dropped_or_failed() {
        assert_eq!(outcome(&[r(Ok(0)), r(Ok(0xB000))]), Delivery::Acked);
        match outcome(&[r(Ok(scu::SOP_CLASS_NOT_SUPPORTED))]) {
            Delivery::Rejected(why) => {
                assert!(why.summary.contains("result_objects"), "{why:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            outcome(&[r(Ok(0)), r(Ok(0xA700))]),
            Delivery::Rejected(_)
        ));
        assert!(matches!(
            outcome(&[r(Err(scu::NotSent::Association(std::sync::Arc::new(
                scu::ScuError::Association {
                    target: "PACS@pacs:104".into(),
                    reason: "refused".into()
                }
            ))))]),
            Delivery::Failed(_)
        ));
        // Sent, and the association ended without the answer: dropped, not failed.
        assert!(matches!(
            outcome(&[r(Err(scu::NotSent::Association(std::sync::Arc::new(
                scu::ScuError::Unanswered("association aborted by peer".into())
            ))))]),
            Delivery::Dropped(_)
        ));
    }
}
