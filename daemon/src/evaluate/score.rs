//! Every case of an acceptance set through the daemon's own decode path and the model, on
//! parallel threads (decode and preprocessing overlap the engine's infer requests), with
//! progress on stderr.

use super::dataset::Case;
use crate::infer::cli::score_file;
use crate::infer::Engine;
use crate::result::ImageStatus;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
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

fn outcome(engine: &Engine, file: &std::path::Path) -> Outcome {
    let (_, r) = score_file(engine, file);
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
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Outcome>>> = (0..total).map(|_| Mutex::new(None)).collect();
    let last_report = Mutex::new(Instant::now());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, total.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let o = outcome(engine, &case.file);
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(o);
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if let Ok(mut last) = last_report.lock() {
                    if n == total || last.elapsed() >= PROGRESS_EVERY {
                        *last = Instant::now();
                        progress(n, total, started.elapsed());
                    }
                }
            });
        }
    });
    cases
        .into_iter()
        .zip(slots)
        .map(|(case, slot)| ScoredCase {
            case,
            outcome: slot
                .into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Outcome::Error("not scored".into())),
        })
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
