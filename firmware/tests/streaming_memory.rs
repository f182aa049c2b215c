//! Verification streams the payload: verifying a 192 MiB bundle must not grow the
//! process's peak memory by anything near the payload size. Alone in its own test binary
//! so no other test's allocations blur the measurement.

mod common;

use std::fs::{self, File};

use common::*;
use duli_firmware::{sign, verify, Version};

fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn verify_streams_large_payload() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let payload = dir.path().join("big.img");
    // Sparse file: 192 MiB of zeros without using the disk.
    File::create(&payload)
        .unwrap()
        .set_len(192 * 1024 * 1024)
        .unwrap();
    let bundle = dir.path().join("big.duli");
    let before = peak_rss_kib();
    sign(
        &keys.pkcs8,
        &rootfs(Version::new(2, 0, 0)),
        &payload,
        &bundle,
    )
    .unwrap();
    let verified = verify(&bundle, &keys.anchors).unwrap();
    let after = peak_rss_kib();
    assert_eq!(verified.manifest().payload.size, 192 * 1024 * 1024);
    let grown_mib = (after.saturating_sub(before)) / 1024;
    println!("peak RSS grew by {grown_mib} MiB while signing and verifying 192 MiB");
    assert!(grown_mib < 16, "peak RSS grew by {grown_mib} MiB");
}
