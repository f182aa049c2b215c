//! `duli provision`: set the box up from a provisioning file, or test its connections.

use super::{load_config, runtime};
use anyhow::{Context, Result};
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
    let (parsed, dir) = match read_provisioning(file) {
        Ok(read) => read,
        Err(code) => return Ok(code),
    };
    let plan = match provision::plan(parsed, &dir, overrides, target) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    if plan.admin.is_some() && refuse_second_admin(&plan.config.device.data_dir)? {
        return Ok(ExitCode::from(2));
    }
    if validate_only {
        println!("provisioning file is valid; it would write:");
        for w in &plan.writes {
            println!("  {w:?}");
        }
        for r in &plan.removals {
            println!("  remove {} ({})", r.path.display(), r.what);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = &plan.config;
    let summary = match provision::apply(&plan) {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "provisioning failed part-way: the files named replaced hold the new content, \
                 the others are as they were; fix the cause and provision again"
            );
            audit_provisioning(
                cfg,
                format!(
                    "provisioning site {} device {} failed: {e}",
                    cfg.device.site_id, cfg.device.device_id
                ),
                false,
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    for line in &summary {
        println!("{line}");
    }
    println!(
        "provisioned site {} device {} (AE title {})",
        cfg.device.site_id, cfg.device.device_id, cfg.dicom.ae_title
    );
    print_next_steps(&plan, target, file);
    let files: Vec<String> = plan
        .writes
        .iter()
        .map(|w| w.path.display().to_string())
        .collect();
    let removed: String = plan
        .removals
        .iter()
        .map(|r| format!("; removed {} ({})", r.path.display(), r.what))
        .collect();
    audit_provisioning(
        cfg,
        format!(
            "provisioned site {} device {}; wrote {}{removed}",
            cfg.device.site_id,
            cfg.device.device_id,
            files.join(", ")
        ),
        true,
    );
    Ok(ExitCode::SUCCESS)
}

/// The provisioning file (or the defaults when none is given) and the folder its relative
/// paths are read from; on an unreadable file the reason is printed and the exit code
/// (2) returned.
fn read_provisioning(
    file: Option<&std::path::Path>,
) -> Result<(provision::ProvisionFile, PathBuf), ExitCode> {
    let Some(path) = file else {
        return Ok((provision::ProvisionFile::default(), PathBuf::from(".")));
    };
    match provision::read_file(path) {
        Ok(f) => Ok((
            f,
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|| PathBuf::from(".")),
        )),
        Err(e) => {
            eprintln!("{e}");
            eprintln!("provisioning refused, nothing was written");
            Err(ExitCode::from(2))
        }
    }
}

/// Whether provisioning a first administrator must be refused: the box in `data_dir` has
/// an administrator already (said on stderr).
fn refuse_second_admin(data_dir: &std::path::Path) -> Result<bool> {
    let Some(name) = existing_admin(data_dir)? else {
        return Ok(false);
    };
    eprintln!(
        "admin: this box has an administrator already ({name:?} in {}); provisioning \
         creates the first administrator only: remove [admin] (or --admin) and manage \
         accounts with `duli user`",
        data_dir.display()
    );
    eprintln!("provisioning refused, nothing was written");
    Ok(true)
}

/// What to do after a provisioning run: finish the first administrator, check the box,
/// and wipe the medium the provisioning `file` came on.
fn print_next_steps(
    plan: &provision::Plan,
    target: &provision::Target,
    file: Option<&std::path::Path>,
) {
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
    if let Some(file) = file {
        println!(
            "reminder: {} and the files it names hold secrets (administrator password, \
             private keys, site secret): wipe the medium they came on",
            file.display()
        );
    }
}

/// Records a provisioning run, done or failed, in the audit trail of `cfg`'s data folder.
fn audit_provisioning(cfg: &duli::config::Config, detail: String, success: bool) {
    let mut event = Event::new(
        &duli::cli_audit::actor(),
        Action::ConfigChange,
        "provisioning",
    )
    .from("local")
    .detail(detail);
    if !success {
        event = event.failed();
    }
    duli::cli_audit::record(&cfg.device.data_dir, false, event);
}

/// The name of an administrator account in the store of `data_dir`, asked through the
/// running daemon or the store itself; `None` when there is none, or no store yet (a new
/// box: nothing is created to find out).
fn existing_admin(data_dir: &std::path::Path) -> Result<Option<String>> {
    if !data_dir.join("index").exists() {
        return Ok(None);
    }
    let users: Vec<duli::accounts::UserInfo> = runtime()?
        .block_on(duli::control::client::call(
            data_dir,
            duli::control::protocol::Request::UserList,
        ))
        .with_context(|| {
            format!(
                "cannot tell whether the box has an administrator (the accounts in {})",
                data_dir.display()
            )
        })?;
    Ok(users
        .into_iter()
        .find(|u| u.role == duli::accounts::Role::Admin)
        .map(|u| u.name))
}

/// `duli provision`.
#[derive(clap::Args)]
pub struct ProvisionArgs {
    /// Provisioning file (TOML, see config/provision.example.toml).
    pub file: Option<PathBuf>,
    /// The configuration file to write (its folder receives tls/, site_secret, ...).
    #[arg(long, default_value = "/etc/duli/duli.toml")]
    pub config: PathBuf,
    /// Test the configured connections instead: C-ECHO, MLLP, MQTT, clock.
    #[arg(long)]
    pub check: bool,
    /// Check everything and print what would be written, without writing.
    #[arg(long)]
    pub validate_only: bool,
    /// Root of the system files (time zone, timesyncd drop-in).
    #[arg(long, default_value = "/")]
    pub system_root: PathBuf,
    /// Service user owning private keys and secrets: only the configured one
    /// (`device.service_user`, default `duli`) is accepted.
    #[arg(long)]
    pub owner: Option<String>,
    /// Site identifier.
    #[arg(long)]
    pub site_id: Option<String>,
    /// Device identifier.
    #[arg(long)]
    pub device_id: Option<String>,
    /// This box's AE title.
    #[arg(long)]
    pub ae_title: Option<String>,
    /// Time zone (IANA name).
    #[arg(long)]
    pub timezone: Option<String>,
    /// NTP server (repeat for several).
    #[arg(long)]
    pub ntp: Vec<String>,
    /// Name of the first console administrator.
    #[arg(long)]
    pub admin: Option<String>,
    /// Data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds each --check test may take.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

/// `duli provision`: the connectivity check with `--check`, else the provisioning.
pub fn run(args: ProvisionArgs) -> Result<ExitCode> {
    if args.check {
        return check(&args.config, std::time::Duration::from_secs(args.timeout));
    }
    let overrides = duli::provision::Overrides {
        site_id: args.site_id,
        device_id: args.device_id,
        ae_title: args.ae_title,
        timezone: args.timezone,
        ntp: args.ntp,
        admin: args.admin,
        data_dir: args.data_dir,
    };
    let target = duli::provision::Target {
        config: args.config,
        system_root: args.system_root,
        owner: args.owner,
    };
    apply(
        args.file.as_deref(),
        &overrides,
        &target,
        args.validate_only,
    )
}
