//! One image file through the pipeline: open, eligibility, decode to the display image,
//! preprocess to the input tensor (blocking work: run it off the async threads); then,
//! once the engine has run it, the per-image result. The daemon and the offline tool share
//! these functions.

use super::dicom_image::{DicomImage, DicomImageError};
use super::eligibility::{check_with, Eligibility};
use super::findings::findings;
use super::manifest::Manifest;
use super::raster::{read_image_file, RasterError};
use super::resize::fit;
use super::tensor::to_tensor;
use crate::result::{HeatmapState, ImageResult, ImageStatus, Timings};
use std::path::Path;
use std::time::Instant;

/// An image ready for the model.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// SOP Instance UID (DICOM only).
    pub sop_instance_uid: Option<String>,
    /// The batch-1 input tensor.
    pub tensor: Vec<f32>,
    /// Width and height of the image the input was sampled from (where its heatmap lies:
    /// [`super::heatmap::Placement`]).
    pub source: (u32, u32),
    /// Decode and preprocess timings so far.
    pub timings: Timings,
    /// Shown with the result (e.g. the patient's age is unknown).
    pub caveat: Option<String>,
}

/// What preparing a file gave.
#[derive(Debug, Clone)]
pub enum Preparation {
    /// Ready for inference.
    Ready(Prepared),
    /// Not an image for this model.
    NotApplicable {
        /// SOP Instance UID, when the file is DICOM.
        sop_instance_uid: Option<String>,
        /// Why.
        reason: String,
    },
    /// Should have been analysed but cannot be.
    Error {
        /// SOP Instance UID, when it could be read.
        sop_instance_uid: Option<String>,
        /// Why.
        reason: String,
    },
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Whether `path` holds a DICOM Part 10 file (preamble + `DICM`), else a raster image.
pub fn is_dicom(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| &head[128..] == b"DICM")
        .unwrap_or(false)
}

/// Reads, checks, decodes and preprocesses one DICOM, PNG or JPEG file. An image whose
/// header declares more than `max_pixels` (Rows × Columns × Frames × Samples per Pixel, or
/// width × height) is not decoded: it is not applicable, with the reason. The model's input image is
/// sampled from the decoded frame directly (no full-resolution display image), so
/// `decode_ms` includes the crop and resize and `preprocess_ms` is the tensor's
/// normalisation. Previews and overlays are made later, by the stages that show them, from
/// their own reduced image.
pub fn prepare_file(path: &Path, manifest: &Manifest, max_pixels: u64) -> Preparation {
    let start = Instant::now();
    let spec = &manifest.input;
    let (sop, (fitted, source), caveat) = if is_dicom(path) {
        let img = match DicomImage::open_within(path, max_pixels) {
            Ok(i) => i,
            Err(e) => {
                log::warn!("{}: {e}", path.display());
                let sop_instance_uid = crate::store::header::read_header(path)
                    .ok()
                    .map(|h| h.instance.sop_instance_uid);
                return match e {
                    DicomImageError::TooLarge(reason) => Preparation::NotApplicable {
                        sop_instance_uid,
                        reason,
                    },
                    other => Preparation::Error {
                        sop_instance_uid,
                        reason: other.to_string(),
                    },
                };
            }
        };
        let sop = Some(img.header().sop_instance_uid.clone());
        let caveat = match check_with(img.header(), &manifest.intended_use) {
            Eligibility::NotApplicable(reason) => {
                return Preparation::NotApplicable {
                    sop_instance_uid: sop,
                    reason,
                }
            }
            Eligibility::EligibleWithCaveat(c) => Some(c),
            Eligibility::Eligible => None,
        };
        match img.input_image_sized(spec) {
            Ok(input) => (sop, input, caveat),
            Err(e) => {
                return Preparation::Error {
                    sop_instance_uid: sop,
                    reason: e.to_string(),
                }
            }
        }
    } else {
        // A PNG or JPEG file carries no patient data: its age is unknown.
        let caveat = super::eligibility::age_range(&manifest.intended_use)
            .map(|r| super::eligibility::unknown_age_caveat(&r));
        match read_image_file(path, max_pixels) {
            Ok(d) => (
                None,
                (
                    fit(&d, spec.crop, spec.resize, spec.width, spec.height),
                    (d.width, d.height),
                ),
                caveat,
            ),
            Err(e @ RasterError::TooLarge { .. }) => {
                return Preparation::NotApplicable {
                    sop_instance_uid: None,
                    reason: e.to_string(),
                }
            }
            Err(e) => {
                return Preparation::Error {
                    sop_instance_uid: None,
                    reason: e.to_string(),
                }
            }
        }
    };
    let decode_ms = ms(start);
    // A model reading a blank image answers all the same, most likely "no finding": an
    // image its own rescale or window leaves with no contrast (a slope of 0, a window far
    // outside its values) is reported as not analysed, not as a negative.
    if let Some(why) = no_contrast(&fitted.pixels) {
        return Preparation::Error {
            sop_instance_uid: sop,
            reason: why,
        };
    }
    let start = Instant::now();
    let tensor = to_tensor(&fitted, spec);
    Preparation::Ready(Prepared {
        sop_instance_uid: sop,
        tensor,
        source,
        timings: Timings {
            decode_ms,
            preprocess_ms: ms(start),
            ..Timings::default()
        },
        caveat,
    })
}

/// Why the model's input image cannot show anything, when it holds fewer than three grey
/// levels (blank, or black and white only).
fn no_contrast(pixels: &[u8]) -> Option<String> {
    let mut seen = [false; 256];
    let mut levels = 0;
    for &p in pixels {
        if !seen[usize::from(p)] {
            seen[usize::from(p)] = true;
            levels += 1;
            if levels >= 3 {
                return None;
            }
        }
    }
    Some(format!(
        "invalid pixel data: the image shows {levels} grey level(s) after its rescale and window, nothing the model can read"
    ))
}

/// The image result from the network's raw outputs.
pub fn analysed(
    manifest: &Manifest,
    prepared: &Prepared,
    raw: &[f32],
    infer_ms: f64,
) -> ImageResult {
    let timings = Timings {
        infer_ms,
        ..prepared.timings
    };
    let sop_instance_uid = prepared.sop_instance_uid.clone().unwrap_or_default();
    match findings(manifest, raw) {
        Ok(findings) => ImageResult {
            sop_instance_uid,
            series_instance_uid: String::new(),
            status: ImageStatus::Analysed,
            reason: None,
            caveat: prepared.caveat.clone(),
            findings,
            timings,
            heatmap: HeatmapState::None,
        },
        Err(e) => failed(sop_instance_uid, e.to_string(), timings),
    }
}

/// An image result with status `error`.
pub fn failed(sop_instance_uid: String, reason: String, timings: Timings) -> ImageResult {
    ImageResult {
        sop_instance_uid,
        series_instance_uid: String::new(),
        status: ImageStatus::Error,
        reason: Some(reason),
        caveat: None,
        findings: Vec::new(),
        timings,
        heatmap: HeatmapState::None,
    }
}

/// The image result of a preparation that did not reach the model.
pub fn not_analysed(p: &Preparation) -> Option<ImageResult> {
    let (sop, reason, status) = match p {
        Preparation::Ready(_) => return None,
        Preparation::NotApplicable {
            sop_instance_uid,
            reason,
        } => (sop_instance_uid, reason, ImageStatus::NotApplicable),
        Preparation::Error {
            sop_instance_uid,
            reason,
        } => (sop_instance_uid, reason, ImageStatus::Error),
    };
    Some(ImageResult {
        sop_instance_uid: sop.clone().unwrap_or_default(),
        series_instance_uid: String::new(),
        status,
        reason: Some(reason.clone()),
        caveat: None,
        findings: Vec::new(),
        timings: Timings::default(),
        heatmap: HeatmapState::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blank or black-and-white-only input is not analysed; any image with three grey
    /// levels or more is.
    #[test]
    fn an_image_without_contrast_is_not_analysed() {
        assert!(no_contrast(&[7; 100]).is_some());
        assert!(no_contrast(&[0, 255, 0, 255]).is_some());
        assert!(no_contrast(&[0, 128, 255]).is_none());
        let manifest = Manifest::load(
            &crate::infer::testdata::repo_root().join("models/pneumonia-xception/model.toml"),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("blank.png");
        image::GrayImage::from_pixel(300, 300, image::Luma([90u8]))
            .save(&blank)
            .unwrap();
        match prepare_file(&blank, &manifest, 1 << 24) {
            Preparation::Error { reason, .. } => {
                assert!(reason.contains("1 grey level"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let ramp = dir.path().join("ramp.png");
        image::GrayImage::from_fn(300, 300, |x, y| image::Luma([((x + y) % 256) as u8]))
            .save(&ramp)
            .unwrap();
        assert!(matches!(
            prepare_file(&ramp, &manifest, 1 << 24),
            Preparation::Ready(_)
        ));
    }
}
