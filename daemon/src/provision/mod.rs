//! `duli provision`: sets a box up in one step from a provisioning file (TOML) the
//! technician brings, or from flags.
//!
//! The order is fixed: read every input (the file, the certificates and keys it names, the
//! site secret) → check everything (the resulting configuration through
//! [`Config::validate`], each certificate and key, the key/certificate pairs, time zone,
//! NTP servers, firmware key endorsements) → only then write, each file atomically
//! (temporary file, fsync, rename), private keys and secrets with mode 0600 owned by the
//! service user. A refused input writes nothing. Nothing secret is ever printed: output
//! and errors name keys and paths, never values of secrets.
//!
//! The provisioning file (see `config/provision.example.toml`):
//!
//! - `[device]` `site_id`, `device_id` (required), `data_dir`, `site_secret_file` (a file
//!   to copy) or `generate_site_secret = true`;
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
pub mod system;

use crate::config::{Config, KeyError};
use crate::fsutil::{self, PRIVATE, PUBLIC};
use serde::{Deserialize, Serialize};
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
    /// The service user that must own private keys and secrets (`duli`); when it does not
    /// exist the files keep the invoking user's ownership.
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
    /// Writing failed part-way (every file written is complete; see the message).
    #[error("writing failed: {0}")]
    Write(#[from] fsutil::WriteError),
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
    /// The provisioning file's folder, against which relative paths resolve.
    file_dir: &'a Path,
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
        let Some(path) = value.as_str().map(|s| {
            let p = Path::new(s);
            if p.is_relative() {
                self.file_dir.join(p)
            } else {
                p.to_path_buf()
            }
        }) else {
            bad(&name, "must be a file path".into());
            return;
        };
        match std::fs::read(&path) {
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
            Err(e) => bad(&name, format!("cannot read {}: {e}", path.display())),
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
    let mut errs: Vec<KeyError> = Vec::new();
    let mut bad = |key: &str, reason: String| {
        errs.push(KeyError {
            key: key.to_string(),
            reason,
        })
    };
    let config_dir = target.config_dir();
    let src = |p: &Path| -> PathBuf {
        if p.is_relative() {
            file_dir.join(p)
        } else {
            p.to_path_buf()
        }
    };

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
        (Some(p), false) => match std::fs::read(src(p)) {
            Ok(bytes) if bytes.iter().filter(|b| !b.is_ascii_whitespace()).count() >= 16 => {
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
            Ok(_) => bad(
                "device.site_secret_file",
                format!(
                    "{} holds fewer than 16 characters: too weak",
                    src(p).display()
                ),
            ),
            Err(e) => bad(
                "device.site_secret_file",
                format!("cannot read {}: {e}", src(p).display()),
            ),
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
        file_dir,
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
            (Some((name, c)), None) => {
                if let Err(e) = material::certificates(name, c) {
                    bad(&e.key, e.reason);
                }
            }
            (None, Some((name, k))) => {
                if let Err(e) = material::private_key(name, k) {
                    bad(&e.key, e.reason);
                }
            }
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

    // [firmware] endorsements: only keys the built-in key signed.
    if let Some(cfg) = &config {
        let roots = crate::firmware_cli::device_anchors(cfg)
            .map(|a| a.roots().to_vec())
            .unwrap_or_else(|_| vec![duli_firmware::keys::BUILTIN_PUBLIC_KEY]);
        for (i, p) in file.firmware.endorsements.iter().enumerate() {
            let key = format!("firmware.endorsements[{i}]");
            let path = src(p);
            let checked = std::fs::read(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|b| {
                    duli_firmware::endorsement::Endorsement::from_json(&b)
                        .map_err(|e| e.to_string())
                })
                .and_then(|e| {
                    e.verify(&roots)
                        .map(|k| (e, k))
                        .map_err(|err| format!("not signed by a built-in key: {err}"))
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
        target: target.clone(),
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

/// Writes a checked plan: every file atomically, private ones 0600 and owned by the
/// service user when it exists. Returns the lines of the summary (paths and what they
/// are, never contents).
pub fn apply(plan: &Plan) -> Result<Vec<String>, ProvisionError> {
    let owner = owner_ids(plan.target.owner.as_deref());
    let mut summary = Vec::new();
    if plan.target.owner.is_some() && owner.is_none() && nix::unistd::geteuid().is_root() {
        summary.push(format!(
            "note: service user {:?} does not exist here; private files stay owned by root",
            plan.target.owner.as_deref().unwrap_or_default()
        ));
    }
    for w in &plan.writes {
        let ids = if w.private { owner } else { None };
        fsutil::write_atomic(&w.path, &w.bytes, w.mode, ids)?;
        summary.push(format!(
            "wrote {} ({}, mode {:o})",
            w.path.display(),
            w.what,
            w.mode
        ));
    }
    if let Some(tz) = &plan.timezone {
        let link = system::redirect(&plan.target.system_root, "etc/localtime");
        system::link_localtime(&link, tz)?;
        summary.push(format!("linked {} to {tz}", link.display()));
    }
    // The data directory belongs to the service user.
    let data = &plan.config.device.data_dir;
    if !data.exists() {
        std::fs::create_dir_all(data).map_err(|source| fsutil::WriteError {
            path: data.clone(),
            source,
        })?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(data, Some(uid), Some(gid)).map_err(|source| {
                fsutil::WriteError {
                    path: data.clone(),
                    source,
                }
            })?;
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
