//! `duli diagnostics`: a support bundle (tar.gz) a technician sends to support — versions,
//! the configuration without secrets, recent logs, store and audit statistics, firmware
//! state, disk usage and the configuration folder's file list. It never holds a secret:
//! no key or secret file is read into it, and before writing, every entry is scrubbed of
//! the contents of the configured private keys and site secret in case a log quoted them,
//! and of first-time setup codes (the open one, and any a log of an older version quoted).
//! DICOM UIDs other than the standard's own (`1.2.840.10008.…`: SOP classes, transfer
//! syntaxes) identify studies, series and instances: each is replaced by its keyed
//! pseudonym under the site secret ([`SiteSecret::support_uid`], `uid:` and 16 hex digits),
//! the same for the same UID, so one study can still be followed through the logs.

use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::site_secret::SiteSecret;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Folder inside the archive.
pub const ROOT: &str = "duli-diagnostics";

/// The object of the audit record of a bundle written (an export by the user who ran
/// `duli diagnostics`).
pub const AUDIT_OBJECT: &str = "support bundle";

/// Why the bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DiagnosticsError {
    /// Writing the archive failed.
    #[error("{path}: {source}")]
    Io {
        /// The archive.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One file of the bundle.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Name inside [`ROOT`].
    pub name: String,
    /// Content.
    pub text: String,
}

fn entry(name: &str, text: String) -> Entry {
    Entry {
        name: name.to_string(),
        text,
    }
}

/// Keys whose values are secret wherever they appear in a configuration.
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "passphrase", "token", "secret_value"]
        .iter()
        .any(|s| k.contains(s))
}

fn redact(value: &mut toml::Value) {
    if let toml::Value::Table(t) = value {
        for (k, v) in t.iter_mut() {
            if secret_key(k) {
                *v = toml::Value::String("<redacted>".into());
            } else {
                redact(v);
            }
        }
    } else if let toml::Value::Array(a) = value {
        a.iter_mut().for_each(redact);
    }
}

/// The effective configuration as TOML with secret values replaced.
pub fn redacted_config(cfg: &Config) -> String {
    match toml::Value::try_from(cfg) {
        Ok(mut v) => {
            redact(&mut v);
            toml::to_string_pretty(&v).unwrap_or_default()
        }
        Err(e) => format!("# cannot render the configuration: {e}\n"),
    }
}

fn command(cmd: &str, args: &[&str]) -> String {
    match std::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            if !o.status.success() {
                let _ = write!(
                    s,
                    "\n[{cmd} exited with {}: {}]\n",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            s
        }
        Err(e) => format!("[{cmd} not available: {e}]\n"),
    }
}

fn versions(cfg: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "duli {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(
        s,
        "device {} at site {}",
        cfg.device.device_id, cfg.device.site_id
    );
    for (label, path) in [
        ("kernel", "/proc/version"),
        ("os-release", "/etc/os-release"),
        ("uptime (s)", "/proc/uptime"),
    ] {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("{path}: {e}\n"));
        let _ = writeln!(s, "--- {label}\n{}", text.trim_end());
    }
    s
}

fn firmware(cfg: &Config) -> String {
    match crate::firmware_cli::running_version()
        .map_err(|e| format!("{e:#}"))
        .and_then(|v| cfg.firmware.updater(v).map_err(|e| e.to_string()))
        .and_then(|u| u.status().map_err(|e| e.to_string()))
    {
        Ok(s) => format!(
            "backend {}\nbooted slot {}\nrunning version {}\nactive {} target {} attempts {} a_good {} b_good {}\n",
            s.backend,
            s.booted,
            s.running_version,
            s.boot.active,
            s.boot.target,
            s.boot.attempts,
            s.boot.a_good,
            s.boot.b_good
        ),
        Err(e) => format!("firmware status unavailable: {e}\n"),
    }
}

async fn store_stats(cfg: &Config) -> String {
    let mut out = serde_json::Map::new();
    let data_dir = &cfg.device.data_dir;
    let daemon = matches!(
        tokio::time::timeout(
            Duration::from_secs(5),
            control::ask_daemon(data_dir, &Request::Status)
        )
        .await,
        Ok(Ok(Some(_)))
    );
    out.insert("daemon_running".into(), daemon.into());
    for (name, req) in [("status", Request::Status), ("audit", Request::AuditVerify)] {
        let value = if !daemon && !data_dir.exists() {
            serde_json::json!({"error": "no data directory"})
        } else {
            match tokio::time::timeout(Duration::from_secs(30), control::run_request(data_dir, req))
                .await
            {
                Ok(Ok(Response::Ok { data })) => data.value(),
                Ok(Ok(Response::Error { message })) => serde_json::json!({ "error": message }),
                Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
                Err(_) => serde_json::json!({"error": "timed out"}),
            }
        };
        out.insert(name.into(), value);
    }
    out.insert(
        "outbox".into(),
        serde_json::json!("the delivery outbox is not part of this build"),
    );
    serde_json::to_string_pretty(&serde_json::Value::Object(out)).unwrap_or_default()
}

fn disk(cfg: &Config) -> String {
    let mut s = String::new();
    let mut paths = vec![cfg.device.data_dir.clone(), PathBuf::from("/")];
    paths.dedup();
    for p in paths {
        match nix::sys::statvfs::statvfs(&p) {
            // The field types differ between 32- and 64-bit targets.
            #[allow(clippy::useless_conversion)]
            Ok(v) => {
                let frag = u64::from(v.fragment_size());
                let total = u64::from(v.blocks()) * frag;
                let avail = u64::from(v.blocks_available()) * frag;
                let _ = writeln!(
                    s,
                    "{}: {:.1} GB total, {:.1} GB available ({:.0}% used)",
                    p.display(),
                    total as f64 / 1e9,
                    avail as f64 / 1e9,
                    if total > 0 {
                        100.0 * (1.0 - avail as f64 / total as f64)
                    } else {
                        0.0
                    }
                );
            }
            Err(e) => {
                let _ = writeln!(s, "{}: {e}", p.display());
            }
        }
    }
    let (files, bytes) = dir_usage(&cfg.device.data_dir);
    let _ = writeln!(
        s,
        "data directory {}: {files} file(s), {:.1} MB",
        cfg.device.data_dir.display(),
        bytes as f64 / 1e6
    );
    s
}

fn dir_usage(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    files += 1;
                    bytes += m.len();
                }
                Err(_) => {}
            }
        }
    }
    (files, bytes)
}

/// Names, modes and owners of the files in the configuration folder (never contents).
fn file_list(dir: &Path) -> String {
    let mut s = format!("{}\n", dir.display());
    let mut stack = vec![dir.to_path_buf()];
    let mut rows = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            }
            rows.push(format!(
                "{:o} {}:{} {:>10} {}",
                m.permissions().mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.len(),
                e.path().display()
            ));
        }
    }
    rows.sort();
    for r in rows {
        let _ = writeln!(s, "{r}");
    }
    s
}

fn logs() -> String {
    command(
        "journalctl",
        &[
            "-u",
            "duli",
            "-u",
            "duli-update",
            "-u",
            "duli-mark-good",
            "--since",
            "-7d",
            "-n",
            "5000",
            "--no-pager",
            "-o",
            "short-iso",
        ],
    )
}

/// Reads a file the service user may have replaced (a link, a FIFO, a huge file): never
/// through a link at its last component, never blocking, regular files of at most 64 KiB.
fn read_guarded(path: &Path) -> Option<String> {
    match crate::provision::source::read_nofollow(path, SECRET_FILE_MAX) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(crate::provision::source::SourceError::Io(e))
            if e.kind() == std::io::ErrorKind::NotFound =>
        {
            None
        }
        Err(e) => {
            log::warn!("diagnostics: {} not read: {e}", path.display());
            None
        }
    }
}

/// Largest key, secret or setup code file read for the scrubbing.
const SECRET_FILE_MAX: u64 = 64 << 10;

/// The files holding secrets: the site secret, every configured private key (the
/// sections', each PACS destination's) and the console's generated one.
fn secret_files(cfg: &Config) -> Vec<PathBuf> {
    let mut files = vec![cfg.site_secret_path()];
    files.extend(
        [
            &cfg.dicom.key,
            &cfg.hl7.key,
            &cfg.mqtt.key,
            &cfg.console.key,
            &cfg.audit.syslog_key,
        ]
        .into_iter()
        .flatten()
        .cloned(),
    );
    files.extend(
        cfg.pacs
            .destinations
            .iter()
            .filter_map(|d| d.tls_key.clone()),
    );
    files.push(
        cfg.device
            .data_dir
            .join(crate::tls::self_signed::GENERATED_DIR)
            .join("key.pem"),
    );
    files
}

/// The secret values the bundle must never contain: contents of the configured private
/// keys and of the site secret (as whole files and as their non-blank lines).
fn secrets(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for f in secret_files(cfg) {
        if let Some(text) = read_guarded(&f) {
            for line in text.lines().map(str::trim) {
                if line.len() >= 16 && !line.starts_with("-----") {
                    out.push(line.to_string());
                }
            }
        }
    }
    out
}

/// The open first-time setup code of the console, as written and as it may be typed.
fn setup_code(cfg: &Config) -> Vec<String> {
    let file = crate::console::setup::code_file(&cfg.device.data_dir);
    match read_guarded(&file) {
        Some(code) if !code.trim().is_empty() => {
            let code = code.trim().to_string();
            vec![code.replace('-', ""), code]
        }
        _ => Vec::new(),
    }
}

/// Root of the UIDs the DICOM standard itself defines (SOP classes, transfer syntaxes):
/// kept in the bundle, they identify no patient.
const STANDARD_UID_ROOT: &str = "1.2.840.10008.";

/// Whether `word` (digits and dots) is shaped like a DICOM UID that is not the standard's
/// own: UID syntax (PS3.5 9.1: numeric components without leading zeros, at most 64
/// characters) with at least 5 components, or at least 3 and more than 15 characters (as
/// `2.25.<UUID>`), so that IPv4 addresses, version numbers and decimals stay.
fn is_identifying_uid(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    let syntax = crate::store::header::is_valid_uid(word)
        && parts
            .iter()
            .all(|p| !p.is_empty() && (p.len() == 1 || !p.starts_with('0')));
    syntax
        && (parts.len() >= 5 || (parts.len() >= 3 && word.len() > 15))
        && !word.starts_with(STANDARD_UID_ROOT)
}

/// `text` with every identifying UID (see [`is_identifying_uid`]) replaced by its support
/// pseudonym under `key`, or by `uid:<redacted>` without one. A UID is a run of digits and
/// dots not preceded by a letter, digit or dot; whatever follows ends it (a sentence's
/// final dot, a file name's `.dcm`, a letter) and is not part of it.
fn pseudonymise_uids(text: &str, key: Option<&SiteSecret>) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let starts_run = bytes[i].is_ascii_digit()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.'));
        if !starts_run {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'.') {
            end += 1;
        }
        let next = end;
        while end > i && bytes[end - 1] == b'.' {
            end -= 1;
        }
        let word = &text[i..end];
        if is_identifying_uid(word) {
            out.push_str(&text[copied..i]);
            match key {
                Some(k) => out.push_str(&k.support_uid(word)),
                None => out.push_str("uid:<redacted>"),
            }
            copied = end;
        }
        i = next;
    }
    out.push_str(&text[copied..]);
    out
}

/// The key of the UID pseudonyms: the site secret as it is (never created here), else a
/// random key for this bundle alone (UIDs then still match within it, not across
/// bundles); `None` only without system randomness.
fn uid_key(cfg: &Config) -> Option<SiteSecret> {
    match crate::provision::source::read_nofollow(&cfg.site_secret_path(), SECRET_FILE_MAX) {
        Ok(bytes) if bytes.len() >= 16 => Some(SiteSecret::from_bytes(&bytes)),
        _ => SiteSecret::random().ok(),
    }
}

/// `text` with every known secret and every word shaped like a setup code replaced by
/// `<redacted>`, and every identifying UID by its pseudonym under `uid_key`.
fn scrub(text: &str, secrets: &[String], uid_key: Option<&SiteSecret>) -> String {
    let mut text = pseudonymise_uids(text, uid_key);
    for s in secrets {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), "<redacted>");
        }
    }
    let codes: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| crate::console::setup::looks_like_code(w))
        .collect();
    if codes.is_empty() {
        return text;
    }
    let codes: Vec<String> = codes.into_iter().map(str::to_string).collect();
    for c in codes {
        text = text.replace(c.as_str(), "<redacted>");
    }
    text
}

/// Collects every entry of the bundle.
pub async fn collect(cfg: &Config, config_dir: Option<&Path>) -> Vec<Entry> {
    let mut entries = vec![
        entry("versions.txt", versions(cfg)),
        entry("config.toml", redacted_config(cfg)),
        entry("firmware.txt", firmware(cfg)),
        entry("store.json", store_stats(cfg).await),
        entry("disk.txt", disk(cfg)),
        entry("logs.txt", logs()),
    ];
    if let Some(dir) = config_dir {
        entries.push(entry("config-files.txt", file_list(dir)));
    }
    let mut secrets = secrets(cfg);
    secrets.extend(setup_code(cfg));
    let key = uid_key(cfg);
    for e in &mut entries {
        e.text = scrub(&e.text, &secrets, key.as_ref());
    }
    entries
}

/// Writes the entries as `out` (tar.gz, mode 0600), atomically.
pub fn write(entries: &[Entry], out: &Path) -> Result<(), DiagnosticsError> {
    let io = |source| DiagnosticsError::Io {
        path: out.to_path_buf(),
        source,
    };
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for e in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(e.text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, format!("{ROOT}/{}", e.name), e.text.as_bytes())
            .map_err(io)?;
    }
    let mut gz = tar.into_inner().map_err(io)?;
    gz.flush().map_err(io)?;
    let bytes = gz.finish().map_err(io)?;
    crate::fsutil::write_atomic(out, &bytes, crate::fsutil::PRIVATE, None).map_err(|e| {
        DiagnosticsError::Io {
            path: e.path,
            source: e.source,
        }
    })
}

/// Default bundle name: `duli-diagnostics-<device>-<UTC time>.tar.gz`.
pub fn default_name(cfg: &Config) -> PathBuf {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    PathBuf::from(format!(
        "duli-diagnostics-{}-{stamp}.tar.gz",
        cfg.device.device_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_codes_are_scrubbed_from_every_entry() {
        let dir = std::env::temp_dir().join(format!("duli-diag-{}", std::process::id()));
        let mut cfg = Config::default();
        cfg.device.data_dir = dir.clone();
        let file = crate::console::setup::code_file(&dir);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "QRST-UVWX-YZ23-4567\n").unwrap();
        let secrets = setup_code(&cfg);
        std::fs::remove_dir_all(&dir).unwrap();
        // The open code as written and as typed; a code an older version logged.
        let log = "setup code QRST-UVWX-YZ23-4567 (also in x)\n\
                   typed QRSTUVWXYZ234567\n\
                   older: setup is open with setup code ABCD-EFGH-JKMN-PQRS (also in y)\n\
                   a UID 1.2.840.10008.1.1 and a word like AB-CD stay\n";
        let out = scrub(log, &secrets, Some(&SiteSecret::from_bytes(&[7; 32])));
        for code in [
            "QRST-UVWX-YZ23-4567",
            "QRSTUVWXYZ234567",
            "ABCD-EFGH-JKMN-PQRS",
        ] {
            assert!(!out.contains(code), "{code} in {out}");
        }
        assert_eq!(out.matches("<redacted>").count(), 3, "{out}");
        assert!(
            out.contains("1.2.840.10008.1.1") && out.contains("AB-CD"),
            "{out}"
        );
    }

    #[test]
    fn study_and_instance_uids_become_keyed_pseudonyms() {
        let key = SiteSecret::from_bytes(&[7; 32]);
        let study = "1.2.826.0.1.3680043.8.498.10845512345678901234";
        let sop = "2.25.329800735698586629295641978511506172918";
        let log = format!(
            "2024-05-01T10:00:00+0000 duli[17]: study {study} complete (1 instance)\n\
             stored {sop} of study {study}, transfer syntax 1.2.840.10008.1.2.1.\n\
             peer 10.1.2.3:104, duli 0.4.12, 2.5 s, uid_root 2.25.\n"
        );
        let out = scrub(&log, &[], Some(&key));
        for uid in [study, sop] {
            assert!(!out.contains(uid), "{uid} in {out}");
            let token = key.support_uid(uid);
            assert_eq!(token.len(), "uid:".len() + 16, "{token}");
            assert!(out.contains(&token), "{token} missing in {out}");
        }
        // The same study is the same pseudonym on every line; another key, another one.
        assert_eq!(out.matches(&key.support_uid(study)).count(), 2, "{out}");
        assert_ne!(
            key.support_uid(study),
            SiteSecret::from_bytes(&[8; 32]).support_uid(study)
        );
        // The standard's own UIDs, addresses, versions and numbers stay.
        for kept in [
            "transfer syntax 1.2.840.10008.1.2.1.",
            "peer 10.1.2.3:104",
            "duli 0.4.12",
            "2.5 s",
            "uid_root 2.25.",
            "2024-05-01T10:00:00+0000",
        ] {
            assert!(out.contains(kept), "{kept} missing in {out}");
        }
        // Without a key the UIDs are still removed.
        let bare = scrub(&log, &[], None);
        assert!(
            !bare.contains(study) && bare.contains("uid:<redacted>"),
            "{bare}"
        );
    }

    /// A UID directly followed by a file extension or a letter (a stored file's path in a
    /// log line) is replaced like any other.
    #[test]
    fn uids_in_file_paths_become_pseudonyms() {
        let key = SiteSecret::from_bytes(&[7; 32]);
        let study = "1.2.826.0.1.3680043.8.498.1";
        let sop = "1.2.826.0.1.3680043.8.498.2";
        let log = format!("study {study}: files/{study}/{sop}.dcm: not analysed\n{sop}x\n");
        let out = scrub(&log, &[], Some(&key));
        for uid in [study, sop] {
            assert!(!out.contains(uid), "{uid} in {out}");
        }
        assert!(
            out.contains(&format!("/{}.dcm:", key.support_uid(sop))),
            "{out}"
        );
        assert_eq!(out.matches(&key.support_uid(study)).count(), 2, "{out}");
        assert!(out.contains(&format!("{}x", key.support_uid(sop))), "{out}");
        // The standard's own UIDs stay, with an extension too.
        let kept = scrub("1.2.840.10008.5.1.4.1.1.1.dcm\n", &[], Some(&key));
        assert_eq!(kept, "1.2.840.10008.5.1.4.1.1.1.dcm\n");
    }

    /// Links and FIFOs the service user could plant where the bundle reads secrets are
    /// not followed and do not block it; every private key's content is scrubbed, the PACS
    /// destinations' too.
    #[test]
    fn planted_fifos_and_links_neither_block_nor_leak() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let fifo = |p: &Path| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        };
        let mut cfg = Config::default();
        cfg.device.data_dir = data.clone();
        cfg.device.site_secret = Some(dir.path().join("site_secret"));
        fifo(&dir.path().join("site_secret"));
        fifo(&crate::console::setup::code_file(&data));
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "a line of root's own file that is not a key\n").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("dicom.key")).unwrap();
        cfg.dicom.key = Some(dir.path().join("dicom.key"));
        let pacs_key = dir.path().join("pacs-0.key");
        std::fs::write(&pacs_key, "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n").unwrap();
        cfg.pacs.destinations.push(crate::config::PacsDestination {
            name: "p".into(),
            ae_title: "P".into(),
            host: "127.0.0.1".into(),
            port: 104,
            push: false,
            move_: false,
            tls: true,
            tls_ca: None,
            tls_cert: None,
            tls_key: Some(pacs_key),
            result_objects: Vec::new(),
            max_rejections: 5,
            storage_commitment: false,
            commitment_timeout_s: 300,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = cfg.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let entries = rt.block_on(collect(&worker, None));
            let _ = tx.send((entries, secrets(&worker), setup_code(&worker)));
        });
        let (entries, secrets, codes) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("collect blocked on a planted FIFO");
        assert!(!entries.is_empty());
        assert!(codes.is_empty(), "{codes:?}");
        assert_eq!(secrets, ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"], "{secrets:?}");
    }

    #[test]
    fn secret_keys_are_redacted() {
        let mut v: toml::Value =
            toml::from_str("[a]\npassword = \"x\"\nport = 1\n[b.c]\napi_token = \"y\"\n").unwrap();
        redact(&mut v);
        let text = toml::to_string(&v).unwrap();
        assert!(!text.contains("\"x\"") && !text.contains("\"y\""), "{text}");
        assert!(text.contains("port = 1"));
    }
}
