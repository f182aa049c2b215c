//! The store commands (`status`, `reindex`, `studies`, `instances`, `audit`, `outbox`,
//! `user`): each a control [`Request`] through the running daemon, or on the store when
//! none runs, its typed answer printed.

use super::password::read_new_password;
use super::{box_config, load_config, runtime, APPLIANCE_CONFIG};
use anyhow::Result;
use clap::Subcommand;
use duli::control::{self, client, Request, Response};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum AuditAction {
    /// Check the hash chain; prints the first broken link and exits 1 if there is one.
    Verify,
}

#[derive(Subcommand)]
pub enum OutboxAction {
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
pub enum UserAction {
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

/// Runs `req` and prints its answer as JSON.
pub fn print_answer(config: Option<PathBuf>, req: Request) -> Result<ExitCode> {
    let config = box_config(config, std::path::Path::new(APPLIANCE_CONFIG));
    let cfg = load_config(config.as_deref())?;
    let resp = runtime()?.block_on(control::run_request(&cfg.device.data_dir, req))?;
    match resp {
        Response::Ok { data } => {
            println!("{}", serde_json::to_string_pretty(&data.value())?);
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => {
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// A refusal printed, and the failure exit code.
fn refused(e: client::ClientError) -> Result<ExitCode> {
    match e {
        client::ClientError::Refused(message) => {
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
        e => Err(e.into()),
    }
}

/// `duli audit verify`: exit 1 with the first broken link when the chain is broken.
pub fn audit(action: AuditAction, config: Option<PathBuf>) -> Result<ExitCode> {
    let AuditAction::Verify = action;
    let config = box_config(config, std::path::Path::new(APPLIANCE_CONFIG));
    let cfg = load_config(config.as_deref())?;
    let report = match runtime()?.block_on(client::audit_verify(&cfg.device.data_dir)) {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    if report.intact {
        println!(
            "audit trail intact: {} record(s), head {}",
            report.records,
            report.head.as_deref().unwrap_or("-")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (seq, reason) = report
        .first_broken
        .map_or((None, String::new()), |b| (Some(b.seq), b.reason));
    println!(
        "audit trail BROKEN at record {}: {reason}",
        seq.map_or("null".to_string(), |s| s.to_string())
    );
    Ok(ExitCode::FAILURE)
}

/// `duli outbox list|retry`.
pub fn outbox(action: OutboxAction, config: Option<PathBuf>) -> Result<ExitCode> {
    let config = box_config(config, std::path::Path::new(APPLIANCE_CONFIG));
    let cfg = load_config(config.as_deref())?;
    let data_dir = &cfg.device.data_dir;
    let rt = runtime()?;
    let done = match action {
        OutboxAction::List { dest } => rt
            .block_on(client::outbox_list(data_dir, dest))
            .map(|listing| print!("{}", listing.table)),
        OutboxAction::Retry { selector } => rt
            .block_on(client::outbox_retry(data_dir, selector))
            .map(|r| println!("re-queued {}", r.requeued)),
    };
    match done {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => refused(e),
    }
}

/// `duli user add|list`: the password is hashed here; only the hash travels.
pub fn user(action: UserAction, config: Option<PathBuf>) -> Result<ExitCode> {
    match action {
        UserAction::Add { name, role } => {
            let role: duli::accounts::Role = role.parse()?;
            duli::accounts::check_name(&name)?;
            let password = read_new_password()?;
            let password_hash = duli::accounts::hash_password(&password)?;
            print_answer(
                config,
                Request::UserAdd {
                    name,
                    role,
                    password_hash,
                },
            )
        }
        UserAction::List => print_answer(config, Request::UserList),
    }
}
