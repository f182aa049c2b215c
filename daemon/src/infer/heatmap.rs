//! Occlusion-sensitivity heatmaps: grey out each cell of a `grid × grid` partition of the
//! input, run the masked copies in batches, and map how much the explained finding's
//! probability drops. Works for any model. Runs on one background worker (one runtime
//! thread, waits while report inference has work) after the result is recorded; a full
//! backlog makes callers skip (and record why) instead of queueing without bound.
//! Every heatmap, occlusion or class activation ([`cam_png`]), is stored as the same
//! grey PNG covering the whole image it explains ([`render_png`] at a [`Placement`]): the
//! model's input size, or, for a model that crops a centre square, a canvas of the image's
//! proportions with the map over the square the model saw and nothing elsewhere. Whatever
//! draws a heatmap (the Parametric Map, the Secondary Capture, the console) stretches the
//! PNG over the whole image.

use super::backend::{BackendError, Request};
use super::cam::CamHead;
use super::engine::{Engine, EngineError};
use super::findings::probabilities;
use super::manifest::{Crop, InputSpec, Layout, Manifest};
use super::tensor::normalise;
use crate::result::HeatmapState;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Heatmap jobs that may wait; beyond that, new ones are skipped.
pub const BACKLOG: usize = 8;

/// Positions where cell `i` of `grid` cells starts, over `n` pixels (`grid + 1` values).
pub fn cell_edges(n: u32, grid: u32) -> Vec<u32> {
    (0..=grid).map(|i| i * n / grid).collect()
}

/// Greys out cell (cx, cy) of a batch-1 input tensor.
pub fn mask_cell(input: &mut [f32], manifest: &Manifest, grid: u32, cx: u32, cy: u32) {
    let spec = &manifest.input;
    let (w, h, ch) = (spec.width, spec.height, spec.channels as usize);
    let xs = cell_edges(w, grid);
    let ys = cell_edges(h, grid);
    for c in 0..ch {
        let fill = normalise(128, c, &spec.normalise);
        for y in ys[cy as usize]..ys[cy as usize + 1] {
            for x in xs[cx as usize]..xs[cx as usize + 1] {
                let p = (y * w + x) as usize;
                let i = match spec.layout {
                    Layout::NHWC => p * ch + c,
                    Layout::NCHW => c * (w * h) as usize + p,
                };
                input[i] = fill;
            }
        }
    }
}

/// The occlusion map of label `target`: per cell (row-major), max(0, p − p_masked).
/// `request` must take `batch` inputs per call.
pub fn occlusion_map(
    request: &mut dyn Request,
    manifest: &Manifest,
    input: &[f32],
    target: usize,
    batch: usize,
    mut before_batch: impl FnMut(),
) -> Result<Vec<f32>, BackendError> {
    let grid = manifest.heatmap.grid;
    let n = manifest.input_len();
    let labels = manifest.labels.len();
    // Copy 0 is the unmasked baseline, copies 1.. mask one cell each.
    let cells = (grid * grid) as usize;
    let mut probs = Vec::with_capacity(cells + 1);
    let mut next = 0usize;
    while next < cells + 1 {
        before_batch();
        let mut buf = Vec::with_capacity(batch * n);
        for k in 0..batch {
            let copy = (next + k).min(cells);
            let mut one = input.to_vec();
            if copy > 0 {
                let cell = (copy - 1) as u32;
                mask_cell(&mut one, manifest, grid, cell % grid, cell / grid);
            }
            buf.extend_from_slice(&one);
        }
        let raw = request.run(&buf)?;
        if raw.len() != batch * labels {
            return Err(BackendError::Infer(format!(
                "heatmap batch gave {} outputs, expected {}",
                raw.len(),
                batch * labels
            )));
        }
        for k in 0..batch {
            if next + k <= cells {
                let p = probabilities(
                    &raw[k * labels..(k + 1) * labels],
                    manifest.output.activation,
                );
                probs.push(p[target]);
            }
        }
        next += batch;
    }
    let base = probs[0];
    Ok(probs[1..].iter().map(|p| (base - p).max(0.0)).collect())
}

/// Why a heatmap was not made.
#[derive(Debug, thiserror::Error)]
pub enum HeatmapError {
    /// Inference of the occluded images failed.
    #[error(transparent)]
    Occlusion(#[from] BackendError),
    /// No inference request could be had for occlusion heatmaps.
    #[error("no request for occlusion heatmaps")]
    NoRequest,
    /// The map does not hold `map_w × map_h` values.
    #[error("map size mismatch")]
    MapSize,
    /// The PNG could not be encoded.
    #[error(transparent)]
    Encode(#[from] image::ImageError),
    /// The head recomputed from the features does not give the network's probabilities.
    #[error("the class-activation head does not reproduce the network's output (off by {shift})")]
    HeadMismatch {
        /// The largest difference over the labels.
        shift: f32,
    },
    /// The features do not fit the class-activation head.
    #[error("{got} feature values, the head expects {k} × {h} × {w}")]
    Features {
        /// How many came.
        got: usize,
        /// Channels the head expects.
        k: usize,
        /// Rows it expects.
        h: usize,
        /// Columns it expects.
        w: usize,
    },
}

/// Largest side of a heatmap canvas: a model that crops a centre square out of a very
/// long image gets a canvas of the image's proportions at most this long, its map scaled
/// down to fit.
pub const MAX_CANVAS_SIDE: u32 = 1024;

/// Where the model's input lies in a heatmap PNG that covers the whole image it was
/// sampled from: a canvas of `width × height`, the input's `inner_width × inner_height`
/// at `(x0, y0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Canvas width.
    pub width: u32,
    /// Canvas height.
    pub height: u32,
    /// Left of the model's input on the canvas.
    pub x0: u32,
    /// Top of the model's input on the canvas.
    pub y0: u32,
    /// Width of the model's input on the canvas.
    pub inner_width: u32,
    /// Height of the model's input on the canvas.
    pub inner_height: u32,
}

impl Placement {
    /// The placement of the input of `spec` sampled from an image of `source` (width,
    /// height): the input itself when the model reads the whole image; for a centre square
    /// (on a non-square image), the square's place on a canvas of the image's proportions.
    pub fn on_image(spec: &InputSpec, source: (u32, u32)) -> Placement {
        let whole = Placement {
            width: spec.width,
            height: spec.height,
            x0: 0,
            y0: 0,
            inner_width: spec.width,
            inner_height: spec.height,
        };
        let (w, h) = source;
        let side = w.min(h);
        if spec.crop == Crop::None || side == 0 || w == h {
            return whole;
        }
        // Canvas pixels per image pixel, each axis as the model resized the square; scaled
        // down so the canvas stays within MAX_CANVAS_SIDE.
        let (sx, sy) = (
            f64::from(spec.width) / f64::from(side),
            f64::from(spec.height) / f64::from(side),
        );
        let longest = (f64::from(w) * sx).max(f64::from(h) * sy);
        let f = (f64::from(MAX_CANVAS_SIDE) / longest).min(1.0);
        let px = |v: f64| (v.round() as u32).max(1);
        let (width, height) = (px(f64::from(w) * sx * f), px(f64::from(h) * sy * f));
        let (inner_width, inner_height) = (
            px(f64::from(spec.width) * f).min(width),
            px(f64::from(spec.height) * f).min(height),
        );
        Placement {
            width,
            height,
            x0: (width - inner_width) / 2,
            y0: (height - inner_height) / 2,
            inner_width,
            inner_height,
        }
    }
}

/// Renders a `map_w × map_h` map as an 8-bit grey PNG at `place` (brightest = largest
/// value): upsampled with a linear filter over the model's input, black around it.
pub fn render_png(
    map: &[f32],
    map_w: u32,
    map_h: u32,
    place: Placement,
) -> Result<Vec<u8>, HeatmapError> {
    let max = map.iter().copied().fold(0f32, f32::max);
    let cells: Vec<u8> = map
        .iter()
        .map(|v| {
            if max > 0.0 {
                (v / max * 255.0).round() as u8
            } else {
                0
            }
        })
        .collect();
    let small = image::GrayImage::from_raw(map_w, map_h, cells).ok_or(HeatmapError::MapSize)?;
    let inner = image::imageops::resize(
        &small,
        place.inner_width,
        place.inner_height,
        image::imageops::FilterType::Triangle,
    );
    let canvas = if (place.width, place.height) == inner.dimensions() {
        inner
    } else {
        let mut canvas = image::GrayImage::new(place.width, place.height);
        image::imageops::replace(
            &mut canvas,
            &inner,
            i64::from(place.x0),
            i64::from(place.y0),
        );
        canvas
    };
    let mut png = Vec::new();
    canvas.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

/// Largest difference allowed between a label's probability recomputed by the head from
/// the features and the network's own, for the map to be said to explain the network. On
/// the shipped model: about 1e-7 at f32, 0.002 at bf16, 0.04 at INT8 (the INT8 network
/// quantizes the pooled features and the dense layers the head computes in f32).
pub const HEAD_TOLERANCE: f32 = 0.1;

/// The class-activation map of output `target` from one image's `features` (of an image
/// of `source` width and height), rendered like an occlusion map ([`Placement`]); refused when the head recomputed from the
/// features does not give the network's own probabilities `network` (within
/// [`HEAD_TOLERANCE`]): a map must explain the numbers it is shown beside.
pub fn cam_png(
    head: &CamHead,
    features: &[f32],
    network: &[f32],
    target: usize,
    manifest: &Manifest,
    source: (u32, u32),
) -> Result<Vec<u8>, HeatmapError> {
    let (k, h, w) = head.shape;
    if features.len() != k * h * w {
        return Err(HeatmapError::Features {
            got: features.len(),
            k,
            h,
            w,
        });
    }
    let again = head.probabilities(features);
    let shift = network
        .iter()
        .zip(&again)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    if again.len() != network.len() || shift > HEAD_TOLERANCE {
        return Err(HeatmapError::HeadMismatch { shift });
    }
    let map = head.cam(features, target);
    render_png(
        &map,
        w as u32,
        h as u32,
        Placement::on_image(&manifest.input, source),
    )
}

/// One heatmap to compute.
#[derive(Debug, Clone)]
pub struct HeatmapJob {
    /// Study Instance UID of the result.
    pub study_uid: String,
    /// Result version.
    pub version: u32,
    /// The image.
    pub sop_instance_uid: String,
    /// Its batch-1 input tensor.
    pub input: Vec<f32>,
    /// Output index of the finding to explain.
    pub target: usize,
    /// Width and height of the image the input was sampled from (where the map goes).
    pub source: (u32, u32),
}

/// What became of a job: the PNG and the milliseconds it took, or why it failed.
pub type HeatmapOutcome = Result<(Vec<u8>, f64), HeatmapError>;

/// Called on the worker thread when a job ends.
pub type OnHeatmap = Box<dyn Fn(&HeatmapJob, HeatmapOutcome) + Send>;

/// The low-priority heatmap worker.
#[derive(Debug, Clone)]
pub struct HeatmapWorker {
    tx: mpsc::Sender<HeatmapJob>,
}

impl HeatmapWorker {
    /// Gets the heatmap request (see [`Engine::background_request`]) and starts the worker
    /// thread.
    pub fn start(engine: Arc<Engine>, on_done: OnHeatmap) -> Result<HeatmapWorker, EngineError> {
        let batch = engine.manifest().heatmap.batch as usize;
        let mut request = engine.background_request(batch)?;
        let (tx, mut rx) = mpsc::channel::<HeatmapJob>(BACKLOG);
        std::thread::Builder::new()
            .name("heatmap".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let start = Instant::now();
                    let manifest = Arc::clone(engine.manifest());
                    let wait_for_reports = || {
                        // Report work first: wait (bounded) while images are decoded
                        // or inferred for a report.
                        let until = Instant::now() + Duration::from_secs(30);
                        while engine.report_work() > 0 && Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    };
                    let out = occlusion_map(
                        request.as_mut(),
                        &manifest,
                        &job.input,
                        job.target,
                        batch,
                        wait_for_reports,
                    )
                    .map_err(HeatmapError::from)
                    .and_then(|map| {
                        render_png(
                            &map,
                            manifest.heatmap.grid,
                            manifest.heatmap.grid,
                            Placement::on_image(&manifest.input, job.source),
                        )
                    })
                    .map(|png| (png, start.elapsed().as_secs_f64() * 1000.0));
                    on_done(&job, out);
                }
            })
            .map_err(|e| EngineError::Backend(BackendError::Compile(e.to_string())))?;
        Ok(HeatmapWorker { tx })
    }

    /// Queues a job; gives it back when the backlog is full (the caller records a skip).
    pub fn submit(&self, job: HeatmapJob) -> Result<(), HeatmapJob> {
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
        })
    }

    /// Queues `jobs`; those that do not fit the backlog are recorded as skipped through the
    /// record stage (which then makes the report's SR). Blocking.
    pub fn submit_all(&self, recorder: &crate::record::Recorder, jobs: Vec<HeatmapJob>) {
        for job in jobs {
            if let Err(job) = self.submit(job) {
                let skipped = HeatmapState::Skipped {
                    reason: format!("backlog: {BACKLOG} heatmaps already waiting"),
                };
                let (uid, sop) = (&job.study_uid, &job.sop_instance_uid);
                if let Err(e) = recorder.record_heatmap(uid, job.version, sop, skipped, 0.0) {
                    log::error!("study {uid}: cannot record the skipped heatmap: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_whose_head_does_not_reproduce_the_network_is_refused() {
        use super::super::cam::{Dense, HeadActivation};
        // One channel of 2 × 2, pooled, then logits (x, -x) and a softmax.
        let head = CamHead {
            layers: vec![Dense {
                weights: vec![1.0, -1.0],
                bias: vec![0.0, 0.0],
                inputs: 1,
                outputs: 2,
            }],
            activation: HeadActivation::Softmax,
            shape: (1, 2, 2),
            channels_last: false,
        };
        let features = [2.0, 2.0, 2.0, 2.0];
        let own = head.probabilities(&features);
        let dir = tempfile::tempdir().unwrap();
        let m = super::super::manifest::tiny_manifest(dir.path(), "m", &"0".repeat(64));
        assert!(cam_png(&head, &features, &own, 0, &m, (150, 150)).is_ok());
        let err = cam_png(&head, &features, &[0.5, 0.5], 0, &m, (150, 150)).unwrap_err();
        assert!(matches!(err, HeatmapError::HeadMismatch { .. }), "{err}");
    }

    #[test]
    fn cells_cover_the_input_without_overlap() {
        assert_eq!(
            cell_edges(150, 8),
            vec![0, 18, 37, 56, 75, 93, 112, 131, 150]
        );
    }

    /// A fake network whose probability is the mean of the top-left quarter (NHWC, 1 ch).
    struct QuarterMean(usize);
    impl Request for QuarterMean {
        fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, BackendError> {
            let n = 16 * 16;
            Ok(input
                .chunks(n)
                .flat_map(|img| {
                    let mut s = 0.0;
                    for y in 0..8 {
                        for x in 0..8 {
                            s += img[y * 16 + x];
                        }
                    }
                    let p = s / 64.0;
                    [1.0 - p, p]
                })
                .take(self.0 * 2)
                .collect())
        }
    }

    #[test]
    fn occlusion_finds_the_region_the_network_reads() {
        let text = r#"name = "t"
version = "1"
[file]
path = "x.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[input]
name = "x"
layout = "NHWC"
width = 16
height = 16
channels = 1
resize = "nearest_pil"
normalise = { kind = "range", min = 0.0, max = 1.0 }
[output]
activation = "none"
[heatmap]
grid = 2
batch = 3
[[labels]]
code = "N"
name = "N"
background = true
[[labels]]
code = "X"
name = "X"
"#;
        let mut m: Manifest = toml::from_str(text).unwrap();
        m.dir = ".".into();
        let input = vec![1.0f32; 256];
        let mut calls = 0;
        let map = occlusion_map(&mut QuarterMean(3), &m, &input, 1, 3, || calls += 1).unwrap();
        assert_eq!(calls, 2); // 5 copies in batches of 3
        assert!(map[0] > 0.4, "{map:?}");
        assert_eq!(&map[1..], &[0.0, 0.0, 0.0]);
        let place = Placement {
            width: 16,
            height: 16,
            x0: 0,
            y0: 0,
            inner_width: 16,
            inner_height: 16,
        };
        let png = render_png(&map, 2, 2, place).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_luma8();
        assert_eq!(img.dimensions(), (16, 16));
        assert!(img.get_pixel(0, 0).0[0] > img.get_pixel(15, 15).0[0]);
    }

    /// A model that reads the whole image gets a map of its input; one that crops a centre
    /// square of a wide (or tall) image gets a canvas of the image's proportions with the
    /// map over the square it saw and black on either side, so that a map stretched over
    /// the whole image lies where the model looked.
    #[test]
    fn a_cropping_model_maps_over_its_square_on_a_canvas_of_the_image() {
        let shipped =
            crate::infer::testdata::repo_root().join("models/pneumonia-xception/model.toml");
        let mut spec: InputSpec = Manifest::load(&shipped).unwrap().input;
        (spec.width, spec.height, spec.crop) = (100, 100, Crop::None);
        let whole = Placement::on_image(&spec, (400, 200));
        assert_eq!(
            (whole.width, whole.height, whole.x0, whole.inner_width),
            (100, 100, 0, 100)
        );
        spec.crop = Crop::CenterSquare;
        // 400 × 200: the square is columns 100–300, half the width, in the middle.
        let wide = Placement::on_image(&spec, (400, 200));
        assert_eq!(
            (
                wide.width,
                wide.height,
                wide.x0,
                wide.y0,
                wide.inner_width,
                wide.inner_height
            ),
            (200, 100, 50, 0, 100, 100)
        );
        let tall = Placement::on_image(&spec, (300, 900));
        assert_eq!(
            (tall.width, tall.height, tall.x0, tall.y0),
            (100, 300, 0, 100)
        );
        assert_eq!(Placement::on_image(&spec, (500, 500)), whole);
        // A very long image: the canvas is held to MAX_CANVAS_SIDE, the map scaled with it.
        let long = Placement::on_image(&spec, (40_000, 100));
        assert_eq!(long.width, MAX_CANVAS_SIDE);
        assert!(long.height >= 1 && long.inner_width <= long.width);

        // A hot spot in the map's left cell is drawn inside the square, nothing outside it.
        let png = render_png(&[1.0, 0.0], 2, 1, wide).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_luma8();
        assert_eq!(img.dimensions(), (200, 100));
        assert_eq!(img.get_pixel(10, 50).0[0], 0, "left of the square");
        assert_eq!(img.get_pixel(190, 50).0[0], 0, "right of the square");
        assert!(img.get_pixel(60, 50).0[0] > 200, "the square's left half");
        assert!(img.get_pixel(140, 50).0[0] < 60, "the square's right half");
    }
}
