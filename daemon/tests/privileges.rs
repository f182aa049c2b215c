//! `duli run` started as root: it binds its ports (a privileged one included), switches to
//! the service user before opening the store (checked in `/proc/<pid>/status` while it
//! answers C-ECHO), creates the data directory for that user, refuses a root-owned data
//! directory with content and a missing service user with a clear error, and stays root
//! only when told to (`--allow-root`). Needs root (skips otherwise): each test creates a
//! temporary system user and removes it afterwards.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

/// A system user created for one test, removed when dropped.
struct TempUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn temp_user(tag: &str) -> Option<TempUser> {
    if !nix::unistd::geteuid().is_root() {
        skip_here("switching users needs root; this test runs as another user");
        return None;
    }
    let useradd = require_tool("useradd")?;
    let name = format!("duli-t{tag}{}", std::process::id());
    let out = run(
        Command::new(useradd).args([
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ]),
        Duration::from_secs(30),
    );
    out.assert_success("useradd");
    let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
    Some(TempUser {
        name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// The four ids of a `Uid:` or `Gid:` line of `/proc/<pid>/status`.
fn proc_ids(pid: u32, field: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_default()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

/// A free port below 1024 (104 when free), where only root may listen.
fn privileged_port() -> Option<u16> {
    std::iter::once(104)
        .chain(1000..1024)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

/// `duli run` with ports on loopback, inference off and the given overrides; every
/// configuration variable inherited from the caller is dropped.
fn duli_run(
    dicom_port: u16,
    console_port: u16,
    data: &std::path::Path,
    env: &[(&str, &str)],
) -> Command {
    duli_run_from(&Daemon::binary(), dicom_port, console_port, data, env)
}

/// [`duli_run`] of `binary`.
fn duli_run_from(
    binary: &std::path::Path,
    dicom_port: u16,
    console_port: u16,
    data: &std::path::Path,
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("run").current_dir(repo_root());
    for (key, _) in std::env::vars() {
        if key.starts_with("DULI_") && key.contains("__") {
            cmd.env_remove(key);
        }
    }
    cmd.env("DULI_DICOM__BIND", "127.0.0.1")
        .env("DULI_DICOM__PORT", dicom_port.to_string())
        .env("DULI_CONSOLE__BIND", "127.0.0.1")
        .env("DULI_CONSOLE__PORT", console_port.to_string())
        .env("DULI_DEVICE__DATA_DIR", data)
        .env("DULI_INFERENCE__MODEL", "/nonexistent/model.toml");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

#[test]
fn started_as_root_it_binds_then_serves_as_the_service_user() {
    let Some(user) = temp_user("a") else { return };
    let Some(port) = privileged_port() else {
        skip_here("no free port below 1024 on loopback");
        return;
    };
    let dir = temp_dir("privileges");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_user = [("DULI_DEVICE__SERVICE_USER", user.name.as_str())];

    // A data directory of root's with content: refused before anything is opened.
    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("something"), b"root's").unwrap();
    let out = run(
        &mut duli_run(port, free_port(), &taken, &as_user),
        Duration::from_secs(30),
    );
    assert!(!out.success(), "{}", out.combined());
    assert!(
        out.stderr.contains("belongs to root and is not empty"),
        "{}",
        out.combined()
    );

    // A fresh data directory: created for the user; ports bound as root, then the switch.
    let data = dir.path().join("data");
    let log = dir.path().join("daemon.log");
    let console = free_port();
    let mut daemon = Background::spawn(
        "duli run",
        &mut duli_run(port, console, &data, &as_user),
        &log,
    )
    .unwrap();
    // The DICOM port is bound before the switch; ready means the console answers too.
    daemon
        .wait_for_port(loopback(port), Duration::from_secs(60))
        .unwrap();
    wait_healthy(&mut daemon, console);
    let pid = daemon.pid().unwrap();
    assert_eq!(
        proc_ids(pid, "Uid:"),
        vec![user.uid; 4],
        "real, effective, saved, fs uid"
    );
    assert_eq!(
        proc_ids(pid, "Gid:"),
        vec![user.gid; 4],
        "real, effective, saved, fs gid"
    );
    let groups = proc_ids(pid, "Groups:");
    assert!(!groups.contains(&0), "root's groups are gone: {groups:?}");
    if let Some(echo) = echoscu("ECHOSCU", DULI_AET, port, &[]) {
        echo.assert_success("C-ECHO to the daemon running as the service user");
    }
    let meta = std::fs::metadata(&data).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    assert_eq!(meta.permissions().mode() & 0o777, 0o750);
    // The store was opened as the service user: nothing in it belongs to root.
    for entry in walk(&data) {
        let m = std::fs::symlink_metadata(&entry).unwrap();
        assert_eq!(
            m.uid(),
            user.uid,
            "{} belongs to the service user",
            entry.display()
        );
    }
    assert!(daemon.log().contains("now running as"), "{}", daemon.log());
    let status = daemon.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        daemon.log()
    );
}

/// Waits until the console answers `/healthz` (the daemon is fully started).
fn wait_healthy(daemon: &mut Background, console_port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !matches!(https_get(loopback(console_port), "/healthz"), Ok(r) if r.status == 200) {
        assert!(daemon.is_running(), "exited:\n{}", daemon.log());
        assert!(
            std::time::Instant::now() < deadline,
            "not ready:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn a_missing_service_user_is_refused_unless_root_is_allowed() {
    if !nix::unistd::geteuid().is_root() {
        skip_here("the refusal applies to root only; this test runs as another user");
        return;
    }
    let dir = temp_dir("privileges-missing");
    let data = dir.path().join("data");
    let missing = [
        ("DULI_DEVICE__SERVICE_USER", "duli-no-such-user"),
        ("DULI_DEVICE__ALLOW_ROOT", "false"),
    ];
    let out = run(
        &mut duli_run(free_port(), free_port(), &data, &missing),
        Duration::from_secs(30),
    );
    assert!(!out.success(), "{}", out.combined());
    for part in [
        "\"duli-no-such-user\" (device.service_user) does not exist",
        "--allow-root",
        "device.allow_root = true",
    ] {
        assert!(out.stderr.contains(part), "{part}: {}", out.combined());
    }
    assert!(!data.exists(), "nothing was created");

    // --allow-root: stays root, on purpose.
    let port = free_port();
    let log = dir.path().join("daemon.log");
    let mut cmd = duli_run(port, free_port(), &data, &missing);
    cmd.arg("--allow-root");
    let mut daemon = Background::spawn("duli run --allow-root", &mut cmd, &log).unwrap();
    daemon
        .wait_for_port(loopback(port), Duration::from_secs(60))
        .unwrap();
    assert_eq!(proc_ids(daemon.pid().unwrap(), "Uid:"), vec![0; 4]);
    assert!(daemon.log().contains("running as root (--allow-root)"));
    daemon.kill();
}

#[test]
fn root_opens_a_data_folder_of_the_service_user_only_as_that_user() {
    let Some(user) = temp_user("c") else { return };
    // Everything the user's child must reach lies in a folder others may enter.
    let dir = tempfile::Builder::new()
        .prefix("duli-owner")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("duli");
    std::fs::copy(Daemon::binary(), &exe).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(user.uid), Some(user.gid)).unwrap();
    // The service user planted its `tmp/` as a link to a folder of root's: the store's
    // start-up clean-up removes the files it finds in `tmp/`.
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), b"root's").unwrap();
    std::os::unix::fs::symlink(&victim, data.join("tmp")).unwrap();
    let status = |what: &str| {
        let mut cmd = Command::new(&exe);
        cmd.arg("status")
            .arg("--config")
            .arg(box_command_config(&["status"], dir.path()).unwrap())
            .current_dir(dir.path())
            .env("DULI_DEVICE__DATA_DIR", &data);
        let out = run(&mut cmd, Duration::from_secs(60));
        out.assert_success(what);
        out
    };
    // Root runs a store command with no daemon: it runs as the folder's owner.
    status("status with the planted link");
    assert!(
        victim.join("precious").exists(),
        "root followed the service user's link and removed a file of root's"
    );
    std::fs::remove_file(data.join("tmp")).unwrap();
    let out = status("status");
    let answer: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(answer.is_object(), "{}", out.stdout);
    // Everything the store made belongs to the user; nothing is root's.
    for path in walk(&data) {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.uid(), user.uid, "{} is not the user's", path.display());
    }
    // A data folder given through a link is refused to root.
    let link = dir.path().join("data-link");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.arg("status")
        .arg("--config")
        .arg(box_command_config(&["status"], dir.path()).unwrap())
        .current_dir(dir.path())
        .env("DULI_DEVICE__DATA_DIR", &link);
    let out = run(&mut cmd, Duration::from_secs(60));
    assert!(!out.success(), "{}", out.combined());
    assert!(out.stderr.contains("symbolic link"), "{}", out.combined());
}

/// Started as root from a folder only root may enter (a checkout under /root or a home
/// folder), the daemon running as its service user still starts its confined pixel
/// decoder: a JPEG-LS instance retrieved by C-MOVE into a peer that takes uncompressed
/// pixels only is decoded by the child, losslessly.
#[test]
fn as_the_service_user_it_runs_its_decoder_from_a_folder_only_root_may_enter() {
    let Some(user) = temp_user("b") else { return };
    let Some(samples) = samples_dir() else { return };
    if which("storescp").is_none() || which("movescu").is_none() {
        return skip("storescp/movescu absent");
    }
    let dir = temp_dir("privileges-hidden");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let hidden = dir.path().join("root-only");
    std::fs::create_dir(&hidden).unwrap();
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o700)).unwrap();
    let binary = hidden.join("duli");
    if std::fs::hard_link(Daemon::binary(), &binary).is_err() {
        std::fs::copy(Daemon::binary(), &binary).unwrap();
    }

    // A peer that accepts uncompressed transfer syntaxes only (storescp without +xa).
    let scp_port = free_port();
    let scp_dir = temp_dir("privileges-scp");
    let Some(mut cmd) = dcmtk("storescp") else {
        return;
    };
    cmd.args(["-aet", "PLAIN", "-od", scp_dir.path().to_str().unwrap()])
        .arg(scp_port.to_string());
    let mut scp = Background::spawn("storescp", &mut cmd, &dir.path().join("scp.log")).unwrap();
    scp.wait_for_port(loopback(scp_port), READY_TIMEOUT)
        .unwrap();

    let (port, console) = (free_port(), free_port());
    let destinations = format!(
        "[{{name = \"plain\", ae_title = \"PLAIN\", host = \"127.0.0.1\", port = {scp_port}, move = true}}]"
    );
    let env = [
        ("DULI_DEVICE__SERVICE_USER", user.name.as_str()),
        ("DULI_PACS__DESTINATIONS", destinations.as_str()),
    ];
    let data = dir.path().join("data");
    let mut daemon = Background::spawn(
        "duli run",
        &mut duli_run_from(&binary, port, console, &data, &env),
        &dir.path().join("daemon.log"),
    )
    .unwrap();
    daemon
        .wait_for_port(loopback(port), Duration::from_secs(60))
        .unwrap();
    wait_healthy(&mut daemon, console);
    assert_eq!(proc_ids(daemon.pid().unwrap(), "Uid:"), vec![user.uid; 4]);

    let jls = samples.join("dicom/jpeg-ls-lossless/NORMAL_02.dcm");
    let plain = samples.join("dicom/explicit-le/NORMAL_02.dcm");
    let Some(stored) = storescu(
        "MODALITY",
        DULI_AET,
        port,
        &["-xt"],
        std::slice::from_ref(&jls),
    ) else {
        return;
    };
    stored.assert_success("storescu -xt");
    let sop = duli::scu::prepare(&jls).unwrap().sop_instance;
    let out = movescu_instance(port, "PLAIN", &sop).unwrap();
    out.assert_success("movescu");
    let got: Vec<_> = std::fs::read_dir(scp_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(got.len(), 1, "{}\n{}", out.combined(), daemon.log());
    let pixels = |p: &std::path::Path| {
        let o = dicom_object::open_file(p).unwrap();
        o.element(dicom_dictionary_std::tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap()
            .to_vec()
    };
    assert!(
        pixels(&got[0]) == pixels(&plain),
        "the decoded pixels differ from the original"
    );
    let status = daemon.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", daemon.log());
    drop(scp);
}

/// `command` run by `sh` under `umask` (the test process's umask is shared by every test
/// thread, so it is set in the child only).
fn under_umask(command: &Command, umask: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(command.get_program())
        .args(command.get_args());
    for (k, v) in command.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    if let Some(d) = command.get_current_dir() {
        cmd.current_dir(d);
    }
    cmd
}

/// `duli run` started by hand (no unit's `UMask=0077`) from a shell with umask 022: the
/// data directory, the site secret and the store it creates are still private.
#[test]
fn started_by_hand_under_umask_022_its_files_are_private() {
    let dir = temp_dir("privileges-umask");
    let data = dir.path().join("data");
    let log = dir.path().join("daemon.log");
    let console = free_port();
    let inner = duli_run(
        free_port(),
        console,
        &data,
        &[("DULI_DEVICE__ALLOW_ROOT", "true")],
    );
    let mut daemon = Background::spawn(
        "duli run (umask 022)",
        &mut under_umask(&inner, "022"),
        &log,
    )
    .unwrap();
    wait_healthy(&mut daemon, console);
    let secret = data.join("site_secret");
    assert!(secret.exists(), "{}", daemon.log());
    assert!(data.join("index").is_dir(), "{}", daemon.log());
    let mut checked = vec![data.clone()];
    checked.extend(walk(&data));
    for path in checked {
        let m = std::fs::symlink_metadata(&path).unwrap();
        // The console's public certificate is written 0644 on purpose.
        if !(m.is_file() || m.is_dir()) || path == data.join("console/cert.pem") {
            continue;
        }
        assert_eq!(
            m.permissions().mode() & 0o077,
            0,
            "{} is mode {:o}",
            path.display(),
            m.permissions().mode() & 0o7777
        );
    }
    daemon.kill();
}

/// A data directory others may write, or one of another user, is refused with a clear
/// error before anything in it is opened.
#[test]
fn a_data_directory_others_may_write_is_refused() {
    let dir = temp_dir("privileges-writable");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let allow = [("DULI_DEVICE__ALLOW_ROOT", "true")];
    let out = run(
        &mut duli_run(free_port(), free_port(), &data, &allow),
        Duration::from_secs(30),
    );
    assert!(!out.success(), "{}", out.combined());
    assert!(
        out.stderr.contains("writable by its group or by others") && out.stderr.contains("777"),
        "{}",
        out.combined()
    );
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "nothing opened"
    );
    // Another user's directory (needs root to make one).
    if nix::unistd::geteuid().is_root() {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
        let out = run(
            &mut duli_run(free_port(), free_port(), &data, &allow),
            Duration::from_secs(30),
        );
        assert!(!out.success(), "{}", out.combined());
        assert!(
            out.stderr.contains("belongs to uid 65534"),
            "{}",
            out.combined()
        );
        assert_eq!(
            std::fs::read_dir(&data).unwrap().count(),
            0,
            "nothing opened"
        );
    }
}
