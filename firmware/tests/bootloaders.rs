//! The same scenarios against the real bootloader tools, on files: `grub-editenv`
//! (grub-common) and `fw_printenv`/`fw_setenv -c` (libubootenv-tool) with a redundant
//! environment (two copies) made by `mkenvimage -r` (u-boot-tools). Skipped with a message
//! when a tool is absent.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use duli_firmware::bootctl::{BootControl, BootError, BootState, GrubEnv, Slot, UBootEnv};
use duli_firmware::Version;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn skip_without(tools: &[&str]) -> bool {
    let missing: Vec<_> = tools.iter().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return false;
    }
    let reason =
        format!("{missing:?} not installed (apt: grub-common, libubootenv-tool, u-boot-tools)");
    // `make test` installs them: there a missing tool fails the test instead.
    if matches!(
        std::env::var("DULI_REQUIRE_PEERS").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    ) {
        panic!("{reason}: DULI_REQUIRE_PEERS is set (make test); run scripts/setup-test-env.sh");
    }
    eprintln!("SKIP: {reason}");
    if let Some(path) = std::env::var_os("DULI_SKIP_LOG") {
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, format!("{test}: {reason}\n").as_bytes())
            });
    }
    true
}

fn grub_in(dir: &Path) -> GrubEnv {
    let env = GrubEnv::new(dir.join("grubenv"));
    if !env.file().exists() {
        env.create().unwrap();
    }
    env
}

/// A redundant U-Boot environment: two copies, each an image made by `mkenvimage -r`.
fn uboot_in(dir: &Path) -> UBootEnv {
    let config = dir.join("fw_env.config");
    if !config.exists() {
        let defaults = dir.join("defaults.txt");
        std::fs::write(&defaults, "bootdelay=2\nbootcmd=run duli_boot\n").unwrap();
        let mut lines = String::new();
        for copy in ["uboot.env", "uboot-redund.env"] {
            let image = dir.join(copy);
            let ok = Command::new("mkenvimage")
                .args(["-r", "-s", "0x4000", "-o"])
                .arg(&image)
                .arg(&defaults)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mkenvimage failed");
            lines.push_str(&format!("{} 0x0000 0x4000\n", image.display()));
        }
        std::fs::write(&config, lines).unwrap();
    }
    UBootEnv::new(config)
}

/// What `grub-editenv` itself lists of the block in `dir`.
fn grub_list(dir: &Path) -> String {
    let out = Command::new("grub-editenv")
        .arg(dir.join("grubenv"))
        .arg("list")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn grub_full_cycle() {
    if skip_without(&["grub-editenv"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    full_cycle(&|| grub_in(dir.path()));
    // Variables are real grubenv entries.
    let text = grub_list(dir.path());
    assert!(text.contains("duli_active=A\n"), "{text}");
    assert!(text.contains("duli_a_good=1\n"), "{text}");
}

#[test]
fn grub_security_floor() {
    if skip_without(&["grub-editenv"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    security_floor(&|| grub_in(dir.path()));
    let text = grub_list(dir.path());
    assert!(text.contains("duli_floor=2\n"), "{text}");
}

#[test]
fn grub_missing_mark_good_rolls_back() {
    if skip_without(&["grub-editenv"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    missing_mark_good_falls_back(&|| grub_in(dir.path()));
}

#[test]
fn grub_power_cut_after_each_step() {
    if skip_without(&["grub-editenv"]) {
        return;
    }
    cut_after_each_step(&grub_in);
}

#[test]
fn grub_refuses_missing_environment_block() {
    if skip_without(&["grub-editenv"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = GrubEnv::new(dir.path().join("absent"));
    assert!(matches!(env.load(), Err(BootError::Io { .. })));
    assert!(!dir.path().join("absent").exists());
}

#[test]
fn uboot_security_floor() {
    if skip_without(&["fw_printenv", "fw_setenv", "mkenvimage"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    security_floor(&|| uboot_in(dir.path()));
}

#[test]
fn uboot_full_cycle() {
    if skip_without(&["fw_printenv", "fw_setenv", "mkenvimage"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    full_cycle(&|| uboot_in(dir.path()));
    let out = Command::new("fw_printenv")
        .arg("-c")
        .arg(dir.path().join("fw_env.config"))
        .args(["-n", "duli_active"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "A");
    // Existing U-Boot variables survive.
    let out = Command::new("fw_printenv")
        .arg("-c")
        .arg(dir.path().join("fw_env.config"))
        .args(["-n", "bootcmd"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "run duli_boot"
    );
}

#[test]
fn uboot_missing_mark_good_rolls_back() {
    if skip_without(&["fw_printenv", "fw_setenv", "mkenvimage"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    missing_mark_good_falls_back(&|| uboot_in(dir.path()));
}

#[test]
fn uboot_power_cut_after_each_step() {
    if skip_without(&["fw_printenv", "fw_setenv", "mkenvimage"]) {
        return;
    }
    cut_after_each_step(&uboot_in);
}

#[test]
fn uboot_reports_tool_failure() {
    if skip_without(&["fw_printenv", "fw_setenv"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut env = UBootEnv::new(dir.path().join("no-such.config"));
    assert!(matches!(env.load(), Err(BootError::Tool { .. })));
    assert!(matches!(
        env.store(&BootState {
            target: Slot::B,
            ..BootState::FACTORY
        }),
        Err(BootError::Tool { .. })
    ));
}

#[test]
fn missing_tool_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let env = GrubEnv::with_tool("/nonexistent/grub-editenv", dir.path().join("grubenv"));
    let mut block = b"# GRUB Environment Block\n".to_vec();
    block.resize(1024, b'#');
    std::fs::write(dir.path().join("grubenv"), block).unwrap();
    assert!(matches!(env.load(), Err(BootError::ToolMissing(_))));
}

/// A trial of slot B armed over a committed slot A.
fn armed() -> BootState {
    BootState {
        target: Slot::B,
        attempts: 3,
        b_version: Some(Version::new(1, 2, 0)),
        ..BootState::FACTORY
    }
}

/// `grub-editenv FILE set` opens FILE with `O_TRUNC` before writing: killed in between (a
/// power cut), it leaves an empty file. A store whose tool dies that way must still leave a
/// block that loads, holding the old or the new variables.
#[test]
fn grub_store_through_a_tool_killed_at_its_write_leaves_a_loadable_block() {
    if skip_without(&["grub-editenv"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let real = grub_in(dir.path());
    let old = BootState {
        b_good: true,
        ..BootState::FACTORY
    };
    real.clone().store(&old).unwrap();
    // grub-editenv, except that `set` truncates the file and is then killed.
    let tool = dir.path().join("grub-editenv");
    fs::write(
        &tool,
        "#!/bin/sh\ncase \"$2\" in\n  set) : > \"$1\"; kill -9 $$ ;;\n  \
         *) exec grub-editenv \"$@\" ;;\nesac\n",
    )
    .unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    let mut env = GrubEnv::with_tool(&tool, real.file());
    let stored = env.store(&armed());
    let now = real
        .load()
        .unwrap_or_else(|e| panic!("block unloadable after the cut ({stored:?}): {e}"));
    assert!(now == old || now == armed(), "{now:?}");
    assert_eq!(fs::metadata(real.file()).unwrap().len(), 1024);
}

/// The block is written over itself in one `pwrite`: a cut that lands only the first
/// 512-byte sector, or none, leaves the old or the new variables, which both GRUB's tool and
/// this crate read; the file never changes size and other variables survive.
#[test]
fn grub_write_torn_between_sectors_leaves_old_or_new() {
    if skip_without(&["grub-editenv"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = grub_in(dir.path());
    let ok = Command::new("grub-editenv")
        .arg(env.file())
        .args(["set", "saved_entry=0"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    env.clone().store(&BootState::FACTORY).unwrap();
    let old = fs::read(env.file()).unwrap();
    env.clone().store(&armed()).unwrap();
    let new = fs::read(env.file()).unwrap();
    assert_eq!((old.len(), new.len()), (1024, 1024));
    let listed = Command::new("grub-editenv")
        .arg(env.file())
        .arg("list")
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("saved_entry=0\n"), "{listed}");
    assert!(listed.contains("duli_b_version=1.2.0\n"), "{listed}");

    for (landed, want) in [(0, BootState::FACTORY), (512, armed()), (1024, armed())] {
        let mut torn = new[..landed].to_vec();
        torn.extend_from_slice(&old[landed..]);
        fs::write(env.file(), &torn).unwrap();
        assert_eq!(env.load().unwrap(), want, "{landed} bytes landed");
    }
}

/// An empty or overwritten block is an error that says how to repair it, for reading and
/// writing alike; a write leaves it as it is.
#[test]
fn grub_damaged_block_is_an_error_that_says_what_to_do() {
    if skip_without(&["grub-editenv"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut env = grub_in(dir.path());
    for damage in [
        &b""[..],
        &[0u8; 1024][..],
        b"# GRUB Environment Block\nduli_active=B",
    ] {
        fs::write(env.file(), damage).unwrap();
        let err = env.load().unwrap_err();
        assert!(matches!(err, BootError::DamagedGrubEnv { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("grub-editenv") && msg.contains("create"),
            "{msg}"
        );
        assert!(matches!(
            env.store(&armed()),
            Err(BootError::DamagedGrubEnv { .. })
        ));
        assert_eq!(fs::read(env.file()).unwrap(), damage);
    }
    // The repair the message names.
    fs::remove_file(env.file()).unwrap();
    let env = grub_in(dir.path());
    assert_eq!(env.load().unwrap(), BootState::FACTORY);
}

/// A single-copy U-Boot environment is refused for writing: a power cut during its
/// rewrite would lose every variable.
#[test]
fn uboot_refuses_a_single_copy_environment() {
    if skip_without(&["fw_printenv", "fw_setenv", "mkenvimage"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut env = uboot_in(dir.path());
    let config = env.config().to_path_buf();
    let text = fs::read_to_string(&config).unwrap();
    let first = text.lines().next().unwrap();
    fs::write(&config, format!("# one copy only\n{first}\n")).unwrap();
    let before = fs::read(dir.path().join("uboot.env")).unwrap();
    let err = env.store(&armed()).unwrap_err();
    assert!(matches!(err, BootError::SingleUBootEnv { .. }), "{err}");
    assert!(err.to_string().contains("CONFIG_ENV_REDUNDANT"), "{err}");
    assert_eq!(fs::read(dir.path().join("uboot.env")).unwrap(), before);
    fs::write(&config, text).unwrap();
    env.store(&armed()).unwrap();
    assert_eq!(env.load().unwrap(), armed());
}
