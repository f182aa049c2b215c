//! Geometry: the optional centre-square crop, and resizing to the model's input size by
//! nearest neighbour exactly as PIL samples (`Image.NEAREST`, the Keras `load_img`
//! default) or by a linear filter.

use super::display::GrayImage;
use super::manifest::{Crop, ResizeMethod};

/// Source indices PIL's nearest-neighbour resize reads for `out` destination pixels from
/// `n` source pixels. PIL steps a double-precision position by `n / out` from `n / out / 2`
/// and truncates it, so where `(i + ½)·n/out` is a whole number the accumulated rounding
/// decides the side, not the exact product: reproduced here operation for operation.
pub fn pil_nearest_indices(n: u32, out: u32) -> Vec<u32> {
    let scale = f64::from(n) / f64::from(out);
    let mut pos = scale * 0.5;
    let mut idx = Vec::with_capacity(out as usize);
    for _ in 0..out {
        let i = if pos < 0.0 { 0 } else { pos as u32 };
        idx.push(i.min(n.saturating_sub(1)));
        pos += scale;
    }
    idx
}

/// Nearest-neighbour resize sampling where PIL samples.
pub fn resize_nearest_pil(img: &GrayImage, width: u32, height: u32) -> GrayImage {
    let xs = pil_nearest_indices(img.width, width);
    let ys = pil_nearest_indices(img.height, height);
    let mut pixels = Vec::with_capacity((width * height) as usize);
    for y in &ys {
        let row = (*y * img.width) as usize;
        pixels.extend(xs.iter().map(|x| img.pixels[row + *x as usize]));
    }
    GrayImage {
        width,
        height,
        pixels,
    }
}

/// Linear (triangle filter) resize, antialiased when shrinking.
pub fn resize_bilinear(img: &GrayImage, width: u32, height: u32) -> GrayImage {
    let src = image::GrayImage::from_raw(img.width, img.height, img.pixels.clone())
        .unwrap_or_else(|| image::GrayImage::new(img.width, img.height));
    let out = image::imageops::resize(&src, width, height, image::imageops::FilterType::Triangle);
    GrayImage {
        width,
        height,
        pixels: out.into_raw(),
    }
}

/// The largest centred square of the image.
pub fn center_square(img: &GrayImage) -> GrayImage {
    let side = img.width.min(img.height);
    let x0 = (img.width - side) / 2;
    let y0 = (img.height - side) / 2;
    let mut pixels = Vec::with_capacity((side * side) as usize);
    for y in y0..y0 + side {
        let row = (y * img.width + x0) as usize;
        pixels.extend_from_slice(&img.pixels[row..row + side as usize]);
    }
    GrayImage {
        width: side,
        height: side,
        pixels,
    }
}

/// Crop then resize as a manifest says.
pub fn fit(
    img: &GrayImage,
    crop: Crop,
    method: ResizeMethod,
    width: u32,
    height: u32,
) -> GrayImage {
    let cropped;
    let src = match crop {
        Crop::None => img,
        Crop::CenterSquare => {
            cropped = center_square(img);
            &cropped
        }
    };
    match method {
        ResizeMethod::NearestPil => resize_nearest_pil(src, width, height),
        ResizeMethod::Bilinear => resize_bilinear(src, width, height),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pil_sampling_differs_from_the_exact_product_where_pil_does() {
        // 1776 → 150 (NORMAL_01's width): (37 + ½)·11.84 = 444 exactly, but PIL's
        // accumulated position falls just short and it reads column 443. Values checked
        // against Pillow 13.0 (Image.resize(..., NEAREST) of an index ramp).
        let idx = pil_nearest_indices(1776, 150);
        assert_eq!(idx[37], 443);
        assert_eq!(((37.0 + 0.5) * (1776.0f64 / 150.0)) as u32, 444);
        assert_eq!(pil_nearest_indices(1288, 150)[112], 966);
        assert_eq!(pil_nearest_indices(1272, 150)[..4], [4, 12, 21, 29]);
        assert_eq!(*pil_nearest_indices(1272, 150).last().unwrap(), 1267);
        // Identity and upscaling.
        assert_eq!(pil_nearest_indices(4, 4), vec![0, 1, 2, 3]);
        assert_eq!(pil_nearest_indices(2, 4), vec![0, 0, 1, 1]);
    }

    #[test]
    fn resize_and_crop_shapes() {
        let img = GrayImage {
            width: 4,
            height: 2,
            pixels: (0..8).collect(),
        };
        let sq = center_square(&img);
        assert_eq!(
            (sq.width, sq.height, sq.pixels.clone()),
            (2, 2, vec![1, 2, 5, 6])
        );
        let n = resize_nearest_pil(&img, 2, 1);
        assert_eq!(n.pixels, vec![5, 7]);
        let b = fit(&img, Crop::CenterSquare, ResizeMethod::Bilinear, 3, 3);
        assert_eq!(b.pixels.len(), 9);
    }
}
