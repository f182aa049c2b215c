//! The `duli` command line: the daemon and the technician's tools.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use duli::config::Config;
use duli::control::{self, Request, Response};
use duli::scu::{self, Target};
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
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the daemon on defaults, send the sample X-rays to it and show what was recorded.
    Demo {
        /// Exit 0 once every sample is recorded (for CI) instead of running until Ctrl-C.
        #[arg(long)]
        exit_after_report: bool,
        /// Folder of sample DICOM files (default: ../shared/data/cxr-samples/dicom/explicit-le).
        #[arg(long)]
        samples: Option<PathBuf>,
        /// Configuration file (TOML); defaults otherwise.
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
    /// List the studies in the store (JSON).
    Studies {
        /// Configuration file (for the data directory).
        #[arg(long)]
        config: Option<PathBuf>,
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
enum AuditAction {
    /// Check the hash chain; prints the first broken link and exits 1 if there is one.
    Verify,
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
        Command::Run { config } => {
            let cfg = load_config(config.as_deref())?;
            runtime()?.block_on(duli::daemon::run(cfg))?;
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

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
