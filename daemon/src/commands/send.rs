//! `duli echo` and `duli send`: C-ECHO and C-STORE to a DICOM peer.

use super::runtime;
use anyhow::{bail, Result};
use clap::Args;
use duli::scu::{self, Target};
use duli::ul::client::OutboundTls;
use std::path::PathBuf;
use std::process::ExitCode;

/// DICOM TLS towards the peer (the same profile as the PACS destinations: TLS 1.2 or 1.3,
/// BCP 195 suites, the peer's certificate checked against the CA).
#[derive(Args, Debug, Default)]
pub struct TlsArgs {
    /// Speak DICOM TLS: the CA bundle the peer's certificate must chain to.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Our client certificate chain (PEM), when the peer asks for one (with --tls-key).
    #[arg(long, requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// `target` (AET@HOST:PORT) with these TLS settings.
    pub fn target(&self, target: &str) -> Result<Target> {
        let mut t: Target = target.parse()?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("--tls-cert and --tls-key go together");
        }
        t.tls = self.tls_ca.clone().map(|ca| OutboundTls {
            ca,
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        });
        Ok(t)
    }
}

/// C-ECHO `repeat` times; fails at the first failure.
pub fn echo(target: &str, tls: &TlsArgs, calling_ae: &str, repeat: u32) -> Result<ExitCode> {
    let target = tls.target(target)?;
    let rt = runtime()?;
    for i in 0..repeat.max(1) {
        match rt.block_on(scu::echo(&target, calling_ae)) {
            Ok(rtt) => println!(
                "C-ECHO {} to {target}: Success in {:.2} ms",
                i + 1,
                rtt.as_secs_f64() * 1e3
            ),
            Err(e) => {
                eprintln!("C-ECHO to {target} failed: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends every DICOM file under `paths` over `parallel` associations.
pub fn send(
    target: &str,
    tls: &TlsArgs,
    paths: &[PathBuf],
    calling_ae: &str,
    parallel: usize,
) -> Result<ExitCode> {
    let target = tls.target(target)?;
    let files = scu::collect_files(paths);
    let mut prepared = Vec::new();
    let mut skipped = 0;
    for f in files {
        match scu::prepare(&f) {
            Ok(p) => prepared.push(p),
            Err(e) => {
                eprintln!("skipped: {e}");
                skipped += 1;
            }
        }
    }
    if prepared.is_empty() {
        eprintln!("no DICOM files to send");
        return Ok(ExitCode::FAILURE);
    }
    let started = std::time::Instant::now();
    let results = runtime()?.block_on(scu::send(&target, calling_ae, prepared, parallel));
    let elapsed = started.elapsed().as_secs_f64();
    let mut ok = 0;
    let mut bytes = 0u64;
    for r in &results {
        match &r.outcome {
            Ok(0) => {
                ok += 1;
                bytes += r.bytes;
            }
            Ok(s) => eprintln!("{}: status {s:04X}", r.path.display()),
            Err(e) => eprintln!("{}: {e}", r.path.display()),
        }
    }
    println!(
        "sent {ok}/{} file(s) to {target} ({:.1} MB in {elapsed:.2} s, {:.1} MB/s){}",
        results.len(),
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / elapsed.max(1e-9),
        if skipped > 0 {
            format!(", {skipped} skipped")
        } else {
            String::new()
        }
    );
    Ok(if ok == results.len() && skipped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
