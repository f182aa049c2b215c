//! `duli demo`: the newcomer's first run. Starts the daemon on the given configuration,
//! sends the sample X-rays to it over DICOM, prints what was recorded for each study, and
//! keeps running until Ctrl-C (or exits once every sample study is recorded).

use crate::config::Config;
use crate::model::StudyState;
use crate::{daemon, scu};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the sample studies are looked for when no folder is given.
pub fn default_samples() -> PathBuf {
    let shared = std::env::var_os("DULI_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared"));
    shared.join("data/cxr-samples/dicom/explicit-le")
}

/// Runs the demo.
pub async fn run(
    config: Config,
    samples: Option<PathBuf>,
    exit_after_report: bool,
) -> Result<ExitCode> {
    let samples = samples.unwrap_or_else(default_samples);
    if !samples.is_dir() {
        bail!(
            "sample folder {} not found: pass --samples FOLDER or set DULI_SHARED_DIR",
            samples.display()
        );
    }
    let running = daemon::start(&config).await?;
    let target = scu::Target {
        ae_title: config.dicom.ae_title.clone(),
        host: running.dicom_addr.ip().to_string(),
        port: running.dicom_addr.port(),
    };
    let files: Vec<_> = scu::collect_files(std::slice::from_ref(&samples))
        .into_iter()
        .filter_map(|f| scu::prepare(&f).ok())
        .collect();
    let sent_uids: Vec<String> = files.iter().map(|f| f.sop_instance.clone()).collect();
    println!(
        "Sending {} sample image(s) from {} to {target} ...",
        files.len(),
        samples.display()
    );
    let results = scu::send(&target, "DULI_DEMO", files, 2).await;
    let ok = results
        .iter()
        .filter(|r| matches!(r.outcome, Ok(0)))
        .count();
    println!("{ok}/{} stored with Success", results.len());
    // Wait until every sample study has its result (or a recorded error).
    let store = running.store.clone();
    let wait = Duration::from_secs(config.dicom.quiet_period + 600);
    let deadline = tokio::time::Instant::now() + wait;
    let mut announced = 0usize;
    let studies = loop {
        let mut studies: Vec<crate::model::StudyRecord> = Vec::new();
        for uid in &sent_uids {
            if let Some(i) = store.instance(uid).context("read index")? {
                if let Some(s) = store.study(&i.study_instance_uid).context("read index")? {
                    if !studies
                        .iter()
                        .any(|x| x.study_instance_uid == s.study_instance_uid)
                    {
                        studies.push(s);
                    }
                }
            }
        }
        let finished = studies
            .iter()
            .filter(|s| matches!(s.state, StudyState::Done | StudyState::Error))
            .count();
        if finished > announced {
            println!("  {finished}/{} studies analysed", studies.len());
            announced = finished;
        }
        if finished == studies.len() && !studies.is_empty() {
            break studies;
        }
        if tokio::time::Instant::now() > deadline {
            let waiting: Vec<_> = studies
                .iter()
                .filter(|s| !matches!(s.state, StudyState::Done | StudyState::Error))
                .map(|s| s.state.as_str())
                .collect();
            bail!(
                "{} study(ies) without a result after {wait:?} (states: {waiting:?}); is the OpenVINO runtime installed (scripts/setup-openvino.sh) and the model set up (scripts/setup-models.sh)?",
                waiting.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "\n{:<10} {:<26} {:<8} {:<6} {:<36} where the report went",
        "patient", "name", "state", "triage", "top finding"
    );
    let outbox = running.delivery.as_ref().map(|d| d.outbox.clone());
    for s in &studies {
        let result = crate::infer::record::latest_result(&store, &s.study_instance_uid)
            .ok()
            .flatten();
        let (triage, top, went) = match &result {
            Some(r) => {
                let top = r
                    .findings
                    .iter()
                    .max_by(|a, b| a.probability.total_cmp(&b.probability))
                    .map(|f| format!("{} {:.3} (thr {:.2})", f.label, f.probability, f.threshold))
                    .unwrap_or_else(|| "no finding".into());
                let went = match &outbox {
                    Some(o) => {
                        let st = o.status_of(&r.report_id).unwrap_or_default();
                        if st.is_empty() {
                            "recorded (no destination configured)".to_string()
                        } else {
                            st.iter()
                                .map(|d| format!("{}: {}", d.dest, d.state))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    }
                    None => "recorded".into(),
                };
                (if r.triage { "URGENT" } else { "-" }, top, went)
            }
            None => ("-", s.error.clone().unwrap_or_default(), String::new()),
        };
        println!(
            "{:<10} {:<26} {:<8} {:<6} {:<36} {}",
            s.patient_id,
            s.patient_name.chars().take(26).collect::<String>(),
            s.state.as_str(),
            triage,
            top,
            went
        );
    }
    println!(
        "\nConsole: https://{}/ (self-signed certificate unless console.cert is set)",
        running.console_addr
    );
    let code_file = crate::console::setup::code_file(running.store.root());
    match std::fs::read_to_string(&code_file) {
        Ok(code) => println!(
            "First visit: the console asks for first-time setup; enter the one-time code {} \
             (also in {}) and choose the administrator's name and password.",
            code.trim(),
            code_file.display()
        ),
        Err(_) => println!(
            "Log in with an existing account, or add one: `duli user add NAME --role radiologist`."
        ),
    }
    let code = if ok == results.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if !exit_after_report {
        println!("Running; press Ctrl-C to stop.");
        daemon::wait_for_signal().await?;
    }
    running.stop().await?;
    Ok(code)
}
