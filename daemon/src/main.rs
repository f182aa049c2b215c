//! The `duli` command line: the daemon and the technician's tools.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use duli::audit::{Action, Event};
use duli::config::Config;
use duli::control::{self, Request, Response};
use duli::scu::{self, Target};
use duli::{diagnostics, firmware_cli, provision};
use duli_firmware::{PayloadKind, Release, Version};
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
        action: AuditAction,
        /// Configuration file (for the data directory).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
    /// Inspect and re-queue deliveries.
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
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
        action: FirmwareAction,
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
        action: UserAction,
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

#[derive(Subcommand)]
enum FirmwareAction {
    /// Generate an Ed25519 key pair: DIR/NAME.pk8 (0600, never overwritten) and DIR/NAME.pub.
    Keygen {
        /// Folder for the key files.
        #[arg(long)]
        out_dir: PathBuf,
        /// Base name of the key files.
        #[arg(long)]
        name: String,
    },
    /// Sign a payload into a bundle (build pipeline).
    Sign {
        /// Private key (PKCS#8 .pk8).
        #[arg(long)]
        key: PathBuf,
        /// Root filesystem image or model pack.
        #[arg(long)]
        payload: PathBuf,
        /// What the payload is.
        #[arg(long, value_parser = ["rootfs", "model-pack"])]
        kind: String,
        /// Version it installs (X.Y.Z).
        #[arg(long)]
        version: Version,
        /// Lowest running version it may be installed over (X.Y.Z).
        #[arg(long)]
        min_version: Version,
        /// Hardware identifier that may install it (repeat for several).
        #[arg(long = "hardware", required = true)]
        hardware: Vec<String>,
        /// Bundle file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a bundle's signature and payload; prints its manifest and signer.
    Verify {
        /// The bundle.
        bundle: PathBuf,
        /// Trust only these public keys (.pub) instead of the device's keys.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
    },
    /// Install a bundle: a root filesystem into the inactive slot, or a model pack.
    Install {
        /// The bundle (omit with --staged).
        bundle: Option<PathBuf>,
        /// Install firmware.staged_bundle and consume it (duli-update.service).
        #[arg(long)]
        staged: bool,
        /// Name of the model pack file in firmware.model_packs.
        #[arg(long, default_value = "model")]
        model_name: String,
    },
    /// Show the booted slot, the boot variables and any pending update.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Commit the booted slot (after the health check on a trial boot).
    MarkGood {
        /// On a trial boot, check the daemon, the store and the model first.
        #[arg(long)]
        health_check: bool,
        /// Seconds to wait for the daemon to answer.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Return to the other slot at the next boot.
    Rollback,
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the hash chain; prints the first broken link and exits 1 if there is one.
    Verify,
}

#[derive(Subcommand)]
enum OutboxAction {
    /// Print the entries (all, or of one destination: hl7, mqtt, pacs:NAME).
    List {
        /// Destination.
        dest: Option<String>,
    },
    /// Re-queue dead entries and make retrying ones due now: all, an entry id, or a destination.
    Retry {
        /// `all`, an entry id, `hl7`, `mqtt` or `pacs:NAME`.
        selector: String,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a console user; the password is read from stdin (first line) or prompted for.
    Add {
        /// Login name.
        name: String,
        /// radiologist, technician or admin.
        #[arg(long)]
        role: String,
    },
    /// List console users.
    List,
}

/// Turns terminal echo off until dropped.
struct NoEcho(Option<nix::libc::termios>);

impl NoEcho {
    fn new() -> NoEcho {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed termios owned here.
        unsafe {
            let mut t: nix::libc::termios = std::mem::zeroed();
            if nix::libc::tcgetattr(0, &mut t) != 0 {
                return NoEcho(None);
            }
            let saved = t;
            t.c_lflag &= !nix::libc::ECHO;
            nix::libc::tcsetattr(0, nix::libc::TCSANOW, &t);
            NoEcho(Some(saved))
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                nix::libc::tcsetattr(0, nix::libc::TCSANOW, t);
            }
        }
    }
}

/// Reads a new password: prompted twice without echo on a terminal, else the first
/// line of stdin.
fn read_new_password() -> Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let read_line = || -> Result<String> {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("read the password")?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    if !stdin.is_terminal() {
        return read_line();
    }
    let first = {
        let _quiet = NoEcho::new();
        eprint!("Password (12 characters or more): ");
        std::io::stderr().flush().ok();
        let p = read_line()?;
        eprintln!();
        p
    };
    let second = {
        let _quiet = NoEcho::new();
        eprint!("Repeat it: ");
        std::io::stderr().flush().ok();
        let p = read_line()?;
        eprintln!();
        p
    };
    if first != second {
        anyhow::bail!("the passwords differ");
    }
    Ok(first)
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config> {
    Config::load(path, std::env::vars()).map_err(|e| anyhow::anyhow!("{e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn store_command(config: Option<PathBuf>, req: Request) -> Result<ExitCode> {
    let cfg = load_config(config.as_deref())?;
    let resp = runtime()?.block_on(control::run_request(&cfg.device.data_dir, req))?;
    match resp {
        Response::Ok { data } => {
            println!("{}", serde_json::to_string_pretty(&data)?);
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => {
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    duli::logging::init();
    match cli.command {
        Command::Run { config, allow_root } => {
            duli::malloc_arenas::limit();
            let cfg = load_config(config.as_deref())?;
            // Before the runtime starts: credentials change while the process has one thread.
            let (prebound, _) = duli::privileges::enter_service_user(&cfg, allow_root)?;
            runtime()?.block_on(duli::daemon::run_with(cfg, prebound))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            exit_after_report,
            samples,
            config,
        } => {
            let cfg = load_config(config.as_deref())?;
            runtime()?.block_on(duli::demo::run(cfg, samples, exit_after_report))
        }
        Command::Infer {
            model,
            precision,
            files,
            config,
        } => {
            let cfg = load_config(config.as_deref())?;
            let code =
                duli::infer::infer_files_cli(model.as_deref(), &files, &cfg.inference, precision);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::Evaluate { opts, config } => {
            let cfg = load_config(config.as_deref())?;
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
        } => {
            let target: Target = target.parse()?;
            let rt = runtime()?;
            for i in 0..repeat.max(1) {
                match rt.block_on(scu::echo(&target, &calling_ae)) {
                    Ok(rtt) => println!(
                        "C-ECHO {} to {target}: Success in {:.2} ms",
                        i + 1,
                        rtt.as_secs_f64() * 1e3
                    ),
                    Err(e) => {
                        eprintln!("C-ECHO to {target} failed: {e}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            target,
            paths,
            calling_ae,
            parallel,
        } => {
            let target: Target = target.parse()?;
            let files = scu::collect_files(&paths);
            let mut prepared = Vec::new();
            let mut skipped = 0;
            for f in files {
                match scu::prepare(&f) {
                    Ok(p) => prepared.push(p),
                    Err(e) => {
                        eprintln!("skipped: {e}");
                        skipped += 1;
                    }
                }
            }
            if prepared.is_empty() {
                eprintln!("no DICOM files to send");
                return Ok(ExitCode::FAILURE);
            }
            let started = std::time::Instant::now();
            let results = runtime()?.block_on(scu::send(&target, &calling_ae, prepared, parallel));
            let elapsed = started.elapsed().as_secs_f64();
            let mut ok = 0;
            let mut bytes = 0u64;
            for r in &results {
                match &r.outcome {
                    Ok(0) => {
                        ok += 1;
                        bytes += r.bytes;
                    }
                    Ok(s) => eprintln!("{}: status {s:04X}", r.path.display()),
                    Err(e) => eprintln!("{}: {e}", r.path.display()),
                }
            }
            println!(
                "sent {ok}/{} file(s) to {target} ({:.1} MB in {elapsed:.2} s, {:.1} MB/s){}",
                results.len(),
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / elapsed.max(1e-9),
                if skipped > 0 {
                    format!(", {skipped} skipped")
                } else {
                    String::new()
                }
            );
            Ok(if ok == results.len() && skipped == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Reindex { config } => store_command(config, Request::Reindex),
        Command::Status { config } => store_command(config, Request::Status),
        Command::Audit {
            action: AuditAction::Verify,
            config,
        } => {
            let cfg = load_config(config.as_deref())?;
            let resp = runtime()?.block_on(control::run_request(
                &cfg.device.data_dir,
                Request::AuditVerify,
            ))?;
            match resp {
                Response::Ok { data } => {
                    if data["intact"] == true {
                        println!(
                            "audit trail intact: {} record(s), head {}",
                            data["records"],
                            data["head"].as_str().unwrap_or("-")
                        );
                        Ok(ExitCode::SUCCESS)
                    } else {
                        println!(
                            "audit trail BROKEN at record {}: {}",
                            data["first_broken"]["seq"],
                            data["first_broken"]["reason"].as_str().unwrap_or("")
                        );
                        Ok(ExitCode::FAILURE)
                    }
                }
                Response::Error { message } => {
                    eprintln!("error: {message}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Outbox { action, config } => {
            let cfg = load_config(config.as_deref())?;
            let req = match action {
                OutboxAction::List { dest } => Request::OutboxList { dest },
                OutboxAction::Retry { selector } => Request::OutboxRetry { selector },
            };
            match runtime()?.block_on(control::run_request(&cfg.device.data_dir, req))? {
                Response::Ok { data } => {
                    match data.get("table").and_then(|t| t.as_str()) {
                        Some(table) => print!("{table}"),
                        None => println!("re-queued {}", data["requeued"]),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Response::Error { message } => {
                    eprintln!("error: {message}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Firmware { action, config } => firmware(action, config),
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
                return provision_check(&config, Duration::from_secs(timeout));
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
            provision_apply(file.as_deref(), &overrides, &target, validate_only)
        }
        Command::Diagnostics { config, out } => {
            let cfg = load_config(config.as_deref())?;
            let out = out.unwrap_or_else(|| diagnostics::default_name(&cfg));
            let config_dir = config
                .as_deref()
                .and_then(|p| p.parent())
                .map(|p| p.to_path_buf());
            let entries = runtime()?.block_on(diagnostics::collect(&cfg, config_dir.as_deref()));
            diagnostics::write(&entries, &out)?;
            println!("wrote {} ({} files):", out.display(), entries.len());
            for e in &entries {
                println!("  {}/{}", diagnostics::ROOT, e.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Studies { config } => store_command(config, Request::Studies),
        Command::User {
            action: UserAction::Add { name, role },
            config,
        } => {
            let role: duli::console::roles::Role = role.parse()?;
            duli::console::users::check_name(&name)?;
            let password = read_new_password()?;
            let password_hash = duli::console::users::hash_password(&password)?;
            store_command(
                config,
                Request::UserAdd {
                    name,
                    role,
                    password_hash,
                },
            )
        }
        Command::User {
            action: UserAction::List,
            config,
        } => store_command(config, Request::UserList),
        Command::Instances { study, config } => store_command(config, Request::Instances { study }),
    }
}

fn firmware(action: FirmwareAction, config: Option<PathBuf>) -> Result<ExitCode> {
    let cfg = load_config(config.as_deref())?;
    match action {
        FirmwareAction::Keygen { out_dir, name } => firmware_cli::keygen(&cfg, &out_dir, &name),
        FirmwareAction::Sign {
            key,
            payload,
            kind,
            version,
            min_version,
            hardware,
            out,
        } => {
            let kind = match kind.as_str() {
                "rootfs" => PayloadKind::Rootfs,
                _ => PayloadKind::ModelPack,
            };
            let release = Release {
                version,
                min_version,
                hardware,
                kind,
            };
            firmware_cli::sign(&cfg, &key, &payload, &release, &out)
        }
        FirmwareAction::Verify { bundle, keys } => firmware_cli::verify(&cfg, &bundle, &keys),
        FirmwareAction::Install {
            bundle,
            staged,
            model_name,
        } => firmware_cli::install(&cfg, bundle.as_deref(), staged, &model_name),
        FirmwareAction::Status { json } => firmware_cli::status(&cfg, json),
        FirmwareAction::MarkGood {
            health_check,
            timeout,
        } => firmware_cli::mark_good(&cfg, health_check, Duration::from_secs(timeout)),
        FirmwareAction::Rollback => firmware_cli::rollback(&cfg),
    }
}

fn provision_check(config: &std::path::Path, timeout: Duration) -> Result<ExitCode> {
    let cfg = load_config(Some(config))?;
    let lines = runtime()?.block_on(provision::check::run(&cfg, timeout));
    print!("{}", provision::check::render(&lines));
    Ok(if provision::check::all_passed(&lines) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn provision_apply(
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

fn main() -> ExitCode {
    // The sandboxed pixel decoder's child process (see `duli::infer::decode_sandbox`):
    // nothing else runs in it, so it is recognised before any start-up work.
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|a| a == duli::infer::decode_sandbox::SUBCOMMAND)
    {
        return match (args.next(), args.next()) {
            (Some(file), None) => {
                duli::infer::decode_sandbox::child_main(std::path::Path::new(&file))
            }
            _ => ExitCode::from(2),
        };
    }
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
