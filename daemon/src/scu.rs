//! The technician's SCU tools: C-ECHO (`duli echo`) and C-STORE of files and folders
//! (`duli send`, optionally over several parallel associations). Data sets are sent as
//! stored — read from the file after its meta header and streamed in PDU-sized fragments,
//! never re-encoded and never held whole in memory.

use crate::dimse::command::{self, Command, Priority};
use crate::dimse::status::Status;
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::association::AsyncAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// A remote AE: `AET@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Called AE title.
    pub ae_title: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Errors of the SCU tools.
#[derive(Debug, thiserror::Error)]
pub enum ScuError {
    /// The target is not `AET@HOST:PORT`.
    #[error("{0:?} is not AET@HOST:PORT")]
    BadTarget(String),
    /// The association could not be opened (refused, rejected, unreachable).
    #[error("association with {target} failed: {reason}")]
    Association {
        /// The target as text.
        target: String,
        /// Why.
        reason: String,
    },
    /// The peer broke the protocol or the connection dropped.
    #[error("{0}")]
    Protocol(String),
    /// A file could not be read or is not DICOM Part 10.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl From<ScuError> for crate::dimse::Refused {
    /// An SCU failure ends a C-MOVE whose destination could not be used.
    fn from(e: ScuError) -> crate::dimse::Refused {
        crate::dimse::Refused::new(crate::dimse::Cause::DestinationUnreachable, e.to_string())
    }
}

impl std::str::FromStr for Target {
    type Err = ScuError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ScuError::BadTarget(s.to_string());
        let (ae, rest) = s.split_once('@').ok_or_else(bad)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if crate::config::check_ae_title(ae).is_err() || host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Target {
            ae_title: ae.to_string(),
            host: host.trim_matches(['[', ']']).to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.ae_title, self.host, self.port)
    }
}

/// A configured DICOM peer of this box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The destination's name (`this box` for the own SCP).
    pub name: String,
    /// Whether it is this box's own SCP.
    pub own: bool,
    /// Its address and AE title.
    pub target: Target,
}

/// This box's SCP first (an unspecified bind address is reached over loopback), then the
/// `[[pacs.destinations]]`: what the connectivity checks echo.
pub fn configured_peers(config: &crate::config::Config) -> Vec<Peer> {
    let host = match config.dicom.bind {
        std::net::IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(a) if a.is_unspecified() => "::1".to_string(),
        a => a.to_string(),
    };
    let own = Peer {
        name: "this box".into(),
        own: true,
        target: Target {
            ae_title: config.dicom.ae_title.clone(),
            host,
            port: config.dicom.port,
        },
    };
    std::iter::once(own)
        .chain(config.pacs.destinations.iter().map(|d| Peer {
            name: d.name.clone(),
            own: false,
            target: Target {
                ae_title: d.ae_title.clone(),
                host: d.host.clone(),
                port: d.port,
            },
        }))
        .collect()
}

/// An error with its causes (`outer: inner: innermost`), so "could not connect" says why.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn options(calling_ae: &str, target: &Target) -> ClientAssociationOptions<'static> {
    ClientAssociationOptions::new()
        .calling_ae_title(calling_ae.to_string())
        .called_ae_title(target.ae_title.clone())
        .max_pdu_length(262_144)
        .read_timeout(TIMEOUT)
        .write_timeout(TIMEOUT)
        .connection_timeout(Duration::from_secs(10))
}

/// Sends one C-ECHO; returns the round-trip time of the echo itself.
pub async fn echo(target: &Target, calling_ae: &str) -> Result<Duration, ScuError> {
    let addr = format!("{}:{}", target.host, target.port);
    let mut assoc = options(calling_ae, target)
        .with_presentation_context(
            crate::dimse::uids::VERIFICATION,
            vec![crate::dimse::uids::IMPLICIT_VR_LITTLE_ENDIAN],
        )
        .establish_async(addr)
        .await
        .map_err(|e| ScuError::Association {
            target: target.to_string(),
            reason: with_causes(&e),
        })?;
    let pc = assoc
        .presentation_contexts()
        .first()
        .map(|p| p.id)
        .ok_or_else(|| ScuError::Protocol("Verification was not accepted".into()))?;
    let started = Instant::now();
    send_command(&mut assoc, pc, &Command::echo_rq(1)).await?;
    let rsp = receive_command(&mut assoc).await?;
    let rtt = started.elapsed();
    let _ = assoc.release().await;
    match rsp.status {
        Some(Status::SUCCESS) => Ok(rtt),
        other => Err(ScuError::Protocol(format!(
            "C-ECHO answered with status {:04X}",
            other.map(|s| s.0).unwrap_or(0xFFFF)
        ))),
    }
}

async fn send_command<A: AsyncAssociation<S> + Send, S>(
    assoc: &mut A,
    pc_id: u8,
    cmd: &Command,
) -> Result<(), ScuError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    AsyncAssociation::send(
        assoc,
        &Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command::encode(cmd),
            }],
        },
    )
    .await
    .map_err(|e| ScuError::Protocol(format!("send failed: {e}")))
}

async fn receive_command<A: AsyncAssociation<S> + Send, S>(
    assoc: &mut A,
) -> Result<Command, ScuError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let mut buf = Vec::new();
    loop {
        match AsyncAssociation::receive(assoc).await {
            Ok(Pdu::PData { data }) => {
                for pdv in data {
                    if pdv.value_type == PDataValueType::Command {
                        buf.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            return command::decode(&buf)
                                .map_err(|e| ScuError::Protocol(format!("bad response: {e}")));
                        }
                    }
                }
            }
            Ok(Pdu::AbortRQ { .. }) => {
                return Err(ScuError::Protocol("association aborted by peer".into()))
            }
            Ok(other) => {
                return Err(ScuError::Protocol(format!(
                    "unexpected PDU while waiting for a response: {other:?}"
                )))
            }
            Err(e) => return Err(ScuError::Protocol(format!("receive failed: {e}"))),
        }
    }
}

/// A Part 10 file ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The file.
    pub path: PathBuf,
    /// SOP Class UID (from the file meta).
    pub sop_class: String,
    /// SOP Instance UID (from the file meta).
    pub sop_instance: String,
    /// Transfer syntax of the data set.
    pub transfer_syntax: String,
    /// Byte offset of the data set.
    pub offset: u64,
    /// Length of the data set.
    pub len: u64,
}

/// Reads the file meta of a Part 10 file.
pub fn prepare(path: &Path) -> Result<Prepared, ScuError> {
    let err = |reason: String| ScuError::File {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let total = f.metadata().map_err(|e| err(e.to_string()))?.len();
    let mut preamble = [0u8; 132];
    f.read_exact(&mut preamble)
        .map_err(|_| err("too short for DICOM Part 10".into()))?;
    if &preamble[128..] != b"DICM" {
        return Err(err("not a DICOM Part 10 file (no DICM marker)".into()));
    }
    f.seek(std::io::SeekFrom::Start(128))
        .map_err(|e| err(e.to_string()))?;
    let meta = dicom_object::meta::FileMetaTable::from_reader(&mut f)
        .map_err(|e| err(format!("bad file meta: {e}")))?;
    let offset = f.stream_position().map_err(|e| err(e.to_string()))?;
    let clean = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
    Ok(Prepared {
        path: path.to_path_buf(),
        sop_class: clean(&meta.media_storage_sop_class_uid),
        sop_instance: clean(&meta.media_storage_sop_instance_uid),
        transfer_syntax: clean(&meta.transfer_syntax),
        offset,
        len: total.saturating_sub(offset),
    })
}

/// Expands folders into the files under them (sorted), keeping files as given.
pub fn collect_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            let mut found = Vec::new();
            while let Some(dir) = stack.pop() {
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    for e in rd.flatten() {
                        let path = e.path();
                        if path.is_dir() {
                            stack.push(path);
                        } else if path.is_file() {
                            found.push(path);
                        }
                    }
                }
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    out
}

/// The result of sending one file.
#[derive(Debug, Clone)]
pub struct SendResult {
    /// The file.
    pub path: PathBuf,
    /// The DIMSE status, or the reason it was not sent.
    pub outcome: Result<u16, String>,
    /// Bytes of the data set.
    pub bytes: u64,
}

/// Sends files over one association; every file gets a result.
pub async fn send_files(
    target: &Target,
    calling_ae: &str,
    files: Vec<Prepared>,
) -> Vec<SendResult> {
    if files.is_empty() {
        return Vec::new();
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for f in &files {
        let p = (f.sop_class.clone(), f.transfer_syntax.clone());
        if !pairs.contains(&p) {
            pairs.push(p);
        }
    }
    let fail_all = |files: Vec<Prepared>, reason: String| {
        files
            .into_iter()
            .map(|f| SendResult {
                path: f.path,
                outcome: Err(reason.clone()),
                bytes: 0,
            })
            .collect::<Vec<_>>()
    };
    if pairs.len() > 127 {
        return fail_all(
            files,
            "more than 127 SOP class/transfer syntax pairs in one association".into(),
        );
    }
    let mut opts = options(calling_ae, target);
    for (class, ts) in &pairs {
        opts = opts.with_presentation_context(class.clone(), vec![ts.clone()]);
    }
    let addr = format!("{}:{}", target.host, target.port);
    let mut assoc = match opts.establish_async(addr).await {
        Ok(a) => a,
        Err(e) => return fail_all(files, format!("association failed: {e}")),
    };
    let accepted: Vec<(u8, String, String)> = assoc
        .presentation_contexts()
        .iter()
        .filter(|p| p.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
        .map(|p| (p.id, p.abstract_syntax.clone(), p.transfer_syntax.clone()))
        .collect();
    let max_pdu = assoc.acceptor_max_pdu_length().max(1024) as usize;
    let chunk = max_pdu - 6;
    let mut results = Vec::with_capacity(files.len());
    let mut msg_id: u16 = 0;
    let mut broken: Option<String> = None;
    for f in files {
        if let Some(reason) = &broken {
            results.push(SendResult {
                path: f.path,
                outcome: Err(reason.clone()),
                bytes: 0,
            });
            continue;
        }
        let Some((pc, _, _)) = accepted
            .iter()
            .find(|(_, a, t)| *a == f.sop_class && *t == f.transfer_syntax)
        else {
            results.push(SendResult {
                path: f.path,
                outcome: Err(format!(
                    "peer did not accept {} in {}",
                    f.sop_class, f.transfer_syntax
                )),
                bytes: 0,
            });
            continue;
        };
        msg_id = msg_id.wrapping_add(1).max(1);
        let outcome = send_one(&mut assoc, *pc, msg_id, &f, chunk).await;
        if let Err(e) = &outcome {
            broken = Some(e.clone());
        }
        results.push(SendResult {
            path: f.path.clone(),
            outcome,
            bytes: f.len,
        });
    }
    if broken.is_none() {
        let _ = assoc.release().await;
    }
    results
}

/// Where the data set of a C-STORE comes from.
#[derive(Debug, Clone, Copy)]
pub enum DataSet<'a> {
    /// As stored: a byte range of a Part 10 file, streamed in PDU-sized reads.
    File(&'a Prepared),
    /// Already encoded in memory (e.g. transcoded for a peer that refused the stored syntax).
    Memory(&'a [u8]),
}

async fn send_one<A: AsyncAssociation<S> + Send, S>(
    assoc: &mut A,
    pc: u8,
    msg_id: u16,
    f: &Prepared,
    chunk: usize,
) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let rq = Command::store_rq(msg_id, &f.sop_class, &f.sop_instance, Priority::Medium);
    store_one(assoc, pc, &rq, DataSet::File(f), chunk).await
}

/// Sends C-STORE-RQ `rq` with its data set and returns the status of the response.
async fn store_one<A: AsyncAssociation<S> + Send, S>(
    assoc: &mut A,
    pc: u8,
    rq: &Command,
    data: DataSet<'_>,
    chunk: usize,
) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    send_command(assoc, pc, rq)
        .await
        .map_err(|e| e.to_string())?;
    let mut file = None;
    let total = match data {
        DataSet::File(f) => {
            let mut fh = std::fs::File::open(&f.path).map_err(|e| e.to_string())?;
            fh.seek(std::io::SeekFrom::Start(f.offset))
                .map_err(|e| e.to_string())?;
            file = Some(fh);
            f.len
        }
        DataSet::Memory(b) => b.len() as u64,
    };
    if total == 0 {
        return Err("empty data set".into());
    }
    // Each P-DATA-TF PDU (one data PDV) is written straight to the socket from one buffer:
    // its 12-byte header, then the data read into place. That is one copy of the data in
    // user space instead of three (read, PDV, encoded PDU), which decides the throughput of
    // a C-MOVE of large images. dicom-ul writes each PDU whole and buffers nothing between
    // PDUs, so writing at these PDU boundaries keeps the association consistent.
    let mut remaining = total;
    let mut buf = vec![0u8; PDATA_HEADER + (total as usize).min(chunk)];
    while remaining > 0 {
        let n = (remaining as usize).min(chunk);
        let body = &mut buf[PDATA_HEADER..PDATA_HEADER + n];
        match (&mut file, data) {
            (Some(fh), _) => fh.read_exact(body).map_err(|e| e.to_string())?,
            (None, DataSet::Memory(b)) => {
                let at = (total - remaining) as usize;
                body.copy_from_slice(&b[at..at + n]);
            }
            (None, DataSet::File(_)) => return Err("file not open".into()),
        }
        remaining -= n as u64;
        pdata_header(&mut buf[..PDATA_HEADER], pc, n, remaining == 0);
        let stream = AsyncAssociation::inner_stream(assoc);
        match tokio::time::timeout(TIMEOUT, stream.write_all(&buf[..PDATA_HEADER + n])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("send failed: {e}")),
            Err(_) => return Err(format!("send failed: no progress in {TIMEOUT:?}")),
        }
    }
    let rsp = receive_command(assoc).await.map_err(|e| e.to_string())?;
    rsp.status
        .map(|s| s.0)
        .ok_or_else(|| "response without a status".to_string())
}

/// Bytes before the data in a P-DATA-TF PDU carrying one PDV: PDU type, reserved, PDU
/// length (4), PDV item length (4), presentation context ID, message control header.
const PDATA_HEADER: usize = 12;

/// Writes the header of a P-DATA-TF PDU whose one PDV carries `n` bytes of data set on
/// context `pc` (PS3.8 9.3.5, E.2).
fn pdata_header(out: &mut [u8], pc: u8, n: usize, last: bool) {
    out[0] = 0x04;
    out[1] = 0;
    out[2..6].copy_from_slice(&((n + 6) as u32).to_be_bytes());
    out[6..10].copy_from_slice(&((n + 2) as u32).to_be_bytes());
    out[10] = pc;
    out[11] = if last { 0x02 } else { 0x00 };
}

/// An open C-STORE SCU association with several presentation contexts, for sending the
/// sub-operations of a C-MOVE.
pub struct StoreAssociation {
    assoc: dicom_ul::association::client::AsyncClientAssociation<tokio::net::TcpStream>,
    accepted: Vec<(u8, String, String)>,
    chunk: usize,
    msg_id: u16,
}

impl StoreAssociation {
    /// Opens an association proposing one presentation context per (SOP class, transfer
    /// syntaxes) pair of `contexts` (at most 128).
    pub async fn open(
        target: &Target,
        calling_ae: &str,
        contexts: &[(String, Vec<String>)],
    ) -> Result<StoreAssociation, ScuError> {
        if contexts.is_empty() || contexts.len() > 128 {
            return Err(ScuError::Protocol(format!(
                "{} presentation contexts to propose (1 to 128 allowed)",
                contexts.len()
            )));
        }
        let mut opts = options(calling_ae, target);
        for (class, ts) in contexts {
            opts = opts.with_presentation_context(class.clone(), ts.clone());
        }
        let addr = format!("{}:{}", target.host, target.port);
        let mut assoc = opts
            .establish_async(addr)
            .await
            .map_err(|e| ScuError::Association {
                target: target.to_string(),
                reason: with_causes(&e),
            })?;
        let _ = AsyncAssociation::inner_stream(&mut assoc).set_nodelay(true);
        let accepted = assoc
            .presentation_contexts()
            .iter()
            .filter(|p| p.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
            .map(|p| {
                (
                    p.id,
                    p.abstract_syntax.trim_end_matches('\0').to_string(),
                    p.transfer_syntax.trim_end_matches('\0').to_string(),
                )
            })
            .collect();
        let chunk = (assoc.acceptor_max_pdu_length().max(1024) as usize) - 6;
        Ok(StoreAssociation {
            assoc,
            accepted,
            chunk,
            msg_id: 0,
        })
    }

    /// The accepted contexts: (id, SOP class, transfer syntax).
    pub fn accepted(&self) -> &[(u8, String, String)] {
        &self.accepted
    }

    /// Sends one instance on context `pc`, marked as a sub-operation of C-MOVE
    /// `originator` (AE title, message ID) when given; returns the response status.
    pub async fn store(
        &mut self,
        pc: u8,
        sop_class: &str,
        sop_instance: &str,
        data: DataSet<'_>,
        originator: Option<(&str, u16)>,
    ) -> Result<u16, ScuError> {
        self.msg_id = self.msg_id.wrapping_add(1).max(1);
        let mut rq = Command::store_rq(self.msg_id, sop_class, sop_instance, Priority::Medium);
        if let Some((ae, id)) = originator {
            rq = rq.with_move_originator(ae, id);
        }
        store_one(&mut self.assoc, pc, &rq, data, self.chunk)
            .await
            .map_err(ScuError::Protocol)
    }

    /// Releases the association (errors are only logged: the work is done).
    pub async fn release(self) {
        if let Err(e) = self.assoc.release().await {
            log::debug!("release after C-STORE sub-operations: {e}");
        }
    }

    /// Aborts the association.
    pub async fn abort(self) {
        let _ = self.assoc.abort().await;
    }
}

/// Sends files over `parallel` associations (files split round-robin).
pub async fn send(
    target: &Target,
    calling_ae: &str,
    files: Vec<Prepared>,
    parallel: usize,
) -> Vec<SendResult> {
    let parallel = parallel.clamp(1, 64);
    let mut groups: Vec<Vec<Prepared>> = vec![Vec::new(); parallel];
    for (i, f) in files.into_iter().enumerate() {
        groups[i % parallel].push(f);
    }
    let mut set = tokio::task::JoinSet::new();
    for g in groups.into_iter().filter(|g| !g.is_empty()) {
        let target = target.clone();
        let calling = calling_ae.to_string();
        set.spawn(async move { send_files(&target, &calling, g).await });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(v) = r {
            out.extend(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t: Target = "DULI@127.0.0.1:11112".parse().unwrap();
        assert_eq!(t.ae_title, "DULI");
        assert_eq!(t.port, 11112);
        assert!("DULI127.0.0.1:11112".parse::<Target>().is_err());
        assert!("DULI@host:notaport".parse::<Target>().is_err());
        assert!("THIS_AE_TITLE_IS_TOO_LONG@h:1".parse::<Target>().is_err());
    }
}
