//! The Structured Report of a study result, per IHE AI Results (AIR): a Comprehensive SR
//! holding a TID 1500 Imaging Measurement Report of image-level findings (no spatial
//! coordinates), in its own series (modality SR) of the original study, one document per
//! report version. The content tree:
//!
//! - TID 1204 language (`en-US`), TID 1001/1004 observation context: the observer is a
//!   device, this appliance (Device Observer UID derived from the site and the box, name, manufacturer,
//!   model name = the AI model), and the procedure reported (plain chest X-ray, SNOMED CT);
//! - TID 1600 image library: the analysed images;
//! - Imaging Measurements, one TID 1501 measurement group per finding: tracking identifier
//!   (the label) and tracking UID, the finding as a standard code (SNOMED CT, RadLex; the
//!   model's local code when its manifest maps the label to none), the algorithm (TID 4019:
//!   name, version, parameters = weights SHA-256, precision, the finding's threshold), the
//!   probability (NUM `Probability`, DCM 122157, unit `1`), the qualitative evaluation at
//!   the threshold (the finding: `Present` / `Absent`, SNOMED CT), and, when a heatmap is
//!   made, the Parametric Map as its visual explanation (DCM 130401);
//! - comments: that the content is AI-generated and not verified, why the study was not
//!   analysed (outside the model's intended use) or the caveat of its findings; with the
//!   header flags to match: Preliminary Flag `PRELIMINARY`, Verification Flag `UNVERIFIED`.
//!
//! The only private codes left are the model's own label codes (scheme `99DULI`) where no
//! standard concept matches a label, and the `DULI-MODEL` identification in HL7; every
//! other concept is from DCM, SCT, UCUM or RFC 5646.

use super::attributes::{object_header, seq, text, ObjectIdentity};
use super::content::{
    code, code_item, code_value_item, concept, container, evidence, format_ds, image_item,
    num_item, sop_ref, template, text_item, uidref_item, Code, ENGLISH, LANGUAGE,
};
use super::uids::ResultUids;
use crate::model::InstanceRecord;
use crate::report::{Finding, Report};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

/// Comprehensive SR Storage.
pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";
/// Series number of the SR series.
pub const SR_SERIES_NUMBER: i32 = 9901;

const DOC_TITLE: Code = code("126000", "DCM", "Imaging Measurement Report");
const OBSERVER_TYPE: Code = code("121005", "DCM", "Observer Type");
const DEVICE: Code = code("121007", "DCM", "Device");
const DEVICE_UID: Code = code("121012", "DCM", "Device Observer UID");
const DEVICE_NAME: Code = code("121013", "DCM", "Device Observer Name");
const DEVICE_MANUFACTURER: Code = code("121014", "DCM", "Device Observer Manufacturer");
const DEVICE_MODEL: Code = code("121015", "DCM", "Device Observer Model Name");
const PROCEDURE_REPORTED: Code = code("121058", "DCM", "Procedure reported");
/// The procedure the report is about: a plain chest X-ray.
pub const CHEST_X_RAY: Code = code("399208008", "SCT", "Plain chest X-ray");
const IMAGE_LIBRARY: Code = code("111028", "DCM", "Image Library");
const IMAGE_LIBRARY_GROUP: Code = code("126200", "DCM", "Image Library Group");
const IMAGING_MEASUREMENTS: Code = code("126010", "DCM", "Imaging Measurements");
const MEASUREMENT_GROUP: Code = code("125007", "DCM", "Measurement Group");
const TRACKING_ID: Code = code("112039", "DCM", "Tracking Identifier");
const TRACKING_UID: Code = code("112040", "DCM", "Tracking Unique Identifier");
const FINDING: Code = code("121071", "DCM", "Finding");
const PROBABILITY: Code = code("122157", "DCM", "Probability");
const NO_UNITS: Code = code("1", "UCUM", "no units");
const PRESENT: Code = code("52101004", "SCT", "Present");
const ABSENT: Code = code("272519000", "SCT", "Absent");
const ALGORITHM_NAME: Code = code("111001", "DCM", "Algorithm Name");
const ALGORITHM_VERSION: Code = code("111003", "DCM", "Algorithm Version");
const ALGORITHM_PARAMETERS: Code = code("111002", "DCM", "Algorithm Parameters");
const VISUAL_EXPLANATION: Code = code("130401", "DCM", "Visual explanation");
const COMMENT: Code = code("121106", "DCM", "Comment");

/// A result object the SR points to (the Parametric Map of the heatmap).
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef<'a> {
    /// SOP Class UID.
    pub sop_class: &'a str,
    /// SOP Instance UID.
    pub sop_instance: &'a str,
    /// Series Instance UID.
    pub series: &'a str,
    /// Local code of the finding it explains.
    pub finding: &'a str,
    /// The AE title it can be retrieved from (this box's: it serves every object it made,
    /// also one the PACS it pushes the SR to does not take); empty when not said.
    pub retrieve_ae: &'a str,
}

/// The finding as coded in the SR: its standard concept, else the model's local code.
fn finding_code<'a>(f: &'a Finding, local_scheme: &'a str) -> Code<'a> {
    match &f.standard {
        Some(c) => c.into(),
        None => code(
            &f.code,
            local_scheme,
            if f.label.is_empty() {
                &f.code
            } else {
                &f.label
            },
        ),
    }
}

/// The TID 4019 algorithm identification of `report`'s model for one finding: name,
/// version and its parameters (network and weights hashes, precision, the finding's
/// threshold).
fn algorithm(report: &Report, f: &Finding) -> Vec<InMemDicomObject> {
    let mut items = vec![
        text_item("HAS CONCEPT MOD", ALGORITHM_NAME, &report.model_name),
        text_item("HAS CONCEPT MOD", ALGORITHM_VERSION, &report.model_version),
        text_item(
            "HAS CONCEPT MOD",
            ALGORITHM_PARAMETERS,
            &format!("network sha256 {}", report.model_sha256),
        ),
    ];
    if !report.model_weights_sha256.is_empty() {
        items.push(text_item(
            "HAS CONCEPT MOD",
            ALGORITHM_PARAMETERS,
            &format!("weights sha256 {}", report.model_weights_sha256),
        ));
    }
    items.extend([
        text_item(
            "HAS CONCEPT MOD",
            ALGORITHM_PARAMETERS,
            &format!("precision {}", report.model_precision),
        ),
        text_item(
            "HAS CONCEPT MOD",
            ALGORITHM_PARAMETERS,
            &format!("threshold {}", format_ds(f64::from(f.threshold))),
        ),
    ]);
    items
}

/// The TID 1501 measurement group of one finding.
/// The measurement group of a study without findings (outside the model's intended use,
/// or no image analysable): tracked like the others, its comment says why.
fn not_measured_group(report: &Report, uids: &ResultUids) -> InMemDicomObject {
    let why = report
        .notes()
        .into_iter()
        .next()
        .unwrap_or_else(|| "No image was analysed.".into());
    let children = vec![
        text_item("HAS OBS CONTEXT", TRACKING_ID, "not analysed"),
        uidref_item(
            "HAS OBS CONTEXT",
            TRACKING_UID,
            &uids.tracking(&report.study.study_instance_uid, "NOT-ANALYSED"),
        ),
        text_item("CONTAINS", COMMENT, &why),
    ];
    let mut group = container("CONTAINS", MEASUREMENT_GROUP, children);
    group.put(template(1501));
    group
}

fn measurement_group(
    report: &Report,
    uids: &ResultUids,
    f: &Finding,
    explanation: Option<ObjectRef>,
) -> InMemDicomObject {
    let finding = finding_code(f, &report.coding_scheme);
    let tracking = if f.label.is_empty() {
        &f.code
    } else {
        &f.label
    };
    let mut children = vec![
        text_item("HAS OBS CONTEXT", TRACKING_ID, tracking),
        uidref_item(
            "HAS OBS CONTEXT",
            TRACKING_UID,
            &uids.tracking(&report.study.study_instance_uid, &f.code),
        ),
        code_value_item("CONTAINS", FINDING, finding),
    ];
    children.extend(algorithm(report, f));
    children.push(num_item(
        "CONTAINS",
        PROBABILITY,
        crate::result::shown(
            f64::from(f.probability),
            f64::from(f.threshold),
            f.positive,
            6,
        ),
        NO_UNITS,
    ));
    children.push(code_value_item(
        "CONTAINS",
        finding,
        if f.positive { PRESENT } else { ABSENT },
    ));
    if let Some(pm) = explanation {
        children.push(image_item(
            Some(VISUAL_EXPLANATION),
            pm.sop_class,
            pm.sop_instance,
        ));
    }
    let mut group = container("CONTAINS", MEASUREMENT_GROUP, children);
    group.put(template(1501));
    group
}

/// Builds the SR of `report`, referencing `sources` (the analysed images) and, when the
/// report has a heatmap, its Parametric Map `explanation` (the visual explanation of the
/// finding it explains).
pub fn build(
    report: &Report,
    uids: &ResultUids,
    sources: &[InstanceRecord],
    explanation: Option<ObjectRef>,
) -> Result<FileDicomObject<InMemDicomObject>, super::ResultsError> {
    let mut obj = object_header(
        report,
        &ObjectIdentity {
            sop_class: COMPREHENSIVE_SR,
            sop_instance: &uids.sr_instance,
            modality: "SR",
            series: &uids.sr_series,
            series_number: SR_SERIES_NUMBER,
            series_description: "AI findings (preliminary, not verified)",
        },
    );
    // The heatmap is referenced from the group of the finding it explains.
    let explanation = explanation.filter(|pm| report.findings.iter().any(|f| f.code == pm.finding));
    put_document_general(&mut obj, report, sources, explanation);
    let mut children = observation_context(report, uids);
    children.extend(image_library(sources));
    children.push(imaging_measurements(report, uids, explanation));
    children.push(text_item(
        "CONTAINS",
        COMMENT,
        "AI-generated, preliminary result; not verified by a radiologist. Not for diagnostic use on its own.",
    ));
    for note in report.notes() {
        children.push(text_item("CONTAINS", COMMENT, &note));
    }

    obj.put(text(tags::VALUE_TYPE, VR::CS, "CONTAINER"));
    obj.put(concept(DOC_TITLE));
    obj.put(text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    obj.put(template(1500));
    obj.put(seq(tags::CONTENT_SEQUENCE, children));
    if report.findings.iter().any(|f| f.standard.is_none()) {
        obj.put(local_scheme_identification(&report.coding_scheme));
    }
    super::with_meta(
        obj,
        COMPREHENSIVE_SR,
        &uids.sr_instance,
        crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN,
    )
}

/// The SR an earlier result version of the same study made: the document a later one
/// supersedes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predecessor {
    /// Its Series Instance UID.
    pub series: String,
    /// Its SOP Instance UID.
    pub sop_instance: String,
}

/// Names `predecessor` in the Predecessor Documents Sequence (0040,A360) of `sr`, an SR
/// of the same study (SR Document General module, type 1C: the document supersedes it and
/// carries findings over from it).
pub fn add_predecessor(sr: &mut InMemDicomObject, study_uid: &str, predecessor: &Predecessor) {
    let sop = InMemDicomObject::from_element_iter([
        text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, COMPREHENSIVE_SR),
        text(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            &predecessor.sop_instance,
        ),
    ]);
    let series = InMemDicomObject::from_element_iter([
        text(tags::SERIES_INSTANCE_UID, VR::UI, &predecessor.series),
        seq(tags::REFERENCED_SOP_SEQUENCE, vec![sop]),
    ]);
    sr.put(seq(
        tags::PREDECESSOR_DOCUMENTS_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
            seq(tags::REFERENCED_SERIES_SEQUENCE, vec![series]),
        ])],
    ));
}

/// The Coding Scheme Identification Sequence (SOP Common, type 1C) for the model's local
/// label codes, required because that scheme is not one PS3.16 lists.
fn local_scheme_identification(scheme: &str) -> DataElement<InMemDicomObject> {
    seq(
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
            text(
                tags::CODING_SCHEME_NAME,
                VR::ST,
                "DULI Edge model label codes",
            ),
            text(
                tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
                VR::ST,
                crate::store::header::GENERATED_BY,
            ),
        ])],
    )
}

/// SR Document General module: the procedure, the flags of an unverified preliminary
/// result, the analysed images as evidence and the heatmap (when it explains one of the
/// findings) as other evidence.
fn put_document_general(
    obj: &mut InMemDicomObject,
    report: &Report,
    sources: &[InstanceRecord],
    explanation: Option<ObjectRef>,
) {
    obj.put(seq(
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        Vec::new(),
    ));
    obj.put(seq(
        tags::PERFORMED_PROCEDURE_CODE_SEQUENCE,
        vec![code_item(CHEST_X_RAY)],
    ));
    obj.put(text(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"));
    obj.put(text(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"));
    obj.put(text(tags::PRELIMINARY_FLAG, VR::CS, "PRELIMINARY"));
    let study = report.study.study_instance_uid.as_str();
    let source_refs: Vec<(&str, &str, &str)> = sources
        .iter()
        .map(|s| {
            (
                s.series_instance_uid.as_str(),
                s.sop_class_uid.as_str(),
                s.sop_instance_uid.as_str(),
            )
        })
        .collect();
    if !source_refs.is_empty() {
        obj.put(seq(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![evidence(study, &source_refs)],
        ));
    }
    if let Some(pm) = explanation {
        // With where it can be retrieved from (Retrieve AE Title, series level of the
        // Hierarchical SOP Instance Reference macro): a PACS that takes the SR but not the
        // map (the default result objects are SR and SC) leaves the reference resolvable.
        let mut series = InMemDicomObject::from_element_iter([
            text(tags::SERIES_INSTANCE_UID, VR::UI, pm.series),
            seq(
                tags::REFERENCED_SOP_SEQUENCE,
                vec![sop_ref(pm.sop_class, pm.sop_instance)],
            ),
        ]);
        if !pm.retrieve_ae.is_empty() {
            series.put(text(tags::RETRIEVE_AE_TITLE, VR::AE, pm.retrieve_ae));
        }
        obj.put(seq(
            tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                text(tags::STUDY_INSTANCE_UID, VR::UI, study),
                seq(tags::REFERENCED_SERIES_SEQUENCE, vec![series]),
            ])],
        ));
    }
}

/// The report's language (TID 1204), observation context (TID 1001: the appliance as
/// device observer, TID 1004, and the model) and procedure reported.
fn observation_context(report: &Report, uids: &ResultUids) -> Vec<InMemDicomObject> {
    vec![
        code_value_item("HAS CONCEPT MOD", LANGUAGE, ENGLISH),
        code_value_item("HAS OBS CONTEXT", OBSERVER_TYPE, DEVICE),
        uidref_item("HAS OBS CONTEXT", DEVICE_UID, &uids.device_observer),
        text_item(
            "HAS OBS CONTEXT",
            DEVICE_NAME,
            crate::store::header::GENERATED_BY,
        ),
        text_item(
            "HAS OBS CONTEXT",
            DEVICE_MANUFACTURER,
            crate::store::header::GENERATED_BY,
        ),
        text_item("HAS OBS CONTEXT", DEVICE_MODEL, &report.model_name),
        code_value_item("HAS CONCEPT MOD", PROCEDURE_REPORTED, CHEST_X_RAY),
    ]
}

/// The Image Library (TID 1600) of the analysed images, when there are any.
fn image_library(sources: &[InstanceRecord]) -> Option<InMemDicomObject> {
    if sources.is_empty() {
        return None;
    }
    let entries = sources
        .iter()
        .map(|s| image_item(None, &s.sop_class_uid, &s.sop_instance_uid))
        .collect();
    Some(container(
        "CONTAINS",
        IMAGE_LIBRARY,
        vec![container("CONTAINS", IMAGE_LIBRARY_GROUP, entries)],
    ))
}

/// Imaging Measurements: one measurement group per finding, the heatmap referenced from
/// the group of the finding it explains. A study outside the intended use has no
/// findings; TID 1500 still wants its Imaging Measurements: one group, tracked, whose
/// only content says why nothing was measured.
fn imaging_measurements(
    report: &Report,
    uids: &ResultUids,
    explanation: Option<ObjectRef>,
) -> InMemDicomObject {
    let groups: Vec<InMemDicomObject> = report
        .findings
        .iter()
        .map(|f| {
            let explains = explanation.filter(|pm| pm.finding == f.code);
            measurement_group(report, uids, f, explains)
        })
        .collect();
    let groups = if groups.is_empty() {
        vec![not_measured_group(report, uids)]
    } else {
        groups
    };
    container("CONTAINS", IMAGING_MEASUREMENTS, groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    fn comments(sr: &FileDicomObject<InMemDicomObject>) -> Vec<String> {
        text_values(sr)
    }

    /// The TEXT values directly in `item`'s content.
    fn text_values(item: &InMemDicomObject) -> Vec<String> {
        item.element(tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
            .iter()
            .filter_map(|i| i.element(tags::TEXT_VALUE).ok()?.to_str().ok())
            .map(|t| t.into_owned())
            .collect()
    }

    /// Dates and times in the old ACR-NEMA forms are written as DA and TM; a value that is
    /// no date or time at all is left empty.
    #[test]
    fn old_form_dates_and_times_of_the_source_are_written_as_da_and_tm() {
        let mut report = fixtures::report();
        report.study.patient_birth_date = "1980.02.15".into();
        report.study.study_date = "2024.01.31".into();
        report.study.study_time = "09:30:15".into();
        let key = crate::site_secret::SiteSecret::from_bytes(&[3u8; 32]);
        let uids = ResultUids::new(
            "1.2.826.0.1.3680043.8.498",
            &report.report_id,
            &key,
            "edge-01",
        );
        let value = |sr: &FileDicomObject<InMemDicomObject>, tag| {
            sr.element(tag)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end()
                .to_string()
        };
        let sr = build(&report, &uids, &[], None).unwrap();
        assert_eq!(value(&sr, tags::PATIENT_BIRTH_DATE), "19800215");
        assert_eq!(value(&sr, tags::STUDY_DATE), "20240131");
        assert_eq!(value(&sr, tags::STUDY_TIME), "093015");
        report.study.patient_birth_date = "15/02/1980".into();
        report.study.study_time = "9h30".into();
        let sr = build(&report, &uids, &[], None).unwrap();
        assert_eq!(value(&sr, tags::PATIENT_BIRTH_DATE), "");
        assert_eq!(value(&sr, tags::STUDY_TIME), "");
    }

    #[test]
    fn not_applicable_and_caveat_are_stated_in_the_document() {
        let mut report = fixtures::report();
        report.findings.clear();
        report.not_applicable = Some("age 45 y outside the model's 1\u{2013}5 y".into());
        let key = crate::site_secret::SiteSecret::from_bytes(&[3u8; 32]);
        let uids = ResultUids::new(
            "1.2.826.0.1.3680043.8.498",
            &report.report_id,
            &key,
            "edge-01",
        );
        let sr = build(&report, &uids, &[], None).unwrap();
        let texts = comments(&sr);
        assert!(
            texts.iter().any(|t| t
                == "Not applicable: outside the model's intended use (age 45 y outside the model's 1\u{2013}5 y); not analysed."),
            "{texts:?}"
        );
        // TID 1500 still has its Imaging Measurements: one group, whose comment says why.
        let content = sr.element(tags::CONTENT_SEQUENCE).unwrap().items().unwrap();
        let measurements = content
            .iter()
            .find(|i| {
                i.element(tags::CONCEPT_NAME_CODE_SEQUENCE)
                    .ok()
                    .and_then(|e| {
                        e.items()?
                            .first()?
                            .element(tags::CODE_VALUE)
                            .ok()?
                            .to_str()
                            .ok()
                    })
                    .is_some_and(|v| v.trim_end_matches(['\0', ' ']) == "126010")
            })
            .expect("an Imaging Measurements container");
        let group = &measurements
            .element(tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        let group_texts = text_values(group);
        assert!(
            group_texts.iter().any(|t| t.starts_with("Not applicable")),
            "{group_texts:?}"
        );
        let mut report = fixtures::report();
        report.caveat = Some("patient age unknown: the model is intended for 1\u{2013}5 y".into());
        let sr = build(&report, &uids, &[], None).unwrap();
        assert!(comments(&sr)
            .iter()
            .any(|t| t == "Caveat: patient age unknown: the model is intended for 1\u{2013}5 y"));
        // Without either, no such comment.
        let sr = build(&fixtures::report(), &uids, &[], None).unwrap();
        assert!(!comments(&sr)
            .iter()
            .any(|t| t.starts_with("Not applicable") || t.starts_with("Caveat")));
    }
}
