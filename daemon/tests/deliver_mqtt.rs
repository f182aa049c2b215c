//! MQTT delivery against a real mosquitto started by the test on a loopback port (plain,
//! and TLS with client certificates from the harness's `TestPki`); `mosquitto_sub` is the
//! cloud.

mod common;

use common::delivery::*;
use duli::config::Config;
use duli::deliver::mqtt::client::{MqttChannel, MqttSettings};
use duli::deliver::plan::DeliveryPlan;
use duli::deliver::worker;
use duli::report::Feedback;
use duli::site_secret::SiteSecret;
use duli::store::outbox::{Destination, Outbox};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const SITE: &str = "hospital-a";
const DEVICE: &str = "edge-01";

fn config(port: u16, pki: Option<&TestPki>) -> Config {
    let mut cfg = Config::default();
    cfg.device.site_id = SITE.into();
    cfg.device.device_id = DEVICE.into();
    cfg.mqtt.enabled = true;
    cfg.mqtt.port = port;
    cfg.mqtt.tls = pki.is_some();
    if let Some(p) = pki {
        cfg.mqtt.ca = Some(p.ca_cert.clone());
        cfg.mqtt.cert = Some(p.client_cert.clone());
        cfg.mqtt.key = Some(p.client_key.clone());
    }
    cfg
}

fn settings(cfg: &Config) -> MqttSettings {
    let mut s = MqttSettings::from_config(cfg).unwrap();
    s.connect_timeout = Duration::from_secs(2);
    s.ack_timeout = Duration::from_secs(3);
    s.reconnect_min = Duration::from_millis(100);
    s.reconnect_max = Duration::from_millis(500);
    s
}

fn secret() -> SiteSecret {
    SiteSecret::from_bytes(&[5u8; 32])
}

/// The report id the cloud sees for the local report id `rid`.
fn cloud_id(rid: &str) -> String {
    secret().pseudonym("report", rid)
}

fn enqueue_reports(ob: &Outbox, cfg: &Config, range: std::ops::Range<usize>) {
    let plan = DeliveryPlan::from_config(cfg);
    for i in range {
        ob.enqueue(&plan.report_entries(&report(i), &secret()))
            .unwrap();
    }
}

fn topic(kind: &str) -> String {
    format!("duli/{SITE}/{DEVICE}/{kind}")
}

/// Report ids of the report messages the subscriber saw, in arrival order.
fn report_ids(lines: &[String]) -> Vec<String> {
    let prefix = format!("{} ", topic("reports"));
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|body| {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            v["report_id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The first feedback message the subscriber saw.
fn first_feedback(lines: &[String]) -> serde_json::Value {
    let prefix = format!("{} ", topic("feedback"));
    let body = lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .expect("a feedback message");
    serde_json::from_str(body).unwrap()
}

/// Validates every report payload against docs/mqtt-report.schema.json with the Python
/// `jsonschema` package (Draft 2020-12, formats checked); a hand check of the required
/// keys when it is not available.
fn validate_reports(lines: &[String], dir: &Path) {
    let prefix = format!("{} ", topic("reports"));
    let bodies: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    assert!(!bodies.is_empty());
    let schema_path = repo_root().join("docs/mqtt-report.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).unwrap()).unwrap();
    for body in &bodies {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        for key in schema["required"].as_array().unwrap() {
            assert!(
                v.get(key.as_str().unwrap()).is_some(),
                "{key} missing in {body}"
            );
        }
        for leak in [
            "Conceição",
            "19800215",
            "PID0",
            "ACC",
            "1.2.826.0.1.3680043",
        ] {
            assert!(!body.contains(leak), "{leak} leaked: {body}");
        }
    }
    // Without jsonschema (python_with says so) the required keys above were still checked.
    let Some(python) = python_with(&["jsonschema"]) else {
        return;
    };
    let file = dir.join("payloads.jsonl");
    std::fs::write(&file, bodies.join("\n")).unwrap();
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import json,sys,jsonschema\n\
             schema=json.load(open(sys.argv[1]))\n\
             jsonschema.Draft202012Validator.check_schema(schema)\n\
             v=jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)\n\
             n=0\n\
             for line in open(sys.argv[2]):\n    v.validate(json.loads(line)); n+=1\n\
             bad={'report_id':'x','schema':'duli.report.v1'}\n\
             assert not v.is_valid(bad)\n\
             print(n)",
        ])
        .arg(&schema_path)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "schema validation failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        bodies.len().to_string()
    );
}

/// A plain broker on a free loopback port, a subscriber to every topic, the configuration
/// that points at it and an outbox in `dir/data`; `None` (after the SKIP line) without
/// Mosquitto. Everything lives as long as the value.
struct PlainBroker {
    dir: tempfile::TempDir,
    _broker: common::mosquitto::Mosquitto,
    _sub: Peer,
    lines: Lines,
    cfg: Config,
    _store: duli::store::Store,
    ob: Arc<Outbox>,
}

impl PlainBroker {
    fn start() -> Option<PlainBroker> {
        Self::start_with(&[])
    }

    /// A broker with `lines` added to its configuration.
    fn start_with(lines: &[&str]) -> Option<PlainBroker> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let broker = lines
            .iter()
            .fold(
                common::mosquitto::Mosquitto::builder()
                    .persistence_in(dir.path())
                    .port(port),
                |b, l| b.line(l),
            )
            .start()?;
        let (sub, lines) = start_subscriber(port, None)?;
        let cfg = config(port, None);
        let (store, ob) = outbox(&dir.path().join("data"));
        Some(PlainBroker {
            dir,
            _broker: broker,
            _sub: sub,
            lines,
            cfg,
            _store: store,
            ob,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_and_feedback_reach_the_broker_valid_and_in_order() {
    let Some(b) = PlainBroker::start() else {
        return;
    };
    let (dir, lines, cfg, ob) = (&b.dir, b.lines.clone(), b.cfg.clone(), b.ob.clone());
    let (stop, rx) = watch::channel(false);
    let (health_tx, health_rx) = watch::channel(String::new());
    let channel = MqttChannel::new(settings(&cfg), Arc::new(secret())).with_health(health_rx);
    let h = worker::spawn(ob.clone(), Destination::Mqtt, channel, fast_options(5), rx);
    // connected while idle: the retained status says online
    assert!(lines.wait_until(Duration::from_secs(10), |l| l
        .contains(&format!("{} online", topic("status")))));
    health_tx
        .send("{\"schema\":\"duli.health.v1\"}".into())
        .unwrap();
    assert!(lines.wait_until(Duration::from_secs(10), |l| l
        .iter()
        .any(|x| x.starts_with(&topic("health")))));

    enqueue_reports(&ob, &cfg, 0..20);
    let plan = DeliveryPlan::from_config(&cfg);
    ob.enqueue(&plan.feedback_entries(
        &Feedback {
            study_uid: report(3).study.study_instance_uid,
            user: "rita".into(),
            agree: false,
            comment: "not on this film".into(),
            finding: Some("PNEUMONIA".into()),
            result_version: 1,
            at_ms: 1_706_700_000_000,
        },
        "rep-0003",
        "radiologist",
        &secret(),
    ))
    .unwrap();
    assert!(drained(&ob, &Destination::Mqtt, Duration::from_secs(30)).await);
    assert!(
        lines.wait_until(Duration::from_secs(10), |l| report_ids(l).len() >= 20
            && l.iter().any(|x| x.starts_with(&topic("feedback"))))
    );
    let expected: Vec<String> = (0..20).map(|i| cloud_id(&format!("rep-{i:04}"))).collect();
    assert_eq!(report_ids(&lines.snapshot()), expected);
    let fb = first_feedback(&lines.snapshot());
    assert_eq!(fb["verdict"], "disagree");
    // Keyed like the report it judges: the cloud links the two, an outsider cannot.
    assert_eq!(fb["report_id"], cloud_id("rep-0003").as_str());
    assert_eq!(fb["study_pseudonym"].as_str().unwrap().len(), 64);
    // Its own keyed id: the same for this verdict on every send, so the cloud drops a
    // resend; another verdict (here a minute later) another id.
    let verdict = Feedback {
        study_uid: report(3).study.study_instance_uid,
        user: "rita".into(),
        agree: false,
        comment: String::new(),
        finding: Some("PNEUMONIA".into()),
        result_version: 1,
        at_ms: 1_706_700_000_000,
    };
    let id = duli::deliver::mqtt::payload::feedback_id(&secret(), &verdict);
    assert_eq!(fb["feedback_id"], id.as_str());
    let later = Feedback {
        at_ms: verdict.at_ms + 60_000,
        ..verdict
    };
    assert_ne!(
        duli::deliver::mqtt::payload::feedback_id(&secret(), &later),
        id
    );
    // The comment and the user name stay on the box; the time is rounded to the hour.
    let text = fb.to_string();
    assert!(
        !text.contains("rita") && !text.contains("not on this film"),
        "{text}"
    );
    assert_eq!(fb["created_at"], "2024-01-31T11:00:00Z", "{text}");
    validate_reports(&lines.snapshot(), dir.path());
    assert_eq!(ob.fill().entries, 0);

    // a clean stop publishes the retained offline status
    stop.send(true).unwrap();
    h.await.unwrap();
    assert!(lines.wait_until(Duration::from_secs(10), |l| l
        .last()
        .is_some_and(|x| *x == format!("{} offline", topic("status")))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_the_last_will() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pki) = TestPki::generate(dir.path(), "mqtt") else {
        return;
    };
    let port = free_port();
    let Some(_broker) = start_mosquitto(dir.path(), port, Some(&pki)) else {
        return;
    };
    let Some((_sub, lines)) = start_subscriber(port, Some(&pki)) else {
        return;
    };
    let cfg = config(port, Some(&pki));
    let (_store, ob) = outbox(&dir.path().join("data"));
    enqueue_reports(&ob, &cfg, 0..5);

    // without a client certificate the broker refuses: retried, nothing published
    let mut no_cert = cfg.clone();
    no_cert.mqtt.cert = None;
    no_cert.mqtt.key = None;
    let (stop, rx) = watch::channel(false);
    let h = worker::spawn(
        ob.clone(),
        Destination::Mqtt,
        MqttChannel::new(settings(&no_cert), Arc::new(secret())),
        fast_options(5),
        rx,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.send(true).unwrap();
    h.await.unwrap();
    let head = ob.head(&Destination::Mqtt).unwrap().unwrap();
    assert!(head.attempts >= 1 && head.rejections == 0, "{head:?}");
    assert!(report_ids(&lines.snapshot()).is_empty());

    let (_stop, rx) = watch::channel(false);
    let h = worker::spawn(
        ob.clone(),
        Destination::Mqtt,
        MqttChannel::new(settings(&cfg), Arc::new(secret())),
        fast_options(5),
        rx,
    );
    assert!(drained(&ob, &Destination::Mqtt, Duration::from_secs(30)).await);
    assert!(lines.wait_until(Duration::from_secs(10), |l| report_ids(l).len() >= 5));
    let expected: Vec<String> = (0..5).map(|i| cloud_id(&format!("rep-{i:04}"))).collect();
    assert_eq!(report_ids(&lines.snapshot()), expected);
    validate_reports(&lines.snapshot(), dir.path());
    // an unclean end (the task dies, the socket closes): the broker sends the last will
    h.abort();
    let _ = h.await;
    assert!(lines.wait_until(Duration::from_secs(10), |l| l
        .last()
        .is_some_and(|x| *x == format!("{} offline", topic("status")))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_then_recovery_delivers_all_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(broker) = start_mosquitto(dir.path(), port, None) else {
        return;
    };
    let Some((_sub, lines)) = start_subscriber(port, None) else {
        return;
    };
    broker.stop(); // the subscriber's session is persisted
    let cfg = config(port, None);
    let (_store, ob) = outbox(&dir.path().join("data"));
    let (stop, rx) = watch::channel(false);
    let h = worker::spawn(
        ob.clone(),
        Destination::Mqtt,
        MqttChannel::new(settings(&cfg), Arc::new(secret())),
        fast_options(5),
        rx,
    );
    enqueue_reports(&ob, &cfg, 0..50);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let head = ob.head(&Destination::Mqtt).unwrap().unwrap();
    assert_eq!(head.report_id, "rep-0000");
    assert!(head.attempts >= 2, "{head:?}");
    assert_eq!(ob.fill().entries, 50);

    let Some(_broker) = start_mosquitto(dir.path(), port, None) else {
        return;
    };
    assert!(drained(&ob, &Destination::Mqtt, Duration::from_secs(60)).await);
    assert_eq!(ob.fill().entries, 0);
    assert!(lines.wait_until(Duration::from_secs(20), |l| report_ids(l).len() >= 50));
    let ids = report_ids(&lines.snapshot());
    let expected: Vec<String> = (0..50).map(|i| cloud_id(&format!("rep-{i:04}"))).collect();
    assert_eq!(ids, expected);
    stop.send(true).unwrap();
    h.await.unwrap();
}

/// Report ids derive from the study UID: in clear, anyone holding the UID links the cloud's
/// records to the patient. Entries queued by a version that sent them in clear (and a
/// feedback finding never checked against the model's labels) go out the current way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_queued_before_keying_reach_the_broker_keyed() {
    use duli::store::outbox::{Kind, NewEntry, Payload};
    let Some(b) = PlainBroker::start() else {
        return;
    };
    let (lines, cfg, ob) = (b.lines.clone(), b.cfg.clone(), b.ob.clone());
    let r = report(7);
    let rid = duli::result::report_id(&r.study.study_instance_uid, 1);
    let legacy = |kind: Kind, topic_kind: &str, body: String| NewEntry {
        dest: Destination::Mqtt,
        kind,
        report_id: rid.clone(),
        study_instance_uid: String::new(),
        payload: Payload::Mqtt {
            topic: topic(topic_kind),
            body,
            retain: false,
        },
    };
    ob.enqueue(&[
        legacy(
            Kind::Report,
            "reports",
            format!("{{\"schema\":\"duli.report.v1\",\"report_id\":\"{rid}\",\"version\":1}}"),
        ),
        legacy(
            Kind::Feedback,
            "feedback",
            format!(
                "{{\"schema\":\"duli.feedback.v1\",\"report_id\":\"{rid}\",\"verdict\":\"agree\",\"finding\":\"see Mrs Doe in bed 4\"}}"
            ),
        ),
    ])
    .unwrap();
    let (stop, rx) = watch::channel(false);
    let h = worker::spawn(
        ob.clone(),
        Destination::Mqtt,
        MqttChannel::new(settings(&cfg), Arc::new(secret())),
        fast_options(5),
        rx,
    );
    assert!(drained(&ob, &Destination::Mqtt, Duration::from_secs(30)).await);
    assert!(lines.wait_until(Duration::from_secs(10), |l| l
        .iter()
        .any(|x| x.starts_with(&topic("feedback")))));
    let seen = lines.snapshot().join("\n");
    assert!(
        !seen.contains(&rid),
        "a study-derived report id reached the cloud: {seen}"
    );
    assert!(
        !seen.contains("Mrs Doe"),
        "free text reached the cloud: {seen}"
    );
    assert_eq!(report_ids(&lines.snapshot()), vec![cloud_id(&rid)]);
    let fb = first_feedback(&lines.snapshot());
    assert_eq!(fb["report_id"], cloud_id(&rid).as_str());
    assert_eq!(fb["finding"], serde_json::Value::Null);
    stop.send(true).unwrap();
    h.await.unwrap();
}

/// Report `i` of a model with `labels` findings: its report body grows with them.
fn report_with_findings(i: usize, labels: usize) -> duli::report::Report {
    let mut r = report(i);
    let one = r.findings[0].clone();
    r.findings = (0..labels)
        .map(|n| duli::result::Finding {
            label: format!("Finding number {n} of a many-label model"),
            code: format!("FINDING_{n}"),
            ..one.clone()
        })
        .collect();
    r
}

/// Bodies of the report messages the subscriber saw, in arrival order.
fn report_bodies(lines: &[String]) -> Vec<String> {
    let prefix = format!("{} ", topic("reports"));
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

/// A report over rumqttc's default packet limit (10 KiB), here 16 KiB and more, reaches
/// the broker, in order with the reports around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_over_10_kib_reaches_the_broker() {
    let Some(b) = PlainBroker::start() else {
        return;
    };
    let (lines, cfg, ob) = (b.lines.clone(), b.cfg.clone(), b.ob.clone());
    let plan = DeliveryPlan::from_config(&cfg);
    let big = plan.report_entries(&report_with_findings(1, 80), &secret());
    let size = big
        .iter()
        .find_map(|e| match &e.payload {
            duli::store::outbox::Payload::Mqtt { body, .. } => Some(body.len()),
            _ => None,
        })
        .unwrap();
    assert!(size > 16 * 1024, "{size} bytes");
    enqueue_reports(&ob, &cfg, 0..1);
    ob.enqueue(&big).unwrap();
    enqueue_reports(&ob, &cfg, 2..3);
    let (stop, rx) = watch::channel(false);
    let h = worker::spawn(
        ob.clone(),
        Destination::Mqtt,
        MqttChannel::new(settings(&cfg), Arc::new(secret())),
        fast_options(2),
        rx,
    );
    assert!(drained(&ob, &Destination::Mqtt, Duration::from_secs(30)).await);
    assert_eq!(ob.fill().entries, 0, "{:?}", ob.list(None).unwrap());
    assert!(lines.wait_until(Duration::from_secs(10), |l| report_ids(l).len() >= 3));
    let expected: Vec<String> = [0, 1, 2]
        .iter()
        .map(|i| cloud_id(&format!("rep-{i:04}")))
        .collect();
    assert_eq!(report_ids(&lines.snapshot()), expected);
    let bodies = report_bodies(&lines.snapshot());
    let v: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
    assert_eq!(v["findings"].as_array().unwrap().len(), 80);
    assert!(bodies[1].len() > 16 * 1024);
    stop.send(true).unwrap();
    h.await.unwrap();
}

/// Queues report 0, `odd` (as report 1) and reports 2 to 4 on broker `b`, drains the queue
/// through a worker, and checks that every report but the odd one reached the broker, in
/// order; returns the odd one's entry, the only one left.
async fn deliver_around(b: &PlainBroker, odd: &duli::report::Report) -> duli::store::outbox::Entry {
    let (lines, cfg, ob) = (b.lines.clone(), b.cfg.clone(), b.ob.clone());
    let plan = DeliveryPlan::from_config(&cfg);
    enqueue_reports(&ob, &cfg, 0..1);
    ob.enqueue(&plan.report_entries(odd, &secret())).unwrap();
    enqueue_reports(&ob, &cfg, 2..5);
    let (stop, rx) = watch::channel(false);
    let h = worker::spawn(
        ob.clone(),
        Destination::Mqtt,
        MqttChannel::new(settings(&cfg), Arc::new(secret())),
        fast_options(2),
        rx,
    );
    assert!(drained(&ob, &Destination::Mqtt, Duration::from_secs(60)).await);
    let mut left = ob.list(Some(&Destination::Mqtt)).unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].report_id, odd.report_id);
    assert!(lines.wait_until(Duration::from_secs(10), |l| report_ids(l).len() >= 4));
    let expected: Vec<String> = [0, 2, 3, 4]
        .iter()
        .map(|i| cloud_id(&format!("rep-{i:04}")))
        .collect();
    assert_eq!(report_ids(&lines.snapshot()), expected);
    stop.send(true).unwrap();
    h.await.unwrap();
    left.remove(0)
}

/// A message larger than the channel's packet limit can never be sent: it is refused,
/// dead-lettered with the reason after `max_rejections`, and the entries queued after it
/// are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_packet_limit_is_dead_lettered_and_the_rest_delivered() {
    use duli::store::outbox::EntryState;
    const MAX_PACKET_BYTES: usize = 256 * 1024;
    let Some(b) = PlainBroker::start() else {
        return;
    };
    let mut huge = report(1);
    huge.caveat = Some("x".repeat(MAX_PACKET_BYTES));
    let left = deliver_around(&b, &huge).await;
    assert_eq!((left.state, left.rejections), (EntryState::Dead, 2));
    let reason = left.last_error.clone().unwrap_or_default();
    assert!(
        reason.contains("exceeds the MQTT packet limit of 262144 bytes"),
        "{reason}"
    );
}

/// A broker that disconnects a client on a packet over its `max_packet_size` (mosquitto
/// does, whatever the protocol version): the report it cannot take is dropped each time
/// it is published, the next report is taken, and so the big one is dead-lettered with the
/// reason while every other report reaches the broker in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_the_broker_disconnects_on_is_dead_lettered_and_the_rest_delivered() {
    use duli::store::outbox::EntryState;
    let Some(b) = PlainBroker::start_with(&["max_packet_size 12000"]) else {
        return;
    };
    let left = deliver_around(&b, &report_with_findings(1, 80)).await;
    assert_eq!((left.state, left.rejections), (EntryState::Dead, 0));
    let reason = left.last_error.clone().unwrap_or_default();
    assert!(
        reason.starts_with("published, then") && reason.contains("cannot take this message"),
        "{reason}"
    );
}

/// Reads one MQTT packet: its first byte and its body (None when the peer went away).
fn read_packet(conn: &mut std::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut first = [0u8; 1];
    conn.read_exact(&mut first).ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).ok()?;
        len |= usize::from(b[0] & 0x7f) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 || shift > 21 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()?;
    Some((first[0], body))
}

/// A broker that floods the client with unsolicited PUBLISH packets (8 KiB each) while it
/// acknowledges the client's own: the report is delivered, and once nothing reads the
/// channel's events (between deliveries) the flood stalls in the socket buffers, because
/// the event queue is bounded, instead of filling the daemon's memory. No broker floods on
/// demand, so this one is a few lines of Rust on a loopback socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_flooding_unsolicited_publishes_stalls_instead_of_filling_memory() {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let written = Arc::new(AtomicU64::new(0));
    let flooded = written.clone();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let Some((0x10, _)) = read_packet(&mut conn) else {
            return;
        };
        conn.write_all(&[0x20, 0x02, 0x00, 0x00]).unwrap();
        // One writer: the client's PUBACKs and PINGRESPs between flood packets.
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut reader = conn.try_clone().unwrap();
        std::thread::spawn(move || {
            while let Some((kind, body)) = read_packet(&mut reader) {
                let reply = match kind >> 4 {
                    3 if kind & 0x06 == 0x02 => {
                        let topic = usize::from(u16::from_be_bytes([body[0], body[1]]));
                        vec![0x40, 0x02, body[2 + topic], body[3 + topic]]
                    }
                    12 => vec![0xD0, 0x00],
                    _ => continue,
                };
                if tx.send(reply).is_err() {
                    return;
                }
            }
        });
        let mut flood = vec![0x30, 0x83, 0x40, 0x00, 0x01, b'f'];
        flood.resize(flood.len() + 8192, b'x');
        loop {
            while let Ok(reply) = rx.try_recv() {
                if conn.write_all(&reply).is_err() {
                    return;
                }
            }
            if conn.write_all(&flood).is_err() {
                return;
            }
            flooded.fetch_add(flood.len() as u64, Ordering::Relaxed);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(port, None);
    let (_store, ob) = outbox(dir.path());
    enqueue_reports(&ob, &cfg, 0..1);
    let entry = ob.head(&Destination::Mqtt).unwrap().unwrap();
    let mut channel = MqttChannel::new(settings(&cfg), Arc::new(secret()));
    let delivered = duli::deliver::Channel::deliver(&mut channel, &entry).await;
    assert_eq!(delivered, duli::deliver::Delivery::Acked);
    assert!(
        written.load(Ordering::Relaxed) > 0,
        "the flood never started"
    );
    // Nothing reads the channel's events now: the flood must stall within the socket
    // buffers and the 64 queued events (an unbounded queue takes hundreds of MB here).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = written.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = written.load(Ordering::Relaxed) - before;
    assert!(grown < 32 << 20, "{grown} more bytes taken in 3 s");
    drop(channel);
}
