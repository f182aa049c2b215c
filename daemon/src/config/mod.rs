//! Configuration: TOML with serde, built-in defaults for every value, environment overrides
//! (`DULI_SECTION__KEY`), path resolution and a `validate()` whose errors name the key.
//!
//! Loading order: built-in defaults ← the file (if any) ← environment. Relative paths in a file
//! resolve against the file's folder; defaults and environment values resolve against the
//! working directory.
//!
//! The sections, then the two steps, each in its own module:
//!
//! - [`device`]: `[device]` (identity, data folder, service user) and `[retention]`.
//! - [`dicom`]: `[dicom]`, the SCP and its peers' permissions.
//! - [`inference`]: `[inference]`, the model and its runtime.
//! - [`delivery`]: `[hl7]`, `[mqtt]` and `[[pacs.destinations]]`.
//! - [`console`]: `[console]`, the HTTPS listener and its limits.
//! - [`load`]: defaults ← file ← environment, then paths resolved and the whole checked.
//! - [`validate`]: every value checked, each problem naming its key.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub mod audit;
pub mod console;
pub mod delivery;
pub mod device;
pub mod dicom;
pub mod inference;
pub mod load;
pub mod validate;

pub use console::ConsoleConfig;
pub use delivery::{Hl7Config, MqttConfig, PacsConfig, PacsDestination, ResultObject, StudyUidIn};
pub use device::{DeviceConfig, RetentionConfig};
pub use dicom::{normalise_fingerprint, AllowedPeer, DicomConfig, Permission};
pub use inference::{InferenceConfig, DEFAULT_MAX_PIXELS};
pub use load::ConfigError;
pub use validate::{
    check_ae_title, AeTitleError, KeyError, HL7_NAMESPACE_ID_MAX, MAX_CONSOLE_CONNECTIONS,
};

/// Longest client id (bytes) that every MQTT 3.1.1 server must accept; a default client id
/// is kept within it.
pub const MQTT_CLIENT_ID_MAX: usize = 23;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "DULI_";

/// The whole daemon configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity of this box and where it keeps its data.
    pub device: DeviceConfig,
    /// The DICOM service (SCP) and its peers.
    pub dicom: DicomConfig,
    /// The inference engine and model.
    pub inference: InferenceConfig,
    /// HL7 v2 delivery to the RIS.
    pub hl7: Hl7Config,
    /// MQTT delivery to the cloud backend.
    pub mqtt: MqttConfig,
    /// PACS destinations for result push and C-MOVE.
    pub pacs: PacsConfig,
    /// The console/API listener (also serves `/metrics` and `/healthz`).
    pub console: ConsoleConfig,
    /// Retention of pixel data and the disk reserve.
    pub retention: RetentionConfig,
    /// Forwarding of the audit trail to an audit record repository.
    pub audit: audit::AuditConfig,
    /// Signed firmware updates: bootloader, A/B slots, hardware id, model packs.
    pub firmware: duli_firmware::FirmwareConfig,
    /// The file this configuration was read from, if any (its folder holds what
    /// provisioning left beside it, e.g. the pending first administrator).
    #[serde(skip)]
    pub origin: Option<PathBuf>,
}

impl Config {
    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The MQTT client id in effect: `[mqtt] client_id`, else `duli-<site_id>-<device_id>`
    /// (two sites on one broker keep their own sessions), or, when that is longer than the
    /// [`MQTT_CLIENT_ID_MAX`] bytes every MQTT 3.1.1 server accepts, `duli-` and the first
    /// 18 hex digits of SHA-256(site id NUL device id).
    pub fn mqtt_client_id(&self) -> String {
        if let Some(id) = &self.mqtt.client_id {
            return id.clone();
        }
        let (site, device) = (&self.device.site_id, &self.device.device_id);
        let composed = format!("duli-{site}-{device}");
        if composed.len() <= MQTT_CLIENT_ID_MAX {
            return composed;
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(site.as_bytes());
        ctx.update(&[0]);
        ctx.update(device.as_bytes());
        let mut id = format!("duli-{}", hex::encode(ctx.finish().as_ref()));
        id.truncate(MQTT_CLIENT_ID_MAX);
        id
    }

    /// The site secret file in effect.
    pub fn site_secret_path(&self) -> PathBuf {
        self.device
            .site_secret
            .clone()
            .unwrap_or_else(|| self.device.data_dir.join("site_secret"))
    }
}

#[cfg(test)]
mod tests;
