//! Precision gates end to end: `duli evaluate --precision bf16 --gate` on the shared
//! labelled samples writes a record beside the network it gated; the configured precision
//! is then used by `duli infer`, and without the record f32 runs and the log says why; the
//! record does not hold for other weights under the same `.xml` nor at another threshold.
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

/// SHA-256 of `bytes` as lowercase hex.
fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
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
    // The record binds the weights and the threshold, and counts the cases of each class.
    assert_eq!(gate["weights_sha256"], report["model"]["weights_sha256"]);
    assert_eq!(gate["network_sha256"], report["model"]["network_sha256"]);
    assert_eq!(p["threshold"], 0.5);
    assert_eq!(
        (p["positives"].as_u64(), p["negatives"].as_u64()),
        (Some(8), Some(8))
    );
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
    let infer_model = |m: &str, precision: &str| {
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
    let infer = |precision: &str| infer_model(m, precision);
    let out = infer("bf16");
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.stderr);
    let ran_at = |stderr: &str, p: &str| stderr.contains(&format!(" at {p} (CPU feature"));
    if gate["passed"] == true {
        assert!(ran_at(&out.stderr, "bf16"), "{}", out.stderr);

        // Retrained weights under the same .xml (here: one weight changed) with the
        // manifest naming them, and the passed record beside it: another network, f32.
        let src = repo_root().join("models/pneumonia-xception");
        let retrained = tmp.path().join("retrained");
        std::fs::create_dir(&retrained).unwrap();
        std::os::unix::fs::symlink(
            src.join("pneumonia_xception_fp16.xml"),
            retrained.join("pneumonia_xception_fp16.xml"),
        )
        .unwrap();
        let mut weights = std::fs::read(src.join("pneumonia_xception_fp16.bin")).unwrap();
        let last = weights.len() - 2;
        weights[last] ^= 0x01;
        std::fs::write(retrained.join("pneumonia_xception_fp16.bin"), &weights).unwrap();
        let old_sha = report["model"]["weights_sha256"]
            .as_str()
            .unwrap()
            .to_string();
        let new_sha = hex_sha256(&weights);
        let toml = std::fs::read_to_string(src.join("model.toml")).unwrap();
        assert!(toml.contains(&old_sha));
        std::fs::write(
            retrained.join("model.toml"),
            toml.replace(&old_sha, &new_sha),
        )
        .unwrap();
        std::fs::copy(&record, retrained.join(record.file_name().unwrap())).unwrap();
        let out = infer_model(retrained.join("model.toml").to_str().unwrap(), "bf16");
        assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.stderr);
        assert!(ran_at(&out.stderr, "f32"), "{}", out.stderr);
        assert!(out.stderr.contains("another network"), "{}", out.stderr);

        // The same files decided at another threshold: the gate never tested it, f32.
        let strict = tmp.path().join("strict");
        std::fs::create_dir(&strict).unwrap();
        for f in ["pneumonia_xception_fp16.xml", "pneumonia_xception_fp16.bin"] {
            std::os::unix::fs::symlink(src.join(f), strict.join(f)).unwrap();
        }
        assert!(toml.contains("\nthreshold = 0.5\n"));
        std::fs::write(
            strict.join("model.toml"),
            toml.replace("\nthreshold = 0.5\n", "\nthreshold = 0.99943\n"),
        )
        .unwrap();
        std::fs::copy(&record, strict.join(record.file_name().unwrap())).unwrap();
        let out = infer_model(strict.join("model.toml").to_str().unwrap(), "bf16");
        assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{}", out.stderr);
        assert!(ran_at(&out.stderr, "f32"), "{}", out.stderr);
        assert!(out.stderr.contains("threshold"), "{}", out.stderr);
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
