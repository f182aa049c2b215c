//! `duli infer [--model PATH] [--precision P] [-j N] [--heatmap [--heatmap-dir DIR]]
//! FILE...`: the inference pipeline on DICOM, PNG or JPEG files without the daemon, one
//! JSON object per line and file on stdout, in the order given (N files scored at a time:
//! one is decoded while another is in the model; the first ones already while the model
//! compiles, [`compile_while_decoding`]); with `--heatmap`, each analysed file's
//! heatmap is made the way the model's manifest says (class activation or occlusion) and
//! timed (`timings_ms.heatmap`), and written as a PNG into DIR when given.

use super::analyse::{analysed, not_analysed, prepare_file, Preparation};
use super::engine::{Engine, EngineError};
use super::gate;
use super::precision::{CpuFlags, Precision, PrecisionSetting};
use crate::config::InferenceConfig;
use crate::result::{HeatmapState, ImageResult, ImageStatus};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One output line for one file.
pub fn json_line(file: &Path, sop: Option<&str>, r: &ImageResult) -> serde_json::Value {
    let mut v = json!({
        "file": file.to_string_lossy(),
        "status": r.status.as_str(),
        "findings": r.findings.iter().map(|f| json!({
            "label": f.label,
            "code": f.code,
            "probability": f.probability,
            "threshold": f.threshold,
            "positive": f.positive,
        })).collect::<Vec<_>>(),
        "timings_ms": {
            "decode": r.timings.decode_ms,
            "preprocess": r.timings.preprocess_ms,
            "infer": r.timings.infer_ms,
        },
    });
    if r.heatmap != crate::result::HeatmapState::None {
        v["timings_ms"]["heatmap"] = json!(r.timings.heatmap_ms);
        v["heatmap"] = serde_json::to_value(&r.heatmap).unwrap_or_default();
    }
    if let Some(sop) = sop {
        v["sop_instance_uid"] = json!(sop);
    }
    if let Some(reason) = &r.reason {
        v["reason"] = json!(reason);
    }
    if let Some(caveat) = &r.caveat {
        v["caveat"] = json!(caveat);
    }
    v
}

/// One file through decode, preprocessing and the model: its SOP Instance UID (DICOM) and
/// its image result (analysed, not applicable or error, never a panic). Blocking.
pub fn score_file(engine: &Engine, file: &Path) -> (Option<String>, ImageResult) {
    score_prepared(
        engine,
        &prepare_file(file, engine.manifest(), engine.max_pixels()),
    )
}

/// A file's preparation through the model: as [`score_file`], once it is decoded.
fn score_prepared(engine: &Engine, prep: &Preparation) -> (Option<String>, ImageResult) {
    match prep {
        Preparation::Ready(p) => {
            let start = Instant::now();
            let r = match engine.infer_blocking(p.tensor.clone()) {
                Ok(raw) => analysed(
                    engine.manifest(),
                    p,
                    &raw,
                    start.elapsed().as_secs_f64() * 1000.0,
                ),
                Err(e) => super::analyse::failed(String::new(), e.to_string(), p.timings),
            };
            (p.sop_instance_uid.clone(), r)
        }
        Preparation::NotApplicable {
            sop_instance_uid, ..
        }
        | Preparation::Error {
            sop_instance_uid, ..
        } => (
            sop_instance_uid.clone(),
            not_analysed(prep).unwrap_or_else(|| {
                super::analyse::failed(String::new(), "not prepared".into(), Default::default())
            }),
        ),
    }
}

/// What `duli infer` makes besides the findings.
#[derive(Debug, Clone, Default)]
pub struct HeatmapOptions {
    /// Make each analysed file's heatmap (`--heatmap`).
    pub enabled: bool,
    /// Write the heatmaps as PNG files here (`--heatmap-dir`).
    pub dir: Option<PathBuf>,
}

/// [`score_file`] that also makes the file's heatmap the way the manifest says, timed into
/// `timings.heatmap_ms`, its state `done` (with the PNG path under `dir`, or the file's
/// name) or `failed`. `occlusion` is the request occlusion maps run on (made on first use).
pub fn score_with_heatmap(
    engine: &Engine,
    file: &Path,
    dir: Option<&Path>,
    occlusion: &mut Option<Box<dyn super::backend::Request>>,
) -> (Option<String>, ImageResult) {
    let prep = prepare_file(file, engine.manifest(), engine.max_pixels());
    let Preparation::Ready(p) = &prep else {
        return score_file(engine, file);
    };
    let manifest = engine.manifest();
    let start = Instant::now();
    let out = match engine.infer_outputs_blocking(p.tensor.clone()) {
        Ok(out) => out,
        Err(e) => {
            return (
                p.sop_instance_uid.clone(),
                super::analyse::failed(String::new(), e.to_string(), p.timings),
            )
        }
    };
    let mut r = analysed(
        manifest,
        p,
        &out.values,
        start.elapsed().as_secs_f64() * 1000.0,
    );
    let Some(target) = super::findings::heatmap_target(manifest, &r.findings) else {
        return (p.sop_instance_uid.clone(), r);
    };
    let code = manifest.labels[target].code.clone();
    let started = Instant::now();
    let png = heatmap_png(engine, &out, &p.tensor, p.source, target, occlusion);
    r.timings.heatmap_ms = started.elapsed().as_secs_f64() * 1000.0;
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    r.heatmap = save_heatmap(png, dir, &name, code);
    (p.sop_instance_uid.clone(), r)
}

/// The PNG heatmap of finding `target` for the image of `tensor` (sampled from an image of
/// `source` width and height; its network outputs are `out`): class activation when the engine has the head and the network returned
/// its features, else occlusion on `occlusion` (made on first use).
fn heatmap_png(
    engine: &Engine,
    out: &super::backend::Outputs,
    tensor: &[f32],
    source: (u32, u32),
    target: usize,
    occlusion: &mut Option<Box<dyn super::backend::Request>>,
) -> Result<Vec<u8>, super::heatmap::HeatmapError> {
    let manifest = engine.manifest();
    if let (Some(head), Some(f)) = (engine.cam(), &out.features) {
        let network = super::findings::probabilities(&out.values, manifest.output.activation);
        return super::heatmap::cam_png(head, f, &network, target, manifest, source);
    }
    if occlusion.is_none() {
        match engine.background_request(manifest.heatmap.batch as usize) {
            Ok(req) => *occlusion = Some(req),
            Err(e) => eprintln!("duli infer: no occlusion heatmaps: {e}"),
        }
    }
    let req = occlusion
        .as_mut()
        .ok_or(super::heatmap::HeatmapError::NoRequest)?;
    let batch = manifest.heatmap.batch as usize;
    let map = super::heatmap::occlusion_map(req.as_mut(), manifest, tensor, target, batch, || {})?;
    let g = manifest.heatmap.grid;
    let place = super::heatmap::Placement::on_image(&manifest.input, source);
    super::heatmap::render_png(&map, g, g, place)
}

/// Writes `png` (the heatmap of finding `code`) as `<name>.heatmap.png` under `dir`; its
/// state: done with the path (empty without `dir`), or failed with the reason.
fn save_heatmap(
    png: Result<Vec<u8>, super::heatmap::HeatmapError>,
    dir: Option<&Path>,
    name: &str,
    code: String,
) -> HeatmapState {
    let png = match png {
        Ok(png) => png,
        Err(e) => {
            return HeatmapState::Failed {
                reason: e.to_string(),
            }
        }
    };
    let Some(dir) = dir else {
        return HeatmapState::Done {
            code,
            path: String::new(),
        };
    };
    let path = dir.join(format!("{name}.heatmap.png"));
    match std::fs::write(&path, &png) {
        Ok(()) => HeatmapState::Done {
            code,
            path: path.to_string_lossy().into_owned(),
        },
        Err(e) => HeatmapState::Failed {
            reason: format!("{}: {e}", path.display()),
        },
    }
}

/// The engine of an offline tool (`tool` names it in messages): the model at `manifest`
/// at `precision` when given (`auto` as the daemon would resolve it; a fixed precision
/// even without a passed gate, with a warning on stderr, since the tools measure it),
/// else at `cfg.precision` as the daemon resolves it.
pub fn tool_engine(
    tool: &str,
    manifest: &Path,
    cfg: &InferenceConfig,
    precision: Option<PrecisionSetting>,
) -> Result<Engine, EngineError> {
    let engine = match precision {
        None => Engine::from_manifest_path(manifest, cfg)?,
        Some(PrecisionSetting::Auto) => {
            let cfg = InferenceConfig {
                precision: "auto".into(),
                ..cfg.clone()
            };
            Engine::from_manifest_path(manifest, &cfg)?
        }
        Some(PrecisionSetting::Fixed(p)) => {
            let engine = Engine::at_precision(manifest, cfg, p)?;
            if p != Precision::F32 {
                if let Err(why) = gate::passed_gate(engine.network(), &CpuFlags::detect()) {
                    eprintln!("duli {tool}: warning: {why}; the daemon would run f32 (these results measure {p}, they are not a gated configuration)");
                }
            }
            engine
        }
    };
    let id = engine.identity();
    eprintln!(
        "duli {tool}: {} {} at {} (CPU feature {}) on {}",
        id.name, id.version, id.precision, id.cpu_feature, id.backend
    );
    Ok(engine)
}

/// Runs the pipeline on `files` with the model at `model` (default: `cfg.model`) at
/// `precision` (default: `cfg.precision`, see [`tool_engine`]), printing one JSON line
/// per file in the order given; `jobs` files are scored at a time (one with heatmaps).
/// Returns the exit status: 0 when every file was analysed or not applicable, 1 when any
/// file failed, 2 when the model or runtime cannot be loaded (the message, on stderr, says
/// what to do).
pub fn infer_files_cli(
    model: Option<&Path>,
    files: &[PathBuf],
    cfg: &InferenceConfig,
    precision: Option<PrecisionSetting>,
    heatmaps: &HeatmapOptions,
    jobs: Option<usize>,
) -> i32 {
    let manifest = model
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cfg.model.clone());
    // Heatmaps are made one file at a time (the occlusion request is reused).
    let jobs = if heatmaps.enabled { Some(1) } else { jobs };
    let cfg = batch_settings(cfg, jobs, files.len());
    // Files are decoded while the model compiles, unless heatmaps need each file's input
    // after its result.
    let ahead_files = if heatmaps.enabled { &[][..] } else { files };
    let (engine, ahead) = compile_while_decoding(&manifest, &cfg, ahead_files, || {
        tool_engine("infer", &manifest, &cfg, precision)
    });
    let engine = match engine {
        Ok(e) => e,
        Err(e) => {
            eprintln!("duli infer: {e}");
            return 2;
        }
    };
    let jobs = jobs.unwrap_or_else(|| default_jobs(&engine));
    if let Some(dir) = &heatmaps.dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("duli infer: --heatmap-dir {}: {e}", dir.display());
            return 2;
        }
    }
    let mut out = std::io::stdout().lock();
    let mut status = 0;
    let mut emit = |file: &Path, sop: Option<String>, result: ImageResult| {
        if result.status == ImageStatus::Error {
            status = 1;
        }
        writeln!(out, "{}", json_line(file, sop.as_deref(), &result)).is_ok()
    };
    let written = if heatmaps.enabled {
        // One file at a time: the occlusion request is reused from file to file.
        let mut occlusion = None;
        files.iter().all(|file| {
            let (sop, result) =
                score_with_heatmap(&engine, file, heatmaps.dir.as_deref(), &mut occlusion);
            emit(file, sop, result)
        })
    } else {
        score_in_order_after(&engine, files, &ahead, jobs, emit)
    };
    if written {
        status
    } else {
        1
    }
}

/// Images per inference call when the offline tools score many files at once (see
/// [`batch_settings`]).
pub const TOOL_BATCH: usize = 4;

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
}

/// How many files the offline tools score at a time when not told (`-j`), once `engine`
/// is made: as many as its requests take at once (requests × images per call) and one
/// more per CPU being decoded meanwhile. INT8 in batches on two cores: 10; f32: 4. Each
/// file being decoded holds its full-resolution image, so no more are decoded at once than
/// the engine can take.
pub fn default_jobs(engine: &Engine) -> usize {
    engine.workers() * engine.batch() + cpus()
}

/// The inference settings of an offline tool that scores `jobs` of `files` files at a
/// time (`None`: as many as [`default_jobs`] says). With more than one at a time the
/// network is compiled for throughput (the runtime's streams: several infer requests, each
/// on its share of the cores), which is what a batch of waiting files is; the daemon's
/// latency hint would run them one after another on every core, which is slower per file
/// on most CPUs (INT8 on two cores: 12.4 ms a file for latency, 8.5 ms in throughput mode).
/// Each request then takes a batch of up to [`TOOL_BATCH`] images (INT8 only, see
/// [`super::engine::batch_for`]): by default the whole batch, with `jobs` given as many as
/// it keeps waiting beside one being decoded per CPU. One file at a time keeps
/// `cfg.performance_hint` and one image per call. The probabilities are the same either way.
pub fn batch_settings(cfg: &InferenceConfig, jobs: Option<usize>, files: usize) -> InferenceConfig {
    let mut cfg = cfg.clone();
    if jobs.is_none_or(|j| j > 1) && files > 1 {
        cfg.performance_hint = "THROUGHPUT".into();
        cfg.tool_batch = match jobs {
            None => TOOL_BATCH,
            Some(j) => (j.saturating_sub(cpus()) / cpus()).clamp(1, TOOL_BATCH),
        };
    }
    cfg
}

/// Scores `files` with [`score_file`] on `jobs` threads (one decodes while another waits
/// for the model), handing each result to `emit` in the order of `files`; stops handing
/// them over once `emit` returns false (and returns false). `duli infer` prints with it,
/// `duli evaluate` collects with it.
pub fn score_in_order(
    engine: &Engine,
    files: &[PathBuf],
    jobs: usize,
    emit: impl FnMut(&Path, Option<String>, ImageResult) -> bool,
) -> bool {
    score_in_order_after(engine, files, &[], jobs, emit)
}

/// [`score_in_order`] with `ahead[i]` the preparation of `files[i]` for the first files
/// ([`compile_while_decoding`]).
pub fn score_in_order_after(
    engine: &Engine,
    files: &[PathBuf],
    ahead: &[Preparation],
    jobs: usize,
    mut emit: impl FnMut(&Path, Option<String>, ImageResult) -> bool,
) -> bool {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, files.len().max(1)) {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(file) = files.get(i) else { break };
                    let scored = match ahead.get(i) {
                        Some(prep) => score_prepared(engine, prep),
                        None => score_file(engine, file),
                    };
                    if tx.send((i, scored)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Results that arrived ahead of their turn (small: findings and timings, no pixels;
        // a slow file holds back the lines after it, not the threads).
        let mut waiting = BTreeMap::new();
        let mut turn = 0;
        for (i, scored) in rx {
            waiting.insert(i, scored);
            while let Some((sop, result)) = waiting.remove(&turn) {
                if !emit(&files[turn], sop, result) {
                    stop.store(true, Ordering::Relaxed);
                    return false;
                }
                turn += 1;
            }
        }
        true
    })
}

/// Files decoded ahead while the model compiled, at most this many (each holds only its
/// model input until the run ends: 270 KB for the shipped model, 17 MB in all).
pub const AHEAD: usize = 64;

/// Makes the engine (`make`: the model's compile, which runs on one core for most of its
/// time) while one thread prepares the first of `files` (up to [`AHEAD`]) for the model
/// at `manifest`, stopping when the engine is ready; the preparations come back in file
/// order, a prefix of `files`. They are kept only when the engine prepares files exactly
/// so (the same manifest and pixel budget); otherwise, and when `files` is empty, the
/// files are prepared later as usual.
pub fn compile_while_decoding(
    manifest: &Path,
    cfg: &InferenceConfig,
    files: &[PathBuf],
    make: impl FnOnce() -> Result<Engine, EngineError> + Send,
) -> (Result<Engine, EngineError>, Vec<Preparation>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(read) = (!files.is_empty())
        .then(|| super::manifest::Manifest::load(manifest).ok())
        .flatten()
    else {
        return (make(), Vec::new());
    };
    let ready = AtomicBool::new(false);
    let (engine, prepared) = std::thread::scope(|s| {
        let ready = &ready;
        let read = &read;
        let decoder = s.spawn(move || {
            let mut prepared = Vec::new();
            for file in files.iter().take(AHEAD) {
                if ready.load(Ordering::Relaxed) {
                    break;
                }
                prepared.push(prepare_file(file, read, cfg.max_pixels));
            }
            prepared
        });
        let engine = make();
        ready.store(true, Ordering::Relaxed);
        (engine, decoder.join().unwrap_or_default())
    });
    let same = engine
        .as_ref()
        .is_ok_and(|e| *e.manifest().as_ref() == read && e.max_pixels() == cfg.max_pixels);
    (engine, if same { prepared } else { Vec::new() })
}
