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
}

/// Reads a PNG or JPEG file.
pub fn read_image_file(path: &Path) -> Result<GrayImage, RasterError> {
    let img = image::ImageReader::open(path)
        .map_err(|e| RasterError::Decode(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| RasterError::Decode(e.to_string()))?
        .decode()
        .map_err(|e| RasterError::Decode(e.to_string()))?;
    Ok(to_gray(&img))
}

/// Converts a decoded image to 8-bit grey.
pub fn to_gray(img: &image::DynamicImage) -> GrayImage {
    use image::DynamicImage as D;
    let (width, height) = (img.width(), img.height());
    let pixels = match img {
        D::ImageLuma8(g) => g.as_raw().clone(),
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
        let g = read_image_file(&dir.path().join("g.png")).unwrap();
        assert_eq!((g.width, g.height, g.pixels.clone()), (2, 1, vec![7, 200]));
        let rgb = image::RgbImage::from_raw(1, 1, vec![255, 0, 0]).unwrap();
        rgb.save(dir.path().join("c.png")).unwrap();
        assert_eq!(
            read_image_file(&dir.path().join("c.png")).unwrap().pixels,
            vec![76]
        );
        std::fs::write(dir.path().join("x.png"), b"not a png").unwrap();
        assert!(read_image_file(&dir.path().join("x.png")).is_err());
    }
}
