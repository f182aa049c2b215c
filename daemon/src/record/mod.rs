//! The record stage: from a typed study result to everything it owes, committed at once.
//!
//! Inference hands a [`StudyResult`] to [`Recorder::record_result`]; the recorder builds
//! the [`Report`] from it and the study record, plans every outbox entry (HL7, MQTT:
//! [`crate::deliver::plan`]), and commits the result, the study's state change, the
//! entries and the marks of the heatmaps still to make in ONE store transaction
//! ([`crate::store::results::commit_result`]). Once that is durable it tells the outbox
//! (fill level, workers woken) and broadcasts the result. A result with no heatmap to come
//! also gets its Structured Report ([`crate::results::sr`]) and the SR's push to each PACS
//! then.
//!
//! A heatmap made later (the occlusion map, or a class-activation map recorded just after
//! its result) comes back through [`Recorder::record_heatmap`], made, skipped or failed. In
//! this order: once no heatmap of the result is pending, the made heatmap explaining the
//! study's top finding where it is most probable becomes the report's Parametric Map and
//! Secondary Capture ([`parametric_map`], [`secondary_capture`]), then the SR is made,
//! referencing the map only when this box made it; each object is stored
//! in one transaction with its push entries; the heatmap's state is recorded last. Until
//! then its mark stays, so a crash in between makes the heatmap again on the next start,
//! and each object, made once per report, is found made. An object under one of our UIDs
//! that a peer stored is never taken for ours. A radiologist's [`Feedback`] joins the
//! outbox through [`Recorder::record_feedback`].
//!
//! A study given to another patient after its result went out (a modality or PACS resent
//! it corrected) has its next result preceded by the HL7 withdrawal of the last one and
//! by an IHE IOCM rejection note naming the result objects made for the former patient,
//! which leave the study ([`crate::results::rejection`]).
//!
//! Without delivery (tests, `duli demo` without peers) only the result and its marks are
//! committed. Manual uploads without a real patient are never sent anywhere.

pub mod parametric_map;
pub mod secondary_capture;

use crate::deliver::plan::DeliveryPlan;
use crate::model::{ReportedPatient, StudyRecord, StudyState};
use crate::report::{Feedback, Report};
use crate::result::{HeatmapState, ImageStatus, StudyResult};
use crate::results::{self, sr::ObjectRef, uids::ResultUids};
use crate::site_secret::SiteSecret;
use crate::store::outbox::{Batch, Kind, NewEntry, Outbox, OutboxError};
use crate::store::results::{self as stored, Committed, ReportedFor};
use crate::store::{Change, Store, StoreError};
use std::sync::Arc;

pub use secondary_capture::SC_MAX_SIDE;

/// Why a result object made from a heatmap (the Parametric Map, the Secondary Capture)
/// was not made or stored.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The index failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The analysed image is no longer in the store.
    #[error("{0} is not in the store")]
    NotStored(String),
    /// The analysed image cannot be opened or decoded.
    #[error(transparent)]
    Image(#[from] crate::infer::dicom_image::DicomImageError),
    /// The analysed image's header cannot be read.
    #[error("{sop_uid}: {source}")]
    Header {
        /// The image.
        sop_uid: String,
        /// The reader's error (boxed: it is large).
        source: Box<dicom_object::ReadError>,
    },
    /// The analysed image has no rows or columns.
    #[error("{0} has no image size")]
    NoImageSize(String),
    /// The heatmap PNG cannot be read.
    #[error("heatmap {path}: {source}")]
    Heatmap {
        /// The PNG, relative to the data directory.
        path: String,
        /// The image library's error.
        source: image::ImageError,
    },
    /// Building or storing the DICOM object failed.
    #[error(transparent)]
    Results(#[from] results::ResultsError),
}

impl ObjectError {
    /// Whether trying again may succeed: the disk or the index failed, not the inputs (an
    /// object that cannot be built from them fails the same way every time).
    pub fn worth_retrying(&self) -> bool {
        let transient = |e: &StoreError| matches!(e, StoreError::Io { .. } | StoreError::Index(_));
        match self {
            ObjectError::Store(e) | ObjectError::Results(results::ResultsError::Store(e)) => {
                transient(e)
            }
            ObjectError::Results(results::ResultsError::Io(_)) => true,
            _ => false,
        }
    }
}

/// Where a result's deliverables go: the running delivery stage.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The outbox the entries join.
    pub outbox: Arc<Outbox>,
    /// What each report owes.
    pub plan: DeliveryPlan,
    /// The key of the pseudonyms.
    pub secret: Arc<SiteSecret>,
    /// The root of the UIDs of the result objects.
    pub uid_root: String,
    /// This box's AE title (`dicom.ae_title`): where the result objects it references can
    /// be retrieved from.
    pub ae_title: String,
    /// Most pixel samples of an image the result objects are made from
    /// (`inference.max_pixels`): the image is read again from the store, where a peer may
    /// have replaced it since it was analysed.
    pub max_pixels: u64,
}

/// What inference found for a study, as handed to the record stage.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// The study result.
    pub result: &'a StudyResult,
    /// SOP Instance UIDs of the images whose heatmap is still to make.
    pub heatmaps_to_make: &'a [&'a str],
    /// Why no image could be analysed, when none could: the study ends in `error` and
    /// nothing is delivered.
    pub failure: Option<&'a str>,
}

/// The record stage of one store. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Recorder {
    store: Arc<Store>,
    delivery: Option<Delivery>,
    /// Where a study given to another patient is recorded ([`Recorder::with_audit`]).
    audit: Option<Arc<crate::audit::Audit>>,
    /// Held while a heatmap is recorded: the last two heatmaps of a report settled at once
    /// (the worker, and a skip for a full backlog) must not each see the other pending,
    /// or the report's objects would never be made.
    settling: std::sync::Mutex<()>,
}

/// The patient the study's latest result was reported for, when the study now names
/// another Patient ID (a modality or PACS resent it after correcting its patient): what
/// went out for them is to be withdrawn.
fn former_patient(study: &StudyRecord) -> Option<&ReportedPatient> {
    study
        .reported_for
        .as_ref()
        .filter(|was| !was.patient_id.is_empty() && was.patient_id != study.patient_id)
}

/// A study given to another patient after its result was reported: the patient it was
/// reported for and the one it names now, as the audit trail names them.
struct Correction {
    was: String,
    /// `None` when the study now names no Patient ID.
    now: Option<String>,
}

impl Correction {
    /// The change `study` went through, when it names another patient than its latest
    /// result was reported for (never for a manual upload).
    fn of(study: &StudyRecord) -> Option<Correction> {
        if is_manual_upload(study) {
            return None;
        }
        let was = former_patient(study)?;
        Some(Correction {
            was: crate::model::patient_cx(&was.patient_id, &was.issuer_of_patient_id)?,
            now: crate::model::patient_cx(&study.patient_id, &study.issuer_of_patient_id),
        })
    }
}

/// Studies that came from the console's manual upload (no real patient) are analysed and
/// shown, never sent.
pub fn is_manual_upload(study: &StudyRecord) -> bool {
    study.patient_id.starts_with("UPLOAD-")
}

impl Recorder {
    /// A recorder committing into `store`, planning deliveries when `delivery` is given.
    pub fn new(store: Arc<Store>, delivery: Option<Delivery>) -> Recorder {
        Recorder {
            store,
            delivery,
            audit: None,
            settling: std::sync::Mutex::new(()),
        }
    }

    /// The recorder writing to `audit` when a result withdraws what was reported for a
    /// former patient of its study.
    pub fn with_audit(mut self, audit: Arc<crate::audit::Audit>) -> Recorder {
        self.audit = Some(audit);
        self
    }

    /// The store it records into.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Records a study result with all it owes (see the module docs), makes it durable,
    /// then wakes delivery and broadcasts it. A result is never lost because a message
    /// could not be prepared: such a failure is logged and the result recorded without it.
    pub async fn record_result(&self, outcome: Outcome<'_>) -> Result<Committed, StoreError> {
        let result = outcome.result;
        let uid = result.study_instance_uid.as_str();
        // The patient this result is reported for, recorded with it once its entries are
        // planned: a later result withdraws it from this patient if the study changes hands.
        let mut reported_now = None;
        let mut withdrawn_only = false;
        let mut changed_hands = None;
        let entries = match (&self.delivery, outcome.failure) {
            (Some(d), None) => match self.store.study(uid) {
                Ok(Some(study)) => {
                    changed_hands = Correction::of(&study);
                    let entries = self.deliverables(d, result, &study, outcome.heatmaps_to_make);
                    if !is_manual_upload(&study) {
                        reported_now = Some(ReportedPatient::of(&study));
                    }
                    entries
                }
                _ => Vec::new(),
            },
            // Nothing new to report, but what went out for a former patient of the study
            // is withdrawn all the same: it is not theirs whatever the analysis gives.
            (Some(d), Some(_)) => match self.store.study(uid) {
                Ok(Some(study)) => match Correction::of(&study) {
                    Some(change) => {
                        withdrawn_only = true;
                        changed_hands = Some(change);
                        self.withdrawals(d, &study)
                    }
                    None => Vec::new(),
                },
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        let reported_for = match (&reported_now, withdrawn_only) {
            (Some(p), _) => ReportedFor::Now(p),
            (None, true) => ReportedFor::Nobody,
            (None, false) => ReportedFor::Keep,
        };
        let batches: Vec<Batch> = match &self.delivery {
            Some(d) if !entries.is_empty() => vec![Batch {
                outbox: &d.outbox,
                entries: &entries,
            }],
            _ => Vec::new(),
        };
        let committed = stored::commit_result(
            &self.store,
            result,
            &batches,
            outcome.heatmaps_to_make,
            reported_for,
        );
        match (&committed, outcome.failure) {
            (Ok(Committed::Done), Some(reason)) => {
                let reason = format!("no image could be analysed: {reason}");
                if let Err(e) = self
                    .store
                    .transition_to_error(uid, &[StudyState::Done], &reason)
                {
                    log::error!("study {uid}: {e}");
                }
            }
            (Ok(_), _) => {}
            (Err(e), _) => {
                log::error!("study {uid}: cannot record the result: {e}");
                let reason = format!("cannot record the result: {e}");
                let from = [StudyState::Queued, StudyState::Inferring, StudyState::Done];
                let _ = self.store.transition_to_error(uid, &from, &reason);
            }
        }
        if let (Ok(_), Some(change)) = (&committed, &changed_hands) {
            self.audit_correction(uid, change, &entries);
        }
        let flushed = self.store.flush().await;
        if committed.is_ok() {
            // The transaction holds the entries whether or not the flush went through
            // (the index writes them out later): count them and wake their workers.
            for b in &batches {
                b.outbox.committed(b.entries);
            }
            self.store.notify(Change::Result {
                study_uid: uid.to_string(),
            });
        }
        flushed?;
        committed
    }

    /// Records in the audit trail that study `uid` changed hands (`change`), with how many
    /// withdrawals of what went out for the former patient `entries` queued (an update of
    /// both patients' records, naming both); a record that cannot be written is logged.
    fn audit_correction(&self, uid: &str, change: &Correction, entries: &[NewEntry]) {
        let Some(audit) = &self.audit else {
            return;
        };
        let withdrawn = entries.iter().filter(|e| e.kind.withdraws()).count();
        let mut event = crate::audit::Event::new("system", crate::audit::Action::Update, uid)
            .detail(format!(
                "the study now names {} (its result was reported for patient {}): {withdrawn} withdrawal(s) of what went out for the former patient queued",
                change
                    .now
                    .as_ref()
                    .map_or("no Patient ID".to_string(), |p| format!("patient {p}")),
                change.was
            ));
        event.patients = std::iter::once(change.was.clone())
            .chain(change.now.clone())
            .collect();
        if let Err(e) = audit.append(event) {
            log::error!("study {uid}: audit trail: cannot record the change of patient: {e}");
        }
    }

    /// The outbox entries planned for `result` and, when no heatmap is still to be made,
    /// the Structured Report stored with its push entries (none for a manual upload, or
    /// when the entries cannot be planned).
    fn deliverables(
        &self,
        d: &Delivery,
        result: &StudyResult,
        study: &StudyRecord,
        heatmaps_to_make: &[&str],
    ) -> Vec<NewEntry> {
        if is_manual_upload(study) {
            log::info!(
                "study {}: manual upload, not delivered",
                study.study_instance_uid
            );
            return Vec::new();
        }
        let report = Report::from_result(result, study);
        let uids = ResultUids::new(&d.uid_root, &report.report_id, &d.secret, &d.plan.device_id);
        let mut batch = self.withdrawals(d, study);
        batch.extend(d.plan.report_entries(&report, &d.secret));
        if !heatmaps_to_make.is_empty() {
            // The SR is made once its heatmap is settled (made, skipped or failed), so that
            // it references the Parametric Map only when the map exists
            // ([`Recorder::record_heatmap`]).
            return batch;
        }
        match results::sr::build(&report, &uids, &self.sources(&report, result), None)
            .map(|sr| self.superseding(d, result, sr))
            .and_then(|sr| results::store_object(&self.store, &sr))
        {
            Ok(rec) => batch.extend(d.plan.push_entries(
                &report.report_id,
                &study.study_instance_uid,
                Kind::StructuredReport,
                std::slice::from_ref(&rec.sop_instance_uid),
            )),
            Err(e) => log::error!(
                "study {}: structured report not made: {e}",
                study.study_instance_uid
            ),
        }
        batch
    }

    /// The IHE IOCM rejection note withdrawing, from the archive and from this box's own
    /// Q/R, the result objects this box made for a former patient of the study (their
    /// header names another Patient ID than the study now does), stored with the
    /// objects taken out of the study; `old` is the withdrawn report, for that patient.
    /// Made once per withdrawn report: a note made before a crash is sent again, not made
    /// twice.
    fn rejection(&self, d: &Delivery, study: &StudyRecord, old: &Report) -> Vec<NewEntry> {
        let uid = &study.study_instance_uid;
        let objects = ObjectUids::of(d, &old.report_id);
        let made = objects.all().map(|u| &u.ko_instance);
        if let Some(note) = made.into_iter().find(|note| self.generated(note)) {
            return d.plan.rejection_entries(&old.report_id, uid, note);
        }
        let uids = &objects.uids;
        let rejected = match self.objects_of_another_patient(study) {
            Ok(r) if r.is_empty() => return Vec::new(),
            Ok(r) => r,
            Err(e) => {
                log::error!("study {uid}: the result objects of its former patient cannot be looked up: {e}");
                return Vec::new();
            }
        };
        let sops: Vec<String> = rejected.iter().map(|r| r.sop_instance.clone()).collect();
        match results::rejection::build(old, uids, &rejected)
            .and_then(|note| results::store_rejection_note(&self.store, &note, &sops))
        {
            Ok(note) => {
                log::warn!(
                    "study {uid}: {} result object(s) made for its former patient rejected (IOCM rejection note {})",
                    sops.len(),
                    note.sop_instance_uid
                );
                d.plan
                    .rejection_entries(&old.report_id, uid, &note.sop_instance_uid)
            }
            Err(e) => {
                log::error!("study {uid}: rejection note not made: {e}");
                Vec::new()
            }
        }
    }

    /// The result objects this box made in `study` (SR, Parametric Map, Secondary
    /// Capture) whose header names another Patient ID than the study now does (one whose
    /// file cannot be read is logged and left out).
    fn objects_of_another_patient(
        &self,
        study: &StudyRecord,
    ) -> Result<Vec<results::rejection::Rejected>, ObjectError> {
        let mut out = Vec::new();
        for inst in self.store.instances_of(&study.study_instance_uid)? {
            let result_object = [
                results::sr::COMPREHENSIVE_SR,
                results::parametric_map::PARAMETRIC_MAP,
                results::sc::SECONDARY_CAPTURE,
            ]
            .contains(&inst.sop_class_uid.as_str());
            if !inst.generated || !result_object {
                continue;
            }
            let path = self.store.root().join(&inst.path);
            let header = match crate::store::header::read_header(&path) {
                Ok(h) => h,
                Err(e) => {
                    // The others are still rejected; this one stays as it is.
                    log::error!(
                        "study {}: result object {} cannot be read to tell its patient: {e}",
                        study.study_instance_uid,
                        inst.sop_instance_uid
                    );
                    continue;
                }
            };
            if header.study.patient_id != study.patient_id {
                out.push(results::rejection::Rejected {
                    series: inst.series_instance_uid,
                    sop_class: inst.sop_class_uid,
                    sop_instance: inst.sop_instance_uid,
                });
            }
        }
        Ok(out)
    }

    /// The withdrawal of the study's latest result from the patient it was reported for,
    /// when the study now names another Patient ID (a modality or PACS resent it after
    /// correcting its patient): the HL7 withdrawal and the rejection note of the result
    /// objects made for that patient ([`Recorder::rejection`]), queued before the new
    /// result, so the RIS and the PACS take them off the wrong patient's record before
    /// they file the new one. Nothing when the study is the same patient's, or the latest
    /// result was reported for no one known.
    fn withdrawals(&self, d: &Delivery, study: &StudyRecord) -> Vec<NewEntry> {
        let Some(was) = former_patient(study) else {
            return Vec::new();
        };
        let previous = match stored::latest_result(&self.store, &study.study_instance_uid) {
            Ok(Some(r)) => r,
            Ok(None) => return Vec::new(),
            Err(e) => {
                log::error!(
                    "study {}: the result to withdraw from its former patient cannot be read: {e}",
                    study.study_instance_uid
                );
                return Vec::new();
            }
        };
        log::warn!(
            "study {}: result version {} withdrawn from the patient it was reported for (the study now names another)",
            study.study_instance_uid,
            previous.version
        );
        let old = Report::from_result(&previous, &was.applied_to(study));
        let mut entries = d.plan.withdrawal_entries(&old, &d.secret);
        entries.extend(self.rejection(d, study, &old));
        entries
    }

    /// Records the heatmap state of one image of result `version` of `study_uid`, made
    /// `heatmap_ms` after the result; a heatmap that is done is broadcast. The last of its
    /// report to settle makes the report's objects (map, Secondary Capture, SR) and their
    /// pushes. Blocking: call from a blocking context.
    pub fn record_heatmap(
        &self,
        study_uid: &str,
        version: u32,
        sop_uid: &str,
        state: HeatmapState,
        heatmap_ms: f64,
    ) -> Result<(), ObjectError> {
        let _one_at_a_time = self.settling.lock().unwrap_or_else(|p| p.into_inner());
        let made = match &state {
            HeatmapState::Done { path, code } => Some((path.clone(), code.clone())),
            _ => None,
        };
        // Objects first, the state last: until the state is recorded the heatmap's mark
        // stays, so a crash in between, or an object the disk or index failed to take,
        // makes it again on the next start, and each object (made once per report) is
        // then found made. An object that cannot be built is logged and settles.
        if let Some(d) = &self.delivery {
            // A heatmap recorded as still pending settles nothing.
            if !matches!(state, HeatmapState::Pending { .. }) {
                let made = made.as_ref().map(|(png, code)| Heatmap {
                    sop: sop_uid,
                    png,
                    code,
                });
                self.settled(d, study_uid, version, sop_uid, made)?;
            }
        }
        stored::set_heatmap(&self.store, study_uid, version, sop_uid, state, heatmap_ms)?;
        self.store.flush_blocking()?;
        self.store.notify(Change::Result {
            study_uid: study_uid.to_string(),
        });
        Ok(())
    }

    /// The stored instances `report` was made from (those still in the index).
    /// For a study none of whose images was analysed (outside the model's intended use),
    /// the images that were considered: the SR's Image Library (TID 1500) and evidence then
    /// name what the report speaks of.
    fn sources(&self, report: &Report, result: &StudyResult) -> Vec<crate::model::InstanceRecord> {
        let instance = |uid: &String| self.store.instance(uid).ok().flatten();
        let analysed: Vec<_> = report
            .source_sop_instance_uids
            .iter()
            .filter_map(instance)
            .collect();
        if !analysed.is_empty() {
            return analysed;
        }
        result
            .images
            .iter()
            .filter_map(|i| instance(&i.sop_instance_uid))
            .collect()
    }

    /// Whether `uid` is an object this box generated (a peer's object under the same UID
    /// does not count: it is never taken for ours).
    fn generated(&self, uid: &str) -> bool {
        matches!(self.store.instance(uid), Ok(Some(i)) if i.generated)
    }

    /// `sr` naming the SR of the study's latest earlier result version that this box made
    /// (its Predecessor Documents Sequence), when there is one: a later version replaces it.
    fn superseding(
        &self,
        d: &Delivery,
        result: &StudyResult,
        mut sr: dicom_object::FileDicomObject<dicom_object::InMemDicomObject>,
    ) -> dicom_object::FileDicomObject<dicom_object::InMemDicomObject> {
        let uid = &result.study_instance_uid;
        for version in (1..result.version).rev().take(MAX_PREDECESSOR_LOOKBACK) {
            let Ok(Some(earlier)) = stored::result(&self.store, uid, version) else {
                continue;
            };
            let objects = ObjectUids::of(d, &earlier.report_id);
            let made = objects
                .all()
                .into_iter()
                .find(|u| self.generated(&u.sr_instance))
                .cloned();
            if let Some(u) = made {
                results::sr::add_predecessor(
                    &mut sr,
                    uid,
                    &results::sr::Predecessor {
                        series: u.sr_series,
                        sop_instance: u.sr_instance,
                    },
                );
                break;
            }
        }
        sr
    }

    /// Whether this box made the object `which` picks of a report already: under its
    /// UID, or under one an earlier version gave it.
    fn made_before(&self, objects: &ObjectUids, which: fn(&ResultUids) -> &String) -> bool {
        objects.all().into_iter().any(|u| self.generated(which(u)))
    }

    /// The report objects of result `version` of `study_uid`, made once no heatmap of it is
    /// pending besides `settling` (whose `heatmap`, made or not, is being recorded now):
    /// the Parametric Map and Secondary Capture from the image whose heatmap explains the
    /// study's top finding at its highest probability ([`explained_heatmap`]), then the SR,
    /// which references the map when this box made it.
    fn settled(
        &self,
        d: &Delivery,
        study_uid: &str,
        version: u32,
        settling: &str,
        heatmap: Option<Heatmap<'_>>,
    ) -> Result<(), ObjectError> {
        let Some(result) = stored::result(&self.store, study_uid, version)? else {
            return Ok(());
        };
        let Some(study) = self.store.study(study_uid)? else {
            return Ok(());
        };
        let still_pending = result.images.iter().any(|i| {
            i.sop_instance_uid != settling && matches!(i.heatmap, HeatmapState::Pending { .. })
        });
        if is_manual_upload(&study) || still_pending {
            return Ok(());
        }
        let report = Report::from_result(&result, &study);
        let objects = ObjectUids::of(d, &result.report_id);
        // A map made before a restart keeps its image: the other objects follow it when
        // its heatmap is still at hand (the one settling now may have been skipped this
        // time), and the SR names a map only when it shows the finding the SR says.
        let mapped = self.map_source(&objects);
        let explained = explained_heatmap(&result, settling, heatmap, mapped.as_deref());
        if let Some(h) = &explained {
            self.heatmap_objects(d, &report, &objects, h)?;
        }
        let shown = explained.filter(|h| mapped.as_deref().is_none_or(|sop| sop == h.sop));
        self.settled_report(d, &report, &result, &objects, shown.map(|h| h.code))
    }

    /// The image the report's Parametric Map was made from, when this box made it already.
    fn map_source(&self, objects: &ObjectUids) -> Option<String> {
        objects
            .all()
            .into_iter()
            .map(|u| &u.pm_instance)
            .find(|uid| self.generated(uid))
            .and_then(|uid| parametric_map::source_of(&self.store, uid))
    }

    /// The Structured Report: it references the report's Parametric Map when this box made
    /// it (`explained` names the finding the map explains). Made once per report; stored
    /// with its push entries.
    fn settled_report(
        &self,
        d: &Delivery,
        report: &Report,
        result: &StudyResult,
        made: &ObjectUids,
        explained: Option<&str>,
    ) -> Result<(), ObjectError> {
        let uids = &made.uids;
        if self.made_before(made, |u| &u.sr_instance) {
            return Ok(());
        }
        let explanation = explained
            .filter(|_| self.generated(&uids.pm_instance))
            .map(|code| ObjectRef {
                sop_class: results::parametric_map::PARAMETRIC_MAP,
                sop_instance: &uids.pm_instance,
                series: &uids.pm_series,
                finding: code,
                retrieve_ae: &d.ae_title,
            });
        let built = results::sr::build(report, uids, &self.sources(report, result), explanation)
            .map(|sr| self.superseding(d, result, sr))
            .map_err(ObjectError::from);
        self.commit_object(d, report, built, Kind::StructuredReport, &uids.sr_instance)
    }

    /// Makes the report's Parametric Map and Secondary Capture of heatmap `h` (once per
    /// report each: their UIDs derive from the report id, so the store says whether they
    /// exist, across restarts too) and commits each with its push entries.
    fn heatmap_objects(
        &self,
        d: &Delivery,
        report: &Report,
        made: &ObjectUids,
        h: &Heatmap<'_>,
    ) -> Result<(), ObjectError> {
        let uids = &made.uids;
        if !self.made_before(made, |u| &u.pm_instance) {
            let built =
                parametric_map::build(&self.store, report, uids, h.sop, h.png, &d.plan.device_id);
            self.commit_object(d, report, built, Kind::ParametricMap, &uids.pm_instance)?;
        }
        if !self.made_before(made, |u| &u.sc_instance) {
            let built = secondary_capture::build(&self.store, report, uids, h, d.max_pixels);
            self.commit_object(d, report, built, Kind::SecondaryCapture, &uids.sc_instance)?;
        }
        Ok(())
    }

    /// Stores a result object `made` for `report` with its push entries in one
    /// transaction, makes it durable and wakes delivery. An object that cannot be built
    /// is logged and left unmade (the same inputs would fail again); a failure of the disk
    /// or the index is returned, for the heatmap's mark to stay and the object to be made
    /// at the next start.
    fn commit_object(
        &self,
        d: &Delivery,
        report: &Report,
        made: Result<dicom_object::FileDicomObject<dicom_object::InMemDicomObject>, ObjectError>,
        kind: Kind,
        sop_uid: &str,
    ) -> Result<(), ObjectError> {
        let study_uid = &report.study.study_instance_uid;
        let stored = made.and_then(|obj| {
            let entries = d.plan.push_entries(
                &report.report_id,
                study_uid,
                kind,
                std::slice::from_ref(&sop_uid.to_string()),
            );
            let batch = Batch {
                outbox: &d.outbox,
                entries: &entries,
            };
            results::store_object_with(&self.store, &obj, &[batch])?;
            Ok(entries)
        });
        match stored {
            Ok(entries) => {
                let flushed = self.store.flush_blocking();
                // The transaction holds the entries whether or not the flush went through
                // (the index writes them out later): count them and wake their workers.
                d.outbox.committed(&entries);
                flushed.map_err(|e| {
                    log::error!(
                        "study {study_uid}: store flush after the {} failed: {e}",
                        kind.as_str()
                    );
                    ObjectError::Store(e)
                })
            }
            Err(e) if e.worth_retrying() => {
                log::error!(
                    "study {study_uid}: {} not made: {e}; made again at the next start",
                    kind.as_str()
                );
                Err(e)
            }
            Err(e) => {
                log::error!("study {study_uid}: {} not made: {e}", kind.as_str());
                Ok(())
            }
        }
    }

    /// Whether feedback may be queued: no delivery (nothing is queued), or an outbox not
    /// nearly full (its last room is kept for the results of received studies).
    pub fn feedback_has_room(&self) -> bool {
        self.delivery
            .as_ref()
            .is_none_or(|d| !d.outbox.is_near_full())
    }

    /// Queues a radiologist's feedback for the cloud (pseudonymised; the comment and the
    /// user name are never sent). Manual uploads, and a box without delivery, send nothing.
    pub fn record_feedback(&self, f: &Feedback, role: &str) -> Result<(), OutboxError> {
        let Some(d) = &self.delivery else {
            log::info!(
                "feedback on {} recorded; no delivery configured",
                f.study_uid
            );
            return Ok(());
        };
        if let Ok(Some(study)) = self.store.study(&f.study_uid) {
            if is_manual_upload(&study) {
                return Ok(());
            }
        }
        let report_id = crate::result::report_id(&f.study_uid, f.result_version.max(1));
        let batch = d.plan.feedback_entries(f, &report_id, role, &d.secret);
        if batch.is_empty() {
            return Ok(());
        }
        d.outbox.enqueue(&batch).map(|_| ())
    }
}

/// How many earlier result versions are looked through for the SR a new one supersedes.
const MAX_PREDECESSOR_LOOKBACK: usize = 8;

/// A made heatmap of one image: the PNG (relative to the data directory) and the code of
/// the finding it explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heatmap<'a> {
    /// The image it explains.
    pub sop: &'a str,
    /// Its PNG, relative to the data directory.
    pub png: &'a str,
    /// The finding it explains.
    pub code: &'a str,
}

/// The UIDs of a report's objects, as made now and as earlier versions made them.
struct ObjectUids {
    uids: ResultUids,
    earlier: [ResultUids; 2],
}

impl ObjectUids {
    /// The UIDs of report `report_id`'s objects. Each object is made once per report:
    /// under its UID, or under a UID an earlier version gave it ([`ResultUids::earlier`];
    /// made by this box, as the ledger of generated objects says, not stored by a peer
    /// that computed that UID).
    fn of(d: &Delivery, report_id: &str) -> ObjectUids {
        let (root, device) = (&d.uid_root, &d.plan.device_id);
        ObjectUids {
            uids: ResultUids::new(root, report_id, &d.secret, device),
            earlier: ResultUids::earlier(root, report_id, &d.secret, device),
        }
    }

    /// Every derivation of the report's UIDs, the current one first.
    fn all(&self) -> [&ResultUids; 3] {
        [&self.uids, &self.earlier[0], &self.earlier[1]]
    }
}

/// The heatmap the report's map and Secondary Capture are made from: among the made ones
/// (those recorded in `result`, and `settling`'s when `made`), the one explaining the
/// study's top finding (the one the Secondary Capture's caption names) on the image where
/// that finding is most probable; failing that, the most probable finding any map explains;
/// ties go to the earlier image. A study of several images thus shows the map of the image
/// that holds its finding, whichever heatmap settled first. The image a map was already
/// made from (`mapped`) goes first while its heatmap is made.
fn explained_heatmap<'a>(
    result: &'a StudyResult,
    settling: &str,
    made: Option<Heatmap<'a>>,
    mapped: Option<&str>,
) -> Option<Heatmap<'a>> {
    // The finding the study is reported for: the most probable positive one, else the
    // most probable (as each image's heatmap chose its own, `heatmap_target`).
    let by_probability = |a: &&crate::result::Finding, b: &&crate::result::Finding| {
        a.probability.total_cmp(&b.probability)
    };
    let top = result
        .findings
        .iter()
        .filter(|f| f.positive)
        .max_by(by_probability)
        .or_else(|| result.findings.iter().max_by(by_probability))
        .map(|f| f.code.as_str());
    let mut best: Option<((bool, bool, f32), Heatmap<'a>)> = None;
    for image in &result.images {
        let heatmap = if image.sop_instance_uid == settling {
            made
        } else {
            match &image.heatmap {
                HeatmapState::Done { code, path } => Some(Heatmap {
                    sop: &image.sop_instance_uid,
                    png: path,
                    code,
                }),
                _ => None,
            }
        };
        let Some(h) = heatmap else { continue };
        let probability = image
            .findings
            .iter()
            .find(|f| f.code == h.code)
            .map_or(f32::NEG_INFINITY, |f| f.probability);
        let rank = (Some(h.sop) == mapped, Some(h.code) == top, probability);
        let better = best
            .as_ref()
            .is_none_or(|(r, _)| rank.partial_cmp(r) == Some(std::cmp::Ordering::Greater));
        if better {
            best = Some((rank, h));
        }
    }
    best.map(|(_, h)| h)
}

/// Why no image of `result` could be analysed, when none could and some failed (the
/// study then ends in `error`); `None` when any image was analysed. A study some of whose
/// images failed is delivered with the others' findings and a caveat saying how many could
/// not be analysed ([`StudyResult::unanalysed`]), never as a plain negative.
pub fn failure(result: &StudyResult) -> Option<String> {
    if result
        .images
        .iter()
        .any(|i| i.status == ImageStatus::Analysed)
    {
        return None;
    }
    let errors: Vec<String> = result
        .images
        .iter()
        .filter(|i| i.status == ImageStatus::Error)
        .map(|i| {
            format!(
                "{}: {}",
                i.sop_instance_uid,
                i.reason.clone().unwrap_or_default()
            )
        })
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceRecord;
    use crate::result::{ImageResult, Timings};
    use crate::store::outbox::{Destination, OutboxLimits};

    fn result(study: &str, status: ImageStatus) -> StudyResult {
        let image = ImageResult {
            sop_instance_uid: format!("{study}.1"),
            series_instance_uid: format!("{study}.0"),
            status,
            reason: Some("undecodable".into()),
            findings: Vec::new(),
            timings: Timings::default(),
            heatmap: HeatmapState::None,
            caveat: None,
        };
        crate::result::fixtures::study_result(study, vec![image])
    }

    /// Records `r`, analysed in full, with no heatmap to come.
    async fn record(recorder: &Recorder, r: &StudyResult) -> Committed {
        recorder
            .record_result(Outcome {
                result: r,
                heatmaps_to_make: &[],
                failure: None,
            })
            .await
            .unwrap()
    }

    fn setup() -> (tempfile::TempDir, Arc<Store>, Recorder, Arc<Outbox>) {
        setup_with(OutboxLimits::default())
    }

    /// [`setup`] with the recorder writing to the store's audit trail, also returned.
    fn setup_audited() -> (
        tempfile::TempDir,
        Arc<Store>,
        Recorder,
        Arc<Outbox>,
        Arc<crate::audit::Audit>,
    ) {
        let (dir, store, recorder, outbox) = setup();
        let audit = Arc::new(crate::audit::Audit::open(&store).unwrap());
        let recorder = recorder.with_audit(audit.clone());
        (dir, store, recorder, outbox, audit)
    }

    fn setup_with(limits: OutboxLimits) -> (tempfile::TempDir, Arc<Store>, Recorder, Arc<Outbox>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let outbox = Arc::new(store.outbox(limits).unwrap());
        let mut cfg = crate::config::Config::default();
        cfg.hl7.enabled = true;
        cfg.mqtt.enabled = true;
        // The box the tests' result UIDs name.
        cfg.device.device_id = "edge-01".into();
        let delivery = Delivery {
            outbox: Arc::clone(&outbox),
            plan: DeliveryPlan::from_config(&cfg),
            secret: Arc::new(SiteSecret::from_bytes(&[7u8; 32])),
            uid_root: "1.2.826.0.1.3680043.8.498".into(),
            ae_title: "DULI".into(),
            max_pixels: cfg.inference.max_pixels,
        };
        let recorder = Recorder::new(Arc::clone(&store), Some(delivery));
        (dir, store, recorder, outbox)
    }

    /// Instance `n` of `study`, naming Patient ID `patient`, received; the study then
    /// awaits its result.
    fn receive(store: &Store, study: &str, n: i64, patient: &str) {
        let inst = InstanceRecord {
            sop_instance_uid: format!("{study}.{n}"),
            study_instance_uid: study.into(),
            received_at: n,
            ..Default::default()
        };
        let attrs = StudyRecord {
            patient_id: patient.into(),
            ..Default::default()
        };
        store.commit_instance(&inst, &attrs).unwrap();
        store.force_state(study, StudyState::Inferring);
    }

    fn add_study(store: &Store, study: &str, patient: &str) {
        receive(store, study, 1, patient);
    }

    /// The modality resends `study` corrected: an instance naming Patient ID `patient`.
    fn give_to(store: &Store, study: &str, patient: &str) {
        receive(store, study, 2, patient);
    }

    /// The Patient ID `study`'s results are reported for.
    fn reported_for(store: &Store, study: &str) -> Option<String> {
        let record = store.study(study).unwrap().unwrap();
        record.reported_for.map(|p| p.patient_id)
    }

    /// Result version `v` of `study`.
    fn version(study: &str, v: u32) -> StudyResult {
        let mut r = result(study, ImageStatus::Analysed);
        r.version = v;
        r.report_id = crate::result::report_id(study, v);
        r
    }

    /// A study given to another patient after its result objects were made: the next
    /// result rejects them by an IOCM rejection note (pushed to PACS between the former
    /// SR and the new one), they leave the study (and stay out of it when the index is
    /// rebuilt), the study keeps its new patient, and a later result makes no second note.
    #[tokio::test]
    async fn result_objects_of_a_former_patient_are_rejected_once() {
        use crate::dimse::uids::KEY_OBJECT_SELECTION;
        let (dir, store, mut recorder, outbox) = setup();
        if let Some(d) = recorder.delivery.as_mut() {
            d.plan.pacs_push = vec![crate::deliver::plan::PushDestination {
                name: "main".into(),
                objects: vec![crate::config::ResultObject::Sr],
            }];
        }
        add_study(&store, "1.2.9", "PAT-A");
        record(&recorder, &version("1.2.9", 1)).await;
        let generated = |store: &Store| -> Vec<InstanceRecord> {
            let all = store.instances_of("1.2.9").unwrap();
            all.into_iter().filter(|i| i.generated).collect()
        };
        let first_sr = generated(&store)[0].sop_instance_uid.clone();
        give_to(&store, "1.2.9", "PAT-B");
        record(&recorder, &version("1.2.9", 2)).await;
        store.force_state("1.2.9", StudyState::Inferring);
        record(&recorder, &version("1.2.9", 3)).await;

        let ours = generated(&store);
        let notes: Vec<&InstanceRecord> = ours
            .iter()
            .filter(|i| i.sop_class_uid == KEY_OBJECT_SELECTION)
            .collect();
        assert_eq!(notes.len(), 1, "{ours:#?}");
        assert!(!ours.iter().any(|i| i.sop_instance_uid == first_sr));
        assert!(store.instance(&first_sr).unwrap().unwrap().rejected);
        let note = dicom_object::open_file(store.root().join(&notes[0].path)).unwrap();
        let named = results::rejection::evidence_of(&note);
        assert_eq!(named, std::slice::from_ref(&first_sr));
        let patient = note
            .element(dicom_dictionary_std::tags::PATIENT_ID)
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(patient.trim(), "PAT-A");
        let study = store.study("1.2.9").unwrap().unwrap();
        assert_eq!(study.patient_id, "PAT-B");
        // The two received instances, the note and the SRs of versions 2 and 3.
        assert_eq!(study.instances, 5);
        let pushed: Vec<Kind> = outbox
            .list(Some(&Destination::Pacs("main".into())))
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            pushed,
            [
                Kind::StructuredReport,
                Kind::RejectionNote,
                Kind::StructuredReport,
                Kind::StructuredReport
            ]
        );

        // A lost index is rebuilt without the rejected SR in the study, and the note's
        // former patient does not become the study's.
        drop((recorder, outbox, store));
        std::fs::remove_dir_all(dir.path().join("index")).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ours = generated(&store);
        assert_eq!(ours.len(), 3, "{ours:#?}");
        assert!(!ours.iter().any(|i| i.sop_instance_uid == first_sr));
        assert!(store.instance(&first_sr).unwrap().unwrap().rejected);
        assert_eq!(store.study("1.2.9").unwrap().unwrap().patient_id, "PAT-B");
    }

    /// A study given to another patient whose resend cannot be analysed: what went out for
    /// the former patient is withdrawn all the same (the HL7 withdrawal, the rejection
    /// note), the study is then reported for no one, and the next result that is made
    /// reports for the new patient without withdrawing anything twice.
    #[tokio::test]
    async fn a_correction_that_cannot_be_analysed_still_withdraws_the_former_result() {
        use crate::dimse::uids::KEY_OBJECT_SELECTION;
        let (_dir, store, recorder, outbox, audit) = setup_audited();
        add_study(&store, "1.2.5", "PAT-A");
        record(&recorder, &version("1.2.5", 1)).await;
        give_to(&store, "1.2.5", "PAT-B");
        let failed = version("1.2.5", 2);
        recorder
            .record_result(Outcome {
                result: &failed,
                heatmaps_to_make: &[],
                failure: Some("undecodable"),
            })
            .await
            .unwrap();
        let study = store.study("1.2.5").unwrap().unwrap();
        assert_eq!(study.state, StudyState::Error);
        assert_eq!(study.reported_for, None);
        let kinds = |outbox: &Outbox| -> Vec<Kind> {
            let all = outbox.list(Some(&Destination::Hl7)).unwrap();
            all.into_iter().map(|e| e.kind).collect()
        };
        assert_eq!(kinds(&outbox), [Kind::Report, Kind::Withdrawal]);
        let generated = store.instances_of("1.2.5").unwrap();
        assert!(generated
            .iter()
            .any(|i| i.sop_class_uid == KEY_OBJECT_SELECTION));
        store.force_state("1.2.5", StudyState::Inferring);
        record(&recorder, &version("1.2.5", 3)).await;
        let hl7: Vec<(Kind, String)> = outbox
            .list(Some(&Destination::Hl7))
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.report_id))
            .collect();
        let id = |v| crate::result::report_id("1.2.5", v);
        assert_eq!(
            hl7,
            [
                (Kind::Report, id(1)),
                (Kind::Withdrawal, id(1)),
                (Kind::Report, id(3)),
            ]
        );
        let notes = store
            .instances_of("1.2.5")
            .unwrap()
            .into_iter()
            .filter(|i| i.sop_class_uid == KEY_OBJECT_SELECTION)
            .count();
        assert_eq!(notes, 1);
        assert_eq!(reported_for(&store, "1.2.5"), Some("PAT-B".to_string()));
        assert_eq!(
            changes_of_hands(&audit),
            [(
                "1.2.5".to_string(),
                1,
                vec!["PAT-A".to_string(), "PAT-B".to_string()]
            )]
        );
    }

    /// A study given to another patient after its result was reported: the next result
    /// first withdraws the last one from the patient it was reported for (HL7, every
    /// observation `W`), then reports for the new patient; a third result withdraws
    /// nothing more.
    #[tokio::test]
    async fn a_result_reported_for_a_former_patient_is_withdrawn_before_the_next() {
        let (_dir, store, recorder, outbox, audit) = setup_audited();
        add_study(&store, "1.2.8", "PAT-A");
        assert_eq!(
            record(&recorder, &result("1.2.8", ImageStatus::Analysed)).await,
            Committed::Done
        );
        assert_eq!(reported_for(&store, "1.2.8"), Some("PAT-A".to_string()));
        give_to(&store, "1.2.8", "PAT-B");
        record(&recorder, &version("1.2.8", 2)).await;
        store.force_state("1.2.8", StudyState::Inferring);
        record(&recorder, &version("1.2.8", 3)).await;
        let hl7: Vec<String> = outbox
            .list(Some(&Destination::Hl7))
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.payload {
                crate::store::outbox::Payload::Hl7 { message } => Some(message),
                _ => None,
            })
            .collect();
        let pid3 = |m: &str| {
            m.split('\r')
                .find(|s| s.starts_with("PID|"))
                .and_then(|s| s.split('|').nth(3))
                .unwrap_or_default()
                .to_string()
        };
        let withdrawn =
            |m: &str| m.contains("|W|") && m.contains(crate::deliver::hl7::message::WITHDRAWN_NOTE);
        let seen: Vec<(String, bool)> = hl7.iter().map(|m| (pid3(m), withdrawn(m))).collect();
        assert_eq!(
            seen,
            [
                ("PAT-A".to_string(), false),
                ("PAT-A".to_string(), true),
                ("PAT-B".to_string(), false),
                ("PAT-B".to_string(), false),
            ]
        );
        // The change of hands is in the audit trail once, naming both patients.
        assert_eq!(
            changes_of_hands(&audit),
            [(
                "1.2.8".to_string(),
                1,
                vec!["PAT-A".to_string(), "PAT-B".to_string()]
            )]
        );
    }

    /// The records of studies given to another patient in `audit`: the study, the
    /// withdrawals queued, the patients named.
    fn changes_of_hands(audit: &crate::audit::Audit) -> Vec<(String, usize, Vec<String>)> {
        audit
            .records(0, 1000)
            .unwrap()
            .into_iter()
            .filter(|r| r.action == crate::audit::Action::Update && r.actor == "system")
            .map(|r| {
                let queued = r
                    .detail
                    .split(": ")
                    .nth(1)
                    .and_then(|s| s.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(usize::MAX);
                (r.object.clone(), queued, r.patients.clone())
            })
            .collect()
    }

    /// A later result version's SR names the SR it supersedes (Predecessor Documents
    /// Sequence), and a finding keeps its tracking UID from one version to the next.
    #[tokio::test]
    async fn a_later_sr_names_the_one_it_supersedes_and_keeps_tracking_uids() {
        use dicom_dictionary_std::tags;
        let (_dir, store, recorder, _outbox) = setup();
        add_study(&store, "1.2.6", "PAT-6");
        let with_finding = |v: u32| {
            let mut r = result("1.2.6", ImageStatus::Analysed);
            r.version = v;
            r.report_id = crate::result::report_id("1.2.6", v);
            r.findings = vec![crate::result::fixtures::finding("PNEUMONIA", 0.8)];
            r
        };
        record(&recorder, &with_finding(1)).await;
        store.force_state("1.2.6", StudyState::Inferring);
        record(&recorder, &with_finding(2)).await;
        let key = SiteSecret::from_bytes(&[7u8; 32]);
        let root = "1.2.826.0.1.3680043.8.498";
        let sr_of = |v: u32| {
            let uids =
                ResultUids::new(root, &crate::result::report_id("1.2.6", v), &key, "edge-01");
            let rec = store.instance(&uids.sr_instance).unwrap().unwrap();
            (
                uids,
                dicom_object::open_file(store.root().join(&rec.path)).unwrap(),
            )
        };
        let (first, sr1) = sr_of(1);
        let (_, sr2) = sr_of(2);
        assert!(sr1
            .element_opt(tags::PREDECESSOR_DOCUMENTS_SEQUENCE)
            .unwrap()
            .is_none());
        let pred = sr2.element(tags::PREDECESSOR_DOCUMENTS_SEQUENCE).unwrap();
        let study = &pred.items().unwrap()[0];
        let series = &study
            .element(tags::REFERENCED_SERIES_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        let sop = &series
            .element(tags::REFERENCED_SOP_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        let text = |o: &dicom_object::InMemDicomObject, t| {
            o.element(t)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_string()
        };
        assert_eq!(text(study, tags::STUDY_INSTANCE_UID), "1.2.6");
        assert_eq!(text(series, tags::SERIES_INSTANCE_UID), first.sr_series);
        assert_eq!(
            text(sop, tags::REFERENCED_SOP_INSTANCE_UID),
            first.sr_instance
        );
        // The finding's tracking UID is the same in both documents (found in each's dump).
        let tracked = first.tracking("1.2.6", "PNEUMONIA");
        let tracking = |sr: &dicom_object::DefaultDicomObject| format!("{sr:?}").contains(&tracked);
        assert!(tracking(&sr1) && tracking(&sr2));
        // The device observer is this box (the configured device id), not the site.
        let ours = crate::results::uids::device_observer(root, &key, "edge-01");
        let another = crate::results::uids::device_observer(root, &key, "another-box");
        let dump = format!("{sr1:?}");
        assert!(dump.contains(&ours) && !dump.contains(&another));
    }

    /// Feedback stops being taken while the outbox is nearly full: however much of it
    /// radiologists give, the last room stays for the results of received studies (a
    /// full outbox refuses new studies).
    #[tokio::test]
    async fn feedback_never_fills_the_outbox() {
        let (_dir, store, recorder, outbox) = setup_with(OutboxLimits {
            max_entries: 10,
            max_bytes: 1 << 30,
            near_full_ratio: 0.8,
        });
        add_study(&store, "1.2.7", "PAT-7");
        let mut queued = 0;
        for i in 0..50i64 {
            if !recorder.feedback_has_room() {
                break;
            }
            let f = Feedback {
                study_uid: "1.2.7".into(),
                user: "rita".into(),
                agree: i % 2 == 0,
                comment: String::new(),
                finding: None,
                result_version: 1,
                at_ms: 1_700_000_000_000 + i,
            };
            recorder.record_feedback(&f, "radiologist").unwrap();
            queued += 1;
        }
        assert_eq!(outbox.fill().entries, 8, "queued {queued}");
        assert!(outbox.is_near_full() && !outbox.is_full());
        assert!(!recorder.feedback_has_room());
    }

    /// One call records the result, the study's `done`, the SR and every outbox entry,
    /// wakes delivery only then and broadcasts the result.
    #[tokio::test]
    async fn a_result_is_recorded_with_its_report_entries_and_sr_then_announced() {
        let (_dir, store, recorder, outbox) = setup();
        add_study(&store, "1.2.9", "PAT-1");
        let mut changes = store.changes();
        let r = result("1.2.9", ImageStatus::Analysed);
        let committed = recorder
            .record_result(Outcome {
                result: &r,
                heatmaps_to_make: &["1.2.9.1"],
                failure: None,
            })
            .await
            .unwrap();
        assert_eq!(committed, Committed::Done);
        assert_eq!(
            store.study("1.2.9").unwrap().unwrap().state,
            StudyState::Done
        );
        assert!(stored::result(&store, "1.2.9", 1).unwrap().is_some());
        let dests: Vec<Destination> = outbox
            .list(None)
            .unwrap()
            .into_iter()
            .map(|e| e.dest)
            .collect();
        assert_eq!(dests.len(), 2, "{dests:?}");
        assert!(dests.contains(&Destination::Hl7) && dests.contains(&Destination::Mqtt));
        assert_eq!(
            outbox.fill().entries,
            2,
            "the outbox was told of the committed entries"
        );
        let key = SiteSecret::from_bytes(&[7u8; 32]);
        let sr =
            ResultUids::new("1.2.826.0.1.3680043.8.498", &r.report_id, &key, "edge-01").sr_instance;
        assert_eq!(
            stored::pending_heatmaps(&store).unwrap(),
            vec![("1.2.9".to_string(), 1, "1.2.9.1".to_string())]
        );
        let mut announced = false;
        while let Ok(c) = changes.try_recv() {
            announced |= matches!(c, Change::Result { study_uid } if study_uid == "1.2.9");
        }
        assert!(announced);
        // Its heatmap is still to come: the SR waits for it, so that it never names a map
        // that is not made.
        assert!(store.instance(&sr).unwrap().is_none(), "the SR waits");
        // The heatmap is skipped (a full backlog): the SR is made now, without a map.
        let skip = || {
            recorder
                .record_heatmap(
                    "1.2.9",
                    1,
                    "1.2.9.1",
                    HeatmapState::Skipped {
                        reason: "backlog".into(),
                    },
                    0.0,
                )
                .unwrap()
        };
        skip();
        let made = store.instance(&sr).unwrap().expect("the SR is stored");
        assert!(made.generated);
        let sr_file = dicom_object::open_file(store.root().join(&made.path)).unwrap();
        let mut text = Vec::new();
        sr_file
            .write_dataset_with_ts(
                &mut text,
                &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
            )
            .unwrap();
        let pm =
            ResultUids::new("1.2.826.0.1.3680043.8.498", &r.report_id, &key, "edge-01").pm_instance;
        assert!(
            !text.windows(pm.len()).any(|w| w == pm.as_bytes()),
            "the SR names a Parametric Map that was never made"
        );
        assert!(stored::pending_heatmaps(&store).unwrap().is_empty());
        // Recording it again (as after a crash before the state was kept) makes no second SR.
        skip();
        let sr_entries = outbox
            .list(None)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == Kind::StructuredReport)
            .count();
        assert!(sr_entries <= 1, "{sr_entries} SR pushes");
    }

    /// A result object the disk fails to take (here: the store's folder for incoming files
    /// is gone) does not settle its heatmap: the mark stays, for the next start to make the
    /// object again; once the disk takes it, the SR is made and the mark cleared.
    #[tokio::test]
    async fn an_object_the_disk_fails_to_take_keeps_its_heatmap_pending() {
        let (dir, store, recorder, _outbox) = setup();
        add_study(&store, "1.2.8", "PAT-2");
        let r = result("1.2.8", ImageStatus::Analysed);
        let committed = recorder
            .record_result(Outcome {
                result: &r,
                heatmaps_to_make: &["1.2.8.1"],
                failure: None,
            })
            .await
            .unwrap();
        assert_eq!(committed, Committed::Done);
        let key = SiteSecret::from_bytes(&[7u8; 32]);
        let sr =
            ResultUids::new("1.2.826.0.1.3680043.8.498", &r.report_id, &key, "edge-01").sr_instance;
        let tmp = dir.path().join("tmp");
        std::fs::remove_dir_all(&tmp).unwrap();
        std::fs::write(&tmp, b"not a folder").unwrap();
        let skip = || {
            recorder.record_heatmap(
                "1.2.8",
                1,
                "1.2.8.1",
                HeatmapState::Skipped {
                    reason: "backlog".into(),
                },
                0.0,
            )
        };
        let err = skip().unwrap_err();
        assert!(err.worth_retrying(), "{err}");
        assert!(store.instance(&sr).unwrap().is_none());
        assert_eq!(
            stored::pending_heatmaps(&store).unwrap(),
            vec![("1.2.8".to_string(), 1, "1.2.8.1".to_string())],
            "the mark stays"
        );
        std::fs::remove_file(&tmp).unwrap();
        std::fs::create_dir(&tmp).unwrap();
        skip().unwrap();
        assert!(store.instance(&sr).unwrap().is_some(), "the SR is made");
        assert!(stored::pending_heatmaps(&store).unwrap().is_empty());
    }

    /// The SR of a study outside the intended use (nothing analysed, no finding) still
    /// has its TID 1500 Image Library: the images that were considered.
    #[tokio::test]
    async fn the_sr_of_a_study_outside_the_intended_use_names_its_images() {
        let (_dir, store, recorder, _outbox) = setup();
        add_study(&store, "1.3.9", "PAT-9");
        let mut r = result("1.3.9", ImageStatus::NotApplicable);
        r.images[0].reason = Some("age 45 y outside the model's 1\u{2013}5 y".into());
        assert_eq!(failure(&r), None);
        record(&recorder, &r).await;
        let key = SiteSecret::from_bytes(&[7u8; 32]);
        let sr =
            ResultUids::new("1.2.826.0.1.3680043.8.498", &r.report_id, &key, "edge-01").sr_instance;
        let made = store.instance(&sr).unwrap().expect("the SR is stored");
        let sr = dicom_object::open_file(store.root().join(&made.path)).unwrap();
        let library = sr
            .element(dicom_dictionary_std::tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
            .iter()
            .find(|i| {
                i.element(dicom_dictionary_std::tags::CONCEPT_NAME_CODE_SEQUENCE)
                    .ok()
                    .and_then(|e| {
                        e.items()?
                            .first()?
                            .element(dicom_dictionary_std::tags::CODE_VALUE)
                            .ok()?
                            .to_str()
                            .ok()
                    })
                    .is_some_and(|v| v.trim_end_matches(['\0', ' ']) == "111028")
            })
            .cloned()
            .expect("an Image Library container");
        let mut bytes = Vec::new();
        library
            .write_dataset_with_ts(
                &mut bytes,
                &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
            )
            .unwrap();
        assert!(
            bytes.windows(7).any(|w| w == b"1.3.9.1"),
            "the image is not in the library"
        );
    }

    /// A report whose SR an earlier version made under a UID of its own (before result
    /// object UIDs were keyed, or before they named the box) gets no second SR when its
    /// heatmap settles after the upgrade.
    #[tokio::test]
    async fn a_report_made_by_an_earlier_version_keeps_its_objects() {
        let root = "1.2.826.0.1.3680043.8.498";
        let key = SiteSecret::from_bytes(&[7u8; 32]);
        for earlier in 0..2 {
            let (_dir, store, recorder, outbox) = setup();
            add_study(&store, "1.3.7", "PAT-7");
            let r = result("1.3.7", ImageStatus::Analysed);
            recorder
                .record_result(Outcome {
                    result: &r,
                    heatmaps_to_make: &["1.3.7.1"],
                    failure: None,
                })
                .await
                .unwrap();
            let old = ResultUids::earlier(root, &r.report_id, &key, "edge-01")[earlier]
                .sr_instance
                .clone();
            store
                .commit_instance(
                    &InstanceRecord {
                        sop_instance_uid: old.clone(),
                        study_instance_uid: "1.3.7".into(),
                        generated: true,
                        ..Default::default()
                    },
                    &StudyRecord::default(),
                )
                .unwrap();
            recorder
                .record_heatmap(
                    "1.3.7",
                    1,
                    "1.3.7.1",
                    HeatmapState::Skipped {
                        reason: "backlog".into(),
                    },
                    0.0,
                )
                .unwrap();
            let keyed = ResultUids::new(root, &r.report_id, &key, "edge-01").sr_instance;
            assert_ne!(keyed, old);
            assert!(store.instance(&keyed).unwrap().is_none(), "a second SR");
            assert!(!outbox
                .list(None)
                .unwrap()
                .iter()
                .any(|e| e.kind == Kind::StructuredReport));
        }
    }

    /// An analysed image `sop` with `findings` and `heatmap`.
    fn image(sop: &str, findings: &[(&str, f32)], heatmap: HeatmapState) -> ImageResult {
        ImageResult {
            sop_instance_uid: sop.into(),
            series_instance_uid: "9.0".into(),
            status: ImageStatus::Analysed,
            reason: None,
            caveat: None,
            findings: findings
                .iter()
                .map(|(c, p)| crate::result::fixtures::finding(c, *p))
                .collect(),
            timings: Timings::default(),
            heatmap,
        }
    }

    fn done(code: &str, png: &str) -> HeatmapState {
        HeatmapState::Done {
            code: code.into(),
            path: png.into(),
        }
    }

    /// The report's map comes from the image whose heatmap explains the study's top
    /// finding where it is most probable, whichever heatmap settled first; a map of
    /// another finding only when none explains the top one; ties go to the earlier image.
    #[test]
    fn the_report_map_is_of_the_image_holding_the_top_finding() {
        let r = crate::result::fixtures::study_result(
            "9",
            vec![
                image(
                    "9.1",
                    &[("PNEUMONIA", 0.6), ("EFFUSION", 0.95)],
                    done("PNEUMONIA", "a.png"),
                ),
                image(
                    "9.2",
                    &[("PNEUMONIA", 0.9), ("EFFUSION", 0.1)],
                    HeatmapState::Pending {
                        code: "PNEUMONIA".into(),
                    },
                ),
                image(
                    "9.3",
                    &[("PNEUMONIA", 0.2), ("EFFUSION", 0.7)],
                    done("EFFUSION", "c.png"),
                ),
            ],
        );
        let made = |sop, png, code| Some(Heatmap { sop, png, code });
        // EFFUSION (0.95 on 9.1, which has a PNEUMONIA map) is the study's top finding: the
        // only EFFUSION map (0.7 on 9.3) wins over any PNEUMONIA map, however probable.
        let chosen = explained_heatmap(&r, "9.2", made("9.2", "b.png", "PNEUMONIA"), None);
        assert_eq!(chosen.map(|h| h.sop), Some("9.3"));
        // A map already made from 9.2 (before a restart) keeps its image.
        let chosen = explained_heatmap(&r, "9.2", made("9.2", "b.png", "PNEUMONIA"), Some("9.2"));
        assert_eq!(chosen.map(|h| h.sop), Some("9.2"));
        // ... unless 9.2's heatmap is not made this time: then the best other one.
        let chosen = explained_heatmap(&r, "9.2", None, Some("9.2"));
        assert_eq!(chosen.map(|h| h.sop), Some("9.3"));
        // Without an EFFUSION map: the most probable PNEUMONIA map, the one settling now.
        let mut only_pneumonia = r.clone();
        only_pneumonia.images[2].heatmap = HeatmapState::Skipped {
            reason: "backlog".into(),
        };
        let chosen = explained_heatmap(
            &only_pneumonia,
            "9.2",
            made("9.2", "b.png", "PNEUMONIA"),
            None,
        );
        assert_eq!(chosen, made("9.2", "b.png", "PNEUMONIA"));
        // The settling image's heatmap failed: the recorded one.
        let chosen = explained_heatmap(&only_pneumonia, "9.2", None, None);
        assert_eq!(chosen.map(|h| (h.sop, h.png)), Some(("9.1", "a.png")));
        // Equal probabilities: the earlier image.
        let mut tie = only_pneumonia.clone();
        tie.images[1].findings[0].probability = 0.6;
        let chosen = explained_heatmap(&tie, "9.2", made("9.2", "b.png", "PNEUMONIA"), None);
        assert_eq!(chosen.map(|h| h.sop), Some("9.1"));
        // The study is reported for its most probable *positive* finding: EFFUSION at
        // 0.95 under a threshold of 0.99 is negative, so a PNEUMONIA map explains it.
        let mut negative_top = r.clone();
        let images = negative_top
            .images
            .iter_mut()
            .flat_map(|i| i.findings.iter_mut());
        for f in negative_top.findings.iter_mut().chain(images) {
            if f.code == "EFFUSION" {
                f.threshold = 0.99;
                f.positive = false;
            }
        }
        let chosen = explained_heatmap(
            &negative_top,
            "9.2",
            made("9.2", "b.png", "PNEUMONIA"),
            None,
        );
        assert_eq!(chosen.map(|h| (h.sop, h.code)), Some(("9.2", "PNEUMONIA")));
        // No made map at all.
        let mut none = only_pneumonia;
        none.images[0].heatmap = HeatmapState::Failed { reason: "x".into() };
        assert_eq!(explained_heatmap(&none, "9.2", None, None), None);
    }

    /// Stores a header-only DX image `sop` of `study` (what the map reads of its source).
    fn store_image(store: &Store, study: &str, sop: &str) {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_dictionary_std::tags;
        use dicom_object::meta::FileMetaTableBuilder;
        const DX: &str = "1.2.840.10008.5.1.4.1.1.1.1";
        let mut obj = dicom_object::InMemDicomObject::new_empty();
        for (tag, value) in [
            (tags::SOP_CLASS_UID, DX),
            (tags::SOP_INSTANCE_UID, sop),
            (tags::STUDY_INSTANCE_UID, study),
            (tags::SERIES_INSTANCE_UID, "9.0"),
        ] {
            obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(value)));
        }
        obj.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(64u16),
        ));
        obj.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(48u16),
        ));
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN)
                    .media_storage_sop_class_uid(DX)
                    .media_storage_sop_instance_uid(sop),
            )
            .unwrap();
        let path = format!("{sop}.dcm");
        file.write_to_file(store.root().join(&path)).unwrap();
        let inst = InstanceRecord {
            sop_instance_uid: sop.into(),
            sop_class_uid: DX.into(),
            study_instance_uid: study.into(),
            series_instance_uid: "9.0".into(),
            path,
            received_at: 1,
            ..Default::default()
        };
        store
            .commit_instance(&inst, &StudyRecord::default())
            .unwrap();
    }

    /// A study of two images whose first heatmap settles first but whose second holds the
    /// finding: no map is made until both are settled, and then from the second image.
    #[tokio::test]
    async fn a_study_of_two_images_gets_the_map_of_the_one_holding_the_finding() {
        let (_dir, store, recorder, _outbox) = setup();
        add_study(&store, "9", "PAT-9");
        for sop in ["9.1", "9.2"] {
            store_image(&store, "9", sop);
        }
        image::GrayImage::from_pixel(8, 8, image::Luma([200u8]))
            .save(store.root().join("heat.png"))
            .unwrap();
        let pending = || HeatmapState::Pending {
            code: "PNEUMONIA".into(),
        };
        let r = crate::result::fixtures::study_result(
            "9",
            vec![
                image("9.1", &[("PNEUMONIA", 0.55)], pending()),
                image("9.2", &[("PNEUMONIA", 0.92)], pending()),
            ],
        );
        recorder
            .record_result(Outcome {
                result: &r,
                heatmaps_to_make: &["9.1", "9.2"],
                failure: None,
            })
            .await
            .unwrap();
        let key = SiteSecret::from_bytes(&[7u8; 32]);
        let uids = ResultUids::new("1.2.826.0.1.3680043.8.498", &r.report_id, &key, "edge-01");
        recorder
            .record_heatmap("9", 1, "9.1", done("PNEUMONIA", "heat.png"), 1.0)
            .unwrap();
        assert!(
            store.instance(&uids.pm_instance).unwrap().is_none(),
            "the map waits for every heatmap of the report"
        );
        recorder
            .record_heatmap("9", 1, "9.2", done("PNEUMONIA", "heat.png"), 1.0)
            .unwrap();
        let pm = store
            .instance(&uids.pm_instance)
            .unwrap()
            .expect("the map is made once both are settled");
        let pm = dicom_object::open_file(store.root().join(&pm.path)).unwrap();
        let source = pm
            .element(dicom_dictionary_std::tags::REFERENCED_SERIES_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0]
            .element(dicom_dictionary_std::tags::REFERENCED_INSTANCE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0]
            .element(dicom_dictionary_std::tags::REFERENCED_SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string();
        assert_eq!(source, "9.2");
        assert!(
            store.instance(&uids.sr_instance).unwrap().is_some(),
            "and the SR"
        );
    }

    /// A study with one image analysed (negative) and one that failed is done and
    /// delivered, and every message says that an image could not be analysed.
    #[tokio::test]
    async fn a_partly_analysed_study_is_delivered_with_its_caveat() {
        let (_dir, store, recorder, outbox) = setup();
        add_study(&store, "1.3.5", "PAT-5");
        let mut r = result("1.3.5", ImageStatus::Analysed);
        let mut failed = r.images[0].clone();
        failed.sop_instance_uid = "1.3.5.2".into();
        failed.status = ImageStatus::Error;
        failed.reason = Some("cannot decode pixel data: truncated".into());
        r.images.push(failed);
        assert_eq!(failure(&r), None);
        record(&recorder, &r).await;
        assert_eq!(
            store.study("1.3.5").unwrap().unwrap().state,
            StudyState::Done
        );
        let caveat = "1 of 2 images could not be analysed (decode error)";
        let entries = outbox.list(None).unwrap();
        let mut said = 0;
        for e in &entries {
            match &e.payload {
                crate::store::outbox::Payload::Hl7 { message } => {
                    assert!(
                        message.contains(&format!("NTE|2|L|Caveat: {caveat}")),
                        "{message}"
                    );
                    said += 1;
                }
                crate::store::outbox::Payload::Mqtt { body, .. } => {
                    let v: serde_json::Value = serde_json::from_str(body).unwrap();
                    assert!(
                        v["caveat"].as_str().unwrap_or_default().starts_with(caveat),
                        "{body}"
                    );
                    said += 1;
                }
                _ => {}
            }
        }
        assert_eq!(said, 2, "{entries:?}");
    }

    /// A study none of whose images could be analysed ends in `error` and owes nothing;
    /// a manual upload is recorded but never sent.
    #[tokio::test]
    async fn failed_studies_and_manual_uploads_owe_nothing() {
        let (_dir, store, recorder, outbox) = setup();
        add_study(&store, "1.3.1", "PAT-2");
        let r = result("1.3.1", ImageStatus::Error);
        let why = failure(&r).unwrap();
        assert!(why.contains("undecodable"), "{why}");
        recorder
            .record_result(Outcome {
                result: &r,
                heatmaps_to_make: &[],
                failure: Some(&why),
            })
            .await
            .unwrap();
        let s = store.study("1.3.1").unwrap().unwrap();
        assert_eq!(s.state, StudyState::Error);
        assert!(s.error.unwrap().contains("no image could be analysed"));

        add_study(&store, "1.3.2", "UPLOAD-42");
        let r = result("1.3.2", ImageStatus::Analysed);
        assert!(failure(&r).is_none());
        record(&recorder, &r).await;
        assert_eq!(
            store.study("1.3.2").unwrap().unwrap().state,
            StudyState::Done
        );
        assert!(outbox.list(None).unwrap().is_empty());
    }
}
