//! The daemon under test: [`DaemonBuilder`] starts `duli run` on ephemeral loopback ports
//! with a temporary data directory; [`Daemon`] drives and inspects it.

use super::http::{console_login, https_get, prometheus_value, ConsoleSession, HttpResponse};
use super::{
    box_command_config, echoscu, free_ports, loopback, repo_root, storescu, temp_dir, Background,
    TestDir, ToolOutput, READY_TIMEOUT,
};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Builder for a `duli run` process on ephemeral loopback ports.
#[derive(Debug, Clone)]
pub struct DaemonBuilder {
    env: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
    current_dir: Option<PathBuf>,
    args: Vec<String>,
    wait_healthz: bool,
    ready_timeout: Duration,
    binary: Option<PathBuf>,
}

impl Default for DaemonBuilder {
    fn default() -> Self {
        DaemonBuilder {
            env: Vec::new(),
            data_dir: None,
            current_dir: None,
            args: Vec::new(),
            wait_healthz: true,
            ready_timeout: READY_TIMEOUT,
            binary: None,
        }
    }
}

impl DaemonBuilder {
    /// Sets a configuration override, e.g. `env("DULI_DICOM__MAX_ASSOCIATIONS", "2")`
    /// (any environment variable really); later calls win.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Sets `DULI_<SECTION>__<KEY>` from lower-case `section` and `key`.
    pub fn config(self, section: &str, key: &str, value: &str) -> Self {
        let var = format!(
            "DULI_{}__{}",
            section.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        );
        self.env(&var, value)
    }

    /// Uses `dir` as the data directory instead of a fresh temporary one.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Working directory of the daemon (default: the repository root, so relative
    /// default paths such as `models/` resolve as in a checkout).
    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.current_dir = Some(dir.to_path_buf());
        self
    }

    /// Extra arguments after `duli run` (e.g. `["--config", path]`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Whether readiness also waits for `GET /healthz` = 200 (HTTPS) on the console port
    /// (default true); the DICOM port is always waited for.
    pub fn wait_healthz(mut self, on: bool) -> Self {
        self.wait_healthz = on;
        self
    }

    /// How long to wait for readiness (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Turns inference on with the repository's default model (off by default in tests).
    pub fn with_inference(self) -> Self {
        let model = repo_root().join("models/pneumonia-xception/model.toml");
        self.env("DULI_INFERENCE__MODEL", model.to_str().unwrap_or_default())
    }

    /// Runs another `duli` binary than the test build's (e.g. the release build).
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }

    /// Starts the daemon and waits until it is ready; `Err` carries its log.
    pub fn try_start(self) -> Result<Daemon, String> {
        let root = temp_dir("daemon");
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| root.path().join("data"));
        let ports = free_ports(3);
        let mut daemon = Daemon {
            builder: self,
            root,
            data_dir,
            dicom_port: ports[0],
            console_port: ports[1],
            tls_port: ports[2],
            process: None,
            starts: 0,
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    /// Starts the daemon and waits until it is ready; panics with its log otherwise.
    pub fn start(self) -> Daemon {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A running (or stopped, restartable) `duli run` process with its own data
/// directory and loopback ports. Killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    builder: DaemonBuilder,
    root: TestDir,
    data_dir: PathBuf,
    /// DICOM port (`DULI_DICOM__PORT`).
    pub dicom_port: u16,
    /// Console/metrics port (`DULI_CONSOLE__PORT`).
    pub console_port: u16,
    /// DICOM TLS port (`DULI_DICOM__TLS_PORT`, passed only when `DULI_DICOM__TLS` is set).
    pub tls_port: u16,
    process: Option<Background>,
    starts: usize,
}

/// The daemon's default AE title.
pub const DULI_AET: &str = "DULI";

impl Daemon {
    /// A builder with the defaults (see [`DaemonBuilder`]).
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    /// Starts a daemon on defaults and waits until it is ready.
    pub fn start() -> Daemon {
        DaemonBuilder::default().start()
    }

    /// Path of the `duli` binary under test.
    pub fn binary() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_duli"))
    }

    /// A `Command` for another `duli` subcommand (e.g. `reindex`, `send`, `echo`)
    /// with the same configuration environment as the daemon.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(Self::binary());
        cmd.args(args);
        if let Some(config) = box_command_config(args, self.root.path()) {
            cmd.arg("--config").arg(config);
        }
        self.apply_env(&mut cmd);
        cmd
    }

    fn apply_env(&self, cmd: &mut Command) {
        // Hermetic: configuration overrides inherited from the developer's shell are dropped.
        for (key, _) in std::env::vars_os() {
            if let Some(key) = key.to_str() {
                if key.starts_with("DULI_") && key.contains("__") {
                    cmd.env_remove(key);
                }
            }
        }
        let tls = self.env_value("DULI_DICOM__TLS", &["true", "1"]);
        let pack = self
            .builder
            .env
            .iter()
            .any(|(k, _)| k == "DULI_INFERENCE__MODEL_PACK");
        let mut env: Vec<(String, String)> = vec![
            ("DULI_DICOM__BIND".into(), "127.0.0.1".into()),
            ("DULI_DICOM__PORT".into(), self.dicom_port.to_string()),
            ("DULI_DICOM__QUIET_PERIOD".into(), "0".into()),
            ("DULI_CONSOLE__BIND".into(), "127.0.0.1".into()),
            ("DULI_CONSOLE__PORT".into(), self.console_port.to_string()),
            (
                "DULI_DEVICE__DATA_DIR".into(),
                self.data_dir.display().to_string(),
            ),
            // Inference is off unless a test turns it on (`.config("inference", "model",
            // ...)` or `.with_inference()`): the receive, store and Q/R tests count exactly
            // the instances they sent, and result objects would join them.
            (
                "DULI_INFERENCE__MODEL".into(),
                "/nonexistent/inference-off-in-this-test/model.toml".into(),
            ),
            // Tests run as whoever runs them (root on CI machines, where no `duli` account
            // exists); tests/privileges.rs sets it back to false.
            ("DULI_DEVICE__ALLOW_ROOT".into(), "true".into()),
        ];
        if tls {
            env.push(("DULI_DICOM__TLS_PORT".into(), self.tls_port.to_string()));
        }
        if pack {
            // A model pack names its own manifest; inference.model may not be set beside it.
            env.retain(|(k, _)| k != "DULI_INFERENCE__MODEL");
        }
        env.extend(self.builder.env.iter().cloned());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.current_dir(self.builder.current_dir.clone().unwrap_or_else(repo_root));
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let binary = self.builder.binary.clone().unwrap_or_else(Self::binary);
        let mut cmd = Command::new(&binary);
        cmd.arg("run").args(&self.builder.args);
        self.apply_env(&mut cmd);
        let log = self.root.path().join("daemon.log");
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&log) {
            let _ = writeln!(f, "==== start #{} ====", self.starts);
        }
        let mut process = Background::spawn("duli run", &mut cmd, &log)
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let deadline = Instant::now() + self.builder.ready_timeout;
        process.wait_for_port(self.ready_addr(), self.builder.ready_timeout)?;
        if self.builder.wait_healthz {
            loop {
                if let Some(status) = process.try_wait() {
                    return Err(format!(
                        "duli run exited ({status}) before /healthz; log:\n{}",
                        process.log()
                    ));
                }
                if matches!(https_get(self.console_addr(), "/healthz"), Ok(r) if r.status == 200) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "duli run: /healthz not 200 on {} in time; log:\n{}",
                        self.console_addr(),
                        process.log()
                    ));
                }
                thread::sleep(Duration::from_millis(25));
            }
        }
        self.process = Some(process);
        Ok(())
    }

    /// Whether the test set `key` (last setting wins) to one of `values`.
    fn env_value(&self, key: &str, values: &[&str]) -> bool {
        self.builder
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .is_some_and(|(_, v)| values.contains(&v.as_str()))
    }

    /// The port that tells the daemon is up: the plain DICOM port, or the TLS port when
    /// the test turned plain DICOM off (`dicom.plain = false`).
    fn ready_addr(&self) -> SocketAddr {
        if self.env_value("DULI_DICOM__PLAIN", &["false", "0"]) {
            loopback(self.tls_port)
        } else {
            self.dicom_addr()
        }
    }

    /// The DICOM listener address.
    pub fn dicom_addr(&self) -> SocketAddr {
        loopback(self.dicom_port)
    }

    /// The console/metrics listener address.
    pub fn console_addr(&self) -> SocketAddr {
        loopback(self.console_port)
    }

    /// `DULI@127.0.0.1:<port>`, the form `duli echo`/`duli send` take.
    pub fn ae_address(&self) -> String {
        format!("{DULI_AET}@127.0.0.1:{}", self.dicom_port)
    }

    /// The data directory (kept across restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The test's private temporary folder (holds `daemon.log`; free for fixtures).
    pub fn work_dir(&self) -> &Path {
        self.root.path()
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Background::pid)
    }

    /// Everything the daemon logged, over all its starts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.root.path().join("daemon.log")).unwrap_or_default()
    }

    /// The log once it holds `needle`, waiting up to `timeout` for it (a line is written
    /// after the peer saw its effect: an abort, a closed connection); the log as it is then
    /// otherwise.
    pub fn log_once_it_holds(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() >= deadline {
                return log;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Background::is_running)
    }

    /// Peak resident memory in KiB while running.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.process.as_ref().and_then(Background::peak_rss_kib)
    }

    /// Current resident memory in KiB while running.
    pub fn rss_kib(&self) -> Option<u64> {
        self.process.as_ref().and_then(Background::rss_kib)
    }

    /// SIGKILL, no cleanup: the crash of the crash tests.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// SIGTERM and wait up to `timeout`; the exit status, or `None` if it had to be
    /// killed (or was not running).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut p = self.process.take()?;
        p.signal_and_wait(nix::sys::signal::Signal::SIGTERM, timeout)
    }

    /// Stops the daemon (SIGTERM) and reads its whole audit trail from its store.
    pub fn stop_and_read_audit(&mut self) -> Vec<duli::audit::Record> {
        self.terminate(Duration::from_secs(20));
        let store = duli::store::Store::open(self.data_dir()).unwrap();
        let audit = duli::audit::Audit::open(&store).unwrap();
        audit.records(0, 100_000).unwrap()
    }

    /// Starts again (after [`kill`](Self::kill) or [`terminate`](Self::terminate))
    /// with the same data directory, ports and configuration; panics with the log if
    /// it does not become ready.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("{e}");
        }
    }

    /// Like [`restart`](Self::restart) but returns the error.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    /// `GET path` on the console listener (HTTPS, certificate not verified).
    pub fn http_get(&self, path: &str) -> io::Result<HttpResponse> {
        https_get(self.console_addr(), path)
    }

    /// Creates a console user with `duli user add` (password on stdin); panics on failure.
    pub fn add_user(&self, name: &str, role: &str, password: &str) {
        let mut cmd = self.command(&["user", "add", name, "--role", role]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("duli user add");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "duli user add {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Logs `user` in on the console.
    pub fn login(&self, user: &str, password: &str) -> ConsoleSession {
        console_login(self.console_addr(), user, password)
    }

    /// One series of `/metrics`, e.g. `duli_store_instances`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let r = self.http_get("/metrics").ok()?;
        prometheus_value(&r.text(), series)
    }

    /// `echoscu` against the daemon with calling AE `calling`.
    pub fn echoscu(&self, calling: &str, extra: &[&str]) -> Option<ToolOutput> {
        echoscu(calling, DULI_AET, self.dicom_port, extra)
    }

    /// DCMTK `findscu` (`-S` study root or `-P` patient root) from `FINDSCU` with `keys`
    /// (bytes as given: a key may carry Latin-1 or UTF-8); the response identifiers in
    /// arrival order.
    pub fn findscu<K: AsRef<std::ffi::OsStr>>(
        &self,
        root: &str,
        keys: &[K],
    ) -> Vec<dicom_object::DefaultDicomObject> {
        let out_dir = temp_dir("findscu");
        let Some(mut cmd) = super::dcmtk("findscu") else {
            panic!("findscu is required");
        };
        cmd.args([root, "-X", "-od"])
            .arg(out_dir.path())
            .args(["-aet", "FINDSCU", "-aec", DULI_AET]);
        for k in keys {
            cmd.arg("-k").arg(k);
        }
        cmd.args(["127.0.0.1", &self.dicom_port.to_string()]);
        let out = super::run(&mut cmd, super::TOOL_TIMEOUT);
        out.assert_success("findscu");
        let mut files: Vec<PathBuf> = fs::read_dir(out_dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| dicom_object::open_file(p).unwrap())
            .collect()
    }

    /// `storescu` of `files` to the daemon with calling AE `calling`.
    pub fn storescu(&self, calling: &str, extra: &[&str], files: &[PathBuf]) -> Option<ToolOutput> {
        storescu(calling, DULI_AET, self.dicom_port, extra, files)
    }

    /// `storescu -v` from `MODALITY` sending `files` to this daemon in the background (its
    /// output in `log`, each Success reported there); `None` with a SKIP line without
    /// DCMTK.
    pub fn storescu_background(&self, files: &[PathBuf], log: &Path) -> Option<Background> {
        let mut cmd = super::dcmtk("storescu")?;
        cmd.args(["-v", "-aet", "MODALITY", "-aec", DULI_AET, "127.0.0.1"])
            .arg(self.dicom_port.to_string())
            .args(files);
        Some(Background::spawn("storescu", &mut cmd, log).unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- duli log ----\n{}", self.log());
        }
    }
}
