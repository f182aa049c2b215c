//! The writing half of an association: every outgoing PDU goes through one [`Writer`], one
//! whole DIMSE message per lock so that messages never interleave, each command set or data
//! set split into P-DATA values that fit the peer's maximum PDU length.
//!
//! A data set is sent from where it is ([`DataSet`]): a stored file is streamed from disk
//! one PDU at a time, read straight into the PDU's buffer, so sending an instance costs
//! one PDU buffer whatever its size.
//! The SCP (C-GET sub-operations) and the SCU (C-MOVE sub-operations, PACS push,
//! `duli send`) send every C-STORE through [`Writer::store`].

use super::framing;
use crate::dimse::command::{Command, CommandField};
use crate::dimse::status::Status;
use dicom_ul::pdu::{PDataValueType, Pdu};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Largest data per P-DATA PDU sent, whatever the peer accepts (0 = unlimited included):
/// the one buffer a data set is streamed through.
pub const MAX_CHUNK: usize = 1 << 20;

/// Smallest Maximum Length Received honoured, on both sides of an association: a peer that
/// announces less (down to 1 byte, one PDU per data byte) is sent PDUs of this length.
pub const MIN_PEER_MAX_PDU: u32 = 1024;

/// The maximum PDU length assumed for a peer whose A-ASSOCIATE-RQ or -AC carries no
/// Maximum Length item (PS3.7 D.3.3.1 requires it): the length most implementations take.
pub const DEFAULT_PEER_MAX_PDU: u32 = 16_384;

/// The maximum PDU length to send to a peer that announced `announced` (its Maximum Length
/// Received, `None` when it sent no such item): 0 stays 0, no limit (PS3.8 D.1), which the
/// writer still caps at [`MAX_CHUNK`] of data per PDU; no item is
/// [`DEFAULT_PEER_MAX_PDU`]; anything else is at least [`MIN_PEER_MAX_PDU`].
pub fn peer_max_pdu(announced: Option<u32>) -> u32 {
    match announced {
        None => DEFAULT_PEER_MAX_PDU,
        Some(0) => 0,
        Some(n) => n.max(MIN_PEER_MAX_PDU),
    }
}

/// Bytes before the data in a P-DATA-TF PDU carrying one PDV: PDU type, reserved, PDU
/// length (4), PDV item length (4), presentation context ID, message control header.
const PDATA_HEADER: usize = 12;

/// The data set of a C-STORE: a byte range of a file (the stored instance, or the scratch
/// file of a re-encoding), streamed in PDU-sized reads, so no data set is ever held whole
/// in memory to be sent.
#[derive(Debug, Clone, Copy)]
pub struct DataSet<'a> {
    /// The file.
    pub path: &'a Path,
    /// The file already open, when its contents were checked through this descriptor:
    /// read in place of opening `path` again.
    pub held: Option<&'a std::fs::File>,
    /// Offset of the data set (after the file meta).
    pub offset: u64,
    /// Length of the data set.
    pub len: u64,
}

impl DataSet<'_> {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A byte sink an association writes to (the write half of TCP or TLS).
pub type Sink = Box<dyn AsyncWrite + Unpin + Send>;

/// The writing half of an association.
pub struct Writer {
    half: Sink,
    scratch: Vec<u8>,
    peer_max_pdu: u32,
    /// Message ID Being Responded To of the last final C-FIND/C-MOVE/C-GET response sent:
    /// once it is out, the peer may send its next request before the task has ended.
    answered: Option<u16>,
    /// How long one PDU write may take (the SCP uses its idle timeout: a peer that stops
    /// reading our responses is as gone as one that stops sending).
    write_timeout: Option<std::time::Duration>,
}

/// The writer shared by an association loop and the operation it runs.
pub type SharedWriter = Arc<tokio::sync::Mutex<Writer>>;

impl Writer {
    /// A writer on `half` for a peer that receives PDUs up to `peer_max_pdu` bytes (0: no
    /// limit, still at most [`MAX_CHUNK`] of data per PDU); a length under
    /// [`MIN_PEER_MAX_PDU`] is raised to it.
    pub fn new(half: Sink, peer_max_pdu: u32) -> Writer {
        Writer {
            half,
            scratch: Vec::with_capacity(1024),
            peer_max_pdu: self::peer_max_pdu(Some(peer_max_pdu)),
            answered: None,
            write_timeout: None,
        }
    }

    /// This writer with a limit on how long one PDU write may take.
    pub fn with_write_timeout(mut self, limit: std::time::Duration) -> Writer {
        self.write_timeout = Some(limit);
        self
    }

    /// This writer, shared by an association loop and the operation it runs.
    pub fn share(self) -> SharedWriter {
        Arc::new(tokio::sync::Mutex::new(self))
    }

    /// Message ID Being Responded To of the last final C-FIND, C-MOVE or C-GET response.
    pub fn answered(&self) -> Option<u16> {
        self.answered
    }

    /// Sends one PDU.
    pub async fn pdu(&mut self, pdu: &Pdu) -> std::io::Result<()> {
        timed(
            self.write_timeout,
            framing::write(&mut self.half, &mut self.scratch, pdu),
        )
        .await
    }

    /// Sends a command set on a presentation context.
    pub async fn command(&mut self, pc_id: u8, cmd: &Command) -> std::io::Result<()> {
        self.record_answer(cmd);
        self.send_command(pc_id, cmd).await
    }

    /// Sends a response the association loop gives itself (a C-ECHO's or C-STORE's, the
    /// refusal of a request, one sent while another operation runs among them): never a
    /// running operation's final response, whatever Message ID it answers, so it is not
    /// recorded as [`Writer::answered`]. Operations answer through [`Writer::command`].
    pub async fn reply(&mut self, pc_id: u8, cmd: &Command) -> std::io::Result<()> {
        self.send_command(pc_id, cmd).await
    }

    /// Notes the Message ID a final C-FIND, C-MOVE or C-GET response answers.
    fn record_answer(&mut self, cmd: &Command) {
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
    }

    async fn send_command(&mut self, pc_id: u8, cmd: &Command) -> std::io::Result<()> {
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

    /// Data per P-DATA PDU for this peer.
    fn chunk(&self) -> usize {
        let max = usize::try_from(self.peer_max_pdu).unwrap_or(MAX_CHUNK);
        if max == 0 {
            MAX_CHUNK
        } else {
            max.saturating_sub(6).clamp(1, MAX_CHUNK)
        }
    }

    /// Streams a data set, one PDU per chunk: each P-DATA-TF PDU (one data PDV) is written
    /// from one buffer, its 12-byte header then the data read into place from the file.
    pub async fn stream(&mut self, pc_id: u8, data: DataSet<'_>) -> std::io::Result<()> {
        let total = data.len();
        if total == 0 {
            return Err(std::io::Error::other("empty data set"));
        }
        let chunk = self.chunk();
        let DataSet {
            path,
            held,
            offset,
            len,
        } = data;
        let mut file = Staged {
            file: match held {
                Some(f) => Reader::Held(f),
                None => Reader::Opened(std::fs::File::open(path)?),
            },
            at: offset,
            left: len,
        };
        let first = usize::try_from(total).unwrap_or(chunk).min(chunk);
        let mut buf = vec![0u8; PDATA_HEADER + first];
        let mut remaining = total;
        while remaining > 0 {
            let n = usize::try_from(remaining).unwrap_or(chunk).min(chunk);
            let body = &mut buf[PDATA_HEADER..PDATA_HEADER + n];
            file.fill(body)?;
            remaining -= n as u64;
            pdata_header(&mut buf[..PDATA_HEADER], pc_id, n, remaining == 0);
            timed(
                self.write_timeout,
                self.half.write_all(&buf[..PDATA_HEADER + n]),
            )
            .await?;
        }
        timed(self.write_timeout, self.half.flush()).await
    }

    /// Sends a C-STORE-RQ and streams its data set (the whole message under one lock).
    pub async fn store(
        &mut self,
        pc_id: u8,
        rq: &Command,
        data: DataSet<'_>,
    ) -> std::io::Result<()> {
        self.command(pc_id, rq).await?;
        self.stream(pc_id, data).await
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

/// A data set's byte range in a file, read straight into each PDU's buffer.
///
/// The read is a plain blocking read on the association's task, as for every PDU before:
/// from the page cache it takes microseconds, while a trip through the blocking pool per
/// read (tokio's file) added two copies and two thread hand-overs per MiB and halved the
/// C-MOVE throughput of large studies (bench/README.md).
struct Staged<'a> {
    file: Reader<'a>,
    /// Offset of the next byte to read.
    at: u64,
    /// Bytes of the range not yet read from the file.
    left: u64,
}

/// The file a range is read from: positioned reads, so a descriptor held by the caller is
/// read without moving its offset.
enum Reader<'a> {
    Held(&'a std::fs::File),
    Opened(std::fs::File),
}

impl Staged<'_> {
    /// Fills `out` with the next bytes of the range.
    fn fill(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if (out.len() as u64) > self.left {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let file = match &self.file {
            Reader::Held(f) => f,
            Reader::Opened(f) => f,
        };
        file.read_exact_at(out, self.at)?;
        self.at += out.len() as u64;
        self.left -= out.len() as u64;
        Ok(())
    }
}

/// Runs a write, failing it when `limit` passes without it completing.
async fn timed(
    limit: Option<std::time::Duration>,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    match limit {
        None => write.await,
        Some(d) => tokio::time::timeout(d, write).await.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no progress in {d:?}"),
            ))
        }),
    }
}

/// Writes the header of a P-DATA-TF PDU whose one PDV carries `n` bytes of data set on
/// context `pc` (PS3.8 9.3.5, E.2).
fn pdata_header(out: &mut [u8], pc: u8, n: usize, last: bool) {
    let n = u32::try_from(n).unwrap_or(u32::MAX - 6);
    out[0] = 0x04;
    out[1] = 0;
    out[2..6].copy_from_slice(&(n + 6).to_be_bytes());
    out[6..10].copy_from_slice(&(n + 2).to_be_bytes());
    out[10] = pc;
    out[11] = if last { 0x02 } else { 0x00 };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ul::framing::PduReader;

    /// A file streamed in PDU-sized chunks arrives whole, in order, the last PDV marked
    /// last, each PDU within the peer's maximum.
    #[tokio::test]
    async fn a_file_is_streamed_in_pdus_within_the_peer_maximum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dcm");
        let body: Vec<u8> = (0..2_600_003u32).map(|i| (i % 251) as u8).collect();
        let mut file = vec![9u8; 300];
        file.extend_from_slice(&body);
        std::fs::write(&path, &file).unwrap();
        let (a, mut b) = tokio::io::duplex(1 << 22);
        let mut w = Writer::new(Box::new(a), 16_384);
        let data = DataSet {
            path: &path,
            held: None,
            offset: 300,
            len: body.len() as u64,
        };
        w.stream(3, data).await.unwrap();
        drop(w);
        let mut r = PduReader::new(16_384);
        let mut got = Vec::new();
        loop {
            let pdu = r.read(&mut b).await.unwrap();
            let dicom_ul::pdu::Pdu::PData { data } = pdu else {
                panic!("{pdu:?}")
            };
            assert_eq!(data.len(), 1);
            assert!(data[0].data.len() <= 16_384 - 6);
            assert_eq!(data[0].presentation_context_id, 3);
            got.extend_from_slice(&data[0].data);
            if data[0].is_last {
                break;
            }
        }
        assert_eq!(got, body);
    }

    /// Only an operation's own final response (sent with `command`) is taken as its end;
    /// what the association loop replies (`reply`: a refusal naming the same Message ID)
    /// never is.
    #[tokio::test]
    async fn only_an_operations_own_final_response_counts_as_answered() {
        let (a, _b) = tokio::io::duplex(1 << 16);
        let mut w = Writer::new(Box::new(a), 16_384);
        let rq = Command::find_rq(
            7,
            crate::dimse::uids::STUDY_ROOT_QR_FIND,
            Default::default(),
        );
        let mut refusal = Command::new(CommandField::CFindRsp);
        refusal.message_id_being_responded_to = rq.message_id;
        refusal.status = Some(Status(0xA700));
        w.reply(1, &refusal).await.unwrap();
        assert_eq!(w.answered(), None);
        w.command(1, &refusal).await.unwrap();
        assert_eq!(w.answered(), Some(7));
    }
}
