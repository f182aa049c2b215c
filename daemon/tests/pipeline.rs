//! The whole path of one study with every peer real: a chest X-ray sent by `storescu` is
//! analysed with OpenVINO, and its report reaches the RIS (an MLLP listener in this test
//! answering `AA`), the cloud (Mosquitto, read by `mosquitto_sub`) and the PACS (Orthanc
//! receives the SR and, once the heatmap is ready, the SC).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An MLLP listener that records every message and answers `AA` with MSA-2 = MSH-10.
fn mllp_listener() -> (u16, Arc<Mutex<Vec<String>>>) {
    mllp_listener_slow(Duration::ZERO)
}

/// [`mllp_listener`] that waits `delay` before each answer (a slow RIS).
fn mllp_listener_slow(delay: Duration) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let store = store.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
                        let frame: Vec<u8> = buf.drain(..end + 2).collect();
                        let start = frame.iter().position(|b| *b == 0x0b).map_or(0, |i| i + 1);
                        let msg = String::from_utf8_lossy(&frame[start..end]).to_string();
                        let control_id = msg
                            .split('\r')
                            .next()
                            .and_then(|msh| msh.split('|').nth(9))
                            .unwrap_or("")
                            .to_string();
                        store.lock().unwrap().push(msg);
                        std::thread::sleep(delay);
                        let ack = format!(
                            "\x0bMSH|^~\\&|RIS|HOSPITAL|DULI|demo-site|20261123000000||ACK^R01^ACK|A{control_id}|P|2.5.1\rMSA|AA|{control_id}\r\x1c\x0d"
                        );
                        if conn.write_all(ack.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, got)
}

#[test]
fn one_study_reaches_the_ris_the_cloud_and_the_pacs() {
    let Some(samples) = samples_dir() else { return };
    if !repo_root()
        .join(".cache/openvino/libs/libopenvino_c.so")
        .exists()
    {
        return skip("OpenVINO runtime absent (scripts/setup-openvino.sh)");
    }
    if !repo_root()
        .join("models/pneumonia-xception/pneumonia_xception_fp16.bin")
        .exists()
    {
        return skip("model weights absent (scripts/setup-models.sh)");
    }
    let Some(mq) = Mosquitto::start() else { return };
    let Some(orthanc) = Orthanc::start() else {
        return;
    };
    let (hl7_port, hl7) = mllp_listener();
    let dir = temp_dir("pipeline");
    let mut sub_cmd = mq.client("mosquitto_sub").unwrap();
    sub_cmd.args(["-t", "duli/#", "-v"]);
    let sub =
        Background::spawn("mosquitto_sub", &mut sub_cmd, &dir.path().join("sub.log")).unwrap();

    let d = Daemon::builder()
        .with_inference()
        .config("hl7", "enabled", "true")
        .config("hl7", "port", &hl7_port.to_string())
        .config("hl7", "tls", "false")
        .config("mqtt", "enabled", "true")
        .config("mqtt", "port", &mq.port.to_string())
        .config("mqtt", "tls", "false")
        .config(
            "pacs",
            "destinations",
            &format!(
                r#"[{{name = "orthanc", ae_title = "{}", host = "127.0.0.1", port = {}, push = true}}]"#,
                orthanc.aet, orthanc.dicom_port
            ),
        )
        .start();
    let file: PathBuf = samples.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    let sent = Instant::now();
    d.storescu("MODALITY", &[], &[file])
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
        if pacs_at.is_none() && orthanc.instances().len() >= 2 {
            pacs_at = Some(sent.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("delivered after: HL7 {hl7_at:?}, MQTT {mqtt_at:?}, PACS SR+SC {pacs_at:?}");
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

    // The PACS got one SR and one OT, in the original study.
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
    assert!(modalities.contains(&"OT".to_string()), "{modalities:?}");
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
}

/// The MSH-10 control ids (report ids) of the recorded messages.
fn control_ids(msgs: &[String]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| m.split('\r').next()?.split('|').nth(9).map(String::from))
        .collect()
}

#[test]
fn killed_while_the_outbox_drains_every_report_still_arrives() {
    let Some(_) = samples_dir() else { return };
    if !repo_root()
        .join("models/pneumonia-xception/pneumonia_xception_fp16.bin")
        .exists()
        || !repo_root()
            .join(".cache/openvino/libs/libopenvino_c.so")
            .exists()
    {
        return skip("OpenVINO runtime or model absent");
    }
    let rounds = rounds(2, 20);
    let studies = 10;
    // A slow RIS: 150 ms per message, so the drain spans the kills.
    let (hl7_port, hl7) = mllp_listener_slow(Duration::from_millis(150));
    let dir = temp_dir("outbox-crash");
    let script = std::fs::read_to_string(repo_root().join("tests/tools/make_dx.py")).unwrap();
    let Some(mut cmd) = python_script(
        &script,
        &[
            dir.path().join("dx").to_str().unwrap(),
            "--count",
            &studies.to_string(),
            "--studies",
            &studies.to_string(),
            "--rows",
            "256",
            "--cols",
            "256",
        ],
    ) else {
        return;
    };
    let out = run(&mut cmd, Duration::from_secs(120));
    out.assert_success("make_dx.py");
    let files: Vec<PathBuf> = dicom_files(&dir.path().join("dx"));
    let mut d = Daemon::builder()
        .with_inference()
        .config("hl7", "enabled", "true")
        .config("hl7", "port", &hl7_port.to_string())
        .config("hl7", "tls", "false")
        .start();
    d.storescu("MODALITY", &[], &files)
        .unwrap()
        .assert_success("storescu");
    // Kill only once the drain is under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    while hl7.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no HL7 message; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut seed = 0x9E37_79B9u64;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(50 + seed % 600));
        d.kill();
        let got = control_ids(&hl7.lock().unwrap()).len();
        eprintln!("round {round}: killed with {got} message(s) received so far");
        d.restart();
    }
    // After the last restart, everything drains.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ids = control_ids(&hl7.lock().unwrap());
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        if distinct.len() >= studies {
            eprintln!(
                "{studies} reports, {} messages received: {} duplicate(s) after {rounds} kill(s)",
                ids.len(),
                ids.len() - distinct.len()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {studies} reports arrived; log:\n{}",
            distinct.len(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each study has exactly one report id, and every one arrived at least once.
    let out = run(&mut d.command(&["studies"]), Duration::from_secs(30));
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), studies);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(&mut d.command(&["outbox", "list"]), Duration::from_secs(30));
        if out.stdout.lines().count() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "outbox not drained:\n{}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
