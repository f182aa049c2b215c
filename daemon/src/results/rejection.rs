//! The rejection note of IHE Imaging Object Change Management (IOCM): a Key Object
//! Selection Document titled *Incorrect Modality Worklist Entry* (DCM 113038) that names
//! result objects this box made for a patient its study no longer belongs to. A PACS that
//! supports IOCM hides (or deletes) the instances it names; one that does not still files
//! it beside them, with the reason in its text. The box sends it when a study it reported
//! for one patient comes back for another (a modality or PACS corrected the patient), with
//! the patient and study attributes of the rejected objects, so the archive finds them.
//!
//! The content tree (TID 2010 Key Object Selection): the document title, the language
//! (TID 1204), a Key Object Description saying why, and one item per rejected object
//! (`IMAGE` for the Parametric Map and Secondary Capture, `COMPOSITE` for the SR), each
//! also listed in the Current Requested Procedure Evidence Sequence.

use super::attributes::{object_header, seq, text, ObjectIdentity};
use super::content::{
    code, code_value_item, concept, evidence, sop_ref, template, text_item, Code, ENGLISH, LANGUAGE,
};
use super::uids::ResultUids;
use crate::dimse::uids::KEY_OBJECT_SELECTION;
use crate::report::Report;
use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

/// Series number of the rejection note's series.
pub const KO_SERIES_NUMBER: i32 = 9904;

/// The document title (CID 7010 Key Object Selection Document Title, one of the IOCM
/// rejection reasons): the objects were filed under the wrong patient.
pub const TITLE: Code = code("113038", "DCM", "Incorrect Modality Worklist Entry");
const DESCRIPTION: Code = code("113012", "DCM", "Key Object Description");

/// Why the objects are rejected (the Key Object Description).
pub const REASON: &str = "AI results made for this patient before the study was given to \
     another patient (patient correction): they do not belong to this patient. The results \
     of the study are sent again under its corrected patient.";

/// A result object the note rejects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Series Instance UID.
    pub series: String,
    /// SOP Class UID.
    pub sop_class: String,
    /// SOP Instance UID.
    pub sop_instance: String,
}

impl Rejected {
    /// The value type its content item takes: an image for image storage classes, a
    /// composite object (the SR) otherwise.
    fn value_type(&self) -> &'static str {
        if self.sop_class == super::sr::COMPREHENSIVE_SR {
            "COMPOSITE"
        } else {
            "IMAGE"
        }
    }
}

/// The rejection note of `rejected`, the objects of `report` (whose study carries the
/// patient they were made for) under the note UIDs of `uids` (the report's).
pub fn build(
    report: &Report,
    uids: &ResultUids,
    rejected: &[Rejected],
) -> Result<FileDicomObject<InMemDicomObject>, super::ResultsError> {
    if rejected.is_empty() {
        return Err(super::ResultsError::Build(
            "a rejection note names at least one object".into(),
        ));
    }
    let mut obj = object_header(
        report,
        &ObjectIdentity {
            sop_class: KEY_OBJECT_SELECTION,
            sop_instance: &uids.ko_instance,
            modality: "KO",
            series: &uids.ko_series,
            series_number: KO_SERIES_NUMBER,
            series_description: "AI results withdrawn (wrong patient)",
        },
    );
    // Key Object Document Series: the performed procedure step is not known (type 2).
    obj.put(seq(
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        Vec::new(),
    ));
    let study = report.study.study_instance_uid.as_str();
    let refs: Vec<(&str, &str, &str)> = rejected
        .iter()
        .map(|r| {
            (
                r.series.as_str(),
                r.sop_class.as_str(),
                r.sop_instance.as_str(),
            )
        })
        .collect();
    obj.put(seq(
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![evidence(study, &refs)],
    ));
    let mut children = vec![
        code_value_item("HAS CONCEPT MOD", LANGUAGE, ENGLISH),
        text_item("CONTAINS", DESCRIPTION, REASON),
    ];
    children.extend(rejected.iter().map(|r| {
        InMemDicomObject::from_element_iter([
            text(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
            text(tags::VALUE_TYPE, VR::CS, r.value_type()),
            seq(
                tags::REFERENCED_SOP_SEQUENCE,
                vec![sop_ref(&r.sop_class, &r.sop_instance)],
            ),
        ])
    }));
    obj.put(text(tags::VALUE_TYPE, VR::CS, "CONTAINER"));
    obj.put(concept(TITLE));
    obj.put(text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    obj.put(template(2010));
    obj.put(seq(tags::CONTENT_SEQUENCE, children));
    super::with_meta(
        obj,
        KEY_OBJECT_SELECTION,
        &uids.ko_instance,
        crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN,
    )
}

/// The SOP Instance UIDs a rejection note lists in its Current Requested Procedure
/// Evidence Sequence (the tests' reading of a note this box made).
#[cfg(test)]
pub(crate) fn evidence_of(note: &InMemDicomObject) -> Vec<String> {
    let items = |obj: &InMemDicomObject, tag| -> Vec<InMemDicomObject> {
        obj.get(tag)
            .and_then(|e| e.items())
            .map(<[InMemDicomObject]>::to_vec)
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for study in items(note, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE) {
        for series in items(&study, tags::REFERENCED_SERIES_SEQUENCE) {
            for sop in items(&series, tags::REFERENCED_SOP_SEQUENCE) {
                if let Some(uid) = sop.get(tags::REFERENCED_SOP_INSTANCE_UID) {
                    let uid = uid.to_str().unwrap_or_default();
                    out.push(uid.trim_end_matches(['\0', ' ']).to_string());
                }
            }
        }
    }
    out
}
