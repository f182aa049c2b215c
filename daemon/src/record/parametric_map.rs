//! The Parametric Map of a report: the heatmap PNG of one analysed image, brought onto the
//! map's grid over its radiograph ([`crate::results::parametric_map::resample`]), with
//! what the map needs of the source image's header, as a DICOM object
//! ([`crate::results::parametric_map::build`]).

use super::ObjectError;
use crate::report::Report;
use crate::results::parametric_map::{self, Source};
use crate::results::uids::ResultUids;
use crate::store::Store;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

/// The pixel spacings (mm) taken from a source image; others are left out of the map.
const PLAUSIBLE_SPACING: std::ops::RangeInclusive<f64> = 0.001..=1000.0;

/// Builds the Parametric Map of `report` from the heatmap PNG `png_path` (relative to the
/// data directory) of image `sop_uid`, made by the appliance `device_serial`.
pub fn build(
    store: &Store,
    report: &Report,
    uids: &ResultUids,
    sop_uid: &str,
    png_path: &str,
    device_serial: &str,
) -> Result<FileDicomObject<InMemDicomObject>, ObjectError> {
    let source = source(store, sop_uid)?;
    let heat = heatmap(store, png_path)?;
    let values: Vec<f32> = heat
        .as_raw()
        .iter()
        .map(|v| f32::from(*v) / 255.0)
        .collect();
    let grid = parametric_map::resample(
        &values,
        heat.width(),
        heat.height(),
        source.columns,
        source.rows,
    );
    Ok(parametric_map::build(
        report,
        uids,
        &source,
        &grid,
        device_serial,
    )?)
}

/// The image the stored Parametric Map `pm_uid` was made from (its referenced instance),
/// read from its header; `None` when it cannot be read.
pub fn source_of(store: &Store, pm_uid: &str) -> Option<String> {
    let inst = store.instance(pm_uid).ok()??;
    let obj = crate::store::header::open_header(&store.root().join(&inst.path)).ok()?;
    let first = |obj: &InMemDicomObject, tag: Tag| -> Option<InMemDicomObject> {
        obj.element_opt(tag).ok()??.items()?.first().cloned()
    };
    let series = first(&obj, tags::REFERENCED_SERIES_SEQUENCE)?;
    let instance = first(&series, tags::REFERENCED_INSTANCE_SEQUENCE)?;
    let sop = instance
        .element_opt(tags::REFERENCED_SOP_INSTANCE_UID)
        .ok()??
        .to_str()
        .ok()?
        .trim_end_matches(['\0', ' '])
        .to_string();
    Some(sop)
}

/// The heatmap PNG `png_path` (relative to the data directory) as grey levels.
pub(super) fn heatmap(store: &Store, png_path: &str) -> Result<image::GrayImage, ObjectError> {
    let heat = image::open(store.root().join(png_path)).map_err(|source| ObjectError::Heatmap {
        path: png_path.to_string(),
        source,
    })?;
    Ok(heat.to_luma8())
}

/// What the map needs of the stored image `sop_uid` (its header only, up to the pixels).
pub fn source(store: &Store, sop_uid: &str) -> Result<Source, ObjectError> {
    let inst = store
        .instance(sop_uid)?
        .ok_or_else(|| ObjectError::NotStored(sop_uid.to_string()))?;
    let obj =
        crate::store::header::open_header(&store.root().join(&inst.path)).map_err(|source| {
            ObjectError::Header {
                sop_uid: sop_uid.to_string(),
                source: Box::new(source),
            }
        })?;
    let text = |tag: Tag| -> String {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
            .unwrap_or_default()
    };
    let number = |tag: Tag| -> u32 {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u32>().ok())
            .unwrap_or(0)
    };
    let (rows, columns) = (number(tags::ROWS), number(tags::COLUMNS));
    if rows == 0 || columns == 0 {
        return Err(ObjectError::NoImageSize(sop_uid.to_string()));
    }
    let frame_of_reference = Some(text(tags::FRAME_OF_REFERENCE_UID)).filter(|f| !f.is_empty());
    let laterality = match text(tags::IMAGE_LATERALITY) {
        l if !l.is_empty() => l,
        _ => text(tags::LATERALITY),
    };
    Ok(Source {
        sop_class: inst.sop_class_uid,
        sop_instance: inst.sop_instance_uid,
        series: inst.series_instance_uid,
        rows,
        columns,
        pixel_spacing: spacing(&obj, tags::PIXEL_SPACING)
            .or_else(|| spacing(&obj, tags::IMAGER_PIXEL_SPACING)),
        frame_of_reference,
        laterality,
        patient_orientation: text(tags::PATIENT_ORIENTATION),
    })
}

/// The (row, column) spacing in `tag` of `obj`, when it is two plausible distances: a
/// radiograph's pixels are tenths of a millimetre; a spacing outside 0.001..=1000 mm is
/// no measurement (and would not fit a DS once scaled to the map's grid).
fn spacing(obj: &InMemDicomObject, tag: Tag) -> Option<(f64, f64)> {
    let v = obj
        .element_opt(tag)
        .ok()
        .flatten()?
        .to_multi_float64()
        .ok()?;
    match v.as_slice() {
        [r, c] if PLAUSIBLE_SPACING.contains(r) && PLAUSIBLE_SPACING.contains(c) => Some((*r, *c)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    /// A received spacing is taken only when it is a plausible distance: 1e17 or 1e-7 mm
    /// would be written as a wrong number (or `inf`) into the map's Pixel Spacing.
    #[test]
    fn only_plausible_spacings_are_taken() {
        let with = |value: &str| {
            let values = value.split('\\').map(String::from).collect();
            let obj = InMemDicomObject::from_element_iter([DataElement::new(
                tags::PIXEL_SPACING,
                VR::DS,
                PrimitiveValue::Strs(values),
            )]);
            spacing(&obj, tags::PIXEL_SPACING)
        };
        assert_eq!(with("0.139\\0.139"), Some((0.139, 0.139)));
        for odd in [
            "1e17\\1e17",
            "1e-7\\0.1",
            "0\\0.1",
            "-0.1\\0.1",
            "0.1",
            "NaN\\0.1",
        ] {
            assert_eq!(with(odd), None, "{odd}");
        }
    }
}
