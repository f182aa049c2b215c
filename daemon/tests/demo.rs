//! `duli demo --exit-after-report` as a newcomer runs it (on built-in defaults, with only
//! ports and data directory moved aside so tests can run in parallel).

mod common;

use common::*;
use std::time::Duration;

#[test]
fn demo_sends_the_samples_and_exits_once_recorded() {
    let Some(samples) = samples_dir() else { return };
    let dir = temp_dir("demo");
    let ports = free_ports(2);
    let mut cmd = std::process::Command::new(Daemon::binary());
    cmd.args(["demo", "--exit-after-report", "--samples"])
        .arg(samples.join("dicom/explicit-le"))
        .current_dir(repo_root())
        .env("DULI_DICOM__PORT", ports[0].to_string())
        .env("DULI_CONSOLE__PORT", ports[1].to_string())
        .env("DULI_DICOM__QUIET_PERIOD", "1")
        .env("DULI_DEVICE__DATA_DIR", dir.path().join("data"));
    let out = run(&mut cmd, Duration::from_secs(300));
    out.assert_success("duli demo --exit-after-report");
    assert!(
        out.stdout.contains("16/16 stored with Success"),
        "{}",
        out.combined()
    );
    // Every sample study is analysed and listed with its top finding.
    assert!(
        out.stdout.contains("16/16 studies analysed"),
        "{}",
        out.combined()
    );
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains(" done ") && l.contains("Pneumonia"))
        .collect();
    assert_eq!(rows.len(), 16, "{}", out.stdout);
    // How to reach the console, and how to get in the first time.
    assert!(out.stdout.contains("Console: https://"), "{}", out.stdout);
    let code = std::fs::read_to_string(dir.path().join("data/console/setup-code")).unwrap();
    assert!(
        out.stdout
            .contains(&format!("one-time code {}", code.trim())),
        "{}",
        out.stdout
    );
    // The model finds 6 of the 8 pneumonia cases and flags NORMAL_06 (SOURCE.md).
    assert_eq!(
        rows.iter().filter(|l| l.contains("URGENT")).count(),
        7,
        "{}",
        out.stdout
    );
}
