//! The evaluation report: per finding, AUC with its DeLong interval, the operating points
//! at the manifest threshold and at the target sensitivity, calibration and counts; as one
//! JSON object or as a table for people.
//!
//! A case is what the daemon reports on: the DICOM files of one study (one Study Instance
//! UID) are one case, scored per finding by the highest probability over its images, as
//! the daemon's study-level finding is; a PNG or JPEG file is one case.

use super::dataset::NotCounted;
use super::delong::{delong, IntervalMethod};
use super::metrics::{
    at_sensitivity, at_threshold, calibration, Calibration, OperatingPoint, Scored,
};
use super::score::{Outcome, ScoredCase};
use crate::infer::manifest::Manifest;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Image files found (with the entries of label folders that cannot be read as files).
    pub images: usize,
    /// Image files the model scored.
    pub scored: usize,
    /// Cases the files make: one per DICOM study, one per PNG or JPEG file (and one per
    /// entry that cannot be read as a file).
    pub cases: usize,
    /// Cases with at least one file scored: the ones counted in the figures.
    pub cases_scored: usize,
    /// Images outside the model's intended use (not counted in the figures).
    pub not_applicable: Vec<FileIssue>,
    /// Unreadable or undecodable files, broken links among them (not counted in the
    /// figures).
    pub errors: Vec<FileIssue>,
    /// Folders that name no finding of the model (not read).
    pub ignored_folders: Vec<PathBuf>,
    /// Other entries not read, with why (a file directly in the set's folder, a folder
    /// too deep).
    pub not_read: Vec<FileIssue>,
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
    /// 95% confidence interval of the AUC: DeLong's on the logit scale, with a bound held at
    /// the exact conservative bound of perfect separation when it would be surer, or at
    /// perfect separation that bound (both said in `auc_ci_note`); `null` when none can be
    /// given (a class with
    /// fewer than two cases, tied scores), which an acceptance criterion on it must treat
    /// as not met.
    pub auc_ci: Option<[f64; 2]>,
    /// DeLong standard error of the AUC (`null` without a DeLong interval).
    pub auc_se: Option<f64>,
    /// Why `auc_ci` is `null`, or how it was obtained when it is not DeLong's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auc_ci_note: Option<String>,
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

/// The cases of `scored` files, in the order of their first file: the DICOM files of one
/// study together ([`super::dataset::study_of`]), every other file alone.
pub fn cases(scored: &[ScoredCase]) -> Vec<Vec<&ScoredCase>> {
    let mut out: Vec<Vec<&ScoredCase>> = Vec::new();
    let mut by_study: HashMap<String, usize> = HashMap::new();
    for s in scored {
        match super::dataset::study_of(&s.case.file) {
            Some(study) => match by_study.get(&study) {
                Some(&k) => out[k].push(s),
                None => {
                    by_study.insert(study, out.len());
                    out.push(vec![s]);
                }
            },
            None => out.push(vec![s]),
        }
    }
    out
}

/// The labelled score of finding `label` of one case: the highest probability over its
/// scored files, as the daemon's study-level finding; `None` when no file of it was
/// scored or its reference for `label` is unknown (or, which the data set refuses,
/// contradictory).
fn case_score(files: &[&ScoredCase], label: usize) -> Option<Scored> {
    let mut truth = None;
    for f in files {
        match (truth, f.case.truth.get(&label)) {
            (_, None) => {}
            (None, Some(&t)) => truth = Some(t),
            (Some(a), Some(&b)) if a != b => return None,
            (Some(_), Some(_)) => {}
        }
    }
    let positive = truth?;
    let probability = files
        .iter()
        .filter_map(|f| match &f.outcome {
            Outcome::Scored(probs) => probs.iter().find(|(i, _)| *i == label).map(|p| p.1),
            Outcome::NotApplicable(_) | Outcome::Error(_) => None,
        })
        .reduce(f64::max)?;
    Some(Scored {
        probability,
        positive,
    })
}

/// The labelled scores of finding `label` over the cases of the scored files, one per
/// case ([`cases`]).
pub fn labelled_scores(scored: &[ScoredCase], label: usize) -> Vec<Scored> {
    labelled_case_scores(&cases(scored), label)
}

fn labelled_case_scores(cases: &[Vec<&ScoredCase>], label: usize) -> Vec<Scored> {
    cases.iter().filter_map(|c| case_score(c, label)).collect()
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
    let interval = est.map(|e| e.interval);
    let auc_ci_note = match interval {
        Some(Err(why)) => Some(why.to_string()),
        Some(Ok(i)) if i.method == IntervalMethod::Separation => Some(
            "perfect separation, where the DeLong variance is zero: the interval is the exact \
             conservative bound 0.025^(1/k), k the smaller of the positives and negatives"
                .to_string(),
        ),
        Some(Ok(i)) if i.method == IntervalMethod::DeLongHeld => Some(
            "near perfect separation: the DeLong interval on the logit scale would be surer \
             than perfect separation of the same counts, so its bound is held at that exact \
             conservative bound (0.025^(1/k), k the smaller of the positives and negatives); \
             it is not recomputed from auc_se"
                .to_string(),
        ),
        _ => None,
    };
    let error = match (pos.is_empty(), neg.is_empty()) {
        (true, true) => Some("no scored cases with a label for this finding".to_string()),
        (true, false) => Some("no positives: no readable case has this finding".to_string()),
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
        auc_ci: interval.and_then(Result::ok).map(|i| [i.lo, i.hi]),
        auc_se: interval.and_then(Result::ok).and_then(|i| i.se),
        auc_ci_note,
        at_threshold: at_threshold(cases, threshold),
        at_target_sensitivity: at_sensitivity(cases, target),
        calibration: calibration(cases),
        error,
    }
}

/// The report over `scored` for the findings in `findings`; `not_counted` is what the
/// set's folder held that made no case.
pub fn build(
    model: ModelInfo,
    manifest: &Manifest,
    scored: &[ScoredCase],
    findings: &BTreeSet<usize>,
    not_counted: NotCounted,
    target: f64,
) -> Report {
    let (errors, excluded) = super::score::failures(scored);
    let issue = |(file, reason)| FileIssue { file, reason };
    let is_scored = |s: &&ScoredCase| matches!(s.outcome, Outcome::Scored(_));
    let cases = cases(scored);
    let unreadable = not_counted.unreadable.len();
    let dataset = DatasetInfo {
        images: scored.len() + unreadable,
        scored: scored.iter().filter(is_scored).count(),
        cases: cases.len() + unreadable,
        cases_scored: cases.iter().filter(|c| c.iter().any(is_scored)).count(),
        not_applicable: excluded.into_iter().map(issue).collect(),
        errors: errors
            .into_iter()
            .chain(not_counted.unreadable)
            .map(issue)
            .collect(),
        ignored_folders: not_counted.ignored_folders,
        not_read: not_counted.not_read.into_iter().map(issue).collect(),
    };
    let findings = findings
        .iter()
        .filter_map(|&i| {
            let label = manifest.labels.get(i)?;
            let labelled = labelled_case_scores(&cases, i);
            let r = finding_report(
                &label.name,
                &labelled,
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

/// `t` rounded down to 4 decimals, as the table prints a threshold: pasted into a manifest
/// it flags every case the exact threshold flags (rounding to nearest could print a value
/// just above it and miss a positive at the threshold). The JSON keeps the exact value.
pub fn threshold_floor(t: f64) -> f64 {
    let mut k = (t * 1e4).floor();
    // `t * 1e4` may round up to the next integer; the printed value must not exceed `t`.
    if k / 1e4 > t {
        k -= 1.0;
    }
    k / 1e4
}

/// The report as a table for people: the model and the set, one row per finding (and
/// one at the target sensitivity), the reliability bins, what was not counted, and the
/// gate when one ran.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    table_heading(&mut s, r);
    let _ = writeln!(
        s,
        "{:<16} {:>5} {:>5} {:>6}  {:<13} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "finding", "pos", "neg", "AUC", "95% CI", "threshold", "sens", "spec", "PPV", "NPV", "ECE"
    );
    for (code, f) in &r.findings {
        table_row(&mut s, &f.name, f, &f.at_threshold, true);
        if let Some(op) = &f.at_target_sensitivity {
            let label = format!("  at sens>={}", r.target_sensitivity);
            table_row(&mut s, &label, f, op, false);
        }
        if let Some(note) = &f.auc_ci_note {
            let mark = if f.auc_ci.is_some() { "* " } else { "" };
            let _ = writeln!(s, "  {mark}{code}: {note}");
        }
        if let Some(e) = &f.error {
            let _ = writeln!(s, "  {code}: {e}");
        }
    }
    for (code, f) in &r.findings {
        reliability(&mut s, code, f);
    }
    not_counted(&mut s, &r.dataset);
    if let Some(g) = &r.gate {
        let _ = write!(s, "\n{}", super::gate::summary(g));
    }
    s
}

/// The model, the files and the cases of the report.
fn table_heading(s: &mut String, r: &Report) {
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
        "Files: {} found, {} scored, {} not applicable, {} unreadable",
        d.images,
        d.scored,
        d.not_applicable.len(),
        d.errors.len()
    );
    let _ = writeln!(
        s,
        "Cases: {} found, {} scored (a DICOM study is one case, at the highest probability of \
         its images, as the daemon reports it; a PNG or JPEG file is one case)",
        d.cases, d.cases_scored
    );
    let _ = writeln!(s);
}

/// One row of the table: finding `f` at operating point `op`, with its counts, AUC and
/// calibration on the `first` row only.
fn table_row(s: &mut String, label: &str, f: &FindingReport, op: &OperatingPoint, first: bool) {
    let (auc, ci) = if first {
        (
            opt(f.auc),
            match (f.auc, f.auc_ci) {
                (Some(_), Some([lo, hi])) if f.auc_ci_note.is_some() => {
                    format!("{lo:.3}-{hi:.3}*")
                }
                (_, Some([lo, hi])) => format!("{lo:.3}-{hi:.3}"),
                (Some(_), None) => "n/a".into(),
                (None, None) => "-".into(),
            },
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
        threshold_floor(op.threshold),
        opt(op.sensitivity),
        opt(op.specificity),
        opt(op.ppv),
        opt(op.npv),
        if first {
            opt(f.calibration.ece)
        } else {
            String::new()
        },
    );
}

/// The reliability bins of finding `f` (`code`) that hold cases.
fn reliability(s: &mut String, code: &str, f: &FindingReport) {
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

/// The files not counted (not applicable, unreadable) and the folders and files not read.
fn not_counted(s: &mut String, d: &DatasetInfo) {
    for (title, list) in [
        ("Not applicable (not counted)", &d.not_applicable),
        ("Unreadable (not counted)", &d.errors),
        ("Not read (not counted)", &d.not_read),
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::evaluate::dataset::Case;

    fn manifest() -> Manifest {
        Manifest::load(&crate::infer::testdata::repo_root().join(crate::locate::DEFAULT_MODEL))
            .unwrap()
    }

    /// The index of the model's first finding.
    fn finding(m: &Manifest) -> usize {
        m.labels.iter().position(|l| !l.background).unwrap()
    }

    fn scored(file: &std::path::Path, label: usize, positive: bool, p: f64) -> ScoredCase {
        ScoredCase {
            case: Case {
                file: file.to_path_buf(),
                truth: BTreeMap::from([(label, positive)]),
            },
            outcome: Outcome::Scored(vec![(label, p)]),
        }
    }

    fn model() -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            version: "1".into(),
            hash: "00".repeat(32),
            network_sha256: "00".repeat(32),
            weights_sha256: String::new(),
            precision: "f32".into(),
            cpu_feature: "any".into(),
            backend: "test".into(),
        }
    }

    /// A minimal DICOM file of `study` with SOP Instance UID `sop`.
    pub(crate) fn dicom(path: &std::path::Path, study: &str, sop: &str) {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_dictionary_std::tags;
        use dicom_object::meta::FileMetaTableBuilder;
        use dicom_object::InMemDicomObject;
        const DX: &str = "1.2.840.10008.5.1.4.1.1.1.1";
        let mut obj = InMemDicomObject::new_empty();
        for (tag, value) in [
            (tags::SOP_CLASS_UID, DX),
            (tags::SOP_INSTANCE_UID, sop),
            (tags::STUDY_INSTANCE_UID, study),
        ] {
            obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(value)));
        }
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax("1.2.840.10008.1.2.1")
                    .media_storage_sop_class_uid(DX)
                    .media_storage_sop_instance_uid(sop),
            )
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        file.write_to_file(path).unwrap();
    }

    /// The daemon reports a study at the highest probability of its images: so does the
    /// evaluation, one case per study (two files of a negative study, one of them high,
    /// are one false positive, not one true negative and one false positive); a PNG file
    /// is a case of its own. The output says how many files and cases.
    #[test]
    fn dicom_files_of_one_study_are_one_case_at_their_highest_probability() {
        let m = manifest();
        let i = finding(&m);
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("NORMAL/a.dcm"),
            dir.path().join("NORMAL/b.dcm"),
            dir.path().join("PNEUMONIA/c.dcm"),
        );
        dicom(&a, "1.2.3.1", "1.2.3.1.1");
        dicom(&b, "1.2.3.1", "1.2.3.1.2");
        dicom(&c, "1.2.3.2", "1.2.3.2.1");
        let png = dir.path().join("PNEUMONIA/d.png");
        let set = vec![
            scored(&a, i, false, 0.1),
            scored(&b, i, false, 0.8),
            scored(&c, i, true, 0.7),
            scored(&png, i, true, 0.9),
        ];
        let cases = labelled_scores(&set, i);
        assert_eq!(cases.len(), 3, "{cases:?}");
        assert_eq!(
            (cases[0].probability, cases[0].positive),
            (0.8, false),
            "the study's highest probability"
        );
        let r = report_of(&m, &set, i, 0.95);
        assert_eq!(
            (r.dataset.images, r.dataset.cases, r.dataset.cases_scored),
            (4, 3, 3)
        );
        let f = &r.findings[&m.labels[i].code];
        assert_eq!((f.n_pos, f.n_neg), (2, 1));
        assert_eq!(f.at_threshold.fp, 1);
        let text = table(&r);
        assert!(text.contains("Files: 4 found, 4 scored"), "{text}");
        assert!(text.contains("Cases: 3 found, 3 scored"), "{text}");
    }

    /// The report of `set` for finding `i` of `m`, with nothing else in the set's folder.
    fn report_of(m: &Manifest, set: &[ScoredCase], i: usize, target: f64) -> Report {
        build(
            model(),
            m,
            set,
            &BTreeSet::from([i]),
            NotCounted::default(),
            target,
        )
    }

    /// The table row of finding `name`.
    fn row_of<'a>(text: &'a str, name: &str) -> &'a str {
        text.lines().find(|l| l.starts_with(name)).unwrap()
    }

    /// With one positive there is no interval: `null` with the reason in the JSON, `n/a`
    /// in the table (it was 0.852–1.000 before, enough to pass "lower bound ≥ 0.85").
    #[test]
    fn one_positive_gives_no_interval_in_json_or_table() {
        let m = manifest();
        let i = finding(&m);
        let mut set = vec![scored(std::path::Path::new("p.png"), i, true, 0.9)];
        for k in 0..20 {
            let f = std::path::PathBuf::from(format!("n{k}.png"));
            set.push(scored(&f, i, false, 0.5 + f64::from(k) / 100.0));
        }
        let r = report_of(&m, &set, i, 0.95);
        let f = &r.findings[&m.labels[i].code];
        assert!(f.auc.is_some());
        assert_eq!((f.auc_ci, f.auc_se), (None, None));
        let json = serde_json::to_value(f).unwrap();
        assert!(json["auc_ci"].is_null(), "{json}");
        assert!(
            json["auc_ci_note"].as_str().unwrap().contains("1 positive"),
            "{json}"
        );
        let text = table(&r);
        let row = row_of(&text, &m.labels[i].name);
        assert!(row.contains(" n/a "), "{row}");
    }

    /// A finding none of whose cases was scored has no calibration error: `null` in the
    /// JSON and `-` in the table (it was 0.000, which reads as perfect calibration).
    #[test]
    fn a_finding_without_scored_cases_has_no_calibration_error() {
        let m = manifest();
        let i = finding(&m);
        let mut unreadable = scored(std::path::Path::new("p.png"), i, true, 0.9);
        unreadable.outcome = Outcome::Error("truncated".into());
        let r = report_of(&m, &[unreadable], i, 0.95);
        let f = &r.findings[&m.labels[i].code];
        assert_eq!(f.calibration.ece, None);
        let json = serde_json::to_value(f).unwrap();
        assert!(json["calibration"]["ece"].is_null(), "{json}");
        let text = table(&r);
        let row = row_of(&text, &m.labels[i].name);
        assert!(row.ends_with(" -"), "{row}");
        assert!(!row.contains("0.000"), "{row}");
    }

    /// What the set's folder held that made no case is in the report: an entry that
    /// cannot be read with the unreadable files (counted as found, not scored), a file
    /// outside the label folders as not read.
    #[test]
    fn entries_not_counted_are_listed_in_json_and_table() {
        let m = manifest();
        let i = finding(&m);
        let set = vec![scored(std::path::Path::new("p.png"), i, true, 0.9)];
        let not_counted = NotCounted {
            ignored_folders: Vec::new(),
            not_read: vec![("stray.png".into(), "not in a label folder".into())],
            unreadable: vec![("gone.png".into(), "broken symbolic link".into())],
        };
        let r = build(model(), &m, &set, &BTreeSet::from([i]), not_counted, 0.95);
        let d = &r.dataset;
        assert_eq!((d.images, d.scored, d.cases, d.cases_scored), (2, 1, 2, 1));
        let json = serde_json::to_value(d).unwrap();
        assert_eq!(json["errors"][0]["file"], "gone.png", "{json}");
        assert_eq!(
            json["errors"][0]["reason"], "broken symbolic link",
            "{json}"
        );
        assert_eq!(json["not_read"][0]["file"], "stray.png", "{json}");
        let text = table(&r);
        assert!(
            text.contains("Files: 2 found, 1 scored, 0 not applicable, 1 unreadable"),
            "{text}"
        );
        assert!(text.contains("gone.png: broken symbolic link"), "{text}");
        assert!(
            text.contains("Not read (not counted):\n  stray.png: not in a label folder"),
            "{text}"
        );
    }

    /// The table prints thresholds rounded down: 0.31696 is 0.3169 (0.3170 would miss a
    /// positive scored 0.31696 once pasted into the manifest); the JSON keeps the value.
    #[test]
    fn the_table_rounds_thresholds_down() {
        assert_eq!(threshold_floor(0.31696), 0.3169);
        assert_eq!(threshold_floor(0.5), 0.5);
        assert_eq!(threshold_floor(0.2857), 0.2857);
        for t in [0.123_45, 0.999_99, 0.000_05, 0.316_969_9, 0.1 + 0.2] {
            assert!(threshold_floor(t) <= t, "{t}");
            assert!(t - threshold_floor(t) < 1e-4, "{t}");
        }
        let m = manifest();
        let i = finding(&m);
        let set = vec![
            scored(std::path::Path::new("p1.png"), i, true, 0.31696),
            scored(std::path::Path::new("p2.png"), i, true, 0.9),
            scored(std::path::Path::new("n1.png"), i, false, 0.1),
            scored(std::path::Path::new("n2.png"), i, false, 0.2),
        ];
        let r = report_of(&m, &set, i, 1.0);
        let f = &r.findings[&m.labels[i].code];
        assert_eq!(f.at_target_sensitivity.as_ref().unwrap().threshold, 0.31696);
        let text = table(&r);
        assert!(text.contains(" 0.3169 "), "{text}");
        assert!(!text.contains("0.3170"), "{text}");
    }
}
