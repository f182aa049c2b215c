//! Shared helpers for the black-box integration tests.
//!
//! Include from an integration test with `mod common;`. The helpers start the
//! `duli` binary on ephemeral loopback ports with a temporary data directory,
//! run the real peers (DCMTK tools, Orthanc, Mosquitto, the Python peers in the
//! repository's `.venv`) and locate the shared sample data. When a peer or the
//! sample data is absent, the helpers print a `SKIP:` line and return `None`, so
//! a test can `let Some(x) = ... else { return };`.
//!
//! Every child process is killed when its handle is dropped.
//!
//! This file holds what every part shares: locations, switches and skipping, free ports,
//! running tools (DCMTK among them), background processes and temporary folders, and
//! reading results from a stopped daemon's store. The parts, each re-exported here so a
//! test names everything as `common::…`:
//!
//! - [`daemon`]: `DaemonBuilder` and `Daemon`, the `duli run` under test.
//! - [`http`]: HTTP and HTTPS requests, console logins and sessions, Prometheus values.
//! - [`pki`]: `TestPki`, a throwaway CA with server and client certificates.
//! - [`orthanc`]: `OrthancBuilder` and `Orthanc`, the PACS.
//! - [`mosquitto`]: `MosquittoBuilder` and `Mosquitto`, the MQTT broker.
//! - [`delivery`]: the delivery tests' peers (the Python HL7 and MQTT tools, subscribers).
//! - [`dx`], [`inference`], [`link`], [`ris`]: DX files, inference availability, a
//!   link with faults between two parties, scripted RIS peers; [`validators`]: the field's
//!   validators (dciodvfy) as the result-object tests run them.

#![allow(dead_code)]

pub mod daemon;
pub mod delivery;
pub mod dx;
pub mod http;
pub mod inference;
pub mod link;
pub mod mosquitto;
pub mod orthanc;
pub mod pki;
pub mod ris;
pub mod validators;

// Not every test uses every part.
#[allow(unused_imports)]
pub use daemon::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use mosquitto::*;
#[allow(unused_imports)]
pub use orthanc::*;
#[allow(unused_imports)]
pub use pki::*;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Default timeout for a tool run through [`run`].
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Default time a server gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Locations, switches and skipping
// ---------------------------------------------------------------------------

/// Whether every peer and file that `make test` installs must be here
/// (`DULI_REQUIRE_PEERS=1`, which `make test` sets): a test that would skip for want of
/// one fails instead, so a green run means every test ran.
pub fn peers_required() -> bool {
    matches!(
        std::env::var("DULI_REQUIRE_PEERS").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Skips a test for want of something the test environment installs (a peer, a tool, the
/// runtime or the model): prints the standard skip line, or fails the test when
/// [`peers_required`].
pub fn skip(reason: &str) {
    if peers_required() {
        panic!("{reason}: DULI_REQUIRE_PEERS is set (make test), so this test may not skip; run scripts/setup-test-env.sh");
    }
    note_skip(reason);
}

/// Skips a test for what no setup provides here: the shared data folder beside the
/// checkout (not part of the repository), root, a free privileged port, a debug build.
/// Never fails the test.
pub fn skip_here(reason: &str) {
    note_skip(reason);
}

/// Prints the running test's SKIP line, and appends it to the file `DULI_SKIP_LOG` names
/// (`make test` lists them after the run: a green run says what did not run).
pub fn note_skip(reason: &str) {
    eprintln!("SKIP: {reason}");
    if let Some(path) = std::env::var_os("DULI_SKIP_LOG") {
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!("{test}: {reason}\n");
        let _ = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| io::Write::write_all(&mut f, line.as_bytes()));
    }
}

/// The repository root (the workspace folder that holds `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("daemon crate lives inside the workspace")
        .to_path_buf()
}

/// True when the long test mode is on (`DULI_LONG_TESTS=1`, set by `make test-long`).
pub fn long_tests() -> bool {
    matches!(
        std::env::var("DULI_LONG_TESTS").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Rounds for a repeated test: `long` in the long mode, `short` otherwise.
pub fn rounds(short: usize, long: usize) -> usize {
    if long_tests() {
        long
    } else {
        short
    }
}

/// The shared folder (`DULI_SHARED_DIR`, default `../shared` from the repository root),
/// or `None` with a SKIP line when it is absent.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("DULI_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("..").join("shared"),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        skip_here(&format!(
            "shared folder {} is absent (set DULI_SHARED_DIR)",
            dir.display()
        ));
        None
    }
}

/// The chest X-ray sample set (`<shared>/data/cxr-samples`), or `None` with a SKIP line.
pub fn samples_dir() -> Option<PathBuf> {
    let dir = shared_dir()?.join("data").join("cxr-samples");
    if dir.join("dicom").is_dir() {
        Some(dir)
    } else {
        skip_here(&format!("sample data {} is absent", dir.display()));
        None
    }
}

/// The sorted `.dcm` files of one encoding folder of the sample set, e.g.
/// `"explicit-le"`, `"rle"`, `"jpeg-ls-lossless"`; `None` with a SKIP line when absent.
pub fn sample_dicoms(encoding: &str) -> Option<Vec<PathBuf>> {
    let dir = samples_dir()?.join("dicom").join(encoding);
    let files = dicom_files(&dir);
    if files.is_empty() {
        skip_here(&format!("no sample DICOM files in {}", dir.display()));
        None
    } else {
        Some(files)
    }
}

/// The sorted `.dcm` files directly inside `dir` (empty when it cannot be read).
pub fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Finds an executable on `PATH` (and in `/usr/sbin`, `/sbin`, where Debian puts
/// the servers), or `None`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Like [`which`], printing a SKIP line when the tool is absent.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = which(name);
    if found.is_none() {
        skip(&format!(
            "`{name}` is not installed (run scripts/setup-test-env.sh)"
        ));
    }
    found
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The test environment's Python (`DULI_PYTHON`, else the repository's `.venv`), or
/// `None` with a SKIP line.
pub fn venv_python() -> Option<PathBuf> {
    let found = python_candidates().into_iter().find(|p| is_executable(p));
    if found.is_none() {
        skip(&format!(
            "{} is absent (run scripts/setup-test-env.sh, or set DULI_PYTHON)",
            repo_root().join(".venv/bin/python").display()
        ));
    }
    found
}

/// The test environment's interpreters, by preference: `DULI_PYTHON`, then the
/// repository's `.venv` (what `scripts/setup-test-env.sh` makes). The one Python lookup of
/// the harness.
fn python_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("DULI_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(repo_root().join(".venv").join("bin").join("python"));
    candidates
}

/// An interpreter that imports every one of `modules`: the test environment's
/// ([`venv_python`]'s candidates), else the system's `python3`; `None` with a SKIP line.
pub fn python_with(modules: &[&str]) -> Option<PathBuf> {
    let import = format!("import {}", modules.join(", "));
    let mut candidates = python_candidates();
    candidates.push(PathBuf::from("python3"));
    let found = candidates.into_iter().find(|c| {
        Command::new(c)
            .args(["-c", &import])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        skip(&format!(
            "no Python with {} (run scripts/setup-test-env.sh, or set DULI_PYTHON)",
            modules.join(", ")
        ));
    }
    found
}

/// Runs the Python test tool `tests/tools/NAME` with `args` (Nagle off, as DCMTK's peers
/// run), up to 180 s; `None` without the tests' Python environment.
pub fn python_tool(name: &str, args: &[&str]) -> Option<ToolOutput> {
    let script = std::fs::read_to_string(repo_root().join("tests/tools").join(name)).unwrap();
    let mut cmd = python_script(&script, args)?;
    cmd.env("TCP_NODELAY", "1");
    Some(run(&mut cmd, Duration::from_secs(180)))
}

/// The last JSON object line a tool printed (`null` when none), e.g. the final response
/// qr_client.py reports.
pub fn last_json_line(out: &ToolOutput) -> serde_json::Value {
    out.stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_default()
}

/// A `Command` running `script` (Python source) with the venv interpreter and `args`
/// (available as `sys.argv[1:]`); `None` with a SKIP line when there is no venv.
pub fn python_script(script: &str, args: &[&str]) -> Option<Command> {
    let python = venv_python()?;
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(script).args(args);
    Some(cmd)
}

// ---------------------------------------------------------------------------
// Ports and sockets
// ---------------------------------------------------------------------------

fn handed_out_ports() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// The ports tests listen on: below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768–60999 by default), from which every outgoing
/// connection takes its source port. A port handed out from inside that range could be
/// taken as a source port by any connection (of a daemon, a peer, another test) before
/// the peer that is to listen on it binds it; below it, only listeners compete.
fn listening_ports() -> std::ops::Range<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 12_000 {
        10_000..ephemeral_low
    } else {
        // An unusual range: fall back to the top of the port space.
        61_000..65_535
    }
}

/// `n` distinct free TCP ports on 127.0.0.1 (see [`listening_ports`]), never handed out
/// before in this process; each test binary starts at its own place in the range. Each is
/// checked by binding it (all held until the `n` are found, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: OnceLock<Mutex<u32>> = OnceLock::new();
    let range = listening_ports();
    let span = u32::from(range.end - range.start);
    let next = NEXT.get_or_init(|| Mutex::new(std::process::id().wrapping_mul(7919) % span));
    let mut next = next.lock().unwrap();
    let mut given = handed_out_ports().lock().unwrap();
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..span {
        if ports.len() == n {
            break;
        }
        let port = range.start + (*next % span) as u16;
        *next = (*next + 1) % span;
        if given.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            given.insert(port);
            ports.push(port);
            held.push(listener);
        }
    }
    assert_eq!(ports.len(), n, "no {n} free ports in {range:?}");
    ports
}

/// One free TCP port on 127.0.0.1 (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// The loopback socket address for `port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// True when a listener answers on `addr`. A connection whose local end is `addr` itself
/// is not one: with nothing listening on a port of the ephemeral range, the kernel may pick
/// that very port as the source and connect the socket to itself.
pub fn answers(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        Ok(stream) => stream
            .local_addr()
            .map(|local| local != addr)
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// True once a listener answers on `addr` (see [`answers`]), false after `timeout`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if answers(addr) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------------------
// Running tools
// ---------------------------------------------------------------------------

/// What a finished tool run produced.
#[derive(Debug)]
pub struct ToolOutput {
    /// Exit status (`None` when it was killed after the timeout).
    pub status: Option<ExitStatus>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
    /// True when the run hit its timeout and was killed.
    pub timed_out: bool,
}

impl ToolOutput {
    /// True when the tool exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The exit code, if the tool exited normally.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// stdout and stderr together, for assertion messages.
    pub fn combined(&self) -> String {
        format!(
            "status: {:?}{}\n--- stdout\n{}--- stderr\n{}",
            self.status,
            if self.timed_out { " (timed out)" } else { "" },
            self.stdout,
            self.stderr
        )
    }

    /// Panics with the full output unless the tool succeeded.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(self.success(), "{what} failed:\n{}", self.combined());
        self
    }
}

/// Runs `cmd` to completion with captured output, killing it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> ToolOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        match child.try_wait().expect("wait for tool") {
            Some(status) => break (Some(status), false),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    ToolOutput {
        status,
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned(),
        timed_out,
    }
}

/// A `Command` for a DCMTK tool (`echoscu`, `storescu`, `findscu`, `movescu`,
/// `getscu`, `storescp`, `dcmdump`, ...) with `TCP_NODELAY=1` in its environment
/// (DCMTK 3.6.7 leaves Nagle's algorithm on otherwise); `None` with a SKIP line
/// when the tool is absent.
pub fn dcmtk(tool: &str) -> Option<Command> {
    let path = require_tool(tool)?;
    let mut cmd = Command::new(path);
    cmd.env("TCP_NODELAY", "1");
    Some(cmd)
}

/// Runs a DCMTK tool with `args` (see [`dcmtk`]) under [`TOOL_TIMEOUT`].
pub fn run_dcmtk(tool: &str, args: &[&str]) -> Option<ToolOutput> {
    let mut cmd = dcmtk(tool)?;
    cmd.args(args);
    Some(run(&mut cmd, TOOL_TIMEOUT))
}

/// `movescu` of one instance (IMAGE level, by SOP Instance UID) from the daemon at
/// `port` to the AE `dest`.
pub fn movescu_instance(port: u16, dest: &str, sop: &str) -> Option<ToolOutput> {
    run_dcmtk(
        "movescu",
        &[
            "-S",
            "-aec",
            DULI_AET,
            "-aem",
            dest,
            "-k",
            "QueryRetrieveLevel=IMAGE",
            "-k",
            &format!("SOPInstanceUID={sop}"),
            "127.0.0.1",
            &port.to_string(),
        ],
    )
}

/// `movescu -v -S` of one study (STUDY level) from the daemon at `port` to the AE `dest`,
/// calling as `MOVESCU`.
pub fn movescu_study(port: u16, dest: &str, study: &str) -> Option<ToolOutput> {
    run_dcmtk(
        "movescu",
        &[
            "-v",
            "-S",
            "-aet",
            "MOVESCU",
            "-aec",
            DULI_AET,
            "-aem",
            dest,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &format!("StudyInstanceUID={study}"),
            "127.0.0.1",
            &port.to_string(),
        ],
    )
}

/// `echoscu -aet <calling> -aec <called> 127.0.0.1 <port>` plus `extra` args.
pub fn echoscu(calling: &str, called: &str, port: u16, extra: &[&str]) -> Option<ToolOutput> {
    let port = port.to_string();
    let mut args = vec!["-aet", calling, "-aec", called];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["127.0.0.1", &port]);
    run_dcmtk("echoscu", &args)
}

/// `storescu -aet <calling> -aec <called> 127.0.0.1 <port> FILES...` plus `extra` args
/// (placed before the host, e.g. `["-xs"]` or `["+r", "+sd"]`).
pub fn storescu(
    calling: &str,
    called: &str,
    port: u16,
    extra: &[&str],
    files: &[PathBuf],
) -> Option<ToolOutput> {
    let mut cmd = dcmtk("storescu")?;
    cmd.args(["-aet", calling, "-aec", called])
        .args(extra)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .args(files);
    Some(run(&mut cmd, TOOL_TIMEOUT))
}

// ---------------------------------------------------------------------------
// Background processes
// ---------------------------------------------------------------------------

/// A background child process that is killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Background {
    child: Option<Child>,
    name: String,
    log: PathBuf,
}

impl Background {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> io::Result<Background> {
        let file = OpenOptions::new().create(true).append(true).open(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(Background {
            child: Some(child),
            name: name.to_string(),
            log: log.to_path_buf(),
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` and waits up to `timeout` for the exit; SIGKILL after that.
    /// Returns the exit status, or `None` when it had to be killed.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log written so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file's path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Peak resident memory in KiB (`VmHWM` of /proc/PID/status), while it runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid()?, "VmHWM")
    }

    /// Current resident memory in KiB (`VmRSS`), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid()?, "VmRSS")
    }

    /// Waits until `addr` accepts TCP connections; fails early, with the log, if the
    /// process exits first.
    pub fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before listening on {addr}; log:\n{}",
                    self.name,
                    self.log()
                ));
            }
            if answers(addr) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not listening on {addr} after {timeout:?}; log:\n{}",
                    self.name,
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `kB` field of /proc/PID/status, e.g. `VmHWM` or `VmRSS`.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A temporary folder removed on drop, unless `DULI_KEEP_TEST_DIRS=1` (then its
/// path is printed and it stays for inspection).
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    keep: bool,
}

impl TestDir {
    /// The folder's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept test folder {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A fresh temporary folder named `duli-<prefix>-XXXX` (see [`TestDir`]).
pub fn temp_dir(prefix: &str) -> TestDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("duli-{prefix}-"))
        .tempdir()
        .expect("create temp dir");
    TestDir {
        path: dir.keep(),
        keep: std::env::var("DULI_KEEP_TEST_DIRS").as_deref() == Ok("1"),
    }
}

/// Reads the whole of `path`, panicking with the path on error.
pub fn read(path: &Path) -> Vec<u8> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    buf
}

/// Collects the output of a finished `std::process::Output` into a [`ToolOutput`].
pub fn tool_output(output: Output) -> ToolOutput {
    ToolOutput {
        status: Some(output.status),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        timed_out: false,
    }
}

// ---------------------------------------------------------------------------
// Results as the inference stage records them
// ---------------------------------------------------------------------------

/// Writes a study result into a stopped daemon's store exactly as the inference stage
/// records it (tree `results`, key `study NUL version`), for one analysed image with
/// `findings` as (label, code, probability) at threshold 0.5 and its heatmap PNG at
/// `heatmap` (relative to the data directory).
pub fn record_result(
    data_dir: &Path,
    study_uid: &str,
    sop_uid: &str,
    model_version: &str,
    findings: &[(&str, &str, f32)],
    heatmap: &str,
) {
    use duli::result::{
        report_id, Finding, HeatmapState, ImageResult, ImageStatus, ModelInfo, StudyResult, Timings,
    };
    let findings: Vec<Finding> = findings
        .iter()
        .map(|(label, code, p)| Finding {
            label: label.to_string(),
            code: code.to_string(),
            probability: *p,
            threshold: 0.5,
            positive: *p >= 0.5,
            standard: None,
        })
        .collect();
    let result = StudyResult {
        report_id: report_id(study_uid, 1),
        study_instance_uid: study_uid.to_string(),
        version: 1,
        images: vec![ImageResult {
            sop_instance_uid: sop_uid.to_string(),
            series_instance_uid: String::new(),
            status: ImageStatus::Analysed,
            reason: None,
            caveat: None,
            findings: findings.clone(),
            timings: Timings::default(),
            heatmap: HeatmapState::Done {
                code: findings.first().map(|f| f.code.clone()).unwrap_or_default(),
                path: heatmap.to_string(),
            },
        }],
        triage: findings.iter().any(|f| f.positive),
        findings,
        model: ModelInfo {
            name: "pneumonia-xception".into(),
            version: model_version.into(),
            sha256: String::new(),
            weights_sha256: String::new(),
            precision: "f32".into(),
            coding_scheme: "99DULI".into(),
        },
        timings: Timings::default(),
        created_at: 0,
    };
    let db = sled::open(data_dir.join("index")).unwrap();
    db.open_tree(duli::infer::record::RESULTS_TREE)
        .unwrap()
        .insert(
            duli::infer::record::result_key(study_uid, 1),
            serde_json::to_vec(&result).unwrap(),
        )
        .unwrap();
    db.flush().unwrap();
}

/// The SOP Class UIDs of the DICOM files a storage peer has written whole into `dir`,
/// sorted (its `.log` and a file still being written are left out).
pub fn received_classes(dir: &Path) -> Vec<String> {
    let mut classes: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "log"))
        .filter(|p| dicom_object::open_file(p).is_ok())
        .map(|p| dicom_attr(&p, dicom_dictionary_std::tags::SOP_CLASS_UID))
        .collect();
    classes.sort();
    classes
}

/// The text of element `tag` of the DICOM file at `path`, trimmed (empty when absent).
pub fn dicom_attr(path: &Path, tag: dicom_core::Tag) -> String {
    let obj = dicom_object::open_file(path).expect("a DICOM file");
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.to_string()))
        .unwrap_or_default()
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

/// The commands that read `/etc/duli/duli.toml` when given no `--config` (so that on the
/// appliance they describe the box the daemon runs with).
pub const BOX_COMMANDS: &[&str] = &[
    "status",
    "reindex",
    "studies",
    "instances",
    "audit",
    "outbox",
    "user",
    "firmware",
    "diagnostics",
];

/// For a box command `args` given no `--config`: an empty configuration file in `dir` (the
/// built-in defaults, which the environment's overrides then change), so a test run on a
/// machine with an appliance configuration does not read it.
pub fn box_command_config(args: &[&str], dir: &Path) -> Option<PathBuf> {
    let first = args.first()?;
    if !BOX_COMMANDS.contains(first) || args.contains(&"--config") {
        return None;
    }
    let path = dir.join("defaults.toml");
    if !path.exists() {
        fs::write(
            &path,
            "# the built-in defaults; the test's environment overrides them\n",
        )
        .unwrap();
    }
    Some(path)
}
