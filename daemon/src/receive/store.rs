//! The Storage service (C-STORE SCP): one instance is streamed to a temp file as its data
//! fragments arrive, then made durable (fsync, header parse, rename, index commit, index
//! flush) before the response says Success. Anything that fails on the way answers with a
//! failure status and leaves no trace in the index.
//!
//! While the data set streams in, its size is held to `dicom.max_instance_mb` and the free
//! space of the data disk is checked against the reserve every [`DISK_CHECK_EVERY`] bytes:
//! past either, [`Incoming::write`] returns a [`StreamLimit`], the association is aborted and
//! the partial file removed (a peer that never marks a fragment last cannot fill the disk).
//!
//! The result objects this box generates (SR, SC) cannot be replaced from outside: a
//! C-STORE of one of their SOP Instance UIDs is refused with 0124 (not authorized) and an
//! Error Comment, drained, and audited; the store refuses it too ([`StoreError::Protected`]).

use super::Scp;
use crate::dimse::refusal::{Cause, Refused};
use crate::model::InstanceRecord;
use crate::store::files::IncomingFile;
use crate::store::header;
use crate::store::StoreError;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Default of `dicom.max_instance_mb`, in bytes.
pub const DEFAULT_MAX_INSTANCE: u64 = 2048 * 1024 * 1024;

/// Bytes received between two checks of the disk reserve while an instance streams in.
pub const DISK_CHECK_EVERY: u64 = 8 * 1024 * 1024;

/// Why an instance stream was cut off; the association is then aborted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamLimit {
    /// The instance grew past `dicom.max_instance_mb`.
    #[error("instance {sop_instance} exceeds the maximum instance size of {limit} bytes")]
    TooLarge {
        /// The command's SOP Instance UID.
        sop_instance: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The data disk fell below its reserve while the instance streamed in.
    #[error("disk below reserve while receiving {sop_instance}: {free_mb} MB free")]
    DiskReserve {
        /// The command's SOP Instance UID.
        sop_instance: String,
        /// Free MiB when checked.
        free_mb: u64,
    },
}

/// Why an instance is refused or not stored; answered with the status of its
/// [`Cause`] (see [`crate::dimse::refusal`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreFailure {
    /// The command lacks Affected SOP Class or Instance UID.
    #[error("Affected SOP Class/Instance UID missing in C-STORE-RQ")]
    MissingUids,
    /// The data disk is below its reserve.
    #[error("disk below reserve: {free_mb} MB free")]
    DiskReserve {
        /// Free MiB when checked.
        free_mb: u64,
    },
    /// The free space of the data disk cannot be read.
    #[error("cannot check disk space: {0}")]
    DiskUnknown(std::io::Error),
    /// An admission check refused (its reason).
    #[error("{0}")]
    Admission(String),
    /// A new instance of a study that holds as many as one study may.
    #[error("study {study} already holds {held} instances, the most one study may")]
    StudyFull {
        /// Its Study Instance UID.
        study: String,
        /// Instances it holds.
        held: u64,
    },
    /// Writing the instance's file failed.
    #[error("cannot write: {0}")]
    Write(std::io::Error),
    /// Making the file durable failed.
    #[error("fsync failed: {0}")]
    Fsync(std::io::Error),
    /// The data set cannot be parsed or breaks a limit.
    #[error(transparent)]
    Header(#[from] crate::store::header::HeaderError),
    /// A UID of the data set differs from the command's.
    #[error("data set {what} {data} differs from the command's {command}")]
    Mismatch {
        /// "SOP Instance UID" or "SOP Class UID".
        what: &'static str,
        /// The data set's value.
        data: String,
        /// The command's value.
        command: String,
    },
    /// The SOP Instance UID belongs to a result object this box generated.
    #[error("{0}")]
    Protected(String),
    /// The Patient ID begins with the prefix reserved for the console's manual uploads,
    /// whose results are never sent.
    #[error("Patient ID prefix {prefix} is reserved for uploads at the console")]
    ReservedPatientId {
        /// The reserved prefix.
        prefix: &'static str,
    },
    /// Placing the file or committing the index entry failed.
    #[error("cannot store: {0}")]
    Store(crate::store::StoreError),
    /// Flushing the index failed.
    #[error("index flush: {0}")]
    Flush(crate::store::StoreError),
    /// The blocking task that stores the instance failed.
    #[error("store task failed: {0}")]
    Task(String),
}

impl From<StoreFailure> for Refused {
    fn from(e: StoreFailure) -> Refused {
        let cause = match &e {
            StoreFailure::MissingUids => Cause::MissingUids,
            StoreFailure::DiskReserve { .. } | StoreFailure::DiskUnknown(_) => Cause::DiskReserve,
            StoreFailure::Admission(_) => Cause::Admission,
            StoreFailure::StudyFull { .. } => Cause::StudyFull,
            StoreFailure::Write(_)
            | StoreFailure::Fsync(_)
            | StoreFailure::Store(_)
            | StoreFailure::Flush(_)
            | StoreFailure::Task(_) => Cause::WriteFailed,
            StoreFailure::Header(_) => Cause::CannotUnderstand,
            StoreFailure::Mismatch { .. } => Cause::DataSetMismatch,
            StoreFailure::Protected(_) => Cause::Protected,
            StoreFailure::ReservedPatientId { .. } => Cause::ReservedPatientId,
        };
        Refused::new(cause, e.to_string())
    }
}

/// An instance being received.
pub struct Incoming {
    file: Option<IncomingFile>,
    /// The status to answer when the data set is complete, if already decided (refusals
    /// still drain the data set).
    refused: Option<Refused>,
    sop_class: String,
    sop_instance: String,
    /// Data-set bytes received so far (also while refusing and draining).
    received: u64,
    /// Value of `received` at the last disk reserve check.
    checked_at: u64,
}

impl Incoming {
    /// Starts receiving an instance announced by a C-STORE-RQ. Writes the Part 10 header
    /// (file meta) with the command's UIDs and the context's transfer syntax.
    pub fn begin(
        scp: &Scp,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
        calling_ae: &str,
    ) -> Incoming {
        let mut incoming = Incoming {
            file: None,
            refused: None,
            sop_class: sop_class.to_string(),
            sop_instance: sop_instance.to_string(),
            received: 0,
            checked_at: 0,
        };
        if sop_instance.is_empty() || sop_class.is_empty() {
            incoming.refused = Some(StoreFailure::MissingUids.into());
            return incoming;
        }
        if let Some(comment) = protected(scp, sop_instance, calling_ae) {
            incoming.refused = Some(StoreFailure::Protected(comment).into());
            return incoming;
        }
        match scp.store.files().free_bytes() {
            Ok(free) if free < scp.disk_reserve => {
                incoming.refused = Some(
                    StoreFailure::DiskReserve {
                        free_mb: free / (1024 * 1024),
                    }
                    .into(),
                );
                return incoming;
            }
            Err(e) => {
                incoming.refused = Some(StoreFailure::DiskUnknown(e).into());
                return incoming;
            }
            Ok(_) => {}
        }
        for check in &scp.admission {
            if let Some(reason) = check() {
                incoming.refused = Some(StoreFailure::Admission(reason).into());
                return incoming;
            }
        }
        match start_file(scp, sop_class, sop_instance, transfer_syntax, calling_ae) {
            Ok(f) => incoming.file = Some(f),
            Err(e) => {
                log::error!("cannot create a temp file for {sop_instance}: {e}");
                incoming.refused = Some(StoreFailure::Write(e).into());
            }
        }
        incoming
    }

    /// Appends a data-set fragment. An error means the stream must be cut off: the caller
    /// aborts the association and drops this instance, which removes its partial file.
    /// Refused instances that are only drained are held to the same size limit.
    pub fn write(&mut self, scp: &Scp, bytes: &[u8]) -> Result<(), StreamLimit> {
        self.received = self.received.saturating_add(bytes.len() as u64);
        if self.received > scp.max_instance {
            return Err(self.cut_off(
                scp,
                StreamLimit::TooLarge {
                    sop_instance: self.sop_instance.clone(),
                    limit: scp.max_instance,
                },
            ));
        }
        if self.file.is_some() && self.received - self.checked_at >= DISK_CHECK_EVERY {
            self.checked_at = self.received;
            if let Ok(free) = scp.store.files().free_bytes() {
                if free < scp.disk_reserve {
                    return Err(self.cut_off(
                        scp,
                        StreamLimit::DiskReserve {
                            sop_instance: self.sop_instance.clone(),
                            free_mb: free / (1024 * 1024),
                        },
                    ));
                }
            }
        }
        self.append(bytes);
        Ok(())
    }

    /// Counts and logs a stream cut off, and removes the partial file now.
    fn cut_off(&mut self, scp: &Scp, why: StreamLimit) -> StreamLimit {
        self.file = None;
        scp.metrics
            .instances_failed_total
            .fetch_add(1, Ordering::Relaxed);
        log::warn!("C-STORE cut off: {why}");
        why
    }

    fn append(&mut self, bytes: &[u8]) {
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.write(bytes) {
                log::error!("write of {} failed: {e}", self.sop_instance);
                self.file = None;
                self.refused = Some(StoreFailure::Write(e).into());
            }
        }
    }

    /// Finishes the instance: durable file, parsed header, placed file, index entry
    /// flushed. Returns the study it was stored in, or why it was not.
    pub async fn finish(self, scp: &Scp, calling_ae: &str) -> Result<String, Refused> {
        let started = Instant::now();
        let stored = self.store(scp, calling_ae).await.inspect_err(|r| {
            scp.metrics
                .instances_failed_total
                .fetch_add(1, Ordering::Relaxed);
            log::warn!("C-STORE refused ({}): {}", r.status(), r.comment);
        })?;
        scp.metrics
            .store_seconds
            .observe(started.elapsed().as_secs_f64());
        scp.metrics
            .instances_stored_total
            .fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "stored {} ({} bytes, {}) of study {}",
            stored.sop_instance_uid,
            stored.size,
            stored.transfer_syntax,
            stored.study_instance_uid
        );
        Ok(stored.study_instance_uid)
    }

    async fn store(self, scp: &Scp, calling_ae: &str) -> Result<InstanceRecord, Refused> {
        if let Some(refused) = self.refused {
            return Err(refused);
        }
        let Some(file) = self.file else {
            return Err(StoreFailure::Task("no file".into()).into());
        };
        let sop_class = self.sop_class;
        let sop_instance = self.sop_instance;
        let store = scp.store.clone();
        let source_ae = calling_ae.to_string();
        let max_instances = scp.max_instances_per_study;
        let (rec, previous, replaced) =
            tokio::task::spawn_blocking(move || -> Result<Placed, StoreFailure> {
                let staged = file.finish().map_err(StoreFailure::Fsync)?;
                let header = header::read_header(staged.path())?;
                // The file meta was written here from the command: a UID taken from it
                // would check the command against itself.
                if let Some(missing) = header.identity_from_meta {
                    return Err(header::HeaderError::Missing(missing).into());
                }
                if header
                    .study
                    .patient_id
                    .starts_with(crate::console::upload::PATIENT_PREFIX)
                {
                    return Err(StoreFailure::ReservedPatientId {
                        prefix: crate::console::upload::PATIENT_PREFIX,
                    });
                }
                for (what, data, command) in [
                    (
                        "SOP Instance UID",
                        &header.instance.sop_instance_uid,
                        &sop_instance,
                    ),
                    ("SOP Class UID", &header.instance.sop_class_uid, &sop_class),
                ] {
                    if data != command {
                        return Err(StoreFailure::Mismatch {
                            what,
                            data: data.clone(),
                            command: command.clone(),
                        });
                    }
                }
                let study = store
                    .study(&header.instance.study_instance_uid)
                    .map_err(StoreFailure::Store)?;
                if let Some(s) = &study {
                    let known = || {
                        store.instance(&sop_instance).map(|i| {
                            i.is_some_and(|i| i.study_instance_uid == s.study_instance_uid)
                        })
                    };
                    if s.instances >= max_instances && !known().map_err(StoreFailure::Store)? {
                        return Err(StoreFailure::StudyFull {
                            study: s.study_instance_uid.clone(),
                            held: s.instances,
                        });
                    }
                }
                let patient_before = study.map(|s| s.patient_id).unwrap_or_default();
                store
                    .place_and_commit(staged, &header, &source_ae, false, &[])
                    .map(|(rec, commit)| {
                        let replaced = commit
                            .patient_replaced
                            .then_some((patient_before, commit.study.patient_id));
                        // The same instance sent before under another study: its old file
                        // goes once the move is durable.
                        (rec, commit.moved_from, replaced)
                    })
                    .map_err(|e| match e {
                        StoreError::Protected(_) => StoreFailure::Protected(e.to_string()),
                        e => StoreFailure::Store(e),
                    })
            })
            .await
            .map_err(|e| StoreFailure::Task(e.to_string()))??;
        scp.store.flush().await.map_err(|e| {
            log::error!("index flush failed: {e}");
            StoreFailure::Flush(e)
        })?;
        if let Some((before, after)) = replaced {
            patient_replaced(scp, calling_ae, &rec, &before, &after);
        }
        if let Some(previous) = previous {
            log::warn!(
                "instance {} sent again under study {} (was in study {}): moved",
                rec.sop_instance_uid,
                rec.study_instance_uid,
                previous.study_instance_uid
            );
            if let Err(e) = scp.store.remove_superseded(&previous) {
                log::error!("{}: the superseded file stays: {e}", previous.path);
            }
        }
        Ok(rec)
    }
}

/// What storing one instance gives: its record, the record it replaced in another study,
/// and the Patient IDs before and after when it replaced its study's patient identity.
type Placed = (
    InstanceRecord,
    Option<InstanceRecord>,
    Option<(String, String)>,
);

/// Logs (by UIDs only) and audits (with both Patient IDs) an instance that gave its study
/// another patient identity: the study is analysed and reported again under it.
fn patient_replaced(scp: &Scp, calling_ae: &str, rec: &InstanceRecord, before: &str, after: &str) {
    use crate::audit::{Action, Event};
    log::warn!(
        "instance {} names another patient than the earlier instances of study {}: the \
         study now carries the newest patient identity and is analysed and reported again",
        rec.sop_instance_uid,
        rec.study_instance_uid
    );
    let event = Event::new(
        &format!("ae:{calling_ae}"),
        Action::Import,
        &rec.study_instance_uid,
    )
    .detail(format!(
        "patient identity of the study replaced by instance {}: Patient ID {before:?} -> {after:?}",
        rec.sop_instance_uid
    ));
    if let Err(e) = scp.audit.append(event) {
        log::error!("audit trail: cannot record a patient identity change: {e}");
    }
}

/// The refusal comment when `sop_instance` is a result object this box generated (which
/// no peer may replace), after auditing the attempt; `None` otherwise.
fn protected(scp: &Scp, sop_instance: &str, calling_ae: &str) -> Option<String> {
    use crate::audit::{Action, Event};
    let ours = match scp.store.instance(sop_instance) {
        Ok(Some(rec)) if rec.generated => rec,
        _ => return None,
    };
    let comment = "SOP Instance UID belongs to a result object of this device".to_string();
    log::warn!(
        "C-STORE from {calling_ae:?} would replace {sop_instance}, a result object this device \
         generated in study {}: refused",
        ours.study_instance_uid
    );
    let event = Event::new(&format!("ae:{calling_ae}"), Action::Import, sop_instance)
        .detail(format!(
            "C-STORE refused (0124): would replace the generated {} of study {}",
            ours.modality, ours.study_instance_uid
        ))
        .failed();
    if let Err(e) = scp.audit.append(event) {
        log::error!("audit trail: cannot record a refused C-STORE: {e}");
    }
    Some(comment)
}

fn start_file(
    scp: &Scp,
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
    calling_ae: &str,
) -> std::io::Result<IncomingFile> {
    let meta = dicom_object::meta::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(crate::ul::negotiate::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::ul::negotiate::IMPLEMENTATION_VERSION)
        .source_application_entity_title(calling_ae)
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(&[0u8; 128]);
    head.extend_from_slice(b"DICM");
    meta.write(&mut head)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut file = scp.store.files().incoming()?;
    file.write(&head)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Audit;
    use crate::metrics::Metrics;
    use crate::store::Store;
    use std::sync::Arc;
    use std::time::Duration;

    fn scp(dir: &std::path::Path) -> Scp {
        let store = Arc::new(Store::open(dir).unwrap());
        let audit = Arc::new(Audit::open(&store).unwrap());
        let (events, _) = tokio::sync::mpsc::channel(1);
        let mut scp = Scp::new(
            crate::receive::ScpParts {
                store,
                audit,
                metrics: Arc::new(Metrics::default()),
                events,
                commitments: crate::deliver::commitment::Commitments::new(),
            },
            &crate::config::Config::default(),
        );
        scp.artim = Duration::from_secs(5);
        scp.idle = Duration::from_secs(5);
        scp.max_associations = 4;
        scp.disk_reserve = 0;
        scp.max_instance = crate::receive::store::DEFAULT_MAX_INSTANCE;
        scp
    }

    fn leftovers(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir.join("tmp")).unwrap().count()
    }

    const DX: &str = "1.2.840.10008.5.1.4.1.1.1.1";
    const TS: &str = "1.2.840.10008.1.2.1";

    /// A minimal Explicit VR Little Endian data set of one DX instance of `study`.
    fn data_set(study: &str, sop: &str) -> Vec<u8> {
        use crate::dataset_guard::fixtures::{padded_uid, short};
        [
            short(0x0008, 0x0016, b"UI", &padded_uid(DX)),
            short(0x0008, 0x0018, b"UI", &padded_uid(sop)),
            short(0x0010, 0x0020, b"LO", b"P1"),
            short(0x0020, 0x000D, b"UI", &padded_uid(study)),
            short(0x0020, 0x000E, b"UI", &padded_uid("1.2.9.9")),
        ]
        .concat()
    }

    /// A study holds at most `dicom.max_instances_per_study`: a new instance past it is
    /// refused (A700) and not stored, while one it already holds may be sent again.
    #[tokio::test]
    async fn a_study_holds_at_most_its_instance_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut scp = scp(dir.path());
        scp.max_instances_per_study = 2;
        let send = |scp: &Scp, sop: &str| {
            let mut incoming = Incoming::begin(scp, DX, sop, TS, "PEER");
            incoming.write(scp, &data_set("1.2.9", sop)).unwrap();
            incoming
        };
        for sop in ["1.2.9.1", "1.2.9.2"] {
            send(&scp, sop).finish(&scp, "PEER").await.unwrap();
        }
        let refused = send(&scp, "1.2.9.3")
            .finish(&scp, "PEER")
            .await
            .unwrap_err();
        assert_eq!(
            refused.status(),
            crate::dimse::status::Status::OUT_OF_RESOURCES
        );
        assert!(refused.comment.contains("2 instances"), "{refused}");
        assert_eq!(scp.store.instances_of("1.2.9").unwrap().len(), 2);
        send(&scp, "1.2.9.2").finish(&scp, "PEER").await.unwrap();
        assert_eq!(scp.store.instances_of("1.2.9").unwrap().len(), 2);
    }

    #[test]
    fn an_instance_past_the_size_limit_is_cut_off_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut scp = scp(dir.path());
        scp.max_instance = 1024 * 1024;
        let mut incoming = Incoming::begin(&scp, DX, "1.2.3.4", TS, "PEER");
        assert_eq!(leftovers(dir.path()), 1);
        let chunk = vec![0u8; 256 * 1024];
        for _ in 0..4 {
            incoming.write(&scp, &chunk).unwrap();
        }
        assert!(matches!(
            incoming.write(&scp, &chunk),
            Err(StreamLimit::TooLarge { limit, .. }) if limit == 1024 * 1024
        ));
        // The partial file is gone at once, before the association is even aborted.
        assert_eq!(leftovers(dir.path()), 0);
        assert_eq!(
            scp.metrics.instances_failed_total.load(Ordering::Relaxed),
            1
        );
        drop(incoming);
        assert_eq!(scp.store.instances_of("1.2.3").unwrap().len(), 0);
    }

    #[test]
    fn the_disk_reserve_is_checked_while_streaming() {
        let dir = tempfile::tempdir().unwrap();
        let mut scp = scp(dir.path());
        // Free space was fine when the C-STORE started...
        let mut incoming = Incoming::begin(&scp, DX, "1.2.3.5", TS, "PEER");
        let chunk = vec![0u8; 1024 * 1024];
        incoming.write(&scp, &chunk).unwrap();
        // ...then the disk fills up (a reserve above any free space stands in for it).
        scp.disk_reserve = u64::MAX;
        let mut cut = None;
        for _ in 0..(DISK_CHECK_EVERY / chunk.len() as u64 + 1) {
            if let Err(e) = incoming.write(&scp, &chunk) {
                cut = Some(e);
                break;
            }
        }
        assert!(
            matches!(cut, Some(StreamLimit::DiskReserve { .. })),
            "{cut:?}"
        );
        assert_eq!(leftovers(dir.path()), 0);
    }

    #[test]
    fn a_refused_instance_is_still_held_to_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut scp = scp(dir.path());
        scp.max_instance = 64 * 1024;
        // Refused at the start (no SOP Instance UID): drained, but not forever.
        let mut incoming = Incoming::begin(&scp, DX, "", TS, "PEER");
        assert!(incoming.write(&scp, &[0u8; 60 * 1024]).is_ok());
        assert!(incoming.write(&scp, &[0u8; 8 * 1024]).is_err());
    }
}
