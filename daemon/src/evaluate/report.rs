//! The evaluation report: per finding, AUC with its DeLong interval, the operating points
//! at the manifest threshold and at the target sensitivity, calibration and counts; as one
//! JSON object or as a table for people.

use super::delong::delong;
use super::metrics::{
    at_sensitivity, at_threshold, calibration, Calibration, OperatingPoint, Scored,
};
use super::score::{Outcome, ScoredCase};
use crate::infer::manifest::Manifest;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

/// The model evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// SHA-256 of the model's network file named by its manifest (verified at load).
    pub hash: String,
    /// SHA-256 of the network actually scored (the INT8 network at `int8`, else `hash`).
    pub network_sha256: String,
    /// SHA-256 of the weights of the network actually scored (verified at load; empty
    /// when the network has no separate weights file).
    pub weights_sha256: String,
    /// Inference precision the cases were scored at (f32, bf16, int8).
    pub precision: String,
    /// The CPU feature that decides that precision's results (`any` for f32).
    pub cpu_feature: String,
    /// Runtime and device.
    pub backend: String,
}

/// A file that was not scored, and why.
#[derive(Debug, Clone, Serialize)]
pub struct FileIssue {
    /// The file.
    pub file: PathBuf,
    /// Why.
    pub reason: String,
}

/// What was read.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    /// Image files found.
    pub images: usize,
    /// Images the model scored.
    pub scored: usize,
    /// Images outside the model's intended use (not counted in the figures).
    pub not_applicable: Vec<FileIssue>,
    /// Unreadable or undecodable files (not counted in the figures).
    pub errors: Vec<FileIssue>,
    /// Folders that name no finding of the model (not read).
    pub ignored_folders: Vec<PathBuf>,
}

/// Figures of one finding.
#[derive(Debug, Clone, Serialize)]
pub struct FindingReport {
    /// Display name.
    pub name: String,
    /// Cases with the finding.
    pub n_pos: usize,
    /// Cases without it.
    pub n_neg: usize,
    /// ROC AUC (`None` without positives or negatives).
    pub auc: Option<f64>,
    /// DeLong 95% confidence interval of the AUC.
    pub auc_ci: Option<[f64; 2]>,
    /// DeLong standard error of the AUC.
    pub auc_se: Option<f64>,
    /// At the manifest threshold.
    #[serde(flatten)]
    pub at_threshold: OperatingPoint,
    /// At the highest threshold reaching the target sensitivity.
    pub at_target_sensitivity: Option<OperatingPoint>,
    /// Calibration of the probabilities.
    pub calibration: Calibration,
    /// Why the figures are incomplete (no positives or no negatives).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The model.
    pub model: ModelInfo,
    /// The cases.
    pub dataset: DatasetInfo,
    /// The target sensitivity of `at_target_sensitivity`.
    pub target_sensitivity: f64,
    /// Per finding code.
    pub findings: BTreeMap<String, FindingReport>,
    /// The precision gate against f32 (`--gate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<crate::infer::gate::GateRecord>,
}

/// The labelled scores of finding `label` over the scored cases.
pub fn labelled_scores(scored: &[ScoredCase], label: usize) -> Vec<Scored> {
    scored
        .iter()
        .filter_map(|s| {
            let positive = *s.case.truth.get(&label)?;
            let Outcome::Scored(probs) = &s.outcome else {
                return None;
            };
            let probability = probs.iter().find(|(i, _)| *i == label)?.1;
            Some(Scored {
                probability,
                positive,
            })
        })
        .collect()
}

/// The probabilities of the positive cases and of the negative ones.
pub fn split_by_label(cases: &[Scored]) -> (Vec<f64>, Vec<f64>) {
    let (pos, neg): (Vec<&Scored>, Vec<&Scored>) = cases.iter().partition(|c| c.positive);
    let probabilities = |v: Vec<&Scored>| v.iter().map(|c| c.probability).collect();
    (probabilities(pos), probabilities(neg))
}

/// Figures of one finding from its labelled scores at `threshold`.
pub fn finding_report(name: &str, cases: &[Scored], threshold: f64, target: f64) -> FindingReport {
    let (pos, neg) = split_by_label(cases);
    let est = delong(&pos, &neg);
    let error = match (pos.is_empty(), neg.is_empty()) {
        (true, true) => Some("no scored images with a label for this finding".to_string()),
        (true, false) => Some("no positives: no readable image has this finding".to_string()),
        (false, true) => Some(
            "no negatives: add a folder of normal studies (NORMAL, or name it with --negative)"
                .to_string(),
        ),
        (false, false) => None,
    };
    FindingReport {
        name: name.to_string(),
        n_pos: pos.len(),
        n_neg: neg.len(),
        auc: est.map(|e| e.auc),
        auc_ci: est.map(|e| [e.lo, e.hi]),
        auc_se: est.map(|e| e.se),
        at_threshold: at_threshold(cases, threshold),
        at_target_sensitivity: at_sensitivity(cases, target),
        calibration: calibration(cases),
        error,
    }
}

/// The report over `scored` for the findings in `findings`.
pub fn build(
    model: ModelInfo,
    manifest: &Manifest,
    scored: &[ScoredCase],
    findings: &BTreeSet<usize>,
    ignored_folders: Vec<PathBuf>,
    target: f64,
) -> Report {
    let (errors, excluded) = super::score::failures(scored);
    let issue = |(file, reason)| FileIssue { file, reason };
    let dataset = DatasetInfo {
        images: scored.len(),
        scored: scored
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Scored(_)))
            .count(),
        not_applicable: excluded.into_iter().map(issue).collect(),
        errors: errors.into_iter().map(issue).collect(),
        ignored_folders,
    };
    let findings = findings
        .iter()
        .filter_map(|&i| {
            let label = manifest.labels.get(i)?;
            let cases = labelled_scores(scored, i);
            let r = finding_report(
                &label.name,
                &cases,
                f64::from(manifest.threshold(i)),
                target,
            );
            Some((label.code.clone(), r))
        })
        .collect();
    Report {
        model,
        dataset,
        target_sensitivity: target,
        findings,
        gate: None,
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// The report as a table for people.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.model;
    let short = m.hash.get(..12).unwrap_or(&m.hash);
    let _ = writeln!(
        s,
        "Model {} {} (sha256 {short}…), {}, precision {} (CPU feature {})",
        m.name, m.version, m.backend, m.precision, m.cpu_feature
    );
    let d = &r.dataset;
    let _ = writeln!(
        s,
        "Images: {} found, {} scored, {} not applicable, {} unreadable",
        d.images,
        d.scored,
        d.not_applicable.len(),
        d.errors.len()
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<16} {:>5} {:>5} {:>6}  {:<13} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "finding", "pos", "neg", "AUC", "95% CI", "threshold", "sens", "spec", "PPV", "NPV", "ECE"
    );
    let row = |s: &mut String, label: &str, f: &FindingReport, op: &OperatingPoint, first: bool| {
        let (auc, ci) = if first {
            (
                opt(f.auc),
                f.auc_ci
                    .map_or_else(|| "-".into(), |[lo, hi]| format!("{lo:.3}-{hi:.3}")),
            )
        } else {
            (String::new(), String::new())
        };
        let _ = writeln!(
            s,
            "{:<16} {:>5} {:>5} {:>6}  {:<13} {:>9.4} {:>6} {:>6} {:>6} {:>6} {:>6}",
            label,
            if first {
                f.n_pos.to_string()
            } else {
                String::new()
            },
            if first {
                f.n_neg.to_string()
            } else {
                String::new()
            },
            auc,
            ci,
            op.threshold,
            opt(op.sensitivity),
            opt(op.specificity),
            opt(op.ppv),
            opt(op.npv),
            if first {
                format!("{:.3}", f.calibration.ece)
            } else {
                String::new()
            },
        );
    };
    for (code, f) in &r.findings {
        row(&mut s, &f.name, f, &f.at_threshold, true);
        if let Some(op) = &f.at_target_sensitivity {
            let label = format!("  at sens>={}", r.target_sensitivity);
            row(&mut s, &label, f, op, false);
        }
        if let Some(e) = &f.error {
            let _ = writeln!(s, "  {code}: {e}");
        }
    }
    for (code, f) in &r.findings {
        let _ = writeln!(s, "\nReliability of {} ({code}):", f.name);
        let _ = writeln!(
            s,
            "  {:<11} {:>5} {:>10} {:>9}",
            "bin", "n", "predicted", "observed"
        );
        for b in f.calibration.bins.iter().filter(|b| b.n > 0) {
            let _ = writeln!(
                s,
                "  {:.1}-{:.1}     {:>5} {:>10} {:>9}",
                b.lo,
                b.hi,
                b.n,
                opt(b.mean_predicted),
                opt(b.observed)
            );
        }
    }
    for (title, list) in [
        ("Not applicable (not counted)", &d.not_applicable),
        ("Unreadable (not counted)", &d.errors),
    ] {
        if !list.is_empty() {
            let _ = writeln!(s, "\n{title}:");
            for i in list {
                let _ = writeln!(s, "  {}: {}", i.file.display(), i.reason);
            }
        }
    }
    if !d.ignored_folders.is_empty() {
        let _ = writeln!(s, "\nFolders naming no finding of the model (not read):");
        for f in &d.ignored_folders {
            let _ = writeln!(s, "  {}", f.display());
        }
    }
    if let Some(g) = &r.gate {
        let _ = write!(s, "\n{}", super::gate::summary(g));
    }
    s
}
