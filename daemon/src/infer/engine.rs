//! [`Engine`]: a verified model compiled on a backend, with one worker thread per infer
//! request (as many as the runtime calls optimal under the configured performance hint),
//! fed by a bounded queue so a burst of images waits instead of growing memory.

use super::backend::{Backend, BackendError, CompileOptions, Compiled, Request};
use super::manifest::{Manifest, ManifestError};
use crate::config::InferenceConfig;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Images waiting per worker before senders wait (back-pressure).
const QUEUE_PER_WORKER: usize = 2;

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

struct Job {
    input: Vec<f32>,
    reply: oneshot::Sender<Result<Vec<f32>, BackendError>>,
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
}

/// A loaded model with its workers. Cheap to share behind an `Arc`.
pub struct Engine {
    manifest: Arc<Manifest>,
    identity: ModelIdentity,
    tx: Option<mpsc::Sender<Job>>,
    workers: usize,
    pending: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
    // Compiled networks live as long as the requests made from them.
    compiled: Mutex<Vec<Box<dyn Compiled>>>,
    backend: Mutex<Box<dyn Backend>>,
    max_pixels: u64,
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
    /// compiles the model on `cfg.device` with `cfg.performance_hint`.
    pub fn new(cfg: &InferenceConfig) -> Result<Engine, EngineError> {
        Self::from_manifest_path(&cfg.model, cfg)
    }

    /// As [`Engine::new`] with another manifest (the offline tool's `--model`).
    pub fn from_manifest_path(
        path: &std::path::Path,
        cfg: &InferenceConfig,
    ) -> Result<Engine, EngineError> {
        let manifest = Manifest::load(path)?;
        let sha256 = manifest.verify_files()?;
        let backend = super::openvino::OpenVino::new(cfg)?;
        let mut engine = Self::with_backend(manifest, sha256, Box::new(backend))?;
        engine.max_pixels = cfg.max_pixels;
        Ok(engine)
    }

    /// Compiles a verified manifest on any backend and starts its workers.
    pub fn with_backend(
        manifest: Manifest,
        sha256: String,
        mut backend: Box<dyn Backend>,
    ) -> Result<Engine, EngineError> {
        let mut compiled = backend.compile(
            &manifest,
            CompileOptions {
                batch: 1,
                background: false,
            },
        )?;
        let workers = compiled.optimal_requests().max(1);
        let (tx, rx) = mpsc::channel::<Job>(workers * QUEUE_PER_WORKER);
        let rx = Arc::new(Mutex::new(rx));
        let pending = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let request = compiled.request()?;
            let rx = Arc::clone(&rx);
            let pending = Arc::clone(&pending);
            let handle = std::thread::Builder::new()
                .name(format!("infer-{i}"))
                .spawn(move || worker(request, &rx, &pending))
                .map_err(|e| EngineError::Backend(BackendError::Compile(e.to_string())))?;
            threads.push(handle);
        }
        let identity = ModelIdentity {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            sha256,
            backend: backend.name(),
        };
        log::info!(
            "model {} {} loaded on {} with {workers} infer request(s)",
            identity.name,
            identity.version,
            identity.backend
        );
        Ok(Engine {
            manifest: Arc::new(manifest),
            identity,
            tx: Some(tx),
            workers,
            pending,
            threads,
            compiled: Mutex::new(vec![compiled]),
            backend: Mutex::new(backend),
            max_pixels: crate::config::DEFAULT_MAX_PIXELS,
        })
    }

    /// Largest image prepared for the model (`inference.max_pixels`).
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
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

    /// Runs one batch-1 input; waits for queue space (back-pressure), then for the result.
    pub async fn infer(&self, input: Vec<f32>) -> Result<Vec<f32>, EngineError> {
        let tx = self.tx.as_ref().ok_or(EngineError::Stopped)?;
        let (reply, rx) = oneshot::channel();
        self.pending.fetch_add(1, Ordering::Relaxed);
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

    /// Compiles the same model again for background work (heatmaps): `batch` inputs per
    /// call, one runtime thread. Returns the request to run it with.
    pub fn background_request(&self, batch: usize) -> Result<Box<dyn Request>, EngineError> {
        let mut backend = self
            .backend
            .lock()
            .map_err(|_| EngineError::Model("backend lock poisoned".into()))?;
        let mut compiled = backend.compile(
            &self.manifest,
            CompileOptions {
                batch,
                background: true,
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

fn worker(mut request: Box<dyn Request>, rx: &Mutex<mpsc::Receiver<Job>>, pending: &AtomicUsize) {
    loop {
        let job = {
            let Ok(mut rx) = rx.lock() else { return };
            rx.blocking_recv()
        };
        let Some(job) = job else { return };
        let out = request.run(&job.input);
        pending.fetch_sub(1, Ordering::Relaxed);
        let _ = job.reply.send(out);
    }
}
