//! Heatmaps a restart or a crash left pending: when the engine starts, the latest result of
//! every finished study is checked for images whose heatmap is still `pending`, their input
//! is prepared again from the stored file, and the jobs are queued on the heatmap worker.
//! So every analysed image still gets its heatmap, and through it its Secondary Capture.

use super::analyse::{prepare_file, Preparation};
use super::heatmap::{HeatmapJob, HeatmapWorker};
use super::manifest::Manifest;
use super::record;
use crate::model::StudyState;
use crate::result::{HeatmapState, ImageResult, StudyResult};
use crate::store::Store;

/// Queues the pending heatmaps again (see the module docs); returns how many were queued.
/// Images whose heatmap can no longer be made (model changed, pixel data pruned or
/// unreadable) are recorded as skipped with the reason. Blocking: decodes images.
pub fn resume_heatmaps(store: &Store, manifest: &Manifest, worker: &HeatmapWorker) -> usize {
    let studies = match store.studies() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot list studies to resume heatmaps: {e}");
            return 0;
        }
    };
    let mut jobs = Vec::new();
    for study in studies
        .iter()
        .filter(|s| s.state == StudyState::Done && s.result_version > 0)
    {
        let uid = &study.study_instance_uid;
        let Ok(Some(result)) = record::result(store, uid, study.result_version) else {
            continue;
        };
        for img in &result.images {
            let HeatmapState::Pending { code } = &img.heatmap else {
                continue;
            };
            match job_for(store, manifest, &result, img, code) {
                Ok(job) => jobs.push(job),
                Err(reason) => {
                    let skipped = HeatmapState::Skipped { reason };
                    let sop = &img.sop_instance_uid;
                    if let Err(e) =
                        record::set_heatmap(store, uid, result.version, sop, skipped, 0.0)
                    {
                        log::error!("study {uid}: cannot record the skipped heatmap: {e}");
                    }
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

/// The job of `img`'s pending heatmap for finding `code`, or why it cannot be made.
fn job_for(
    store: &Store,
    manifest: &Manifest,
    result: &StudyResult,
    img: &ImageResult,
    code: &str,
) -> Result<HeatmapJob, String> {
    let target = manifest
        .labels
        .iter()
        .position(|l| l.code == code)
        .ok_or_else(|| format!("the model no longer has finding {code}"))?;
    let inst = store
        .instance(&img.sop_instance_uid)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the image is no longer in the store".to_string())?;
    if inst.pruned {
        return Err("pixel data pruned by retention".into());
    }
    match prepare_file(&store.root().join(&inst.path), manifest) {
        Preparation::Ready(p) => Ok(HeatmapJob {
            study_uid: result.study_instance_uid.clone(),
            version: result.version,
            sop_instance_uid: img.sop_instance_uid.clone(),
            input: p.tensor,
            target,
        }),
        Preparation::NotApplicable { reason, .. } | Preparation::Error { reason, .. } => {
            Err(reason)
        }
    }
}
