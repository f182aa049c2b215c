//! The daemon's inference stage: [`run_pipeline`] takes completed study UIDs from the
//! assembly stage and turns each into a recorded [`StudyResult`].
//!
//! Contract:
//! - The sender (assembly) creates a BOUNDED `tokio::sync::mpsc::channel::<String>` and
//!   sends Study Instance UIDs of studies in state `complete`; a full channel is the
//!   back-pressure. Each UID received is marked `queued` at once.
//! - At most [`Engine::workers`] studies are analysed at a time; the channel is not read
//!   while they all are busy. A study is never analysed by two tasks at once: one that
//!   comes back while it is analysed waits for that analysis to end ([`super::in_flight`]).
//! - If the runtime or the model cannot be loaded (missing library, checksum mismatch),
//!   the error is logged with what to do, received studies stay `queued` (nothing is lost,
//!   nothing is stuck in memory), and loading is retried every `retry_after`; once it
//!   works, every `queued`/`inferring` study in the store is analysed (this also resumes
//!   studies interrupted by a crash or restart).
//! - Per study: `queued → inferring → done`: the result goes to the record stage
//!   ([`PipelineOptions::recorder`]), which commits it with the state change and all it
//!   owes (outbox entries), then flushes.
//!   A study none of whose images could be decoded ends in `error` with the reasons.
//!   A study that received new instances meanwhile keeps the state they gave it
//!   (`receiving`, `complete` or `queued`; its next result is version n+1).
//! - Heatmaps are computed afterwards and recorded into the result (`heatmap` of each
//!   image: pending → done with a PNG under `<data_dir>/heatmaps/<report_id>/`, or skipped
//!   with the reason), each through the record stage ([`Recorder::record_heatmap`]); those
//!   a restart left pending are queued again when the engine starts ([`super::resume`]).
//! - Returns when the channel is closed and in-flight studies are finished.

use super::analyse::{analysed, failed, not_analysed, prepare_file, Preparation};
use super::engine::{Engine, EngineError};
use super::findings::heatmap_target;
use super::heatmap::{HeatmapJob, HeatmapWorker};
use super::in_flight::InFlight;
use super::record;
use super::resume::resume_heatmaps;
use super::status::{ModelState, ModelStatus};
use crate::config::InferenceConfig;
use crate::model::StudyState;
use crate::record::{Outcome, Recorder};
use crate::result::{
    report_id, study_findings, HeatmapState, ImageResult, ImageStatus, ModelInfo, StudyResult,
    Timings,
};
use crate::store::{Store, StoreError};
use crate::supervise::Beat;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

/// How often the reason is logged again while the stage waits for its model.
pub const WAITING_LOG_EVERY: Duration = Duration::from_secs(60);

/// Whether the reason the stage waits is logged now: when it changed, the first time, and
/// again every [`WAITING_LOG_EVERY`] (so a journal read hours later still says why studies
/// are not analysed, without a line per retry).
fn waiting_log_due(last_logged: Option<Instant>, now: Instant, changed: bool) -> bool {
    changed || last_logged.is_none_or(|t| now.duration_since(t) >= WAITING_LOG_EVERY)
}

/// Images of one study that get a heatmap. The input (and a `cam` model's features) of
/// each is held until the study's result is recorded, so without a bound a study of
/// thousands of images would hold thousands of tensors; a chest X-ray study has a few.
pub const MAX_HEATMAP_IMAGES: usize = 16;

/// Builds the engine (called again after a failure).
pub type EngineFactory = Arc<dyn Fn() -> Result<Engine, EngineError> + Send + Sync>;

/// Options of [`run_pipeline_with`].
#[derive(Clone)]
pub struct PipelineOptions {
    /// The record stage each result and heatmap goes to (one without delivery when
    /// `None`).
    pub recorder: Option<Arc<Recorder>>,
    /// Wait between attempts to load the engine.
    pub retry_after: Duration,
    /// Compute heatmaps.
    pub heatmaps: bool,
    /// Where the stage says whether it has its model.
    pub status: ModelStatus,
    /// The stage's heartbeat: beats each time round the loop and while it waits (for a
    /// study, a free worker, or a model that is not there yet).
    pub beat: Beat,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            recorder: None,
            retry_after: Duration::from_secs(30),
            heatmaps: true,
            status: ModelStatus::default(),
            beat: Beat::detached("infer"),
        }
    }
}

/// Runs the inference stage with the configured model and OpenVINO (see the module
/// documentation for the contract).
pub async fn run_pipeline(store: Arc<Store>, cfg: InferenceConfig, rx: mpsc::Receiver<String>) {
    let factory: EngineFactory = Arc::new(move || Engine::new(&cfg));
    run_pipeline_with(store, factory, rx, PipelineOptions::default()).await
}

/// [`run_pipeline`] with any engine and options.
pub async fn run_pipeline_with(
    store: Arc<Store>,
    factory: EngineFactory,
    mut rx: mpsc::Receiver<String>,
    options: PipelineOptions,
) {
    run_pipeline_on(store, factory, &mut rx, options).await
}

/// [`run_pipeline_with`] on a borrowed receiver, so that a restarted stage (see
/// [`crate::supervise`]) takes over the queue of the one that ended.
pub async fn run_pipeline_on(
    store: Arc<Store>,
    factory: EngineFactory,
    rx: &mut mpsc::Receiver<String>,
    mut options: PipelineOptions,
) {
    let recorder = options
        .recorder
        .get_or_insert_with(|| Arc::new(Recorder::new(Arc::clone(&store), None)))
        .clone();
    let beat = options.beat.clone();
    let mut engine: Option<Loaded> = None;
    let mut backlog: VecDeque<String> = VecDeque::new();
    let mut waiting = ModelWait::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut in_flight = InFlight::default();
    loop {
        beat.tick();
        if engine.is_none() {
            engine = load_engine(&factory, &recorder, &options, &mut waiting).await;
            if engine.is_some() {
                backlog.extend(pending_studies(&store));
            }
        }
        let Some(Loaded {
            engine: e,
            heatmaps,
            permits: sem,
        }) = &engine
        else {
            let waited = beat
                .during(async {
                    tokio::select! {
                        uid = rx.recv() => Some(uid),
                        _ = tokio::time::sleep(options.retry_after) => None,
                    }
                })
                .await;
            match waited {
                Some(Some(uid)) => queue(&store, &uid),
                Some(None) => break,
                None => {}
            }
            continue;
        };
        let Ok(permit) = beat.during(Arc::clone(sem).acquire_owned()).await else {
            break;
        };
        let uid = match backlog.pop_front() {
            Some(uid) => uid,
            None => {
                let next = beat
                    .during(async {
                        tokio::select! {
                            uid = rx.recv() => Next::Study(uid),
                            Some(ended) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                                Next::Ended(ended.map_or_else(|e| e.id(), |(id, ())| id))
                            }
                        }
                    })
                    .await;
                match next {
                    Next::Study(Some(uid)) => {
                        queue(&store, &uid);
                        uid
                    }
                    Next::Study(None) => break,
                    Next::Ended(id) => {
                        ended(&store, &mut in_flight, &id, &mut backlog);
                        continue;
                    }
                }
            }
        };
        if in_flight.is_running(&uid) {
            log::info!("study {uid}: analysed again once its analysis in progress ends");
            in_flight.wait(uid);
            continue;
        }
        let study = uid.clone();
        let (to, e, heatmaps, options) = (
            Arc::clone(&store),
            Arc::clone(e),
            heatmaps.clone(),
            options.clone(),
        );
        let task = tasks.spawn(async move {
            analyse_study(&to, &e, heatmaps.as_ref(), &options, &uid).await;
            drop(permit);
        });
        in_flight.started(task.id(), study);
        while let Some(ended_task) = tasks.try_join_next_with_id() {
            let id = ended_task.map_or_else(|e| e.id(), |(id, ())| id);
            ended(&store, &mut in_flight, &id, &mut backlog);
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// The engine in service, its heatmap worker, and one permit per inference worker.
struct Loaded {
    engine: Arc<Engine>,
    heatmaps: Option<HeatmapWorker>,
    permits: Arc<Semaphore>,
}

/// What the stage remembers while it waits for its model: the last error, and when the
/// wait was last logged.
#[derive(Default)]
struct ModelWait {
    last_error: String,
    last_logged: Option<Instant>,
}

/// Loads the model through `factory` (on a blocking thread), starts its heatmap worker
/// and resumes the heatmaps left to make; `None` while it cannot be loaded, with the
/// reason logged when new or due again and shown as the model's status.
async fn load_engine(
    factory: &EngineFactory,
    recorder: &Arc<Recorder>,
    options: &PipelineOptions,
    waiting: &mut ModelWait,
) -> Option<Loaded> {
    let f = Arc::clone(factory);
    match options
        .beat
        .during(tokio::task::spawn_blocking(move || f()))
        .await
    {
        Ok(Ok(e)) => {
            let e = Arc::new(e);
            let heatmaps = if options.heatmaps {
                start_heatmaps(recorder, &e)
            } else {
                None
            };
            if let Some(worker) = &heatmaps {
                let (recorder, e, worker) = (Arc::clone(recorder), Arc::clone(&e), worker.clone());
                tokio::task::spawn_blocking(move || {
                    resume_heatmaps(
                        &recorder,
                        e.manifest(),
                        e.identity(),
                        e.max_pixels(),
                        &worker,
                    )
                });
            }
            if !waiting.last_error.is_empty() {
                log::info!("inference: the model is loaded; queued studies are analysed now");
            }
            *waiting = ModelWait::default();
            options.status.set(ModelState::Ready);
            let permits = Arc::new(Semaphore::new(e.workers()));
            Some(Loaded {
                engine: e,
                heatmaps,
                permits,
            })
        }
        Ok(Err(err)) => {
            let msg = err.to_string();
            let now = Instant::now();
            if waiting_log_due(waiting.last_logged, now, msg != waiting.last_error) {
                log::error!("inference is waiting for its model: {msg}; received studies stay queued and are analysed once this is fixed (retry every {:?})", options.retry_after);
                waiting.last_logged = Some(now);
            }
            options.status.set(ModelState::Waiting(msg.clone()));
            waiting.last_error = msg;
            None
        }
        Err(join) => {
            log::error!("inference engine start panicked: {join}");
            None
        }
    }
}

/// What the stage woke for while it had a free worker and no backlog.
enum Next {
    /// A study from assembly (`None`: the channel is closed).
    Study(Option<String>),
    /// An analysis ended.
    Ended(tokio::task::Id),
}

/// An analysis ended: its study, if it came back meanwhile, is queued and analysed next.
fn ended(
    store: &Store,
    in_flight: &mut InFlight<tokio::task::Id>,
    task: &tokio::task::Id,
    backlog: &mut VecDeque<String>,
) {
    if let Some(uid) = in_flight.finished(task) {
        queue(store, &uid);
        backlog.push_back(uid);
    }
}

fn queue(store: &Store, uid: &str) {
    match record::mark_queued(store, uid) {
        Ok(_) => {}
        Err(e @ StoreError::Transition { .. }) => log::info!("study {uid}: {e}"),
        Err(e) => log::error!("study {uid}: cannot mark queued: {e}"),
    }
}

/// Studies left `queued` or `inferring` (by a failed engine, a crash or a restart).
fn pending_studies(store: &Store) -> Vec<String> {
    match store.studies() {
        Ok(s) => s
            .into_iter()
            .filter(|s| matches!(s.state, StudyState::Queued | StudyState::Inferring))
            .map(|s| s.study_instance_uid)
            .collect(),
        Err(e) => {
            log::error!("cannot list studies to resume: {e}");
            Vec::new()
        }
    }
}

fn start_heatmaps(recorder: &Arc<Recorder>, engine: &Arc<Engine>) -> Option<HeatmapWorker> {
    let recorder = Arc::clone(recorder);
    let on_done = Box::new(
        move |job: &HeatmapJob, out: super::heatmap::HeatmapOutcome| {
            let rid = report_id(&job.study_uid, job.version);
            let store = recorder.store();
            let code = engine_code(store, job);
            let (state, ms) = match out {
                Ok((png, ms)) => match write_heatmap(store, &rid, &job.sop_instance_uid, &png) {
                    Ok(path) => (HeatmapState::Done { code, path }, ms),
                    Err(e) => (
                        HeatmapState::Failed {
                            reason: e.to_string(),
                        },
                        ms,
                    ),
                },
                Err(e) => (
                    HeatmapState::Failed {
                        reason: e.to_string(),
                    },
                    0.0,
                ),
            };
            if let Err(e) = recorder.record_heatmap(
                &job.study_uid,
                job.version,
                &job.sop_instance_uid,
                state,
                ms,
            ) {
                log::error!("heatmap of {}: cannot record: {e}", job.sop_instance_uid);
            }
        },
    );
    match HeatmapWorker::start(Arc::clone(engine), on_done) {
        Ok(w) => Some(w),
        Err(e) => {
            log::warn!("heatmaps disabled: {e}");
            None
        }
    }
}

/// The code recorded as pending for the job's image.
fn engine_code(store: &Store, job: &HeatmapJob) -> String {
    record::result(store, &job.study_uid, job.version)
        .ok()
        .flatten()
        .and_then(|r| {
            r.images
                .into_iter()
                .find(|i| i.sop_instance_uid == job.sop_instance_uid)
        })
        .and_then(|i| match i.heatmap {
            HeatmapState::Pending { code } => Some(code),
            _ => None,
        })
        .unwrap_or_default()
}

/// Writes a heatmap PNG durably (file and folders synced) before its state is recorded as
/// made: a power cut never leaves a result naming a heatmap that is not on disk.
fn write_heatmap(store: &Store, rid: &str, sop: &str, png: &[u8]) -> std::io::Result<String> {
    let rel = format!("heatmaps/{rid}/{}.png", sanitize(sop));
    let path = store.root().join(&rel);
    let io = |e: crate::fsutil::WriteError| std::io::Error::new(e.source.kind(), e.to_string());
    let heatmaps = store.root().join("heatmaps");
    if let Some(dir) = path.parent().filter(|d| !d.is_dir()) {
        std::fs::create_dir_all(dir)?;
        crate::fsutil::sync_dir(&heatmaps).map_err(io)?;
        crate::fsutil::sync_dir(store.root()).map_err(io)?;
    }
    crate::fsutil::write_atomic(&path, png, 0o600, None).map_err(io)?;
    Ok(rel)
}

fn sanitize(uid: &str) -> String {
    uid.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Analyses one study and records its result (see the module contract): each image
/// analysed for the report (`analyse_image`), the heatmaps decided (`plan_heatmaps`),
/// the result recorded, then the class-activation maps made with it, then the occlusion
/// jobs queued.
pub async fn analyse_study(
    store: &Arc<Store>,
    engine: &Arc<Engine>,
    heatmaps: Option<&HeatmapWorker>,
    options: &PipelineOptions,
    uid: &str,
) {
    let recorder = options
        .recorder
        .clone()
        .unwrap_or_else(|| Arc::new(Recorder::new(Arc::clone(store), None)));
    let Some(instances) = begin(store, uid) else {
        return;
    };
    let manifest = Arc::clone(engine.manifest());
    // Whether this study's images can get heatmaps at all, and how many inputs are held
    // for them (at most MAX_HEATMAP_IMAGES).
    let maps_possible = (options.heatmaps && engine.cam().is_some()) || heatmaps.is_some();
    let mut held = 0usize;
    let mut analysed = Vec::with_capacity(instances.len());
    // A study that grows after retention removed its older images' pixels keeps their
    // findings in the new version, said as carried, rather than losing them.
    let previous = record::latest_result(store, uid).ok().flatten();
    for inst in &instances {
        if let Some(result) = carried_forward(previous.as_ref(), inst) {
            analysed.push(AnalysedImage {
                result,
                input: None,
                features: None,
            });
            continue;
        }
        let maps = Maps {
            possible: maps_possible,
            room: held < MAX_HEATMAP_IMAGES,
        };
        let a = analyse_image(store, engine, &manifest, uid, inst, maps).await;
        if a.input.is_some() {
            held += 1;
        }
        analysed.push(a);
    }
    let version = store
        .study(uid)
        .ok()
        .flatten()
        .map(|s| s.result_version + 1)
        .unwrap_or(1);
    let planned = plan_heatmaps(analysed, engine, options, heatmaps.is_some(), uid, version);
    let result = build_result(uid, version, planned.images, engine);
    let failure = crate::record::failure(&result);
    let pending: Vec<&str> = planned
        .cams
        .iter()
        .map(|c| c.sop.as_str())
        .chain(planned.jobs.iter().map(|j| j.sop_instance_uid.as_str()))
        .collect();
    let recorded = recorder
        .record_result(Outcome {
            result: &result,
            heatmaps_to_make: &pending,
            failure: failure.as_deref(),
        })
        .await;
    if let Err(e) = recorded {
        log::error!("study {uid}: the result was not recorded: {e}");
    }
    log::info!(
        "study {uid}: result v{version} ({} images, triage {}) report {}",
        result.images.len(),
        result.triage,
        result.report_id
    );
    // The class-activation maps, made with the result, are recorded right after it
    // (and become the result's heatmap objects in the record stage).
    for map in planned.cams {
        record_cam(store, &recorder, &result, map).await;
    }
    if let Some(worker) = heatmaps {
        let (worker, recorder, jobs) = (worker.clone(), Arc::clone(&recorder), planned.jobs);
        let queued = tokio::task::spawn_blocking(move || worker.submit_all(&recorder, jobs)).await;
        if let Err(e) = queued {
            log::error!("study {uid}: queueing the heatmaps failed: {e}");
        }
    }
}

/// Marks the study `inferring` and lists its instances; `None` (logged, and the study
/// marked `error` where that is the outcome) when there is nothing to analyse now.
fn begin(store: &Store, uid: &str) -> Option<Vec<crate::model::InstanceRecord>> {
    match record::mark_inferring(store, uid) {
        Ok(_) => {}
        // Reopened by new instances since it was queued: assembly hands it on again.
        Err(e @ StoreError::Transition { .. }) => {
            log::info!("study {uid}: not analysed now: {e}");
            return None;
        }
        Err(e) => {
            log::error!("study {uid}: {e}");
            return None;
        }
    }
    let instances = match store.instances_of(uid) {
        Ok(i) => i,
        Err(e) => {
            log::error!("study {uid}: cannot list instances: {e}");
            let _ = record::mark_error(store, uid, &format!("cannot list instances: {e}"));
            return None;
        }
    };
    // Every image of it was sent again under another study: nothing is left to report on,
    // and a report on nothing must not reach the RIS or the PACS.
    if instances.iter().all(|i| i.generated) {
        let why = "no image left: every instance was sent again under another study";
        log::warn!("study {uid}: {why}");
        let _ = record::mark_error(store, uid, why);
        return None;
    }
    Some(instances)
}

/// One image analysed for the report, with what its heatmap needs when it gets one.
struct AnalysedImage {
    /// The image's result.
    result: ImageResult,
    /// The model input, held for the heatmap.
    input: Option<HeldInput>,
    /// The network's features with its probabilities (a `cam` model), for its heatmap.
    features: Option<(Vec<f32>, Vec<f32>)>,
}

/// A model input held for its image's heatmap.
struct HeldInput {
    /// The batch-1 input tensor.
    tensor: Vec<f32>,
    /// Output index of the label its heatmap explains.
    target: usize,
    /// Width and height of the image it was sampled from.
    source: (u32, u32),
}

/// Whether an image may get a heatmap.
#[derive(Clone, Copy)]
struct Maps {
    /// The study's images can get heatmaps at all.
    possible: bool,
    /// The study has not used its share of heatmaps ([`MAX_HEATMAP_IMAGES`]).
    room: bool,
}

/// Decodes and infers one instance for the report (background heatmaps wait meanwhile).
/// When heatmaps are possible and the image has a finding to explain, its input (and
/// features) are held for the heatmap, or, when the study has used its share, the
/// heatmap is skipped with the reason.
async fn analyse_image(
    store: &Store,
    engine: &Arc<Engine>,
    manifest: &Arc<super::manifest::Manifest>,
    uid: &str,
    inst: &crate::model::InstanceRecord,
    maps: Maps,
) -> AnalysedImage {
    let only = |result: ImageResult| AnalysedImage {
        result: for_instance(result, inst),
        input: None,
        features: None,
    };
    if inst.pruned {
        return only(ImageResult {
            status: ImageStatus::NotApplicable,
            reason: Some("pixel data pruned by retention".into()),
            ..failed(String::new(), String::new(), Timings::default())
        });
    }
    let path = store.root().join(&inst.path);
    let m = Arc::clone(manifest);
    let max_pixels = engine.max_pixels();
    let report_work = engine.preparing();
    let prep = tokio::task::spawn_blocking(move || prepare_file(&path, &m, max_pixels)).await;
    let mut result = match prep {
        Ok(Preparation::Ready(p)) => {
            let start = Instant::now();
            match engine.infer_prepared(p.tensor.clone(), report_work).await {
                Ok(out) => {
                    let mut r = analysed(manifest, &p, &out.values, ms(start));
                    let target = heatmap_target(manifest, &r.findings).filter(|_| maps.possible);
                    if let (Some(target), true) = (target, maps.room) {
                        let network =
                            super::findings::probabilities(&out.values, manifest.output.activation);
                        return AnalysedImage {
                            result: for_instance(r, inst),
                            input: Some(HeldInput {
                                tensor: p.tensor,
                                target,
                                source: p.source,
                            }),
                            features: out.features.map(|f| (f, network)),
                        };
                    }
                    if target.is_some() {
                        r.heatmap = HeatmapState::Skipped {
                            reason: format!(
                                "only the first {MAX_HEATMAP_IMAGES} images of a study get a \
                                 heatmap"
                            ),
                        };
                    }
                    return only(r);
                }
                Err(e) => failed(String::new(), e.to_string(), p.timings),
            }
        }
        Ok(other) => {
            if let Preparation::Error { reason, .. } = &other {
                log::warn!("study {uid}: {}: not analysed: {reason}", inst.path);
            }
            not_analysed(&other)
                .unwrap_or_else(|| failed(String::new(), "not prepared".into(), Timings::default()))
        }
        Err(join) => failed(
            String::new(),
            format!("decoder panicked: {join}"),
            Timings::default(),
        ),
    };
    if result.status == ImageStatus::NotApplicable && result.reason.is_none() {
        result.reason = Some("not applicable".into());
    }
    only(result)
}

/// The images of a result with the heatmaps decided: class-activation maps made now,
/// occlusion jobs for the worker.
struct Planned {
    /// The images, each heatmap `pending` where one is being made.
    images: Vec<ImageResult>,
    /// Class-activation maps made from the result's own inference pass.
    cams: Vec<CamMap>,
    /// Occlusion maps (and a `cam` model's images whose network gave no features), for
    /// the worker.
    jobs: Vec<HeatmapJob>,
}

/// A class-activation map made with the result.
struct CamMap {
    /// The image's SOP Instance UID.
    sop: String,
    /// The code of the finding it explains.
    code: String,
    /// The map as PNG.
    png: Vec<u8>,
    /// How long it took.
    ms: f64,
}

/// Decides each image's heatmap now, so the record says which are pending; a `cam`
/// model's maps are made here.
fn plan_heatmaps(
    analysed: Vec<AnalysedImage>,
    engine: &Engine,
    options: &PipelineOptions,
    worker: bool,
    uid: &str,
    version: u32,
) -> Planned {
    let manifest = engine.manifest();
    let mut planned = Planned {
        images: Vec::with_capacity(analysed.len()),
        cams: Vec::new(),
        jobs: Vec::new(),
    };
    for a in analysed {
        let mut img = a.result;
        let Some(HeldInput {
            tensor: input,
            target,
            source,
        }) = a.input
        else {
            planned.images.push(img);
            continue;
        };
        let code = manifest.labels[target].code.clone();
        let cam = match (options.heatmaps, engine.cam(), a.features) {
            (true, Some(head), Some((f, network))) => {
                let start = Instant::now();
                super::heatmap::cam_png(head, &f, &network, target, manifest, source)
                    .map(|png| (png, ms(start)))
                    .map_err(|e| log::warn!("{}: class-activation map: {e}", img.sop_instance_uid))
                    .ok()
            }
            _ => None,
        };
        if let Some((png, took)) = cam {
            img.heatmap = HeatmapState::Pending { code: code.clone() };
            img.timings.heatmap_ms = took;
            planned.cams.push(CamMap {
                sop: img.sop_instance_uid.clone(),
                code,
                png,
                ms: took,
            });
        } else if worker {
            img.heatmap = HeatmapState::Pending { code };
            planned.jobs.push(HeatmapJob {
                study_uid: uid.to_string(),
                version,
                sop_instance_uid: img.sop_instance_uid.clone(),
                input,
                target,
                source,
            });
        }
        planned.images.push(img);
    }
    planned
}

/// Writes a class-activation map and records it into the result.
async fn record_cam(
    store: &Arc<Store>,
    recorder: &Arc<Recorder>,
    result: &StudyResult,
    map: CamMap,
) {
    let (store, recorder) = (Arc::clone(store), Arc::clone(recorder));
    let (study, rid, version) = (
        result.study_instance_uid.clone(),
        result.report_id.clone(),
        result.version,
    );
    let recorded = tokio::task::spawn_blocking(move || {
        let state = match write_heatmap(&store, &rid, &map.sop, &map.png) {
            Ok(path) => HeatmapState::Done {
                code: map.code,
                path,
            },
            Err(e) => HeatmapState::Failed {
                reason: format!("cannot write the heatmap: {e}"),
            },
        };
        recorder.record_heatmap(&study, version, &map.sop, state, map.ms)
    })
    .await;
    let uid = &result.study_instance_uid;
    match recorded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::error!("study {uid}: cannot record the heatmap: {e}"),
        Err(e) => log::error!("study {uid}: heatmap task failed: {e}"),
    }
}

/// `r` as the result of `inst`: its SOP Instance UID (when decoding did not give one) and
/// its series.
/// The result of an image whose pixel data retention removed, carried from the study's
/// `previous` result when it was analysed there: its findings with a caveat saying from
/// which result version and model, no heatmap (its pixels are gone). `None` when the
/// image's pixels are still there or it was not analysed before.
fn carried_forward(
    previous: Option<&crate::result::StudyResult>,
    inst: &crate::model::InstanceRecord,
) -> Option<ImageResult> {
    if !inst.pruned {
        return None;
    }
    let prev = previous?;
    let image = prev.images.iter().find(|i| {
        i.sop_instance_uid == inst.sop_instance_uid && i.status == ImageStatus::Analysed
    })?;
    let carried = format!(
        "analysed for result version {} by {} {}; its pixel data has since been removed by \
         retention",
        prev.version, prev.model.name, prev.model.version
    );
    Some(ImageResult {
        caveat: Some(match &image.caveat {
            Some(c) => format!("{c}; {carried}"),
            None => carried,
        }),
        heatmap: HeatmapState::None,
        timings: Timings::default(),
        ..image.clone()
    })
}

fn for_instance(mut r: ImageResult, inst: &crate::model::InstanceRecord) -> ImageResult {
    if r.sop_instance_uid.is_empty() {
        r.sop_instance_uid = inst.sop_instance_uid.clone();
    }
    r.series_instance_uid = inst.series_instance_uid.clone();
    r
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Assembles the study result from its image results.
pub fn build_result(
    uid: &str,
    version: u32,
    images: Vec<ImageResult>,
    engine: &Engine,
) -> StudyResult {
    let findings = study_findings(&images);
    let mut timings = Timings::default();
    for i in &images {
        timings.add(&i.timings);
    }
    let id = engine.identity();
    StudyResult {
        report_id: report_id(uid, version),
        study_instance_uid: uid.to_string(),
        version,
        triage: findings.iter().any(|f| f.positive),
        findings,
        images,
        model: ModelInfo {
            name: id.name.clone(),
            version: id.version.clone(),
            sha256: id.sha256.clone(),
            weights_sha256: id.weights_sha256.clone(),
            precision: id.precision.to_string(),
            coding_scheme: engine.manifest().coding_scheme.clone(),
        },
        timings,
        created_at: crate::clock::now_millis(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image whose pixels retention removed keeps its earlier findings in a new version
    /// of the study's result, with a caveat naming where they come from; one still on disk,
    /// or not analysed before, is analysed (or reported) as usual.
    #[test]
    fn findings_of_pruned_images_are_carried_into_a_new_version() {
        let finding = crate::result::fixtures::finding("PNEUMONIA", 0.9);
        let image = ImageResult {
            sop_instance_uid: "1.2.3.1".into(),
            series_instance_uid: "1.2.3.0".into(),
            status: ImageStatus::Analysed,
            reason: None,
            caveat: None,
            findings: vec![finding],
            timings: Timings::default(),
            heatmap: HeatmapState::Done {
                code: "PNEUMONIA".into(),
                path: "heatmaps/x.png".into(),
            },
        };
        let prev = crate::result::fixtures::study_result("1.2.3", vec![image.clone()]);
        let inst = |pruned| crate::model::InstanceRecord {
            sop_instance_uid: "1.2.3.1".into(),
            pruned,
            ..Default::default()
        };
        let carried = carried_forward(Some(&prev), &inst(true)).expect("carried");
        assert_eq!(carried.findings, image.findings);
        assert_eq!(carried.status, ImageStatus::Analysed);
        assert_eq!(carried.heatmap, HeatmapState::None);
        let caveat = carried.caveat.unwrap();
        assert!(
            caveat.contains("result version 1") && caveat.contains("removed by retention"),
            "{caveat}"
        );
        assert!(
            carried_forward(Some(&prev), &inst(false)).is_none(),
            "pixels still there"
        );
        assert!(
            carried_forward(None, &inst(true)).is_none(),
            "no earlier result"
        );
        let mut failed = prev.clone();
        failed.images[0].status = ImageStatus::Error;
        assert!(
            carried_forward(Some(&failed), &inst(true)).is_none(),
            "not analysed before"
        );
    }

    /// The reason is logged the first time, when it changes, and again once a minute while
    /// it stays the same, not at every retry.
    #[test]
    fn the_waiting_reason_is_logged_again_every_minute_not_every_retry() {
        let t0 = Instant::now();
        assert!(waiting_log_due(None, t0, false), "first time");
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(
            !waiting_log_due(Some(t0), at(5), false),
            "a retry 5 s later"
        );
        assert!(!waiting_log_due(Some(t0), at(59), false));
        assert!(waiting_log_due(Some(t0), at(60), false), "a minute later");
        assert!(waiting_log_due(Some(t0), at(5), true), "another reason");
    }
}
