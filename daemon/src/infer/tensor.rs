//! Display image (already at the input size) → input tensor values: normalisation per the
//! manifest, grey copied into every channel, laid out as NHWC or NCHW.

use super::display::GrayImage;
use super::manifest::{InputSpec, Layout, Normalisation};

/// Input value of display level `v` in channel `c`.
pub fn normalise(v: u8, c: usize, n: &Normalisation) -> f32 {
    let v = f32::from(v);
    match n {
        // Written as Keras' xception.preprocess_input computes it for [-1, 1]: v/127.5 − 1.
        Normalisation::Range { min, max } => v / (255.0 / (max - min)) + min,
        Normalisation::MeanStd { mean, std } => {
            let m = mean.get(c).or(mean.first()).copied().unwrap_or(0.0);
            let s = std.get(c).or(std.first()).copied().unwrap_or(1.0);
            (v / 255.0 - m) / s
        }
    }
}

/// Builds the batch-1 input tensor from an image of exactly the input size.
pub fn to_tensor(img: &GrayImage, spec: &InputSpec) -> Vec<f32> {
    let ch = spec.channels as usize;
    let hw = img.pixels.len();
    let mut out = vec![0f32; hw * ch];
    match spec.layout {
        Layout::NHWC => {
            for (i, v) in img.pixels.iter().enumerate() {
                for c in 0..ch {
                    out[i * ch + c] = normalise(*v, c, &spec.normalise);
                }
            }
        }
        Layout::NCHW => {
            for c in 0..ch {
                for (i, v) in img.pixels.iter().enumerate() {
                    out[c * hw + i] = normalise(*v, c, &spec.normalise);
                }
            }
        }
    }
    out
}

/// The whole preprocessing of a display image: crop, resize and normalise as `spec` says.
pub fn input_tensor(img: &GrayImage, spec: &InputSpec) -> Vec<f32> {
    let fitted = super::resize::fit(img, spec.crop, spec.resize, spec.width, spec.height);
    to_tensor(&fitted, spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::manifest::{Crop, ResizeMethod};

    fn spec(layout: Layout, channels: u32, normalise: Normalisation) -> InputSpec {
        InputSpec {
            name: "x".into(),
            layout,
            width: 2,
            height: 1,
            channels,
            crop: Crop::None,
            resize: ResizeMethod::NearestPil,
            normalise,
        }
    }

    #[test]
    fn xception_and_xrv_ranges() {
        let x = Normalisation::Range {
            min: -1.0,
            max: 1.0,
        };
        assert_eq!(normalise(0, 0, &x), -1.0);
        assert_eq!(normalise(255, 0, &x), 1.0);
        assert_eq!(normalise(51, 0, &x), 51.0 / 127.5 - 1.0);
        let xrv = Normalisation::Range {
            min: -1024.0,
            max: 1024.0,
        };
        assert_eq!(normalise(0, 0, &xrv), -1024.0);
        assert_eq!(normalise(255, 0, &xrv), 1024.0);
        let ms = Normalisation::MeanStd {
            mean: vec![0.5],
            std: vec![0.25],
        };
        assert_eq!(normalise(255, 2, &ms), 2.0);
    }

    #[test]
    fn layouts_place_channels() {
        let img = GrayImage {
            width: 2,
            height: 1,
            pixels: vec![0, 255],
        };
        let r = Normalisation::Range { min: 0.0, max: 1.0 };
        assert_eq!(
            to_tensor(&img, &spec(Layout::NHWC, 3, r.clone())),
            vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
        );
        assert_eq!(
            to_tensor(&img, &spec(Layout::NCHW, 3, r)),
            vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
        );
    }
}
