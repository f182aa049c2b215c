//! Trust on the DICOM ports, with real peers over TLS (pynetdicom with a client
//! certificate, DCMTK): the result objects this box generates cannot be replaced by a
//! C-STORE from outside (refused 0124 and audited), `dicom.plain = false` closes the plain
//! port, and `allowed_peers[].cert_sha256` binds an AE title to its client certificate (a
//! mismatch is rejected and audited).

mod common;

use common::dx::make_dx;
use common::*;
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

/// One C-STORE of `file` over DICOM TLS by pynetdicom as `calling`, with the PKI's
/// client certificate; the line `tests/tools/tls_store.py` printed.
fn tls_store(d: &Daemon, pki: &TestPki, calling: &str, file: &Path, extra: &[&str]) -> String {
    let script = std::fs::read_to_string(repo_root().join("tests/tools/tls_store.py")).unwrap();
    let port = d.tls_port.to_string();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let mut args = vec![
        "127.0.0.1".to_string(),
        port,
        calling.to_string(),
        DULI_AET.to_string(),
        p(&pki.ca_cert),
        p(&pki.client_cert),
        p(&pki.client_key),
        p(file),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = python_script(&script, &args).expect("the venv (checked before)");
    let out = run(&mut cmd, Duration::from_secs(60));
    out.assert_success("tls_store.py");
    out.stdout.trim().to_string()
}

/// A daemon with DICOM TLS on, the PKI's server certificate and CA, and `extra` settings.
fn tls_daemon(pki: &TestPki, data: Option<&Path>, extra: &[(&str, &str)]) -> Daemon {
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
    b.start()
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

/// The SR and SC this box makes carry the findings the PACS and Q/R serve: a peer that
/// stores an object under one of their SOP Instance UIDs must not replace it.
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
    let stored = {
        let store = duli::store::Store::open(&data).unwrap();
        let mut f = store.files().incoming().unwrap();
        f.write(&std::fs::read(ours).unwrap()).unwrap();
        let staged = f.finish().unwrap();
        let header = duli::store::header::read_header(staged.path()).unwrap();
        let rec = store
            .place_and_commit(staged, &header, "DULI", true, &[])
            .unwrap();
        store.flush_blocking().unwrap();
        data.join(rec.path)
    };
    let original = std::fs::read(&stored).unwrap();
    let mut d = tls_daemon(&pki, Some(&data), &[]);

    // Same SOP Instance UID, other content, from a peer with a valid certificate.
    let line = tls_store(
        &d,
        &pki,
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
        assert!(
            out.combined().contains("0x124") || out.combined().contains("0124"),
            "{}",
            out.combined()
        );
    }
    // Anything else is still received.
    let line = tls_store(&d, &pki, "MODALITY", &files[1].0, &[]);
    assert!(line.starts_with("STATUS 0x0000"), "{line}");
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
        records.iter().any(|r| r.actor == "ae:INTRUDER"
            && !r.success
            && r.object == *ours_uid
            && r.detail.contains("0124")),
        "{records:#?}"
    );
}

/// `dicom.plain = false` leaves only the TLS port; an AE title bound to a certificate
/// fingerprint is accepted with that certificate only, and a mismatch is audited.
#[test]
fn plain_port_off_and_ae_titles_bound_to_client_certificates() {
    let dir = temp_dir("bound");
    let Some(pki) = TestPki::generate(dir.path(), "site") else {
        return;
    };
    let Some(files) = dx(&dir.path().join("dx"), 1) else {
        return;
    };
    let client = fingerprint(&pki.client_cert);
    let elsewhere = fingerprint(&pki.server_cert);
    let peers = format!(
        r#"[{{ae_title = "MODALITY", cert_sha256 = "{client}"}}, {{ae_title = "BOUND_ELSEWHERE", cert_sha256 = "{elsewhere}"}}]"#
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
    // The AE with its own certificate is served.
    let line = tls_store(&d, &pki, "MODALITY", &files[0].0, &[]);
    assert!(line.starts_with("STATUS 0x0000"), "{line}\n{}", d.log());
    // The same certificate claiming an AE bound to another certificate: rejected.
    let line = tls_store(&d, &pki, "BOUND_ELSEWHERE", &files[0].0, &[]);
    assert!(line.starts_with("REJECTED"), "{line}");
    // DCMTK with that certificate and AE title: rejected too.
    if which("storescu").is_some() {
        let mut cmd = dcmtk("storescu").unwrap();
        cmd.args(["-aet", "BOUND_ELSEWHERE", "-aec", DULI_AET, "+tls"])
            .arg(&pki.client_key)
            .arg(&pki.client_cert)
            .arg("+cf")
            .arg(&pki.ca_cert)
            .args(["127.0.0.1", &d.tls_port.to_string()])
            .arg(&files[0].0);
        let out = run(&mut cmd, Duration::from_secs(60));
        assert!(!out.success(), "{}", out.combined());
    }
    assert!(d.terminate(Duration::from_secs(30)).is_some());
    let records = audit_records(&data);
    let mismatches = records
        .iter()
        .filter(|r| {
            r.actor == "ae:BOUND_ELSEWHERE" && !r.success && r.detail.contains("client certificate")
        })
        .count();
    assert!(mismatches >= 1, "{records:#?}");
    assert!(!records
        .iter()
        .any(|r| r.actor == "ae:MODALITY" && !r.success));
}
