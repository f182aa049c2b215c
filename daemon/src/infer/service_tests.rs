//! The inference stage over a real store: eligibility and error records, a missing runtime
//! and a bad checksum, and a burst of studies. A deterministic test backend stands in for
//! the runtime here (the golden tests run the real one), so these run everywhere.

use super::backend::{Backend, BackendError, CompileOptions, Compiled, Request};
use super::manifest::Manifest;
use super::record;
use super::service::{run_pipeline_with, EngineFactory, PipelineOptions};
use super::testdata::samples_dir;
use super::{Engine, EngineError};
use crate::config::InferenceConfig;
use crate::model::{InstanceRecord, StudyRecord, StudyState};
use crate::result::{HeatmapState, ImageStatus};
use crate::store::Store;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Probability of PNEUMONIA = mean input value mapped to [0, 1]; `delay` per call.
struct MeanBackend {
    delay: Duration,
    calls: Arc<AtomicUsize>,
}

struct MeanCompiled(Duration, Arc<AtomicUsize>, usize);
struct MeanRequest(Duration, Arc<AtomicUsize>, usize);

impl Backend for MeanBackend {
    fn name(&self) -> String {
        "mean-test".into()
    }
    fn compile(
        &mut self,
        m: &Manifest,
        _o: CompileOptions,
    ) -> Result<Box<dyn Compiled>, BackendError> {
        Ok(Box::new(MeanCompiled(
            self.delay,
            Arc::clone(&self.calls),
            m.input_len(),
        )))
    }
}

impl Compiled for MeanCompiled {
    fn optimal_requests(&self) -> usize {
        2
    }
    fn request(&mut self) -> Result<Box<dyn Request>, BackendError> {
        Ok(Box::new(MeanRequest(self.0, Arc::clone(&self.1), self.2)))
    }
}

impl Request for MeanRequest {
    fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, BackendError> {
        std::thread::sleep(self.0);
        self.1.fetch_add(1, Ordering::Relaxed);
        Ok(input
            .chunks(self.2)
            .flat_map(|x| {
                let p = (x.iter().sum::<f32>() / x.len() as f32 + 1.0) / 2.0;
                [1.0 - p, p]
            })
            .collect())
    }
}

fn manifest() -> Manifest {
    Manifest::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/pneumonia-xception/model.toml"),
    )
    .unwrap()
}

fn test_engine(delay: Duration) -> (Engine, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let backend = MeanBackend {
        delay,
        calls: Arc::clone(&calls),
    };
    (
        Engine::with_backend(manifest(), "00".repeat(32), Box::new(backend)).unwrap(),
        calls,
    )
}

fn factory(delay: Duration) -> EngineFactory {
    Arc::new(move || Ok(test_engine(delay).0))
}

/// Copies `src` into the store's file area as instance `sop` of `study`, optionally
/// changing the data set first.
fn add_instance(
    store: &Store,
    study: &str,
    sop: &str,
    src: &Path,
    edit: impl FnOnce(&mut dicom_object::DefaultDicomObject),
) {
    let rel = format!("files/{study}/{sop}.dcm");
    let dest = store.root().join(&rel);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    if crate::infer::analyse::is_dicom(src) {
        let mut obj = dicom_object::open_file(src).unwrap();
        obj.put(DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop),
        ));
        obj.meta_mut().media_storage_sop_instance_uid = sop.to_string();
        edit(&mut obj);
        obj.meta_mut().update_information_group_length();
        obj.write_to_file(&dest).unwrap();
    } else {
        std::fs::copy(src, &dest).unwrap();
    }
    let inst = InstanceRecord {
        sop_instance_uid: sop.into(),
        study_instance_uid: study.into(),
        series_instance_uid: format!("{study}.1"),
        path: rel,
        ..Default::default()
    };
    store
        .commit_instance(&inst, &StudyRecord::default())
        .unwrap();
    store
        .transition(study, &[StudyState::Receiving], StudyState::Complete)
        .unwrap();
}

fn cs(tag: dicom_core::Tag, v: &str) -> DataElement<dicom_object::InMemDicomObject> {
    DataElement::new(tag, VR::CS, PrimitiveValue::from(v))
}

async fn wait_for(store: &Store, uid: &str, states: &[StudyState]) -> StudyRecord {
    for _ in 0..2000 {
        if let Some(s) = store.study(uid).unwrap() {
            if states.contains(&s.state) {
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "study {uid} never reached {states:?}: {:?}",
        store.study(uid).unwrap()
    );
}

/// The heatmap state of the first image of `study`'s latest result, once it is no longer
/// pending (or after 5 s).
async fn wait_heatmap(store: &Store, study: &str) -> HeatmapState {
    let mut state = HeatmapState::None;
    for _ in 0..500 {
        state = record::latest_result(store, study).unwrap().unwrap().images[0]
            .heatmap
            .clone();
        if matches!(
            state,
            HeatmapState::Done { .. } | HeatmapState::Skipped { .. }
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    state
}

/// Starts the pipeline with the instant test engine; returns its input and its task.
fn start(
    store: &Arc<Store>,
    options: PipelineOptions,
) -> (mpsc::Sender<String>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(run_pipeline_with(
        Arc::clone(store),
        factory(Duration::ZERO),
        rx,
        options,
    ));
    (tx, task)
}

/// Runs the pipeline over `studies` until each has its result and heatmap, then stops it.
async fn analyse_and_stop(store: &Arc<Store>, studies: &[&str]) {
    let (tx, task) = start(store, PipelineOptions::default());
    for study in studies {
        tx.send(study.to_string()).await.unwrap();
        wait_for(store, study, &[StudyState::Done]).await;
        wait_heatmap(store, study).await;
    }
    drop(tx);
    task.await.unwrap();
}

/// A restart between a result and its heatmap leaves the heatmap pending: the next start
/// makes it (and calls the hook that makes the Secondary Capture); one whose image is
/// gone is recorded as skipped with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heatmaps_left_pending_by_a_restart_are_made_on_the_next_start() {
    let Some(dir) = samples_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path()).unwrap());
    let src = dir.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    add_instance(&store, "1.2.5", "1.2.5.1", &src, |_| {});
    add_instance(&store, "1.2.6", "1.2.6.1", &src, |_| {});
    analyse_and_stop(&store, &["1.2.5", "1.2.6"]).await;

    // Recording the heatmaps cleared their marks.
    assert!(record::pending_heatmaps(&store).unwrap().is_empty());

    // As if the daemon died before the heatmaps were made (result pending, mark present);
    // one image is gone since.
    let pending = || HeatmapState::Pending {
        code: "PNEUMONIA".into(),
    };
    for (study, sop) in [("1.2.5", "1.2.5.1"), ("1.2.6", "1.2.6.1")] {
        record::set_heatmap(&store, study, 1, sop, pending(), 0.0).unwrap();
        record::mark_pending_heatmap(&store, study, 1, sop).unwrap();
    }
    assert_eq!(record::pending_heatmaps(&store).unwrap().len(), 2);
    std::fs::remove_file(store.root().join("files/1.2.6/1.2.6.1.dcm")).unwrap();

    // The record stage announces each heatmap it records as made (the first run's last
    // announcement follows its mark's removal by a flush: let it pass first).
    let mut changes = store.changes();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    while changes.try_recv().is_ok() {}
    let (tx, task) = start(&store, PipelineOptions::default());
    let HeatmapState::Done { path, code } = wait_heatmap(&store, "1.2.5").await else {
        panic!("heatmap not made after the restart");
    };
    assert_eq!(code, "PNEUMONIA");
    assert!(store.root().join(path).is_file());
    let HeatmapState::Skipped { reason } = wait_heatmap(&store, "1.2.6").await else {
        panic!("the heatmap of a vanished image is not recorded as skipped");
    };
    let mut announced = Vec::new();
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while announced.is_empty() {
        match tokio::time::timeout_at(until, changes.recv()).await {
            Ok(Ok(crate::store::Change::Result { study_uid })) => announced.push(study_uid),
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    // The skipped one is announced too (its study page shows why there is no heatmap).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    while let Ok(change) = changes.try_recv() {
        if let crate::store::Change::Result { study_uid } = change {
            announced.push(study_uid);
        }
    }
    announced.sort();
    announced.dedup();
    assert_eq!(announced, vec!["1.2.5".to_string(), "1.2.6".to_string()]);
    assert!(!reason.is_empty());
    assert!(record::pending_heatmaps(&store).unwrap().is_empty());
    drop(tx);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_study_records_not_applicable_and_error_and_analyses_the_rest() {
    let Some(dir) = samples_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path()).unwrap());
    let src = dir.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    let study = "1.2.3.4";
    add_instance(&store, study, "1.2.3.4.1", &src, |_| {});
    add_instance(&store, study, "1.2.3.4.2", &src, |o| {
        o.put(cs(tags::VIEW_POSITION, "LL"));
    });
    add_instance(&store, study, "1.2.3.4.3", &src, |o| {
        o.put(cs(tags::MODALITY, "CT"));
        o.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.2"),
        ));
    });
    add_instance(&store, study, "1.2.3.4.4", &src, |o| {
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U8(vec![1u8; 10].into()),
        ));
    });
    // The record stage announces each durable result on the store's broadcast.
    let mut changes = store.changes();
    let (tx, task) = start(&store, PipelineOptions::default());
    tx.send(study.to_string()).await.unwrap();
    loop {
        match changes.recv().await.unwrap() {
            crate::store::Change::Result { study_uid } if study_uid == study => break,
            _ => {}
        }
    }
    let rid = crate::result::report_id(study, 1);
    let s = wait_for(&store, study, &[StudyState::Done]).await;
    assert_eq!(s.result_version, 1);
    let r = record::latest_result(&store, study).unwrap().unwrap();
    assert_eq!(r.report_id, rid);
    let by_sop = |sop: &str| r.images.iter().find(|i| i.sop_instance_uid == sop).unwrap();
    assert_eq!(by_sop("1.2.3.4.1").status, ImageStatus::Analysed);
    assert_eq!(by_sop("1.2.3.4.1").findings.len(), 1);
    assert_eq!(by_sop("1.2.3.4.2").status, ImageStatus::NotApplicable);
    assert_eq!(
        by_sop("1.2.3.4.2").reason.as_deref(),
        Some("lateral view (LL)")
    );
    assert_eq!(by_sop("1.2.3.4.3").status, ImageStatus::NotApplicable);
    assert_eq!(
        by_sop("1.2.3.4.3").reason.as_deref(),
        Some("modality CT is not CR or DX")
    );
    let broken = by_sop("1.2.3.4.4");
    assert_eq!(broken.status, ImageStatus::Error);
    assert!(
        broken.reason.as_deref().unwrap().contains("pixel data"),
        "{broken:?}"
    );
    assert_eq!(r.findings, by_sop("1.2.3.4.1").findings);
    assert_eq!(r.triage, r.findings[0].positive);
    // The heatmap of the analysed image is computed after the result and recorded.
    let state = wait_heatmap(&store, study).await;
    let HeatmapState::Done { path, code } = state else {
        panic!("heatmap: {state:?}")
    };
    assert_eq!(code, "PNEUMONIA");
    let png = image::open(store.root().join(path)).unwrap();
    assert_eq!((png.width(), png.height()), (150, 150));
    drop(tx);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_with_only_undecodable_images_ends_in_error() {
    let Some(dir) = samples_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path()).unwrap());
    let src = dir.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    add_instance(&store, "9.9", "9.9.1", &src, |o| {
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U8(vec![0u8; 4].into()),
        ));
    });
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(run_pipeline_with(
        Arc::clone(&store),
        factory(Duration::ZERO),
        rx,
        PipelineOptions::default(),
    ));
    tx.send("9.9".into()).await.unwrap();
    let s = wait_for(&store, "9.9", &[StudyState::Error]).await;
    assert!(s.error.unwrap().contains("no image could be analysed"));
    drop(tx);
    task.await.unwrap();
}

#[test]
fn missing_runtime_and_bad_checksum_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = InferenceConfig {
        model: Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/pneumonia-xception/model.toml"),
        openvino_lib: Some(tmp.path().join("nowhere/libopenvino_c.so")),
        ..Default::default()
    };
    if manifest().verify_files().is_ok() {
        let err = Engine::new(&cfg).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::Backend(BackendError::RuntimeMissing { .. })
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("scripts/setup-openvino.sh"),
            "{err}"
        );
    } else {
        eprintln!(
            "SKIP (runtime part): pneumonia-xception weights absent (run scripts/setup-models.sh)"
        );
    }
    // Same model files, wrong checksum in the manifest.
    let text = std::fs::read_to_string(&cfg.model).unwrap();
    let bad = text.replace(
        "b092f4cb54f2dfbd77ae4f1b853dd2915b9800c0d60e5b327a925f3ed79641b9",
        &"ab".repeat(32),
    );
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.toml"), bad).unwrap();
    let xml = cfg
        .model
        .parent()
        .unwrap()
        .join("pneumonia_xception_fp16.xml");
    std::fs::write(
        dir.join("pneumonia_xception_fp16.xml"),
        std::fs::read(&xml).unwrap_or_default(),
    )
    .unwrap();
    let err = Engine::from_manifest_path(&dir.join("model.toml"), &cfg).unwrap_err();
    assert!(matches!(err, EngineError::Model(_)));
    assert!(err.to_string().contains("SHA-256"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn studies_wait_queued_while_the_engine_is_missing_and_finish_once_it_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path()).unwrap());
    let png = write_png(tmp.path(), 32);
    add_instance(&store, "5.5", "5.5.1", &png, |_| {});
    let available = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (a, n) = (Arc::clone(&available), Arc::clone(&attempts));
    let factory: EngineFactory = Arc::new(move || {
        n.fetch_add(1, Ordering::Relaxed);
        if a.load(Ordering::Relaxed) {
            Ok(test_engine(Duration::ZERO).0)
        } else {
            Err(EngineError::Backend(BackendError::RuntimeMissing {
                reason: "test: no runtime".into(),
                hint: "install it".into(),
            }))
        }
    });
    let options = PipelineOptions {
        retry_after: Duration::from_millis(50),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(2);
    let task = tokio::spawn(run_pipeline_with(Arc::clone(&store), factory, rx, options));
    tx.send("5.5".into()).await.unwrap();
    wait_for(&store, "5.5", &[StudyState::Queued]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store.study("5.5").unwrap().unwrap().state,
        StudyState::Queued
    );
    assert!(attempts.load(Ordering::Relaxed) >= 2, "loading is retried");
    assert!(!task.is_finished(), "the stage stays alive");
    available.store(true, Ordering::Relaxed);
    wait_for(&store, "5.5", &[StudyState::Done]).await;
    drop(tx);
    task.await.unwrap();
}

fn write_png(dir: &Path, v: u8) -> PathBuf {
    let p = dir.join(format!("img{v}.png"));
    // A few grey levels around `v`: an image the model can read (a blank one is refused).
    image::GrayImage::from_fn(64, 48, |x, y| {
        image::Luma([v.saturating_add(((x + y) % 8) as u8)])
    })
    .save(&p)
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100_studies_is_bounded_and_all_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path()).unwrap());
    let png = write_png(tmp.path(), 200);
    let uids: Vec<String> = (0..100).map(|i| format!("7.{i}")).collect();
    for u in &uids {
        add_instance(&store, u, &format!("{u}.1"), &png, |_| {});
    }
    let (tx, rx) = mpsc::channel(4);
    let options = PipelineOptions {
        heatmaps: false,
        ..Default::default()
    };
    let delay = Duration::from_millis(5);
    let task = tokio::spawn(run_pipeline_with(
        Arc::clone(&store),
        factory(delay),
        rx,
        options,
    ));
    // Watch how many studies are being analysed at once, from the store's broadcast of
    // study records: a study's `done` is broadcast before its slot is released, so the
    // next `inferring` comes after it and the count is exact.
    let mut changes = store.changes();
    let peak = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&peak);
    let watcher = tokio::spawn(async move {
        let mut inferring = std::collections::HashSet::new();
        loop {
            let change = match changes.recv().await {
                Ok(c) => c,
                Err(e) => panic!("the watcher missed study changes: {e}"),
            };
            if let crate::store::Change::Study(s) = change {
                if s.state == StudyState::Inferring {
                    inferring.insert(s.study_instance_uid);
                } else {
                    inferring.remove(&s.study_instance_uid);
                }
                p.fetch_max(inferring.len(), Ordering::Relaxed);
            }
        }
    });
    let start = std::time::Instant::now();
    for u in &uids {
        tx.send(u.clone()).await.unwrap();
    }
    let send_time = start.elapsed();
    for u in &uids {
        wait_for(&store, u, &[StudyState::Done]).await;
    }
    drop(tx);
    task.await.unwrap();
    assert!(!watcher.is_finished(), "the watcher stopped early");
    watcher.abort();
    // Two workers: at most two studies in flight at once, and the sender was held back by
    // the bounded channel (100 × 5 ms over 2 workers ≥ 250 ms).
    let peak = peak.load(Ordering::Relaxed);
    assert!((1..=2).contains(&peak), "peak {peak}");
    assert!(
        send_time >= Duration::from_millis(150),
        "sends took {send_time:?}"
    );
    let r = record::latest_result(&store, "7.99").unwrap().unwrap();
    assert_eq!(r.images[0].status, ImageStatus::Analysed);
}

/// A study that new instances reopen while it is analysed, and that comes back complete
/// before that analysis ends, is analysed again only once it has: never by two workers at
/// once (the later of two overlapping analyses, not the one that saw the new instances,
/// would otherwise become the latest result). Its first result is kept as version 1 and
/// the second, with both images, becomes version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_that_comes_back_during_its_analysis_waits_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path()).unwrap());
    add_instance(&store, "8.1", "8.1.1", &write_png(tmp.path(), 40), |_| {});
    let (tx, rx) = mpsc::channel(4);
    let options = PipelineOptions {
        heatmaps: false,
        ..Default::default()
    };
    // Two workers (the test backend's optimal request count), 400 ms per image.
    let task = tokio::spawn(run_pipeline_with(
        Arc::clone(&store),
        factory(Duration::from_millis(400)),
        rx,
        options,
    ));
    let mut changes = store.changes();
    tx.send("8.1".to_string()).await.unwrap();
    wait_for(&store, "8.1", &[StudyState::Inferring]).await;
    add_instance(&store, "8.1", "8.1.2", &write_png(tmp.path(), 220), |_| {});
    tx.send("8.1".to_string()).await.unwrap();
    for _ in 0..2000 {
        let s = store.study("8.1").unwrap().unwrap();
        if s.state == StudyState::Done && s.result_version == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(tx);
    task.await.unwrap();

    // What the store broadcast, in order: no second `inferring` before the first result.
    let mut seen = Vec::new();
    loop {
        match changes.try_recv() {
            Ok(crate::store::Change::Study(s)) => seen.push(s.state.as_str().to_string()),
            Ok(crate::store::Change::Result { .. }) => seen.push("result".to_string()),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
            Err(e) => panic!("missed study changes: {e}"),
        }
    }
    let first_result = seen.iter().position(|s| s == "result").unwrap();
    let analyses_before = seen[..first_result]
        .iter()
        .filter(|s| *s == "inferring")
        .count();
    assert_eq!(analyses_before, 1, "{seen:?}");
    let images = |v| {
        record::result(&store, "8.1", v)
            .unwrap()
            .unwrap_or_else(|| panic!("no version {v}: {seen:?}"))
            .images
            .len()
    };
    assert_eq!((images(1), images(2)), (1, 2), "{seen:?}");
    let s = store.study("8.1").unwrap().unwrap();
    assert_eq!(
        (s.state, s.result_version),
        (StudyState::Done, 2),
        "{seen:?}"
    );
}

/// A study whose only image was sent again under another study is left with nothing to
/// report on: it ends in error with the reason, and no result (so nothing for the RIS or
/// the PACS) is made for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_whose_images_all_moved_to_another_study_gets_no_report() {
    let Some(dir) = samples_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path()).unwrap());
    let src = dir.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    add_instance(&store, "9.7", "9.7.1", &src, |_| {});
    // The same instance again, now in study 9.8.
    let moved = InstanceRecord {
        sop_instance_uid: "9.7.1".into(),
        study_instance_uid: "9.8".into(),
        series_instance_uid: "9.8.1".into(),
        path: "files/9.7/9.7.1.dcm".into(),
        ..Default::default()
    };
    store
        .commit_instance(&moved, &StudyRecord::default())
        .unwrap();
    assert_eq!(store.study("9.7").unwrap().unwrap().instances, 0);
    let (tx, task) = start(&store, PipelineOptions::default());
    tx.send("9.7".into()).await.unwrap();
    let s = wait_for(&store, "9.7", &[StudyState::Error]).await;
    assert!(
        s.error
            .as_deref()
            .unwrap_or("")
            .contains("sent again under another study"),
        "{s:?}"
    );
    assert_eq!(s.result_version, 0, "no result for an emptied study");
    drop(tx);
    task.await.unwrap();
}

/// A study of more images than get heatmaps: every image is analysed, the first
/// MAX_HEATMAP_IMAGES get a heatmap and the others say why they have none, so the inputs
/// held for heatmaps until the result is recorded stay bounded whatever the study's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_bounded_number_of_images_of_a_study_get_a_heatmap() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path()).unwrap());
    let png = write_png(tmp.path(), 120);
    let n = crate::infer::service::MAX_HEATMAP_IMAGES + 4;
    for i in 0..n {
        add_instance(&store, "8.1", &format!("8.1.{i}"), &png, |_| {});
    }
    let (tx, task) = start(&store, PipelineOptions::default());
    tx.send("8.1".into()).await.unwrap();
    wait_for(&store, "8.1", &[StudyState::Done]).await;
    drop(tx);
    task.await.unwrap();
    let r = record::latest_result(&store, "8.1").unwrap().unwrap();
    assert_eq!(r.images.len(), n);
    assert!(r.images.iter().all(|i| i.status == ImageStatus::Analysed));
    // The last four are beyond the bound (of the others, those over the heatmap worker's
    // backlog are skipped for that reason).
    let beyond: Vec<bool> = r
        .images
        .iter()
        .map(|i| {
            matches!(&i.heatmap, HeatmapState::Skipped { reason }
                if reason.starts_with("only the first"))
        })
        .collect();
    let expected: Vec<bool> = (0..n).map(|i| i >= n - 4).collect();
    assert_eq!(
        beyond,
        expected,
        "{:?}",
        r.images.iter().map(|i| &i.heatmap).collect::<Vec<_>>()
    );
}
