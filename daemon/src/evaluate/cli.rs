//! `duli evaluate DIR`: the acceptance test of a model on a site's own labelled cases.

use super::dataset::{from_csv, from_folders};
use super::plot::{write_plot, Plot};
use super::report::{build, labelled_scores, table, ModelInfo, Report};
use super::score::score_all;
use crate::config::InferenceConfig;
use crate::infer::cli::tool_engine;
use crate::infer::gate::{record_path, MsPerImage};
use crate::infer::precision::{Precision, PrecisionSetting};
use crate::infer::Engine;
use anyhow::anyhow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Exit status when the precision gate fails.
pub const GATE_FAILED: i32 = 3;

/// Default `--target-sensitivity`.
pub const DEFAULT_TARGET_SENSITIVITY: f64 = 0.95;
/// Default `--negative`.
pub const DEFAULT_NEGATIVE: &str = "NORMAL";

/// What `duli evaluate` was asked to do (its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct EvaluateOptions {
    /// Folder of the acceptance set (label folders, or the files a --labels CSV names).
    pub dir: PathBuf,
    /// CSV of file,finding,0|1 rows (files relative to DIR) instead of label folders.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Name of the folder holding negatives for every finding.
    #[arg(long, default_value = DEFAULT_NEGATIVE)]
    pub negative: String,
    /// Sensitivity of the second operating point.
    #[arg(long, default_value_t = DEFAULT_TARGET_SENSITIVITY)]
    pub target_sensitivity: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write ROC and reliability plots (SVG and PNG) into this folder.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Model manifest (default: inference.model of the configuration).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Images scored at a time (default: as many as the model's requests take at once plus
    /// one per CPU; more than one compiles the model
    /// for throughput, as `duli infer -j` does).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Score at f32, bf16, int8 or auto (default: inference.precision as the daemon
    /// resolves it).
    #[arg(long)]
    pub precision: Option<PrecisionSetting>,
    /// Also score the set at f32 and gate the precision against it: it passes when no
    /// finding's AUC is below f32's and no decision flips at the threshold. The record is
    /// written beside the network (`gate-<precision>-<cpu feature>.json`); exit status 3
    /// when it fails.
    #[arg(long)]
    pub gate: bool,
}

/// File-name-safe form of a finding code.
fn stem(code: &str) -> String {
    code.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes the ROC and reliability plots of every finding with figures into `dir`; the
/// files written. The error's text is the whole message (it is printed with `{}`).
fn write_plots(
    dir: &Path,
    report: &Report,
    scored: &[super::score::ScoredCase],
    manifest: &crate::infer::Manifest,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for (code, f) in &report.findings {
        let Some(i) = manifest.labels.iter().position(|l| &l.code == code) else {
            continue;
        };
        let cases = labelled_scores(scored, i);
        if f.error.is_some() {
            continue;
        }
        let roc = super::metrics::roc_curve(&cases);
        let auc = f.auc.zip(f.auc_ci).map(|(a, [lo, hi])| (a, lo, hi));
        let s = stem(code);
        files.extend(write_plot(
            dir,
            &format!("roc-{s}"),
            &format!("ROC: {}", f.name),
            Plot::Roc { points: &roc, auc },
        )?);
        files.extend(write_plot(
            dir,
            &format!("reliability-{s}"),
            &format!("Reliability: {}", f.name),
            Plot::Reliability(&f.calibration),
        )?);
    }
    Ok(files)
}

/// Scores the cases again at f32, compares and writes the gate record beside the
/// network. `None` when the precision is f32 itself (the reference needs no gate). The
/// error's text is the whole message (it is printed with `{}`).
#[allow(clippy::too_many_arguments)]
fn run_gate(
    opts: &EvaluateOptions,
    cfg: &InferenceConfig,
    manifest_path: &Path,
    manifest: &crate::infer::Manifest,
    id: &crate::infer::engine::ModelIdentity,
    cases: Vec<super::dataset::Case>,
    scored: &[super::score::ScoredCase],
    findings: &std::collections::BTreeSet<usize>,
    labels_sha256: Option<&str>,
    threads: usize,
    elapsed: std::time::Duration,
) -> anyhow::Result<Option<crate::infer::gate::GateRecord>> {
    if id.precision == Precision::F32 {
        eprintln!("duli evaluate: --gate: f32 is the reference, it needs no gate");
        return Ok(None);
    }
    let net = crate::infer::gate::network(manifest, id.precision)?;
    eprintln!(
        "duli evaluate: gate: scoring the same {} images at f32",
        cases.len()
    );
    let reference = Engine::at_precision(manifest_path, cfg, Precision::F32)?;
    let started = Instant::now();
    let f32_scored = score_all(&reference, cases, threads);
    let f32_elapsed = started.elapsed();
    drop(reference);
    let per_image = |d: std::time::Duration| d.as_secs_f64() * 1000.0 / scored.len().max(1) as f64;
    let digest = super::gate::dataset_digest(&opts.dir, scored, labels_sha256)
        .map_err(|e| anyhow!("reading the set for its digest: {e}"))?;
    let date =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    let dir = opts.dir.canonicalize().unwrap_or_else(|_| opts.dir.clone());
    let run = super::gate::GateRun {
        manifest,
        precision: id.precision,
        cpu_feature: id.cpu_feature.clone(),
        network_sha256: id.network_sha256.clone(),
        dir: &dir,
        ms_per_image: MsPerImage {
            f32: per_image(f32_elapsed),
            gated: per_image(elapsed),
        },
        date,
    };
    let record = super::gate::compare(&run, &f32_scored, scored, findings, digest);
    let path = record_path(&net.gate_dir, id.precision, &id.cpu_feature);
    record.save(&path)?;
    eprintln!("duli evaluate: gate record written to {}", path.display());
    Ok(Some(record))
}

/// Why `duli evaluate` stops early: the exit status and what it prints.
struct Stop {
    status: i32,
    message: String,
}

impl Stop {
    /// A stop with exit status 2: the model, the folder or the labels cannot be read.
    fn unreadable(message: impl std::fmt::Display) -> Stop {
        Stop {
            status: 2,
            message: message.to_string(),
        }
    }
}

/// Runs the evaluation and prints the report. Exit status: 0 when every finding has
/// figures (unreadable files are listed, not fatal), 1 when a finding has no positives or
/// no negatives or a plot cannot be written, 2 when the model, the folder or the labels
/// cannot be read, 3 when `--gate` ran and the precision failed it.
pub fn evaluate_cli(opts: &EvaluateOptions, cfg: &InferenceConfig) -> i32 {
    match evaluate(opts, cfg) {
        Ok(status) => status,
        Err(stop) => {
            eprintln!("duli evaluate: {}", stop.message);
            stop.status
        }
    }
}

/// The steps of [`evaluate_cli`]: score the set, report what was not counted, gate,
/// plot, print.
fn evaluate(opts: &EvaluateOptions, cfg: &InferenceConfig) -> Result<i32, Stop> {
    if !(opts.target_sensitivity > 0.0 && opts.target_sensitivity <= 1.0) {
        return Err(Stop::unreadable("--target-sensitivity must be in (0, 1]"));
    }
    let manifest_path = opts.model.clone().unwrap_or_else(|| cfg.model.clone());
    let cfg = &crate::infer::cli::batch_settings(cfg, opts.jobs, usize::MAX);
    let engine =
        tool_engine("evaluate", &manifest_path, cfg, opts.precision).map_err(Stop::unreadable)?;
    let threads = opts
        .jobs
        .unwrap_or_else(|| crate::infer::cli::default_jobs(&engine));
    let manifest = engine.manifest().clone();
    let set = match &opts.labels {
        Some(csv) => from_csv(&opts.dir, csv, &manifest),
        None => from_folders(&opts.dir, &manifest, &opts.negative),
    }
    .map_err(Stop::unreadable)?;
    for f in &set.not_counted.ignored_folders {
        eprintln!(
            "duli evaluate: {} names no finding of model {} and is not the negative folder {}: not read",
            f.display(),
            manifest.name,
            opts.negative
        );
    }
    eprintln!(
        "duli evaluate: scoring {} images with {} {} on {threads} threads",
        set.cases.len(),
        manifest.name,
        manifest.version
    );
    let cases = opts.gate.then(|| set.cases.clone());
    let started = Instant::now();
    let scored = score_all(&engine, set.cases, threads);
    let elapsed = started.elapsed();
    let id = engine.identity().clone();
    drop(engine);
    let mut report = build(
        model_info(&id),
        &manifest,
        &scored,
        &set.findings,
        set.not_counted,
        opts.target_sensitivity,
    );
    list_not_counted(&report);
    let mut status = 0;
    if let Some(cases) = cases {
        let gate = run_gate(
            opts,
            cfg,
            &manifest_path,
            &manifest,
            &id,
            cases,
            &scored,
            &set.findings,
            set.labels_sha256.as_deref(),
            threads,
            elapsed,
        )
        .map_err(|e| Stop::unreadable(format!("gate: {e}")))?;
        if let Some(g) = gate {
            if opts.json {
                eprint!("{}", super::gate::summary(&g));
            }
            if !g.passed {
                status = GATE_FAILED;
            }
            report.gate = Some(g);
        }
    }
    for (code, f) in &report.findings {
        if let Some(e) = &f.error {
            eprintln!("duli evaluate: {code}: {e}");
            status = status.max(1);
        }
    }
    if let Some(dir) = &opts.plot {
        match write_plots(dir, &report, &scored, &manifest) {
            Ok(files) => {
                for f in files {
                    eprintln!("duli evaluate: wrote {}", f.display());
                }
            }
            Err(e) => {
                eprintln!("duli evaluate: plots: {e}");
                status = status.max(1);
            }
        }
    }
    print_report(&report, opts.json)?;
    Ok(status)
}

/// The model as the report names it.
fn model_info(id: &crate::infer::engine::ModelIdentity) -> ModelInfo {
    ModelInfo {
        name: id.name.clone(),
        version: id.version.clone(),
        hash: id.sha256.clone(),
        network_sha256: id.network_sha256.clone(),
        weights_sha256: id.weights_sha256.clone(),
        precision: id.precision.to_string(),
        cpu_feature: id.cpu_feature.clone(),
        backend: id.backend.clone(),
    }
}

/// Lists on stderr the files that were not counted: unreadable, outside the model's
/// intended use, or not read (outside a label folder).
fn list_not_counted(report: &Report) {
    for i in &report.dataset.errors {
        eprintln!(
            "duli evaluate: unreadable, not counted: {}: {}",
            i.file.display(),
            i.reason
        );
    }
    for i in &report.dataset.not_applicable {
        eprintln!(
            "duli evaluate: not applicable, not counted: {}: {}",
            i.file.display(),
            i.reason
        );
    }
    for i in &report.dataset.not_read {
        eprintln!(
            "duli evaluate: not read, not counted: {}: {}",
            i.file.display(),
            i.reason
        );
    }
}

/// Prints the report on stdout, as JSON or as a table.
fn print_report(report: &Report, json: bool) -> Result<(), Stop> {
    let fail = |message: String| Stop { status: 1, message };
    let text = if json {
        serde_json::to_string_pretty(report).map_err(|e| fail(e.to_string()))? + "\n"
    } else {
        table(report)
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| fail(format!("cannot write the report: {e}")))
}
