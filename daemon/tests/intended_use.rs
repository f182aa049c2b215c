//! The pediatric model's intended use, end to end with real peers: an adult study is
//! recorded as not applicable with its reason (store, worklist API, HL7 ORU^R01 to an MLLP
//! listener, MQTT report through Mosquitto), a study without a usable age is analysed
//! with a caveat, and a study inside the range is analysed without either. A study some of
//! whose images could not be analysed says so wherever its findings go.

mod common;

use common::inference::{inference_available, make_dx_study};
use common::ris::{aa, scripted_ris};
use common::*;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery staple";
const NOT_APPLICABLE: &str = "age 45 y outside the model's 1\u{2013}5 y";
/// The reason the cloud gets: the category, without the patient's age.
const CLOUD_NOT_APPLICABLE: &str = "age outside the model's intended range";
const CAVEAT: &str = "patient age unknown: the model is intended for 1\u{2013}5 y";

/// `builder` with inference, started with a RIS that acknowledges every message (what it
/// received) and Mosquitto (a subscriber to the reports, logging to `dir`/sub.log), and a
/// radiologist `rita`.
fn with_peers(
    mq: &Mosquitto,
    dir: &std::path::Path,
    builder: DaemonBuilder,
) -> (Daemon, Arc<std::sync::Mutex<Vec<String>>>, Background) {
    let (hl7_port, hl7) = scripted_ris(Arc::new(|_, id: &str| aa(id)), Duration::ZERO);
    let mut sub_cmd = mq.client("mosquitto_sub").unwrap();
    sub_cmd.args(["-t", "duli/+/+/reports", "-q", "1"]);
    let sub = Background::spawn("mosquitto_sub", &mut sub_cmd, &dir.join("sub.log")).unwrap();
    let d = builder
        .with_inference()
        .config("hl7", "enabled", "true")
        .config("hl7", "port", &hl7_port.to_string())
        .config("hl7", "tls", "false")
        .config("mqtt", "enabled", "true")
        .config("mqtt", "port", &mq.port.to_string())
        .config("mqtt", "tls", "false")
        .start();
    d.add_user("rita", "radiologist", PW);
    (d, hl7, sub)
}

/// Checks every MQTT report in `log` (one JSON body per line, as mosquitto_sub prints
/// them) against the published schema (written to `dir` for the check); how many there
/// were, `None` when no Python with jsonschema is there (a failure under `make test`).
fn reports_valid_against_the_schema(dir: &std::path::Path, log: &str) -> Option<usize> {
    let bodies = dir.join("reports.jsonl");
    std::fs::write(&bodies, log).unwrap();
    let schema = repo_root().join("docs/mqtt-report.schema.json");
    let mut check = python_script(
        "import json, sys, jsonschema\n\
         v = jsonschema.Draft202012Validator(json.load(open(sys.argv[1])))\n\
         lines = [json.loads(l) for l in open(sys.argv[2]) if l.startswith('{')]\n\
         [v.validate(x) for x in lines]\n\
         print(len(lines))",
        &[schema.to_str().unwrap(), bodies.to_str().unwrap()],
    )?;
    let out = run(&mut check, Duration::from_secs(60));
    out.assert_success("schema validation");
    Some(out.stdout.trim().parse().unwrap())
}

/// The MQTT reports in `log` (one JSON body per line, as mosquitto_sub prints them).
fn reports(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Waits (up to 240 s) until the RIS received `n` messages and the broker's subscriber
/// `n` reports.
fn wait_for_reports(hl7: &std::sync::Mutex<Vec<String>>, sub: &Background, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(240);
    while Instant::now() < deadline
        && (hl7.lock().unwrap().len() < n || reports(&sub.log()).len() < n)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_adult_study_is_not_applicable_and_an_unknown_age_carries_a_caveat() {
    if !inference_available() {
        return;
    }
    let Some(mq) = Mosquitto::start() else { return };
    let dir = temp_dir("intended-use");
    let Some(adult) = make_dx_study(dir.path(), "A", &["--outside-every", "1"]) else {
        return;
    };
    let Some(unknown) = make_dx_study(dir.path(), "U", &["--age", "none"]) else {
        return;
    };
    let Some(child) = make_dx_study(dir.path(), "C", &[]) else {
        return;
    };
    let (d, hl7, sub) = with_peers(&mq, dir.path(), Daemon::builder());
    d.storescu(
        "MODALITY",
        &[],
        &[adult.clone(), unknown.clone(), child.clone()],
    )
    .unwrap()
    .assert_success("storescu");

    // Three reports reach the RIS and the cloud.
    wait_for_reports(&hl7, &sub, 3);
    let messages = hl7.lock().unwrap().clone();
    assert_eq!(messages.len(), 3, "HL7 messages: {messages:?}\n{}", d.log());
    // Every one of them (not applicable, with a caveat, analysed) passes a strict parser.
    for m in &messages {
        if let Some(verdict) = common::ris::hl7_strict(m) {
            assert_eq!(verdict, "valid", "{m}");
        }
    }
    let by_patient = |pid: &str| -> String {
        messages
            .iter()
            .find(|m| m.contains(&format!("PID|1||{pid}|")))
            .unwrap_or_else(|| panic!("no message for {pid}: {messages:?}"))
            .clone()
    };
    let na_note = format!(
        "NTE|2|L|Not applicable: outside the model's intended use ({NOT_APPLICABLE}); not analysed."
    );
    let adult_msg = by_patient("AP0000");
    assert!(adult_msg.contains(&na_note), "{adult_msg}");
    assert!(
        !adult_msg.contains("|NM|"),
        "an adult got a probability: {adult_msg}"
    );
    let unknown_msg = by_patient("UP0000");
    assert!(
        unknown_msg.contains(&format!("NTE|2|L|Caveat: {CAVEAT}")),
        "{unknown_msg}"
    );
    assert!(unknown_msg.contains("|NM|"), "{unknown_msg}");
    let child_msg = by_patient("CP0000");
    assert!(child_msg.contains("|NM|"), "{child_msg}");
    assert!(
        !child_msg.contains("Not applicable") && !child_msg.contains("Caveat"),
        "{child_msg}"
    );

    let payloads = reports(&sub.log());
    assert_eq!(payloads.len(), 3, "{}", sub.log());
    let na: Vec<&Value> = payloads
        .iter()
        .filter(|p| p.get("not_applicable").is_some())
        .collect();
    assert_eq!(na.len(), 1, "{payloads:?}");
    assert_eq!(na[0]["not_applicable"], CLOUD_NOT_APPLICABLE);
    assert_eq!(na[0]["findings"], serde_json::json!([]));
    assert_eq!(na[0]["image_count"], 0);
    let caveats: Vec<&Value> = payloads
        .iter()
        .filter(|p| p.get("caveat").is_some())
        .collect();
    assert_eq!(caveats.len(), 1, "{payloads:?}");
    assert_eq!(caveats[0]["caveat"], CAVEAT);
    // All three are valid against the published schema.
    if let Some(n) = reports_valid_against_the_schema(dir.path(), &sub.log()) {
        assert_eq!(n, 3);
    }

    // The store, through the console's worklist and study API.
    let rita = console_login(d.console_addr(), "rita", PW);
    let list = rita.get("/api/v1/studies").json();
    let row = |pid: &str| -> Value {
        list["studies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["patient_id"] == pid)
            .unwrap_or_else(|| panic!("{pid} not in {list}"))
            .clone()
    };
    assert_eq!(row("AP0000")["not_applicable"], NOT_APPLICABLE);
    assert_eq!(row("AP0000")["top_finding"], Value::Null);
    assert_eq!(row("UP0000")["caveat"], CAVEAT);
    assert_eq!(row("UP0000")["not_applicable"], Value::Null);
    assert_eq!(row("CP0000")["caveat"], Value::Null);
    let uid = row("AP0000")["study_uid"].as_str().unwrap().to_string();
    let study = rita.get(&format!("/api/v1/studies/{uid}")).json();
    assert_eq!(study["result"]["not_applicable"], NOT_APPLICABLE, "{study}");
    assert_eq!(study["result"]["images"][0]["status"], "not_applicable");
    assert_eq!(study["result"]["images"][0]["reason"], NOT_APPLICABLE);
}

/// Makes image `n` of the study in `dir` too large for `inference.max_pixels` = 500000
/// (its header declares 1024 × 1024) and cuts image `m`'s pixel data to half.
const SPOIL: &str = r#"
import sys
import pydicom
d = sys.argv[1]
big = pydicom.dcmread(f"{d}/img00001.dcm")
big.Rows, big.Columns = 1024, 1024
big.save_as(f"{d}/img00001.dcm")
cut = pydicom.dcmread(f"{d}/img00002.dcm")
cut.PixelData = cut.PixelData[: len(cut.PixelData) // 2]
cut.save_as(f"{d}/img00002.dcm")
"#;

/// A study of three images, one analysed, one refused for its size and one whose pixel
/// data cannot be decoded, is delivered with the analysed image's findings and a caveat
/// saying that two of three images could not be analysed: in the HL7 NTE (which a strict
/// parser accepts), the MQTT report (valid against the schema) and the worklist. It is
/// never a plain negative.
#[test]
fn a_partly_analysed_study_carries_a_caveat_everywhere() {
    if !inference_available() {
        return;
    }
    let Some(mq) = Mosquitto::start() else { return };
    let dir = temp_dir("partly-analysed");
    let Some(first) = make_dx_study(dir.path(), "Q", &["--count", "3"]) else {
        return;
    };
    let study_dir = first.parent().unwrap().to_path_buf();
    let Some(mut spoil) = python_script(SPOIL, &[study_dir.to_str().unwrap()]) else {
        return;
    };
    run(&mut spoil, Duration::from_secs(60)).assert_success("spoil two images");
    let files: Vec<_> = (0..3)
        .map(|n| study_dir.join(format!("img0000{n}.dcm")))
        .collect();
    let (d, hl7, sub) = with_peers(
        &mq,
        dir.path(),
        Daemon::builder().config("inference", "max_pixels", "500000"),
    );
    d.storescu("MODALITY", &[], &files)
        .unwrap()
        .assert_success("storescu");

    wait_for_reports(&hl7, &sub, 1);
    let caveat = "2 of 3 images could not be analysed (image too large to analyse; decode \
                  error); the result covers the analysed images only";
    let messages = hl7.lock().unwrap().clone();
    let msg = messages
        .last()
        .unwrap_or_else(|| panic!("no HL7 message\n{}", d.log()));
    assert!(
        msg.contains(&format!("NTE|2|L|Caveat: {caveat}")),
        "{msg}\n{}",
        d.log()
    );
    assert!(msg.contains("|NM|"), "the analysed image's finding: {msg}");
    if let Some(verdict) = common::ris::hl7_strict(msg) {
        assert_eq!(verdict, "valid", "{msg}");
    }

    let payloads = reports(&sub.log());
    let last = payloads.last().unwrap_or_else(|| panic!("{}", sub.log()));
    assert_eq!(last["caveat"], caveat, "{last}");
    assert_eq!(last["image_count"], 1, "{last}");
    reports_valid_against_the_schema(dir.path(), &sub.log());

    let rita = console_login(d.console_addr(), "rita", PW);
    let list = rita.get("/api/v1/studies").json();
    let row = list["studies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["patient_id"] == "QP0000")
        .unwrap_or_else(|| panic!("QP0000 not in {list}"))
        .clone();
    assert_eq!(row["caveat"], caveat, "{row}");
    assert_eq!(row["not_applicable"], Value::Null);
}
