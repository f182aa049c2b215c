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
