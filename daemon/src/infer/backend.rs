//! The runtime seam: a [`Backend`] compiles a manifest's network, a [`Compiled`] network
//! hands out [`Request`]s, and a request runs one batch. OpenVINO implements it
//! ([`super::openvino`]); another runtime (a Jetson's, a remote serving engine) only has to
//! implement these three traits.

use super::manifest::Manifest;
use super::precision::Precision;

/// Why a runtime could not load, compile or run a model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The runtime library is not where it should be, or does not load.
    #[error("inference runtime unavailable: {reason}. {hint}")]
    RuntimeMissing {
        /// What is missing.
        reason: String,
        /// How to fix it.
        hint: String,
    },
    /// The model could not be read or compiled.
    #[error("cannot compile model: {0}")]
    Compile(String),
    /// An inference call failed.
    #[error("inference failed: {0}")]
    Infer(String),
}

/// How a network is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileOptions {
    /// Images per inference call.
    pub batch: usize,
    /// Background work (heatmaps): keep it to one runtime thread so report inference keeps
    /// the rest of the machine.
    pub background: bool,
    /// Arithmetic precision (the network file for int8 is the manifest's).
    pub precision: Precision,
    /// What the runtime optimises for.
    pub mode: Mode,
}

/// What a compiled network is tuned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One image as fast as possible (all cores on one request).
    Latency,
    /// Images per second with several requests in flight.
    Throughput,
}

impl Mode {
    /// OpenVINO's `PERFORMANCE_HINT` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Latency => "LATENCY",
            Mode::Throughput => "THROUGHPUT",
        }
    }
}

/// A runtime able to compile networks described by manifests.
pub trait Backend: Send {
    /// Short name for logs and results (e.g. `openvino-2026.4.1/CPU`).
    fn name(&self) -> String;
    /// Reads and compiles the manifest's network.
    fn compile(
        &mut self,
        manifest: &Manifest,
        options: CompileOptions,
    ) -> Result<Box<dyn Compiled>, BackendError>;
}

/// A compiled network.
pub trait Compiled: Send {
    /// How many requests in flight the runtime says keep the device busy.
    fn optimal_requests(&self) -> usize;
    /// A new inference request.
    fn request(&mut self) -> Result<Box<dyn Request>, BackendError>;
}

/// What one inference call gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outputs {
    /// `batch × outputs` raw output values.
    pub values: Vec<f32>,
    /// The last convolutional block's activations, when the network was compiled with
    /// them as an extra output (`[heatmap] method = "cam"`).
    pub features: Option<Vec<f32>>,
}

/// One inference request (owned by one thread at a time).
pub trait Request: Send {
    /// Runs `batch × input_len` input values; returns `batch × outputs` raw output values.
    fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, BackendError>;

    /// [`Request::run`], with the features output when the network has one.
    fn run_outputs(&mut self, input: &[f32]) -> Result<Outputs, BackendError> {
        Ok(Outputs {
            values: self.run(input)?,
            features: None,
        })
    }
}

/// Input shape of a batch as the manifest's layout orders it.
pub fn input_shape(manifest: &Manifest, batch: usize) -> [i64; 4] {
    let i = &manifest.input;
    let (b, c, h, w) = (
        batch as i64,
        i64::from(i.channels),
        i64::from(i.height),
        i64::from(i.width),
    );
    match i.layout {
        super::manifest::Layout::NHWC => [b, h, w, c],
        super::manifest::Layout::NCHW => [b, c, h, w],
    }
}
