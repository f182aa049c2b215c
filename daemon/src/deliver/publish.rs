//! From a study result to what it owes the world.
//!
//! - When a result is about to be committed ([`Publisher::extra_writes`]), its report is
//!   built from the result and the study record, the Structured Report is stored and
//!   indexed, and the outbox entries (HL7, MQTT, SR push to each PACS) are prepared so that
//!   the result commit writes them in the same transaction.
//! - Once the result is durable ([`Publisher::committed`]), the outbox is told (fill level,
//!   workers woken) and the console hears of it.
//! - When the heatmap of an analysed image is ready ([`Publisher::heatmap_ready`]), the
//!   Secondary Capture with the heatmap burned in is stored and indexed in one transaction
//!   with its push entries.
//!
//! Manual uploads without a real patient are never sent anywhere (the plan is skipped).

use super::outbox::{Kind, NewEntry, Outbox, OutboxError};
use super::plan::DeliveryPlan;
use super::report::{Report, ReportFinding};
use super::secret::SiteSecret;
use crate::infer::record::{self, ExtraWrite, ExtraWrites};
use crate::model::{InstanceRecord, StudyRecord};
use crate::result::{ImageStatus, StudyResult};
use crate::results::{self, overlay, uids::ResultUids};
use crate::store::{Change, Store};
use dicom_object::{FileDicomObject, InMemDicomObject};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Longest side of the Secondary Capture image.
pub const SC_MAX_SIDE: u32 = 1024;

/// A result's outbox batch, prepared but not yet known to be committed: study UID,
/// result version, entries.
type Prepared = (String, u32, Vec<NewEntry>);

/// Glue between the result commit and delivery.
#[derive(Debug)]
pub struct Publisher {
    store: Arc<Store>,
    outbox: Arc<Outbox>,
    plan: DeliveryPlan,
    secret: Arc<SiteSecret>,
    uid_root: String,
    /// Batches prepared for results not yet known to be durable, by report id.
    pending: Mutex<HashMap<String, Prepared>>,
}

/// Builds the report every channel sends from a result and its study.
pub fn to_report(result: &StudyResult, study: &StudyRecord) -> Report {
    let mut timings = BTreeMap::new();
    timings.insert("decode".to_string(), result.timings.decode_ms);
    timings.insert("preprocess".to_string(), result.timings.preprocess_ms);
    timings.insert("infer".to_string(), result.timings.infer_ms);
    Report {
        report_id: result.report_id.clone(),
        version: result.version,
        study: study.clone(),
        findings: result
            .findings
            .iter()
            .map(|f| ReportFinding {
                label: f.code.clone(),
                code: f.code.clone(),
                display: f.label.clone(),
                probability: f64::from(f.probability),
                threshold: f64::from(f.threshold),
                positive: f.positive,
            })
            .collect(),
        triage: result.triage,
        model_name: result.model.name.clone(),
        model_version: result.model.version.clone(),
        model_sha256: result.model.sha256.clone(),
        timings_ms: timings,
        source_sop_instance_uids: result
            .images
            .iter()
            .filter(|i| i.status == ImageStatus::Analysed)
            .map(|i| i.sop_instance_uid.clone())
            .collect(),
        not_applicable: result.not_applicable_reason(),
        caveat: result.caveat(),
        created_at: crate::clock::now_secs(),
    }
}

impl Publisher {
    /// A publisher over the running delivery stage.
    pub fn new(
        store: Arc<Store>,
        outbox: Arc<Outbox>,
        plan: DeliveryPlan,
        secret: Arc<SiteSecret>,
        uid_root: &str,
    ) -> Arc<Publisher> {
        Arc::new(Publisher {
            store,
            outbox,
            plan,
            secret,
            uid_root: uid_root.to_string(),
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn sources(&self, report: &Report) -> Vec<InstanceRecord> {
        report
            .source_sop_instance_uids
            .iter()
            .filter_map(|uid| self.store.instance(uid).ok().flatten())
            .collect()
    }

    /// The hook the inference stage calls before committing a result.
    pub fn hook(self: &Arc<Self>) -> ExtraWrites {
        let me = Arc::clone(self);
        Arc::new(move |result: &StudyResult, study: &StudyRecord| me.extra_writes(result, study))
    }

    /// Stores the SR and prepares the outbox writes of `result` (see the module docs).
    /// On any failure the result is still committed, without deliveries, and the reason
    /// is logged: a result is never lost because a message could not be prepared.
    pub fn extra_writes(&self, result: &StudyResult, study: &StudyRecord) -> Vec<ExtraWrite> {
        if is_manual_upload(study) {
            log::info!(
                "study {}: manual upload, not delivered",
                study.study_instance_uid
            );
            return Vec::new();
        }
        let report = to_report(result, study);
        let uids = ResultUids::new(&self.uid_root, &report.report_id);
        let mut batch = self.plan.report_entries(&report, &self.secret);
        let sources = self.sources(&report);
        match results::sr::build(&report, &uids, &sources)
            .and_then(|sr| results::store_object(&self.store, &sr))
        {
            Ok(rec) => batch.extend(self.plan.push_entries(
                &report.report_id,
                Kind::StructuredReport,
                std::slice::from_ref(&rec.sop_instance_uid),
            )),
            Err(e) => log::error!(
                "study {}: structured report not made: {e}",
                study.study_instance_uid
            ),
        }
        let writes = match self.outbox_writes(&batch) {
            Ok(w) => w,
            Err(e) => {
                log::error!(
                    "study {}: outbox entries not prepared: {e}",
                    study.study_instance_uid
                );
                return Vec::new();
            }
        };
        if let Ok(mut p) = self.pending.lock() {
            p.insert(
                report.report_id.clone(),
                (result.study_instance_uid.clone(), result.version, batch),
            );
        }
        writes
    }

    /// The outbox records of `batch` as writes for someone else's transaction.
    fn outbox_writes(&self, batch: &[NewEntry]) -> Result<Vec<ExtraWrite>, OutboxError> {
        Ok(self
            .outbox
            .prepare(batch)?
            .into_iter()
            .map(|(key, value)| ExtraWrite {
                tree: self.outbox.tree_name().to_string(),
                key,
                value,
            })
            .collect())
    }

    /// Called once a result is durable: wakes the workers and tells the console.
    pub fn committed(&self, report_id: &str) {
        let entry = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(report_id));
        let Some((study_uid, version, batch)) = entry else {
            return;
        };
        if matches!(
            record::result(&self.store, &study_uid, version),
            Ok(Some(_))
        ) {
            self.outbox.committed(&batch);
            self.store.notify(Change::Result { study_uid });
        }
    }

    /// Called when a heatmap PNG is stored: makes the study's Secondary Capture (once per
    /// report) and enqueues its push. Blocking: call from a blocking context.
    pub fn heatmap_ready(&self, study_uid: &str, version: u32, sop_uid: &str, png_path: &str) {
        let result = match record::result(&self.store, study_uid, version) {
            Ok(Some(r)) => r,
            _ => return,
        };
        self.store.notify(Change::Result {
            study_uid: study_uid.to_string(),
        });
        let study = match self.store.study(study_uid) {
            Ok(Some(s)) => s,
            _ => return,
        };
        if is_manual_upload(&study) {
            return;
        }
        // One SC per report (the first heatmap): its UID derives from the report id, so
        // the store says whether it exists, across restarts too.
        let sc_uid = ResultUids::new(&self.uid_root, &result.report_id).sc_instance;
        if matches!(self.store.instance(&sc_uid), Ok(Some(_))) {
            return;
        }
        let report = to_report(&result, &study);
        match self.store_secondary_capture(&report, sop_uid, png_path) {
            Ok(batch) => {
                self.outbox.committed(&batch);
                if let Err(e) = self.store.flush_blocking() {
                    log::error!("study {study_uid}: store flush after the SC failed: {e}");
                }
            }
            Err(e) => log::error!("study {study_uid}: heatmap secondary capture not made: {e}"),
        }
    }

    /// Builds the Secondary Capture of `report` and stores it with its push entries in one
    /// index transaction; returns the committed batch.
    fn store_secondary_capture(
        &self,
        report: &Report,
        sop_uid: &str,
        png_path: &str,
    ) -> Result<Vec<NewEntry>, String> {
        let sc = self.secondary_capture(report, sop_uid, png_path)?;
        let sc_uid = sc
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        let batch = self.plan.push_entries(
            &report.report_id,
            Kind::SecondaryCapture,
            std::slice::from_ref(&sc_uid),
        );
        let writes = self.outbox_writes(&batch).map_err(|e| e.to_string())?;
        results::store_object_with(&self.store, &sc, &writes).map_err(|e| e.to_string())?;
        Ok(batch)
    }

    /// Draws the heatmap of `sop_uid` over its radiograph, with the legend and banner, as
    /// a Secondary Capture object.
    fn secondary_capture(
        &self,
        report: &Report,
        sop_uid: &str,
        png_path: &str,
    ) -> Result<FileDicomObject<InMemDicomObject>, String> {
        let inst = self
            .store
            .instance(sop_uid)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{sop_uid} is not in the store"))?;
        let gray = crate::infer::dicom_image::DicomImage::open(&self.store.root().join(&inst.path))
            .and_then(|d| d.display_image())
            .map_err(|e| e.to_string())?;
        let (w, h, pixels) = downscale(gray.width, gray.height, &gray.pixels, SC_MAX_SIDE);
        let heat = image::open(self.store.root().join(png_path))
            .map_err(|e| format!("heatmap {png_path}: {e}"))?
            .to_luma8();
        let values: Vec<f32> = heat
            .as_raw()
            .iter()
            .map(|v| f32::from(*v) / 255.0)
            .collect();
        let mut img = overlay::Rgb::from_gray(w, h, &pixels);
        overlay::blend_heatmap(&mut img, &values, heat.width(), heat.height(), 0.45, 0.25);
        let top = report
            .findings
            .iter()
            .max_by(|a, b| a.probability.total_cmp(&b.probability));
        let caption = match top {
            Some(f) => format!(
                "{} {:.0}% (THRESHOLD {:.0}%)",
                f.display,
                f.probability * 100.0,
                f.threshold * 100.0
            ),
            None => "NO FINDING".to_string(),
        };
        overlay::annotate(&mut img, &caption);
        let uids = ResultUids::new(&self.uid_root, &report.report_id);
        results::sc::build(report, &uids, &img).map_err(|e| e.to_string())
    }
}

impl Publisher {
    /// Queues a radiologist's feedback for the cloud (pseudonymised; the comment and the
    /// user name are never sent). Manual uploads are not sent.
    pub fn feedback(
        &self,
        f: &crate::console::feedback::Feedback,
        role: &str,
    ) -> Result<(), String> {
        if let Ok(Some(study)) = self.store.study(&f.study_uid) {
            if is_manual_upload(&study) {
                return Ok(());
            }
        }
        let fb = super::mqtt::payload::Feedback {
            report_id: crate::result::report_id(&f.study_uid, f.result_version.max(1)),
            study_instance_uid: f.study_uid.clone(),
            agree: f.agree,
            finding: f.finding.clone(),
            reviewer_role: role.to_string(),
            created_at: f.at_ms / 1000,
        };
        let batch = self.plan.feedback_entries(&fb, &self.secret);
        if batch.is_empty() {
            return Ok(());
        }
        self.outbox
            .enqueue(&batch)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Studies that came from the console's manual upload (no real patient) are analysed and
/// shown, never sent.
pub fn is_manual_upload(study: &StudyRecord) -> bool {
    study.patient_id.starts_with("UPLOAD-")
}

/// Area-averages a grayscale image so its longest side is at most `max_side`.
pub fn downscale(width: u32, height: u32, pixels: &[u8], max_side: u32) -> (u32, u32, Vec<u8>) {
    let long = width.max(height);
    if long <= max_side || width == 0 || height == 0 {
        return (width, height, pixels.to_vec());
    }
    let f = long.div_ceil(max_side);
    let (w, h) = (width / f, height / f);
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let mut sum = 0u32;
            for dy in 0..f {
                for dx in 0..f {
                    let i = ((y * f + dy) * width + (x * f + dx)) as usize;
                    sum += u32::from(pixels.get(i).copied().unwrap_or(0));
                }
            }
            out.push((sum / (f * f)) as u8);
        }
    }
    (w, h, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downscale_averages_blocks() {
        let px = vec![0, 255, 0, 255, 100, 100, 100, 100];
        let (w, h, out) = downscale(4, 2, &px, 2);
        assert_eq!((w, h), (2, 1));
        assert_eq!(out, vec![113, 113]); // (0 + 255 + 100 + 100) / 4
        let (w, h, out) = downscale(4, 2, &px, 8);
        assert_eq!((w, h, out.len()), (4, 2, 8));
    }
}
