//! `duli provision`: sets a box up in one step from a provisioning file (TOML) the
//! technician brings, or from flags.
//!
//! The order is fixed: read every input (the file, the certificates and keys it names, the
//! site secret) → check everything (the places written, the resulting configuration
//! through [`Config::validate`], each certificate and key, the key/certificate pairs, also
//! against the half already configured, time zone, NTP servers, firmware key
//! endorsements) → only then write: every file staged complete beside its target, then
//! renamed into place ([`stage`]), private keys and secrets with mode 0600 owned by the
//! configured service user. A refused input writes nothing; a write that fails says
//! exactly what was and was not replaced. Nothing secret is ever printed: output and
//! errors name keys and paths, never values of secrets.
//!
//! It runs as root, so nothing it is given may make it read or write elsewhere: the files
//! a provisioning file names are paths relative to it, inside its folder, read without
//! following a link, regular files of bounded size ([`source`]), each checked to be what
//! it claims (PEM certificates and keys; the site secret in a form the box uses); the
//! configuration folder, the system root and the data folder are absolute places only
//! root controls ([`paths`]); `--owner` may only name the configured service user
//! (`device.service_user`).
//!
//! The provisioning file (see `config/provision.example.toml`):
//!
//! - `[device]` `site_id`, `device_id` (required), `data_dir` (absolute), `site_secret_file`
//!   (a file to copy: the 32 bytes a daemon generated, or a line of 32 to 128 hex digits,
//!   kept as lower-case hex with one line end) or `generate_site_secret = true` (a secret
//!   the box has is kept);
//! - `[time]` `timezone`, `ntp` (servers);
//! - `[dicom]`, `[pacs]`, `[hl7]`, `[mqtt]`, `[console]`: exactly the keys of the same
//!   sections of `duli.toml`, merged over the existing configuration; `ca`, `cert` and
//!   `key` name PEM files relative to the provisioning file, copied to `<config dir>/tls/`;
//! - `[firmware]` `endorsements`: key endorsement files, accepted only when signed by a
//!   key built into this binary; `withdraw`: key ids whose endorsements are removed;
//! - `[admin]` `name` (and optionally `password`): the first console administrator, kept
//!   until the daemon's next start as a name and a PBKDF2 hash of the password (never the
//!   password itself) in `pending-admin.toml`; refused when the box has an administrator.

pub mod check;
pub mod material;
pub mod paths;
mod plan;
pub mod source;
pub mod stage;
pub mod system;

use crate::config::{Config, KeyError};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use plan::plan;

/// Name of the file holding the first administrator until the console creates it.
pub const PENDING_ADMIN: &str = "pending-admin.toml";

/// `[device]` of a provisioning file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    /// Site identifier.
    pub site_id: Option<String>,
    /// Device identifier.
    pub device_id: Option<String>,
    /// Data directory (default `/var/lib/duli`, or what the configuration has).
    pub data_dir: Option<PathBuf>,
    /// A file holding the site secret, copied to `<config dir>/site_secret` (0600).
    pub site_secret_file: Option<PathBuf>,
    /// Generate a new random site secret when the box has none: one it has (where its
    /// configuration names it, in its data folder, or in the configuration folder) is kept
    /// where it is, since a new one changes every pseudonym and result UID.
    #[serde(default)]
    pub generate_site_secret: bool,
}

/// `[time]` of a provisioning file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeSection {
    /// IANA time zone, e.g. `America/Sao_Paulo`.
    pub timezone: Option<String>,
    /// NTP servers of the site.
    #[serde(default)]
    pub ntp: Vec<String>,
}

/// `[firmware]` of a provisioning file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FirmwareSection {
    /// Key endorsement files (`*.endorsement.json`) to install.
    #[serde(default)]
    pub endorsements: Vec<PathBuf>,
    /// Key ids (16 hex digits, as `duli firmware verify` prints a signer) whose
    /// endorsements are withdrawn: every endorsement file of those keys is removed from
    /// `firmware.endorsed_keys`, so the box stops trusting them before a release revokes
    /// them.
    #[serde(default)]
    pub withdraw: Vec<String>,
}

/// `[admin]` of a provisioning file: the first console administrator.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PendingAdmin {
    /// User name.
    pub name: String,
    /// Initial password; only its hash is written (see [`ProvisionedAdmin`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// The pending first administrator as written beside `duli.toml` ([`PENDING_ADMIN`], 0600)
/// for the daemon to create at its next start: the name and the password's hash in the
/// accounts' format, never the password.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProvisionedAdmin {
    /// User name.
    pub name: String,
    /// PBKDF2 hash of the initial password, when the provisioning file gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<crate::accounts::PasswordHash>,
    /// The plain initial password of a file written by an older version; read (and hashed
    /// at start) only so such a file is still consumed, never written.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
}

impl ProvisionedAdmin {
    /// Whether the file carries a credential (a hash, or an older version's password), so
    /// the account can be created without the console's first-time setup.
    pub fn has_credential(&self) -> bool {
        self.password_hash.is_some() || self.password.is_some()
    }

    /// The password hash to create the account with: the stored one, or the hash of an
    /// older version's plain password. A stored hash of other parameters than the
    /// product's (one iteration: a weak credential; billions: a login that ties up the
    /// password checks for hours) is refused, as the control socket refuses it.
    pub fn credential(
        &self,
    ) -> Result<Option<crate::accounts::PasswordHash>, crate::accounts::UserError> {
        match (&self.password_hash, &self.password) {
            (Some(h), _) if !h.is_ours() => {
                Err(crate::accounts::UserError::BadHash(self.name.clone()))
            }
            (Some(h), _) => Ok(Some(h.clone())),
            (None, Some(p)) => crate::accounts::hash_password(p).map(Some),
            (None, None) => Ok(None),
        }
    }
}

impl std::fmt::Debug for ProvisionedAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionedAdmin")
            .field("name", &self.name)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<hash>"),
            )
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Debug for PendingAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAdmin")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A provisioning file as read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionFile {
    /// Identity and data.
    #[serde(default)]
    pub device: DeviceSection,
    /// Clock.
    #[serde(default)]
    pub time: TimeSection,
    /// `[dicom]` keys of `duli.toml`.
    pub dicom: Option<toml::Table>,
    /// `[pacs]` keys of `duli.toml`.
    pub pacs: Option<toml::Table>,
    /// `[hl7]` keys of `duli.toml`.
    pub hl7: Option<toml::Table>,
    /// `[mqtt]` keys of `duli.toml`.
    pub mqtt: Option<toml::Table>,
    /// `[console]` keys of `duli.toml`.
    pub console: Option<toml::Table>,
    /// Firmware key endorsements.
    #[serde(default)]
    pub firmware: FirmwareSection,
    /// The first administrator.
    pub admin: Option<PendingAdmin>,
}

/// Values given as flags; each overrides the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--site-id`.
    pub site_id: Option<String>,
    /// `--device-id`.
    pub device_id: Option<String>,
    /// `--ae-title`.
    pub ae_title: Option<String>,
    /// `--timezone`.
    pub timezone: Option<String>,
    /// `--ntp` (replaces the file's list when given).
    pub ntp: Vec<String>,
    /// `--admin`.
    pub admin: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
}

/// Where provisioning writes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The configuration file (`/etc/duli/duli.toml`); its folder receives `tls/`,
    /// `site_secret` and the pending administrator.
    pub config: PathBuf,
    /// Root of the system files (time zone, timesyncd drop-in); `/` on a box.
    pub system_root: PathBuf,
    /// The service user asked for (`--owner`): it must be the configured one
    /// (`device.service_user`, default `duli`), which owns private keys and secrets; `None`
    /// takes the configured one. When that user does not exist the files keep the invoking
    /// user's ownership.
    pub owner: Option<String>,
}

impl Target {
    fn config_dir(&self) -> PathBuf {
        match self.config.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

/// Why provisioning refused to write.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The provisioning file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The provisioning file does not parse (the message names the key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// One or more values are refused; nothing was written.
    #[error("provisioning refused, nothing was written:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<KeyError>),
    /// Writing failed (every file is complete, old or new; the message names each).
    #[error("writing failed: {0}")]
    Write(#[from] stage::ApplyError),
}

/// One file provisioning will remove.
#[derive(Debug, Clone)]
pub struct Removal {
    /// The file.
    pub path: PathBuf,
    /// What it is, for the summary.
    pub what: String,
}

/// One file provisioning will write.
#[derive(Clone)]
pub struct Write {
    /// Destination.
    pub path: PathBuf,
    /// Content.
    pub bytes: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Owned by the service user (private keys, secrets).
    pub private: bool,
    /// What it is, for the summary (never the content).
    pub what: String,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {:o})",
            self.path.display(),
            self.what,
            self.mode
        )
    }
}

/// Everything checked and ready to write.
#[derive(Debug)]
pub struct Plan {
    /// The configuration that will be in effect.
    pub config: Config,
    /// Files to write, in order (the configuration last).
    pub writes: Vec<Write>,
    /// Files to remove once every file is written (withdrawn key endorsements).
    pub removals: Vec<Removal>,
    /// The time zone to link `/etc/localtime` to.
    pub timezone: Option<String>,
    /// The first administrator, if the file names one.
    pub admin: Option<PendingAdmin>,
    target: Target,
}

/// Reads a provisioning file.
pub fn read_file(path: &Path) -> Result<ProvisionFile, ProvisionError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProvisionError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // The parser's own Display quotes the offending line, which may hold a secret: only
    // its message and the line number are shown.
    toml::from_str(&text).map_err(|e| ProvisionError::Parse {
        path: path.display().to_string(),
        message: format!(
            "{}{}",
            e.message().trim_end(),
            e.span()
                .map(|s| format!(
                    " (line {})",
                    text[..s.start.min(text.len())].matches('\n').count() + 1
                ))
                .unwrap_or_default()
        ),
    })
}

/// The (uid, gid) of the service user, if it exists.
fn owner_ids(owner: Option<&str>) -> Option<(u32, u32)> {
    let name = owner?;
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Some((u.uid.as_raw(), u.gid.as_raw())),
        _ => None,
    }
}

/// Writes a checked plan: every file staged complete beside its target, then all renamed
/// into place in order ([`stage::put_in_place`]), private ones 0600 and owned by the
/// service user when it exists; then the time zone link and the data folder. Returns the
/// lines of the summary (paths and what they are, never contents); a failure says which
/// files were replaced and which were not.
pub fn apply(plan: &Plan) -> Result<Vec<String>, ProvisionError> {
    let owner = owner_ids(plan.target.owner.as_deref());
    let mut summary = Vec::new();
    if plan.target.owner.is_some() && owner.is_none() && nix::unistd::geteuid().is_root() {
        summary.push(format!(
            "note: service user {:?} does not exist here; private files stay owned by root",
            plan.target.owner.as_deref().unwrap_or_default()
        ));
    }
    let entries: Vec<stage::Entry<'_>> = plan
        .writes
        .iter()
        .map(|w| stage::Entry {
            path: &w.path,
            bytes: &w.bytes,
            mode: w.mode,
            owner: if w.private { owner } else { None },
        })
        .collect();
    stage::put_in_place(&entries)?;
    for w in &plan.writes {
        summary.push(format!(
            "wrote {} ({}, mode {:o})",
            w.path.display(),
            w.what,
            w.mode
        ));
    }
    // Past this point every file is replaced: a failure names what is left undone.
    let after = |cause: fsutil::WriteError, undone: PathBuf| stage::ApplyError {
        cause,
        replaced: plan.writes.iter().map(|w| w.path.clone()).collect(),
        not_replaced: vec![undone],
    };
    for r in &plan.removals {
        let folder = r.path.parent().unwrap_or(Path::new("."));
        match std::fs::remove_file(&r.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(after(
                    fsutil::WriteError {
                        path: r.path.clone(),
                        source,
                    },
                    r.path.clone(),
                )
                .into())
            }
        }
        fsutil::sync_dir(folder).map_err(|e| after(e, r.path.clone()))?;
        summary.push(format!("removed {} ({})", r.path.display(), r.what));
    }
    if let Some(tz) = &plan.timezone {
        let link = system::redirect(&plan.target.system_root, "etc/localtime");
        system::link_localtime(&link, tz).map_err(|e| after(e, link.clone()))?;
        summary.push(format!("linked {} to {tz}", link.display()));
    }
    // The data directory belongs to the service user.
    let data = &plan.config.device.data_dir;
    if !data.exists() {
        let failed = |source| {
            after(
                fsutil::WriteError {
                    path: data.clone(),
                    source,
                },
                data.clone(),
            )
        };
        std::fs::create_dir_all(data).map_err(failed)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(data, Some(uid), Some(gid)).map_err(failed)?;
        }
        summary.push(format!("created data directory {}", data.display()));
    }
    Ok(summary)
}

/// Reads the pending first administrator left by provisioning in `config_dir`, without
/// removing it. An empty file (one the service user could only truncate) counts as none.
pub fn read_pending_admin(config_dir: &Path) -> std::io::Result<Option<ProvisionedAdmin>> {
    let path = config_dir.join(PENDING_ADMIN);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let admin: ProvisionedAdmin = toml::from_str(&text).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.message().to_string())
    })?;
    Ok(Some(admin))
}

/// Reads and removes the pending first administrator left by provisioning in
/// `config_dir`, for the console to create the account. When the folder belongs to root
/// and the caller is the service user (the file's owner), the file cannot be unlinked: it
/// is emptied instead, so the password's hash does not outlive the daemon's start.
pub fn take_pending_admin(config_dir: &Path) -> std::io::Result<Option<ProvisionedAdmin>> {
    let Some(admin) = read_pending_admin(config_dir)? else {
        return Ok(None);
    };
    let path = config_dir.join(PENDING_ADMIN);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            file.set_len(0)?;
            file.sync_all()?;
        }
        Err(e) => return Err(e),
    }
    Ok(Some(admin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::{PRIVATE, PUBLIC};

    fn write(path: PathBuf, bytes: &[u8], private: bool) -> Write {
        Write {
            path,
            bytes: bytes.to_vec(),
            mode: if private { PRIVATE } else { PUBLIC },
            private,
            what: "test file".into(),
        }
    }

    fn plan_of(dir: &Path, writes: Vec<Write>) -> Plan {
        let mut config = Config::default();
        config.device.data_dir = dir.join("data");
        Plan {
            config,
            writes,
            removals: Vec::new(),
            timezone: None,
            admin: None,
            target: Target {
                config: dir.join("etc/duli.toml"),
                system_root: dir.join("root"),
                owner: None,
            },
        }
    }

    /// A provisioned administrator's hash of other parameters than the product's (one
    /// iteration, billions) is no credential: the account is not made from it.
    #[test]
    fn a_provisioned_hash_of_other_parameters_is_refused() {
        let ours = crate::accounts::users::test_hash(1);
        let admin = |iterations| ProvisionedAdmin {
            name: "ada".into(),
            password_hash: Some(crate::accounts::PasswordHash {
                iterations,
                ..ours.clone()
            }),
            password: None,
        };
        assert_eq!(
            admin(ours.iterations).credential().ok().flatten(),
            Some(ours.clone())
        );
        for iterations in [1, u32::MAX] {
            assert!(
                matches!(
                    admin(iterations).credential(),
                    Err(crate::accounts::UserError::BadHash(name)) if name == "ada"
                ),
                "{iterations} iterations"
            );
        }
    }

    /// A write that fails while staging leaves every file as it was; one that fails while
    /// the staged files are put in place says which were replaced and which were not, and
    /// leaves no temporary file behind.
    #[test]
    fn a_failed_write_replaces_nothing_or_says_what_it_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(etc.join("tls")).unwrap();
        std::fs::write(etc.join("tls/dicom.key"), b"old key").unwrap();
        std::fs::write(etc.join("site_secret"), b"old secret").unwrap();
        // Staging fails: the folder of the third file is a regular file.
        std::fs::write(etc.join("blocker"), b"").unwrap();
        let plan = plan_of(
            dir.path(),
            vec![
                write(etc.join("tls/dicom.key"), b"new key", true),
                write(etc.join("site_secret"), b"new secret", true),
                write(etc.join("blocker/duli.toml"), b"config", false),
            ],
        );
        let err = apply(&plan).unwrap_err().to_string();
        assert_eq!(
            std::fs::read(etc.join("tls/dicom.key")).unwrap(),
            b"old key"
        );
        assert_eq!(
            std::fs::read(etc.join("site_secret")).unwrap(),
            b"old secret"
        );
        assert!(err.contains("nothing was replaced"), "{err}");

        // Putting in place fails at the second file (a folder stands at its name).
        std::fs::remove_file(etc.join("site_secret")).unwrap();
        std::fs::create_dir_all(etc.join("site_secret/x")).unwrap();
        let plan = plan_of(
            dir.path(),
            vec![
                write(etc.join("tls/dicom.key"), b"new key", true),
                write(etc.join("site_secret"), b"new secret", true),
                write(etc.join("duli.toml"), b"config", false),
            ],
        );
        let err = apply(&plan).unwrap_err().to_string();
        assert_eq!(
            std::fs::read(etc.join("tls/dicom.key")).unwrap(),
            b"new key"
        );
        assert!(!etc.join("duli.toml").exists());
        let replaced = err.find("replaced:").expect(&err);
        let kept = err.find("not replaced:").expect(&err);
        assert!(err[replaced..kept].contains("tls/dicom.key"), "{err}");
        assert!(
            err[kept..].contains("site_secret") && err[kept..].contains("duli.toml"),
            "{err}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&etc)
            .unwrap()
            .chain(std::fs::read_dir(etc.join("tls")).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
