//! The attributes every result object carries: the patient and study of the report, the
//! equipment (this appliance and its model), creation time, and the object's own identity
//! (SOP class and instance, modality, series).

use crate::report::Report;
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// A text element (every string VR).
pub(super) fn text(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

/// A US element.
pub(super) fn us(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

/// An FD (64-bit float) element.
pub(super) fn fd(tag: Tag, v: f64) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::FD, PrimitiveValue::from(v))
}

/// A sequence of `items`.
pub(super) fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// A code sequence item (PS3.3 Table 8.8-1a, Basic Code Attributes). Every code this
/// appliance writes fits a Code Value (SH): its own constants, and the label codes a model
/// manifest may hold (checked when the manifest is loaded).
pub(super) fn code_item(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        text(tags::CODE_VALUE, VR::SH, value),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        text(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// What sets one result object apart from the others of its report: SOP class and
/// instance, modality and the series it is filed in.
pub struct ObjectIdentity<'a> {
    /// SOP Class UID.
    pub sop_class: &'a str,
    /// SOP Instance UID.
    pub sop_instance: &'a str,
    /// Modality of the series.
    pub modality: &'a str,
    /// Series Instance UID.
    pub series: &'a str,
    /// Series Number (fixed per kind of result object).
    pub series_number: i32,
    /// Series Description shown in worklists and viewers.
    pub series_description: &'a str,
}

/// A new result object with the patient, study and equipment attributes of `report` and
/// `identity`; its Instance Number is the report's version.
pub fn object_header(report: &Report, identity: &ObjectIdentity<'_>) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    common_header(report, &mut obj);
    obj.put(text(tags::SOP_CLASS_UID, VR::UI, identity.sop_class));
    obj.put(text(tags::SOP_INSTANCE_UID, VR::UI, identity.sop_instance));
    obj.put(text(tags::MODALITY, VR::CS, identity.modality));
    obj.put(text(tags::SERIES_INSTANCE_UID, VR::UI, identity.series));
    obj.put(text(
        tags::SERIES_NUMBER,
        VR::IS,
        &identity.series_number.to_string(),
    ));
    obj.put(text(
        tags::INSTANCE_NUMBER,
        VR::IS,
        &report.version.to_string(),
    ));
    obj.put(text(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        identity.series_description,
    ));
    obj
}

/// Patient, study and general equipment attributes copied into every result object.
fn common_header(report: &Report, obj: &mut InMemDicomObject) {
    let s = &report.study;
    obj.put(text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    obj.put(text(tags::PATIENT_NAME, VR::PN, &s.patient_name));
    obj.put(text(tags::PATIENT_ID, VR::LO, &s.patient_id));
    if !s.issuer_of_patient_id.is_empty() {
        // Where the Patient ID is unique: an archive matching on both files the results
        // with their study's patient.
        obj.put(text(
            tags::ISSUER_OF_PATIENT_ID,
            VR::LO,
            &s.issuer_of_patient_id,
        ));
    }
    // Dates and times as received may be in the old ACR-NEMA forms: written as DA and TM
    // are, or left empty.
    obj.put(text(
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        &crate::clock::normalise_da(&s.patient_birth_date),
    ));
    obj.put(text(tags::PATIENT_SEX, VR::CS, &s.patient_sex));
    obj.put(text(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        &s.study_instance_uid,
    ));
    obj.put(text(
        tags::STUDY_DATE,
        VR::DA,
        &crate::clock::normalise_da(&s.study_date),
    ));
    obj.put(text(
        tags::STUDY_TIME,
        VR::TM,
        &crate::clock::normalise_tm(&s.study_time),
    ));
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
    // DICOM dates and times are local time: the box's, with its offset from UTC said
    // (the study's own date and time, copied as received, are the modality's local time,
    // normally the same zone's).
    let (date, time, offset) = crate::clock::dicom_local_date_time(report.created_at);
    obj.put(text(tags::CONTENT_DATE, VR::DA, &date));
    obj.put(text(tags::CONTENT_TIME, VR::TM, &time));
    obj.put(text(tags::INSTANCE_CREATION_DATE, VR::DA, &date));
    obj.put(text(tags::INSTANCE_CREATION_TIME, VR::TM, &time));
    obj.put(text(tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, &offset));
}
