//! The engine over a recording test backend: AUTO scheduling (an image alone runs on
//! the latency-tuned request, a queue on the throughput requests; one compilation alive at
//! a time, swapped by the first image of a burst and by the first image alone after it),
//! the heatmap request's network, and the report-work mark heatmaps wait for.

use super::backend::{Backend, BackendError, CompileOptions, Compiled, Mode, Request};
use super::engine::{Engine, EngineOptions, Scheduling};
use super::gate::Network;
use super::manifest::Manifest;
use super::networks::LATENCY_AGAIN_AFTER;
use super::precision::Precision;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the test backend saw.
#[derive(Default)]
struct Log {
    /// Modes compiled, in order.
    compiled: Mutex<Vec<(Mode, Precision)>>,
    /// Runs per mode.
    latency_runs: AtomicUsize,
    throughput_runs: AtomicUsize,
    /// Runs in flight now, per mode, and the worst overlap seen.
    latency_now: AtomicUsize,
    throughput_now: AtomicUsize,
    overlap: AtomicUsize,
    max_throughput_now: AtomicUsize,
    /// Compiled networks alive now, and the most alive during any run.
    live: AtomicUsize,
    max_live_in_run: AtomicUsize,
    /// Compilations for this mode fail.
    failing: Mutex<Option<Mode>>,
    /// Images per call of each compilation, in order, and of each run.
    compiled_batches: Mutex<Vec<usize>>,
    run_batches: Mutex<Vec<usize>>,
}

struct Recording(Arc<Log>);
struct RecCompiled(Arc<Log>, Mode, usize);
/// A request of a network compiled for `.2` images per call: each image's outputs are its
/// first input value and the batch size, so a test can tell whose outputs it got.
struct RecRequest(Arc<Log>, Mode, usize);

impl Backend for Recording {
    fn name(&self) -> String {
        "recording-test".into()
    }
    fn compile(
        &mut self,
        _m: &Manifest,
        o: CompileOptions,
    ) -> Result<Box<dyn Compiled>, BackendError> {
        if *self.0.failing.lock().unwrap() == Some(o.mode) {
            return Err(BackendError::Compile("out of memory (injected)".into()));
        }
        if let Ok(mut c) = self.0.compiled.lock() {
            c.push((o.mode, o.precision));
        }
        self.0.compiled_batches.lock().unwrap().push(o.batch);
        self.0.live.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(RecCompiled(Arc::clone(&self.0), o.mode, o.batch)))
    }
}

impl Drop for RecCompiled {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Compiled for RecCompiled {
    fn optimal_requests(&self) -> usize {
        match self.1 {
            Mode::Latency => 1,
            Mode::Throughput => 3,
        }
    }
    fn request(&mut self) -> Result<Box<dyn Request>, BackendError> {
        Ok(Box::new(RecRequest(Arc::clone(&self.0), self.1, self.2)))
    }
}

impl Request for RecRequest {
    fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, BackendError> {
        let log = &self.0;
        let batch = self.2;
        if batch == 0 || input.len() % batch != 0 {
            return Err(BackendError::Infer(format!(
                "input has {} values, not {batch} images",
                input.len()
            )));
        }
        log.run_batches.lock().unwrap().push(batch);
        let (mine, other, runs) = match self.1 {
            Mode::Latency => (&log.latency_now, &log.throughput_now, &log.latency_runs),
            Mode::Throughput => (&log.throughput_now, &log.latency_now, &log.throughput_runs),
        };
        let now = mine.fetch_add(1, Ordering::SeqCst) + 1;
        if self.1 == Mode::Throughput {
            log.max_throughput_now.fetch_max(now, Ordering::SeqCst);
        }
        log.max_live_in_run
            .fetch_max(log.live.load(Ordering::SeqCst), Ordering::SeqCst);
        if other.load(Ordering::SeqCst) > 0 || (self.1 == Mode::Latency && now > 1) {
            log.overlap.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(30));
        mine.fetch_sub(1, Ordering::SeqCst);
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(input
            .chunks_exact(input.len() / batch)
            .flat_map(|image| [image[0], batch as f32])
            .collect())
    }
}

fn engine(scheduling: Scheduling, precision: Precision) -> (Engine, Arc<Log>) {
    batched_engine(scheduling, precision, 1)
}

fn batched_engine(
    scheduling: Scheduling,
    precision: Precision,
    batch: usize,
) -> (Engine, Arc<Log>) {
    let m = Manifest::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/pneumonia-xception/model.toml"),
    )
    .unwrap();
    let log = Arc::new(Log::default());
    let network = Network {
        precision,
        manifest: m.clone(),
        sha256: m.file.sha256.clone(),
        gate_dir: m.dir.clone(),
    };
    let e = Engine::start(
        m,
        "00".repeat(32),
        Box::new(Recording(Arc::clone(&log))),
        EngineOptions {
            network,
            scheduling,
            batch,
        },
    )
    .unwrap();
    (e, log)
}

/// `threads` threads at once, each inferring `each` images one after the other.
fn burst(e: &Arc<Engine>, threads: usize, each: usize) {
    std::thread::scope(|s| {
        for _ in 0..threads {
            let e = Arc::clone(e);
            s.spawn(move || {
                for _ in 0..each {
                    e.infer_blocking(vec![0.0; e.manifest().input_len()])
                        .unwrap();
                }
            });
        }
    });
}

#[test]
fn auto_runs_a_lone_image_for_latency_and_a_queue_for_throughput() {
    let (e, log) = engine(Scheduling::Auto, Precision::Bf16);
    assert_eq!(
        *log.compiled.lock().unwrap(),
        [
            (Mode::Throughput, Precision::Bf16),
            (Mode::Latency, Precision::Bf16)
        ]
    );
    // The throughput compilation told how many workers; only the latency one is kept.
    assert_eq!(log.live.load(Ordering::SeqCst), 1);
    assert_eq!(e.workers(), 3);
    assert_eq!(e.identity().precision, Precision::Bf16);
    // One image at a time: every run on the latency request.
    for _ in 0..3 {
        e.infer_blocking(vec![0.0; e.manifest().input_len()])
            .unwrap();
    }
    assert_eq!(log.latency_runs.load(Ordering::SeqCst), 3);
    assert_eq!(log.throughput_runs.load(Ordering::SeqCst), 0);
    // A burst of 12 from 6 threads: most on the throughput requests, in parallel.
    let e = Arc::new(e);
    burst(&e, 6, 2);
    let (lat, thr) = (
        log.latency_runs.load(Ordering::SeqCst),
        log.throughput_runs.load(Ordering::SeqCst),
    );
    assert_eq!(lat + thr, 15);
    assert!(thr >= 8, "burst ran {thr} of 12 on throughput requests");
    assert!(log.max_throughput_now.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        log.overlap.load(Ordering::SeqCst),
        0,
        "the latency request ran beside another"
    );
    eprintln!("auto scheduling: 3 lone images on the latency request; burst of 12: {} latency, {thr} throughput, up to {} in parallel", lat - 3, log.max_throughput_now.load(Ordering::SeqCst));
}

/// Under AUTO scheduling one compilation is alive at every run. The first image of a
/// burst swaps to the throughput compilation; images alone soon after the burst run on a
/// throughput request; the first one alone after [`LATENCY_AGAIN_AFTER`] swaps back to the
/// latency compilation. A report image decoded under its mark counts once.
#[test]
fn auto_holds_one_compilation_and_swaps_for_a_burst_and_back_after() {
    let (e, log) = engine(Scheduling::Auto, Precision::F32);
    let input = vec![0.0; e.manifest().input_len()];
    e.infer_blocking(input.clone()).unwrap();
    assert_eq!(log.latency_runs.load(Ordering::SeqCst), 1);
    // A report image decoded under its mark is still an image alone when it is inferred.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mark = e.preparing();
    runtime
        .block_on(e.infer_prepared(input.clone(), mark))
        .unwrap();
    assert_eq!(log.latency_runs.load(Ordering::SeqCst), 2);
    assert_eq!(e.report_work(), 0);
    let e = Arc::new(e);
    burst(&e, 6, 3);
    assert!(log.throughput_runs.load(Ordering::SeqCst) >= 10);
    assert_eq!(log.overlap.load(Ordering::SeqCst), 0);
    assert_eq!(log.live.load(Ordering::SeqCst), 1);
    // Alone right after the burst: a throughput request, nothing compiled.
    let compiled = log.compiled.lock().unwrap().len();
    let (lat, thr) = (
        log.latency_runs.load(Ordering::SeqCst),
        log.throughput_runs.load(Ordering::SeqCst),
    );
    e.infer_blocking(input.clone()).unwrap();
    assert_eq!(log.latency_runs.load(Ordering::SeqCst), lat);
    assert_eq!(log.throughput_runs.load(Ordering::SeqCst), thr + 1);
    assert_eq!(log.compiled.lock().unwrap().len(), compiled);
    // Alone after the quiet period: the latency compilation again, at once.
    std::thread::sleep(LATENCY_AGAIN_AFTER + Duration::from_millis(50));
    e.infer_blocking(input.clone()).unwrap();
    assert_eq!(log.latency_runs.load(Ordering::SeqCst), lat + 1);
    assert_eq!(
        log.compiled.lock().unwrap().last(),
        Some(&(Mode::Latency, Precision::F32))
    );
    assert_eq!(log.live.load(Ordering::SeqCst), 1);
    assert_eq!(
        log.max_live_in_run.load(Ordering::SeqCst),
        1,
        "two compilations were alive during a run"
    );
}

/// A swap whose compilation fails puts the former compilation back: the burst's images
/// all run (on the latency request) and the swap is not tried again image after image; a
/// burst after [`LATENCY_AGAIN_AFTER`] swaps once compiling works again.
#[test]
fn a_failed_swap_keeps_the_former_compilation_and_loses_no_image() {
    let (e, log) = engine(Scheduling::Auto, Precision::F32);
    *log.failing.lock().unwrap() = Some(Mode::Throughput);
    let e = Arc::new(e);
    burst(&e, 6, 2);
    assert_eq!(log.latency_runs.load(Ordering::SeqCst), 12);
    assert_eq!(log.throughput_runs.load(Ordering::SeqCst), 0);
    assert_eq!(log.live.load(Ordering::SeqCst), 1);
    // One failed attempt and the latency compilation put back, not one per image.
    assert_eq!(
        *log.compiled.lock().unwrap(),
        [
            (Mode::Throughput, Precision::F32),
            (Mode::Latency, Precision::F32),
            (Mode::Latency, Precision::F32)
        ]
    );
    *log.failing.lock().unwrap() = None;
    std::thread::sleep(LATENCY_AGAIN_AFTER);
    burst(&e, 6, 2);
    assert!(log.throughput_runs.load(Ordering::SeqCst) >= 1);
    assert_eq!(log.max_live_in_run.load(Ordering::SeqCst), 1);
}

#[test]
fn latency_and_throughput_hints_keep_one_network() {
    let (e, log) = engine(Scheduling::Latency, Precision::F32);
    assert_eq!(
        *log.compiled.lock().unwrap(),
        [(Mode::Latency, Precision::F32)]
    );
    assert_eq!(e.workers(), 1);
    e.infer_blocking(vec![0.0; e.manifest().input_len()])
        .unwrap();
    assert_eq!(log.latency_runs.load(Ordering::SeqCst), 1);
    let (e, log) = engine(Scheduling::Throughput, Precision::F32);
    assert_eq!(
        *log.compiled.lock().unwrap(),
        [(Mode::Throughput, Precision::F32)]
    );
    assert_eq!(e.workers(), 3);
    e.infer_blocking(vec![0.0; e.manifest().input_len()])
        .unwrap();
    assert_eq!(log.throughput_runs.load(Ordering::SeqCst), 1);
    assert_eq!(Scheduling::from_hint("AUTO"), Scheduling::Auto);
    assert_eq!(Scheduling::from_hint("THROUGHPUT"), Scheduling::Throughput);
    assert_eq!(Scheduling::from_hint("LATENCY"), Scheduling::Latency);
}

#[test]
fn a_batch_of_one_for_heatmaps_shares_the_report_network_and_a_larger_one_compiles_its_own() {
    let (e, log) = engine(Scheduling::Latency, Precision::F32);
    let mut shared = e.background_request(1).unwrap();
    shared.run(&vec![0.0; e.manifest().input_len()]).unwrap();
    // No second network: the heatmap request is another request on the report network.
    assert_eq!(
        *log.compiled.lock().unwrap(),
        [(Mode::Latency, Precision::F32)]
    );
    assert_eq!(log.latency_runs.load(Ordering::SeqCst), 1);
    let _own = e.background_request(8).unwrap();
    assert_eq!(
        *log.compiled.lock().unwrap(),
        [
            (Mode::Latency, Precision::F32),
            (Mode::Throughput, Precision::F32)
        ]
    );
    // With AUTO scheduling it follows the current compilation: latency while images come
    // one at a time, throughput after a burst swapped to it; nothing compiled for it.
    let (e, log) = engine(Scheduling::Auto, Precision::F32);
    let input = vec![0.0; e.manifest().input_len()];
    let mut shared = e.background_request(1).unwrap();
    shared.run(&input).unwrap();
    assert_eq!(log.compiled.lock().unwrap().len(), 2);
    assert_eq!(log.latency_runs.load(Ordering::SeqCst), 1);
    let e = Arc::new(e);
    burst(&e, 6, 3);
    let thr = log.throughput_runs.load(Ordering::SeqCst);
    assert!(thr >= 1, "the burst ran on the latency compilation only");
    shared.run(&input).unwrap();
    assert_eq!(log.throughput_runs.load(Ordering::SeqCst), thr + 1);
    assert_eq!(log.live.load(Ordering::SeqCst), 1);
}

#[test]
fn report_work_counts_images_being_prepared_until_their_mark_is_dropped() {
    let (e, _log) = engine(Scheduling::Latency, Precision::F32);
    assert_eq!(e.report_work(), 0);
    let a = e.preparing();
    let b = e.preparing();
    assert_eq!(e.report_work(), 2);
    drop(a);
    assert_eq!(e.report_work(), 1);
    drop(b);
    assert_eq!(e.report_work(), 0);
}

#[test]
fn a_batched_engine_runs_waiting_images_together_and_gives_each_its_own_outputs() {
    let (e, log) = batched_engine(Scheduling::Throughput, Precision::F32, 4);
    assert_eq!(*log.compiled_batches.lock().unwrap(), [4]);
    assert_eq!((e.workers(), e.batch()), (3, 4));
    let e = Arc::new(e);
    let len = e.manifest().input_len();
    // 24 threads, each with images of its own value, more than the 3 requests take at once.
    std::thread::scope(|s| {
        for t in 0..24 {
            let e = Arc::clone(&e);
            s.spawn(move || {
                for k in 0..3 {
                    let value = (t * 10 + k) as f32;
                    let out = e.infer_blocking(vec![value; len]).unwrap();
                    assert_eq!(out, [value, 4.0], "image {value} got another's outputs");
                }
            });
        }
    });
    // Every call took 4 places; with 24 threads waiting, the calls were mostly full.
    let runs = log.run_batches.lock().unwrap().clone();
    assert!(runs.iter().all(|&b| b == 4), "{runs:?}");
    assert!(runs.len() < 72 / 2, "{} calls for 72 images", runs.len());
    assert_eq!(e.pending(), 0);
    // An image alone waits at most the fill time, then runs with zeros beside it.
    let started = std::time::Instant::now();
    assert_eq!(e.infer_blocking(vec![7.0; len]).unwrap(), [7.0, 4.0]);
    assert!(started.elapsed() < Duration::from_secs(5));
    // An input of the wrong size is refused alone.
    let err = e
        .infer_blocking(vec![1.0; len + 1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("network takes"), "{err}");
    assert_eq!(e.infer_blocking(vec![8.0; len]).unwrap(), [8.0, 4.0]);
}

#[test]
fn only_throughput_scheduling_batches_and_heatmaps_of_a_batched_engine_get_their_own_network() {
    for scheduling in [Scheduling::Latency, Scheduling::Auto] {
        let (e, log) = batched_engine(scheduling, Precision::F32, 4);
        assert_eq!(e.batch(), 1, "{scheduling:?}");
        assert!(
            log.compiled_batches.lock().unwrap().iter().all(|&b| b == 1),
            "{scheduling:?}"
        );
        let len = e.manifest().input_len();
        assert_eq!(e.infer_blocking(vec![3.0; len]).unwrap(), [3.0, 1.0]);
    }
    let (e, log) = batched_engine(Scheduling::Throughput, Precision::F32, 4);
    let mut heatmap = e.background_request(1).unwrap();
    let len = e.manifest().input_len();
    assert_eq!(heatmap.run(&vec![5.0; len]).unwrap(), [5.0, 1.0]);
    assert_eq!(*log.compiled_batches.lock().unwrap(), [4, 1]);
}
