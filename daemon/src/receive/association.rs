//! One association's life after A-ASSOCIATE-AC: reads PDUs (idle timeout), reassembles
//! DIMSE messages from P-DATA fragments, dispatches them to the services, answers, and ends
//! on A-RELEASE, A-ABORT, a protocol violation or shutdown.

use super::server::{abort_pdu, pdu_name, Stream};
use super::store::Incoming;
use super::{echo, Scp};
use crate::dimse::assembler::{Assembler, Event};
use crate::dimse::command::{Command, CommandField};
use crate::dimse::status::Status;
use crate::ul::framing::{self, FramingError, PduReader};
use crate::ul::negotiate::Accepted;
use dicom_ul::pdu::{PDataValueType, Pdu};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use tokio::sync::watch;

/// The message currently being received.
enum Current {
    /// Between messages.
    Idle,
    /// A C-STORE whose data set is arriving.
    Store {
        rq: Box<Command>,
        incoming: Box<Incoming>,
    },
}

/// Writes DIMSE responses as P-DATA.
pub struct Responder {
    scratch: Vec<u8>,
    peer_max_pdu: u32,
}

impl Responder {
    /// A responder for a peer that accepts PDUs up to `peer_max_pdu`.
    pub fn new(peer_max_pdu: u32) -> Self {
        Responder {
            scratch: Vec::with_capacity(1024),
            peer_max_pdu,
        }
    }

    /// Sends a command set (no data set) on a presentation context.
    pub async fn command<S: Stream + ?Sized>(
        &mut self,
        stream: &mut S,
        pc_id: u8,
        cmd: &Command,
    ) -> std::io::Result<()> {
        let bytes = crate::dimse::encode(cmd);
        let pdu = Pdu::PData {
            data: crate::dimse::fragments(
                pc_id,
                PDataValueType::Command,
                &bytes,
                self.peer_max_pdu,
            ),
        };
        framing::write(stream, &mut self.scratch, &pdu).await?;
        Ok(())
    }
}

/// Runs the association to its end; returns a line for the log.
pub async fn run(
    id: u64,
    scp: &Scp,
    accepted: Accepted,
    peer: SocketAddr,
    mut stream: Box<dyn Stream>,
    mut reader: PduReader,
    mut shutdown: watch::Receiver<bool>,
) -> String {
    let contexts: HashMap<u8, (String, String)> = accepted
        .contexts
        .iter()
        .map(|c| (c.id, (c.abstract_syntax.clone(), c.transfer_syntax.clone())))
        .collect();
    let mut assembler = Assembler::new(contexts.keys().copied());
    let mut responder = Responder::new(accepted.peer_max_pdu);
    let mut scratch = Vec::new();
    let mut current = Current::Idle;
    let mut stored = 0u64;
    let calling = accepted.calling_ae.clone();
    // At shutdown the association may run on (to its release) until the drain deadline;
    // then, between messages, it is aborted.
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
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
            _ = deadline, if matches!(current, Current::Idle) => {
                let _ = framing::write(&mut stream, &mut scratch, &abort_pdu()).await;
                return format!("aborted at shutdown after {stored} instance(s)");
            }
        };
        let pdu = match pdu {
            Err(_) => {
                let _ = framing::write(&mut stream, &mut scratch, &abort_pdu()).await;
                return format!(
                    "idle for {:?}; aborted after {stored} instance(s)",
                    scp.idle
                );
            }
            Ok(Err(FramingError::Closed)) => {
                return format!(
                    "connection closed by {calling:?} without release after {stored} instance(s)"
                )
            }
            Ok(Err(e)) => {
                scp.metrics
                    .protocol_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                let _ = framing::write(&mut stream, &mut scratch, &abort_pdu()).await;
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
                            scp.metrics
                                .protocol_errors_total
                                .fetch_add(1, Ordering::Relaxed);
                            let _ = framing::write(&mut stream, &mut scratch, &abort_pdu()).await;
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
                            match command.command_field {
                                CommandField::CEchoRq => {
                                    let rsp = echo::respond(&command);
                                    if responder.command(&mut stream, pc_id, &rsp).await.is_err() {
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
                                CommandField::CCancelRq => {}
                                _ => {
                                    // A request we do not serve on this association.
                                    let rsp = unrecognized(&command);
                                    if responder.command(&mut stream, pc_id, &rsp).await.is_err() {
                                        return "connection lost".into();
                                    }
                                    if command.has_data_set {
                                        scp.metrics
                                            .protocol_errors_total
                                            .fetch_add(1, Ordering::Relaxed);
                                        let _ =
                                            framing::write(&mut stream, &mut scratch, &abort_pdu())
                                                .await;
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
                            if let Current::Store { incoming, .. } = &mut current {
                                incoming.write(&bytes);
                            }
                            if last {
                                if let Current::Store { rq, incoming } =
                                    std::mem::replace(&mut current, Current::Idle)
                                {
                                    let outcome = incoming.finish(scp, &calling).await;
                                    if let Some(study) = &outcome.study {
                                        stored += 1;
                                        let _ = scp
                                            .events
                                            .send(crate::assemble::Event::Stored {
                                                assoc: id,
                                                study: study.clone(),
                                            })
                                            .await;
                                    }
                                    let mut rsp = Command::store_rsp(&rq, outcome.status);
                                    if let Some(c) = &outcome.comment {
                                        rsp = rsp.with_error_comment(c);
                                    }
                                    if responder.command(&mut stream, pc_id, &rsp).await.is_err() {
                                        return "connection lost while answering C-STORE".into();
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Pdu::ReleaseRQ => {
                let _ = framing::write(&mut stream, &mut scratch, &Pdu::ReleaseRP).await;
                return format!("released by {calling:?} after {stored} instance(s)");
            }
            Pdu::AbortRQ { .. } => {
                return format!("aborted by {calling:?} after {stored} instance(s)");
            }
            other => {
                scp.metrics
                    .protocol_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                let _ = framing::write(&mut stream, &mut scratch, &abort_pdu()).await;
                return format!("unexpected {} from {calling:?}; aborted", pdu_name(&other));
            }
        }
    }
}

/// "Unrecognized operation" (0211) for a request this association does not serve.
fn unrecognized(rq: &Command) -> Command {
    Command {
        message_id_being_responded_to: rq.message_id,
        affected_sop_class_uid: rq.affected_sop_class_uid.clone(),
        status: Some(Status::UNRECOGNIZED_OPERATION),
        ..Command::new(CommandField::from_code(rq.command_field.code() | 0x8000))
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
