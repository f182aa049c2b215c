//! One association's life after A-ASSOCIATE-AC: reads PDUs (idle timeout), reassembles
//! DIMSE messages from P-DATA fragments, dispatches them to the services, answers, and ends
//! on A-RELEASE, A-ABORT, a protocol violation or shutdown.
//!
//! Every request is checked by [`super::authorize`] before it runs; a refused one is
//! answered with its failure status (after its data set, which is read and dropped), logged
//! and audited.
//!
//! The socket is split: this loop owns the reading half, and every response goes through a
//! shared [`Writer`]. A C-FIND, C-MOVE or C-GET runs as a task of its own (see
//! [`crate::qr`]) while the loop keeps reading, so that a C-CANCEL stops it and the C-STORE
//! responses of C-GET sub-operations reach it.

use super::authorize::{self, Refusal};
use super::echo;
use super::server::{abort_pdu, pdu_name, Stream};
use super::store::Incoming;
use super::Scp;
use crate::dimse::assembler::{Assembler, Event};
use crate::dimse::command::{Command, CommandField};
use crate::dimse::refusal::{unrecognized, Cause, Refused};
use crate::dimse::status::Status;
use crate::qr::{Op, Operation};
use crate::ul::framing::{self, FramingError, PduReader};
use crate::ul::negotiate::Accepted;
use dicom_ul::pdu::{PDataValueType, Pdu};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::WriteHalf;
use tokio::sync::{mpsc, watch};

/// The message currently being received.
enum Current {
    /// Between messages.
    Idle,
    /// A C-STORE whose data set is arriving.
    Store {
        rq: Box<Command>,
        incoming: Box<Incoming>,
    },
    /// The identifier of a C-FIND, C-MOVE or C-GET is arriving.
    Request {
        rq: Box<Command>,
        identifier: Vec<u8>,
    },
    /// The data set of a refused request is arriving; it is dropped, then answered.
    Refused { rq: Box<Command>, refusal: Refusal },
}

/// Refused requests after which the association is aborted (each is logged and audited).
const MAX_REFUSALS: u32 = 8;

/// Largest identifier accepted for a C-FIND, C-MOVE or C-GET.
const MAX_IDENTIFIER: usize = 1 << 20;

/// A C-FIND, C-MOVE or C-GET in progress on this association.
struct Running {
    message_id: Option<u16>,
    cancel: Arc<AtomicBool>,
    store_rsp: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<String>,
}

/// The writing half of the association: every outgoing PDU goes through it, one whole
/// DIMSE message per lock so that messages never interleave.
pub struct Writer {
    half: WriteHalf<Box<dyn Stream>>,
    scratch: Vec<u8>,
    peer_max_pdu: u32,
    /// Message ID Being Responded To of the last final C-FIND/C-MOVE/C-GET response sent:
    /// once it is out, the peer may send its next request before the task has ended.
    answered: Option<u16>,
}

/// The writer shared by the association loop and the operation it runs.
pub type SharedWriter = Arc<tokio::sync::Mutex<Writer>>;

impl Writer {
    /// Sends one PDU.
    pub async fn pdu(&mut self, pdu: &Pdu) -> std::io::Result<()> {
        framing::write(&mut self.half, &mut self.scratch, pdu).await
    }

    /// Sends a command set on a presentation context.
    pub async fn command(&mut self, pc_id: u8, cmd: &Command) -> std::io::Result<()> {
        let final_qr = matches!(
            cmd.command_field,
            CommandField::CFindRsp | CommandField::CMoveRsp | CommandField::CGetRsp
        ) && !matches!(
            cmd.status,
            Some(Status::PENDING | Status::PENDING_WARNING) | None
        );
        if final_qr {
            self.answered = cmd.message_id_being_responded_to;
        }
        let bytes = crate::dimse::encode(cmd);
        for pdv in
            crate::dimse::fragments(pc_id, PDataValueType::Command, &bytes, self.peer_max_pdu)
        {
            self.pdu(&Pdu::PData { data: vec![pdv] }).await?;
        }
        Ok(())
    }

    /// Sends a data set on a presentation context, one fragment per PDU.
    pub async fn data_set(&mut self, pc_id: u8, bytes: &[u8]) -> std::io::Result<()> {
        for pdv in crate::dimse::fragments(pc_id, PDataValueType::Data, bytes, self.peer_max_pdu) {
            self.pdu(&Pdu::PData { data: vec![pdv] }).await?;
        }
        Ok(())
    }

    /// Sends a command and, when given, its data set.
    pub async fn message(
        &mut self,
        pc_id: u8,
        cmd: &Command,
        data: Option<&[u8]>,
    ) -> std::io::Result<()> {
        self.command(pc_id, cmd).await?;
        if let Some(d) = data {
            self.data_set(pc_id, d).await?;
        }
        Ok(())
    }
}

async fn abort(writer: &SharedWriter) {
    let _ = writer.lock().await.pdu(&abort_pdu()).await;
}

/// Runs the association to its end; returns a line for the log.
pub async fn run(
    id: u64,
    scp: &Arc<Scp>,
    accepted: Accepted,
    peer: SocketAddr,
    stream: Box<dyn Stream>,
    mut reader: PduReader,
    mut shutdown: watch::Receiver<bool>,
) -> String {
    let contexts: HashMap<u8, (String, String)> = accepted
        .contexts
        .iter()
        .map(|c| (c.id, (c.abstract_syntax.clone(), c.transfer_syntax.clone())))
        .collect();
    let mut assembler = Assembler::new(contexts.keys().copied());
    let (mut stream, half) = tokio::io::split(stream);
    let writer: SharedWriter = Arc::new(tokio::sync::Mutex::new(Writer {
        half,
        scratch: Vec::with_capacity(1024),
        peer_max_pdu: accepted.peer_max_pdu,
        answered: None,
    }));
    let accepted = Arc::new(accepted);
    let mut current = Current::Idle;
    let mut running: Option<Running> = None;
    let mut stored = 0u64;
    let mut refusals = 0u32;
    let calling = accepted.calling_ae.clone();
    let charset_warned = Arc::new(AtomicBool::new(false));
    let end = |running: &mut Option<Running>| {
        if let Some(r) = running.take() {
            r.cancel.store(true, Ordering::Relaxed);
            r.task.abort();
        }
    };
    // At shutdown the association may run on (to its release) until the drain deadline;
    // then, between messages and operations, it is aborted.
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        if running.as_ref().is_some_and(|r| r.task.is_finished()) {
            if let Some(r) = running.take() {
                if let Ok(line) = r.task.await {
                    log::info!("association {id}: {line}");
                }
            }
        }
        let busy = running.is_some();
        let deadline = async {
            match drain_deadline {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let pdu = tokio::select! {
            r = tokio::time::timeout(scp.idle, reader.read(&mut stream)) => r,
            _ = until_true(&mut shutdown), if drain_deadline.is_none() => {
                drain_deadline = Some(tokio::time::Instant::now() + scp.drain);
                log::info!("association {id}: shutting down, {:?} left to finish", scp.drain);
                continue;
            }
            _ = deadline, if matches!(current, Current::Idle) && !busy => {
                abort(&writer).await;
                return format!("aborted at shutdown after {stored} instance(s)");
            }
        };
        let pdu = match pdu {
            // An operation in progress keeps the association alive.
            Err(_) if running.as_ref().is_some_and(|r| !r.task.is_finished()) => continue,
            Err(_) => {
                abort(&writer).await;
                return format!(
                    "idle for {:?}; aborted after {stored} instance(s)",
                    scp.idle
                );
            }
            Ok(Err(FramingError::Closed)) => {
                end(&mut running);
                return format!(
                    "connection closed by {calling:?} without release after {stored} instance(s)"
                );
            }
            Ok(Err(e)) => {
                end(&mut running);
                scp.metrics
                    .protocol_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                abort(&writer).await;
                return format!("{e}; aborted after {stored} instance(s)");
            }
            Ok(Ok(p)) => p,
        };
        match pdu {
            Pdu::PData { data } => {
                for pdv in data {
                    let len = pdv.data.len() as u64;
                    let event = match assembler.feed(pdv) {
                        Ok(ev) => ev,
                        Err(e) => {
                            end(&mut running);
                            scp.metrics
                                .protocol_errors_total
                                .fetch_add(1, Ordering::Relaxed);
                            abort(&writer).await;
                            return format!(
                                "protocol error from {calling:?} at {peer}: {e}; aborted"
                            );
                        }
                    };
                    match event {
                        None => {}
                        Some(Event::Command { pc_id, command }) => {
                            let Some((abstract_syntax, ts)) = contexts.get(&pc_id) else {
                                continue;
                            };
                            let checked =
                                accepted.contexts.iter().find(|c| c.id == pc_id).map(|c| {
                                    authorize::authorize(&command, c, &accepted.permissions)
                                });
                            if let Some(Err(refusal)) = checked {
                                refusals += 1;
                                record_refusal(id, scp, &accepted, peer, &command, &refusal);
                                if command.has_data_set {
                                    current = Current::Refused {
                                        rq: command,
                                        refusal,
                                    };
                                } else {
                                    let rsp = Refused::from(&refusal).response(&command);
                                    if writer.lock().await.command(pc_id, &rsp).await.is_err() {
                                        end(&mut running);
                                        return "connection lost".into();
                                    }
                                }
                                if refusals >= MAX_REFUSALS {
                                    end(&mut running);
                                    abort(&writer).await;
                                    return format!(
                                        "{refusals} refused requests from {calling:?}; aborted"
                                    );
                                }
                                continue;
                            }
                            match command.command_field {
                                CommandField::CEchoRq => {
                                    let rsp = echo::respond(&command);
                                    if writer.lock().await.command(pc_id, &rsp).await.is_err() {
                                        end(&mut running);
                                        return "connection lost while answering C-ECHO".into();
                                    }
                                }
                                CommandField::CStoreRq if command.has_data_set => {
                                    let sop_class =
                                        command.affected_sop_class_uid.clone().unwrap_or_default();
                                    let sop_class = if sop_class.is_empty() {
                                        abstract_syntax.clone()
                                    } else {
                                        sop_class
                                    };
                                    let incoming = Incoming::begin(
                                        scp,
                                        &sop_class,
                                        command
                                            .affected_sop_instance_uid
                                            .as_deref()
                                            .unwrap_or_default(),
                                        ts,
                                        &calling,
                                    );
                                    current = Current::Store {
                                        rq: command,
                                        incoming: Box::new(incoming),
                                    };
                                }
                                CommandField::CFindRq
                                | CommandField::CMoveRq
                                | CommandField::CGetRq
                                    if command.has_data_set
                                        && crate::qr::Model::of_sop_class(abstract_syntax)
                                            .is_some() =>
                                {
                                    current = Current::Request {
                                        rq: command,
                                        identifier: Vec::new(),
                                    };
                                }
                                CommandField::CCancelRq => {
                                    if let Some(r) = &running {
                                        if r.message_id == command.message_id_being_responded_to {
                                            r.cancel.store(true, Ordering::Relaxed);
                                        }
                                    }
                                }
                                CommandField::CStoreRsp => {
                                    // A response to a C-GET sub-operation.
                                    if let Some(r) = &running {
                                        let _ = r.store_rsp.send(*command).await;
                                    }
                                }
                                _ => {
                                    // A request we do not serve on this association.
                                    let rsp = unrecognized(&command);
                                    if writer.lock().await.command(pc_id, &rsp).await.is_err() {
                                        end(&mut running);
                                        return "connection lost".into();
                                    }
                                    if command.has_data_set {
                                        end(&mut running);
                                        scp.metrics
                                            .protocol_errors_total
                                            .fetch_add(1, Ordering::Relaxed);
                                        abort(&writer).await;
                                        return format!(
                                            "unsupported request {:?} with a data set; aborted",
                                            command.command_field
                                        );
                                    }
                                }
                            }
                        }
                        Some(Event::Data { pc_id, bytes, last }) => {
                            scp.metrics
                                .bytes_received_total
                                .fetch_add(len, Ordering::Relaxed);
                            match &mut current {
                                Current::Store { incoming, .. } => {
                                    if let Err(e) = incoming.write(scp, &bytes) {
                                        end(&mut running);
                                        abort(&writer).await;
                                        return format!("{e}; aborted after {stored} instance(s)");
                                    }
                                }
                                Current::Request { identifier, .. } => {
                                    if identifier.len() + bytes.len() > MAX_IDENTIFIER {
                                        end(&mut running);
                                        abort(&writer).await;
                                        return format!(
                                            "identifier from {calling:?} over {MAX_IDENTIFIER} bytes; aborted"
                                        );
                                    }
                                    identifier.extend_from_slice(&bytes);
                                }
                                Current::Refused { .. } | Current::Idle => {}
                            }
                            if !last {
                                continue;
                            }
                            match std::mem::replace(&mut current, Current::Idle) {
                                Current::Store { rq, incoming } => {
                                    let outcome = incoming.finish(scp, &calling).await;
                                    if let Ok(study) = &outcome {
                                        stored += 1;
                                        let _ = scp
                                            .events
                                            .send(crate::assemble::Event::Stored {
                                                assoc: id,
                                                study: study.clone(),
                                            })
                                            .await;
                                    }
                                    let rsp = match &outcome {
                                        Ok(_) => Command::store_rsp(&rq, Status::SUCCESS),
                                        Err(refused) => refused.response(&rq),
                                    };
                                    if writer.lock().await.command(pc_id, &rsp).await.is_err() {
                                        end(&mut running);
                                        return "connection lost while answering C-STORE".into();
                                    }
                                }
                                Current::Request { rq, identifier } => {
                                    // The previous operation may have sent its final
                                    // response (so the peer went on) and not yet ended.
                                    let answered = writer.lock().await.answered;
                                    if running.as_ref().is_some_and(|r| {
                                        r.task.is_finished()
                                            || (r.message_id.is_some() && r.message_id == answered)
                                    }) {
                                        if let Some(r) = running.take() {
                                            if let Ok(line) = r.task.await {
                                                log::info!("association {id}: {line}");
                                            }
                                        }
                                    }
                                    if running.is_some() {
                                        // One operation at a time (no asynchronous
                                        // operations window is negotiated).
                                        let rsp = busy_rsp(&rq);
                                        if writer.lock().await.command(pc_id, &rsp).await.is_err() {
                                            end(&mut running);
                                            return "connection lost".into();
                                        }
                                        continue;
                                    }
                                    let cancel = Arc::new(AtomicBool::new(false));
                                    let (store_rsp, store_rsps) = mpsc::channel(4);
                                    let kind = match rq.command_field {
                                        CommandField::CFindRq => Operation::Find,
                                        CommandField::CMoveRq => Operation::Move,
                                        _ => Operation::Get,
                                    };
                                    let op = Op {
                                        scp: scp.clone(),
                                        writer: writer.clone(),
                                        pc_id,
                                        abstract_syntax: abstract_syntax_of(&contexts, pc_id),
                                        transfer_syntax: contexts
                                            .get(&pc_id)
                                            .map(|c| c.1.clone())
                                            .unwrap_or_default(),
                                        message_id: rq.message_id,
                                        rq: *rq,
                                        identifier,
                                        accepted: accepted.clone(),
                                        peer,
                                        cancel: cancel.clone(),
                                        store_rsps,
                                        charset_warned: charset_warned.clone(),
                                    };
                                    running = Some(Running {
                                        message_id: op.message_id,
                                        cancel,
                                        store_rsp,
                                        task: tokio::spawn(crate::qr::serve(kind, op)),
                                    });
                                }
                                Current::Refused { rq, refusal } => {
                                    let rsp = Refused::from(&refusal).response(&rq);
                                    if writer.lock().await.command(pc_id, &rsp).await.is_err() {
                                        end(&mut running);
                                        return "connection lost".into();
                                    }
                                }
                                Current::Idle => {}
                            }
                        }
                    }
                }
            }
            Pdu::ReleaseRQ => {
                // A peer releases after the final response; if it did not wait, stop the
                // operation first.
                if let Some(r) = running.take() {
                    if !r.task.is_finished() {
                        r.cancel.store(true, Ordering::Relaxed);
                    }
                    if let Ok(line) = r.task.await {
                        log::info!("association {id}: {line}");
                    }
                }
                let _ = writer.lock().await.pdu(&Pdu::ReleaseRP).await;
                return format!("released by {calling:?} after {stored} instance(s)");
            }
            Pdu::AbortRQ { .. } => {
                end(&mut running);
                return format!("aborted by {calling:?} after {stored} instance(s)");
            }
            other => {
                end(&mut running);
                scp.metrics
                    .protocol_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                abort(&writer).await;
                return format!("unexpected {} from {calling:?}; aborted", pdu_name(&other));
            }
        }
    }
}

fn abstract_syntax_of(contexts: &HashMap<u8, (String, String)>, pc_id: u8) -> String {
    contexts
        .get(&pc_id)
        .map(|c| c.0.clone())
        .unwrap_or_default()
}

/// The failure answer to a request that arrives while another operation runs.
fn busy_rsp(rq: &Command) -> Command {
    Refused::new(
        Cause::Busy,
        "another operation is in progress on this association",
    )
    .response(rq)
}

/// Logs, counts and audits a refused request.
fn record_refusal(
    id: u64,
    scp: &Scp,
    accepted: &Accepted,
    peer: SocketAddr,
    rq: &Command,
    refusal: &Refusal,
) {
    use crate::audit::{Action, Event as AuditEvent};
    use crate::config::Permission;
    let calling = &accepted.calling_ae;
    let status = refusal.status();
    log::warn!("association {id}: {calling:?} at {peer}: refused with {status}: {refusal}");
    scp.metrics
        .requests_refused_total
        .fetch_add(1, Ordering::Relaxed);
    let action = match authorize::permission_for(rq.command_field) {
        Some(Permission::Store) => Action::Import,
        Some(Permission::Find) => Action::Query,
        Some(Permission::Move | Permission::Get) => Action::Export,
        _ => Action::Other,
    };
    let object: String = match rq.affected_sop_instance_uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.chars().take(64).collect(),
        _ => "-".into(),
    };
    let event = AuditEvent::new(&format!("ae:{calling}"), action, &object)
        .from(&peer.ip().to_string())
        .detail(format!(
            "{} refused ({:04X}): {refusal}",
            rq.command_field, status.0
        ))
        .failed();
    if let Err(e) = scp.audit.append(event) {
        log::error!("audit trail: cannot record a refused request: {e}");
    }
}

/// Resolves once the watch value is true (never, if the sender is gone while false).
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    loop {
        let now = *rx.borrow_and_update();
        if now {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
