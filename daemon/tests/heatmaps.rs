//! Class-activation heatmaps end to end over a real store and the real runtime: a `cam`
//! model makes the heatmap in the result's own inference pass, so when the analysis of a
//! study returns its heatmap is already done (no background worker involved), timed, and
//! the record stage has made the Parametric Map and the Secondary Capture from it, with the
//! SR pointing at the map as the finding's visual explanation. The shipped model, switched
//! to `cam` in memory (its manifest names the block; it ships with occlusion).

mod common;

use common::inference::inference_available;
use common::*;
use duli::config::{Config, InferenceConfig};
use duli::infer::manifest::{HeatmapMethod, Manifest};
use duli::infer::service::{analyse_study, PipelineOptions};
use duli::infer::Engine;
use duli::model::StudyState;
use duli::record::{Delivery, Recorder};
use duli::result::{HeatmapState, ImageStatus};
use duli::results::uids::ResultUids;
use duli::site_secret::SiteSecret;
use duli::store::Store;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cam_model_makes_the_heatmap_and_its_objects_with_the_result() {
    let Some(samples) = samples_dir() else { return };
    if !inference_available() {
        return;
    }
    let dir = temp_dir("cam-heatmap");
    let store = Arc::new(Store::open(&dir.path().join("data")).unwrap());
    let outbox = Arc::new(store.outbox(Default::default()).unwrap());
    let secret = Arc::new(SiteSecret::from_bytes(&[5u8; 32]));
    let root = "1.2.826.0.1.3680043.8.498.";
    let plan = duli::deliver::plan::DeliveryPlan::from_config(&Config::default());
    let device = plan.device_id.clone();
    let delivery = Delivery {
        outbox,
        plan,
        secret: Arc::clone(&secret),
        uid_root: root.into(),
        ae_title: "DULI".into(),
        max_pixels: InferenceConfig::default().max_pixels,
    };
    let recorder = Arc::new(Recorder::new(Arc::clone(&store), Some(delivery)));
    let cfg = InferenceConfig {
        model: repo_root().join("models/pneumonia-xception/model.toml"),
        openvino_lib: Some(repo_root().join(".cache/openvino/libs/libopenvino_c.so")),
        ..Default::default()
    };
    let mut m = Manifest::load(&cfg.model).unwrap();
    assert!(
        m.heatmap.features.is_some(),
        "the shipped manifest names its block"
    );
    m.heatmap.method = HeatmapMethod::Cam;
    let sha = m.verify_files().unwrap();
    let backend = duli::infer::openvino::OpenVino::new(&cfg).unwrap();
    let engine = Arc::new(Engine::with_backend(m, sha, Box::new(backend)).unwrap());
    assert!(engine.cam().is_some());

    // A received study, as receive and assembly leave it.
    let src = samples.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    let obj = dicom_object::open_file(&src).unwrap();
    let inst = duli::results::store_as(&store, &obj, "MODALITY", false).unwrap();
    let study = inst.study_instance_uid.clone();
    store
        .transition(&study, &[StudyState::Receiving], StudyState::Complete)
        .unwrap();
    store
        .transition(&study, &[StudyState::Complete], StudyState::Queued)
        .unwrap();

    let options = PipelineOptions {
        recorder: Some(Arc::clone(&recorder)),
        ..Default::default()
    };
    // No occlusion worker: the map can only come from the result's pass.
    analyse_study(&store, &engine, None, &options, &study).await;
    let result = duli::store::results::latest_result(&store, &study)
        .unwrap()
        .unwrap();
    let image = &result.images[0];
    assert_eq!(image.status, ImageStatus::Analysed, "{image:?}");
    let HeatmapState::Done { code, path } = &image.heatmap else {
        panic!("heatmap not done with the result: {:?}", image.heatmap);
    };
    assert_eq!(code, "PNEUMONIA");
    let png = image::open(store.root().join(path)).unwrap().to_luma8();
    assert_eq!((png.width(), png.height()), (150, 150));
    assert!(png.as_raw().iter().any(|v| *v > 200), "an empty map");
    assert!(image.timings.heatmap_ms > 0.0);
    let uids = ResultUids::new(root, &result.report_id, &secret, &device);
    for uid in [&uids.sr_instance, &uids.pm_instance, &uids.sc_instance] {
        assert!(store.instance(uid).unwrap().is_some(), "{uid} not made");
    }
    let sr = store.instance(&uids.sr_instance).unwrap().unwrap();
    let bytes = std::fs::read(store.root().join(&sr.path)).unwrap();
    assert!(
        bytes
            .windows(uids.pm_instance.len())
            .any(|w| w == uids.pm_instance.as_bytes()),
        "the SR does not reference the Parametric Map"
    );
}
