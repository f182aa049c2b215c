//! `duli diagnostics`: the support bundle.

use super::{box_config, load_config, runtime, APPLIANCE_CONFIG};
use anyhow::Result;
use duli::audit::{Action, Event};
use duli::{cli_audit, diagnostics};
use std::path::PathBuf;
use std::process::ExitCode;

/// Writes the support bundle to `out` (default: a name with the device and the time) and
/// lists what it holds.
pub fn write(config: Option<PathBuf>, out: Option<PathBuf>) -> Result<ExitCode> {
    let config = box_config(config, std::path::Path::new(APPLIANCE_CONFIG));
    let cfg = load_config(config.as_deref())?;
    let out = out.unwrap_or_else(|| diagnostics::default_name(&cfg));
    let config_dir = config
        .as_deref()
        .and_then(|p| p.parent())
        .map(|p| p.to_path_buf());
    let entries = runtime()?.block_on(diagnostics::collect(&cfg, config_dir.as_deref()));
    diagnostics::write(&entries, &out)?;
    // The bundle goes to support, outside the hospital: who made it, and where, is in
    // the trail (a box without a data folder has no trail to write to).
    let event = Event::new(
        &cli_audit::actor(),
        Action::Export,
        diagnostics::AUDIT_OBJECT,
    )
    .from("local")
    .detail(format!(
        "{} files written to {}",
        entries.len(),
        out.display()
    ));
    cli_audit::record(&cfg.device.data_dir, true, event);
    println!("wrote {} ({} files):", out.display(), entries.len());
    for e in &entries {
        println!("  {}/{}", diagnostics::ROOT, e.name);
    }
    Ok(ExitCode::SUCCESS)
}
