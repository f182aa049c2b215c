//! `duli provision`: set the box up from a provisioning file, or test its connections.

use super::{load_config, runtime};
use anyhow::Result;
use duli::audit::{Action, Event};
use duli::provision;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `--check`: tests the configured connections.
pub fn check(config: &std::path::Path, timeout: Duration) -> Result<ExitCode> {
    let cfg = load_config(Some(config))?;
    let lines = runtime()?.block_on(provision::check::run(&cfg, timeout));
    print!("{}", provision::check::render(&lines));
    Ok(if provision::check::all_passed(&lines) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Plans and writes the configuration (or only validates it).
pub fn apply(
    file: Option<&std::path::Path>,
    overrides: &provision::Overrides,
    target: &provision::Target,
    validate_only: bool,
) -> Result<ExitCode> {
    let (parsed, dir) = match file {
        Some(path) => match provision::read_file(path) {
            Ok(f) => (
                f,
                path.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(|p| p.to_path_buf())
                    .unwrap_or_else(|| PathBuf::from(".")),
            ),
            Err(e) => {
                eprintln!("{e}");
                eprintln!("provisioning refused, nothing was written");
                return Ok(ExitCode::from(2));
            }
        },
        None => (provision::ProvisionFile::default(), PathBuf::from(".")),
    };
    let plan = match provision::plan(parsed, &dir, overrides, target) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    if validate_only {
        println!("provisioning file is valid; it would write:");
        for w in &plan.writes {
            println!("  {w:?}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let summary = provision::apply(&plan)?;
    for line in &summary {
        println!("{line}");
    }
    let cfg = &plan.config;
    println!(
        "provisioned site {} device {} (AE title {})",
        cfg.device.site_id, cfg.device.device_id, cfg.dicom.ae_title
    );
    if let Some(admin) = &plan.admin {
        let how = if admin.password.is_some() {
            "the daemon creates the account at its next start"
        } else {
            "finish on the console's first-time setup page with the one-time code in \
             <data dir>/console/setup-code (never logged)"
        };
        println!(
            "first administrator {:?}: pending in {}; {how}, or run `duli user add {} --role admin`",
            admin.name,
            target
                .config
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join(provision::PENDING_ADMIN)
                .display(),
            admin.name
        );
    }
    println!(
        "next: `duli provision --check --config {}`",
        target.config.display()
    );
    let files: Vec<String> = plan
        .writes
        .iter()
        .map(|w| w.path.display().to_string())
        .collect();
    duli::cli_audit::record(
        &cfg.device.data_dir,
        false,
        Event::new(
            &duli::cli_audit::actor(),
            Action::ConfigChange,
            "provisioning",
        )
        .from("local")
        .detail(format!(
            "provisioned site {} device {}; wrote {}",
            cfg.device.site_id,
            cfg.device.device_id,
            files.join(", ")
        )),
    );
    Ok(ExitCode::SUCCESS)
}
