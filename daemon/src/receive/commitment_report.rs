//! The N-EVENT-REPORT of Storage Commitment Push Model: a PACS's answer to a request the
//! result push made ([`crate::deliver::commitment`]), received on an association the PACS
//! opened (its calling AE holds the `commitment` permission: [`super::authorize`]).
//!
//! The report is taken by [`crate::deliver::commitment::take_report`] (the push takes one
//! sent on its own association the same way); the answer is Success once it is taken, or
//! for a transaction no longer waited for (answered after its time limit: the objects are
//! sent again anyway).

use super::Scp;
use crate::deliver::commitment::{take_report, Taken};
use crate::dimse::command::Command;
use crate::dimse::refusal::Refused;
use crate::dimse::status::Status;

/// Answers report `rq` with event information `data` (transfer syntax `ts`) from
/// `calling_ae`: the N-EVENT-REPORT-RSP to send.
pub fn answer(scp: &Scp, calling_ae: &str, rq: &Command, ts: &str, data: &[u8]) -> Command {
    match take(scp, calling_ae, rq, ts, data) {
        Ok(()) => Command::event_report_rsp(rq, Status::SUCCESS),
        Err(refused) => {
            log::warn!(
                "Storage Commitment report from {calling_ae:?} refused: {}",
                refused.comment
            );
            refused.response(rq)
        }
    }
}

fn take(scp: &Scp, calling_ae: &str, rq: &Command, ts: &str, data: &[u8]) -> Result<(), Refused> {
    let (taken, report) = take_report(&scp.commitments, calling_ae, rq, ts, data)?;
    if taken == Taken::Unknown {
        log::info!(
            "Storage Commitment report from {calling_ae:?} for a transaction no longer \
             waited for (its objects are sent and asked about again): ignored"
        );
        return Ok(());
    }
    log::info!(
        "Storage Commitment report from {calling_ae:?}: {} committed, {} not",
        report.committed.len(),
        report.failed.len()
    );
    Ok(())
}
