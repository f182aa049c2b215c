//! The C-FIND service: the identifier is matched against the index on a blocking thread
//! that streams each match as a pending response; C-CANCEL stops it between matches and
//! the final response then says Cancel. At most `dicom.max_find_matches` matches are
//! answered: one more stops the matching and the final response is A700 with an Error
//! Comment asking to narrow the query.

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

/// Runs one C-FIND to its final response; returns a line for the log.
pub async fn serve(op: Op) -> String {
    let Some(model) = op.model() else {
        return refuse(
            &op,
            Refused::new(Cause::NotQueryRetrieve, "not a C-FIND SOP class"),
        )
        .await;
    };
    let q = match identifier::decode_identifier(&op.identifier, &op.transfer_syntax)
        .and_then(|obj| query::parse(&obj, model))
    {
        Ok(q) => q,
        Err(e) => {
            op.audit(Action::Query, "-", format!("C-FIND refused: {e}"), true);
            return refuse(&op, e.into()).await;
        }
    };
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
    let description = q.describe();
    let audited = q.describe_with_values();
    let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>, QueryError>>(IN_FLIGHT);
    let store = op.ctx.store.clone();
    let ae = op.ctx.ae_title.clone();
    let ts = op.transfer_syntax.clone();
    let cancel = op.cancel.clone();
    let q2 = q.clone();
    let worker = tokio::task::spawn_blocking(move || {
        query::run(&store, &q2, &ae, &cancel, &mut |obj| {
            let encoded = identifier::encode_identifier(&obj, &ts);
            tx.blocking_send(encoded).is_ok()
        })
    });
    let mut sent = 0usize;
    let mut failure: Option<Refused> = None;
    let cap = op.ctx.max_find_matches;
    while let Some(item) = rx.recv().await {
        if op.cancelled() {
            break;
        }
        match item {
            Ok(_) if sent >= cap => {
                // Stops the matching thread at its next match; C-CANCEL is not involved.
                op.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
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
                    op.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                    return "connection lost while answering C-FIND".into();
                }
                sent += 1;
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
    let (status, outcome) = if let Some(refused) = &failure {
        (refused.status(), format!("failed: {}", refused.comment))
    } else if op.cancelled() {
        (Status::CANCEL, "cancelled".to_string())
    } else {
        (Status::SUCCESS, "completed".to_string())
    };
    let object = q
        .keys
        .iter()
        .find(|k| k.tag == dicom_dictionary_std::tags::STUDY_INSTANCE_UID && !k.raw.is_empty())
        .map(|k| k.raw.clone())
        .unwrap_or_else(|| "-".to_string());
    op.audit(
        Action::Query,
        &object,
        format!("C-FIND {audited}: {sent} match(es), {outcome}"),
        failure.is_some(),
    );
    let mut rsp = Command::find_rsp(&op.rq, status);
    if let Some(refused) = &failure {
        rsp = rsp.with_error_comment(&refused.comment);
    }
    if op
        .writer
        .lock()
        .await
        .command(op.pc_id, &rsp)
        .await
        .is_err()
    {
        return "connection lost while answering C-FIND".into();
    }
    format!("C-FIND {description}: {sent} match(es), {outcome}")
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
