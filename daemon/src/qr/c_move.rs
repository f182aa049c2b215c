//! The C-MOVE service: resolves the identifier to instances, opens an association of its own
//! to a configured destination (`[[pacs.destinations]]` with `move = true`) and sends each
//! instance as a C-STORE sub-operation, in its stored transfer syntax or, when the
//! destination refuses that, decoded to explicit (or implicit) VR little endian. Pending
//! responses carry the sub-operation counts; C-CANCEL stops between sub-operations.

use super::payload::{self, FALLBACK_SYNTAXES};
use super::Op;
use super::{identifier, select};
use crate::audit::Action;
use crate::dimse::command::{Command, SubOperations};
use crate::dimse::refusal::{Cause, Refused};
use crate::dimse::status::{Status, StatusClass};
use crate::model::InstanceRecord;
use crate::scu::{StoreAssociation, Target};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Sub-operation bookkeeping shared by C-MOVE and C-GET.
#[derive(Debug, Default)]
pub struct Tally {
    /// Instances to send.
    pub total: usize,
    /// Sent with success.
    pub completed: usize,
    /// Failed.
    pub failed: usize,
    /// Sent with a warning status.
    pub warning: usize,
    /// SOP Instance UIDs that failed.
    pub failed_uids: Vec<String>,
}

fn sat(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl Tally {
    /// A tally for `total` sub-operations.
    pub fn new(total: usize) -> Tally {
        Tally {
            total,
            ..Default::default()
        }
    }

    /// Records one sub-operation's DIMSE status.
    pub fn record(&mut self, sop: &str, status: u16) {
        match Status(status).class() {
            StatusClass::Success => self.completed += 1,
            StatusClass::Warning => self.warning += 1,
            _ => self.fail(sop),
        }
    }

    /// Leaves one instance out of the retrieve (a result object the peer did not
    /// negotiate and never asked for by class): it is neither sent nor counted.
    pub fn skip(&mut self) {
        self.total = self.total.saturating_sub(1);
    }

    /// Records a failed sub-operation.
    pub fn fail(&mut self, sop: &str) {
        self.failed += 1;
        self.failed_uids.push(sop.to_string());
    }

    /// Marks every instance of `rest` failed: the sub-operations a retrieve that ended early
    /// will never attempt (so Completed + Failed + Warning adds up to the total, and each is
    /// in the Failed SOP Instance UID List).
    pub fn fail_rest(&mut self, rest: &[crate::model::InstanceRecord]) {
        for inst in rest {
            self.fail(&inst.sop_instance_uid);
        }
    }

    /// Counts every sub-operation not yet done as failed (a retrieve stopped with its
    /// association, whose remaining instances will never be sent).
    pub fn abandon(&mut self) {
        let done = self.completed + self.failed + self.warning;
        self.failed += self.total.saturating_sub(done);
    }

    /// The counts as a response carries them.
    pub fn counts(&self) -> SubOperations {
        let done = self.completed + self.failed + self.warning;
        SubOperations {
            remaining: sat(self.total.saturating_sub(done)),
            completed: sat(self.completed),
            failed: sat(self.failed),
            warning: sat(self.warning),
        }
    }

    /// The final status (PS3.4 C.4.2.1.5): Cancel, all failed (A702), some failed or with
    /// warnings (B000), or Success.
    pub fn final_status(&self, cancelled: bool) -> Status {
        if cancelled {
            Status::CANCEL
        } else if self.failed > 0 && self.completed == 0 && self.warning == 0 {
            Status::OUT_OF_RESOURCES_SUB_OPERATIONS
        } else if self.failed > 0 || self.warning > 0 {
            Status::SUB_OPERATIONS_COMPLETE_WITH_FAILURES
        } else {
            Status::SUCCESS
        }
    }

    /// The final response's identifier: Failed SOP Instance UID List, when any failed,
    /// and how many of the failed UIDs it lists: as many as fit one value of explicit VR
    /// (a 16-bit length, [`MAX_FAILED_LIST`] bytes) in every transfer syntax, the rest left
    /// out (said in the Error Comment) rather than the whole list lost.
    pub fn failed_identifier(&self, ts: &str) -> Option<(Vec<u8>, usize)> {
        if self.failed_uids.is_empty() {
            return None;
        }
        let mut listed = 0;
        let mut bytes = 0usize;
        for uid in &self.failed_uids {
            let more = uid.len() + usize::from(listed > 0);
            // Padded to an even length when sent.
            if (bytes + more + 1) & !1 > MAX_FAILED_LIST {
                break;
            }
            bytes += more;
            listed += 1;
        }
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::FAILED_SOP_INSTANCE_UID_LIST,
            VR::UI,
            PrimitiveValue::Strs(self.failed_uids[..listed].iter().cloned().collect()),
        ));
        match identifier::encode_identifier(&obj, ts) {
            Ok(encoded) => Some((encoded, listed)),
            Err(e) => {
                log::error!("the Failed SOP Instance UID List cannot be encoded: {e}");
                None
            }
        }
    }

    /// A summary for the log and the audit trail.
    pub fn summary(&self) -> String {
        format!(
            "{} completed, {} failed, {} warning of {}",
            self.completed, self.failed, self.warning, self.total
        )
    }
}

/// Most bytes of the Failed SOP Instance UID List: one value of a 16-bit length (explicit
/// VR), even.
pub const MAX_FAILED_LIST: usize = 65_534;

/// Sends the final response of a C-MOVE or C-GET (with the failed list when any).
pub async fn send_final(op: &Op, status: Status, tally: &Tally, comment: Option<&str>) -> bool {
    let failed = tally.failed_identifier(&op.transfer_syntax);
    let mut rsp = match op.rq.command_field {
        crate::dimse::CommandField::CGetRq => Command::get_rsp(&op.rq, status, tally.counts()),
        _ => Command::move_rsp(&op.rq, status, tally.counts()),
    };
    rsp.has_data_set = failed.is_some();
    let cut = failed
        .as_ref()
        .filter(|(_, listed)| *listed < tally.failed_uids.len())
        .map(|(_, listed)| {
            format!(
                "{listed} of {} failed SOP Instance UIDs listed",
                tally.failed_uids.len()
            )
        });
    if let Some(c) = comment.or(cut.as_deref()) {
        rsp = rsp.with_error_comment(c);
    }
    op.writer
        .lock()
        .await
        .message(
            op.pc_id,
            &rsp,
            failed.as_ref().map(|(bytes, _)| bytes.as_slice()),
        )
        .await
        .is_ok()
}

/// Ends a retrieve (C-MOVE or C-GET): works out the final status (Cancel when stopped
/// with sub-operations left), records the export in the audit trail, sends the final
/// response and returns the log line, which starts with `what`.
pub async fn finish(op: &Op, tally: &Tally, object: &str, what: &str) -> String {
    let cancelled = op.cancelled_by_peer() && tally.counts().remaining > 0;
    let status = tally.final_status(cancelled);
    let outcome = format!(
        "{what}: {}{}",
        tally.summary(),
        if cancelled { ", cancelled" } else { "" }
    );
    op.audit(
        Action::Transfer,
        object,
        outcome.clone(),
        status.class() == StatusClass::Failure,
    );
    send_final(op, status, tally, None).await;
    outcome
}

/// A retrieve whose sub-operations have started: the request, its tally, and the export
/// record owed for it. Instances may already have left the box, so the export is recorded
/// however the retrieve ends: by [`Export::finish`], by [`Export::ended_early`] when the
/// requester's connection is lost, and otherwise when this is dropped (the association
/// ended and stopped the task mid-way) — the last two with the tally so far, marked as
/// ended early.
pub struct Export {
    /// The request being served.
    pub op: Op,
    /// The sub-operation counts so far.
    pub tally: Tally,
    object: String,
    what: String,
    recorded: bool,
}

impl Export {
    /// The export of `tally`'s instances (attributed to `object`, the studies) by `op`;
    /// `what` starts its audit detail and log line.
    pub fn new(op: Op, tally: Tally, object: String, what: String) -> Export {
        Export {
            op,
            tally,
            object,
            what,
            recorded: false,
        }
    }

    /// Ends the retrieve normally ([`finish`]): audit record, final response, log line.
    pub async fn finish(mut self) -> String {
        if self.op.cancelled() && !self.op.cancelled_by_peer() {
            // Its association is ending: no final response can go, and the export is
            // recorded as cut off, not as cancelled by a peer that did not ask.
            return self.ended_early("stopped with its association");
        }
        self.recorded = true;
        finish(&self.op, &self.tally, &self.object, &self.what).await
    }

    /// Ends the retrieve before its final response because `why`: records the tally so
    /// far as an export ended early and returns the log line.
    pub fn ended_early(mut self, why: &str) -> String {
        self.record_early(why);
        format!("{}: {why}", self.what)
    }

    /// Ends the retrieve after a failure its caller answered: records `detail` as a
    /// failed export.
    pub fn failed(mut self, detail: String) {
        self.recorded = true;
        self.op.audit(Action::Transfer, &self.object, detail, true);
    }

    fn record_early(&mut self, why: &str) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        self.tally.abandon();
        self.op.audit(
            Action::Transfer,
            &self.object,
            format!(
                "{}: ended early ({why}): {}",
                self.what,
                self.tally.summary()
            ),
            true,
        );
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        self.record_early("stopped with its association");
    }
}

/// Ends a retrieve refused before (or when) its sub-operations start: sends `refused` as
/// the final response with the counts of `tally`, records it in the audit trail when
/// `audit` (attributed to `object`) and returns the log line, which starts with `what`.
pub async fn refuse(
    op: &Op,
    refused: Refused,
    tally: &Tally,
    object: &str,
    what: &str,
    audit: bool,
) -> String {
    let line = format!("{what} refused ({refused})");
    if audit {
        let summary = if tally.total > 0 {
            format!("; {}", tally.summary())
        } else {
            String::new()
        };
        op.audit(Action::Transfer, object, format!("{line}{summary}"), true);
    }
    send_final(op, refused.status(), tally, Some(&refused.comment)).await;
    line
}

/// Sends a pending response with the current counts.
pub async fn send_pending(op: &Op, tally: &Tally) -> bool {
    let rsp = match op.rq.command_field {
        crate::dimse::CommandField::CGetRq => {
            Command::get_rsp(&op.rq, Status::PENDING, tally.counts())
        }
        _ => Command::move_rsp(&op.rq, Status::PENDING, tally.counts()),
    };
    op.writer.lock().await.command(op.pc_id, &rsp).await.is_ok()
}

/// A retrieve refused before its sub-operations: the final response is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}")]
pub struct Answered {
    /// The operation's line for the log (see [`refuse`]).
    pub line: String,
}

/// Decodes the identifier and resolves the instances to retrieve; on failure sends the
/// final response and says so with the log line.
pub async fn resolve(op: &Op, what: &str) -> Result<Vec<InstanceRecord>, Answered> {
    let Some(model) = op.model() else {
        let refused = Refused::new(Cause::NotQueryRetrieve, "not a Q/R SOP class");
        let line = refuse(op, refused, &Tally::default(), "-", what, false).await;
        return Err(Answered { line });
    };
    let obj = match identifier::decode_identifier(&op.identifier, &op.transfer_syntax) {
        Ok(o) => o,
        Err(e) => {
            let line = refuse(op, e.into(), &Tally::default(), "-", what, true).await;
            return Err(Answered { line });
        }
    };
    let store = op.ctx.store.clone();
    let selected = tokio::task::spawn_blocking(move || select::select(&store, &obj, model)).await;
    let refused = match selected {
        Ok(Ok((_, instances))) => return Ok(instances),
        Ok(Err(e)) => e.into(),
        Err(e) => Refused::new(Cause::IndexFailed, format!("query task failed: {e}")),
    };
    let line = refuse(op, refused, &Tally::default(), "-", what, true).await;
    Err(Answered { line })
}

/// Whether a retrieve leaves `inst` out instead of failing it when the peer accepted none
/// of `offered` transfer syntaxes for it: a Parametric Map this appliance made (many
/// PACS and viewers do not take the class; it travels beside the SR and SC, which carry
/// the same result).
pub fn skippable(inst: &InstanceRecord, offered: &[String]) -> bool {
    offered.is_empty() && inst.sop_class_uid == crate::results::parametric_map::PARAMETRIC_MAP
}

/// Most presentation contexts one association may propose (odd context IDs 1–255).
pub const MAX_CONTEXTS: usize = 128;

/// The presentation contexts to propose for `instances`: each SOP class with its stored
/// syntax, plus one with the uncompressed fallbacks for classes stored otherwise. When
/// that makes more than [`MAX_CONTEXTS`] (a study of many classes stored in many
/// syntaxes), one context per class offers all of its syntaxes and the fallbacks, the
/// destination choosing one; classes beyond [`MAX_CONTEXTS`] get none (their instances
/// fail) rather than the whole retrieve.
pub fn contexts_for(instances: &[InstanceRecord]) -> Vec<(String, Vec<String>)> {
    let out = one_per_syntax(instances);
    if out.len() <= MAX_CONTEXTS {
        return out;
    }
    let mut per_class: Vec<(String, Vec<String>)> = Vec::new();
    for (class, syntaxes) in out {
        if let Some((_, all)) = per_class.iter_mut().find(|(c, _)| *c == class) {
            for ts in syntaxes {
                if !all.contains(&ts) {
                    all.push(ts);
                }
            }
        } else if per_class.len() < MAX_CONTEXTS {
            per_class.push((class, syntaxes));
        }
    }
    for (_, all) in per_class.iter_mut() {
        // The uncompressed fallbacks last: the stored syntaxes are preferred.
        all.sort_by_key(|ts| FALLBACK_SYNTAXES.contains(&ts.as_str()));
    }
    per_class
}

/// One context per SOP class and stored syntax, and one with the fallbacks.
fn one_per_syntax(instances: &[InstanceRecord]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for i in instances {
        let stored = (i.sop_class_uid.clone(), vec![i.transfer_syntax.clone()]);
        if !out.contains(&stored) {
            out.push(stored);
        }
        if i.transfer_syntax != FALLBACK_SYNTAXES[0] {
            let fallback = (
                i.sop_class_uid.clone(),
                FALLBACK_SYNTAXES.iter().map(|s| s.to_string()).collect(),
            );
            if !out.contains(&fallback) {
                out.push(fallback);
            }
        }
    }
    out
}

/// The presentation context (id, transfer syntax) to send `inst` on, chosen among
/// `contexts` (those of its SOP class that the storing peer accepted); `None` when none is
/// usable, with the instance counted as skipped (a Parametric Map the peer did not
/// negotiate) or failed. `what` names the retrieve in the log (`C-MOVE to X`, `C-GET`).
pub fn context_for(
    contexts: &[(u8, String)],
    inst: &InstanceRecord,
    what: &str,
    tally: &mut Tally,
) -> Option<(u8, String)> {
    let offered: Vec<String> = contexts.iter().map(|(_, ts)| ts.clone()).collect();
    let Some(ts) = payload::choose(inst, &offered) else {
        if skippable(inst, &offered) {
            log::info!(
                "{what}: {} skipped, {} not negotiated",
                inst.sop_instance_uid,
                inst.sop_class_uid
            );
            tally.skip();
        } else {
            log::warn!(
                "{what}: {} ({}): no storage context accepted in a usable transfer syntax",
                inst.sop_instance_uid,
                inst.sop_class_uid
            );
            tally.fail(&inst.sop_instance_uid);
        }
        return None;
    };
    let Some(pc) = contexts.iter().find(|(_, t)| *t == ts).map(|(id, _)| *id) else {
        tally.fail(&inst.sop_instance_uid);
        return None;
    };
    Some((pc, ts))
}

/// Runs one C-MOVE to its final response; returns a line for the log.
pub async fn serve(op: Op) -> String {
    let dest_ae = op.rq.move_destination.clone().unwrap_or_default();
    let destination = op
        .ctx
        .move_destinations
        .iter()
        .find(|d| d.move_ && d.ae_title == dest_ae)
        .cloned();
    let Some(dest) = destination else {
        let refused = Refused::new(
            Cause::MoveDestinationUnknown,
            format!("move destination {dest_ae:?} unknown"),
        );
        return refuse(&op, refused, &Tally::default(), "-", "C-MOVE", true).await;
    };
    let instances = match resolve(&op, "C-MOVE").await {
        Ok(i) => i,
        Err(answered) => return answered.line,
    };
    let object = super::audit_object(&instances);
    let mut tally = Tally::new(instances.len());
    if instances.is_empty() {
        send_final(&op, Status::SUCCESS, &tally, None).await;
        op.audit(
            Action::Transfer,
            &object,
            format!("C-MOVE to {dest_ae}: nothing matched"),
            false,
        );
        return format!("C-MOVE to {dest_ae}: nothing matched");
    }
    let target = Target::of(&dest);
    let calling = op.ctx.ae_title.clone();
    let mut assoc = match StoreAssociation::open(&target, &calling, &contexts_for(&instances)).await
    {
        Ok(a) => a,
        Err(e) => {
            for i in &instances {
                tally.fail(&i.sop_instance_uid);
            }
            let what = format!("C-MOVE to {dest_ae}");
            return refuse(&op, e.into(), &tally, &object, &what, true).await;
        }
    };
    let root = op.ctx.store.root().to_path_buf();
    let originator = op.accepted.calling_ae.clone();
    let message_id = op.message_id.unwrap_or(0);
    let mut export = Export::new(op, tally, object, format!("C-MOVE to {dest_ae}"));
    let mut broken: Option<String> = None;
    for inst in &instances {
        let (op, tally) = (&export.op, &mut export.tally);
        if op.cancelled() {
            break;
        }
        if broken.is_some() {
            tally.fail(&inst.sop_instance_uid);
            continue;
        }
        let contexts: Vec<(u8, String)> = assoc
            .accepted()
            .iter()
            .filter(|(_, class, _)| *class == inst.sop_class_uid)
            .map(|(id, _, ts)| (*id, ts.clone()))
            .collect();
        let Some((pc, ts)) = context_for(&contexts, inst, &export.what, tally) else {
            continue;
        };
        let payload = match payload::load_async(&root, inst, &ts, op.ctx.re_encoding).await {
            Ok(p) => p,
            Err(e) => {
                log::warn!("C-MOVE to {dest_ae}: {}: {e}", inst.sop_instance_uid);
                tally.fail(&inst.sop_instance_uid);
                continue;
            }
        };
        match assoc
            .store(
                pc,
                &inst.sop_class_uid,
                &inst.sop_instance_uid,
                payload.data_set(),
                Some((&originator, message_id)),
            )
            .await
        {
            Ok(status) => tally.record(&inst.sop_instance_uid, status),
            Err(e) => {
                log::warn!("C-MOVE to {dest_ae}: association broke: {e}");
                tally.fail(&inst.sop_instance_uid);
                broken = Some(e.to_string());
            }
        }
        if tally.counts().remaining > 0 && !send_pending(op, tally).await {
            op.cancel.stop();
            assoc.abort().await;
            return export.ended_early("connection lost while answering C-MOVE");
        }
    }
    if broken.is_some() {
        assoc.abort().await;
    } else {
        assoc.release().await;
    }
    export.finish().await
}

#[cfg(test)]
mod skip_tests {
    use super::*;

    /// A study of many classes stored in many syntaxes is proposed in at most 128
    /// contexts: one per class with each of its syntaxes (stored first, the fallbacks
    /// last), so a retrieve of it is not refused whole by its own association request.
    #[test]
    fn many_classes_and_syntaxes_fit_one_association() {
        let syntaxes: Vec<String> = (0..13)
            .map(|t| format!("1.2.840.10008.1.2.4.{}", 50 + t))
            .collect();
        let mut instances = Vec::new();
        for c in 0..13 {
            for ts in &syntaxes {
                instances.push(InstanceRecord {
                    sop_instance_uid: format!("9.{c}.{}", instances.len()),
                    sop_class_uid: format!("1.2.840.10008.5.1.4.1.1.{c}"),
                    transfer_syntax: ts.clone(),
                    ..Default::default()
                });
            }
        }
        assert!(one_per_syntax(&instances).len() > MAX_CONTEXTS);
        let proposed = contexts_for(&instances);
        assert_eq!(proposed.len(), 13);
        for (_, offered) in &proposed {
            assert_eq!(offered.len(), 13 + FALLBACK_SYNTAXES.len());
            assert_eq!(&offered[..13], &syntaxes[..]);
            assert!(FALLBACK_SYNTAXES
                .iter()
                .all(|f| offered[13..].contains(&f.to_string())));
        }
        // A few classes stay one context per syntax, as before.
        assert_eq!(contexts_for(&instances[..2]).len(), 3);
    }

    /// A Failed SOP Instance UID List longer than one explicit-VR value holds is cut to
    /// the UIDs that fit (it was dropped whole, the final response sent without it); a
    /// short one is sent whole, in either VR encoding.
    #[test]
    fn the_failed_list_holds_what_fits_one_value() {
        let mut tally = Tally::new(1200);
        for i in 0..1200 {
            tally.fail(&format!("1.2.826.0.1.3680043.8.498.{i:0>38}"));
        }
        for ts in [
            crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN,
            crate::dimse::uids::IMPLICIT_VR_LITTLE_ENDIAN,
        ] {
            let (bytes, listed) = tally.failed_identifier(ts).expect("a list");
            assert!(listed > 900 && listed < 1200, "{listed}");
            let obj = identifier::decode_identifier(&bytes, ts).unwrap();
            let uids = obj
                .element(tags::FAILED_SOP_INSTANCE_UID_LIST)
                .unwrap()
                .to_multi_str()
                .unwrap()
                .len();
            assert_eq!(uids, listed);
        }
        let mut few = Tally::new(3);
        few.fail("1.2.3");
        few.fail("1.2.4");
        let (_, listed) = few
            .failed_identifier(crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .unwrap();
        assert_eq!(listed, 2);
        assert!(Tally::new(1)
            .failed_identifier(crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .is_none());
    }

    /// A Parametric Map the peer did not negotiate is left out of the counts; any other
    /// class it did not negotiate is a failed sub-operation.
    #[test]
    fn an_unnegotiated_parametric_map_is_skipped_not_failed() {
        let pm = InstanceRecord {
            sop_instance_uid: "1.2.3.1".into(),
            sop_class_uid: crate::results::parametric_map::PARAMETRIC_MAP.into(),
            ..Default::default()
        };
        let dx = InstanceRecord {
            sop_instance_uid: "1.2.3.2".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1.1".into(),
            ..Default::default()
        };
        assert!(skippable(&pm, &[]));
        assert!(!skippable(&pm, &["1.2.840.10008.1.2.1".to_string()]));
        assert!(!skippable(&dx, &[]));
        let mut t = Tally::new(3);
        t.skip();
        t.record("1.2.3.3", 0);
        t.fail(&dx.sop_instance_uid);
        let c = t.counts();
        assert_eq!((c.remaining, c.completed, c.failed), (0, 1, 1));
        assert_eq!(t.total, 2);
    }
}
