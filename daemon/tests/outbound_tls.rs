//! Outbound DICOM TLS (`tls = true` on a `[[pacs.destinations]]` entry) against real TLS
//! peers: DCMTK `storescp --enable-tls` requiring our client certificate, and Orthanc with
//! DICOM TLS enabled (C-MOVE and the PACS push to each). C-MOVE sub-operations and the
//! PACS push share the SCU path these tests drive.

mod common;

use common::*;
use dicom_dictionary_std::tags;
use dicom_object::open_file;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

type Rec = BTreeMap<String, Value>;

fn s(r: &Rec, k: &str) -> String {
    match &r[k] {
        Value::String(v) => v.clone(),
        v => v.to_string(),
    }
}

/// Stores the six-instance Q/R fixture in `d`; returns its records.
fn load_fixture(d: &Daemon, dir: &Path) -> Option<Vec<Rec>> {
    require_tool("movescu")?;
    let script = std::fs::read_to_string(repo_root().join("tests/tools/make_qr_set.py")).unwrap();
    let mut cmd = python_script(&script, &[dir.to_str().unwrap()])?;
    let out = run(&mut cmd, Duration::from_secs(120));
    out.assert_success("make_qr_set.py");
    let recs: Vec<Rec> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let files: Vec<PathBuf> = recs.iter().map(|r| PathBuf::from(s(r, "path"))).collect();
    d.storescu("STORESCU", &[], &files)?
        .assert_success("storescu");
    Some(recs)
}

/// A daemon with `destinations`, holding the fixture; returns it, the first study and the
/// SOP Instance UIDs of that study.
fn daemon_with(destinations: &str) -> Option<(Daemon, TestDir, String, Vec<String>)> {
    let d = Daemon::builder()
        .config("pacs", "destinations", destinations)
        .start();
    let fixture = temp_dir("tls-fixture");
    let recs = load_fixture(&d, fixture.path())?;
    let study = s(&recs[0], "study");
    let mut sops: Vec<String> = recs
        .iter()
        .filter(|r| s(r, "study") == study)
        .map(|r| s(r, "sop"))
        .collect();
    sops.sort();
    Some((d, fixture, study, sops))
}

/// `movescu` of `study` to `dest`; returns its combined output and whether it said
/// "Final Move Response (Success)".
fn movescu(d: &Daemon, dest: &str, study: &str) -> (String, bool) {
    let out = movescu_study(d.dicom_port, dest, study).unwrap();
    let text = out.combined();
    let ok = text.contains("Final Move Response (Success)");
    (text, ok)
}

fn tls_destination(name: &str, aet: &str, port: u16, pki: &TestPki, client_cert: bool) -> String {
    let mut d = format!(
        "{{name = \"{name}\", ae_title = \"{aet}\", host = \"127.0.0.1\", port = {port}, \
         move = true, tls = true, tls_ca = {:?}",
        pki.ca_cert.display().to_string()
    );
    if client_cert {
        d.push_str(&format!(
            ", tls_cert = {:?}, tls_key = {:?}",
            pki.client_cert.display().to_string(),
            pki.client_key.display().to_string()
        ));
    }
    d.push('}');
    d
}

/// A push destination over TLS taking every result object, with `pki`'s CA and client
/// certificate.
fn tls_push_destination(name: &str, aet: &str, port: u16, pki: &TestPki) -> String {
    format!(
        "{{name = \"{name}\", ae_title = \"{aet}\", host = \"127.0.0.1\", port = {port}, \
         push = true, result_objects = [\"sr\", \"pm\", \"sc\"], tls = true, \
         tls_ca = {:?}, tls_cert = {:?}, tls_key = {:?}}}",
        pki.ca_cert.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string()
    )
}

/// The SOP classes of one report's result objects, sorted.
const RESULT_CLASSES: [&str; 3] = [
    "1.2.840.10008.5.1.4.1.1.30",    // Parametric Map
    "1.2.840.10008.5.1.4.1.1.7",     // Secondary Capture
    "1.2.840.10008.5.1.4.1.1.88.33", // Comprehensive SR
];

/// SOP Instance UIDs of the files storescp has written whole (a file it is still writing
/// does not parse yet and is not counted).
fn received(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "log"))
        .filter_map(|p| open_file(&p).ok())
        .map(|o| {
            o.element(tags::SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches(['\0', ' '])
                .to_string()
        })
        .collect()
}

/// A DCMTK storescp "TLSSCP" that speaks only TLS with `pki`'s server certificate and
/// requires a client certificate its CA signed; it, the folder it stores into, its port.
fn storescp_tls(dir: &Path, pki: &TestPki) -> (Background, TestDir, u16) {
    let port = free_port();
    let out_dir = temp_dir("storescp-tls");
    let mut cmd = dcmtk("storescp").unwrap();
    cmd.args(["-aet", "TLSSCP", "-od", out_dir.path().to_str().unwrap()])
        .arg("+tls")
        .arg(&pki.server_key)
        .arg(&pki.server_cert)
        .arg("+cf")
        .arg(&pki.ca_cert)
        .arg("--require-peer-cert")
        .arg(port.to_string());
    let mut scp = Background::spawn("storescp", &mut cmd, &dir.join("storescp.log")).unwrap();
    scp.wait_for_port(loopback(port), READY_TIMEOUT).unwrap();
    (scp, out_dir, port)
}

/// C-MOVE to a DCMTK storescp that speaks only TLS and requires a client certificate:
/// with the site CA and our certificate every instance arrives; a destination whose CA
/// does not sign storescp's certificate, one without a client certificate, and one over
/// plain TCP all fail (A702) and deliver nothing.
#[test]
fn c_move_over_dicom_tls_to_storescp_checks_both_certificates() {
    if which("storescp").is_none() || which("movescu").is_none() {
        return skip("storescp/movescu absent");
    }
    let dir = temp_dir("outbound-tls");
    let Some(pki) = TestPki::generate(dir.path(), "site") else {
        return;
    };
    let Some(rogue) = TestPki::generate(dir.path(), "rogue") else {
        return;
    };
    let (scp, out_dir, port) = storescp_tls(dir.path(), &pki);

    let destinations = format!(
        "[{}, {}, {}, {{name = \"plain\", ae_title = \"PLAIN\", host = \"127.0.0.1\", \
         port = {port}, move = true}}]",
        tls_destination("site", "TLSSCP", port, &pki, true),
        tls_destination("rogue", "ROGUE", port, &rogue, true),
        tls_destination("anonymous", "ANON", port, &pki, false),
    );
    let Some((d, _fixture, study, in_study)) = daemon_with(&destinations) else {
        return;
    };

    let (text, ok) = movescu(&d, "TLSSCP", &study);
    assert!(ok, "{text}\n{}", d.log());
    let mut got = received(out_dir.path());
    got.sort();
    assert_eq!(got, in_study, "storescp log:\n{}", scp.log());

    for dest in ["ROGUE", "ANON", "PLAIN"] {
        let (text, ok) = movescu(&d, dest, &study);
        assert!(!ok, "C-MOVE to {dest} succeeded:\n{text}");
        assert!(
            text.contains("Sub-Operations Complete - One or more Failures")
                || text.contains("A702")
                || text.contains("Refused: OutOfResourcesSubOperations")
                || text.contains("Out of Resources"),
            "{dest}: {text}"
        );
        assert_eq!(
            received(out_dir.path()).len(),
            in_study.len(),
            "{dest} delivered"
        );
    }
    let log = d.log();
    assert!(log.contains("TLS handshake failed"), "{log}");
    drop(scp);
}

/// C-MOVE to Orthanc with DICOM TLS enabled (and its remote certificate required).
/// Orthanc with DICOM TLS on, `pki`'s server certificate, and a client certificate that
/// `pki`'s CA signed required of every peer.
fn orthanc_tls(pki: &TestPki) -> Option<Orthanc> {
    Orthanc::builder()
        .option("DicomTlsEnabled", serde_json::json!(true))
        .option("DicomTlsCertificate", serde_json::json!(pki.server_cert))
        .option("DicomTlsPrivateKey", serde_json::json!(pki.server_key))
        .option(
            "DicomTlsTrustedCertificates",
            serde_json::json!(pki.ca_cert),
        )
        .option("DicomTlsRemoteCertificateRequired", serde_json::json!(true))
        .start()
}

#[test]
fn c_move_over_dicom_tls_to_orthanc() {
    if which("movescu").is_none() {
        return skip("movescu absent");
    }
    let dir = temp_dir("outbound-tls-orthanc");
    let Some(pki) = TestPki::generate(dir.path(), "site") else {
        return;
    };
    let Some(orthanc) = orthanc_tls(&pki) else {
        return;
    };
    let destinations = format!(
        "[{}]",
        tls_destination("pacs", &orthanc.aet, orthanc.dicom_port, &pki, true)
    );
    let Some((d, _fixture, study, in_study)) = daemon_with(&destinations) else {
        return;
    };
    let n = in_study.len();
    let (text, ok) = movescu(&d, &orthanc.aet, &study);
    assert!(ok, "{text}\n{}\n{}", d.log(), orthanc.process.log());
    let instances = orthanc.get_json("/instances");
    assert_eq!(instances.as_array().unwrap().len(), n, "{instances}");
}

/// The PACS push over DICOM TLS to Orthanc requiring our client certificate: the SR, the
/// Parametric Map and the Secondary Capture of one analysed study arrive, each stored by
/// Orthanc under the study of the source image, and the destination's outbox empties.
#[test]
fn pacs_push_over_dicom_tls_to_orthanc() {
    let Some(samples) = samples_dir() else { return };
    if !common::inference::inference_available() {
        return;
    }
    let dir = temp_dir("push-tls-orthanc");
    let Some(pki) = TestPki::generate(dir.path(), "site") else {
        return;
    };
    let Some(orthanc) = orthanc_tls(&pki) else {
        return;
    };
    let destination = tls_push_destination("pacs", &orthanc.aet, orthanc.dicom_port, &pki);
    let d = Daemon::builder()
        .with_inference()
        .config("pacs", "destinations", &format!("[{destination}]"))
        .start();
    let file = samples.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    let study = dicom_attr(&file, tags::STUDY_INSTANCE_UID);
    d.storescu("MODALITY", &[], &[file])
        .unwrap()
        .assert_success("storescu");

    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while orthanc.instances().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut classes = Vec::new();
    for id in orthanc.instances() {
        let tags = orthanc.get_json(&format!("/instances/{id}/simplified-tags"));
        assert_eq!(tags["StudyInstanceUID"], study.as_str(), "{tags}");
        classes.push(tags["SOPClassUID"].as_str().unwrap_or_default().to_string());
    }
    classes.sort();
    assert_eq!(
        classes,
        RESULT_CLASSES,
        "daemon log:\n{}\nOrthanc log:\n{}",
        d.log(),
        orthanc.process.log()
    );
    // Every entry was acknowledged: nothing is left in the outbox for the destination.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(&mut d.command(&["outbox", "list"]), Duration::from_secs(30));
        if !out.stdout.contains("pacs:pacs") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "outbox:\n{}",
            out.combined()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The PACS push (result objects after analysis) over DICOM TLS to a DCMTK storescp that
/// requires our client certificate: the SR, the Parametric Map and the Secondary Capture
/// arrive. A second push destination whose CA does not sign storescp's certificate gets
/// nothing: its entries stay in the outbox, the first retried with the TLS failure as its
/// last error, so nothing is lost while the site fixes its certificates.
#[test]
fn pacs_push_over_dicom_tls_delivers_every_result_object_and_keeps_refused_ones() {
    if which("storescp").is_none() {
        return skip("storescp absent");
    }
    let Some(samples) = samples_dir() else { return };
    if !common::inference::inference_available() {
        return;
    }
    let dir = temp_dir("push-tls");
    let Some(pki) = TestPki::generate(dir.path(), "site") else {
        return;
    };
    let Some(rogue) = TestPki::generate(dir.path(), "rogue") else {
        return;
    };
    let (scp, out_dir, port) = storescp_tls(dir.path(), &pki);

    let push = |name: &str, pki: &TestPki| tls_push_destination(name, "TLSSCP", port, pki);
    let d = Daemon::builder()
        .with_inference()
        .config(
            "pacs",
            "destinations",
            &format!("[{}, {}]", push("site", &pki), push("rogue", &rogue)),
        )
        .start();
    let file = samples.join("dicom/explicit-le/PNEUMONIA_01.dcm");
    d.storescu("MODALITY", &[], &[file])
        .unwrap()
        .assert_success("storescu");

    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while received(out_dir.path()).len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let classes = received_classes(out_dir.path());
    assert_eq!(
        classes,
        RESULT_CLASSES,
        "daemon log:\n{}\nstorescp log:\n{}",
        d.log(),
        scp.log()
    );

    // The rogue destination's three objects wait in the outbox with the TLS failure.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(&mut d.command(&["outbox", "list"]), Duration::from_secs(30));
        let rogue_rows: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.contains("pacs:rogue"))
            .collect();
        let site_rows = out
            .stdout
            .lines()
            .filter(|l| l.contains("pacs:site"))
            .count();
        // The destination's queue is ordered: the first object is retried, the others
        // wait behind it.
        if rogue_rows.len() == 3
            && rogue_rows
                .iter()
                .any(|l| l.contains("retrying") && l.contains("TLS handshake failed"))
        {
            assert_eq!(
                site_rows, 0,
                "site entries not acknowledged:\n{}",
                out.stdout
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "outbox:\n{}\ndaemon log:\n{}",
            out.combined(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        received(out_dir.path()).len(),
        3,
        "the rogue push delivered"
    );
    drop(scp);
}
