//! `duli firmware ...` end to end with the file-backed boot variables: keygen → sign →
//! verify → install → (simulated reboot) → status → mark-good with the health check →
//! rollback, tampered and staged bundles, model packs, and the audit records they leave;
//! the firmware lock, a bundle staged during an install, missing slot devices and the
//! mark-good wrapper over a damaged GRUB environment block.

mod common;

use common::*;
use duli::audit::{Action, Audit};
use duli::store::Store;
use duli_firmware::bootctl::{simulate_boot, FileBootControl, Slot};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const HW: &str = "test-hw";

/// A box with two slot files, a kernel command line and a data directory.
struct Bench {
    dir: TestDir,
}

impl Bench {
    fn new() -> Bench {
        let dir = temp_dir("fwcli");
        let b = Bench { dir };
        fs::write(b.path("slot-a.img"), pattern(200_000, 1)).unwrap();
        fs::write(b.path("slot-b.img"), pattern(150_000, 2)).unwrap();
        b.boot_into(Slot::A);
        b
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    fn env(&self) -> Vec<(String, String)> {
        let p = |n: &str| self.path(n).display().to_string();
        vec![
            ("DULI_DEVICE__DATA_DIR".into(), p("data")),
            ("DULI_FIRMWARE__BOOTLOADER".into(), "file".into()),
            ("DULI_FIRMWARE__BOOT_ENV_FILE".into(), p("bootenv")),
            ("DULI_FIRMWARE__SLOT_A".into(), p("slot-a.img")),
            ("DULI_FIRMWARE__SLOT_B".into(), p("slot-b.img")),
            ("DULI_FIRMWARE__SLOT_FILES".into(), "true".into()),
            ("DULI_FIRMWARE__CMDLINE".into(), p("cmdline")),
            ("DULI_FIRMWARE__HARDWARE_ID".into(), HW.into()),
            ("DULI_FIRMWARE__ENDORSED_KEYS".into(), p("endorsed")),
            ("DULI_FIRMWARE__STAGED_BUNDLE".into(), p("data/staged.duli")),
            ("DULI_FIRMWARE__MODEL_PACKS".into(), p("data/models")),
            // As the daemons these tests start have it: no model provisioned.
            (
                "DULI_INFERENCE__MODEL".into(),
                "/nonexistent/inference-off-in-this-test/model.toml".into(),
            ),
            (
                "DULI_FIRMWARE__MODEL_PACK_VERSIONS".into(),
                p("etc/firmware-state/model-packs.json"),
            ),
        ]
    }

    /// `duli firmware ARGS` with this box's configuration; `trust` adds the test key as a
    /// root (debug builds only).
    fn duli(&self, args: &[&str], trust: bool) -> ToolOutput {
        self.duli_with(args, trust, &[])
    }

    /// [`Bench::duli`] with extra (or overriding) environment variables.
    fn duli_with(&self, args: &[&str], trust: bool, extra: &[(&str, &str)]) -> ToolOutput {
        let mut cmd = Command::new(Daemon::binary());
        for (key, _) in std::env::vars() {
            if key.starts_with("DULI_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("firmware").args(args).envs(self.env());
        let mut all = vec!["firmware"];
        all.extend_from_slice(args);
        if let Some(config) = box_command_config(&all, &self.path("")) {
            cmd.arg("--config").arg(config);
        }
        if trust {
            cmd.env("DULI_FIRMWARE_DEV_ROOT", self.path("keys/release.pub"));
        }
        cmd.envs(extra.iter().copied());
        run(&mut cmd, Duration::from_secs(120))
    }

    /// `duli firmware keygen` into `keys/` (created if missing).
    fn keygen(&self, name: &str) {
        fs::create_dir_all(self.path("keys")).unwrap();
        self.duli(
            &[
                "keygen",
                "--out-dir",
                self.path("keys").to_str().unwrap(),
                "--name",
                name,
            ],
            false,
        )
        .assert_success("firmware keygen");
    }

    fn status(&self) -> serde_json::Value {
        let out = self.duli(&["status", "--json"], false);
        out.assert_success("firmware status");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }

    /// What the bootloader does at power-on, then the kernel command line it passes.
    fn reboot(&self) -> Slot {
        let mut env = FileBootControl::new(self.path("bootenv"));
        let slot = simulate_boot(&mut env).unwrap();
        self.boot_into(slot);
        slot
    }

    fn boot_into(&self, slot: Slot) {
        fs::write(
            self.path("cmdline"),
            format!("root=/dev/x duli.slot={slot} ro\n"),
        )
        .unwrap();
    }

    fn sign(&self, name: &str, kind: &str, version: &str, min: &str, payload: &[u8]) -> PathBuf {
        self.sign_extra("release", name, kind, version, min, payload, &[])
    }

    /// Signs with the key pair `keys/KEY.pk8`, passing `extra` arguments to `duli firmware
    /// sign`.
    #[allow(clippy::too_many_arguments)]
    fn sign_extra(
        &self,
        key: &str,
        name: &str,
        kind: &str,
        version: &str,
        min: &str,
        payload: &[u8],
        extra: &[&str],
    ) -> PathBuf {
        let img = self.path(&format!("{name}.img"));
        fs::write(&img, payload).unwrap();
        let out = self.path(&format!("{name}.duli"));
        let o = self.duli(
            &[
                "sign",
                "--key",
                self.path(&format!("keys/{key}.pk8")).to_str().unwrap(),
                "--payload",
                img.to_str().unwrap(),
                "--kind",
                kind,
                "--version",
                version,
                "--min-version",
                min,
                "--hardware",
                "other-hw",
                "--hardware",
                HW,
                "--out",
                out.to_str().unwrap(),
            ]
            .iter()
            .chain(extra)
            .copied()
            .collect::<Vec<_>>(),
            false,
        );
        o.assert_success("firmware sign");
        out
    }
}

/// Deterministic pseudo-random bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
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

/// A model pack's archive: a `model.toml` naming `model` and `len` bytes of weights.
fn pack_archive(model: &str, len: usize, seed: u8) -> Vec<u8> {
    let mut archive = tar::Builder::new(Vec::new());
    let manifest = format!("name = \"{model}\"\n");
    for (name, bytes) in [
        ("model.toml", manifest.into_bytes()),
        ("weights.bin", pattern(len, seed)),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive
            .append_data(&mut header, name, bytes.as_slice())
            .unwrap();
    }
    archive.into_inner().unwrap()
}

fn flip_bit(src: &Path, dst: &Path, offset_from_end: usize) {
    let mut bytes = fs::read(src).unwrap();
    let i = bytes.len() - offset_from_end;
    bytes[i] ^= 0x10;
    fs::write(dst, bytes).unwrap();
}

fn software_records(data_dir: &Path) -> Vec<duli::audit::Record> {
    let store = Store::open(data_dir).unwrap();
    let audit = Audit::open(&store).unwrap();
    let v = audit.verify().unwrap();
    assert!(v.broken.is_none(), "audit chain broken: {v:?}");
    audit
        .records(0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|r| r.action == Action::Software)
        .collect()
}

#[test]
fn firmware_cli_full_cycle_with_the_file_backend() {
    let b = Bench::new();
    fs::create_dir_all(b.data_dir()).unwrap();

    // keygen
    let out = b.duli(
        &[
            "keygen",
            "--out-dir",
            b.path("keys").to_str().unwrap(),
            "--name",
            "release",
        ],
        false,
    );
    assert!(
        !out.success(),
        "keygen into a missing folder must fail: {}",
        out.combined()
    );
    fs::create_dir_all(b.path("keys")).unwrap();
    let out = b.duli(
        &[
            "keygen",
            "--out-dir",
            b.path("keys").to_str().unwrap(),
            "--name",
            "release",
        ],
        false,
    );
    out.assert_success("firmware keygen");
    assert!(out.stdout.contains("key id:"), "{}", out.stdout);
    let mode = fs::metadata(b.path("keys/release.pk8"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let key_id = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("key id:"))
        .unwrap()
        .trim()
        .to_string();

    // sign and verify
    let payload = pattern(300_000, 7);
    let bundle = b.sign("v020", "rootfs", "0.2.0", "0.1.0", &payload);
    let out = b.duli(
        &[
            "verify",
            bundle.to_str().unwrap(),
            "--key",
            b.path("keys/release.pub").to_str().unwrap(),
        ],
        false,
    );
    out.assert_success("firmware verify --key");
    assert!(out.stdout.contains("\"0.2.0\""), "{}", out.stdout);
    assert!(out.stdout.contains(&key_id), "{}", out.stdout);
    // The device itself does not trust a key it was not built with.
    let out = b.duli(&["verify", bundle.to_str().unwrap()], false);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(out.stderr.contains("does not trust"), "{}", out.stderr);

    // Tampered bundles: payload, manifest, signature. Refused before anything is written.
    let before = b.status();
    let slot_b_before = fs::read(b.path("slot-b.img")).unwrap();
    let payload_bit = b.path("payload-bit.duli");
    flip_bit(&bundle, &payload_bit, 1000);
    let manifest_bit = b.path("manifest-bit.duli");
    let sig_bit = b.path("sig-bit.duli");
    {
        let bytes = fs::read(&bundle).unwrap();
        let mut m = bytes.clone();
        m[84 + 20] ^= 0x01; // inside the manifest JSON
        fs::write(&manifest_bit, m).unwrap();
        let mut s = bytes;
        s[16 + 5] ^= 0x01; // inside the signature
        fs::write(&sig_bit, s).unwrap();
    }
    for (tampered, says) in [
        (&payload_bit, "SHA-256"),
        (&manifest_bit, "signature does not verify"),
        (&sig_bit, "signature does not verify"),
    ] {
        let out = b.duli(
            &[
                "verify",
                tampered.to_str().unwrap(),
                "--key",
                b.path("keys/release.pub").to_str().unwrap(),
            ],
            false,
        );
        assert_eq!(out.code(), Some(3), "{}", out.combined());
        assert!(out.stderr.contains("REFUSED"), "{}", out.stderr);
        assert!(out.stderr.contains(says), "{says}: {}", out.stderr);
        let out = b.duli(&["install", tampered.to_str().unwrap()], true);
        assert_eq!(out.code(), Some(3), "{}", out.combined());
        assert!(
            out.stderr.contains("REFUSED") && out.stderr.contains(says),
            "{}",
            out.stderr
        );
        assert_eq!(b.status(), before);
        assert_eq!(fs::read(b.path("slot-b.img")).unwrap(), slot_b_before);
    }

    // A tampered staged bundle is consumed (moved aside) so the path unit stops.
    fs::copy(&payload_bit, b.path("data/staged.duli")).unwrap();
    let out = b.duli(&["install", "--staged"], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(!b.path("data/staged.duli").exists());
    assert!(b.path("data/staged.duli.rejected").exists());
    assert_eq!(b.status(), before);

    // A good staged bundle installs into slot B and is deleted.
    fs::copy(&bundle, b.path("data/staged.duli")).unwrap();
    let out = b.duli(&["install", "--staged"], true);
    out.assert_success("firmware install --staged");
    assert!(out.stdout.contains("slot B"), "{}", out.stdout);
    assert!(!b.path("data/staged.duli").exists());
    assert_eq!(
        &fs::read(b.path("slot-b.img")).unwrap()[..payload.len()],
        &payload[..]
    );
    let s = b.status();
    assert_eq!(s["booted"], "A");
    assert_eq!(s["active"], "A");
    assert_eq!(s["target"], "B");
    assert_eq!(s["attempts"], 3);
    assert_eq!(s["update_pending"], true);
    let text = b.duli(&["status"], false);
    assert!(text.stdout.contains("reboot to try it"), "{}", text.stdout);
    // Where the device's hardware identifier came from: this test box's image has no
    // /usr/share/duli/hardware-id, so the configuration's.
    if !std::path::Path::new(duli_firmware::config::DEFAULT_HARDWARE_ID_FILE).exists() {
        assert_eq!(s["hardware_id"], HW, "{s}");
        assert_eq!(s["hardware_id_from"], "firmware.hardware_id", "{s}");
        assert!(
            text.stdout
                .contains(&format!("hardware:   {HW} (from firmware.hardware_id")),
            "{}",
            text.stdout
        );
    }

    // Reboot into the trial. Without a daemon the health check fails: no mark-good.
    assert_eq!(b.reboot(), Slot::B);
    let s = b.status();
    assert_eq!(s["booted"], "B");
    assert_eq!(s["trial"], true);
    let out = b.duli(&["mark-good", "--health-check", "--timeout", "2"], false);
    assert_eq!(out.code(), Some(4), "{}", out.combined());
    assert!(out.stdout.contains("FAIL"), "{}", out.stdout);
    assert!(out.stdout.contains("daemon"), "{}", out.stdout);
    assert_eq!(b.status()["active"], "A");

    // With the daemon up the check passes and the slot is committed; the audit records go
    // through the daemon's control socket.
    let mut daemon = b
        .env()
        .into_iter()
        .filter(|(k, _)| k.starts_with("DULI_FIRMWARE"))
        .fold(
            Daemon::builder().data_dir(&b.data_dir()),
            |builder, (k, v)| builder.env(&k, &v),
        )
        .start();
    // The health check passes, but slot B still runs firmware 0.1.0 (this binary), not the
    // 0.2.0 installed into it: not committed.
    let out = b.duli(&["mark-good", "--health-check", "--timeout", "30"], false);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(
        out.stderr
            .contains("armed for firmware 0.2.0 but runs firmware 0.1.0"),
        "{}",
        out.stderr
    );
    assert_eq!(b.status()["active"], "A");
    assert_eq!(b.status()["b_version"], "0.2.0");
    // Running the installed firmware, it is committed.
    let out = b.duli_with(
        &["mark-good", "--health-check", "--timeout", "30"],
        false,
        &[("DULI_FIRMWARE_DEV_VERSION", "0.2.0")],
    );
    out.assert_success("firmware mark-good --health-check");
    assert!(out.stdout.contains("PASS   daemon"), "{}", out.stdout);
    assert!(out.stdout.contains("committed"), "{}", out.stdout);
    let s = b.status();
    assert_eq!(
        (s["active"].clone(), s["target"].clone()),
        ("B".into(), "B".into())
    );
    assert_eq!(s["b_good"], true);
    assert_eq!(s["trial"], false);

    // A downgrade below the running version is refused.
    let old = b.sign("v009", "rootfs", "0.0.9", "0.0.1", &pattern(1000, 3));
    let out = b.duli(&["install", old.to_str().unwrap()], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());

    // Model packs go to the data partition; an older pack is refused afterwards.
    let pack = pack_archive("chest-a", 50_000, 9);
    let pack_bundle = b.sign("pack", "model-pack", "1.2.0", "0.1.0", &pack);
    let out = b.duli(&["install", pack_bundle.to_str().unwrap()], true);
    out.assert_success("firmware install (model pack)");
    assert!(
        fs::read(b.path("data/models/model.pack")).unwrap() == fs::read(&pack_bundle).unwrap(),
        "the installed pack is not the signed bundle"
    );
    let older = b.sign(
        "pack-old",
        "model-pack",
        "1.1.0",
        "0.1.0",
        &pack_archive("chest-a", 10, 4),
    );
    let out = b.duli(&["install", older.to_str().unwrap()], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(
        fs::read(b.path("data/models/model.pack")).unwrap() == fs::read(&pack_bundle).unwrap(),
        "the installed pack is not the signed bundle"
    );
    // The floor is root's record, not the manifest beside the pack: whoever runs as the
    // service user (who owns that folder) deletes or rewrites the manifest, and the older
    // pack is still refused.
    let floor = b.path("etc/firmware-state/model-packs.json");
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&floor).unwrap()).unwrap();
    assert_eq!(record["packs"]["model"], "1.2.0", "{record}");
    let models = b.path("etc/firmware-state/model-packs.models.json");
    let recorded: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&models).unwrap()).unwrap();
    assert_eq!(recorded["models"]["model"], "chest-a", "{recorded}");
    assert_eq!(b.status()["model_pack_models"]["model"], "chest-a");
    assert_eq!(b.status()["model_pack_floor"]["model"], "1.2.0");
    let sidecar = b.path("data/models/model.pack.manifest.json");
    fs::remove_file(&sidecar).unwrap();
    let out = b.duli(&["install", older.to_str().unwrap()], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(
        out.stderr.contains("older than the installed 1.2.0"),
        "{}",
        out.stderr
    );
    assert!(
        fs::read(b.path("data/models/model.pack")).unwrap() == fs::read(&pack_bundle).unwrap(),
        "the installed pack is not the signed bundle"
    );
    // A damaged record stops model-pack installs with a clear error; nothing is written.
    fs::write(&floor, b"{\"format\": 1, \"packs\": {\"model\": 7}}").unwrap();
    let out = b.duli(&["install", older.to_str().unwrap()], true);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(
        out.stderr.contains("model-pack version record"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("remove it"), "{}", out.stderr);
    assert!(
        fs::read(b.path("data/models/model.pack")).unwrap() == fs::read(&pack_bundle).unwrap(),
        "the installed pack is not the signed bundle"
    );
    assert!(b.status()["model_pack_floor"]["error"]
        .as_str()
        .unwrap()
        .contains("not valid"));
    // Removed by root, the floor starts again from the manifest beside the pack (here
    // gone, so from nothing) and rises with the next install.
    fs::remove_file(&floor).unwrap();
    let newer = b.sign("pack-new", "model-pack", "1.3.0", "0.1.0", &pack);
    b.duli(&["install", newer.to_str().unwrap()], true)
        .assert_success("firmware install (newer model pack)");
    assert_eq!(b.status()["model_pack_floor"]["model"], "1.3.0");

    // A signed pack of another model under the same name (as whoever runs as the service
    // user could stage): refused, the pack and the floor as they were. A technician
    // replaces the model on purpose, and its own version line starts.
    let other = b.sign(
        "pack-other",
        "model-pack",
        "0.5.0",
        "0.1.0",
        &pack_archive("chest-b", 3_000, 6),
    );
    let out = b.duli(&["install", other.to_str().unwrap()], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(
        out.stderr.contains("holds model \"chest-b\"") && out.stderr.contains("--replace-model"),
        "{}",
        out.stderr
    );
    assert!(
        fs::read(b.path("data/models/model.pack")).unwrap() == fs::read(&newer).unwrap(),
        "the pack of the other model was installed"
    );
    assert_eq!(b.status()["model_pack_floor"]["model"], "1.3.0");
    let out = b.duli(&["install", "--staged", "--replace-model"], true);
    assert!(!out.success(), "{}", out.combined());
    b.duli(
        &["install", "--replace-model", other.to_str().unwrap()],
        true,
    )
    .assert_success("firmware install --replace-model");
    assert!(fs::read(b.path("data/models/model.pack")).unwrap() == fs::read(&other).unwrap());
    let s = b.status();
    assert_eq!(s["model_pack_floor"]["model"], "0.5.0");
    assert_eq!(s["model_pack_models"]["model"], "chest-b");
    // The first model's packs are now the other model.
    let out = b.duli(&["install", newer.to_str().unwrap()], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    // A record kept before models were (versions only): the model is learned from the
    // pack installed under the name, so another model is still refused; replacing it
    // starts its version line again even below the recorded floor.
    fs::remove_file(b.path("etc/firmware-state/model-packs.models.json")).unwrap();
    fs::write(&floor, br#"{"format": 1, "packs": {"model": "0.5.0"}}"#).unwrap();
    let third = b.sign(
        "pack-third",
        "model-pack",
        "0.2.0",
        "0.1.0",
        &pack_archive("chest-c", 2_000, 8),
    );
    let out = b.duli(&["install", third.to_str().unwrap()], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(
        out.stderr.contains("holds model \"chest-b\""),
        "{}",
        out.stderr
    );
    b.duli(
        &["install", "--replace-model", third.to_str().unwrap()],
        true,
    )
    .assert_success("firmware install --replace-model below the old floor");
    let s = b.status();
    assert_eq!(s["model_pack_floor"]["model"], "0.2.0");
    assert_eq!(s["model_pack_models"]["model"], "chest-c");
    // A payload that is no pack's archive is refused before anything is written, and the
    // refusal quotes none of its bytes.
    let no_model = b.sign(
        "pack-raw",
        "model-pack",
        "0.6.0",
        "0.1.0",
        &pattern(1000, 2),
    );
    let out = b.duli(&["install", no_model.to_str().unwrap()], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(
        out.stderr.contains("its archive cannot be read")
            && out
                .stderr
                .lines()
                .all(|l| l.chars().all(|c| !c.is_control())),
        "{}",
        out.stderr
    );

    // Rollback: slot A is still flagged good, so it is armed for a trial boot.
    let out = b.duli(&["rollback"], false);
    out.assert_success("firmware rollback");
    assert!(out.stdout.contains("reboot to apply"), "{}", out.stdout);
    let s = b.status();
    assert_eq!(s["active"], "B");
    assert_eq!(s["target"], "A");
    assert_eq!(b.reboot(), Slot::A);
    let out = b.duli(&["mark-good"], false);
    out.assert_success("firmware mark-good (after rollback)");
    assert_eq!(b.status()["active"], "A");

    // The audit trail holds every action, successes and refusals, in one intact chain.
    daemon.terminate(Duration::from_secs(30));
    let records = software_records(&b.data_dir());
    let details: Vec<String> = records
        .iter()
        .map(|r| format!("{} {}", r.success, r.detail))
        .collect();
    let has = |ok: bool, text: &str| {
        records
            .iter()
            .any(|r| r.success == ok && r.detail.contains(text))
    };
    assert!(has(true, "keygen release"), "{details:#?}");
    assert!(has(true, "sign rootfs 0.2.0"), "{details:#?}");
    assert!(has(false, "verify refused"), "{details:#?}");
    assert!(has(false, "install refused"), "{details:#?}");
    assert!(
        has(true, "install rootfs 0.2.0 into slot B"),
        "{details:#?}"
    );
    assert!(has(false, "health check failed"), "{details:#?}");
    assert!(has(false, "runs firmware 0.1.0"), "{details:#?}");
    assert!(has(true, "committed slot B"), "{details:#?}");
    assert!(has(true, "install model pack 1.2.0"), "{details:#?}");
    assert!(has(true, "rollback"), "{details:#?}");
    assert!(records.iter().all(|r| r.actor.starts_with("cli:")));
}

/// The security floor through the real command line: a root filesystem signed with
/// `--security-version 2` and committed raises the floor to 2 (`status` shows it); a
/// newer release of security version 1 is then refused (exit 3, slot untouched), and so is
/// a rollback to the factory slot below the floor; the boot variables stay as they were.
#[test]
fn a_committed_security_fix_cannot_be_undone() {
    let b = Bench::new();
    fs::create_dir_all(b.data_dir()).unwrap();
    b.keygen("release");
    let fix = b.sign_extra(
        "release",
        "v020-fix",
        "rootfs",
        "0.2.0",
        "0.1.0",
        &pattern(50_000, 3),
        &["--security-version", "2"],
    );
    let out = b.duli(&["verify", fix.to_str().unwrap()], true);
    out.assert_success("verify");
    assert!(
        out.stdout.contains("\"security_version\": 2"),
        "{}",
        out.stdout
    );
    b.duli(&["install", fix.to_str().unwrap()], true)
        .assert_success("install the fix");
    assert_eq!(
        (
            b.status()["b_security"].clone(),
            b.status()["security_floor"].clone()
        ),
        (serde_json::json!(2), serde_json::json!(0))
    );
    assert_eq!(b.reboot(), Slot::B);
    b.duli_with(
        &["mark-good"],
        false,
        &[("DULI_FIRMWARE_DEV_VERSION", "0.2.0")],
    )
    .assert_success("mark-good on the fix");
    let committed = b.status();
    assert_eq!(committed["security_floor"], 2, "{committed}");
    let out = b.duli_with(
        &["status"],
        false,
        &[("DULI_FIRMWARE_DEV_VERSION", "0.2.0")],
    );
    assert!(out.stdout.contains("floor=2"), "{}", out.stdout);

    let unfixed = b.sign_extra(
        "release",
        "v030-unfixed",
        "rootfs",
        "0.3.0",
        "0.1.0",
        &pattern(50_000, 4),
        &["--security-version", "1"],
    );
    let slot_a = fs::read(b.path("slot-a.img")).unwrap();
    let out = b.duli_with(
        &["install", unfixed.to_str().unwrap()],
        true,
        &[("DULI_FIRMWARE_DEV_VERSION", "0.2.0")],
    );
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(out.stderr.contains("security floor 2"), "{}", out.stderr);
    assert_eq!(fs::read(b.path("slot-a.img")).unwrap(), slot_a);
    let out = b.duli_with(
        &["rollback"],
        false,
        &[("DULI_FIRMWARE_DEV_VERSION", "0.2.0")],
    );
    assert!(!out.success(), "{}", out.combined());
    assert!(
        out.combined().contains("security floor 2"),
        "{}",
        out.combined()
    );
    assert_eq!(b.status(), committed);
}

/// An endorsed key signs only what its endorsement's scopes name: a hospital group's
/// model-pack key (format 1, or format 2 scoped `model-pack`) cannot get a root filesystem
/// installed; a key endorsed for `rootfs` can; `verify` prints the signer's scopes.
#[test]
fn endorsed_model_pack_key_cannot_install_a_root_filesystem() {
    use duli_firmware::endorsement::Endorsement;
    use duli_firmware::scope::Scope;
    let b = Bench::new();
    fs::create_dir_all(b.data_dir()).unwrap();
    fs::create_dir_all(b.path("keys")).unwrap();
    fs::create_dir_all(b.path("endorsed")).unwrap();
    for name in ["release", "site"] {
        b.keygen(name);
    }
    let root = duli_firmware::SigningKey::read(&b.path("keys/release.pk8")).unwrap();
    let site = duli_firmware::PublicKey::read(&b.path("keys/site.pub")).unwrap();
    let endorse = |e: Endorsement| {
        fs::write(b.path("endorsed/site.endorsement.json"), e.to_json()).unwrap();
    };
    let payload = pattern(20_000, 5);
    let rootfs = b.sign_extra("site", "evil-os", "rootfs", "9.0.0", "0.0.1", &payload, &[]);
    let pack = b.sign_extra(
        "site",
        "site-pack",
        "model-pack",
        "2.0.0",
        "0.0.1",
        &payload,
        &[],
    );
    let slot_b = fs::read(b.path("slot-b.img")).unwrap();

    for (what, e) in [
        (
            "format 1",
            Endorsement::create_format1(&root, &site, "site model packs"),
        ),
        (
            "format 2, model-pack",
            Endorsement::create(&root, &site, "site model packs"),
        ),
    ] {
        endorse(e);
        let out = b.duli(&["verify", rootfs.to_str().unwrap()], true);
        assert_eq!(out.code(), Some(3), "{what}: {}", out.combined());
        assert!(
            out.stderr.contains("REFUSED")
                && out.stderr.contains("only as endorsed key (model-pack)"),
            "{what}: {}",
            out.stderr
        );
        let out = b.duli(&["install", rootfs.to_str().unwrap()], true);
        assert_eq!(out.code(), Some(3), "{what}: {}", out.combined());
        assert_eq!(fs::read(b.path("slot-b.img")).unwrap(), slot_b, "{what}");
        assert_eq!(b.status()["update_pending"], false, "{what}");
        // Its model packs still verify, and verify says what the key may sign.
        let out = b.duli(&["verify", pack.to_str().unwrap()], true);
        out.assert_success("verify site pack");
        assert!(
            out.stdout.contains("signer scopes: model-pack"),
            "{what}: {}",
            out.stdout
        );
    }

    // An endorsement whose time is over no longer lets the key's packs in; a current one
    // does.
    endorse(Endorsement::create_expiring(
        &root,
        &site,
        "site model packs 2020",
        &[Scope::ModelPack],
        1_600_000_000,
    ));
    let out = b.duli(&["verify", pack.to_str().unwrap()], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(out.combined().contains("expired"), "{}", out.combined());
    let out = b.duli(&["install", pack.to_str().unwrap()], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    endorse(Endorsement::create_expiring(
        &root,
        &site,
        "site model packs",
        &[Scope::ModelPack],
        4_000_000_000,
    ));
    let out = b.duli(&["verify", pack.to_str().unwrap()], true);
    out.assert_success("verify site pack with a current endorsement");

    // A key endorsed for root filesystems may sign one.
    endorse(Endorsement::create_scoped(
        &root,
        &site,
        "site images",
        &[Scope::Rootfs],
    ));
    let out = b.duli(&["verify", rootfs.to_str().unwrap()], true);
    out.assert_success("verify rootfs with a rootfs-scoped key");
    assert!(
        out.stdout.contains("signer scopes: rootfs"),
        "{}",
        out.stdout
    );
    let out = b.duli(&["verify", pack.to_str().unwrap()], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    // A root key signs anything.
    let own = b.sign("own", "rootfs", "0.3.0", "0.0.1", &pattern(1000, 6));
    let out = b.duli(&["verify", own.to_str().unwrap()], true);
    out.assert_success("verify root-signed rootfs");
    assert!(
        out.stdout.contains("signer scopes: root (every scope)"),
        "{}",
        out.stdout
    );
}

/// Root installs model packs into a folder the service user owns: links planted there (at
/// the temporary name, or at the pack's own name, pointing at a slot or the boot
/// variables) are replaced, never followed; a folder that is itself a link is refused.
#[test]
fn root_install_of_a_model_pack_never_follows_a_planted_link() {
    let b = Bench::new();
    fs::create_dir_all(b.path("data/models")).unwrap();
    b.keygen("release");
    let slot_a = fs::read(b.path("slot-a.img")).unwrap();
    fs::write(b.path("bootenv-copy"), b"duli_slot=A\n").unwrap();
    std::os::unix::fs::symlink(
        b.path("slot-a.img"),
        b.path("data/models/.model.pack.partial"),
    )
    .unwrap();
    std::os::unix::fs::symlink(b.path("bootenv-copy"), b.path("data/models/model.pack")).unwrap();
    std::os::unix::fs::symlink(
        b.path("bootenv-copy"),
        b.path("data/models/model.pack.manifest.json"),
    )
    .unwrap();
    let pack = pack_archive("chest", 40_000, 11);
    let bundle = b.sign("pack", "model-pack", "1.0.0", "0.0.1", &pack);
    let out = b.duli(&["install", bundle.to_str().unwrap()], true);
    out.assert_success("firmware install (model pack)");
    assert_eq!(
        fs::read(b.path("slot-a.img")).unwrap(),
        slot_a,
        "slot written"
    );
    assert_eq!(fs::read(b.path("bootenv-copy")).unwrap(), b"duli_slot=A\n");
    let installed = b.path("data/models/model.pack");
    assert!(fs::symlink_metadata(&installed)
        .unwrap()
        .file_type()
        .is_file());
    assert!(
        fs::read(&installed).unwrap() == fs::read(&bundle).unwrap(),
        "the installed pack is not the signed bundle"
    );
    assert!(!b.path("data/models/.model.pack.partial").exists());
    let sidecar = b.path("data/models/model.pack.manifest.json");
    assert!(fs::symlink_metadata(&sidecar)
        .unwrap()
        .file_type()
        .is_file());
    assert!(fs::read_to_string(&sidecar).unwrap().contains("1.0.0"));

    // A staged bundle that is a link (to a slot here; a FIFO or a secret elsewhere) is
    // refused and moved aside, never read.
    std::os::unix::fs::symlink(b.path("slot-a.img"), b.path("data/staged.duli")).unwrap();
    let out = b.duli(&["install", "--staged"], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
    assert!(fs::symlink_metadata(b.path("data/staged.duli")).is_err());
    assert_eq!(fs::read(b.path("slot-a.img")).unwrap(), slot_a);
    // A FIFO (which a blocking open or read would hang on): refused at once.
    nix::unistd::mkfifo(
        &b.path("data/staged.duli"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = b.duli(&["install", "--staged"], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(fs::symlink_metadata(b.path("data/staged.duli")).is_err());

    // The folder itself replaced by a link to somewhere else: refused, nothing written.
    fs::rename(b.path("data/models"), b.path("elsewhere")).unwrap();
    std::os::unix::fs::symlink(b.path("elsewhere"), b.path("data/models")).unwrap();
    let newer = b.sign(
        "pack2",
        "model-pack",
        "1.1.0",
        "0.0.1",
        &pack_archive("chest", 1000, 12),
    );
    let out = b.duli(&["install", newer.to_str().unwrap()], true);
    assert!(!out.success(), "{}", out.combined());
    assert!(
        fs::read(b.path("elsewhere/model.pack")).unwrap() == fs::read(&bundle).unwrap(),
        "the installed pack is not the signed bundle"
    );
}

/// Install, rollback and mark-good take the firmware lock (next to the boot variables): with
/// another holder, an install and a rollback fail at once and change nothing.
#[test]
fn a_second_install_fails_at_once_while_the_lock_is_held() {
    let b = Bench::new();
    fs::create_dir_all(b.data_dir()).unwrap();
    b.keygen("release");
    let bundle = b.sign("v020", "rootfs", "0.2.0", "0.1.0", &pattern(100_000, 3));
    let before = b.status();
    let slot_b = fs::read(b.path("slot-b.img")).unwrap();
    let held = duli_firmware::lock::UpdateLock::acquire(&b.path("duli-firmware.lock")).unwrap();
    let started = std::time::Instant::now();
    let out = b.duli(&["install", bundle.to_str().unwrap()], true);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(
        out.stderr
            .contains("another install, mark-good or rollback is running"),
        "{}",
        out.stderr
    );
    let out = b.duli(&["rollback"], false);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(out.stderr.contains("another install"), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(b.status(), before);
    assert_eq!(fs::read(b.path("slot-b.img")).unwrap(), slot_b);

    drop(held);
    b.duli(&["install", bundle.to_str().unwrap()], true)
        .assert_success("install once the lock is free");
    assert_eq!(b.status()["target"], "B");
}

/// Only the staged bundle the install opened is consumed: one the daemon staged (by atomic
/// rename) while the install ran is left for the next run, after a success and after a
/// refusal alike. The swap happens while the install reports to the audit trail (a stand-in
/// control socket holds it there).
#[test]
fn a_bundle_staged_during_the_install_is_left_in_place() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;
    let b = Bench::new();
    fs::create_dir_all(b.data_dir()).unwrap();
    b.keygen("release");
    let good = b.sign("v020", "rootfs", "0.2.0", "0.1.0", &pattern(100_000, 5));
    let tampered = b.path("tampered.duli");
    flip_bit(&good, &tampered, 1000);
    let next = b.sign("v030", "rootfs", "0.3.0", "0.1.0", &pattern(1_000, 6));
    let staged = b.path("data/staged.duli");

    for (first, what) in [(&good, "installed"), (&tampered, "refused")] {
        fs::copy(first, &staged).unwrap();
        let socket = duli::control::socket_path(&b.data_dir());
        let _ = fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let swap = {
            let (staged, next, incoming) = (staged.clone(), next.clone(), b.path("incoming"));
            std::thread::spawn(move || {
                let (conn, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&conn).read_line(&mut line).unwrap();
                // The daemon's staging: a new file renamed over the staged name.
                fs::copy(&next, &incoming).unwrap();
                fs::rename(&incoming, &staged).unwrap();
                line
            })
        };
        let out = b.duli(&["install", "--staged"], true);
        let audited = swap.join().unwrap();
        assert!(audited.contains("install"), "{what}: {audited}");
        assert!(
            out.stderr.contains("replaced during the install"),
            "{what}: {}",
            out.combined()
        );
        assert_eq!(
            fs::read(&staged).unwrap(),
            fs::read(&next).unwrap(),
            "{what}: the newly staged bundle was consumed"
        );
        assert!(!b.path("data/staged.duli.rejected").exists(), "{what}");
        fs::remove_file(duli::control::socket_path(&b.data_dir())).unwrap();
    }
    assert_eq!(b.status()["target"], "B");
}

/// Without `firmware.slot_files`, a slot path that does not exist (a mistyped path, a
/// missing by-partlabel link) fails the install: no file is created, no trial armed.
#[test]
fn a_missing_slot_device_fails_the_install() {
    let b = Bench::new();
    fs::create_dir_all(b.data_dir()).unwrap();
    fs::create_dir_all(b.path("by-partlabel")).unwrap();
    b.keygen("release");
    let bundle = b.sign("v020", "rootfs", "0.2.0", "0.1.0", &pattern(50_000, 7));
    let before = b.status();
    let typo = b.path("by-partlabel/rootfs-b");
    let out = b.duli_with(
        &["install", bundle.to_str().unwrap()],
        true,
        &[
            ("DULI_FIRMWARE__SLOT_FILES", "false"),
            ("DULI_FIRMWARE__SLOT_B", typo.to_str().unwrap()),
        ],
    );
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    assert!(
        !typo.exists(),
        "a regular file was created at the slot path"
    );
    assert_eq!(b.status(), before);
}

/// The mark-good wrapper (systemd/duli-mark-good.sh) over an empty GRUB environment block
/// (a write cut short): duli says how to repair it, and the wrapper does not take the
/// missing `duli_active` for "slot A committed", so a boot of slot B is not rebooted into a
/// slot A nobody vouches for.
#[test]
fn mark_good_wrapper_over_a_damaged_grub_environment_does_not_reboot() {
    let b = Bench::new();
    fs::create_dir_all(b.data_dir()).unwrap();
    let grubenv = b.path("grubenv");
    fs::write(&grubenv, b"").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/duli-mark-good.sh");
    // The last round: a command line naming the slot twice (a stale duli.slot= saved with
    // the boot loader's bootargs) leaves the booted slot unknown, never "the last one".
    for slot in [Some(Slot::A), Some(Slot::B), None] {
        match slot {
            Some(slot) => b.boot_into(slot),
            None => fs::write(
                b.path("cmdline"),
                "duli.slot=A root=/dev/sda2 duli.slot=B\n",
            )
            .unwrap(),
        }
        let slot = slot.map_or("twice".to_string(), |s| s.to_string());
        let mut cmd = Command::new("sh");
        for (key, _) in std::env::vars() {
            if key.starts_with("DULI_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg(&script)
            .arg("--config")
            .arg(box_command_config(&["firmware"], &b.path("")).unwrap())
            .envs(b.env())
            .env("DULI_FIRMWARE__BOOTLOADER", "grub")
            .env("DULI_FIRMWARE__GRUBENV", &grubenv)
            .env("DULI", Daemon::binary())
            .env("DULI_CMDLINE", b.path("cmdline"))
            .env("DULI_GRUBENV", &grubenv);
        let out = run(&mut cmd, Duration::from_secs(120));
        assert_eq!(out.code(), Some(75), "slot {slot}: {}", out.combined());
        if slot == "twice" {
            assert!(
                out.stderr.contains("names the booted slot 2 times")
                    && out.stderr.contains("booted slot '?'"),
                "{}",
                out.stderr
            );
            continue;
        }
        assert!(
            out.stderr.contains("is damaged") && out.stderr.contains("grub-editenv"),
            "slot {slot}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("GRUB environment block")
                && !out.stderr.contains("on the committed slot"),
            "slot {slot}: {}",
            out.stderr
        );
    }
    assert_eq!(fs::read(&grubenv).unwrap(), b"");
}

/// The shipped model's folder (manifest, network, weights) as a model pack's archive, or
/// `None` (a skip) before `make models` built the network.
fn shipped_model_archive() -> Option<Vec<u8>> {
    let dir = repo_root().join("models/pneumonia-xception");
    let names = [
        "model.toml",
        "pneumonia_xception_fp16.xml",
        "pneumonia_xception_fp16.bin",
    ];
    if !names.iter().all(|n| dir.join(n).is_file()) {
        skip("the shipped model is not built (make models)");
        return None;
    }
    let mut archive = tar::Builder::new(Vec::new());
    for name in names {
        archive.append_path_with_name(dir.join(name), name).unwrap();
    }
    Some(archive.into_inner().unwrap())
}

/// `/healthz` once its inference status is no longer `starting`.
fn settled_health(d: &Daemon) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let r = https_get(d.console_addr(), "/healthz").expect("/healthz");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        if v["inference"] != "starting" || std::time::Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A model put in service as a signed pack: the shipped model's folder, signed and
/// installed with `duli firmware install`, runs in `duli run` with `inference.model_pack`
/// (verified and unpacked under the data folder); after one byte of the installed pack
/// changes on disk, the next start refuses it and says why instead of running it.
#[test]
fn an_installed_model_pack_runs_and_an_altered_one_does_not() {
    let Some(archive) = shipped_model_archive() else {
        return;
    };
    let b = Bench::new();
    fs::create_dir_all(b.path("data/models")).unwrap();
    b.keygen("release");
    let bundle = b.sign("pack", "model-pack", "3.0.0", "0.0.1", &archive);
    b.duli(&["install", bundle.to_str().unwrap()], true)
        .assert_success("firmware install (model pack)");
    let mut builder = Daemon::builder()
        .data_dir(&b.path("daemon-data"))
        .env(
            "DULI_FIRMWARE_DEV_ROOT",
            b.path("keys/release.pub").to_str().unwrap(),
        )
        .env("DULI_INFERENCE__MODEL_PACK", "model");
    for (k, v) in b.env() {
        if k != "DULI_DEVICE__DATA_DIR" && k != "DULI_INFERENCE__MODEL" {
            builder = builder.env(&k, &v);
        }
    }
    let mut d = builder.start();
    let health = settled_health(&d);
    assert_eq!(health["status"], "ok", "{health}\n{}", d.log());
    assert_eq!(health["inference"], "ready", "{health}");
    assert!(
        d.log()
            .contains("model pack model 3.0.0 verified and put in service"),
        "{}",
        d.log()
    );
    let unpacked = b.path("daemon-data/model-in-service/model/model.toml");
    assert_eq!(
        fs::read(&unpacked).unwrap(),
        fs::read(repo_root().join("models/pneumonia-xception/model.toml")).unwrap()
    );
    d.terminate(Duration::from_secs(20));

    // One byte of the weights changed on disk: refused at the next start, the daemon
    // waits for its model (received studies are kept) and says why.
    let pack = b.path("data/models/model.pack");
    let mut bytes = fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    fs::write(&pack, &bytes).unwrap();
    d.restart();
    let health = settled_health(&d);
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["inference"], "waiting for model", "{health}");
    // The reason is in the journal (and on the system page), not on the open endpoint.
    let log = d.log();
    let why = log
        .lines()
        .find(|l| l.contains("inference is waiting for its model"))
        .unwrap_or_default();
    assert!(why.contains("model pack"), "{log}");
    assert!(why.contains("SHA-256") || why.contains("hash"), "{log}");
}

/// Root installs a staged bundle from its own unnamed copy, and copies no more than the
/// bundle declares: a signed bundle with a sparse terabyte appended is refused for its
/// trailing bytes at once (the copy stops one byte past the payload), and the same bundle
/// without them installs.
#[test]
fn a_staged_bundle_is_copied_only_as_far_as_it_declares() {
    let b = Bench::new();
    fs::create_dir_all(b.data_dir()).unwrap();
    b.keygen("release");
    let good = b.sign("v020", "rootfs", "0.2.0", "0.1.0", &pattern(100_000, 9));
    let staged = b.path("data/staged.duli");
    fs::copy(&good, &staged).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&staged).unwrap();
    f.set_len(fs::metadata(&good).unwrap().len() + (1u64 << 40))
        .unwrap();
    drop(f);
    let started = std::time::Instant::now();
    let out = b.duli(&["install", "--staged"], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(
        out.stderr.contains("bytes after its 100000-byte payload"),
        "{}",
        out.combined()
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(b.status()["target"], "A", "nothing armed");
    fs::copy(&good, &staged).unwrap();
    let out = b.duli(&["install", "--staged"], true);
    assert_eq!(out.code(), Some(0), "{}", out.combined());
    assert_eq!(b.status()["target"], "B");
}

/// A model pack reaches the box unattended (staged by the daemon, installed by root's
/// update service through a private copy) or from a technician's link on a USB stick: both
/// install, and the staged file is consumed.
#[test]
fn a_staged_model_pack_and_one_named_through_a_link_install() {
    let b = Bench::new();
    fs::create_dir_all(b.data_dir()).unwrap();
    b.keygen("release");
    let pack = b.sign(
        "pack",
        "model-pack",
        "1.0.0",
        "0.1.0",
        &pack_archive("chest-a", 20_000, 5),
    );
    fs::copy(&pack, b.path("data/staged.duli")).unwrap();
    let out = b.duli(&["install", "--staged"], true);
    out.assert_success("firmware install --staged (model pack)");
    assert!(fs::read(b.path("data/models/model.pack")).unwrap() == fs::read(&pack).unwrap());
    assert!(!b.path("data/staged.duli").exists());
    assert!(!b.path("data/staged.duli.rejected").exists());
    assert_eq!(b.status()["model_pack_floor"]["model"], "1.0.0");

    let newer = b.sign(
        "pack-2",
        "model-pack",
        "1.1.0",
        "0.1.0",
        &pack_archive("chest-a", 20_000, 6),
    );
    let link = b.path("stick-pack.duli");
    std::os::unix::fs::symlink(&newer, &link).unwrap();
    let out = b.duli(&["install", link.to_str().unwrap()], true);
    out.assert_success("firmware install LINK (model pack)");
    assert!(fs::read(b.path("data/models/model.pack")).unwrap() == fs::read(&newer).unwrap());
    assert_eq!(b.status()["model_pack_floor"]["model"], "1.1.0");
}

/// A staged bundle whose manifest is not signed by a trusted key cannot make root copy
/// what that manifest declares: here a terabyte (a sparse file the service user could
/// stage), refused at once after a copy of its header.
#[test]
fn an_unsigned_size_does_not_bound_the_staged_copy() {
    use duli_firmware::bundle::RawHeader;
    let b = Bench::new();
    fs::create_dir_all(b.data_dir()).unwrap();
    b.keygen("release");
    let good = b.sign("v020", "rootfs", "0.2.0", "0.1.0", &pattern(100_000, 9));
    let bytes = fs::read(&good).unwrap();
    let mut header = RawHeader::decode(&mut bytes.as_slice(), &good).unwrap();
    let payload = &bytes[header.payload_offset() as usize..];
    let manifest = String::from_utf8(header.manifest.clone()).unwrap();
    assert!(manifest.contains("100000"), "{manifest}");
    header.manifest = manifest.replacen("100000", "1099511627776", 1).into_bytes();
    let mut forged = header.encode();
    forged.extend_from_slice(payload);
    let staged = b.path("data/staged.duli");
    fs::write(&staged, &forged).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&staged).unwrap();
    f.set_len(forged.len() as u64 + (1u64 << 40)).unwrap();
    drop(f);
    let started = std::time::Instant::now();
    let out = b.duli(&["install", "--staged"], true);
    assert_eq!(out.code(), Some(3), "{}", out.combined());
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(b.path("data/staged.duli.rejected").exists());
    assert_eq!(b.status()["target"], "A", "nothing armed");
}

/// The unattended install of a staged bundle waits for an operation in progress (here a
/// lock held for two seconds, as mark-good at boot holds it) instead of throwing the
/// bundle away, then installs it.
#[test]
fn a_staged_install_waits_for_the_lock_and_keeps_the_bundle() {
    let b = Bench::new();
    fs::create_dir_all(b.data_dir()).unwrap();
    b.keygen("release");
    let bundle = b.sign("v020", "rootfs", "0.2.0", "0.1.0", &pattern(100_000, 11));
    fs::copy(&bundle, b.path("data/staged.duli")).unwrap();
    let held = duli_firmware::lock::UpdateLock::acquire(&b.path("duli-firmware.lock")).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        drop(held);
    });
    let started = std::time::Instant::now();
    let out = b.duli(&["install", "--staged"], true);
    release.join().unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.combined());
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(b.status()["target"], "B");
    assert!(
        !b.path("data/staged.duli").exists(),
        "consumed once installed"
    );
    assert!(!b.path("data/staged.duli.rejected").exists());
}
