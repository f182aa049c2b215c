//! Shared fixtures and scenarios: the same state-machine scenarios run over every boot
//! control backend.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use duli_firmware::bootctl::{simulate_boot, BootControl, BootState, Slot};
use duli_firmware::keys::{generate_pkcs8, SigningKey};
use duli_firmware::policy::DevicePolicy;
use duli_firmware::progress::{Interrupted, Step};
use duli_firmware::slot::SlotDevices;
use duli_firmware::updater::{MarkGood, Rollback, UpdateError, Updater};
use duli_firmware::{sign, PayloadKind, Release, TrustAnchors, Version};

pub const HW: &str = "nuc-x86_64";
pub const RUNNING: Version = Version::new(1, 0, 0);

/// A signing key and the anchors that trust it.
pub struct Keys {
    pub pkcs8: Vec<u8>,
    pub anchors: TrustAnchors,
}

pub fn keys() -> Keys {
    let pkcs8 = generate_pkcs8().unwrap();
    let public = SigningKey::from_pkcs8(&pkcs8).unwrap().public_key();
    Keys {
        pkcs8,
        anchors: TrustAnchors::from_roots(vec![public]),
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

pub fn release(version: Version, min: Version, hw: &str, kind: PayloadKind) -> Release {
    Release {
        version,
        min_version: min,
        hardware: vec![hw.to_string()],
        kind,
        security_version: 0,
    }
}

/// Writes a payload and signs it into a bundle; returns (bundle path, payload bytes).
pub fn bundle(
    dir: &Path,
    name: &str,
    keys: &Keys,
    release: &Release,
    len: usize,
    seed: u8,
) -> (PathBuf, Vec<u8>) {
    let payload = pattern(len, seed);
    let payload_path = dir.join(format!("{name}.img"));
    fs::write(&payload_path, &payload).unwrap();
    let out = dir.join(format!("{name}.duli"));
    sign(&keys.pkcs8, release, &payload_path, &out).unwrap();
    (out, payload)
}

pub fn rootfs(version: Version) -> Release {
    release(version, Version::new(1, 0, 0), HW, PayloadKind::Rootfs)
}

pub fn policy() -> DevicePolicy {
    DevicePolicy {
        hardware_id: HW.into(),
        running_version: RUNNING,
    }
}

/// The old image in slot A and a stale image in slot B.
pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub slots: SlotDevices,
    pub old_a: Vec<u8>,
    pub old_b: Vec<u8>,
}

pub fn new_appliance() -> Appliance {
    let dir = tempfile::tempdir().unwrap();
    let slots = SlotDevices::files(dir.path().join("slot-a.img"), dir.path().join("slot-b.img"));
    let old_a = pattern(300_000, 1);
    let old_b = pattern(200_000, 2);
    fs::write(&slots.a, &old_a).unwrap();
    fs::write(&slots.b, &old_b).unwrap();
    Appliance {
        dir,
        slots,
        old_a,
        old_b,
    }
}

pub fn updater<B: BootControl>(b: B, slots: &SlotDevices, booted: Slot) -> Updater<B> {
    Updater::new(b, slots.clone(), booted, policy())
}

/// The updater of a box that booted `booted` and runs firmware `running`.
pub fn updater_running<B: BootControl>(
    b: B,
    slots: &SlotDevices,
    booted: Slot,
    running: Version,
) -> Updater<B> {
    Updater::new(
        b,
        slots.clone(),
        booted,
        DevicePolicy {
            running_version: running,
            ..policy()
        },
    )
}

/// Full cycle: install into B, reboot (simulated), mark-good, then roll back to A and
/// commit it again.
pub fn full_cycle<B: BootControl>(make: &dyn Fn() -> B) {
    let bx = new_appliance();
    let keys = keys();
    let (bundle, payload) = bundle(
        bx.dir.path(),
        "v1.1.0",
        &keys,
        &rootfs(Version::new(1, 1, 0)),
        700_000,
        9,
    );
    assert_eq!(make().load().unwrap(), BootState::FACTORY);

    let report = updater(make(), &bx.slots, Slot::A)
        .install(&bundle, &keys.anchors)
        .unwrap();
    assert_eq!(report.slot, Slot::B);
    assert_eq!(report.manifest.manifest().version, Version::new(1, 1, 0));
    assert_eq!(fs::read(&bx.slots.b).unwrap(), payload);
    assert_eq!(fs::read(&bx.slots.a).unwrap(), bx.old_a);
    let state = make().load().unwrap();
    assert_eq!(
        state,
        BootState {
            active: Slot::A,
            target: Slot::B,
            attempts: 3,
            a_good: true,
            b_good: false,
            a_version: None,
            b_version: Some(Version::new(1, 1, 0)),
            ..BootState::FACTORY
        }
    );

    // Reboot: the bootloader spends an attempt on B.
    assert_eq!(simulate_boot(&mut make()).unwrap(), Slot::B);
    assert_eq!(make().load().unwrap().attempts, 2);
    // Slot B on trial but running other firmware than installed into it (the bootloader
    // booted what the device held before): never committed.
    let before = make().load().unwrap();
    let mut stale_b = updater(make(), &bx.slots, Slot::B);
    assert!(matches!(
        stale_b.mark_good(),
        Err(UpdateError::VersionMismatch {
            slot: Slot::B,
            armed,
            running: RUNNING,
        }) if armed == Version::new(1, 1, 0)
    ));
    assert_eq!(make().load().unwrap(), before);
    let mut on_b = updater_running(make(), &bx.slots, Slot::B, Version::new(1, 1, 0));
    assert!(matches!(
        on_b.install(&bundle, &keys.anchors),
        Err(UpdateError::NotCommitted { .. })
    ));
    assert_eq!(on_b.mark_good().unwrap(), MarkGood::Committed(Slot::B));
    let state = make().load().unwrap();
    assert_eq!(
        (state.active, state.target, state.attempts),
        (Slot::B, Slot::B, 0)
    );
    assert!(state.a_good && state.b_good);
    assert_eq!(
        on_b.mark_good().unwrap(),
        MarkGood::AlreadyCommitted(Slot::B)
    );
    for _ in 0..5 {
        assert_eq!(simulate_boot(&mut make()).unwrap(), Slot::B);
    }

    // Roll back to A: armed as a trial, committed by mark-good on A (the factory image,
    // no version recorded).
    let mut on_b = updater_running(make(), &bx.slots, Slot::B, Version::new(1, 1, 0));
    assert_eq!(on_b.rollback().unwrap(), Rollback::ArmedPrevious(Slot::A));
    assert_eq!(simulate_boot(&mut make()).unwrap(), Slot::A);
    let mut on_a = updater(make(), &bx.slots, Slot::A);
    assert_eq!(on_a.mark_good().unwrap(), MarkGood::Committed(Slot::A));
    assert_eq!(make().load().unwrap().active, Slot::A);
    assert_eq!(fs::read(&bx.slots.a).unwrap(), bx.old_a);
}

/// The security floor: committing a root filesystem of security version 2 raises the
/// floor to 2; then a newer bundle of security version 1 is refused, and so is a rollback
/// to the previous slot (security version 0), with nothing written; a bundle at the floor
/// installs, and records its security version for its slot.
pub fn security_floor<B: BootControl>(make: &dyn Fn() -> B) {
    let bx = new_appliance();
    let keys = keys();
    let secure = Release {
        security_version: 2,
        ..rootfs(Version::new(1, 1, 0))
    };
    let (fix, _) = bundle(bx.dir.path(), "v1.1.0-fix", &keys, &secure, 50_000, 3);
    updater(make(), &bx.slots, Slot::A)
        .install(&fix, &keys.anchors)
        .unwrap();
    let armed = make().load().unwrap();
    assert_eq!((armed.b_security, armed.floor), (2, 0), "{armed:?}");
    assert_eq!(simulate_boot(&mut make()).unwrap(), Slot::B);
    let mut on_b = updater_running(make(), &bx.slots, Slot::B, Version::new(1, 1, 0));
    assert_eq!(on_b.mark_good().unwrap(), MarkGood::Committed(Slot::B));
    let committed = make().load().unwrap();
    assert_eq!((committed.active, committed.floor), (Slot::B, 2));

    // A newer release that lacks the fix (security version 1): refused, nothing written.
    let older_line = Release {
        security_version: 1,
        ..rootfs(Version::new(1, 2, 0))
    };
    let (unfixed, _) = bundle(
        bx.dir.path(),
        "v1.2.0-unfixed",
        &keys,
        &older_line,
        50_000,
        4,
    );
    let slot_a = fs::read(&bx.slots.a).unwrap();
    let mut on_b = updater_running(make(), &bx.slots, Slot::B, Version::new(1, 1, 0));
    assert!(matches!(
        on_b.install(&unfixed, &keys.anchors),
        Err(UpdateError::Policy(
            duli_firmware::policy::PolicyError::BelowSecurityFloor {
                bundle: 1,
                floor: 2
            }
        ))
    ));
    // Back to the factory slot A (security version 0): refused.
    assert!(matches!(
        on_b.rollback(),
        Err(UpdateError::RollbackBelowFloor {
            slot: Slot::A,
            security: 0,
            floor: 2
        })
    ));
    assert_eq!(make().load().unwrap(), committed);
    assert_eq!(fs::read(&bx.slots.a).unwrap(), slot_a);

    // A release at the floor installs.
    let next = Release {
        security_version: 2,
        ..rootfs(Version::new(1, 2, 1))
    };
    let (ok, _) = bundle(bx.dir.path(), "v1.2.1", &keys, &next, 50_000, 5);
    let report = on_b.install(&ok, &keys.anchors).unwrap();
    assert_eq!(report.slot, Slot::A);
    let state = make().load().unwrap();
    assert_eq!((state.a_security, state.b_security, state.floor), (2, 2, 2));
}

/// A trial that is never marked good falls back to the committed slot once the attempts
/// are spent; an explicit rollback during the trial does so at the next boot.
pub fn missing_mark_good_falls_back<B: BootControl>(make: &dyn Fn() -> B) {
    let bx = new_appliance();
    let keys = keys();
    let (bundle, _) = bundle(
        bx.dir.path(),
        "v1.1.0",
        &keys,
        &rootfs(Version::new(1, 1, 0)),
        100_000,
        3,
    );
    updater(make(), &bx.slots, Slot::A)
        .with_attempts(2)
        .unwrap()
        .install(&bundle, &keys.anchors)
        .unwrap();
    assert_eq!(simulate_boot(&mut make()).unwrap(), Slot::B);
    assert_eq!(simulate_boot(&mut make()).unwrap(), Slot::B);
    assert_eq!(simulate_boot(&mut make()).unwrap(), Slot::A);
    let state = make().load().unwrap();
    assert_eq!(
        (state.active, state.target, state.attempts),
        (Slot::A, Slot::A, 0)
    );
    assert!(!state.b_good);
    // Nothing good to roll back to: B never passed a health check.
    assert!(matches!(
        updater(make(), &bx.slots, Slot::A).rollback(),
        Err(UpdateError::NoGoodFallback(Slot::B))
    ));

    // Explicit rollback during a trial.
    updater(make(), &bx.slots, Slot::A)
        .install(&bundle, &keys.anchors)
        .unwrap();
    assert_eq!(simulate_boot(&mut make()).unwrap(), Slot::B);
    let mut on_b = updater(make(), &bx.slots, Slot::B);
    assert_eq!(on_b.rollback().unwrap(), Rollback::AbandonedTrial(Slot::A));
    assert!(matches!(
        on_b.mark_good(),
        Err(UpdateError::RollbackPending { .. })
    ));
    assert_eq!(simulate_boot(&mut make()).unwrap(), Slot::A);

    // Cancelling an installed update before rebooting.
    let mut on_a = updater(make(), &bx.slots, Slot::A);
    on_a.install(&bundle, &keys.anchors).unwrap();
    assert_eq!(
        on_a.rollback().unwrap(),
        Rollback::CancelledPending(Slot::A)
    );
    assert_eq!(simulate_boot(&mut make()).unwrap(), Slot::A);
}

/// Every step name an install can be stopped at.
pub fn crash_points() -> Vec<Step> {
    vec![
        Step::Verified,
        Step::Disarmed,
        Step::Writing(1),
        Step::Written,
        Step::Rehashed,
        Step::Flipped,
    ]
}

fn same_point(stop: Step, at: Step) -> bool {
    match (stop, at) {
        (Step::Writing(_), Step::Writing(_)) => true,
        (a, b) => a == b,
    }
}

/// Checks what must hold after an install stopped anywhere: the committed slot A is
/// intact and good, and booting without any mark-good ends on A after at most the armed
/// attempts; any boot of B finds the complete new image.
pub fn check_bootable_after_cut<B: BootControl>(
    make: &dyn Fn() -> B,
    slots: &SlotDevices,
    old_a: &[u8],
    new_payload: &[u8],
) {
    let state = make().load().unwrap();
    assert_eq!(state.active, Slot::A, "{state:?}");
    assert!(state.a_good, "{state:?}");
    assert_eq!(fs::read(&slots.a).unwrap(), old_a, "slot A changed");
    if state.trial_pending() {
        assert_eq!(
            fs::read(&slots.b).unwrap(),
            new_payload,
            "trial armed on an incomplete slot"
        );
    }
    if state.b_good {
        // B may only stay flagged good while it still holds the old, untouched image.
        assert!(!state.trial_pending());
    }
    let mut fell_back = false;
    for _ in 0..=duli_firmware::bootctl::MAX_ATTEMPTS {
        match simulate_boot(&mut make()).unwrap() {
            Slot::A => {
                fell_back = true;
                break;
            }
            Slot::B => assert_eq!(fs::read(&slots.b).unwrap(), new_payload),
        }
    }
    assert!(fell_back, "never returned to slot A");
    let state = make().load().unwrap();
    assert_eq!((state.active, state.target), (Slot::A, Slot::A));
}

/// Stops an install after each step in turn (as a power cut would: no clean-up runs),
/// checks the box still boots the old slot, then checks a fresh install recovers.
pub fn cut_after_each_step<B: BootControl>(make_for: &dyn Fn(&Path) -> B) {
    for stop in crash_points() {
        let bx = new_appliance();
        let make = || make_for(bx.dir.path());
        // Slot B holds a previous good image: the install must un-flag it before writing.
        let mut b = make();
        b.store(&BootState {
            b_good: true,
            ..BootState::FACTORY
        })
        .unwrap();
        let keys = keys();
        let (bundle, payload) = bundle(
            bx.dir.path(),
            "v1.2.0",
            &keys,
            &rootfs(Version::new(1, 2, 0)),
            600_000,
            5,
        );
        let observer = Box::new(move |at: Step| {
            if same_point(stop, at) {
                Err(Interrupted(at))
            } else {
                Ok(())
            }
        });
        let err = updater(make(), &bx.slots, Slot::A)
            .with_observer(observer)
            .install(&bundle, &keys.anchors)
            .unwrap_err();
        assert!(
            matches!(err, UpdateError::Interrupted(_) | UpdateError::Slot(_)),
            "{stop:?}: {err}"
        );
        let state = make().load().unwrap();
        if !matches!(stop, Step::Verified) {
            assert!(!state.b_good, "{stop:?}: slot B still flagged good");
        } else {
            assert!(state.b_good, "{stop:?}: state changed before disarm");
            assert_eq!(fs::read(&bx.slots.b).unwrap(), bx.old_b);
        }
        check_bootable_after_cut(&make, &bx.slots, &bx.old_a, &payload);

        // The next install attempt completes and boots the new image.
        updater(make(), &bx.slots, Slot::A)
            .install(&bundle, &keys.anchors)
            .unwrap();
        assert_eq!(simulate_boot(&mut make()).unwrap(), Slot::B);
        assert_eq!(fs::read(&bx.slots.b).unwrap(), payload);
    }
}
