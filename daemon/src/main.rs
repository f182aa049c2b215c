//! The `duli` command line: the daemon and the technician's tools.

// As in the library: no unwrap() or expect() outside tests, so no input can reach one.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod commands;

use anyhow::Result;
use clap::{Parser, Subcommand};
use duli::config::Config;
use duli::control::Request;
use duli::provision;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// When started as root, stay root instead of switching to device.service_user.
        #[arg(long)]
        allow_root: bool,
    },
    /// Run the daemon on defaults, send the sample X-rays to it and show what was recorded.
    #[command(after_help = duli::demo::SEARCH_ORDER)]
    Demo {
        /// Exit 0 once every sample is recorded (for CI) instead of running until Ctrl-C.
        #[arg(long)]
        exit_after_report: bool,
        /// Folder of sample DICOM files or PNG/JPEG chest X-rays (default: see below).
        #[arg(long)]
        samples: Option<PathBuf>,
        /// Configuration file (TOML); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the inference pipeline on DICOM, PNG or JPEG files: one JSON line per file.
    Infer {
        /// Model manifest (default: inference.model of the configuration).
        #[arg(long)]
        model: Option<PathBuf>,
        /// f32, bf16, int8 or auto (default: inference.precision of the configuration).
        /// A fixed precision runs even without a passed gate, with a warning.
        #[arg(long)]
        precision: Option<duli::infer::precision::PrecisionSetting>,
        /// Make each analysed file's heatmap as the manifest says (class activation or
        /// occlusion) and report its time as timings_ms.heatmap.
        #[arg(long)]
        heatmap: bool,
        /// Write the heatmaps as PNG files into this folder (with --heatmap).
        #[arg(long, requires = "heatmap")]
        heatmap_dir: Option<PathBuf>,
        /// Files scored at a time (default: two per CPU); one at a time with --heatmap.
        /// With more than one the model is compiled for throughput (several infer
        /// requests), else as inference.performance_hint says; the results are the same.
        /// Lines come out in the order of the files either way.
        #[arg(short = 'j', long)]
        jobs: Option<usize>,
        /// Files to analyse.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Configuration file ([inference] section).
        #[arg(long)]
        config: Option<PathBuf>,
    },
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
    /// Rebuild the instance index from the stored files.
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
    Provision {
        /// Provisioning file (TOML, see config/provision.example.toml).
        file: Option<PathBuf>,
        /// The configuration file to write (its folder receives tls/, site_secret, ...).
        #[arg(long, default_value = "/etc/duli/duli.toml")]
        config: PathBuf,
        /// Test the configured connections instead: C-ECHO, MLLP, MQTT, clock.
        #[arg(long)]
        check: bool,
        /// Check everything and print what would be written, without writing.
        #[arg(long)]
        validate_only: bool,
        /// Root of the system files (time zone, timesyncd drop-in).
        #[arg(long, default_value = "/")]
        system_root: PathBuf,
        /// Service user owning private keys and secrets.
        #[arg(long, default_value = "duli")]
        owner: String,
        /// Site identifier.
        #[arg(long)]
        site_id: Option<String>,
        /// Device identifier.
        #[arg(long)]
        device_id: Option<String>,
        /// This box's AE title.
        #[arg(long)]
        ae_title: Option<String>,
        /// Time zone (IANA name).
        #[arg(long)]
        timezone: Option<String>,
        /// NTP server (repeat for several).
        #[arg(long)]
        ntp: Vec<String>,
        /// Name of the first console administrator.
        #[arg(long)]
        admin: Option<String>,
        /// Data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Seconds each --check test may take.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
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
        Command::Run { config, allow_root } => {
            duli::malloc_arenas::limit();
            let cfg = commands::load_config(config.as_deref())?;
            // Before the runtime starts: credentials change while the process has one thread.
            let (prebound, _) = duli::privileges::enter_service_user(&cfg, allow_root)?;
            commands::runtime()?.block_on(duli::daemon::run_with(cfg, prebound))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            exit_after_report,
            samples,
            config,
        } => {
            let cfg = commands::load_config(config.as_deref())?;
            commands::runtime()?.block_on(duli::demo::run(cfg, samples, exit_after_report))
        }
        Command::Infer {
            model,
            precision,
            heatmap,
            heatmap_dir,
            jobs,
            files,
            config,
        } => {
            let cfg = commands::load_config(config.as_deref())?;
            let heatmaps = duli::infer::cli::HeatmapOptions {
                enabled: heatmap,
                dir: heatmap_dir,
            };
            let jobs = duli::infer::cli::jobs_or_cpus(jobs);
            let code = duli::infer::infer_files_cli(
                model.as_deref(),
                &files,
                &cfg.inference,
                precision,
                &heatmaps,
                jobs,
            );
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::Evaluate { opts, config } => {
            let cfg = commands::load_config(config.as_deref())?;
            let code = duli::evaluate::evaluate_cli(&opts, &cfg.inference);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::CheckConfig { config } => match Config::load(Some(&config), std::env::vars()) {
            Ok(cfg) => {
                println!("# {}: valid\n{}", config.display(), cfg.to_toml());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Echo {
            target,
            calling_ae,
            repeat,
        } => commands::send::echo(&target, &calling_ae, repeat),
        Command::Send {
            target,
            paths,
            calling_ae,
            parallel,
        } => commands::send::send(&target, &paths, &calling_ae, parallel),
        Command::Reindex { config } => commands::store::print_answer(config, Request::Reindex),
        Command::Status { config } => commands::store::print_answer(config, Request::Status),
        Command::Audit { action, config } => commands::store::audit(action, config),
        Command::Outbox { action, config } => commands::store::outbox(action, config),
        Command::Firmware { action, config } => commands::firmware::run(action, config),
        Command::Provision {
            file,
            config,
            check,
            validate_only,
            system_root,
            owner,
            site_id,
            device_id,
            ae_title,
            timezone,
            ntp,
            admin,
            data_dir,
            timeout,
        } => {
            if check {
                return commands::provision::check(&config, Duration::from_secs(timeout));
            }
            let overrides = provision::Overrides {
                site_id,
                device_id,
                ae_title,
                timezone,
                ntp,
                admin,
                data_dir,
            };
            let target = provision::Target {
                config,
                system_root,
                owner: Some(owner),
            };
            commands::provision::apply(file.as_deref(), &overrides, &target, validate_only)
        }
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
