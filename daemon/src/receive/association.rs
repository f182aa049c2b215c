//! One association's life after A-ASSOCIATE-AC: reads PDUs (idle timeout), reassembles
//! DIMSE messages from P-DATA fragments, dispatches them to the services, answers, and ends
//! on A-RELEASE, A-ABORT, a protocol violation or shutdown.
//!
//! The loop is a sequence of small steps (a PDU, a P-DATA value, a command, a data
//! fragment, a complete message), each returning what happens `Next`: go on, release, end
//! or abort with a reason. Only `Association::end` sends A-RELEASE-RP or A-ABORT and
//! counts protocol errors.
//!
//! Every request is checked by [`super::authorize`] before it runs; a refused one is
//! answered with its failure status (after its data set, which is read and dropped), logged
//! and audited.
//!
//! The socket is split: this loop owns the reading half, and every response goes through a
//! shared [`crate::ul::writer::Writer`]. A C-FIND, C-MOVE or C-GET runs as a task of its own
//! (see [`crate::qr`], which sees only a [`crate::qr::Context`]) while the loop keeps
//! reading, so that a C-CANCEL stops it and the C-STORE responses of C-GET sub-operations
//! reach it.

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
use crate::ul::framing::{FramingError, PduReader};
use crate::ul::negotiate::Accepted;
use crate::ul::writer::{SharedWriter, Writer};
use dicom_ul::pdu::{PDataValue, Pdu};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    /// The identifier of a C-FIND, C-MOVE or C-GET, or the event information of a
    /// Storage Commitment report, is arriving.
    Request {
        rq: Box<Command>,
        identifier: Vec<u8>,
    },
    /// The data set of a refused request is arriving; it is dropped (counted against the
    /// instance size limit), then answered.
    Refused {
        rq: Box<Command>,
        refused: Refused,
        dropped: u64,
    },
}

/// Refused requests after which the association is aborted (each is logged and audited).
const MAX_REFUSALS: u32 = 8;

/// Largest identifier accepted for a C-FIND, C-MOVE or C-GET.
const MAX_IDENTIFIER: usize = 1 << 20;

/// A C-FIND, C-MOVE or C-GET in progress on this association.
struct Running {
    message_id: Option<u16>,
    cancel: Arc<crate::qr::Stop>,
    store_rsp: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<String>,
}

/// What happens after one step of the loop.
enum Next {
    /// Read on.
    Continue,
    /// The peer asked to release the association.
    Release,
    /// Send A-ABORT and end, for this reason.
    Abort(AbortReason),
    /// The association is over with nothing left to send (the peer aborted or closed the
    /// connection, or a write failed); the line for the log.
    Ended(String),
}

/// Why the appliance aborts an association; each carries the line for the log.
enum AbortReason {
    /// The peer broke the protocol (counted in `duli_protocol_errors_total`).
    Protocol(String),
    /// A limit (size, refusals, idle time) or the shutdown deadline.
    Limit(String),
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
    let (mut stream, half) = tokio::io::split(stream);
    // A peer that stops reading would otherwise hold a write (and the association's slot)
    // for good: the idle timeout bounds every PDU written, as it bounds every read.
    let writer = Writer::new(Box::new(half), accepted.peer_max_pdu)
        .with_write_timeout(scp.idle)
        .share();
    let mut assoc = Association::new(id, scp, accepted, peer, writer);
    // At shutdown the association may run on (to its release) until the drain deadline;
    // then, between messages and operations, it is aborted.
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        assoc.reap().await;
        let between_messages = assoc.between_messages();
        let deadline = async {
            match drain_deadline {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // The idle timeout runs from the peer's last progress, not its last PDU.
        let idle_at = assoc.last_progress + scp.idle;
        let woke = tokio::select! {
            r = tokio::time::timeout_at(idle_at, reader.read(&mut stream)) => Woke::Read(r),
            _ = until_true(&mut shutdown), if drain_deadline.is_none() => Woke::Shutdown,
            _ = deadline, if between_messages => Woke::Deadline,
        };
        let next = match woke {
            Woke::Read(Ok(Ok(pdu))) => assoc.on_pdu(pdu).await,
            Woke::Read(Ok(Err(e))) => assoc.on_read_error(e),
            Woke::Read(Err(_)) => assoc.on_idle(),
            Woke::Shutdown => {
                drain_deadline = Some(tokio::time::Instant::now() + scp.drain);
                log::info!(
                    "association {id}: shutting down, {:?} left to finish",
                    scp.drain
                );
                Next::Continue
            }
            Woke::Deadline => Next::Abort(AbortReason::Limit(format!(
                "aborted at shutdown after {} instance(s)",
                assoc.stored
            ))),
        };
        if !matches!(next, Next::Continue) {
            return assoc.end(next).await;
        }
    }
}

/// What woke the loop.
enum Woke {
    /// A PDU, a read error, or the idle timeout.
    Read(Result<Result<Pdu, FramingError>, tokio::time::error::Elapsed>),
    /// The daemon is shutting down.
    Shutdown,
    /// The drain deadline passed between messages.
    Deadline,
}

/// One association's state between steps.
struct Association<'a> {
    id: u64,
    scp: &'a Arc<Scp>,
    peer: SocketAddr,
    accepted: Arc<Accepted>,
    /// Abstract and transfer syntax of each accepted presentation context.
    contexts: HashMap<u8, (String, String)>,
    assembler: Assembler,
    writer: SharedWriter,
    /// What the Q/R services see of the SCP.
    qr: Arc<crate::qr::Context>,
    current: Current,
    running: Option<Running>,
    stored: u64,
    /// When the peer last made progress: a whole command, or data bytes. PDUs that carry
    /// neither (empty fragments) do not count, so they cannot hold the association open.
    last_progress: tokio::time::Instant,
    refusals: u32,
    charset_warned: Arc<AtomicBool>,
    sub_operation_ids: Arc<std::sync::atomic::AtomicU16>,
}

impl<'a> Association<'a> {
    fn new(
        id: u64,
        scp: &'a Arc<Scp>,
        accepted: Accepted,
        peer: SocketAddr,
        writer: SharedWriter,
    ) -> Self {
        let contexts: HashMap<u8, (String, String)> = accepted
            .contexts
            .iter()
            .map(|c| (c.id, (c.abstract_syntax.clone(), c.transfer_syntax.clone())))
            .collect();
        let qr = Arc::new(crate::qr::Context {
            store: scp.store.clone(),
            audit: scp.audit.clone(),
            ae_title: scp.policy.ae_title.clone(),
            move_destinations: scp.move_destinations.clone(),
            re_encoding: crate::qr::payload::Limits {
                max_pixels: scp.max_pixels,
                disk_reserve: scp.disk_reserve,
            },
            max_find_matches: scp.max_find_matches,
        });
        Association {
            id,
            scp,
            peer,
            assembler: Assembler::new(contexts.keys().copied()),
            contexts,
            accepted: Arc::new(accepted),
            writer,
            qr,
            current: Current::Idle,
            running: None,
            stored: 0,
            last_progress: tokio::time::Instant::now(),
            refusals: 0,
            charset_warned: Arc::new(AtomicBool::new(false)),
            sub_operation_ids: Arc::default(),
        }
    }

    fn calling(&self) -> &str {
        &self.accepted.calling_ae
    }

    /// True between messages with no operation running: the shutdown may abort now.
    fn between_messages(&self) -> bool {
        matches!(self.current, Current::Idle) && self.running.is_none()
    }

    /// Logs the line of an operation that has ended.
    async fn reap(&mut self) {
        if self.running.as_ref().is_some_and(|r| r.task.is_finished()) {
            self.join_running(false).await;
            // The operation's end is progress: the peer has the whole idle time from it.
            self.last_progress = tokio::time::Instant::now();
        } else if self.running.is_some() {
            // An operation in progress keeps the association alive (see `on_idle`).
            self.last_progress = tokio::time::Instant::now();
        }
    }

    /// Waits for the running operation (cancelling it first when `cancel`) and logs its line.
    async fn join_running(&mut self, cancel: bool) {
        if let Some(Running {
            cancel: flag,
            store_rsp,
            task,
            ..
        }) = self.running.take()
        {
            // Cancelling also closes the channel of C-STORE responses: a C-GET waiting for
            // the response to a sub-operation the peer will never answer (it released
            // instead) ends now, not when that wait times out.
            let _responses = if cancel && !task.is_finished() {
                flag.cancel_by_peer();
                drop(store_rsp);
                None
            } else {
                Some(store_rsp)
            };
            if let Ok(line) = task.await {
                log::info!("association {}: {line}", self.id);
            }
        }
    }

    /// Stops the running operation at once.
    fn stop_running(&mut self) {
        if let Some(r) = self.running.take() {
            r.cancel.stop();
            r.task.abort();
        }
    }

    /// Ends the association as `next` says; returns the line for the log.
    async fn end(mut self, next: Next) -> String {
        match next {
            Next::Continue => String::new(),
            Next::Release => {
                // A peer releases after the final response; if it did not wait, stop the
                // operation first.
                self.join_running(true).await;
                let _ = self.writer.lock().await.pdu(&Pdu::ReleaseRP).await;
                format!(
                    "released by {:?} after {} instance(s)",
                    self.calling(),
                    self.stored
                )
            }
            Next::Abort(reason) => {
                self.stop_running();
                let line = match reason {
                    AbortReason::Protocol(line) => {
                        self.scp
                            .metrics
                            .protocol_errors_total
                            .fetch_add(1, Ordering::Relaxed);
                        line
                    }
                    AbortReason::Limit(line) => line,
                };
                let _ = self.writer.lock().await.pdu(&abort_pdu()).await;
                line
            }
            Next::Ended(line) => {
                self.stop_running();
                line
            }
        }
    }

    /// The read timed out: an operation in progress keeps the association alive.
    fn on_idle(&self) -> Next {
        if self.running.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return Next::Continue;
        }
        Next::Abort(AbortReason::Limit(format!(
            "idle for {:?}; aborted after {} instance(s)",
            self.scp.idle, self.stored
        )))
    }

    fn on_read_error(&self, e: FramingError) -> Next {
        match e {
            FramingError::Closed => Next::Ended(format!(
                "connection closed by {:?} without release after {} instance(s)",
                self.calling(),
                self.stored
            )),
            e => Next::Abort(AbortReason::Protocol(format!(
                "{e}; aborted after {} instance(s)",
                self.stored
            ))),
        }
    }

    async fn on_pdu(&mut self, pdu: Pdu) -> Next {
        match pdu {
            Pdu::PData { data } => {
                for pdv in data {
                    let next = self.on_pdv(pdv).await;
                    if !matches!(next, Next::Continue) {
                        return next;
                    }
                }
                Next::Continue
            }
            Pdu::ReleaseRQ => Next::Release,
            Pdu::AbortRQ { .. } => Next::Ended(format!(
                "aborted by {:?} after {} instance(s)",
                self.calling(),
                self.stored
            )),
            other => Next::Abort(AbortReason::Protocol(format!(
                "unexpected {} from {:?}; aborted",
                pdu_name(&other),
                self.calling()
            ))),
        }
    }

    async fn on_pdv(&mut self, pdv: PDataValue) -> Next {
        let len = pdv.data.len() as u64;
        match self.assembler.feed(pdv) {
            Err(e) => Next::Abort(AbortReason::Protocol(format!(
                "protocol error from {:?} at {}: {e}; aborted",
                self.calling(),
                self.peer
            ))),
            Ok(None) => Next::Continue,
            Ok(Some(Event::Command { pc_id, command })) => {
                self.last_progress = tokio::time::Instant::now();
                self.on_command(pc_id, command).await
            }
            Ok(Some(Event::Data { pc_id, bytes, last })) => {
                if !bytes.is_empty() {
                    self.last_progress = tokio::time::Instant::now();
                }
                self.scp
                    .metrics
                    .bytes_received_total
                    .fetch_add(len, Ordering::Relaxed);
                self.on_data(pc_id, &bytes, last).await
            }
        }
    }

    /// Sends a command; a failed write ends the association with `lost` as its line.
    async fn send(&self, pc_id: u8, cmd: &Command, lost: &str) -> Next {
        match self.writer.lock().await.reply(pc_id, cmd).await {
            Ok(()) => Next::Continue,
            Err(_) => Next::Ended(lost.to_string()),
        }
    }

    async fn on_command(&mut self, pc_id: u8, command: Box<Command>) -> Next {
        let Some((abstract_syntax, ts)) = self.contexts.get(&pc_id).cloned() else {
            return Next::Continue;
        };
        if command.has_data_set
            && matches!(
                command.command_field,
                CommandField::CEchoRq | CommandField::CCancelRq | CommandField::CStoreRsp
            )
        {
            // PS3.7 gives these no data set: one announced would stream into nothing.
            return Next::Abort(AbortReason::Protocol(format!(
                "{:?} announces a data set, which it never carries; aborted",
                command.command_field
            )));
        }
        let checked = self
            .accepted
            .contexts
            .iter()
            .find(|c| c.id == pc_id)
            .map(|c| authorize::authorize(&command, c, &self.accepted.permissions));
        if let Some(Err(refusal)) = checked {
            return self.refuse(pc_id, command, &refusal).await;
        }
        if matches!(
            command.command_field,
            CommandField::CFindRq | CommandField::CMoveRq | CommandField::CGetRq
        ) && self
            .scp
            .qr_rate
            .try_take(crate::client_key::ClientKey::of(self.peer.ip()))
            .is_err()
        {
            let refusal = Refusal::RateExceeded {
                operation: command.command_field,
                limit: self.scp.qr_rate.limit(),
            };
            return self.refuse(pc_id, command, &refusal).await;
        }
        match command.command_field {
            CommandField::CEchoRq => {
                let rsp = echo::respond(&command);
                self.send(pc_id, &rsp, "connection lost while answering C-ECHO")
                    .await
            }
            CommandField::CStoreRq if command.has_data_set => {
                self.begin_store(command, abstract_syntax, &ts);
                Next::Continue
            }
            CommandField::CFindRq | CommandField::CMoveRq | CommandField::CGetRq
                if command.has_data_set
                    && crate::qr::Model::of_sop_class(&abstract_syntax).is_some() =>
            {
                self.current = Current::Request {
                    rq: command,
                    identifier: Vec::new(),
                };
                Next::Continue
            }
            CommandField::NEventReportRq
                if command.has_data_set
                    && abstract_syntax == crate::dimse::uids::STORAGE_COMMITMENT_PUSH_MODEL =>
            {
                self.current = Current::Request {
                    rq: command,
                    identifier: Vec::new(),
                };
                Next::Continue
            }
            CommandField::CCancelRq => {
                if let Some(r) = &self.running {
                    if r.message_id == command.message_id_being_responded_to {
                        r.cancel.cancel_by_peer();
                    }
                }
                Next::Continue
            }
            CommandField::CStoreRsp => self.pass_store_rsp(*command),
            // A response to nothing this box asked (PS3.7 gives it no answer): answering
            // it with another response would let a peer talk the loop into a reply.
            field if field.is_response() => Next::Abort(AbortReason::Protocol(format!(
                "unsolicited {field}; aborted"
            ))),
            _ => {
                // A request we do not serve on this association.
                let next = self
                    .send(pc_id, &unrecognized(&command), "connection lost")
                    .await;
                if command.has_data_set && matches!(next, Next::Continue) {
                    return Next::Abort(AbortReason::Protocol(format!(
                        "unsupported request {:?} with a data set; aborted",
                        command.command_field
                    )));
                }
                next
            }
        }
    }

    /// Starts receiving the data set of a C-STORE request on a context of
    /// `abstract_syntax` in transfer syntax `ts`.
    fn begin_store(&mut self, command: Box<Command>, abstract_syntax: String, ts: &str) {
        let sop_class = match command.affected_sop_class_uid.as_deref() {
            Some(c) if !c.is_empty() => c.to_string(),
            _ => abstract_syntax,
        };
        let incoming = Incoming::begin(
            self.scp,
            &sop_class,
            command
                .affected_sop_instance_uid
                .as_deref()
                .unwrap_or_default(),
            ts,
            self.calling(),
        );
        self.current = Current::Store {
            rq: command,
            incoming: Box::new(incoming),
        };
    }

    /// Hands a C-STORE response to the running C-GET, which sends one sub-operation at a
    /// time and waits for its response: more than its channel holds were never asked
    /// for, and waiting for room would stall this loop behind the task.
    fn pass_store_rsp(&self, command: Command) -> Next {
        if let Some(r) = &self.running {
            if let Err(mpsc::error::TrySendError::Full(_)) = r.store_rsp.try_send(command) {
                return Next::Abort(AbortReason::Protocol(
                    "C-STORE responses to sub-operations never sent; aborted".into(),
                ));
            }
        }
        Next::Continue
    }

    /// Records a refused request and answers it (after its data set, when one follows).
    async fn refuse(&mut self, pc_id: u8, command: Box<Command>, refusal: &Refusal) -> Next {
        self.refusals += 1;
        record_refusal(
            self.id,
            self.scp,
            &self.accepted,
            self.peer,
            &command,
            refusal,
        );
        let refused = Refused::from(refusal);
        if command.has_data_set {
            self.current = Current::Refused {
                rq: command,
                refused,
                dropped: 0,
            };
        } else {
            let next = self
                .send(pc_id, &refused.response(&command), "connection lost")
                .await;
            if !matches!(next, Next::Continue) {
                return next;
            }
        }
        if self.refusals >= MAX_REFUSALS {
            return Next::Abort(AbortReason::Limit(format!(
                "{} refused requests from {:?}; aborted",
                self.refusals,
                self.calling()
            )));
        }
        Next::Continue
    }

    async fn on_data(&mut self, pc_id: u8, bytes: &[u8], last: bool) -> Next {
        match &mut self.current {
            Current::Store { incoming, .. } => {
                if let Err(e) = incoming.write(self.scp, bytes) {
                    return Next::Abort(AbortReason::Limit(format!(
                        "{e}; aborted after {} instance(s)",
                        self.stored
                    )));
                }
            }
            Current::Request { identifier, .. } => {
                if identifier.len() + bytes.len() > MAX_IDENTIFIER {
                    return Next::Abort(AbortReason::Limit(format!(
                        "identifier from {:?} over {MAX_IDENTIFIER} bytes; aborted",
                        self.accepted.calling_ae
                    )));
                }
                identifier.extend_from_slice(bytes);
            }
            Current::Refused { dropped, .. } => {
                *dropped = dropped.saturating_add(bytes.len() as u64);
                if *dropped > self.scp.max_instance {
                    return Next::Abort(AbortReason::Limit(format!(
                        "the data set of a refused request from {:?} passed the {} byte \
                         instance limit; aborted",
                        self.accepted.calling_ae, self.scp.max_instance
                    )));
                }
            }
            // Never reached: the assembler aborts on a data fragment that no command
            // announced, and a command that takes no data set but announces one aborts
            // the association (`on_command`).
            Current::Idle => {}
        }
        if !last {
            return Next::Continue;
        }
        match std::mem::replace(&mut self.current, Current::Idle) {
            Current::Store { rq, incoming } => self.finish_store(pc_id, &rq, *incoming).await,
            Current::Request { rq, identifier }
                if rq.command_field == CommandField::NEventReportRq =>
            {
                let ts = self
                    .contexts
                    .get(&pc_id)
                    .map(|(_, ts)| ts.clone())
                    .unwrap_or_default();
                let rsp = super::commitment_report::answer(
                    self.scp,
                    self.calling(),
                    &rq,
                    &ts,
                    &identifier,
                );
                self.send(
                    pc_id,
                    &rsp,
                    "connection lost while answering N-EVENT-REPORT",
                )
                .await
            }
            Current::Request { rq, identifier } => self.start(pc_id, rq, identifier).await,
            Current::Refused { rq, refused, .. } => {
                self.send(pc_id, &refused.response(&rq), "connection lost")
                    .await
            }
            Current::Idle => Next::Continue,
        }
    }

    async fn finish_store(&mut self, pc_id: u8, rq: &Command, incoming: Incoming) -> Next {
        let outcome = incoming.finish(self.scp, self.calling()).await;
        let rsp = match outcome {
            Ok(study) => {
                self.stored += 1;
                let _ = self
                    .scp
                    .events
                    .send(crate::assemble::Event::Stored {
                        assoc: self.id,
                        study,
                    })
                    .await;
                Command::store_rsp(rq, Status::SUCCESS)
            }
            Err(refused) => refused.response(rq),
        };
        self.send(pc_id, &rsp, "connection lost while answering C-STORE")
            .await
    }

    /// Starts a C-FIND, C-MOVE or C-GET as a task of its own.
    async fn start(&mut self, pc_id: u8, rq: Box<Command>, identifier: Vec<u8>) -> Next {
        // The previous operation may have sent its final response (so the peer went on)
        // and not yet ended.
        let answered = self.writer.lock().await.answered();
        if self.running.as_ref().is_some_and(|r| {
            r.task.is_finished() || (r.message_id.is_some() && r.message_id == answered)
        }) {
            self.join_running(false).await;
        }
        if let Some(running) = &self.running {
            // One operation at a time (no asynchronous operations window is negotiated).
            let refused = if rq.message_id.is_some() && rq.message_id == running.message_id {
                Refused::new(
                    Cause::DuplicateInvocation,
                    "the Message ID of the operation in progress",
                )
            } else {
                Refused::new(
                    Cause::Busy,
                    "another operation is in progress on this association",
                )
            };
            // Not the running operation's final answer, even when it names its Message ID.
            return match self
                .writer
                .lock()
                .await
                .reply(pc_id, &refused.response(&rq))
                .await
            {
                Ok(()) => Next::Continue,
                Err(_) => Next::Ended("connection lost".to_string()),
            };
        }
        let cancel = Arc::new(crate::qr::Stop::default());
        let (store_rsp, store_rsps) = mpsc::channel(4);
        let kind = match rq.command_field {
            CommandField::CFindRq => Operation::Find,
            CommandField::CMoveRq => Operation::Move,
            _ => Operation::Get,
        };
        let (abstract_syntax, transfer_syntax) =
            self.contexts.get(&pc_id).cloned().unwrap_or_default();
        let op = Op {
            ctx: self.qr.clone(),
            writer: self.writer.clone(),
            pc_id,
            abstract_syntax,
            transfer_syntax,
            message_id: rq.message_id,
            rq: *rq,
            identifier,
            accepted: self.accepted.clone(),
            peer: self.peer,
            cancel: cancel.clone(),
            store_rsps,
            charset_warned: self.charset_warned.clone(),
            sub_operation_ids: self.sub_operation_ids.clone(),
        };
        self.running = Some(Running {
            message_id: op.message_id,
            cancel,
            store_rsp,
            task: tokio::spawn(crate::qr::serve(kind, op)),
        });
        Next::Continue
    }
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
        Some(Permission::Move | Permission::Get) => Action::Transfer,
        _ => Action::Other,
    };
    // Recorded once per address, AE, command, status and window: an allowed AE repeating
    // refused requests on association after association cannot fill the trail.
    let kind = format!("{} {:04X}", rq.command_field, status.0);
    if !scp
        .rejections
        .first_in_window(peer.ip(), calling, &kind, std::time::Instant::now())
    {
        return;
    }
    let object: String = match rq.affected_sop_instance_uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.chars().take(64).collect(),
        _ => "-".into(),
    };
    let event = AuditEvent::new(&format!("ae:{calling}"), action, &object)
        .from(&peer.ip().to_canonical().to_string())
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
