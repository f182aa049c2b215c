//! The data set of a retrieve sub-operation: the stored bytes when the peer accepted the
//! stored transfer syntax, otherwise the instance decoded and re-encoded in an uncompressed
//! syntax the peer accepted (explicit VR little endian first).
//!
//! Stored instances came from outside, so re-encoding holds them to the same rules as
//! analysis: the pre-scan, `inference.max_pixels` and the Pixel Data size against the image
//! attributes before anything is loaded, and the stream checks of the codecs. It runs in
//! the confined child process ([`crate::infer::decode_sandbox`]), which writes the new
//! encoding into a scratch file the data set is then streamed from: the daemon holds no
//! decoded instance, however large the instance declares itself, and at most
//! [`TRANSCODE_TURNS`] children re-encode at once on the box.

use crate::dimse::uids;
use crate::infer::decode_sandbox;
use crate::infer::dicom_image::check_held_pixel_budget;
use crate::infer::stream_check::check_stream;
use crate::model::InstanceRecord;
use crate::scu::{self, Prepared};
use crate::store::files::ScratchFile;
use dicom_encoding::TransferSyntaxIndex;
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Why an instance cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Retention removed its pixel data.
    #[error("pixel data of {0} was pruned by retention")]
    Pruned(String),
    /// The file could not be read.
    #[error("{0}")]
    File(String),
    /// The peer accepts neither the stored syntax nor an uncompressed one.
    #[error("the peer accepts neither {stored} nor an uncompressed transfer syntax")]
    NoSyntax {
        /// The stored transfer syntax.
        stored: String,
    },
    /// The blocking task that prepared it failed.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// Decoding or re-encoding failed.
    #[error("cannot transcode from {from} to {to}: {reason}")]
    Transcode {
        /// Stored syntax.
        from: String,
        /// Target syntax.
        to: String,
        /// Why.
        reason: String,
    },
}

/// A data set ready to send, in `transfer_syntax`.
#[derive(Debug)]
pub enum Payload {
    /// The stored file's data set, unchanged.
    Stored(Prepared),
    /// Re-encoded into a scratch file (removed when this is dropped).
    Transcoded(Transcoded),
}

/// A data set re-encoded into a scratch file.
#[derive(Debug)]
pub struct Transcoded {
    file: ScratchFile,
    len: u64,
}

impl Transcoded {
    /// The file holding the data set (no file meta).
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty (never, for a data set that was made).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Payload {
    /// The data set as the SCU sends it: streamed from its file either way.
    pub fn data_set(&self) -> scu::DataSet<'_> {
        match self {
            Payload::Stored(p) => p.data_set(),
            Payload::Transcoded(t) => scu::DataSet {
                path: t.path(),
                held: Some(t.file.file()),
                offset: 0,
                len: t.len,
            },
        }
    }
}

/// What re-encoding one instance may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most pixel samples an instance re-encoded may declare (`inference.max_pixels`).
    pub max_pixels: u64,
    /// Free bytes the data disk keeps (`retention.disk_reserve_mb`): an instance whose
    /// uncompressed copy would take the disk below it is not re-encoded, as a C-STORE
    /// that would is not stored.
    pub disk_reserve: u64,
}

/// Re-encodings (children) that may run at once on the box; further retrieves wait.
pub const TRANSCODE_TURNS: usize = 2;

static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(TRANSCODE_TURNS);

/// Uncompressed syntaxes any decodable instance can be re-encoded in, by preference.
pub const FALLBACK_SYNTAXES: [&str; 2] = [
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
];

/// Chooses the syntax to send `inst` in among `accepted` (the peer's accepted syntaxes for
/// its SOP class): the stored one if there, else a fallback.
pub fn choose(inst: &InstanceRecord, accepted: &[String]) -> Option<String> {
    if accepted.contains(&inst.transfer_syntax) {
        return Some(inst.transfer_syntax.clone());
    }
    FALLBACK_SYNTAXES
        .iter()
        .find(|f| accepted.iter().any(|t| t == *f))
        .map(|s| s.to_string())
}

/// Prepares `inst` (a file under `root`) for sending in transfer syntax `ts`; an instance
/// that must be re-encoded is refused when it declares more than `limits.max_pixels` pixel
/// samples, or when its uncompressed copy would take the disk below `limits.disk_reserve`. Blocking; the daemon calls it through [`load_async`], which holds the
/// re-encoding to [`TRANSCODE_TURNS`] at once.
pub fn load(
    root: &Path,
    inst: &InstanceRecord,
    ts: &str,
    limits: Limits,
) -> Result<Payload, PayloadError> {
    if inst.pruned {
        return Err(PayloadError::Pruned(inst.sop_instance_uid.clone()));
    }
    let path = root.join(&inst.path);
    if ts == inst.transfer_syntax {
        let prepared = scu::prepare_held(&path).map_err(|e| PayloadError::File(e.to_string()))?;
        // The file is read as it is now: one sent again since the retrieve read the index
        // (in another syntax, or another instance placed at the path) is not sent as the
        // bytes of the syntax agreed for this one. The data set is streamed from this same
        // open file, so a copy renamed onto the path after the check is not sent either.
        if prepared.transfer_syntax != ts || prepared.sop_instance != inst.sop_instance_uid {
            return Err(PayloadError::File(format!(
                "{} changed since the retrieve began (now {} in {}); retrieve it again",
                inst.sop_instance_uid, prepared.sop_instance, prepared.transfer_syntax
            )));
        }
        return Ok(Payload::Stored(prepared));
    }
    let err = |reason: String| PayloadError::Transcode {
        from: inst.transfer_syntax.clone(),
        to: ts.to_string(),
        reason,
    };
    let target = TransferSyntaxRegistry
        .get(ts)
        .ok_or_else(|| err("unknown transfer syntax".into()))?;
    // One open file for the checks and the re-encoding: a copy renamed onto the path
    // meanwhile is neither re-encoded nor sent.
    let held = std::fs::File::open(&path).map_err(|e| PayloadError::File(e.to_string()))?;
    let budget =
        check_held_pixel_budget(&held, limits.max_pixels).map_err(|e| err(e.to_string()))?;
    if budget.sop_instance_uid != inst.sop_instance_uid {
        return Err(PayloadError::File(format!(
            "{} changed since the retrieve began (now {}); retrieve it again",
            inst.sop_instance_uid, budget.sop_instance_uid
        )));
    }
    let image_bytes = budget.bytes;
    let size = held
        .metadata()
        .map_err(|e| PayloadError::File(e.to_string()))?
        .len();
    let copy = size.saturating_add(image_bytes);
    let free = crate::store::files::free_bytes(root)
        .map_err(|e| err(format!("cannot read the free disk space: {e}")))?;
    if free.saturating_sub(copy) < limits.disk_reserve {
        return Err(err(format!(
            "its uncompressed copy (about {} MB) would take the data disk ({} MB free) below \
             its reserve of {} MB",
            copy / MB,
            free / MB,
            limits.disk_reserve / MB
        )));
    }
    let scratch = ScratchFile::create(root).map_err(|e| {
        err(format!(
            "cannot create a scratch file to re-encode into: {e}"
        ))
    })?;
    // The child's output is cut past the header and 4 bytes per admitted pixel sample.
    let bound = size
        .saturating_add(limits.max_pixels.saturating_mul(4))
        .saturating_add(1024 * 1024);
    let len = match decode_sandbox::decoder_exe() {
        Some(exe) => decode_sandbox::transcode(
            &exe,
            &held,
            ts,
            scratch.file(),
            bound,
            decode_sandbox::DEADLINE,
        )
        .map_err(|e| err(e.to_string()))?,
        None if decode_sandbox::is_sandboxed(&inst.transfer_syntax) => {
            return Err(err(
                "no duli executable to decode it in its confined process".into(),
            ))
        }
        // Only without a `duli` executable (the crate's unit tests): in this process,
        // one at a time.
        None => transcode_here(&path, &inst.transfer_syntax, target, &scratch, err)?,
    };
    Ok(Payload::Transcoded(Transcoded { file: scratch, len }))
}

/// Re-encodes in this process into `scratch`; returns the length written, or the failure
/// as `err` makes it.
fn transcode_here(
    path: &Path,
    stored: &str,
    target: &dicom_encoding::TransferSyntax,
    scratch: &ScratchFile,
    err: impl Fn(String) -> PayloadError,
) -> Result<u64, PayloadError> {
    let _turn = TRANSCODING.lock().unwrap_or_else(|p| p.into_inner());
    let mut obj = dicom_object::open_file(path).map_err(|e| err(e.to_string()))?;
    check_stream(&obj, stored).map_err(|e| err(e.to_string()))?;
    // A decoder defect the checks do not foresee costs this sub-operation, not the thread.
    catch_unwind(AssertUnwindSafe(|| obj.transcode(target)))
        .map_err(|_| err("the decoder failed on this pixel data".into()))?
        .map_err(|e| err(e.to_string()))?;
    let mut out = std::io::BufWriter::new(scratch.file());
    obj.write_dataset_with_ts(&mut out, target)
        .map_err(|e| err(e.to_string()))?;
    std::io::Write::flush(&mut out).map_err(|e| err(e.to_string()))?;
    drop(out);
    scratch.size().map_err(|e| err(e.to_string()))
}

const MB: u64 = 1024 * 1024;

/// Held while an instance is re-encoded in this process ([`transcode_here`]).
static TRANSCODING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`load`] on a blocking thread.
pub async fn load_async(
    root: &Path,
    inst: &InstanceRecord,
    ts: &str,
    limits: Limits,
) -> Result<Payload, PayloadError> {
    let (root, inst, ts) = (root.to_path_buf(), inst.clone(), ts.to_string());
    if ts == inst.transfer_syntax {
        return tokio::task::spawn_blocking(move || load(&root, &inst, &ts, limits)).await?;
    }
    // The turn moves into the blocking task, so it is held exactly as long as the child.
    let turn = TURNS.acquire().await.map_err(|e| PayloadError::Transcode {
        from: inst.transfer_syntax.clone(),
        to: ts.clone(),
        reason: e.to_string(),
    })?;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        load(&root, &inst, &ts, limits)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset_guard::fixtures::{part10_with_meta, short};

    /// A file sent as stored must still be what the index said when the retrieve chose
    /// its syntax: one sent again meanwhile in another syntax (or another instance at the
    /// path) is refused for this sub-operation, never sent under the agreed syntax.
    #[test]
    fn a_file_changed_since_the_index_was_read_is_not_sent_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        let dx = "1.2.840.10008.5.1.4.1.1.1.1";
        let body = short(0x0010, 0x0020, b"LO", b"P1");
        let file = part10_with_meta(dx, "1.2.3.4", uids::EXPLICIT_VR_LITTLE_ENDIAN, &body);
        std::fs::write(dir.path().join("x.dcm"), file).unwrap();
        let limits = Limits {
            max_pixels: 1,
            disk_reserve: 0,
        };
        let inst = |sop: &str, ts: &str| InstanceRecord {
            sop_instance_uid: sop.into(),
            sop_class_uid: dx.into(),
            transfer_syntax: ts.into(),
            path: "x.dcm".into(),
            ..Default::default()
        };
        let ok = load(
            dir.path(),
            &inst("1.2.3.4", uids::EXPLICIT_VR_LITTLE_ENDIAN),
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
            limits,
        );
        assert!(matches!(ok, Ok(Payload::Stored(_))), "{ok:?}");
        let jpeg_ls = "1.2.840.10008.1.2.4.80";
        for (what, record) in [
            ("another syntax", inst("1.2.3.4", jpeg_ls)),
            (
                "another instance",
                inst("1.2.3.5", uids::EXPLICIT_VR_LITTLE_ENDIAN),
            ),
        ] {
            let ts = record.transfer_syntax.clone();
            let err = load(dir.path(), &record, &ts, limits).unwrap_err();
            assert!(
                err.to_string().contains("changed since the retrieve began"),
                "{what}: {err}"
            );
        }
    }
    /// The data set streamed is the one whose meta was checked: a copy renamed onto the
    /// path after the check (a modality sending the instance again mid-retrieve) does not
    /// go out under the checked syntax.
    #[tokio::test]
    async fn the_checked_file_is_the_one_streamed_even_if_replaced_after_the_check() {
        use crate::ul::framing::PduReader;
        use crate::ul::writer::Writer;
        let dir = tempfile::tempdir().unwrap();
        let dx = "1.2.840.10008.5.1.4.1.1.1.1";
        let first = short(0x0010, 0x0020, b"LO", b"FIRST-COPY");
        let file = part10_with_meta(dx, "1.2.3.4", uids::EXPLICIT_VR_LITTLE_ENDIAN, &first);
        std::fs::write(dir.path().join("x.dcm"), file).unwrap();
        let inst = InstanceRecord {
            sop_instance_uid: "1.2.3.4".into(),
            sop_class_uid: dx.into(),
            transfer_syntax: uids::EXPLICIT_VR_LITTLE_ENDIAN.into(),
            path: "x.dcm".into(),
            ..Default::default()
        };
        let limits = Limits {
            max_pixels: 1,
            disk_reserve: 0,
        };
        let payload = load(dir.path(), &inst, uids::EXPLICIT_VR_LITTLE_ENDIAN, limits).unwrap();
        // Sent again meanwhile, in another syntax, and renamed into place.
        let again = short(0x0010, 0x0020, b"LO", b"SECOND-COPY-LONGER");
        let other = part10_with_meta(dx, "1.2.3.4", "1.2.840.10008.1.2.4.80", &again);
        std::fs::write(dir.path().join("new.dcm"), other).unwrap();
        std::fs::rename(dir.path().join("new.dcm"), dir.path().join("x.dcm")).unwrap();

        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut w = Writer::new(Box::new(a), 16_384);
        w.stream(1, payload.data_set()).await.unwrap();
        drop(w);
        let mut r = PduReader::new(16_384);
        let dicom_ul::pdu::Pdu::PData { data } = r.read(&mut b).await.unwrap() else {
            panic!("not P-DATA")
        };
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].data, first, "the checked copy's data set, whole");
    }
}
