//! Audit records of technician commands run from the command line (firmware, provisioning):
//! appended through the running daemon's control socket, or on the store directly when no
//! daemon runs (by root: in a child running as the data folder's owner).

use crate::audit::Event;
use crate::control;
use std::path::Path;

/// Who runs the command, for the audit trail: the invoking user (`SUDO_USER` first).
pub fn actor() -> String {
    if let Ok(user) = std::env::var("SUDO_USER") {
        if !user.is_empty() {
            return format!("cli:{user}");
        }
    }
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => format!("cli:{}", u.name),
        _ => format!("cli:uid{uid}"),
    }
}

/// Appends a record to the audit trail of `data_dir`. When `only_if_present` and the data
/// directory does not exist (a build machine), nothing is recorded. Failures are printed
/// as warnings: the action itself already happened.
pub fn record(data_dir: &Path, only_if_present: bool, event: Event) {
    if only_if_present && !data_dir.is_dir() {
        log::debug!("no data directory {}: not audited", data_dir.display());
        return;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warning: audit trail not written: {e}");
            return;
        }
    };
    // Root writes through the daemon, or as the folder's owner (see `control::client`):
    // nothing it leaves behind needs handing back.
    if let Err(e) = rt.block_on(control::record_audit(data_dir, event)) {
        eprintln!("warning: audit trail not written: {e}");
    }
}
