//! Heatmaps a restart or a crash left pending: when the engine starts, the marks the result
//! commit left for them ([`record::pending_heatmaps`]) are walked, each image's input is
//! prepared again from the stored file, and the jobs are queued on the heatmap worker. So
//! every analysed image still gets its heatmap, and through it its Secondary Capture.

use super::analyse::{prepare_file, Preparation};
use super::heatmap::{HeatmapJob, HeatmapWorker};
use super::manifest::Manifest;
use super::record;
use crate::result::HeatmapState;
use crate::store::Store;

/// Queues the pending heatmaps again (see the module docs); returns how many were queued.
/// Images whose heatmap can no longer be made (model changed, pixel data pruned or
/// unreadable) are recorded as skipped with the reason; marks whose heatmap was recorded
/// meanwhile are dropped. Blocking: decodes images.
pub fn resume_heatmaps(
    store: &Store,
    manifest: &Manifest,
    max_pixels: u64,
    worker: &HeatmapWorker,
) -> usize {
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
            Err(reason) => {
                let skipped = HeatmapState::Skipped { reason };
                if let Err(e) = record::set_heatmap(store, &uid, version, &sop, skipped, 0.0) {
                    log::error!("study {uid}: cannot record the skipped heatmap: {e}");
                }
            }
        }
    }
    let queued = jobs.len();
    if queued > 0 {
        log::info!("{queued} heatmap(s) left pending by a restart queued again");
    }
    worker.submit_all(store, jobs);
    queued
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
) -> Result<HeatmapJob, String> {
    let target = manifest
        .labels
        .iter()
        .position(|l| l.code == code)
        .ok_or_else(|| format!("the model no longer has finding {code}"))?;
    let inst = store
        .instance(sop)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the image is no longer in the store".to_string())?;
    if inst.pruned {
        return Err("pixel data pruned by retention".into());
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
            Err(reason)
        }
    }
}
