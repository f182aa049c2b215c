//! `duli firmware`: signed firmware and model pack updates.

use super::{box_config, load_config, APPLIANCE_CONFIG};
use anyhow::Result;
use clap::Subcommand;
use duli::firmware_cli;
use duli_firmware::{PayloadKind, Release, Version};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub enum FirmwareAction {
    /// Generate an Ed25519 key pair: DIR/NAME.pk8 (0600, never overwritten) and DIR/NAME.pub.
    Keygen {
        /// Folder for the key files.
        #[arg(long)]
        out_dir: PathBuf,
        /// Base name of the key files.
        #[arg(long)]
        name: String,
    },
    /// Sign a payload into a bundle (build pipeline).
    Sign {
        /// Private key (PKCS#8 .pk8).
        #[arg(long)]
        key: PathBuf,
        /// Root filesystem image or model pack.
        #[arg(long)]
        payload: PathBuf,
        /// What the payload is.
        #[arg(long, value_parser = ["rootfs", "model-pack"])]
        kind: String,
        /// Version it installs (X.Y.Z).
        #[arg(long)]
        version: Version,
        /// Lowest running version it may be installed over (X.Y.Z).
        #[arg(long)]
        min_version: Version,
        /// Hardware identifier that may install it (repeat for several).
        #[arg(long = "hardware", required = true)]
        hardware: Vec<String>,
        /// Security version (root filesystems): raise it in a release whose predecessors
        /// must never be installed again once a box committed it.
        #[arg(long, default_value_t = 0)]
        security_version: u32,
        /// Bundle file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a bundle's signature and payload; prints its manifest and signer.
    Verify {
        /// The bundle.
        bundle: PathBuf,
        /// Trust only these public keys (.pub) instead of the device's keys.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
    },
    /// Install a bundle: a root filesystem into the inactive slot, or a model pack.
    Install {
        /// The bundle (omit with --staged).
        bundle: Option<PathBuf>,
        /// Install firmware.staged_bundle and consume it (duli-update.service).
        #[arg(long)]
        staged: bool,
        /// Name of the model pack file in firmware.model_packs (letters, digits, `.`, `_`,
        /// `-`); by default the pack the configuration runs (`inference.model_pack`), else
        /// `model`.
        #[arg(long)]
        model_name: Option<String>,
        /// Install a model pack of another model than the one this name holds (its
        /// version line starts again from the new pack); not with --staged.
        #[arg(long, conflicts_with = "staged")]
        replace_model: bool,
    },
    /// Show the booted slot, the boot variables and any pending update.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Commit the booted slot (after the health check on a trial boot).
    MarkGood {
        /// On a trial boot, check the daemon, the store and the model first.
        #[arg(long)]
        health_check: bool,
        /// Seconds to wait for the daemon to answer.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Return to the other slot at the next boot.
    Rollback,
}

/// Runs one firmware action.
pub fn run(action: FirmwareAction, config: Option<PathBuf>) -> Result<ExitCode> {
    let config = box_config(config, std::path::Path::new(APPLIANCE_CONFIG));
    let cfg = load_config(config.as_deref())?;
    match action {
        FirmwareAction::Keygen { out_dir, name } => firmware_cli::keygen(&cfg, &out_dir, &name),
        FirmwareAction::Sign {
            key,
            payload,
            kind,
            version,
            min_version,
            hardware,
            security_version,
            out,
        } => {
            let kind = match kind.as_str() {
                "rootfs" => PayloadKind::Rootfs,
                _ => PayloadKind::ModelPack,
            };
            let release = Release {
                version,
                min_version,
                hardware,
                kind,
                security_version,
            };
            firmware_cli::sign(&cfg, &key, &payload, &release, &out)
        }
        FirmwareAction::Verify { bundle, keys } => firmware_cli::verify(&cfg, &bundle, &keys),
        FirmwareAction::Install {
            bundle,
            staged,
            model_name,
            replace_model,
        } => {
            let model_name = model_name
                .or_else(|| cfg.inference.model_pack.clone())
                .unwrap_or_else(|| "model".to_string());
            if !duli::infer::pack::valid_name(&model_name) {
                anyhow::bail!(
                    "--model-name {model_name:?}: a pack's name is letters, digits, '.', '_' and '-', not starting with '.'"
                );
            }
            firmware_cli::install(&cfg, bundle.as_deref(), staged, &model_name, replace_model)
        }
        FirmwareAction::Status { json } => firmware_cli::status(&cfg, json),
        FirmwareAction::MarkGood {
            health_check,
            timeout,
        } => firmware_cli::mark_good(&cfg, health_check, Duration::from_secs(timeout)),
        FirmwareAction::Rollback => firmware_cli::rollback(&cfg),
    }
}
