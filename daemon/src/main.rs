//! The `duli` command line: the daemon and the technician's tools.

// As in the library: no unwrap() or expect() outside tests, so no input can reach one.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod commands;

use anyhow::Result;
use clap::{Parser, Subcommand};
use duli::control::Request;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "duli",
    version,
    about = "DULI Edge: on-premises chest X-ray AI appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (built-in defaults without --config: loopback only, data in ./duli-data).
    Run(commands::daemon::RunArgs),
    /// Run the daemon on defaults, send the sample X-rays to it and show what was recorded.
    #[command(after_help = duli::demo::SEARCH_ORDER)]
    Demo(commands::daemon::DemoArgs),
    /// Run the inference pipeline on DICOM, PNG or JPEG files: one JSON line per file.
    Infer(commands::analysis::InferArgs),
    /// Measure the model on labelled cases: AUC (DeLong 95% CI), sensitivity, specificity,
    /// PPV, NPV, calibration. DIR holds one folder per finding plus NORMAL (negatives).
    Evaluate {
        #[command(flatten)]
        opts: duli::evaluate::EvaluateOptions,
        /// Configuration file ([inference] section).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// C-ECHO a DICOM peer: AET@HOST:PORT.
    Echo {
        /// The peer, as AET@HOST:PORT.
        target: String,
        #[command(flatten)]
        tls: commands::send::TlsArgs,
        /// Our calling AE title.
        #[arg(long, default_value = "DULI")]
        calling_ae: String,
        /// Number of echoes.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// C-STORE files and folders to a DICOM peer: AET@HOST:PORT PATH...
    Send {
        /// The peer, as AET@HOST:PORT.
        target: String,
        #[command(flatten)]
        tls: commands::send::TlsArgs,
        /// Files or folders (searched recursively).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Our calling AE title.
        #[arg(long, default_value = "DULI")]
        calling_ae: String,
        /// Parallel associations.
        #[arg(long, short = 'j', default_value_t = 1)]
        parallel: usize,
    },
    /// Correct the instance and study index from the stored files, in place.
    Reindex {
        /// Configuration file (for the data directory).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show instance and study counts from the store.
    Status {
        /// Configuration file (for the data directory).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        action: commands::store::AuditAction,
        /// Configuration file (for the data directory).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Inspect and re-queue deliveries.
    Outbox {
        #[command(subcommand)]
        action: commands::store::OutboxAction,
        /// Configuration file (for the data directory).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// List the studies in the store (JSON).
    Studies {
        /// Configuration file (for the data directory).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Signed firmware and model pack updates (A/B slots).
    Firmware {
        #[command(subcommand)]
        action: commands::firmware::FirmwareAction,
        /// Configuration file ([firmware] section, data directory for the audit trail).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Set the box up from a provisioning file and/or flags, or (--check) test its connections.
    Provision(commands::provision::ProvisionArgs),
    /// Write a support bundle (tar.gz): versions, configuration without secrets, logs,
    /// store statistics, firmware state, disk usage.
    Diagnostics {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Bundle to write (default: duli-diagnostics-<device>-<time>.tar.gz here).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Console users.
    User {
        #[command(subcommand)]
        action: commands::store::UserAction,
        /// Configuration file (for the data directory).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// List stored instances (JSON), of one study or all.
    Instances {
        /// Study Instance UID.
        study: Option<String>,
        /// Configuration file (for the data directory).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    duli::logging::init();
    match cli.command {
        Command::Run(args) => commands::daemon::run(args),
        Command::Demo(args) => commands::daemon::demo(args),
        Command::Infer(args) => commands::analysis::infer(args),
        Command::Evaluate { opts, config } => commands::analysis::evaluate(&opts, config),
        Command::CheckConfig { config } => commands::daemon::check_config(&config),
        Command::Echo {
            target,
            tls,
            calling_ae,
            repeat,
        } => commands::send::echo(&target, &tls, &calling_ae, repeat),
        Command::Send {
            target,
            tls,
            paths,
            calling_ae,
            parallel,
        } => commands::send::send(&target, &tls, &paths, &calling_ae, parallel),
        Command::Reindex { config } => commands::store::print_answer(config, Request::Reindex),
        Command::Status { config } => commands::store::print_answer(config, Request::Status),
        Command::Audit { action, config } => commands::store::audit(action, config),
        Command::Outbox { action, config } => commands::store::outbox(action, config),
        Command::Firmware { action, config } => commands::firmware::run(action, config),
        Command::Provision(args) => commands::provision::run(args),
        Command::Diagnostics { config, out } => commands::diagnostics::write(config, out),
        Command::Studies { config } => commands::store::print_answer(config, Request::Studies),
        Command::User { action, config } => commands::store::user(action, config),
        Command::Instances { study, config } => {
            commands::store::print_answer(config, Request::Instances { study })
        }
    }
}

fn main() -> ExitCode {
    // The sandboxed pixel decoder's child process (see `duli::infer::decode_sandbox`):
    // nothing else runs in it, so it is recognised before any start-up work.
    // So is the child that runs one control request as the data folder's owner.
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(a) if a == duli::infer::decode_sandbox::SUBCOMMAND => {
            let rest: Vec<std::ffi::OsString> = args.collect();
            return duli::infer::decode_sandbox::child_main(&rest);
        }
        Some(a) if a == duli::control::OWNER_SUBCOMMAND => {
            let rest: Vec<std::ffi::OsString> = args.collect();
            return duli::control::owner_child_main(&rest);
        }
        _ => {}
    }
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
