//! Inference: from a stored study's images to a recorded study result.
//!
//! In the order an image flows through them:
//!
//! - [`eligibility`]: which images are analysed (CR/DX chest PA/AP, marked SC uploads,
//!   the manifest's intended use); [`age`]: the patient's age at the study.
//! - [`dicom_image`]: header attributes and first-frame decoding of a DICOM file;
//!   [`stream_check`]: encapsulated pixel data held to the image attributes before a
//!   decoder sees it; [`decode_sandbox`]: JPEG-LS and JPEG 2000 decoded in a confined
//!   child process.
//! - [`samples`]: stored values from native pixel bytes (bits stored, sign).
//! - [`frame`]: one decoded frame read pixel by pixel, its samples in their native width.
//! - [`display`]: Modality LUT, VOI window/LUT, MONOCHROME1 → the 8-bit display image.
//! - [`raster`]: PNG/JPEG files → the same 8-bit display image.
//! - [`resize`]: crop and resize to the model input (PIL-exact nearest, or linear), and
//!   the reduced display image (area average to a bounded long side).
//! - [`tensor`]: normalisation and layout of the input tensor.
//! - [`manifest`]: the model manifest (`model.toml`) and its checksums; [`pack`]: a signed
//!   model pack verified and unpacked in service (`inference.model_pack`).
//! - [`backend`]: the runtime trait; [`openvino`] implements it over OpenVINO.
//! - [`precision`]: f32, bf16, int8 and the CPU feature that decides their results;
//!   [`int8`]: the quantized network `make models` builds; [`gate`]: a precision is
//!   used only once gated against f32 on this CPU's feature.
//! - [`engine`]: worker threads fed by a bounded queue; [`networks`]: the compiled network
//!   they run, one at a time (AUTO scheduling swaps latency and throughput compilations).
//! - [`findings`]: raw outputs → probabilities, thresholds, background classes.
//! - [`analyse`]: one image file through all of the above (shared by daemon and CLI).
//! - [`cam`]: class-activation heatmaps (Grad-CAM) from the last convolutional block,
//!   computed with the result in the same inference pass.
//! - [`heatmap`]: occlusion-sensitivity heatmaps on a low-priority worker, and the PNG
//!   every heatmap is stored as.
//! - [`record`]: the study state transitions of inference, checked by the store, and the
//!   result records of [`crate::store::results`] (re-exported); results go to the record
//!   stage ([`crate::record`]).
//! - [`resume`]: heatmaps a restart left pending, queued again when the engine starts.
//! - [`service`]: [`service::run_pipeline`], the daemon's inference stage, with
//!   [`in_flight`]: one analysis of a study at a time; and
//!   [`status`]: whether it has its model (shown by `/healthz` and the console).
//! - [`cli`]: `duli infer FILE...`, the offline tool.
pub mod age;
pub mod analyse;
pub mod backend;
pub mod cam;
pub mod cli;
pub mod decode_sandbox;
pub mod dicom_image;
pub mod display;
pub mod eligibility;
pub mod engine;
pub mod findings;
pub mod frame;
pub mod gate;
pub mod heatmap;
pub mod in_flight;
pub mod int8;
pub mod manifest;
pub mod networks;
pub mod openvino;
pub mod pack;
pub mod precision;
pub mod raster;
pub mod record;
pub mod resize;
pub mod resume;
pub mod samples;
pub mod service;
pub mod status;
pub mod stream_check;
pub mod tensor;

pub use cli::infer_files_cli;
pub use engine::{Engine, EngineError};
pub use manifest::Manifest;
pub use service::{run_pipeline, run_pipeline_on, run_pipeline_with, PipelineOptions};
pub use status::{ModelState, ModelStatus};
#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod frame_tests;
#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod service_tests;
#[cfg(test)]
pub(crate) mod testdata;
