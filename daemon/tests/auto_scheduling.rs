//! `performance_hint = "AUTO"` in the running daemon, on the real runtime: a burst of
//! one-image studies over parallel associations swaps to the throughput compilation and
//! every study is analysed; a study alone after the quiet period swaps back to the latency
//! compilation; the same pixels analysed in the burst and alone get the same probability.

mod common;

use common::inference::{inference_available, make_dx_study};
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery staple";
const BURST: usize = 8;

/// The worklist rows once `n` studies are done (fails after `timeout`).
fn done_rows(s: &ConsoleSession, d: &Daemon, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = s.get("/api/v1/studies?limit=100").json()["studies"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let done = rows.iter().filter(|r| r["state"] == "done").count();
        if done >= n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} studies done:\n{rows:#?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Fails unless the daemon's log says `line` (within a few seconds).
fn assert_logged(d: &Daemon, line: &str) {
    let log = d.log_once_it_holds(line, Duration::from_secs(10));
    assert!(log.contains(line), "{line:?} not in the log:\n{log}");
}

/// The pneumonia probability of the study of `patient_id`.
fn probability(s: &ConsoleSession, rows: &[Value], patient_id: &str) -> f64 {
    let row = rows
        .iter()
        .find(|r| r["patient_id"] == patient_id)
        .unwrap_or_else(|| panic!("no study of {patient_id}: {rows:#?}"));
    let uid = row["study_uid"].as_str().unwrap();
    let detail = s.get(&format!("/api/v1/studies/{uid}")).json();
    detail["result"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["label"]
                .as_str()
                .is_some_and(|l| l.eq_ignore_ascii_case("pneumonia"))
        })
        .and_then(|f| f["probability"].as_f64())
        .unwrap_or_else(|| panic!("no pneumonia finding: {detail:#}"))
}

#[test]
fn auto_scheduling_swaps_for_a_burst_and_back_and_the_results_agree() {
    if !inference_available() {
        return;
    }
    let dir = temp_dir("auto-scheduling");
    let mut burst = Vec::new();
    for k in 0..BURST {
        let seed = (10 + k).to_string();
        let Some(f) = make_dx_study(dir.path(), &format!("B{k}"), &["--seed", &seed]) else {
            return;
        };
        burst.push(f);
    }
    // The first burst image's pixels again, in a study of its own.
    let Some(alone) = make_dx_study(dir.path(), "L", &["--seed", "10"]) else {
        return;
    };
    let d = Daemon::builder()
        .with_inference()
        .config("inference", "performance_hint", "AUTO")
        .start();
    d.log_once_it_holds("Auto scheduling", Duration::from_secs(60));
    d.add_user("rita", "radiologist", PW);
    let s = d.login("rita", PW);

    // The burst: every study on its own association, all at once.
    std::thread::scope(|scope| {
        for f in &burst {
            let d = &d;
            scope.spawn(move || {
                d.storescu("MODALITY", &[], std::slice::from_ref(f))
                    .unwrap()
                    .assert_success("storescu");
            });
        }
    });
    let rows = done_rows(&s, &d, BURST, Duration::from_secs(240));
    assert_logged(&d, "images wait: network compiled for THROUGHPUT");
    let in_burst = probability(&s, &rows, "B0P0000");

    // Alone, after the quiet period: back to the latency compilation.
    std::thread::sleep(Duration::from_secs(11));
    d.storescu("MODALITY", &[], &[alone])
        .unwrap()
        .assert_success("storescu");
    let rows = done_rows(&s, &d, BURST + 1, Duration::from_secs(120));
    assert_logged(
        &d,
        "images come one at a time again: network compiled for LATENCY",
    );
    let by_itself = probability(&s, &rows, "LP0000");
    assert!(
        (in_burst - by_itself).abs() <= 1e-5,
        "the same pixels: {in_burst} in the burst, {by_itself} alone"
    );
}
