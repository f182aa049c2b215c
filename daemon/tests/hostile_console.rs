//! The HTTPS console against hostile clients, over real TLS sockets on loopback (client
//! source addresses from 127.0.0.0/8): hundreds of TLS connections that never send a
//! request, a flood from one address, uploads that are too large, too many or stall,
//! event streams that must end with their session, and a password spray.

mod common;

use common::*;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const PW: &str = "correct horse battery staple";

type Tls = TlsStream<tokio::net::TcpStream>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `127.0.0.n`.
fn lo(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// A TLS connection to `addr` from source address `src` (handshake done), or the error
/// (a refused connection is closed by the server before or during the handshake).
async fn tls_from(src: Ipv4Addr, addr: SocketAddr) -> io::Result<Tls> {
    tls_with_buffer(src, addr, None).await
}

/// [`tls_from`] with the socket's receive buffer set to `rcvbuf` bytes first.
async fn tls_with_buffer(src: Ipv4Addr, addr: SocketAddr, rcvbuf: Option<u32>) -> io::Result<Tls> {
    let sock = TcpSocket::new_v4()?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let tcp = sock.connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(io::Error::other)?;
    let connector = TlsConnector::from(insecure_tls_client());
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// A TLS connection from `src` that the server has finished its handshake on too: one
/// keep-alive request answered proves it (a TLS 1.3 client is done with its handshake a
/// moment before the server is, and until then the server may give its slot away).
async fn established_from(src: Ipv4Addr, addr: SocketAddr) -> io::Result<Tls> {
    let mut s = tls_from(src, addr).await?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = async {
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            raw.extend_from_slice(&buf[..n]);
            if let Ok(r) = parse_http_response(&raw) {
                let declared = r
                    .headers
                    .get("content-length")
                    .and_then(|v| v.parse::<usize>().ok());
                if declared.is_some_and(|len| r.body.len() >= len) {
                    return Ok(r.status);
                }
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), answered).await {
        Ok(Ok(200)) => Ok(s),
        Ok(Ok(status)) => Err(io::Error::other(format!("healthz answered {status}"))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")),
    }
}

/// Reads until the server closes; the bytes read (a reset after data counts as closed).
async fn read_to_close(s: &mut Tls) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

/// One request (`Connection: close`) from `src`; the parsed answer.
async fn request_from(src: Ipv4Addr, addr: SocketAddr, head: &str, body: &[u8]) -> HttpResponse {
    let mut s = tls_from(src, addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("send headers");
    s.write_all(body).await.expect("send body");
    let raw = tokio::time::timeout(Duration::from_secs(30), read_to_close(&mut s))
        .await
        .expect("answer in time");
    parse_http_response(&raw).expect("an HTTP answer")
}

async fn healthz_from(src: Ipv4Addr, addr: SocketAddr) -> (HttpResponse, Duration) {
    let t = Instant::now();
    let head = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let r = request_from(src, addr, head, b"").await;
    (r, t.elapsed())
}

/// Waits until the server closes `s`; how long that took, or `None` after `limit`.
async fn closed_within(s: &mut Tls, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    tokio::time::timeout(limit, read_to_close(s))
        .await
        .ok()
        .map(|_| t.elapsed())
}

#[test]
fn idle_tls_connections_do_not_lock_out_healthz_and_are_closed_after_the_header_read_timeout() {
    const HEADER_READ: u64 = 6;
    let d = Daemon::builder()
        .config(
            "console",
            "header_read_timeout_secs",
            &HEADER_READ.to_string(),
        )
        .start();
    let addr = d.console_addr();
    runtime().block_on(async move {
        // 320 connections (more than the old limit of 256) from 8 addresses, 40 each:
        // TLS done, not one byte of HTTP.
        let t0 = Instant::now();
        let mut idle: Vec<(Tls, Instant)> = Vec::new();
        for batch in 0..10usize {
            let tries = (0..32usize).map(|i| tls_from(lo(10 + ((batch * 32 + i) % 8) as u8), addr));
            for r in futures::future::join_all(tries).await {
                idle.push((r.expect("idle connection accepted"), Instant::now()));
            }
        }
        let opened = t0.elapsed();
        // /healthz from another address answers within 1 s, every time.
        let mut worst = Duration::ZERO;
        for _ in 0..5 {
            let (r, took) = healthz_from(lo(99), addr).await;
            assert_eq!(r.status, 200, "{}", r.text());
            worst = worst.max(took);
        }
        assert!(worst < Duration::from_secs(1), "/healthz took {worst:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(HEADER_READ),
            "opening {} connections took {opened:?}: /healthz was not measured while all \
             were held",
            idle.len()
        );
        // Every idle connection is closed after the header-read timeout, not before.
        let waits = idle.into_iter().map(|(mut s, since)| async move {
            closed_within(&mut s, Duration::from_secs(HEADER_READ + 10))
                .await
                .map(|_| since.elapsed())
        });
        let closed = futures::future::join_all(waits).await;
        let header_read = Duration::from_secs(HEADER_READ);
        for (i, c) in closed.iter().enumerate() {
            let after = c.unwrap_or_else(|| panic!("idle connection {i} still open"));
            assert!(
                after >= header_read - Duration::from_millis(300)
                    && after <= header_read + Duration::from_secs(4),
                "idle connection {i} closed after {after:?}, header-read timeout {header_read:?}"
            );
        }
    });
}

/// A request head over 32 KiB, or with more than 64 headers, is answered 431 and the
/// connection is not held; a normal request from the same address is served.
#[test]
fn oversized_request_heads_are_refused_with_431() {
    let d = Daemon::builder().start();
    let addr = d.console_addr();
    runtime().block_on(async move {
        let long = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(40 * 1024)
        );
        let r = request_from(lo(1), addr, &long, b"").await;
        assert_eq!(r.status, 431, "a 40 KiB header");
        let many: String = (0..80).map(|i| format!("X-H{i}: v\r\n")).collect();
        let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
        let r = request_from(lo(1), addr, &many, b"").await;
        assert_eq!(r.status, 431, "80 headers");
        let (r, _) = healthz_from(lo(1), addr).await;
        assert_ne!(r.status, 431);
    });
}

#[test]
fn a_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let d = Daemon::builder()
        .config("console", "idle_timeout_secs", "3")
        .config("console", "header_read_timeout_secs", "10")
        .start();
    let addr = d.console_addr();
    runtime().block_on(async move {
        let mut s = tls_from(lo(1), addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // The whole JSON answer: `"status"` is its last key (`ok`, or `degraded` while the
        // test daemon waits for a model).
        while !(got.windows(10).any(|w| w == b"\"status\":\"") && got.ends_with(b"}")) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer");
            got.extend_from_slice(&buf[..n]);
        }
        let answered = Instant::now();
        let took = closed_within(&mut s, Duration::from_secs(15))
            .await
            .expect("an idle keep-alive connection is closed");
        let after = answered.elapsed();
        assert!(
            after >= Duration::from_millis(2700) && after <= Duration::from_secs(6),
            "closed {after:?} after the answer ({took:?}); idle timeout 3 s"
        );
    });
}

/// Everything `s` still delivers until it ends (closed or reset); fails if it does not
/// end within 60 s.
async fn read_until_end(s: &mut Tls) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection never ended");
    got
}

/// A client that pipelines requests and never reads the answers cannot keep its
/// connection past the idle timeout: read afterwards, the connection ends before all 300
/// answers went out. (Between pipelined answers the connection is idle on the server's
/// side, so this held before writes had their own timeout; the stall inside one answer is
/// the next test, and `console::timeouts` unit-tests the write clock itself.)
#[test]
fn a_client_that_never_reads_its_answers_is_closed_after_the_idle_timeout() {
    let d = Daemon::builder()
        .config("console", "idle_timeout_secs", "2")
        .start();
    let addr = d.console_addr();
    runtime().block_on(async move {
        // A small receive window, as the client that found it used: the answers stall in
        // the middle of a body.
        let mut s = tls_with_buffer(lo(1), addr, Some(4096)).await.unwrap();
        let asks = 300;
        let one = b"GET /static/console.js HTTP/1.1\r\nHost: x\r\n\r\n";
        for _ in 0..asks {
            s.write_all(one).await.unwrap();
        }
        s.flush().await.unwrap();
        // Never read for longer than the idle timeout.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let got = read_until_end(&mut s).await;
        let answers = got.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
        assert!(
            answers < asks,
            "all {answers} answers went out: the stalled connection was kept"
        );
        eprintln!("stalled connection closed after {answers} of {asks} answers");
    });
}

/// The same inside one answer: a large preview asked for over a small receive window and
/// never read. The connection is ended after the idle time and reset, so the answer the
/// kernel still held to send (megabytes, per connection) is freed at once instead of
/// waiting in the closed socket for a client that does not read.
#[test]
fn a_preview_the_client_stops_reading_is_cut_after_the_idle_timeout() {
    let d = Daemon::builder()
        .config("console", "idle_timeout_secs", "2")
        .start();
    let dir = temp_dir("stalled-preview");
    let Some(files) = common::dx::make_dx(dir.path(), 1, 1, &["--rows", "3000", "--cols", "3000"])
    else {
        return;
    };
    if which("storescu").is_none() {
        return skip("storescu absent");
    }
    d.storescu("MODALITY", &[], &[files[0].0.clone()])
        .unwrap()
        .assert_success("storescu");
    d.add_user("rita", "radiologist", PW);
    let rita = d.login("rita", PW);
    let (_, sop, study) = files[0].clone();
    let path = format!("/api/v1/studies/{study}/instances/{sop}/preview");
    // Rendered once first, so the stalled request below is only the sending.
    let whole = rita.get(&path);
    assert_eq!(whole.status, 200);
    let length = whole.body.len();
    assert!(
        length > 2_000_000,
        "a preview of {length} bytes is too small to stall"
    );
    let addr = d.console_addr();
    let cookie = rita.cookie.clone();
    runtime().block_on(async move {
        let mut s = tls_with_buffer(lo(1), addr, Some(4096)).await.unwrap();
        let ask = format!("GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
        s.write_all(ask.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let got = read_until_end(&mut s).await;
        // The connection is reset, not closed behind a queue: what the kernel still held
        // to send (megabytes) is dropped with it, not delivered once the client reads.
        let body = got.len();
        assert!(
            body < length / 2,
            "{body} of {length} bytes went out after the timeout: the stalled answer was kept"
        );
        eprintln!("stalled preview cut after {body} of {length} bytes");
    });
}

/// Opens `GET /api/v1/events` with `cookie`; the reader after the `ready` event.
fn open_event_stream(d: &Daemon, cookie: &str) -> BufReader<impl io::Read> {
    match try_event_stream(d, cookie) {
        Ok(r) => r,
        Err(status) => panic!("event stream answered {status}"),
    }
}

/// [`open_event_stream`], or the status line of a refusal.
fn try_event_stream(d: &Daemon, cookie: &str) -> Result<BufReader<impl io::Read>, String> {
    let mut s = tls_connect(d.console_addr(), Duration::from_secs(30)).unwrap();
    write!(
        s,
        "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    if !line.contains(" 200 ") {
        return Err(line.trim().to_string());
    }
    // The stream names studies: no cache may keep it.
    let mut cache_control = None;
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("cache-control:") {
            cache_control = Some(v.trim().to_string());
        }
        if line.contains("event:ready") || line.contains("event: ready") {
            assert_eq!(cache_control.as_deref(), Some("no-store"));
            return Ok(r);
        }
    }
}

/// Reads the stream until the server ends it; how long that took, or `None` after
/// `limit` (the reader's socket has a 30 s read timeout).
fn stream_end_within(r: &mut BufReader<impl io::Read>, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return Some(t.elapsed()),
            // A close without close_notify after the last chunk.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Some(t.elapsed()),
            Err(_) => return None,
            Ok(_) if t.elapsed() > limit => return None,
            Ok(_) => {}
        }
    }
}

#[test]
fn an_event_stream_gets_keep_alive_comments_and_outlives_the_idle_timeout() {
    let d = Daemon::builder()
        .config("console", "idle_timeout_secs", "2")
        .config("console", "header_read_timeout_secs", "2")
        .start();
    d.add_user("rita", "radiologist", PW);
    let rita = d.login("rita", PW);
    let mut r = open_event_stream(&d, &rita.cookie);
    let opened = Instant::now();
    let mut line = String::new();
    let comment_at = loop {
        line.clear();
        let n = r.read_line(&mut line).expect("the stream stays open");
        assert!(n > 0, "the stream ended after {:?}", opened.elapsed());
        if line.trim_end().starts_with(':') {
            break opened.elapsed();
        }
    };
    assert!(
        comment_at >= Duration::from_secs(14) && comment_at <= Duration::from_secs(17),
        "keep-alive comment after {comment_at:?}"
    );
    // Still open long after the idle timeout: a second comment arrives.
    loop {
        line.clear();
        assert!(r.read_line(&mut line).expect("still open") > 0);
        if line.trim_end().starts_with(':') {
            break;
        }
    }
    assert!(opened.elapsed() >= Duration::from_secs(29));
}

#[test]
fn event_streams_end_at_logout_user_disable_role_change_and_session_expiry() {
    let d = Daemon::start();
    for (name, role) in [
        ("rita", "radiologist"),
        ("rex", "radiologist"),
        ("ada", "admin"),
    ] {
        d.add_user(name, role, PW);
    }
    let ada = d.login("ada", PW);
    let quick = Duration::from_secs(3);

    let rita = d.login("rita", PW);
    let mut r = open_event_stream(&d, &rita.cookie);
    assert_eq!(
        rita.send("POST", "/api/v1/logout", &serde_json::json!({}))
            .status,
        200
    );
    let t = stream_end_within(&mut r, quick).expect("stream ended at logout");
    assert!(t < quick, "ended {t:?} after logout");

    let rita = d.login("rita", PW);
    let mut r = open_event_stream(&d, &rita.cookie);
    let put = ada.send(
        "PUT",
        "/api/v1/users/rita",
        &serde_json::json!({"disabled": true}),
    );
    assert_eq!(put.status, 200, "{}", put.text());
    stream_end_within(&mut r, quick).expect("stream ended when the user was disabled");

    let rex = d.login("rex", PW);
    let mut r = open_event_stream(&d, &rex.cookie);
    let put = ada.send(
        "PUT",
        "/api/v1/users/rex",
        &serde_json::json!({"role": "technician"}),
    );
    assert_eq!(put.status, 200, "{}", put.text());
    stream_end_within(&mut r, quick).expect("stream ended at the role change");

    // Idle expiry: the stream is not activity, so the session ends 3 s after login and
    // the stream with it (checked every 5 s).
    let d = Daemon::builder()
        .config("console", "session_idle_secs", "3")
        .start();
    d.add_user("rita", "radiologist", PW);
    let rita = d.login("rita", PW);
    let mut r = open_event_stream(&d, &rita.cookie);
    let t = stream_end_within(&mut r, Duration::from_secs(12))
        .expect("stream ended when the session expired");
    assert!(t <= Duration::from_secs(9), "ended {t:?} after opening");
}

/// Automatic logoff of an unattended page: what the page does on its own (worklist
/// reloads marked `X-Background: 1`, its event stream held open and reopened) does not
/// keep its session alive past the idle limit, while the user's own requests do.
#[test]
fn background_requests_and_the_event_stream_do_not_keep_a_session_alive() {
    let idle = Duration::from_secs(3);
    let d = Daemon::builder()
        .config("console", "session_idle_secs", "3")
        .start();
    d.add_user("rita", "radiologist", PW);
    let addr = d.console_addr();
    let user = d.login("rita", PW);
    let page = d.login("rita", PW);
    let logged_in = Instant::now();
    let mut stream = open_event_stream(&d, &page.cookie);
    let background = |path: &str| {
        let headers = [("Cookie", page.cookie.as_str()), ("X-Background", "1")];
        https_request(addr, "GET", path, &headers, None, Duration::from_secs(10))
            .unwrap()
            .status
    };
    let mut ended = None;
    while logged_in.elapsed() < idle * 2 {
        assert_eq!(
            user.get("/api/v1/studies").status,
            200,
            "the user's session"
        );
        // The worklist reloaded after an event, and the stream reopened as a browser
        // reconnects it.
        let asked = logged_in.elapsed();
        match background("/api/v1/studies?q=x") {
            200 => assert!(asked < idle, "alive {asked:?} after login"),
            401 => {
                ended = Some(logged_in.elapsed());
                break;
            }
            s => panic!("a background reload answered {s}"),
        }
        // The session may idle out between the reload and the reconnect.
        let asked = logged_in.elapsed();
        match try_event_stream(&d, &page.cookie) {
            Ok(stream) => drop(stream),
            Err(status) if status.contains(" 401 ") => {
                assert!(
                    asked >= idle - Duration::from_millis(500),
                    "ended at {asked:?}"
                );
                ended = Some(asked);
                break;
            }
            Err(status) => panic!("the event stream answered {status}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let ended = ended.expect("the page's session idled out");
    assert!(
        ended >= idle - Duration::from_millis(500),
        "ended at {ended:?}"
    );
    assert_eq!(background("/api/v1/me"), 401);
    // Its event stream ends with it (checked every 5 s).
    stream_end_within(&mut stream, Duration::from_secs(12))
        .expect("the stream ended with the session");
    // The user's own requests kept theirs well past the idle limit.
    assert!(logged_in.elapsed() > idle);
    assert_eq!(user.get("/api/v1/me").status, 200);
}

#[test]
fn per_address_and_total_connection_caps_refuse_the_excess_only() {
    let d = Daemon::builder()
        .config("console", "max_connections_per_address", "4")
        .config("console", "max_connections", "6")
        .config("console", "max_event_streams", "6")
        .start();
    let addr = d.console_addr();
    runtime().block_on(async move {
        let mut from2 = Vec::new();
        for _ in 0..4 {
            from2.push(
                established_from(lo(2), addr)
                    .await
                    .expect("within the per-address cap"),
            );
        }
        // Connection 5 from the same address is closed at once...
        assert!(
            tls_from(lo(2), addr).await.is_err(),
            "a fifth connection from 127.0.0.2 was accepted"
        );
        // ...while another address still gets in.
        let (r, took) = healthz_from(lo(3), addr).await;
        assert_eq!(r.status, 200);
        assert!(took < Duration::from_secs(1), "{took:?}");
        // (That connection's slot comes back as its task ends, just after it closed.)
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The total cap: 4 + 2 held, a third address is refused.
        let _from3 = [
            established_from(lo(3), addr).await.unwrap(),
            established_from(lo(3), addr).await.unwrap(),
        ];
        assert!(tls_from(lo(4), addr).await.is_err(), "over the total cap");
        // A connection that closes gives its slot back.
        drop(from2.pop());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(healthz_from(lo(2), addr).await.0.status, 200);
    });
    // Refusals are logged (one warning per minute at most, the rest counted).
    let log = d.log();
    assert!(
        log.contains("refused (4 slots already in use by this client)"),
        "{log}"
    );
    assert_eq!(
        log.matches("WARN  duli::console::server").count(),
        1,
        "{log}"
    );
}

fn upload_head(s: &ConsoleSession, length: Option<usize>) -> String {
    let length = match length {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".into(),
    };
    format!(
        "POST /api/v1/uploads?name=x.png HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\
         X-CSRF-Token: {}\r\nContent-Type: image/png\r\n{length}Connection: close\r\n\r\n",
        s.cookie, s.csrf
    )
}

#[test]
fn uploads_over_the_limit_get_413_a_third_concurrent_one_429_and_stalled_ones_408() {
    let d = Daemon::builder()
        .config("console", "max_upload_mb", "1")
        .config("console", "header_read_timeout_secs", "4")
        .start();
    d.add_user("rita", "radiologist", PW);
    d.add_user("theo", "technician", PW);
    let rita = d.login("rita", PW);
    let theo = d.login("theo", PW);
    let addr = d.console_addr();
    runtime().block_on(async move {
        // Declared too large: refused before any body is read.
        let r = request_from(lo(1), addr, &upload_head(&rita, Some(2 << 20)), b"").await;
        assert_eq!(r.status, 413, "{}", r.text());
        assert!(r.text().contains("at most 1 MB"), "{}", r.text());

        // Chunked, no declared length: refused once the bytes pass 1 MB, and the
        // connection closed (the client cannot push the rest of its 64 MB).
        let mut s = tls_from(lo(1), addr).await.unwrap();
        s.write_all(upload_head(&rita, None).as_bytes())
            .await
            .unwrap();
        let (mut rd, mut wr) = tokio::io::split(s);
        let writer = tokio::spawn(async move {
            let chunk = vec![0x42u8; 64 * 1024];
            let mut sent = 0usize;
            for _ in 0..1024 {
                let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        });
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut raw)).await;
        let r = parse_http_response(&raw).expect("an answer");
        assert_eq!(r.status, 413, "{}", r.text());
        let sent = writer.await.unwrap();
        assert!(
            sent < 32 << 20,
            "the server read {sent} bytes of a 64 MB upload over a 1 MB limit"
        );

        // Two uploads of one user in progress (headers sent, body stalled)...
        let mut stalled = Vec::new();
        for _ in 0..2 {
            let mut s = tls_from(lo(1), addr).await.unwrap();
            s.write_all(upload_head(&rita, Some(1000)).as_bytes())
                .await
                .unwrap();
            s.write_all(b"\x89PNG").await.unwrap();
            stalled.push((s, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ...a third of the same user is refused with 429, before its body is read.
        let r = request_from(lo(1), addr, &upload_head(&rita, Some(10)), b"0123456789").await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(r.headers.contains_key("retry-after"));
        // Another user is not affected (the upload itself is refused: not an image).
        let r = request_from(lo(1), addr, &upload_head(&theo, Some(10)), b"0123456789").await;
        assert_eq!(r.status, 400, "{}", r.text());
        // The stalled uploads are answered 408 after the stall limit, freeing their slots.
        for (mut s, since) in stalled {
            let raw = tokio::time::timeout(Duration::from_secs(15), read_to_close(&mut s))
                .await
                .expect("a stalled upload is ended");
            let r = parse_http_response(&raw).expect("an answer");
            assert_eq!(r.status, 408, "{}", r.text());
            let after = since.elapsed();
            assert!(after >= Duration::from_millis(3500), "408 after {after:?}");
        }
        let r = request_from(lo(1), addr, &upload_head(&rita, Some(10)), b"0123456789").await;
        assert_eq!(r.status, 400, "slots came back: {}", r.text());
    });
}

/// An upload without the CSRF token is refused with 403 as soon as its headers arrive:
/// its body (64 MB declared, never sent) is not waited for, and it takes no upload slot,
/// so the user's one allowed upload still goes through meanwhile.
#[test]
fn an_upload_without_the_csrf_token_is_refused_before_its_body_and_takes_no_slot() {
    let d = Daemon::builder()
        .config("console", "max_uploads_per_user", "1")
        .config("console", "header_read_timeout_secs", "10")
        .start();
    d.add_user("rita", "radiologist", PW);
    let rita = d.login("rita", PW);
    let addr = d.console_addr();
    runtime().block_on(async move {
        let head = format!(
            "POST /api/v1/uploads?name=x.png HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\
             Content-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            rita.cookie,
            64 << 20
        );
        let sent = Instant::now();
        let mut forged = tls_from(lo(1), addr).await.unwrap();
        forged.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The user's own upload is not kept waiting for a slot by the forged one.
        let r = request_from(lo(1), addr, &upload_head(&rita, Some(10)), b"0123456789").await;
        assert_eq!(r.status, 400, "the slot is free: {}", r.text());
        let raw = tokio::time::timeout(Duration::from_secs(3), read_to_close(&mut forged))
            .await
            .expect("the forged upload is answered without its body");
        let r = parse_http_response(&raw).expect("an answer");
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (403, Some("csrf")),
            "{}",
            r.text()
        );
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{:?}",
            sent.elapsed()
        );
    });
}

fn audit_records(admin: &ConsoleSession) -> Vec<serde_json::Value> {
    admin.get("/api/v1/audit?limit=1000").json()["records"]
        .as_array()
        .expect("records")
        .clone()
}

#[test]
fn a_password_spray_of_throttled_logins_adds_o1_audit_records() {
    let mut d = Daemon::start();
    d.add_user("rita", "radiologist", PW);
    d.add_user("ada", "admin", PW);
    let addr = d.console_addr();
    let ada = d.login("ada", PW);
    let before = audit_records(&ada).len();
    // Five free failures (each audited), then 60 throttled attempts.
    for _ in 0..5 {
        assert_eq!(console_login_raw(addr, "rita", "guess").status, 401);
    }
    // Then a spray: 60 attempts as fast as they come. The account's backoff lets one
    // through now and then (a 401, audited like any failure); the rest are throttled.
    let (mut throttled, mut failed) = (0usize, 0usize);
    for i in 0..60 {
        let r = console_login_raw(addr, "rita", &format!("guess{i}"));
        match r.status {
            429 => throttled += 1,
            401 => failed += 1,
            s => panic!("login answered {s}: {}", r.text()),
        }
    }
    assert!(throttled >= 40, "only {throttled} of 60 throttled");
    let added = audit_records(&ada).len() - before;
    assert!(
        added <= 5 + failed + 2,
        "{throttled} throttled logins added {added} audit records ({} failures)",
        5 + failed
    );
    // At shutdown the open window is summed up in one record with the exact count.
    d.terminate(Duration::from_secs(20));
    d.restart();
    let ada = d.login("ada", PW);
    let records = audit_records(&ada);
    let summary = records
        .iter()
        .filter(|r| r["action"] == "login_failed")
        .find_map(|r| {
            r["detail"]
                .as_str()
                .filter(|t| t.contains("throttled login attempts"))
        })
        .unwrap_or_else(|| panic!("no summary record in {records:?}"));
    assert!(
        summary.starts_with(&format!("{throttled} throttled login attempts"))
            && summary.contains("rita"),
        "{summary}"
    );
}

#[test]
fn bare_connections_that_never_finish_tls_cannot_fill_the_console() {
    // Every slot held by a TCP connection that never sends a ClientHello, from many
    // addresses: a real client still gets in, at once, by taking the oldest one's slot.
    let d = Daemon::builder()
        .config("console", "max_connections", "8")
        .config("console", "max_connections_per_address", "8")
        .config("console", "max_event_streams", "8")
        // The TLS clients below idle while the test runs: a loaded machine must not see
        // them closed by the header-read timeout (which would free their slots).
        .config("console", "header_read_timeout_secs", "120")
        .config("console", "idle_timeout_secs", "120")
        .start();
    let addr = d.console_addr();
    runtime().block_on(async move {
        let mut bare = Vec::new();
        for i in 0..16u8 {
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(IpAddr::V4(lo(10 + i)), 0))
                .unwrap();
            bare.push(sock.connect(addr).await.unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for n in 0..3u8 {
            let (r, took) = healthz_from(lo(40 + n), addr).await;
            assert_eq!(r.status, 200);
            assert!(took < Duration::from_secs(2), "{took:?}");
        }
        // Clients that finished their handshake keep their slots: the cap still holds
        // against connections that do speak TLS.
        let mut held = Vec::new();
        for n in 0..8u8 {
            held.push(established_from(lo(60 + n), addr).await.expect("a slot"));
        }
        assert!(tls_from(lo(70), addr).await.is_err(), "over the total cap");
        drop(bare);
    });
}

#[test]
fn a_request_body_that_trickles_in_is_ended_with_408() {
    // One byte every two seconds never trips the 4 s stall limit, but the body (1000
    // bytes declared) must arrive within the stall limit plus its size at 64 KiB/s.
    let d = Daemon::builder()
        .config("console", "header_read_timeout_secs", "4")
        .start();
    d.add_user("rita", "radiologist", PW);
    let rita = d.login("rita", PW);
    let addr = d.console_addr();
    runtime().block_on(async move {
        let mut s = tls_from(lo(1), addr).await.unwrap();
        let head = format!(
            "POST /api/v1/studies/1.2.3/feedback HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\
             X-CSRF-Token: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\
             Connection: close\r\n\r\n",
            rita.cookie, rita.csrf
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let since = Instant::now();
        let trickle = async {
            for _ in 0..30 {
                if s.write_all(b" ").await.is_err() || s.flush().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            read_to_close(&mut s).await
        };
        let raw = tokio::time::timeout(Duration::from_secs(30), trickle)
            .await
            .expect("the trickling body was never ended");
        let took = since.elapsed();
        let r = parse_http_response(&raw).expect("an answer");
        assert_eq!(r.status, 408, "{}", r.text());
        assert!(took < Duration::from_secs(12), "ended after {took:?}");
    });
}

/// A PACS that accepts connections and never sends a byte, until the guard drops.
struct SilentPacs {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentPacs {
    fn start() -> SilentPacs {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => held.push(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        SilentPacs {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentPacs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// C-ECHO tests against a PACS that never answers hold nobody else up: 64 at once from
/// one technician's address (as many connections as one address may hold) leave
/// `/healthz` and a radiologist's worklist from another address answering at once. One
/// test per user runs; the others are answered 429 with `Retry-After` at once.
#[test]
fn echoes_to_a_silent_pacs_do_not_hold_up_the_console() {
    let pacs = SilentPacs::start();
    let d = Daemon::builder()
        .config(
            "pacs",
            "destinations",
            &format!(
                "[{{name = \"silent\", ae_title = \"SILENT\", host = \"127.0.0.1\", port = {}}}]",
                pacs.port
            ),
        )
        .start();
    d.add_user("theo", "technician", PW);
    d.add_user("rita", "radiologist", PW);
    let (theo, rita) = (d.login("theo", PW), d.login("rita", PW));
    let addr = d.console_addr();
    let echo = format!(
        "POST /api/v1/system/echo HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nX-CSRF-Token: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
        theo.cookie, theo.csrf
    );
    let worklist = format!(
        "GET /api/v1/studies HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nConnection: close\r\n\r\n",
        rita.cookie
    );
    let quick = Duration::from_secs(3);
    runtime().block_on(async move {
        let echoes: Vec<_> = (0..64)
            .map(|_| {
                let head = echo.clone();
                tokio::spawn(async move { request_from(lo(2), addr, &head, b"{}").await })
            })
            .collect();
        // Let every echo arrive and wait on the PACS.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (r, took) = healthz_from(lo(3), addr).await;
        assert_eq!(r.status, 200);
        assert!(took < quick, "/healthz took {took:?}");
        let t = Instant::now();
        let r = request_from(lo(4), addr, &worklist, b"").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(t.elapsed() < quick, "the worklist took {:?}", t.elapsed());

        let mut answers = Vec::new();
        for e in echoes {
            answers.push(e.await.expect("echo task"));
        }
        let ran: Vec<_> = answers.iter().filter(|r| r.status == 200).collect();
        assert_eq!(ran.len(), 1, "one test per user at a time");
        let results = ran[0].json()["results"].clone();
        let row = results
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == "silent"))
            .expect("a row for the silent PACS");
        assert_eq!(row["status"], "failed", "{row}");
        let refused: Vec<_> = answers.iter().filter(|r| r.status == 429).collect();
        assert_eq!(
            refused.len(),
            63,
            "{:?}",
            answers.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        assert!(refused
            .iter()
            .all(|r| r.headers.contains_key("retry-after")));
    });
    drop(pacs);
}

/// Requests that name nothing the console knows are refused, not half-understood: a
/// worklist state that is no study state or a search longer than any value it could
/// match (each listing and search is remembered and audited), a user change with a
/// misspelt or no field (it must not pass for a change that was made), feedback with a
/// field it does not take.
#[test]
fn requests_naming_nothing_known_are_refused() {
    let d = Daemon::start();
    d.add_user("ada", "admin", PW);
    d.add_user("rita", "radiologist", PW);
    let ada = d.login("ada", PW);
    let rita = d.login("rita", PW);
    assert_eq!(rita.get("/api/v1/studies?state=done").status, 200);
    let r = rita.get(&format!("/api/v1/studies?state={}", "x".repeat(3000)));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(rita.get("/api/v1/studies?q=smith").status, 200);
    let r = rita.get(&format!("/api/v1/studies?q={}", "a".repeat(300)));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = rita.send(
        "POST",
        "/api/v1/studies/1.2.3/feedback",
        &serde_json::json!({"agree": true, "severity": "high"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let before = audit_records(&ada).len();
    for body in [
        serde_json::json!({"disable": true}),
        serde_json::json!({}),
        serde_json::json!({"disabled": true, "note": "compromised"}),
    ] {
        let r = ada.send("PUT", "/api/v1/users/rita", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
    }
    // Nothing changed: rita is still enabled (her session still serves) and no change
    // was audited.
    assert_eq!(rita.get("/api/v1/studies").status, 200);
    let changes = audit_records(&ada)
        .into_iter()
        .skip(before)
        .filter(|r| r["action"] == "user_change")
        .count();
    assert_eq!(changes, 0);
    let r = ada.send(
        "PUT",
        "/api/v1/users/rita",
        &serde_json::json!({"disabled": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(rita.get("/api/v1/studies").status, 401);
}
