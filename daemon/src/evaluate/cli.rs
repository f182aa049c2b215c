//! `duli evaluate DIR`: the acceptance test of a model on a site's own labelled cases.

use super::dataset::{from_csv, from_folders};
use super::plot::{write_plot, Plot};
use super::report::{build, labelled_scores, table, ModelInfo, Report};
use super::score::score_all;
use crate::config::InferenceConfig;
use crate::infer::Engine;
use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// Decode threads (default: one per CPU).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
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

fn write_plots(
    dir: &Path,
    report: &Report,
    scored: &[super::score::ScoredCase],
    manifest: &crate::infer::Manifest,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
        files.extend(
            write_plot(
                dir,
                &format!("roc-{s}"),
                &format!("ROC: {}", f.name),
                Plot::Roc { points: &roc, auc },
            )
            .map_err(|e| e.to_string())?,
        );
        files.extend(
            write_plot(
                dir,
                &format!("reliability-{s}"),
                &format!("Reliability: {}", f.name),
                Plot::Reliability(&f.calibration),
            )
            .map_err(|e| e.to_string())?,
        );
    }
    Ok(files)
}

/// Runs the evaluation and prints the report. Exit status: 0 when every finding has
/// figures (unreadable files are listed, not fatal), 1 when a finding has no positives or
/// no negatives or a plot cannot be written, 2 when the model, the folder or the labels
/// cannot be read.
pub fn evaluate_cli(opts: &EvaluateOptions, cfg: &InferenceConfig) -> i32 {
    if !(opts.target_sensitivity > 0.0 && opts.target_sensitivity <= 1.0) {
        eprintln!("duli evaluate: --target-sensitivity must be in (0, 1]");
        return 2;
    }
    let manifest_path = opts.model.clone().unwrap_or_else(|| cfg.model.clone());
    let engine = match Engine::from_manifest_path(&manifest_path, cfg) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("duli evaluate: {e}");
            return 2;
        }
    };
    let manifest = engine.manifest().clone();
    let set = match &opts.labels {
        Some(csv) => from_csv(&opts.dir, csv, &manifest),
        None => from_folders(&opts.dir, &manifest, &opts.negative),
    };
    let set = match set {
        Ok(s) => s,
        Err(e) => {
            eprintln!("duli evaluate: {e}");
            return 2;
        }
    };
    for f in &set.ignored_folders {
        eprintln!(
            "duli evaluate: {} names no finding of model {} and is not the negative folder {}: not read",
            f.display(),
            manifest.name,
            opts.negative
        );
    }
    let threads = opts.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    });
    eprintln!(
        "duli evaluate: scoring {} images with {} {} on {threads} threads",
        set.cases.len(),
        manifest.name,
        manifest.version
    );
    let scored = score_all(&engine, set.cases, threads);
    let id = engine.identity();
    let model = ModelInfo {
        name: id.name.clone(),
        version: id.version.clone(),
        hash: id.sha256.clone(),
        precision: "default".into(),
        backend: id.backend.clone(),
    };
    let report = build(
        model,
        &manifest,
        &scored,
        &set.findings,
        set.ignored_folders,
        opts.target_sensitivity,
    );
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
    let mut status = 0;
    for (code, f) in &report.findings {
        if let Some(e) = &f.error {
            eprintln!("duli evaluate: {code}: {e}");
            status = 1;
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
                status = 1;
            }
        }
    }
    let text = if opts.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => j + "\n",
            Err(e) => {
                eprintln!("duli evaluate: {e}");
                return 1;
            }
        }
    } else {
        table(&report)
    };
    if std::io::stdout().lock().write_all(text.as_bytes()).is_err() {
        return 1;
    }
    status
}
