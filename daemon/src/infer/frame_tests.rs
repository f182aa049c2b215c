//! The in-place decode path against the reference computation it replaced: every stored
//! value read into an `i32` buffer ([`stored_values`]), the whole display image mapped at
//! once ([`DisplayPipeline::apply`]), then cropped and resized, or area-averaged. Files are
//! written here with the shapes that take different branches: a large image, several
//! frames, MONOCHROME1, signed samples with a rescale, no window (min/max range), 8-bit
//! samples and RLE Lossless. Results must be identical, pixel for pixel.

use super::dicom_image::DicomImage;
use super::display::{default_voi, DisplayPipeline, GrayImage, ModalityLut, Voi, WindowFunction};
use super::manifest::{Crop, InputSpec, Layout, Normalisation, ResizeMethod};
use super::resize::{center_square, resize_nearest_pil};
use super::samples::{stored_values, BitLayout};
use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use std::path::Path;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const RLE: &str = "1.2.840.10008.1.2.5";
const DX: &str = "1.2.840.10008.5.1.4.1.1.1.1";

/// One test image: raw samples of every frame, as the file holds them.
struct Dx {
    /// A Data Set Trailing Padding element after the Pixel Data.
    trailing: bool,
    /// Bytes added after the frames inside the Pixel Data value (8-bit samples only).
    inside: Vec<u8>,
    /// The value of the Data Set Trailing Padding, when `trailing` (else 8 zero bytes).
    padding: Option<Vec<u8>>,
    width: u32,
    height: u32,
    frames: u32,
    allocated: u16,
    stored: u16,
    signed: bool,
    monochrome1: bool,
    window: Option<(f64, f64)>,
    rescale: Option<(f64, f64)>,
    rle: bool,
    raw: Vec<u16>,
}

impl Dx {
    fn new(width: u32, height: u32, frames: u32, stored: u16, seed: u32) -> Dx {
        let n = (width * height * frames) as usize;
        let mut x = seed;
        // A smooth ramp plus noise, with bits above Bits Stored set now and then (they
        // must be ignored).
        let raw = (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let ramp = (i as u32 % width) * 7 + (i as u32 / width) * 3;
                let v = (ramp + (x >> 20) % 97) as u16;
                let mask = if stored >= 16 {
                    u16::MAX
                } else {
                    (1u16 << stored) - 1
                };
                (v & mask) | if x % 5 == 0 { !mask } else { 0 }
            })
            .collect();
        Dx {
            trailing: false,
            inside: Vec::new(),
            padding: None,
            width,
            height,
            frames,
            allocated: 16,
            stored,
            signed: false,
            monochrome1: false,
            window: None,
            rescale: None,
            rle: false,
            raw,
        }
    }

    /// A copy changed by `change`.
    fn clone_with(&self, change: impl FnOnce(&mut Dx)) -> Dx {
        let mut d = Dx {
            trailing: self.trailing,
            inside: self.inside.clone(),
            padding: self.padding.clone(),
            width: self.width,
            height: self.height,
            frames: self.frames,
            allocated: self.allocated,
            stored: self.stored,
            signed: self.signed,
            monochrome1: self.monochrome1,
            window: self.window,
            rescale: self.rescale,
            rle: self.rle,
            raw: self.raw.clone(),
        };
        change(&mut d);
        d
    }

    fn layout(&self) -> BitLayout {
        BitLayout {
            allocated: self.allocated,
            stored: self.stored,
            high: self.stored - 1,
            signed: self.signed,
        }
    }

    fn frame_bytes(&self, frame: usize) -> Vec<u8> {
        let n = (self.width * self.height) as usize;
        let samples = &self.raw[frame * n..(frame + 1) * n];
        if self.allocated == 8 {
            samples.iter().map(|v| *v as u8).collect()
        } else {
            samples.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
    }

    fn write(&self, path: &Path) {
        let mut obj = InMemDicomObject::new_empty();
        let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
        let text = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
        obj.put(text(tags::SOP_CLASS_UID, VR::UI, DX));
        obj.put(text(tags::SOP_INSTANCE_UID, VR::UI, "2.25.1"));
        obj.put(text(tags::MODALITY, VR::CS, "DX"));
        obj.put(us(tags::ROWS, self.height as u16));
        obj.put(us(tags::COLUMNS, self.width as u16));
        obj.put(us(tags::SAMPLES_PER_PIXEL, 1));
        obj.put(us(tags::BITS_ALLOCATED, self.allocated));
        obj.put(us(tags::BITS_STORED, self.stored));
        obj.put(us(tags::HIGH_BIT, self.stored - 1));
        obj.put(us(tags::PIXEL_REPRESENTATION, u16::from(self.signed)));
        let photometric = if self.monochrome1 {
            "MONOCHROME1"
        } else {
            "MONOCHROME2"
        };
        obj.put(text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric));
        if self.frames > 1 {
            obj.put(text(
                tags::NUMBER_OF_FRAMES,
                VR::IS,
                &self.frames.to_string(),
            ));
        }
        if let Some((center, width)) = self.window {
            obj.put(text(tags::WINDOW_CENTER, VR::DS, &center.to_string()));
            obj.put(text(tags::WINDOW_WIDTH, VR::DS, &width.to_string()));
        }
        if let Some((slope, intercept)) = self.rescale {
            obj.put(text(tags::RESCALE_SLOPE, VR::DS, &slope.to_string()));
            obj.put(text(
                tags::RESCALE_INTERCEPT,
                VR::DS,
                &intercept.to_string(),
            ));
        }
        let ts = if self.rle {
            let fragments = (0..self.frames as usize)
                .map(|f| rle_fragment(&self.frame_bytes(f), usize::from(self.allocated / 8)))
                .collect::<Vec<_>>();
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PixelFragmentSequence::new_fragments(fragments),
            ));
            RLE
        } else if self.allocated == 8 {
            let mut bytes: Vec<u8> = (0..self.frames as usize)
                .flat_map(|f| self.frame_bytes(f))
                .collect();
            bytes.extend_from_slice(&self.inside);
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PrimitiveValue::from(bytes),
            ));
            EXPLICIT_LE
        } else {
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(self.raw.clone().into()),
            ));
            EXPLICIT_LE
        };
        if self.trailing {
            obj.put(DataElement::new(
                tags::DATA_SET_TRAILING_PADDING,
                VR::OB,
                PrimitiveValue::from(self.padding.clone().unwrap_or(vec![0u8; 8])),
            ));
        }
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(DX)
            .media_storage_sop_instance_uid("2.25.1")
            .transfer_syntax(ts);
        obj.with_meta(meta).unwrap().write_to_file(path).unwrap();
    }

    /// The display image of frame 0 as the decoder computed it before it read frames in
    /// place: every stored value into an `i32` buffer, the pipeline applied to all.
    fn reference_display(&self) -> GrayImage {
        let n = (self.width * self.height) as usize;
        let mut bytes = self.frame_bytes(0);
        if self.allocated == 16 {
            // Native byte order, as decoders hand them over.
            bytes = self.raw[..n].iter().flat_map(|v| v.to_ne_bytes()).collect();
        }
        let layout = self.layout();
        let values = stored_values(&bytes, layout, n).unwrap();
        let (slope, intercept) = self.rescale.unwrap_or((1.0, 0.0));
        let modality = ModalityLut::Rescale { slope, intercept };
        let voi = match self.window {
            Some((center, width)) => Voi::Window {
                center,
                width,
                function: WindowFunction::Linear,
            },
            None => default_voi(
                values.iter().copied(),
                layout.stored,
                layout.signed,
                &modality,
            ),
        };
        DisplayPipeline {
            modality,
            voi,
            monochrome1: self.monochrome1,
        }
        .apply(&values, self.width, self.height)
    }
}

/// RLE Lossless fragment of one frame (PS3.5 Annex G): one segment per byte of a sample,
/// most significant first, each as PackBits literal runs.
fn rle_fragment(frame: &[u8], bytes_per_sample: usize) -> Vec<u8> {
    let mut segments = Vec::new();
    for byte in (0..bytes_per_sample).rev() {
        let plane: Vec<u8> = frame
            .chunks_exact(bytes_per_sample)
            .map(|s| s[byte])
            .collect();
        let mut seg = Vec::new();
        for run in plane.chunks(128) {
            seg.push((run.len() - 1) as u8);
            seg.extend_from_slice(run);
        }
        if seg.len() % 2 == 1 {
            seg.push(0);
        }
        segments.push(seg);
    }
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
    let mut offset = 64u32;
    for (i, seg) in segments.iter().enumerate() {
        out[4 + 4 * i..8 + 4 * i].copy_from_slice(&offset.to_le_bytes());
        offset += seg.len() as u32;
    }
    for seg in segments {
        out.extend(seg);
    }
    out
}

/// The area average the Secondary Capture computed from the full display image.
fn reference_reduce(img: &GrayImage, max_side: u32) -> GrayImage {
    let long = img.width.max(img.height);
    if long <= max_side {
        return img.clone();
    }
    let f = long.div_ceil(max_side);
    let (w, h) = (img.width / f, img.height / f);
    let mut pixels = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let mut sum = 0u32;
            for dy in 0..f {
                for dx in 0..f {
                    sum += u32::from(img.get(x * f + dx, y * f + dy));
                }
            }
            pixels.push((sum / (f * f)) as u8);
        }
    }
    GrayImage {
        width: w,
        height: h,
        pixels,
    }
}

fn spec(crop: Crop, resize: ResizeMethod, side: u32) -> InputSpec {
    InputSpec {
        name: "input".into(),
        layout: Layout::NHWC,
        width: side,
        height: side,
        channels: 3,
        crop,
        resize,
        normalise: Normalisation::Range {
            min: -1.0,
            max: 1.0,
        },
    }
}

/// Writes `dx`, decodes it in place and checks every product against the reference.
fn check(dx: &Dx, max_side: u32) -> GrayImage {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.dcm");
    dx.write(&path);
    let img = DicomImage::open(&path).unwrap();
    // Native pixel data that ends the file is read from it a row at a time.
    assert_eq!(img.pixels_in_file(), !dx.rle && !dx.trailing);
    let display = dx.reference_display();
    assert_eq!(img.display_image().unwrap(), display);
    // The shipped model: squash, PIL nearest, 150 x 150.
    let nearest = spec(Crop::None, ResizeMethod::NearestPil, 150);
    let input = img.input_image(&nearest).unwrap();
    assert_eq!(input, resize_nearest_pil(&display, 150, 150));
    let reduced = img.reduced_display(max_side).unwrap();
    assert_eq!(reduced, reference_reduce(&display, max_side));
    assert!(reduced.width.max(reduced.height) <= max_side);
    // A centre-square, linear-filter model: the image crate's resampler over the image.
    let linear = spec(Crop::CenterSquare, ResizeMethod::Bilinear, 64);
    let input = img.input_image(&linear).unwrap();
    let square = center_square(&display);
    let buffer = image::GrayImage::from_raw(square.width, square.height, square.pixels).unwrap();
    let expected = image::imageops::resize(&buffer, 64, 64, image::imageops::FilterType::Triangle);
    assert_eq!(input.pixels, expected.into_raw());
    reduced
}

#[test]
fn a_large_image_is_sampled_and_reduced_exactly_as_from_the_full_display_image() {
    let mut dx = Dx::new(3000, 2200, 1, 12, 7);
    dx.window = Some((2040.5, 4081.0));
    let reduced = check(&dx, 1024);
    assert_eq!((reduced.width, reduced.height), (1000, 733));
}

#[test]
fn pixel_data_followed_by_other_elements_is_loaded_whole() {
    let mut dx = Dx::new(300, 200, 1, 12, 19);
    dx.trailing = true;
    dx.window = Some((2040.5, 4081.0));
    check(&dx, 128);
}

/// A second image hidden at the end of the file behind a fake Pixel Data header — inside a
/// longer Pixel Data value, or in an element after it — is not what is analysed: the
/// pixels read are the ones a viewer shows (the file is then loaded whole).
#[test]
fn an_image_hidden_behind_a_fake_pixel_data_header_is_not_read() {
    let (w, h) = (64u32, 48u32);
    let mut shown = Dx::new(w, h, 1, 8, 23);
    shown.allocated = 8;
    let hidden: Vec<u8> = shown.frame_bytes(0).iter().map(|v| 255 - v).collect();
    let mut fake = vec![0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0];
    fake.extend_from_slice(&(w * h).to_le_bytes());
    fake.extend_from_slice(&hidden);
    let mut inside = shown.clone_with(|d| d.inside = fake.clone());
    let mut after = shown.clone_with(|d| {
        d.trailing = true;
        d.padding = Some(fake.clone());
    });
    for (what, dx) in [("inside", &mut inside), ("after", &mut after)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.dcm");
        dx.write(&path);
        let img = DicomImage::open(&path).unwrap();
        assert!(
            !img.pixels_in_file(),
            "{what}: read from the file's last bytes"
        );
        assert_eq!(
            img.display_image().unwrap(),
            dx.reference_display(),
            "{what}"
        );
    }
}

#[test]
fn several_frames_give_the_first_frame() {
    let mut dx = Dx::new(300, 200, 3, 16, 11);
    dx.rescale = Some((2.0, -100.0));
    let n = 300 * 200;
    // The other frames hold other values: they must not leak into the first.
    for v in &mut dx.raw[n..] {
        *v = u16::MAX - *v;
    }
    check(&dx, 128);
}

#[test]
fn monochrome1_signed_samples_with_a_rescale() {
    let mut dx = Dx::new(257, 131, 1, 12, 3);
    dx.signed = true;
    dx.monochrome1 = true;
    dx.rescale = Some((1.0, -1024.0));
    check(&dx, 100);
    dx.window = Some((-900.0, 600.0));
    check(&dx, 100);
}

#[test]
fn eight_bit_samples_are_read_as_bytes() {
    let mut dx = Dx::new(320, 240, 2, 8, 5);
    dx.allocated = 8;
    check(&dx, 64);
}

#[test]
fn rle_frames_are_decoded_then_read_in_place() {
    let mut dx = Dx::new(300, 220, 2, 16, 13);
    dx.rle = true;
    dx.monochrome1 = true;
    dx.window = Some((30000.0, 20001.0));
    check(&dx, 100);
    let mut dx = Dx::new(200, 100, 1, 8, 17);
    dx.allocated = 8;
    dx.rle = true;
    check(&dx, 64);
}
