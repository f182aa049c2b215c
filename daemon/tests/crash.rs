//! Durability under SIGKILL: every instance that got a Success status is, after a restart,
//! indexed, present and byte-identical to what was sent; nothing partial is ever indexed.
//!
//! Fast default: 2 rounds of each variant. `DULI_LONG_TESTS=1` (make test-long): 20 each.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn make_dx(dir: &Path, count: usize, size: usize, seed: usize) -> Option<HashMap<PathBuf, String>> {
    let script = std::fs::read_to_string(repo_root().join("tests/tools/make_dx.py")).unwrap();
    let (count, size, seed) = (count.to_string(), size.to_string(), seed.to_string());
    let mut cmd = python_script(
        &script,
        &[
            dir.to_str().unwrap(),
            "--count",
            &count,
            "--studies",
            "3",
            "--rows",
            &size,
            "--cols",
            &size,
            "--seed",
            &seed,
        ],
    )?;
    let out = run(&mut cmd, Duration::from_secs(300));
    out.assert_success("make_dx.py");
    Some(
        out.stdout
            .lines()
            .map(|l| {
                let mut it = l.split_whitespace();
                (
                    PathBuf::from(it.next().unwrap()),
                    it.next().unwrap().to_string(),
                )
            })
            .collect(),
    )
}

/// The files storescu -v reported as stored with Success.
fn acknowledged(storescu_output: &str) -> Vec<PathBuf> {
    let mut current: Option<PathBuf> = None;
    let mut ok = Vec::new();
    for line in storescu_output.lines() {
        if let Some(f) = line.strip_prefix("I: Sending file: ") {
            current = Some(PathBuf::from(f.trim()));
        } else if line.contains("Received Store Response (Success)") {
            if let Some(f) = current.take() {
                ok.push(f);
            }
        }
    }
    ok
}

fn data_set(path: &Path) -> Vec<u8> {
    let p = ::duli::scu::prepare(path).unwrap_or_else(|e| panic!("{e}"));
    std::fs::read(path).unwrap()[p.offset as usize..].to_vec()
}

/// Sends `files` with storescu in the background, kills the daemon (SIGKILL) after
/// `delay`, lets storescu end, and returns the files it saw acknowledged with Success;
/// `None` with a SKIP line without DCMTK.
fn send_then_kill(
    d: &mut Daemon,
    files: &[PathBuf],
    log: &Path,
    delay: Duration,
) -> Option<Vec<PathBuf>> {
    let mut sender = d.storescu_background(files, log)?;
    std::thread::sleep(delay);
    d.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sender.is_running() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(acknowledged(&sender.log()))
}

/// Checks the invariants after a restart; returns how many instances are indexed.
fn check_store(d: &Daemon, sent: &HashMap<PathBuf, String>, acked: &[PathBuf]) -> usize {
    let out = run(&mut d.command(&["instances"]), Duration::from_secs(60));
    out.assert_success("duli instances");
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let by_sop: HashMap<String, String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["sop_instance_uid"].as_str().unwrap().to_string(),
                i["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let source_of: HashMap<&String, &PathBuf> = sent.iter().map(|(p, s)| (s, p)).collect();
    // Every acknowledged instance is indexed.
    for f in acked {
        let sop = &sent[f];
        assert!(
            by_sop.contains_key(sop),
            "acknowledged {} ({sop}) lost",
            f.display()
        );
    }
    // Every indexed instance is complete: byte-identical to its source.
    for (sop, rel) in &by_sop {
        let src = source_of
            .get(sop)
            .unwrap_or_else(|| panic!("unknown instance {sop} indexed"));
        let stored = d.data_dir().join(rel);
        assert_eq!(
            data_set(&stored),
            data_set(src),
            "{sop} is not what was sent"
        );
    }
    // No temp file survives a restart.
    let tmp: Vec<_> = std::fs::read_dir(d.data_dir().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    assert_eq!(d.metric("duli_store_instances"), Some(by_sop.len() as f64));
    by_sop.len()
}

#[test]
fn kill_right_after_the_last_success_loses_nothing() {
    if which("storescu").is_none() {
        return skip("storescu absent");
    }
    let rounds = rounds(2, 20);
    let dir = temp_dir("crash-a");
    let mut d = Daemon::start();
    let mut all_sent = HashMap::new();
    let mut all_acked = Vec::new();
    for round in 0..rounds {
        let batch_dir = dir.path().join(format!("r{round}"));
        let Some(sent) = make_dx(&batch_dir, 10, 256, round) else {
            return;
        };
        let files: Vec<PathBuf> = sent.keys().cloned().collect();
        let out = d.storescu("MODALITY", &["-v"], &files).unwrap();
        out.assert_success("storescu");
        let acked = acknowledged(&out.combined());
        assert_eq!(acked.len(), files.len());
        d.kill();
        d.restart();
        all_sent.extend(sent);
        all_acked.extend(acked);
        let n = check_store(&d, &all_sent, &all_acked);
        assert_eq!(n, all_acked.len());
    }
    eprintln!(
        "crash A: {rounds} round(s), {} acknowledged instances, none lost",
        all_acked.len()
    );
}

#[test]
fn kill_at_random_moments_mid_transfer_loses_nothing_acknowledged() {
    if require_tool("storescu").is_none() {
        return;
    }
    let rounds = rounds(2, 20);
    let dir = temp_dir("crash-b");
    let Some(sent) = make_dx(dir.path(), 60, 1536, 7) else {
        return;
    };
    let files: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = sent.keys().cloned().collect();
        v.sort();
        v
    };
    let mut d = Daemon::start();
    let mut acked_total: HashSet<PathBuf> = HashSet::new();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(50 + seed % 700);
        let log = dir.path().join(format!("storescu-{round}.log"));
        let Some(acked) = send_then_kill(&mut d, &files, &log, delay) else {
            return;
        };
        acked_total.extend(acked.iter().cloned());
        d.restart();
        let acked_list: Vec<PathBuf> = acked_total.iter().cloned().collect();
        let n = check_store(&d, &sent, &acked_list);
        eprintln!(
            "crash B round {round}: killed after {delay:?}; {} acknowledged in this round, {n} indexed in all",
            acked.len()
        );
    }
}

/// Writes version `version` of each file (same SOP Instance UID; Instance Number
/// `version + 1`, and the last 64 pixel bytes set to it) into `out`, as the same names.
const RESEND_SCRIPT: &str = r#"
import os, sys, pydicom
out, version = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
for src in sys.argv[3:]:
    ds = pydicom.dcmread(src)
    ds.InstanceNumber = version + 1
    px = bytearray(ds.PixelData)
    px[-64:] = bytes([version + 1]) * 64
    ds.PixelData = bytes(px)
    ds.save_as(os.path.join(out, os.path.basename(src)), enforce_file_format=True)
"#;

/// Instances sent again with other contents while the daemon is killed at random moments:
/// after each restart every indexed record describes the file in place (its Instance
/// Number and size are the file's), that file is a version that was sent and never older
/// than the last one acknowledged, and no copy kept for a replacement is left over.
#[test]
fn kill_while_instances_are_sent_again_keeps_files_and_index_agreeing() {
    if require_tool("storescu").is_none() {
        return;
    }
    let rounds = rounds(3, 20);
    let dir = temp_dir("crash-c");
    let Some(sent) = make_dx(&dir.path().join("v"), 60, 1024, 11) else {
        return;
    };
    let originals: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = sent.keys().cloned().collect();
        v.sort();
        v
    };
    let sop_of = |f: &Path| -> String {
        sent[&originals
            .iter()
            .find(|o| o.file_name() == f.file_name())
            .cloned()
            .unwrap()]
            .clone()
    };
    let mut d = Daemon::start();
    // Per SOP Instance UID: the newest version acknowledged.
    let mut acked_version: HashMap<String, usize> = HashMap::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..rounds {
        let out = dir.path().join(format!("v{round}"));
        let mut args = vec![out.to_str().unwrap().to_string(), round.to_string()];
        args.extend(originals.iter().map(|p| p.to_str().unwrap().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let Some(mut cmd) = python_script(RESEND_SCRIPT, &args) else {
            return;
        };
        run(&mut cmd, Duration::from_secs(300)).assert_success("writing a version");
        let files: Vec<PathBuf> = originals
            .iter()
            .map(|o| out.join(o.file_name().unwrap()))
            .collect();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(30 + seed % 400);
        let log = dir.path().join(format!("storescu-{round}.log"));
        let Some(acked) = send_then_kill(&mut d, &files, &log, delay) else {
            return;
        };
        for f in &acked {
            acked_version.insert(sop_of(f), round);
        }
        d.restart();
        let listed = run(&mut d.command(&["instances"]), Duration::from_secs(60));
        listed.assert_success("duli instances");
        let list: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
        for inst in list.as_array().unwrap() {
            let sop = inst["sop_instance_uid"].as_str().unwrap();
            let path = d.data_dir().join(inst["path"].as_str().unwrap());
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                inst["size"].as_u64(),
                Some(bytes.len() as u64),
                "{sop}: the record's size is the file's"
            );
            let obj = dicom_object::open_file(&path).unwrap();
            let number: i64 = obj
                .element_by_name("InstanceNumber")
                .unwrap()
                .to_int()
                .unwrap();
            assert_eq!(
                inst["instance_number"].as_i64(),
                Some(number),
                "{sop}: the record's Instance Number is the file's"
            );
            let version = (number - 1) as usize;
            assert!(version <= round, "{sop}: version {version} was never sent");
            assert_eq!(
                bytes[bytes.len() - 64..],
                [version as u8 + 1; 64],
                "{sop}: the file is version {version} as sent"
            );
            if let Some(&newest) = acked_version.get(sop) {
                assert!(
                    version >= newest,
                    "{sop}: version {newest} was acknowledged, version {version} is stored"
                );
            }
        }
        for sop in acked_version.keys() {
            assert!(
                list.as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i["sop_instance_uid"] == sop.as_str()),
                "acknowledged {sop} lost"
            );
        }
        let kept: Vec<_> = std::fs::read_dir(d.data_dir().join("kept"))
            .unwrap()
            .collect();
        assert!(kept.is_empty(), "kept copies left: {kept:?}");
        eprintln!(
            "crash C round {round}: killed after {delay:?}; {} acknowledged in this round",
            acked.len()
        );
    }
}
