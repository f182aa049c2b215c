//! `duli evaluate --precision P --gate`: the same labelled set scored at f32 and at P,
//! compared case by case. P passes when the set holds every finding of the manifest with
//! at least [`MIN_CASES`] positives and [`MIN_CASES`] negatives each, no finding's AUC is
//! below f32's and no decision at the manifest threshold flips; the record (see
//! [`crate::infer::gate`]) says so with the AUCs, the cases counted, the largest and
//! 99th-percentile probability shifts and the flips, and binds the network's `.xml` and
//! weights and each finding's threshold.

use super::delong::delong;
use super::report::{labelled_scores, split_by_label};
use super::score::{Outcome, ScoredCase};
use crate::infer::gate::{
    weights_sha256, DatasetId, FindingGate, GateRecord, MsPerImage, MIN_CASES,
};
use crate::infer::manifest::Manifest;
use crate::infer::precision::Precision;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What identifies the run being gated.
#[derive(Debug, Clone)]
pub struct GateRun<'a> {
    /// The manifest (labels, thresholds).
    pub manifest: &'a Manifest,
    /// Precision gated.
    pub precision: Precision,
    /// Its CPU feature.
    pub cpu_feature: String,
    /// SHA-256 of the network run at `precision`.
    pub network_sha256: String,
    /// The labelled set's folder.
    pub dir: &'a Path,
    /// Milliseconds per image at f32 and at `precision`.
    pub ms_per_image: MsPerImage,
    /// When (RFC 3339).
    pub date: String,
}

fn auc(scored: &[ScoredCase], label: usize) -> Option<f64> {
    let (pos, neg) = split_by_label(&labelled_scores(scored, label));
    delong(&pos, &neg).map(|e| e.auc)
}

fn probability(outcome: &Outcome, label: usize) -> Option<f64> {
    match outcome {
        Outcome::Scored(p) => p.iter().find(|(i, _)| *i == label).map(|(_, v)| *v),
        Outcome::NotApplicable(_) | Outcome::Error(_) => None,
    }
}

/// The value at quantile `q` (nearest rank) of `v` sorted ascending.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Compares `reference` (f32) and `gated` (the same cases, in the same order, at
/// `run.precision`) over `findings` (the manifest's findings the set has cases of; one
/// the set lacks fails the gate). The record binds the weights of the network run at
/// `run.precision`: the manifest's for bf16, the INT8 build's (found as the engine found
/// it, see [`crate::infer::gate::network`]) for int8.
pub fn compare(
    run: &GateRun<'_>,
    reference: &[ScoredCase],
    gated: &[ScoredCase],
    findings: &BTreeSet<usize>,
    dataset_sha256: String,
) -> GateRecord {
    let mut shifts = Vec::new();
    let mut per = BTreeMap::new();
    let mut reasons = Vec::new();
    let both = scored_by_both(reference, gated, &mut reasons);
    let weights = gated_weights(run, &mut reasons);
    for (i, label) in run.manifest.labels.iter().enumerate() {
        if !label.background && !findings.contains(&i) {
            reasons.push(format!(
                "{}: the set has no cases of this finding (a gate covers every finding of the model)",
                label.code
            ));
        }
    }
    for &i in findings {
        let Some(label) = run.manifest.labels.get(i) else {
            continue;
        };
        let threshold = f64::from(run.manifest.threshold(i));
        let gate = finding_gate(reference, gated, i, threshold, &mut shifts);
        reasons.extend(failures(&gate, &label.code));
        per.insert(label.code.clone(), gate);
    }
    shifts.sort_by(f64::total_cmp);
    let flipped = per.values().map(|f| f.flipped).sum();
    GateRecord {
        precision: run.precision,
        cpu_feature: run.cpu_feature.clone(),
        date: run.date.clone(),
        model: format!("{} {}", run.manifest.name, run.manifest.version),
        network_sha256: run.network_sha256.to_ascii_lowercase(),
        weights_sha256: weights,
        reference_sha256: run.manifest.file.sha256.to_ascii_lowercase(),
        reference_weights_sha256: weights_sha256(run.manifest),
        dataset: DatasetId {
            dir: run.dir.to_path_buf(),
            images: both,
            sha256: dataset_sha256,
        },
        findings: per,
        max_shift: shifts.last().copied().unwrap_or(0.0),
        p99_shift: quantile(&shifts, 0.99),
        flipped,
        ms_per_image: run.ms_per_image,
        passed: reasons.is_empty(),
        reasons,
    }
}

/// The cases scored at both precisions; a case scored at one only is a reason to fail.
fn scored_by_both(
    reference: &[ScoredCase],
    gated: &[ScoredCase],
    reasons: &mut Vec<String>,
) -> usize {
    let mut both = 0;
    for (r, g) in reference.iter().zip(gated) {
        if matches!(r.outcome, Outcome::Scored(_)) && matches!(g.outcome, Outcome::Scored(_)) {
            both += 1;
        } else if std::mem::discriminant(&r.outcome) != std::mem::discriminant(&g.outcome) {
            reasons.push(format!(
                "{}: scored at one precision only",
                r.case.file.display()
            ));
        }
    }
    both
}

/// The SHA-256 of the weights of the network scored at `run.precision`; empty, with a
/// reason to fail, when that network changed during the gate or cannot be named.
fn gated_weights(run: &GateRun<'_>, reasons: &mut Vec<String>) -> String {
    match crate::infer::gate::network(run.manifest, run.precision) {
        Ok(net) if net.sha256.eq_ignore_ascii_case(&run.network_sha256) => {
            weights_sha256(&net.manifest)
        }
        Ok(net) => {
            reasons.push(format!(
                "the network changed during the gate (SHA-256 {} scored, {} now)",
                run.network_sha256, net.sha256
            ));
            String::new()
        }
        Err(e) => {
            reasons.push(format!("the network scored cannot be named: {e}"));
            String::new()
        }
    }
}

/// The gate of finding `i` at `threshold`: AUC at both precisions, decisions flipped and
/// the largest shift (per image: each image's decision must hold), and the labelled cases
/// counted as the AUCs count them (a study of several DICOM files is one case, scored at
/// both precisions); each probability shift is added to `shifts`.
fn finding_gate(
    reference: &[ScoredCase],
    gated: &[ScoredCase],
    i: usize,
    threshold: f64,
    shifts: &mut Vec<f64>,
) -> FindingGate {
    let mut flipped = 0;
    let mut max_shift = 0f64;
    for (r, g) in reference.iter().zip(gated) {
        let (Some(pr), Some(pg)) = (probability(&r.outcome, i), probability(&g.outcome, i)) else {
            continue;
        };
        let d = (pg - pr).abs();
        shifts.push(d);
        max_shift = max_shift.max(d);
        if (pr >= threshold) != (pg >= threshold) {
            flipped += 1;
        }
    }
    // The cases of the files scored at both precisions.
    let both: Vec<ScoredCase> = reference
        .iter()
        .zip(gated)
        .filter(|(r, g)| {
            probability(&r.outcome, i).is_some() && probability(&g.outcome, i).is_some()
        })
        .map(|(r, _)| r.clone())
        .collect();
    let (pos, neg) = split_by_label(&labelled_scores(&both, i));
    let (positives, negatives) = (pos.len(), neg.len());
    FindingGate {
        auc_f32: auc(reference, i),
        auc: auc(gated, i),
        threshold,
        flipped,
        max_shift,
        positives,
        negatives,
    }
}

/// Why finding `code` fails the gate: too few labelled cases, an AUC below f32's or
/// none, decisions flipped.
fn failures(gate: &FindingGate, code: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    let (positives, negatives) = (gate.positives, gate.negatives);
    if positives < MIN_CASES || negatives < MIN_CASES {
        reasons.push(format!(
            "{code}: {positives} positive(s) and {negatives} negative(s) scored, a gate needs at least {MIN_CASES} of each"
        ));
    }
    match (gate.auc_f32, gate.auc) {
        (Some(a), Some(b)) if b < a => {
            reasons.push(format!("{code}: AUC {b:.4} below f32's {a:.4}"))
        }
        (Some(_), Some(_)) => {}
        _ => reasons.push(format!(
            "{code}: no AUC (the set needs positives and negatives)"
        )),
    }
    if gate.flipped > 0 {
        reasons.push(format!(
            "{code}: {} decision(s) flipped at threshold {}",
            gate.flipped, gate.threshold
        ));
    }
    reasons
}

/// SHA-256 over the scored cases, in sorted order: each file's name (relative to `dir`), a
/// NUL, and the SHA-256 of its contents ([`crate::infer::manifest::sha256_file`], the one
/// file-hashing helper); then, when the labels came from a CSV, a NUL, `labels`, a NUL and
/// the CSV's SHA-256 (`labels_sha256`). Files that were not scored (unreadable, not
/// applicable) are listed in the report and are not part of the set measured.
pub fn dataset_digest(
    dir: &Path,
    cases: &[ScoredCase],
    labels_sha256: Option<&str>,
) -> std::io::Result<String> {
    let mut files: Vec<&Path> = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Scored(_)))
        .map(|c| c.case.file.as_path())
        .collect();
    files.sort();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for f in files {
        let name = f.strip_prefix(dir).unwrap_or(f);
        ctx.update(name.to_string_lossy().as_bytes());
        ctx.update(&[0]);
        ctx.update(crate::infer::manifest::sha256_file(f)?.as_bytes());
    }
    if let Some(labels) = labels_sha256 {
        // A file's name never starts with NUL: the labels cannot be taken for a file.
        ctx.update(b"\0labels\0");
        ctx.update(labels.as_bytes());
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

/// The gate as lines for people.
pub fn summary(g: &GateRecord) -> String {
    let mut s = format!(
        "Gate {} on {} ({}): {}\n",
        g.precision,
        g.cpu_feature,
        g.date,
        if g.passed { "PASSED" } else { "FAILED" }
    );
    for (code, f) in &g.findings {
        let a = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.4}"));
        s.push_str(&format!(
            "  {code}: AUC {} vs f32 {}, {} flipped at {}, max |dp| {:.4} ({} positive, {} negative)\n",
            a(f.auc),
            a(f.auc_f32),
            f.flipped,
            f.threshold,
            f.max_shift,
            f.positives,
            f.negatives
        ));
    }
    s.push_str(&format!(
        "  over {} images: max |dp| {:.4}, p99 |dp| {:.4}; {:.1} ms per image vs {:.1} at f32\n",
        g.dataset.images, g.max_shift, g.p99_shift, g.ms_per_image.gated, g.ms_per_image.f32
    ));
    for r in &g.reasons {
        s.push_str(&format!("  fails: {r}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::dataset::Case;

    /// The digest names the set: the same files in any order give it, another content or
    /// another name does not.
    #[test]
    fn the_dataset_digest_follows_names_and_contents_not_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for (name, body) in [("NORMAL/a.png", "a"), ("PNEUMONIA/b.png", "b")] {
            std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
            std::fs::write(dir.join(name), body).unwrap();
        }
        let at = |name: &str| case(dir.join(name).to_str().unwrap(), true, 0.5);
        let digest = |cases: &[ScoredCase]| dataset_digest(dir, cases, None).unwrap();
        let ab = digest(&[at("NORMAL/a.png"), at("PNEUMONIA/b.png")]);
        assert_eq!(ab.len(), 64);
        assert_eq!(ab, digest(&[at("PNEUMONIA/b.png"), at("NORMAL/a.png")]));
        std::fs::write(dir.join("PNEUMONIA/b.png"), "B").unwrap();
        assert_ne!(ab, digest(&[at("NORMAL/a.png"), at("PNEUMONIA/b.png")]));
        std::fs::write(dir.join("PNEUMONIA/b.png"), "b").unwrap();
        std::fs::rename(dir.join("PNEUMONIA/b.png"), dir.join("NORMAL/b.png")).unwrap();
        assert_ne!(ab, digest(&[at("NORMAL/a.png"), at("NORMAL/b.png")]));
    }

    /// A file that could not be read is listed in the report, not part of the set the
    /// figures measure: it is not hashed (reading it for the digest failed the gate after
    /// the scoring), and the digest is that of the scored files alone. The labels CSV is
    /// part of the set: other labels give another digest.
    #[test]
    fn the_dataset_digest_covers_scored_files_and_the_labels() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("NORMAL")).unwrap();
        std::fs::write(dir.join("NORMAL/a.png"), "a").unwrap();
        let a = case(dir.join("NORMAL/a.png").to_str().unwrap(), false, 0.1);
        let mut gone = case(dir.join("NORMAL/gone.png").to_str().unwrap(), false, 0.1);
        gone.outcome = Outcome::Error("No such file or directory".into());
        let alone = dataset_digest(dir, std::slice::from_ref(&a), None).unwrap();
        let with_gone = dataset_digest(dir, &[a.clone(), gone.clone()], None);
        assert_eq!(with_gone.unwrap(), alone);
        let mut not_applicable = gone;
        not_applicable.outcome = Outcome::NotApplicable("adult".into());
        let with_na = dataset_digest(dir, &[a.clone(), not_applicable], None).unwrap();
        assert_eq!(with_na, alone);
        let labels = |sha: &str| dataset_digest(dir, std::slice::from_ref(&a), Some(sha)).unwrap();
        let one = labels(&"1".repeat(64));
        assert_ne!(one, alone);
        assert_ne!(one, labels(&"2".repeat(64)));
        assert_eq!(one, labels(&"1".repeat(64)));
    }

    fn case(name: &str, positive: bool, p: f64) -> ScoredCase {
        ScoredCase {
            case: Case {
                file: name.into(),
                truth: [(1, positive)].into_iter().collect(),
            },
            outcome: Outcome::Scored(vec![(1, p)]),
        }
    }

    fn manifest() -> Manifest {
        let path = crate::infer::testdata::repo_root().join("models/pneumonia-xception/model.toml");
        Manifest::load(&path).unwrap()
    }

    fn run(m: &Manifest) -> GateRun<'_> {
        GateRun {
            manifest: m,
            precision: Precision::Bf16,
            cpu_feature: "amx-bf16".into(),
            network_sha256: m.file.sha256.clone(),
            dir: Path::new("/set"),
            ms_per_image: MsPerImage {
                f32: 20.0,
                gated: 8.0,
            },
            date: "2026-12-03T00:00:00Z".into(),
        }
    }

    /// `n` cases of each class at f32: positives from 0.9 down, negatives from 0.1 up.
    fn balanced(n: usize) -> Vec<ScoredCase> {
        (0..n)
            .flat_map(|k| {
                let d = k as f64 * 0.01;
                [
                    case(&format!("p{k}"), true, 0.9 - d),
                    case(&format!("n{k}"), false, 0.1 + d),
                ]
            })
            .collect()
    }

    #[test]
    fn a_flip_or_a_lower_auc_fails_and_small_shifts_pass() {
        let m = manifest();
        let run = run(&m);
        let findings: BTreeSet<usize> = [1].into_iter().collect();
        let mut f32 = balanced(5);
        f32.extend([case("b", true, 0.52), case("d", false, 0.6)]);
        // Every case 0.01 up, but b and d close to the threshold by 0.02.
        let close: Vec<ScoredCase> = f32
            .iter()
            .map(|c| {
                let Outcome::Scored(p) = &c.outcome else {
                    unreachable!()
                };
                let shift = if c.case.file == Path::new("d") {
                    -0.02
                } else {
                    0.01
                };
                case(
                    c.case.file.to_str().unwrap(),
                    c.case.truth[&1],
                    p[0].1 + shift,
                )
            })
            .collect();
        let g = compare(&run, &f32, &close, &findings, "x".into());
        assert!(g.passed, "{:?}", g.reasons);
        assert_eq!(g.flipped, 0);
        assert!((g.max_shift - 0.02).abs() < 1e-9);
        assert!((g.p99_shift - 0.02).abs() < 1e-9);
        assert_eq!(g.findings["PNEUMONIA"].auc, g.findings["PNEUMONIA"].auc_f32);
        assert_eq!(g.findings["PNEUMONIA"].positives, 6);
        assert_eq!(g.findings["PNEUMONIA"].negatives, 6);
        // The record binds the weights and the threshold it was run with.
        assert_eq!(Some(&g.weights_sha256), m.file.weights_sha256.as_ref());
        assert_eq!(
            Some(&g.reference_weights_sha256),
            m.file.weights_sha256.as_ref()
        );
        assert_eq!(g.findings["PNEUMONIA"].threshold, 0.5);

        // b drops below the threshold: one flip, and the AUC falls under f32's.
        let mut flip = f32.clone();
        flip[10] = case("b", true, 0.05);
        let g = compare(&run, &f32, &flip, &findings, "x".into());
        assert!(!g.passed);
        assert_eq!(g.flipped, 1);
        assert!(g.findings["PNEUMONIA"].auc < g.findings["PNEUMONIA"].auc_f32);
        assert_eq!(g.reasons.len(), 2, "{:?}", g.reasons);
        assert!(summary(&g).contains("FAILED"));
    }

    /// Two images (one of each) with nothing moved do not pass: a gate needs at least
    /// five positives and five negatives of every finding.
    #[test]
    fn a_gate_on_too_few_cases_does_not_pass() {
        let m = manifest();
        let findings: BTreeSet<usize> = [1].into_iter().collect();
        let two = vec![case("a", true, 0.9), case("c", false, 0.2)];
        let g = compare(&run(&m), &two, &two, &findings, "x".into());
        assert!(!g.passed, "{g:?}");
        assert_eq!(g.flipped, 0);
        assert!(
            g.reasons.iter().any(|r| r.contains("at least 5")),
            "{:?}",
            g.reasons
        );
        assert!(summary(&g).contains("FAILED"));
        // Four of each: still too few; five of each pass.
        let four = balanced(4);
        assert!(!compare(&run(&m), &four, &four, &findings, "x".into()).passed);
        let five = balanced(5);
        let g = compare(&run(&m), &five, &five, &findings, "x".into());
        assert!(g.passed, "{:?}", g.reasons);
    }

    /// The count is of cases, as the AUCs are: five DICOM images of one positive study and
    /// five of one negative study are one case each, too few for a gate; five studies of
    /// each pass.
    #[test]
    fn a_gate_counts_studies_not_images() {
        use crate::evaluate::report::tests::dicom;
        let m = manifest();
        let findings: BTreeSet<usize> = [1].into_iter().collect();
        let dir = tempfile::tempdir().unwrap();
        let image = |label: &str, study: usize, k: usize, positive: bool| {
            let path = dir.path().join(format!("{label}/{study}-{k}.dcm"));
            let study_uid = format!("1.2.3.{}.{study}", u8::from(positive));
            dicom(&path, &study_uid, &format!("{study_uid}.{k}"));
            let p = if positive { 0.9 } else { 0.1 } - k as f64 * 0.01;
            case(path.to_str().unwrap(), positive, p)
        };
        let one_study_each: Vec<ScoredCase> = (0..5)
            .flat_map(|k| [image("PNEUMONIA", 0, k, true), image("NORMAL", 0, k, false)])
            .collect();
        let g = compare(
            &run(&m),
            &one_study_each,
            &one_study_each,
            &findings,
            "x".into(),
        );
        assert!(!g.passed, "{g:?}");
        assert_eq!(
            (
                g.findings["PNEUMONIA"].positives,
                g.findings["PNEUMONIA"].negatives
            ),
            (1, 1)
        );
        assert!(
            g.reasons.iter().any(|r| r.contains("at least 5")),
            "{:?}",
            g.reasons
        );
        let five_studies_each: Vec<ScoredCase> = (0..5)
            .flat_map(|s| [image("PNEUMONIA", s, 0, true), image("NORMAL", s, 0, false)])
            .collect();
        let g = compare(
            &run(&m),
            &five_studies_each,
            &five_studies_each,
            &findings,
            "x".into(),
        );
        assert!(g.passed, "{:?}", g.reasons);
        assert_eq!(
            (
                g.findings["PNEUMONIA"].positives,
                g.findings["PNEUMONIA"].negatives
            ),
            (5, 5)
        );
    }

    /// A set without cases of one of the model's findings gates only part of what the
    /// precision changes: it does not pass.
    #[test]
    fn a_gate_that_misses_a_finding_of_the_model_does_not_pass() {
        let mut m = manifest();
        let mut other = m.labels[1].clone();
        other.code = "EFFUSION".into();
        other.name = "Effusion".into();
        other.standard = None;
        m.labels.push(other);
        let findings: BTreeSet<usize> = [1].into_iter().collect();
        let set = balanced(8);
        let g = compare(&run(&m), &set, &set, &findings, "x".into());
        assert!(!g.passed, "{g:?}");
        assert!(
            g.reasons.iter().any(|r| r.starts_with("EFFUSION:")),
            "{:?}",
            g.reasons
        );
    }

    #[test]
    fn quantile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.99), 0.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
    }
}
