//! `[inference]`: the model manifest, its precision and runtime hints, and the pixel budget
//! an image is held to before it is decoded.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[inference]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// Path of the model manifest (`model.toml`). With `model_pack` set, where that pack's
    /// manifest is unpacked (set by the loader, not configurable beside it).
    pub model: PathBuf,
    /// Name of an installed model pack to run instead of `model` (the signed bundle
    /// `firmware.model_packs/NAME.pack`, installed by `duli firmware install`): verified
    /// and unpacked under the data folder each time the engine starts.
    pub model_pack: Option<String>,
    /// OpenVINO device: CPU, GPU, NPU or AUTO.
    pub device: String,
    /// OpenVINO performance hint: LATENCY, THROUGHPUT, or AUTO (latency for an image
    /// alone, throughput with several infer requests when images wait).
    pub performance_hint: String,
    /// Inference precision: f32, bf16, int8, or auto (the fastest precision whose gate
    /// passed on this CPU). bf16 and int8 are used only with a passed gate for this
    /// CPU's feature (`duli evaluate --precision P --gate`), else f32 runs.
    pub precision: String,
    /// Path of `libopenvino_c.so*`; default: `DULI_OPENVINO_LIB` or `.cache/openvino/libs`.
    pub openvino_lib: Option<PathBuf>,
    /// Largest image analysed or previewed, as Rows × Columns × Frames × Samples per Pixel,
    /// checked before any decode; larger images are recorded as not analysable.
    pub max_pixels: u64,
    /// Images per inference call under `THROUGHPUT`, set by the offline tools (`duli
    /// infer`, `duli evaluate`) for their batch runs; never read from a configuration
    /// file (the daemon always infers image by image).
    #[serde(skip)]
    pub tool_batch: usize,
}

/// Default of `inference.max_pixels`.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from("models/pneumonia-xception/model.toml"),
            model_pack: None,
            device: "CPU".into(),
            performance_hint: "LATENCY".into(),
            precision: "f32".into(),
            openvino_lib: None,
            max_pixels: DEFAULT_MAX_PIXELS,
            tool_batch: 1,
        }
    }
}
