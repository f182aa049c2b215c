//! [`plan`]: reads and checks every input of a provisioning run and prepares the writes,
//! touching nothing on disk. One step per part of the provisioning file, in the order
//! their refusals are reported:
//!
//! 1. the places written ([`checked_target`]) and the configuration already on the box
//!    ([`read_base`]);
//! 2. `[device]`: identity, data folder, site secret ([`device_table`]);
//! 3. the configuration sections and the TLS files they name ([`sections`],
//!    [`tls_material`], [`check_pairs`]);
//! 4. `[time]` ([`time`]) and `[admin]` ([`admin`]);
//! 5. the resulting configuration, section by section then whole ([`check_shapes`],
//!    [`build_config`]), the service user and data folder ([`check_owner`]);
//! 6. `[firmware]` endorsements ([`endorsements`]);
//! 7. the writes that follow from them, the configuration last ([`admin_write`],
//!    [`system_writes`], [`config_write`]).

use super::source::{self, Folder};
use super::{
    material, paths, system, Overrides, PendingAdmin, Plan, ProvisionError, ProvisionFile,
    ProvisionedAdmin, Removal, Target, Write, PENDING_ADMIN,
};
use crate::config::{Config, ConfigError, KeyError};
use crate::fsutil::{PRIVATE, PUBLIC};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Checks everything and prepares the writes; touches nothing on disk.
pub fn plan(
    file: ProvisionFile,
    file_dir: &Path,
    overrides: &Overrides,
    target: &Target,
) -> Result<Plan, ProvisionError> {
    let target = checked_target(target)?;
    // Absolute, so that the sources validated in place resolve as named wherever the
    // configuration's relative paths resolve.
    let folder = Folder::open(&paths::absolute(file_dir)).map_err(|e| {
        ProvisionError::Invalid(vec![KeyError {
            key: "provisioning file".into(),
            reason: format!("cannot open its folder {}: {e}", file_dir.display()),
        }])
    })?;
    let config_dir = target.config_dir();
    let mut base = read_base(&target.config)?;
    let mut refused = Refusals::default();

    let (device, mut writes) =
        device_table(&file, overrides, &base, &folder, &config_dir, &mut refused);
    let mut sections = sections(&file, overrides);
    let mut checked_sections = sections.clone();
    let material = tls_material(
        &folder,
        &config_dir,
        &mut sections,
        &mut checked_sections,
        &mut refused,
    );
    check_pairs(&material.read, &base, &config_dir, &mut refused);
    writes.extend(material.writes);
    let (timezone, ntp) = time(&file, overrides, &mut refused);
    let admin = admin(&file, overrides, &mut refused);

    let shape_errors = check_shapes(&sections, &mut refused);
    let config = build_config(
        &mut base,
        device,
        &sections,
        &checked_sections,
        &target.config,
        shape_errors,
        &mut refused,
    );
    let service_user = check_owner(&target, config.as_ref(), &mut refused);
    let mut removals = Vec::new();
    if let Some(cfg) = &config {
        writes.extend(endorsements(&file, &folder, cfg, &mut refused));
        removals = withdrawals(&file, cfg, &writes, &mut refused);
    }

    if !refused.0.is_empty() {
        return Err(ProvisionError::Invalid(refused.0));
    }
    let Some(config) = config else {
        return Err(ProvisionError::Invalid(vec![KeyError {
            key: "configuration".into(),
            reason: "could not be built".into(),
        }]));
    };
    if let Some(a) = &admin {
        writes.push(admin_write(a, &config_dir)?);
    }
    writes.extend(system_writes(&target, &ntp, timezone.as_deref()));
    writes.push(config_write(&config, &base, &target)?);
    Ok(Plan {
        config,
        writes,
        removals,
        timezone,
        admin,
        target: Target {
            owner: Some(service_user),
            ..target
        },
    })
}

/// The refusals found so far, in the order they were found.
#[derive(Default)]
struct Refusals(Vec<KeyError>);

impl Refusals {
    /// Refuses the value of `key`.
    fn add(&mut self, key: &str, reason: impl Into<String>) {
        self.0.push(KeyError {
            key: key.to_string(),
            reason: reason.into(),
        });
    }
}

/// The places written, made absolute as the daemon resolves them, and checked to be places
/// only root controls.
fn checked_target(target: &Target) -> Result<Target, ProvisionError> {
    let target = Target {
        config: paths::absolute(&target.config),
        system_root: paths::absolute(&target.system_root),
        owner: target.owner.clone(),
    };
    let mut refused = Refusals::default();
    if let Err(e) = paths::check_config(&target.config) {
        refused.add("--config", e.to_string());
    }
    if let Err(e) = paths::check_folder(&target.system_root, None) {
        refused.add("--system-root", e.to_string());
    }
    if refused.0.is_empty() {
        Ok(target)
    } else {
        Err(ProvisionError::Invalid(refused.0))
    }
}

/// The configuration on the box, if any, as written (no environment): the base the
/// provisioning file is merged over.
fn read_base(config: &Path) -> Result<toml::Table, ProvisionError> {
    match std::fs::read_to_string(config) {
        Ok(text) => text
            .parse::<toml::Table>()
            .map_err(|e| ProvisionError::Parse {
                path: config.display().to_string(),
                message: e.message().to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
        Err(source) => Err(ProvisionError::Read {
            path: config.to_path_buf(),
            source,
        }),
    }
}

/// The `[device]` table to merge (identity, data folder, site secret) and the site
/// secret's write, if any.
fn device_table(
    file: &ProvisionFile,
    overrides: &Overrides,
    base: &toml::Table,
    folder: &Folder,
    config_dir: &Path,
    refused: &mut Refusals,
) -> (toml::Table, Vec<Write>) {
    let dev = &file.device;
    let mut device = toml::Table::new();
    for (key, given, from_file, flag) in [
        ("site_id", &overrides.site_id, &dev.site_id, "--site-id"),
        (
            "device_id",
            &overrides.device_id,
            &dev.device_id,
            "--device-id",
        ),
    ] {
        match given.as_ref().or(from_file.as_ref()) {
            Some(s) => {
                device.insert(key.into(), s.clone().into());
            }
            None => refused.add(
                &format!("device.{key}"),
                format!("required (in the provisioning file or {flag})"),
            ),
        }
    }
    let has_data_dir = base.get("device").and_then(|d| d.get("data_dir")).is_some();
    if let Some(d) = overrides.data_dir.as_ref().or(dev.data_dir.as_ref()) {
        if d.is_relative() {
            refused.add(
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
    let writes = site_secret(file, folder, config_dir, base, &mut device, refused);
    (device, writes)
}

/// The site secret: copied from the file the provisioning file names, or generated when
/// asked and the box has none ([`existing_secret`]); `device.site_secret` then names it.
fn site_secret(
    file: &ProvisionFile,
    folder: &Folder,
    config_dir: &Path,
    base: &toml::Table,
    device: &mut toml::Table,
    refused: &mut Refusals,
) -> Vec<Write> {
    let dest = config_dir.join("site_secret");
    let name_it = |device: &mut toml::Table| {
        device.insert("site_secret".into(), dest.display().to_string().into());
    };
    let dev = &file.device;
    match (&dev.site_secret_file, dev.generate_site_secret) {
        (Some(_), true) => {
            refused.add(
                "device.site_secret_file",
                "give either site_secret_file or generate_site_secret, not both",
            );
            Vec::new()
        }
        (Some(p), false) => {
            let read = folder
                .read(p, source::MAX_SECRET)
                .map_err(|e| format!("{}: {e}", p.display()))
                .and_then(|bytes| {
                    material::site_secret("device.site_secret_file", &bytes)
                        .map_err(|e| format!("{}: {}", p.display(), e.reason))
                });
            match read {
                Ok(bytes) => {
                    name_it(device);
                    vec![Write {
                        path: dest.clone(),
                        bytes,
                        mode: PRIVATE,
                        private: true,
                        what: "site secret".into(),
                    }]
                }
                Err(reason) => {
                    refused.add("device.site_secret_file", reason);
                    Vec::new()
                }
            }
        }
        (None, true) => {
            if let Some(kept) = existing_secret(base, device, config_dir) {
                // Kept only when the daemon can use it: an empty, short or unreadable one
                // (or a folder) is refused here, not found at the daemon's start. It lies
                // in the service user's folder and root reads it: a regular file of at
                // most 4 KiB, read without following a link or blocking on a FIFO.
                let usable = source::read_nofollow(&kept, source::MAX_SECRET)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| {
                        crate::site_secret::SiteSecret::from_file_bytes(&kept, &bytes)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    });
                match usable {
                    Ok(()) => {
                        device.insert("site_secret".into(), kept.display().to_string().into());
                    }
                    Err(e) => refused.add(
                        "device.generate_site_secret",
                        format!(
                            "the box has a site secret that cannot be used ({e}); a new one would change every pseudonym and result UID: repair it, or remove it to have one generated"
                        ),
                    ),
                }
                return Vec::new();
            }
            name_it(device);
            let mut raw = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
            vec![Write {
                path: dest.clone(),
                bytes: format!("{}\n", hex::encode(raw)).into_bytes(),
                mode: PRIVATE,
                private: true,
                what: "site secret (generated)".into(),
            }]
        }
        (None, false) => Vec::new(),
    }
}

/// The site secret the box has already, if any: the file its configuration names
/// (`device.site_secret`, else `site_secret` in its data folder, as the daemon finds it),
/// then `site_secret` in the data folder being provisioned, then
/// `<config dir>/site_secret`. A new secret would change every pseudonym and result UID
/// the box makes, so an existing one is kept where it is. Relative paths resolve against
/// the configuration's folder, as the daemon resolves them.
fn existing_secret(base: &toml::Table, device: &toml::Table, config_dir: &Path) -> Option<PathBuf> {
    let path = |table: Option<&toml::Table>, key: &str| {
        table
            .and_then(|t| t.get(key))
            .and_then(toml::Value::as_str)
            .map(|p| config_dir.join(p))
    };
    let configured = base.get("device").and_then(toml::Value::as_table);
    let in_data =
        |table: Option<&toml::Table>| path(table, "data_dir").map(|d| d.join("site_secret"));
    [
        path(configured, "site_secret"),
        in_data(configured),
        in_data(Some(device)),
        Some(config_dir.join("site_secret")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.symlink_metadata().is_ok())
}

/// The configuration sections the provisioning file gives, with `--ae-title` applied.
fn sections(file: &ProvisionFile, overrides: &Overrides) -> BTreeMap<&'static str, toml::Table> {
    let mut sections = BTreeMap::new();
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
    sections
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

/// What was read of a TLS file, by (owner, role): (key name, bytes).
type ReadMaterial = BTreeMap<(String, &'static str), (String, Vec<u8>)>;

/// The TLS files named in the provisioning file: read from beside it, copied to
/// `<config>/tls/`.
struct Material<'a> {
    /// The provisioning file's folder, inside which the files are.
    folder: &'a Folder,
    /// `<config>/tls`.
    tls_dir: PathBuf,
    /// The copies to write.
    writes: Vec<Write>,
    /// What was read, to check that certificates and keys parse and match.
    read: ReadMaterial,
}

impl Material<'_> {
    /// Reads the file `table[slot.key]` names, if any: `table` (written) then points at
    /// the copy, `checked` (validated now) at the source; the copy is queued, private keys
    /// 0600. A value that is not a path or a file that cannot be read is refused.
    fn take(
        &mut self,
        slot: Slot,
        table: &mut toml::Table,
        checked: &mut toml::Table,
        refused: &mut Refusals,
    ) {
        let Some(value) = table.get(slot.key) else {
            return;
        };
        let name = format!("{}.{}", slot.owner, slot.key);
        let Some(rel) = value.as_str().map(PathBuf::from) else {
            refused.add(&name, "must be a file path");
            return;
        };
        let private = slot.role == "key";
        let cap = if private {
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
                self.writes.push(Write {
                    path: dest,
                    bytes: bytes.clone(),
                    mode: if private { PRIVATE } else { PUBLIC },
                    private,
                    what: slot.what,
                });
                self.read.insert((slot.owner, slot.role), (name, bytes));
            }
            Err(e) => refused.add(&name, format!("{}: {e}", rel.display())),
        }
    }
}

/// Reads every TLS file the sections name: `sections` then point at the copies under
/// `<config>/tls/`, `checked_sections` at the sources (what is validated now). Each PACS
/// destination's files are copied as `tls/pacs-N.*` (N its position).
fn tls_material<'a>(
    folder: &'a Folder,
    config_dir: &Path,
    sections: &mut BTreeMap<&'static str, toml::Table>,
    checked_sections: &mut BTreeMap<&'static str, toml::Table>,
    refused: &mut Refusals,
) -> Material<'a> {
    let mut material = Material {
        folder,
        tls_dir: config_dir.join("tls"),
        writes: Vec::new(),
        read: BTreeMap::new(),
    };
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
        material.take(slot, table, checked, refused);
    }
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
            material.take(slot, table, checked, refused);
        }
    }
    material
}

/// The tables of `[[pacs.destinations]]` in the `pacs` section, if any.
fn destinations(pacs: Option<&mut toml::Table>) -> Vec<&mut toml::Table> {
    pacs.and_then(|p| p.get_mut("destinations"))
        .and_then(toml::Value::as_array_mut)
        .map(|a| a.iter_mut().filter_map(toml::Value::as_table_mut).collect())
        .unwrap_or_default()
}

/// Certificates parse; keys parse and match their certificate, the one provisioned beside
/// them or, when only one half is provisioned, the other half already configured.
fn check_pairs(read: &ReadMaterial, base: &toml::Table, config_dir: &Path, refused: &mut Refusals) {
    let owners: BTreeSet<&String> = read.keys().map(|(owner, _)| owner).collect();
    for owner in owners {
        let get = |role: &'static str| read.get(&(owner.clone(), role));
        let mut check = |result: Result<(), material::MaterialError>| {
            if let Err(e) = result {
                refused.add(&e.key, e.reason);
            }
        };
        if let Some((name, ca)) = get("ca") {
            check(material::certificates(name, ca).map(drop));
        }
        match (get("cert"), get("key")) {
            (Some((cert_name, c)), Some((key_name, k))) => {
                check(material::certified_pair(cert_name, c, key_name, k));
            }
            (Some((name, c)), None) => match configured(base, config_dir, owner, "key") {
                Some(Ok((key_name, k))) => {
                    check(material::certified_pair(name, c, &key_name, &k));
                }
                Some(Err(e)) => refused.add(name, e.to_string()),
                None => check(material::certificates(name, c).map(drop)),
            },
            (None, Some((name, k))) => match configured(base, config_dir, owner, "cert") {
                Some(Ok((cert_name, c))) => {
                    check(material::certified_pair(&cert_name, &c, name, k));
                }
                Some(Err(e)) => refused.add(name, e.to_string()),
                None => check(material::private_key(name, k).map(drop)),
            },
            (None, None) => {}
        }
    }
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

/// `[time]`: the time zone and the NTP servers (flags win), each checked.
fn time(
    file: &ProvisionFile,
    overrides: &Overrides,
    refused: &mut Refusals,
) -> (Option<String>, Vec<String>) {
    let timezone = overrides
        .timezone
        .clone()
        .or_else(|| file.time.timezone.clone());
    if let Some(tz) = &timezone {
        if let Err(r) = system::check_timezone(tz) {
            refused.add("time.timezone", r.to_string());
        }
    }
    let ntp = if overrides.ntp.is_empty() {
        file.time.ntp.clone()
    } else {
        overrides.ntp.clone()
    };
    for (i, server) in ntp.iter().enumerate() {
        if let Err(r) = system::check_host(server) {
            refused.add(&format!("time.ntp[{i}]"), r.to_string());
        }
    }
    (timezone, ntp)
}

/// `[admin]` (or `--admin`): the first administrator, its name and password checked.
fn admin(
    file: &ProvisionFile,
    overrides: &Overrides,
    refused: &mut Refusals,
) -> Option<PendingAdmin> {
    let admin = match (&file.admin, &overrides.admin) {
        (_, Some(name)) => Some(PendingAdmin {
            name: name.clone(),
            password: file.admin.as_ref().and_then(|a| a.password.clone()),
        }),
        (Some(a), None) => Some(a.clone()),
        (None, None) => None,
    };
    if let Some(a) = &admin {
        let name_ok = !a.name.is_empty()
            && a.name.len() <= 64
            && a.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
        if !name_ok {
            refused.add(
                "admin.name",
                "1 to 64 letters, digits, '.', '_', '-' or '@'",
            );
        }
        if a.password.as_ref().is_some_and(|p| p.chars().count() < 12) {
            refused.add("admin.password", "must have at least 12 characters");
        }
    }
    admin
}

/// Each section on its own, so that a shape error names its section; whether any failed.
fn check_shapes(sections: &BTreeMap<&'static str, toml::Table>, refused: &mut Refusals) -> bool {
    let mut failed = false;
    for (name, table) in sections {
        let value = toml::Value::Table(table.clone());
        let result = match *name {
            "dicom" => crate::config::DicomConfig::deserialize(value).map(drop),
            "pacs" => crate::config::PacsConfig::deserialize(value).map(drop),
            "hl7" => crate::config::Hl7Config::deserialize(value).map(drop),
            "mqtt" => crate::config::MqttConfig::deserialize(value).map(drop),
            _ => crate::config::ConsoleConfig::deserialize(value).map(drop),
        };
        if let Err(e) = result {
            failed = true;
            refused.add(name, e.message());
        }
    }
    failed
}

/// Merges `over` into `base`, table by table.
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

/// Merges one section into `base`.
fn merge_section(base: &mut toml::Table, name: &str, table: &toml::Table) {
    let mut t = toml::Table::new();
    t.insert(name.into(), toml::Value::Table(table.clone()));
    merge(base, &t);
}

/// The configuration that will be in effect at `config_path`, made as the daemon will load
/// it ([`Config::from_table`]: relative paths resolved against the configuration's
/// folder): validated with the TLS sources (`checked_sections`); `base` becomes the one
/// written, pointing at the copies. `None` when it cannot be built (the reason is
/// refused, unless a section's shape error already says it).
fn build_config(
    base: &mut toml::Table,
    device: toml::Table,
    sections: &BTreeMap<&'static str, toml::Table>,
    checked_sections: &BTreeMap<&'static str, toml::Table>,
    config_path: &Path,
    shape_errors: bool,
    refused: &mut Refusals,
) -> Option<Config> {
    let mut checked = base.clone();
    merge_section(&mut checked, "device", &device);
    merge_section(base, "device", &device);
    for (name, table) in checked_sections {
        merge_section(&mut checked, name, table);
    }
    for (name, table) in sections {
        merge_section(base, name, table);
    }
    let load =
        |table: toml::Table| Config::from_table(table, Some(config_path), std::iter::empty());
    let refuse = |e: ConfigError, refused: &mut Refusals| match e {
        ConfigError::Invalid(list) => refused.0.extend(list),
        ConfigError::Parse { message, .. } if !shape_errors => {
            refused.add("configuration", message)
        }
        ConfigError::Parse { .. } => {}
        other => refused.add("configuration", other.to_string()),
    };
    match load(checked) {
        Ok(c) => {
            if let Err(list) = c.validate() {
                refused.0.extend(list);
            }
            load(base.clone()).map_err(|e| refuse(e, refused)).ok()
        }
        Err(e) => {
            refuse(e, refused);
            None
        }
    }
}

/// Private files go to the configured service user only (returned); the data folder is an
/// absolute place root controls (the folder itself may be the service user's).
fn check_owner(target: &Target, config: Option<&Config>, refused: &mut Refusals) -> String {
    let service_user = config
        .map(|c| c.device.service_user.clone())
        .unwrap_or_else(|| crate::config::DeviceConfig::default().service_user);
    if let Some(asked) = &target.owner {
        if *asked != service_user {
            refused.add(
                "--owner",
                format!(
                    "{asked:?} is not the configured service user {service_user:?} \
                     (device.service_user): private keys and secrets go to it only"
                ),
            );
        }
    }
    if let Some(c) = config {
        let leaf = super::owner_ids(Some(&service_user)).map(|(uid, _)| uid);
        if let Err(e) = paths::check_folder(&c.device.data_dir, leaf) {
            refused.add("device.data_dir", e.to_string());
        }
    }
    service_user
}

/// `[firmware]` withdraw: each a key id (16 hex digits); every endorsement file in
/// `firmware.endorsed_keys` that endorses one of those keys is removed. A key both
/// endorsed and withdrawn by the same file is refused.
fn withdrawals(
    file: &ProvisionFile,
    cfg: &Config,
    writes: &[Write],
    refused: &mut Refusals,
) -> Vec<Removal> {
    use duli_firmware::endorsement::{Endorsement, ENDORSEMENT_SUFFIX};
    use std::io::Read;
    let mut ids = Vec::new();
    for (i, id) in file.firmware.withdraw.iter().enumerate() {
        let key = format!("firmware.withdraw[{i}]");
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            refused.add(
                &key,
                "is not a key id (16 hex digits, as `duli firmware verify` prints a signer)",
            );
            continue;
        }
        let id = id.to_ascii_lowercase();
        let endorsed = cfg
            .firmware
            .endorsed_keys
            .join(format!("{id}{ENDORSEMENT_SUFFIX}"));
        if writes.iter().any(|w| w.path == endorsed) {
            refused.add(&key, format!("key {id} is also endorsed by this file"));
            continue;
        }
        ids.push(id);
    }
    if ids.is_empty() {
        return Vec::new();
    }
    // The folder is root's; each file is still read bounded and without following a link.
    let entries = match std::fs::read_dir(&cfg.firmware.endorsed_keys) {
        Ok(entries) => entries,
        Err(_) => return Vec::new(),
    };
    let mut removals = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        let named = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(ENDORSEMENT_SUFFIX));
        if !named {
            continue;
        }
        let endorsed_id = crate::firmware_cli::open_regular(&path)
            .ok()
            .and_then(|f| {
                let mut bytes = Vec::new();
                f.take(source::MAX_ENDORSEMENT)
                    .read_to_end(&mut bytes)
                    .ok()?;
                Endorsement::from_json(&bytes).ok()
            })
            .and_then(|e| duli_firmware::PublicKey::from_hex(&e.key).ok())
            .map(|k| k.id().to_string());
        if let Some(id) = endorsed_id.filter(|id| ids.contains(id)) {
            removals.push(Removal {
                what: format!("firmware key endorsement {id}, withdrawn"),
                path,
            });
        }
    }
    removals.sort_by(|a, b| a.path.cmp(&b.path));
    removals
}

/// `[firmware]` endorsements: accepted only when a built-in key signed them, not expired
/// and their key not revoked (checked as the box will load them); one write each.
fn endorsements(
    file: &ProvisionFile,
    folder: &Folder,
    cfg: &Config,
    refused: &mut Refusals,
) -> Vec<Write> {
    use duli_firmware::endorsement::{Endorsement, EndorsementError as E, ENDORSEMENT_SUFFIX};
    let anchors = crate::firmware_cli::device_anchors(cfg)
        .unwrap_or_else(|_| duli_firmware::TrustAnchors::builtin());
    let mut writes = Vec::new();
    for (i, p) in file.firmware.endorsements.iter().enumerate() {
        let checked = folder
            .read(p, source::MAX_ENDORSEMENT)
            .map_err(|e| format!("{}: {e}", p.display()))
            .and_then(|b| Endorsement::from_json(&b).map_err(|e| e.to_string()))
            .and_then(|e| {
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
                path: cfg
                    .firmware
                    .endorsed_keys
                    .join(format!("{}{ENDORSEMENT_SUFFIX}", k.id())),
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
            Err(r) => refused.add(&format!("firmware.endorsements[{i}]"), r),
        }
    }
    writes
}

/// The pending first administrator's file: the name and the password's hash, never the
/// password.
fn admin_write(a: &PendingAdmin, config_dir: &Path) -> Result<Write, ProvisionError> {
    let refuse = |key: &str, reason: String| {
        ProvisionError::Invalid(vec![KeyError {
            key: key.into(),
            reason,
        }])
    };
    let password_hash = a
        .password
        .as_deref()
        .map(crate::accounts::hash_password)
        .transpose()
        .map_err(|e| refuse("admin.password", e.to_string()))?;
    let pending = ProvisionedAdmin {
        name: a.name.clone(),
        password_hash,
        password: None,
    };
    let text = toml::to_string(&pending)
        .map_err(|e| refuse("admin", format!("cannot be written: {e}")))?;
    Ok(Write {
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
    })
}

/// The system files: the timesyncd drop-in naming the NTP servers, the time zone.
fn system_writes(target: &Target, ntp: &[String], timezone: Option<&str>) -> Vec<Write> {
    let mut writes = Vec::new();
    if !ntp.is_empty() {
        writes.push(Write {
            path: target
                .system_root
                .join("etc/systemd/timesyncd.conf.d/duli.conf"),
            bytes: system::timesyncd_dropin(ntp).into_bytes(),
            mode: PUBLIC,
            private: false,
            what: format!("NTP servers: {}", ntp.join(" ")),
        });
    }
    if let Some(tz) = timezone {
        writes.push(Write {
            path: system::redirect(&target.system_root, "etc/timezone"),
            bytes: format!("{tz}\n").into_bytes(),
            mode: PUBLIC,
            private: false,
            what: format!("time zone {tz}"),
        });
    }
    writes
}

/// The configuration file as written (`base`: the box's configuration with the
/// provisioned sections merged, TLS files pointing at the copies); refused when it cannot
/// be rendered (an empty or default configuration is never written in its place).
fn config_write(
    config: &Config,
    base: &toml::Table,
    target: &Target,
) -> Result<Write, ProvisionError> {
    let header = format!(
        "# Written by `duli provision` for site {} device {}.\n",
        config.device.site_id, config.device.device_id
    );
    Ok(Write {
        path: target.config.clone(),
        bytes: config_text(&header, base)?.into_bytes(),
        mode: PUBLIC,
        private: false,
        what: "configuration".into(),
    })
}

/// `header` followed by `value` as TOML; refused when `value` cannot be rendered.
fn config_text<T: serde::Serialize + ?Sized>(
    header: &str,
    value: &T,
) -> Result<String, ProvisionError> {
    let body = toml::to_string_pretty(value).map_err(|e| {
        ProvisionError::Invalid(vec![KeyError {
            key: "configuration".into(),
            reason: format!("cannot be written: {e}"),
        }])
    })?;
    Ok(format!("{header}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration that cannot be rendered is refused: neither an empty nor an
    /// all-defaults file is written in its place.
    #[test]
    fn a_configuration_that_cannot_be_rendered_is_refused() {
        let e = config_text("# header\n", &None::<u8>).unwrap_err();
        assert!(
            e.to_string().contains("configuration: cannot be written"),
            "{e}"
        );
        let base: toml::Table = "[device]\nsite_id = \"a\"\n".parse().unwrap();
        let text = config_text("# header\n", &base).unwrap();
        assert_eq!(text, "# header\n[device]\nsite_id = \"a\"\n");
    }
}
