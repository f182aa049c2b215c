//! The update state machine over the file-backed boot control, including power cuts after
//! every step and a real SIGKILL during each critical step.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use duli_firmware::bootctl::{simulate_boot, BootControl, FileBootControl, Slot};
use duli_firmware::bundle::BundleError;
use duli_firmware::model_pack::{install_model_pack, open_installed};
use duli_firmware::policy::PolicyError;
use duli_firmware::progress::Step;
use duli_firmware::updater::UpdateError;
use duli_firmware::{PayloadKind, Release, Version};

fn env_in(dir: &Path) -> FileBootControl {
    FileBootControl::new(dir.join("bootenv"))
}

#[test]
fn install_reboot_mark_good_rollback() {
    let dir = tempfile::tempdir().unwrap();
    full_cycle(&|| env_in(dir.path()));
}

#[test]
fn the_security_floor_refuses_older_fixes_and_rollbacks_below_it() {
    let dir = tempfile::tempdir().unwrap();
    security_floor(&|| env_in(dir.path()));
}

/// A trial armed and waiting for its reboot is not cancelled by an older signed bundle
/// (the service user can stage any bundle it kept): refused before anything is written;
/// the same release again, or a later one, replaces it.
#[test]
fn an_older_bundle_does_not_cancel_a_pending_trial() {
    let bx = new_appliance();
    let keys = keys();
    let make = || env_in(bx.dir.path());
    let fix = Release {
        security_version: 3,
        ..rootfs(Version::new(1, 3, 0))
    };
    let (pending, _) = bundle(bx.dir.path(), "v1.3.0", &keys, &fix, 50_000, 7);
    updater(make(), &bx.slots, Slot::A)
        .install(&pending, &keys.anchors)
        .unwrap();
    let armed = make().load().unwrap();
    assert!(armed.trial_pending(), "{armed:?}");
    let slot_b = fs::read(&bx.slots.b).unwrap();
    for (name, release) in [
        ("v1.2.0", rootfs(Version::new(1, 2, 0))),
        (
            "v1.3.0-weaker",
            Release {
                security_version: 1,
                ..rootfs(Version::new(1, 3, 0))
            },
        ),
    ] {
        let (older, _) = bundle(bx.dir.path(), name, &keys, &release, 50_000, 8);
        let err = updater(make(), &bx.slots, Slot::A)
            .install(&older, &keys.anchors)
            .unwrap_err();
        assert!(
            matches!(err, UpdateError::BelowPendingTrial { slot: Slot::B, .. }),
            "{name}: {err}"
        );
        assert_eq!(make().load().unwrap(), armed, "{name}");
        assert_eq!(fs::read(&bx.slots.b).unwrap(), slot_b, "{name}");
    }
    // The same release again re-arms it.
    updater(make(), &bx.slots, Slot::A)
        .install(&pending, &keys.anchors)
        .unwrap();
    assert!(make().load().unwrap().trial_pending());
}

#[test]
fn missing_mark_good_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    missing_mark_good_falls_back(&|| env_in(dir.path()));
}

#[test]
fn power_cut_after_each_step_leaves_old_slot_bootable() {
    cut_after_each_step(&env_in);
}

#[test]
fn rejected_bundles_touch_neither_slot_nor_boot_variables() {
    let bx = new_appliance();
    let keys = keys();
    let make = || env_in(bx.dir.path());
    make()
        .store(&duli_firmware::BootState {
            b_good: true,
            ..duli_firmware::BootState::FACTORY
        })
        .unwrap();
    let env_before = fs::read(make().path()).unwrap();
    let d = bx.dir.path();
    let good = rootfs(Version::new(1, 1, 0));
    let (bundle_ok, _) = bundle(d, "ok", &keys, &good, 50_000, 8);
    let bytes = fs::read(&bundle_ok).unwrap();
    let flipped = |name: &str, offset: usize| {
        let mut b = bytes.clone();
        b[offset] ^= 0x80;
        let p = d.join(name);
        fs::write(&p, b).unwrap();
        p
    };
    let tampered_manifest = flipped("m.duli", 100);
    let tampered_signature = flipped("s.duli", 20);
    let tampered_payload = flipped("p.duli", bytes.len() - 10);
    let wrong_key = bundle(d, "wk", &common::keys(), &good, 50_000, 8).0;
    let downgrade = bundle(
        d,
        "old",
        &keys,
        &release(
            Version::new(0, 9, 0),
            Version::new(0, 1, 0),
            HW,
            PayloadKind::Rootfs,
        ),
        50_000,
        8,
    )
    .0;
    let too_new = bundle(
        d,
        "min",
        &keys,
        &release(
            Version::new(3, 0, 0),
            Version::new(2, 0, 0),
            HW,
            PayloadKind::Rootfs,
        ),
        50_000,
        8,
    )
    .0;
    let foreign = bundle(
        d,
        "hw",
        &keys,
        &release(
            Version::new(1, 1, 0),
            Version::new(1, 0, 0),
            "jetson-orin",
            PayloadKind::Rootfs,
        ),
        50_000,
        8,
    )
    .0;
    let model = bundle(
        d,
        "model",
        &keys,
        &release(
            Version::new(1, 1, 0),
            Version::new(1, 0, 0),
            HW,
            PayloadKind::ModelPack,
        ),
        50_000,
        8,
    )
    .0;

    type Check = fn(&UpdateError) -> bool;
    let cases: Vec<(&Path, Check)> = vec![
        (&tampered_manifest, |e| {
            matches!(e, UpdateError::Bundle(BundleError::BadSignature))
        }),
        (&tampered_signature, |e| {
            matches!(e, UpdateError::Bundle(BundleError::BadSignature))
        }),
        (&tampered_payload, |e| {
            matches!(
                e,
                UpdateError::Bundle(BundleError::PayloadHashMismatch { .. })
            )
        }),
        (&wrong_key, |e| {
            matches!(e, UpdateError::Bundle(BundleError::UntrustedKey(_)))
        }),
        (&downgrade, |e| {
            matches!(e, UpdateError::Policy(PolicyError::Downgrade { .. }))
        }),
        (&too_new, |e| {
            matches!(e, UpdateError::Policy(PolicyError::BelowMinimum { .. }))
        }),
        (&foreign, |e| {
            matches!(
                e,
                UpdateError::Policy(PolicyError::IncompatibleHardware { .. })
            )
        }),
        (&model, |e| {
            matches!(e, UpdateError::Policy(PolicyError::WrongKind { .. }))
        }),
    ];
    for (path, check) in cases {
        let steps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = steps.clone();
        let err = updater(make(), &bx.slots, Slot::A)
            .with_observer(Box::new(move |s| {
                seen.lock().unwrap().push(s);
                Ok(())
            }))
            .install(path, &keys.anchors)
            .unwrap_err();
        assert!(check(&err), "{}: unexpected error {err}", path.display());
        assert!(
            steps.lock().unwrap().is_empty(),
            "{}: steps ran",
            path.display()
        );
        assert_eq!(
            fs::read(&bx.slots.b).unwrap(),
            bx.old_b,
            "{}",
            path.display()
        );
        assert_eq!(
            fs::read(&bx.slots.a).unwrap(),
            bx.old_a,
            "{}",
            path.display()
        );
        assert_eq!(
            fs::read(make().path()).unwrap(),
            env_before,
            "{}",
            path.display()
        );
    }
    // The untampered bundle installs.
    updater(make(), &bx.slots, Slot::A)
        .install(&bundle_ok, &keys.anchors)
        .unwrap();
}

#[test]
fn model_pack_installs_atomically_on_data_partition() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let d = dir.path();
    let pack_rel = |v| release(v, Version::new(1, 0, 0), HW, PayloadKind::ModelPack);
    let (b1, p1) = bundle(d, "m1", &keys, &pack_rel(Version::new(2, 0, 0)), 40_000, 1);
    let dest = d.join("models").join("pneumonia.pack");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let v = install_model_pack(&b1, &keys.anchors, &policy(), None, &dest, None).unwrap();
    assert_eq!(v.manifest().version, Version::new(2, 0, 0));
    // The installed pack is the signed bundle itself, and verifies again when opened.
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&b1).unwrap());
    let mut stream = open_installed(&dest, &keys.anchors).unwrap();
    let mut payload = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut payload).unwrap();
    assert_eq!(payload, p1);
    assert_eq!(
        stream.finish().unwrap().manifest.version,
        Version::new(2, 0, 0)
    );

    // A bundle whose payload is not the one the caller looked into (replaced in between):
    // nothing is written.
    let (b3, _) = bundle(d, "m3", &keys, &pack_rel(Version::new(3, 0, 0)), 40_000, 7);
    let other = "0".repeat(64);
    assert!(matches!(
        install_model_pack(&b3, &keys.anchors, &policy(), None, &dest, Some(&other)),
        Err(UpdateError::Slot(
            duli_firmware::slot::SlotError::SourceChanged(_)
        ))
    ));
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&b1).unwrap());

    let (old, _) = bundle(d, "m0", &keys, &pack_rel(Version::new(1, 5, 0)), 40_000, 2);
    assert!(matches!(
        install_model_pack(
            &old,
            &keys.anchors,
            &policy(),
            Some(Version::new(2, 0, 0)),
            &dest,
            None
        ),
        Err(UpdateError::Policy(PolicyError::Downgrade { .. }))
    ));
    let rootfs_bundle = bundle(d, "r", &keys, &rootfs(Version::new(1, 1, 0)), 10, 3).0;
    assert!(matches!(
        install_model_pack(&rootfs_bundle, &keys.anchors, &policy(), None, &dest, None),
        Err(UpdateError::Policy(PolicyError::WrongKind { .. }))
    ));
    assert_eq!(
        fs::read(&dest).unwrap(),
        fs::read(&b1).unwrap(),
        "refused packs left the old one in place"
    );
    let leftovers: Vec<_> = fs::read_dir(dest.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1);
}

/// An installed pack altered on disk is refused when it is opened for use: a changed
/// payload byte when the stream is finished, a changed manifest at once; a root
/// filesystem bundle in a pack's place is not a model pack.
#[test]
fn an_installed_pack_is_verified_again_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let d = dir.path();
    let rel = release(
        Version::new(2, 0, 0),
        Version::new(1, 0, 0),
        HW,
        PayloadKind::ModelPack,
    );
    let (b1, _) = bundle(d, "m1", &keys, &rel, 40_000, 1);
    let dest = d.join("pneumonia.pack");
    install_model_pack(&b1, &keys.anchors, &policy(), None, &dest, None).unwrap();
    let good = fs::read(&dest).unwrap();

    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    fs::write(&dest, &bad).unwrap();
    let mut stream = open_installed(&dest, &keys.anchors).unwrap();
    std::io::copy(&mut stream, &mut std::io::sink()).unwrap();
    assert!(matches!(
        stream.finish(),
        Err(BundleError::PayloadHashMismatch { .. })
    ));

    let mut bad = good.clone();
    bad.extend_from_slice(b"trailing");
    fs::write(&dest, &bad).unwrap();
    let stream = open_installed(&dest, &keys.anchors).unwrap();
    assert!(matches!(
        stream.finish(),
        Err(BundleError::TrailingData { .. })
    ));

    let text = String::from_utf8_lossy(&good).into_owned();
    let at = text.find("2.0.0").unwrap();
    let mut bad = good.clone();
    bad[at] = b'9';
    fs::write(&dest, &bad).unwrap();
    assert!(matches!(
        open_installed(&dest, &keys.anchors),
        Err(BundleError::BadSignature)
    ));

    let rootfs_bundle = bundle(d, "r", &keys, &rootfs(Version::new(1, 1, 0)), 10, 3).0;
    fs::copy(&rootfs_bundle, &dest).unwrap();
    let err = open_installed(&dest, &keys.anchors).unwrap_err();
    assert!(err.to_string().contains("not a model pack"), "{err}");
}

const CHILD_ENV: &str = "DULI_FIRMWARE_KILL_CHILD_DIR";
const CHILD_STEP: &str = "DULI_FIRMWARE_KILL_CHILD_STEP";
const MARKER: &str = "DULI-CRASH-POINT-REACHED";

/// A slot path that does not exist (a mistyped path, a missing by-partlabel link) or is a
/// regular file where a block device is expected fails the install before anything is
/// written: no file appears, the boot variables are untouched, no trial is armed.
#[test]
fn a_slot_that_is_not_a_block_device_is_refused_before_anything_is_written() {
    use duli_firmware::slot::{SlotDevices, SlotError};
    let bx = new_appliance();
    let keys = keys();
    let (bundle, _) = bundle(
        bx.dir.path(),
        "v1.1.0",
        &keys,
        &rootfs(Version::new(1, 1, 0)),
        50_000,
        4,
    );
    let make = || env_in(bx.dir.path());
    make()
        .store(&duli_firmware::BootState {
            b_good: true,
            ..duli_firmware::BootState::FACTORY
        })
        .unwrap();
    let env_before = fs::read(make().path()).unwrap();
    let typo = bx.dir.path().join("by-partlabel").join("rootfs-b");
    fs::create_dir_all(typo.parent().unwrap()).unwrap();
    for b in [typo.clone(), bx.slots.b.clone()] {
        let slots = SlotDevices::block_devices(bx.slots.a.clone(), b.clone());
        let err = updater(make(), &slots, Slot::A)
            .install(&bundle, &keys.anchors)
            .unwrap_err();
        assert!(
            matches!(err, UpdateError::Slot(SlotError::NotASlot { .. })),
            "{}: {err}",
            b.display()
        );
        assert_eq!(fs::read(make().path()).unwrap(), env_before);
    }
    assert!(
        !typo.exists(),
        "a regular file was created at the slot path"
    );
    assert_eq!(fs::read(&bx.slots.b).unwrap(), bx.old_b);
    assert_eq!(fs::read(&bx.slots.a).unwrap(), bx.old_a);
}

/// Run by [`sigkill_during_install`] in a child process: installs and, at the requested
/// step, announces it and waits to be killed.
#[test]
#[ignore = "child process of sigkill_during_install"]
fn sigkill_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let step = std::env::var(CHILD_STEP).unwrap();
    let dir = Path::new(&dir).to_path_buf();
    let slots =
        duli_firmware::slot::SlotDevices::files(dir.join("slot-a.img"), dir.join("slot-b.img"));
    let anchors = duli_firmware::TrustAnchors::from_roots(vec![duli_firmware::PublicKey::read(
        &dir.join("test.pub"),
    )
    .unwrap()]);
    let observer = Box::new(move |at: Step| {
        let hit = match (step.as_str(), at) {
            ("writing", Step::Writing(n)) => n >= 512 * 1024,
            ("rehashed", Step::Rehashed) | ("flipped", Step::Flipped) => true,
            _ => false,
        };
        if hit {
            let mut out = std::io::stdout();
            writeln!(out, "{MARKER}").unwrap();
            out.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
        Ok(())
    });
    updater(env_in(&dir), &slots, Slot::A)
        .with_observer(observer)
        .install(&dir.join("new.duli"), &anchors)
        .unwrap();
    panic!("install finished without reaching the crash point");
}

#[test]
fn sigkill_during_install() {
    for step in ["writing", "rehashed", "flipped"] {
        let bx = new_appliance();
        let d = bx.dir.path();
        let pkcs8 = duli_firmware::keys::generate_pkcs8().unwrap();
        let signing = duli_firmware::SigningKey::from_pkcs8(&pkcs8).unwrap();
        fs::write(d.join("test.pub"), signing.public_key().to_hex()).unwrap();
        let k = Keys {
            pkcs8,
            anchors: duli_firmware::TrustAnchors::from_roots(vec![signing.public_key()]),
        };
        let payload = pattern(2 * 1024 * 1024, 11);
        fs::write(d.join("new.img"), &payload).unwrap();
        duli_firmware::sign(
            &k.pkcs8,
            &rootfs(Version::new(1, 3, 0)),
            &d.join("new.img"),
            &d.join("new.duli"),
        )
        .unwrap();

        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_child",
                "--include-ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, d)
            .env(CHILD_STEP, step)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reached = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains(MARKER));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            reached,
            "{step}: child never reached the crash point ({status})"
        );
        assert!(!status.success());

        let make = || env_in(d);
        check_bootable_after_cut(&make, &bx.slots, &bx.old_a, &payload);
        if step == "flipped" {
            // The trial was armed before the kill; the boots above spent it and fell back.
            assert!(!make().load().unwrap().b_good);
        }
        // Recovery: installing again completes and the new slot boots.
        updater(make(), &bx.slots, Slot::A)
            .install(&d.join("new.duli"), &k.anchors)
            .unwrap();
        assert_eq!(simulate_boot(&mut make()).unwrap(), Slot::B);
        assert_eq!(fs::read(&bx.slots.b).unwrap(), payload);
    }
}
