//! The data set of a retrieve sub-operation: the stored bytes when the peer accepted the
//! stored transfer syntax, otherwise the instance decoded and re-encoded in an uncompressed
//! syntax the peer accepted (explicit VR little endian first).
//!
//! Stored instances came from outside, so re-encoding holds them to the same rules as
//! analysis: the pre-scan, `inference.max_pixels` and the Pixel Data size against the image
//! attributes before anything is loaded, the stream checks of the codecs decoded here, and
//! JPEG-LS and JPEG 2000 re-encoded only in the confined child process
//! ([`crate::infer::decode_sandbox`]).

use crate::dimse::uids;
use crate::infer::decode_sandbox;
use crate::infer::dicom_image::check_file_pixel_budget;
use crate::infer::stream_check::check_stream;
use crate::model::InstanceRecord;
use crate::scu::{self, Prepared};
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
    /// Transcoded bytes.
    Transcoded(Vec<u8>),
}

impl Payload {
    /// The data set as the SCU sends it.
    pub fn data_set(&self) -> scu::DataSet<'_> {
        match self {
            Payload::Stored(p) => p.data_set(),
            Payload::Transcoded(b) => scu::DataSet::Memory(b),
        }
    }
}

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
/// that must be re-encoded is refused when it declares more than `max_pixels` pixel
/// samples. Blocking.
pub fn load(
    root: &Path,
    inst: &InstanceRecord,
    ts: &str,
    max_pixels: u64,
) -> Result<Payload, PayloadError> {
    if inst.pruned {
        return Err(PayloadError::Pruned(inst.sop_instance_uid.clone()));
    }
    let path = root.join(&inst.path);
    if ts == inst.transfer_syntax {
        return scu::prepare(&path)
            .map(Payload::Stored)
            .map_err(|e| PayloadError::File(e.to_string()));
    }
    let err = |reason: String| PayloadError::Transcode {
        from: inst.transfer_syntax.clone(),
        to: ts.to_string(),
        reason,
    };
    let target = TransferSyntaxRegistry
        .get(ts)
        .ok_or_else(|| err("unknown transfer syntax".into()))?;
    check_file_pixel_budget(&path, max_pixels).map_err(|e| err(e.to_string()))?;
    if decode_sandbox::is_sandboxed(&inst.transfer_syntax) {
        let exe = decode_sandbox::decoder_exe()
            .ok_or_else(|| err("no duli executable to decode it in its confined process".into()))?;
        // Uncompressed, the instance is its header and at most 4 bytes per pixel sample.
        let size = std::fs::metadata(&path)
            .map_err(|e| PayloadError::File(e.to_string()))?
            .len();
        let bound = size
            .saturating_add(max_pixels.saturating_mul(4))
            .saturating_add(1024 * 1024);
        let bytes = decode_sandbox::transcode(&exe, &path, ts, bound, decode_sandbox::DEADLINE)
            .map_err(|e| err(e.to_string()))?;
        return Ok(Payload::Transcoded(bytes));
    }
    // One in-process re-encoding at a time on the box: the whole instance, decoded, and
    // its new encoding are held at once, so retrieves by many associations must not
    // multiply that.
    let _turn = TRANSCODING.lock().unwrap_or_else(|p| p.into_inner());
    let mut obj = dicom_object::open_file(&path).map_err(|e| err(e.to_string()))?;
    check_stream(&obj, &inst.transfer_syntax).map_err(|e| err(e.to_string()))?;
    // A decoder defect the checks do not foresee costs this sub-operation, not the thread.
    catch_unwind(AssertUnwindSafe(|| obj.transcode(target)))
        .map_err(|_| err("the decoder failed on this pixel data".into()))?
        .map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, target)
        .map_err(|e| err(e.to_string()))?;
    Ok(Payload::Transcoded(out))
}

/// Held while an instance is re-encoded in this process ([`load`]).
static TRANSCODING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`load`] on a blocking thread.
pub async fn load_async(
    root: &Path,
    inst: &InstanceRecord,
    ts: &str,
    max_pixels: u64,
) -> Result<Payload, PayloadError> {
    let (root, inst, ts) = (root.to_path_buf(), inst.clone(), ts.to_string());
    tokio::task::spawn_blocking(move || load(&root, &inst, &ts, max_pixels)).await?
}
