//! What a device accepts: its hardware identifier and the versions it runs.
//!
//! For a root filesystem bundle, `version` must not be below the running firmware version
//! (no downgrades: going back is [`crate::updater::Updater::rollback`]'s job) and the running
//! firmware must be at least `min_version`. For a model pack, `version` is compared with the
//! installed pack's version and `min_version` with the running firmware's: a pack states
//! the oldest firmware that can run it.

use crate::manifest::{Manifest, PayloadKind};
use crate::version::Version;

/// The facts about this device that decide whether a bundle may be installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePolicy {
    /// This device's hardware identifier, e.g. `nuc-x86_64`.
    pub hardware_id: String,
    /// Version of the firmware running now.
    pub running_version: Version,
}

/// Why a correctly signed bundle is still refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The bundle carries another kind of payload than the operation installs.
    #[error("bundle carries a {found} payload, expected {expected}")]
    WrongKind {
        /// The kind the operation installs.
        expected: PayloadKind,
        /// The kind in the bundle.
        found: PayloadKind,
    },
    /// The bundle is for other hardware.
    #[error("bundle is for hardware {supported:?}, this device is {device:?}")]
    IncompatibleHardware {
        /// This device's identifier.
        device: String,
        /// The bundle's list.
        supported: Vec<String>,
    },
    /// The bundle's version is below what is installed.
    #[error(
        "bundle version {bundle} is older than the installed {installed}; downgrades are refused"
    )]
    Downgrade {
        /// The bundle's version.
        bundle: Version,
        /// The installed version.
        installed: Version,
    },
    /// A root filesystem below the security floor this box committed.
    #[error(
        "bundle security version {bundle} is below this box's security floor {floor}: \
         a release it committed fixed a flaw this one has"
    )]
    BelowSecurityFloor {
        /// The bundle's security version.
        bundle: u32,
        /// The box's floor.
        floor: u32,
    },
    /// The running firmware is below the bundle's minimum.
    #[error(
        "bundle needs firmware {minimum} or later to install over, this device runs {running}"
    )]
    BelowMinimum {
        /// The bundle's minimum.
        minimum: Version,
        /// The running firmware.
        running: Version,
    },
}

impl DevicePolicy {
    /// Checks a manifest of the given kind against this device. `installed` is the version
    /// the bundle replaces: the running firmware for a root filesystem, the installed pack
    /// (if any) for a model pack.
    pub fn check(
        &self,
        manifest: &Manifest,
        kind: PayloadKind,
        installed: Option<Version>,
    ) -> Result<(), PolicyError> {
        if manifest.payload.kind != kind {
            return Err(PolicyError::WrongKind {
                expected: kind,
                found: manifest.payload.kind,
            });
        }
        if !manifest.hardware.iter().any(|h| h == &self.hardware_id) {
            return Err(PolicyError::IncompatibleHardware {
                device: self.hardware_id.clone(),
                supported: manifest.hardware.clone(),
            });
        }
        if self.running_version < manifest.min_version {
            return Err(PolicyError::BelowMinimum {
                minimum: manifest.min_version,
                running: self.running_version,
            });
        }
        if let Some(installed) = installed {
            if manifest.version < installed {
                return Err(PolicyError::Downgrade {
                    bundle: manifest.version,
                    installed,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Release;

    fn manifest(version: Version, min: Version, kind: PayloadKind) -> Manifest {
        Manifest::new(
            &Release {
                version,
                min_version: min,
                hardware: vec!["nuc-x86_64".into(), "jetson-orin".into()],
                kind,
                security_version: 0,
            },
            1,
            [0; 32],
        )
    }

    #[test]
    fn each_refusal_has_its_own_error() {
        let policy = DevicePolicy {
            hardware_id: "nuc-x86_64".into(),
            running_version: Version::new(1, 2, 0),
        };
        let v = Version::new;
        let ok = manifest(v(1, 3, 0), v(1, 0, 0), PayloadKind::Rootfs);
        assert_eq!(
            policy.check(&ok, PayloadKind::Rootfs, Some(v(1, 2, 0))),
            Ok(())
        );
        // Reinstalling the same version is allowed (repair).
        let same = manifest(v(1, 2, 0), v(1, 0, 0), PayloadKind::Rootfs);
        assert_eq!(
            policy.check(&same, PayloadKind::Rootfs, Some(v(1, 2, 0))),
            Ok(())
        );

        assert!(matches!(
            policy.check(&ok, PayloadKind::ModelPack, None),
            Err(PolicyError::WrongKind { .. })
        ));
        let old = manifest(v(1, 1, 9), v(1, 0, 0), PayloadKind::Rootfs);
        assert!(matches!(
            policy.check(&old, PayloadKind::Rootfs, Some(v(1, 2, 0))),
            Err(PolicyError::Downgrade { .. })
        ));
        let needs_newer = manifest(v(2, 0, 0), v(1, 5, 0), PayloadKind::Rootfs);
        assert!(matches!(
            policy.check(&needs_newer, PayloadKind::Rootfs, Some(v(1, 2, 0))),
            Err(PolicyError::BelowMinimum { .. })
        ));
        let foreign = DevicePolicy {
            hardware_id: "rpi5".into(),
            ..policy.clone()
        };
        assert!(matches!(
            foreign.check(&ok, PayloadKind::Rootfs, Some(v(1, 2, 0))),
            Err(PolicyError::IncompatibleHardware { .. })
        ));
    }
}
