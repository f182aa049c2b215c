//! `duli infer [--model PATH] [--precision P] FILE...`: the inference pipeline on DICOM,
//! PNG or JPEG files without the daemon, one JSON object per line and file on stdout.

use super::analyse::{analysed, not_analysed, prepare_file, Preparation};
use super::engine::{Engine, EngineError};
use super::gate;
use super::precision::{CpuFlags, Precision, PrecisionSetting};
use crate::config::InferenceConfig;
use crate::result::{ImageResult, ImageStatus};
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
    let prep = prepare_file(file, engine.manifest(), engine.max_pixels());
    match &prep {
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
            not_analysed(&prep).unwrap_or_else(|| {
                super::analyse::failed(String::new(), "not prepared".into(), Default::default())
            }),
        ),
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
                let net = gate::network(engine.manifest(), p)
                    .map_err(|e| EngineError::Model(e.to_string()))?;
                if let Err(why) = gate::passed_gate(&net, &CpuFlags::detect()) {
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
/// per file. Returns the exit status: 0 when every file was analysed or not applicable, 1
/// when any file failed, 2 when the model or runtime cannot be loaded (the message, on
/// stderr, says what to do).
pub fn infer_files_cli(
    model: Option<&Path>,
    files: &[PathBuf],
    cfg: &InferenceConfig,
    precision: Option<PrecisionSetting>,
) -> i32 {
    let manifest = model
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cfg.model.clone());
    let engine = match tool_engine("infer", &manifest, cfg, precision) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("duli infer: {e}");
            return 2;
        }
    };
    let mut out = std::io::stdout().lock();
    let mut status = 0;
    for file in files {
        let (sop, result) = score_file(&engine, file);
        if result.status == ImageStatus::Error {
            status = 1;
        }
        let line = json_line(file, sop.as_deref(), &result);
        if writeln!(out, "{line}").is_err() {
            return 1;
        }
    }
    status
}
