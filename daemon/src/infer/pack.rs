//! A model pack in service (`inference.model_pack = "NAME"`): the daemon runs the model of
//! the signed pack installed as `firmware.model_packs/NAME.pack` (`duli firmware install`)
//! instead of `inference.model`. Each time the engine is made, the pack is verified again
//! (signature, signer's scope, kind, hardware and minimum firmware version, and its whole
//! payload's SHA-256 before the archive reader sees a byte of it; then hashed again as it
//! streams) and its payload, a tar archive of one model folder, is unpacked
//! into a new folder under the data folder; that folder replaces the one in service only
//! once the whole payload matched its signed hash. So the manifest, its thresholds and the
//! network files a result is made with are always those the pack's signer shipped.
//!
//! The archive (`tar --format=ustar -cf PACK.tar -C models/NAME .`) holds regular files and
//! folders only, at most [`MAX_ENTRIES`] entries, names relative and without `..`, with a
//! `model.toml` at its top.

use duli_firmware::bundle::BundleError;
use duli_firmware::config::FirmwareConfig;
use duli_firmware::model_pack::{open_installed, open_no_follow, open_pack_file};
use duli_firmware::pack_versions::PackVersions;
use duli_firmware::policy::PolicyError;
use duli_firmware::{PayloadKind, TrustAnchors, Version};
use std::path::{Component, Path, PathBuf};

/// Most entries an archive may hold.
pub const MAX_ENTRIES: usize = 256;

/// Folder (under the data folder) the packs in service are unpacked into.
pub const IN_SERVICE: &str = "model-in-service";

/// Why a model pack cannot be put in service.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The installed pack does not verify (missing, altered, untrusted, not a model pack).
    #[error("model pack {path}: {source}")]
    Verify {
        /// The installed pack.
        path: PathBuf,
        /// Why.
        source: BundleError,
    },
    /// The pack is authentic but not for this box.
    #[error("model pack {path}: {source}")]
    Policy {
        /// The installed pack.
        path: PathBuf,
        /// Why.
        source: PolicyError,
    },
    /// The firmware settings do not say which hardware this box is.
    #[error("model pack {path}: {source}")]
    Device {
        /// The installed pack.
        path: PathBuf,
        /// Why.
        source: duli_firmware::config::ConfigError,
    },
    /// The pack is older than one root installed before (the model-pack floor,
    /// `firmware.model_pack_versions`): an older, still correctly signed pack put back by
    /// whoever runs as the service user.
    #[error("model pack {path}: version {version} is below {floor}, the highest version of this model's pack root installed (recorded in {record}); install a pack of version {floor} or later with `duli firmware install`")]
    BelowFloor {
        /// The installed pack.
        path: PathBuf,
        /// The pack's version.
        version: Version,
        /// The highest version installed before.
        floor: Version,
        /// The record that says so.
        record: PathBuf,
    },
    /// The pack is another model than the one root recorded for its install name: a signed
    /// pack of another model put under this name by whoever runs as the service user.
    #[error("model pack {path}: it holds model {model:?}, but root recorded model {recorded:?} for this pack's name (in {record}); a technician replaces a model with `duli firmware install --replace-model`")]
    OtherModel {
        /// The installed pack.
        path: PathBuf,
        /// The model the pack holds.
        model: String,
        /// The model recorded for its name.
        recorded: String,
        /// The record that says so.
        record: PathBuf,
    },
    /// The model-pack floor cannot be read, so the pack's version cannot be checked.
    #[error("model pack {path}: {source}")]
    Floor {
        /// The installed pack.
        path: PathBuf,
        /// Why.
        source: duli_firmware::pack_versions::PackVersionsError,
    },
    /// The payload is not an archive this loader takes.
    #[error("model pack {path}: its archive {reason}")]
    Archive {
        /// The installed pack.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Unpacking failed.
    #[error("model pack: unpacking into {path}: {source}")]
    Io {
        /// The file or folder written.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// Where the manifest of pack `name` is when in service under `data_dir`.
pub fn manifest_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(IN_SERVICE).join(name).join("model.toml")
}

/// Whether `name` may name a pack: letters, digits, `.`, `_`, `-`, not starting with `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why an archive cannot be read, in printable words ([`printable`]).
fn unreadable(e: &std::io::Error) -> String {
    format!("cannot be read ({})", printable(&e.to_string()))
}

/// Text taken from a pack (a reader's message quoting the archive's bytes, an entry's
/// name) as it may be shown and audited: printable ASCII, at most 120 characters.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(120)
        .collect()
}

/// Largest model manifest read to learn which model a pack is.
const MAX_MODEL_TOML: u64 = 256 * 1024;

/// Why a model manifest names no model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelNameError {
    /// The manifest is not UTF-8 text.
    #[error("is not UTF-8 text")]
    NotText,
    /// It is not TOML with a string `name`.
    #[error("does not name its model ({0})")]
    NoName(String),
    /// Its `name` is empty or longer than 128 bytes.
    #[error("names no usable model ({0:?})")]
    Unusable(String),
}

/// The model a model manifest names (its `name`), from its TOML text.
pub fn model_name_of(toml_text: &[u8]) -> Result<String, ModelNameError> {
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
    }
    let text = std::str::from_utf8(toml_text).map_err(|_| ModelNameError::NotText)?;
    let named: Named =
        toml::from_str(text).map_err(|e| ModelNameError::NoName(printable(&e.to_string())))?;
    if named.name.trim().is_empty() || named.name.len() > 128 {
        return Err(ModelNameError::Unusable(printable(&named.name)));
    }
    Ok(named.name)
}

/// The model a pack is: the `name` in the `model.toml` at the top of the archive `reader`
/// streams (a pack's payload; its hash is the caller's to check once it has been read).
/// The name is signed with the pack, as every byte of its payload is.
pub fn model_of(reader: &mut impl std::io::Read, pack: &Path) -> Result<String, PackError> {
    use std::io::Read;
    let bad = |reason: String| PackError::Archive {
        path: pack.to_path_buf(),
        reason,
    };
    let found = walk(reader, pack, |entry, rel| {
        if rel != Path::new("model.toml") || !entry.header().entry_type().is_file() {
            return Ok(None);
        }
        let mut text = Vec::new();
        entry
            .take(MAX_MODEL_TOML + 1)
            .read_to_end(&mut text)
            .map_err(|e| bad(unreadable(&e)))?;
        if text.len() as u64 > MAX_MODEL_TOML {
            return Err(bad(format!("has a model.toml over {MAX_MODEL_TOML} bytes")));
        }
        model_name_of(&text)
            .map(Some)
            .map_err(|why| bad(format!("has a model.toml that {why}")))
    })?;
    found.ok_or_else(|| bad("has no model.toml at its top".into()))
}

/// Walks the archive `reader` streams (at most [`MAX_ENTRIES`] entries), giving `visit`
/// each entry with its path inside the pack's folder, until `visit` returns something; an
/// entry naming a place outside the folder is refused.
fn walk<R: std::io::Read, T>(
    reader: R,
    pack: &Path,
    mut visit: impl FnMut(&mut tar::Entry<'_, R>, PathBuf) -> Result<Option<T>, PackError>,
) -> Result<Option<T>, PackError> {
    let bad = |reason: String| PackError::Archive {
        path: pack.to_path_buf(),
        reason,
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| bad(unreadable(&e)))?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(bad(format!("has more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| bad(unreadable(&e)))?;
        let raw = entry
            .path()
            .map_err(|e| bad(format!("has an unreadable name ({})", unreadable(&e))))?
            .into_owned();
        let mut rel = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(part) => rel.push(part),
                Component::CurDir => {}
                _ => {
                    let name = printable(&raw.to_string_lossy());
                    return Err(bad(format!("names {name} outside its folder")));
                }
            }
        }
        if let Some(found) = visit(&mut entry, rel)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The model of the model-pack bundle (or installed pack) at `bundle`, opened without
/// following a link, read from its payload and verified: signed by a key of `anchors`,
/// every byte of the payload hashed. Returns the model with the SHA-256 of the payload it
/// was read from (so that an install can tell that it wrote the same payload).
pub fn signed_model(bundle: &Path, anchors: &TrustAnchors) -> Result<(String, String), PackError> {
    let file = open_no_follow(bundle).map_err(|source| PackError::Verify {
        path: bundle.to_path_buf(),
        source,
    })?;
    signed_model_in(&file, bundle, anchors)
}

/// [`signed_model`] for a bundle already opened as `file` (named `shown`): a staged bundle's
/// private copy, or the file a technician named. The whole payload is hashed before its
/// archive is read, so the archive reader only ever sees signed bytes (the tar reader
/// sizes some reads by an entry's header), then read again for the model, hashed again.
pub fn signed_model_in(
    file: &std::fs::File,
    shown: &Path,
    anchors: &TrustAnchors,
) -> Result<(String, String), PackError> {
    let verify = |source| PackError::Verify {
        path: shown.to_path_buf(),
        source,
    };
    let reopen = || {
        let copy = file.try_clone().map_err(|source| BundleError::Io {
            path: shown.to_path_buf(),
            source,
        })?;
        open_pack_file(copy, shown, anchors)
    };
    reopen().and_then(|s| s.finish()).map_err(verify)?;
    let mut stream = reopen().map_err(verify)?;
    let payload = stream.manifest().payload.sha256.clone();
    let model = model_of(&mut stream, shown);
    stream.finish().map_err(verify)?;
    Ok((model?, payload))
}

/// Verifies the installed pack `name` against `anchors` (the device's keys, see
/// [`crate::firmware_cli::device_anchors`]) and unpacks it in service under `data_dir`,
/// for a box running firmware `running`; returns the path of its manifest and the pack's
/// version. On any error the model in service before is left as it was.
pub fn put_in_service(
    fw: &FirmwareConfig,
    anchors: &TrustAnchors,
    name: &str,
    data_dir: &Path,
    running: Version,
) -> Result<(PathBuf, Version), PackError> {
    let pack = fw.model_pack_path(name);
    let verify = |source| PackError::Verify {
        path: pack.clone(),
        source,
    };
    // The whole pack is checked first, so the archive reader only ever sees signed bytes;
    // the second read, which unpacks, is hashed again (the file may change in between).
    duli_firmware::verify(&pack, anchors).map_err(verify)?;
    let stream = open_installed(&pack, anchors).map_err(verify)?;
    fw.policy(running)
        .map_err(|source| PackError::Device {
            path: pack.clone(),
            source,
        })?
        .check(stream.manifest(), PayloadKind::ModelPack, None)
        .map_err(|source| PackError::Policy {
            path: pack.clone(),
            source,
        })?;
    let version = stream.manifest().version;
    // The floor root keeps is checked here too, not only when root installs: the packs'
    // folder belongs to the service user, who could put an older signed pack back.
    let floor = PackVersions::load(&fw.model_pack_versions).map_err(|source| PackError::Floor {
        path: pack.clone(),
        source,
    })?;
    if let Some(floor) = floor.get(name).filter(|floor| version < *floor) {
        return Err(PackError::BelowFloor {
            path: pack,
            version,
            floor,
            record: fw.model_pack_versions.clone(),
        });
    }
    let root = data_dir.join(IN_SERVICE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Io { path, source }
    };
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    // Staging folders a crash left behind (of any earlier process) go first.
    let partial = format!(".{name}.partial-");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&partial) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let staging = root.join(format!("{partial}{}", std::process::id()));
    let result = (|| {
        std::fs::create_dir(&staging).map_err(io(&staging))?;
        let mut stream = stream;
        // An archive that does not unpack may be an altered one: the payload's hash, when
        // it does not match, is the reason given.
        let unpacked = unpack(&mut stream, &staging, &pack);
        stream.finish().map_err(verify)?;
        unpacked?;
        let manifest = staging.join("model.toml");
        if !manifest.is_file() {
            return Err(PackError::Archive {
                path: pack.clone(),
                reason: "has no model.toml at its top".into(),
            });
        }
        // The model root recorded for this name, when it recorded one: a signed pack of
        // another model put here by the service user does not go in service.
        let text = std::fs::read(&manifest).map_err(io(&manifest))?;
        let model = model_name_of(&text).map_err(|why| PackError::Archive {
            path: pack.clone(),
            reason: format!("has a model.toml that {why}"),
        })?;
        if let Some(recorded) = floor.other_model(name, &model) {
            return Err(PackError::OtherModel {
                path: pack.clone(),
                model,
                recorded: recorded.to_string(),
                record: fw.model_pack_versions.clone(),
            });
        }
        let live = root.join(name);
        let _ = std::fs::remove_dir_all(&live);
        std::fs::rename(&staging, &live).map_err(io(&live))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result?;
    log::info!("model pack {name} {version} verified and put in service");
    Ok((manifest_path(data_dir, name), version))
}

/// Unpacks the archive `reader` streams into the new, empty folder `into`: regular files
/// and folders only, each inside `into` (created without following a link).
pub(crate) fn unpack(
    reader: &mut impl std::io::Read,
    into: &Path,
    pack: &Path,
) -> Result<(), PackError> {
    use std::os::unix::fs::OpenOptionsExt;
    walk(reader, pack, |entry, rel| {
        let kind = entry.header().entry_type();
        let target = into.join(&rel);
        let io = |source| PackError::Io {
            path: target.clone(),
            source,
        };
        if kind.is_dir() {
            if !rel.as_os_str().is_empty() {
                std::fs::create_dir_all(&target).map_err(io)?;
            }
            return Ok(None::<()>);
        }
        if !kind.is_file() || rel.as_os_str().is_empty() {
            return Err(PackError::Archive {
                path: pack.to_path_buf(),
                reason: format!(
                    "holds {} that is not a regular file or folder",
                    printable(&rel.to_string_lossy())
                ),
            });
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&target)
            .map_err(io)?;
        std::io::copy(entry, &mut file).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(None)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use duli_firmware::keys::{generate_pkcs8, SigningKey};
    use duli_firmware::model_pack::install_model_pack;
    use duli_firmware::sign::sign;
    use duli_firmware::Release;

    const HW: &str = "test-hw";

    /// The manifest of the pack first put in service.
    const FIRST: &[u8] = b"name = \"first\"\n";

    /// A box with its firmware settings over a temporary folder and a root key it trusts.
    struct Bench {
        dir: tempfile::TempDir,
        fw: FirmwareConfig,
        key: Vec<u8>,
        anchors: TrustAnchors,
    }

    impl Bench {
        fn new() -> Bench {
            let dir = tempfile::tempdir().unwrap();
            let key = generate_pkcs8().unwrap();
            let public = SigningKey::from_pkcs8(&key).unwrap().public_key();
            let fw = FirmwareConfig {
                hardware_id: Some(HW.into()),
                model_packs: dir.path().join("models"),
                model_pack_versions: dir.path().join("state/model-packs.json"),
                endorsed_keys: dir.path().join("endorsed"),
                ..FirmwareConfig::default()
            };
            std::fs::create_dir_all(&fw.model_packs).unwrap();
            Bench {
                anchors: TrustAnchors::from_roots(vec![public]),
                dir,
                fw,
                key,
            }
        }

        fn data(&self) -> PathBuf {
            self.dir.path().join("data")
        }

        /// Signs `payload` as `kind` version `version` for `hw` and installs it as "chest".
        fn install(&self, payload: &[u8], version: &str, kind: PayloadKind, hw: &str) {
            let src = self.dir.path().join("payload");
            std::fs::write(&src, payload).unwrap();
            let bundle = self.dir.path().join("pack.duli");
            let release = Release {
                version: version.parse().unwrap(),
                min_version: "0.0.1".parse().unwrap(),
                hardware: vec![hw.into()],
                kind,
                security_version: 0,
            };
            sign(&self.key, &release, &src, &bundle).unwrap();
            let dest = self.fw.model_pack_path("chest");
            if kind == PayloadKind::ModelPack && hw == HW {
                install_model_pack(
                    &bundle,
                    &self.anchors,
                    &self.fw.policy(running()).unwrap(),
                    None,
                    &dest,
                    None,
                )
                .unwrap();
            } else {
                std::fs::copy(&bundle, &dest).unwrap();
            }
        }

        fn serve(&self) -> Result<(PathBuf, Version), PackError> {
            put_in_service(&self.fw, &self.anchors, "chest", &self.data(), running())
        }
    }

    fn running() -> Version {
        "1.0.0".parse().unwrap()
    }

    /// A ustar archive of `files` (name, bytes), and of `links` (name → target).
    fn tar_of(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, bytes) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *bytes).unwrap();
        }
        for (name, target) in links {
            let mut h = tar::Header::new_ustar();
            h.set_size(0);
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_path(name).unwrap();
            h.set_link_name(target).unwrap();
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// An archive of `n` small files, `model.toml` among them.
    fn many_files(n: usize) -> Vec<u8> {
        let names: Vec<String> = (0..n)
            .map(|i| {
                if i == 0 {
                    "model.toml".into()
                } else {
                    format!("f{i}")
                }
            })
            .collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        tar_of(&files, &[])
    }

    /// The shipped model's folder as a pack's archive (its manifest, network and weights),
    /// or `None` (noted as a skip) before `make models` made the network.
    fn shipped_model() -> Option<Vec<u8>> {
        let dir = crate::infer::testdata::repo_root().join("models/pneumonia-xception");
        let names = [
            "model.toml",
            "pneumonia_xception_fp16.xml",
            "pneumonia_xception_fp16.bin",
        ];
        if !names.iter().all(|n| dir.join(n).is_file()) {
            crate::infer::testdata::note_skip(
                "model pack: the shipped model is not built (make models)",
            );
            return None;
        }
        let files: Vec<(String, Vec<u8>)> = names
            .iter()
            .map(|n| (n.to_string(), std::fs::read(dir.join(n)).unwrap()))
            .collect();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        Some(tar_of(&refs, &[]))
    }

    #[test]
    fn a_signed_pack_is_verified_unpacked_and_its_model_loads() {
        let Some(archive) = shipped_model() else {
            return;
        };
        let b = Bench::new();
        b.install(&archive, "2.1.0", PayloadKind::ModelPack, HW);
        let (manifest, version) = b.serve().unwrap();
        assert_eq!(manifest, manifest_path(&b.data(), "chest"));
        assert_eq!(version, "2.1.0".parse::<Version>().unwrap());
        let m = crate::infer::manifest::Manifest::load(&manifest).unwrap();
        assert_eq!(m.name, "pneumonia-xception");
        m.verify_files().unwrap();
        // Put in service again (every engine start): the same, nothing left over, not
        // even the staging folder of a process that died while unpacking.
        std::fs::create_dir_all(b.data().join(IN_SERVICE).join(".chest.partial-1")).unwrap();
        b.serve().unwrap();
        let left: Vec<_> = std::fs::read_dir(b.data().join(IN_SERVICE))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["chest"]);
    }

    #[test]
    fn an_altered_foreign_or_unsafe_pack_is_refused_and_the_model_in_service_stays() {
        let b = Bench::new();
        b.install(
            &tar_of(&[("model.toml", FIRST)], &[]),
            "1.0.0",
            PayloadKind::ModelPack,
            HW,
        );
        let (manifest, _) = b.serve().unwrap();
        assert_eq!(std::fs::read(&manifest).unwrap(), FIRST);
        let pack = b.fw.model_pack_path("chest");
        let stays = |what: &str, e: PackError| {
            assert_eq!(
                std::fs::read(&manifest).unwrap(),
                FIRST,
                "{what}: the model in service changed ({e})"
            );
            let left = std::fs::read_dir(b.data().join(IN_SERVICE))
                .unwrap()
                .count();
            assert_eq!(left, 1, "{what}: a staging folder was left");
        };

        // An older signed pack put back in the service user's folder after root installed
        // a newer one: refused by the floor root recorded.
        let mut floor = PackVersions::default();
        floor.raise("chest", "2.0.0".parse().unwrap(), "first");
        floor.store(&b.fw.model_pack_versions).unwrap();
        let e = b.serve().unwrap_err();
        assert!(
            matches!(&e, PackError::BelowFloor { version, floor, .. }
                if version.to_string() == "1.0.0" && floor.to_string() == "2.0.0"),
            "{e}"
        );
        stays("below the floor", e);
        // A signed pack of another model than the one root recorded for the name.
        let mut floor = PackVersions::default();
        floor.raise("chest", "0.1.0".parse().unwrap(), "someone-else");
        floor.store(&b.fw.model_pack_versions).unwrap();
        let e = b.serve().unwrap_err();
        assert!(
            matches!(&e, PackError::OtherModel { model, recorded, .. }
                if model == "first" && recorded == "someone-else"),
            "{e}"
        );
        stays("another model", e);
        std::fs::write(&b.fw.model_pack_versions, b"not json").unwrap();
        let e = b.serve().unwrap_err();
        assert!(matches!(&e, PackError::Floor { .. }), "{e}");
        stays("with an unreadable floor", e);
        std::fs::remove_file(&b.fw.model_pack_versions).unwrap();

        // A firmware release that revokes the key the pack was signed with: the pack
        // installed before no longer loads.
        let revoked = b.anchors.clone().with_revoked(b.anchors.roots().to_vec());
        let e = put_in_service(&b.fw, &revoked, "chest", &b.data(), running()).unwrap_err();
        assert!(
            matches!(
                &e,
                PackError::Verify {
                    source: duli_firmware::BundleError::RevokedKey(_),
                    ..
                }
            ),
            "{e}"
        );
        stays("signed by a revoked key", e);

        // One payload byte changed on disk: refused once the stream is read.
        let good = std::fs::read(&pack).unwrap();
        let mut bad = good.clone();
        let at = bad.len() - 2000;
        bad[at] ^= 0x20;
        std::fs::write(&pack, &bad).unwrap();
        let e = b.serve().unwrap_err();
        assert!(matches!(e, PackError::Verify { .. }), "{e}");
        stays("altered payload", e);
        std::fs::write(&pack, &good).unwrap();

        // Archives that reach outside, hold a link, or have no manifest.
        for (what, archive, needle) in [
            (
                "dot-dot",
                tar_of(&[("../evil", b"x"), ("model.toml", b"m")], &[]),
                "outside its folder",
            ),
            (
                "absolute",
                tar_of(&[("/etc/evil", b"x")], &[]),
                "outside its folder",
            ),
            (
                "link",
                tar_of(&[("model.toml", b"m")], &[("weights.bin", "/etc/shadow")]),
                "not a regular file",
            ),
            (
                "no manifest",
                tar_of(&[("weights.bin", b"w")], &[]),
                "no model.toml",
            ),
            (
                "a manifest naming no model",
                tar_of(&[("model.toml", b"m")], &[]),
                "does not name its model",
            ),
            ("not an archive", vec![7u8; 3000], "archive"),
            ("too many entries", many_files(MAX_ENTRIES + 1), "more than"),
            (
                "a size beyond the archive",
                {
                    let mut t = tar_of(&[("model.toml", b"m")], &[]);
                    // The entry's size field (octal, 12 bytes at 124) claims 8 GiB.
                    t[124..136].copy_from_slice(b"77777777777\0");
                    let sum: u32 = t[..512]
                        .iter()
                        .enumerate()
                        .map(|(i, b)| {
                            if (148..156).contains(&i) {
                                32
                            } else {
                                u32::from(*b)
                            }
                        })
                        .sum();
                    t[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
                    t
                },
                "archive",
            ),
        ] {
            b.install(&archive, "1.1.0", PayloadKind::ModelPack, HW);
            let e = b.serve().unwrap_err();
            assert!(e.to_string().contains(needle), "{what}: {e}");
            stays(what, e);
        }
        assert!(!b.dir.path().join("evil").exists());

        // Signed, but for other hardware, or not a model pack, or by an unknown key.
        b.install(
            &tar_of(&[("model.toml", b"m")], &[]),
            "1.2.0",
            PayloadKind::ModelPack,
            "other-hw",
        );
        let e = b.serve().unwrap_err();
        assert!(matches!(e, PackError::Policy { .. }), "{e}");
        stays("other hardware", e);
        b.install(&[1, 2, 3], "1.2.0", PayloadKind::Rootfs, HW);
        let e = b.serve().unwrap_err();
        assert!(e.to_string().contains("not a model pack"), "{e}");
        stays("root filesystem", e);
        b.install(
            &tar_of(&[("model.toml", b"m")], &[]),
            "1.3.0",
            PayloadKind::ModelPack,
            HW,
        );
        let stranger = Bench::new();
        let e =
            put_in_service(&b.fw, &stranger.anchors, "chest", &b.data(), running()).unwrap_err();
        assert!(matches!(e, PackError::Verify { .. }), "{e}");
        stays("unknown key", e);
    }

    /// What a pack's model is: the name in the manifest at the top of its archive; one in
    /// a sub-folder, none, one too large or naming nothing is no answer.
    #[test]
    fn a_pack_names_its_model_in_the_manifest_at_its_top() {
        let model = |archive: Vec<u8>| model_of(&mut archive.as_slice(), Path::new("p"));
        let named = tar_of(
            &[
                ("w.bin", b"x"),
                ("model.toml", b"name = \"chest\"\nx = 1\n"),
            ],
            &[],
        );
        assert_eq!(model(named).unwrap(), "chest");
        let nested = tar_of(&[("sub/model.toml", b"name = \"chest\"")], &[]);
        assert!(model(nested)
            .unwrap_err()
            .to_string()
            .contains("no model.toml"));
        let big = vec![b'#'; MAX_MODEL_TOML as usize + 1];
        let e = model(tar_of(&[("model.toml", &big)], &[])).unwrap_err();
        assert!(e.to_string().contains("over"), "{e}");
        for text in [&b"name = \"\""[..], b"name = 3", b"\xff", b"other = 1"] {
            assert!(
                model(tar_of(&[("model.toml", text)], &[])).is_err(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn names_and_paths() {
        assert!(valid_name("chest-xray_2.1"));
        for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(
            manifest_path(Path::new("/var/lib/duli"), "chest"),
            Path::new("/var/lib/duli/model-in-service/chest/model.toml")
        );
    }
}
