//! C-ECHO and C-STORE as SCU: the technician's tools (`duli echo`, `duli send` of files
//! and folders, optionally over several parallel associations), the PACS push and the
//! C-MOVE sub-operations ([`StoreAssociation`]). Every association is opened by one
//! function over [`crate::ul::client`] (plain TCP or DICOM TLS per [`Target`]). Data sets
//! are sent as stored — read from the file after its meta header and streamed in PDU-sized
//! fragments, never re-encoded and never held whole in memory.

use crate::dimse::command::{Command, Priority};
use crate::dimse::status::Status;
use crate::dimse::uids;
pub use crate::ul::client::OutboundTls;
use crate::ul::client::{Client, ClientError, Request};
pub use crate::ul::writer::DataSet;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A remote AE: `AET@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Called AE title.
    pub ae_title: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// DICOM TLS, when the peer requires it (`None`: plain TCP).
    pub tls: Option<OutboundTls>,
}

impl Target {
    /// The target of a `[[pacs.destinations]]` entry, with its TLS settings.
    pub fn of(dest: &crate::config::PacsDestination) -> Target {
        Target {
            ae_title: dest.ae_title.clone(),
            host: dest.host.clone(),
            port: dest.port,
            tls: dest.outbound_tls(),
        }
    }
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
    /// A C-STORE went out in full and the peer ended the association without answering it
    /// (closed the connection, aborted, or let the time limit pass).
    #[error("no answer to the C-STORE: {0}")]
    Unanswered(String),
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
            tls: None,
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

/// This box's SCP first (an unspecified bind address is reached over loopback; only when
/// its plain port is on: with `dicom.plain = false` it speaks DICOM TLS alone, whose
/// server certificate need not name the loopback address), then the
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
            tls: None,
        },
    };
    config
        .dicom
        .plain
        .then_some(own)
        .into_iter()
        .chain(config.pacs.destinations.iter().map(|d| Peer {
            name: d.name.clone(),
            own: false,
            target: Target::of(d),
        }))
        .collect()
}

/// Opens an association with `target`: the one set-up of every SCU use, and its one error
/// mapping.
async fn connect(
    target: &Target,
    calling_ae: &str,
    contexts: &[(String, Vec<String>)],
) -> Result<Client, ScuError> {
    Client::connect(&Request {
        host: &target.host,
        port: target.port,
        called_ae: &target.ae_title,
        calling_ae,
        contexts,
        tls: target.tls.as_ref(),
    })
    .await
    .map_err(|e| ScuError::Association {
        target: target.to_string(),
        reason: e.to_string(),
    })
}

fn protocol(e: ClientError) -> ScuError {
    ScuError::Protocol(e.to_string())
}

/// Sends one C-ECHO; returns the round-trip time of the echo itself.
pub async fn echo(target: &Target, calling_ae: &str) -> Result<Duration, ScuError> {
    let contexts = [(
        crate::dimse::uids::VERIFICATION.to_string(),
        vec![crate::dimse::uids::IMPLICIT_VR_LITTLE_ENDIAN.to_string()],
    )];
    let mut assoc = connect(target, calling_ae, &contexts).await?;
    let Some(pc) = assoc.accepted().first().map(|c| c.0) else {
        assoc.abort().await;
        return Err(ScuError::Protocol("Verification was not accepted".into()));
    };
    let started = Instant::now();
    let rsp = assoc
        .request(pc, &Command::echo_rq(1), None)
        .await
        .map_err(protocol)?;
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

/// Whether `target` accepts a presentation context of `sop_class` (in Explicit or Implicit
/// VR Little Endian) from `calling_ae`: opens an association proposing it, then releases
/// it. For the connectivity checks of services the box asks for (Storage Commitment).
pub async fn accepts(target: &Target, calling_ae: &str, sop_class: &str) -> Result<bool, ScuError> {
    let contexts = [(
        sop_class.to_string(),
        vec![
            crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
            crate::dimse::uids::IMPLICIT_VR_LITTLE_ENDIAN.to_string(),
        ],
    )];
    let assoc = connect(target, calling_ae, &contexts).await?;
    let accepted = assoc.accepted().iter().any(|(_, c, _)| c == sop_class);
    let _ = assoc.release().await;
    Ok(accepted)
}

/// A Part 10 file ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The file.
    pub path: PathBuf,
    /// The file as it was opened to read its meta, when kept open ([`prepare_held`]): the
    /// data set is then streamed from the very file whose meta was read, whatever has
    /// been renamed onto the path since.
    pub held: Option<Arc<std::fs::File>>,
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

impl Prepared {
    /// Its data set, to be streamed from the file.
    pub fn data_set(&self) -> DataSet<'_> {
        DataSet {
            path: &self.path,
            held: self.held.as_deref(),
            offset: self.offset,
            len: self.len,
        }
    }
}

/// Reads the file meta of a Part 10 file; the file is opened again when it is sent (many
/// files can be prepared at once without holding a descriptor each).
pub fn prepare(path: &Path) -> Result<Prepared, ScuError> {
    let mut prepared = prepare_held(path)?;
    prepared.held = None;
    Ok(prepared)
}

/// [`prepare`], keeping the file open so that the data set sent is the one whose meta was
/// read (a retrieve's check of the stored syntax and instance holds for what it streams).
pub fn prepare_held(path: &Path) -> Result<Prepared, ScuError> {
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
        held: Some(Arc::new(f)),
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

/// Why a Storage Commitment request was not answered.
#[derive(Debug, thiserror::Error)]
pub enum CommitmentRequestError {
    /// The peer did not accept the Storage Commitment Push Model context.
    #[error("the peer did not accept Storage Commitment Push Model")]
    NotAccepted,
    /// The N-ACTION went unanswered or broke the association.
    #[error("{0}")]
    Failed(ScuError),
}

/// The presentation context Storage Commitment is asked on (proposed beside the objects').
pub fn commitment_context() -> (String, Vec<String>) {
    (
        uids::STORAGE_COMMITMENT_PUSH_MODEL.to_string(),
        vec![
            uids::EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
            uids::IMPLICIT_VR_LITTLE_ENDIAN.to_string(),
        ],
    )
}

/// Why a file was not sent (shared by every file of the association it concerns).
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotSent {
    /// More SOP class/transfer syntax pairs than one association can propose.
    #[error("more than 127 SOP class/transfer syntax pairs in one association")]
    TooManyContexts,
    /// The association could not be opened, or broke on this file or an earlier one.
    #[error("{0}")]
    Association(Arc<ScuError>),
}

/// The result of sending one file.
#[derive(Debug, Clone)]
pub struct SendResult {
    /// The file.
    pub path: PathBuf,
    /// The DIMSE status, or the reason it was not sent.
    pub outcome: Result<u16, NotSent>,
    /// Bytes of the data set.
    pub bytes: u64,
}

/// The DIMSE status a refused presentation context is reported as: "Refused: SOP Class
/// not supported".
pub const SOP_CLASS_NOT_SUPPORTED: u16 = crate::dimse::status::Status::SOP_CLASS_NOT_SUPPORTED.0;

/// Sends files over one association; every file gets a result. A file whose SOP class
/// and transfer syntax the peer did not accept gets [`SOP_CLASS_NOT_SUPPORTED`].
pub async fn send_files(
    target: &Target,
    calling_ae: &str,
    files: Vec<Prepared>,
) -> Vec<SendResult> {
    let (results, open) = send_files_on(target, calling_ae, files, &[]).await;
    if let Some(assoc) = open {
        assoc.release().await;
    }
    results
}

/// Sends files as [`send_files`] does, with `extra` presentation contexts proposed beside
/// theirs, and hands back the association when it is still sound (every C-STORE was
/// answered), for the caller to go on with (Storage Commitment) and release.
pub async fn send_files_on(
    target: &Target,
    calling_ae: &str,
    files: Vec<Prepared>,
    extra: &[(String, Vec<String>)],
) -> (Vec<SendResult>, Option<StoreAssociation>) {
    if files.is_empty() {
        return (Vec::new(), None);
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for f in &files {
        let p = (f.sop_class.clone(), f.transfer_syntax.clone());
        if !pairs.contains(&p) {
            pairs.push(p);
        }
    }
    let fail_all = |files: Vec<Prepared>, reason: NotSent| {
        files
            .into_iter()
            .map(|f| SendResult {
                path: f.path,
                outcome: Err(reason.clone()),
                bytes: 0,
            })
            .collect::<Vec<_>>()
    };
    if pairs.len() + extra.len() > 127 {
        return (fail_all(files, NotSent::TooManyContexts), None);
    }
    let contexts: Vec<(String, Vec<String>)> = pairs
        .into_iter()
        .map(|(c, ts)| (c, vec![ts]))
        .chain(extra.iter().cloned())
        .collect();
    let mut assoc = match StoreAssociation::open(target, calling_ae, &contexts).await {
        Ok(a) => a,
        Err(e) => return (fail_all(files, NotSent::Association(Arc::new(e))), None),
    };
    let mut results = Vec::with_capacity(files.len());
    let mut broken: Option<NotSent> = None;
    for f in files {
        if let Some(reason) = &broken {
            results.push(SendResult {
                path: f.path,
                outcome: Err(reason.clone()),
                bytes: 0,
            });
            continue;
        }
        let Some(pc) = assoc.context_for(&f.sop_class, &f.transfer_syntax) else {
            // The peer refused the presentation context: as final as a C-STORE answered
            // "SOP Class not supported", and reported as that status.
            log::warn!(
                "{}: peer did not accept {} in {}",
                target.ae_title,
                f.sop_class,
                f.transfer_syntax
            );
            results.push(SendResult {
                path: f.path,
                outcome: Ok(SOP_CLASS_NOT_SUPPORTED),
                bytes: 0,
            });
            continue;
        };
        let outcome = assoc
            .store(pc, &f.sop_class, &f.sop_instance, f.data_set(), None)
            .await
            .map_err(|e| NotSent::Association(Arc::new(e)));
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
        (results, Some(assoc))
    } else {
        assoc.abort().await;
        (results, None)
    }
}

/// An open C-STORE SCU association with several presentation contexts, for sending the
/// sub-operations of a C-MOVE.
pub struct StoreAssociation {
    assoc: Client,
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
        Ok(StoreAssociation {
            assoc: connect(target, calling_ae, contexts).await?,
            msg_id: 0,
        })
    }

    /// The accepted contexts: (id, SOP class, transfer syntax).
    pub fn accepted(&self) -> &[(u8, String, String)] {
        self.assoc.accepted()
    }

    /// The accepted context for `sop_class` in `transfer_syntax`.
    pub fn context_for(&self, sop_class: &str, transfer_syntax: &str) -> Option<u8> {
        self.accepted()
            .iter()
            .find(|(_, c, t)| c == sop_class && t == transfer_syntax)
            .map(|(id, _, _)| *id)
    }

    /// Sends one instance on context `pc`, marked as a sub-operation of C-MOVE
    /// `originator` (AE title, message ID) when given; returns the status of the response
    /// that answers it. A response to another message, instance, context or command, or
    /// none within the deadline, is an error ([`Client::request`]): the instance is not
    /// stored as far as the caller knows.
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
        let rsp = self
            .assoc
            .request(pc, &rq, Some(data))
            .await
            .map_err(|e| match e {
                e if e.is_unanswered() => ScuError::Unanswered(e.to_string()),
                e => protocol(e),
            })?;
        rsp.status
            .map(|s| s.0)
            .ok_or_else(|| ScuError::Protocol("response without a status".into()))
    }

    /// Asks the peer to commit to keeping `references` (Storage Commitment Push Model
    /// N-ACTION, transaction `transaction_uid`) on the context accepted for it; returns
    /// the status of the N-ACTION-RSP. The archive's answer itself comes later, in an
    /// N-EVENT-REPORT (see [`crate::deliver::commitment`]).
    pub async fn request_commitment(
        &mut self,
        transaction_uid: &str,
        references: &[crate::dimse::commitment::Reference],
    ) -> Result<u16, CommitmentRequestError> {
        let (pc, ts) = self
            .accepted()
            .iter()
            .find(|(_, c, _)| c == uids::STORAGE_COMMITMENT_PUSH_MODEL)
            .map(|(id, _, ts)| (*id, ts.clone()))
            .ok_or(CommitmentRequestError::NotAccepted)?;
        let data = crate::dimse::commitment::request(transaction_uid, references, &ts)
            .map_err(|e| CommitmentRequestError::Failed(ScuError::Protocol(e.to_string())))?;
        self.msg_id = self.msg_id.wrapping_add(1).max(1);
        let rq = Command::action_rq(
            self.msg_id,
            uids::STORAGE_COMMITMENT_PUSH_MODEL,
            uids::STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
            crate::dimse::commitment::REQUEST_COMMITMENT,
        );
        let rsp = self
            .assoc
            .action(pc, &rq, &data)
            .await
            .map_err(|e| CommitmentRequestError::Failed(protocol(e)))?;
        rsp.status.map(|s| s.0).ok_or_else(|| {
            CommitmentRequestError::Failed(ScuError::Protocol(
                "N-ACTION response without a status".into(),
            ))
        })
    }

    /// Waits for the next request the peer sends on this association (an archive's
    /// Storage Commitment report); returns its context, its transfer syntax, its command
    /// and its data set (at most 1 MiB). No time limit: the caller bounds the wait.
    pub async fn next_request(&mut self) -> Result<(u8, String, Command, Vec<u8>), ScuError> {
        const MAX_DATA: usize = 1 << 20;
        let (pc, rq, data) = self.assoc.next_request(MAX_DATA).await.map_err(protocol)?;
        let ts = self
            .accepted()
            .iter()
            .find(|(id, _, _)| *id == pc)
            .map(|(_, _, ts)| ts.clone())
            .ok_or_else(|| {
                ScuError::Protocol(format!("request on presentation context {pc}, not agreed"))
            })?;
        Ok((pc, ts, rq, data))
    }

    /// Answers a request read with [`StoreAssociation::next_request`].
    pub async fn answer(&mut self, pc: u8, rsp: &Command) -> Result<(), ScuError> {
        self.assoc.answer(pc, rsp).await.map_err(protocol)
    }

    /// Releases the association (errors are only logged: the work is done).
    pub async fn release(self) {
        if let Err(e) = self.assoc.release().await {
            log::debug!("release after C-STORE sub-operations: {e}");
        }
    }

    /// Aborts the association.
    pub async fn abort(self) {
        self.assoc.abort().await;
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
    fn the_own_scp_is_echoed_on_its_plain_port_only() {
        let mut cfg = crate::config::Config::default();
        let peers = configured_peers(&cfg);
        assert!(peers[0].own && peers[0].target.port == cfg.dicom.port);
        cfg.dicom.plain = false;
        assert!(configured_peers(&cfg).iter().all(|p| !p.own));
    }

    /// An archive (dicom-ul's acceptor, on a thread) that accepts the Storage Commitment
    /// context, sends `pdus` and waits a little; and our association to it, open.
    async fn archive_sending(
        pdus: Vec<dicom_ul::pdu::Pdu>,
    ) -> (StoreAssociation, std::thread::JoinHandle<()>) {
        use dicom_ul::association::server::ServerAssociationOptions;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let archive = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut assoc = ServerAssociationOptions::new()
                .accept_any()
                .with_abstract_syntax(uids::STORAGE_COMMITMENT_PUSH_MODEL)
                .establish(stream)
                .unwrap();
            for pdu in &pdus {
                if assoc.send(pdu).is_err() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        });
        let target = Target {
            ae_title: "ARCHIVE".into(),
            host: "127.0.0.1".into(),
            port,
            tls: None,
        };
        let assoc = StoreAssociation::open(&target, "DULI", &[commitment_context()])
            .await
            .unwrap();
        (assoc, archive)
    }

    /// An archive that sends hostile bytes on the association the push keeps open for its
    /// Storage Commitment report (dicom-ul's acceptor, crafting PDUs no real archive sends;
    /// the well-formed case is `pipeline.rs`, with pynetdicom): an oversized data set,
    /// fragments out of order, a command set that does not decode, an abort. Each ends the
    /// wait with an error, nothing held beyond the bound.
    #[tokio::test]
    async fn hostile_requests_on_the_push_association_end_it_with_an_error() {
        use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
        let pdv = |value_type, data: Vec<u8>, is_last| PDataValue {
            presentation_context_id: 1,
            value_type,
            is_last,
            data,
        };
        let mut report = Command::new(crate::dimse::CommandField::NEventReportRq);
        report.has_data_set = true;
        let command = crate::dimse::command::encode(&report);
        let big = vec![0u8; 60_000];
        let cases: Vec<(&str, Vec<Pdu>, &str)> = vec![
            (
                "a data set over 1 MiB",
                std::iter::once(pdv(PDataValueType::Command, command.clone(), true))
                    .chain((0..20).map(|_| pdv(PDataValueType::Data, big.clone(), false)))
                    .map(|p| Pdu::PData { data: vec![p] })
                    .collect(),
                "over 1048576 bytes",
            ),
            (
                "data before its command",
                vec![Pdu::PData {
                    data: vec![pdv(PDataValueType::Data, vec![1, 2], true)],
                }],
                "without a command announcing a data set",
            ),
            (
                "a command set that does not decode",
                vec![Pdu::PData {
                    data: vec![pdv(PDataValueType::Command, vec![0, 0, 0], true)],
                }],
                "command set truncated",
            ),
            (
                "a request on a context never proposed",
                vec![Pdu::PData {
                    data: vec![PDataValue {
                        presentation_context_id: 3,
                        ..pdv(PDataValueType::Command, command.clone(), true)
                    }],
                }],
                "context 3 was not accepted",
            ),
            (
                "an abort",
                vec![Pdu::AbortRQ {
                    source: dicom_ul::pdu::AbortRQSource::ServiceUser,
                }],
                "aborted",
            ),
        ];
        for (what, pdus, expected) in cases {
            let (mut assoc, archive) = archive_sending(pdus).await;
            let got = tokio::time::timeout(Duration::from_secs(10), assoc.next_request())
                .await
                .unwrap_or_else(|_| panic!("{what}: no end to the wait"));
            match got {
                Err(e) => assert!(e.to_string().contains(expected), "{what}: {e}"),
                Ok(r) => panic!("{what}: taken as a request: {:?}", r.2),
            }
            assoc.abort().await;
            archive.join().unwrap();
        }
    }

    /// Two requests packed into one PDU (allowed: a PDU carries any number of P-DATA
    /// values) are both read, the second by the next call, with its data set intact.
    #[tokio::test]
    async fn requests_packed_into_one_pdu_are_each_read() {
        use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
        let pdv = |value_type, data: Vec<u8>| PDataValue {
            presentation_context_id: 1,
            value_type,
            is_last: true,
            data,
        };
        let mut first = Command::new(crate::dimse::CommandField::NEventReportRq);
        first.message_id = Some(7);
        first.has_data_set = true;
        let mut second = Command::new(crate::dimse::CommandField::NEventReportRq);
        second.message_id = Some(8);
        let packed = Pdu::PData {
            data: vec![
                pdv(
                    PDataValueType::Command,
                    crate::dimse::command::encode(&first),
                ),
                pdv(PDataValueType::Data, vec![1, 2, 3, 4]),
                pdv(
                    PDataValueType::Command,
                    crate::dimse::command::encode(&second),
                ),
            ],
        };
        let (mut assoc, archive) = archive_sending(vec![packed]).await;
        for (id, expected) in [(7, vec![1, 2, 3, 4]), (8, vec![])] {
            let (pc, _, rq, data) =
                tokio::time::timeout(Duration::from_secs(10), assoc.next_request())
                    .await
                    .unwrap_or_else(|_| panic!("request {id} never read"))
                    .unwrap();
            assert_eq!((pc, rq.message_id, data), (1, Some(id), expected));
        }
        assoc.abort().await;
        archive.join().unwrap();
    }

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
