//! Heatmaps a restart or a crash left pending: when the engine starts, the marks the result
//! commit left for them ([`record::pending_heatmaps`]) are walked, each image's input is
//! prepared again from the stored file, and the jobs are queued on the heatmap worker. So
//! every analysed image still gets its heatmap, and through it its Secondary Capture.

use super::analyse::{prepare_file, Preparation};
use super::engine::ModelIdentity;
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
    model: &ModelIdentity,
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
        let mut made_by_another = false;
        let code = match record::result(store, &uid, version) {
            Ok(Some(r)) => {
                made_by_another = !same_model(&r.model, model);
                r.images
                    .into_iter()
                    .find(|i| i.sop_instance_uid == sop)
                    .and_then(|i| match i.heatmap {
                        HeatmapState::Pending { code } => Some(code),
                        _ => None,
                    })
            }
            _ => None,
        };
        let Some(code) = code else {
            // Recorded since (or the result is gone): nothing to make.
            if let Err(e) = record::clear_pending_heatmap(store, &uid, version, &sop) {
                log::error!("study {uid}: cannot clear a heatmap mark: {e}");
            }
            continue;
        };
        // A heatmap explains the network that made the result: another one (a model or
        // precision changed since) would explain something else.
        let job = if made_by_another {
            Err(NoJob::ModelChanged)
        } else {
            job_for(store, manifest, max_pixels, &uid, version, &sop, &code)
        };
        match job {
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
    /// The result was made by another network than the one loaded now.
    #[error("the model changed since the result was made")]
    ModelChanged,
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

/// Whether the result's `made_by` is the network `loaded` runs: the same network and
/// weights (when the result recorded them) at the same precision.
fn same_model(made_by: &crate::result::ModelInfo, loaded: &ModelIdentity) -> bool {
    made_by.sha256 == loaded.sha256
        && (made_by.weights_sha256.is_empty() || made_by.weights_sha256 == loaded.weights_sha256)
        && made_by.precision == loaded.precision.to_string()
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
            source: p.source,
        }),
        Preparation::NotApplicable { reason, .. } | Preparation::Error { reason, .. } => {
            Err(NoJob::Preparation(reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::precision::Precision;

    /// A pending heatmap is made again only by the network that made its result: another
    /// network, other weights or another precision would explain another result.
    #[test]
    fn a_heatmap_is_resumed_only_by_the_network_that_made_the_result() {
        let loaded = ModelIdentity {
            name: "m".into(),
            version: "2".into(),
            sha256: "aa".into(),
            backend: "b".into(),
            precision: Precision::F32,
            network_sha256: "aa".into(),
            weights_sha256: "ww".into(),
            cpu_feature: "any".into(),
        };
        let made_by = |sha: &str, weights: &str, precision: &str| crate::result::ModelInfo {
            name: "m".into(),
            version: "1".into(),
            sha256: sha.into(),
            weights_sha256: weights.into(),
            precision: precision.into(),
            coding_scheme: "99X".into(),
        };
        assert!(same_model(&made_by("aa", "ww", "f32"), &loaded));
        assert!(
            same_model(&made_by("aa", "", "f32"), &loaded),
            "weights not recorded"
        );
        assert!(!same_model(&made_by("bb", "ww", "f32"), &loaded));
        assert!(!same_model(&made_by("aa", "vv", "f32"), &loaded));
        assert!(!same_model(&made_by("aa", "ww", "int8"), &loaded));
    }
}
