//! Every case of an acceptance set through the daemon's own decode path and the model, on
//! parallel threads (decode and preprocessing overlap the engine's infer requests), with
//! progress on stderr.

use super::dataset::Case;
use crate::infer::cli::score_in_order;
use crate::infer::Engine;
use crate::result::{ImageResult, ImageStatus};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often progress is written to stderr at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What the model gave for one case.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Probability per model label index (background labels absent).
    Scored(Vec<(usize, f64)>),
    /// Outside the model's intended use, with the reason.
    NotApplicable(String),
    /// Unreadable or undecodable, with the reason.
    Error(String),
}

/// A case with its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredCase {
    /// The case.
    pub case: Case,
    /// What the model gave.
    pub outcome: Outcome,
}

fn outcome(engine: &Engine, r: ImageResult) -> Outcome {
    match r.status {
        ImageStatus::Analysed => Outcome::Scored(
            r.findings
                .iter()
                .filter_map(|f| {
                    engine
                        .manifest()
                        .labels
                        .iter()
                        .position(|l| l.code == f.code)
                        .map(|i| (i, f64::from(f.probability)))
                })
                .collect(),
        ),
        ImageStatus::NotApplicable => {
            Outcome::NotApplicable(r.reason.unwrap_or_else(|| "not applicable".into()))
        }
        ImageStatus::Error => Outcome::Error(r.reason.unwrap_or_else(|| "error".into())),
    }
}

/// Scores `cases` on `threads` threads (at least one), keeping their order.
pub fn score_all(engine: &Engine, cases: Vec<Case>, threads: usize) -> Vec<ScoredCase> {
    let total = cases.len();
    let files: Vec<PathBuf> = cases.iter().map(|c| c.file.clone()).collect();
    let mut outcomes = Vec::with_capacity(total);
    let mut last_report = Instant::now();
    let started = Instant::now();
    // Every file is handed over (the closure never refuses one), in the order of `cases`.
    score_in_order(engine, &files, threads, |_, _, r| {
        outcomes.push(outcome(engine, r));
        let n = outcomes.len();
        if n == total || last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            progress(n, total, started.elapsed());
        }
        true
    });
    cases
        .into_iter()
        .zip(outcomes)
        .map(|(case, outcome)| ScoredCase { case, outcome })
        .collect()
}

fn progress(done: usize, total: usize, elapsed: Duration) {
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    let _ = writeln!(
        std::io::stderr(),
        "duli evaluate: {done}/{total} images scored ({rate:.1} images/s)"
    );
}

/// Files with the reason they were not scored.
pub type Unscored = Vec<(PathBuf, String)>;

/// The cases that could not be scored (errors, then not applicable), for the report.
pub fn failures(scored: &[ScoredCase]) -> (Unscored, Unscored) {
    let mut errors = Vec::new();
    let mut excluded = Vec::new();
    for s in scored {
        match &s.outcome {
            Outcome::Error(r) => errors.push((s.case.file.clone(), r.clone())),
            Outcome::NotApplicable(r) => excluded.push((s.case.file.clone(), r.clone())),
            Outcome::Scored(_) => {}
        }
    }
    (errors, excluded)
}
