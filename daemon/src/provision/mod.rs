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
//!   (a file to copy: the 32 bytes a daemon generated, or a line of 32 to 128 hex digits)
//!   or `generate_site_secret = true`;
//! - `[time]` `timezone`, `ntp` (servers);
//! - `[dicom]`, `[pacs]`, `[hl7]`, `[mqtt]`, `[console]`: exactly the keys of the same
//!   sections of `duli.toml`, merged over the existing configuration; `ca`, `cert` and
//!   `key` name PEM files relative to the provisioning file, copied to `<config dir>/tls/`;
//! - `[firmware]` `endorsements`: key endorsement files, accepted only when signed by a
//!   key built into this binary;
//! - `[admin]` `name` (and optionally `password`): the first console administrator, kept
//!   until the daemon's next start as a name and a PBKDF2 hash of the password (never the
//!   password itself) in `pending-admin.toml`; refused when the box has an administrator.

pub mod check;
pub mod material;
pub mod paths;
pub mod source;
pub mod stage;
pub mod system;

use crate::config::{Config, KeyError};
use crate::fsutil::{self, PRIVATE, PUBLIC};
use serde::{Deserialize, Serialize};
use source::Folder;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// Generate a new random site secret when the box has none.
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
    /// older version's plain password.
    pub fn credential(
        &self,
    ) -> Result<Option<crate::accounts::PasswordHash>, crate::accounts::UserError> {
        match (&self.password_hash, &self.password) {
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
    /// The time zone to link `/etc/localtime` to.
    pub timezone: Option<String>,
    /// The first administrator, if the file names one.
    pub admin: Option<PendingAdmin>,
    target: Target,
}

/// The key of each TLS file of each section: (section, key, private).
const MATERIAL: [(&str, &str, bool); 11] = [
    ("dicom", "ca", false),
    ("dicom", "cert", false),
    ("dicom", "key", true),
    ("hl7", "ca", false),
    ("hl7", "cert", false),
    ("hl7", "key", true),
    ("mqtt", "ca", false),
    ("mqtt", "cert", false),
    ("mqtt", "key", true),
    ("console", "cert", false),
    ("console", "key", true),
];

/// The role of a TLS file key (`ca`, `cert` or `key`, with or without a `tls_` prefix).
fn key_role(key: &str) -> &'static str {
    match key.trim_start_matches("tls_") {
        "ca" => "ca",
        "key" => "key",
        _ => "cert",
    }
}

/// One TLS file key of the provisioning file.
struct Slot {
    /// The table holding the key, as the configuration names it (`hl7`,
    /// `pacs.destinations[0]`).
    owner: String,
    /// The key (`ca`, `tls_key`, ...).
    key: &'static str,
    /// `ca`, `cert` or `key`.
    role: &'static str,
    /// The copy's file name under `<config>/tls/`.
    file: String,
    /// What it is, for the summary.
    what: String,
}

/// The TLS files named in the provisioning file: read from beside it, copied to
/// `<config>/tls/`.
struct Material<'a> {
    /// The provisioning file's folder, inside which the files are.
    folder: &'a Folder,
    /// `<config>/tls`.
    tls_dir: PathBuf,
    /// The copies to write.
    writes: Vec<Write>,
    /// What was read, by (owner, role): (key name, bytes), to check that certificates
    /// and keys parse and match.
    read: BTreeMap<(String, &'static str), (String, Vec<u8>)>,
}

impl Material<'_> {
    /// Reads the file `table[slot.key]` names, if any: `table` (written) then points at
    /// the copy, `checked` (validated now) at the source; the copy is queued, private keys
    /// 0600. A value that is not a path or a file that cannot be read is reported to `bad`.
    fn take(
        &mut self,
        slot: Slot,
        table: &mut toml::Table,
        checked: &mut toml::Table,
        bad: &mut impl FnMut(&str, String),
    ) {
        let Some(value) = table.get(slot.key) else {
            return;
        };
        let name = format!("{}.{}", slot.owner, slot.key);
        let Some(rel) = value.as_str().map(PathBuf::from) else {
            bad(&name, "must be a file path".into());
            return;
        };
        let cap = if slot.role == "key" {
            source::MAX_KEY
        } else {
            source::MAX_CERTIFICATES
        };
        let path = self.folder.show(&rel);
        match self.folder.read(&rel, cap) {
            Ok(bytes) => {
                let dest = self.tls_dir.join(&slot.file);
                checked.insert(slot.key.into(), path.display().to_string().into());
                table.insert(slot.key.into(), dest.display().to_string().into());
                let private = slot.role == "key";
                self.writes.push(Write {
                    path: dest,
                    bytes: bytes.clone(),
                    mode: if private { PRIVATE } else { PUBLIC },
                    private,
                    what: slot.what,
                });
                self.read.insert((slot.owner, slot.role), (name, bytes));
            }
            Err(e) => bad(&name, format!("{}: {e}", rel.display())),
        }
    }
}

/// The tables of `[[pacs.destinations]]` in the `pacs` section, if any.
fn destinations(pacs: Option<&mut toml::Table>) -> Vec<&mut toml::Table> {
    pacs.and_then(|p| p.get_mut("destinations"))
        .and_then(toml::Value::as_array_mut)
        .map(|a| a.iter_mut().filter_map(toml::Value::as_table_mut).collect())
        .unwrap_or_default()
}

/// The file the configuration on the box names for `role` (`cert` or `key`) of the
/// section `owner`, read as `(name for messages, bytes)`: `None` when it names none (or
/// the section is a PACS destination, whose table the provisioning file replaces whole),
/// `Some(Err)` when it names one that cannot be read. A relative path resolves against the
/// configuration's folder, as the daemon resolves it.
fn configured(
    base: &toml::Table,
    config_dir: &Path,
    owner: &str,
    role: &str,
) -> Option<Result<(String, Vec<u8>), PartnerUnreadable>> {
    let value = base.get(owner)?.get(role)?.as_str()?;
    let path = config_dir.join(value);
    let cap = if role == "key" {
        source::MAX_KEY
    } else {
        source::MAX_CERTIFICATES
    };
    let name = format!("{owner}.{role} (configured: {})", path.display());
    Some(
        source::read_nofollow(&path, cap)
            .map(|bytes| (name.clone(), bytes))
            .map_err(|source| PartnerUnreadable { name, source }),
    )
}

/// The configured partner of a key or certificate being provisioned cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot check against {name}: {source}")]
struct PartnerUnreadable {
    /// The partner, for messages.
    name: String,
    /// Why it cannot be read.
    source: source::SourceError,
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

fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Checks everything and prepares the writes; touches nothing on disk.
pub fn plan(
    file: ProvisionFile,
    file_dir: &Path,
    overrides: &Overrides,
    target: &Target,
) -> Result<Plan, ProvisionError> {
    // Where it writes: absolute, as the daemon resolves them, and places root controls.
    let target = &Target {
        config: paths::absolute(&target.config),
        system_root: paths::absolute(&target.system_root),
        owner: target.owner.clone(),
    };
    let mut refused = Vec::new();
    if let Err(e) = paths::check_config(&target.config) {
        refused.push(KeyError {
            key: "--config".into(),
            reason: e.to_string(),
        });
    }
    if let Err(e) = paths::check_folder(&target.system_root, None) {
        refused.push(KeyError {
            key: "--system-root".into(),
            reason: e.to_string(),
        });
    }
    if !refused.is_empty() {
        return Err(ProvisionError::Invalid(refused));
    }
    let folder = Folder::open(file_dir).map_err(|e| {
        ProvisionError::Invalid(vec![KeyError {
            key: "provisioning file".into(),
            reason: format!("cannot open its folder {}: {e}", file_dir.display()),
        }])
    })?;
    let mut errs: Vec<KeyError> = Vec::new();
    let mut bad = |key: &str, reason: String| {
        errs.push(KeyError {
            key: key.to_string(),
            reason,
        })
    };
    let config_dir = target.config_dir();

    // The base: the configuration on the box, if any (as written, no environment).
    let mut base = match std::fs::read_to_string(&target.config) {
        Ok(text) => text
            .parse::<toml::Table>()
            .map_err(|e| ProvisionError::Parse {
                path: target.config.display().to_string(),
                message: e.message().to_string(),
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(source) => {
            return Err(ProvisionError::Read {
                path: target.config.clone(),
                source,
            })
        }
    };

    // [device]
    let dev = &file.device;
    let site_id = overrides.site_id.clone().or_else(|| dev.site_id.clone());
    let device_id = overrides
        .device_id
        .clone()
        .or_else(|| dev.device_id.clone());
    let mut device = toml::Table::new();
    match site_id {
        Some(s) => {
            device.insert("site_id".into(), s.into());
        }
        None => bad(
            "device.site_id",
            "required (in the provisioning file or --site-id)".into(),
        ),
    }
    match device_id {
        Some(s) => {
            device.insert("device_id".into(), s.into());
        }
        None => bad(
            "device.device_id",
            "required (in the provisioning file or --device-id)".into(),
        ),
    }
    let has_data_dir = base.get("device").and_then(|d| d.get("data_dir")).is_some();
    if let Some(d) = overrides.data_dir.clone().or_else(|| dev.data_dir.clone()) {
        if d.is_relative() {
            bad(
                "device.data_dir",
                format!(
                    "{} is relative: give an absolute path (the daemon resolves a relative one \
                     against the configuration's folder, not the working directory)",
                    d.display()
                ),
            );
        }
        device.insert("data_dir".into(), d.display().to_string().into());
    } else if !has_data_dir {
        device.insert("data_dir".into(), "/var/lib/duli".into());
    }
    let mut writes = Vec::new();
    let secret_dest = config_dir.join("site_secret");
    match (&dev.site_secret_file, dev.generate_site_secret) {
        (Some(_), true) => bad(
            "device.site_secret_file",
            "give either site_secret_file or generate_site_secret, not both".into(),
        ),
        (Some(p), false) => match folder
            .read(p, source::MAX_SECRET)
            .map_err(|e| format!("{}: {e}", p.display()))
            .and_then(|bytes| {
                material::site_secret("device.site_secret_file", &bytes)
                    .map(|()| bytes)
                    .map_err(|e| format!("{}: {}", p.display(), e.reason))
            }) {
            Ok(bytes) => {
                writes.push(Write {
                    path: secret_dest.clone(),
                    bytes,
                    mode: PRIVATE,
                    private: true,
                    what: "site secret".into(),
                });
                device.insert(
                    "site_secret".into(),
                    secret_dest.display().to_string().into(),
                );
            }
            Err(reason) => bad("device.site_secret_file", reason),
        },
        (None, true) => {
            if !secret_dest.exists() {
                let mut raw = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
                writes.push(Write {
                    path: secret_dest.clone(),
                    bytes: format!("{}\n", hex::encode(raw)).into_bytes(),
                    mode: PRIVATE,
                    private: true,
                    what: "site secret (generated)".into(),
                });
            }
            device.insert(
                "site_secret".into(),
                secret_dest.display().to_string().into(),
            );
        }
        (None, false) => {}
    }

    // Sections copied from the file; TLS files read now, written to <config>/tls/.
    let mut sections: BTreeMap<&str, toml::Table> = BTreeMap::new();
    for (name, table) in [
        ("dicom", &file.dicom),
        ("pacs", &file.pacs),
        ("hl7", &file.hl7),
        ("mqtt", &file.mqtt),
        ("console", &file.console),
    ] {
        if let Some(t) = table {
            sections.insert(name, t.clone());
        }
    }
    if let Some(ae) = &overrides.ae_title {
        sections
            .entry("dicom")
            .or_default()
            .insert("ae_title".into(), ae.clone().into());
    }
    let mut material = Material {
        folder: &folder,
        tls_dir: config_dir.join("tls"),
        writes: Vec::new(),
        read: BTreeMap::new(),
    };
    let mut checked_sections = sections.clone();
    for (section, key, private) in MATERIAL {
        let (Some(table), Some(checked)) =
            (sections.get_mut(section), checked_sections.get_mut(section))
        else {
            continue;
        };
        let slot = Slot {
            owner: section.to_string(),
            key,
            role: key_role(key),
            file: match key {
                "key" => format!("{section}.key"),
                "ca" => format!("{section}-ca.pem"),
                _ => format!("{section}.pem"),
            },
            what: if private {
                format!("{section} private key")
            } else if key == "ca" {
                format!("{section} CA certificates")
            } else {
                format!("{section} certificate")
            },
        };
        material.take(slot, table, checked, &mut bad);
    }
    // Each PACS destination's TLS files: copied as tls/pacs-N.* (N its position).
    let pacs = destinations(sections.get_mut("pacs"));
    let pacs_checked = destinations(checked_sections.get_mut("pacs"));
    for (i, (table, checked)) in pacs.into_iter().zip(pacs_checked).enumerate() {
        let name = table
            .get("name")
            .and_then(toml::Value::as_str)
            .map(|n| format!("PACS destination {n:?}"))
            .unwrap_or_else(|| format!("PACS destination {i}"));
        for (key, file, what) in [
            ("tls_ca", format!("pacs-{i}-ca.pem"), "CA certificates"),
            ("tls_cert", format!("pacs-{i}.pem"), "certificate"),
            ("tls_key", format!("pacs-{i}.key"), "private key"),
        ] {
            let slot = Slot {
                owner: format!("pacs.destinations[{i}]"),
                key,
                role: key_role(key),
                file,
                what: format!("{name} {what}"),
            };
            material.take(slot, table, checked, &mut bad);
        }
    }
    writes.append(&mut material.writes);
    // Certificates parse; keys parse and match their certificate.
    let owners: std::collections::BTreeSet<&String> =
        material.read.keys().map(|(owner, _)| owner).collect();
    for owner in owners {
        let get = |role: &'static str| material.read.get(&(owner.clone(), role));
        if let Some((name, ca)) = get("ca") {
            if let Err(e) = material::certificates(name, ca) {
                bad(&e.key, e.reason);
            }
        }
        match (get("cert"), get("key")) {
            (Some((cert_name, c)), Some((key_name, k))) => {
                if let Err(e) = material::certified_pair(cert_name, c, key_name, k) {
                    bad(&e.key, e.reason);
                }
            }
            (Some((name, c)), None) => match configured(&base, &config_dir, owner, "key") {
                Some(Ok((key_name, k))) => {
                    if let Err(e) = material::certified_pair(name, c, &key_name, &k) {
                        bad(&e.key, e.reason);
                    }
                }
                Some(Err(e)) => bad(name, e.to_string()),
                None => {
                    if let Err(e) = material::certificates(name, c) {
                        bad(&e.key, e.reason);
                    }
                }
            },
            (None, Some((name, k))) => match configured(&base, &config_dir, owner, "cert") {
                Some(Ok((cert_name, c))) => {
                    if let Err(e) = material::certified_pair(&cert_name, &c, name, k) {
                        bad(&e.key, e.reason);
                    }
                }
                Some(Err(e)) => bad(name, e.to_string()),
                None => {
                    if let Err(e) = material::private_key(name, k) {
                        bad(&e.key, e.reason);
                    }
                }
            },
            (None, None) => {}
        }
    }

    // [time]
    let timezone = overrides
        .timezone
        .clone()
        .or_else(|| file.time.timezone.clone());
    if let Some(tz) = &timezone {
        if let Err(r) = system::check_timezone(tz) {
            bad("time.timezone", r.to_string());
        }
    }
    let ntp = if overrides.ntp.is_empty() {
        file.time.ntp.clone()
    } else {
        overrides.ntp.clone()
    };
    for (i, server) in ntp.iter().enumerate() {
        if let Err(r) = system::check_host(server) {
            bad(&format!("time.ntp[{i}]"), r.to_string());
        }
    }

    // [admin]
    let admin = match (&file.admin, &overrides.admin) {
        (_, Some(name)) => Some(PendingAdmin {
            name: name.clone(),
            password: file.admin.as_ref().and_then(|a| a.password.clone()),
        }),
        (Some(a), None) => Some(a.clone()),
        (None, None) => None,
    };
    if let Some(a) = &admin {
        if a.name.is_empty()
            || a.name.len() > 64
            || !a
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        {
            bad(
                "admin.name",
                "1 to 64 letters, digits, '.', '_', '-' or '@'".into(),
            );
        }
        if let Some(p) = &a.password {
            if p.chars().count() < 12 {
                bad("admin.password", "must have at least 12 characters".into());
            }
        }
    }

    // Each section on its own first, so that a shape error names its section.
    let mut shape_errors = false;
    for (name, table) in &sections {
        let value = toml::Value::Table(table.clone());
        let result = match *name {
            "dicom" => crate::config::DicomConfig::deserialize(value).map(drop),
            "pacs" => crate::config::PacsConfig::deserialize(value).map(drop),
            "hl7" => crate::config::Hl7Config::deserialize(value).map(drop),
            "mqtt" => crate::config::MqttConfig::deserialize(value).map(drop),
            _ => crate::config::ConsoleConfig::deserialize(value).map(drop),
        };
        if let Err(e) = result {
            shape_errors = true;
            bad(name, e.message().to_string());
        }
    }

    // The configuration: checked with the source files, written with the copies.
    let mut checked = base.clone();
    let mut device_table = toml::Table::new();
    device_table.insert("device".into(), toml::Value::Table(device.clone()));
    merge(&mut checked, &device_table);
    merge(&mut base, &device_table);
    for (name, table) in &checked_sections {
        let mut t = toml::Table::new();
        t.insert((*name).into(), toml::Value::Table(table.clone()));
        merge(&mut checked, &t);
    }
    for (name, table) in &sections {
        let mut t = toml::Table::new();
        t.insert((*name).into(), toml::Value::Table(table.clone()));
        merge(&mut base, &t);
    }
    let parse = |table: toml::Table| -> Result<Config, toml::de::Error> {
        Config::deserialize(toml::Value::Table(table))
    };
    let config = match parse(checked) {
        Ok(c) => {
            if let Err(list) = c.validate() {
                errs.extend(list);
            }
            match parse(base.clone()) {
                Ok(c) => Some(c),
                Err(m) => {
                    errs.push(KeyError {
                        key: "configuration".into(),
                        reason: m.message().to_string(),
                    });
                    None
                }
            }
        }
        Err(m) => {
            if !shape_errors {
                errs.push(KeyError {
                    key: "configuration".into(),
                    reason: m.message().to_string(),
                });
            }
            None
        }
    };
    let config = config.map(|mut c| {
        // A relative data folder already in the configuration: where the daemon finds it.
        if c.device.data_dir.is_relative() {
            c.device.data_dir = config_dir.join(&c.device.data_dir);
        }
        c
    });

    // Private files go to the configured service user only; the data folder is an
    // absolute place root controls (the folder itself may be the service user's).
    let service_user = config
        .as_ref()
        .map(|c| c.device.service_user.clone())
        .unwrap_or_else(|| crate::config::DeviceConfig::default().service_user);
    if let Some(asked) = &target.owner {
        if *asked != service_user {
            errs.push(KeyError {
                key: "--owner".into(),
                reason: format!(
                    "{asked:?} is not the configured service user {service_user:?} \
                     (device.service_user): private keys and secrets go to it only"
                ),
            });
        }
    }
    if let Some(c) = &config {
        let leaf = owner_ids(Some(&service_user)).map(|(uid, _)| uid);
        if let Err(e) = paths::check_folder(&c.device.data_dir, leaf) {
            errs.push(KeyError {
                key: "device.data_dir".into(),
                reason: e.to_string(),
            });
        }
    }

    // [firmware] endorsements: only keys the built-in key signed.
    if let Some(cfg) = &config {
        let anchors = crate::firmware_cli::device_anchors(cfg)
            .unwrap_or_else(|_| duli_firmware::TrustAnchors::builtin());
        for (i, p) in file.firmware.endorsements.iter().enumerate() {
            let key = format!("firmware.endorsements[{i}]");
            let checked = folder
                .read(p, source::MAX_ENDORSEMENT)
                .map_err(|e| format!("{}: {e}", p.display()))
                .and_then(|b| {
                    duli_firmware::endorsement::Endorsement::from_json(&b)
                        .map_err(|e| e.to_string())
                })
                .and_then(|e| {
                    // Checked as the box will load it: signed by a root, not expired, its
                    // key not revoked.
                    use duli_firmware::endorsement::EndorsementError as E;
                    anchors
                        .clone()
                        .accept_endorsement(&e)
                        .map(|k| (e, k))
                        .map_err(|err| match err {
                            E::Expired { .. } | E::Revoked(_) => err.to_string(),
                            _ => format!("not signed by a built-in key: {err}"),
                        })
                });
            match checked {
                Ok((e, k)) => writes.push(Write {
                    path: cfg.firmware.endorsed_keys.join(format!(
                        "{}{}",
                        k.id(),
                        duli_firmware::endorsement::ENDORSEMENT_SUFFIX
                    )),
                    bytes: e.to_json().into_bytes(),
                    mode: PUBLIC,
                    private: false,
                    what: format!(
                        "firmware key endorsement {} ({}; scopes: {})",
                        k.id(),
                        e.label,
                        e.effective_scopes()
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }),
                Err(r) => errs.push(KeyError { key, reason: r }),
            }
        }
    }

    if !errs.is_empty() {
        return Err(ProvisionError::Invalid(errs));
    }
    let Some(config) = config else {
        return Err(ProvisionError::Invalid(vec![KeyError {
            key: "configuration".into(),
            reason: "could not be built".into(),
        }]));
    };

    if let Some(a) = &admin {
        let password_hash = match a.password.as_deref().map(crate::accounts::hash_password) {
            None => None,
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => {
                return Err(ProvisionError::Invalid(vec![KeyError {
                    key: "admin.password".into(),
                    reason: e.to_string(),
                }]))
            }
        };
        let pending = ProvisionedAdmin {
            name: a.name.clone(),
            password_hash,
            password: None,
        };
        let text = toml::to_string(&pending).map_err(|e| {
            ProvisionError::Invalid(vec![KeyError {
                key: "admin".into(),
                reason: format!("cannot be written: {e}"),
            }])
        })?;
        writes.push(Write {
            path: config_dir.join(PENDING_ADMIN),
            bytes: format!(
                "# First console administrator (the password only as its hash), created by the\n\
                 # daemon at its next start, which removes this file, or by\n\
                 # `duli user add {} --role admin`; delete this file afterwards.\n{text}",
                a.name
            )
            .into_bytes(),
            mode: PRIVATE,
            private: true,
            what: "pending first administrator".into(),
        });
    }
    if !ntp.is_empty() {
        writes.push(Write {
            path: target
                .system_root
                .join("etc/systemd/timesyncd.conf.d/duli.conf"),
            bytes: system::timesyncd_dropin(&ntp).into_bytes(),
            mode: PUBLIC,
            private: false,
            what: format!("NTP servers: {}", ntp.join(" ")),
        });
    }
    if let Some(tz) = &timezone {
        writes.push(Write {
            path: system::redirect(&target.system_root, "etc/timezone"),
            bytes: format!("{tz}\n").into_bytes(),
            mode: PUBLIC,
            private: false,
            what: format!("time zone {tz}"),
        });
    }
    let mut text = format!(
        "# Written by `duli provision` for site {} device {}.\n",
        config.device.site_id, config.device.device_id
    );
    text.push_str(&toml::to_string_pretty(&base).unwrap_or_default());
    writes.push(Write {
        path: target.config.clone(),
        bytes: text.into_bytes(),
        mode: PUBLIC,
        private: false,
        what: "configuration".into(),
    });
    Ok(Plan {
        config,
        writes,
        timezone,
        admin,
        target: Target {
            owner: Some(service_user),
            ..target.clone()
        },
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
            timezone: None,
            admin: None,
            target: Target {
                config: dir.join("etc/duli.toml"),
                system_root: dir.join("root"),
                owner: None,
            },
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
