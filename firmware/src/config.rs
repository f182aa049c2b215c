//! The `[firmware]` configuration section and how it builds an [`Updater`].

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bootctl::{
    booted_slot_from_cmdline, BootControl, FileBootControl, GrubEnv, Slot, UBootEnv,
};
use crate::endorsement::EndorsementError;
use crate::keys::TrustAnchors;
use crate::lock::{LockError, UpdateLock};
use crate::policy::DevicePolicy;
use crate::slot::{SlotDevices, SlotMedium};
use crate::updater::{UpdateError, Updater, DEFAULT_ATTEMPTS};
use crate::version::Version;

/// Which bootloader holds the boot variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bootloader {
    /// GRUB environment block via `grub-editenv` (the x86-64 NUC image).
    Grub,
    /// U-Boot environment via `fw_printenv`/`fw_setenv` (ARM boards).
    UBoot,
    /// A plain file (development boxes and tests).
    File,
}

/// The `[firmware]` section. Every key has a default matching the NUC image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirmwareConfig {
    /// `grub`, `u-boot` or `file`.
    pub bootloader: Bootloader,
    /// GRUB environment block.
    pub grubenv: PathBuf,
    /// U-Boot `fw_env.config`.
    pub uboot_config: PathBuf,
    /// Boot variable file of the `file` backend.
    pub boot_env_file: PathBuf,
    /// Slot A device.
    pub slot_a: PathBuf,
    /// Slot B device.
    pub slot_b: PathBuf,
    /// The slots are plain files, created when missing (development boxes and tests).
    /// Otherwise each slot must be an existing block device.
    pub slot_files: bool,
    /// This device's hardware identifier, matched against bundle manifests.
    pub hardware_id: String,
    /// Trial boots of a new slot before the bootloader falls back (1..=9).
    pub boot_attempts: u8,
    /// Kernel command line that names the booted slot (`duli.slot=A|B`).
    pub cmdline: PathBuf,
    /// Booted slot when the command line does not name one (`A` or `B`; development).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booted_slot: Option<String>,
    /// Directory of key endorsements (`*.endorsement.json`) added by provisioning.
    pub endorsed_keys: PathBuf,
    /// Where the daemon stages a bundle for `duli-update.service`.
    pub staged_bundle: PathBuf,
    /// Directory of installed model packs on the data partition.
    pub model_packs: PathBuf,
    /// The model-pack floor ([`crate::pack_versions`]): where root records the highest
    /// pack version installed per model, in a folder only root writes.
    pub model_pack_versions: PathBuf,
}

impl Default for FirmwareConfig {
    fn default() -> Self {
        FirmwareConfig {
            bootloader: Bootloader::Grub,
            grubenv: "/boot/EFI/BOOT/grubenv".into(),
            uboot_config: "/etc/fw_env.config".into(),
            boot_env_file: "/var/lib/duli/firmware/bootenv".into(),
            slot_a: "/dev/disk/by-partlabel/rootfs-a".into(),
            slot_b: "/dev/disk/by-partlabel/rootfs-b".into(),
            slot_files: false,
            hardware_id: "nuc-x86_64".into(),
            boot_attempts: DEFAULT_ATTEMPTS,
            cmdline: "/proc/cmdline".into(),
            booted_slot: None,
            endorsed_keys: "/etc/duli/firmware-keys".into(),
            staged_bundle: "/var/lib/duli/firmware/staged.duli".into(),
            model_packs: "/var/lib/duli/models".into(),
            model_pack_versions: "/etc/duli/firmware-state/model-packs.json".into(),
        }
    }
}

/// Lock file of the U-Boot backend, whose environment has no folder of its own on a
/// filesystem (`/run/lock` is writable by the root units).
pub const UBOOT_LOCK_FILE: &str = "/run/lock/duli-firmware.lock";

/// Name of the lock file next to a GRUB environment block or a boot variable file.
pub const LOCK_FILE_NAME: &str = "duli-firmware.lock";

/// A `[firmware]` value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The booted slot could not be determined.
    #[error("firmware.cmdline {path} names no duli.slot=A|B and firmware.booted_slot is not set")]
    BootedSlotUnknown {
        /// The command line file.
        path: PathBuf,
    },
    /// `booted_slot` is not `A` or `B`.
    #[error("firmware.booted_slot must be \"A\" or \"B\", got {0:?}")]
    BadBootedSlot(String),
    /// Reading the command line failed.
    #[error("firmware.cmdline {path}: {source}")]
    Cmdline {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// `boot_attempts` out of range.
    #[error("firmware.boot_attempts: {0}")]
    Attempts(UpdateError),
    /// Reading the endorsement directory failed.
    #[error("firmware.endorsed_keys: {0}")]
    Endorsements(#[from] EndorsementError),
}

impl FirmwareConfig {
    /// The bootloader backend this configuration names.
    pub fn boot_control(&self) -> Box<dyn BootControl + Send> {
        match self.bootloader {
            Bootloader::Grub => Box::new(GrubEnv::new(&self.grubenv)),
            Bootloader::UBoot => Box::new(UBootEnv::new(&self.uboot_config)),
            Bootloader::File => Box::new(FileBootControl::new(&self.boot_env_file)),
        }
    }

    /// The lock file that serialises install, mark-good and rollback: `duli-firmware.lock`
    /// next to the GRUB environment block or the boot variable file, [`UBOOT_LOCK_FILE`]
    /// for U-Boot.
    pub fn lock_path(&self) -> PathBuf {
        let beside = |file: &Path| match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(LOCK_FILE_NAME),
            _ => PathBuf::from(LOCK_FILE_NAME),
        };
        match self.bootloader {
            Bootloader::Grub => beside(&self.grubenv),
            Bootloader::File => beside(&self.boot_env_file),
            Bootloader::UBoot => PathBuf::from(UBOOT_LOCK_FILE),
        }
    }

    /// Takes the firmware lock ([`FirmwareConfig::lock_path`]); fails at once when another
    /// operation holds it.
    pub fn lock(&self) -> Result<UpdateLock, LockError> {
        UpdateLock::acquire(&self.lock_path())
    }

    /// The two slots as configured.
    pub fn slots(&self) -> SlotDevices {
        SlotDevices {
            a: self.slot_a.clone(),
            b: self.slot_b.clone(),
            medium: if self.slot_files {
                SlotMedium::File
            } else {
                SlotMedium::BlockDevice
            },
        }
    }

    /// The slot running now: `duli.slot=` on the kernel command line, else `booted_slot`.
    pub fn booted_slot(&self) -> Result<Slot, ConfigError> {
        let from_cmdline = match fs::read_to_string(&self.cmdline) {
            Ok(text) => booted_slot_from_cmdline(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ConfigError::Cmdline {
                    path: self.cmdline.clone(),
                    source,
                })
            }
        };
        if let Some(slot) = from_cmdline {
            return Ok(slot);
        }
        match &self.booted_slot {
            Some(s) => s.parse().map_err(|_| ConfigError::BadBootedSlot(s.clone())),
            None => Err(ConfigError::BootedSlotUnknown {
                path: self.cmdline.clone(),
            }),
        }
    }

    /// The built-in key plus every valid endorsement in `endorsed_keys`.
    pub fn trust_anchors(&self) -> Result<TrustAnchors, ConfigError> {
        let mut anchors = TrustAnchors::builtin();
        anchors.load_endorsements(&self.endorsed_keys)?;
        Ok(anchors)
    }

    /// The device policy for a box running `running_version`.
    pub fn policy(&self, running_version: Version) -> DevicePolicy {
        DevicePolicy {
            hardware_id: self.hardware_id.clone(),
            running_version,
        }
    }

    /// Builds the updater for a box running `running_version`.
    pub fn updater(
        &self,
        running_version: Version,
    ) -> Result<Updater<Box<dyn BootControl + Send>>, ConfigError> {
        Updater::new(
            self.boot_control(),
            self.slots(),
            self.booted_slot()?,
            self.policy(running_version),
        )
        .with_attempts(self.boot_attempts)
        .map_err(ConfigError::Attempts)
    }

    /// Path of the installed model pack file for `name` in `model_packs`.
    pub fn model_pack_path(&self, name: &str) -> PathBuf {
        Path::new(&self.model_packs).join(format!("{name}.pack"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_section_with_defaults_and_refuses_unknown_keys() {
        let cfg: FirmwareConfig = toml::from_str(
            "bootloader = \"u-boot\"\nuboot_config = \"/etc/fw.cfg\"\nboot_attempts = 5\n",
        )
        .unwrap();
        assert_eq!(cfg.bootloader, Bootloader::UBoot);
        assert_eq!(cfg.uboot_config, PathBuf::from("/etc/fw.cfg"));
        assert_eq!(cfg.boot_attempts, 5);
        assert_eq!(cfg.hardware_id, "nuc-x86_64");
        assert_eq!(cfg.boot_control().backend(), "u-boot");
        let err = toml::from_str::<FirmwareConfig>("slot_c = \"/dev/x\"\n").unwrap_err();
        assert!(err.to_string().contains("slot_c"), "{err}");
    }

    #[test]
    fn slots_are_block_devices_unless_configured_as_files_and_the_lock_sits_beside_the_env() {
        let cfg: FirmwareConfig = toml::from_str("grubenv = \"/boot/EFI/BOOT/grubenv\"\n").unwrap();
        assert_eq!(cfg.slots().medium, SlotMedium::BlockDevice);
        assert_eq!(
            cfg.lock_path(),
            PathBuf::from("/boot/EFI/BOOT/duli-firmware.lock")
        );
        let cfg: FirmwareConfig = toml::from_str(
            "bootloader = \"file\"\nboot_env_file = \"/tmp/x/bootenv\"\nslot_files = true\n",
        )
        .unwrap();
        assert_eq!(cfg.slots().medium, SlotMedium::File);
        assert_eq!(cfg.lock_path(), PathBuf::from("/tmp/x/duli-firmware.lock"));
        let cfg = FirmwareConfig {
            bootloader: Bootloader::UBoot,
            ..FirmwareConfig::default()
        };
        assert_eq!(cfg.lock_path(), PathBuf::from(UBOOT_LOCK_FILE));
    }

    #[test]
    fn booted_slot_from_cmdline_or_override() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        fs::write(&cmdline, "root=/dev/sda3 duli.slot=B ro\n").unwrap();
        let mut cfg = FirmwareConfig {
            cmdline: cmdline.clone(),
            ..FirmwareConfig::default()
        };
        assert_eq!(cfg.booted_slot().unwrap(), Slot::B);
        fs::write(&cmdline, "root=/dev/sda3 ro\n").unwrap();
        assert!(matches!(
            cfg.booted_slot(),
            Err(ConfigError::BootedSlotUnknown { .. })
        ));
        cfg.booted_slot = Some("A".into());
        assert_eq!(cfg.booted_slot().unwrap(), Slot::A);
        cfg.booted_slot = Some("Z".into());
        assert!(matches!(
            cfg.booted_slot(),
            Err(ConfigError::BadBootedSlot(_))
        ));
        cfg.booted_slot = Some("A".into());
        cfg.boot_attempts = 0;
        assert!(matches!(
            cfg.updater(Version::new(1, 0, 0)),
            Err(ConfigError::Attempts(_))
        ));
    }
}
