//! `[device]`: who the box is, where it keeps its data, the account it runs as; and
//! `[retention]`: how long it keeps pixel data and the disk space it leaves free.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[device]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// Site identifier (hospital), used in MQTT topics and HL7 MSH-4.
    pub site_id: String,
    /// Device identifier, unique within the site.
    pub device_id: String,
    /// Folder holding the store, the received files and runtime state.
    pub data_dir: PathBuf,
    /// File holding the secret that keys the pseudonyms sent to the cloud
    /// (default: `<data_dir>/site_secret`, generated on first start).
    pub site_secret: Option<PathBuf>,
    /// The account `duli run` switches to when started as root (after binding its ports,
    /// before opening the store). Under systemd the unit's `User=` applies instead.
    pub service_user: String,
    /// Let `duli run` keep running as root when started as root (also `--allow-root`).
    pub allow_root: bool,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            site_id: "demo-site".into(),
            device_id: "duli-edge-01".into(),
            data_dir: PathBuf::from("duli-data"),
            site_secret: None,
            service_user: "duli".into(),
            allow_root: false,
        }
    }
}

/// `[retention]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Delete received pixel data after this many days (results are kept); 0 keeps forever.
    pub pixel_days: u32,
    /// Free space to keep on the data disk: below it C-STORE answers A700 and the
    /// oldest delivered pixel data is pruned first.
    pub disk_reserve_mb: u64,
}

/// Largest `retention.disk_reserve_mb` accepted: 16 TiB, above any disk of the box (a value
/// in bytes by mistake, 10 GiB as 10737418240, would refuse every study and prune every
/// finished one).
pub const MAX_DISK_RESERVE_MB: u64 = 1 << 24;

impl RetentionConfig {
    /// The disk reserve in bytes.
    pub fn disk_reserve_bytes(&self) -> u64 {
        self.disk_reserve_mb.saturating_mul(1024 * 1024)
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            pixel_days: 30,
            disk_reserve_mb: 1024,
        }
    }
}
