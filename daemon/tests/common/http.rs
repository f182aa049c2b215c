//! Plain HTTP/1.1 over TCP, HTTPS to the console (certificate verification off: the
//! console's certificate is self-signed in tests), console logins and sessions, and the
//! Prometheus exposition.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

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
    /// `__Host-duli_session=...` for the Cookie header.
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
        .find(|c| c.starts_with("__Host-duli_session="))
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
