//! Process lifecycle and store maintenance: graceful SIGTERM, index rebuilds (on request,
//! through the running daemon, and automatically when the index is lost), the disk reserve
//! (A700), and sd_notify readiness.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::Duration;

fn make_dx(dir: &std::path::Path, count: usize) -> Option<Vec<PathBuf>> {
    make_dx_with(dir, count, &[])
}

/// [`make_dx`] with more options of tests/tools/make_dx.py (e.g. the image size).
fn make_dx_with(dir: &std::path::Path, count: usize, more: &[&str]) -> Option<Vec<PathBuf>> {
    let script = std::fs::read_to_string(repo_root().join("tests/tools/make_dx.py")).unwrap();
    let count = count.to_string();
    let mut args = vec![dir.to_str().unwrap(), "--count", &count, "--studies", "2"];
    args.extend_from_slice(more);
    let mut cmd = python_script(&script, &args)?;
    let out = run(&mut cmd, Duration::from_secs(120));
    out.assert_success("make_dx.py");
    Some(
        out.stdout
            .lines()
            .map(|l| PathBuf::from(l.split_whitespace().next().unwrap()))
            .collect(),
    )
}

fn json(d: &Daemon, args: &[&str]) -> serde_json::Value {
    let out = run(&mut d.command(args), Duration::from_secs(60));
    out.assert_success(&format!("duli {args:?}"));
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[test]
fn sigterm_stops_cleanly_with_exit_zero() {
    let mut d = Daemon::start();
    let Some(out) = d.echoscu("MODALITY", &[]) else {
        return;
    };
    out.assert_success("echoscu");
    let status = d
        .terminate(Duration::from_secs(30))
        .expect("daemon did not stop on SIGTERM");
    assert!(status.success(), "exit status {status}");
    let log = d.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    assert!(
        !d.data_dir().join("duli.sock").exists(),
        "control socket left behind"
    );
}

#[test]
fn reindex_offline_through_the_daemon_and_after_losing_the_index() {
    let dir = temp_dir("reindex");
    let Some(files) = make_dx(dir.path(), 6) else {
        return;
    };
    let mut d = Daemon::start();
    let Some(out) = d.storescu("MODALITY", &[], &files) else {
        return;
    };
    out.assert_success("storescu");
    // Through the running daemon's socket (the store admits one process).
    let r = json(&d, &["reindex"]);
    assert_eq!(r["indexed"], 6, "{r}");
    assert_eq!(r["studies"], 2, "{r}");
    assert_eq!(r["removed"], 0, "{r}");
    // With the daemon stopped, the command opens the store itself; a file deleted
    // behind the daemon's back leaves the index.
    d.terminate(Duration::from_secs(30)).unwrap();
    let study = std::fs::read_dir(d.data_dir().join("files"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let file = std::fs::read_dir(&study)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "dcm"))
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    let r = json(&d, &["reindex"]);
    assert_eq!(
        (r["indexed"].as_u64(), r["removed"].as_u64()),
        (Some(5), Some(1)),
        "{r}"
    );
    // The index is lost: the next start rebuilds it from the files.
    std::fs::remove_dir_all(d.data_dir().join("index")).unwrap();
    d.restart();
    assert_eq!(d.metric("duli_store_instances"), Some(5.0));
    assert_eq!(json(&d, &["studies"]).as_array().unwrap().len(), 2);
    assert!(d.log().contains("index rebuilt from files"), "{}", d.log());
    // A garbage index is kept aside and rebuilt.
    d.terminate(Duration::from_secs(30)).unwrap();
    let db = d.data_dir().join("index").join("db");
    std::fs::write(&db, vec![0xA5u8; 4096]).unwrap();
    match d.try_restart() {
        Ok(()) => {
            assert_eq!(d.metric("duli_store_instances"), Some(5.0), "{}", d.log());
        }
        Err(log) => panic!("daemon did not survive a corrupt index:\n{log}"),
    }
}

#[test]
fn below_the_disk_reserve_c_store_answers_a700_and_stores_nothing() {
    let dir = temp_dir("reserve");
    let Some(files) = make_dx(dir.path(), 2) else {
        return;
    };
    // A reserve larger than any disk.
    let d = Daemon::builder()
        .config("retention", "disk_reserve_mb", "16000000")
        .start();
    let Some(out) = d.storescu("MODALITY", &["-v"], &files) else {
        return;
    };
    let text = out.combined();
    assert!(
        text.contains("OutOfResources") || text.contains("A700"),
        "{text}"
    );
    assert_eq!(d.metric("duli_store_instances"), Some(0.0));
    // storescu stops at its first refusal.
    assert!(d.metric("duli_instances_failed_total").unwrap() >= 1.0);
    // Echo still works: the daemon is up, only storage is refused.
    d.echoscu("MODALITY", &[])
        .unwrap()
        .assert_success("echo under the reserve");
}

/// The disk falls below its reserve while an instance streams in (the reserve is set 48
/// MB under the free space, the instance is about 150 MB): the association is aborted
/// within the next few MB, the partial file removed, nothing indexed, and the daemon
/// serves on.
#[test]
fn the_disk_reserve_crossed_while_streaming_aborts_and_keeps_nothing() {
    let dir = temp_dir("reserve-stream");
    let Some(files) = make_dx_with(dir.path(), 1, &["--rows", "8660", "--cols", "8660"]) else {
        return;
    };
    // The daemon's data folder is a temporary folder too, on the same file system.
    let st = nix::sys::statvfs::statvfs(dir.path()).unwrap();
    #[allow(clippy::unnecessary_cast)]
    let free_mb = st.blocks_available() as u64 * st.fragment_size() as u64 / (1024 * 1024);
    let d = Daemon::builder()
        .config("retention", "disk_reserve_mb", &(free_mb - 48).to_string())
        .start();
    assert_eq!(
        nix::sys::statvfs::statvfs(d.data_dir())
            .unwrap()
            .filesystem_id(),
        st.filesystem_id(),
        "the data folder is on another file system"
    );
    let Some(out) = d.storescu("MODALITY", &["-v"], &files) else {
        return;
    };
    let text = out.combined();
    assert!(
        !text.contains("Received Store Response (Success)"),
        "stored although the reserve was crossed:\n{text}"
    );
    let log = d.log();
    assert!(
        log.contains("disk below reserve while receiving"),
        "not cut while streaming (a refusal at the start means the disk moved by 48 MB \
         meanwhile):\n{log}\n{text}"
    );
    assert_eq!(d.metric("duli_store_instances"), Some(0.0));
    let tmp: Vec<_> = std::fs::read_dir(d.data_dir().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "partial files left: {tmp:?}");
    d.echoscu("MODALITY", &[])
        .unwrap()
        .assert_success("echo after the abort");
}

#[test]
fn the_watchdog_is_fed_while_the_store_answers() {
    let dir = temp_dir("watchdog");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // WATCHDOG_USEC=400 ms: systemd expects a ping at least every 200 ms.
    let _d = Daemon::builder()
        .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .start();
    let mut buf = [0u8; 256];
    let mut pings = 0;
    let started = std::time::Instant::now();
    while pings < 3 && started.elapsed() < Duration::from_secs(10) {
        let n = sock.recv(&mut buf).expect("no sd_notify message");
        if &buf[..n] == b"WATCHDOG=1" {
            pings += 1;
        }
    }
    assert_eq!(pings, 3, "fewer than 3 watchdog pings in 10 s");
}

#[test]
fn readiness_is_notified_to_systemd() {
    let dir = temp_dir("notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut d = Daemon::builder()
        .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
        .start();
    let mut buf = [0u8; 256];
    // An open that rebuilds nothing asks for no more start-up time.
    let n = sock.recv(&mut buf).expect("no sd_notify message");
    assert_eq!(&buf[..n], b"READY=1");
    d.terminate(Duration::from_secs(30)).unwrap();
    let n = sock.recv(&mut buf).expect("no STOPPING message");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn sigterm_lets_an_open_association_finish_its_transfer() {
    if require_tool("storescu").is_none() {
        return;
    }
    let dir = temp_dir("drain");
    let script = std::fs::read_to_string(repo_root().join("tests/tools/make_dx.py")).unwrap();
    let Some(mut cmd) = python_script(
        &script,
        &[
            dir.path().join("dx").to_str().unwrap(),
            "--count",
            "30",
            "--rows",
            "1024",
            "--cols",
            "1024",
        ],
    ) else {
        return;
    };
    run(&mut cmd, Duration::from_secs(120)).assert_success("make_dx.py");
    let files = dicom_files(&dir.path().join("dx"));
    let mut d = Daemon::start();
    let Some(mut sender) = d.storescu_background(&files, &dir.path().join("storescu.log")) else {
        return;
    };
    // Wait until the transfer is under way, then ask the daemon to stop.
    let started = std::time::Instant::now();
    while !sender.log().contains("Received Store Response (Success)")
        && started.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = nix::unistd::Pid::from_raw(d.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = sender.signal_and_wait(nix::sys::signal::Signal::SIGCONT, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "storescu did not finish: {}",
        sender.log()
    );
    assert_eq!(
        sender
            .log()
            .matches("Received Store Response (Success)")
            .count(),
        30
    );
    let status = d
        .terminate(Duration::from_secs(30))
        .expect("daemon did not stop");
    assert!(status.success(), "{status}");
    assert!(d.log().contains("shutting down"), "{}", d.log());
    d.restart();
    assert_eq!(d.metric("duli_store_instances"), Some(30.0));
}
