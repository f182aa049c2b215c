//! Locations of the shared sample data for tests (`../shared` from the repository root, or
//! `DULI_SHARED_DIR`). Tests print a SKIP line and return when it is absent.
//!
//! What the test environment installs (the runtime, the model, the samples prepared from
//! PyPI, the peers and Python modules) must be there when `DULI_REQUIRE_PEERS=1` (set by
//! `make test`): a test that would skip for want of it fails instead ([`skip`]).

use std::path::PathBuf;

/// Skips a test for want of something the test environment installs: prints the SKIP
/// line, or fails the test when `DULI_REQUIRE_PEERS` is set (`make test`).
pub fn skip(reason: &str) {
    if matches!(
        std::env::var("DULI_REQUIRE_PEERS").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    ) {
        panic!("{reason}: DULI_REQUIRE_PEERS is set (make test), so this test may not skip; run scripts/setup-test-env.sh");
    }
    note_skip(reason);
}

/// Prints the running test's SKIP line, and appends it to the file `DULI_SKIP_LOG` names
/// (`make test` lists them after the run: a green run says what did not run).
pub fn note_skip(reason: &str) {
    eprintln!("SKIP: {reason}");
    if let Some(path) = std::env::var_os("DULI_SKIP_LOG") {
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!("{test}: {reason}\n");
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    }
}

/// The shared folder, when present: `DULI_SHARED_DIR`, else the nearest `shared/` beside the
/// repository root or one of its parents (`../shared` for a checkout, `../../shared` for a
/// worktree kept in a subfolder).
pub fn shared_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DULI_SHARED_DIR") {
        let dir = PathBuf::from(dir);
        return dir.is_dir().then_some(dir);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    repo.canonicalize()
        .ok()?
        .ancestors()
        .skip(1)
        .map(|a| a.join("shared"))
        .find(|d| d.join("data").is_dir() || d.join("models").is_dir())
}

/// `../shared/data/cxr-samples`, or `None` after printing a SKIP line.
pub fn samples_dir() -> Option<PathBuf> {
    match shared_dir().map(|d| d.join("data/cxr-samples")) {
        Some(d) if d.join("reference.csv").is_file() => Some(d),
        _ => {
            note_skip("../shared/data/cxr-samples is absent (set DULI_SHARED_DIR)");
            None
        }
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An inference configuration with the repository's runtime and default model, or `None`
/// after printing a SKIP line naming the setup script to run.
pub fn runtime_config() -> Option<crate::config::InferenceConfig> {
    let lib = std::env::var_os("DULI_OPENVINO_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/openvino/libs/libopenvino_c.so"));
    if !lib.exists() {
        skip(&format!(
            "OpenVINO runtime absent at {} (run scripts/setup-openvino.sh)",
            lib.display()
        ));
        return None;
    }
    let model = repo_root().join("models/pneumonia-xception/model.toml");
    if !repo_root()
        .join("models/pneumonia-xception/pneumonia_xception_fp16.bin")
        .exists()
    {
        skip("pneumonia-xception weights absent (run scripts/setup-models.sh)");
        return None;
    }
    Some(crate::config::InferenceConfig {
        model,
        openvino_lib: Some(lib),
        ..Default::default()
    })
}

/// `reference.csv` rows: (PNG file name, ir_fp16_p_normal, ir_fp16_p_pneumonia).
pub fn reference(dir: &std::path::Path) -> Vec<(String, f32, f32)> {
    let text = std::fs::read_to_string(dir.join("reference.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (f, n, p) = (
        col("file"),
        col("ir_fp16_p_normal"),
        col("ir_fp16_p_pneumonia"),
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Vec<&str> = l.split(',').collect();
            (
                v[f].to_string(),
                v[n].parse().unwrap(),
                v[p].parse().unwrap(),
            )
        })
        .collect()
}

/// A Python that imports `modules` (comma-separated): `DULI_PYTHON`, the repository's
/// `.venv`, or `python3`.
pub fn python_with(modules: &str) -> Option<PathBuf> {
    let root = repo_root();
    let candidates = [
        std::env::var_os("DULI_PYTHON").map(PathBuf::from),
        Some(root.join(".venv/bin/python")),
        Some("python3".into()),
    ];
    candidates.into_iter().flatten().find(|p| {
        std::process::Command::new(p)
            .args(["-c", &format!("import {modules}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// The 16 sample radiographs as JPEGs from the model's PyPI package
/// (`scripts/setup-samples.sh`, run by `make models`), or `None` after a SKIP line.
pub fn jpeg_samples_dir() -> Option<PathBuf> {
    let dir = repo_root().join(".cache/samples/cxr-jpeg");
    if dir.join("ATTRIBUTION.md").is_file() {
        Some(dir)
    } else {
        skip(&format!(
            "{} is absent (run scripts/setup-samples.sh)",
            dir.display()
        ));
        None
    }
}
