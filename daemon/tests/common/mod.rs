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

#![allow(dead_code)]

pub mod delivery;
pub mod dx;
pub mod inference;
pub mod link;
pub mod ris;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Default timeout for a tool run through [`run`].
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Default time a server gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Locations, switches and skipping
// ---------------------------------------------------------------------------

/// Prints the standard skip line for a test that cannot run here.
pub fn skip(reason: &str) {
    eprintln!("SKIP: {reason}");
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
        skip(&format!(
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
        skip(&format!("sample data {} is absent", dir.display()));
        None
    }
}

/// The sorted `.dcm` files of one encoding folder of the sample set, e.g.
/// `"explicit-le"`, `"rle"`, `"jpeg-ls-lossless"`; `None` with a SKIP line when absent.
pub fn sample_dicoms(encoding: &str) -> Option<Vec<PathBuf>> {
    let dir = samples_dir()?.join("dicom").join(encoding);
    let files = dicom_files(&dir);
    if files.is_empty() {
        skip(&format!("no sample DICOM files in {}", dir.display()));
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

/// The Python interpreter of the repository's virtual environment (`.venv/bin/python`),
/// or `None` with a SKIP line.
pub fn venv_python() -> Option<PathBuf> {
    let python = repo_root().join(".venv").join("bin").join("python");
    if is_executable(&python) {
        Some(python)
    } else {
        skip(&format!(
            "{} is absent (run scripts/setup-test-env.sh)",
            python.display()
        ));
        None
    }
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

/// `n` distinct free TCP ports on 127.0.0.1, never handed out before in this process.
/// (Bound to port 0 together, then released: a tiny window remains in which another
/// process could take one.)
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut given = handed_out_ports().lock().unwrap();
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind port 0");
        let port = listener.local_addr().unwrap().port();
        if given.insert(port) {
            ports.push(port);
        }
        held.push(listener);
    }
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

/// True once a TCP connection to `addr` succeeds, false after `timeout`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------------------
// Plain HTTP/1.1 over TcpStream
// ---------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (panics if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole response.
/// `body` is `(content type, bytes)`.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((content_type, bytes)) = body {
        request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        ));
    } else if method != "GET" && method != "HEAD" {
        request.push_str("Content-Length: 0\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    if let Some((_, bytes)) = body {
        stream.write_all(bytes)?;
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_http_response(&raw)
}

/// `GET path` on `addr` with a 10 s timeout.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    http_request(addr, "GET", path, None, Duration::from_secs(10))
}

/// Parses a complete HTTP/1.x response (Content-Length, chunked, or read-to-close).
pub fn parse_http_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    // Repeated headers (Set-Cookie) are joined with a newline.
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in lines.filter_map(|l| l.split_once(':')) {
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        headers
            .entry(k)
            .and_modify(|old| {
                old.push('\n');
                old.push_str(&v);
            })
            .or_insert(v);
    }
    let rest = &raw[split + 4..];
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        rest.get(..len).ok_or_else(|| bad("short body"))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------
// HTTPS (the console) with certificate verification disabled
// ---------------------------------------------------------------------------

/// Accepts any server certificate: the console's certificate is self-signed in tests.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client configuration that trusts any server certificate.
pub fn insecure_tls_client() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS stream to `addr` (certificate not verified).
pub fn tls_connect(
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let name = rustls::pki_types::ServerName::try_from("localhost")
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let conn =
        rustls::ClientConnection::new(insecure_tls_client(), name).map_err(io::Error::other)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Sends one HTTPS/1.1 request (`Connection: close`) with extra headers and reads the
/// whole response. `body` is `(content type, bytes)`.
pub fn https_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let mut stream = tls_connect(addr, timeout)?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    match body {
        Some((content_type, bytes)) => request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        )),
        None if method != "GET" && method != "HEAD" => request.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    if let Some((_, bytes)) = body {
        stream.write_all(bytes)?;
    }
    stream.flush()?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A server that closes without close_notify after a complete answer.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse_http_response(&raw)
}

/// `GET path` over HTTPS with a 10 s timeout.
pub fn https_get(addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    https_request(addr, "GET", path, &[], None, Duration::from_secs(10))
}

/// A logged-in console session: the cookie and CSRF token of one user.
#[derive(Debug, Clone)]
pub struct ConsoleSession {
    /// The console address.
    pub addr: SocketAddr,
    /// `duli_session=...` for the Cookie header.
    pub cookie: String,
    /// The CSRF token for `X-CSRF-Token`.
    pub csrf: String,
    /// The login answer.
    pub login: HttpResponse,
}

/// `POST /api/v1/login` with JSON credentials; the raw answer.
pub fn console_login_raw(addr: SocketAddr, user: &str, password: &str) -> HttpResponse {
    let body = serde_json::json!({"username": user, "password": password}).to_string();
    https_request(
        addr,
        "POST",
        "/api/v1/login",
        &[],
        Some(("application/json", body.as_bytes())),
        Duration::from_secs(30),
    )
    .expect("login request")
}

/// Logs in and panics unless it succeeds.
pub fn console_login(addr: SocketAddr, user: &str, password: &str) -> ConsoleSession {
    let r = console_login_raw(addr, user, password);
    assert_eq!(r.status, 200, "login of {user}: {}", r.text());
    let set_cookie = r.headers.get("set-cookie").cloned().unwrap_or_default();
    let cookie = set_cookie
        .lines()
        .filter_map(|l| l.split(';').next())
        .find(|c| c.starts_with("duli_session="))
        .expect("session cookie")
        .to_string();
    let csrf = r.json()["csrf"].as_str().expect("csrf").to_string();
    ConsoleSession {
        addr,
        cookie,
        csrf,
        login: r,
    }
}

impl ConsoleSession {
    /// A request with the session cookie and, when `csrf`, the CSRF header.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        json: Option<&serde_json::Value>,
        csrf: bool,
    ) -> HttpResponse {
        let body = json.map(|j| j.to_string());
        let mut headers = vec![("Cookie", self.cookie.as_str())];
        if csrf {
            headers.push(("X-CSRF-Token", self.csrf.as_str()));
        }
        https_request(
            self.addr,
            method,
            path,
            &headers,
            body.as_deref().map(|b| ("application/json", b.as_bytes())),
            Duration::from_secs(30),
        )
        .expect("console request")
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, None, false)
    }

    /// A state-changing request with the CSRF header.
    pub fn send(&self, method: &str, path: &str, json: &serde_json::Value) -> HttpResponse {
        self.request(method, path, Some(json), true)
    }
}

/// The value of a Prometheus sample line `name` (exact series, labels included, e.g.
/// `duli_studies{state="complete"}`) in a text exposition, or `None`.
pub fn prometheus_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name.trim() == series).then(|| value.trim().parse().ok())?
        })
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
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
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

// ---------------------------------------------------------------------------
// The daemon under test
// ---------------------------------------------------------------------------

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

    /// `storescu` of `files` to the daemon with calling AE `calling`.
    pub fn storescu(&self, calling: &str, extra: &[&str], files: &[PathBuf]) -> Option<ToolOutput> {
        storescu(calling, DULI_AET, self.dicom_port, extra, files)
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

// ---------------------------------------------------------------------------
// Certificates for TLS tests
// ---------------------------------------------------------------------------

/// A throwaway PKI made with the `openssl` CLI: one CA, a server certificate for
/// `localhost`/127.0.0.1, and a client certificate; RSA 2048, PEM files.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// CA private key (PEM).
    pub ca_key: PathBuf,
    /// Server certificate (PEM), SAN localhost and 127.0.0.1.
    pub server_cert: PathBuf,
    /// Server private key (PKCS#8 PEM).
    pub server_key: PathBuf,
    /// Client certificate (PEM).
    pub client_cert: PathBuf,
    /// Client private key (PKCS#8 PEM).
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generates the PKI into `dir` (file names prefixed with `name`); `None` with a
    /// SKIP line when `openssl` is absent.
    pub fn generate(dir: &Path, name: &str) -> Option<TestPki> {
        let openssl = require_tool("openssl")?;
        let f = |s: &str| dir.join(format!("{name}-{s}"));
        let pki = TestPki {
            ca_cert: f("ca.pem"),
            ca_key: f("ca.key"),
            server_cert: f("server.pem"),
            server_key: f("server.key"),
            client_cert: f("client.pem"),
            client_key: f("client.key"),
        };
        let openssl_run = |args: &[&str]| {
            let mut cmd = Command::new(&openssl);
            cmd.args(args);
            run(&mut cmd, Duration::from_secs(60)).assert_success("openssl");
        };
        let s = |p: &Path| p.to_str().unwrap().to_string();
        openssl_run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            &s(&pki.ca_key),
            "-out",
            &s(&pki.ca_cert),
            "-subj",
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        let issue = |cn: &str, cert: &Path, key: &Path, ext: &str| {
            let csr = dir.join(format!("{name}-{cn}.csr"));
            let ext_file = dir.join(format!("{name}-{cn}.ext"));
            fs::write(&ext_file, ext).unwrap();
            openssl_run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &s(key),
                "-out",
                &s(&csr),
                "-subj",
                &format!("/CN={cn}"),
            ]);
            openssl_run(&[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&pki.ca_cert),
                "-CAkey",
                &s(&pki.ca_key),
                "-CAcreateserial",
                "-days",
                "30",
                "-out",
                &s(cert),
                "-extfile",
                &s(&ext_file),
            ]);
        };
        let common = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n";
        issue(
            "localhost",
            &pki.server_cert,
            &pki.server_key,
            &format!("{common}extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"),
        );
        issue(
            &format!("{name}-client"),
            &pki.client_cert,
            &pki.client_key,
            &format!("{common}extendedKeyUsage=clientAuth\n"),
        );
        Some(pki)
    }
}

// ---------------------------------------------------------------------------
// Orthanc
// ---------------------------------------------------------------------------

/// Builder for an Orthanc PACS on loopback ephemeral ports, from a generated JSON
/// configuration in a temporary folder (no plugins, no HTTP authentication,
/// `RemoteAccessAllowed` false, `SyncStorageArea` true).
#[derive(Debug, Clone)]
pub struct OrthancBuilder {
    aet: String,
    modalities: serde_json::Map<String, serde_json::Value>,
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for OrthancBuilder {
    fn default() -> Self {
        OrthancBuilder {
            aet: "ORTHANC".into(),
            modalities: serde_json::Map::new(),
            extra: serde_json::Map::new(),
        }
    }
}

impl OrthancBuilder {
    /// Orthanc's own AE title (default `ORTHANC`).
    pub fn aet(mut self, aet: &str) -> Self {
        self.aet = aet.to_string();
        self
    }

    /// Adds a `DicomModalities` entry `name` → `[aet, host, port]` (a peer Orthanc
    /// may query, move to, or accept as a C-MOVE destination).
    pub fn modality(mut self, name: &str, aet: &str, host: &str, port: u16) -> Self {
        self.modalities
            .insert(name.to_string(), serde_json::json!([aet, host, port]));
        self
    }

    /// Sets any other configuration option (overrides the defaults).
    pub fn option(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// Starts Orthanc and waits until `/system` answers and the DICOM port accepts;
    /// `None` with a SKIP line when Orthanc is not installed. Panics with Orthanc's
    /// log when it does not start.
    pub fn start(self) -> Option<Orthanc> {
        let binary = which("Orthanc").or_else(|| which("orthanc"));
        let Some(binary) = binary else {
            skip("Orthanc is not installed (apt orthanc; run scripts/setup-test-env.sh)");
            return None;
        };
        let dir = temp_dir("orthanc");
        let ports = free_ports(2);
        let (dicom_port, http_port) = (ports[0], ports[1]);
        let mut config = serde_json::json!({
            "Name": "duli-test-orthanc",
            "StorageDirectory": dir.path().join("storage"),
            "IndexDirectory": dir.path().join("index"),
            "StorageCompression": false,
            "SyncStorageArea": true,
            "Plugins": [],
            "HttpServerEnabled": true,
            "HttpPort": http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "SslEnabled": false,
            "HttpCompressionEnabled": false,
            "DicomServerEnabled": true,
            "DicomAet": self.aet,
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": false,
            "DicomCheckModalityHost": false,
            "DicomAlwaysAllowEcho": true,
            "DicomAlwaysAllowStore": true,
            "DicomAlwaysAllowFind": true,
            "DicomAlwaysAllowMove": true,
            "DicomAlwaysAllowGet": true,
            "UnknownSopClassAccepted": true,
            "DicomModalities": self.modalities,
            "SaveJobs": false,
            "StableAge": 1,
            "DicomScpTimeout": 30,
            "ConcurrentJobs": 2,
        });
        let obj = config.as_object_mut().unwrap();
        for (k, v) in self.extra {
            obj.insert(k, v);
        }
        let config_path = dir.path().join("orthanc.json");
        fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = dir.path().join("orthanc.log");
        let mut cmd = Command::new(binary);
        cmd.arg("--no-jobs")
            .arg(&config_path)
            .current_dir(dir.path());
        let mut process = Background::spawn("Orthanc", &mut cmd, &log).expect("start Orthanc");
        let http = loopback(http_port);
        process
            .wait_for_port(http, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        process
            .wait_for_port(loopback(dicom_port), READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + READY_TIMEOUT;
        while !matches!(http_get(http, "/system"), Ok(r) if r.status == 200) {
            assert!(
                Instant::now() < deadline,
                "Orthanc /system not ready; log:\n{}",
                process.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        Some(Orthanc {
            aet: config["DicomAet"].as_str().unwrap().to_string(),
            dicom_port,
            http_port,
            process,
            dir,
        })
    }
}

/// A running Orthanc (killed when dropped).
#[derive(Debug)]
pub struct Orthanc {
    /// Orthanc's AE title.
    pub aet: String,
    /// Its DICOM port.
    pub dicom_port: u16,
    /// Its REST API port.
    pub http_port: u16,
    /// The process (log, memory, kill).
    pub process: Background,
    dir: TestDir,
}

impl Orthanc {
    /// A builder with the defaults.
    pub fn builder() -> OrthancBuilder {
        OrthancBuilder::default()
    }

    /// Starts Orthanc on defaults (see [`OrthancBuilder::start`]).
    pub fn start() -> Option<Orthanc> {
        OrthancBuilder::default().start()
    }

    /// The REST API address.
    pub fn http_addr(&self) -> SocketAddr {
        loopback(self.http_port)
    }

    /// `GET path` on the REST API.
    pub fn get(&self, path: &str) -> io::Result<HttpResponse> {
        http_get(self.http_addr(), path)
    }

    /// `GET path` on the REST API, expecting 200 and a JSON body.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self
            .get(path)
            .unwrap_or_else(|e| panic!("Orthanc GET {path}: {e}"));
        assert_eq!(r.status, 200, "Orthanc GET {path}: {}", r.text());
        r.json()
    }

    /// `POST path` with a JSON body, expecting 200 and a JSON answer.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let bytes = serde_json::to_vec(body).unwrap();
        let r = http_request(
            self.http_addr(),
            "POST",
            path,
            Some(("application/json", &bytes)),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("Orthanc POST {path}: {e}"));
        assert_eq!(r.status, 200, "Orthanc POST {path}: {}", r.text());
        r.json()
    }

    /// The Orthanc ids of all stored instances.
    pub fn instances(&self) -> Vec<String> {
        serde_json::from_value(self.get_json("/instances")).unwrap()
    }

    /// Orthanc's own temporary folder (config, storage, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

// ---------------------------------------------------------------------------
// Mosquitto
// ---------------------------------------------------------------------------

/// Builder for a Mosquitto broker on loopback with a plain listener and,
/// optionally, a TLS listener.
#[derive(Debug, Clone, Default)]
pub struct MosquittoBuilder {
    tls: Option<(TestPki, bool)>,
    extra: Vec<String>,
}

impl MosquittoBuilder {
    /// Adds a TLS listener with `pki`'s server certificate; with `require_client_cert`
    /// clients must present a certificate signed by `pki`'s CA.
    pub fn tls(mut self, pki: &TestPki, require_client_cert: bool) -> Self {
        self.tls = Some((pki.clone(), require_client_cert));
        self
    }

    /// Appends a raw line to the generated `mosquitto.conf`.
    pub fn line(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }

    /// Starts the broker and waits for its listeners; `None` with a SKIP line when
    /// Mosquitto is not installed. Panics with its log when it does not start.
    pub fn start(self) -> Option<Mosquitto> {
        let binary = require_tool("mosquitto")?;
        let dir = temp_dir("mosquitto");
        let ports = free_ports(2);
        let (port, tls_port) = (ports[0], ports[1]);
        let mut conf = format!(
            "# generated for a test\n\
             user root\n\
             persistence false\n\
             log_dest stderr\n\
             log_type all\n\
             allow_anonymous true\n\
             listener {port} 127.0.0.1\n"
        );
        let tls_port = if let Some((pki, require)) = &self.tls {
            conf.push_str(&format!(
                "listener {tls_port} 127.0.0.1\n\
                 cafile {}\ncertfile {}\nkeyfile {}\n\
                 require_certificate {require}\n\
                 tls_version tlsv1.2\n",
                pki.ca_cert.display(),
                pki.server_cert.display(),
                pki.server_key.display(),
            ));
            Some(tls_port)
        } else {
            None
        };
        for line in &self.extra {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = dir.path().join("mosquitto.conf");
        fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("mosquitto.log");
        let mut cmd = Command::new(binary);
        cmd.arg("-c").arg(&conf_path);
        let mut process = Background::spawn("mosquitto", &mut cmd, &log).expect("start mosquitto");
        process
            .wait_for_port(loopback(port), READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(tls_port) = tls_port {
            process
                .wait_for_port(loopback(tls_port), READY_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        Some(Mosquitto {
            port,
            tls_port,
            pki: self.tls.map(|(pki, _)| pki),
            process,
            dir,
        })
    }
}

/// A running Mosquitto broker (killed when dropped).
#[derive(Debug)]
pub struct Mosquitto {
    /// Plain MQTT port on 127.0.0.1.
    pub port: u16,
    /// TLS port on 127.0.0.1, when configured.
    pub tls_port: Option<u16>,
    /// The PKI of the TLS listener, when configured.
    pub pki: Option<TestPki>,
    /// The process (log, kill for outage tests).
    pub process: Background,
    dir: TestDir,
}

impl Mosquitto {
    /// A builder with the defaults (plain listener only).
    pub fn builder() -> MosquittoBuilder {
        MosquittoBuilder::default()
    }

    /// Starts a broker with only the plain listener.
    pub fn start() -> Option<Mosquitto> {
        MosquittoBuilder::default().start()
    }

    /// The broker's temporary folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `mosquitto_pub`/`mosquitto_sub` command already pointed at the plain
    /// listener (`-h 127.0.0.1 -p PORT`); `None` with a SKIP line when absent.
    pub fn client(&self, tool: &str) -> Option<Command> {
        let mut cmd = Command::new(require_tool(tool)?);
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        Some(cmd)
    }

    /// Like [`client`](Self::client) but on the TLS listener with the CA, and the
    /// client certificate when `with_client_cert`.
    pub fn tls_client(&self, tool: &str, with_client_cert: bool) -> Option<Command> {
        let pki = self.pki.as_ref().expect("broker started without TLS");
        let mut cmd = Command::new(require_tool(tool)?);
        cmd.args(["-h", "localhost", "-p", &self.tls_port.unwrap().to_string()])
            .arg("--cafile")
            .arg(&pki.ca_cert);
        if with_client_cert {
            cmd.arg("--cert")
                .arg(&pki.client_cert)
                .arg("--key")
                .arg(&pki.client_key);
        }
        Some(cmd)
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
