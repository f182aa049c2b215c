//! Display previews: each instance is decoded once (every transfer syntax the DICOM stack
//! decodes, its first frame read in place), its rescale applied, scaled to display
//! resolution and written as a 16-bit grayscale PNG under `<data_dir>/previews/`, with a
//! JSON sidecar saying how the 16-bit values map back to modality values and which window
//! to start from. The browser applies window/level itself, so dragging needs no server
//! round trip.
//!
//! A cached preview is a copy of the pixel data: it is never served for an instance whose
//! pixel data retention pruned, and it is removed when it is asked for then and by
//! [`super::preview_sweep`] (the sidecar names its instance).

use crate::infer::decode_sandbox::is_sandboxed;
use crate::infer::dicom_image::{DicomImage, DicomImageError};
use crate::infer::display::GrayImage;
use crate::infer::frame::Frame;
use crate::infer::resize::block_means;
use crate::model::InstanceRecord;
use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Folder of the cached previews inside the data directory.
pub const DIR: &str = "previews";
/// Longest side of a preview in pixels.
pub const MAX_SIDE: u32 = 1280;

/// Errors of preview rendering.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PreviewError {
    /// The instance's pixel data was pruned by retention.
    #[error("the pixel data of this instance was removed by retention")]
    Pruned,
    /// The file cannot be read or parsed.
    #[error("cannot read the DICOM file: {0}")]
    Read(String),
    /// The pixel data cannot be decoded.
    #[error("cannot decode the pixel data: {0}")]
    Decode(String),
    /// Writing the cache failed.
    #[error("cannot write the preview: {0}")]
    Write(String),
    /// Other previews were being rendered for longer than a request waits ([`RENDER_WAIT`]).
    #[error("the console is rendering other previews; try again in a few seconds")]
    Busy,
    /// The user already has [`MAX_RENDERS_PER_USER`] previews waiting to be rendered.
    #[error("{MAX_RENDERS_PER_USER} of your previews are being rendered already; try again in a few seconds")]
    UserBusy,
}

/// Previews not yet cached that one user may have waiting for the render turn or being
/// rendered at once (a study page asks for a preview and its window, so two at a time in
/// normal use): further ones are answered at once (429), so that no user holds more than
/// this many of the console's request slots while renders queue.
pub const MAX_RENDERS_PER_USER: usize = 4;

/// Renders waiting or running, by user.
static WAITING: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
    std::sync::LazyLock::new(Default::default);

/// A user's place among the renders waiting; given back when dropped.
struct Waiting<'a>(&'a str);

impl<'a> Waiting<'a> {
    /// A place for `user`, unless the user has [`MAX_RENDERS_PER_USER`] already.
    fn take(user: &'a str) -> Result<Waiting<'a>, PreviewError> {
        let mut waiting = WAITING.lock().unwrap_or_else(|p| p.into_inner());
        let n = waiting.entry(user.to_string()).or_insert(0);
        if *n >= MAX_RENDERS_PER_USER {
            return Err(PreviewError::UserBusy);
        }
        *n += 1;
        Ok(Waiting(user))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = WAITING.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = waiting.get_mut(self.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                waiting.remove(self.0);
            }
        }
    }
}

/// Longest a request waits for its turn to render before it is answered busy (503), so
/// requests for previews never hold the console's request slots for long.
pub const RENDER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a render that failed (unreadable file, undecodable pixel data) is answered
/// from memory instead of decoding the instance again.
pub const FAILURE_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);

/// Most failed renders remembered.
const MAX_FAILURES: usize = 1024;

/// Failed renders by (SOP Instance UID, receive time of its file): when, and why.
type Failures = std::collections::HashMap<(String, i64), (std::time::Instant, PreviewError)>;

/// The failed renders remembered ([`FAILURE_MEMORY`]).
static FAILED: std::sync::LazyLock<std::sync::Mutex<Failures>> =
    std::sync::LazyLock::new(Default::default);

/// Why `inst` failed to render less than [`FAILURE_MEMORY`] ago, if it did.
fn failed_before(inst: &InstanceRecord) -> Option<PreviewError> {
    let failed = FAILED.lock().unwrap_or_else(|p| p.into_inner());
    let key = (inst.sop_instance_uid.clone(), inst.received_at);
    failed
        .get(&key)
        .filter(|(at, _)| at.elapsed() < FAILURE_MEMORY)
        .map(|(_, e)| e.clone())
}

/// Remembers that `inst` failed to render with `e` (only failures of the instance itself).
fn remember_failure(inst: &InstanceRecord, e: &PreviewError) {
    if !matches!(e, PreviewError::Read(_) | PreviewError::Decode(_)) {
        return;
    }
    let mut failed = FAILED.lock().unwrap_or_else(|p| p.into_inner());
    if failed.len() >= MAX_FAILURES {
        failed.retain(|_, (at, _)| at.elapsed() < FAILURE_MEMORY);
        if failed.len() >= MAX_FAILURES {
            failed.clear();
        }
    }
    let key = (inst.sop_instance_uid.clone(), inst.received_at);
    failed.insert(key, (std::time::Instant::now(), e.clone()));
}

/// The render lock, waited for at most [`RENDER_WAIT`].
fn render_turn() -> Result<std::sync::MutexGuard<'static, ()>, PreviewError> {
    let deadline = std::time::Instant::now() + RENDER_WAIT;
    loop {
        match RENDER.try_lock() {
            Ok(guard) => return Ok(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {
                if std::time::Instant::now() >= deadline {
                    return Err(PreviewError::Busy);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// What the preview's 16-bit values mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviewInfo {
    /// Preview width in pixels.
    pub width: u32,
    /// Preview height in pixels.
    pub height: u32,
    /// Columns of the original image.
    pub source_columns: u32,
    /// Rows of the original image.
    pub source_rows: u32,
    /// Modality value of preview value 0.
    pub min: f64,
    /// Modality value of preview value 65535.
    pub max: f64,
    /// Window centre to start from, in modality values (from the file, else from the
    /// 1st–99th percentile).
    pub window_center: f64,
    /// Window width to start from, in modality values.
    pub window_width: f64,
    /// MONOCHROME1: high values are dark; the viewer inverts.
    pub invert: bool,
    /// Photometric interpretation of the original.
    pub photometric: String,
}

/// The sidecar of a cached preview: the instance it was made from, and what its values
/// mean. Sidecars without the instance (written by an earlier version) are not read: the
/// preview is made again, and [`super::preview_sweep`] removes the old pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sidecar {
    /// SOP Instance UID of the instance the preview was made from.
    sop_instance_uid: String,
    /// When the file it was made from was received: an instance sent again since has
    /// its preview made again.
    received_at: i64,
    /// What the preview's values mean.
    #[serde(flatten)]
    info: PreviewInfo,
}

/// Paths of an instance's cached preview and sidecar.
pub fn cache_paths(data_dir: &Path, sop_uid: &str) -> (PathBuf, PathBuf) {
    let name = hex::encode(&digest(&SHA256, sop_uid.as_bytes()).as_ref()[..16]);
    let dir = data_dir.join(DIR);
    (
        dir.join(format!("{name}.png")),
        dir.join(format!("{name}.json")),
    )
}

/// Renders run one at a time: a decoded radiograph takes tens of megabytes, and a second
/// request for the same preview then finds it cached.
/// The cache's sweep holds it too, so it never sees a preview half written.
static RENDER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the render lock: no preview is written while the guard lives.
pub(super) fn hold_renders() -> std::sync::MutexGuard<'static, ()> {
    RENDER.lock().unwrap_or_else(|p| p.into_inner())
}

/// The instance a sidecar names (SOP Instance UID, receive time of its file), when it is
/// one this version wrote.
pub(super) fn sidecar_source(json: &Path) -> Option<(String, i64)> {
    let sidecar: Sidecar = serde_json::from_slice(&std::fs::read(json).ok()?).ok()?;
    Some((sidecar.sop_instance_uid, sidecar.received_at))
}

/// The cached preview of `inst`, when there is one made from its current file.
fn cached(png: &Path, json: &Path, inst: &InstanceRecord) -> Option<PreviewInfo> {
    if !png.exists() {
        return None;
    }
    let sidecar: Sidecar = serde_json::from_slice(&std::fs::read(json).ok()?).ok()?;
    (sidecar.sop_instance_uid == inst.sop_instance_uid && sidecar.received_at == inst.received_at)
        .then_some(sidecar.info)
}

/// Removes the cached preview and sidecar of an instance (those absent are fine); the
/// bytes freed.
pub fn forget(data_dir: &Path, sop_uid: &str) -> std::io::Result<u64> {
    let (png, json) = cache_paths(data_dir, sop_uid);
    let mut freed = 0;
    for path in [png, json] {
        freed += remove_file(&path)?.unwrap_or(0);
    }
    Ok(freed)
}

/// Removes a file; its size, or `None` when it was not there.
pub(super) fn remove_file(path: &Path) -> std::io::Result<Option<u64>> {
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match std::fs::remove_file(path) {
        Ok(()) => Ok(Some(size)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The cached preview of an instance, rendered now when absent (images over `max_pixels`
/// are refused before any decode). An instance whose pixel data was pruned has no
/// preview, cached or not: [`PreviewError::Pruned`], and a copy still cached is removed.
/// Blocking: call it from a blocking task.
pub fn get_or_render(
    data_dir: &Path,
    inst: &InstanceRecord,
    max_pixels: u64,
    user: &str,
) -> Result<(PathBuf, PreviewInfo), PreviewError> {
    let sop = &inst.sop_instance_uid;
    if inst.pruned {
        if let Err(e) = forget(data_dir, sop) {
            log::error!("console: remove the preview of pruned instance {sop}: {e}");
        }
        return Err(PreviewError::Pruned);
    }
    let (png, json) = cache_paths(data_dir, sop);
    if let Some(info) = cached(&png, &json, inst) {
        return Ok((png, info));
    }
    if let Some(e) = failed_before(inst) {
        return Err(e);
    }
    let _place = Waiting::take(user)?;
    let _one_at_a_time = render_turn()?;
    if let Some(info) = cached(&png, &json, inst) {
        return Ok((png, info));
    }
    let (pixels, info) = render(&data_dir.join(&inst.path), max_pixels).inspect_err(|e| {
        remember_failure(inst, e);
    })?;
    let dir = png.parent().unwrap_or(data_dir);
    std::fs::create_dir_all(dir).map_err(|e| PreviewError::Write(e.to_string()))?;
    let tmp = png.with_extension("png.tmp");
    pixels
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| PreviewError::Write(e.to_string()))?;
    std::fs::rename(&tmp, &png).map_err(|e| PreviewError::Write(e.to_string()))?;
    let tmp = json.with_extension("json.tmp");
    let sidecar = Sidecar {
        sop_instance_uid: sop.clone(),
        received_at: inst.received_at,
        info,
    };
    std::fs::write(&tmp, crate::store::encode(&sidecar))
        .and_then(|_| std::fs::rename(&tmp, &json))
        .map_err(|e| PreviewError::Write(e.to_string()))?;
    Ok((png, sidecar.info))
}

type Gray16 = image::ImageBuffer<image::Luma<u16>, Vec<u16>>;

/// Decodes a DICOM file's first frame into a display-size 16-bit preview; an image over
/// `max_pixels` is refused before any decode. The frame's stored samples are read in place
/// ([`DicomImage::with_stored_frame`]): no full-resolution copy in another type is made.
///
/// JPEG-LS and JPEG 2000 are decoded only in the confined child process
/// ([`crate::infer::decode_sandbox`]), which returns the 8-bit display image (window
/// applied): their previews are made from it (`from_display`).
pub fn render(path: &Path, max_pixels: u64) -> Result<(Gray16, PreviewInfo), PreviewError> {
    let image = DicomImage::open_within(path, max_pixels).map_err(|e| match e {
        DicomImageError::Open(e) => PreviewError::Read(e),
        other => PreviewError::Decode(other.to_string()),
    })?;
    if is_sandboxed(image.transfer_syntax()) {
        let display = image
            .reduced_display(MAX_SIDE)
            .map_err(|e| PreviewError::Decode(e.to_string()))?;
        let header = image.header();
        return from_display(&display, header.columns, header.rows);
    }
    image
        .with_stored_frame(|frame, decoded| Ok(from_frame(&frame, decoded)))
        .map_err(|e| PreviewError::Decode(e.to_string()))?
}

/// The preview of an 8-bit display image (already windowed, high values bright) of a
/// `columns × rows` source: display values 0..255 spread over 0..65535, the window the
/// whole range.
fn from_display(
    display: &GrayImage,
    columns: u32,
    rows: u32,
) -> Result<(Gray16, PreviewInfo), PreviewError> {
    let pixels = display.pixels.iter().map(|v| u16::from(*v) * 257).collect();
    let image = Gray16::from_raw(display.width, display.height, pixels)
        .ok_or_else(|| PreviewError::Decode("pixel buffer size".into()))?;
    Ok((
        image,
        PreviewInfo {
            width: display.width,
            height: display.height,
            source_columns: columns,
            source_rows: rows,
            min: 0.0,
            max: 255.0,
            window_center: 127.5,
            window_width: 256.0,
            invert: false,
            photometric: "MONOCHROME2".into(),
        },
    ))
}

/// The smallest and largest finite value of a `cols × rows` frame read row by row with
/// `values` (into `line`), and about 100,000 of its values, evenly spread, for the window.
fn value_range(
    cols: u32,
    rows: u32,
    values: impl Fn(u32, &mut Vec<f32>),
    line: &mut Vec<f32>,
) -> Result<(f32, f32, Vec<f32>), PreviewError> {
    let n = cols as usize * rows as usize;
    let step = (n / 100_000).max(1);
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    let mut sample = Vec::with_capacity(n / step + 1);
    for y in 0..rows {
        values(y, line);
        let first = y as usize * cols as usize;
        for (i, v) in line.iter().enumerate() {
            if v.is_finite() {
                lo = lo.min(*v);
                hi = hi.max(*v);
            }
            if (first + i) % step == 0 {
                sample.push(*v);
            }
        }
    }
    if !lo.is_finite() || !hi.is_finite() {
        return Err(PreviewError::Decode("no finite pixel values".into()));
    }
    Ok((lo, hi, sample))
}

/// A `cols × rows` frame of 16-bit levels read row by row with `levels`, area-averaged by
/// the whole factor that keeps the long side at least [`MAX_SIDE`], then resized (linear
/// filter) to at most [`MAX_SIDE`]: the image and its width and height.
fn downscale(
    cols: u32,
    rows: u32,
    levels: impl FnMut(u32, &mut Vec<u16>),
) -> Result<(Gray16, u32, u32), PreviewError> {
    let long = cols.max(rows);
    let scale = (MAX_SIDE as f64 / long as f64).min(1.0);
    let (w, h) = (
        ((cols as f64 * scale).round() as u32).max(1),
        ((rows as f64 * scale).round() as u32).max(1),
    );
    let factor = (long / MAX_SIDE).max(1);
    let (bw, bh, means) = block_means(cols, rows, factor, levels);
    let blocks = Gray16::from_raw(bw, bh, means.into_iter().map(|m| m as u16).collect())
        .ok_or_else(|| PreviewError::Decode("pixel buffer size".into()))?;
    let small = if (w, h) == (bw, bh) {
        blocks
    } else {
        image::imageops::resize(&blocks, w, h, image::imageops::FilterType::Triangle)
    };
    Ok((small, w, h))
}

/// The preview of one decoded frame: modality values (the mean of the first three samples
/// for colour) scaled from their minimum to their maximum onto 0..65535, area-averaged by
/// the whole factor that keeps the long side at least [`MAX_SIDE`], then resized (linear
/// filter) to at most [`MAX_SIDE`].
fn from_frame(
    frame: &Frame<'_>,
    decoded: &dicom_pixeldata::DecodedPixelData<'_>,
) -> Result<(Gray16, PreviewInfo), PreviewError> {
    let (cols, rows) = (frame.width(), frame.height());
    let spp = frame.samples_per_pixel();
    let rescale = decoded
        .rescale()
        .ok()
        .and_then(|r| r.first().copied())
        .filter(|_| spp == 1);
    // The values of row `y`, one per pixel.
    let values = |y: u32, out: &mut Vec<f32>| {
        let mut stored = Vec::with_capacity(cols as usize * spp);
        frame.stored_row(y, &mut stored);
        out.clear();
        if spp == 1 {
            out.extend(stored.iter().map(|v| {
                let v = f64::from(*v);
                rescale.map_or(v, |r| v * r.slope + r.intercept) as f32
            }));
        } else {
            out.extend(
                stored
                    .chunks_exact(spp)
                    .map(|p| p.iter().take(3).map(|v| *v as f32).sum::<f32>() / 3.0),
            );
        }
    };
    let mut line = Vec::with_capacity(cols as usize);
    let (lo, hi, sample) = value_range(cols, rows, values, &mut line)?;
    let span = (hi - lo).max(1e-6);
    let levels = |y: u32, out: &mut Vec<u16>| {
        values(y, &mut line);
        out.clear();
        out.extend(
            line.iter()
                .map(|v| (((v - lo) / span) * 65535.0).round().clamp(0.0, 65535.0) as u16),
        );
    };
    let (small, w, h) = downscale(cols, rows, levels)?;
    let photometric = decoded.photometric_interpretation().to_string();
    let (center, width) = match decoded.window().ok().flatten().and_then(|w| w.first()) {
        // A window must be finite too: a Window Center of "NaN" would make the preview
        // black and its record unreadable (JSON has no NaN), so it was drawn again on
        // every request.
        Some(w) if w.width > 0.0 && w.width.is_finite() && w.center.is_finite() => {
            (w.center, w.width)
        }
        _ => percentile_window(sample.into_iter()),
    };
    Ok((
        small,
        PreviewInfo {
            width: w,
            height: h,
            source_columns: cols,
            source_rows: rows,
            min: lo as f64,
            max: hi as f64,
            window_center: center,
            window_width: width,
            invert: photometric.trim() == "MONOCHROME1",
            photometric,
        },
    ))
}

/// A window over the 1st to 99th percentile of a sample of the values.
fn percentile_window(values: impl Iterator<Item = f32>) -> (f64, f64) {
    let mut sample: Vec<f32> = values.filter(|v| v.is_finite()).collect();
    if sample.is_empty() {
        return (0.0, 1.0);
    }
    sample.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| sample[((sample.len() - 1) as f64 * q) as usize] as f64;
    let (p1, p99) = (at(0.01), at(0.99));
    ((p1 + p99) / 2.0, (p99 - p1).max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16 × 16 MONOCHROME2 image with the given Window Center and Width (DS text).
    fn image_with_window(dir: &Path, center: &str, width: &str) -> PathBuf {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_dictionary_std::tags;
        use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
        let mut obj = InMemDicomObject::new_empty();
        let mut put = |tag, vr, v: PrimitiveValue| obj.put(DataElement::new(tag, vr, v));
        put(
            tags::SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.1.1".into(),
        );
        put(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5".into());
        put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
        put(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2".into(),
        );
        put(tags::ROWS, VR::US, PrimitiveValue::from(16u16));
        put(tags::COLUMNS, VR::US, PrimitiveValue::from(16u16));
        put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
        put(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16));
        put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16));
        put(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        );
        put(tags::WINDOW_CENTER, VR::DS, center.into());
        put(tags::WINDOW_WIDTH, VR::DS, width.into());
        let pixels: Vec<u16> = (0..256u16).map(|i| i * 16).collect();
        put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.into()));
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.1.1")
                    .media_storage_sop_instance_uid("1.2.3.4.5")
                    .transfer_syntax("1.2.840.10008.1.2.1"),
            )
            .unwrap();
        let path = dir.join("w.dcm");
        file.write_to_file(&path).unwrap();
        path
    }

    /// A window that is not a finite number is not used: the preview takes its window from
    /// the pixel values, and its record can be read back from the cache.
    #[test]
    fn a_window_that_is_not_a_finite_number_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        for (center, width) in [("NaN", "400"), ("2048", "inf")] {
            let path = image_with_window(dir.path(), center, width);
            let (_, info) = render(&path, 1 << 20).unwrap();
            assert!(info.window_center.is_finite(), "{center}/{width}: {info:?}");
            assert!(
                info.window_width.is_finite() && info.window_width > 0.0,
                "{info:?}"
            );
        }
        let path = image_with_window(dir.path(), "1000", "500");
        let (_, info) = render(&path, 1 << 20).unwrap();
        assert_eq!((info.window_center, info.window_width), (1000.0, 500.0));
    }

    /// Held by the tests that hold the render turn, so that they do not time each other out.
    static RENDER_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A render that failed is answered from memory for a while (an undecodable instance
    /// is not decoded again on every request), and a request that cannot get its turn to
    /// render within [`RENDER_WAIT`] is answered busy instead of holding its slot.
    #[test]
    fn failed_renders_are_remembered_and_a_long_wait_is_busy() {
        let _alone = RENDER_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("broken.dcm");
        std::fs::write(&broken, b"not DICOM at all").unwrap();
        let inst = InstanceRecord {
            sop_instance_uid: "1.2.3.4.99".into(),
            path: "broken.dcm".into(),
            received_at: 7,
            ..Default::default()
        };
        let first = get_or_render(dir.path(), &inst, 1 << 20, "u").unwrap_err();
        assert!(matches!(first, PreviewError::Read(_)), "{first}");
        // Now a good file at the same place: still answered from memory, not read again.
        std::fs::rename(image_with_window(dir.path(), "1000", "500"), &broken).unwrap();
        let again = get_or_render(dir.path(), &inst, 1 << 20, "u").unwrap_err();
        assert_eq!(again.to_string(), first.to_string());
        // A new file (another receive time) is rendered.
        let newer = InstanceRecord {
            received_at: 8,
            ..inst.clone()
        };
        let (png, _) = get_or_render(dir.path(), &newer, 1 << 20, "u").unwrap();
        assert!(png.exists());

        let other = InstanceRecord {
            sop_instance_uid: "1.2.3.4.100".into(),
            ..newer
        };
        let held = hold_renders();
        let started = std::time::Instant::now();
        let busy = get_or_render(dir.path(), &other, 1 << 20, "u").unwrap_err();
        assert!(matches!(busy, PreviewError::Busy), "{busy}");
        assert!(started.elapsed() >= RENDER_WAIT);
        drop(held);
    }

    /// One user's uncached previews beyond [`MAX_RENDERS_PER_USER`] are answered at once
    /// while renders queue, not held waiting; another user still waits for a turn, and the
    /// places are given back when the renders end. A cached preview needs no place.
    #[test]
    fn one_user_waits_for_at_most_a_few_renders_at_once() {
        let _alone = RENDER_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = image_with_window(dir.path(), "1000", "500");
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let inst = |k: usize| InstanceRecord {
            sop_instance_uid: format!("1.2.3.4.5{k}"),
            path: name.clone(),
            received_at: 1,
            ..Default::default()
        };
        let data = dir.path().to_path_buf();
        let held = hold_renders();
        let waiting: Vec<_> = (0..MAX_RENDERS_PER_USER)
            .map(|k| {
                let (data, inst) = (data.clone(), inst(k));
                std::thread::spawn(move || get_or_render(&data, &inst, 1 << 20, "greedy"))
            })
            .collect();
        let other = {
            let (data, inst) = (data.clone(), inst(90));
            std::thread::spawn(move || get_or_render(&data, &inst, 1 << 20, "other"))
        };
        // Wait until the greedy user's renders are all waiting.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while WAITING.lock().unwrap().get("greedy").copied() != Some(MAX_RENDERS_PER_USER) {
            assert!(
                std::time::Instant::now() < until,
                "the renders never queued"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let started = std::time::Instant::now();
        let refused = get_or_render(&data, &inst(99), 1 << 20, "greedy").unwrap_err();
        assert!(matches!(refused, PreviewError::UserBusy), "{refused}");
        assert!(started.elapsed() < RENDER_WAIT / 2, "answered at once");
        drop(held);
        for w in waiting {
            w.join().unwrap().unwrap();
        }
        other.join().unwrap().unwrap();
        assert_eq!(
            WAITING.lock().unwrap().get("greedy"),
            None,
            "places given back"
        );
        // Rendered now: asked again, cached, whatever the user has waiting.
        assert!(get_or_render(&data, &inst(0), 1 << 20, "greedy").is_ok());
    }

    #[test]
    fn percentile_window_spans_the_middle_of_the_values() {
        let v: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let (c, w) = percentile_window(v.into_iter());
        assert!((c - 499.5).abs() < 2.0, "{c}");
        assert!((w - 980.0).abs() < 3.0, "{w}");
    }
}
