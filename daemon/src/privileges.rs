//! Dropping root: `duli run` started as root (by hand or from a script, outside a systemd
//! unit that sets `User=`) binds its listeners — port 104 needs root — then switches to
//! the service user (`device.service_user`, default `duli`) before it opens the store, so
//! nothing it writes belongs to root and a flaw in a protocol handler does not hand out
//! root. The order: look the user up, bind, prepare the data directory (created and given
//! to the user when new), supplementary groups (`initgroups`), `setgid`, `setuid`, then a
//! check that root cannot be regained. Runs before the async runtime starts, so the
//! process has one thread when its credentials change.
//!
//! A missing service user is an error unless `--allow-root` or `device.allow_root = true`
//! asks to stay root.

use crate::config::Config;
use crate::listeners::Prebound;
use nix::unistd::{self, Gid, Uid, User};
use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the daemon could not switch to the service user.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The configured service user does not exist.
    #[error(
        "duli run was started as root and the service user {0:?} (device.service_user) does \
         not exist: create it (e.g. `useradd --system --no-create-home duli`), name another \
         one in device.service_user, or run as root on purpose with --allow-root or \
         device.allow_root = true"
    )]
    NoSuchUser(String),
    /// Looking the user up failed.
    #[error("cannot look up the service user {name:?}: {source}")]
    Lookup {
        /// The user name.
        name: String,
        /// Why.
        source: nix::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which keys configure it.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory cannot be handed to the service user.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A credential change failed.
    #[error("cannot switch to the service user {name:?}: {step} failed: {source}")]
    Switch {
        /// The user name.
        name: String,
        /// `initgroups`, `setgid` or `setuid`.
        step: &'static str,
        /// Why.
        source: nix::Error,
    },
    /// Root could be regained after `setuid`.
    #[error("after switching to {0:?} the process could become root again; refusing to run")]
    Regained(String),
}

/// What [`enter_service_user`] did.
#[derive(Debug)]
pub enum Outcome {
    /// Not started as root: nothing to do.
    NotRoot,
    /// Started as root and told to stay root.
    StayedRoot,
    /// Switched to the service user (uid, gid).
    Switched {
        /// The user name.
        name: String,
        /// Its uid.
        uid: u32,
        /// Its primary gid.
        gid: u32,
    },
}

fn bind(addr: SocketAddr, what: &'static str) -> Result<std::net::TcpListener, PrivilegeError> {
    std::net::TcpListener::bind(addr).map_err(|source| PrivilegeError::Bind { what, addr, source })
}

/// Binds the daemon's listeners as configured.
fn bind_all(config: &Config) -> Result<Prebound, PrivilegeError> {
    let dicom = SocketAddr::new(config.dicom.bind, config.dicom.port);
    let console = SocketAddr::new(config.console.bind, config.console.port);
    let tls = SocketAddr::new(config.dicom.bind, config.dicom.tls_port);
    Ok(Prebound {
        dicom: if config.dicom.plain {
            Some(bind(dicom, "DICOM (dicom.bind, dicom.port)")?)
        } else {
            None
        },
        dicom_tls: if config.dicom.tls {
            Some(bind(tls, "DICOM TLS (dicom.bind, dicom.tls_port)")?)
        } else {
            None
        },
        console: Some(bind(console, "the console (console.bind, console.port)")?),
    })
}

/// Creates the data directory for `user` when it is missing, and hands it over when it
/// belongs to root and is still empty. A root-owned directory with content is refused:
/// the service user could not write it, and chowning someone's files is not ours to do.
pub fn prepare_data_dir(dir: &Path, user: &User) -> Result<(), PrivilegeError> {
    let fail = |reason: String| PrivilegeError::DataDir {
        path: dir.to_path_buf(),
        reason,
    };
    let fresh = match std::fs::metadata(dir) {
        Ok(meta) if meta.uid() != 0 => return Ok(()),
        Ok(_) => std::fs::read_dir(dir)
            .map_err(|e| fail(e.to_string()))?
            .next()
            .is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create: {e}")))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
                .map_err(|e| fail(e.to_string()))?;
            true
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    if !fresh {
        return Err(fail(format!(
            "belongs to root and is not empty; the service user {:?} could not write it \
             (hand it over with `chown -R {}: {}`, or run as root with --allow-root)",
            user.name,
            user.name,
            dir.display()
        )));
    }
    unistd::chown(dir, Some(user.uid), Some(user.gid))
        .map_err(|e| fail(format!("cannot give it to {:?}: {e}", user.name)))
}

/// Refuses a data directory that another user than the one this process runs as owns, or
/// that its group or others may write: they could replace the store, the received files or
/// the site secret under the daemon. A missing directory is fine (the store creates it).
pub fn check_data_dir(dir: &Path) -> Result<(), PrivilegeError> {
    let fail = |reason: String| PrivilegeError::DataDir {
        path: dir.to_path_buf(),
        reason,
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fail(e.to_string())),
    };
    let me = unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(fail(format!(
            "belongs to uid {}, but the daemon runs as uid {me}; it opens only a data \
             directory of its own (hand it over with `chown -R`)",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(fail(format!(
            "is writable by its group or by others (mode {mode:o}); restrict it with \
             `chmod go-w {}`",
            dir.display()
        )));
    }
    Ok(())
}

/// Switches the process's credentials to `user`: supplementary groups, gid, uid; then
/// checks that uid 0 cannot be taken back.
pub fn switch_to(user: &User) -> Result<(), PrivilegeError> {
    let step = |step: &'static str| {
        let name = user.name.clone();
        move |source| PrivilegeError::Switch { name, step, source }
    };
    let cname = CString::new(user.name.as_str())
        .map_err(|_| PrivilegeError::NoSuchUser(user.name.clone()))?;
    unistd::initgroups(&cname, user.gid).map_err(step("initgroups"))?;
    unistd::setgid(user.gid).map_err(step("setgid"))?;
    unistd::setuid(user.uid).map_err(step("setuid"))?;
    if unistd::setuid(Uid::from_raw(0)).is_ok() || unistd::setgid(Gid::from_raw(0)).is_ok() {
        return Err(PrivilegeError::Regained(user.name.clone()));
    }
    Ok(())
}

/// When running as root: binds the listeners, prepares the data directory and switches
/// to `device.service_user`, unless `allow_root` (or `device.allow_root`) keeps root.
/// Returns the listeners to hand to [`crate::daemon::run_with`].
pub fn enter_service_user(
    config: &Config,
    allow_root: bool,
) -> Result<(Prebound, Outcome), PrivilegeError> {
    if !unistd::geteuid().is_root() {
        return Ok((Prebound::default(), Outcome::NotRoot));
    }
    let name = config.device.service_user.clone();
    let user = match User::from_name(&name) {
        Ok(Some(u)) => Some(u),
        Ok(None) => None,
        Err(source) => return Err(PrivilegeError::Lookup { name, source }),
    };
    if allow_root || config.device.allow_root {
        log::warn!(
            "running as root ({}): the service user {name:?} is not used",
            if allow_root {
                "--allow-root"
            } else {
                "device.allow_root = true"
            }
        );
        return Ok((Prebound::default(), Outcome::StayedRoot));
    }
    let user = user.ok_or_else(|| PrivilegeError::NoSuchUser(name.clone()))?;
    let prebound = bind_all(config)?;
    prepare_data_dir(&config.device.data_dir, &user)?;
    switch_to(&user)?;
    log::info!(
        "started as root: listeners bound, now running as {name:?} (uid {}, gid {})",
        user.uid,
        user.gid
    );
    Ok((
        prebound,
        Outcome::Switched {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        },
    ))
}
