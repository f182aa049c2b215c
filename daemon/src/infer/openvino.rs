//! The OpenVINO backend. The runtime is linked at run time: its C library is loaded from
//! `inference.openvino_lib`, else `DULI_OPENVINO_LIB`, else `.cache/openvino/libs` (what
//! `scripts/setup-openvino.sh` unpacks from the pinned PyPI wheel) in the working directory
//! or the repository the binary was built from, else `/usr/lib/duli/openvino` (see
//! [`crate::locate`]), before the first `Core`.

use super::backend::{
    input_shape, Backend, BackendError, CompileOptions, Compiled, Outputs, Request,
};
use super::cam;
use super::manifest::Manifest;
use crate::config::InferenceConfig;
use openvino::{
    CompiledModel, Core, DeviceType, ElementType, InferRequest, Model, PartialShape, PropertyKey,
    RwPropertyKey, Shape, Tensor,
};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Environment variable naming the OpenVINO C library (or its folder).
pub const LIB_ENV: &str = "DULI_OPENVINO_LIB";
const LIB_NAME: &str = "libopenvino_c.so";
const HINT: &str = "run scripts/setup-openvino.sh (fetches the pinned runtime into .cache/openvino/libs) or set inference.openvino_lib / DULI_OPENVINO_LIB to libopenvino_c.so";
/// Longest an inference call may take before it is reported as failed (ms).
const INFER_TIMEOUT_MS: i64 = 120_000;

/// Where the OpenVINO C library is looked for: config, then environment, then default.
pub fn library_path(cfg: &InferenceConfig) -> PathBuf {
    let p = cfg
        .openvino_lib
        .clone()
        .or_else(|| std::env::var_os(LIB_ENV).map(PathBuf::from))
        .unwrap_or_else(|| crate::locate::openvino_runtime().or_first());
    if p.is_dir() {
        p.join(LIB_NAME)
    } else {
        p
    }
}

/// Loads the runtime library once per process (later calls are no-ops once one succeeded).
pub fn load_runtime(path: &Path) -> Result<(), BackendError> {
    if !path.exists() {
        return Err(BackendError::RuntimeMissing {
            reason: format!("{} does not exist", path.display()),
            hint: HINT.into(),
        });
    }
    openvino_sys::library::load_from(path).map_err(|e| BackendError::RuntimeMissing {
        reason: format!("{} does not load: {e}", path.display()),
        hint: HINT.into(),
    })
}

/// OpenVINO on one device.
pub struct OpenVino {
    core: Core,
    device: String,
    /// The network read last. A later compilation of the same network (the `AUTO` hint's
    /// swaps between its latency- and throughput-tuned compilations) starts from it, so
    /// the weights are read and mapped once, not at every swap.
    last_read: Option<ReadNetwork>,
}

/// A network as read and reshaped, with what it was read for.
struct ReadNetwork {
    key: ReadKey,
    model: Model,
}

/// What makes two reads of a network the same: its IR and weights, whether it returns the features
/// output for class activation, and its batch size.
#[derive(PartialEq, Eq)]
struct ReadKey {
    ir: PathBuf,
    weights: PathBuf,
    features: bool,
    batch: usize,
}

impl OpenVino {
    /// Loads the runtime found by [`library_path`] and creates a `Core`.
    pub fn new(cfg: &InferenceConfig) -> Result<OpenVino, BackendError> {
        load_runtime(&library_path(cfg))?;
        let core = Core::new().map_err(|e| BackendError::RuntimeMissing {
            reason: format!("OpenVINO core: {e}"),
            hint: HINT.into(),
        })?;
        Ok(OpenVino {
            core,
            device: cfg.device.to_ascii_uppercase(),
            last_read: None,
        })
    }

    /// Makes `last_read` the manifest's network reshaped to `options.batch`: read from disk
    /// unless it was the network read last. Returns the name of its features output when it
    /// returns one.
    fn read(
        &mut self,
        manifest: &Manifest,
        options: &CompileOptions,
    ) -> Result<Option<String>, BackendError> {
        let xml = manifest.model_path();
        // Report inference of a `cam` model also returns the last convolutional block.
        let cam = if options.background {
            None
        } else {
            cam_graph(manifest)
        };
        let features = cam.as_ref().map(|c| c.tensor.clone());
        let weights = manifest.weights_path().unwrap_or_default();
        let key = ReadKey {
            ir: xml.clone(),
            weights: weights.clone(),
            features: cam.is_some(),
            batch: options.batch,
        };
        if self.last_read.as_ref().is_some_and(|r| r.key == key) {
            return Ok(features);
        }
        self.last_read = None;
        // The IR with the features output is written beside nothing of the model's own (a
        // temporary file): the runtime then maps the weights file itself, as without it,
        // instead of holding a copy of the weights in memory.
        let ir_file = match &cam {
            Some(c) => Some(write_temp_ir(&c.xml).map_err(|e| {
                BackendError::Compile(format!("the IR with the features output: {e}"))
            })?),
            None => None,
        };
        let ir_path = ir_file.as_ref().map_or(xml.as_path(), |f| f.path());
        let mut model = self
            .core
            .read_model_from_file(&ir_path.to_string_lossy(), &weights.to_string_lossy())
            .map_err(|e| BackendError::Compile(format!("{}: {e}", xml.display())))?;
        drop(ir_file);
        let shape = PartialShape::new_static(4, &input_shape(manifest, options.batch))
            .map_err(compile_err)?;
        model
            .reshape_input_by_name(&manifest.input.name, &shape)
            .map_err(|e| BackendError::Compile(format!("input {:?}: {e}", manifest.input.name)))?;
        self.last_read = Some(ReadNetwork { key, model });
        Ok(features)
    }

    fn device(&self) -> DeviceType<'static> {
        // Parsing never fails: unknown names become `DeviceType::Other`.
        DeviceType::from_str(&self.device)
            .map(|d| d.to_owned())
            .unwrap_or(DeviceType::CPU)
    }
}

fn compile_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Compile(e.to_string())
}

impl Backend for OpenVino {
    fn name(&self) -> String {
        format!(
            "openvino-{}/{}",
            openvino::version().build_number,
            self.device
        )
    }

    fn compile(
        &mut self,
        manifest: &Manifest,
        options: CompileOptions,
    ) -> Result<Box<dyn Compiled>, BackendError> {
        let features = self.read(manifest, &options)?;
        let device = self.device();
        let hint = if options.background {
            "THROUGHPUT"
        } else {
            options.mode.as_str()
        };
        let threads = if options.background { "1" } else { "0" };
        // The precision is always explicit: on CPUs with native bf16 (AVX512_BF16, AMX)
        // OpenVINO's default is bf16, which moves probabilities by up to ~0.06, so the same
        // image would get different numbers on different boxes. bf16 is asked for only
        // when chosen (and gated, see `gate`).
        for (key, value) in [
            (RwPropertyKey::HintPerformanceMode, hint),
            (RwPropertyKey::InferenceNumThreads, threads),
            (
                RwPropertyKey::HintInferencePrecision,
                options.precision.openvino_hint(),
            ),
        ] {
            if let Err(e) = self.core.set_property(&device, &key, value) {
                log::debug!(
                    "OpenVINO {} does not take {}={value}: {e}",
                    self.device,
                    key.as_ref()
                );
            }
        }
        let model = match &self.last_read {
            Some(read) => &read.model,
            None => return Err(compile_err("the network was not read")),
        };
        let compiled = self
            .core
            .compile_model(model, device)
            .map_err(compile_err)?;
        let output = manifest.output.name.clone();
        Ok(Box::new(OvCompiled {
            compiled,
            input: manifest.input.name.clone(),
            output,
            features,
            shape: input_shape(manifest, options.batch),
        }))
    }
}

/// `xml` in a temporary file of this process (created new, owner-only, removed when
/// dropped).
fn write_temp_ir(xml: &str) -> std::io::Result<TempIr> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "duli-ir-{}-{}.xml",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let file = TempIr(path);
    f.write_all(xml.as_bytes())?;
    f.flush()?;
    Ok(file)
}

/// A temporary IR file, removed when dropped.
struct TempIr(std::path::PathBuf);

impl TempIr {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempIr {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The IR of a `cam` manifest's network with its features output, the features tensor and
/// the weights it reads; `None` (with the reason logged) when the manifest is not `cam` or
/// its features layer cannot be had. The head is read from the f32 network by the engine.
fn cam_graph(manifest: &Manifest) -> Option<cam::FeaturesOutput> {
    cam::features_output(manifest).unwrap_or_else(|e| {
        log::warn!(
            "{}: no class-activation output ({e}); heatmaps fall back to occlusion",
            manifest.name
        );
        None
    })
}

struct OvCompiled {
    compiled: CompiledModel,
    input: String,
    output: Option<String>,
    features: Option<String>,
    shape: [i64; 4],
}

impl Compiled for OvCompiled {
    fn optimal_requests(&self) -> usize {
        self.compiled
            .get_property(&PropertyKey::OptimalNumberOfInferRequests)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(1)
            .clamp(1, 16)
    }

    fn request(&mut self) -> Result<Box<dyn Request>, BackendError> {
        let request = self.compiled.create_infer_request().map_err(compile_err)?;
        let tensor = Tensor::new(
            ElementType::F32,
            &Shape::new(&self.shape).map_err(compile_err)?,
        )
        .map_err(compile_err)?;
        Ok(Box::new(OvRequest {
            request,
            tensor,
            input: self.input.clone(),
            output: self.output.clone(),
            features: self.features.clone(),
        }))
    }
}

struct OvRequest {
    request: InferRequest,
    tensor: Tensor,
    input: String,
    output: Option<String>,
    features: Option<String>,
}

fn infer_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Infer(e.to_string())
}

impl Request for OvRequest {
    fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, BackendError> {
        let data = self.tensor.get_data_mut::<f32>().map_err(infer_err)?;
        if data.len() != input.len() {
            return Err(BackendError::Infer(format!(
                "input has {} values, the network takes {}",
                input.len(),
                data.len()
            )));
        }
        data.copy_from_slice(input);
        self.request
            .set_tensor(&self.input, &self.tensor)
            .map_err(infer_err)?;
        self.request.infer_async().map_err(infer_err)?;
        self.request.wait(INFER_TIMEOUT_MS).map_err(infer_err)?;
        let out = match &self.output {
            Some(name) => self.request.get_tensor(name),
            None => self.request.get_output_tensor_by_index(0),
        }
        .map_err(infer_err)?;
        if out.get_element_type().map_err(infer_err)? != ElementType::F32 {
            return Err(BackendError::Infer("output is not f32".into()));
        }
        Ok(out.get_data::<f32>().map_err(infer_err)?.to_vec())
    }

    fn run_outputs(&mut self, input: &[f32]) -> Result<Outputs, BackendError> {
        let values = self.run(input)?;
        let features = match &self.features {
            Some(name) => {
                let t = self.request.get_tensor(name).map_err(infer_err)?;
                if t.get_element_type().map_err(infer_err)? != ElementType::F32 {
                    return Err(BackendError::Infer("features are not f32".into()));
                }
                Some(t.get_data::<f32>().map_err(infer_err)?.to_vec())
            }
            None => None,
        };
        Ok(Outputs { values, features })
    }
}
