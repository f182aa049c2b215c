//! The compiled network the inference workers run ([`Networks`]): one compilation at a
//! time, so one copy of the weights is in memory (an f32 copy of the shipped model is about
//! 100 MiB).
//!
//! Under `performance_hint = "AUTO"` it is swapped between two compilations: tuned for
//! latency (one request on every core) while images come one at a time, and for throughput
//! (several requests) while images wait or are being decoded. The first image of a burst
//! swaps to throughput; the first image alone at least [`LATENCY_AGAIN_AFTER`] after the
//! burst's last one swaps back, and until then images alone run on a throughput request.
//! A swap drops the old compilation before compiling the new one (about 150 ms on the
//! shipped model), so the two are never in memory together; runs wait meanwhile.
//!
//! Heatmap work of batch 1 runs on one more request of whichever compilation is current
//! ([`OnCurrent`]).

use super::backend::{Backend, BackendError, CompileOptions, Compiled, Mode, Outputs, Request};
use super::manifest::Manifest;
use super::precision::Precision;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long after the last image of a burst an image alone swaps AUTO scheduling back to
/// the latency compilation (shorter in unit tests).
pub const LATENCY_AGAIN_AFTER: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(10)
};

/// What compiles the network: the backend, the network and its precision.
pub struct Compiler {
    /// The runtime.
    pub backend: Mutex<Box<dyn Backend>>,
    /// The manifest of the network run (the INT8 IR's for int8).
    pub network: Manifest,
    /// Its precision.
    pub precision: Precision,
    /// Images per call of the throughput compilation (1 but for the offline tools' batch
    /// runs, see [`super::engine::EngineOptions::batch`]; AUTO scheduling keeps 1); the
    /// latency compilation always takes one.
    pub batch: usize,
}

impl Compiler {
    fn compile_with(&self, options: CompileOptions) -> Result<Box<dyn Compiled>, BackendError> {
        let mut backend = self
            .backend
            .lock()
            .map_err(|_| BackendError::Compile("backend lock poisoned".into()))?;
        backend.compile(&self.network, options)
    }

    /// Compiles the network for report inference, tuned for `mode`: [`Compiler::batch`]
    /// images per call for throughput, one for latency.
    fn compile(&self, mode: Mode) -> Result<Box<dyn Compiled>, BackendError> {
        self.compile_with(CompileOptions {
            batch: match mode {
                Mode::Throughput => self.batch.max(1),
                Mode::Latency => 1,
            },
            background: false,
            precision: self.precision,
            mode,
        })
    }

    /// Compiles the network for background work (heatmaps) of `batch` inputs per call, on
    /// one runtime thread so report inference keeps the other cores.
    pub fn compile_background(&self, batch: usize) -> Result<Box<dyn Compiled>, BackendError> {
        self.compile_with(CompileOptions {
            batch,
            background: true,
            precision: self.precision,
            mode: Mode::Throughput,
        })
    }
}

/// One compilation with its requests (fields drop in order: the requests before the
/// network they were made from).
struct Current {
    mode: Mode,
    /// Report requests; worker `i` runs on `requests[i % len]`.
    requests: Vec<Mutex<Box<dyn Request>>>,
    /// The heatmap request, once one was asked for ([`OnCurrent`]).
    background: Option<Mutex<Box<dyn Request>>>,
    /// In a mutex only to be shared between the workers (it is used under the write lock).
    network: Mutex<Box<dyn Compiled>>,
}

/// The compiled network the workers run, and AUTO scheduling's swaps.
pub struct Networks {
    current: RwLock<Option<Current>>,
    compiler: Compiler,
    auto: bool,
    workers: usize,
    /// When an image of a burst last ran (AUTO).
    last_burst: Mutex<Option<Instant>>,
    /// When a swap last failed: none is tried again for [`LATENCY_AGAIN_AFTER`].
    failed_at: Mutex<Option<Instant>>,
    /// Heatmap work asked for a request on the current compilation.
    background_wanted: AtomicBool,
}

fn poisoned() -> BackendError {
    BackendError::Infer("compiled network lock poisoned".into())
}

impl Networks {
    /// Compiles the network for `mode`, or for AUTO scheduling (`auto`): its throughput
    /// compilation first, to learn how many requests keep the device busy (one worker
    /// each), then, in its place, the latency compilation it starts with.
    pub fn new(compiler: Compiler, mode: Mode, auto: bool) -> Result<Networks, BackendError> {
        let mut networks = Networks {
            current: RwLock::new(None),
            compiler,
            auto,
            workers: 1,
            last_burst: Mutex::new(None),
            failed_at: Mutex::new(None),
            background_wanted: AtomicBool::new(false),
        };
        if auto {
            let throughput = networks.compiler.compile(Mode::Throughput)?;
            networks.workers = throughput.optimal_requests().max(1);
            drop(throughput);
            networks.swap(Mode::Latency)?;
        } else {
            let network = networks.compiler.compile(mode)?;
            networks.workers = network.optimal_requests().max(1);
            let current = networks.current_from(mode, network)?;
            networks.current = RwLock::new(Some(current));
        }
        Ok(networks)
    }

    /// What compiles the network (also for background work of a larger batch).
    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    /// Worker threads (report requests of the throughput compilation, or of the only one).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Images per call of the compilation the workers run.
    pub fn batch(&self) -> usize {
        match self.mode() {
            Some(Mode::Throughput) => self.compiler.batch.max(1),
            _ => 1,
        }
    }

    /// Runs `input` on worker `worker`'s request; under AUTO scheduling, swaps first when
    /// `report_work` (images queued, running or being decoded, this one included) calls
    /// for the other compilation.
    pub fn run(
        &self,
        worker: usize,
        input: &[f32],
        report_work: usize,
    ) -> Result<Outputs, BackendError> {
        // A swap that failed was logged and put the former compilation back: the image
        // runs on that one (it fails only when there is none).
        if self.auto && self.adapt(report_work).is_err() {
            log::debug!("inference: running on the compilation held");
        }
        let current = self.current.read().map_err(|_| poisoned())?;
        let current = current
            .as_ref()
            .ok_or_else(|| BackendError::Infer("no compiled network (a swap failed)".into()))?;
        let mut request = current.requests[worker % current.requests.len()]
            .lock()
            .map_err(|_| poisoned())?;
        request.run_outputs(input)
    }

    fn mode(&self) -> Option<Mode> {
        self.current.read().ok()?.as_ref().map(|c| c.mode)
    }

    /// AUTO: throughput for a burst at once; latency again for an image alone once the
    /// burst's last image is [`LATENCY_AGAIN_AFTER`] old.
    fn adapt(&self, report_work: usize) -> Result<(), BackendError> {
        let alone = report_work <= 1;
        let mut last = self.last_burst.lock().map_err(|_| poisoned())?;
        if !alone {
            *last = Some(Instant::now());
        }
        let quiet = last.is_none_or(|at| at.elapsed() >= LATENCY_AGAIN_AFTER);
        drop(last);
        match (self.mode(), alone) {
            (Some(Mode::Latency), false) => self.swap(Mode::Throughput),
            (Some(Mode::Throughput), true) if quiet => self.swap(Mode::Latency),
            (None, _) => self.swap(if alone {
                Mode::Latency
            } else {
                Mode::Throughput
            }),
            _ => Ok(()),
        }
    }

    /// Makes `mode` current: waits for runs on the current compilation to end, drops it,
    /// then compiles `mode` (never both in memory). When that fails, the former mode is
    /// compiled again so work goes on, no swap is tried for [`LATENCY_AGAIN_AFTER`], and
    /// the error is returned.
    fn swap(&self, mode: Mode) -> Result<(), BackendError> {
        let mut current = self.current.write().map_err(|_| poisoned())?;
        let former = current.as_ref().map(|c| c.mode);
        if former == Some(mode) {
            return Ok(()); // another worker swapped meanwhile
        }
        // Checked under the lock, so workers that all saw the need at once try once.
        let failed_lately = self
            .failed_at
            .lock()
            .map_err(|_| poisoned())?
            .is_some_and(|at| at.elapsed() < LATENCY_AGAIN_AFTER);
        if failed_lately && former.is_some() {
            return Ok(());
        }
        drop(current.take());
        let start = Instant::now();
        match self.current_for(mode) {
            Ok(c) => {
                *current = Some(c);
                if former.is_some() {
                    let why = match mode {
                        Mode::Throughput => "images wait",
                        Mode::Latency => "images come one at a time again",
                    };
                    log::info!(
                        "inference: {why}: network compiled for {} in {} ms",
                        mode.as_str(),
                        start.elapsed().as_millis()
                    );
                }
                Ok(())
            }
            Err(e) => {
                log::error!(
                    "inference: cannot compile the network for {}: {e}",
                    mode.as_str()
                );
                if let Ok(mut at) = self.failed_at.lock() {
                    *at = Some(Instant::now());
                }
                if let Some(back) = former {
                    *current = self.current_for(back).ok();
                }
                Err(e)
            }
        }
    }

    fn current_for(&self, mode: Mode) -> Result<Current, BackendError> {
        self.current_from(mode, self.compiler.compile(mode)?)
    }

    fn current_from(
        &self,
        mode: Mode,
        mut network: Box<dyn Compiled>,
    ) -> Result<Current, BackendError> {
        let n = match mode {
            Mode::Throughput => self.workers,
            Mode::Latency if self.auto => 1,
            Mode::Latency => self.workers,
        };
        let requests = (0..n)
            .map(|_| network.request().map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let background = if self.background_wanted.load(Ordering::Acquire) {
            Some(Mutex::new(network.request()?))
        } else {
            None
        };
        Ok(Current {
            mode,
            requests,
            background,
            network: Mutex::new(network),
        })
    }

    /// A request for heatmap work of batch 1 on whichever compilation is current.
    pub fn on_current(self: &Arc<Self>) -> Result<OnCurrent, BackendError> {
        self.background_wanted.store(true, Ordering::Release);
        let mut current = self.current.write().map_err(|_| poisoned())?;
        if let Some(c) = current.as_mut() {
            if c.background.is_none() {
                let request = c.network.get_mut().map_err(|_| poisoned())?.request()?;
                c.background = Some(Mutex::new(request));
            }
        }
        Ok(OnCurrent(Arc::clone(self)))
    }
}

/// Heatmap work's request: one more request on the current compilation, whichever it is.
pub struct OnCurrent(Arc<Networks>);

impl Request for OnCurrent {
    fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, BackendError> {
        Ok(self.run_outputs(input)?.values)
    }

    fn run_outputs(&mut self, input: &[f32]) -> Result<Outputs, BackendError> {
        let current = self.0.current.read().map_err(|_| poisoned())?;
        let request = current
            .as_ref()
            .and_then(|c| c.background.as_ref())
            .ok_or_else(|| BackendError::Infer("no compiled network (a swap failed)".into()))?;
        let mut request = request.lock().map_err(|_| poisoned())?;
        request.run_outputs(input)
    }
}
