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
    let mut running = daemon::start(&config).await?;
    if let Some(mut completed) = running.completed.take() {
        tokio::spawn(async move { while completed.recv().await.is_some() {} });
    }
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
    // Wait until every study of the samples has left `receiving`.
    let store = running.store.clone();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(config.dicom.quiet_period + 60);
    let studies = loop {
        let mut studies = Vec::new();
        for uid in &sent_uids {
            if let Some(i) = store.instance(uid).context("read index")? {
                if let Some(s) = store.study(&i.study_instance_uid).context("read index")? {
                    if !studies.iter().any(|x: &crate::model::StudyRecord| {
                        x.study_instance_uid == s.study_instance_uid
                    }) {
                        studies.push(s);
                    }
                }
            }
        }
        let pending = studies
            .iter()
            .filter(|s| s.state == StudyState::Receiving)
            .count();
        if pending == 0 && !studies.is_empty() {
            break studies;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{pending} study(ies) still receiving after the deadline");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "\n{:<22} {:<24} {:>9} {:<10}",
        "patient", "name", "instances", "state"
    );
    for s in &studies {
        println!(
            "{:<22} {:<24} {:>9} {:<10}",
            s.patient_id,
            s.patient_name,
            s.instances,
            s.state.as_str()
        );
    }
    println!(
        "\nConsole: https://{}/ (self-signed certificate unless console.cert is set; \
         create a login with `duli user add NAME --role radiologist`)",
        running.console_addr
    );
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
