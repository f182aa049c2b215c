//! `duli firmware ...`: the technician's and the build pipeline's side of signed A/B
//! updates, over the `duli-firmware` crate. Every command that acts on the box (verify,
//! install, mark-good, rollback) and the pipeline's keygen and sign (when a data directory
//! exists) append a `software` record to the audit trail, through the running daemon or
//! on the store directly.
//!
//! Install, mark-good and rollback each hold the firmware lock
//! ([`duli_firmware::config::FirmwareConfig::lock_path`]) for their whole run: an install or
//! rollback started while another holds it fails at once; mark-good (at boot, perhaps
//! beside `duli-update.service`) waits for it.
//!
//! Exit codes: 0 done; 1 failed (I/O, configuration, boot variables, lock held); 3 bundle
//! refused (signature, payload hash, hardware, version) with nothing written; 4 health check
//! failed (mark-good not done).

use crate::audit::{Action, Event};
use crate::cli_audit::{actor, record as audit};
use crate::config::Config;
use anyhow::{Context, Result};
use duli_firmware::lock::{LockError, UpdateLock};
use duli_firmware::manifest::Manifest;
use duli_firmware::model_pack::install_model_pack;
use duli_firmware::pack_versions::PackVersions;
use duli_firmware::updater::{MarkGood, Rollback, UpdateError};
use duli_firmware::{keys, BundleError, PayloadKind, PublicKey, Release, TrustAnchors, Version};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code of a refused bundle (nothing was written).
pub const EXIT_REFUSED: u8 = 3;
/// Exit code of a failed health check (the slot was not marked good).
pub const EXIT_UNHEALTHY: u8 = 4;

/// Environment variable naming an extra trusted root public key (`.pub` file). Honoured
/// only by debug builds (tests and development boxes); release builds trust only the
/// built-in key and the keys it endorsed.
pub const DEV_ROOT_ENV: &str = "DULI_FIRMWARE_DEV_ROOT";

/// Environment variable naming the running firmware version (`X.Y.Z`) instead of this
/// binary's own. Honoured only by debug builds: tests boot into the firmware they installed
/// with the same binary.
pub const DEV_VERSION_ENV: &str = "DULI_FIRMWARE_DEV_VERSION";

/// How long mark-good waits for another firmware operation to release the lock.
const MARK_GOOD_LOCK_WAIT: Duration = Duration::from_secs(300);

/// The firmware version this binary is. A version that is not `MAJOR.MINOR.PATCH` (e.g.
/// with a pre-release suffix) is an error: every bundle would otherwise compare as newer.
pub fn running_version() -> Result<Version> {
    if cfg!(debug_assertions) {
        if let Some(text) = std::env::var_os(DEV_VERSION_ENV) {
            let text = text.to_string_lossy();
            log::warn!("debug build: running firmware version {text} from {DEV_VERSION_ENV}");
            return parse_running_version(&text);
        }
    }
    parse_running_version(env!("CARGO_PKG_VERSION"))
}

/// `text` as the running version, or an error naming it.
fn parse_running_version(text: &str) -> Result<Version> {
    text.parse().with_context(|| {
        format!(
            "the running firmware version {text:?} is not a release version (MAJOR.MINOR.PATCH); \
             refusing to compare firmware versions against it"
        )
    })
}

/// The keys this device accepts: the built-in key, the endorsed keys of
/// `firmware.endorsed_keys`, and in debug builds the key named by [`DEV_ROOT_ENV`].
pub fn device_anchors(cfg: &Config) -> Result<TrustAnchors> {
    let mut anchors = cfg
        .firmware
        .trust_anchors()
        .context("loading the trusted firmware keys")?;
    if cfg!(debug_assertions) {
        if let Some(path) = std::env::var_os(DEV_ROOT_ENV) {
            let key = PublicKey::read(Path::new(&path))
                .with_context(|| format!("{DEV_ROOT_ENV}={}", Path::new(&path).display()))?;
            log::warn!(
                "debug build: also trusting firmware key {} from {DEV_ROOT_ENV}",
                key.id()
            );
            let mut roots = anchors.roots().to_vec();
            roots.push(key);
            anchors = TrustAnchors::from_roots(roots);
            anchors.load_endorsements(&cfg.firmware.endorsed_keys)?;
        }
    }
    Ok(anchors)
}

fn software(object: &str, detail: String, ok: bool) -> Event {
    let e = Event::new(&actor(), Action::Software, object)
        .from("local")
        .detail(detail);
    if ok {
        e
    } else {
        e.failed()
    }
}

/// Whether an update error means the bundle was refused before anything was written.
fn refused(e: &UpdateError) -> bool {
    matches!(e, UpdateError::Bundle(_) | UpdateError::Policy(_))
}

/// `duli firmware keygen`.
pub fn keygen(cfg: &Config, out_dir: &Path, name: &str) -> Result<ExitCode> {
    let files = keys::write_keypair(out_dir, name)
        .with_context(|| format!("generating key pair {name} in {}", out_dir.display()))?;
    println!("private key: {} (mode 0600)", files.private.display());
    println!("public key:  {}", files.public.display());
    println!("key id:      {}", files.key.id());
    audit(
        &cfg.device.data_dir,
        true,
        software(
            "firmware-key",
            format!("keygen {name}: key id {}", files.key.id()),
            true,
        ),
    );
    Ok(ExitCode::SUCCESS)
}

/// `duli firmware sign`.
pub fn sign(
    cfg: &Config,
    key: &Path,
    payload: &Path,
    release: &Release,
    out: &Path,
) -> Result<ExitCode> {
    let pkcs8 = fs::read(key).with_context(|| format!("reading key {}", key.display()))?;
    let manifest = duli_firmware::sign(&pkcs8, release, payload, out)
        .with_context(|| format!("signing {}", payload.display()))?;
    let signer = keys::SigningKey::from_pkcs8(&pkcs8)
        .map(|k| k.public_key().id().to_string())
        .unwrap_or_default();
    println!("{}", manifest_json(&manifest));
    println!("signed by key {signer} into {}", out.display());
    audit(
        &cfg.device.data_dir,
        true,
        software(
            &out.display().to_string(),
            format!(
                "sign {} {} with key {signer}",
                manifest.payload.kind, manifest.version
            ),
            true,
        ),
    );
    Ok(ExitCode::SUCCESS)
}

/// The signer's scopes as `duli firmware verify` prints them: `root (every scope)` or the
/// endorsed scopes, comma-separated.
fn scopes_line(a: &duli_firmware::scope::Authority) -> String {
    match a {
        duli_firmware::scope::Authority::Root => "root (every scope)".into(),
        duli_firmware::scope::Authority::Endorsed(s) => {
            s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        }
    }
}

fn manifest_json(m: &Manifest) -> String {
    // Strings and integers only: serialisation cannot fail.
    serde_json::to_string_pretty(m).unwrap_or_default()
}

/// `duli firmware verify`: with `keys`, those public keys are the only trusted roots (the
/// pipeline checks its own output); without, the device's keys.
pub fn verify(cfg: &Config, bundle: &Path, keys: &[PathBuf]) -> Result<ExitCode> {
    let anchors = if keys.is_empty() {
        device_anchors(cfg)?
    } else {
        let roots = keys
            .iter()
            .map(|k| PublicKey::read(k).with_context(|| format!("reading {}", k.display())))
            .collect::<Result<Vec<_>>>()?;
        TrustAnchors::from_roots(roots)
    };
    let object = bundle.display().to_string();
    match duli_firmware::verify(bundle, &anchors) {
        Ok(v) => {
            println!("{}", manifest_json(v.manifest()));
            println!("bundle OK: signed by key {}", v.signer());
            println!("signer scopes: {}", scopes_line(v.authority()));
            audit(
                &cfg.device.data_dir,
                true,
                software(
                    &object,
                    format!(
                        "verify {} {}: signed by {}",
                        v.manifest().payload.kind,
                        v.manifest().version,
                        v.signer()
                    ),
                    true,
                ),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("bundle REFUSED: {e}");
            audit(
                &cfg.device.data_dir,
                true,
                software(&object, format!("verify refused: {e}"), false),
            );
            Ok(match e {
                BundleError::Io { .. } => ExitCode::FAILURE,
                _ => ExitCode::from(EXIT_REFUSED),
            })
        }
    }
}

/// Reads the manifest of a bundle without trusting it, only to route it (root filesystem
/// or model pack); the install that follows verifies everything.
fn peek_kind(bundle: &Path) -> Result<PayloadKind, BundleError> {
    let file = fs::File::open(bundle).map_err(|source| BundleError::Io {
        path: bundle.to_path_buf(),
        source,
    })?;
    let mut reader = std::io::BufReader::new(file);
    let header = duli_firmware::bundle::RawHeader::decode(&mut reader, bundle)?;
    Ok(Manifest::from_json(&header.manifest)?.payload.kind)
}

/// Why a file in a folder the service user owns was not taken by root.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotRegular {
    /// It did not open without following a link (or at all).
    #[error("is not a regular file that opens without following a link ({0})")]
    Open(std::io::Error),
    /// It opened, but is something else (a FIFO, a device, a folder).
    #[error("is not a regular file")]
    Kind,
    /// Its type could not be read.
    #[error("cannot be examined ({0})")]
    Examine(std::io::Error),
}

/// Opens `path` for reading without following a link and without blocking on a FIFO, and
/// keeps it only when the opened file is a regular file.
pub(crate) fn open_regular(path: &Path) -> Result<fs::File, NotRegular> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(NotRegular::Open)?;
    match file.metadata() {
        Ok(m) if m.file_type().is_file() => Ok(file),
        Ok(_) => Err(NotRegular::Kind),
        Err(e) => Err(NotRegular::Examine(e)),
    }
}

/// A copy of the staged bundle `file` (opened at `path`) that no other account can reach:
/// an unnamed file (`O_TMPFILE`) on the bundle's own file system, read for the signature
/// check and for the install alike. The service user owns the staged file and could
/// change it between the two reads; cut short while the payload is written into the
/// inactive slot, it would leave the fallback half-written. At most the bytes the
/// bundle's signed manifest declares are copied (and one more, for the check of trailing
/// bytes): a sparse terabyte appended costs nothing; what is not a bundle signed by a key
/// of `anchors` (an unsigned manifest may declare any size) copies at most its header's
/// size, for the check to name what is wrong.
fn private_copy(file: &fs::File, path: &Path, anchors: &TrustAnchors) -> std::io::Result<fs::File> {
    use duli_firmware::bundle::{RawHeader, HEADER_LEN, MAX_MANIFEST_LEN};
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = file;
    src.seek(SeekFrom::Start(0))?;
    let signed_size = duli_firmware::verify::verify_stream(&mut src, path, anchors)
        .ok()
        .map(|s| s.manifest().payload.size);
    src.seek(SeekFrom::Start(0))?;
    let bound = signed_size
        .and_then(|size| {
            let h = RawHeader::decode(&mut src, path).ok()?;
            h.payload_offset().checked_add(size)?.checked_add(1)
        })
        .unwrap_or(HEADER_LEN + u64::from(MAX_MANIFEST_LEN));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut copy = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_TMPFILE | nix::libc::O_EXCL | nix::libc::O_CLOEXEC)
        .open(dir)?;
    src.seek(SeekFrom::Start(0))?;
    std::io::copy(&mut src.take(bound), &mut copy)?;
    copy.seek(SeekFrom::Start(0))?;
    Ok(copy)
}

/// Largest manifest sidecar read back.
const MAX_SIDECAR: u64 = 1 << 20;

/// Version of the model pack installed at `dest`, from the manifest saved beside it (read
/// without following a link: the folder is the service user's).
fn installed_pack_version(dest: &Path) -> Option<Version> {
    use std::io::Read;
    let file = open_regular(&pack_manifest_path(dest)).ok()?;
    let mut text = Vec::new();
    file.take(MAX_SIDECAR).read_to_end(&mut text).ok()?;
    Manifest::from_json(&text).ok().map(|m| m.version)
}

fn pack_manifest_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".manifest.json");
    dest.with_file_name(name)
}

/// `duli firmware install`: a root filesystem into the inactive slot (trial boot armed),
/// or a model pack onto the data partition. With `staged`, the bundle is
/// `firmware.staged_bundle` and is consumed whatever happens (deleted after success,
/// renamed `*.rejected` after a failure) so that the path unit does not start again; only
/// the file this run opened is consumed, never one staged in its place meanwhile. A model
/// pack of another model than the one `model_name` holds is refused unless
/// `replace_model` (a technician's choice; never for the staged bundle).
pub fn install(
    cfg: &Config,
    bundle: Option<&Path>,
    staged: bool,
    model_name: &str,
    replace_model: bool,
) -> Result<ExitCode> {
    if staged && replace_model {
        anyhow::bail!("--replace-model is for a technician's install of a bundle, not --staged");
    }
    let path = match (bundle, staged) {
        (Some(_), true) => anyhow::bail!("give either a bundle or --staged, not both"),
        (Some(p), false) => p.to_path_buf(),
        (None, true) => cfg.firmware.staged_bundle.clone(),
        (None, false) => anyhow::bail!("give the bundle to install, or --staged"),
    };
    // The staged bundle lies in the service user's folder and root reads it: it is opened
    // once, without following a link and without blocking (a FIFO), and taken only when
    // that opened file is a regular one; every later read goes through this descriptor
    // (`/proc/self/fd/N`), so swapping the path afterwards changes nothing. (Its content
    // may still change: the payload is hashed again as it is written.)
    let opened = if staged {
        Some(open_regular(&path))
    } else {
        None
    };
    // What this run consumes afterwards: the file it opened, or what stood at the path
    // when it was refused.
    let consumed = match &opened {
        Some(Ok(file)) => file.metadata().ok().map(|m| FileId::of(&m)),
        Some(Err(_)) => fs::symlink_metadata(&path).ok().map(|m| FileId::of(&m)),
        None => None,
    };
    // Unattended (staged), the install waits for an operation in progress (a technician's
    // install, mark-good at boot) rather than throwing the bundle away.
    let lock = if staged {
        UpdateLock::wait(&cfg.firmware.lock_path(), STAGED_LOCK_WAIT)
    } else {
        cfg.firmware.lock()
    };
    let result = match (&lock, &opened) {
        (Err(e), _) => {
            eprintln!("install FAILED: {e}");
            audit(
                &cfg.device.data_dir,
                false,
                software(
                    &path.display().to_string(),
                    format!("install failed: {e}"),
                    false,
                ),
            );
            Ok(ExitCode::FAILURE)
        }
        (Ok(_), Some(Err(why))) => {
            let why = format!("{}: {why}", path.display());
            report_refusal(&cfg.device.data_dir, &path.display().to_string(), &why);
            Ok(ExitCode::from(EXIT_REFUSED))
        }
        (Ok(_), Some(Ok(file))) => match device_anchors(cfg)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
            .and_then(|anchors| private_copy(file, &path, &anchors))
        {
            Ok(copy) => {
                let through = PathBuf::from(format!("/proc/self/fd/{}", copy.as_raw_fd()));
                install_path(cfg, &through, &path, model_name, false)
            }
            Err(e) => {
                let why = format!("{}: cannot copy the staged bundle: {e}", path.display());
                report_refusal(&cfg.device.data_dir, &path.display().to_string(), &why);
                Ok(ExitCode::from(EXIT_REFUSED))
            }
        },
        (Ok(_), None) => install_path(cfg, &path, &path, model_name, replace_model),
    };
    drop(opened);
    // A bundle not looked at (the lock still held after the wait) stays staged: the path
    // unit starts the install again.
    if staged && !matches!(lock, Err(LockError::Busy(_))) {
        let ok = matches!(result, Ok(ref code) if *code == ExitCode::SUCCESS);
        consume_staged(&path, consumed, ok)?;
    }
    drop(lock);
    result
}

/// How long an unattended install of the staged bundle waits for another firmware
/// operation to finish (within the update unit's 30-minute start limit).
const STAGED_LOCK_WAIT: Duration = Duration::from_secs(15 * 60);

/// A file's identity: device and inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Deletes (after success) or moves aside as `*.rejected` (after a failure) the staged
/// bundle at `path`, provided it is still the file `consumed` this run took; a bundle
/// staged there meanwhile (the daemon stages by atomic rename) is left for the next run.
fn consume_staged(path: &Path, consumed: Option<FileId>, ok: bool) -> Result<()> {
    let now = match fs::symlink_metadata(path) {
        Ok(meta) => FileId::of(&meta),
        Err(_) => return Ok(()),
    };
    if consumed != Some(now) {
        eprintln!(
            "{} was replaced during the install (a newly staged bundle): left in place",
            path.display()
        );
        return Ok(());
    }
    if ok {
        fs::remove_file(path)
            .with_context(|| format!("removing the installed {}", path.display()))?;
    } else {
        let mut rejected = path.to_path_buf().into_os_string();
        rejected.push(".rejected");
        fs::rename(path, &rejected)
            .with_context(|| format!("moving the refused bundle {} aside", path.display()))?;
        eprintln!(
            "staged bundle moved to {}",
            PathBuf::from(rejected).display()
        );
    }
    Ok(())
}

/// The firmware lock for mark-good: taken at once when free, else waited for.
fn lock_for_mark_good(cfg: &Config) -> Result<UpdateLock, LockError> {
    match cfg.firmware.lock() {
        Err(LockError::Busy(path)) => {
            eprintln!(
                "another install, mark-good or rollback holds {}: waiting up to {} s",
                path.display(),
                MARK_GOOD_LOCK_WAIT.as_secs()
            );
            UpdateLock::wait(&path, MARK_GOOD_LOCK_WAIT)
        }
        other => other,
    }
}

/// Says that the install of `object` is refused because `why`, and records it.
fn report_refusal(data_dir: &Path, object: &str, why: &dyn std::fmt::Display) {
    eprintln!("bundle REFUSED: {why}");
    audit(
        data_dir,
        false,
        software(object, format!("install refused: {why}"), false),
    );
}

/// Installs the bundle read at `path`, named `shown` in messages and the audit trail (the
/// staged bundle is read through its descriptor).
fn install_path(
    cfg: &Config,
    path: &Path,
    shown: &Path,
    model_name: &str,
    replace_model: bool,
) -> Result<ExitCode> {
    let object = shown.display().to_string();
    let data_dir = &cfg.device.data_dir;
    let anchors = device_anchors(cfg)?;
    // A manifest that does not parse may also be one whose signature fails: report
    // what full verification says, as verify would.
    let kind = match peek_kind(path).map_err(|e| match duli_firmware::verify(path, &anchors) {
        Ok(_) => e,
        Err(full) => full,
    }) {
        Ok(kind) => kind,
        Err(e) => {
            report_refusal(data_dir, &object, &e);
            return Ok(match e {
                BundleError::Io { .. } => ExitCode::FAILURE,
                _ => ExitCode::from(EXIT_REFUSED),
            });
        }
    };
    let running = running_version()?;
    // Which hardware this box is: a configuration that names other hardware than the
    // image refuses every install, and says so in the trail.
    let policy = match cfg.firmware.policy(running) {
        Ok(policy) => policy,
        Err(e) => {
            report_refusal(data_dir, &object, &e);
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
    };
    let outcome = match kind {
        PayloadKind::Rootfs => install_rootfs(cfg, path, &anchors, policy)?,
        PayloadKind::ModelPack => {
            let dest = cfg.firmware.model_pack_path(model_name);
            // Made without following a link the service user may have planted in its place.
            duli_firmware::dir_write::create_folders(&cfg.firmware.model_packs)
                .with_context(|| format!("creating {}", cfg.firmware.model_packs.display()))?;
            // The floor is root's record; the manifest beside the pack (in the service
            // user's folder) only counts where it says more, e.g. before the record existed.
            let floor_path = &cfg.firmware.model_pack_versions;
            let mut floor = match PackVersions::load(floor_path) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("install FAILED: {e}");
                    audit(
                        data_dir,
                        false,
                        software(&object, format!("install failed: {e}"), false),
                    );
                    return Ok(ExitCode::FAILURE);
                }
            };
            // Which model the pack is (signed with it): a pack of another model than the
            // one this name holds is installed only when a technician says so.
            // Read through one descriptor opened here: the staged bundle's private copy
            // (`/proc/self/fd/N`, itself a link) or the file the technician named, which
            // may be a link on a USB stick.
            let signed = fs::File::open(path)
                .map_err(|source| crate::infer::pack::PackError::Verify {
                    path: shown.to_path_buf(),
                    source: BundleError::Io {
                        path: shown.to_path_buf(),
                        source,
                    },
                })
                .and_then(|f| crate::infer::pack::signed_model_in(&f, shown, &anchors));
            let (model, payload) = match signed {
                Ok(m) => m,
                Err(e) => {
                    report_refusal(data_dir, &object, &e);
                    return Ok(ExitCode::from(EXIT_REFUSED));
                }
            };
            // The model this name holds: root's record, else (a record kept before models
            // were) the pack installed under it, when it verifies.
            let holds = floor.model(model_name).map(str::to_string).or_else(|| {
                dest.exists()
                    .then(|| crate::infer::pack::signed_model(&dest, &anchors).ok())
                    .flatten()
                    .map(|(m, _)| m)
            });
            let replacing = holds.clone().filter(|m| *m != model);
            if let (Some(recorded), false) = (&replacing, replace_model) {
                let why = format!(
                    "the pack holds model {model:?}, but {model_name:?} holds model {recorded:?} \
                     (recorded in {}); to replace the model, a technician runs \
                     `duli firmware install --replace-model` with the bundle",
                    floor_path.display()
                );
                report_refusal(data_dir, &object, &why);
                return Ok(ExitCode::from(EXIT_REFUSED));
            }
            // Another model (or, asked to replace, one whose model is not known) starts
            // its own version line: the floor of the model it replaces does not hold it.
            let new_line = replacing.is_some() || (replace_model && holds.is_none());
            let installed = if new_line {
                None
            } else {
                floor.get(model_name).max(installed_pack_version(&dest))
            };
            let expected = Some(payload.as_str());
            install_model_pack(path, &anchors, &policy, installed, &dest, expected).and_then(|v| {
                put_pack_record(&dest, &v)?;
                // Raised only now that the pack is verified and in place: a bundle that
                // fails verification cannot move the floor.
                if new_line {
                    floor.replace(model_name, v.manifest().version, &model);
                } else {
                    floor.raise(model_name, v.manifest().version, &model);
                }
                floor.store(floor_path).map_err(|e| {
                    UpdateError::Slot(duli_firmware::slot::SlotError::Io {
                        path: floor_path.clone(),
                        source: std::io::Error::other(format!(
                            "model pack {} is installed, but its version could not be recorded ({e}); until it is, an older pack could be installed again",
                            v.manifest().version
                        )),
                    })
                })?;
                let replaced = replacing
                    .as_deref()
                    .map(|old| format!(", replacing model {old}"))
                    .unwrap_or_default();
                println!(
                    "installed model pack {} of model {model} (signed by {}) at {}{replaced}",
                    v.manifest().version,
                    v.signer(),
                    dest.display()
                );
                Ok(format!(
                    "install model pack {} of model {model} at {} (signed by {}){replaced}",
                    v.manifest().version,
                    dest.display(),
                    v.signer()
                ))
            })
        }
    };
    Ok(report_outcome(data_dir, &object, outcome))
}

/// Installs a root filesystem bundle into the inactive slot and arms its trial boots;
/// the audit detail, or why not.
fn install_rootfs(
    cfg: &Config,
    path: &Path,
    anchors: &TrustAnchors,
    policy: duli_firmware::policy::DevicePolicy,
) -> Result<Result<String, UpdateError>> {
    let mut updater = cfg.firmware.updater_with(policy)?;
    Ok(updater.install(path, anchors).map(|r| {
        let m = r.manifest.manifest();
        println!(
            "installed firmware {} (signed by {}) into slot {}; {} trial boot(s) armed",
            m.version,
            r.manifest.signer(),
            r.slot,
            r.attempts
        );
        println!("reboot to start it; the health check commits it after the boot");
        format!(
            "install rootfs {} into slot {} (signed by {})",
            m.version,
            r.slot,
            r.manifest.signer()
        )
    }))
}

/// Writes the installed pack's manifest beside it. Root writes into the service user's
/// folder: through the folder's descriptor, never following a link planted there.
fn put_pack_record(dest: &Path, v: &duli_firmware::VerifiedManifest) -> Result<(), UpdateError> {
    let sidecar = pack_manifest_path(dest);
    let io = |source| {
        UpdateError::Slot(duli_firmware::slot::SlotError::Io {
            path: sidecar.clone(),
            source,
        })
    };
    let name = sidecar.file_name().unwrap_or_default().to_string_lossy();
    duli_firmware::dir_write::Dir::open(sidecar.parent().unwrap_or(Path::new(".")))
        .and_then(|d| d.replace(&name, &v.manifest().to_json()))
        .map_err(io)
}

/// Says how an install ended, records it in the audit trail, and gives the exit code:
/// success, refused (nothing was written) or failed.
fn report_outcome(data_dir: &Path, object: &str, outcome: Result<String, UpdateError>) -> ExitCode {
    match outcome {
        Ok(detail) => {
            audit(data_dir, false, software(object, detail, true));
            ExitCode::SUCCESS
        }
        Err(e) => {
            let (code, what) = if refused(&e) {
                eprintln!("bundle REFUSED, nothing was written: {e}");
                (ExitCode::from(EXIT_REFUSED), "install refused")
            } else {
                eprintln!("install FAILED: {e}");
                (ExitCode::FAILURE, "install failed")
            };
            audit(
                data_dir,
                false,
                software(object, format!("{what}: {e}"), false),
            );
            code
        }
    }
}

/// `duli firmware status`.
pub fn status(cfg: &Config, json: bool) -> Result<ExitCode> {
    // The boot state is shown even when the hardware identifier is in question (installs
    // are refused then, and the status says why).
    let device = cfg.firmware.device_hardware();
    let updater = cfg
        .firmware
        .updater_with(duli_firmware::policy::DevicePolicy {
            hardware_id: device
                .as_ref()
                .map(|(id, _)| id.clone())
                .unwrap_or_default(),
            running_version: running_version()?,
        })?;
    let s = updater.status()?;
    let (hardware, hardware_from) = match device {
        Ok((id, from)) => (id, from.to_string()),
        Err(e) => (
            format!("ERROR: {e} (firmware installs are refused)"),
            "-".to_string(),
        ),
    };
    let value = serde_json::json!({
        "backend": s.backend,
        "hardware_id": hardware,
        "hardware_id_from": hardware_from,
        "booted": s.booted.to_string(),
        "running_version": s.running_version.to_string(),
        "active": s.boot.active.to_string(),
        "target": s.boot.target.to_string(),
        "attempts": s.boot.attempts,
        "a_good": s.boot.a_good,
        "b_good": s.boot.b_good,
        "a_version": s.boot.a_version.map(|v| v.to_string()),
        "b_version": s.boot.b_version.map(|v| v.to_string()),
        "security_floor": s.boot.floor,
        "a_security": s.boot.a_security,
        "b_security": s.boot.b_security,
        "trial": s.booted != s.boot.active,
        "update_pending": s.boot.trial_pending() && s.booted == s.boot.active,
    });
    // The model-pack floor: versions per model, or why the record cannot be read.
    let packs = PackVersions::load(&cfg.firmware.model_pack_versions);
    let mut value = value;
    value["model_pack_floor"] = match &packs {
        Ok(p) => serde_json::json!(p
            .all()
            .iter()
            .map(|(name, f)| (name.clone(), f.version.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    // And the model each install name holds (absent where recorded before models were).
    if let Ok(p) = &packs {
        value["model_pack_models"] = serde_json::json!(p
            .all()
            .iter()
            .filter_map(|(name, f)| Some((name.clone(), f.model.clone()?)))
            .collect::<std::collections::BTreeMap<_, _>>());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let state = if s.booted != s.boot.active {
            format!(
                "TRIAL boot of slot {} (committed slot {}): run mark-good or rollback",
                s.booted, s.boot.active
            )
        } else if s.boot.trial_pending() {
            format!(
                "update installed in slot {}: reboot to try it ({} attempt(s))",
                s.boot.target, s.boot.attempts
            )
        } else {
            "committed".to_string()
        };
        println!("firmware {} on slot {}", s.running_version, s.booted);
        println!("state:      {state}");
        println!("bootloader: {}", s.backend);
        println!("hardware:   {hardware} (from {hardware_from}; bundles must list it)");
        println!(
            "variables:  active={} target={} attempts={} a_good={} b_good={}",
            s.boot.active, s.boot.target, s.boot.attempts, s.boot.a_good, s.boot.b_good
        );
        println!(
            "security:   floor={} a={} b={} (root filesystems and rollbacks below the floor are refused)",
            s.boot.floor, s.boot.a_security, s.boot.b_security
        );
        let packs = match &packs {
            Ok(p) if p.all().is_empty() => "none installed".to_string(),
            Ok(p) => p
                .all()
                .iter()
                .map(|(name, f)| match &f.model {
                    Some(model) => format!("{name}={} ({model})", f.version),
                    None => format!("{name}={}", f.version),
                })
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => format!("UNREADABLE: {e}"),
        };
        println!("model packs: {packs} (older packs are refused)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `duli firmware mark-good`: on a trial boot with `health_check`, the health check runs
/// first (waiting up to `timeout` for the daemon) and a failure leaves the slot on trial.
pub fn mark_good(cfg: &Config, health_check: bool, timeout: Duration) -> Result<ExitCode> {
    let mut updater = cfg.firmware.updater(running_version()?)?;
    let s = updater.status()?;
    let data_dir = &cfg.device.data_dir;
    let slot = format!("slot {}", s.booted);
    if health_check && s.booted != s.boot.active {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the health check")?;
        let report = rt.block_on(crate::health::check(cfg, timeout));
        print!("{report}");
        if !report.passed() {
            eprintln!(
                "health check FAILED: slot {} stays on trial; the bootloader returns to slot {} \
                 when its attempts are spent",
                s.booted, s.boot.active
            );
            let failed: Vec<_> = report
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            audit(
                data_dir,
                false,
                software(
                    &slot,
                    format!("mark-good: health check failed: {}", failed.join("; ")),
                    false,
                ),
            );
            return Ok(ExitCode::from(EXIT_UNHEALTHY));
        }
    }
    let outcome = lock_for_mark_good(cfg)
        .map_err(anyhow::Error::from)
        .and_then(|lock| {
            let outcome = updater.mark_good().map_err(anyhow::Error::from);
            drop(lock);
            outcome
        });
    match outcome {
        Ok(MarkGood::Committed(slot_now)) => {
            println!(
                "slot {slot_now} committed: firmware {} is now the fallback",
                s.running_version
            );
            audit(
                data_dir,
                false,
                software(
                    &slot,
                    format!(
                        "mark-good: committed slot {slot_now} (firmware {})",
                        s.running_version
                    ),
                    true,
                ),
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(MarkGood::AlreadyCommitted(slot_now)) => {
            println!("slot {slot_now} was already committed; its good flag is set");
            audit(
                data_dir,
                false,
                software(
                    &slot,
                    format!("mark-good: slot {slot_now} already committed"),
                    true,
                ),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("mark-good FAILED: {e}");
            audit(
                data_dir,
                false,
                software(&slot, format!("mark-good failed: {e}"), false),
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `duli firmware rollback`.
pub fn rollback(cfg: &Config) -> Result<ExitCode> {
    let mut updater = cfg.firmware.updater(running_version()?)?;
    let data_dir = &cfg.device.data_dir;
    let outcome = cfg
        .firmware
        .lock()
        .map_err(anyhow::Error::from)
        .and_then(|lock| {
            let outcome = updater.rollback().map_err(anyhow::Error::from);
            drop(lock);
            outcome
        });
    match outcome {
        Ok(r) => {
            let what = match r {
                Rollback::AbandonedTrial(s) => {
                    format!("trial abandoned; the next boot returns to slot {s}")
                }
                Rollback::CancelledPending(s) => {
                    format!("pending update cancelled; the next boot stays on slot {s}")
                }
                Rollback::ArmedPrevious(s) => format!(
                    "previous slot {s} armed for a trial boot; run mark-good on it to keep it"
                ),
            };
            println!("{what}");
            println!("reboot to apply");
            audit(
                data_dir,
                false,
                software("firmware", format!("rollback: {what}"), true),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("rollback FAILED: {e}");
            audit(
                data_dir,
                false,
                software("firmware", format!("rollback failed: {e}"), false),
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running version that does not parse is refused, naming it, never taken as 0.0.0
    /// (over which every signed bundle would pass the downgrade check).
    #[test]
    fn an_unparseable_running_version_fails_closed() {
        assert_eq!(
            parse_running_version("1.4.2").unwrap(),
            Version::new(1, 4, 2)
        );
        for bad in ["1.4.2-rc.1", "1.4", "", "v1.4.2"] {
            match parse_running_version(bad) {
                Ok(v) => panic!("{bad:?} taken as {v}"),
                Err(e) => assert!(format!("{e:#}").contains(&format!("{bad:?}")), "{e:#}"),
            }
        }
        assert!(running_version().is_ok(), "this build's own version parses");
    }
}
