//! The Secondary Capture of a study result: the analysed radiograph with the heatmap of
//! the explained finding burned in, a colour legend and a "not for diagnostic use" banner,
//! as an RGB image in its own series (modality OT) of the original study.

use super::attributes::{object_header, text, us, ObjectIdentity};
use super::overlay::Rgb;
use super::uids::ResultUids;
use super::ResultsError;
use crate::report::Report;
use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

/// Secondary Capture Image Storage.
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
/// Series number of the SC series.
pub const SC_SERIES_NUMBER: i32 = 9902;

/// Builds the SC of `report` from the annotated overlay image.
pub fn build(
    report: &Report,
    uids: &ResultUids,
    image: &Rgb,
) -> Result<FileDicomObject<InMemDicomObject>, ResultsError> {
    if image.width == 0 || image.height == 0 || image.width > 65535 || image.height > 65535 {
        return Err(ResultsError::Build(format!(
            "overlay image size {}x{} out of range",
            image.width, image.height
        )));
    }
    let mut obj = object_header(
        report,
        &ObjectIdentity {
            sop_class: SECONDARY_CAPTURE,
            sop_instance: &uids.sc_instance,
            modality: "OT",
            series: &uids.sc_series,
            series_number: SC_SERIES_NUMBER,
            series_description: "AI heatmap (preliminary, not for diagnostic use)",
        },
    );
    obj.put(text(tags::CONVERSION_TYPE, VR::CS, "WSD"));
    obj.put(text(tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY"));
    obj.put(text(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"));
    obj.put(text(tags::DERIVATION_DESCRIPTION, VR::ST, "AI-generated class activation heatmap over the source radiograph; preliminary, not verified"));
    obj.put(text(tags::PATIENT_ORIENTATION, VR::CS, ""));
    // General Series Laterality (type 2C) is left out: it is required only for a paired
    // body part, and the chest, named here, is not one (PS3.3 C.7.3.1: absent, not empty).
    obj.put(text(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"));
    obj.put(us(tags::SAMPLES_PER_PIXEL, 3));
    obj.put(text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"));
    obj.put(us(tags::PLANAR_CONFIGURATION, 0));
    obj.put(us(tags::ROWS, image.height as u16));
    obj.put(us(tags::COLUMNS, image.width as u16));
    obj.put(us(tags::BITS_ALLOCATED, 8));
    obj.put(us(tags::BITS_STORED, 8));
    obj.put(us(tags::HIGH_BIT, 7));
    obj.put(us(tags::PIXEL_REPRESENTATION, 0));
    super::put_pixels_8bit(&mut obj, image.data.clone());
    super::with_meta(
        obj,
        SECONDARY_CAPTURE,
        &uids.sc_instance,
        crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN,
    )
}
