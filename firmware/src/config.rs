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
    /// This device's hardware identifier, matched against bundle manifests, for boxes
    /// whose image carries none ([`FirmwareConfig::hardware_id_file`]); where the image
    /// carries one, a different value here is refused
    /// ([`FirmwareConfig::device_hardware_id`]). Unset: [`DEFAULT_HARDWARE_ID`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware_id: Option<String>,
    /// The hardware identifier the appliance image was built for, one line on the
    /// read-only root filesystem ([`DEFAULT_HARDWARE_ID_FILE`]): when the file exists it
    /// is the device's identifier, so editing the configuration cannot make the box
    /// install a bundle signed for other hardware. Not a configuration key (a
    /// configuration that could move it could also hide it); set here only by tests.
    #[serde(skip, default = "default_hardware_id_file")]
    pub hardware_id_file: PathBuf,
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
            hardware_id: None,
            hardware_id_file: DEFAULT_HARDWARE_ID_FILE.into(),
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

/// The hardware identifier of a box whose image and configuration name none: the x86-64
/// NUC.
pub const DEFAULT_HARDWARE_ID: &str = "nuc-x86_64";

/// Where the appliance image records the hardware it was built for
/// ([`FirmwareConfig::hardware_id_file`]).
pub const DEFAULT_HARDWARE_ID_FILE: &str = "/usr/share/duli/hardware-id";

fn default_hardware_id_file() -> PathBuf {
    DEFAULT_HARDWARE_ID_FILE.into()
}

/// Where the device's hardware identifier came from ([`FirmwareConfig::device_hardware`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HardwareIdFrom {
    /// The image's file.
    Image(PathBuf),
    /// `firmware.hardware_id`.
    Configuration,
    /// Neither: [`DEFAULT_HARDWARE_ID`].
    Default,
}

impl std::fmt::Display for HardwareIdFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HardwareIdFrom::Image(path) => write!(f, "{}", path.display()),
            HardwareIdFrom::Configuration => f.write_str("firmware.hardware_id"),
            HardwareIdFrom::Default => f.write_str("default"),
        }
    }
}

/// Longest hardware identifier read from the image's file.
const MAX_HARDWARE_ID: usize = 64;

/// Lock file of the GRUB and U-Boot backends: in a folder only root can enter (created at
/// boot by the image's tmpfiles, else by the first lock), so that no local account can take
/// or pre-create the lock. U-Boot's environment has no folder of its own on a filesystem
/// (and `/run/lock` is writable by every account); GRUB's lies on the EFI system
/// partition, a FAT file system that keeps no owner or mode, where any account that can
/// read the file could hold a shared `flock` on it.
pub const SYSTEM_LOCK_FILE: &str = "/run/duli-firmware/duli-firmware.lock";

/// Name of the lock file next to a boot variable file (the file backend).
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
    /// The command line names the slot more than once (a stale `duli.slot=` saved in the
    /// boot loader's variables, say): which slot runs is not certain.
    #[error("firmware.cmdline {path} names the booted slot {count} times (duli.slot=); which slot runs is not certain, so nothing is changed: remove the stale duli.slot= from the boot loader's saved bootargs")]
    AmbiguousSlot {
        /// The file.
        path: PathBuf,
        /// How many times.
        count: usize,
    },
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
    /// The image's hardware identifier file exists but cannot be read.
    #[error("firmware.hardware_id_file {path}: {source}")]
    HardwareIdFile {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The image's hardware identifier file does not hold one identifier.
    #[error(
        "firmware.hardware_id_file {path}: not a hardware identifier (one line of at most \
         {MAX_HARDWARE_ID} letters, digits, '.', '_' or '-')"
    )]
    BadHardwareIdFile {
        /// The file.
        path: PathBuf,
    },
    /// The configuration names other hardware than the image was built for.
    #[error(
        "firmware.hardware_id {configured:?} is not the hardware this image was built for \
         ({image:?}, in {path}); remove firmware.hardware_id from the configuration"
    )]
    HardwareIdMismatch {
        /// The configured identifier.
        configured: String,
        /// The image's identifier.
        image: String,
        /// The image's file.
        path: PathBuf,
    },
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

    /// The lock file that serialises install, mark-good and rollback: [`SYSTEM_LOCK_FILE`]
    /// for GRUB and U-Boot, `duli-firmware.lock` next to the boot variable file for the
    /// file backend.
    pub fn lock_path(&self) -> PathBuf {
        let beside = |file: &Path| match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(LOCK_FILE_NAME),
            _ => PathBuf::from(LOCK_FILE_NAME),
        };
        match self.bootloader {
            Bootloader::Grub | Bootloader::UBoot => PathBuf::from(SYSTEM_LOCK_FILE),
            Bootloader::File => beside(&self.boot_env_file),
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
            Ok(text) => {
                let count = text
                    .split_ascii_whitespace()
                    .filter(|arg| arg.starts_with("duli.slot="))
                    .count();
                if count > 1 {
                    return Err(ConfigError::AmbiguousSlot {
                        path: self.cmdline.clone(),
                        count,
                    });
                }
                booted_slot_from_cmdline(&text)
            }
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

    /// This device's hardware identifier: the image's ([`FirmwareConfig::hardware_id_file`])
    /// when it has one, and then `hardware_id` must be unset or the same; otherwise
    /// `hardware_id`, or [`DEFAULT_HARDWARE_ID`].
    pub fn device_hardware_id(&self) -> Result<String, ConfigError> {
        self.device_hardware().map(|(id, _)| id)
    }

    /// [`FirmwareConfig::device_hardware_id`] and where it came from.
    pub fn device_hardware(&self) -> Result<(String, HardwareIdFrom), ConfigError> {
        let path = &self.hardware_id_file;
        let image = match fs::File::open(path) {
            Ok(file) => {
                use std::io::Read;
                let mut text = String::new();
                // One byte more than the longest identifier and its newline tells a longer
                // file apart without reading it all.
                file.take(MAX_HARDWARE_ID as u64 + 2)
                    .read_to_string(&mut text)
                    .map_err(|source| ConfigError::HardwareIdFile {
                        path: path.clone(),
                        source,
                    })?;
                let id = text.strip_suffix('\n').unwrap_or(&text);
                if !is_hardware_id(id) {
                    return Err(ConfigError::BadHardwareIdFile { path: path.clone() });
                }
                Some(id.to_string())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ConfigError::HardwareIdFile {
                    path: path.clone(),
                    source,
                })
            }
        };
        match (image, &self.hardware_id) {
            (Some(image), Some(configured)) if *configured != image => {
                Err(ConfigError::HardwareIdMismatch {
                    configured: configured.clone(),
                    image,
                    path: path.clone(),
                })
            }
            (Some(image), _) => Ok((image, HardwareIdFrom::Image(path.clone()))),
            (None, Some(configured)) => Ok((configured.clone(), HardwareIdFrom::Configuration)),
            (None, None) => Ok((DEFAULT_HARDWARE_ID.to_string(), HardwareIdFrom::Default)),
        }
    }

    /// The device policy for a box running `running_version`
    /// ([`FirmwareConfig::device_hardware_id`]).
    pub fn policy(&self, running_version: Version) -> Result<DevicePolicy, ConfigError> {
        Ok(DevicePolicy {
            hardware_id: self.device_hardware_id()?,
            running_version,
        })
    }

    /// Builds the updater for a box running `running_version`.
    pub fn updater(
        &self,
        running_version: Version,
    ) -> Result<Updater<Box<dyn BootControl + Send>>, ConfigError> {
        self.updater_with(self.policy(running_version)?)
    }

    /// [`FirmwareConfig::updater`] with a given device policy: for reading the boot state
    /// when the device's own policy cannot be formed (the status of a box whose
    /// configuration names other hardware than its image).
    pub fn updater_with(
        &self,
        policy: DevicePolicy,
    ) -> Result<Updater<Box<dyn BootControl + Send>>, ConfigError> {
        Updater::new(
            self.boot_control(),
            self.slots(),
            self.booted_slot()?,
            policy,
        )
        .with_attempts(self.boot_attempts)
        .map_err(ConfigError::Attempts)
    }

    /// Path of the installed model pack file for `name` in `model_packs`.
    pub fn model_pack_path(&self, name: &str) -> PathBuf {
        Path::new(&self.model_packs).join(format!("{name}.pack"))
    }
}

/// One identifier: 1 to [`MAX_HARDWARE_ID`] letters, digits, `.`, `_` or `-`.
fn is_hardware_id(id: &str) -> bool {
    (1..=MAX_HARDWARE_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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
        assert_eq!(cfg.hardware_id, None);
        assert_eq!(
            cfg.hardware_id_file,
            PathBuf::from(DEFAULT_HARDWARE_ID_FILE)
        );
        let err = toml::from_str::<FirmwareConfig>("hardware_id_file = \"/tmp/x\"\n").unwrap_err();
        assert!(err.to_string().contains("hardware_id_file"), "{err}");
        assert_eq!(cfg.boot_control().backend(), "u-boot");
        let err = toml::from_str::<FirmwareConfig>("slot_c = \"/dev/x\"\n").unwrap_err();
        assert!(err.to_string().contains("slot_c"), "{err}");
    }

    #[test]
    fn slots_are_block_devices_unless_configured_as_files_and_the_lock_is_root_s() {
        // Not beside grubenv: the EFI system partition keeps no owner or mode.
        let cfg: FirmwareConfig = toml::from_str("grubenv = \"/boot/EFI/BOOT/grubenv\"\n").unwrap();
        assert_eq!(cfg.slots().medium, SlotMedium::BlockDevice);
        assert_eq!(cfg.lock_path(), PathBuf::from(SYSTEM_LOCK_FILE));
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
        assert_eq!(cfg.lock_path(), PathBuf::from(SYSTEM_LOCK_FILE));
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
        // A stale duli.slot= saved with the boot loader's bootargs beside the live one.
        fs::write(&cmdline, "duli.slot=A root=/dev/sda3 duli.slot=B ro\n").unwrap();
        assert!(matches!(
            cfg.booted_slot(),
            Err(ConfigError::AmbiguousSlot { count: 2, .. })
        ));
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

    #[test]
    fn the_image_s_hardware_identifier_wins_and_a_configured_other_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = dir.path().join("hardware-id");
        let mut cfg = FirmwareConfig {
            hardware_id_file: stamp.clone(),
            cmdline: dir.path().join("no-cmdline"),
            booted_slot: Some("A".into()),
            ..FirmwareConfig::default()
        };
        // No file: the configuration, else the default.
        assert_eq!(cfg.device_hardware_id().unwrap(), DEFAULT_HARDWARE_ID);
        cfg.hardware_id = Some("rpi5".into());
        assert_eq!(cfg.device_hardware_id().unwrap(), "rpi5");
        // The image's file: it is the identifier, and the configuration may only agree.
        fs::write(&stamp, "jetson-orin\n").unwrap();
        let err = cfg.device_hardware_id().unwrap_err();
        assert!(
            matches!(&err, ConfigError::HardwareIdMismatch { configured, image, .. }
                if configured == "rpi5" && image == "jetson-orin"),
            "{err}"
        );
        assert!(matches!(
            cfg.updater(Version::new(1, 0, 0)),
            Err(ConfigError::HardwareIdMismatch { .. })
        ));
        assert!(cfg.policy(Version::new(1, 0, 0)).is_err());
        cfg.hardware_id = Some("jetson-orin".into());
        assert_eq!(cfg.device_hardware_id().unwrap(), "jetson-orin");
        cfg.hardware_id = None;
        let policy = cfg.policy(Version::new(1, 0, 0)).unwrap();
        assert_eq!(policy.hardware_id, "jetson-orin");
        assert_eq!(
            cfg.device_hardware().unwrap().1,
            HardwareIdFrom::Image(stamp.clone())
        );
        // A file that is not one identifier is refused, not trimmed into one.
        for bad in [
            "",
            "\n",
            "a b\n",
            "two\nlines\n",
            &"x".repeat(65),
            "nuc\r\n",
        ] {
            fs::write(&stamp, bad).unwrap();
            assert!(
                matches!(
                    cfg.device_hardware_id(),
                    Err(ConfigError::BadHardwareIdFile { .. })
                ),
                "{bad:?}"
            );
        }
        // Bytes that are not text: an error naming the file, not an identifier.
        fs::write(&stamp, [0xFF, 0xFE, b'a']).unwrap();
        assert!(matches!(
            cfg.device_hardware_id(),
            Err(ConfigError::HardwareIdFile { .. })
        ));
        fs::write(&stamp, "x".repeat(64)).unwrap();
        assert_eq!(cfg.device_hardware_id().unwrap(), "x".repeat(64));
        // A file that cannot be read (a folder) is an error, not a fallback.
        fs::remove_file(&stamp).unwrap();
        fs::create_dir(&stamp).unwrap();
        assert!(matches!(
            cfg.device_hardware_id(),
            Err(ConfigError::HardwareIdFile { .. })
        ));
    }
}
