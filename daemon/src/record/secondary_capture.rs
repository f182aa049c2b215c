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

/// Draws `heatmap` over its radiograph, reduced to [`SC_MAX_SIDE`] as it is decoded (no
/// full-resolution display image), as the Secondary Capture of `report`, captioned with
/// the finding the heatmap explains (never another, more probable but negative, one).
pub fn build(
    store: &Store,
    report: &Report,
    uids: &ResultUids,
    heatmap: &super::Heatmap<'_>,
    max_pixels: u64,
) -> Result<FileDicomObject<InMemDicomObject>, ObjectError> {
    let (sop_uid, png_path) = (heatmap.sop, heatmap.png);
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
    let caption = caption(report, heatmap.code);
    overlay::annotate(&mut img, &caption);
    Ok(crate::results::sc::build(report, uids, &img)?)
}

/// The caption of a Secondary Capture whose heatmap explains finding `code`: that
/// finding, its probability and threshold (the most probable finding when the report has
/// no such code; `NO FINDING` when it has none).
fn caption(report: &Report, code: &str) -> String {
    let explained = report.findings.iter().find(|f| f.code == code).or_else(|| {
        report
            .findings
            .iter()
            .max_by(|a, b| a.probability.total_cmp(&b.probability))
    });
    match explained {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The caption names the finding the heatmap shows, not a more probable one that is
    /// negative at its threshold.
    #[test]
    fn the_caption_names_the_finding_the_heatmap_explains() {
        let finding =
            |code: &str, label: &str, probability: f32, threshold: f32| crate::result::Finding {
                label: label.into(),
                probability,
                threshold,
                positive: probability >= threshold,
                ..crate::result::fixtures::finding(code, probability)
            };
        let report = Report {
            findings: vec![
                finding("A", "Atelectasis", 0.62, 0.55),
                finding("B", "Mass", 0.70, 0.75),
            ],
            ..crate::report::fixtures::report()
        };
        assert_eq!(caption(&report, "A"), "Atelectasis 62% (THRESHOLD 55%)");
        assert_eq!(caption(&report, "X"), "Mass 70% (THRESHOLD 75%)");
        let empty = Report {
            findings: Vec::new(),
            ..crate::report::fixtures::report()
        };
        assert_eq!(caption(&empty, "A"), "NO FINDING");
    }
}
