//! Geometry: the optional centre-square crop, and resizing to the model's input size by
//! nearest neighbour exactly as PIL samples (`Image.NEAREST`, the Keras `load_img`
//! default) or by a linear filter, reading any [`GrayView`] in place; and the reduced
//! display image (an area average to a bounded long side) that previews and overlays use.

use super::display::{GrayImage, GrayView};
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

/// Nearest-neighbour resize sampling where PIL samples: reads only the sampled pixels.
pub fn resize_nearest_pil<V: GrayView + ?Sized>(img: &V, width: u32, height: u32) -> GrayImage {
    let xs = pil_nearest_indices(img.width(), width);
    let ys = pil_nearest_indices(img.height(), height);
    let mut pixels = Vec::with_capacity(width as usize * height as usize);
    let mut line = Vec::with_capacity(img.width() as usize);
    let mut last = None;
    for y in &ys {
        if last != Some(*y) {
            img.row(*y, &mut line);
            last = Some(*y);
        }
        pixels.extend(xs.iter().map(|x| line[*x as usize]));
    }
    GrayImage {
        width,
        height,
        pixels,
    }
}

/// A [`GrayView`] as the `image` crate's view, so its resamplers read it in place.
struct AsImage<'a, V: ?Sized>(&'a V);

impl<V: GrayView + ?Sized> image::GenericImageView for AsImage<'_, V> {
    type Pixel = image::Luma<u8>;

    fn dimensions(&self) -> (u32, u32) {
        (self.0.width(), self.0.height())
    }

    fn get_pixel(&self, x: u32, y: u32) -> image::Luma<u8> {
        image::Luma([self.0.level(x, y)])
    }
}

/// Linear (triangle filter) resize, antialiased when shrinking: the `image` crate's
/// resampler reading the view in place (its intermediate holds `width × height` of the
/// output rows only).
pub fn resize_bilinear<V: GrayView + ?Sized>(img: &V, width: u32, height: u32) -> GrayImage {
    let out = image::imageops::resize(
        &AsImage(img),
        width,
        height,
        image::imageops::FilterType::Triangle,
    );
    GrayImage {
        width,
        height,
        pixels: out.into_raw(),
    }
}

/// A rectangle of another view.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a, V: ?Sized> {
    inner: &'a V,
    x0: u32,
    y0: u32,
    width: u32,
    height: u32,
}

impl<V: GrayView + ?Sized> GrayView for Window<'_, V> {
    fn width(&self) -> u32 {
        self.width
    }

    fn height(&self) -> u32 {
        self.height
    }

    fn level(&self, x: u32, y: u32) -> u8 {
        self.inner.level(self.x0 + x, self.y0 + y)
    }

    fn row(&self, y: u32, out: &mut Vec<u8>) {
        self.inner.row(self.y0 + y, out);
        out.truncate((self.x0 + self.width) as usize);
        out.drain(..self.x0 as usize);
    }
}

/// The largest centred square of the view, as a view.
pub fn center_square_view<V: GrayView + ?Sized>(img: &V) -> Window<'_, V> {
    let side = img.width().min(img.height());
    Window {
        inner: img,
        x0: (img.width() - side) / 2,
        y0: (img.height() - side) / 2,
        width: side,
        height: side,
    }
}

/// The largest centred square of the image.
pub fn center_square(img: &GrayImage) -> GrayImage {
    center_square_view(img).to_image()
}

/// Crop then resize as a manifest says, reading the view in place.
pub fn fit<V: GrayView + ?Sized>(
    img: &V,
    crop: Crop,
    method: ResizeMethod,
    width: u32,
    height: u32,
) -> GrayImage {
    fn resize<W: GrayView + ?Sized>(src: &W, method: ResizeMethod, w: u32, h: u32) -> GrayImage {
        match method {
            ResizeMethod::NearestPil => resize_nearest_pil(src, w, h),
            ResizeMethod::Bilinear => resize_bilinear(src, w, h),
        }
    }
    match crop {
        Crop::None => resize(img, method, width, height),
        Crop::CenterSquare => resize(&center_square_view(img), method, width, height),
    }
}

/// Area-averages a view so its longest side is at most `max_side`: blocks of `f × f`
/// pixels, `f = ⌈long side / max_side⌉`, each the truncated mean of its levels (the
/// right and bottom remainders that make no whole block are left out). A view already
/// small enough is copied as it is. Reads every pixel once, row by row.
pub fn reduce<V: GrayView + ?Sized>(img: &V, max_side: u32) -> GrayImage {
    let (width, height) = (img.width(), img.height());
    let long = width.max(height);
    if long <= max_side || width == 0 || height == 0 {
        return img.to_image();
    }
    let f = long.div_ceil(max_side.max(1));
    let (w, h, means) = block_means(width, height, f, |y, line: &mut Vec<u8>| img.row(y, line));
    GrayImage {
        width: w,
        height: h,
        pixels: means.into_iter().map(|m| m as u8).collect(),
    }
}

/// The truncated mean of each whole `f × f` block of a `width × height` image whose rows
/// `read_row(y, buffer)` gives (at least `width` values each): (columns, rows, means).
/// Reads the rows of the whole blocks once, in order, adding each into one row of column
/// sums (a loop the compiler vectorises: 32-bit sums, which `f` rows of 16-bit values
/// cannot overflow for any `f` up to 65,537, else 64-bit); a block's `f` column sums are
/// added once per band of `f` rows.
pub fn block_means<T: Copy + Into<u32>>(
    width: u32,
    height: u32,
    f: u32,
    read_row: impl FnMut(u32, &mut Vec<T>),
) -> (u32, u32, Vec<u32>) {
    let f = f.max(1);
    if u64::from(f) * u64::from(u16::MAX) <= u64::from(u32::MAX) {
        block_means_with::<T, u32>(width, height, f, read_row)
    } else {
        block_means_with::<T, u64>(width, height, f, read_row)
    }
}

/// [`block_means`] with column sums of type `S`.
fn block_means_with<T, S>(
    width: u32,
    height: u32,
    f: u32,
    mut read_row: impl FnMut(u32, &mut Vec<T>),
) -> (u32, u32, Vec<u32>)
where
    T: Copy + Into<u32>,
    S: Copy + Default + std::ops::AddAssign + From<u32> + Into<u64>,
{
    let (w, h) = (width / f, height / f);
    let area = u64::from(f) * u64::from(f);
    let used = w as usize * f as usize;
    let mut means = Vec::with_capacity(w as usize * h as usize);
    let mut columns = vec![S::default(); used];
    let mut line = Vec::with_capacity(width as usize);
    for y in 0..h {
        columns.iter_mut().for_each(|s| *s = S::default());
        for row in y * f..(y + 1) * f {
            read_row(row, &mut line);
            for (sum, v) in columns.iter_mut().zip(&line[..used.min(line.len())]) {
                *sum += S::from((*v).into());
            }
        }
        means.extend(columns.chunks_exact(f as usize).map(|block| {
            let total: u64 = block.iter().map(|s| (*s).into()).sum();
            (total / area) as u32
        }));
    }
    (w, h, means)
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
    fn reduce_averages_whole_blocks() {
        let img = GrayImage {
            width: 4,
            height: 2,
            pixels: vec![0, 255, 0, 255, 100, 100, 100, 100],
        };
        let small = reduce(&img, 2);
        assert_eq!((small.width, small.height), (2, 1));
        assert_eq!(small.pixels, vec![113, 113]); // (0 + 255 + 100 + 100) / 4
        assert_eq!(reduce(&img, 8), img);
        // 5 x 3 by blocks of 3: one block; the remainders are left out.
        let img = GrayImage {
            width: 5,
            height: 3,
            pixels: (0..15).collect(),
        };
        let small = reduce(&img, 2);
        assert_eq!((small.width, small.height, small.pixels), (1, 1, vec![6]));
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
