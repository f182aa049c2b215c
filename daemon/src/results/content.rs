//! SR content items and references, shared by the documents this box writes: the
//! measurement report ([`super::sr`]) and the rejection note ([`super::rejection`]).

use super::attributes::{self, seq, text};
use crate::result::Concept;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

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

/// A [`Code`] (usable in constants).
pub const fn code<'a>(value: &'a str, scheme: &'a str, meaning: &'a str) -> Code<'a> {
    Code {
        value,
        scheme,
        meaning,
    }
}

impl<'a> From<&'a Concept> for Code<'a> {
    fn from(c: &'a Concept) -> Self {
        code(&c.code, &c.scheme, &c.meaning)
    }
}

/// Language of Content Item and Descendants (TID 1204).
pub(super) const LANGUAGE: Code = code("121049", "DCM", "Language of Content Item and Descendants");
/// English (United States).
pub(super) const ENGLISH: Code = code("en-US", "RFC5646", "English (United States)");

/// The code sequence item of `c`.
pub(super) fn code_item(c: Code) -> InMemDicomObject {
    attributes::code_item(c.value, c.scheme, c.meaning)
}

/// The Concept Name Code Sequence naming `c`.
pub(super) fn concept(c: Code) -> DataElement<InMemDicomObject> {
    seq(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code_item(c)])
}

/// A content item of `value_type` named `name`, in `relationship` to its parent.
pub(super) fn item(relationship: &str, value_type: &str, name: Code) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        text(tags::RELATIONSHIP_TYPE, VR::CS, relationship),
        text(tags::VALUE_TYPE, VR::CS, value_type),
        concept(name),
    ])
}

/// A TEXT content item.
pub(super) fn text_item(relationship: &str, name: Code, value: &str) -> InMemDicomObject {
    let mut o = item(relationship, "TEXT", name);
    o.put(text(tags::TEXT_VALUE, VR::UT, value));
    o
}

/// A CODE content item.
pub(super) fn code_value_item(relationship: &str, name: Code, value: Code) -> InMemDicomObject {
    let mut o = item(relationship, "CODE", name);
    o.put(seq(tags::CONCEPT_CODE_SEQUENCE, vec![code_item(value)]));
    o
}

/// A NUM content item with its unit.
pub(super) fn num_item(relationship: &str, name: Code, value: f64, unit: Code) -> InMemDicomObject {
    let mut o = item(relationship, "NUM", name);
    let mv = InMemDicomObject::from_element_iter([
        text(tags::NUMERIC_VALUE, VR::DS, &format_ds(value)),
        seq(tags::MEASUREMENT_UNITS_CODE_SEQUENCE, vec![code_item(unit)]),
    ]);
    o.put(seq(tags::MEASURED_VALUE_SEQUENCE, vec![mv]));
    o
}

/// A DS value (at most 16 characters).
pub(super) fn format_ds(v: f64) -> String {
    let s = format!("{v:.6}");
    s.chars().take(16).collect()
}

/// A CONTAINER content item (continuity SEPARATE) holding `children`.
pub(super) fn container(
    relationship: &str,
    name: Code,
    children: Vec<InMemDicomObject>,
) -> InMemDicomObject {
    let mut o = item(relationship, "CONTAINER", name);
    o.put(text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    o.put(seq(tags::CONTENT_SEQUENCE, children));
    o
}

/// A UIDREF content item.
pub(super) fn uidref_item(relationship: &str, name: Code, uid: &str) -> InMemDicomObject {
    let mut o = item(relationship, "UIDREF", name);
    o.put(text(tags::UID, VR::UI, uid));
    o
}

/// A Referenced SOP Sequence item.
pub(super) fn sop_ref(sop_class: &str, sop_instance: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, sop_class),
        text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, sop_instance),
    ])
}

/// An IMAGE content item, named `name` or (image library entries) unnamed.
pub(super) fn image_item(
    name: Option<Code>,
    sop_class: &str,
    sop_instance: &str,
) -> InMemDicomObject {
    let mut o = InMemDicomObject::from_element_iter([
        text(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
        text(tags::VALUE_TYPE, VR::CS, "IMAGE"),
    ]);
    if let Some(name) = name {
        o.put(concept(name));
    }
    o.put(seq(
        tags::REFERENCED_SOP_SEQUENCE,
        vec![sop_ref(sop_class, sop_instance)],
    ));
    o
}

/// One evidence item (Hierarchical SOP Instance Reference macro): the referenced
/// instances of `study_uid` as (series, SOP class, SOP instance), grouped by series.
pub(super) fn evidence(study_uid: &str, objects: &[(&str, &str, &str)]) -> InMemDicomObject {
    let mut series: Vec<(&str, Vec<InMemDicomObject>)> = Vec::new();
    for &(series_uid, class, instance) in objects {
        let r = sop_ref(class, instance);
        match series.iter_mut().find(|(uid, _)| *uid == series_uid) {
            Some((_, v)) => v.push(r),
            None => series.push((series_uid, vec![r])),
        }
    }
    InMemDicomObject::from_element_iter([
        text(tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
        seq(
            tags::REFERENCED_SERIES_SEQUENCE,
            series
                .into_iter()
                .map(|(uid, refs)| {
                    InMemDicomObject::from_element_iter([
                        text(tags::SERIES_INSTANCE_UID, VR::UI, uid),
                        seq(tags::REFERENCED_SOP_SEQUENCE, refs),
                    ])
                })
                .collect(),
        ),
    ])
}

/// A Content Template Sequence naming DCMR template `id`.
pub(super) fn template(id: u32) -> DataElement<InMemDicomObject> {
    seq(
        tags::CONTENT_TEMPLATE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::MAPPING_RESOURCE, VR::CS, "DCMR"),
            text(tags::TEMPLATE_IDENTIFIER, VR::CS, &id.to_string()),
        ])],
    )
}
