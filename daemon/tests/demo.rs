//! `duli demo --exit-after-report` as a newcomer runs it: on built-in defaults, started
//! from a folder that is not the repository (only ports and data directory moved aside so
//! tests can run in parallel), with the shared sample set, with the samples `make models`
//! prepares from the model's PyPI package, and with something missing.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `duli demo --exit-after-report` started in `cwd`, a folder outside the repository.
fn demo(cwd: &Path, data: &Path) -> Command {
    let ports = free_ports(2);
    let mut cmd = Command::new(Daemon::binary());
    cmd.args(["demo", "--exit-after-report"])
        .current_dir(cwd)
        .env_remove("DULI_SHARED_DIR")
        .env_remove("DULI_OPENVINO_LIB")
        .env_remove("DULI_INFERENCE__MODEL")
        .env("DULI_DICOM__PORT", ports[0].to_string())
        .env("DULI_CONSOLE__PORT", ports[1].to_string())
        .env("DULI_DICOM__QUIET_PERIOD", "1")
        .env("DULI_DEVICE__DATA_DIR", data);
    cmd
}

/// The findings rows of the demo's table.
fn rows(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| l.contains(" done ") && l.contains("Pneumonia"))
        .collect()
}

#[test]
fn demo_from_another_folder_sends_the_shared_samples_and_exits_once_recorded() {
    let Some(samples) = samples_dir() else { return };
    let dir = temp_dir("demo");
    let out = run(
        demo(dir.path(), &dir.path().join("data"))
            .arg("--samples")
            .arg(samples.join("dicom/explicit-le")),
        Duration::from_secs(300),
    );
    out.assert_success("duli demo --exit-after-report");
    assert!(
        out.stdout.contains("16/16 stored with Success"),
        "{}",
        out.combined()
    );
    // Every sample study is analysed and listed with its top finding.
    assert!(
        out.stdout.contains("16/16 studies analysed"),
        "{}",
        out.combined()
    );
    let rows = rows(&out.stdout);
    assert_eq!(rows.len(), 16, "{}", out.stdout);
    // How to reach the console, and how to get in the first time.
    assert!(out.stdout.contains("Console: https://"), "{}", out.stdout);
    let code = std::fs::read_to_string(dir.path().join("data/console/setup-code")).unwrap();
    assert!(
        out.stdout
            .contains(&format!("one-time code {}", code.trim())),
        "{}",
        out.stdout
    );
    // The model finds 6 of the 8 pneumonia cases and flags NORMAL_06 (SOURCE.md).
    assert_eq!(
        rows.iter().filter(|l| l.contains("URGENT")).count(),
        7,
        "{}",
        out.stdout
    );
}

#[test]
fn demo_without_any_shared_folder_uses_the_samples_prepared_from_pypi() {
    let prepared = repo_root().join(".cache/samples/cxr-jpeg");
    if !prepared.join("ATTRIBUTION.md").is_file() {
        skip(&format!(
            "{} is absent (scripts/setup-samples.sh prepares it)",
            prepared.display()
        ));
        return;
    }
    let dir = temp_dir("demo-pypi");
    let out = run(
        demo(dir.path(), &dir.path().join("data"))
            .arg("--samples")
            .arg(&prepared),
        Duration::from_secs(300),
    );
    out.assert_success("duli demo --exit-after-report --samples .cache/samples/cxr-jpeg");
    assert!(
        out.stdout.contains("16/16 stored with Success"),
        "{}",
        out.combined()
    );
    let rows = rows(&out.stdout);
    assert_eq!(rows.len(), 16, "{}", out.stdout);
    // Wrapped as DX studies of 16 different (fictitious) patients, never as uploads.
    let mut patients: Vec<&str> = rows
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    patients.sort();
    patients.dedup();
    assert_eq!(patients.len(), 16, "{}", out.stdout);
    assert!(!out.stdout.contains("UPLOAD"), "{}", out.stdout);
    // The JPEGs decode a little differently from the shared PNGs; the pneumonia cases
    // still dominate the urgent flags.
    let urgent = rows.iter().filter(|l| l.contains("URGENT")).count();
    assert!((5..=9).contains(&urgent), "{urgent} urgent\n{}", out.stdout);
    // The wrapped files carry a real DX header.
    let wrapped = std::fs::read_dir(dir.path().join("data/demo-samples"))
        .unwrap()
        .count();
    assert_eq!(wrapped, 16);
}

#[test]
fn demo_without_its_model_fails_within_seconds_naming_the_file_and_the_fix() {
    let dir = temp_dir("demo-missing");
    let samples = dir.path().join("samples");
    std::fs::create_dir(&samples).unwrap();
    let started = Instant::now();
    let out = run(
        demo(dir.path(), &dir.path().join("data"))
            .env("DULI_INFERENCE__MODEL", "/nonexistent/models/x/model.toml")
            .arg("--samples")
            .arg(&samples),
        Duration::from_secs(30),
    );
    assert!(!out.success(), "{}", out.combined());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let err = out.combined();
    assert!(err.contains("/nonexistent/models/x/model.toml"), "{err}");
    assert!(err.contains("make models"), "{err}");
    // Nothing was started: no store was created.
    assert!(!dir.path().join("data").exists(), "{err}");
}

#[test]
fn demo_with_a_model_that_does_not_load_says_why_and_stops() {
    // The files are all there, but the weights are damaged (a broken download): the
    // manifest's checksum refuses them, and the demo says so instead of waiting.
    let Some(samples) = samples_dir() else { return };
    let dir = temp_dir("demo-damaged");
    let models = dir.path().join("model");
    std::fs::create_dir(&models).unwrap();
    let source = repo_root().join("models/pneumonia-xception");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, models.join(path.file_name().unwrap())).unwrap();
        }
    }
    let weights = models.join("pneumonia_xception_fp16.bin");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[1000] ^= 0xFF;
    std::fs::write(&weights, bytes).unwrap();
    let started = Instant::now();
    let out = run(
        demo(dir.path(), &dir.path().join("data"))
            .env("DULI_INFERENCE__MODEL", models.join("model.toml"))
            .arg("--samples")
            .arg(samples.join("png")),
        Duration::from_secs(120),
    );
    assert!(!out.success(), "{}", out.combined());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let err = out.combined();
    assert!(err.contains("the model cannot be loaded"), "{err}");
    assert!(err.contains("SHA-256"), "{err}");
    assert!(err.contains("make models"), "{err}");
    assert!(!out.stdout.contains("stored with Success"), "{err}");
}

#[test]
fn demo_with_a_missing_sample_folder_fails_within_seconds() {
    let dir = temp_dir("demo-nosamples");
    let started = Instant::now();
    let out = run(
        demo(dir.path(), &dir.path().join("data"))
            .arg("--samples")
            .arg("/nonexistent/samples"),
        Duration::from_secs(30),
    );
    assert!(!out.success(), "{}", out.combined());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        out.combined().contains("/nonexistent/samples"),
        "{}",
        out.combined()
    );
}

#[test]
fn demo_help_prints_the_search_order() {
    let out = run(
        Command::new(Daemon::binary()).args(["demo", "--help"]),
        Duration::from_secs(30),
    );
    out.assert_success("duli demo --help");
    for place in [
        "DULI_SHARED_DIR",
        ".cache/samples/cxr-jpeg",
        "make models",
        "/usr/share/duli/models",
        ".cache/openvino/libs",
    ] {
        assert!(out.stdout.contains(place), "{place}\n{}", out.stdout);
    }
}
