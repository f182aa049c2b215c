//! Supervision and the watchdog on the running daemon: an odd ACK from the RIS does not
//! stop HL7 delivery, and a stage that dies withholds the sd_notify watchdog until the
//! supervisor has restarted it.

mod common;
#[path = "common/raw_peer.rs"]
mod raw_peer;

use common::ris;
use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The ACK that stopped all HL7 delivery: a two-byte character between the hex digits
/// of a `\X..\` escape in MSA-3.
fn odd_ack(id: &str) -> String {
    format!("MSH|^~\\&|RIS|HOSP|DULI|SITE|20261203||ACK^R01^ACK|A1|P|2.5.1\rMSA|AE|{id}|Paciente \\X0é0\\ não encontrado\r")
}

#[test]
fn an_odd_ack_neither_stops_hl7_delivery_nor_the_daemon() {
    let Some(file) = common::inference::chest_dx("PNEUMONIA_01.dcm") else {
        return;
    };
    if !common::inference::inference_available() {
        return;
    }
    let answer = |n: usize, id: &str| if n == 1 { odd_ack(id) } else { ris::aa(id) };
    let (port, seen) = ris::scripted_ris(Arc::new(answer), Duration::ZERO);
    let d = Daemon::builder()
        .with_inference()
        .config("hl7", "enabled", "true")
        .config("hl7", "port", &port.to_string())
        .config("hl7", "tls", "false")
        .start();
    d.storescu("MODALITY", &[], &[file])
        .unwrap()
        .assert_success("storescu");
    // The report is refused once (AE with the odd text), then sent again and accepted.
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "report not sent again; log:\n{}", d.log());
    assert_eq!(seen[0], seen[1], "the same report both times");
    ris::wait_drained(&d, Duration::from_secs(20));
    let log = d.log();
    // Refused by its code; the RIS's words (which may name the patient) stay out of the
    // journal.
    assert!(log.contains("refused: AE ("), "{log}");
    assert!(!log.contains("encontrado"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("ended unexpectedly"), "{log}");
    d.echoscu("MODALITY", &[])
        .unwrap()
        .assert_success("echo after the odd ACK");
}

/// The times at which `WATCHDOG=1` arrived on `sock` during `window`.
fn watchdog_pings(sock: &std::os::unix::net::UnixDatagram, window: Duration) -> Vec<Duration> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut pings = Vec::new();
    let mut buf = [0u8; 256];
    while started.elapsed() < window {
        if let Ok(n) = sock.recv(&mut buf) {
            if &buf[..n] == b"WATCHDOG=1" {
                pings.push(started.elapsed());
            }
        }
    }
    pings
}

/// A daemon with a notify socket of the test's own, `WATCHDOG_USEC` and the debug fault
/// variable `fault` = `stage`, or `None` (with a SKIP line) in a release build.
fn faulty_daemon(
    dir: &std::path::Path,
    watchdog_usec: &str,
    fault: &str,
    stage: &str,
) -> Option<(Daemon, std::os::unix::net::UnixDatagram)> {
    if !cfg!(debug_assertions) {
        skip_here("stage fault injection exists only in debug builds");
        return None;
    }
    let sock_path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    let d = Daemon::builder()
        .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
        .env("WATCHDOG_USEC", watchdog_usec)
        .env(fault, stage)
        .start();
    Some((d, sock))
}

/// The silences longer than `longer_than` between `pings`: (start, length).
fn silences(pings: &[Duration], longer_than: Duration) -> Vec<(Duration, Duration)> {
    pings
        .windows(2)
        .map(|w| (w[0], w[1] - w[0]))
        .filter(|(_, gap)| *gap > longer_than)
        .collect()
}

#[test]
fn the_watchdog_starves_while_a_stage_is_down_and_is_fed_after_its_restart() {
    // WATCHDOG_USEC=200 ms: a ping every 100 ms while all is well. The tracker's first
    // two incarnations panic 2 s after they start: down for 1 s, up 2 s, down 2 s, up
    // from about 7 s after the start; the window leaves room for a slow start.
    const WINDOW: Duration = Duration::from_secs(12);
    let dir = temp_dir("supervise-watchdog");
    let Some((d, sock)) =
        faulty_daemon(dir.path(), "200000", "DULI_DEBUG_PANIC_STAGE", "assemble:2")
    else {
        return;
    };
    // /healthz, polled meanwhile, names the stage while it is down
    let console = d.console_addr();
    let health = std::thread::spawn(move || {
        let started = Instant::now();
        let mut answers = Vec::new();
        while started.elapsed() < WINDOW {
            if let Ok(r) = https_get(console, "/healthz") {
                answers.push((r.status, String::from_utf8_lossy(&r.body).to_string()));
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        answers
    });
    let pings = watchdog_pings(&sock, WINDOW);
    let health = health.join().unwrap();
    assert!(
        health
            .iter()
            .any(|(status, body)| *status == 503 && body.contains(r#""stage":"assemble""#)),
        "{health:?}"
    );
    // What is wrong, never why: the panic's text stays in the journal.
    assert!(
        health.iter().all(|(_, body)| !body.contains("panic")),
        "{health:?}"
    );
    assert_eq!(health.last().map(|h| h.0), Some(200), "{health:?}");
    // A ping is due every 100 ms; a death silences the watchdog for 1 s, then 2 s. 800 ms
    // tells those apart from a scheduler stall of a loaded 2-core machine.
    let gaps = silences(&pings, Duration::from_millis(800));
    eprintln!("watchdog silences (start, length) after a stage died twice: {gaps:?}");
    let log = d.log();
    assert!(
        gaps.len() == 2,
        "expected two silences (one per death), got {gaps:?} in {} pings; log:\n{log}",
        pings.len()
    );
    // the second silence covers the doubled pause (2 s)
    assert!(gaps[0].1 >= Duration::from_millis(900), "{gaps:?}");
    assert!(gaps[1].1 >= Duration::from_millis(1600), "{gaps:?}");
    // fed again after the restart, steadily
    let last = *pings.last().unwrap();
    let after: Vec<&Duration> = pings
        .iter()
        .filter(|t| **t > gaps[1].0 + gaps[1].1)
        .collect();
    assert!(after.len() >= 5, "{pings:?}");
    assert!(
        WINDOW.saturating_sub(last) < Duration::from_millis(800),
        "{pings:?}"
    );
    for want in [
        "stage assemble ended unexpectedly (panicked: fault injected into stage assemble)",
        "restarting in 1.0 s",
        "restarting in 2.0 s",
        "watchdog withheld: stage assemble is not running",
        "watchdog fed again",
    ] {
        assert!(log.contains(want), "{want:?} not in log:\n{log}");
    }
    // the restarted tracker took over the queue: a study sent now completes
    let Some(file) = common::inference::chest_dx("NORMAL_01.dcm") else {
        return;
    };
    d.storescu("MODALITY", &[], &[file])
        .unwrap()
        .assert_success("storescu after the restart");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run(&mut d.command(&["studies"]), Duration::from_secs(30));
        out.assert_success("duli studies");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let state = v[0]["state"].as_str().unwrap_or("").to_string();
        if !state.is_empty() && state != "receiving" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "study never completed: {v}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_watchdog_starves_while_a_stage_is_stuck_and_is_fed_when_it_carries_on() {
    // The tracker blocks its thread 2 s after it starts, for 14 s: stale 10 s later, so the
    // pings stop for about 4 s, and it is never restarted (it did not end).
    let dir = temp_dir("supervise-stall");
    let Some((d, sock)) = faulty_daemon(dir.path(), "400000", "DULI_DEBUG_STALL_STAGE", "assemble")
    else {
        return;
    };
    let pings = watchdog_pings(&sock, Duration::from_secs(20));
    // The stall silences the pings for about 4 s; a machine under load may delay a ping
    // by a second or so, which is not what this test looks for.
    let gaps = silences(&pings, Duration::from_millis(2000));
    eprintln!("watchdog silences (start, length) while a stage was stuck: {gaps:?}");
    let log = d.log();
    assert_eq!(gaps.len(), 1, "{gaps:?} in {pings:?}; log:\n{log}");
    assert!(gaps[0].1 >= Duration::from_secs(3), "{gaps:?}");
    assert!(
        gaps[0].0 >= Duration::from_secs(9),
        "stale too early: {gaps:?}"
    );
    assert!(
        pings.iter().filter(|t| **t > gaps[0].0 + gaps[0].1).count() >= 5,
        "{pings:?}"
    );
    for want in [
        "watchdog withheld: stage assemble has not reported for",
        "watchdog fed again",
    ] {
        assert!(log.contains(want), "{want:?} not in log:\n{log}");
    }
    assert!(!log.contains("ended unexpectedly"), "{log}");
}

#[test]
fn the_console_event_feed_and_login_audit_are_supervised_stages() {
    // Each panics in its first incarnation, is restarted, and /healthz ends healthy.
    for stage in ["console-events", "console-audit"] {
        let dir = temp_dir("supervise-console");
        let Some((d, _sock)) = faulty_daemon(
            dir.path(),
            "2000000",
            "DULI_DEBUG_PANIC_STAGE",
            &format!("{stage}:1"),
        ) else {
            return;
        };
        restarted_after_its_panic(&d, stage, Duration::from_secs(20));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = https_get(d.console_addr(), "/healthz");
            if r.as_ref().is_ok_and(|r| r.status == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "{stage}: /healthz {r:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The HL7 delivery worker, the analysis pipeline and the DICOM listener each panic in
/// their first incarnation: each is restarted, and a study sent afterwards is received,
/// analysed and its report accepted by the RIS.
#[test]
fn delivery_analysis_and_receive_stages_that_panic_are_restarted_and_serve() {
    let Some(file) = common::inference::chest_dx("PNEUMONIA_01.dcm") else {
        return;
    };
    if !common::inference::inference_available() {
        return;
    }
    for stage in ["deliver hl7", "infer", "receive"] {
        if !cfg!(debug_assertions) {
            return skip_here("stage fault injection exists only in debug builds");
        }
        let (port, seen) = ris::scripted_ris(Arc::new(|_, id: &str| ris::aa(id)), Duration::ZERO);
        let d = Daemon::builder()
            .with_inference()
            .config("hl7", "enabled", "true")
            .config("hl7", "port", &port.to_string())
            .config("hl7", "tls", "false")
            .env("DULI_DEBUG_PANIC_STAGE", &format!("{stage}:1"))
            .start();
        restarted_after_its_panic(&d, stage, Duration::from_secs(30));
        d.storescu("MODALITY", &[], std::slice::from_ref(&file))
            .unwrap()
            .assert_success(&format!("storescu after {stage} was restarted"));
        let deadline = Instant::now() + Duration::from_secs(120);
        while seen.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "{stage}: no report reached the RIS; log:\n{}",
            d.log()
        );
        ris::wait_drained(&d, Duration::from_secs(20));
    }
}

/// Waits up to `within` for `stage`'s second incarnation, and checks that the first ended
/// by the injected panic.
fn restarted_after_its_panic(d: &Daemon, stage: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let restarted = format!("stage {stage}: restarting (incarnation 2)");
    while !d.log().contains(&restarted) {
        assert!(
            Instant::now() < deadline,
            "{stage} was not restarted:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        d.log().contains(&format!(
            "stage {stage} ended unexpectedly (panicked: fault injected into stage {stage})"
        )),
        "{}",
        d.log()
    );
}

/// An association cut off with the DICOM listener's stage (its panic aborts every
/// connection it serves) still ends for the study tracker: the study it stored into does
/// not stay `receiving` until the daemon restarts.
#[test]
fn a_study_whose_association_died_with_its_stage_is_not_left_receiving() {
    use duli::dimse::command::{Command, Priority};
    use raw_peer::{Outcome, Proposal, RawPeer, EXPLICIT_LE};
    if !cfg!(debug_assertions) {
        return skip_here("stage fault injection exists only in debug builds");
    }
    let Some(path) = common::inference::chest_dx("NORMAL_01.dcm") else {
        return;
    };
    let p = duli::scu::prepare(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let data = &bytes[p.offset as usize..];
    let study = duli::store::header::read_header(&path)
        .unwrap()
        .instance
        .study_instance_uid;
    let d = Daemon::builder()
        .config("dicom", "quiet_period", "1")
        .env("DULI_DEBUG_PANIC_STAGE", "receive:1")
        .start();
    let contexts = [Proposal {
        id: 1,
        abstract_syntax: &p.sop_class,
        transfer_syntaxes: &[EXPLICIT_LE],
    }];
    let mut peer =
        match RawPeer::associate(d.dicom_addr(), "MODALITY", DULI_AET, &contexts, &[]).unwrap() {
            Outcome::Accepted(peer) => peer,
            Outcome::Refused(pdu) => panic!("refused: {pdu:?}"),
        };
    let rq = Command::store_rq(1, &p.sop_class, &p.sop_instance, Priority::Medium);
    let rsp = peer.request(1, &rq, Some(data)).unwrap();
    assert_eq!(rsp.status.map(|s| s.0), Some(0), "{rsp:?}");
    assert!(
        !d.log().contains("fault injected into stage receive"),
        "the store came after the stage's panic: the association was not cut off by it"
    );
    // Held open (never released) until the stage dies with it.
    restarted_after_its_panic(&d, "receive", Duration::from_secs(30));
    let state = || {
        let out = run(&mut d.command(&["studies"]), Duration::from_secs(60));
        let studies: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        studies
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["study_instance_uid"] == study.as_str())
            .map(|st| st["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = state();
    while now == "receiving" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        now = state();
    }
    assert!(
        !now.is_empty() && now != "receiving",
        "study {study} is {now:?} after its association died; log:\n{}",
        d.log()
    );
    drop(peer);
}

/// The post-update health check asks the running daemon whether its model is in service:
/// with intact model files but a runtime the new release cannot load, it fails ("loaded"),
/// where checking the files alone passed; with the runtime it passes.
#[test]
fn the_health_check_fails_while_the_daemon_cannot_put_its_model_in_service() {
    if !common::inference::inference_available() {
        return;
    }
    let model = repo_root().join("models/pneumonia-xception/model.toml");
    let check = |d: &Daemon| {
        let mut cfg = duli::config::Config::default();
        cfg.device.data_dir = d.data_dir().to_path_buf();
        cfg.inference.model = model.clone();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(duli::health::check(&cfg, Duration::from_secs(60)))
    };
    let broken = Daemon::builder()
        .with_inference()
        .config("inference", "openvino_lib", "/nonexistent/libopenvino_c.so")
        .start();
    let report = check(&broken);
    assert!(!report.passed(), "{report}");
    let loaded = report.checks.iter().find(|c| c.name == "loaded").unwrap();
    assert!(
        !loaded.ok && loaded.detail.contains("waiting for model"),
        "{report}"
    );
    let files = report.checks.iter().find(|c| c.name == "model").unwrap();
    assert!(files.ok, "the model's files are intact: {report}");
    drop(broken);
    let working = Daemon::builder().with_inference().start();
    let report = check(&working);
    assert!(report.passed(), "{report}");
}
