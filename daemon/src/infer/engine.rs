//! [`Engine`]: a verified model compiled on a backend, with one worker thread per infer
//! request (as many as the runtime calls optimal under the configured performance hint),
//! fed by a bounded queue so a burst of images waits instead of growing memory.
//!
//! The compiled network and its requests are held by [`Networks`]: one compilation at a
//! time, swapped under `performance_hint = "AUTO"` between latency (an image alone) and
//! throughput (a burst: images queued, running or being decoded).
//!
//! Heatmaps of batch 1 run as one more request on the current report compilation (one
//! compiled copy of the weights in memory); the heatmap worker waits while report images
//! are decoded or inferred ([`Engine::report_work`]).

use super::backend::{Backend, BackendError, Compiled, Mode, Outputs, Request};
use super::cam::{self, CamHead};
use super::gate::{self, Network};
use super::manifest::{Manifest, ManifestError};
use super::networks::{Compiler, Networks};
use super::precision::{CpuFlags, Precision, PrecisionSetting};
use crate::config::InferenceConfig;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Images waiting per worker before senders wait (back-pressure), at least a batch.
const QUEUE_PER_WORKER: usize = 2;

/// Longest a worker of a batched compilation waits for its batch to fill before it runs
/// the images it has (the rest of the batch zeros, whose outputs are dropped).
const BATCH_FILL_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Why the engine cannot start or run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The manifest is invalid or the model files are missing or do not match it.
    #[error("{0}")]
    Model(String),
    /// The runtime failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The engine is shutting down.
    #[error("the inference engine has stopped")]
    Stopped,
}

impl From<ManifestError> for EngineError {
    fn from(e: ManifestError) -> Self {
        EngineError::Model(e.to_string())
    }
}

/// State the workers share.
struct Shared {
    rx: Mutex<mpsc::Receiver<Job>>,
    /// Images queued or running.
    pending: AtomicUsize,
    /// Report images being decoded (see [`Engine::preparing`]).
    preparing: Arc<AtomicUsize>,
    networks: Arc<Networks>,
    /// Input values of one image.
    input_len: usize,
}

impl Shared {
    /// Report images queued, running or being decoded.
    fn report_work(&self) -> usize {
        self.pending.load(Ordering::Relaxed) + self.preparing.load(Ordering::Relaxed)
    }
}

struct Job {
    input: Vec<f32>,
    reply: oneshot::Sender<Result<Outputs, BackendError>>,
}

/// A report image being decoded (from [`Engine::preparing`]); dropping it ends the mark.
#[derive(Debug)]
pub struct Preparing(Arc<AtomicUsize>);

impl Drop for Preparing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Identity of the loaded model, as results record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// SHA-256 of the network file (verified at load).
    pub sha256: String,
    /// Backend name (runtime version and device).
    pub backend: String,
    /// Precision the network runs at.
    pub precision: Precision,
    /// SHA-256 of the network actually run (the INT8 IR for int8, else `sha256`).
    pub network_sha256: String,
    /// SHA-256 of the weights of the network actually run (from its manifest, verified
    /// at load); empty when the network has no separate weights file.
    pub weights_sha256: String,
    /// The CPU feature that decides the precision's results (`any` for f32).
    pub cpu_feature: String,
}

/// How the engine schedules its requests (`inference.performance_hint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduling {
    /// Always the latency-tuned network.
    Latency,
    /// Always the throughput-tuned network with several requests.
    Throughput,
    /// Latency for an image alone, throughput when images wait.
    Auto,
}

impl Scheduling {
    /// From `inference.performance_hint` (validated by the configuration; anything else
    /// means LATENCY).
    pub fn from_hint(hint: &str) -> Scheduling {
        match hint.to_ascii_uppercase().as_str() {
            "THROUGHPUT" => Scheduling::Throughput,
            "AUTO" => Scheduling::Auto,
            _ => Scheduling::Latency,
        }
    }
}

/// What to compile: the network (at its precision) and the scheduling.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The network and its precision.
    pub network: Network,
    /// Request scheduling.
    pub scheduling: Scheduling,
    /// Images per inference call under [`Scheduling::Throughput`] (the offline tools'
    /// batch runs of an INT8 network, see [`batch_for`]); 1 otherwise. Each worker gathers
    /// up to this many queued images per call.
    pub batch: usize,
}

/// Images per call for a network at `precision` when `wanted` were asked for: `wanted`
/// for INT8, 1 otherwise. A fixed batch gives every image exactly the outputs it has alone
/// only where the sums are exact: INT8 convolutions accumulate integers, in any order
/// alike; f32 kernels for a batch add in another order (on the shipped model, a batch of
/// 4 moved f32 probabilities by up to 1.5e-7), and f32 is the reference, which must come
/// out the same to the bit however a tool runs it. On two cores, batches of 4 cut INT8
/// inference from about 8.0 to 6.9 ms an image.
pub fn batch_for(precision: Precision, wanted: usize) -> usize {
    match precision {
        Precision::Int8 => wanted.max(1),
        Precision::F32 | Precision::Bf16 => 1,
    }
}

/// A loaded model with its workers. Cheap to share behind an `Arc`.
pub struct Engine {
    manifest: Arc<Manifest>,
    identity: ModelIdentity,
    tx: Option<mpsc::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The queue's receiver, the report-work counters and the compiled network, shared
    /// with the workers.
    shared: Arc<Shared>,
    // Heatmap networks of batch > 1 live as long as the requests made from them.
    compiled: Mutex<Vec<Box<dyn Compiled>>>,
    max_pixels: u64,
    /// The head class-activation maps are computed with (`[heatmap] method = "cam"`).
    cam: Option<Arc<CamHead>>,
    /// The network run, at its precision.
    network: Network,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("identity", &self.identity)
            .field("workers", &self.workers())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads the manifest `cfg.model` (checking its checksums), the OpenVINO runtime and
    /// compiles the model on `cfg.device` with `cfg.performance_hint`, at the precision
    /// `cfg.precision` resolves to (see [`gate::resolve`]).
    pub fn new(cfg: &InferenceConfig) -> Result<Engine, EngineError> {
        Self::from_manifest_path(&cfg.model, cfg)
    }

    /// As [`Engine::new`] with another manifest (the offline tool's `--model`).
    pub fn from_manifest_path(
        path: &std::path::Path,
        cfg: &InferenceConfig,
    ) -> Result<Engine, EngineError> {
        let manifest = Manifest::load(path)?;
        let setting: PrecisionSetting = cfg
            .precision
            .parse()
            .map_err(|e: super::precision::BadPrecision| EngineError::Model(e.to_string()))?;
        let resolved = gate::resolve(&manifest, setting, &CpuFlags::detect());
        log::info!(
            "model {}: precision {} ({})",
            manifest.name,
            resolved.network.precision,
            resolved.reason
        );
        Self::load(manifest, resolved.network, cfg)
    }

    /// The model at `precision` whether or not that precision passed a gate (for
    /// measuring it: `duli evaluate --precision`, `duli infer --precision`).
    pub fn at_precision(
        path: &std::path::Path,
        cfg: &InferenceConfig,
        precision: Precision,
    ) -> Result<Engine, EngineError> {
        let manifest = Manifest::load(path)?;
        let network =
            gate::network(&manifest, precision).map_err(|e| EngineError::Model(e.to_string()))?;
        Self::load(manifest, network, cfg)
    }

    fn load(
        manifest: Manifest,
        network: Network,
        cfg: &InferenceConfig,
    ) -> Result<Engine, EngineError> {
        // The manifest's own files; an INT8 network's files were verified when its
        // `Network` was made (`gate::network` and `gate::resolve` read it through
        // `int8::load`, which checks them against its build record).
        let sha256 = manifest.verify_files()?;
        let backend = super::openvino::OpenVino::new(cfg)?;
        let options = EngineOptions {
            scheduling: Scheduling::from_hint(&cfg.performance_hint),
            batch: batch_for(network.precision, cfg.tool_batch),
            network,
        };
        let mut engine = Self::start(manifest, sha256, Box::new(backend), options)?;
        engine.max_pixels = cfg.max_pixels;
        Ok(engine)
    }

    /// Compiles a verified manifest on any backend at f32 for latency and starts its
    /// workers.
    pub fn with_backend(
        manifest: Manifest,
        sha256: String,
        backend: Box<dyn Backend>,
    ) -> Result<Engine, EngineError> {
        let network = Network {
            precision: Precision::F32,
            manifest: manifest.clone(),
            sha256: sha256.clone(),
            gate_dir: manifest.dir.clone(),
        };
        Self::start(
            manifest,
            sha256,
            backend,
            EngineOptions {
                network,
                scheduling: Scheduling::Latency,
                batch: 1,
            },
        )
    }

    /// Compiles `options.network` on `backend` and starts the workers.
    pub fn start(
        manifest: Manifest,
        sha256: String,
        backend: Box<dyn Backend>,
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let precision = options.network.precision;
        let mode = match options.scheduling {
            Scheduling::Latency => Mode::Latency,
            Scheduling::Throughput | Scheduling::Auto => Mode::Throughput,
        };
        let name = backend.name();
        let networks = Arc::new(Networks::new(
            Compiler {
                backend: Mutex::new(backend),
                network: options.network.manifest.clone(),
                precision,
                batch: match options.scheduling {
                    Scheduling::Throughput => options.batch.max(1),
                    Scheduling::Latency | Scheduling::Auto => 1,
                },
            },
            mode,
            options.scheduling == Scheduling::Auto,
        )?);
        let workers = networks.workers();
        let batch = networks.batch();
        let (tx, rx) = mpsc::channel::<Job>(workers * QUEUE_PER_WORKER.max(batch));
        let shared = Arc::new(Shared {
            rx: Mutex::new(rx),
            pending: AtomicUsize::new(0),
            preparing: Arc::new(AtomicUsize::new(0)),
            networks,
            input_len: manifest.input_len(),
        });
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("infer-{i}"))
                .spawn(move || worker(i, &shared))
                .map_err(|e| EngineError::Backend(BackendError::Compile(e.to_string())))?;
            threads.push(handle);
        }
        let cpu_feature = precision.cpu_feature(&CpuFlags::detect()).to_string();
        let identity = ModelIdentity {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            sha256,
            backend: name,
            precision,
            network_sha256: options.network.sha256.clone(),
            weights_sha256: options
                .network
                .manifest
                .file
                .weights_sha256
                .clone()
                .unwrap_or_default()
                .to_ascii_lowercase(),
            cpu_feature,
        };
        log::info!(
            "model {} {} loaded on {} at {precision} ({}) with {workers} infer request(s) of {batch} image(s), {:?} scheduling",
            identity.name,
            identity.version,
            identity.backend,
            identity.cpu_feature,
            options.scheduling
        );
        let cam = cam_head(&manifest);
        Ok(Engine {
            cam,
            network: options.network,
            manifest: Arc::new(manifest),
            identity,
            tx: Some(tx),
            threads,
            shared,
            compiled: Mutex::new(Vec::new()),
            max_pixels: crate::config::DEFAULT_MAX_PIXELS,
        })
    }

    /// Largest image prepared for the model (`inference.max_pixels`).
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// The head of a `cam` model's class-activation maps (read from its f32 network).
    pub fn cam(&self) -> Option<&Arc<CamHead>> {
        self.cam.as_ref()
    }

    /// The model's manifest.
    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// The network run, at its precision (for its gate records).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Name, version and checksum of the model, and the backend.
    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// Number of worker threads (infer requests).
    pub fn workers(&self) -> usize {
        self.shared.networks.workers()
    }

    /// Images per inference call ([`EngineOptions::batch`] under throughput scheduling,
    /// else 1).
    pub fn batch(&self) -> usize {
        self.shared.networks.batch()
    }

    /// Images queued or running now.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Relaxed)
    }

    /// Marks a report image as being decoded for this engine until the guard is dropped,
    /// so background work (heatmaps) waits for it as for queued inference.
    pub fn preparing(&self) -> Preparing {
        self.shared.preparing.fetch_add(1, Ordering::Relaxed);
        Preparing(Arc::clone(&self.shared.preparing))
    }

    /// Report work now: images being decoded, queued or running. Background work waits
    /// while there is any.
    pub fn report_work(&self) -> usize {
        self.shared.report_work()
    }

    /// Runs one batch-1 input; waits for queue space (back-pressure), then for the result.
    pub async fn infer(&self, input: Vec<f32>) -> Result<Vec<f32>, EngineError> {
        Ok(self.infer_outputs(input).await?.values)
    }

    /// [`Engine::infer`] with the features output of a `cam` model.
    pub async fn infer_outputs(&self, input: Vec<f32>) -> Result<Outputs, EngineError> {
        self.submit(input, None).await
    }

    /// [`Engine::infer_outputs`] for a report image decoded under `mark` (from
    /// [`Engine::preparing`]): the image counts as queued before its mark ends, so report
    /// work never reads zero in between, and an image alone is never counted twice (which
    /// AUTO scheduling would take for a burst).
    pub async fn infer_prepared(
        &self,
        input: Vec<f32>,
        mark: Preparing,
    ) -> Result<Outputs, EngineError> {
        self.submit(input, Some(mark)).await
    }

    async fn submit(
        &self,
        input: Vec<f32>,
        mark: Option<Preparing>,
    ) -> Result<Outputs, EngineError> {
        let tx = self.tx.as_ref().ok_or(EngineError::Stopped)?;
        let (reply, rx) = oneshot::channel();
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        drop(mark);
        if tx.send(Job { input, reply }).await.is_err() {
            self.shared.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Stopped);
        }
        rx.await
            .map_err(|_| EngineError::Stopped)?
            .map_err(EngineError::from)
    }

    /// Blocking form of [`Engine::infer`] for threads outside the async runtime.
    pub fn infer_blocking(&self, input: Vec<f32>) -> Result<Vec<f32>, EngineError> {
        Ok(self.infer_outputs_blocking(input)?.values)
    }

    /// Blocking form of [`Engine::infer_outputs`].
    pub fn infer_outputs_blocking(&self, input: Vec<f32>) -> Result<Outputs, EngineError> {
        let tx = self.tx.as_ref().ok_or(EngineError::Stopped)?;
        let (reply, rx) = oneshot::channel();
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        if tx.blocking_send(Job { input, reply }).is_err() {
            self.shared.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Stopped);
        }
        rx.blocking_recv()
            .map_err(|_| EngineError::Stopped)?
            .map_err(EngineError::from)
    }

    /// A request for background work (heatmaps), `batch` inputs per call.
    ///
    /// Batch 1 is one more request on the current report compilation (no second copy of
    /// the weights in memory; the runtime runs it between report inferences, and the
    /// heatmap worker waits while reports are queued). A larger batch compiles the model
    /// again for it, on one runtime thread so report inference keeps the other cores.
    pub fn background_request(&self, batch: usize) -> Result<Box<dyn Request>, EngineError> {
        if batch == 1 && self.batch() == 1 {
            return Ok(Box::new(self.shared.networks.on_current()?));
        }
        let mut compiled = self.shared.networks.compiler().compile_background(batch)?;
        let request = compiled.request()?;
        if let Ok(mut keep) = self.compiled.lock() {
            keep.push(compiled);
        }
        Ok(request)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The class-activation head of a `cam` manifest, read from its network files; `None` when
/// the manifest is not `cam` or its head is not one the maps support (logged).
fn cam_head(manifest: &Manifest) -> Option<Arc<CamHead>> {
    match cam::for_manifest(manifest) {
        Ok(head) => head.map(Arc::new),
        Err(e) => {
            log::warn!("{}: class-activation maps unavailable: {e}", manifest.name);
            None
        }
    }
}

fn worker(index: usize, shared: &Shared) {
    let batch = shared.networks.batch();
    loop {
        let jobs = {
            let Ok(mut rx) = shared.rx.lock() else { return };
            let Some(first) = rx.blocking_recv() else {
                return;
            };
            let mut jobs = vec![first];
            gather(&mut rx, &mut jobs, batch);
            jobs
        };
        let n = jobs.len();
        if batch == 1 {
            for job in jobs {
                let out = shared.networks.run(index, &job.input, shared.report_work());
                shared.pending.fetch_sub(1, Ordering::Relaxed);
                let _ = job.reply.send(out);
            }
        } else {
            // Counted out before the answers go, as one image at a time does: whoever
            // holds an answer sees the engine no longer busy with it.
            let answers = run_batch(index, shared, jobs, batch);
            shared.pending.fetch_sub(n, Ordering::Relaxed);
            for (reply, out) in answers {
                let _ = reply.send(out);
            }
        }
    }
}

/// Adds queued jobs to `jobs` until it holds `batch`, waiting up to [`BATCH_FILL_WAIT`]
/// for them (the queue's senders are decoding the next images).
fn gather(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, batch: usize) {
    let deadline = std::time::Instant::now() + BATCH_FILL_WAIT;
    while jobs.len() < batch {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {
                if std::time::Instant::now() >= deadline {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
    }
}

/// Runs `jobs` (at most `batch`) as one call of the batched compilation: their inputs one
/// after the other, zeros for the places left; returns each job's reply with its share of
/// the outputs. A job whose input is not one image's size is refused alone.
fn run_batch(index: usize, shared: &Shared, jobs: Vec<Job>, batch: usize) -> Vec<Answer> {
    let len = shared.input_len;
    let (jobs, wrong): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.input.len() == len);
    let mut answers: Vec<Answer> = wrong
        .into_iter()
        .map(|job| {
            let refused = Err(BackendError::Infer(format!(
                "input has {} values, the network takes {len}",
                job.input.len()
            )));
            (job.reply, refused)
        })
        .collect();
    if jobs.is_empty() {
        return answers;
    }
    let mut input = vec![0.0f32; len * batch];
    for (place, job) in input.chunks_exact_mut(len).zip(&jobs) {
        place.copy_from_slice(&job.input);
    }
    match shared.networks.run(index, &input, shared.report_work()) {
        Ok(out) => {
            let values = split(&out.values, batch);
            let features = out.features.as_deref().map(|f| split(f, batch));
            for (i, job) in jobs.into_iter().enumerate() {
                let share = match (&values, &features) {
                    (Some(v), None) => Ok(Outputs {
                        values: v[i].to_vec(),
                        features: None,
                    }),
                    (Some(v), Some(Some(f))) => Ok(Outputs {
                        values: v[i].to_vec(),
                        features: Some(f[i].to_vec()),
                    }),
                    _ => Err(BackendError::Infer(format!(
                        "the batch of {batch} gave {} output values, not a multiple of it",
                        out.values.len()
                    ))),
                };
                answers.push((job.reply, share));
            }
        }
        Err(e) => answers.extend(jobs.into_iter().map(|job| (job.reply, Err(e.clone())))),
    }
    answers
}

/// A job's reply channel and what it is answered.
type Answer = (
    oneshot::Sender<Result<Outputs, BackendError>>,
    Result<Outputs, BackendError>,
);

/// `values` cut into `parts` equal shares, or `None` when they do not divide evenly.
fn split(values: &[f32], parts: usize) -> Option<Vec<&[f32]>> {
    if parts == 0 || values.is_empty() || values.len() % parts != 0 {
        return None;
    }
    Some(values.chunks_exact(values.len() / parts).collect())
}
