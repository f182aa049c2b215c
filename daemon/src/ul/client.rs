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
use super::writer::{DataSet, Writer};
use super::Stream;
use crate::dimse::command::{self, Command};
use crate::tls::TlsError;
use dicom_ul::pdu::{
    AbortRQSource, AssociationRQ, PDataValueType, Pdu, PresentationContextProposed,
    PresentationContextResultReason, UserVariableItem,
};
use rustls::ClientConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::ReadHalf;

/// Largest P-DATA PDU received (our Maximum Length Received).
pub const MAX_PDU: u32 = 262_144;

/// Largest command set accepted in a response.
const MAX_COMMAND: usize = 64 * 1024;

/// How long the TCP connection and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a response may take, and how long a write may make no progress.
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
    /// The peer broke the protocol or closed the connection.
    #[error("{0}")]
    Protocol(String),
    /// The peer did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A write failed.
    #[error("send failed: {0}")]
    Io(#[from] std::io::Error),
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
}

fn framing_error(e: FramingError) -> ClientError {
    match e {
        FramingError::Closed => ClientError::Protocol("connection closed by peer".into()),
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
        let peer_max_pdu = ac
            .user_variables
            .iter()
            .find_map(|v| match v {
                UserVariableItem::MaxLength(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(0);
        let accepted = ac
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
            accepted,
        })
    }

    /// The accepted contexts: (id, SOP class, transfer syntax).
    pub fn accepted(&self) -> &[(u8, String, String)] {
        &self.accepted
    }

    /// Sends request `rq` on context `pc` (with its data set, streamed) and returns the
    /// response's command set.
    pub async fn request(
        &mut self,
        pc: u8,
        rq: &Command,
        data: Option<DataSet<'_>>,
    ) -> Result<Command, ClientError> {
        match data {
            Some(d) => self.writer.store(pc, rq, d).await?,
            None => self.writer.command(pc, rq).await?,
        }
        self.response().await
    }

    /// Reads the next response's command set.
    async fn response(&mut self) -> Result<Command, ClientError> {
        let mut buf = Vec::new();
        loop {
            match self.next_pdu().await? {
                Pdu::PData { data } => {
                    for pdv in data {
                        if pdv.value_type != PDataValueType::Command {
                            continue;
                        }
                        if buf.len() + pdv.data.len() > MAX_COMMAND {
                            return Err(ClientError::Protocol(format!(
                                "response command set over {MAX_COMMAND} bytes"
                            )));
                        }
                        buf.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            return command::decode(&buf)
                                .map_err(|e| ClientError::Protocol(format!("bad response: {e}")));
                        }
                    }
                }
                Pdu::AbortRQ { .. } => return Err(ClientError::Aborted),
                _ => {
                    return Err(ClientError::Protocol(
                        "unexpected PDU while waiting for a response".into(),
                    ))
                }
            }
        }
    }

    async fn next_pdu(&mut self) -> Result<Pdu, ClientError> {
        tokio::time::timeout(TIMEOUT, self.reader.read(&mut self.read))
            .await
            .map_err(|_| ClientError::Timeout(TIMEOUT))?
            .map_err(framing_error)
    }

    /// Releases the association: A-RELEASE-RQ, then waits for A-RELEASE-RP.
    pub async fn release(mut self) -> Result<(), ClientError> {
        self.writer.pdu(&Pdu::ReleaseRQ).await?;
        loop {
            match self.next_pdu().await? {
                Pdu::ReleaseRP => return Ok(()),
                Pdu::AbortRQ { .. } => return Err(ClientError::Aborted),
                _ => {}
            }
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
