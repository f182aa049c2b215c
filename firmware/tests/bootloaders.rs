//! The same scenarios against the real bootloader tools, on files: `grub-editenv`
//! (grub-common) and `fw_printenv`/`fw_setenv -c` (libubootenv-tool) with an environment
//! image made by `mkenvimage` (u-boot-tools). Skipped with a message when a tool is absent.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use duli_firmware::bootctl::{BootControl, BootError, BootState, GrubEnv, Slot, UBootEnv};

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

fn uboot_in(dir: &Path) -> UBootEnv {
    let image = dir.join("uboot.env");
    let config = dir.join("fw_env.config");
    if !config.exists() {
        let defaults = dir.join("defaults.txt");
        std::fs::write(&defaults, "bootdelay=2\nbootcmd=run duli_boot\n").unwrap();
        let ok = Command::new("mkenvimage")
            .args(["-s", "0x4000", "-o"])
            .arg(&image)
            .arg(&defaults)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkenvimage failed");
        std::fs::write(&config, format!("{} 0x0000 0x4000\n", image.display())).unwrap();
    }
    UBootEnv::new(config)
}

#[test]
fn grub_full_cycle() {
    if skip_without(&["grub-editenv"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    full_cycle(&|| grub_in(dir.path()));
    // Variables are real grubenv entries.
    let out = Command::new("grub-editenv")
        .arg(dir.path().join("grubenv"))
        .arg("list")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("duli_active=A\n"), "{text}");
    assert!(text.contains("duli_a_good=1\n"), "{text}");
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
    std::fs::write(dir.path().join("grubenv"), "").unwrap();
    assert!(matches!(env.load(), Err(BootError::ToolMissing(_))));
}
