//! Whether the real model can run here.

use super::{repo_root, skip};

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
