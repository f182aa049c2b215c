//! `duli infer` and `duli evaluate`: the pipeline on files, and the acceptance test on
//! labelled cases.

use super::load_config;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// `duli infer`.
#[derive(Args)]
pub struct InferArgs {
    /// Model manifest (default: inference.model of the configuration).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// f32, bf16, int8 or auto (default: inference.precision of the configuration).
    /// A fixed precision runs even without a passed gate, with a warning.
    #[arg(long)]
    pub precision: Option<duli::infer::precision::PrecisionSetting>,
    /// Make each analysed file's heatmap as the manifest says (class activation or
    /// occlusion) and report its time as timings_ms.heatmap.
    #[arg(long)]
    pub heatmap: bool,
    /// Write the heatmaps as PNG files into this folder (with --heatmap).
    #[arg(long, requires = "heatmap")]
    pub heatmap_dir: Option<PathBuf>,
    /// Files scored at a time (default: as many as the model's requests take at once plus
    /// one per CPU); one at a time with --heatmap.
    /// With more than one the model is compiled for throughput (several infer
    /// requests; INT8 takes up to 4 images per call), else as
    /// inference.performance_hint says; the results are the same to the bit.
    /// Lines come out in the order of the files either way.
    #[arg(short = 'j', long)]
    pub jobs: Option<usize>,
    /// Files to analyse.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Configuration file ([inference] section).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs the pipeline on the files, one JSON line each ([`duli::infer::infer_files_cli`]).
pub fn infer(args: InferArgs) -> Result<ExitCode> {
    let cfg = load_config(args.config.as_deref())?;
    let heatmaps = duli::infer::cli::HeatmapOptions {
        enabled: args.heatmap,
        dir: args.heatmap_dir,
    };
    let code = duli::infer::infer_files_cli(
        args.model.as_deref(),
        &args.files,
        &cfg.inference,
        args.precision,
        &heatmaps,
        args.jobs,
    );
    Ok(exit_code(code))
}

/// Runs the acceptance test ([`duli::evaluate::evaluate_cli`]).
pub fn evaluate(
    opts: &duli::evaluate::EvaluateOptions,
    config: Option<PathBuf>,
) -> Result<ExitCode> {
    let cfg = load_config(config.as_deref())?;
    Ok(exit_code(duli::evaluate::evaluate_cli(
        opts,
        &cfg.inference,
    )))
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
