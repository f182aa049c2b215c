//! Precision gates end to end: `duli evaluate --precision bf16 --gate` on the shared
//! labelled samples writes a record beside the network it gated; the configured precision
//! is then used by `duli infer`, and without the record f32 runs and the log says why.
//! (The model folder is a copy, so the repository's own records are left alone.)

mod common;

use common::inference::inference_available;
use common::*;
use std::path::Path;
use std::process::Command;

fn duli(args: &[&str]) -> ToolOutput {
    let mut cmd = Command::new(Daemon::binary());
    cmd.current_dir(repo_root()).args(args);
    run(&mut cmd, TOOL_TIMEOUT)
}

/// The default model's manifest and IR linked into `dir`.
fn model_copy(dir: &Path) -> std::path::PathBuf {
    let src = repo_root().join("models/pneumonia-xception");
    for f in [
        "model.toml",
        "pneumonia_xception_fp16.xml",
        "pneumonia_xception_fp16.bin",
    ] {
        std::os::unix::fs::symlink(src.join(f), dir.join(f)).unwrap();
    }
    dir.join("model.toml")
}

#[test]
fn a_gated_precision_is_used_and_an_ungated_one_falls_back_to_f32() {
    if !inference_available() {
        return;
    }
    let Some(samples) = samples_dir() else { return };
    let tmp = temp_dir("precision");
    let set = tmp.path().join("set");
    for line in std::fs::read_to_string(samples.join("png/labels.csv"))
        .unwrap()
        .lines()
        .skip(1)
    {
        let (name, label) = line.split_once(',').unwrap();
        std::fs::create_dir_all(set.join(label.trim())).unwrap();
        std::fs::copy(
            samples.join("png").join(name),
            set.join(label.trim()).join(name),
        )
        .unwrap();
    }
    let models = tmp.path().join("model");
    std::fs::create_dir(&models).unwrap();
    let manifest = model_copy(&models);
    let m = manifest.to_str().unwrap();

    let out = duli(&[
        "evaluate",
        "--model",
        m,
        "--precision",
        "bf16",
        "--gate",
        "--json",
        set.to_str().unwrap(),
    ]);
    // 0 when the gate passed, 3 when it did not (checked against the record below).
    let code = out.status.and_then(|s| s.code());
    assert!(matches!(code, Some(0 | 3)), "{code:?}: {}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["model"]["precision"], "bf16");
    // The bf16 network is the f32 one run at another precision: the same files.
    assert_eq!(report["model"]["network_sha256"], report["model"]["hash"]);
    let feature = report["model"]["cpu_feature"].as_str().unwrap().to_string();
    assert!(["amx-bf16", "avx512-bf16", "none"].contains(&feature.as_str()));
    let gate = &report["gate"];
    assert_eq!(gate["precision"], "bf16");
    assert_eq!(gate["dataset"]["images"], 16);
    let p = &gate["findings"]["PNEUMONIA"];
    let passed = p["auc"].as_f64() >= p["auc_f32"].as_f64() && gate["flipped"] == 0;
    assert_eq!(gate["passed"], passed, "{gate}");
    assert_eq!(code == Some(0), passed, "exit {code:?} for {gate}");
    if feature == "none" {
        // Without native bf16 the runtime computes in f32: nothing moves.
        assert_eq!(gate["max_shift"], 0.0);
        assert_eq!(gate["passed"], true);
    }
    let record = models.join(format!("gate-bf16-{feature}.json"));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(&saved, gate);
    eprintln!(
        "gate bf16 on {feature}: passed {}, AUC {} vs f32 {}, max |dp| {}, flipped {}",
        gate["passed"], p["auc"], p["auc_f32"], gate["max_shift"], gate["flipped"]
    );

    // The daemon's resolution, through `duli infer` with the configured precision.
    let file = samples.join("png/PNEUMONIA_01.png");
    let infer = |precision: &str| {
        let cfg = tmp.path().join(format!("{precision}.toml"));
        std::fs::write(
            &cfg,
            format!("[inference]\nmodel = {m:?}\nprecision = {precision:?}\n"),
        )
        .unwrap();
        duli(&[
            "infer",
            "--config",
            cfg.to_str().unwrap(),
            file.to_str().unwrap(),
        ])
    };
    let out = infer("bf16");
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.stderr);
    let ran_at = |stderr: &str, p: &str| stderr.contains(&format!(" at {p} (CPU feature"));
    if gate["passed"] == true {
        assert!(ran_at(&out.stderr, "bf16"), "{}", out.stderr);
    }
    std::fs::remove_file(&record).unwrap();
    let out = infer("bf16");
    assert!(ran_at(&out.stderr, "f32"), "{}", out.stderr);
    assert!(
        out.stderr.contains("duli evaluate --precision bf16 --gate"),
        "{}",
        out.stderr
    );
    // auto never picks bf16 without native support, and never anything ungated.
    let out = infer("auto");
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.stderr);
    assert!(!ran_at(&out.stderr, "bf16"), "{}", out.stderr);
}
