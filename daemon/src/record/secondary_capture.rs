//! The Secondary Capture of a report: the heatmap of one analysed image drawn over its
//! radiograph, with the legend and the top finding's banner ([`crate::results::overlay`]),
//! as a DICOM object ([`crate::results::sc`]).

use super::ObjectError;
use crate::report::Report;
use crate::results::{overlay, uids::ResultUids};
use crate::store::Store;
use dicom_object::{FileDicomObject, InMemDicomObject};

/// Longest side of the Secondary Capture image.
pub const SC_MAX_SIDE: u32 = 1024;

/// Draws the heatmap PNG `png_path` (relative to the data directory) of image `sop_uid`
/// over its radiograph, reduced to [`SC_MAX_SIDE`] as it is decoded (no full-resolution
/// display image), as the Secondary Capture of `report`.
pub fn build(
    store: &Store,
    report: &Report,
    uids: &ResultUids,
    sop_uid: &str,
    png_path: &str,
    max_pixels: u64,
) -> Result<FileDicomObject<InMemDicomObject>, ObjectError> {
    let inst = store
        .instance(sop_uid)?
        .ok_or_else(|| ObjectError::NotStored(sop_uid.to_string()))?;
    let gray = crate::infer::dicom_image::DicomImage::open_within(
        &store.root().join(&inst.path),
        max_pixels,
    )
    .and_then(|d| d.reduced_display(SC_MAX_SIDE))?;
    let heat = super::parametric_map::heatmap(store, png_path)?;
    let values: Vec<f32> = heat
        .as_raw()
        .iter()
        .map(|v| f32::from(*v) / 255.0)
        .collect();
    let mut img = overlay::Rgb::from_gray(gray.width, gray.height, &gray.pixels);
    overlay::blend_heatmap(&mut img, &values, heat.width(), heat.height(), 0.45, 0.25);
    let top = report
        .findings
        .iter()
        .max_by(|a, b| a.probability.total_cmp(&b.probability));
    let caption = match top {
        Some(f) => format!(
            "{} {:.0}% (THRESHOLD {:.0}%)",
            f.label,
            crate::result::shown(
                f64::from(f.probability) * 100.0,
                f64::from(f.threshold) * 100.0,
                f.positive,
                0
            ),
            f64::from(f.threshold) * 100.0
        ),
        None => "NO FINDING".to_string(),
    };
    overlay::annotate(&mut img, &caption);
    Ok(crate::results::sc::build(report, uids, &img)?)
}
