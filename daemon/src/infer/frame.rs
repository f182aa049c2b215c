//! One decoded frame read pixel by pixel: its stored samples stay in their native width (in
//! the file itself, read a row at a time, when the pixel data is native little endian; the
//! parsed file's buffer, or the decoder's output when it is encapsulated), and each pixel's
//! display level is computed when it is read, through
//! the level table of [`super::display::Levels`]. Resizing to the model's input and reducing
//! to a display image then read the frame once, without a full-resolution copy in another
//! type ([`super::resize`]).

use super::display::{luma, GrayView, Levels};
use super::samples::{BitLayout, SampleError};
use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

/// Stored samples of one frame, row by row, as the pixel data holds them.
#[derive(Debug, Clone)]
pub enum Samples<'a> {
    /// Bytes: 8-bit samples, or 16/32-bit samples in native byte order.
    Bytes(Cow<'a, [u8]>),
    /// 16-bit samples (Bits Allocated 16) as 16-bit words.
    Words(Cow<'a, [u16]>),
    /// Native little-endian pixel data left in its file, read a row at a time.
    File(Rc<FileSamples>),
}

/// Rows of native (little-endian) pixel data read from the file when first needed, into a
/// direct-mapped cache of whole rows (row `r` in slot `r mod slots`): a pass in row order
/// reads each row once, and a resampler that reads a band of rows for each output row
/// (the linear filter) finds the band cached while it is narrower than the cache. An I/O
/// error reads as zeros and is kept for [`FileSamples::error`].
pub struct FileSamples {
    file: std::fs::File,
    offset: u64,
    row_bytes: usize,
    rows: usize,
    cache: RefCell<RowCache>,
    error: RefCell<Option<String>>,
}

struct RowCache {
    tags: Vec<Option<usize>>,
    data: Vec<u8>,
}

/// Bytes of rows the cache of [`FileSamples`] holds at most (at least 16 rows).
pub const ROW_CACHE_BYTES: usize = 8 << 20;

impl std::fmt::Debug for FileSamples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSamples")
            .field("offset", &self.offset)
            .field("row_bytes", &self.row_bytes)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl FileSamples {
    /// `rows` rows of `row_bytes` bytes each, starting at byte `offset` of `file`; the
    /// caller has checked that the file holds them.
    pub fn new(file: std::fs::File, offset: u64, row_bytes: usize, rows: usize) -> FileSamples {
        let slots = (ROW_CACHE_BYTES / row_bytes.max(1))
            .clamp(16, 4096)
            .min(rows.max(1));
        FileSamples {
            file,
            offset,
            row_bytes,
            rows,
            cache: RefCell::new(RowCache {
                tags: vec![None; slots],
                data: vec![0; slots * row_bytes],
            }),
            error: RefCell::new(None),
        }
    }

    /// Bytes the samples cover.
    pub fn len(&self) -> usize {
        self.row_bytes * self.rows
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first I/O error met while reading, if any.
    pub fn error(&self) -> Option<String> {
        self.error.borrow().clone()
    }

    /// `N` bytes at byte `at` of the pixel data (a sample never straddles rows).
    fn bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        let (row, col) = (at / self.row_bytes, at % self.row_bytes);
        let mut out = [0u8; N];
        self.with_row(row, |line| out.copy_from_slice(&line[col..col + N]));
        out
    }

    /// Runs `use_row` over the bytes of row `row`, read into the cache first if absent.
    fn with_row<R>(&self, row: usize, use_row: impl FnOnce(&[u8]) -> R) -> R {
        use std::os::unix::fs::FileExt;
        let mut cache = self.cache.borrow_mut();
        let slot = row % cache.tags.len();
        let start = slot * self.row_bytes;
        if cache.tags[slot] != Some(row) {
            let from = self.offset + (row * self.row_bytes) as u64;
            let line = &mut cache.data[start..start + self.row_bytes];
            if let Err(e) = self.file.read_exact_at(line, from) {
                line.fill(0);
                self.error.borrow_mut().get_or_insert_with(|| e.to_string());
            }
            cache.tags[slot] = Some(row);
        }
        use_row(&cache.data[start..start + self.row_bytes])
    }
}

/// The stored samples of one frame with their bit layout.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    samples: Samples<'a>,
    layout: BitLayout,
    width: u32,
    height: u32,
    spp: usize,
}

impl<'a> Frame<'a> {
    /// A frame of `width × height` pixels of `spp` samples each; refuses a layout this
    /// reader does not handle and samples shorter than the frame.
    pub fn new(
        samples: Samples<'a>,
        layout: BitLayout,
        width: u32,
        height: u32,
        spp: usize,
    ) -> Result<Frame<'a>, SampleError> {
        layout.check()?;
        let count = width as usize * height as usize * spp;
        let (have, need) = match &samples {
            Samples::Bytes(b) => (b.len(), count * usize::from(layout.allocated / 8)),
            Samples::Words(w) if layout.allocated == 16 => (w.len() * 2, count * 2),
            Samples::File(f) => (f.len(), count * usize::from(layout.allocated / 8)),
            Samples::Words(_) => {
                return Err(SampleError::Layout {
                    allocated: layout.allocated,
                    stored: layout.stored,
                    high: layout.high,
                })
            }
        };
        if have < need {
            return Err(SampleError::Short { have, need });
        }
        Ok(Frame {
            samples,
            layout,
            width,
            height,
            spp,
        })
    }

    /// Columns.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Samples per pixel.
    pub fn samples_per_pixel(&self) -> usize {
        self.spp
    }

    /// The bit layout of each sample.
    pub fn layout(&self) -> BitLayout {
        self.layout
    }

    /// Number of samples (pixels × samples per pixel).
    pub fn len(&self) -> usize {
        self.width as usize * self.height as usize * self.spp
    }

    /// Whether the frame has no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored value of sample `i` (`i < len()`), as [`super::samples::stored_values`]
    /// reads it.
    pub fn stored(&self, i: usize) -> i32 {
        let raw = match (&self.samples, self.layout.allocated) {
            (Samples::Words(w), _) => u64::from(w[i]),
            (Samples::Bytes(b), 8) => u64::from(b[i]),
            (Samples::Bytes(b), 16) => u64::from(u16::from_ne_bytes([b[2 * i], b[2 * i + 1]])),
            (Samples::Bytes(b), _) => u64::from(u32::from_ne_bytes([
                b[4 * i],
                b[4 * i + 1],
                b[4 * i + 2],
                b[4 * i + 3],
            ])),
            (Samples::File(f), 8) => u64::from(f.bytes::<1>(i)[0]),
            (Samples::File(f), 16) => u64::from(u16::from_le_bytes(f.bytes(2 * i))),
            (Samples::File(f), _) => u64::from(u32::from_le_bytes(f.bytes(4 * i))),
        };
        self.layout.value(raw)
    }

    /// Every stored value, in order.
    pub fn values(&self) -> impl Iterator<Item = i32> + '_ {
        (0..self.height).flat_map(move |y| {
            let mut row = Vec::new();
            self.stored_row(y, &mut row);
            row
        })
    }

    /// The stored values of row `y` (`width × samples per pixel` of them) into `out`
    /// (cleared first): one read of the row, not one per sample.
    pub fn stored_row(&self, y: u32, out: &mut Vec<i32>) {
        out.clear();
        let n = self.width as usize * self.spp;
        let start = y as usize * n;
        let layout = self.layout;
        match &self.samples {
            Samples::Words(w) => out.extend(
                w[start..start + n]
                    .iter()
                    .map(|v| layout.value(u64::from(*v))),
            ),
            Samples::Bytes(b) => match layout.allocated {
                8 => out.extend(
                    b[start..start + n]
                        .iter()
                        .map(|v| layout.value(u64::from(*v))),
                ),
                16 => out.extend(
                    b[2 * start..2 * (start + n)]
                        .chunks_exact(2)
                        .map(|c| layout.value(u64::from(u16::from_ne_bytes([c[0], c[1]])))),
                ),
                _ => out.extend(b[4 * start..4 * (start + n)].chunks_exact(4).map(|c| {
                    layout.value(u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                })),
            },
            Samples::File(f) => f.with_row(y as usize, |line| match layout.allocated {
                8 => out.extend(line.iter().map(|v| layout.value(u64::from(*v)))),
                16 => out.extend(
                    line.chunks_exact(2)
                        .map(|c| layout.value(u64::from(u16::from_le_bytes([c[0], c[1]])))),
                ),
                _ => out.extend(line.chunks_exact(4).map(|c| {
                    layout.value(u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                })),
            }),
        }
    }

    /// Smallest and largest stored value (`(0, 0)` for an empty frame).
    pub fn range(&self) -> (i32, i32) {
        self.values()
            .fold(None, |acc: Option<(i32, i32)>, v| match acc {
                None => Some((v, v)),
                Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
            })
            .unwrap_or((0, 0))
    }
}

/// How a pixel's samples become its grey level.
#[derive(Debug, Clone, PartialEq)]
pub enum Tone {
    /// One sample per pixel through the grayscale pipeline's levels.
    Gray(Levels),
    /// Three 8-bit samples, grey = luma of RGB as PIL computes it.
    Rgb {
        /// Planar Configuration 1 (one plane per colour).
        planar: bool,
    },
    /// Three 8-bit samples of which the first is the grey (YBR: Y).
    FirstSample {
        /// Planar Configuration 1.
        planar: bool,
    },
}

/// A frame seen as its 8-bit display image ([`GrayView`]).
#[derive(Debug, Clone)]
pub struct DisplayFrame<'a> {
    frame: Frame<'a>,
    tone: Tone,
}

impl<'a> DisplayFrame<'a> {
    /// The frame with the mapping of its samples to levels.
    pub fn new(frame: Frame<'a>, tone: Tone) -> DisplayFrame<'a> {
        DisplayFrame { frame, tone }
    }

    fn sample8(&self, i: usize, c: usize, planar: bool) -> u8 {
        let n = self.frame.width as usize * self.frame.height as usize;
        let idx = if planar { c * n + i } else { i * 3 + c };
        self.frame.stored(idx).clamp(0, 255) as u8
    }
}

impl GrayView for DisplayFrame<'_> {
    fn width(&self) -> u32 {
        self.frame.width
    }

    fn height(&self) -> u32 {
        self.frame.height
    }

    fn row(&self, y: u32, out: &mut Vec<u8>) {
        out.clear();
        if matches!(
            self.tone,
            Tone::Rgb { planar: true } | Tone::FirstSample { planar: true }
        ) {
            // Planes: a row's samples are not together.
            out.extend((0..self.frame.width).map(|x| self.level(x, y)));
            return;
        }
        let mut values = Vec::with_capacity(self.frame.width as usize * self.frame.spp);
        self.frame.stored_row(y, &mut values);
        let sample = |v: i32| v.clamp(0, 255) as u8;
        match &self.tone {
            Tone::Gray(levels) => out.extend(values.iter().map(|v| levels.get(*v))),
            Tone::Rgb { planar: false } => out.extend(
                values
                    .chunks_exact(3)
                    .map(|p| luma(sample(p[0]), sample(p[1]), sample(p[2]))),
            ),
            Tone::FirstSample { planar: false } => {
                out.extend(values.chunks_exact(3).map(|p| sample(p[0])))
            }
            Tone::Rgb { planar: true } | Tone::FirstSample { planar: true } => {}
        }
    }

    fn level(&self, x: u32, y: u32) -> u8 {
        let i = y as usize * self.frame.width as usize + x as usize;
        match &self.tone {
            Tone::Gray(levels) => levels.get(self.frame.stored(i)),
            Tone::Rgb { planar } => luma(
                self.sample8(i, 0, *planar),
                self.sample8(i, 1, *planar),
                self.sample8(i, 2, *planar),
            ),
            Tone::FirstSample { planar } => self.sample8(i, 0, *planar),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::display::{DisplayPipeline, ModalityLut, Voi, WindowFunction};
    use crate::infer::samples::stored_values;

    const U12: BitLayout = BitLayout {
        allocated: 16,
        stored: 12,
        high: 11,
        signed: false,
    };

    #[test]
    fn words_and_bytes_read_the_same_values_as_stored_values() {
        let raw: Vec<u16> = vec![0x0FFF, 0xF010, 16 * 255, 7];
        let bytes: Vec<u8> = raw.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let expected = stored_values(&bytes, U12, 4).unwrap();
        let words = Frame::new(Samples::Words(Cow::Borrowed(&raw)), U12, 2, 2, 1).unwrap();
        let from_bytes = Frame::new(Samples::Bytes(Cow::Borrowed(&bytes)), U12, 2, 2, 1).unwrap();
        assert_eq!(words.values().collect::<Vec<_>>(), expected);
        assert_eq!(from_bytes.values().collect::<Vec<_>>(), expected);
        assert_eq!(words.range(), (7, 4095));
        let signed = BitLayout {
            signed: true,
            ..U12
        };
        let words = Frame::new(Samples::Words(Cow::Borrowed(&raw)), signed, 4, 1, 1).unwrap();
        assert_eq!(
            words.values().collect::<Vec<_>>(),
            stored_values(&bytes, signed, 4).unwrap()
        );
        assert_eq!(words.range(), (-16, 16));
    }

    #[test]
    fn short_samples_and_odd_layouts_are_refused() {
        let raw = [1u16, 2, 3];
        assert!(matches!(
            Frame::new(Samples::Words(Cow::Borrowed(&raw)), U12, 2, 2, 1),
            Err(SampleError::Short { have: 6, need: 8 })
        ));
        let eight = BitLayout {
            allocated: 8,
            stored: 8,
            high: 7,
            signed: false,
        };
        assert!(Frame::new(Samples::Words(Cow::Borrowed(&raw)), eight, 1, 1, 1).is_err());
        let one = BitLayout {
            allocated: 1,
            stored: 1,
            high: 0,
            signed: false,
        };
        assert!(Frame::new(Samples::Bytes(Cow::Borrowed(&[0u8; 8])), one, 1, 1, 1).is_err());
    }

    #[test]
    fn levels_read_per_pixel_equal_the_pipeline_applied_to_every_value() {
        let raw: Vec<u16> = (0..64u16).map(|v| v * 61 % 4096).collect();
        let values = stored_values(
            &raw.iter()
                .flat_map(|v| v.to_ne_bytes())
                .collect::<Vec<u8>>(),
            U12,
            64,
        )
        .unwrap();
        let pipeline = DisplayPipeline {
            modality: ModalityLut::Rescale {
                slope: 1.0,
                intercept: 0.0,
            },
            voi: Voi::Window {
                center: 1000.0,
                width: 2001.0,
                function: WindowFunction::Linear,
            },
            monochrome1: true,
        };
        let expected = pipeline.apply(&values, 8, 8);
        let frame = Frame::new(Samples::Words(Cow::Borrowed(&raw)), U12, 8, 8, 1).unwrap();
        let (lo, hi) = frame.range();
        let view = DisplayFrame::new(frame, Tone::Gray(pipeline.levels(lo, hi)));
        assert_eq!(view.to_image(), expected);
    }

    #[test]
    fn colour_pixels_become_luma_or_their_first_sample() {
        let eight = BitLayout {
            allocated: 8,
            stored: 8,
            high: 7,
            signed: false,
        };
        // Two pixels, interleaved: red then white; planar: the same two pixels.
        let interleaved = [255u8, 0, 0, 255, 255, 255];
        let planar = [255u8, 255, 0, 255, 0, 255];
        for (bytes, planar) in [(&interleaved, false), (&planar, true)] {
            let f = Frame::new(Samples::Bytes(Cow::Borrowed(bytes)), eight, 2, 1, 3).unwrap();
            let rgb = DisplayFrame::new(f.clone(), Tone::Rgb { planar });
            assert_eq!(rgb.to_image().pixels, vec![76, 255]);
            let y = DisplayFrame::new(f, Tone::FirstSample { planar });
            assert_eq!(y.to_image().pixels, vec![255, 255]);
        }
    }
}
