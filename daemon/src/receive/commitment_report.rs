//! The N-EVENT-REPORT of Storage Commitment Push Model: a PACS's answer to a request the
//! result push made ([`crate::deliver::commitment`]), received on an association the PACS
//! opened (its calling AE holds the `commitment` permission: [`super::authorize`]).
//!
//! The report is read ([`crate::dimse::commitment::parse_report`]) and handed to the
//! waiting transaction; the answer is Success once it is taken, or for a transaction no
//! longer waited for (answered after its time limit: the objects are sent again anyway).

use super::Scp;
use crate::deliver::commitment::Taken;
use crate::dimse::command::Command;
use crate::dimse::commitment::{self, EVENT_FAILURES_EXIST, EVENT_SUCCESSFUL};
use crate::dimse::refusal::{Cause, Refused};
use crate::dimse::status::Status;
use crate::dimse::uids;
use crate::metrics::CommitmentOutcome;

/// Answers report `rq` with event information `data` (transfer syntax `ts`) from
/// `calling_ae`: the N-EVENT-REPORT-RSP to send.
/// Each report is counted by outcome (`duli_commitment_reports_total`).
pub fn answer(scp: &Scp, calling_ae: &str, rq: &Command, ts: &str, data: &[u8]) -> Command {
    match take(scp, calling_ae, rq, ts, data) {
        Ok(outcome) => {
            scp.metrics.commitment_report(outcome);
            Command::event_report_rsp(rq, Status::SUCCESS)
        }
        Err(refused) => {
            scp.metrics.commitment_report(CommitmentOutcome::Refused);
            log::warn!(
                "Storage Commitment report from {calling_ae:?} refused: {}",
                refused.comment
            );
            refused.response(rq)
        }
    }
}

fn take(
    scp: &Scp,
    calling_ae: &str,
    rq: &Command,
    ts: &str,
    data: &[u8],
) -> Result<CommitmentOutcome, Refused> {
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
    let report = commitment::parse_report(data, ts)
        .map_err(|e| Refused::new(Cause::CommitmentReportRefused, e.to_string()))?;
    match scp.commitments.report(calling_ae, &report) {
        Taken::Answered => {
            log::info!(
                "Storage Commitment report from {calling_ae:?}: {} committed, {} not",
                report.committed.len(),
                report.failed.len()
            );
            Ok(CommitmentOutcome::Answered)
        }
        Taken::Unknown => {
            log::info!(
                "Storage Commitment report from {calling_ae:?} for a transaction no longer \
                 waited for (its objects are sent and asked about again): ignored"
            );
            Ok(CommitmentOutcome::Ignored)
        }
        Taken::WrongPeer { expected } => Err(Refused::new(
            Cause::CommitmentReportRefused,
            format!("the transaction was sent to {expected:?}, not to the caller"),
        )),
    }
}
