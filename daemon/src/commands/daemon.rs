//! `duli run`, `duli demo` and `duli check-config`: the daemon, the newcomer's demo on
//! defaults, and the validation of a configuration file.

use super::{load_config, runtime};
use anyhow::Result;
use clap::Args;
use duli::config::Config;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `duli run`.
#[derive(Args)]
pub struct RunArgs {
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// When started as root, stay root instead of switching to device.service_user.
    #[arg(long)]
    pub allow_root: bool,
}

/// `duli demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Exit 0 once every sample is recorded (for CI) instead of running until Ctrl-C.
    #[arg(long)]
    pub exit_after_report: bool,
    /// Folder of sample DICOM files or PNG/JPEG chest X-rays (default: see below).
    #[arg(long)]
    pub samples: Option<PathBuf>,
    /// Configuration file (TOML); defaults otherwise.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs the daemon until SIGTERM/SIGINT: started as root, it binds its listeners and
/// switches to the service user first, while the process has one thread. Its umask is
/// 0077, and a data directory of another user or writable by others is refused.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    // Everything the daemon creates is private unless it asks otherwise, whatever the
    // umask of the shell or unit that started it.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    duli::malloc_arenas::limit();
    let cfg = load_config(args.config.as_deref())?;
    let (prebound, _) = duli::privileges::enter_service_user(&cfg, args.allow_root)?;
    duli::privileges::check_data_dir(&cfg.device.data_dir)?;
    runtime()?.block_on(duli::daemon::run_with(cfg, prebound))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the demo ([`duli::demo::run`]).
pub fn demo(args: DemoArgs) -> Result<ExitCode> {
    let cfg = load_config(args.config.as_deref())?;
    runtime()?.block_on(duli::demo::run(cfg, args.samples, args.exit_after_report))
}

/// Prints the effective configuration of `path` when it is valid (exit 0), else the
/// errors (exit 2).
pub fn check_config(path: &Path) -> Result<ExitCode> {
    match Config::load(Some(path), std::env::vars()) {
        Ok(cfg) => {
            println!("# {}: valid\n{}", path.display(), cfg.to_toml());
            // Valid, and yet the daemon would wait for a model that is not there.
            if cfg.inference.model_pack.is_none() && !cfg.inference.model.is_file() {
                eprintln!(
                    "# warning: inference.model {} does not exist: the daemon will wait for it \
                     (`make models` in a checkout; on the appliance a signed model pack, \
                     inference.model_pack)",
                    cfg.inference.model.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(2))
        }
    }
}
