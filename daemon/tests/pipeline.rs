//! The whole path of one study with every peer real: a chest X-ray sent by `storescu` is
//! analysed with OpenVINO, and its report reaches the RIS (an MLLP listener in this test
//! answering `AA`), the cloud (Mosquitto, read by `mosquitto_sub`) and the PACS (Orthanc
//! receives, once the heatmap is ready, the Parametric Map, the SC and the SR that references the map); then the
//! same peers through an
//! outage of 50 studies and through SIGKILLs while the outbox drains.

mod common;

use common::inference::inference_available;
use common::link::TcpLink;
use common::ris::wait_drained;
use common::*;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An MLLP listener that records every message and answers `AA` with MSA-2 = MSH-10.
fn mllp_listener() -> (u16, Arc<Mutex<Vec<String>>>) {
    mllp_listener_slow(Duration::ZERO)
}

/// [`mllp_listener`] that waits `delay` before each answer (a slow RIS).
fn mllp_listener_slow(delay: Duration) -> (u16, Arc<Mutex<Vec<String>>>) {
    common::ris::scripted_ris(Arc::new(|_, id: &str| common::ris::aa(id)), delay)
}

/// `studies` one-image 256×256 chest DX studies made by tests/tools/make_dx.py in `dir`.
fn make_studies(dir: &std::path::Path, studies: usize) -> Option<Vec<PathBuf>> {
    let script = std::fs::read_to_string(repo_root().join("tests/tools/make_dx.py")).unwrap();
    let n = studies.to_string();
    let mut cmd = python_script(
        &script,
        &[
            dir.to_str().unwrap(),
            "--count",
            &n,
            "--studies",
            &n,
            "--rows",
            "256",
            "--cols",
            "256",
        ],
    )?;
    run(&mut cmd, Duration::from_secs(120)).assert_success("make_dx.py");
    Some(dicom_files(dir))
}

/// The report ids of `dest`'s `report` entries in the outbox, in delivery order.
fn queued_reports(d: &Daemon, dest: &str) -> Vec<String> {
    let out = run(
        &mut d.command(&["outbox", "list", dest]),
        Duration::from_secs(30),
    );
    out.assert_success("duli outbox list");
    out.stdout
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.get(2) == Some(&"report")).then(|| cols.get(7).map(|r| r.to_string()))?
        })
        .collect()
}

/// The report ids of the MQTT reports `mosquitto_sub -v` printed, in arrival order.
fn mqtt_reports(sub_log: &str) -> Vec<String> {
    sub_log
        .lines()
        .filter(|l| l.contains("/reports {"))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
        .filter_map(|v| v["report_id"].as_str().map(String::from))
        .collect()
}

/// The report ids the cloud sees for the device's report ids `ids` (keyed by the site
/// secret of `d`).
fn cloud_ids(d: &Daemon, ids: &[String]) -> Vec<String> {
    let secret =
        duli::site_secret::SiteSecret::load_or_generate(&d.data_dir().join("site_secret")).unwrap();
    ids.iter()
        .map(|id| duli::deliver::mqtt::payload::cloud_report_id(&secret, id))
        .collect()
}

/// The HL7 control ids (MSH-10) of the device's report ids `ids` (keyed by the site
/// secret of `d`, sent by the default box).
fn hl7_ids(d: &Daemon, ids: &[String]) -> Vec<String> {
    let secret =
        duli::site_secret::SiteSecret::load_or_generate(&d.data_dir().join("site_secret")).unwrap();
    let device = duli::config::Config::default().device.device_id;
    ids.iter()
        .map(|id| duli::deliver::hl7::message::control_id_of(&secret, &device, id))
        .collect()
}

/// The cloud's report ids of the HL7 control ids `controls`, through the report ids of
/// the studies `d` lists (one result version each).
fn cloud_ids_of_hl7(d: &Daemon, controls: &[String]) -> Vec<String> {
    let out = run(&mut d.command(&["studies"]), Duration::from_secs(30));
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let reports: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let uid = s["study_instance_uid"].as_str().unwrap();
            let version = s["result_version"].as_u64().unwrap().max(1) as u32;
            duli::result::report_id(uid, version)
        })
        .collect();
    let by_control: std::collections::HashMap<String, String> =
        hl7_ids(d, &reports).into_iter().zip(reports).collect();
    let local: Vec<String> = controls
        .iter()
        .map(|c| {
            by_control
                .get(c)
                .cloned()
                .unwrap_or_else(|| format!("unknown {c}"))
        })
        .collect();
    cloud_ids(d, &local)
}

/// `ids` without repeats, first arrival kept.
fn distinct(ids: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.iter().filter(|i| seen.insert(*i)).cloned().collect()
}

/// `mosquitto_sub` on every `duli/` topic of `mq` (QoS 1), printing topic and body.
fn subscribe(mq: &Mosquitto, dir: &std::path::Path) -> Background {
    let mut sub_cmd = mq.client("mosquitto_sub").unwrap();
    sub_cmd.args(["-t", "duli/#", "-v", "-q", "1"]);
    Background::spawn("mosquitto_sub", &mut sub_cmd, &dir.join("sub.log")).unwrap()
}

/// A daemon with inference, HL7 to `hl7_port` and MQTT to `mqtt_port` (plain TCP).
fn with_peers(hl7_port: u16, mqtt_port: u16) -> DaemonBuilder {
    Daemon::builder()
        .with_inference()
        .config("hl7", "enabled", "true")
        .config("hl7", "port", &hl7_port.to_string())
        .config("hl7", "tls", "false")
        .config("mqtt", "enabled", "true")
        .config("mqtt", "port", &mqtt_port.to_string())
        .config("mqtt", "tls", "false")
}

/// A daemon with inference, HL7 to `hl7_port` (plain TCP) and its SRs pushed to
/// `orthanc`.
fn with_ris_and_sr_push(hl7_port: u16, orthanc: &Orthanc) -> DaemonBuilder {
    Daemon::builder()
        .with_inference()
        .config("hl7", "enabled", "true")
        .config("hl7", "port", &hl7_port.to_string())
        .config("hl7", "tls", "false")
        .config(
            "pacs",
            "destinations",
            &format!(
                r#"[{{name = "orthanc", ae_title = "{}", host = "127.0.0.1", port = {}, push = true, result_objects = ["sr"]}}]"#,
                orthanc.aet, orthanc.dicom_port
            ),
        )
}

/// Subscribes to every `duli/` topic of `mq`, starts the daemon with inference, HL7 to
/// `hl7_port` and MQTT to `mqtt_port` (plain TCP), and sends it `files`.
fn start_and_send(
    mq: &Mosquitto,
    dir: &std::path::Path,
    hl7_port: u16,
    mqtt_port: u16,
    files: &[PathBuf],
) -> (Background, Daemon) {
    let sub = subscribe(mq, dir);
    let d = with_peers(hl7_port, mqtt_port).start();
    d.storescu("MODALITY", &[], files)
        .unwrap()
        .assert_success("storescu");
    (sub, d)
}

#[test]
fn one_study_reaches_the_ris_the_cloud_and_the_pacs() {
    let Some(samples) = samples_dir() else { return };
    if !inference_available() {
        return;
    }
    let Some(mq) = Mosquitto::start() else { return };
    let Some(orthanc) = Orthanc::start() else {
        return;
    };
    let (hl7_port, hl7) = mllp_listener();
    let dir = temp_dir("pipeline");
    let sub = subscribe(&mq, dir.path());
    let mut d = with_peers(hl7_port, mq.port)
        .config(
            "pacs",
            "destinations",
            &format!(
                r#"[{{name = "orthanc", ae_title = "{}", host = "127.0.0.1", port = {}, push = true, result_objects = ["sr", "pm", "sc"]}}]"#,
                orthanc.aet, orthanc.dicom_port
            ),
        )
        .start();
    let file: PathBuf = samples.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    let sent = Instant::now();
    d.storescu("MODALITY", &[], std::slice::from_ref(&file))
        .unwrap()
        .assert_success("storescu");

    // Everything arrives: HL7 ORU^R01, the MQTT report, the SR and the SC in Orthanc.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut hl7_at, mut mqtt_at, mut pacs_at) = (None, None, None);
    while Instant::now() < deadline && (hl7_at.is_none() || mqtt_at.is_none() || pacs_at.is_none())
    {
        if hl7_at.is_none() && !hl7.lock().unwrap().is_empty() {
            hl7_at = Some(sent.elapsed());
        }
        if mqtt_at.is_none() && sub.log().contains("/reports {") {
            mqtt_at = Some(sent.elapsed());
        }
        if pacs_at.is_none() && orthanc.instances().len() >= 3 {
            pacs_at = Some(sent.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("delivered after: HL7 {hl7_at:?}, MQTT {mqtt_at:?}, PACS SR+PM+SC {pacs_at:?}");
    assert!(hl7_at.is_some(), "no HL7 message; daemon log:\n{}", d.log());
    assert!(
        mqtt_at.is_some(),
        "no MQTT report; subscriber saw:\n{}",
        sub.log()
    );
    assert!(
        pacs_at.is_some(),
        "Orthanc has {:?}; daemon log:\n{}",
        orthanc.instances(),
        d.log()
    );

    // The RIS got an ORU^R01 with the finding, flagged abnormal (PNEUMONIA_01: p ≈ 0.999).
    let msg = hl7.lock().unwrap()[0].clone();
    common::ris::assert_strict_valid(&hl7.lock().unwrap());
    assert!(msg.starts_with("MSH|^~\\&|DULI|demo-site|"), "{msg}");
    assert!(msg.contains("ORU^R01"), "{msg}");
    assert!(msg.contains("OBX|") && msg.contains("PNEUMONIA"), "{msg}");
    assert!(msg.contains("|A|"), "abnormal flag missing: {msg}");
    assert!(
        msg.contains("TQ1|") && msg.contains("|S"),
        "urgent priority missing: {msg}"
    );

    // The cloud got a pseudonymised report: no patient name or raw study UID.
    let log = sub.log();
    let report = log
        .lines()
        .find(|l| l.contains("/reports {"))
        .and_then(|l| l.split_once(' '))
        .map(|(_, body)| serde_json::from_str::<serde_json::Value>(body).unwrap())
        .unwrap();
    assert_eq!(report["ai_generated"], true, "{report}");
    assert_eq!(report["triage"], true, "{report}");
    let text = report.to_string();
    assert!(
        !text.contains("1.2.826.0.1.3680043.8.498"),
        "raw UID leaked: {text}"
    );
    assert!(log.contains("/status online"), "{log}");

    // The PACS got the SR and two OT objects (Parametric Map, SC), in the original study.
    let modalities: Vec<String> = orthanc
        .instances()
        .iter()
        .map(|id| {
            orthanc.get_json(&format!("/instances/{id}/simplified-tags"))["Modality"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(modalities.contains(&"SR".to_string()), "{modalities:?}");
    assert_eq!(
        modalities.iter().filter(|m| *m == "OT").count(),
        2,
        "{modalities:?}"
    );
    check_result_objects_in_orthanc(&orthanc, dir.path());
    // A radiologist disagrees in the console: the feedback reaches the cloud too,
    // pseudonymised, without the comment or the user name.
    d.add_user("rita", "radiologist", "a long passphrase for rita");
    let session = d.login("rita", "a long passphrase for rita");
    let study_uid = d
        .command(&["studies"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v[0]["study_instance_uid"].as_str().map(String::from))
        .expect("study uid");
    // The console shows the live result: urgent, with its top finding and the heatmap.
    let list = session.get("/api/v1/studies").json();
    let row = &list["studies"][0];
    assert_eq!(row["triage"], true, "{list}");
    assert_eq!(row["top_finding"]["label"], "Pneumonia", "{list}");
    let detail = session.get(&format!("/api/v1/studies/{study_uid}")).json();
    assert_eq!(
        detail["result"]["model"]["name"], "pneumonia-xception",
        "{detail}"
    );
    let heat = session.get(
        detail["heatmap"]
            .as_str()
            .expect("no heatmap in the console"),
    );
    assert_eq!((heat.status, &heat.body[1..4]), (200, &b"PNG"[..]));
    let r = session.send(
        "POST",
        &format!("/api/v1/studies/{study_uid}/feedback"),
        &serde_json::json!({"agree": false, "comment": "secret remark about Silva", "finding": "PNEUMONIA"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sub.log().contains("/feedback {") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = sub.log();
    let feedback = log
        .lines()
        .find(|l| l.contains("/feedback {"))
        .expect("no feedback on MQTT");
    assert!(feedback.contains("\"verdict\":\"disagree\""), "{feedback}");
    // The finding as the reports name it (its code), so the cloud can join the two.
    assert!(feedback.contains("\"finding\":\"PNEUMONIA\""), "{feedback}");
    assert!(
        !feedback.contains("secret remark") && !feedback.contains("rita"),
        "{feedback}"
    );
    assert!(!feedback.contains(&study_uid), "raw UID leaked: {feedback}");

    // And the outbox has drained.
    let out = run(&mut d.command(&["outbox", "list"]), Duration::from_secs(30));
    out.assert_success("duli outbox list");
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "entries left:\n{}",
        out.stdout
    );

    // What left the box with the patient's identity is in the audit trail, against the
    // study: the report to the RIS as an export, each result object to the PACS as a
    // transfer of DICOM instances, once each peer acknowledged it; the cloud's
    // pseudonymous messages are not.
    let records = d.stop_and_read_audit();
    let exports = delivery_exports(&records, &study_uid);
    let to_ris = format!(":{hl7_port}: acknowledged");
    assert_eq!(
        exports
            .iter()
            .filter(
                |e| e.starts_with("export: HL7 ORU^R01 report of report ") && e.contains(&to_ris)
            )
            .count(),
        1,
        "{exports:#?}"
    );
    let to_pacs = format!(
        "to PACS orthanc (AE {} at 127.0.0.1:{}): acknowledged; 1 instance(s): ",
        orthanc.aet, orthanc.dicom_port
    );
    for kind in ["structured report", "parametric map", "secondary capture"] {
        let pushed = format!("transfer: DICOM C-STORE {kind} of report ");
        assert_eq!(
            exports
                .iter()
                .filter(|e| e.starts_with(&pushed) && e.contains(&to_pacs))
                .count(),
            1,
            "{kind}: {exports:#?}"
        );
    }
    assert_eq!(exports.len(), 4, "{exports:#?}");
    // Each names who received it: the RIS, the PACS (the ATNA destination participant).
    let receivers: Vec<&str> = records
        .iter()
        .filter(|r| r.actor == "system" && r.object == study_uid && r.success)
        .filter(|r| {
            matches!(
                r.action,
                duli::audit::Action::Export | duli::audit::Action::Transfer
            )
        })
        .map(|r| r.destination.as_str())
        .collect();
    let (ris, pacs) = (
        format!("hl7:127.0.0.1:{hl7_port}"),
        format!("ae:{}", orthanc.aet),
    );
    assert_eq!(
        receivers.iter().filter(|d| **d == ris).count(),
        1,
        "{receivers:?}"
    );
    assert_eq!(
        receivers.iter().filter(|d| **d == pacs).count(),
        3,
        "{receivers:?}"
    );
    // Each record on the study names its patient (for a repository asked who touched
    // this patient's data): the deliveries, and rita's view of the study page.
    let patient = dicom_attr(&file, dicom_dictionary_std::tags::PATIENT_ID);
    let on_study: Vec<&duli::audit::Record> =
        records.iter().filter(|r| r.object == study_uid).collect();
    assert!(on_study.iter().any(|r| r.actor == "rita"), "{on_study:#?}");
    assert!(
        on_study.len() >= 5
            && on_study
                .iter()
                .all(|r| r.patients.len() == 1 && r.patients[0].split('^').next() == Some(&patient)),
        "{patient}: {on_study:#?}"
    );
}

/// The successful exports and transfers of `study_uid` the daemon itself recorded for its
/// deliveries (actor `system`), each as `export: DETAIL` or `transfer: DETAIL`.
fn delivery_exports(records: &[duli::audit::Record], study_uid: &str) -> Vec<String> {
    use duli::audit::Action;
    records
        .iter()
        .filter(|r| r.actor == "system" && r.object == study_uid && r.success)
        .filter_map(|r| match r.action {
            Action::Export => Some(format!("export: {}", r.detail)),
            Action::Transfer => Some(format!("transfer: {}", r.detail)),
            _ => None,
        })
        .collect()
}

/// Reads the pushed SR and SC back through Orthanc's REST API: the SR carries the
/// finding, its probability and the algorithm; the SC is an RGB image of the radiograph
/// at most [`duli::record::SC_MAX_SIDE`] on its longest side; both files, as
/// Orthanc stored them, parse with `dsrdump` and `dcmdump`.
fn check_result_objects_in_orthanc(orthanc: &Orthanc, dir: &std::path::Path) {
    for id in orthanc.instances() {
        let tags = orthanc.get_json(&format!("/instances/{id}/simplified-tags"));
        let file = dir.join(format!("{id}.dcm"));
        let raw = orthanc.get(&format!("/instances/{id}/file")).unwrap();
        assert_eq!(raw.status, 200);
        std::fs::write(&file, &raw.body).unwrap();
        let dump = run_dcmtk("dcmdump", &[file.to_str().unwrap()]).unwrap();
        dump.assert_success("dcmdump of the object Orthanc received");
        // The field's validator finds no error and no warning in what the PACS received
        // (its absence is a recorded skip, a failure under `make test`).
        if let Some(dciodvfy) = require_tool("dciodvfy") {
            let found = common::validators::dciodvfy(&dciodvfy, &file);
            assert!(
                found.errors.is_empty() && found.warnings.is_empty(),
                "dciodvfy on {}: {:#?} {:#?}\n{}",
                tags["SOPClassUID"],
                found.errors,
                found.warnings,
                found.text
            );
        }
        let class = tags["SOPClassUID"].as_str().unwrap_or_default();
        if class == duli::results::parametric_map::PARAMETRIC_MAP {
            let num = |k: &str| tags[k].as_str().and_then(|v| v.parse::<u32>().ok());
            let (rows, cols) = (num("Rows").unwrap(), num("Columns").unwrap());
            assert!(
                rows.max(cols) <= 1024 && rows.min(cols) >= 64,
                "{rows}×{cols}"
            );
            let text = tags["SharedFunctionalGroupsSequence"].to_string();
            assert!(text.contains("SALIENCY"), "{text}");
            assert!(text.contains("DerivationImageSequence"), "{text}");
            continue;
        }
        match tags["Modality"].as_str() {
            Some("SR") => {
                let text = tags["ContentSequence"].to_string();
                assert!(text.contains("Pneumonia"), "{text}");
                assert!(
                    tags["PreliminaryFlag"] == "PRELIMINARY",
                    "{}",
                    tags["PreliminaryFlag"]
                );
                let sr = run_dcmtk("dsrdump", &[file.to_str().unwrap()]).unwrap();
                sr.assert_success("dsrdump of the SR Orthanc received");
                assert!(sr.stdout.contains("Algorithm Name"), "{}", sr.stdout);
                assert!(sr.stdout.contains("pneumonia-xception"), "{}", sr.stdout);
                assert!(
                    sr.stdout.contains("Imaging Measurement Report"),
                    "{}",
                    sr.stdout
                );
                assert!(sr.stdout.contains("Visual explanation"), "{}", sr.stdout);
            }
            Some("OT") => {
                let num = |k: &str| tags[k].as_str().and_then(|v| v.parse::<u32>().ok());
                let (rows, cols) = (num("Rows").unwrap(), num("Columns").unwrap());
                let max = duli::record::SC_MAX_SIDE;
                assert!(
                    rows.max(cols) <= max && rows.min(cols) >= 256,
                    "{rows}×{cols}"
                );
                assert_eq!(tags["PhotometricInterpretation"], "RGB", "{tags}");
                assert_eq!(tags["BurnedInAnnotation"], "YES", "{tags}");
                let px = orthanc
                    .get(&format!("/instances/{id}/frames/0/raw"))
                    .unwrap();
                assert_eq!(px.body.len(), (rows * cols * 3) as usize, "pixel data size");
            }
            other => panic!("unexpected object in the PACS: {other:?}"),
        }
    }
}

/// The MSH-10 control ids of the recorded messages.
fn control_ids(msgs: &[String]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| m.split('\r').next()?.split('|').nth(9).map(String::from))
        .collect()
}

/// The RIS and the broker are unreachable (their links refuse connections) while 50 studies
/// are analysed; the reports wait in the outbox, retried with backoff. When the links come
/// back, all 50 reports arrive on each, once, in the order they were queued, and the outbox
/// drains to zero.
#[test]
fn peers_unreachable_while_50_studies_complete_then_all_arrive_in_order() {
    if !inference_available() {
        return;
    }
    let studies = 50;
    let Some(mq) = Mosquitto::start() else { return };
    let (hl7_port, hl7) = mllp_listener();
    let (hl7_link, mqtt_link) = (TcpLink::new(hl7_port), TcpLink::new(mq.port));
    let dir = temp_dir("outage");
    let Some(files) = make_studies(&dir.path().join("dx"), studies) else {
        return;
    };
    let (sub, d) = start_and_send(&mq, dir.path(), hl7_link.port, mqtt_link.port, &files);

    // Every study gets its result; the reports queue up for both peers.
    let deadline = Instant::now() + Duration::from_secs(600);
    let (queued_hl7, queued_mqtt) = loop {
        let (h, m) = (queued_reports(&d, "hl7"), queued_reports(&d, "mqtt"));
        if h.len() == studies && m.len() == studies {
            break (h, m);
        }
        assert!(
            Instant::now() < deadline,
            "{} HL7 and {} MQTT reports queued of {studies}; log:\n{}",
            h.len(),
            m.len(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(distinct(&queued_hl7).len(), studies);
    // The two channels carry the same reports in the same order (one transaction each).
    assert_eq!(queued_hl7, queued_mqtt);
    let listing = run(
        &mut d.command(&["outbox", "list", "hl7"]),
        Duration::from_secs(30),
    );
    assert!(
        listing.stdout.contains("retrying"),
        "the head entry was never tried:\n{}",
        listing.stdout
    );
    assert!(hl7.lock().unwrap().is_empty() && mqtt_reports(&sub.log()).is_empty());
    let oldest = d
        .metric("duli_outbox_oldest_seconds{dest=\"hl7\"}")
        .expect("the outbox age metric");
    assert!(oldest > 0.0, "oldest undelivered entry age {oldest}");
    eprintln!("{studies} reports queued per peer; oldest waiting {oldest:.0} s");

    // The peers come back: everything arrives, in the queued order, and the outbox drains.
    let back = Instant::now();
    hl7_link.up();
    mqtt_link.up();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let got_hl7 = control_ids(&hl7.lock().unwrap());
        let got_mqtt = mqtt_reports(&sub.log());
        if distinct(&got_hl7).len() >= studies && distinct(&got_mqtt).len() >= studies {
            eprintln!(
                "all {studies} reports on each peer {:.1} s after the links came back \
                 ({} HL7 and {} MQTT messages in all)",
                back.elapsed().as_secs_f64(),
                got_hl7.len(),
                got_mqtt.len()
            );
            assert_eq!(distinct(&got_hl7), hl7_ids(&d, &queued_hl7), "HL7 order");
            common::ris::assert_strict_valid(&hl7.lock().unwrap());
            assert_eq!(
                distinct(&got_mqtt),
                cloud_ids(&d, &queued_mqtt),
                "MQTT order"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the outage: {} HL7 and {} MQTT reports of {studies}; log:\n{}",
            distinct(&got_hl7).len(),
            distinct(&got_mqtt).len(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_drained(&d, Duration::from_secs(60));
}

/// The running daemon against a RIS whose parser drops the connection on one report's
/// message and takes the others: with the shipped timings (five drops in a row, then the
/// next report of another study as a probe) that message is dead-lettered with the reason,
/// and the reports behind it reach the RIS instead of waiting behind it for good.
#[test]
fn a_report_the_ris_drops_the_connection_on_is_dead_lettered_and_the_others_arrive() {
    if !inference_available() {
        return;
    }
    let poison: Arc<Mutex<Option<String>>> = Arc::default();
    let first = poison.clone();
    let (hl7_port, hl7) = common::ris::scripted_ris(
        Arc::new(move |_, id: &str| {
            let mut first = first.lock().unwrap();
            if first.get_or_insert_with(|| id.to_string()) == id {
                String::new()
            } else {
                common::ris::aa(id)
            }
        }),
        Duration::ZERO,
    );
    let dir = temp_dir("poison");
    let Some(files) = make_studies(&dir.path().join("dx"), 3) else {
        return;
    };
    let d = Daemon::builder()
        .with_inference()
        .config("hl7", "enabled", "true")
        .config("hl7", "port", &hl7_port.to_string())
        .config("hl7", "tls", "false")
        .start();
    d.storescu("MODALITY", &[], &files)
        .unwrap()
        .assert_success("storescu");
    let deadline = Instant::now() + Duration::from_secs(300);
    let listing = loop {
        let out = run(
            &mut d.command(&["outbox", "list", "hl7"]),
            Duration::from_secs(30),
        );
        let delivered = distinct(&control_ids(&hl7.lock().unwrap())).len();
        // Three studies: one dead entry left, the two others taken.
        if out.stdout.lines().count() == 2 && out.stdout.contains("dead") && delivered == 3 {
            break out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} messages seen; outbox:\n{}\nlog:\n{}",
            out.stdout,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(listing.contains("cannot take this message"), "{listing}");
    let poison = poison.lock().unwrap().clone().unwrap();
    let seen = control_ids(&hl7.lock().unwrap());
    let drops = seen.iter().filter(|id| **id == poison).count();
    assert!(
        drops >= 6,
        "five drops and one more after the probe: {seen:?}"
    );
    assert!(
        seen.iter().filter(|id| **id != poison).count() >= 2,
        "{seen:?}"
    );
    let log = d.log();
    assert!(
        log.contains("to tell the message from the peer") && !log.contains("panicked"),
        "{log}"
    );
}

/// SIGKILL at random moments while reports drain to a slow RIS and through a slow link to
/// the broker; after each restart the drain resumes. Every report arrives on both at least
/// once; duplicates are counted and printed (at-least-once, the report id deduplicates).
#[test]
fn killed_while_the_outbox_drains_every_report_still_arrives() {
    if samples_dir().is_none() || !inference_available() {
        return;
    }
    let rounds = rounds(2, 20);
    let studies = rounds + 10;
    let Some(mq) = Mosquitto::start() else { return };
    // A slow RIS (150 ms per message) and a slow broker link (each PubAck held 100 ms), so
    // the drain spans the kills.
    let (hl7_port, hl7) = mllp_listener_slow(Duration::from_millis(150));
    let mqtt_link = TcpLink::slow(mq.port, Duration::from_millis(100));
    mqtt_link.up();
    let dir = temp_dir("outbox-crash");
    let Some(files) = make_studies(&dir.path().join("dx"), studies) else {
        return;
    };
    let (sub, mut d) = start_and_send(&mq, dir.path(), hl7_port, mqtt_link.port, &files);
    // Each round waits until the restarted daemon has delivered something new, then kills
    // it at a random moment of the drain.
    let mut seed = 0x9E37_79B9u64;
    for round in 0..rounds {
        let before = hl7.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while hl7.lock().unwrap().len() <= before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 300));
        d.kill();
        eprintln!(
            "round {round}: killed with {} HL7 and {} MQTT message(s) received so far",
            control_ids(&hl7.lock().unwrap()).len(),
            mqtt_reports(&sub.log()).len()
        );
        d.restart();
    }
    // After the last restart, everything drains.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let got_hl7 = control_ids(&hl7.lock().unwrap());
        let got_mqtt = mqtt_reports(&sub.log());
        let (dh, dm) = (distinct(&got_hl7).len(), distinct(&got_mqtt).len());
        if dh >= studies && dm >= studies {
            eprintln!(
                "{studies} reports after {rounds} kill(s): HL7 {} messages ({} duplicate(s)), \
                 MQTT {} messages ({} duplicate(s))",
                got_hl7.len(),
                got_hl7.len() - dh,
                got_mqtt.len(),
                got_mqtt.len() - dm
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {dh} HL7 and {dm} MQTT reports of {studies} arrived; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each study has exactly one report id, and every one arrived at least once.
    let out = run(&mut d.command(&["studies"]), Duration::from_secs(30));
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), studies);
    assert_eq!(
        cloud_ids_of_hl7(&d, &distinct(&control_ids(&hl7.lock().unwrap()))),
        distinct(&mqtt_reports(&sub.log())),
        "both peers got the same reports in the same order"
    );
    wait_drained(&d, Duration::from_secs(60));
    // One report per study: no study was analysed twice across the restarts; every
    // message, resends included, is strictly valid.
    assert_eq!(distinct(&control_ids(&hl7.lock().unwrap())).len(), studies);
    common::ris::assert_strict_valid(&hl7.lock().unwrap());
    assert_eq!(distinct(&mqtt_reports(&sub.log())).len(), studies);
}

/// A study the modality sends again after correcting its patient: the RIS gets the
/// withdrawal of the first result (every observation `W`, for the first patient) before
/// the result for the corrected patient; the PACS (Orthanc) gets an IHE IOCM rejection note
/// (Key Object Selection, *Incorrect Modality Worklist Entry*) that names the result
/// objects made for the first patient and carries that patient, then the new SR; and this
/// box's own Q/R no longer lists the rejected SR's series in the study.
#[test]
fn a_study_given_to_another_patient_withdraws_its_result_objects_from_the_pacs() {
    use dicom_dictionary_std::tags;
    let Some(samples) = samples_dir() else { return };
    if !inference_available() || require_tool("dcmodify").is_none() {
        return;
    }
    let Some(orthanc) = Orthanc::start() else {
        return;
    };
    let (hl7_port, hl7) = mllp_listener();
    let dir = temp_dir("pipeline-correction");
    let mut d = with_ris_and_sr_push(hl7_port, &orthanc).start();
    let original = samples.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    let first_patient = dicom_attr(&original, tags::PATIENT_ID);
    let modality_of = |id: &str| -> String {
        orthanc.get_json(&format!("/instances/{id}/simplified-tags"))["Modality"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(240);
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            done(),
            "{what}: Orthanc has {:?}, the RIS {} message(s); daemon log:\n{}",
            orthanc.instances(),
            hl7.lock().unwrap().len(),
            d.log()
        );
    };
    d.storescu("MODALITY", &[], std::slice::from_ref(&original))
        .unwrap()
        .assert_success("storescu");
    wait_for("the first SR", &|| {
        orthanc.instances().iter().any(|id| modality_of(id) == "SR")
    });
    let fetch = |id: &str| -> PathBuf {
        let path = dir.path().join(format!("{id}.dcm"));
        let raw = orthanc.get(&format!("/instances/{id}/file")).unwrap();
        std::fs::write(&path, &raw.body).unwrap();
        path
    };
    let first_sr = fetch(&orthanc.instances()[0]);
    let first_sr_uid = dicom_attr(&first_sr, tags::SOP_INSTANCE_UID);
    let first_sr_series = dicom_attr(&first_sr, tags::SERIES_INSTANCE_UID);

    // The modality corrects the patient and sends the study again.
    let corrected = dir.path().join("corrected.dcm");
    std::fs::copy(&original, &corrected).unwrap();
    run_dcmtk(
        "dcmodify",
        &[
            "-nb",
            "-m",
            "(0010,0020)=CORRECTED-1",
            "-m",
            "(0010,0010)=Corrected^Patient",
            corrected.to_str().unwrap(),
        ],
    )
    .unwrap()
    .assert_success("dcmodify");
    d.storescu("MODALITY", &[], &[corrected])
        .unwrap()
        .assert_success("storescu of the corrected study");
    wait_for("the rejection note and the new SR", &|| {
        orthanc.instances().len() >= 3 && hl7.lock().unwrap().len() >= 3
    });

    let objects: Vec<(String, PathBuf)> = orthanc
        .instances()
        .iter()
        .map(|id| (modality_of(id), fetch(id)))
        .collect();
    let notes: Vec<&PathBuf> = objects
        .iter()
        .filter(|(m, _)| m == "KO")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(notes.len(), 1, "{objects:?}");
    let note = dicom_object::open_file(notes[0]).unwrap();
    let named = common::validators::key_object_references(&note);
    // The SR and, made for the same patient though this PACS takes only SRs, the
    // Parametric Map and the Secondary Capture.
    assert!(
        named.contains(&first_sr_uid) && named.len() <= 3,
        "{named:?}"
    );
    assert_eq!(dicom_attr(notes[0], tags::PATIENT_ID), first_patient);
    let srs: Vec<String> = objects
        .iter()
        .filter(|(m, _)| m == "SR")
        .map(|(_, p)| dicom_attr(p, tags::PATIENT_ID))
        .collect();
    assert_eq!(srs.len(), 2, "{objects:?}");
    assert!(srs.contains(&"CORRECTED-1".to_string()), "{srs:?}");

    // The RIS: the first result, its withdrawal for the same patient, then the new one.
    let messages = hl7.lock().unwrap().clone();
    common::ris::assert_strict_valid(&messages);
    let pid3 = |m: &str| {
        m.split('\r')
            .find(|s| s.starts_with("PID|"))
            .and_then(|s| s.split('|').nth(3))
            .and_then(|f| f.split('^').next())
            .unwrap_or_default()
            .to_string()
    };
    let seen: Vec<(String, bool)> = messages
        .iter()
        .map(|m| (pid3(m), m.contains("|W|")))
        .collect();
    assert_eq!(
        seen,
        [
            (first_patient.clone(), false),
            (first_patient.clone(), true),
            ("CORRECTED-1".to_string(), false),
        ]
    );

    // This box's Q/R: the study's series without the rejected SR's, with the note's.
    let study_uid = dicom_attr(&original, tags::STUDY_INSTANCE_UID);
    let series: Vec<String> = d
        .findscu(
            "-S",
            &[
                "QueryRetrieveLevel=SERIES".to_string(),
                format!("StudyInstanceUID={study_uid}"),
                "SeriesInstanceUID".to_string(),
                "Modality".to_string(),
            ],
        )
        .iter()
        .map(|r| {
            r.element(tags::SERIES_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_string()
        })
        .collect();
    assert!(!series.contains(&first_sr_series), "{series:?}");
    let note_series = dicom_attr(notes[0], tags::SERIES_INSTANCE_UID);
    assert!(series.contains(&note_series), "{series:?}");

    // The withdrawal sent to the RIS and the rejection note sent to the PACS are exports
    // of the study in the audit trail, beside the two reports and the two SRs.
    let note_uid = dicom_attr(notes[0], tags::SOP_INSTANCE_UID);
    let records = d.stop_and_read_audit();
    let exports = delivery_exports(&records, &study_uid);
    let count = |prefix: &str| exports.iter().filter(|e| e.starts_with(prefix)).count();
    assert_eq!(
        count("export: HL7 ORU^R01 report of report "),
        2,
        "{exports:#?}"
    );
    assert_eq!(
        count("export: HL7 ORU^R01 withdrawal of report "),
        1,
        "{exports:#?}"
    );
    assert_eq!(
        count("transfer: DICOM C-STORE structured report of report "),
        2,
        "{exports:#?}"
    );
    assert!(
        exports.iter().any(
            |e| e.starts_with("transfer: DICOM C-STORE rejection note of report ")
                && e.ends_with(&format!("1 instance(s): {note_uid}"))
        ),
        "{exports:#?}"
    );
    // The change of hands itself: one update of the study naming both patients.
    let updates: Vec<&duli::audit::Record> = records
        .iter()
        .filter(|r| r.action == duli::audit::Action::Update && r.object == study_uid)
        .collect();
    assert_eq!(updates.len(), 1, "{records:#?}");
    assert_eq!(
        updates[0].patients,
        [first_patient.clone(), "CORRECTED-1".to_string()]
    );
}

/// Two boxes of one site (one site secret) given the same study, as when a modality or
/// router sends to both: each sends the RIS its own ORU^R01 under its own control id and
/// the PACS its own SR under its own UIDs, so Orthanc keeps both SRs and a RIS dropping
/// repeated control ids files both reports; the filler order number is the study's.
#[test]
fn two_boxes_of_a_site_given_the_same_study_send_distinct_results() {
    let Some(samples) = samples_dir() else { return };
    if !inference_available() {
        return;
    }
    let Some(orthanc) = Orthanc::start() else {
        return;
    };
    let (hl7_port, hl7) = mllp_listener();
    let dir = temp_dir("pipeline-two-boxes");
    let secret = dir.path().join("site_secret");
    std::fs::write(&secret, [42u8; 32]).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let start = |device: &str| {
        with_ris_and_sr_push(hl7_port, &orthanc)
            .config("device", "device_id", device)
            .config("device", "site_secret", secret.to_str().unwrap())
            .start()
    };
    let boxes = [start("edge-a"), start("edge-b")];
    let file = samples.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    for d in &boxes {
        d.storescu("MODALITY", &[], std::slice::from_ref(&file))
            .unwrap()
            .assert_success("storescu");
    }
    let srs = || -> Vec<String> {
        orthanc
            .instances()
            .into_iter()
            .filter(|id| {
                orthanc.get_json(&format!("/instances/{id}/simplified-tags"))["Modality"] == "SR"
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    while (srs().len() < 2 || hl7.lock().unwrap().len() < 2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let messages = hl7.lock().unwrap().clone();
    assert_eq!(
        (srs().len(), messages.len()),
        (2, 2),
        "Orthanc: {:?}; logs:\n{}\n{}",
        orthanc.instances(),
        boxes[0].log(),
        boxes[1].log()
    );
    common::ris::assert_strict_valid(&messages);
    let field = |m: &str, segment: &str, n: usize| -> String {
        m.split('\r')
            .find(|s| s.starts_with(segment))
            .and_then(|s| s.split('|').nth(n))
            .unwrap_or_default()
            .to_string()
    };
    assert_ne!(
        field(&messages[0], "MSH|", 9),
        field(&messages[1], "MSH|", 9)
    );
    assert_eq!(
        field(&messages[0], "OBR|", 3),
        field(&messages[1], "OBR|", 3)
    );
    let uids: Vec<String> = srs()
        .iter()
        .map(|id| {
            orthanc.get_json(&format!("/instances/{id}/simplified-tags"))["SOPInstanceUID"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_ne!(uids[0], uids[1], "{uids:?}");
}

/// An archive that acknowledges every C-STORE and loses what it took: Orthanc's Python
/// plugin deletes each instance as it is stored, so Orthanc's own Storage Commitment SCP
/// finds none of them ("no such object instance", 0112H).
const FORGETFUL_ARCHIVE: &str = "\
import orthanc

def forget(dicom, instance_id):
    orthanc.RestApiDelete('/instances/' + instance_id)

orthanc.RegisterOnStoredInstanceCallback(forget)
";

/// Storage Commitment with two real archives: the push asks each to commit to keeping the
/// SR it took (N-ACTION on the push association) and each reports on an association of
/// its own to our SCP, where the archives hold only the `commitment` permission. The
/// archive that keeps it (Orthanc's own SCP) reports it committed: the entry is delivered.
/// The one that does not (0112H) leaves the entry in the outbox: refused, and with
/// `max_rejections = 1` dead-lettered at once with the archive's reason, for a technician
/// to re-send. One whose reports never arrive keeps the entry too, retried after
/// `commitment_timeout_s`; one that offers no Storage Commitment (DCMTK's storescp) gets the
/// SR and a refusal saying so.
#[test]
fn the_push_is_delivered_once_the_pacs_commits_and_kept_when_it_does_not() {
    let Some(samples) = samples_dir() else { return };
    if !inference_available() {
        return;
    }
    let plugin = std::path::Path::new("/usr/share/orthanc/plugins/libOrthancPython.so");
    if !plugin.exists() {
        return skip("Orthanc's Python plugin is absent (apt orthanc-python)");
    }
    let dir = temp_dir("commitment");
    let script = dir.path().join("forgetful.py");
    std::fs::write(&script, FORGETFUL_ARCHIVE).unwrap();
    let Some(keeper) = Orthanc::builder().aet("KEEPER").start() else {
        return;
    };
    let Some(forgetful) = Orthanc::builder()
        .aet("FORGETFUL")
        .option("Plugins", serde_json::json!([plugin]))
        .option("PythonScript", serde_json::json!(script))
        .start()
    else {
        return;
    };
    let Some(silent) = Orthanc::builder().aet("SILENT").start() else {
        return;
    };
    // DCMTK's storescp stores whatever it is sent and offers no Storage Commitment.
    let plain_port = free_port();
    let plain_dir = temp_dir("commitment-storescp");
    let Some(mut cmd) = dcmtk("storescp") else {
        return;
    };
    cmd.args(["-aet", "PLAIN", "-od", plain_dir.path().to_str().unwrap()])
        .arg(plain_port.to_string());
    let mut plain =
        Background::spawn("storescp", &mut cmd, &dir.path().join("storescp.log")).unwrap();
    plain
        .wait_for_port(common::loopback(plain_port), READY_TIMEOUT)
        .unwrap();
    let destination = |name: &str, o: &Orthanc| {
        format!(
            r#"{{name = "{name}", ae_title = "{}", host = "127.0.0.1", port = {}, push = true, result_objects = ["sr"], storage_commitment = true, commitment_timeout_s = 3, max_rejections = 1}}"#,
            o.aet, o.dicom_port
        )
    };
    let plain_destination = format!(
        r#"{{name = "plain", ae_title = "PLAIN", host = "127.0.0.1", port = {plain_port}, push = true, result_objects = ["sr"], storage_commitment = true, max_rejections = 1}}"#
    );
    let d = Daemon::builder()
        .with_inference()
        .config(
            "dicom",
            "allowed_peers",
            r#"[{ae_title = "MODALITY"}, {ae_title = "KEEPER", permissions = ["commitment"]}, {ae_title = "FORGETFUL", permissions = ["commitment"]}]"#,
        )
        .config(
            "pacs",
            "destinations",
            &format!(
                "[{}, {}, {}, {}]",
                destination("keeper", &keeper),
                destination("forgetful", &forgetful),
                destination("silent", &silent),
                plain_destination
            ),
        )
        .start();
    // Each archive learns where to send its report; the silent one is given a port where
    // nothing listens, so its reports never arrive.
    let nowhere = free_ports(1)[0];
    for (o, port) in [
        (&keeper, d.dicom_port),
        (&forgetful, d.dicom_port),
        (&silent, nowhere),
    ] {
        o.put_json(
            "/modalities/duli",
            &serde_json::json!({"AET": DULI_AET, "Host": "127.0.0.1", "Port": port}),
        );
    }
    d.storescu(
        "MODALITY",
        &[],
        &[samples.join("dicom/explicit-le/PNEUMONIA_01.dcm")],
    )
    .unwrap()
    .assert_success("storescu");

    let deadline = Instant::now() + Duration::from_secs(180);
    // The listing's row of a destination, if it has one.
    fn row<'a>(listing: &'a str, dest: &str) -> Option<&'a str> {
        listing
            .lines()
            .find(|l| l.contains(&format!("pacs:{dest} ")))
    }
    let has = |listing: &str, dest: &str, text: &str| {
        row(listing, dest).is_some_and(|l| l.contains(text))
    };
    let listing = loop {
        let out = run(&mut d.command(&["outbox", "list"]), Duration::from_secs(30));
        let settled = row(&out.stdout, "keeper").is_none()
            && has(&out.stdout, "forgetful", "dead")
            && has(&out.stdout, "silent", "no Storage Commitment report")
            && has(&out.stdout, "plain", "dead");
        if settled || Instant::now() > deadline {
            break out.stdout;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let context = || {
        format!(
            "outbox:\n{listing}\ndaemon log:\n{}\nforgetful archive's log:\n{}",
            d.log(),
            forgetful.process.log()
        )
    };
    // Both archives took the SR (C-STORE Success, or the entry would not have reached the
    // commitment); only one kept it.
    assert_eq!(keeper.instances().len(), 1, "{}", context());
    assert_eq!(forgetful.instances().len(), 0, "{}", context());
    // The keeper's commitment delivered its entry; the forgetful one's is dead, with why.
    assert!(!listing.contains("pacs:keeper"), "{}", context());
    let row = |dest: &str| row(&listing, dest).unwrap_or_else(|| panic!("{}", context()));
    let dead = row("forgetful");
    assert!(dead.contains("dead"), "{}", context());
    assert!(
        dead.contains("did not commit to keeping 1 object(s)")
            && dead.contains("0112H no such object instance"),
        "{}",
        context()
    );
    // No report within commitment_timeout_s: the entry stays, retried (sent and asked
    // again), never counted as a refusal.
    let waiting = row("silent");
    assert!(
        waiting.contains("retrying")
            && waiting.contains("no Storage Commitment report from the PACS within 3 s"),
        "{}",
        context()
    );
    assert_eq!(silent.instances().len(), 1, "{}", context());
    // A PACS that offers no Storage Commitment: the SR stored, the entry refused with the
    // reason (a configuration to correct at one end or the other).
    let refused = row("plain");
    assert!(
        refused.contains("dead")
            && refused.contains("does not accept Storage Commitment Push Model"),
        "{}",
        context()
    );
    assert!(
        std::fs::read_dir(plain_dir.path()).unwrap().count() >= 1,
        "{}",
        context()
    );
    let log = d.log();
    assert!(
        log.contains("Storage Commitment report from \"KEEPER\": 1 committed, 0 not")
            && log.contains("Storage Commitment report from \"FORGETFUL\": 0 committed, 1 not"),
        "{}",
        context()
    );
    assert_eq!(
        d.metric("duli_commitment_reports_total{outcome=\"answered\"}"),
        Some(2.0),
        "{}",
        context()
    );
}

/// An archive that sends its Storage Commitment report on the association that asked
/// (pynetdicom, `tests/tools/commitment_scp.py`; it never opens one of its own): the push
/// keeps the association open while it waits, takes the report there and answers it, and
/// the entry is delivered.
#[test]
fn a_report_sent_on_the_push_association_is_taken_there() {
    let Some(samples) = samples_dir() else { return };
    if !inference_available() {
        return;
    }
    let dir = temp_dir("commitment-same");
    let port = free_port();
    let script =
        std::fs::read_to_string(repo_root().join("tests/tools/commitment_scp.py")).unwrap();
    let Some(mut cmd) = python_script(&script, &[&port.to_string(), "SAMEASSOC"]) else {
        return skip("the test environment's Python is absent (scripts/setup-test-env.sh)");
    };
    let log = dir.path().join("scp.log");
    let mut scp = Background::spawn("commitment_scp.py", &mut cmd, &log).unwrap();
    scp.wait_for_port(common::loopback(port), READY_TIMEOUT)
        .unwrap();
    let d = Daemon::builder()
        .with_inference()
        .config(
            "pacs",
            "destinations",
            &format!(
                r#"[{{name = "same", ae_title = "SAMEASSOC", host = "127.0.0.1", port = {port}, push = true, result_objects = ["sr"], storage_commitment = true, commitment_timeout_s = 60, max_rejections = 1}}]"#
            ),
        )
        .start();
    d.storescu(
        "MODALITY",
        &[],
        &[samples.join("dicom/explicit-le/PNEUMONIA_01.dcm")],
    )
    .unwrap()
    .assert_success("storescu");
    let log = d.log_once_it_holds(
        "on the push association: 1 committed, 0 not",
        Duration::from_secs(120),
    );
    assert!(
        log.contains("on the push association: 1 committed, 0 not"),
        "daemon log:\n{log}\narchive log:\n{}",
        scp.log()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(&mut d.command(&["outbox", "list"]), Duration::from_secs(30));
        if !out.stdout.contains("pacs:same") {
            break;
        }
        assert!(Instant::now() < deadline, "outbox:\n{}", out.stdout);
        std::thread::sleep(Duration::from_millis(200));
    }
    // Counted like a report the SCP takes.
    assert_eq!(
        d.metric("duli_commitment_reports_total{outcome=\"answered\"}"),
        Some(1.0)
    );
    assert!(
        scp.log()
            .contains("report sent on the same association: status 0000"),
        "archive log:\n{}",
        scp.log()
    );
}
