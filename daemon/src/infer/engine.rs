//! [`Engine`]: a verified model compiled on a backend, with one worker thread per infer
//! request (as many as the runtime calls optimal under the configured performance hint),
//! fed by a bounded queue so a burst of images waits instead of growing memory.
//!
//! With `performance_hint = "AUTO"` the network is compiled for throughput (several
//! requests) and, while no burst runs, once more for latency (one request on every core).
//! An image that is alone in the engine runs on the latency request; when images wait or
//! are being decoded, the workers run them on their throughput requests. The two never run
//! at the same time (a read/write lock), so the cores are never oversubscribed. A burst
//! releases the latency network, so the engine holds one compiled copy of the weights while
//! it is under load (an f32 copy of this model is about 100 MiB); the first image alone at
//! least [`LATENCY_AGAIN_AFTER`] after the burst compiles it again in the background, and
//! runs on a throughput request meanwhile.
//!
//! Heatmaps of batch 1 run as one more request on the report network, the one compiled
//! first and kept (one compiled copy of the weights in memory); the heatmap worker waits
//! while report images are decoded or inferred ([`Engine::report_work`]).

use super::backend::{Backend, BackendError, CompileOptions, Compiled, Mode, Outputs, Request};
use super::cam::{self, CamHead};
use super::gate::{self, Network};
use super::manifest::{Manifest, ManifestError};
use super::precision::{CpuFlags, Precision, PrecisionSetting};
use crate::config::InferenceConfig;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Images waiting per worker before senders wait (back-pressure).
const QUEUE_PER_WORKER: usize = 2;

/// How long after the last image of a burst an image alone has AUTO's latency network
/// compiled again (shorter in unit tests).
pub const LATENCY_AGAIN_AFTER: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(10)
};

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
    pending: Arc<AtomicUsize>,
    /// Report images being decoded (see [`Engine::preparing`]).
    preparing: Arc<AtomicUsize>,
    /// The latency network of AUTO scheduling.
    solo: Option<Solo>,
    /// Held shared by throughput runs, exclusively by a run on the latency network.
    cores: RwLock<()>,
}

impl Shared {
    /// Report images queued, running or being decoded.
    fn report_work(&self) -> usize {
        self.pending.load(Ordering::Relaxed) + self.preparing.load(Ordering::Relaxed)
    }
}

/// AUTO scheduling's latency network: held while images come one at a time, released for
/// a burst, compiled again afterwards.
struct Solo {
    /// The latency request and its network, while held.
    held: Mutex<Option<Latency>>,
    /// What compiles it again.
    backend: Arc<Mutex<Box<dyn Backend>>>,
    network: Manifest,
    precision: Precision,
    /// A compilation is under way.
    compiling: AtomicBool,
    /// When an image of a burst last ran.
    released_at: Mutex<Option<Instant>>,
}

/// A latency request with the network it was made from (the request is dropped first).
struct Latency {
    request: Box<dyn Request>,
    _network: Box<dyn Compiled>,
}

impl Solo {
    fn compile(&self) -> Result<Latency, BackendError> {
        let mut backend = self
            .backend
            .lock()
            .map_err(|_| BackendError::Compile("backend lock poisoned".into()))?;
        let mut network = backend.compile(
            &self.network,
            CompileOptions {
                batch: 1,
                background: false,
                precision: self.precision,
                mode: Mode::Latency,
            },
        )?;
        Ok(Latency {
            request: network.request()?,
            _network: network,
        })
    }

    /// For an image of a burst: releases the latency network if held (waits for a run on
    /// it to end) and notes the time.
    fn release(&self) {
        if let Ok(mut at) = self.released_at.lock() {
            *at = Some(Instant::now());
        }
        let released = self.held.lock().ok().and_then(|mut held| held.take());
        if released.is_some() {
            log::debug!("inference burst: latency network released");
        }
    }

    /// For an image alone while the latency network is released: compiles it again in the
    /// background once [`LATENCY_AGAIN_AFTER`] has passed since the burst's last image, unless a
    /// compilation is under way. Kept only if no burst began meanwhile.
    fn compile_again_later(shared: &Arc<Shared>) {
        let Some(solo) = &shared.solo else { return };
        let quiet = solo
            .released_at
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_none_or(|at| at.elapsed() >= LATENCY_AGAIN_AFTER);
        if !quiet || solo.compiling.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("infer-latency".into())
            .spawn(move || {
                let Some(solo) = &shared.solo else { return };
                match solo.compile() {
                    Ok(latency) if shared.report_work() <= 1 => {
                        if let Ok(mut held) = solo.held.lock() {
                            *held = Some(latency);
                        }
                        log::debug!("inference: latency network compiled again");
                    }
                    Ok(_) => log::debug!("inference: a burst began, latency network not kept"),
                    Err(e) => log::warn!("inference: latency network not compiled again: {e}"),
                }
                solo.compiling.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            solo.compiling.store(false, Ordering::Release);
        }
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
}

/// A loaded model with its workers. Cheap to share behind an `Arc`.
pub struct Engine {
    manifest: Arc<Manifest>,
    /// The manifest whose `file` is the network run (the INT8 IR for int8).
    network: Manifest,
    precision: Precision,
    identity: ModelIdentity,
    tx: Option<mpsc::Sender<Job>>,
    workers: usize,
    pending: Arc<AtomicUsize>,
    /// Report images being decoded for this engine (see [`Engine::preparing`]).
    preparing: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
    // Compiled networks live as long as the requests made from them.
    compiled: Mutex<Vec<Box<dyn Compiled>>>,
    backend: Arc<Mutex<Box<dyn Backend>>>,
    max_pixels: u64,
    /// The head class-activation maps are computed with (`[heatmap] method = "cam"`).
    cam: Option<Arc<CamHead>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("identity", &self.identity)
            .field("workers", &self.workers)
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
        let sha256 = manifest.verify_files()?;
        if network.precision == Precision::Int8 {
            network.manifest.verify_files()?;
        }
        let backend = super::openvino::OpenVino::new(cfg)?;
        let options = EngineOptions {
            network,
            scheduling: Scheduling::from_hint(&cfg.performance_hint),
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
            },
        )
    }

    /// Compiles `options.network` on `backend` and starts the workers.
    pub fn start(
        manifest: Manifest,
        sha256: String,
        mut backend: Box<dyn Backend>,
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let precision = options.network.precision;
        let mode = match options.scheduling {
            Scheduling::Latency => Mode::Latency,
            Scheduling::Throughput | Scheduling::Auto => Mode::Throughput,
        };
        let mut compiled = backend.compile(
            &options.network.manifest,
            CompileOptions {
                batch: 1,
                background: false,
                precision,
                mode,
            },
        )?;
        let name = backend.name();
        let backend = Arc::new(Mutex::new(backend));
        let solo = match options.scheduling {
            Scheduling::Auto => {
                let mut solo = Solo {
                    held: Mutex::new(None),
                    backend: Arc::clone(&backend),
                    network: options.network.manifest.clone(),
                    precision,
                    compiling: AtomicBool::new(false),
                    released_at: Mutex::new(None),
                };
                let latency = solo.compile()?;
                solo.held = Mutex::new(Some(latency));
                Some(solo)
            }
            Scheduling::Latency | Scheduling::Throughput => None,
        };
        let workers = compiled.optimal_requests().max(1);
        let (tx, rx) = mpsc::channel::<Job>(workers * QUEUE_PER_WORKER);
        let pending = Arc::new(AtomicUsize::new(0));
        let preparing = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            rx: Mutex::new(rx),
            pending: Arc::clone(&pending),
            preparing: Arc::clone(&preparing),
            solo,
            cores: RwLock::new(()),
        });
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let request = compiled.request()?;
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("infer-{i}"))
                .spawn(move || worker(request, &shared))
                .map_err(|e| EngineError::Backend(BackendError::Compile(e.to_string())))?;
            threads.push(handle);
        }
        let kept = vec![compiled];
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
            "model {} {} loaded on {} at {precision} ({}) with {workers} infer request(s), {:?} scheduling",
            identity.name,
            identity.version,
            identity.backend,
            identity.cpu_feature,
            options.scheduling
        );
        let cam = cam_head(&manifest);
        Ok(Engine {
            cam,
            manifest: Arc::new(manifest),
            network: options.network.manifest,
            precision,
            identity,
            tx: Some(tx),
            workers,
            pending,
            preparing,
            threads,
            compiled: Mutex::new(kept),
            backend,
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

    /// Name, version and checksum of the model, and the backend.
    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// Number of worker threads (infer requests).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Images queued or running now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Marks a report image as being decoded for this engine until the guard is dropped,
    /// so background work (heatmaps) waits for it as for queued inference.
    pub fn preparing(&self) -> Preparing {
        self.preparing.fetch_add(1, Ordering::Relaxed);
        Preparing(Arc::clone(&self.preparing))
    }

    /// Report work now: images being decoded, queued or running. Background work waits
    /// while there is any.
    pub fn report_work(&self) -> usize {
        self.preparing.load(Ordering::Relaxed) + self.pending()
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
        self.pending.fetch_add(1, Ordering::Relaxed);
        drop(mark);
        if tx.send(Job { input, reply }).await.is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
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
        self.pending.fetch_add(1, Ordering::Relaxed);
        if tx.blocking_send(Job { input, reply }).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Stopped);
        }
        rx.blocking_recv()
            .map_err(|_| EngineError::Stopped)?
            .map_err(EngineError::from)
    }

    /// A request for background work (heatmaps), `batch` inputs per call.
    ///
    /// Batch 1 is another request on the report network, the first one compiled and the
    /// one kept (the throughput network under AUTO scheduling; no second copy of the
    /// weights in memory; the runtime runs it between report inferences, and the heatmap
    /// worker waits while reports are queued). A larger batch compiles the
    /// model again for it, on one runtime thread so report inference keeps the other cores.
    pub fn background_request(&self, batch: usize) -> Result<Box<dyn Request>, EngineError> {
        if batch == 1 {
            let mut kept = self
                .compiled
                .lock()
                .map_err(|_| EngineError::Model("compiled network lock poisoned".into()))?;
            if let Some(report) = kept.first_mut() {
                return Ok(report.request()?);
            }
        }
        let mut backend = self
            .backend
            .lock()
            .map_err(|_| EngineError::Model("backend lock poisoned".into()))?;
        let mut compiled = backend.compile(
            &self.network,
            CompileOptions {
                batch,
                background: true,
                precision: self.precision,
                mode: Mode::Throughput,
            },
        )?;
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

fn worker(mut own: Box<dyn Request>, shared: &Arc<Shared>) {
    loop {
        let job = {
            let Ok(mut rx) = shared.rx.lock() else { return };
            rx.blocking_recv()
        };
        let Some(job) = job else { return };
        let out = match &shared.solo {
            Some(solo) => run_auto(&mut own, solo, shared, &job.input),
            None => {
                let _cores = shared.cores.read();
                own.run_outputs(&job.input)
            }
        };
        shared.pending.fetch_sub(1, Ordering::Relaxed);
        let _ = job.reply.send(out);
    }
}

/// One image under AUTO scheduling: alone in the engine (nothing else queued, running or
/// being decoded), on the latency request with every core to itself; else the burst
/// releases the latency network and the image runs on this worker's throughput request.
fn run_auto(
    own: &mut Box<dyn Request>,
    solo: &Solo,
    shared: &Arc<Shared>,
    input: &[f32],
) -> Result<Outputs, BackendError> {
    if shared.report_work() <= 1 {
        let _cores = shared.cores.write();
        let mut held = solo
            .held
            .lock()
            .map_err(|_| BackendError::Infer("latency request poisoned".into()))?;
        if let Some(latency) = held.as_mut() {
            return latency.request.run_outputs(input);
        }
        drop(held);
        Solo::compile_again_later(shared);
        return own.run_outputs(input);
    }
    solo.release();
    let _cores = shared.cores.read();
    own.run_outputs(input)
}
