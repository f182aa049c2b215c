//! The Secondary Capture of a report: the heatmap of one analysed image drawn over its
//! radiograph, with the legend and the top finding's banner ([`crate::results::overlay`]),
//! as a DICOM object ([`crate::results::sc`]).

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
) -> Result<FileDicomObject<InMemDicomObject>, String> {
    let inst = store
        .instance(sop_uid)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{sop_uid} is not in the store"))?;
    let gray = crate::infer::dicom_image::DicomImage::open(&store.root().join(&inst.path))
        .and_then(|d| d.reduced_display(SC_MAX_SIDE))
        .map_err(|e| e.to_string())?;
    let (w, h, pixels) = downscale(gray.width, gray.height, &gray.pixels, SC_MAX_SIDE);
    let heat = image::open(store.root().join(png_path))
        .map_err(|e| format!("heatmap {png_path}: {e}"))?
        .to_luma8();
    let values: Vec<f32> = heat
        .as_raw()
        .iter()
        .map(|v| f32::from(*v) / 255.0)
        .collect();
    let mut img = overlay::Rgb::from_gray(w, h, &pixels);
    overlay::blend_heatmap(&mut img, &values, heat.width(), heat.height(), 0.45, 0.25);
    let top = report
        .findings
        .iter()
        .max_by(|a, b| a.probability.total_cmp(&b.probability));
    let caption = match top {
        Some(f) => format!(
            "{} {:.0}% (THRESHOLD {:.0}%)",
            f.label,
            f64::from(f.probability) * 100.0,
            f64::from(f.threshold) * 100.0
        ),
        None => "NO FINDING".to_string(),
    };
    overlay::annotate(&mut img, &caption);
    crate::results::sc::build(report, uids, &img).map_err(|e| e.to_string())
}

/// Area-averages a grayscale image so its longest side is at most `max_side`
/// ([`crate::infer::resize::reduce`]).
pub fn downscale(width: u32, height: u32, pixels: &[u8], max_side: u32) -> (u32, u32, Vec<u8>) {
    let long = width.max(height);
    if long <= max_side
        || width == 0
        || height == 0
        || pixels.len() as u64 != u64::from(width) * u64::from(height)
    {
        return (width, height, pixels.to_vec());
    }
    let image = crate::infer::display::GrayImage {
        width,
        height,
        pixels: pixels.to_vec(),
    };
    let reduced = crate::infer::resize::reduce(&image, max_side);
    (reduced.width, reduced.height, reduced.pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downscale_averages_blocks() {
        let px = vec![0, 255, 0, 255, 100, 100, 100, 100];
        let (w, h, out) = downscale(4, 2, &px, 2);
        assert_eq!((w, h), (2, 1));
        assert_eq!(out, vec![113, 113]); // (0 + 255 + 100 + 100) / 4
        let (w, h, out) = downscale(4, 2, &px, 8);
        assert_eq!((w, h, out.len()), (4, 2, 8));
    }
}
