//! Heatmaps a restart or a crash left pending: when the engine starts, the marks the result
//! commit left for them ([`record::pending_heatmaps`]) are walked, each image's input is
//! prepared again from the stored file, and the jobs are queued on the heatmap worker. So
//! every analysed image still gets its heatmap, and through it its Secondary Capture.

use super::analyse::{prepare_file, Preparation};
use super::heatmap::{HeatmapJob, HeatmapWorker};
use super::manifest::Manifest;
use super::record;
use crate::record::Recorder;
use crate::result::HeatmapState;
use crate::store::{Store, StoreError};

/// Queues the pending heatmaps again (see the module docs); returns how many were queued.
/// Images whose heatmap can no longer be made (model changed, pixel data pruned or
/// unreadable) are recorded as skipped with the reason; marks whose heatmap was recorded
/// meanwhile are dropped. Blocking: decodes images.
pub fn resume_heatmaps(
    recorder: &Recorder,
    manifest: &Manifest,
    max_pixels: u64,
    worker: &HeatmapWorker,
) -> usize {
    let store: &Store = recorder.store();
    let marks = match record::pending_heatmaps(store) {
        Ok(m) => m,
        Err(e) => {
            log::error!("cannot list the heatmaps to resume: {e}");
            return 0;
        }
    };
    let mut jobs = Vec::new();
    for (uid, version, sop) in marks {
        let code = match record::result(store, &uid, version) {
            Ok(Some(r)) => r
                .images
                .into_iter()
                .find(|i| i.sop_instance_uid == sop)
                .and_then(|i| match i.heatmap {
                    HeatmapState::Pending { code } => Some(code),
                    _ => None,
                }),
            _ => None,
        };
        let Some(code) = code else {
            // Recorded since (or the result is gone): nothing to make.
            if let Err(e) = record::clear_pending_heatmap(store, &uid, version, &sop) {
                log::error!("study {uid}: cannot clear a heatmap mark: {e}");
            }
            continue;
        };
        match job_for(store, manifest, max_pixels, &uid, version, &sop, &code) {
            Ok(job) => jobs.push(job),
            Err(why) => {
                let skipped = HeatmapState::Skipped {
                    reason: why.to_string(),
                };
                if let Err(e) = recorder.record_heatmap(&uid, version, &sop, skipped, 0.0) {
                    log::error!("study {uid}: cannot record the skipped heatmap: {e}");
                }
            }
        }
    }
    let queued = jobs.len();
    if queued > 0 {
        log::info!("{queued} heatmap(s) left pending by a restart queued again");
    }
    worker.submit_all(recorder, jobs);
    queued
}

/// Why a heatmap left pending cannot be made any more (its skip reason).
#[derive(Debug, thiserror::Error)]
enum NoJob {
    /// The model has no output for the finding.
    #[error("the model no longer has finding {0}")]
    UnknownFinding(String),
    /// The index failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The image is gone from the store.
    #[error("the image is no longer in the store")]
    Gone,
    /// Retention removed the pixel data.
    #[error("pixel data pruned by retention")]
    Pruned,
    /// The image cannot be prepared for the model.
    #[error("{0}")]
    Preparation(String),
}

/// The job of image `sop`'s pending heatmap for finding `code`, or why it cannot be made.
fn job_for(
    store: &Store,
    manifest: &Manifest,
    max_pixels: u64,
    study_uid: &str,
    version: u32,
    sop: &str,
    code: &str,
) -> Result<HeatmapJob, NoJob> {
    let target = manifest
        .labels
        .iter()
        .position(|l| l.code == code)
        .ok_or_else(|| NoJob::UnknownFinding(code.to_string()))?;
    let inst = store.instance(sop)?.ok_or(NoJob::Gone)?;
    if inst.pruned {
        return Err(NoJob::Pruned);
    }
    match prepare_file(&store.root().join(&inst.path), manifest, max_pixels) {
        Preparation::Ready(p) => Ok(HeatmapJob {
            study_uid: study_uid.to_string(),
            version,
            sop_instance_uid: sop.to_string(),
            input: p.tensor,
            target,
        }),
        Preparation::NotApplicable { reason, .. } | Preparation::Error { reason, .. } => {
            Err(NoJob::Preparation(reason))
        }
    }
}
