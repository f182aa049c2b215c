//! `duli demo`: the newcomer's first run. Checks within seconds that the model, the
//! OpenVINO runtime and the sample studies are there (naming the command that fixes what
//! is missing), starts the daemon on the given configuration, sends the samples to it over
//! DICOM, prints what was recorded for each study, and keeps running until Ctrl-C (or exits
//! once every sample study is recorded).
//!
//! - [`samples`]: where the samples are found, and sample images wrapped as DX studies.

pub mod samples;

use crate::config::Config;
use crate::model::StudyState;
use crate::{daemon, scu};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The search order `duli demo --help` prints.
pub const SEARCH_ORDER: &str =
    "Sample studies, first found: --samples FOLDER (DICOM files, PNG or JPEG images); \
$DULI_SHARED_DIR/data/cxr-samples/dicom/explicit-le; shared/data/cxr-samples/dicom/explicit-le \
beside the repository the binary was built from; .cache/samples/cxr-jpeg in that repository \
(the 16 chest X-rays `make models` prepares from the model's PyPI package, sent as DX studies). \
Model manifest (unless inference.model is set): models/pneumonia-xception/model.toml in the \
working directory, then in the repository the binary was built from, then \
/usr/share/duli/models/pneumonia-xception/model.toml. OpenVINO runtime (unless \
inference.openvino_lib or DULI_OPENVINO_LIB is set): .cache/openvino/libs in the working \
directory, then in that repository, then /usr/lib/duli/openvino.";

/// Checks, before anything starts, that the model manifest, its weights and the OpenVINO
/// runtime are there; the error names what is missing and the command that fixes it.
pub fn preflight(config: &Config) -> Result<()> {
    let fix = "run `make models` in the repository (scripts/setup-openvino.sh and scripts/setup-models.sh)";
    let manifest_path = &config.inference.model;
    if !manifest_path.is_file() {
        let looked = crate::locate::model_manifest();
        bail!(
            "model manifest {} not found (looked in:\n{}\n); {fix}, or set inference.model",
            manifest_path.display(),
            looked.describe()
        );
    }
    let manifest = crate::infer::Manifest::load(manifest_path)
        .with_context(|| format!("model manifest {}", manifest_path.display()))?;
    for f in std::iter::once(manifest.model_path()).chain(manifest.weights_path()) {
        if !f.is_file() {
            bail!("model file {} not found; {fix}", f.display());
        }
    }
    let lib = crate::infer::openvino::library_path(&config.inference);
    if !lib.exists() {
        bail!(
            "OpenVINO runtime {} not found (looked in:\n{}\n); {fix}, or set DULI_OPENVINO_LIB",
            lib.display(),
            crate::locate::openvino_runtime().describe()
        );
    }
    Ok(())
}

/// Longest the demo waits for the model to compile.
const MODEL_LOAD_WAIT: Duration = Duration::from_secs(300);

/// Waits until the inference stage has its model; the reason when loading failed (or did
/// not finish within [`MODEL_LOAD_WAIT`]), `None` once it is loaded.
async fn load_failure(model: &crate::infer::ModelStatus) -> Option<String> {
    let deadline = tokio::time::Instant::now() + MODEL_LOAD_WAIT;
    loop {
        match model.get() {
            crate::infer::ModelState::Ready => return None,
            crate::infer::ModelState::Waiting(why) => return Some(why),
            crate::infer::ModelState::Starting if tokio::time::Instant::now() > deadline => {
                return Some(format!("still loading after {MODEL_LOAD_WAIT:?}"))
            }
            crate::infer::ModelState::Starting => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
        }
    }
}

/// Runs the demo.
pub async fn run(
    config: Config,
    samples: Option<PathBuf>,
    exit_after_report: bool,
) -> Result<ExitCode> {
    let source = samples::find(samples)?;
    preflight(&config)?;
    let wrapped = config.device.data_dir.join("demo-samples");
    let paths = samples::dicom_files(
        &source.dir,
        &wrapped,
        &config.dicom.uid_root,
        config.inference.max_pixels,
    )?;
    if paths.is_empty() {
        bail!(
            "no DICOM files or PNG/JPEG images in {} ({}); run `make models` or pass --samples FOLDER",
            source.dir.display(),
            source.origin
        );
    }
    let running = daemon::start(&config).await?;
    // The files are there (preflight), but they may not load: a truncated download, weights
    // that do not match the manifest, a runtime that does not start. Say so and stop.
    if let Some(why) = load_failure(&running.model).await {
        running.stop().await?;
        bail!(
            "the model cannot be loaded: {why}; run `make models` in the repository (scripts/setup-models.sh) to fetch it again"
        );
    }
    let target = scu::Target {
        ae_title: config.dicom.ae_title.clone(),
        host: running.dicom_addr.ip().to_string(),
        port: running.dicom_addr.port(),
        tls: None,
    };
    let files: Vec<_> = paths.iter().filter_map(|f| scu::prepare(f).ok()).collect();
    let sent_uids: Vec<String> = files.iter().map(|f| f.sop_instance.clone()).collect();
    println!(
        "Sending {} sample image(s) from {} ({}) to {target} ...",
        files.len(),
        source.dir.display(),
        source.origin
    );
    let results = scu::send(&target, "DULI_DEMO", files, 2).await;
    let ok = results
        .iter()
        .filter(|r| matches!(r.outcome, Ok(0)))
        .count();
    println!("{ok}/{} stored with Success", results.len());
    let wait = Duration::from_secs(config.dicom.quiet_period + 600);
    let studies = wait_for_results(&running.store, &sent_uids, wait).await?;
    print_results(&running, &studies);
    print_console_hint(&running);
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

/// Waits until every study of the sent instances has its result (or a recorded error),
/// printing progress; refuses after `wait`.
async fn wait_for_results(
    store: &crate::store::Store,
    sent_uids: &[String],
    wait: Duration,
) -> Result<Vec<crate::model::StudyRecord>> {
    let deadline = tokio::time::Instant::now() + wait;
    let finished_state =
        |s: &crate::model::StudyRecord| matches!(s.state, StudyState::Done | StudyState::Error);
    let mut announced = 0usize;
    loop {
        let mut studies: Vec<crate::model::StudyRecord> = Vec::new();
        for uid in sent_uids {
            let Some(i) = store.instance(uid).context("read index")? else {
                continue;
            };
            if let Some(s) = store.study(&i.study_instance_uid).context("read index")? {
                if !studies
                    .iter()
                    .any(|x| x.study_instance_uid == s.study_instance_uid)
                {
                    studies.push(s);
                }
            }
        }
        let finished = studies.iter().filter(|s| finished_state(s)).count();
        if finished > announced {
            println!("  {finished}/{} studies analysed", studies.len());
            announced = finished;
        }
        if finished == studies.len() && !studies.is_empty() {
            return Ok(studies);
        }
        if tokio::time::Instant::now() > deadline {
            let waiting: Vec<_> = studies
                .iter()
                .filter(|s| !finished_state(s))
                .map(|s| s.state.as_str())
                .collect();
            bail!(
                "{} study(ies) without a result after {wait:?} (states: {waiting:?}); is the OpenVINO runtime installed (scripts/setup-openvino.sh) and the model set up (scripts/setup-models.sh)?",
                waiting.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One line per study: patient, state, triage, top finding and where the report went.
fn print_results(running: &daemon::Running, studies: &[crate::model::StudyRecord]) {
    println!(
        "\n{:<10} {:<26} {:<8} {:<6} {:<36} where the report went",
        "patient", "name", "state", "triage", "top finding"
    );
    let outbox = &running.delivery.outbox;
    for s in studies {
        let result = crate::infer::record::latest_result(&running.store, &s.study_instance_uid)
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
                let st = outbox.status_of(&r.report_id).unwrap_or_default();
                let went = if st.is_empty() {
                    "recorded (no destination configured)".to_string()
                } else {
                    st.iter()
                        .map(|d| format!("{}: {}", d.dest, d.state))
                        .collect::<Vec<_>>()
                        .join(", ")
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
}

/// Where the console is and how to get in: the one-time setup code on a new store.
fn print_console_hint(running: &daemon::Running) {
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
}
