//! The HL7 channel: sends each outbox entry as one MLLP frame over TCP (or TLS) to the
//! RIS and waits for its ACK. The connection is kept between messages and reopened when
//! the RIS closes it. An ACK that repeats the answer to a message sent earlier on the same
//! connection (some interface engines acknowledge twice) is passed over, not taken for the
//! answer to the message after it.

use super::ack::{Ack, AckError};
use super::message::{unescape, unsendable};
use super::mllp;
use crate::config::Hl7Config;
use crate::deliver::{Channel, Delivery, Refusal};
use crate::store::outbox::{Entry, Payload};
use crate::tls::{client_config, TlsError};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where and how to reach the RIS.
#[derive(Debug, Clone)]
pub struct Hl7Target {
    /// RIS host.
    pub host: String,
    /// RIS MLLP port.
    pub port: u16,
    /// TLS client configuration, when MLLP runs over TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Time allowed to connect (and handshake).
    pub connect_timeout: Duration,
    /// Time allowed for the ACK after the message is written.
    pub ack_timeout: Duration,
    /// Largest ACK frame accepted.
    pub max_ack_bytes: usize,
    /// Answers in a row that cannot be taken as a message's ACK (naming another control
    /// id in MSA-2, or no acknowledgement at all: no MSH or MSA, an unknown MSA-1 code, a
    /// frame over [`Hl7Target::max_ack_bytes`]) after which the message is dead-lettered
    /// ([`ACK_FOR_ANOTHER_ID`], [`UNREADABLE_ACKS`]) rather than sent again.
    pub max_mismatched_acks: u32,
}

/// Why a message is dead-lettered when the RIS keeps acknowledging another control id.
pub const ACK_FOR_ANOTHER_ID: &str = "the RIS acknowledges another control ID";

/// Why a message is dead-lettered when the RIS keeps answering it with something that is
/// no acknowledgement.
pub const UNREADABLE_ACKS: &str = "the RIS's answers to it are no acknowledgement";

impl Hl7Target {
    /// The target of `[hl7]`: TLS with `ca` (and `cert`/`key` when the RIS asks for a
    /// client certificate) when `tls = true`.
    pub fn from_config(cfg: &Hl7Config) -> Result<Hl7Target, TlsError> {
        let tls = if cfg.tls {
            Some(client_config(
                "hl7",
                cfg.ca.as_deref(),
                cfg.cert.as_deref(),
                cfg.key.as_deref(),
            )?)
        } else {
            None
        };
        Ok(Hl7Target {
            host: cfg.host.clone(),
            port: cfg.port,
            tls,
            connect_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(30),
            max_ack_bytes: 64 * 1024,
            max_mismatched_acks: cfg.max_rejections.max(1),
        })
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// ACKs of messages already acknowledged that one exchange passes over before the RIS is
/// taken to be out of step (the connection is then made again).
pub const MAX_REPEATED_ACKS: usize = 16;

/// The HL7 MLLP channel.
pub struct Hl7Channel {
    target: Hl7Target,
    conn: Option<Connection>,
    mismatches: Mismatches,
}

/// Control ids remembered per connection to recognise a repeated ACK.
const REMEMBERED_IDS: usize = 16;

/// One open connection to the RIS and what it carried.
struct Connection {
    stream: Box<dyn Stream>,
    /// Kept with the connection: bytes of the next frame may arrive with an ACK.
    decoder: mllp::Decoder,
    /// Control ids of the messages this connection carried and had acknowledged, newest
    /// last: an ACK naming one of them again is a repeat, not an answer.
    acked: VecDeque<String>,
}

impl Connection {
    fn new(stream: Box<dyn Stream>, max_ack_bytes: usize) -> Connection {
        Connection {
            stream,
            decoder: mllp::Decoder::new(max_ack_bytes),
            acked: VecDeque::with_capacity(REMEMBERED_IDS),
        }
    }

    fn remember(&mut self, control_id: &str) {
        if self.acked.len() == REMEMBERED_IDS {
            self.acked.pop_front();
        }
        self.acked.push_back(control_id.to_string());
    }
}

/// Answers in a row that could not be taken as one outbox entry's ACK (another control
/// id, or no acknowledgement at all).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Mismatches {
    /// The entry they answered.
    entry: u64,
    /// How many, in a row.
    count: u32,
}

impl std::fmt::Debug for Hl7Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hl7Channel")
            .field(
                "target",
                &format!("{}:{}", self.target.host, self.target.port),
            )
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

/// Why one exchange did not produce an ACK.
enum Exchange {
    /// The message could not be written in full (worth one retry on a new connection when
    /// the old one had been idle).
    Broken(String),
    /// The message was written and the RIS closed the connection or reset it without one
    /// byte of answer (also worth one retry when the connection had been idle: the RIS may
    /// have closed it before reading).
    Silent(String),
    /// The message was written and the timeout passed without one byte of answer.
    Unanswered(String),
    /// A frame came that is no acknowledgement.
    Unusable(AckError),
    /// Anything else (timeout, garbage).
    Failed(String),
}

/// Why the channel could not connect to the RIS.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP did not connect in time.
    #[error("connect timed out")]
    Timeout,
    /// TCP failed.
    #[error("connect to {host}:{port}: {source}")]
    Tcp {
        /// The RIS host.
        host: String,
        /// Its port.
        port: u16,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS handshake did not give a connection.
    #[error(transparent)]
    Tls(#[from] crate::tls::HandshakeError),
}

impl Hl7Channel {
    /// A channel to `target`; it connects on the first delivery.
    pub fn new(target: Hl7Target) -> Hl7Channel {
        Hl7Channel {
            target,
            conn: None,
            mismatches: Mismatches::default(),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, ConnectError> {
        let addr = (self.target.host.as_str(), self.target.port);
        let tcp = tokio::time::timeout(self.target.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|source| ConnectError::Tcp {
                host: self.target.host.clone(),
                port: self.target.port,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.target.tls {
            None => Ok(Box::new(tcp)),
            Some(cfg) => {
                let tls = crate::tls::connect(
                    cfg.clone(),
                    &self.target.host,
                    tcp,
                    self.target.connect_timeout,
                )
                .await?;
                Ok(Box::new(tls))
            }
        }
    }

    /// Writes `frame` (the message with control id `expected`) and reads its ACK,
    /// passing over repeated ACKs for messages this connection carried before.
    async fn exchange(&mut self, frame: &[u8], expected: &str) -> Result<Ack, Exchange> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(Exchange::Failed("not connected".into()));
        };
        // The write has its own deadline: a RIS that accepts the connection and stops
        // reading must not hold the queue for good.
        let sent = tokio::time::timeout(self.target.ack_timeout, async {
            conn.stream.write_all(frame).await?;
            conn.stream.flush().await
        })
        .await;
        match sent {
            Err(_) => {
                return Err(Exchange::Broken(format!(
                    "write: the RIS took no {} bytes within {} s",
                    frame.len(),
                    self.target.ack_timeout.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(Exchange::Broken(format!("write: {e}"))),
            Ok(Ok(())) => {}
        }
        let mut buf = vec![0u8; 4096];
        let mut got_any = false;
        let mut repeated = 0usize;
        let deadline = tokio::time::Instant::now() + self.target.ack_timeout;
        loop {
            match conn.decoder.next_frame() {
                Ok(Some(answer)) => {
                    got_any = true;
                    let ack = Ack::parse(&answer).map_err(Exchange::Unusable)?;
                    if ack.control_id != expected
                        && conn.acked.iter().any(|id| *id == ack.control_id)
                    {
                        // Said once per exchange; a RIS that keeps repeating is out of step.
                        repeated += 1;
                        if repeated == 1 {
                            let level = if ack.code.is_positive() {
                                log::Level::Info
                            } else {
                                log::Level::Warn
                            };
                            log::log!(
                                level,
                                "hl7: the RIS acknowledged message {:?} again ({}); waiting for the ACK of {expected:?}",
                                ack.control_id,
                                ack.code.as_str()
                            );
                        }
                        if repeated > MAX_REPEATED_ACKS {
                            return Err(Exchange::Failed(format!(
                                "out of step: the RIS repeated ACKs of earlier messages \
                                 {repeated} times"
                            )));
                        }
                        continue;
                    }
                    if ack.control_id == expected {
                        conn.remember(expected);
                    }
                    return Ok(ack);
                }
                Ok(None) => {}
                Err(e) => return Err(Exchange::Unusable(AckError::BadFrame(e.to_string()))),
            }
            let n = match tokio::time::timeout_at(deadline, conn.stream.read(&mut buf)).await {
                Err(_) if !got_any => {
                    return Err(Exchange::Unanswered("no ACK within the timeout".into()))
                }
                Err(_) => return Err(Exchange::Failed("no whole ACK within the timeout".into())),
                Ok(Err(e)) if !got_any => return Err(Exchange::Silent(format!("read: {e}"))),
                Ok(Err(e)) => return Err(Exchange::Failed(format!("read: {e}"))),
                Ok(Ok(0)) if !got_any => {
                    return Err(Exchange::Silent("connection closed by the RIS".into()))
                }
                Ok(Ok(0)) => return Err(Exchange::Failed("connection closed mid-ACK".into())),
                Ok(Ok(n)) => n,
            };
            got_any = true;
            conn.decoder.push(&buf[..n]);
        }
    }

    /// The outcome of an answer to entry `entry` that is not its ACK (an ACK for another
    /// message, or no acknowledgement at all): out of step with the RIS, so a retry on a
    /// new connection, until [`Hl7Target::max_mismatched_acks`] such answers in a row make
    /// it a message that cannot be delivered ([`ACK_FOR_ANOTHER_ID`], [`UNREADABLE_ACKS`]).
    fn unusable(&mut self, entry: u64, e: AckError) -> Delivery {
        self.conn = None;
        let count = if self.mismatches.entry == entry {
            self.mismatches.count + 1
        } else {
            1
        };
        self.mismatches = Mismatches { entry, count };
        if count >= self.target.max_mismatched_acks.max(1) {
            self.mismatches = Mismatches::default();
            return Delivery::Unsendable(match &e {
                AckError::WrongControlId { expected, got } => format!(
                    "{ACK_FOR_ANOTHER_ID} (MSA-2 {got:?} for MSH-10 {expected:?}, {count} times in a row)"
                ),
                other => format!("{UNREADABLE_ACKS} ({other}, {count} times in a row)"),
            });
        }
        Delivery::Failed(format!("unusable ACK: {e}"))
    }
}

/// MSH-10 of an encoded message (unescaped), or "" when absent.
pub fn control_id(message: &str) -> String {
    message
        .split('\r')
        .next()
        .and_then(|msh| msh.split('|').nth(9))
        .map(unescape)
        .unwrap_or_default()
}

impl Channel for Hl7Channel {
    async fn deliver(&mut self, entry: &Entry) -> Delivery {
        let Payload::Hl7 { message } = &entry.payload else {
            return Delivery::Rejected(Refusal::ours("entry is not an HL7 message"));
        };
        if let Some(reason) = unsendable(message) {
            return Delivery::Unsendable(reason);
        }
        let expected = control_id(message);
        let frame = mllp::encode(message.as_bytes());
        let mut reused = self.conn.is_some();
        let answer = loop {
            if self.conn.is_none() {
                match self.connect().await {
                    Ok(c) => self.conn = Some(Connection::new(c, self.target.max_ack_bytes)),
                    Err(e) => return Delivery::Failed(e.to_string()),
                }
            }
            match self.exchange(&frame, &expected).await {
                Ok(a) => break a,
                Err(Exchange::Broken(e) | Exchange::Silent(e)) if reused => {
                    // the RIS closed an idle connection: once more on a fresh one
                    log::debug!("hl7: kept connection broken ({e}); reconnecting");
                    self.conn = None;
                    reused = false;
                }
                Err(Exchange::Unusable(e)) => return self.unusable(entry.id, e),
                Err(Exchange::Silent(e) | Exchange::Unanswered(e)) => {
                    self.conn = None;
                    return Delivery::Dropped(e);
                }
                Err(Exchange::Broken(e)) | Err(Exchange::Failed(e)) => {
                    self.conn = None;
                    return Delivery::Failed(e);
                }
            }
        };
        match answer.expect_control_id(&expected) {
            Ok(ack) => {
                self.mismatches = Mismatches::default();
                if ack.code.is_positive() {
                    Delivery::Acked
                } else {
                    Delivery::Rejected(Refusal::from_peer(ack.code.as_str(), &ack.text))
                }
            }
            Err(e) => self.unusable(entry.id, e),
        }
    }

    async fn close(&mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = c.stream.shutdown().await;
        }
    }
}
