//! The post-update health check behind `duli firmware mark-good --health-check`: the daemon
//! is up and answers on its control socket, its store is readable, and the model is
//! present and intact when one is provisioned. A trial boot is committed only when every
//! check passes.

use crate::config::Config;
use crate::control::{self, Request, Response};
use ring::digest::{Context, SHA256};
use std::io::Read;
use std::path::{Path, PathBuf};
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
        match tokio::time::timeout(
            left.min(Duration::from_secs(10)),
            control::ask_daemon(data_dir, &Request::Status),
        )
        .await
        {
            Ok(Ok(Some(resp))) => break Some(resp),
            Ok(Ok(None)) => {
                last = format!(
                    "no daemon listens on {}",
                    control::socket_path(data_dir).display()
                )
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "the control socket did not answer in time".into(),
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
        Some(Response::Ok { data }) => {
            report.checks.push(Check {
                name: "daemon",
                ok: true,
                detail: "answers on its control socket".into(),
            });
            report.checks.push(Check {
                name: "store",
                ok: true,
                detail: format!("readable: {} instance(s)", data["instances"]),
            });
        }
        Some(Response::Error { message }) => {
            report.checks.push(Check {
                name: "daemon",
                ok: true,
                detail: "answers on its control socket".into(),
            });
            report.checks.push(Check {
                name: "store",
                ok: false,
                detail: format!("not readable: {message}"),
            });
        }
    }
    report.checks.push(model_check(&cfg.inference.model));
    report
}

/// The model check: no manifest means no model is provisioned (passes); a manifest must
/// parse, and every file it lists with a `sha256` must exist and match.
pub fn model_check(manifest: &Path) -> Check {
    let name = "model";
    if !manifest.exists() {
        return Check {
            name,
            ok: true,
            detail: format!("none provisioned ({} absent)", manifest.display()),
        };
    }
    let text = match std::fs::read_to_string(manifest) {
        Ok(t) => t,
        Err(e) => {
            return Check {
                name,
                ok: false,
                detail: format!("{}: {e}", manifest.display()),
            }
        }
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            return Check {
                name,
                ok: false,
                detail: format!("{}: {}", manifest.display(), e.message()),
            }
        }
    };
    let base = manifest.parent().unwrap_or(Path::new("."));
    let mut files = Vec::new();
    hashed_files(&table, base, &mut files);
    let mut checked = 0;
    for (path, want) in files {
        match sha256_file(&path) {
            Ok(got) if got.eq_ignore_ascii_case(&want) => checked += 1,
            Ok(got) => {
                return Check {
                    name,
                    ok: false,
                    detail: format!(
                        "{}: SHA-256 {got} does not match the manifest's {want}",
                        path.display()
                    ),
                }
            }
            Err(e) => {
                return Check {
                    name,
                    ok: false,
                    detail: format!("{}: {e}", path.display()),
                }
            }
        }
    }
    Check {
        name,
        ok: true,
        detail: format!(
            "manifest {} present, {checked} weight file(s) match their SHA-256 \
             (this build has no inference engine: the model is not loaded)",
            manifest.display()
        ),
    }
}

/// Collects `(file, sha256)` from every table holding a `sha256` string next to a path
/// under one of the usual keys.
fn hashed_files(table: &toml::Table, base: &Path, out: &mut Vec<(PathBuf, String)>) {
    if let Some(sha) = table.get("sha256").and_then(|v| v.as_str()) {
        for key in ["weights", "bin", "path", "file"] {
            if let Some(p) = table.get(key).and_then(|v| v.as_str()) {
                out.push((base.join(p), sha.to_string()));
                break;
            }
        }
    }
    for value in table.values() {
        if let Some(inner) = value.as_table() {
            hashed_files(inner, base, out);
        }
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_check_hashes_listed_weights() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("model.toml");
        assert!(model_check(&manifest).ok);
        std::fs::write(dir.path().join("w.bin"), b"weights").unwrap();
        let good = sha256_file(&dir.path().join("w.bin")).unwrap();
        std::fs::write(
            &manifest,
            format!("[files]\nweights = \"w.bin\"\nsha256 = \"{good}\"\n"),
        )
        .unwrap();
        let c = model_check(&manifest);
        assert!(c.ok, "{c:?}");
        assert!(c.detail.contains("1 weight file"), "{c:?}");
        std::fs::write(dir.path().join("w.bin"), b"weightz").unwrap();
        let c = model_check(&manifest);
        assert!(!c.ok && c.detail.contains("does not match"), "{c:?}");
        std::fs::write(&manifest, "not toml [").unwrap();
        assert!(!model_check(&manifest).ok);
    }
}
