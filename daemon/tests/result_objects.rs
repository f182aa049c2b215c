//! The result objects of a report on a real sample radiograph — the TID 1500 Structured
//! Report, the heatmap as a Parametric Map and the heatmap burned into a Secondary Capture —
//! checked by the field's own tools, not by our own reader: `dciodvfy` (dicom3tools)
//! reports no error on any of them; highdicom reads the SR as a TID 1500 measurement report
//! and finds each finding with its standard code, probability, evaluation and algorithm;
//! Orthanc accepts all three over C-STORE (DCMTK `storescu`) and gives back the same
//! attributes and values over REST.

mod common;

use common::validators::dciodvfy;
use common::*;
use duli::model::{InstanceRecord, StudyRecord};
use duli::report::{Finding, Report};
use duli::result::Concept;
use duli::results::{self, parametric_map, sr, uids::ResultUids};
use duli::site_secret::SiteSecret;
use duli::store::Store;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A sample radiograph stored as received, a heatmap PNG beside it, and the report of it.
struct Fixture {
    _dir: TestDir,
    store: Store,
    source: InstanceRecord,
    report: Report,
    uids: ResultUids,
    png: String,
}

fn fixture() -> Option<Fixture> {
    let samples = samples_dir()?;
    let dir = temp_dir("result-objects");
    let store = Store::open(&dir.path().join("data")).unwrap();
    let file = samples.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    let obj = dicom_object::open_file(&file).unwrap();
    let source = results::store_as(&store, &obj, "MODALITY", false).unwrap();
    let study: StudyRecord = store.study(&source.study_instance_uid).unwrap().unwrap();
    // A heatmap at the model's input size: a hot spot in the right lower lung.
    let png = "heatmaps/fixture.png".to_string();
    let mut heat = image::GrayImage::new(150, 150);
    for (x, y, p) in heat.enumerate_pixels_mut() {
        let d = ((x as f32 - 100.0).powi(2) + (y as f32 - 95.0).powi(2)).sqrt();
        p.0 = [(255.0 * (1.0 - d / 80.0).max(0.0)) as u8];
    }
    std::fs::create_dir_all(store.root().join("heatmaps")).unwrap();
    heat.save(store.root().join(&png)).unwrap();
    let report = Report {
        report_id: "r-fixture".into(),
        version: 1,
        study,
        findings: vec![Finding {
            label: "Pneumonia".into(),
            code: "PNEUMONIA".into(),
            probability: 0.9731,
            threshold: 0.5,
            positive: true,
            standard: Some(Concept {
                code: "233604007".into(),
                scheme: "SCT".into(),
                meaning: "Pneumonia".into(),
            }),
        }],
        triage: true,
        model_name: "pneumonia-xception".into(),
        model_version: "0.3.0".into(),
        model_sha256: "ab".repeat(32),
        model_weights_sha256: "cd".repeat(32),
        model_precision: "f32".into(),
        coding_scheme: "99DULI".into(),
        timings_ms: Default::default(),
        source_sop_instance_uids: vec![source.sop_instance_uid.clone()],
        not_applicable: None,
        caveat: Some("patient age 2 y".into()),
        created_at: 1_706_693_415,
    };
    let uids = ResultUids::new(
        "1.2.826.0.1.3680043.8.498.",
        &report.report_id,
        &SiteSecret::from_bytes(&[9u8; 32]),
        "edge-01",
    );
    Some(Fixture {
        _dir: dir,
        store,
        source,
        report,
        uids,
        png,
    })
}

/// Builds and stores the SR, PM and SC; their files in the store.
fn build_all(f: &Fixture) -> Vec<(&'static str, PathBuf)> {
    let pm = duli::record::parametric_map::build(
        &f.store,
        &f.report,
        &f.uids,
        &f.source.sop_instance_uid,
        &f.png,
        "edge-01",
    )
    .unwrap();
    let explanation = sr::ObjectRef {
        sop_class: parametric_map::PARAMETRIC_MAP,
        sop_instance: &f.uids.pm_instance,
        series: &f.uids.pm_series,
        finding: "PNEUMONIA",
        retrieve_ae: "DULI",
    };
    let mut sr = sr::build(
        &f.report,
        &f.uids,
        std::slice::from_ref(&f.source),
        Some(explanation),
    )
    .unwrap();
    // A later result version names the SR it supersedes (checked by the validators too).
    sr::add_predecessor(
        &mut sr,
        &f.report.study.study_instance_uid,
        &sr::Predecessor {
            series: "1.2.826.0.1.3680043.8.498.901".into(),
            sop_instance: "1.2.826.0.1.3680043.8.498.901.1".into(),
        },
    );
    let heatmap = duli::record::Heatmap {
        sop: &f.source.sop_instance_uid,
        png: &f.png,
        code: "PNEUMONIA",
    };
    let sc = duli::record::secondary_capture::build(
        &f.store,
        &f.report,
        &f.uids,
        &heatmap,
        duli::config::InferenceConfig::default().max_pixels,
    )
    .unwrap();
    // The image is read again from the store within the pixel budget.
    let over = duli::record::secondary_capture::build(&f.store, &f.report, &f.uids, &heatmap, 16);
    assert!(
        over.as_ref()
            .is_err_and(|e| e.to_string().contains("too large")),
        "{:?}",
        over.map(|_| ())
    );
    [("SR", sr), ("PM", pm), ("SC", sc)]
        .into_iter()
        .map(|(name, obj)| {
            let rec = results::store_object(&f.store, &obj).unwrap();
            (name, f.store.root().join(rec.path))
        })
        .collect()
}

#[test]
fn dciodvfy_finds_no_error_or_warning_in_the_sr_the_parametric_map_or_the_sc() {
    let Some(f) = fixture() else { return };
    let Some(tool) = require_tool("dciodvfy") else {
        return;
    };
    for (name, file) in build_all(&f) {
        let found = dciodvfy(&tool, &file);
        let text = &found.text;
        eprintln!("dciodvfy {name}:\n{text}");
        assert!(
            found.errors.is_empty(),
            "{name}: {:#?}\n{text}",
            found.errors
        );
        assert!(
            found.warnings.is_empty(),
            "{name}: {:#?}\n{text}",
            found.warnings
        );
        let iod = match name {
            "SR" => "ComprehensiveSR",
            "PM" => "ParametricMap",
            _ => "SC",
        };
        assert!(
            text.contains(iod),
            "{name}: dciodvfy did not check it as {iod}:\n{text}"
        );
    }
    // The SR of a study outside the model's intended use: no findings, the reason said.
    let mut report = f.report.clone();
    report.findings.clear();
    report.not_applicable = Some("age 45 y outside the model's 1\u{2013}5 y".into());
    let na = sr::build(&report, &f.uids, std::slice::from_ref(&f.source), None).unwrap();
    let path = f.store.root().join("not-applicable-sr.dcm");
    na.write_to_file(&path).unwrap();
    let found = dciodvfy(&tool, &path);
    assert!(
        found.errors.is_empty() && found.warnings.is_empty(),
        "not-applicable SR: {:#?} {:#?}\n{}",
        found.errors,
        found.warnings,
        found.text
    );
    // A finding the manifest maps to no standard code (4 of the research model's 18
    // labels): coded with the local scheme only, which the SR declares.
    let mut report = f.report.clone();
    report.findings[0].standard = None;
    report.findings[0].code = "PLEURAL_THICK".into();
    report.findings[0].label = "Pleural thickening".into();
    let path = sr_with_local_codes_only_warned(&f, &tool, &report, "local-code");
    let back = dicom_object::open_file(&path).unwrap();
    let schemes = back
        .element(dicom_dictionary_std::tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE)
        .expect("the local scheme is declared");
    let item = &schemes.items().unwrap()[0];
    let value = |tag| {
        item.element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(
        value(dicom_dictionary_std::tags::CODING_SCHEME_DESIGNATOR),
        "99DULI"
    );
    assert_eq!(
        value(dicom_dictionary_std::tags::CODING_SCHEME_NAME),
        "DULI Edge model label codes"
    );
    // The SR of standard codes only declares no scheme.
    let (_, sr_file) = &build_all(&f)[0];
    assert!(dicom_object::open_file(sr_file)
        .unwrap()
        .element_opt(dicom_dictionary_std::tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE)
        .unwrap()
        .is_none());
}

/// One SR with every finding of the 18-label research model, its standard SNOMED CT and
/// DCM concepts and its 4 local codes: dciodvfy finds no error, and warns only of the
/// declared private scheme.
#[test]
fn dciodvfy_accepts_the_sr_of_every_research_model_label() {
    let Some(f) = fixture() else { return };
    let Some(tool) = require_tool("dciodvfy") else {
        return;
    };
    let mut report = f.report.clone();
    report.findings = common::delivery::research_model_findings();
    assert_eq!(report.findings.len(), 18);
    let local = report.findings.iter().filter(|f| f.standard.is_none());
    assert_eq!(local.count(), 4);
    sr_with_local_codes_only_warned(&f, &tool, &report, "research-model");
}

/// Builds the SR of `report` (file `<name>-sr.dcm`) and asserts that dciodvfy checks it as
/// a Comprehensive SR and finds no error. dciodvfy checks a Coding Scheme Designator
/// against PS3.16's list only: it warns on the declared private scheme wherever it
/// appears, and must warn on nothing else. Returns the file.
fn sr_with_local_codes_only_warned(
    f: &Fixture,
    tool: &Path,
    report: &Report,
    name: &str,
) -> PathBuf {
    let built = sr::build(report, &f.uids, std::slice::from_ref(&f.source), None).unwrap();
    let path = f.store.root().join(format!("{name}-sr.dcm"));
    built.write_to_file(&path).unwrap();
    let found = dciodvfy(tool, &path);
    eprintln!("dciodvfy {name} SR:\n{}", found.text);
    let private = "Warning - Unrecognized defined term <99DULI> for value 1 of attribute \
                   <Coding Scheme Designator>";
    assert!(
        found.errors.is_empty() && found.warnings.iter().all(|w| w == private),
        "{name} SR: {:#?} {:#?}\n{}",
        found.errors,
        found.warnings,
        found.text
    );
    assert!(found.text.contains("ComprehensiveSR"), "{}", found.text);
    path
}

/// The value of `tag` in `obj` as text, without padding; empty when absent.
fn string_of(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .ok()
        .and_then(|e| {
            e.to_str()
                .ok()
                .map(|v| v.trim_end_matches(['\0', ' ']).to_string())
        })
        .unwrap_or_default()
}

/// The SR states what a reader of the document needs beside its findings: the flags of an
/// unverified preliminary result, the analysed image as the evidence (and in the
/// finding's derivation), the Parametric Map as the other evidence and as the visual
/// explanation of the finding it explains, and the appliance as the device observer (its
/// UID, name, manufacturer and the model's name).
#[test]
fn the_sr_states_its_flags_evidence_explanation_and_device_observer() {
    use dicom_dictionary_std::tags;
    let Some(f) = fixture() else { return };
    let files = build_all(&f);
    let sr = dicom_object::open_file(&files[0].1).unwrap();
    let text = |obj: &dicom_object::InMemDicomObject, tag| string_of(obj, tag);
    assert_eq!(text(&sr, tags::VERIFICATION_FLAG), "UNVERIFIED");
    assert_eq!(text(&sr, tags::PRELIMINARY_FLAG), "PRELIMINARY");
    assert_eq!(text(&sr, tags::COMPLETION_FLAG), "COMPLETE");
    // Evidence: study → series → instance, as referenced.
    let referenced = |seq_tag| -> Vec<String> {
        let mut out = Vec::new();
        for study in sr.element(seq_tag).unwrap().items().unwrap() {
            for series in study
                .element(tags::REFERENCED_SERIES_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()
            {
                for inst in series
                    .element(tags::REFERENCED_SOP_SEQUENCE)
                    .unwrap()
                    .items()
                    .unwrap()
                {
                    out.push(text(inst, tags::REFERENCED_SOP_INSTANCE_UID));
                }
            }
        }
        out
    };
    assert_eq!(
        referenced(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE),
        std::slice::from_ref(&f.source.sop_instance_uid)
    );
    assert_eq!(
        referenced(tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE),
        std::slice::from_ref(&f.uids.pm_instance)
    );
    // The map is referenced with where to retrieve it: this box, which serves it also to
    // viewers of a PACS that took the SR but not the map.
    let other = sr.element(tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE).unwrap();
    let series = &other.items().unwrap()[0]
        .element(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(text(series, tags::RETRIEVE_AE_TITLE), "DULI");
    // The content tree, flattened: (concept code value, text or UID value, referenced
    // SOP Instance UIDs).
    fn walk(obj: &dicom_object::InMemDicomObject, out: &mut Vec<(String, String, Vec<String>)>) {
        let Ok(items) = obj.element(tags::CONTENT_SEQUENCE) else {
            return;
        };
        for item in items.items().unwrap() {
            let concept = item
                .element(tags::CONCEPT_NAME_CODE_SEQUENCE)
                .ok()
                .and_then(|e| e.items().and_then(|i| i.first()))
                .map(|c| string_of(c, tags::CODE_VALUE))
                .unwrap_or_default();
            let value = [tags::TEXT_VALUE, tags::UID]
                .into_iter()
                .map(|tag| string_of(item, tag))
                .find(|v| !v.is_empty())
                .unwrap_or_default();
            let refs = item
                .element(tags::REFERENCED_SOP_SEQUENCE)
                .ok()
                .and_then(|e| e.items().map(|i| i.to_vec()))
                .unwrap_or_default()
                .iter()
                .map(|r| string_of(r, tags::REFERENCED_SOP_INSTANCE_UID))
                .collect();
            out.push((concept, value, refs));
            walk(item, out);
        }
    }
    let mut tree = Vec::new();
    walk(&sr, &mut tree);
    let value_of = |code: &str| -> Vec<&str> {
        tree.iter()
            .filter(|(c, _, _)| c == code)
            .map(|(_, v, _)| v.as_str())
            .collect()
    };
    assert_eq!(
        value_of("121012"),
        [f.uids.device_observer.as_str()],
        "Device Observer UID"
    );
    assert_eq!(value_of("121013"), ["DULI Edge"], "Device Observer Name");
    assert_eq!(
        value_of("121014"),
        ["DULI Edge"],
        "Device Observer Manufacturer"
    );
    assert_eq!(
        value_of("121015"),
        ["pneumonia-xception"],
        "Device Observer Model Name"
    );
    let explanation: Vec<&Vec<String>> = tree
        .iter()
        .filter(|(c, _, _)| c == "130401")
        .map(|(_, _, r)| r)
        .collect();
    assert_eq!(
        explanation,
        [&vec![f.uids.pm_instance.clone()]],
        "the visual explanation names the Parametric Map"
    );
}

/// highdicom reads the Parametric Map as one: float pixel values (the saliency, 0 to 1),
/// its palette (the well-known Hot Iron, by UID) over that range, the ICC profile, and an
/// identity value mapping over 0 to 1.
#[test]
fn highdicom_reads_the_parametric_map_with_its_palette_and_value_mapping() {
    let Some(f) = fixture() else { return };
    let Some(mut cmd) = python_script(
        &std::fs::read_to_string(repo_root().join("tests/tools/read_pm.py")).unwrap(),
        &[],
    ) else {
        return;
    };
    let files = build_all(&f);
    let pm = &files[1].1;
    let out = run(cmd.arg(pm), Duration::from_secs(120));
    out.assert_success("highdicom read_pm.py");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["sop_class"], "1.2.840.10008.5.1.4.1.1.30", "{v}");
    assert_eq!(v["pixel_presentation"], "COLOR_RANGE", "{v}");
    assert_eq!(v["palette_uid"], "1.2.840.10008.1.5.1", "{v}");
    assert_eq!(v["float_pixels"], true, "{v}");
    assert_eq!(v["color_range"], serde_json::json!([0.0, 1.0]), "{v}");
    assert_eq!(v["icc_bytes"], 588, "{v}");
    assert_eq!(v["lut_label"], "SALIENCY", "{v}");
    assert_eq!(v["first_last_mapped"], serde_json::json!([0.0, 1.0]), "{v}");
    let range = v["saliency_range"].as_array().unwrap();
    let (lo, hi) = (range[0].as_f64().unwrap(), range[1].as_f64().unwrap());
    assert!(
        (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi) && lo < hi,
        "{v}"
    );
    let side = v["rows_columns"][0]
        .as_u64()
        .unwrap()
        .max(v["rows_columns"][1].as_u64().unwrap());
    assert!(side <= 1024, "{v}");
}

#[test]
fn highdicom_reads_the_sr_as_a_tid_1500_measurement_report() {
    let Some(f) = fixture() else { return };
    let Some(mut cmd) = python_script(
        &std::fs::read_to_string(repo_root().join("tests/tools/read_sr.py")).unwrap(),
        &[],
    ) else {
        return;
    };
    let files = build_all(&f);
    let sr = &files[0].1;
    let out = run(cmd.arg(sr), Duration::from_secs(120));
    out.assert_success("highdicom read_sr.py");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["title"]["value"], "126000", "{v}");
    assert_eq!(v["template"], "1500", "{v}");
    assert_eq!(v["observer_type"]["value"], "121007", "{v}");
    assert_eq!(v["procedure_reported"][0]["value"], "399208008", "{v}");
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{v}");
    let g = &groups[0];
    assert_eq!(g["tracking_identifier"], "Pneumonia", "{v}");
    assert!(g["tracking_uid"]
        .as_str()
        .unwrap()
        .starts_with("1.2.826.0.1.3680043.8.498."));
    assert_eq!(g["finding"]["value"], "233604007", "{v}");
    assert_eq!(g["finding"]["scheme"], "SCT", "{v}");
    assert_eq!(g["algorithm"]["name"], "pneumonia-xception", "{v}");
    assert_eq!(g["algorithm"]["version"], "0.3.0", "{v}");
    let params: Vec<&str> = g["algorithm"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(params.contains(&"precision f32"), "{params:?}");
    assert!(params.contains(&"threshold 0.500000"), "{params:?}");
    assert!(
        params.iter().any(|p| p.starts_with("network sha256 abab")),
        "{params:?}"
    );
    assert!(
        params.iter().any(|p| p.starts_with("weights sha256 cdcd")),
        "{params:?}"
    );
    let m = &g["measurements"][0];
    assert_eq!(m["name"]["value"], "122157", "{v}");
    assert!((m["value"].as_f64().unwrap() - 0.9731).abs() < 1e-6, "{v}");
    assert_eq!(m["unit"]["value"], "1", "{v}");
    let e = &g["evaluations"][0];
    assert_eq!(e["name"]["value"], "233604007", "{v}");
    assert_eq!(e["value"]["value"], "52101004", "{v}");
}

/// The data set of `file` as DCMTK dumps it, without the file meta group (a receiver
/// rewrites it) and without how sequences and items are delimited (DCMTK's storescu sends
/// undefined-length sequences with explicit lengths): the attributes and their values.
fn data_set_dump(file: &Path) -> Vec<String> {
    let out = run_dcmtk("dcmdump", &["-q", file.to_str().unwrap()]).unwrap();
    out.assert_success("dcmdump");
    out.stdout
        .lines()
        .filter(|l| !l.trim_start().starts_with("(0002,"))
        .filter(|l| !l.contains("(fffe,e00d)") && !l.contains("(fffe,e0dd)"))
        .map(|l| {
            let l = l.split('#').next().unwrap_or("").trim_end();
            l.replace("with undefined length", "")
                .replace("with explicit length", "")
        })
        .collect()
}

#[test]
fn orthanc_takes_all_three_by_c_store_and_gives_them_back_unchanged() {
    let Some(f) = fixture() else { return };
    let Some(orthanc) = Orthanc::start() else {
        return;
    };
    let files = build_all(&f);
    let paths: Vec<&Path> = files.iter().map(|(_, p)| p.as_path()).collect();
    store_into(
        &orthanc,
        &paths,
        "storescu of the SR, PM and SC into Orthanc",
    );
    assert_eq!(orthanc.instances().len(), 3, "{:?}", orthanc.instances());
    let dir = temp_dir("result-objects-back");
    for id in orthanc.instances() {
        let raw = orthanc.get(&format!("/instances/{id}/file")).unwrap();
        assert_eq!(raw.status, 200);
        let back = dir.path().join(format!("{id}.dcm"));
        std::fs::write(&back, &raw.body).unwrap();
        let sop = dicom_attr(&back, dicom_dictionary_std::tags::SOP_INSTANCE_UID);
        let (name, ours) = files
            .iter()
            .find(|(_, p)| dicom_attr(p, dicom_dictionary_std::tags::SOP_INSTANCE_UID) == sop)
            .unwrap_or_else(|| panic!("Orthanc returned an object we did not send: {sop}"));
        assert_eq!(
            data_set_dump(ours),
            data_set_dump(&back),
            "{name} came back changed over REST"
        );
    }
}

/// Sends `files` into Orthanc with DCMTK `storescu -R` (proposing exactly the classes of
/// the files: DCMTK's default list has no Parametric Map); `what` names it on failure.
fn store_into(orthanc: &Orthanc, files: &[&Path], what: &str) {
    let port = orthanc.dicom_port.to_string();
    let mut args = vec![
        "-R",
        "-aec",
        orthanc.aet.as_str(),
        "127.0.0.1",
        port.as_str(),
    ];
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    run_dcmtk("storescu", &args).unwrap().assert_success(what);
}

/// A PACS (tests/tools/store_scp.py, pynetdicom) on a free port that takes only `classes`,
/// writing what it receives to `out`; `None` (with a SKIP line) without the Python peers.
fn picky_pacs(dir: &Path, out: &Path, classes: &[&str]) -> Option<(Background, u16)> {
    let port = free_port();
    let mut args = vec![port.to_string(), out.to_str().unwrap().to_string()];
    args.extend(classes.iter().map(|c| c.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = python_script(
        &std::fs::read_to_string(repo_root().join("tests/tools/store_scp.py")).unwrap(),
        &args,
    )?;
    let peer = Background::spawn("store_scp.py", &mut cmd, &dir.join("scp.log")).unwrap();
    assert!(
        wait_for_port(loopback(port), Duration::from_secs(20)),
        "store_scp.py did not start"
    );
    Some((peer, port))
}

/// A PACS that takes the SR and the SC but not the Parametric Map: the push of the SR is
/// acknowledged, the push of the map is refused with a reason that says what to change,
/// and nothing is retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pacs_refusing_the_parametric_map_gets_a_clear_refusal_reason() {
    use duli::config::{PacsDestination, ResultObject};
    use duli::deliver::pacs::PacsChannel;
    use duli::deliver::{Channel, Delivery};
    use duli::store::outbox::{Destination, Entry, EntryState, Kind, Payload};
    let Some(f) = fixture() else { return };
    let dir = temp_dir("picky-pacs");
    let classes = [sr::COMPREHENSIVE_SR, duli::results::sc::SECONDARY_CAPTURE];
    let Some((_peer, port)) = picky_pacs(dir.path(), dir.path(), &classes) else {
        return;
    };
    build_all(&f);
    let dest = PacsDestination {
        name: "picky".into(),
        ae_title: "PICKYPACS".into(),
        host: "127.0.0.1".into(),
        port,
        push: true,
        move_: false,
        tls: false,
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
        result_objects: vec![ResultObject::Sr, ResultObject::Pm],
        max_rejections: 5,
        storage_commitment: false,
        commitment_timeout_s: 300,
    };
    let uids = f.uids.clone();
    let mut channel = PacsChannel::new(
        std::sync::Arc::new(f.store),
        &dest,
        "DULI",
        &duli::deliver::commitment::Commitments::new(),
    );
    let entry = |kind: Kind, uid: &str| Entry {
        id: 1,
        dest: Destination::Pacs("picky".into()),
        kind,
        report_id: "r-fixture".into(),
        study_instance_uid: String::new(),
        payload: Payload::Dicom {
            sop_instance_uids: vec![uid.to_string()],
        },
        attempts: 0,
        rejections: 0,
        state: EntryState::Queued,
        next_attempt_at: 0,
        last_error: None,
        peer_text: None,
        created_at: 0,
    };
    let sr = channel
        .deliver(&entry(Kind::StructuredReport, &uids.sr_instance))
        .await;
    assert_eq!(sr, Delivery::Acked);
    assert!(dir
        .path()
        .join(format!("{}.dcm", uids.sr_instance))
        .exists());
    match channel
        .deliver(&entry(Kind::ParametricMap, &uids.pm_instance))
        .await
    {
        Delivery::Rejected(why) => {
            let why = why.summary;
            assert!(why.contains("does not accept this SOP class"), "{why}");
            assert!(why.contains("result_objects"), "{why}");
        }
        other => panic!("a refused class must be a refusal, not {other:?}"),
    }
}

/// The same PACS behind the running daemon: pushed the SR, the Parametric Map and the SC
/// of a real study, it takes the SR and the SC, and the map's outbox entry ends
/// dead-lettered with the reason (here after the one refusal the destination's
/// `max_rejections = 1` allows; HL7's own limit stays at its default); a C-MOVE of the
/// study to it then moves the image, the SR and the SC and skips the map, whose class it
/// did not negotiate, without failing the move.
#[test]
fn a_pacs_refusing_the_parametric_map_gets_the_rest_by_push_and_by_c_move() {
    let Some(samples) = samples_dir() else { return };
    if !common::inference::inference_available() {
        return;
    }
    if which("movescu").is_none() {
        return skip("movescu absent");
    }
    let dir = temp_dir("picky-daemon");
    let out = dir.path().join("received");
    std::fs::create_dir_all(&out).unwrap();
    let classes = [
        sr::COMPREHENSIVE_SR,
        duli::results::sc::SECONDARY_CAPTURE,
        duli::dimse::uids::DIGITAL_XRAY_PRESENTATION,
    ];
    let Some((_peer, port)) = picky_pacs(dir.path(), &out, &classes) else {
        return;
    };
    let d = Daemon::builder()
        .with_inference()
        .config(
            "pacs",
            "destinations",
            &format!(
                "[{{name = \"picky\", ae_title = \"PICKYPACS\", host = \"127.0.0.1\", \
                 port = {port}, push = true, move = true, result_objects = [\"sr\", \"pm\", \"sc\"], \
                 max_rejections = 1}}]"
            ),
        )
        .start();
    let file = samples.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    d.storescu("MODALITY", &[], std::slice::from_ref(&file))
        .unwrap()
        .assert_success("storescu");

    // The push: SR and SC received, the map's entry dead with the reason.
    let classes = received_classes;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let dead_pm = loop {
        let list = run(&mut d.command(&["outbox", "list"]), Duration::from_secs(30)).stdout;
        let dead: Vec<String> = list
            .lines()
            .filter(|l| l.contains("pacs:picky") && l.contains("dead"))
            .map(str::to_string)
            .collect();
        if !dead.is_empty() && classes(&out).len() == 2 {
            break dead;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "outbox:\n{list}\nreceived: {:?}\n{}",
            classes(&out),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(dead_pm.len(), 1, "{dead_pm:?}");
    assert!(
        dead_pm[0].contains("parametric") || dead_pm[0].contains("pm"),
        "{dead_pm:?}"
    );
    assert!(
        d.log()
            .contains("the PACS does not accept this SOP class (status 0122"),
        "{}",
        d.log()
    );
    assert_eq!(
        classes(&out),
        [duli::results::sc::SECONDARY_CAPTURE, sr::COMPREHENSIVE_SR],
        "pushed"
    );

    // The C-MOVE: the image, the SR and the SC; the map skipped, the move a success.
    for f in std::fs::read_dir(&out).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let study_uid = dicom_attr(&file, dicom_dictionary_std::tags::STUDY_INSTANCE_UID);
    let moved = movescu_study(d.dicom_port, "PICKYPACS", &study_uid).unwrap();
    let text = moved.combined();
    assert!(text.contains("Final Move Response (Success)"), "{text}");
    assert_eq!(
        classes(&out),
        [
            duli::dimse::uids::DIGITAL_XRAY_PRESENTATION,
            duli::results::sc::SECONDARY_CAPTURE,
            sr::COMPREHENSIVE_SR,
        ],
        "moved:\n{text}"
    );
    assert!(d.log().contains("skipped"), "{}", d.log());

    // The C-GET by a peer that negotiates no Parametric Map Storage: the same three, the
    // map neither sent nor counted, the retrieve a success.
    let got = temp_dir("picky-get");
    let Some(answer) = python_tool(
        "qr_client.py",
        &[
            "get",
            &d.dicom_port.to_string(),
            got.path().to_str().unwrap(),
            &study_uid,
        ],
    ) else {
        return;
    };
    answer.assert_success("qr_client.py get");
    let last: serde_json::Value = last_json_line(&answer);
    assert_eq!(last["status"], 0, "{}", answer.combined());
    assert_eq!(last["NumberOfCompletedSuboperations"], 3, "{last}");
    assert_eq!(last["NumberOfFailedSuboperations"], 0, "{last}");
    assert_eq!(std::fs::read_dir(got.path()).unwrap().count(), 3);
}

/// The IOCM rejection note that withdraws the SR, Parametric Map and Secondary Capture made
/// for a former patient of the study: `dciodvfy` checks it as a Key Object Selection
/// Document without error or warning; highdicom reads it as one (TID 2010) with the IOCM
/// title, resolves each reference through its evidence; Orthanc takes it by C-STORE with
/// the objects it names and gives it back unchanged.
#[test]
fn the_rejection_note_is_a_valid_key_object_selection_that_orthanc_takes() {
    use duli::results::rejection;
    let Some(f) = fixture() else { return };
    let files = build_all(&f);
    let rejected: Vec<rejection::Rejected> = files
        .iter()
        .map(|(_, p)| rejection::Rejected {
            series: dicom_attr(p, dicom_dictionary_std::tags::SERIES_INSTANCE_UID),
            sop_class: dicom_attr(p, dicom_dictionary_std::tags::SOP_CLASS_UID),
            sop_instance: dicom_attr(p, dicom_dictionary_std::tags::SOP_INSTANCE_UID),
        })
        .collect();
    assert!(rejection::build(&f.report, &f.uids, &[]).is_err());
    let note = rejection::build(&f.report, &f.uids, &rejected).unwrap();
    let ko = f.store.root().join("rejection-note.dcm");
    note.write_to_file(&ko).unwrap();
    let named: Vec<&str> = rejected.iter().map(|r| r.sop_instance.as_str()).collect();
    assert_eq!(common::validators::key_object_references(&note), named);

    if let Some(tool) = require_tool("dciodvfy") {
        let found = dciodvfy(&tool, &ko);
        let text = &found.text;
        eprintln!("dciodvfy KO:\n{text}");
        assert!(found.errors.is_empty(), "{:#?}\n{text}", found.errors);
        assert!(found.warnings.is_empty(), "{:#?}\n{text}", found.warnings);
        assert!(text.contains("KeyObjectSelectionDocument"), "{text}");
    }
    if let Some(mut cmd) = python_script(
        &std::fs::read_to_string(repo_root().join("tests/tools/read_ko.py")).unwrap(),
        &[],
    ) {
        let out = run(cmd.arg(&ko), Duration::from_secs(120));
        out.assert_success("highdicom read_ko.py");
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(v["title"]["value"], "113038", "{v}");
        assert_eq!(v["title"]["scheme"], "DCM", "{v}");
        assert_eq!(v["template"], "2010", "{v}");
        assert_eq!(v["description"][0], rejection::REASON, "{v}");
        let types: Vec<&str> = v["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value_type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["COMPOSITE", "IMAGE", "IMAGE"], "{v}");
        for (r, resolved) in rejected.iter().zip(v["resolved"].as_array().unwrap()) {
            assert_eq!(resolved[1], r.series.as_str(), "{v}");
            assert_eq!(resolved[2], r.sop_instance.as_str(), "{v}");
        }
    }
    let Some(orthanc) = Orthanc::start() else {
        return;
    };
    let mut paths: Vec<&Path> = files.iter().map(|(_, p)| p.as_path()).collect();
    paths.push(&ko);
    store_into(
        &orthanc,
        &paths,
        "storescu of the result objects and their rejection note",
    );
    let sop = dicom_attr(&ko, dicom_dictionary_std::tags::SOP_INSTANCE_UID);
    let dir = temp_dir("rejection-note-back");
    let back = dir.path().join("ko.dcm");
    let id = orthanc
        .instances()
        .into_iter()
        .find(|id| {
            let raw = orthanc.get(&format!("/instances/{id}/file")).unwrap();
            std::fs::write(&back, &raw.body).unwrap();
            dicom_attr(&back, dicom_dictionary_std::tags::SOP_INSTANCE_UID) == sop
        })
        .expect("Orthanc holds the rejection note");
    assert_eq!(
        data_set_dump(&ko),
        data_set_dump(&back),
        "{id} came back changed"
    );
}
