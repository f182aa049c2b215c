//! Configuration fixtures: every file in `tests/config/valid` loads; every file in
//! `tests/config/invalid` fails with an error that names the key in its `# expect:` line,
//! both through the library and through `duli check-config`.

use std::path::{Path, PathBuf};

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/config")
        .join(kind);
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn valid_fixtures_load() {
    let files = fixtures("valid");
    assert!(files.len() >= 2);
    for f in files {
        if let Err(e) = duli::config::Config::load(Some(&f), Vec::new()) {
            panic!("{} should be valid: {e}", f.display());
        }
    }
}

#[test]
fn invalid_fixtures_name_their_key() {
    let files = fixtures("invalid");
    assert!(files.len() >= 20);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an # expect: line", f.display()))
            .trim()
            .to_string();
        match duli::config::Config::load(Some(&f), Vec::new()) {
            Ok(_) => panic!("{} should be invalid", f.display()),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&expect),
                    "{}: error {msg:?} does not name {expect:?}",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn check_config_command_reports_and_exits_non_zero() {
    let bin = env!("CARGO_BIN_EXE_duli");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config");
    let out = std::process::Command::new(bin)
        .args(["check-config", "--config"])
        .arg(dir.join("invalid/max-assoc.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dicom.max_associations"));
    let out = std::process::Command::new(bin)
        .args(["check-config", "--config"])
        .arg(dir.join("valid/modality-list.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("port = 104"), "{stdout}");
    assert!(stdout.contains("CR_ROOM1"), "{stdout}");
    // Valid, but naming a model that is not there: said, the exit still 0.
    let scratch = tempfile::tempdir().unwrap();
    let cfg = scratch.path().join("duli.toml");
    std::fs::write(&cfg, "[inference]\nmodel = \"models/absent/model.toml\"\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: inference.model") && stderr.contains("absent"),
        "{stderr}"
    );
}

#[test]
fn run_with_invalid_env_value_exits_naming_the_key() {
    let bin = env!("CARGO_BIN_EXE_duli");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .arg("run")
        .current_dir(dir.path())
        .env("DULI_DICOM__MAX_PDU", "12")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dicom.max_pdu"));
}
