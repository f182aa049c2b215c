//! Whether the real model can run here.

use super::{python_script, repo_root, run, skip};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Whether the OpenVINO runtime and the default model's weights are here (a SKIP line
/// naming the setup script otherwise).
pub fn inference_available() -> bool {
    for (file, fix) in [
        (
            ".cache/openvino/libs/libopenvino_c.so",
            "OpenVINO runtime absent (scripts/setup-openvino.sh)",
        ),
        (
            "models/pneumonia-xception/pneumonia_xception_fp16.bin",
            "model weights absent (scripts/setup-models.sh)",
        ),
    ] {
        if !repo_root().join(file).exists() {
            skip(fix);
            return false;
        }
    }
    true
}

/// One 256×256 chest DX study made by tests/tools/make_dx.py with `args`; its file.
pub fn make_dx_study(dir: &Path, prefix: &str, args: &[&str]) -> Option<PathBuf> {
    let script = std::fs::read_to_string(repo_root().join("tests/tools/make_dx.py")).unwrap();
    let out = dir.join(prefix);
    let mut all = vec![
        out.to_str().unwrap(),
        "--rows",
        "256",
        "--cols",
        "256",
        "--prefix",
        prefix,
    ];
    all.extend_from_slice(args);
    let mut cmd = python_script(&script, &all)?;
    run(&mut cmd, Duration::from_secs(120)).assert_success("make_dx.py");
    Some(out.join("img00000.dcm"))
}

/// A chest X-ray in Explicit VR Little Endian: the shared sample `name` (e.g.
/// `NORMAL_01.dcm`) when the shared folder holds it, else one synthetic 256×256 DX made
/// once per test binary by tests/tools/make_dx.py under target/. For checks that need a
/// valid image the model can analyse, not a particular one, so they run on a public clone
/// too; `None` (a SKIP line) only when no Python with pydicom is there.
pub fn chest_dx(name: &str) -> Option<PathBuf> {
    static MADE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let shared = std::env::var_os("DULI_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("..").join("shared"))
        .join("data/cxr-samples/dicom/explicit-le")
        .join(name);
    if shared.is_file() {
        return Some(shared);
    }
    MADE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "chest-dx-{}",
            std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_default()
        ));
        make_dx_study(&dir, "CXR", &[])
    })
    .clone()
}
