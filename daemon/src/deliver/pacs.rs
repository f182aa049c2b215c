//! The PACS push channel: C-STORE SCU of stored result objects (SR, SC) to one
//! `[[pacs.destinations]]` entry with `push = true`. The objects are read from the store at
//! send time and sent as stored, over one association per entry.

use super::{Channel, Delivery, Refusal};
use crate::config::PacsDestination;
use crate::scu::{self, Target};
use crate::store::outbox::{Entry, Payload};
use crate::store::Store;
use std::sync::Arc;

/// Pushes result objects to one PACS.
pub struct PacsChannel {
    store: Arc<Store>,
    target: Target,
    calling_ae: String,
}

impl PacsChannel {
    /// A channel to `dest`, calling as `calling_ae` (our AE title).
    pub fn new(store: Arc<Store>, dest: &PacsDestination, calling_ae: &str) -> PacsChannel {
        PacsChannel {
            store,
            target: Target::of(dest),
            calling_ae: calling_ae.to_string(),
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
        let results = scu::send_files(&self.target, &self.calling_ae, files).await;
        outcome(&results)
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
