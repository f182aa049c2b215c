//! Stored values → 8-bit display image (MONOCHROME2 appearance: bone bright), per the
//! grayscale pipeline of PS3.3 C.11: Modality LUT (rescale or table), VOI (window with its
//! LINEAR / LINEAR_EXACT / SIGMOID function, or a VOI LUT table), MONOCHROME1 inversion, and
//! the mapping of [0, 1] onto 0..255 (`round(255·y)`).
//!
//! Each step is a small pure function; [`DisplayPipeline`] chains them and evaluates the
//! chain once per possible stored value (a lookup table) rather than once per pixel.

/// An 8-bit single-channel image, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// `width × height` values, row by row.
    pub pixels: Vec<u8>,
}

impl GrayImage {
    /// The value at (x, y); callers keep x < width and y < height.
    pub fn get(&self, x: u32, y: u32) -> u8 {
        self.pixels[(y * self.width + x) as usize]
    }
}

/// An 8-bit grey image read pixel by pixel: a [`GrayImage`] in memory, or a decoded frame
/// whose display levels are computed from its stored samples as they are read
/// ([`super::frame::DisplayFrame`]), so that resizing needs no full-resolution copy.
pub trait GrayView {
    /// Columns.
    fn width(&self) -> u32;
    /// Rows.
    fn height(&self) -> u32;
    /// The level at (x, y); callers keep x < width and y < height.
    fn level(&self, x: u32, y: u32) -> u8;

    /// The levels of row `y` (`y < height`) into `out` (cleared first); a view that can
    /// read a whole row at once does so.
    fn row(&self, y: u32, out: &mut Vec<u8>) {
        out.clear();
        out.extend((0..self.width()).map(|x| self.level(x, y)));
    }

    /// Every level, row by row, as an image in memory.
    fn to_image(&self) -> GrayImage {
        let (width, height) = (self.width(), self.height());
        let mut pixels = Vec::with_capacity(width as usize * height as usize);
        let mut line = Vec::with_capacity(width as usize);
        for y in 0..height {
            self.row(y, &mut line);
            pixels.extend_from_slice(&line);
        }
        GrayImage {
            width,
            height,
            pixels,
        }
    }
}

impl GrayView for GrayImage {
    fn width(&self) -> u32 {
        self.width
    }
    fn height(&self) -> u32 {
        self.height
    }
    fn level(&self, x: u32, y: u32) -> u8 {
        self.get(x, y)
    }

    fn row(&self, y: u32, out: &mut Vec<u8>) {
        let w = self.width as usize;
        let start = y as usize * w;
        out.clear();
        out.extend_from_slice(self.pixels.get(start..start + w).unwrap_or_default());
    }
}

/// A lookup table (Modality LUT or VOI LUT), as PS3.3 C.11.1/C.11.2 define it.
#[derive(Debug, Clone, PartialEq)]
pub struct LutTable {
    /// Input value mapped to the first entry (LUT Descriptor, second value).
    pub first_mapped: i64,
    /// Bits per entry (LUT Descriptor, third value).
    pub bits: u8,
    /// The entries.
    pub data: Vec<u16>,
}

impl LutTable {
    /// Entry for input `x`: inputs below the first mapped value take the first entry,
    /// inputs past the end take the last.
    pub fn lookup(&self, x: f64) -> f64 {
        let Some(last) = self.data.len().checked_sub(1) else {
            return 0.0;
        };
        // Saturating: a first mapped value and an input at the ends of i64 (a huge
        // rescale slope, a descriptor read as a 64-bit value) must not wrap.
        let i = (x.floor() as i64)
            .saturating_sub(self.first_mapped)
            .clamp(0, last as i64) as usize;
        f64::from(self.data[i])
    }
}

/// The Modality LUT stage.
#[derive(Debug, Clone, PartialEq)]
pub enum ModalityLut {
    /// Rescale Slope / Intercept (identity when absent).
    Rescale {
        /// Rescale Slope.
        slope: f64,
        /// Rescale Intercept.
        intercept: f64,
    },
    /// Modality LUT Sequence.
    Table(LutTable),
}

/// The VOI LUT function of a window (VOI LUT Function (0028,1056)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowFunction {
    /// LINEAR (the default), PS3.3 C.11.2.1.2.1.
    Linear,
    /// LINEAR_EXACT, C.11.2.1.3.2.
    LinearExact,
    /// SIGMOID, C.11.2.1.3.1.
    Sigmoid,
}

/// The VOI stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Voi {
    /// Window Center / Width with its function.
    Window {
        /// Window Center.
        center: f64,
        /// Window Width.
        width: f64,
        /// The function.
        function: WindowFunction,
    },
    /// VOI LUT Sequence (first item); output scaled by 2^bits − 1.
    Table(LutTable),
    /// No VOI in the object: map `min..max` (modality values) linearly onto [0, 1].
    Range {
        /// Value shown black.
        min: f64,
        /// Value shown white.
        max: f64,
    },
}

/// Applies the Modality LUT to a stored value.
pub fn modality(x: f64, lut: &ModalityLut) -> f64 {
    match lut {
        ModalityLut::Rescale { slope, intercept } => x * slope + intercept,
        ModalityLut::Table(t) => t.lookup(x),
    }
}

/// The window functions of PS3.3 C.11.2.1.2.1 and C.11.2.1.3, with output range [0, 1].
pub fn window(x: f64, center: f64, width: f64, function: WindowFunction) -> f64 {
    match function {
        WindowFunction::Linear => {
            // y = ((x − (c − 0.5)) / (w − 1) + 0.5), clamped; width 1 is a step at c − 0.5.
            if width <= 1.0 {
                return if x <= center - 0.5 { 0.0 } else { 1.0 };
            }
            let lo = center - 0.5 - (width - 1.0) / 2.0;
            let hi = center - 0.5 + (width - 1.0) / 2.0;
            if x <= lo {
                0.0
            } else if x > hi {
                1.0
            } else {
                (x - (center - 0.5)) / (width - 1.0) + 0.5
            }
        }
        WindowFunction::LinearExact => {
            if width <= 0.0 {
                return if x <= center { 0.0 } else { 1.0 };
            }
            ((x - center) / width + 0.5).clamp(0.0, 1.0)
        }
        WindowFunction::Sigmoid => {
            if width <= 0.0 {
                return if x <= center { 0.0 } else { 1.0 };
            }
            1.0 / (1.0 + (-4.0 * (x - center) / width).exp())
        }
    }
}

/// Applies the VOI stage to a modality value, giving [0, 1].
pub fn voi(x: f64, voi: &Voi) -> f64 {
    match voi {
        Voi::Window {
            center,
            width,
            function,
        } => window(x, *center, *width, *function),
        Voi::Table(t) => {
            let full = ((1u32 << t.bits.clamp(1, 16)) - 1) as f64;
            (t.lookup(x) / full).clamp(0.0, 1.0)
        }
        Voi::Range { min, max } => {
            if max <= min {
                return if x >= *max { 1.0 } else { 0.0 };
            }
            ((x - min) / (max - min)).clamp(0.0, 1.0)
        }
    }
}

/// MONOCHROME1 (minimum value shown white) → MONOCHROME2 appearance.
pub fn invert(y: f64, monochrome1: bool) -> f64 {
    if monochrome1 {
        1.0 - y
    } else {
        y
    }
}

/// [0, 1] → display level `round(255·y)`.
pub fn to_level(y: f64) -> u8 {
    (255.0 * y.clamp(0.0, 1.0)).round() as u8
}

/// The whole grayscale chain for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct DisplayPipeline {
    /// Modality LUT.
    pub modality: ModalityLut,
    /// VOI stage.
    pub voi: Voi,
    /// Photometric Interpretation is MONOCHROME1.
    pub monochrome1: bool,
}

impl DisplayPipeline {
    /// Display level of one stored value.
    pub fn level(&self, stored: i32) -> u8 {
        let m = modality(f64::from(stored), &self.modality);
        to_level(invert(voi(m, &self.voi), self.monochrome1))
    }

    /// The display levels of every stored value from `lo` to `hi`: a table when the span
    /// is at most 2^17 values, else the chain evaluated per value.
    pub fn levels(&self, lo: i32, hi: i32) -> Levels {
        let span = (i64::from(hi) - i64::from(lo) + 1).max(1) as usize;
        if span <= 1 << 17 {
            Levels::Table {
                lo,
                table: (0..span).map(|i| self.level(lo + i as i32)).collect(),
            }
        } else {
            Levels::Chain(self.clone())
        }
    }

    /// Maps stored values to an 8-bit image (`values.len()` must be `width × height`).
    pub fn apply(&self, values: &[i32], width: u32, height: u32) -> GrayImage {
        let (lo, hi) = match (values.iter().min(), values.iter().max()) {
            (Some(lo), Some(hi)) => (*lo, *hi),
            _ => (0, 0),
        };
        let levels = self.levels(lo, hi);
        GrayImage {
            width,
            height,
            pixels: values.iter().map(|v| levels.get(*v)).collect(),
        }
    }
}

/// The display level of each stored value of one image ([`DisplayPipeline::levels`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Levels {
    /// Levels of the stored values `lo..lo + table.len()`.
    Table {
        /// The first stored value of the table.
        lo: i32,
        /// One level per stored value.
        table: Vec<u8>,
    },
    /// Too wide a span for a table: the chain per value.
    Chain(DisplayPipeline),
}

impl Levels {
    /// The level of stored value `v` (inside the span the levels were made for).
    pub fn get(&self, v: i32) -> u8 {
        match self {
            Levels::Table { lo, table } => {
                let i = (i64::from(v) - i64::from(*lo)).max(0) as usize;
                table.get(i).or(table.last()).copied().unwrap_or(0)
            }
            Levels::Chain(p) => p.level(v),
        }
    }
}

/// The VOI to use when an object carries none: small stored depths (≤ 8 bits) are display
/// values already (their full range maps onto 0..255); deeper data is scaled from its
/// minimum to its maximum modality value.
pub fn default_voi(
    values: impl IntoIterator<Item = i32>,
    bits_stored: u16,
    signed: bool,
    lut: &ModalityLut,
) -> Voi {
    if bits_stored <= 8 {
        let (lo, hi) = if signed {
            (
                -(1i64 << (bits_stored - 1)),
                (1i64 << (bits_stored - 1)) - 1,
            )
        } else {
            (0, (1i64 << bits_stored) - 1)
        };
        let (a, b) = (modality(lo as f64, lut), modality(hi as f64, lut));
        return Voi::Range {
            min: a.min(b),
            max: a.max(b),
        };
    }
    let mut min = f64::INFINITY;
    let mut max = f64::NEG_INFINITY;
    for v in values {
        let m = modality(f64::from(v), lut);
        min = min.min(m);
        max = max.max(m);
    }
    if !min.is_finite() {
        min = 0.0;
        max = 0.0;
    }
    Voi::Range { min, max }
}

/// Grey level of an RGB pixel, as PIL's `convert("L")` computes it (ITU-R 601-2 luma).
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    // PIL: (r*19595 + g*38470 + b*7471 + 0x8000) >> 16
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDENTITY: ModalityLut = ModalityLut::Rescale {
        slope: 1.0,
        intercept: 0.0,
    };

    fn linear(center: f64, width: f64) -> Voi {
        Voi::Window {
            center,
            width,
            function: WindowFunction::Linear,
        }
    }

    #[test]
    fn linear_window_of_the_samples_returns_the_png_levels_exactly() {
        // MONOCHROME2, x = 16·v, window 2040.5/4081 → y = v/255 (cxr-samples README).
        let p = DisplayPipeline {
            modality: IDENTITY,
            voi: linear(2040.5, 4081.0),
            monochrome1: false,
        };
        for v in 0..=255u8 {
            assert_eq!(p.level(16 * i32::from(v)), v);
        }
        // MONOCHROME1, x = 4095 − 16·v, window 2055.5/4081, inverted.
        let p = DisplayPipeline {
            modality: IDENTITY,
            voi: linear(2055.5, 4081.0),
            monochrome1: true,
        };
        for v in 0..=255u8 {
            assert_eq!(p.level(4095 - 16 * i32::from(v)), v);
        }
    }

    #[test]
    fn a_2048_4096_window_would_be_one_level_low() {
        let p = DisplayPipeline {
            modality: IDENTITY,
            voi: linear(2048.0, 4096.0),
            monochrome1: false,
        };
        let wrong = (0..=255u8)
            .filter(|v| p.level(16 * i32::from(*v)) != *v)
            .count();
        assert!(wrong > 0, "the window functions must differ as PS3.3 says");
    }

    #[test]
    fn window_edges_follow_ps3_3() {
        // c=100, w=11: ≤ 94.5 → 0, > 104.5 → 1, linear between.
        assert_eq!(window(94.5, 100.0, 11.0, WindowFunction::Linear), 0.0);
        assert_eq!(window(104.6, 100.0, 11.0, WindowFunction::Linear), 1.0);
        assert!((window(99.5, 100.0, 11.0, WindowFunction::Linear) - 0.5).abs() < 1e-12);
        assert_eq!(window(0.0, 0.0, 1.0, WindowFunction::Linear), 1.0);
        assert_eq!(window(-1.0, 0.0, 1.0, WindowFunction::Linear), 0.0);
        assert!((window(100.0, 100.0, 10.0, WindowFunction::LinearExact) - 0.5).abs() < 1e-12);
        assert!((window(100.0, 100.0, 10.0, WindowFunction::Sigmoid) - 0.5).abs() < 1e-12);
        assert!(window(200.0, 100.0, 10.0, WindowFunction::Sigmoid) > 0.99);
    }

    #[test]
    fn modality_rescale_and_tables() {
        let ct = ModalityLut::Rescale {
            slope: 1.0,
            intercept: -1024.0,
        };
        assert_eq!(modality(1024.0, &ct), 0.0);
        let t = LutTable {
            first_mapped: 10,
            bits: 8,
            data: vec![0, 100, 255],
        };
        assert_eq!(modality(5.0, &ModalityLut::Table(t.clone())), 0.0);
        assert_eq!(modality(11.0, &ModalityLut::Table(t.clone())), 100.0);
        assert_eq!(modality(99.0, &ModalityLut::Table(t.clone())), 255.0);
        assert_eq!(voi(11.0, &Voi::Table(t)), 100.0 / 255.0);
        // Inputs and first values at the ends of i64 (a huge rescale slope, a first value
        // far below any sample) take the table's ends, never a wrapped index.
        let far = LutTable {
            first_mapped: i64::MIN,
            bits: 8,
            data: vec![0, 100, 255],
        };
        assert_eq!(far.lookup(f64::MAX), 255.0);
        assert_eq!(far.lookup(0.0), 255.0);
        let low = LutTable {
            first_mapped: 10,
            ..far
        };
        assert_eq!(low.lookup(f64::MIN), 0.0);
    }

    #[test]
    fn missing_voi_uses_full_range_for_8_bits_and_min_max_otherwise() {
        let v8 = default_voi([3, 9], 8, false, &IDENTITY);
        assert_eq!(
            v8,
            Voi::Range {
                min: 0.0,
                max: 255.0
            }
        );
        let v12 = default_voi([100, 900, 400], 12, false, &IDENTITY);
        assert_eq!(
            v12,
            Voi::Range {
                min: 100.0,
                max: 900.0
            }
        );
        let p = DisplayPipeline {
            modality: IDENTITY,
            voi: v12,
            monochrome1: false,
        };
        let img = p.apply(&[100, 900, 500], 3, 1);
        assert_eq!(img.pixels, vec![0, 255, 128]);
    }

    #[test]
    fn luma_matches_pil() {
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
    }
}
