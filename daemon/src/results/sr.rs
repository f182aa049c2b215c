//! The Comprehensive SR of a study result, in its own series (modality SR) in the original
//! study: one document per report version, with
//!
//! - the algorithm identification (TID 4019: name, version, and the weights' SHA-256 as
//!   the algorithm parameters),
//! - per finding a container with the finding (code and meaning), its probability (NUM,
//!   UCUM `{ratio}`), the operating threshold and the positive flag,
//! - references to the source images (IMAGE items and the evidence sequence),
//! - a comment saying why the study was not analysed (outside the model's intended use)
//!   or the caveat that comes with its findings (e.g. the patient's age is unknown),
//! - a plain statement that the content is AI-generated and not verified, and the header
//!   flags to match: Preliminary Flag `PRELIMINARY`, Verification Flag `UNVERIFIED`.

use super::uids::ResultUids;
use crate::model::InstanceRecord;
use crate::report::Report;
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

/// Comprehensive SR Storage.
pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";
/// Series number of the SR series.
pub const SR_SERIES_NUMBER: i32 = 9901;

/// A coded concept.
#[derive(Debug, Clone, Copy)]
pub struct Code<'a> {
    /// Code value.
    pub value: &'a str,
    /// Coding scheme designator.
    pub scheme: &'a str,
    /// Code meaning.
    pub meaning: &'a str,
}

const fn code<'a>(value: &'a str, scheme: &'a str, meaning: &'a str) -> Code<'a> {
    Code {
        value,
        scheme,
        meaning,
    }
}

const DOC_TITLE: Code = code("18748-4", "LN", "Diagnostic imaging study");
const FINDING: Code = code("121071", "DCM", "Finding");
const PROBABILITY: Code = code("PROBABILITY", "99DULI", "Probability of finding");
const THRESHOLD: Code = code("THRESHOLD", "99DULI", "Operating threshold");
const POSITIVE: Code = code("POSITIVE", "99DULI", "Finding at or above threshold");
const YES: Code = code("373066001", "SCT", "Yes");
const NO: Code = code("373067005", "SCT", "No");
const ALGORITHM_NAME: Code = code("111001", "DCM", "Algorithm Name");
const ALGORITHM_VERSION: Code = code("111003", "DCM", "Algorithm Version");
const ALGORITHM_PARAMETERS: Code = code("111002", "DCM", "Algorithm Parameters");
const SOURCE: Code = code("260753009", "SCT", "Source");
const COMMENT: Code = code("121106", "DCM", "Comment");
const RATIO: Code = code("{ratio}", "UCUM", "ratio");
const FINDINGS: Code = code("121070", "DCM", "Findings");

fn text(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn code_item(c: Code) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        text(tags::CODE_VALUE, VR::SH, c.value),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, c.scheme),
        text(tags::CODE_MEANING, VR::LO, c.meaning),
    ])
}

fn concept(c: Code) -> DataElement<InMemDicomObject> {
    seq(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code_item(c)])
}

fn item(relationship: &str, value_type: &str, name: Code) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        text(tags::RELATIONSHIP_TYPE, VR::CS, relationship),
        text(tags::VALUE_TYPE, VR::CS, value_type),
        concept(name),
    ])
}

fn text_item(relationship: &str, name: Code, value: &str) -> InMemDicomObject {
    let mut o = item(relationship, "TEXT", name);
    o.put(text(tags::TEXT_VALUE, VR::UT, value));
    o
}

fn code_value_item(relationship: &str, name: Code, value: Code) -> InMemDicomObject {
    let mut o = item(relationship, "CODE", name);
    o.put(seq(tags::CONCEPT_CODE_SEQUENCE, vec![code_item(value)]));
    o
}

fn num_item(relationship: &str, name: Code, value: f64) -> InMemDicomObject {
    let mut o = item(relationship, "NUM", name);
    let mv = InMemDicomObject::from_element_iter([
        text(tags::NUMERIC_VALUE, VR::DS, &format_ds(value)),
        seq(
            tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
            vec![code_item(RATIO)],
        ),
    ]);
    o.put(seq(tags::MEASURED_VALUE_SEQUENCE, vec![mv]));
    o
}

/// A DS value (at most 16 characters).
fn format_ds(v: f64) -> String {
    let s = format!("{v:.6}");
    s.chars().take(16).collect()
}

fn container(relationship: &str, name: Code, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut o = item(relationship, "CONTAINER", name);
    o.put(text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    o.put(seq(tags::CONTENT_SEQUENCE, children));
    o
}

fn image_item(inst: &InstanceRecord) -> InMemDicomObject {
    let mut o = item("CONTAINS", "IMAGE", SOURCE);
    o.put(seq(
        tags::REFERENCED_SOP_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &inst.sop_class_uid),
            text(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                &inst.sop_instance_uid,
            ),
        ])],
    ));
    o
}

/// The evidence sequence: the source images grouped by series.
fn evidence(study_uid: &str, sources: &[InstanceRecord]) -> InMemDicomObject {
    let mut series: Vec<(String, Vec<&InstanceRecord>)> = Vec::new();
    for s in sources {
        match series
            .iter_mut()
            .find(|(uid, _)| *uid == s.series_instance_uid)
        {
            Some((_, v)) => v.push(s),
            None => series.push((s.series_instance_uid.clone(), vec![s])),
        }
    }
    InMemDicomObject::from_element_iter([
        text(tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
        seq(
            tags::REFERENCED_SERIES_SEQUENCE,
            series
                .into_iter()
                .map(|(uid, insts)| {
                    InMemDicomObject::from_element_iter([
                        text(tags::SERIES_INSTANCE_UID, VR::UI, &uid),
                        seq(
                            tags::REFERENCED_SOP_SEQUENCE,
                            insts
                                .into_iter()
                                .map(|i| {
                                    InMemDicomObject::from_element_iter([
                                        text(
                                            tags::REFERENCED_SOP_CLASS_UID,
                                            VR::UI,
                                            &i.sop_class_uid,
                                        ),
                                        text(
                                            tags::REFERENCED_SOP_INSTANCE_UID,
                                            VR::UI,
                                            &i.sop_instance_uid,
                                        ),
                                    ])
                                })
                                .collect(),
                        ),
                    ])
                })
                .collect(),
        ),
    ])
}

/// Patient, study and general equipment attributes copied into every result object.
pub fn common_header(report: &Report, obj: &mut InMemDicomObject) {
    let s = &report.study;
    obj.put(text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    obj.put(text(tags::PATIENT_NAME, VR::PN, &s.patient_name));
    obj.put(text(tags::PATIENT_ID, VR::LO, &s.patient_id));
    obj.put(text(
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        &s.patient_birth_date,
    ));
    obj.put(text(tags::PATIENT_SEX, VR::CS, &s.patient_sex));
    obj.put(text(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        &s.study_instance_uid,
    ));
    obj.put(text(tags::STUDY_DATE, VR::DA, &s.study_date));
    obj.put(text(tags::STUDY_TIME, VR::TM, &s.study_time));
    obj.put(text(tags::STUDY_ID, VR::SH, &s.study_id));
    obj.put(text(tags::ACCESSION_NUMBER, VR::SH, &s.accession_number));
    obj.put(text(
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        &s.referring_physician,
    ));
    obj.put(text(tags::STUDY_DESCRIPTION, VR::LO, &s.study_description));
    obj.put(text(
        tags::MANUFACTURER,
        VR::LO,
        crate::store::header::GENERATED_BY,
    ));
    obj.put(text(
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        &report.model_name,
    ));
    obj.put(text(
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        env!("CARGO_PKG_VERSION"),
    ));
    let (date, time) = dicom_now(report.created_at);
    obj.put(text(tags::CONTENT_DATE, VR::DA, &date));
    obj.put(text(tags::CONTENT_TIME, VR::TM, &time));
    obj.put(text(tags::INSTANCE_CREATION_DATE, VR::DA, &date));
    obj.put(text(tags::INSTANCE_CREATION_TIME, VR::TM, &time));
}

/// DICOM DA and TM (UTC) of a Unix time.
pub fn dicom_now(unix: i64) -> (String, String) {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    (
        format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day()),
        format!("{:02}{:02}{:02}", t.hour(), t.minute(), t.second()),
    )
}

/// Builds the SR of `report`, referencing `sources` (the analysed images).
pub fn build(
    report: &Report,
    uids: &ResultUids,
    sources: &[InstanceRecord],
) -> Result<FileDicomObject<InMemDicomObject>, super::ResultsError> {
    let mut obj = InMemDicomObject::new_empty();
    common_header(report, &mut obj);
    obj.put(text(tags::SOP_CLASS_UID, VR::UI, COMPREHENSIVE_SR));
    obj.put(text(tags::SOP_INSTANCE_UID, VR::UI, &uids.sr_instance));
    obj.put(text(tags::MODALITY, VR::CS, "SR"));
    obj.put(text(tags::SERIES_INSTANCE_UID, VR::UI, &uids.sr_series));
    obj.put(DataElement::new(
        tags::SERIES_NUMBER,
        VR::IS,
        PrimitiveValue::from(SR_SERIES_NUMBER.to_string()),
    ));
    obj.put(DataElement::new(
        tags::INSTANCE_NUMBER,
        VR::IS,
        PrimitiveValue::from(report.version.to_string()),
    ));
    obj.put(text(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "AI findings (preliminary, not verified)",
    ));
    obj.put(seq(
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        Vec::new(),
    ));
    obj.put(text(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"));
    obj.put(text(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"));
    obj.put(text(tags::PRELIMINARY_FLAG, VR::CS, "PRELIMINARY"));
    obj.put(seq(
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![evidence(&report.study.study_instance_uid, sources)],
    ));

    let mut children = vec![
        text_item(
            "CONTAINS",
            COMMENT,
            "AI-generated, preliminary result; not verified by a radiologist. Not for diagnostic use on its own.",
        ),
        text_item("HAS OBS CONTEXT", ALGORITHM_NAME, &report.model_name),
        text_item("HAS OBS CONTEXT", ALGORITHM_VERSION, &report.model_version),
        text_item(
            "HAS OBS CONTEXT",
            ALGORITHM_PARAMETERS,
            &format!("weights sha256 {}", report.model_sha256),
        ),
    ];
    for note in report.notes() {
        children.push(text_item("CONTAINS", COMMENT, &note));
    }
    let mut findings = Vec::new();
    for f in &report.findings {
        let finding_code = Code {
            value: &f.code,
            scheme: "99DULI",
            meaning: if f.label.is_empty() {
                &f.code
            } else {
                &f.label
            },
        };
        findings.push(container(
            "CONTAINS",
            finding_code,
            vec![
                code_value_item("CONTAINS", FINDING, finding_code),
                num_item("CONTAINS", PROBABILITY, f64::from(f.probability)),
                num_item("CONTAINS", THRESHOLD, f64::from(f.threshold)),
                code_value_item("CONTAINS", POSITIVE, if f.positive { YES } else { NO }),
            ],
        ));
    }
    children.push(container("CONTAINS", FINDINGS, findings));
    children.extend(sources.iter().map(image_item));

    obj.put(text(tags::VALUE_TYPE, VR::CS, "CONTAINER"));
    obj.put(concept(DOC_TITLE));
    obj.put(text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    obj.put(seq(tags::CONTENT_SEQUENCE, children));
    super::with_meta(
        obj,
        COMPREHENSIVE_SR,
        &uids.sr_instance,
        crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::report::fixtures;

    fn comments(sr: &FileDicomObject<InMemDicomObject>) -> Vec<String> {
        sr.element(tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
            .iter()
            .filter_map(|i| i.element(tags::TEXT_VALUE).ok()?.to_str().ok())
            .map(|t| t.into_owned())
            .collect()
    }

    #[test]
    fn not_applicable_and_caveat_are_stated_in_the_document() {
        let mut report = fixtures::report();
        report.findings.clear();
        report.not_applicable = Some("age 45 y outside the model's 1\u{2013}5 y".into());
        let key = crate::site_secret::SiteSecret::from_bytes(&[3u8; 32]);
        let uids = ResultUids::new("1.2.826.0.1.3680043.8.498", &report.report_id, &key);
        let sr = build(&report, &uids, &[]).unwrap();
        let texts = comments(&sr);
        assert!(
            texts.iter().any(|t| t
                == "Not applicable: outside the model's intended use (age 45 y outside the model's 1\u{2013}5 y); not analysed."),
            "{texts:?}"
        );
        let mut report = fixtures::report();
        report.caveat = Some("patient age unknown: the model is intended for 1\u{2013}5 y".into());
        let sr = build(&report, &uids, &[]).unwrap();
        assert!(comments(&sr)
            .iter()
            .any(|t| t == "Caveat: patient age unknown: the model is intended for 1\u{2013}5 y"));
        // Without either, no such comment.
        let sr = build(&fixtures::report(), &uids, &[]).unwrap();
        assert!(!comments(&sr)
            .iter()
            .any(|t| t.starts_with("Not applicable") || t.starts_with("Caveat")));
    }
}
