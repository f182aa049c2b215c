//! The post-update health check behind `duli firmware mark-good --health-check`: the daemon
//! is up and answers on its control socket, its store is readable, and, when a model is
//! provisioned, the model's files are intact and the daemon has it in service (loaded by
//! the new release's inference stage, not only present from the previous boot). A trial
//! boot is committed only when every check passes.

use crate::config::Config;
use crate::control::protocol::StoreStatus;
use crate::control::{self, Request};
use std::path::Path;
use std::time::{Duration, Instant};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// All checks, in the order they ran.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.checks {
            writeln!(
                f,
                "{:<6} {:<8} {}",
                if c.ok { "PASS" } else { "FAIL" },
                c.name,
                c.detail
            )?;
        }
        Ok(())
    }
}

/// Runs the health check, waiting up to `timeout` for the daemon to answer (it may still
/// be starting after the reboot into a new slot).
pub async fn check(cfg: &Config, timeout: Duration) -> Report {
    let mut report = Report::default();
    let data_dir = &cfg.device.data_dir;
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    let answer = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ask_status(data_dir, deadline).await {
            Ok(resp) => break Some(resp),
            Err(why) => last = why.to_string(),
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500).min(left)).await;
    };
    match answer {
        None => {
            report.checks.push(Check {
                name: "daemon",
                ok: false,
                detail: format!("not answering after {} s: {last}", timeout.as_secs()),
            });
            report.checks.push(Check {
                name: "store",
                ok: false,
                detail: "not checked: the daemon holds the store and does not answer".into(),
            });
        }
        Some(resp) => {
            report.checks.push(Check {
                name: "daemon",
                ok: true,
                detail: "answers on its control socket".into(),
            });
            let status = resp.into_answer::<StoreStatus>();
            report.checks.push(match &status {
                Ok(status) => Check {
                    name: "store",
                    ok: true,
                    detail: format!("readable: {} instance(s)", status.instances),
                },
                Err(e) => Check {
                    name: "store",
                    ok: false,
                    detail: format!("not readable: {e}"),
                },
            });
            let provisioned = cfg.inference.model_pack.is_some() || cfg.inference.model.exists();
            if provisioned {
                let first = status.ok().and_then(|s| s.model);
                report
                    .checks
                    .push(in_service(data_dir, first, deadline).await);
            }
        }
    }
    report.checks.push(model_check(&cfg.inference.model));
    report
}

/// The check that the running daemon has its model in service: waits (until `deadline`)
/// while the daemon says it is still `starting`, from its first answer `first`.
async fn in_service(data_dir: &Path, first: Option<String>, deadline: Instant) -> Check {
    use crate::infer::ModelState;
    let name = "loaded";
    let (starting, ready) = (
        ModelState::Starting.describe(),
        ModelState::Ready.describe(),
    );
    let mut state = first;
    while state.as_ref() == Some(&starting) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(resp) = ask_status(data_dir, deadline).await {
            if let Ok(s) = resp.into_answer::<StoreStatus>() {
                state = s.model;
            }
        }
    }
    match state {
        Some(s) if s == ready => Check {
            name,
            ok: true,
            detail: "the daemon has the model in service".into(),
        },
        Some(other) => Check {
            name,
            ok: false,
            detail: format!("the daemon's model is not in service: {other}"),
        },
        None => Check {
            name,
            ok: false,
            detail: "the daemon does not say whether its model is in service".into(),
        },
    }
}

/// Why a `Status` request got no answer.
#[derive(Debug, thiserror::Error)]
enum NoAnswer {
    /// Nothing listens on the control socket.
    #[error("no daemon listens on {0}")]
    NoDaemon(String),
    /// The request failed.
    #[error("{0}")]
    Failed(String),
    /// No answer within the time given.
    #[error("the control socket did not answer in time")]
    Timeout,
}

/// One `Status` request to the daemon, given at most 10 s and what is left before
/// `deadline`.
async fn ask_status(data_dir: &Path, deadline: Instant) -> Result<control::Response, NoAnswer> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(
        left.min(Duration::from_secs(10)),
        control::ask_daemon(data_dir, &Request::Status),
    )
    .await
    {
        Ok(Ok(Some(resp))) => Ok(resp),
        Ok(Ok(None)) => Err(NoAnswer::NoDaemon(
            control::socket_path(data_dir).display().to_string(),
        )),
        Ok(Err(e)) => Err(NoAnswer::Failed(e.to_string())),
        Err(_) => Err(NoAnswer::Timeout),
    }
}

/// Largest manifest the check reads.
const MAX_MANIFEST: u64 = 1 << 20;

/// The model check: no manifest means no model is provisioned (passes); a manifest must
/// load as the inference stage loads it, and its network and weights files must match
/// their SHA-256 (the manifest's `sha256` and `weights_sha256`).
///
/// The check runs as root on a trial boot, and the manifest (a pack in service, unpacked
/// into the data folder) belongs to the service user: every file is opened without
/// following a link and without blocking, must be a regular file, and must lie inside the
/// manifest's own folder (no absolute name, no `..`); a mismatch says which file, never
/// the hash it found, so the check cannot be turned into a way to read what root can.
pub fn model_check(manifest: &Path) -> Check {
    let name = "model";
    match std::fs::symlink_metadata(manifest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check {
                name,
                ok: true,
                detail: format!("none provisioned ({} absent)", manifest.display()),
            }
        }
        _ => {}
    }
    match verified_model(manifest) {
        Ok(m) => Check {
            name,
            ok: true,
            detail: format!(
                "{} {} ({}): network and weights match their SHA-256 \
                 (this check does not load the model)",
                m.name,
                m.version,
                manifest.display()
            ),
        },
        Err(e) => Check {
            name,
            ok: false,
            detail: format!("{}: {e}", manifest.display()),
        },
    }
}

/// Why the model check failed (said in the check's detail).
#[derive(Debug, thiserror::Error)]
enum ModelFault {
    /// The manifest cannot be read.
    #[error("cannot be read ({0})")]
    Unreadable(std::io::Error),
    /// The manifest is over [`MAX_MANIFEST`].
    #[error("larger than {MAX_MANIFEST} bytes")]
    TooLarge,
    /// The manifest does not parse or validate.
    #[error("{0}")]
    Invalid(crate::infer::manifest::ManifestError),
    /// A file the manifest names is not inside its folder.
    #[error("names {}, which is not a file inside the manifest's folder", .0.display())]
    Outside(std::path::PathBuf),
    /// The manifest's folder does not open.
    #[error("{}: {source}", path.display())]
    Folder {
        /// The folder.
        path: std::path::PathBuf,
        /// Why.
        source: crate::provision::source::SourceError,
    },
    /// A file the manifest names is not a regular file inside its folder that opens
    /// without passing through a link.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: crate::provision::source::SourceError,
    },
    /// A file the manifest names cannot be read.
    #[error("{}: cannot be read ({source})", path.display())]
    FileUnreadable {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file the manifest names does not hash to its SHA-256.
    #[error("{} does not match the SHA-256 its manifest gives", .0.display())]
    Mismatch(std::path::PathBuf),
}

/// Reads the manifest and checks its files, as [`model_check`] describes.
fn verified_model(manifest: &Path) -> Result<crate::infer::Manifest, ModelFault> {
    use std::io::Read;
    // The folder is opened once, not through a link, and the manifest and every file it
    // names are read through that one descriptor: the service user, who owns the folder's
    // entry, cannot swap it for a link to root's files between the reads.
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let folder = crate::provision::source::Folder::open_not_a_link(dir).map_err(|source| {
        ModelFault::Folder {
            path: dir.to_path_buf(),
            source,
        }
    })?;
    let name = Path::new(manifest.file_name().unwrap_or_default());
    let file = folder.open_file(name).map_err(|source| ModelFault::File {
        path: manifest.to_path_buf(),
        source,
    })?;
    let mut text = String::new();
    file.take(MAX_MANIFEST + 1)
        .read_to_string(&mut text)
        .map_err(ModelFault::Unreadable)?;
    if text.len() as u64 > MAX_MANIFEST {
        return Err(ModelFault::TooLarge);
    }
    let m = crate::infer::Manifest::parse(&text, manifest).map_err(ModelFault::Invalid)?;
    let mut files = vec![(m.file.path.as_path(), m.file.sha256.as_str())];
    if let (Some(w), Some(h)) = (&m.file.weights, &m.file.weights_sha256) {
        files.push((w.as_path(), h.as_str()));
    }
    // The folders below are the service user's too: each is opened without following a
    // link, so a planted link cannot point the hash at a file of root's.
    for (file, expected) in files {
        let inside = !file.as_os_str().is_empty()
            && file
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            return Err(ModelFault::Outside(file.to_path_buf()));
        }
        let path = m.dir.join(file);
        let mut opened = match folder.open_file(file) {
            Ok(f) => f,
            Err(source) => return Err(ModelFault::File { path, source }),
        };
        let digest = match duli_firmware::hash_reader(&mut opened) {
            Ok((_, d)) => d,
            Err(source) => return Err(ModelFault::FileUnreadable { path, source }),
        };
        if !hex::encode(digest).eq_ignore_ascii_case(expected) {
            return Err(ModelFault::Mismatch(path));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::digest::SHA256;

    /// The shipped model's manifest text and its `[file]` table, to rewrite for a test.
    fn shipped_manifest() -> (String, toml::Table) {
        let shipped = std::fs::read_to_string(
            crate::locate::source_root()
                .unwrap()
                .join(crate::locate::DEFAULT_MODEL),
        )
        .unwrap();
        let table: toml::Table = shipped.parse().unwrap();
        let file = table["file"].as_table().unwrap().clone();
        (shipped, file)
    }

    #[test]
    fn model_check_verifies_network_and_weights_like_the_inference_stage() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("model.toml");
        assert!(model_check(&manifest).ok, "absent: none provisioned");
        let sha = |b: &[u8]| hex::encode(ring::digest::digest(&SHA256, b).as_ref());
        std::fs::write(dir.path().join("net.xml"), b"network").unwrap();
        std::fs::write(dir.path().join("net.bin"), b"weights").unwrap();
        let (shipped, file) = shipped_manifest();
        let text = shipped
            .replace(file["path"].as_str().unwrap(), "net.xml")
            .replace(file["weights"].as_str().unwrap(), "net.bin")
            .replace(file["sha256"].as_str().unwrap(), &sha(b"network"))
            .replace(file["weights_sha256"].as_str().unwrap(), &sha(b"weights"));
        std::fs::write(&manifest, text).unwrap();
        let c = model_check(&manifest);
        assert!(c.ok, "{c:?}");
        // The weights are checked against their own hash, not the network's.
        std::fs::write(dir.path().join("net.bin"), b"weightz").unwrap();
        let c = model_check(&manifest);
        assert!(!c.ok && c.detail.contains("net.bin"), "{c:?}");
        std::fs::write(&manifest, "not toml [").unwrap();
        assert!(!model_check(&manifest).ok);
    }

    /// The check runs as root over a folder the service user owns: a file named outside
    /// the manifest's folder, a link or a FIFO is refused without being read, and a
    /// mismatch never prints the hash found (which would let the service user learn the
    /// hash of any file root can read).
    #[test]
    fn model_check_reads_only_regular_files_inside_the_manifest_folder() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let manifest = model.join("model.toml");
        let (shipped, file) = shipped_manifest();
        let with_network = |name: &str| {
            shipped
                .replace(file["path"].as_str().unwrap(), name)
                .replace(file["weights"].as_str().unwrap(), "net.bin")
        };
        let secret_hash = hex::encode(ring::digest::digest(&SHA256, b"root only").as_ref());
        std::fs::write(model.join("net.bin"), b"weights").unwrap();
        for network in [
            secret.to_str().unwrap(),
            "../secret",
            "link.xml",
            "fifo.xml",
        ] {
            std::os::unix::fs::symlink(&secret, model.join("link.xml")).ok();
            nix::unistd::mkfifo(&model.join("fifo.xml"), nix::sys::stat::Mode::S_IRUSR).ok();
            std::fs::write(&manifest, with_network(network)).unwrap();
            let c = model_check(&manifest);
            assert!(!c.ok, "{network}: {c:?}");
            assert!(!c.detail.contains(&secret_hash), "{network}: {c:?}");
        }
        // A mismatch names the file, not the hash found.
        std::fs::write(model.join("net.xml"), b"network").unwrap();
        std::fs::write(&manifest, with_network("net.xml")).unwrap();
        let c = model_check(&manifest);
        let found = hex::encode(ring::digest::digest(&SHA256, b"network").as_ref());
        assert!(!c.ok && c.detail.contains("net.xml"), "{c:?}");
        assert!(!c.detail.contains(&found), "{c:?}");
        // A link to a folder on the way is not followed: with the right hash of root's
        // file in the manifest, the check still fails on the link (no yes/no answer).
        std::os::unix::fs::symlink(dir.path(), model.join("up")).unwrap();
        let weights_hash = hex::encode(ring::digest::digest(&SHA256, b"weights").as_ref());
        let oracle = with_network("up/secret")
            .replace(file["sha256"].as_str().unwrap(), &secret_hash)
            .replace(file["weights_sha256"].as_str().unwrap(), &weights_hash);
        std::fs::write(&manifest, oracle).unwrap();
        let c = model_check(&manifest);
        assert!(!c.ok, "{c:?}");
        assert!(
            c.detail.contains("up/secret") && c.detail.contains("link"),
            "{c:?}"
        );
        std::fs::remove_file(model.join("up")).unwrap();
        // The manifest itself as a link is refused too.
        let linked = dir.path().join("linked.toml");
        std::os::unix::fs::symlink(&manifest, &linked).unwrap();
        assert!(!model_check(&linked).ok);
        // So is the model's folder as a link (what the service user would swap in between
        // the reads): the manifest and the files are read through one folder descriptor.
        std::fs::write(&manifest, with_network("net.xml")).unwrap();
        let swapped = dir.path().join("swapped");
        std::os::unix::fs::symlink(&model, &swapped).unwrap();
        let c = model_check(&swapped.join("model.toml"));
        assert!(!c.ok && c.detail.contains("link"), "{c:?}");
    }
}
