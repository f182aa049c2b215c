//! PNG and JPEG files (uploads, the offline tool) as 8-bit display images: grey stays as
//! is, 16-bit grey keeps its high byte, colour becomes luma as PIL's `convert("L")` does.
//! Grey and colour JPEGs are decoded with libjpeg's accurate integer inverse DCT
//! (`jpeg-decoder` as patched in `vendor/`), so a grey JPEG gives the very samples PIL
//! (libjpeg-turbo), the reference pipeline's decoder, gives.

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
    let open = || {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| RasterError::Decode(e.to_string()))
    };
    decode_with(open, max_pixels)
}

/// [`read_image_file`] for an image in memory (an upload).
pub fn decode_bytes(bytes: &[u8], max_pixels: u64) -> Result<GrayImage, RasterError> {
    decode_with(|| Ok(std::io::Cursor::new(bytes)), max_pixels)
}

/// Decodes the image `open` reads (called once for the header, once for the pixels):
/// the format from its first bytes, the pixel budget from its header, then grey and
/// colour JPEGs with [`read_jpeg`] and everything else with the `image` crate. The
/// decoders are third-party code fed outside data: a defect that panics costs this image
/// (an error), not the thread decoding it, as for DICOM pixel data.
fn decode_with<R: std::io::BufRead + std::io::Seek>(
    open: impl Fn() -> Result<R, RasterError>,
    max_pixels: u64,
) -> Result<GrayImage, RasterError> {
    // What a decoder may allocate: the pixel budget at three bytes a pixel (8-bit colour),
    // so an image of more bytes a pixel (an all-zero RGBA PNG of 400 KB declaring
    // 10,000 x 10,000, 16-bit colour) is refused from its header, not decoded into
    // hundreds of MB beyond what the budget was set for.
    let byte_budget = max_pixels.saturating_mul(BYTES_PER_BUDGETED_PIXEL);
    let reader = || {
        let mut r = image::ImageReader::new(open()?)
            .with_guessed_format()
            .map_err(|e| RasterError::Decode(e.to_string()))?;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(byte_budget);
        r.limits(limits);
        Ok::<_, RasterError>(r)
    };
    let header = reader()?;
    let format = header.format();
    let decoder = header
        .into_decoder()
        .map_err(|e| RasterError::Decode(e.to_string()))?;
    let (width, height) = image::ImageDecoder::dimensions(&decoder);
    let decoded_bytes = image::ImageDecoder::total_bytes(&decoder);
    drop(decoder);
    if u64::from(width) * u64::from(height) > max_pixels || decoded_bytes > byte_budget {
        return Err(RasterError::TooLarge {
            width,
            height,
            limit: max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(RasterError::Decode("no pixels".into()));
    }
    let decode = || {
        if format == Some(image::ImageFormat::Jpeg) {
            if let Some(gray) = read_jpeg(open()?, width, height)? {
                return Ok(gray);
            }
        }
        let img = reader()?
            .decode()
            .map_err(|e| RasterError::Decode(e.to_string()))?;
        Ok(to_gray(img))
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|_| {
        Err(RasterError::Decode(
            "the decoder failed on this image".into(),
        ))
    })
}

/// Decodes a grey or colour JPEG whose header declared `width × height` (already held to
/// the pixel budget): `None` for the other JPEG kinds (CMYK, lossless 16-bit), which the
/// `image` crate decodes as before. The decoder's buffer is bounded by the declared size.
fn read_jpeg(
    source: impl std::io::Read,
    width: u32,
    height: u32,
) -> Result<Option<GrayImage>, RasterError> {
    let mut decoder = jpeg_decoder::Decoder::new(source);
    let declared = u64::from(width) * u64::from(height);
    // Output bounded by the declared size (up to four components: CMYK decodes, then goes
    // to the `image` crate); the frame header this decoder reads must be the one the
    // budget was checked against before anything is allocated for the scans.
    decoder.set_max_decoding_buffer_size(
        usize::try_from(declared.saturating_mul(4)).unwrap_or(usize::MAX),
    );
    decoder
        .read_info()
        .map_err(|e| RasterError::Decode(format!("JPEG: {e}")))?;
    let frame = decoder
        .info()
        .ok_or_else(|| RasterError::Decode("JPEG without a frame header".into()))?;
    let (w, h) = (u32::from(frame.width), u32::from(frame.height));
    if (w, h) != (width, height) {
        return Err(RasterError::Decode(format!(
            "JPEG frame is {w} x {h}, its header said {width} x {height}"
        )));
    }
    let pixels = decoder
        .decode()
        .map_err(|e| RasterError::Decode(format!("JPEG: {e}")))?;
    let pixels: Vec<u8> = match frame.pixel_format {
        jpeg_decoder::PixelFormat::L8 => pixels,
        jpeg_decoder::PixelFormat::RGB24 => pixels
            .chunks_exact(3)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect(),
        _ => return Ok(None),
    };
    if pixels.len() as u64 != declared {
        return Err(RasterError::Decode(format!(
            "JPEG decoded to {} samples for {w} x {h}",
            pixels.len()
        )));
    }
    Ok(Some(GrayImage {
        width,
        height,
        pixels,
    }))
}

/// Bytes a decoded image may take per pixel of the pixel budget.
const BYTES_PER_BUDGETED_PIXEL: u64 = 3;

/// Converts a decoded image to 8-bit grey (an 8-bit grey image keeps its buffer; 8-bit
/// colour is read in place, with no colour copy beside it).
pub fn to_gray(img: image::DynamicImage) -> GrayImage {
    use image::DynamicImage as D;
    let (width, height) = (img.width(), img.height());
    let pixels = match img {
        D::ImageLuma8(g) => g.into_raw(),
        D::ImageLumaA8(g) => g.pixels().map(|p| p.0[0]).collect(),
        D::ImageLuma16(g) => g.pixels().map(|p| (p.0[0] >> 8) as u8).collect(),
        D::ImageRgb8(c) => c.pixels().map(|p| luma(p.0[0], p.0[1], p.0[2])).collect(),
        D::ImageRgba8(c) => c.pixels().map(|p| luma(p.0[0], p.0[1], p.0[2])).collect(),
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
    use crate::infer::testdata;

    /// A progressive JPEG whose last scan is repeated until the file has `scans` scans.
    fn with_scans(scans: usize) -> Vec<u8> {
        let seed =
            std::fs::read(testdata::repo_root().join("fuzz/corpus/pixels/grey-progressive.jpg"))
                .unwrap();
        let starts: Vec<usize> = seed
            .windows(2)
            .enumerate()
            .filter(|(_, w)| *w == [0xFF, 0xDA])
            .map(|(i, _)| i)
            .collect();
        let (last, end) = (*starts.last().unwrap(), seed.len() - 2);
        assert_eq!(&seed[end..], &[0xFF, 0xD9], "the seed ends with EOI");
        let mut out = seed[..end].to_vec();
        for _ in starts.len()..scans {
            out.extend_from_slice(&seed[last..end]);
        }
        out.extend_from_slice(&[0xFF, 0xD9]);
        out
    }

    /// Each scan walks every block, so a file of many near-empty scans would cost CPU time
    /// out of all proportion to its size: more than 500 scans is refused, a dozen decodes.
    #[test]
    fn a_jpeg_of_more_scans_than_any_image_needs_is_refused() {
        assert!(decode_bytes(&with_scans(12), 1 << 20).is_ok());
        let err = decode_bytes(&with_scans(600), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("more than 500 scans"), "{err}");
    }

    /// Every sample in `dir` (sorted) with the 8-bit grey samples PIL decodes from it, as
    /// the `.venv` Python writes them beside it (`<file>.pil`), or `None` without PIL.
    fn pil_samples(dir: &Path, files: &[&str]) -> Option<Vec<Vec<u8>>> {
        let py = testdata::python_with("PIL, numpy")?;
        let script = "import sys, numpy\nfrom PIL import Image\nfor f in sys.argv[1:]:\n    numpy.asarray(Image.open(f).convert('L')).tofile(f + '.pil')\n";
        let status = std::process::Command::new(py)
            .arg("-c")
            .arg(script)
            .args(files.iter().map(|f| dir.join(f)))
            .status()
            .unwrap();
        assert!(status.success());
        Some(
            files
                .iter()
                .map(|f| std::fs::read(dir.join(format!("{f}.pil"))).unwrap())
                .collect(),
        )
    }

    /// The reference pipeline reads images with PIL (libjpeg-turbo): grey JPEGs must give
    /// its samples exactly — baseline and progressive, any quality, any size; colour
    /// without chroma subsampling too, and 4:2:0 colour within one level (the chroma
    /// upsampling differs, not the inverse DCT).
    #[test]
    fn jpegs_decode_to_the_samples_pil_decodes() {
        let Some(py) = testdata::python_with("PIL, numpy") else {
            crate::infer::testdata::skip(
                "no Python with PIL and numpy (run scripts/setup-test-env.sh)",
            );
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let make = "import sys, numpy\nfrom PIL import Image\nd = sys.argv[1]\nr = numpy.random.default_rng(7)\ng = (r.random((37, 53)) * 255).astype(numpy.uint8)\nx = numpy.linspace(0, 255, 300)\ns = (numpy.add.outer(x, x) / 2).astype(numpy.uint8)\nc = (r.random((40, 61, 3)) * 255).astype(numpy.uint8)\nImage.fromarray(g).save(d + '/g100.jpg', quality=100)\nImage.fromarray(g).save(d + '/g10.jpg', quality=10)\nImage.fromarray(g).save(d + '/gprog.jpg', quality=90, progressive=True)\nImage.fromarray(s).save(d + '/srst.jpg', quality=75, restart_marker_blocks=3)\nImage.fromarray(c).save(d + '/c444.jpg', quality=90, subsampling=0)\nImage.fromarray(c).save(d + '/c420.jpg', quality=90, subsampling=2)\n";
        let status = std::process::Command::new(py)
            .arg("-c")
            .arg(make)
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let files = [
            "g100.jpg",
            "g10.jpg",
            "gprog.jpg",
            "srst.jpg",
            "c444.jpg",
            "c420.jpg",
        ];
        let pil = pil_samples(dir.path(), &files).unwrap();
        for (file, want) in files.iter().zip(&pil) {
            let got = read_image_file(&dir.path().join(file), u64::MAX).unwrap();
            assert_eq!(got.pixels.len(), want.len(), "{file}");
            let differing = got.pixels.iter().zip(want).filter(|(a, b)| a != b).count();
            let largest = got
                .pixels
                .iter()
                .zip(want)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0);
            if *file == "c420.jpg" {
                assert!(largest <= 1, "{file}: off by {largest}");
                assert!(differing * 50 < want.len(), "{file}: {differing} differ");
            } else {
                assert_eq!(
                    differing, 0,
                    "{file}: {differing} samples differ from PIL's"
                );
            }
        }
    }

    /// A JPEG cut short, or with its scan data garbled, is a decode error, never a panic.
    #[test]
    fn broken_jpegs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let img = image::GrayImage::from_fn(40, 24, |x, y| image::Luma([(x * 5 + y * 3) as u8]));
        let path = dir.path().join("ok.jpg");
        img.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(decode_bytes(&bytes, u64::MAX).is_ok());
        for cut in [4, 20, bytes.len() / 2, bytes.len() - 3] {
            let r = decode_bytes(&bytes[..cut], u64::MAX);
            assert!(
                matches!(r, Err(RasterError::Decode(_))),
                "cut at {cut}: {r:?}"
            );
        }
        let mut garbled = bytes.clone();
        let scan = garbled.len() - 40;
        garbled[scan..scan + 20].iter_mut().for_each(|b| *b = 0xFF);
        // Garbled entropy-coded data decodes to something or fails; it must not panic.
        let _ = decode_bytes(&garbled, u64::MAX);
        // The budget holds before any scan is read.
        assert!(matches!(
            decode_bytes(&bytes, 40 * 24 - 1),
            Err(RasterError::TooLarge { .. })
        ));
    }

    /// CRC-32 as PNG chunks carry it.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A PNG of 8 x 8 pixels of `color` whose header then claims `width` x `height`.
    fn png_claiming(color: image::ColorType, width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        let (w, h) = (8u32, 8u32);
        let raw = vec![0u8; (w * h) as usize * usize::from(color.bytes_per_pixel())];
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut bytes),
            &raw,
            w,
            h,
            color.into(),
        )
        .unwrap();
        // IHDR: after the 8-byte signature, length (4) and type (4): width, height.
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// The pixel budget counts bytes too (three a pixel, 8-bit colour): an RGBA image of as
    /// many pixels as the budget allows would take a third more, and is refused from its
    /// header; 8-bit colour and grey at the budget are read.
    #[test]
    fn a_colour_image_is_held_to_the_budget_in_bytes() {
        let rgba = png_claiming(image::ColorType::Rgba8, 10_000, 10_000);
        assert!(matches!(
            decode_bytes(&rgba, 100_000_000),
            Err(RasterError::TooLarge {
                width: 10_000,
                height: 10_000,
                ..
            })
        ));
        // The same size in 8-bit colour or grey is within the budget: decoded (and
        // failing here for want of pixel data), not refused by size.
        for colour in [image::ColorType::Rgb8, image::ColorType::L8] {
            let same = png_claiming(colour, 10_000, 10_000);
            assert!(
                matches!(
                    decode_bytes(&same, 100_000_000),
                    Err(RasterError::Decode(_))
                ),
                "{colour:?}"
            );
        }
        // An honest RGBA image reads as before.
        let small = png_claiming(image::ColorType::Rgba8, 8, 8);
        assert_eq!(decode_bytes(&small, 100_000_000).unwrap().pixels.len(), 64);
    }

    /// A JPEG whose frame header lies about its size (far more pixels than its scan
    /// holds, within the budget) decodes to the declared size or fails; it never panics and
    /// is never decoded past the budget.
    #[test]
    fn a_jpeg_that_lies_about_its_size_is_held_to_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.jpg");
        image::GrayImage::from_fn(16, 8, |x, _| image::Luma([(x * 9) as u8]))
            .save(&path)
            .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        // SOF0: FF C0, length (2), precision (1), height (2), width (2).
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bytes[sof + 5..sof + 9].copy_from_slice(&[0x07, 0xD0, 0x0B, 0xB8]); // 2000 x 3000
        match decode_bytes(&bytes, 6_000_000) {
            Ok(g) => assert_eq!((g.width, g.height, g.pixels.len()), (3000, 2000, 6_000_000)),
            Err(e) => assert!(matches!(e, RasterError::Decode(_)), "{e}"),
        }
        assert!(matches!(
            decode_bytes(&bytes, 5_999_999),
            Err(RasterError::TooLarge {
                width: 3000,
                height: 2000,
                ..
            })
        ));
    }

    /// The 16 sample radiographs as the model's PyPI package ships them (JPEGs) decode to
    /// the very samples of the shared PNGs, which are PIL's decoding of those JPEGs.
    #[test]
    fn the_sample_jpegs_decode_to_the_shared_pngs() {
        let (Some(jpegs), Some(samples)) = (testdata::jpeg_samples_dir(), testdata::samples_dir())
        else {
            return;
        };
        let mut names: Vec<String> = std::fs::read_dir(&jpegs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".jpeg"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 16);
        // Sorted, NORMAL2-IM-* are NORMAL_01..08 and person*_bacteria_* PNEUMONIA_01..08.
        for (i, name) in names.iter().enumerate() {
            let png = if i < 8 {
                format!("NORMAL_{:02}.png", i + 1)
            } else {
                format!("PNEUMONIA_{:02}.png", i - 7)
            };
            let got = read_image_file(&jpegs.join(name), u64::MAX).unwrap();
            let want = read_image_file(&samples.join("png").join(&png), u64::MAX).unwrap();
            assert_eq!((got.width, got.height), (want.width, want.height), "{name}");
            assert!(got.pixels == want.pixels, "{name} differs from {png}");
        }
    }

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
