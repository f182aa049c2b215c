//! Trust on the DICOM ports, with real peers over TLS (pynetdicom and DCMTK with client
//! certificates): the result objects this box generates (the SR and SC of the pipeline)
//! cannot be replaced by a C-STORE from outside (refused 0124 and audited) and Q/R keeps
//! serving ours, `dicom.plain = false` closes the plain port, and
//! `allowed_peers[].cert_sha256` binds an AE title to its client certificate (another
//! certificate is rejected and audited).

mod common;

use common::dx::make_dx;
use common::*;
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `count` synthetic DX files in `dir`: (path, SOP Instance UID).
fn dx(dir: &Path, count: usize) -> Option<Vec<(PathBuf, String)>> {
    Some(
        make_dx(dir, count, 1, &[])?
            .into_iter()
            .map(|(path, sop, _)| (path, sop))
            .collect(),
    )
}

/// A TLS client identity: certificate and private key (PEM), both issued by the PKI's CA.
#[derive(Clone, Copy)]
struct Identity<'a> {
    cert: &'a Path,
    key: &'a Path,
}

/// The PKI's client certificate.
fn client(pki: &TestPki) -> Identity<'_> {
    Identity {
        cert: &pki.client_cert,
        key: &pki.client_key,
    }
}

/// Another certificate of the same CA that may authenticate a client: the server's.
fn other(pki: &TestPki) -> Identity<'_> {
    Identity {
        cert: &pki.server_cert,
        key: &pki.server_key,
    }
}

/// One C-STORE of `file` over DICOM TLS by pynetdicom as `calling` with the client
/// certificate `id`; the line `tests/tools/tls_store.py` printed.
fn tls_store(
    d: &Daemon,
    pki: &TestPki,
    id: Identity,
    calling: &str,
    file: &Path,
    extra: &[&str],
) -> String {
    let script = std::fs::read_to_string(repo_root().join("tests/tools/tls_store.py")).unwrap();
    let port = d.tls_port.to_string();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let mut args = vec![
        "127.0.0.1".to_string(),
        port,
        calling.to_string(),
        DULI_AET.to_string(),
        p(&pki.ca_cert),
        p(id.cert),
        p(id.key),
        p(file),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = python_script(&script, &args).expect("the venv (checked before)");
    let out = run(&mut cmd, Duration::from_secs(60));
    out.assert_success("tls_store.py");
    out.stdout.trim().to_string()
}

/// DCMTK `storescu` of `files` over DICOM TLS (`--enable-tls KEY CERT`, `--add-cert-file
/// CA`) as `calling` with the client certificate `id`; `None` when DCMTK is absent.
fn dcmtk_tls_store(
    d: &Daemon,
    pki: &TestPki,
    id: Identity,
    calling: &str,
    files: &[PathBuf],
) -> Option<ToolOutput> {
    let mut cmd = dcmtk("storescu")?;
    cmd.args(["-v", "-aet", calling, "-aec", DULI_AET, "--enable-tls"])
        .arg(id.key)
        .arg(id.cert)
        .arg("--add-cert-file")
        .arg(&pki.ca_cert)
        .args(["127.0.0.1", &d.tls_port.to_string()])
        .args(files);
    Some(run(&mut cmd, Duration::from_secs(60)))
}

/// A daemon with DICOM TLS on, the PKI's server certificate and CA, and `extra` settings.
fn tls_daemon(pki: &TestPki, data: Option<&Path>, extra: &[(&str, &str)]) -> Daemon {
    tls_builder(pki, data, extra).start()
}

/// The builder of [`tls_daemon`].
fn tls_builder(pki: &TestPki, data: Option<&Path>, extra: &[(&str, &str)]) -> DaemonBuilder {
    let mut b = Daemon::builder()
        .config("dicom", "tls", "true")
        .config("dicom", "cert", pki.server_cert.to_str().unwrap())
        .config("dicom", "key", pki.server_key.to_str().unwrap())
        .config("dicom", "ca", pki.ca_cert.to_str().unwrap());
    if let Some(dir) = data {
        b = b.data_dir(dir);
    }
    for (k, v) in extra {
        b = b.config("dicom", k, v);
    }
    b
}

/// `openssl x509 -fingerprint -sha256` of a PEM certificate (`AB:CD:…`).
fn fingerprint(pem: &Path) -> String {
    let out = run(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(pem),
        Duration::from_secs(30),
    );
    out.assert_success("openssl x509 -fingerprint");
    out.stdout.trim().rsplit('=').next().unwrap().to_string()
}

fn audit_records(data: &Path) -> Vec<duli::audit::Record> {
    let store = duli::store::Store::open(data).unwrap();
    let audit = duli::audit::Audit::open(&store).unwrap();
    assert!(
        audit.verify().unwrap().broken.is_none(),
        "audit chain broken"
    );
    audit.records(0, 10_000).unwrap()
}

/// Whether the audit trail holds a refused C-STORE of `sop` by `calling` (0124).
fn refusal_audited(records: &[duli::audit::Record], calling: &str, sop: &str) -> bool {
    records.iter().any(|r| {
        r.actor == format!("ae:{calling}")
            && !r.success
            && r.object == sop
            && r.detail.contains("0124")
    })
}

/// Whether DCMTK's verbose output reports a C-STORE answered 0124 (3.6.7 prints
/// `Received Store Response (Unknown Status: 0x124)` and exits 1).
fn dcmtk_saw_0124(out: &ToolOutput) -> bool {
    !out.success() && out.combined().contains("Status: 0x124")
}

/// The data set of a Part 10 file (everything after the file meta group).
fn data_set(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let mut cursor = std::io::Cursor::new(&bytes[128..]);
    dicom_object::meta::FileMetaTable::from_reader(&mut cursor).unwrap();
    bytes[128 + cursor.position() as usize..].to_vec()
}

/// C-GET of the study `study` over DICOM TLS by pynetdicom (`tests/tools/qr_client.py`)
/// as `calling` with the PKI's client certificate: the data sets received, by SOP
/// Instance UID, and the final status.
fn tls_get(
    d: &Daemon,
    pki: &TestPki,
    calling: &str,
    study: &str,
    out_dir: &Path,
) -> (BTreeMap<String, Vec<u8>>, Option<u64>) {
    let script = std::fs::read_to_string(repo_root().join("tests/tools/qr_client.py")).unwrap();
    let port = d.tls_port.to_string();
    let mut cmd = python_script(&script, &["get", &port, out_dir.to_str().unwrap(), study])
        .expect("the venv (checked before)");
    cmd.env("QR_CALLING", calling)
        .env("QR_TLS_CA", &pki.ca_cert)
        .env("QR_TLS_CERT", &pki.client_cert)
        .env("QR_TLS_KEY", &pki.client_key);
    let out = run(&mut cmd, Duration::from_secs(120));
    out.assert_success("qr_client.py get over TLS");
    let last = out
        .stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
    let status = last.and_then(|l| l["status"].as_u64());
    let mut got = BTreeMap::new();
    for e in std::fs::read_dir(out_dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(sop) = name.strip_suffix(".bin") {
            got.insert(sop.to_string(), std::fs::read(e.path()).unwrap());
        }
    }
    (got, status)
}

/// The instances of the daemon's index (`duli instances`).
fn instances(d: &Daemon) -> Vec<duli::model::InstanceRecord> {
    let out = run(&mut d.command(&["instances"]), Duration::from_secs(60));
    out.assert_success("duli instances");
    serde_json::from_str(&out.stdout).unwrap()
}

/// The same object with another patient name and series description: what a peer would
/// store under our SOP Instance UID to change what the PACS and the reading room see.
fn forge(src: &Path, dst: &Path) {
    let script = "import sys\n\
                  from pydicom import dcmread\n\
                  ds = dcmread(sys.argv[1])\n\
                  ds.PatientName = 'FORGED^RESULT'\n\
                  ds.SeriesDescription = 'FORGED'\n\
                  ds.save_as(sys.argv[2])\n";
    let mut cmd = python_script(script, &[src.to_str().unwrap(), dst.to_str().unwrap()])
        .expect("the venv (checked before)");
    run(&mut cmd, Duration::from_secs(60)).assert_success("forge");
}

/// The SR and SC the pipeline makes from a study carry the findings the PACS and Q/R
/// serve: peers with valid certificates that store forged objects under their SOP
/// Instance UIDs (DCMTK for the SR, pynetdicom for the SC) are refused with 0124 and
/// audited, and a C-GET over TLS still returns ours, byte for byte.
#[test]
fn pipeline_result_objects_survive_forged_c_stores_and_q_r_serves_ours() {
    if !common::inference::inference_available() {
        return;
    }
    if require_tool("storescu").is_none() {
        return;
    }
    let dir = temp_dir("pipeline-protected");
    let Some(pki) = TestPki::generate(dir.path(), "site") else {
        return;
    };
    let study_file = match samples_dir() {
        Some(s) => s.join("dicom/explicit-le/PNEUMONIA_01.dcm"),
        None => match common::inference::make_dx_study(dir.path(), "cxr", &[]) {
            Some(f) => f,
            None => return,
        },
    };
    let data = dir.path().join("data");
    let mut d = tls_builder(&pki, Some(&data), &[]).with_inference().start();
    // The modality sends the study over TLS (DCMTK, its own certificate).
    let out = dcmtk_tls_store(&d, &pki, client(&pki), "MODALITY", &[study_file]).unwrap();
    out.assert_success("storescu --enable-tls");

    // The box makes its SR and, with the heatmap, its SC.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let ours = loop {
        let generated: Vec<_> = instances(&d).into_iter().filter(|i| i.generated).collect();
        let has = |class: &str| generated.iter().any(|i| i.sop_class_uid == class);
        if has(duli::results::sr::COMPREHENSIVE_SR) && has(duli::results::sc::SECONDARY_CAPTURE) {
            break generated;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no SR and SC after 240 s: {generated:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let sr = ours.iter().find(|i| i.modality == "SR").unwrap().clone();
    // (The heatmap's Parametric Map is OT too: the SC is the one in Secondary Capture.)
    let sc = ours
        .iter()
        .find(|i| i.sop_class_uid == duli::results::sc::SECONDARY_CAPTURE)
        .unwrap()
        .clone();
    let original: BTreeMap<String, Vec<u8>> = ours
        .iter()
        .map(|i| {
            (
                i.sop_instance_uid.clone(),
                std::fs::read(data.join(&i.path)).unwrap(),
            )
        })
        .collect();

    // A forged SR under our SOP Instance UID, from DCMTK over TLS.
    let forged_sr = dir.path().join("forged-sr.dcm");
    forge(&data.join(&sr.path), &forged_sr);
    let out = dcmtk_tls_store(&d, &pki, client(&pki), "MODALITY", &[forged_sr]).unwrap();
    assert!(dcmtk_saw_0124(&out), "{}", out.combined());
    // A forged SC under ours, from pynetdicom over TLS: 0124 with an Error Comment.
    let line = tls_store(
        &d,
        &pki,
        client(&pki),
        "WORKSTATION",
        &data.join(&sc.path),
        &["--patient-name", "FORGED^RESULT"],
    );
    assert!(line.starts_with("STATUS 0x0124"), "{line}\n{}", d.log());
    assert!(line.contains("result object"), "{line}");

    // Q/R still serves ours: C-GET of the study over TLS returns the SR and SC unchanged.
    let got_dir = dir.path().join("got");
    let (got, status) = tls_get(&d, &pki, "MODALITY", &sr.study_instance_uid, &got_dir);
    assert_eq!(status, Some(0), "C-GET final status");
    for inst in [&sr, &sc] {
        let served = got
            .get(&inst.sop_instance_uid)
            .unwrap_or_else(|| panic!("{} not served: {:?}", inst.modality, got.keys()));
        assert_eq!(
            *served,
            data_set(&data.join(&inst.path)),
            "{} served is not ours",
            inst.modality
        );
        assert!(
            !String::from_utf8_lossy(served).contains("FORGED"),
            "{}",
            inst.modality
        );
    }
    assert!(d.terminate(Duration::from_secs(30)).is_some());

    // Our files are untouched, still marked ours, and both attempts are audited.
    let store = duli::store::Store::open(&data).unwrap();
    for (sop, bytes) in &original {
        let rec = store.instance(sop).unwrap().unwrap();
        assert!(rec.generated && rec.source_ae != "MODALITY", "{rec:?}");
        assert_eq!(
            &std::fs::read(data.join(&rec.path)).unwrap(),
            bytes,
            "{sop}"
        );
    }
    drop(store);
    let records = audit_records(&data);
    assert!(
        refusal_audited(&records, "MODALITY", &sr.sop_instance_uid),
        "SR attempt: {records:#?}"
    );
    assert!(
        refusal_audited(&records, "WORKSTATION", &sc.sop_instance_uid),
        "SC attempt: {records:#?}"
    );
}

/// A result object already in the store (as the result stage commits them, here without
/// the model): a replacement is refused over TLS and over the plain port, anything else is
/// received, and Q/R serves ours.
#[test]
fn generated_result_objects_cannot_be_replaced_by_a_c_store_over_tls() {
    let dir = temp_dir("protected");
    let Some(pki) = TestPki::generate(dir.path(), "site") else {
        return;
    };
    let Some(files) = dx(&dir.path().join("dx"), 2) else {
        return;
    };
    let (ours, ours_uid) = &files[0];
    // A result object of this box, stored as the result stage stores them.
    let data = dir.path().join("data");
    let (stored, study) = {
        let store = duli::store::Store::open(&data).unwrap();
        let mut f = store.files().incoming().unwrap();
        f.write(&std::fs::read(ours).unwrap()).unwrap();
        let staged = f.finish().unwrap();
        let header = duli::store::header::read_header(staged.path()).unwrap();
        let rec = store
            .place_and_commit(staged, &header, "DULI", true, &[])
            .unwrap()
            .0;
        store.flush_blocking().unwrap();
        (data.join(rec.path), rec.study_instance_uid)
    };
    let original = std::fs::read(&stored).unwrap();
    let mut d = tls_daemon(&pki, Some(&data), &[]);

    // Same SOP Instance UID, other content, from a peer with a valid certificate.
    let line = tls_store(
        &d,
        &pki,
        client(&pki),
        "INTRUDER",
        ours,
        &["--patient-name", "FORGED^RESULT"],
    );
    assert!(line.starts_with("STATUS 0x0124"), "{line}\n{}", d.log());
    assert!(
        line.contains("result object"),
        "an Error Comment says why: {line}"
    );
    // Also over the plain port, with DCMTK.
    if which("storescu").is_some() {
        let out = d
            .storescu("INTRUDER", &["-v"], std::slice::from_ref(ours))
            .unwrap();
        assert!(dcmtk_saw_0124(&out), "{}", out.combined());
    }
    // Anything else is still received.
    let line = tls_store(&d, &pki, client(&pki), "MODALITY", &files[1].0, &[]);
    assert!(line.starts_with("STATUS 0x0000"), "{line}");
    // Q/R serves ours.
    let (got, status) = tls_get(&d, &pki, "MODALITY", &study, &dir.path().join("got"));
    assert_eq!(status, Some(0));
    assert_eq!(
        got.get(ours_uid),
        Some(&data_set(&stored)),
        "{:?}",
        got.keys()
    );
    assert!(d.terminate(Duration::from_secs(30)).is_some());

    // Ours is untouched, still ours, and the attempt is on the audit trail.
    assert_eq!(std::fs::read(&stored).unwrap(), original, "file replaced");
    {
        let store = duli::store::Store::open(&data).unwrap();
        let rec = store.instance(ours_uid).unwrap().unwrap();
        assert!(rec.generated && rec.source_ae == "DULI", "{rec:?}");
        assert!(!store.instance(&files[1].1).unwrap().unwrap().generated);
    }
    let records = audit_records(&data);
    assert!(
        refusal_audited(&records, "INTRUDER", ours_uid),
        "{records:#?}"
    );
}

/// `dicom.plain = false` leaves only the TLS port; an AE title bound to a certificate
/// fingerprint is accepted with that certificate only (pynetdicom and DCMTK), and another
/// certificate of the same CA claiming it is rejected and audited.
#[test]
fn plain_port_off_and_ae_titles_bound_to_client_certificates() {
    let dir = temp_dir("bound");
    let Some(pki) = TestPki::generate(dir.path(), "site") else {
        return;
    };
    let Some(files) = dx(&dir.path().join("dx"), 2) else {
        return;
    };
    let client_fp = fingerprint(&pki.client_cert);
    let other_fp = fingerprint(&pki.server_cert);
    let peers = format!(
        r#"[{{ae_title = "MODALITY", cert_sha256 = "{client_fp}"}}, {{ae_title = "BOUND_ELSEWHERE", cert_sha256 = "{other_fp}"}}]"#
    );
    let data = dir.path().join("data");
    let mut d = tls_daemon(
        &pki,
        Some(&data),
        &[("plain", "false"), ("allowed_peers", &peers)],
    );
    // The plain port is closed.
    assert!(
        TcpStream::connect_timeout(&d.dicom_addr(), Duration::from_secs(2)).is_err(),
        "plain DICOM port open"
    );
    if let Some(out) = d.echoscu("MODALITY", &[]) {
        assert!(
            !out.success(),
            "C-ECHO on the plain port: {}",
            out.combined()
        );
    }
    // The AE with its own certificate is served, by pynetdicom and by DCMTK.
    let line = tls_store(&d, &pki, client(&pki), "MODALITY", &files[0].0, &[]);
    assert!(line.starts_with("STATUS 0x0000"), "{line}\n{}", d.log());
    if let Some(out) = dcmtk_tls_store(&d, &pki, client(&pki), "MODALITY", &[files[1].0.clone()]) {
        out.assert_success("storescu --enable-tls with the bound certificate");
    }
    // Another certificate of the same CA claiming that AE title: rejected.
    let line = tls_store(&d, &pki, other(&pki), "MODALITY", &files[0].0, &[]);
    assert!(line.starts_with("REJECTED"), "{line}");
    if let Some(out) = dcmtk_tls_store(&d, &pki, other(&pki), "MODALITY", &[files[0].0.clone()]) {
        assert!(!out.success(), "{}", out.combined());
    }
    // The bound certificate claiming an AE title bound to another one: rejected too.
    let line = tls_store(&d, &pki, client(&pki), "BOUND_ELSEWHERE", &files[0].0, &[]);
    assert!(line.starts_with("REJECTED"), "{line}");
    assert!(d.terminate(Duration::from_secs(30)).is_some());

    let stored = duli::store::Store::open(&data).unwrap();
    for (_, sop) in &files {
        assert!(stored.instance(sop).unwrap().is_some(), "{sop} not stored");
    }
    drop(stored);
    let records = audit_records(&data);
    let mismatches = |ae: &str| {
        records
            .iter()
            .filter(|r| {
                r.actor == format!("ae:{ae}")
                    && !r.success
                    && r.detail.contains("client certificate")
            })
            .count()
    };
    // The same certificate offered again (pynetdicom, then DCMTK) is recorded once per
    // window: a flood of attempts cannot fill the trail.
    assert_eq!(mismatches("MODALITY"), 1, "{records:#?}");
    assert!(mismatches("BOUND_ELSEWHERE") >= 1, "{records:#?}");
}
