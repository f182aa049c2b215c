//! The post-update health check behind `duli firmware mark-good --health-check`: the daemon
//! is up and answers on its control socket, its store is readable, and the model is
//! present and intact when one is provisioned. A trial boot is committed only when every
//! check passes.

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
        Some(resp) => {
            report.checks.push(Check {
                name: "daemon",
                ok: true,
                detail: "answers on its control socket".into(),
            });
            report.checks.push(match resp.into_answer::<StoreStatus>() {
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
        }
    }
    report.checks.push(model_check(&cfg.inference.model));
    report
}

/// The model check: no manifest means no model is provisioned (passes); a manifest must
/// load as the inference stage loads it, and its network and weights files must match
/// their SHA-256 (the manifest's `sha256` and `weights_sha256`).
pub fn model_check(manifest: &Path) -> Check {
    let name = "model";
    if !manifest.exists() {
        return Check {
            name,
            ok: true,
            detail: format!("none provisioned ({} absent)", manifest.display()),
        };
    }
    let verified = crate::infer::Manifest::load(manifest)
        .map_err(|e| e.to_string())
        .and_then(|m| m.verify_files().map(|_| m).map_err(|e| e.to_string()));
    match verified {
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

#[cfg(test)]
mod tests {
    use super::*;
    use ring::digest::SHA256;

    #[test]
    fn model_check_verifies_network_and_weights_like_the_inference_stage() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("model.toml");
        assert!(model_check(&manifest).ok, "absent: none provisioned");
        let sha = |b: &[u8]| hex::encode(ring::digest::digest(&SHA256, b).as_ref());
        std::fs::write(dir.path().join("net.xml"), b"network").unwrap();
        std::fs::write(dir.path().join("net.bin"), b"weights").unwrap();
        let shipped = std::fs::read_to_string(
            crate::locate::source_root()
                .unwrap()
                .join(crate::locate::DEFAULT_MODEL),
        )
        .unwrap();
        let table: toml::Table = shipped.parse().unwrap();
        let file = table["file"].as_table().unwrap();
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
}
