//! Forwarding of the audit trail to an audit record repository (`[audit] syslog`), and the
//! streamed export of a long trail.
//!
//! The repository is a listener in this test on loopback, plain TCP or TLS (rustls, with
//! client certificates from a throwaway site CA): it stands in for a syslog audit record
//! repository because no ATNA repository package is installed on the test machines. It
//! reads the byte stream as RFC 6587 octet-counted frames (RFC 5425 over TLS) and checks
//! each message: RFC 5424 header, APP-NAME `duli`, MSGID `IHE+RFC-3881`, the chain's
//! structured data, the UTF-8 BOM and a well-formed DICOM audit message (XML).

mod common;

use common::*;
use duli::audit::{Action, Audit, Event};
use duli::store::Store;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery staple";
/// Longest wait for records to arrive: the forwarder's pause between attempts doubles up
/// to 60 s while the repository is away.
const ARRIVAL: Duration = Duration::from_secs(120);

/// One message the repository received, checked.
#[derive(Debug, Clone)]
struct Received {
    /// Which connection brought it (0-based, in accept order).
    conn: usize,
    /// Its record's sequence number.
    seq: u64,
}

/// The stand-in audit record repository.
struct Repository {
    received: Arc<Mutex<Vec<Received>>>,
    /// Framing, message and handshake failures.
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Repository {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Repository {
    /// Listens on 127.0.0.1:`port`, over TLS when `tls` is given.
    fn start(port: u16, tls: Option<Arc<rustls::ServerConfig>>) -> Repository {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the repository");
        listener.set_nonblocking(true).unwrap();
        let repo = Repository {
            received: Arc::default(),
            errors: Arc::default(),
            stop: Arc::default(),
        };
        let (received, errors, stop) = (
            repo.received.clone(),
            repo.errors.clone(),
            repo.stop.clone(),
        );
        thread::spawn(move || {
            let conns = AtomicUsize::new(0);
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let conn = conns.fetch_add(1, Ordering::SeqCst);
                        let (received, errors, tls) =
                            (received.clone(), errors.clone(), tls.clone());
                        thread::spawn(move || serve(conn, tcp, tls, &received, &errors));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        repo
    }

    fn seqs(&self) -> Vec<u64> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect()
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Waits until records `0..=last` have all arrived; the sequence numbers received.
    fn wait_for(&self, last: u64) -> Vec<u64> {
        let deadline = Instant::now() + ARRIVAL;
        loop {
            let seqs = self.seqs();
            if seqs.contains(&last) || Instant::now() >= deadline {
                return seqs;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Reads one connection's frames until it ends.
fn serve(
    conn: usize,
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    received: &Mutex<Vec<Received>>,
    errors: &Mutex<Vec<String>>,
) {
    tcp.set_nonblocking(false).unwrap();
    let reader: Box<dyn Read> = match tls {
        None => Box::new(tcp),
        Some(cfg) => {
            let server = rustls::ServerConnection::new(cfg).unwrap();
            Box::new(rustls::StreamOwned::new(server, tcp))
        }
    };
    let mut reader = BufReader::new(reader);
    loop {
        match read_frame(&mut reader) {
            Ok(None) => return,
            Ok(Some(frame)) => match check_message(&frame) {
                Ok(seq) => received.lock().unwrap().push(Received { conn, seq }),
                Err(e) => errors.lock().unwrap().push(format!("message: {e}")),
            },
            Err(e) => {
                errors
                    .lock()
                    .unwrap()
                    .push(format!("connection {conn}: {e}"));
                return;
            }
        }
    }
}

/// One octet-counted frame (`MSG-LEN SP SYSLOG-MSG`), `None` at a clean end of stream.
fn read_frame(r: &mut impl BufRead) -> Result<Option<Vec<u8>>, String> {
    let mut len = Vec::new();
    r.read_until(b' ', &mut len).map_err(|e| e.to_string())?;
    if len.is_empty() {
        return Ok(None);
    }
    if len.pop() != Some(b' ') {
        return Err(format!("stream ends inside a frame length {len:?}"));
    }
    if len.is_empty() || len.len() > 7 || !len.iter().all(u8::is_ascii_digit) || len[0] == b'0' {
        return Err(format!(
            "bad frame length {:?}",
            String::from_utf8_lossy(&len)
        ));
    }
    let n: usize = std::str::from_utf8(&len).unwrap().parse().unwrap();
    let mut msg = vec![0u8; n];
    r.read_exact(&mut msg)
        .map_err(|e| format!("frame of {n} octets cut short: {e}"))?;
    Ok(Some(msg))
}

/// Checks one RFC 5424 message; its record's sequence number.
fn check_message(msg: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(msg).map_err(|e| format!("not UTF-8: {e}"))?;
    let fields: Vec<&str> = text.splitn(7, ' ').collect();
    let [pri_version, timestamp, host, app, procid, msgid, rest] = fields[..] else {
        return Err(format!("too few header fields: {text}"));
    };
    if pri_version != "<85>1" && pri_version != "<84>1" {
        return Err(format!("PRI/VERSION {pri_version}: {text}"));
    }
    if !timestamp.ends_with('Z') || timestamp.len() < 20 {
        return Err(format!("TIMESTAMP {timestamp}"));
    }
    if host.is_empty() || procid.parse::<u32>().is_err() {
        return Err(format!("HOSTNAME/PROCID {host} {procid}"));
    }
    if app != "duli" || msgid != "IHE+RFC-3881" {
        return Err(format!("APP-NAME/MSGID {app} {msgid}"));
    }
    let sd = rest
        .strip_prefix("[duli-chain@32473 seq=\"")
        .ok_or_else(|| format!("structured data: {rest}"))?;
    let (seq, _) = sd.split_once('"').ok_or("unterminated seq")?;
    let seq: u64 = seq.parse().map_err(|_| format!("seq {seq}"))?;
    let (_, xml) = rest
        .split_once("] \u{FEFF}")
        .ok_or_else(|| format!("no BOM after the structured data: {rest}"))?;
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("XML of {seq}: {e}"))?;
    if doc.root_element().tag_name().name() != "AuditMessage" {
        return Err(format!("root element of {seq}"));
    }
    Ok(seq)
}

/// The repository's TLS: its certificate from the site CA, client certificates required.
fn repository_tls(pki: &TestPki) -> Arc<rustls::ServerConfig> {
    duli::tls::server_config(&duli::tls::ServerTls {
        cert: &pki.server_cert,
        key: &pki.server_key,
        client_ca: Some(&pki.ca_cert),
        require_client_cert: true,
        alpn: &[],
    })
    .unwrap()
}

/// The trail's last sequence number and the forwarder's state, from the console.
fn audit_state(admin: &ConsoleSession) -> (u64, serde_json::Value) {
    let page = admin.get("/api/v1/audit?limit=1");
    assert_eq!(page.status, 200, "{}", page.text());
    let v = page.json();
    (v["head"]["seq"].as_u64().unwrap(), v["forward"].clone())
}

/// Waits until the forwarder reports nothing left to send; its state.
fn wait_until_drained(admin: &ConsoleSession) -> serde_json::Value {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let (_, forward) = audit_state(admin);
        if forward["backlog"] == 0 && forward["connected"] == true || Instant::now() >= deadline {
            return forward;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// A daemon forwarding to 127.0.0.1:`port` over plain TCP (allowed on loopback).
fn plain_forwarding(port: u16) -> DaemonBuilder {
    Daemon::builder()
        .config("audit", "syslog", &format!("127.0.0.1:{port}"))
        .config("audit", "syslog_tls", "false")
}

/// Asserts `seqs` is exactly `0..=last`, in order.
fn assert_all_once_in_order(seqs: &[u64], last: u64) {
    let want: Vec<u64> = (0..=last).collect();
    assert_eq!(seqs, &want[..], "records received, in order");
}

#[test]
fn records_appended_while_the_repository_is_down_arrive_in_order_once_it_is_up() {
    let port = free_port();
    let d = plain_forwarding(port).start();
    // Records while nobody listens: user changes, failed and good logins. None waits for
    // the repository.
    d.add_user("ada", "admin", PW);
    d.add_user("rita", "radiologist", PW);
    for _ in 0..3 {
        let _ = console_login_raw(d.console_addr(), "rita", "not her password");
    }
    let admin = d.login("ada", PW);
    let (head, forward) = audit_state(&admin);
    assert!(head >= 3, "{head}");
    assert_eq!(forward["connected"], false, "{forward}");
    assert_eq!(forward["target"], format!("127.0.0.1:{port}"));
    assert!(forward["last_forwarded"].is_null(), "{forward}");
    assert_eq!(forward["backlog"], head + 1, "{forward}");
    assert!(
        forward["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("TCP connect")),
        "{forward}"
    );
    // The same state on the system page and in `duli status`, for whoever looks there.
    let system = admin.get("/api/v1/system").json();
    assert_eq!(system["audit_forward"]["connected"], false, "{system}");
    assert_eq!(system["audit_forward"]["target"], forward["target"]);
    let out = d.command(&["status"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["audit_forward"]["connected"], false, "{status}");
    assert!(
        status["audit_forward"]["backlog"].as_u64() >= Some(head + 1),
        "{status}"
    );

    // The repository comes up: everything arrives, once, in order.
    let repo = Repository::start(port, None);
    let seqs = repo.wait_for(head);
    assert!(repo.errors().is_empty(), "{:?}", repo.errors());
    let forward = wait_until_drained(&admin);
    assert_eq!(forward["connected"], true, "{forward}");
    let (head, _) = audit_state(&admin);
    assert_eq!(forward["last_forwarded"], head, "{forward}");
    let seqs = if seqs.len() as u64 == head + 1 {
        seqs
    } else {
        repo.wait_for(head)
    };
    assert_all_once_in_order(&seqs, head);
    assert!(d
        .log()
        .contains(&format!("audit forwarding: connected to 127.0.0.1:{port}")));
}

#[test]
fn a_restart_resumes_from_the_cursor_without_sending_a_record_twice() {
    let port = free_port();
    let repo = Repository::start(port, None);
    let mut d = plain_forwarding(port).start();
    d.add_user("ada", "admin", PW);
    let admin = d.login("ada", PW);
    wait_until_drained(&admin);
    let (head, _) = audit_state(&admin);
    assert_all_once_in_order(&repo.wait_for(head), head);

    // Stopped; records added meanwhile (the command line writes to the store itself).
    assert!(d
        .terminate(Duration::from_secs(60))
        .is_some_and(|s| s.success()));
    d.add_user("theo", "technician", PW);
    d.add_user("rita", "radiologist", PW);
    d.restart();
    let admin = d.login("ada", PW);
    let forward = wait_until_drained(&admin);
    let (head, _) = audit_state(&admin);
    assert_eq!(forward["last_forwarded"], head, "{forward}");
    let seqs = repo.wait_for(head);
    assert!(repo.errors().is_empty(), "{:?}", repo.errors());
    // Every record exactly once over both runs' connections, in order.
    assert_all_once_in_order(&seqs, head);
    let conns: Vec<usize> = repo
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.conn)
        .collect();
    assert!(conns.windows(2).all(|w| w[0] <= w[1]), "{conns:?}");
    assert!(
        conns.last() > conns.first(),
        "a second connection after the restart"
    );
}

#[test]
fn tls_with_the_site_ca_is_verified_and_a_wrong_ca_is_refused() {
    let dir = temp_dir("audit-forward-tls");
    let Some(site) = TestPki::generate(dir.path(), "site") else {
        return;
    };
    let other = TestPki::generate(dir.path(), "other").unwrap();
    let port = free_port();
    let repo = Repository::start(port, Some(repository_tls(&site)));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let tls_daemon = |ca: &Path| {
        Daemon::builder()
            .config("audit", "syslog", &format!("127.0.0.1:{port}"))
            .config("audit", "syslog_ca", &s(ca))
            .config("audit", "syslog_cert", &s(&site.client_cert))
            .config("audit", "syslog_key", &s(&site.client_key))
    };

    // A CA that did not issue the repository's certificate: no connection, logged, and
    // nothing reaches the repository.
    let mut d = tls_daemon(&other.ca_cert).start();
    d.add_user("ada", "admin", PW);
    let admin = d.login("ada", PW);
    let log = d.log_once_it_holds("TLS handshake failed", Duration::from_secs(30));
    assert!(
        log.contains(&format!(
            "audit forwarding to 127.0.0.1:{port}: TLS handshake failed"
        )),
        "{log}"
    );
    let (head, forward) = audit_state(&admin);
    assert_eq!(forward["connected"], false, "{forward}");
    assert_eq!(forward["tls"], true, "{forward}");
    assert_eq!(forward["backlog"], head + 1, "{forward}");
    assert!(
        forward["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate")),
        "{forward}"
    );
    assert!(repo.seqs().is_empty());

    // The site CA: the trail arrives over TLS, our client certificate accepted.
    assert!(d.terminate(Duration::from_secs(60)).is_some());
    let d2 = tls_daemon(&site.ca_cert).data_dir(d.data_dir()).start();
    let admin = d2.login("ada", PW);
    let forward = wait_until_drained(&admin);
    assert_eq!(forward["connected"], true, "{forward}");
    let (head, _) = audit_state(&admin);
    let seqs = repo.wait_for(head);
    assert_all_once_in_order(&seqs, head);
    // Only the refused handshakes failed on the repository's side; every message parsed.
    assert!(
        repo.errors().iter().all(|e| e.starts_with("connection ")),
        "{:?}",
        repo.errors()
    );
}

#[test]
fn plain_tcp_off_loopback_needs_explicit_consent() {
    let config = |extra: &[(&str, &str)]| {
        let mut env: Vec<(String, String)> = vec![
            ("DULI_AUDIT__SYSLOG".into(), "192.0.2.10:514".into()),
            ("DULI_AUDIT__SYSLOG_TLS".into(), "false".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        duli::config::Config::load(None, env)
    };
    let err = config(&[]).unwrap_err().to_string();
    assert!(err.contains("audit.syslog_tls"), "{err}");
    config(&[("DULI_AUDIT__SYSLOG_ALLOW_PLAIN", "true")]).unwrap();
    let err = duli::config::Config::load(
        None,
        [("DULI_AUDIT__SYSLOG".to_string(), "audit:6514".to_string())],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("audit.syslog_ca: required"), "{err}");
}

#[test]
fn a_trail_of_thousands_of_records_exports_whole_and_well_formed() {
    // More than the pages the export holds in flight (4 of 512), so it streams.
    const N: u64 = 6_000;
    let root = temp_dir("audit-export");
    let data = root.path().join("data");
    {
        let store = Store::open(&data).unwrap();
        let audit = Audit::open(&store).unwrap();
        for i in 0..N {
            audit
                .append(
                    Event::new("ana", Action::View, &format!("1.2.826.0.1.{i}")).from("10.0.0.5"),
                )
                .unwrap();
        }
        store.flush_blocking().unwrap();
    }
    let d = Daemon::builder().data_dir(&data).start();
    d.add_user("ada", "admin", PW);
    let admin = d.login("ada", PW);
    let (head, _) = audit_state(&admin);
    assert!(head >= N, "{head}");

    let json = admin.get("/api/v1/audit/export?format=json");
    assert_eq!(json.status, 200);
    assert_eq!(json.headers["content-type"], "application/json");
    let records = json.json();
    let records = records.as_array().unwrap();
    assert_eq!(records.len() as u64, head + 1, "the trail up to its head");
    assert!(records
        .iter()
        .enumerate()
        .all(|(i, r)| r["seq"] == i as u64 && r["hash"].as_str().is_some_and(|h| h.len() == 64)));

    let syslog = admin.get("/api/v1/audit/export?format=syslog");
    assert_eq!(syslog.status, 200);
    let text = syslog.text();
    let lines: Vec<&str> = text.lines().collect();
    // The JSON export's own audit record comes before this export's head.
    assert_eq!(lines.len() as u64, head + 2);
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with("<8")
                && line.contains(&format!("seq=\"{i}\""))
                && line.ends_with("</AuditMessage>"),
            "line {i}: {line}"
        );
    }
    let last = lines.last().unwrap();
    assert!(
        last.contains("csd-code=\"110101\"") && last.contains("Audit Log Used"),
        "the JSON export is audited as a use of the audit log: {last}"
    );
}
