//! The C-GET service: the instances go back on the requesting association as C-STORE
//! sub-operations, on the storage contexts for which the peer took the SCP role (SCP/SCU
//! role selection, PS3.7 D.3.3.4), in the stored transfer syntax or an uncompressed one the
//! peer accepted. The association loop hands the peer's C-STORE responses to this task.

use super::c_move::{resolve, send_final, send_pending, Export, Tally};
use super::payload;
use super::Op;
use crate::dimse::command::{Command, CommandField, Priority};
use std::time::Duration;

/// How long a sub-operation's C-STORE response may take (one deadline per sub-operation,
/// however many responses to other requests come meanwhile).
const STORE_RSP_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one C-GET to its final response; returns a line for the log.
pub async fn serve(op: Op) -> String {
    let instances = match resolve(&op, "C-GET").await {
        Ok(i) => i,
        Err(answered) => return answered.line,
    };
    let object = super::audit_object(&instances);
    let tally = Tally::new(instances.len());
    let root = op.ctx.store.root().to_path_buf();
    let what = format!("C-GET by {}", op.accepted.calling_ae);
    let mut export = Export::new(op, tally, object, what);
    for (at, inst) in instances.iter().enumerate() {
        let (op, tally) = (&mut export.op, &mut export.tally);
        // The instances after this one, failed together if the retrieve ends early.
        let rest = instances.get(at + 1..).unwrap_or_default();
        if op.cancelled() {
            break;
        }
        let class = &inst.sop_class_uid;
        let contexts: Vec<(u8, String)> = if op.accepted.peer_scp_classes.contains(class) {
            op.accepted
                .contexts
                .iter()
                .filter(|c| c.abstract_syntax == *class)
                .map(|c| (c.id, c.transfer_syntax.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let Some((pc, ts)) = super::c_move::context_for(&contexts, inst, "C-GET", tally) else {
            continue;
        };
        // Streamed from the file one PDU at a time: a retrieve of any size holds one
        // PDU-sized buffer, never a whole instance (unless it had to be transcoded).
        let payload = match payload::load_async(&root, inst, &ts, op.ctx.re_encoding).await {
            Ok(p) => p,
            Err(e) => {
                log::warn!("C-GET: {}: {e}", inst.sop_instance_uid);
                tally.fail(&inst.sop_instance_uid);
                continue;
            }
        };
        let message_id = op.next_sub_operation_id();
        let rq = Command::store_rq(message_id, class, &inst.sop_instance_uid, Priority::Medium);
        if op
            .writer
            .lock()
            .await
            .store(pc, &rq, payload.data_set())
            .await
            .is_err()
        {
            tally.fail(&inst.sop_instance_uid);
            tally.fail_rest(rest);
            return export.ended_early("connection lost during C-GET");
        }
        let deadline = tokio::time::Instant::now() + STORE_RSP_TIMEOUT;
        let rsp = loop {
            match tokio::time::timeout_at(deadline, op.store_rsps.recv()).await {
                Ok(Some(r)) if r.command_field == CommandField::CStoreRsp => {
                    // The response to this sub-operation: its Message ID, and the instance
                    // when the response names one (it is optional in a C-STORE-RSP).
                    let same_instance = r
                        .affected_sop_instance_uid
                        .as_deref()
                        .is_none_or(|uid| uid.trim_end_matches('\0') == inst.sop_instance_uid);
                    if r.message_id_being_responded_to == Some(message_id) && same_instance {
                        break Some(r);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break None,
            }
        };
        let Some(rsp) = rsp else {
            tally.fail(&inst.sop_instance_uid);
            tally.fail_rest(rest);
            let line = format!(
                "C-GET: no C-STORE response for {} within {STORE_RSP_TIMEOUT:?}",
                inst.sop_instance_uid
            );
            let detail = format!("{line}; {}", tally.summary());
            send_final(
                op,
                tally.final_status(false),
                tally,
                Some("no C-STORE response"),
            )
            .await;
            export.failed(detail);
            return line;
        };
        tally.record(
            &inst.sop_instance_uid,
            rsp.status.map(|s| s.0).unwrap_or(0xC000),
        );
        if tally.counts().remaining > 0 && !send_pending(op, tally).await {
            tally.fail_rest(rest);
            return export.ended_early("connection lost while answering C-GET");
        }
    }
    export.finish().await
}
