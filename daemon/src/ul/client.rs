//! The requesting side of an association (the SCU): connects over TCP or DICOM TLS,
//! proposes presentation contexts, then runs on the same framing and [`Writer`] as the SCP.
//! C-ECHO, the C-STORE sub-operations of C-MOVE, the PACS push and `duli send` all open
//! their associations here, so they share one set-up, one error type and one send path.
//!
//! Outbound TLS ([`OutboundTls`]) has the SCP's profile ([`crate::tls::provider`]): TLS 1.2
//! and 1.3 only, ECDHE with AEAD suites; the peer's certificate must chain to the
//! configured CA and name the host as configured; a client certificate is presented when
//! one is configured.

use super::framing::{self, FramingError, PduReader};
use super::negotiate::{APPLICATION_CONTEXT, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION};
use super::writer::{self, DataSet, Writer};
use super::Stream;
use crate::dimse::assembler::{Assembler, Event};
use crate::dimse::command::{Command, CommandField};
use crate::tls::TlsError;
use dicom_ul::pdu::{
    AbortRQSource, AssociationRQ, PDataValue, Pdu, PresentationContextProposed,
    PresentationContextResultReason, UserVariableItem,
};
use rustls::ClientConfig;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::ReadHalf;

/// Largest P-DATA PDU received (our Maximum Length Received).
pub const MAX_PDU: u32 = 262_144;

/// How long the TCP connection and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a response may take (all of its PDUs, however the peer paces them), how long
/// the release may take, and how long a write may make no progress.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Why an association could not be opened or broke.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    TlsConfig(#[from] TlsError),
    /// The TLS handshake did not give a connection (server name, time limit, certificate
    /// not trusted, no common version or suite).
    #[error(transparent)]
    Handshake(#[from] crate::tls::HandshakeError),
    /// The peer rejected the association.
    #[error("association rejected: {0}")]
    Rejected(String),
    /// The peer aborted the association.
    #[error("association aborted by peer")]
    Aborted,
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// The peer did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The response does not answer the request: another command, another Message ID,
    /// another SOP instance or another presentation context.
    #[error("response does not answer the request: {0}")]
    Unmatched(String),
    /// [`Client::request`] sends requests whose responses carry no data set (C-ECHO,
    /// C-STORE); this was another.
    #[error("{0} is not sent through Client::request")]
    Unsupported(CommandField),
    /// A write failed.
    #[error("send failed: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// Whether the peer, after a request went out in full, ended the association without
    /// a byte of answer: closed the connection, aborted, or let the time limit pass (what
    /// [`Client::request`] returns after its write succeeded).
    pub fn is_unanswered(&self) -> bool {
        matches!(
            self,
            ClientError::Closed | ClientError::Aborted | ClientError::Timeout(_)
        )
    }
}

/// Outbound DICOM TLS settings of one destination (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundTls {
    /// The CA bundle the peer's certificate must chain to.
    pub ca: PathBuf,
    /// Our client certificate chain, when the peer asks for one.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
}

impl OutboundTls {
    /// The rustls client configuration: the SCP's provider and protocol versions.
    pub fn config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        crate::tls::client_config(
            "pacs.destinations",
            Some(&self.ca),
            self.cert.as_deref(),
            self.key.as_deref(),
        )
    }
}

/// Where to open an association and what to propose.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Host name or address.
    pub host: &'a str,
    /// TCP port.
    pub port: u16,
    /// The peer's AE title.
    pub called_ae: &'a str,
    /// Ours.
    pub calling_ae: &'a str,
    /// (abstract syntax, transfer syntaxes) per presentation context, 1 to 128.
    pub contexts: &'a [(String, Vec<String>)],
    /// DICOM TLS, when the destination requires it.
    pub tls: Option<&'a OutboundTls>,
}

/// An open association as SCU.
pub struct Client {
    read: ReadHalf<Box<dyn Stream>>,
    reader: PduReader,
    writer: Writer,
    accepted: Vec<(u8, String, String)>,
    assembler: Assembler,
    pending: VecDeque<PDataValue>,
}

/// What [`Client::message`] waits for.
#[derive(Debug, Clone, Copy)]
enum Awaited {
    /// A response: its command set only.
    Response,
    /// A request from the peer, with its data set of at most `max_data` bytes.
    Request { max_data: usize },
}

impl Awaited {
    fn name(self) -> &'static str {
        match self {
            Awaited::Response => "response",
            Awaited::Request { .. } => "request",
        }
    }
}

fn framing_error(e: FramingError) -> ClientError {
    match e {
        FramingError::Closed => ClientError::Closed,
        e => ClientError::Protocol(e.to_string()),
    }
}

impl Client {
    /// Connects, proposes `rq.contexts` and waits for the answer.
    pub async fn connect(rq: &Request<'_>) -> Result<Client, ClientError> {
        if rq.contexts.is_empty() || rq.contexts.len() > 128 {
            return Err(ClientError::Protocol(format!(
                "{} presentation contexts to propose (1 to 128 allowed)",
                rq.contexts.len()
            )));
        }
        let tls = rq.tls.map(|t| t.config()).transpose()?;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((rq.host, rq.port)),
        )
        .await
        .map_err(|_| ClientError::Timeout(CONNECT_TIMEOUT))?
        .map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut stream: Box<dyn Stream> = match tls {
            None => Box::new(tcp),
            Some(config) => {
                Box::new(crate::tls::connect(config, rq.host, tcp, CONNECT_TIMEOUT).await?)
            }
        };
        let proposed: Vec<PresentationContextProposed> = rq
            .contexts
            .iter()
            .zip((1u8..=255).step_by(2))
            .map(|((class, syntaxes), id)| PresentationContextProposed {
                id,
                abstract_syntax: class.clone(),
                transfer_syntaxes: syntaxes.clone(),
            })
            .collect();
        let associate = Pdu::AssociationRQ(AssociationRQ {
            protocol_version: 1,
            calling_ae_title: rq.calling_ae.to_string(),
            called_ae_title: rq.called_ae.to_string(),
            application_context_name: APPLICATION_CONTEXT.to_string(),
            presentation_contexts: proposed.clone(),
            user_variables: vec![
                UserVariableItem::MaxLength(MAX_PDU),
                UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_string()),
                UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION.to_string()),
            ],
        });
        framing::write(&mut stream, &mut Vec::new(), &associate).await?;
        let mut reader = PduReader::new(MAX_PDU);
        let answer = tokio::time::timeout(TIMEOUT, reader.read(&mut stream))
            .await
            .map_err(|_| ClientError::Timeout(TIMEOUT))?
            .map_err(framing_error)?;
        let ac = match answer {
            Pdu::AssociationAC(ac) => ac,
            Pdu::AssociationRJ(rj) => {
                return Err(ClientError::Rejected(format!(
                    "{:?} ({:?})",
                    rj.result, rj.source
                )))
            }
            Pdu::AbortRQ { .. } => return Err(ClientError::Aborted),
            _ => {
                return Err(ClientError::Protocol(
                    "unexpected PDU in answer to A-ASSOCIATE-RQ".into(),
                ))
            }
        };
        let peer_max_pdu = writer::peer_max_pdu(ac.user_variables.iter().find_map(|v| match v {
            UserVariableItem::MaxLength(n) => Some(*n),
            _ => None,
        }));
        let accepted: Vec<(u8, String, String)> = ac
            .presentation_contexts
            .iter()
            .filter(|p| p.reason == PresentationContextResultReason::Acceptance)
            .filter_map(|p| {
                proposed.iter().find(|q| q.id == p.id).map(|q| {
                    (
                        p.id,
                        q.abstract_syntax.clone(),
                        p.transfer_syntax.trim_end_matches(['\0', ' ']).to_string(),
                    )
                })
            })
            .collect();
        let (read, write) = tokio::io::split(stream);
        Ok(Client {
            read,
            reader,
            writer: Writer::new(Box::new(write), peer_max_pdu).with_write_timeout(TIMEOUT),
            assembler: Assembler::new(accepted.iter().map(|(id, _, _)| *id)),
            accepted,
            pending: VecDeque::new(),
        })
    }

    /// The accepted contexts: (id, SOP class, transfer syntax).
    pub fn accepted(&self) -> &[(u8, String, String)] {
        &self.accepted
    }

    /// Sends request `rq` (C-ECHO-RQ or C-STORE-RQ, whose responses carry no data set) on
    /// context `pc`, with its data set streamed, and returns the response's command set.
    ///
    /// The response must answer this request: the matching response command on context
    /// `pc`, Message ID Being Responded To equal to the request's Message ID and, when
    /// present, the same Affected SOP Class and Instance UIDs; it must come whole within
    /// [`TIMEOUT`] and no data set fragment may come before it. Anything else is an error
    /// (the association is then of no further use).
    pub async fn request(
        &mut self,
        pc: u8,
        rq: &Command,
        data: Option<DataSet<'_>>,
    ) -> Result<Command, ClientError> {
        let expected = match rq.command_field {
            CommandField::CEchoRq => CommandField::CEchoRsp,
            CommandField::CStoreRq => CommandField::CStoreRsp,
            other => return Err(ClientError::Unsupported(other)),
        };
        match data {
            Some(d) => self.writer.store(pc, rq, d).await?,
            None => self.writer.command(pc, rq).await?,
        }
        self.answer_to(rq, pc, expected).await
    }

    /// Sends N-ACTION-RQ `rq` on context `pc` with its action information `data` (built
    /// here, not read from a file) and returns the N-ACTION-RSP that answers it, checked as
    /// [`Client::request`] checks its responses.
    pub async fn action(
        &mut self,
        pc: u8,
        rq: &Command,
        data: &[u8],
    ) -> Result<Command, ClientError> {
        if rq.command_field != CommandField::NActionRq {
            return Err(ClientError::Unsupported(rq.command_field));
        }
        self.writer.message(pc, rq, Some(data)).await?;
        self.answer_to(rq, pc, CommandField::NActionRsp).await
    }

    /// Waits (at most [`TIMEOUT`]) for the response of kind `expected` to `rq`, sent on
    /// context `pc`.
    async fn answer_to(
        &mut self,
        rq: &Command,
        pc: u8,
        expected: CommandField,
    ) -> Result<Command, ClientError> {
        let (on, rsp) = tokio::time::timeout(TIMEOUT, self.response())
            .await
            .map_err(|_| ClientError::Timeout(TIMEOUT))??;
        answers(rq, pc, expected, on, &rsp)?;
        Ok(rsp)
    }

    /// Reads the next response: its command set and the context it came on. A response
    /// announcing a data set is returned without it (none of the responses read here
    /// carries one; [`answers`] refuses it).
    async fn response(&mut self) -> Result<(u8, Command), ClientError> {
        let (pc, rsp, _) = self.message(Awaited::Response).await?;
        Ok((pc, rsp))
    }

    /// Reads the next request the peer sends on this association (a Storage Commitment
    /// report an archive sends on the association that asked for it): its context, its
    /// command set and its data set, at most `max_data` bytes. No time limit: the caller
    /// bounds the wait.
    pub async fn next_request(
        &mut self,
        max_data: usize,
    ) -> Result<(u8, Command, Vec<u8>), ClientError> {
        self.message(Awaited::Request { max_data }).await
    }

    /// Reads the next message through the association's [`Assembler`] (fragments only on
    /// accepted contexts, in order, the command set capped): its context, its command set
    /// and, for a request, its data set. P-DATA values that arrive in the same PDU after
    /// the message are kept for the next call.
    async fn message(&mut self, awaited: Awaited) -> Result<(u8, Command, Vec<u8>), ClientError> {
        let mut announced: Option<(u8, Command)> = None;
        let mut data: Vec<u8> = Vec::new();
        loop {
            let Some(pdv) = self.pending.pop_front() else {
                match self.next_pdu().await? {
                    Pdu::PData { data } => self.pending.extend(data),
                    Pdu::AbortRQ { .. } => return Err(ClientError::Aborted),
                    _ => {
                        return Err(ClientError::Protocol(format!(
                            "unexpected PDU while waiting for a {}",
                            awaited.name()
                        )))
                    }
                }
                continue;
            };
            let event = self.assembler.feed(pdv).map_err(|e| {
                ClientError::Protocol(format!("{e}, while waiting for a {}", awaited.name()))
            })?;
            match (event, awaited) {
                (None, _) => {}
                (Some(Event::Command { pc_id, command }), Awaited::Response) => {
                    return Ok((pc_id, *command, data))
                }
                (Some(Event::Command { pc_id, command }), Awaited::Request { .. }) => {
                    if !command.has_data_set {
                        return Ok((pc_id, *command, data));
                    }
                    announced = Some((pc_id, *command));
                }
                (Some(Event::Data { bytes, last, .. }), Awaited::Request { max_data }) => {
                    if data.len().saturating_add(bytes.len()) > max_data {
                        return Err(ClientError::Protocol(format!(
                            "request data set over {max_data} bytes"
                        )));
                    }
                    data.extend_from_slice(&bytes);
                    if last {
                        if let Some((pc, rq)) = announced.take() {
                            return Ok((pc, rq, data));
                        }
                    }
                }
                (Some(Event::Data { .. }), Awaited::Response) => {
                    return Err(ClientError::Protocol(
                        "data set fragment where a response was expected".into(),
                    ))
                }
            }
        }
    }

    /// Sends `cmd` (the answer to a request read with [`Client::next_request`]) on `pc`.
    pub async fn answer(&mut self, pc: u8, cmd: &Command) -> Result<(), ClientError> {
        Ok(self.writer.command(pc, cmd).await?)
    }

    /// Reads the next PDU (the callers bound the whole exchange in time).
    async fn next_pdu(&mut self) -> Result<Pdu, ClientError> {
        self.reader
            .read(&mut self.read)
            .await
            .map_err(framing_error)
    }

    /// Releases the association: A-RELEASE-RQ, then waits for A-RELEASE-RP, at most
    /// [`TIMEOUT`] in all (P-DATA still in flight is read and dropped meanwhile). When the
    /// release fails other than by the peer's abort, the association is aborted.
    pub async fn release(mut self) -> Result<(), ClientError> {
        self.writer.pdu(&Pdu::ReleaseRQ).await?;
        let released = tokio::time::timeout(TIMEOUT, async {
            loop {
                match self.next_pdu().await? {
                    Pdu::ReleaseRP => return Ok(()),
                    Pdu::AbortRQ { .. } => return Err(ClientError::Aborted),
                    Pdu::PData { .. } => {}
                    _ => {
                        return Err(ClientError::Protocol(
                            "unexpected PDU in answer to A-RELEASE-RQ".into(),
                        ))
                    }
                }
            }
        })
        .await
        .unwrap_or(Err(ClientError::Timeout(TIMEOUT)));
        match released {
            Err(ClientError::Aborted) => Err(ClientError::Aborted),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }

    /// Aborts the association.
    pub async fn abort(mut self) {
        let abort = Pdu::AbortRQ {
            source: AbortRQSource::ServiceUser,
        };
        let _ = self.writer.pdu(&abort).await;
    }
}

/// Checks that `rsp`, received on context `on`, answers `rq` sent on context `pc` as a
/// response of kind `expected`.
fn answers(
    rq: &Command,
    pc: u8,
    expected: CommandField,
    on: u8,
    rsp: &Command,
) -> Result<(), ClientError> {
    let unmatched = |what: String| Err(ClientError::Unmatched(what));
    if rsp.command_field != expected {
        return unmatched(format!("{} to a {}", rsp.command_field, rq.command_field));
    }
    if on != pc {
        return unmatched(format!("on presentation context {on}, request on {pc}"));
    }
    if rsp.message_id_being_responded_to.is_none()
        || rsp.message_id_being_responded_to != rq.message_id
    {
        return unmatched(format!(
            "Message ID Being Responded To {:?}, request {:?}",
            rsp.message_id_being_responded_to, rq.message_id
        ));
    }
    let uid = |u: &Option<String>| {
        u.as_deref()
            .map(|u| u.trim_end_matches(['\0', ' ']).to_owned())
    };
    // An N-ACTION names its instance as "requested"; its response answers as "affected".
    let instance = rq
        .affected_sop_instance_uid
        .as_ref()
        .or(rq.requested_sop_instance_uid.as_ref());
    let class = rq
        .affected_sop_class_uid
        .as_ref()
        .or(rq.requested_sop_class_uid.as_ref());
    for (name, sent, got) in [
        (
            "Affected SOP Instance UID",
            instance,
            &rsp.affected_sop_instance_uid,
        ),
        ("Affected SOP Class UID", class, &rsp.affected_sop_class_uid),
    ] {
        if got.is_some() && uid(got) != uid(&sent.cloned()) {
            return unmatched(format!("{name} is not the one sent"));
        }
    }
    if rsp.has_data_set {
        return unmatched(format!("{} announcing a data set", rsp.command_field));
    }
    Ok(())
}
