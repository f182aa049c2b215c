//! The A/B update state machine, the same over every [`BootControl`] backend.
//!
//! Install writes only the slot that is not running, and orders its steps so that after
//! each one the bootloader still boots a complete image (see `firmware/README.md`):
//!
//! 1. verify the bundle (signature, manifest, payload SHA-256 streamed) and the device
//!    policy (hardware, minimum version, no downgrade, not below the security floor);
//!    nothing is written;
//! 2. disarm: point the boot target at the running slot, flag the inactive slot not good
//!    and forget its recorded version;
//! 3. stream the payload into the inactive slot, hashing it again, and flush it;
//! 4. read the slot back and compare its SHA-256 with the manifest;
//! 5. flip: point the boot target at the new slot with the attempt counter set, and record
//!    the version written into it.
//!
//! After the reboot the bootloader spends one attempt per boot on the new slot;
//! [`Updater::mark_good`] (run by the health check) commits it if it runs the recorded
//! version, and with no attempts left the bootloader falls back to the committed slot.
//! Concurrent operations are kept apart by the caller with [`crate::lock::UpdateLock`].

use std::path::Path;

use crate::bootctl::{BootControl, BootError, BootState, Slot, MAX_ATTEMPTS};
use crate::bundle::BundleError;
use crate::keys::TrustAnchors;
use crate::manifest::PayloadKind;
use crate::policy::{DevicePolicy, PolicyError};
use crate::progress::{Interrupted, Observer, Step};
use crate::slot::{check_fits, rehash_slot, write_slot, SlotDevices, SlotError};
use crate::verify::{verify, VerifiedManifest};
use crate::version::Version;

/// Trial boots given to a newly installed slot unless configured otherwise.
pub const DEFAULT_ATTEMPTS: u8 = 3;

/// Why an update operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The bundle failed verification; nothing was written.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The bundle is authentic but not for this device or version; nothing was written.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Reading or writing the boot variables failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Writing or checking the inactive slot failed; the boot target still points at the
    /// running slot.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The observer stopped the install.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// The running slot is a trial not yet committed: mark it good or roll back first.
    #[error("running slot {booted} is on trial (committed slot is {active}): run mark-good or rollback first")]
    NotCommitted {
        /// The running slot.
        booted: Slot,
        /// The committed slot.
        active: Slot,
    },
    /// The running trial was already rolled back; reboot to return to the committed slot.
    #[error("running slot {booted} was rolled back; reboot to return to slot {active}")]
    RollbackPending {
        /// The running slot.
        booted: Slot,
        /// The committed slot the next boot goes to.
        active: Slot,
    },
    /// The previous slot holds firmware below the security floor: going back to it would
    /// bring back a flaw a committed release fixed.
    #[error(
        "slot {slot} holds security version {security}, below this box's security floor \
         {floor}: not rolling back to it"
    )]
    RollbackBelowFloor {
        /// The previous slot.
        slot: Slot,
        /// Its security version.
        security: u32,
        /// The box's floor.
        floor: u32,
    },
    /// A trial of a later release (or security version) is armed, waiting for its
    /// reboot: an older bundle would cancel it.
    #[error("slot {slot} holds a pending trial of {} waiting for its reboot; bundle {bundle} would replace it with an older release", pending.map_or_else(|| "a later security version".to_string(), |v| v.to_string()))]
    BelowPendingTrial {
        /// The bundle's version.
        bundle: Version,
        /// The pending trial's version, when recorded.
        pending: Option<Version>,
        /// The slot of the trial.
        slot: Slot,
    },
    /// There is no good slot to roll back to.
    #[error("slot {0} is not flagged good: nothing to roll back to")]
    NoGoodFallback(Slot),
    /// The running slot is on trial but runs another firmware version than the install
    /// wrote into it (the slot device held something else, or the bootloader booted other
    /// content): it is not committed, and the bootloader falls back when its attempts are
    /// spent.
    #[error(
        "slot {slot} was armed for firmware {armed} but runs firmware {running}: not committing it; \
         the bootloader returns to the committed slot when its trial boots are spent \
         (or run rollback)"
    )]
    VersionMismatch {
        /// The running slot.
        slot: Slot,
        /// Version the install recorded for it.
        armed: Version,
        /// Version running now.
        running: Version,
    },
    /// The attempt count is outside 1..=9.
    #[error("boot attempts must be between 1 and {MAX_ATTEMPTS}, got {0}")]
    InvalidAttempts(u8),
}

/// The state reported by [`Updater::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Bootloader backend name.
    pub backend: &'static str,
    /// Slot running now.
    pub booted: Slot,
    /// Firmware version running now.
    pub running_version: Version,
    /// The boot variables.
    pub boot: BootState,
}

/// What [`Updater::install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// The slot written, now the boot target.
    pub slot: Slot,
    /// The verified manifest installed.
    pub manifest: VerifiedManifest,
    /// Trial boots armed.
    pub attempts: u8,
}

/// What [`Updater::mark_good`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkGood {
    /// The running trial slot is now the committed slot.
    Committed(Slot),
    /// The running slot was already committed (its good flag is now set).
    AlreadyCommitted(Slot),
}

/// What [`Updater::rollback`] did; reboot to take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollback {
    /// The running trial slot was abandoned; the next boot returns to this slot.
    AbandonedTrial(Slot),
    /// An installed but not yet booted update was cancelled.
    CancelledPending(Slot),
    /// The previous slot is armed for a trial boot; mark-good on it commits it.
    ArmedPrevious(Slot),
}

/// The A/B updater over one bootloader backend.
pub struct Updater<B: BootControl> {
    boot: B,
    slots: SlotDevices,
    booted: Slot,
    policy: DevicePolicy,
    attempts: u8,
    observer: Option<Observer>,
}

impl<B: BootControl> std::fmt::Debug for Updater<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("backend", &self.boot.backend())
            .field("slots", &self.slots)
            .field("booted", &self.booted)
            .field("policy", &self.policy)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl<B: BootControl> Updater<B> {
    /// An updater for a box running slot `booted` (from the kernel command line, see
    /// [`crate::bootctl::booted_slot_from_cmdline`]).
    pub fn new(boot: B, slots: SlotDevices, booted: Slot, policy: DevicePolicy) -> Self {
        Updater {
            boot,
            slots,
            booted,
            policy,
            attempts: DEFAULT_ATTEMPTS,
            observer: None,
        }
    }

    /// Sets the trial boots given to a new slot (1..=9).
    pub fn with_attempts(mut self, attempts: u8) -> Result<Self, UpdateError> {
        if attempts == 0 || attempts > MAX_ATTEMPTS {
            return Err(UpdateError::InvalidAttempts(attempts));
        }
        self.attempts = attempts;
        Ok(self)
    }

    /// Sets the observer told of each install step (progress output, fault injection).
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The bootloader backend.
    pub fn boot_control(&self) -> &B {
        &self.boot
    }

    /// Gives the backend back (tests simulate reboots with it).
    pub fn into_boot_control(self) -> B {
        self.boot
    }

    fn step(&mut self, step: Step) -> Result<(), Interrupted> {
        log::debug!("firmware install: {step}");
        match self.observer.as_mut() {
            Some(observer) => observer(step),
            None => Ok(()),
        }
    }

    fn store(&mut self, from: &BootState, to: &BootState) -> Result<(), BootError> {
        if from != to {
            self.boot.store(to)?;
        }
        Ok(())
    }

    /// The running slot, version and boot variables.
    pub fn status(&self) -> Result<Status, UpdateError> {
        Ok(Status {
            backend: self.boot.backend(),
            booted: self.booted,
            running_version: self.policy.running_version,
            boot: self.boot.load()?,
        })
    }

    /// Installs a root filesystem bundle into the inactive slot and arms a trial boot of
    /// it. Nothing is written unless the bundle verifies and the policy accepts it.
    pub fn install(
        &mut self,
        bundle: &Path,
        anchors: &TrustAnchors,
    ) -> Result<InstallReport, UpdateError> {
        let state = self.boot.load()?;
        if self.booted != state.active {
            return Err(UpdateError::NotCommitted {
                booted: self.booted,
                active: state.active,
            });
        }
        let verified = verify(bundle, anchors)?;
        let manifest = verified.manifest();
        self.policy.check(
            manifest,
            PayloadKind::Rootfs,
            Some(self.policy.running_version),
        )?;
        if manifest.security_version < state.floor {
            return Err(PolicyError::BelowSecurityFloor {
                bundle: manifest.security_version,
                floor: state.floor,
            }
            .into());
        }
        // A trial armed and waiting for its reboot is replaced only by the same release or
        // a later one: an older signed bundle must not cancel a pending (security) update.
        if state.trial_pending() {
            let pending = state.version(state.target);
            let below = pending.is_some_and(|v| manifest.version < v)
                || manifest.security_version < state.security(state.target);
            if below {
                return Err(UpdateError::BelowPendingTrial {
                    bundle: manifest.version,
                    pending,
                    slot: state.target,
                });
            }
        }
        let slot = self.booted.other();
        let path = self.slots.path(slot).to_path_buf();
        let size = manifest.payload.size;
        let expected = manifest.payload_sha256().map_err(BundleError::from)?;
        let medium = self.slots.medium;
        check_fits(&path, medium, size)?;
        log::info!(
            "installing firmware {} (signed by {}) into slot {slot} at {}",
            manifest.version,
            verified.signer(),
            path.display()
        );
        self.step(Step::Verified)?;

        let mut disarmed = state;
        disarmed.target = state.active;
        disarmed.attempts = 0;
        disarmed.set_good(slot, false);
        disarmed.set_version(slot, None);
        disarmed.set_security(slot, 0);
        self.store(&state, &disarmed)?;
        self.step(Step::Disarmed)?;

        let mut payload = verified.open_payload()?;
        let observer = &mut self.observer;
        write_slot(
            &path,
            medium,
            &mut payload,
            size,
            &expected,
            |step| match observer.as_mut() {
                Some(observer) => observer(step),
                None => Ok(()),
            },
        )?;
        self.step(Step::Written)?;

        let read_back = rehash_slot(&path, size)?;
        if read_back != expected {
            return Err(SlotError::ReadBackMismatch {
                path,
                expected: hex::encode(expected),
                actual: hex::encode(read_back),
            }
            .into());
        }
        self.step(Step::Rehashed)?;

        let mut flipped = disarmed;
        flipped.target = slot;
        flipped.attempts = self.attempts;
        flipped.set_version(slot, Some(manifest.version));
        flipped.set_security(slot, manifest.security_version);
        self.store(&disarmed, &flipped)?;
        log::info!(
            "slot {slot} armed for {} trial boots; reboot to start firmware {}",
            self.attempts,
            manifest.version
        );
        self.step(Step::Flipped)?;
        Ok(InstallReport {
            slot,
            manifest: verified,
            attempts: self.attempts,
        })
    }

    /// Commits the running slot after a passed health check, raising the security floor to
    /// its security version. On a trial boot it becomes the committed slot, provided it runs the firmware version the install recorded for it
    /// ([`UpdateError::VersionMismatch`] otherwise; a slot with no recorded version, such as
    /// the factory image, is taken as it is); on a committed slot this only makes sure its
    /// good flag is set.
    pub fn mark_good(&mut self) -> Result<MarkGood, UpdateError> {
        let state = self.boot.load()?;
        let booted = self.booted;
        let mut next = state;
        let outcome = if booted == state.active {
            next.set_good(booted, true);
            next.floor = next.floor.max(state.security(booted));
            MarkGood::AlreadyCommitted(booted)
        } else if booted == state.target {
            let running = self.policy.running_version;
            match state.version(booted) {
                Some(armed) if armed != running => {
                    return Err(UpdateError::VersionMismatch {
                        slot: booted,
                        armed,
                        running,
                    })
                }
                Some(_) => {}
                None => log::warn!(
                    "mark-good: no firmware version recorded for slot {booted}; committing \
                     firmware {running} as it is"
                ),
            }
            next.active = booted;
            next.attempts = 0;
            next.set_good(booted, true);
            next.floor = next.floor.max(state.security(booted));
            MarkGood::Committed(booted)
        } else {
            return Err(UpdateError::RollbackPending {
                booted,
                active: state.active,
            });
        };
        self.store(&state, &next)?;
        log::info!("mark-good: {outcome:?}");
        Ok(outcome)
    }

    /// Returns to the other slot at the next boot: abandons a running trial, cancels an
    /// installed but not yet booted update, or arms a trial boot of the previous (good)
    /// slot.
    pub fn rollback(&mut self) -> Result<Rollback, UpdateError> {
        let state = self.boot.load()?;
        let booted = self.booted;
        let mut next = state;
        let outcome = if booted != state.active {
            next.target = state.active;
            next.attempts = 0;
            next.set_good(booted, false);
            Rollback::AbandonedTrial(state.active)
        } else if state.trial_pending() {
            next.target = state.active;
            next.attempts = 0;
            Rollback::CancelledPending(state.active)
        } else {
            let previous = booted.other();
            if !state.is_good(previous) {
                return Err(UpdateError::NoGoodFallback(previous));
            }
            if state.security(previous) < state.floor {
                return Err(UpdateError::RollbackBelowFloor {
                    slot: previous,
                    security: state.security(previous),
                    floor: state.floor,
                });
            }
            next.target = previous;
            next.attempts = self.attempts;
            Rollback::ArmedPrevious(previous)
        };
        self.store(&state, &next)?;
        log::info!("rollback: {outcome:?}");
        Ok(outcome)
    }
}
