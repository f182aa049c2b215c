//! The delivery tests' part of the harness: real peers (mosquitto with persistent
//! sessions, `mosquitto_sub` as the cloud, the Python `hl7` package) and outbox fixtures.
//! The repository root, ports, the test PKI ([`TestPki`]) and the broker
//! ([`Mosquitto`]) come from the common harness (`free_port` hands out each port once per
//! test binary).

// Re-exported for the delivery tests (`use common::delivery::*`); unused by the others.
#[allow(unused_imports)]
pub use super::{free_port, python_with, repo_root, TestPki};

use super::{require_tool, Mosquitto};

use duli::deliver::worker::WorkerOptions;
use duli::model::StudyRecord;
use duli::report::{Finding, Report};
use duli::store::outbox::{Backoff, Destination, Outbox, OutboxLimits};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Waits until something accepts connections on loopback `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    super::wait_for_port(super::loopback(port), timeout)
}

/// A child process killed on drop.
pub struct Peer {
    /// The process.
    pub child: Child,
}

impl Peer {
    /// Stops the process with SIGTERM and waits for it.
    pub fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines a child writes on stdout, collected by a thread.
#[derive(Clone, Default)]
pub struct Lines(pub Arc<Mutex<Vec<String>>>);

impl Lines {
    /// Starts collecting the child's stdout.
    pub fn collect(child: &mut Child) -> Lines {
        let lines = Lines::default();
        lines.add(child);
        lines
    }

    /// Appends the child's stdout to these lines too.
    pub fn add(&self, child: &mut Child) {
        if let Some(out) = child.stdout.take() {
            let sink = self.0.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines() {
                    match line {
                        Ok(l) => sink.lock().unwrap().push(l),
                        Err(_) => break,
                    }
                }
            });
        }
    }

    /// A copy of the lines so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `pred` holds on the lines, or the timeout.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if pred(&self.snapshot()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        pred(&self.snapshot())
    }
}

/// An outbox on a fresh store in `dir`.
pub fn outbox(dir: &Path) -> (duli::store::Store, Arc<Outbox>) {
    let store = duli::store::Store::open(dir).unwrap();
    let ob = store.outbox(OutboxLimits::default()).unwrap();
    (store, Arc::new(ob))
}

/// Worker options with short backoff, for tests.
pub fn fast_options(max_rejections: u32) -> WorkerOptions {
    WorkerOptions {
        max_rejections,
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(300),
        },
        refusal_backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(300),
        },
        error_pause: Duration::from_millis(50),
        drops_before_probe: 3,
    }
}

/// Waits (async) until the destination's queue is empty of pending entries.
pub async fn drained(ob: &Outbox, dest: &Destination, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ob.head(dest).unwrap().is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A realistic report number `i`.
pub fn report(i: usize) -> Report {
    Report {
        report_id: format!("rep-{i:04}"),
        version: 1,
        study: StudyRecord {
            study_instance_uid: format!("1.2.826.0.1.3680043.8.498.{}", 1000 + i),
            patient_id: format!("PID{i:05}"),
            patient_name: "Conceição^João^Maria^^Jr.".into(),
            patient_birth_date: "19800215".into(),
            patient_sex: "M".into(),
            accession_number: format!("ACC{i}&X"),
            study_date: "20240131".into(),
            study_time: "093015".into(),
            study_description: "Tórax PA|AP".into(),
            modalities: vec!["DX".into()],
            ..Default::default()
        },
        findings: vec![Finding {
            label: "Pneumonia".into(),
            code: "PNEUMONIA".into(),
            probability: (i % 100) as f32 / 100.0,
            threshold: 0.5,
            positive: (i % 100) >= 50,
            standard: Some(duli::result::Concept {
                code: "233604007".into(),
                scheme: "SCT".into(),
                meaning: "Pneumonia".into(),
            }),
        }],
        triage: (i % 100) >= 50,
        model_name: "pneumonia-xception".into(),
        model_version: "1.0.0".into(),
        model_sha256: "cd".repeat(32),
        model_weights_sha256: "ef".repeat(32),
        model_precision: "f32".into(),
        coding_scheme: "99DULI".into(),
        timings_ms: [("infer".to_string(), 27.0)].into_iter().collect(),
        source_sop_instance_uids: vec![format!("1.2.826.0.1.3680043.8.498.{}.1", 1000 + i)],
        not_applicable: None,
        caveat: None,
        created_at: 1_706_693_415 + i as i64,
    }
}

/// Starts mosquitto with its sessions persisted in `dir`: plain on `port`, or with `pki`
/// TLS with client certificates required on `port` (see [`super::MosquittoBuilder`]). `None`
/// (with SKIP) when not installed.
pub fn start_mosquitto(dir: &Path, port: u16, pki: Option<&TestPki>) -> Option<Mosquitto> {
    let broker = Mosquitto::builder().persistence_in(dir);
    match pki {
        None => broker.port(port),
        Some(pki) => broker.tls(pki, true).tls_port(port),
    }
    .start()
}

/// TLS arguments of the mosquitto clients.
pub fn client_tls_args(pki: Option<&TestPki>) -> Vec<String> {
    match pki {
        None => vec![],
        Some(p) => vec![
            "--cafile".into(),
            p.ca_cert.display().to_string(),
            "--cert".into(),
            p.client_cert.display().to_string(),
            "--key".into(),
            p.client_key.display().to_string(),
        ],
    }
}

/// Starts `mosquitto_sub -v` on `duli/#` with a persistent session, and waits until it
/// receives a probe (so it is subscribed). A subscriber that gave up (it exits when its
/// first connection is refused) is started again until the deadline.
pub fn start_subscriber(port: u16, pki: Option<&TestPki>) -> Option<(Peer, Lines)> {
    let sub = require_tool("mosquitto_sub")?;
    let publ = require_tool("mosquitto_pub")?;
    let spawn = || {
        Command::new(&sub)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args([
                "-t",
                "duli/#",
                "-v",
                "-q",
                "1",
                "-c",
                "-i",
                "duli-test-subscriber",
            ])
            .args(client_tls_args(pki))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut peer = Peer { child: spawn() };
    let lines = Lines::collect(&mut peer.child);
    let mut exits = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = peer.child.try_wait() {
            exits.push(status.to_string());
            peer = Peer { child: spawn() };
            lines.add(&mut peer.child);
        }
        let _ = Command::new(&publ)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", "duli/probe", "-m", "probe", "-q", "1"])
            .args(client_tls_args(pki))
            .status();
        if lines.wait_until(Duration::from_millis(300), |l| {
            l.iter().any(|x| x == "duli/probe probe")
        }) {
            return Some((peer, lines));
        }
    }
    panic!("mosquitto_sub never received the probe (earlier subscribers exited: {exits:?})");
}

/// The findings of the 18-label research model, as its manifest codes them (standard
/// concepts where it maps one, local codes otherwise).
pub fn research_model_findings() -> Vec<Finding> {
    let path = super::repo_root().join("models/densenet121-res224-all/model.toml");
    let manifest: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let labels = manifest["labels"].as_array().unwrap();
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let text = |t: &toml::Value, k: &str| t[k].as_str().unwrap().to_string();
            Finding {
                label: text(l, "name"),
                code: text(l, "code"),
                probability: i as f32 / labels.len() as f32,
                threshold: 0.5,
                positive: i as f32 / labels.len() as f32 >= 0.5,
                standard: l.get("standard").map(|c| duli::result::Concept {
                    code: text(c, "code"),
                    scheme: text(c, "scheme"),
                    meaning: text(c, "meaning"),
                }),
            }
        })
        .collect()
}
