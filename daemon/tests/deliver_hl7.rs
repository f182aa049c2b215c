//! HL7 delivery against real peers over loopback TCP: the Python `hl7` package as a RIS
//! that parses every message field by field, and a Rust MLLP listener scripted to answer
//! AE, AR, garbage or nothing at all, over TCP and TLS.

mod common;

use common::delivery::*;
use duli::config::{Hl7Config, StudyUidIn};
use duli::deliver::hl7::ack::{build_ack, AckCode};
use duli::deliver::hl7::client::{Hl7Channel, Hl7Target};
use duli::deliver::hl7::message::{control_id_of, filler_order_of, Hl7Profile};
use duli::deliver::hl7::mllp;
use duli::deliver::plan::DeliveryPlan;
use duli::deliver::worker;
use duli::site_secret::SiteSecret;
use duli::store::outbox::{Destination, EntryState, Outbox};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

fn plan() -> DeliveryPlan {
    DeliveryPlan {
        site_id: "hospital-a".into(),
        device_id: "edge-01".into(),
        hl7: Some(Hl7Profile {
            sending_facility: "hospital-a".into(),
            receiving_application: "RIS".into(),
            receiving_facility: "HOSP".into(),
            study_uid_in: StudyUidIn::Obx,
        }),
        mqtt: false,
        pacs_push: vec![],
    }
}

/// MSH-10 of the message of report `report_id` (keyed by the tests' site secret, sent by
/// the plan's box).
fn cid(report_id: &str) -> String {
    control_id_of(
        &SiteSecret::from_bytes(&[1u8; 32]),
        &plan().device_id,
        report_id,
    )
}

fn target(port: u16) -> Hl7Target {
    let mut t = Hl7Target::from_config(&Hl7Config {
        enabled: true,
        port,
        ..Default::default()
    })
    .unwrap();
    t.connect_timeout = Duration::from_secs(2);
    t.ack_timeout = Duration::from_secs(2);
    t
}

fn enqueue_reports(ob: &Outbox, range: std::ops::Range<usize>) {
    let secret = SiteSecret::from_bytes(&[1u8; 32]);
    let plan = plan();
    for i in range {
        ob.enqueue(&plan.report_entries(&report(i), &secret))
            .unwrap();
    }
}

/// What the scripted listener answers.
#[derive(Clone, Debug)]
enum Answer {
    Ack(AckCode),
    SlowAck(AckCode),
    /// `AA` naming this control id in MSA-2 (another message's, or ours cut short).
    AckFor(&'static str),
    /// `AA` with MSA-2 cut to the 20 characters HL7 v2.5.1 gives MSH-10.
    AckCut,
    /// `AA`, then the same `AA` again a moment later (as some interface engines do).
    AckTwice,
    /// `AA`, then 100 copies of it at once (an interface engine stuck repeating).
    AckFlood,
    Garbage,
    /// `AA` in ISO 8859-1 (MSH-18 `8859/1`), an accented sending facility and MSA-3.
    AckLatin1,
    /// Close the connection without a byte of answer (a RIS whose parser fails on it).
    Drop,
    /// Keep the connection and never answer (a RIS whose parser hangs on it).
    Hang,
}

type Script = Arc<dyn Fn(&str, usize) -> Answer + Send + Sync>;

/// Every distinct message the scripted listener received, until
/// [`assert_received_strict_valid`] takes them.
static RECEIVED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Every ORU the scripted listeners received so far (in this test or one running beside
/// it) is valid in hl7apy at its STRICT level: not only the messages of the tests that
/// look at their fields.
fn assert_received_strict_valid() {
    let msgs = std::mem::take(&mut *RECEIVED.lock().unwrap());
    common::ris::assert_strict_valid(&msgs);
}

/// Serves MLLP on one connection: records each message's MSH-10 and answers per script
/// (called with the control id and how many times it has been seen before).
async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    script: Script,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut dec = mllp::Decoder::default();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        dec.push(&buf[..n]);
        while let Ok(Some(frame)) = dec.next_frame() {
            let text = String::from_utf8(frame).unwrap();
            {
                let mut received = RECEIVED.lock().unwrap();
                if !received.contains(&text) {
                    received.push(text.clone());
                }
            }
            let id = duli::deliver::hl7::client::control_id(&text);
            let before = {
                let mut seen = seen.lock().unwrap();
                let before = seen.iter().filter(|s| **s == id).count();
                seen.push(id.clone());
                before
            };
            let reply = match script(&id, before) {
                Answer::Ack(code) => mllp::encode(build_ack(code, &id, "ACK1", "").as_bytes()),
                Answer::SlowAck(code) => {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    mllp::encode(build_ack(code, &id, "ACK1", "").as_bytes())
                }
                Answer::AckFor(other) => {
                    mllp::encode(build_ack(AckCode::AA, other, "ACK1", "").as_bytes())
                }
                Answer::AckCut => {
                    let cut: String = id.chars().take(20).collect();
                    mllp::encode(build_ack(AckCode::AA, &cut, "ACK1", "").as_bytes())
                }
                Answer::AckTwice => {
                    let ack = mllp::encode(build_ack(AckCode::AA, &id, "ACK1", "").as_bytes());
                    if s.write_all(&ack).await.is_err() {
                        return;
                    }
                    let _ = s.flush().await;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    ack
                }
                Answer::AckFlood => {
                    let ack = mllp::encode(build_ack(AckCode::AA, &id, "ACK1", "").as_bytes());
                    ack.repeat(101)
                }
                Answer::Garbage => b"HELLO, this is not MLLP\r\n".to_vec(),
                Answer::AckLatin1 => {
                    let mut ack = b"MSH|^~\\&|RIS|H\xd4PITAL|DULI|SITE|20261207||ACK|A1|P|2.5.1|||||FRA|8859/1\rMSA|AA|".to_vec();
                    ack.extend_from_slice(id.as_bytes());
                    ack.extend_from_slice(b"|Re\xe7u\r");
                    mllp::encode(&ack)
                }
                Answer::Drop => return,
                Answer::Hang => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
            };
            if s.write_all(&reply).await.is_err() {
                return;
            }
        }
    }
}

async fn start_listener(
    port: u16,
    script: Script,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (script, seen) = (script.clone(), seen2.clone());
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve_conn(tcp, script, seen).await,
                    Some(acc) => {
                        if let Ok(s) = acc.accept(tcp).await {
                            serve_conn(s, script, seen).await
                        }
                    }
                }
            });
        }
    });
    (seen, task)
}

fn spawn_worker(
    ob: &Arc<Outbox>,
    port: u16,
    max_rejections: u32,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let h = worker::spawn(
        ob.clone(),
        Destination::Hl7,
        Hl7Channel::new(target(port)),
        fast_options(max_rejections),
        rx,
    );
    (tx, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hl7_ris_reads_every_field_and_ae_then_aa_is_delivered_after_a_retry() {
    let Some(python) = python_with(&["hl7", "hl7apy"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dir.path().join("received.jsonl");
    let script = repo_root().join("daemon/tests/peers/hl7_ris.py");
    let mut peer = Peer {
        child: std::process::Command::new(python)
            .arg(&script)
            .arg(port.to_string())
            .arg(&out)
            .arg("AE,AA")
            .spawn()
            .unwrap(),
    };
    assert!(
        wait_for_port(port, Duration::from_secs(10)),
        "RIS did not start"
    );
    let (_store, ob) = outbox(&dir.path().join("data"));
    enqueue_reports(&ob, 51..52);
    let mut corrected = report(7);
    corrected.version = 2;
    corrected.triage = false;
    // A Japanese name in three component groups (PS3.5 H.3.1).
    corrected.study.patient_name = "Yamada^Tarou=山田^太郎=やまだ^たろう".into();
    // The correction goes to a RIS that wants the Study Instance UID in a ZDS.
    let mut zds = plan();
    if let Some(p) = zds.hl7.as_mut() {
        p.study_uid_in = StudyUidIn::Zds;
    }
    ob.enqueue(&zds.report_entries(&corrected, &SiteSecret::from_bytes(&[1u8; 32])))
        .unwrap();
    let (stop, handle) = spawn_worker(&ob, port, 5);
    assert!(drained(&ob, &Destination::Hl7, Duration::from_secs(20)).await);
    stop.send(true).unwrap();
    handle.await.unwrap();
    let _ = peer.child.kill();

    let text = std::fs::read_to_string(&out).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // AE for the first copy, AA for the retry, AA for the next message
    assert_eq!(records.len(), 3, "{text}");
    assert_eq!(records[0]["MSH.F10"], cid("rep-0051").as_str());
    assert_eq!(records[1]["MSH.F10"], cid("rep-0051").as_str());
    assert_eq!(records[2]["MSH.F10"], cid("rep-0007").as_str());
    let status = ob.status_of("rep-0051").unwrap();
    assert_eq!(status[0].state, "delivered");
    assert_eq!(status[0].attempts, 2);
    assert_eq!(ob.fill().entries, 0);

    let r = &records[1];
    let filler = filler_order_of(
        &SiteSecret::from_bytes(&[1u8; 32]),
        "1.2.826.0.1.3680043.8.498.1051",
    );
    assert_eq!(r["OBR.F3.R1.C1"], filler.as_str(), "{r}");
    let expect = [
        ("MSH.F3", "DULI"),
        ("MSH.F4", "hospital-a"),
        ("MSH.F5", "RIS"),
        ("MSH.F6", "HOSP"),
        ("MSH.F7", "20240131093106+0000"),
        ("MSH.F9.R1.C1", "ORU"),
        ("MSH.F9.R1.C2", "R01"),
        ("MSH.F9.R1.C3", "ORU_R01"),
        ("MSH.F11", "P"),
        ("MSH.F12", "2.5.1"),
        ("MSH.F18", "UNICODE UTF-8"),
        ("PID.F3", "PID00051"),
        ("PID.F5.R1.C1", "Conceição"),
        ("PID.F5.R1.C2", "João"),
        ("PID.F5.R1.C3", "Maria"),
        ("PID.F5.R1.C4", "Jr."),
        ("PID.F7", "19800215"),
        ("PID.F8", "M"),
        ("ORC.F1", "RE"),
        ("ORC.F2", "ACC51&X"),
        ("OBR.F2", "ACC51&X"),
        ("OBR.F4.R1.C5", "Tórax PA|AP"),
        ("OBR.F7", "20240131093015"),
        ("OBR.F18", "ACC51&X"),
        ("OBR.F25", "P"),
        ("TQ1.F9", "S"),
        ("OBX1.F2", "NM"),
        ("OBX1.F3.R1.C1", "233604007"),
        ("OBX1.F3.R1.C2", "Pneumonia"),
        ("OBX1.F3.R1.C3", "SCT"),
        ("OBX1.F3.R1.C4", "PNEUMONIA"),
        ("OBX1.F3.R1.C6", "99DULI"),
        ("OBX1.F5", "0.51"),
        ("OBX1.F8", "A"),
        ("OBX1.F11", "P"),
        ("OBX2.F2", "ST"),
        ("OBX2.F3.R1.C1", "110180"),
        ("OBX2.F5", "1.2.826.0.1.3680043.8.498.1051"),
        ("OBX2.F11", "P"),
        ("OBX3.F2", "ST"),
        ("OBX3.F5", "pneumonia-xception 1.0.0 f32"),
    ];
    for (key, value) in expect {
        assert_eq!(r[key], value, "{key} in {r}");
    }
    assert_eq!(
        r["segments"],
        serde_json::json!(["MSH", "PID", "PV1", "ORC", "OBR", "NTE", "TQ1", "OBX", "OBX", "OBX"])
    );
    let c = &records[2];
    // A later version replaces the earlier one under the same filler order and stays
    // preliminary (table 0085's `C` corrects a final result).
    assert_eq!(c["OBR.F25"], "P");
    assert_eq!(c["TQ1.F9"], "R");
    assert_eq!(c["OBX1.F8"], "N");
    assert_eq!(c["ZDS.F1.R1.C1"], "1.2.826.0.1.3680043.8.498.1007");
    assert_eq!(c["ZDS.F1.R1.C4"], "DICOM");
    // One PID-5 repetition per component group, each with its representation code.
    for (rep, family, given, code) in [
        (1, "Yamada", "Tarou", "A"),
        (2, "山田", "太郎", "I"),
        (3, "やまだ", "たろう", "P"),
    ] {
        assert_eq!(c[format!("PID.F5.R{rep}.C1")], family, "{c}");
        assert_eq!(c[format!("PID.F5.R{rep}.C2")], given, "{c}");
        assert_eq!(c[format!("PID.F5.R{rep}.C8")], code, "{c}");
    }
    assert_eq!(
        c["segments"],
        serde_json::json!(["MSH", "PID", "PV1", "ORC", "OBR", "NTE", "TQ1", "OBX", "OBX", "ZDS"])
    );
    // A strict HL7 v2.5.1 validator accepts every message, in both placements.
    for r in &records {
        assert_eq!(r["strict"], "valid", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ar_forever_dead_letters_after_max_rejections_without_blocking_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let refused = cid("rep-0000");
    let script: Script = Arc::new(move |id: &str, _| {
        if id == refused {
            Answer::Ack(AckCode::AR)
        } else {
            Answer::Ack(AckCode::AA)
        }
    });
    let (seen, _l) = start_listener(port, script, None).await;
    let (_store, ob) = outbox(dir.path());
    enqueue_reports(&ob, 0..3);
    let (stop, handle) = spawn_worker(&ob, port, 3);
    assert!(drained(&ob, &Destination::Hl7, Duration::from_secs(20)).await);
    stop.send(true).unwrap();
    handle.await.unwrap();
    let list = ob.list(None).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].report_id, "rep-0000");
    assert_eq!(list[0].state, EntryState::Dead);
    assert_eq!(list[0].rejections, 3);
    assert_eq!(list[0].last_error.as_deref(), Some("AR"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().filter(|s| **s == cid("rep-0000")).count(), 3);
    assert_eq!(seen.iter().filter(|s| **s != cid("rep-0000")).count(), 2);
    let stats = ob.stats().unwrap();
    assert_eq!(
        (
            stats[0].dead,
            stats[0].rejected_total,
            stats[0].delivered_total
        ),
        (1, 3, 2)
    );
    assert_received_strict_valid();
}

/// Refusals are spaced by their own, longer backoff (15 s doubling by default): a RIS that
/// answers `AR` while its interface restarts gets the message again minutes later, not in
/// the next second; an unanswered attempt keeps the short one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_wait_their_own_longer_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let script: Script = Arc::new(|_: &str, _| Answer::Ack(AckCode::AR));
    let (seen, _l) = start_listener(port, script, None).await;
    let (_store, ob) = outbox(dir.path());
    enqueue_reports(&ob, 0..1);
    let mut options = fast_options(5);
    options.refusal_backoff = duli::store::outbox::Backoff {
        base: Duration::from_secs(4),
        cap: Duration::from_secs(4),
    };
    let (tx, rx) = watch::channel(false);
    let handle = worker::spawn(
        ob.clone(),
        Destination::Hl7,
        Hl7Channel::new(target(port)),
        options,
        rx,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = std::time::Instant::now();
    // The short backoff would have sent it again several times within 1.5 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "sent again before its refusal backoff"
    );
    let list = ob.list(None).unwrap();
    assert_eq!(
        (list[0].rejections, list[0].state),
        (1, EntryState::Retrying)
    );
    let wait = list[0].next_attempt_at - duli::clock::now_millis();
    assert!(wait >= 300, "next attempt in {wait} ms");
    while seen.lock().unwrap().len() < 2 && first.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "sent again after the refusal backoff"
    );
    tx.send(true).unwrap();
    handle.await.unwrap();
    assert!(duli::deliver::worker::REFUSAL_BACKOFF.base >= Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answers_are_retried_not_counted_as_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let script: Script = Arc::new(|_: &str, before| {
        if before < 2 {
            Answer::Garbage
        } else {
            Answer::Ack(AckCode::AA)
        }
    });
    let (seen, _l) = start_listener(port, script, None).await;
    let (_store, ob) = outbox(dir.path());
    enqueue_reports(&ob, 0..1);
    let (stop, handle) = spawn_worker(&ob, port, 1);
    assert!(drained(&ob, &Destination::Hl7, Duration::from_secs(20)).await);
    stop.send(true).unwrap();
    handle.await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 3);
    let s = &ob.stats().unwrap()[0];
    assert_eq!(
        (s.failed_total, s.rejected_total, s.delivered_total),
        (2, 0, 1)
    );
    assert_received_strict_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_recovery_delivers_every_report_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_store, ob) = outbox(dir.path());
    let (stop, handle) = spawn_worker(&ob, port, 5);
    enqueue_reports(&ob, 0..50);
    // the RIS is down: attempts fail and the queue stays whole
    tokio::time::sleep(Duration::from_millis(800)).await;
    let head = ob.head(&Destination::Hl7).unwrap().unwrap();
    assert_eq!(head.report_id, "rep-0000");
    assert!(head.attempts >= 2, "attempts {}", head.attempts);
    assert_eq!(ob.fill().entries, 50);
    let script: Script = Arc::new(|_: &str, _| Answer::Ack(AckCode::AA));
    let (seen, _l) = start_listener(port, script, None).await;
    assert!(drained(&ob, &Destination::Hl7, Duration::from_secs(30)).await);
    stop.send(true).unwrap();
    handle.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let expected: Vec<String> = (0..50).map(|i| cid(&format!("rep-{i:04}"))).collect();
    assert_eq!(seen, expected);
    assert_eq!(ob.fill().entries, 0);
    assert!(ob.list(None).unwrap().is_empty());
    assert_received_strict_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pki) = TestPki::generate(dir.path(), "hl7") else {
        return;
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::fs::read(&pki.ca_cert).unwrap().as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut std::fs::read(&pki.server_cert).unwrap().as_slice())
            .map(|c| c.unwrap())
            .collect();
    let key = rustls_pemfile::private_key(&mut std::fs::read(&pki.server_key).unwrap().as_slice())
        .unwrap()
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let port = free_port();
    let script: Script = Arc::new(|_: &str, _| Answer::Ack(AckCode::AA));
    let (seen, _l) = start_listener(port, script, Some(acceptor)).await;
    let (_store, ob) = outbox(&dir.path().join("data"));
    enqueue_reports(&ob, 0..3);
    let cfg = Hl7Config {
        enabled: true,
        port,
        tls: true,
        ca: Some(pki.ca_cert.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        ..Default::default()
    };
    let (tx, rx) = watch::channel(false);
    let h = worker::spawn(
        ob.clone(),
        Destination::Hl7,
        Hl7Channel::new(Hl7Target::from_config(&cfg).unwrap()),
        fast_options(3),
        rx,
    );
    assert!(drained(&ob, &Destination::Hl7, Duration::from_secs(20)).await);
    tx.send(true).unwrap();
    h.await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 3);

    // without the client certificate the RIS refuses the handshake: retried, never sent
    let (_store2, ob2) = outbox(&dir.path().join("data2"));
    enqueue_reports(&ob2, 10..11);
    let no_cert = Hl7Config {
        cert: None,
        key: None,
        ..cfg
    };
    let (tx, rx) = watch::channel(false);
    let h = worker::spawn(
        ob2.clone(),
        Destination::Hl7,
        Hl7Channel::new(Hl7Target::from_config(&no_cert).unwrap()),
        fast_options(3),
        rx,
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    tx.send(true).unwrap();
    h.await.unwrap();
    let e = ob2.head(&Destination::Hl7).unwrap().unwrap();
    assert!(e.attempts >= 1 && e.rejections == 0, "{e:?}");
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_received_strict_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mid_drain_resumes_after_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let script: Script = Arc::new(|_: &str, _| Answer::SlowAck(AckCode::AA));
    let (seen, _l) = start_listener(port, script, None).await;
    {
        let (store, ob) = outbox(dir.path());
        enqueue_reports(&ob, 0..40);
        store.flush_blocking().unwrap();
        let (_stop, handle) = spawn_worker(&ob, port, 5);
        while seen.lock().unwrap().len() < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // the task dies without any cleanup, as in a crash of the worker
        handle.abort();
        let _ = handle.await;
    }
    let sent_before = seen.lock().unwrap().len();
    assert!(sent_before < 40, "the whole queue drained before the stop");
    let (_store, ob) = outbox(dir.path());
    assert!(ob.fill().entries > 0);
    let (stop, handle) = spawn_worker(&ob, port, 5);
    assert!(drained(&ob, &Destination::Hl7, Duration::from_secs(30)).await);
    stop.send(true).unwrap();
    handle.await.unwrap();
    let mut seen = seen.lock().unwrap().clone();
    let total = seen.len();
    seen.dedup();
    let expected: Vec<String> = (0..40).map(|i| cid(&format!("rep-{i:04}"))).collect();
    assert_eq!(seen, expected, "every report, in order (repeats allowed)");
    eprintln!(
        "resume after stop: {} sent, {} duplicates",
        total,
        total - 40
    );
    assert!(total - 40 <= 1);
    assert_received_strict_valid();
}

/// The HL7 message of `report` as the plan makes it.
fn message_of(report: &duli::report::Report) -> String {
    let secret = SiteSecret::from_bytes(&[1u8; 32]);
    match &plan().report_entries(report, &secret)[0].payload {
        duli::store::outbox::Payload::Hl7 { message } => message.clone(),
        other => panic!("{other:?}"),
    }
}

/// Field `n` of the first `id` segment of `msg`, unescaped.
fn field(msg: &str, id: &str, n: usize) -> String {
    let raw = msg
        .split('\r')
        .find(|s| s.starts_with(id))
        .and_then(|s| s.split('|').nth(n))
        .unwrap_or_default();
    duli::deliver::hl7::message::unescape(raw)
}

/// DICOM text longer than HL7 v2.5.1 allows (a 250-character Study Description, long name
/// components, delimiters where the cut falls) is cut to each component's length on whole
/// characters and whole escapes: the message stays valid for a strict parser.
#[test]
fn over_long_dicom_text_is_cut_to_its_hl7_lengths_and_stays_strict_valid() {
    let mut r = report(3);
    let description = format!("{}&|^~\\ {}", "Tórax PA ".repeat(21), "x".repeat(60));
    assert!(description.chars().count() > 250);
    r.study.study_description = description.clone();
    r.study.patient_name = format!("{}^{}^{}", "Ñ".repeat(64), "G&".repeat(40), "M".repeat(64));
    // A label without a standard code, with the longest local code a manifest may hold.
    let mut local = r.findings[0].clone();
    local.standard = None;
    local.code = "ENL_CARDIOMEDIAS".into();
    local.label = "Enlarged cardiomediastinum".into();
    r.findings.push(local);
    let msg = message_of(&r);
    let Some(verdict) = common::ris::hl7_strict(&msg) else {
        return;
    };
    assert_eq!(verdict, "valid", "{msg}");
    let obr4 = msg
        .split('\r')
        .find(|s| s.starts_with("OBR"))
        .and_then(|s| s.split('|').nth(4))
        .unwrap()
        .to_string();
    let alternate_text = obr4.split('^').nth(4).unwrap();
    assert!(alternate_text.chars().count() <= 199, "{alternate_text}");
    assert!(obr4.chars().count() <= 250, "{obr4}");
    let kept = duli::deliver::hl7::message::unescape(alternate_text);
    assert!(kept.len() > 150 && description.starts_with(&kept), "{kept}");
    assert_eq!(field(&msg, "PID", 3), "PID00003");
}

/// An ORU with every finding of the 18-label research model (standard SNOMED CT and DCM
/// concepts, 4 local codes) is valid for a strict parser, and codes each finding in OBX-3
/// as its manifest does.
#[test]
fn an_oru_of_every_research_model_label_is_strict_valid() {
    let mut r = report(4);
    r.findings = common::delivery::research_model_findings();
    let msg = message_of(&r);
    let Some(verdict) = common::ris::hl7_strict(&msg) else {
        return;
    };
    assert_eq!(verdict, "valid", "{msg}");
    let ids: Vec<String> = msg
        .split('\r')
        .filter(|s| s.starts_with("OBX"))
        .filter_map(|s| s.split('|').nth(3))
        .map(str::to_string)
        .collect();
    assert!(
        ids.contains(&"112121^Infiltrate^DCM^INFILTRATION^Infiltration^99DULI".to_string()),
        "{ids:?}"
    );
    assert!(
        ids.contains(&"PLEURAL_THICK^Pleural thickening^99DULI".to_string()),
        "{ids:?}"
    );
}

/// A Patient ID with its issuer (PID-3 CX.4) is strictly valid.
#[test]
fn a_patient_id_with_its_issuer_is_strict_valid() {
    let mut r = report(4);
    r.study.issuer_of_patient_id = "HOSP_A".into();
    let msg = message_of(&r);
    assert!(msg.contains("^^^HOSP_A|"), "{msg}");
    let Some(verdict) = common::ris::hl7_strict(&msg) else {
        return;
    };
    assert_eq!(verdict, "valid", "{msg}");
}

/// The withdrawal of a result reported for a study's former patient (every observation
/// `W`, the order `C`) is a strictly valid ORU^R01 too.
#[test]
fn a_withdrawal_is_strict_valid() {
    let r = report(4);
    let secret = SiteSecret::from_bytes(&[1u8; 32]);
    let entries = plan().withdrawal_entries(&r, &secret);
    let msg = match &entries[0].payload {
        duli::store::outbox::Payload::Hl7 { message } => message.clone(),
        other => panic!("{other:?}"),
    };
    assert!(msg.contains("|W|"), "{msg}");
    let Some(verdict) = common::ris::hl7_strict(&msg) else {
        return;
    };
    assert_eq!(verdict, "valid", "{msg}");
}

/// A study without a Patient ID gets no message the RIS cannot file (PID-3 is required):
/// its entry is refused at once, dead-lettered with the reason, and the next one is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_without_a_patient_id_is_refused_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let script: Script = Arc::new(|_: &str, _| Answer::Ack(AckCode::AA));
    let (seen, _l) = start_listener(port, script, None).await;
    let (_store, ob) = outbox(dir.path());
    let secret = SiteSecret::from_bytes(&[1u8; 32]);
    let mut anonymous = report(0);
    anonymous.study.patient_id = "  ".into();
    ob.enqueue(&plan().report_entries(&anonymous, &secret))
        .unwrap();
    enqueue_reports(&ob, 1..2);
    let (stop, handle) = spawn_worker(&ob, port, 5);
    assert!(drained(&ob, &Destination::Hl7, Duration::from_secs(20)).await);
    stop.send(true).unwrap();
    handle.await.unwrap();
    let list = ob.list(None).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].report_id, "rep-0000");
    assert_eq!(list[0].state, EntryState::Dead);
    let reason = list[0].last_error.clone().unwrap_or_default();
    assert!(
        reason.contains("no Patient ID (0010,0020)") && reason.contains("RIS"),
        "{reason}"
    );
    // Only the other report reached the RIS.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(ob.status_of("rep-0001").unwrap()[0].state, "delivered");
    assert_received_strict_valid();
}

/// A RIS that cuts MSA-2 to the 20 characters of HL7 v2.5.1 still acknowledges our
/// messages: every control id fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ris_that_cuts_msa2_to_20_characters_acknowledges_every_message() {
    let seen = deliver_all(Arc::new(|_: &str, _| Answer::AckCut), |ob| {
        // Report ids as the daemon makes them (32 hex digits).
        let secret = SiteSecret::from_bytes(&[1u8; 32]);
        for i in 0..3 {
            let mut r = report(i);
            r.report_id = duli::result::report_id(&r.study.study_instance_uid, 1);
            ob.enqueue(&plan().report_entries(&r, &secret)).unwrap();
        }
    })
    .await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|id| id.chars().count() <= 20), "{seen:?}");
    assert_received_strict_valid();
}

/// Runs a worker against a listener answering per `script` until the outbox that
/// `enqueue` filled is empty (every message acknowledged); the control ids the listener
/// received, in order.
async fn deliver_all(script: Script, enqueue: impl FnOnce(&Outbox)) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (seen, _l) = start_listener(port, script, None).await;
    let (_store, ob) = outbox(dir.path());
    enqueue(&ob);
    let (stop, handle) = spawn_worker(&ob, port, 3);
    assert!(drained(&ob, &Destination::Hl7, Duration::from_secs(20)).await);
    stop.send(true).unwrap();
    handle.await.unwrap();
    assert!(ob.list(None).unwrap().is_empty());
    let seen = seen.lock().unwrap().clone();
    seen
}

/// A RIS that acknowledges every message twice: the repeat is passed over, not taken for
/// the answer to the next message, so every message goes out once and none is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ris_that_acknowledges_twice_gets_each_message_once() {
    let seen = deliver_all(Arc::new(|_: &str, _| Answer::AckTwice), |ob| {
        enqueue_reports(ob, 0..4)
    })
    .await;
    assert_eq!(seen.len(), 4, "every message once: {seen:?}");
    let distinct: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), 4, "{seen:?}");
    assert_received_strict_valid();
}

/// A RIS that floods each ACK a hundred times: the repeats are passed over only so far
/// (then the connection is made again), and every message still goes out, each at most
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ris_that_floods_repeated_acks_is_reconnected_and_loses_nothing() {
    let seen = deliver_all(Arc::new(|_: &str, _| Answer::AckFlood), |ob| {
        enqueue_reports(ob, 0..3)
    })
    .await;
    let distinct: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), 3, "{seen:?}");
    // The first message's own ACK comes first; each later one meets the flood of its
    // predecessor's ACKs, gives that connection up and goes again on a new one.
    assert_eq!(seen.len(), 5, "{seen:?}");
    for id in &distinct {
        assert!(seen.iter().filter(|s| s == id).count() <= 2, "{seen:?}");
    }
}

/// The first of three messages answered with `first` every time, the others with `AA`,
/// `[hl7] max_rejections = 3`: the outbox left once the queue drained, and every receipt.
async fn first_answered_with(first: Answer) -> (Vec<duli::store::outbox::Entry>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let first_id: Arc<Mutex<Option<String>>> = Arc::default();
    let script: Script = Arc::new(move |id: &str, _| {
        let mut first_id = first_id.lock().unwrap();
        if first_id.get_or_insert_with(|| id.to_string()) == id {
            first.clone()
        } else {
            Answer::Ack(AckCode::AA)
        }
    });
    let (seen, _l) = start_listener(port, script, None).await;
    let (_store, ob) = outbox(dir.path());
    enqueue_reports(&ob, 0..3);
    let (tx, rx) = watch::channel(false);
    let mut t = Hl7Target::from_config(&Hl7Config {
        enabled: true,
        port,
        max_rejections: 3,
        ..Default::default()
    })
    .unwrap();
    t.connect_timeout = Duration::from_secs(2);
    t.ack_timeout = Duration::from_secs(2);
    let handle = worker::spawn(
        ob.clone(),
        Destination::Hl7,
        Hl7Channel::new(t),
        fast_options(3),
        rx,
    );
    assert!(drained(&ob, &Destination::Hl7, Duration::from_secs(20)).await);
    tx.send(true).unwrap();
    handle.await.unwrap();
    let list = ob.list(None).unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_received_strict_valid();
    (list, seen)
}

/// A RIS that keeps acknowledging another control id, or keeps answering with something
/// that is no acknowledgement (not MLLP): after `max_rejections` such answers in a row the
/// message is dead-lettered with the reason, and the queue moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_are_not_the_messages_ack_are_dead_lettered_after_max_rejections() {
    for (answer, reason_starts) in [
        (
            Answer::AckFor("SOMEONE-ELSE"),
            "the RIS acknowledges another control ID",
        ),
        (Answer::Garbage, duli::deliver::hl7::client::UNREADABLE_ACKS),
    ] {
        let (list, seen) = first_answered_with(answer.clone()).await;
        assert_eq!(list.len(), 1, "{answer:?}: {list:?}");
        assert_eq!(list[0].report_id, "rep-0000");
        assert_eq!(list[0].state, EntryState::Dead);
        let reason = list[0].last_error.clone().unwrap_or_default();
        assert!(reason.starts_with(reason_starts), "{answer:?}: {reason}");
        assert_eq!(
            seen.iter().filter(|s| **s == seen[0]).count(),
            3,
            "{answer:?}: {seen:?}"
        );
        assert_eq!(seen.len(), 5, "{answer:?}: {seen:?}");
    }
}

/// A RIS that answers in ISO 8859-1 (MSH-18 `8859/1`, accented text in MSH-4 and MSA-3,
/// as European sites do): its ACK is understood, the message delivered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_in_iso_8859_1_delivers_the_message() {
    let (list, seen) = first_answered_with(Answer::AckLatin1).await;
    assert!(list.is_empty(), "{list:?}");
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// What a RIS that drops some messages was sent: every receipt's control id, the ones it
/// acknowledged (in order), and the outbox left behind.
struct Dropping {
    seen: Vec<String>,
    acked: Vec<String>,
    ob: Arc<Outbox>,
    _store: duli::store::Store,
    _dir: tempfile::TempDir,
}

/// Queues reports `reports` for a RIS that closes the connection without answering each
/// message `drops` says so of (called with its control id), and acknowledges the others;
/// runs a worker until nothing is left to send.
async fn drain_dropping(
    drops: impl Fn(&str) -> bool + Send + Sync + 'static,
    reports: std::ops::Range<usize>,
) -> Dropping {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let acked2 = acked.clone();
    let script: Script = Arc::new(move |id: &str, _| {
        if drops(id) {
            Answer::Drop
        } else {
            acked2.lock().unwrap().push(id.to_string());
            Answer::Ack(AckCode::AA)
        }
    });
    let (seen, _l) = start_listener(port, script, None).await;
    let (store, ob) = outbox(dir.path());
    enqueue_reports(&ob, reports);
    let (stop, handle) = spawn_worker(&ob, port, 3);
    assert!(drained(&ob, &Destination::Hl7, Duration::from_secs(60)).await);
    stop.send(true).unwrap();
    handle.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    Dropping {
        seen,
        acked,
        ob,
        _store: store,
        _dir: dir,
    }
}

/// A RIS whose parser drops the connection on one particular message, and takes every
/// other: after the drops in a row the worker probes with the next report, which the RIS
/// acknowledges, and the message dropped once more is dead-lettered with the reason; the
/// reports behind it are delivered, in their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_ris_drops_the_connection_on_is_dead_lettered_once_the_next_is_taken() {
    let poison = cid("rep-0000");
    let d = drain_dropping(move |id| id == poison, 0..4).await;
    let list = d.ob.list(None).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        (list[0].report_id.as_str(), list[0].state),
        ("rep-0000", EntryState::Dead)
    );
    let reason = list[0].last_error.clone().unwrap_or_default();
    assert!(
        reason.contains("connection closed by the RIS")
            && reason.contains("4 times in a row")
            && reason.contains("duli outbox retry"),
        "{reason}"
    );
    // Three drops, the probe (rep-0001), the head once more: dead. That last attempt
    // goes on the probe's kept connection, whose close may be an idle connection's, so
    // it is sent once more on a new one: five receipts.
    let seen = &d.seen;
    assert_eq!(
        seen.iter().filter(|s| **s == cid("rep-0000")).count(),
        5,
        "{seen:?}"
    );
    assert_eq!(seen[3], cid("rep-0001"), "{seen:?}");
    assert_eq!(
        d.acked,
        vec![cid("rep-0001"), cid("rep-0002"), cid("rep-0003")]
    );
    // Re-queued, it is tried again (and dropped again) rather than lost.
    assert_eq!(
        d.ob.retry(&duli::store::outbox::RetrySelector::All)
            .unwrap(),
        1
    );
    assert_received_strict_valid();
}

/// A RIS that drops the connection on every message for a while (its interface engine
/// failing after accepting) is at fault, not a message: the probe is dropped too, nothing
/// is dead-lettered, and once the RIS recovers every report is delivered in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ris_that_drops_every_message_for_a_while_dead_letters_nothing() {
    let received = std::sync::atomic::AtomicUsize::new(0);
    // Ten drops: three of the head, the probe, three more, the probe, two more.
    let d = drain_dropping(
        move |_| received.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 10,
        0..3,
    )
    .await;
    assert!(d.ob.list(None).unwrap().is_empty(), "nothing dead-lettered");
    assert_eq!(
        d.acked,
        vec![cid("rep-0000"), cid("rep-0001"), cid("rep-0002")]
    );
    let seen = &d.seen;
    assert_eq!(
        seen.iter().filter(|s| **s == cid("rep-0001")).count(),
        3,
        "probed twice, then delivered: {seen:?}"
    );
}

/// A RIS that keeps the connection and never answers one message: the attempt ends at the
/// ACK timeout as dropped (sent in full, not answered), which the worker counts towards its
/// probe, not as a RIS that could not be reached; a closed port is only failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_ris_never_answers_is_dropped_and_a_closed_port_failed() {
    use duli::deliver::{Channel, Delivery};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (seen, _l) = start_listener(port, Arc::new(|_: &str, _| Answer::Hang), None).await;
    let (_store, ob) = outbox(dir.path());
    enqueue_reports(&ob, 0..1);
    let entry = ob.head(&Destination::Hl7).unwrap().unwrap();
    match Hl7Channel::new(target(port)).deliver(&entry).await {
        Delivery::Dropped(why) => assert!(why.contains("no ACK within the timeout"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
    let closed = Hl7Channel::new(target(free_port())).deliver(&entry).await;
    assert!(matches!(closed, Delivery::Failed(_)), "{closed:?}");
}
