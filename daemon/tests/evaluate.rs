//! `duli evaluate` on the shared labelled samples: its AUC and DeLong interval match an
//! independent plain-Python computation over the probabilities `duli infer` gives for the
//! same files; unreadable files and studies outside the model's intended use are listed,
//! not counted; plots are written; a set without negatives is a clear error; a `--labels`
//! CSV over JPEGs gives the figures of the same files through `duli infer`.

mod common;

use common::inference::{inference_available, make_dx_study};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `<dir>/NORMAL` and `<dir>/PNEUMONIA` with the 16 sample PNGs and their 16 DICOM
/// copies (explicit VR LE), by their label in `png/labels.csv`. Returns the files.
fn labelled_set(samples: &Path, dir: &Path) -> Vec<PathBuf> {
    let labels = std::fs::read_to_string(samples.join("png/labels.csv")).unwrap();
    let mut files = Vec::new();
    for line in labels.lines().skip(1) {
        let (name, label) = line.split_once(',').unwrap();
        let folder = dir.join(label.trim());
        std::fs::create_dir_all(&folder).unwrap();
        let dcm = name.replace(".png", ".dcm");
        for (src, dst) in [
            (samples.join("png").join(name), folder.join(name)),
            (
                samples.join("dicom/explicit-le").join(&dcm),
                folder.join(&dcm),
            ),
        ] {
            std::fs::copy(&src, &dst).unwrap();
            files.push(dst);
        }
    }
    files
}

/// Pairwise AUC and DeLong 95% CI (on the logit scale, the lower bound at most the
/// perfect-separation bound 0.025^(1/k), k the smaller class), the rates at the 0.5 threshold (positive at or above
/// it) and the expected calibration error over ten equal bins, written from the
/// definitions (no library); a file is positive when its path has a component starting
/// with `PNEUMONIA`.
const PYTHON_DELONG: &str = r#"
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
pos, neg = [], []
for r in rows:
    p = [f["probability"] for f in r["findings"] if f["code"] == "PNEUMONIA"][0]
    (pos if "/PNEUMONIA" in r["file"] else neg).append(p)
def psi(x, y):
    return 1.0 if x > y else (0.5 if x == y else 0.0)
m, n = len(pos), len(neg)
v10 = [sum(psi(x, y) for y in neg) / n for x in pos]
v01 = [sum(psi(x, y) for x in pos) / m for y in neg]
auc = sum(v10) / m
var = sum((v - auc) ** 2 for v in v10) / (m - 1) / m + sum((v - auc) ** 2 for v in v01) / (n - 1) / n
se = math.sqrt(var)
tp = sum(p >= 0.5 for p in pos); fn = m - tp
tn = sum(p < 0.5 for p in neg); fp = n - tn
bins = [[] for _ in range(10)]
for p, y in [(p, 1) for p in pos] + [(p, 0) for p in neg]:
    bins[min(int(p * 10), 9)].append((p, y))
ece = sum(len(b) / (m + n) * abs(sum(p for p, _ in b) / len(b) - sum(y for _, y in b) / len(b))
          for b in bins if b)
logit, half = math.log(auc / (1 - auc)), 1.959963984540054 * se / (auc * (1 - auc))
bound = 0.025 ** (1 / min(m, n))
lo = min(1 / (1 + math.exp(-(logit - half))), bound)
hi = max(1 / (1 + math.exp(-(logit + half))), 1 - bound)
print(json.dumps({"auc": auc, "lo": lo, "hi": hi, "m": m, "n": n,
                  "sensitivity": tp / m, "specificity": tn / n,
                  "ppv": tp / (tp + fp) if tp + fp else None,
                  "npv": tn / (tn + fn) if tn + fn else None, "ece": ece}))
"#;

/// Runs [`PYTHON_DELONG`] over the `duli infer` lines of `files`; its answer.
fn independent_auc(dir: &Path, files: &[PathBuf]) -> Option<serde_json::Value> {
    let mut args = vec!["infer".to_string()];
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let infer = duli(&args);
    infer.assert_success("duli infer");
    let lines = dir.join("infer.jsonl");
    std::fs::write(&lines, &infer.stdout).unwrap();
    let mut py = python_script(PYTHON_DELONG, &[lines.to_str().unwrap()])?;
    let py = run(&mut py, TOOL_TIMEOUT);
    py.assert_success("python DeLong");
    Some(serde_json::from_str(py.stdout.trim()).unwrap())
}

/// Whether `a` and `b` are the same number to 1e-9.
fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9
}

fn duli(args: &[&str]) -> ToolOutput {
    let mut cmd = Command::new(Daemon::binary());
    cmd.current_dir(repo_root()).args(args);
    run(&mut cmd, TOOL_TIMEOUT)
}

#[test]
fn evaluate_reproduces_an_independent_auc_and_interval_on_the_shared_samples() {
    if !inference_available() {
        return;
    }
    let Some(samples) = samples_dir() else { return };
    let dir = temp_dir("evaluate");
    let set = dir.path().join("set");
    let files = labelled_set(&samples, &set);
    // An unreadable file is listed, not fatal; a folder naming no finding is not read.
    std::fs::write(set.join("NORMAL/truncated.png"), b"\x89PNG\r\n").unwrap();
    // A DICOM study outside the model's intended use (an adult) is listed, not counted.
    let Some(adult) = make_dx_study(dir.path(), "A", &["--outside-every", "1"]) else {
        return;
    };
    std::fs::copy(&adult, set.join("NORMAL/adult.dcm")).unwrap();
    std::fs::create_dir(set.join("unsorted")).unwrap();
    std::fs::copy(&files[0], set.join("unsorted/x.png")).unwrap();
    let plots = dir.path().join("plots");

    let out = duli(&[
        "evaluate",
        set.to_str().unwrap(),
        "--json",
        "--plot",
        plots.to_str().unwrap(),
    ]);
    out.assert_success("duli evaluate");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let f = &report["findings"]["PNEUMONIA"];
    assert_eq!(f["n_pos"], 16, "{}", out.stdout);
    assert_eq!(f["n_neg"], 16);
    assert_eq!(report["dataset"]["images"], 34);
    assert_eq!(report["dataset"]["scored"], 32);
    // Every DICOM file here is a study of its own: 34 cases, 32 scored.
    assert_eq!(report["dataset"]["cases"], 34, "{}", report["dataset"]);
    assert_eq!(report["dataset"]["cases_scored"], 32);
    let na = report["dataset"]["not_applicable"].as_array().unwrap();
    assert_eq!(na.len(), 1, "{}", report["dataset"]);
    assert!(na[0]["file"].as_str().unwrap().ends_with("adult.dcm"));
    assert_eq!(na[0]["reason"], "age 45 y outside the model's 1\u{2013}5 y");
    let errors = report["dataset"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert!(errors[0]["file"]
        .as_str()
        .unwrap()
        .ends_with("truncated.png"));
    assert!(out.stderr.contains("truncated.png"), "{}", out.stderr);
    assert!(out.stderr.contains("unsorted"), "{}", out.stderr);
    // Progress on stderr, ending with every image counted.
    let images = report["dataset"]["images"].as_u64().unwrap();
    assert!(
        out.stderr
            .contains(&format!("duli evaluate: {images}/{images} images scored")),
        "{}",
        out.stderr
    );
    assert_eq!(report["model"]["name"], "pneumonia-xception");
    for key in ["hash", "network_sha256", "weights_sha256"] {
        let hex = report["model"][key].as_str().unwrap();
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{key}: {hex}"
        );
    }
    assert_eq!(report["model"]["precision"], "f32", "{}", report["model"]);
    assert!(
        !report["model"]["version"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{}",
        report["model"]
    );
    // At f32 the network scored is the manifest's own.
    assert_eq!(report["model"]["network_sha256"], report["model"]["hash"]);
    assert_eq!(f["threshold"], 0.5);
    assert_eq!(report["target_sensitivity"], 0.95);
    let tgt = &f["at_target_sensitivity"];
    assert!(tgt["sensitivity"].as_f64().unwrap() >= 0.95);
    assert_eq!(f["calibration"]["bins"].as_array().unwrap().len(), 10);
    let counted: u64 = f["calibration"]["bins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["n"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 32);

    // The same files through `duli infer`, and the figures recomputed in plain Python.
    let Some(expect) = independent_auc(dir.path(), &files) else {
        return;
    };
    assert_eq!(
        (expect["m"].as_u64(), expect["n"].as_u64()),
        (Some(16), Some(16))
    );
    assert!(close(&f["auc"], &expect["auc"]), "{f} vs {expect}");
    assert!(close(&f["auc_ci"][0], &expect["lo"]), "{f} vs {expect}");
    assert!(close(&f["auc_ci"][1], &expect["hi"]), "{f} vs {expect}");
    for key in ["sensitivity", "specificity", "ppv", "npv"] {
        assert!(close(&f[key], &expect[key]), "{key}: {f} vs {expect}");
    }
    assert!(
        close(&f["calibration"]["ece"], &expect["ece"]),
        "ece: {f} vs {expect}"
    );
    // The model separates these samples well but not perfectly.
    let auc = f["auc"].as_f64().unwrap();
    assert!(auc > 0.8 && auc < 1.0, "{auc}");

    for name in [
        "roc-PNEUMONIA.svg",
        "roc-PNEUMONIA.png",
        "reliability-PNEUMONIA.svg",
        "reliability-PNEUMONIA.png",
    ] {
        let len = std::fs::metadata(plots.join(name)).map_or(0, |m| m.len());
        assert!(len > 1000, "{name} is {len} bytes");
    }
    let svg = std::fs::read_to_string(plots.join("roc-PNEUMONIA.svg")).unwrap();
    assert!(svg.contains("<polyline"), "no curve in the ROC plot");

    // Another target sensitivity: the operating point found reaches it, at a threshold no
    // lower than the one for 0.95.
    let out = duli(&[
        "evaluate",
        set.to_str().unwrap(),
        "--json",
        "--target-sensitivity",
        "0.75",
    ]);
    out.assert_success("duli evaluate --target-sensitivity 0.75");
    let low: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(low["target_sensitivity"], 0.75);
    let low_op = &low["findings"]["PNEUMONIA"]["at_target_sensitivity"];
    assert!(low_op["sensitivity"].as_f64().unwrap() >= 0.75, "{low_op}");
    assert!(
        low_op["threshold"].as_f64().unwrap() >= tgt["threshold"].as_f64().unwrap(),
        "{low_op} vs {tgt}"
    );

    // Without --json: the table names the figures.
    let out = duli(&["evaluate", set.to_str().unwrap()]);
    out.assert_success("duli evaluate (table)");
    assert!(out.stdout.contains("Pneumonia"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("{auc:.3}")), "{}", out.stdout);
}

#[test]
fn sets_without_negatives_or_positives_are_clear_errors_and_negative_names_the_folder() {
    if !inference_available() {
        return;
    }
    let Some(samples) = samples_dir() else { return };
    let dir = temp_dir("evaluate-noneg");
    let pos = dir.path().join("Pneumonia");
    std::fs::create_dir(&pos).unwrap();
    std::fs::copy(
        samples.join("png/PNEUMONIA_01.png"),
        pos.join("PNEUMONIA_01.png"),
    )
    .unwrap();
    let out = duli(&["evaluate", dir.path().to_str().unwrap()]);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(out.stderr.contains("no negatives"), "{}", out.stderr);

    // No label folder at all: nothing has positives, and the error says which names work.
    let empty = temp_dir("evaluate-nolabel");
    std::fs::create_dir(empty.path().join("NORMAL")).unwrap();
    let out = duli(&["evaluate", empty.path().to_str().unwrap()]);
    assert_eq!(out.code(), Some(2), "{}", out.combined());
    assert!(out.stderr.contains("PNEUMONIA"), "{}", out.stderr);

    // Negatives in a folder of another name: read only when `--negative` names it.
    let named = temp_dir("evaluate-named-negatives");
    for (folder, file) in [
        ("Pneumonia", "PNEUMONIA_01.png"),
        ("Healthy", "NORMAL_01.png"),
    ] {
        std::fs::create_dir(named.path().join(folder)).unwrap();
        std::fs::copy(
            samples.join("png").join(file),
            named.path().join(folder).join(file),
        )
        .unwrap();
    }
    let dir_arg = named.path().to_str().unwrap();
    let out = duli(&["evaluate", dir_arg]);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(out.stderr.contains("Healthy"), "{}", out.stderr);
    assert!(out.stderr.contains("no negatives"), "{}", out.stderr);
    let out = duli(&["evaluate", dir_arg, "--negative", "Healthy", "--json"]);
    assert_eq!(out.code(), Some(0), "{}", out.combined());
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let p = &v["findings"]["PNEUMONIA"];
    assert_eq!(
        (p["n_pos"].as_u64(), p["n_neg"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );

    // A finding whose only positive cannot be read: no positives, a clear error (exit 1).
    let unreadable = temp_dir("evaluate-nopos");
    for folder in ["Pneumonia", "NORMAL"] {
        std::fs::create_dir(unreadable.path().join(folder)).unwrap();
    }
    std::fs::write(
        unreadable.path().join("Pneumonia/broken.png"),
        b"\x89PNG\r\n\x1a\n not a picture",
    )
    .unwrap();
    std::fs::copy(
        samples.join("png/NORMAL_01.png"),
        unreadable.path().join("NORMAL/NORMAL_01.png"),
    )
    .unwrap();
    let out = duli(&["evaluate", unreadable.path().to_str().unwrap()]);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(
        out.combined().contains("no positives"),
        "{}",
        out.combined()
    );
    assert!(out.combined().contains("broken.png"), "{}", out.combined());
}

/// `--labels CSV` (file, finding, 0/1; paths relative to the folder given) over JPEGs: the
/// counts, AUC and interval of the same files through `duli infer` recomputed in plain
/// Python; a row naming no finding of the model is a clear error with its line.
#[test]
fn a_labels_csv_over_jpegs_matches_the_same_files_through_infer() {
    if !inference_available() {
        return;
    }
    let Some(samples) = samples_dir() else { return };
    let dir = temp_dir("evaluate-csv");
    let jpegs = dir.path().join("jpeg");
    std::fs::create_dir(&jpegs).unwrap();
    const TO_JPEG: &str = r#"
import sys
from pathlib import Path
from PIL import Image
src, out = Path(sys.argv[1]), Path(sys.argv[2])
for line in (src / "labels.csv").read_text().splitlines()[1:]:
    name, label = [c.strip() for c in line.split(",")]
    jpg = name.replace(".png", ".jpg")
    Image.open(src / name).convert("L").save(out / jpg, quality=92)
    print(f"{jpg},PNEUMONIA,{1 if label == 'PNEUMONIA' else 0}")
"#;
    let Some(mut py) = python_script(
        TO_JPEG,
        &[
            samples.join("png").to_str().unwrap(),
            jpegs.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    let rows = run(&mut py, TOOL_TIMEOUT);
    rows.assert_success("PNG to JPEG");
    let csv = dir.path().join("labels.csv");
    std::fs::write(&csv, format!("file,finding,label\n{}", rows.stdout)).unwrap();
    let files: Vec<PathBuf> = rows
        .stdout
        .lines()
        .map(|l| jpegs.join(l.split(',').next().unwrap()))
        .collect();
    assert_eq!(files.len(), 16);

    let out = duli(&[
        "evaluate",
        jpegs.to_str().unwrap(),
        "--labels",
        csv.to_str().unwrap(),
        "--json",
    ]);
    out.assert_success("duli evaluate --labels");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let f = &report["findings"]["PNEUMONIA"];
    assert_eq!(
        (f["n_pos"].as_u64(), f["n_neg"].as_u64()),
        (Some(8), Some(8)),
        "{f}"
    );
    assert_eq!(report["dataset"]["scored"], 16, "{}", report["dataset"]);
    let Some(expect) = independent_auc(dir.path(), &files) else {
        return;
    };
    assert!(close(&f["auc"], &expect["auc"]), "{f} vs {expect}");
    assert!(close(&f["auc_ci"][0], &expect["lo"]), "{f} vs {expect}");
    assert!(close(&f["auc_ci"][1], &expect["hi"]), "{f} vs {expect}");
    for key in ["sensitivity", "specificity", "ppv", "npv"] {
        assert!(close(&f[key], &expect[key]), "{key}: {f} vs {expect}");
    }
    assert!(
        close(&f["calibration"]["ece"], &expect["ece"]),
        "ece: {f} vs {expect}"
    );

    // A finding the model does not have: refused, naming the line.
    std::fs::write(&csv, "file,finding,label\nNORMAL_01.jpg,EFFUSION,1\n").unwrap();
    let out = duli(&[
        "evaluate",
        jpegs.to_str().unwrap(),
        "--labels",
        csv.to_str().unwrap(),
    ]);
    assert!(!out.success(), "{}", out.combined());
    assert!(
        out.stderr.contains("line 2") && out.stderr.contains("EFFUSION"),
        "{}",
        out.stderr
    );
}
