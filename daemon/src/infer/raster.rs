//! PNG and JPEG files (uploads, the offline tool) as 8-bit display images: grey stays as
//! is, 16-bit grey keeps its high byte, colour becomes luma as PIL's `convert("L")` does.

use super::display::{luma, GrayImage};
use std::path::Path;

/// Why an image file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RasterError {
    /// The file cannot be read or decoded.
    #[error("cannot decode image file: {0}")]
    Decode(String),
    /// The header declares more pixels than allowed; the image was not decoded.
    #[error("image too large to analyse: {width} x {height} pixels, over inference.max_pixels = {limit}")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The configured limit.
        limit: u64,
    },
}

/// Reads a PNG or JPEG file; one whose header declares more than `max_pixels` pixels is
/// refused before it is decoded (the budget received DICOM images are held to).
pub fn read_image_file(path: &Path, max_pixels: u64) -> Result<GrayImage, RasterError> {
    let reader = || {
        image::ImageReader::open(path)
            .map_err(|e| RasterError::Decode(e.to_string()))?
            .with_guessed_format()
            .map_err(|e| RasterError::Decode(e.to_string()))
    };
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| RasterError::Decode(e.to_string()))?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(RasterError::TooLarge {
            width,
            height,
            limit: max_pixels,
        });
    }
    let img = reader()?
        .decode()
        .map_err(|e| RasterError::Decode(e.to_string()))?;
    Ok(to_gray(img))
}

/// Converts a decoded image to 8-bit grey (an 8-bit grey image keeps its buffer).
pub fn to_gray(img: image::DynamicImage) -> GrayImage {
    use image::DynamicImage as D;
    let (width, height) = (img.width(), img.height());
    let pixels = match img {
        D::ImageLuma8(g) => g.into_raw(),
        D::ImageLumaA8(g) => g.pixels().map(|p| p.0[0]).collect(),
        D::ImageLuma16(g) => g.pixels().map(|p| (p.0[0] >> 8) as u8).collect(),
        other => other
            .to_rgb8()
            .pixels()
            .map(|p| luma(p.0[0], p.0[1], p.0[2]))
            .collect(),
    };
    GrayImage {
        width,
        height,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_and_colour_pngs_decode_to_grey() {
        let dir = tempfile::tempdir().unwrap();
        let grey = image::GrayImage::from_raw(2, 1, vec![7, 200]).unwrap();
        grey.save(dir.path().join("g.png")).unwrap();
        let g = read_image_file(&dir.path().join("g.png"), u64::MAX).unwrap();
        assert_eq!((g.width, g.height, g.pixels.clone()), (2, 1, vec![7, 200]));
        let rgb = image::RgbImage::from_raw(1, 1, vec![255, 0, 0]).unwrap();
        rgb.save(dir.path().join("c.png")).unwrap();
        assert_eq!(
            read_image_file(&dir.path().join("c.png"), u64::MAX)
                .unwrap()
                .pixels,
            vec![76]
        );
        std::fs::write(dir.path().join("x.png"), b"not a png").unwrap();
        assert!(read_image_file(&dir.path().join("x.png"), u64::MAX).is_err());
        // Over the budget: refused from the header, not decoded.
        let big = image::GrayImage::new(300, 200);
        big.save(dir.path().join("big.png")).unwrap();
        let err = read_image_file(&dir.path().join("big.png"), 59_999).unwrap_err();
        assert!(
            matches!(
                err,
                RasterError::TooLarge {
                    width: 300,
                    height: 200,
                    ..
                }
            ),
            "{err}"
        );
        assert!(read_image_file(&dir.path().join("big.png"), 60_000).is_ok());
    }
}
